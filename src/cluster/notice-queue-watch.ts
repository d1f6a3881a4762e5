import type { Log } from '../logger.js'
import type { InstanceRepository } from './instance-repository.js'

/**
 * PostgreSQL keeps every notice until the slowest listener of the server has read it, and a full
 * queue fails the commit of anything that notifies. A listener that stopped reading without
 * closing its connection (an instance frozen by SIGSTOP, a host gone while TCP stays up) would
 * fill it. Each look: from `cutAt` of the queue in use, a warning, and this service's listen
 * connections that were blocked writing at this look and the previous one are cut (a busy
 * listener catching up may be caught once). A live instance that is cut reconnects and catches
 * up from the tables. A look never throws: the sweep it runs in has other work.
 */
export class NoticeQueueWatch {
  readonly #repo: Pick<InstanceRepository, 'cutStuckListeners'>
  readonly #cutAt: number
  readonly #log: Log
  /** the listen connections blocked writing at the last look */
  #suspects: number[] = []

  /** `cutAt`: the share of the queue in use (0–1) from which it acts; 1: never */
  constructor (opts: { repo: Pick<InstanceRepository, 'cutStuckListeners'>, cutAt: number, logger: Log }) {
    this.#repo = opts.repo
    this.#cutAt = opts.cutAt
    this.#log = opts.logger
  }

  async look (): Promise<void> {
    if (this.#cutAt >= 1) return
    try {
      const queue = await this.#repo.cutStuckListeners(this.#cutAt, this.#suspects)
      this.#suspects = queue.suspects
      if (queue.cut === 0 && (queue.usage < this.#cutAt || queue.usage === 0)) return
      this.#log.warn({ usage: queue.usage, cut: queue.cut, suspects: queue.suspects.length },
        queue.cut > 0
          ? 'the PostgreSQL notice queue is filling: listen connections that stopped reading were cut'
          : 'the PostgreSQL notice queue is filling: no listen connection of this service is stuck at two looks in a row (another database\'s or application\'s listener may hold it)')
    } catch (err) {
      this.#log.warn({ err }, 'looking at the notice queue failed')
    }
  }
}
