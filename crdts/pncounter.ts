/**
 * PN-counter: two G-counters, one for increments and one for decrements.
 *
 * Format v1: version, then the increment slots and the decrement slots as in gcounter v1.
 */
import { CrdtOpError, type CrdtType, type OpContext } from './types.js'
import { decodeSlots, encodeSlots, gcounter, increment, joinSlots, sum, type GCounterState } from './gcounter.js'
import { guarded, readVersion, writeVersion } from './codec.js'
import { opVerb, safeInt, safeUint } from './validate.js'

export interface PNCounterState {
  p: GCounterState
  n: GCounterState
}

/** Normalised op: a signed amount (`{"dec": n}` becomes `{inc: -n}`). */
export interface PNCounterOp {
  inc: number
}

const NAME = 'pncounter'

export const pncounter: CrdtType<PNCounterState, PNCounterOp, number> = {
  name: NAME,
  empty: () => ({ p: gcounter.empty(), n: gcounter.empty() }),
  apply(state: PNCounterState, op: PNCounterOp, ctx: OpContext): PNCounterState {
    const value = sum(state.p) - sum(state.n)
    if (!Number.isSafeInteger(value + op.inc)) throw new CrdtOpError(NAME, 'the value would leave the safe integer range')
    if (op.inc >= 0) return { p: increment(NAME, state.p, ctx.replica, op.inc), n: gcounter.empty() }
    return { p: gcounter.empty(), n: increment(NAME, state.n, ctx.replica, -op.inc) }
  },
  join(into, other) {
    const a = joinSlots(into.p, other.p)
    const b = joinSlots(into.n, other.n)
    return a || b
  },
  value: (s) => sum(s.p) - sum(s.n),
  clone: (s) => ({ p: gcounter.clone(s.p), n: gcounter.clone(s.n) }),
  encode(enc, state) {
    writeVersion(enc)
    encodeSlots(enc, state.p)
    encodeSlots(enc, state.n)
  },
  decode(dec) {
    return guarded(NAME, dec, () => {
      readVersion(dec, NAME)
      const p = decodeSlots(dec, NAME)
      const n = decodeSlots(dec, NAME)
      return { p, n }
    })
  },
  validate(op: unknown): PNCounterOp {
    const verb = opVerb(NAME, op, ['inc', 'dec'])
    const raw = (op as Record<string, unknown>)[verb]
    if (verb === 'inc') return { inc: safeInt(NAME, 'inc', raw) }
    const n = safeUint(NAME, 'dec', raw)
    return { inc: n === 0 ? 0 : -n }
  },
}
