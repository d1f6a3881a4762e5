import { PGlite } from '@electric-sql/pglite'
import { PGliteThread } from './src/db/pglite-thread.js'
async function run (name: string, q: (sql: string, p: unknown[]) => Promise<unknown>) {
  await q('create table if not exists kv (id int primary key, v text)', [])
  await q('insert into kv select g, md5(g::text) from generate_series(1, 10000) g on conflict do nothing', [])
  for (const conc of [1, 50]) {
    let n = 0
    const end = performance.now() + 2000
    await Promise.all(Array.from({ length: conc }, async () => {
      while (performance.now() < end) { await q('select * from kv where id = $1', [1 + (n % 10000)]); n++ }
    }))
    console.log(name, 'concurrency', conc, Math.round(n / 2), 'statements/s')
  }
}
const direct = await PGlite.create('memory://')
await run('direct', (s, p) => direct.query(s, p))
await direct.close()
const thread = await PGliteThread.open('memory://')
await run('thread', (s, p) => thread.query(s, p))
await thread.close()
