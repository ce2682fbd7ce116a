/**
 * OR-set, add-wins and optimised: a dot kernel over a causal context (Bieniusa et al. 2012,
 * "An optimized conflict-free replicated set"; Almeida, Shoker, Baquero 2018, delta AWORSet).
 *
 * Each live element carries the dots (replica, counter) of the adds that created it; the causal
 * context records every dot this state has seen. An add makes a fresh dot and supersedes the
 * element's old dots; a remove just forgets the element's dots, which the context still covers,
 * so a peer that joins this state drops them too. No tombstone per removed element remains, and
 * once replicas have met the context is one counter per replica (see causal.ts).
 *
 * Join (dot kernel): a dot survives if both sides have it, or one side has it and the other side
 * has never seen it. An add concurrent with a remove therefore wins: its dot is new to the
 * remover.
 *
 * State shape, chosen for memory (a view holds millions of sets, most of them small):
 * - the state *is* its causal context (ids / vv / cloud live on the same object);
 * - elements are a sorted string array with a parallel array of dots, not a Map: lookups are a
 *   binary search, `value` and `encode` need no sort, and two arrays cost far less than a Map per
 *   key. Small arrays are kept at their exact length (an insert copies them, as gcounter does:
 *   `splice` and `push` leave 16+ spare slots); from EXACT_LIMIT elements on, inserts splice in
 *   place and V8's spare capacity is a bounded fraction;
 * - an element's dots are, in the common case of one dot whose replica index is below 256, a
 *   single number `counter * 256 + index` stored inline (a small integer: no allocation at all);
 *   otherwise a flat array of (index, counter) pairs, in no particular order.
 *
 * Big sets (more than `orsetTuning.bigAt` elements, back to small below `smallAt`) are few but
 * hot: a demo `online` view of 10k members took every peer's delta through a walk of the whole
 * set, and every new member through a copy of both arrays. Their entries live in a chunked sorted
 * list instead (chunks.ts: an insert or lookup costs O(log n + chunk)), and join takes a delta
 * by lookups rather than by walking the set (see sparseJoin), with an index from dot to element
 * that the first such join builds and every later change keeps. `elems` / `dots` are then empty.
 *
 * Invariant beyond the context's (see causal.ts): every dot of an entry is covered by the context.
 * A dot normally belongs to one element, but nothing relies on it: a replica that lost writes it
 * had already shipped may reuse dots, and join must stay a lattice join (and every state it makes
 * must decode) even then.
 *
 * Format v1:
 *   version (1);
 *   causal context (causal.ts): replica ids ascending, vv as (rank, counter > 0) by rank, cloud as
 *     (rank, counter) ascending, each beyond vv + 1; every replica referenced by the vv or cloud;
 *   entries: count, then per element ascending by UTF-16 code units: element (varString), dot
 *     count (>= 1), dots as (rank, counter) ascending, each covered by the causal context.
 * The decoder refuses anything else, so whatever decodes re-encodes to the same bytes.
 */
import * as encoding from 'lib0/encoding'
import type * as decoding from 'lib0/decoding'
import { CrdtDecodeError, CrdtOpError, type CrdtType, type OpContext } from './types.js'
import { guarded, readCount, readString, readUint, readVersion, writeVersion } from './codec.js'
import { opVerb, stringList } from './validate.js'
import { SortedChunks, work } from './chunks.js'
import {
  addDot,
  contextOf,
  covers,
  decodeContext,
  copyCloud,
  inRuns,
  encodeContext,
  ensureReplica,
  joinContext,
  mapReplicas,
  maxCounter,
  NO_DOTS,
  NO_IDS,
  rankedPairs,
  replicaIndex,
  type CausalContext,
} from './causal.js'

/**
 * One dot packed as `counter * PACK + index`, or flat (index, counter) pairs. Unpacking divides
 * and floors (exact: PACK is a power of two) rather than using `%`, which on a double (counters
 * past 2^23) is a slow fmod call.
 */
export type Dots = number | number[]

export interface ORSetState extends CausalContext {
  /** Live elements, strictly ascending by UTF-16 code units; empty in a big set. */
  elems: string[]
  /** dots[i]: the dots of elems[i] (never empty), indices into `ids`; empty in a big set. */
  dots: Dots[]
  /** A big set's entries; null for a small set. */
  big: BigEntries | null
}

