/**
 * The durable copy of a ViewStore: a delta log written by group commit, per-key snapshots,
 * online compaction in slices, and recovery (snapshots, then the log replayed over them).
 *
 * Why recovery can replay the whole log over the snapshots without tracking which deltas a
 * snapshot already holds: joins are idempotent, so a delta joined twice is joined once. That
 * leaves one ordering rule: a snapshot is written through the same queue as the log, after every
 * log record that holds a write it includes, and log records are deleted only once the snapshots
 * that fold them in are written.
 */
import * as encoding from 'lib0/encoding'
import * as decoding from 'lib0/decoding'
import type { ViewStore, View } from '../store/viewStore.js'
import { VersionVector } from './versionVector.js'
import { StorageError, type StorageAdapter, type WriteOp } from './adapter.js'
import {
  LOG_RANGE,
  SNAPSHOT_RANGE,
  decodeCatalog,
  decodeLogRecord,
  encodeCatalog,
  encodeLogRecord,
  logKey,
  logPosition,
  logRangeThrough,
  metaKey,
  parseSnapshotKey,
  seal,
  snapshotKey,
  unseal,
  viewSnapshotRange,
  type LogEntry,
  type SavedCatalog,
} from './layout.js'

export interface StorageOptions {
  /** Sync every batch to stable storage (survives a machine crash, not just a process crash). */
  fsync: boolean
  /** Bytes waiting to be written (queued and in flight) past which writers are told to back off. */
  maxPendingBytes: number
  /** Compaction starts once the log holds this many bytes... */
  compactMinLogBytes: number
  /** ...and at least this fraction of the estimated live bytes. */
  compactLogRatio: number
  /** Keys per compaction slice: one LevelDB batch, then the event loop gets a turn. */
  compactSliceKeys: number
  /**
   * Log records are kept after compaction while a peer may still need them (see
   * `setLogRetention`), but never more than this many bytes of them: past it the oldest go, and
   * a peer that lacked them catches up by anti-entropy instead.
   */
  maxRetainedLogBytes: number
}

export const DEFAULT_STORAGE_OPTIONS: StorageOptions = {
  fsync: false,
  maxPendingBytes: 64 * 1024 * 1024,
  compactMinLogBytes: 1024 * 1024,
  compactLogRatio: 0.5,
  compactSliceKeys: 1024,
  maxRetainedLogBytes: 64 * 1024 * 1024,
}

export interface RecoveryReport {
  snapshots: number
  records: number
  deltas: number
  /** A torn or corrupt record at the very end of the log, reported and skipped. */
  tornTail: number | null
  ms: number
}

export interface StorageStats {
  logRecords: number
  logBytes: number
  batches: number
  compactions: number
  compacting: boolean
  snapshotWrites: number
  liveBytesEstimate: number
  pendingBytes: number
  lastCompactionMs: number
}

interface PendingDelta {
  view: View
  key: string
  delta: unknown
  origin: string
  seq: number
  viewNo: number
}

/** What the log holds, per record, without reading it: which deltas of which origins. */
export interface RecordSummary {
  position: number
  bytes: number
  /** origin -> [lowest seq, highest seq] in this record. */
  ranges: Map<string, [number, number]>
}

/** A durable delta, as replication sees it: handed on once its batch is on disk. */
export interface DurableDelta {
  origin: string
  seq: number
  view: View
  key: string
  delta: unknown
}

function summarize(position: number, bytes: number, entries: ReadonlyArray<{ origin: string; seq: number }>): RecordSummary {
  const ranges = new Map<string, [number, number]>()
  for (const e of entries) {
    if (e.origin === NO_ORIGIN) continue
    const r = ranges.get(e.origin)
    if (!r) ranges.set(e.origin, [e.seq, e.seq])
    else {
      if (e.seq < r[0]) r[0] = e.seq
      if (e.seq > r[1]) r[1] = e.seq
    }
  }
  return { position, bytes, ranges }
}

interface Batch {
  entries: PendingDelta[]
  raw: WriteOp[]
  bytes: number
  done: Promise<void>
  resolve: () => void
  reject: (err: Error) => void
  /** Someone awaits this batch although it may hold nothing (a barrier): it must still be flushed. */
  awaited: boolean
}

