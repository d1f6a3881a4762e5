// Database-independent: opens no database, so CI runs it once, in the PGlite pass (.ci/run).
/**
 * The fake Claude Code CLI (test/fixtures/fake-claude.mjs) that the service's agent tests use as
 * CLAUDE_BIN: its arguments, transcripts, turns, directives, control requests, ways of ending and
 * environment switches, each checked against the protocol the real CLI speaks (docs/AGENTS.md, "How the CLI is run").
 *
 * Every child gets an explicit environment, a temp CLAUDE_CONFIG_DIR and a temp cwd. Waiting is on
 * events (a stdout line, a stderr note, the exit), never on sleeps, and every wait is bounded. Every
 * process started here, grandchildren included, is killed in teardown.
 */
import { spawn, type ChildProcess } from 'node:child_process'
import { randomUUID } from 'node:crypto'
import { existsSync } from 'node:fs'
import { mkdir, mkdtemp, readFile, realpath, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import t, { type Test } from 'tap'

const FAKE = fileURLToPath(new URL('./fixtures/fake-claude.mjs', import.meta.url))
const STREAM_ARGS = ['-p', '--input-format', 'stream-json', '--output-format', 'stream-json', '--verbose']
const WAIT_MS = 15_000

type Line = Record<string, any>
interface Exit { code: number | null, signal: NodeJS.Signals | null }

/** One fake process: its parsed stdout lines, raw stderr, and exit, with bounded waits on them. */
class Fake {
  readonly lines: Line[] = []
  /** stdout text after the last newline: a line cut off by a crash */
  rest = ''
  stderr = ''
  exit: Exit | undefined
  readonly exited: Promise<Exit>
  #waiters = new Set<() => void>()

  constructor (readonly proc: ChildProcess) {
    proc.stdout?.setEncoding('utf8').on('data', (chunk: string) => {
      const parts = (this.rest + chunk).split('\n')
      this.rest = parts.pop() ?? ''
      for (const part of parts) this.lines.push(JSON.parse(part) as Line)
      this.#wake()
    })
    proc.stderr?.setEncoding('utf8').on('data', (chunk: string) => {
      this.stderr += chunk
      this.#wake()
    })
    this.exited = new Promise((resolve) => {
      proc.once('close', (code, signal) => {
        this.exit = { code, signal }
        this.#wake()
        resolve(this.exit)
      })
    })
  }

  #wake (): void {
    for (const waiter of this.#waiters) waiter()
  }

  /** Resolves once `ready()` returns a value; rejects if the process ends first or on timeout. */
  #until<T> (ready: () => T | undefined, what: string): Promise<T> {
    return new Promise((resolve, reject) => {
      const check = () => {
        const value = ready()
        if (value !== undefined) return done(() => resolve(value))
        if (this.exit) return done(() => reject(new Error(`exited ${JSON.stringify(this.exit)} before ${what}\n${this.describe()}`)))
      }
      const timer = setTimeout(() => done(() => reject(new Error(`no ${what} within ${WAIT_MS} ms\n${this.describe()}`))), WAIT_MS)
      const done = (settle: () => void) => {
        clearTimeout(timer)
        this.#waiters.delete(check)
        settle()
      }
      this.#waiters.add(check)
      check()
    })
  }

  /** The `n`-th (1-based) stdout line that matches. */
  line (match: (line: Line) => boolean, what: string, n = 1): Promise<Line> {
    return this.#until(() => this.lines.filter(match)[n - 1], what)
  }

  result (n = 1): Promise<Line> {
    return this.line((l) => l.type === 'result', `result #${n}`, n)
  }

  stderrIncludes (text: string): Promise<true> {
    return this.#until(() => this.stderr.includes(text) || undefined, `stderr "${text}"`)
  }

  waitExit (): Promise<Exit> {
    return this.#until(() => this.exit, 'exit').catch((err: Error) => {
      if (this.exit) return this.exit
      throw err
    })
  }

  send (message: unknown): void {
    this.proc.stdin?.write(JSON.stringify(message) + '\n')
  }

  prompt (content: unknown, uuid?: string): void {
    this.send({ type: 'user', message: { role: 'user', content }, parent_tool_use_id: null, session_id: '', ...(uuid ? { uuid } : {}) })
  }

  end (): void {
    this.proc.stdin?.end()
  }

  types (): string[] {
    return this.lines.map((l) => l.subtype ? `${l.type}/${l.subtype}` : String(l.type))
  }

  describe (): string {
    return `stdout: ${JSON.stringify(this.lines).slice(0, 2000)}\nstderr: ${this.stderr}`
  }
}

/** A temp root holding a config dir, a home and a working directory; removed in teardown. */
async function sandbox (t: Test) {
  const root = await realpath(await mkdtemp(join(tmpdir(), 'fake-claude-')))
  t.teardown(() => rm(root, { recursive: true, force: true }))
  const dirs = { root, config: join(root, 'config'), home: join(root, 'home'), cwd: join(root, 'work'), otherCwd: join(root, 'elsewhere') }
  await Promise.all([mkdir(dirs.home), mkdir(dirs.cwd), mkdir(dirs.otherCwd)])
  return dirs
}
type Sandbox = Awaited<ReturnType<typeof sandbox>>

interface StartOptions {
  args?: string[]
  env?: Record<string, string | undefined>
  cwd?: string
}

/** Spawns the fake with an explicit environment (no inherited CLAUDE_*, NODE_OPTIONS, …). */
function start (t: Test, box: Sandbox, { args = [], env = {}, cwd = box.cwd }: StartOptions): Fake {
  const clean: Record<string, string> = { PATH: process.env.PATH ?? '/usr/bin:/bin', HOME: box.home, CLAUDE_CONFIG_DIR: box.config }
  for (const [key, value] of Object.entries(env)) {
    if (value === undefined) delete clean[key]
    else clean[key] = value
  }
  const fake = new Fake(spawn(FAKE, args, { cwd, env: clean, stdio: ['pipe', 'pipe', 'pipe'] }))
  t.teardown(async () => {
    if (!fake.exit) fake.proc.kill('SIGKILL')
    await fake.exited
  })
  return fake
}

function transcriptFile (configDir: string, cwd: string, id: string): string {
  return join(configDir, 'projects', cwd.replaceAll('/', '-'), `${id}.jsonl`)
}

async function transcript (configDir: string, cwd: string, id: string): Promise<Line[]> {
  const text = await readFile(transcriptFile(configDir, cwd, id), 'utf8')
  return text.split('\n').filter(Boolean).map((l) => JSON.parse(l) as Line)
}

const assistantText = (line: Line): string => line.message.content[0].text

// ---------------------------------------------------------------------------------------------