interface BigEntries {
  /** element -> its dots (never empty). */
  entries: SortedChunks<string, Dots>
  /** byDot[r]: counter -> element for every dot of replica index r in `entries`; null until a
   * join first needs it (most big sets are only ever written locally), kept in step after. */
  byDot: Array<SortedChunks<number, string> | undefined> | null
}

/**
 * Sizes that decide the representation. Tests shrink them to run every law through the big
 * paths with small states; nothing else should change them.
 */
export const orsetTuning = {
  /** A small set of more elements than this becomes big. */
  bigAt: 256,
  /** A big set of fewer elements than this becomes small again (apart from bigAt, so that a set
   * hovering around one size does not convert back and forth). */
  smallAt: 64,
  /** A big set joins a state by lookups when that state's elements times this are fewer than its
   * own, else by one merge walk over both (cheaper when the other state is big too). */
  denseRatio: 8,
}

/** Normalised op: elements sorted and distinct. */
export type ORSetOp = { add: string[] } | { remove: string[] }

const NAME = 'orset'
const PACK = 256
/** Largest counter that packs with any index < PACK without leaving the safe integer range. */
const MAX_PACKED_N = Math.floor((Number.MAX_SAFE_INTEGER - (PACK - 1)) / PACK)
/** Arrays shorter than this are copied to their exact length on insert and remove. */
const EXACT_LIMIT = 32

function one(r: number, n: number): Dots {
  return r < PACK && n <= MAX_PACKED_N ? n * PACK + r : [r, n]
}

/** The dots as flat pairs; an array form is returned as is, so callers must not mutate it. */
function pairsOf(d: Dots): readonly number[] {
  if (typeof d !== 'number') return d
  const n = Math.floor(d / PACK)
  return [d - n * PACK, n]
}

/** Canonical in-memory form of a pair list (`pairs` becomes owned by the result). */
function fromPairs(pairs: number[]): Dots | undefined {
  if (pairs.length === 0) return undefined
  if (pairs.length === 2) return one(pairs[0] as number, pairs[1] as number)
  return pairs
}

/** True if the (unsorted) pairs hold (r, n). */
function holdsPair(pairs: readonly number[], r: number, n: number): boolean {
  for (let k = 0; k < pairs.length; k += 2) if (pairs[k] === r && pairs[k + 1] === n) return true
  return false
}

/** Index of `e` in the sorted `elems`, or ~(insertion point). */
function search(elems: readonly string[], e: string): number {
  let lo = 0
  let hi = elems.length - 1
  while (lo <= hi) {
    const mid = (lo + hi) >>> 1
    const x = elems[mid] as string
    if (x < e) lo = mid + 1
    else if (x > e) hi = mid - 1
    else return mid
  }
  return ~lo
}

function inserted<T>(arr: T[], i: number, x: T): T[] {
  work.steps += arr.length - i
  if (arr.length < EXACT_LIMIT) return arr.toSpliced(i, 0, x)
  arr.splice(i, 0, x)
  return arr
}

function removed<T>(arr: T[], i: number): T[] {
  work.steps += arr.length - i
  if (arr.length <= EXACT_LIMIT) return arr.toSpliced(i, 1)
  arr.splice(i, 1)
  return arr
}

function insertEntry(s: ORSetState, at: number, e: string, d: Dots): void {
  s.elems = inserted(s.elems, at, e)
  s.dots = inserted(s.dots, at, d)
}

function removeEntry(s: ORSetState, at: number): void {
  s.elems = removed(s.elems, at)
  s.dots = removed(s.dots, at)
}

function emptyState(): ORSetState {
  return { ids: NO_IDS, vv: [], cloud: NO_DOTS, elems: [], dots: [], big: null }
}

function withContext(cc: CausalContext, elems: string[], dots: Dots[]): ORSetState {
  return { ids: cc.ids, vv: cc.vv, cloud: cc.cloud, elems, dots, big: null }
}

// ---------------------------------------------------------------------------------------------
// Big sets

/** What a big set's `elems` and `dots` hold: frozen, so a path that forgot `big` fails loudly. */
const NO_ELEMS = Object.freeze([]) as unknown as string[]
const NO_ENTRY_DOTS = Object.freeze([]) as unknown as Dots[]

