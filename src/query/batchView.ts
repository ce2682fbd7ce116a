/**
 * A batch view: the batch layer's exact results for one bucketed view up to a horizon T, imported
 * whole (CONTRACT.md, `PUT /batch/:view?horizon=T`). Pure data, its validation, its lib0 codec and
 * its join; no I/O (batchViews.ts keeps them per node).
 *
 * The join (DESIGN.md, "Expiry is a join too"): batch views of one view are totally ordered by
 * (horizon, stamp) and the join keeps the greater one whole, so it is commutative, associative
 * and idempotent. The stamp is an HLC reading and the importing replica, unique per import: two
 * imports with one horizon (a corrected re-run of the batch job) resolve to the same one
 * everywhere, and one replica's later import beats whatever it held (see batchViews.ts).
 *
 * Values, per view type (what a line's "value" may be):
 *   gcounter   a safe integer >= 0 (the count)
 *   pncounter  a safe integer
 *   orset      an array of distinct strings (the members)
 *   lwwmap     an object of field -> JSON value (the live fields)
 *   hll        an array of distinct strings (the exact set of elements: a range query can union
 *              it with other buckets exactly, and with realtime sketches), or a safe integer >= 0
 *              (an exact count: enough for point queries, not for range unions)
 *
 * Format v1 (canonical; the decoder refuses anything the encoder would not write):
 *   version byte 1
 *   view varString, type uint8 (gcounter 0, pncounter 1, orset 2, lwwmap 3, hll 4),
 *   bucket size ms varUint (> 0), horizon varUint,
 *   stamp: ts varUint, c varUint, replica varString (non-empty),
 *   n varUint, then n entries in strictly ascending key order (UTF-16 code units):
 *     key varString: a bucketed key (see buckets.ts) of a bucket aligned to the size that ends at
 *       or before the horizon, then the value:
 *     gcounter   varUint
 *     pncounter  sign uint8 (0 or 1), magnitude varUint (sign 1 only with magnitude > 0)
 *     orset      varUint m, m strings strictly ascending
 *     lwwmap     varUint m, m × (field varString strictly ascending, JSON text varString that is
 *                exactly JSON.stringify(JSON.parse(text)), nesting at most MAX_JSON_DEPTH)
 *     hll        form uint8: 0 then the count varUint; 1 then varUint m, m strings strictly ascending
 */
import * as encoding from 'lib0/encoding'
import * as decoding from 'lib0/decoding'
import { lwwmap, type TypeName } from '../../crdts/index.js'
import { CrdtDecodeError, CrdtOpError } from '../../crdts/types.js'
import { compareStamps, type Stamp } from '../../crdts/hlc.js'
import { MAX_JSON_DEPTH } from '../../crdts/lwwmap.js'
import { fail, guarded, readByte, readCount, readSortedStrings, readString, readUint, readVersion, writeVersion } from '../../crdts/codec.js'
import { isPlainObject } from '../../crdts/validate.js'
import { checkName, isWellFormed } from '../store/definition.js'
import { bucketStartOf, isCovered } from './buckets.js'

/** An lwwmap value: the fields in ascending order and each value's canonical JSON text. */
export interface BatchMap {
  readonly fields: readonly string[]
  readonly texts: readonly string[]
}

/** number: counters and hll counts; string[]: orset members and hll elements; BatchMap: lwwmap. */
export type BatchValue = number | readonly string[] | BatchMap

export interface BatchView {
  readonly view: string
  readonly type: TypeName
  /** Bucket size (ms) of the view it was imported for. */
  readonly sizeMs: number
  /** ms since the epoch: every bucket ending at or before it is exact here. */
  readonly horizon: number
  readonly stamp: Stamp
  /** key -> value, inserted in ascending key order. */
  readonly entries: ReadonlyMap<string, BatchValue>
  /** The keys in ascending order (UTF-16 code units), for prefix scans. */
  readonly keys: readonly string[]
}

const NAME = 'batch view'
const TYPES: readonly TypeName[] = ['gcounter', 'pncounter', 'orset', 'lwwmap', 'hll']

/** A value or key a batch view cannot hold; the message says what to fix. */
export class BatchValueError extends Error {
  override readonly name = 'BatchValueError'
}

