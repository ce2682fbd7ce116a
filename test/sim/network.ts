/**
 * A seeded, deterministic network of in-memory nodes (the idea of yjs's TestConnector, grown to
 * the faults a peer-to-peer replication protocol must survive). See ./types.ts for the contract
 * a node may rely on.
 *
 * Everything random comes from ONE lib0 PRNG created from the seed, and the test draws its own
 * random choices (which op, on which node) from the same generator (`net.prng`), so a seed
 * reproduces a whole run: every op, delivery, duplicate, delay, cut, crash and timer.
 *
 * Model:
 * - Each directed link has a FIFO queue. `flushRandomMessage` picks a random link among those
 *   with a message due and delivers its head (or, with the `reorder` fault, a random due message
 *   of that link). Delivery order across links is therefore random, per link it is FIFO.
 * - Time is simulated: it advances by `msPerDelivery` with each delivery, and jumps forward
 *   when nothing is due but something is waiting (a delayed message, a timer).
 * - A pair of nodes is connected iff the topology allows the pair, the pair is not cut, and both
 *   nodes are up. Whenever that changes, in-flight messages on a link going down are dropped and
 *   both ends are told (`onDisconnect` / `onConnect`); see `refresh`.
 */
import * as prng from 'lib0/prng'
import type { SimEndpoint, SimEvent, SimFaults, SimNodeFactory, SimPeer, SimStorage } from './types.js'

export interface SimNetworkOptions {
  /** An integer in [1, 2^32): lib0's generator degenerates on 0. */
  seed: number
  faults?: SimFaults
  /** The pairs that may ever connect: every pair (default) or the listed undirected edges. */
  topology?: 'mesh' | ReadonlyArray<readonly [string, string]>
  /** Per node clock offset in ms (clock skew); `endpoint.now()` is simulated time plus this. */
  skew?: Readonly<Record<string, number>>
  /** Simulated ms that one delivery takes (default 1). */
  msPerDelivery?: number
  /** Keep a trace of every event (`net.trace`), for determinism tests and debugging. */
  record?: boolean
  /** Let `randomFault` crash and restart nodes too. */
  crashes?: boolean
}

export interface SimStats {
  delivered: number
  duplicated: number
  /** Dropped because the link was down at send time or went down while they were in flight. */
  droppedByCut: number
  /** Lost on a live link (the `drop` fault). */
  lost: number
  delayed: number
  reordered: number
  crashes: number
}

interface Envelope {
  bytes: Uint8Array
  /** Simulated time before which it cannot be delivered (the `delay` fault). */
  due: number
}

interface Slot<P extends SimPeer> {
  readonly id: string
  readonly factory: SimNodeFactory<P>
  readonly storage: MemoryStorage
  readonly skew: number
  peer: P | null
  /** Bumped on crash, so the dead incarnation's endpoint and timers fall silent. */
  generation: number
}

interface Link<P extends SimPeer> {
  readonly from: Slot<P>
  readonly to: Slot<P>
  readonly queue: Envelope[]
}

interface Pair<P extends SimPeer> {
  readonly a: Slot<P>
  readonly b: Slot<P>
  readonly ab: Link<P>
  readonly ba: Link<P>
  readonly allowed: boolean
  cut: boolean
  up: boolean
}

interface Timer {
  readonly due: number
  readonly seq: number
  readonly node: string
  readonly generation: number
  readonly fn: () => void
  cancelled: boolean
}

/** Storage that outlives the node object; copies in and out so nothing aliases across a crash. */
export class MemoryStorage implements SimStorage {
  private readonly data = new Map<string, Uint8Array>()
  get(key: string): Uint8Array | undefined {
    const v = this.data.get(key)
    return v === undefined ? undefined : v.slice()
  }
  set(key: string, bytes: Uint8Array): void {
    this.data.set(key, bytes.slice())
  }
  delete(key: string): void {
    this.data.delete(key)
  }
  keys(): string[] {
    return [...this.data.keys()].sort((x, y) => (x < y ? -1 : x > y ? 1 : 0))
  }
}

/** FNV-1a: a cheap fingerprint of message bytes for the trace. */
export function fingerprint(bytes: Uint8Array): number {
  let h = 0x811c9dc5
  for (const b of bytes) h = Math.imul(h ^ b, 0x01000193)
  return h >>> 0
}