function size(s: ORSetState): number {
  return s.big === null ? s.elems.length : s.big.entries.size
}

function promote(s: ORSetState): void {
  s.big = { entries: SortedChunks.fromSorted(s.elems, s.dots), byDot: null }
  s.elems = NO_ELEMS
  s.dots = NO_ENTRY_DOTS
}

/** Back to two exact arrays (a set that shrank, or the working form of a merge walk). */
function demote(s: ORSetState, big: BigEntries): void {
  const { keys, vals } = big.entries.toArrays()
  s.elems = keys
  s.dots = vals
  s.big = null
}

function indexDots(byDot: Array<SortedChunks<number, string> | undefined>, e: string, d: Dots): void {
  if (typeof d === 'number') {
    const n = Math.floor(d / PACK)
    const r = d - n * PACK
    ;(byDot[r] ??= new SortedChunks<number, string>()).insertMulti(n, e)
    return
  }
  for (let k = 0; k < d.length; k += 2) (byDot[d[k] as number] ??= new SortedChunks<number, string>()).insertMulti(d[k + 1] as number, e)
}

function unindexDots(byDot: Array<SortedChunks<number, string> | undefined>, e: string, d: Dots): void {
  if (typeof d === 'number') {
    const n = Math.floor(d / PACK)
    byDot[d - n * PACK]?.deleteMulti(n, e)
    return
  }
  for (let k = 0; k < d.length; k += 2) byDot[d[k] as number]?.deleteMulti(d[k + 1] as number, e)
}

/** Sets element e's dots in a big set (undefined: removes it), `old` being its dots now. */
function bigPut(big: BigEntries, e: string, old: Dots | undefined, d: Dots | undefined): void {
  if (d === undefined) big.entries.delete(e)
  else big.entries.set(e, d)
  const byDot = big.byDot
  if (byDot === null) return
  if (old !== undefined) unindexDots(byDot, e, old)
  if (d !== undefined) indexDots(byDot, e, d)
}

/** The dot index of a big set, built once from its entries: O(n log n), then kept in step. */
function buildIndex(entries: SortedChunks<string, Dots>): Array<SortedChunks<number, string> | undefined> {
  const ns: number[][] = []
  const es: string[][] = []
  let total = 0
  for (let c = 0; c < entries.keys.length; c++) {
    const ks = entries.keys[c] as string[]
    const vs = entries.vals[c] as Dots[]
    for (let i = 0; i < ks.length; i++) {
      const e = ks[i] as string
      const p = pairsOf(vs[i] as Dots)
      for (let k = 0; k < p.length; k += 2) {
        const r = p[k] as number
        ;(ns[r] ??= []).push(p[k + 1] as number)
        ;(es[r] ??= []).push(e)
        total++
      }
    }
  }
  work.steps += total
  const byDot: Array<SortedChunks<number, string> | undefined> = []
  for (let r = 0; r < ns.length; r++) {
    const n = ns[r]
    const e = es[r]
    if (n === undefined || e === undefined) {
      byDot.push(undefined)
      continue
    }
    const order = Array.from(n.keys()).sort((a, b) => (n[a] as number) - (n[b] as number))
    byDot.push(SortedChunks.fromSorted(order.map((i) => n[i] as number), order.map((i) => e[i] as string)))
  }
  return byDot
}

/**
 * Gives element e the dots d (undefined: removes e) in either representation, converting when
 * the size crosses a bound; returns e's previous dots.
 */
function putEntry(s: ORSetState, e: string, d: Dots | undefined): Dots | undefined {
  const big = s.big
  if (big === null) {
    const i = search(s.elems, e)
    if (i >= 0) {
      const old = s.dots[i] as Dots
      if (d === undefined) removeEntry(s, i)
      else s.dots[i] = d
      return old
    }
    if (d !== undefined) {
      insertEntry(s, ~i, e, d)
      if (s.elems.length > orsetTuning.bigAt) promote(s)
    }
    return undefined
  }
  const old = big.entries.get(e)
  if (old === undefined && d === undefined) return undefined
  bigPut(big, e, old, d)
  if (d === undefined && big.entries.size < orsetTuning.smallAt) demote(s, big)
  return old
}

