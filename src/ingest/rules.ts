/**
 * Ingest rules (CONTRACT.md, "Views"): the incremental function that turns one incoming event
 * into one op of one view. Pure: the caller passes the wall clock, so a rule is a function of
 * (event, now) and nothing else.
 *
 * An event is untrusted JSON. A rule either filters it out (`where`), turns it into exactly one
 * (key, op), or rejects it with a reason; it never produces half an op. Field lookups go through
 * own properties only, so an event without a field "constructor" does not find
 * Object.prototype.constructor there.
 *
 * Two forms share one reading of the event (`RuleReader`): `compileRule` makes the op of one
 * event (the reference semantics, and what tests check); the ingest path (groups.ts) reads the
 * same parts without building an op per event and folds the events of one key into one op.
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

export function own(event: Record<string, unknown>, field: string): unknown {
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

/** String.prototype.isWellFormed (ES2024, in Node 20; not yet in the TypeScript lib we target). */
export const wellFormed = (s: string): boolean => (s as unknown as { isWellFormed(): boolean }).isWellFormed()

/** ISO start of bucket number `n`; undefined if it is out of Date's range. */
function bucketStart(n: number, sizeMs: number): string | undefined {
  const d = new Date(n * sizeMs)
  return Number.isNaN(d.getTime()) ? undefined : d.toISOString()
}

/** Events come in bursts of one bucket: formatting a Date per event would cost more than the op. */
const BUCKET_CACHE_MAX = 4096

/**
 * The parts of an event one rule reads, in the order the rule judges them. Each method returns
 * null when the event passes, or the reason it cannot be used; what it read is left in the
 * reader's fields (`ts`, `bucket`, `part`, `amount`, `element`) until the next call, so reading
 * an event allocates nothing but what a reason needs.
 */
export class RuleReader {
  readonly type: TypeName
  readonly keyFields: readonly string[]
  /** Bucket size in ms; 0 when the rule has no bucket. */
  readonly bucketMs: number
  /** Only lwwmap ops carry an event time; counters, sets and sketches have no use for it. */
  readonly stamps: boolean
  /** The amount field (counters, undefined: 1) or the element field (orset, hll). */
  readonly valueField: string | undefined
  /** The fields an lwwmap rule sets. */
  readonly setFields: readonly string[]
  private readonly where: ReadonlyArray<readonly [string, unknown]>
  private readonly bucketField: string | undefined
  private readonly timeField: string | undefined
  private readonly maxDrift: number
  private readonly buckets = new Map<number, string | undefined>()

  /** Event time (with a time field), bucket number (with a bucket), key without the bucket. */
  ts: number | undefined = undefined
  bucket = 0
  part = ''
  amount = 1
  element = ''

  constructor(def: ViewDefinition & { ingest: IngestRule }, opts: RuleOptions) {
    const rule = def.ingest
    this.type = def.type
    this.where = rule.where ? Object.entries(rule.where) : []
    this.keyFields = rule.key
    this.bucketField = rule.bucket?.time
    this.bucketMs = rule.bucket ? parseBucketSize(rule.bucket.size) : 0
    this.timeField = rule.time ?? this.bucketField
    this.maxDrift = opts.maxDriftMs
    this.stamps = def.type === 'lwwmap' && this.timeField !== undefined
    const value = rule.value
    this.valueField = def.type === 'lwwmap' || value === undefined ? undefined : typeof value === 'string' ? value : value[0]
    this.setFields = def.type !== 'lwwmap' ? [] : typeof value === 'string' ? [value] : (value ?? [])
  }

  /** False when `where` filters the event out: neither taken nor rejected. */
  matches(event: Record<string, unknown>): boolean {
    const where = this.where
    for (let i = 0; i < where.length; i++) {
      const [f, v] = where[i] as readonly [string, unknown]
      if (!hasOwn.call(event, f) || event[f] !== v) return false
    }
    return true
  }

  /** Reads the time, the key fields and the bucket (`ts`, `part`, `bucket`). */
  locate(event: Record<string, unknown>, now: number): string | null {
    let ts: number | undefined
    if (this.timeField !== undefined) {
      const why = this.readTime(event, this.timeField, now)
      if (why !== null) return why
      ts = this.t
    }
    this.ts = ts
    const keyFields = this.keyFields
    let key = ''
    for (let i = 0; i < keyFields.length; i++) {
      const f = keyFields[i] as string
      const v = own(event, f)
      const part = scalarText(v)
      if (part === undefined) return v === undefined ? `missing key field "${f}"` : `key field "${f}" must be a string or a number, got ${describe(v)}`
      key = i === 0 ? part : `${key}|${part}`
    }
    this.part = key
    if (this.bucketField !== undefined) {
      let t = ts as number
      if (this.bucketField !== this.timeField) {
        const why = this.readTime(event, this.bucketField, now)
        if (why !== null) return why
        t = this.t
      }
      this.bucket = Math.floor(t / this.bucketMs)
    }
    return null
  }

