import { format } from 'node:util'
import { isDatabaseUnavailable } from './db/database-errors.js'
import type { SessionState } from './domain/state-machine.js'

/**
 * Every error code a client can see, wherever it shows: an HTTP problem (`status`), a reply on
 * the stream to one client frame, or an `error` event stored in a session's log (`status: null`).
 * The README's error table is generated from this catalogue, and a test keeps the two equal.
 */
export const ERROR_CATALOGUE = {
  // requests
  VALIDATION_FAILED: { status: 400, where: 'http', meaning: 'A body, query or path parameter does not match its schema (unknown members included); `errors: [{field, message}]`' },
  INVALID_JSON: { status: 400, where: 'http', meaning: 'The body is not valid JSON' },
  INVALID_CONTENT_LENGTH: { status: 400, where: 'http', meaning: 'The body size does not match `Content-Length`' },
  BAD_URL: { status: 400, where: 'http', meaning: 'The URL cannot be decoded' },
  BAD_REQUEST: { status: 400, where: 'http', meaning: 'A client error without a code of its own (other Fastify client errors keep their `FST_ERR_…` code)' },
  INVALID_IF_MATCH: { status: 400, where: 'http', meaning: '`If-Match` is malformed' },
  INVALID_CURSOR: { status: 400, where: 'http', meaning: 'A `cursor` that this service did not issue' },
  VALUE_OUT_OF_RANGE: { status: 400, where: 'http', meaning: '`idleTimeoutSeconds` or `ttlSeconds` outside the configured range; adds `field`, `minimum`, `maximum`' },
  WORKDIR_OUTSIDE_ROOT: { status: 400, where: 'http', meaning: '`workdir` leads outside `MOBVIBE_WORKSPACE_ROOT` (symlinks included)' },
  PERMISSION_MODE_NOT_ALLOWED: { status: 400, where: 'http', meaning: 'A `permissionMode` this service does not allow (`ALLOWED_PERMISSION_MODES`); adds `allowed`' },
  INVALID_PERMISSION_ANSWER: { status: 400, where: 'http', meaning: 'An answer that does not fit its request: `answers` for a tool permission, an allowed question without `answers`, or answers to questions it did not ask (also a stream error reply)' },
  WORKDIR_UNUSABLE: { status: 400, where: 'http', meaning: '`workdir` cannot be resolved or created' },
  UNAUTHORIZED: { status: 401, where: 'http', meaning: 'No bearer token, or one that is malformed, expired, not yet valid, forged, or for another issuer or audience; `WWW-Authenticate: Bearer` carries `error="invalid_token"` and the reason when a token was sent (also before a stream upgrade)' },
  ROUTE_NOT_FOUND: { status: 404, where: 'http', meaning: 'No such route' },
  SESSION_NOT_FOUND: { status: 404, where: 'http', meaning: 'No such session, or it was deleted (also before a stream upgrade, and as a stream error reply)' },
  PERMISSION_REQUEST_NOT_FOUND: { status: 404, where: 'http', meaning: 'The session has no permission request or question with this id (also a stream error reply)' },
  SNAPSHOT_NOT_FOUND: { status: 404, where: 'http', meaning: '`resume` named a snapshot this session does not have' },
  DEVICE_NOT_FOUND: { status: 404, where: 'http', meaning: 'No such device among the user\'s own (another user\'s device included)' },
  SESSION_INVALID_TRANSITION: { status: 409, where: 'http', meaning: 'The transition is not in the table for this state and a user; also `restart` outside `suspended`/`active` (with `allowedTargets: []`); adds `state`, `allowedTargets`, `currentVersion`' },
  SESSION_TERMINAL: { status: 409, where: 'http', meaning: 'A PATCH or heartbeat on a completed, failed or expired session (also a stream error reply); adds `state`, `currentVersion`' },
  SESSION_NO_SNAPSHOT: { status: 409, where: 'http', meaning: 'Resume of a paused session that has no snapshot (should not happen: a pause always takes one)' },
  SESSION_NOT_ACCEPTING_MESSAGES: { status: 409, where: 'http', meaning: 'A message to a paused or terminal session, or while the service shuts down (also a stream error reply)' },
  PERMISSION_REQUEST_CLOSED: { status: 409, where: 'http', meaning: 'The permission request or question was already answered, went unanswered past its timeout, or was cancelled (pause, interrupt, the agent\'s end, a restart); adds `requestStatus` (`allowed`, `denied`, `timed_out`, `cancelled`). Also a stream error reply' },
  SESSION_WRITE_CONTENTION: { status: 409, where: 'http', meaning: 'The session changed under a request without `If-Match` 8 times in a row; retry' },
  TOO_MANY_DEVICES: { status: 409, where: 'http', meaning: 'The user already has `PUSH_MAX_DEVICES_PER_USER` devices registered; delete one first. Adds `limit`' },
  SESSION_VERSION_CONFLICT: { status: 412, where: 'http', meaning: '`If-Match` does not match the current version; adds `state`, `currentVersion`' },
  BODY_TOO_LARGE: { status: 413, where: 'http', meaning: 'The body is larger than `BODY_LIMIT_BYTES`' },
  MESSAGE_TOO_LARGE: { status: 413, where: 'http', meaning: 'A message\'s `text` is longer than `MESSAGE_MAX_BYTES` (UTF-8 bytes) (also a stream error reply)' },
  UNSUPPORTED_MEDIA_TYPE: { status: 415, where: 'http', meaning: 'A body whose content type is not JSON (`text/plain` included)' },
  RATE_LIMITED: { status: 429, where: 'http', meaning: 'More `/v1` requests from this user in the current minute than `RATE_LIMIT_PER_MINUTE` (or heartbeats than `HEARTBEAT_RATE_LIMIT_PER_MINUTE`, a bucket of their own); carries `Retry-After` (seconds until the window resets) and `RateLimit-Limit`, `RateLimit-Remaining`, `RateLimit-Reset`. The request did nothing' },
  TOO_MANY_STREAMS: { status: 429, where: 'http', meaning: 'Before a stream upgrade: this user already has `MAX_STREAMS_PER_USER` streams open; close one first. Carries `Retry-After`; adds `limit`' },
  INTERNAL_ERROR: { status: 500, where: 'http', meaning: 'A bug; the details are in the log only (also a stream error reply)' },
  DATABASE_UNAVAILABLE: { status: 503, where: 'http', meaning: 'The database cannot be reached (connection refused or lost, server shutting down, out of connections, the embedded database\'s thread gone); carries `Retry-After: 1`: send the same request again (a message with a `clientMessageId` is stored once). Also a stream error reply' },
  AUTH_KEYS_UNAVAILABLE: { status: 503, where: 'http', meaning: 'The identity provider\'s keys (`JWT_JWKS_URL`) cannot be fetched, so no token can be checked; carries `Retry-After`' },
  SERVICE_UNAVAILABLE: { status: 503, where: 'http', meaning: '`/readyz`: the database does not answer' },
  INSTANCE_LEASE_LOST: { status: 503, where: 'http', meaning: 'This instance lost its lease (it could not reach the database for three quarters of `INSTANCE_LEASE_SECONDS`) and is joining again, so it may not start agents: the request did nothing. Carries `Retry-After: 1`; any instance serves the retry' },
  SERVICE_OVERLOADED: { status: 503, where: 'http', meaning: 'The event loop is saturated (its delay is above `MAX_EVENT_LOOP_DELAY_MS`): the request was refused before any work, instead of queueing; carries `Retry-After`. Never on `/healthz`' },
  // the stream
  INVALID_FRAME: { status: null, where: 'stream', meaning: 'Stream error reply: a client frame that is not JSON text (binary included), not one of the four client frames, or has extra members; the connection stays open' },
  // stored `error` events
  AGENT_START_FAILED: { status: null, where: 'event', meaning: '`error` event: a new conversation could not start (spawn error, e.g. a wrong `CLAUDE_BIN`, or exit before the turn began); the session becomes `failed` if it never completed a turn, otherwise `suspended`; the message is kept' },
  AGENT_RESUME_FAILED: { status: null, where: 'event', meaning: '`error` event: continuing a conversation failed (`--resume` refused, e.g. "No conversation found", or an exit before the turn began); the session becomes `suspended`, the message is kept: send again to retry, or `POST /restart`' },
  AGENT_CRASHED: { status: null, where: 'event', meaning: '`error` event: the agent exited on its own during a turn or between turns (crash, OOM, killed); the session, if still `active`, becomes `suspended`, or `failed` at the third crash in a row' }
} as const satisfies Record<string, { status: number | null, where: 'http' | 'stream' | 'event', meaning: string }>

