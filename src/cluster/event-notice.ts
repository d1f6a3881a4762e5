/**
 * The text of an event notice (`NOTIFY mv_events`), pure: which sessions an instance's commit
 * stored events of and, when they are small, the events' frames themselves. A frame that travels
 * in the notice reaches a viewer on another instance without a read of the table; a run too big
 * for a notice travels as its range alone and is read. Either way the table stays the truth:
 * notices may be lost, and a receiver that sees a gap reads it.
 *
 *     <instance id>
 *     <session id>:<first seq>-<last seq>
 *     <frame of first seq>          (all of the run's frames, or none)
 *     …
 *
 * Frames are single-line JSON (they start with `{`; a stored payload never holds a raw newline),
 * so a line is either a range or a frame of the range above it.
 */

/** What one commit stored of one session: seqs `first`..`last`, with their frames if they travel. */
export interface StoredRun {
  sessionId: string
  first: number
  last: number
  /** the frames of every seq from `first` to `last`, in order; absent: read them from the table */
  frames?: string[] | undefined
}

/** NOTIFY payloads must stay under 8000 bytes (PostgreSQL's limit) */
export const NOTICE_MAX_BYTES = 7800
/** an instance id line and one range line, at most (both ASCII) */
const HEADER_BYTES = 36 + 1 + 36 + 2 * 16 + 3
/** the frames one run may carry: with its header, any run that carries them fits one notice */
export const RUN_FRAMES_MAX_BYTES = NOTICE_MAX_BYTES - HEADER_BYTES

const RANGE = /^([0-9a-f-]{36}):(\d+)-(\d+)$/

/** Bytes of a run's frames as they travel (a newline before each). */
function framesBytes (frames: readonly string[]): number {
  let n = 0
  for (const f of frames) n += Buffer.byteLength(f) + 1
  return n
}

/**
 * Merges what a later commit stored into a run not yet sent. The frames stay only while the two
 * follow each other and still fit; otherwise the receiver reads the merged range.
 */
export function mergeRuns (earlier: StoredRun, later: StoredRun): StoredRun {
  const merged: StoredRun = { sessionId: earlier.sessionId, first: Math.min(earlier.first, later.first), last: Math.max(earlier.last, later.last) }
  if (earlier.frames && later.frames && later.first === earlier.last + 1 &&
    framesBytes(earlier.frames) + framesBytes(later.frames) <= RUN_FRAMES_MAX_BYTES) {
    merged.frames = [...earlier.frames, ...later.frames]
  }
  return merged
}

/** The notices that tell what `runs` stored, each under NOTICE_MAX_BYTES. */
export function encodeEventNotices (from: string, runs: readonly StoredRun[]): string[] {
  const notices: string[] = []
  let text = from
  let bytes = Buffer.byteLength(from)
  for (const run of runs) {
    const range = `\n${run.sessionId}:${run.first}-${run.last}`
    const frames = run.frames && run.frames.length === run.last - run.first + 1 && framesBytes(run.frames) <= RUN_FRAMES_MAX_BYTES
      ? run.frames
      : undefined
    const runBytes = range.length + (frames ? framesBytes(frames) : 0)
    if (bytes + runBytes > NOTICE_MAX_BYTES) {
      notices.push(text)
      text = from
      bytes = Buffer.byteLength(from)
    }
    text += range
    if (frames) for (const f of frames) text += `\n${f}`
    bytes += runBytes
  }
  notices.push(text)
  return notices
}

/** Reads a notice; a run whose frames did not all arrive is kept as its range (to be read). */
export function decodeEventNotice (payload: string): { from: string, runs: StoredRun[] } {
  const [from = '', ...lines] = payload.split('\n')
  const runs: StoredRun[] = []
  let current: (StoredRun & { frames: string[] }) | undefined
  for (const line of lines) {
    if (line.startsWith('{')) {
      current?.frames.push(line)
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
