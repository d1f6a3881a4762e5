#!/usr/bin/env node
/**
 * The benchmark's fake `claude`: just enough of the stream-json protocol for the service to run it
 * (system/init when a turn starts, assistant lines, a result; `--session-id` or `--resume`; stdin
 * EOF and SIGTERM end it; an `interrupt` control request ends the turn), and one directive that
 * emits lines at a controlled rate with their write time inside (see agent-lines.mjs):
 *
 *   /lines <count> <bytes> <rate> <seconds>
 *       up to <count> assistant lines of exactly <bytes> bytes, <rate> per second (0: as fast as
 *       stdout drains), for at most <seconds>; then the result
 *   /asks <count> <pause_ms>
 *       <count> permission asks (`control_request` can_use_tool, tool Bash, `input.t` its write
 *       time), one at a time: each waits for its `control_response` on stdin, then <pause_ms>;
 *       the result lists when each answer was read (`bench_answers`)
 *
 * Any other prompt gets one short assistant line. Every result carries its own write time `t`, and
 * `bench_read`: when the turn's user message was read on stdin (the multi-instance figures time a
 * message from its POST to the agent with it).
 * Times of the asks and results are wall-clock ms with sub-ms precision (performance.timeOrigin +
 * performance.now()), comparable across the processes of the machine to a few µs.
 * Only node: built-ins; no transcript is kept (a resume always succeeds), so start-up is as short
 * as Node allows.
 */
import { randomUUID } from 'node:crypto'
import { once } from 'node:events'
import { agentLine } from './agent-lines.mjs'

const args = process.argv.slice(2)
const flag = (name) => {
  const i = args.indexOf(name)
  return i === -1 ? undefined : args[i + 1]
}
const sessionId = flag('--resume') ?? flag('--session-id')
if (!sessionId) {
  process.stderr.write('paced-agent: needs --session-id <uuid> or --resume <uuid>\n')
  process.exit(1)
}
const model = flag('--model') ?? 'bench'

let running // { aborted: boolean } of the turn in progress
let eof = false
const queue = []
let lastUuid = 0
const uuid = () => `00000000-0000-4000-9000-${String(++lastUuid).padStart(12, '0')}`

/** One line; waits when the pipe is full (stdout backpressure). */
async function emitText (text) {
  if (!process.stdout.write(text + '\n')) await once(process.stdout, 'drain')
}
const emit = (message) => emitText(JSON.stringify(message))

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms))
/** wall-clock ms, sub-ms precision */
const wallMs = () => performance.timeOrigin + performance.now()

/** asks waiting for their control_response, by request id */
const answers = new Map()

/**
 * `count` can_use_tool asks, one at a time, each after the previous one was answered (or the turn
 * was interrupted); returns when each answer was read and what it said.
 */
async function asks (turn, count, pauseMs) {
  const read = []
  for (let i = 0; i < count && !turn.aborted; i++) {
    const requestId = randomUUID()
    const answered = new Promise((resolve) => {
      answers.set(requestId, resolve)
      turn.onAbort = () => resolve(null)
    })
    await emitText(JSON.stringify({
      type: 'control_request',
      request_id: requestId,
      request: { subtype: 'can_use_tool', tool_name: 'Bash', input: { command: 'bench', t: wallMs() }, tool_use_id: `toolu_${i}` }
    }))
    const answer = await answered
    answers.delete(requestId)
    turn.onAbort = undefined
    if (answer === null) break
    read.push({ requestId, readAt: answer.readAt, behavior: answer.behavior })
    if (pauseMs > 0 && i + 1 < count) await sleep(pauseMs)
  }
  return read
}

async function lines (turn, count, bytes, rate, seconds) {
  const start = process.hrtime.bigint()
  const limitNs = BigInt(Math.round(seconds * 1e9))
  let i = 0
  while (i < count && !turn.aborted) {
    const now = process.hrtime.bigint()
    if (now - start >= limitNs) break
    // paced: every line due by now (1,000/s is about one per timer tick); flood: as fast as drains
    const due = rate > 0 ? Math.min(count, Math.floor(Number(now - start) * rate / 1e9) + 1) : count
    while (i < due && !turn.aborted) {
      const line = agentLine(sessionId, i++, process.hrtime.bigint(), bytes)
      if (!process.stdout.write(line + '\n')) await once(process.stdout, 'drain')
      // a flood yields now and then so that stdin (an interrupt, EOF) is still read, and ends in time
      if (rate === 0 && i % 256 === 0) {
        await new Promise((resolve) => setImmediate(resolve))
        if (process.hrtime.bigint() - start >= limitNs) return i
      }
    }
    // paced: sleep until the next line is due (a timer tick is about 1 ms at best)
    if (rate > 0 && i < count) await sleep(Math.max(1, (i * 1e9 / rate - Number(process.hrtime.bigint() - start)) / 1e6))
  }
  return i
}

