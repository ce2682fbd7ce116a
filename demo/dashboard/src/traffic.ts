/**
 * What the events say, from the page's own node: pageviews per minute for the top URLs, unique
 * visitors per site with their error band, each bucket marked estimate (realtime) or exact
 * (batch), users online, and the profiles touched last.
 */
import { Chart, color, type SeriesSpec } from './charts'
import { h, replaceChildren } from './dom'
import { fmtClock, fmtCompact, fmtInt, fmtPercent } from './format'
import { bucketOf, fieldsOf, VIEWS, WINDOW_BUCKETS, type NodeModel } from './model'

const TOP_URLS = 6
/** The band drawn around an estimate: two standard errors (about 95%). */
const BAND_SIGMAS = 2

/**
 * The buckets a chart shows: the last WINDOW_BUCKETS, but no more than one before the first that
 * has data (a fresh cluster's chart is not mostly empty) and at least six.
 */
export function windowBuckets(node: NodeModel, view: string, sub: string): number[] {
  const size = node.bucketMs(view)
  if (size === null) return []
  const cur = Math.floor(node.now() / size) * size
  let first = cur
  for (const it of node.sub(sub).values()) {
    const b = bucketOf(it.key)
    if (b < first) first = b
  }
  const from = Math.max(cur - (WINDOW_BUCKETS - 1) * size, Math.min(first - size, cur - 5 * size))
  const xs: number[] = []
  for (let x = from; x <= cur; x += size) xs.push(x)
  return xs
}

/** The last bucket start the batch horizon covers, plus half a bucket: where the shading ends. */
function exactUntil(node: NodeModel, view: string): number | null {
  const horizon = node.horizons[view]
  const size = node.bucketMs(view)
  if (horizon == null || size === null) return null
  return horizon - size / 2
}

export class TrafficPanels {
  readonly pageviews: HTMLElement
  readonly visitors: HTMLElement
  readonly online: HTMLElement
  readonly profiles: HTMLElement
  private readonly pvChart: Chart
  private readonly visChart: Chart
  private readonly onlineChart: Chart
  private readonly pvHead: HTMLElement
  private readonly visStrip: HTMLElement
  private readonly onlineSites: HTMLElement
  private readonly profBody: HTMLElement
  private drawn = false
  private shownProfiles = ''

  constructor(
    private readonly node: NodeModel,
    onFirstChart: () => void,
  ) {
    const pvBox = h('div', { class: 'chart' })
    const visBox = h('div', { class: 'chart' })
    const onlineBox = h('div', { class: 'chart' })
    this.pvHead = h('p', { class: 'headline' })
    this.visStrip = h('div', { class: 'buckets', 'aria-label': 'buckets: estimate or exact' })
    this.onlineSites = h('div', { class: 'sites' })
    this.profBody = h('tbody')
    this.pageviews = h(
      'section',
      { class: 'panel', id: 'pageviews' },
      h('div', { class: 'panel-head' }, h('h2', {}, 'Pageviews per minute'), h('span', { class: 'hint' }, `top ${TOP_URLS} URLs · gcounter`)),
      this.pvHead,
      pvBox,
    )
    this.visitors = h(
      'section',
      { class: 'panel', id: 'visitors' },
      h('div', { class: 'panel-head' }, h('h2', {}, 'Unique visitors per minute'), h('span', { class: 'hint' }, `per site · HyperLogLog, band ±${BAND_SIGMAS}σ`)),
      visBox,
      this.visStrip,
    )
    this.online = h(
      'section',
      { class: 'panel', id: 'online' },
      h('div', { class: 'panel-head' }, h('h2', {}, 'Users online'), h('span', { class: 'hint' }, 'per site · OR-set')),
      this.onlineSites,
      onlineBox,
    )
    this.profiles = h(
      'section',
      { class: 'panel', id: 'profiles' },
      h('div', { class: 'panel-head' }, h('h2', {}, 'Last profiles'), h('span', { class: 'hint' }, 'per user · LWW map')),
      h('table', { class: 'grid' }, h('thead', {}, h('tr', {}, ...['user', 'country', 'device', 'last page'].map((t) => h('th', {}, t)))), this.profBody),
    )
    this.pvChart = new Chart(pvBox, {
      height: 240,
      stepped: false,
      exactUntil: () => exactUntil(node, VIEWS.pageviews),
      yFormat: fmtCompact,
      onDraw: () => {
        if (!this.drawn && node.sub('pv').size > 0) {
          this.drawn = true
          onFirstChart()
        }
      },
    })
    this.visChart = new Chart(visBox, { height: 210, exactUntil: () => exactUntil(node, VIEWS.visitors), yFormat: fmtCompact })
    this.onlineChart = new Chart(onlineBox, { height: 120, yFormat: fmtCompact, seconds: true })
  }

