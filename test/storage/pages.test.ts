/**
 * Snapshot pages (layout 2, docs/storage.md): a crash after any batch of any compaction (splits,
 * pieces of a big range, merges) recovers every acknowledged write and nothing never issued; a
 * layout 1 directory (per-key snapshots) is read, then migrated, crash-safely at every step; a
 * directory of a later layout is refused. The crash points are exact: every change the engine
 * makes goes through the adapter, which records it, and the directory a crash after change i
 * would leave is the replay of changes 0..i into a fresh adapter (LevelDB batches are atomic).
 */
import { describe, expect, it } from 'vitest'
import * as encoding from 'lib0/encoding'
import * as decoding from 'lib0/decoding'
import fc from 'fast-check'
import { openNode, type SpeedNode } from '../../src/node.js'
import type { KeyRange, StorageAdapter, WriteOp } from '../../src/storage/adapter.js'
import { memoryAdapter } from '../../src/storage/memoryAdapter.js'
import { PAGE_RANGE, SNAPSHOT_RANGE, metaKey, parsePageKey, readPage, seal, snapshotKey, unseal, writeFramed } from '../../src/storage/layout.js'
import { KeyIndex } from '../../src/store/keyIndex.js'

type Change = { kind: 'write'; ops: WriteOp[] } | { kind: 'clear'; range: KeyRange }

/** A memory adapter that outlives the node closing it, as a directory outlives its process. */
function kept(inner: StorageAdapter = memoryAdapter()): StorageAdapter {
  return { ...inner, close: async () => {} }
}

/** A memory adapter that records every change it applies, in order. */
function recording(inner: StorageAdapter = memoryAdapter()): { adapter: StorageAdapter; changes: Change[] } {
  const changes: Change[] = []
  const adapter: StorageAdapter = {
    ...inner,
    close: async () => {},
    async write(ops, opts) {
      changes.push({ kind: 'write', ops: ops.map((op) => (op.type === 'put' ? { type: 'put', key: op.key.slice(), value: op.value.slice() } : { type: 'del', key: op.key.slice() })) })
      return inner.write(ops, opts)
    },
    async clear(range) {
      changes.push({ kind: 'clear', range })
      return inner.clear(range)
    },
  }
  return { adapter, changes }
}

async function replay(changes: readonly Change[], upTo: number, base?: Change[]): Promise<StorageAdapter> {
  const a = memoryAdapter()
  for (const c of [...(base ?? []), ...changes.slice(0, upTo)]) {
    if (c.kind === 'write') await a.write(c.ops, { sync: false })
    else await a.clear(c.range)
  }
  return a
}

/** Every change needed to rebuild the adapter's present contents (one batch of puts). */
async function contents(a: StorageAdapter): Promise<Change[]> {
  const ops: WriteOp[] = []
  for await (const chunk of a.scan({ gte: Uint8Array.of(0), lt: Uint8Array.of(0xff) })) for (const [key, value] of chunk) ops.push({ type: 'put', key, value })
  return [{ kind: 'write', ops }]
}

const VIEWS = { c: { type: 'gcounter' }, s: { type: 'orset' } }
const quiet = () => {}

/** Keys whose UTF-8 byte order and UTF-16 order disagree (U+FFFD sorts after an emoji in UTF-16... before it in bytes). */
function keyOf(i: number): string {
  const prefix = ['a', 'b|', '\uFFFD', '😀', 'zz/'][i % 5] as string
  return `${prefix}${(i * 7919) % 100_003}`
}

async function values(node: SpeedNode): Promise<Map<string, unknown>> {
  const out = new Map<string, unknown>()
  for (const v of node.store.views()) for (const [key] of v.states.entries()) out.set(`${v.name}/${key}`, node.read(v.name, key).value)
  return out
}

