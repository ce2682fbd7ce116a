/**
 * A causal context: the set of dots (replica, counter) a state has seen, kept compact as a
 * version vector (per replica, the highest counter c such that 1..c were all seen) plus a "dot
 * cloud" of the dots seen beyond that contiguous prefix (Almeida, Shoker, Baquero 2018, §"causal
 * context compression"). Once every replica has met, the cloud is empty and the context costs
 * one counter per replica, however many ops it summarises.
 *
 * Replicas are numbered by a small table of ids kept in the order this context first saw them,
 * so that an index stays valid for the life of the context: the OR-set stores its dots as
 * (index, counter) and never has to renumber them when a new replica shows up. Indices only mean
 * something relative to one context; `mapReplicas` translates another context's indices.
 *
 * Invariants (every function here keeps them, the decoder enforces them):
 * - `ids` are distinct and every id is referenced: vv > 0 or a cloud dot (a replica enters the
 *   table only together with one of its dots, and a context only grows);
 * - `cloud` holds runs of consecutive counters, flat (index, lo, hi) triples sorted by (index,
 *   lo), disjoint and not adjacent (runs that touch are one run), none reaching the version
 *   vector (lo >= vv + 2: a dot at vv + 1 extends the vv instead).
 *
 * Runs, not single dots, because of how clouds grow: deltas joined into one state without their
 * predecessors (a catch-up shipping a key's deltas from the log) carry each replica's dots in
 * order, which as single dots made a cloud of one entry per delta, re-copied on every insert:
 * 40k deltas of one key took 35 s to join. As runs that cloud is one run per replica plus a
 * few stray dots, and a dot that extends a run is an update in place. The encoding still lists
 * every dot (format v1).
 *
 * Memory: a realtime view holds millions of contexts, so arrays are kept at their exact length.
 * `ids` are never mutated, only replaced, which lets contexts share them: replica tables are
 * interned (`internIds`). `vv` and a non-empty `cloud` belong to one context and change in place
 * (clones copy them); every empty cloud is the one frozen NO_DOTS, replaced when a run arrives.
 *
 * Pure and generic: the replication layer can use the same structure as a version vector of
 * delivered deltas (a cloud then records deltas received out of order).
 */
import * as encoding from 'lib0/encoding'
import type * as decoding from 'lib0/decoding'
import { CrdtDecodeError } from './types.js'
import { compareStrings, readCount, readSortedStrings, readUint } from './codec.js'

export interface CausalContext {
  /** Replica ids in first-seen order (not sorted: indices must stay stable). Replaced, never mutated. */
  ids: readonly string[]
  /** vv[i]: counters 1..vv[i] of replica ids[i] have all been seen (0: none contiguous). */
  vv: number[]
  /** Dots beyond the contiguous prefixes, as runs (index, lo, hi) (see the header); usually empty. */
  cloud: number[]
}

/** The cloud of almost every context: shared, hence frozen. */
export const NO_DOTS: number[] = Object.freeze([]) as unknown as number[]
export const NO_IDS: readonly string[] = Object.freeze([])

export function emptyContext(): CausalContext {
  return { ids: NO_IDS, vv: [], cloud: NO_DOTS }
}

export function cloneContext(cc: CausalContext): CausalContext {
  // ids are immutable: sharing them is a deep copy.
  return { ids: cc.ids, vv: cc.vv.slice(), cloud: copyCloud(cc.cloud) }
}

export function copyCloud(cloud: number[]): number[] {
  return cloud.length === 0 ? NO_DOTS : cloud.slice()
}

/** The index of `id`, or -1. Replicas per context are few, so a scan beats a Map in memory. */
export function replicaIndex(cc: CausalContext, id: string): number {
  const ids = cc.ids
  for (let i = 0; i < ids.length; i++) if (ids[i] === id) return i
  return -1
}

/**
 * The index of `id`, appending it (with nothing seen) if absent. Callers must add one of its dots
 * right after, or the table would hold an unreferenced replica.
 */
export function ensureReplica(cc: CausalContext, id: string): number {
  const i = replicaIndex(cc, id)
  if (i >= 0) return i
  cc.ids = internIds(cc.ids.concat(id))
  // concat allocates the exact length; a spread or push would leave 16 spare slots per key
  cc.vv = cc.vv.concat(0)
  return cc.ids.length - 1
}

const INTERNED_MAX = 4096
const interned = new Map<string, readonly string[]>()

/**
 * One shared frozen copy of each replica table: tables are immutable and the keys of a view are
 * written by the same few replicas, so millions of contexts share a handful of tables instead of
 * holding one array each. Purely a memory saving (the result equals the input); past
 * INTERNED_MAX distinct tables new ones are just frozen, so the cache stays bounded.
 */
