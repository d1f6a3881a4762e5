import { isIP } from 'node:net'
import { resolve } from 'node:path'
import { Type, type Static } from 'typebox'
import { Value } from 'typebox/value'
import { isPermissionMode, PERMISSION_MODES, type PermissionMode } from './domain/permission-modes.js'

/**
 * The service's whole configuration: the environment, validated once at start-up. Nothing else
 * reads process.env. Each variable's `description`, and `x-default` where the default is computed
 * rather than a literal, make the README's configuration table (`npm run docs`, checked by
 * test/docs.test.ts).
 */
export const EnvSchema = Type.Object({
  HOST: Type.String({
    default: '127.0.0.1',
    minLength: 1,
    description: 'listen address (the Docker image sets `0.0.0.0`)'
  }),
  PORT: Type.Integer({
    default: 3000,
    minimum: 0,
    maximum: 65535,
    description: 'listen port (0–65535)'
  }),
  DATABASE_URL: Type.Optional(Type.String({
    pattern: '^postgres(ql)?://',
    description: '`postgres://` or `postgresql://` URL of PostgreSQL 14 or newer; unset = embedded PGlite in `$MOBVIBE_DATA_DIR/pglite`'
  })),
  DATABASE_POOL_SIZE: Type.Integer({
    default: 10,
    minimum: 1,
    maximum: 1000,
    description: 'postgres.js connection pool size (1–1000); ignored on PGlite'
  }),
  MOBVIBE_DATA_DIR: Type.String({
    default: './.data',
    minLength: 1,
    description: "local state: the PGlite database, the `service.lock` file (one running service per data directory), the agents' state (`claude/`), the live agents' process records (`agents/`) and their temp directories (`tmp/`)"
  }),
  MOBVIBE_WORKSPACE_ROOT: Type.String({
    default: './workspaces',
    minLength: 1,
    description: "the users' working directories: each user's lie inside their own area `<root>/<user key>` (the user's `sub`, cleaned, plus a hash of it), which no other user's `workdir` can reach; created if missing"
  }),
  CLAUDE_BIN: Type.String({
    default: 'claude',
    minLength: 1,
    description: "the agent executable. A bare name is looked up on `PATH`. Otherwise use an absolute path: a relative one would be resolved from the session's working directory. `$PWD/test/fixtures/fake-claude.mjs` runs the fake agent"
  }),
  CLAUDE_MODEL: Type.Optional(Type.String({
    minLength: 1,
    description: "`--model <value>` for sessions created without their own `model` (a session's `model` wins); unset = the CLI's default"
  })),
  CLAUDE_PERMISSION_MODE: Type.Optional(Type.String({
    minLength: 1,
    description: "`--permission-mode <value>`, e.g. `acceptEdits` or `bypassPermissions` (as root the CLI then also wants `IS_SANDBOX=1`, see `AGENT_ENV_PASSTHROUGH`); unset = the CLI's default"
  })),
  ALLOWED_PERMISSION_MODES: Type.String({
    default: 'default,acceptEdits,plan',
    description: 'comma-separated permission modes a session may choose (`permissionMode` at create or PATCH): of `default`, `acceptEdits`, `plan`, `bypassPermissions`. `bypassPermissions` lets an agent run any tool without asking: allow it only where the sandbox is trusted'
  }),
  PERMISSION_TIMEOUT_SECONDS: Type.Integer({
    default: 1800,
    minimum: 1,
    maximum: 604_800,
    description: "how long an agent's permission request or question waits for the user's answer before it is denied (the turn goes on without the tool); a session's `permissionTimeoutSeconds` overrides it (1–604800)"
  }),
  CLAUDE_EXTRA_ARGS: Type.Optional(Type.String({
    description: 'appended to the CLI\'s command line: words split on whitespace (e.g. `--include-partial-messages` for token-level `stream_event` lines), or a JSON array of strings for arguments that are empty or contain spaces (`["--setting-sources", ""]`). A value that starts with `[` but is not such an array stops start-up'
  })),
  CLAUDE_CONFIG_DIR: Type.Optional(Type.String({
    minLength: 1,
    description: "the root of the agents' state and transcripts, created at start-up: each session's CLI gets its own `CLAUDE_CONFIG_DIR` in it, `users/<user>/sessions/<session id>`. It must stay the same across restarts (and a session's working directory must not move), or `--resume` finds nothing",
    // the default is computed (loadConfig), not a literal: the docs show this instead
    'x-default': '$MOBVIBE_DATA_DIR/claude'
  })),
  AGENT_ENV_PASSTHROUGH: Type.String({
    default: 'ANTHROPIC_API_KEY,ANTHROPIC_BASE_URL',
    description: "comma-separated names of the service's variables copied into each agent's environment. The agent gets only these, plus `PATH`, `HOME`, `LANG` and the variables the service sets (`CLAUDE_CONFIG_DIR`, `CLAUDE_CODE_TMPDIR`, `MOBVIBE_AGENT_SESSION`…). Setting it replaces the default list"
  }),
  IDLE_TIMEOUT_DEFAULT_SECONDS: Type.Integer({
    default: 600,
    minimum: 1,
    description: 'idle timeout of a new session that does not set one'
  }),
  IDLE_TIMEOUT_MIN_SECONDS: Type.Integer({
    default: 60,
    minimum: 1,
    description: 'smallest idle timeout a session may have'
  }),
  IDLE_TIMEOUT_MAX_SECONDS: Type.Integer({
    default: 86400,
    minimum: 1,
    description: 'largest idle timeout a session may have'
  }),
  SESSION_TTL_SECONDS: Type.Integer({
    default: 86400,
    minimum: 1,
    description: 'TTL of a new session that does not set one: time without heartbeat or activity before it expires'
  }),
  SESSION_TTL_MIN_SECONDS: Type.Integer({
    default: 60,
    minimum: 1,
    description: 'smallest TTL a session may have'
  }),
  SESSION_TTL_MAX_SECONDS: Type.Integer({
    default: 2592000,
    minimum: 1,
    description: 'largest TTL a session may have (30 days)'
  }),
  HEARTBEAT_COALESCE_FRACTION: Type.Number({
    default: 0.05,
    minimum: 0,
    maximum: 0.5,
    description: 'a heartbeat that would move the expiry deadline by less than this share of the TTL writes nothing (0–0.5)'
  }),
  SWEEP_INTERVAL_MS: Type.Integer({
    default: 1000,
    minimum: 10,
    maximum: 3_600_000,
    description: 'pause between two timeout-worker sweeps; bounds the precision of idle suspension and expiry (10–3600000)'
  }),
  INSTANCE_LEASE_SECONDS: Type.Integer({
    default: 20,
    minimum: 4,
    maximum: 600,
    description: "how long an instance's lease lasts without renewal (4–600). Each instance renews its row every quarter of it; one that cannot renew for three quarters stops its own agents (and its watchdog kills them at half, if the instance itself is frozen), so that after a crash another instance may take its sessions over once the lease has run out. With several instances on one PostgreSQL this is the failover time"
  }),
  NOTICE_QUEUE_CUT_AT: Type.Number({
    default: 0.1,
    minimum: 0,
    maximum: 1,
    description: "the share of PostgreSQL's notice queue in use (0–1; `pg_notification_queue_usage()`) from which each instance warns, and cuts this service's listen connections that stopped reading (a frozen instance's) at two looks in a row, ten sweeps apart; 1 = never. PostgreSQL only"
  }),
  REDIS_URL: Type.Optional(Type.String({
    pattern: '^rediss?://',
    description: '`redis://` or `rediss://` URL: the per-user request rates (`RATE_LIMIT_PER_MINUTE`, `HEARTBEAT_RATE_LIMIT_PER_MINUTE`) are then counted in Redis, shared by every instance; unset = each instance counts on its own'
  })),
  KILL_GRACE_MS: Type.Integer({
    default: 5000,
    minimum: 0,
    maximum: 600_000,
    description: 'the agent stop sequence (0–600000): close stdin, wait this long, SIGTERM, wait this long again, then SIGKILL the process group. The shutdown deadline is `3 × KILL_GRACE_MS + 10 s`'
  }),
  MAX_LIVE_AGENTS: Type.Integer({
    default: 32,
    minimum: 1,
    maximum: 10_000,
    description: 'live agent processes at most (1–10000). At the cap, starting another one suspends the least recently active idle session (reason `eviction`). If every live agent is busy, the start waits its turn (FIFO) with a status event, until an agent ends its turn or exits'
  }),
  BODY_LIMIT_BYTES: Type.Integer({
    default: 1_048_576,
    minimum: 1024,
    description: 'largest request body (≥ 1024); larger is `413`'
  }),
  MESSAGE_MAX_BYTES: Type.Integer({
    default: 262_144,
    minimum: 1,
    description: 'largest message text in UTF-8 bytes (≥ 1), for `POST /messages` and stream `message` frames; larger is `413 MESSAGE_TOO_LARGE`'
  }),
  WS_MAX_FRAME_BYTES: Type.Integer({
    default: 1_048_576,
    minimum: 1024,
    description: 'largest WebSocket frame a client may send (≥ 1024); a larger one closes the connection with `1009`'
  }),
  WS_PING_INTERVAL_MS: Type.Integer({
    default: 30_000,
    minimum: 100,
    maximum: 600_000,
    description: 'WebSocket ping interval (100–600000). A client that has not answered the previous ping is disconnected'
  }),
  TRUST_PROXY: Type.Optional(Type.String({
    description: 'the load balancers whose `X-Forwarded-For` (the client\'s address in the logs), `X-Forwarded-Proto` and `X-Forwarded-Host` are believed: comma-separated addresses or CIDR ranges (`10.0.0.0/8,127.0.0.1`), or the number of proxy hops in front of the service (`1`: one balancer that only it can reach, as in docker-compose.yml); unset: none, and the logs show the balancer\'s address'
  })),
  CORS_ORIGINS: Type.Optional(Type.String({
    description: 'comma-separated origins (`https://app.example.com`) that browsers may call the API from; unset: no CORS headers, so no browser page of another origin can read the API'
  })),
  JWT_SECRET: Type.Optional(Type.String({
    minLength: 32,
    description: 'HS256 key (at least 32 characters) that verifies the bearer tokens. Unset together with `JWT_JWKS_URL`: the first start generates one into `$MOBVIBE_DATA_DIR/jwt-secret` (mode 0600) and `npm run token -- <user>` mints tokens with it'
  })),
  JWT_JWKS_URL: Type.Optional(Type.String({
    pattern: '^https?://',
    description: "the identity provider's JSON Web Key Set (`https://…/.well-known/jwks.json`): tokens signed with RS256/384/512, PS256/384/512, ES256/384/512 or EdDSA. Keys are cached and fetched again for an unknown `kid`. Exclusive with `JWT_SECRET`"
  })),
  JWT_ISSUER: Type.Optional(Type.String({
    minLength: 1,
    description: 'when set, a token\'s `iss` must equal it'
  })),
  JWT_AUDIENCE: Type.Optional(Type.String({
    minLength: 1,
    description: 'when set, a token\'s `aud` must contain it'
  })),
  JWT_CLOCK_TOLERANCE_SECONDS: Type.Integer({
    default: 30,
    minimum: 0,
    maximum: 300,
    description: 'clock skew allowed on `exp`, `nbf` and `iat` (0–300)'
  }),
  UNOWNED_SESSIONS_OWNER: Type.Optional(Type.String({
    minLength: 1,
    maxLength: 255,
    description: 'the user (`sub`) that start-up gives the sessions created before users existed (no owner); unset: such sessions stay unreachable through the API'
  })),
  AGENT_SANDBOX: Type.Enum(['auto', 'bwrap', 'none'], {
    default: 'auto',
    description: "`bwrap`: every agent runs in a bubblewrap sandbox (its working directory and state read-write, the system read-only, the data directory and other users' files hidden, its own PID namespace) and start-up fails without a working `bwrap`; `auto`: the same when `bwrap` works on the host, else agents run unconfined after a start-up warning; `none`: unconfined"
  }),
  RATE_LIMIT_PER_MINUTE: Type.Integer({
    default: 1200,
    minimum: 0,
    maximum: 1_000_000,
    description: 'requests per user per minute on `/v1` (heartbeats apart); beyond: `429` with `Retry-After`. 0 = no limit'
  }),
  HEARTBEAT_RATE_LIMIT_PER_MINUTE: Type.Integer({
    default: 1200,
    minimum: 0,
    maximum: 1_000_000,
    description: 'heartbeats per user per minute, a bucket of their own; 0 = no limit'
  }),
  MAX_STREAMS_PER_USER: Type.Integer({
    default: 32,
    minimum: 1,
    maximum: 100_000,
    description: 'open stream connections per user; one more is refused with `429`'
  }),
  MAX_LIVE_AGENTS_PER_USER: Type.Integer({
    default: 8,
    minimum: 1,
    maximum: 10_000,
    description: "live agent processes per user. At this cap, starting another suspends the user's own least recently active idle agent, or waits for one of theirs to end its turn, as `MAX_LIVE_AGENTS` does for everybody"
  }),
  MAX_EVENT_LOOP_DELAY_MS: Type.Integer({
    default: 1000,
    minimum: 0,
    maximum: 60_000,
    description: 'above this event-loop delay the service answers `503` with `Retry-After` instead of queueing work without bound; 0 = never'
  }),
  PUSH_GROUP_WINDOW_MS: Type.Integer({
    default: 1500,
    minimum: 0,
    maximum: 60_000,
    description: "push notifications: the attention events of one session (a turn's end, a permission request or question, an agent error) within this window from the first make one notification, of the most important kind, sent when the window ends if no stream client watches the session (0–60000)"
  }),
  PUSH_MAX_DEVICES_PER_USER: Type.Integer({
    default: 20,
    minimum: 1,
    maximum: 1000,
    description: 'devices (`POST /v1/devices`) one user may register; one more is `409 TOO_MANY_DEVICES`'
  }),
  PUSH_MAX_ATTEMPTS: Type.Integer({
    default: 5,
    minimum: 1,
    maximum: 20,
    description: 'attempts at most to deliver one notification to one device (network errors, timeouts, `429` and `5xx` are retried, with exponential backoff)'
  }),
  PUSH_RETRY_BASE_MS: Type.Integer({
    default: 1000,
    minimum: 1,
    maximum: 600_000,
    description: "the first retry's delay; each next one doubles (with jitter, or the provider's `Retry-After` when longer)"
  }),
  PUSH_RETRY_WINDOW_MS: Type.Integer({
    default: 300_000,
    minimum: 1,
    maximum: 86_400_000,
    description: 'a notification is given up when its next attempt would start later than this after its first: a late push is noise, and the session\'s events are there when the app opens'
  }),
  PUSH_REQUEST_TIMEOUT_MS: Type.Integer({
    default: 10_000,
    minimum: 100,
    maximum: 120_000,
    description: 'one request to a push provider or webhook: connection, headers and body each within this (100–120000); a timeout is retried'
  }),
  PUSH_QUEUE_MAX: Type.Integer({
    default: 10_000,
    minimum: 1,
    maximum: 1_000_000,
    description: 'deliveries waiting or retrying at once, for all users; beyond it a notification is dropped (and logged), so that push never holds memory without bound'
  }),
  PUSH_ALLOW_LOOPBACK: Type.Boolean({
    default: false,
    description: 'tests and local development only: webhook URLs and Web Push endpoints may be plain `http://127.0.0.1[:port]` or `http://[::1][:port]`, and the service posts to loopback addresses. Never on a shared service: any user could make it post to the ports of its own host'
  }),
  PUSH_ALLOW_PRIVATE_NETWORKS: Type.Boolean({
    default: false,
    description: 'webhook URLs and Web Push endpoints may lead to private or shared addresses (`10/8`, `172.16/12`, `192.168/16`, `100.64/10`, `fc00::/7`), e.g. a receiver on the operator\'s network. Link-local ranges and cloud metadata addresses stay refused whatever this says. Off: only public addresses, checked after DNS on every request, so that a user cannot aim the service at internal hosts'
  }),
  EXPO_API_URL: Type.String({
    default: 'https://exp.host',
    pattern: '^https?://[^/?#]+(/[^?#]*)?$',
    description: "the Expo push service's base URL (`/--/api/v2/push/send` is appended); tests point it at a local fake"
  }),
  EXPO_ACCESS_TOKEN: Type.Optional(Type.String({
    minLength: 1,
    description: "the Expo project's access token, sent as a bearer token when the project enables Expo's enhanced push security; unset: none"
  })),
  VAPID_PUBLIC_KEY: Type.Optional(Type.String({
    pattern: '^[A-Za-z0-9_-]{87}$',
    description: "Web Push: the VAPID public key (base64url, an uncompressed P-256 point), with `VAPID_PRIVATE_KEY`. Both unset: the first start generates a pair into `$MOBVIBE_DATA_DIR/vapid-keys.json` (mode 0600). Changing the keys invalidates every browser's subscription"
  })),
  VAPID_PRIVATE_KEY: Type.Optional(Type.String({
    pattern: '^[A-Za-z0-9_-]{43}$',
    description: 'Web Push: the VAPID private key (base64url, 32 bytes), with `VAPID_PUBLIC_KEY`'
  })),
  VAPID_SUBJECT: Type.String({
    default: 'mailto:push@mobvibe.dev',
    pattern: '^(https://|mailto:).+',
    description: "Web Push: the VAPID `sub`, a `mailto:` or `https:` contact of the operator that push services may use (Apple's refuses `localhost`)"
  }),
  LOG_LEVEL: Type.Enum(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'], {
    default: 'info',
    description: 'pino level: `fatal`, `error`, `warn`, `info`, `debug`, `trace`, `silent`'
  })
})

