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
  DIRECTORY_LAYOUT,
  LOG_RANGE,
  PAGE_RANGE,
  SNAPSHOT_RANGE,
  decodeCatalog,
  decodeLogRecord,
  encodeCatalog,
  encodeLogRecord,
  logKey,
  logPosition,
  logRangeThrough,
  metaKey,
  pageKey,
  parsePageKey,
  parseSnapshotKey,
  readPage,
  seal,
  unseal,
  viewPageRange,
  viewSnapshotRange,
  writePageEntry,
  type LogEntry,
  type SavedCatalog,
} from './layout.js'
import { PAGE_MAX_BYTES, PAGE_MIN_BYTES, PAGE_TARGET_BYTES, PageBounds, lowerBound } from './pages.js'

export interface StorageOptions {
  /** Sync every batch to stable storage (survives a machine crash, not just a process crash). */
  fsync: boolean
  /** Bytes waiting to be written (queued and in flight) past which writers are told to back off. */
  maxPendingBytes: number
  /** Compaction starts once the log holds this many bytes... */
  compactMinLogBytes: number
  /** ...and at least this fraction of the estimated live bytes. */
  compactLogRatio: number
  /** Keys per compaction slice (whole pages, so a slice may hold a few more): one LevelDB batch, then the event loop gets a turn. */
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
  /** Keys loaded from snapshots (pages, or layout 1's per-key snapshots). */
  snapshots: number
  /** Snapshot pages read. */
  pages: number
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
  /** Key states written into snapshot pages by compaction. */
  snapshotWrites: number
  pageWrites: number
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
}

/**
 * The keys of one view written since the last compaction, as a list with repeats: a push per
 * write is what the write path can afford (a Set cost several times more), and compaction maps
 * the list to pages. Past a bound the list is dropped for `all`: every page is then rewritten,
 * which costs no more than mapping a list as long as the view.
 */
interface Dirty {
  keys: string[]
  all: boolean
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
  // A group commit's writes mostly share one origin: look it up only when it changes.
  let origin: string | null = null
  let r: [number, number] | undefined
  for (const e of entries) {
    if (e.origin === NO_ORIGIN) continue
    if (e.origin !== origin) {
      origin = e.origin
      r = ranges.get(origin)
      if (!r) {
        ranges.set(origin, (r = [e.seq, e.seq]))
        continue
      }
    }
    const x = r as [number, number]
    if (e.seq < x[0]) x[0] = e.seq
    if (e.seq > x[1]) x[1] = e.seq
  }
  return { position, bytes, ranges }
}

