import { describe, expect, it } from 'vitest'
import fc from 'fast-check'
import * as encoding from 'lib0/encoding'
import { collectTombstones, lwwmap, MAX_JSON_DEPTH, type LWWMapState, type Register } from '../../crdts/lwwmap.js'
import { compareStamps } from '../../crdts/hlc.js'
import { decodeState, encodeState } from '../../crdts/codec.js'
import { CrdtDecodeError, CrdtOpError, type OpContext } from '../../crdts/types.js'
import { runCrdtLawTests } from '../laws/runCrdtLawTests.js'
import { historyArb, runHistory } from '../laws/history.js'

const field = fc.constantFrom('a', 'b', 'c', 'd')
const json: fc.Arbitrary<unknown> = fc.oneof(
  fc.constant(null),
  fc.boolean(),
  fc.integer({ min: -3, max: 3 }),
  fc.constantFrom('x', 'y', ''),
  fc.record({ k: fc.constantFrom(1, null, 'z'), n: fc.record({ deep: fc.array(fc.nat(3), { maxLength: 2 }) }) }),
  fc.array(fc.oneof(fc.constant(null), fc.nat(3)), { maxLength: 3 }),
)
const eventTs = fc.option(fc.integer({ min: 999_990, max: 1_000_010 }), { nil: undefined })
const withTs = (op: Record<string, unknown>, ts: number | undefined) => (ts === undefined ? op : { ...op, ts })
const genOp = fc.oneof(
  { weight: 3, arbitrary: fc.tuple(fc.dictionary(field, json, { maxKeys: 3 }), eventTs).map(([set, ts]) => withTs({ set }, ts)) },
  { weight: 1, arbitrary: fc.tuple(fc.array(field, { maxLength: 3 }), eventTs).map(([del, ts]) => withTs({ delete: del }, ts)) },
)

const nest = (n: number): unknown => {
  let x: unknown = 0
  for (let i = 0; i < n; i++) x = [x]
  return x
}

runCrdtLawTests(lwwmap, {
  genOp,
  badOps: [
    null,
    'set',
    [],
    {},
    { set: [] },
    { set: null },
    { set: 'a' },
    { set: new Map() },
    { delete: 'a' },
    { delete: [1] },
    { delete: ['a', null] },
    { delete: {} },
    { set: { a: undefined } },
    { set: { a: () => 1 } },
    { set: { a: Number.NaN } },
    { set: { a: Number.POSITIVE_INFINITY } },
    { set: { a: new Date(0) } },
    { set: { a: { b: [new Map()] } } },
    { set: { a: [1, , 2] } }, // eslint-disable-line no-sparse-arrays
    { set: { a: nest(MAX_JSON_DEPTH + 1) } },
    { set: { '\uD800': 1 } },
    { set: { 'x\uDC00': 1 } },
    { delete: ['a\uD83D'] },
    { set: { a: 1 }, ts: -1 },
    { set: {}, ts: 1.5 },
    { set: {}, ts: '1' },
    { set: {}, ts: null },
    { set: {}, ts: 2 ** 53 },
    { set: {}, delete: [] },
    { set: {}, x: 1 },
    { ts: 5 },
  ],
})

const ctx = (replica: string, ts: number, c = 0): OpContext => ({ replica, time: { ts, c } })
const apply = (s: LWWMapState, op: unknown, context: OpContext) => lwwmap.apply(s, lwwmap.validate(op), context)
const joinAll = (...xs: LWWMapState[]) => {
  const out = lwwmap.empty()
  for (const x of xs) lwwmap.join(out, x)
  return out
}