type Env = Static<typeof EnvSchema>

const SECRET_VARIABLES = new Set(['DATABASE_URL', 'REDIS_URL', 'JWT_SECRET', 'VAPID_PRIVATE_KEY', 'EXPO_ACCESS_TOKEN'])

export interface Config {
  host: string
  port: number
  databaseUrl: string | undefined
  databasePoolSize: number
  dataDir: string
  workspaceRoot: string
  agent: {
    bin: string
    model: string | undefined
    permissionMode: string | undefined
    /** the modes a session may choose */
    allowedPermissionModes: PermissionMode[]
    permissionTimeoutSeconds: number
    extraArgs: string[]
    configDir: string
    envPassthrough: string[]
    killGraceMs: number
    maxLive: number
  }
  idleTimeout: { defaultSeconds: number, minSeconds: number, maxSeconds: number }
  ttl: { defaultSeconds: number, minSeconds: number, maxSeconds: number }
  heartbeatCoalesceFraction: number
  sweepIntervalMs: number
  /** this process as one of several instances on one database */
  instance: { leaseSeconds: number, noticeQueueCutAt: number }
  redisUrl: string | undefined
  limits: { bodyBytes: number, messageBytes: number, wsFrameBytes: number, wsPingIntervalMs: number }
  /** origins allowed to call the API from a browser; empty: none */
  corsOrigins: string[]
  /** Fastify's `trustProxy`: proxy hops, or the proxies' addresses and ranges; undefined: none */
  trustProxy: number | string[] | undefined
  auth: {
    /** HS256 key; undefined with a JWKS (or before the generated one is loaded) */
    secret: string | undefined
    jwksUrl: string | undefined
    issuer: string | undefined
    audience: string | undefined
    clockToleranceSeconds: number
  }
  unownedSessionsOwner: string | undefined
  sandbox: Env['AGENT_SANDBOX']
  perUser: {
    requestsPerMinute: number
    heartbeatsPerMinute: number
    streams: number
    liveAgents: number
  }
  maxEventLoopDelayMs: number
  /** push notifications to the users' devices (src/push, docs/PUSH.md) */
  push: {
    groupWindowMs: number
    maxDevicesPerUser: number
    maxAttempts: number
    retryBaseMs: number
    retryWindowMs: number
    requestTimeoutMs: number
    queueMax: number
    /** plain http:// to 127.0.0.1 / [::1], and loopback addresses: tests and development */
    allowLoopback: boolean
    allowPrivateNetworks: boolean
    expoApiUrl: string
    expoAccessToken: string | undefined
    /** both or neither; neither: generated into the data directory */
    vapid: { publicKey: string, privateKey: string } | undefined
    vapidSubject: string
  }
  logLevel: Env['LOG_LEVEL']
}

