/**
 * A migrated PGlite data directory to copy, instead of creating and migrating one per test app.
 * A fresh PGlite directory costs about 4.5 s of CPU (initdb in WebAssembly, then every migration);
 * a copy of a migrated one opens in about 1.2 s, and the suite builds well over a hundred apps.
 * (On PostgreSQL the migrations of an empty database take about 0.1 s: nothing to save there.)
 *
 * The template lives in `node_modules/.cache/` (gone with node_modules, never committed), named by
 * a hash of the migrations and the PGlite version, so a new migration or a PGlite upgrade makes a
 * new one. Test files running side by side may both create it: each works in a directory of its
 * own and the first rename wins.
 *
 * What a first start on an empty data directory does (the migrations themselves) stays covered:
 * test/server-process.test.ts starts the launcher on an empty directory, and the migration tests
 * (test/helpers/migrations.ts) start from nothing.
 */
import { createHash } from 'node:crypto'
import { cp, mkdir, readdir, readFile, rename, rm, stat } from 'node:fs/promises'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { MIGRATIONS_FOLDER, openDatabase } from '../../src/db/database.js'

const ROOT = fileURLToPath(new URL('../..', import.meta.url))
const CACHE = join(ROOT, 'node_modules', '.cache')

let template: Promise<string> | undefined

/** Named by what it depends on: the migrations and the PGlite version. */
async function templateName (): Promise<string> {
  const hash = createHash('sha256')
  const pglite = JSON.parse(await readFile(join(ROOT, 'node_modules', '@electric-sql', 'pglite', 'package.json'), 'utf8')) as { version: string }
  hash.update(`pglite ${pglite.version}\n`)
  for (const file of (await readdir(MIGRATIONS_FOLDER, { recursive: true })).map(String).sort()) {
    const path = join(MIGRATIONS_FOLDER, file)
    if (!(await stat(path)).isFile()) continue
    hash.update(`${file}\n`)
    hash.update(await readFile(path))
  }
  return `mobvibe-pglite-template-${hash.digest('hex').slice(0, 16)}`
}

async function exists (path: string): Promise<boolean> {
  return stat(path).then(() => true, () => false)
}

async function makeTemplate (): Promise<string> {
  const path = join(CACHE, await templateName())
  if (await exists(path)) return path
  await mkdir(CACHE, { recursive: true })
  const own = `${path}.${process.pid}.${Date.now()}`
  try {
    const db = await openDatabase({ pgliteDir: own })
    await db.close()
    await rename(own, path)
  } catch (err) {
    // another test file made it first (the rename finds a directory there): theirs is as good
    if (!(await exists(path))) throw err
  } finally {
    await rm(own, { recursive: true, force: true })
  }
  return path
}

/**
 * Puts a migrated PGlite database where a service configured with `dataDir` opens it
 * (`$MOBVIBE_DATA_DIR/pglite`), unless one is there already.
 */
export async function seedPglite (dataDir: string): Promise<void> {
  const target = join(dataDir, 'pglite')
  if (await exists(target)) return
  template ??= makeTemplate()
  await mkdir(dataDir, { recursive: true })
  await cp(await template, target, { recursive: true })
}
