/**
 * A version vector of delivered deltas: per origin replica, the highest sequence s such that
 * deltas 1..s have all been seen, plus the ranges seen beyond that prefix (deltas can arrive out
 * of order when they travel different paths; joins do not care, but catch-up must know exactly
 * what a peer lacks). Ranges that become contiguous fold into the prefix.
 *
 * Extras are kept and encoded as ranges, not single sequences: a catch-up's `covers` names the
 * deltas a peer lacked, typically one long run per origin, and must cost a few bytes, not one
 * varint per delta. Memory and decoding work follow the number of ranges, whatever they span.
 */
import * as encoding from 'lib0/encoding'
import type * as decoding from 'lib0/decoding'
import { readCount, readString, readUint } from '../../crdts/codec.js'

interface Entry {
  max: number
  /** Disjoint, non-adjacent inclusive ranges [start, end], ascending, all starting above max + 1. */
  ranges: Array<[number, number]>
}

const NO_RANGES: Array<[number, number]> = []

export class VersionVector {
  private readonly m = new Map<string, Entry>()

  static from(entries: Iterable<[string, number]>): VersionVector {
    const vv = new VersionVector()
    for (const [o, s] of entries) if (s > 0) vv.m.set(o, { max: s, ranges: [] })
    return vv
  }

  origins(): string[] {
    return [...this.m.keys()].sort()
  }

  /** The contiguous prefix for `origin`. */
  get(origin: string): number {
    return this.m.get(origin)?.max ?? 0
  }

  /** The highest sequence seen of `origin`, contiguous or not. */
  max(origin: string): number {
    const e = this.m.get(origin)
    if (!e) return 0
    const last = e.ranges[e.ranges.length - 1]
    return last ? last[1] : e.max
  }

  covers(origin: string, seq: number): boolean {
    const e = this.m.get(origin)
    if (!e) return false
    if (seq <= e.max) return true
    return rangeIndex(e.ranges, seq) >= 0
  }

  /** Records a delivered delta; false if it was already there. */
  add(origin: string, seq: number): boolean {
    return this.addRange(origin, seq, seq)
  }

  /** Records deltas start..end of `origin`; true if anything was new. */
  addRange(origin: string, start: number, end: number): boolean {
    if (end < start || end < 1) return false
    let e = this.m.get(origin)
    if (!e) this.m.set(origin, (e = { max: 0, ranges: [] }))
    if (start < 1) start = 1
    if (end <= e.max) return false
    if (start <= e.max + 1) {
      e.max = end
      absorb(e)
      return true
    }
    return insertRange(e, start, end)
  }

  /** Records every delta 1..seq of `origin` (as after a full-state exchange). */
  raise(origin: string, seq: number): boolean {
    return seq > 0 && this.addRange(origin, 1, seq)
  }

  /** Joins another vector into this one; true if this one grew. */
  merge(other: VersionVector): boolean {
    let changed = false
    for (const [o, e] of other.m) {
      if (this.raise(o, e.max)) changed = true
      for (const [s, t] of e.ranges) if (this.addRange(o, s, t)) changed = true
    }
    return changed
  }

  /** True if every delta this vector holds is also in `other`. */
  isCoveredBy(other: VersionVector): boolean {
    for (const [o, e] of this.m) {
      const theirs = other.m.get(o)
      if (e.max > 0 && !coveredBy(theirs, 1, e.max)) return false
      for (const [s, t] of e.ranges) if (!coveredBy(theirs, s, t)) return false
    }
    return true
  }

  /**
   * The deltas this vector holds and `other` does not. A catch-up claims only these in its
   * `covers`: the receiver takes the claim's highest sequence as the end of what its own log can
   * serve, so claiming deltas it already logged would cost it that.
   */
  diff(other: VersionVector): VersionVector {
    const out = new VersionVector()
    for (const [o, e] of this.m) {
      const theirs = other.m.get(o)
      const mine: Array<[number, number]> = e.max > 0 ? [[1, e.max], ...e.ranges] : e.ranges
      const cut: Array<[number, number]> = theirs ? (theirs.max > 0 ? [[1, theirs.max], ...theirs.ranges] : theirs.ranges) : []
      let j = 0
      for (const [s0, t] of mine) {
        let s = s0
        while (j < cut.length && (cut[j] as [number, number])[1] < s) j++
        let k = j
        while (s <= t) {
          const c = cut[k]
          if (!c || c[0] > t) {
            out.addRange(o, s, t)
            break
          }
          if (c[0] > s) out.addRange(o, s, c[0] - 1)
          s = Math.max(s, c[1] + 1)
          k++
        }
      }
    }
    return out
  }

