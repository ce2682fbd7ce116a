/**
 * HyperLogLog: an estimate of the number of distinct strings added, in a fixed 6-bit register per
 * bucket; the join is the register-wise max, so it is a state-based CRDT for free, and a union of
 * sketches (across replicas or across time buckets) is just a join.
 *
 * Hashing (part of the wire format, see crdts/hash.ts): x = hash64(element), the first 64 bits of
 * MurmurHash3_x86_128 (seed 0) of the element's UTF-8 bytes. The register index is the top p bits
 * of x; the rank (rho) is the position of the first 1 bit in the remaining 64 - p bits, counting
 * from 1, or 64 - p + 1 when they are all zero. A register therefore holds 0 (never hit) to
 * 65 - p, which fits 6 bits for every precision 4..18.
 *
 * Precision: p = 14 by default (m = 16384 registers, standard error 1.04/sqrt(m) = 0.81%); a state
 * carries its precision and `createHll(p)` / `hllWithPrecision(p)` make others (4..18). States of
 * different precisions never join: a view has one fixed precision, and folding a finer sketch into
 * a coarser one silently would hide a configuration error, so join throws CrdtOpError.
 *
 * In memory a state is sparse while few registers are non-zero: a sorted Uint32Array of
 * `index << 6 | rho` (4 bytes per register), until the count would pass m/4 registers, the point
 * where it would cost as much as the dense form; then a Uint8Array(m), one byte per register. A
 * realtime view holds millions of sketches, most of them small: a key with 100 distinct elements
 * costs ~0.5 KB instead of 16 KB. The in-memory form never shows in the encoding.
 *
 * Estimator: Ertl 2017, "New cardinality estimation algorithms for HyperLogLog sketches" (the
 * improved raw estimator with the sigma and tau corrections, as Redis >= 5 uses): accurate from 0
 * to 2^64 without HLL++'s empirical bias tables; small cardinalities come out essentially exact.
 *
 * Format v1 (canonical; the decoder refuses anything the encoder would not write):
 *   version (1), p: uint8 in 4..18, form: uint8, then
 *   form 0 (sparse): n: varUint, then n × (delta: varUint, rho: uint8) in ascending index order,
 *     where delta is the index for the first pair and the gap from the previous index after that
 *     (so > 0); every index < m, every rho in 1..65-p.
 *   form 1 (dense): exactly 3m/4 bytes: the m registers packed 6 bits each, four registers
 *     r0..r3 (r0 first) in three bytes as the little-endian 24-bit value r0 | r1<<6 | r2<<12 |
 *     r3<<18; every register in 0..65-p.
 *   The form is a function of the registers alone: sparse iff the sparse body (n's varUint plus the
 *   pairs) is strictly shorter than the dense body's 3m/4 bytes. So equal sketches always encode
 *   to equal bytes, and the encoding is never larger than 3m/4 + 3 bytes (12 KiB for p = 14).
 */
import * as encoding from 'lib0/encoding'
import * as decoding from 'lib0/decoding'
import { CrdtDecodeError, CrdtOpError, type CrdtType } from './types.js'
import { fail, guarded, readCount, readUint, readVersion, remaining, writeVersion } from './codec.js'
import { opVerb, stringList } from './validate.js'
import { hash64 } from './hash.js'

export interface HLLState {
  /** Precision: 2^p registers. Fixed for the life of the sketch. */
  readonly p: number
  /** Sparse form: the first `n` entries are `index << 6 | rho`, ascending, rho > 0; null once dense. */
  sparse: Uint32Array | null
  /** Entries in use in `sparse` (0 when dense). */
  n: number
  /** Dense form: register i is dense[i]; null while sparse. */
  dense: Uint8Array | null
}

/** Normalised op: the elements to add (well-formed UTF-16 strings). */
export interface HLLOp {
  add: string[]
}

const NAME = 'hll'
export const DEFAULT_PRECISION = 14
export const MIN_PRECISION = 4
export const MAX_PRECISION = 18

