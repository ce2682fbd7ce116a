import { afterAll, describe, expect, it } from 'vitest'
import fc from 'fast-check'
import { chunkLimits, SortedChunks, work } from '../../crdts/chunks.js'

const defaultMax = chunkLimits.max
afterAll(() => {
  chunkLimits.max = defaultMax
})

/** Every structural invariant, and the entries in order. */
function check<K extends string | number, V>(s: SortedChunks<K, V>, unique: boolean): Array<[K, V]> {
  expect(s.vals.length).toBe(s.keys.length)
  expect(s.lasts.length).toBe(s.keys.length)
  const out: Array<[K, V]> = []
  s.keys.forEach((ks, c) => {
    expect(ks.length).toBeGreaterThan(0)
    expect(ks.length).toBeLessThanOrEqual(chunkLimits.max)
    expect(s.vals[c]!.length).toBe(ks.length)
    expect(s.lasts[c]).toBe(ks[ks.length - 1])
    ks.forEach((k, i) => out.push([k, s.vals[c]![i]!]))
  })
  for (let i = 1; i < out.length; i++) {
    if (unique) expect(out[i - 1]![0] < out[i]![0]).toBe(true)
    else expect(out[i]![0] < out[i - 1]![0]).toBe(false)
  }
  expect(s.size).toBe(out.length)
  return out
}

const maxArb = fc.constantFrom(1, 2, 3, 4, 8)
const keyArb: fc.Arbitrary<string> = fc.constantFrom('', 'a', 'b', 'ba', 'c', 'd', 'e', 'f', 'g', 'h', '😀', 'ｚ')

type UniqueCmd = { op: 'set'; k: string; v: number } | { op: 'delete'; k: string } | { op: 'range'; lo: string; hi: string }
const uniqueCmd: fc.Arbitrary<UniqueCmd> = fc.oneof(
  { weight: 3, arbitrary: fc.record({ op: fc.constant('set' as const), k: keyArb, v: fc.nat(9) }) },
  { weight: 2, arbitrary: fc.record({ op: fc.constant('delete' as const), k: keyArb }) },
  { weight: 1, arbitrary: fc.record({ op: fc.constant('range' as const), lo: keyArb, hi: keyArb }) },
)

describe('SortedChunks', () => {
  it('behaves as a sorted map, whatever the chunk size', () => {
    fc.assert(
      fc.property(maxArb, fc.array(keyArb), fc.array(uniqueCmd, { maxLength: 80 }), (max, initial, cmds) => {
        chunkLimits.max = max
        const start = [...new Set(initial)].sort()
        const s = SortedChunks.fromSorted(start, start.map((_, i) => i))
        const model = new Map(start.map((k, i) => [k, i]))
        for (const c of cmds) {
          if (c.op === 'set') {
            s.set(c.k, c.v)
            model.set(c.k, c.v)
          } else if (c.op === 'delete') {
            expect(s.delete(c.k)).toBe(model.delete(c.k))
          } else {
            const ks: string[] = []
            const vs: number[] = []
            s.collectRange(c.lo, c.hi, ks, vs)
            const want = [...model].filter(([k]) => c.lo <= k && k <= c.hi).sort(([a], [b]) => (a < b ? -1 : 1))
            expect(ks).toEqual(want.map(([k]) => k))
            expect(vs).toEqual(want.map(([, v]) => v))
          }
          const entries = check(s, true)
          expect(entries).toEqual([...model].sort(([a], [b]) => (a < b ? -1 : 1)))
          for (const k of ['a', 'b', 'zz', '']) {
            expect(s.get(k)).toBe(model.get(k))
            expect(s.has(k)).toBe(model.has(k))
          }
        }
        const { keys, vals } = s.toArrays()
        expect(keys.map((k, i) => [k, vals[i]])).toEqual(check(s, true))
        // a clone shares no array
        const copy = s.clone((v) => v)
        copy.set('new', 1)
        copy.delete('a')
        expect(check(s, true)).toEqual([...model].sort(([a], [b]) => (a < b ? -1 : 1)))
      }),
      { numRuns: 500 },
    )
  })

  type MultiCmd = { op: 'insert'; k: number; v: number } | { op: 'delete'; k: number; v: number } | { op: 'range'; lo: number; hi: number }
  const multiCmd: fc.Arbitrary<MultiCmd> = fc.oneof(
    { weight: 3, arbitrary: fc.record({ op: fc.constant('insert' as const), k: fc.nat(6), v: fc.nat(3) }) },
    { weight: 2, arbitrary: fc.record({ op: fc.constant('delete' as const), k: fc.nat(6), v: fc.nat(3) }) },
    { weight: 1, arbitrary: fc.record({ op: fc.constant('range' as const), lo: fc.nat(7), hi: fc.nat(7) }) },
  )
  const byKeyThenValue = (a: [number, number], b: [number, number]) => a[0] - b[0] || a[1] - b[1]

  it('behaves as a sorted multimap with the *Multi methods, equal keys across chunks included', () => {
    fc.assert(
      fc.property(maxArb, fc.array(multiCmd, { maxLength: 100 }), (max, cmds) => {
        chunkLimits.max = max
        const s = new SortedChunks<number, number>()
        const model: Array<[number, number]> = []
        for (const c of cmds) {
          if (c.op === 'insert') {
            s.insertMulti(c.k, c.v)
            model.push([c.k, c.v])
          } else if (c.op === 'delete') {
            const i = model.findIndex(([k, v]) => k === c.k && v === c.v)
            if (i >= 0) model.splice(i, 1)
            expect(s.deleteMulti(c.k, c.v)).toBe(i >= 0)
          } else {
            const ks: number[] = []
            const vs: number[] = []
            s.collectRange(c.lo, c.hi, ks, vs)
            const got = ks.map((k, i): [number, number] => [k, vs[i]!])
            expect(got.map(([k]) => k)).toEqual([...got.map(([k]) => k)].sort((a, b) => a - b))
            expect(got.sort(byKeyThenValue)).toEqual(model.filter(([k]) => c.lo <= k && k <= c.hi).sort(byKeyThenValue))
          }
          expect(check(s, false).sort(byKeyThenValue)).toEqual(model.slice().sort(byKeyThenValue))
        }
      }),
      { numRuns: 500 },
    )
  })

  it('moves at most a chunk per insert or delete, and keeps chunks from dwindling', () => {
    chunkLimits.max = 64
    const n = 20_000
    const keys = Array.from({ length: n }, (_, i) => i * 2)
    const s = SortedChunks.fromSorted(keys, keys)
    const before = work.steps
    for (let i = 0; i < 1000; i++) s.set(((i * 7919) % n) * 2 + 1, i) // between existing keys
    for (let i = 0; i < 1000; i++) s.delete(((i * 104729) % n) * 2)
    // per op: a splice within a chunk (<= 64) plus, now and then, a split or a merge
    expect((work.steps - before) / 2000).toBeLessThan(2 * 64)
    // delete nearly everything: chunks merge rather than linger as slivers
    for (const k of keys) s.delete(k)
    const left = check(s, true).length
    expect(s.keys.length).toBeLessThanOrEqual(Math.ceil(left / (64 >> 2)) + 1)
  })
})
