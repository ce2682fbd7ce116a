/**
 * The /yjs endpoint of one node: bad input closes that client only (the node and its other
 * clients go on), the token, document names, GET /yjs and /metrics, idle documents leaving
 * memory and coming back on demand.
 */
import { afterEach, describe, expect, it } from 'vitest'
import * as Y from 'yjs'
import * as encoding from 'lib0/encoding'
import { startTestNode, type TestNode } from '../server/helpers.js'
import { parseMetrics } from '../e2e/helpers.js'
import { content, pollUntil, rawSocket, synced, until, upgradeStatus, yClient, type YClient } from './helpers.js'

const nodes: TestNode[] = []
const clients: YClient[] = []

afterEach(async () => {
  for (const c of clients.splice(0)) c.close()
  await Promise.all(nodes.splice(0).map((n) => n.close()))
})

async function node(opts: Parameters<typeof startTestNode>[0] = {}, server: Parameters<typeof startTestNode>[1] = {}): Promise<TestNode> {
  const n = await startTestNode(opts, server)
  nodes.push(n)
  return n
}

function client(n: TestNode, room: string, params: Record<string, string> = {}): YClient {
  const c = yClient(n.url, room, params)
  clients.push(c)
  return c
}

function bytes(...parts: Array<number | Uint8Array>): Uint8Array {
  const enc = encoding.createEncoder()
  for (const p of parts) {
    if (typeof p === 'number') encoding.writeVarUint(enc, p)
    else encoding.writeVarUint8Array(enc, p)
  }
  return encoding.toUint8Array(enc)
}

function awarenessUpdate(entries: Array<[number, number, string]>): Uint8Array {
  const enc = encoding.createEncoder()
  encoding.writeVarUint(enc, entries.length)
  for (const [id, clock, json] of entries) {
    encoding.writeVarUint(enc, id)
    encoding.writeVarUint(enc, clock)
    encoding.writeVarString(enc, json)
  }
  return encoding.toUint8Array(enc)
}

/** A small real update, for mutating. */
function realUpdate(): Uint8Array {
  const d = new Y.Doc()
  d.getText('text').insert(0, 'mutant text')
  d.getMap('map').set('m', { deep: [1, 2, 3] })
  return Y.encodeStateAsUpdate(d)
}

