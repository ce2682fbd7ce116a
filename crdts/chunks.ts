/**
 * A sorted list of (key, value) entries kept in chunks of bounded length: the storage of the few
 * big states a view holds (an OR-set of 100k members), where one sorted array would move O(n)
 * entries on every insert and delete. Here a lookup is a binary search over the chunks' last
 * keys, then one within a chunk; an insert or delete moves at most `chunkLimits.max` entries
 * (plus, when a chunk splits or empties, the chunk list itself: once per max/2 operations at
 * most). In-order iteration is a walk over `keys` / `vals`, which callers read directly.
 *
 * Keys compare with `<`: strings by UTF-16 code units (the order every encoding uses), or
 * numbers. A key is unique through get/set/delete; the *Multi methods keep duplicates (an
 * index by dot, where one dot normally names one element but is not guaranteed to).
 *
 * Pure data and code, no I/O. `work` counts the entries moved or visited, so that tests can
 * check that an operation's cost follows what it touches rather than the size of the list.
 */

/** Entries moved, copied or visited by the structures of big states (see the header). */
export const work = { steps: 0 }

/** Tests shrink `max` to run every law through many tiny chunks. */
export const chunkLimits = { max: 512 }

export class SortedChunks<K extends string | number, V> {
  /** Non-empty chunks of ascending keys; every key of a chunk is <= every key of the next. */
  keys: K[][] = []
  vals: V[][] = []
  /** lasts[c]: the last key of chunk c. */
  lasts: K[] = []
  size = 0

  /** Entries already in ascending order (the arrays are not kept). */
  static fromSorted<K extends string | number, V>(keys: readonly K[], vals: readonly V[]): SortedChunks<K, V> {
    const out = new SortedChunks<K, V>()
    // Half-full chunks: room for inserts before the first splits.
    const step = Math.max(1, chunkLimits.max >> 1)
    for (let i = 0; i < keys.length; i += step) {
      const ks = keys.slice(i, i + step)
      out.keys.push(ks)
      out.vals.push(vals.slice(i, i + step))
      out.lasts.push(ks[ks.length - 1] as K)
    }
    out.size = keys.length
    work.steps += keys.length
    return out
  }

  /** The first chunk whose last key is >= k (where the first k, if any, is), or the chunk count. */
  private chunkFor(k: K): number {
    const lasts = this.lasts
    let lo = 0
    let hi = lasts.length
    while (lo < hi) {
      const mid = (lo + hi) >>> 1
      if ((lasts[mid] as K) < k) lo = mid + 1
      else hi = mid
    }
    return lo
  }

  get(k: K): V | undefined {
    const c = this.chunkFor(k)
    if (c === this.keys.length) return undefined
    const ks = this.keys[c] as K[]
    const i = lowerBound(ks, k)
    return ks[i] === k ? (this.vals[c] as V[])[i] : undefined
  }

  has(k: K): boolean {
    const c = this.chunkFor(k)
    if (c === this.keys.length) return false
    const ks = this.keys[c] as K[]
    return ks[lowerBound(ks, k)] === k
  }

  /** Inserts or replaces. */
  set(k: K, v: V): void {
    let c = this.chunkFor(k)
    if (c < this.keys.length) {
      const ks = this.keys[c] as K[]
      const i = lowerBound(ks, k)
      if (ks[i] === k) {
        ;(this.vals[c] as V[])[i] = v
        return
      }
      this.insertAt(c, i, k, v)
      return
    }
    if (c === 0) {
      this.keys.push([k])
      this.vals.push([v])
      this.lasts.push(k)
      this.size++
      return
    }
    c--
    this.insertAt(c, (this.keys[c] as K[]).length, k, v)
  }

  delete(k: K): boolean {
    const c = this.chunkFor(k)
    if (c === this.keys.length) return false
    const ks = this.keys[c] as K[]
    const i = lowerBound(ks, k)
    if (ks[i] !== k) return false
    this.removeAt(c, i)
    return true
  }

  /** Inserts an entry even if its key is there already. */
  insertMulti(k: K, v: V): void {
    const c = this.chunkFor(k)
    if (c < this.keys.length) this.insertAt(c, lowerBound(this.keys[c] as K[], k), k, v)
    else this.set(k, v) // after every key: appends
  }

  /** Deletes one entry (k, v); false if there is none. */
  deleteMulti(k: K, v: V): boolean {
    let c = this.chunkFor(k)
    let i = c < this.keys.length ? lowerBound(this.keys[c] as K[], k) : 0
    // equal keys may run on into the next chunks
    for (; c < this.keys.length; c++, i = 0) {
      const ks = this.keys[c] as K[]
      const vs = this.vals[c] as V[]
      for (; i < ks.length; i++) {
        if (ks[i] !== k) return false
        if (vs[i] === v) {
          this.removeAt(c, i)
          return true
        }
      }
    }
    return false
  }

