#!/usr/bin/env node
// Fixes two bugs of postgres.js 3.4.x (porsager/postgres #1208, #1154, #1066; fixes unreleased)
// that a database outage turns into a crash or a hang of this service:
// 1. a connection closed while a write was queued keeps a stale write timer: every later small
//    query on it is buffered forever (a request that never answers);
// 2. a queued write that fires after the socket is gone throws an uncaught TypeError (`socket`
//    is null), which ends the process.
// Run by `postinstall` (and by the Dockerfile, whose production install skips scripts). It is
// idempotent, and it fails loudly when the code it patches is not found (an upgraded driver:
// check whether the fix is upstream, then drop this script).
import { readFile, writeFile } from 'node:fs/promises'
import { createRequire } from 'node:module'
import { dirname, join } from 'node:path'

const MARKER = '/* mobvibe: patched (scripts/patch-postgres.mjs) */'
const PATCHES = [
  {
    what: 'a write queued after the socket closed fails the query instead of throwing',
    from: 'function nextWrite(fn) {\n',
    to: 'function nextWrite(fn) {\n    if (!socket) {\n      nextWriteTimer !== null && clearImmediate(nextWriteTimer)\n      chunk = nextWriteTimer = null\n      error(Errors.connection(\'CONNECTION_CLOSED\', options))\n      return false\n    }\n'
  },
  {
    what: 'terminate() forgets the queued write',
    from: '    terminated = true\n    if (stream || query || initial || sent.length)\n      error(Errors.connection(\'CONNECTION_DESTROYED\', options))\n\n    clearImmediate(nextWriteTimer)\n',
    to: '    terminated = true\n    if (stream || query || initial || sent.length)\n      error(Errors.connection(\'CONNECTION_DESTROYED\', options))\n\n    clearImmediate(nextWriteTimer)\n    nextWriteTimer = null\n    chunk = null\n'
  },
  {
    what: 'closed() forgets the queued write',
    from: '    incomings = null\n    clearImmediate(nextWriteTimer)\n',
    to: '    incomings = null\n    clearImmediate(nextWriteTimer)\n    nextWriteTimer = null\n    chunk = null\n'
  }
]

// the package's exports do not include package.json: walk up from its entry point
let root
try {
  root = dirname(createRequire(import.meta.url).resolve('postgres'))
} catch {
  process.stderr.write('patch-postgres: the postgres package is not installed\n')
  process.exit(1)
}
let version
for (;;) {
  const pkg = JSON.parse(await readFile(join(root, 'package.json'), 'utf8').catch(() => '{}'))
  if (pkg.name === 'postgres') {
    version = pkg.version
    break
  }
  const up = dirname(root)
  if (up === root) {
    process.stderr.write('patch-postgres: cannot find the postgres package root\n')
    process.exit(1)
  }
  root = up
}
for (const flavour of ['src', 'cjs/src', 'cf/src']) {
  const file = join(root, flavour, 'connection.js')
  let text
  try {
    text = await readFile(file, 'utf8')
  } catch {
    continue
  }
  if (text.startsWith(MARKER)) continue
  for (const patch of PATCHES) {
    const at = text.indexOf(patch.from)
    if (at === -1 || text.indexOf(patch.from, at + 1) !== -1) {
      process.stderr.write(`patch-postgres: postgres ${version} ${flavour}/connection.js: cannot apply "${patch.what}"; see scripts/patch-postgres.mjs\n`)
      process.exit(1)
    }
    text = text.replace(patch.from, patch.to)
  }
  await writeFile(file, `${MARKER}\n${text}`)
  process.stdout.write(`patch-postgres: patched postgres ${version} ${flavour}/connection.js\n`)
}
