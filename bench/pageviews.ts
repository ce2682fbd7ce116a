/**
 * A seeded generator of pageview events for the hourly pageview views (bench/pageview-views.json, the demo's schema with hour buckets), shared by the ingest
 * benchmark and the query end-to-end test, and the exact answers a batch layer would compute
 * from the same events.
 *
 * URLs and users are Zipf-distributed (rank r drawn with weight 1/(r+1)^s), as real traffic is:
 * a few hot pages and heavy users, a long tail. Event times are spread evenly over the period and
 * distinct (so last-writer-wins by event time has one answer), then shuffled within small windows:
 * events arrive slightly out of order, as they do from real collectors.
 */

export interface PageviewEvent {
  kind: 'pageview' | 'click'
  url: string
  user: string
  site: string
  country: string
  device: string
  ts: number
}

export interface PageviewOptions {
  seed: number
  events: number
  /** Event time of the first event (ms since the epoch) and the length of the period. */
  start: number
  durationMs: number
  urls: number
  users: number
  /** Zipf exponents. */
  urlSkew?: number
  userSkew?: number
  /** Fraction of events that are clicks (filtered out by the demo's pageview rules). */
  clicks?: number
}

const SITES = ['shop.example', 'docs.example', 'blog.example']
const COUNTRIES = ['DE', 'FR', 'US', 'JP', 'BR', 'IN']
const DEVICES = ['mobile', 'desktop', 'tablet']

/** mulberry32: a tiny seeded PRNG, uniform in [0, 1). */
export function prng(seed: number): () => number {
  let a = seed >>> 0
  return () => {
    a = (a + 0x6d2b79f5) >>> 0
    let t = a
    t = Math.imul(t ^ (t >>> 15), t | 1)
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61)
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296
  }
}

/** Draws ranks 0..n-1 with weight 1/(r+1)^s, by binary search over the cumulative weights. */
export function zipfSampler(n: number, s: number, rnd: () => number): () => number {
  const cdf = new Float64Array(n)
  let total = 0
  for (let r = 0; r < n; r++) cdf[r] = total += 1 / Math.pow(r + 1, s)
  return () => {
    const x = rnd() * total
    let lo = 0
    let hi = n - 1
    while (lo < hi) {
      const mid = (lo + hi) >>> 1
      if ((cdf[mid] as number) < x) lo = mid + 1
      else hi = mid
    }
    return lo
  }
}

export function generatePageviews(o: PageviewOptions): PageviewEvent[] {
  const rnd = prng(o.seed)
  const url = zipfSampler(o.urls, o.urlSkew ?? 1, rnd)
  const user = zipfSampler(o.users, o.userSkew ?? 0.9, rnd)
  const clicks = o.clicks ?? 0.1
  const out: PageviewEvent[] = []
  for (let i = 0; i < o.events; i++) {
    const u = url()
    out.push({
      kind: rnd() < clicks ? 'click' : 'pageview',
      url: `/page/${u}`,
      user: `u${user()}`,
      site: SITES[u % SITES.length] as string,
      country: COUNTRIES[Math.floor(rnd() * COUNTRIES.length)] as string,
      device: DEVICES[Math.floor(rnd() * DEVICES.length)] as string,
      // Distinct as long as events <= durationMs.
      ts: o.start + Math.floor((i * o.durationMs) / o.events),
    })
  }
  // Out of order within windows of 64 events.
  for (let w = 0; w < out.length; w += 64) {
    const end = Math.min(out.length, w + 64)
    for (let i = end - 1; i > w; i--) {
      const j = w + Math.floor(rnd() * (i - w + 1))
      ;[out[i], out[j]] = [out[j] as PageviewEvent, out[i] as PageviewEvent]
    }
  }
  return out
}

export function toNdjson(events: readonly PageviewEvent[]): string {
  let s = ''
  for (const e of events) s += `${JSON.stringify(e)}\n`
  return s
}

/** The exact answers for the demo views (pageviews, visitors, online, profiles) over `events`. */
export interface ExactViews {
  /** `url|<hour>` -> pageviews. */
  pageviews: Map<string, number>
  /** `url|<hour>` -> distinct users. */
  visitors: Map<string, Set<string>>
  /** site -> users. */
  online: Map<string, Set<string>>
  /** user -> the fields of their latest event (by event time). */
  profiles: Map<string, { ts: number; value: { country: string; device: string; url: string } }>
}

export const HOUR_MS = 3_600_000

export function hourKey(url: string, ts: number): string {
  return `${url}|${new Date(Math.floor(ts / HOUR_MS) * HOUR_MS).toISOString()}`
}

/** What a batch layer computes: exact, from all the events, optionally only those before `until`. */
export function exactViews(events: readonly PageviewEvent[], until = Infinity): ExactViews {
  const x: ExactViews = { pageviews: new Map(), visitors: new Map(), online: new Map(), profiles: new Map() }
  for (const e of events) {
    if (e.ts >= until) continue
    const p = x.profiles.get(e.user)
    if (!p || p.ts < e.ts) x.profiles.set(e.user, { ts: e.ts, value: { country: e.country, device: e.device, url: e.url } })
    if (e.kind !== 'pageview') continue
    const k = hourKey(e.url, e.ts)
    x.pageviews.set(k, (x.pageviews.get(k) ?? 0) + 1)
    let v = x.visitors.get(k)
    if (!v) x.visitors.set(k, (v = new Set()))
    v.add(e.user)
    let o = x.online.get(e.site)
    if (!o) x.online.set(e.site, (o = new Set()))
    o.add(e.user)
  }
  return x
}
