/**
 * Time-series charts on uPlot. A chart is rebuilt only when its set of series changes (a new top
 * URL); otherwise new data is set in place. Bucketed charts shade what the batch layer made
 * exact, left of the horizon, so a visitor sees estimates turn exact as imports land.
 */
import uPlot from 'uplot'
import 'uplot/dist/uPlot.min.css'
import { fmtClock } from './format'

export interface SeriesSpec {
  label: string
  color: string
  values: Array<number | null>
  /** A band drawn around the series (the error of an estimate). */
  band?: { lo: Array<number | null>; hi: Array<number | null> }
  dash?: number[]
  /** A second y scale (right axis), e.g. latency next to a rate. */
  scale?: 'y2'
  width?: number
}

export interface ChartOptions {
  height: number
  /** Formats y values on the axis and in the legend. */
  yFormat?: (v: number) => string
  y2Format?: (v: number) => string
  /** x values up to this (ms) are exact (batch); the area is shaded and labelled. */
  exactUntil?: () => number | null
  /** Bars instead of lines (per-bucket counts read better as steps). */
  stepped?: boolean
  onDraw?: () => void
  /** Seconds on the x axis ticks (live figures) rather than minutes (buckets). */
  seconds?: boolean
}

const PALETTE = ['#4f46e5', '#0891b2', '#16a34a', '#ea580c', '#db2777', '#7c3aed', '#ca8a04', '#475569']
export const color = (i: number): string => PALETTE[i % PALETTE.length] as string

function fade(hex: string, alpha: number): string {
  const n = parseInt(hex.slice(1), 16)
  return `rgba(${(n >> 16) & 255},${(n >> 8) & 255},${n & 255},${alpha})`
}

export class Chart {
  private plot: uPlot | null = null
  private signature = ''
  private readonly observer: ResizeObserver

  constructor(
    private readonly el: HTMLElement,
    private readonly opts: ChartOptions,
  ) {
    this.observer = new ResizeObserver(() => {
      if (this.plot && this.el.clientWidth > 0) this.plot.setSize({ width: this.el.clientWidth, height: this.opts.height })
    })
    this.observer.observe(el)
  }

  update(xs: number[], series: SeriesSpec[]): void {
    const data: uPlot.AlignedData = [xs.map((x) => x / 1000)]
    for (const s of series) {
      data.push(s.values)
      if (s.band) data.push(s.band.hi, s.band.lo)
    }
    const sig = series.map((s) => `${s.label}:${s.band ? 1 : 0}:${s.scale ?? ''}`).join('|')
    if (this.plot && sig === this.signature) {
      this.plot.setData(data)
      return
    }
    this.signature = sig
    this.plot?.destroy()
    this.plot = new uPlot(this.options(series), data, this.el)
  }

