/**
 * A fake of the Anthropic Messages API on 127.0.0.1, enough for the real Claude Code CLI to run
 * offline (integration/README.md says how the CLI is pointed at it):
 *
 * - `POST /v1/messages` (the CLI adds `?beta=true`): a server-sent-event stream — message_start
 *   (with usage), content_block_start, content_block_delta (text_delta), content_block_stop,
 *   message_delta (stop_reason end_turn, usage.output_tokens), message_stop — whose text is
 *   `fake reply to: <prompt>`. A request without `stream: true` gets the same message as JSON.
 *   The prompt (the last user message's text) can script the model:
 *   - `use-tool <Name> <JSON input>` (the JSON is the rest of the prompt, spaces allowed): the answer
 *     is one `tool_use` block of that tool with that input (id `toolu_fake_<n>`, streamed as
 *     `input_json_delta`s), `stop_reason: "tool_use"`.
 *   - `slow <ms> <rest>`: message_start at once, the rest of the answer (for `<rest>`, which may
 *     itself be `use-tool …`) after `<ms>`, or never if the client goes away first.
 *   After an interrupted turn the CLI sends the next prompt in one user message with the
 *   interrupted one and a `[Request interrupted by user…]` marker: the prompt is what follows the
 *   last marker. When the last user message carries `tool_result` blocks and no prompt (the CLI's
 *   next request after a tool use), the answer is text: `fake reply to tool_result: <the results' text>`, with ` (is_error)`
 *   after `tool_result` when one of them is an error, so a test sees whether the tool ran or was
 *   denied, and with what message.
 * - `POST /v1/messages/count_tokens`: `{ input_tokens }`.
 * - `HEAD`/`GET /api/hello`: 200 (the CLI's connectivity check after an API error).
 * - anything else: 404 with an Anthropic-style error body, and a note in `unknown`.
 *
 * Every request is recorded (method, url, parsed body) so a test can look at what the CLI sent.
 */
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http'
import type { AddressInfo } from 'node:net'

export interface RecordedRequest {
  method: string
  url: string
  path: string
  headers: IncomingMessage['headers']
  body: any
}

export interface FakeAnthropicApi {
  /** http://127.0.0.1:<port>, for ANTHROPIC_BASE_URL */
  readonly url: string
  /** every request, in arrival order */
  readonly requests: RecordedRequest[]
  /** the `POST /v1/messages` requests only */
  messageRequests (): RecordedRequest[]
  /** requests to paths the fake does not know (also logged) */
  readonly unknown: RecordedRequest[]
  /** resolves with the `n`-th `POST /v1/messages` request (1-based) once it has arrived */
  messageRequest (n: number, timeoutMs?: number): Promise<RecordedRequest>
  /** tokens reported in each reply's usage */
  readonly usage: { inputTokens: number, outputTokens: number }
  close (): Promise<void>
}

export interface FakeAnthropicApiOptions {
  /** the reply text for a prompt; default `fake reply to: <prompt>` */
  reply?: (prompt: string) => string
  /** where to report unknown paths; default console.error */
  log?: (message: string) => void
}

export const REPLY_PREFIX = 'fake reply to: '
export const TOOL_RESULT_PREFIX = 'fake reply to tool_result'
const INPUT_TOKENS = 11
const OUTPUT_TOKENS = 7

/**
 * The prompt of a Messages request: the text of the last `role:"user"` message (the CLI may append
 * a `role:"system"` message after it), without the `<system-reminder>` blocks the CLI injects.
 */
export function promptOf (body: any): string {
  const messages: any[] = Array.isArray(body?.messages) ? body.messages : []
  const lastUser = [...messages].reverse().find((m) => m?.role === 'user')
  if (!lastUser) return ''
  return textOf(lastUser.content)
}

/** The `tool_result` blocks of the last `role:"user"` message (empty when it has none). */
export function toolResultsOf (body: any): Array<{ tool_use_id: string, is_error?: boolean, content: unknown }> {
  const messages: any[] = Array.isArray(body?.messages) ? body.messages : []
  const lastUser = [...messages].reverse().find((m) => m?.role === 'user')
  if (!Array.isArray(lastUser?.content)) return []
  return lastUser.content.filter((b: any) => b?.type === 'tool_result')
}

/** The text of a tool_result's content: a string, or its text blocks joined. */
export function toolResultText (content: unknown): string {
  if (typeof content === 'string') return content
  if (!Array.isArray(content)) return ''
  return content.filter((b) => b?.type === 'text' && typeof b.text === 'string').map((b) => b.text as string).join('\n')
}

/** What the model answers: text, or one tool use. */
type Answer = { kind: 'text', text: string } | { kind: 'tool_use', name: string, input: unknown }

