import { PGlite } from '@electric-sql/pglite'
import { randomUUID } from 'node:crypto'
import { rmSync } from 'node:fs'
const dir = '/tmp/mb/pgdata3'
rmSync(dir, { recursive: true, force: true })
const db = await PGlite.create(dir)
await db.exec(`create table sessions (id uuid primary key);
create table session_event_seqs (session_id uuid primary key, last_seq bigint not null);
create table session_events (session_id uuid not null, seq bigint not null, type text not null, payload json not null, at timestamptz not null, client_message_id text, primary key (session_id, seq));
create unique index ce on session_events (session_id, client_message_id) where client_message_id is not null;`)
const sids = Array.from({ length: 4 }, () => randomUUID())
for (const s of sids) await db.query('insert into sessions values ($1)', [s])
const line = JSON.stringify({ type: 'assistant', message: { content: [{ type: 'text', text: 'x'.repeat(900) + '"quoted"' }] }, session_id: sids[0] })
const N = 1000
const newSql = `with runs as (
  select r.sid::uuid as sid, r.n::int as n, r.ord::int as run from rows from (string_to_table($1::text, ','), string_to_table($2::text, ',')) with ordinality as r(sid, n, ord)
), alloc as (
  insert into session_event_seqs as q (session_id, last_seq) select r.sid, r.n from runs r where exists (select 1 from sessions s where s.id = r.sid)
  on conflict (session_id) do update set last_seq = q.last_seq + excluded.last_seq returning q.session_id, q.last_seq
), b as (
  select array_agg(a.last_seq - r.n order by r.run) as base, array_agg(r.sid order by r.run) as sid
  from runs r left join alloc a on a.session_id = r.sid
), ins as (
  insert into session_events (session_id, seq, type, payload, at)
  select b.sid[e.run::int], b.base[e.run::int] + e.i::int, e.type, e.payload::json, e.at::timestamptz
  from b, rows from (string_to_table($3::text, ','), string_to_table($4::text, ','), string_to_table($5::text, ','), string_to_table($6::text, ','), string_to_table($7::text, E'\\n')) as e(run, i, type, at, payload)
  where b.base[e.run::int] is not null
) select a.session_id as id, a.last_seq - r.n as base from alloc a join runs r on r.sid = a.session_id`
async function time (name: string, fn: () => Promise<unknown>) {
  for (let i = 0; i < 5; i++) await fn()
  const t0 = performance.now(); const R = 30
  for (let i = 0; i < R; i++) await fn()
  const ms = (performance.now() - t0) / R
  console.log(name.padEnd(40), ms.toFixed(1), 'ms/batch', Math.round(N / ms * 1000), 'lines/s')
}
const runs = sids.map((sid) => ({ sid, events: Array.from({ length: N / 4 }, () => ({ type: 'agent', at: new Date(), json: line })) }))
await time('new statement', async () => {
  const rs: string[] = [], rn: number[] = [], er: number[] = [], ei: number[] = [], t: string[] = [], a: string[] = [], p: string[] = []
  runs.forEach((r, k) => { rs.push(r.sid); rn.push(r.events.length); r.events.forEach((e, i) => { er.push(k + 1); ei.push(i + 1); t.push(e.type); a.push(e.at.toISOString()); p.push(e.json) }) })
  await db.query(newSql, [rs.join(','), rn.join(','), er.join(','), ei.join(','), t.join(','), a.join(','), p.join('\n')])
})
const r = await db.query('select session_id, count(*), min(seq), max(seq), count(distinct seq) from session_events group by 1')
console.log(r.rows)
console.log((await db.query('explain ' + newSql.replace(/\$\d/g, "'1'"))).rows.map((x: any) => x['QUERY PLAN']).join('\n'))
await db.close()
