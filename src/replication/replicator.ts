/**
 * The replication engine of one node, independent of any transport: it is handed open channels
 * (a WebSocket in production, a simulated link in tests) and speaks the protocol of
 * docs/protocol.md over them.
 *
 * - Every delta has an identity (origin, sequence). A node ships a delta only once it is durable
 *   locally, so a crash can never make it reuse a sequence a peer already holds.
 * - Per link it tracks what the peer has (`peerHas`: what it said it had, plus what was sent to
 *   it or received from it) and what it acknowledged as durable (`peerAcked`). Live deltas go to
 *   every link whose peer lacks them, which is also how relay works: a delta received from A is
 *   forwarded to B and C once durable here, so any connected graph converges.
 * - On connect, peers exchange catalogs and version vectors; each side sends what the other
 *   lacks from its log, with the deltas of each key joined into one (a catch-up ships changed
 *   states, not histories). Where the log no longer reaches back, anti-entropy compares digests
 *   of hashed key ranges and ships only the ranges that differ (antiEntropy.ts).
 * - A slow peer never makes the sender buffer without bound: past a high-water mark the link
 *   stops taking live deltas, and once drained it catches up from the log like a reconnect.
 */
import * as decoding from 'lib0/decoding'
import * as encoding from 'lib0/encoding'
import type { ViewStore, View } from '../store/viewStore.js'
import type { DurableDelta, Storage } from '../storage/engine.js'
import { VersionVector } from '../storage/versionVector.js'
import { decodeMessage, encodeMessage, ProtocolError, PROTOCOL_VERSION, type Message, type WireDelta, type WireState } from './messages.js'
import { newNonce, proof, verify } from './auth.js'
import { AntiEntropy } from './antiEntropy.js'

/** An open, message-framed, ordered connection to another node. */
export interface PeerChannel {
  send(bytes: Uint8Array): void
  close(code: number, reason: string): void
  /** Bytes accepted by send() but not yet handed to the network. */
  bufferedAmount(): number
}

export const CLOSE = {
  normal: 1000,
  blocked: 4001,
  version: 4002,
  auth: 4003,
  duplicate: 4004,
  self: 4005,
  unexpected: 4008,
  malformed: 4400,
} as const

export interface ReplicatorHost {
  id: string
  store: ViewStore
  storage: Storage
  now(): number
  log(line: string): void
  /** Persists the catalog after a merge changed it. */
  saveCatalog(): Promise<void>
}

export interface ReplicatorOptions {
  secret?: string
  /** Largest protocol message this node sends; batches are split below it. */
  maxMessageBytes: number
  /** Buffered bytes past which a link stops taking live deltas and catches up later. */
  highWaterBytes: number
  /** How often a receiver acknowledges what it has made durable. */
  ackIntervalMs: number
  /** How often links are checked for deltas their peer lacks and was never sent. */
  sweepIntervalMs: number
  /** Timers, so the simulator can drive them. */
  setTimer(ms: number, fn: () => void): () => void
}

export const DEFAULT_REPLICATOR_OPTIONS: Omit<ReplicatorOptions, 'setTimer'> = {
  maxMessageBytes: 1024 * 1024,
  highWaterBytes: 8 * 1024 * 1024,
  ackIntervalMs: 20,
  sweepIntervalMs: 1000,
}

/**
 * An extension rides on the peer links without the replicator knowing its data: Yjs documents
 * and batch views each register one. It sees links come and go and receives its own messages;
 * relay, catch-up and deduplication are its business (its payloads are usually idempotent joins,
 * so it can flood changes to every other peer and stop where nothing changed).
 */
export interface ExtensionHandler {
  /** A link to `peer` finished its handshake (also after a reconnect or a `connect`). */
  linkUp?(peer: string): void
  linkDown?(peer: string): void
  /** A message from `peer`; throwing closes that link as malformed. */
  message(peer: string, payload: Uint8Array): void
}

