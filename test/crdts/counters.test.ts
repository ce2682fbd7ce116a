import { describe, expect, it } from 'vitest'
import fc from 'fast-check'
import * as encoding from 'lib0/encoding'
import { gcounter, slotState, type GCounterState } from '../../crdts/gcounter.js'
import { decodeState, encodeState, stateEquals } from '../../crdts/codec.js'
import { pncounter } from '../../crdts/pncounter.js'
import { CrdtOpError } from '../../crdts/types.js'
import { runCrdtLawTests } from '../laws/runCrdtLawTests.js'
import { historyArb, runHistory } from '../laws/history.js'

const gOp = fc.oneof(fc.constant({}), fc.record({ inc: fc.nat(1000) }))
const pnOp = fc.oneof(fc.record({ inc: fc.integer({ min: -1000, max: 1000 }) }), fc.record({ dec: fc.nat(1000) }))

runCrdtLawTests(gcounter, {
  genOp: gOp,
  badOps: [null, 3, 'inc', [], { inc: -1 }, { inc: 1.5 }, { inc: 2 ** 53 }, { inc: '1' }, { dec: 1 }, { inc: 1, x: 2 }],
})

runCrdtLawTests(pncounter, {
  genOp: pnOp,
  badOps: [null, {}, { dec: -1 }, { inc: 0.5 }, { inc: 1, dec: 1 }, { add: 'x' }, { inc: Number.MAX_SAFE_INTEGER + 2 }],
})

describe('counters are exact', () => {
  it('gcounter: the value is the sum of every increment once all replicas have met', () => {
    fc.assert(
      fc.property(historyArb(gOp, 3, 40), (h) => {
        const states = runHistory(gcounter, h, 3)
        const all = gcounter.empty()
        for (const s of states) gcounter.join(all, s)
        const expected = h.reduce((t, s) => (s.kind === 'op' ? t + ((s.op as { inc?: number }).inc ?? 1) : t), 0)
        expect(gcounter.value(all)).toBe(expected)
      }),
    )
  })

  it('pncounter: the value is the signed sum of every op once all replicas have met', () => {
    fc.assert(
      fc.property(historyArb(pnOp, 3, 40), (h) => {
        const states = runHistory(pncounter, h, 3)
        const all = pncounter.empty()
        for (const s of states) pncounter.join(all, s)
        const expected = h.reduce((t, s) => {
          if (s.kind !== 'op') return t
          const op = s.op as { inc?: number; dec?: number }
          return t + (op.inc ?? 0) - (op.dec ?? 0)
        }, 0)
        expect(pncounter.value(all)).toBe(expected)
      }),
    )
  })

  it('an increment that would leave the safe integer range is refused and changes nothing', () => {
    const s = gcounter.empty()
    gcounter.apply(s, { inc: Number.MAX_SAFE_INTEGER - 1 }, { replica: 'a', time: { ts: 0, c: 0 } })
    expect(() => gcounter.apply(s, { inc: 2 }, { replica: 'a', time: { ts: 0, c: 0 } })).toThrow(CrdtOpError)
    expect(gcounter.value(s)).toBe(Number.MAX_SAFE_INTEGER - 1)
  })

  it('{} means inc 1', () => {
    expect(gcounter.validate({})).toEqual({ inc: 1 })
  })
})

