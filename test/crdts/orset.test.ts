import { describe, expect, it } from 'vitest'
import * as encoding from 'lib0/encoding'
import * as prng from 'lib0/prng'
import { orset, type ORSetState } from '../../crdts/orset.js'
import { CrdtDecodeError, CrdtOpError } from '../../crdts/types.js'
import { decodeState, encodeState, stateEquals } from '../../crdts/codec.js'
import { addDot, compact, contextOf, covers, emptyContext, encodeContext, ensureReplica, joinContext, mapReplicas, maxCounter } from '../../crdts/causal.js'
import { runCrdtLawTests } from '../laws/runCrdtLawTests.js'
import { apply, BAD_OPS, genOp, naiveModelSuites, sync } from './orsetModel.js'

runCrdtLawTests(orset, { genOp, badOps: BAD_OPS })

describe('orset: ops', () => {
  it('normalises ops: a string becomes a list, duplicates go, the input is not touched', () => {
    const input = ['b', 'a', 'b']
    expect(orset.validate({ add: input })).toEqual({ add: ['a', 'b'] })
    expect(input).toEqual(['b', 'a', 'b'])
    expect(orset.validate({ remove: 'x' })).toEqual({ remove: ['x'] })
    expect(orset.validate({ add: [] })).toEqual({ add: [] })
    expect(orset.validate({ add: '😀' })).toEqual({ add: ['😀'] })
    expect(() => orset.validate({ add: '\uDE00' })).toThrow(CrdtOpError)
  })

  it('empty lists and removing an absent element are no-ops with an empty delta', () => {
    const s = orset.empty()
    apply(s, { add: 'x' }, 'a')
    const before = encodeState(orset, s)
    for (const op of [{ add: [] }, { remove: [] }, { remove: 'y' }, { remove: ['y', 'z'] }]) {
      const delta = apply(s, op, 'b')
      expect(stateEquals(orset, delta, orset.empty())).toBe(true)
    }
    expect(encodeState(orset, s)).toEqual(before)
    // a remove by a replica that never added creates no replica entry
    expect(s.ids).toEqual(['a'])
  })

  it('an add of several elements gives each its own dot', () => {
    const s = orset.empty()
    const delta = apply(s, { add: ['y', 'x', 'x'] }, 'a')
    expect(orset.value(s)).toEqual(['x', 'y'])
    expect(orset.value(delta)).toEqual(['x', 'y'])
    expect(s.vv).toEqual([2])
    // removing one leaves the other
    const b = orset.clone(s)
    apply(b, { remove: 'x' }, 'b')
    sync(s, b)
    expect(orset.value(s)).toEqual(['y'])
  })

  it('values are sorted by UTF-16 code units', () => {
    const s = orset.empty()
    apply(s, { add: ['ｚ', '😀', 'b', 'B', ''] }, 'a')
    expect(orset.value(s)).toEqual(['', 'B', 'b', '😀', 'ｚ'])
  })
})

