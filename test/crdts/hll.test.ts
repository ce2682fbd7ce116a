import { describe, expect, it } from 'vitest'
import fc from 'fast-check'
import * as encoding from 'lib0/encoding'
import {
  createHll,
  hll,
  hllAddElement,
  hllDensify,
  hllEstimate,
  hllFromRegisters,
  hllPosition,
  hllRead,
  hllRegisters,
  hllUnion,
  hllWithPrecision,
  maxRank,
  standardError,
  type HLLState,
} from '../../crdts/hll.js'
import { hash64, hash64Bytes, murmur3x86_128 } from '../../crdts/hash.js'
import { decodeState, encodeState } from '../../crdts/codec.js'
import { CrdtDecodeError, CrdtOpError } from '../../crdts/types.js'
import { runCrdtLawTests } from '../laws/runCrdtLawTests.js'
import { contextFor } from '../laws/history.js'

const hex = (b: Uint8Array) => Buffer.from(b).toString('hex')
const ctx = contextFor(0, 0)

/** `count` distinct elements cheaply derived from a seed: the way a big op reaches the dense form. */
const many = (seed: number, count: number) => Array.from({ length: count }, (_, i) => `s${seed}-${i}`)

const element = fc.oneof(
  fc.constantFrom('a', 'b', 'c', 'user-1', ''),
  fc.string({ maxLength: 8 }),
  fc.string({ unit: 'binary', maxLength: 4 }),
)
const smallOp = fc.record({ add: fc.oneof(element, fc.array(element, { maxLength: 6 })) })

runCrdtLawTests(hll, {
  genOp: fc.oneof(
    { weight: 12, arbitrary: smallOp },
    // ~7700 registers: past the dense-encoding point (about 6000 at p = 14), so that roughly one
    // generated state in ten is dense
    { weight: 1, arbitrary: fc.nat(1_000_000).map((seed) => ({ add: many(seed, 9000) })) },
  ),
  badOps: [
    null,
    3,
    'add',
    [],
    {},
    { add: 1 },
    { add: [1] },
    { add: null },
    { add: ['a', null] },
    { add: 'x', extra: 1 },
    { inc: 1 },
    { add: '\ud800' },
    { add: ['ok', 'a\udc00b'] },
    { add: 'x\ud83d' },
  ],
  numRuns: 100,
})

// At p = 6 (64 registers) a few dozen elements already encode dense: the laws cover both forms
// and the conversions between them often.
describe('at precision 6', () => {
  runCrdtLawTests(hllWithPrecision(6), {
    genOp: fc.record({ add: fc.oneof(element, fc.array(element, { maxLength: 20 })) }),
    badOps: [{ add: '\udfff' }],
  })
})

describe('hll: the hash (part of the wire format)', () => {
  it('is MurmurHash3_x86_128: smhasher verification value 0xB3ECE62A', () => {
    const key = new Uint8Array(256)
    const digests = new Uint8Array(16 * 256)
    const view = new DataView(digests.buffer)
    const out = new Uint32Array(4)
    for (let len = 0; len < 256; len++) {
      key[len] = len
      murmur3x86_128(key, len, 256 - len, out)
      for (let w = 0; w < 4; w++) view.setUint32(len * 16 + w * 4, out[w] as number, true)
    }
    murmur3x86_128(digests, digests.length, 0, out)
    expect(out[0]).toBe(0xb3ece62a)
  })

  it('hashes exactly the UTF-8 bytes TextEncoder gives, surrogate pairs as 4 bytes', () => {
    const te = new TextEncoder()
    const a = new Uint32Array(2)
    const b = new Uint32Array(2)
    fc.assert(
      fc.property(fc.oneof(fc.string({ unit: 'binary', maxLength: 40 }), fc.string({ unit: 'binary-ascii', maxLength: 40 })), (s) => {
        hash64(s, a)
        hash64Bytes(te.encode(s), b)
        expect([...a]).toEqual([...b])
      }),
      { numRuns: 500 },
    )
    hash64('😀', a)
    hash64Bytes(Uint8Array.from([0xf0, 0x9f, 0x98, 0x80]), b)
    expect([...a]).toEqual([...b])
  })

  it('puts fixed elements in fixed registers forever', () => {
    // If this changes, every stored and replicated sketch is silently corrupted: bump the format.
    const at = (e: string) => {
      const { index, rho } = hllPosition(e)
      return `${index}:${rho}`
    }
    expect([at(''), at('a'), at('user-1'), at('héllo'), at('😀')]).toMatchInlineSnapshot(`
      [
        "0:51",
        "5461:1",
        "8343:1",
        "10185:3",
        "7173:4",
      ]
    `)
  })

  it('a sketch of fixed elements encodes to fixed bytes', () => {
    const s = createHll()
    hll.apply(s, { add: ['a', 'b', 'c'] }, ctx)
    expect(hex(encodeState(hll, s))).toMatchInlineSnapshot(`"010e0003d52a019d1301b61c03"`)
  })
})