t.test('arguments', async (t) => {
  const box = await sandbox(t)
  const id = randomUUID()
  const bad: Array<[string, string[], string]> = [
    ['an unknown flag', [...STREAM_ARGS, '--session-id', id, '--bogus'], "unknown option '--bogus'"],
    ['no --verbose with stream-json output', STREAM_ARGS.filter((a) => a !== '--verbose').concat('--session-id', id), 'requires --verbose'],
    ['neither --session-id nor --resume', STREAM_ARGS, 'exactly one of'],
    ['both --session-id and --resume', [...STREAM_ARGS, '--session-id', id, '--resume', id], 'exactly one of'],
    ['a session id that is not a UUID', [...STREAM_ARGS, '--session-id', 'nope'], 'Invalid session ID'],
    ['a flag without its value', [...STREAM_ARGS, '--session-id'], 'argument missing'],
    ['a positional prompt', [...STREAM_ARGS, '--session-id', id, 'hello'], 'unexpected argument'],
    ['an unknown permission mode', [...STREAM_ARGS, '--session-id', id, '--permission-mode', 'bogus'], "argument 'bogus' is invalid"],
    ['a permission prompt tool other than stdio', [...STREAM_ARGS, '--session-id', id, '--permission-prompt-tool', 'mcp__x'], 'only supports --permission-prompt-tool stdio']
  ]
  for (const [what, args, message] of bad) {
    const fake = start(t, box, { args })
    const exit = await fake.waitExit()
    t.same(exit, { code: 1, signal: null }, `${what}: exit 1`)
    t.match(fake.stderr, message, `${what}: says why on stderr`)
    t.same(fake.lines, [], `${what}: nothing on stdout`)
  }

  await t.test('every optional flag the service may pass is accepted', async (t) => {
    const fake = start(t, box, {
      args: [...STREAM_ARGS, '--session-id', randomUUID(), '--model', 'claude-test-1', '--permission-mode', 'acceptEdits',
        '--include-partial-messages', '--permission-prompt-tool', 'stdio', '--setting-sources', '', '--allow-dangerously-skip-permissions']
    })
    fake.prompt('hi')
    fake.end()
    t.same(await fake.waitExit(), { code: 0, signal: null })
    t.match(fake.lines[0], { type: 'system', subtype: 'init', model: 'claude-test-1', permissionMode: 'acceptEdits' })
    t.ok(fake.lines.some((l) => l.type === 'stream_event' && l.event.delta?.text === 'echo: hi'), '--include-partial-messages adds stream events')
    t.match(fake.lines.at(-1), { type: 'result', subtype: 'success' })
  })
})

t.test('nothing is printed, nor a transcript written, before the first stdin line', async (t) => {
  const box = await sandbox(t)
  const id = randomUUID()
  const fake = start(t, box, { args: [...STREAM_ARGS, '--session-id', id] })
  fake.end()
  t.same(await fake.waitExit(), { code: 0, signal: null }, 'EOF with no input: exit 0')
  t.same(fake.lines, [], 'no output at all')
  t.equal(fake.rest, '')
  t.notOk(existsSync(transcriptFile(box.config, box.cwd, id)), 'no transcript: a later --resume finds nothing')
})

t.test('a turn: init, assistant, result with deterministic numbers; the transcript', async (t) => {
  const box = await sandbox(t)
  const id = randomUUID()
  const fake = start(t, box, { args: [...STREAM_ARGS, '--session-id', id] })
  const uuid = randomUUID()
  fake.prompt('hello world', uuid)
  const result = await fake.result()
  t.same(fake.types(), ['system/init', 'assistant', 'result/success'])
  const [init, assistant] = fake.lines as [Line, Line]
  t.match(init, {
    session_id: id, cwd: box.cwd, model: 'claude-fake-model', tools: ['AskUserQuestion', 'Bash', 'Edit', 'NotebookEdit', 'Read', 'Write'], permissionMode: 'default', claude_code_version: 'fake-1.0'
  })
  t.match(assistant, {
    session_id: id,
    parent_tool_use_id: null,
    message: {
      role: 'assistant',
      model: 'claude-fake-model',
      content: [{ type: 'text', text: 'echo: hello world' }],
      usage: { input_tokens: 11, output_tokens: 17, cache_read_input_tokens: 0, cache_creation_input_tokens: 0 }
    }
  })
  t.match(assistant.message.id, /^msg_/)
  t.notOk('error' in assistant, 'no error on a good turn')
  t.match(result, {
    is_error: false,
    result: 'echo: hello world',
    num_turns: 1,
    session_id: id,
    total_cost_usd: 0.001,
    usage: { input_tokens: 11, output_tokens: 17, cache_read_input_tokens: 0, cache_creation_input_tokens: 0 },
    user_message_uuid: uuid
  })
  t.type(result.duration_ms, 'number')

  const entries = await transcript(box.config, box.cwd, id)
  t.match(entries, [
    { type: 'user', uuid, sessionId: id, message: { role: 'user', content: 'hello world' } },
    { type: 'assistant', parentUuid: uuid, message: { content: [{ text: 'echo: hello world' }] } }
  ], 'one line per prompt and per reply, written as the turn happened (the process still runs)')
  t.notOk(fake.exit)

  fake.end()
  t.same(await fake.waitExit(), { code: 0, signal: null })
})

t.test('without CLAUDE_CONFIG_DIR the transcript goes under $HOME/.claude', async (t) => {
  const box = await sandbox(t)
  const id = randomUUID()
  const fake = start(t, box, { args: [...STREAM_ARGS, '--session-id', id], env: { CLAUDE_CONFIG_DIR: undefined } })
  fake.prompt('at home')
  fake.end()
  t.same(await fake.waitExit(), { code: 0, signal: null })
  t.equal((await transcript(join(box.home, '.claude'), box.cwd, id)).length, 2)
  t.notOk(existsSync(box.config))
})

t.test('content blocks, and lines sent during a turn run as later turns in order', async (t) => {
  const box = await sandbox(t)
  const fake = start(t, box, { args: [...STREAM_ARGS, '--session-id', randomUUID()] })
  const uuids = [randomUUID(), randomUUID(), randomUUID()]
  fake.prompt([{ type: 'text', text: '/slow 200 one' }], uuids[0])
  await fake.line((l) => l.subtype === 'init', 'init of the slow turn')
  fake.prompt([{ type: 'text', text: 'two' }, { type: 'image', source: {} }], uuids[1])
  fake.prompt('three', uuids[2])
  const third = await fake.result(3)
  t.same(fake.types(), ['system/init', 'assistant', 'result/success', 'system/init', 'assistant', 'result/success', 'system/init', 'assistant', 'result/success'])
  const results = fake.lines.filter((l) => l.type === 'result')
  t.same(results.map((r) => r.user_message_uuid), uuids, 'each result names its prompt, in order')
  t.same(results.map((r) => r.result), ['echo: one', 'echo: two | remembered: one', 'echo: three | remembered: one / two'])
  t.same(results.map((r) => r.usage.cache_read_input_tokens), [0, 10, 20])
  t.same(results.map((r) => r.total_cost_usd), [0.001, 0.002, 0.003], 'cost is cumulative')
  t.equal(third.usage.input_tokens, 'three'.length)
  fake.end()
  t.same(await fake.waitExit(), { code: 0, signal: null })
})

