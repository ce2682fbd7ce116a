/**
 * The WebSocket side of `ws://HOST:PORT/yjs/DOCNAME` (`ws`): it accepts the upgrade the HTTP
 * server routed here, moves messages between the socket and the document's connection, and
 * drops clients that stop answering pings. The protocol itself is in docs.ts and protocol.ts.
 *
 * A message larger than `maxPayload` (--max-body) makes `ws` close that socket with 1009; a text
 * frame is not y-websocket and closes it with 4400. Either way only that client goes.
 */
import type { IncomingMessage } from 'node:http'
import type { Duplex } from 'node:stream'
import { WebSocket, WebSocketServer, type RawData } from 'ws'
import { CLIENT_CLOSE, type ClientChannel, type Conn, type YjsDocs } from './docs.js'

export interface YjsEndpointOptions {
  /** Largest message accepted from a client. */
  maxPayload: number
  /** A client that has not answered a ping for this long is dropped. */
  pingIntervalMs: number
}

function channelOf(ws: WebSocket): ClientChannel {
  return {
    send(bytes) {
      if (ws.readyState === WebSocket.OPEN) ws.send(bytes, { binary: true })
    },
    close(code, reason) {
      if (ws.readyState === WebSocket.OPEN || ws.readyState === WebSocket.CONNECTING) ws.close(code, reason.slice(0, 120))
      // A client that never answers the close handshake must not hold the socket.
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

export class YjsEndpoint {
  private readonly wss: WebSocketServer
  private readonly alive = new Map<WebSocket, boolean>()
  private readonly pinger: NodeJS.Timeout

  constructor(
    private readonly docs: YjsDocs,
    opts: YjsEndpointOptions,
  ) {
    this.wss = new WebSocketServer({ noServer: true, maxPayload: opts.maxPayload })
    this.pinger = setInterval(() => this.ping(), opts.pingIntervalMs)
    this.pinger.unref()
  }

  /** Called by the HTTP server for an upgrade on /yjs/NAME (token and name already checked). */
  handleUpgrade(req: IncomingMessage, socket: Duplex, head: Buffer, name: string): void {
    this.wss.handleUpgrade(req, socket, head, (ws) => {
      const conn: Conn = this.docs.attach(channelOf(ws), name)
      this.alive.set(ws, true)
      ws.on('message', (data, isBinary) => {
        if (!isBinary) return conn.refuse(CLIENT_CLOSE.malformed, 'a text frame (y-websocket messages are binary)')
        conn.receive(toBytes(data))
      })
      ws.on('pong', () => this.alive.set(ws, true))
      ws.on('close', () => {
        this.alive.delete(ws)
        conn.gone()
      })
      ws.on('error', (err) => {
        // 'close' follows: an oversized message (1009), a bad frame, a reset.
        if (!conn.closed) this.docs.options.log(`yjs: client of "${name}" closed: ${err.message}`)
      })
    })
  }

  private ping(): void {
    for (const [ws, alive] of this.alive) {
      if (!alive) {
        ws.terminate()
        continue
      }
      this.alive.set(ws, false)
      try {
        ws.ping()
      } catch {
        ws.terminate()
      }
    }
  }

  /** Closes every client socket (the HTTP server cannot finish closing while they are open). */
  close(): void {
    clearInterval(this.pinger)
    for (const ws of this.wss.clients) channelOf(ws).close(CLIENT_CLOSE.goingAway, 'node is shutting down')
    this.wss.close()
  }
}
