/**
 * The cluster panel: a map of the nodes and their links, a card per node with the figures that
 * make divergence visible (pageviews of this minute and of the last one, side by side on every
 * node), and the links with their lag, bytes and a button that cuts or heals each one.
 */
import { h, replaceChildren, setText, svg } from './dom'
import { fmtBytes, fmtClock, fmtCompact, fmtInt, fmtMs } from './format'
import { VIEWS, type NodeModel } from './model'
import type { PeerStat } from './protocol'

export interface ClusterHost {
  nodes(): NodeModel[]
  own: NodeModel
  /** POSTs to a node's API; resolves false (and tells the visitor) when it fails. */
  post(node: NodeModel, path: string): Promise<boolean>
  nodeByReplica(replica: string): NodeModel | undefined
}

/** A node whose peers have lacked something of it for longer than this is shown "behind". */
const BEHIND_MS = 5000

export type LinkState = 'up' | 'cut' | 'down'

export interface Pair {
  a: string
  b: string
  ab: PeerStat | undefined
  ba: PeerStat | undefined
  state: LinkState
}

/** The links between the nodes the page knows, as each end reports them. */
export function pairs(nodes: NodeModel[]): Pair[] {
  const byKey = new Map<string, Pair>()
  const ids = nodes.map((n) => n.replica).filter((r): r is string => r !== null)
  for (const n of nodes) {
    if (n.replica === null || !n.stats || !n.up) continue
    for (const p of n.stats.peers) {
      if (p.replica === null) continue
      const me: string = n.replica
      const a: string = me < p.replica ? me : p.replica
      const b: string = me < p.replica ? p.replica : me
      const key = `${a}\u0000${b}`
      let pair = byKey.get(key)
      if (!pair) byKey.set(key, (pair = { a, b, ab: undefined, ba: undefined, state: 'down' }))
      if (n.replica === a) pair.ab = p
      else pair.ba = p
    }
  }
  for (const pair of byKey.values()) {
    pair.state = pair.ab?.blocked || pair.ba?.blocked ? 'cut' : pair.ab?.connected || pair.ba?.connected ? 'up' : 'down'
  }
  // Nodes that are known but whose link nobody reports yet still appear as a pair.
  for (let i = 0; i < ids.length; i++)
    for (let j = i + 1; j < ids.length; j++) {
      const sorted: string[] = [ids[i] as string, ids[j] as string].sort()
      const a = sorted[0] as string
      const b = sorted[1] as string
      const key = `${a}\u0000${b}`
      if (!byKey.has(key)) byKey.set(key, { a, b, ab: undefined, ba: undefined, state: 'down' })
    }
  return [...byKey.values()].sort((x, y) => (x.a + x.b < y.a + y.b ? -1 : 1))
}

interface Card {
  el: HTMLElement
  state: HTMLElement
  pvCur: HTMLElement
  pvCurDelta: HTMLElement
  pvLast: HTMLElement
  pvLastDelta: HTMLElement
  online: HTMLElement
  rate: HTMLElement
  foot: HTMLElement
  action: HTMLButtonElement
}

export class ClusterPanel {
  readonly el: HTMLElement
  private readonly map: SVGSVGElement
  private readonly cards: HTMLElement
  private readonly linksBody: HTMLElement
  private readonly summary: HTMLElement
  private readonly agree: HTMLElement
  private readonly cardByNode = new Map<NodeModel, Card>()
  private busy = false
  private shownLinks = ''
  private shownMap = ''

  constructor(private readonly host: ClusterHost) {
    this.map = svg('svg', { viewBox: '0 0 260 210', class: 'topology', role: 'img', 'aria-label': 'cluster map' })
    this.cards = h('div', { class: 'node-cards' })
    this.linksBody = h('tbody')
    this.summary = h('p', { class: 'cluster-summary' })
    this.agree = h('p', { class: 'agree', 'data-field': 'agree' })
    this.el = h(
      'section',
      { class: 'panel cluster', id: 'cluster' },
      h('div', { class: 'panel-head' }, h('h2', {}, 'Cluster'), this.summary),
      h('div', { class: 'cluster-body' }, h('div', { class: 'map-wrap' }, this.map, h('div', { class: 'legend' }, h('span', { class: 'lg up' }, 'linked'), h('span', { class: 'lg cut' }, 'cut'), h('span', { class: 'lg down' }, 'down'))), this.cards),
      this.agree,
      h(
        'table',
        { class: 'links' },
        h('thead', {}, h('tr', {}, ...['link', 'state', 'lag (ops)', 'lag (time)', 'bytes →', 'bytes ←', ''].map((t) => h('th', {}, t)))),
        this.linksBody,
      ),
    )
  }

