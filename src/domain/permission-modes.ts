/**
 * The CLI's permission modes a session may run in (`--permission-mode`, `set_permission_mode`):
 * `default` asks for every tool that changes something, `acceptEdits` lets file edits through,
 * `plan` only plans, `bypassPermissions` asks for nothing (an operator's choice:
 * ALLOWED_PERMISSION_MODES).
 */
export const PERMISSION_MODES = ['default', 'acceptEdits', 'plan', 'bypassPermissions'] as const
export type PermissionMode = typeof PERMISSION_MODES[number]

export const isPermissionMode = (v: string): v is PermissionMode => (PERMISSION_MODES as readonly string[]).includes(v)