describe('bad input on /yjs closes that client only', () => {
  it('malformed messages, unknown types and oversized messages: the node and the other clients go on', async () => {
    const n = await node({}, { maxBody: 64 * 1024 })
    const c1 = client(n, 'room')
    const c2 = client(n, 'room')
    await Promise.all([synced(c1), synced(c2)])
    let round = 0
    /** An edit by c1 reaches c2: the document and its clients are unharmed. */
    const stillWorks = async () => {
      round++
      c1.map.set('round', round)
      await until([c2.doc], () => c2.map.get('round') === round, `round ${round} on the second client`, 2000)
    }
    await stillWorks()

    const stepOne = bytes(0, 0, Y.encodeStateVector(new Y.Doc()))
    const cases: Array<[string, Uint8Array | string, number]> = [
      ['an empty message', new Uint8Array(0), 4400],
      ['an unknown message type', bytes(7), 4400],
      ['an auth message (servers send those)', bytes(2, 0, 0), 4400],
      ['an unknown sync message kind', bytes(0, 5, new Uint8Array(1)), 4400],
      ['a truncated state vector', Uint8Array.of(0, 0, 16, 1, 2), 4400],
      ['a state vector with a count it cannot hold', bytes(0, 0, Uint8Array.of(100, 1, 1)), 4400],
      ['trailing bytes after sync step 1', Uint8Array.from([...stepOne, 9]), 4400],
      ['an awareness message of garbage', bytes(1, Uint8Array.of(0x61, 0x62, 0x63)), 4400],
      ['an awareness state that is not JSON', bytes(1, awarenessUpdate([[5, 1, '{not json']])), 4400],
      ['an update that is not an update', bytes(0, 2, Uint8Array.of(0xff, 0xff, 0xff, 0x0f, 1, 2, 3)), 4400],
      ['sync step 2 that is not an update', bytes(0, 1, Uint8Array.of(3, 200, 1)), 4400],
      ['a truncated update', bytes(0, 2, realUpdate().subarray(0, 12)), 4400],
      ['a text frame', 'hello', 4400],
      ['a message over --max-body', new Uint8Array(100 * 1024), 1009],
    ]
    const refusedBefore = n.node.yjs.getStats().clientsRefused
    for (const [what, msg, code] of cases) {
      const raw = await rawSocket(n.url, 'room')
      raw.send(msg)
      const closed = await raw.closed
      expect(closed.code, what).toBe(code)
      await stillWorks()
    }
    expect(n.node.yjs.getStats().clientsRefused - refusedBefore).toBe(cases.filter((c) => c[2] === 4400).length)

    // Mutated real updates: each is applied (it is then some edit) or closes its client; the
    // node never falls over and its clients still agree.
    const base = realUpdate()
    const beforeFuzz = n.node.yjs.getStats().clientsRefused
    let seed = 12345
    const rand = () => ((seed = (seed * 1103515245 + 12345) & 0x7fffffff) / 0x7fffffff)
    for (let i = 0; i < 60; i++) {
      const m = base.slice()
      for (let k = 0; k < 1 + (i % 4); k++) m[Math.floor(rand() * m.length)] = Math.floor(rand() * 256)
      const raw = await rawSocket(n.url, 'room')
      raw.send(bytes(0, 2, m))
      // A query for awareness gets an answer on an open connection: the update was taken.
      raw.send(bytes(3))
      await Promise.race([raw.closed, pollUntil('an answer', () => raw.messages.length >= 2, 2000)])
      raw.close()
    }
    // Both outcomes happened.
    const refusedByFuzz = n.node.yjs.getStats().clientsRefused - beforeFuzz
    expect(refusedByFuzz).toBeGreaterThan(0)
    expect(refusedByFuzz).toBeLessThan(60)
    await stillWorks()
    c2.text.insert(0, 'after the fuzz ')
    await until([c1.doc, c2.doc], () => JSON.stringify(content(c1)) === JSON.stringify(content(c2)), 'the two clients agreeing', 2000)
    const health = await fetch(n.url + '/health')
    expect(health.status).toBe(200)
  })

  it('clients of other documents are not disturbed by a refused one', async () => {
    const n = await node()
    const a = client(n, 'one')
    const b = client(n, 'one')
    await Promise.all([synced(a), synced(b)])
    const raw = await rawSocket(n.url, 'two')
    raw.send(bytes(9, 9, 9))
    expect((await raw.closed).code).toBe(4400)
    a.text.insert(0, 'fine')
    await until([b.doc], () => b.text.toString() === 'fine', 'the edit', 2000)
  })
})