t.test('--resume restores the history and carries the cost over; failures', async (t) => {
  const box = await sandbox(t)
  const id = randomUUID()
  const first = start(t, box, { args: [...STREAM_ARGS, '--session-id', id] })
  first.prompt('alpha')
  first.prompt('beta')
  first.end()
  t.same(await first.waitExit(), { code: 0, signal: null })
  t.equal(first.lines.filter((l) => l.type === 'result').length, 2)

  await t.test('resume remembers earlier turns and the cumulative cost', async (t) => {
    const fake = start(t, box, { args: [...STREAM_ARGS, '--resume', id] })
    fake.prompt('gamma')
    const result = await fake.result()
    t.match(fake.lines[0], { subtype: 'init', session_id: id }, 'the same session id')
    t.match(result, {
      session_id: id,
      result: 'echo: gamma | remembered: alpha / beta',
      total_cost_usd: 0.003,
      usage: { cache_read_input_tokens: 20 }
    })
    fake.end()
    t.same(await fake.waitExit(), { code: 0, signal: null })
    t.equal((await transcript(box.config, box.cwd, id)).length, 6, 'appended to the same transcript')
  })

  await t.test('--session-id of an existing conversation is refused', async (t) => {
    const fake = start(t, box, { args: [...STREAM_ARGS, '--session-id', id] })
    t.same(await fake.waitExit(), { code: 1, signal: null })
    t.equal(fake.stderr, `Error: Session ID ${id} is already in use.\n`)
    t.same(fake.lines, [])
  })

  const notFound = async (t: Test, fake: Fake, what: string) => {
    // stdin stays open and unwritten: the fake must give up on its own, before reading it
    t.same(await fake.waitExit(), { code: 1, signal: null }, `${what}: exit 1 without any stdin`)
    t.equal(fake.lines.length, 1, 'one stdout line')
    t.match(fake.lines[0], {
      type: 'result',
      subtype: 'error_during_execution',
      is_error: true,
      num_turns: 0,
      errors: [`No conversation found with session ID: ${id}`],
      total_cost_usd: 0,
      usage: { input_tokens: 0, output_tokens: 0, cache_read_input_tokens: 0, cache_creation_input_tokens: 0 }
    })
    t.match(fake.lines[0]?.session_id, /^[0-9a-f-]{36}$/)
    t.not(fake.lines[0]?.session_id, id, 'a random session id, not the one asked for')
    t.match(fake.stderr, `No conversation found with session ID: ${id}`)
  }

  await t.test('resume from another working directory finds nothing', async (t) => {
    await notFound(t, start(t, box, { args: [...STREAM_ARGS, '--resume', id], cwd: box.otherCwd }), 'other cwd')
  })
  await t.test('resume with another config directory finds nothing', async (t) => {
    await notFound(t, start(t, box, { args: [...STREAM_ARGS, '--resume', id], env: { CLAUDE_CONFIG_DIR: join(box.root, 'wiped') } }), 'other config')
  })
  await t.test('FAKE_CLAUDE_REFUSE_RESUME=1 refuses a resume that would work', async (t) => {
    await notFound(t, start(t, box, { args: [...STREAM_ARGS, '--resume', id], env: { FAKE_CLAUDE_REFUSE_RESUME: '1' } }), 'refused')
  })
})

