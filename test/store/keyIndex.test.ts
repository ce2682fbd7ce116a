import { describe, expect, it } from 'vitest'
import fc from 'fast-check'
import { KeyIndex } from '../../src/store/keyIndex.js'

type Cmd = { kind: 'set'; key: string } | { kind: 'del'; key: string } | { kind: 'scan'; prefix: string; after?: string; limit: number }

const keyArb = fc.string({ unit: fc.constantFrom('a', 'b', 'c', '|', 'é', '😀'), maxLength: 4 })
const cmdArb: fc.Arbitrary<Cmd> = fc.oneof(
  { weight: 4, arbitrary: fc.record({ kind: fc.constant('set' as const), key: keyArb }) },
  { weight: 1, arbitrary: fc.record({ kind: fc.constant('del' as const), key: keyArb }) },
  {
    weight: 2,
    arbitrary: fc.record({ kind: fc.constant('scan' as const), prefix: fc.string({ unit: fc.constantFrom('a', 'b'), maxLength: 2 }), after: fc.option(keyArb, { nil: undefined }), limit: fc.integer({ min: 1, max: 5 }) }),
  },
)

describe('KeyIndex', () => {
  it('scans agree with a sorted model under random sets, deletes and scans', () => {
    fc.assert(
      fc.property(fc.array(cmdArb, { maxLength: 60 }), (cmds) => {
        const idx = new KeyIndex<number>()
        const model = new Map<string, number>()
        cmds.forEach((c, i) => {
          if (c.kind === 'set') {
            idx.set(c.key, i)
            model.set(c.key, i)
          } else if (c.kind === 'del') {
            expect(idx.delete(c.key)).toBe(model.delete(c.key))
          } else {
            const sorted = [...model.keys()].filter((k) => k.startsWith(c.prefix) && (c.after === undefined || k > c.after)).sort()
            const page = idx.scan({ prefix: c.prefix, after: c.after, limit: c.limit })
            expect(page.items.map((x) => x.key)).toEqual(sorted.slice(0, c.limit))
            expect(page.items.map((x) => x.value)).toEqual(sorted.slice(0, c.limit).map((k) => model.get(k)))
            expect(page.next).toBe(sorted.length > c.limit ? sorted[c.limit - 1] : null)
          }
          expect(idx.size).toBe(model.size)
        })
      }),
      { numRuns: 300 },
    )
  })

  it('paging with next visits every key under a prefix exactly once, in order', () => {
    const idx = new KeyIndex<number>()
    for (let i = 0; i < 1000; i++) idx.set(`k|${String(i * 7919 % 1000).padStart(4, '0')}`, i)
    idx.set('j', 0)
    idx.set('l', 0)
    const seen: string[] = []
    let after: string | undefined
    for (;;) {
      const page = idx.scan({ prefix: 'k|', after, limit: 64 })
      seen.push(...page.items.map((x) => x.key))
      if (page.next === null) break
      after = page.next
    }
    expect(seen.length).toBe(1000)
    expect([...seen].sort()).toEqual(seen)
    expect(new Set(seen).size).toBe(1000)
  })
})