/** Entries of either representation as parallel chunks, for walks that read them in order. */
function chunksOf(s: ORSetState): { keys: readonly string[][]; vals: readonly Dots[][] } {
  return s.big === null ? { keys: [s.elems], vals: [s.dots] } : s.big.entries
}

function elemsOf(s: ORSetState): string[] {
  if (s.big === null) return s.elems.slice()
  const out = new Array<string>(s.big.entries.size)
  let w = 0
  for (const ks of s.big.entries.keys) for (let i = 0; i < ks.length; i++) out[w++] = ks[i] as string
  return out
}

/** Sorted and distinct, so the delta's entries come out sorted; ops from `validate` already are. */
function normalised(elems: string[]): string[] {
  for (let i = 1; i < elems.length; i++) {
    if (!((elems[i - 1] as string) < (elems[i] as string))) return [...new Set(elems)].sort()
  }
  return elems
}

function pushPairs(out: number[], d: Dots): void {
  if (typeof d === 'number') {
    const n = Math.floor(d / PACK)
    out.push(d - n * PACK, n)
  } else for (const x of d) out.push(x)
}

/**
 * Each element gets a fresh dot that supersedes its old ones. Delta: the new entries, and a
 * context of the new dots plus the superseded ones (so that a peer drops those too).
 */
function add(state: ORSetState, list: string[], replica: string): ORSetState {
  if (list.length === 1) return addOne(state, list[0] as string, replica)
  const elems = normalised(list)
  if (elems.length === 0) return emptyState()
  const known = replicaIndex(state, replica)
  // Past the highest counter seen from us, not just the contiguous one: a dot of ours that came
  // back from a peer must never be reused for another element.
  const base = known >= 0 ? maxCounter(state, known) : 0
  if (!Number.isSafeInteger(base + elems.length)) throw new CrdtOpError(NAME, `replica ${replica} has exhausted its dot counter`)
  const r = known >= 0 ? known : ensureReplica(state, replica)
  const seen: number[] = []
  for (let k = 0; k < elems.length; k++) {
    const n = base + k + 1
    const old = putEntry(state, elems[k] as string, one(r, n))
    if (old !== undefined) pushPairs(seen, old)
    addDot(state, r, n)
    seen.push(r, n)
  }
  const { cc, remap } = contextOf(state.ids, seen)
  const dr = remap[r] as number
  const dots = new Array<Dots>(elems.length)
  for (let k = 0; k < elems.length; k++) dots[k] = one(dr, base + k + 1)
  return withContext(cc, elems === list ? elems.slice() : elems, dots)
}

/**
 * `add` of one element, the hot path: the delta's context is at most two dots (the new one and
 * the one it supersedes, in the common case), written out directly in compact form.
 */
function addOne(state: ORSetState, e: string, replica: string): ORSetState {
  let r = replicaIndex(state, replica)
  const n = (r >= 0 ? maxCounter(state, r) : 0) + 1
  if (!Number.isSafeInteger(n)) throw new CrdtOpError(NAME, `replica ${replica} has exhausted its dot counter`)
  if (r < 0) r = ensureReplica(state, replica)
  const old = putEntry(state, e, one(r, n))
  addDot(state, r, n)
  // In the delta our replica has index 0. Counter 1 is the whole contiguous prefix; any other
  // lone counter is a cloud run of one dot (index, lo, hi).
  if (old === undefined) return withContext({ ids: [replica], vv: n === 1 ? [1] : [0], cloud: n === 1 ? NO_DOTS : [0, n, n] }, [e], [one(0, n)])
  if (typeof old === 'number') {
    const on = Math.floor(old / PACK) // < n: `old` is covered, n is past every counter seen
    const or = old - on * PACK
    if (or === r) {
      if (on !== 1) return withContext({ ids: [replica], vv: [0], cloud: on + 1 === n ? [0, on, n] : [0, on, on, 0, n, n] }, [e], [one(0, n)])
      return withContext({ ids: [replica], vv: n === 2 ? [2] : [1], cloud: n === 2 ? NO_DOTS : [0, n, n] }, [e], [one(0, n)])
    }
    const vv = [n === 1 ? 1 : 0, on === 1 ? 1 : 0]
    const cloud = n === 1 ? (on === 1 ? NO_DOTS : [1, on, on]) : on === 1 ? [0, n, n] : [0, n, n, 1, on, on]
    return withContext({ ids: [replica, state.ids[or] as string], vv, cloud }, [e], [one(0, n)])
  }
  const { cc, remap } = contextOf(state.ids, [...old, r, n])
  return withContext(cc, [e], [one(remap[r] as number, n)])
}