  /** Appends to `outK` / `outV` every entry with lo <= key <= hi, in order. */
  collectRange(lo: K, hi: K, outK: K[], outV: V[]): void {
    let c = this.chunkFor(lo)
    // only the first chunk holds keys below lo
    let i = c < this.keys.length ? lowerBound(this.keys[c] as K[], lo) : 0
    for (; c < this.keys.length; c++, i = 0) {
      const ks = this.keys[c] as K[]
      const vs = this.vals[c] as V[]
      for (; i < ks.length; i++) {
        const x = ks[i] as K
        if (hi < x) return
        outK.push(x)
        outV.push(vs[i] as V)
      }
    }
  }

  /** Every entry, in order, as two arrays of exact length. */
  toArrays(): { keys: K[]; vals: V[] } {
    const keys = new Array<K>(this.size)
    const vals = new Array<V>(this.size)
    let w = 0
    for (let c = 0; c < this.keys.length; c++) {
      const ks = this.keys[c] as K[]
      const vs = this.vals[c] as V[]
      for (let i = 0; i < ks.length; i++) {
        keys[w] = ks[i] as K
        vals[w++] = vs[i] as V
      }
    }
    work.steps += this.size
    return { keys, vals }
  }

  /** A copy sharing no array with this one; `copy` copies a value that is mutable. */
  clone(copy: (v: V) => V): SortedChunks<K, V> {
    const out = new SortedChunks<K, V>()
    out.keys = this.keys.map((ks) => ks.slice())
    out.vals = this.vals.map((vs) => vs.map(copy))
    out.lasts = this.lasts.slice()
    out.size = this.size
    work.steps += this.size
    return out
  }

  private insertAt(c: number, i: number, k: K, v: V): void {
    const ks = this.keys[c] as K[]
    ks.splice(i, 0, k)
    ;(this.vals[c] as V[]).splice(i, 0, v)
    work.steps += ks.length - i
    if (i === ks.length - 1) this.lasts[c] = k
    this.size++
    if (ks.length > chunkLimits.max) this.split(c)
  }

  private removeAt(c: number, i: number): void {
    const ks = this.keys[c] as K[]
    ks.splice(i, 1)
    ;(this.vals[c] as V[]).splice(i, 1)
    work.steps += ks.length - i + 1
    this.size--
    if (ks.length === 0) {
      this.keys.splice(c, 1)
      this.vals.splice(c, 1)
      this.lasts.splice(c, 1)
      work.steps += this.keys.length - c + 1
      return
    }
    if (i === ks.length) this.lasts[c] = ks[i - 1] as K
    // Chunks shrunk far below the limit merge with a neighbour, so the chunk count stays
    // proportional to size / max however the entries came and went.
    if (ks.length < chunkLimits.max >> 2 && this.keys.length > 1) this.merge(c < this.keys.length - 1 ? c : c - 1)
  }

  private split(c: number): void {
    const ks = this.keys[c] as K[]
    const half = ks.length >> 1
    const tailK = ks.splice(half)
    const tailV = (this.vals[c] as V[]).splice(half)
    this.keys.splice(c + 1, 0, tailK)
    this.vals.splice(c + 1, 0, tailV)
    this.lasts.splice(c, 0, ks[half - 1] as K)
    work.steps += tailK.length + this.keys.length - c
  }

  /** Merges chunk c + 1 into chunk c, then splits the result if it is too long. */
  private merge(c: number): void {
    const ks = this.keys[c] as K[]
    const vs = this.vals[c] as V[]
    const nk = this.keys[c + 1] as K[]
    const nv = this.vals[c + 1] as V[]
    for (let i = 0; i < nk.length; i++) {
      ks.push(nk[i] as K)
      vs.push(nv[i] as V)
    }
    this.keys.splice(c + 1, 1)
    this.vals.splice(c + 1, 1)
    this.lasts.splice(c, 1)
    work.steps += nk.length + this.keys.length - c
    if (ks.length > chunkLimits.max) this.split(c)
  }
}

/** The first index whose key is >= k. */
function lowerBound<K extends string | number>(ks: readonly K[], k: K): number {
  let lo = 0
  let hi = ks.length
  while (lo < hi) {
    const mid = (lo + hi) >>> 1
    if ((ks[mid] as K) < k) lo = mid + 1
    else hi = mid
  }
  return lo
}
