import type { Log } from '../logger.js'
import { Compile } from 'typebox/compile'
import { toProblem, type ErrorCode } from '../errors.js'
import type { WebSocket } from 'ws'
import { InboundFrameSchema, type HeartbeatReply, type InboundFrame, type PermissionReply, type StreamReply } from '../schemas/events.js'
import type { EventBus, PublishedFrame } from './event-bus.js'
import { frameText, type EventLog } from './event-log.js'

/** The numbers of the stream's flow control and liveness, named once (documented in docs/STREAM.md). */
export const STREAM_LIMITS = {
  /** unsent bytes a client may hold before it is cut off (it catches up by replay) */
  highWaterBytes: 8 * 1024 * 1024,
  /** events read per replay page */
  replayPage: 500,
  /** how often a replay checks whether the socket has drained enough for the next page */
  drainPollMs: 10,
  /** close code for a client that does not keep up: reconnect with ?after=<last seq> */
  slowConsumerCloseCode: 4008,
  /** close code when the replay itself failed (the database went away): reconnect later */
  replayFailedCloseCode: 1011,
  /** close code when the service shuts down */
  goingAwayCloseCode: 1001
} as const

const checkInbound = Compile(InboundFrameSchema)

export interface StreamHandlers {
  message (text: string, clientMessageId: string | undefined): Promise<{ seq: number, duplicate: boolean }>
  heartbeat (): Promise<Omit<HeartbeatReply, 'type'>>
  permission (frame: Extract<InboundFrame, { type: 'permission' }>): Promise<Omit<PermissionReply, 'type'>>
  interrupt (deliverQueued: boolean | undefined): Promise<{ interrupted: boolean }>
}

/**
 * One client on a session's stream: replay from `after`, then live, with no gap and no duplicate.
 * It subscribes before replaying, holds live frames back until the replay has caught up, and drops
 * anything it already sent (by seq). A client that falls too far behind is disconnected rather
 * than allowed to hold the agent or other clients back.
 */
export class StreamConnection {
  readonly #socket: WebSocket
  readonly #sessionId: string
  readonly #events: EventLog
  readonly #bus: EventBus
  readonly #handlers: StreamHandlers
  readonly #log: Log
  readonly #pingIntervalMs: number
  #lastSent: number
  #held: PublishedFrame[] | null = []
  #heldBytes = 0
  #alive = true
  #closed = false
  #unsubscribe: (() => void) | undefined
  #pingTimer: NodeJS.Timeout | undefined

  constructor (opts: {
    socket: WebSocket
    sessionId: string
    after: number
    events: EventLog
    bus: EventBus
    handlers: StreamHandlers
    logger: Log
    pingIntervalMs: number
  }) {
    this.#socket = opts.socket
    this.#sessionId = opts.sessionId
    this.#lastSent = opts.after
    this.#events = opts.events
    this.#bus = opts.bus
    this.#handlers = opts.handlers
    this.#log = opts.logger
    this.#pingIntervalMs = opts.pingIntervalMs
  }

