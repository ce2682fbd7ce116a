/**
 * Yjs persistence: updates compacted into a snapshot (disk and load time follow the content, not
 * the history), what a crash at any point leaves behind, and the directory records catch-up
 * relies on.
 */
import { afterEach, describe, expect, it } from 'vitest'
import * as Y from 'yjs'
import { mkdtemp, rm } from 'node:fs/promises'
import os from 'node:os'
import path from 'node:path'
import { openNode, type SpeedNode } from '../../src/node.js'
import { memoryAdapter } from '../../src/storage/memoryAdapter.js'
import { DocStore } from '../../src/yjs/docStore.js'
import { YjsDocs } from '../../src/yjs/docs.js'

const dirs: string[] = []
const open: SpeedNode[] = []
afterEach(async () => {
  await Promise.all(open.splice(0).map((n) => n.close()))
  await Promise.all(dirs.splice(0).map((d) => rm(d, { recursive: true, force: true })))
})

async function tempDir(): Promise<string> {
  const d = await mkdtemp(path.join(os.tmpdir(), 'speedlayer-yjs-'))
  dirs.push(d)
  return d
}

/** `n` small updates as an editor makes them: typing, now and then a backspace or a map change. */
function typing(n: number, seed = 1): { doc: Y.Doc; updates: Uint8Array[] } {
  const doc = new Y.Doc()
  const updates: Uint8Array[] = []
  doc.on('update', (u: Uint8Array) => updates.push(u))
  const text = doc.getText('text')
  const map = doc.getMap('map')
  let s = seed
  const rand = (k: number) => {
    s = (s * 1103515245 + 12345) & 0x7fffffff
    return s % k
  }
  let cursor = 0
  for (let i = 0; i < n; i++) {
    const r = rand(100)
    if (r < 3) cursor = rand(text.length + 1)
    if (r < 10 && text.length > 0 && cursor > 0) {
      text.delete(cursor - 1, 1)
      cursor--
    } else if (r < 13) map.set(`field${rand(20)}`, i)
    else {
      text.insert(cursor, String.fromCharCode(97 + rand(26)))
      cursor++
    }
  }
  return { doc, updates }
}

describe('compaction', () => {
  it('10,000 small updates compact to a snapshot no larger than 2x the encoded state, and the document loads from it', async () => {
    const dir = await tempDir()
    const node = await openNode({ id: 'n1', dataDir: dir, log: () => {} })
    open.push(node)
    const { doc, updates } = typing(10_000)
    expect(updates.length).toBe(10_000)
    let peakEntries = 0
    for (let i = 0; i < updates.length; i += 250) {
      await Promise.all(updates.slice(i, i + 250).map((u) => node.yjs.applyUpdate('essay', u)))
      peakEntries = Math.max(peakEntries, (await node.yjs.store.read('essay')).updates.length)
    }
    // The background compactor kept the entries bounded all along.
    expect(node.yjs.getStats().compactions).toBeGreaterThanOrEqual(8)
    expect(peakEntries).toBeLessThanOrEqual(node.yjs.options.compactUpdates + 250)
    await node.yjs.compactNow('essay')

    const encoded = Y.encodeStateAsUpdate(doc).length
    const stored = await node.yjs.store.read('essay')
    expect(stored.updates).toEqual([])
    expect(stored.snapshot).not.toBeNull()
    expect(stored.snapshotBytes).toBeLessThanOrEqual(2 * encoded)
    expect(node.yjs.list()).toEqual([{ name: 'essay', bytes: stored.snapshotBytes, clients: 0, updatesSinceCompaction: 0, loaded: true }])

    await node.close()
    open.length = 0
    const again = await openNode({ id: 'n1', dataDir: dir, log: () => {} })
    open.push(again)
    expect(again.yjs.list()).toEqual([{ name: 'essay', bytes: stored.snapshotBytes, clients: 0, updatesSinceCompaction: 0, loaded: false }])
    const loaded = new Y.Doc()
    Y.applyUpdate(loaded, await again.yjs.encodeState('essay'))
    expect(loaded.getText('text').toString()).toBe(doc.getText('text').toString())
    expect(loaded.getMap('map').toJSON()).toEqual(doc.getMap('map').toJSON())
    expect(Y.encodeStateVector(loaded)).toEqual(Y.encodeStateVector(doc))
    expect(again.yjs.getStats().loads).toBe(1)
  })

  it('a compaction whose old entries were not yet cleared loads from its snapshot; later updates follow it', async () => {
    const store = new DocStore(memoryAdapter(), { fsync: false })
    const { doc, updates } = typing(6, 3)
    for (let i = 0; i < 5; i++) await store.append('d', i + 1, updates[i] as Uint8Array)
    const upTo5 = new Y.Doc()
    for (let i = 0; i < 5; i++) Y.applyUpdate(upTo5, updates[i] as Uint8Array)
    // As a crash between the snapshot's batch and the clearing of a large range leaves it.
    await store.replace('d', 5, Y.encodeStateAsUpdate(upTo5), 5, { seq: 5, sv: Y.encodeStateVector(upTo5), dsHash: new Uint8Array(16), bytes: 0, updates: 0 })
    await store.append('d', 6, updates[5] as Uint8Array)
    const r = await store.read('d')
    expect(r.firstSeq).toBe(1)
    expect(r.lastSeq).toBe(6)
    expect(r.updates.length).toBe(1)
    const rebuilt = new Y.Doc()
    Y.applyUpdate(rebuilt, r.snapshot as Uint8Array)
    for (const u of r.updates) Y.applyUpdate(rebuilt, u)
    expect(rebuilt.getText('text').toString()).toBe(doc.getText('text').toString())
  })

  it('after a crash the directory record is stale: the document is loaded to tell a peer what it holds', async () => {
    const adapter = memoryAdapter()
    const docs = await YjsDocs.open(adapter, { log: () => {} })
    const { doc, updates } = typing(50, 7)
    for (const u of updates) await docs.applyUpdate('d', u)
    // No close: the process died here. A new start on the same data:
    const after = await YjsDocs.open(adapter, { log: () => {} })
    expect(after.names()).toEqual(['d'])
    expect(after.getStats().loaded).toBe(0)
    const s = await after.summary('d')
    expect(s?.sv).toEqual(Y.encodeStateVector(doc))
    expect(after.getStats().loaded).toBe(1)
    await after.close()
    // After a clean close the record is fresh: no load needed.
    const third = await YjsDocs.open(adapter, { log: () => {} })
    expect((await third.summary('d'))?.sv).toEqual(Y.encodeStateVector(doc))
    expect(third.getStats().loads).toBe(0)
    await third.close()
    await docs.close()
  })
})
