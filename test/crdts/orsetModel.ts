/**
 * What the OR-set tests share: the op generator, the ops validate must refuse, and a reference
 * model (the textbook tagged OR-set) with the property tests that compare the optimised set with
 * it. Files that run the same suites under other representations (orset.big.test.ts) call these.
 */
import { describe, expect, it } from 'vitest'
import fc from 'fast-check'
import { orset, type ORSetState } from '../../crdts/orset.js'
import type { OpContext } from '../../crdts/types.js'
import { historyArb, REPLICA_IDS, type Step } from '../laws/history.js'

// A small alphabet so that adds and removes collide; two non-BMP / high-BMP elements check that
// order is by UTF-16 code units (U+1F600 sorts before U+FF5A there, after it by code point), and
// a leading U+FEFF that the UTF-8 codec must not eat as a byte order mark.
export const elem = fc.constantFrom('a', 'b', 'c', 'd', 'e', '😀', 'ｚ', '\uFEFFa')
export const genOp = fc.oneof(
  { weight: 4, arbitrary: fc.record({ add: elem }) },
  { weight: 3, arbitrary: fc.record({ remove: elem }) },
  { weight: 1, arbitrary: fc.record({ add: fc.array(elem, { maxLength: 3 }) }) },
  { weight: 1, arbitrary: fc.record({ remove: fc.array(elem, { maxLength: 3 }) }) },
)

export const BAD_OPS: unknown[] = [
  null,
  'a',
  ['a'],
  {},
  { add: 1 },
  { add: [1] },
  { add: ['a', 2] },
  { add: [['a']] },
  { add: null },
  { add: { x: 'a' } },
  { add: 'a', remove: 'b' },
  { add: 'a', x: 1 },
  { inc: 1 },
  { add: '\uD800' },
  { add: 'x\uDC00y' },
  { remove: ['ok', 'a\uDFFF'] },
]

export const ctx = (replica: string): OpContext => ({ replica, time: { ts: 0, c: 0 } })
export const apply = (s: ORSetState, op: unknown, replica: string) => orset.apply(s, orset.validate(op), ctx(replica))
export const sync = (a: ORSetState, b: ORSetState) => {
  const a0 = orset.clone(a)
  orset.join(a, b)
  orset.join(b, a0)
}

/**
 * Reference model: the textbook OR-set with a unique tag per add and a tombstone per removed tag,
 * states joined by union. Its value must agree with the optimised one on every replica.
 */
interface Naive {
  adds: Map<string, string> // tag -> element
  removed: Set<string>
}
const naiveEmpty = (): Naive => ({ adds: new Map(), removed: new Set() })
const naiveValue = (s: Naive) => [...new Set([...s.adds].filter(([t]) => !s.removed.has(t)).map(([, e]) => e))].sort()
/**
 * An add supersedes the tags of the element that its replica has seen, as the optimised add
 * drops the element's old dots and ships them in its delta's context. Without this the models
 * differ when deltas go missing: a remove ships only the element's current dots, so a replica
 * that got the first add and the remove but not the re-add in between keeps the first add's
 * dot, which the naive remove (listing every tag it saw) would have removed.
 */
function supersede(seen: Naive, into: Naive, elems: readonly string[]) {
  for (const [t, e] of seen.adds) if (elems.includes(e) && !seen.removed.has(t)) into.removed.add(t)
}
function naiveJoin(into: Naive, other: Naive) {
  for (const [t, e] of other.adds) into.adds.set(t, e)
  for (const t of other.removed) into.removed.add(t)
}

