// Database-independent: opens no database, so CI runs it once, in the PGlite pass (.ci/run).
/**
 * The documentation against the code and the repository:
 * - the README's configuration table (generated from EnvSchema, src/config.ts) and error table
 *   (generated from ERROR_CATALOGUE, src/errors.ts) are parsed back and compared, row by row,
 *   with the code: `npm run docs` rewrites them;
 * - no doc (the Markdown files) and no test file refers to a file outside the repository, or to a
 *   Markdown file the repository does not have.
 */
import { readdir, readFile } from 'node:fs/promises'
import { dirname, isAbsolute, join, relative, resolve, sep } from 'node:path'
import { fileURLToPath } from 'node:url'
import t from 'tap'
import ts from 'typescript'
import { renderReadme, section } from '../scripts/docs-tables.js'
import { EnvSchema } from '../src/config.js'
import { ERROR_CATALOGUE } from '../src/errors.js'

const ROOT = fileURLToPath(new URL('../', import.meta.url))
const README = join(ROOT, 'README.md')

/** directories that hold no source or documentation of the repository */
const SKIPPED_DIRS = new Set(['node_modules', '.git', 'dist', '.data', 'workspaces', '.tap', 'coverage', '.generated'])

/**
 * Markdown file names that appear in the docs or tests but are not files of this repository:
 * `CLAUDE.md` is the memory file the Claude Code CLI reads in a workspace and its parents.
 */
const NOT_REPOSITORY_FILES = new Set(['CLAUDE.md'])

/** The rows of a Markdown table: cells trimmed, `\|` unescaped; the header and its rule dropped. */
function tableRows (markdown: string): string[][] {
  const lines = markdown.split('\n').filter((l) => l.trim().startsWith('|'))
  return lines.slice(2).map((line) => line.trim().replace(/^\||\|$/g, '')
    .split(/(?<!\\)\|/)
    .map((cell) => cell.trim().replace(/\\\|/g, '|')))
}

const unquote = (cell: string | undefined): string => (cell ?? '').replace(/^`(.*)`$/, '$1')

t.test('the configuration table lists every EnvSchema variable, with its description and default', async (t) => {
  const rows = tableRows(section(await readFile(README, 'utf8'), 'config'))
  const properties = Object.entries(EnvSchema.properties) as [string, { description?: string, default?: unknown, 'x-default'?: unknown }][]
  t.same(rows.map((r) => unquote(r[0])), properties.map(([name]) => name), 'the same variables, in the schema\'s order')
  for (const [name, schema] of properties) {
    t.ok(typeof schema.description === 'string' && schema.description.trim() !== '', `EnvSchema.${name} has a description`)
    const row = rows.find((r) => unquote(r[0]) === name)
    if (row === undefined) continue
    t.equal(row.length, 3, `${name}: three columns`)
    t.equal(row[1], schema.description, `${name}: the README's description is the schema's`)
    const documented = schema['x-default'] ?? schema.default
    t.equal(row[2], documented === undefined ? 'unset' : `\`${String(documented)}\``, `${name}: the README's default is the schema's`)
  }
})

t.test('the error table lists every ERROR_CATALOGUE code, with its status and meaning', async (t) => {
  const rows = tableRows(section(await readFile(README, 'utf8'), 'errors'))
  const entries = Object.entries(ERROR_CATALOGUE)
  t.same(rows.map((r) => unquote(r[0])), entries.map(([code]) => code), 'the same codes, in the catalogue\'s order')
  for (const [code, entry] of entries) {
    const row = rows.find((r) => unquote(r[0]) === code)
    if (row === undefined) continue
    t.equal(row.length, 3, `${code}: three columns`)
    t.equal(row[1], entry.status === null ? '—' : String(entry.status), `${code}: the README's status is the catalogue's`)
    t.equal(row[2], entry.meaning, `${code}: the README's meaning is the catalogue's`)
  }
})

