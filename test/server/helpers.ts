/**
 * Helpers for the HTTP API tests: an in-process node + server, raw requests for what `fetch`
 * cannot express (dot segments, raw bytes in the path), an adapter whose writes the test holds,
 * and a snapshot of every value a node serves.
 */
import http from 'node:http'
import net from 'node:net'
import os from 'node:os'
import path from 'node:path'
import { mkdtemp, rm } from 'node:fs/promises'
import { expect } from 'vitest'
import { openNode, type NodeOptions, type SpeedNode } from '../../src/node.js'
import { startServer, type ServerOptions, type SpeedServer } from '../../src/server/http.js'
import type { StorageAdapter } from '../../src/storage/adapter.js'
import { memoryAdapter } from '../../src/storage/memoryAdapter.js'

export interface TestNode {
  node: SpeedNode
  server: SpeedServer
  url: string
  /** The LevelDB directory, when the node has one. */
  dir: string | undefined
  close(): Promise<void>
}

/**
 * Opens a node (LevelDB in a fresh temp dir unless `adapter` or `dataDir` is given) and serves it
 * on 127.0.0.1, port 0. `close` stops the server, closes the node and removes the temp dir.
 */
export async function startTestNode(
  nodeOpts: Partial<NodeOptions> = {},
  serverOpts: Partial<ServerOptions> = {},
): Promise<TestNode> {
  let dir: string | undefined
  let ownDir = false
  if (nodeOpts.adapter === undefined) {
    dir = nodeOpts.dataDir
    if (dir === undefined) {
      dir = await mkdtemp(path.join(os.tmpdir(), 'speedlayer-http-'))
      ownDir = true
    }
  }
  const node = await openNode({ id: 'n1', log: () => {}, ...nodeOpts, ...(dir !== undefined ? { dataDir: dir } : {}) })
  const server = await startServer(node, { host: '127.0.0.1', port: 0, maxBody: 1024 * 1024, log: () => {}, ...serverOpts })
  let closed: Promise<void> | null = null
  return {
    node,
    server,
    url: server.url,
    dir,
    close() {
      closed ??= (async () => {
        await server.close()
        await node.close()
        if (ownDir && dir !== undefined) await rm(dir, { recursive: true, force: true })
      })()
      return closed
    },
  }
}

export interface RawResponse {
  status: number
  headers: Record<string, string>
  body: string
}

function dechunk(buf: Buffer): Buffer {
  const parts: Buffer[] = []
  let i = 0
  for (;;) {
    const eol = buf.indexOf('\r\n', i)
    if (eol < 0) break
    const size = parseInt(buf.subarray(i, eol).toString('latin1'), 16)
    if (!(size > 0)) break
    parts.push(buf.subarray(eol + 2, eol + 2 + size))
    i = eol + 2 + size + 2
  }
  return Buffer.concat(parts)
}

/**
 * Sends `target` byte for byte as the request target (no normalisation of `.`/`..`, raw bytes
 * allowed) over a fresh connection, and reads the answer until the server closes it.
 */
export function rawRequest(
  baseUrl: string,
  method: string,
  target: string | Buffer,
  opts: { headers?: Record<string, string>; body?: string | Buffer } = {},
): Promise<RawResponse> {
  const { hostname, port } = new URL(baseUrl)
  const body = opts.body === undefined ? undefined : Buffer.isBuffer(opts.body) ? opts.body : Buffer.from(opts.body)
  const lines = [`host: ${hostname}:${port}`, 'connection: close']
  for (const [k, v] of Object.entries(opts.headers ?? {})) lines.push(`${k}: ${v}`)
  if (body !== undefined) lines.push(`content-length: ${body.length}`)
  const head = Buffer.concat([
    Buffer.from(`${method} `, 'latin1'),
    Buffer.isBuffer(target) ? target : Buffer.from(target, 'utf8'),
    Buffer.from(` HTTP/1.1\r\n${lines.join('\r\n')}\r\n\r\n`, 'latin1'),
  ])
  return new Promise((resolve, reject) => {
    const socket = net.connect(Number(port), hostname)
    const chunks: Buffer[] = []
    socket.on('connect', () => socket.end(body ? Buffer.concat([head, body]) : head))
    socket.on('data', (c: Buffer) => chunks.push(c))
    socket.on('error', reject)
    socket.on('close', () => {
      const all = Buffer.concat(chunks)
      const end = all.indexOf('\r\n\r\n')
      if (end < 0) return reject(new Error(`no HTTP answer (got ${JSON.stringify(all.toString('latin1'))})`))
      const [statusLine = '', ...headerLines] = all.subarray(0, end).toString('latin1').split('\r\n')
      const headers: Record<string, string> = {}
      for (const l of headerLines) {
        const c = l.indexOf(':')
        headers[l.slice(0, c).trim().toLowerCase()] = l.slice(c + 1).trim()
      }
      let rest: Buffer = all.subarray(end + 4)
      if (headers['transfer-encoding'] === 'chunked') rest = dechunk(rest)
      resolve({ status: Number(statusLine.split(' ')[1]), headers, body: rest.toString('utf8') })
    })
  })
}