export function internIds(ids: readonly string[]): readonly string[] {
  if (ids.length === 0) return NO_IDS
  const key = JSON.stringify(ids)
  const hit = interned.get(key)
  if (hit !== undefined) return hit
  const table = Object.isFrozen(ids) ? ids : Object.freeze(ids.slice())
  if (interned.size < INTERNED_MAX) interned.set(key, table)
  return table
}

/** True if the dot (r, n) has been seen. */
export function covers(cc: CausalContext, r: number, n: number): boolean {
  return n <= (cc.vv[r] as number) || inRuns(cc.cloud, r, n)
}

/**
 * The first run, counted in runs, that ends at or after (r, n): the run holding dot (r, n) if
 * any does, else the first run after it. Runs are disjoint, so sorted by end as by start.
 */
export function runAt(runs: readonly number[], r: number, n: number): number {
  let lo = 0
  let hi = runs.length / 3
  while (lo < hi) {
    const mid = (lo + hi) >>> 1
    const mr = runs[3 * mid] as number
    if (mr < r || (mr === r && (runs[3 * mid + 2] as number) < n)) lo = mid + 1
    else hi = mid
  }
  return lo
}

/** True if one of the sorted runs holds (r, n). */
export function inRuns(runs: readonly number[], r: number, n: number): boolean {
  if (runs.length === 0) return false
  const k = 3 * runAt(runs, r, n)
  return k < runs.length && runs[k] === r && (runs[k + 1] as number) <= n
}

/** The highest counter seen from replica r, contiguous or not: the next fresh dot is this + 1. */
export function maxCounter(cc: CausalContext, r: number): number {
  const v = cc.vv[r] as number
  const cloud = cc.cloud
  if (cloud.length === 0) return v
  // r's last run, if any, is the one before the first run of a later replica
  const k = 3 * runAt(cloud, r + 1, 0) - 3
  return k >= 0 && cloud[k] === r ? Math.max(v, cloud[k + 2] as number) : v
}

/** Adds the dot (r, n), keeping the context compact; true if it was not seen before. */
export function addDot(cc: CausalContext, r: number, n: number): boolean {
  return addRun(cc, r, n, n)
}

/** Adds the dots lo..hi of replica r, keeping the context compact; true if any was new. */
export function addRun(cc: CausalContext, r: number, lo: number, hi: number): boolean {
  const v = cc.vv[r] as number
  if (hi <= v) return false
  if (lo <= v + 1) {
    cc.vv[r] = hi
    absorb(cc, r)
    return true
  }
  // the runs of r that overlap or touch lo..hi become one
  const cloud = cc.cloud
  const i = runAt(cloud, r, lo - 1)
  let j = i
  let nlo = lo
  let nhi = hi
  for (; 3 * j < cloud.length && cloud[3 * j] === r && (cloud[3 * j + 1] as number) <= hi + 1; j++) {
    nlo = Math.min(nlo, cloud[3 * j + 1] as number)
    nhi = Math.max(nhi, cloud[3 * j + 2] as number)
  }
  if (j - i === 1) {
    if (cloud[3 * i + 1] === nlo && cloud[3 * i + 2] === nhi) return false // all there already
    cloud[3 * i + 1] = nlo
    cloud[3 * i + 2] = nhi
  } else if (cloud.length === 0) cc.cloud = [r, nlo, nhi]
  // spliced in place: the array belongs to this context (see the header)
  else cloud.splice(3 * i, 3 * (j - i), r, nlo, nhi)
  return true
}

/** Folds into vv[r] the runs of r that it now reaches (after vv[r] grew). */
function absorb(cc: CausalContext, r: number): void {
  const cloud = cc.cloud
  if (cloud.length === 0) return
  const i = runAt(cloud, r, 0)
  let v = cc.vv[r] as number
  let j = i
  for (; 3 * j < cloud.length && cloud[3 * j] === r && (cloud[3 * j + 1] as number) <= v + 1; j++) v = Math.max(v, cloud[3 * j + 2] as number)
  if (j === i) return
  cc.vv[r] = v
  if (3 * (j - i) === cloud.length) cc.cloud = NO_DOTS
  else cloud.splice(3 * i, 3 * (j - i))
}

/** Folds every run that has become contiguous with the version vector into it. */
export function compact(cc: CausalContext): void {
  for (let k = 0; k < cc.cloud.length; ) {
    const r = cc.cloud[k] as number
    absorb(cc, r)
    k = 3 * runAt(cc.cloud, r + 1, 0)
  }
}

/**
 * The compact context of just the given dots (flat (index, counter) pairs over `ids`), numbered
 * by a table of only the replicas they mention: how a mutator builds the context of its delta.
 * Returns the context and the translation from `ids` indices to its own (-1: not mentioned).
 * `pairs` is sorted in place.
 */