  private card(n: NodeModel): Card {
    let c = this.cardByNode.get(n)
    if (c) return c
    const fig = (label: string, field: string) => {
      const dd = h('dd', { 'data-field': field }, '–')
      const delta = h('span', { class: 'delta' })
      return { box: h('div', { class: 'fig' }, h('dt', {}, label), dd, delta), dd, delta }
    }
    const cur = fig('pageviews this minute', 'pv-current')
    const last = fig('last minute', 'pv-last')
    const online = fig('users online', 'online')
    const rate = fig('writes/s', 'rate')
    const state = h('span', { class: 'state' })
    const foot = h('p', { class: 'node-foot' })
    const action = h('button', { class: 'btn', type: 'button' }) as HTMLButtonElement
    action.addEventListener('click', () => void this.toggleIsolation(n))
    const el = h(
      'article',
      { class: 'node-card' },
      h('header', {}, h('span', { class: 'dot' }), h('h3', { class: 'node-name' }, n.replica ?? new URL(n.base).host), n.own ? h('span', { class: 'tag' }, 'this page') : null, state),
      h('p', { class: 'addr' }, new URL(n.base).host),
      h('dl', { class: 'figs' }, cur.box, last.box, online.box, rate.box),
      foot,
      h('div', { class: 'card-actions' }, action),
    )
    c = { el, state, pvCur: cur.dd, pvCurDelta: cur.delta, pvLast: last.dd, pvLastDelta: last.delta, online: online.dd, rate: rate.dd, foot, action }
    this.cardByNode.set(n, c)
    return c
  }