function newBatch(): Batch {
  let resolve!: () => void
  let reject!: (err: Error) => void
  const done = new Promise<void>((res, rej) => {
    resolve = res
    reject = rej
  })
  // A failed batch is reported to each writer that awaits it; an unawaited one must not crash.
  done.catch(() => {})
  return { entries: [], raw: [], bytes: 0, done, resolve, reject, awaited: false }
}

/** The origin of a logged state that has no identity of its own (catch-up, anti-entropy). */
export const NO_ORIGIN = ''

/** Reused for every delta of a flush; lib0 encoders are reset by clearing their buffers. */
const scratch = encoding.createEncoder()
const REPLICA = metaKey('replica')
const CATALOG = metaKey('catalog')
/** The version vector of every delta ever logged here, saved whenever log records are deleted. */
const LOGGED = metaKey('vv')
/** Per origin, the lowest sequence the log can still serve (below it: deleted, or never logged). */
const SERVABLE = metaKey('servable')
const utf8 = new TextEncoder()
const utf8d = new TextDecoder()

export class Storage {
  readonly options: StorageOptions
  private pending = newBatch()
  private inFlightBytes = 0
  private flushing = false
  private scheduled = false
  private position = 0
  private dirty = new Map<number, Set<string>>()
  private dirtyCount = 0
  private compactingNow: Promise<void> | null = null
  private failed: Error | null = null
  private closed = false
  private logBytesSinceCompaction = 0
  /** Every delta durable here (in snapshots or in the log), by origin and sequence. */
  readonly logged = new VersionVector()
  /** The log records still on disk, oldest first. */
  private readonly records: RecordSummary[] = []
  private retainedBytes = 0
  private readonly servable = new Map<string, number>()
  private retention: (r: RecordSummary) => boolean = () => true
  private readonly durableListeners = new Set<(deltas: DurableDelta[]) => void>()
  private readonly stats: StorageStats = {
    logRecords: 0,
    logBytes: 0,
    batches: 0,
    compactions: 0,
    compacting: false,
    snapshotWrites: 0,
    liveBytesEstimate: 0,
    pendingBytes: 0,
    lastCompactionMs: 0,
  }

  constructor(
    readonly adapter: StorageAdapter,
    private readonly store: ViewStore,
    options: Partial<StorageOptions> = {},
  ) {
    this.options = { ...DEFAULT_STORAGE_OPTIONS, ...options }
  }

  /** Checks (or records, on first start) which replica this directory belongs to. */
  async claimReplica(id: string): Promise<void> {
    const saved = await this.adapter.get(REPLICA)
    if (saved === undefined) {
      await this.adapter.write([{ type: 'put', key: REPLICA, value: utf8.encode(id) }], { sync: true })
      return
    }
    const owner = utf8d.decode(saved)
    if (owner !== id) {
      throw new StorageError('replica_mismatch', `this data directory belongs to replica "${owner}"; start with --id ${owner} or use another --data`)
    }
  }

