/** Ingest totals per node since start, for /metrics and the dashboard. */
import type { SpeedNode } from '../node.js'

/** Totals since start, for /metrics and the dashboard. */
export interface IngestStats {
  /** Ingest requests answered 200. */
  batches: number
  /** Events accepted by those requests. */
  events: number
  /** Per view: events its rule rejected. */
  rejected: Map<string, number>
  /** Per view: events its rule turned into a write that was applied. */
  applied: Map<string, number>
  /** Ingest requests refused in pass 1: a bad or too long line, a body cut short. */
  badBatches: number
  /** Bodies that went to a temp file because they were larger than the memory bound. */
  spooled: number
  /** Body bytes read by ingest requests, refused ones included. */
  bytes: number
  /** Writes (folded ops) the accepted requests applied: `events / writes` is the folding factor. */
  writes: number
}

const statsByNode = new WeakMap<SpeedNode, IngestStats>()

/** The ingest totals of a node (created empty on first use). */
export function ingestStats(node: SpeedNode): IngestStats {
  let s = statsByNode.get(node)
  if (!s) statsByNode.set(node, (s = { batches: 0, events: 0, rejected: new Map(), applied: new Map(), badBatches: 0, spooled: 0, bytes: 0, writes: 0 }))
  return s
}
