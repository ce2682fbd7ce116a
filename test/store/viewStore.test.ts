import { describe, expect, it } from 'vitest'
import { lwwmap } from '../../crdts/lwwmap.js'
import { StoreError, ViewStore } from '../../src/store/viewStore.js'

const ctx = (replica: string, ts: number) => ({ replica, time: { ts, c: 0 } })

describe('ViewStore', () => {
  it('defines views: created, identical is exists, different is a conflict', () => {
    const s = new ViewStore()
    expect(s.define('pv', { type: 'gcounter' }, ctx('a', 1)).result).toBe('created')
    expect(s.define('pv', { type: 'gcounter' }, ctx('a', 2)).result).toBe('exists')
    expect(() => s.define('pv', { type: 'orset' }, ctx('a', 3))).toThrow(StoreError)
    expect(() => s.define('x', { type: 'gcounter', bogus: 1 }, ctx('a', 3))).toThrow(/unknown field/)
    expect(() => s.define('x', { type: 'nope' }, ctx('a', 3))).toThrow(/type/)
    expect(() => s.define('x', { type: 'hll', ingest: { key: ['url'] } }, ctx('a', 3))).toThrow(/value/)
  })

  it('a refused op changes nothing, not even the key set', () => {
    const s = new ViewStore()
    s.define('pv', { type: 'gcounter' }, ctx('a', 1))
    expect(() => s.apply('pv', 'k', { inc: -1 }, ctx('a', 2))).toThrow(StoreError)
    expect(s.scan('pv', { limit: 10 }).items).toEqual([])
    expect(() => s.apply('pv', '..', {}, ctx('a', 2))).toThrow(/"\."/)
    expect(() => s.apply('pv', 'x'.repeat(1025), {}, ctx('a', 2))).toThrow(/1024/)
    expect(() => s.apply('nope', 'k', {}, ctx('a', 2))).toThrow(/no view/)
  })

  it('two definitions made on two sides of a partition resolve to the same winner, dropping the loser values', () => {
    const a = new ViewStore()
    const b = new ViewStore()
    const da = a.define('v', { type: 'gcounter' }, ctx('a', 10)).catalogDelta
    const db = b.define('v', { type: 'orset' }, ctx('b', 20)).catalogDelta
    a.apply('v', 'k', { inc: 3 }, ctx('a', 11))
    b.apply('v', 'k', { add: 'x' }, ctx('b', 21))
    const events: string[] = []
    a.subscribe((e) => e.kind === 'define' && events.push(`${e.view.def.type} replaced ${e.replaced?.def.type} dropping ${e.dropped}`))
    a.mergeCatalog(lwwmap.clone(db as never))
    b.mergeCatalog(lwwmap.clone(da as never))
    expect(a.view('v').def.type).toBe('orset')
    expect(b.view('v').def.type).toBe('orset')
    expect(a.read('v', 'k')).toEqual([])
    expect(b.read('v', 'k')).toEqual(['x'])
    expect(a.droppedByRedefinition).toBe(1)
    expect(events).toEqual(['orset replaced gcounter dropping 1'])
  })
})