export class SimNetwork<P extends SimPeer = SimPeer> {
  readonly prng: prng.PRNG
  readonly seed: number
  readonly trace: SimEvent[] = []
  readonly stats: SimStats = { delivered: 0, duplicated: 0, droppedByCut: 0, lost: 0, delayed: 0, reordered: 0, crashes: 0 }
  /** Simulated time in ms. */
  time = 0

  private faults: Required<SimFaults>
  private readonly slots: Slot<P>[] = []
  private readonly byId = new Map<string, Slot<P>>()
  private readonly pairs: Pair<P>[] = []
  private readonly pairOf = new Map<string, Pair<P>>()
  private readonly links: Link<P>[] = []
  private timers: Timer[] = []
  private timerSeq = 0
  private readonly edges: Set<string> | null
  private readonly options: SimNetworkOptions
  private refreshing = false

  constructor(options: SimNetworkOptions) {
    const { seed } = options
    if (!Number.isInteger(seed) || seed < 1 || seed >= 2 ** 32) throw new RangeError(`seed must be an integer in [1, 2^32), got ${seed}`)
    this.options = options
    this.seed = seed
    this.prng = prng.create(seed)
    this.faults = normaliseFaults(options.faults)
    const topo = options.topology ?? 'mesh'
    this.edges = topo === 'mesh' ? null : new Set(topo.flatMap(([x, y]) => [pairKey(x, y), pairKey(y, x)]))
  }

  /** Replaces the fault probabilities (e.g. `{}` before the final anti-entropy round). */
  setFaults(faults: SimFaults): void {
    this.faults = normaliseFaults(faults)
  }

  /**
   * Adds a node and connects it to every node the topology lets it reach. `skew` (ms) offsets
   * its clock, overriding `options.skew`.
   */
  addNode(id: string, factory: SimNodeFactory<P>, opts: { skew?: number } = {}): P {
    if (this.byId.has(id)) throw new Error(`node ${id} already exists`)
    const skew = opts.skew ?? this.options.skew?.[id] ?? 0
    const slot: Slot<P> = { id, factory, storage: new MemoryStorage(), skew, peer: null, generation: 0 }
    for (const other of this.slots) {
      const ab: Link<P> = { from: other, to: slot, queue: [] }
      const ba: Link<P> = { from: slot, to: other, queue: [] }
      const allowed = this.edges === null || this.edges.has(pairKey(other.id, id))
      const pair: Pair<P> = { a: other, b: slot, ab, ba, allowed, cut: false, up: false }
      this.pairs.push(pair)
      this.pairOf.set(pairKey(other.id, id), pair)
      this.pairOf.set(pairKey(id, other.id), pair)
      this.links.push(ab, ba)
    }
    this.slots.push(slot)
    this.byId.set(id, slot)
    const peer = this.boot(slot)
    this.refresh()
    return peer
  }

  /** The live node `id` (throws if it is crashed). */
  node(id: string): P {
    const peer = this.slot(id).peer
    if (peer === null) throw new Error(`node ${id} is crashed`)
    return peer
  }

  /** Every node id, in the order they were added. */
  ids(): string[] {
    return this.slots.map((s) => s.id)
  }

  /** The nodes that are up, in the order they were added. */
  liveNodes(): P[] {
    return this.slots.flatMap((s) => (s.peer === null ? [] : [s.peer]))
  }

  isUp(id: string): boolean {
    return this.slot(id).peer !== null
  }

  connected(a: string, b: string): boolean {
    return this.pair(a, b).up
  }

  storage(id: string): SimStorage {
    return this.slot(id).storage
  }

  /** Messages waiting on all links. */
  pending(): number {
    let n = 0
    for (const l of this.links) n += l.queue.length
    return n
  }

  // --- partitions -------------------------------------------------------------------------

  /** Cuts the pair a-b (a no-op if already cut). In-flight messages both ways are dropped. */
  cut(a: string, b: string): void {
    this.pair(a, b).cut = true
    this.refresh()
  }

  /** Heals the pair a-b, or with no arguments every cut pair. */
  heal(a?: string, b?: string): void {
    if (a !== undefined && b !== undefined) this.pair(a, b).cut = false
    else for (const p of this.pairs) p.cut = false
    this.refresh()
  }

