/**
 * `GET /query`: batch and realtime merged (CONTRACT.md). A bucket that ends at or before the batch
 * horizon is answered from the batch view (exact; a bucket it does not list is empty), a later one
 * from the realtime view. A plain (not bucketed) key is always realtime.
 *
 * Merge rules over the buckets of a range, per type:
 *   gcounter, pncounter  the sum of the buckets' counts.
 *   orset                the union of the buckets' members (sorted by UTF-16 code units).
 *   hll                  a union of sets, never a sum of estimates: the realtime buckets' sketches
 *                        are joined (register-wise max), and the batch buckets' elements are added
 *                        to the same sketch, so an element seen in two buckets counts once. When
 *                        every bucket comes from the batch view the answer is the exact size of the
 *                        union of the element sets ("error": 0). A batch bucket given as a bare
 *                        count cannot be unioned with anything: such a range is refused (400).
 *   lwwmap               field by field, the value from the latest bucket (by bucket start) that
 *                        has the field: a field last seen in an earlier bucket keeps that value.
 *                        Batch values carry no write stamps, so buckets, not stamps, order them.
 *
 * `exact` is true when every bucket the answer depends on is covered by the batch horizon: for a
 * point query, its bucket; for a range, every bucket that can start in [from, to) (so a range
 * reaching past the horizon is not exact even if no realtime bucket exists yet).
 */
import { hllAddElement, hllRead, hllUnion, type HLLState } from '../../crdts/hll.js'
import type { TypeName } from '../../crdts/types.js'
import type { ViewStore, View } from '../store/viewStore.js'
import { parseBucketKey } from './buckets.js'
import { batchValueOut, emptyBatchValue, mapObject, type BatchMap, type BatchValue, type BatchView } from './batchView.js'
import { QueryError, type BatchViews } from './batchViews.js'

export interface PointAnswer {
  value: unknown
  /** True when the value is the batch layer's exact one. */
  exact: boolean
  /** The batch view's value for a covered bucket (null otherwise). */
  batch: unknown
  /** The realtime value for a bucket after the horizon or a plain key (null for a covered bucket, whose realtime part expired). */
  realtime: unknown
  /** hll: the relative standard error of `value` (0 when exact). */
  error?: number
}

export interface RangeAnswer {
  value: unknown
  exact: boolean
  /** Buckets that contributed a value (batch entries and realtime keys). */
  buckets: number
  error?: number
}

export interface RangeQuery {
  /** The key fields: buckets are the keys `prefix|<ISO start>`. */
  prefix: string
  /** Bucket starts in [from, to), ms; omitted: unbounded. */
  from?: number
  to?: number
}

function realtimeValue(view: View, state: unknown): { value: unknown; error?: number } {
  if (view.def.type === 'hll') return hllRead((state ?? view.type.empty()) as HLLState)
  return { value: view.type.value(state ?? view.type.empty()) }
}

export function queryKey(store: ViewStore, batch: BatchViews, viewName: string, key: string): PointAnswer {
  const view = store.view(viewName)
  const type = view.def.type
  const bv = batch.current(view)
  if (bv !== undefined && batch.covers(view, key)) {
    const v = batchValueOut(type, bv.entries.get(key) ?? emptyBatchValue(type))
    const out: PointAnswer = { value: v, exact: true, batch: v, realtime: null }
    if (type === 'hll') out.error = 0
    return out
  }
  const rt = realtimeValue(view, view.states.get(key))
  const out: PointAnswer = { value: rt.value, exact: false, batch: null, realtime: rt.value }
  if (rt.error !== undefined) out.error = rt.error
  return out
}

interface Part {
  start: number
  /** A batch value, or a realtime state. */
  batch: BatchValue | undefined
  state: unknown
}

function lowerBound(keys: readonly string[], key: string): number {
  let lo = 0
  let hi = keys.length
  while (lo < hi) {
    const mid = (lo + hi) >>> 1
    if ((keys[mid] as string) < key) lo = mid + 1
    else hi = mid
  }
  return lo
}