/** Drops the elements; the delta is just the context of their dots. */
function remove(state: ORSetState, list: string[]): ORSetState {
  const seen: number[] = []
  for (const e of normalised(list)) {
    const old = putEntry(state, e, undefined)
    if (old !== undefined) pushPairs(seen, old)
  }
  if (seen.length === 0) return emptyState()
  return withContext(contextOf(state.ids, seen).cc, [], [])
}

// ---------------------------------------------------------------------------------------------
// Join

/**
 * `other`'s causal context seen from `into`'s replica numbering, for coverage tests of `into`'s
 * dots: vv per into-index, and the cloud's runs sorted again (the translation does not keep the
 * order) so that a test is a binary search however large the cloud.
 */
interface ForeignContext {
  vv: number[]
  cloud: number[]
}

function foreign(into: CausalContext, other: CausalContext, map: readonly number[]): ForeignContext {
  // built by push: a packed array, read once per dot tested
  const vv: number[] = []
  for (let i = 0; i < into.ids.length; i++) vv.push(0)
  for (let j = 0; j < map.length; j++) vv[map[j] as number] = other.vv[j] as number
  return { vv, cloud: other.cloud.length === 0 ? NO_DOTS : translatedRuns(other.cloud, map) }
}

function translatedRuns(oc: readonly number[], map: readonly number[]): number[] {
  const order: number[] = []
  for (let k = 0; k < oc.length; k += 3) order.push(k)
  const r = (k: number) => map[oc[k] as number] as number
  order.sort((a, b) => r(a) - r(b) || (oc[a + 1] as number) - (oc[b + 1] as number))
  const cloud: number[] = []
  for (const k of order) cloud.push(r(k), oc[k + 1] as number, oc[k + 2] as number)
  return cloud
}

function foreignCovers(f: ForeignContext, r: number, n: number): boolean {
  return n <= (f.vv[r] as number) || inRuns(f.cloud, r, n)
}

/** Dots of an element only `into` has: those `other` has seen were removed there. */
function dropSeen(d: Dots, f: ForeignContext): Dots | undefined {
  if (typeof d === 'number') {
    const n = Math.floor(d / PACK)
    return foreignCovers(f, d - n * PACK, n) ? undefined : d
  }
  const kept: number[] = []
  for (let k = 0; k < d.length; k += 2) {
    if (!foreignCovers(f, d[k] as number, d[k + 1] as number)) kept.push(d[k] as number, d[k + 1] as number)
  }
  return kept.length === d.length ? d : fromPairs(kept)
}

/** The dots without (r, n), which they hold. */
function withoutDot(d: Dots, r: number, n: number): Dots | undefined {
  if (typeof d === 'number') return d === one(r, n) ? undefined : d
  const kept: number[] = []
  for (let k = 0; k < d.length; k += 2) if (d[k] !== r || d[k + 1] !== n) kept.push(d[k] as number, d[k + 1] as number)
  return fromPairs(kept)
}

/** Dots of an element only `other` has, translated: those `into` has seen were removed here. */
function takeUnseen(d: Dots, into: CausalContext, map: readonly number[]): Dots | undefined {
  const p = pairsOf(d)
  const kept: number[] = []
  for (let k = 0; k < p.length; k += 2) {
    const r = map[p[k] as number] as number
    const n = p[k + 1] as number
    if (!covers(into, r, n)) kept.push(r, n)
  }
  return fromPairs(kept)
}