describe('hll: estimates', () => {
  const sketchOf = (n: number, p = 14): HLLState => {
    const s = createHll(p)
    for (let i = 0; i < n; i++) hllAddElement(s, `user-${i}`)
    return s
  }

  it('small cardinalities are essentially exact', () => {
    expect(hll.value(hll.empty())).toBe(0)
    expect(hll.value(sketchOf(1))).toBe(1)
    expect(hll.value(sketchOf(10))).toBe(10)
    expect(Math.abs(hll.value(sketchOf(100)) - 100)).toBeLessThanOrEqual(1)
  })

  it.each([10, 1_000, 100_000, 1_000_000])('relative error at %i is within 3 standard errors', (n) => {
    const s = sketchOf(n)
    const err = Math.abs(hll.value(s) - n) / n
    expect(err).toBeLessThan(3 * standardError(14))
  })

  it('other precisions are accurate too', () => {
    for (const p of [4, 10, 18]) {
      const s = sketchOf(20_000, p)
      expect(Math.abs(hllEstimate(s) - 20_000) / 20_000).toBeLessThan(3 * standardError(p))
    }
  })

  it('reads carry the standard error', () => {
    expect(standardError(14)).toBeCloseTo(1.04 / 128, 12)
    expect(hllRead(sketchOf(10))).toEqual({ value: 10, error: 1.04 / 128 })
  })

  it('the empty string (hash 0, the largest rank) counts as one element', () => {
    const s = createHll()
    hll.apply(s, hll.validate({ add: '' }), ctx)
    expect(hll.value(s)).toBe(1)
    hll.apply(s, hll.validate({ add: ['a', '😀'] }), ctx)
    expect(hll.value(s)).toBe(3)
  })

  it('a sketch saturated at the maximum rank reads as a finite number', () => {
    const s = hllFromRegisters(4, new Uint8Array(16).fill(maxRank(4)))
    expect(Number.isFinite(hll.value(s))).toBe(true)
  })
})