/** The relative standard error of an estimate from 2^p registers: report it next to every read. */
export function standardError(p: number): number {
  return 1.04 / Math.sqrt(2 ** p)
}

/** The largest register value at precision p. */
export function maxRank(p: number): number {
  return 65 - p
}

function checkPrecision(p: number): void {
  if (!Number.isInteger(p) || p < MIN_PRECISION || p > MAX_PRECISION) {
    throw new RangeError(`hll precision must be an integer in ${MIN_PRECISION}..${MAX_PRECISION}, got ${p}`)
  }
}

/** Never written to (it has no room): growing always allocates. Shared by every empty sketch. */
const NO_ENTRIES = new Uint32Array(0)

/** An empty sketch at precision p (default 14). */
export function createHll(p: number = DEFAULT_PRECISION): HLLState {
  checkPrecision(p)
  return { p, sparse: NO_ENTRIES, n: 0, dense: null }
}

/** Past this many non-zero registers the sparse array would outweigh the dense one. */
function sparseLimit(p: number): number {
  return (1 << p) >>> 2
}

function denseBodyBytes(p: number): number {
  return ((1 << p) * 3) >>> 2
}

/** Converts a sparse state to the dense form in place. */
export function hllDensify(s: HLLState): void {
  const a = s.sparse
  if (a === null) return
  const d = new Uint8Array(1 << s.p)
  for (let i = 0; i < s.n; i++) {
    const e = a[i] as number
    d[e >>> 6] = e & 63
  }
  s.dense = d
  s.sparse = null
  s.n = 0
}

/** Raises register `idx` to at least `rho`, in place; true if it rose. */
function raise(s: HLLState, idx: number, rho: number): boolean {
  const d = s.dense
  if (d !== null) {
    if ((d[idx] as number) >= rho) return false
    d[idx] = rho
    return true
  }
  let a = s.sparse as Uint32Array
  const n = s.n
  let lo = 0
  let hi = n - 1
  while (lo <= hi) {
    const mid = (lo + hi) >>> 1
    const e = a[mid] as number
    const k = e >>> 6
    if (k < idx) lo = mid + 1
    else if (k > idx) hi = mid - 1
    else {
      if ((e & 63) >= rho) return false
      a[mid] = (idx << 6) | rho
      return true
    }
  }
  if (n === a.length) {
    const limit = sparseLimit(s.p)
    if (n >= limit) {
      hllDensify(s)
      ;(s.dense as Uint8Array)[idx] = rho
      return true
    }
    const grown = new Uint32Array(Math.min(limit, Math.max(4, n * 2)))
    grown.set(a.subarray(0, n))
    s.sparse = a = grown
  }
  a.copyWithin(lo + 1, lo, n)
  a[lo] = (idx << 6) | rho
  s.n = n + 1
  return true
}

const H = new Uint32Array(2)

/**
 * Hashes `element` and leaves its register in `slot` and its rank in `rank`: module variables
 * rather than a returned pair, so that adding allocates nothing.
 */
let slot = 0
let rank = 0
function locate(element: string, p: number): void {
  hash64(element, H)
  const hi = H[0] as number
  const lo = H[1] as number
  slot = hi >>> (32 - p)
  // the 32 - p high-word bits below the index, moved to the top (the low p bits become zeros)
  const rest = (hi << p) >>> 0
  if (rest !== 0) rank = Math.clz32(rest) + 1
  else if (lo !== 0) rank = 32 - p + Math.clz32(lo) + 1
  else rank = 65 - p
}

/** The register index and rank that `element` maps to at precision p (the wire-format rule). */
export function hllPosition(element: string, p: number = DEFAULT_PRECISION): { index: number; rho: number } {
  checkPrecision(p)
  locate(element, p)
  return { index: slot, rho: rank }
}

/** Adds one element in place; true if a register rose. No delta, no allocation. */
export function hllAddElement(s: HLLState, element: string): boolean {
  locate(element, s.p)
  return raise(s, slot, rank)
}

/** Registers that rose during one apply, as packed entries; reused across calls. */
let risen = new Uint32Array(64)

