/**
 * Folding (src/ingest/groups.ts) against the reference: the same events applied one op per event
 * (compileRule, then node.apply, a refusal counted as a rejection) must leave every key of every
 * view with the same value and reject the same number of events per view. Random definitions and
 * events over small alphabets, so that keys collide, fields go missing, values are bad, counters
 * overflow and key parts holding "|" make one key from two parts.
 */
import { afterEach, describe, expect, it } from 'vitest'
import fc from 'fast-check'
import { openNode, type SpeedNode } from '../../src/node.js'
import { StoreError } from '../../src/store/viewStore.js'
import { ingestEvents } from '../../src/ingest/ingest.js'
import { compileRule } from '../../src/ingest/rules.js'
import { parseDefinition } from '../../src/store/definition.js'

const NOW = Date.UTC(2025, 5, 1, 12, 30, 0)
const DRIFT = 60_000
const MAX = Number.MAX_SAFE_INTEGER

let open: SpeedNode[] = []
afterEach(async () => {
  await Promise.all(open.map((n) => n.close()))
  open = []
})

async function node(id: string, views: Record<string, unknown>, maxOpElements: number): Promise<SpeedNode> {
  const n = await openNode({ id, views, now: () => NOW, maxDriftMs: DRIFT, limits: { maxOpElements }, log: () => {} })
  open.push(n)
  return n
}

/** The reference: one op per event and rule, in order; returns the rejections per view. */
async function oneByOne(n: SpeedNode, events: ReadonlyArray<Record<string, unknown>>): Promise<Record<string, number>> {
  const rules = n.views().flatMap((v) => {
    const r = compileRule(v.def, { maxDriftMs: DRIFT })
    return r ? [{ view: v.name, rule: r }] : []
  })
  const rejected: Record<string, number> = Object.fromEntries(rules.map((r) => [r.view, 0]))
  for (const e of events) {
    for (const { view, rule } of rules) {
      const out = rule(e, NOW)
      if ('skip' in out) continue
      if ('reject' in out) {
        rejected[view]!++
        continue
      }
      try {
        await n.apply(view, out.key, out.op)
      } catch (err) {
        if (!(err instanceof StoreError)) throw err
        rejected[view]!++
      }
    }
  }
  return rejected
}

function contents(n: SpeedNode): Record<string, Array<{ key: string; value: unknown }>> {
  const out: Record<string, Array<{ key: string; value: unknown }>> = {}
  for (const v of n.views()) out[v.name] = n.scan(v.name, { limit: 1000 }).items
  return out
}

let deep: unknown = 'x'
for (let i = 0; i < 40; i++) deep = [deep]

const text = fc.constantFrom('a', 'b', 'a|b', 'b|c', 'c', '.', '\uD800', 'x\uDC00y', '__proto__')
const amount = fc.oneof(fc.integer({ min: -3, max: 5 }), fc.constantFrom(MAX, MAX - 1, -MAX, -MAX + 1, 2 ** 52, 1.5))
const value = fc.oneof(text, amount, fc.constantFrom(null, true, [1, 'x'], { a: 1 }, deep, Infinity))
const time = fc.oneof(fc.integer({ min: NOW - 3 * 3_600_000, max: NOW + 2 * DRIFT }), fc.constantFrom(NOW - 1000, NOW - 1000, -1, 'x'))
/** An own field named "__proto__" (as JSON.parse makes one) is generated as P and renamed. */
const eventArb = fc.record({ kind: fc.constantFrom('pv', 'click'), k: text, j: text, t: time, v: value, w: value, P: value }, { requiredKeys: [] }).map((e) => {
  const out: Record<string, unknown> = { ...e }
  if ('P' in out) {
    Object.defineProperty(out, '__proto__', { value: out.P, enumerable: true, writable: true, configurable: true })
    delete out.P
  }
  return out
})

const defArb = fc.record({
  type: fc.constantFrom('gcounter', 'pncounter', 'orset', 'lwwmap', 'hll'),
  where: fc.boolean(),
  key: fc.constantFrom(['k'], ['k', 'j'], ['j', 'k']),
  bucket: fc.option(fc.constantFrom('1s', '1h'), { nil: undefined }),
  time: fc.boolean(),
  value: fc.constantFrom<string[] | undefined>(undefined, ['v'], ['v', 'w'], ['w', '__proto__']),
})

type Def = typeof defArb extends fc.Arbitrary<infer T> ? T : never

function definition(d: Def): unknown {
  const needsValue = d.type === 'orset' || d.type === 'hll' || d.type === 'lwwmap'
  const value = d.value === undefined ? (needsValue ? 'v' : undefined) : d.type === 'lwwmap' ? d.value : d.value[0]
  return parseDefinition({
    type: d.type,
    ingest: {
      key: d.key,
      ...(d.where ? { where: { kind: 'pv' } } : {}),
      ...(d.bucket ? { bucket: { time: 't', size: d.bucket } } : {}),
      ...(d.time ? { time: 't' } : {}),
      ...(value !== undefined ? { value } : {}),
    },
  })
}

