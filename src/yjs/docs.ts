/**
 * The Yjs documents of a node: each one loaded on demand into a Y.Doc, edited by y-websocket
 * clients and by peers, persisted update by update (docStore.ts), compacted into a snapshot once
 * its updates pass a bound, and unloaded when idle.
 *
 * The one rule everything here follows: an update is durable before anyone else sees it. An edit
 * applied to a document goes to the group commit; once that batch is written, the updates of the
 * batch (merged into one, so a burst costs each client one message) go to the document's clients
 * and to the peers. Answers to a client's sync step 1 wait for the same barrier. So an edit that
 * a client or a peer has seen survives a `kill -9` of this node.
 *
 * Relay needs no bookkeeping: Yjs emits an update only for what a transaction changed, so an
 * update received from a peer that this node already had emits nothing and goes no further.
 */
import { createHash } from 'node:crypto'
import * as Y from 'yjs'
import * as encoding from 'lib0/encoding'
import { Awareness, applyAwarenessUpdate, encodeAwarenessUpdate, removeAwarenessStates } from 'y-protocols/awareness'
import type { StorageAdapter } from '../storage/adapter.js'
import { DocStore, type DocDir, type StoredDoc } from './docStore.js'
import { encodeAwareness, encodeSyncStep1, encodeSyncStep2, encodeUpdate, parseClientMessage } from './protocol.js'
import type { DocSummary } from './peerMessages.js'

export interface YjsOptions {
  /** A document without clients and without activity for this long is unloaded from memory. */
  idleMs: number
  /** A document is compacted once this many updates follow its snapshot... */
  compactUpdates: number
  /** ...or once they take this many bytes and at least as many as the snapshot. */
  compactMinBytes: number
  /** A client that lets this many bytes pile up unsent is disconnected (it resyncs on reconnect). */
  maxClientBuffer: number
  /** Messages a client may send while its document loads, before it is told to slow down. */
  maxQueuedMessages: number
  fsync: boolean
  now(): number
  log(line: string): void
}

export const DEFAULT_YJS_OPTIONS: Omit<YjsOptions, 'now' | 'log' | 'fsync'> = {
  idleMs: 30_000,
  compactUpdates: 1000,
  compactMinBytes: 256 * 1024,
  maxClientBuffer: 64 * 1024 * 1024,
  maxQueuedMessages: 10_000,
}

/** WebSocket close codes towards clients. 4400-4499: y-websocket clients do not reconnect. */
export const CLIENT_CLOSE = {
  goingAway: 1001,
  internal: 1011,
  tryAgain: 1013,
  malformed: 4400,
} as const

/** An open, message-framed connection to one client (a WebSocket in production). */
export interface ClientChannel {
  send(bytes: Uint8Array): void
  close(code: number, reason: string): void
  bufferedAmount(): number
}

/** Who made a change: decides where it goes next. */
export type Origin =
  | { kind: 'client'; conn: Conn }
  /** Updates of several clients applied in one transaction. */
  | { kind: 'clients' }
  | { kind: 'peer'; peer: string }
  | { kind: 'api' }
  | { kind: 'gone' }
  | { kind: 'local' }

/** The peers, as the documents see them (src/yjs/peers.ts). */
export interface PeerSink {
  /** A durable update of `name` for every connected peer but `except`. */
  update(name: string, update: Uint8Array, except: string | null): void
  awareness(name: string, update: Uint8Array, except: string | null): void
  counters(): { updatesOut: number; catchUpUpdates: number; catchUpBytes: number }
  /** Whether any connected peer but `except` would get an update now. */
  wanted(except: string | null): boolean
}

export interface DocInfo {
  name: string
  /** Bytes of the document's entries on disk (snapshot and updates since; approximate while unloaded after a crash). */
  bytes: number
  clients: number
  updatesSinceCompaction: number
  loaded: boolean
}

export interface YjsStats {
  documents: number
  loaded: number
  clients: number
  updates: number
  updateBytes: number
  compactions: number
  loads: number
  unloads: number
  clientsRefused: number
  peerUpdatesIn: number
  peerUpdatesOut: number
  catchUpUpdates: number
  catchUpBytes: number
}

interface Outbox {
  batch: Promise<void>
  updates: Uint8Array[]
  origins: Origin[]
}

