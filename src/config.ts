import { resolve } from 'node:path'
import { Type, type Static } from 'typebox'
import { Value } from 'typebox/value'

/**
 * The service's whole configuration: the environment, validated once at start-up. Nothing else
 * reads process.env.
 */
export const EnvSchema = Type.Object({
  HOST: Type.String({ default: '127.0.0.1', minLength: 1 }),
  PORT: Type.Integer({ default: 3000, minimum: 0, maximum: 65535 }),
  DATABASE_URL: Type.Optional(Type.String({ pattern: '^postgres(ql)?://' })),
  DATABASE_POOL_SIZE: Type.Integer({ default: 10, minimum: 1, maximum: 1000 }),
  MOBVIBE_DATA_DIR: Type.String({ default: './.data', minLength: 1 }),
  MOBVIBE_WORKSPACE_ROOT: Type.String({ default: './workspaces', minLength: 1 }),
  CLAUDE_BIN: Type.String({ default: 'claude', minLength: 1 }),
  CLAUDE_MODEL: Type.Optional(Type.String({ minLength: 1 })),
  CLAUDE_PERMISSION_MODE: Type.Optional(Type.String({ minLength: 1 })),
  CLAUDE_EXTRA_ARGS: Type.Optional(Type.String()),
  CLAUDE_CONFIG_DIR: Type.Optional(Type.String({ minLength: 1 })),
  AGENT_ENV_PASSTHROUGH: Type.String({ default: 'ANTHROPIC_API_KEY,ANTHROPIC_BASE_URL' }),
  IDLE_TIMEOUT_DEFAULT_SECONDS: Type.Integer({ default: 600, minimum: 1 }),
  IDLE_TIMEOUT_MIN_SECONDS: Type.Integer({ default: 60, minimum: 1 }),
  IDLE_TIMEOUT_MAX_SECONDS: Type.Integer({ default: 86400, minimum: 1 }),
  SESSION_TTL_SECONDS: Type.Integer({ default: 86400, minimum: 1 }),
  SESSION_TTL_MIN_SECONDS: Type.Integer({ default: 60, minimum: 1 }),
  SESSION_TTL_MAX_SECONDS: Type.Integer({ default: 2592000, minimum: 1 }),
  HEARTBEAT_COALESCE_FRACTION: Type.Number({ default: 0.05, minimum: 0, maximum: 0.5 }),
  SWEEP_INTERVAL_MS: Type.Integer({ default: 1000, minimum: 10, maximum: 3_600_000 }),
  KILL_GRACE_MS: Type.Integer({ default: 5000, minimum: 0, maximum: 600_000 }),
  MAX_LIVE_AGENTS: Type.Integer({ default: 32, minimum: 1, maximum: 10_000 }),
  BODY_LIMIT_BYTES: Type.Integer({ default: 1_048_576, minimum: 1024 }),
  MESSAGE_MAX_BYTES: Type.Integer({ default: 262_144, minimum: 1 }),
  WS_MAX_FRAME_BYTES: Type.Integer({ default: 1_048_576, minimum: 1024 }),
  WS_PING_INTERVAL_MS: Type.Integer({ default: 30_000, minimum: 100, maximum: 600_000 }),
  LOG_LEVEL: Type.Enum(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'], { default: 'info' })
})

export type Env = Static<typeof EnvSchema>

const SECRET_VARIABLES = new Set(['DATABASE_URL'])

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
  limits: { bodyBytes: number, messageBytes: number, wsFrameBytes: number, wsPingIntervalMs: number }
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
    limits: { bodyBytes: e.BODY_LIMIT_BYTES, messageBytes: e.MESSAGE_MAX_BYTES, wsFrameBytes: e.WS_MAX_FRAME_BYTES, wsPingIntervalMs: e.WS_PING_INTERVAL_MS },
    logLevel: e.LOG_LEVEL
  }
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
