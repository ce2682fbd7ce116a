/**
 * Helpers shared by every type's lib0 codec. Decoders read untrusted bytes (from peers and from
 * disk), so every length is checked against what is left before anything is allocated, strings
 * must be valid UTF-8, and any failure surfaces as a CrdtDecodeError naming the type and offset.
 */
import * as encoding from 'lib0/encoding'
import * as decoding from 'lib0/decoding'
import { CrdtDecodeError, type CrdtType } from './types.js'

/** The format version every type writes first. Readers accept exactly the versions they know. */
export const FORMAT_VERSION = 1

// ignoreBOM: a string that starts with U+FEFF must keep it, or it would not survive the codec.
const utf8 = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true })

export function fail(dec: decoding.Decoder, type: string, reason: string): never {
  throw new CrdtDecodeError(type, dec.pos, reason)
}

export function remaining(dec: decoding.Decoder): number {
  return dec.arr.length - dec.pos
}

export function writeVersion(enc: encoding.Encoder): void {
  encoding.writeUint8(enc, FORMAT_VERSION)
}

export function readVersion(dec: decoding.Decoder, type: string): void {
  if (remaining(dec) < 1) fail(dec, type, 'missing format version')
  const v = decoding.readUint8(dec)
  if (v !== FORMAT_VERSION) fail(dec, type, `unknown format version ${v}`)
}

/** A non-negative safe integer. */
export function readUint(dec: decoding.Decoder, type: string): number {
  const at = dec.pos
  let n: number
  try {
    n = decoding.readVarUint(dec)
  } catch {
    throw new CrdtDecodeError(type, at, 'truncated or overlong integer')
  }
  if (!Number.isSafeInteger(n)) throw new CrdtDecodeError(type, at, 'integer out of the safe range')
  // lib0 writes the shortest form, whose last byte is never 0: padded forms are not canonical.
  if (dec.pos - at > 1 && dec.arr[dec.pos - 1] === 0) throw new CrdtDecodeError(type, at, 'overlong integer')
  return n
}

/**
 * A count of items that each take at least `minBytesEach` bytes: a count the remaining input
 * cannot hold is refused before any array of that size exists.
 */
export function readCount(dec: decoding.Decoder, type: string, minBytesEach: number): number {
  const at = dec.pos
  const n = readUint(dec, type)
  if (n * minBytesEach > remaining(dec)) {
    throw new CrdtDecodeError(type, at, `count ${n} exceeds the ${remaining(dec)} bytes left`)
  }
  return n
}

export function readBytes(dec: decoding.Decoder, type: string): Uint8Array {
  const at = dec.pos
  const len = readUint(dec, type)
  if (len > remaining(dec)) throw new CrdtDecodeError(type, at, `length ${len} exceeds the ${remaining(dec)} bytes left`)
  return decoding.readUint8Array(dec, len)
}

export function readString(dec: decoding.Decoder, type: string): string {
  const at = dec.pos
  const bytes = readBytes(dec, type)
  try {
    return utf8.decode(bytes)
  } catch {
    throw new CrdtDecodeError(type, at, 'invalid UTF-8')
  }
}

/** Strings sorted by UTF-16 code units, the order every encoding and value uses. */
export function compareStrings(a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0
}

/**
 * Reads a list of distinct strings that must be in strictly ascending order: a canonical
 * encoding has exactly one byte form, so an unsorted or duplicated list is malformed.
 */
export function readSortedStrings(dec: decoding.Decoder, type: string, what: string): string[] {
  const n = readCount(dec, type, 1)
  const out: string[] = []
  for (let i = 0; i < n; i++) {
    const at = dec.pos
    const s = readString(dec, type)
    const prev = out[i - 1]
    if (prev !== undefined && !(prev < s)) throw new CrdtDecodeError(type, at, `${what} not in ascending order`)
    out.push(s)
  }
  return out
}

/** Runs a type's decoder, turning any stray error into a CrdtDecodeError with the offset. */
export function guarded<T>(type: string, dec: decoding.Decoder, read: () => T): T {
  try {
    return read()
  } catch (err) {
    if (err instanceof CrdtDecodeError) throw err
    throw new CrdtDecodeError(type, dec.pos, err instanceof Error ? err.message : String(err))
  }
}

export function encodeState<S>(type: CrdtType<S, unknown, unknown>, state: S): Uint8Array {
  const enc = encoding.createEncoder()
  type.encode(enc, state)
  return encoding.toUint8Array(enc)
}

/** Decodes one whole state: trailing bytes are an error, as they would hide a framing bug. */
export function decodeState<S>(type: CrdtType<S, unknown, unknown>, bytes: Uint8Array): S {
  const dec = decoding.createDecoder(bytes)
  const state = type.decode(dec)
  if (decoding.hasContent(dec)) throw new CrdtDecodeError(type.name, dec.pos, `${remaining(dec)} trailing bytes`)
  return state
}

/** Equality by canonical bytes: every type's encoding is deterministic. */
export function stateEquals<S>(type: CrdtType<S, unknown, unknown>, a: S, b: S): boolean {
  const x = encodeState(type, a)
  const y = encodeState(type, b)
  if (x.length !== y.length) return false
  for (let i = 0; i < x.length; i++) if (x[i] !== y[i]) return false
  return true
}

/** One byte; lib0's readUint8 returns undefined past the end instead of throwing. */
export function readByte(dec: decoding.Decoder, type: string): number {
  if (remaining(dec) < 1) fail(dec, type, 'unexpected end of input')
  return decoding.readUint8(dec)
}

/** A little-endian uint32, bounds-checked. */
export function readU32(dec: decoding.Decoder, type: string): number {
  if (remaining(dec) < 4) fail(dec, type, 'unexpected end of input')
  return decoding.readUint32(dec)
}