describe('snapshot pages', () => {
  it('a crash after any batch of compactions with splits, pieces and merges loses no acknowledged write and invents none', async () => {
    const { adapter, changes } = recording()
    // Small slices and log thresholds: many compactions, big ranges cut into pieces, pages split.
    const storage = { compactSliceKeys: 40, compactMinLogBytes: 4 * 1024, compactLogRatio: 0.2 }
    const node = await openNode({ id: 'a', adapter, views: VIEWS, storage, log: quiet })
    const issued = new Map<string, number[]>() // key -> change count when each inc was issued
    const acked = new Map<string, number[]>() // key -> change count when each inc was acknowledged
    const KEYS = 1500
    for (let round = 0; round < 12; round++) {
      const ws: Promise<unknown>[] = []
      // Early rounds add keys (the first compactions cut one big range); later ones revisit them.
      const span = Math.min(KEYS, 200 + round * 250)
      for (let i = 0; i < 400; i++) {
        const key = keyOf((i * 31 + round * 17) % span)
        ;(issued.get(key) ?? issued.set(key, []).get(key)!).push(changes.length)
        ws.push(node.apply('c', key, { inc: 1 }).then(() => (acked.get(key) ?? acked.set(key, []).get(key)!).push(changes.length)))
        if (i % 50 === 0) ws.push(node.apply('s', key, { add: `e${round}` }))
      }
      await Promise.all(ws)
      if (round % 4 === 3) await node.storage.compact()
    }
    await node.storage.compact()
    const stats = node.stats().storage
    expect(stats.compactions).toBeGreaterThan(3)
    expect(stats.pageWrites).toBeGreaterThan(20)
    const final = await values(node)
    await node.close()
    const pages = (await contents(adapter))[0]
    expect(pages?.kind === 'write' && pages.ops.filter((op) => op.key[0] === PAGE_RANGE.gte[0]).length).toBeGreaterThan(10)

    let checked = 0
    for (let upTo = 1; upTo <= changes.length; upTo++) {
      const again = await openNode({ id: 'a', adapter: await replay(changes, upTo), log: quiet })
      for (const [key, at] of issued) {
        const got = (again.store.views().some((v) => v.name === 'c') ? again.read('c', key).value : 0) as number
        const lo = (acked.get(key) ?? []).filter((x) => x <= upTo).length
        const hi = at.filter((x) => x < upTo).length
        if (got < lo || got > hi) throw new Error(`crash after change ${upTo}/${changes.length}: ${key} = ${got}, acknowledged ${lo}, issued ${hi}`)
      }
      checked++
      await again.close()
    }
    expect(checked).toBe(changes.length)
    // And with everything written: exactly the values before, after another round of compaction.
    const last = await openNode({ id: 'a', adapter: await replay(changes, changes.length), log: quiet })
    expect(await values(last)).toEqual(final)
    await last.close()
  }, 120_000)

  it('pages shrink and merge when keys expire, and what stays survives a restart', async () => {
    const adapter = kept()
    const node = await openNode({ id: 'a', adapter, views: VIEWS, storage: { compactSliceKeys: 100 }, log: quiet })
    const ws: Promise<unknown>[] = []
    for (let i = 0; i < 3000; i++) ws.push(node.apply('c', `k${String(i).padStart(5, '0')}`, { inc: i + 1 }))
    await Promise.all(ws)
    await node.storage.compact()
    const keysBefore = (await node.storage.snapshotKeys()).length
    const view = node.store.view('c')
    // Keep one key in fifty.
    for (let i = 0; i < 3000; i++) if (i % 50 !== 0) node.store.expire(view, `k${String(i).padStart(5, '0')}`)
    await node.storage.compact()
    const left = await node.storage.snapshotKeys()
    expect(keysBefore).toBe(3000)
    expect(left.map((k) => k.key)).toEqual(Array.from({ length: 60 }, (_, j) => `k${String(j * 50).padStart(5, '0')}`))
    let pages = 0
    for await (const chunk of adapter.scan(PAGE_RANGE)) pages += chunk.length
    expect(pages).toBe(1)
    await node.close()
    const again = await openNode({ id: 'a', adapter, log: quiet })
    expect(again.stats().keys).toBe(60)
    expect(again.read('c', 'k00050').value).toBe(51)
    await again.close()
  })

  it('reads a layout 1 directory (a snapshot per key), migrates it into pages, and a crash at any step of the migration loses nothing', async () => {
    // A layout 1 directory: what the previous version wrote, made from a node's pages.
    const made = kept()
    const node = await openNode({ id: 'a', adapter: made, views: VIEWS, log: quiet })
    const ws: Promise<unknown>[] = []
    for (let i = 0; i < 2500; i++) ws.push(node.apply(i % 3 === 0 ? 's' : 'c', keyOf(i), i % 3 === 0 ? { add: [`x${i}`, 'y'] } : { inc: i + 1 }))
    await Promise.all(ws)
    await node.storage.compact()
    const expected = await values(node)
    await node.close()
    const v1: WriteOp[] = [{ type: 'del', key: metaKey('layout') }]
    for await (const chunk of made.scan(PAGE_RANGE)) {
      for (const [k, v] of chunk) {
        const { viewNo } = parsePageKey(k)
        v1.push({ type: 'del', key: k })
        readPage(v, (key, dec, end) => {
          v1.push({ type: 'put', key: snapshotKey(viewNo, key), value: seal(dec.arr.slice(dec.pos, end)) })
          dec.pos = end
        })
      }
    }
    await made.write(v1, { sync: false })
    const base = await contents(made)

    const { adapter, changes } = recording(await replay([], 0, base))
    const migrated = await openNode({ id: 'a', adapter, storage: { compactSliceKeys: 64 }, log: quiet })
    expect(migrated.recovery.snapshots).toBe(2500)
    expect(migrated.recovery.pages).toBe(0)
    expect(await values(migrated)).toEqual(expected)
    await migrated.storage.compact() // joins the migration the start scheduled, or runs it
    let legacy = 0
    for await (const chunk of adapter.scan(SNAPSHOT_RANGE)) legacy += chunk.length
    expect(legacy).toBe(0)
    const layout = await adapter.get(metaKey('layout'))
    expect(decoding.readVarUint(decoding.createDecoder(unseal(layout!)))).toBe(2)
    await migrated.close()

    expect(changes.length).toBeGreaterThan(10)
    for (let upTo = 0; upTo <= changes.length; upTo++) {
      const again = await openNode({ id: 'a', adapter: await replay(changes, upTo, base), log: quiet })
      expect(await values(again), `crash after change ${upTo}/${changes.length}`).toEqual(expected)
      await again.close()
    }
    const done = await openNode({ id: 'a', adapter: await replay(changes, changes.length, base), log: quiet })
    expect(done.recovery.pages).toBeGreaterThan(5)
    expect(done.recovery.snapshots).toBe(2500)
    await done.close()
  }, 120_000)

  it('refuses a directory of a later layout with one clear error, changing nothing', async () => {
    const adapter = kept()
    const node = await openNode({ id: 'a', adapter, views: VIEWS, log: quiet })
    await node.apply('c', 'k', { inc: 1 })
    await node.close()
    const enc = encoding.createEncoder()
    encoding.writeVarUint(enc, 3)
    await adapter.write([{ type: 'put', key: metaKey('layout'), value: seal(encoding.toUint8Array(enc)) }], { sync: false })
    const before = await contents(adapter)
    await expect(openNode({ id: 'a', adapter, log: quiet })).rejects.toThrow(/storage layout 3, written by a newer speedlayer/)
    expect(await contents(adapter)).toEqual(before)
  })
})