/** A document held in memory. */
class LiveDoc {
  awareness: Awareness | null = null
  readonly conns = new Set<Conn>()
  /** Client updates received this turn of the event loop, applied together (see `drain`). */
  inbox: Array<{ conn: Conn; update: Uint8Array }> = []
  outbox: Outbox | null = null
  compactScheduled = false
  compacting: Promise<void> | null = null
  compactionsSinceDisk = 0
  /** Seq of the last directory record written for this document. */
  dirSeq: number
  /** Awareness client ids learned from each peer: dropped when the link goes. */
  readonly peerClients = new Map<string, Set<number>>()

  constructor(
    readonly entry: DocEntry,
    readonly ydoc: Y.Doc,
    public firstSeq: number,
    public lastSeq: number,
    public snapshotBytes: number,
    public updates: number,
    public updateBytes: number,
    public lastActive: number,
  ) {
    this.dirSeq = entry.dir?.seq ?? -1
  }
}

/** A document this node knows, loaded or not. */
class DocEntry {
  live: LiveDoc | null = null
  loading: Promise<LiveDoc> | null = null
  /** Work waiting for the load, in arrival order. */
  waiting: Array<(live: LiveDoc | null, err?: Error) => void> = []
  constructor(
    readonly name: string,
    /** The directory record on disk (null: none yet, the document exists only in memory). */
    public dir: DocDir | null,
    /** True when entries on disk are newer than `dir` (a crash came between). */
    public stale: boolean,
  ) {}
}

/** One client connection to one document. */
export class Conn {
  /** Awareness client ids this connection announced: removed when it goes. */
  readonly ids = new Set<number>()
  doc: LiveDoc | null = null
  queue: Uint8Array[] = []
  closed = false
  /** Closed for bad input: what it still had queued is dropped. */
  refused = false

  constructor(
    readonly docs: YjsDocs,
    readonly name: string,
    readonly channel: ClientChannel,
  ) {}

  /** One message from the client. */
  receive(bytes: Uint8Array): void {
    this.docs.clientMessage(this, bytes)
  }

  /** The client went away (or was closed). */
  gone(): void {
    this.docs.detach(this)
  }

  /** Closes this connection only. */
  refuse(code: number, reason: string): void {
    this.docs.refuse(this, code, reason)
  }
}

const EMPTY_SV = Y.encodeStateVector(new Y.Doc())

/**
 * A digest of a document's delete set, in a canonical order: two replicas with the same
 * deletions have the same digest, so catch-up can skip a document without loading it.
 */
export function deleteSetHash(doc: Y.Doc): Uint8Array {
  const ds = Y.createDeleteSetFromStructStore(doc.store)
  const enc = encoding.createEncoder()
  const clients = [...ds.clients.keys()].sort((a, b) => a - b)
  for (const c of clients) {
    const items = ds.clients.get(c) ?? []
    encoding.writeVarUint(enc, c)
    encoding.writeVarUint(enc, items.length)
    for (const it of items) {
      encoding.writeVarUint(enc, it.clock)
      encoding.writeVarUint(enc, it.len)
    }
  }
  return new Uint8Array(createHash('sha256').update(encoding.toUint8Array(enc)).digest().subarray(0, 16))
}

/** True when state vector `a` holds a struct that `b` lacks. */
export function aheadOf(a: Uint8Array, b: Uint8Array): boolean {
  const bm = Y.decodeStateVector(b)
  for (const [client, clock] of Y.decodeStateVector(a)) if ((bm.get(client) ?? 0) < clock) return true
  return false
}

function sameBytes(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false
  return true
}

export class YjsDocs {
  readonly options: YjsOptions
  readonly store: DocStore
  private readonly entries = new Map<string, DocEntry>()
  private peers: PeerSink | null = null
  private closing: Promise<void> | null = null
  private readonly toDrain = new Set<LiveDoc>()
  /** Per pending batch, the documents whose updates go out once it is written. */
  private readonly deliveries = new Map<Promise<void>, Array<[LiveDoc, Outbox]>>()
  private drainScheduled = false
  private sweepTimer: NodeJS.Timeout | null = null
  readonly stats: YjsStats = {
    documents: 0,
    loaded: 0,
    clients: 0,
    updates: 0,
    updateBytes: 0,
    compactions: 0,
    loads: 0,
    unloads: 0,
    clientsRefused: 0,
    peerUpdatesIn: 0,
    peerUpdatesOut: 0,
    catchUpUpdates: 0,
    catchUpBytes: 0,
  }

