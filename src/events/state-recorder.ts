import type { EventEmitter } from 'node:events'
import type { LifecycleEvents, TransitionEvent } from '../sessions/lifecycle-manager.js'
import type { EventLog } from './event-log.js'

/** The numbers of state recording, named once. */
const STATE_RECORDING = {
  /**
   * A sweep's changes beyond this many are recorded on the next turn of the event loop, off the
   * sweep's critical path (a sweep of 100k expiries must not wait for 100k events to be queued).
   */
  deferAbove: 1000
} as const

function stateEvent (e: TransitionEvent) {
  return { sessionId: e.sessionId, type: 'state' as const, data: { from: e.from, to: e.to, reason: e.reason, actor: e.actor, version: e.version } }
}

/**
 * Every change of a session's state is part of its story on the stream: this records each
 * transition the lifecycle manager makes as a `state` event, whoever asked for it (a request, a
 * sweep, an agent's exit). Emitted after the commit and before the agent is stopped, so the
 * stream shows the change ahead of what the stop produces.
 */
export class StateRecorder {
  readonly #log: EventLog
  /** big batches waiting for the next tick; close() waits for them */
  readonly #deferred = new Set<Promise<void>>()

  constructor (opts: { lifecycle: EventEmitter<LifecycleEvents>, log: EventLog }) {
    this.#log = opts.log
    opts.lifecycle.on('transition', (e) => { this.#log.appendMany([stateEvent(e)]) })
    opts.lifecycle.on('transitions', (list) => { this.#record(list) })
  }

  #record (list: TransitionEvent[]): void {
    if (list.length <= STATE_RECORDING.deferAbove) {
      this.#log.appendMany(list.map(stateEvent))
      return
    }
    const deferred = new Promise<void>((resolve) => setImmediate(() => {
      this.#log.appendMany(list.map(stateEvent))
      resolve()
    }))
    this.#deferred.add(deferred)
    deferred.then(() => this.#deferred.delete(deferred))
  }

  /** Shutdown: every state event recorded so far is queued, then stored. */
  async close (): Promise<void> {
    await Promise.all(this.#deferred)
    await this.#log.flush()
  }
}
