/** An in-memory adapter: for tests and for embedders that want a node without disk. */
import { compareBytes, StorageError, type KeyRange, type StorageAdapter } from './adapter.js'

export function memoryAdapter(): StorageAdapter {
  // A sorted array keeps scans simple; memory stores hold test-sized data.
  let entries: Array<[Uint8Array, Uint8Array]> = []
  let closed = false
  const find = (key: Uint8Array): number => {
    let lo = 0
    let hi = entries.length
    while (lo < hi) {
      const mid = (lo + hi) >>> 1
      if (compareBytes((entries[mid] as [Uint8Array, Uint8Array])[0], key) < 0) lo = mid + 1
      else hi = mid
    }
    return lo
  }
  const check = () => {
    if (closed) throw new StorageError('closed', 'the store is closed')
  }
  const inRange = (k: Uint8Array, r: KeyRange) => compareBytes(k, r.gte) >= 0 && compareBytes(k, r.lt) < 0
  return {
    async get(key) {
      check()
      const i = find(key)
      const e = entries[i]
      return e && compareBytes(e[0], key) === 0 ? e[1].slice() : undefined
    },
    async write(ops) {
      check()
      for (const op of ops) {
        const i = find(op.key)
        const hit = entries[i] !== undefined && compareBytes((entries[i] as [Uint8Array, Uint8Array])[0], op.key) === 0
        if (op.type === 'put') {
          const e: [Uint8Array, Uint8Array] = [op.key.slice(), op.value.slice()]
          if (hit) entries[i] = e
          else entries.splice(i, 0, e)
        } else if (hit) {
          entries.splice(i, 1)
        }
      }
    },
    async *scan(range, opts = {}) {
      check()
      let picked = entries.filter(([k]) => inRange(k, range))
      if (opts.reverse) picked = picked.reverse()
      if (opts.limit !== undefined && opts.limit >= 0) picked = picked.slice(0, opts.limit)
      for (let i = 0; i < picked.length; i += 1000) {
        yield picked.slice(i, i + 1000).map(([k, v]) => [k.slice(), v.slice()] as [Uint8Array, Uint8Array])
      }
    },
    async clear(range) {
      check()
      entries = entries.filter(([k]) => !inRange(k, range))
    },
    async compact() {
      check()
    },
    async diskBytes() {
      return 0
    },
    async close() {
      closed = true
    },
  }
}