  private constructor(adapter: StorageAdapter, options: YjsOptions) {
    this.options = options
    this.store = new DocStore(adapter, { fsync: options.fsync })
  }

  /** Reads the directory of documents (nothing else: documents load when first used). */
  static async open(adapter: StorageAdapter, options: Partial<YjsOptions> = {}): Promise<YjsDocs> {
    const docs = new YjsDocs(adapter, {
      ...DEFAULT_YJS_OPTIONS,
      fsync: false,
      now: Date.now,
      log: (line) => process.stderr.write(`${line}\n`),
      ...options,
    })
    for (const d of await docs.store.directory()) docs.entries.set(d.name, new DocEntry(d.name, d.dir, d.lastSeq > d.dir.seq))
    const every = Math.max(10, Math.min(docs.options.idleMs / 2, 5000))
    docs.sweepTimer = setInterval(() => docs.sweep(), every)
    docs.sweepTimer.unref()
    return docs
  }

  setPeers(sink: PeerSink): void {
    this.peers = sink
  }

  // ---- documents ----

  /** Names of the documents this node holds on disk (documents only opened, never edited, are not). */
  names(): string[] {
    const out: string[] = []
    for (const e of this.entries.values()) if (e.dir !== null) out.push(e.name)
    return out
  }

  list(): DocInfo[] {
    const out: DocInfo[] = []
    for (const e of this.entries.values()) {
      const live = e.live
      out.push({
        name: e.name,
        bytes: live ? live.snapshotBytes + live.updateBytes : (e.dir?.bytes ?? 0),
        clients: live ? live.conns.size : 0,
        updatesSinceCompaction: live ? live.updates : (e.dir?.updates ?? 0),
        loaded: live !== null,
      })
    }
    return out.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0))
  }

  getStats(): YjsStats {
    let loaded = 0
    let clients = 0
    for (const e of this.entries.values()) {
      if (e.live) {
        loaded++
        clients += e.live.conns.size
      }
    }
    const p = this.peers?.counters()
    return { ...this.stats, documents: this.entries.size, loaded, clients, peerUpdatesOut: p?.updatesOut ?? 0, catchUpUpdates: p?.catchUpUpdates ?? 0, catchUpBytes: p?.catchUpBytes ?? 0 }
  }

  /** Bytes waiting to be written. */
  pendingBytes(): number {
    return this.store.pendingBytes()
  }

  private entry(name: string): DocEntry {
    let e = this.entries.get(name)
    if (!e) {
      e = new DocEntry(name, null, false)
      this.entries.set(name, e)
    }
    return e
  }

  /**
   * Runs `fn` with the loaded document: at once when it is in memory, else once it has loaded
   * (work for one document runs in arrival order). `fn` gets null when the load failed.
   */
  private withDoc(name: string, fn: (live: LiveDoc | null, err?: Error) => void): void {
    const e = this.entry(name)
    if (e.live) {
      e.live.lastActive = this.options.now()
      fn(e.live)
      return
    }
    if (e.dir === null && e.loading === null) {
      // Never written here: nothing on disk to read (a document's first update writes its record).
      e.live = this.makeLive(e, null)
      fn(e.live)
      return
    }
    e.waiting.push(fn)
    e.loading ??= this.load(e)
  }

  /** The loaded document (loading it if needed). */
  acquire(name: string): Promise<LiveDoc> {
    if (this.closing) return Promise.reject(new Error('the node is shutting down'))
    return new Promise((resolve, reject) => this.withDoc(name, (live, err) => (live ? resolve(live) : reject(err ?? new Error('load failed')))))
  }

  private async load(e: DocEntry): Promise<LiveDoc> {
    let live: LiveDoc
    try {
      live = this.makeLive(e, await this.store.read(e.name))
      this.stats.loads++
    } catch (err) {
      e.loading = null
      const waiting = e.waiting
      e.waiting = []
      this.options.log(`yjs: cannot load document "${e.name}": ${(err as Error).message}`)
      for (const w of waiting) w(null, err as Error)
      throw err
    }
    e.live = live
    e.loading = null
    const waiting = e.waiting
    e.waiting = []
    for (const w of waiting) w(live)
    // A document loaded for nothing (e.g. by catch-up) still unloads when idle.
    return live
  }

  /** A document in memory, from what `read` found on disk (null: nothing). */
  private makeLive(e: DocEntry, stored: StoredDoc | null): LiveDoc {
    // The guid is the name: Y.Doc's default guid, a random uuid, costs ~0.8 ms of webcrypto calls.
    const ydoc = new Y.Doc({ guid: e.name })
    if (stored?.snapshot) Y.applyUpdate(ydoc, stored.snapshot)
    // One transaction: many small updates apply far faster that way than merged first by Y.mergeUpdates.
    if (stored && stored.updates.length > 0) ydoc.transact(() => stored.updates.forEach((u) => Y.applyUpdate(ydoc, u)))
    const live = new LiveDoc(e, ydoc, stored?.firstSeq ?? 0, stored?.lastSeq ?? 0, stored?.snapshotBytes ?? 0, stored?.updates.length ?? 0, stored?.updateBytes ?? 0, this.options.now())
    // Listening only now: what was loaded is on disk already.
    ydoc.on('update', (update: Uint8Array, origin: unknown) => this.onDocUpdate(live, update, origin as Origin))
    return live
  }

  // ---- updates ----

  private onDocUpdate(live: LiveDoc, update: Uint8Array, origin: Origin): void {
    const e = live.entry
    if (e.dir === null) {
      // First write of a new document: its directory record goes in the same batch, so a
      // restart finds every document that has entries.
      e.dir = { seq: 0, sv: EMPTY_SV, dsHash: new Uint8Array(0), bytes: 0, updates: 0 }
      e.stale = true
      void this.store.putDir(e.name, e.dir).catch(() => {})
    }
    const seq = ++live.lastSeq
    if (live.firstSeq === 0) live.firstSeq = seq
    const batch = this.store.append(e.name, seq, update)
    live.updates++
    live.updateBytes += DocStore.entryBytes(update)
    live.lastActive = this.options.now()
    this.stats.updates++
    this.stats.updateBytes += update.length
    let ob = live.outbox
    if (ob === null || ob.batch !== batch) {
      live.outbox = ob = { batch, updates: [], origins: [] }
      let list = this.deliveries.get(batch)
      if (!list) {
        // One callback per batch for every document it holds.
        const docs: Array<[LiveDoc, Outbox]> = (list = [])
        this.deliveries.set(batch, docs)
        batch.then(
          () => {
            this.deliveries.delete(batch)
            for (const [l, o] of docs) this.deliver(l, o)
          },
          (err: Error) => {
            this.deliveries.delete(batch)
            for (const [l, o] of docs) this.storageFailed(l, o, err)
          },
        )
      }
      list.push([live, ob])
    }
    ob.updates.push(update)
    ob.origins.push(origin)
    this.maybeCompact(live)
  }

  /**
   * The updates of one durable batch go to the document's clients and to the peers, each to all
   * but where it came from. (One message per update: Y.mergeUpdates costs more than the sends it
   * saves, and `drain` already makes one update of what a turn of the event loop brought.)
   */
  private deliver(live: LiveDoc, ob: Outbox): void {
    if (live.outbox === ob) live.outbox = null
    for (let i = 0; i < ob.updates.length; i++) {
      const update = ob.updates[i] as Uint8Array
      const o = ob.origins[i] as Origin
      const except = o.kind === 'client' ? o.conn : null
      if (live.conns.size > (except !== null && live.conns.has(except) ? 1 : 0)) {
        const msg = encodeUpdate(update)
        for (const c of live.conns) if (c !== except) this.send(c, msg)
      }
      const peer = o.kind === 'peer' ? o.peer : null
      if (this.peers?.wanted(peer)) this.peers.update(live.entry.name, update, peer)
    }
  }

  /**
   * Applies the client updates a document received this turn in one transaction: Yjs then emits
   * one update for all of them, which costs one log entry and one message per recipient instead
   * of one per update. An update that cannot be applied closes its client only.
   */
  private drain(live: LiveDoc): void {
    const items = live.inbox
    if (items.length === 0) return
    live.inbox = []
    const first = (items[0] as { conn: Conn }).conn
    const origin: Origin = items.every((it) => it.conn === first) ? { kind: 'client', conn: first } : { kind: 'clients' }
    live.ydoc.transact(() => {
      for (const it of items) {
        if (it.conn.refused) continue
        try {
          Y.applyUpdate(live.ydoc, it.update)
        } catch (err) {
          this.refuse(it.conn, CLIENT_CLOSE.malformed, `the update cannot be applied: ${(err as Error).message}`)
        }
      }
    }, origin)
  }

  private scheduleDrain(live: LiveDoc): void {
    this.toDrain.add(live)
    if (this.drainScheduled) return
    this.drainScheduled = true
    setImmediate(() => {
      this.drainScheduled = false
      const docs = [...this.toDrain]
      this.toDrain.clear()
      for (const d of docs) if (d.entry.live === d) this.drain(d)
    })
  }

  private storageFailed(live: LiveDoc, ob: Outbox, err: Error): void {
    if (live.outbox === ob) live.outbox = null
    // Memory holds edits the disk does not: clients must not build on them. They may reconnect
    // once the node restarted from disk.
    this.options.log(`yjs: ${err.message}`)
    for (const c of [...live.conns]) this.refuse(c, CLIENT_CLOSE.internal, 'the node cannot write to disk')
  }

  private maybeCompact(live: LiveDoc): void {
    if (live.compactScheduled || live.compacting !== null || this.closing) return
    const o = this.options
    if (live.updates >= o.compactUpdates || live.updateBytes >= Math.max(o.compactMinBytes, live.snapshotBytes)) {
      live.compactScheduled = true
      // After the current turn: a burst of edits compacts once.
      setImmediate(() => this.compact(live))
    }
  }

  /**
   * Replaces the document's entries by one snapshot of its state now. Queued behind every update
   * appended so far, in one batch with the deletion of what it includes.
   */
  private compact(live: LiveDoc): Promise<void> {
    live.compactScheduled = false
    if (live.compacting) return live.compacting
    if (live.entry.live !== live || this.store.failed || this.closing) return Promise.resolve()
    const e = live.entry
    const seq = live.lastSeq
    const snapshot = Y.encodeStateAsUpdate(live.ydoc)
    const updatesAt = live.updates
    const bytesAt = live.updateBytes
    const dir: DocDir = { seq, sv: Y.encodeStateVector(live.ydoc), dsHash: deleteSetHash(live.ydoc), bytes: DocStore.entryBytes(snapshot), updates: 0 }
    live.compacting = this.store
      .replace(e.name, seq, snapshot, live.firstSeq, dir)
      .then(
        () => {
          live.firstSeq = seq
          live.snapshotBytes = DocStore.entryBytes(snapshot)
          live.updates -= updatesAt
          live.updateBytes -= bytesAt
          live.dirSeq = seq
          e.dir = dir
          e.stale = false
          this.stats.compactions++
          // LevelDB keeps deleted entries until it compacts their files; now and then, ask.
          if (++live.compactionsSinceDisk >= 16) {
            live.compactionsSinceDisk = 0
            void this.store.compactDisk(e.name, live.firstSeq).catch(() => {})
          }
        },
        () => {},
      )
      .finally(() => {
        live.compacting = null
        if (live.entry.live === live) this.maybeCompact(live)
      })
    return live.compacting
  }

  /** The directory record of a loaded document as of now. */
  private summarizeLive(live: LiveDoc): DocDir {
    return { seq: live.lastSeq, sv: Y.encodeStateVector(live.ydoc), dsHash: deleteSetHash(live.ydoc), bytes: live.snapshotBytes + live.updateBytes, updates: live.updates }
  }

  // ---- clients ----

  /** A client connected to document `name`. */
  attach(channel: ClientChannel, name: string): Conn {
    const conn = new Conn(this, name, channel)
    if (this.closing) {
      channel.close(CLIENT_CLOSE.goingAway, 'node is shutting down')
      conn.closed = true
      return conn
    }
    this.withDoc(name, (live) => {
      if (conn.closed) return
      if (this.closing) return this.refuse(conn, CLIENT_CLOSE.goingAway, 'node is shutting down')
      if (!live) return this.refuse(conn, CLIENT_CLOSE.internal, 'the document cannot be loaded')
      conn.doc = live
      live.conns.add(conn)
      // As a y-websocket server does: our state vector (the client answers with what we lack)
      // and who else is here.
      this.send(conn, encodeSyncStep1(Y.encodeStateVector(live.ydoc)))
      const aw = live.awareness
      if (aw && aw.getStates().size > 0) this.send(conn, encodeAwareness(encodeAwarenessUpdate(aw, [...aw.getStates().keys()])))
      const queued = conn.queue
      conn.queue = []
      for (const m of queued) this.clientMessage(conn, m)
    })
    return conn
  }

  clientMessage(conn: Conn, bytes: Uint8Array): void {
    if (conn.closed) return
    const live = conn.doc
    if (!live) {
      // Copied: the transport may reuse its buffer once this returns.
      conn.queue.push(bytes.slice())
      if (conn.queue.length > this.options.maxQueuedMessages) this.refuse(conn, CLIENT_CLOSE.tryAgain, 'too many messages while the document loads')
      return
    }
    let m
    try {
      m = parseClientMessage(bytes)
    } catch (err) {
      return this.refuse(conn, CLIENT_CLOSE.malformed, (err as Error).message)
    }
    live.lastActive = this.options.now()
    if (m.t === 'step2' || m.t === 'update') {
      if (this.store.failed) return this.refuse(conn, CLIENT_CLOSE.internal, 'the node cannot write to disk')
      live.inbox.push({ conn, update: m.update })
      return this.scheduleDrain(live)
    }
    // Whatever else the client says comes after the updates it sent before.
    this.drain(live)
    switch (m.t) {
      case 'step1': {
        const reply = encodeSyncStep2(Y.encodeStateAsUpdate(live.ydoc, m.sv))
        // What the answer holds may still be on its way to disk.
        this.store.barrier().then(
          () => this.send(conn, reply),
          () => {},
        )
        return
      }
      case 'awareness': {
        try {
          applyAwarenessUpdate(this.awarenessOf(live), m.update, { kind: 'client', conn } satisfies Origin)
        } catch (err) {
          return this.refuse(conn, CLIENT_CLOSE.malformed, `the awareness update cannot be applied: ${(err as Error).message}`)
        }
        return
      }
      case 'queryAwareness': {
        const aw = this.awarenessOf(live)
        this.send(conn, encodeAwareness(encodeAwarenessUpdate(aw, [...aw.getStates().keys()])))
        return
      }
    }
  }

  detach(conn: Conn): void {
    if (conn.closed && conn.doc === null) return
    conn.closed = true
    const live = conn.doc
    conn.doc = null
    conn.queue = []
    if (!live) return
    live.conns.delete(conn)
    live.lastActive = this.options.now()
    if (live.awareness && conn.ids.size > 0) removeAwarenessStates(live.awareness, [...conn.ids], { kind: 'gone' } satisfies Origin)
  }

  /** Closes one client's connection (its document and the other clients go on). */
  refuse(conn: Conn, code: number, reason: string): void {
    if (conn.closed) return
    conn.refused = true
    if (code === CLIENT_CLOSE.malformed) this.stats.clientsRefused++
    this.options.log(`yjs: client of "${conn.name}" closed: ${reason}`)
    conn.channel.close(code, reason)
    this.detach(conn)
  }

  private send(conn: Conn, msg: Uint8Array): void {
    if (conn.closed) return
    if (conn.channel.bufferedAmount() > this.options.maxClientBuffer) {
      return this.refuse(conn, CLIENT_CLOSE.tryAgain, 'the client does not keep up with the document')
    }
    conn.channel.send(msg)
  }

  // ---- awareness ----

  /** Created on first use: an idle document needs no awareness (nor its timer). */
  private awarenessOf(live: LiveDoc): Awareness {
    if (live.awareness) return live.awareness
    const aw = new Awareness(live.ydoc)
    aw.setLocalState(null)
    aw.on('update', ({ added, updated, removed }: { added: number[]; updated: number[]; removed: number[] }, origin: unknown) => {
      const o = (typeof origin === 'object' && origin !== null ? origin : { kind: 'local' }) as Origin
      if (o.kind === 'client') {
        for (const id of added) o.conn.ids.add(id)
        for (const id of removed) o.conn.ids.delete(id)
      } else if (o.kind === 'peer') {
        let ids = live.peerClients.get(o.peer)
        if (!ids) live.peerClients.set(o.peer, (ids = new Set()))
        for (const id of added) ids.add(id)
        for (const id of removed) ids.delete(id)
      }
      const update = encodeAwarenessUpdate(aw, [...added, ...updated, ...removed])
      const msg = encodeAwareness(update)
      for (const c of live.conns) this.send(c, msg)
      // What clients (here or behind a peer) said travels on; what this node concluded on its
      // own (a timeout, a lost link) stays here: each node concludes it for itself.
      if (this.peers && (o.kind === 'client' || o.kind === 'peer' || o.kind === 'gone')) this.peers.awareness(live.entry.name, update, o.kind === 'peer' ? o.peer : null)
    })
    live.awareness = aw
    return aw
  }

  // ---- peers ----

  /**
   * An update from a peer. Throws at once for an update the loaded document cannot apply
   * (which closes the link); for a document still loading, such a failure is logged.
   */
  applyRemote(name: string, update: Uint8Array, peer: string): void {
    if (this.closing) return
    this.stats.peerUpdatesIn++
    const state: { sync: boolean; failure: Error | null } = { sync: true, failure: null }
    this.withDoc(name, (live) => {
      if (!live) return
      try {
        Y.applyUpdate(live.ydoc, update, { kind: 'peer', peer } satisfies Origin)
      } catch (err) {
        if (state.sync) state.failure = err as Error
        else this.options.log(`yjs: an update of "${name}" from peer ${peer} cannot be applied: ${(err as Error).message}`)
      }
    })
    state.sync = false
    if (state.failure) throw state.failure
  }

  applyRemoteAwareness(name: string, update: Uint8Array, peer: string): void {
    if (this.closing) return
    this.withDoc(name, (live) => {
      if (!live) return
      try {
        applyAwarenessUpdate(this.awarenessOf(live), update, { kind: 'peer', peer } satisfies Origin)
      } catch (err) {
        this.options.log(`yjs: an awareness update of "${name}" from peer ${peer} cannot be applied: ${(err as Error).message}`)
      }
    })
  }

  /** The link to `peer` went: the clients it told us about are gone from here. */
  peerGone(peer: string): void {
    for (const e of this.entries.values()) {
      const live = e.live
      const ids = live?.peerClients.get(peer)
      if (!live || !ids) continue
      live.peerClients.delete(peer)
      if (live.awareness && ids.size > 0) removeAwarenessStates(live.awareness, [...ids], 'peer link lost')
    }
  }

  /** Awareness of every loaded document that has some, for a peer that just connected. */
  awarenessStates(): Array<{ name: string; update: Uint8Array }> {
    const out: Array<{ name: string; update: Uint8Array }> = []
    for (const e of this.entries.values()) {
      const aw = e.live?.awareness
      if (aw && aw.getStates().size > 0) out.push({ name: e.name, update: encodeAwarenessUpdate(aw, [...aw.getStates().keys()]) })
    }
    return out
  }

  /** What this node holds of `name`, for a peer; null when it holds nothing on disk. */
  async summary(name: string): Promise<DocSummary | null> {
    const e = this.entries.get(name)
    if (!e || e.dir === null) return null
    if (e.live === null && !e.stale) return { name, sv: e.dir.sv, dsHash: e.dir.dsHash }
    const live = await this.acquire(name)
    return { name, sv: Y.encodeStateVector(live.ydoc), dsHash: deleteSetHash(live.ydoc) }
  }

  /**
   * What a peer with `theirs` lacks of the document, once durable here; null when it lacks
   * nothing (or this node holds nothing of it).
   */
  async diffFor(theirs: DocSummary): Promise<Uint8Array | null> {
    const mine = await this.summary(theirs.name)
    if (!mine) return null
    if (!aheadOf(mine.sv, theirs.sv) && sameBytes(mine.dsHash, theirs.dsHash)) return null
    const live = await this.acquire(theirs.name)
    const diff = Y.encodeStateAsUpdate(live.ydoc, theirs.sv)
    await this.store.barrier()
    return diff
  }

  /** The whole document, once durable here; null when this node holds nothing of it. */
  async fullState(name: string): Promise<Uint8Array | null> {
    const e = this.entries.get(name)
    if (!e || e.dir === null) return null
    const live = await this.acquire(name)
    const state = Y.encodeStateAsUpdate(live.ydoc)
    await this.store.barrier()
    return state
  }

  // ---- embedding API ----

  /** Applies an update (as a client would send it); resolves once it is durable. */
  applyUpdate(name: string, update: Uint8Array): Promise<void> {
    const apply = (live: LiveDoc): Promise<void> => {
      if (this.store.failed) return Promise.reject(this.store.failed)
      live.lastActive = this.options.now()
      Y.applyUpdate(live.ydoc, update, { kind: 'api' } satisfies Origin)
      return this.store.barrier()
    }
    const live = this.closing ? null : this.entries.get(name)?.live
    // A loaded document takes the update at once, so that a burst of calls shares one write.
    return live ? apply(live) : this.acquire(name).then(apply)
  }

  /** The document's full state as one update (Y.encodeStateAsUpdate). */
  async encodeState(name: string): Promise<Uint8Array> {
    const live = await this.acquire(name)
    return Y.encodeStateAsUpdate(live.ydoc)
  }

  /**
   * Compacts the document now (the background compactor does it once updates pass the bound);
   * resolves once its snapshot is durable.
   */
  async compactNow(name: string): Promise<void> {
    const live = await this.acquire(name)
    if (live.compacting) await live.compacting
    await this.compact(live)
  }

  /** Resolves once everything applied so far is durable. */
  flushed(): Promise<void> {
    return this.store.barrier()
  }

  // ---- memory ----

  /** Unloads documents that have had no client and no activity for `idleMs`. */
  sweep(): void {
    if (this.closing) return
    const now = this.options.now()
    for (const e of this.entries.values()) {
      const live = e.live
      if (live && now - live.lastActive >= this.options.idleMs) void this.unload(live)
    }
  }

  /** Whether the document may leave memory now. */
  private idle(live: LiveDoc): boolean {
    return live.conns.size === 0 && live.inbox.length === 0 && live.outbox === null && live.compacting === null && !live.compactScheduled && live.entry.waiting.length === 0
  }

  async unload(live: LiveDoc): Promise<void> {
    const e = live.entry
    if (e.live !== live || !this.idle(live)) return
    const active = live.lastActive
    const dir = e.dir === null ? null : live.dirSeq === live.lastSeq && !e.stale ? e.dir : this.summarizeLive(live)
    if (dir !== null && dir !== e.dir) {
      try {
        await this.store.putDir(e.name, dir)
      } catch {
        return
      }
      live.dirSeq = dir.seq
    }
    // Anything that happened meanwhile keeps it here.
    if (e.live !== live || !this.idle(live) || live.lastActive !== active || (dir !== null && live.lastSeq !== dir.seq)) return
    if (live.compactionsSinceDisk > 0) void this.store.compactDisk(e.name, live.firstSeq).catch(() => {})
    live.awareness?.destroy()
    live.ydoc.destroy()
    e.live = null
    this.stats.unloads++
    if (dir === null) this.entries.delete(e.name)
    else {
      e.dir = dir
      e.stale = false
    }
  }

  /** Closes every client, writes what is queued and the directory records; the adapter is the node's to close. */
  close(): Promise<void> {
    this.closing ??= (async () => {
      if (this.sweepTimer) clearInterval(this.sweepTimer)
      for (const e of this.entries.values()) {
        for (const c of [...(e.live?.conns ?? [])]) {
          c.channel.close(CLIENT_CLOSE.goingAway, 'node is shutting down')
          this.detach(c)
        }
      }
      await Promise.all([...this.entries.values()].map((e) => e.loading?.catch(() => {})))
      // What clients sent before the close is applied and written.
      for (const e of this.entries.values()) if (e.live) this.drain(e.live)
      await this.store.barrier().catch(() => {})
      for (const e of this.entries.values()) {
        const live = e.live
        if (!live || e.dir === null || this.store.failed) continue
        if (live.dirSeq !== live.lastSeq || e.stale) void this.store.putDir(e.name, this.summarizeLive(live)).catch(() => {})
        if (live.compactionsSinceDisk > 0) await this.store.compactDisk(e.name, live.firstSeq).catch(() => {})
      }
      await this.store.close()
      for (const e of this.entries.values()) {
        e.live?.awareness?.destroy()
        e.live?.ydoc.destroy()
        e.live = null
      }
    })()
    return this.closing
  }
}

function sameOrigin(a: Origin, b: Origin): boolean {
  if (a.kind !== b.kind) return false
  if (a.kind === 'client') return a.conn === (b as typeof a).conn
  if (a.kind === 'peer') return a.peer === (b as typeof a).peer
  return true
}

