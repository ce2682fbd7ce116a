/**
 * Batch views as data: the join (highest (horizon, stamp) wins whole) is a semilattice, the lib0
 * format is canonical and refuses anything else, and values are validated strictly per type.
 */
import { describe, expect, it } from 'vitest'
import fc from 'fast-check'
import * as encoding from 'lib0/encoding'
import { CrdtDecodeError, type TypeName } from '../../crdts/types.js'
import {
  BatchValueError,
  checkBatchKey,
  compareBatchViews,
  decodeBatchView,
  encodeBatchView,
  joinBatchViews,
  makeBatchView,
  validateBatchValue,
  type BatchView,
} from '../../src/query/batchView.js'
import { parseBucketKey, parseTime } from '../../src/query/buckets.js'

const HOUR = 3_600_000
const T0 = Date.UTC(2025, 5, 1)

const typeArb = fc.constantFrom<TypeName>('gcounter', 'pncounter', 'orset', 'lwwmap', 'hll')
const strArb = fc.string({ maxLength: 6 })
const jsonArb = fc.jsonValue({ maxDepth: 3 })

function valueArb(type: TypeName): fc.Arbitrary<unknown> {
  switch (type) {
    case 'gcounter':
      return fc.nat()
    case 'pncounter':
      return fc.integer()
    case 'orset':
      return fc.uniqueArray(strArb, { maxLength: 5 })
    case 'hll':
      return fc.oneof(fc.nat(), fc.uniqueArray(strArb, { maxLength: 5 }))
    case 'lwwmap':
      return fc.dictionary(strArb, jsonArb, { maxKeys: 4 })
  }
}

/** A batch view of one view "v" (the name every view in a join shares). */
const batchViewArb: fc.Arbitrary<BatchView> = fc
  .record({
    type: typeArb,
    hours: fc.integer({ min: 1, max: 8 }),
    ts: fc.integer({ min: 0, max: 5 }),
    c: fc.integer({ min: 0, max: 3 }),
    r: fc.constantFrom('a', 'b', 'c'),
  })
  .chain(({ type, hours, ts, c, r }) =>
    fc
      .uniqueArray(fc.tuple(fc.constantFrom('home', 'about', 'x|y', 'ü'), fc.integer({ min: 0, max: hours - 1 })), { maxLength: 6, selector: ([p, h]) => `${p}/${h}` })
      .chain((slots) => fc.tuple(...slots.map(() => valueArb(type))).map((values) => ({ type, hours, ts, c, r, slots, values }))),
  )
  .map(({ type, hours, ts, c, r, slots, values }) =>
    makeBatchView(
      { view: 'v', type, sizeMs: HOUR, horizon: T0 + hours * HOUR, stamp: { ts, c, r } },
      slots.map(([p, h], i) => [`${p}|${new Date(T0 + h * HOUR).toISOString()}`, validateBatchValue(type, values[i])] as const),
    ),
  )

const same = (a: BatchView, b: BatchView) => compareBatchViews(a, b) === 0 && Buffer.from(encodeBatchView(a)).equals(Buffer.from(encodeBatchView(b)))

describe('batch view join', () => {
  it('is commutative, associative and idempotent, and picks the highest (horizon, stamp)', () => {
    fc.assert(
      fc.property(batchViewArb, batchViewArb, batchViewArb, (a, b, c) => {
        expect(same(joinBatchViews(a, b), joinBatchViews(b, a)) || compareBatchViews(a, b) === 0).toBe(true)
        expect(same(joinBatchViews(joinBatchViews(a, b), c), joinBatchViews(a, joinBatchViews(b, c)))).toBe(true)
        expect(joinBatchViews(a, a)).toBe(a)
        const j = joinBatchViews(a, b)
        expect(compareBatchViews(j, a)).toBeGreaterThanOrEqual(0)
        expect(compareBatchViews(j, b)).toBeGreaterThanOrEqual(0)
        if (a.horizon !== b.horizon) expect(j.horizon).toBe(Math.max(a.horizon, b.horizon))
      }),
      { numRuns: 300 },
    )
  })
})

