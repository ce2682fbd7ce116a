/**
 * Yjs documents over the peer protocol: the "yjs" extension channel of the replicator
 * (docs/protocol.md, "Yjs documents").
 *
 * - Live: every durable update (a client's, or a peer's that changed something here) goes to
 *   every connected peer but the one it came from. A peer applies it and passes on only what
 *   changed its copy, so flooding stops where nothing is new, and a chain A–B–C converges.
 * - Catch-up, on every new link: each side sends a summary of each document it holds (state
 *   vector and delete-set digest), then an end mark. The other side answers each summary with
 *   exactly what that peer lacks of the document (Y.encodeStateAsUpdate against its vector), if
 *   anything, and after the end mark sends whole the documents the peer did not list.
 * - Awareness travels like live updates and is never stored; a lost link removes, here, the
 *   states that came over it.
 * - A peer that does not keep up (its link buffers past a high-water mark) stops getting live
 *   updates; once drained, it is asked for its summaries again and caught up like a reconnect.
 */
import type { ExtensionPort, Replicator } from '../replication/replicator.js'
import type { PeerSink, YjsDocs } from './docs.js'
import { decodeYPeerMessage, encodeYPeerMessage, YJS_CHANNEL, YPeerError, type DocSummary, type YPeerMessage } from './peerMessages.js'
import { checkAwarenessUpdate, checkStateVector } from './protocol.js'

export interface YjsPeerOptions {
  /** Largest message this node sends on the channel; larger updates travel in parts. */
  maxMessageBytes: number
  /** Bytes buffered towards a peer past which it stops getting live updates. */
  highWaterBytes: number
  /** Largest update accepted in parts from a peer (what one transfer may hold in memory). */
  maxTransferBytes: number
  log(line: string): void
}

export const DEFAULT_YJS_PEER_OPTIONS: Omit<YjsPeerOptions, 'log'> = {
  maxMessageBytes: 512 * 1024,
  highWaterBytes: 8 * 1024 * 1024,
  maxTransferBytes: 512 * 1024 * 1024,
}

interface Transfer {
  name: string
  parts: Uint8Array[]
  bytes: number
}

/** One link's state on this side. */
class Session {
  alive = true
  lagging = false
  /** Documents the peer listed in its current round of summaries. */
  readonly listed = new Set<string>()
  readonly transfers = new Map<number, Transfer>()
  private chain: Promise<void> = Promise.resolve()

  constructor(readonly peer: string) {}

  /** Runs catch-up work one task at a time, in order; a task of a dead link does nothing. */
  enqueue(task: () => Promise<void>, log: (line: string) => void): void {
    this.chain = this.chain.then(() => (this.alive ? task() : undefined)).catch((err: unknown) => {
      if (this.alive) log(`yjs: catch-up with ${this.peer}: ${(err as Error).message}`)
    })
  }
}

export interface YjsPeerStats {
  updatesOut: number
  catchUpUpdates: number
  catchUpBytes: number
  summariesSent: number
}

export class YjsPeers implements PeerSink {
  private readonly port: ExtensionPort
  private readonly sessions = new Map<string, Session>()
  private readonly options: YjsPeerOptions
  private nextTransfer = 1
  readonly stats: YjsPeerStats = { updatesOut: 0, catchUpUpdates: 0, catchUpBytes: 0, summariesSent: 0 }

  constructor(
    private readonly docs: YjsDocs,
    replicator: Replicator,
    options: Partial<YjsPeerOptions> & Pick<YjsPeerOptions, 'log'>,
  ) {
    this.options = { ...DEFAULT_YJS_PEER_OPTIONS, ...options }
    this.port = replicator.extension(YJS_CHANNEL, {
      linkUp: (peer) => this.linkUp(peer),
      linkDown: (peer) => this.linkDown(peer),
      message: (peer, payload) => this.message(peer, payload),
    })
    docs.setPeers(this)
  }

  private linkUp(peer: string): void {
    const old = this.sessions.get(peer)
    if (old) old.alive = false
    const s = new Session(peer)
    this.sessions.set(peer, s)
    for (const a of this.docs.awarenessStates()) this.sendTo(peer, { t: 'awareness', name: a.name, update: a.update })
    s.enqueue(() => this.sendSummaries(s), this.options.log)
  }

  private linkDown(peer: string): void {
    const s = this.sessions.get(peer)
    if (s) s.alive = false
    this.sessions.delete(peer)
    this.docs.peerGone(peer)
  }

  private message(peer: string, payload: Uint8Array): void {
    const s = this.sessions.get(peer)
    if (!s) return
    const m = decodeYPeerMessage(payload)
    switch (m.t) {
      case 'summaries':
        for (const d of m.docs) {
          checkStateVector(d.sv)
          s.listed.add(d.name)
          s.enqueue(() => this.answer(s, d), this.options.log)
        }
        return
      case 'summariesEnd': {
        const listed = new Set(s.listed)
        s.listed.clear()
        s.enqueue(() => this.sendUnlisted(s, listed), this.options.log)
        return
      }
      case 'update':
        this.docs.applyRemote(m.name, m.update, peer)
        return
      case 'part':
        return this.onPart(s, m)
      case 'awareness':
        checkAwarenessUpdate(m.update)
        this.docs.applyRemoteAwareness(m.name, m.update, peer)
        return
      case 'resync':
        s.enqueue(() => this.sendSummaries(s), this.options.log)
        return
    }
  }