function deltaOf(p: number, count: number): HLLState {
  if (count === 0) return { p, sparse: NO_ENTRIES, n: 0, dense: null }
  if (count === 1) return { p, sparse: Uint32Array.of(risen[0] as number), n: 1, dense: null }
  // Sorted, an index that rose twice in one op appears with its ranks ascending: keep the last.
  const e = risen.slice(0, count).sort()
  let n = 0
  for (let i = 0; i < count; i++) {
    const x = e[i] as number
    if (n > 0 && (e[n - 1] as number) >>> 6 === x >>> 6) e[n - 1] = x
    else e[n++] = x
  }
  const delta: HLLState = { p, sparse: e, n, dense: null }
  if (n > sparseLimit(p)) hllDensify(delta)
  return delta
}

function addAll(s: HLLState, elements: readonly string[]): HLLState {
  const p = s.p
  let count = 0
  for (let i = 0; i < elements.length; i++) {
    locate(elements[i] as string, p)
    if (raise(s, slot, rank)) {
      if (count === risen.length) {
        const grown = new Uint32Array(count * 2)
        grown.set(risen)
        risen = grown
      }
      risen[count++] = (slot << 6) | rank
    }
  }
  return deltaOf(p, count)
}

function sameP(into: HLLState, other: HLLState): void {
  if (into.p !== other.p) {
    throw new CrdtOpError(NAME, `cannot join sketches of precision ${into.p} and ${other.p}: a view has one fixed precision`)
  }
}

/** Merges two sorted sparse entry lists into `into`; true if any register rose. */
function joinSparse(into: HLLState, a2: Uint32Array, n2: number): boolean {
  if (n2 <= 8) {
    let changed = false
    for (let i = 0; i < n2; i++) {
      const e = a2[i] as number
      if (raise(into, e >>> 6, e & 63)) changed = true
    }
    return changed
  }
  const a1 = into.sparse as Uint32Array
  const n1 = into.n
  const out = new Uint32Array(n1 + n2)
  let i = 0
  let j = 0
  let k = 0
  let changed = false
  while (i < n1 && j < n2) {
    const x = a1[i] as number
    const y = a2[j] as number
    const kx = x >>> 6
    const ky = y >>> 6
    if (kx < ky) {
      out[k++] = x
      i++
    } else if (ky < kx) {
      out[k++] = y
      j++
      changed = true
    } else {
      if ((y & 63) > (x & 63)) {
        out[k++] = y
        changed = true
      } else out[k++] = x
      i++
      j++
    }
  }
  while (i < n1) out[k++] = a1[i++] as number
  if (j < n2) {
    changed = true
    while (j < n2) out[k++] = a2[j++] as number
  }
  if (!changed) return false
  into.sparse = out
  into.n = k
  if (k > sparseLimit(into.p)) hllDensify(into)
  return true
}

function join(into: HLLState, other: HLLState): boolean {
  sameP(into, other)
  if (other.sparse !== null) {
    if (into.sparse !== null) return joinSparse(into, other.sparse, other.n)
    const d = into.dense as Uint8Array
    let changed = false
    for (let i = 0; i < other.n; i++) {
      const e = other.sparse[i] as number
      const idx = e >>> 6
      if ((d[idx] as number) < (e & 63)) {
        d[idx] = e & 63
        changed = true
      }
    }
    return changed
  }
  const od = other.dense as Uint8Array
  if (into.sparse !== null) {
    // Would `into` change at all? Only then is it worth the dense array.
    let grows = false
    const a = into.sparse
    let j = 0
    for (let idx = 0; idx < od.length && !grows; idx++) {
      const r = od[idx] as number
      if (r === 0) continue
      while (j < into.n && (a[j] as number) >>> 6 < idx) j++
      const mine = j < into.n && (a[j] as number) >>> 6 === idx ? (a[j] as number) & 63 : 0
      if (r > mine) grows = true
    }
    if (!grows) return false
    hllDensify(into)
  }
  const d = into.dense as Uint8Array
  let changed = false
  for (let i = 0; i < d.length; i++) {
    const r = od[i] as number
    if (r > (d[i] as number)) {
      d[i] = r
      changed = true
    }
  }
  return changed
}

