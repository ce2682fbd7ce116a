/**
 * Synthetic but plausible pageview traffic for the demo: a few sites, each with Zipf-popular
 * pages; a pool of returning users with Zipf popularity (a few come back all the time, most
 * rarely), fixed home countries and devices; sessions in which one user views a handful of pages
 * on one site and then leaves.
 *
 * Pure given its seed and the times passed in: no clock, no I/O. The caller decides the pace
 * (`next` once per event) and where each event goes: a session sticks to one node, as behind a
 * load balancer with sticky sessions, so the node that took a session's pageviews is the one that
 * can remove the user from `online` once the session ends (an OR-set remove only removes the adds
 * its replica has seen: the same node has seen them all).
 */
import { WeightedSampler, hash32, prng, zipfSampler } from './random.js'

export interface PageviewEvent {
  kind: 'pageview'
  /** Event time, ms since the epoch. */
  ts: number
  site: string
  /** site + path, e.g. "shop.example/products/4": one key space over all sites. */
  url: string
  user: string
  session: string
  country: string
  device: string
}

export interface Generated {
  event: PageviewEvent
  /** Index of the node the session is pinned to. */
  node: number
  /** This was the session's last page: the user leaves after it. */
  ended: boolean
}

export interface GeneratorOptions {
  /** Events per second the caller will ask for: sizes the user pool and the concurrent sessions. */
  rate: number
  nodes: number
  seed: number
}

const SITES: ReadonlyArray<{ name: string; weight: number; paths: string[] }> = [
  {
    name: 'shop.example',
    weight: 5,
    paths: ['/', '/products/1', '/search', '/cart', '/products/2', '/category/shoes', '/products/3', '/checkout', '/category/bags', ...numbered('/products/', 4, 80), '/category/hats', '/returns', '/contact'],
  },
  {
    name: 'docs.example',
    weight: 3,
    paths: ['/', '/getting-started', '/api', '/guide/install', '/guide/views', '/guide/replication', '/api/views', '/api/ingest', '/api/query', '/faq', ...numbered('/api/ref/', 1, 40)],
  },
  {
    name: 'blog.example',
    weight: 2,
    paths: ['/', '/posts/crdts-explained', '/posts/lambda-architecture', '/posts/hyperloglog', '/about', ...numbered('/posts/archive/', 1, 60)],
  },
]

function numbered(prefix: string, from: number, to: number): string[] {
  const out: string[] = []
  for (let i = from; i <= to; i++) out.push(`${prefix}${i}`)
  return out
}

/** Rough shares of web traffic; enough for a map that is not uniform. */
const COUNTRIES: ReadonlyArray<readonly [string, number]> = [
  ['US', 28], ['IN', 12], ['DE', 9], ['GB', 8], ['BR', 7], ['FR', 6], ['JP', 6],
  ['CA', 5], ['ES', 4], ['NL', 3], ['PL', 3], ['AU', 3], ['MX', 3], ['KR', 3],
]
const DEVICES: ReadonlyArray<readonly [string, number]> = [
  ['desktop', 52], ['mobile', 43], ['tablet', 5],
]

export const DEMO_SITES: readonly string[] = SITES.map((s) => s.name)

/** Pages per session: geometric with this mean (1 + Geometric(1/mean)), capped. */
const MEAN_PAGES = 5
const MAX_PAGES = 40
/** The number of concurrent sessions swings by this much over SWING_MS, so `online` moves. */
const SWING = 0.3
const SWING_MS = 5 * 60_000

interface Session {
  id: string
  user: number
  site: number
  node: number
  country: string
  device: string
  pagesLeft: number
}

