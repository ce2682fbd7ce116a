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
 * - `cloud` is flat (index, counter) pairs, sorted by (index, counter), distinct, and holds no
 *   dot that the version vector covers or that would extend it (counter >= vv + 2).
 *
 * Memory: a realtime view holds millions of contexts, so arrays are kept at their exact length.
 * `ids` and `cloud` are never mutated, only replaced (they change rarely: a new replica, a dot
 * received out of order), which lets contexts share them: every empty cloud is one frozen array
 * and replica tables are interned (`internIds`); `vv` is updated in place, since every local add
 * bumps it, and replaced only when it grows.
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
  /** Dots beyond the contiguous prefixes, as flat sorted (index, counter) pairs; usually empty.
   * Replaced, never mutated. */
  cloud: readonly number[]
}

/** The cloud of almost every context: shared, hence frozen. */
export const NO_DOTS: readonly number[] = Object.freeze([])
export const NO_IDS: readonly string[] = Object.freeze([])

export function emptyContext(): CausalContext {
  return { ids: NO_IDS, vv: [], cloud: NO_DOTS }
}

export function cloneContext(cc: CausalContext): CausalContext {
  // ids and cloud are immutable: sharing them is a deep copy.
  return { ids: cc.ids, vv: cc.vv.slice(), cloud: cc.cloud }
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
  if (n <= (cc.vv[r] as number)) return true
  const cloud = cc.cloud
  for (let i = 0; i < cloud.length; i += 2) {
    const cr = cloud[i] as number
    if (cr === r) {
      const cn = cloud[i + 1] as number
      if (cn === n) return true
      if (cn > n) return false
    } else if (cr > r) return false
  }
  return false
}

/** The highest counter seen from replica r, contiguous or not: the next fresh dot is this + 1. */
export function maxCounter(cc: CausalContext, r: number): number {
  let max = cc.vv[r] as number
  const cloud = cc.cloud
  for (let i = 0; i < cloud.length; i += 2) if (cloud[i] === r && (cloud[i + 1] as number) > max) max = cloud[i + 1] as number
  return max
}

/** Inserts (r, n) into the sorted cloud; false if it is there already. */
function insertCloud(cc: CausalContext, r: number, n: number): boolean {
  const cloud = cc.cloud
  let i = 0
  for (; i < cloud.length; i += 2) {
    const cr = cloud[i] as number
    const cn = cloud[i + 1] as number
    if (cr === r && cn === n) return false
    if (cr > r || (cr === r && cn > n)) break
  }
  cc.cloud = cloud.toSpliced(i, 0, r, n)
  return true
}

/** Adds the dot (r, n), keeping the context compact; true if it was not seen before. */
export function addDot(cc: CausalContext, r: number, n: number): boolean {
  const v = cc.vv[r] as number
  if (n <= v) return false
  if (n === v + 1) {
    cc.vv[r] = n
    if (cc.cloud.length > 0) compact(cc)
    return true
  }
  return insertCloud(cc, r, n)
}

/**
 * Folds into the version vector every cloud dot that has become contiguous with it and drops the
 * ones it covers. The cloud is sorted by (replica, counter), so one pass suffices: absorbing
 * (r, c) makes (r, c + 1), if present, the very next pair.
 */
