// The benchmark's agent lines: stream-json `assistant` lines of an exact byte length, carrying
// their index and the moment they were written (process.hrtime.bigint(): CLOCK_MONOTONIC, the same
// clock in every process of the machine), so a WebSocket client can compute stdout→client latency.
// Shared by bench/paced-agent.mjs and by the raw `ws` anchors (the same frames, byte for byte).

/** Every benchmark line holds this once; clients count the frames that carry it. */
export const LINE_MARKER = '@b='
/** The write time in ns follows this, up to the next '@'. */
export const TIME_MARKER = '@t='

const PAD = 'x'.repeat(1 << 20)

/**
 * An assistant line (no newline) of exactly `bytes` bytes when it can be (ASCII only), or the
 * shortest possible one when `bytes` is too small.
 */
export function agentLine (sessionId, index, timeNs, bytes) {
  const head = `{"type":"assistant","message":{"id":"msg_bench","type":"message","role":"assistant","model":"bench","content":[{"type":"text","text":"${LINE_MARKER}${index}${TIME_MARKER}${timeNs}@ `
  const tail = `"}],"stop_reason":null,"usage":{"input_tokens":0,"output_tokens":1}},"parent_tool_use_id":null,"session_id":"${sessionId}","uuid":"00000000-0000-4000-8000-${String(index % 1e12).padStart(12, '0')}"}`
  const pad = Math.max(0, bytes - head.length - tail.length)
  return head + (pad <= PAD.length ? PAD.slice(0, pad) : PAD.repeat(Math.ceil(pad / PAD.length)).slice(0, pad)) + tail
}
