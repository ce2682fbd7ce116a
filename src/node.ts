/**
 * openNode: the embedding API. It wires a ViewStore to its durable copy (and, later, to peers);
 * the CLI and the demo use exactly what an embedder uses.
 */
import * as encoding from 'lib0/encoding'
import { hlcTick, ZERO } from '../crdts/hlc.js'
import { standardError } from '../crdts/hll.js'
import type { OpContext, Timestamp } from '../crdts/types.js'
import { StoreError, ViewStore, type StoreLimits, type StoreListener, type View } from './store/viewStore.js'
import type { ScanPage } from './store/keyIndex.js'
import type { ViewDefinition } from './store/definition.js'
import { Storage, type RecoveryReport, type StorageOptions, type StorageStats } from './storage/engine.js'
import type { StorageAdapter } from './storage/adapter.js'
import { openLevelAdapter } from './storage/levelAdapter.js'
import { memoryAdapter } from './storage/memoryAdapter.js'
import { Replicator, type PeerInfo, type ReplicationStats, type ReplicatorOptions } from './replication/replicator.js'
import { Dialer, PeerServer } from './replication/wsTransport.js'
import { replicateBatchViews, type BatchReplicationStats } from './query/batchReplication.js'
import { BatchViews, type BatchEntries, type BatchStats, type ImportResult } from './query/batchViews.js'
import { queryKey, queryRange, type PointAnswer, type RangeAnswer, type RangeQuery } from './query/answer.js'
import type { Stamp } from '../crdts/hlc.js'
import { YjsDocs, type YjsOptions } from './yjs/docs.js'
import { YjsPeers } from './yjs/peers.js'
import type { IncomingMessage } from 'node:http'
import type { Duplex } from 'node:stream'

export interface NodeOptions {
  /** The replica id: persisted in the data directory, which then refuses any other. */
  id: string
  /** LevelDB directory (created if missing). Without it, and without `adapter`, the node keeps no disk. */
  dataDir?: string
  /** A storage adapter of the embedder's choosing, instead of `dataDir`. */
  adapter?: StorageAdapter
  /** Views to define at start: NAME -> definition, as in a `--views` file. */
  views?: Record<string, unknown>
  fsync?: boolean
  /** Event times (`ts`) further than this in the future are refused. */
  maxDriftMs?: number
  storage?: Partial<StorageOptions>
  limits?: Partial<StoreLimits>
  /** Wall clock in ms; tests may pass their own. */
  now?: () => number
  /** Where log lines go (the CLI passes stderr). */
  log?: (line: string) => void
  /** Peer URLs to dial (ws://HOST:PORT/peer); the node accepts whoever dials it too. */
  peers?: string[]
  /** Shared secret every peer must prove before any data moves. */
  secret?: string
  maxBackoffMs?: number
  /** Largest peer message accepted. */
  maxPeerPayload?: number
  replication?: Partial<Omit<ReplicatorOptions, 'secret' | 'setTimer'>>
  /** Yjs documents: idle unloading and compaction bounds (src/yjs/docs.ts). */
  yjs?: Partial<Omit<YjsOptions, 'fsync' | 'now' | 'log'>>
}

export class NodeError extends Error {
  override readonly name = 'NodeError'
  constructor(
    readonly code: 'overload' | 'bad_op' | 'closed',
    message: string,
  ) {
    super(message)
  }
}

export interface ViewSummary {
  name: string
  type: string
  def: ViewDefinition
  keys: number
}

export interface ReadResult {
  value: unknown
  /** Relative standard error, for estimates (hll). */
  error?: number
}

/** One write of `applyMany`. */
export interface Write {
  view: string
  key: string
  op: unknown
}

export interface ApplyManyResult {
  /** Writes refused exactly as `apply` would refuse them (nothing of them changed): index in the list and why. */
  refused: Array<{ index: number; error: StoreError }>
  /** Resolves once every write that was applied is durable (the acknowledgement). */
  durable: Promise<void>
}

