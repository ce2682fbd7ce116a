/**
 * The HTTP API of CONTRACT.md against one in-process node: bad inputs answered with the JSON
 * error and changing nothing, the semantics of every type through HTTP, scans, auth, overload
 * and acknowledgement after durability.
 */
import os from 'node:os'
import path from 'node:path'
import { mkdtemp, rm } from 'node:fs/promises'
import { afterAll, beforeAll, describe, expect, it, onTestFinished } from 'vitest'
import { startServer } from '../../src/server/http.js'
import { openNode } from '../../src/node.js'
import {
  bulkClient,
  chunkedPost,
  define,
  expectError,
  expectErrorBody,
  getJson,
  heldAdapter,
  post,
  rawRequest,
  read,
  snapshot,
  startTestNode,
  write,
  type RawResponse,
  type TestNode,
} from './helpers.js'

const MAX_BODY = 1024 * 1024
/** The node's wall clock, fixed so that drift bounds can be tested to the millisecond. */
const CLOCK = 1_700_000_000_000
const MAX_DRIFT = 60_000

const VIEWS = {
  c: { type: 'gcounter' },
  pn: { type: 'pncounter' },
  s: { type: 'orset' },
  m: { type: 'lwwmap' },
  h: { type: 'hll' },
}

let t: TestNode
let base: string

beforeAll(async () => {
  t = await startTestNode({ views: VIEWS, now: () => CLOCK, maxDriftMs: MAX_DRIFT }, { maxBody: MAX_BODY })
  base = t.url
  // Something in every view, so "nothing changed" compares real values.
  await write(base, 'c', 'k', { inc: 5 })
  await write(base, 'pn', 'k', { dec: 3 })
  await write(base, 's', 'k', { add: ['x', 'y'] })
  await write(base, 'm', 'k', { set: { a: 1 }, ts: 1000 })
  await write(base, 'h', 'k', { add: ['u1', 'u2'] })
})

afterAll(async () => {
  await t?.close()
})

async function viaFetch(method: string, url: string, body?: string | Uint8Array, headers: Record<string, string> = {}): Promise<RawResponse> {
  const res = await fetch(url, { method, body, headers })
  const out: Record<string, string> = {}
  res.headers.forEach((v, k) => (out[k] = v))
  return { status: res.status, headers: out, body: await res.text() }
}

interface Case {
  what: string
  status: number
  send: () => Promise<RawResponse>
  /** For 405: the methods the Allow header must list. */
  allow?: string[]
}

function op(view: string, body: string | Uint8Array, status = 400, key = 'k'): Case {
  const shown = typeof body === 'string' ? body.slice(0, 80) : `<${body.length} bytes>`
  return { what: `POST /views/${view}/${key} ${shown}`, status, send: () => viaFetch('POST', `${base}/views/${view}/${key}`, body) }
}

function req(method: string, target: string, status: number, body?: string, allow?: string[]): Case {
  return { what: `${method} ${target}`, status, allow, send: () => viaFetch(method, `${base}${target}`, body) }
}

/** A request whose target goes out byte for byte (dot segments, raw bytes). */
function raw(method: string, target: string | Buffer, status: number, body?: string): Case {
  const shown = typeof target === 'string' ? target : target.toString('latin1')
  return { what: `raw ${method} ${JSON.stringify(shown)}`, status, send: () => rawRequest(base, method, target, { body }) }
}

