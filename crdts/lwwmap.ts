/**
 * LWW map: a map of fields, each a last-writer-wins register stamped (ts, c, replica). Per field
 * the register with the highest stamp wins; a delete is a register too (a stamped tombstone), so a
 * delete beats an older concurrent set, and a later set brings the field back.
 *
 * Stamps. Without an explicit `ts` a write is stamped with the node's HLC reading (`ctx.time`,
 * see crdts/hlc.ts) and the acting replica. A write is causally after whatever this replica
 * already holds for that field, so it must beat it even if the clock reading does not: when the
 * reading is not above the field's current stamp, the write takes (current.ts, current.c + 1).
 * With an explicit `ts` (event time) the stamp is (ts, c, replica) where c is 0 if ts is newer than
 * the field's current ts, current.c + 1 if it is equal (a later write of the same event time wins
 * locally), and 0 if it is older: the latest event wins, whatever the arrival order, so an older
 * event arriving later loses (and is left out of the delta, as it changes nothing).
 *
 * State: a plain array of registers sorted by field name (UTF-16 code units), not a Map: a
 * realtime view holds millions of small maps of ~10 fields; an array of small objects costs a
 * fraction of a Map per key, a binary search over 10 entries is as fast as hashing, and the
 * sorted order is what the encoder and `value()` need anyway. Values are held as their canonical
 * JSON text (one string per field instead of a tree of objects), parsed back only on reads.
 *
 * Format v1 (canonical; the decoder refuses anything the encoder would not write):
 *   version byte 1
 *   replica table: varUint n, n × varString, strictly ascending, each referenced by a field
 *   varUint m, then m fields, names strictly ascending:
 *     name varString, kind byte (0 tombstone, 1 value), ts varUint, c varUint,
 *     replica index varUint (into the table), and for kind 1 the JSON text as varString, which
 *     must be exactly JSON.stringify(JSON.parse(text)) and nest at most MAX_JSON_DEPTH levels.
 */
import * as encoding from 'lib0/encoding'
import * as decoding from 'lib0/decoding'
import { CrdtDecodeError, CrdtOpError, type CrdtType, type OpContext, type Timestamp } from './types.js'
import { compareStrings, fail, guarded, readCount, readSortedStrings, readString, readUint, readVersion, remaining, writeVersion } from './codec.js'
import { compareStamps, compareTimestamps } from './hlc.js'
import { isPlainObject, opVerb, safeUint } from './validate.js'

/** One field: a last-writer-wins register. Owned by its state and changed in place. */
export interface Register {
  /** Field name. */
  f: string
  /** Canonical JSON text of the value, or null for a delete tombstone. */
  v: string | null
  ts: number
  c: number
  /** Replica that wrote it. */
  r: string
}

/** Registers sorted by field name, strictly ascending. */
export type LWWMapState = Register[]

/** A validated op: a set and a delete are both writes of registers. */
export interface LWWMapOp {
  /** Fields written, strictly ascending. */
  readonly fields: readonly string[]
  /** Per field: the canonical JSON text to set, or null to delete. */
  readonly values: readonly (string | null)[]
  /** Event time in ms, if the op carries one. */
  readonly ts?: number
}

/**
 * Values nest at most this many arrays/objects deep. JSON.stringify and the reads that parse
 * values back are recursive: a hostile op (or peer) must not be able to blow the stack later.
 */
export const MAX_JSON_DEPTH = 32

const NAME = 'lwwmap'

/** Index of field `f`, or -(insertion point) - 1. */
function find(state: LWWMapState, f: string): number {
  let lo = 0
  let hi = state.length - 1
  while (lo <= hi) {
    const mid = (lo + hi) >>> 1
    const x = (state[mid] as Register).f
    if (x < f) lo = mid + 1
    else if (x > f) hi = mid - 1
    else return mid
  }
  return -lo - 1
}

const copy = (g: Register): Register => ({ f: g.f, v: g.v, ts: g.ts, c: g.c, r: g.r })