/**
 * POSTs a body sent with chunked transfer encoding (no Content-Length), `chunks` pieces of
 * `chunk`, and resolves with the answer. Fails on a reset instead of an answer.
 */
export function chunkedPost(url: string, chunk: string, chunks: number): Promise<RawResponse> {
  return new Promise((resolve, reject) => {
    const req = http.request(url, { method: 'POST', headers: { 'content-type': 'application/x-ndjson' } }, (res) => {
      const parts: Buffer[] = []
      res.on('data', (c: Buffer) => parts.push(c))
      res.on('end', () => {
        const headers: Record<string, string> = {}
        for (const [k, v] of Object.entries(res.headers)) if (typeof v === 'string') headers[k] = v
        resolve({ status: res.statusCode ?? 0, headers, body: Buffer.concat(parts).toString('utf8') })
      })
      res.on('error', reject)
    })
    req.on('error', reject)
    let sent = 0
    const pump = () => {
      while (sent < chunks) {
        sent++
        if (!req.write(chunk)) return void req.once('drain', pump)
      }
      req.end()
    }
    pump()
  })
}

/** Asserts the contract's error answer: the status and `{"error": {"code", "message"}}`. */
export function expectErrorBody(status: number, expected: number, body: string, headers: Record<string, string | null | undefined>, what: string): { code: string; message: string } {
  expect(status, `${what}: status (body ${body})`).toBe(expected)
  expect(headers['content-type'] ?? '', `${what}: content-type`).toMatch(/^application\/json/)
  let parsed: unknown
  try {
    parsed = JSON.parse(body)
  } catch {
    throw new Error(`${what}: the error body is not JSON: ${JSON.stringify(body.slice(0, 200))}`)
  }
  const err = (parsed as { error?: { code?: unknown; message?: unknown } }).error
  expect(typeof err?.code, `${what}: error.code in ${body}`).toBe('string')
  expect(typeof err?.message, `${what}: error.message in ${body}`).toBe('string')
  expect((err?.code as string).length, `${what}: error.code non-empty`).toBeGreaterThan(0)
  expect((err?.message as string).length, `${what}: error.message non-empty`).toBeGreaterThan(0)
  return { code: err?.code as string, message: err?.message as string }
}

export async function expectError(res: Response, expected: number, what: string): Promise<{ code: string; message: string }> {
  const body = await res.text()
  return expectErrorBody(res.status, expected, body, { 'content-type': res.headers.get('content-type') }, what)
}

export async function getJson(url: string, init?: RequestInit): Promise<unknown> {
  const res = await fetch(url, init)
  const text = await res.text()
  if (res.status !== 200) throw new Error(`GET ${url}: ${res.status} ${text}`)
  return JSON.parse(text) as unknown
}

export async function post(url: string, body: unknown, headers: Record<string, string> = {}): Promise<Response> {
  return fetch(url, { method: 'POST', headers: { 'content-type': 'application/json', ...headers }, body: typeof body === 'string' ? body : JSON.stringify(body) })
}

/** POSTs an op and returns the 200 answer's JSON (fails on anything else). */
export async function write(base: string, view: string, key: string, op: unknown): Promise<{ value: unknown; error?: number }> {
  const res = await post(`${base}/views/${encodeURIComponent(view)}/${encodeURIComponent(key)}`, op)
  const text = await res.text()
  if (res.status !== 200) throw new Error(`POST ${view}/${key} ${JSON.stringify(op)}: ${res.status} ${text}`)
  return JSON.parse(text) as { value: unknown; error?: number }
}