describe('batch view codec', () => {
  it('round-trips, and whatever decodes re-encodes to the same bytes', () => {
    fc.assert(
      fc.property(batchViewArb, (bv) => {
        const bytes = encodeBatchView(bv)
        const back = decodeBatchView(bytes)
        expect(back.keys).toEqual(bv.keys)
        expect([...back.entries]).toEqual([...bv.entries])
        expect(Buffer.from(encodeBatchView(back)).equals(Buffer.from(bytes))).toBe(true)
      }),
      { numRuns: 300 },
    )
  })

  it('refuses truncated, extended and random bytes with CrdtDecodeError, never anything else', () => {
    fc.assert(
      fc.property(batchViewArb, fc.nat(), (bv, cut) => {
        const bytes = encodeBatchView(bv)
        const n = cut % bytes.length
        expect(() => decodeBatchView(bytes.subarray(0, n))).toThrow(CrdtDecodeError)
        expect(() => decodeBatchView(Uint8Array.from([...bytes, 0]))).toThrow(CrdtDecodeError)
      }),
      { numRuns: 200 },
    )
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 64 }), (bytes) => {
        let bv: BatchView
        try {
          bv = decodeBatchView(Uint8Array.from([1, ...bytes]))
        } catch (err) {
          expect(err).toBeInstanceOf(CrdtDecodeError)
          return
        }
        expect(Buffer.from(encodeBatchView(bv)).equals(Buffer.from([1, ...bytes]))).toBe(true)
      }),
      { numRuns: 2000 },
    )
  })

  it('refuses a huge count before allocating, keys out of order, and keys past the horizon', () => {
    const bv = makeBatchView({ view: 'v', type: 'gcounter', sizeMs: HOUR, horizon: T0 + 2 * HOUR, stamp: { ts: 1, c: 0, r: 'a' } }, [
      [`a|${new Date(T0).toISOString()}`, 1],
      [`b|${new Date(T0 + HOUR).toISOString()}`, 2],
    ])
    const bytes = encodeBatchView(bv)
    const text = Buffer.from(bytes)
    // Swap the two keys' first letters: now "b..." comes before "a...".
    const ia = text.indexOf('a|')
    const ib = text.indexOf('b|')
    const swapped = Buffer.from(text)
    swapped[ia] = 0x62
    swapped[ib] = 0x61
    expect(() => decodeBatchView(swapped)).toThrow(/ascending/)
    // The same bytes under a lower horizon: the second bucket ends after it.
    const lower = makeBatchView({ ...bv, horizon: T0 + HOUR }, [[`a|${new Date(T0).toISOString()}`, 1]])
    expect(() => makeBatchView({ ...bv }, [[`a|${new Date(T0).toISOString()}`, 1], [`a|${new Date(T0).toISOString()}`, 2]])).toThrow(BatchValueError)
    expect(decodeBatchView(encodeBatchView(lower)).keys).toHaveLength(1)
    const enc = encoding.createEncoder()
    encoding.writeUint8(enc, 1)
    encoding.writeVarString(enc, 'v')
    encoding.writeUint8(enc, 0)
    encoding.writeVarUint(enc, HOUR)
    encoding.writeVarUint(enc, T0)
    encoding.writeVarUint(enc, 1)
    encoding.writeVarUint(enc, 0)
    encoding.writeVarString(enc, 'a')
    encoding.writeVarUint(enc, 2 ** 40)
    expect(() => decodeBatchView(encoding.toUint8Array(enc))).toThrow(/count 1099511627776 exceeds/)
  })
})

describe('batch values and keys', () => {
  it('are checked strictly per type', () => {
    const bad: Array<[TypeName, unknown]> = [
      ['gcounter', -1],
      ['gcounter', 1.5],
      ['gcounter', '3'],
      ['gcounter', 2 ** 53],
      ['pncounter', null],
      ['orset', 'a'],
      ['orset', ['a', 'a']],
      ['orset', ['a', 1]],
      ['orset', ['\ud800']],
      ['hll', -3],
      ['hll', ['x', 'x']],
      ['hll', { x: 1 }],
      ['lwwmap', []],
      ['lwwmap', 'x'],
    ]
    for (const [type, v] of bad) expect(() => validateBatchValue(type, v), `${type} ${JSON.stringify(v)}`).toThrow(BatchValueError)
    expect(validateBatchValue('orset', ['b', 'a'])).toEqual(['a', 'b'])
    expect(validateBatchValue('hll', 7)).toBe(7)
    expect(validateBatchValue('pncounter', -7)).toBe(-7)
    expect(validateBatchValue('lwwmap', { b: 1, a: { x: [1] } })).toEqual({ fields: ['a', 'b'], texts: ['{"x":[1]}', '1'] })
  })

  it('keys must name aligned buckets that end by the horizon', () => {
    const h = T0 + 2 * HOUR
    expect(checkBatchKey(`home|${new Date(T0 + HOUR).toISOString()}`, HOUR, h)).toBeNull()
    expect(checkBatchKey(`home|${new Date(T0 + 2 * HOUR).toISOString()}`, HOUR, h)).toMatch(/after the horizon/)
    expect(checkBatchKey(`home|${new Date(T0 + 60_000).toISOString()}`, HOUR, h)).toMatch(/multiple/)
    expect(checkBatchKey('home', HOUR, h)).toMatch(/not a bucket key/)
    expect(checkBatchKey('home|2025-06-01T00:00:00Z', HOUR, h)).toMatch(/not a bucket key/)
    expect(checkBatchKey('', HOUR, h)).toMatch(/empty/)
  })

  it('bucket keys parse only as toISOString prints them; times parse as ms or ISO', () => {
    expect(parseBucketKey('a|b|2025-06-01T10:00:00.000Z')).toEqual({ prefix: 'a|b', start: Date.UTC(2025, 5, 1, 10) })
    expect(parseBucketKey('a|2025-02-30T00:00:00.000Z')).toBeNull()
    expect(parseBucketKey('a|2025-06-01T10:00:00.000Z|x')).toBeNull()
    expect(parseBucketKey('2025-06-01T10:00:00.000Z')).toBeNull()
    expect(parseTime('1748772000000')).toBe(1748772000000)
    expect(parseTime('2025-06-01T10:00:00Z')).toBe(Date.UTC(2025, 5, 1, 10))
    expect(parseTime('2025-06-01T12:00:00+02:00')).toBe(Date.UTC(2025, 5, 1, 10))
    expect(parseTime('2025-06-01')).toBeNaN()
    expect(parseTime('2025-02-30T00:00:00Z')).toBeNaN()
    expect(parseTime('2024-02-29T00:00:00Z')).toBe(Date.UTC(2024, 1, 29))
    expect(parseTime('-5')).toBeNaN()
    expect(parseTime('soon')).toBeNaN()
  })
})
