/**
 * The HTTP API of CONTRACT.md over node:http. Every failure answers the contract's JSON error
 * and changes nothing; nothing a client sends can crash the process.
 */
import http from 'node:http'
import type { AddressInfo } from 'node:net'
import type { Duplex } from 'node:stream'
import type { SpeedNode } from '../node.js'
import { NodeError } from '../node.js'
import { StoreError } from '../store/viewStore.js'
import { checkName } from '../store/definition.js'
import { StorageError } from '../storage/adapter.js'
import { createMetrics, type ServerMetrics } from './metrics.js'
import { createDashboard } from './dashboard.js'
import { LiveHub, type LiveOptions } from './live.js'
import { corsOrigin } from './cors.js'
import { ingestNdjson } from '../ingest/ingest.js'
import { NdjsonError } from '../ingest/ndjson.js'
import { QueryError } from '../query/batchViews.js'
import { readBatchNdjson } from '../query/batchImport.js'
import { parseTime } from '../query/buckets.js'
import { YjsEndpoint } from '../yjs/endpoint.js'
import { docNameFromPath } from '../yjs/names.js'

export interface ServerOptions {
  host: string
  port: number
  /** Largest accepted request body in bytes. */
  maxBody: number
  token?: string
  tokenReads?: boolean
  log?: (line: string) => void
  /** The live subscription at /live (docs/live.md): bounds and rates. */
  live?: Partial<LiveOptions>
}

export interface SpeedServer {
  readonly url: string
  readonly http: http.Server
  readonly metrics: ServerMetrics
  readonly live: LiveHub
  close(): Promise<void>
}

export class HttpError extends Error {
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
    readonly headers: Record<string, string> = {},
  ) {
    super(message)
  }
}

const utf8 = new TextDecoder('utf-8', { fatal: true })

function send(res: http.ServerResponse, status: number, body: unknown, headers: Record<string, string> = {}): void {
  const text = JSON.stringify(body)
  res.writeHead(status, { 'content-type': 'application/json; charset=utf-8', 'content-length': Buffer.byteLength(text), ...headers })
  res.end(text)
}

function sendError(res: http.ServerResponse, err: HttpError): void {
  send(res, err.status, { error: { code: err.code, message: err.message } }, err.headers)
}

/** Maps what the layers below throw onto the contract's statuses. */
export function toHttpError(err: unknown): HttpError {
  if (err instanceof HttpError) return err
  if (err instanceof StoreError) {
    const status = err.code === 'unknown_view' ? 404 : err.code === 'conflict' ? 409 : 400
    return new HttpError(status, err.code, err.message)
  }
  if (err instanceof NodeError) {
    if (err.code === 'bad_op') return new HttpError(400, 'bad_op', err.message)
    return new HttpError(503, err.code, err.message, { 'retry-after': '1' })
  }
  if (err instanceof StorageError) return new HttpError(503, 'storage', err.message, { 'retry-after': '5' })
  if (err instanceof QueryError) return new HttpError(err.status, err.code, err.message)
  return new HttpError(500, 'internal', err instanceof Error ? err.message : String(err))
}

/**
 * Reads the whole body up to `max` bytes. A larger body is drained (so the client gets the 413
 * as an answer rather than a reset) and refused.
 */
export function readBody(req: http.IncomingMessage, max: number): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = []
    let size = 0
    let tooLarge = false
    req.on('data', (chunk: Buffer) => {
      size += chunk.length
      if (size > max) tooLarge = true
      if (!tooLarge) chunks.push(chunk)
    })
    req.on('end', () => {
      if (tooLarge) reject(new HttpError(413, 'too_large', `the body is larger than --max-body (${max} bytes)`))
      else resolve(Buffer.concat(chunks, size))
    })
    req.on('error', reject)
  })
}

export function parseJsonBody(buf: Buffer): unknown {
  let text: string
  try {
    text = utf8.decode(buf)
  } catch {
    throw new HttpError(400, 'bad_body', 'the body is not valid UTF-8')
  }
  try {
    return JSON.parse(text) as unknown
  } catch (err) {
    throw new HttpError(400, 'bad_json', `the body is not valid JSON: ${(err as Error).message}`)
  }
}