describe('orset: add-wins semantics', () => {
  it('an add concurrent with a remove of the same element wins', () => {
    const a = orset.empty()
    const b = orset.empty()
    apply(a, { add: 'x' }, 'a')
    sync(a, b)
    expect(orset.value(b)).toEqual(['x'])
    apply(a, { remove: 'x' }, 'a')
    apply(b, { add: 'x' }, 'b')
    sync(a, b)
    expect(orset.value(a)).toEqual(['x'])
    expect(orset.value(b)).toEqual(['x'])
    expect(stateEquals(orset, a, b)).toBe(true)
  })

  it('the same, shipping only deltas', () => {
    const a = orset.empty()
    const b = orset.empty()
    orset.join(b, apply(a, { add: 'x' }, 'a'))
    const da = apply(a, { remove: 'x' }, 'a')
    const db = apply(b, { add: 'x' }, 'b')
    orset.join(a, db)
    orset.join(b, da)
    expect(orset.value(a)).toEqual(['x'])
    expect(stateEquals(orset, a, b)).toBe(true)
  })

  it('a remove of an observed add wins', () => {
    const a = orset.empty()
    const b = orset.empty()
    apply(a, { add: 'x' }, 'a')
    sync(a, b)
    apply(b, { remove: 'x' }, 'b')
    sync(a, b)
    expect(orset.value(a)).toEqual([])
    expect(orset.value(b)).toEqual([])
    // and a stale copy of the add arriving again changes nothing
    const stale = orset.empty()
    apply(stale, { add: 'x' }, 'a')
    expect(orset.join(a, stale)).toBe(false)
    expect(orset.value(a)).toEqual([])
  })

  it('re-adding after a remove works, on every replica', () => {
    const a = orset.empty()
    const b = orset.empty()
    apply(a, { add: 'x' }, 'a')
    apply(a, { remove: 'x' }, 'a')
    sync(a, b)
    expect(orset.value(b)).toEqual([])
    apply(b, { add: 'x' }, 'b')
    sync(a, b)
    expect(orset.value(a)).toEqual(['x'])
    apply(a, { remove: 'x' }, 'a')
    apply(a, { add: 'x' }, 'a')
    sync(a, b)
    expect(orset.value(b)).toEqual(['x'])
  })

  it('concurrent adds both survive until one replica supersedes them', () => {
    const a = orset.empty()
    const b = orset.empty()
    apply(a, { add: 'x' }, 'a')
    apply(b, { add: 'x' }, 'b')
    sync(a, b)
    expect(a.dots[0]).toBeInstanceOf(Array) // two dots
    apply(a, { add: 'x' }, 'a')
    sync(a, b)
    expect(typeof a.dots[0]).toBe('number') // one dot again
    expect(stateEquals(orset, a, b)).toBe(true)
  })

  it('a join that only drops one of an element\'s dots reports a change', () => {
    const a = orset.empty()
    const b = orset.empty()
    const c = orset.empty()
    apply(a, { add: 'x' }, 'a')
    orset.join(c, a)
    apply(b, { add: 'x' }, 'b')
    orset.join(a, b) // x: (a,1), (b,1)
    apply(c, { remove: 'x' }, 'c') // observed (a,1) only
    const before = encodeState(orset, a)
    expect(orset.join(a, orset.clone(c))).toBe(true)
    expect(encodeState(orset, a)).not.toEqual(before)
    expect(orset.value(a)).toEqual(['x'])
    expect(typeof a.dots[0]).toBe('number') // (b,1) alone
    // the same through the delta of the remove, and with the element on both sides
    const a2 = orset.empty()
    apply(a2, { add: 'x' }, 'a')
    orset.join(a2, b)
    const c2 = orset.clone(a2)
    apply(a2, { add: 'y' }, 'a')
    const d = apply(c2, { remove: 'x' }, 'c')
    apply(c2, { add: 'x' }, 'c')
    expect(orset.join(a2, d)).toBe(true)
    expect(orset.value(a2)).toEqual(['y'])
    expect(orset.join(a2, c2)).toBe(true)
    expect(orset.value(a2)).toEqual(['x', 'y'])
  })

  it('never reuses a dot of its own that came back from a peer', () => {
    // replica a lost its state but a peer still has a's later dots (out of order: a cloud)
    const peer = orset.empty()
    apply(peer, { add: 'p' }, 'a')
    const d2 = apply(peer, { add: 'q' }, 'a')
    const fresh = orset.empty()
    orset.join(fresh, d2) // only dot (a, 2)
    expect(fresh.cloud).toEqual([0, 2, 2]) // runs: (index, lo, hi)
    apply(fresh, { add: 'r' }, 'a')
    orset.join(peer, fresh)
    expect(orset.value(peer)).toEqual(['p', 'q', 'r'])
  })
})

naiveModelSuites()