export function queryRange(store: ViewStore, batch: BatchViews, viewName: string, q: RangeQuery): RangeAnswer {
  const view = store.view(viewName)
  const type = view.def.type
  const size = batch.sizeOf(view)
  if (Number.isNaN(size)) throw new QueryError(400, 'not_bucketed', `view "${viewName}" has no bucketed ingest rule; range queries are over buckets`)
  const from = q.from ?? -Infinity
  const to = q.to ?? Infinity
  if (from > to) throw new QueryError(400, 'bad_param', `"from" (${q.from}) is after "to" (${q.to})`)
  const bv = batch.current(view)
  const horizon = bv?.horizon ?? -Infinity
  const scanPrefix = `${q.prefix}|`
  const inRange = (key: string): number => {
    const b = parseBucketKey(key)
    if (b === null || b.prefix !== q.prefix || b.start < from || b.start >= to) return NaN
    return b.start
  }
  const parts: Part[] = []
  let fromRealtime = 0
  for (const key of view.states.ascending(scanPrefix)) {
    if (!key.startsWith(scanPrefix)) break
    const start = inRange(key)
    // Covered keys are expired; one that is not yet (a batch view that just arrived) is the batch's.
    if (Number.isNaN(start) || start + size <= horizon) continue
    parts.push({ start, batch: undefined, state: view.states.get(key) })
    fromRealtime++
  }
  if (bv !== undefined) {
    for (let i = lowerBound(bv.keys, scanPrefix); i < bv.keys.length; i++) {
      const key = bv.keys[i] as string
      if (!key.startsWith(scanPrefix)) break
      const start = inRange(key)
      if (Number.isNaN(start)) continue
      parts.push({ start, batch: bv.entries.get(key), state: undefined })
    }
  }
  parts.sort((a, b) => a.start - b.start)
  // Every bucket that can start in [from, to) ends by ceil(to / size) * size.
  const exact = fromRealtime === 0 && Number.isFinite(to) && Math.ceil(to / size) * size <= horizon
  return merge(view, type, bv, parts, exact)
}

function merge(view: View, type: TypeName, bv: BatchView | undefined, parts: Part[], exact: boolean): RangeAnswer {
  const buckets = parts.length
  switch (type) {
    case 'gcounter':
    case 'pncounter': {
      let sum = 0
      for (const p of parts) sum += p.batch !== undefined ? (p.batch as number) : (view.type.value(p.state) as number)
      return { value: sum, exact, buckets }
    }
    case 'orset': {
      const all = new Set<string>()
      for (const p of parts) {
        const members = p.batch !== undefined ? (p.batch as readonly string[]) : (view.type.value(p.state) as string[])
        for (const m of members) all.add(m)
      }
      return { value: [...all].sort(), exact, buckets }
    }
    case 'lwwmap': {
      const out = Object.create(null) as Record<string, unknown>
      for (const p of parts) Object.assign(out, p.batch !== undefined ? mapObject(p.batch as BatchMap) : (view.type.value(p.state) as Record<string, unknown>))
      return { value: out, exact, buckets }
    }
    case 'hll': {
      const elements: Array<readonly string[]> = []
      const sketches: HLLState[] = []
      for (const p of parts) {
        if (p.batch === undefined) sketches.push(p.state as HLLState)
        else if (typeof p.batch === 'number') {
          throw new QueryError(
            400,
            'not_unionable',
            `the batch view of "${bv?.view}" gives some buckets of this range as bare counts; a range query unions HLL buckets, which needs their elements: import hll values as arrays of distinct elements to query ranges`,
          )
        } else elements.push(p.batch as readonly string[])
      }
      if (sketches.length === 0) {
        const all = new Set<string>()
        for (const es of elements) for (const e of es) all.add(e)
        // The exact size of what is known; `exact` says whether later realtime buckets may add to it.
        return { value: all.size, exact, buckets, error: 0 }
      }
      const sketch = hllUnion(sketches, (sketches[0] as HLLState).p)
      for (const es of elements) for (const e of es) hllAddElement(sketch, e)
      const r = hllRead(sketch)
      return { value: r.value, exact: false, buckets, error: r.error }
    }
  }
}
