/**
 * The live subscription at ws://HOST:PORT/live (docs/live.md), which the dashboard uses.
 *
 * A client says which keys of which views it wants; the store's change events mark those keys
 * dirty, and a timer sends each client one frame with the current values of its dirty keys at
 * most `rate` times a second. Many changes of one key between two frames cost one entry, and
 * nothing is ever polled key by key. A client whose socket does not drain (bufferedAmount above
 * a bound) gets no frame until it does: its dirty keys keep merging meanwhile, so the node holds
 * at most one frame beyond the bound and a set of key names per such client, never a queue.
 */
import type { IncomingMessage } from 'node:http'
import type { Duplex } from 'node:stream'
import { WebSocket, WebSocketServer, type RawData } from 'ws'
import type { SpeedNode } from '../node.js'
import type { StoreEvent } from '../store/viewStore.js'
import { bucketSizeOf, bucketStartOf } from '../query/buckets.js'
import { LIVE_LIMITS, LiveProtocolError, parseSubscription, type SubSpec, type Subscription } from './liveProtocol.js'
import { LiveStatsSource, type LiveStats } from './liveStats.js'
import type { Registry } from 'prom-client'

export interface LiveOptions {
  /** The server's own floor between two frames to one client. */
  minIntervalMs: number
  statsIntervalMs: number
  /** A client whose socket holds more than this many unsent bytes gets no frame until it drains. */
  maxBufferedBytes: number
  /** Keys a snapshot lists at most per subscription (more: `truncated`). */
  maxSnapshotKeys: number
  /** Keys a snapshot looks at at most per subscription before giving up (a huge view with a window). */
  maxScanKeys: number
  /** Dirty keys one subscription may gather before it is answered by a fresh snapshot instead. */
  maxDirtyKeys: number
  maxClients: number
  maxMessageBytes: number
  /** Ping interval; a client that misses a pong is dropped. */
  heartbeatMs: number
}

export const DEFAULT_LIVE_OPTIONS: LiveOptions = {
  minIntervalMs: 1000 / LIVE_LIMITS.maxRate,
  statsIntervalMs: 1000,
  maxBufferedBytes: 256 * 1024,
  maxSnapshotKeys: 2000,
  maxScanKeys: 200_000,
  maxDirtyKeys: 5000,
  maxClients: 100,
  maxMessageBytes: 64 * 1024,
  heartbeatMs: 15_000,
}

/** One key's entry in a frame. */
export interface LiveItem {
  key: string
  value: unknown
  /** True when the value is the batch layer's exact one (a bucket the batch horizon covers). */
  exact: boolean
  /** hll: relative standard error of the value (0 when exact). */
  error?: number
}

interface SubState {
  spec: SubSpec
  bucketMs: number
  keySet: Set<string> | null
  /** Keys changed since the last frame; for `recent`, in order of change. */
  dirty: Map<string, true>
  reset: boolean
}

interface Client {
  ws: WebSocket
  sub: Subscription
  subs: SubState[]
  lastSent: number
  statsDue: boolean
  alive: boolean
}

export interface LiveCounters {
  clients: number
  /** Frames sent since start. */
  frames: number
  /** Ticks at which a client had something to send but its socket had not drained. */
  skipped: number
  /** Clients closed for sending garbage. */
  closedForGarbage: number
}

export class LiveHub {
  private readonly opts: LiveOptions
  private readonly wss: WebSocketServer
  private readonly clients = new Set<Client>()
  /** view name -> the subscriptions on it, so a store event looks only at those. */
  private readonly byView = new Map<string, Array<{ client: Client; state: SubState }>>()
  private readonly statsSource: LiveStatsSource
  private stats: LiveStats | null = null
  private statsRunning = false
  private tickTimer: NodeJS.Timeout | null = null
  private statsTimer: NodeJS.Timeout | null = null
  private heartbeatTimer: NodeJS.Timeout | null = null
  private readonly unsubscribe: Array<() => void> = []
  readonly counters: LiveCounters = { clients: 0, frames: 0, skipped: 0, closedForGarbage: 0 }

