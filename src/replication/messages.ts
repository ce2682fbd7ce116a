/**
 * The peer protocol's messages (docs/protocol.md documents them byte by byte). One WebSocket
 * binary message is one protocol message: a type byte, then the body in lib0 encoding. Peer
 * input is untrusted: every count is checked against the bytes left before anything is
 * allocated, and any malformed message throws a ProtocolError naming the type and offset.
 */
import * as encoding from 'lib0/encoding'
import * as decoding from 'lib0/decoding'
import { readByte, readBytes, readCount, readString, readU32, readUint } from '../../crdts/codec.js'
import { VersionVector } from '../storage/versionVector.js'

/** 2: digest anti-entropy with presence masks and per-request fan-out; `links`. */
export const PROTOCOL_VERSION = 2

export const MSG = {
  hello: 1,
  auth: 2,
  catalog: 3,
  vv: 4,
  deltas: 5,
  states: 6,
  aeDigests: 7,
  aeNeed: 8,
  aeDone: 9,
  ext: 10,
  links: 11,
} as const

/** Children per split, as bits: a parent range at depth d splits into 2^bits ranges at depth d + bits. */
export const MAX_SPLIT_BITS = 4

/** A delta as it travels: its origin and sequence, and which key of which view it changes. */
export interface WireDelta {
  origin: string
  seq: number
  view: string
  type: string
  key: string
  bytes: Uint8Array
}

/** A state (or a join of several deltas) without an identity of its own. */
export interface WireState {
  view: string
  type: string
  key: string
  bytes: Uint8Array
}

export type Message =
  | { t: 'hello'; version: number; replica: string; nonce: Uint8Array; auth: boolean }
  | { t: 'auth'; mac: Uint8Array }
  | { t: 'catalog'; state: Uint8Array }
  /** What the sender has (on connect) or has received so far (as an acknowledgement). */
  | { t: 'vv'; vv: VersionVector }
  | { t: 'deltas'; deltas: WireDelta[] }
  /** States shipped by catch-up or anti-entropy; `covers`: the deltas they include, for the receiver's vector. */
  | { t: 'states'; states: WireState[]; covers: VersionVector | null }
  /**
   * Request `req` of a session: parent ranges (key-hash prefixes of `depth` bits, ascending) split
   * into 2^bits children each; per parent a mask of its children the sender holds keys in, and
   * for those, in order, the 32-bit digests.
   */
  | { t: 'aeDigests'; session: number; req: number; view: string; depth: number; bits: number; parents: number[]; present: number[]; digests: number[] }
  /** Per parent of request `req`, in order: the children that differ, and of those the ones to ship whole. */
  | { t: 'aeNeed'; session: number; req: number; bits: number; differ: number[]; whole: number[] }
  | { t: 'aeDone'; session: number; vv: VersionVector }
  /** A message of an extension (Yjs documents, batch views): a channel name and opaque bytes that extension decodes. */
  | { t: 'ext'; channel: string; payload: Uint8Array }
  /** The replicas the sender has a link with now: a peer need not relay their deltas to it. */
  | { t: 'links'; peers: string[] }

export class ProtocolError extends Error {
  override readonly name = 'ProtocolError'
  constructor(
    readonly msgType: number,
    readonly offset: number,
    reason: string,
  ) {
    super(`malformed message (type ${msgType}) at byte ${offset}: ${reason}`)
  }
}

/** Interns strings into a table written before the entries that index it. */
class Table {
  readonly list: string[] = []
  private readonly index = new Map<string, number>()
  id(s: string): number {
    let i = this.index.get(s)
    if (i === undefined) {
      i = this.list.length
      this.index.set(s, i)
      this.list.push(s)
    }
    return i
  }
  write(enc: encoding.Encoder): void {
    encoding.writeVarUint(enc, this.list.length)
    for (const s of this.list) encoding.writeVarString(enc, s)
  }
}

function viewTableOf(items: ReadonlyArray<{ view: string; type: string }>): { table: Table; ids: number[] } {
  const table = new Table()
  const ids = items.map((x) => table.id(`${x.view}\u0000${x.type}`))
  return { table, ids }
}

