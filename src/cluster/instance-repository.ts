import { sql } from 'drizzle-orm'
import type { Database } from '../db/database.js'
import { prepareSql } from '../db/prepared-sql.js'

const p = sql.placeholder

/** A live instance, as the database's clock judges it. */
export const LIVE_INSTANCE = sql`i.stopped_at is null and i.heartbeat_at > now() - make_interval(secs => i.lease_seconds)`

/** Dead instances' rows are kept this long (they say who owned what), then deleted. */
const KEEP_DEAD_ROWS = '1 hour'

/** The rows of `service_instances`: one per process start, renewed while it runs. */
export function createInstanceRepository (db: Database) {
  const registerStmt = prepareSql(db, 'instance_register', sql`
    insert into service_instances (id, host, pid, data_dir, lease_seconds)
    values (${p('id')}::uuid, ${p('host')}::text, ${p('pid')}::int, ${p('dataDir')}::text, ${p('lease')}::int)`)
  // a lease that ran out is not revived: peers may act on it already
  const renewStmt = prepareSql(db, 'instance_renew', sql`
    update service_instances i set heartbeat_at = now()
    where i.id = ${p('id')}::uuid and ${LIVE_INSTANCE}
    returning i.id`)
  // alone on the database, nobody acts on it: only a stop ends it
  const renewAloneStmt = prepareSql(db, 'instance_renew_alone', sql`
    update service_instances set heartbeat_at = now()
    where id = ${p('id')}::uuid and stopped_at is null
    returning id`)
  const stopStmt = prepareSql(db, 'instance_stop', sql`
    update service_instances set stopped_at = now() where id = ${p('id')}::uuid and stopped_at is null`)
  // dead is dead for good: a frozen instance that comes back finds its row stopped, and owns nothing
  const markDeadStmt = prepareSql(db, 'instance_mark_dead', sql`
    update service_instances i set stopped_at = now()
    where i.stopped_at is null and i.heartbeat_at <= now() - make_interval(secs => i.lease_seconds)
    returning id`)
  const peerStmt = prepareSql(db, 'instance_live_peer', sql`
    select i.id from service_instances i where i.id <> ${p('id')}::uuid and ${LIVE_INSTANCE} order by random() limit 1`)
  const liveStmt = prepareSql(db, 'instance_live', sql`
    select 1 from service_instances i where i.id = ${p('id')}::uuid and ${LIVE_INSTANCE}`)
  // a row a session still names is kept: it says that session's owner is dead
  const pruneStmt = prepareSql(db, 'instance_prune', sql`
    delete from service_instances i where i.stopped_at < now() - interval '${sql.raw(KEEP_DEAD_ROWS)}'
      and not exists (select 1 from sessions s where s.worker_id = i.id or s.agent_worker = i.id)`)
  const stopOthersStmt = prepareSql(db, 'instance_stop_others', sql`
    with stopped as (
      update service_instances set stopped_at = coalesce(stopped_at, now()) where id <> ${p('id')}::uuid returning id
    )
    select id from stopped`)

  // A listener that stopped reading (its process frozen, or its host gone while the connection
  // stays open) holds the server's notice queue, which every notifying commit then fills. Once
  // the queue is filling, such connections of this service's role (blocked writing to their
  // client at two looks in a row: a busy listener catching up may be caught once) are cut: a live
  // instance reconnects, and catches up from the tables.
  const cutStuckListenersStmt = prepareSql(db, 'instance_cut_stuck_listeners', sql`
    with q as (select pg_notification_queue_usage() as usage), stuck as (
      select a.pid from pg_stat_activity a, q
      where a.application_name = 'mobvibe-listen' and a.datname = current_database() and a.usename = current_user
        and a.wait_event = 'ClientWrite' and q.usage >= ${p('above')}::float8
    )
    select q.usage,
      (select count(*) filter (where pg_terminate_backend(s.pid)) from stuck s where s.pid = any(${p('suspects')}::int[]))::int as cut,
      (select coalesce(array_agg(s.pid), '{}') from stuck s where not (s.pid = any(${p('suspects')}::int[]))) as suspects
    from q`)

  return {
    async register (r: { id: string, host: string, pid: number, dataDir: string, leaseSeconds: number }): Promise<void> {
      await registerStmt.execute({ id: r.id, host: r.host, pid: r.pid, dataDir: r.dataDir, lease: r.leaseSeconds })
    },
    /** false: the row was stopped (by a peer that judged it dead, or a successor), or its lease ran out meanwhile */
    async renew (id: string, alone = false): Promise<boolean> {
      return (await (alone ? renewAloneStmt : renewStmt).execute({ id })).length > 0
    },
    async stop (id: string): Promise<void> {
      await stopStmt.execute({ id })
    },
    /** Stops the rows of every instance whose lease ran out; returns their ids. */
    async markDead (): Promise<string[]> {
      return (await markDeadStmt.execute({})).map((r) => String(r.id))
    },
    /** Another live instance, at random; null when this one is alone. */
    async livePeer (me: string): Promise<string | null> {
      const [row] = await peerStmt.execute({ id: me })
      return row ? String(row.id) : null
    },
    async isLive (id: string): Promise<boolean> {
      return (await liveStmt.execute({ id })).length > 0
    },
    async prune (): Promise<void> {
      await pruneStmt.execute({})
    },
    /**
     * The share of the server's notice queue in use (0–1); when it is at least `above`, the listen
     * connections among `suspects` (the last look's) still blocked writing are cut, and the ones
     * blocked for the first time are the next look's suspects.
     */
    async cutStuckListeners (above: number, suspects: number[]): Promise<{ usage: number, cut: number, suspects: number[] }> {
      const [row] = await cutStuckListenersStmt.execute({ above, suspects })
      return { usage: Number(row?.usage ?? 0), cut: Number(row?.cut ?? 0), suspects: ((row?.suspects ?? []) as unknown[]).map(Number) }
    },
    /**
     * Every other instance is stopped (the embedded database has one instance by construction,
     * so anything else in it is a previous run); returns their ids.
     */
    async stopOthers (me: string): Promise<string[]> {
      return (await stopOthersStmt.execute({ id: me })).map((r) => String(r.id))
    }
  }
}

export type InstanceRepository = ReturnType<typeof createInstanceRepository>
