/**
 * Ingest rules (CONTRACT.md, "Views"): the incremental function that turns one incoming event
 * into one op of one view. Pure: the caller passes the wall clock, so a rule is a function of
 * (event, now) and nothing else.
 *
 * An event is untrusted JSON. A rule either filters it out (`where`), turns it into exactly one
 * (key, op), or rejects it with a reason; it never produces half an op. Field lookups go through
 * own properties only, so an event without a field "constructor" does not find
 * Object.prototype.constructor there.
 */
import type { TypeName } from '../../crdts/index.js'
import { checkName, parseBucketSize, type IngestRule, type ViewDefinition } from '../store/definition.js'

/** A JSON op of the view's type, as `POST /views/:view/:key` takes it. */
export type IngestOp = Record<string, unknown>

export type RuleOutcome = { key: string; op: IngestOp } | { skip: 'filtered' } | { reject: string }

/** `now` is the node's wall clock in ms; times further ahead than the drift bound are refused. */
export type CompiledRule = (event: Record<string, unknown>, now: number) => RuleOutcome

export interface RuleOptions {
  /** Event times more than this many ms ahead of `now` are refused (--max-drift). */
  maxDriftMs: number
}

export const FILTERED: RuleOutcome = Object.freeze({ skip: 'filtered' as const })

const hasOwn = Object.prototype.hasOwnProperty

function own(event: Record<string, unknown>, field: string): unknown {
  return hasOwn.call(event, field) ? event[field] : undefined
}

function describe(v: unknown): string {
  if (v === null) return 'null'
  if (Array.isArray(v)) return 'an array'
  return typeof v === 'object' ? 'an object' : JSON.stringify(v)
}

/** A key part or a set/sketch element: strings as they are, finite numbers as String(n). */
function scalarText(v: unknown): string | undefined {
  if (typeof v === 'string') return v
  if (typeof v === 'number' && Number.isFinite(v)) return String(v)
  return undefined
}

/**
 * Reads an event time: a number (ms since the epoch) or, when it cannot be used, the reason as a
 * string. The two never mix: a time is always a number.
 */
function readTime(event: Record<string, unknown>, field: string, now: number, maxDriftMs: number): number | string {
  const t = own(event, field)
  if (t === undefined) return `missing time field "${field}"`
  if (typeof t !== 'number' || !Number.isSafeInteger(t) || t < 0) {
    return `time field "${field}" must be a non-negative integer of ms since the epoch, got ${describe(t)}`
  }
  if (t > now + maxDriftMs) return `time field "${field}" (${t}) is more than ${maxDriftMs} ms ahead of the node's clock (--max-drift)`
  return t
}

/** ISO start of bucket number `n`; undefined if it is out of Date's range. */
function bucketStart(n: number, sizeMs: number): string | undefined {
  const d = new Date(n * sizeMs)
  return Number.isNaN(d.getTime()) ? undefined : d.toISOString()
}

/** Events come in bursts of one bucket: formatting a Date per event would cost more than the op. */
const BUCKET_CACHE_MAX = 4096

type ValueFn = (event: Record<string, unknown>, ts: number | undefined) => IngestOp | string

function valueFn(type: TypeName, rule: IngestRule): ValueFn {
  const value = rule.value
  switch (type) {
    case 'gcounter':
    case 'pncounter': {
      if (value === undefined) return () => ({ inc: 1 })
      const field = typeof value === 'string' ? value : (value[0] as string)
      const min = type === 'gcounter' ? 0 : -Number.MAX_SAFE_INTEGER
      return (event) => {
        const n = own(event, field)
        if (n === undefined) return `missing amount field "${field}"`
        if (typeof n !== 'number' || !Number.isSafeInteger(n) || n < min) {
          return `amount field "${field}" must be a safe integer${type === 'gcounter' ? ' >= 0' : ''}, got ${describe(n)}`
        }
        return { inc: n }
      }
    }
    case 'orset':
    case 'hll': {
      // parseDefinition requires a value for these types.
      const field = typeof value === 'string' ? value : ((value as string[])[0] as string)
      return (event) => {
        const v = own(event, field)
        if (v === undefined) return `missing element field "${field}"`
        const e = scalarText(v)
        if (e === undefined) return `element field "${field}" must be a string or a number, got ${describe(v)}`
        return { add: e }
      }
    }
    case 'lwwmap': {
      const fields = typeof value === 'string' ? [value] : (value as string[])
      return (event, ts) => {
        // No prototype: a field named "__proto__" is a field like any other.
        const set = Object.create(null) as Record<string, unknown>
        let n = 0
        for (const f of fields) {
          if (!hasOwn.call(event, f)) continue
          set[f] = event[f]
          n++
        }
        if (n === 0) return `none of the fields ${fields.map((f) => `"${f}"`).join(', ')} is present`
        return ts === undefined ? { set } : { set, ts }
      }
    }
  }
}

/** Compiles a view's ingest rule; null for a view without one. */
export function compileRule(def: ViewDefinition, opts: RuleOptions): CompiledRule | null {
  const rule = def.ingest
  if (!rule) return null
  const maxDrift = opts.maxDriftMs
  const where = rule.where ? Object.entries(rule.where) : []
  const keyFields = rule.key
  const bucketField = rule.bucket?.time
  const bucketMs = rule.bucket ? parseBucketSize(rule.bucket.size) : 0
  const timeField = rule.time ?? bucketField
  const value = valueFn(def.type, rule)
  // Only lwwmap ops carry an event time; counters, sets and sketches have no use for it.
  const stamps = def.type === 'lwwmap' && timeField !== undefined
  const buckets = new Map<number, string | undefined>()

  return (event, now) => {
    for (const [f, v] of where) {
      if (!hasOwn.call(event, f) || event[f] !== v) return FILTERED
    }
    let ts: number | undefined
    if (timeField !== undefined) {
      const t = readTime(event, timeField, now, maxDrift)
      if (typeof t === 'string') return { reject: t }
      ts = t
    }
    let key = ''
    for (let i = 0; i < keyFields.length; i++) {
      const f = keyFields[i] as string
      const v = own(event, f)
      const part = scalarText(v)
      if (part === undefined) {
        return { reject: v === undefined ? `missing key field "${f}"` : `key field "${f}" must be a string or a number, got ${describe(v)}` }
      }
      key = i === 0 ? part : `${key}|${part}`
    }
    if (bucketField !== undefined) {
      const t = bucketField === timeField ? (ts as number) : readTime(event, bucketField, now, maxDrift)
      if (typeof t === 'string') return { reject: t }
      const n = Math.floor(t / bucketMs)
      let start = buckets.get(n)
      if (start === undefined) {
        start = bucketStart(n, bucketMs)
        if (buckets.size >= BUCKET_CACHE_MAX) buckets.clear()
        buckets.set(n, start)
      }
      if (start === undefined) return { reject: `time field "${bucketField}" (${t}) is outside the dates a bucket can name` }
      key = `${key}|${start}`
    }
    const bad = checkName(key, 'the key')
    if (bad) return { reject: bad }
    const op = value(event, stamps ? ts : undefined)
    if (typeof op === 'string') return { reject: op }
    return { key, op }
  }
}
