import { chmod, mkdir, open, readFile, stat } from 'node:fs/promises'
import { dirname } from 'node:path'

/**
 * A secret a deployment generates once and keeps in its data directory: created exclusively with
 * mode 0600 (so processes racing on a fresh directory, the service and `npm run token`, agree on
 * one value), put back to 0600 when someone loosened it, and read until whole (another process
 * may be between creating the file and writing it).
 */
export async function loadOrCreatePrivateFile<T> (path: string, opts: {
  generate: () => T
  serialize: (value: T) => string
  /** null while the file is not (yet) a whole, valid value */
  parse: (text: string) => T | null
  /** the error when it never becomes one: what the file should hold, and what deleting it costs */
  invalid: string
}): Promise<{ value: T, created: boolean }> {
  await mkdir(dirname(path), { recursive: true })
  try {
    const file = await open(path, 'wx', 0o600)
    const value = opts.generate()
    try {
      await file.writeFile(opts.serialize(value))
      await file.sync()
    } finally {
      await file.close()
    }
    return { value, created: true }
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err
  }
  // a secret readable by others is one anyone on the host can use
  if (((await stat(path)).mode & 0o077) !== 0) await chmod(path, 0o600)
  for (let attempt = 0; ; attempt++) {
    const value = opts.parse(await readFile(path, 'utf8'))
    if (value !== null) return { value, created: false }
    if (attempt >= 50) throw new Error(`${path} ${opts.invalid}`)
    await new Promise((resolve) => setTimeout(resolve, 20))
  }
}