export function encodeMessage(m: Message): Uint8Array {
  const enc = encoding.createEncoder()
  encoding.writeUint8(enc, MSG[m.t])
  switch (m.t) {
    case 'hello':
      encoding.writeVarUint(enc, m.version)
      encoding.writeVarString(enc, m.replica)
      encoding.writeVarUint8Array(enc, m.nonce)
      encoding.writeUint8(enc, m.auth ? 1 : 0)
      break
    case 'auth':
      encoding.writeVarUint8Array(enc, m.mac)
      break
    case 'catalog':
      encoding.writeVarUint8Array(enc, m.state)
      break
    case 'vv':
      m.vv.encode(enc)
      break
    case 'deltas': {
      const origins = new Table()
      const oids = m.deltas.map((d) => origins.id(d.origin))
      const { table, ids } = viewTableOf(m.deltas)
      origins.write(enc)
      table.write(enc)
      encoding.writeVarUint(enc, m.deltas.length)
      m.deltas.forEach((d, i) => {
        encoding.writeVarUint(enc, oids[i] as number)
        encoding.writeVarUint(enc, d.seq)
        encoding.writeVarUint(enc, ids[i] as number)
        encoding.writeVarString(enc, d.key)
        encoding.writeVarUint8Array(enc, d.bytes)
      })
      break
    }
    case 'states': {
      const { table, ids } = viewTableOf(m.states)
      table.write(enc)
      encoding.writeVarUint(enc, m.states.length)
      m.states.forEach((s, i) => {
        encoding.writeVarUint(enc, ids[i] as number)
        encoding.writeVarString(enc, s.key)
        encoding.writeVarUint8Array(enc, s.bytes)
      })
      encoding.writeUint8(enc, m.covers ? 1 : 0)
      m.covers?.encode(enc)
      break
    }
    case 'aeDigests': {
      encoding.writeVarUint(enc, m.session)
      encoding.writeVarUint(enc, m.req)
      encoding.writeVarString(enc, m.view)
      encoding.writeUint8(enc, m.depth)
      encoding.writeUint8(enc, m.bits)
      encoding.writeVarUint(enc, m.parents.length)
      // Ascending prefixes travel as gaps: deep in the tree they are large, their gaps are not.
      let prev = -1
      for (const p of m.parents) {
        encoding.writeVarUint(enc, p - prev - 1)
        prev = p
      }
      for (const mask of m.present) encoding.writeVarUint(enc, mask)
      for (const d of m.digests) encoding.writeUint32(enc, d)
      break
    }
    case 'aeNeed':
      encoding.writeVarUint(enc, m.session)
      encoding.writeVarUint(enc, m.req)
      encoding.writeUint8(enc, m.bits)
      encoding.writeVarUint(enc, m.differ.length)
      m.differ.forEach((d, i) => encoding.writeVarUint(enc, d + (m.whole[i] as number) * 2 ** (1 << m.bits)))
      break
    case 'aeDone':
      encoding.writeVarUint(enc, m.session)
      m.vv.encode(enc)
      break
    case 'ext':
      encoding.writeVarString(enc, m.channel)
      encoding.writeVarUint8Array(enc, m.payload)
      break
    case 'links':
      encoding.writeVarUint(enc, m.peers.length)
      for (const p of m.peers) encoding.writeVarString(enc, p)
      break
  }
  return encoding.toUint8Array(enc)
}

function popcount(x: number): number {
  let n = 0
  for (; x > 0; x = Math.floor(x / 2)) n += x % 2
  return n
}

const bytesLeft = (dec: decoding.Decoder): number => dec.arr.length - dec.pos

function readTable(dec: decoding.Decoder, what: string): string[] {
  const n = readCount(dec, what, 1)
  const out: string[] = []
  for (let i = 0; i < n; i++) out.push(readString(dec, what))
  return out
}

function pick<T>(list: readonly T[], i: number, what: string): T {
  const x = list[i]
  if (x === undefined) throw new Error(`${what} index ${i} out of range`)
  return x
}

function splitView(entry: string): { view: string; type: string } {
  const i = entry.indexOf('\u0000')
  if (i < 0) throw new Error('view table entry without a type')
  return { view: entry.slice(0, i), type: entry.slice(i + 1) }
}

export function decodeMessage(bytes: Uint8Array): Message {
  const dec = decoding.createDecoder(bytes)
  if (bytes.length === 0) throw new ProtocolError(0, 0, 'empty message')
  const type = decoding.readUint8(dec)
  const what = `message ${type}`
  try {
    const m = decodeBody(type, dec, what)
    if (decoding.hasContent(dec)) throw new Error(`${bytes.length - dec.pos} trailing bytes`)
    return m
  } catch (err) {
    if (err instanceof ProtocolError) throw err
    throw new ProtocolError(type, dec.pos, err instanceof Error ? err.message : String(err))
  }
}