describe('lwwmap: validate', () => {
  it('normalises values to canonical JSON text and fields to ascending order', () => {
    expect(lwwmap.validate({ set: { b: { x: [1, 'y'] }, a: null } })).toEqual({ fields: ['a', 'b'], values: ['null', '{"x":[1,"y"]}'] })
    expect(lwwmap.validate({ delete: ['b', 'a', 'b'], ts: 7 })).toEqual({ fields: ['a', 'b'], values: [null, null], ts: 7 })
    expect(lwwmap.validate({ set: { a: -0 } })).toEqual({ fields: ['a'], values: ['0'] })
  })

  it('empty writes are valid no-ops', () => {
    for (const op of [{ set: {} }, { delete: [] }, { set: {}, ts: 0 }]) {
      const s = lwwmap.empty()
      expect(apply(s, op, ctx('a', 1))).toEqual([])
      expect(s).toEqual([])
    }
  })

  it(`values nest at most ${MAX_JSON_DEPTH} levels`, () => {
    expect(() => lwwmap.validate({ set: { a: nest(MAX_JSON_DEPTH) } })).not.toThrow()
    expect(() => lwwmap.validate({ set: { a: nest(MAX_JSON_DEPTH + 1) } })).toThrow(CrdtOpError)
    expect(() => lwwmap.validate({ set: { a: nest(100_000) } })).toThrow(CrdtOpError)
  })

  it('refuses what JSON.stringify cannot round-trip (and never throws anything else)', () => {
    const cyclic: Record<string, unknown> = {}
    cyclic.self = cyclic
    for (const v of [cyclic, 10n, Symbol('s'), new Uint8Array(2), Object.create({ inherited: 1 }) as unknown]) {
      expect(() => lwwmap.validate({ set: { a: v } })).toThrow(CrdtOpError)
    }
  })

  it('accepts unusual but well-formed field names, which survive the codec', () => {
    const s = lwwmap.empty()
    apply(s, { set: { __proto__: 1, '\uFEFFbom': 2, '😀': 3, '': 4, 'constructor': 5 } }, ctx('a', 1))
    // written through JSON.parse, "__proto__" is an own field and not a prototype
    apply(s, JSON.parse('{"set": {"__proto__": {"x": 1}}}'), ctx('a', 2))
    const v = lwwmap.value(s)
    expect(Object.getPrototypeOf(v)).toBe(Object.prototype)
    expect(JSON.parse(JSON.stringify(v))).toEqual(JSON.parse('{"__proto__": {"x": 1}, "\uFEFFbom": 2, "😀": 3, "": 4, "constructor": 5}'))
    expect(lwwmap.value(decodeState(lwwmap, encodeState(lwwmap, s)))).toEqual(v)
  })
})