  /**
   * Cuts every pair whose ends are in different groups, heals every pair within a group (the
   * partition replaces the previous cuts). A node named in no group is alone.
   */
  partition(groups: ReadonlyArray<readonly string[]>): void {
    const groupOf = new Map<string, number>()
    groups.forEach((g, i) => {
      for (const id of g) {
        this.slot(id)
        if (groupOf.has(id)) throw new Error(`node ${id} is in two groups`)
        groupOf.set(id, i)
      }
    })
    for (const p of this.pairs) {
      const ga = groupOf.get(p.a.id)
      p.cut = ga === undefined || ga !== groupOf.get(p.b.id)
    }
    this.refresh()
  }

  /** Cuts every pair. */
  disconnectAll(): void {
    for (const p of this.pairs) p.cut = true
    this.refresh()
  }

  /**
   * Takes every link down and up again, so every connected pair gets onDisconnect and then
   * onConnect: the anti-entropy round a test runs before it checks convergence.
   */
  reconnectAll(): void {
    this.disconnectAll()
    this.heal()
  }

  // --- crash and reload ------------------------------------------------------------------

  /**
   * Kills node `id`: its object is discarded (only its storage survives), its links go down
   * (in-flight messages dropped, its peers get onDisconnect) and its timers die.
   */
  crash(id: string): void {
    const slot = this.slot(id)
    if (slot.peer === null) return
    slot.peer = null
    slot.generation++
    this.stats.crashes++
    this.record({ kind: 'crash', time: this.time, node: id })
    this.refresh()
  }

  /** Rebuilds a crashed node from its storage with its factory; its links come back up. */
  restart(id: string): P {
    const slot = this.slot(id)
    if (slot.peer !== null) throw new Error(`node ${id} is not crashed`)
    this.record({ kind: 'restart', time: this.time, node: id })
    const peer = this.boot(slot)
    this.refresh()
    return peer
  }

  // --- delivery ---------------------------------------------------------------------------

  /**
   * Delivers one message: a random link among those with a message due, then its head (or a
   * random due message with the `reorder` fault). When nothing is due yet but messages wait,
   * time jumps to the earliest. Returns false if no message is queued.
   */
  flushRandomMessage(): boolean {
    let candidates = this.dueLinks()
    if (candidates.length === 0) {
      const next = this.earliestWaiting()
      if (next === null) return false
      this.advanceTo(next)
      candidates = this.dueLinks()
    }
    const link = prng.oneOf(this.prng, candidates)
    const q = link.queue
    let index = 0
    if (this.faults.reorder > 0) {
      // With reordering, due messages overtake a delayed head, and sometimes each other.
      const due: number[] = []
      q.forEach((e, i) => {
        if (e.due <= this.time) due.push(i)
      })
      index = due[0] as number
      if (due.length > 1 && this.chance(this.faults.reorder)) index = prng.oneOf(this.prng, due)
      if (index !== 0) this.stats.reordered++
    }
    const [env] = q.splice(index, 1) as [Envelope]
    const duplicate = this.faults.duplicate > 0 && this.chance(this.faults.duplicate)
    if (duplicate) {
      q.unshift({ bytes: env.bytes.slice(), due: env.due })
      this.stats.duplicated++
    }
    this.stats.delivered++
    this.record({ kind: 'deliver', time: this.time, from: link.from.id, to: link.to.id, size: env.bytes.length, hash: fingerprint(env.bytes), duplicate })
    this.time += this.options.msPerDelivery ?? 1
    const to = link.to.peer
    // A link only carries messages while both ends are up.
    if (to === null) throw new Error('internal: delivery to a crashed node')
    to.onMessage(link.from.id, env.bytes)
    this.runDueTimers()
    return true
  }

  /**
   * Delivers messages and fires timers until none are left. Throws after `maxSteps`: a protocol
   * that never goes quiet (a relay storm, a heartbeat that never stops) is a failure too.
   */
  settle(maxSteps = 1_000_000): number {
    let steps = 0
    for (;;) {
      if (!this.flushRandomMessage() && !this.fireNextTimer()) return steps
      if (++steps > maxSteps) throw new Error(`the network did not go quiet within ${maxSteps} steps (${this.pending()} messages queued)`)
    }
  }

  /** Advances simulated time by `ms`, firing the timers that fall due, delivering nothing. */
  advance(ms: number): void {
    this.advanceTo(this.time + ms)
  }

  // --- the random scheduler -----------------------------------------------------------------

