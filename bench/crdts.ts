/**
 * The `crdts` suite: hot-path throughput, heap per key, join and encoding size of every type,
 * and the cost of a peer's small delta joined into one large OR-set.
 *
 * Every contender of a figure runs over the same pre-generated key sequence, in the same
 * process, interleaved run by run (see timeSideBySide), so the ratios hold on noisy machines;
 * times are process CPU time, which another process's load disturbs far less than wall time.
 * Each throughput loop is written out per contender rather than shared through a generic
 * helper: one call site seeing several types would go megamorphic and measure V8's inline
 * caches instead of the type.
 *
 * Modelling choices (documented because they decide the numbers):
 * - Keys are `key:<i>`; the op sequence draws them uniformly (the headline) or Zipf(s = 1).
 * - Replica ids are 6-byte strings `node-1`..`node-3`, as a `--id` would typically be.
 * - Yjs: one Y.Doc per view, a top-level Y.Map `view` whose values are nested Y.Maps, one per
 *   key, with the count under field `n` incremented by set(get + 1): how a y-websocket user
 *   would lay out a keyed collection of counters. One `doc.transact` per 1000 ops.
 */
import * as Y from 'yjs'
import { gcounter, type GCounterState } from '../crdts/gcounter.js'
import { pncounter } from '../crdts/pncounter.js'
import { orset, type ORSetOp, type ORSetState } from '../crdts/orset.js'
import { lwwmap, type LWWMapOp, type LWWMapState } from '../crdts/lwwmap.js'
import { hll, type HLLOp, type HLLState } from '../crdts/hll.js'
import { encodeState } from '../crdts/codec.js'
import type { AnyCrdtType, OpContext, TypeName } from '../crdts/types.js'
import { gc, heapUsed, timeSideBySide, type Suite, type SuiteOptions } from './report.js'

const BENCH = 'crdts'

/** mulberry32: a tiny seeded PRNG, so every run draws the same sequences. */
type Rng = () => number
function prng(seed: number): Rng {
  let a = seed >>> 0
  return () => {
    a = (a + 0x6d2b79f5) >>> 0
    let t = a
    t = Math.imul(t ^ (t >>> 15), t | 1)
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61)
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296
  }
}
const randInt = (rng: Rng, n: number): number => Math.floor(rng() * n)

function makeKeys(n: number, prefix = 'key:'): string[] {
  const keys: string[] = new Array<string>(n)
  for (let i = 0; i < n; i++) keys[i] = prefix + i
  return keys
}

function uniformSeq(keys: readonly string[], m: number, rng: Rng): string[] {
  const seq: string[] = new Array<string>(m)
  for (let i = 0; i < m; i++) seq[i] = keys[randInt(rng, keys.length)] as string
  return seq
}

/** Zipf(s) over the keys, ranks shuffled so the hot keys are not simply the first created. */
function zipfSeq(keys: readonly string[], m: number, rng: Rng, s = 1): string[] {
  const n = keys.length
  const cdf = new Float64Array(n)
  let total = 0
  for (let r = 0; r < n; r++) {
    total += 1 / (r + 1) ** s
    cdf[r] = total
  }
  const byRank = keys.slice()
  for (let i = n - 1; i > 0; i--) {
    const j = randInt(rng, i + 1)
    const t = byRank[i] as string
    byRank[i] = byRank[j] as string
    byRank[j] = t
  }
  const seq: string[] = new Array<string>(m)
  for (let i = 0; i < m; i++) {
    const u = rng() * total
    let lo = 0
    let hi = n - 1
    while (lo < hi) {
      const mid = (lo + hi) >> 1
      if ((cdf[mid] as number) < u) lo = mid + 1
      else hi = mid
    }
    seq[i] = byRank[lo] as string
  }
  return seq
}

