import type { Config } from '../config.js'

/** Names the session in every agent's environment, to find its descendants that escaped. */
export const AGENT_MARKER = 'MOBVIBE_AGENT_SESSION'
/**
 * Names the data directory of the service that started the agent: several instances on one host
 * run agents of the same session one after another (a failover), and each may end only its own.
 */
export const AGENT_HOME_MARKER = 'MOBVIBE_AGENT_HOME'

export interface ClaudeCommand {
  bin: string
  args: string[]
  env: Record<string, string>
}

export type Conversation = { mode: 'new', agentSessionId: string } | { mode: 'resume', agentSessionId: string }

/**
 * The CLI's command line and environment for one session: stream-json both ways, a new
 * conversation or a resumed one, permission asks over stdio. The environment is an allow-list, so the service's own settings
 * and secrets (DATABASE_URL…) never reach the agent.
 */
export function claudeCommand (opts: {
  agent: Config['agent']
  sessionId: string
  model: string | null
  /** the session's own permission mode; null = the configured default */
  permissionMode: string | null
  conversation: Conversation
  parentEnv: NodeJS.ProcessEnv
  /** the service's data directory (AGENT_HOME_MARKER) */
  home?: string
  /** the service runs as root (the CLI then refuses --allow-dangerously-skip-permissions unless IS_SANDBOX=1 reaches it) */
  asRoot?: boolean
  /** the session's own CLAUDE_CONFIG_DIR (agent-state.ts); default: the agents' state root (the bench runs the CLI so) */
  stateDir?: string
  tmpDir: string
}): ClaudeCommand {
  const { agent, conversation } = opts
  const args = [
    '-p',
    '--input-format', 'stream-json',
    '--output-format', 'stream-json',
    '--verbose',
    conversation.mode === 'new' ? '--session-id' : '--resume', conversation.agentSessionId,
    // a tool use that needs permission is asked of the service (can_use_tool on stdout), which
    // asks the user, instead of being denied because nobody sits at a terminal
    '--permission-prompt-tool', 'stdio'
  ]
  const model = opts.model ?? agent.model
  if (model) args.push('--model', model)
  const permissionMode = opts.permissionMode ?? agent.permissionMode
  if (permissionMode) args.push('--permission-mode', permissionMode)
  const env: Record<string, string> = {}
  for (const name of ['PATH', 'HOME', 'LANG', ...agent.envPassthrough]) {
    const value = opts.parentEnv[name]
    if (value !== undefined) env[name] = value
  }
  // without it, a live switch to bypassPermissions (a PATCH) is refused by the CLI
  // (bypass_not_launched); only where the operator allows that mode at all, and never where the
  // CLI would refuse to start because of it (as root without IS_SANDBOX=1)
  const asRoot = opts.asRoot ?? process.getuid?.() === 0
  if (agent.allowedPermissionModes.includes('bypassPermissions') && permissionMode !== 'bypassPermissions' &&
    (!asRoot || env.IS_SANDBOX === '1')) {
    args.push('--allow-dangerously-skip-permissions')
  }
  args.push(...agent.extraArgs)

  env.CLAUDE_CONFIG_DIR = opts.stateDir ?? agent.configDir
  env.CLAUDE_CODE_TMPDIR = opts.tmpDir
  env.CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC = '1'
  env.DISABLE_AUTOUPDATER = '1'
  env[AGENT_MARKER] = opts.sessionId
  if (opts.home !== undefined) env[AGENT_HOME_MARKER] = opts.home
  return { bin: agent.bin, args, env }
}
