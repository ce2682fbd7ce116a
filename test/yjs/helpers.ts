/**
 * Helpers for the Yjs tests: stock y-websocket clients (WebsocketProvider over the `ws` package,
 * BroadcastChannel off so that two clients in one process talk only through the servers), raw
 * WebSocket clients for bytes no stock client would send, and waits that end on events (a
 * document update, a socket event) or on a polled value, never after a fixed time.
 */
import * as Y from 'yjs'
import { WebsocketProvider } from 'y-websocket'
import WebSocket from 'ws'

export interface YClient {
  doc: Y.Doc
  provider: WebsocketProvider
  text: Y.Text
  map: Y.Map<unknown>
  close(): void
}

/** The y-websocket server URL of a node whose HTTP URL is `httpUrl`. */
export function yjsUrl(httpUrl: string): string {
  return httpUrl.replace(/^http/, 'ws') + '/yjs'
}

/** A stock WebsocketProvider client of room `room` on the node at `httpUrl`. */
export function yClient(httpUrl: string, room: string, params: Record<string, string> = {}): YClient {
  const doc = new Y.Doc()
  const provider = new WebsocketProvider(yjsUrl(httpUrl), room, doc, {
    WebSocketPolyfill: WebSocket as unknown as typeof globalThis.WebSocket,
    disableBc: true,
    params,
    maxBackoffTime: 200,
  })
  return {
    doc,
    provider,
    text: doc.getText('text'),
    map: doc.getMap('map'),
    close() {
      provider.destroy()
      doc.destroy()
    },
  }
}

/** Resolves once the provider has synced with its server. */
export function synced(c: YClient, timeoutMs = 5000): Promise<void> {
  if (c.provider.synced) return Promise.resolve()
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`client of ${c.provider.roomname} not synced within ${timeoutMs} ms`)), timeoutMs)
    c.provider.on('sync', (s: boolean) => {
      if (s) {
        clearTimeout(timer)
        resolve()
      }
    })
  })
}

/** Resolves once `pred` holds, checked now and after every update of any of `docs`. */
export function until(docs: Y.Doc[], pred: () => boolean, what: string, timeoutMs = 5000): Promise<number> {
  const t0 = performance.now()
  if (pred()) return Promise.resolve(0)
  return new Promise((resolve, reject) => {
    const check = () => {
      if (!pred()) return
      done()
      resolve(performance.now() - t0)
    }
    const done = () => {
      clearTimeout(timer)
      for (const d of docs) d.off('update', check)
    }
    const timer = setTimeout(() => {
      done()
      reject(new Error(`timed out after ${timeoutMs} ms waiting for ${what}`))
    }, timeoutMs)
    for (const d of docs) d.on('update', check)
  })
}

/** Polls `check` every 20 ms until it holds; throws after the deadline. */
export async function pollUntil(what: string, check: () => boolean | Promise<boolean>, timeoutMs = 10_000): Promise<void> {
  const deadline = performance.now() + timeoutMs
  for (;;) {
    if (await check()) return
    if (performance.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`)
    await new Promise((r) => setTimeout(r, 20))
  }
}

/** Everything the shared types of a client hold, for comparisons. */
export function content(c: { text: Y.Text; map: Y.Map<unknown> }): { text: string; map: Record<string, unknown> } {
  return { text: c.text.toString(), map: c.map.toJSON() }
}

/** A raw WebSocket to `ws://.../yjs/ROOM`; resolves once open. */
export function rawSocket(httpUrl: string, room: string, query = ''): Promise<RawSocket> {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(`${yjsUrl(httpUrl)}/${room}${query}`)
    const raw = new RawSocket(ws)
    ws.once('open', () => resolve(raw))
    ws.once('error', reject)
    ws.once('unexpected-response', (_req, res) => reject(new Error(`upgrade answered ${res.statusCode}`)))
  })
}

export class RawSocket {
  readonly messages: Uint8Array[] = []
  readonly closed: Promise<{ code: number; reason: string }>

  constructor(readonly ws: WebSocket) {
    ws.on('message', (data: Buffer) => this.messages.push(new Uint8Array(data)))
    this.closed = new Promise((resolve) => ws.once('close', (code, reason) => resolve({ code, reason: reason.toString() })))
  }

  send(bytes: Uint8Array | string): void {
    this.ws.send(bytes)
  }

  close(): void {
    this.ws.terminate()
  }
}

/** The HTTP status an upgrade to `path` is refused with, or 101 when it is accepted. */
export function upgradeStatus(httpUrl: string, path: string, headers: Record<string, string> = {}): Promise<number> {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(httpUrl.replace(/^http/, 'ws') + path, { headers })
    ws.once('open', () => {
      ws.terminate()
      resolve(101)
    })
    ws.once('unexpected-response', (_req, res) => {
      resolve(res.statusCode ?? 0)
      ws.terminate()
    })
    ws.once('error', (err) => {
      if (!String(err.message).includes('Unexpected server response')) reject(err)
    })
  })
}
