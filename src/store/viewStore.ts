/**
 * The ViewStore: the catalog of views and, per view, its keyed CRDT states in memory, in an
 * ordered index. It is pure bookkeeping over crdts/: no disk, no network, no clock. The node
 * wires it to storage (durability) and replication; the store only says what changed.
 *
 * The catalog is itself a CRDT (an LWW map of view name -> definition) so definitions replicate
 * like values, and two definitions of one view made on two sides of a partition resolve to the
 * same winner everywhere (the highest stamp).
 */
import { crdtTypes, lwwmap, type AnyCrdtType, type OpContext } from '../../crdts/index.js'
import { CrdtOpError } from '../../crdts/types.js'
import type { LWWMapState } from '../../crdts/lwwmap.js'
import { KeyIndex, type ScanPage } from './keyIndex.js'
import { canonicalJson, checkName, parseDefinition, type ViewDefinition } from './definition.js'

export type StoreErrorCode = 'unknown_view' | 'bad_op' | 'bad_key' | 'conflict' | 'bad_definition' | 'limit'

export class StoreError extends Error {
  override readonly name = 'StoreError'
  constructor(
    readonly code: StoreErrorCode,
    message: string,
  ) {
    super(message)
  }
}

export interface StoreLimits {
  maxViews: number
  /** Elements of one op: array items, or fields of a set. */
  maxOpElements: number
}

export const DEFAULT_STORE_LIMITS: StoreLimits = { maxViews: 1000, maxOpElements: 10_000 }

export interface View {
  readonly name: string
  readonly def: ViewDefinition
  /** Canonical JSON of `def`. */
  readonly defJson: string
  readonly type: AnyCrdtType
  /** A local number for this (view, definition): storage keys use it; a new definition gets a new one. */
  readonly no: number
  readonly states: KeyIndex<unknown>
}

export type StoreEvent =
  | { kind: 'value'; view: View; key: string; delta: unknown; local: boolean }
  | { kind: 'define'; view: View; replaced: View | null; dropped: number }
  /** A key whose state went (expired by a batch horizon): storage deletes its snapshot. */
  | { kind: 'expire'; view: View; key: string }

/**
 * Says whether a key of a view is bottom: covered by a batch horizon (DESIGN.md, "Expiry is a
 * join too"). Installed by the query layer; the store only asks it.
 */
export type CoverTest = (view: View, key: string) => boolean

export type StoreListener = (event: StoreEvent) => void

export class ViewStore {
  readonly limits: StoreLimits
  private catalogState: LWWMapState = lwwmap.empty()
  private readonly byName = new Map<string, View>()
  private readonly byNo = new Map<number, View>()
  private nextNo = 1
  private readonly savedNumbers = new Map<string, number>()
  private readonly listeners = new Set<StoreListener>()
  /** Values dropped because their view's definition lost to a concurrent one. */
  droppedByRedefinition = 0
  private cover: CoverTest | null = null
  /** Ops and deltas for covered keys, dropped (they join to nothing). */
  droppedCovered = 0

  constructor(limits: Partial<StoreLimits> = {}) {
    this.limits = { ...DEFAULT_STORE_LIMITS, ...limits }
  }

  subscribe(listener: StoreListener): () => void {
    this.listeners.add(listener)
    return () => this.listeners.delete(listener)
  }

  private emit(event: StoreEvent): void {
    for (const l of this.listeners) l(event)
  }

