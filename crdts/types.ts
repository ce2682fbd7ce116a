import type { Encoder } from 'lib0/encoding'
import type { Decoder } from 'lib0/decoding'

/**
 * A reading of the acting replica's hybrid logical clock: wall-clock milliseconds and a
 * logical counter that orders events within one millisecond. The caller reads its clock;
 * crdts/ never does (see crdts/hlc.ts).
 */
export interface Timestamp {
  readonly ts: number
  readonly c: number
}

/** What a mutator needs to know about who acts and when: passed in, never read from the world. */
export interface OpContext {
  /** The acting replica's id (1 to 255 UTF-8 bytes). */
  readonly replica: string
  /** The acting replica's HLC reading for this op; only lwwmap uses it. */
  readonly time: Timestamp
}

/**
 * One interface that every replicated type implements (as Akka's ReplicatedData and riak_dt do).
 * States are plain mutable data: `apply` and `join` change them in place because allocating a new
 * state per increment would cost the hot path; everything else is pure.
 *
 * Every type is a delta-state CRDT: `apply` returns a delta that is itself a state, and joining
 * that delta into any replica has the same effect as joining the full state it came from.
 */
export interface CrdtType<State, Op, Value> {
  readonly name: TypeName
  /** The bottom of the lattice. */
  empty(): State
  /** Applies a validated op in place and returns the delta (a small state). Throws CrdtOpError
   * before changing anything when the op cannot apply (e.g. a counter would leave the safe range). */
  apply(state: State, op: Op, ctx: OpContext): State
  /** Lattice join of `other` into `into`, in place; `other` is left untouched and shares nothing
   * with `into` afterwards. Returns true if `into` changed. */
  join(into: State, other: State): boolean
  /** The value users read back (JSON-serialisable). */
  value(state: State): Value
  /** A deep copy that shares nothing with `state`. */
  clone(state: State): State
  /** Deterministic: equal states produce equal bytes. Starts with the format version. */
  encode(enc: Encoder, state: State): void
  /** Throws CrdtDecodeError on malformed input, allocating no more than the input justifies. */
  decode(dec: Decoder): State
  /** Checks an op given as untrusted JSON and returns its normalised form; throws CrdtOpError. */
  validate(op: unknown): Op
}

export type TypeName = 'gcounter' | 'pncounter' | 'orset' | 'lwwmap' | 'hll'

// eslint-disable-next-line @typescript-eslint/no-explicit-any
export type AnyCrdtType = CrdtType<any, any, unknown>

/** Raised when bytes do not decode to a valid state: peer and disk input are untrusted. */
export class CrdtDecodeError extends Error {
  override readonly name = 'CrdtDecodeError'
  readonly code = 'decode'
  constructor(
    readonly type: string,
    readonly offset: number,
    reason: string,
  ) {
    super(`cannot decode ${type} at byte ${offset}: ${reason}`)
  }
}

/** Raised when an op is malformed or cannot apply; nothing has changed when it is thrown. */
export class CrdtOpError extends Error {
  override readonly name = 'CrdtOpError'
  readonly code = 'bad_op'
  constructor(
    readonly type: string,
    reason: string,
  ) {
    super(`${type}: ${reason}`)
  }
}