/** Dots of an element both sides have; returns `a` itself when nothing changes. */
function joinDots(a: Dots, b: Dots, into: CausalContext, f: ForeignContext, map: readonly number[]): Dots | undefined {
  const pb = pairsOf(b)
  if (typeof a === 'number' && pb.length === 2 && one(map[pb[0] as number] as number, pb[1] as number) === a) return a
  const pa = pairsOf(a)
  const kept: number[] = []
  let changed = false
  for (let k = 0; k < pa.length; k += 2) {
    const r = pa[k] as number
    const n = pa[k + 1] as number
    let inB = false
    for (let m = 0; m < pb.length; m += 2) {
      if (map[pb[m] as number] === r && pb[m + 1] === n) {
        inB = true
        break
      }
    }
    if (inB || !foreignCovers(f, r, n)) kept.push(r, n)
    else changed = true
  }
  for (let m = 0; m < pb.length; m += 2) {
    const r = map[pb[m] as number] as number
    const n = pb[m + 1] as number
    if (!holdsPair(pa, r, n) && !covers(into, r, n)) {
      kept.push(r, n)
      changed = true
    }
  }
  return changed ? fromPairs(kept) : a
}

/**
 * For each of other's elements, its index in `elems` or ~(insertion point): by binary search
 * when `other` is small (a delta), so the walk compares no strings; by one merge otherwise.
 */
function positions(elems: readonly string[], oe: readonly string[]): number[] {
  const at = new Array<number>(oe.length)
  if (oe.length * 8 < elems.length) {
    for (let j = 0; j < oe.length; j++) at[j] = search(elems, oe[j] as string)
    return at
  }
  let i = 0
  for (let j = 0; j < oe.length; j++) {
    const e = oe[j] as string
    while (i < elems.length && (elems[i] as string) < e) i++
    at[j] = i < elems.length && elems[i] === e ? i : ~i
  }
  return at
}

/** Above this many new elements a dense join rebuilds the arrays instead of inserting each. */
const INSERT_LIMIT = 8

/**
 * One merge walk over both sorted entry lists (of a small `into`): every entry of `into` is
 * tested against other's context, so it costs O(|into| + |other|), bounded for a small set. The
 * per-entry test is a few arithmetic operations on an inline number.
 */
function joinEntries(into: ORSetState, oe: readonly string[], od: readonly Dots[], map: readonly number[], f: ForeignContext): boolean {
  let changed = false
  const { elems, dots } = into
  work.steps += elems.length + oe.length
  const at = positions(elems, oe)
  const newElems: string[] = []
  const newDots: Dots[] = []
  const takeOther = (j: number) => {
    const d = takeUnseen(od[j] as Dots, into, map)
    if (d !== undefined) {
      newElems.push(oe[j] as string)
      newDots.push(d)
    }
  }
  // into's entries are filtered in place (write index w); other's new ones are set aside
  let j = 0
  let w = 0
  const n = elems.length
  const m = oe.length
  for (let i = 0; i < n; i++) {
    // other's elements that sort before elems[i] and that `into` lacks
    while (j < m && (at[j] as number) < 0 && ~(at[j] as number) <= i) takeOther(j++)
    const d = dots[i] as Dots
    const kept = j < m && at[j] === i ? joinDots(d, od[j++] as Dots, into, f, map) : dropSeen(d, f)
    if (kept === undefined) {
      changed = true
      continue
    }
    if (kept !== d) changed = true
    if (w !== i) elems[w] = elems[i] as string
    if (w !== i || kept !== d) dots[w] = kept
    w++
  }
  while (j < oe.length) takeOther(j++)
  if (w < n) {
    if (w < EXACT_LIMIT) {
      into.elems = elems.slice(0, w)
      into.dots = dots.slice(0, w)
    } else {
      elems.length = w
      dots.length = w
    }
  }
  if (newElems.length === 0) return changed
  if (newElems.length <= INSERT_LIMIT) {
    for (let k = 0; k < newElems.length; k++) {
      insertEntry(into, ~search(into.elems, newElems[k] as string), newElems[k] as string, newDots[k] as Dots)
    }
    return true
  }
  const total = into.elems.length + newElems.length
  const me = new Array<string>(total)
  const md = new Array<Dots>(total)
  const ae = into.elems
  const ad = into.dots
  let a = 0
  let b = 0
  for (let k = 0; k < total; k++) {
    if (b >= newElems.length || (a < ae.length && (ae[a] as string) < (newElems[b] as string))) {
      me[k] = ae[a] as string
      md[k] = ad[a++] as Dots
    } else {
      me[k] = newElems[b] as string
      md[k] = newDots[b++] as Dots
    }
  }
  into.elems = me
  into.dots = md
  return true
}

