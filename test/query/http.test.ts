/**
 * PUT /batch/:view and GET /query on an in-process node and server: answers, merge rules per
 * type, and the table of refusals (each answered with the contract's JSON error, nothing imported).
 */
import { afterEach, describe, expect, it } from 'vitest'
import { expectError, getJson, startTestNode, write, type TestNode } from '../server/helpers.js'

const HOUR = 3_600_000
const T0 = Date.UTC(2025, 5, 1)
const NOW = T0 + 6 * HOUR
const iso = (t: number) => new Date(t).toISOString()
const k = (p: string, h: number) => `${p}|${iso(T0 + h * HOUR)}`
const bucket = { time: 'ts', size: '1h' }
const VIEWS = {
  hits: { type: 'gcounter', ingest: { key: ['page'], bucket } },
  net: { type: 'pncounter', ingest: { key: ['page'], bucket } },
  who: { type: 'orset', ingest: { key: ['page'], bucket, value: 'user' } },
  uniq: { type: 'hll', ingest: { key: ['page'], bucket, value: 'user' } },
  last: { type: 'lwwmap', ingest: { key: ['page'], bucket, value: ['user', 'country'] } },
  plain: { type: 'gcounter' },
}

let nodes: TestNode[] = []
afterEach(async () => {
  await Promise.all(nodes.map((n) => n.close()))
  nodes = []
})

async function start(serverOpts: Parameters<typeof startTestNode>[1] = {}): Promise<TestNode> {
  const t = await startTestNode({ views: VIEWS, now: () => NOW }, serverOpts)
  nodes.push(t)
  return t
}

const ndjson = (lines: unknown[]) => lines.map((l) => (typeof l === 'string' ? l : JSON.stringify(l))).join('\n') + '\n'

function putBatch(t: TestNode, view: string, horizon: string | number | null, body: string, headers: Record<string, string> = {}): Promise<Response> {
  const q = horizon === null ? '' : `?horizon=${encodeURIComponent(String(horizon))}`
  return fetch(`${t.url}/batch/${encodeURIComponent(view)}${q}`, { method: 'PUT', headers: { 'content-type': 'application/x-ndjson', ...headers }, body })
}

async function okBatch(t: TestNode, view: string, horizon: string | number, lines: unknown[]): Promise<unknown> {
  const res = await putBatch(t, view, horizon, ndjson(lines))
  const text = await res.text()
  if (res.status !== 200) throw new Error(`PUT /batch/${view}: ${res.status} ${text}`)
  return JSON.parse(text) as unknown
}

const q = (t: TestNode, view: string, key: string) => getJson(`${t.url}/query/${encodeURIComponent(view)}/${encodeURIComponent(key)}`)
const range = (t: TestNode, view: string, params: Record<string, string | number>) =>
  getJson(`${t.url}/query/${encodeURIComponent(view)}?${new URLSearchParams(Object.entries(params).map(([a, b]): [string, string] => [a, String(b)]))}`)