  render(): void {
    this.renderPageviews()
    this.renderVisitors()
    this.renderOnline()
    this.renderProfiles()
  }

  private missing(panel: HTMLElement, view: string): boolean {
    const absent = this.node.up && this.node.views.length > 0 && !this.node.view(view)
    panel.classList.toggle('absent', absent)
    panel.dataset.absent = absent ? `this node has no "${view}" view` : ''
    return absent
  }

  private renderPageviews(): void {
    if (this.missing(this.pageviews, VIEWS.pageviews)) return
    const xs = windowBuckets(this.node, VIEWS.pageviews, 'pv')
    const byUrl = new Map<string, Map<number, number>>()
    for (const it of this.node.sub('pv').values()) {
      const url = fieldsOf(it.key)
      let m = byUrl.get(url)
      if (!m) byUrl.set(url, (m = new Map()))
      m.set(bucketOf(it.key), typeof it.value === 'number' ? it.value : 0)
    }
    const total = (m: Map<number, number>) => [...m.values()].reduce((a, b) => a + b, 0)
    const top = [...byUrl.entries()].sort((a, b) => total(b[1]) - total(a[1]) || (a[0] < b[0] ? -1 : 1)).slice(0, TOP_URLS)
    // Buckets before the first one with data have no value yet (null), later empty ones are 0.
    const firstWithData = Math.min(...[...this.node.sub('pv').values()].map((it) => bucketOf(it.key)))
    const series: SeriesSpec[] = top
      .sort((a, b) => (a[0] < b[0] ? -1 : 1))
      .map(([url, m], i) => ({ label: url, color: color(i), values: xs.map((x) => (x < firstWithData ? null : (m.get(x) ?? 0))) }))
    this.pvChart.update(xs, series)
    const cur = xs[xs.length - 1]
    const last = xs[xs.length - 2]
    if (cur !== undefined && last !== undefined) {
      const c = this.node.bucketTotal('pv', cur)
      const l = this.node.bucketTotal('pv', last)
      replaceChildren(this.pvHead, [
        h('span', { class: 'big', 'data-field': 'pv-total-current' }, fmtInt(c.value)),
        ` this minute (${fmtClock(cur)}) · `,
        h('span', { class: 'big' }, fmtInt(l.value)),
        ` at ${fmtClock(last)} `,
        h('span', { class: `badge ${l.exact ? 'exact' : 'rt'}` }, l.exact ? 'exact' : 'realtime'),
        ` · ${byUrl.size} URLs`,
      ])
    }
  }