  clone(): VersionVector {
    const vv = new VersionVector()
    for (const [o, e] of this.m) vv.m.set(o, { max: e.max, ranges: e.ranges.map(([s, t]) => [s, t] as [number, number]) })
    return vv
  }

  toJSON(): Record<string, number> {
    const out: Record<string, number> = {}
    for (const o of this.origins()) out[o] = this.get(o)
    return out
  }

  /** How many deltas this vector holds. */
  total(): number {
    let t = 0
    for (const e of this.m.values()) {
      t += e.max
      for (const [s, u] of e.ranges) t += u - s + 1
    }
    return t
  }

  /**
   * Per origin (ascending): origin, max, range count, then per range the gap from the previous
   * end (the prefix counts as the first "range") minus 2 and the length minus 1, so every
   * encoding is canonical and no range can overlap or touch another.
   */
  encode(enc: encoding.Encoder): void {
    const origins = this.origins()
    encoding.writeVarUint(enc, origins.length)
    for (const o of origins) {
      const e = this.m.get(o) as Entry
      encoding.writeVarString(enc, o)
      encoding.writeVarUint(enc, e.max)
      encoding.writeVarUint(enc, e.ranges.length)
      let prev = e.max
      for (const [s, t] of e.ranges) {
        encoding.writeVarUint(enc, s - prev - 2)
        encoding.writeVarUint(enc, t - s)
        prev = t
      }
    }
  }

  static decode(dec: decoding.Decoder, what = 'version vector'): VersionVector {
    const vv = new VersionVector()
    const n = readCount(dec, what, 3)
    for (let i = 0; i < n; i++) {
      const o = readString(dec, what)
      const max = readUint(dec, what)
      const k = readCount(dec, what, 2)
      const e: Entry = { max, ranges: k === 0 ? [] : new Array<[number, number]>() }
      let prev = max
      for (let j = 0; j < k; j++) {
        const s = prev + 2 + readUint(dec, what)
        const t = s + readUint(dec, what)
        if (!Number.isSafeInteger(t)) throw new RangeError(`${what}: sequence out of the safe integer range`)
        e.ranges.push([s, t])
        prev = t
      }
      if (max > 0 || e.ranges.length > 0) {
        const existing = vv.m.get(o)
        if (existing) {
          // A repeated origin is not canonical but harmless: merge it.
          vv.raise(o, max)
          for (const [s, t] of e.ranges) vv.addRange(o, s, t)
        } else vv.m.set(o, e)
      }
    }
    return vv
  }
}

/** Index of the range holding `seq`, or -1. */
function rangeIndex(ranges: Array<[number, number]>, seq: number): number {
  let lo = 0
  let hi = ranges.length - 1
  while (lo <= hi) {
    const mid = (lo + hi) >>> 1
    const r = ranges[mid] as [number, number]
    if (seq < r[0]) hi = mid - 1
    else if (seq > r[1]) lo = mid + 1
    else return mid
  }
  return -1
}

/** Folds into the prefix every range the prefix now reaches, and drops ranges below it. */
function absorb(e: Entry): void {
  let i = 0
  while (i < e.ranges.length) {
    const r = e.ranges[i] as [number, number]
    if (r[0] > e.max + 1) break
    if (r[1] > e.max) e.max = r[1]
    i++
  }
  if (i > 0) e.ranges = i === e.ranges.length ? NO_RANGES.slice() : e.ranges.slice(i)
}

function insertRange(e: Entry, start: number, end: number): boolean {
  const ranges = e.ranges
  // first range that ends at or after start - 1 (could touch or overlap)
  let i = 0
  while (i < ranges.length && (ranges[i] as [number, number])[1] < start - 1) i++
  let j = i
  let s = start
  let t = end
  while (j < ranges.length && (ranges[j] as [number, number])[0] <= end + 1) {
    const r = ranges[j] as [number, number]
    if (r[0] <= start && r[1] >= end) return false
    s = Math.min(s, r[0])
    t = Math.max(t, r[1])
    j++
  }
  ranges.splice(i, j - i, [s, t])
  return true
}

function coveredBy(e: Entry | undefined, start: number, end: number): boolean {
  if (!e) return false
  if (end <= e.max) return true
  const from = Math.max(start, e.max + 1)
  const i = rangeIndex(e.ranges, from)
  if (i < 0) return false
  return (e.ranges[i] as [number, number])[1] >= end && (start > e.max || from === e.max + 1)
}