describe('bad inputs', () => {
  it('are answered with the JSON error and the right status, and change nothing', async () => {
    const limit = t.node.store.limits.maxOpElements
    const many = Array.from({ length: limit + 1 }, (_, i) => `e${i}`)
    const manyFields = Object.fromEntries(many.map((e) => [e, 1]))
    const long1025 = 'k'.repeat(1025)
    const wide1025 = 'é'.repeat(512) + 'k'
    const badUtf8 = Buffer.concat([Buffer.from('{"add":"'), Buffer.from([0xff, 0xfe]), Buffer.from('"}')])
    const overlong = Buffer.concat([Buffer.from('{"add":"'), Buffer.from([0xc0, 0xaf]), Buffer.from('"}')])
    const truncatedUtf8 = Buffer.concat([Buffer.from('{"add":"'), Buffer.from([0xe2, 0x82]), Buffer.from('"}')])
    const encodedSurrogate = Buffer.concat([Buffer.from('{"add":"'), Buffer.from([0xed, 0xa0, 0x80]), Buffer.from('"}')])
    const hugeOp = `{"add":"${'a'.repeat(MAX_BODY)}"}`
    const line = `{"add":"${'z'.repeat(60_000)}"}\n`

    const cases: Case[] = [
      // invalid JSON
      op('c', '{"inc":'),
      op('c', '{inc: 1}'),
      op('c', '{"inc":1,}'),
      op('c', '{"inc":1} x'),
      op('s', "{'add':'a'}"),
      // a body that is not an object
      op('c', '[]'),
      op('c', '[{"inc":1}]'),
      op('c', '1'),
      op('c', '"inc"'),
      op('c', 'null'),
      op('m', 'true'),
      op('s', '["a"]'),
      // wrong op for the type
      op('c', '{"add":"x"}'),
      op('c', '{"dec":1}'),
      op('s', '{"inc":1}'),
      op('s', '{"set":{"a":1}}'),
      op('h', '{"set":{"a":1}}'),
      op('h', '{"remove":"a"}'),
      op('m', '{"add":"x"}'),
      op('pn', '{"add":"x"}'),
      // wrong value shapes
      op('c', '{"inc":"1"}'),
      op('c', '{"inc":true}'),
      op('c', '{"inc":null}'),
      op('c', '{"inc":1.5}'),
      op('pn', '{"inc":0.5}'),
      op('s', '{"add":1}'),
      op('s', '{"add":["a",1]}'),
      op('s', '{"add":null}'),
      op('s', '{"remove":{"a":1}}'),
      op('h', '{"add":{"a":1}}'),
      op('h', '{"add":[["a"]]}'),
      op('m', '{"set":[]}'),
      op('m', '{"set":"a"}'),
      op('m', '{"set":null}'),
      op('m', '{"delete":"a"}'),
      op('m', '{"delete":[1]}'),
      op('m', '{}'),
      op('s', '{}'),
      op('h', '{}'),
      op('pn', '{}'),
      // two verbs
      op('pn', '{"inc":1,"dec":1}'),
      op('s', '{"add":"a","remove":"a"}'),
      op('m', '{"set":{"a":1},"delete":["b"]}'),
      // unknown fields
      op('c', '{"inc":1,"by":1}'),
      op('c', '{"x":1}'),
      op('c', '{"inc":1,"__proto__":{"x":1}}'),
      op('s', '{"add":"a","ts":1}'),
      op('pn', '{"inc":1,"ts":1}'),
      op('h', '{"add":"a","error":0.1}'),
      op('m', '{"set":{"a":1},"tss":1}'),
      // negative amounts
      op('c', '{"inc":-1}'),
      op('pn', '{"dec":-1}'),
      // unsafe integers, written literally in the JSON text
      op('c', `{"inc":${2 ** 53}}`),
      op('c', '{"inc":9007199254740993}'),
      op('c', '{"inc":1e300}'),
      op('pn', '{"inc":9007199254740992}'),
      op('pn', '{"inc":-9007199254740993}'),
      op('pn', '{"dec":1e300}'),
      op('pn', '{"dec":9007199254740993}'),
      op('m', '{"set":{"a":2},"ts":9007199254740993}'),
      op('m', '{"set":{"a":2},"ts":1e300}'),
      // ts beyond --max-drift, non-integer and negative ts
      op('m', `{"set":{"a":2},"ts":${CLOCK + MAX_DRIFT + 1}}`),
      op('m', `{"delete":["a"],"ts":${CLOCK + 3_600_000}}`),
      op('m', '{"set":{"a":2},"ts":1000.5}'),
      op('m', '{"set":{"a":2},"ts":"2000"}'),
      op('m', '{"set":{"a":2},"ts":-1}'),
      op('m', '{"set":{"a":2},"ts":null}'),
      op('m', '{"delete":["a"],"ts":true}'),
      // unknown view
      op('nope', '{"inc":1}', 404),
      req('GET', '/views/nope/k', 404),
      req('GET', '/views/nope', 404),
      req('GET', '/views/nope?prefix=a&limit=5', 404),
      // unknown route
      req('GET', '/views/c/k/extra', 404),
      req('POST', '/views/c/k/extra', 404, '{"inc":1}'),
      req('GET', '/health/x', 404),
      req('POST', '/nowhere', 404, '{}'),
      req('PUT', '/nowhere/c', 404, '{"type":"gcounter"}'),
      // wrong method
      req('DELETE', '/views/c/k', 405, undefined, ['GET', 'POST']),
      req('PUT', '/views/c/k', 405, '{"inc":1}', ['GET', 'POST']),
      req('PATCH', '/views/c', 405, '{"type":"gcounter"}', ['GET', 'PUT']),
      req('DELETE', '/views/c', 405, undefined, ['GET', 'PUT']),
      req('POST', '/views', 405, '{"type":"gcounter"}', ['GET']),
      req('POST', '/health', 405, '{}', ['GET']),
      req('DELETE', '/metrics', 405, undefined, ['GET']),
      // bodies over --max-body: answered, not reset
      op('s', hugeOp, 413),
      { what: 'chunked POST of ~2.4 MB NDJSON-ish lines', status: 413, send: () => chunkedPost(`${base}/views/s/k`, line, 40) },
      { what: 'chunked PUT definition over the limit', status: 413, send: () => viaFetch('PUT', `${base}/views/big`, `{"type":"gcounter","ingest":{"key":["${'k'.repeat(MAX_BODY)}"]}}`) },
      // invalid UTF-8 in the body
      op('s', badUtf8),
      op('s', overlong),
      op('h', truncatedUtf8),
      op('s', encodedSurrogate),
      { what: 'PUT definition with invalid UTF-8', status: 400, send: () => viaFetch('PUT', `${base}/views/u8`, Buffer.concat([Buffer.from('{"type":"'), Buffer.from([0xff]), Buffer.from('"}')])) },
      // lone surrogates written as JSON escapes have no UTF-8 form either
      op('s', '{"add":"\\ud800"}'),
      op('h', '{"add":["ok","\\udfff"]}'),
      op('m', '{"set":{"\\ud800":1}}'),
      // malformed escapes and invalid UTF-8 in the path
      req('GET', '/views/c/%FF', 400),
      req('POST', '/views/c/%FF', 400, '{"inc":1}'),
      req('POST', '/views/c/%C3%28', 400, '{"inc":1}'),
      req('POST', '/views/c/%', 400, '{"inc":1}'),
      req('POST', '/views/c/a%', 400, '{"inc":1}'),
      req('POST', '/views/c/%zz', 400, '{"inc":1}'),
      req('POST', '/views/c/%E2%82', 400, '{"inc":1}'),
      req('POST', '/views/c/%C0%AF', 400, '{"inc":1}'),
      req('POST', '/views/c/%ED%A0%80', 400, '{"inc":1}'),
      req('GET', '/views/%FF/k', 400),
      req('GET', '/views/%FF', 400),
      req('PUT', '/views/%E0%A4%A', 400, '{"type":"gcounter"}'),
      raw('POST', Buffer.from('/views/c/k\xff', 'latin1'), 400, '{"inc":1}'),
      raw('POST', Buffer.from([...Buffer.from('/views/c/'), 0xc3, 0x28]), 400, '{"inc":1}'),
      raw('PUT', Buffer.from('/views/v\xfe', 'latin1'), 400, '{"type":"gcounter"}'),
      raw('GET', Buffer.from('/views/c/\xc3\xa9', 'latin1'), 400),
      // headers past node's limit: answered as JSON too
      { what: 'a 64 KiB header', status: 431, send: () => rawRequest(base, 'GET', '/health', { headers: { 'x-big': 'x'.repeat(65536) } }) },
      // "." and ".." as keys and view names, written plainly or escaped
      raw('POST', '/views/c/.', 400, '{"inc":1}'),
      raw('POST', '/views/c/..', 400, '{"inc":1}'),
      raw('GET', '/views/c/..', 400),
      raw('POST', '/views/c/%2E', 400, '{"inc":1}'),
      raw('POST', '/views/c/%2e%2E', 400, '{"inc":1}'),
      raw('POST', '/views/./k', 400, '{"inc":1}'),
      raw('PUT', '/views/..', 400, '{"type":"gcounter"}'),
      raw('PUT', '/views/%2E', 400, '{"type":"gcounter"}'),
      // empty and over-long keys and names
      raw('POST', '/views/c/', 400, '{"inc":1}'),
      req('POST', `/views/c/${long1025}`, 400, '{"inc":1}'),
      req('POST', `/views/c/${encodeURIComponent(wide1025)}`, 400, '{"inc":1}'),
      req('GET', `/views/c/${long1025}`, 400),
      req('PUT', `/views/${long1025}`, 400, '{"type":"gcounter"}'),
      // more elements than the limit
      op('s', JSON.stringify({ add: many })),
      op('s', JSON.stringify({ remove: many })),
      op('h', JSON.stringify({ add: many })),
      op('m', JSON.stringify({ set: manyFields })),
      op('m', JSON.stringify({ delete: many })),
      // scan parameters
      req('GET', '/views/c?limit=0', 400),
      req('GET', '/views/c?limit=1001', 400),
      req('GET', '/views/c?limit=abc', 400),
      req('GET', '/views/c?limit=-1', 400),
      req('GET', '/views/c?limit=1.5', 400),
      req('GET', '/views/c?limit=', 400),
      // definitions
      req('PUT', '/views/d1', 400, '{"type":"gcounter","extra":1}'),
      req('PUT', '/views/d1', 400, '{"type":"nope"}'),
      req('PUT', '/views/d1', 400, '{"type":"GCounter"}'),
      req('PUT', '/views/d1', 400, '{}'),
      req('PUT', '/views/d1', 400, '[]'),
      req('PUT', '/views/d1', 400, '"gcounter"'),
      req('PUT', '/views/d1', 400, '{"type":"gcounter"'),
      req('PUT', '/views/d1', 400, '{"type":"hll","ingest":{"key":["url"],"value":"user","bogus":1}}'),
      req('PUT', '/views/d1', 400, '{"type":"hll","ingest":{"key":["url"],"value":"user","bucket":{"time":"ts","size":"1h","x":1}}}'),
      req('PUT', '/views/c', 409, '{"type":"pncounter"}'),
      req('PUT', '/views/c', 409, '{"type":"gcounter","ingest":{"key":["a"]}}'),
    ]

    const before = await snapshot(base)
    const keysBefore = t.node.stats().keys
    const failures: string[] = []
    for (const c of cases) {
      let res: RawResponse
      try {
        res = await c.send()
      } catch (err) {
        failures.push(`${c.what}: no answer (${(err as Error).message})`)
        continue
      }
      try {
        expectErrorBody(res.status, c.status, res.body, res.headers, c.what)
        if (c.status === 503) expect(res.headers['retry-after']).toBeDefined()
        if (c.allow) {
          const allow = (res.headers.allow ?? '').split(',').map((m) => m.trim())
          expect(allow, `${c.what}: Allow header`).toEqual(expect.arrayContaining(c.allow))
          expect(allow, `${c.what}: Allow header`).not.toContain(c.what.split(' ')[0])
        }
      } catch (err) {
        failures.push((err as Error).message.split('\n')[0] as string)
      }
    }
    expect(failures).toEqual([])
    expect(await snapshot(base)).toEqual(before)
    expect(t.node.stats().keys).toBe(keysBefore)
    // Keys the table aimed at still read as what they held, or as never written.
    expect((await read(base, 'c', 'k')).value).toBe(5)
    expect((await read(base, 's', 'k')).value).toEqual(['x', 'y'])
    expect((await read(base, 'm', 'k')).value).toEqual({ a: 1 })
    expect((await read(base, 'c', 'a/b')).value).toBe(0)
    expect(t.node.views().map((v) => v.name)).toEqual(Object.keys(VIEWS).sort())
  })

  it('a key of exactly 1024 UTF-8 bytes is fine, in ASCII or not', async () => {
    const ascii = 'k'.repeat(1024)
    const wide = 'é'.repeat(512)
    expect((await write(base, 'c', ascii, { inc: 2 })).value).toBe(2)
    expect((await write(base, 'c', wide, {})).value).toBe(1)
    expect((await read(base, 'c', ascii)).value).toBe(2)
    expect((await read(base, 'c', wide)).value).toBe(1)
    const name = 'v'.repeat(1024)
    expect(await define(base, name, { type: 'gcounter' })).toBe(201)
    expect((await write(base, name, 'k', {})).value).toBe(1)
  })

  it('an op with exactly the element limit and a body of exactly --max-body are accepted', async () => {
    const limit = t.node.store.limits.maxOpElements
    const r = await write(base, 'h', 'limit', { add: Array.from({ length: limit }, (_, i) => `e${i}`) })
    expect(r.value).toBeGreaterThan(limit * 0.9)
    const prefix = '{"add":"'
    const body = `${prefix}${'a'.repeat(MAX_BODY - prefix.length - 2)}"}`
    expect(Buffer.byteLength(body)).toBe(MAX_BODY)
    const res = await post(`${base}/views/h/maxbody`, body)
    expect(res.status).toBe(200)
    expect(((await res.json()) as { value: number }).value).toBe(1)
  })
})

