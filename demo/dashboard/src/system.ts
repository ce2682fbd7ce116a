/** How the page's own node is doing: ingest rate, write latency, storage and compaction. */
import { Chart, color } from './charts'
import { h, replaceChildren } from './dom'
import { fmtBytes, fmtCompact, fmtInt, fmtMs } from './format'
import type { NodeModel } from './model'

export class SystemPanels {
  readonly ingest: HTMLElement
  readonly storage: HTMLElement
  private readonly ingestChart: Chart
  private readonly storageChart: Chart
  private readonly ingestFigs: HTMLElement
  private readonly storageFigs: HTMLElement

  constructor(private readonly node: NodeModel) {
    const ib = h('div', { class: 'chart' })
    const sb = h('div', { class: 'chart' })
    this.ingestFigs = h('dl', { class: 'mini-figs' })
    this.storageFigs = h('dl', { class: 'mini-figs' })
    this.ingest = h('section', { class: 'panel', id: 'ingest' }, h('div', { class: 'panel-head' }, h('h2', {}, 'Ingest and write latency'), h('span', { class: 'hint' }, 'this node · request to durable ack')), this.ingestFigs, ib)
    this.storage = h('section', { class: 'panel', id: 'storage' }, h('div', { class: 'panel-head' }, h('h2', {}, 'Storage and compaction'), h('span', { class: 'hint' }, 'this node · LevelDB')), this.storageFigs, sb)
    this.ingestChart = new Chart(ib, { height: 150, seconds: true, yFormat: fmtCompact, y2Format: (v) => `${v < 10 ? v.toFixed(1) : Math.round(v)} ms` })
    this.storageChart = new Chart(sb, { height: 150, seconds: true, yFormat: (v) => fmtBytes(v) })
  }

  render(): void {
    const st = this.node.stats
    const hist = this.node.history
    const fig = (label: string, value: string, field?: string) => h('div', {}, h('dt', {}, label), h('dd', field ? { 'data-field': field } : {}, value))
    if (st) {
      const lat = st.latency.ingest ?? st.latency.write
      replaceChildren(this.ingestFigs, [
        fig('writes/s', fmtInt(st.writesPerS), 'writes-rate'),
        fig('p50', lat ? fmtMs(lat.p50Ms) : '–'),
        fig('p99', lat ? fmtMs(lat.p99Ms) : '–'),
        fig('writes', fmtCompact(st.writes)),
      ])
      replaceChildren(this.storageFigs, [
        fig('on disk', fmtBytes(st.storage.diskBytes), 'disk-bytes'),
        fig('live data', fmtBytes(st.storage.liveBytes)),
        fig('compactions', fmtInt(st.storage.compactions), 'compactions'),
        fig('last compaction', st.storage.compactions > 0 ? fmtMs(st.storage.lastCompactionMs) : '–'),
      ])
    }
    const t = hist.map((s) => s.t)
    this.ingestChart.update(t, [
      { label: 'writes/s', color: color(0), values: hist.map((s) => s.writesPerS) },
      { label: 'p50', color: color(2), values: hist.map((s) => s.p50), scale: 'y2', width: 1.5 },
      { label: 'p99', color: color(3), values: hist.map((s) => s.p99), scale: 'y2', width: 1.5, dash: [4, 3] },
    ])
    this.storageChart.update(t, [
      { label: 'disk', color: color(7), values: hist.map((s) => s.diskBytes) },
      { label: 'live', color: color(2), values: hist.map((s) => s.liveBytes) },
    ])
  }
}
