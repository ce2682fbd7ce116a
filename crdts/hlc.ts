/**
 * Hybrid logical clock (Kulkarni, Demirbas, Madappa, Avva, Leone 2014, "Logical Physical Clocks
 * and Consistent Snapshots in Globally Distributed Databases"), as pure functions over plain
 * `Timestamp {ts, c}` values.
 *
 * The node owns the clock: it keeps the last reading, calls `hlcTick` with a fresh wall-clock
 * reading for every local write (and passes the result as `ctx.time`), and `hlcReceive` for every
 * stamp that arrives from a peer. crdts/ never reads the time itself.
 *
 * Why a hybrid clock rather than the wall clock: stamps stay close to real time (so "last writer
 * wins" means roughly what a user expects) and yet respect causality, so a write that a replica
 * makes after seeing another one always carries a greater stamp, even when its wall clock is
 * behind (NTP step back, skewed peers).
 *
 * The bound: `ts` never runs further ahead of the local wall clock than the largest remote `ts`
 * ever accepted. The paper's guarantee (|ts - wall| <= epsilon) therefore holds only if callers
 * refuse remote stamps (and event times) more than `--max-drift` ahead of their own wall time
 * before calling `hlcReceive`; that check is the node's, not this module's. Without it one peer
 * with a clock set to the year 3000 would drag every clock there, and every later write in the
 * system would be stamped in the year 3000 too. `c` is bounded the same way: it only grows while
 * `ts` stays ahead of the wall clock, i.e. for at most max-drift worth of events.
 */
import * as encoding from 'lib0/encoding'
import type * as decoding from 'lib0/decoding'
import type { Timestamp } from './types.js'
import { compareStrings, readUint } from './codec.js'

/** A timestamp attributed to a replica: the total order that last-writer-wins uses. */
export interface Stamp extends Timestamp {
  readonly r: string
}

export const ZERO: Timestamp = Object.freeze({ ts: 0, c: 0 })

function checkWall(wallMs: number): void {
  if (!Number.isSafeInteger(wallMs) || wallMs < 0) throw new RangeError(`wall time must be a safe integer >= 0, got ${wallMs}`)
}

function counter(c: number): number {
  // Only reachable with a hostile remote counter: refuse rather than lose the total order.
  if (!Number.isSafeInteger(c)) throw new RangeError('HLC counter overflow')
  return c
}

/** A local or send event: the reading to stamp it with, strictly greater than `prev`. */
export function hlcTick(prev: Timestamp, wallMs: number): Timestamp {
  checkWall(wallMs)
  if (wallMs > prev.ts) return { ts: wallMs, c: 0 }
  return { ts: prev.ts, c: counter(prev.c + 1) }
}

/**
 * A receive event: the new reading, strictly greater than both `prev` and `remote`. The caller
 * must already have refused a `remote` whose `ts` is too far ahead of `wallMs` (see above).
 */
export function hlcReceive(prev: Timestamp, remote: Timestamp, wallMs: number): Timestamp {
  checkWall(wallMs)
  const ts = Math.max(prev.ts, remote.ts, wallMs)
  if (ts === prev.ts && ts === remote.ts) return { ts, c: counter(Math.max(prev.c, remote.c) + 1) }
  if (ts === prev.ts) return { ts, c: counter(prev.c + 1) }
  if (ts === remote.ts) return { ts, c: counter(remote.c + 1) }
  return { ts, c: 0 }
}

/** Orders readings by (ts, c). */
export function compareTimestamps(a: Timestamp, b: Timestamp): number {
  return a.ts !== b.ts ? (a.ts < b.ts ? -1 : 1) : a.c !== b.c ? (a.c < b.c ? -1 : 1) : 0
}

/** Orders stamps by (ts, c), then by replica id (UTF-16 code units): a total order. */
export function compareStamps(a: Stamp, b: Stamp): number {
  return compareTimestamps(a, b) || compareStrings(a.r, b.r)
}

/** lib0 form (varUint ts, varUint c), e.g. for persisting the clock or putting it on the wire. */
export function writeTimestamp(enc: encoding.Encoder, t: Timestamp): void {
  encoding.writeVarUint(enc, t.ts)
  encoding.writeVarUint(enc, t.c)
}

/** Reads what `writeTimestamp` wrote; throws CrdtDecodeError (naming `type`) on bad input. */
export function readTimestamp(dec: decoding.Decoder, type: string): Timestamp {
  const ts = readUint(dec, type)
  const c = readUint(dec, type)
  return { ts, c }
}
