/**
 * A reference replica protocol for bare CRDTs over the simulator's seam: the simplest protocol
 * that converges, used to test the types before the real replication code exists (and, later,
 * as the oracle that the real protocol's results are compared with).
 *
 * - A replica holds a keyed map of states of one CrdtType.
 * - A local op is applied in place; its delta goes to every connected peer at once.
 * - On connect each side sends its full state for every key (the full-state fallback: no
 *   version vectors, no log, so a partition of any length heals).
 * - What arrives is decoded with the type's decoder and joined. With `relay`, the entries that
 *   changed this replica are forwarded to every other connected peer, so any connected topology
 *   converges, not only a full mesh.
 * - With `persist`, every changed key is written to storage before the op returns or the message
 *   is consumed (the fsync'd model), and a restarted replica reloads from there.
 *
 * Wire format (lib0), one message:
 *   kind byte (MSG_DELTA 0 or MSG_STATES 1), varUint n, then n × (key varString,
 *   state varUint8Array: the type's own encoding of a delta or a full state).
 * A delta and a full state are both states, so the receiver treats both kinds alike; the kind is
 * there for traces and for tests that count full-state traffic.
 */
import * as encoding from 'lib0/encoding'
import * as decoding from 'lib0/decoding'
import type { CrdtType, Timestamp } from '../../crdts/types.js'
import { decodeState, encodeState } from '../../crdts/codec.js'
import { hlcTick, readTimestamp, writeTimestamp, ZERO } from '../../crdts/hlc.js'
import type { SimEndpoint, SimNodeFactory, SimPeer, SimStorage } from './types.js'

export const MSG_DELTA = 0
export const MSG_STATES = 1

export interface CrdtReplicaOptions {
  /** Forward the entries that changed this replica to the other connected peers. */
  relay?: boolean
  /** Write every changed key (and the clock) to storage, so a crash loses nothing. */
  persist?: boolean
  /** Sees every delta this replica originates, encoded: the log a rebuild check replays. */
  onDelta?: (replica: string, key: string, delta: Uint8Array) => void
}

export interface ReplicaStats {
  deltasSent: number
  statesSent: number
  received: number
  relayed: number
}

const STATE_PREFIX = 's/'
const CLOCK_KEY = 'clock'

export class CrdtReplica<S, O, V> implements SimPeer {
  readonly id: string
  readonly states = new Map<string, S>()
  readonly stats: ReplicaStats = { deltasSent: 0, statesSent: 0, received: 0, relayed: 0 }
  /** Peers with a live connection, in the order they connected. */
  private readonly peers = new Set<string>()
  private clock: Timestamp = ZERO

  constructor(
    readonly type: CrdtType<S, O, V>,
    private readonly endpoint: SimEndpoint,
    private readonly storage: SimStorage,
    private readonly options: CrdtReplicaOptions = {},
  ) {
    this.id = endpoint.id
    if (options.persist === true) this.reload()
  }

  /** A factory for SimNetwork.addNode (also used to rebuild the node after a crash). */
  static factory<S, O, V>(type: CrdtType<S, O, V>, options: CrdtReplicaOptions = {}): SimNodeFactory<CrdtReplica<S, O, V>> {
    return (endpoint, storage) => new CrdtReplica(type, endpoint, storage, options)
  }

  /**
   * Validates and applies an op (untrusted JSON) to `key`, broadcasts the delta, returns it.
   * Throws CrdtOpError, having changed nothing, if the type refuses the op.
   */
  apply(key: string, rawOp: unknown): S {
    const op = this.type.validate(rawOp)
    const state = this.states.get(key) ?? this.type.empty()
    const time = hlcTick(this.clock, Math.max(0, Math.floor(this.endpoint.now())))
    const delta = this.type.apply(state, op, { replica: this.id, time })
    this.clock = time
    this.states.set(key, state)
    this.save(key)
    const bytes = encodeState(this.type, delta)
    this.options.onDelta?.(this.id, key, bytes)
    const msg = encodeMessage(MSG_DELTA, [[key, bytes]])
    for (const peer of this.peers) {
      this.endpoint.send(peer, msg)
      this.stats.deltasSent++
    }
    return delta
  }

