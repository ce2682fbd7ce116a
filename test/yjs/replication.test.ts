/**
 * Yjs documents across nodes: stock y-websocket clients (the `y-websocket` package over `ws`) on
 * different in-process nodes, linked by the real peer protocol over WebSockets on 127.0.0.1.
 * Partitions are made the way an operator makes them (POST /peers/:replica/disconnect).
 */
import { afterEach, describe, expect, it } from 'vitest'
import * as Y from 'yjs'
import { startTestNode, type TestNode } from '../server/helpers.js'
import { content, pollUntil, synced, until, yClient, type YClient } from './helpers.js'

const nodes: TestNode[] = []
const clients: YClient[] = []

afterEach(async () => {
  for (const c of clients.splice(0)) c.close()
  // Together: a node's peer links close when the other side closes.
  await Promise.all(nodes.splice(0).map((n) => n.close()))
})

async function node(id: string, peers: TestNode[] = [], yjs = {}): Promise<TestNode> {
  const n = await startTestNode({ id, peers: peers.map((p) => p.url.replace(/^http/, 'ws') + '/peer'), maxBackoffMs: 100, yjs })
  nodes.push(n)
  return n
}

function client(n: TestNode, room: string): YClient {
  const c = yClient(n.url, room)
  clients.push(c)
  return c
}

const linked = (a: TestNode, b: TestNode) => a.node.replication.replicator.isConnected(b.node.id) && b.node.replication.replicator.isConnected(a.node.id) && a.node.replication.peers().some((p) => p.replica === b.node.id && p.connected)

async function post(n: TestNode, path: string): Promise<void> {
  const res = await fetch(n.url + path, { method: 'POST' })
  expect(res.status, await res.text()).toBe(200)
}

const same = (a: YClient, b: YClient) => JSON.stringify(content(a)) === JSON.stringify(content(b))

