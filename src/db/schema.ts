import { sql } from 'drizzle-orm'
import {
  bigint,
  check,
  boolean,
  date,
  doublePrecision,
  index,
  integer,
  json,
  jsonb,
  pgTable,
  primaryKey,
  text,
  timestamp,
  uniqueIndex,
  uuid
} from 'drizzle-orm/pg-core'

import { DEVICE_KINDS } from '../domain/push-policy.js'
import { PERMISSION_MODES } from '../domain/permission-modes.js'
import { ACTORS, LIVE_STATES, SESSION_STATES } from '../domain/state-machine.js'

const tstz = (name: string) => timestamp(name, { withTimezone: true, mode: 'date' })

/** `('a', 'b')`: a list of the domain's words as SQL, spelled the same wherever it appears. */
export const sqlList = (words: readonly string[]) => sql.raw(`(${words.map((w) => `'${w}'`).join(', ')})`)

// Terminal states never appear in the sweep indexes: the partial predicates keep them small
// however many finished sessions accumulate. Queries spell their conditions with the same list,
// so the planner can match them to these indexes.
const LIVE_STATES_SQL = sql`state in ${sqlList(LIVE_STATES)}`

export const sessions = pgTable('sessions', {
  id: uuid('id').primaryKey(),
  owner: text('owner'),
  state: text('state', { enum: SESSION_STATES }).notNull(),
  // the state before the last transition: lets a set-based UPDATE return where each row came from
  // (RETURNING sees only new values before Postgres 18) without a self-join
  previousState: text('previous_state'),
  version: integer('version').notNull().default(1),
  title: text('title'),
  workdir: text('workdir').notNull(),
  model: text('model'),
  // the CLI's --permission-mode for this session; null = the service's default (CLAUDE_PERMISSION_MODE)
  permissionMode: text('permission_mode', { enum: PERMISSION_MODES }),
  // how long a permission request or question waits for its answer; null = PERMISSION_TIMEOUT_SECONDS
  permissionTimeoutSeconds: integer('permission_timeout_seconds'),
  // how many of the session's permission requests wait for an answer: kept by the statements that
  // open and close them, so a session (and the "waiting for me" list) is read without a join
  pendingPermissions: integer('pending_permissions').notNull().default(0),
  agentSessionId: uuid('agent_session_id'),
  idleTimeoutSeconds: integer('idle_timeout_seconds').notNull(),
  ttlSeconds: integer('ttl_seconds').notNull(),
  expiresAt: tstz('expires_at').notNull(),
  // Maintained on every write that affects it so the idle sweep is an index range scan;
  // null while the session is not active or while a turn runs.
  idleDeadlineAt: tstz('idle_deadline_at'),
  lastActivityAt: tstz('last_activity_at'),
  lastHeartbeatAt: tstz('last_heartbeat_at'),
  busy: boolean('busy').notNull().default(false),
  activeMs: bigint('active_ms', { mode: 'number' }).notNull().default(0),
  activeSince: tstz('active_since'),
  inputTokens: bigint('input_tokens', { mode: 'number' }).notNull().default(0),
  outputTokens: bigint('output_tokens', { mode: 'number' }).notNull().default(0),
  cacheReadTokens: bigint('cache_read_tokens', { mode: 'number' }).notNull().default(0),
  cacheCreationTokens: bigint('cache_creation_tokens', { mode: 'number' }).notNull().default(0),
  costUsd: doublePrecision('cost_usd').notNull().default(0),
  // total_cost_usd of the CLI is cumulative per conversation: keep the current conversation's
  // latest figure apart so a new one replaces it instead of being added twice.
  conversationCostUsd: doublePrecision('conversation_cost_usd').notNull().default(0),
  turns: integer('turns').notNull().default(0),
  transitionCount: integer('transition_count').notNull().default(0),
  lastError: text('last_error'),
  stateChangedAt: tstz('state_changed_at').notNull(),
  startedAt: tstz('started_at'),
  endedAt: tstz('ended_at'),
  createdAt: tstz('created_at').notNull(),
  updatedAt: tstz('updated_at').notNull(),
  deletedAt: tstz('deleted_at'),
  // the instance that claimed the session last (service_instances.id), by its move to `active`:
  // while the session is active, the one whose agent serves it
  workerId: uuid('worker_id'),
  // the fencing token: +1 on every claim, checked by every write of the owner's agent, so an
  // instance that lost the session (its lease ran out) cannot write over the new owner
  workerEpoch: bigint('worker_epoch', { mode: 'number' }).notNull().default(0),
  // the instance where an agent process of the session runs, from its start to its exit: a new
  // claim elsewhere starts its agent only once this one is gone (or its instance is dead)
  agentWorker: uuid('agent_worker')
}, (t) => [
  check('sessions_state_check', sql`state in ${sqlList(SESSION_STATES)}`),
  check('sessions_version_check', sql`version > 0`),
  index('sessions_expiry_idx').on(t.expiresAt).where(LIVE_STATES_SQL),
  index('sessions_idle_idx').on(t.idleDeadlineAt).where(sql`state = 'active'`),
  // Every list is one user's: the owner leads both list indexes. NULLS FIRST is what a plain
  // ORDER BY … DESC means: with NULLS LAST the planner cannot use these
  index('sessions_owner_list_idx').on(t.owner, t.createdAt.desc().nullsFirst(), t.id.desc().nullsFirst()).where(sql`deleted_at is null`),
  // Only live states: a session that ends leaves this index instead of being rewritten in it, which
  // keeps a sweep of many expiries cheap; lists of finished sessions use sessions_owner_list_idx
  index('sessions_owner_live_list_idx').on(t.owner, t.state, t.createdAt.desc().nullsFirst(), t.id.desc().nullsFirst())
    .where(sql`deleted_at is null and ${LIVE_STATES_SQL}`),
  // an instance's own sessions (its sweeps, its hand-back at shutdown) and a dead one's (failover)
  index('sessions_worker_idx').on(t.workerId).where(sql`worker_id is not null`),
  index('sessions_agent_worker_idx').on(t.agentWorker).where(sql`agent_worker is not null`)
])