  constructor(
    private readonly node: SpeedNode,
    registry: Registry,
    opts: Partial<LiveOptions> = {},
  ) {
    this.opts = { ...DEFAULT_LIVE_OPTIONS, ...opts }
    this.wss = new WebSocketServer({ noServer: true, maxPayload: this.opts.maxMessageBytes })
    this.statsSource = new LiveStatsSource(node, registry)
    this.unsubscribe.push(node.subscribe((ev) => this.onStoreEvent(ev)))
    this.unsubscribe.push(node.batch.onChange((view) => this.resetView(view)))
  }

  /** Called by the HTTP server for an upgrade request on /live (already authorized). */
  handleUpgrade(req: IncomingMessage, socket: Duplex, head: Buffer): void {
    if (this.clients.size >= this.opts.maxClients) {
      socket.end('HTTP/1.1 503 Service Unavailable\r\nconnection: close\r\nretry-after: 5\r\ncontent-length: 0\r\n\r\n')
      return
    }
    this.wss.handleUpgrade(req, socket, head, (ws) => this.attach(ws))
  }

  private attach(ws: WebSocket): void {
    const client: Client = { ws, sub: { subs: [], stats: false, rate: LIVE_LIMITS.maxRate }, subs: [], lastSent: 0, statsDue: false, alive: true }
    this.clients.add(client)
    this.counters.clients = this.clients.size
    this.startTimers()
    ws.on('pong', () => (client.alive = true))
    ws.on('message', (data: RawData, isBinary: boolean) => this.onMessage(client, data, isBinary))
    ws.on('close', () => this.detach(client))
    // 'close' follows every error (an oversized frame is 1009, a reset ends the socket).
    ws.on('error', () => {})
    this.sendNow(client, {
      type: 'hello',
      replica: this.node.id,
      protocol: 1,
      maxRate: LIVE_LIMITS.maxRate,
      limits: { subs: LIVE_LIMITS.subs, keys: LIVE_LIMITS.keys, snapshotKeys: this.opts.maxSnapshotKeys },
      views: this.node.views().map((v) => ({ name: v.name, type: v.type, bucketMs: bucketSizeOf(v.def) })),
    })
  }

  private detach(client: Client): void {
    if (!this.clients.delete(client)) return
    this.counters.clients = this.clients.size
    this.reindex()
    if (this.clients.size === 0) this.stopTimers()
  }

  private onMessage(client: Client, data: RawData, isBinary: boolean): void {
    if (isBinary) return this.garbage(client, 1003, 'the live protocol speaks JSON text frames')
    const text = Buffer.isBuffer(data) ? data.toString('utf8') : Buffer.concat(Array.isArray(data) ? data : [Buffer.from(data)]).toString('utf8')
    let sub: Subscription
    try {
      sub = parseSubscription(text, (name) => {
        if (!this.node.store.hasView(name)) return undefined
        return { bucketed: bucketSizeOf(this.node.store.view(name).def) !== null }
      })
    } catch (err) {
      if (err instanceof LiveProtocolError) {
        this.sendNow(client, { type: 'error', code: 'bad_subscription', message: err.message })
        return
      }
      return this.garbage(client, 1007, 'a message must be JSON')
    }
    client.sub = sub
    client.subs = sub.subs.map((spec) => ({
      spec,
      bucketMs: bucketSizeOf(this.node.store.view(spec.view).def) ?? NaN,
      keySet: spec.keys ? new Set(spec.keys) : null,
      dirty: new Map(),
      reset: spec.recent === undefined,
    }))
    client.statsDue = sub.stats
    this.reindex()
    this.sendNow(client, { type: 'subscribed', subs: sub.subs.map((s) => s.id), stats: sub.stats, rate: sub.rate })
  }

  private garbage(client: Client, code: number, reason: string): void {
    this.counters.closedForGarbage++
    client.ws.close(code, reason)
    setTimeout(() => client.ws.terminate(), 2000).unref()
    this.detach(client)
  }

  private reindex(): void {
    this.byView.clear()
    for (const client of this.clients) {
      for (const state of client.subs) {
        let list = this.byView.get(state.spec.view)
        if (!list) this.byView.set(state.spec.view, (list = []))
        list.push({ client, state })
      }
    }
  }

