/**
 * The on-disk layout (docs/storage.md documents it byte by byte). One keyspace, regions told
 * apart by the first byte, so each region is one contiguous range for scans and clears:
 *
 *   'm' name                         meta: replica id, catalog, layout version
 *   'l' u64be position              delta log: one record per group commit
 *   'p' u32be viewNo utf8(firstKey) snapshot pages (layout 2): the states of a range of keys
 *   's' u32be viewNo utf8(key)      per-key snapshots (layout 1): still read, then migrated
 *   'y' ...                         Yjs documents (src/yjs/docStore.ts owns the keys below it)
 *
 * Every value starts with a format version byte and a CRC-32 of what follows, so a torn or
 * corrupt record is detected instead of decoded into wrong values.
 */
import { crc32 } from 'node:zlib'
import * as encoding from 'lib0/encoding'
import * as decoding from 'lib0/decoding'
import { readBytes, readCount, readString, readUint } from '../../crdts/codec.js'
import type { KeyRange } from './adapter.js'

/** The version byte every sealed value starts with (the seal's own format, unchanged since layout 1). */
export const LAYOUT_VERSION = 1

/**
 * The layout of a data directory as a whole, saved under 'm' "layout". 1: per-key snapshots
 * ('s'); 2: snapshot pages ('p'). A directory without the meta key is layout 1. A directory of a
 * later layout than this code knows is refused rather than misread.
 */
export const DIRECTORY_LAYOUT = 2

const M = 0x6d
const L = 0x6c
const P = 0x70
const S = 0x73

export class LayoutError extends Error {
  override readonly name = 'LayoutError'
}

const utf8 = new TextEncoder()
const utf8d = new TextDecoder('utf-8', { fatal: true })

export function metaKey(name: string): Uint8Array {
  return Uint8Array.from([M, ...utf8.encode(name)])
}

export function logKey(position: number): Uint8Array {
  const k = new Uint8Array(9)
  k[0] = L
  const view = new DataView(k.buffer)
  view.setUint32(1, Math.floor(position / 2 ** 32))
  view.setUint32(5, position >>> 0)
  return k
}

export function logPosition(key: Uint8Array): number {
  if (key.length !== 9 || key[0] !== L) throw new LayoutError('not a log key')
  const view = new DataView(key.buffer, key.byteOffset, key.byteLength)
  return view.getUint32(1) * 2 ** 32 + view.getUint32(5)
}

export const LOG_RANGE: KeyRange = { gte: Uint8Array.of(L), lt: Uint8Array.of(L + 1) }
/** Layout 1's per-key snapshots: read at recovery and migrated into pages. */
export const SNAPSHOT_RANGE: KeyRange = { gte: Uint8Array.of(S), lt: Uint8Array.of(S + 1) }
/** The first byte of every Yjs document key; the region is laid out by src/yjs/docStore.ts. */
export const YJS_PREFIX = 0x79
export const PAGE_RANGE: KeyRange = { gte: Uint8Array.of(P), lt: Uint8Array.of(P + 1) }

/** Log records from the first up to and including `position`. */
export function logRangeThrough(position: number): KeyRange {
  return { gte: logKey(0), lt: logKey(position + 1) }
}

function viewPrefix(region: number, viewNo: number): Uint8Array {
  const k = new Uint8Array(5)
  k[0] = region
  new DataView(k.buffer).setUint32(1, viewNo)
  return k
}

function keyIn(region: number, viewNo: number, key: string): Uint8Array {
  const kb = utf8.encode(key)
  const k = new Uint8Array(5 + kb.length)
  k.set(viewPrefix(region, viewNo), 0)
  k.set(kb, 5)
  return k
}

/** Layout 1's key of one key's snapshot (also the unit of the "encoded live bytes" measure). */
export function snapshotKey(viewNo: number, key: string): Uint8Array {
  return keyIn(S, viewNo, key)
}

/** The key of the snapshot page whose range of keys starts at `first` ('' for a view's first page). */
export function pageKey(viewNo: number, first: string): Uint8Array {
  return keyIn(P, viewNo, first)
}

