/** Shape checks shared by the types' `validate`: ops arrive as untrusted JSON. */
import { CrdtOpError } from './types.js'

export function isPlainObject(x: unknown): x is Record<string, unknown> {
  if (typeof x !== 'object' || x === null || Array.isArray(x)) return false
  const proto = Object.getPrototypeOf(x) as unknown
  return proto === Object.prototype || proto === null
}

/**
 * An op is an object with exactly one verb from `verbs`, plus only the `extras` allowed.
 * Returns the verb; `{}` is allowed only when `defaultVerb` is given.
 */
export function opVerb(type: string, op: unknown, verbs: readonly string[], extras: readonly string[] = [], defaultVerb?: string): string {
  if (!isPlainObject(op)) throw new CrdtOpError(type, 'an op must be a JSON object')
  let verb: string | undefined
  for (const k of Object.keys(op)) {
    if (verbs.includes(k)) {
      if (verb !== undefined) throw new CrdtOpError(type, `an op has exactly one verb, got "${verb}" and "${k}"`)
      verb = k
    } else if (!extras.includes(k)) {
      throw new CrdtOpError(type, `unknown field "${k}" (expected one of ${[...verbs, ...extras].map((v) => `"${v}"`).join(', ')})`)
    }
  }
  if (verb === undefined) {
    if (defaultVerb !== undefined && Object.keys(op).length === 0) return defaultVerb
    throw new CrdtOpError(type, `missing verb (expected one of ${verbs.map((v) => `"${v}"`).join(', ')})`)
  }
  return verb
}

export function safeUint(type: string, what: string, x: unknown): number {
  if (typeof x !== 'number' || !Number.isSafeInteger(x) || x < 0) {
    throw new CrdtOpError(type, `${what} must be a safe integer >= 0, got ${JSON.stringify(x)}`)
  }
  return x
}

export function safeInt(type: string, what: string, x: unknown): number {
  if (typeof x !== 'number' || !Number.isSafeInteger(x)) {
    throw new CrdtOpError(type, `${what} must be a safe integer, got ${JSON.stringify(x)}`)
  }
  return x
}

/** A string or an array of strings, normalised to an array. */
export function stringList(type: string, what: string, x: unknown): string[] {
  if (typeof x === 'string') return [x]
  if (Array.isArray(x) && x.every((e) => typeof e === 'string')) return x as string[]
  throw new CrdtOpError(type, `${what} must be a string or an array of strings`)
}