describe('orset: dots that do not pack into one number', () => {
  it('a set touched by 300 replicas (indices past 255) behaves the same and survives the codec', () => {
    const ids = Array.from({ length: 300 }, (_, i) => `r${String(i).padStart(3, '0')}`)
    const all = orset.empty()
    ids.forEach((id, i) => {
      const s = orset.empty()
      apply(s, { add: ['shared', `own-${i % 7}`] }, id)
      orset.join(all, s)
    })
    expect(orset.value(all)).toEqual(['own-0', 'own-1', 'own-2', 'own-3', 'own-4', 'own-5', 'own-6', 'shared'])
    expect(all.dots[all.elems.indexOf('shared')]).toHaveLength(600) // 300 concurrent adds
    expect(stateEquals(orset, decodeState(orset, encodeState(orset, all)), all)).toBe(true)
    // the last replica (index 299) re-adds: its one dot supersedes every observed one
    const delta = apply(all, { add: 'shared' }, 'r299')
    expect(all.dots[all.elems.indexOf('shared')]).toEqual([299, 3])
    expect(stateEquals(orset, decodeState(orset, encodeState(orset, delta)), delta)).toBe(true)
    const other = orset.empty()
    apply(other, { add: 'x' }, 'r150')
    orset.join(other, all)
    expect(orset.value(other)).toEqual(orset.value(all))
    apply(other, { remove: 'shared' }, 'r000')
    orset.join(all, other)
    expect(orset.value(all)).not.toContain('shared')
  })

  it('counters past 2^45 are kept as pairs', () => {
    const big = 2 ** 50 + 3
    const enc = encoding.createEncoder()
    for (const x of [1, 1]) encoding.writeVarUint(enc, x) // version, one replica
    encoding.writeVarString(enc, 'a')
    for (const x of [1, 0, big, 0, 1]) encoding.writeVarUint(enc, x) // vv a -> big, empty cloud, one entry
    encoding.writeVarString(enc, 'x')
    for (const x of [1, 0, big]) encoding.writeVarUint(enc, x)
    const bytes = encoding.toUint8Array(enc)
    const s = decodeState(orset, bytes)
    expect(s.dots[0]).toEqual([0, big])
    expect(encodeState(orset, s)).toEqual(bytes)
    const delta = apply(s, { add: 'x' }, 'a')
    expect(s.dots[0]).toEqual([0, big + 1])
    expect(delta.cloud).toEqual([0, big, big + 1])
    const t = decodeState(orset, bytes)
    orset.join(t, delta)
    expect(stateEquals(orset, t, s)).toBe(true)
  })
})

describe('orset: compactness', () => {
  it('10,000 random ops from 3 replicas leave no trace of removed elements after a full sync', () => {
    const seed = 20240607
    const gen = prng.create(seed)
    const ids = ['node-a', 'node-b', 'node-c']
    const states = ids.map(() => orset.empty())
    // deltas in flight to each replica, delivered in random order, some lost: clouds form
    const inbox: ORSetState[][] = ids.map(() => [])
    const names = Array.from({ length: 40 }, (_, i) => `e${String(i).padStart(3, '0')}`)
    let sawCloud = false
    const adds = [0, 0, 0]
    for (let i = 0; i < 10_000; i++) {
      const r = prng.int31(gen, 0, 2)
      const e = prng.oneOf(gen, names)
      const op = prng.real53(gen) < 0.55 ? { add: e } : { remove: e }
      if ('add' in op) adds[r]!++
      const delta = apply(states[r]!, op, ids[r]!)
      for (let t = 0; t < 3; t++) if (t !== r && prng.real53(gen) < 0.9) inbox[t]!.push(delta)
      const t = prng.int31(gen, 0, 2)
      const box = inbox[t]!
      if (box.length > 0 && prng.real53(gen) < 0.8) {
        const k = prng.int31(gen, 0, box.length - 1)
        orset.join(states[t]!, box.splice(k, 1)[0]!)
        if (states[t]!.cloud.length > 0) sawCloud = true
      }
      if (prng.real53(gen) < 0.005) {
        const from = prng.int31(gen, 0, 2)
        orset.join(states[t]!, orset.clone(states[from]!))
      }
    }
    expect(sawCloud, `seed ${seed}`).toBe(true)
    // full sync: everyone joins everyone
    for (let round = 0; round < 2; round++) for (const a of states) for (const b of states) orset.join(a, b)
    const live = orset.value(states[0]!)
    for (const s of states) {
      expect(s.cloud).toEqual([])
      // the context is exactly one counter per replica: its number of adds
      for (let r = 0; r < 3; r++) expect(s.vv[s.ids.indexOf(ids[r]!)]).toBe(adds[r])
      expect(stateEquals(orset, s, states[0]!)).toBe(true)
      expect(s.elems).toEqual(live)
    }
    const bytes = encodeState(orset, states[0]!)
    const text = Buffer.from(bytes).toString('latin1')
    for (const name of names) expect(text.includes(name)).toBe(live.includes(name))
    // version + 3 replicas (1 + 7 bytes each) + vv (1 + 3 * (1 + 2)) + empty cloud + entry count,
    // then per live element: name (1 + 4), dot count (1), and per dot: rank (1) + counter (<= 2);
    // concurrent adds that nobody superseded legitimately keep an element at 2 or 3 dots.
    const dotCount = states[0]!.dots.reduce<number>((t, d) => t + (typeof d === 'number' ? 1 : d.length / 2), 0)
    expect(dotCount).toBeLessThanOrEqual(live.length * 3)
    const bound = 1 + (1 + 3 * 7) + (1 + 3 * 3) + 1 + 1 + live.length * (5 + 1) + dotCount * 3
    expect(bytes.length).toBeLessThanOrEqual(bound)
  })
})