  /** The key of (`part`, `bucket`): `part` itself without a bucket; undefined if the bucket has no date. */
  keyOf(part: string, bucket: number): string | undefined {
    if (this.bucketField === undefined) return part
    let start = this.buckets.get(bucket)
    if (start === undefined) {
      start = bucketStart(bucket, this.bucketMs)
      if (this.buckets.size >= BUCKET_CACHE_MAX) this.buckets.clear()
      this.buckets.set(bucket, start)
    }
    return start === undefined ? undefined : `${part}|${start}`
  }

  /** Why `key` (from `keyOf`) cannot be used, or null. */
  keyProblem(key: string | undefined): string | null {
    if (key === undefined) return `time field "${this.bucketField as string}" (${this.bucket * this.bucketMs}) is outside the dates a bucket can name`
    // The common case without checkName's regex and byte count: a short well-formed key (at most
    // 3 UTF-8 bytes per UTF-16 unit, so 341 units stay within 1024 bytes).
    if (key.length > 2 && key.length <= 341 && wellFormed(key)) return null
    return checkName(key, 'the key')
  }

  /** Counters: reads `amount` (1 without an amount field). */
  readAmount(event: Record<string, unknown>): string | null {
    const field = this.valueField
    if (field === undefined) {
      this.amount = 1
      return null
    }
    const n = own(event, field)
    if (n === undefined) return `missing amount field "${field}"`
    const min = this.type === 'gcounter' ? 0 : -Number.MAX_SAFE_INTEGER
    if (typeof n !== 'number' || !Number.isSafeInteger(n) || n < min) {
      return `amount field "${field}" must be a safe integer${this.type === 'gcounter' ? ' >= 0' : ''}, got ${describe(n)}`
    }
    this.amount = n
    return null
  }

  /** orset, hll: reads `element`. */
  readElement(event: Record<string, unknown>): string | null {
    // parseDefinition requires a value for these types.
    const field = this.valueField as string
    const v = own(event, field)
    if (v === undefined) return `missing element field "${field}"`
    const e = scalarText(v)
    if (e === undefined) return `element field "${field}" must be a string or a number, got ${describe(v)}`
    this.element = e
    return null
  }

  /** lwwmap: the reason when none of the fields is present. */
  noFields(): string {
    return `none of the fields ${this.setFields.map((f) => `"${f}"`).join(', ')} is present`
  }

  private t = 0

  /** Reads an event time into `t`: a non-negative safe integer at most the drift bound ahead of `now`. */
  private readTime(event: Record<string, unknown>, field: string, now: number): string | null {
    const t = own(event, field)
    if (t === undefined) return `missing time field "${field}"`
    if (typeof t !== 'number' || !Number.isSafeInteger(t) || t < 0) {
      return `time field "${field}" must be a non-negative integer of ms since the epoch, got ${describe(t)}`
    }
    if (t > now + this.maxDrift) return `time field "${field}" (${t}) is more than ${this.maxDrift} ms ahead of the node's clock (--max-drift)`
    this.t = t
    return null
  }
}

/** Sets `out[f] = value` even for f = "__proto__", which plain assignment would turn into a prototype change. */
export function setField(out: Record<string, unknown>, f: string, value: unknown): void {
  if (f === '__proto__') Object.defineProperty(out, f, { value, enumerable: true, writable: true, configurable: true })
  else out[f] = value
}

/** Compiles a view's ingest rule to its one-event form; null for a view without one. */
export function compileRule(def: ViewDefinition, opts: RuleOptions): CompiledRule | null {
  if (!def.ingest) return null
  const r = new RuleReader(def as ViewDefinition & { ingest: IngestRule }, opts)
  return (event, now) => {
    if (!r.matches(event)) return FILTERED
    const why = r.locate(event, now)
    if (why !== null) return { reject: why }
    const key = r.keyOf(r.part, r.bucket)
    const bad = r.keyProblem(key)
    if (bad !== null) return { reject: bad }
    let op: IngestOp
    switch (r.type) {
      case 'gcounter':
      case 'pncounter': {
        const no = r.readAmount(event)
        if (no !== null) return { reject: no }
        op = { inc: r.amount }
        break
      }
      case 'orset':
      case 'hll': {
        const no = r.readElement(event)
        if (no !== null) return { reject: no }
        op = { add: r.element }
        break
      }
      case 'lwwmap': {
        const set: Record<string, unknown> = {}
        let n = 0
        for (const f of r.setFields) {
          if (!hasOwn.call(event, f)) continue
          setField(set, f, event[f])
          n++
        }
        if (n === 0) return { reject: r.noFields() }
        op = r.stamps ? { set, ts: r.ts } : { set }
        break
      }
    }
    return { key: key as string, op }
  }
}
