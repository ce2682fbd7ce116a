/**
 * The speedlayer dashboard. It talks to the node that served it over one live subscription, and
 * to every other node it learns of (their peer URLs, ws://HOST:PORT/peer -> http://HOST:PORT)
 * over a smaller one, so each node's own values can be shown side by side.
 */
import './style.css'
import { apiUrl } from './api'
import { ClusterPanel, type ClusterHost } from './cluster'
import { h, setText } from './dom'
import { fmtClock, fmtInt } from './format'
import { KeysPanel } from './keys'
import { NodeModel } from './model'
import { SystemPanels } from './system'
import { TrafficPanels } from './traffic'
import { YjsPanel } from './yjs'

interface DashboardProbe {
  /** performance.now() when the first chart with data was drawn. */
  firstChartAt: number | null
  /** Live frames received, per node. */
  messages(): Record<string, number>
}

declare global {
  interface Window {
    __dashboard: DashboardProbe
  }
}

/** The HTTP base of a peer URL (ws://HOST:PORT/peer), or null. */
function peerBase(url: string): string | null {
  try {
    const u = new URL(url)
    if (u.protocol !== 'ws:' && u.protocol !== 'wss:') return null
    return `${u.protocol === 'wss:' ? 'https:' : 'http:'}//${u.host}`
  } catch {
    return null
  }
}

class App implements ClusterHost {
  readonly own: NodeModel
  private readonly models = new Map<string, NodeModel>()
  private readonly banner: HTMLElement
  private readonly title: HTMLElement
  private readonly pills: HTMLElement
  private readonly toast: HTMLElement
  private readonly footer: HTMLElement
  private readonly cluster: ClusterPanel
  private readonly traffic: TrafficPanels
  private readonly system: SystemPanels
  private readonly keys: KeysPanel
  private readonly yjs: YjsPanel
  private pending = false
  private lastRender = 0
  private wasDown = false
  private reconnectedAt = 0

  constructor(root: HTMLElement) {
    this.own = this.add(location.origin, true)
    this.banner = h('div', { id: 'banner', role: 'status', 'aria-live': 'assertive', hidden: true })
    this.title = h('span', { class: 'where' })
    this.pills = h('div', { class: 'pills' })
    this.toast = h('div', { class: 'toast', role: 'alert', hidden: true })
    this.footer = h('footer', {})
    this.cluster = new ClusterPanel(this)
    this.traffic = new TrafficPanels(this.own, () => {
      window.__dashboard.firstChartAt = performance.now()
      document.documentElement.dataset.firstChart = 'true'
    })
    this.system = new SystemPanels(this.own)
    this.keys = new KeysPanel(this.own)
    this.yjs = new YjsPanel(this.own)
    root.replaceChildren(
      h('header', { class: 'top' }, h('div', { class: 'brand' }, h('span', { class: 'logo', 'aria-hidden': 'true' }, '⚡'), h('strong', {}, 'speedlayer'), this.title), this.pills),
      this.banner,
      h(
        'main',
        {},
        this.cluster.el,
        h('div', { class: 'row two' }, this.traffic.pageviews, this.traffic.visitors),
        h('div', { class: 'row three' }, this.traffic.online, this.system.ingest, this.system.storage),
        h('div', { class: 'row two' }, this.traffic.profiles, this.keys.el),
        this.yjs.el,
      ),
      this.footer,
      this.toast,
    )
    window.__dashboard = {
      firstChartAt: null,
      messages: () => Object.fromEntries(this.nodes().map((n) => [n.replica ?? n.base, n.conn.messages])),
    }
    this.own.conn.start()
    // Clocks on the page ("unreachable since", retry countdown, bucket turnover) move without frames too.
    window.setInterval(() => this.schedule(), 1000)
    this.schedule()
  }

  private add(base: string, own: boolean): NodeModel {
    const m = new NodeModel(base, own, (node, what) => this.changed(node, what))
    this.models.set(base, m)
    return m
  }

  private changed(node: NodeModel, what: 'data' | 'state' | 'hello'): void {
    if (what === 'hello' && !node.own) {
      // The same node reached under two addresses (localhost and 127.0.0.1): keep one.
      const twin = [...this.models.values()].find((m) => m !== node && m.replica === node.replica)
      if (twin) {
        node.conn.stop()
        this.models.delete(node.base)
      }
    }
    if (what === 'data') this.discover(node)
    this.schedule()
  }

