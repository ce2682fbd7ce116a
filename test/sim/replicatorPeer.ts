/**
 * The real node on the simulator's seam: a `ViewStore`, a real `Storage` (group commit,
 * compaction, recovery) over the node's `SimStorage`, and a real `Replicator` whose channels are
 * simulated links and whose timers and clock are the simulator's. It mirrors what `openNode`
 * wires (HLC ticks, own sequence numbers from `storage.logged`, catalog saves), minus the HTTP
 * and WebSocket parts, so that every interleaving the simulator produces runs through the very
 * protocol code that production runs.
 *
 * Asynchrony. The simulator is synchronous, the storage engine is not (group commit waits for
 * `setImmediate`, adapters answer with promises). The simulated adapter answers in microtasks,
 * so the only macrotasks are the engine's group commits; a driver makes one simulator step,
 * then awaits `drain(world)`, which turns the event loop until every storage is idle and every
 * node has recovered. Nothing here reads the real clock or a random source that would make two
 * runs of one seed differ; the one exception is the hello/auth nonce (crypto random), which the
 * trace masks (see `World.delivered`).
 *
 * Crashes. `SimNetwork.crash` only discards the node object; the dead incarnation's storage
 * could still hold a scheduled group commit. `ReplicaNode.kill()` (call it right before
 * `net.crash`) makes its adapter refuse every later write, as a dead process writes nothing:
 * that batch fails, its writes are never acknowledged, and the restarted node recovers from
 * what was durable.
 */
import * as encoding from 'lib0/encoding'
import { hlcTick, ZERO } from '../../crdts/hlc.js'
import type { OpContext, Timestamp } from '../../crdts/types.js'
import { ViewStore } from '../../src/store/viewStore.js'
import { Storage, type StorageOptions } from '../../src/storage/engine.js'
import { StorageError, type KeyRange, type StorageAdapter } from '../../src/storage/adapter.js'
import { Replicator, type Link, type PeerChannel, type ReplicationStats, type ReplicatorOptions } from '../../src/replication/replicator.js'
import { MSG } from '../../src/replication/messages.js'
import { fingerprint } from './network.js'
import type { SimEndpoint, SimNodeFactory, SimPeer, SimStorage } from './types.js'

const latin1 = (b: Uint8Array): string => Buffer.from(b.buffer, b.byteOffset, b.byteLength).toString('latin1')
const fromLatin1 = (s: string): Uint8Array => new Uint8Array(Buffer.from(s, 'latin1'))

/**
 * A StorageAdapter over a SimStorage. Keys are stored as latin1 strings (one char per byte), so
 * the SimStorage's string order is the bytewise order scans need. Writes are refused once
 * `alive()` turns false; reads still answer (a dead incarnation's leftover reads are harmless).
 */
export function simStorageAdapter(sim: SimStorage, alive: () => boolean): StorageAdapter {
  const check = () => {
    if (!alive()) throw new StorageError('io', 'the node crashed')
  }
  const keysIn = (r: KeyRange): string[] => {
    const lo = latin1(r.gte)
    const hi = latin1(r.lt)
    return sim.keys().filter((k) => k >= lo && k < hi)
  }
  return {
    async get(key) {
      return sim.get(latin1(key))
    },
    async write(ops) {
      check()
      for (const op of ops) {
        if (op.type === 'put') sim.set(latin1(op.key), op.value)
        else sim.delete(latin1(op.key))
      }
    },
    async *scan(range, opts = {}) {
      // Read everything up front: a LevelDB iterator sees a snapshot too.
      let keys = keysIn(range)
      if (opts.reverse) keys.reverse()
      if (opts.limit !== undefined && opts.limit >= 0) keys = keys.slice(0, opts.limit)
      const entries = keys.map((k) => [fromLatin1(k), sim.get(k) as Uint8Array] as [Uint8Array, Uint8Array])
      for (let i = 0; i < entries.length; i += 64) yield entries.slice(i, i + 64)
    },
    async clear(range) {
      check()
      for (const k of keysIn(range)) sim.delete(k)
    },
    async compact() {},
    async diskBytes() {
      return 0
    },
    async close() {},
  }
}

/** A write this test made through a node: its identity, its delta's bytes, and whether it was acknowledged. */
export interface AppliedOp {
  origin: string
  seq: number
  view: string
  type: string
  key: string
  op: unknown
  /** The delta, encoded when the op was applied. */
  delta: Uint8Array
}

/** What all nodes of one run share: the bookkeeping the driver and the checks read. */
export class World {
  /** Every Storage ever built (dead incarnations too: their last batch must settle as well). */
  readonly storages: Storage[] = []
  /** Every Replicator ever built, for stats summed over incarnations. */
  readonly replicators: Replicator[] = []
  /** The current incarnation of each node. */
  readonly nodes = new Map<string, ReplicaNode>()
  /** Links a node closed (refused): the driver bounces them, as a dialler would redial. */
  readonly bounces: Array<[string, string]> = []
  readonly lines: string[] = []
  /** Messages sent by any node (the quiet detector watches it). */
  sends = 0
  private readonly buffered = new Map<string, number>()
  /** FNV-1a over everything that happened, for the determinism check. */
  private h = 0x811c9dc5