  /** Loads the catalog, the snapshots and then the log into the store. */
  async recover(warn: (msg: string) => void): Promise<RecoveryReport> {
    const t0 = performance.now()
    const report: RecoveryReport = { snapshots: 0, records: 0, deltas: 0, tornTail: null, ms: 0 }
    const cat = await this.adapter.get(CATALOG)
    if (cat !== undefined) {
      let saved: SavedCatalog
      try {
        saved = decodeCatalog(cat)
      } catch (err) {
        throw new StorageError('corrupt', `the saved catalog is corrupt (${(err as Error).message}); the data directory cannot be trusted`)
      }
      const state = this.store.catalogType.decode(decoding.createDecoder(saved.state))
      this.store.loadCatalog(state, saved.numbers, saved.nextNo)
    }

    const savedVv = await this.adapter.get(LOGGED)
    if (savedVv !== undefined) {
      try {
        this.logged.merge(VersionVector.decode(decoding.createDecoder(unseal(savedVv))))
      } catch (err) {
        throw new StorageError('corrupt', `the saved version vector is corrupt (${(err as Error).message})`)
      }
    }
    const savedServable = await this.adapter.get(SERVABLE)
    if (savedServable !== undefined) {
      try {
        const vv = VersionVector.decode(decoding.createDecoder(unseal(savedServable)))
        for (const o of vv.origins()) this.servable.set(o, vv.get(o))
      } catch (err) {
        throw new StorageError('corrupt', `the saved log bounds are corrupt (${(err as Error).message})`)
      }
    }
    const staleViews = new Set<number>()
    let liveBytes = 0
    for await (const chunk of this.adapter.scan(SNAPSHOT_RANGE)) {
      for (const [k, v] of chunk) {
        const { viewNo, key } = parseSnapshotKey(k)
        const view = this.store.viewByNo(viewNo)
        if (!view) {
          staleViews.add(viewNo)
          continue
        }
        let state: unknown
        try {
          state = view.type.decode(decoding.createDecoder(unseal(v)))
        } catch (err) {
          throw new StorageError('corrupt', `snapshot of ${view.name}/${key} is corrupt (${(err as Error).message})`)
        }
        this.store.load(view, key, state)
        liveBytes += k.length + v.length
        report.snapshots++
      }
    }

    // The log: every record must verify, except possibly the last (a write torn by a crash).
    let last: { position: number; error: Error } | null = null
    for await (const chunk of this.adapter.scan(LOG_RANGE)) {
      for (const [k, v] of chunk) {
        const position = logPosition(k)
        if (last) throw new StorageError('corrupt', `log record ${last.position} is corrupt (${last.error.message}) and is not the last; the data directory cannot be trusted`)
        this.position = position
        let entries: LogEntry[]
        try {
          entries = decodeLogRecord(v)
        } catch (err) {
          last = { position, error: err as Error }
          continue
        }
        report.records++
        this.stats.logRecords++
        this.stats.logBytes += v.length
        this.logBytesSinceCompaction += v.length
        this.records.push(summarize(position, v.length, entries))
        this.retainedBytes += v.length
        for (const e of entries) {
          if (e.origin !== NO_ORIGIN) this.logged.add(e.origin, e.seq)
          const view = this.store.viewByNo(e.viewNo)
          if (!view) continue
          let delta: unknown
          try {
            delta = view.type.decode(decoding.createDecoder(e.delta))
          } catch (err) {
            throw new StorageError('corrupt', `log record ${position} holds a corrupt delta for ${view.name}/${e.key} (${(err as Error).message})`)
          }
          this.store.merge(view, e.key, delta)
          this.markDirty(view.no, e.key)
          report.deltas++
        }
      }
    }
    if (last) {
      report.tornTail = last.position
      warn(`log record ${last.position} at the end of the log is torn or corrupt (${last.error.message}); it was never acknowledged, skipping it`)
      await this.adapter.write([{ type: 'del', key: logKey(last.position) }], { sync: true })
    }
    for (const no of staleViews) await this.adapter.clear(viewSnapshotRange(no))
    this.stats.liveBytesEstimate = liveBytes
    report.ms = performance.now() - t0
    return report
  }

  /** True when writers should be told to come back later (503) instead of queueing more. */
  overloaded(): boolean {
    return this.failed !== null || this.inFlightBytes + this.pending.bytes > this.options.maxPendingBytes
  }

  /** Queues a delta for the next group commit; resolves once it is durable. */
  append(view: View, key: string, delta: unknown, origin: string, seq: number): Promise<void> {
    if (this.failed) return Promise.reject(this.failed)
    if (this.closed) return Promise.reject(new StorageError('closed', 'the node is shutting down'))
    // Deltas are encoded at flush time, into the record itself: no encoder per write.
    const b = this.pending
    b.entries.push({ view, key, delta, origin, seq, viewNo: view.no })
    b.bytes += key.length + 32
    this.markDirty(view.no, key)
    this.schedule()
    return b.done
  }

  /** Saves the catalog with the next group commit. */
  saveCatalog(saved: SavedCatalog): Promise<void> {
    return this.enqueueRaw([{ type: 'put', key: CATALOG, value: encodeCatalog(saved) }])
  }