const REPLICAS = ['node-1', 'node-2', 'node-3'] as const
const T0 = 1_700_000_000_000
/** Field names of the lwwmap workloads: what a user-profile view might hold. */
const FIELDS = ['name', 'email', 'plan', 'country', 'city', 'device', 'referrer', 'last_seen']
const ctxOf = (replica: string, ts = T0, c = 0): OpContext => ({ replica, time: { ts, c } })

/** Keeps results reachable so V8 cannot drop the work that built them. */
let sink: unknown
function keep(x: unknown): void {
  sink = x
}

// ---------------------------------------------------------------------------------------------
// Counter hot path

const INC1 = { inc: 1 }
const CTX1 = ctxOf('node-1')

function rawMapInc(seq: readonly string[]): Map<string, number> {
  const m = new Map<string, number>()
  for (let i = 0; i < seq.length; i++) {
    const k = seq[i] as string
    m.set(k, (m.get(k) ?? 0) + 1)
  }
  return m
}

function gcounterInc(seq: readonly string[]): Map<string, GCounterState> {
  const m = new Map<string, GCounterState>()
  for (let i = 0; i < seq.length; i++) {
    const k = seq[i] as string
    let s = m.get(k)
    if (s === undefined) {
      s = gcounter.empty()
      m.set(k, s)
    }
    keep(gcounter.apply(s, INC1, CTX1))
  }
  return m
}

const YJS_TXN = 1000

function yjsInc(seq: readonly string[]): Y.Doc {
  const doc = new Y.Doc()
  const view = doc.getMap<Y.Map<number>>('view')
  for (let i = 0; i < seq.length; i += YJS_TXN) {
    const end = Math.min(seq.length, i + YJS_TXN)
    doc.transact(() => {
      for (let j = i; j < end; j++) {
        const k = seq[j] as string
        let m = view.get(k)
        if (m === undefined) {
          m = new Y.Map<number>()
          view.set(k, m)
        }
        m.set('n', (m.get('n') ?? 0) + 1)
      }
    })
  }
  return doc
}

/**
 * Heap growth per key while what `build` returns is held. A function of its own so that nothing
 * built here outlives the call in a stack slot and inflates the next measurement's "before".
 */
function heapPerKey(build: () => unknown, keys: number): number {
  const before = heapUsed()
  const held = build()
  const after = heapUsed()
  keep(held)
  keep(undefined)
  return (after - before) / keys
}

const perSecond = (ops: number, ms: readonly number[]): number[] => ms.map((t) => (ops * 1000) / t)

// ---------------------------------------------------------------------------------------------
// Other hot paths: ops are validated up front (validation is the HTTP layer's cost, not the
// type's), and each op is coded as a small integer into a pool of pre-validated ops.

/** OR-set: add or remove (50/50) one of 10 elements, so sets hover around 5 elements. */
const SET_POOL = Array.from({ length: 10 }, (_, i) => `user-${i}`)

function rawSetAddDelete(seq: readonly string[], codes: Uint8Array): Map<string, Set<string>> {
  const m = new Map<string, Set<string>>()
  for (let i = 0; i < seq.length; i++) {
    const k = seq[i] as string
    let s = m.get(k)
    if (s === undefined) {
      s = new Set()
      m.set(k, s)
    }
    const c = codes[i] as number
    if ((c & 1) === 1) s.delete(SET_POOL[c >> 1] as string)
    else s.add(SET_POOL[c >> 1] as string)
  }
  return m
}

function orsetAddRemove(seq: readonly string[], codes: Uint8Array, ops: readonly ORSetOp[]): Map<string, ORSetState> {
  const m = new Map<string, ORSetState>()
  for (let i = 0; i < seq.length; i++) {
    const k = seq[i] as string
    let s = m.get(k)
    if (s === undefined) {
      s = orset.empty()
      m.set(k, s)
    }
    keep(orset.apply(s, ops[codes[i] as number] as ORSetOp, CTX1))
  }
  return m
}

/** LWW map: set one of 8 fields to one of 8 values; every op gets a fresh HLC-like stamp. */
const FIELD_VALUES = FIELDS.flatMap((f) => Array.from({ length: 8 }, (_, j) => [f, `${f}-${j}`] as const))