t.test('README.md is what `npm run docs` writes (the check CI runs: `npm run docs:check`)', async (t) => {
  const readme = await readFile(README, 'utf8')
  t.ok(renderReadme(readme) === readme, 'the generated sections are up to date')
})

// ---- references to files outside the repository ----

async function repositoryFiles (dir = ROOT): Promise<string[]> {
  const out: string[] = []
  for (const entry of await readdir(dir, { withFileTypes: true })) {
    if (SKIPPED_DIRS.has(entry.name)) continue
    const path = join(dir, entry.name)
    if (entry.isDirectory()) out.push(...await repositoryFiles(path))
    else out.push(path)
  }
  return out
}

const inside = (path: string): boolean => {
  const rel = relative(ROOT, path)
  return rel === '' || (!rel.startsWith('..' + sep) && rel !== '..' && !isAbsolute(rel))
}

/** The comments of a TypeScript or JavaScript file: only there does a test refer to a document. */
function comments (file: string, text: string): { pos: number, text: string }[] {
  const source = ts.createSourceFile(file, text, ts.ScriptTarget.Latest, true, file.endsWith('.ts') ? ts.ScriptKind.TS : ts.ScriptKind.JS)
  // string, template and regular-expression literals, so that `//` or `/*` inside one is no comment
  const literals: [number, number][] = []
  const visit = (node: ts.Node): void => {
    if (ts.isStringLiteralLike(node) || ts.isRegularExpressionLiteral(node) || ts.isTemplateLiteralToken(node)) {
      literals.push([node.getStart(source), node.end])
    }
    ts.forEachChild(node, visit)
  }
  visit(source)
  literals.sort((a, b) => a[0] - b[0])
  const found: { pos: number, text: string }[] = []
  let next = 0
  for (let i = 0; i < text.length; i++) {
    while (next < literals.length && literals[next]![1] <= i) next++
    const literal = literals[next]
    if (literal !== undefined && literal[0] <= i) { i = literal[1] - 1; continue }
    if (text.startsWith('//', i)) {
      const end = text.indexOf('\n', i)
      const stop = end < 0 ? text.length : end
      found.push({ pos: i, text: text.slice(i, stop) })
      i = stop
    } else if (text.startsWith('/*', i)) {
      const end = text.indexOf('*/', i + 2)
      const stop = end < 0 ? text.length : end + 2
      found.push({ pos: i, text: text.slice(i, stop) })
      i = stop - 1
    }
  }
  return found
}

/** The module specifiers of a code file (imports, `new URL(…, import.meta.url)`): they must stay inside. */
function specifiers (file: string, text: string): { pos: number, text: string }[] {
  const source = ts.createSourceFile(file, text, ts.ScriptTarget.Latest, true, file.endsWith('.ts') ? ts.ScriptKind.TS : ts.ScriptKind.JS)
  const found: { pos: number, text: string }[] = []
  const visit = (node: ts.Node): void => {
    if ((ts.isImportDeclaration(node) || ts.isExportDeclaration(node)) && node.moduleSpecifier !== undefined && ts.isStringLiteral(node.moduleSpecifier)) {
      found.push({ pos: node.moduleSpecifier.getStart(source), text: node.moduleSpecifier.text })
    } else if (ts.isCallExpression(node) && node.expression.kind === ts.SyntaxKind.ImportKeyword && node.arguments[0] !== undefined && ts.isStringLiteral(node.arguments[0])) {
      found.push({ pos: node.arguments[0].getStart(source), text: node.arguments[0].text })
    } else if (ts.isNewExpression(node) && ts.isIdentifier(node.expression) && node.expression.text === 'URL' &&
      node.arguments?.[0] !== undefined && ts.isStringLiteral(node.arguments[0]) && node.arguments[1]?.getText(source) === 'import.meta.url') {
      found.push({ pos: node.arguments[0].getStart(source), text: node.arguments[0].text })
    }
    ts.forEachChild(node, visit)
  }
  visit(source)
  return found.filter((s) => s.text.startsWith('.'))
}