  private onPart(s: Session, m: Extract<YPeerMessage, { t: 'part' }>): void {
    let t = s.transfers.get(m.id)
    if (!t) s.transfers.set(m.id, (t = { name: m.name, parts: [], bytes: 0 }))
    if (t.name !== m.name) throw new YPeerError(`part of transfer ${m.id} names another document`)
    t.parts.push(m.bytes)
    t.bytes += m.bytes.length
    if (t.bytes > this.options.maxTransferBytes) throw new YPeerError(`an update in parts larger than ${this.options.maxTransferBytes} bytes`)
    if (!m.last) return
    s.transfers.delete(m.id)
    const update = new Uint8Array(t.bytes)
    let at = 0
    for (const p of t.parts) {
      update.set(p, at)
      at += p.length
    }
    this.docs.applyRemote(t.name, update, s.peer)
  }

  // ---- catch-up ----

  private async sendSummaries(s: Session): Promise<void> {
    let page: DocSummary[] = []
    let bytes = 0
    for (const name of this.docs.names()) {
      if (!s.alive) return
      const sum = await this.docs.summary(name)
      if (!sum) continue
      page.push(sum)
      bytes += name.length * 3 + sum.sv.length + sum.dsHash.length + 8
      if (bytes >= this.options.maxMessageBytes / 2) {
        this.sendTo(s.peer, { t: 'summaries', docs: page })
        this.stats.summariesSent += page.length
        page = []
        bytes = 0
        await this.drained(s)
      }
    }
    if (page.length > 0) {
      this.sendTo(s.peer, { t: 'summaries', docs: page })
      this.stats.summariesSent += page.length
    }
    this.sendTo(s.peer, { t: 'summariesEnd' })
  }

  /** Sends what the peer lacks of one document it listed. */
  private async answer(s: Session, theirs: DocSummary): Promise<void> {
    const diff = await this.docs.diffFor(theirs)
    if (diff === null || !s.alive) return
    this.stats.catchUpUpdates++
    this.stats.catchUpBytes += diff.length
    this.sendUpdate(s.peer, theirs.name, diff)
    await this.drained(s)
  }

  /** Sends whole every document the peer did not list. */
  private async sendUnlisted(s: Session, listed: Set<string>): Promise<void> {
    for (const name of this.docs.names()) {
      if (!s.alive) return
      if (listed.has(name)) continue
      const state = await this.docs.fullState(name)
      if (state === null || !s.alive) continue
      this.stats.catchUpUpdates++
      this.stats.catchUpBytes += state.length
      this.sendUpdate(s.peer, name, state)
      await this.drained(s)
    }
  }

  /** Resolves once the link's buffer is below a quarter of the high-water mark (or the link is gone). */
  private drained(s: Session): Promise<void> {
    return new Promise((resolve) => {
      const check = () => {
        if (!s.alive || this.port.bufferedAmount(s.peer) < this.options.highWaterBytes / 4) resolve()
        else setTimeout(check, 10).unref()
      }
      check()
    })
  }

  // ---- sending ----

  private sendTo(peer: string, m: YPeerMessage): boolean {
    return this.port.send(peer, encodeYPeerMessage(m))
  }

  /** One update, in parts when it is larger than a message may be. */
  private sendUpdate(peer: string, name: string, update: Uint8Array): void {
    const max = this.options.maxMessageBytes
    if (update.length + name.length * 3 + 16 <= max) {
      this.sendTo(peer, { t: 'update', name, update })
      return
    }
    const id = this.nextTransfer++
    const step = Math.max(1024, max - name.length * 3 - 32)
    for (let at = 0; at < update.length; at += step) {
      const end = Math.min(update.length, at + step)
      this.sendTo(peer, { t: 'part', name, id, last: end === update.length, bytes: update.subarray(at, end) })
    }
  }

  /** A peer that lets its buffer fill stops getting live traffic and is caught up once drained. */
  private keepingUp(s: Session): boolean {
    if (s.lagging) return false
    if (this.port.bufferedAmount(s.peer) <= this.options.highWaterBytes) return true
    s.lagging = true
    this.options.log(`yjs: peer ${s.peer} is slow: live updates paused, it will catch up once drained`)
    void this.drained(s).then(() => {
      s.lagging = false
      // It tells us what it has; we answer with what it lacks.
      if (s.alive) this.sendTo(s.peer, { t: 'resync' })
    })
    return false
  }

  // ---- PeerSink ----

  counters(): { updatesOut: number; catchUpUpdates: number; catchUpBytes: number } {
    return { updatesOut: this.stats.updatesOut, catchUpUpdates: this.stats.catchUpUpdates, catchUpBytes: this.stats.catchUpBytes }
  }

  wanted(except: string | null): boolean {
    for (const s of this.sessions.values()) if (s.peer !== except && !s.lagging) return true
    return false
  }

  update(name: string, update: Uint8Array, except: string | null): void {
    for (const s of this.sessions.values()) {
      if (s.peer === except || !this.keepingUp(s)) continue
      this.stats.updatesOut++
      this.sendUpdate(s.peer, name, update)
    }
  }

  awareness(name: string, update: Uint8Array, except: string | null): void {
    for (const s of this.sessions.values()) {
      if (s.peer === except || !this.keepingUp(s)) continue
      this.sendTo(s.peer, { t: 'awareness', name, update })
    }
  }
}

