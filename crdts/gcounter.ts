/**
 * G-counter: one slot per replica, each only ever grows; the value is the sum of the slots.
 *
 * The state is two parallel arrays sorted by replica id rather than a Map: a realtime view holds
 * millions of counters touched by a handful of replicas, and two small arrays cost a fraction of
 * a Map's memory per key while staying in canonical (sorted) order for the encoder.
 *
 * Format v1: version, n, then n × (replica: varString, count: varUint), replicas ascending.
 */
import * as encoding from 'lib0/encoding'
import type * as decoding from 'lib0/decoding'
import { CrdtDecodeError, CrdtOpError, type CrdtType, type OpContext } from './types.js'
import { guarded, readCount, readString, readUint, readVersion, writeVersion } from './codec.js'
import { opVerb, safeUint } from './validate.js'

export interface GCounterState {
  /** Never written in place: a change makes a new array, so arrays may be shared (see soloIds). */
  ids: string[]
  counts: number[]
}

export interface GCounterOp {
  inc: number
}

const NAME = 'gcounter'

/** Index of `id` in the sorted ids, or -(insertion point) - 1. Replicas are few: scan linearly. */
function slotOf(ids: string[], id: string): number {
  for (let i = 0; i < ids.length; i++) {
    const x = ids[i] as string
    if (x === id) return i
    if (x > id) return -i - 1
  }
  return -ids.length - 1
}

/** Raises `id`'s slot to at least `count`; true if it grew. */
export function raiseSlot(state: GCounterState, id: string, count: number): boolean {
  const i = slotOf(state.ids, id)
  if (i >= 0) {
    if ((state.counts[i] as number) >= count) return false
    state.counts[i] = count
    return true
  }
  if (count === 0) return false
  insertSlot(state, -i - 1, id, count)
  return true
}

/**
 * Inserts a slot by copying into arrays of exactly the new length. `splice` or `push` would grow
 * the backing stores by half plus 16 spare slots, and since almost every counter has one to
 * three replicas that slack more than doubled the heap per key (~445 to ~190 bytes, one
 * replica, Map entry included). Inserting happens once per replica per key: off the hot path.
 */
function insertSlot(state: GCounterState, at: number, id: string, count: number): void {
  state.ids = state.ids.length === 0 ? soloIds(id) : state.ids.toSpliced(at, 0, id)
  state.counts = state.counts.toSpliced(at, 0, count)
}

/**
 * Shared one-replica `ids` arrays. Most counters are only ever written by one replica; an array
 * of their own for the same single id cost ~56 bytes a key (190 to 133 with sharing) and one
 * more allocation per increment, in the delta. Sharing is safe because `ids` arrays are never
 * written in place (insertSlot makes new ones). The table is bounded so that replica ids from
 * untrusted peers cannot grow it without end: past the bound arrays are simply not shared.
 */
const SOLO_MAX = 1024
const solo = new Map<string, string[]>()

function soloIds(id: string): string[] {
  let ids = solo.get(id)
  if (ids === undefined) {
    ids = [id]
    if (solo.size < SOLO_MAX) solo.set(id, ids)
  }
  return ids
}

/** Adds `n` to `replica`'s slot in place and returns the delta (just that slot). */
export function increment(type: string, state: GCounterState, replica: string, n: number): GCounterState {
  const i = slotOf(state.ids, replica)
  const before = i >= 0 ? (state.counts[i] as number) : 0
  const after = before + n
  if (!Number.isSafeInteger(after)) throw new CrdtOpError(type, `the count would leave the safe integer range`)
  if (i >= 0) state.counts[i] = after
  else if (n > 0) insertSlot(state, -i - 1, replica, after)
  return n > 0 ? { ids: soloIds(replica), counts: [after] } : { ids: [], counts: [] }
}

export function sum(state: GCounterState): number {
  let total = 0
  for (const c of state.counts) total += c
  return total
}

export function joinSlots(into: GCounterState, other: GCounterState): boolean {
  let changed = false
  for (let i = 0; i < other.ids.length; i++) {
    if (raiseSlot(into, other.ids[i] as string, other.counts[i] as number)) changed = true
  }
  return changed
}

export function encodeSlots(enc: encoding.Encoder, state: GCounterState): void {
  encoding.writeVarUint(enc, state.ids.length)
  for (let i = 0; i < state.ids.length; i++) {
    encoding.writeVarString(enc, state.ids[i] as string)
    encoding.writeVarUint(enc, state.counts[i] as number)
  }
}

/** Reads slots in canonical form: ascending distinct replicas, no zero slots. */
export function decodeSlots(dec: decoding.Decoder, type: string): GCounterState {
  const n = readCount(dec, type, 2)
  // Sized up front (readCount has bounded n): pushing would leave the slack insertSlot avoids.
  const ids = new Array<string>(n)
  const counts = new Array<number>(n)
  for (let i = 0; i < n; i++) {
    const at = dec.pos
    const id = readString(dec, type)
    const count = readUint(dec, type)
    const prev = ids[i - 1]
    if (prev !== undefined && !(prev < id)) throw new CrdtDecodeError(type, at, 'replicas not in ascending order')
    if (count === 0) throw new CrdtDecodeError(type, at, 'a zero slot is not canonical')
    ids[i] = id
    counts[i] = count
  }
  // States loaded at recovery are most of the heap: share their one-replica ids too.
  return { ids: n === 1 ? soloIds(ids[0] as string) : ids, counts }
}

export const gcounter: CrdtType<GCounterState, GCounterOp, number> = {
  name: NAME,
  empty: () => ({ ids: [], counts: [] }),
  apply(state: GCounterState, op: GCounterOp, ctx: OpContext): GCounterState {
    return increment(NAME, state, ctx.replica, op.inc)
  },
  join: joinSlots,
  value: sum,
  clone: (s) => ({ ids: s.ids.slice(), counts: s.counts.slice() }),
  encode(enc, state) {
    writeVersion(enc)
    encodeSlots(enc, state)
  },
  decode(dec) {
    return guarded(NAME, dec, () => {
      readVersion(dec, NAME)
      return decodeSlots(dec, NAME)
    })
  },
  validate(op: unknown): GCounterOp {
    const verb = opVerb(NAME, op, ['inc'], [], 'inc')
    const raw = (op as Record<string, unknown>)[verb]
    return { inc: raw === undefined ? 1 : safeUint(NAME, 'inc', raw) }
  },
}