describe('writeFramed', () => {
  it('writes the same bytes as encoding apart and writeVarUint8Array, at any length and buffer position', () => {
    fc.assert(
      fc.property(fc.integer({ min: 0, max: 700 }), fc.integer({ min: 0, max: 20_000 }), (prefix, len) => {
        const write = (e: encoding.Encoder, n: number) => {
          for (let i = 0; i < n; i++) encoding.writeUint8(e, (i * 7) & 0xff)
        }
        const a = encoding.createEncoder()
        const b = encoding.createEncoder()
        write(a, prefix)
        write(b, prefix)
        writeFramed(a, write, len)
        encoding.writeUint8(a, 0xee)
        const own = encoding.createEncoder()
        write(own, len)
        encoding.writeVarUint8Array(b, encoding.toUint8Array(own))
        encoding.writeUint8(b, 0xee)
        expect(Buffer.from(encoding.toUint8Array(a)).equals(Buffer.from(encoding.toUint8Array(b)))).toBe(true)
      }),
      { numRuns: 400 },
    )
  })
})

describe('KeyIndex.load', () => {
  it('loads in any order, keeps the first value of a key loaded twice, and scans in order', () => {
    fc.assert(
      fc.property(fc.array(fc.string({ unit: fc.constantFrom('a', 'b', '\uFFFD', '😀'), maxLength: 4 }), { maxLength: 80 }), fc.boolean(), (raw, sort) => {
        const keys = sort ? [...raw].sort() : raw
        const idx = new KeyIndex<number>()
        const first = new Map<string, number>()
        keys.forEach((k, i) => {
          const had = idx.load(k, i)
          expect(had).toBe(first.get(k))
          if (!first.has(k)) first.set(k, i)
        })
        expect(idx.size).toBe(first.size)
        expect(idx.scan({ limit: 1000 }).items).toEqual([...first.keys()].sort().map((key) => ({ key, value: first.get(key) })))
        expect(idx.sortedKeys()).toEqual([...first.keys()].sort())
      }),
      { numRuns: 300 },
    )
  })
})