/**
 * A big set joins a (much smaller) state by lookups, in O((|other| + dropped) log n):
 * 1. into's dots that other's context covers, on elements other does not hold, were removed
 *    there: the dot index finds them without a walk. The dots other's vv covers are a range
 *    per replica, and each dot found is either dropped (paid for once, as its add was) or on
 *    an element other holds. This works dot by dot, not element by element, so it stays a
 *    lattice join when a dot names several elements (a replica that lost writes it had shipped
 *    reuses dots), which a walk over other's elements alone would not.
 * 2. other's elements are joined one by one with into's entries for them.
 */
function sparseJoin(into: ORSetState, big: BigEntries, other: ORSetState, map: readonly number[], f: ForeignContext): boolean {
  let changed = false
  const byDot = (big.byDot ??= buildIndex(big.entries))
  const hitN: number[] = []
  const hitE: string[] = []
  const hitR: number[] = []
  const collect = (r: number, lo: number, hi: number) => {
    const idx = byDot[r]
    if (idx === undefined) return
    const before = hitN.length
    idx.collectRange(lo, hi, hitN, hitE)
    for (let h = before; h < hitN.length; h++) hitR.push(r)
  }
  for (let j = 0; j < other.vv.length; j++) {
    const v = other.vv[j] as number
    if (v > 0) collect(map[j] as number, 1, v)
  }
  const oc = other.cloud
  for (let k = 0; k < oc.length; k += 3) collect(map[oc[k] as number] as number, oc[k + 1] as number, oc[k + 2] as number)
  work.steps += hitN.length
  const oChunks = chunksOf(other)
  for (let h = 0; h < hitN.length; h++) {
    const e = hitE[h] as string
    if (holds(other, e)) continue
    const cur = big.entries.get(e)
    if (cur === undefined) continue
    const r = hitR[h] as number
    const n = hitN[h] as number
    const next = withoutDot(cur, r, n)
    if (next === undefined) big.entries.delete(e)
    else big.entries.set(e, next)
    byDot[r]?.deleteMulti(n, e)
    changed = true
  }
  for (let c = 0; c < oChunks.keys.length; c++) {
    const oe = oChunks.keys[c] as string[]
    const od = oChunks.vals[c] as Dots[]
    for (let j = 0; j < oe.length; j++) {
      const e = oe[j] as string
      const cur = big.entries.get(e)
      const d = cur === undefined ? takeUnseen(od[j] as Dots, into, map) : joinDots(cur, od[j] as Dots, into, f, map)
      if (d === cur) continue
      bigPut(big, e, cur, d)
      changed = true
    }
  }
  if (big.entries.size < orsetTuning.smallAt) demote(into, big)
  return changed
}

function holds(s: ORSetState, e: string): boolean {
  return s.big === null ? search(s.elems, e) >= 0 : s.big.entries.has(e)
}

/** The dot-kernel join. */
function join(into: ORSetState, other: ORSetState): boolean {
  // Coverage tests below must see both contexts as they were before the join; giving other's
  // replicas an index in `into`, with nothing seen yet, does not change what `into` covers.
  const map = mapReplicas(into, other)
  const f = foreign(into, other, map)
  let changed: boolean
  const big = into.big
  if (big !== null && size(other) * orsetTuning.denseRatio < big.entries.size) changed = sparseJoin(into, big, other, map, f)
  else {
    // A merge walk costs O(|into| + |other|) whatever the representation: walk the flat form.
    if (big !== null) demote(into, big)
    if (other.big === null) changed = joinEntries(into, other.elems, other.dots, map, f)
    else {
      const o = other.big.entries.toArrays()
      changed = joinEntries(into, o.keys, o.vals, map, f)
    }
    if (into.elems.length > orsetTuning.bigAt) promote(into)
  }
  if (joinContext(into, other, map)) changed = true
  return changed
}

// ---------------------------------------------------------------------------------------------

const copyDots = (d: Dots): Dots => (typeof d === 'number' ? d : d.slice())

function clone(s: ORSetState): ORSetState {
  return {
    ids: s.ids, // immutable (see causal.ts)
    vv: s.vv.slice(),
    cloud: copyCloud(s.cloud),
    elems: s.big === null ? s.elems.slice() : NO_ELEMS,
    dots: s.big === null ? s.dots.map(copyDots) : NO_ENTRY_DOTS,
    // the copy rebuilds its dot index if it ever needs one
    big: s.big === null ? null : { entries: s.big.entries.clone(copyDots), byDot: null },
  }
}