export class ConfigError extends Error {
  override name = 'ConfigError'
}

/** Validates the environment; a bad value throws a ConfigError naming the variable. */
export function loadConfig (env: NodeJS.ProcessEnv = process.env): Config {
  const raw: Record<string, unknown> = {}
  for (const key of Object.keys(EnvSchema.properties)) {
    const value = env[key]
    // An empty variable means "unset", as shells and compose files commonly produce it
    if (value !== undefined && value !== '') raw[key] = value
  }
  const parsed = Value.Convert(EnvSchema, Value.Default(EnvSchema, raw))
  const errors = [...Value.Errors(EnvSchema, parsed)]
  if (errors.length > 0) {
    const lines = errors.map((e) => {
      const name = e.instancePath.replace(/^\//, '') || String((e.params as { requiredProperties?: string[] }).requiredProperties ?? '')
      // a URL may carry a password: name the variable, never echo its value
      const shown = SECRET_VARIABLES.has(name) ? '(value hidden)' : JSON.stringify(raw[name] ?? null)
      return `${name}=${shown}: ${e.message}`
    })
    throw new ConfigError(`invalid configuration: ${[...new Set(lines)].join('; ')}`)
  }
  const e = parsed as Env
  checkRange('IDLE_TIMEOUT', e.IDLE_TIMEOUT_MIN_SECONDS, e.IDLE_TIMEOUT_DEFAULT_SECONDS, e.IDLE_TIMEOUT_MAX_SECONDS)
  checkRange('SESSION_TTL', e.SESSION_TTL_MIN_SECONDS, e.SESSION_TTL_SECONDS, e.SESSION_TTL_MAX_SECONDS)
  if (e.JWT_SECRET !== undefined && e.JWT_JWKS_URL !== undefined) {
    throw new ConfigError('invalid configuration: JWT_SECRET and JWT_JWKS_URL are exclusive: set one')
  }
  const dataDir = resolve(e.MOBVIBE_DATA_DIR)
  return {
    host: e.HOST,
    port: e.PORT,
    databaseUrl: e.DATABASE_URL,
    databasePoolSize: e.DATABASE_POOL_SIZE,
    dataDir,
    workspaceRoot: resolve(e.MOBVIBE_WORKSPACE_ROOT),
    agent: {
      bin: e.CLAUDE_BIN,
      model: e.CLAUDE_MODEL,
      permissionMode: e.CLAUDE_PERMISSION_MODE,
      allowedPermissionModes: parsePermissionModes(e.ALLOWED_PERMISSION_MODES),
      permissionTimeoutSeconds: e.PERMISSION_TIMEOUT_SECONDS,
      extraArgs: parseExtraArgs(e.CLAUDE_EXTRA_ARGS),
      configDir: resolve(e.CLAUDE_CONFIG_DIR ?? resolve(dataDir, 'claude')),
      envPassthrough: e.AGENT_ENV_PASSTHROUGH.split(',').map((s) => s.trim()).filter(Boolean),
      killGraceMs: e.KILL_GRACE_MS,
      maxLive: e.MAX_LIVE_AGENTS
    },
    idleTimeout: { defaultSeconds: e.IDLE_TIMEOUT_DEFAULT_SECONDS, minSeconds: e.IDLE_TIMEOUT_MIN_SECONDS, maxSeconds: e.IDLE_TIMEOUT_MAX_SECONDS },
    ttl: { defaultSeconds: e.SESSION_TTL_SECONDS, minSeconds: e.SESSION_TTL_MIN_SECONDS, maxSeconds: e.SESSION_TTL_MAX_SECONDS },
    heartbeatCoalesceFraction: e.HEARTBEAT_COALESCE_FRACTION,
    sweepIntervalMs: e.SWEEP_INTERVAL_MS,
    instance: { leaseSeconds: e.INSTANCE_LEASE_SECONDS, noticeQueueCutAt: e.NOTICE_QUEUE_CUT_AT },
    redisUrl: e.REDIS_URL,
    limits: { bodyBytes: e.BODY_LIMIT_BYTES, messageBytes: e.MESSAGE_MAX_BYTES, wsFrameBytes: e.WS_MAX_FRAME_BYTES, wsPingIntervalMs: e.WS_PING_INTERVAL_MS },
    corsOrigins: parseOrigins(e.CORS_ORIGINS),
    trustProxy: parseTrustProxy(e.TRUST_PROXY),
    auth: {
      secret: e.JWT_SECRET,
      jwksUrl: e.JWT_JWKS_URL,
      issuer: e.JWT_ISSUER,
      audience: e.JWT_AUDIENCE,
      clockToleranceSeconds: e.JWT_CLOCK_TOLERANCE_SECONDS
    },
    unownedSessionsOwner: e.UNOWNED_SESSIONS_OWNER,
    sandbox: e.AGENT_SANDBOX,
    perUser: {
      requestsPerMinute: e.RATE_LIMIT_PER_MINUTE,
      heartbeatsPerMinute: e.HEARTBEAT_RATE_LIMIT_PER_MINUTE,
      streams: e.MAX_STREAMS_PER_USER,
      liveAgents: e.MAX_LIVE_AGENTS_PER_USER
    },
    maxEventLoopDelayMs: e.MAX_EVENT_LOOP_DELAY_MS,
    push: pushConfig(e),
    logLevel: e.LOG_LEVEL
  }
}

function pushConfig (e: Env): Config['push'] {
  if ((e.VAPID_PUBLIC_KEY === undefined) !== (e.VAPID_PRIVATE_KEY === undefined)) {
    throw new ConfigError('invalid configuration: VAPID_PUBLIC_KEY and VAPID_PRIVATE_KEY go together: set both, or neither to use the generated pair')
  }
  return {
    groupWindowMs: e.PUSH_GROUP_WINDOW_MS,
    maxDevicesPerUser: e.PUSH_MAX_DEVICES_PER_USER,
    maxAttempts: e.PUSH_MAX_ATTEMPTS,
    retryBaseMs: e.PUSH_RETRY_BASE_MS,
    retryWindowMs: e.PUSH_RETRY_WINDOW_MS,
    requestTimeoutMs: e.PUSH_REQUEST_TIMEOUT_MS,
    queueMax: e.PUSH_QUEUE_MAX,
    allowLoopback: e.PUSH_ALLOW_LOOPBACK,
    allowPrivateNetworks: e.PUSH_ALLOW_PRIVATE_NETWORKS,
    expoApiUrl: e.EXPO_API_URL.replace(/\/+$/, ''),
    expoAccessToken: e.EXPO_ACCESS_TOKEN,
    vapid: e.VAPID_PUBLIC_KEY !== undefined && e.VAPID_PRIVATE_KEY !== undefined
      ? { publicKey: e.VAPID_PUBLIC_KEY, privateKey: e.VAPID_PRIVATE_KEY }
      : undefined,
    vapidSubject: e.VAPID_SUBJECT
  }
}

/** CORS_ORIGINS: each an origin as a browser sends it (scheme, host, optional port; no path). */
function parseOrigins (raw: string | undefined): string[] {
  if (raw === undefined) return []
  return raw.split(',').map((s) => s.trim()).filter(Boolean).map((origin) => {
    let url: URL
    try {
      url = new URL(origin)
    } catch {
      throw new ConfigError(`invalid configuration: CORS_ORIGINS=${JSON.stringify(origin)}: not an origin (https://host[:port])`)
    }
    if ((url.protocol !== 'https:' && url.protocol !== 'http:') || url.origin !== origin.replace(/\/$/, '')) {
      throw new ConfigError(`invalid configuration: CORS_ORIGINS=${JSON.stringify(origin)}: not an origin (https://host[:port], no path)`)
    }
    return url.origin
  })
}

function parseTrustProxy (raw: string | undefined): number | string[] | undefined {
  if (raw === undefined || raw.trim() === '') return undefined
  if (/^\d+$/.test(raw.trim())) {
    const hops = Number(raw.trim())
    if (hops < 1 || hops > 10) throw new ConfigError(`invalid configuration: TRUST_PROXY=${raw}: a number of hops is 1–10`)
    return hops
  }
  const entries = raw.split(',').map((s) => s.trim()).filter(Boolean)
  if (entries.length === 0) throw new ConfigError(`invalid configuration: TRUST_PROXY=${JSON.stringify(raw)}: no address`)
  return entries.map((entry) => {
    const [address = '', bits, ...rest] = entry.split('/')
    const family = isIP(address)
    const max = family === 6 ? 128 : 32
    // zones and IPv4-mapped forms are refused: the proxy matcher does not take them as written
    const plain = family !== 0 && !address.includes('%') && !/^::ffff:/i.test(address)
    // a /0 range would believe anyone's headers
    if (!plain || rest.length > 0 || (bits !== undefined && !(/^\d+$/.test(bits) && Number(bits) >= 1 && Number(bits) <= max))) {
      throw new ConfigError(`invalid configuration: TRUST_PROXY has ${JSON.stringify(entry)}: not an address or a CIDR range of /1 to /${max} (10.0.0.0/8, ::1)`)
    }
    return entry
  })
}

function parsePermissionModes (raw: string): PermissionMode[] {
  const modes = raw.split(',').map((s) => s.trim()).filter(Boolean)
  for (const mode of modes) {
    if (!isPermissionMode(mode)) {
      throw new ConfigError(`invalid configuration: ALLOWED_PERMISSION_MODES has ${JSON.stringify(mode)}: the modes are ${PERMISSION_MODES.join(', ')}`)
    }
  }
  return [...new Set(modes)] as PermissionMode[]
}

/**
 * CLAUDE_EXTRA_ARGS: a JSON array of strings for arguments that are empty or hold spaces
 * (`["--setting-sources", ""]`), or plain words split on whitespace.
 */
function parseExtraArgs (raw: string | undefined): string[] {
  if (raw === undefined) return []
  if (raw.trim().startsWith('[')) {
    let parsed: unknown
    try {
      parsed = JSON.parse(raw)
    } catch {
      throw new ConfigError('invalid configuration: CLAUDE_EXTRA_ARGS looks like a JSON array but does not parse')
    }
    if (!Array.isArray(parsed) || !parsed.every((a) => typeof a === 'string')) {
      throw new ConfigError('invalid configuration: CLAUDE_EXTRA_ARGS must be a JSON array of strings')
    }
    return parsed
  }
  return raw.split(/\s+/).filter(Boolean)
}

function checkRange (prefix: string, min: number, def: number, max: number): void {
  if (min > max) throw new ConfigError(`invalid configuration: ${prefix}_MIN_SECONDS (${min}) is above ${prefix}_MAX_SECONDS (${max})`)
  if (def < min || def > max) {
    const name = prefix === 'SESSION_TTL' ? 'SESSION_TTL_SECONDS' : `${prefix}_DEFAULT_SECONDS`
    throw new ConfigError(`invalid configuration: ${name} (${def}) is outside [${min}, ${max}]`)
  }
}