/** Adds the entries' (origin, seq) to a version vector, a run of consecutive sequences of one origin at a time. */
function addAll(vv: VersionVector, entries: ReadonlyArray<{ origin: string; seq: number }>): void {
  let origin = NO_ORIGIN
  let start = 0
  let end = 0
  for (const e of entries) {
    if (e.origin === origin && e.seq === end + 1) {
      end = e.seq
      continue
    }
    if (origin !== NO_ORIGIN) vv.addRange(origin, start, end)
    origin = e.origin
    start = end = e.seq
  }
  if (origin !== NO_ORIGIN) vv.addRange(origin, start, end)
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

const encodeDelta = (enc: encoding.Encoder, e: PendingDelta): void => e.view.type.encode(enc, e.delta)

/** Where a page being encoded would be cut: the byte offset and the key that starts there. */
interface Cut {
  at: number
  key: string
}

interface EncodedPage {
  /** The entries, unsealed; a view of the page encoder's buffer until it is reused. */
  body: Uint8Array
  cuts: Cut[]
  n: number
}

/** What a compaction has encoded and not yet written, and what it wrote in all. */
interface Slice {
  ops: WriteOp[]
  keys: number
  total: number
  bytes: number
}

const encodedLength = (enc: encoding.Encoder): number => (enc.bufs.length === 0 ? enc.cpos : encoding.length(enc))
const encodedBody = (enc: encoding.Encoder): Uint8Array => (enc.bufs.length === 0 ? enc.cbuf.subarray(0, enc.cpos) : encoding.toUint8Array(enc))
/** Turns of the event loop that long loops of compaction give to requests. */
const yieldTurn = (): Promise<void> => new Promise((resolve) => setImmediate(resolve))
const REPLICA = metaKey('replica')
const CATALOG = metaKey('catalog')
/** The version vector of every delta ever logged here, saved whenever log records are deleted. */
const LOGGED = metaKey('vv')
/** Per origin, the lowest sequence the log can still serve (below it: deleted, or never logged). */
const SERVABLE = metaKey('servable')
/** The directory's layout (DIRECTORY_LAYOUT), so that a later layout is refused, not misread. */
const LAYOUT = metaKey('layout')
const utf8 = new TextEncoder()
const utf8d = new TextDecoder()

export class Storage {
  readonly options: StorageOptions
  private pending = newBatch()
  private inFlightBytes = 0
  private flushing = false
  private scheduled = false
  private position = 0
  private dirty = new Map<number, Dirty>()
  /** Per view number, its snapshot pages' ranges. */
  private readonly pages = new Map<number, PageBounds>()
  /** Layout 1 snapshots were loaded: the next compaction writes their keys into pages, then clears them. */
  private legacySnapshots = false
  /** Clears of dropped views' snapshots still running: close waits for them. */
  private cleanup: Promise<void> = Promise.resolve()
  /** Reused by compaction for every page it encodes. */
  private readonly pageEnc = encoding.createEncoder()
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
    pageWrites: 0,
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
    const report: RecoveryReport = { snapshots: 0, pages: 0, records: 0, deltas: 0, tornTail: null, ms: 0 }
    const layout = await this.adapter.get(LAYOUT)
    let savedLayout = 1
    if (layout !== undefined) {
      try {
        savedLayout = decoding.readVarUint(decoding.createDecoder(unseal(layout)))
      } catch (err) {
        throw new StorageError('corrupt', `the saved layout version is corrupt (${(err as Error).message})`)
      }
      if (savedLayout > DIRECTORY_LAYOUT) {
        throw new StorageError('layout', `this data directory has storage layout ${savedLayout}, written by a newer speedlayer; this one reads layouts up to ${DIRECTORY_LAYOUT}`)
      }
    }
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
    // Snapshot pages, in key order: each view's keys arrive (almost always) ascending, so the
    // KeyIndex takes them without sorting.
    const firsts = new Map<number, string[]>()
    for await (const chunk of this.adapter.scan(PAGE_RANGE)) {
      for (const [k, v] of chunk) {
        const { viewNo, first } = parsePageKey(k)
        const view = this.store.viewByNo(viewNo)
        if (!view) {
          staleViews.add(viewNo)
          continue
        }
        let list = firsts.get(viewNo)
        if (!list) firsts.set(viewNo, (list = []))
        const { type, states } = view
        let n = 0
        // A page's range mostly starts at its first key: keep that string, not a second copy.
        let bound = first
        try {
          readPage(v, (key, dec) => {
            const state = type.decode(dec)
            // A key can be in two pages after a crash during a split (see writePage): join them.
            const had = states.load(key, state)
            if (had !== undefined) type.join(had, state)
            if (n === 0 && key === first) bound = key
            n++
          })
        } catch (err) {
          throw new StorageError('corrupt', `snapshot page ${view.name}/${JSON.stringify(first)} is corrupt (${(err as Error).message}); the data directory cannot be trusted`)
        }
        list.push(bound)
        liveBytes += k.length + v.length
        report.snapshots += n
        report.pages++
      }
    }
    for (const [viewNo, list] of firsts) this.pages.set(viewNo, PageBounds.fromDisk(list))

    // Layout 1's per-key snapshots: joined in (a crash during their migration leaves a key in
    // both places) and marked dirty, so the next compaction writes them into pages.
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
        this.store.merge(view, key, state)
        this.markDirty(view, key)
        this.legacySnapshots = true
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
        addAll(this.logged, entries)
        for (const e of entries) {
          const view = this.store.viewByNo(e.viewNo)
          if (!view) continue
          let delta: unknown
          try {
            delta = view.type.decode(decoding.createDecoder(e.delta))
          } catch (err) {
            throw new StorageError('corrupt', `log record ${position} holds a corrupt delta for ${view.name}/${e.key} (${(err as Error).message})`)
          }
          this.store.merge(view, e.key, delta)
          this.markDirty(view, e.key)
          report.deltas++
        }
      }
    }
    if (last) {
      report.tornTail = last.position
      warn(`log record ${last.position} at the end of the log is torn or corrupt (${last.error.message}); it was never acknowledged, skipping it`)
      await this.adapter.write([{ type: 'del', key: logKey(last.position) }], { sync: true })
    }
    for (const no of staleViews) {
      await this.adapter.clear(viewPageRange(no))
      await this.adapter.clear(viewSnapshotRange(no))
    }
    if (savedLayout !== DIRECTORY_LAYOUT) {
      const enc = encoding.createEncoder()
      encoding.writeVarUint(enc, DIRECTORY_LAYOUT)
      await this.adapter.write([{ type: 'put', key: LAYOUT, value: seal(encoding.toUint8Array(enc)) }], { sync: this.options.fsync })
    }
    this.stats.liveBytesEstimate = liveBytes
    // The migration runs in the background once the node is up (after the caller's synchronous
    // set-up, so that replication's log retention is in place before any log record goes).
    if (this.legacySnapshots) setImmediate(() => void this.compact())
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
    b.entries.push({ view, key, delta, origin, seq })
    b.bytes += key.length + 32
    this.markDirty(view, key)
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
    this.markDirty(view, key)
  }

  /** Forgets every snapshot of a view number whose definition was replaced. */
  dropView(viewNo: number): void {
    this.dirty.delete(viewNo)
    this.pages.delete(viewNo)
    // A failed clear leaves pages of an unknown view number, which the next start clears.
    const cleared = this.afterFlush().then(() => Promise.all([this.adapter.clear(viewPageRange(viewNo)), this.adapter.clear(viewSnapshotRange(viewNo))]))
    this.cleanup = Promise.all([this.cleanup, cleared]).then(
      () => {},
      () => {},
    )
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

  private markDirty(view: View, key: string): void {
    let d = this.dirty.get(view.no)
    if (!d) this.dirty.set(view.no, (d = { keys: [], all: false }))
    if (d.all) return
    d.keys.push(key)
    // Repeats make the list longer than the view: past that, rewriting every page is cheaper.
    if (d.keys.length > 2 * view.states.size + 4096) {
      d.all = true
      d.keys = []
    }
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
      const record = encodeLogRecord(b.entries, encodeDelta, b.bytes + 64)
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
        addAll(this.logged, b.entries)
      }
      b.resolve()
      if (b.entries.length > 0 && this.durableListeners.size > 0) {
        // The batch's own entries are durable deltas already, unless some have no origin.
        const deltas: DurableDelta[] = b.entries.every((e) => e.origin !== NO_ORIGIN) ? b.entries : b.entries.filter((e) => e.origin !== NO_ORIGIN)
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

  /** Folds the log into snapshot pages, in slices, then deletes the folded records. Runs in the background. */
  compact(): Promise<void> {
    if (this.closed) return Promise.resolve()
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
      this.logBytesSinceCompaction = 0
      const migrating = this.legacySnapshots
      // Each view's keys as of now, taken with the dirty lists: every key a dirty page must hold
      // is among them (a key created later is in the next lists).
      const jobs: Array<{ view: View; keys: readonly string[]; dirty: Dirty }> = []
      for (const [viewNo, d] of dirty) {
        const view = this.store.viewByNo(viewNo)
        if (view) jobs.push({ view, keys: view.states.sortedKeys(), dirty: d })
      }
      const slice: Slice = { ops: [], keys: 0, bytes: 0, total: 0 }
      for (const job of jobs) {
        const { view } = job
        let pages = this.pages.get(view.no)
        if (!pages) this.pages.set(view.no, (pages = new PageBounds()))
        for (const first of await this.dirtyPages(job.dirty, pages, view.states.size)) {
          if (this.closed) return
          // A view redefined meanwhile: its pages are being cleared.
          if (this.store.viewByNo(view.no) !== view) break
          const i = pages.indexOf(first)
          if (i < 0) continue // taken in by the page before it, already written
          await this.writePage(view, job.keys, pages, i, slice)
        }
      }
      if (slice.ops.length > 0) await this.enqueueRaw(slice.ops)
      if (migrating && !this.closed) {
        // Every key of layout 1's snapshots was dirty in this compaction: pages now hold them.
        await this.adapter.clear(SNAPSHOT_RANGE)
        this.legacySnapshots = false
      }
      await this.dropLogThrough(through)
      if (slice.total > 0) this.stats.liveBytesEstimate = (slice.bytes / slice.total) * this.store.keyCount()
      this.stats.compactions++
      // Overwritten pages linger in LevelDB's older levels; rewrite the region now and then.
      if (this.stats.compactions % 4 === 0) await this.adapter.compact(PAGE_RANGE)
    } catch (err) {
      if (!this.closed) this.failed ??= new StorageError('io', `compaction failed (${(err as Error).message}); restart the node`)
    } finally {
      this.stats.compacting = false
      this.stats.lastCompactionMs = performance.now() - t0
    }
  }

  /**
   * The first keys of the pages that hold a dirty key, ascending. Mapping a long list yields to
   * requests now and then; the bounds do not change meanwhile (only compaction changes them).
   */
  private async dirtyPages(d: Dirty, pages: PageBounds, size: number): Promise<string[]> {
    if (d.all || d.keys.length >= size) return pages.bounds.slice()
    const mark = new Uint8Array(pages.bounds.length)
    for (let x = 0; x < d.keys.length; x++) {
      mark[pages.pageOf(d.keys[x] as string)] = 1
      if ((x & 0x3fff) === 0x3fff) await yieldTurn()
    }
    const out: string[] = []
    for (let i = 0; i < mark.length; i++) if (mark[i] === 1) out.push(pages.bounds[i] as string)
    return out
  }

  /** Adds a page's operations to the slice; a full slice is written (and awaited) before the next page. */
  private async addToSlice(slice: Slice, ops: WriteOp[], keys: number, bytes: number): Promise<void> {
    for (const op of ops) slice.ops.push(op)
    slice.keys += keys
    slice.total += keys
    slice.bytes += bytes
    this.stats.snapshotWrites += keys
    if (slice.keys >= this.options.compactSliceKeys) {
      // Awaiting the slice's batch both yields to requests and bounds what compaction queues.
      const ops = slice.ops
      slice.ops = []
      slice.keys = 0
      await this.enqueueRaw(ops)
    }
  }

  /**
   * Writes page i from the current states of the keys in its range (`keys`: the view's keys,
   * sorted). A page under PAGE_MIN_BYTES takes in the pages after it; one over PAGE_MAX_BYTES is
   * cut into pages of about PAGE_TARGET_BYTES, in the same batch, so that a range is never
   * half-written on disk.
   *
   * A range with more keys than a slice should hold (a view's first compaction, or many new keys
   * in one range) is first cut into pieces of a slice's worth of keys, written as new pages from
   * the last piece to the first, page i's own piece last. Until then page i's old entry still
   * holds every key of the range, so a crash in between leaves each key in the page that its
   * range says (and maybe also in page i's old entry: recovery joins the two).
   */
  private async writePage(view: View, keys: readonly string[], pages: PageBounds, i: number, slice: Slice): Promise<void> {
    const bounds = pages.bounds
    const lo = lowerBound(keys, bounds[i] as string)
    const end = bounds[i + 1]
    const hi = end === undefined ? keys.length : lowerBound(keys, end)
    const piece = Math.max(1, this.options.compactSliceKeys)
    if (hi - lo > 2 * piece) {
      for (let s = lo + piece * Math.floor((hi - lo - 1) / piece), until = hi; s > lo; until = s, s -= piece) {
        if (this.closed || this.store.viewByNo(view.no) !== view) return
        const start = keys[s] as string
        const ops: WriteOp[] = []
        const page = this.encodeRange(view, keys, s, keys[until])
        if (page.n === 0) continue
        const starts = this.pageOps(view.no, start, page, ops)
        pages.bounds.splice(i + 1, 0, start, ...starts)
        await this.addToSlice(slice, ops, page.n, page.body.length)
      }
    }
    const ops: WriteOp[] = []
    let j = i + 1
    let k = lo
    const enc = this.resetPageEncoder()
    let n = 0
    const cuts: Cut[] = []
    for (;;) {
      const r = this.encodeRange(view, keys, k, bounds[j], enc, cuts)
      k = r.next
      n += r.n
      // A small page takes in the next one (expiry emptied it, or most of it).
      if (r.body.length >= PAGE_MIN_BYTES || j >= bounds.length) break
      j++
    }
    const page = { body: encodedBody(enc), cuts, n }
    // Pages i+1 .. j-1 are taken in: their entries go (a cut at the same key puts it back, later in the batch).
    for (let x = i + 1; x < j; x++) ops.push({ type: 'del', key: pageKey(view.no, bounds[x] as string) })
    if (n === 0) {
      ops.push({ type: 'del', key: pageKey(view.no, bounds[i] as string) })
      if (i > 0) pages.remove(i, j)
      else pages.replace(0, j, [])
    } else {
      pages.replace(i, j, this.pageOps(view.no, bounds[i] as string, page, ops))
    }
    await this.addToSlice(slice, ops, n, page.body.length)
  }

  private resetPageEncoder(): encoding.Encoder {
    const enc = this.pageEnc
    enc.cpos = 0
    enc.bufs.length = 0
    return enc
  }

  /**
   * Encodes the entries of keys[from..] below `end` (all the rest if undefined) that have a
   * state, appending to `enc` (a fresh page encoder unless given) and noting in `cuts` where a
   * page of PAGE_TARGET_BYTES would end.
   */
  private encodeRange(view: View, keys: readonly string[], from: number, end: string | undefined, enc = this.resetPageEncoder(), cuts: Cut[] = []): EncodedPage & { next: number } {
    const { states, type } = view
    const encodeState = (e: encoding.Encoder, state: unknown): void => type.encode(e, state)
    let chunkStart = cuts.length > 0 ? (cuts[cuts.length - 1] as Cut).at : 0
    let n = 0
    let k = from
    for (; k < keys.length; k++) {
      const key = keys[k] as string
      if (end !== undefined && key >= end) break
      const state = states.get(key)
      if (state === undefined) continue // gone since (expired)
      const at = encodedLength(enc)
      if (at - chunkStart >= PAGE_TARGET_BYTES) {
        cuts.push({ at, key })
        chunkStart = at
      }
      writePageEntry(enc, key, encodeState, state)
      n++
    }
    return { body: encodedBody(enc), cuts, n, next: k }
  }

  /**
   * The puts of an encoded page whose range starts at `first`: one page, or, past
   * PAGE_MAX_BYTES, one per cut. Returns the first keys of the pages after the first.
   */
  private pageOps(viewNo: number, first: string, page: EncodedPage, ops: WriteOp[]): string[] {
    const { body } = page
    let cuts = page.cuts
    if (body.length <= PAGE_MAX_BYTES) cuts = []
    // A short tail stays with the page before it.
    else if (cuts.length > 0 && body.length - (cuts[cuts.length - 1] as Cut).at < PAGE_MIN_BYTES) cuts = cuts.slice(0, -1)
    let from = 0
    let key = first
    for (let c = 0; c <= cuts.length; c++) {
      const to = c < cuts.length ? (cuts[c] as Cut).at : body.length
      ops.push({ type: 'put', key: pageKey(viewNo, key), value: seal(body.subarray(from, to)) })
      this.stats.pageWrites++
      if (c < cuts.length) {
        from = to
        key = (cuts[c] as Cut).key
      }
    }
    return cuts.map((c) => c.key)
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

  /** The keys whose states the snapshots on disk hold (pages and layout 1's), read back from disk: for tests and tools. */
  async snapshotKeys(): Promise<Array<{ viewNo: number; key: string }>> {
    const out: Array<{ viewNo: number; key: string }> = []
    for await (const chunk of this.adapter.scan(PAGE_RANGE)) {
      for (const [k, v] of chunk) {
        const { viewNo } = parsePageKey(k)
        readPage(v, (key, dec, end) => {
          out.push({ viewNo, key })
          dec.pos = end
        })
      }
    }
    for await (const chunk of this.adapter.scan(SNAPSHOT_RANGE)) for (const [k] of chunk) out.push(parseSnapshotKey(k))
    return out
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
    await this.cleanup
    await this.adapter.close()
  }
}
