/**
 * The batch views of a node, one per view, and expiry as a join (DESIGN.md): a bucketed view is a
 * pair (batch view, realtime buckets after its horizon). Buckets that end at or before the
 * horizon are bottom on the realtime side, so
 *   - when a batch view wins (a local import or one merged from a peer), the realtime keys it
 *     covers are dropped from the store, and storage deletes their snapshots at the next
 *     compaction (the store's 'expire' event marks them dirty);
 *   - from then on, any op or delta for a covered key joins to nothing: a late local write, the
 *     ingest of an old event, a peer's delta or state, a delta replayed from the log at recovery
 *     (the log may still hold deltas of expired keys; they are dropped as they are replayed);
 *   - keys that are not bucketed (no ISO bucket suffix) are never covered.
 * The cover test is installed in the store only once a batch view exists, so a node without one
 * pays nothing on the write path.
 *
 * A batch view applies to a view only while the view's definition has the type and bucket size it
 * was imported for; otherwise (the view was redefined) it is kept, joins as usual, and is ignored.
 *
 * Persistence: each batch view is one meta record "batch:<view>" written through the storage
 * write queue (so an import is acknowledged once durable, like a write), loaded before the log is
 * replayed, and applied to the keys loaded from snapshots right after recovery (`sweep`).
 */
import type { Timestamp } from '../../crdts/types.js'
import type { Stamp } from '../../crdts/hlc.js'
import { compareTimestamps } from '../../crdts/hlc.js'
import type { ViewStore, View } from '../store/viewStore.js'
import type { Storage } from '../storage/engine.js'
import { StorageError } from '../storage/adapter.js'
import { bucketSizeOf, bucketStartOf } from './buckets.js'
import { BatchValueError, checkBatchKey, compareBatchViews, decodeBatchView, encodeBatchView, makeBatchView, validateBatchValue, type BatchValue, type BatchView } from './batchView.js'

const META_PREFIX = 'batch:'

/** A request the batch layer cannot take; `status` is the HTTP answer it maps to. */
export class QueryError extends Error {
  override readonly name = 'QueryError'
  constructor(
    readonly status: 400 | 404 | 409,
    readonly code: string,
    message: string,
  ) {
    super(message)
  }
}

export interface BatchHost {
  store: ViewStore
  storage: Storage
  /** A fresh reading of the node's hybrid logical clock. */
  tick(): Timestamp
  replica: string
  now(): number
  /** Horizons further than this beyond now() are refused: no batch layer has exact results for the future. */
  maxDriftMs: number
}

export interface ImportResult {
  won: boolean
  /** Keys in the imported batch view. */
  keys: number
  /** Realtime keys it made expire (0 when it lost). */
  expired: number
  /** The batch view this node holds now (the import, or the one it lost to). */
  horizon: number
  stamp: Stamp
}

export interface BatchStats {
  /** Local imports that won. */
  imports: number
  /** Local imports that lost to a batch view with a higher (horizon, stamp). */
  lost: number
  /** Batch views from peers that won here. */
  merged: number
  /** Realtime keys dropped because a batch horizon came to cover them. */
  expiredKeys: number
}

/** Validated entries for an import: built line by line (the HTTP route) or from a map (embedders). */
export class BatchEntries {
  readonly list: Array<[string, BatchValue]> = []
  private readonly seen = new Set<string>()

  constructor(
    readonly view: View,
    readonly sizeMs: number,
    readonly horizon: number,
  ) {}

  /** Adds one entry; throws BatchValueError saying what is wrong with it. */
  add(key: unknown, value: unknown): void {
    if (typeof key !== 'string') throw new BatchValueError(`"key" must be a string, got ${key === null ? 'null' : typeof key}`)
    const bad = checkBatchKey(key, this.sizeMs, this.horizon)
    if (bad !== null) throw new BatchValueError(bad)
    if (this.seen.has(key)) throw new BatchValueError(`key ${JSON.stringify(key)} is given twice`)
    const v = validateBatchValue(this.view.def.type, value)
    this.seen.add(key)
    this.list.push([key, v])
  }

