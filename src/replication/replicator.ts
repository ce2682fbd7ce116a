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
 * - Relay skips a peer that has a link with the delta's origin (peers announce their links): in a
 *   full mesh nothing is relayed, and a peer that loses a link is caught up from here.
 * - On connect, peers exchange catalogs and version vectors; each side sends what the other
 *   lacks from its log, with the deltas of each key joined into one (a catch-up ships changed
 *   states, not histories). Deltas the log no longer holds (dropped past the retention bound, or
 *   received folded into states) are found by key in the journal (journal.ts) and their keys'
 *   states shipped. Only where this node never tracked what a peer lacks (a peer it did not know,
 *   tracking given up) does anti-entropy compare digests of hashed key ranges (antiEntropy.ts).
 * - Known peers, what they acknowledged, and the journal's epochs are kept in the storage's meta
 *   region, so log retention and tracking outlive a restart.
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
import { decodeEpoch, encodeEpoch, Journal, type KeySet } from './journal.js'
import { readByte, readString } from '../../crdts/codec.js'

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
  /**
   * Keys the journal tracks (see journal.ts) before it gives up: peers that lack what it named
   * then catch up by digest anti-entropy. 0 turns tracking off.
   */
  maxTrackedKeys: number
  /** Timers, so the simulator can drive them. */
  setTimer(ms: number, fn: () => void): () => void
}

export const DEFAULT_REPLICATOR_OPTIONS: Omit<ReplicatorOptions, 'setTimer'> = {
  maxMessageBytes: 1024 * 1024,
  highWaterBytes: 8 * 1024 * 1024,
  ackIntervalMs: 20,
  sweepIntervalMs: 1000,
  maxTrackedKeys: 1_000_000,
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
  /** Of those, states of keys the journal named (their deltas had left the log). */
  journalStates: number
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
  /**
   * Deltas the journal does not track for this peer (held here before the peer was known, or
   * when tracking was given up) and that it has not acknowledged: where the log cannot serve
   * them, only anti-entropy can. Null when there are none.
   */
  gap: VersionVector | null
  /** Changed since last saved. */
  dirty: boolean
}

const META = 'repl:'
const PEER_META = `${META}peer:`
const EPOCH_META = `${META}epoch:`
const PEER_FORMAT = 1

function encodePeer(k: Known): Uint8Array {
  const enc = encoding.createEncoder()
  encoding.writeUint8(enc, PEER_FORMAT)
  encoding.writeVarString(enc, k.url ?? '')
  k.acked.encode(enc)
  encoding.writeUint8(enc, k.gap ? 1 : 0)
  k.gap?.encode(enc)
  return encoding.toUint8Array(enc)
}

