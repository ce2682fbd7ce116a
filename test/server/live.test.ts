/**
 * The live subscription (ws://HOST:PORT/live, docs/live.md) against one in-process node over a
 * real WebSocket: snapshots and windows, coalescing and the rate bound, batch imports turning
 * buckets exact, bad messages (an error frame, nothing changed), garbage (that client closed,
 * no other), a client that does not read (the node stops sending to it instead of buffering),
 * and the HTTP side: the dashboard's files, CORS for sibling nodes, auth.
 */
import net from 'node:net'
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest'
import { WebSocket } from 'ws'
import { dashboardDir } from '../../src/server/dashboard.js'
import { startTestNode, type TestNode } from './helpers.js'

const MINUTE = 60_000
const CLOCK = Date.UTC(2025, 5, 1, 12, 30, 10)
const BUCKET = Math.floor(CLOCK / MINUTE) * MINUTE
const iso = (t: number) => new Date(t).toISOString()

const VIEWS = {
  pv: { type: 'gcounter', ingest: { key: ['url'], bucket: { time: 'ts', size: '1m' } } },
  vis: { type: 'hll', ingest: { key: ['site'], bucket: { time: 'ts', size: '1m' }, value: 'user' } },
  online: { type: 'orset' },
  prof: { type: 'lwwmap' },
  big: { type: 'orset' },
  plain: { type: 'gcounter' },
}

interface Frame {
  type: string
  [k: string]: unknown
}
interface UpdateFrame extends Frame {
  time: number
  subs: Record<string, { reset?: boolean; truncated?: boolean; items: Array<{ key: string; value: unknown; exact: boolean; error?: number }> }>
  horizons: Record<string, number | null>
  stats?: Record<string, unknown>
}

/** A live client that keeps every frame and waits for the one a test expects. */
class Client {
  readonly frames: Frame[] = []
  closed: { code: number; reason: string } | null = null
  private waiters: Array<() => void> = []
  readonly ws: WebSocket

  constructor(url: string, headers: Record<string, string> = {}) {
    this.ws = new WebSocket(`${url.replace(/^http/, 'ws')}/live`, { headers })
    this.ws.on('message', (data) => {
      this.frames.push(JSON.parse(String(data)) as Frame)
      this.wake()
    })
    this.ws.on('close', (code, reason) => {
      this.closed = { code, reason: String(reason) }
      this.wake()
    })
    this.ws.on('error', () => {})
  }

  private wake(): void {
    const w = this.waiters
    this.waiters = []
    for (const f of w) f()
  }

  /** The first frame from index `from` on that satisfies `pred`. */
  async next<T extends Frame = Frame>(pred: (f: Frame) => boolean, from = 0, ms = 10_000): Promise<T> {
    const end = Date.now() + ms
    let i = from
    for (;;) {
      for (; i < this.frames.length; i++) if (pred(this.frames[i] as Frame)) return this.frames[i] as T
      if (this.closed) throw new Error(`closed (${this.closed.code} ${this.closed.reason}) while waiting; frames: ${JSON.stringify(this.frames).slice(0, 2000)}`)
      const left = end - Date.now()
      if (left <= 0) throw new Error(`no such frame within ${ms} ms; frames: ${JSON.stringify(this.frames).slice(-2000)}`)
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, left)
        this.waiters.push(() => {
          clearTimeout(t)
          resolve()
        })
      })
    }
  }

  async open(): Promise<Frame> {
    return this.next((f) => f.type === 'hello')
  }

  send(msg: unknown): void {
    this.ws.send(typeof msg === 'string' ? msg : JSON.stringify(msg))
  }

  /** Subscribes and waits for the acknowledgement; returns the index from which later frames come. */
  async subscribe(msg: Record<string, unknown>): Promise<number> {
    const from = this.frames.length
    this.send({ type: 'subscribe', ...msg })
    await this.next((f) => f.type === 'subscribed' || f.type === 'error', from)
    const ack = this.frames.slice(from).find((f) => f.type === 'subscribed' || f.type === 'error') as Frame
    if (ack.type === 'error') throw new Error(`subscription refused: ${JSON.stringify(ack)}`)
    return from
  }

  updates(from = 0): UpdateFrame[] {
    return this.frames.slice(from).filter((f) => f.type === 'update') as UpdateFrame[]
  }

  close(): void {
    this.ws.terminate()
  }
}