export type ErrorCode = keyof typeof ERROR_CATALOGUE
type HttpErrorCode = { [C in ErrorCode]: typeof ERROR_CATALOGUE[C]['status'] extends number ? C : never }[ErrorCode]

type ProblemDetails = Record<string, unknown>

/**
 * An error a client may see: its stable code and HTTP status come from the catalogue, and
 * `details` become members of the problem body. (Fastify renders `statusCode` and `code` the same
 * way for its own errors, so one mapping serves both.)
 */
class ServiceError extends Error {
  readonly code: HttpErrorCode
  readonly statusCode: number
  details?: ProblemDetails
  /** response headers the problem needs (`WWW-Authenticate`, `Retry-After`) */
  headers?: Record<string, string>

  constructor (code: HttpErrorCode, message: string) {
    super(message)
    this.name = 'ServiceError'
    this.code = code
    this.statusCode = ERROR_CATALOGUE[code].status
  }
}

/** An error class for one code; its message is `template` with the arguments in place of `%s`. */
function define (code: HttpErrorCode, template: string) {
  return class extends ServiceError {
    constructor (...args: (string | number)[]) {
      super(code, format(template, ...args))
    }
  }
}

export const SessionNotFound = define('SESSION_NOT_FOUND', 'Session %s not found')
export const SnapshotNotFound = define('SNAPSHOT_NOT_FOUND', 'Snapshot %s not found for session %s')
export const NoSnapshot = define('SESSION_NO_SNAPSHOT', 'Session %s has no snapshot to resume from')
const VersionConflict = define('SESSION_VERSION_CONFLICT', 'If-Match %s does not match the current version %s')
const InvalidTransition = define('SESSION_INVALID_TRANSITION', 'Cannot move a %s session to %s')
const SessionTerminal = define('SESSION_TERMINAL', 'Session is %s: it accepts no further changes')
export const WriteContention = define('SESSION_WRITE_CONTENTION', 'The session kept changing under this request; retry')
export const InvalidIfMatch = define('INVALID_IF_MATCH', 'If-Match must be "*" or a list of quoted versions, got %s')
export const InvalidCursor = define('INVALID_CURSOR', 'The cursor is malformed or was not issued by this service')
export const WorkdirOutsideRoot = define('WORKDIR_OUTSIDE_ROOT', 'workdir %s lies outside the workspace root')
export const WorkdirUnusable = define('WORKDIR_UNUSABLE', 'workdir %s cannot be used: %s')
const OutOfRange = define('VALUE_OUT_OF_RANGE', '%s must be between %s and %s')
export const MessageNotAccepted = define('SESSION_NOT_ACCEPTING_MESSAGES', 'Session %s does not take messages now: %s')
export const MessageTooLarge = define('MESSAGE_TOO_LARGE', 'The message is %s bytes; at most %s are accepted')
export const PermissionRequestNotFound = define('PERMISSION_REQUEST_NOT_FOUND', 'Session %s has no permission request %s')
export const InvalidPermissionAnswer = define('INVALID_PERMISSION_ANSWER', '%s')
const PermissionRequestClosed = define('PERMISSION_REQUEST_CLOSED', 'Permission request %s is closed: %s')
const PermissionModeNotAllowed = define('PERMISSION_MODE_NOT_ALLOWED', 'permissionMode %s is not allowed here; allowed: %s')
export const ServiceUnavailable = define('SERVICE_UNAVAILABLE', '%s')
const Unauthorized = define('UNAUTHORIZED', '%s')
const AuthKeysUnavailable = define('AUTH_KEYS_UNAVAILABLE', 'The identity provider\'s keys cannot be fetched: %s')

