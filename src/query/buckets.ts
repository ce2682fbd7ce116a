/**
 * Bucket keys as ingest rules write them (src/ingest/rules.ts): `<fields joined by |>|<ISO start>`,
 * the start being exactly what `Date.prototype.toISOString` prints. A key is bucketed only if its
 * last `|`-separated part is such a string, round trip included ("2025-06-01T10:00:00Z" or
 * "2025-02-30T00:00:00.000Z" are not): anything else is a plain key, and plain keys never expire.
 */
import { parseBucketSize, type ViewDefinition } from '../store/definition.js'

export interface BucketKey {
  /** The key's fields, without the bucket part (the `prefix` of a range query). */
  prefix: string
  /** Bucket start, ms since the epoch. */
  start: number
}

/** What toISOString prints for years 0..9999, and for the six-digit signed years around them. */
const ISO = /^(?:\d{4}|[+-]\d{6})-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$/

/** Suffix -> start (NaN: not a bucket). Keys come in runs of one bucket; parsing each would cost. */
const CACHE_MAX = 4096
const cache = new Map<string, number>()

/** The start (ms) named by an ISO bucket suffix, or NaN if the text is not one toISOString prints. */
export function parseBucketStart(text: string): number {
  let t = cache.get(text)
  if (t !== undefined) return t
  t = NaN
  if (ISO.test(text)) {
    const ms = Date.parse(text)
    if (!Number.isNaN(ms) && new Date(ms).toISOString() === text) t = ms
  }
  if (cache.size >= CACHE_MAX) cache.clear()
  cache.set(text, t)
  return t
}

/** The fields and bucket start of a bucketed key, or null for a plain key. */
export function parseBucketKey(key: string): BucketKey | null {
  const bar = key.lastIndexOf('|')
  if (bar < 0) return null
  const start = parseBucketStart(key.slice(bar + 1))
  return Number.isNaN(start) ? null : { prefix: key.slice(0, bar), start }
}

/** Bucket start of a key, or NaN; the allocation-free form of parseBucketKey for hot paths. */
export function bucketStartOf(key: string): number {
  const bar = key.lastIndexOf('|')
  return bar < 0 ? NaN : parseBucketStart(key.slice(bar + 1))
}

/** The view's bucket size in ms, or null when its ingest rule has no bucket. */
export function bucketSizeOf(def: ViewDefinition): number | null {
  const b = def.ingest?.bucket
  return b ? parseBucketSize(b.size) : null
}

/** The key of bucket `start` under `prefix`, as an ingest rule writes it. */
export function bucketKey(prefix: string, start: number): string {
  return `${prefix}|${new Date(start).toISOString()}`
}

/**
 * A bucket is covered by horizon T when it ends at or before T: start + size <= T. Every event of
 * a covered bucket happened before T, so the batch layer's exact result for T holds all of it.
 */
export function isCovered(start: number, sizeMs: number, horizon: number): boolean {
  return start + sizeMs <= horizon
}

/**
 * Parses a time given as ms since the epoch (digits) or as an ISO 8601 date-time with a zone
 * ("2025-06-01T10:00:00Z", "...+02:00"); NaN when it is neither.
 */
export function parseTime(raw: string): number {
  if (/^[0-9]{1,16}$/.test(raw)) {
    const n = Number(raw)
    return Number.isSafeInteger(n) ? n : NaN
  }
  const m = /^(\d{4})-(\d{2})-(\d{2})T\d{2}:\d{2}(?::\d{2}(?:\.\d{1,3})?)?(?:Z|[+-]\d{2}:\d{2})$/.exec(raw)
  if (!m) return NaN
  // Date.parse rolls "2025-02-30" over to March 2: a day the month does not have is refused.
  const [y, mo, d] = [Number(m[1]), Number(m[2]), Number(m[3])]
  if (mo < 1 || mo > 12 || d < 1 || d > new Date(Date.UTC(y, mo, 0)).getUTCDate()) return NaN
  const ms = Date.parse(raw)
  return Number.isNaN(ms) || ms < 0 ? NaN : ms
}
