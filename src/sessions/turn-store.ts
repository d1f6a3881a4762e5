import type { SessionRepository } from './session-repository.js'

/**
 * What the agent supervisor may write on a session: the facts of its turns (busy, usage, activity,
 * a fresh conversation). Not its state, settings or version: those change only through the
 * lifecycle manager. (Which conversation took up a message is written with the queue position, by
 * the event log's markDelivered.) Built as its own object, so the supervisor holds no way to the rest of the
 * repository, by type or at run time.
 */
export type TurnStore = Pick<SessionRepository,
  'claimBusy' | 'releaseBusy' | 'addTurnUsage' | 'recordActivity' | 'startNewConversation'>

export function createTurnStore (repo: SessionRepository): TurnStore {
  return {
    claimBusy: (id, at) => repo.claimBusy(id, at),
    releaseBusy: (id, at) => repo.releaseBusy(id, at),
    addTurnUsage: (id, usage) => repo.addTurnUsage(id, usage),
    recordActivity: (id, at) => repo.recordActivity(id, at),
    startNewConversation: (id) => repo.startNewConversation(id)
  }
}
