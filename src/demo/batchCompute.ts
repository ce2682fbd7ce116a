/**
 * The demo batch layer's computation: exact values of every bucketed view, per bucket, from the
 * raw events of the master dataset. It runs the views' own ingest rules (src/ingest/rules.ts), so
 * the batch view and the realtime view are the same function of the events, one exact and one
 * incremental; only the combination differs: counts are summed exactly, HLL keys keep the exact
 * set of elements (so a range query unions them exactly), OR-set keys their members, LWW-map keys
 * the latest field values by event time.
 *
 * Incremental: events are folded in as they are read, and buckets older than the retention window
 * are dropped, so memory is bounded by the window whatever the size of the master dataset.
 * Pure: no clock, no I/O; the caller passes times.
 */
import type { TypeName } from '../../crdts/index.js'
import { compileRule, type CompiledRule } from '../ingest/rules.js'
import { bucketStartOf, bucketSizeOf } from '../query/buckets.js'
import { parseDefinition } from '../store/definition.js'

type Acc = { kind: 'count'; n: number } | { kind: 'set'; members: Set<string> } | { kind: 'map'; fields: Map<string, { ts: number; value: unknown }> }

interface BucketedView {
  name: string
  type: TypeName
  sizeMs: number
  rule: CompiledRule
  /** bucket start -> key -> accumulator */
  buckets: Map<number, Map<string, Acc>>
}

export interface BatchLine {
  key: string
  value: unknown
}

export class BatchCompute {
  private readonly views: BucketedView[] = []
  /** Events read, and those no rule could use (a bad line in the master dataset). */
  events = 0
  unreadable = 0

  /**
   * `definitions`: the views file's {NAME: DEFINITION}; only views whose ingest rule has a bucket
   * get a batch view (the others have no horizon to catch up with).
   */
  constructor(definitions: Record<string, unknown>) {
    for (const [name, raw] of Object.entries(definitions)) {
      const def = parseDefinition(raw)
      const sizeMs = bucketSizeOf(def)
      // Event times in the master dataset are in the past: no drift bound applies to them.
      const rule = compileRule(def, { maxDriftMs: Number.MAX_SAFE_INTEGER })
      if (sizeMs === null || rule === null) continue
      this.views.push({ name, type: def.type, sizeMs, rule, buckets: new Map() })
    }
  }

  /** The bucketed views and their bucket sizes (ms). */
  get bucketed(): Array<{ name: string; sizeMs: number }> {
    return this.views.map((v) => ({ name: v.name, sizeMs: v.sizeMs }))
  }

  /** Folds one NDJSON line of the master dataset in; buckets starting before `keepFrom` are skipped. */
  addLine(line: string, keepFrom: number): void {
    let event: unknown
    try {
      event = JSON.parse(line)
    } catch {
      this.unreadable++
      return
    }
    if (event === null || typeof event !== 'object' || Array.isArray(event)) {
      this.unreadable++
      return
    }
    this.addEvent(event as Record<string, unknown>, keepFrom)
  }

  addEvent(event: Record<string, unknown>, keepFrom: number): void {
    this.events++
    for (const v of this.views) {
      const out = v.rule(event, 0)
      if (!('key' in out)) continue
      const start = bucketStartOf(out.key)
      if (start < keepFrom) continue
      let keys = v.buckets.get(start)
      if (keys === undefined) v.buckets.set(start, (keys = new Map()))
      fold(v.type, keys, out.key, out.op)
    }
  }

  /**
   * The batch view of `view` up to `horizon`: one line per key of every bucket that ends at or
   * before it (and starts at or after `keepFrom`), in no particular order.
   */
  *lines(view: string, horizon: number, keepFrom: number): Generator<BatchLine> {
    const v = this.views.find((x) => x.name === view)
    if (!v) throw new Error(`no bucketed view "${view}"`)
    for (const [start, keys] of v.buckets) {
      if (start < keepFrom || start + v.sizeMs > horizon) continue
      for (const [key, acc] of keys) yield { key, value: valueOf(acc) }
    }
  }

  /** Buckets (over all views) that a batch view with this horizon would hold. */
  coveredBuckets(horizon: number, keepFrom: number): number {
    let n = 0
    for (const v of this.views) for (const start of v.buckets.keys()) if (start >= keepFrom && start + v.sizeMs <= horizon) n++
    return n
  }

  /** Forgets buckets starting before `keepFrom`: they have left the retention window. */
  forget(keepFrom: number): void {
    for (const v of this.views) for (const start of [...v.buckets.keys()]) if (start < keepFrom) v.buckets.delete(start)
  }
}

function fold(type: TypeName, keys: Map<string, Acc>, key: string, op: Record<string, unknown>): void {
  let acc = keys.get(key)
  switch (type) {
    case 'gcounter':
    case 'pncounter': {
      if (acc === undefined) keys.set(key, (acc = { kind: 'count', n: 0 }))
      if (acc.kind === 'count') acc.n += typeof op.inc === 'number' ? op.inc : 0
      return
    }
    case 'hll':
    case 'orset': {
      if (acc === undefined) keys.set(key, (acc = { kind: 'set', members: new Set() }))
      if (acc.kind === 'set' && typeof op.add === 'string') acc.members.add(op.add)
      return
    }
    case 'lwwmap': {
      if (acc === undefined) keys.set(key, (acc = { kind: 'map', fields: new Map() }))
      if (acc.kind !== 'map') return
      const ts = typeof op.ts === 'number' ? op.ts : 0
      const set = op.set as Record<string, unknown>
      // The latest event wins; of two with one time, the one read later (appended later).
      for (const f of Object.keys(set)) {
        const held = acc.fields.get(f)
        if (held === undefined || ts >= held.ts) acc.fields.set(f, { ts, value: set[f] })
      }
      return
    }
  }
}

function valueOf(acc: Acc): unknown {
  switch (acc.kind) {
    case 'count':
      return acc.n
    case 'set':
      return [...acc.members]
    case 'map': {
      // No prototype: a field named "__proto__" is a field like any other.
      const out = Object.create(null) as Record<string, unknown>
      for (const [f, { value }] of acc.fields) out[f] = value
      return out
    }
  }
}
