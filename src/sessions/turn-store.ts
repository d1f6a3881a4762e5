import { fenceKey, type Fence } from '../domain/lease.js'
import type { SessionRepository, TurnUsage } from './session-repository.js'

/**
 * What the agent supervisor may write on a session: the facts of its turns (busy, usage, activity,
 * a fresh conversation). Not its state, settings or version: those change only through the
 * lifecycle manager. (Which conversation took up a message is written with the queue position, by
 * the event log's markDelivered.) Built as its own object, so the supervisor holds no way to the rest of the
 * repository, by type or at run time.
 */
export interface TurnStore {
  /** A turn starts: false when the session is no longer active, or no longer this agent's (`fence`). */
  claimBusy (id: string, at: Date, fence: Fence): Promise<boolean>
  releaseBusy (id: string, at: Date, fence: Fence): Promise<void>
  /** Nothing is written for an agent whose claim was replaced (`fence`). */
  addTurnUsage (id: string, usage: TurnUsage, fence: Fence): Promise<unknown>
  recordActivity (id: string, at: Date): Promise<void>
  /** Records that the agent of claim `fence` runs here; false while another instance still runs one (`other`). */
  agentStart (id: string, fence: Fence): Promise<{ started: boolean, other: string | null }>
  agentGone (id: string, worker: string): Promise<void>
  /** Clears what says an agent runs on instance `worker`, except in the sessions given. */
  agentsGoneExcept (worker: string, running: string[]): Promise<void>
  startNewConversation (id: string): Promise<void>
}

export function createTurnStore (repo: SessionRepository): TurnStore {
  return {
    claimBusy: (id, at, fence) => repo.claimBusy(id, at, fenceKey(fence)),
    releaseBusy: (id, at, fence) => repo.releaseBusy(id, at, fenceKey(fence)),
    addTurnUsage: (id, usage, fence) => repo.addTurnUsage(id, usage, fenceKey(fence)),
    recordActivity: (id, at) => repo.recordActivity(id, at),
    agentStart: (id, fence) => repo.agentStart(id, fence.worker, fenceKey(fence)),
    agentGone: (id, worker) => repo.agentGone(id, worker),
    agentsGoneExcept: (worker, running) => repo.agentsGoneExcept(worker, running),
    startNewConversation: (id) => repo.startNewConversation(id)
  }
}
