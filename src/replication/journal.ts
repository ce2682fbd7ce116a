/**
 * Which keys hold deltas that some known peer may still lack: what lets a catch-up ship changed
 * states by key where the log no longer holds the deltas (dropped past the retention bound, or
 * received folded into states), instead of comparing digests of the whole store.
 *
 * Keys are tracked in epochs. The open epoch takes the key of every durable delta (and of every
 * state received with a `covers` claim); closing it stamps it with `bound`, the node's version
 * vector at that moment, which holds every delta whose key went in. An epoch goes once every
 * known peer has acknowledged its bound: they all hold those deltas. For a peer with version
 * vector `has`, the keys it may need are those of the epochs whose bound `has` does not cover.
 *
 * Most epochs never matter: while the log still holds an epoch's deltas, the log serves them
 * (as joined deltas, smaller than states). `low` (per origin, the lowest sequence among the
 * epoch's deltas) says whether it does; an epoch of folded states never does. Only such
 * "spilled" epochs are shipped as states.
 *
 * Epochs are persisted (replicator.ts decides when: before the deltas they name leave the log)
 * in a fixed set of meta slots, an epoch a slot; an empty slot is free.
 */
import * as encoding from 'lib0/encoding'
import * as decoding from 'lib0/decoding'
import { readByte, readCount, readString, readUint } from '../../crdts/codec.js'
import { VersionVector } from '../storage/versionVector.js'

/** view number -> keys */
export type KeySet = Map<number, Set<string>>

export interface Epoch {
  keys: KeySet
  /** Keys counted once per epoch. */
  size: number
  /** Per origin, the lowest sequence among the deltas whose keys are here. */
  low: Map<string, number>
  /** Holds keys of states received folded: the log never held their deltas. */
  folded: boolean
  /** Every delta whose key is here is in this vector; null while open. */
  bound: VersionVector | null
  /** The meta slot that holds it on disk, or null. */
  slot: number | null
}

/** Closed epochs kept apart in memory; past it the open epoch stays open (and grows). */
const MAX_CLOSED = 32
/** Meta slots for persisted epochs; past it the two oldest merge. */
export const SLOTS = 64

const newEpoch = (): Epoch => ({ keys: new Map(), size: 0, low: new Map(), folded: false, bound: null, slot: null })

function addKey(e: Epoch, viewNo: number, key: string): void {
  let set = e.keys.get(viewNo)
  if (!set) e.keys.set(viewNo, (set = new Set()))
  const before = set.size
  set.add(key)
  e.size += set.size - before
}

/** Joins `b` into `a` (a is older): the union of keys, the later bound. */
function absorb(a: Epoch, b: Epoch): void {
  for (const [no, keys] of b.keys) for (const k of keys) addKey(a, no, k)
  for (const [o, s] of b.low) if (s < (a.low.get(o) ?? Infinity)) a.low.set(o, s)
  a.folded ||= b.folded
  a.bound = b.bound
}

export class Journal {
  private open = newEpoch()
  /** Oldest first; bounds ascending. Persisted epochs come before unpersisted ones. */
  private closed: Epoch[] = []
  private total = 0

  constructor(private readonly maxKeys: number) {}

  /** Keys tracked, counted once per epoch. */
  size(): number {
    return this.total + this.open.size
  }

  epochs(): number {
    return this.closed.length + (this.open.size > 0 ? 1 : 0)
  }

  /** The key of a durable delta. False once the journal is over its bound (the caller drops it). */
  track(viewNo: number, key: string, origin: string, seq: number): boolean {
    addKey(this.open, viewNo, key)
    const low = this.open.low.get(origin)
    if (low === undefined || seq < low) this.open.low.set(origin, seq)
    return this.size() <= this.maxKeys
  }

  /** Closes the open epoch (if it holds anything) at `logged`, unless too many are closed already. */
  rotate(logged: VersionVector): void {
    if (this.open.size === 0 || this.closed.length >= MAX_CLOSED) return
    this.close(logged)
  }

  private close(logged: VersionVector): void {
    this.open.bound = logged.clone()
    this.total += this.open.size
    this.closed.push(this.open)
    this.open = newEpoch()
  }

  /**
   * Keys of states received folded, whose deltas are in `logged` now: a closed epoch of their
   * own. Returns it, to be persisted (always: nothing else names these deltas).
   */
  fold(keys: KeySet, logged: VersionVector): Epoch {
    // The open epoch's keys hold deltas below `logged` too: close it first, so bounds stay ascending.
    if (this.open.size > 0) this.close(logged)
    const e = newEpoch()
    for (const [no, ks] of keys) for (const k of ks) addKey(e, no, k)
    e.folded = true
    e.bound = logged.clone()
    this.total += e.size
    this.closed.push(e)
    return e
  }