function decodePeer(replica: string, bytes: Uint8Array): Known {
  const what = 'saved peer'
  const dec = decoding.createDecoder(bytes)
  if (readByte(dec, what) !== PEER_FORMAT) throw new Error(`${what}: unknown format`)
  const url = readString(dec, what)
  const acked = VersionVector.decode(dec, what)
  const gap = readByte(dec, what) === 1 ? VersionVector.decode(dec, what) : null
  return { replica, url: url === '' ? null : url, acked, lastSeen: null, blocked: false, bytesIn: 0, bytesOut: 0, behindSince: null, gap, dirty: false }
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
  /** The replicas the peer has links with (its last `links`); null until it said. */
  peerLinks: Set<string> | null = null
  /** Keys of states received since the last `covers` (a catch-up's or a session's): the claim names their deltas. */
  pendingFold: KeySet = new Map()
  lagging = false
  catchingUp = false
  /** A catch-up was asked for while one ran: run another after it. */
  catchUpAgain = false
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
  /** What this node held at the last sweep: a peer still lacking some of it a sweep later gets a catch-up. */
  private sweepMark: VersionVector | null = null
  /** The last `links` list announced. */
  private announced = ''
  readonly journal: Journal
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
    journalStates: 0,
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
    this.journal = new Journal(this.options.maxTrackedKeys)
    this.ae = new AntiEntropy(host.store, (link, m) => this.send(link, m), this.stats, () => host.storage.flushed())
    host.storage.onDurable((deltas) => {
      this.track(deltas)
      this.shipDurable(deltas)
    })
    host.storage.setLogRetention((r) => {
      // A record may go once every peer this node knows has acknowledged all of it.
      let keep = false
      for (const k of this.known.values()) {
        for (const [origin, [, hi]] of r.ranges) if (k.acked.get(origin) < hi) keep = true
      }
      // Past the bound it goes anyway: what names its deltas by key must be on disk first (the
      // writes queued now land in the batch that records the log's new low-water mark, or before).
      const storage = host.storage
      if (keep && storage.retainedLog().bytes > storage.options.maxRetainedLogBytes) this.persist()
      return !keep
    })
    this.cancelSweep = this.options.setTimer(this.options.sweepIntervalMs, () => this.sweep())
    host.store.subscribe((ev) => {
      // Local definitions; what a peer's catalog brought is relayed by onCatalog.
      if (ev.kind !== 'define' || this.catalogSource !== null) return
      for (const link of this.ready.values()) this.sendCatalog(link)
    })
  }

  /**
   * Loads the known peers and the journal saved by the last run, and tracks again the logged
   * deltas some known peer has not acknowledged (the open epoch lived in memory only: the log
   * held its deltas). Call once, before any link and any write.
   */
  async load(): Promise<void> {
    const storage = this.host.storage
    let lost = false
    for (const { name, body } of await storage.scanMeta(META)) {
      try {
        if (name.startsWith(PEER_META)) {
          const replica = name.slice(PEER_META.length)
          this.known.set(replica, decodePeer(replica, body))
        } else if (name.startsWith(EPOCH_META) && body.length > 0) {
          this.journal.restore(decodeEpoch(body, Number(name.slice(EPOCH_META.length))))
        }
      } catch (err) {
        this.host.log(`replication state "${name}" is unreadable (${(err as Error).message}); peers that lack deltas this node cannot name will catch up by anti-entropy`)
        lost = true
      }
    }
    this.journal.sortRestored()
    if (lost) this.loseTracking()
    if (this.known.size === 0) return
    const known = [...this.known.values()]
    for await (const entries of storage.readLog((o, s) => known.some((k) => !k.acked.covers(o, s)))) {
      for (const e of entries) this.journal.track(e.viewNo, e.key, e.origin, e.seq)
    }
    if (this.journal.size() > this.options.maxTrackedKeys) this.loseTracking()
    this.journal.rotate(storage.logged)
  }

  // ---- journal and saved state ----

  /** Tracks the keys of durable deltas for the peers that may lack them. */
  private track(deltas: DurableDelta[]): void {
    if (this.known.size === 0) return
    for (const d of deltas) {
      if (!this.journal.track(d.view.no, d.key, d.origin, d.seq)) return this.loseTracking()
    }
  }

  /**
   * The journal is over its bound (or unreadable): it goes, and every peer's gap takes all this
   * node holds, so a peer that lacks what the log cannot serve gets anti-entropy.
   */
  private loseTracking(): void {
    const logged = this.host.storage.logged
    for (const k of this.known.values()) {
      if (logged.isCoveredBy(k.acked)) continue
      k.gap ??= new VersionVector()
      k.gap.merge(logged)
      k.dirty = true
    }
    this.freeSlots(this.journal.clear())
  }

  /** Writes freed epoch slots empty, after the peers (their gaps and acknowledgements) in the same batch. */
  private freeSlots(slots: number[]): void {
    if (slots.length === 0) return
    this.savePeers()
    for (const slot of slots) this.putMeta(`${EPOCH_META}${slot}`, new Uint8Array(0))
  }

  private putMeta(name: string, body: Uint8Array): void {
    // A failed disk fails every later write too, and the node reports it there.
    this.host.storage.putMeta(name, body).catch(() => {})
  }

  private savePeers(): void {
    for (const k of this.known.values()) {
      if (!k.dirty) continue
      k.dirty = false
      this.putMeta(`${PEER_META}${k.replica}`, encodePeer(k))
    }
  }

  /** Queues every unsaved peer and journal epoch for the next group commit. */
  private persist(): void {
    this.savePeers()
    for (const e of this.journal.persist(this.host.storage.logged)) this.putMeta(`${EPOCH_META}${e.slot as number}`, encodeEpoch(e))
  }

  /** Drops the epochs every known peer has acknowledged, and starts a new one. */
  private pruneJournal(): void {
    const known = [...this.known.values()]
    this.freeSlots(this.journal.prune((bound) => known.every((k) => bound.isCoveredBy(k.acked))))
    this.journal.rotate(this.host.storage.logged)
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
      if (!this.closed) this.announceLinks()
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
      case 'links':
        return this.onLinks(link, m.peers)
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
      // Nothing held so far is tracked for this peer: all of it is its gap until it acknowledges.
      const logged = this.host.storage.logged
      const gap = logged.total() > 0 ? logged.clone() : null
      k = { replica: peer, url: link.url, acked: new VersionVector(), lastSeen: null, blocked: false, bytesIn: 0, bytesOut: 0, behindSince: null, gap, dirty: true }
      this.known.set(peer, k)
    }
    if (link.url && link.url !== k.url) {
      k.url = link.url
      k.dirty = true
    }
    // Saved at once: retention protects this peer from now on, across restarts too.
    this.savePeers()
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
    if (!link.gotVv && !k.acked.isCoveredBy(vv)) {
      // The peer lacks deltas it acknowledged (a new data directory, or a crash before its
      // vector was durable): what was pruned from the journal on its word, it may lack.
      this.host.log(`peer ${k.replica} no longer holds deltas it acknowledged; what this node cannot name for it goes by anti-entropy`)
      k.acked = vv.clone()
      k.gap ??= new VersionVector()
      k.gap.merge(this.host.storage.logged)
      k.dirty = true
    } else if (k.acked.merge(vv)) k.dirty = true
    if (k.gap && k.gap.isCoveredBy(k.acked)) {
      k.gap = null
      k.dirty = true
    }
    this.updateBehind(k)
    link.peerHas.merge(vv)
    this.pruneJournal()
    if (!link.gotVv) {
      link.gotVv = true
      // Announced to every peer when the set changed, this one included; else to this one.
      if (!this.announceLinks()) this.send(link, { t: 'links', peers: this.linkedPeers() })
      void this.catchUp(link)
    }
  }

  private updateBehind(k: Known): void {
    const behind = !this.host.storage.logged.isCoveredBy(k.acked)
    if (!behind) k.behindSince = null
    else k.behindSince ??= this.host.now()
  }

  private scheduleAck(link: Link): void {
    if (link.ackTimer || link.state !== 'ready') return
    link.ackTimer = this.options.setTimer(this.options.ackIntervalMs, () => {
      link.ackTimer = null
      this.send(link, { t: 'vv', vv: this.host.storage.logged })
    })
  }

  /**
   * Acknowledges to every peer, not only the sender: a peer that holds these deltas too learns
   * that this node needs no relay of them, and may let its log records go.
   */
  private ackAll(): void {
    for (const link of this.ready.values()) this.scheduleAck(link)
  }

  // ---- links between peers ----

  private linkedPeers(): string[] {
    const out: string[] = []
    for (const [peer, link] of this.ready) if (link.gotVv) out.push(peer)
    return out.sort()
  }

  /** Tells every peer which replicas this node has links with now, after its vector (see onLinks). False if unchanged. */
  private announceLinks(): boolean {
    const peers = this.linkedPeers()
    const key = peers.join('\u0000')
    if (key === this.announced) return false
    this.announced = key
    for (const link of this.ready.values()) {
      this.send(link, { t: 'vv', vv: this.host.storage.logged })
      this.send(link, { t: 'links', peers })
    }
    return true
  }

  /**
   * The peer's links: deltas of a replica it has a link with reach it from there, so this node
   * does not relay them. A link it lost may have dropped deltas in flight that this node did not
   * relay: its vector (sent just before) says what it has, and a catch-up sends the rest.
   */
  private onLinks(link: Link, peers: string[]): void {
    const before = link.peerLinks
    link.peerLinks = new Set(peers)
    if (before && [...before].some((p) => !link.peerLinks?.has(p))) void this.catchUp(link)
  }

  // ---- catch-up ----

  /**
   * True when the peer may lack deltas that neither the log nor the journal can give it: those
   * of its gap below what the log still serves.
   */
  private untracked(k: Known, has: VersionVector): boolean {
    if (!k.gap) return false
    for (const o of k.gap.origins()) {
      const need = Math.min(k.gap.max(o), this.host.storage.lowWater(o) - 1)
      if (need > 0 && has.get(o) < need) return true
    }
    return false
  }

  /**
   * Sends the peer what it lacks: from the log, each key's deltas joined into one, where the log
   * still holds them; the states of the keys the journal names where it does not; by
   * anti-entropy where neither can (untracked).
   */
  private async catchUp(link: Link): Promise<void> {
    if (link.state !== 'ready') return
    if (link.catchingUp) {
      link.catchUpAgain = true
      return
    }
    link.catchingUp = true
    try {
      do {
        link.catchUpAgain = false
        this.stats.catchUps++
        await this.catchUpOnce(link)
      } while (link.catchUpAgain && link.state === 'ready')
    } finally {
      link.catchingUp = false
    }
  }

  private async catchUpOnce(link: Link): Promise<void> {
    const storage = this.host.storage
    const k = this.known.get(link.peer as string) as Known
    const has = link.peerHas.clone()
    if (this.untracked(k, has)) return this.antiEntropy(link, has)
    const snapshot = storage.logged.clone()
    const lowWater = (o: string) => storage.lowWater(o)
    // Keys that go as whole states below: their log deltas need not travel too.
    const skip: KeySet = new Map()
    this.journal.spilledKeys(has, lowWater, skip)
    // The log picks records by their lowest and highest sequence per origin: asking for every
    // sequence above the peer's contiguous prefix also finds a record whose ends the peer has
    // and whose middle it lacks. Entries it has are skipped below.
    const want = (o: string, s: number) => s > has.get(o)
    let batch = new Map<string, { view: View; key: string; state: unknown }>()
    let covers = new VersionVector()
    let bytes = 0
    const flush = async () => {
      if (batch.size === 0 && covers.total() === 0) return
      const states: WireState[] = []
      for (const { view, key, state } of batch.values()) {
        const enc = encoding.createEncoder()
        view.type.encode(enc, state)
        states.push({ view: view.name, type: view.def.type, key, bytes: encoding.toUint8Array(enc) })
      }
      this.sendStates(link, states, covers)
      batch = new Map()
      covers = new VersionVector()
      bytes = 0
      await this.drained(link)
    }
    for await (const entries of storage.readLog(want)) {
      if (link.state !== 'ready') return
      for (const e of entries) {
        if (has.covers(e.origin, e.seq) || skip.get(e.viewNo)?.has(e.key)) continue
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
    if (link.state !== 'ready') return
    // A compaction may have dropped records while they were read: deltas the log was to serve.
    if (this.untracked(k, has)) return this.antiEntropy(link, has)
    const spilled = this.journal.spilledKeys(has, lowWater, skip)
    if (spilled && !(await this.shipKeys(link, skip, snapshot.diff(has)))) return
    // Everything the peer lacked of `snapshot` went (or it had it: the journal forgets only
    // what every peer acknowledged), so the sweep need not come back for it.
    if (link.state === 'ready') link.peerHas.merge(snapshot)
  }

  private sendStates(link: Link, states: WireState[], covers: VersionVector | null): void {
    this.stats.catchUpStates += states.length
    const before = this.stats.bytesOut
    this.send(link, { t: 'states', states, covers })
    this.stats.catchUpBytes += this.stats.bytesOut - before
    if (covers) link.peerHas.merge(covers)
  }

  /**
   * Ships the current states of `keys`, the last message with `covers`: the peer holds those
   * deltas only once it has every state. Each message waits until the writes its states include
   * are durable here (see AntiEntropy.ship). False if the link or the disk failed meanwhile.
   */
  private async shipKeys(link: Link, keys: KeySet, covers: VersionVector): Promise<boolean> {
    const storage = this.host.storage
    let states: WireState[] = []
    let bytes = 0
    const send = async (last: boolean): Promise<boolean> => {
      try {
        await storage.flushed()
      } catch {
        return false
      }
      if (link.state !== 'ready') return false
      this.stats.journalStates += states.length
      this.sendStates(link, states, last ? covers : null)
      states = []
      bytes = 0
      if (!last) await this.drained(link)
      return link.state === 'ready'
    }
    for (const [no, set] of keys) {
      const view = this.host.store.viewByNo(no)
      if (!view) continue
      for (const key of set) {
        const state = view.states.get(key)
        if (state === undefined) continue
        const enc = encoding.createEncoder()
        view.type.encode(enc, state)
        const b = encoding.toUint8Array(enc)
        states.push({ view: view.name, type: view.def.type, key, bytes: b })
        bytes += b.length + key.length
        if (bytes > this.options.maxMessageBytes / 2 && !(await send(false))) return false
      }
    }
    return send(true)
  }

  private async antiEntropy(link: Link, has: VersionVector): Promise<void> {
    this.stats.antiEntropyRuns++
    const snapshot = this.host.storage.logged.clone()
    await this.ae.start(link, snapshot.diff(has))
    if (link.state === 'ready') link.peerHas.merge(snapshot)
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

  /**
   * The peer shipped every range where our states differed: this node now holds everything the
   * peer held when it started, so its deltas count as delivered here. Which keys they touched
   * is unknown (equal ranges did not travel, and this node may hold their content from states
   * that came without a claim): for the other peers they are untracked, like deltas held before
   * a peer was known, and one that lacks them where the log cannot serve them gets
   * anti-entropy in turn.
   */
  private onAeDone(link: Link, covers: VersionVector): void {
    const storage = this.host.storage
    const fresh = covers.diff(storage.logged)
    link.pendingFold = new Map()
    this.delivered(link, covers, () => {
      for (const k of this.known.values()) {
        if (k.replica === link.peer || fresh.isCoveredBy(k.acked)) continue
        k.gap ??= new VersionVector()
        k.gap.merge(fresh)
        k.dirty = true
      }
      this.savePeers()
    })
  }

  /**
   * States received with a claim (`covers`) that this node now holds those deltas: the keys of
   * the states that came with it (since the previous claim on this link: the sender ships every
   * key of what it claims) are journaled for the other peers, on disk in the same batch.
   */
  private fold(link: Link, covers: VersionVector): void {
    const storage = this.host.storage
    const keys = link.pendingFold
    link.pendingFold = new Map()
    this.delivered(link, covers, () => {
      if (this.known.size < 2) return
      this.journal.fold(keys, storage.logged)
      if (this.journal.size() > this.options.maxTrackedKeys) this.loseTracking()
      this.persist()
    })
  }

  /**
   * Records claimed deltas as delivered (the log cannot serve them); `track` runs right after,
   * so what it queues lands in the same batch as the new vectors. Once durable: acknowledged,
   * and other peers that lack some of them caught up (the states go on from here, with a claim
   * of this node's own).
   */
  private delivered(link: Link, covers: VersionVector, track: () => void): void {
    link.peerHas.merge(covers)
    const done = this.host.storage.markDelivered(covers)
    track()
    void done.then(
      () => {
        this.ackAll()
        for (const other of this.ready.values()) {
          if (other !== link && other.gotVv && !covers.isCoveredBy(other.peerHas)) void this.catchUp(other)
        }
      },
      () => {},
    )
  }

  /**
   * The safety net behind relay: a link whose peer still lacks, a sweep later, something this
   * node held at the last sweep (a relay skipped for a link that then failed, a lost race) gets
   * a catch-up. Known peers' acknowledgements are saved here too, for retention after a restart.
   */
  private sweep(): void {
    if (this.closed) return
    const mark = this.sweepMark
    for (const link of this.ready.values()) {
      if (mark && link.gotVv && !link.lagging && !link.catchingUp && !mark.isCoveredBy(link.peerHas)) void this.catchUp(link)
    }
    this.sweepMark = this.host.storage.logged.clone()
    this.savePeers()
    this.cancelSweep = this.options.setTimer(this.options.sweepIntervalMs, () => this.sweep())
  }

  // ---- deltas ----

  private onDeltas(link: Link, deltas: WireDelta[]): void {
    const { store, storage } = this.host
    // A peer ships only deltas durable on its side: what it sends, it has acknowledged.
    const known = this.known.get(link.peer as string)
    for (const d of deltas) {
      link.peerHas.add(d.origin, d.seq)
      if (known?.acked.add(d.origin, d.seq)) known.dirty = true
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
          this.ackAll()
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
      let keys = link.pendingFold.get(view.no)
      if (!keys) link.pendingFold.set(view.no, (keys = new Set()))
      keys.add(s.key)
    }
    if (covers) this.fold(link, covers)
  }

  /**
   * Ships each durable delta (local or relayed) to every ready link whose peer lacks it, except
   * a relayed delta to a peer that has a link with its origin: it gets the delta from there.
   */
  private shipDurable(deltas: DurableDelta[]): void {
    if (this.ready.size === 0) return
    const wire: WireDelta[] = []
    for (const d of deltas) {
      const enc = encoding.createEncoder()
      d.view.type.encode(enc, d.delta)
      wire.push({ origin: d.origin, seq: d.seq, view: d.view.name, type: d.view.def.type, key: d.key, bytes: encoding.toUint8Array(enc) })
    }
    const self = this.host.id
    for (const link of this.ready.values()) {
      if (!link.gotVv) continue
      if (link.lagging || link.channel.bufferedAmount() > this.options.highWaterBytes) {
        this.startLagging(link)
        continue
      }
      let out: WireDelta[] = []
      let size = 0
      for (const w of wire) {
        if (w.origin === link.peer || link.peerHas.covers(w.origin, w.seq)) continue
        if (w.origin !== self && link.peerLinks?.has(w.origin)) continue
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
    // Acknowledgements since the last sweep: the storage closes after this, writing them.
    this.savePeers()
    for (const link of [...this.links]) {
      link.channel.close(CLOSE.normal, 'node is shutting down')
      this.closed_(link)
    }
  }
}