describe('hll: forms and sizes', () => {
  const build = (elements: string[], dense: boolean): HLLState => {
    const s = createHll()
    if (dense) hllDensify(s)
    hll.apply(s, { add: elements }, ctx)
    return s
  }

  it('a sparse sketch of 100 elements encodes in under 1 KB; a dense one in 3m/4 + 3 bytes', () => {
    const small = encodeState(hll, build(many(1, 100), false))
    expect(small.length).toBeLessThan(1024)
    expect(small[2]).toBe(0) // sparse form
    const big = encodeState(hll, build(many(1, 100_000), false))
    expect(big[2]).toBe(1)
    expect(big.length).toBe(3 + 12_288)
  })

  it('the encoding depends on the registers only, not on the in-memory form', () => {
    for (const n of [0, 1, 100, 3000, 5000, 7000, 8000, 9000, 20_000]) {
      const sparse = build(many(n, n), false)
      const dense = build(many(n, n), true)
      expect(dense.dense).not.toBeNull()
      expect(hex(encodeState(hll, sparse)), `n = ${n}`).toBe(hex(encodeState(hll, dense)))
      const back = decodeState(hll, encodeState(hll, dense))
      expect(hex(encodeState(hll, back))).toBe(hex(encodeState(hll, sparse)))
    }
  })

  it('sparse -> dense conversion keeps the value and the registers', () => {
    const s = createHll()
    let converted = false
    for (let i = 0; i < 20_000; i++) {
      hllAddElement(s, `x${i}`)
      if (!converted && s.dense !== null) {
        converted = true
        expect(i).toBeGreaterThan(4096) // m/4 non-zero registers at the earliest
      }
    }
    expect(converted).toBe(true)
    const t = createHll()
    for (let i = 0; i < 3000; i++) hllAddElement(t, `x${i}`)
    expect(t.sparse).not.toBeNull()
    const before = hll.value(t)
    const regs = hllRegisters(t)
    hllDensify(t)
    expect(hll.value(t)).toBe(before)
    expect(hllRegisters(t)).toEqual(regs)
  })

  it('registers round-trip through hllFromRegisters', () => {
    const s = createHll()
    hll.apply(s, { add: many(7, 500) }, ctx)
    const r = hllFromRegisters(14, hllRegisters(s))
    expect(hex(encodeState(hll, r))).toBe(hex(encodeState(hll, s)))
    expect(() => hllFromRegisters(14, new Uint8Array(100))).toThrow(RangeError)
    expect(() => hllFromRegisters(14, new Uint8Array(16384).fill(52))).toThrow(RangeError)
  })
})

describe('hll: apply and join', () => {
  it('validate normalises a single element to a list', () => {
    expect(hll.validate({ add: 'x' })).toEqual({ add: ['x'] })
    expect(hll.validate({ add: ['😀', 'b'] })).toEqual({ add: ['😀', 'b'] })
  })

  it('apply returns exactly the registers that rose', () => {
    const s = createHll()
    const d1 = hll.apply(s, { add: ['a', 'b', 'a'] }, ctx)
    expect(hll.value(d1)).toBe(2)
    expect(hex(encodeState(hll, d1))).toBe(hex(encodeState(hll, s)))
    const d2 = hll.apply(s, { add: ['a', 'b'] }, ctx)
    expect(d2.n).toBe(0)
    expect(hll.value(d2)).toBe(0)
    const d3 = hll.apply(s, { add: [] }, ctx)
    expect(d3.n).toBe(0)
  })

  it('an op that adds many elements gives a delta that joins to the same state', () => {
    const s = createHll()
    hll.apply(s, { add: many(1, 2000) }, ctx)
    const before = hll.clone(s)
    const d = hll.apply(s, { add: many(2, 9000) }, ctx)
    const rebuilt = hll.clone(before)
    expect(hll.join(rebuilt, d)).toBe(true)
    expect(hex(encodeState(hll, rebuilt))).toBe(hex(encodeState(hll, s)))
  })

  it('a union of bucket sketches is the sketch of the union', () => {
    const buckets = [0, 1, 2, 3].map((b) => {
      const s = createHll()
      hll.apply(s, { add: Array.from({ length: 3000 }, (_, i) => `u${b * 2000 + i}`) }, ctx) // overlapping
      return s
    })
    const all = createHll()
    for (let i = 0; i < 9000; i++) hllAddElement(all, `u${i}`)
    const u = hllUnion(buckets)
    expect(hex(encodeState(hll, u))).toBe(hex(encodeState(hll, all)))
    expect(Math.abs(hll.value(u) - 9000) / 9000).toBeLessThan(3 * standardError(14))
    expect(hllUnion([]).n).toBe(0)
  })

  it('joining sketches of different precisions is refused', () => {
    const a = createHll(14)
    const b = createHll(12)
    hllAddElement(b, 'x')
    expect(() => hll.join(a, b)).toThrow(CrdtOpError)
    expect(() => hll.join(b, a)).toThrow(CrdtOpError)
    expect(() => hllUnion([a, b])).toThrow(CrdtOpError)
    expect(() => createHll(3)).toThrow(RangeError)
    expect(() => createHll(19)).toThrow(RangeError)
  })
})