function describe(v: unknown): string {
  if (v === null) return 'null'
  if (Array.isArray(v)) return 'an array'
  if (typeof v === 'object') return 'an object'
  const s = JSON.stringify(v)
  return s.length > 40 ? `${s.slice(0, 40)}...` : s
}

function distinctStrings(what: string, raw: unknown): string[] {
  if (!Array.isArray(raw)) throw new BatchValueError(`${what} must be an array of strings, got ${describe(raw)}`)
  const out: string[] = []
  for (const e of raw) {
    if (typeof e !== 'string') throw new BatchValueError(`${what} must be an array of strings, got an element ${describe(e)}`)
    if (!isWellFormed(e)) throw new BatchValueError(`${what}: element ${describe(e)} is not well-formed UTF-16`)
    out.push(e)
  }
  out.sort()
  for (let i = 1; i < out.length; i++) {
    if (out[i] === out[i - 1]) throw new BatchValueError(`${what}: element ${describe(out[i])} is listed twice`)
  }
  return out
}

/** Checks a line's "value" for a view of `type`; throws BatchValueError saying what is wrong. */
export function validateBatchValue(type: TypeName, raw: unknown): BatchValue {
  switch (type) {
    case 'gcounter':
      if (typeof raw !== 'number' || !Number.isSafeInteger(raw) || raw < 0) throw new BatchValueError(`a gcounter value must be a safe integer >= 0, got ${describe(raw)}`)
      return raw === 0 ? 0 : raw // -0 would not survive the codec
    case 'pncounter':
      if (typeof raw !== 'number' || !Number.isSafeInteger(raw)) throw new BatchValueError(`a pncounter value must be a safe integer, got ${describe(raw)}`)
      return raw === 0 ? 0 : raw
    case 'orset':
      return distinctStrings('an orset value', raw)
    case 'hll':
      if (typeof raw === 'number') {
        if (!Number.isSafeInteger(raw) || raw < 0) throw new BatchValueError(`an hll value must be an array of distinct elements or an exact count >= 0, got ${describe(raw)}`)
        return raw === 0 ? 0 : raw
      }
      if (!Array.isArray(raw)) throw new BatchValueError(`an hll value must be an array of distinct elements (or an exact count), got ${describe(raw)}`)
      return distinctStrings('an hll value', raw)
    case 'lwwmap': {
      if (!isPlainObject(raw)) throw new BatchValueError(`an lwwmap value must be an object of fields, got ${describe(raw)}`)
      try {
        const op = lwwmap.validate({ set: raw })
        return { fields: op.fields, texts: op.values as string[] }
      } catch (err) {
        if (err instanceof CrdtOpError) throw new BatchValueError(`an lwwmap value: ${err.message.replace(/^lwwmap: /, '')}`)
        throw err
      }
    }
  }
}

/**
 * Checks a key of a batch view: a valid key naming a bucket aligned to `sizeMs` that ends at or
 * before `horizon` (a later bucket is the realtime view's to answer). Returns the error or null.
 */
export function checkBatchKey(key: string, sizeMs: number, horizon: number): string | null {
  const bad = checkName(key, 'the key')
  if (bad) return bad
  const start = bucketStartOf(key)
  if (Number.isNaN(start)) return `key ${describe(key)} is not a bucket key ("<fields>|<ISO bucket start>", e.g. "home|2025-06-01T10:00:00.000Z")`
  if (start % sizeMs !== 0) return `key ${describe(key)} names a bucket that does not start on a multiple of the view's bucket size (${sizeMs} ms)`
  if (!isCovered(start, sizeMs, horizon)) return `key ${describe(key)} names a bucket that ends after the horizon ${new Date(horizon).toISOString()}; realtime answers it`
  return null
}

/** What a point query shows for a batch value: the type's value form (hll: the exact count). */
export function batchValueOut(type: TypeName, v: BatchValue): unknown {
  if (type === 'hll') return typeof v === 'number' ? v : (v as readonly string[]).length
  if (type === 'lwwmap') return mapObject(v as BatchMap)
  if (type === 'orset') return [...(v as readonly string[])]
  return v
}

