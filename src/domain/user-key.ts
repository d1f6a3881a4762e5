import { createHash } from 'node:crypto'

/**
 * The directory name of a user's area (workspace, agents' state): stable for a `sub`, safe as a
 * single path segment whatever the identity provider puts in `sub` (`auth0|123`, an e-mail, `..`),
 * readable enough for an operator, and distinct for two subs that read the same once cleaned.
 */
export function userKey (sub: string): string {
  const readable = sub.toLowerCase().replace(/[^a-z0-9]+/g, '-').replace(/^-+|-+$/g, '').slice(0, 32)
  const digest = createHash('sha256').update(sub, 'utf8').digest('hex').slice(0, 16)
  return readable ? `${readable}-${digest}` : digest
}