export interface SpeedNode {
  readonly id: string
  /** Event times (`ts`) further than this many ms ahead of `now()` are refused (--max-drift). */
  readonly maxDriftMs: number
  /** The node's wall clock in ms (the `now` option; Date.now by default). */
  now(): number
  readonly store: ViewStore
  readonly storage: Storage
  readonly recovery: RecoveryReport
  /** Applies an op; resolves with the new value once the write is durable (the acknowledgement). */
  apply(view: string, key: string, op: unknown): Promise<ReadResult>
  /**
   * The bulk form of `apply`, for ingest: every write is checked exactly as `apply` checks it and
   * applied in memory before this returns (so they all share the next group commit); a write that
   * `apply` would refuse is skipped and listed in `refused`, the others are applied. No value is
   * computed. Throws NodeError 'overload' or 'closed' before applying anything, like `apply`.
   */
  applyMany(writes: readonly Write[]): ApplyManyResult
  read(view: string, key: string): ReadResult
  scan(view: string, opts: { prefix?: string; after?: string; limit?: number }): ScanPage<unknown>
  defineView(name: string, def: unknown): Promise<'created' | 'exists'>
  views(): ViewSummary[]
  subscribe(listener: StoreListener): () => void
  stats(): NodeStats
  readonly replication: NodeReplication
  /** Batch views (src/query/): imports, and the join for batch views from peers. */
  readonly batch: NodeBatch
  /** Yjs documents (src/yjs/): what /yjs serves, persisted in the node's LevelDB and replicated to its peers. */
  readonly yjs: YjsDocs
  /** A key answered from the batch view (covered buckets, exact) or the realtime view (GET /query/:view/:key). */
  query(view: string, key: string): PointAnswer
  /** One value over the buckets `prefix|<start>` with start in [from, to) (GET /query/:view?prefix=...). */
  queryRange(view: string, q: RangeQuery): RangeAnswer
  /** Flushes what is queued and closes the storage. Idempotent. */
  close(): Promise<void>
}

export interface NodeReplication {
  readonly replicator: Replicator
  /** Hands a WebSocket upgrade request for /peer to the peer protocol. */
  handleUpgrade(req: IncomingMessage, socket: Duplex, head: Buffer): void
  peers(): PeerInfo[]
  /** Cuts the link to a peer and keeps it cut; false if this node never saw that replica. */
  disconnect(replica: string): boolean
  /** Lets a cut peer connect again (and redials it); false if never seen. */
  connect(replica: string): boolean
  stats(): ReplicationStats
}

/**
 * The batch views of a node (see src/query/batchViews.ts). Replication carries a batch view as the
 * bytes of `encode` and joins it with `merge`; `onChange` says when one changed here.
 */
export interface NodeBatch {
  /**
   * Imports a batch view for `view` with `horizon` (ms): `entries` are key -> exact value (as in
   * the NDJSON of PUT /batch), or entries validated by `begin`. Resolves once durable; `won` is
   * false when this node holds one with a higher (horizon, stamp), which then stays. Throws
   * QueryError (400/404) for a view that is unknown or not bucketed, a bad horizon or value.
   */
  import(view: string, horizon: number, entries: BatchEntries | Iterable<readonly [string, unknown]> | Record<string, unknown>, stamp?: Stamp): Promise<ImportResult>
  /** Checks view and horizon and returns an empty set of entries to fill line by line. */
  begin(view: string, horizon: number): BatchEntries
  /** The batch view held for `view`, encoded (lib0, canonical), or null. */
  encode(view: string): Uint8Array | null
  /** Joins an encoded batch view from a peer; true if it won (realtime keys it covers expire). */
  merge(view: string, bytes: Uint8Array): boolean
  /** Names of the views this node holds a batch view for, sorted. */
  views(): string[]
  /** The keys of the batch view that applies to `view` now, ascending (empty when none). */
  keys(view: string): readonly string[]
  /** A summary of the batch view held for `view` (GET /batch/:view), or null. */
  get(view: string): BatchSummary | null
  /** Called with the view's name whenever its batch view changes here (local import or merge). */
  onChange(listener: (view: string) => void): () => void
  stats(): BatchStats & { droppedCovered: number; replication: BatchReplicationStats }
}

export interface BatchSummary {
  view: string
  type: string
  horizon: number
  keys: number
  stamp: { ts: number; c: number; replica: string }
  /** False when the view's definition no longer has the type and bucket size it was imported for. */
  applies: boolean
}

export interface NodeStats {
  writes: number
  storage: StorageStats
  keys: number
  views: number
  droppedByRedefinition: number
}