  /** Drops the oldest epochs whose bound `ackedByAll` accepts; returns the slots they held. */
  prune(ackedByAll: (bound: VersionVector) => boolean): number[] {
    const freed: number[] = []
    let n = 0
    while (n < this.closed.length && ackedByAll((this.closed[n] as Epoch).bound as VersionVector)) {
      const e = this.closed[n] as Epoch
      this.total -= e.size
      if (e.slot !== null) freed.push(e.slot)
      n++
    }
    if (n > 0) this.closed = this.closed.slice(n)
    return freed
  }

  /** Everything, for when tracking is given up. Returns the slots the epochs held. */
  clear(): number[] {
    const freed = this.closed.flatMap((e) => (e.slot === null ? [] : [e.slot]))
    this.closed = []
    this.open = newEpoch()
    this.total = 0
    return freed
  }

  /**
   * Readies what is not on disk yet for writing: the open epoch closes at `logged`, and each
   * unpersisted epoch gets a free slot (kept apart: merged, an epoch a peer has would ship
   * along with one it lacks). When the slots run out, the two oldest persisted epochs merge.
   * Returns the epochs to write to their slots.
   */
  persist(logged: VersionVector): Epoch[] {
    if (this.open.size > 0) this.close(logged)
    const used = new Set(this.persistedSlots())
    const writes = new Set<Epoch>()
    for (const e of this.closed.filter((x) => x.slot === null)) {
      let slot: number | null = null
      for (let i = 0; i < SLOTS && slot === null; i++) if (!used.has(i)) slot = i
      if (slot === null) {
        // Every slot holds a persisted epoch, so the two oldest are persisted ones.
        const [a, b] = this.closed as [Epoch, Epoch]
        this.total -= a.size + b.size
        absorb(a, b)
        this.total += a.size
        slot = b.slot as number
        this.closed.splice(1, 1)
        writes.add(a)
      }
      used.add(slot)
      e.slot = slot
      writes.add(e)
    }
    return [...writes]
  }

  /**
   * The keys a peer holding `has` may lack and the log cannot serve: those of spilled epochs
   * (folded, or holding a delta below what the log still serves) whose bound `has` lacks, added
   * to `into`. True if any epoch matched, even one without keys (deltas that left no state,
   * such as a no-op on a new key): the peer still needs the claim that it holds them.
   */
  spilledKeys(has: VersionVector, lowWater: (origin: string) => number, into: KeySet): boolean {
    const spilled = (e: Epoch): boolean => {
      if (e.folded) return true
      for (const [o, s] of e.low) if (s < lowWater(o)) return true
      return false
    }
    let any = false
    for (const e of [...this.closed, this.open]) {
      if ((e.bound !== null && e.bound.isCoveredBy(has)) || !spilled(e)) continue
      any = true
      for (const [no, keys] of e.keys) {
        let set = into.get(no)
        if (!set) into.set(no, (set = new Set()))
        for (const k of keys) set.add(k)
      }
    }
    return any
  }

  /** Restores a persisted epoch (at load, oldest first by bound order of the caller). */
  restore(e: Epoch): void {
    this.total += e.size
    this.closed.push(e)
  }

  /** Sorts restored epochs by bound (slots are reused, so slot order says nothing). */
  sortRestored(): void {
    this.closed.sort((a, b) => (a.bound as VersionVector).total() - (b.bound as VersionVector).total())
  }

  persistedSlots(): number[] {
    return this.closed.flatMap((e) => (e.slot === null ? [] : [e.slot]))
  }
}

const EPOCH_FORMAT = 1

export function encodeEpoch(e: Epoch): Uint8Array {
  const enc = encoding.createEncoder()
  encoding.writeUint8(enc, EPOCH_FORMAT)
  encoding.writeUint8(enc, e.folded ? 1 : 0)
  ;(e.bound as VersionVector).encode(enc)
  encoding.writeVarUint(enc, e.low.size)
  for (const [o, s] of e.low) {
    encoding.writeVarString(enc, o)
    encoding.writeVarUint(enc, s)
  }
  encoding.writeVarUint(enc, e.keys.size)
  for (const [no, keys] of e.keys) {
    encoding.writeVarUint(enc, no)
    encoding.writeVarUint(enc, keys.size)
    for (const k of keys) encoding.writeVarString(enc, k)
  }
  return encoding.toUint8Array(enc)
}

export function decodeEpoch(bytes: Uint8Array, slot: number): Epoch {
  const what = 'journal epoch'
  const dec = decoding.createDecoder(bytes)
  if (readByte(dec, what) !== EPOCH_FORMAT) throw new Error(`${what}: unknown format`)
  const e = newEpoch()
  e.slot = slot
  e.folded = readByte(dec, what) === 1
  e.bound = VersionVector.decode(dec, what)
  const nl = readCount(dec, what, 2)
  for (let i = 0; i < nl; i++) e.low.set(readString(dec, what), readUint(dec, what))
  const nv = readCount(dec, what, 2)
  for (let i = 0; i < nv; i++) {
    const no = readUint(dec, what)
    const nk = readCount(dec, what, 1)
    for (let j = 0; j < nk; j++) addKey(e, no, readString(dec, what))
  }
  return e
}
