import createError from '@fastify/error'
import type { SessionState } from './domain/state-machine.js'

/**
 * The error catalogue: every error a client can see, with its stable code and status. Handlers
 * throw these; the error handler renders them as application/problem+json, copying `details`
 * into the problem body.
 */
export interface ProblemDetails {
  [key: string]: unknown
}

type WithDetails = Error & { details?: ProblemDetails }

function withDetails<E extends Error> (err: E, details: ProblemDetails): E {
  (err as WithDetails).details = details
  return err
}

export const SessionNotFound = createError('SESSION_NOT_FOUND', 'Session %s not found', 404)
export const SnapshotNotFound = createError('SNAPSHOT_NOT_FOUND', 'Snapshot %s not found for session %s', 404)
export const NoSnapshot = createError('SESSION_NO_SNAPSHOT', 'Session %s has no snapshot to resume from', 409)
export const VersionConflict = createError('SESSION_VERSION_CONFLICT', 'If-Match %s does not match the current version %s', 412)
export const InvalidTransition = createError('SESSION_INVALID_TRANSITION', 'Cannot move a %s session to %s', 409)
export const SessionTerminal = createError('SESSION_TERMINAL', 'Session is %s: it accepts no further changes', 409)
export const WriteContention = createError('SESSION_WRITE_CONTENTION', 'The session kept changing under this request; retry', 409)
export const InvalidIfMatch = createError('INVALID_IF_MATCH', 'If-Match must be "*" or a list of quoted versions, got %s', 400)
export const InvalidCursor = createError('INVALID_CURSOR', 'The cursor is malformed or was not issued by this service', 400)
export const WorkdirOutsideRoot = createError('WORKDIR_OUTSIDE_ROOT', 'workdir %s lies outside the workspace root', 400)
export const WorkdirUnusable = createError('WORKDIR_UNUSABLE', 'workdir %s cannot be used: %s', 400)
export const OutOfRange = createError('VALUE_OUT_OF_RANGE', '%s must be between %s and %s', 400)
export const MessageNotAccepted = createError('SESSION_NOT_ACCEPTING_MESSAGES', 'Session %s does not take messages now: %s', 409)
export const MessageTooLarge = createError('MESSAGE_TOO_LARGE', 'The message is %s bytes; at most %s are accepted', 413)
export const ServiceUnavailable = createError('SERVICE_UNAVAILABLE', '%s', 503)

export function versionConflict (ifMatch: string, current: { version: number, state: SessionState }): Error {
  return withDetails(new VersionConflict(ifMatch, current.version), {
    currentVersion: current.version,
    state: current.state
  })
}

export function invalidTransition (from: SessionState, to: SessionState, allowed: SessionState[], version: number, why?: string): Error {
  const err = new InvalidTransition(from, to)
  if (why) err.message += `: ${why}`
  return withDetails(err, { state: from, allowedTargets: allowed, currentVersion: version })
}

export function sessionTerminal (state: SessionState, version: number): Error {
  return withDetails(new SessionTerminal(state), { state, currentVersion: version })
}

export function outOfRange (field: string, min: number, max: number): Error {
  return withDetails(new OutOfRange(field, min, max), { field, minimum: min, maximum: max })
}

export function detailsOf (err: unknown): ProblemDetails | undefined {
  return (err as WithDetails).details
}
