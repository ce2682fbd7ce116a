/**
 * G-counter: one slot per replica, each only ever grows; the value is the sum of the slots.
 *
 * Layout, chosen for the increment hot path and for memory (a realtime view holds millions of
 * counters, almost all written by one replica, a few by two or three):
 * - the first slot lives inline in the state object (`id`, `n`), so an increment of a
 *   one-replica counter reads the map entry, then the state, and nothing else; the previous
 *   layout (parallel `ids` / `counts` arrays) went through two more objects and was 0.18x a raw
 *   Map increment against 0.3x wanted;
 * - any further slots are one flat array `[id, count, id, count...]` sorted by id and allocated
 *   at its exact length: a new replica replaces the array (arrays grown in place keep V8's
 *   slack of half again plus 16 slots, which would double a two-replica key), counts are then
 *   written in place. The state object itself never changes shape, so callers keep holding it
 *   and `apply`/`join` stay in-place mutators.
 * One cost of an inline count: V8 keeps a field's representation per hidden class, so once any
 * counter passes 2^31 (past a small integer) every counter's `n` becomes a boxed double, 16 more
 * bytes each; still under the 56 bytes of the counts array that the old layout spent on every key.
 * (Making the field generic up front is worse: optimised code then boxes every sum it stores.)
 * The inline slot is whichever replica came first, not the smallest id: the encoder merges it
 * into order (a handful of slots), the decoder puts the smallest inline.
 *
 * Format v1: version, n, then n × (replica: varString, count: varUint), replicas ascending.
 */
import * as encoding from 'lib0/encoding'
import type * as decoding from 'lib0/decoding'
import { CrdtDecodeError, CrdtOpError, type CrdtType, type OpContext } from './types.js'
import { guarded, readCount, readString, readUint, readVersion, writeVersion } from './codec.js'
import { opVerb, safeUint } from './validate.js'

export interface GCounterState {
  /** The inline slot's replica; meaningless while `n` is 0. */
  id: string
  /** The inline slot's count; 0 only in the empty state (the encoder writes no zero slots). */
  n: number
  /** The other slots, flat (id, count) pairs ascending by id, none of them `id`; empty unless
   * `n` > 0. Replaced, never grown, so its length is exact; NO_SLOTS is shared and frozen. */
  rest: Array<string | number>
}

export interface GCounterOp {
  inc: number
}

const NAME = 'gcounter'

const NO_SLOTS: Array<string | number> = Object.freeze([]) as unknown as Array<string | number>

/** The only way states are made, so that every one of them has the same hidden class. */
function make(id: string, n: number, rest: Array<string | number>): GCounterState {
  return { id, n, rest }
}

function empty(): GCounterState {
  return make('', 0, NO_SLOTS)
}

/** The state of one slot (a replica's delta, as an increment returns it), for code that builds
 * states without going through ops: tests and benchmarks, which must not depend on the layout. */
export function slotState(replica: string, count: number): GCounterState {
  if (!Number.isSafeInteger(count) || count < 0) throw new RangeError(`a slot count must be a safe integer >= 0, got ${count}`)
  return count === 0 ? empty() : make(replica, count, NO_SLOTS)
}

/** Index of `id`'s count in `rest`, or -(insertion point) - 1. Slots are few: a linear scan. */
function restSlot(rest: ReadonlyArray<string | number>, id: string): number {
  for (let i = 0; i < rest.length; i += 2) {
    const x = rest[i] as string
    if (x === id) return i + 1
    if (x > id) return -i - 1
  }
  return -rest.length - 1
}

/** Raises `id`'s slot to at least `count`; true if it grew. */
export function raiseSlot(state: GCounterState, id: string, count: number): boolean {
  if (count === 0) return false
  if (state.n === 0) {
    state.id = id
    state.n = count
    return true
  }
  if (state.id === id) {
    if (state.n >= count) return false
    state.n = count
    return true
  }
  const i = restSlot(state.rest, id)
  if (i >= 0) {
    if ((state.rest[i] as number) >= count) return false
    state.rest[i] = count
    return true
  }
  // toSpliced allocates the exact length (see the header on slack).
  state.rest = state.rest.toSpliced(-i - 1, 0, id, count)
  return true
}