  render(): void {
    const nodes = this.host.nodes()
    const links = pairs(nodes)
    const own = this.host.own
    const now = own.now()
    const cur = own.bucketAt(VIEWS.pageviews, now)
    const size = own.bucketMs(VIEWS.pageviews)
    const last = cur !== null && size !== null ? cur - size : null

    // Cards, in node order; the figures of every node for the same two buckets.
    const figures = nodes.map((n) => ({
      n,
      cur: cur !== null && n.up ? n.bucketTotal('pv', cur) : null,
      last: last !== null && n.up ? n.bucketTotal('pv', last) : null,
    }))
    const maxCur = Math.max(0, ...figures.map((f) => f.cur?.value ?? 0))
    const maxLast = Math.max(0, ...figures.map((f) => f.last?.value ?? 0))
    const lastValues = figures.filter((f) => f.last !== null).map((f) => (f.last as { value: number }).value)
    const cards: HTMLElement[] = []
    for (const f of figures) {
      const n = f.n
      const c = this.card(n)
      cards.push(c.el)
      c.el.dataset.node = n.replica ?? n.base
      c.el.dataset.state = n.connState
      c.el.querySelector('.node-name')!.textContent = n.replica ?? new URL(n.base).host
      const lagMs = Math.max(0, ...(n.stats?.peers.map((p) => (p.connected ? p.lagMs : 0)) ?? [0]))
      setText(c.state, n.up ? (lagMs > BEHIND_MS ? `behind ${fmtMs(lagMs)}` : 'up') : n.connState === 'down' ? 'down' : 'connecting')
      c.state.className = `state ${n.up ? (lagMs > BEHIND_MS ? 'lag' : 'up') : n.connState}`
      this.figure(c.pvCur, c.pvCurDelta, f.cur, maxCur, cur, 0.02)
      this.figure(c.pvLast, c.pvLastDelta, f.last, maxLast, last, 0)
      const online = n.up ? n.onlineTotal() : null
      setText(c.online, online === null ? '–' : fmtInt(online))
      c.online.dataset.value = String(online ?? '')
      setText(c.rate, n.up && n.stats ? fmtInt(n.stats.writesPerS) : '–')
      const st = n.stats
      setText(c.foot, st && n.up ? `${fmtCompact(st.keys)} keys · ${fmtBytes(st.storage.diskBytes)} on disk · ${fmtBytes(st.process.rssBytes)} RSS · CPU ${st.process.cpuPercent}%` : n.connState === 'down' ? `unreachable since ${fmtClock(n.conn.lastHeard || Date.now(), true)} · retrying` : 'connecting…')
      const mine = links.filter((p) => n.replica !== null && (p.a === n.replica || p.b === n.replica))
      const isolated = mine.length > 0 && mine.every((p) => p.state === 'cut')
      const anyCut = mine.some((p) => p.state === 'cut')
      c.action.dataset.action = anyCut ? 'heal' : 'isolate'
      c.action.dataset.node = n.replica ?? ''
      setText(c.action, anyCut ? `Heal ${n.replica ?? ''}` : `Cut off ${n.replica ?? ''}`)
      c.action.className = anyCut ? 'btn heal' : 'btn cut'
      c.action.disabled = this.busy || n.replica === null || mine.length === 0
      c.el.classList.toggle('isolated', isolated)
    }
    if (this.cards.childElementCount !== cards.length || cards.some((c, i) => this.cards.children[i] !== c)) replaceChildren(this.cards, cards)

    // Do the nodes agree on the last complete bucket? (The current one moves under everyone's feet.)
    const allUp = nodes.every((n) => n.up)
    const agree = lastValues.length >= 2 && lastValues.every((v) => v === lastValues[0])
    this.agree.dataset.value = String(agree && allUp)
    this.agree.dataset.bucket = last === null ? '' : String(last)
    this.agree.className = `agree ${lastValues.length < 2 ? '' : agree ? 'yes' : 'no'}`
    setText(
      this.agree,
      last === null || lastValues.length < 2
        ? ''
        : agree
          ? `✓ All ${lastValues.length} nodes agree on ${fmtClock(last)}: ${fmtInt(lastValues[0] as number)} pageviews.`
          : `✗ The nodes disagree on ${fmtClock(last)} (${figures.map((f) => `${f.n.replica}: ${f.last ? fmtInt(f.last.value) : '–'}`).join(', ')}): a partition kept some writes apart. They converge once the links are healed.`,
    )

    const cut = links.filter((p) => p.state === 'cut')
    const down = nodes.filter((n) => !n.up)
    const summary = down.length > 0 ? `${down.length} of ${nodes.length} nodes unreachable` : cut.length > 0 ? `partitioned: ${cut.length} of ${links.length} links cut` : `${nodes.length} nodes · all links up`
    setText(this.summary, summary)
    this.summary.className = `cluster-summary ${down.length > 0 || cut.length > 0 ? 'warn' : 'ok'}`
    this.summary.dataset.state = down.length > 0 ? 'degraded' : cut.length > 0 ? 'partitioned' : 'ok'

    this.renderLinks(links)
    this.renderMap(nodes, links)
  }

  private figure(dd: HTMLElement, delta: HTMLElement, v: { value: number; exact: boolean } | null, max: number, bucket: number | null, tolerance: number): void {
    setText(dd, v === null ? '–' : fmtInt(v.value))
    dd.dataset.value = v === null ? '' : String(v.value)
    dd.dataset.bucket = bucket === null ? '' : String(bucket)
    dd.dataset.exact = String(v?.exact ?? false)
    const behind = v === null ? 0 : max - v.value
    const big = behind > Math.max(2, max * tolerance)
    setText(delta, v === null || behind === 0 ? (v?.exact ? 'exact' : '') : `−${fmtInt(behind)}`)
    delta.className = `delta ${big ? 'behind' : ''} ${v?.exact && behind === 0 ? 'exact' : ''}`
  }

  private renderLinks(links: Pair[]): void {
    const sig = JSON.stringify([links, this.busy])
    if (sig === this.shownLinks) return
    this.shownLinks = sig
    const rows = links.map((p) => {
      const state = h('span', { class: `pill ${p.state}` }, p.state === 'up' ? 'linked' : p.state)
      const both = (f: (s: PeerStat) => string, x: PeerStat | undefined, y: PeerStat | undefined) => `${x ? f(x) : '–'} / ${y ? f(y) : '–'}`
      const btn = h('button', { class: `btn small ${p.state === 'cut' ? 'heal' : 'cut'}`, type: 'button', 'data-action': p.state === 'cut' ? 'heal-link' : 'cut-link', 'data-link': `${p.a}-${p.b}` }, p.state === 'cut' ? 'Heal' : 'Cut') as HTMLButtonElement
      btn.disabled = this.busy
      btn.addEventListener('click', () => void this.toggleLink(p))
      return h(
        'tr',
        { 'data-link': `${p.a}-${p.b}`, 'data-state': p.state },
        h('td', {}, `${p.a} ⇄ ${p.b}`),
        h('td', {}, state),
        h('td', { class: 'num' }, both((s) => fmtInt(s.lagOps), p.ab, p.ba)),
        h('td', { class: 'num' }, both((s) => fmtMs(s.lagMs), p.ab, p.ba)),
        h('td', { class: 'num' }, p.ab ? fmtBytes(p.ab.bytesOut) : p.ba ? fmtBytes(p.ba.bytesIn) : '–'),
        h('td', { class: 'num' }, p.ab ? fmtBytes(p.ab.bytesIn) : p.ba ? fmtBytes(p.ba.bytesOut) : '–'),
        h('td', {}, btn),
      )
    })
    replaceChildren(this.linksBody, rows.length ? rows : [h('tr', {}, h('td', { colspan: 7, class: 'muted' }, 'This node has no peers: start others with --peers to see a cluster.'))])
  }

