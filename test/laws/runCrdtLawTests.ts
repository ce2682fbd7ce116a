/**
 * The lattice laws and codec laws that every CRDT type must satisfy, as one suite that every
 * type runs (as automerge-repo's shared adapter suites do). States are compared by canonical
 * bytes, which is stronger than comparing values.
 */
import { describe, expect, it } from 'vitest'
import fc from 'fast-check'
import * as decoding from 'lib0/decoding'
import type { CrdtType } from '../../crdts/types.js'
import { CrdtDecodeError, CrdtOpError } from '../../crdts/types.js'
import { decodeState, encodeState, stateEquals } from '../../crdts/codec.js'
import { contextFor, historyArb, runHistory } from './history.js'

export interface LawOptions {
  /** Ops (untrusted JSON) that `validate` accepts. */
  genOp: fc.Arbitrary<unknown>
  /** Inputs that `validate` must refuse. */
  badOps: unknown[]
  numRuns?: number
}

export function runCrdtLawTests<S, O, V>(type: CrdtType<S, O, V>, opts: LawOptions): void {
  const numRuns = opts.numRuns ?? 200
  const REPLICAS = 3
  // Three related states, from one history over three replicas.
  const triple = historyArb(opts.genOp, REPLICAS).map((h) => runHistory(type, h, REPLICAS))
  const same = (a: S, b: S) => {
    expect(Buffer.from(encodeState(type, a)).toString('hex')).toBe(Buffer.from(encodeState(type, b)).toString('hex'))
    expect(type.value(a)).toEqual(type.value(b))
  }
  const joined = (...xs: S[]): S => {
    const out = type.clone(xs[0] as S)
    for (const x of xs.slice(1)) type.join(out, x)
    return out
  }

  describe(`${type.name}: lattice and codec laws`, () => {
    it('join is commutative', () => {
      fc.assert(
        fc.property(triple, ([a, b]) => same(joined(a!, b!), joined(b!, a!))),
        { numRuns },
      )
    })

    it('join is associative', () => {
      fc.assert(
        fc.property(triple, ([a, b, c]) => same(joined(joined(a!, b!), c!), joined(a!, joined(b!, c!)))),
        { numRuns },
      )
    })

    it('join is idempotent and reports no change', () => {
      fc.assert(
        fc.property(triple, ([a]) => {
          const x = type.clone(a!)
          expect(type.join(x, type.clone(a!))).toBe(false)
          same(x, a!)
        }),
        { numRuns },
      )
    })

    it('join reports a change exactly when the state changed', () => {
      fc.assert(
        fc.property(triple, ([a, b]) => {
          const x = type.clone(a!)
          const changed = type.join(x, b!)
          expect(changed).toBe(!stateEquals(type, x, a!))
        }),
        { numRuns },
      )
    })

    it('join leaves its argument untouched and shares nothing with it', () => {
      fc.assert(
        fc.property(triple, opts.genOp, ([a, b], rawOp) => {
          const before = encodeState(type, b!)
          const x = type.clone(a!)
          type.join(x, b!)
          expect(encodeState(type, b!)).toEqual(before)
          // mutate the result: b must not see it
          type.apply(x, type.validate(rawOp), contextFor(0, 10_000))
          expect(encodeState(type, b!)).toEqual(before)
        }),
        { numRuns },
      )
    })

    it('a delta joins like the full state it came from', () => {
      fc.assert(
        fc.property(triple, opts.genOp, fc.nat(REPLICAS - 1), ([a, b], rawOp, r) => {
          const op = type.validate(rawOp)
          const after = type.clone(a!)
          const delta = type.apply(after, op, contextFor(r, 10_000))
          // the delta applied to the state it came from gives the mutated state
          same(joined(a!, delta), after)
          // and to any other replica that already had `a`, the same as shipping the full state
          same(joined(b!, a!, delta), joined(b!, after))
          // the delta is a valid state: it survives the codec
          same(decodeState(type, encodeState(type, delta)), delta)
        }),
        { numRuns },
      )
    })

    it('encode then decode is the identity', () => {
      fc.assert(
        fc.property(triple, ([a]) => {
          const bytes = encodeState(type, a!)
          const back = decodeState(type, bytes)
          same(back, a!)
          expect(bytes[0]).toBe(1) // format version first
        }),
        { numRuns },
      )
    })

    it('clone is deep', () => {
      fc.assert(
        fc.property(triple, opts.genOp, ([a], rawOp) => {
          const before = encodeState(type, a!)
          const copy = type.clone(a!)
          type.apply(copy, type.validate(rawOp), contextFor(1, 10_000))
          expect(encodeState(type, a!)).toEqual(before)
        }),
        { numRuns },
      )
    })

    it('validate refuses bad ops with a CrdtOpError', () => {
      for (const bad of opts.badOps) {
        expect(() => type.validate(bad), JSON.stringify(bad)).toThrow(CrdtOpError)
      }
    })

    it('decoding random bytes throws CrdtDecodeError or yields a canonical state', () => {
      fc.assert(
        fc.property(fc.uint8Array({ maxLength: 200 }), (bytes) => {
          const input = Uint8Array.from([1, ...bytes])
          try {
            const s = decodeState(type, input)
            // whatever decodes must be canonical: it re-encodes to the very same bytes
            expect(encodeState(type, s)).toEqual(input)
          } catch (err) {
            expect(err).toBeInstanceOf(CrdtDecodeError)
          }
        }),
        { numRuns: numRuns * 5 },
      )
    })

    it('decoding a truncated encoding throws CrdtDecodeError', () => {
      fc.assert(
        fc.property(triple, fc.double({ min: 0, max: 1, noNaN: true }), ([a], f) => {
          const bytes = encodeState(type, a!)
          const cut = Math.floor(f * (bytes.length - 1))
          expect(() => decodeState(type, bytes.subarray(0, cut))).toThrow(CrdtDecodeError)
        }),
        { numRuns },
      )
    })

    it('a length that claims gigabytes is refused without allocating it', () => {
      // version 1, then a varint of 2^32 - 1 where the first count or length is read
      const huge = Uint8Array.from([1, 0xff, 0xff, 0xff, 0xff, 0x0f, 0x61, 0x62])
      expect(() => decodeState(type, huge)).toThrow(CrdtDecodeError)
      const dec = decoding.createDecoder(Uint8Array.from([2]))
      expect(() => type.decode(dec)).toThrow(/version/)
    })
  })
}