export function contextOf(ids: readonly string[], pairs: number[]): { cc: CausalContext; remap: number[] } {
  sortPairs(pairs)
  const remap = new Array<number>(ids.length).fill(-1)
  let k = 0
  for (let i = 0; i < pairs.length; i += 2) if (remap[pairs[i] as number] === -1) remap[pairs[i] as number] = k++
  const table = new Array<string>(k)
  for (let r = 0; r < ids.length; r++) if ((remap[r] as number) >= 0) table[remap[r] as number] = ids[r] as string
  // Ascending counters per replica: once there is a gap, every later counter is beyond it and
  // goes to a run, extending the last one when consecutive.
  const vv = new Array<number>(k).fill(0)
  const runs: number[] = []
  let prevR = -1
  let prevN = 0
  for (let i = 0; i < pairs.length; i += 2) {
    const r = pairs[i] as number
    const n = pairs[i + 1] as number
    if (r === prevR && n === prevN) continue
    prevR = r
    prevN = n
    const d = remap[r] as number
    if (n === (vv[d] as number) + 1) vv[d] = n
    else if (runs.length > 0 && runs[runs.length - 3] === d && runs[runs.length - 1] === n - 1) runs[runs.length - 1] = n
    else runs.push(d, n, n)
  }
  // a copy at the exact length: push leaves spare capacity
  return { cc: { ids: table, vv, cloud: runs.length === 0 ? NO_DOTS : runs.slice() }, remap }
}

/** Sorts flat (index, counter) pairs by (index, counter), in place. */
export function sortPairs(pairs: number[]): void {
  if (pairs.length <= 2) return
  if (pairs.length <= 32) {
    // insertion sort: these lists are a handful of dots
    for (let i = 2; i < pairs.length; i += 2) {
      const r = pairs[i] as number
      const n = pairs[i + 1] as number
      let j = i - 2
      while (j >= 0 && ((pairs[j] as number) > r || (pairs[j] === r && (pairs[j + 1] as number) > n))) {
        pairs[j + 2] = pairs[j] as number
        pairs[j + 3] = pairs[j + 1] as number
        j -= 2
      }
      pairs[j + 2] = r
      pairs[j + 3] = n
    }
    return
  }
  const tmp: [number, number][] = []
  for (let i = 0; i < pairs.length; i += 2) tmp.push([pairs[i] as number, pairs[i + 1] as number])
  tmp.sort((a, b) => a[0] - b[0] || a[1] - b[1])
  tmp.forEach(([r, n], k) => {
    pairs[2 * k] = r
    pairs[2 * k + 1] = n
  })
}

/**
 * Makes sure every replica of `other` has an index in `into` and returns the translation
 * other-index -> into-index. New replicas get nothing seen yet; the caller joins their dots next.
 */
export function mapReplicas(into: CausalContext, other: CausalContext): number[] {
  const map = new Array<number>(other.ids.length)
  for (let j = 0; j < other.ids.length; j++) map[j] = ensureReplica(into, other.ids[j] as string)
  return map
}

/**
 * Joins `other` into `into` (set union of the dots, kept compact); `map` comes from
 * `mapReplicas(into, other)`. Returns true if `into` gained a dot: a raised vv[r] gains at least
 * vv[r] + 1, which no run holds, and addRun reports exactly whether a run brought anything new.
 */
export function joinContext(into: CausalContext, other: CausalContext, map: readonly number[]): boolean {
  let changed = false
  for (let j = 0; j < other.vv.length; j++) {
    const r = map[j] as number
    const n = other.vv[j] as number
    if (n > (into.vv[r] as number)) {
      into.vv[r] = n
      absorb(into, r)
      changed = true
    }
  }
  const oc = other.cloud
  for (let k = 0; k < oc.length; k += 3) {
    if (addRun(into, map[oc[k] as number] as number, oc[k + 1] as number, oc[k + 2] as number)) changed = true
  }
  return changed
}

/** True if any dot at all has been seen. */
export function isEmptyContext(cc: CausalContext): boolean {
  return cc.cloud.length === 0 && cc.vv.every((n) => n === 0)
}

/**
 * Format (part of a type's format, after its version byte):
 *   replicas: count, then ids ascending (varString);
 *   vv:       count, then (replica rank, counter > 0), ranks ascending;
 *   cloud:    count, then (replica rank, counter), ascending by (rank, counter), each counter >= vv + 2
 *             (every dot of every run: runs are an in-memory form).
 * A rank is the replica's position in the sorted id list, so equal contexts give equal bytes
 * whatever order their replicas were met in. Returns index -> rank for the caller's own dots
 * (-1 for a replica that nothing references, which the table omits).
 */