export function compact(cc: CausalContext): void {
  const { vv, cloud } = cc
  let kept: number[] | undefined
  for (let i = 0; i < cloud.length; i += 2) {
    const r = cloud[i] as number
    const n = cloud[i + 1] as number
    const v = vv[r] as number
    if (n <= v || n === v + 1) {
      if (n > v) vv[r] = n
      kept ??= cloud.slice(0, i)
      continue
    }
    kept?.push(r, n)
  }
  if (kept !== undefined) cc.cloud = kept.length === 0 ? NO_DOTS : kept.slice()
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
  // Ascending counters per replica: once there is a gap, every later counter is beyond it. Two
  // passes so that the cloud is allocated at its exact length.
  const vv = new Array<number>(k).fill(0)
  let inCloud = 0
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
    else inCloud++
  }
  let cloud = NO_DOTS
  if (inCloud > 0) {
    const out = new Array<number>(2 * inCloud)
    let w = 0
    prevR = -1
    for (let i = 0; i < pairs.length; i += 2) {
      const r = pairs[i] as number
      const n = pairs[i + 1] as number
      if (r === prevR && n === prevN) continue
      prevR = r
      prevN = n
      const d = remap[r] as number
      if (n > (vv[d] as number)) {
        out[w++] = d
        out[w++] = n
      }
    }
    cloud = out
  }
  return { cc: { ids: table, vv, cloud }, remap }
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
 * Joins `other` into `into` (set union of the dots, then compaction); `map` comes from
 * `mapReplicas(into, other)`. Returns true if `into` gained a dot. A gain is exact: if other's
 * vv[r] exceeds ours then our vv[r] + 1, which compaction keeps out of our cloud, is new to us.
 */
export function joinContext(into: CausalContext, other: CausalContext, map: readonly number[]): boolean {
  let changed = false
  for (let j = 0; j < other.vv.length; j++) {
    const r = map[j] as number
    const n = other.vv[j] as number
    if (n > (into.vv[r] as number)) {
      into.vv[r] = n
      changed = true
    }
  }
  const oc = other.cloud
  for (let k = 0; k < oc.length; k += 2) {
    const r = map[oc[k] as number] as number
    const n = oc[k + 1] as number
    const v = into.vv[r] as number
    if (n <= v) continue
    // the usual delta: the next dot of its replica, no cloud needed
    if (n === v + 1) into.vv[r] = n
    else if (!insertCloud(into, r, n)) continue
    changed = true
  }
  if (changed && into.cloud.length > 0) compact(into)
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
 *   cloud:    count, then (replica rank, counter), ascending by (rank, counter), each counter >= vv + 2.
 * A rank is the replica's position in the sorted id list, so equal contexts give equal bytes
 * whatever order their replicas were met in. Returns index -> rank for the caller's own dots
 * (-1 for a replica that nothing references, which the table omits).
 */
export function encodeContext(enc: encoding.Encoder, cc: CausalContext): number[] {
  const k = cc.ids.length
  const referenced = new Array<boolean>(k).fill(false)
  for (let i = 0; i < k; i++) if ((cc.vv[i] as number) > 0) referenced[i] = true
  for (let i = 0; i < cc.cloud.length; i += 2) referenced[cc.cloud[i] as number] = true
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
  const cloud = rankedPairs(cc.cloud, rank)
  encoding.writeVarUint(enc, cloud.length / 2)
  for (const x of cloud) encoding.writeVarUint(enc, x)
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
  const cloud = nc === 0 ? NO_DOTS : new Array<number>(2 * nc)
  let pr = -1
  let pn = 0
  for (let i = 0; i < nc; i++) {
    const at = dec.pos
    const r = readUint(dec, type)
    const n = readUint(dec, type)
    if (r >= ids.length) throw new CrdtDecodeError(type, at, `replica index ${r} out of range`)
    if (r < pr || (r === pr && n <= pn)) throw new CrdtDecodeError(type, at, 'dot cloud not in ascending order')
    if (n < (vv[r] as number) + 2) throw new CrdtDecodeError(type, at, 'a cloud dot covered by or contiguous with the version vector is not canonical')
    ;(cloud as number[])[2 * i] = r
    ;(cloud as number[])[2 * i + 1] = n
    referenced[r] = true
    pr = r
    pn = n
  }
  const unused = referenced.indexOf(false)
  if (unused >= 0) throw new CrdtDecodeError(type, dec.pos, `replica ${JSON.stringify(ids[unused])} is referenced by nothing`)
  return { ids, vv, cloud }
}