  /**
   * One random topology change: cut a live pair, heal a cut pair, a random partition, heal
   * everything, or (with `crashes`) crash or restart a node. Returns what it did, for logs.
   */
  randomFault(): string {
    const r = prng.real53(this.prng)
    const crashed = this.slots.filter((s) => s.peer === null)
    if (this.options.crashes === true && r < 0.1) {
      if (crashed.length > 0 && prng.bool(this.prng)) {
        const s = prng.oneOf(this.prng, crashed)
        this.restart(s.id)
        return `restart ${s.id}`
      }
      const live = this.slots.filter((s) => s.peer !== null)
      if (live.length > 1) {
        const s = prng.oneOf(this.prng, live)
        this.crash(s.id)
        return `crash ${s.id}`
      }
    }
    if (r < 0.45) {
      const up = this.pairs.filter((p) => p.up)
      if (up.length > 0) {
        const p = prng.oneOf(this.prng, up)
        this.cut(p.a.id, p.b.id)
        return `cut ${p.a.id}-${p.b.id}`
      }
    }
    if (r < 0.8) {
      const cut = this.pairs.filter((p) => p.cut && p.allowed)
      if (cut.length > 0) {
        const p = prng.oneOf(this.prng, cut)
        this.heal(p.a.id, p.b.id)
        return `heal ${p.a.id}-${p.b.id}`
      }
    }
    if (r < 0.9) {
      const k = prng.int31(this.prng, 2, Math.min(3, this.slots.length))
      const groups: string[][] = Array.from({ length: k }, () => [])
      for (const s of this.slots) (groups[prng.int31(this.prng, 0, k - 1)] as string[]).push(s.id)
      this.partition(groups)
      return `partition ${groups.map((g) => g.join(',')).join(' | ')}`
    }
    this.heal()
    return 'heal all'
  }

  // --- internals --------------------------------------------------------------------------

  private boot(slot: Slot<P>): P {
    const generation = slot.generation
    // The incarnation being built is alive from its constructor on (it may set timers there).
    const alive = (): boolean => slot.generation === generation
    const endpoint: SimEndpoint = {
      id: slot.id,
      send: (to, bytes) => {
        if (alive()) this.send(slot, to, bytes)
      },
      now: () => this.time + slot.skew,
      setTimer: (ms, fn) => {
        if (!Number.isFinite(ms) || ms < 0) throw new RangeError(`timer delay must be a finite ms >= 0, got ${ms}`)
        const t: Timer = { due: this.time + ms, seq: this.timerSeq++, node: slot.id, generation, fn, cancelled: !alive() }
        this.timers.push(t)
        return () => {
          t.cancelled = true
        }
      },
    }
    const peer = slot.factory(endpoint, slot.storage)
    if (peer.id !== slot.id) throw new Error(`the factory for ${slot.id} built a node named ${peer.id}`)
    slot.peer = peer
    return peer
  }

  private send(from: Slot<P>, to: string, bytes: Uint8Array): void {
    if (to === from.id) throw new Error(`${from.id} sent a message to itself`)
    const pair = this.pair(from.id, to)
    const link = pair.a === from ? pair.ab : pair.ba
    const size = bytes.length
    if (!pair.up) {
      this.stats.droppedByCut++
      this.record({ kind: 'drop', time: this.time, from: from.id, to, size, hash: fingerprint(bytes), reason: 'down' })
      return
    }
    if (this.faults.drop > 0 && this.chance(this.faults.drop)) {
      this.stats.lost++
      this.record({ kind: 'drop', time: this.time, from: from.id, to, size, hash: fingerprint(bytes), reason: 'lost' })
      return
    }
    let due = this.time
    if (this.faults.delay > 0 && this.chance(this.faults.delay)) {
      due += prng.int31(this.prng, 1, this.faults.maxDelay)
      this.stats.delayed++
    }
    link.queue.push({ bytes: bytes.slice(), due })
  }

