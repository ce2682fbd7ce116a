/**
 * An ordered index of keys to values: a Map for point access (the write hot path) and a sorted
 * key array for prefix scans, kept sorted lazily. New keys wait in an unsorted tail that the next
 * scan sorts and merges in, so a write never pays for ordering and a scan pays O(n + k log k)
 * only after k new keys. Realtime views are written far more often than scanned.
 */

export interface ScanOptions {
  prefix?: string
  /** Exclusive lower bound: the page starts after this key. */
  after?: string
  limit: number
}

export interface ScanPage<V> {
  items: Array<{ key: string; value: V }>
  /** The `after` of the next page, or null when this page is the last. */
  next: string | null
}

export class KeyIndex<V> {
  private readonly map = new Map<string, V>()
  private sorted: string[] = []
  private tail: string[] = []
  private removed = 0

  get size(): number {
    return this.map.size
  }

  get(key: string): V | undefined {
    return this.map.get(key)
  }

  set(key: string, value: V): void {
    // The size says whether the key is new: one hash lookup instead of has() then set().
    const n = this.map.size
    this.map.set(key, value)
    if (this.map.size !== n) this.tail.push(key)
  }

  /**
   * Bulk loading (recovery) from a source that is mostly in ascending order: a key above every
   * sorted key goes straight to the end of the sorted array (and needs no lookup: it cannot be
   * held yet), so loading a million keys in order leaves nothing to sort. A key already held keeps
   * its value, which is returned for the caller to join into; else the result is undefined.
   */
  load(key: string, value: V): V | undefined {
    const sorted = this.sorted
    if (this.tail.length === 0 && this.removed === 0 && (sorted.length === 0 || (sorted[sorted.length - 1] as string) < key)) {
      this.map.set(key, value)
      sorted.push(key)
      return undefined
    }
    const had = this.map.get(key)
    if (had !== undefined) return had
    this.map.set(key, value)
    this.tail.push(key)
    return undefined
  }

  /**
   * Every key in ascending order. Later changes make a new array (only `load` appends in place,
   * keeping it sorted), so a caller may hold on to it as a snapshot of the keys; it must not change it.
   */
  sortedKeys(): readonly string[] {
    this.settle()
    return this.sorted
  }

  delete(key: string): boolean {
    if (!this.map.delete(key)) return false
    // The sorted array still names the key; scans skip it and the next sort drops it.
    this.removed++
    return true
  }

  clear(): void {
    this.map.clear()
    this.sorted = []
    this.tail = []
    this.removed = 0
  }

  entries(): IterableIterator<[string, V]> {
    return this.map.entries()
  }

  keys(): IterableIterator<string> {
    return this.map.keys()
  }

  /** Keys in ascending UTF-16 code unit order from `from` (inclusive) while `accept` holds. */
  *ascending(from = ''): Generator<string> {
    this.settle()
    const keys = this.sorted
    for (let i = lowerBound(keys, from); i < keys.length; i++) yield keys[i] as string
  }

  scan(opts: ScanOptions): ScanPage<V> {
    this.settle()
    const prefix = opts.prefix ?? ''
    const keys = this.sorted
    let i = lowerBound(keys, opts.after !== undefined && opts.after >= prefix ? opts.after : prefix)
    if (i < keys.length && keys[i] === opts.after) i++
    const items: Array<{ key: string; value: V }> = []
    for (; i < keys.length; i++) {
      const key = keys[i] as string
      if (!key.startsWith(prefix)) break
      if (items.length === opts.limit) return { items, next: items[items.length - 1]?.key ?? null }
      items.push({ key, value: this.map.get(key) as V })
    }
    return { items, next: null }
  }

  private settle(): void {
    if (this.tail.length === 0 && this.removed === 0) return
    const live = this.removed > 0 ? this.sorted.filter((k) => this.map.has(k)) : this.sorted
    const tail = this.tail.filter((k) => this.map.has(k)).sort()
    this.sorted = mergeSorted(live, dedupe(tail))
    this.tail = []
    this.removed = 0
  }
}

function dedupe(sorted: string[]): string[] {
  return sorted.filter((k, i) => i === 0 || sorted[i - 1] !== k)
}

function mergeSorted(a: string[], b: string[]): string[] {
  if (b.length === 0) return a
  if (a.length === 0) return b
  const out = new Array<string>(a.length + b.length)
  let i = 0
  let j = 0
  let k = 0
  while (i < a.length && j < b.length) {
    const x = a[i] as string
    const y = b[j] as string
    if (x === y) {
      out[k++] = x
      i++
      j++
    } else if (x < y) {
      out[k++] = x
      i++
    } else {
      out[k++] = y
      j++
    }
  }
  while (i < a.length) out[k++] = a[i++] as string
  while (j < b.length) out[k++] = b[j++] as string
  out.length = k
  return out
}

/** The first index whose key is >= `key`. */
function lowerBound(keys: string[], key: string): number {
  let lo = 0
  let hi = keys.length
  while (lo < hi) {
    const mid = (lo + hi) >>> 1
    if ((keys[mid] as string) < key) lo = mid + 1
    else hi = mid
  }
  return lo
}