  private renderVisitors(): void {
    if (this.missing(this.visitors, VIEWS.visitors)) return
    const xs = windowBuckets(this.node, VIEWS.visitors, 'vis')
    const bySite = new Map<string, Map<number, { v: number; e: number; exact: boolean }>>()
    for (const it of this.node.sub('vis').values()) {
      const site = fieldsOf(it.key)
      let m = bySite.get(site)
      if (!m) bySite.set(site, (m = new Map()))
      m.set(bucketOf(it.key), { v: typeof it.value === 'number' ? it.value : 0, e: it.exact ? 0 : (it.error ?? 0), exact: it.exact })
    }
    const sites = [...bySite.keys()].sort()
    const series: SeriesSpec[] = sites.map((site, i) => {
      const m = bySite.get(site) as Map<number, { v: number; e: number }>
      const val = (x: number) => m.get(x)
      return {
        label: site,
        color: color(i + 2),
        values: xs.map((x) => val(x)?.v ?? null),
        band: {
          lo: xs.map((x) => {
            const p = val(x)
            return p ? p.v * (1 - BAND_SIGMAS * p.e) : null
          }),
          hi: xs.map((x) => {
            const p = val(x)
            return p ? p.v * (1 + BAND_SIGMAS * p.e) : null
          }),
        },
      }
    })
    this.visChart.update(xs, series)

    // One chip per bucket (newest first): estimate while realtime, exact once the batch covers it.
    const chips: HTMLElement[] = []
    for (const x of xs.slice().reverse().slice(0, 6)) {
      const parts = sites.map((s) => bySite.get(s)?.get(x)).filter((p): p is { v: number; e: number; exact: boolean } => p !== undefined)
      if (parts.length === 0) continue
      const exact = parts.every((p) => p.exact)
      const sum = parts.reduce((a, p) => a + p.v, 0)
      const err = Math.max(...parts.map((p) => p.e))
      chips.push(
        h(
          'div',
          { class: `bucket ${exact ? 'exact' : 'estimate'}`, 'data-bucket': x, 'data-exact': String(exact), title: exact ? 'exact: the batch layer computed this bucket from the master dataset' : 'estimate: realtime HyperLogLog sketches' },
          h('span', { class: 'when' }, fmtClock(x)),
          h('span', { class: 'count' }, fmtInt(sum)),
          h('span', { class: 'kind' }, exact ? 'exact' : `estimate ±${fmtPercent(BAND_SIGMAS * err)}`),
        ),
      )
    }
    replaceChildren(this.visStrip, chips)
  }

  private renderOnline(): void {
    if (this.missing(this.online, VIEWS.online)) return
    const items = [...this.node.sub('online').values()].sort((a, b) => (a.key < b.key ? -1 : 1))
    const total = items.reduce((a, it) => a + (typeof it.value === 'number' ? it.value : 0), 0)
    replaceChildren(this.onlineSites, [
      h('div', { class: 'site total' }, h('span', { class: 'big', 'data-field': 'online-total' }, fmtInt(total)), h('span', {}, 'all sites')),
      ...items.map((it) => h('div', { class: 'site' }, h('span', { class: 'big' }, fmtInt(typeof it.value === 'number' ? it.value : 0)), h('span', {}, it.key))),
    ])
    const hist = this.node.history
    this.onlineChart.update(
      hist.map((s) => s.t),
      [{ label: 'online', color: color(1), values: hist.map((s) => s.online) }],
    )
  }

  private renderProfiles(): void {
    if (this.missing(this.profiles, VIEWS.profiles)) return
    const items = [...this.node.sub('prof').values()].reverse()
    const sig = JSON.stringify(items)
    if (sig === this.shownProfiles) return
    this.shownProfiles = sig
    const rows = items.map((it) => {
      const v = (it.value ?? {}) as Record<string, unknown>
      const cell = (x: unknown) => h('td', {}, x === undefined ? '–' : typeof x === 'string' ? x : JSON.stringify(x))
      return h('tr', {}, h('td', { class: 'mono' }, it.key), cell(v.country), cell(v.device), cell(v.url))
    })
    replaceChildren(this.profBody, rows.length ? rows : [h('tr', {}, h('td', { colspan: 4, class: 'muted' }, 'waiting for the next profile update…'))])
  }

  /** The text the bench and tests read: is a chart with data on screen? */
  get firstChartDrawn(): boolean {
    return this.drawn
  }
}