export interface ExtensionPort {
  /** Sends to one connected peer; false when it is not connected. */
  send(peer: string, payload: Uint8Array): boolean
  /** The peers connected now. */
  peers(): string[]
  /** Bytes queued towards a peer and not yet on the network (for backpressure). */
  bufferedAmount(peer: string): number
}

export interface PeerInfo {
  replica: string | null
  url: string | null
  connected: boolean
  lagOps: number
  lagMs: number
  lastSeen: number | null
  bytesIn: number
  bytesOut: number
  blocked: boolean
}

export interface ReplicationStats {
  deltasIn: number
  deltasOut: number
  duplicatesIn: number
  droppedIn: number
  bytesIn: number
  bytesOut: number
  catchUps: number
  catchUpStates: number
  catchUpBytes: number
  antiEntropyRuns: number
  antiEntropyBytes: number
  linksRefused: number
  malformed: number
}

/** What this node knows of another replica, connected or not. */
interface Known {
  replica: string
  url: string | null
  /** What the peer acknowledged as durable: log records it covers may go. */
  acked: VersionVector
  lastSeen: number | null
  blocked: boolean
  bytesIn: number
  bytesOut: number
  /** When the peer first lacked something we have, for lag in ms; null when in sync. */
  behindSince: number | null
}

export class Link {
  private static next = 1
  readonly n = Link.next++
  peer: string | null = null
  state: 'hello' | 'ready' | 'closed' = 'hello'
  readonly nonce = newNonce()
  peerNonce: Uint8Array | null = null
  peerProved = false
  sentAuth = false
  /** What the peer has, as far as this node knows. */
  peerHas = new VersionVector()
  lagging = false
  catchingUp = false
  gotVv = false
  ackTimer: (() => void) | null = null

  constructor(
    readonly channel: PeerChannel,
    readonly dialled: boolean,
    readonly url: string | null,
  ) {}
}

export class Replicator {
  readonly options: ReplicatorOptions
  private readonly links = new Set<Link>()
  private readonly ready = new Map<string, Link>()
  private readonly known = new Map<string, Known>()
  /** Remote deltas taken but not yet durable: a duplicate arriving meanwhile is skipped. */
  private readonly pending = new Set<string>()
  private catalogSource: Link | null = null
  private readonly extensions = new Map<string, ExtensionHandler>()
  private closed = false
  private cancelSweep: () => void = () => {}
  readonly ae: AntiEntropy
  readonly stats: ReplicationStats = {
    deltasIn: 0,
    deltasOut: 0,
    duplicatesIn: 0,
    droppedIn: 0,
    bytesIn: 0,
    bytesOut: 0,
    catchUps: 0,
    catchUpStates: 0,
    catchUpBytes: 0,
    antiEntropyRuns: 0,
    antiEntropyBytes: 0,
    linksRefused: 0,
    malformed: 0,
  }

  constructor(
    private readonly host: ReplicatorHost,
    options: Partial<ReplicatorOptions> & Pick<ReplicatorOptions, 'setTimer'>,
  ) {
    this.options = { ...DEFAULT_REPLICATOR_OPTIONS, ...options }
    this.ae = new AntiEntropy(host.store, (link, m) => this.send(link, m), this.stats, () => host.storage.flushed())
    host.storage.onDurable((deltas) => this.shipDurable(deltas))
    host.storage.setLogRetention((r) => {
      // A record may go once every peer this node knows has acknowledged all of it.
      for (const k of this.known.values()) {
        for (const [origin, [, hi]] of r.ranges) if (k.acked.get(origin) < hi) return false
      }
      return true
    })
    this.cancelSweep = this.options.setTimer(this.options.sweepIntervalMs, () => this.sweep())
    host.store.subscribe((ev) => {
      // Local definitions; what a peer's catalog brought is relayed by onCatalog.
      if (ev.kind !== 'define' || this.catalogSource !== null) return
      for (const link of this.ready.values()) this.sendCatalog(link)
    })
  }

  // ---- links ----

