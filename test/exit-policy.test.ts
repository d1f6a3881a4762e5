// Database-independent: opens no database, so CI runs it once, in the PGlite pass (.ci/run).
import t from 'tap'
import { ERROR_CATALOGUE } from '../src/errors.js'
import {
  MAX_CONSECUTIVE_CRASHES,
  classifyExit,
  crashOutcome,
  describeExit,
  startFailure,
  tooManyCrashes,
  type ProcessExit
} from '../src/domain/exit-policy.js'
import { STOP_REASONS, stopReasonFor } from '../src/domain/stop-reasons.js'
import { SESSION_STATES, canTransition } from '../src/domain/state-machine.js'

const exit = (over: Partial<ProcessExit> = {}): ProcessExit => ({ code: 1, signal: null, reason: null, stderrTail: '', ...over })

t.test('classifyExit: who ended the process, and where its turn was', async (t) => {
  // every combination, written out: a stop by the service wins over anything the turn says
  const cases: [ProcessExit, { confirmed: boolean } | null, string][] = [
    [exit({ reason: 'idle' }), null, 'stopped'],
    [exit({ reason: 'pause' }), { confirmed: true }, 'stopped'],
    [exit({ reason: 'shutdown' }), { confirmed: false }, 'stopped'],
    [exit(), { confirmed: false }, 'start-failed'],
    [exit({ signal: 'SIGKILL', code: null }), { confirmed: false }, 'start-failed'],
    [exit(), { confirmed: true }, 'crashed'],
    [exit(), null, 'crashed'],
    [exit({ code: 0 }), null, 'crashed']
  ]
  for (const [e, inflight, want] of cases) {
    t.equal(classifyExit(e, inflight), want, `${JSON.stringify(e)} with ${JSON.stringify(inflight)}`)
  }
})

t.test('startFailure: a session that never ran fails; anything else stays resumable', async (t) => {
  const first = startFailure({ firstStart: true, turns: 0, detail: 'exit code 3' })
  t.same(first, {
    to: 'failed',
    reason: 'start failed',
    code: 'AGENT_START_FAILED',
    message: 'The agent could not be started: exit code 3',
    lastError: 'exit code 3'
  })
  // a restart (fresh conversation) of a session that has completed turns has work to keep
  t.equal(startFailure({ firstStart: true, turns: 4, detail: 'x' }).to, 'suspended')
  const resume = startFailure({ firstStart: false, turns: 0, detail: 'No conversation found' })
  t.equal(resume.to, 'suspended')
  t.equal(resume.code, 'AGENT_RESUME_FAILED')
  t.equal(resume.reason, 'resume failed')
  t.match(resume.message, /could not be resumed: No conversation found\. Your message is kept/)
})

t.test('crashOutcome: suspended until the limit, then failed', async (t) => {
  for (let crashes = 1; crashes <= MAX_CONSECUTIVE_CRASHES + 1; crashes++) {
    const out = crashOutcome({ crashes, detail: 'killed by SIGKILL' })
    const failed = crashes >= MAX_CONSECUTIVE_CRASHES
    t.equal(out.to, failed ? 'failed' : 'suspended', `crash ${crashes}`)
    t.equal(out.code, 'AGENT_CRASHED')
    t.equal(out.reason, 'crash')
    t.equal(out.lastError, 'killed by SIGKILL')
    t.match(out.message, failed ? `crashed ${crashes} times in a row` : 'Send a message to resume')
    t.equal(tooManyCrashes(crashes), failed)
  }
  t.equal(tooManyCrashes(0), false)
})

t.test('every outcome is a move the state machine allows the system from active', async (t) => {
  const outcomes = [
    startFailure({ firstStart: true, turns: 0, detail: '' }),
    startFailure({ firstStart: false, turns: 1, detail: '' }),
    crashOutcome({ crashes: 1, detail: '' }),
    crashOutcome({ crashes: MAX_CONSECUTIVE_CRASHES, detail: '' })
  ]
  for (const o of outcomes) {
    t.ok(canTransition('active', o.to, 'system'), `active → ${o.to}`)
    t.ok(o.code in ERROR_CATALOGUE, `${o.code} is catalogued`)
    t.equal(ERROR_CATALOGUE[o.code].where, 'event')
  }
})

t.test('describeExit: how it ended and the last lines of stderr, NUL-free and bounded', async (t) => {
  t.equal(describeExit(exit({ code: 2 })), 'exit code 2')
  t.equal(describeExit(exit({ code: null, signal: 'SIGSEGV' })), 'killed by SIGSEGV')
  t.equal(describeExit(exit({ code: 1, stderrTail: 'a\nb\nc\nd\n' })), 'exit code 1: b c d')
  t.equal(describeExit(exit({ stderrTail: 'bad\0byte' })), 'exit code 1: bad\uFFFDbyte')
  t.equal(describeExit(exit({ stderrTail: 'x'.repeat(2000) })).length, 'exit code 1: '.length + 500)
})

t.test('stopReasonFor: each target state names why its agent stops', async (t) => {
  const want: Record<string, string> = {
    pending: 'user', active: 'user', suspended: 'idle', paused: 'pause', completed: 'completed', failed: 'failed', expired: 'expired'
  }
  for (const state of SESSION_STATES) t.equal(stopReasonFor(state), want[state], state)
  t.equal(stopReasonFor('suspended', 'eviction'), 'eviction')
  t.equal(stopReasonFor('suspended', 'shutdown'), 'shutdown')
  t.equal(stopReasonFor('suspended', 'restart'), 'restart')
  t.equal(stopReasonFor('suspended', 'crash'), 'idle')
  t.equal(stopReasonFor('completed', 'eviction'), 'completed', 'a reason names a suspension only')
  for (const state of SESSION_STATES) t.ok(STOP_REASONS.includes(stopReasonFor(state)))
})
