/**
 * POST /ingest on an in-process node and server (LevelDB in a temp dir), with the demo views.
 */
import { afterEach, describe, expect, it, vi } from 'vitest'
import fc from 'fast-check'
import http from 'node:http'
import net from 'node:net'
import os from 'node:os'
import { readFileSync, readdirSync } from 'node:fs'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import { expectErrorBody, rawRequest, snapshot, startTestNode, type TestNode } from '../server/helpers.js'
import { ingestEvents, ingestStats } from '../../src/ingest/ingest.js'

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..')
const DEMO_VIEWS = (JSON.parse(readFileSync(path.join(ROOT, 'bench/pageview-views.json'), 'utf8')) as { views: Record<string, unknown> }).views

const NOW = Date.UTC(2025, 5, 1, 12, 30, 0)
const HOUR = 3_600_000
const hourOf = (t: number) => new Date(Math.floor(t / HOUR) * HOUR).toISOString()

let nodes: TestNode[] = []
afterEach(async () => {
  await Promise.all(nodes.map((n) => n.close()))
  nodes = []
})

async function demoNode(serverOpts: Parameters<typeof startTestNode>[1] = {}, nodeOpts: Parameters<typeof startTestNode>[0] = {}): Promise<TestNode> {
  const t = await startTestNode({ views: DEMO_VIEWS, now: () => NOW, ...nodeOpts }, serverOpts)
  nodes.push(t)
  return t
}

interface Answer {
  status: number
  headers: Record<string, string | undefined>
  text: string
  json: unknown
}

function ndjson(events: unknown[]): string {
  return events.map((e) => JSON.stringify(e)).join('\n') + '\n'
}

async function ingest(t: TestNode, body: string | Buffer, headers: Record<string, string> = {}): Promise<Answer> {
  const res = await fetch(`${t.url}/ingest`, { method: 'POST', headers: { 'content-type': 'application/x-ndjson', ...headers }, body })
  const text = await res.text()
  let json: unknown
  try {
    json = JSON.parse(text)
  } catch {
    json = undefined
  }
  return { status: res.status, headers: { 'content-type': res.headers.get('content-type') ?? undefined, 'retry-after': res.headers.get('retry-after') ?? undefined }, text, json }
}

async function ok(t: TestNode, body: string | Buffer): Promise<{ accepted: number; rejected: Record<string, number> }> {
  const a = await ingest(t, body)
  if (a.status !== 200) throw new Error(`POST /ingest answered ${a.status}: ${a.text}`)
  return a.json as { accepted: number; rejected: Record<string, number> }
}

async function value(t: TestNode, view: string, key: string): Promise<unknown> {
  const res = await fetch(`${t.url}/views/${encodeURIComponent(view)}/${encodeURIComponent(key)}`)
  expect(res.status).toBe(200)
  return ((await res.json()) as { value: unknown }).value
}

const pv = (i: number, extra: Record<string, unknown> = {}) => ({
  kind: 'pageview',
  url: `/p${i % 5}`,
  site: `s${i % 2}`,
  user: `u${i % 7}`,
  ts: NOW - 10_000 - i,
  country: 'DE',
  ...extra,
})

const ZERO = { online: 0, pageviews: 0, profiles: 0, visitors: 0 }

/** Temp files this process spooled and did not remove. */
function ourSpoolFiles(): string[] {
  return readdirSync(os.tmpdir()).filter((f) => f.startsWith(`speedlayer-ingest-${process.pid}-`))
}