  /** Starts the protocol on a freshly opened channel; the transport feeds `receive` and `closed`. */
  attach(channel: PeerChannel, dialled: boolean, url: string | null = null): Link {
    const link = new Link(channel, dialled, url)
    if (this.closed) {
      channel.close(CLOSE.normal, 'node is shutting down')
      link.state = 'closed'
      return link
    }
    this.links.add(link)
    this.send(link, { t: 'hello', version: PROTOCOL_VERSION, replica: this.host.id, nonce: link.nonce, auth: this.options.secret !== undefined })
    return link
  }

  /** The transport reports the channel closed (by either side). */
  closed_(link: Link): void {
    if (link.state === 'closed') return
    link.state = 'closed'
    link.ackTimer?.()
    this.links.delete(link)
    if (link.peer !== null && this.ready.get(link.peer) === link) {
      this.ready.delete(link.peer)
      this.host.log(`peer ${link.peer} disconnected`)
      for (const x of this.extensions.values()) x.linkDown?.(link.peer)
    }
    this.ae.linkClosed(link)
  }

  private refuse(link: Link, code: number, reason: string): void {
    if (link.state === 'closed') return
    this.stats.linksRefused++
    this.host.log(`peer link${link.peer ? ` with ${link.peer}` : ''}${link.url ? ` (${link.url})` : ''} closed: ${reason}`)
    link.channel.close(code, reason)
    this.closed_(link)
  }

  /** Sends a message; returns its size in bytes (0 on a closed link). */
  private send(link: Link, m: Message): number {
    if (link.state === 'closed') return 0
    const bytes = encodeMessage(m)
    this.stats.bytesOut += bytes.length
    if (link.peer) {
      const k = this.known.get(link.peer)
      if (k) k.bytesOut += bytes.length
    }
    link.channel.send(bytes)
    return bytes.length
  }

  /** The transport hands over one received message. Malformed input closes that link only. */
  receive(link: Link, bytes: Uint8Array): void {
    if (link.state === 'closed') return
    this.stats.bytesIn += bytes.length
    let m: Message
    try {
      m = decodeMessage(bytes)
    } catch (err) {
      this.stats.malformed++
      return this.refuse(link, CLOSE.malformed, err instanceof ProtocolError ? err.message : 'malformed message')
    }
    if (link.peer) {
      const k = this.known.get(link.peer)
      if (k) {
        k.bytesIn += bytes.length
        k.lastSeen = this.host.now()
      }
    }
    try {
      this.handle(link, m)
    } catch (err) {
      this.stats.malformed++
      this.refuse(link, CLOSE.malformed, `cannot apply a ${m.t} message: ${(err as Error).message}`)
    }
  }

  private handle(link: Link, m: Message): void {
    if (m.t === 'hello') return this.onHello(link, m)
    if (m.t === 'auth') return this.onAuth(link, m.mac)
    if (link.state !== 'ready') return this.refuse(link, CLOSE.unexpected, `${m.t} before the handshake finished`)
    switch (m.t) {
      case 'catalog':
        return this.onCatalog(link, m.state)
      case 'vv':
        return this.onVv(link, m.vv)
      case 'deltas':
        return this.onDeltas(link, m.deltas)
      case 'states':
        return this.onStates(link, m.states, m.covers)
      case 'aeDigests':
      case 'aeNeed':
      case 'aeDone':
        return this.ae.handle(link, m, (covers: VersionVector) => this.onAeDone(link, covers))
      case 'ext': {
        const x = this.extensions.get(m.channel)
        // An extension this node lacks (an older version): ignoring it keeps the views flowing.
        if (x) x.message(link.peer as string, m.payload)
        return
      }
    }
  }