t.test('/crash: exit 3 mid-turn, no result, the prompt kept in the transcript', async (t) => {
  const box = await sandbox(t)
  const id = randomUUID()
  const fake = start(t, box, { args: [...STREAM_ARGS, '--session-id', id] })
  fake.prompt('/crash boom')
  t.same(await fake.waitExit(), { code: 3, signal: null })
  t.same(fake.types(), ['system/init', 'assistant'], 'init and a partial reply, no result')
  t.equal(assistantText(fake.lines[1] as Line), 'partial: boom')
  t.match(fake.rest, /^\{"type":"assistant"/, 'and a line cut off mid-write (no newline)')
  const entries = await transcript(box.config, box.cwd, id)
  t.match(entries, [{ type: 'user', message: { content: '/crash boom' } }], 'the prompt, and no reply')
  t.equal(entries.length, 1)

  const resumed = start(t, box, { args: [...STREAM_ARGS, '--resume', id] })
  resumed.prompt('after')
  t.match(await resumed.result(), { result: 'echo: after | remembered: boom', total_cost_usd: 0.002 }, 'the crashed turn is history')
  resumed.end()
  t.same(await resumed.waitExit(), { code: 0, signal: null })
})

t.test('interrupt', async (t) => {
  const box = await sandbox(t)

  await t.test('during a turn: control_response, interrupted user line, aborted result; lives on', async (t) => {
    const fake = start(t, box, { args: [...STREAM_ARGS, '--session-id', randomUUID()] })
    const uuid = randomUUID()
    fake.prompt('/slow 60000 long', uuid)
    await fake.line((l) => l.subtype === 'init', 'init')
    fake.send({ type: 'control_request', request_id: 'req-1', request: { subtype: 'interrupt' } })
    const result = await fake.result()
    t.same(fake.types(), ['system/init', 'control_response', 'user', 'result/error_during_execution'])
    t.same(fake.lines[1], { type: 'control_response', response: { subtype: 'success', request_id: 'req-1', response: { still_queued: [] } } })
    t.match(fake.lines[2], { type: 'user', message: { role: 'user', content: [{ type: 'text', text: '[Request interrupted by user]' }] } })
    t.match(result, { is_error: true, terminal_reason: 'aborted_streaming', user_message_uuid: uuid, total_cost_usd: 0.001 })

    fake.prompt('next')
    t.match(await fake.result(2), { subtype: 'success', result: 'echo: next | remembered: long', total_cost_usd: 0.002 }, 'the process lives on')
    fake.end()
    t.same(await fake.waitExit(), { code: 0, signal: null }, 'EOF after a turn that was not interrupted: exit 0 (like the real CLI)')
  })

  await t.test('EOF right after an interrupted turn: exit 1', async (t) => {
    const fake = start(t, box, { args: [...STREAM_ARGS, '--session-id', randomUUID()] })
    fake.prompt('/slow 60000 long')
    await fake.line((l) => l.subtype === 'init', 'init')
    fake.send({ type: 'control_request', request_id: 'req-e', request: { subtype: 'interrupt' } })
    await fake.result()
    fake.end()
    t.same(await fake.waitExit(), { code: 1, signal: null })
  })

  await t.test('still_queued lists the uuids of the messages waiting behind the interrupted turn', async (t) => {
    const fake = start(t, box, { args: [...STREAM_ARGS, '--session-id', randomUUID()] })
    const queued = randomUUID()
    fake.prompt('/slow 60000 long')
    await fake.line((l) => l.subtype === 'init', 'init')
    fake.prompt('waiting', queued)
    fake.send({ type: 'control_request', request_id: 'req-q', request: { subtype: 'interrupt' } })
    t.same((await fake.line((l) => l.type === 'control_response', 'control_response')).response,
      { subtype: 'success', request_id: 'req-q', response: { still_queued: [queued] } })
    t.match(await fake.result(2), { subtype: 'success', result: 'echo: waiting | remembered: long' }, 'the queued message still runs')
    fake.end()
    t.same(await fake.waitExit(), { code: 0, signal: null })
  })

  await t.test('during a flood: the rest of the flood is dropped', async (t) => {
    const fake = start(t, box, { args: [...STREAM_ARGS, '--session-id', randomUUID()] })
    fake.prompt('/flood 100000 100 x')
    await fake.line((l) => l.type === 'assistant', 'the first flood line')
    fake.send({ type: 'control_request', request_id: 'req-f', request: { subtype: 'interrupt' } })
    t.match(await fake.result(), { subtype: 'error_during_execution', terminal_reason: 'aborted_streaming' })
    t.ok(fake.lines.filter((l) => l.type === 'assistant').length < 100000, 'stopped early')
    fake.end()
    t.same(await fake.waitExit(), { code: 1, signal: null })
  })

  await t.test('while idle: only the control_response', async (t) => {
    const fake = start(t, box, { args: [...STREAM_ARGS, '--session-id', randomUUID()] })
    fake.send({ type: 'control_request', request_id: 'req-2', request: { subtype: 'interrupt' } })
    await fake.line((l) => l.type === 'control_response', 'control_response')
    fake.prompt('then a turn')
    await fake.result()
    t.same(fake.types(), ['control_response', 'system/init', 'assistant', 'result/success'])
    fake.end()
    t.same(await fake.waitExit(), { code: 0, signal: null }, 'nothing was interrupted: exit 0')
  })

  await t.test('an unsupported control request gets an error response', async (t) => {
    const fake = start(t, box, { args: [...STREAM_ARGS, '--session-id', randomUUID()] })
    fake.send({ type: 'control_request', request_id: 'req-3', request: { subtype: 'no_such_thing' } })
    t.same(await fake.line((l) => l.type === 'control_response', 'control_response'), {
      type: 'control_response',
      response: { subtype: 'error', request_id: 'req-3', error: 'Unsupported control request subtype: no_such_thing', error_code: 'unsupported_request' }
    })
    fake.end()
    t.same(await fake.waitExit(), { code: 0, signal: null })
  })
})

t.test('ending', async (t) => {
  const box = await sandbox(t)

  await t.test('stdin EOF drains: the running and queued turns finish, then exit 0', async (t) => {
    const fake = start(t, box, { args: [...STREAM_ARGS, '--session-id', randomUUID()] })
    fake.prompt('/slow 300 slow')
    fake.prompt('queued')
    fake.end()
    t.same(await fake.waitExit(), { code: 0, signal: null })
    t.same(fake.lines.filter((l) => l.type === 'result').map((l) => l.result), ['echo: slow', 'echo: queued | remembered: slow'])
  })

  await t.test('SIGTERM: exit 143 at once, no result', async (t) => {
    const fake = start(t, box, { args: [...STREAM_ARGS, '--session-id', randomUUID()] })
    fake.prompt('/slow 60000 never')
    await fake.line((l) => l.subtype === 'init', 'init')
    const sent = Date.now()
    fake.proc.kill('SIGTERM')
    t.same(await fake.waitExit(), { code: 143, signal: null })
    t.ok(Date.now() - sent < 5000, 'promptly')
    t.same(fake.types(), ['system/init'])
  })

  await t.test('/exit <code>: the turn finishes, then that exit code', async (t) => {
    const fake = start(t, box, { args: [...STREAM_ARGS, '--session-id', randomUUID()] })
    fake.prompt('/slow 10 /exit 7 bye')
    t.same(await fake.waitExit(), { code: 7, signal: null })
    t.same(fake.types(), ['system/init', 'assistant', 'result/success'])
    t.equal(fake.lines[2]?.result, 'echo: bye', 'chained directives are all stripped')
  })

  await t.test('FAKE_CLAUDE_IGNORE_TERM=1: SIGTERM and EOF are ignored, only SIGKILL ends it', async (t) => {
    const fake = start(t, box, { args: [...STREAM_ARGS, '--session-id', randomUUID()], env: { FAKE_CLAUDE_IGNORE_TERM: '1' } })
    fake.prompt('/slow 200 stubborn')
    await fake.line((l) => l.subtype === 'init', 'init')
    fake.proc.kill('SIGTERM')
    await fake.stderrIncludes('ignoring SIGTERM')
    t.match(await fake.result(), { subtype: 'success', result: 'echo: stubborn' }, 'the turn carried on')
    fake.end()
    await fake.stderrIncludes('ignoring stdin EOF')
    fake.proc.kill('SIGTERM')
    t.notOk(fake.exit, 'still running after EOF')
    fake.proc.kill('SIGKILL')
    t.same(await fake.waitExit(), { code: null, signal: 'SIGKILL' }, 'ended by SIGKILL, not by EOF or SIGTERM')
  })
})

t.test('/grandchild escapes the process group and outlives the fake', async (t) => {
  const box = await sandbox(t)
  const marker = `fake-claude-test-${randomUUID()}`
  const fake = start(t, box, { args: [...STREAM_ARGS, '--session-id', randomUUID()], env: { MOBVIBE_AGENT_SESSION: marker } })
  fake.prompt('/grandchild spawn')
  const result = await fake.result()
  const pid = Number(/^grandchild (\d+) \| echo: spawn$/.exec(result.result)?.[1])
  t.ok(pid > 0, `the reply names the pid: ${result.result}`)
  t.teardown(() => {
    try { process.kill(pid, 'SIGKILL') } catch { /* already gone */ }
  })
  t.match(assistantText(fake.lines.find((l) => l.type === 'assistant') as Line), `grandchild ${pid}`)
  fake.end()
  t.same(await fake.waitExit(), { code: 0, signal: null }, 'the fake exits on EOF regardless')

  const stat = await readFile(`/proc/${pid}/stat`, 'utf8')
  const [state, , pgrp, session] = stat.slice(stat.lastIndexOf(')') + 2).split(' ')
  t.not(state, 'Z', 'the grandchild is alive after the fake exited')
  t.equal(Number(session), pid, 'in its own session')
  t.equal(Number(pgrp), pid, 'and its own process group')
  t.not(Number(pgrp), fake.proc.pid)
  const environ = (await readFile(`/proc/${pid}/environ`, 'utf8')).split('\0')
  t.ok(environ.includes(`MOBVIBE_AGENT_SESSION=${marker}`), 'the environment marker is visible in /proc/<pid>/environ')
})

t.test('/flood 200 1000 arrives complete and in order', async (t) => {
  const box = await sandbox(t)
  const fake = start(t, box, { args: [...STREAM_ARGS, '--session-id', randomUUID()] })
  fake.prompt('/flood 200 1000 big')
  const result = await fake.result()
  const floods = fake.lines.filter((l) => l.type === 'assistant').map(assistantText)
  t.equal(floods.length, 201, '200 flood lines and the reply')
  t.ok(floods.slice(0, 200).every((text, i) => text.length === 1000 && text.startsWith(`flood ${i + 1}/200 `)), 'each ~1000 characters, in order')
  t.equal(floods[200], 'echo: big')
  t.equal(result.result, 'echo: big')
  fake.end()
  t.same(await fake.waitExit(), { code: 0, signal: null })
})

t.test('/error: an API error is a "success" result with is_error', async (t) => {
  const box = await sandbox(t)
  const fake = start(t, box, { args: [...STREAM_ARGS, '--session-id', randomUUID()] })
  fake.prompt('/error oops')
  const result = await fake.result()
  t.match(fake.lines.find((l) => l.type === 'assistant'), { error: 'api_error' })
  t.match(result, { subtype: 'success', is_error: true, terminal_reason: 'api_error' })
  fake.end()
  t.same(await fake.waitExit(), { code: 0, signal: null })
})

t.test('stdin', async (t) => {
  const box = await sandbox(t)

  await t.test('a line that is not JSON: stderr, exit 1', async (t) => {
    const fake = start(t, box, { args: [...STREAM_ARGS, '--session-id', randomUUID()] })
    fake.proc.stdin?.write('this is not json\n')
    t.same(await fake.waitExit(), { code: 1, signal: null })
    t.match(fake.stderr, 'Error parsing streaming input line')
    t.same(fake.lines, [])
  })

  await t.test('unknown message types are ignored', async (t) => {
    const fake = start(t, box, { args: [...STREAM_ARGS, '--session-id', randomUUID()] })
    fake.send({ type: 'keep_alive' })
    fake.send({ type: 'control_response', response: { subtype: 'success', request_id: 'x', response: { behavior: 'allow', updatedInput: {} } } })
    fake.prompt('still here')
    fake.end()
    t.same(await fake.waitExit(), { code: 0, signal: null })
    t.same(fake.types(), ['system/init', 'assistant', 'result/success'])
  })
})

t.test('start-up switches', async (t) => {
  const box = await sandbox(t)

  await t.test('FAKE_CLAUDE_START_DELAY_MS delays everything', async (t) => {
    const spawned = Date.now()
    const fake = start(t, box, { args: [...STREAM_ARGS, '--session-id', randomUUID()], env: { FAKE_CLAUDE_START_DELAY_MS: '400' } })
    fake.prompt('late')
    await fake.line((l) => l.subtype === 'init', 'init')
    t.ok(Date.now() - spawned >= 400, `first output after the delay (${Date.now() - spawned} ms)`)
    fake.end()
    t.same(await fake.waitExit(), { code: 0, signal: null })
  })

  await t.test('FAKE_CLAUDE_EXIT_BEFORE_INIT=1 fails on the first stdin line, before init', async (t) => {
    const id = randomUUID()
    const fake = start(t, box, { args: [...STREAM_ARGS, '--session-id', id], env: { FAKE_CLAUDE_EXIT_BEFORE_INIT: '1' } })
    fake.prompt('first')
    t.same(await fake.waitExit(), { code: 1, signal: null })
    t.same(fake.lines, [])
    t.match(fake.stderr, 'FAKE_CLAUDE_EXIT_BEFORE_INIT')
    t.notOk(existsSync(transcriptFile(box.config, box.cwd, id)), 'no transcript')
  })
})

// ---------------------------------------------------------------------------------------------
// Permissions, questions and control requests (--permission-prompt-tool stdio): the shapes are the
// real CLI 2.1.330's, recorded in docs/AGENTS.md ("Permissions, questions, interrupts and control
// requests").

const isAsk = (l: Line) => l.type === 'control_request' && l.request?.subtype === 'can_use_tool'

/** The `n`-th can_use_tool request. */
function canUseTool (fake: Fake, n = 1): Promise<Line> {
  return fake.line(isAsk, `can_use_tool #${n}`, n)
}

function answer (fake: Fake, request: Line, response: Record<string, unknown>): void {
  fake.send({ type: 'control_response', response: { subtype: 'success', request_id: request.request_id, response } })
}

function startWith (t: Test, box: Sandbox, mode: string, extra: string[] = []): Fake {
  return start(t, box, { args: [...STREAM_ARGS, '--session-id', randomUUID(), '--permission-prompt-tool', 'stdio', '--permission-mode', mode, ...extra] })
}

const toolResults = (fake: Fake): Line[] => fake.lines.filter((l) => l.type === 'user' && l.message.content[0]?.type === 'tool_result')
  .map((l) => l.message.content[0] as Line)

t.test('/tool: the approval round trip', async (t) => {
  const box = await sandbox(t)

  await t.test('allowed: tool_use, can_use_tool as the real CLI shapes it, tool_result, reply; Write writes', async (t) => {
    const fake = startWith(t, box, 'default')
    fake.prompt('/tool Write {"file_path":"allowed.txt","content":"hello world"}')
    const request = await canUseTool(fake)
    const toolUse = fake.lines.find((l) => l.type === 'assistant')!.message.content[0]
    t.match(toolUse, { type: 'tool_use', name: 'Write', input: { file_path: 'allowed.txt', content: 'hello world' } }, 'the model\'s input, as it asked')
    t.match(request.request_id, /^[0-9a-f-]{36}$/)
    t.same(request.request, {
      subtype: 'can_use_tool',
      tool_name: 'Write',
      display_name: 'Write',
      input: { file_path: join(box.cwd, 'allowed.txt'), content: 'hello world' },
      description: 'allowed.txt',
      permission_suggestions: [{ type: 'setMode', mode: 'acceptEdits', destination: 'session' }],
      tool_use_id: toolUse.id
    }, 'the path is made absolute; the suggestion is acceptEdits for the session')
    t.notOk(existsSync(join(box.cwd, 'allowed.txt')), 'nothing written before the answer')
    answer(fake, request, { behavior: 'allow', updatedInput: request.request.input })
    const result = await fake.result()
    const used = JSON.stringify(request.request.input)
    t.same(toolResults(fake), [{ tool_use_id: toolUse.id, type: 'tool_result', content: `tool Write ran with ${used}` }])
    t.equal(await readFile(join(box.cwd, 'allowed.txt'), 'utf8'), 'hello world', 'the file was written')
    t.match(result, { subtype: 'success', is_error: false, result: `tool Write allowed: ${used}`, num_turns: 2, permission_denials: [] })
    t.same(fake.types(), ['system/init', 'assistant', 'control_request', 'user', 'assistant', 'result/success'])
    fake.end()
    t.same(await fake.waitExit(), { code: 0, signal: null })
  })

  await t.test('denied: is_error tool_result with the message, nothing written, the denial in the result', async (t) => {
    const fake = startWith(t, box, 'default')
    fake.prompt('/tool Write {"file_path":"denied.txt","content":"x"} and then?')
    const request = await canUseTool(fake)
    answer(fake, request, { behavior: 'deny', message: 'not that file' })
    const result = await fake.result()
    t.same(toolResults(fake), [{ type: 'tool_result', content: 'not that file', is_error: true, tool_use_id: request.request.tool_use_id }])
    t.notOk(existsSync(join(box.cwd, 'denied.txt')), 'not written')
    t.match(result, {
      subtype: 'success',
      is_error: false,
      result: 'tool Write denied: not that file | echo: and then?',
      permission_denials: [{ tool_name: 'Write', tool_use_id: request.request.tool_use_id, tool_input: request.request.input }]
    }, 'the rest of the prompt is echoed after the tool\'s part')
    fake.end()
    await fake.waitExit()
  })

  await t.test('updatedInput: used whole when not empty; {} or none keeps the input; a broken one fails the tool', async (t) => {
    const fake = startWith(t, box, 'default')
    fake.prompt('/tool Write {"file_path":"a.txt","content":"model"}')
    answer(fake, await canUseTool(fake, 1), { behavior: 'allow', updatedInput: { file_path: 'b.txt', content: 'user' } })
    t.match(await fake.result(1), { result: 'tool Write allowed: {"file_path":"b.txt","content":"user"}' })
    t.notOk(existsSync(join(box.cwd, 'a.txt')))
    t.equal(await readFile(join(box.cwd, 'b.txt'), 'utf8'), 'user')

    fake.prompt('/tool Write {"file_path":"c.txt","content":"kept"}')
    answer(fake, await canUseTool(fake, 2), { behavior: 'allow', updatedInput: {} })
    await fake.result(2)
    fake.prompt('/tool Write {"file_path":"d.txt","content":"kept"}')
    answer(fake, await canUseTool(fake, 3), { behavior: 'allow' })
    await fake.result(3)
    t.equal(await readFile(join(box.cwd, 'c.txt'), 'utf8'), 'kept', '{} keeps the input')
    t.equal(await readFile(join(box.cwd, 'd.txt'), 'utf8'), 'kept', 'no updatedInput keeps the input')

    fake.prompt('/tool Write {"file_path":"e.txt","content":"x"}')
    answer(fake, await canUseTool(fake, 4), { behavior: 'allow', updatedInput: { content: 'no path' } })
    t.match(await fake.result(4), { result: 'tool Write failed: the required parameter file_path is missing' })
    t.match(toolResults(fake).at(-1), { is_error: true, content: /failed schema validation[\s\S]*`file_path` is missing/ })

    fake.prompt('/tool Write {"file_path":"f.txt","content":"x"}')
    answer(fake, await canUseTool(fake, 5), { behavior: 'maybe' })
    t.match(await fake.result(5), { result: 'tool Write failed: invalid permission result' })
    t.match(toolResults(fake).at(-1), { is_error: true, content: /^The canUseTool callback returned an invalid permission result/ })
    t.notOk(existsSync(join(box.cwd, 'e.txt')) || existsSync(join(box.cwd, 'f.txt')), 'neither ran')
    fake.end()
    t.same(await fake.waitExit(), { code: 0, signal: null })
  })

  await t.test('the JSON may hold spaces; tools chain in order; a word that is no JSON object ends the directives', async (t) => {
    const fake = startWith(t, box, 'bypassPermissions')
    fake.prompt('/tool Bash {"command":"echo a b","description":"two words"} /tool Read {"file_path":"x"} rest')
    const result = await fake.result()
    t.equal(result.result, 'tool Bash allowed: {"command":"echo a b","description":"two words"} | ' +
      `tool Read allowed: {"file_path":"${join(box.cwd, 'x')}"} | echo: rest`)
    t.equal(result.num_turns, 3)
    t.notOk(fake.lines.some(isAsk), 'bypassPermissions asks nothing')
    fake.prompt('/tool Bash not-json')
    t.match(await fake.result(2), { result: /^echo: \/tool Bash not-json/ }, 'not a directive: the text is the prompt')
    fake.end()
    await fake.waitExit()
  })
})

t.test('who is asked, by permission mode', async (t) => {
  const box = await sandbox(t)
  const tools = {
    Write: '/tool Write {"file_path":"w.txt","content":"w"}',
    Edit: '/tool Edit {"file_path":"w.txt","old_string":"w","new_string":"v"}',
    Bash: '/tool Bash {"command":"mkdir d1","description":"make d1"}',
    Read: '/tool Read {"file_path":"w.txt"}',
    WebFetch: '/tool WebFetch {"url":"http://127.0.0.1:1/","prompt":"x"}'
  }
  const expected: Record<string, Record<keyof typeof tools, 'asked' | 'ran' | 'denied'>> = {
    default: { Write: 'asked', Edit: 'asked', Bash: 'asked', Read: 'ran', WebFetch: 'asked' },
    acceptEdits: { Write: 'ran', Edit: 'ran', Bash: 'asked', Read: 'ran', WebFetch: 'asked' },
    plan: { Write: 'asked', Edit: 'asked', Bash: 'denied', Read: 'ran', WebFetch: 'denied' },
    bypassPermissions: { Write: 'ran', Edit: 'ran', Bash: 'ran', Read: 'ran', WebFetch: 'ran' }
  }
  for (const [mode, outcomes] of Object.entries(expected)) {
    await t.test(mode, async (t) => {
      const fake = startWith(t, box, mode)
      let n = 0
      let asks = 0
      for (const [tool, prompt] of Object.entries(tools) as Array<[keyof typeof tools, string]>) {
        fake.prompt(prompt)
        const settled = await Promise.race([canUseTool(fake, asks + 1).then((r) => ({ r })), fake.result(n + 1).then(() => ({ r: undefined }))])
        if (settled.r) {
          asks++
          answer(fake, settled.r, { behavior: 'allow' })
        }
        const result = await fake.result(++n)
        const outcome = settled.r ? 'asked' : result.result.startsWith(`tool ${tool} denied`) ? 'denied' : 'ran'
        t.equal(outcome, outcomes[tool], `${tool}: ${outcome}`)
        if (outcome === 'denied') {
          t.match(fake.lines.find((l) => l.type === 'system' && l.subtype === 'permission_denied' && l.tool_name === tool),
            { decision_reason_type: 'classifier', message: new RegExp(`^Auto mode is unavailable.*so ${tool} was not run`) }, 'a system/permission_denied line says why')
        }
      }
      if (mode === 'plan') {
        t.same(fake.lines.filter(isAsk).map((l) => Object.keys(l.request).sort()),
          [['decision_reason_type', 'description', 'display_name', 'input', 'subtype', 'tool_name', 'tool_use_id'],
            ['decision_reason_type', 'description', 'display_name', 'input', 'subtype', 'tool_name', 'tool_use_id']],
          'plan mode\'s asks carry decision_reason_type, no suggestions')
      }
      fake.end()
      t.same(await fake.waitExit(), { code: 0, signal: null })
    })
  }

  await t.test('suggestions: Bash offers its command as a localSettings rule', async (t) => {
    const fake = startWith(t, box, 'default')
    fake.prompt(tools.Bash)
    const request = await canUseTool(fake)
    t.same(request.request, {
      subtype: 'can_use_tool',
      tool_name: 'Bash',
      display_name: 'Bash',
      input: { command: 'mkdir d1', description: 'make d1' },
      description: 'make d1',
      permission_suggestions: [{ type: 'addRules', rules: [{ toolName: 'Bash', ruleContent: 'mkdir d1' }], behavior: 'allow', destination: 'localSettings' }],
      tool_use_id: request.request.tool_use_id
    })
    answer(fake, request, { behavior: 'deny', message: 'no' })
    await fake.result()
    fake.end()
    await fake.waitExit()
  })
})

t.test('remembered answers (updatedPermissions)', async (t) => {
  const box = await sandbox(t)

  await t.test('a session rule: the same command runs unasked later, another is asked; localSettings is not applied', async (t) => {
    const fake = startWith(t, box, 'default')
    const bash = (command: string) => `/tool Bash {"command":"${command}"}`
    fake.prompt(bash('mkdir a'))
    const first = await canUseTool(fake, 1)
    answer(fake, first, { behavior: 'allow', updatedPermissions: [{ ...first.request.permission_suggestions[0], destination: 'session' }] })
    await fake.result(1)
    fake.prompt(bash('mkdir a'))
    await fake.result(2)
    t.equal(fake.lines.filter(isAsk).length, 1, 'the same command again: not asked')
    fake.prompt(bash('mkdir b'))
    const other = await canUseTool(fake, 2)
    t.equal(other.request.input.command, 'mkdir b', 'another command: asked')
    answer(fake, other, { behavior: 'allow', updatedPermissions: other.request.permission_suggestions })
    await fake.result(3)
    fake.prompt(bash('mkdir b'))
    answer(fake, await canUseTool(fake, 3), { behavior: 'allow' })
    await fake.result(4)
    t.pass('a localSettings rule is not applied: asked again')
    fake.end()
    await fake.waitExit()
  })

  await t.test('setMode acceptEdits for the session: later edits run unasked, the next init reports the mode', async (t) => {
    const fake = startWith(t, box, 'default')
    fake.prompt('/tool Write {"file_path":"one.txt","content":"1"}')
    const request = await canUseTool(fake)
    answer(fake, request, { behavior: 'allow', updatedPermissions: request.request.permission_suggestions })
    await fake.result(1)
    fake.prompt('/tool Write {"file_path":"two.txt","content":"2"}')
    await fake.result(2)
    t.equal(fake.lines.filter(isAsk).length, 1, 'the second Write was not asked')
    t.same(fake.lines.filter((l) => l.subtype === 'init').map((l) => l.permissionMode), ['default', 'acceptEdits'])
    t.equal(await readFile(join(box.cwd, 'two.txt'), 'utf8'), '2')
    fake.end()
    await fake.waitExit()
  })
})

t.test('/ask: AskUserQuestion', async (t) => {
  const box = await sandbox(t)
  const questions = [
    { question: 'Which color should the button be?', header: 'Color', options: [{ label: 'Red', description: 'warm' }, { label: 'Blue', description: 'cool' }], multiSelect: false },
    { question: 'Which sizes?', header: 'Sizes', options: [{ label: 'S', description: 'small' }, { label: 'L', description: 'large' }], multiSelect: true }
  ]

  await t.test('asked in every mode, bypassPermissions too; the answers come back in updatedInput', async (t) => {
    const fake = startWith(t, box, 'bypassPermissions')
    fake.prompt(`/ask ${JSON.stringify({ questions })}`)
    const request = await canUseTool(fake)
    t.same(request.request, {
      subtype: 'can_use_tool',
      tool_name: 'AskUserQuestion',
      display_name: 'AskUserQuestion',
      input: { questions },
      tool_use_id: request.request.tool_use_id,
      requires_user_interaction: true
    }, 'no description, no suggestions, requires_user_interaction')
    const answers = { 'Which color should the button be?': 'Blue', 'Which sizes?': 'S, L' }
    answer(fake, request, { behavior: 'allow', updatedInput: { ...request.request.input, answers } })
    const result = await fake.result()
    t.same(toolResults(fake), [{
      tool_use_id: request.request.tool_use_id,
      type: 'tool_result',
      content: 'Your questions have been answered: "Which color should the button be?"="Blue", "Which sizes?"="S, L". You can now continue with these answers in mind.'
    }])
    t.equal(result.result, `tool AskUserQuestion answered: ${JSON.stringify(answers)}`)
    fake.end()
    await fake.waitExit()
  })

  await t.test('the questions array alone; no answers; answers without the questions fail; denied', async (t) => {
    const fake = startWith(t, box, 'default')
    fake.prompt(`/ask ${JSON.stringify(questions)}`)
    const request = await canUseTool(fake, 1)
    t.same(request.request.input, { questions })
    answer(fake, request, { behavior: 'allow' })
    t.equal((await fake.result(1)).result, 'tool AskUserQuestion answered: {}')
    t.equal(toolResults(fake).at(-1)!.content, 'The user did not answer the questions.')
    fake.prompt(`/ask ${JSON.stringify(questions)}`)
    answer(fake, await canUseTool(fake, 2), { behavior: 'allow', updatedInput: { answers: { 'Which sizes?': 'S' } } })
    t.match(await fake.result(2), { result: 'tool AskUserQuestion failed: the required parameter questions is missing' })
    fake.prompt(`/ask ${JSON.stringify(questions)}`)
    answer(fake, await canUseTool(fake, 3), { behavior: 'deny', message: 'skip it' })
    t.equal((await fake.result(3)).result, 'tool AskUserQuestion denied: skip it')
    fake.end()
    await fake.waitExit()
  })
})

t.test('a waiting can_use_tool and the end of its turn', async (t) => {
  const box = await sandbox(t)

  await t.test('interrupt: control_cancel_request, then the interrupt\'s answer, the rejected tool, aborted_tools; a late answer is ignored', async (t) => {
    const fake = startWith(t, box, 'default')
    fake.prompt('/tool Write {"file_path":"never.txt","content":"x"}')
    const request = await canUseTool(fake)
    fake.send({ type: 'control_request', request_id: 'int-1', request: { subtype: 'interrupt' } })
    const result = await fake.result()
    const tail = fake.lines.slice(fake.lines.indexOf(request) + 1)
    t.same(tail.slice(0, 2), [
      { type: 'control_cancel_request', request_id: request.request_id },
      { type: 'control_response', response: { subtype: 'success', request_id: 'int-1', response: { still_queued: [] } } }
    ])
    t.match(tail[2], { type: 'user', message: { content: [{ type: 'tool_result', is_error: true, tool_use_id: request.request.tool_use_id, content: /^The user doesn't want to proceed with this tool use/ }] } })
    t.match(tail[3], { type: 'user', message: { content: [{ type: 'text', text: '[Request interrupted by user for tool use]' }] } })
    t.match(result, {
      subtype: 'error_during_execution',
      is_error: true,
      terminal_reason: 'aborted_tools',
      permission_denials: [{ tool_name: 'Write', tool_use_id: request.request.tool_use_id }]
    })
    answer(fake, request, { behavior: 'allow' })
    fake.prompt('after')
    t.match(await fake.result(2), { subtype: 'success', result: /^echo: after/ }, 'the process lives on; the late answer did nothing')
    t.notOk(existsSync(join(box.cwd, 'never.txt')))
    fake.end()
    t.same(await fake.waitExit(), { code: 0, signal: null })
  })

  await t.test('deny with interrupt: true: the same tail, without a control_cancel_request', async (t) => {
    const fake = startWith(t, box, 'default')
    fake.prompt('/tool Bash {"command":"rm -rf x"}')
    const request = await canUseTool(fake)
    answer(fake, request, { behavior: 'deny', message: 'stop', interrupt: true })
    t.match(await fake.result(), { subtype: 'error_during_execution', terminal_reason: 'aborted_tools' })
    t.same(fake.types().slice(-3), ['user', 'user', 'result/error_during_execution'])
    t.notOk(fake.lines.some((l) => l.type === 'control_cancel_request'))
    t.match(toolResults(fake), [{ is_error: true, content: /^The user doesn't want to proceed/ }], 'the deny message is not what the model gets')
    fake.end()
    t.same(await fake.waitExit(), { code: 1, signal: null }, 'EOF right after an interrupted turn: exit 1')
  })

  await t.test('stdin EOF: the tool use fails, the turn finishes, exit 0', async (t) => {
    const fake = startWith(t, box, 'default')
    fake.prompt('/tool Write {"file_path":"eof.txt","content":"x"}')
    await canUseTool(fake)
    fake.end()
    t.same(await fake.waitExit(), { code: 0, signal: null })
    t.match(toolResults(fake), [{ is_error: true, content: 'Tool permission request failed: AbortError: Tool permission stream closed before response received' }])
    t.match(fake.lines.at(-1), { type: 'result', subtype: 'success', result: /^tool Write denied: Tool permission request failed/ })
  })
})

t.test('set_permission_mode and set_model', async (t) => {
  const box = await sandbox(t)
  const control = (fake: Fake, id: string, request: Record<string, unknown>) => {
    fake.send({ type: 'control_request', request_id: id, request })
    return fake.line((l) => l.type === 'control_response' && l.response.request_id === id, `the answer to ${id}`)
  }

  await t.test('set_permission_mode: success and a system/status line; the next turn runs in the mode; errors', async (t) => {
    const fake = startWith(t, box, 'default')
    t.same(await control(fake, 'm1', { subtype: 'set_permission_mode', mode: 'acceptEdits' }),
      { type: 'control_response', response: { subtype: 'success', request_id: 'm1', response: { mode: 'acceptEdits' } } })
    t.match(await fake.line((l) => l.type === 'system' && l.subtype === 'status', 'status'), { status: null, permissionMode: 'acceptEdits' })
    fake.prompt('/tool Write {"file_path":"m.txt","content":"m"}')
    await fake.result()
    t.match(fake.lines.find((l) => l.subtype === 'init'), { permissionMode: 'acceptEdits' })
    t.notOk(fake.lines.some(isAsk), 'acceptEdits: the Write was not asked')
    t.same((await control(fake, 'm2', { subtype: 'set_permission_mode', mode: 'bogus' })).response, {
      subtype: 'error', request_id: 'm2', error: 'Cannot set permission mode: must be one of acceptEdits, auto, bypassPermissions, default, dontAsk, plan', error_code: 'invalid_mode'
    })
    t.same((await control(fake, 'm3', { subtype: 'set_permission_mode', mode: 'bypassPermissions' })).response, {
      subtype: 'error',
      request_id: 'm3',
      error: 'Cannot set permission mode to bypassPermissions because the session was not launched with --dangerously-skip-permissions',
      error_code: 'bypass_not_launched'
    })
    fake.end()
    await fake.waitExit()
  })

  await t.test('bypassPermissions can be set when launched with --allow-dangerously-skip-permissions', async (t) => {
    const fake = startWith(t, box, 'default', ['--allow-dangerously-skip-permissions'])
    t.match((await control(fake, 'b1', { subtype: 'set_permission_mode', mode: 'bypassPermissions' })).response, { subtype: 'success', response: { mode: 'bypassPermissions' } })
    t.match((await control(fake, 'b2', { subtype: 'set_permission_mode', mode: 'plan' })).response, { subtype: 'success', response: { mode: 'plan' } })
    fake.end()
    await fake.waitExit()
  })

  await t.test('a mode change does not answer a waiting can_use_tool', async (t) => {
    const fake = startWith(t, box, 'default')
    fake.prompt('/tool Write {"file_path":"w.txt","content":"w"}')
    const request = await canUseTool(fake)
    await control(fake, 'm4', { subtype: 'set_permission_mode', mode: 'acceptEdits' })
    fake.prompt('next')
    await fake.line((l) => l.type === 'system' && l.subtype === 'status', 'status')
    t.notOk(fake.lines.some((l) => l.type === 'result'), 'still waiting for the answer')
    answer(fake, request, { behavior: 'allow' })
    t.match(await fake.result(1), { subtype: 'success', result: /^tool Write allowed/ })
    fake.end()
    await fake.waitExit()
  })

  await t.test('set_model: a replayed user line, then success; the next turn uses it; none or "default" = the default', async (t) => {
    const fake = startWith(t, box, 'default', ['--model', 'claude-first'])
    t.same(await control(fake, 's1', { subtype: 'set_model', model: 'claude-second' }),
      { type: 'control_response', response: { subtype: 'success', request_id: 's1', response: { model: 'claude-second' } } })
    t.match(fake.lines.at(-2), {
      type: 'user', isReplay: true, message: { role: 'user', content: '<local-command-stdout>Set model to `claude-second`</local-command-stdout>' }
    })
    fake.prompt('hi')
    await fake.result(1)
    t.match(await control(fake, 's2', { subtype: 'set_model' }), { response: { subtype: 'success', response: { model: 'claude-fake-model' } } })
    fake.prompt('hi again')
    await fake.result(2)
    t.same(fake.lines.filter((l) => l.subtype === 'init').map((l) => l.model), ['claude-second', 'claude-fake-model'])
    t.match(await control(fake, 's3', { subtype: 'set_model', model: 'default' }), { response: { response: { model: 'claude-fake-model' } } })
    fake.end()
    await fake.waitExit()
  })
})