/** Union of sketches of one precision (e.g. the buckets of a time range): a fresh state. */
export function hllUnion(states: readonly HLLState[], p: number = DEFAULT_PRECISION): HLLState {
  const first = states[0]
  const out = first === undefined ? createHll(p) : clone(first)
  for (let i = 1; i < states.length; i++) join(out, states[i] as HLLState)
  return out
}

/** Every register as one byte each (a copy). */
export function hllRegisters(s: HLLState): Uint8Array {
  if (s.dense !== null) return s.dense.slice()
  const d = new Uint8Array(1 << s.p)
  const a = s.sparse as Uint32Array
  for (let i = 0; i < s.n; i++) {
    const e = a[i] as number
    d[e >>> 6] = e & 63
  }
  return d
}

/** A sketch from raw registers (one byte each, 2^p of them, each at most 65 - p). */
export function hllFromRegisters(p: number, registers: Uint8Array): HLLState {
  checkPrecision(p)
  const m = 1 << p
  if (registers.length !== m) throw new RangeError(`hll: expected ${m} registers, got ${registers.length}`)
  const max = maxRank(p)
  let nonzero = 0
  for (let i = 0; i < m; i++) {
    const r = registers[i] as number
    if (r > max) throw new RangeError(`hll: register ${i} is ${r}, above the maximum ${max} at precision ${p}`)
    if (r !== 0) nonzero++
  }
  if (nonzero > sparseLimit(p)) return { p, sparse: null, n: 0, dense: registers.slice() }
  const a = new Uint32Array(nonzero)
  let k = 0
  for (let i = 0; i < m; i++) {
    const r = registers[i] as number
    if (r !== 0) a[k++] = (i << 6) | r
  }
  return { p, sparse: a, n: nonzero, dense: null }
}

/** Register histogram: hist[k] = registers holding k. Reused; only value() reads it. */
const hist = new Float64Array(66)

/** sigma(x) of Ertl 2017: corrects for registers still at zero (the small range). */
function sigma(x: number): number {
  if (x === 1) return Infinity
  let y = 1
  let z = x
  let prev: number
  do {
    x *= x
    prev = z
    z += x * y
    y += y
  } while (prev !== z)
  return z
}

/** tau(x) of Ertl 2017: corrects for registers at the maximum rank (the far end of the range). */
function tau(x: number): number {
  if (x === 0 || x === 1) return 0
  let y = 1
  let z = 1 - x
  let prev: number
  do {
    x = Math.sqrt(x)
    prev = z
    y *= 0.5
    z -= (1 - x) * (1 - x) * y
  } while (prev !== z)
  return z / 3
}

const ALPHA_INF = 0.5 / Math.LN2

/** The estimated number of distinct elements, unrounded. */
export function hllEstimate(s: HLLState): number {
  const m = 1 << s.p
  const q = 64 - s.p
  hist.fill(0)
  if (s.dense !== null) {
    const d = s.dense
    for (let i = 0; i < m; i++) {
      const r = d[i] as number
      hist[r] = (hist[r] as number) + 1
    }
  } else {
    const a = s.sparse as Uint32Array
    for (let i = 0; i < s.n; i++) {
      const r = (a[i] as number) & 63
      hist[r] = (hist[r] as number) + 1
    }
    hist[0] = m - s.n
  }
  let z = m * tau(1 - (hist[q + 1] as number) / m)
  for (let k = q; k >= 1; k--) z = 0.5 * (z + (hist[k] as number))
  z += m * sigma((hist[0] as number) / m)
  return (ALPHA_INF * m * m) / z
}

/**
 * The read a user sees: the rounded estimate, capped to a safe integer (the sketch can in theory
 * claim up to 2^64), and the relative standard error to show next to it.
 */
