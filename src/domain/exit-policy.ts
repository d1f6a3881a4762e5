import type { SessionState } from './state-machine.js'
import { withoutNul } from './text.js'

/**
 * What an agent process's end means for its session: a pure function of the exit, the turn it
 * was running, and the session's record, so the rules can be read (and tested) in one place.
 */

/** crashes in a row (no turn completed in between) before the session is failed */
export const MAX_CONSECUTIVE_CRASHES = 3

/** The codes of the `error` events these rules store (in the error catalogue, src/errors.ts). */
type AgentErrorCode = 'AGENT_START_FAILED' | 'AGENT_RESUME_FAILED' | 'AGENT_CRASHED'

export interface ProcessExit {
  code: number | null
  signal: string | null
  /** set when the service asked the process to stop; null means it ended on its own */
  reason: string | null
  stderrTail: string
}

/** The message whose turn the process was running; confirmed once its `system/init` arrived. */
export interface InflightTurn {
  confirmed: boolean
}

export type ExitKind =
  /** the service stopped it: whoever stopped it has set the session's state */
  | 'stopped'
  /** it ended before taking up the message: the message stays queued */
  | 'start-failed'
  /** it died on its own, after a turn started or between turns */
  | 'crashed'

export function classifyExit (exit: ProcessExit, inflight: InflightTurn | null): ExitKind {
  if (exit.reason !== null) return 'stopped'
  if (inflight && !inflight.confirmed) return 'start-failed'
  return 'crashed'
}

/** What happens to the session: the state it moves to, and the error event the user sees. */
export interface ExitOutcome {
  to: Extract<SessionState, 'suspended' | 'failed'>
  /** the transition's recorded reason */
  reason: string
  code: AgentErrorCode
  message: string
  /** recorded as the session's lastError */
  lastError: string
}

/**
 * A start that never took up the message. A session that never completed a turn in its first
 * conversation has nothing to resume: it failed. Anything else stays resumable, message kept, and
 * nothing starts again until the user says so.
 */
export function startFailure (facts: { firstStart: boolean, turns: number, detail: string }): ExitOutcome {
  const resuming = !facts.firstStart
  return {
    to: facts.firstStart && facts.turns === 0 ? 'failed' : 'suspended',
    reason: resuming ? 'resume failed' : 'start failed',
    code: resuming ? 'AGENT_RESUME_FAILED' : 'AGENT_START_FAILED',
    message: resuming
      ? `The conversation could not be resumed: ${facts.detail}. Your message is kept: send again to retry, or POST /restart for a fresh conversation.`
      : `The agent could not be started: ${facts.detail}`,
    lastError: facts.detail
  }
}

/** A crash, the `crashes`-th in a row: resumable by the next message, until too many. */
export function crashOutcome (facts: { crashes: number, detail: string }): ExitOutcome {
  const failed = facts.crashes >= MAX_CONSECUTIVE_CRASHES
  return {
    to: failed ? 'failed' : 'suspended',
    reason: 'crash',
    code: 'AGENT_CRASHED',
    message: failed
      ? `The agent crashed ${facts.crashes} times in a row (${facts.detail}); the session has failed.`
      : `The agent stopped unexpectedly (${facts.detail}). Send a message to resume the conversation.`,
    lastError: facts.detail
  }
}

/** Whether a suspended session has crashed too often to be resumed by a message. */
export function tooManyCrashes (crashes: number): boolean {
  return crashes >= MAX_CONSECUTIVE_CRASHES
}

/** How much of stderr an exit's description keeps: enough to name the cause, short enough for a phone. */
const STDERR_IN_DESCRIPTION = { lines: 3, chars: 500 } as const

/** An exit in a few words: how it ended and the last lines of its stderr. */
export function describeExit (exit: ProcessExit): string {
  const how = exit.signal ? `killed by ${exit.signal}` : `exit code ${exit.code}`
  const stderr = withoutNul(exit.stderrTail).trim().split('\n').slice(-STDERR_IN_DESCRIPTION.lines).join(' ').slice(0, STDERR_IN_DESCRIPTION.chars)
  return stderr ? `${how}: ${stderr}` : how
}