function decodeBody(type: number, dec: decoding.Decoder, what: string): Message {
  switch (type) {
    case MSG.hello: {
      const version = readUint(dec, what)
      const replica = readString(dec, what)
      const nonce = readBytes(dec, what)
      const auth = readByte(dec, what)
      if (auth > 1) throw new Error('auth flag must be 0 or 1')
      return { t: 'hello', version, replica, nonce, auth: auth === 1 }
    }
    case MSG.auth:
      return { t: 'auth', mac: readBytes(dec, what) }
    case MSG.catalog:
      return { t: 'catalog', state: readBytes(dec, what) }
    case MSG.vv:
      return { t: 'vv', vv: VersionVector.decode(dec, what) }
    case MSG.deltas: {
      const origins = readTable(dec, what)
      const views = readTable(dec, what).map(splitView)
      const n = readCount(dec, what, 5)
      const deltas: WireDelta[] = []
      for (let i = 0; i < n; i++) {
        const origin = pick(origins, readUint(dec, what), 'origin')
        const seq = readUint(dec, what)
        const v = pick(views, readUint(dec, what), 'view')
        deltas.push({ origin, seq, view: v.view, type: v.type, key: readString(dec, what), bytes: readBytes(dec, what) })
      }
      return { t: 'deltas', deltas }
    }
    case MSG.states: {
      const views = readTable(dec, what).map(splitView)
      const n = readCount(dec, what, 3)
      const states: WireState[] = []
      for (let i = 0; i < n; i++) {
        const v = pick(views, readUint(dec, what), 'view')
        states.push({ view: v.view, type: v.type, key: readString(dec, what), bytes: readBytes(dec, what) })
      }
      const has = readByte(dec, what)
      if (has > 1) throw new Error('covers flag must be 0 or 1')
      return { t: 'states', states, covers: has ? VersionVector.decode(dec, what) : null }
    }
    case MSG.aeDigests: {
      const session = readUint(dec, what)
      const req = readUint(dec, what)
      const view = readString(dec, what)
      const depth = readByte(dec, what)
      const bits = readByte(dec, what)
      if (bits < 1 || bits > MAX_SPLIT_BITS || depth + bits > 32) throw new Error(`split of ${bits} bits at depth ${depth}`)
      // Each parent costs at least a byte for its prefix and one for its mask.
      const n = readCount(dec, what, 2)
      const parents: number[] = []
      let prev = -1
      for (let i = 0; i < n; i++) {
        const p = prev + 1 + readUint(dec, what)
        if (p >= 2 ** depth) throw new Error(`prefix ${p} has more than ${depth} bits`)
        parents.push(p)
        prev = p
      }
      const present: number[] = []
      let digestCount = 0
      for (let i = 0; i < n; i++) {
        const mask = readUint(dec, what)
        if (mask >= 2 ** (1 << bits)) throw new Error(`mask ${mask} names more than ${1 << bits} children`)
        present.push(mask)
        digestCount += popcount(mask)
      }
      if (digestCount * 4 > bytesLeft(dec)) throw new Error(`${digestCount} digests exceed the ${bytesLeft(dec)} bytes left`)
      const digests: number[] = []
      for (let i = 0; i < digestCount; i++) digests.push(readU32(dec, what))
      return { t: 'aeDigests', session, req, view, depth, bits, parents, present, digests }
    }
    case MSG.aeNeed: {
      const session = readUint(dec, what)
      const req = readUint(dec, what)
      const bits = readByte(dec, what)
      if (bits < 1 || bits > MAX_SPLIT_BITS) throw new Error(`split of ${bits} bits`)
      const f = 2 ** (1 << bits)
      const n = readCount(dec, what, 1)
      const differ: number[] = []
      const whole: number[] = []
      for (let i = 0; i < n; i++) {
        const v = readUint(dec, what)
        const d = v % f
        const w = Math.floor(v / f)
        if (w >= f || (w & ~d) !== 0) throw new Error('a child to ship whole that does not differ')
        differ.push(d)
        whole.push(w)
      }
      return { t: 'aeNeed', session, req, bits, differ, whole }
    }
    case MSG.aeDone:
      return { t: 'aeDone', session: readUint(dec, what), vv: VersionVector.decode(dec, what) }
    case MSG.ext:
      return { t: 'ext', channel: readString(dec, what), payload: readBytes(dec, what) }
    case MSG.links: {
      const n = readCount(dec, what, 1)
      const peers: string[] = []
      for (let i = 0; i < n; i++) peers.push(readString(dec, what))
      return { t: 'links', peers }
    }
    default:
      throw new ProtocolError(type, 0, `unknown message type ${type}`)
  }
}