export function hllRead(s: HLLState): { value: number; error: number } {
  return { value: value(s), error: standardError(s.p) }
}

function value(s: HLLState): number {
  const e = hllEstimate(s)
  return e < Number.MAX_SAFE_INTEGER ? Math.round(e) : Number.MAX_SAFE_INTEGER
}

function clone(s: HLLState): HLLState {
  if (s.dense !== null) return { p: s.p, sparse: null, n: 0, dense: s.dense.slice() }
  return { p: s.p, sparse: s.n === 0 ? NO_ENTRIES : (s.sparse as Uint32Array).slice(0, s.n), n: s.n, dense: null }
}

function varUintBytes(x: number): number {
  return x < 0x80 ? 1 : x < 0x4000 ? 2 : 3 // indexes are < 2^18
}

/** Bytes of the sparse body (count plus pairs) for these registers: the form rule's measure. */
function sparseBodyBytes(s: HLLState): number {
  let size = 0
  let count = 0
  let prev = 0
  if (s.dense !== null) {
    const d = s.dense
    for (let i = 0; i < d.length; i++) {
      if (d[i] === 0) continue
      size += varUintBytes(i - prev) + 1
      prev = i
      count++
    }
  } else {
    const a = s.sparse as Uint32Array
    count = s.n
    for (let i = 0; i < count; i++) {
      const idx = (a[i] as number) >>> 6
      size += varUintBytes(idx - prev) + 1
      prev = idx
    }
  }
  return size + varUintBytes(count)
}

function encode(enc: encoding.Encoder, s: HLLState): void {
  writeVersion(enc)
  encoding.writeUint8(enc, s.p)
  if (sparseBodyBytes(s) < denseBodyBytes(s.p)) {
    encoding.writeUint8(enc, 0)
    let prev = 0
    if (s.dense !== null) {
      const d = s.dense
      let count = 0
      for (let i = 0; i < d.length; i++) if (d[i] !== 0) count++
      encoding.writeVarUint(enc, count)
      for (let i = 0; i < d.length; i++) {
        const r = d[i] as number
        if (r === 0) continue
        encoding.writeVarUint(enc, i - prev)
        encoding.writeUint8(enc, r)
        prev = i
      }
    } else {
      const a = s.sparse as Uint32Array
      encoding.writeVarUint(enc, s.n)
      for (let i = 0; i < s.n; i++) {
        const e = a[i] as number
        encoding.writeVarUint(enc, (e >>> 6) - prev)
        encoding.writeUint8(enc, e & 63)
        prev = e >>> 6
      }
    }
    return
  }
  encoding.writeUint8(enc, 1)
  const r = s.dense ?? hllRegisters(s)
  const out = new Uint8Array(denseBodyBytes(s.p))
  for (let i = 0, o = 0; i < r.length; i += 4, o += 3) {
    const v = (r[i] as number) | ((r[i + 1] as number) << 6) | ((r[i + 2] as number) << 12) | ((r[i + 3] as number) << 18)
    out[o] = v & 0xff
    out[o + 1] = (v >>> 8) & 0xff
    out[o + 2] = v >>> 16
  }
  encoding.writeUint8Array(enc, out)
}

function readByte(dec: decoding.Decoder, what: string): number {
  if (remaining(dec) < 1) fail(dec, NAME, `missing ${what}`)
  return decoding.readUint8(dec)
}