function rawMapFieldSet(seq: readonly string[], codes: Uint8Array): Map<string, Map<string, string>> {
  const m = new Map<string, Map<string, string>>()
  for (let i = 0; i < seq.length; i++) {
    const k = seq[i] as string
    let s = m.get(k)
    if (s === undefined) {
      s = new Map()
      m.set(k, s)
    }
    const fv = FIELD_VALUES[codes[i] as number] as readonly [string, string]
    s.set(fv[0], fv[1])
  }
  return m
}

function lwwmapSet(seq: readonly string[], codes: Uint8Array, ops: readonly LWWMapOp[]): Map<string, LWWMapState> {
  const m = new Map<string, LWWMapState>()
  for (let i = 0; i < seq.length; i++) {
    const k = seq[i] as string
    let s = m.get(k)
    if (s === undefined) {
      s = lwwmap.empty()
      m.set(k, s)
    }
    // A node reads its clock once per write: the stamp object is part of the op's cost.
    keep(lwwmap.apply(s, ops[codes[i] as number] as LWWMapOp, { replica: 'node-1', time: { ts: T0 + i, c: 0 } }))
  }
  return m
}

/** HLL: add one of 100k distinct elements (an exact Set of them is the natural ceiling). */
function rawSetAdd(seq: readonly string[], codes: Uint32Array, elems: readonly string[]): Map<string, Set<string>> {
  const m = new Map<string, Set<string>>()
  for (let i = 0; i < seq.length; i++) {
    const k = seq[i] as string
    let s = m.get(k)
    if (s === undefined) {
      s = new Set()
      m.set(k, s)
    }
    s.add(elems[codes[i] as number] as string)
  }
  return m
}

function hllAdd(seq: readonly string[], codes: Uint32Array, ops: readonly HLLOp[]): Map<string, HLLState> {
  const m = new Map<string, HLLState>()
  for (let i = 0; i < seq.length; i++) {
    const k = seq[i] as string
    let s = m.get(k)
    if (s === undefined) {
      s = hll.empty()
      m.set(k, s)
    }
    keep(hll.apply(s, ops[codes[i] as number] as HLLOp, CTX1))
  }
  return m
}

// ---------------------------------------------------------------------------------------------
// Typical small states, per type, for join and encoded size

interface TypeCase {
  name: TypeName
  type: AnyCrdtType
  /** What "typical" means for this type: goes into the encoded-size unit. */
  typical: string
  /** The ops one replica contributes to a typical state. */
  ops(rng: Rng, replicaIndex: number, replicaCount: number): unknown[]
}

/** Builds a state the way the system does: each replica applies its own ops, then all join. */
function buildState(tc: TypeCase, rng: Rng, replicas: readonly string[], tsBase: number): unknown {
  const t = tc.type
  const all = t.empty()
  let ts = tsBase
  replicas.forEach((r, ri) => {
    const s = t.empty()
    for (const raw of tc.ops(rng, ri, replicas.length)) t.apply(s, t.validate(raw), ctxOf(r, (ts += 1 + randInt(rng, 1000))))
    t.join(all, s)
  })
  return all
}

/** How many of `total` items replica `ri` of `rc` contributes. */
const share = (total: number, ri: number, rc: number): number => Math.floor(total / rc) + (ri < total % rc ? 1 : 0)

/** `k` distinct picks from `pool` names `prefix<i>`. */
function pick(rng: Rng, k: number, pool: number, prefix: string): string[] {
  const out = new Set<string>()
  while (out.size < k) out.add(prefix + randInt(rng, pool))
  return [...out]
}

const counterCase = (name: 'gcounter' | 'pncounter', type: AnyCrdtType): TypeCase => ({
  name,
  type,
  typical: 'counter touched by 1-3 replicas',
  ops: (rng) => [{ inc: 1 + randInt(rng, 10_000) }],
})

