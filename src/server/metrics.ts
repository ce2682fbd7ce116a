/** /metrics in Prometheus text format (prom-client, one registry per node). */
import { Counter, Gauge, Histogram, Registry } from 'prom-client'
import type { SpeedNode } from '../node.js'
import { ingestStats } from '../ingest/ingest.js'

export interface ServerMetrics {
  registry: Registry
  request(route: string, method: string, status: number, seconds: number): void
  writeAck(seconds: number): void
  /** A POST /ingest answered 200: from its start to the answer (every write durable). */
  ingestBatch(seconds: number): void
}

export function createMetrics(node: SpeedNode): ServerMetrics {
  const registry = new Registry()
  registry.setDefaultLabels({ replica: node.id })
  const requests = new Counter({
    name: 'speedlayer_http_requests_total',
    help: 'HTTP requests by route, method and status',
    labelNames: ['route', 'method', 'status'],
    registers: [registry],
  })
  const latency = new Histogram({
    name: 'speedlayer_http_request_seconds',
    help: 'HTTP request duration by route',
    labelNames: ['route'],
    buckets: [0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1],
    registers: [registry],
  })
  const ack = new Histogram({
    name: 'speedlayer_write_ack_seconds',
    help: 'Time from receiving a write to its durable acknowledgement',
    buckets: [0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5],
    registers: [registry],
  })
  const gauge = (name: string, help: string, read: () => number | Promise<number>) =>
    new Gauge({
      name,
      help,
      registers: [registry],
      async collect() {
        this.set(await read())
      },
    })
  gauge('speedlayer_writes_total', 'Acknowledged writes since start', () => node.stats().writes)
  gauge('speedlayer_keys', 'Keys held in memory over all views', () => node.stats().keys)
  gauge('speedlayer_views', 'Views defined', () => node.stats().views)
  gauge('speedlayer_dropped_by_redefinition_total', 'Values dropped because their view definition lost to a concurrent one', () => node.stats().droppedByRedefinition)
  gauge('speedlayer_storage_batches_total', 'Group commits written', () => node.storage.getStats().batches)
  gauge('speedlayer_storage_log_bytes_total', 'Bytes appended to the delta log since start', () => node.storage.getStats().logBytes)
  gauge('speedlayer_storage_pending_bytes', 'Bytes queued or in flight to disk', () => node.storage.getStats().pendingBytes)
  gauge('speedlayer_storage_compactions_total', 'Compactions completed', () => node.storage.getStats().compactions)
  gauge('speedlayer_storage_compacting', '1 while a compaction runs', () => (node.storage.getStats().compacting ? 1 : 0))
  gauge('speedlayer_storage_snapshot_writes_total', 'Snapshots written by compaction', () => node.storage.getStats().snapshotWrites)
  gauge('speedlayer_storage_live_bytes_estimate', 'Estimated encoded bytes of the live state', () => node.storage.getStats().liveBytesEstimate)
  gauge('speedlayer_storage_disk_bytes', 'Bytes the data directory takes on disk', () => node.storage.diskBytes())
  gauge('speedlayer_recovery_seconds', 'Time the last start spent recovering', () => node.recovery.ms / 1000)
  gauge('speedlayer_batch_imports_total', 'Batch views imported here that won', () => node.batch.stats().imports)
  gauge('speedlayer_batch_merged_total', 'Batch views from peers that won here', () => node.batch.stats().merged)
  gauge('speedlayer_batch_expired_keys_total', 'Realtime keys dropped because a batch horizon came to cover them', () => node.batch.stats().expiredKeys)
  gauge('speedlayer_batch_dropped_covered_total', 'Ops and deltas for buckets a batch horizon covers, dropped (they join to nothing)', () => node.batch.stats().droppedCovered)
  const repl = () => node.replication.stats()
  gauge('speedlayer_replication_deltas_in_total', 'Deltas received from peers and applied', () => repl().deltasIn)
  gauge('speedlayer_replication_deltas_out_total', 'Deltas sent to peers', () => repl().deltasOut)
  gauge('speedlayer_replication_duplicates_in_total', 'Deltas received that this node already had', () => repl().duplicatesIn)
  gauge('speedlayer_replication_dropped_in_total', 'Deltas and states received for a view this node does not hold under that type', () => repl().droppedIn)
  gauge('speedlayer_replication_bytes_in_total', 'Peer protocol bytes received', () => repl().bytesIn)
  gauge('speedlayer_replication_bytes_out_total', 'Peer protocol bytes sent', () => repl().bytesOut)
  gauge('speedlayer_replication_catchups_total', 'Catch-ups run (on connect, after a slow period, by the sweep)', () => repl().catchUps)
  gauge('speedlayer_replication_catchup_bytes_total', 'Bytes shipped by catch-ups from the log', () => repl().catchUpBytes)
  gauge('speedlayer_replication_journal_states_total', 'States shipped by catch-ups for keys whose deltas had left the log', () => repl().journalStates)
  gauge('speedlayer_replication_journal_keys', 'Keys the catch-up journal tracks for peers that may lack their deltas', () => node.replication.replicator.journal.size())
  gauge('speedlayer_replication_antientropy_runs_total', 'Anti-entropy sessions started', () => repl().antiEntropyRuns)
  gauge('speedlayer_replication_antientropy_bytes_total', 'Bytes shipped by anti-entropy (digests and states)', () => repl().antiEntropyBytes)
  gauge('speedlayer_replication_links_refused_total', 'Peer links closed by this node (auth, protocol, garbage, duplicates)', () => repl().linksRefused)
  gauge('speedlayer_replication_malformed_total', 'Malformed peer messages received', () => repl().malformed)
  gauge('speedlayer_replication_peers_connected', 'Peers with an established link', () => node.replication.replicator.connectedCount())
  gauge('speedlayer_storage_log_retained_bytes', 'Log bytes kept on disk (for peers, or until compaction)', () => node.storage.retainedLog().bytes)
  const yjs = () => node.yjs.getStats()
  gauge('speedlayer_yjs_documents', 'Yjs documents this node holds (loaded or not)', () => yjs().documents)
  gauge('speedlayer_yjs_documents_loaded', 'Yjs documents in memory', () => yjs().loaded)
  gauge('speedlayer_yjs_clients', 'y-websocket clients connected', () => yjs().clients)
  gauge('speedlayer_yjs_updates_total', 'Yjs updates persisted (from clients and peers)', () => yjs().updates)
  gauge('speedlayer_yjs_update_bytes_total', 'Bytes of the Yjs updates persisted', () => yjs().updateBytes)
  gauge('speedlayer_yjs_compactions_total', 'Yjs documents compacted into a snapshot', () => yjs().compactions)
  gauge('speedlayer_yjs_loads_total', 'Yjs documents loaded from disk', () => yjs().loads)
  gauge('speedlayer_yjs_unloads_total', 'Idle Yjs documents unloaded from memory', () => yjs().unloads)
  gauge('speedlayer_yjs_clients_refused_total', 'y-websocket clients closed for malformed or unknown messages', () => yjs().clientsRefused)
  gauge('speedlayer_yjs_peer_updates_in_total', 'Yjs updates received from peers', () => yjs().peerUpdatesIn)
  gauge('speedlayer_yjs_peer_updates_out_total', 'Yjs updates sent to peers (live)', () => yjs().peerUpdatesOut)
  gauge('speedlayer_yjs_catchup_bytes_total', 'Bytes of Yjs updates sent to peers by catch-up', () => yjs().catchUpBytes)
  const perPeer = (name: string, help: string, read: (p: ReturnType<SpeedNode['replication']['peers']>[number]) => number) =>
    new Gauge({
      name,
      help,
      labelNames: ['peer'],
      registers: [registry],
      collect() {
        this.reset()
        for (const p of node.replication.peers()) if (p.replica) this.set({ peer: p.replica }, read(p))
      },
    })
  perPeer('speedlayer_peer_connected', '1 while the link to this peer is established', (p) => (p.connected ? 1 : 0))
  perPeer('speedlayer_peer_lag_ops', 'Deltas this node holds that the peer has not acknowledged', (p) => p.lagOps)
  perPeer('speedlayer_peer_lag_ms', 'How long the peer has lacked something this node holds', (p) => p.lagMs)
  perPeer('speedlayer_peer_bytes_in_total', 'Bytes received from this peer', (p) => p.bytesIn)
  perPeer('speedlayer_peer_bytes_out_total', 'Bytes sent to this peer', (p) => p.bytesOut)
  const ingestLatency = new Histogram({
    name: 'speedlayer_ingest_batch_seconds',
    help: 'Time from the start of a POST /ingest to its answer, every write of the batch durable',
    buckets: [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10],
    registers: [registry],
  })
  const ingest = () => ingestStats(node)
  gauge('speedlayer_ingest_batches_total', 'POST /ingest requests answered 200', () => ingest().batches)
  gauge('speedlayer_ingest_bad_batches_total', 'POST /ingest requests refused whole (a bad or too long line, a body cut short): nothing applied', () => ingest().badBatches)
  gauge('speedlayer_ingest_events_total', 'Events accepted by POST /ingest (lines that are JSON objects)', () => ingest().events)
  gauge('speedlayer_ingest_bytes_total', 'Body bytes read by POST /ingest, refused bodies included', () => ingest().bytes)
  gauge('speedlayer_ingest_writes_total', 'Writes ingest applied after folding the events of a batch per view and key', () => ingest().writes)
  gauge('speedlayer_ingest_spooled_total', 'Ingest bodies larger than the memory bound, kept in a temp file between the passes', () => ingest().spooled)
  const perView = (name: string, help: string, read: () => Map<string, number>) =>
    new Gauge({
      name,
      help,
      labelNames: ['view'],
      registers: [registry],
      collect() {
        this.reset()
        for (const [view, n] of read()) this.set({ view }, n)
      },
    })
  perView('speedlayer_ingest_view_applied_total', "Events a view's ingest rule turned into an applied write", () => ingest().applied)
  perView('speedlayer_ingest_view_rejected_total', "Events a view's ingest rule could not use (or whose write the store refused)", () => ingest().rejected)
  return {
    registry,
    request(route, method, status, seconds) {
      requests.inc({ route, method, status: String(status) })
      latency.observe({ route }, seconds)
    },
    writeAck(seconds) {
      ack.observe(seconds)
    },
    ingestBatch(seconds) {
      ingestLatency.observe(seconds)
    },
  }
}