export function parsePageKey(k: Uint8Array): { viewNo: number; first: string } {
  if (k.length < 5 || k[0] !== P) throw new LayoutError('not a page key')
  const viewNo = new DataView(k.buffer, k.byteOffset, k.byteLength).getUint32(1)
  return { viewNo, first: utf8d.decode(k.subarray(5)) }
}

export function viewPageRange(viewNo: number): KeyRange {
  return { gte: viewPrefix(P, viewNo), lt: viewPrefix(P, viewNo + 1) }
}

export function parseSnapshotKey(k: Uint8Array): { viewNo: number; key: string } {
  if (k.length < 5 || k[0] !== S) throw new LayoutError('not a snapshot key')
  const viewNo = new DataView(k.buffer, k.byteOffset, k.byteLength).getUint32(1)
  return { viewNo, key: utf8d.decode(k.subarray(5)) }
}

export function viewSnapshotRange(viewNo: number): KeyRange {
  return { gte: viewPrefix(S, viewNo), lt: viewPrefix(S, viewNo + 1) }
}

/** Wraps a body in [version][crc32 LE][body]. */
export function seal(body: Uint8Array): Uint8Array {
  const out = new Uint8Array(5 + body.length)
  out[0] = LAYOUT_VERSION
  new DataView(out.buffer).setUint32(1, crc32(body), true)
  out.set(body, 5)
  return out
}

/** The body of a sealed value; throws LayoutError when the version or checksum is wrong. */
export function unseal(value: Uint8Array): Uint8Array {
  if (value.length < 5) throw new LayoutError(`record of ${value.length} bytes is shorter than its header`)
  if (value[0] !== LAYOUT_VERSION) throw new LayoutError(`unknown record version ${value[0]}`)
  const body = value.subarray(5)
  const want = new DataView(value.buffer, value.byteOffset, value.byteLength).getUint32(1, true)
  if (crc32(body) !== want) throw new LayoutError('checksum mismatch')
  return body
}

/**
 * One delta of a log record: its origin replica and that origin's sequence number (what
 * replication ships and version vectors count), which key of which view, and the encoded delta.
 */
export interface LogEntry {
  origin: string
  seq: number
  viewNo: number
  key: string
  delta: Uint8Array
}

/**
 * A log record: an origin table (distinct replica ids in first-use order), then `count` entries
 * of originIndex, seq, viewNo (varUints), key (varString), delta (varUint8Array). `writeDelta`
 * writes an entry's delta, which lets the engine encode deltas straight into the record.
 * `sizeHint` (bytes) sizes the first buffer so that a big record is not built by doubling.
 */
export function encodeLogRecord<E extends { origin: string; seq: number; view: { no: number }; key: string }>(
  entries: readonly E[],
  writeDelta: (enc: encoding.Encoder, entry: E) => void,
  sizeHint = 0,
): Uint8Array {
  const origins: string[] = []
  const index = new Map<string, number>()
  // Writes of one group commit mostly share one origin: look the map up only when it changes.
  let last: string | null = null
  for (const e of entries) {
    if (e.origin === last) continue
    last = e.origin
    if (!index.has(e.origin)) {
      index.set(e.origin, origins.length)
      origins.push(e.origin)
    }
  }
  const enc = encoding.createEncoder()
  if (sizeHint > enc.cbuf.length) enc.cbuf = new Uint8Array(sizeHint)
  beginSealed(enc)
  encoding.writeVarUint(enc, origins.length)
  for (const o of origins) encoding.writeVarString(enc, o)
  encoding.writeVarUint(enc, entries.length)
  last = null
  let oi = 0
  for (const e of entries) {
    if (e.origin !== last) {
      last = e.origin
      oi = index.get(e.origin) as number
    }
    encoding.writeVarUint(enc, oi)
    encoding.writeVarUint(enc, e.seq)
    encoding.writeVarUint(enc, e.view.no)
    encoding.writeVarString(enc, e.key)
    writeFramed(enc, writeDelta, e)
  }
  return endSealed(enc)
}

