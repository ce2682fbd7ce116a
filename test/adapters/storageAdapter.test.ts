/**
 * The conformance suite every StorageAdapter runs (as automerge-repo's runStorageAdapterTests):
 * the engine relies on exactly these behaviours and no others.
 */
import { afterEach, describe, expect, it } from 'vitest'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import type { StorageAdapter } from '../../src/storage/adapter.js'
import { openLevelAdapter } from '../../src/storage/levelAdapter.js'
import { memoryAdapter } from '../../src/storage/memoryAdapter.js'

const b = (...xs: number[]) => Uint8Array.from(xs)
const hex = (x: Uint8Array) => Buffer.from(x).toString('hex')

async function collect(a: StorageAdapter, gte: Uint8Array, lt: Uint8Array, opts?: { reverse?: boolean; limit?: number }) {
  const out: string[] = []
  for await (const chunk of a.scan({ gte, lt }, opts)) for (const [k, v] of chunk) out.push(`${hex(k)}=${hex(v)}`)
  return out
}

function runStorageAdapterTests(name: string, open: () => Promise<{ adapter: StorageAdapter; cleanup: () => Promise<void> }>) {
  describe(`storage adapter conformance: ${name}`, () => {
    let cleanup: (() => Promise<void>) | null = null
    const setup = async () => {
      const r = await open()
      cleanup = r.cleanup
      return r.adapter
    }
    afterEach(async () => {
      await cleanup?.()
      cleanup = null
    })

    it('a missing key reads as undefined; a put reads back; a del removes', async () => {
      const a = await setup()
      expect(await a.get(b(1))).toBeUndefined()
      await a.write([{ type: 'put', key: b(1), value: b(9, 9) }], { sync: false })
      expect(hex((await a.get(b(1)))!)).toBe('0909')
      await a.write([{ type: 'del', key: b(1) }], { sync: true })
      expect(await a.get(b(1))).toBeUndefined()
      await a.close()
    })

    it('a batch applies in order: the last op on a key wins', async () => {
      const a = await setup()
      await a.write(
        [
          { type: 'put', key: b(1), value: b(1) },
          { type: 'put', key: b(1), value: b(2) },
          { type: 'put', key: b(2), value: b(3) },
          { type: 'del', key: b(2) },
        ],
        { sync: false },
      )
      expect(hex((await a.get(b(1)))!)).toBe('02')
      expect(await a.get(b(2))).toBeUndefined()
      await a.close()
    })

    it('scans are bytewise ordered, half-open, reversible, limited and chunked', async () => {
      const a = await setup()
      const ops = []
      for (let i = 0; i < 2500; i++) ops.push({ type: 'put' as const, key: b(0x6c, i >> 8, i & 255), value: b(i & 255) })
      ops.push({ type: 'put' as const, key: b(0x6b, 0), value: b(0) }, { type: 'put' as const, key: b(0x6d), value: b(0) })
      await a.write(ops, { sync: false })
      const all = await collect(a, b(0x6c), b(0x6d))
      expect(all.length).toBe(2500)
      expect([...all].sort()).toEqual(all)
      expect(all[0]).toBe('6c0000=00')
      const rev = await collect(a, b(0x6c), b(0x6d), { reverse: true, limit: 1 })
      expect(rev).toEqual(['6c09c3=c3'])
      const some = await collect(a, b(0x6c, 0, 10), b(0x6c, 0, 20))
      expect(some.length).toBe(10)
      await a.close()
    })

    it('clear deletes exactly the range', async () => {
      const a = await setup()
      await a.write([1, 2, 3, 4].map((i) => ({ type: 'put' as const, key: b(0x6c, i), value: b(i) })), { sync: false })
      await a.clear({ gte: b(0x6c, 2), lt: b(0x6c, 4) })
      expect(await collect(a, b(0x6c), b(0x6d))).toEqual(['6c01=01', '6c04=04'])
      await a.compact({ gte: b(0x6c), lt: b(0x6d) })
      expect(await collect(a, b(0x6c), b(0x6d))).toEqual(['6c01=01', '6c04=04'])
      await a.close()
    })

    it('values are copies: mutating what was written or read changes nothing stored', async () => {
      const a = await setup()
      const v = b(1, 2, 3)
      await a.write([{ type: 'put', key: b(7), value: v }], { sync: false })
      v[0] = 99
      const got = (await a.get(b(7)))!
      expect(hex(got)).toBe('010203')
      got[0] = 42
      expect(hex((await a.get(b(7)))!)).toBe('010203')
      await a.close()
    })
  })
}

runStorageAdapterTests('memory', async () => ({ adapter: memoryAdapter(), cleanup: async () => {} }))

runStorageAdapterTests('leveldb', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'sl-adapter-'))
  return { adapter: await openLevelAdapter(dir), cleanup: () => rm(dir, { recursive: true, force: true }) }
})

describe('leveldb adapter', () => {
  it('persists across reopen and refuses a second opener of the same directory', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'sl-adapter-'))
    try {
      const a = await openLevelAdapter(dir)
      await a.write([{ type: 'put', key: b(1), value: b(2) }], { sync: true })
      await expect(openLevelAdapter(dir)).rejects.toThrow(/in use by another process/)
      await a.close()
      const again = await openLevelAdapter(dir)
      expect(hex((await again.get(b(1)))!)).toBe('02')
      expect(await again.diskBytes()).toBeGreaterThan(0)
      await again.close()
    } finally {
      await rm(dir, { recursive: true, force: true })
    }
  })
})
