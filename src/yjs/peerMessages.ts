/**
 * The messages of the "yjs" extension channel of the peer protocol (docs/protocol.md): each is
 * the payload of one peer message of type 10. Peer input is untrusted: lengths are checked
 * against what is left, names are checked like a client's, and malformed input throws (which
 * closes the link).
 */
import * as encoding from 'lib0/encoding'
import * as decoding from 'lib0/decoding'
import { readByte, readBytes, readCount, readString, readUint } from '../../crdts/codec.js'
import { checkDocName } from './names.js'

export const YJS_CHANNEL = 'yjs'

export const KIND = {
  summaries: 1,
  summariesEnd: 2,
  update: 3,
  part: 4,
  awareness: 5,
  resync: 6,
} as const

/** What a node holds of one document: enough for a peer to tell whether it lacks anything. */
export interface DocSummary {
  name: string
  /** Y.encodeStateVector: the structs it has. */
  sv: Uint8Array
  /** A hash of its delete set (deletions create no structs, so the vector cannot show them). */
  dsHash: Uint8Array
}

export type YPeerMessage =
  | { t: 'summaries'; docs: DocSummary[] }
  | { t: 'summariesEnd' }
  | { t: 'update'; name: string; update: Uint8Array }
  | { t: 'part'; name: string; id: number; last: boolean; bytes: Uint8Array }
  | { t: 'awareness'; name: string; update: Uint8Array }
  | { t: 'resync' }

export class YPeerError extends Error {
  override readonly name = 'YPeerError'
}

export function encodeYPeerMessage(m: YPeerMessage): Uint8Array {
  const enc = encoding.createEncoder()
  encoding.writeUint8(enc, KIND[m.t])
  switch (m.t) {
    case 'summaries':
      encoding.writeVarUint(enc, m.docs.length)
      for (const d of m.docs) {
        encoding.writeVarString(enc, d.name)
        encoding.writeVarUint8Array(enc, d.sv)
        encoding.writeVarUint8Array(enc, d.dsHash)
      }
      break
    case 'update':
    case 'awareness':
      encoding.writeVarString(enc, m.name)
      encoding.writeVarUint8Array(enc, m.update)
      break
    case 'part':
      encoding.writeVarString(enc, m.name)
      encoding.writeVarUint(enc, m.id)
      encoding.writeUint8(enc, m.last ? 1 : 0)
      encoding.writeVarUint8Array(enc, m.bytes)
      break
    case 'summariesEnd':
    case 'resync':
      break
  }
  return encoding.toUint8Array(enc)
}

function name(dec: decoding.Decoder): string {
  const s = readString(dec, 'yjs peer message')
  const bad = checkDocName(s)
  if (bad) throw new YPeerError(bad)
  return s
}

/** Byte arrays handed on to Yjs are copies with a buffer of their own. */
const bytes = (dec: decoding.Decoder): Uint8Array => readBytes(dec, 'yjs peer message').slice()

export function decodeYPeerMessage(payload: Uint8Array): YPeerMessage {
  const dec = decoding.createDecoder(payload)
  const what = 'yjs peer message'
  let m: YPeerMessage
  try {
    const kind = readByte(dec, what)
    switch (kind) {
      case KIND.summaries: {
        const n = readCount(dec, what, 3)
        const docs: DocSummary[] = []
        for (let i = 0; i < n; i++) docs.push({ name: name(dec), sv: bytes(dec), dsHash: bytes(dec) })
        m = { t: 'summaries', docs }
        break
      }
      case KIND.summariesEnd:
        m = { t: 'summariesEnd' }
        break
      case KIND.update:
        m = { t: 'update', name: name(dec), update: bytes(dec) }
        break
      case KIND.part: {
        const n = name(dec)
        const id = readUint(dec, what)
        const last = readByte(dec, what)
        if (last > 1) throw new YPeerError(`bad last flag ${last}`)
        m = { t: 'part', name: n, id, last: last === 1, bytes: bytes(dec) }
        break
      }
      case KIND.awareness:
        m = { t: 'awareness', name: name(dec), update: bytes(dec) }
        break
      case KIND.resync:
        m = { t: 'resync' }
        break
      default:
        throw new YPeerError(`unknown yjs message kind ${kind}`)
    }
  } catch (err) {
    if (err instanceof YPeerError) throw err
    throw new YPeerError((err as Error).message)
  }
  if (decoding.hasContent(dec)) throw new YPeerError(`trailing bytes after a yjs ${m.t} message`)
  return m
}