const fieldValue = (rng: Rng, f: string): unknown =>
  f === 'last_seen' ? T0 + randInt(rng, 1e9) : f === 'plan' ? ['free', 'pro', 'team'][randInt(rng, 3)] : `${f}-${randInt(rng, 1e6)}`

const CASES: TypeCase[] = [
  counterCase('gcounter', gcounter),
  counterCase('pncounter', pncounter),
  {
    name: 'orset',
    type: orset,
    typical: '~5 elements of 6-7 chars from a pool of 20, 1-3 replicas',
    ops: (rng, ri, rc) => [{ add: pick(rng, share(5, ri, rc), 20, 'user-') }],
  },
  {
    name: 'lwwmap',
    type: lwwmap,
    typical: '~5 of 8 fields, short string/number values, 1-3 replicas',
    ops: (rng, ri, rc) => {
      const set: Record<string, unknown> = {}
      for (const f of pick(rng, share(5, ri, rc), FIELDS.length, '')) {
        const name = FIELDS[Number(f)] as string
        set[name] = fieldValue(rng, name)
      }
      return [{ set }]
    },
  },
  {
    name: 'hll',
    type: hll,
    typical: '20 distinct elements, p=14 sparse',
    ops: (rng, ri, rc) => [{ add: pick(rng, share(20, ri, rc), 1e6, 'user-') }],
  },
]

// ---------------------------------------------------------------------------------------------

interface Sizes {
  /** Keys of the counter workloads and of each side of the joins. */
  keys: number
  /** Increments of the counter workloads. */
  ops: number
  /** Keys and ops of the orset/lwwmap/hll workloads: fewer keys, more ops per key, so the
   * figure is the op rather than the creation of a state per key. */
  otherKeys: number
  otherOps: number
  /** Repetitions of the fast figures; Yjs and heap figures use SLOW_RUNS. */
  runs: number
  encodedSamples: number
  quick: boolean
}

const SLOW_RUNS = 3

function sizes(quick: boolean): Sizes {
  return quick
    ? { keys: 10_000, ops: 100_000, otherKeys: 1_000, otherOps: 50_000, runs: 3, encodedSamples: 200, quick }
    : { keys: 100_000, ops: 1_000_000, otherKeys: 10_000, otherOps: 500_000, runs: 7, encodedSamples: 2000, quick }
}