  views(): View[] {
    return [...this.byName.values()].sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0))
  }

  view(name: string): View {
    const v = this.byName.get(name)
    if (!v) throw new StoreError('unknown_view', `no view named "${name}"; create it with PUT /views/${encodeURIComponent(name)}`)
    return v
  }

  viewByNo(no: number): View | undefined {
    return this.byNo.get(no)
  }

  hasView(name: string): boolean {
    return this.byName.has(name)
  }

  /**
   * Defines a view locally. Returns 'exists' when an identical definition is there, throws
   * StoreError('conflict') when a different one is; else returns the catalog delta to persist and
   * replicate.
   */
  define(name: string, raw: unknown, ctx: OpContext): { result: 'created' | 'exists'; catalogDelta: unknown | null } {
    const bad = checkName(name, 'a view name')
    if (bad) throw new StoreError('bad_key', bad)
    let def: ViewDefinition
    try {
      def = parseDefinition(raw)
    } catch (err) {
      throw new StoreError('bad_definition', (err as Error).message)
    }
    const defJson = canonicalJson(def)
    const existing = this.byName.get(name)
    if (existing) {
      if (existing.defJson === defJson) return { result: 'exists', catalogDelta: null }
      throw new StoreError('conflict', `view "${name}" already exists with another definition: ${existing.defJson}`)
    }
    if (this.byName.size >= this.limits.maxViews) {
      throw new StoreError('limit', `at most ${this.limits.maxViews} views; this node has that many already`)
    }
    const delta = lwwmap.apply(this.catalogState, lwwmap.validate({ set: { [name]: def } }), ctx)
    this.syncCatalog()
    return { result: 'created', catalogDelta: delta }
  }

  /** Joins a catalog state or delta (from a peer or from disk). Returns true if it changed. */
  mergeCatalog(delta: LWWMapState): boolean {
    if (!lwwmap.join(this.catalogState, delta)) return false
    this.syncCatalog()
    return true
  }

  catalog(): LWWMapState {
    return this.catalogState
  }

  /** Brings the view table in line with the catalog's value: new views appear, redefined ones restart empty. */
  private syncCatalog(): void {
    const defs = lwwmap.value(this.catalogState) as Record<string, unknown>
    for (const [name, raw] of Object.entries(defs)) {
      let def: ViewDefinition
      try {
        def = parseDefinition(raw)
      } catch {
        continue // a definition this version cannot read: leave the view out rather than guess
      }
      const defJson = canonicalJson(def)
      const existing = this.byName.get(name)
      if (existing && existing.defJson === defJson) continue
      const view: View = { name, def, defJson, type: crdtTypes[def.type], no: this.savedNumbers.get(`${name}\u0000${defJson}`) ?? this.nextNo++, states: new KeyIndex() }
      const dropped = existing ? existing.states.size : 0
      if (existing) {
        this.byNo.delete(existing.no)
        this.droppedByRedefinition += dropped
      }
      this.byName.set(name, view)
      this.byNo.set(view.no, view)
      this.emit({ kind: 'define', view, replaced: existing ?? null, dropped })
    }
  }

  /**
   * Loads the catalog saved on disk together with the local numbers its views had, so storage
   * keys stay valid across restarts. Call once, before anything else touches the store.
   */
  loadCatalog(state: LWWMapState, numbers: Array<{ name: string; defJson: string; no: number }>, nextNo: number): void {
    this.nextNo = Math.max(this.nextNo, nextNo)
    for (const n of numbers) {
      this.savedNumbers.set(`${n.name}\u0000${n.defJson}`, n.no)
      if (n.no >= this.nextNo) this.nextNo = n.no + 1
    }
    this.mergeCatalog(state)
    this.savedNumbers.clear()
  }

  /** The catalog as storage saves it. */
  savedCatalog(): { state: LWWMapState; numbers: Array<{ name: string; defJson: string; no: number }>; nextNo: number } {
    return { state: this.catalogState, numbers: this.numbers(), nextNo: this.nextNo }
  }

  readonly catalogType = lwwmap

  /**
   * Installs the test of covered keys: from then on an op or a delta for a covered key joins to
   * nothing (dropped and counted). Keys already held are the installer's to `expire`.
   */
  setCoverTest(test: CoverTest | null): void {
    this.cover = test
  }

  isCovered(view: View, key: string): boolean {
    return this.cover !== null && this.cover(view, key)
  }

  /** Drops a key's state (a batch horizon now covers it); emits 'expire'. False if it was absent. */
  expire(view: View, key: string): boolean {
    if (!view.states.delete(key)) return false
    this.emit({ kind: 'expire', view, key })
    return true
  }

  /**
   * Puts a state recovered from disk in place, without events (keys best given in ascending
   * order). A key loaded twice (found in two places on disk) holds the join of both.
   */
  load(view: View, key: string, state: unknown): void {
    const had = view.states.load(key, state)
    if (had !== undefined) view.type.join(had, state)
  }

  keyCount(): number {
    let n = 0
    for (const v of this.byName.values()) n += v.states.size
    return n
  }

  numbers(): Array<{ name: string; defJson: string; no: number }> {
    return this.views().map((v) => ({ name: v.name, defJson: v.defJson, no: v.no }))
  }

  /**
   * Validates and applies an op; returns the delta and the new value. Nothing changes when it throws.
   * `withValue` false skips computing the value (undefined then): bulk ingest never reads it, and
   * for a large set or a dense sketch it costs far more than the op itself.
   * A valid op for a key a batch horizon covers changes nothing: `dropped` is true, `delta` null,
   * and the value is the type's empty value (the realtime part of a covered key is bottom).
   */
  apply(viewName: string, key: string, rawOp: unknown, ctx: OpContext, withValue = true): { view: View; delta: unknown; value: unknown; dropped?: true } {
    const view = this.view(viewName)
    const bad = checkName(key, 'a key')
    if (bad) throw new StoreError('bad_key', bad)
    checkOpSize(rawOp, this.limits.maxOpElements)
    let op: unknown
    try {
      op = view.type.validate(rawOp)
    } catch (err) {
      if (err instanceof CrdtOpError) throw new StoreError('bad_op', err.message)
      throw err
    }
    if (this.cover !== null && this.cover(view, key)) {
      this.droppedCovered++
      return { view, delta: null, value: withValue ? view.type.value(view.type.empty()) : undefined, dropped: true }
    }
    let state = view.states.get(key)
    const fresh = state === undefined
    if (fresh) state = view.type.empty()
    let delta: unknown
    try {
      delta = view.type.apply(state, op, ctx)
    } catch (err) {
      if (err instanceof CrdtOpError) throw new StoreError('bad_op', err.message)
      throw err
    }
    // A no-op on a new key (an empty add, an inc of 0) leaves no key: peers and recovery create a
    // key only when a delta changes it, so keeping an empty one here would make replicas' key sets differ.
    if (fresh && view.type.join(view.type.empty(), delta)) view.states.set(key, state)
    this.emit({ kind: 'value', view, key, delta, local: true })
    return { view, delta, value: withValue ? view.type.value(state) : undefined }
  }

  /** Joins a state or delta into a key of a view; returns true if it changed. A covered key joins to nothing. */
  merge(view: View, key: string, delta: unknown, local = false): boolean {
    if (this.cover !== null && this.cover(view, key)) {
      this.droppedCovered++
      return false
    }
    let state = view.states.get(key)
    if (state === undefined) {
      state = view.type.empty()
      if (!view.type.join(state, delta)) return false
      view.states.set(key, state)
    } else if (!view.type.join(state, delta)) {
      return false
    }
    this.emit({ kind: 'value', view, key, delta, local })
    return true
  }

  read(viewName: string, key: string): unknown {
    const view = this.view(viewName)
    const state = view.states.get(key)
    return view.type.value(state ?? view.type.empty())
  }

  state(view: View, key: string): unknown {
    return view.states.get(key)
  }

  scan(viewName: string, opts: { prefix?: string; after?: string; limit: number }): ScanPage<unknown> {
    const view = this.view(viewName)
    const page = view.states.scan(opts)
    return { items: page.items.map(({ key, value }) => ({ key, value: view.type.value(value) })), next: page.next }
  }
}

/** Refuses ops whose arrays or objects exceed the element bound before any type looks at them. */
function checkOpSize(op: unknown, max: number): void {
  if (op === null || typeof op !== 'object') return
  for (const v of Object.values(op as Record<string, unknown>)) {
    const n = Array.isArray(v) ? v.length : v !== null && typeof v === 'object' ? Object.keys(v).length : 0
    if (n > max) throw new StoreError('limit', `an op may carry at most ${max} elements, this one has ${n}`)
  }
}