const lineOf = (text: string, pos: number): number => text.slice(0, pos).split('\n').length

interface Problem { file: string, line: number, reference: string, why: string }

/** Relative paths that climb out of the repository, and Markdown files that it does not have. */
function checkProse (file: string, text: string, at: number, whole: string, names: Set<string>, files: Set<string>): Problem[] {
  const problems: Problem[] = []
  const dir = dirname(file)
  const report = (index: number, reference: string, why: string) =>
    problems.push({ file: relative(ROOT, file), line: lineOf(whole, at + index), reference, why })
  const prose = text.replace(/\b[a-z][a-z0-9+.-]*:\/\/\S+/gi, (url) => ' '.repeat(url.length)) // URLs are not files
  for (const m of prose.matchAll(/(?<![\w./@-])((?:\.\.?\/)+[\w@.-]+(?:\/[\w@.-]+)*\/?)/g)) {
    if (!inside(resolve(dir, m[1]!))) report(m.index, m[1]!, 'outside the repository')
  }
  for (const m of prose.matchAll(/(?<![\w./@-])((?:[\w@.-]+\/)*[\w@.-]+\.md)\b/g)) {
    const reference = m[1]!
    if (reference.startsWith('..') && !inside(resolve(dir, reference))) continue // reported above
    const base = reference.split('/').at(-1)!
    if (NOT_REPOSITORY_FILES.has(base)) continue
    const exists = reference.includes('/')
      ? files.has(resolve(dir, reference)) || files.has(resolve(ROOT, reference))
      : names.has(base)
    if (!exists) report(m.index, reference, 'no such file in the repository')
  }
  return problems
}

t.test('no doc and no test refers to a file outside the repository', async (t) => {
  const all = await repositoryFiles()
  const files = new Set(all)
  const names = new Set(all.map((f) => f.split(sep).at(-1)!))
  const rel = (f: string) => relative(ROOT, f).split(sep).join('/')
  const docs = all.filter((f) => f.endsWith('.md'))
  const tests = all.filter((f) => /^(test|integration)\//.test(rel(f)) && /\.(ts|mts|mjs|js)$/.test(f))
  t.ok(docs.some((f) => rel(f) === 'README.md') && docs.some((f) => rel(f).startsWith('docs/')), 'README.md and docs/ are scanned')
  t.ok(tests.some((f) => rel(f).startsWith('test/')), 'the tests are scanned')

  const problems: Problem[] = []
  for (const file of docs) {
    const text = await readFile(file, 'utf8')
    problems.push(...checkProse(file, text, 0, text, names, files))
    // every relative link must lead to a file (or directory) of the repository
    for (const m of text.matchAll(/\]\(([^)\s]+)(?:\s+"[^"]*")?\)/g)) {
      const target = m[1]!.split('#')[0]!
      if (target === '' || /^[a-z][a-z0-9+.-]*:/i.test(target)) continue
      const path = resolve(dirname(file), decodeURI(target))
      const found = files.has(path) || all.some((f) => f.startsWith(path.replace(/\/$/, '') + sep))
      if (!inside(path) || !found) {
        problems.push({ file: rel(file), line: lineOf(text, m.index), reference: m[1]!, why: inside(path) ? 'a link to no file of the repository' : 'a link outside the repository' })
      }
    }
  }
  for (const file of tests) {
    const text = await readFile(file, 'utf8')
    for (const c of comments(file, text)) problems.push(...checkProse(file, c.text, c.pos, text, names, files))
    for (const s of specifiers(file, text)) {
      if (!inside(resolve(dirname(file), s.text))) {
        problems.push({ file: rel(file), line: lineOf(text, s.pos), reference: s.text, why: 'a module outside the repository' })
      }
    }
  }
  t.same(problems.map((p) => `${p.file}:${p.line}: ${p.reference} (${p.why})`), [], 'no reference leaves the repository')
})
