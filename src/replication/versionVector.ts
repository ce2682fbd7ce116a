/**
 * A version vector of delivered deltas: per origin replica, the highest sequence s such that
 * deltas 1..s have all been seen, plus the few seen beyond that prefix (deltas can arrive out of
 * order when they travel different paths; joins do not care, but catch-up must know exactly what
 * a peer lacks). Compacts itself: extras that become contiguous fold into the prefix.
 */
import * as encoding from 'lib0/encoding'
import type * as decoding from 'lib0/decoding'
import { readCount, readString, readUint } from '../../crdts/codec.js'

interface Entry {
  max: number
  /** Sequences > max + 1 already seen; usually empty. */
  extra: Set<number> | null
}

export class VersionVector {
  private readonly m = new Map<string, Entry>()

  static from(entries: Iterable<[string, number]>): VersionVector {
    const vv = new VersionVector()
    for (const [o, s] of entries) if (s > 0) vv.m.set(o, { max: s, extra: null })
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
    let m = e.max
    if (e.extra) for (const s of e.extra) if (s > m) m = s
    return m
  }

  covers(origin: string, seq: number): boolean {
    const e = this.m.get(origin)
    if (!e) return false
    return seq <= e.max || (e.extra !== null && e.extra.has(seq))
  }

  /** Records a delivered delta; false if it was already there. */
  add(origin: string, seq: number): boolean {
    let e = this.m.get(origin)
    if (!e) this.m.set(origin, (e = { max: 0, extra: null }))
    if (seq <= e.max || (e.extra !== null && e.extra.has(seq))) return false
    if (seq === e.max + 1) {
      e.max = seq
      if (e.extra !== null) {
        while (e.extra.delete(e.max + 1)) e.max++
        if (e.extra.size === 0) e.extra = null
      }
    } else {
      ;(e.extra ??= new Set()).add(seq)
    }
    return true
  }

  /** Records every delta 1..seq of `origin` (as after a full-state exchange). */
  raise(origin: string, seq: number): boolean {
    const e = this.m.get(origin)
    if (!e) {
      if (seq <= 0) return false
      this.m.set(origin, { max: seq, extra: null })
      return true
    }
    if (seq <= e.max) return false
    e.max = seq
    if (e.extra !== null) {
      for (const s of e.extra) if (s <= seq) e.extra.delete(s)
      while (e.extra.delete(e.max + 1)) e.max++
      if (e.extra.size === 0) e.extra = null
    }
    return true
  }

  /** Joins another vector into this one; true if this one grew. */
  merge(other: VersionVector): boolean {
    let changed = false
    for (const [o, e] of other.m) {
      if (this.raise(o, e.max)) changed = true
      if (e.extra) for (const s of e.extra) if (this.add(o, s)) changed = true
    }
    return changed
  }

  /** True if every delta this vector holds is also in `other`. */
  isCoveredBy(other: VersionVector): boolean {
    for (const [o, e] of this.m) {
      const theirs = other.m.get(o)
      const base = theirs?.max ?? 0
      if (base >= e.max && e.extra === null) continue
      // The gap base+1..e.max can only be covered by the other's extras: count before walking.
      if (e.max - base > (theirs?.extra?.size ?? 0)) return false
      for (let s = base + 1; s <= e.max; s++) if (!other.covers(o, s)) return false
      if (e.extra) for (const s of e.extra) if (!other.covers(o, s)) return false
    }
    return true
  }

  clone(): VersionVector {
    const vv = new VersionVector()
    for (const [o, e] of this.m) vv.m.set(o, { max: e.max, extra: e.extra ? new Set(e.extra) : null })
    return vv
  }

  toJSON(): Record<string, number> {
    const out: Record<string, number> = {}
    for (const o of this.origins()) out[o] = this.get(o)
    return out
  }

  /** Sum over origins of the contiguous prefixes: how many deltas this vector has seen, about. */
  total(): number {
    let t = 0
    for (const e of this.m.values()) t += e.max + (e.extra?.size ?? 0)
    return t
  }

  encode(enc: encoding.Encoder): void {
    const origins = this.origins()
    encoding.writeVarUint(enc, origins.length)
    for (const o of origins) {
      const e = this.m.get(o) as Entry
      encoding.writeVarString(enc, o)
      encoding.writeVarUint(enc, e.max)
      const extra = e.extra ? [...e.extra].sort((a, b) => a - b) : []
      encoding.writeVarUint(enc, extra.length)
      for (const s of extra) encoding.writeVarUint(enc, s)
    }
  }

  static decode(dec: decoding.Decoder, what = 'version vector'): VersionVector {
    const vv = new VersionVector()
    const n = readCount(dec, what, 3)
    for (let i = 0; i < n; i++) {
      const o = readString(dec, what)
      vv.raise(o, readUint(dec, what))
      const k = readCount(dec, what, 1)
      for (let j = 0; j < k; j++) vv.add(o, readUint(dec, what))
    }
    return vv
  }
}
