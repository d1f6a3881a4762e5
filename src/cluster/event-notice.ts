/**
 * The text of an event notice (`NOTIFY mv_events`), pure: which sessions an instance's commit
 * stored events of and, when they are small, the events themselves. An event that travels in the
 * notice reaches a viewer on another instance without a read of the table; a run too big for a
 * notice travels as its range alone and is read. Either way the table stays the truth: notices
 * may be lost, and a receiver that sees a gap reads it.
 *
 *     <instance id>
 *     <session id>:<first seq>-<last seq>
 *     <frame of the first seq, without its `{"seq":N,`>     (all of the run's frames, or none)
 *     …
 *
 * A frame travels without its seq (`"type":…}`, the seq follows from the range) so that the event
 * log can put the notice in the very statement that hands the seqs out: it is sent at that
 * commit, with no round trip of its own. Frames are single-line JSON (a stored payload never
 * holds a raw newline), so a line is either a range or a frame of the range above it.
 */

/** What one commit stored of one session: seqs `first`..`last`, with their frames if they travel. */
export interface StoredRun {
  sessionId: string
  first: number
  last: number
  /** the frames of every seq from `first` to `last`, in order; absent: read them from the table */
  frames?: string[] | undefined
}

/** The channel of event notices. */
export const EVENTS_CHANNEL = 'mv_events'
/** NOTIFY payloads must stay under 8000 bytes (PostgreSQL's limit) */
export const NOTICE_MAX_BYTES = 7800
/** a range line at most: a newline, a session id, two seqs of up to 16 digits, ':' and '-' */
const RANGE_LINE_BYTES = 1 + 36 + 1 + 16 + 1 + 16
/** an instance id */
const FROM_BYTES = 36
/** the frames one run may carry: with its range, any run that carries them fits one notice */
export const RUN_FRAMES_MAX_BYTES = NOTICE_MAX_BYTES - FROM_BYTES - RANGE_LINE_BYTES

const RANGE = /^([0-9a-f-]{36}):(\d+)-(\d+)$/

/** A frame's text from its seq and its tail (the frame without `{"seq":N,`). */
export function frameFromTail (seq: number, tail: string): string {
  return `{"seq":${seq},${tail}`
}

/** The tail of a frame of `seq`, or undefined when the frame is not one (then it cannot travel). */
function tailOf (seq: number, frame: string): string | undefined {
  const head = `{"seq":${seq},`
  return frame.startsWith(head) ? frame.slice(head.length) : undefined
}

/** Bytes of tails as they travel (a newline before each). */
function tailsBytes (tails: readonly string[]): number {
  let n = 0
  for (const tail of tails) n += Buffer.byteLength(tail) + 1
  return n
}

/**
 * Where each run of a commit goes: the notice it is in (0, 1, …, each under NOTICE_MAX_BYTES
 * once its range line is written) and the block that follows its range line (its frames'
 * tails, each after a newline, or '' when they are too big to travel).
 */
export function planNotices (runs: readonly { tails: readonly string[] | undefined }[]): { notice: number[], block: string[] } {
  const notice: number[] = []
  const block: string[] = []
  let index = 0
  let bytes = FROM_BYTES
  for (const run of runs) {
    const size = run.tails ? tailsBytes(run.tails) : 0
    const carried = run.tails !== undefined && size <= RUN_FRAMES_MAX_BYTES
    const runBytes = RANGE_LINE_BYTES + (carried ? size : 0)
    if (bytes + runBytes > NOTICE_MAX_BYTES) {
      index++
      bytes = FROM_BYTES
    }
    bytes += runBytes
    notice.push(index)
    block.push(carried ? run.tails!.map((tail) => `\n${tail}`).join('') : '')
  }
  return { notice, block }
}

/**
 * Merges what a later commit stored into a run not yet sent. The frames stay only while the two
 * follow each other and still fit; otherwise the receiver reads the merged range.
 */
export function mergeRuns (earlier: StoredRun, later: StoredRun): StoredRun {
  const merged: StoredRun = { sessionId: earlier.sessionId, first: Math.min(earlier.first, later.first), last: Math.max(earlier.last, later.last) }
  if (earlier.frames && later.frames && later.first === earlier.last + 1) {
    const frames = [...earlier.frames, ...later.frames]
    if (tailsBytes(frames) <= RUN_FRAMES_MAX_BYTES) merged.frames = frames
  }
  return merged
}

/** The notices that tell what `runs` stored, each under NOTICE_MAX_BYTES. */
export function encodeEventNotices (from: string, runs: readonly StoredRun[]): string[] {
  const tailsOf = (run: StoredRun): string[] | undefined => {
    if (!run.frames || run.frames.length !== run.last - run.first + 1) return undefined
    const tails = run.frames.map((frame, i) => tailOf(run.first + i, frame))
    return tails.every((tail) => tail !== undefined) ? tails as string[] : undefined
  }
  const plan = planNotices(runs.map((run) => ({ tails: tailsOf(run) })))
  const notices: string[] = []
  runs.forEach((run, i) => {
    const n = plan.notice[i]!
    notices[n] = `${notices[n] ?? from}\n${run.sessionId}:${run.first}-${run.last}${plan.block[i]!}`
  })
  return notices
}

/** Reads a notice; a run whose frames did not all arrive is kept as its range (to be read). */
export function decodeEventNotice (payload: string): { from: string, runs: StoredRun[] } {
  // the previous release's notices (`<instance id>;<sid>:<first>-<last>;…`, ranges only), during
  // a rolling upgrade
  const [from = '', ...lines] = payload.includes('\n') || !payload.includes(';') ? payload.split('\n') : payload.split(';')
  const runs: StoredRun[] = []
  let current: (StoredRun & { frames: string[] }) | undefined
  for (const line of lines) {
    if (line.startsWith('"')) {
      current?.frames.push(frameFromTail(current.first + current.frames.length, line))
      continue
    }
    const match = RANGE.exec(line)
    current = undefined
    if (!match) continue
    current = { sessionId: match[1]!, first: Number(match[2]), last: Number(match[3]), frames: [] }
    runs.push(current)
  }
  return {
    from,
    runs: runs.map((r) => r.frames?.length === r.last - r.first + 1 ? r : { sessionId: r.sessionId, first: r.first, last: r.last })
  }
}