describe('lwwmap: last writer wins', () => {
  interface Write {
    field: string
    val: unknown // undefined = delete
    ts: number
    c: number
    r: string
  }
  const write = fc.record({
    field,
    val: fc.option(json, { nil: undefined }),
    ts: fc.nat(4),
    c: fc.nat(2),
    r: fc.constantFrom('a', 'b', 'c'),
  })
  // distinct stamps per field: equal stamps with different contents are corrupt input (tested below)
  const writes = fc
    .uniqueArray(write, { selector: (w) => `${w.field}/${w.ts}/${w.c}/${w.r}`, maxLength: 16 })
    .chain((ws) => {
      const idx = ws.map((_, i) => i)
      const perm = fc.shuffledSubarray(idx, { minLength: ws.length, maxLength: ws.length })
      return fc.tuple(fc.constant(ws), fc.array(perm, { minLength: 3, maxLength: 3 }))
    })
  const deltaOf = (w: Write) =>
    apply(lwwmap.empty(), w.val === undefined ? { delete: [w.field] } : { set: { [w.field]: w.val } }, ctx(w.r, w.ts, w.c))
  const model = (ws: Write[]) => {
    const best = new Map<string, Write>()
    for (const w of ws) {
      const b = best.get(w.field)
      if (b === undefined || compareStamps(w, b) > 0) best.set(w.field, w)
    }
    const out: Record<string, unknown> = {}
    for (const f of [...best.keys()].sort()) {
      const w = best.get(f) as Write
      if (w.val !== undefined) out[f] = JSON.parse(JSON.stringify(w.val))
    }
    return out
  }

  it('picks the highest (ts, counter, replica) per field whatever the arrival order', () => {
    fc.assert(
      fc.property(writes, ([ws, orders]) => {
        const deltas = ws.map(deltaOf)
        const expected = model(ws)
        const bytes = new Set<string>()
        for (const order of orders) {
          const s = joinAll(...order.map((i) => deltas[i] as LWWMapState))
          expect(lwwmap.value(s)).toEqual(expected)
          expect(Object.keys(lwwmap.value(s))).toEqual(Object.keys(expected))
          bytes.add(Buffer.from(encodeState(lwwmap, s)).toString('hex'))
        }
        expect(bytes.size).toBeLessThanOrEqual(1)
      }),
    )
  })

  it('joining whole states takes the register-wise maximum (in-place merge vs a naive model)', () => {
    const stateOf = (ws: Write[]) => joinAll(...ws.map(deltaOf))
    const naive = (x: LWWMapState, y: LWWMapState) => {
      const m = new Map<string, Register>()
      for (const g of [...x, ...y]) {
        const b = m.get(g.f)
        if (b === undefined || compareStamps(g, b) > 0) m.set(g.f, g)
      }
      return [...m.values()].sort((p, q) => (p.f < q.f ? -1 : 1))
    }
    const fieldsWide = fc.constantFrom('a', 'b', 'c', 'd', 'e', 'f', 'g', 'h')
    const ws = fc.uniqueArray(fc.record({ field: fieldsWide, val: fc.option(json, { nil: undefined }), ts: fc.nat(4), c: fc.nat(2), r: fc.constantFrom('a', 'b', 'c') }), {
      selector: (w) => `${w.field}/${w.ts}/${w.c}/${w.r}`,
      maxLength: 12,
    })
    fc.assert(
      fc.property(ws, fc.nat(12), (all, cut) => {
        const x = stateOf(all.slice(0, cut))
        const y = stateOf(all.slice(cut))
        const expected = naive(x, y)
        const into = lwwmap.clone(x)
        lwwmap.join(into, y)
        expect(into).toEqual(expected)
      }),
    )
  })

  it('with event time, the latest event wins whatever the arrival order', () => {
    fc.assert(
      fc.property(
        fc.uniqueArray(fc.record({ ts: fc.nat(50), v: fc.nat(9), r: fc.constantFrom('a', 'b', 'c') }), { selector: (w) => w.ts, maxLength: 10 }),
        fc.nat(),
        (ws, seed) => {
          // each replica applies its own events in a shuffled order, then they all meet
          const states = { a: lwwmap.empty(), b: lwwmap.empty(), c: lwwmap.empty() }
          const order = ws.map((w, i) => ({ w, k: (i * 7919 + seed) % 101 })).sort((x, y) => x.k - y.k)
          order.forEach(({ w }, i) => apply(states[w.r], { set: { f: w.v }, ts: w.ts }, ctx(w.r, 5_000 + i)))
          const all = joinAll(states.c, states.a, states.b)
          const latest = ws.reduce<(typeof ws)[number] | undefined>((m, w) => (m === undefined || w.ts > m.ts ? w : m), undefined)
          expect(lwwmap.value(all)).toEqual(latest === undefined ? {} : { f: latest.v })
        },
      ),
    )
  })

  it('an older event arriving later loses, locally and remotely, and its delta is empty', () => {
    const a = lwwmap.empty()
    apply(a, { set: { x: 'new' }, ts: 200 }, ctx('a', 10))
    const late = apply(a, { set: { x: 'old' }, ts: 100 }, ctx('a', 11))
    expect(late).toEqual([])
    expect(lwwmap.value(a)).toEqual({ x: 'new' })
    // the same two events on another replica, in the other order, and then merged
    const b = lwwmap.empty()
    const d1 = apply(b, { set: { x: 'old' }, ts: 100 }, ctx('b', 10))
    apply(b, { set: { x: 'new' }, ts: 200 }, ctx('b', 11))
    expect(lwwmap.value(b)).toEqual({ x: 'new' })
    const c = joinAll(b, d1, a)
    expect(lwwmap.value(c)).toEqual({ x: 'new' })
    // an older delete loses too
    apply(a, { delete: ['x'], ts: 150 }, ctx('a', 12))
    expect(lwwmap.value(a)).toEqual({ x: 'new' })
  })

  it('a later write with the same event time wins locally', () => {
    const s = lwwmap.empty()
    apply(s, { set: { x: 1 }, ts: 100 }, ctx('b', 10))
    const d = apply(s, { set: { x: 2 }, ts: 100 }, ctx('a', 11))
    expect(lwwmap.value(s)).toEqual({ x: 2 })
    expect(d).toEqual([{ f: 'x', v: '2', ts: 100, c: 1, r: 'a' }])
  })

  it('equal ts from two replicas: the higher replica id wins', () => {
    const a = lwwmap.empty()
    const b = lwwmap.empty()
    apply(a, { set: { x: 'from a' }, ts: 100 }, ctx('a', 10))
    apply(b, { set: { x: 'from b' }, ts: 100 }, ctx('b', 10))
    expect(lwwmap.value(joinAll(a, b))).toEqual({ x: 'from b' })
    expect(lwwmap.value(joinAll(b, a))).toEqual({ x: 'from b' })
    // the same with clock stamps
    const p = lwwmap.empty()
    const q = lwwmap.empty()
    apply(p, { set: { x: 'p' } }, ctx('p', 50, 2))
    apply(q, { set: { x: 'q' } }, ctx('q', 50, 2))
    expect(lwwmap.value(joinAll(q, p))).toEqual({ x: 'q' })
  })

  it('a delete with a higher stamp removes the field; a later set brings it back', () => {
    const a = lwwmap.empty()
    const b = lwwmap.empty()
    apply(a, { set: { x: 1, y: 2 } }, ctx('a', 100))
    lwwmap.join(b, a)
    const del = apply(b, { delete: ['x'] }, ctx('b', 101))
    expect(del).toEqual([{ f: 'x', v: null, ts: 101, c: 0, r: 'b' }])
    expect(lwwmap.value(b)).toEqual({ y: 2 })
    // a concurrent, older set loses to the delete
    const older = apply(lwwmap.clone(a), { set: { x: 3 } }, ctx('a', 100, 5))
    lwwmap.join(b, older)
    expect(lwwmap.value(b)).toEqual({ y: 2 })
    // a newer set wins over the tombstone
    lwwmap.join(a, b)
    apply(a, { set: { x: 'back' } }, ctx('a', 102))
    expect(lwwmap.value(joinAll(b, a))).toEqual({ x: 'back', y: 2 })
    // deleting a field never seen still leaves a tombstone that beats older sets
    const c = lwwmap.empty()
    apply(c, { delete: ['z'] }, ctx('c', 200))
    const z = apply(lwwmap.empty(), { set: { z: 1 } }, ctx('a', 150))
    expect(lwwmap.value(joinAll(z, c))).toEqual({})
  })

  it('a clock write beats what the replica holds even when the clock reading does not', () => {
    const s = lwwmap.empty()
    apply(s, { set: { x: 1 } }, ctx('z', 1000, 3))
    const d = apply(s, { set: { x: 2 } }, ctx('a', 900))
    expect(d).toEqual([{ f: 'x', v: '2', ts: 1000, c: 4, r: 'a' }])
    expect(lwwmap.value(s)).toEqual({ x: 2 })
    // a reading above the current stamp is used as is
    expect(apply(s, { set: { x: 3 } }, ctx('a', 1000, 7))).toEqual([{ f: 'x', v: '3', ts: 1000, c: 7, r: 'a' }])
    // equal (ts, c): the stamp is greater when the replica id is, so it is used as is too
    expect(apply(s, { set: { x: 4 } }, ctx('b', 1000, 7))).toEqual([{ f: 'x', v: '4', ts: 1000, c: 7, r: 'b' }])
    expect(apply(s, { set: { x: 5 } }, ctx('a', 1000, 7))).toEqual([{ f: 'x', v: '5', ts: 1000, c: 8, r: 'a' }])
  })

  it('null is a value that reads back as null', () => {
    const s = lwwmap.empty()
    apply(s, { set: { x: null, y: { n: null } } }, ctx('a', 1))
    expect(lwwmap.value(s)).toEqual({ x: null, y: { n: null } })
    expect('x' in lwwmap.value(s)).toBe(true)
    expect(lwwmap.value(decodeState(lwwmap, encodeState(lwwmap, s)))).toEqual({ x: null, y: { n: null } })
  })

  it('value() lists the live fields in sorted order and returns fresh objects', () => {
    const s = lwwmap.empty()
    apply(s, { set: { d: 1, b: [2], a: 3, c: 4 } }, ctx('a', 1))
    apply(s, { delete: ['c'] }, ctx('a', 2))
    const v = lwwmap.value(s)
    expect(Object.keys(v)).toEqual(['a', 'b', 'd'])
    ;(v.b as number[]).push(9)
    expect(lwwmap.value(s).b).toEqual([2])
  })

  it('equal stamps with different contents (corrupt input) still join commutatively', () => {
    const reg = (v: string | null): Register[] => [{ f: 'x', v, ts: 5, c: 0, r: 'a' }]
    const contents = [null, '1', '2', '"a"', 'null']
    for (const x of contents) {
      for (const y of contents) {
        const xy = joinAll(reg(x), reg(y))
        const yx = joinAll(reg(y), reg(x))
        expect(encodeState(lwwmap, xy)).toEqual(encodeState(lwwmap, yx))
      }
    }
    expect(lwwmap.value(joinAll(reg(null), reg('1')))).toEqual({ x: 1 })
  })

  it('a write whose counter would overflow is refused and changes nothing', () => {
    const s: LWWMapState = [{ f: 'x', v: '1', ts: 10, c: Number.MAX_SAFE_INTEGER, r: 'z' }]
    const before = encodeState(lwwmap, s)
    expect(() => apply(s, { set: { w: 0, x: 2 } }, ctx('a', 5))).toThrow(CrdtOpError)
    expect(() => apply(s, { set: { x: 2 }, ts: 10 }, ctx('a', 5))).toThrow(CrdtOpError)
    expect(encodeState(lwwmap, s)).toEqual(before)
  })
})