  private renderMap(nodes: NodeModel[], links: Pair[]): void {
    const sig = JSON.stringify([nodes.map((n) => [n.replica, n.up, n.own]), links.map((p) => [p.a, p.b, p.state])])
    if (sig === this.shownMap) return
    this.shownMap = sig
    const cx = 130
    const cy = 108
    const r = nodes.length <= 1 ? 0 : 72
    const pos = new Map<string, { x: number; y: number }>()
    nodes.forEach((n, i) => {
      const a = -Math.PI / 2 + (2 * Math.PI * i) / Math.max(1, nodes.length)
      pos.set(n.replica ?? n.base, { x: cx + r * Math.cos(a), y: cy + r * Math.sin(a) })
    })
    const els: SVGElement[] = []
    for (const p of links) {
      const a = pos.get(p.a)
      const b = pos.get(p.b)
      if (!a || !b) continue
      els.push(svg('line', { x1: a.x, y1: a.y, x2: b.x, y2: b.y, class: `edge ${p.state}` }))
    }
    for (const n of nodes) {
      const q = pos.get(n.replica ?? n.base)
      if (!q) continue
      els.push(
        svg(
          'g',
          { class: `vertex ${n.up ? 'up' : 'down'} ${n.own ? 'own' : ''}`, transform: `translate(${q.x},${q.y})` },
          svg('circle', { r: 24 }),
          svg('text', { y: 4, 'text-anchor': 'middle' }, n.replica ?? '?'),
        ),
      )
    }
    this.map.replaceChildren(...els)
  }

  /** Cuts a node off from every other (one side of each link suffices) or heals all its links. */
  private async toggleIsolation(n: NodeModel): Promise<void> {
    if (n.replica === null) return
    const mine = pairs(this.host.nodes()).filter((p) => p.a === n.replica || p.b === n.replica)
    const heal = mine.some((p) => p.state === 'cut')
    await this.run(mine.map((p) => (heal ? this.heal(p) : this.cut(p, n.replica as string))))
  }

  private async toggleLink(p: Pair): Promise<void> {
    await this.run([p.state === 'cut' ? this.heal(p) : this.cut(p, p.b)])
  }

  private async run(work: Array<Promise<unknown>>): Promise<void> {
    this.busy = true
    this.render()
    try {
      await Promise.all(work)
    } finally {
      this.busy = false
      this.render()
    }
  }

  /** Cuts the link at the end that is not `victim` when it is reachable, else at the victim. */
  private async cut(p: Pair, victim: string): Promise<void> {
    const other = p.a === victim ? p.b : p.a
    const at = this.host.nodeByReplica(other)
    if (at?.up) await this.host.post(at, `/peers/${encodeURIComponent(victim)}/disconnect`)
    else {
      const v = this.host.nodeByReplica(victim)
      if (v) await this.host.post(v, `/peers/${encodeURIComponent(other)}/disconnect`)
    }
  }

  /** Heals both ends: whichever end cut it, `connect` there restores it. */
  private async heal(p: Pair): Promise<void> {
    const a = this.host.nodeByReplica(p.a)
    const b = this.host.nodeByReplica(p.b)
    await Promise.all([a?.up && p.ab?.blocked !== false ? this.host.post(a, `/peers/${encodeURIComponent(p.b)}/connect`) : null, b?.up && p.ba?.blocked !== false ? this.host.post(b, `/peers/${encodeURIComponent(p.a)}/connect`) : null])
  }
}