function counters(o: SuiteOptions, z: Sizes): void {
  const { report } = o
  const progress = (msg: string): void => report.progress(msg)
  const keys = makeKeys(z.keys)
  const uniform = uniformSeq(keys, z.ops, prng(1))
  const zipf = zipfSeq(keys, z.ops, prng(2))
  const perKey = `${z.keys / 1000}k keys, ${z.ops / z.keys} incs/key avg`

  report.progress(`  counters: ${z.ops} increments over ${z.keys} keys (uniform), raw Map vs gcounter`)
  const t = timeSideBySide(
    [
      { name: 'raw', run: () => rawMapInc(uniform) },
      { name: 'gcounter', run: () => gcounterInc(uniform) },
    ],
    z.runs,
    progress,
  )
  report.add(BENCH, {
    figure: 'gcounter_inc_per_s',
    samples: perSecond(z.ops, t.get('gcounter') as number[]),
    unit: `ops/s (CPU time; ${perKey}, uniform)`,
    baseline: { name: 'raw_map_inc_per_s', samples: perSecond(z.ops, t.get('raw') as number[]) },
    goal: '>= 0.3',
  })

  // Yjs is ~100x slower, so it gets its own side-by-side loop with the minimum of runs.
  report.progress(`  counters: the same increments, gcounter vs Yjs`)
  const ty = timeSideBySide(
    [
      { name: 'gcounter', run: () => gcounterInc(uniform) },
      { name: 'yjs', run: () => yjsInc(uniform) },
    ],
    SLOW_RUNS,
    progress,
  )
  const ours = perSecond(z.ops, ty.get('gcounter') as number[])
  const yjs = perSecond(z.ops, ty.get('yjs') as number[])
  report.add(BENCH, { figure: 'yjs_inc_per_s', samples: yjs, unit: `ops/s (CPU time; ${perKey}, uniform, nested Y.Map per key)` })
  report.add(BENCH, {
    figure: 'gcounter_vs_yjs_ops_ratio',
    samples: ours.map((x, i) => x / (yjs[i] as number)),
    unit: 'x (gcounter ops/s / Yjs ops/s, per run)',
    goal: '>= 10',
  })

  report.progress(`  counters: the same over a Zipf(1) key sequence`)
  const tz = timeSideBySide(
    [
      { name: 'raw', run: () => rawMapInc(zipf) },
      { name: 'gcounter', run: () => gcounterInc(zipf) },
    ],
    z.runs,
    progress,
  )
  report.add(BENCH, {
    figure: 'gcounter_inc_zipf_per_s',
    samples: perSecond(z.ops, tz.get('gcounter') as number[]),
    unit: `ops/s (CPU time; ${perKey}, Zipf s=1)`,
    baseline: { name: 'raw_map_inc_zipf_per_s', samples: perSecond(z.ops, tz.get('raw') as number[]) },
  })

  // Heap per key, key strings excluded (they exist before and are shared by both). Headline:
  // every key built by one increment, the least history Yjs can carry, so the kindest case for
  // it. Second figure: what the whole uniform workload leaves behind, where each Yjs set leaves
  // its overwritten item in the document.
  const once = keys.slice()
  for (const [figure, baseline, seq, what] of [
    ['gcounter_heap_bytes_per_key', 'yjs_heap_bytes_per_key', once, '1 inc each'],
    ['gcounter_heap_bytes_per_key_after_workload', 'yjs_heap_bytes_per_key_after_workload', uniform, `${z.ops / z.keys} incs/key avg, uniform`],
  ] as const) {
    report.progress(`  counters: heap per key, ${z.keys} keys, ${what}`)
    const oursHeap: number[] = []
    const yjsHeap: number[] = []
    for (let r = 0; r < SLOW_RUNS; r++) {
      oursHeap.push(heapPerKey(() => gcounterInc(seq), z.keys))
      yjsHeap.push(heapPerKey(() => yjsInc(seq), z.keys))
      report.progress(`    run ${r + 1}/${SLOW_RUNS}: gcounter ${oursHeap.at(-1)?.toFixed(1)} B/key, yjs ${yjsHeap.at(-1)?.toFixed(1)} B/key`)
    }
    report.add(BENCH, {
      figure,
      samples: oursHeap,
      unit: `bytes/key (${z.keys} keys, ${what})`,
      baseline: { name: baseline, samples: yjsHeap },
      ...(figure === 'gcounter_heap_bytes_per_key' ? { goal: '<= 0.2' } : {}),
    })
  }
  gc()
}

