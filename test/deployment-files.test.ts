// Database-independent: opens no database, so CI runs it once, in the PGlite pass (.ci/run).
/**
 * The multi-instance deployment (docker-compose.yml, deploy/nginx.conf, docs/SCALING.md), checked
 * without Docker: the invariants that make several instances on one PostgreSQL work. Each instance
 * has a data directory of its own; all mount one shared volume at the same path, with the
 * workspaces and the agents' state in it; all use the same database, Redis and token key, and
 * wait for a healthy PostgreSQL; the grace period outlasts the service's shutdown deadline; no
 * secret is written in the file. nginx balances over every instance, hashes on the session id and
 * upgrades WebSockets. (The config's syntax was checked with `nginx -t` when it was written; CI
 * has no nginx.)
 */
import { readFile } from 'node:fs/promises'
import t from 'tap'
import { parse } from 'yaml'

const ROOT = new URL('../', import.meta.url)
const read = async (path: string) => readFile(new URL(path, ROOT), 'utf8')

interface Service {
  image?: string
  build?: unknown
  environment?: Record<string, string>
  volumes?: string[]
  depends_on?: Record<string, { condition: string }>
  healthcheck?: { test: string[] }
  stop_grace_period?: string
  command?: unknown
}

const composeText = await read('docker-compose.yml')
// Compose reads YAML merge keys (`<<: *instance`)
const compose = parse(composeText, { merge: true }) as { services: Record<string, Service>, volumes: Record<string, unknown> }
const nginxConf = await read('deploy/nginx.conf')

/** The instances of the service: every service that connects to the database with the service's variables. */
const instances = Object.entries(compose.services).filter(([, s]) => s.environment?.MOBVIBE_DATA_DIR !== undefined)

/** `source:target[:mode]` of a service's volumes */
function mounts (service: Service): { source: string, target: string }[] {
  return (service.volumes ?? []).map((v) => {
    const [source, target] = v.split(':')
    return { source: source!, target: target! }
  })
}

const inside = (path: string, dir: string) => path.startsWith(dir.replace(/\/$/, '') + '/')

/** Compose's durations: `40s`, `1m30s`, `1500ms` */
function seconds (duration: string): number {
  let total = 0
  for (const [, n, unit] of duration.matchAll(/(\d+(?:\.\d+)?)(ms|s|m|h)/g)) {
    total += Number(n) * { ms: 0.001, s: 1, m: 60, h: 3600 }[unit as 'ms' | 's' | 'm' | 'h']
  }
  return total
}

t.test('at least two instances, each with a data directory of its own', async (t) => {
  t.ok(instances.length >= 2, `${instances.length} instances`)
  const dataVolumes = instances.map(([name, s]) => {
    const dataDir = s.environment!.MOBVIBE_DATA_DIR!
    t.ok(dataDir.startsWith('/'), `${name}: MOBVIBE_DATA_DIR is an absolute path`)
    const mount = mounts(s).find((m) => m.target === dataDir)
    t.ok(mount, `${name}: a volume is mounted on its data directory`)
    t.ok(mount && mount.source in compose.volumes, `${name}: a named volume (${mount?.source})`)
    return mount?.source
  })
  t.equal(new Set(dataVolumes).size, instances.length, 'a distinct data volume per instance')
})