  private onHello(link: Link, m: Extract<Message, { t: 'hello' }>): void {
    if (link.peerNonce !== null) return this.refuse(link, CLOSE.unexpected, 'a second hello')
    if (m.version !== PROTOCOL_VERSION) return this.refuse(link, CLOSE.version, `peer speaks protocol ${m.version}, this node ${PROTOCOL_VERSION}`)
    if (m.replica === this.host.id) return this.refuse(link, CLOSE.self, 'a link to itself')
    if (m.replica.length === 0 || m.replica.length > 255) return this.refuse(link, CLOSE.malformed, 'bad replica id')
    link.peer = m.replica
    link.peerNonce = m.nonce
    const k = this.known.get(m.replica)
    if (k?.blocked) return this.refuse(link, CLOSE.blocked, `peer ${m.replica} is disconnected by the operator`)
    const secret = this.options.secret
    if (secret === undefined && m.auth) return this.refuse(link, CLOSE.auth, `peer ${m.replica} requires a --secret and this node has none`)
    if (secret !== undefined && !m.auth) return this.refuse(link, CLOSE.auth, `peer ${m.replica} has no --secret`)
    if (secret !== undefined) {
      this.send(link, { t: 'auth', mac: proof(secret, m.nonce, this.host.id) })
      link.sentAuth = true
      return
    }
    this.becomeReady(link)
  }

  private onAuth(link: Link, mac: Uint8Array): void {
    const secret = this.options.secret
    if (secret === undefined || link.peerNonce === null || link.peer === null || link.peerProved) {
      return this.refuse(link, CLOSE.unexpected, 'unexpected auth')
    }
    if (!verify(secret, link.nonce, link.peer, mac)) return this.refuse(link, CLOSE.auth, `peer ${link.peer} failed to prove the secret`)
    link.peerProved = true
    this.becomeReady(link)
  }

  private becomeReady(link: Link): void {
    const peer = link.peer as string
    const existing = this.ready.get(peer)
    if (existing) {
      // One link per pair whatever side dialled: keep the one dialled by the smaller replica id
      // (both sides compute the same answer); between two links of the same dialler, the newer.
      const winner = this.host.id < peer ? this.host.id : peer
      const byWinner = (l: Link) => (l.dialled ? this.host.id : peer) === winner
      const keepNew = byWinner(link) || !byWinner(existing)
      if (!keepNew) return this.refuse(link, CLOSE.duplicate, `a link with ${peer} exists already`)
      this.refuse(existing, CLOSE.duplicate, `a newer link with ${peer} replaces this one`)
    }
    link.state = 'ready'
    this.ready.set(peer, link)
    let k = this.known.get(peer)
    if (!k) {
      k = { replica: peer, url: link.url, acked: new VersionVector(), lastSeen: null, blocked: false, bytesIn: 0, bytesOut: 0, behindSince: null }
      this.known.set(peer, k)
    }
    if (link.url) k.url = link.url
    k.lastSeen = this.host.now()
    this.host.log(`peer ${peer} connected (${link.dialled ? 'dialled' : 'accepted'})`)
    this.sendCatalog(link)
    this.send(link, { t: 'vv', vv: this.host.storage.logged })
    for (const x of this.extensions.values()) x.linkUp?.(peer)
  }

  // ---- extensions ----

  extension(channel: string, handler: ExtensionHandler): ExtensionPort {
    if (this.extensions.has(channel)) throw new Error(`extension ${channel} is registered already`)
    this.extensions.set(channel, handler)
    return {
      send: (peer, payload) => {
        const link = this.ready.get(peer)
        if (!link) return false
        this.send(link, { t: 'ext', channel, payload })
        return true
      },
      peers: () => [...this.ready.keys()],
      bufferedAmount: (peer) => this.ready.get(peer)?.channel.bufferedAmount() ?? 0,
    }
  }

  // ---- catalog ----

  private sendCatalog(link: Link): void {
    const enc = encoding.createEncoder()
    this.host.store.catalogType.encode(enc, this.host.store.catalog())
    this.send(link, { t: 'catalog', state: encoding.toUint8Array(enc) })
  }

