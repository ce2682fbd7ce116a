import { describe, expect, it } from 'vitest'
import fc from 'fast-check'
import * as encoding from 'lib0/encoding'
import * as decoding from 'lib0/decoding'
import { compareStamps, compareTimestamps, hlcReceive, hlcTick, readTimestamp, writeTimestamp, ZERO } from '../../crdts/hlc.js'
import { CrdtDecodeError, type Timestamp } from '../../crdts/types.js'

const wall = fc.integer({ min: 0, max: 2_000 })
const stamp = fc.record({ ts: fc.integer({ min: 0, max: 2_000 }), c: fc.nat(5) })
/** A run of local (tick) and receive events, each with the wall-clock reading at that moment. */
const events = fc.array(
  fc.oneof(fc.record({ kind: fc.constant('tick' as const), wall }), fc.record({ kind: fc.constant('recv' as const), wall, remote: stamp })),
  { maxLength: 60 },
)

describe('hybrid logical clock', () => {
  it('tick is strictly monotonic even when the wall clock goes backwards', () => {
    fc.assert(
      fc.property(fc.array(wall, { maxLength: 60 }), (walls) => {
        let t: Timestamp = ZERO
        let maxWall = 0
        for (const w of walls) {
          const next = hlcTick(t, w)
          expect(compareTimestamps(next, t)).toBe(1)
          maxWall = Math.max(maxWall, w)
          // ts is the largest wall reading seen: never behind it, never invented ahead of it
          expect(next.ts).toBe(maxWall)
          t = next
        }
      }),
    )
  })

  it('a wall clock going backwards is absorbed by the counter', () => {
    const a = hlcTick({ ts: 1000, c: 0 }, 900)
    expect(a).toEqual({ ts: 1000, c: 1 })
    expect(hlcTick(a, 1000)).toEqual({ ts: 1000, c: 2 })
  })

  it('the counter resets when wall time advances', () => {
    expect(hlcTick({ ts: 1000, c: 7 }, 1001)).toEqual({ ts: 1001, c: 0 })
    expect(hlcReceive({ ts: 1000, c: 7 }, { ts: 999, c: 9 }, 1005)).toEqual({ ts: 1005, c: 0 })
  })

  it('receive is greater than both the previous reading and the remote stamp', () => {
    fc.assert(
      fc.property(stamp, stamp, wall, (prev, remote, w) => {
        const next = hlcReceive(prev, remote, w)
        expect(compareTimestamps(next, prev)).toBe(1)
        expect(compareTimestamps(next, remote)).toBe(1)
        expect(next.ts).toBe(Math.max(prev.ts, remote.ts, w))
      }),
    )
  })

  it('receive follows the paper case by case', () => {
    expect(hlcReceive({ ts: 10, c: 3 }, { ts: 10, c: 5 }, 9)).toEqual({ ts: 10, c: 6 })
    expect(hlcReceive({ ts: 10, c: 8 }, { ts: 10, c: 5 }, 10)).toEqual({ ts: 10, c: 9 })
    expect(hlcReceive({ ts: 10, c: 3 }, { ts: 8, c: 5 }, 9)).toEqual({ ts: 10, c: 4 })
    expect(hlcReceive({ ts: 8, c: 3 }, { ts: 10, c: 5 }, 9)).toEqual({ ts: 10, c: 6 })
  })

  it('over any run of events the clock only grows and never runs ahead of what it has seen', () => {
    fc.assert(
      fc.property(events, (evs) => {
        let t: Timestamp = ZERO
        let seen = 0
        for (const e of evs) {
          const next = e.kind === 'tick' ? hlcTick(t, e.wall) : hlcReceive(t, e.remote, e.wall)
          expect(compareTimestamps(next, t)).toBe(1)
          seen = Math.max(seen, e.wall, e.kind === 'recv' ? e.remote.ts : 0)
          // the bound: ts - wall is at most how far the accepted remote stamps ran ahead
          expect(next.ts).toBe(seen)
          t = next
        }
      }),
    )
  })

  it('compareStamps orders by ts, then counter, then replica', () => {
    expect(compareStamps({ ts: 2, c: 0, r: 'a' }, { ts: 1, c: 9, r: 'z' })).toBe(1)
    expect(compareStamps({ ts: 1, c: 1, r: 'a' }, { ts: 1, c: 0, r: 'z' })).toBe(1)
    expect(compareStamps({ ts: 1, c: 1, r: 'a' }, { ts: 1, c: 1, r: 'b' })).toBe(-1)
    expect(compareStamps({ ts: 1, c: 1, r: 'b' }, { ts: 1, c: 1, r: 'b' })).toBe(0)
  })

  it('refuses bad wall readings and counter overflow', () => {
    expect(() => hlcTick(ZERO, -1)).toThrow(RangeError)
    expect(() => hlcTick(ZERO, 1.5)).toThrow(RangeError)
    expect(() => hlcTick({ ts: 5, c: Number.MAX_SAFE_INTEGER }, 5)).toThrow(RangeError)
    expect(() => hlcReceive(ZERO, { ts: 5, c: Number.MAX_SAFE_INTEGER }, 1)).toThrow(RangeError)
  })

  it('timestamps round-trip through lib0 and bad bytes are refused', () => {
    fc.assert(
      fc.property(fc.record({ ts: fc.maxSafeNat(), c: fc.maxSafeNat() }), (t) => {
        const enc = encoding.createEncoder()
        writeTimestamp(enc, t)
        const dec = decoding.createDecoder(encoding.toUint8Array(enc))
        expect(readTimestamp(dec, 'clock')).toEqual(t)
        expect(decoding.hasContent(dec)).toBe(false)
      }),
    )
    expect(() => readTimestamp(decoding.createDecoder(Uint8Array.from([5])), 'clock')).toThrow(CrdtDecodeError)
    expect(() => readTimestamp(decoding.createDecoder(Uint8Array.from([0x85, 0, 1])), 'clock')).toThrow(CrdtDecodeError)
  })
})