async function runTurn ({ message, readAt }) {
  const started = Date.now()
  const turn = { aborted: false }
  running = turn
  const content = message.message?.content
  const text = typeof content === 'string' ? content : Array.isArray(content) ? content.map((b) => b?.text ?? '').join('\n') : ''
  const permissionMode = flag('--permission-mode') ?? 'default'
  await emit({ type: 'system', subtype: 'init', session_id: sessionId, cwd: process.cwd(), model, tools: [], permissionMode, claude_code_version: 'bench-1.0', uuid: uuid() })
  const m = /^\/lines (\d+) (\d+) (\d+(?:\.\d+)?) (\d+(?:\.\d+)?)/.exec(text)
  const a = /^\/asks (\d+) (\d+(?:\.\d+)?)/.exec(text)
  let reply
  let benchAnswers
  if (m) {
    const n = await lines(turn, Number(m[1]), Number(m[2]), Number(m[3]), Number(m[4]))
    reply = `${n} lines`
  } else if (a) {
    benchAnswers = await asks(turn, Number(a[1]), Number(a[2]))
    reply = `${benchAnswers.length} asks answered`
  } else {
    reply = `ok: ${text.slice(0, 100)}`
    const usage = { input_tokens: 1, output_tokens: 1 }
    const blocks = [{ type: 'text', text: reply }]
    const assistant = { id: 'msg_bench', type: 'message', role: 'assistant', model, content: blocks, stop_reason: null, usage }
    await emit({ type: 'assistant', message: assistant, parent_tool_use_id: null, session_id: sessionId, uuid: uuid() })
  }
  await emit({
    type: 'result',
    subtype: turn.aborted ? 'error_during_execution' : 'success',
    is_error: turn.aborted,
    result: reply,
    duration_ms: Date.now() - started,
    duration_api_ms: 0,
    num_turns: 1,
    session_id: sessionId,
    total_cost_usd: 0,
    usage: { input_tokens: 1, output_tokens: 1, cache_read_input_tokens: 0, cache_creation_input_tokens: 0 },
    uuid: uuid(),
    ...(benchAnswers ? { bench_answers: benchAnswers } : {}),
    bench_read: readAt,
    t: wallMs()
  })
  running = undefined
}

let pumping = false
async function pump () {
  if (pumping) return
  pumping = true
  while (queue.length > 0) await runTurn(queue.shift())
  pumping = false
  if (eof) await exit(0)
}

async function exit (code) {
  if (process.stdout.writableLength > 0) await once(process.stdout, 'drain')
  process.exit(code)
}

async function onLine (line) {
  const readAt = wallMs()
  if (line.trim() === '') return
  let message
  try {
    message = JSON.parse(line)
  } catch {
    process.stderr.write('paced-agent: stdin line is not JSON\n')
    return exit(1)
  }
  if (message.type === 'user') {
    queue.push({ message, readAt })
    pump()
  } else if (message.type === 'control_request') {
    await emit({ type: 'control_response', response: { subtype: 'success', request_id: message.request_id } })
    if (message.request?.subtype === 'interrupt' && running) {
      running.aborted = true
      running.onAbort?.()
    }
  } else if (message.type === 'control_response') {
    // the answer to one of our asks
    const r = message.response
    answers.get(r?.request_id)?.({ readAt, behavior: r?.response?.behavior })
  }
}

process.on('SIGTERM', () => process.exit(143))
let rest = ''
process.stdin.setEncoding('utf8')
process.stdin.on('data', (chunk) => {
  const parts = (rest + chunk).split('\n')
  rest = parts.pop()
  for (const line of parts) onLine(line)
})
process.stdin.on('end', () => {
  if (rest) onLine(rest)
  eof = true
  // nobody is left to answer an ask
  running?.onAbort?.()
  if (!pumping) exit(0)
})