describe('folded ingest', () => {
  it('property: same values and same rejections as one op per event', { timeout: 120_000 }, async () => {
    let run = 0
    await fc.assert(
      fc.asyncProperty(
        fc.array(defArb, { minLength: 1, maxLength: 4 }),
        fc.array(fc.array(eventArb, { maxLength: 40 }), { minLength: 1, maxLength: 3 }),
        fc.constantFrom(2, 3, 10_000),
        async (defs, batches, maxOpElements) => {
          const views = Object.fromEntries(defs.map((d, i) => [`v${i}`, definition(d)]))
          run++
          const folded = await node(`f${run}`, views, maxOpElements)
          const reference = await node(`f${run}`, views, maxOpElements)
          for (const events of batches) {
            const want = await oneByOne(reference, events)
            const got = await ingestEvents(folded, events)
            expect(got).toEqual({ accepted: events.length, rejected: want })
          }
          expect(contents(folded)).toEqual(contents(reference))
          await Promise.all([folded.close(), reference.close()])
          open = []
        },
      ),
      { numRuns: 300 },
    )
  })

  it('property: batches ingested at once (merged per key across requests, combine.ts) end as if ingested one after another', { timeout: 120_000 }, async () => {
    let run = 0
    await fc.assert(
      fc.asyncProperty(
        fc.array(defArb, { minLength: 1, maxLength: 4 }),
        fc.array(fc.array(eventArb, { maxLength: 30 }), { minLength: 2, maxLength: 5 }),
        fc.constantFrom(3, 10_000),
        async (defs, batches, maxOpElements) => {
          const views = Object.fromEntries(defs.map((d, i) => [`v${i}`, definition(d)]))
          run++
          const folded = await node(`c${run}`, views, maxOpElements)
          const reference = await node(`c${run}`, views, maxOpElements)
          const want: Array<Record<string, number>> = []
          for (const events of batches) want.push(await oneByOne(reference, events))
          const got = await Promise.all(batches.map((events) => ingestEvents(folded, events)))
          expect(got).toEqual(batches.map((events, i) => ({ accepted: events.length, rejected: want[i] })))
          expect(contents(folded)).toEqual(contents(reference))
          await Promise.all([folded.close(), reference.close()])
          open = []
        },
      ),
      { numRuns: 200 },
    )
  })

  it('requests that meet in a round are merged: one write per key and view for all of them', async () => {
    const n = await node('m', { pv: { type: 'gcounter', ingest: { key: ['u'] } }, s: { type: 'orset', ingest: { key: ['site'], value: 'u' } }, p: { type: 'lwwmap', ingest: { key: ['site'], value: ['u'], time: 't' } } }, 10_000)
    const batch = (k: number) => Array.from({ length: 100 }, (_, i) => ({ u: `/p${i % 10}`, site: 's', t: NOW - 1000 + k }))
    // The first is applied at once; the next three wait for its commit and are applied as one.
    const before = n.stats().writes
    const r = await Promise.all([0, 1, 2, 3].map((k) => ingestEvents(n, batch(k))))
    expect(r.every((x) => x.accepted === 100)).toBe(true)
    expect(n.stats().writes - before).toBe(12 * 2)
    expect(n.read('pv', '/p3').value).toBe(40)
    expect(n.read('p', 's').value).toEqual({ u: '/p9' })
  })

  it('a counter op the store refuses is replayed event by event: exactly the events that do not fit are rejected', async () => {
    const views = { c: { type: 'gcounter', ingest: { key: ['k'], value: 'n' } }, p: { type: 'pncounter', ingest: { key: ['k'], value: 'n' } } }
    const folded = await node('a', views, 10_000)
    const reference = await node('a', views, 10_000)
    const events = [{ k: 'x', n: MAX - 10 }, { k: 'x', n: 5 }, { k: 'x', n: 100 }, { k: 'x', n: 5 }, { k: 'x', n: 1 }]
    for (const batch of [events.slice(0, 1), events.slice(1)]) {
      const want = await oneByOne(reference, batch)
      expect(await ingestEvents(folded, batch)).toEqual({ accepted: batch.length, rejected: want })
    }
    expect(folded.read('c', 'x').value).toBe(MAX)
    expect(contents(folded)).toEqual(contents(reference))
    // Requests that meet in one round (the first is applied alone, the next three together):
    // their merged sum does not fit, so they go one at a time, and only the one that does not fit is refused.
    const round = [[{ k: 'z', n: MAX - 10 }], [{ k: 'z', n: 5 }], [{ k: 'z', n: 3 }, { k: 'z', n: 3 }], [{ k: 'z', n: 4 }]]
    const wants: Array<Record<string, number>> = []
    for (const b of round) wants.push(await oneByOne(reference, b))
    expect(wants.map((w) => w.c)).toEqual([0, 0, 1, 1])
    expect(await Promise.all(round.map((b) => ingestEvents(folded, b)))).toEqual(round.map((b, i) => ({ accepted: b.length, rejected: wants[i] })))
    expect(folded.read('c', 'z').value).toBe(MAX - 2)
    // pncounter: a running sum that leaves the range and comes back is not folded.
    const swing = [{ k: 'y', n: MAX }, { k: 'y', n: 1 }, { k: 'y', n: -2 }]
    const want = await oneByOne(reference, swing)
    expect(await ingestEvents(folded, swing)).toEqual({ accepted: 3, rejected: want })
    expect(want.p).toBe(1)
    expect(contents(folded)).toEqual(contents(reference))
  })

  it('folds: a batch of events on few keys makes one write per key and view', async () => {
    const n = await node('w', { pv: { type: 'gcounter', ingest: { key: ['u'] } }, s: { type: 'orset', ingest: { key: ['site'], value: 'u' } } }, 10_000)
    const events = Array.from({ length: 1000 }, (_, i) => ({ u: `/p${i % 10}`, site: 's' }))
    const before = n.stats().writes
    await ingestEvents(n, events)
    expect(n.stats().writes - before).toBe(11)
    expect(n.read('pv', '/p3').value).toBe(100)
    expect(n.read('s', 's').value).toEqual(Array.from({ length: 10 }, (_, i) => `/p${i}`).sort())
  })
})