/** Splits the raw path and percent-decodes each segment; `.`/`..`/bad escapes are the caller's 400. */
function pathSegments(rawPath: string): string[] {
  const parts = rawPath.split('/').slice(1)
  return parts.map((p) => {
    try {
      return decodeURIComponent(p)
    } catch {
      throw new HttpError(400, 'bad_path', `path segment "${p}" has a malformed percent escape or invalid UTF-8`)
    }
  })
}

function parseLimit(raw: string | null): number {
  if (raw === null) return 100
  if (!/^[0-9]{1,4}$/.test(raw)) throw new HttpError(400, 'bad_param', `limit must be an integer from 1 to 1000, got "${raw}"`)
  const n = Number(raw)
  if (n < 1 || n > 1000) throw new HttpError(400, 'bad_param', `limit must be an integer from 1 to 1000, got ${n}`)
  return n
}

interface Ctx {
  req: http.IncomingMessage
  res: http.ServerResponse
  segs: string[]
  query: URLSearchParams
  route: string
}

export function startServer(node: SpeedNode, opts: ServerOptions): Promise<SpeedServer> {
  const metrics = createMetrics(node)
  const live = new LiveHub(node, metrics.registry, opts.live)
  const dashboard = createDashboard(node)
  const log = opts.log ?? ((line: string) => process.stderr.write(`${line}\n`))

  const authorize = (ctx: Ctx, write: boolean) => {
    if (opts.token === undefined || (!write && !opts.tokenReads)) return
    const h = ctx.req.headers.authorization
    const given = h?.startsWith('Bearer ') ? h.slice(7) : ctx.query.get('token')
    if (given !== opts.token) throw new HttpError(401, 'unauthorized', 'this route needs "Authorization: Bearer TOKEN" (the node runs with --token)', { 'www-authenticate': 'Bearer' })
  }

  const methodNotAllowed = (allow: string) => new HttpError(405, 'method_not_allowed', `use ${allow} on this route`, { allow })

  async function handle(ctx: Ctx): Promise<void> {
    const { req, res, segs, query } = ctx
    const method = req.method ?? 'GET'
    const [first, a, b, ...rest] = segs
    switch (first) {
      case 'health': {
        ctx.route = '/health'
        if (segs.length !== 1) break
        if (method !== 'GET') throw methodNotAllowed('GET')
        return send(res, 200, { ok: true, replica: node.id })
      }
      case 'metrics': {
        ctx.route = '/metrics'
        if (segs.length !== 1) break
        if (method !== 'GET') throw methodNotAllowed('GET')
        authorize(ctx, false)
        const text = await metrics.registry.metrics()
        res.writeHead(200, { 'content-type': metrics.registry.contentType })
        res.end(text)
        return
      }
      case 'ingest': {
        ctx.route = '/ingest'
        if (segs.length !== 1) break
        if (method !== 'POST') throw methodNotAllowed('POST')
        authorize(ctx, true)
        try {
          const t0 = performance.now()
          const result = await ingestNdjson(node, req, { maxLineBytes: opts.maxBody })
          metrics.ingestBatch((performance.now() - t0) / 1000)
          return send(res, 200, result)
        } catch (err) {
          if (err instanceof NdjsonError) throw new HttpError(err.status, err.code, err.message, err.status === 503 ? { 'retry-after': '5' } : {})
          throw err
        }
      }
      case 'views': {
        if (a === undefined || (a === '' && segs.length === 2)) {
          ctx.route = '/views'
          if (method !== 'GET') throw methodNotAllowed('GET')
          authorize(ctx, false)
          return send(res, 200, node.views().map((v) => ({ name: v.name, ...v.def })))
        }
        if (rest.length > 0) break
        const badView = checkName(a, 'the view name')
        if (badView) throw new HttpError(400, 'bad_key', badView)
        if (b !== undefined) {
          const badKey = checkName(b, 'the key')
          if (badKey) throw new HttpError(400, 'bad_key', badKey)
        }
        if (b === undefined) {
          ctx.route = '/views/:view'
          if (method === 'PUT') {
            authorize(ctx, true)
            const def = parseJsonBody(await readBody(req, opts.maxBody))
            const result = await node.defineView(a, def)
            const view = node.views().find((v) => v.name === a)
            return send(res, result === 'created' ? 201 : 200, { name: a, ...view?.def })
          }
          if (method !== 'GET') throw methodNotAllowed('GET, PUT')
          authorize(ctx, false)
          const prefix = query.get('prefix') ?? undefined
          const after = query.get('after') ?? undefined
          const page = node.scan(a, { prefix, after, limit: parseLimit(query.get('limit')) })
          return send(res, 200, page)
        }
        ctx.route = '/views/:view/:key'
        if (method === 'POST') {
          authorize(ctx, true)
          const t0 = performance.now()
          const op = parseJsonBody(await readBody(req, opts.maxBody))
          const result = await node.apply(a, b, op)
          metrics.writeAck((performance.now() - t0) / 1000)
          return send(res, 200, result)
        }
        if (method !== 'GET') throw methodNotAllowed('GET, POST')
        authorize(ctx, false)
        return send(res, 200, node.read(a, b))
      }
      case 'query': {
        if (a === undefined || rest.length > 0) break
        const badView = checkName(a, 'the view name')
        if (badView) throw new HttpError(400, 'bad_key', badView)
        if (b === undefined) {
          ctx.route = '/query/:view'
          if (method !== 'GET') throw methodNotAllowed('GET')
          authorize(ctx, false)
          const prefix = query.get('prefix')
          if (prefix === null) throw new HttpError(400, 'bad_param', 'a range query needs ?prefix=P (the key fields before the bucket), e.g. ?prefix=home&from=2025-06-01T00:00:00Z&to=2025-06-02T00:00:00Z')
          return send(res, 200, node.queryRange(a, { prefix, from: timeParam(query, 'from'), to: timeParam(query, 'to') }))
        }
        ctx.route = '/query/:view/:key'
        const badKey = checkName(b, 'the key')
        if (badKey) throw new HttpError(400, 'bad_key', badKey)
        if (method !== 'GET') throw methodNotAllowed('GET')
        authorize(ctx, false)
        return send(res, 200, node.query(a, b))
      }
      case 'batch': {
        if (a === undefined || b !== undefined) break
        ctx.route = '/batch/:view'
        const badView = checkName(a, 'the view name')
        if (badView) throw new HttpError(400, 'bad_key', badView)
        if (method === 'GET') {
          authorize(ctx, false)
          const held = node.batch.get(a)
          if (held === null) throw new HttpError(404, 'no_batch_view', `this node holds no batch view for "${a}"; import one with PUT /batch/${encodeURIComponent(a)}?horizon=T`)
          return send(res, 200, held)
        }
        if (method !== 'PUT') throw methodNotAllowed('GET, PUT')
        authorize(ctx, true)
        const rawHorizon = query.get('horizon')
        if (rawHorizon === null) throw new HttpError(400, 'bad_param', 'PUT /batch/:view needs ?horizon=T (ms since the epoch or ISO 8601): the batch view holds the exact results up to T')
        const horizon = parseTime(rawHorizon)
        if (Number.isNaN(horizon)) throw new HttpError(400, 'bad_param', `horizon must be ms since the epoch or an ISO 8601 date-time with a zone, got "${rawHorizon}"`)
        const entries = node.batch.begin(a, horizon)
        try {
          await readBatchNdjson(req, entries, opts.maxBody)
        } catch (err) {
          if (err instanceof NdjsonError) throw new HttpError(err.status, err.code, err.message)
          throw err
        }
        const r = await node.batch.import(a, horizon, entries)
        if (!r.won) {
          throw new HttpError(
            409,
            'conflict',
            `view "${a}" already has a batch view with horizon ${new Date(r.horizon).toISOString()} (replica ${r.stamp.r}) that wins over this one (horizon ${new Date(horizon).toISOString()}): the import with the highest horizon wins; nothing was imported`,
          )
        }
        return send(res, 200, { view: a, horizon, keys: r.keys, expired: r.expired })
      }
      case 'yjs': {
        ctx.route = '/yjs'
        if (!(segs.length === 1 || (segs.length === 2 && a === ''))) break
        if (method !== 'GET') throw methodNotAllowed('GET')
        authorize(ctx, false)
        return send(res, 200, node.yjs.list())
      }
      case 'peers': {
        if (a === undefined) {
          ctx.route = '/peers'
          if (segs.length !== 1) break
          if (method !== 'GET') throw methodNotAllowed('GET')
          authorize(ctx, false)
          return send(
            res,
            200,
            node.replication.peers().map((p) => ({ replica: p.replica, url: p.url, connected: p.connected, lagOps: p.lagOps, lagMs: p.lagMs, lastSeen: p.lastSeen, bytesIn: p.bytesIn, bytesOut: p.bytesOut, blocked: p.blocked })),
          )
        }
        if (b !== 'disconnect' && b !== 'connect') break
        if (rest.length > 0) break
        ctx.route = `/peers/:replica/${b}`
        if (method !== 'POST') throw methodNotAllowed('POST')
        authorize(ctx, true)
        const ok = b === 'disconnect' ? node.replication.disconnect(a) : node.replication.connect(a)
        if (!ok) throw new HttpError(404, 'unknown_peer', `this node has never seen a peer named "${a}"; see GET /peers`)
        return send(res, 200, { replica: a, connected: b === 'connect' ? node.replication.replicator.isConnected(a) : false, blocked: b === 'disconnect' })
      }
      case 'live': {
        ctx.route = '/live'
        if (segs.length !== 1) break
        throw new HttpError(426, 'upgrade_required', 'GET /live is a WebSocket (ws://HOST:PORT/live); see docs/live.md', { upgrade: 'websocket' })
      }
      default: {
        if (method === 'GET' && !isApiRoot(first)) {
          ctx.route = 'dashboard'
          const raw = req.url ?? '/'
          const q = raw.indexOf('?')
          dashboard.serve(req, res, q >= 0 ? raw.slice(0, q) : raw)
          return
        }
      }
    }
    throw new HttpError(404, 'not_found', `no route ${method} ${req.url?.split('?')[0]}; see GET /views, GET /health`)
  }

  let closing = false
  // Requests being answered: closing waits for them, but not for upgraded sockets (peer links,
  // y-websocket clients), which belong to the node and would hold the shutdown until the far
  // side hung up.
  let inFlight = 0
  let drained: (() => void) | null = null
  const server = http.createServer((req, res) => {
    inFlight++
    res.on('close', () => {
      if (--inFlight === 0 && drained) setImmediate(drained)
    })
    const t0 = performance.now()
    const rawUrl = req.url ?? '/'
    const q = rawUrl.indexOf('?')
    const ctx: Ctx = { req, res, segs: [], query: new URLSearchParams(q >= 0 ? rawUrl.slice(q + 1) : ''), route: 'unknown' }
    const done = () => {
      metrics.request(ctx.route, req.method ?? 'GET', res.statusCode, (performance.now() - t0) / 1000)
      // A connection busy at close time turns idle only now; left open, it would hold the shutdown for keepAliveTimeout.
      if (closing) setImmediate(() => server.closeIdleConnections())
    }
    res.on('finish', done)
    // The dashboard served by one node reads and steers its siblings (cut/heal buttons).
    const allow = corsOrigin(req.headers.origin, req.headers.host, () => node.replication.peers())
    if (allow !== null) res.setHeader('access-control-allow-origin', allow)
    if (req.headers.origin !== undefined) res.setHeader('vary', 'origin')
    Promise.resolve()
      .then(() => {
        ctx.segs = pathSegments(q >= 0 ? rawUrl.slice(0, q) : rawUrl)
        return handle(ctx)
      })
      .catch((err: unknown) => {
        const e = toHttpError(err)
        if (e.status >= 500 && e.status !== 503) log(`error: ${req.method} ${rawUrl}: ${e.message}`)
        if (res.headersSent) {
          res.destroy()
          return
        }
        // An unread body would be taken for the next request on this connection: drain it first.
        if (!req.complete) {
          req.resume()
          req.once('end', () => sendError(res, e))
          req.once('error', () => res.destroy())
        } else {
          sendError(res, e)
        }
      })
  })
  // Requests node's parser refuses (raw non-ASCII bytes in the path, bad headers) still get the
  // contract's JSON error.
  const yjs = new YjsEndpoint(node.yjs, { maxPayload: opts.maxBody, pingIntervalMs: 30_000 })
  const refuseUpgrade = (socket: Duplex, status: string, code: string, message: string, extra = '') => {
    const body = JSON.stringify({ error: { code, message } })
    socket.end(`HTTP/1.1 ${status}\r\nconnection: close\r\n${extra}content-type: application/json; charset=utf-8\r\ncontent-length: ${Buffer.byteLength(body)}\r\n\r\n${body}`)
  }
  server.on('upgrade', (req, socket, head) => {
    const rawUrl = req.url ?? '/'
    const q = rawUrl.indexOf('?')
    const path = q >= 0 ? rawUrl.slice(0, q) : rawUrl
    if (path === '/peer') {
      node.replication.handleUpgrade(req, socket, head)
      return
    }
    if (path.startsWith('/yjs/')) {
      // A y-websocket client can put the token only in the URL (WebsocketProvider's params).
      if (opts.token !== undefined) {
        const h = req.headers.authorization
        const given = h?.startsWith('Bearer ') ? h.slice(7) : new URLSearchParams(q >= 0 ? rawUrl.slice(q + 1) : '').get('token')
        if (given !== opts.token) return refuseUpgrade(socket, '401 Unauthorized', 'unauthorized', '/yjs needs ?token=TOKEN or "Authorization: Bearer TOKEN" (the node runs with --token)', 'www-authenticate: Bearer\r\n')
      }
      const r = docNameFromPath(path)
      if ('error' in r) return refuseUpgrade(socket, '400 Bad Request', 'bad_name', r.error)
      yjs.handleUpgrade(req, socket, head, r.name)
      return
    }
    if (path === '/live') {
      if (opts.token !== undefined && opts.tokenReads) {
        const h = req.headers.authorization
        const q = (req.url ?? '').indexOf('?')
        const given = h?.startsWith('Bearer ') ? h.slice(7) : new URLSearchParams(q >= 0 ? (req.url ?? '').slice(q + 1) : '').get('token')
        if (given !== opts.token) {
          socket.end('HTTP/1.1 401 Unauthorized\r\nconnection: close\r\nwww-authenticate: Bearer\r\ncontent-length: 0\r\n\r\n')
          return
        }
      }
      live.handleUpgrade(req, socket, head)
      return
    }
    socket.end('HTTP/1.1 404 Not Found\r\nconnection: close\r\ncontent-length: 0\r\n\r\n')
  })
  server.on('clientError', (err: NodeJS.ErrnoException, socket) => {
    if (!socket.writable) return void socket.destroy()
    const tooBig = err.code === 'HPE_HEADER_OVERFLOW'
    const body = JSON.stringify({ error: { code: 'bad_request', message: tooBig ? 'the request headers are too large' : `malformed HTTP request (${err.code ?? err.message}); paths must be ASCII with UTF-8 percent-escaped` } })
    socket.end(`HTTP/1.1 ${tooBig ? '431 Request Header Fields Too Large' : '400 Bad Request'}\r\nconnection: close\r\ncontent-type: application/json; charset=utf-8\r\ncontent-length: ${Buffer.byteLength(body)}\r\n\r\n${body}`)
  })
  // Lets a shutdown finish promptly instead of waiting for idle keep-alive connections.
  server.keepAliveTimeout = 5_000

  return new Promise((resolve, reject) => {
    server.once('error', reject)
    server.listen(opts.port, opts.host, () => {
      server.off('error', reject)
      const addr = server.address() as AddressInfo
      const host = opts.host.includes(':') ? `[${opts.host}]` : opts.host
      resolve({
        url: `http://${host}:${addr.port}`,
        http: server,
        metrics,
        live,
        close: () =>
          new Promise<void>((res) => {
            closing = true
            server.close()
            yjs.close()
            live.close()
            server.closeIdleConnections()
            drained = () => {
              if (inFlight === 0) res()
            }
            if (inFlight === 0) setImmediate(drained)
          }),
      })
    })
  })
}

/** A time parameter (ms since the epoch or ISO 8601), or undefined when absent. */
function timeParam(query: URLSearchParams, name: string): number | undefined {
  const raw = query.get(name)
  if (raw === null) return undefined
  const t = parseTime(raw)
  if (Number.isNaN(t)) throw new HttpError(400, 'bad_param', `${name} must be ms since the epoch or an ISO 8601 date-time with a zone (e.g. 2025-06-01T10:00:00Z), got "${raw}"`)
  return t
}

const API_ROOTS = new Set(['health', 'metrics', 'views', 'ingest', 'query', 'batch', 'peers', 'yjs', 'peer', 'live'])

function isApiRoot(first: string | undefined): boolean {
  return first !== undefined && API_ROOTS.has(first)
}