  /**
   * Brings every pair's `up` in line with topology, cuts and crashes. All flags change first,
   * then the queues of pairs going down are dropped, then the callbacks run (disconnects before
   * connects, each pair's two ends in seed-chosen order), so a callback already sees the new
   * network and anything it sends on a new connection arrives after both onConnects.
   */
  private refresh(): void {
    if (this.refreshing) throw new Error('a connection callback changed the topology; the simulator does not support that')
    this.refreshing = true
    try {
      const down: Pair<P>[] = []
      const up: Pair<P>[] = []
      for (const p of this.pairs) {
        const want = p.allowed && !p.cut && p.a.peer !== null && p.b.peer !== null
        if (want === p.up) continue
        p.up = want
        ;(want ? up : down).push(p)
      }
      for (const p of down) {
        for (const link of [p.ab, p.ba]) {
          for (const env of link.queue) {
            this.stats.droppedByCut++
            this.record({ kind: 'drop', time: this.time, from: link.from.id, to: link.to.id, size: env.bytes.length, hash: fingerprint(env.bytes), reason: 'cut' })
          }
          link.queue.length = 0
        }
      }
      for (const p of down) {
        this.record({ kind: 'disconnect', time: this.time, a: p.a.id, b: p.b.id })
        for (const [self, other] of this.ordered(p)) self.peer?.onDisconnect(other.id)
      }
      for (const p of up) {
        this.record({ kind: 'connect', time: this.time, a: p.a.id, b: p.b.id })
        for (const [self, other] of this.ordered(p)) self.peer?.onConnect(other.id)
      }
    } finally {
      this.refreshing = false
    }
  }

  private ordered(p: Pair<P>): Array<[Slot<P>, Slot<P>]> {
    return prng.bool(this.prng)
      ? [
          [p.a, p.b],
          [p.b, p.a],
        ]
      : [
          [p.b, p.a],
          [p.a, p.b],
        ]
  }

  private dueLinks(): Link<P>[] {
    const reorder = this.faults.reorder > 0
    return this.links.filter((l) => {
      const head = l.queue[0]
      if (head === undefined) return false
      return head.due <= this.time || (reorder && l.queue.some((e) => e.due <= this.time))
    })
  }

  /** The earliest time at which a queued message falls due, or null if none is queued. */
  private earliestWaiting(): number | null {
    let min: number | null = null
    for (const l of this.links) {
      // Without reorder a link waits for its head; with it, for its earliest message.
      const due = this.faults.reorder > 0 ? Math.min(...l.queue.map((e) => e.due)) : l.queue[0]?.due
      if (due !== undefined && Number.isFinite(due) && (min === null || due < min)) min = due
    }
    return min
  }

  private advanceTo(t: number): void {
    if (t > this.time) this.time = t
    this.runDueTimers()
  }

  private liveTimers(): Timer[] {
    this.timers = this.timers.filter((t) => !t.cancelled && this.byId.get(t.node)?.generation === t.generation)
    return this.timers
  }

  /** Fires every timer due by now, earliest first (creation order on ties). */
  private runDueTimers(): void {
    for (;;) {
      let next: Timer | null = null
      for (const t of this.liveTimers()) {
        if (t.due <= this.time && (next === null || t.due < next.due || (t.due === next.due && t.seq < next.seq))) next = t
      }
      if (next === null) return
      next.cancelled = true
      this.record({ kind: 'timer', time: this.time, node: next.node })
      next.fn()
    }
  }

  /** Jumps to the earliest pending timer and fires it; false if none is pending. */
  private fireNextTimer(): boolean {
    const timers = this.liveTimers()
    if (timers.length === 0) return false
    this.advanceTo(Math.min(...timers.map((t) => t.due)))
    return true
  }

  private chance(p: number): boolean {
    return prng.real53(this.prng) < p
  }

  private record(e: SimEvent): void {
    if (this.options.record === true) this.trace.push(e)
  }

  private slot(id: string): Slot<P> {
    const s = this.byId.get(id)
    if (s === undefined) throw new Error(`no node ${id}`)
    return s
  }

  private pair(a: string, b: string): Pair<P> {
    const p = this.pairOf.get(pairKey(a, b))
    if (p === undefined) throw new Error(`no link between ${a} and ${b}`)
    return p
  }
}

function pairKey(a: string, b: string): string {
  return `${a}\u0000${b}`
}

function normaliseFaults(f: SimFaults = {}): Required<SimFaults> {
  const out: Required<SimFaults> = {
    duplicate: f.duplicate ?? 0,
    reorder: f.reorder ?? 0,
    delay: f.delay ?? 0,
    maxDelay: f.maxDelay ?? 20,
    drop: f.drop ?? 0,
  }
  for (const [k, v] of Object.entries(out)) {
    if (k === 'maxDelay' ? !(Number.isInteger(v) && v >= 1) : !(v >= 0 && v <= 1)) throw new RangeError(`fault ${k} out of range: ${v}`)
  }
  return out
}