// The two append-only logs carry no foreign key: it costs a lookup per inserted row on the hottest
// writes (a sweep of 100k expiries, an agent streaming thousands of lines a second), and sessions
// are archived, never deleted, so there is nothing for it to protect.
export const sessionTransitions = pgTable('session_transitions', {
  sessionId: uuid('session_id').notNull(),
  fromState: text('from_state'),
  toState: text('to_state').notNull(),
  reason: text('reason'),
  actor: text('actor', { enum: ACTORS }).notNull(),
  version: integer('version').notNull(),
  at: tstz('at').notNull()
}, (t) => [
  // every transition produces exactly one version of its session: that is the history's key, and
  // its only index (a sweep of 100k expiries inserts 100k rows here)
  primaryKey({ name: 'session_transitions_pkey', columns: [t.sessionId, t.version] })
])

export const sessionSnapshots = pgTable('session_snapshots', {
  id: uuid('id').primaryKey(),
  sessionId: uuid('session_id').notNull().references(() => sessions.id, { onDelete: 'cascade' }),
  version: integer('version').notNull(),
  data: jsonb('data').notNull(),
  createdAt: tstz('created_at').notNull()
}, (t) => [
  index('session_snapshots_session_idx').on(t.sessionId, t.createdAt.desc().nullsFirst(), t.id.desc().nullsFirst())
])

export const sessionEvents = pgTable('session_events', {
  sessionId: uuid('session_id').notNull(),
  seq: bigint('seq', { mode: 'number' }).notNull(),
  type: text('type').notNull(),
  // json, not jsonb: an agent's line is kept as the CLI printed it (key order, spacing), and the
  // stream replays that exact text
  payload: json('payload').notNull(),
  at: tstz('at').notNull(),
  // makes a retried POST /messages from a phone idempotent
  clientMessageId: text('client_message_id')
}, (t) => [
  primaryKey({ name: 'session_events_pkey', columns: [t.sessionId, t.seq] }),
  uniqueIndex('session_events_client_message_idx').on(t.sessionId, t.clientMessageId).where(sql`client_message_id is not null`)
])

// Each session's position in its event log: the last sequence number handed out, and the last
// user message the agent has taken up (confirmed by its turn's system/init). User events above
// `delivered_seq` are the message queue, kept across crashes, failed resumes and restarts. Kept
// off the sessions row on purpose: events are written many times a second, and counters on the
// versioned row would make every event write and every transition wait for each other's row lock.
export const sessionEventSeqs = pgTable('session_event_seqs', {
  sessionId: uuid('session_id').primaryKey(),
  lastSeq: bigint('last_seq', { mode: 'number' }).notNull(),
  deliveredSeq: bigint('delivered_seq', { mode: 'number' }).notNull().default(0)
})

// What each session spent on each UTC day: the figures of sessions' usage columns, split by the day
// of the turn that reported them. Written by the same statement that adds a turn's usage to its
// session (one upsert per turn, no extra round trip), read by GET /v1/usage. `owner` is copied from
// the session so one user's days are an index range; it is null only for sessions created before
// users existed. No foreign key, like the logs: sessions are archived, never deleted.
export const sessionUsageDaily = pgTable('session_usage_daily', {
  sessionId: uuid('session_id').notNull(),
  owner: text('owner'),
  day: date('day', { mode: 'string' }).notNull(),
  inputTokens: bigint('input_tokens', { mode: 'number' }).notNull().default(0),
  outputTokens: bigint('output_tokens', { mode: 'number' }).notNull().default(0),
  cacheReadTokens: bigint('cache_read_tokens', { mode: 'number' }).notNull().default(0),
  cacheCreationTokens: bigint('cache_creation_tokens', { mode: 'number' }).notNull().default(0),
  costUsd: doublePrecision('cost_usd').notNull().default(0),
  turns: integer('turns').notNull().default(0)
}, (t) => [
  primaryKey({ name: 'session_usage_daily_pkey', columns: [t.sessionId, t.day] }),
  index('session_usage_daily_owner_idx').on(t.owner, t.day)
])

