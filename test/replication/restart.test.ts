/**
 * Known peers outlive a restart (issue 4): a node keeps, across a restart, the log records a
 * peer that is away has not acknowledged, so that peer catches up from the log and not by
 * anti-entropy. Real components: two nodes in this process, LevelDB on temp dirs, the
 * WebSocket transport on 127.0.0.1.
 */
import { mkdtemp, rm } from 'node:fs/promises'
import os from 'node:os'
import path from 'node:path'
import { afterEach, describe, expect, it } from 'vitest'
import { openNode, type SpeedNode } from '../../src/node.js'
import { startServer, type SpeedServer } from '../../src/server/http.js'

const cleanups: Array<() => Promise<void>> = []
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c().catch(() => {})
})

async function tempDir(): Promise<string> {
  const d = await mkdtemp(path.join(os.tmpdir(), 'sl-restart-'))
  cleanups.push(() => rm(d, { recursive: true, force: true }))
  return d
}

/** Polls `check` until it holds; throws after the deadline. */
async function until(what: string, check: () => boolean, timeoutMs = 10_000): Promise<void> {
  const t0 = Date.now()
  while (!check()) {
    if (Date.now() - t0 > timeoutMs) throw new Error(`timed out waiting for ${what}`)
    await new Promise((r) => setTimeout(r, 10))
  }
}

const VIEWS = { hits: { type: 'gcounter' } }
// Compactions only when the test asks.
const STORAGE = { compactMinLogBytes: 1024 ** 3 }

interface Running {
  node: SpeedNode
  server: SpeedServer | null
  close(): Promise<void>
}

async function open(dir: string, id: string, peers: string[], port: number | null): Promise<Running> {
  const node = await openNode({ id, dataDir: path.join(dir, id), views: VIEWS, peers, maxBackoffMs: 100, storage: STORAGE, log: () => {} })
  const server = port === null ? null : await startServer(node, { host: '127.0.0.1', port, maxBody: 1 << 20, log: () => {} })
  let closed = false
  const close = async () => {
    if (closed) return
    closed = true
    // The node first: its peer links hold the HTTP server open.
    await node.close()
    await server?.close()
  }
  cleanups.push(close)
  return { node, server, close }
}

async function write(node: SpeedNode, from: number, n: number): Promise<void> {
  const r = node.applyMany(Array.from({ length: n }, (_, i) => ({ view: 'hits', key: `k${(from + i) % 7}`, op: { inc: 1 } })))
  expect(r.refused).toEqual([])
  await r.durable
}

describe('known peers across a restart', () => {
  it('a restarted node still keeps the log records a peer that is away lacks: it catches up from the log, not by anti-entropy', async () => {
    const dir = await tempDir()
    let b = await open(dir, 'B', [], 0)
    const port = Number(new URL((b.server as SpeedServer).url).port)
    const peerUrl = `ws://127.0.0.1:${port}/peer`
    let a = await open(dir, 'A', [peerUrl], null)
    await until('A and B linked', () => a.node.replication.peers().some((p) => p.replica === 'B' && p.connected))
    await write(a.node, 0, 20)
    await until('B holding A#1..20, and A knowing it', () => b.node.storage.logged.get('A') === 20 && a.node.replication.peers()[0]?.lagOps === 0)

    // B goes away; A writes on, restarts, writes on, and compacts while B is still away.
    await b.close()
    await until('A seeing B gone', () => !a.node.replication.replicator.isConnected('B'))
    await write(a.node, 20, 20)
    await a.close()
    a = await open(dir, 'A', [peerUrl], null)
    expect(a.node.replication.peers().map((p) => p.replica), 'B is known right after the restart').toEqual(['B'])
    await write(a.node, 40, 20)
    await a.node.storage.compact()
    expect(a.node.storage.retainedLog().records, 'log records kept for B').toBeGreaterThan(0)
    expect(a.node.storage.lowWater('A'), 'the log still serves A#21 on').toBeLessThanOrEqual(21)

    b = await open(dir, 'B', [], port)
    const before = { ...a.node.replication.stats() }
    await until('B holding A#1..60', () => b.node.storage.logged.get('A') === 60, 20_000)
    const after = a.node.replication.stats()
    expect(after.antiEntropyRuns - before.antiEntropyRuns, 'anti-entropy runs').toBe(0)
    expect(after.journalStates - before.journalStates, 'states by key').toBe(0)
    expect(after.catchUpStates - before.catchUpStates, 'states from the log (7 keys changed)').toBe(7)
    for (let k = 0; k < 7; k++) expect(b.node.read('hits', `k${k}`).value, `k${k}`).toBe(a.node.read('hits', `k${k}`).value)
  })
})
