/**
 * In-process fan-out of persisted events to a session's subscribers. A frame is serialised once
 * and the same Buffer goes to every subscriber.
 */
export interface PublishedFrame {
  seq: number
  /** the frame as sent on the wire: `{"seq":…,"type":…,"at":…,"data":…}` */
  bytes: Buffer
}

export type Subscriber = (frame: PublishedFrame) => void

export class EventHub {
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
}