  /** First bucket start inside a subscription's window, by the node's clock. */
  private windowStart(state: SubState, now: number): number {
    const n = state.spec.buckets
    if (n === undefined) return -Infinity
    const size = state.bucketMs
    return Math.floor(now / size) * size - (n - 1) * size
  }

  private matches(state: SubState, key: string, now: number): boolean {
    if (state.keySet) return state.keySet.has(key)
    if (!key.startsWith(state.spec.prefix ?? '')) return false
    if (state.spec.buckets === undefined) return true
    return bucketStartOf(key) >= this.windowStart(state, now)
  }

  private onStoreEvent(ev: StoreEvent): void {
    if (ev.kind === 'define') {
      // A new or replaced definition: what a subscriber holds for it may be gone.
      this.resetView(ev.view.name)
      return
    }
    const list = this.byView.get(ev.view.name)
    if (!list) return
    const now = this.node.now()
    for (const { state } of list) {
      // Marked even while a snapshot is pending: an expired key is in no snapshot, yet the
      // client holds it and must learn its exact value.
      if (!this.matches(state, ev.key, now)) continue
      const dirty = state.dirty
      if (state.spec.recent !== undefined) {
        // Most recent last: re-inserting moves a key to the end; the oldest go past the bound.
        dirty.delete(ev.key)
        dirty.set(ev.key, true)
        if (dirty.size > state.spec.recent) dirty.delete(dirty.keys().next().value as string)
      } else {
        dirty.set(ev.key, true)
        if (dirty.size > this.opts.maxDirtyKeys) {
          dirty.clear()
          state.reset = true
        }
      }
    }
  }

  /** Every subscription on `view` gets a fresh snapshot in its next frame (batch import, redefinition). */
  private resetView(view: string): void {
    for (const { state } of this.byView.get(view) ?? []) {
      if (state.spec.recent !== undefined) continue
      state.reset = true
    }
  }

  private startTimers(): void {
    if (this.tickTimer) return
    this.tickTimer = setInterval(() => this.tick(), Math.max(10, this.opts.minIntervalMs / 2))
    this.tickTimer.unref()
    this.statsTimer = setInterval(() => void this.refreshStats(), this.opts.statsIntervalMs)
    this.statsTimer.unref()
    this.heartbeatTimer = setInterval(() => this.heartbeat(), this.opts.heartbeatMs)
    this.heartbeatTimer.unref()
    void this.refreshStats()
  }

  private stopTimers(): void {
    for (const t of [this.tickTimer, this.statsTimer, this.heartbeatTimer]) if (t) clearInterval(t)
    this.tickTimer = this.statsTimer = this.heartbeatTimer = null
  }

  private heartbeat(): void {
    for (const client of this.clients) {
      if (!client.alive) {
        client.ws.terminate()
        this.detach(client)
        continue
      }
      client.alive = false
      client.ws.ping()
    }
  }

  private async refreshStats(): Promise<void> {
    if (this.statsRunning) return
    let wanted = false
    for (const c of this.clients) wanted ||= c.sub.stats
    if (!wanted) return
    this.statsRunning = true
    try {
      this.stats = await this.statsSource.snapshot({ clients: this.clients.size, frames: this.counters.frames, skipped: this.counters.skipped })
      for (const c of this.clients) if (c.sub.stats) c.statsDue = true
    } catch {
      // A figure that cannot be read this time is read again at the next interval.
    } finally {
      this.statsRunning = false
    }
  }

  private tick(): void {
    const at = performance.now()
    const now = this.node.now()
    for (const client of this.clients) {
      if (client.ws.readyState !== WebSocket.OPEN) continue
      const pending = client.statsDue || client.subs.some((s) => s.reset || s.dirty.size > 0)
      if (!pending) continue
      // A little slack: the timer fires at half the interval, and a frame due "now" should not wait a whole tick.
      const interval = Math.max(this.opts.minIntervalMs, 1000 / client.sub.rate)
      if (at - client.lastSent < interval - 5) continue
      if (client.ws.bufferedAmount > this.opts.maxBufferedBytes) {
        this.counters.skipped++
        continue
      }
      const frame = this.frame(client, now)
      client.lastSent = at
      this.counters.frames++
      client.ws.send(JSON.stringify(frame))
    }
  }

