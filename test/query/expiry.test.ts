/**
 * Expiry as a join (DESIGN.md): a batch horizon makes every realtime bucket that ends at or before
 * it bottom. Keys go when the batch view arrives, ops and deltas for covered buckets join to
 * nothing whatever the order, compaction deletes their snapshots, and a restart brings none of
 * them back although the log may still hold their deltas.
 */
import { afterEach, describe, expect, it } from 'vitest'
import fc from 'fast-check'
import os from 'node:os'
import path from 'node:path'
import { mkdtemp, rm } from 'node:fs/promises'
import { openNode, type SpeedNode } from '../../src/node.js'
import { memoryAdapter } from '../../src/storage/memoryAdapter.js'
import { slotState, type GCounterState } from '../../crdts/gcounter.js'

const HOUR = 3_600_000
const T0 = Date.UTC(2025, 5, 1)
const NOW = T0 + 8 * HOUR
const iso = (t: number) => new Date(t).toISOString()
const keyOf = (page: string, hour: number) => `${page}|${iso(T0 + hour * HOUR)}`
const VIEWS = {
  hits: { type: 'gcounter', ingest: { key: ['page'], bucket: { time: 'ts', size: '1h' } } },
  users: { type: 'orset', ingest: { key: ['page'], bucket: { time: 'ts', size: '1h' }, value: 'user' } },
}

const opened: SpeedNode[] = []
const dirs: string[] = []
afterEach(async () => {
  await Promise.all(opened.splice(0).map((n) => n.close()))
  await Promise.all(dirs.splice(0).map((d) => rm(d, { recursive: true, force: true })))
})

async function memNode(id = 'n1'): Promise<SpeedNode> {
  const n = await openNode({ id, adapter: memoryAdapter(), views: VIEWS, now: () => NOW, log: () => {} })
  opened.push(n)
  return n
}

/** A peer's gcounter delta: its slot for the key, cumulative. */
const peerSlot = (count: number): GCounterState => slotState('peer', count)

type Step = { kind: 'import'; hours: number } | { kind: 'local'; page: string; hour: number; n: number } | { kind: 'peer'; page: string; hour: number }

const stepArb: fc.Arbitrary<Step> = fc.oneof(
  { weight: 1, arbitrary: fc.record({ kind: fc.constant('import' as const), hours: fc.integer({ min: 0, max: 6 }) }) },
  { weight: 4, arbitrary: fc.record({ kind: fc.constant('local' as const), page: fc.constantFrom('a', 'b'), hour: fc.integer({ min: 0, max: 6 }), n: fc.integer({ min: 1, max: 5 }) }) },
  { weight: 3, arbitrary: fc.record({ kind: fc.constant('peer' as const), page: fc.constantFrom('a', 'b'), hour: fc.integer({ min: 0, max: 6 }) }) },
)

async function runOrdered(node: SpeedNode, view: ReturnType<SpeedNode['store']['view']>, steps: readonly Step[], slots: readonly number[]): Promise<void> {
  for (let i = 0; i < steps.length; i++) {
    const s = steps[i] as Step
    if (s.kind === 'import') {
      const horizon = T0 + s.hours * HOUR
      // The batch view of the horizon: one entry per covered bucket, a fixed exact count.
      const entries: Array<[string, number]> = []
      for (let h = 0; h < s.hours; h++) for (const p of ['a', 'b']) entries.push([keyOf(p, h), 1000 + h])
      await node.batch.import('hits', horizon, entries, { ts: s.hours, c: 0, r: 'batch' })
    } else if (s.kind === 'local') {
      await node.apply('hits', keyOf(s.page, s.hour), { inc: s.n })
    } else {
      node.store.merge(view, keyOf(s.page, s.hour), peerSlot(slots[i] as number))
    }
  }
}

function realtime(node: SpeedNode): Record<string, number> {
  const out: Record<string, number> = {}
  for (const [k, s] of node.store.view('hits').states.entries()) out[k] = node.store.view('hits').type.value(s) as number
  return out
}