let clock = CLOCK
let t: TestNode
const clients: Client[] = []
const connect = async (headers?: Record<string, string>) => {
  const c = new Client(t.url, headers)
  clients.push(c)
  await c.open()
  return c
}

beforeAll(async () => {
  t = await startTestNode({ views: VIEWS, now: () => clock }, { live: { maxBufferedBytes: 64 * 1024 } })
  for (let m = 0; m < 20; m++) {
    await t.node.apply('pv', `/a|${iso(BUCKET - m * MINUTE)}`, { inc: m + 1 })
    await t.node.apply('pv', `/b|${iso(BUCKET - m * MINUTE)}`, { inc: 1 })
  }
  await t.node.apply('vis', `shop|${iso(BUCKET)}`, { add: ['u1', 'u2', 'u3'] })
  await t.node.apply('online', 'shop', { add: ['ann', 'bob'] })
})

afterEach(() => {
  for (const c of clients.splice(0)) c.close()
})

afterAll(async () => {
  await t?.close()
})

describe('subscriptions', () => {
  it('says hello with the views, then snapshots the keys asked for: prefix, window of buckets, sizes', async () => {
    const c = await connect()
    const hello = c.frames[0] as Frame & { views: Array<{ name: string; bucketMs: number | null }> }
    expect(hello.replica).toBe('n1')
    expect(hello.views.find((v) => v.name === 'pv')?.bucketMs).toBe(MINUTE)
    expect(hello.views.find((v) => v.name === 'plain')?.bucketMs).toBeNull()
    const from = await c.subscribe({
      subs: [
        { id: 'a', view: 'pv', prefix: '/a|', buckets: 3 },
        { id: 'v', view: 'vis', prefix: '' },
        { id: 'o', view: 'online', size: true },
        { id: 'k', view: 'pv', keys: [`/b|${iso(BUCKET)}`, '/nope'] },
      ],
    })
    const u = await c.next<UpdateFrame>((f) => f.type === 'update', from)
    expect(u.time).toBe(CLOCK)
    expect(u.subs.a?.reset).toBe(true)
    expect(u.subs.a?.items).toEqual([
      { key: `/a|${iso(BUCKET - 2 * MINUTE)}`, value: 3, exact: false },
      { key: `/a|${iso(BUCKET - MINUTE)}`, value: 2, exact: false },
      { key: `/a|${iso(BUCKET)}`, value: 1, exact: false },
    ])
    expect(u.subs.v?.items).toEqual([{ key: `shop|${iso(BUCKET)}`, value: 3, exact: false, error: expect.any(Number) }])
    expect(u.subs.v?.items[0]?.error).toBeGreaterThan(0)
    expect(u.subs.o?.items).toEqual([{ key: 'shop', value: 2, exact: false }])
    expect(u.subs.k?.items).toEqual([
      { key: `/b|${iso(BUCKET)}`, value: 1, exact: false },
      { key: '/nope', value: 0, exact: false },
    ])
    expect(u.horizons).toEqual({ pv: null, vis: null, online: null })
  })

  it('coalesces many changes of a key into one entry, and sends at most 4 frames a second however fast writes come', async () => {
    const c = await connect()
    const key = `/c|${iso(BUCKET)}`
    const from = await c.subscribe({ subs: [{ id: 'c', view: 'pv', keys: [key] }] })
    await c.next((f) => f.type === 'update', from)
    // A burst in one tick: one entry with the final value.
    const burst = c.frames.length
    await Promise.all(Array.from({ length: 200 }, () => t.node.apply('pv', key, { inc: 1 })))
    const u = await c.next<UpdateFrame>((f) => f.type === 'update' && (f as UpdateFrame).subs.c?.items[0]?.value === 200, burst)
    expect(u.subs.c?.items).toHaveLength(1)
    expect(c.updates(burst).length).toBeLessThanOrEqual(2)

    // Writes every few ms for 2 s: frames stay within the bound.
    const start = c.frames.length
    const t0 = Date.now()
    let n = 200
    while (Date.now() - t0 < 2000) {
      await t.node.apply('pv', key, { inc: 1 })
      n++
      await new Promise((r) => setTimeout(r, 3))
    }
    const last = await c.next<UpdateFrame>((f) => f.type === 'update' && (f as UpdateFrame).subs.c?.items[0]?.value === n, start)
    const seconds = (Date.now() - t0) / 1000
    const count = c.updates(start).length
    expect(last.subs.c?.items[0]?.value).toBe(n)
    expect(count).toBeGreaterThanOrEqual(3)
    expect(count).toBeLessThanOrEqual(Math.ceil(seconds * 4) + 1)
  })

  it('honours a lower rate a client asks for', async () => {
    const c = await connect()
    const key = `/slow|${iso(BUCKET)}`
    const from = await c.subscribe({ subs: [{ id: 's', view: 'pv', keys: [key] }], rate: 1 })
    await c.next((f) => f.type === 'update', from)
    const start = c.frames.length
    const t0 = Date.now()
    while (Date.now() - t0 < 2100) {
      await t.node.apply('pv', key, { inc: 1 })
      await new Promise((r) => setTimeout(r, 10))
    }
    expect(c.updates(start).length).toBeLessThanOrEqual(3)
  })

  it('keeps only the keys changed last for a "recent" subscription', async () => {
    const c = await connect()
    const from = await c.subscribe({ subs: [{ id: 'r', view: 'prof', recent: 2 }] })
    for (const u of ['ann', 'bob', 'cid', 'dan']) await t.node.apply('prof', u, { set: { country: 'DE', name: u } })
    const u = await c.next<UpdateFrame>((f) => f.type === 'update' && ((f as UpdateFrame).subs.r?.items.length ?? 0) > 0, from)
    expect(u.subs.r?.items.map((i) => i.key)).toEqual(['cid', 'dan'])
    expect(u.subs.r?.items[1]?.value).toEqual({ country: 'DE', name: 'dan' })
  })

  it('turns covered buckets exact when a batch view is imported, keys only the batch knows included', async () => {
    const c = await connect()
    const from = await c.subscribe({ subs: [{ id: 'p', view: 'pv', prefix: '/', buckets: 2 }] })
    await c.next((f) => f.type === 'update', from)
    const before = c.frames.length
    // Horizon at the current bucket's start: the previous bucket is covered.
    await t.node.batch.import('pv', BUCKET, { [`/a|${iso(BUCKET - MINUTE)}`]: 1000, [`/z|${iso(BUCKET - MINUTE)}`]: 7 })
    const u = await c.next<UpdateFrame>((f) => f.type === 'update' && (f as UpdateFrame).subs.p?.reset === true, before)
    const items = new Map(u.subs.p?.items.map((i) => [i.key, i]))
    expect(items.get(`/a|${iso(BUCKET - MINUTE)}`)).toEqual({ key: `/a|${iso(BUCKET - MINUTE)}`, value: 1000, exact: true })
    expect(items.get(`/z|${iso(BUCKET - MINUTE)}`)).toEqual({ key: `/z|${iso(BUCKET - MINUTE)}`, value: 7, exact: true })
    // Covered, and absent from the batch view: exactly zero.
    expect(items.get(`/b|${iso(BUCKET - MINUTE)}`)).toEqual({ key: `/b|${iso(BUCKET - MINUTE)}`, value: 0, exact: true })
    expect(items.get(`/a|${iso(BUCKET)}`)?.exact).toBe(false)
    expect(u.horizons.pv).toBe(BUCKET)
  })

  it('sends the node figures about once a second with "stats"', async () => {
    const c = await connect()
    const from = await c.subscribe({ subs: [], stats: true })
    const first = await c.next<UpdateFrame>((f) => f.type === 'update' && (f as UpdateFrame).stats !== undefined, from)
    const s = first.stats as Record<string, unknown> & { views: unknown[]; storage: Record<string, number>; peers: unknown[]; latency: unknown; live: { clients: number } }
    expect(s.replica).toBe('n1')
    expect(s.views).toContainEqual({ name: 'pv', type: 'gcounter', keys: expect.any(Number), bucketMs: MINUTE, horizon: expect.any(Number) })
    expect(Object.keys(s.storage).sort()).toEqual(['compacting', 'compactions', 'diskBytes', 'lastCompactionMs', 'liveBytes', 'logBytes', 'pendingBytes', 'retainedLogBytes', 'snapshotWrites'])
    expect(s.peers).toEqual([])
    expect(s.live.clients).toBeGreaterThanOrEqual(1)
    expect(s).toHaveProperty('latency.ingest')
    expect(s).toHaveProperty('process.rssBytes')
    expect(s.yjs === null || Array.isArray(s.yjs)).toBe(true)
    const idx = c.frames.indexOf(first)
    await c.next((f) => f.type === 'update' && (f as UpdateFrame).stats !== undefined, idx + 1, 5000)
  })
})