export class PageviewGenerator {
  /** Distinct users that can ever appear (the size of `profiles`). */
  readonly users: number
  /** Concurrent sessions on average (about the size of `online`). */
  readonly sessionsTarget: number
  private readonly rnd: () => number
  private readonly userPick: WeightedSampler
  private readonly sitePick = new WeightedSampler(SITES.map((s) => s.weight))
  private readonly pagePick = SITES.map((s) => zipfSampler(s.paths.length, 1.1))
  private readonly countryPick = new WeightedSampler(COUNTRIES.map((c) => c[1]))
  private readonly devicePick = new WeightedSampler(DEVICES.map((d) => d[1]))
  private readonly active: Session[] = []
  private readonly busy = new Set<number>()
  private readonly runId: string
  private sessionsStarted = 0
  private nextNode = 0
  private t0 = NaN

  constructor(private readonly opts: GeneratorOptions) {
    if (!(opts.rate > 0) || !Number.isInteger(opts.nodes) || opts.nodes < 1) throw new Error('the generator needs a rate > 0 and at least one node')
    this.rnd = prng(opts.seed)
    this.runId = (opts.seed >>> 0).toString(36)
    // A session views a page every ~5 s; bounded so that the OR-sets of `online` stay small.
    this.sessionsTarget = Math.max(20, Math.min(2000, Math.round(opts.rate * 5)))
    this.users = Math.max(1000, Math.round(opts.rate * 20), this.sessionsTarget * 4)
    this.userPick = zipfSampler(this.users, 0.8)
  }

  /** Sessions under way. */
  get sessions(): number {
    return this.active.length
  }

  /** The next pageview, at event time `ts`. */
  next(ts: number): Generated {
    if (Number.isNaN(this.t0)) this.t0 = ts
    const swing = 1 + SWING * Math.sin((2 * Math.PI * (ts - this.t0)) / SWING_MS)
    const target = Math.max(1, Math.round(this.sessionsTarget * swing))
    if (this.active.length < target || this.active.length === 0) this.active.push(this.startSession())
    const i = Math.floor(this.rnd() * this.active.length)
    const s = this.active[i] as Session
    const site = SITES[s.site] as (typeof SITES)[number]
    const path = site.paths[(this.pagePick[s.site] as WeightedSampler).pick(this.rnd())] as string
    const user = userName(s.user)
    const event: PageviewEvent = { kind: 'pageview', ts, site: site.name, url: `${site.name}${path}`, user, session: s.id, country: s.country, device: s.device }
    s.pagesLeft--
    const ended = s.pagesLeft <= 0
    if (ended) {
      // Swap-remove: the order of sessions does not matter.
      const last = this.active.pop() as Session
      if (last !== s) this.active[i] = last
      this.busy.delete(s.user)
    }
    return { event, node: s.node, ended }
  }

  private startSession(): Session {
    // A popular user who is not already browsing; the pool is 4x the sessions, so this ends fast.
    let user = this.userPick.pick(this.rnd())
    for (let tries = 0; this.busy.has(user); tries++) {
      user = tries < 8 ? this.userPick.pick(this.rnd()) : Math.floor(this.rnd() * this.users)
    }
    this.busy.add(user)
    const traits = hash32(userName(user))
    const country = (COUNTRIES[this.countryPick.pick((traits & 0xffff) / 0x10000)] as readonly [string, number])[0]
    // Most sessions come from the user's usual device; some from another.
    const home = this.devicePick.pick((traits >>> 16) / 0x10000)
    const device = (DEVICES[this.rnd() < 0.85 ? home : this.devicePick.pick(this.rnd())] as readonly [string, number])[0]
    const pages = Math.min(MAX_PAGES, 1 + Math.floor(Math.log(1 - this.rnd()) / Math.log(1 - 1 / MEAN_PAGES)))
    const node = this.nextNode
    this.nextNode = (this.nextNode + 1) % this.opts.nodes
    return { id: `${this.runId}-${(this.sessionsStarted++).toString(36)}`, user, site: this.sitePick.pick(this.rnd()), node, country, device, pagesLeft: pages }
  }
}

function userName(rank: number): string {
  return `u${rank}`
}
