/**
 * What the page knows about one node: the values of its subscriptions, its latest figures and a
 * short history of them. Fed by frames; read by the panels.
 */
import { LiveConnection, type ConnState, type Wants } from './live'
import type { Item, Stats, SubRequest, Update, ViewInfo } from './protocol'

/** The demo's views (demo/views.json); a panel whose view a node lacks says so. */
export const VIEWS = { pageviews: 'pageviews', visitors: 'visitors', online: 'online', profiles: 'profiles' } as const

/** Buckets the charts show. */
export const WINDOW_BUCKETS = 15
const HISTORY = 300

/** The bucket start (ms) of a bucketed key, or NaN. */
export function bucketOf(key: string): number {
  const bar = key.lastIndexOf('|')
  if (bar < 0) return NaN
  const iso = key.slice(bar + 1)
  return iso.endsWith('Z') ? Date.parse(iso) : NaN
}

/** The key without its bucket part (the URL of a pageviews key, the site of a visitors key). */
export function fieldsOf(key: string): string {
  const bar = key.lastIndexOf('|')
  return bar < 0 ? key : key.slice(0, bar)
}

export interface Sample {
  t: number
  writesPerS: number
  p50: number | null
  p99: number | null
  diskBytes: number
  liveBytes: number
  online: number
  rssBytes: number
  cpu: number
}

export class NodeModel {
  replica: string | null = null
  views: ViewInfo[] = []
  readonly items = new Map<string, Map<string, Item>>()
  stats: Stats | null = null
  horizons: Record<string, number | null> = {}
  /** The node's clock at the last frame, and the browser's when it came. */
  private nodeTime = 0
  private seenAt = 0
  readonly history: Sample[] = []
  lastError: string | null = null
  readonly conn: LiveConnection
  private specs = new Map<string, SubRequest>()

  constructor(
    readonly base: string,
    readonly own: boolean,
    private readonly changed: (m: NodeModel, what: 'data' | 'state' | 'hello') => void,
  ) {
    this.conn = new LiveConnection(base, (views) => this.wants(views), {
      hello: (h) => {
        this.replica = h.replica
        this.views = h.views
        this.changed(this, 'hello')
      },
      update: (u) => this.apply(u),
      state: () => this.changed(this, 'state'),
      error: (message) => {
        this.lastError = message
        console.warn(`live subscription to ${this.base}: ${message}`)
      },
    })
  }

  get up(): boolean {
    return this.conn.state === 'open'
  }

  /** The node's clock now, as far as the page can tell (the browser's when it has no frame yet). */
  now(): number {
    return this.seenAt === 0 ? Date.now() : this.nodeTime + (Date.now() - this.seenAt)
  }

  view(name: string): ViewInfo | undefined {
    return this.views.find((v) => v.name === name)
  }

  bucketMs(view: string): number | null {
    return this.view(view)?.bucketMs ?? null
  }

  /** The page's own node gets everything the panels draw; the others what the cluster cards compare. */
  private wants(views: ViewInfo[]): Wants {
    const has = (n: string) => views.some((v) => v.name === n)
    const bucketed = (n: string) => views.some((v) => v.name === n && v.bucketMs !== null)
    const subs: SubRequest[] = []
    if (has(VIEWS.pageviews)) subs.push({ id: 'pv', view: VIEWS.pageviews, prefix: '', ...(bucketed(VIEWS.pageviews) ? { buckets: this.own ? WINDOW_BUCKETS : 2 } : {}) })
    if (has(VIEWS.online)) subs.push({ id: 'online', view: VIEWS.online, prefix: '', size: true })
    if (this.own) {
      if (has(VIEWS.visitors)) subs.push({ id: 'vis', view: VIEWS.visitors, prefix: '', ...(bucketed(VIEWS.visitors) ? { buckets: WINDOW_BUCKETS } : {}) })
      if (has(VIEWS.profiles)) subs.push({ id: 'prof', view: VIEWS.profiles, prefix: '', recent: 12 })
    }
    this.specs = new Map(subs.map((s) => [s.id, s]))
    for (const id of [...this.items.keys()]) if (!this.specs.has(id)) this.items.delete(id)
    return { subs, stats: true }
  }

  private apply(u: Update): void {
    this.nodeTime = u.time
    this.seenAt = Date.now()
    this.horizons = { ...this.horizons, ...u.horizons }
    for (const [id, upd] of Object.entries(u.subs)) {
      let map = this.items.get(id)
      if (!map || upd.reset) this.items.set(id, (map = new Map()))
      const spec = this.specs.get(id)
      for (const it of upd.items) {
        // Recent-first subscriptions keep their order of change: re-inserting moves a key last.
        if (spec?.recent !== undefined) map.delete(it.key)
        map.set(it.key, it)
      }
      if (spec?.recent !== undefined) while (map.size > spec.recent) map.delete(map.keys().next().value as string)
      if (spec?.buckets !== undefined) this.prune(map, spec)
    }
    if (u.stats) {
      this.stats = u.stats
      if (u.stats.views.some((v) => !this.views.some((w) => w.name === v.name))) {
        this.views = u.stats.views.map((v) => ({ name: v.name, type: v.type, bucketMs: v.bucketMs }))
        this.conn.resubscribe(this.views)
      }
      const lat = u.stats.latency.ingest ?? u.stats.latency.write
      this.history.push({
        t: u.stats.time,
        writesPerS: u.stats.writesPerS,
        p50: lat?.p50Ms ?? null,
        p99: lat?.p99Ms ?? null,
        diskBytes: u.stats.storage.diskBytes,
        liveBytes: u.stats.storage.liveBytes,
        online: this.onlineTotal(),
        rssBytes: u.stats.process.rssBytes,
        cpu: u.stats.process.cpuPercent,
      })
      if (this.history.length > HISTORY) this.history.splice(0, this.history.length - HISTORY)
    }
    this.changed(this, 'data')
  }

  /** Buckets that slid out of the window go: the node stops sending them, the page forgets them. */
  private prune(map: Map<string, Item>, spec: SubRequest): void {
    const size = this.bucketMs(spec.view)
    if (size === null || spec.buckets === undefined) return
    const from = Math.floor(this.now() / size) * size - (spec.buckets - 1) * size
    for (const key of map.keys()) if (!(bucketOf(key) >= from)) map.delete(key)
  }

  sub(id: string): Map<string, Item> {
    return this.items.get(id) ?? new Map()
  }

  /** Sum of a counter subscription over one bucket; `exact` when every key of it is. */
  bucketTotal(id: string, start: number): { value: number; exact: boolean; keys: number } {
    let value = 0
    let exact = true
    let keys = 0
    for (const it of this.sub(id).values()) {
      if (bucketOf(it.key) !== start) continue
      value += typeof it.value === 'number' ? it.value : 0
      exact &&= it.exact
      keys++
    }
    return { value, exact: keys > 0 && exact, keys }
  }

  onlineTotal(): number {
    let n = 0
    for (const it of this.sub('online').values()) n += typeof it.value === 'number' ? it.value : 0
    return n
  }

  /** The bucket that holds `t` for a view, or null when the view has no buckets here. */
  bucketAt(view: string, t: number): number | null {
    const size = this.bucketMs(view)
    return size === null ? null : Math.floor(t / size) * size
  }

  get connState(): ConnState {
    return this.conn.state
  }
}