  get size(): number {
    return this.list.length
  }
}

export class BatchViews {
  private readonly byName = new Map<string, BatchView>()
  private readonly listeners = new Set<(view: string) => void>()
  /** Bucket size per view object (NaN: not bucketed); a redefinition makes a new View. */
  private readonly sizes = new WeakMap<View, number>()
  private gateInstalled = false
  readonly stats: BatchStats = { imports: 0, lost: 0, merged: 0, expiredKeys: 0 }

  constructor(private readonly host: BatchHost) {}

  /** The bucket size of a view, or NaN. */
  sizeOf(view: View): number {
    let s = this.sizes.get(view)
    if (s === undefined) {
      s = bucketSizeOf(view.def) ?? NaN
      this.sizes.set(view, s)
    }
    return s
  }

  /** The batch view that applies to `view` now (same type and bucket size), if any. */
  current(view: View): BatchView | undefined {
    const bv = this.byName.get(view.name)
    if (bv === undefined || bv.type !== view.def.type || bv.sizeMs !== this.sizeOf(view)) return undefined
    return bv
  }

  /** The batch view held for a view name, applicable or not. */
  get(name: string): BatchView | undefined {
    return this.byName.get(name)
  }

  /** True when a batch horizon covers this key of this view: its realtime part is bottom. */
  covers(view: View, key: string): boolean {
    const bv = this.current(view)
    if (bv === undefined) return false
    // NaN (a plain key) compares false: plain keys never expire.
    return bucketStartOf(key) + bv.sizeMs <= bv.horizon
  }

  views(): string[] {
    return [...this.byName.keys()].sort()
  }

  onChange(listener: (view: string) => void): () => void {
    this.listeners.add(listener)
    return () => this.listeners.delete(listener)
  }

  encode(name: string): Uint8Array | null {
    const bv = this.byName.get(name)
    return bv === undefined ? null : encodeBatchView(bv)
  }

  /** Starts an import: checks the view and the horizon, and returns the entries to fill. */
  begin(name: string, horizon: number): BatchEntries {
    const view = this.host.store.view(name)
    const size = this.sizeOf(view)
    if (Number.isNaN(size)) {
      throw new QueryError(400, 'not_bucketed', `view "${name}" has no bucketed ingest rule ("ingest": {"bucket": ...}): a batch view covers buckets, so only bucketed views take one`)
    }
    if (!Number.isSafeInteger(horizon) || horizon < 0) throw new QueryError(400, 'bad_param', `horizon must be a time in ms since the epoch (or ISO 8601), got ${horizon}`)
    const limit = this.host.now() + this.host.maxDriftMs
    if (horizon > limit) {
      throw new QueryError(400, 'bad_param', `horizon ${new Date(horizon).toISOString()} is in the future (more than --max-drift ahead of this node's clock): a batch layer has exact results only for the past`)
    }
    return new BatchEntries(view, size, horizon)
  }

  /**
   * Imports a batch view (the whole of it replaces whatever this node holds, if it wins) and
   * resolves once it is durable. `entries` are validated ones (from `begin`) or raw key -> value
   * pairs. `stamp` is for tests and tools; by default the node's clock stamps the import, above
   * the stamp of the batch view it holds, so a replica's later import always beats its earlier ones.
   */
  async import(name: string, horizon: number, entries: BatchEntries | Iterable<readonly [string, unknown]> | Record<string, unknown>, stamp?: Stamp): Promise<ImportResult> {
    let valid: BatchEntries
    if (entries instanceof BatchEntries) {
      valid = entries
      if (valid.view !== this.host.store.view(name) || valid.horizon !== horizon) throw new QueryError(409, 'conflict', `view "${name}" was redefined while its batch view was read (or the entries were checked for another horizon); import it again`)
    } else {
      valid = this.begin(name, horizon)
      const list = Symbol.iterator in entries ? (entries as Iterable<readonly [string, unknown]>) : Object.entries(entries)
      for (const [k, v] of list) {
        try {
          valid.add(k, v)
        } catch (err) {
          if (err instanceof BatchValueError) throw new QueryError(400, 'bad_value', `key ${JSON.stringify(k)}: ${err.message}`)
          throw err
        }
      }
    }
    const view = valid.view
    const held = this.byName.get(name)
    let s: Stamp
    if (stamp !== undefined) s = stamp
    else {
      let t = this.host.tick()
      if (held !== undefined && compareTimestamps(t, held.stamp) <= 0) t = { ts: held.stamp.ts, c: held.stamp.c + 1 }
      s = { ts: t.ts, c: t.c, r: this.host.replica }
    }
    const bv = makeBatchView({ view: name, type: view.def.type, sizeMs: valid.sizeMs, horizon, stamp: s }, valid.list)
    if (held !== undefined && compareBatchViews(bv, held) <= 0) {
      this.stats.lost++
      return { won: false, keys: bv.keys.length, expired: 0, horizon: held.horizon, stamp: held.stamp }
    }
    const expired = this.install(bv)
    this.stats.imports++
    await this.persist(bv)
    return { won: true, keys: bv.keys.length, expired, horizon: bv.horizon, stamp: bv.stamp }
  }