describe('/yjs routes', () => {
  it('--token: the WebSocket needs ?token= or the Authorization header; GET /yjs is a read', async () => {
    const n = await node({}, { token: 'sekret' })
    expect(await upgradeStatus(n.url, '/yjs/doc')).toBe(401)
    expect(await upgradeStatus(n.url, '/yjs/doc?token=wrong')).toBe(401)
    expect(await upgradeStatus(n.url, '/yjs/doc?token=sekret')).toBe(101)
    expect(await upgradeStatus(n.url, '/yjs/doc', { authorization: 'Bearer sekret' })).toBe(101)
    const c = client(n, 'doc', { token: 'sekret' })
    await synced(c)
    c.text.insert(0, 'with a token')
    await pollUntil('the edit durable', async () => ((await (await fetch(n.url + '/yjs')).json()) as Array<{ bytes: number }>)[0]?.bytes! > 0)
    expect((await fetch(n.url + '/yjs')).status).toBe(200)

    const r = await node({ id: 'r' }, { token: 'sekret', tokenReads: true })
    expect((await fetch(r.url + '/yjs')).status).toBe(401)
    expect((await fetch(r.url + '/yjs', { headers: { authorization: 'Bearer sekret' } })).status).toBe(200)
  })

  it('document names: the rest of the path, percent-decoded; empty or malformed names are 400', async () => {
    const n = await node()
    expect(await upgradeStatus(n.url, '/yjs/')).toBe(400)
    expect(await upgradeStatus(n.url, '/yjs/%E0%A4')).toBe(400)
    expect(await upgradeStatus(n.url, '/yjs/%')).toBe(400)
    expect(await upgradeStatus(n.url, '/yjs/' + 'x'.repeat(1025))).toBe(400)
    expect(await upgradeStatus(n.url, '/yjsx')).toBe(404)
    const slash = client(n, 'team/notes')
    const escaped = client(n, 'team%2Fnotes')
    const unicode = client(n, encodeURIComponent('notes été'))
    await Promise.all([synced(slash), synced(escaped), synced(unicode)])
    slash.text.insert(0, 'one document')
    await until([escaped.doc], () => escaped.text.toString() === 'one document', 'the edit under the other spelling', 2000)
    unicode.text.insert(0, 'x')
    await pollUntil('both documents listed', () => n.node.yjs.list().filter((d) => d.bytes > 0).length === 2)
    expect(n.node.yjs.list().map((d) => d.name)).toEqual(['notes été', 'team/notes'])
    const res = await fetch(n.url + '/yjs/whatever')
    expect(res.status).toBe(404)
    expect((await fetch(n.url + '/yjs', { method: 'POST' })).status).toBe(405)
  })

  it('GET /yjs lists documents with size, updates since compaction and clients; /metrics counts them', async () => {
    const n = await node()
    const c = client(n, 'listed')
    await synced(c)
    // Edits of one turn of the event loop are applied and stored as one update: one at a time.
    for (let i = 0; i < 5; i++) {
      c.text.insert(i, String(i))
      await pollUntil(`update ${i + 1} durable`, () => n.node.yjs.list()[0]?.updatesSinceCompaction === i + 1)
    }
    const list = (await (await fetch(n.url + '/yjs')).json()) as Array<Record<string, unknown>>
    expect(list).toEqual([{ name: 'listed', bytes: expect.any(Number), clients: 1, updatesSinceCompaction: 5, loaded: true }])
    expect(list[0]?.bytes as number).toBeGreaterThan(5 * 6)
    const metrics = parseMetrics(await (await fetch(n.url + '/metrics')).text())
    expect(metrics.get('speedlayer_yjs_documents')).toBe(1)
    expect(metrics.get('speedlayer_yjs_clients')).toBe(1)
    expect(metrics.get('speedlayer_yjs_updates_total')).toBe(5)
  })

  it('an idle document leaves memory and is loaded again for the next client', async () => {
    const n = await node({ yjs: { idleMs: 30 } })
    const c = client(n, 'idle')
    await synced(c)
    c.text.insert(0, 'remember me')
    c.map.set('k', 'v')
    await pollUntil('the edits durable', () => (n.node.yjs.list()[0]?.updatesSinceCompaction ?? 0) >= 1)
    const updates = n.node.yjs.list()[0]?.updatesSinceCompaction
    c.close()
    clients.length = 0
    await pollUntil('the document unloaded', () => n.node.yjs.list()[0]?.loaded === false)
    expect(n.node.yjs.getStats().unloads).toBeGreaterThanOrEqual(1)
    expect(n.node.yjs.list()[0]).toMatchObject({ name: 'idle', clients: 0, updatesSinceCompaction: updates })
    const again = client(n, 'idle')
    await synced(again)
    await until([again.doc], () => again.text.toString() === 'remember me' && again.map.get('k') === 'v', 'the document back', 2000)
    // Created in memory the first time (nothing on disk to read), loaded from disk the second.
    expect(n.node.yjs.getStats().loads).toBe(1)
  })
})
