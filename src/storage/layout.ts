/**
 * The on-disk layout (docs/storage.md documents it byte by byte). One keyspace, three regions
 * told apart by the first byte, so each region is one contiguous range for scans and clears:
 *
 *   'm' name                       meta: replica id, catalog
 *   'l' u64be position            delta log: one record per group commit
 *   's' u32be viewNo utf8(key)    snapshots: one per key, the key's full state
 *   'y' ...                       Yjs documents (src/yjs/docStore.ts owns the keys below it)
 *
 * Every value starts with a format version byte and a CRC-32 of what follows, so a torn or
 * corrupt record is detected instead of decoded into wrong values.
 */
import { crc32 } from 'node:zlib'
import * as encoding from 'lib0/encoding'
import * as decoding from 'lib0/decoding'
import { readBytes, readCount, readString, readUint } from '../../crdts/codec.js'
import type { KeyRange } from './adapter.js'

export const LAYOUT_VERSION = 1

const M = 0x6d
const L = 0x6c
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
export const SNAPSHOT_RANGE: KeyRange = { gte: Uint8Array.of(S), lt: Uint8Array.of(S + 1) }
/** The first byte of every Yjs document key; the region is laid out by src/yjs/docStore.ts. */
export const YJS_PREFIX = 0x79

/** Log records from the first up to and including `position`. */
export function logRangeThrough(position: number): KeyRange {
  return { gte: logKey(0), lt: logKey(position + 1) }
}

function viewPrefix(viewNo: number): Uint8Array {
  const k = new Uint8Array(5)
  k[0] = S
  new DataView(k.buffer).setUint32(1, viewNo)
  return k
}

export function snapshotKey(viewNo: number, key: string): Uint8Array {
  const kb = utf8.encode(key)
  const k = new Uint8Array(5 + kb.length)
  k.set(viewPrefix(viewNo), 0)
  k.set(kb, 5)
  return k
}

export function parseSnapshotKey(k: Uint8Array): { viewNo: number; key: string } {
  if (k.length < 5 || k[0] !== S) throw new LayoutError('not a snapshot key')
  const viewNo = new DataView(k.buffer, k.byteOffset, k.byteLength).getUint32(1)
  return { viewNo, key: utf8d.decode(k.subarray(5)) }
}

export function viewSnapshotRange(viewNo: number): KeyRange {
  return { gte: viewPrefix(viewNo), lt: viewPrefix(viewNo + 1) }
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
 * writes entry i's delta bytes, which lets the engine encode deltas straight into the record.
 */
export function encodeLogRecord(
  entries: ReadonlyArray<{ origin: string; seq: number; viewNo: number; key: string }>,
  writeDelta: (enc: encoding.Encoder, i: number) => void,
): Uint8Array {
  const origins: string[] = []
  const index = new Map<string, number>()
  for (const e of entries) {
    if (!index.has(e.origin)) {
      index.set(e.origin, origins.length)
      origins.push(e.origin)
    }
  }
  const enc = encoding.createEncoder()
  encoding.writeVarUint(enc, origins.length)
  for (const o of origins) encoding.writeVarString(enc, o)
  encoding.writeVarUint(enc, entries.length)
  entries.forEach((e, i) => {
    encoding.writeVarUint(enc, index.get(e.origin) as number)
    encoding.writeVarUint(enc, e.seq)
    encoding.writeVarUint(enc, e.viewNo)
    encoding.writeVarString(enc, e.key)
    writeDelta(enc, i)
  })
  return seal(encoding.toUint8Array(enc))
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