  private onCatalog(link: Link, bytes: Uint8Array): void {
    const state = this.host.store.catalogType.decode(decoding.createDecoder(bytes))
    this.catalogSource = link
    let changed: boolean
    try {
      changed = this.host.store.mergeCatalog(state)
    } finally {
      this.catalogSource = null
    }
    if (!changed) return
    void this.host.saveCatalog().catch(() => {})
    // Relay every change, not only those that define or redefine a view: the same definition
    // made on two sides differs only in its stamp, emits no define event, and yet the catalogs
    // must end byte-identical on every replica, also where the two sides never meet.
    for (const other of this.ready.values()) if (other !== link) this.sendCatalog(other)
  }

  // ---- version vectors, acknowledgements, catch-up ----

  private onVv(link: Link, vv: VersionVector): void {
    const k = this.known.get(link.peer as string) as Known
    k.acked.merge(vv)
    this.updateBehind(k)
    link.peerHas.merge(vv)
    if (!link.gotVv) {
      link.gotVv = true
      void this.catchUp(link)
    }
  }

  private updateBehind(k: Known): void {
    const behind = !this.host.storage.logged.isCoveredBy(k.acked)
    if (!behind) k.behindSince = null
    else k.behindSince ??= this.host.now()
  }

  private scheduleAck(link: Link): void {
    if (link.ackTimer) return
    link.ackTimer = this.options.setTimer(this.options.ackIntervalMs, () => {
      link.ackTimer = null
      this.send(link, { t: 'vv', vv: this.host.storage.logged })
    })
  }

  /**
   * Sends the peer what it lacks: from the log when the log reaches back far enough, else by
   * anti-entropy. States of a key are joined first, so each changed key travels once.
   */
  private async catchUp(link: Link): Promise<void> {
    if (link.catchingUp || link.state !== 'ready') return
    link.catchingUp = true
    this.stats.catchUps++
    try {
      const storage = this.host.storage
      const has = link.peerHas.clone()
      let needAe = false
      for (const origin of storage.logged.origins()) {
        if (has.get(origin) + 1 < storage.lowWater(origin)) needAe = true
      }
      if (needAe) {
        this.stats.antiEntropyRuns++
        await this.ae.start(link, storage.logged.clone())
        return
      }
      const want = (o: string, s: number) => !has.covers(o, s)
      let batch = new Map<string, { view: View; key: string; state: unknown }>()
      let covers = new VersionVector()
      let bytes = 0
      const flush = async () => {
        if (batch.size === 0) return
        const states: WireState[] = []
        for (const { view, key, state } of batch.values()) {
          const enc = encoding.createEncoder()
          view.type.encode(enc, state)
          states.push({ view: view.name, type: view.def.type, key, bytes: encoding.toUint8Array(enc) })
        }
        this.stats.catchUpStates += states.length
        const before = this.stats.bytesOut
        this.send(link, { t: 'states', states, covers })
        this.stats.catchUpBytes += this.stats.bytesOut - before
        link.peerHas.merge(covers)
        batch = new Map()
        covers = new VersionVector()
        bytes = 0
        await this.drained(link)
      }
      for await (const entries of storage.readLog(want)) {
        if (link.state !== 'ready') return
        for (const e of entries) {
          const view = this.host.store.viewByNo(e.viewNo)
          covers.add(e.origin, e.seq)
          if (!view) continue
          const delta = view.type.decode(decoding.createDecoder(e.delta))
          const id = `${e.viewNo}\u0000${e.key}`
          const slot = batch.get(id)
          if (slot) view.type.join(slot.state, delta)
          else {
            batch.set(id, { view, key: e.key, state: delta })
            bytes += e.key.length + e.delta.length
          }
        }
        if (bytes > this.options.maxMessageBytes / 2) await flush()
      }
      await flush()
    } finally {
      link.catchingUp = false
    }
  }

  /** Resolves once the link's buffer is below the high-water mark (or the link is gone). */
  private drained(link: Link): Promise<void> {
    return new Promise((resolve) => {
      const check = () => {
        if (link.state !== 'ready' || link.channel.bufferedAmount() < this.options.highWaterBytes / 4) resolve()
        else this.options.setTimer(10, check)
      }
      check()
    })
  }

