/**
 * Snapshot pages: which page holds which keys, and how a page is cut when it grows or shrinks.
 *
 * Why pages: one LevelDB entry per key made recovery pay per key for an iterator step, two
 * Buffers, a key parse and a checksum, and compaction pay per key for a batch operation. A page
 * holds the states of a contiguous range of keys (a few KiB), so those costs are paid per page.
 *
 * A view's pages partition its key space into ranges [bounds[i], bounds[i + 1]), the first
 * starting at '' so that every key has a page. Ranges are compared in UTF-16 code unit order, the
 * order of the KeyIndex, so a page's keys are one run of the index's sorted keys and compaction
 * encodes a page straight from memory without reading the disk. A page is always written whole,
 * from the current in-memory states of every key in its range.
 */

/** A page past MAX_BYTES is cut into pages of about TARGET_BYTES... */
export const PAGE_TARGET_BYTES = 4096
export const PAGE_MAX_BYTES = 2 * PAGE_TARGET_BYTES
/** ...and one under MIN_BYTES takes in the page after it, so expiry does not leave a trail of tiny pages. */
export const PAGE_MIN_BYTES = PAGE_TARGET_BYTES / 4

export class PageBounds {
  /** The first key of each page's range, ascending; bounds[0] is ''. */
  bounds: string[] = ['']

  /** Rebuilds the bounds read from disk (in byte order, which differs from UTF-16 order only around surrogates). */
  static fromDisk(firsts: string[]): PageBounds {
    const p = new PageBounds()
    const sorted = firsts.slice().sort()
    p.bounds = sorted[0] === '' ? sorted : ['', ...sorted]
    return p
  }

  /** The index of the page whose range holds `key`: the last bound <= key. */
  pageOf(key: string): number {
    const b = this.bounds
    let lo = 1
    let hi = b.length
    while (lo < hi) {
      const mid = (lo + hi) >>> 1
      if ((b[mid] as string) <= key) lo = mid + 1
      else hi = mid
    }
    return lo - 1
  }

  /** The index of the page starting exactly at `first`, or -1 (merged into the page before it). */
  indexOf(first: string): number {
    const i = this.pageOf(first)
    return this.bounds[i] === first ? i : -1
  }

  /** Replaces the bounds of pages i+1 .. j-1 by `starts` (new pages cut from page i's range). */
  replace(i: number, j: number, starts: readonly string[]): void {
    this.bounds.splice(i + 1, j - i - 1, ...starts)
  }

  /** Removes the bounds of pages i .. j-1 (i > 0): their range joins the page before. */
  remove(i: number, j: number): void {
    if (i === 0) throw new Error('the first page of a view cannot be removed')
    this.bounds.splice(i, j - i)
  }
}

/** The first index whose key is >= `key` in ascending `keys`. */
export function lowerBound(keys: readonly string[], key: string): number {
  let lo = 0
  let hi = keys.length
  while (lo < hi) {
    const mid = (lo + hi) >>> 1
    if ((keys[mid] as string) < key) lo = mid + 1
    else hi = mid
  }
  return lo
}
