import { readFile, writeFile } from 'node:fs/promises'

/**
 * The two modes of a generated document: write it, or (`--check`, in CI) fail when the committed
 * file differs from what the code generates.
 */
export async function writeOrCheck (opts: { target: string, text: string, source: string, command: string }): Promise<void> {
  const name = opts.target.split('/').at(-1)
  if (!process.argv.includes('--check')) {
    await writeFile(opts.target, opts.text)
    process.stdout.write(`wrote ${opts.target}\n`)
    return
  }
  const committed = await readFile(opts.target, 'utf8').catch(() => '')
  if (committed !== opts.text) {
    process.stderr.write(`${name} is out of date with ${opts.source}: run \`${opts.command}\` and commit it\n`)
    process.exit(1)
  }
  process.stdout.write(`${name} matches ${opts.source}\n`)
}
