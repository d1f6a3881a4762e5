import { PG_INT_MAX } from './limits.js'

/**
 * If-Match parsing and matching (RFC 9110 §13.1.1) for ETags of the form `"<version>"`. Strong
 * comparison: weak tags never match. A bare number is accepted too, as some clients send it.
 */
export type IfMatch = '*' | number[]

export function parseIfMatch (header: string | undefined): IfMatch | undefined | null {
  if (header === undefined) return undefined
  const value = header.trim()
  if (value === '*') return '*'
  const versions: number[] = []
  for (const part of value.split(',')) {
    const tag = part.trim()
    const m = /^(W\/)?"(\d{1,10})"$/.exec(tag) ?? /^()(\d{1,10})$/.exec(tag)
    if (!m) return null
    // a weak tag, or a version beyond what a version can be, is well-formed but never matches
    if (!m[1] && Number(m[2]) <= PG_INT_MAX) versions.push(Number(m[2]))
  }
  return versions
}

export function ifMatchAccepts (ifMatch: IfMatch | undefined, version: number): boolean {
  return ifMatch === undefined || ifMatch === '*' || ifMatch.includes(version)
}

export const etagOf = (version: number): string => `"${version}"`