  constructor(readonly simulateBuffer: boolean) {}

  mix(s: string): void {
    let h = this.h
    for (let i = 0; i < s.length; i++) h = Math.imul(h ^ s.charCodeAt(i), 0x01000193)
    this.h = h >>> 0
  }

  traceHash(): number {
    return this.h
  }

  log(line: string): void {
    this.lines.push(line)
  }

  sent(from: string, to: string, bytes: number): void {
    this.sends++
    const k = `${from}>${to}`
    this.buffered.set(k, (this.buffered.get(k) ?? 0) + bytes)
  }

  /**
   * A delivery, into the trace. Hello and auth carry a random nonce (or a MAC over one), so
   * only their type and size go in.
   */
  delivered(from: string, to: string, bytes: Uint8Array): void {
    const k = `${from}>${to}`
    this.buffered.set(k, Math.max(0, (this.buffered.get(k) ?? 0) - bytes.length))
    const t = bytes[0] ?? -1
    const fp = t === MSG.hello || t === MSG.auth ? 0 : fingerprint(bytes)
    this.mix(`d${from}${to}${t}:${bytes.length}:${fp};`)
  }

  /** A link came up or went down: nothing is in flight on it any more. */
  resetBuffer(a: string, b: string): void {
    this.buffered.delete(`${a}>${b}`)
    this.buffered.delete(`${b}>${a}`)
  }

  /** Bytes sent from `from` to `to` and not yet delivered: the socket's bufferedAmount. */
  bufferedAmount(from: string, to: string): number {
    return this.simulateBuffer ? (this.buffered.get(`${from}>${to}`) ?? 0) : 0
  }

  /** Replication stats summed over every incarnation of every node. */
  replicationTotals(): ReplicationStats {
    const out = {} as ReplicationStats
    for (const r of this.replicators) {
      for (const [k, v] of Object.entries(r.stats) as Array<[keyof ReplicationStats, number]>) out[k] = (out[k] ?? 0) + v
    }
    return out
  }
}

export interface ReplicaNodeOptions {
  storage?: Partial<StorageOptions>
  replication?: Partial<Omit<ReplicatorOptions, 'setTimer' | 'secret'>>
  secret?: string
}

interface LinkSlot {
  link: Link | null
  /** The replicator closed it: ignore the peer until the next connection. */
  closed: boolean
}

export class ReplicaNode implements SimPeer {
  readonly id: string
  readonly store = new ViewStore()
  readonly storage: Storage
  /** Null until recovery has finished. */
  replicator: Replicator | null = null
  /** Resolves once recovered and wired; rejects if recovery failed. */
  readonly ready: Promise<void>
  bootError: Error | null = null
  private seq = 0
  private clock: Timestamp = ZERO
  private dead = false
  /** Network events that arrived before recovery finished, replayed in order after it. */
  private early: Array<() => void> | null = []
  private readonly links = new Map<string, LinkSlot>()
  /** Test hook: sees every message just before the replicator does. */
  beforeReceive: ((from: string, bytes: Uint8Array) => void) | null = null

  static factory(world: World, options: (id: string) => ReplicaNodeOptions): SimNodeFactory<ReplicaNode> {
    return (endpoint, storage) => new ReplicaNode(world, endpoint, storage, options(endpoint.id))
  }

  constructor(
    private readonly world: World,
    private readonly endpoint: SimEndpoint,
    sim: SimStorage,
    private readonly options: ReplicaNodeOptions,
  ) {
    this.id = endpoint.id
    this.storage = new Storage(
      simStorageAdapter(sim, () => !this.dead),
      this.store,
      options.storage,
    )
    world.storages.push(this.storage)
    world.nodes.set(this.id, this)
    this.ready = this.boot()
    this.ready.catch((err: unknown) => {
      this.bootError = err instanceof Error ? err : new Error(String(err))
    })
  }

  isReady(): boolean {
    if (this.bootError) throw this.bootError
    return this.early === null
  }

  private log(line: string): void {
    this.world.log(`${this.endpoint.now()} ${this.id}: ${line}`)
  }