export async function read(base: string, view: string, key: string): Promise<{ value: unknown; error?: number }> {
  return (await getJson(`${base}/views/${encodeURIComponent(view)}/${encodeURIComponent(key)}`)) as { value: unknown; error?: number }
}

export async function define(base: string, view: string, def: unknown): Promise<number> {
  const res = await fetch(`${base}/views/${encodeURIComponent(view)}`, { method: 'PUT', body: JSON.stringify(def) })
  const text = await res.text()
  if (res.status !== 200 && res.status !== 201) throw new Error(`PUT /views/${view}: ${res.status} ${text}`)
  return res.status
}

interface ScanPage {
  items: Array<{ key: string; value: unknown }>
  next: string | null
}

/** Every definition and every (view, key, value) the node serves, read through GET only. */
export async function snapshot(base: string): Promise<{ views: unknown; values: Record<string, Array<{ key: string; value: unknown }>> }> {
  const views = (await getJson(`${base}/views`)) as Array<{ name: string }>
  const values: Record<string, Array<{ key: string; value: unknown }>> = {}
  for (const v of views) {
    const items: Array<{ key: string; value: unknown }> = []
    let after: string | null = null
    for (;;) {
      const q = new URLSearchParams({ limit: '1000' })
      if (after !== null) q.set('after', after)
      const page = (await getJson(`${base}/views/${encodeURIComponent(v.name)}?${q}`)) as ScanPage
      items.push(...page.items)
      if (page.next === null) break
      after = page.next
    }
    values[v.name] = items
  }
  return { views, values }
}

export interface HeldAdapter {
  adapter: StorageAdapter
  /** From now on, `write` waits until `release`. */
  hold(): void
  release(): void
  /** Resolves when a `write` call is waiting on the hold (at once if one already is). */
  writeWaiting(): Promise<void>
  /** Batches written through to the inner adapter. */
  written: number
}

/** Wraps an adapter (memory by default) so the test decides when batches become durable. */
export function heldAdapter(inner: StorageAdapter = memoryAdapter()): HeldAdapter {
  let gate: Promise<void> | null = null
  let open: () => void = () => {}
  let waiting = 0
  let onWaiting: Array<() => void> = []
  const held: HeldAdapter = {
    adapter: {
      get: (key) => inner.get(key),
      async write(ops, opts) {
        while (gate) {
          waiting++
          for (const f of onWaiting) f()
          onWaiting = []
          await gate
          waiting--
        }
        await inner.write(ops, opts)
        held.written++
      },
      scan: (range, opts) => inner.scan(range, opts),
      clear: (range) => inner.clear(range),
      compact: (range) => inner.compact(range),
      diskBytes: () => inner.diskBytes(),
      close: () => inner.close(),
    },
    hold() {
      if (!gate) gate = new Promise<void>((r) => (open = r))
    },
    release() {
      gate = null
      open()
    },
    writeWaiting() {
      if (waiting > 0) return Promise.resolve()
      return new Promise<void>((r) => onWaiting.push(r))
    },
    written: 0,
  }
  return held
}

/**
 * A keep-alive node:http client for bulk requests: `fetch` costs several times more per request,
 * and the bulk tests only need status and JSON.
 */
export function bulkClient(base: string, sockets = 16): { request(method: string, path: string, body?: string): Promise<{ status: number; json: unknown }>; close(): void } {
  const agent = new http.Agent({ keepAlive: true, maxSockets: sockets })
  return {
    request(method, p, body) {
      return new Promise((resolve, reject) => {
        const headers: Record<string, string | number> = {}
        if (body !== undefined) headers['content-length'] = Buffer.byteLength(body)
        const req = http.request(`${base}${p}`, { method, agent, headers }, (res) => {
          const parts: Buffer[] = []
          res.on('data', (c: Buffer) => parts.push(c))
          res.on('end', () => {
            try {
              resolve({ status: res.statusCode ?? 0, json: JSON.parse(Buffer.concat(parts).toString('utf8')) as unknown })
            } catch (err) {
              reject(err as Error)
            }
          })
          res.on('error', reject)
        })
        req.on('error', reject)
        req.end(body)
      })
    },
    close() {
      agent.destroy()
    },
  }
}