describe('bad input', () => {
  const BAD: Array<[string, unknown]> = [
    ['not an object', [1, 2]],
    ['a string', 'subscribe'],
    ['unknown type', { type: 'unsubscribe' }],
    ['unknown field', { type: 'subscribe', subs: [], extra: 1 }],
    ['subs not an array', { type: 'subscribe', subs: {} }],
    ['too many subs', { type: 'subscribe', subs: Array.from({ length: 17 }, (_, i) => ({ id: `s${i}`, view: 'pv' })) }],
    ['sub not an object', { type: 'subscribe', subs: [7] }],
    ['missing id', { type: 'subscribe', subs: [{ view: 'pv' }] }],
    ['empty id', { type: 'subscribe', subs: [{ id: '', view: 'pv' }] }],
    ['duplicate id', { type: 'subscribe', subs: [{ id: 'x', view: 'pv' }, { id: 'x', view: 'vis' }] }],
    ['unknown view', { type: 'subscribe', subs: [{ id: 'x', view: 'nope' }] }],
    ['unknown sub field', { type: 'subscribe', subs: [{ id: 'x', view: 'pv', from: 1 }] }],
    ['prefix not a string', { type: 'subscribe', subs: [{ id: 'x', view: 'pv', prefix: 3 }] }],
    ['keys with prefix', { type: 'subscribe', subs: [{ id: 'x', view: 'pv', keys: ['a'], prefix: 'a' }] }],
    ['keys not strings', { type: 'subscribe', subs: [{ id: 'x', view: 'pv', keys: [1] }] }],
    ['too many keys', { type: 'subscribe', subs: [{ id: 'x', view: 'pv', keys: Array.from({ length: 1001 }, (_, i) => `k${i}`) }] }],
    ['buckets on a plain view', { type: 'subscribe', subs: [{ id: 'x', view: 'plain', buckets: 2 }] }],
    ['buckets zero', { type: 'subscribe', subs: [{ id: 'x', view: 'pv', buckets: 0 }] }],
    ['buckets fractional', { type: 'subscribe', subs: [{ id: 'x', view: 'pv', buckets: 1.5 }] }],
    ['recent too large', { type: 'subscribe', subs: [{ id: 'x', view: 'prof', recent: 101 }] }],
    ['size not boolean', { type: 'subscribe', subs: [{ id: 'x', view: 'online', size: 'yes' }] }],
    ['stats not boolean', { type: 'subscribe', stats: 1 }],
    ['rate too high', { type: 'subscribe', rate: 50 }],
    ['rate not a number', { type: 'subscribe', rate: '4' }],
  ]

  it('answers each bad subscription with an error frame and keeps the subscription it had', async () => {
    const c = await connect()
    const key = `/keep|${iso(BUCKET)}`
    const from = await c.subscribe({ subs: [{ id: 'keep', view: 'pv', keys: [key] }] })
    await c.next((f) => f.type === 'update', from)
    for (const [what, msg] of BAD) {
      const at = c.frames.length
      c.send(JSON.stringify(msg))
      const err = await c.next((f) => f.type === 'error' || f.type === 'subscribed', at)
      expect(err.type, what).toBe('error')
      expect(err.code, what).toBe('bad_subscription')
      expect(String(err.message).length, what).toBeGreaterThan(10)
    }
    // Still subscribed as before: a write to the key arrives under the old id.
    const at = c.frames.length
    await t.node.apply('pv', key, { inc: 5 })
    const u = await c.next<UpdateFrame>((f) => f.type === 'update' && (f as UpdateFrame).subs.keep !== undefined, at)
    expect(u.subs.keep?.items[0]?.value).toBe(5)
    expect(c.closed).toBeNull()
  })

  it('closes a client that sends garbage, and only that one', async () => {
    const good = await connect()
    const key = `/g|${iso(BUCKET)}`
    const from = await good.subscribe({ subs: [{ id: 'g', view: 'pv', keys: [key] }] })
    await good.next((f) => f.type === 'update', from)

    const text = await connect()
    text.send('{"type": "subscribe", "subs": [')
    await expect(text.next(() => false, 0, 5000)).rejects.toThrow(/closed \(1007/)

    const binary = await connect()
    binary.ws.send(Buffer.from([1, 2, 3]))
    await expect(binary.next(() => false, 0, 5000)).rejects.toThrow(/closed \(1003/)

    const huge = await connect()
    huge.send(JSON.stringify({ type: 'subscribe', subs: [], pad: 'x'.repeat(100 * 1024) }))
    await expect(huge.next(() => false, 0, 5000)).rejects.toThrow(/closed \(1009/)

    const at = good.frames.length
    await t.node.apply('pv', key, { inc: 1 })
    await good.next((f) => f.type === 'update', at)
    expect(good.closed).toBeNull()
    expect(t.server.live.counters.closedForGarbage).toBeGreaterThanOrEqual(2)
  })

  it('does not buffer without bound for a client that stops reading: it skips frames, and others go on', async () => {
    // A raw WebSocket client that subscribes and then never reads a byte.
    const port = Number(new URL(t.url).port)
    const sock = net.connect(port, '127.0.0.1')
    await new Promise<void>((r) => sock.once('connect', () => r()))
    sock.write(`GET /live HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n`)
    sock.write(maskedTextFrame(JSON.stringify({ type: 'subscribe', subs: [{ id: 'b', view: 'big', prefix: '' }] })))
    sock.pause()
    try {
      const good = await connect()
      const from = await good.subscribe({ subs: [{ id: 'b', view: 'big', keys: ['k0'] }] })
      await good.next((f) => f.type === 'update', from)
      // Large values, changed continuously: each frame to the stalled client is ~0.5 MB.
      const members = (k: number, round: number) => Array.from({ length: 500 }, (_, i) => `member-${k}-${round}-${i}-${'x'.repeat(8)}`)
      let maxBuffered = 0
      const skipped0 = t.server.live.counters.skipped
      for (let round = 0; round < 60 && t.server.live.counters.skipped - skipped0 < 8; round++) {
        const at = good.frames.length
        for (let k = 0; k < 40; k++) await t.node.apply('big', `k${k}`, { add: members(k, round) })
        maxBuffered = Math.max(maxBuffered, t.server.live.buffered().max)
        // The reading client gets every round's change.
        await good.next((f) => f.type === 'update', at)
      }
      expect(t.server.live.counters.skipped - skipped0).toBeGreaterThanOrEqual(8)
      // At most the bound plus the one frame that crossed it (a frame holds every dirty key once).
      expect(maxBuffered).toBeLessThan(64 * 1024 + 8 * 1024 * 1024)
      expect(t.server.live.buffered().max).toBeLessThan(64 * 1024 + 8 * 1024 * 1024)
      expect(good.closed).toBeNull()
    } finally {
      sock.destroy()
    }
  }, 60_000)
})

describe('HTTP', () => {
  it('answers GET /live without an upgrade with 426', async () => {
    const res = await fetch(`${t.url}/live`)
    expect(res.status).toBe(426)
    expect(((await res.json()) as { error: { code: string } }).error.code).toBe('upgrade_required')
  })

  it('serves the built dashboard at / and at any path outside the API, gzipped, with a 404 for a missing asset', async () => {
    const built = dashboardDir() !== null
    const res = await fetch(`${t.url}/`)
    expect(res.status).toBe(200)
    expect(res.headers.get('content-type')).toMatch(/^text\/html/)
    const html = await res.text()
    if (!built) {
      expect(html).toMatch(/not built/)
      return
    }
    expect(html).toMatch(/<script type="module"[^>]*src="\/assets\/[^"]+\.js"/)
    expect(await (await fetch(`${t.url}/cluster/node3`)).text()).toBe(html)
    const js = /src="(\/assets\/[^"]+\.js)"/.exec(html)?.[1] as string
    const asset = await fetch(`${t.url}${js}`, { headers: { 'accept-encoding': 'gzip' } })
    expect(asset.status).toBe(200)
    expect(asset.headers.get('content-type')).toMatch(/^text\/javascript/)
    expect(asset.headers.get('content-encoding')).toBe('gzip')
    expect(asset.headers.get('cache-control')).toMatch(/immutable/)
    expect((await asset.text()).length).toBeGreaterThan(1000)
    expect((await fetch(`${t.url}/assets/nope.js`)).status).toBe(404)
  })

  it('lets the dashboards of sibling nodes on the same host read and steer it (CORS), and no one else', async () => {
    const port = new URL(t.url).port
    const sibling = await fetch(`${t.url}/health`, { headers: { origin: 'http://127.0.0.1:9' } })
    expect(sibling.headers.get('access-control-allow-origin')).toBe('http://127.0.0.1:9')
    const self = await fetch(`${t.url}/peers`, { headers: { origin: `http://127.0.0.1:${port}` } })
    expect(self.headers.get('access-control-allow-origin')).toBe(`http://127.0.0.1:${port}`)
    for (const origin of ['http://evil.example', 'null', 'file://', 'not a url', 'http://127.0.0.2:9']) {
      const res = await fetch(`${t.url}/health`, { headers: { origin } })
      expect(res.headers.get('access-control-allow-origin'), origin).toBeNull()
    }
  })

  it('with --token-reads, /live needs the token', async () => {
    const guarded = await startTestNode({ views: { c: { type: 'gcounter' } } }, { token: 's3cret', tokenReads: true })
    try {
      const refused = new WebSocket(`${guarded.url.replace('http', 'ws')}/live`)
      const status = await new Promise<number>((resolve) => {
        refused.on('unexpected-response', (_req, res) => resolve(res.statusCode ?? 0))
        refused.on('open', () => resolve(101))
        refused.on('error', () => {})
      })
      expect(status).toBe(401)
      const ok = new Client(guarded.url.replace(/\/?$/, '') + '', { authorization: 'Bearer s3cret' })
      clients.push(ok)
      expect((await ok.open()).replica).toBe('n1')
    } finally {
      await guarded.close()
    }
  })
})

/** A client's text frame (clients must mask), for the raw socket that never reads. */
function maskedTextFrame(text: string): Buffer {
  const payload = Buffer.from(text, 'utf8')
  const mask = Buffer.from([1, 2, 3, 4])
  const len = payload.length
  const head = len < 126 ? Buffer.from([0x81, 0x80 | len]) : Buffer.from([0x81, 0x80 | 126, len >> 8, len & 255])
  const body = Buffer.alloc(len)
  for (let i = 0; i < len; i++) body[i] = (payload[i] as number) ^ (mask[i % 4] as number)
  return Buffer.concat([head, mask, body])
}