  /**
   * Saves a named value in the meta region (sealed, like every record) with the next group
   * commit; resolves once it is durable. Names must not collide with the engine's own
   * ('replica', 'catalog', 'vv', 'servable'): callers use a prefix of their own, e.g. "batch:".
   */
  putMeta(name: string, body: Uint8Array): Promise<void> {
    return this.enqueueRaw([{ type: 'put', key: metaKey(name), value: seal(body) }])
  }

  /** Every meta value whose name starts with `prefix` (unsealed), in name order. */
  async scanMeta(prefix: string): Promise<Array<{ name: string; body: Uint8Array }>> {
    const gte = metaKey(prefix)
    const lt = metaKey(prefix)
    // The prefix's range ends where its last byte would be one higher ("batch:" -> "batch;").
    lt[lt.length - 1] = (lt[lt.length - 1] as number) + 1
    const out: Array<{ name: string; body: Uint8Array }> = []
    for await (const chunk of this.adapter.scan({ gte, lt })) {
      for (const [k, v] of chunk) {
        const name = utf8d.decode(k.subarray(1))
        let body: Uint8Array
        try {
          body = unseal(v)
        } catch (err) {
          throw new StorageError('corrupt', `the saved "${name}" is corrupt (${(err as Error).message})`)
        }
        out.push({ name, body })
      }
    }
    return out
  }

  /**
   * A key whose state the store dropped (expired by a batch horizon): the next compaction writes
   * the deletion of its snapshot, as for any dirty key whose state is gone.
   */
  forget(view: View, key: string): void {
    this.markDirty(view.no, key)
  }

  /** Forgets every snapshot of a view number whose definition was replaced. */
  dropView(viewNo: number): void {
    this.dirty.delete(viewNo)
    void this.afterFlush().then(() => this.adapter.clear(viewSnapshotRange(viewNo)))
  }

  private enqueueRaw(ops: WriteOp[]): Promise<void> {
    if (this.failed) return Promise.reject(this.failed)
    const b = this.pending
    for (const op of ops) {
      b.raw.push(op)
      b.bytes += op.key.length + (op.type === 'put' ? op.value.length : 0)
    }
    this.schedule()
    return b.done
  }

  private afterFlush(): Promise<void> {
    if (this.failed) return Promise.reject(this.failed)
    // While a batch is in flight, an empty pending batch would otherwise wait for the next write.
    this.pending.awaited = true
    return this.enqueueRaw([])
  }

  /**
   * Resolves once every write queued so far is durable (rejects if the storage failed): what the
   * store holds in memory now is then on disk, and may be shown to peers as state.
   */
  flushed(): Promise<void> {
    return this.afterFlush()
  }

  private markDirty(viewNo: number, key: string): void {
    let keys = this.dirty.get(viewNo)
    if (!keys) this.dirty.set(viewNo, (keys = new Set()))
    const before = keys.size
    keys.add(key)
    this.dirtyCount += keys.size - before
  }

  private schedule(): void {
    if (this.scheduled || this.flushing) return
    this.scheduled = true
    setImmediate(() => void this.flush())
  }

  private async flush(): Promise<void> {
    this.scheduled = false
    const b = this.pending
    if (b.entries.length === 0 && b.raw.length === 0) {
      b.resolve()
      this.pending = newBatch()
      return
    }
    this.pending = newBatch()
    this.flushing = true
    this.inFlightBytes = b.bytes
    const ops: WriteOp[] = []
    let recordBytes = 0
    if (b.entries.length > 0) {
      const record = encodeLogRecord(b.entries, (enc, i) => {
        const e = b.entries[i] as PendingDelta
        scratch.cpos = 0
        scratch.bufs.length = 0
        e.view.type.encode(scratch, e.delta)
        encoding.writeVarUint8Array(enc, encoding.toUint8Array(scratch))
      })
      recordBytes = record.length
      ops.push({ type: 'put', key: logKey(++this.position), value: record })
    }
    for (const op of b.raw) ops.push(op)
    try {
      await this.adapter.write(ops, { sync: this.options.fsync })
      this.stats.batches++
      if (recordBytes > 0) {
        this.stats.logRecords++
        this.stats.logBytes += recordBytes
        this.logBytesSinceCompaction += recordBytes
        this.records.push(summarize(this.position, recordBytes, b.entries))
        this.retainedBytes += recordBytes
        for (const e of b.entries) if (e.origin !== NO_ORIGIN) this.logged.add(e.origin, e.seq)
      }
      b.resolve()
      if (b.entries.length > 0 && this.durableListeners.size > 0) {
        const deltas: DurableDelta[] = []
        for (const e of b.entries) if (e.origin !== NO_ORIGIN) deltas.push({ origin: e.origin, seq: e.seq, view: e.view, key: e.key, delta: e.delta })
        for (const l of this.durableListeners) l(deltas)
      }
    } catch (err) {
      // Memory already holds these writes and the disk does not: the node can no longer promise
      // durability, so every later write is refused until it restarts and recovers from disk.
      this.failed = new StorageError('io', `a write to disk failed (${(err as Error).message}); restart the node`)
      b.reject(this.failed)
    } finally {
      this.flushing = false
      this.inFlightBytes = 0
    }
    if (this.pending.entries.length > 0 || this.pending.raw.length > 0 || this.pending.awaited) this.schedule()
    this.maybeCompact()
  }

