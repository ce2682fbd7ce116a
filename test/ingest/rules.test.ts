import { describe, expect, it } from 'vitest'
import fc from 'fast-check'
import { compileRule, type CompiledRule, type RuleOutcome } from '../../src/ingest/rules.js'
import { checkName, parseDefinition } from '../../src/store/definition.js'
import { crdtTypes } from '../../crdts/index.js'

const NOW = Date.UTC(2025, 5, 1, 12, 30, 0)
const DRIFT = 60_000
const HOUR = 3_600_000

function rule(def: unknown): CompiledRule {
  const r = compileRule(parseDefinition(def), { maxDriftMs: DRIFT })
  if (!r) throw new Error('no rule')
  return r
}

const pageviews = rule({ type: 'gcounter', ingest: { where: { kind: 'pageview' }, key: ['url'], bucket: { time: 'ts', size: '1h' } } })
const visitors = rule({ type: 'hll', ingest: { where: { kind: 'pageview' }, key: ['url'], bucket: { time: 'ts', size: '1h' }, value: 'user' } })
const online = rule({ type: 'orset', ingest: { where: { kind: 'pageview' }, key: ['site'], value: 'user' } })
const profiles = rule({ type: 'lwwmap', ingest: { key: ['user'], value: ['country', 'device', 'url'], time: 'ts' } })

const ev = (extra: Record<string, unknown> = {}) => ({ kind: 'pageview', url: '/docs', site: 'shop', user: 'u1', ts: NOW - 1000, country: 'DE', ...extra })

function rejected(out: RuleOutcome): string {
  if (!('reject' in out)) throw new Error(`expected a rejection, got ${JSON.stringify(out)}`)
  return out.reject
}

