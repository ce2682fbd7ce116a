/**
 * Batch views over the peer protocol (src/query/batchReplication.ts): the chunk codec, and three
 * in-process nodes on real WebSockets in a chain A <- B <- C, so C only hears of A's imports
 * through B's relay, and catches up on an import it missed while cut off.
 */
import { afterEach, describe, expect, it } from 'vitest'
import os from 'node:os'
import path from 'node:path'
import { mkdtemp, rm } from 'node:fs/promises'
import { openNode, type SpeedNode } from '../../src/node.js'
import { startServer } from '../../src/server/http.js'
import { chunksOf, decodeBatchChunk, encodeBatchChunk } from '../../src/query/batchReplication.js'

const MIN = 60_000
const T0 = Date.UTC(2026, 0, 1)
const NOW = T0 + 60 * MIN
const VIEWS = { pageviews: { type: 'gcounter', ingest: { key: ['url'], bucket: { time: 'ts', size: '1m' } } } }

describe('batch chunk codec', () => {
  it('splits and reassembles any size, and refuses chunks beyond the total or with trailing bytes', () => {
    for (const size of [0, 1, 9, 10, 11, 95]) {
      const bytes = Uint8Array.from({ length: size }, (_, i) => i)
      const chunks = chunksOf('v', bytes, 10).map(decodeBatchChunk)
      expect(chunks.length).toBe(Math.max(1, Math.ceil(size / 10)))
      const back = new Uint8Array(size)
      for (const c of chunks) {
        expect(c).toMatchObject({ view: 'v', total: size })
        back.set(c.chunk, c.offset)
      }
      expect(back).toEqual(bytes)
    }
    expect(() => decodeBatchChunk(encodeBatchChunk({ view: 'v', total: 3, offset: 2, chunk: new Uint8Array(2) }))).toThrow(/beyond/)
    const ok = encodeBatchChunk({ view: 'v', total: 2, offset: 0, chunk: new Uint8Array(2) })
    expect(() => decodeBatchChunk(Uint8Array.from([...ok, 0]))).toThrow(/trailing/)
    expect(() => decodeBatchChunk(ok.subarray(0, ok.length - 1))).toThrow()
    expect(() => decodeBatchChunk(Uint8Array.from([9, ...ok.subarray(1)]))).toThrow()
  })
})

interface Peer {
  id: string
  node: SpeedNode
  url: string
}

const cleanups: Array<() => Promise<void>> = []
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c().catch(() => {})
})

async function startPeer(id: string, dial: Peer | null): Promise<Peer> {
  const dir = await mkdtemp(path.join(os.tmpdir(), `speedlayer-batchrepl-${id}-`))
  cleanups.push(() => rm(dir, { recursive: true, force: true }))
  const peers = dial ? [`${dial.url.replace('http://', 'ws://')}/peer`] : []
  const node = await openNode({ id, dataDir: dir, views: VIEWS, now: () => NOW, peers, maxBackoffMs: 100, log: () => {} })
  cleanups.push(() => node.close())
  const server = await startServer(node, { host: '127.0.0.1', port: 0, maxBody: 1024 * 1024, log: () => {} })
  cleanups.push(() => server.close())
  return { id, node, url: server.url }
}

/** Resolves once `check` holds, polled on every change the nodes report and on a short timer. */
async function until(what: string, check: () => boolean, timeoutMs = 20_000): Promise<void> {
  const t0 = Date.now()
  while (!check()) {
    if (Date.now() - t0 > timeoutMs) throw new Error(`timed out waiting for ${what}`)
    await new Promise((r) => setTimeout(r, 10))
  }
}

const bucketKey = (url: string, m: number) => `${url}|${new Date(T0 + m * MIN).toISOString()}`

describe('batch views replicate', () => {
  it('relay along a chain, win by horizon everywhere, and reach a peer that was cut off once it is back', async () => {
    const A = await startPeer('A', null)
    const B = await startPeer('B', A)
    const C = await startPeer('C', B)
    const peers = [A, B, C]
    await until('the chain to connect', () => B.node.replication.replicator.connectedCount() === 2)

    // Realtime counts for minutes 0..9 on C, so expiry on C shows the batch view arrived.
    for (let m = 0; m < 10; m++) await C.node.apply('pageviews', bucketKey('/a', m), { inc: m + 1 })
    await until('the realtime keys to reach A', () => A.node.store.view('pageviews').states.size === 10)

    // A large batch view (many chunks) up to minute 5, imported on A only.
    const entries = new Map<string, number>()
    for (let i = 0; i < 20_000; i++) entries.set(bucketKey(`/page/${i}`, i % 5), i)
    for (let m = 0; m < 5; m++) entries.set(bucketKey('/a', m), 100 + m)
    const h1 = T0 + 5 * MIN
    expect(await A.node.batch.import('pageviews', h1, entries)).toMatchObject({ won: true, expired: 5 })
    expect(A.node.batch.encode('pageviews')!.length).toBeGreaterThan(600 * 1024)
    await until('the batch view to reach C through B', () => C.node.batch.get('pageviews')?.horizon === h1)
    for (const p of peers) {
      expect(p.node.batch.encode('pageviews'), p.id).toEqual(A.node.batch.encode('pageviews'))
      expect(p.node.query('pageviews', bucketKey('/a', 2)), p.id).toMatchObject({ value: 102, exact: true })
      expect(p.node.query('pageviews', bucketKey('/a', 7)), p.id).toMatchObject({ value: 8, exact: false })
      expect(p.node.store.view('pageviews').states.size, `${p.id} realtime keys left`).toBe(5)
    }

    // C is cut off; A imports a later horizon; C does not hear of it until the link is back.
    expect(B.node.replication.disconnect('C')).toBe(true)
    await until('C to notice the cut', () => C.node.replication.replicator.connectedCount() === 0)
    const h2 = T0 + 8 * MIN
    expect(await A.node.batch.import('pageviews', h2, { [bucketKey('/a', 6)]: 7 })).toMatchObject({ won: true })
    await until('B to take the new import', () => B.node.batch.get('pageviews')?.horizon === h2)
    expect(C.node.batch.get('pageviews')?.horizon).toBe(h1)
    // An older import on C loses everywhere once the link is back (the higher horizon wins).
    expect(await C.node.batch.import('pageviews', T0 + 6 * MIN, {})).toMatchObject({ won: true })
    expect(B.node.replication.connect('C')).toBe(true)
    await until('C to catch up on the import it missed', () => C.node.batch.get('pageviews')?.horizon === h2)
    await until('every node to hold the same batch view', () => peers.every((p) => p.node.batch.get('pageviews')?.horizon === h2))
    for (const p of peers) {
      expect(p.node.batch.encode('pageviews'), p.id).toEqual(A.node.batch.encode('pageviews'))
      expect(p.node.query('pageviews', bucketKey('/a', 6)), p.id).toMatchObject({ value: 7, exact: true })
      expect(p.node.query('pageviews', bucketKey('/a', 9)), p.id).toMatchObject({ value: 10, exact: false })
    }
  }, 60_000)
})