/** The lwwmap value as an object; no prototype, so a field "__proto__" is a field like any other. */
export function mapObject(m: BatchMap): Record<string, unknown> {
  const out = Object.create(null) as Record<string, unknown>
  for (let i = 0; i < m.fields.length; i++) out[m.fields[i] as string] = JSON.parse(m.texts[i] as string) as unknown
  return out
}

/** The type's empty value: what a covered bucket missing from the batch view holds. */
export function emptyBatchValue(type: TypeName): BatchValue {
  return type === 'gcounter' || type === 'pncounter' || type === 'hll' ? 0 : type === 'lwwmap' ? { fields: [], texts: [] } : []
}

/** Orders batch views of one view: horizon first, then the import's stamp. */
export function compareBatchViews(a: Pick<BatchView, 'horizon' | 'stamp'>, b: Pick<BatchView, 'horizon' | 'stamp'>): number {
  if (a.horizon !== b.horizon) return a.horizon < b.horizon ? -1 : 1
  return compareStamps(a.stamp, b.stamp)
}

/** The join: the greater batch view, whole. */
export function joinBatchViews(a: BatchView, b: BatchView): BatchView {
  return compareBatchViews(a, b) >= 0 ? a : b
}

/** Builds a batch view from validated entries (any order); throws BatchValueError on a duplicate key. */
export function makeBatchView(fields: Omit<BatchView, 'entries' | 'keys'>, entries: Iterable<readonly [string, BatchValue]>): BatchView {
  const list = [...entries].sort((x, y) => (x[0] < y[0] ? -1 : x[0] > y[0] ? 1 : 0))
  for (let i = 1; i < list.length; i++) {
    if ((list[i] as [string, BatchValue])[0] === (list[i - 1] as [string, BatchValue])[0]) throw new BatchValueError(`key ${describe((list[i] as [string, BatchValue])[0])} is given twice`)
  }
  return { ...fields, entries: new Map(list), keys: list.map((e) => e[0]) }
}

// ---- codec ----

function writeStrings(enc: encoding.Encoder, xs: readonly string[]): void {
  encoding.writeVarUint(enc, xs.length)
  for (const x of xs) encoding.writeVarString(enc, x)
}

export function writeBatchView(enc: encoding.Encoder, bv: BatchView): void {
  writeVersion(enc)
  encoding.writeVarString(enc, bv.view)
  encoding.writeUint8(enc, TYPES.indexOf(bv.type))
  encoding.writeVarUint(enc, bv.sizeMs)
  encoding.writeVarUint(enc, bv.horizon)
  encoding.writeVarUint(enc, bv.stamp.ts)
  encoding.writeVarUint(enc, bv.stamp.c)
  encoding.writeVarString(enc, bv.stamp.r)
  encoding.writeVarUint(enc, bv.keys.length)
  for (const key of bv.keys) {
    encoding.writeVarString(enc, key)
    const v = bv.entries.get(key) as BatchValue
    switch (bv.type) {
      case 'gcounter':
        encoding.writeVarUint(enc, v as number)
        break
      case 'pncounter':
        encoding.writeUint8(enc, (v as number) < 0 ? 1 : 0)
        encoding.writeVarUint(enc, Math.abs(v as number))
        break
      case 'orset':
        writeStrings(enc, v as readonly string[])
        break
      case 'lwwmap': {
        const m = v as BatchMap
        encoding.writeVarUint(enc, m.fields.length)
        for (let i = 0; i < m.fields.length; i++) {
          encoding.writeVarString(enc, m.fields[i] as string)
          encoding.writeVarString(enc, m.texts[i] as string)
        }
        break
      }
      case 'hll':
        if (typeof v === 'number') {
          encoding.writeUint8(enc, 0)
          encoding.writeVarUint(enc, v)
        } else {
          encoding.writeUint8(enc, 1)
          writeStrings(enc, v as readonly string[])
        }
        break
    }
  }
}

export function encodeBatchView(bv: BatchView): Uint8Array {
  const enc = encoding.createEncoder()
  writeBatchView(enc, bv)
  return encoding.toUint8Array(enc)
}

