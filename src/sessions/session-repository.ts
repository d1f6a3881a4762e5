import { and, asc, desc, eq, gt, isNull, sql, type SQL } from 'drizzle-orm'
import type { Database } from '../db/database.js'
import { prepareSql, rowMapper } from '../db/prepared-sql.js'
import {
  sessionSnapshots,
  sessionTransitions,
  sessions,
  sqlList,
  type SessionRow,
  type SnapshotRow,
  type TransitionRow
} from '../db/schema.js'
import { LIVE_STATES, TERMINAL_STATES, type Actor, type SessionState } from '../domain/state-machine.js'
import { LIVE_INSTANCE } from '../cluster/instance-repository.js'
import { HeartbeatBatcher, type HeartbeatWrite } from './heartbeat-batcher.js'

const p = sql.placeholder
const ts = (name: string) => sql`${p(name)}::timestamptz`

/** Settings a resume restores from a snapshot. */
interface RestoredSettings {
  title: string | null
  workdir: string
  model: string | null
  idleTimeoutSeconds: number
  ttlSeconds: number
  agentSessionId: string | null
}

export interface TransitionWrite {
  id: string
  /** the version the caller read: the compare-and-set fails if the row moved on */
  version: number
  from: SessionState
  to: SessionState
  actor: Actor
  reason: string | null
  now: Date
  restore?: RestoredSettings | undefined
  snapshot?: { id: string, data: unknown } | undefined
  /** undefined leaves lastError as it is; null clears it */
  lastError?: string | null | undefined
  archive?: boolean | undefined
  /** the instance that runs the agent from here: required for a move to `active`, which claims the session */
  worker: string | null
  /** `fenceKey` of the claim the write belongs to: refused if another claim replaced it */
  fence?: string | undefined
}

export interface SettingsWrite {
  id: string
  version: number
  now: Date
  title?: string | null | undefined
  idleTimeoutSeconds?: number | undefined
  ttlSeconds?: number | undefined
  /** undefined leaves each as it is; null sets it back to the service's default */
  permissionMode?: string | null | undefined
  model?: string | null | undefined
  permissionTimeoutSeconds?: number | null | undefined
}

export interface TurnUsage {
  inputTokens: number
  outputTokens: number
  cacheReadTokens: number
  cacheCreationTokens: number
  /** the CLI's cumulative cost of the current conversation */
  totalCostUsd: number
  at: Date
}

export interface SweepHit {
  id: string
  from: SessionState
  version: number
}

/** A new session: always `pending` at version 1, created by its user. */
export interface NewSession {
  id: string
  owner: string
  title: string | null
  workdir: string
  model: string | null
  permissionMode: string | null
  permissionTimeoutSeconds: number | null
  idleTimeoutSeconds: number
  ttlSeconds: number
  expiresAt: Date
  createdAt: Date
}

export interface SessionCursor {
  createdAt: Date
  id: string
}

const LIVE = sqlList(LIVE_STATES)
/** advisory lock (class, part) of the sweeps of nobody's sessions: one instance per tick and part */
const SWEEP_LOCK = 0x6d76
const ORPHAN_LOCK_PART = 1000
/** the writes of an agent: only while its claim (`fence`, see fenceKey) is the session's */
const OWNED = sql`worker_id::text || ':' || worker_epoch = ${sql.placeholder('fence')}::text`
const TERMINAL = sqlList(TERMINAL_STATES)

/**
 * The uuid space cut into `n` contiguous ranges. A sweep of many sessions is CPU-bound in Postgres;
 * one statement per range on separate connections lets it use more than one core.
 */