export async function openNode(options: NodeOptions): Promise<SpeedNode> {
  const now = options.now ?? Date.now
  const log = options.log ?? ((line: string) => process.stderr.write(`${line}\n`))
  const maxDrift = options.maxDriftMs ?? 60_000
  const store = new ViewStore(options.limits)
  const adapter = options.adapter ?? (options.dataDir !== undefined ? await openLevelAdapter(options.dataDir) : memoryAdapter())
  const storage = new Storage(adapter, store, { ...options.storage, fsync: options.fsync ?? options.storage?.fsync ?? false })
  let clock: Timestamp = ZERO
  const tick = (): OpContext => {
    clock = hlcTick(clock, now())
    return { replica: options.id, time: clock }
  }
  // A key a batch horizon made expire: its snapshot goes at the next compaction.
  store.subscribe((ev) => {
    if (ev.kind === 'expire') storage.forget(ev.view, ev.key)
  })
  const batch = new BatchViews({ store, storage, tick: () => tick().time, replica: options.id, now, maxDriftMs: maxDrift })
  let recovery: RecoveryReport
  let yjs: YjsDocs
  try {
    await storage.claimReplica(options.id)
    // Before the log replay, so that deltas of covered buckets are dropped as they are replayed.
    await batch.load()
    recovery = await storage.recover(log)
    batch.sweep()
    yjs = await YjsDocs.open(adapter, { ...options.yjs, fsync: options.fsync ?? options.storage?.fsync ?? false, now, log })
  } catch (err) {
    await adapter.close().catch(() => {})
    throw err
  }

  // Own deltas are numbered 1, 2, 3...: replication ships them by (origin, sequence).
  let seq = storage.logged.get(options.id)
  const saveCatalog = () => {
    const saved = store.savedCatalog()
    const enc = encoding.createEncoder()
    store.catalogType.encode(enc, saved.state)
    return storage.saveCatalog({ state: encoding.toUint8Array(enc), numbers: saved.numbers, nextNo: saved.nextNo })
  }
  store.subscribe((ev) => {
    if (ev.kind !== 'define') return
    void saveCatalog().catch(() => {})
    if (ev.replaced) storage.dropView(ev.replaced.no)
  })

  const replicator = new Replicator(
    { id: options.id, store, storage, now, log, saveCatalog },
    {
      ...options.replication,
      secret: options.secret,
      setTimer: (ms, fn) => {
        const t = setTimeout(fn, ms)
        t.unref()
        return () => clearTimeout(t)
      },
    },
  )
  try {
    // Known peers and the journal of the last run: before any link or write.
    await replicator.load()
  } catch (err) {
    replicator.close()
    await storage.close().catch(() => {})
    throw err
  }
  const batchReplication = replicateBatchViews(batch, store, replicator, log)
  const transportOptions = { maxPayload: options.maxPeerPayload ?? 16 * 1024 * 1024, maxBackoffMs: options.maxBackoffMs ?? 2000, minBackoffMs: 50, log }
  new YjsPeers(yjs, replicator, { log })
  const peerServer = new PeerServer(replicator, transportOptions)
  const dialer = new Dialer(replicator, options.peers ?? [], transportOptions)
  const replication: NodeReplication = {
    replicator,
    handleUpgrade: (req, socket, head) => peerServer.handleUpgrade(req, socket, head),
    peers: () => replicator.peers(dialer.urls()),
    disconnect: (replica) => replicator.block(replica),
    connect(replica) {
      if (!replicator.restore(replica)) return false
      for (const url of dialer.urls()) if (replicator.replicaAt(url) === replica) dialer.poke(url)
      return true
    },
    stats: () => replicator.stats,
  }

  let writes = 0
  let closing: Promise<void> | null = null

  const checkDrift = (op: unknown) => {
    const ts = (op as { ts?: unknown } | null)?.ts
    if (typeof ts === 'number' && ts > now() + maxDrift) {
      throw new StoreError('bad_op', `"ts" ${ts} is more than ${maxDrift} ms ahead of this node's clock (--max-drift)`)
    }
  }

  const readResult = (view: View, value: unknown): ReadResult =>
    view.def.type === 'hll' ? { value, error: standardError(14) } : { value }

  const node: SpeedNode = {
    id: options.id,
    maxDriftMs: maxDrift,
    now,
    store,
    storage,
    recovery,
    async apply(viewName, key, op) {
      if (closing) throw new NodeError('closed', 'the node is shutting down')
      if (storage.overloaded()) throw new NodeError('overload', 'the write queue is full; retry shortly')
      checkDrift(op)
      const { view, delta, value, dropped } = store.apply(viewName, key, op, tick())
      // A write to a bucket the batch horizon covers joins to nothing: there is nothing to make durable.
      if (dropped) return readResult(view, value)
      await storage.append(view, key, delta, options.id, ++seq)
      writes++
      return readResult(view, value)
    },
    applyMany(list) {
      if (closing) throw new NodeError('closed', 'the node is shutting down')
      if (storage.overloaded()) throw new NodeError('overload', 'the write queue is full; retry shortly')
      const refused: ApplyManyResult['refused'] = []
      const batches: Promise<void>[] = []
      let applied = 0
      for (let i = 0; i < list.length; i++) {
        const w = list[i] as Write
        let r: { view: View; delta: unknown; dropped?: true }
        try {
          checkDrift(w.op)
          r = store.apply(w.view, w.key, w.op, tick(), false)
        } catch (err) {
          if (!(err instanceof StoreError)) throw err
          refused.push({ index: i, error: err })
          continue
        }
        if (r.dropped) continue
        // Appends made in one synchronous run land in one pending batch; awaiting each distinct
        // batch promise is still right should a flush ever start in between.
        const p = storage.append(r.view, w.key, r.delta, options.id, ++seq)
        if (p !== batches[batches.length - 1]) batches.push(p)
        applied++
      }
      const done = Promise.all(batches).then(() => {
        writes += applied
      })
      // The caller may await it late; a failed batch must not count as an unhandled rejection meanwhile.
      done.catch(() => {})
      return { refused, durable: done }
    },
    read(viewName, key) {
      const view = store.view(viewName)
      return readResult(view, store.read(viewName, key))
    },
    scan(viewName, opts) {
      return store.scan(viewName, { prefix: opts.prefix, after: opts.after, limit: opts.limit ?? 100 })
    },
    async defineView(name, def) {
      if (closing) throw new NodeError('closed', 'the node is shutting down')
      const { result } = store.define(name, def, tick())
      if (result === 'created') await saveCatalog()
      return result
    },
    views() {
      return store.views().map((v) => ({ name: v.name, type: v.def.type, def: v.def, keys: v.states.size }))
    },
    subscribe: (listener) => store.subscribe(listener),
    replication,
    batch: {
      import(view, horizon, entries, stamp) {
        if (closing) return Promise.reject(new NodeError('closed', 'the node is shutting down'))
        return batch.import(view, horizon, entries, stamp)
      },
      begin: (view, horizon) => batch.begin(view, horizon),
      encode: (view) => batch.encode(view),
      merge: (view, bytes) => batch.merge(view, bytes),
      views: () => batch.views(),
      keys: (view) => (store.hasView(view) ? (batch.current(store.view(view))?.keys ?? []) : []),
      get(view) {
        const bv = batch.get(view)
        if (bv === undefined) return null
        const applies = store.hasView(view) && batch.current(store.view(view)) === bv
        return { view, type: bv.type, horizon: bv.horizon, keys: bv.keys.length, stamp: { ts: bv.stamp.ts, c: bv.stamp.c, replica: bv.stamp.r }, applies }
      },
      onChange: (listener) => batch.onChange(listener),
      stats: () => ({ ...batch.stats, droppedCovered: store.droppedCovered, replication: { ...batchReplication.stats } }),
    },
    yjs,
    query: (view, key) => queryKey(store, batch, view, key),
    queryRange: (view, q) => queryRange(store, batch, view, q),
    stats() {
      return {
        writes,
        storage: storage.getStats(),
        keys: store.keyCount(),
        views: store.views().length,
        droppedByRedefinition: store.droppedByRedefinition,
      }
    },
    close() {
      closing ??= (async () => {
        dialer.stop()
        replicator.close()
        peerServer.close()
        // Its writes go through the adapter that the storage closes.
        await yjs.close()
        await storage.close()
      })()
      return closing
    },
  }

  try {
    for (const [name, def] of Object.entries(options.views ?? {})) await node.defineView(name, def)
  } catch (err) {
    await node.close()
    throw err
  }
  dialer.start()
  return node
}