  private onAeDone(link: Link, covers: VersionVector): void {
    // The peer shipped every range where our states differed: this node now holds everything
    // the peer held when it started, so its deltas count as delivered here.
    link.peerHas.merge(covers)
    void this.host.storage.markDelivered(covers).then(
      () => {
        this.scheduleAck(link)
        // Other peers may lack what just arrived, and no log can serve it: catch them up.
        for (const other of this.ready.values()) if (other !== link) void this.catchUp(other)
      },
      () => {},
    )
  }

  /**
   * The safety net behind relay: every so often, a link whose peer lacks deltas this node holds
   * and did not send (a relay that could not happen, a lost race) gets a catch-up.
   */
  private sweep(): void {
    if (this.closed) return
    const logged = this.host.storage.logged
    for (const link of this.ready.values()) {
      if (link.gotVv && !link.lagging && !link.catchingUp && !logged.isCoveredBy(link.peerHas)) void this.catchUp(link)
    }
    this.cancelSweep = this.options.setTimer(this.options.sweepIntervalMs, () => this.sweep())
  }

  // ---- deltas ----

  private onDeltas(link: Link, deltas: WireDelta[]): void {
    const { store, storage } = this.host
    // A peer ships only deltas durable on its side: what it sends, it has acknowledged.
    const known = this.known.get(link.peer as string)
    for (const d of deltas) {
      link.peerHas.add(d.origin, d.seq)
      known?.acked.add(d.origin, d.seq)
      const id = `${d.origin}\u0000${d.seq}`
      if (storage.logged.covers(d.origin, d.seq) || this.pending.has(id)) {
        this.stats.duplicatesIn++
        continue
      }
      if (!store.hasView(d.view) || store.view(d.view).def.type !== d.type) {
        // A view this node does not have under that type: its catalog lost (or has not yet
        // received) that definition. Counted, not applied.
        this.stats.droppedIn++
        continue
      }
      const view = store.view(d.view)
      const delta = view.type.decode(decoding.createDecoder(d.bytes))
      store.merge(view, d.key, delta)
      this.pending.add(id)
      this.stats.deltasIn++
      storage.append(view, d.key, delta, d.origin, d.seq).then(
        () => {
          this.pending.delete(id)
          // Acknowledge once durable: an ack sent before would leave these out for good.
          this.scheduleAck(link)
        },
        () => this.pending.delete(id),
      )
    }
    if (known) this.updateBehind(known)
    this.scheduleAck(link)
  }

  private onStates(link: Link, states: WireState[], covers: VersionVector | null): void {
    const { store, storage } = this.host
    for (const s of states) {
      if (!store.hasView(s.view) || store.view(s.view).def.type !== s.type) {
        this.stats.droppedIn++
        continue
      }
      const view = store.view(s.view)
      const state = view.type.decode(decoding.createDecoder(s.bytes))
      if (store.merge(view, s.key, state)) {
        // Persisted as a delta of no origin of its own: the covered deltas are what it carries.
        storage.appendState(view, s.key, state)
      }
    }
    if (covers) {
      link.peerHas.merge(covers)
      void storage.markDelivered(covers).then(
        () => this.scheduleAck(link),
        () => {},
      )
      // Relay: the log cannot serve these deltas (they came folded into states), so pass the
      // states on as they are to every other peer that lacks some of them.
      for (const other of this.ready.values()) {
        if (other === link || !other.gotVv || covers.isCoveredBy(other.peerHas)) continue
        this.send(other, { t: 'states', states, covers })
        other.peerHas.merge(covers)
      }
    }
  }