describe('orset: format v1', () => {
  it('fixed bytes of a small state decode to the same state forever', () => {
    const a = orset.empty()
    const b = orset.empty()
    apply(a, { add: ['x', 'y'] }, 'a') // (a,1) x, (a,2) y
    apply(b, { add: 'x' }, 'b') // (b,1) x
    sync(a, b)
    apply(a, { remove: 'y' }, 'a')
    const c = orset.empty()
    apply(c, { add: 'lost' }, 'c') // (c,1): its delta never arrives
    orset.join(a, apply(c, { add: 'z' }, 'c')) // (c,2) z arrives out of order: a cloud
    const hex = Buffer.from(encodeState(orset, a)).toString('hex')
    expect(hex).toBe(
      [
        '01', // version
        '03', '0161', '0162', '0163', // replicas a, b, c
        '02', '0002', '0101', // vv: a -> 2, b -> 1
        '01', '0202', // cloud: (c, 2)
        '02', // two elements
        '0178', '02', '0001', '0101', // "x": (a,1), (b,1)
        '017a', '01', '0202', // "z": (c,2)
      ].join(''),
    )
    const back = decodeState(orset, Buffer.from(hex, 'hex'))
    expect(orset.value(back)).toEqual(['x', 'z'])
    expect(stateEquals(orset, back, a)).toBe(true)
  })

  it('bytes per element', () => {
    const one = orset.empty()
    apply(one, { add: 'x' }, 'a')
    expect(encodeState(orset, one).length).toBe(14)
    // 100 elements "item-000".. added one by one by "node-a": a 14-byte header (version, table,
    // vv, cloud, count), then per element the name (1 + 8), dot count, rank and counter (1 each)
    const hundred = orset.empty()
    for (let i = 0; i < 100; i++) apply(hundred, { add: `item-${String(i).padStart(3, '0')}` }, 'node-a')
    expect(encodeState(orset, hundred).length).toBe(14 + 100 * 12)
  })

  const bytes = (...parts: (number | string)[]) => {
    const enc = encoding.createEncoder()
    for (const p of parts) {
      if (typeof p === 'number') encoding.writeVarUint(enc, p)
      else encoding.writeVarString(enc, p)
    }
    return encoding.toUint8Array(enc)
  }
  // version, replicas, vv, cloud, entries
  const good = bytes(1, 1, 'a', 1, 0, 2, 0, 1, 'x', 1, 0, 2)

  it.each([
    ['a valid state', good, null],
    ['unsorted replicas', bytes(1, 2, 'b', 'a', 2, 0, 1, 1, 1, 0, 0), /ascending/],
    ['an unreferenced replica', bytes(1, 2, 'a', 'b', 1, 0, 1, 0, 0), /referenced by nothing/],
    ['a zero vv entry', bytes(1, 1, 'a', 1, 0, 0, 0, 0), /zero/],
    ['a vv index out of range', bytes(1, 1, 'a', 1, 1, 1, 0, 0), /out of range/],
    ['a cloud dot that would compact', bytes(1, 1, 'a', 1, 0, 1, 1, 0, 2, 0), /contiguous/],
    ['a cloud dot the vv covers', bytes(1, 1, 'a', 1, 0, 3, 1, 0, 2, 0), /covered/],
    ['unsorted cloud', bytes(1, 1, 'a', 0, 2, 0, 5, 0, 3, 0), /ascending/],
    ['a dot outside the context', bytes(1, 1, 'a', 1, 0, 2, 0, 1, 'x', 1, 0, 3), /outside/],
    ['an element without dots', bytes(1, 1, 'a', 1, 0, 2, 0, 2, 'x', 0, 'yy', 1, 0, 2), /without dots/],
    ['unsorted elements', bytes(1, 1, 'a', 1, 0, 2, 0, 2, 'y', 1, 0, 1, 'x', 1, 0, 2), /elements not in ascending/],
    ['duplicate elements', bytes(1, 1, 'a', 1, 0, 2, 0, 2, 'x', 1, 0, 1, 'x', 1, 0, 2), /elements not in ascending/],
    ['unsorted dots', bytes(1, 1, 'a', 1, 0, 2, 0, 1, 'x', 2, 0, 2, 0, 1), /dots not in ascending/],
    ['a dot index out of range', bytes(1, 1, 'a', 1, 0, 2, 0, 1, 'x', 1, 1, 1), /out of range/],
  ])('decoder: %s', (_name, input, error) => {
    if (error === null) {
      const s = decodeState(orset, input)
      expect(encodeState(orset, s)).toEqual(input)
      expect(orset.value(s)).toEqual(['x'])
      return
    }
    expect(() => decodeState(orset, input)).toThrow(CrdtDecodeError)
    expect(() => decodeState(orset, input)).toThrow(error)
  })
})