describe('gcounter layout', () => {
  const at = (replica: string) => ({ replica, time: { ts: 0, c: 0 } })
  const hex = (s: GCounterState) => Buffer.from(encodeState(gcounter, s)).toString('hex')

  it('keeps the first writer inline and the others in an exact, sorted array; encodes in replica order', () => {
    const s = gcounter.empty()
    gcounter.apply(s, { inc: 2 }, at('m'))
    gcounter.apply(s, { inc: 3 }, at('z'))
    gcounter.apply(s, { inc: 4 }, at('a'))
    gcounter.apply(s, { inc: 1 }, at('m'))
    expect(s.id).toBe('m')
    expect(s.n).toBe(3)
    expect(s.rest).toEqual(['a', 4, 'z', 3])
    expect(gcounter.value(s)).toBe(10)
    // version, 3 slots: a 4, m 3, z 3
    expect(hex(s)).toBe('01' + '03' + '016104' + '016d03' + '017a03')
    const back = decodeState(gcounter, encodeState(gcounter, s))
    expect(back.id).toBe('a') // the smallest goes inline on decode
    expect(stateEquals(gcounter, back, s)).toBe(true)
    // joining states whose inline slots differ gives the same bytes either way
    const t = gcounter.empty()
    gcounter.apply(t, { inc: 7 }, at('z'))
    const st = gcounter.clone(s)
    gcounter.join(st, t)
    const ts = gcounter.clone(t)
    gcounter.join(ts, s)
    expect(hex(st)).toBe(hex(ts))
    expect(gcounter.value(st)).toBe(14)
  })

  it('an increment returns a one-slot delta and changes the state object in place', () => {
    const s = gcounter.empty()
    const d1 = gcounter.apply(s, { inc: 5 }, at('r'))
    expect(d1).toEqual(slotState('r', 5))
    expect(d1).not.toBe(s)
    const d2 = gcounter.apply(s, { inc: 1 }, at('q'))
    expect(d2).toEqual(slotState('q', 1))
    expect(gcounter.value(s)).toBe(6)
    const d0 = gcounter.apply(s, { inc: 0 }, at('x'))
    expect(stateEquals(gcounter, d0, gcounter.empty())).toBe(true)
    expect(s.rest).toEqual(['q', 1]) // an inc of 0 makes no slot
    expect(() => slotState('r', -1)).toThrow(RangeError)
  })

  it('clones and deltas share nothing mutable with their state', () => {
    const s = gcounter.empty()
    gcounter.apply(s, { inc: 1 }, at('a'))
    gcounter.apply(s, { inc: 1 }, at('b'))
    const c = gcounter.clone(s)
    gcounter.apply(s, { inc: 1 }, at('b'))
    expect(gcounter.value(c)).toBe(2)
    expect(gcounter.value(s)).toBe(3)
  })

  it('counts past 2^31 and up to the safe integer limit', () => {
    const s = gcounter.empty()
    gcounter.apply(s, { inc: 2 ** 31 + 5 }, at('a'))
    gcounter.apply(s, { inc: 2 ** 40 }, at('b'))
    gcounter.apply(s, { inc: 1 }, at('a'))
    expect(gcounter.value(s)).toBe(2 ** 31 + 6 + 2 ** 40)
    expect(stateEquals(gcounter, decodeState(gcounter, encodeState(gcounter, s)), s)).toBe(true)
    expect(() => gcounter.apply(s, { inc: Number.MAX_SAFE_INTEGER }, at('b'))).toThrow(CrdtOpError)
    expect(gcounter.value(s)).toBe(2 ** 31 + 6 + 2 ** 40)
  })

  it('decoder refuses unsorted, duplicate and zero slots', () => {
    const bytes = (...slots: Array<[string, number]>) => {
      const enc = encoding.createEncoder()
      encoding.writeUint8(enc, 1)
      encoding.writeVarUint(enc, slots.length)
      for (const [id, n] of slots) {
        encoding.writeVarString(enc, id)
        encoding.writeVarUint(enc, n)
      }
      return encoding.toUint8Array(enc)
    }
    expect(gcounter.value(decodeState(gcounter, bytes(['a', 1], ['b', 2])))).toBe(3)
    expect(() => decodeState(gcounter, bytes(['b', 1], ['a', 2]))).toThrow(/ascending/)
    expect(() => decodeState(gcounter, bytes(['a', 1], ['a', 2]))).toThrow(/ascending/)
    expect(() => decodeState(gcounter, bytes(['a', 0]))).toThrow(/zero/)
    expect(() => decodeState(gcounter, bytes(['a', 1], ['b', 0]))).toThrow(/zero/)
  })
})