  private maybeCompact(): void {
    if (this.compactingNow || this.closed || this.failed) return
    const threshold = Math.max(this.options.compactMinLogBytes, this.options.compactLogRatio * this.stats.liveBytesEstimate)
    if (this.logBytesSinceCompaction >= threshold) void this.compact()
  }

  /** Folds the log into snapshots, in slices, then deletes the folded records. Runs in the background. */
  compact(): Promise<void> {
    this.compactingNow ??= this.runCompaction().finally(() => {
      this.compactingNow = null
    })
    return this.compactingNow
  }

  private async runCompaction(): Promise<void> {
    const t0 = performance.now()
    this.stats.compacting = true
    try {
      // Everything applied so far is in a record up to the one the pending batch will get.
      await this.afterFlush()
      const through = this.position
      const dirty = this.dirty
      this.dirty = new Map()
      this.dirtyCount = 0
      this.logBytesSinceCompaction = 0
      let slice: WriteOp[] = []
      let sampledBytes = 0
      let sampledKeys = 0
      for (const [viewNo, keys] of dirty) {
        const view = this.store.viewByNo(viewNo)
        if (!view) continue
        for (const key of keys) {
          if (this.closed) return
          const state = this.store.state(view, key)
          const k = snapshotKey(viewNo, key)
          if (state === undefined) {
            slice.push({ type: 'del', key: k })
          } else {
            const enc = encoding.createEncoder()
            view.type.encode(enc, state)
            const value = seal(encoding.toUint8Array(enc))
            slice.push({ type: 'put', key: k, value })
            sampledBytes += k.length + value.length
            sampledKeys++
          }
          if (slice.length >= this.options.compactSliceKeys) {
            // Awaiting the slice's batch both yields to requests and bounds what compaction queues.
            await this.enqueueRaw(slice)
            slice = []
            this.stats.snapshotWrites += this.options.compactSliceKeys
          }
        }
      }
      if (slice.length > 0) {
        this.stats.snapshotWrites += slice.length
        await this.enqueueRaw(slice)
      }
      await this.dropLogThrough(through)
      if (sampledKeys > 0) this.stats.liveBytesEstimate = (sampledBytes / sampledKeys) * this.store.keyCount()
      this.stats.compactions++
      // Overwritten snapshots linger in LevelDB's older levels; rewrite the region now and then.
      if (this.stats.compactions % 4 === 0) await this.adapter.compact(SNAPSHOT_RANGE)
    } catch (err) {
      if (!this.closed) this.failed ??= new StorageError('io', `compaction failed (${(err as Error).message}); restart the node`)
    } finally {
      this.stats.compacting = false
      this.stats.lastCompactionMs = performance.now() - t0
    }
  }

  /**
   * Deletes the folded log records up to `through` that no peer needs any more (or that are
   * past the retention bound). The version vector is saved first: it must outlive the records.
   */
  private async dropLogThrough(through: number): Promise<void> {
    let n = 0
    let bytes = this.retainedBytes
    for (const r of this.records) {
      if (r.position > through) break
      if (!this.retention(r) && bytes <= this.options.maxRetainedLogBytes) break
      bytes -= r.bytes
      n++
    }
    if (n === 0) return
    const last = (this.records[n - 1] as RecordSummary).position
    for (let i = 0; i < n; i++) {
      for (const [o, [, hi]] of (this.records[i] as RecordSummary).ranges) this.raiseServable(o, hi + 1)
    }
    await this.saveVectors()
    await this.adapter.clear(logRangeThrough(last))
    this.records.splice(0, n)
    this.retainedBytes = bytes
    await this.adapter.compact(logRangeThrough(last))
  }