function otherHotPaths(o: SuiteOptions, z: Sizes): void {
  const { report } = o
  const m = z.otherOps
  const keys = makeKeys(z.otherKeys)
  const perKey = `${z.otherKeys / 1000}k keys, ${m / z.otherKeys} ops/key avg`
  const seq = uniformSeq(keys, m, prng(4))
  const rng = prng(5)
  const progress = (msg: string): void => report.progress(msg)

  report.progress(`  orset: ${m} add/remove ops over ${z.otherKeys} keys (uniform), raw Map<string, Set> vs orset`)
  const setCodes = Uint8Array.from({ length: m }, () => randInt(rng, SET_POOL.length * 2))
  const setOps = SET_POOL.flatMap((e) => [orset.validate({ add: e }), orset.validate({ remove: e })])
  const ts = timeSideBySide(
    [
      { name: 'raw', run: () => rawSetAddDelete(seq, setCodes) },
      { name: 'orset', run: () => orsetAddRemove(seq, setCodes, setOps) },
    ],
    z.runs,
    progress,
  )
  report.add(BENCH, {
    figure: 'orset_add_remove_per_s',
    samples: perSecond(m, ts.get('orset') as number[]),
    unit: `ops/s (CPU time; ${perKey})`,
    baseline: { name: 'raw_set_add_delete_per_s', samples: perSecond(m, ts.get('raw') as number[]) },
  })

  report.progress(`  lwwmap: ${m} single-field sets over ${z.otherKeys} keys (uniform), raw Map<string, Map> vs lwwmap`)
  const fieldCodes = Uint8Array.from({ length: m }, () => randInt(rng, FIELD_VALUES.length))
  const fieldOps = FIELD_VALUES.map(([f, v]) => lwwmap.validate({ set: { [f]: v } }))
  const tl = timeSideBySide(
    [
      { name: 'raw', run: () => rawMapFieldSet(seq, fieldCodes) },
      { name: 'lwwmap', run: () => lwwmapSet(seq, fieldCodes, fieldOps) },
    ],
    z.runs,
    progress,
  )
  report.add(BENCH, {
    figure: 'lwwmap_set_per_s',
    samples: perSecond(m, tl.get('lwwmap') as number[]),
    unit: `ops/s (CPU time; ${perKey})`,
    baseline: { name: 'raw_map_field_set_per_s', samples: perSecond(m, tl.get('raw') as number[]) },
  })

  report.progress(`  hll: ${m} adds of 100k distinct elements over ${z.otherKeys} keys (uniform), raw Map<string, Set> vs hll`)
  const elems = makeKeys(100_000, 'user-')
  const elemCodes = Uint32Array.from({ length: m }, () => randInt(rng, elems.length))
  const hllOps = elems.map((e) => hll.validate({ add: e }))
  const th = timeSideBySide(
    [
      { name: 'raw', run: () => rawSetAdd(seq, elemCodes, elems) },
      { name: 'hll', run: () => hllAdd(seq, elemCodes, hllOps) },
    ],
    z.runs,
    progress,
  )
  report.add(BENCH, {
    figure: 'hll_add_per_s',
    samples: perSecond(m, th.get('hll') as number[]),
    unit: `ops/s (CPU time; ${perKey})`,
    baseline: { name: 'raw_set_add_per_s', samples: perSecond(m, th.get('raw') as number[]) },
  })
}

/**
 * Join of two keyed states of `keys` keys each, half of them shared: A holds keys [0, n) written
 * by node-1, B holds [n/2, 3n/2) written by node-2. Shared keys are joined state by state, B's
 * other keys are cloned into A (join must leave B unshared). A is rebuilt, untimed, before
 * every run.
 */
function joins(o: SuiteOptions, z: Sizes): void {
  const { report } = o
  const n = z.keys
  const keys = makeKeys(n + n / 2)
  const label = n >= 1000 && n % 1000 === 0 ? `${n / 1000}k` : String(n)
  report.progress(`  join: two ${n}-key states, ${n / 2} keys shared, per type`)
  type Keyed = Map<string, unknown>
  const prepared = CASES.map((tc) => {
    const rng = prng(3)
    const a0: Keyed = new Map()
    const b: Keyed = new Map()
    for (let i = 0; i < n; i++) a0.set(keys[i] as string, buildState(tc, rng, ['node-1'], T0))
    for (let i = n / 2; i < n + n / 2; i++) b.set(keys[i] as string, buildState(tc, rng, ['node-2'], T0))
    let a: Keyed = new Map()
    const t = tc.type
    return {
      tc,
      setup: () => {
        a = new Map()
        for (const [k, s] of a0) a.set(k, t.clone(s))
      },
      run: () => {
        for (const [k, s] of b) {
          const mine = a.get(k)
          if (mine === undefined) a.set(k, t.clone(s))
          else t.join(mine, s)
        }
        return a
      },
    }
  })
  const t = timeSideBySide(
    prepared.map((p) => ({ name: p.tc.name, setup: p.setup, run: p.run })),
    z.runs,
    (m) => report.progress(m),
  )
  for (const p of prepared) {
    report.add(BENCH, {
      figure: `${p.tc.name}_join_100k_keys_ms`,
      samples: t.get(p.tc.name) as number[],
      unit: `ms (CPU time; ${label} + ${label} keys, half shared)`,
    })
  }
}

