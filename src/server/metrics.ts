/** /metrics in Prometheus text format (prom-client, one registry per node). */
import { Counter, Gauge, Histogram, Registry } from 'prom-client'
import type { SpeedNode } from '../node.js'

export interface ServerMetrics {
  registry: Registry
  request(route: string, method: string, status: number, seconds: number): void
  writeAck(seconds: number): void
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
  return {
    registry,
    request(route, method, status, seconds) {
      requests.inc({ route, method, status: String(status) })
      latency.observe({ route }, seconds)
    },
    writeAck(seconds) {
      ack.observe(seconds)
    },
  }
}