describe('Yjs documents on two nodes', () => {
  it('two stock clients on two nodes edit one Y.Text and Y.Map and see the same content within 2 s', async () => {
    const b = await node('B')
    const a = await node('A', [b])
    await pollUntil('A and B linked', () => linked(a, b))
    const ca = client(a, 'notes')
    const cb = client(b, 'notes')
    await Promise.all([synced(ca), synced(cb)])

    // Each edit, made on one side, is seen on the other within 2 s.
    const edits: Array<[YClient, () => void, () => boolean]> = [
      [ca, () => ca.text.insert(0, 'Hello'), () => cb.text.toString() === 'Hello'],
      [cb, () => cb.text.insert(5, ' world'), () => ca.text.toString() === 'Hello world'],
      [ca, () => ca.map.set('title', 'Greeting'), () => cb.map.get('title') === 'Greeting'],
      [cb, () => cb.map.set('tags', ['a', 'b']), () => JSON.stringify(ca.map.get('tags')) === '["a","b"]'],
      [ca, () => ca.text.delete(0, 1), () => cb.text.toString() === 'ello world'],
      [cb, () => cb.map.delete('title'), () => !ca.map.has('title')],
    ]
    for (const [, edit, seen] of edits) {
      edit()
      const ms = await until([ca.doc, cb.doc], seen, 'the edit on the other node', 2000)
      expect(ms).toBeLessThan(2000)
    }
    // Concurrent edits on both sides at once converge too.
    for (let i = 0; i < 20; i++) {
      ca.text.insert(ca.text.length, `a${i}`)
      cb.text.insert(0, `b${i}`)
      ca.map.set(`k${i % 5}`, `a${i}`)
      cb.map.set(`k${i % 5}`, `b${i}`)
    }
    await until([ca.doc, cb.doc], () => same(ca, cb) && ca.text.toString().includes('a19') && ca.text.toString().includes('b19'), 'concurrent edits converged', 2000)
    expect(content(ca)).toEqual(content(cb))
    expect(ca.text.toString()).toContain('a19')
    expect(ca.text.toString()).toContain('b19')

    // The servers hold the same document as the clients.
    const onA = new Y.Doc()
    Y.applyUpdate(onA, await a.node.yjs.encodeState('notes'))
    const onB = new Y.Doc()
    Y.applyUpdate(onB, await b.node.yjs.encodeState('notes'))
    expect(onA.getText('text').toString()).toBe(ca.text.toString())
    expect(onB.getMap('map').toJSON()).toEqual(ca.map.toJSON())

    const list = (await (await fetch(a.url + '/yjs')).json()) as Array<{ name: string; bytes: number; clients: number }>
    expect(list).toEqual([expect.objectContaining({ name: 'notes', clients: 1 })])
    expect(list[0]?.bytes).toBeGreaterThan(0)
  })

  it('during a partition both sides keep editing; after the heal they converge, deletions included', async () => {
    const b = await node('B')
    const a = await node('A', [b])
    await pollUntil('A and B linked', () => linked(a, b))
    const ca = client(a, 'doc')
    const cb = client(b, 'doc')
    await Promise.all([synced(ca), synced(cb)])
    ca.text.insert(0, 'shared line\n')
    ca.map.set('x', 1)
    ca.map.set('gone', true)
    await until([cb.doc], () => cb.text.toString() === 'shared line\n' && cb.map.get('gone') === true, 'the first edits on B', 2000)

    await post(a, '/peers/B/disconnect')
    await pollUntil('the link cut', () => !a.node.replication.replicator.isConnected('B') && !b.node.replication.replicator.isConnected('A'))

    // Both sides edit; B only deletes (deletions make no new structs: its state vector stays
    // behind A's, and only its delete set tells that A lacks something).
    ca.text.insert(ca.text.length, 'from A\n')
    ca.map.set('x', 2)
    cb.map.delete('gone')
    cb.text.delete(cb.text.length - 1, 1)
    // Each node has its own client's edits durable and has not got the other's.
    await pollUntil('edits durable on each side', async () => {
      const onA = new Y.Doc()
      Y.applyUpdate(onA, await a.node.yjs.encodeState('doc'))
      const onB = new Y.Doc()
      Y.applyUpdate(onB, await b.node.yjs.encodeState('doc'))
      return onA.getText('text').toString().includes('from A') && !onB.getMap('map').has('gone') && onB.getText('text').toString() === 'shared line'
    })
    expect(ca.map.has('gone')).toBe(true)
    expect(cb.text.toString()).not.toContain('from A')
    // Documents created during the partition travel too.
    const lone = client(b, 'made-during-partition')
    await synced(lone)
    lone.text.insert(0, 'only on B')
    await pollUntil('the new document durable on B', () => b.node.yjs.list().some((d) => d.name === 'made-during-partition' && d.bytes > 0))

    await post(a, '/peers/B/connect')
    await until([ca.doc, cb.doc], () => same(ca, cb) && cb.text.toString().includes('from A') && !ca.map.has('gone'), 'convergence after the heal', 5000)
    expect(ca.map.get('x')).toBe(2)
    // B deleted the line break that A's line was typed after.
    expect(ca.text.toString()).toBe('shared linefrom A\n')
    const late = client(a, 'made-during-partition')
    await synced(late)
    await until([late.doc], () => late.text.toString() === 'only on B', 'the document made on B during the partition, on A', 5000)
  })

  it('catch-up after a partition ships what the peer lacks, not the document', async () => {
    const b = await node('B')
    const a = await node('A', [b])
    await pollUntil('A and B linked', () => linked(a, b))
    const ca = client(a, 'big')
    await synced(ca)
    ca.text.insert(0, 'x'.repeat(200_000))
    await pollUntil('B holding the big document', () => (b.node.yjs.list().find((d) => d.name === 'big')?.bytes ?? 0) > 200_000)
    await post(a, '/peers/B/disconnect')
    await pollUntil('the link cut', () => !linked(a, b))
    ca.text.insert(100, 'small edit')
    await a.node.yjs.flushed()
    const before = a.node.yjs.getStats().catchUpBytes + b.node.yjs.getStats().catchUpBytes
    await post(a, '/peers/B/connect')
    const cb = client(b, 'big')
    await synced(cb)
    await until([cb.doc], () => cb.text.toString().includes('small edit'), 'the small edit on B', 5000)
    const shipped = a.node.yjs.getStats().catchUpBytes + b.node.yjs.getStats().catchUpBytes - before
    expect(shipped).toBeGreaterThan(0)
    expect(shipped).toBeLessThan(1000)
  })

  it('a chain A–B–C converges although A and C never meet; B has no client', async () => {
    const c = await node('C')
    const b = await node('B', [c])
    const a = await node('A', [b])
    await pollUntil('A–B and B–C linked', () => linked(a, b) && linked(b, c))
    expect(a.node.replication.replicator.isConnected('C')).toBe(false)
    const ca = client(a, 'chain')
    const cc = client(c, 'chain')
    await Promise.all([synced(ca), synced(cc)])
    ca.text.insert(0, 'from A')
    cc.map.set('from', 'C')
    await until([ca.doc, cc.doc], () => same(ca, cc) && ca.map.get('from') === 'C' && cc.text.toString() === 'from A', 'A and C converged through B', 2000)
  })

  it('awareness reaches clients on other nodes, and leaves with its client', async () => {
    const b = await node('B')
    const a = await node('A', [b])
    await pollUntil('A and B linked', () => linked(a, b))
    const ca = client(a, 'aw')
    const cb = client(b, 'aw')
    await Promise.all([synced(ca), synced(cb)])
    ca.provider.awareness.setLocalStateField('user', { name: 'ann' })
    const seesAnn = () => [...cb.provider.awareness.getStates().values()].some((s) => (s as { user?: { name?: string } }).user?.name === 'ann')
    await new Promise<void>((resolve) => {
      if (seesAnn()) return resolve()
      cb.provider.awareness.on('change', () => seesAnn() && resolve())
    })
    const annId = ca.doc.clientID
    ca.provider.disconnect()
    await new Promise<void>((resolve) => {
      if (!cb.provider.awareness.getStates().has(annId)) return resolve()
      cb.provider.awareness.on('change', () => !cb.provider.awareness.getStates().has(annId) && resolve())
    })
    // Never persisted: nothing of it is in the document's entries.
    expect(a.node.yjs.list().find((d) => d.name === 'aw')?.bytes ?? 0).toBe(0)
  })
})