t.test('one shared volume at the same path everywhere, with the workspaces and the agents\' state in it', async (t) => {
  const dataVolumes = new Set(instances.map(([, s]) => mounts(s).find((m) => m.target === s.environment!.MOBVIBE_DATA_DIR)?.source))
  const shared = instances.map(([name, s]) => {
    const env = s.environment!
    const mount = mounts(s).find((m) => !dataVolumes.has(m.source) && inside(env.MOBVIBE_WORKSPACE_ROOT!, m.target))
    t.ok(mount, `${name}: MOBVIBE_WORKSPACE_ROOT (${env.MOBVIBE_WORKSPACE_ROOT}) is on a volume other than the data volumes`)
    if (mount === undefined) return ''
    t.ok(env.CLAUDE_CONFIG_DIR !== undefined && inside(env.CLAUDE_CONFIG_DIR, mount.target), `${name}: CLAUDE_CONFIG_DIR (${env.CLAUDE_CONFIG_DIR}) is on it too`)
    t.notOk(inside(env.MOBVIBE_DATA_DIR!, mount.target), `${name}: the data directory is not on the shared volume`)
    return `${mount.source}:${mount.target}`
  })
  t.equal(new Set(shared).size, 1, `the same volume at the same path in every instance (${shared[0]})`)
  for (const key of ['MOBVIBE_WORKSPACE_ROOT', 'CLAUDE_CONFIG_DIR']) {
    t.equal(new Set(instances.map(([, s]) => s.environment![key])).size, 1, `the same ${key} in every instance`)
  }
})

t.test('the same database, Redis, token key and lease in every instance, after a healthy PostgreSQL', async (t) => {
  for (const key of ['DATABASE_URL', 'REDIS_URL', 'JWT_SECRET', 'VAPID_PUBLIC_KEY', 'VAPID_PRIVATE_KEY', 'INSTANCE_LEASE_SECONDS']) {
    const values = instances.map(([, s]) => s.environment![key])
    t.ok(values.every((v) => typeof v === 'string' && v !== ''), `${key} is set in every instance`)
    t.equal(new Set(values).size, 1, `${key} is the same in every instance`)
  }
  const databaseUrl = instances[0]![1].environment!.DATABASE_URL!
  t.match(databaseUrl, /^postgres:\/\/[^:]+:\$\{[A-Z_]+[^}]*\}@postgres:5432\//, 'DATABASE_URL points at the postgres service, its password a variable')
  t.match(instances[0]![1].environment!.REDIS_URL, /^redis:\/\/redis:6379/, 'REDIS_URL points at the redis service')

  const postgres = compose.services.postgres
  t.match(postgres?.image, /^postgres:15/, 'PostgreSQL 15')
  t.ok(postgres?.healthcheck, 'with a healthcheck')
  t.ok(mounts(postgres ?? {}).some((m) => m.target === '/var/lib/postgresql/data' && m.source in compose.volumes), 'and a volume')
  for (const [name, s] of instances) {
    t.equal(s.depends_on?.postgres?.condition, 'service_healthy', `${name} waits for a healthy postgres`)
  }
})

t.test('no secret is written in the compose file', async (t) => {
  for (const [name, s] of Object.entries(compose.services)) {
    for (const [key, value] of Object.entries(s.environment ?? {})) {
      if (!/SECRET|PASSWORD|PRIVATE_KEY|API_KEY|TOKEN/.test(key)) continue
      t.match(String(value), /^\$\{[A-Z_]+(:[-?][^}]*)?\}$/, `${name}: ${key} comes from a variable`)
    }
  }
  // Compose interpolates every `$` (the inline Dockerfile included): one meant for the shell must
  // be `$$`, else `docker compose` stops with "invalid interpolation format"
  const strings = (value: unknown): string[] => typeof value === 'string'
    ? [value]
    : value !== null && typeof value === 'object' ? Object.values(value).flatMap(strings) : []
  const loose = strings(parse(composeText)).flatMap((s) => [...s.replaceAll('$$', '').matchAll(/\$(?!\{|[A-Za-z_])/g)].map((m) => s.slice(m.index, m.index + 12)))
  t.same(loose, [], 'every `$` is an interpolation or escaped')
})