/** Adds `n` to `replica`'s slot in place and returns the delta (just that slot). */
export function increment(type: string, state: GCounterState, replica: string, n: number): GCounterState {
  if (state.id === replica && state.n > 0) {
    // the hot path: a counter this replica writes, inline
    const after = state.n + n
    if (!Number.isSafeInteger(after)) throw new CrdtOpError(type, `the count would leave the safe integer range`)
    state.n = after
    return n > 0 ? make(replica, after, NO_SLOTS) : empty()
  }
  const i = state.n === 0 ? -1 : restSlot(state.rest, replica)
  const after = (i >= 0 ? (state.rest[i] as number) : 0) + n
  if (!Number.isSafeInteger(after)) throw new CrdtOpError(type, `the count would leave the safe integer range`)
  if (n === 0) return empty()
  raiseSlot(state, replica, after)
  return make(replica, after, NO_SLOTS)
}

export function sum(state: GCounterState): number {
  let total = state.n
  const rest = state.rest
  for (let i = 1; i < rest.length; i += 2) total += rest[i] as number
  return total
}

export function joinSlots(into: GCounterState, other: GCounterState): boolean {
  if (other.n === 0) return false
  let changed = raiseSlot(into, other.id, other.n)
  const rest = other.rest
  for (let i = 0; i < rest.length; i += 2) {
    if (raiseSlot(into, rest[i] as string, rest[i + 1] as number)) changed = true
  }
  return changed
}

export function cloneSlots(s: GCounterState): GCounterState {
  return make(s.id, s.n, s.rest.length === 0 ? NO_SLOTS : s.rest.slice())
}

export function encodeSlots(enc: encoding.Encoder, state: GCounterState): void {
  if (state.n === 0) {
    encoding.writeVarUint(enc, 0)
    return
  }
  const rest = state.rest
  encoding.writeVarUint(enc, 1 + rest.length / 2)
  // the inline slot goes where its id sorts among the others
  let inline = false
  for (let i = 0; i < rest.length; i += 2) {
    const id = rest[i] as string
    if (!inline && state.id < id) {
      encoding.writeVarString(enc, state.id)
      encoding.writeVarUint(enc, state.n)
      inline = true
    }
    encoding.writeVarString(enc, id)
    encoding.writeVarUint(enc, rest[i + 1] as number)
  }
  if (!inline) {
    encoding.writeVarString(enc, state.id)
    encoding.writeVarUint(enc, state.n)
  }
}

const IDS_MAX = 1024
const ids = new Map<string, string>()

/**
 * One string per replica id across decoded states: the decoder makes a fresh string per slot,
 * and millions of states loaded at recovery would each hold their own copy of the same few ids
 * (and compare them by content on every increment instead of by identity). Bounded so that ids
 * from untrusted peers cannot grow the table without end: past the bound ids are kept as read.
 */
function internId(id: string): string {
  const hit = ids.get(id)
  if (hit !== undefined) return hit
  if (ids.size < IDS_MAX) ids.set(id, id)
  return id
}

/** Reads slots in canonical form: ascending distinct replicas, no zero slots. */
export function decodeSlots(dec: decoding.Decoder, type: string): GCounterState {
  const k = readCount(dec, type, 2)
  if (k === 0) return empty()
  const first = readSlot(dec, type, undefined)
  // Sized up front (readCount has bounded k): pushing would leave slack.
  const rest = k === 1 ? NO_SLOTS : new Array<string | number>(2 * (k - 1))
  let prev = first.id
  for (let i = 0; i < k - 1; i++) {
    const s = readSlot(dec, type, prev)
    rest[2 * i] = s.id
    rest[2 * i + 1] = s.n
    prev = s.id
  }
  return make(first.id, first.n, rest)
}

function readSlot(dec: decoding.Decoder, type: string, prev: string | undefined): { id: string; n: number } {
  const at = dec.pos
  const id = readString(dec, type)
  const n = readUint(dec, type)
  if (prev !== undefined && !(prev < id)) throw new CrdtDecodeError(type, at, 'replicas not in ascending order')
  if (n === 0) throw new CrdtDecodeError(type, at, 'a zero slot is not canonical')
  return { id: internId(id), n }
}

export const gcounter: CrdtType<GCounterState, GCounterOp, number> = {
  name: NAME,
  empty,
  apply(state: GCounterState, op: GCounterOp, ctx: OpContext): GCounterState {
    return increment(NAME, state, ctx.replica, op.inc)
  },
  join: joinSlots,
  value: sum,
  clone: cloneSlots,
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