describe('compileRule', () => {
  it('a view without a rule compiles to null', () => {
    expect(compileRule(parseDefinition({ type: 'gcounter' }), { maxDriftMs: DRIFT })).toBeNull()
  })

  it('the demo rules turn a pageview into their ops', () => {
    const hour = new Date(Math.floor((NOW - 1000) / HOUR) * HOUR).toISOString()
    expect(hour).toBe('2025-06-01T12:00:00.000Z')
    expect(pageviews(ev(), NOW)).toEqual({ key: `/docs|${hour}`, op: { inc: 1 } })
    expect(visitors(ev(), NOW)).toEqual({ key: `/docs|${hour}`, op: { add: 'u1' } })
    expect(online(ev(), NOW)).toEqual({ key: 'shop', op: { add: 'u1' } })
    const p = profiles(ev(), NOW)
    expect(p).toEqual({ key: 'u1', op: { set: { country: 'DE', url: '/docs' }, ts: NOW - 1000 } })
  })

  it('where: equality on event fields; a filtered event is neither taken nor rejected', () => {
    expect(pageviews(ev({ kind: 'click' }), NOW)).toEqual({ skip: 'filtered' })
    const { kind: _kind, ...noKind } = ev()
    expect(pageviews(noKind, NOW)).toEqual({ skip: 'filtered' })
    // Filtering comes first: an event of another kind is not judged on the fields it lacks.
    expect(pageviews({ kind: 'click' }, NOW)).toEqual({ skip: 'filtered' })
    const typed = rule({ type: 'gcounter', ingest: { where: { ok: true, n: 1, x: null }, key: ['k'] } })
    expect(typed({ ok: true, n: 1, x: null, k: 'a' }, NOW)).toEqual({ key: 'a', op: { inc: 1 } })
    expect(typed({ ok: 'true', n: 1, x: null, k: 'a' }, NOW)).toEqual({ skip: 'filtered' })
    expect(typed({ ok: true, n: '1', x: null, k: 'a' }, NOW)).toEqual({ skip: 'filtered' })
    expect(typed({ ok: true, n: 1, k: 'a' }, NOW)).toEqual({ skip: 'filtered' })
  })

  it('key: fields joined with "|", numbers as String(n); missing or other types reject', () => {
    const r = rule({ type: 'gcounter', ingest: { key: ['a', 'b', 'c'] } })
    expect(r({ a: 'x', b: 12, c: -0.5 }, NOW)).toEqual({ key: 'x|12|-0.5', op: { inc: 1 } })
    expect(rejected(r({ a: 'x', b: 1 }, NOW))).toMatch(/missing key field "c"/)
    for (const bad of [true, null, [], {}, ['x']]) expect(rejected(r({ a: 'x', b: 1, c: bad }, NOW))).toMatch(/key field "c" must be a string or a number/)
  })

  it('fields are own properties only: Object.prototype is not an event field', () => {
    const r = rule({ type: 'orset', ingest: { key: ['constructor'], value: 'toString' } })
    expect(rejected(r({}, NOW))).toMatch(/missing key field "constructor"/)
    expect(rejected(r({ constructor: 'c' }, NOW))).toMatch(/missing element field "toString"/)
    const w = rule({ type: 'gcounter', ingest: { where: { hasOwnProperty: 'x' }, key: ['k'] } })
    expect(w({ k: 'a' }, NOW)).toEqual({ skip: 'filtered' })
  })

  it('the key must be a valid key: not ".", "..", over 1024 bytes or ill-formed UTF-16', () => {
    const r = rule({ type: 'gcounter', ingest: { key: ['k'] } })
    expect(rejected(r({ k: '.' }, NOW))).toMatch(/"\."/)
    expect(rejected(r({ k: '..' }, NOW))).toMatch(/"\."/)
    expect(rejected(r({ k: '' }, NOW))).toMatch(/empty/)
    expect(rejected(r({ k: 'x'.repeat(1025) }, NOW))).toMatch(/1024/)
    expect(r({ k: 'x'.repeat(1024) }, NOW)).toHaveProperty('key')
    expect(rejected(r({ k: 'a\uD800' }, NOW))).toMatch(/UTF-8/)
    // Two fields, each short, joined past the bound with the bucket suffix.
    const b = rule({ type: 'gcounter', ingest: { key: ['k'], bucket: { time: 't', size: '1d' } } })
    expect(b({ k: 'x'.repeat(1024 - 25), t: 0 }, NOW)).toEqual({ key: `${'x'.repeat(999)}|1970-01-01T00:00:00.000Z`, op: { inc: 1 } })
    expect(rejected(b({ k: 'x'.repeat(1024 - 24), t: 0 }, NOW))).toMatch(/1024/)
  })

  it('bucket: appends the ISO start of the bucket holding the time', () => {
    fc.assert(
      fc.property(fc.integer({ min: 0, max: NOW + DRIFT }), fc.constantFrom('1s', '15m', '1h', '1d', '7d'), (t, size) => {
        const r = rule({ type: 'gcounter', ingest: { key: ['k'], bucket: { time: 't', size } } })
        const out = r({ k: 'a', t }, NOW)
        if (!('key' in out)) throw new Error(JSON.stringify(out))
        const iso = out.key.slice(2)
        const start = Date.parse(iso)
        const ms = { s: 1000, m: 60_000, h: HOUR, d: 24 * HOUR }[size.slice(-1)]! * Number(size.slice(0, -1))
        expect(new Date(start).toISOString()).toBe(iso)
        expect(start % ms).toBe(0)
        expect(start).toBeLessThanOrEqual(t)
        expect(t).toBeLessThan(start + ms)
      }),
    )
  })

  it('time: a non-negative safe integer, at most --max-drift ahead; it defaults to bucket.time', () => {
    const bad = [-1, 1.5, '1700000000000', null, true, Number.MAX_SAFE_INTEGER + 1, [1], {}]
    for (const t of bad) expect(rejected(pageviews(ev({ ts: t }), NOW))).toMatch(/time field "ts" must be a non-negative integer/)
    const { ts: _ts, ...noTs } = ev()
    expect(rejected(pageviews(noTs, NOW))).toMatch(/missing time field "ts"/)
    expect(pageviews(ev({ ts: NOW + DRIFT }), NOW)).toHaveProperty('key')
    expect(rejected(pageviews(ev({ ts: NOW + DRIFT + 1 }), NOW))).toMatch(/ahead of the node's clock/)
    expect(rejected(profiles(ev({ ts: NOW + DRIFT + 1 }), NOW))).toMatch(/ahead/)
    // Old events are fine, down to the epoch.
    expect(pageviews(ev({ ts: 0 }), NOW)).toEqual({ key: '/docs|1970-01-01T00:00:00.000Z', op: { inc: 1 } })
    // A time field that differs from the bucket's: both must be usable.
    const two = rule({ type: 'lwwmap', ingest: { key: ['k'], bucket: { time: 'b', size: '1h' }, time: 't', value: 'v' } })
    expect(two({ k: 'a', b: 0, t: 5, v: 1 }, NOW)).toEqual({ key: 'a|1970-01-01T00:00:00.000Z', op: { set: { v: 1 }, ts: 5 } })
    expect(rejected(two({ k: 'a', b: 0, v: 1 }, NOW))).toMatch(/"t"/)
    expect(rejected(two({ k: 'a', t: 0, v: 1 }, NOW))).toMatch(/"b"/)
    // A time without a bucket on a counter: checked, but not part of the op.
    const timed = rule({ type: 'gcounter', ingest: { key: ['k'], time: 't' } })
    expect(timed({ k: 'a', t: 1 }, NOW)).toEqual({ key: 'a', op: { inc: 1 } })
    expect(rejected(timed({ k: 'a' }, NOW))).toMatch(/missing time field "t"/)
  })

  it('counters: the amount is 1, or a named field holding a safe integer (>= 0 for gcounter)', () => {
    const g = rule({ type: 'gcounter', ingest: { key: ['k'], value: 'n' } })
    const pn = rule({ type: 'pncounter', ingest: { key: ['k'], value: 'n' } })
    expect(g({ k: 'a', n: 5 }, NOW)).toEqual({ key: 'a', op: { inc: 5 } })
    expect(g({ k: 'a', n: 0 }, NOW)).toEqual({ key: 'a', op: { inc: 0 } })
    expect(rejected(g({ k: 'a', n: -1 }, NOW))).toMatch(/>= 0/)
    expect(pn({ k: 'a', n: -7 }, NOW)).toEqual({ key: 'a', op: { inc: -7 } })
    for (const n of [1.5, '3', null, Number.MAX_SAFE_INTEGER + 1, true]) {
      expect(rejected(g({ k: 'a', n }, NOW))).toMatch(/amount field "n" must be a safe integer/)
      expect(rejected(pn({ k: 'a', n }, NOW))).toMatch(/amount field "n" must be a safe integer/)
    }
    expect(rejected(g({ k: 'a' }, NOW))).toMatch(/missing amount field "n"/)
    expect(rule({ type: 'pncounter', ingest: { key: ['k'] } })({ k: 'a' }, NOW)).toEqual({ key: 'a', op: { inc: 1 } })
  })

  it('orset and hll: the element is a string, or a number as String(n)', () => {
    for (const type of ['orset', 'hll']) {
      const r = rule({ type, ingest: { key: ['k'], value: 'e' } })
      expect(r({ k: 'a', e: 'x' }, NOW)).toEqual({ key: 'a', op: { add: 'x' } })
      expect(r({ k: 'a', e: 42 }, NOW)).toEqual({ key: 'a', op: { add: '42' } })
      expect(r({ k: 'a', e: '' }, NOW)).toEqual({ key: 'a', op: { add: '' } })
      for (const e of [null, true, ['x'], { x: 1 }]) expect(rejected(r({ k: 'a', e }, NOW))).toMatch(/element field "e" must be a string or a number/)
      expect(rejected(r({ k: 'a' }, NOW))).toMatch(/missing element field "e"/)
    }
  })

  it('lwwmap: sets the named fields present (any JSON, null included); none present rejects', () => {
    expect(profiles(ev({ device: null, url: { a: [1] } }), NOW)).toEqual({ key: 'u1', op: { set: { country: 'DE', device: null, url: { a: [1] } }, ts: NOW - 1000 } })
    expect(rejected(profiles({ user: 'u1', ts: 1 }, NOW))).toMatch(/none of the fields "country", "device", "url" is present/)
    // Without a time, the node's clock stamps the write: no ts in the op.
    const untimed = rule({ type: 'lwwmap', ingest: { key: ['k'], value: 'v' } })
    expect(untimed({ k: 'a', v: 1, ts: 5 }, NOW)).toEqual({ key: 'a', op: { set: { v: 1 } } })
    // A field named __proto__ is a field, not a prototype.
    const proto = rule({ type: 'lwwmap', ingest: { key: ['k'], value: ['__proto__'] } })
    const out = proto(JSON.parse('{"k": "a", "__proto__": {"polluted": 1}}') as Record<string, unknown>, NOW)
    if (!('op' in out)) throw new Error(JSON.stringify(out))
    const set = out.op.set as Record<string, unknown>
    expect(Object.keys(set)).toEqual(['__proto__'])
    expect(crdtTypes.lwwmap.validate(out.op)).toBeTruthy()
    expect(({} as Record<string, unknown>).polluted).toBeUndefined()
  })

  const field = fc.constantFrom('k', 'j', 't', 'v', 'kind')
  const scalar = fc.oneof(fc.string({ maxLength: 6 }), fc.integer({ min: -5, max: NOW + 2 * DRIFT }), fc.double({ noNaN: true, noDefaultInfinity: true }), fc.boolean(), fc.constant(null))
  const eventArb = fc.dictionary(field, fc.oneof(scalar, fc.array(scalar, { maxLength: 2 }), fc.dictionary(fc.string({ maxLength: 3 }), scalar, { maxKeys: 2 })))
  const defArb = fc.record({
    type: fc.constantFrom('gcounter', 'pncounter', 'orset', 'lwwmap', 'hll'),
    where: fc.option(fc.dictionary(fc.constant('kind'), fc.constantFrom('a', 1), { minKeys: 1 }), { nil: undefined }),
    key: fc.uniqueArray(fc.constantFrom('k', 'j'), { minLength: 1, maxLength: 2 }),
    bucket: fc.option(fc.constantFrom('1s', '1h', '1d'), { nil: undefined }),
    time: fc.option(fc.constant('t'), { nil: undefined }),
    value: fc.option(fc.constantFrom('v', 'j'), { nil: undefined }),
  })

  it('property: every outcome is filtered, a rejection with a reason, or a valid key and an op the type accepts', () => {
    fc.assert(
      fc.property(defArb, eventArb, (d, event) => {
        const value = d.value ?? (d.type === 'orset' || d.type === 'hll' || d.type === 'lwwmap' ? 'v' : undefined)
        const def = parseDefinition({
          type: d.type,
          ingest: { key: d.key, ...(d.where ? { where: d.where } : {}), ...(d.bucket ? { bucket: { time: 't', size: d.bucket } } : {}), ...(d.time ? { time: d.time } : {}), ...(value ? { value } : {}) },
        })
        const r = compileRule(def, { maxDriftMs: DRIFT })!
        const out = r(event, NOW)
        if ('skip' in out) {
          expect(d.where).toBeDefined()
          return
        }
        if ('reject' in out) {
          expect(out.reject.length).toBeGreaterThan(0)
          return
        }
        expect(checkName(out.key, 'key')).toBeNull()
        expect(() => crdtTypes[d.type].validate(out.op)).not.toThrow()
        // Deterministic: the same event and clock give the same outcome.
        expect(r(event, NOW)).toEqual(out)
        if (d.bucket || d.time) {
          const t = event.t as number
          expect(Number.isSafeInteger(t) && t >= 0 && t <= NOW + DRIFT).toBe(true)
          if (d.type === 'lwwmap') expect(out.op.ts).toBe(t)
        }
      }),
      { numRuns: 2000 },
    )
  })
})
