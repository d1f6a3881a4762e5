/** U+0000 → U+FFFD: what Postgres can store of text an agent printed (text and json refuse NUL). */
export function withoutNul (text: string): string {
  return text.includes('\0') ? text.replaceAll('\0', '\uFFFD') : text
}