describe('PUT /batch and GET /query', () => {
  it('counters: covered buckets from batch (exact), later ones realtime; ranges sum both', async () => {
    const t = await start()
    for (let h = 0; h < 6; h++) await write(t.url, 'hits', k('home', h), { inc: h + 1 })
    await write(t.url, 'hits', k('about', 1), { inc: 50 })
    const answer = await okBatch(t, 'hits', iso(T0 + 4 * HOUR), [
      { key: k('home', 0), value: 10 },
      { key: k('home', 1), value: 20 },
      '',
      { key: k('home', 3), value: 40 },
    ])
    expect(answer).toEqual({ view: 'hits', horizon: T0 + 4 * HOUR, keys: 3, expired: 5 })
    expect(await q(t, 'hits', k('home', 0))).toEqual({ value: 10, exact: true, batch: 10, realtime: null })
    // A covered bucket the batch view does not list is empty: the batch layer saw nothing there.
    expect(await q(t, 'hits', k('home', 2))).toEqual({ value: 0, exact: true, batch: 0, realtime: null })
    expect(await q(t, 'hits', k('about', 1))).toEqual({ value: 0, exact: true, batch: 0, realtime: null })
    expect(await q(t, 'hits', k('home', 4))).toEqual({ value: 5, exact: false, batch: null, realtime: 5 })
    expect(await range(t, 'hits', { prefix: 'home', from: T0, to: iso(T0 + 6 * HOUR) })).toEqual({ value: 10 + 20 + 40 + 5 + 6, exact: false, buckets: 5 })
    expect(await range(t, 'hits', { prefix: 'home', from: iso(T0), to: iso(T0 + 4 * HOUR) })).toEqual({ value: 70, exact: true, buckets: 3 })
    expect(await range(t, 'hits', { prefix: 'home', from: iso(T0 + HOUR), to: iso(T0 + 2 * HOUR) })).toEqual({ value: 20, exact: true, buckets: 1 })
    // Unbounded: everything under the prefix; never exact (more realtime buckets may come).
    expect(await range(t, 'hits', { prefix: 'home' })).toEqual({ value: 81, exact: false, buckets: 5 })
    expect(await range(t, 'hits', { prefix: 'nothing', from: T0, to: T0 + HOUR })).toEqual({ value: 0, exact: true, buckets: 0 })
    // The realtime view no longer holds covered buckets.
    const page = (await getJson(`${t.url}/views/hits`)) as { items: Array<{ key: string }> }
    expect(page.items.map((i) => i.key)).toEqual([k('home', 4), k('home', 5)])
    expect(await getJson(`${t.url}/batch/hits`)).toMatchObject({ view: 'hits', type: 'gcounter', horizon: T0 + 4 * HOUR, keys: 3, applies: true })
    // A write to a covered bucket is acknowledged and joins to nothing.
    expect(await write(t.url, 'hits', k('home', 1), { inc: 1 })).toEqual({ value: 0 })
    expect(await q(t, 'hits', k('home', 1))).toMatchObject({ value: 20, exact: true })
    const metrics = await (await fetch(`${t.url}/metrics`)).text()
    expect(metrics).toMatch(/speedlayer_batch_dropped_covered_total\{replica="n1"\} 1/)
    expect(metrics).toMatch(/speedlayer_batch_expired_keys_total\{replica="n1"\} 5/)
    expect(metrics).toMatch(/speedlayer_batch_imports_total\{replica="n1"\} 1/)
  })

  it('pncounter, orset and lwwmap: the merge rule of each type over a range', async () => {
    const t = await start()
    await write(t.url, 'net', k('p', 3), { dec: 4 })
    await okBatch(t, 'net', T0 + 3 * HOUR, [{ key: k('p', 0), value: -7 }, { key: k('p', 1), value: 2 }])
    expect(await range(t, 'net', { prefix: 'p', from: T0, to: T0 + 6 * HOUR })).toEqual({ value: -9, exact: false, buckets: 3 })

    await write(t.url, 'who', k('p', 3), { add: ['c', 'd'] })
    await okBatch(t, 'who', T0 + 3 * HOUR, [{ key: k('p', 0), value: ['b', 'a'] }, { key: k('p', 2), value: ['c'] }])
    expect(await q(t, 'who', k('p', 0))).toEqual({ value: ['a', 'b'], exact: true, batch: ['a', 'b'], realtime: null })
    expect(await range(t, 'who', { prefix: 'p', from: T0, to: T0 + 6 * HOUR })).toEqual({ value: ['a', 'b', 'c', 'd'], exact: false, buckets: 3 })

    // lwwmap: per field, the latest bucket that has it.
    await write(t.url, 'last', k('p', 4), { set: { user: 'u4' } })
    await okBatch(t, 'last', T0 + 3 * HOUR, [
      { key: k('p', 0), value: { user: 'u0', country: 'fr', __proto__x: 1 } },
      { key: k('p', 1), value: { country: 'de' } },
    ])
    expect(await q(t, 'last', k('p', 0))).toEqual({ value: { __proto__x: 1, country: 'fr', user: 'u0' }, exact: true, batch: { __proto__x: 1, country: 'fr', user: 'u0' }, realtime: null })
    expect(await range(t, 'last', { prefix: 'p', from: T0, to: T0 + 6 * HOUR })).toEqual({ value: { __proto__x: 1, country: 'de', user: 'u4' }, exact: false, buckets: 3 })
  })

  it('hll: a union of sets, exact over batch buckets given as elements; counts answer points only', async () => {
    const t = await start()
    for (const u of ['u1', 'u2', 'u9']) await write(t.url, 'uniq', k('p', 4), { add: u })
    await write(t.url, 'uniq', k('p', 5), { add: ['u1', 'u10'] })
    await okBatch(t, 'uniq', T0 + 4 * HOUR, [{ key: k('p', 0), value: ['u1', 'u2', 'u3'] }, { key: k('p', 1), value: ['u3', 'u4'] }])
    expect(await q(t, 'uniq', k('p', 0))).toEqual({ value: 3, exact: true, batch: 3, realtime: null, error: 0 })
    const rt = (await q(t, 'uniq', k('p', 4))) as { value: number; exact: boolean; error: number }
    expect(rt).toMatchObject({ value: 3, exact: false, batch: null, realtime: 3 })
    expect(rt.error).toBeGreaterThan(0)
    // Batch-only range: the exact size of the union of the element sets.
    expect(await range(t, 'uniq', { prefix: 'p', from: T0, to: T0 + 4 * HOUR })).toEqual({ value: 4, exact: true, buckets: 2, error: 0 })
    // Mixed: one sketch; u1 and u2 appear in batch and realtime buckets and count once.
    const mixed = (await range(t, 'uniq', { prefix: 'p', from: T0, to: T0 + 6 * HOUR })) as { value: number; exact: boolean; buckets: number; error: number }
    expect(mixed).toMatchObject({ value: 6, exact: false, buckets: 4 })
    expect(mixed.error).toBeGreaterThan(0)
    // A batch view of bare counts answers point queries; a range over it is refused.
    await okBatch(t, 'uniq', T0 + 5 * HOUR, [{ key: k('p', 0), value: 3 }, { key: k('p', 1), value: ['u3', 'u4'] }])
    expect(await q(t, 'uniq', k('p', 0))).toEqual({ value: 3, exact: true, batch: 3, realtime: null, error: 0 })
    expect(await range(t, 'uniq', { prefix: 'p', from: T0 + HOUR, to: T0 + 2 * HOUR })).toEqual({ value: 2, exact: true, buckets: 1, error: 0 })
    const res = await fetch(`${t.url}/query/uniq?prefix=p&from=${T0}&to=${T0 + 6 * HOUR}`)
    expect((await expectError(res, 400, 'hll range over a bare count')).message).toMatch(/elements/)
  })

  it('a lower horizon is 409 and changes nothing; the same horizon again replaces the batch view', async () => {
    const t = await start()
    await okBatch(t, 'hits', T0 + 3 * HOUR, [{ key: k('p', 0), value: 1 }])
    const res = await putBatch(t, 'hits', T0 + 2 * HOUR, ndjson([{ key: k('p', 0), value: 2 }]))
    expect((await expectError(res, 409, 'lower horizon')).message).toMatch(/highest horizon wins/)
    expect(await q(t, 'hits', k('p', 0))).toMatchObject({ value: 1 })
    await okBatch(t, 'hits', T0 + 3 * HOUR, [{ key: k('p', 0), value: 5 }])
    expect(await q(t, 'hits', k('p', 0))).toMatchObject({ value: 5 })
  })

  it('refuses bad imports with the line to blame, and imports nothing', async () => {
    const t = await start({ maxBody: 200 })
    const good = { key: k('p', 0), value: 1 }
    const cases: Array<{ what: string; view?: string; horizon?: string | number | null; body: string; status: number; match: RegExp }> = [
      { what: 'no horizon', horizon: null, body: ndjson([good]), status: 400, match: /horizon/ },
      { what: 'bad horizon', horizon: 'yesterday', body: ndjson([good]), status: 400, match: /horizon/ },
      { what: 'horizon in the future', horizon: NOW + 3_600_000, body: ndjson([good]), status: 400, match: /future/ },
      { what: 'unknown view', view: 'nope', body: ndjson([good]), status: 404, match: /nope/ },
      { what: 'view without buckets', view: 'plain', body: ndjson([good]), status: 400, match: /bucket/ },
      { what: 'not JSON', body: ndjson([good, '{"key":']), status: 400, match: /^line 2: not valid JSON/ },
      { what: 'not an object', body: ndjson([good, JSON.stringify(good.key)]), status: 400, match: /^line 2: not a JSON object/ },
      { what: 'unknown field', body: ndjson([{ ...good, ts: 1 }]), status: 400, match: /^line 1: unknown field "ts"/ },
      { what: 'missing value', body: ndjson([{ key: good.key }]), status: 400, match: /^line 1: missing "value"/ },
      { what: 'missing key', body: ndjson([{ value: 1 }]), status: 400, match: /^line 1: missing "key"/ },
      { what: 'key not a string', body: ndjson([{ key: 5, value: 1 }]), status: 400, match: /^line 1: "key" must be a string/ },
      { what: 'bad value', body: ndjson(['', good, { key: k('p', 1), value: -1 }]), status: 400, match: /^line 3: a gcounter value must be/ },
      { what: 'plain key', body: ndjson([{ key: 'p', value: 1 }]), status: 400, match: /^line 1: key "p" is not a bucket key/ },
      { what: 'bucket past the horizon', body: ndjson([{ key: k('p', 3), value: 1 }]), status: 400, match: /^line 1: .*ends after the horizon/ },
      { what: 'duplicate key', body: ndjson([good, good]), status: 400, match: /^line 2: key .* is given twice/ },
      { what: 'line too long', body: ndjson([good, { key: k('p', 1), value: 1, pad: 'x'.repeat(300) }]), status: 413, match: /line 2/ },
    ]
    for (const c of cases) {
      const res = await putBatch(t, c.view ?? 'hits', c.horizon === undefined ? T0 + 2 * HOUR : c.horizon, c.body)
      const err = await expectError(res, c.status, c.what)
      expect(err.message, c.what).toMatch(c.match)
    }
    expect((await fetch(`${t.url}/batch/hits`)).status).toBe(404)
    const wrong = await fetch(`${t.url}/batch/hits`, { method: 'POST', body: '' })
    await expectError(wrong, 405, 'POST /batch')
  })

  it('GET /query refusals', async () => {
    const t = await start()
    await expectError(await fetch(`${t.url}/query/nope/x`), 404, 'unknown view')
    await expectError(await fetch(`${t.url}/query/nope?prefix=x`), 404, 'unknown view, range')
    await expectError(await fetch(`${t.url}/query/plain?prefix=x`), 400, 'range over a view without buckets')
    await expectError(await fetch(`${t.url}/query/hits`), 400, 'range without prefix')
    await expectError(await fetch(`${t.url}/query/hits?prefix=p&from=soon`), 400, 'bad from')
    await expectError(await fetch(`${t.url}/query/hits?prefix=p&from=${T0 + HOUR}&to=${T0}`), 400, 'from after to')
    await expectError(await fetch(`${t.url}/query/hits/x`, { method: 'POST', body: '{}' }), 405, 'POST /query')
    // A view without a batch view: realtime only; a plain view too.
    await write(t.url, 'plain', 'x', { inc: 2 })
    expect(await q(t, 'plain', 'x')).toEqual({ value: 2, exact: false, batch: null, realtime: 2 })
    expect(await q(t, 'uniq', k('p', 0))).toMatchObject({ value: 0, exact: false, batch: null, realtime: 0 })
  })

  it('PUT /batch needs the token; GET /query does not unless --token-reads', async () => {
    const t = await start({ token: 's3cret' })
    const body = ndjson([{ key: k('p', 0), value: 1 }])
    await expectError(await putBatch(t, 'hits', T0 + HOUR, body), 401, 'no token')
    const res = await putBatch(t, 'hits', T0 + HOUR, body, { authorization: 'Bearer s3cret' })
    expect(res.status).toBe(200)
    expect(await q(t, 'hits', k('p', 0))).toMatchObject({ value: 1, exact: true })
    const r = await start({ token: 's3cret', tokenReads: true })
    await expectError(await fetch(`${r.url}/query/hits/x`), 401, 'read without token')
  })
})