describe('definitions', () => {
  it('new is 201, identical is 200, conflicting is 409 and changes nothing; GET /views lists them', async () => {
    const def = { type: 'hll', ingest: { key: ['url'], value: 'user', bucket: { time: 'ts', size: '1h' } } }
    const r1 = await fetch(`${base}/views/pages`, { method: 'PUT', body: JSON.stringify(def) })
    expect(r1.status).toBe(201)
    expect(await r1.json()).toMatchObject({ name: 'pages', type: 'hll' })
    // The same definition with its keys in another order is identical.
    const same = { ingest: { bucket: { size: '1h', time: 'ts' }, value: 'user', key: ['url'] }, type: 'hll' }
    const r2 = await fetch(`${base}/views/pages`, { method: 'PUT', body: JSON.stringify(same) })
    expect(r2.status).toBe(200)
    await r2.text()
    await expectError(await fetch(`${base}/views/pages`, { method: 'PUT', body: JSON.stringify({ type: 'hll', ingest: { ...def.ingest, value: 'session' } }) }), 409, 'conflict')
    await expectError(await fetch(`${base}/views/pages`, { method: 'PUT', body: '{"type":"orset"}' }), 409, 'conflict')

    const views = (await getJson(`${base}/views`)) as Array<Record<string, unknown>>
    expect(views.find((v) => v.name === 'pages')).toEqual({ name: 'pages', ...def })
    expect(views.find((v) => v.name === 'c')).toEqual({ name: 'c', type: 'gcounter' })
    for (const name of Object.keys(VIEWS)) expect(views.some((v) => v.name === name)).toBe(true)

    // A percent-escaped view name is the decoded name.
    expect(await define(base, 'my view/1', { type: 'orset' })).toBe(201)
    expect(await define(base, 'my view/1', { type: 'orset' })).toBe(200)
    const res = await fetch(`${base}/views/my%20view%2F1/x`, { method: 'POST', body: '{"add":"e"}' })
    expect(res.status).toBe(200)
    expect(((await getJson(`${base}/views`)) as Array<{ name: string }>).some((v) => v.name === 'my view/1')).toBe(true)
  })
})

