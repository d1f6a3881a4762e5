/** Opaque keyset cursors: base64url JSON, validated on the way back in. */
export interface KeysetCursor {
  createdAt: Date
  id: string
}

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i

export function encodeCursor (c: KeysetCursor): string {
  return Buffer.from(JSON.stringify([c.createdAt.toISOString(), c.id])).toString('base64url')
}

/** null when the cursor was not produced by encodeCursor */
export function decodeCursor (raw: string): KeysetCursor | null {
  try {
    const parsed: unknown = JSON.parse(Buffer.from(raw, 'base64url').toString('utf8'))
    if (!Array.isArray(parsed) || parsed.length !== 2) return null
    const [at, id] = parsed as unknown[]
    if (typeof at !== 'string' || typeof id !== 'string' || !UUID.test(id)) return null
    const createdAt = new Date(at)
    // only plain four-digit years: extended years round-trip in JS but not in Postgres
    if (!/^[1-9]\d{3}-/.test(at) || Number.isNaN(createdAt.getTime()) || createdAt.toISOString() !== at) return null
    return { createdAt, id }
  } catch {
    return null
  }
}

export function encodeSeqCursor (n: number): string {
  return Buffer.from(String(n)).toString('base64url')
}

export function decodeSeqCursor (raw: string): number | null {
  const text = Buffer.from(raw, 'base64url').toString('utf8')
  if (!/^\d{1,15}$/.test(text)) return null
  return Number(text)
}