/**
 * A 401 with its RFC 6750 challenge: a request without credentials gets the bare scheme, a bad
 * token `error="invalid_token"` and why, so a client can tell "log in" from "refresh the token".
 */
export function unauthorized (reason: string, tokenSent: boolean): Error {
  const err = new Unauthorized(reason)
  const description = reason.replace(/["\\]/g, "'")
  err.headers = {
    'www-authenticate': tokenSent
      ? `Bearer realm="mobvibe", error="invalid_token", error_description="${description}"`
      : 'Bearer realm="mobvibe"'
  }
  return err
}

export function authKeysUnavailable (why: string): Error {
  const err = new AuthKeysUnavailable(why)
  err.headers = { 'retry-after': '5' }
  return err
}

const RateLimited = define('RATE_LIMITED', 'Too many %s from this user: at most %s a minute; retry in %s s')
const TooManyStreams = define('TOO_MANY_STREAMS', 'This user already has %s streams open, the most allowed at once; close one first')
const ServiceOverloaded = define('SERVICE_OVERLOADED', 'The service is overloaded; retry in %s s')

/**
 * A 429 of a per-user rate-limit bucket (`what`: requests or heartbeats), with the headers of
 * @fastify/rate-limit's draft-spec mode, so the refusal carries the same ones as a success.
 */
export function rateLimited (what: string, limit: number, retryAfterSeconds: number): Error {
  const err = new RateLimited(what, limit, retryAfterSeconds)
  err.headers = {
    'retry-after': String(retryAfterSeconds),
    'ratelimit-limit': String(limit),
    'ratelimit-remaining': '0',
    'ratelimit-reset': String(retryAfterSeconds)
  }
  return err
}

export function tooManyStreams (limit: number, retryAfterSeconds: number): Error {
  const err = withDetails(new TooManyStreams(limit), { limit })
  err.headers = { 'retry-after': String(retryAfterSeconds) }
  return err
}

export const DeviceNotFound = define('DEVICE_NOT_FOUND', 'Device %s not found')
const TooManyDevices = define('TOO_MANY_DEVICES', 'This user already has %s devices registered, the most allowed; delete one first')

export function tooManyDevices (limit: number): Error {
  return withDetails(new TooManyDevices(limit), { limit })
}

const InstanceLeaseLost = define('INSTANCE_LEASE_LOST', 'This instance lost its lease and is joining again; retry')

export function instanceLeaseLost (): Error {
  const err = new InstanceLeaseLost()
  err.headers = { 'retry-after': '1' }
  return err
}

/**
 * A write of an agent whose claim on the session was replaced (its instance lost its lease, and
 * another took the session over): refused by the database. Never a client's answer: the agent
 * that made it is stopped.
 */
export class FencedWrite extends Error {
  override name = 'FencedWrite'
  constructor (readonly sessionId: string) {
    super(`session ${sessionId} belongs to another instance now: this agent's write was refused`)
  }
}

/** The 503 of load shedding: nothing about the measurement, only when to come back. */
export function serviceOverloaded (retryAfterSeconds: number): Error {
  const err = new ServiceOverloaded(retryAfterSeconds)
  err.headers = { 'retry-after': String(retryAfterSeconds) }
  return err
}

function withDetails (err: ServiceError, details: ProblemDetails): ServiceError {
  err.details = details
  return err
}

export function versionConflict (ifMatch: string, current: { version: number, state: SessionState }): Error {
  return withDetails(new VersionConflict(ifMatch, current.version), {
    currentVersion: current.version,
    state: current.state
  })
}

export function invalidTransition (from: SessionState, to: SessionState, allowed: SessionState[], version: number, why?: string): Error {
  const err = new InvalidTransition(from, to)
  if (why) err.message += `: ${why}`
  return withDetails(err, { state: from, allowedTargets: allowed, currentVersion: version })
}

export function sessionTerminal (state: SessionState, version: number): Error {
  return withDetails(new SessionTerminal(state), { state, currentVersion: version })
}

export function outOfRange (field: string, min: number, max: number): Error {
  return withDetails(new OutOfRange(field, min, max), { field, minimum: min, maximum: max })
}

export function permissionRequestClosed (requestId: string, status: string): Error {
  const why: Record<string, string> = {
    allowed: 'it was already allowed',
    denied: 'it was already denied',
    timed_out: 'nobody answered in time, so it was denied',
    cancelled: 'it was cancelled (the turn was interrupted or paused, or the agent stopped)'
  }
  return withDetails(new PermissionRequestClosed(requestId, why[status] ?? status), { requestStatus: status })
}

export function permissionModeNotAllowed (mode: string, allowed: readonly string[]): Error {
  return withDetails(new PermissionModeNotAllowed(mode, allowed.join(', ')), { allowed })
}

// Fastify's own client errors, in the service's vocabulary
const FASTIFY_CODES: Record<string, ErrorCode> = {
  FST_ERR_CTP_BODY_TOO_LARGE: 'BODY_TOO_LARGE',
  FST_ERR_CTP_INVALID_MEDIA_TYPE: 'UNSUPPORTED_MEDIA_TYPE',
  FST_ERR_CTP_INVALID_CONTENT_LENGTH: 'INVALID_CONTENT_LENGTH',
  FST_ERR_CTP_EMPTY_JSON_BODY: 'INVALID_JSON',
  FST_ERR_CTP_INVALID_JSON_BODY: 'INVALID_JSON',
  FST_ERR_BAD_URL: 'BAD_URL'
}

const TITLES: Record<number, string> = {
  400: 'Bad Request',
  401: 'Unauthorized',
  404: 'Not Found',
  405: 'Method Not Allowed',
  409: 'Conflict',
  412: 'Precondition Failed',
  413: 'Content Too Large',
  415: 'Unsupported Media Type',
  429: 'Too Many Requests',
  500: 'Internal Server Error',
  503: 'Service Unavailable'
}

interface ValidationIssue {
  instancePath: string
  message?: string
  params: Record<string, unknown>
}

/** An error as the client sees it: RFC 9457 members, the stable code, and the headers it needs. */
export interface Problem {
  status: number
  code: string
  detail: string
  /** members beyond code and detail: validation errors, the current state and version… */
  extra: ProblemDetails
  headers: Record<string, string>
}

function fieldOf (context: string | undefined, issue: ValidationIssue): string {
  const extra = issue.params.missingProperty ?? issue.params.additionalProperty
  const path = issue.instancePath.split('/').filter(Boolean)
  if (typeof extra === 'string') path.push(extra)
  return [context ?? 'body', ...path].join('.')
}

/**
 * The one mapping from an error to what a client is told, for HTTP responses and stream replies
 * alike. 5xx internals never leave the service: the caller logs the error itself.
 */
export function toProblem (err: unknown): Problem {
  const e = err as Error & { code?: string, statusCode?: number, validation?: ValidationIssue[], validationContext?: string }
  if (e.validation) {
    const errors = e.validation.map((issue) => ({ field: fieldOf(e.validationContext, issue), message: issue.message ?? 'is invalid' }))
    const first = errors[0]
    return { status: 400, code: 'VALIDATION_FAILED', detail: first ? `${first.field} ${first.message}` : e.message, extra: { errors }, headers: {} }
  }
  if (isDatabaseUnavailable(err)) {
    // retryable: the request did not run, or (a lost reply) ran once; messages are idempotent by clientMessageId
    return { status: 503, code: 'DATABASE_UNAVAILABLE', detail: 'The database cannot be reached right now; retry shortly', extra: {}, headers: { 'retry-after': '1' } }
  }
  const status = e.statusCode && e.statusCode >= 400 && e.statusCode < 600 ? e.statusCode : 500
  const headers = (err as { headers?: Record<string, string> }).headers ?? {}
  if (status === 503) return { status, code: e.code ?? 'SERVICE_UNAVAILABLE', detail: e.message, extra: {}, headers }
  if (status >= 500) {
    return { status, code: 'INTERNAL_ERROR', detail: 'The service failed to handle this request; it has been logged', extra: {}, headers: {} }
  }
  const code = (e.code && FASTIFY_CODES[e.code]) ?? e.code ?? 'BAD_REQUEST'
  return { status, code, detail: e.message, extra: (err as { details?: ProblemDetails }).details ?? {}, headers }
}

/** The problem+json body (RFC 9457) of a problem, for one request (its URL and its id). */
export function problemBody (problem: Pick<Problem, 'status' | 'code' | 'detail' | 'extra'>, request: { instance: string, requestId: string }): Record<string, unknown> {
  return {
    type: `https://mobvibe.dev/problems/${problem.code.toLowerCase().replaceAll('_', '-')}`,
    title: TITLES[problem.status] ?? 'Error',
    status: problem.status,
    instance: request.instance,
    code: problem.code,
    detail: problem.detail,
    requestId: request.requestId,
    ...problem.extra
  }
}
