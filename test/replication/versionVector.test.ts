import { describe, expect, it } from 'vitest'
import fc from 'fast-check'
import * as encoding from 'lib0/encoding'
import * as decoding from 'lib0/decoding'
import { VersionVector } from '../../src/storage/versionVector.js'

type Op = { origin: string; start: number; len: number }
const opArb: fc.Arbitrary<Op> = fc.record({ origin: fc.constantFrom('a', 'b', 'c'), start: fc.integer({ min: 1, max: 60 }), len: fc.integer({ min: 1, max: 6 }) })

function build(ops: Op[]): { vv: VersionVector; model: Map<string, Set<number>> } {
  const vv = new VersionVector()
  const model = new Map<string, Set<number>>()
  for (const { origin, start, len } of ops) {
    if (len === 1) vv.add(origin, start)
    else vv.addRange(origin, start, start + len - 1)
    const s = model.get(origin) ?? new Set<number>()
    for (let i = start; i < start + len; i++) s.add(i)
    model.set(origin, s)
  }
  return { vv, model }
}

const roundTrip = (vv: VersionVector) => {
  const enc = encoding.createEncoder()
  vv.encode(enc)
  const bytes = encoding.toUint8Array(enc)
  return { bytes, back: VersionVector.decode(decoding.createDecoder(bytes)) }
}

describe('VersionVector', () => {
  it('diff holds exactly the deltas of one vector the other lacks', () => {
    fc.assert(
      fc.property(fc.array(opArb, { maxLength: 30 }), fc.array(opArb, { maxLength: 30 }), (xs, ys) => {
        const a = build(xs)
        const b = build(ys)
        const d = a.vv.diff(b.vv)
        for (const o of ['a', 'b', 'c']) {
          for (let i = 1; i <= 70; i++) expect(d.covers(o, i), `${o}#${i}`).toBe(a.vv.covers(o, i) && !b.vv.covers(o, i))
        }
        expect(d.isCoveredBy(a.vv)).toBe(true)
        // What the diff leaves out, the other vector has: together they cover the first.
        const both = d.clone()
        both.merge(b.vv)
        expect(a.vv.isCoveredBy(both)).toBe(true)
      }),
    )
  })

  it('agrees with a set model: covers, get, max, total', () => {
    fc.assert(
      fc.property(fc.array(opArb, { maxLength: 40 }), (ops) => {
        const { vv, model } = build(ops)
        for (const o of ['a', 'b', 'c']) {
          const s = model.get(o) ?? new Set<number>()
          for (let i = 1; i <= 70; i++) expect(vv.covers(o, i)).toBe(s.has(i))
          let prefix = 0
          while (s.has(prefix + 1)) prefix++
          expect(vv.get(o)).toBe(prefix)
          expect(vv.max(o)).toBe(s.size ? Math.max(...s) : 0)
        }
        expect(vv.total()).toBe([...model.values()].reduce((t, s) => t + s.size, 0))
      }),
    )
  })

  it('merge is the union; isCoveredBy is the subset relation; encoding round-trips canonically', () => {
    fc.assert(
      fc.property(fc.array(opArb, { maxLength: 25 }), fc.array(opArb, { maxLength: 25 }), (xs, ys) => {
        const a = build(xs)
        const b = build(ys)
        const u = a.vv.clone()
        u.merge(b.vv)
        const both = build([...xs, ...ys])
        expect(roundTrip(u).bytes).toEqual(roundTrip(both.vv).bytes)
        const subset = [...a.model].every(([o, s]) => [...s].every((i) => b.model.get(o)?.has(i)))
        expect(a.vv.isCoveredBy(b.vv)).toBe(subset)
        expect(a.vv.isCoveredBy(u)).toBe(true)
        const { bytes, back } = roundTrip(a.vv)
        expect(roundTrip(back).bytes).toEqual(bytes)
      }),
    )
  })

  it('a long run of out-of-order deltas costs a few bytes, and a range claiming billions costs nothing to decode', () => {
    const vv = new VersionVector()
    vv.raise('a', 10)
    vv.addRange('a', 1000, 400_000)
    expect(roundTrip(vv).bytes.length).toBeLessThan(16)
    const enc = encoding.createEncoder()
    encoding.writeVarUint(enc, 1)
    encoding.writeVarString(enc, 'a')
    encoding.writeVarUint(enc, 0)
    encoding.writeVarUint(enc, 1)
    encoding.writeVarUint(enc, 0)
    encoding.writeVarUint(enc, 2 ** 40)
    const huge = VersionVector.decode(decoding.createDecoder(encoding.toUint8Array(enc)))
    expect(huge.covers('a', 2 ** 39)).toBe(true)
    expect(huge.covers('a', 1)).toBe(false)
  })
})