/**
 * The total order that join takes the maximum of. Equal stamps with different contents only
 * come from corrupt or hostile input; ordering them by content (tombstone first, then JSON text)
 * keeps join commutative even then.
 */
function compareRegisters(a: Register, b: Register): number {
  const s = compareStamps(a, b)
  if (s !== 0 || a.v === b.v) return s
  if (a.v === null) return -1
  if (b.v === null) return 1
  return compareStrings(a.v, b.v)
}

/** Lone surrogates cannot be written as UTF-8: such a field name would not survive the codec. */
const LONE_SURROGATE = /[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/

/**
 * Why `x` is not a JSON value that round-trips through JSON.stringify, or null if it is.
 * `depth` counts the arrays/objects enclosing `x`; recursion stops at MAX_JSON_DEPTH, so a cycle
 * or a hostile nesting is refused in bounded time and stack.
 */
function notJson(x: unknown, depth: number): string | null {
  switch (typeof x) {
    case 'string':
    case 'boolean':
      return null
    case 'number':
      return Number.isFinite(x) ? null : `${x} is not a JSON number`
    case 'object': {
      if (x === null) return null
      if (depth >= MAX_JSON_DEPTH) return `values nest at most ${MAX_JSON_DEPTH} levels deep`
      if (Array.isArray(x)) {
        if (Object.getPrototypeOf(x) !== Array.prototype) return 'not a plain array'
        for (let i = 0; i < x.length; i++) {
          if (!(i in x)) return 'a sparse array is not JSON'
          const why = notJson(x[i], depth + 1)
          if (why !== null) return why
        }
        return null
      }
      if (!isPlainObject(x)) return 'not a plain object'
      for (const k of Object.keys(x)) {
        const why = notJson(x[k], depth + 1)
        if (why !== null) return why
      }
      return null
    }
    default:
      return `${typeof x} is not JSON`
  }
}

function checkStamp(ts: number, c: number): void {
  if (!Number.isSafeInteger(ts) || ts < 0 || !Number.isSafeInteger(c) || c < 0) {
    throw new CrdtOpError(NAME, `stamp (${ts}, ${c}) is not a pair of safe integers >= 0`)
  }
}

/** Sets `out[f] = value` even for f = "__proto__", which plain assignment would turn into a prototype change. */
function define(out: Record<string, unknown>, f: string, value: unknown): void {
  if (f === '__proto__') Object.defineProperty(out, f, { value, enumerable: true, writable: true, configurable: true })
  else out[f] = value
}

/**
 * Drops, in place, the tombstones whose (ts, c) is below `stableBefore`; returns how many.
 *
 * A tombstone exists only to beat writes of that field stamped below it that some replica has not
 * yet seen. The caller must pass a causally stable stamp: every replica has acknowledged having
 * received every write stamped below it, and every replica's clock has passed it, so no replica
 * will ever again create a write stamped below it. Then every write a collected tombstone could
 * beat has already met it (or a later write) everywhere and lost, and none can still arrive, so
 * dropping it changes no value anywhere. With any later stamp it is unsafe: a set stamped below
 * the tombstone that is still in flight (or on a partitioned replica) would arrive to find no
 * tombstone and bring a deleted field back, and replicas would disagree forever.
 *
 * Event-time writes choose their own `ts`, so clocks alone cannot rule them out: the caller must
 * also refuse (or restamp) writes whose explicit `ts` is below `stableBefore`, or an event older
 * than the collected delete would resurrect the field. Replicas should collect at the same stable
 * stamps: until they all do, their states differ in bytes (not in values), which anti-entropy
 * digests will notice and ship; the shipped tombstones join back in harmlessly and are dropped
 * again by the next collection.
 */
export function collectTombstones(state: LWWMapState, stableBefore: Timestamp): number {
  let w = 0
  for (let i = 0; i < state.length; i++) {
    const g = state[i] as Register
    if (g.v === null && compareTimestamps(g, stableBefore) < 0) continue
    state[w++] = g
  }
  const dropped = state.length - w
  state.length = w
  return dropped
}

/** Joins a sorted, distinct `other` into `into` in place, in O(|into| + |other|). */
function joinRegisters(into: LWWMapState, other: LWWMapState): boolean {
  let changed = false
  let missing = 0
  const n = into.length
  let i = 0
  for (const o of other) {
    while (i < n && (into[i] as Register).f < o.f) i++
    const cur = into[i]
    if (cur !== undefined && cur.f === o.f) {
      if (compareRegisters(o, cur) > 0) {
        cur.v = o.v
        cur.ts = o.ts
        cur.c = o.c
        cur.r = o.r
        changed = true
      }
      i++
    } else missing++
  }
  if (missing === 0) return changed
  // Grow by `missing` slots, then merge from the back so that nothing is moved twice.
  for (let k = 0; k < missing; k++) into.push(other[0] as Register)
  let a = n - 1
  let w = n + missing - 1
  for (let j = other.length - 1; j >= 0 && w > a; j--) {
    const o = other[j] as Register
    while (a >= 0 && (into[a] as Register).f > o.f) into[w--] = into[a--] as Register
    if (a >= 0 && (into[a] as Register).f === o.f) into[w--] = into[a--] as Register
    else into[w--] = copy(o)
  }
  return true
}

function distinctReplicas(state: LWWMapState): string[] {
  const ids: string[] = []
  for (const g of state) if (!ids.includes(g.r)) ids.push(g.r)
  return ids.sort(compareStrings)
}

function readByte(dec: decoding.Decoder): number {
  if (remaining(dec) < 1) fail(dec, NAME, 'unexpected end of input')
  return decoding.readUint8(dec)
}

function readJsonText(dec: decoding.Decoder): string {
  const at = dec.pos
  const text = readString(dec, NAME)
  let parsed: unknown
  try {
    parsed = JSON.parse(text)
  } catch {
    throw new CrdtDecodeError(NAME, at, 'value is not JSON')
  }
  const why = notJson(parsed, 0)
  if (why !== null) throw new CrdtDecodeError(NAME, at, why)
  if (JSON.stringify(parsed) !== text) throw new CrdtDecodeError(NAME, at, 'value is not canonical JSON text')
  return text
}

export const lwwmap: CrdtType<LWWMapState, LWWMapOp, Record<string, unknown>> = {
  name: NAME,
  empty: () => [],

  apply(state: LWWMapState, op: LWWMapOp, ctx: OpContext): LWWMapState {
    const r = ctx.replica
    const now = ctx.time
    checkStamp(now.ts, now.c)
    const delta: Register[] = []
    // Stamp every field first: nothing changes if one of them cannot be stamped.
    for (let i = 0; i < op.fields.length; i++) {
      const f = op.fields[i] as string
      const v = op.values[i] as string | null
      const at = find(state, f)
      const cur = at >= 0 ? (state[at] as Register) : undefined
      let ts: number
      let c: number
      if (op.ts === undefined) {
        if (cur === undefined || now.ts > cur.ts || (now.ts === cur.ts && (now.c > cur.c || (now.c === cur.c && r > cur.r)))) {
          ts = now.ts
          c = now.c
        } else {
          ts = cur.ts
          c = cur.c + 1
        }
      } else {
        ts = op.ts
        if (cur === undefined || ts > cur.ts) c = 0
        else if (ts === cur.ts) c = cur.c + 1
        else continue // an older event: it loses to what is there and changes nothing
      }
      checkStamp(ts, c)
      delta.push({ f, v, ts, c, r })
    }
    for (const g of delta) {
      const at = find(state, g.f)
      if (at >= 0) {
        const cur = state[at] as Register
        cur.v = g.v
        cur.ts = g.ts
        cur.c = g.c
        cur.r = g.r
      } else state.splice(-at - 1, 0, copy(g))
    }
    return delta
  },

  join: joinRegisters,

  value(state: LWWMapState): Record<string, unknown> {
    const out: Record<string, unknown> = {}
    for (const g of state) if (g.v !== null) define(out, g.f, JSON.parse(g.v))
    return out
  },

  clone: (state) => state.map(copy),

  encode(enc, state) {
    writeVersion(enc)
    const ids = distinctReplicas(state)
    encoding.writeVarUint(enc, ids.length)
    for (const id of ids) encoding.writeVarString(enc, id)
    const index = ids.length > 8 ? new Map(ids.map((id, i) => [id, i])) : null
    encoding.writeVarUint(enc, state.length)
    for (const g of state) {
      encoding.writeVarString(enc, g.f)
      encoding.writeUint8(enc, g.v === null ? 0 : 1)
      encoding.writeVarUint(enc, g.ts)
      encoding.writeVarUint(enc, g.c)
      encoding.writeVarUint(enc, index === null ? ids.indexOf(g.r) : (index.get(g.r) as number))
      if (g.v !== null) encoding.writeVarString(enc, g.v)
    }
  },

  decode(dec) {
    return guarded(NAME, dec, () => {
      readVersion(dec, NAME)
      const ids = readSortedStrings(dec, NAME, 'replicas')
      const used = new Uint8Array(ids.length)
      // name length, kind, ts, c and replica index take at least one byte each
      const n = readCount(dec, NAME, 5)
      const state: Register[] = []
      for (let i = 0; i < n; i++) {
        const at = dec.pos
        const f = readString(dec, NAME)
        const prev = state[i - 1]
        if (prev !== undefined && !(prev.f < f)) throw new CrdtDecodeError(NAME, at, 'fields not in ascending order')
        const kindAt = dec.pos
        const kind = readByte(dec)
        if (kind > 1) throw new CrdtDecodeError(NAME, kindAt, `unknown register kind ${kind}`)
        const ts = readUint(dec, NAME)
        const c = readUint(dec, NAME)
        const idxAt = dec.pos
        const idx = readUint(dec, NAME)
        if (idx >= ids.length) throw new CrdtDecodeError(NAME, idxAt, `replica index ${idx} out of range`)
        used[idx] = 1
        const v = kind === 1 ? readJsonText(dec) : null
        state.push({ f, v, ts, c, r: ids[idx] as string })
      }
      if (used.includes(0)) fail(dec, NAME, 'a replica in the table is not referenced')
      return state
    })
  },

  validate(op: unknown): LWWMapOp {
    const verb = opVerb(NAME, op, ['set', 'delete'], ['ts'])
    const o = op as Record<string, unknown>
    const ts = Object.prototype.hasOwnProperty.call(o, 'ts') ? safeUint(NAME, 'ts', o.ts) : undefined
    const raw = o[verb]
    let fields: string[]
    let values: (string | null)[]
    if (verb === 'set') {
      if (!isPlainObject(raw)) throw new CrdtOpError(NAME, '"set" must be an object of fields')
      fields = Object.keys(raw).sort(compareStrings)
      values = fields.map((f) => {
        const why = notJson(raw[f], 0)
        if (why !== null) throw new CrdtOpError(NAME, `field ${JSON.stringify(f)}: ${why}`)
        return JSON.stringify(raw[f])
      })
    } else {
      if (!Array.isArray(raw) || !raw.every((f) => typeof f === 'string')) {
        throw new CrdtOpError(NAME, '"delete" must be an array of field names')
      }
      fields = [...new Set(raw as string[])].sort(compareStrings)
      values = fields.map(() => null)
    }
    for (const f of fields) {
      if (LONE_SURROGATE.test(f)) throw new CrdtOpError(NAME, `field name ${JSON.stringify(f)} is not well-formed UTF-16`)
    }
    return ts === undefined ? { fields, values } : { fields, values, ts }
  },
}
