/**
 * View definitions: a type and an optional ingest rule (CONTRACT.md, "Views"). Definitions are
 * untrusted JSON (HTTP bodies, views files, peers), so they are checked field by field, unknown
 * fields are refused, and the canonical JSON of a definition is what two definitions are compared by.
 */
import { isTypeName, type TypeName } from '../../crdts/index.js'
import { isPlainObject } from '../../crdts/validate.js'

export interface BucketRule {
  /** Event field holding the event time in ms since the epoch. */
  time: string
  /** Bucket size as written ("1h"); see `sizeMs`. */
  size: string
}

export interface IngestRule {
  where?: Record<string, string | number | boolean | null>
  key: string[]
  bucket?: BucketRule
  /** Element (orset, hll), field or fields to set (lwwmap), amount (counters). */
  value?: string | string[]
  time?: string
}

export interface ViewDefinition {
  type: TypeName
  ingest?: IngestRule
}

export class DefinitionError extends Error {
  override readonly name = 'DefinitionError'
  readonly code = 'bad_definition'
}

const SIZE_UNITS: Record<string, number> = { s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 }

/** Parses a bucket size such as "1h", "15m", "30s", "1d" to milliseconds. */
export function parseBucketSize(size: string): number {
  const m = /^([1-9][0-9]{0,8})(s|m|h|d)$/.exec(size)
  if (!m) throw new DefinitionError(`bucket size "${size}" must be a positive number and a unit s, m, h or d (e.g. "1h")`)
  return Number(m[1]) * (SIZE_UNITS[m[2] as string] as number)
}

function fieldName(x: unknown, what: string): string {
  if (typeof x !== 'string' || x.length === 0 || x.length > 256) throw new DefinitionError(`${what} must be a non-empty event field name`)
  return x
}

function only(obj: Record<string, unknown>, allowed: string[], what: string): void {
  for (const k of Object.keys(obj)) {
    if (!allowed.includes(k)) throw new DefinitionError(`unknown field "${k}" in ${what} (allowed: ${allowed.join(', ')})`)
  }
}

function parseIngest(raw: unknown, type: TypeName): IngestRule {
  if (!isPlainObject(raw)) throw new DefinitionError('"ingest" must be an object')
  only(raw, ['where', 'key', 'bucket', 'value', 'time'], '"ingest"')
  const rule: IngestRule = { key: [] }
  if (raw.where !== undefined) {
    if (!isPlainObject(raw.where)) throw new DefinitionError('"ingest.where" must be an object of field: value')
    const where: Record<string, string | number | boolean | null> = {}
    for (const [k, v] of Object.entries(raw.where)) {
      if (v !== null && typeof v !== 'string' && typeof v !== 'number' && typeof v !== 'boolean') {
        throw new DefinitionError(`"ingest.where.${k}" must be a string, number, boolean or null`)
      }
      where[fieldName(k, '"ingest.where" key')] = v
    }
    rule.where = where
  }
  if (!Array.isArray(raw.key) || raw.key.length === 0) throw new DefinitionError('"ingest.key" must be a non-empty array of event field names')
  rule.key = raw.key.map((k) => fieldName(k, '"ingest.key" entry'))
  if (raw.bucket !== undefined) {
    if (!isPlainObject(raw.bucket)) throw new DefinitionError('"ingest.bucket" must be {"time": FIELD, "size": "1h"}')
    only(raw.bucket, ['time', 'size'], '"ingest.bucket"')
    const time = fieldName(raw.bucket.time, '"ingest.bucket.time"')
    if (typeof raw.bucket.size !== 'string') throw new DefinitionError('"ingest.bucket.size" must be a string such as "1h"')
    parseBucketSize(raw.bucket.size)
    rule.bucket = { time, size: raw.bucket.size }
  }
  if (raw.value !== undefined) {
    if (type === 'lwwmap' && Array.isArray(raw.value)) {
      if (raw.value.length === 0) throw new DefinitionError('"ingest.value" must name at least one field')
      rule.value = raw.value.map((v) => fieldName(v, '"ingest.value" entry'))
    } else {
      rule.value = fieldName(raw.value, '"ingest.value"')
    }
  } else if (type === 'orset' || type === 'hll' || type === 'lwwmap') {
    throw new DefinitionError(`"ingest.value" is required for ${type} views`)
  }
  if (raw.time !== undefined) rule.time = fieldName(raw.time, '"ingest.time"')
  return rule
}

/** Checks an untrusted definition; throws DefinitionError with what to fix. */
export function parseDefinition(raw: unknown): ViewDefinition {
  if (!isPlainObject(raw)) throw new DefinitionError('a view definition must be a JSON object such as {"type": "gcounter"}')
  only(raw, ['type', 'ingest', 'name'], 'the definition')
  if (!isTypeName(raw.type)) {
    throw new DefinitionError(`"type" must be one of gcounter, pncounter, orset, lwwmap, hll (got ${JSON.stringify(raw.type)})`)
  }
  const def: ViewDefinition = { type: raw.type }
  if (raw.ingest !== undefined) def.ingest = parseIngest(raw.ingest, raw.type)
  return def
}

/** JSON with object keys sorted at every level: equal definitions give equal text. */
export function canonicalJson(x: unknown): string {
  if (Array.isArray(x)) return `[${x.map(canonicalJson).join(',')}]`
  if (x !== null && typeof x === 'object') {
    const obj = x as Record<string, unknown>
    const keys = Object.keys(obj)
      .filter((k) => obj[k] !== undefined)
      .sort()
    return `{${keys.map((k) => `${JSON.stringify(k)}:${canonicalJson(obj[k])}`).join(',')}}`
  }
  return JSON.stringify(x)
}

const NAME_BYTES_MAX = 1024

/** View names and keys: 1..1024 UTF-8 bytes, well-formed, not "." or "..". Returns an error text or null. */
export function checkName(s: string, what: string): string | null {
  if (s.length === 0) return `${what} must not be empty`
  if (s === '.' || s === '..') return `${what} must not be "." or ".."`
  if (!isWellFormed(s)) return `${what} is not valid UTF-8`
  if (Buffer.byteLength(s, 'utf8') > NAME_BYTES_MAX) return `${what} is longer than ${NAME_BYTES_MAX} UTF-8 bytes`
  return null
}

export function isWellFormed(s: string): boolean {
  return !/[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/.test(s)
}