export function uuidRanges (n: number): [string, string][] {
  const toUuid = (v: bigint) => {
    const hex = v.toString(16).padStart(32, '0')
    return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`
  }
  const max = (1n << 128n) - 1n
  const step = (max + 1n) / BigInt(n)
  return Array.from({ length: n }, (_, i) => [toUuid(step * BigInt(i)), toUuid(i === n - 1 ? max : step * BigInt(i + 1) - 1n)])
}

export interface SessionRepositoryOptions {
  /** sweeps run as this many id ranges side by side (1 on PGlite: it has one connection) */
  sweepPartitions?: number
  /** heartbeat statements running at once, per coalescing fraction (1 on PGlite); unbounded by default */
  heartbeatStatementsInFlight?: number
}

export function createSessionRepository (db: Database, opts: SessionRepositoryOptions = {}) {
  const toSession = rowMapper(sessions)
  const notDeleted = isNull(sessions.deletedAt)

  // The new row and its first history row in one statement: no transaction to leave open (or to
  // lose mid-way) when the connection drops
  const insertStmt = prepareSql(db, 'session_insert', sql`
    with created as (
      insert into sessions (id, owner, state, version, title, workdir, model, permission_mode, permission_timeout_seconds,
        idle_timeout_seconds, ttl_seconds, expires_at, state_changed_at, created_at, updated_at)
      values (${p('id')}::uuid, ${p('owner')}::text, 'pending', 1, ${p('title')}::text, ${p('workdir')}::text, ${p('model')}::text,
        ${p('mode')}::text, ${p('ptimeout')}::int,
        ${p('idle')}::int, ${p('ttl')}::int, ${ts('expires')}, ${ts('now')}, ${ts('now')}, ${ts('now')})
      returning *
    ), logged as (
      insert into session_transitions (session_id, from_state, to_state, reason, actor, version, at)
      select id, null, state, 'created', 'user', version, created_at from created
    )
    select * from created`)

  const byId = db.select().from(sessions)
    .where(and(eq(sessions.id, p('id')), notDeleted))
    .prepare('session_by_id')

  // deleted sessions included: the owner of an id never changes, so it may be remembered
  const ownerStmt = db.select({ owner: sessions.owner }).from(sessions)
    .where(eq(sessions.id, p('id')))
    .prepare('session_owner')

  // One statement: the compare-and-set, its history row and (for a pause) the snapshot commit or
  // fail together, in one round trip.
  const transitionStmt = prepareSql(db, 'session_transition', sql`
    with moved as (
      update sessions set
        previous_state = state,
        state = ${p('to')}::text,
        version = version + 1,
        transition_count = transition_count + 1,
        state_changed_at = ${ts('now')},
        updated_at = ${ts('now')},
        active_ms = active_ms + case when state = 'active' and active_since is not null
          then greatest(0, floor(extract(epoch from (${ts('now')} - active_since)) * 1000))::bigint else 0 end,
        active_since = case when ${p('to')}::text = 'active' then ${ts('now')} end,
        started_at = case when ${p('to')}::text = 'active' then coalesce(started_at, ${ts('now')}) else started_at end,
        ended_at = case when ${p('to')}::text in ${TERMINAL} then ${ts('now')} else ended_at end,
        busy = false,
        idle_deadline_at = case when ${p('to')}::text = 'active'
          then ${ts('now')} + make_interval(secs => coalesce(${p('rIdle')}::int, idle_timeout_seconds)) end,
        expires_at = case when ${p('actor')}::text = 'user' and ${p('to')}::text not in ${TERMINAL}
          then greatest(expires_at, ${ts('now')} + make_interval(secs => coalesce(${p('rTtl')}::int, ttl_seconds)))
          else expires_at end,
        title = case when ${p('restore')}::boolean then ${p('rTitle')}::text else title end,
        workdir = case when ${p('restore')}::boolean then ${p('rWorkdir')}::text else workdir end,
        model = case when ${p('restore')}::boolean then ${p('rModel')}::text else model end,
        idle_timeout_seconds = coalesce(${p('rIdle')}::int, idle_timeout_seconds),
        ttl_seconds = coalesce(${p('rTtl')}::int, ttl_seconds),
        agent_session_id = case when ${p('restore')}::boolean then ${p('rAgent')}::uuid else agent_session_id end,
        last_error = case when ${p('setError')}::boolean then ${p('lastError')}::text else last_error end,
        deleted_at = case when ${p('archive')}::boolean then ${ts('now')} else deleted_at end,
        -- a move to active claims the session for the instance that made it (a new epoch fences
        -- the writes of any earlier claim). Any other move keeps the claim as it is: the agent
        -- that leaves still writes its last lines (an interrupted turn's result), until a new claim
        worker_id = case when ${p('to')}::text = 'active' then ${p('worker')}::uuid else worker_id end,
        worker_epoch = case when ${p('to')}::text = 'active' then worker_epoch + 1 else worker_epoch end
      where id = ${p('id')}::uuid and version = ${p('version')}::int and deleted_at is null
        and (${p('fence')}::text is null or worker_id::text || ':' || worker_epoch = ${p('fence')}::text)
        -- only an instance whose lease holds may claim
        and (${p('to')}::text <> 'active' or exists (select 1 from service_instances i where i.id = ${p('worker')}::uuid and ${LIVE_INSTANCE}))
      returning *
    ), logged as (
      insert into session_transitions (session_id, from_state, to_state, reason, actor, version, at)
      select id, ${p('from')}::text, state, ${p('reason')}::text, ${p('actor')}::text, version, state_changed_at from moved
    ), snap as (
      insert into session_snapshots (id, session_id, version, data, created_at)
      select ${p('snapshotId')}::uuid, id, ${p('version')}::int, ${p('snapshotData')}::jsonb, ${ts('now')}
      from moved where ${p('snapshotId')}::uuid is not null
    )
    select * from moved`)

  // One round trip: the deadline moves to now + TTL only when that gains at least `fraction` of
  // the TTL (never earlier), and only on the version the client named, if it named one
  const heartbeatStmt = prepareSql(db, 'session_heartbeat', sql`
    update sessions s set
      last_heartbeat_at = ${ts('now')},
      expires_at = ${ts('now')} + make_interval(secs => s.ttl_seconds)
    from jsonb_to_recordset(${p('batch')}::jsonb) as r(id uuid, v int[])
    where s.id = r.id and s.deleted_at is null and s.state in ${LIVE}
      and (r.v is null or s.version = any(r.v))
      and s.expires_at < ${ts('now')} + make_interval(secs => s.ttl_seconds)
      and s.expires_at <= ${ts('now')} + make_interval(secs => s.ttl_seconds * (1 - ${p('fraction')}::float8))
    returning s.id, s.state, s.version, s.expires_at, s.ttl_seconds`)

  const heartbeats = (fraction: number) => new HeartbeatBatcher(async ({ now, items }) => {
    const rows = await heartbeatStmt.execute({ now: now.toISOString(), fraction, batch: JSON.stringify(items) })
    return rows.map((row) => ({
      id: String(row.id),
      state: row.state as SessionState,
      version: Number(row.version),
      expiresAt: sessions.expiresAt.mapFromDriverValue(row.expires_at as string) as Date,
      ttlSeconds: Number(row.ttl_seconds)
    }))
  }, { maxInFlight: opts.heartbeatStatementsInFlight ?? Infinity })
  const batchers = new Map<number, HeartbeatBatcher>()

  const latestSnapshotStmt = db.select().from(sessionSnapshots)
    .where(eq(sessionSnapshots.sessionId, p('id')))
    .orderBy(desc(sessionSnapshots.createdAt), desc(sessionSnapshots.id))
    .limit(1)
    .prepare('session_latest_snapshot')
  const snapshotByIdStmt = db.select().from(sessionSnapshots)
    .where(and(eq(sessionSnapshots.sessionId, p('id')), eq(sessionSnapshots.id, p('snapshotId'))))
    .prepare('session_snapshot_by_id')

  const settingsStmt = prepareSql(db, 'session_settings', sql`
    update sessions set
      version = version + 1,
      updated_at = ${ts('now')},
      title = case when ${p('setTitle')}::boolean then ${p('title')}::text else title end,
      permission_mode = case when ${p('setMode')}::boolean then ${p('mode')}::text else permission_mode end,
      model = case when ${p('setModel')}::boolean then ${p('model')}::text else model end,
      permission_timeout_seconds = case when ${p('setPTimeout')}::boolean then ${p('ptimeout')}::int else permission_timeout_seconds end,
      idle_timeout_seconds = coalesce(${p('idle')}::int, idle_timeout_seconds),
      -- activity is not versioned, so deadlines that depend on it are computed here, atomically
      idle_deadline_at = case when state = 'active' and not busy
        then greatest(active_since, last_activity_at) + make_interval(secs => coalesce(${p('idle')}::int, idle_timeout_seconds))
        else idle_deadline_at end,
      ttl_seconds = coalesce(${p('ttl')}::int, ttl_seconds),
      expires_at = case when ${p('ttl')}::int is not null
        -- the PATCH is itself a sign of life: without it, lowering the TTL of a session kept alive
        -- only by user requests could expire it on the spot
        then greatest(created_at, last_heartbeat_at, last_activity_at, ${ts('now')}) + make_interval(secs => ${p('ttl')}::int)
        else expires_at end
    where id = ${p('id')}::uuid and version = ${p('version')}::int and deleted_at is null
      and state not in ${TERMINAL}
    returning *`)

  const archiveTerminalStmt = prepareSql(db, 'session_archive', sql`
    update sessions set deleted_at = ${ts('now')}, updated_at = ${ts('now')}, version = version + 1
    where id = ${p('id')}::uuid and version = ${p('version')}::int and deleted_at is null
    returning *`)

  // The session's totals and the day's row of session_usage_daily in one statement: no extra round
  // trip on the agent's path, and no transaction. The day's cost is the same increment the session
  // gets, computed once from the conversation's figure as locked here (RETURNING sees only new values)
  const usageStmt = prepareSql(db, 'session_turn_usage', sql`
    with cur as (
      select id, greatest(0, coalesce(${p('cost')}::float8, 0) - conversation_cost_usd) as cost_delta
      from sessions where id = ${p('id')}::uuid and ${OWNED}
      for update
    ), moved as (
      update sessions s set
        input_tokens = input_tokens + ${p('input')}::bigint,
        output_tokens = output_tokens + ${p('output')}::bigint,
        cache_read_tokens = cache_read_tokens + ${p('cacheRead')}::bigint,
        cache_creation_tokens = cache_creation_tokens + ${p('cacheCreation')}::bigint,
        -- total_cost_usd is cumulative within a conversation and never shrinks: a lower or missing
        -- figure (a failed resume reports 0) must not take back what was counted
        cost_usd = cost_usd + cur.cost_delta,
        conversation_cost_usd = greatest(conversation_cost_usd, coalesce(${p('cost')}::float8, 0)),
        turns = turns + 1,
        last_activity_at = greatest(last_activity_at, ${ts('at')}),
        expires_at = case when state in ${LIVE}
          then greatest(expires_at, ${ts('at')} + make_interval(secs => ttl_seconds)) else expires_at end,
        -- the turn is over: the idle timer starts now
        busy = false,
        idle_deadline_at = case when state = 'active'
          then ${ts('at')} + make_interval(secs => idle_timeout_seconds) end
      from cur
      where s.id = cur.id
      returning s.*, cur.cost_delta
    ), daily as (
      -- the turn's usage on the UTC day it was reported
      insert into session_usage_daily as d (session_id, owner, day, input_tokens, output_tokens,
        cache_read_tokens, cache_creation_tokens, cost_usd, turns)
      select id, owner, (${ts('at')} at time zone 'UTC')::date, ${p('input')}::bigint, ${p('output')}::bigint,
        ${p('cacheRead')}::bigint, ${p('cacheCreation')}::bigint, cost_delta, 1
      from moved
      on conflict (session_id, day) do update set
        owner = excluded.owner,
        input_tokens = d.input_tokens + excluded.input_tokens,
        output_tokens = d.output_tokens + excluded.output_tokens,
        cache_read_tokens = d.cache_read_tokens + excluded.cache_read_tokens,
        cache_creation_tokens = d.cache_creation_tokens + excluded.cache_creation_tokens,
        cost_usd = d.cost_usd + excluded.cost_usd,
        turns = d.turns + excluded.turns
    )
    select * from moved`)

  // A turn starts: the session is busy (never idle-suspended) and the message counts as activity.
  // Only an active session can be claimed; anything else means the state moved on.
  const claimStmt = prepareSql(db, 'session_claim_busy', sql`
    update sessions set
      busy = true,
      idle_deadline_at = null,
      last_activity_at = greatest(last_activity_at, ${ts('at')}),
      expires_at = greatest(expires_at, ${ts('at')} + make_interval(secs => ttl_seconds))
    where id = ${p('id')}::uuid and state = 'active' and deleted_at is null and ${OWNED}
    returning id`)

  const releaseStmt = prepareSql(db, 'session_release_busy', sql`
    update sessions set
      busy = false,
      idle_deadline_at = case when state = 'active'
        then greatest(active_since, last_activity_at, ${ts('at')}) + make_interval(secs => idle_timeout_seconds) end
    where id = ${p('id')}::uuid and busy and ${OWNED}
    returning id`)

  const activityStmt = prepareSql(db, 'session_activity', sql`
    update sessions set
      last_activity_at = greatest(last_activity_at, ${ts('at')}),
      expires_at = case when state in ${LIVE}
        then greatest(expires_at, ${ts('at')} + make_interval(secs => ttl_seconds)) else expires_at end
    where id = ${p('id')}::uuid`)

  // An agent process may start only where no other instance still runs one of the session (it is
  // stopping after the session left it, or its instance is dead: its agents died with it)
  const agentStartStmt = prepareSql(db, 'session_agent_start', sql`
    with cur as (
      select id, agent_worker from sessions where id = ${p('id')}::uuid and ${OWNED} for update
    ), moved as (
      update sessions s set agent_worker = ${p('me')}::uuid
      from cur
      where s.id = cur.id and (cur.agent_worker is null or cur.agent_worker = ${p('me')}::uuid
        or not exists (select 1 from service_instances i where i.id = cur.agent_worker and ${LIVE_INSTANCE}))
        -- and only while this instance's own lease holds
        and exists (select 1 from service_instances i where i.id = ${p('me')}::uuid and ${LIVE_INSTANCE})
      returning s.id
    )
    select cur.agent_worker as other, exists (select 1 from moved) as started from cur`)
  const agentGoneStmt = prepareSql(db, 'session_agent_gone', sql`
    update sessions set agent_worker = null where id = ${p('id')}::uuid and agent_worker = ${p('me')}::uuid`)
  // what says an agent runs on this instance where none does (an end whose write was lost)
  const agentsGoneStmt = prepareSql(db, 'session_agents_gone', sql`
    update sessions set agent_worker = null
    where agent_worker = ${p('me')}::uuid and not (id = any(${p('running')}::uuid[]))`)
  // the sessions an instance owns, with whether their queue holds a message the agent has not taken up
  const ownedStmt = prepareSql(db, 'sessions_owned', sql`
    select s.id, s.worker_epoch, (not s.busy and exists (
      select 1 from session_events e
      where e.session_id = s.id and e.type = 'user' and e.seq > coalesce(q.delivered_seq, 0)
    )) as queued
    from sessions s left join session_event_seqs q on q.session_id = s.id
    where s.worker_id = ${p('me')}::uuid and s.state = 'active' and s.deleted_at is null`)

  const newConversationStmt = prepareSql(db, 'session_new_conversation', sql`
    update sessions set agent_session_id = null, conversation_cost_usd = 0, last_error = null
    where id = ${p('id')}::uuid`)

  // Set-based sweeps: one statement however many sessions are due. A concurrent sweep (another
  // instance) blocks on a row and re-checks it, so no session is acted on twice.
  const sweep = (name: string, due: SQL, to: SessionState, reason: string) => prepareSql(db, name, sql`
    with moved as (
      update sessions set
        previous_state = state,
        state = ${sql.raw(`'${to}'`)},
        version = version + 1,
        transition_count = transition_count + 1,
        state_changed_at = ${ts('now')},
        updated_at = ${ts('now')},
        ended_at = ${to === 'expired' ? ts('now') : sql`ended_at`},
        active_ms = active_ms + case when state = 'active' and active_since is not null
          then greatest(0, floor(extract(epoch from (${ts('now')} - active_since)) * 1000))::bigint else 0 end,
        active_since = null,
        busy = false,
        idle_deadline_at = null
      where ${due}
      returning id, previous_state as from_state, version
    ), logged as (
      insert into session_transitions (session_id, from_state, to_state, reason, actor, version, at)
      select id, from_state, ${sql.raw(`'${to}'`)}, ${sql.raw(`'${reason}'`)}, 'system', version, ${ts('now')} from moved
    )
    select id, from_state, version from moved`)

  // Each instance sweeps the active sessions it owns (their agents are its own to stop); what is
  // nobody's (sessions without an agent, and those of dead instances) is swept once per tick by
  // whichever instance takes the tick's advisory lock first: the others skip the statement
  // instead of queueing behind its row locks. Each sweep of nobody's covers one range of ids:
  // ranges run side by side on separate connections, each with its own lock.
  const inRange = sql`id between ${p('lo')}::uuid and ${p('hi')}::uuid`
  const mine = sql`worker_id = ${p('me')}::uuid`
  const once = sql`(select pg_try_advisory_xact_lock(${SWEEP_LOCK}, ${p('part')}::int))`
  const expireOwnStmt = sweep('sessions_expire_own',
    sql`state = 'active' and ${mine} and expires_at <= ${ts('now')}`, 'expired', 'ttl')
  const expireUnownedStmt = sweep('sessions_expire_unowned',
    sql`state in ${LIVE} and state <> 'active' and expires_at <= ${ts('now')} and ${inRange} and ${once}`, 'expired', 'ttl')
  const idleStmt = sweep('sessions_suspend_idle',
    sql`state = 'active' and ${mine} and idle_deadline_at <= ${ts('now')} and not busy`, 'suspended', 'idle')
  // the sessions of instances whose lease ran out (their agents died with them, or by their watchdog)
  const orphanStmt = sweep('sessions_suspend_orphans',
    sql`state = 'active' and worker_id in (select i.id from service_instances i where not (${LIVE_INSTANCE})) and ${once}`, 'suspended', 'worker lost')
  const ranges = uuidRanges(opts.sweepPartitions ?? 1)
  // Start-up: what this instance's previous run on the same data directory left active (nothing
  // of it runs any more), and what says active without an owner (written before instances had
  // rows, or by a run that crashed between)
  const takeOverStmt = sweep('sessions_take_over',
    sql`state = 'active' and (worker_id = any(${p('ids')}::uuid[]) or worker_id is null)`, 'suspended', 'restart')
  // Shutdown: this instance's sessions are handed back at once, not after its lease
  const handBackStmt = sweep('sessions_hand_back', sql`state = 'active' and ${mine}`, 'suspended', 'shutdown')

  const listStmts = new Map<string, { execute: (v: Record<string, unknown>) => Promise<SessionRow[]> }>()
  function listStmt (withStates: boolean, withCursor: boolean, liveOnly: boolean, waiting: boolean) {
    const key = `${withStates}:${withCursor}:${liveOnly}:${waiting}`
    let stmt = listStmts.get(key)
    if (!stmt) {
      const conditions: SQL[] = [sql`${sessions.owner} = ${p('owner')}::text`, sql`${sessions.deletedAt} is null`]
      if (withStates) conditions.push(sql`${sessions.state} = any(${p('states')}::text[])`)
      // spelled as in the partial index's predicate, so the planner can use sessions_live_list_idx
      if (liveOnly) conditions.push(sql`state in ${LIVE}`)
      // "waiting for me": an agent asks something; the owner's index narrows it to one user's rows
      if (waiting) conditions.push(sql`${sessions.pendingPermissions} > 0`)
      if (withCursor) conditions.push(sql`(${sessions.createdAt}, ${sessions.id}) < (${ts('cAt')}, ${p('cId')}::uuid)`)
      stmt = db.select().from(sessions)
        .where(and(...conditions))
        .orderBy(desc(sessions.createdAt), desc(sessions.id))
        .limit(p('limit'))
        .prepare(`sessions_list_${withStates ? 's' : ''}${withCursor ? 'c' : ''}${liveOnly ? 'l' : ''}${waiting ? 'w' : ''}`)
      listStmts.set(key, stmt)
    }
    return stmt
  }

  const historyStmt = db.select().from(sessionTransitions)
    .where(and(eq(sessionTransitions.sessionId, p('id')), gt(sessionTransitions.version, p('after'))))
    .orderBy(asc(sessionTransitions.version))
    .limit(p('limit'))
    .prepare('session_history')

  const sweepHits = (rows: Record<string, unknown>[]): SweepHit[] =>
    rows.map((r) => ({ id: String(r.id), from: r.from_state as SessionState, version: Number(r.version) }))

  return {
    async insert (row: NewSession): Promise<SessionRow> {
      const [created] = await insertStmt.execute({
        id: row.id,
        owner: row.owner,
        title: row.title,
        workdir: row.workdir,
        model: row.model,
        mode: row.permissionMode,
        ptimeout: row.permissionTimeoutSeconds,
        idle: row.idleTimeoutSeconds,
        ttl: row.ttlSeconds,
        expires: row.expiresAt.toISOString(),
        now: row.createdAt.toISOString()
      })
      return toSession(created!)
    },

    async findById (id: string): Promise<SessionRow | null> {
      const [row] = await byId.execute({ id })
      return row ?? null
    },

    /** The session's owner; null for one created before users existed, undefined for no such id. */
    async ownerOf (id: string): Promise<string | null | undefined> {
      const [row] = await ownerStmt.execute({ id })
      return row === undefined ? undefined : row.owner
    },

    /** Gives every session without an owner to `owner`; returns how many. */
    async adoptUnowned (owner: string): Promise<number> {
      const rows = await db.update(sessions).set({ owner }).where(isNull(sessions.owner)).returning({ id: sessions.id })
      return rows.length
    },

    /** The compare-and-set: null when the version moved on (someone else won). */
    async transition (w: TransitionWrite): Promise<SessionRow | null> {
      const r = w.restore
      const rows = await transitionStmt.execute({
        id: w.id,
        version: w.version,
        from: w.from,
        to: w.to,
        actor: w.actor,
        reason: w.reason,
        now: w.now.toISOString(),
        restore: r !== undefined,
        rTitle: r?.title ?? null,
        rWorkdir: r?.workdir ?? null,
        rModel: r?.model ?? null,
        rIdle: r?.idleTimeoutSeconds ?? null,
        rTtl: r?.ttlSeconds ?? null,
        rAgent: r?.agentSessionId ?? null,
        setError: w.lastError !== undefined,
        lastError: w.lastError ?? null,
        archive: w.archive === true,
        snapshotId: w.snapshot?.id ?? null,
        worker: w.worker,
        fence: w.fence ?? null,
        snapshotData: w.snapshot ? JSON.stringify(w.snapshot.data) : null
      })
      return rows[0] ? toSession(rows[0]) : null
    },

    async updateSettings (w: SettingsWrite): Promise<SessionRow | null> {
      const rows = await settingsStmt.execute({
        id: w.id,
        version: w.version,
        now: w.now.toISOString(),
        setTitle: w.title !== undefined,
        title: w.title ?? null,
        idle: w.idleTimeoutSeconds ?? null,
        ttl: w.ttlSeconds ?? null,
        setMode: w.permissionMode !== undefined,
        mode: w.permissionMode ?? null,
        setModel: w.model !== undefined,
        model: w.model ?? null,
        setPTimeout: w.permissionTimeoutSeconds !== undefined,
        ptimeout: w.permissionTimeoutSeconds ?? null
      })
      return rows[0] ? toSession(rows[0]) : null
    },

    async archiveTerminal (w: { id: string, version: number, now: Date }): Promise<SessionRow | null> {
      const rows = await archiveTerminalStmt.execute({ id: w.id, version: w.version, now: w.now.toISOString() })
      return rows[0] ? toSession(rows[0]) : null
    },

    /**
     * Liveness only: no version bump, the deadline never moves earlier, small moves write nothing.
     * Null when nothing was written (coalesced, version mismatch, terminal, or unknown).
     */
    async heartbeat (w: { id: string, now: Date, fraction: number, versions: number[] | null }): Promise<HeartbeatWrite | null> {
      let batcher = batchers.get(w.fraction)
      if (!batcher) {
        batcher = heartbeats(w.fraction)
        batchers.set(w.fraction, batcher)
      }
      return batcher.write({ id: w.id, now: w.now, versions: w.versions })
    },

    /** A finished turn: adds its usage, counts as activity, ends busy. Called by the agent supervisor. */
    async addTurnUsage (id: string, u: TurnUsage, fence: string): Promise<SessionRow | null> {
      const rows = await usageStmt.execute({
        id,
        fence,
        input: u.inputTokens,
        output: u.outputTokens,
        cacheRead: u.cacheReadTokens,
        cacheCreation: u.cacheCreationTokens,
        cost: u.totalCostUsd,
        at: u.at.toISOString()
      })
      return rows[0] ? toSession(rows[0]) : null
    },

    /** A turn starts; false when the session is no longer active. */
    async claimBusy (id: string, at: Date, fence: string): Promise<boolean> {
      return (await claimStmt.execute({ id, at: at.toISOString(), fence })).length > 0
    },

    /** A turn ended without a result (crash, failed start): busy off, the idle timer runs again. */
    async releaseBusy (id: string, at: Date, fence: string): Promise<void> {
      await releaseStmt.execute({ id, at: at.toISOString(), fence })
    },

    async recordActivity (id: string, at: Date): Promise<void> {
      await activityStmt.execute({ id, at: at.toISOString() })
    },

    /**
     * The agent of claim `fence` may start on instance `me`: true once recorded; false while an
     * agent of the session still runs on another live instance (`other`), or when the claim is gone.
     */
    async agentStart (id: string, me: string, fence: string): Promise<{ started: boolean, other: string | null }> {
      const [row] = await agentStartStmt.execute({ id, me, fence })
      return { started: row?.started === true, other: row?.other == null ? null : String(row.other) }
    },

    async agentGone (id: string, me: string): Promise<void> {
      await agentGoneStmt.execute({ id, me })
    },

    /** Clears what says an agent runs on instance `me`, except in the sessions whose agents do (`running`). */
    async agentsGoneExcept (me: string, running: string[]): Promise<void> {
      await agentsGoneStmt.execute({ me, running })
    },

    async ownedBy (me: string): Promise<{ id: string, epoch: number, queued: boolean }[]> {
      const rows = await ownedStmt.execute({ me })
      return rows.map((r) => ({ id: String(r.id), epoch: Number(r.worker_epoch), queued: r.queued === true }))
    },

    /** Forget the conversation: the next start is a fresh one, its cost counted anew. */
    async startNewConversation (id: string): Promise<void> {
      await newConversationStmt.execute({ id })
    },

    /** Start-up: suspends what the given (dead) instances left active, and what has no owner. */
    async takeOver (instanceIds: string[], now: Date): Promise<SweepHit[]> {
      return sweepHits(await takeOverStmt.execute({ now: now.toISOString(), ids: instanceIds }))
    },

    /** Shutdown: suspends every active session of instance `me`. */
    async handBack (me: string, now: Date): Promise<SweepHit[]> {
      return sweepHits(await handBackStmt.execute({ now: now.toISOString(), me }))
    },

    /** Expires the sessions past their deadline: `me`'s active ones, and nobody's (unless another instance does it this tick). */
    async expireDue (now: Date, me: string | null): Promise<SweepHit[]> {
      const at = now.toISOString()
      const parts = await Promise.all([
        ...(me === null ? [] : [expireOwnStmt.execute({ now: at, me })]),
        ...ranges.map(([lo, hi], part) => expireUnownedStmt.execute({ now: at, lo, hi, part }))
      ])
      return parts.flatMap(sweepHits)
    },

    async suspendIdle (now: Date, me: string): Promise<SweepHit[]> {
      return sweepHits(await idleStmt.execute({ now: now.toISOString(), me }))
    },

    /** Suspends the active sessions of dead instances (unless another instance does it this tick). */
    async suspendOrphans (now: Date): Promise<SweepHit[]> {
      return sweepHits(await orphanStmt.execute({ now: now.toISOString(), part: ORPHAN_LOCK_PART }))
    },

    async list (q: { owner: string, states?: SessionState[] | undefined, waiting?: boolean | undefined, cursor?: SessionCursor | undefined, limit: number }): Promise<SessionRow[]> {
      const withStates = q.states !== undefined && q.states.length > 0
      const liveOnly = withStates && q.states!.every((s) => (LIVE_STATES as readonly SessionState[]).includes(s))
      return listStmt(withStates, q.cursor !== undefined, liveOnly, q.waiting === true).execute({
        owner: q.owner,
        limit: q.limit,
        ...(withStates ? { states: q.states } : {}),
        ...(q.cursor ? { cAt: q.cursor.createdAt.toISOString(), cId: q.cursor.id } : {})
      })
    },

    async history (id: string, after: number, limit: number): Promise<TransitionRow[]> {
      return historyStmt.execute({ id, after, limit })
    },

    async snapshots (sessionId: string): Promise<SnapshotRow[]> {
      return db.select().from(sessionSnapshots)
        .where(eq(sessionSnapshots.sessionId, sessionId))
        .orderBy(desc(sessionSnapshots.createdAt), desc(sessionSnapshots.id))
    },

    async findSnapshot (sessionId: string, snapshotId?: string): Promise<SnapshotRow | null> {
      const [row] = snapshotId
        ? await snapshotByIdStmt.execute({ id: sessionId, snapshotId })
        : await latestSnapshotStmt.execute({ id: sessionId })
      return row ?? null
    }
  }
}

export type SessionRepository = ReturnType<typeof createSessionRepository>
