/**
 * The kinds of persisted session events, as stored and as sent on the stream. Pure data: the
 * schemas, the event log and the docs all read this list.
 */
export const EVENT_TYPES = [
  'user', 'agent', 'status', 'state', 'error',
  'permission_request', 'question', 'permission_response', 'permission_cancelled'
] as const
export type EventType = typeof EVENT_TYPES[number]