describe('lwwmap: tombstone collection', () => {
  it('drops only tombstones below the stable stamp; the value is unchanged', () => {
    fc.assert(
      fc.property(historyArb(genOp, 3, 40), fc.integer({ min: 999_985, max: 1_000_130 }), fc.nat(3), (h, ts, c) => {
        const [s] = runHistory(lwwmap, h, 3) as [LWWMapState]
        const before = lwwmap.clone(s)
        const value = lwwmap.value(s)
        const stable = { ts, c }
        const below = (g: Register) => g.ts < ts || (g.ts === ts && g.c < c)
        const dropped = collectTombstones(s, stable)
        expect(dropped).toBe(before.filter((g) => g.v === null && below(g)).length)
        expect(s).toEqual(before.filter((g) => !(g.v === null && below(g))))
        expect(lwwmap.value(s)).toEqual(value)
        // still a canonical state
        expect(decodeState(lwwmap, encodeState(lwwmap, s))).toEqual(s)
      }),
    )
  })

  it('a tombstone at or above the stable stamp stays', () => {
    const s = lwwmap.empty()
    apply(s, { delete: ['a'] }, ctx('r', 10, 0))
    apply(s, { delete: ['b'] }, ctx('r', 10, 1))
    apply(s, { set: { c: 1 } }, ctx('r', 1, 0))
    expect(collectTombstones(s, { ts: 10, c: 1 })).toBe(1)
    expect(s.map((g) => g.f)).toEqual(['b', 'c'])
    expect(collectTombstones(s, { ts: 10, c: 1 })).toBe(0)
  })
})