describe('expiry as a join', () => {
  it('a delta for a covered bucket is dropped whatever the order of import and delta', async () => {
    await fc.assert(
      fc.asyncProperty(fc.array(stepArb, { maxLength: 40 }), fc.integer(), async (steps, seed) => {
        // The same steps in two orders (peer deltas keep their cumulative counts).
        const peerCount = new Map<string, number>()
        const slots = steps.map((s) => {
          if (s.kind !== 'peer') return 0
          const k = keyOf(s.page, s.hour)
          const c = (peerCount.get(k) ?? 0) + 1
          peerCount.set(k, c)
          return c
        })
        const order = steps.map((_, i) => i)
        let x = seed >>> 0
        for (let i = order.length - 1; i > 0; i--) {
          x = (Math.imul(x, 1103515245) + 12345) >>> 0
          const j = x % (i + 1)
          ;[order[i], order[j]] = [order[j] as number, order[i] as number]
        }
        const a = await memNode('a')
        const b = await memNode('b')
        await runOrdered(a, a.store.view('hits'), steps, slots)
        await runOrdered(b, b.store.view('hits'), order.map((i) => steps[i] as Step), order.map((i) => slots[i] as number))

        const maxHours = Math.max(0, ...steps.map((s) => (s.kind === 'import' ? s.hours : 0)))
        // The model: a bucket at or past the final horizon holds every op made to it; one before it holds nothing.
        const model: Record<string, number> = {}
        for (let i = 0; i < steps.length; i++) {
          const s = steps[i] as Step
          if (s.kind === 'import' || s.hour < maxHours) continue
          const k = keyOf(s.page, s.hour)
          model[k] = (model[k] ?? 0) + (s.kind === 'local' ? s.n : 0)
        }
        for (const [k, c] of peerCount) {
          const hour = (Date.parse(k.split('|')[1] as string) - T0) / HOUR
          if (hour >= maxHours) model[k] = (model[k] ?? 0) + c
        }
        // Buckets from local ops of 0 peers: gcounter sums local slot + peer slot.
        expect(realtime(a)).toEqual(model)
        expect(realtime(b)).toEqual(model)
        for (const n of [a, b]) {
          const held = n.batch.get('hits')
          if (maxHours > 0) expect(held?.horizon).toBe(T0 + maxHours * HOUR)
          for (let h = 0; h < 7; h++) {
            const q = n.query('hits', keyOf('a', h))
            if (h < maxHours) expect(q).toEqual({ value: 1000 + h, exact: true, batch: 1000 + h, realtime: null })
            else expect(q).toEqual({ value: model[keyOf('a', h)] ?? 0, exact: false, batch: null, realtime: model[keyOf('a', h)] ?? 0 })
          }
        }
        await Promise.all(opened.splice(0).map((n) => n.close()))
      }),
      { numRuns: 60 },
    )
  })

  it('import and merge: the highest horizon wins whole, on every replica, and fires onChange', async () => {
    const a = await memNode('a')
    const b = await memNode('b')
    const changes: string[] = []
    b.batch.onChange((v) => changes.push(v))
    await a.apply('hits', keyOf('x', 0), { inc: 5 })
    await b.apply('hits', keyOf('x', 0), { inc: 7 })
    await b.apply('hits', keyOf('x', 3), { inc: 1 })
    const r1 = await a.batch.import('hits', T0 + 2 * HOUR, { [keyOf('x', 0)]: 12, [keyOf('x', 1)]: 3 })
    expect(r1).toMatchObject({ won: true, keys: 2, expired: 1 })
    // A lower horizon loses, locally too.
    const r2 = await a.batch.import('hits', T0 + HOUR, { [keyOf('x', 0)]: 99 })
    expect(r2).toMatchObject({ won: false, horizon: T0 + 2 * HOUR })
    // A re-import with the same horizon (a corrected batch run) wins: a later stamp.
    const r3 = await a.batch.import('hits', T0 + 2 * HOUR, { [keyOf('x', 0)]: 13 })
    expect(r3.won).toBe(true)
    expect(a.query('hits', keyOf('x', 1))).toMatchObject({ value: 0, exact: true })

    const bytes = a.batch.encode('hits') as Uint8Array
    expect(b.batch.merge('hits', bytes)).toBe(true)
    expect(b.batch.merge('hits', bytes)).toBe(false)
    expect(changes).toEqual(['hits'])
    expect(b.batch.views()).toEqual(['hits'])
    expect(Buffer.from(b.batch.encode('hits') as Uint8Array).equals(Buffer.from(bytes))).toBe(true)
    expect(b.query('hits', keyOf('x', 0))).toEqual({ value: 13, exact: true, batch: 13, realtime: null })
    expect(b.query('hits', keyOf('x', 3))).toEqual({ value: 1, exact: false, batch: null, realtime: 1 })
    expect(realtime(b)).toEqual({ [keyOf('x', 3)]: 1 })
    // Merging an older one into a replica that has a newer one changes nothing.
    const older = await memNode('c')
    await older.batch.import('hits', T0 + HOUR, { [keyOf('x', 0)]: 1 })
    expect(b.batch.merge('hits', older.batch.encode('hits') as Uint8Array)).toBe(false)
    expect(older.batch.merge('hits', bytes)).toBe(true)
    expect(older.query('hits', keyOf('x', 0)).value).toBe(13)
    expect(() => b.batch.merge('users', bytes)).toThrow(/for view "hits"/)
    expect(() => b.batch.merge('hits', bytes.subarray(0, 10))).toThrow()
  })

  it('a late write, an old event and a peer delta for a covered bucket join to nothing and are counted', async () => {
    const n = await memNode()
    await n.batch.import('hits', T0 + 2 * HOUR, { [keyOf('x', 0)]: 4 })
    const before = n.stats().writes
    expect(await n.apply('hits', keyOf('x', 1), { inc: 3 })).toEqual({ value: 0 })
    await n.applyMany([{ view: 'hits', key: keyOf('x', 0), op: { inc: 1 } }, { view: 'hits', key: keyOf('x', 2), op: { inc: 1 } }]).durable
    expect(n.store.merge(n.store.view('hits'), keyOf('y', 1), peerSlot(9))).toBe(false)
    // A bad op is still refused, covered or not.
    await expect(n.apply('hits', keyOf('x', 1), { inc: -1 })).rejects.toThrow()
    // A plain key (no bucket) never expires.
    await n.apply('hits', 'plain', { inc: 2 })
    await n.apply('hits', 'plain|2025', { inc: 2 })
    expect(realtime(n)).toEqual({ [keyOf('x', 2)]: 1, plain: 2, 'plain|2025': 2 })
    expect(n.batch.stats().droppedCovered).toBe(3)
    expect(n.stats().writes - before).toBe(3)
    expect(n.query('hits', keyOf('x', 0))).toMatchObject({ value: 4, exact: true })
    expect(n.query('hits', 'plain')).toEqual({ value: 2, exact: false, batch: null, realtime: 2 })
  })

  it('expired keys leave the disk at compaction and none comes back after a restart, though the log held their deltas', async () => {
    const dir = await mkdtemp(path.join(os.tmpdir(), 'speedlayer-expiry-'))
    dirs.push(dir)
    const open = () => openNode({ id: 'n1', dataDir: dir, views: VIEWS, now: () => NOW, log: () => {}, storage: { compactMinLogBytes: Number.MAX_SAFE_INTEGER } })
    let n = await open()
    // Hours 0-5 for three pages; then a compaction (snapshots), then more writes (log only).
    for (const p of ['a', 'b', 'c']) for (let h = 0; h < 6; h++) await n.apply('hits', keyOf(p, h), { inc: h + 1 })
    await n.storage.compact()
    for (const p of ['a', 'b', 'c']) for (let h = 0; h < 6; h++) await n.apply('hits', keyOf(p, h), { inc: 10 })
    await n.apply('users', keyOf('a', 1), { add: 'u1' })
    const snapshotKeys = async (node: SpeedNode) => (await node.storage.snapshotKeys()).map((s) => s.key).sort()
    expect((await snapshotKeys(n)).length).toBe(18)
    const r = await n.batch.import('hits', T0 + 4 * HOUR, { [keyOf('a', 0)]: 100 })
    expect(r).toMatchObject({ won: true, expired: 12 })
    // users has no batch view: untouched.
    expect(n.store.view('users').states.size).toBe(1)
    await n.storage.compact()
    await n.storage.compact()
    const later = [4, 5].flatMap((h) => ['a', 'b', 'c'].map((p) => keyOf(p, h)))
    expect(await snapshotKeys(n)).toEqual([...later, keyOf('a', 1)].sort())
    await n.close()
    opened.splice(opened.indexOf(n), 1)

    n = await open()
    opened.push(n)
    expect(n.batch.get('hits')).toMatchObject({ horizon: T0 + 4 * HOUR, keys: 1, applies: true })
    expect(Object.keys(realtime(n)).sort()).toEqual(later.sort())
    expect(n.query('hits', keyOf('a', 0))).toMatchObject({ value: 100, exact: true })
    expect(n.query('hits', keyOf('a', 5))).toMatchObject({ value: 16, exact: false })
    // After the restart a late peer delta is still dropped.
    expect(n.store.merge(n.store.view('hits'), keyOf('a', 2), peerSlot(1))).toBe(false)
    await n.close()
    opened.splice(opened.indexOf(n), 1)
  })

  it('a restart without compaction: expired keys whose snapshots and log are still on disk stay expired', async () => {
    const dir = await mkdtemp(path.join(os.tmpdir(), 'speedlayer-expiry-'))
    dirs.push(dir)
    const open = () => openNode({ id: 'n1', dataDir: dir, views: VIEWS, now: () => NOW, log: () => {}, storage: { compactMinLogBytes: Number.MAX_SAFE_INTEGER } })
    let n = await open()
    for (let h = 0; h < 6; h++) await n.apply('hits', keyOf('a', h), { inc: 1 })
    await n.storage.compact()
    for (let h = 0; h < 6; h++) await n.apply('hits', keyOf('a', h), { inc: 1 })
    // Hold compaction off: the import's deletions are still only in memory when the node closes.
    const compact = n.storage.compact.bind(n.storage)
    n.storage.compact = () => Promise.resolve()
    await n.batch.import('hits', T0 + 3 * HOUR, {})
    n.storage.compact = compact
    await n.close()
    opened.splice(opened.indexOf(n), 1)
    n = await open()
    opened.push(n)
    expect(Object.keys(realtime(n)).sort()).toEqual([3, 4, 5].map((h) => keyOf('a', h)))
    expect(n.batch.stats().expiredKeys).toBe(3)
  })
})
