/**
 * The figures a live client gets with `"stats": true` (docs/live.md): computed once per interval
 * for all clients, from what the node and its metrics already count. Rates and latency quantiles
 * are over the interval since the previous snapshot, so a figure moves when the load moves.
 */
import type { Histogram, Registry } from 'prom-client'
import type { SpeedNode } from '../node.js'
import { bucketSizeOf } from '../query/buckets.js'

export interface LatencyFigure {
  p50Ms: number
  p99Ms: number
  /** Requests observed in the interval. */
  count: number
}

export interface LiveStats {
  replica: string
  /** The node's clock (ms): bucket arithmetic on the page uses it, not the browser's. */
  time: number
  startedAt: number
  writes: number
  writesPerS: number
  keys: number
  views: Array<{ name: string; type: string; keys: number; bucketMs: number | null; horizon: number | null }>
  storage: {
    diskBytes: number
    liveBytes: number
    logBytes: number
    retainedLogBytes: number
    pendingBytes: number
    compactions: number
    compacting: boolean
    snapshotWrites: number
    lastCompactionMs: number
  }
  latency: { ingest: LatencyFigure | null; write: LatencyFigure | null }
  peers: Array<{ replica: string | null; url: string | null; connected: boolean; blocked: boolean; lagOps: number; lagMs: number; bytesIn: number; bytesOut: number; lastSeen: number | null }>
  replication: { deltasIn: number; deltasOut: number; bytesIn: number; bytesOut: number }
  process: { rssBytes: number; cpuPercent: number }
  live: { clients: number; frames: number; skipped: number }
  /** What GET /yjs answers (the Yjs documents held here), or null on a node without Yjs. */
  yjs: Array<{ name: string; bytes: number; clients: number }> | null
}

/** The Yjs side of a node, when it has one (src/yjs/, GET /yjs). */
interface YjsLister {
  list(): Array<{ name: string; bytes: number; clients: number }>
}

function yjsDocs(node: SpeedNode): LiveStats['yjs'] {
  const yjs = (node as unknown as { yjs?: Partial<YjsLister> }).yjs
  if (typeof yjs?.list !== 'function') return null
  return yjs.list().map((d) => ({ name: d.name, bytes: d.bytes, clients: d.clients }))
}

/** Cumulative bucket counts of one histogram series: upper bound -> count. */
type Buckets = Map<number, number>

async function histogramBuckets(registry: Registry, name: string, route: string | null): Promise<Buckets | null> {
  const metric = registry.getSingleMetric(name) as Histogram | undefined
  if (!metric) return null
  const out: Buckets = new Map()
  for (const v of (await metric.get()).values) {
    if (!('metricName' in v) || !String(v.metricName).endsWith('_bucket')) continue
    if (route !== null && v.labels.route !== route) continue
    const le = v.labels.le === '+Inf' ? Infinity : Number(v.labels.le)
    out.set(le, (out.get(le) ?? 0) + v.value)
  }
  return out
}

/** Quantiles of the observations between two cumulative snapshots, interpolated inside a bucket as Prometheus does. */
export function intervalQuantiles(prev: Buckets | null, cur: Buckets): LatencyFigure | null {
  const bounds = [...cur.keys()].sort((a, b) => a - b)
  const counts = bounds.map((le) => (cur.get(le) ?? 0) - (prev?.get(le) ?? 0))
  const total = counts[counts.length - 1] ?? 0
  if (total <= 0) return null
  const q = (p: number) => {
    const rank = p * total
    let lower = 0
    let below = 0
    for (let i = 0; i < bounds.length; i++) {
      const le = bounds[i] as number
      const c = counts[i] as number
      if (c >= rank) {
        // Past the last finite bound there is nothing to interpolate towards: report that bound.
        if (!Number.isFinite(le)) return lower * 1000
        const inBucket = c - below
        return (lower + (inBucket > 0 ? (le - lower) * ((rank - below) / inBucket) : 0)) * 1000
      }
      lower = le
      below = c
    }
    return lower * 1000
  }
  return { p50Ms: round(q(0.5)), p99Ms: round(q(0.99)), count: total }
}

const round = (x: number) => Math.round(x * 100) / 100

/** Keeps what a rate needs between two snapshots. */
export class LiveStatsSource {
  private readonly startedAt: number
  private last: { at: number; writes: number; cpu: NodeJS.CpuUsage; ingest: Buckets | null; write: Buckets | null } | null = null

  constructor(
    private readonly node: SpeedNode,
    private readonly registry: Registry,
  ) {
    this.startedAt = node.now()
  }

  async snapshot(live: LiveStats['live']): Promise<LiveStats> {
    const node = this.node
    const at = performance.now()
    const st = node.stats()
    const cpu = process.cpuUsage()
    const [diskBytes, ingest, write] = await Promise.all([
      node.storage.diskBytes().catch(() => 0),
      histogramBuckets(this.registry, 'speedlayer_http_request_seconds', '/ingest'),
      histogramBuckets(this.registry, 'speedlayer_write_ack_seconds', null),
    ])
    const prev = this.last
    const dt = prev ? (at - prev.at) / 1000 : 0
    const cpuPercent = prev && dt > 0 ? ((cpu.user - prev.cpu.user + cpu.system - prev.cpu.system) / 1e6 / dt) * 100 : 0
    this.last = { at, writes: st.writes, cpu, ingest, write }
    const repl = node.replication.stats()
    return {
      replica: node.id,
      time: node.now(),
      startedAt: this.startedAt,
      writes: st.writes,
      writesPerS: prev && dt > 0 ? Math.round((st.writes - prev.writes) / dt) : 0,
      keys: st.keys,
      views: node.views().map((v) => ({
        name: v.name,
        type: v.type,
        keys: v.keys,
        bucketMs: bucketSizeOf(v.def),
        horizon: node.batch.get(v.name)?.horizon ?? null,
      })),
      storage: {
        diskBytes,
        liveBytes: st.storage.liveBytesEstimate,
        logBytes: st.storage.logBytes,
        retainedLogBytes: node.storage.retainedLog().bytes,
        pendingBytes: st.storage.pendingBytes,
        compactions: st.storage.compactions,
        compacting: st.storage.compacting,
        snapshotWrites: st.storage.snapshotWrites,
        lastCompactionMs: st.storage.lastCompactionMs,
      },
      latency: {
        ingest: ingest ? intervalQuantiles(prev?.ingest ?? null, ingest) : null,
        write: write ? intervalQuantiles(prev?.write ?? null, write) : null,
      },
      peers: node.replication.peers().map((p) => ({
        replica: p.replica,
        url: p.url,
        connected: p.connected,
        blocked: p.blocked,
        lagOps: p.lagOps,
        lagMs: p.lagMs,
        bytesIn: p.bytesIn,
        bytesOut: p.bytesOut,
        lastSeen: p.lastSeen,
      })),
      replication: { deltasIn: repl.deltasIn, deltasOut: repl.deltasOut, bytesIn: repl.bytesIn, bytesOut: repl.bytesOut },
      process: { rssBytes: process.memoryUsage.rss(), cpuPercent: Math.round(cpuPercent) },
      live,
      yjs: yjsDocs(node),
    }
  }
}