  /** Nodes named in a node's peer list that the page does not follow yet. */
  private discover(node: NodeModel): void {
    for (const p of node.stats?.peers ?? []) {
      if (p.url === null) continue
      const base = peerBase(p.url)
      if (base === null || this.models.has(base)) continue
      if (p.replica !== null && this.nodeByReplica(p.replica)) continue
      this.add(base, false).conn.start()
    }
  }

  nodes(): NodeModel[] {
    return [...this.models.values()].sort((a, b) => {
      const x = a.replica ?? `~${a.base}`
      const y = b.replica ?? `~${b.base}`
      return x < y ? -1 : x > y ? 1 : 0
    })
  }

  nodeByReplica(replica: string): NodeModel | undefined {
    return [...this.models.values()].find((m) => m.replica === replica)
  }

  async post(node: NodeModel, path: string): Promise<boolean> {
    try {
      const res = await fetch(apiUrl(node.base, path), { method: 'POST' })
      if (res.ok) return true
      const body = (await res.json().catch(() => null)) as { error?: { message?: string } } | null
      this.say(`${node.replica ?? node.base}: ${body?.error?.message ?? `HTTP ${res.status}`}`)
    } catch {
      this.say(`${node.replica ?? node.base} did not answer (${new URL(node.base).host})`)
    }
    return false
  }

  private say(text: string): void {
    this.toast.textContent = text
    this.toast.hidden = false
    window.setTimeout(() => (this.toast.hidden = true), 5000)
  }

  /**
   * Renders on the next animation frame, at most 4 times a second: frames from three nodes
   * arrive up to 12 times a second, and one render shows them all.
   */
  private schedule(): void {
    if (this.pending) return
    this.pending = true
    const wait = Math.max(0, this.lastRender + 250 - performance.now())
    window.setTimeout(
      () =>
        requestAnimationFrame(() => {
          this.pending = false
          this.lastRender = performance.now()
          this.render()
        }),
      wait,
    )
  }

  private render(): void {
    this.renderBanner()
    const own = this.own
    const host = new URL(own.base).host
    setText(this.title, own.replica ? `${own.replica} · ${host}` : host)
    document.title = `speedlayer · ${own.replica ?? host}`
    const nodes = this.nodes()
    const up = nodes.filter((n) => n.up)
    const rate = up.reduce((a, n) => a + (n.stats?.writesPerS ?? 0), 0)
    this.pills.replaceChildren(
      h('span', { class: `pill ${own.up ? 'up' : 'down'}` }, own.up ? 'live' : 'offline'),
      h('span', { class: 'pill neutral' }, `${up.length}/${nodes.length} nodes up`),
      h('span', { class: 'pill neutral', 'data-field': 'cluster-rate' }, `${fmtInt(rate)} writes/s`),
    )
    this.cluster.render()
    this.traffic.render()
    this.system.render()
    this.keys.render()
    this.yjs.render()
    const frames = nodes.reduce((a, n) => a + n.conn.messages, 0)
    setText(this.footer, `Pushed over ws://${host}/live (docs/live.md) · ${fmtInt(frames)} frames from ${nodes.length} node${nodes.length === 1 ? '' : 's'} · speedlayer: realtime views as CRDTs, replicated peer to peer`)
  }

  private renderBanner(): void {
    const own = this.own
    const b = this.banner
    if (own.connState === 'down') {
      this.wasDown = true
      const secs = Math.max(0, Math.ceil((own.conn.retryAt - Date.now()) / 1000))
      const since = own.conn.lastHeard ? ` Last data at ${fmtClock(own.conn.lastHeard, true)}; the figures below are frozen.` : ''
      b.hidden = false
      b.className = 'banner down'
      b.dataset.state = 'down'
      setText(b, `Node ${own.replica ?? ''} at ${new URL(own.base).host} is down or unreachable.${since} Reconnecting ${secs > 0 ? `in ${secs} s` : 'now'}…`)
      document.body.classList.add('offline')
      return
    }
    document.body.classList.remove('offline')
    if (own.up && this.wasDown) {
      this.wasDown = false
      this.reconnectedAt = Date.now()
    }
    if (own.up && Date.now() - this.reconnectedAt < 4000) {
      b.hidden = false
      b.className = 'banner ok'
      b.dataset.state = 'reconnected'
      setText(b, `Reconnected to ${own.replica ?? ''}: live again.`)
      return
    }
    b.hidden = true
    b.dataset.state = own.up ? 'up' : 'connecting'
  }
}

new App(document.getElementById('app') as HTMLElement)