// The agent's permission requests and questions (the CLI's `can_use_tool`): the truth of which are
// still open, so the first answer wins by a compare-and-set on `status`, whoever sends it. Rows stay
// after they close: a late answer is told the request is closed (409), not unknown (404). No
// foreign key, like the logs: sessions are archived, never deleted.
export const sessionPermissionRequests = pgTable('session_permission_requests', {
  sessionId: uuid('session_id').notNull(),
  requestId: text('request_id').notNull(),
  kind: text('kind', { enum: ['permission', 'question'] }).notNull(),
  toolName: text('tool_name').notNull(),
  // the CLI's own request (tool input, suggestions): what an answer builds its response from
  request: jsonb('request').notNull(),
  // the seq of its `permission_request` or `question` event
  seq: bigint('seq', { mode: 'number' }),
  status: text('status', { enum: ['pending', 'allowed', 'denied', 'timed_out', 'cancelled'] }).notNull().default('pending'),
  createdAt: tstz('created_at').notNull(),
  expiresAt: tstz('expires_at').notNull(),
  closedAt: tstz('closed_at')
}, (t) => [
  primaryKey({ name: 'session_permission_requests_pkey', columns: [t.sessionId, t.requestId] }),
  index('session_permission_requests_open_idx').on(t.sessionId).where(sql`status = 'pending'`)
])

// The devices a user's push notifications go to (src/push). `address` is what the provider knows
// the device by: an Expo push token, a Web Push endpoint, a webhook URL. A push token or endpoint
// names one phone or browser, which one user at a time is signed in on: registered by another
// user, the row moves to them (devices_address_idx), so a handed-on phone stops getting the first
// user's notifications. A webhook is the user's own receiver: two users may use the same URL, each
// with a secret of their own. `secret` is the webhook's HMAC key, kept as given (a signature needs
// the key itself); `p256dh` and `auth` are the browser's Web Push encryption keys.
export const devices = pgTable('devices', {
  id: uuid('id').primaryKey(),
  owner: text('owner').notNull(),
  kind: text('kind', { enum: DEVICE_KINDS }).notNull(),
  address: text('address').notNull(),
  name: text('name'),
  p256dh: text('p256dh'),
  auth: text('auth'),
  secret: text('secret'),
  createdAt: tstz('created_at').notNull(),
  updatedAt: tstz('updated_at').notNull()
}, (t) => [
  check('devices_kind_check', sql`kind in ${sqlList(DEVICE_KINDS)}`),
  check('devices_keys_check', sql`(kind = 'webpush') = (p256dh is not null and auth is not null) and (kind = 'webhook') = (secret is not null)`),
  // every read is one user's: the list, the count against the per-user bound, a notification's fan-out
  index('devices_owner_idx').on(t.owner, t.createdAt, t.id),
  uniqueIndex('devices_address_idx').on(t.kind, t.address).where(sql`kind <> 'webhook'`),
  uniqueIndex('devices_webhook_idx').on(t.owner, t.address).where(sql`kind = 'webhook'`)
])

export type SessionRow = typeof sessions.$inferSelect
export type TransitionRow = typeof sessionTransitions.$inferSelect
export type SnapshotRow = typeof sessionSnapshots.$inferSelect
export type DeviceRow = typeof devices.$inferSelect

/**
 * The running copies of the service on this database, one row per process start. An instance is
 * live while it renews its lease: `stopped_at is null and heartbeat_at > now() - lease`, always by
 * the database's clock. Rows of instances dead for a while are deleted by the sweeps.
 */
export const serviceInstances = pgTable('service_instances', {
  id: uuid('id').primaryKey(),
  host: text('host').notNull(),
  pid: integer('pid').notNull(),
  // the MOBVIBE_DATA_DIR it runs on: its next start there takes over what this one left
  dataDir: text('data_dir').notNull(),
  // its own INSTANCE_LEASE_SECONDS: whether it is live is judged by the lease it keeps
  leaseSeconds: integer('lease_seconds').notNull(),
  startedAt: tstz('started_at').notNull().default(sql`now()`),
  heartbeatAt: tstz('heartbeat_at').notNull().default(sql`now()`),
  stoppedAt: tstz('stopped_at')
})

export type InstanceRow = typeof serviceInstances.$inferSelect
