/**
 * The OR-set's big representation (chunked entries, a dot index, joins by lookup) must be
 * invisible: the same laws and the same agreement with the reference model hold with thresholds
 * shrunk so that sets of a few elements are big and chunks hold one or two entries, and any
 * history gives byte for byte the states and deltas it gives with the plain arrays.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import fc from 'fast-check'
import { orset, orsetTuning, type ORSetState } from '../../crdts/orset.js'
import { chunkLimits } from '../../crdts/chunks.js'
import * as encoding from 'lib0/encoding'
import { decodeState, encodeState, stateEquals } from '../../crdts/codec.js'
import { runCrdtLawTests } from '../laws/runCrdtLawTests.js'
import { REPLICA_IDS } from '../laws/history.js'
import { apply, BAD_OPS, genOp, naiveModelSuites } from './orsetModel.js'

interface Tuning {
  bigAt: number
  smallAt: number
  denseRatio: number
  chunkMax: number
}

const DEFAULT: Tuning = { ...orsetTuning, chunkMax: chunkLimits.max }
/** Sets of 4+ elements are big, of 0-1 small again; every big join goes by lookups. */
const SPARSE: Tuning = { bigAt: 3, smallAt: 2, denseRatio: 0, chunkMax: 2 }
/** The same, but every join of a big set walks both (the merge path through the flat form). */
const DENSE: Tuning = { ...SPARSE, denseRatio: Infinity }
/** For the law suites, whose histories are short: every set of 2+ elements is big. */
const TINY_SPARSE: Tuning = { bigAt: 1, smallAt: 1, denseRatio: 0, chunkMax: 2 }
const TINY_DENSE: Tuning = { ...TINY_SPARSE, denseRatio: Infinity }

function tune(t: Tuning): void {
  orsetTuning.bigAt = t.bigAt
  orsetTuning.smallAt = t.smallAt
  orsetTuning.denseRatio = t.denseRatio
  chunkLimits.max = t.chunkMax
}

afterAll(() => tune(DEFAULT))

for (const [label, t] of [
  ['big, sparse joins', TINY_SPARSE],
  ['big, dense joins', TINY_DENSE],
] as const) {
  describe(label, () => {
    beforeAll(() => tune(t))
    afterAll(() => tune(DEFAULT))
    runCrdtLawTests(orset, { genOp, badOps: BAD_OPS })
    naiveModelSuites(` (${label})`)
  })
}

type Step =
  | { kind: 'op'; replica: number; op: unknown }
  | { kind: 'deliver'; to: number; pick: number }
  | { kind: 'sync'; from: number; to: number }
  /** The replica loses its writes since snapshot `pick`: its next adds reuse their dots. */
  | { kind: 'reset'; replica: number; pick: number }

// A wider alphabet than the law tests: sets reach a dozen elements, so they cross both bounds.
const wideElem = fc.constantFrom(...'abcdefghijklmn'.split(''), '😀', 'ｚ')
const wideOp = fc.oneof(
  { weight: 5, arbitrary: fc.record({ add: wideElem }) },
  { weight: 3, arbitrary: fc.record({ remove: wideElem }) },
  { weight: 1, arbitrary: fc.record({ add: fc.array(wideElem, { maxLength: 6 }) }) },
  { weight: 1, arbitrary: fc.record({ remove: fc.array(wideElem, { maxLength: 6 }) }) },
)
const stepArb: fc.Arbitrary<Step> = fc.oneof(
  { weight: 6, arbitrary: fc.record({ kind: fc.constant('op' as const), replica: fc.nat(2), op: wideOp }) },
  { weight: 4, arbitrary: fc.record({ kind: fc.constant('deliver' as const), to: fc.nat(2), pick: fc.nat(30) }) },
  { weight: 1, arbitrary: fc.record({ kind: fc.constant('sync' as const), from: fc.nat(2), to: fc.nat(2) }) },
  { weight: 1, arbitrary: fc.record({ kind: fc.constant('reset' as const), replica: fc.nat(2), pick: fc.nat(30) }) },
)

