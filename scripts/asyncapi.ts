/**
 * Writes asyncapi.yaml, the AsyncAPI 3.0 document of the WebSocket stream, from the TypeBox frame
 * schemas (`npm run asyncapi`), or with --check fails when the committed file differs from what
 * the schemas produce (`npm run asyncapi:check`, run by CI). The document itself is built by
 * src/schemas/asyncapi.ts, which the service also serves at /asyncapi.json.
 */
import { readFile } from 'node:fs/promises'
import { fileURLToPath } from 'node:url'
import YAML from 'yaml'
import { asyncApiDocument } from '../src/schemas/asyncapi.js'
import { writeOrCheck } from './generated-file.js'

const target = fileURLToPath(new URL('../asyncapi.yaml', import.meta.url))
const pkg = JSON.parse(await readFile(new URL('../package.json', import.meta.url), 'utf8')) as { version: string }

const HEADER = '# Generated from the TypeBox frame schemas by scripts/asyncapi.ts (`npm run asyncapi`). Do not edit.\n'
// YAML 1.1 rules for quoting, so that a 1.1 reader does not take an example's timestamp for a date
const yaml = HEADER + YAML.stringify(asyncApiDocument(pkg.version), { lineWidth: 0, version: '1.1' })

await writeOrCheck({ target, text: yaml, source: 'the frame schemas', command: 'npm run asyncapi' })