export function decodeLogRecord(value: Uint8Array): LogEntry[] {
  const dec = decoding.createDecoder(unseal(value))
  try {
    const no = readCount(dec, 'log record', 2)
    const origins: string[] = []
    for (let i = 0; i < no; i++) origins.push(readString(dec, 'log record'))
    const n = readCount(dec, 'log record', 5)
    const out: LogEntry[] = []
    for (let i = 0; i < n; i++) {
      const oi = readUint(dec, 'log record')
      const origin = origins[oi]
      if (origin === undefined) throw new LayoutError(`origin index ${oi} out of range`)
      out.push({ origin, seq: readUint(dec, 'log record'), viewNo: readUint(dec, 'log record'), key: readString(dec, 'log record'), delta: readBytes(dec, 'log record') })
    }
    if (decoding.hasContent(dec)) throw new LayoutError('trailing bytes')
    return out
  } catch (err) {
    if (err instanceof LayoutError) throw err
    throw new LayoutError((err as Error).message)
  }
}

/** The catalog as saved: the catalog CRDT state and the local view numbering. */
export interface SavedCatalog {
  state: Uint8Array
  numbers: Array<{ name: string; defJson: string; no: number }>
  nextNo: number
}

export function encodeCatalog(c: SavedCatalog): Uint8Array {
  const enc = encoding.createEncoder()
  encoding.writeVarUint8Array(enc, c.state)
  encoding.writeVarUint(enc, c.nextNo)
  encoding.writeVarUint(enc, c.numbers.length)
  for (const n of c.numbers) {
    encoding.writeVarString(enc, n.name)
    encoding.writeVarString(enc, n.defJson)
    encoding.writeVarUint(enc, n.no)
  }
  return seal(encoding.toUint8Array(enc))
}

export function decodeCatalog(value: Uint8Array): SavedCatalog {
  const dec = decoding.createDecoder(unseal(value))
  try {
    const state = readBytes(dec, 'catalog')
    const nextNo = readUint(dec, 'catalog')
    const n = readCount(dec, 'catalog', 3)
    const numbers: SavedCatalog['numbers'] = []
    for (let i = 0; i < n; i++) numbers.push({ name: readString(dec, 'catalog'), defJson: readString(dec, 'catalog'), no: readUint(dec, 'catalog') })
    return { state, numbers, nextNo }
  } catch (err) {
    throw new LayoutError((err as Error).message)
  }
}

// ---------------------------------------------------------------------------------------------
// Writing without intermediate buffers. A log record or a page holds many small encoded states,
// each behind its length. Encoding each into an encoder of its own and copying it over cost two
// allocations and a copy per write (measured as a fifth of a write's CPU); instead the state is
// encoded in place behind a one-byte placeholder that is patched with the length afterwards.

/** Bytes of room made before a framed value, so that the common small one fits the current buffer. */
const FRAME_ROOM = 256

/**
 * Writes what `write(enc, x)` encodes as a varUint8Array (varUint length, then the bytes), encoding it
 * straight into `enc`. Same bytes as encoding it elsewhere and using writeVarUint8Array.
 */
export function writeFramed<T>(enc: encoding.Encoder, write: (enc: encoding.Encoder, x: T) => void, x: T): void {
  encoding.verifyLen(enc, FRAME_ROOM)
  const buf = enc.cbuf
  const at = enc.cpos
  const bufs = enc.bufs.length
  enc.cpos = at + 1
  write(enc, x)
  if (enc.cbuf === buf) {
    const len = enc.cpos - at - 1
    if (len < 0x80) {
      buf[at] = len
      return
    }
    // A longer value needs a longer length: move it up if the buffer has the room.
    const extra = varUintBytes(len) - 1
    if (enc.cpos + extra <= buf.length) {
      buf.copyWithin(at + 1 + extra, at + 1, enc.cpos)
      let n = len
      let i = at
      while (n >= 0x80) {
        buf[i++] = 0x80 | (n & 0x7f)
        n = Math.floor(n / 0x80)
      }
      buf[i] = n
      enc.cpos += extra
      return
    }
  }
  // It outgrew the buffer: forget what it wrote (the old buffer is intact up to `at`) and take
  // the long way. Encodings are deterministic, so writing it again gives the same bytes.
  enc.cbuf = buf
  enc.cpos = at
  enc.bufs.length = bufs
  const own = encoding.createEncoder()
  write(own, x)
  encoding.writeVarUint8Array(enc, encoding.toUint8Array(own))
}

