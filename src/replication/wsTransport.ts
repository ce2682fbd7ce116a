/**
 * The WebSocket transport of the peer protocol (`ws`): accepting links at /peer and dialling the
 * `--peers` URLs with exponential backoff and jitter. It only moves bytes and reports open/close;
 * the protocol itself is in replicator.ts.
 */
import type { IncomingMessage } from 'node:http'
import type { Duplex } from 'node:stream'
import { WebSocket, WebSocketServer, type RawData } from 'ws'
import type { Link, PeerChannel, Replicator } from './replicator.js'

export interface WsTransportOptions {
  /** Largest message accepted from a peer; larger ones close the link (1009). */
  maxPayload: number
  maxBackoffMs: number
  minBackoffMs: number
  log(line: string): void
}

function channelOf(ws: WebSocket): PeerChannel {
  return {
    send(bytes) {
      if (ws.readyState === WebSocket.OPEN) ws.send(bytes, { binary: true })
    },
    close(code, reason) {
      if (ws.readyState === WebSocket.OPEN || ws.readyState === WebSocket.CONNECTING) ws.close(code, reason.slice(0, 120))
      // A peer that never answers the close handshake must not hold the socket forever.
      setTimeout(() => ws.terminate(), 2000).unref()
    },
    bufferedAmount: () => ws.bufferedAmount,
  }
}

function toBytes(data: RawData): Uint8Array {
  if (Array.isArray(data)) return new Uint8Array(Buffer.concat(data))
  if (data instanceof ArrayBuffer) return new Uint8Array(data)
  return new Uint8Array(data.buffer, data.byteOffset, data.byteLength)
}

function wire(replicator: Replicator, ws: WebSocket, dialled: boolean, url: string | null, log: (line: string) => void): Link {
  const link = replicator.attach(channelOf(ws), dialled, url)
  const closedBecause = (reason: string) => log(`peer link${link.peer ? ` with ${link.peer}` : ''}${url ? ` (${url})` : ''} closed: ${reason}`)
  ws.on('message', (data, isBinary) => {
    if (!isBinary) {
      if (link.state !== 'closed') closedBecause('a text frame (the peer protocol is binary)')
      ws.close(4400, 'the peer protocol is binary')
      return
    }
    replicator.receive(link, toBytes(data))
  })
  ws.on('close', () => replicator.closed_(link))
  ws.on('error', (err) => {
    // 'close' follows; an oversized frame (1009) or a reset lands here first.
    if (link.state !== 'closed') closedBecause(err.message)
  })
  return link
}

export class PeerServer {
  private readonly wss: WebSocketServer
  private readonly log: (line: string) => void

  constructor(
    private readonly replicator: Replicator,
    opts: WsTransportOptions,
  ) {
    this.wss = new WebSocketServer({ noServer: true, maxPayload: opts.maxPayload })
    this.log = opts.log
  }

  /** Called by the HTTP server for an upgrade request on /peer. */
  handleUpgrade(req: IncomingMessage, socket: Duplex, head: Buffer): void {
    this.wss.handleUpgrade(req, socket, head, (ws) => {
      wire(this.replicator, ws, false, null, this.log)
    })
  }

  close(): void {
    for (const ws of this.wss.clients) ws.terminate()
    this.wss.close()
  }
}

/** Keeps one outgoing link per URL alive, redialling with capped exponential backoff and jitter. */
export class Dialer {
  private readonly targets = new Map<string, { attempt: number; timer: NodeJS.Timeout | null; ws: WebSocket | null }>()
  private stopped = false

  constructor(
    private readonly replicator: Replicator,
    urls: readonly string[],
    private readonly opts: WsTransportOptions,
  ) {
    for (const url of urls) this.targets.set(url, { attempt: 0, timer: null, ws: null })
  }

  urls(): string[] {
    return [...this.targets.keys()]
  }

  start(): void {
    for (const url of this.targets.keys()) this.dial(url)
  }

  /** Dials `url` now if it is not connected (after an operator's connect). */
  poke(url: string): void {
    const t = this.targets.get(url)
    if (!t || t.ws) return
    if (t.timer) clearTimeout(t.timer)
    t.timer = null
    t.attempt = 0
    this.dial(url)
  }

  private backoff(attempt: number): number {
    const cap = this.opts.maxBackoffMs
    const base = Math.min(cap, this.opts.minBackoffMs * 2 ** attempt)
    // "Equal jitter": at least half the delay, so retries spread out but never hammer.
    return Math.round(base / 2 + (Math.random() * base) / 2)
  }

  private later(url: string): void {
    const t = this.targets.get(url)
    if (!t || this.stopped) return
    const delay = this.backoff(t.attempt++)
    t.timer = setTimeout(() => {
      t.timer = null
      this.dial(url)
    }, delay)
    t.timer.unref()
  }

  private dial(url: string): void {
    const t = this.targets.get(url)
    if (!t || this.stopped || t.ws) return
    const known = this.replicator.replicaAt(url)
    // Not while the operator keeps the link cut, nor while the peer already has a link with us
    // (it may have dialled us): one link per pair.
    if (known !== null && (this.replicator.isBlocked(known) || this.replicator.isConnected(known))) {
      t.attempt = Math.max(t.attempt, 3)
      return this.later(url)
    }
    const ws = new WebSocket(url, { maxPayload: this.opts.maxPayload, handshakeTimeout: 5000 })
    t.ws = ws
    ws.on('open', () => {
      const link = wire(this.replicator, ws, true, url, this.opts.log)
      // Back to the shortest backoff only once the peer accepted the link (its vector came):
      // a peer that refuses after its hello (cut by its operator, wrong secret) must not be
      // redialled at the minimum delay forever.
      const accepted = () => {
        if (!link.gotVv) return
        t.attempt = 0
        ws.off('message', accepted)
      }
      ws.on('message', accepted)
    })
    ws.on('close', () => {
      t.ws = null
      this.later(url)
    })
    ws.on('error', () => {
      // Unreachable peers are normal (they may start later): retry quietly with backoff.
    })
  }

  stop(): void {
    this.stopped = true
    for (const t of this.targets.values()) {
      if (t.timer) clearTimeout(t.timer)
      t.ws?.terminate()
    }
  }
}
