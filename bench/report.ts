// Figures, targets and the final table.
import type { LoadSummary } from './load.js'

export type Db = 'postgres' | 'pglite'

export interface Row {
  figure: string
  db: Db | '-'
  /** the measured value as printed, e.g. "4,321 req/s" */
  value: string
  p99Ms?: number | undefined
  /** value / bare Fastify req/s of the same section */
  xBare?: number | undefined
  /** non-2xx responses, errors and timeouts, when any */
  failures?: string | undefined
  target?: string | undefined
  pass?: boolean | undefined
}

const int = (n: number) => Math.round(n).toLocaleString('en-US')
const ratio = (n: number | undefined) => (n === undefined || !Number.isFinite(n) ? '-' : `${n.toFixed(n < 0.1 ? 3 : 2)}×`)
const ms = (n: number | undefined) => (n === undefined || !Number.isFinite(n) ? '-' : `${n < 10 ? n.toFixed(1) : Math.round(n)} ms`)

export const fmt = { int, ratio, ms }

/** Non-2xx, socket errors and timeouts of a run; undefined when it was clean. */
export function failuresOf (s: LoadSummary): string | undefined {
  const parts: string[] = []
  if (s.non2xx > 0) {
    const codes = Object.entries(s.statusCodes).filter(([c]) => !c.startsWith('2')).map(([c, n]) => `${n}×${c}`)
    parts.push(`non-2xx ${codes.join(' ')}`)
  }
  if (s.errors > 0) parts.push(`${s.errors} errors`)
  if (s.timeouts > 0) parts.push(`${s.timeouts} timeouts`)
  return parts.length ? parts.join(', ') : undefined
}

export class Report {
  readonly rows: Row[] = []

  add (row: Row): Row {
    this.rows.push(row)
    const verdict = row.pass === undefined ? 'info' : row.pass ? 'PASS' : 'FAIL'
    const extras = [
      row.p99Ms === undefined ? '' : `p99 ${ms(row.p99Ms)}`,
      row.xBare === undefined ? '' : `${ratio(row.xBare)} bare Fastify`,
      row.target ? `target ${row.target}` : '',
      row.failures ? `(${row.failures})` : ''
    ].filter(Boolean).join(' · ')
    console.log(`  ${verdict.padEnd(4)}  ${row.figure} [${row.db}]: ${row.value}${extras ? ` · ${extras}` : ''}`)
    return row
  }

  /** A service figure from an autocannon run, compared with the section's bare Fastify req/s. */
  load (figure: string, db: Db, s: LoadSummary, bareRps: number, check?: { target: string, pass: boolean }): Row {
    return this.add({
      figure,
      db,
      value: `${int(s.rps)} req/s`,
      p99Ms: s.p99,
      xBare: s.rps / bareRps,
      failures: failuresOf(s),
      ...(check ? { target: check.target, pass: check.pass } : {})
    })
  }

  markdown (): string {
    const head = ['Figure', 'DB', 'Value', 'p99', '× bare Fastify', 'Target', 'Result', 'Non-2xx / errors']
    const lines = [
      `| ${head.join(' | ')} |`,
      `| ${head.map(() => '---').join(' | ')} |`,
      ...this.rows.map((r) => `| ${[
        r.figure, r.db, r.value, ms(r.p99Ms), ratio(r.xBare), r.target ?? '', r.pass === undefined ? '' : r.pass ? 'PASS' : '**FAIL**', r.failures ?? ''
      ].join(' | ')} |`)
    ]
    return lines.join('\n')
  }

  get failed (): Row[] {
    return this.rows.filter((r) => r.pass === false)
  }
}