describe('POST /ingest', () => {
  it('applies every view rule of the demo to every event and answers the counts', async () => {
    const t = await demoNode()
    const events = Array.from({ length: 70 }, (_, i) => pv(i))
    const r = await ok(t, ndjson(events))
    expect(r).toEqual({ accepted: 70, rejected: ZERO })
    const hour = hourOf(NOW - 10_000)
    for (let u = 0; u < 5; u++) {
      expect(await value(t, 'pageviews', `/p${u}|${hour}`)).toBe(14)
      expect(await value(t, 'visitors', `/p${u}|${hour}`)).toBe(7)
    }
    expect(await value(t, 'online', 's0')).toEqual(['u0', 'u1', 'u2', 'u3', 'u4', 'u5', 'u6'])
    // The latest event of u0 (i = 0, the highest ts) wins: url /p0.
    expect(await value(t, 'profiles', 'u0')).toEqual({ country: 'DE', url: '/p0' })
    expect(ingestStats(t.node).events).toBe(70)
  })

  it('a line that is not a JSON object anywhere in the body: 400 naming it, nothing applied', async () => {
    const t = await demoNode()
    await ok(t, ndjson([pv(0), pv(1)]))
    const before = await snapshot(t.url)
    const good = Array.from({ length: 50 }, (_, i) => JSON.stringify(pv(i)))
    const bads: Array<[string | Buffer, RegExp]> = [
      ['{"kind": "pageview", "url": ', /not valid JSON/],
      ['[1, 2]', /an array, not a JSON object/],
      ['42', /a number, not a JSON object/],
      ['"text"', /a string, not a JSON object/],
      ['null', /null, not a JSON object/],
      [Buffer.from([0x7b, 0x22, 0x61, 0x22, 0x3a, 0x22, 0xff, 0xfe, 0x22, 0x7d]), /not valid UTF-8/],
    ]
    for (const at of [1, 26, 51]) {
      for (const [bad, why] of bads) {
        const lines: Array<string | Buffer> = [...good]
        lines.splice(at - 1, 0, bad)
        const body = Buffer.concat(lines.map((l) => Buffer.concat([Buffer.isBuffer(l) ? l : Buffer.from(l), Buffer.from('\n')])))
        const a = await ingest(t, body)
        const err = expectErrorBody(a.status, 400, a.text, a.headers, `bad line at ${at}`)
        expect(err.message).toMatch(new RegExp(`^line ${at} `))
        expect(err.message).toMatch(why)
      }
    }
    expect(await snapshot(t.url)).toEqual(before)
  })

  it('blank lines are skipped but counted in line numbers; CRLF and a final line without newline work', async () => {
    const t = await demoNode()
    const body = `\n${JSON.stringify(pv(0))}\r\n   \n\t\r\n\n${JSON.stringify(pv(1))}\n\n${JSON.stringify(pv(2))}`
    expect(await ok(t, body)).toEqual({ accepted: 3, rejected: ZERO })
    expect(await ok(t, '')).toEqual({ accepted: 0, rejected: ZERO })
    expect(await ok(t, '\n\n \n')).toEqual({ accepted: 0, rejected: ZERO })
    // A byte order mark before the first line is not an error.
    expect(await ok(t, `\uFEFF${JSON.stringify(pv(3))}\n`)).toEqual({ accepted: 1, rejected: ZERO })
    const a = await ingest(t, `\n\n${JSON.stringify(pv(4))}\n\n[]\n`)
    expect(expectErrorBody(a.status, 400, a.text, a.headers, 'after blanks').message).toMatch(/^line 5 /)
    expect(await value(t, 'pageviews', `/p4|${hourOf(NOW - 10_004)}`)).toBe(0)
  })

  it('counts per rule the events it cannot use; filtered events are not rejections', async () => {
    const t = await demoNode()
    const { user: _u, ...noUser } = pv(1)
    const events = [
      pv(0),
      { ...pv(0), kind: 'click' }, // filtered by the three pageview rules; profiles takes it
      noUser, // visitors, online, profiles: no user
      pv(2, { url: 7 }), // a number is a fine key part
      pv(3, { url: true }), // pageviews, visitors: bad key
      pv(4, { ts: 'yesterday' }), // pageviews, visitors, profiles: bad time
      pv(5, { user: { id: 5 } }), // visitors, online: bad element; profiles: bad key
      { user: 'u9', kind: 'signup', ts: NOW }, // profiles: none of its fields
      pv(6, { ts: NOW + 60_001 }), // beyond --max-drift for every rule with a time
      pv(6, { ts: NOW + 60_000 }), // exactly at the bound: fine
    ]
    const r = await ok(t, ndjson(events))
    expect(r).toEqual({ accepted: 10, rejected: { pageviews: 3, visitors: 5, online: 2, profiles: 5 } })
    expect(await value(t, 'pageviews', `7|${hourOf(NOW - 10_002)}`)).toBe(1)
    // The event without a user and the one at the drift bound: same url, same hour.
    expect(await value(t, 'pageviews', `/p1|${hourOf(NOW + 60_000)}`)).toBe(2)
    const stats = ingestStats(t.node)
    expect(Object.fromEntries(stats.rejected)).toEqual({ pageviews: 3, visitors: 5, online: 2, profiles: 5 })
  })

  it('a time beyond --max-drift is rejected per rule; the node clock decides', async () => {
    const t = await demoNode({}, { maxDriftMs: 1000 })
    const r = await ok(t, ndjson([pv(0, { ts: NOW + 1001 }), pv(1, { ts: NOW + 1000 }), pv(2, { ts: 0 })]))
    // online has no time: it takes all three.
    expect(r).toEqual({ accepted: 3, rejected: { pageviews: 1, visitors: 1, online: 0, profiles: 1 } })
    expect(await value(t, 'pageviews', `/p0|${hourOf(NOW + 1001)}`)).toBe(0)
    expect(await value(t, 'pageviews', '/p2|1970-01-01T00:00:00.000Z')).toBe(1)
  })

  it('writes the store refuses count as rejections of that rule, and the others still apply', async () => {
    const t = await demoNode()
    let deep: unknown = 'x'
    for (let i = 0; i < 40; i++) deep = [deep]
    const r = await ok(t, ndjson([pv(0, { country: deep }), pv(1)]))
    expect(r).toEqual({ accepted: 2, rejected: { ...ZERO, profiles: 1 } })
    expect(await value(t, 'profiles', 'u0')).toEqual({})
    expect(await value(t, 'profiles', 'u1')).toEqual({ country: 'DE', url: '/p1' })
  })

  it('lwwmap: the latest event wins whatever the arrival order, within and across batches', async () => {
    const t = await demoNode()
    let user = 0
    await fc.assert(
      fc.asyncProperty(fc.uniqueArray(fc.integer({ min: 0, max: 1000 }), { minLength: 1, maxLength: 8 }), fc.integer({ min: 1, max: 3 }), async (times, batches) => {
        const u = `user${user++}`
        const events = times.map((dt) => ({ user: u, ts: NOW - 5000 + dt, country: `c${dt}`, device: dt % 2 === 0 ? 'even' : 'odd' }))
        const per = Math.ceil(events.length / batches)
        for (let i = 0; i < events.length; i += per) await ok(t, ndjson(events.slice(i, i + per)))
        const latest = Math.max(...times)
        expect(await value(t, 'profiles', u)).toEqual({ country: `c${latest}`, device: latest % 2 === 0 ? 'even' : 'odd' })
      }),
      { numRuns: 25 },
    )
  })

  it('a line over --max-body: 413 answered (not a reset) after the body, nothing applied, the connection still serves', async () => {
    const t = await demoNode({ maxBody: 1024 })
    const before = await snapshot(t.url)
    const long = JSON.stringify(pv(0, { country: 'x'.repeat(2000) }))
    const body = ndjson([pv(1), pv(2)]) + long + '\n' + ndjson([pv(3)])
    const a = await ingest(t, body)
    const err = expectErrorBody(a.status, 413, a.text, a.headers, 'long line')
    expect(err.message).toMatch(/^line 3 /)
    // A long last line without a newline, sent in many small chunks.
    const agent = new http.Agent({ keepAlive: true, maxSockets: 1 })
    try {
      const post = (chunks: string[]) =>
        new Promise<{ status: number; text: string }>((resolve, reject) => {
          const req = http.request(`${t.url}/ingest`, { method: 'POST', agent }, (res) => {
            const parts: Buffer[] = []
            res.on('data', (c: Buffer) => parts.push(c))
            res.on('end', () => resolve({ status: res.statusCode ?? 0, text: Buffer.concat(parts).toString() }))
          })
          req.on('error', reject)
          for (const c of chunks) req.write(c)
          req.end()
        })
      const r1 = await post([JSON.stringify(pv(4)), '\n', ...Array.from({ length: 30 }, () => 'y'.repeat(100))])
      expect(r1.status).toBe(413)
      expect(r1.text).toMatch(/line 2 /)
      const r2 = await post([JSON.stringify(pv(5)), '\n'])
      expect(r2.status).toBe(200)
    } finally {
      agent.destroy()
    }
    const after = await snapshot(t.url)
    expect(after.values.profiles).toEqual([...before.values.profiles!, { key: 'u5', value: { country: 'DE', url: '/p0' } }])
  })

  it('/metrics: ingest requests, events, bytes, writes, per-view applied and rejected events, batch latency', async () => {
    const t = await demoNode()
    const metric = (text: string, name: string, labels = '') => {
      const line = text.split('\n').find((l) => l.startsWith(`${name}{`) && l.includes(labels))
      if (line === undefined) throw new Error(`no ${name}{${labels}} in /metrics`)
      return Number(line.slice(line.lastIndexOf(' ') + 1))
    }
    const scrape = async () => (await fetch(`${t.url}/metrics`)).text()
    const good = ndjson([pv(0), pv(1), pv(2), { ...pv(3), kind: 'click' }, pv(4, { ts: 'bad' }), pv(5, { user: 7 })])
    expect(await ok(t, good)).toEqual({ accepted: 6, rejected: { pageviews: 1, visitors: 1, online: 0, profiles: 1 } })
    const bad = `${JSON.stringify(pv(6))}\n[]\n`
    expect((await ingest(t, bad)).status).toBe(400)
    const m = await scrape()
    expect(metric(m, 'speedlayer_ingest_batches_total')).toBe(1)
    expect(metric(m, 'speedlayer_ingest_bad_batches_total')).toBe(1)
    expect(metric(m, 'speedlayer_ingest_events_total')).toBe(6)
    expect(metric(m, 'speedlayer_ingest_bytes_total')).toBe(Buffer.byteLength(good) + Buffer.byteLength(bad))
    // pv(0..2) and pv(5) (user 7 is a fine element and key) hit 4 urls, 4 users, 2 sites.
    expect(metric(m, 'speedlayer_ingest_view_applied_total', 'view="pageviews"')).toBe(4)
    expect(metric(m, 'speedlayer_ingest_view_applied_total', 'view="profiles"')).toBe(5)
    expect(metric(m, 'speedlayer_ingest_view_applied_total', 'view="online"')).toBe(5)
    expect(metric(m, 'speedlayer_ingest_view_rejected_total', 'view="visitors"')).toBe(1)
    expect(metric(m, 'speedlayer_ingest_view_rejected_total', 'view="online"')).toBe(0)
    expect(metric(m, 'speedlayer_ingest_writes_total')).toBeGreaterThan(0)
    expect(metric(m, 'speedlayer_ingest_batch_seconds_count')).toBe(1)
    expect(metric(m, 'speedlayer_ingest_batch_seconds_bucket', 'le="+Inf"')).toBe(1)
    // Folding: 50 events on one url, user and site are one write per view.
    const before = metric(m, 'speedlayer_ingest_writes_total')
    await ok(t, ndjson(Array.from({ length: 50 }, () => pv(0))))
    expect(metric(await scrape(), 'speedlayer_ingest_writes_total') - before).toBe(4)
  })

  it('routes: POST only, the token guards it like any write', async () => {
    const t = await demoNode({ token: 'sekret' })
    const get = await fetch(`${t.url}/ingest`)
    expect(get.status).toBe(405)
    await get.text()
    const no = await ingest(t, ndjson([pv(0)]))
    expectErrorBody(no.status, 401, no.text, no.headers, 'no token')
    const wrong = await ingest(t, ndjson([pv(0)]), { authorization: 'Bearer nope' })
    expect(wrong.status).toBe(401)
    expect(await value(t, 'pageviews', `/p0|${hourOf(NOW)}`)).toBe(0)
    const yes = await ingest(t, ndjson([pv(0)]), { authorization: 'Bearer sekret' })
    expect(yes.status).toBe(200)
    expect(await value(t, 'pageviews', `/p0|${hourOf(NOW - 10_000)}`)).toBe(1)
    const sub = await fetch(`${t.url}/ingest/x`, { method: 'POST', body: '' })
    expect(sub.status).toBe(404)
    await sub.text()
  })

  it('a client that goes away mid-body changes nothing and leaves no temp file', async () => {
    const t = await demoNode()
    const before = await snapshot(t.url)
    const line = JSON.stringify(pv(0)) + '\n'
    const part = line.repeat(Math.ceil((10 * 1024 * 1024) / line.length)) // past the memory bound: spooled
    const { hostname, port } = new URL(t.url)
    await new Promise<void>((resolve, reject) => {
      const s = net.connect(Number(port), hostname, () => {
        s.write(`POST /ingest HTTP/1.1\r\nhost: x\r\ncontent-length: ${part.length * 2}\r\n\r\n`)
        s.write(part, () => {
          s.destroy()
          resolve()
        })
      })
      s.on('error', reject)
    })
    await vi.waitFor(() => expect(ingestStats(t.node).badBatches).toBe(1), { timeout: 20_000, interval: 20 })
    await vi.waitFor(() => expect(ourSpoolFiles()).toEqual([]), { timeout: 5000, interval: 20 })
    expect(await snapshot(t.url)).toEqual(before)
  })

  it('keeps going through overload: waits for room instead of failing', async () => {
    const t = await demoNode({}, { storage: { maxPendingBytes: 1 } })
    // Several chunks of writes: each finds the queue over its bound until the one before is on disk.
    const events = Array.from({ length: 5000 }, (_, i) => pv(i, { url: `/q${i % 100}` }))
    const r = await ok(t, ndjson(events))
    expect(r).toEqual({ accepted: 5000, rejected: ZERO })
    let total = 0
    for (let u = 0; u < 100; u++) total += (await value(t, 'pageviews', `/q${u}|${hourOf(NOW - 10_000)}`)) as number
    expect(total).toBe(5000)
  })

  it('ingestEvents: the embedding form takes parsed events, all or nothing', async () => {
    const t = await demoNode()
    await expect(ingestEvents(t.node, [pv(0), [pv(1)]])).rejects.toThrow(/event 1 is not a JSON object/)
    expect(await value(t, 'online', 's0')).toEqual([])
    expect(await ingestEvents(t.node, [pv(0), pv(1)])).toEqual({ accepted: 2, rejected: ZERO })
    expect(await value(t, 'online', 's0')).toEqual(['u0'])
  })

  it('a large body (~200k events, ~14 MB) streamed in chunks: spooled to a temp file, applied, durable, removed', { timeout: 180_000 }, async () => {
    // One view, so the test measures the streaming, not the CRDTs (the rules are covered above).
    const t = await startTestNode({ views: { pageviews: DEMO_VIEWS.pageviews }, now: () => NOW })
    nodes.push(t)
    const N = 200_000
    const event = (i: number) => `{"kind":"pageview","url":"/big${i % 1000}","ts":${NOW - 10_000 - (i % 1_000_000)},"user":"v${i}"}\n`
    // The client generates the body as it sends it: it never holds it whole either.
    const send = (withBadLastLine: boolean) =>
      new Promise<{ status: number; text: string }>((resolve, reject) => {
        const req = http.request(`${t.url}/ingest`, { method: 'POST', headers: { 'content-type': 'application/x-ndjson' } }, (res) => {
          const parts: Buffer[] = []
          res.on('data', (c: Buffer) => parts.push(c))
          res.on('end', () => resolve({ status: res.statusCode ?? 0, text: Buffer.concat(parts).toString() }))
        })
        req.on('error', reject)
        let i = 0
        const pump = () => {
          while (i < N) {
            let chunk = ''
            for (const end = Math.min(N, i + 1000); i < end; i++) chunk += event(i)
            if (!req.write(chunk)) return void req.once('drain', pump)
          }
          req.end(withBadLastLine ? '{"oops"\n' : undefined)
        }
        pump()
      })
    const bad = await send(true)
    expect(bad.status, bad.text).toBe(400)
    expect(bad.text).toContain(`line ${N + 1} `)
    expect((await snapshot(t.url)).values.pageviews).toEqual([])
    expect(ourSpoolFiles()).toEqual([])

    const good = await send(false)
    expect(good.status, good.text).toBe(200)
    expect(JSON.parse(good.text)).toEqual({ accepted: N, rejected: { pageviews: 0 } })
    expect(ingestStats(t.node).spooled).toBe(1)
    expect(ourSpoolFiles()).toEqual([])
    const items = (await snapshot(t.url)).values.pageviews ?? []
    expect(items.length).toBe(1000)
    expect(items.reduce((s, it) => s + (it.value as number), 0)).toBe(N)
  })
})