function varUintBytes(n: number): number {
  let bytes = 1
  while (n >= 0x80) {
    n = Math.floor(n / 0x80)
    bytes++
  }
  return bytes
}

/** Starts a value that `endSealed` seals in place: reserves the header in a fresh encoder. */
export function beginSealed(enc: encoding.Encoder): void {
  if (encoding.length(enc) !== 0) throw new Error('beginSealed needs an empty encoder')
  for (let i = 0; i < 5; i++) encoding.writeUint8(enc, 0)
}

/** The sealed value of an encoder begun with `beginSealed`: the same bytes as seal(body). */
export function endSealed(enc: encoding.Encoder): Uint8Array {
  const out = encoding.toUint8Array(enc)
  out[0] = LAYOUT_VERSION
  new DataView(out.buffer, out.byteOffset).setUint32(1, crc32(out.subarray(5)), true)
  return out
}

// ---------------------------------------------------------------------------------------------
// Snapshot pages (layout 2)

/**
 * A snapshot page: sealed, its body a run of entries `key (varString)`, `state
 * (varUint8Array: the state in its type's v1 encoding)`, keys ascending, until the body ends.
 * The page's LevelDB key names the first key of its range, not necessarily of its entries.
 */
export function writePageEntry<S>(enc: encoding.Encoder, key: string, writeState: (enc: encoding.Encoder, state: S) => void, state: S): void {
  encoding.writeVarString(enc, key)
  writeFramed(enc, writeState, state)
}

/**
 * Calls `each` with every entry of a sealed page: the key, and a decoder positioned at the
 * state's first byte (the same decoder object every time: it must not be kept), and the offset
 * where the state ends. The state's decoder must read exactly the state's bytes (or set `pos`
 * to `end` to skip them). Throws LayoutError when the checksum or the framing is wrong, or
 * when a state was read short or long.
 */
export function readPage(value: Uint8Array, each: (key: string, state: decoding.Decoder, end: number) => void): void {
  const body = unseal(value)
  // Keys as strings straight from the bytes (Buffer's toString makes no view per key, which
  // matters for a million keys); the checksum has vouched for the bytes being what TextEncoder wrote.
  const buf = Buffer.isBuffer(body) ? body : Buffer.from(body.buffer, body.byteOffset, body.byteLength)
  // One decoder over the whole page, rather than a view per state: states are self-delimiting
  // (every type's decoder stops at the end of its encoding), and the framing checks that.
  const state = decoding.createDecoder(new Uint8Array(body.buffer, body.byteOffset, body.byteLength))
  const end = buf.length
  let pos = 0
  const readLength = (): number => {
    let n = 0
    let mult = 1
    for (;;) {
      if (pos >= end) throw new LayoutError('page entry cut short')
      const b = buf[pos++] as number
      n += (b & 0x7f) * mult
      if (b < 0x80) break
      mult *= 0x80
      if (mult > 2 ** 35) throw new LayoutError('page length too long')
    }
    if (n > end - pos) throw new LayoutError(`page entry of ${n} bytes with ${end - pos} left`)
    return n
  }
  while (pos < end) {
    const kl = readLength()
    const key = buf.toString('utf8', pos, pos + kl)
    pos += kl
    const sl = readLength()
    state.pos = pos
    pos += sl
    each(key, state, pos)
    if (state.pos !== pos) throw new LayoutError(`the state of ${JSON.stringify(key)} was read as ${state.pos - pos + sl} bytes, framed as ${sl}`)
  }
}