  /**
   * Joins a batch view from a peer (encoded as `encode` makes it). True if it won here; then the
   * realtime keys it covers expire exactly as for a local import. Throws CrdtDecodeError on bytes
   * that do not decode, and QueryError when they are for another view.
   */
  merge(name: string, bytes: Uint8Array): boolean {
    const bv = decodeBatchView(bytes)
    if (bv.view !== name) throw new QueryError(400, 'bad_value', `the batch view is for view "${bv.view}", not "${name}"`)
    const held = this.byName.get(name)
    if (held !== undefined && compareBatchViews(bv, held) <= 0) return false
    this.install(bv)
    this.stats.merged++
    void this.persist(bv).catch(() => {})
    return true
  }

  /** Makes `bv` the batch view of its view: expires what it covers, tells the listeners. */
  private install(bv: BatchView): number {
    this.byName.set(bv.view, bv)
    this.ensureGate()
    const expired = this.host.store.hasView(bv.view) ? this.expireCovered(this.host.store.view(bv.view)) : 0
    for (const l of this.listeners) l(bv.view)
    return expired
  }

  private persist(bv: BatchView): Promise<void> {
    return this.host.storage.putMeta(META_PREFIX + bv.view, encodeBatchView(bv))
  }

  private ensureGate(): void {
    if (this.gateInstalled) return
    this.gateInstalled = true
    this.host.store.setCoverTest((view, key) => this.covers(view, key))
  }

  /** Drops every realtime key of `view` its batch view covers; returns how many. */
  private expireCovered(view: View): number {
    if (this.current(view) === undefined) return 0
    const gone: string[] = []
    for (const key of view.states.keys()) if (this.covers(view, key)) gone.push(key)
    for (const key of gone) this.host.store.expire(view, key)
    if (gone.length > 0) {
      this.stats.expiredKeys += gone.length
      // Compaction writes the deletions; one already running took its dirty set before these.
      const storage = this.host.storage
      if (storage.getStats().compacting) void storage.compact().then(() => storage.compact())
      else void storage.compact()
    }
    return gone.length
  }

  /** Loads the saved batch views (call before recovery replays the log, so covered deltas drop). */
  async load(): Promise<number> {
    const saved = await this.host.storage.scanMeta(META_PREFIX)
    for (const { name, body } of saved) {
      let bv: BatchView
      try {
        bv = decodeBatchView(body)
      } catch (err) {
        throw new StorageError('corrupt', `the saved batch view "${name}" is corrupt (${(err as Error).message})`)
      }
      const held = this.byName.get(bv.view)
      if (held === undefined || compareBatchViews(bv, held) > 0) this.byName.set(bv.view, bv)
    }
    if (this.byName.size > 0) this.ensureGate()
    return saved.length
  }

  /** After recovery: expires the covered keys that snapshots brought back. Returns how many. */
  sweep(): number {
    let n = 0
    for (const name of this.byName.keys()) if (this.host.store.hasView(name)) n += this.expireCovered(this.host.store.view(name))
    return n
  }
}