/**
 * Joining a peer's small deltas into a large OR-set (a demo `online` view of many members): per
 * join, into a 100k-member set, against the same deltas into a 100-member set (the baseline, so
 * the ratio says how much the set's size costs). The deltas are node-2's ops on its replica: a
 * new member, a re-add of an existing one (superseding node-1's dot), the new member's removal.
 * Each run joins them into a fresh copy of the set, made untimed, whose dot index is built
 * untimed too: the steady state of a set that has joined before (the first join by lookups
 * after a load or a full-state merge builds it, once).
 */
function orsetLargeSet(o: SuiteOptions, z: Sizes): void {
  const { report } = o
  const large = z.keys // 100k, 10k with --quick
  const count = z.quick ? 1000 : 5000
  const ctx2 = ctxOf('node-2')
  const member = (i: number) => `user-${String(i).padStart(6, '0')}`
  report.progress(`  orset: ${count} one-element deltas joined into a ${large}-member set vs a 100-member set`)
  const prepared = [100, large].map((n) => {
    const base = orset.empty()
    orset.apply(base, orset.validate({ add: Array.from({ length: n }, (_, i) => member(i)) }), CTX1)
    const peer = orset.clone(base)
    const deltas: ORSetState[] = []
    for (let i = 0; deltas.length < count; i++) {
      deltas.push(orset.apply(peer, orset.validate({ add: `new-${i}` }), ctx2))
      deltas.push(orset.apply(peer, orset.validate({ add: member((i * 7919) % n) }), ctx2))
      deltas.push(orset.apply(peer, orset.validate({ remove: `new-${i}` }), ctx2))
    }
    let s = base
    return {
      name: String(n),
      setup: () => {
        s = orset.clone(base)
        orset.join(s, orset.empty())
      },
      run: () => {
        for (let i = 0; i < deltas.length; i++) orset.join(s, deltas[i] as ORSetState)
        return s
      },
    }
  })
  const t = timeSideBySide(prepared, z.runs, (m) => report.progress(m))
  const perJoin = (ms: readonly number[]) => ms.map((x) => (x * 1000) / count)
  report.add(BENCH, {
    figure: 'orset_join_small_delta_into_large_set',
    samples: perJoin(t.get(String(large)) as number[]),
    unit: `µs/join (CPU time; ${large / 1000}k-member set, 1-element deltas from a peer)`,
    baseline: { name: 'orset_join_small_delta_into_small_set', samples: perJoin(t.get('100') as number[]) },
  })
}

/** Encoded bytes of typical states; each run draws a fresh sample of states. */
function encodedSizes(o: SuiteOptions, z: Sizes): void {
  const { report } = o
  for (const tc of CASES) {
    const samples: number[] = []
    for (let r = 0; r < Math.max(3, z.runs); r++) {
      const rng = prng(100 + r)
      let bytes = 0
      for (let i = 0; i < z.encodedSamples; i++) {
        const replicas = REPLICAS.slice(0, 1 + randInt(rng, 3))
        bytes += encodeState(tc.type, buildState(tc, rng, replicas, T0)).length
      }
      samples.push(bytes / z.encodedSamples)
    }
    report.add(BENCH, { figure: `${tc.name}_encoded_bytes_per_key`, samples, unit: `bytes/key (${tc.typical})` })
  }
}

export const suite: Suite = {
  name: BENCH,
  async run(o: SuiteOptions): Promise<void> {
    const z = sizes(o.quick)
    counters(o, z)
    otherHotPaths(o, z)
    joins(o, z)
    orsetLargeSet(o, z)
    encodedSizes(o, z)
    keep(undefined)
  },
}
