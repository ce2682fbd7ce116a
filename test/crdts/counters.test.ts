import { describe, expect, it } from 'vitest'
import fc from 'fast-check'
import { gcounter } from '../../crdts/gcounter.js'
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