  private options(series: SeriesSpec[]): uPlot.Options {
    const o = this.opts
    const s: uPlot.Series[] = [{ value: (_u, v) => (v == null ? '–' : fmtClock(v * 1000, o.seconds)) }]
    const bands: uPlot.Band[] = []
    /** Series that only carry a band's edges: their legend rows are hidden. */
    const bandRows: number[] = []
    const paths = o.stepped ? uPlot.paths.stepped?.({ align: 1 }) : undefined
    for (const spec of series) {
      const fmt = spec.scale === 'y2' ? o.y2Format : o.yFormat
      s.push({
        label: spec.label,
        stroke: spec.color,
        width: spec.width ?? 2,
        scale: spec.scale ?? 'y',
        ...(spec.dash ? { dash: spec.dash } : {}),
        ...(paths ? { paths } : {}),
        points: { show: true, size: 5, fill: spec.color },
        value: (_u, v) => (v == null ? '' : fmt ? fmt(v) : String(Math.round(v))),
        spanGaps: false,
      })
      if (spec.band) {
        const hi = s.length
        s.push({ label: `${spec.label} +`, stroke: 'transparent', scale: spec.scale ?? 'y', points: { show: false } })
        s.push({ label: `${spec.label} −`, stroke: 'transparent', scale: spec.scale ?? 'y', points: { show: false } })
        bands.push({ series: [hi, hi + 1], fill: fade(spec.color, 0.18) })
        bandRows.push(hi, hi + 1)
      }
    }
    const hasY2 = series.some((x) => x.scale === 'y2')
    const axisStyle = { stroke: '#64748b', grid: { stroke: '#eef2f7', width: 1 }, ticks: { stroke: '#e2e8f0', width: 1 }, font: '11px system-ui, sans-serif' }
    const axes: uPlot.Axis[] = [
      {
        ...axisStyle,
        space: o.seconds ? 70 : 50,
        incrs: o.seconds ? [5, 10, 15, 30, 60, 120, 300, 600] : [60, 120, 300, 600, 900, 1800, 3600],
        values: (_u, ticks) => ticks.map((t) => fmtClock(t * 1000, o.seconds)),
      },
      { ...axisStyle, size: 56, values: (_u, ticks) => ticks.map((t) => (o.yFormat ? o.yFormat(t) : String(t))) },
    ]
    if (hasY2) axes.push({ ...axisStyle, scale: 'y2', side: 1, size: 56, grid: { show: false }, values: (_u, ticks) => ticks.map((t) => (o.y2Format ? o.y2Format(t) : String(t))) })
    return {
      width: Math.max(200, this.el.clientWidth),
      height: o.height,
      series: s,
      bands,
      axes,
      scales: { x: { time: true }, y: { range: (_u, min, max) => [0, Math.max(1, max * 1.1)] }, ...(hasY2 ? { y2: { range: (_u, _min, max) => [0, Math.max(1, max * 1.2)] } } : {}) },
      legend: { show: true, live: true },
      cursor: { points: { size: 7 }, drag: { x: false, y: false } },
      hooks: {
        init: [
          (u) => {
            const rows = u.root.querySelectorAll('.u-legend .u-series')
            for (const i of bandRows) rows[i]?.classList.add('band')
          },
        ],
        drawClear: [(u) => this.shadeExact(u)],
        draw: [() => o.onDraw?.()],
      },
    }
  }

  /** Shades the buckets the batch horizon covers and labels both sides. */
  private shadeExact(u: uPlot): void {
    const until = this.opts.exactUntil?.()
    if (until == null) return
    const xs = u.data[0]
    if (xs.length === 0) return
    // From the first bucket that has a value: the covered past before it holds nothing to show.
    let firstIdx = -1
    for (let i = 0; i < xs.length && firstIdx < 0; i++) for (let k = 1; k < u.data.length; k++) if (u.data[k]?.[i] != null) firstIdx = i
    if (firstIdx < 0) return
    const first = xs[firstIdx] as number
    const half = xs.length > 1 ? ((xs[1] as number) - (xs[0] as number)) / 2 : 0
    const cut = until / 1000
    if (cut < first) return
    const ctx = u.ctx
    const left = Math.max(u.bbox.left, u.valToPos(first - half, 'x', true))
    const right = Math.min(u.bbox.left + u.bbox.width, u.valToPos(cut, 'x', true))
    ctx.save()
    ctx.fillStyle = 'rgba(22, 163, 74, 0.08)'
    ctx.fillRect(left, u.bbox.top, right - left, u.bbox.height)
    ctx.strokeStyle = 'rgba(22, 163, 74, 0.6)'
    ctx.setLineDash([4, 4])
    ctx.beginPath()
    ctx.moveTo(right, u.bbox.top)
    ctx.lineTo(right, u.bbox.top + u.bbox.height)
    ctx.stroke()
    const px = devicePixelRatio || 1
    ctx.font = `${11 * px}px system-ui, sans-serif`
    ctx.fillStyle = 'rgba(21, 128, 61, 0.9)'
    ctx.textAlign = 'left'
    if (right - left > 90 * px) ctx.fillText('exact (batch)', left + 6 * px, u.bbox.top + 14 * px)
    ctx.textAlign = 'left'
    ctx.fillStyle = 'rgba(71, 85, 105, 0.9)'
    if (u.bbox.left + u.bbox.width - right > 60 * px) ctx.fillText('realtime', right + 6 * px, u.bbox.top + 14 * px)
    ctx.restore()
  }

  destroy(): void {
    this.observer.disconnect()
    this.plot?.destroy()
    this.plot = null
  }
}