function jsonDepth(x: unknown, depth: number): boolean {
  if (depth > MAX_JSON_DEPTH) return false
  if (Array.isArray(x)) return x.every((e) => jsonDepth(e, depth + 1))
  if (x !== null && typeof x === 'object') return Object.values(x).every((e) => jsonDepth(e, depth + 1))
  return true
}

function readJsonText(dec: decoding.Decoder): string {
  const at = dec.pos
  const text = readString(dec, NAME)
  let parsed: unknown
  try {
    parsed = JSON.parse(text)
  } catch {
    throw new CrdtDecodeError(NAME, at, 'value is not JSON text')
  }
  // Depth first: JSON.stringify of a hostile, deeply nested value would recurse that deep.
  if (!jsonDepth(parsed, 1)) throw new CrdtDecodeError(NAME, at, `value nests deeper than ${MAX_JSON_DEPTH} levels`)
  if (JSON.stringify(parsed) !== text) throw new CrdtDecodeError(NAME, at, 'value is not canonical JSON text')
  return text
}

function readValue(dec: decoding.Decoder, type: TypeName): BatchValue {
  switch (type) {
    case 'gcounter':
      return readUint(dec, NAME)
    case 'pncounter': {
      const at = dec.pos
      const sign = readByte(dec, NAME)
      const n = readUint(dec, NAME)
      if (sign > 1 || (sign === 1 && n === 0)) throw new CrdtDecodeError(NAME, at, 'bad pncounter sign')
      return sign === 1 ? -n : n
    }
    case 'orset':
      return readSortedStrings(dec, NAME, 'set members')
    case 'lwwmap': {
      const m = readCount(dec, NAME, 2)
      const fields: string[] = []
      const texts: string[] = []
      for (let i = 0; i < m; i++) {
        const at = dec.pos
        const f = readString(dec, NAME)
        if (i > 0 && !((fields[i - 1] as string) < f)) throw new CrdtDecodeError(NAME, at, 'fields not in ascending order')
        fields.push(f)
        texts.push(readJsonText(dec))
      }
      return { fields, texts }
    }
    case 'hll': {
      const at = dec.pos
      const form = readByte(dec, NAME)
      if (form === 0) return readUint(dec, NAME)
      if (form === 1) return readSortedStrings(dec, NAME, 'elements')
      throw new CrdtDecodeError(NAME, at, `unknown hll value form ${form}`)
    }
  }
}

/** Reads what writeBatchView wrote; throws CrdtDecodeError (with the offset) on anything else. */
export function readBatchView(dec: decoding.Decoder): BatchView {
  return guarded(NAME, dec, () => {
    readVersion(dec, NAME)
    const view = readString(dec, NAME)
    if (checkName(view, 'a view name') !== null) fail(dec, NAME, 'bad view name')
    const at = dec.pos
    const type = TYPES[readByte(dec, NAME)]
    if (type === undefined) throw new CrdtDecodeError(NAME, at, 'unknown view type')
    const sizeMs = readUint(dec, NAME)
    if (sizeMs === 0) fail(dec, NAME, 'bucket size 0')
    const horizon = readUint(dec, NAME)
    const ts = readUint(dec, NAME)
    const c = readUint(dec, NAME)
    const r = readString(dec, NAME)
    if (r.length === 0) fail(dec, NAME, 'empty replica id')
    const n = readCount(dec, NAME, 2)
    const entries = new Map<string, BatchValue>()
    const keys: string[] = []
    for (let i = 0; i < n; i++) {
      const kat = dec.pos
      const key = readString(dec, NAME)
      if (i > 0 && !((keys[i - 1] as string) < key)) throw new CrdtDecodeError(NAME, kat, 'keys not in ascending order')
      const bad = checkBatchKey(key, sizeMs, horizon)
      if (bad !== null) throw new CrdtDecodeError(NAME, kat, bad)
      keys.push(key)
      entries.set(key, readValue(dec, type))
    }
    return { view, type, sizeMs, horizon, stamp: { ts, c, r }, entries, keys }
  })
}

/** Decodes one whole batch view: trailing bytes are an error. */
export function decodeBatchView(bytes: Uint8Array): BatchView {
  const dec = decoding.createDecoder(bytes)
  const bv = readBatchView(dec)
  if (decoding.hasContent(dec)) fail(dec, NAME, 'trailing bytes')
  return bv
}
