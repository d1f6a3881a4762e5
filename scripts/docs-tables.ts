/**
 * The README's generated tables, rendered from the code: the configuration table from EnvSchema
 * (src/config.ts) and the error table from ERROR_CATALOGUE (src/errors.ts). Each table sits
 * between its markers, `<!-- generated:NAME -->` and `<!-- /generated:NAME -->`.
 *
 *   npm run docs          rewrites the tables in README.md
 *   npm run docs:check    fails when README.md differs from what the code renders (CI)
 *
 * test/docs.test.ts parses the tables back and compares them with the code.
 */
import { readFile } from 'node:fs/promises'
import { fileURLToPath, pathToFileURL } from 'node:url'
import { EnvSchema } from '../src/config.js'
import { ERROR_CATALOGUE } from '../src/errors.js'
import { writeOrCheck } from './generated-file.js'

export const README = fileURLToPath(new URL('../README.md', import.meta.url))

export interface ConfigRow { name: string, description: string, default: string }
export interface ErrorRow { code: string, status: string, meaning: string }

/** What the status column shows for a code that is not an HTTP status. */
export const NO_STATUS = '—'
/** What the default column shows for a variable without a default. */
export const UNSET = 'unset'

/**
 * One row per EnvSchema property, in the schema's order. The default column shows the schema's
 * `default` as code; a computed default is documented by an `x-default` annotation instead.
 */
export function configRows (): ConfigRow[] {
  return Object.entries(EnvSchema.properties).map(([name, schema]) => {
    const s = schema as { description?: unknown, default?: unknown, 'x-default'?: unknown }
    if (typeof s.description !== 'string' || s.description.trim() === '') {
      throw new Error(`EnvSchema.${name} has no description: the README's configuration table needs one`)
    }
    const shown = s['x-default'] ?? s.default
    return { name, description: s.description, default: shown === undefined ? UNSET : code(String(shown)) }
  })
}

/** One row per ERROR_CATALOGUE entry, in the catalogue's order. */
export function errorRows (): ErrorRow[] {
  return Object.entries(ERROR_CATALOGUE).map(([code, entry]) => ({
    code,
    status: entry.status === null ? NO_STATUS : String(entry.status),
    meaning: entry.meaning
  }))
}

export function renderConfigTable (): string {
  return table(['variable', 'meaning', 'default'], configRows().map((r) => [code(r.name), r.description, r.default]))
}

export function renderErrorTable (): string {
  return table(['code', 'status', 'meaning'], errorRows().map((r) => [code(r.code), r.status, r.meaning]))
}

/** README.md with every generated section replaced by what the code renders. */
export function renderReadme (readme: string): string {
  let out = replaceSection(readme, 'config', renderConfigTable())
  out = replaceSection(out, 'errors', renderErrorTable())
  return out
}

/** The text between a section's markers (without the newlines next to them). */
export function section (readme: string, name: string): string {
  const { start, end } = markers(readme, name)
  return readme.slice(start, end).replace(/^\n/, '').replace(/\n$/, '')
}

function replaceSection (readme: string, name: string, body: string): string {
  const { start, end } = markers(readme, name)
  return `${readme.slice(0, start)}\n${body}\n${readme.slice(end)}`
}

function markers (readme: string, name: string): { start: number, end: number } {
  const open = `<!-- generated:${name} -->`
  const close = `<!-- /generated:${name} -->`
  const at = readme.indexOf(open)
  const end = readme.indexOf(close)
  if (at < 0 || end < 0) throw new Error(`README.md lacks the markers ${open} … ${close}`)
  if (readme.indexOf(open, at + 1) >= 0 || readme.indexOf(close, end + 1) >= 0) {
    throw new Error(`README.md has the markers of the "${name}" section more than once`)
  }
  const start = at + open.length
  if (end < start) throw new Error(`README.md: ${close} comes before ${open}`)
  return { start, end }
}

function table (header: string[], rows: string[][]): string {
  const line = (cells: string[]) => `| ${cells.map(cell).join(' | ')} |`
  return [line(header), line(header.map(() => '---')), ...rows.map(line)].join('\n')
}

/** A table cell: on one line, with `|` escaped (GitHub needs that inside code spans too). */
function cell (text: string): string {
  return text.replace(/\s*\n\s*/g, ' ').replace(/\|/g, '\\|')
}

function code (text: string): string {
  return `\`${text}\``
}

async function main (): Promise<void> {
  const text = renderReadme(await readFile(README, 'utf8'))
  await writeOrCheck({ target: README, text, source: 'src/config.ts and src/errors.ts (its generated tables)', command: 'npm run docs' })
}

if (process.argv[1] !== undefined && import.meta.url === pathToFileURL(process.argv[1]).href) await main()