  /** Ships each durable delta (local or relayed) to every ready link whose peer lacks it. */
  private shipDurable(deltas: DurableDelta[]): void {
    if (this.ready.size === 0) return
    const wire: WireDelta[] = []
    for (const d of deltas) {
      const enc = encoding.createEncoder()
      d.view.type.encode(enc, d.delta)
      wire.push({ origin: d.origin, seq: d.seq, view: d.view.name, type: d.view.def.type, key: d.key, bytes: encoding.toUint8Array(enc) })
    }
    for (const link of this.ready.values()) {
      if (!link.gotVv) continue
      if (link.lagging || link.channel.bufferedAmount() > this.options.highWaterBytes) {
        this.startLagging(link)
        continue
      }
      let out: WireDelta[] = []
      let size = 0
      for (const w of wire) {
        if (link.peerHas.covers(w.origin, w.seq)) continue
        link.peerHas.add(w.origin, w.seq)
        out.push(w)
        size += w.bytes.length + w.key.length + 8
        if (size >= this.options.maxMessageBytes / 2) {
          this.sendDeltas(link, out)
          out = []
          size = 0
        }
      }
      if (out.length > 0) this.sendDeltas(link, out)
    }
    for (const k of this.known.values()) this.updateBehind(k)
  }

  private sendDeltas(link: Link, deltas: WireDelta[]): void {
    this.stats.deltasOut += deltas.length
    this.send(link, { t: 'deltas', deltas })
  }

  /** A slow peer: stop queueing live deltas; once its buffer drains, catch it up from the log. */
  private startLagging(link: Link): void {
    if (link.lagging) return
    link.lagging = true
    this.host.log(`peer ${link.peer} is slow: live deltas paused, it will catch up from the log`)
    void this.drained(link).then(() => {
      link.lagging = false
      if (link.state === 'ready') void this.catchUp(link)
    })
  }

  // ---- operator controls and introspection ----

  /** Cuts the link to `replica` and keeps it cut until `restore`. False for a replica never seen. */
  block(replica: string): boolean {
    const k = this.known.get(replica)
    if (!k) return false
    k.blocked = true
    const link = this.ready.get(replica)
    if (link) this.refuse(link, CLOSE.blocked, `disconnected by the operator`)
    for (const l of [...this.links]) if (l.peer === replica) this.refuse(l, CLOSE.blocked, 'disconnected by the operator')
    return true
  }

  restore(replica: string): boolean {
    const k = this.known.get(replica)
    if (!k) return false
    k.blocked = false
    return true
  }

  isBlocked(replica: string): boolean {
    return this.known.get(replica)?.blocked ?? false
  }

  isConnected(replica: string): boolean {
    return this.ready.has(replica)
  }

  /** The replica a dial URL reached last time, if any. */
  replicaAt(url: string): string | null {
    for (const k of this.known.values()) if (k.url === url) return k.replica
    return null
  }

  peers(dialTargets: readonly string[] = []): PeerInfo[] {
    const now = this.host.now()
    const logged = this.host.storage.logged
    const out: PeerInfo[] = []
    for (const k of [...this.known.values()].sort((a, b) => (a.replica < b.replica ? -1 : 1))) {
      let lagOps = 0
      for (const o of logged.origins()) lagOps += Math.max(0, logged.get(o) - k.acked.get(o))
      out.push({
        replica: k.replica,
        url: k.url,
        // Ready here is not enough: without a secret a dialler is ready on the peer's hello, and
        // the peer may still refuse the link (operator cut); its vector says it accepted.
        connected: this.ready.get(k.replica)?.gotVv === true,
        lagOps,
        lagMs: k.behindSince === null ? 0 : now - k.behindSince,
        lastSeen: k.lastSeen,
        bytesIn: k.bytesIn,
        bytesOut: k.bytesOut,
        blocked: k.blocked,
      })
    }
    for (const url of dialTargets) {
      if (![...this.known.values()].some((k) => k.url === url)) {
        out.push({ replica: null, url, connected: false, lagOps: 0, lagMs: 0, lastSeen: null, bytesIn: 0, bytesOut: 0, blocked: false })
      }
    }
    return out
  }

  connectedCount(): number {
    return this.ready.size
  }

  close(): void {
    this.closed = true
    this.cancelSweep()
    for (const link of [...this.links]) {
      link.channel.close(CLOSE.normal, 'node is shutting down')
      this.closed_(link)
    }
  }
}
