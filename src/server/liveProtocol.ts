/**
 * The client side of the live subscription (docs/live.md): what a client may ask for, checked
 * completely before anything changes. A message that fails a check is answered with an error
 * frame and leaves the client's current subscription as it was.
 */

/** One subscription of a client: a view and which of its keys. */
export interface SubSpec {
  /** The client's name for it: updates come back under this id. */
  id: string
  view: string
  /** Keys starting with this (default: every key). Excludes `keys`. */
  prefix?: string
  /** Exactly these keys. Excludes `prefix`, `buckets` and `recent`. */
  keys?: string[]
  /** Bucketed views only: keys whose bucket is one of the last N (by the node's clock). */
  buckets?: number
  /** Send the size of a value (members of a set, fields of a map) instead of the value. */
  size?: boolean
  /** No snapshot; only the N keys changed most recently (e.g. the last profiles touched). */
  recent?: number
}

export interface Subscription {
  subs: SubSpec[]
  stats: boolean
  /** Frames per second this client accepts at most (the server's own bound applies too). */
  rate: number
}

export class LiveProtocolError extends Error {
  override readonly name = 'LiveProtocolError'
}

export const LIVE_LIMITS = {
  subs: 16,
  keys: 1000,
  idBytes: 64,
  keyBytes: 1024,
  buckets: 1440,
  recent: 100,
  maxRate: 4,
  minRate: 0.1,
} as const

const SUB_FIELDS = new Set(['id', 'view', 'prefix', 'keys', 'buckets', 'size', 'recent'])
const TOP_FIELDS = new Set(['type', 'subs', 'stats', 'rate'])

const isObject = (x: unknown): x is Record<string, unknown> => x !== null && typeof x === 'object' && !Array.isArray(x)
const utf8Bytes = (s: string) => Buffer.byteLength(s, 'utf8')

function str(v: unknown, what: string, max: number, allowEmpty: boolean): string {
  if (typeof v !== 'string') throw new LiveProtocolError(`${what} must be a string`)
  if (!allowEmpty && v.length === 0) throw new LiveProtocolError(`${what} must not be empty`)
  if (utf8Bytes(v) > max) throw new LiveProtocolError(`${what} is longer than ${max} bytes`)
  return v
}

function int(v: unknown, what: string, min: number, max: number): number {
  if (typeof v !== 'number' || !Number.isInteger(v) || v < min || v > max) throw new LiveProtocolError(`${what} must be an integer from ${min} to ${max}`)
  return v
}

/** What the node answers about a view the client names: undefined when it has no such view. */
export type ViewLookup = (name: string) => { bucketed: boolean } | undefined

/**
 * Parses one text frame into a subscription. Throws LiveProtocolError (an error frame) for a
 * message that is JSON but not a valid subscription; SyntaxError for text that is not JSON.
 */
export function parseSubscription(text: string, lookup: ViewLookup): Subscription {
  const msg: unknown = JSON.parse(text)
  if (!isObject(msg)) throw new LiveProtocolError('a message must be a JSON object like {"type": "subscribe", "subs": [...]}')
  if (msg.type !== 'subscribe') throw new LiveProtocolError(`unknown message type ${JSON.stringify(msg.type)}; the only one is "subscribe"`)
  for (const k of Object.keys(msg)) if (!TOP_FIELDS.has(k)) throw new LiveProtocolError(`unknown field "${k}" (allowed: ${[...TOP_FIELDS].join(', ')})`)
  const rawSubs = msg.subs ?? []
  if (!Array.isArray(rawSubs)) throw new LiveProtocolError('"subs" must be an array')
  if (rawSubs.length > LIVE_LIMITS.subs) throw new LiveProtocolError(`at most ${LIVE_LIMITS.subs} subscriptions per client, got ${rawSubs.length}`)
  const ids = new Set<string>()
  const subs = rawSubs.map((raw, i) => {
    const where = `subs[${i}]`
    if (!isObject(raw)) throw new LiveProtocolError(`${where} must be an object`)
    for (const k of Object.keys(raw)) if (!SUB_FIELDS.has(k)) throw new LiveProtocolError(`${where}: unknown field "${k}" (allowed: ${[...SUB_FIELDS].join(', ')})`)
    const id = str(raw.id, `${where}.id`, LIVE_LIMITS.idBytes, false)
    if (ids.has(id)) throw new LiveProtocolError(`${where}: the id "${id}" is used twice`)
    ids.add(id)
    const view = str(raw.view, `${where}.view`, LIVE_LIMITS.keyBytes, false)
    const info = lookup(view)
    if (info === undefined) throw new LiveProtocolError(`${where}: no view named "${view}"`)
    const spec: SubSpec = { id, view }
    if (raw.keys !== undefined) {
      if (raw.prefix !== undefined || raw.buckets !== undefined || raw.recent !== undefined) throw new LiveProtocolError(`${where}: "keys" excludes "prefix", "buckets" and "recent"`)
      if (!Array.isArray(raw.keys)) throw new LiveProtocolError(`${where}.keys must be an array of strings`)
      if (raw.keys.length > LIVE_LIMITS.keys) throw new LiveProtocolError(`${where}.keys: at most ${LIVE_LIMITS.keys} keys`)
      spec.keys = [...new Set(raw.keys.map((k, j) => str(k, `${where}.keys[${j}]`, LIVE_LIMITS.keyBytes, false)))]
    } else {
      spec.prefix = raw.prefix === undefined ? '' : str(raw.prefix, `${where}.prefix`, LIVE_LIMITS.keyBytes, true)
    }
    if (raw.buckets !== undefined) {
      if (!info.bucketed) throw new LiveProtocolError(`${where}: "buckets" needs a bucketed view, and "${view}" has no bucket in its ingest rule`)
      spec.buckets = int(raw.buckets, `${where}.buckets`, 1, LIVE_LIMITS.buckets)
    }
    if (raw.recent !== undefined) spec.recent = int(raw.recent, `${where}.recent`, 1, LIVE_LIMITS.recent)
    if (raw.size !== undefined) {
      if (typeof raw.size !== 'boolean') throw new LiveProtocolError(`${where}.size must be true or false`)
      spec.size = raw.size
    }
    return spec
  })
  if (msg.stats !== undefined && typeof msg.stats !== 'boolean') throw new LiveProtocolError('"stats" must be true or false')
  let rate: number = LIVE_LIMITS.maxRate
  if (msg.rate !== undefined) {
    if (typeof msg.rate !== 'number' || !Number.isFinite(msg.rate) || msg.rate < LIVE_LIMITS.minRate || msg.rate > LIVE_LIMITS.maxRate) {
      throw new LiveProtocolError(`"rate" must be a number of frames per second from ${LIVE_LIMITS.minRate} to ${LIVE_LIMITS.maxRate}`)
    }
    rate = msg.rate
  }
  return { subs, stats: msg.stats === true, rate }
}