export function encodeContext(enc: encoding.Encoder, cc: CausalContext): number[] {
  const k = cc.ids.length
  const referenced = new Array<boolean>(k).fill(false)
  for (let i = 0; i < k; i++) if ((cc.vv[i] as number) > 0) referenced[i] = true
  for (let i = 0; i < cc.cloud.length; i += 3) referenced[cc.cloud[i] as number] = true
  const order: number[] = []
  for (let i = 0; i < k; i++) if (referenced[i]) order.push(i)
  order.sort((a, b) => compareStrings(cc.ids[a] as string, cc.ids[b] as string))
  const rank = new Array<number>(k).fill(-1)
  order.forEach((i, pos) => (rank[i] = pos))

  encoding.writeVarUint(enc, order.length)
  for (const i of order) encoding.writeVarString(enc, cc.ids[i] as string)
  let nv = 0
  for (const i of order) if ((cc.vv[i] as number) > 0) nv++
  encoding.writeVarUint(enc, nv)
  for (const i of order) {
    const n = cc.vv[i] as number
    if (n > 0) {
      encoding.writeVarUint(enc, rank[i] as number)
      encoding.writeVarUint(enc, n)
    }
  }
  const runs = cc.cloud
  let dots = 0
  const byRank: number[] = []
  for (let k = 0; k < runs.length; k += 3) {
    dots += (runs[k + 2] as number) - (runs[k + 1] as number) + 1
    byRank.push(k)
  }
  // runs of one replica are in order already; replicas go by rank
  byRank.sort((a, b) => (rank[runs[a] as number] as number) - (rank[runs[b] as number] as number) || (runs[a + 1] as number) - (runs[b + 1] as number))
  encoding.writeVarUint(enc, dots)
  for (const k of byRank) {
    const rk = rank[runs[k] as number] as number
    for (let n = runs[k + 1] as number; n <= (runs[k + 2] as number); n++) {
      encoding.writeVarUint(enc, rk)
      encoding.writeVarUint(enc, n)
    }
  }
  return rank
}

/** Flat (index, counter) pairs translated to ranks and sorted by (rank, counter). */
export function rankedPairs(pairs: readonly number[], rank: readonly number[]): number[] {
  const out = new Array<number>(pairs.length)
  for (let i = 0; i < pairs.length; i += 2) {
    out[i] = rank[pairs[i] as number] as number
    out[i + 1] = pairs[i + 1] as number
  }
  sortPairs(out)
  return out
}

/**
 * Reads a context in canonical form; indices of the result are ranks (the table is sorted).
 * Refuses: unsorted or duplicate replicas, vv entries out of range, unsorted or zero; cloud dots
 * out of range, unsorted, duplicated, covered by or contiguous with the vv; unreferenced replicas.
 */
export function decodeContext(dec: decoding.Decoder, type: string): CausalContext {
  const ids = internIds(readSortedStrings(dec, type, 'replicas'))
  const vv = new Array<number>(ids.length).fill(0)
  const referenced = new Array<boolean>(ids.length).fill(false)
  const nv = readCount(dec, type, 2)
  let prev = -1
  for (let i = 0; i < nv; i++) {
    const at = dec.pos
    const r = readUint(dec, type)
    const n = readUint(dec, type)
    if (r >= ids.length) throw new CrdtDecodeError(type, at, `replica index ${r} out of range`)
    if (r <= prev) throw new CrdtDecodeError(type, at, 'version vector not in ascending replica order')
    if (n === 0) throw new CrdtDecodeError(type, at, 'a zero version vector entry is not canonical')
    vv[r] = n
    referenced[r] = true
    prev = r
  }
  const nc = readCount(dec, type, 2)
  const runs: number[] = []
  let pr = -1
  let pn = 0
  for (let i = 0; i < nc; i++) {
    const at = dec.pos
    const r = readUint(dec, type)
    const n = readUint(dec, type)
    if (r >= ids.length) throw new CrdtDecodeError(type, at, `replica index ${r} out of range`)
    if (r < pr || (r === pr && n <= pn)) throw new CrdtDecodeError(type, at, 'dot cloud not in ascending order')
    if (n < (vv[r] as number) + 2) throw new CrdtDecodeError(type, at, 'a cloud dot covered by or contiguous with the version vector is not canonical')
    if (r === pr && n === pn + 1) runs[runs.length - 1] = n
    else runs.push(r, n, n)
    referenced[r] = true
    pr = r
    pn = n
  }
  const unused = referenced.indexOf(false)
  if (unused >= 0) throw new CrdtDecodeError(type, dec.pos, `replica ${JSON.stringify(ids[unused])} is referenced by nothing`)
  // a copy at the exact length: push leaves spare capacity
  return { ids, vv, cloud: runs.length === 0 ? NO_DOTS : runs.slice() }
}