t.test('readiness checks, and a stop grace longer than the shutdown deadline', async (t) => {
  // src/server.ts: SHUTDOWN_BUDGET, a deadline of stopGraces × KILL_GRACE_MS + flushMs
  const server = await read('src/server.ts')
  const budget = /SHUTDOWN_BUDGET = \{ stopGraces: (\d+), flushMs: ([\d_]+) \}/.exec(server)
  t.ok(budget, 'src/server.ts still spells SHUTDOWN_BUDGET this way')
  const [stopGraces, flushMs] = [Number(budget?.[1] ?? NaN), Number((budget?.[2] ?? '').replaceAll('_', ''))]
  for (const [name, s] of instances) {
    t.match(s.healthcheck?.test.join(' '), /\/readyz/, `${name}: its healthcheck asks /readyz`)
    const killGraceMs = Number(s.environment!.KILL_GRACE_MS ?? 5000)
    const deadline = (stopGraces * killGraceMs + flushMs) / 1000
    const grace = seconds(s.stop_grace_period ?? '10s')
    t.ok(grace > deadline, `${name}: stop_grace_period ${grace} s > the shutdown deadline ${deadline} s`)
  }
})

t.test('nginx balances over every instance, hashing on the session id, and upgrades WebSockets', async (t) => {
  const nginx = compose.services.nginx
  t.ok(mounts(nginx ?? {}).some((m) => m.source === './deploy/nginx.conf'), 'the nginx service uses deploy/nginx.conf')
  for (const [name] of instances) {
    t.match(nginxConf, new RegExp(`^\\s*server ${name}:3000\\b`, 'm'), `the upstream has ${name}`)
    t.ok(nginx?.depends_on?.[name], `nginx starts after ${name}`)
  }
  t.match(nginxConf, /^\s*hash \$sid consistent;/m, 'consistent hashing on $sid')
  const map = /map \$uri \$sid \{\s*(~\S+) \$i;/.exec(nginxConf)
  t.ok(map, '$sid comes from the path')
  const re = new RegExp(map![1]!.slice(1))
  t.equal(re.exec('/v1/sessions/0b3e1c1a-5d2f-4a7e-9c1b-2f6d8e4a1b3c/stream')?.groups?.i, '0b3e1c1a-5d2f-4a7e-9c1b-2f6d8e4a1b3c', 'the session id of a stream')
  t.equal(re.exec('/v1/sessions/0B3E1C1A-5D2F-4A7E-9C1B-2F6D8E4A1B3C')?.groups?.i, '0B3E1C1A-5D2F-4A7E-9C1B-2F6D8E4A1B3C', 'of a session, in either case')
  t.equal(re.exec('/v1/sessions'), null, 'none for the list')
  t.match(nginxConf, /any instance serves any request/i, 'says that the hash is an optimisation only')

  t.match(nginxConf, /proxy_http_version 1\.1;/)
  t.match(nginxConf, /proxy_set_header Upgrade \$http_upgrade;/, 'passes Upgrade')
  t.match(nginxConf, /proxy_set_header Connection \$connection_upgrade;/, 'and Connection: upgrade')
  t.match(nginxConf, /map \$http_upgrade \$connection_upgrade/)
  t.match(nginxConf, /proxy_set_header X-Request-Id /, 'passes X-Request-Id')
  t.match(nginxConf, /proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;/, 'and X-Forwarded-For')
  t.match(nginxConf, /proxy_set_header X-Forwarded-Host \$host;/, 'and its own X-Forwarded-Host (a client\'s would be believed)')
  t.match(nginxConf, /proxy_set_header X-Forwarded-Proto \$scheme;/, 'and its own X-Forwarded-Proto')
  for (const [name, s] of instances) {
    t.equal(s.environment!.TRUST_PROXY, '1', `${name} believes that one hop (nginx): its logs show the client's address`)
    t.notOk((s as { ports?: unknown }).ports, `${name} publishes no port: nginx is the only way in, so the header cannot be forged`)
  }
  const stream = /location ~ \^\/v1\/sessions\/[^{]*\/stream\$ \{([^}]*)\}/.exec(nginxConf)
  t.ok(stream, 'a location of its own for the stream')
  const readTimeout = /proxy_read_timeout (\d+)s;/.exec(stream?.[1] ?? '')
  t.ok(Number(readTimeout?.[1]) >= 600, `a long read timeout for streams (${readTimeout?.[1]} s)`)
})