/** `use-tool <Name> <JSON>` → the tool use; undefined when the prompt is not one. */
export function toolUseOf (prompt: string): { name: string, input: unknown } | undefined {
  const m = /^use-tool\s+(\S+)\s+([\s\S]+)$/.exec(prompt.trim())
  if (!m) return undefined
  return { name: m[1]!, input: JSON.parse(m[2]!) }
}

/**
 * The text after the last `[Request interrupted by user…]` line: after an interrupted turn the CLI
 * sends the next prompt in the same user message as the interrupted one (or its tool_result), the
 * marker between them.
 */
export function afterInterruptMarker (text: string): string {
  const lines = text.split('\n')
  const last = lines.findLastIndex((line) => line.startsWith('[Request interrupted by user'))
  return lines.slice(last + 1).join('\n').trim()
}

/** The text of a message's content (a string or blocks), system reminders left out. */
export function textOf (content: unknown): string {
  if (typeof content === 'string') return content.startsWith('<system-reminder>') ? '' : content
  if (!Array.isArray(content)) return ''
  return content
    .filter((b) => b?.type === 'text' && typeof b.text === 'string' && !b.text.trimStart().startsWith('<system-reminder>'))
    .map((b) => b.text as string)
    .join('\n')
    .trim()
}

export async function startFakeAnthropicApi (opts: FakeAnthropicApiOptions = {}): Promise<FakeAnthropicApi> {
  const reply = opts.reply ?? ((prompt: string) => `${REPLY_PREFIX}${prompt}`)
  const log = opts.log ?? ((message: string) => console.error(message))
  const requests: RecordedRequest[] = []
  const unknown: RecordedRequest[] = []
  const arrived = new Set<() => void>()
  let counter = 0
  const messageRequests = () => requests.filter((r) => r.path === '/v1/messages' && r.method === 'POST')

  const server: Server = createServer((req, res) => {
    const chunks: Buffer[] = []
    req.on('data', (c: Buffer) => chunks.push(c))
    req.on('end', () => {
      const raw = Buffer.concat(chunks).toString('utf8')
      let body: any = raw
      if (raw !== '') {
        try { body = JSON.parse(raw) } catch { /* kept as text */ }
      }
      const url = new URL(req.url ?? '/', 'http://127.0.0.1')
      const recorded: RecordedRequest = { method: req.method ?? '', url: req.url ?? '', path: url.pathname, headers: req.headers, body }
      requests.push(recorded)
      for (const wake of arrived) wake()
      try {
        route(recorded, res)
      } catch (err) {
        log(`fake-anthropic-api: handler failed for ${recorded.method} ${recorded.url}: ${(err as Error).stack}`)
        if (!res.headersSent) sendJson(res, 500, apiError('api_error', 'fake handler failed'))
        else res.end()
      }
    })
  })

  function route (r: RecordedRequest, res: ServerResponse): void {
    if (r.path === '/v1/messages' && r.method === 'POST') return messages(r, res)
    if (r.path === '/v1/messages/count_tokens' && r.method === 'POST') return sendJson(res, 200, { input_tokens: INPUT_TOKENS })
    if (r.path === '/api/hello' && (r.method === 'HEAD' || r.method === 'GET')) {
      res.writeHead(200, { 'content-type': 'application/json' })
      res.end(r.method === 'GET' ? '{}' : undefined)
      return
    }
    unknown.push(r)
    log(`fake-anthropic-api: unknown request ${r.method} ${r.url}`)
    sendJson(res, 404, apiError('not_found_error', `the fake does not serve ${r.method} ${r.path}`))
  }

  /** The answer to a Messages request, and how long to hold it back (`slow <ms>`). */
  function answerOf (body: any): { answer: Answer, delayMs: number } {
    // a prompt sent after an interrupted turn shares its message with the interrupted prompt (or
    // tool_result) and the CLI's `[Request interrupted by user…]` marker: the new prompt wins
    let prompt = afterInterruptMarker(promptOf(body))
    const results = toolResultsOf(body)
    if (results.length > 0 && prompt === '') {
      const text = results.map((b) => toolResultText(b.content)).join('\n')
      const error = results.some((b) => b.is_error === true) ? ' (is_error)' : ''
      return { answer: { kind: 'text', text: `${TOOL_RESULT_PREFIX}${error}: ${text}` }, delayMs: 0 }
    }
    let delayMs = 0
    const slow = /^slow\s+(\d+)\s+([\s\S]*)$/.exec(prompt)
    if (slow) {
      delayMs = Number(slow[1])
      prompt = slow[2]!
    }
    let toolUse: { name: string, input: unknown } | undefined
    try {
      toolUse = toolUseOf(prompt)
    } catch (err) {
      return { answer: { kind: 'text', text: `fake: bad use-tool input: ${(err as Error).message}` }, delayMs }
    }
    if (toolUse) return { answer: { kind: 'tool_use', ...toolUse }, delayMs }
    return { answer: { kind: 'text', text: reply(prompt) }, delayMs }
  }

  function messages (r: RecordedRequest, res: ServerResponse): void {
    const id = `msg_fake_${++counter}`
    const model = typeof r.body?.model === 'string' ? r.body.model : 'claude-fake'
    const { answer, delayMs } = answerOf(r.body)
    const usage = { input_tokens: INPUT_TOKENS, output_tokens: OUTPUT_TOKENS, cache_creation_input_tokens: 0, cache_read_input_tokens: 0 }
    const toolUseId = `toolu_fake_${counter}`
    const block = answer.kind === 'text'
      ? { type: 'text', text: answer.text }
      : { type: 'tool_use', id: toolUseId, name: answer.name, input: answer.input }
    const stopReason = answer.kind === 'text' ? 'end_turn' : 'tool_use'
    if (r.body?.stream !== true) {
      sendJson(res, 200, {
        id, type: 'message', role: 'assistant', model, content: [block], stop_reason: stopReason, stop_sequence: null, usage
      })
      return
    }
    res.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-cache', connection: 'keep-alive', 'request-id': `req_fake_${counter}` })
    const event = (type: string, data: Record<string, unknown>) => res.write(`event: ${type}\ndata: ${JSON.stringify({ type, ...data })}\n\n`)
    event('message_start', {
      message: {
        id, type: 'message', role: 'assistant', model, content: [], stop_reason: null, stop_sequence: null, usage: { ...usage, output_tokens: 1 }
      }
    })
    const rest = () => {
      if (res.destroyed || res.writableEnded) return
      // each answer in two deltas, so it really streams
      if (answer.kind === 'text') {
        const cut = Math.ceil(answer.text.length / 2)
        event('content_block_start', { index: 0, content_block: { type: 'text', text: '' } })
        event('content_block_delta', { index: 0, delta: { type: 'text_delta', text: answer.text.slice(0, cut) } })
        event('content_block_delta', { index: 0, delta: { type: 'text_delta', text: answer.text.slice(cut) } })
      } else {
        const json = JSON.stringify(answer.input)
        const cut = Math.ceil(json.length / 2)
        event('content_block_start', { index: 0, content_block: { type: 'tool_use', id: toolUseId, name: answer.name, input: {} } })
        event('content_block_delta', { index: 0, delta: { type: 'input_json_delta', partial_json: json.slice(0, cut) } })
        event('content_block_delta', { index: 0, delta: { type: 'input_json_delta', partial_json: json.slice(cut) } })
      }
      event('content_block_stop', { index: 0 })
      event('message_delta', { delta: { stop_reason: stopReason, stop_sequence: null }, usage: { output_tokens: OUTPUT_TOKENS } })
      event('message_stop', {})
      res.end()
    }
    if (delayMs === 0) return rest()
    const timer = setTimeout(rest, delayMs)
    res.once('close', () => clearTimeout(timer))
  }

  await new Promise<void>((resolve, reject) => {
    server.once('error', reject)
    server.listen(0, '127.0.0.1', () => resolve())
  })
  const { port } = server.address() as AddressInfo

  return {
    url: `http://127.0.0.1:${port}`,
    requests,
    unknown,
    usage: { inputTokens: INPUT_TOKENS, outputTokens: OUTPUT_TOKENS },
    messageRequests,
    messageRequest: (n, timeoutMs = 60_000) => new Promise((resolve, reject) => {
      const check = () => {
        const found = messageRequests()[n - 1]
        if (!found) return
        done()
        resolve(found)
      }
      const timer = setTimeout(() => {
        done()
        reject(new Error(`fake-anthropic-api: no Messages request #${n} within ${timeoutMs} ms (${messageRequests().length} so far)`))
      }, timeoutMs)
      const done = () => {
        clearTimeout(timer)
        arrived.delete(check)
      }
      arrived.add(check)
      check()
    }),
    close: () => new Promise<void>((resolve) => {
      server.closeAllConnections()
      server.close(() => resolve())
    })
  }
}

function apiError (type: string, message: string) {
  return { type: 'error', error: { type, message } }
}

function sendJson (res: ServerResponse, status: number, body: unknown): void {
  const text = JSON.stringify(body)
  res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text) })
  res.end(text)
}

// Run on its own (`npx tsx integration/fake-anthropic-api.ts`) to drive the CLI by hand.
if (import.meta.url === `file://${process.argv[1]}`) {
  const api = await startFakeAnthropicApi()
  console.log(`fake Anthropic API on ${api.url}`)
  const dump = () => console.log(JSON.stringify(api.requests.map((r) => ({ method: r.method, url: r.url, body: r.body })), null, 1))
  process.on('SIGINT', () => { dump(); process.exit(0) })
  process.on('SIGTERM', () => { dump(); process.exit(0) })
}