describe('lwwmap: codec v1', () => {
  /** Hand-written v1 bytes. */
  const bytesOf = (replicas: string[], fields: [string, number, number, number, number, string?][]) => {
    const enc = encoding.createEncoder()
    encoding.writeUint8(enc, 1)
    encoding.writeVarUint(enc, replicas.length)
    for (const r of replicas) encoding.writeVarString(enc, r)
    encoding.writeVarUint(enc, fields.length)
    for (const [f, kind, ts, c, idx, text] of fields) {
      encoding.writeVarString(enc, f)
      encoding.writeUint8(enc, kind)
      encoding.writeVarUint(enc, ts)
      encoding.writeVarUint(enc, c)
      encoding.writeVarUint(enc, idx)
      if (text !== undefined) encoding.writeVarString(enc, text)
    }
    return encoding.toUint8Array(enc)
  }

  it('writes the documented layout', () => {
    const s = lwwmap.empty()
    apply(s, { set: { b: { k: 1 } } }, ctx('r2', 300))
    apply(s, { delete: ['a'] }, ctx('r1', 5, 1))
    const expected = bytesOf(['r1', 'r2'], [['a', 0, 5, 1, 0], ['b', 1, 300, 0, 1, '{"k":1}']])
    expect(encodeState(lwwmap, s)).toEqual(expected)
    expect(decodeState(lwwmap, expected)).toEqual(s)
    expect(encodeState(lwwmap, lwwmap.empty())).toEqual(Uint8Array.from([1, 0, 0]))
  })

  it('refuses non-canonical and malformed input', () => {
    const bad: [string, Uint8Array][] = [
      ['non-canonical JSON: spaces', bytesOf(['r'], [['a', 1, 1, 0, 0, '{"k": 1}']])],
      ['non-canonical JSON: number form', bytesOf(['r'], [['a', 1, 1, 0, 0, '1.0']])],
      ['non-canonical JSON: escapes', bytesOf(['r'], [['a', 1, 1, 0, 0, '"\\u0061"']])],
      ['duplicate JSON keys', bytesOf(['r'], [['a', 1, 1, 0, 0, '{"k":1,"k":2}']])],
      ['not JSON', bytesOf(['r'], [['a', 1, 1, 0, 0, '{']])],
      ['empty JSON text', bytesOf(['r'], [['a', 1, 1, 0, 0, '']])],
      ['too deep', bytesOf(['r'], [['a', 1, 1, 0, 0, JSON.stringify(nest(MAX_JSON_DEPTH + 1))]])],
      ['far too deep', bytesOf(['r'], [['a', 1, 1, 0, 0, '['.repeat(200_000) + ']'.repeat(200_000)]])],
      ['bad kind', bytesOf(['r'], [['a', 2, 1, 0, 0]])],
      ['index out of range', bytesOf(['r'], [['a', 0, 1, 0, 1]])],
      ['unreferenced replica', bytesOf(['q', 'r'], [['a', 0, 1, 0, 1]])],
      ['unsorted replicas', bytesOf(['r', 'q'], [['a', 0, 1, 0, 0], ['b', 0, 1, 0, 1]])],
      ['duplicate replicas', bytesOf(['r', 'r'], [['a', 0, 1, 0, 0], ['b', 0, 1, 0, 1]])],
      ['unsorted fields', bytesOf(['r'], [['b', 0, 1, 0, 0], ['a', 0, 1, 0, 0]])],
      ['duplicate fields', bytesOf(['r'], [['a', 0, 1, 0, 0], ['a', 0, 2, 0, 0]])],
      ['unsafe ts', bytesOf(['r'], [['a', 0, 2 ** 53, 0, 0]])],
      ['unsafe counter', bytesOf(['r'], [['a', 0, 1, 2 ** 53 + 2, 0]])],
      ['overlong varint', Uint8Array.from([1, 0x80, 0x00, 0])],
      ['trailing bytes', Uint8Array.from([1, 0, 0, 0])],
    ]
    for (const [why, bytes] of bad) expect(() => decodeState(lwwmap, bytes), why).toThrow(CrdtDecodeError)
    // the canonical neighbours of some of those decode
    expect(() => decodeState(lwwmap, bytesOf(['r'], [['a', 1, 1, 0, 0, '{"k":1}']]))).not.toThrow()
    expect(() => decodeState(lwwmap, bytesOf(['r'], [['a', 1, 1, 0, 0, JSON.stringify(nest(MAX_JSON_DEPTH))]]))).not.toThrow()
  })

  it('decoded replica ids are shared between registers', () => {
    const s = lwwmap.empty()
    apply(s, { set: { a: 1, b: 2 } }, ctx('replica-' + 'x'.repeat(20), 1))
    const back = decodeState(lwwmap, encodeState(lwwmap, s))
    expect(back[0]?.r).toBe(back[1]?.r)
  })
})