  async run (): Promise<void> {
    this.#unsubscribe = this.#bus.subscribe(this.#sessionId, (frame) => {
      if (!this.#held) {
        this.#deliver(frame)
        return
      }
      this.#held.push(frame)
      this.#heldBytes += frame.bytes.length
      // what waits behind a replay counts against the same bound as what the socket holds
      if (this.#heldBytes + this.#socket.bufferedAmount > STREAM_LIMITS.highWaterBytes) this.#tooSlow()
    })
    this.#socket.on('close', () => this.#cleanup())
    this.#socket.on('error', (err) => {
      this.#log.debug({ err }, 'stream socket error')
      this.#cleanup()
    })
    this.#socket.on('pong', () => { this.#alive = true })
    this.#socket.on('message', (data, isBinary) => { this.#onInbound(data as Buffer, isBinary) })
    this.#pingTimer = setInterval(() => this.#ping(), this.#pingIntervalMs)
    try {
      await this.#bus.ready(this.#sessionId)
      await this.#replay()
    } catch (err) {
      this.#log.error({ err }, 'stream replay failed')
      this.close(STREAM_LIMITS.replayFailedCloseCode, 'replay failed')
      return
    }
    const held = this.#held ?? []
    this.#held = null
    for (const frame of held) this.#deliver(frame)
  }

  close (code: number, reason: string): void {
    if (this.#closed) return
    this.#socket.close(code, reason)
    this.#cleanup()
  }

  async #replay (): Promise<void> {
    for (;;) {
      if (this.#closed) return
      const page = await this.#events.page(this.#sessionId, this.#lastSent, STREAM_LIMITS.replayPage)
      for (const e of page) {
        this.#send(Buffer.from(frameText(e)), e.seq)
      }
      if (page.length < STREAM_LIMITS.replayPage) return
      await this.#drained()
    }
  }

  #deliver (frame: PublishedFrame): void {
    if (frame.seq <= this.#lastSent) return
    this.#send(frame.bytes, frame.seq)
  }

  #send (bytes: Buffer, seq: number): void {
    if (this.#closed) return
    if (this.#socket.bufferedAmount > STREAM_LIMITS.highWaterBytes) {
      this.#tooSlow()
      return
    }
    this.#socket.send(bytes, { binary: false })
    this.#lastSent = seq
  }

  #tooSlow (): void {
    this.#log.info({ bufferedAmount: this.#socket.bufferedAmount, heldBytes: this.#heldBytes, lastSent: this.#lastSent }, 'slow stream client disconnected')
    this.#held = []
    this.#heldBytes = 0
    this.close(STREAM_LIMITS.slowConsumerCloseCode, `too slow: reconnect with ?after=${this.#lastSent}`)
  }

  /** Replay pages wait for the socket to drain, so a long history does not pile up in memory. */
  async #drained (): Promise<void> {
    while (!this.#closed && this.#socket.bufferedAmount > STREAM_LIMITS.highWaterBytes / 4) {
      await new Promise((resolve) => setTimeout(resolve, STREAM_LIMITS.drainPollMs))
    }
  }

  #reply (frame: StreamReply): void {
    if (!this.#closed) this.#socket.send(JSON.stringify(frame))
  }

  #onInbound (data: Buffer, isBinary: boolean): void {
    let frame: unknown
    try {
      frame = isBinary ? undefined : JSON.parse(data.toString('utf8'))
    } catch {}
    if (!checkInbound.Check(frame)) {
      const first = frame === undefined ? undefined : [...checkInbound.Errors(frame)][0]
      this.#reply({
        type: 'error',
        code: 'INVALID_FRAME' satisfies ErrorCode,
        message: frame === undefined
          ? 'frames are JSON text: {"type":"message","text":…}, {"type":"heartbeat"}, {"type":"permission","requestId":…,"decision":…} or {"type":"interrupt"}'
          : `invalid frame: ${first?.instancePath || '(frame)'} ${first?.message ?? 'is not a known frame'}`
      })
      return
    }
    this.#handle(frame).catch((err: unknown) => {
      // the same mapping as an HTTP error: the same code, the same words, internals hidden
      const problem = toProblem(err)
      if (problem.status >= 500) this.#log.error({ err }, 'stream frame failed')
      this.#reply({
        type: 'error',
        code: problem.code,
        message: problem.detail,
        ...(frame.type === 'message' && frame.clientMessageId ? { clientMessageId: frame.clientMessageId } : {}),
        ...(frame.type === 'permission' ? { requestId: frame.requestId } : {})
      })
    })
  }

  async #handle (frame: InboundFrame): Promise<void> {
    if (frame.type === 'heartbeat') {
      this.#reply({ type: 'heartbeat', ...await this.#handlers.heartbeat() })
      return
    }
    if (frame.type === 'permission') {
      this.#reply({ type: 'permission', ...await this.#handlers.permission(frame) })
      return
    }
    if (frame.type === 'interrupt') {
      this.#reply({ type: 'interrupt', ...await this.#handlers.interrupt(frame.deliverQueued) })
      return
    }
    const accepted = await this.#handlers.message(frame.text, frame.clientMessageId)
    // replies carry no `seq`: a client that tracks the last seq it saw must not skip what the
    // replay has not delivered yet. The message's own event arrives on the stream in order.
    this.#reply({
      type: 'ack',
      messageSeq: accepted.seq,
      duplicate: accepted.duplicate,
      ...(frame.clientMessageId ? { clientMessageId: frame.clientMessageId } : {})
    })
  }

  #ping (): void {
    if (!this.#alive) {
      this.#log.info('stream client did not answer a ping: terminated')
      this.#socket.terminate()
      this.#cleanup()
      return
    }
    this.#alive = false
    this.#socket.ping()
  }

  #cleanup (): void {
    if (this.#closed) return
    this.#closed = true
    clearInterval(this.#pingTimer)
    this.#unsubscribe?.()
  }
}