  /** Says which log records a peer may still need; records it keeps are not deleted (within the bound). */
  setLogRetention(canDrop: (r: RecordSummary) => boolean): void {
    this.retention = canDrop
  }

  /** Called with the deltas of every batch once it is durable (replication ships only durable deltas). */
  onDurable(listener: (deltas: DurableDelta[]) => void): () => void {
    this.durableListeners.add(listener)
    return () => this.durableListeners.delete(listener)
  }

  /** The lowest sequence of `origin` the log can still serve; below it a peer needs anti-entropy. */
  lowWater(origin: string): number {
    return this.servable.get(origin) ?? 1
  }

  private raiseServable(origin: string, from: number): void {
    if (from > (this.servable.get(origin) ?? 1)) this.servable.set(origin, from)
  }

  private saveVectors(): Promise<void> {
    const a = encoding.createEncoder()
    this.logged.encode(a)
    const b = encoding.createEncoder()
    VersionVector.from(this.servable).encode(b)
    return this.enqueueRaw([
      { type: 'put', key: LOGGED, value: seal(encoding.toUint8Array(a)) },
      { type: 'put', key: SERVABLE, value: seal(encoding.toUint8Array(b)) },
    ])
  }

  /** Queues a state that has no identity of its own (from catch-up or anti-entropy). */
  appendState(view: View, key: string, state: unknown): Promise<void> {
    return this.append(view, key, state, NO_ORIGIN, 0)
  }

  /**
   * Records that the deltas `covers` names are held here although the log does not list them
   * (they came folded into states): they count as delivered, and the log cannot serve them.
   * Resolves once that is durable, after every state queued before it.
   */
  markDelivered(covers: VersionVector): Promise<void> {
    this.logged.merge(covers)
    for (const o of covers.origins()) this.raiseServable(o, covers.max(o) + 1)
    return this.saveVectors()
  }

  retainedLog(): { records: number; bytes: number } {
    return { records: this.records.length, bytes: this.retainedBytes }
  }

  /**
   * The logged deltas that `want` accepts, oldest first, a record at a time. Records whose
   * summary shows nothing wanted are not read at all.
   */
  async *readLog(want: (origin: string, seq: number) => boolean): AsyncGenerator<LogEntry[]> {
    const positions = this.records.filter((r) => [...r.ranges].some(([o, [lo, hi]]) => want(o, hi) || want(o, lo))).map((r) => r.position)
    const wanted = (e: LogEntry) => e.origin !== NO_ORIGIN && want(e.origin, e.seq)
    for (const position of positions) {
      const v = await this.adapter.get(logKey(position))
      if (v === undefined) continue // deleted by a compaction meanwhile
      const entries = decodeLogRecord(v).filter(wanted)
      if (entries.length > 0) yield entries
    }
  }

  /**
   * True when nothing is queued, being written or compacted: until new work arrives no write
   * will happen. A simulator steps nodes between such points so that runs replay exactly.
   */
  idle(): boolean {
    const b = this.pending
    return !this.scheduled && !this.flushing && b.entries.length === 0 && b.raw.length === 0 && !b.awaited && this.compactingNow === null
  }

  getStats(): StorageStats {
    return { ...this.stats, pendingBytes: this.inFlightBytes + this.pending.bytes }
  }

  async diskBytes(): Promise<number> {
    return this.adapter.diskBytes()
  }

  /** Writes what is queued, waits for a running compaction slice, and closes the adapter. */
  async close(): Promise<void> {
    if (this.closed) return
    await this.afterFlush().catch(() => {})
    this.closed = true
    await this.compactingNow?.catch(() => {})
    while (this.flushing) await new Promise<void>((r) => setImmediate(r))
    await this.adapter.close()
  }
}
