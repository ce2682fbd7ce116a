/**
 * The live subscription's wire format as the page sees it (docs/live.md is the reference; the
 * server's side is src/server/live.ts). Kept apart from the server's types on purpose: this is
 * what crosses the wire, parsed from JSON, not what the node holds.
 */
export interface Item {
  key: string
  value: unknown
  exact: boolean
  error?: number
}

export interface SubRequest {
  id: string
  view: string
  prefix?: string
  keys?: string[]
  buckets?: number
  size?: boolean
  recent?: number
}

export interface ViewInfo {
  name: string
  type: string
  bucketMs: number | null
}

export interface Hello {
  type: 'hello'
  replica: string
  protocol: number
  maxRate: number
  views: ViewInfo[]
}

export interface Latency {
  p50Ms: number
  p99Ms: number
  count: number
}

export interface PeerStat {
  replica: string | null
  url: string | null
  connected: boolean
  blocked: boolean
  lagOps: number
  lagMs: number
  bytesIn: number
  bytesOut: number
  lastSeen: number | null
}

export interface Stats {
  replica: string
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
  latency: { ingest: Latency | null; write: Latency | null }
  peers: PeerStat[]
  replication: { deltasIn: number; deltasOut: number; bytesIn: number; bytesOut: number }
  process: { rssBytes: number; cpuPercent: number }
  live: { clients: number; frames: number; skipped: number }
  /** The Yjs documents (what GET /yjs answers), or null on a node without Yjs. */
  yjs: Array<{ name: string; bytes: number; clients: number }> | null
}

export interface SubUpdate {
  reset?: boolean
  truncated?: boolean
  items: Item[]
}

export interface Update {
  type: 'update'
  time: number
  subs: Record<string, SubUpdate>
  horizons: Record<string, number | null>
  stats?: Stats
}

export interface ErrorFrame {
  type: 'error'
  code: string
  message: string
}

export type ServerFrame = Hello | Update | ErrorFrame | { type: 'subscribed'; subs: string[] }