/** The property tests against the reference model; `label` names the representation. */
export function naiveModelSuites(label = ''): void {
  describe(`orset${label}: agrees with a naive tagged OR-set`, () => {
    it('on every replica after random histories, and after a full exchange', () => {
      fc.assert(
        fc.property(historyArb(genOp, 3, 60), (h: Step[]) => {
          const opt = [orset.empty(), orset.empty(), orset.empty()]
          const naive = [naiveEmpty(), naiveEmpty(), naiveEmpty()]
          h.forEach((step, i) => {
            if (step.kind === 'sync') {
              if (step.from === step.to) return
              orset.join(opt[step.to]!, orset.clone(opt[step.from]!))
              naiveJoin(naive[step.to]!, naive[step.from]!)
              return
            }
            const replica = REPLICA_IDS[step.replica] as string
            const op = orset.validate(step.op)
            orset.apply(opt[step.replica]!, op, ctx(replica))
            const n = naive[step.replica]!
            if ('add' in op) {
              supersede(n, n, op.add)
              op.add.forEach((e, k) => n.adds.set(`${replica}:${i}:${k}`, e))
            } else for (const [t, e] of n.adds) if (op.remove.includes(e)) n.removed.add(t)
          })
          for (let r = 0; r < 3; r++) expect(orset.value(opt[r]!)).toEqual(naiveValue(naive[r]!))
          const all = orset.empty()
          const nall = naiveEmpty()
          for (let r = 0; r < 3; r++) {
            orset.join(all, opt[r]!)
            naiveJoin(nall, naive[r]!)
          }
          expect(orset.value(all)).toEqual(naiveValue(nall))
          // after a full exchange nothing is out of order any more
          expect(all.cloud).toEqual([])
        }),
        { numRuns: 300 },
      )
    })
  })

  type DeltaStep =
    | { kind: 'op'; replica: number; op: unknown }
    | { kind: 'deliver'; to: number; pick: number }
    | { kind: 'sync'; from: number; to: number }

  const deltaStepArb: fc.Arbitrary<DeltaStep> = fc.oneof(
    { weight: 3, arbitrary: fc.record({ kind: fc.constant('op' as const), replica: fc.nat(2), op: genOp }) },
    { weight: 3, arbitrary: fc.record({ kind: fc.constant('deliver' as const), to: fc.nat(2), pick: fc.nat(20) }) },
    { weight: 1, arbitrary: fc.record({ kind: fc.constant('sync' as const), from: fc.nat(2), to: fc.nat(2) }) },
  )

  describe(`orset${label}: agrees with the naive OR-set when replicas ship deltas`, () => {
    it('delivered in any order, some never, with occasional full syncs', () => {
      fc.assert(
        fc.property(fc.array(deltaStepArb, { maxLength: 80 }), (steps) => {
          const opt = [orset.empty(), orset.empty(), orset.empty()]
          const naive = [naiveEmpty(), naiveEmpty(), naiveEmpty()]
          const inbox: [ORSetState, Naive][][] = [[], [], []]
          steps.forEach((step, i) => {
            if (step.kind === 'sync') {
              if (step.from === step.to) return
              orset.join(opt[step.to]!, opt[step.from]!)
              naiveJoin(naive[step.to]!, naive[step.from]!)
            } else if (step.kind === 'deliver') {
              const box = inbox[step.to]!
              if (box.length === 0) return
              const [d, nd] = box.splice(step.pick % box.length, 1)[0]!
              orset.join(opt[step.to]!, d)
              naiveJoin(naive[step.to]!, nd)
            } else {
              const replica = REPLICA_IDS[step.replica] as string
              const op = orset.validate(step.op)
              const delta = orset.apply(opt[step.replica]!, op, ctx(replica))
              const n = naive[step.replica]!
              const nd = naiveEmpty()
              if ('add' in op) {
                supersede(n, nd, op.add)
                op.add.forEach((e, k) => nd.adds.set(`${replica}:${i}:${k}`, e))
              } else for (const [t, e] of n.adds) if (op.remove.includes(e) && !n.removed.has(t)) nd.removed.add(t)
              naiveJoin(n, nd)
              for (let t = 0; t < 3; t++) if (t !== step.replica) inbox[t]!.push([delta, nd])
            }
          })
          for (let r = 0; r < 3; r++) expect(orset.value(opt[r]!)).toEqual(naiveValue(naive[r]!))
          const all = orset.empty()
          const nall = naiveEmpty()
          for (let r = 0; r < 3; r++) {
            orset.join(all, opt[r]!)
            naiveJoin(nall, naive[r]!)
          }
          expect(orset.value(all)).toEqual(naiveValue(nall))
          expect(all.cloud).toEqual([])
        }),
        { numRuns: 300 },
      )
    })
  })
}