describe('hll: the decoder refuses what the encoder never writes', () => {
  const bytes = (...parts: (number | number[])[]) => Uint8Array.from(parts.flat())
  const varUint = (n: number) => {
    const e = encoding.createEncoder()
    encoding.writeVarUint(e, n)
    return [...encoding.toUint8Array(e)]
  }
  const refused = (b: Uint8Array, why: RegExp) => {
    expect(() => decodeState(hll, b)).toThrow(CrdtDecodeError)
    expect(() => decodeState(hll, b)).toThrow(why)
  }
  const denseBytes = () => {
    const s = createHll()
    for (let i = 0; i < 100_000; i++) hllAddElement(s, `d${i}`)
    const b = encodeState(hll, s)
    expect(b[2]).toBe(1)
    return b
  }

  it('accepts a small well-formed sparse sketch', () => {
    const s = decodeState(hll, bytes(1, 14, 0, 2, 5, 1, varUint(300), 51))
    expect(hllRegisters(s)[5]).toBe(1)
    expect(hllRegisters(s)[305]).toBe(51)
  })

  it('refuses a precision outside 4..18 and an unknown form', () => {
    refused(bytes(1, 3, 0, 0), /precision/)
    refused(bytes(1, 19, 0, 0), /precision/)
    refused(bytes(1, 14, 2, 0), /form/)
  })

  it('refuses sparse indexes >= m, rank 0, ranks above 65 - p, duplicates', () => {
    refused(bytes(1, 14, 0, 1, varUint(16384), 1), /index/)
    refused(bytes(1, 14, 0, 2, varUint(16000), 1, varUint(384), 1), /index/)
    refused(bytes(1, 14, 0, 1, 5, 0), /zero/)
    refused(bytes(1, 14, 0, 1, 5, 52), /maximum 51/)
    // delta encoding cannot say "descending"; a repeated index is a zero gap
    refused(bytes(1, 14, 0, 2, 5, 1, 0, 2), /ascending/)
    refused(bytes(1, 14, 0, 3, 5, 1), /count|exceeds|missing|truncated/)
  })

  it('refuses a sparse form where the dense form is not larger, and the reverse', () => {
    // p = 4: dense body 12 bytes; 5 pairs take 1 + 10 bytes (sparse), 6 pairs 13 (must be dense)
    const five = bytes(1, 4, 0, 5, [0, 1, 1, 1, 1, 1, 1, 1, 1, 1])
    expect(hex(encodeState(hll, decodeState(hll, five)))).toBe(hex(five))
    refused(bytes(1, 4, 0, 6, [0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1]), /dense/)
    // a dense body holding one non-zero register
    refused(bytes(1, 4, 1, [1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]), /sparse/)
  })

  it('refuses a dense register above 65 - p (51 at p = 14), e.g. 63', () => {
    const b = denseBytes()
    const at63 = b.slice()
    at63[3] = (at63[3] as number) | 63 // register 0 -> 63
    refused(at63, /maximum 51/)
    const at52 = b.slice()
    at52[3] = ((at52[3] as number) & ~63) | 52
    refused(at52, /maximum 51/)
    const at51 = b.slice()
    at51[3] = ((at51[3] as number) & ~63) | 51
    expect(hex(encodeState(hll, decodeState(hll, at51)))).toBe(hex(at51))
    const last = b.slice()
    last[last.length - 1] = (last[last.length - 1] as number) | 0xfc // register m-1 -> 63
    refused(last, /maximum 51/)
  })

  it('refuses a dense body with the wrong number of registers', () => {
    const b = denseBytes()
    refused(b.subarray(0, b.length - 1), /dense body/)
    refused(b.subarray(0, 3 + 100), /dense body/)
    refused(bytes([...b], 0), /trailing/)
    // a p = 14 body under a p = 12 header: 3072 bytes read as registers, the rest is left over
    const relabelled = b.slice()
    relabelled[1] = 12
    expect(() => decodeState(hll, relabelled)).toThrow(CrdtDecodeError)
  })
})
