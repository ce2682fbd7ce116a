/**
 * One live subscription to one node (ws://HOST:PORT/live), kept open: on a close it retries
 * with capped backoff, and on every (re)open it says again what it wants, so a node that
 * restarts is picked up without a reload. Its state is what the page shows about the node's
 * reachability ("down" means the last attempt failed).
 */
import { apiUrl } from './api'
import type { Hello, ServerFrame, SubRequest, Update, ViewInfo } from './protocol'

export type ConnState = 'connecting' | 'open' | 'down'

export interface Wants {
  subs: SubRequest[]
  stats: boolean
  rate?: number
}

export interface LiveHandlers {
  hello(h: Hello): void
  update(u: Update): void
  state(s: ConnState): void
  error(message: string): void
}

export class LiveConnection {
  state: ConnState = 'connecting'
  /** Frames received and their bytes, for the benchmark and the footer. */
  messages = 0
  bytes = 0
  /** When the node was last heard from (ms, browser clock). */
  lastHeard = 0
  /** When the next attempt will be made while down. */
  retryAt = 0
  private ws: WebSocket | null = null
  private attempt = 0
  private timer: number | null = null
  private stopped = false
  private views: ViewInfo[] = []

  constructor(
    readonly base: string,
    private readonly wants: (views: ViewInfo[]) => Wants,
    private readonly on: LiveHandlers,
  ) {}

  start(): void {
    this.stopped = false
    this.open()
  }

  stop(): void {
    this.stopped = true
    if (this.timer !== null) clearTimeout(this.timer)
    this.ws?.close()
    this.ws = null
  }

  /** Sends the subscription again (the views the node holds changed). */
  resubscribe(views: ViewInfo[]): void {
    this.views = views
    this.send()
  }

  private send(): void {
    if (this.ws?.readyState !== WebSocket.OPEN) return
    this.ws.send(JSON.stringify({ type: 'subscribe', ...this.wants(this.views) }))
  }

  private setState(s: ConnState): void {
    if (this.state === s) return
    this.state = s
    this.on.state(s)
  }

  private open(): void {
    const url = apiUrl(this.base, '/live')
    url.protocol = url.protocol === 'https:' ? 'wss:' : 'ws:'
    let ws: WebSocket
    try {
      ws = new WebSocket(url)
    } catch {
      this.retry()
      return
    }
    this.ws = ws
    ws.onopen = () => {
      this.attempt = 0
      this.lastHeard = Date.now()
    }
    ws.onmessage = (ev: MessageEvent) => {
      if (typeof ev.data !== 'string') return
      this.messages++
      this.bytes += ev.data.length
      this.lastHeard = Date.now()
      let frame: ServerFrame
      try {
        frame = JSON.parse(ev.data) as ServerFrame
      } catch {
        return
      }
      switch (frame.type) {
        case 'hello':
          this.views = frame.views
          this.send()
          this.setState('open')
          this.on.hello(frame)
          break
        case 'update':
          this.on.update(frame)
          break
        case 'error':
          this.on.error(frame.message)
          break
      }
    }
    ws.onerror = () => {}
    ws.onclose = () => {
      if (this.ws !== ws) return
      this.ws = null
      if (!this.stopped) this.retry()
    }
  }

  private retry(): void {
    this.setState('down')
    // 0.5 s, 1 s, 2 s, then every 3 s: a node back from a restart is seen within seconds.
    const delay = Math.min(3000, 500 * 2 ** this.attempt++)
    this.retryAt = Date.now() + delay
    this.timer = window.setTimeout(() => {
      this.timer = null
      if (!this.stopped) this.open()
    }, delay)
  }
}