function encode(enc: encoding.Encoder, state: ORSetState): void {
  writeVersion(enc)
  const rank = encodeContext(enc, state)
  encoding.writeVarUint(enc, size(state))
  const { keys, vals } = chunksOf(state)
  for (let c = 0; c < keys.length; c++) {
    const elems = keys[c] as string[]
    const dots = vals[c] as Dots[]
    for (let i = 0; i < elems.length; i++) encodeEntry(enc, elems[i] as string, dots[i] as Dots, rank)
  }
}

function encodeEntry(enc: encoding.Encoder, e: string, d: Dots, rank: readonly number[]): void {
  encoding.writeVarString(enc, e)
  if (typeof d === 'number') {
    const n = Math.floor(d / PACK)
    encoding.writeVarUint(enc, 1)
    encoding.writeVarUint(enc, rank[d - n * PACK] as number)
    encoding.writeVarUint(enc, n)
    return
  }
  const pairs = rankedPairs(d, rank)
  encoding.writeVarUint(enc, pairs.length / 2)
  for (const x of pairs) encoding.writeVarUint(enc, x)
}

function decode(dec: decoding.Decoder): ORSetState {
  return guarded(NAME, dec, () => {
    readVersion(dec, NAME)
    const cc = decodeContext(dec, NAME)
    // element (>= 1 byte), dot count (1), one dot (2)
    const n = readCount(dec, NAME, 4)
    const elems = new Array<string>(n)
    const dots = new Array<Dots>(n)
    for (let i = 0; i < n; i++) {
      const at = dec.pos
      const e = readString(dec, NAME)
      if (i > 0 && !((elems[i - 1] as string) < e)) throw new CrdtDecodeError(NAME, at, 'elements not in ascending order')
      const nd = readCount(dec, NAME, 2)
      if (nd === 0) throw new CrdtDecodeError(NAME, dec.pos, 'an element without dots is not canonical')
      const pairs = new Array<number>(2 * nd)
      for (let k = 0; k < nd; k++) {
        const dat = dec.pos
        const r = readUint(dec, NAME)
        const c = readUint(dec, NAME)
        if (r >= cc.ids.length) throw new CrdtDecodeError(NAME, dat, `replica index ${r} out of range`)
        if (k > 0) {
          const pr = pairs[2 * k - 2] as number
          if (r < pr || (r === pr && c <= (pairs[2 * k - 1] as number))) throw new CrdtDecodeError(NAME, dat, 'dots not in ascending order')
        }
        if (!covers(cc, r, c)) throw new CrdtDecodeError(NAME, dat, 'a dot outside the causal context')
        pairs[2 * k] = r
        pairs[2 * k + 1] = c
      }
      elems[i] = e
      dots[i] = fromPairs(pairs) as Dots
    }
    const s = withContext(cc, elems, dots)
    if (n > orsetTuning.bigAt) promote(s)
    return s
  })
}

/** Lone surrogates would not survive the UTF-8 codec; in `u` mode a valid pair is one code point. */
const LONE_SURROGATE = /\p{Surrogate}/u

function validate(op: unknown): ORSetOp {
  const verb = opVerb(NAME, op, ['add', 'remove'])
  const list = stringList(NAME, verb, (op as Record<string, unknown>)[verb])
  for (const e of list) {
    if (LONE_SURROGATE.test(e)) throw new CrdtOpError(NAME, `${verb}: element ${JSON.stringify(e)} is not well-formed UTF-16`)
  }
  // A copy: the caller's array is never reordered.
  const elems = list.length <= 1 ? list.slice() : [...new Set(list)].sort()
  return verb === 'add' ? { add: elems } : { remove: elems }
}

export const orset: CrdtType<ORSetState, ORSetOp, string[]> = {
  name: NAME,
  empty: emptyState,
  apply(state: ORSetState, op: ORSetOp, ctx: OpContext): ORSetState {
    return 'add' in op ? add(state, op.add, ctx.replica) : remove(state, op.remove)
  },
  join,
  value: elemsOf,
  clone,
  encode,
  decode,
  validate,
}