function decode(dec: decoding.Decoder): HLLState {
  readVersion(dec, NAME)
  const p = readByte(dec, 'precision')
  if (p < MIN_PRECISION || p > MAX_PRECISION) throw new CrdtDecodeError(NAME, dec.pos - 1, `precision ${p} outside ${MIN_PRECISION}..${MAX_PRECISION}`)
  const m = 1 << p
  const max = maxRank(p)
  const formAt = dec.pos
  const form = readByte(dec, 'form')
  if (form === 0) {
    const countAt = dec.pos
    const n = readCount(dec, NAME, 2)
    if (n > m) throw new CrdtDecodeError(NAME, countAt, `${n} registers at precision ${p} (m = ${m})`)
    const a = new Uint32Array(n)
    let idx = 0
    for (let i = 0; i < n; i++) {
      const at = dec.pos
      const delta = readUint(dec, NAME)
      if (i > 0 && delta === 0) throw new CrdtDecodeError(NAME, at, 'register indexes not strictly ascending')
      idx += delta
      if (idx >= m) throw new CrdtDecodeError(NAME, at, `register index ${idx} >= m = ${m}`)
      const rhoAt = dec.pos
      const rho = readByte(dec, 'rank')
      if (rho === 0) throw new CrdtDecodeError(NAME, rhoAt, 'a zero register is not canonical in the sparse form')
      if (rho > max) throw new CrdtDecodeError(NAME, rhoAt, `rank ${rho} above the maximum ${max} at precision ${p}`)
      a[i] = (idx << 6) | rho
    }
    const s: HLLState = { p, sparse: a, n, dense: null }
    if (sparseBodyBytes(s) >= denseBodyBytes(p)) throw new CrdtDecodeError(NAME, formAt, 'sparse form where the dense form is not larger')
    if (n > sparseLimit(p)) hllDensify(s)
    return s
  }
  if (form === 1) {
    const bytes = denseBodyBytes(p)
    if (remaining(dec) < bytes) fail(dec, NAME, `dense body needs ${bytes} bytes, ${remaining(dec)} left`)
    const bodyAt = dec.pos
    const body = decoding.readUint8Array(dec, bytes)
    const d = new Uint8Array(m)
    for (let i = 0, o = 0; i < m; i += 4, o += 3) {
      const v = (body[o] as number) | ((body[o + 1] as number) << 8) | ((body[o + 2] as number) << 16)
      d[i] = v & 63
      d[i + 1] = (v >>> 6) & 63
      d[i + 2] = (v >>> 12) & 63
      d[i + 3] = v >>> 18
    }
    let nonzero = 0
    for (let i = 0; i < m; i++) {
      const r = d[i] as number
      if (r > max) throw new CrdtDecodeError(NAME, bodyAt + ((i >>> 2) * 3), `register ${i} is ${r}, above the maximum ${max} at precision ${p}`)
      if (r !== 0) nonzero++
    }
    const s: HLLState = { p, sparse: null, n: 0, dense: d }
    if (sparseBodyBytes(s) < denseBodyBytes(p)) throw new CrdtDecodeError(NAME, formAt, 'dense form where the sparse form is smaller')
    return nonzero > sparseLimit(p) ? s : hllFromRegisters(p, d)
  }
  throw new CrdtDecodeError(NAME, formAt, `unknown form ${form}`)
}

/** True when every UTF-16 surrogate in `s` is half of a pair: only those strings have a UTF-8 form. */
function isWellFormed(s: string): boolean {
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i)
    if ((c & 0xf800) !== 0xd800) continue
    if (c >= 0xdc00) return false
    const d = s.charCodeAt(i + 1)
    if ((d & 0xfc00) !== 0xdc00) return false
    i++
  }
  return true
}

function validate(op: unknown): HLLOp {
  opVerb(NAME, op, ['add'])
  const add = stringList(NAME, 'add', (op as Record<string, unknown>).add)
  for (const e of add) {
    if (!isWellFormed(e)) throw new CrdtOpError(NAME, `add: ${JSON.stringify(e)} is not well-formed UTF-16 (a lone surrogate)`)
  }
  return { add }
}

/** The hll type whose empty sketch has precision p (4..18); `hll` is p = 14. */
export function hllWithPrecision(p: number): CrdtType<HLLState, HLLOp, number> {
  checkPrecision(p)
  return {
    name: NAME,
    empty: () => createHll(p),
    apply: (state, op) => addAll(state, op.add),
    join,
    value,
    clone,
    encode,
    decode: (dec) => guarded(NAME, dec, () => decode(dec)),
    validate,
  }
}

export const hll: CrdtType<HLLState, HLLOp, number> = hllWithPrecision(DEFAULT_PRECISION)