  value(key: string): V {
    return this.type.value(this.states.get(key) ?? this.type.empty())
  }

  /** Keys in ascending order (UTF-16 code units). */
  keys(): string[] {
    return [...this.states.keys()].sort(compare)
  }

  encodeKey(key: string): Uint8Array {
    return encodeState(this.type, this.states.get(key) ?? this.type.empty())
  }

  connectedPeers(): string[] {
    return [...this.peers]
  }

  onConnect(peer: string): void {
    this.peers.add(peer)
    const keys = this.keys()
    if (keys.length === 0) return
    this.endpoint.send(peer, encodeMessage(MSG_STATES, keys.map((k) => [k, this.encodeKey(k)])))
    this.stats.statesSent++
  }

  onDisconnect(peer: string): void {
    this.peers.delete(peer)
  }

  onMessage(from: string, bytes: Uint8Array): void {
    this.stats.received++
    const { entries } = decodeMessage(bytes)
    const changed: Array<[string, Uint8Array]> = []
    for (const [key, stateBytes] of entries) {
      const incoming = decodeState(this.type, stateBytes)
      let state = this.states.get(key)
      if (state === undefined) {
        state = this.type.empty()
        this.states.set(key, state)
      }
      if (this.type.join(state, incoming)) {
        this.save(key)
        changed.push([key, stateBytes])
      }
    }
    if (this.options.relay !== true || changed.length === 0) return
    const msg = encodeMessage(MSG_DELTA, changed)
    for (const peer of this.peers) {
      if (peer === from) continue
      this.endpoint.send(peer, msg)
      this.stats.relayed++
    }
  }

  private save(key: string): void {
    if (this.options.persist !== true) return
    this.storage.set(STATE_PREFIX + key, this.encodeKey(key))
    const enc = encoding.createEncoder()
    writeTimestamp(enc, this.clock)
    this.storage.set(CLOCK_KEY, encoding.toUint8Array(enc))
  }

  private reload(): void {
    for (const k of this.storage.keys()) {
      if (!k.startsWith(STATE_PREFIX)) continue
      this.states.set(k.slice(STATE_PREFIX.length), decodeState(this.type, this.storage.get(k) as Uint8Array))
    }
    const clock = this.storage.get(CLOCK_KEY)
    // The clock must not step back across a restart, or a replica could stamp two writes alike.
    if (clock !== undefined) this.clock = readTimestamp(decoding.createDecoder(clock), this.type.name)
  }
}

export function encodeMessage(kind: number, entries: ReadonlyArray<readonly [string, Uint8Array]>): Uint8Array {
  const enc = encoding.createEncoder()
  encoding.writeUint8(enc, kind)
  encoding.writeVarUint(enc, entries.length)
  for (const [key, bytes] of entries) {
    encoding.writeVarString(enc, key)
    encoding.writeVarUint8Array(enc, bytes)
  }
  return encoding.toUint8Array(enc)
}

/** Strict: an unknown kind, a short read or trailing bytes is a protocol bug worth failing on. */
export function decodeMessage(bytes: Uint8Array): { kind: number; entries: Array<[string, Uint8Array]> } {
  const dec = decoding.createDecoder(bytes)
  const kind = decoding.readUint8(dec)
  if (kind !== MSG_DELTA && kind !== MSG_STATES) throw new Error(`unknown message kind ${kind}`)
  const n = decoding.readVarUint(dec)
  if (n > bytes.length) throw new Error(`entry count ${n} exceeds the message size`)
  const entries: Array<[string, Uint8Array]> = []
  for (let i = 0; i < n; i++) {
    const key = decoding.readVarString(dec)
    const state = decoding.readVarUint8Array(dec)
    if (dec.pos > bytes.length) throw new Error('truncated message')
    entries.push([key, state])
  }
  if (dec.pos !== bytes.length) throw new Error(`${bytes.length - dec.pos} trailing bytes in a message`)
  return { kind, entries }
}

function compare(a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0
}