  private frame(client: Client, now: number): Record<string, unknown> {
    const subs: Record<string, unknown> = {}
    const horizons: Record<string, number | null> = {}
    for (const state of client.subs) {
      const view = state.spec.view
      if (!this.node.store.hasView(view)) continue
      if (!(view in horizons)) horizons[view] = this.node.batch.get(view)?.horizon ?? null
      if (state.reset) {
        const { keys, truncated } = this.snapshotKeys(state, now)
        // Keys changed since the last frame that the snapshot no longer lists (expired by a
        // batch horizon) come too, with the value a query gives them now.
        const listed = new Set(keys)
        for (const k of state.dirty.keys()) if (!listed.has(k) && this.matches(state, k, now)) keys.push(k)
        state.reset = false
        state.dirty.clear()
        subs[state.spec.id] = { reset: true, truncated, items: keys.map((k) => this.item(state, k)) }
      } else if (state.dirty.size > 0) {
        const items: LiveItem[] = []
        for (const k of state.dirty.keys()) items.push(this.item(state, k))
        state.dirty.clear()
        subs[state.spec.id] = { items }
      }
    }
    const frame: Record<string, unknown> = { type: 'update', time: now, subs, horizons }
    if (client.statsDue && this.stats) {
      frame.stats = this.stats
      client.statsDue = false
    }
    return frame
  }

  /** The keys a fresh snapshot lists: realtime keys, and the batch view's for bucketed views. */
  private snapshotKeys(state: SubState, now: number): { keys: string[]; truncated: boolean } {
    const spec = state.spec
    if (spec.recent !== undefined) return { keys: [], truncated: false }
    if (state.keySet) return { keys: [...state.keySet], truncated: false }
    const prefix = spec.prefix ?? ''
    const from = this.windowStart(state, now)
    const out = new Set<string>()
    let scanned = 0
    let truncated = false
    const take = (key: string) => {
      if (spec.buckets !== undefined && !(bucketStartOf(key) >= from)) return
      out.add(key)
    }
    for (const key of this.node.store.view(spec.view).states.ascending(prefix)) {
      if (!key.startsWith(prefix)) break
      if (++scanned > this.opts.maxScanKeys || out.size >= this.opts.maxSnapshotKeys) {
        truncated = true
        break
      }
      take(key)
    }
    for (const key of this.node.batch.keys(spec.view)) {
      if (out.size >= this.opts.maxSnapshotKeys) {
        truncated = true
        break
      }
      if (key.startsWith(prefix)) take(key)
    }
    return { keys: [...out].sort(), truncated }
  }

  private item(state: SubState, key: string): LiveItem {
    const a = this.node.query(state.spec.view, key)
    let value = a.value
    if (state.spec.size) value = Array.isArray(value) ? value.length : value !== null && typeof value === 'object' ? Object.keys(value).length : value
    const item: LiveItem = { key, value, exact: a.exact }
    if (a.error !== undefined) item.error = a.error
    return item
  }

  /** Sends outside the rate bound: answers to the client's own messages, rare and small. */
  private sendNow(client: Client, msg: unknown): void {
    if (client.ws.readyState === WebSocket.OPEN) client.ws.send(JSON.stringify(msg))
  }

  /** Bytes the sockets of the clients hold unsent: the largest, and over all clients. */
  buffered(): { max: number; total: number } {
    let max = 0
    let total = 0
    for (const c of this.clients) {
      max = Math.max(max, c.ws.bufferedAmount)
      total += c.ws.bufferedAmount
    }
    return { max, total }
  }

  close(): void {
    this.stopTimers()
    for (const u of this.unsubscribe) u()
    for (const c of this.clients) c.ws.terminate()
    this.clients.clear()
    this.byView.clear()
    this.wss.close()
  }
}
