// Database-independent: opens no database, so CI runs it once, in the PGlite pass (.ci/run).
import t from 'tap'
import {
  SESSION_STATES,
  allowedTargets,
  canTransition,
  isTerminal,
  type Actor,
  type SessionState
} from '../src/domain/state-machine.js'

// The table of docs/SESSION-LIFECYCLE.md ("States"), written out independently of the implementation: "U" user, "S" system.
const EXPECTED: Record<SessionState, Partial<Record<SessionState, string>>> = {
  pending: { active: 'US', completed: 'U', failed: 'S', expired: 'S' },
  active: { suspended: 'US', paused: 'U', completed: 'U', failed: 'S', expired: 'S' },
  suspended: { active: 'US', paused: 'U', completed: 'U', failed: 'S', expired: 'S' },
  paused: { active: 'U', completed: 'U', expired: 'S' },
  completed: {},
  failed: {},
  expired: {}
}

t.test('every (from, to, actor) triple follows the design table', async (t) => {
  let checked = 0
  for (const from of SESSION_STATES) {
    for (const to of SESSION_STATES) {
      for (const actor of ['user', 'system'] as Actor[]) {
        const expected = (EXPECTED[from][to] ?? '').includes(actor === 'user' ? 'U' : 'S')
        t.equal(canTransition(from, to, actor), expected, `${from} → ${to} by ${actor}`)
        checked++
      }
    }
  }
  t.equal(checked, 7 * 7 * 2)
})

t.test('terminal states accept nothing, from anyone', async (t) => {
  for (const state of ['completed', 'failed', 'expired'] as SessionState[]) {
    t.ok(isTerminal(state))
    t.same(allowedTargets(state, 'user'), [])
    t.same(allowedTargets(state, 'system'), [])
  }
  for (const state of ['pending', 'active', 'suspended', 'paused'] as SessionState[]) t.notOk(isTerminal(state))
})

t.test('allowed targets list exactly what the actor may ask for', async (t) => {
  t.same(allowedTargets('pending', 'user'), ['active', 'completed'])
  t.same(allowedTargets('active', 'user'), ['suspended', 'paused', 'completed'])
  t.same(allowedTargets('active', 'system'), ['suspended', 'failed', 'expired'])
  t.same(allowedTargets('paused', 'user'), ['active', 'completed'])
  t.same(allowedTargets('paused', 'system'), ['expired'])
})

t.test('no state moves to itself', async (t) => {
  for (const s of SESSION_STATES) {
    t.notOk(canTransition(s, s, 'user'))
    t.notOk(canTransition(s, s, 'system'))
  }
})