/** Runs a history under the current tuning; returns every delta, join result and final state as hex. */
function trace(steps: readonly Step[]): string[] {
  const hex = (s: ORSetState) => Buffer.from(encodeState(orset, s)).toString('hex')
  const states = [orset.empty(), orset.empty(), orset.empty()]
  const snaps: ORSetState[][] = [[orset.empty()], [orset.empty()], [orset.empty()]]
  const inbox: ORSetState[][] = [[], [], []]
  const out: string[] = []
  for (const step of steps) {
    if (step.kind === 'op') {
      const delta = apply(states[step.replica]!, step.op, REPLICA_IDS[step.replica] as string)
      out.push(hex(delta))
      for (let t = 0; t < 3; t++) if (t !== step.replica) inbox[t]!.push(delta)
      snaps[step.replica]!.push(orset.clone(states[step.replica]!))
    } else if (step.kind === 'deliver') {
      const box = inbox[step.to]!
      if (box.length === 0) continue
      const d = box.splice(step.pick % box.length, 1)[0]!
      out.push(String(orset.join(states[step.to]!, d)))
    } else if (step.kind === 'sync') {
      out.push(String(orset.join(states[step.to]!, states[step.from]!)))
    } else {
      const s = snaps[step.replica]!
      states[step.replica] = orset.clone(s[step.pick % s.length]!)
    }
    out.push(hex(states[0]!), hex(states[1]!), hex(states[2]!))
  }
  // and every pair joined both ways: a lattice join even where dots were reused
  for (const a of states) {
    for (const b of states) {
      const ab = orset.clone(a)
      orset.join(ab, b)
      const ba = orset.clone(b)
      orset.join(ba, a)
      expect(stateEquals(orset, ab, ba)).toBe(true)
      out.push(hex(ab), JSON.stringify(orset.value(ab)))
    }
  }
  return out
}

describe('orset: big and small representations agree byte for byte', () => {
  afterAll(() => tune(DEFAULT))

  it('on histories with lost deltas, full syncs and replicas that lose writes and reuse dots', () => {
    fc.assert(
      fc.property(fc.array(stepArb, { minLength: 10, maxLength: 120, size: 'max' }), (steps) => {
        tune(DEFAULT)
        const plain = trace(steps)
        tune(SPARSE)
        const sparse = trace(steps)
        tune(DENSE)
        const dense = trace(steps)
        tune(DEFAULT)
        expect(sparse).toEqual(plain)
        expect(dense).toEqual(plain)
      }),
      { numRuns: 300 },
    )
  })

  it('a set crosses both bounds and keeps its contents', () => {
    tune({ ...DEFAULT, bigAt: 10, smallAt: 4, chunkMax: 4 })
    const s = orset.empty()
    const names = Array.from({ length: 12 }, (_, i) => `e${String(i).padStart(2, '0')}`)
    for (const e of names.slice(0, 10)) apply(s, { add: e }, 'a')
    expect(s.big).toBeNull()
    apply(s, { add: names[10] }, 'a')
    expect(s.big).not.toBeNull()
    expect(s.elems).toEqual([]) // the entries live in the chunks now
    expect(orset.value(s)).toEqual(names.slice(0, 11))
    apply(s, { remove: names.slice(0, 7) }, 'a')
    expect(s.big).not.toBeNull() // 4 left: not below smallAt yet
    apply(s, { remove: names[7] }, 'a')
    expect(s.big).toBeNull()
    expect(orset.value(s)).toEqual(names.slice(8, 11))
  })

  it('on any valid states, dots shared between elements included', () => {
    fc.assert(
      fc.property(validStateBytes, validStateBytes, (x, y) => {
        const run = (t: Tuning) => {
          tune(t)
          const a = decodeState(orset, x)
          const b = decodeState(orset, y)
          const changed = orset.join(a, b)
          const back = orset.join(b, decodeState(orset, x))
          return [changed, back, Buffer.from(encodeState(orset, a)).toString('hex'), Buffer.from(encodeState(orset, b)).toString('hex')]
        }
        const plain = run(DEFAULT)
        expect(run(SPARSE)).toEqual(plain)
        expect(run(DENSE)).toEqual(plain)
        tune(DEFAULT)
        expect(plain[2]).toBe(plain[3]) // and commutative
      }),
      { numRuns: 500 },
    )
  })

  it('a sparse join drops a reused dot from every element that holds it', () => {
    tune(SPARSE)
    // a peer's state where a's dot 1 names both x and y (a replica that lost writes reused it)
    const b = decodeState(orset, encodeRaw(['a'], [4], [], [['p', [[0, 2]]], ['q', [[0, 3]]], ['r', [[0, 4]]], ['x', [[0, 1]]], ['y', [[0, 1]]]]))
    expect(b.big).not.toBeNull()
    // a state that has seen (a,1) and holds neither: both go, wherever the dot is
    const c = decodeState(orset, encodeRaw(['a'], [1], [], []))
    expect(orset.join(b, c)).toBe(true)
    expect(orset.value(b)).toEqual(['p', 'q', 'r'])
    tune(DEFAULT)
  })
})

