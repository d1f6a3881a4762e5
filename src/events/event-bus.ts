/** A persisted event on its way to live subscribers: serialised once, the same bytes for all. */
export interface PublishedFrame {
  seq: number
  /** the frame as sent on the wire: `{"seq":…,"type":…,"at":…,"data":…}` */
  bytes: Buffer
}

export type Subscriber = (frame: PublishedFrame) => void

/**
 * The fan-out of stored events to a session's subscribers. The event log publishes (in sequence
 * order, after the commit); stream connections subscribe. The service's own is the session feed,
 * which also brings in what other instances store.
 */
export interface EventBus {
  publish (sessionId: string, frame: PublishedFrame): void
  /** returns the unsubscribe function */
  subscribe (sessionId: string, subscriber: Subscriber): () => void
  subscriberCount (sessionId: string): number
  /** resolves once a new subscriber's replay may start: everything after it will be published */
  ready (sessionId: string): Promise<void>
}

export class InProcessEventBus implements EventBus {
  readonly #subscribers = new Map<string, Set<Subscriber>>()

  subscribe (sessionId: string, subscriber: Subscriber): () => void {
    let set = this.#subscribers.get(sessionId)
    if (!set) {
      set = new Set()
      this.#subscribers.set(sessionId, set)
    }
    set.add(subscriber)
    return () => {
      set.delete(subscriber)
      if (set.size === 0 && this.#subscribers.get(sessionId) === set) this.#subscribers.delete(sessionId)
    }
  }

  publish (sessionId: string, frame: PublishedFrame): void {
    const set = this.#subscribers.get(sessionId)
    if (!set) return
    for (const subscriber of set) subscriber(frame)
  }

  subscriberCount (sessionId: string): number {
    return this.#subscribers.get(sessionId)?.size ?? 0
  }

  async ready (): Promise<void> {}
}