describe('semantics through HTTP', () => {
  it('gcounter: {} is inc 1, inc n adds n', async () => {
    await define(base, 'g', { type: 'gcounter' })
    expect((await read(base, 'g', 'x')).value).toBe(0)
    expect((await write(base, 'g', 'x', {})).value).toBe(1)
    expect((await write(base, 'g', 'x', { inc: 41 })).value).toBe(42)
    expect((await write(base, 'g', 'x', { inc: 0 })).value).toBe(42)
    expect(await read(base, 'g', 'x')).toEqual({ value: 42 })
    expect((await write(base, 'g', 'big', { inc: Number.MAX_SAFE_INTEGER })).value).toBe(Number.MAX_SAFE_INTEGER)
  })

  it('pncounter: inc (any safe integer) and dec', async () => {
    await define(base, 'p', { type: 'pncounter' })
    expect((await read(base, 'p', 'x')).value).toBe(0)
    expect((await write(base, 'p', 'x', { inc: 10 })).value).toBe(10)
    expect((await write(base, 'p', 'x', { dec: 15 })).value).toBe(-5)
    expect((await write(base, 'p', 'x', { inc: -2 })).value).toBe(-7)
    expect((await write(base, 'p', 'x', { dec: 0 })).value).toBe(-7)
    expect(await read(base, 'p', 'x')).toEqual({ value: -7 })
  })

  it('orset: add/remove with strings and arrays; value sorted by UTF-16 code units', async () => {
    await define(base, 'o', { type: 'orset' })
    expect((await read(base, 'o', 'x')).value).toEqual([])
    // Code point order would put U+FFFD before the emoji (U+1F600); UTF-16 puts it after (0xD83D < 0xFFFD).
    expect((await write(base, 'o', 'x', { add: ['\uFFFD', '😀', 'b', 'a', 'é', 'B'] })).value).toEqual(['B', 'a', 'b', 'é', '😀', '\uFFFD'])
    expect((await write(base, 'o', 'x', { add: 'a' })).value).toEqual(['B', 'a', 'b', 'é', '😀', '\uFFFD'])
    expect((await write(base, 'o', 'x', { remove: 'b' })).value).toEqual(['B', 'a', 'é', '😀', '\uFFFD'])
    expect((await write(base, 'o', 'x', { remove: ['a', '😀', 'never'] })).value).toEqual(['B', 'é', '\uFFFD'])
    expect((await write(base, 'o', 'x', { add: [] })).value).toEqual(['B', 'é', '\uFFFD'])
    expect((await write(base, 'o', 'x', { remove: [] })).value).toEqual(['B', 'é', '\uFFFD'])
    expect((await write(base, 'o', 'x', { add: 'b' })).value).toEqual(['B', 'b', 'é', '\uFFFD'])
    expect((await write(base, 'o', 'x', { add: '' })).value).toEqual(['', 'B', 'b', 'é', '\uFFFD'])
    expect(await read(base, 'o', 'x')).toEqual({ value: ['', 'B', 'b', 'é', '\uFFFD'] })
  })

  it('lwwmap: set/delete, null is a value, the highest ts wins whatever the order', async () => {
    await define(base, 'l', { type: 'lwwmap' })
    expect((await read(base, 'l', 'x')).value).toEqual({})
    expect((await write(base, 'l', 'x', { set: { a: 1, b: null, c: { d: [1, 'two', false] } } })).value).toEqual({ a: 1, b: null, c: { d: [1, 'two', false] } })
    expect((await write(base, 'l', 'x', { delete: ['a'] })).value).toEqual({ b: null, c: { d: [1, 'two', false] } })
    expect((await write(base, 'l', 'x', { set: {} })).value).toEqual({ b: null, c: { d: [1, 'two', false] } })
    expect((await write(base, 'l', 'x', { delete: [] })).value).toEqual({ b: null, c: { d: [1, 'two', false] } })
    expect((await write(base, 'l', 'x', { delete: ['nothing'] })).value).toEqual({ b: null, c: { d: [1, 'two', false] } })
    // Field names that are special to JS objects are plain fields.
    // (Written as JSON text: in a JS object literal `__proto__: 1` would not be a field.)
    const special = '{"__proto__":1,"constructor":2,"toString":3}'
    const ry = await post(`${base}/views/l/y`, `{"set":${special}}`)
    expect(ry.status).toBe(200)
    expect(JSON.stringify(((await ry.json()) as { value: unknown }).value)).toBe(special)
    const y = (await read(base, 'l', 'y')).value as Record<string, unknown>
    expect(JSON.stringify(y)).toBe(special)
    expect(Object.keys(y)).toEqual(['__proto__', 'constructor', 'toString'])

    // Event time: the higher ts wins, whichever arrives first; ts up to --max-drift ahead is fine.
    await write(base, 'l', 'z', { set: { f: 'new' }, ts: 2000 })
    expect((await write(base, 'l', 'z', { set: { f: 'old' }, ts: 1000 })).value).toEqual({ f: 'new' })
    expect((await write(base, 'l', 'z', { delete: ['f'], ts: 1500 })).value).toEqual({ f: 'new' })
    expect((await write(base, 'l', 'z', { delete: ['f'], ts: 2500 })).value).toEqual({})
    expect((await write(base, 'l', 'z', { set: { f: 'older' }, ts: 2400 })).value).toEqual({})
    expect((await write(base, 'l', 'z', { set: { f: 'edge', g: 0 }, ts: CLOCK + MAX_DRIFT })).value).toEqual({ f: 'edge', g: 0 })
    expect((await write(base, 'l', 'w', { set: { f: 'zero' }, ts: 0 })).value).toEqual({ f: 'zero' })
    expect(await read(base, 'l', 'z')).toEqual({ value: { f: 'edge', g: 0 } })
  })

  it('hll: value is the estimate and the answer carries "error"', async () => {
    await define(base, 'u', { type: 'hll' })
    const empty = await read(base, 'u', 'x')
    expect(empty.value).toBe(0)
    expect(typeof empty.error).toBe('number')
    const r = await write(base, 'u', 'x', { add: ['a', 'b', 'c'] })
    expect(r.value).toBe(3)
    expect(r.error).toBeGreaterThan(0)
    expect(r.error).toBeLessThan(0.05)
    expect((await write(base, 'u', 'x', { add: 'a' })).value).toBe(3)
    expect((await write(base, 'u', 'x', { add: [] })).value).toBe(3)
    const users = Array.from({ length: 5000 }, (_, i) => `user-${i}`)
    const big = await write(base, 'u', 'y', { add: users })
    expect(Math.abs((big.value as number) - 5000) / 5000).toBeLessThan(5 * (big.error as number))
    const back = await read(base, 'u', 'y')
    expect(back.value).toBe(big.value)
    expect(back.error).toBe(big.error)
  })

  it('keys are percent-decoded after the path is split', async () => {
    await define(base, 'pd', { type: 'gcounter' })
    expect((await fetch(`${base}/views/pd/a%2Fb`, { method: 'POST', body: '{"inc":3}' })).status).toBe(200)
    expect((await read(base, 'pd', 'a/b')).value).toBe(3)
    expect((await getJson(`${base}/views/pd/a%2fb`)) as unknown).toEqual({ value: 3 })
    expect((await fetch(`${base}/views/pd/a+b%20c%3F%23%25`, { method: 'POST', body: '{}' })).status).toBe(200)
    expect((await fetch(`${base}/views/pd/%E2%82%AC%F0%9F%98%80`, { method: 'POST', body: '{}' })).status).toBe(200)
    expect((await fetch(`${base}/views/pd/%2E%2E%2E`, { method: 'POST', body: '{}' })).status).toBe(200)
    const page = (await getJson(`${base}/views/pd`)) as { items: Array<{ key: string; value: number }> }
    expect(page.items).toEqual([
      { key: '...', value: 1 },
      { key: 'a+b c?#%', value: 1 },
      { key: 'a/b', value: 3 },
      { key: '€😀', value: 1 },
    ])
    // "a/b" is one key, not the route /views/pd/a/b.
    await expectError(await fetch(`${base}/views/pd/a/b`), 404, 'a/b unescaped')
  })

  it('scans walk every key once, in order, page by page', async () => {
    await define(base, 'sc', { type: 'gcounter' })
    const keys: string[] = []
    for (let i = 0; i < 300; i++) keys.push(`p/${String(i).padStart(3, '0')}`)
    for (let i = 0; i < 40; i++) keys.push(`q/${i}`)
    keys.push('p', 'o/z', 'pa')
    const bulk = bulkClient(base)
    onTestFinished(() => bulk.close())
    const answers = await Promise.all(keys.map((k, i) => bulk.request('POST', `/views/sc/${encodeURIComponent(k)}`, JSON.stringify({ inc: (i % 7) + 1 }))))
    for (const a of answers) expect(a.status).toBe(200)
    const expected = new Map(keys.map((k, i) => [k, (i % 7) + 1]))
    const sorted = [...keys].sort()

    const walk = async (params: Record<string, string>) => {
      const seen: Array<{ key: string; value: unknown }> = []
      let after: string | null = null
      let pages = 0
      for (;;) {
        const q = new URLSearchParams(params)
        if (after !== null) q.set('after', after)
        const res = await bulk.request('GET', `/views/sc?${q}`)
        expect(res.status).toBe(200)
        const page = res.json as { items: Array<{ key: string; value: unknown }>; next: string | null }
        pages++
        if (params.limit) expect(page.items.length).toBeLessThanOrEqual(Number(params.limit))
        seen.push(...page.items)
        if (page.next === null) break
        expect(page.items.length).toBeGreaterThan(0)
        expect(page.next).toBe(page.items[page.items.length - 1]?.key)
        after = page.next
        if (pages > 1000) throw new Error('scan does not end')
      }
      return { seen, pages }
    }

    const pOnly = sorted.filter((k) => k.startsWith('p/'))
    const r7 = await walk({ prefix: 'p/', limit: '7' })
    expect(r7.seen.map((i) => i.key)).toEqual(pOnly)
    expect(r7.pages).toBe(Math.ceil(300 / 7))
    for (const i of r7.seen) expect(i.value).toBe(expected.get(i.key))

    // Pages that divide the keys exactly: the last full page already says next = null.
    const r100 = await walk({ prefix: 'p/', limit: '100' })
    expect(r100.seen.map((i) => i.key)).toEqual(pOnly)
    expect(r100.pages).toBe(3)

    const all = await walk({ limit: '1000' })
    expect(all.seen.map((i) => i.key)).toEqual(sorted)
    expect(all.pages).toBe(1)
    const q1 = await walk({ prefix: 'q/', limit: '1' })
    expect(q1.seen.map((i) => i.key)).toEqual(sorted.filter((k) => k.startsWith('q/')))
    expect(q1.pages).toBe(40)
    const all3 = await walk({ limit: '3' })
    expect(all3.seen.map((i) => i.key)).toEqual(sorted)

    // Default limit 100.
    const first = (await getJson(`${base}/views/sc`)) as { items: Array<{ key: string }>; next: string | null }
    expect(first.items.map((i) => i.key)).toEqual(sorted.slice(0, 100))
    expect(first.next).toBe(sorted[99])
    const prefixed = (await getJson(`${base}/views/sc?prefix=q%2F`)) as { items: Array<{ key: string }>; next: string | null }
    expect(prefixed.items.map((i) => i.key)).toEqual(sorted.filter((k) => k.startsWith('q/')))
    expect(prefixed.next).toBeNull()

    // after combined with prefix: before the prefix starts at the prefix, past it is empty.
    const early = (await getJson(`${base}/views/sc?prefix=p%2F&after=a&limit=2`)) as { items: Array<{ key: string }> }
    expect(early.items.map((i) => i.key)).toEqual(['p/000', 'p/001'])
    const mid = (await getJson(`${base}/views/sc?prefix=p%2F&after=p%2F0995&limit=2`)) as { items: Array<{ key: string }> }
    expect(mid.items.map((i) => i.key)).toEqual(['p/100', 'p/101'])
    const late = (await getJson(`${base}/views/sc?prefix=p%2F&after=z`)) as { items: unknown[]; next: unknown }
    expect(late).toEqual({ items: [], next: null })
    const none = (await getJson(`${base}/views/sc?prefix=nothing`)) as { items: unknown[]; next: unknown }
    expect(none).toEqual({ items: [], next: null })
    // An empty view scans to nothing.
    await define(base, 'empty', { type: 'orset' })
    expect(await getJson(`${base}/views/empty`)).toEqual({ items: [], next: null })
  })

  it('GET /health, /metrics and a non-API path', async () => {
    expect(await getJson(`${base}/health`)).toEqual({ ok: true, replica: 'n1' })
    const m = await fetch(`${base}/metrics`)
    expect(m.status).toBe(200)
    expect(m.headers.get('content-type')).toMatch(/^text\/plain/)
    const text = await m.text()
    expect(text).toMatch(/^# HELP speedlayer_/m)
    expect(text).toMatch(/^# TYPE speedlayer_\w+ (counter|gauge|histogram)/m)
    expect(text).toMatch(/^speedlayer_\w+(\{[^}]*\})? [0-9.e+-]+$/m)
    for (const p of ['/', '/dashboard', '/some/page.html']) {
      const res = await fetch(`${base}${p}`)
      expect(res.status, p).toBe(200)
      expect(res.headers.get('content-type'), p).toMatch(/^text\/html/)
      expect(await res.text(), p).toMatch(/<html/i)
    }
  })
})

describe('--token', () => {
  it('writes need the bearer token; reads stay open unless tokenReads', async () => {
    const token = 's3cret'
    for (const tokenReads of [false, true]) {
      const server = await startServer(t.node, { host: '127.0.0.1', port: 0, maxBody: MAX_BODY, token, tokenReads, log: () => {} })
      const u = server.url
      try {
        await define(base, 'auth', { type: 'gcounter' })
        const start = (await read(base, 'auth', 'k')).value as number
        await expectError(await fetch(`${u}/views/auth/k`, { method: 'POST', body: '{"inc":1}' }), 401, 'no token')
        await expectError(await fetch(`${u}/views/auth/k`, { method: 'POST', body: '{"inc":1}', headers: { authorization: 'Bearer wrong' } }), 401, 'wrong token')
        await expectError(await fetch(`${u}/views/auth/k`, { method: 'POST', body: '{"inc":1}', headers: { authorization: `Basic ${token}` } }), 401, 'not bearer')
        await expectError(await fetch(`${u}/views/auth/k`, { method: 'POST', body: '{"inc":1}', headers: { authorization: `Bearer ${token}x` } }), 401, 'token prefix')
        await expectError(await fetch(`${u}/views/auth2`, { method: 'PUT', body: '{"type":"gcounter"}' }), 401, 'define without token')
        expect((await read(base, 'auth', 'k')).value).toBe(start)
        expect(t.node.views().some((v) => v.name === 'auth2')).toBe(false)

        const auth = { authorization: `Bearer ${token}` }
        const ok = await fetch(`${u}/views/auth/k`, { method: 'POST', body: '{"inc":1}', headers: auth })
        expect(ok.status).toBe(200)
        expect(await ok.json()).toEqual({ value: start + 1 })

        const readPaths = ['/views/auth/k', '/views/auth', '/views', '/metrics']
        for (const p of readPaths) {
          const open = await fetch(`${u}${p}`)
          if (tokenReads) await expectError(open, 401, `read ${p} without token`)
          else expect(open.status, p).toBe(200)
          await open.arrayBuffer().catch(() => {})
          const withToken = await fetch(`${u}${p}`, { headers: auth })
          expect(withToken.status, p).toBe(200)
          await withToken.arrayBuffer()
        }
      } finally {
        await server.close()
      }
    }
  })
})

describe('overload and acknowledgement', () => {
  it('a write is answered only once its batch is durable', async () => {
    const held = heldAdapter()
    const n = await startTestNode({ adapter: held.adapter, views: { c: { type: 'gcounter' } } })
    try {
      held.hold()
      let answered = false
      let released = false
      let answeredAfterRelease = false
      const pending = fetch(`${n.url}/views/c/k`, { method: 'POST', body: '{"inc":7}' }).then(async (res) => {
        answered = true
        answeredAfterRelease = released
        return { status: res.status, body: await res.json() }
      })
      await held.writeWaiting()
      // The server has applied the write and its batch is at the disk: a full round trip later
      // the write is still unanswered.
      expect(await getJson(`${n.url}/health`)).toMatchObject({ ok: true })
      expect((await read(n.url, 'c', 'other')).value).toBe(0)
      expect(answered).toBe(false)
      released = true
      held.release()
      const r = await pending
      expect(r).toEqual({ status: 200, body: { value: 7 } })
      expect(answeredAfterRelease).toBe(true)
      expect(held.written).toBeGreaterThan(0)
    } finally {
      held.release()
      await n.close()
    }
  })

  it('past its storage bound a node answers 503 with Retry-After and changes nothing', async () => {
    const held = heldAdapter()
    const n = await startTestNode({ adapter: held.adapter, views: { c: { type: 'gcounter' }, s: { type: 'orset' } }, storage: { maxPendingBytes: 200 } })
    try {
      await write(n.url, 'c', 'k', { inc: 1000 })
      const before = await snapshot(n.url)
      held.hold()
      const applied: string[] = []
      const stop = n.node.subscribe((ev) => {
        if (ev.kind === 'value') applied.push(ev.key)
      })
      const inFlight: Array<Promise<Response>> = []
      let refused: Response | null = null
      for (let i = 0; i < 200 && refused === null; i++) {
        const seen = applied.length
        const res = fetch(`${n.url}/views/c/k`, { method: 'POST', body: '{"inc":1}' })
        // Either the node takes the write (it is applied and queued) or it answers.
        const first = await Promise.race([
          res.then((r) => ({ kind: 'answer' as const, r })),
          new Promise<{ kind: 'queued' }>((resolve) => {
            const poll = n.node.subscribe(() => {
              if (applied.length > seen) {
                poll()
                resolve({ kind: 'queued' })
              }
            })
          }),
        ])
        if (first.kind === 'answer') refused = first.r
        else inFlight.push(res)
      }
      stop()
      expect(refused, 'no write was refused').not.toBeNull()
      await expectErrorAnd503(refused as Response)
      const accepted = inFlight.length
      expect(accepted).toBeGreaterThan(0)
      // While overloaded, other writes are refused too; reads still work.
      const orset = await fetch(`${n.url}/views/s/k`, { method: 'POST', body: '{"add":"refused"}' })
      await expectErrorAnd503(orset)
      expect((await read(n.url, 'c', 'k')).value).toBe(1000 + accepted)

      held.release()
      const answers = await Promise.all(inFlight)
      for (const a of answers) {
        expect(a.status).toBe(200)
        await a.json()
      }
      const after = await snapshot(n.url)
      expect(after.values.s).toEqual(before.values.s)
      expect((await read(n.url, 'c', 'k')).value).toBe(1000 + accepted)
      expect((await read(n.url, 's', 'k')).value).toEqual([])
      // Once the queue drains, writes are taken again.
      expect((await write(n.url, 'c', 'k', {})).value).toBe(1000 + accepted + 1)
    } finally {
      held.release()
      await n.close()
    }
  })
})

async function expectErrorAnd503(res: Response): Promise<void> {
  const retry = res.headers.get('retry-after')
  await expectError(res, 503, 'overload')
  expect(retry).toMatch(/^[0-9]+$/)
}

describe('concurrency', () => {
  let dir: string
  beforeAll(async () => {
    dir = await mkdtemp(path.join(os.tmpdir(), 'speedlayer-http-conc-'))
  })
  afterAll(async () => {
    await rm(dir, { recursive: true, force: true })
  })

  it('16 clients x 200 increments give the exact count, and it survives a restart', async () => {
    const n = await startTestNode({ dataDir: dir, views: { c: { type: 'gcounter' } } })
    const CLIENTS = 16
    const EACH = 200
    const bulk = bulkClient(n.url, CLIENTS)
    try {
      const clients = Array.from({ length: CLIENTS }, async (_, c) => {
        let last = 0
        for (let i = 0; i < EACH; i++) {
          const res = await bulk.request('POST', '/views/c/hits', c % 2 === 0 ? '{}' : '{"inc":1}')
          expect(res.status).toBe(200)
          const { value } = res.json as { value: number }
          // The answer includes this client's own writes so far.
          expect(value).toBeGreaterThan(last)
          expect(value).toBeGreaterThanOrEqual(i + 1)
          expect(value).toBeLessThanOrEqual(CLIENTS * EACH)
          last = value
        }
      })
      await Promise.all(clients)
      expect((await read(n.url, 'c', 'hits')).value).toBe(CLIENTS * EACH)
    } finally {
      bulk.close()
      await n.close()
    }
    const again = await openNode({ id: 'n1', dataDir: dir, log: () => {} })
    try {
      expect(again.read('c', 'hits').value).toBe(CLIENTS * EACH)
    } finally {
      await again.close()
    }
  })
})