/** The bytes of a state, written field by field in format v1 (see orset.ts). */
function encodeRaw(ids: string[], vv: number[], cloud: Array<[number, number]>, entries: Array<[string, Array<[number, number]>]>): Uint8Array {
  const enc = encoding.createEncoder()
  const u = (x: number) => encoding.writeVarUint(enc, x)
  u(1)
  u(ids.length)
  for (const id of ids) encoding.writeVarString(enc, id)
  const nv = vv.filter((n) => n > 0).length
  u(nv)
  vv.forEach((n, r) => {
    if (n > 0) {
      u(r)
      u(n)
    }
  })
  u(cloud.length)
  for (const [r, n] of cloud) {
    u(r)
    u(n)
  }
  u(entries.length)
  for (const [e, dots] of entries) {
    encoding.writeVarString(enc, e)
    u(dots.length)
    for (const [r, n] of dots) {
      u(r)
      u(n)
    }
  }
  return encoding.toUint8Array(enc)
}

/**
 * Canonical bytes of arbitrary valid states: every replica has a contiguous prefix, a few cloud
 * dots beyond it, and each element 1-3 dots drawn from what the context covers, so that one dot
 * can name several elements, as nothing in the format forbids.
 */
const validStateBytes: fc.Arbitrary<Uint8Array> = fc
  .record({
    k: fc.integer({ min: 1, max: 3 }),
    vv: fc.array(fc.integer({ min: 1, max: 4 }), { minLength: 3, maxLength: 3 }),
    gaps: fc.array(fc.array(fc.integer({ min: 2, max: 7 }), { maxLength: 2 }), { minLength: 3, maxLength: 3 }),
    elems: fc.uniqueArray(fc.constantFrom(...'abcdefghij'.split('')), { maxLength: 9 }),
    picks: fc.array(fc.array(fc.nat(99), { minLength: 1, maxLength: 3 }), { minLength: 10, maxLength: 10 }),
  })
  .map(({ k, vv, gaps, elems, picks }) => {
    const ids = ['a', 'b', 'c'].slice(0, k)
    const cloud: Array<[number, number]> = []
    const covered: Array<[number, number]> = []
    ids.forEach((_, r) => {
      for (let n = 1; n <= vv[r]!; n++) covered.push([r, n])
      for (const g of [...new Set(gaps[r]!)].sort((x, y) => x - y)) {
        cloud.push([r, vv[r]! + g])
        covered.push([r, vv[r]! + g])
      }
    })
    const entries = elems.sort().map((e, i): [string, Array<[number, number]>] => {
      const dots = [...new Set(picks[i]!.map((p) => p % covered.length))].map((j) => covered[j]!)
      return [e, dots.sort((x, y) => x[0] - y[0] || x[1] - y[1])]
    })
    return encodeRaw(ids, vv.slice(0, k), cloud, entries)
  })

describe('orset: the delta of an op on a big set', () => {
  afterAll(() => tune(DEFAULT))
  it('joins into another big replica exactly as the full state would', () => {
    tune(SPARSE)
    const a = orset.empty()
    apply(a, { add: ['a', 'b', 'c', 'd', 'e', 'f'] }, 'a')
    const b = orset.clone(a)
    const delta = apply(a, { remove: 'c' }, 'a')
    const viaDelta = orset.clone(b)
    expect(orset.join(viaDelta, delta)).toBe(true)
    const viaState = orset.clone(b)
    orset.join(viaState, a)
    expect(stateEquals(orset, viaDelta, viaState)).toBe(true)
    expect(orset.value(viaDelta)).toEqual(['a', 'b', 'd', 'e', 'f'])
    expect(orset.join(viaDelta, delta)).toBe(false)
    tune(DEFAULT)
  })

  it('the dot index follows local adds and joined elements once it exists', () => {
    tune(SPARSE)
    const a = orset.empty()
    apply(a, { add: ['a', 'b', 'c', 'd', 'e', 'f'] }, 'a')
    const b = orset.clone(a)
    orset.join(a, orset.empty()) // a sparse join: a builds its index
    // a local add, removed elsewhere: the remove's delta names only the dot
    orset.join(b, apply(a, { add: 'x' }, 'a'))
    orset.join(a, apply(b, { remove: 'x' }, 'b'))
    expect(orset.value(a)).not.toContain('x')
    // an element that came by a join, removed elsewhere
    const c = orset.clone(b)
    orset.join(a, apply(c, { add: 'y' }, 'c'))
    orset.join(b, orset.clone(a))
    expect(orset.value(a)).toContain('y')
    orset.join(a, apply(b, { remove: 'y' }, 'b'))
    expect(orset.value(a)).not.toContain('y')
    // a re-add supersedes the old dot in the index too
    orset.join(b, apply(a, { add: 'a' }, 'a'))
    orset.join(a, apply(b, { remove: 'a' }, 'b'))
    expect(orset.value(a)).toEqual(['b', 'c', 'd', 'e', 'f'])
    tune(DEFAULT)
  })
})