describe('causal context', () => {
  it('compacts a cloud that becomes contiguous', () => {
    const cc = emptyContext()
    expect(ensureReplica(cc, 'a')).toBe(0)
    expect(addDot(cc, 0, 3)).toBe(true)
    expect(addDot(cc, 0, 2)).toBe(true)
    expect(cc.cloud).toEqual([0, 2, 3]) // one run of counters 2..3
    expect(addDot(cc, 0, 3)).toBe(false)
    expect(covers(cc, 0, 1)).toBe(false)
    expect(addDot(cc, 0, 1)).toBe(true)
    expect(cc.vv).toEqual([3])
    expect(cc.cloud).toEqual([])
    expect(covers(cc, 0, 3)).toBe(true)
    expect(covers(cc, 0, 4)).toBe(false)
  })

  it('joins across different replica numberings and reports gains exactly', () => {
    const x = { ids: ['b', 'a'], vv: [2, 0], cloud: [1, 5, 5] }
    const y = { ids: ['a', 'c'], vv: [4, 1], cloud: [] as number[] }
    const map = mapReplicas(x, y)
    expect(map).toEqual([1, 2])
    expect(joinContext(x, y, map)).toBe(true)
    expect(x).toEqual({ ids: ['b', 'a', 'c'], vv: [2, 5, 1], cloud: [] })
    expect(joinContext(x, y, mapReplicas(x, y))).toBe(false)
    const z = { ids: ['a'], vv: [0], cloud: [0, 9, 9] }
    compact(z)
    expect(joinContext(x, z, mapReplicas(x, z))).toBe(true)
    expect(x.cloud).toEqual([1, 9, 9])
  })

  it('keeps the cloud as runs: a dot extends, bridges or starts one; a vv that reaches them folds them in', () => {
    const cc = emptyContext()
    ensureReplica(cc, 'a')
    ensureReplica(cc, 'b')
    for (const n of [5, 6, 7, 10, 9]) expect(addDot(cc, 0, n)).toBe(true)
    expect(cc.cloud).toEqual([0, 5, 7, 0, 9, 10])
    expect(addDot(cc, 0, 8)).toBe(true) // bridges the two
    expect(cc.cloud).toEqual([0, 5, 10])
    expect(addDot(cc, 1, 3)).toBe(true)
    expect(cc.cloud).toEqual([0, 5, 10, 1, 3, 3])
    expect(maxCounter(cc, 0)).toBe(10)
    expect(maxCounter(cc, 1)).toBe(3)
    for (const n of [5, 7, 10]) expect(addDot(cc, 0, n)).toBe(false)
    expect([4, 5, 10, 11].map((n) => covers(cc, 0, n))).toEqual([false, true, true, false])
    // a run arriving from a join that overlaps, then a vv that reaches the run
    const other = { ids: ['a'], vv: [0], cloud: [0, 9, 14] }
    expect(joinContext(cc, other, mapReplicas(cc, other))).toBe(true)
    expect(cc.cloud).toEqual([0, 5, 14, 1, 3, 3])
    expect(joinContext(cc, other, mapReplicas(cc, other))).toBe(false)
    const prefix = { ids: ['a'], vv: [4], cloud: [] as number[] }
    expect(joinContext(cc, prefix, mapReplicas(cc, prefix))).toBe(true)
    expect(cc.vv).toEqual([14, 0])
    expect(cc.cloud).toEqual([1, 3, 3])
    // the encoding lists every dot, whatever the runs
    const enc = encoding.createEncoder()
    encodeContext(enc, { ids: ['b', 'a'], vv: [0, 1], cloud: [0, 3, 4, 1, 3, 3] })
    expect(Buffer.from(encoding.toUint8Array(enc)).toString('hex')).toBe(
      ['02', '0161', '0162', '01', '0001', '03', '0003', '0103', '0104'].join(''),
    )
  })

  it('builds the compact context of a few dots', () => {
    const { cc, remap } = contextOf(['x', 'y', 'z'], [2, 5, 0, 2, 0, 1, 2, 5, 0, 4])
    expect(remap).toEqual([0, -1, 1])
    expect(cc).toEqual({ ids: ['x', 'z'], vv: [2, 0], cloud: [0, 4, 4, 1, 5, 5] })
  })
})