  /** What openNode does before it serves anything: claim, recover, number, wire. */
  private async boot(): Promise<void> {
    const { storage, store } = this
    await storage.claimReplica(this.id)
    const report = await storage.recover((line) => this.log(line))
    this.log(`recovered ${report.snapshots} snapshots, ${report.records} records, ${report.deltas} deltas; logged ${JSON.stringify(storage.logged.toJSON())}`)
    this.seq = storage.logged.get(this.id)
    store.subscribe((ev) => {
      if (ev.kind !== 'define') return
      void this.saveCatalog().catch(() => {})
      if (ev.replaced) storage.dropView(ev.replaced.no)
    })
    const replicator = new Replicator(
      { id: this.id, store, storage, now: () => this.endpoint.now(), log: (line) => this.log(line), saveCatalog: () => this.saveCatalog() },
      { ...this.options.replication, secret: this.options.secret, setTimer: (ms, fn) => this.endpoint.setTimer(ms, fn) },
    )
    await replicator.load()
    this.replicator = replicator
    this.world.replicators.push(replicator)
    const early = this.early ?? []
    this.early = null
    for (const ev of early) ev()
  }

  private saveCatalog(): Promise<void> {
    const saved = this.store.savedCatalog()
    const enc = encoding.createEncoder()
    this.store.catalogType.encode(enc, saved.state)
    return this.storage.saveCatalog({ state: encoding.toUint8Array(enc), numbers: saved.numbers, nextNo: saved.nextNo })
  }

  private tick(): OpContext {
    this.clock = hlcTick(this.clock, this.endpoint.now())
    return { replica: this.id, time: this.clock }
  }

  /** The process dies: nothing it still has queued reaches its disk. Call before `net.crash`. */
  kill(): void {
    this.dead = true
  }

  // ---- the embedding API, as openNode has it ----

  /**
   * Applies an op and queues its delta with the next sequence number, as `SpeedNode.apply`.
   * `durable` resolves once acknowledged, rejects if the node dies first.
   */
  apply(view: string, key: string, op: unknown): { applied: AppliedOp; durable: Promise<void> } {
    if (!this.replicator) throw new Error(`node ${this.id} is still recovering`)
    const r = this.store.apply(view, key, op, this.tick(), false)
    const enc = encoding.createEncoder()
    r.view.type.encode(enc, r.delta)
    const seq = ++this.seq
    const durable = this.storage.append(r.view, key, r.delta, this.id, seq)
    durable.catch(() => {})
    return { applied: { origin: this.id, seq, view, type: r.view.def.type, key, op, delta: encoding.toUint8Array(enc) }, durable }
  }

  /** Defines a view as `SpeedNode.defineView` (the catalog is saved by the define event). */
  define(name: string, def: unknown): 'created' | 'exists' {
    if (!this.replicator) throw new Error(`node ${this.id} is still recovering`)
    return this.store.define(name, def, this.tick()).result
  }

  // ---- the simulator's callbacks: a transport adapter ----

  onConnect(peer: string): void {
    if (this.early) {
      this.early.push(() => this.onConnect(peer))
      return
    }
    this.world.resetBuffer(this.id, peer)
    const slot: LinkSlot = { link: null, closed: false }
    this.links.set(peer, slot)
    const channel: PeerChannel = {
      send: (bytes) => {
        if (slot.closed || this.dead) return
        this.world.sent(this.id, peer, bytes.length)
        this.endpoint.send(peer, bytes)
      },
      close: (code, reason) => {
        if (slot.closed) return
        slot.closed = true
        this.log(`closed the link to ${peer}: ${code} ${reason}`)
        this.world.bounces.push([this.id, peer])
      },
      bufferedAmount: () => this.world.bufferedAmount(this.id, peer),
    }
    // The smaller id dials, as if it alone listed the other in --peers.
    slot.link = (this.replicator as Replicator).attach(channel, this.id < peer)
  }

  onDisconnect(peer: string): void {
    if (this.early) {
      this.early.push(() => this.onDisconnect(peer))
      return
    }
    this.world.resetBuffer(this.id, peer)
    const slot = this.links.get(peer)
    this.links.delete(peer)
    if (slot?.link) (this.replicator as Replicator).closed_(slot.link)
  }

  onMessage(from: string, bytes: Uint8Array): void {
    this.world.delivered(from, this.id, bytes)
    if (this.early) {
      // The simulator delivers only between driver steps, and every step waits for recovery.
      throw new Error(`node ${this.id} got a message before it recovered`)
    }
    const slot = this.links.get(from)
    if (!slot || slot.closed || !slot.link) return
    this.beforeReceive?.(from, bytes)
    ;(this.replicator as Replicator).receive(slot.link, bytes)
  }
}

/**
 * Turns the event loop until every storage (dead incarnations too) is idle and every node has
 * recovered. Only the engine's group commits are macrotasks, and each storage reports whether
 * one is pending, so when this returns nothing is left to run until the next simulator step.
 */
export async function drain(world: World): Promise<void> {
  for (let turns = 0; ; turns++) {
    await new Promise<void>((resolve) => setImmediate(resolve))
    let busy = false
    for (const s of world.storages) if (!s.idle()) busy = true
    for (const n of world.nodes.values()) if (!n.isReady()) busy = true
    if (!busy) return
    if (turns > 100_000) throw new Error('the nodes never went idle')
  }
}
