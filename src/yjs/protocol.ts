/**
 * The y-websocket wire protocol as a client speaks it (y-protocols' sync and awareness messages
 * inside y-websocket's envelope), parsed strictly: a client's bytes are untrusted, so every
 * length is checked against what is left, nothing may trail, and what goes on to Yjs is a copy
 * with a buffer of its own (Yjs reads a byte array through its ArrayBuffer, which for a WebSocket
 * message may be a larger pooled buffer).
 *
 *   message   := varUint type, body
 *   type 0    sync:       varUint kind, varUint8Array payload
 *                           kind 0 step 1: a state vector; the answer is step 2 with what it lacks
 *                           kind 1 step 2: an update (the other side's answer to our step 1)
 *                           kind 2 update: an update
 *   type 1    awareness:  varUint8Array awareness update
 *   type 3    query awareness: empty; the answer is the awareness of every known client
 *
 * Type 2 (auth) is only ever sent by servers (to deny access); a client sending it, or any other
 * type, is speaking something else.
 */
import * as encoding from 'lib0/encoding'
import * as decoding from 'lib0/decoding'
import { readBytes, readString, readUint } from '../../crdts/codec.js'

export const MESSAGE_SYNC = 0
export const MESSAGE_AWARENESS = 1
export const MESSAGE_QUERY_AWARENESS = 3
export const SYNC_STEP1 = 0
export const SYNC_STEP2 = 1
export const SYNC_UPDATE = 2

export type ClientMessage =
  | { t: 'step1'; sv: Uint8Array }
  | { t: 'step2'; update: Uint8Array }
  | { t: 'update'; update: Uint8Array }
  | { t: 'awareness'; update: Uint8Array }
  | { t: 'queryAwareness' }

export class YMessageError extends Error {
  override readonly name = 'YMessageError'
}

function guard<T>(what: string, read: () => T): T {
  try {
    return read()
  } catch (err) {
    throw new YMessageError(`malformed ${what}: ${(err as Error).message}`)
  }
}

/** Parses one client message; throws YMessageError for anything a y-websocket client would not send. */
export function parseClientMessage(bytes: Uint8Array): ClientMessage {
  const dec = decoding.createDecoder(bytes)
  const type = guard('message type', () => readUint(dec, 'y-websocket message'))
  let m: ClientMessage
  switch (type) {
    case MESSAGE_SYNC: {
      const kind = guard('sync message', () => readUint(dec, 'sync message'))
      const payload = guard('sync message', () => readBytes(dec, 'sync message')).slice()
      if (kind === SYNC_STEP1) {
        checkStateVector(payload)
        m = { t: 'step1', sv: payload }
      } else if (kind === SYNC_STEP2) m = { t: 'step2', update: payload }
      else if (kind === SYNC_UPDATE) m = { t: 'update', update: payload }
      else throw new YMessageError(`unknown sync message kind ${kind}`)
      break
    }
    case MESSAGE_AWARENESS: {
      const update = guard('awareness message', () => readBytes(dec, 'awareness message')).slice()
      checkAwarenessUpdate(update)
      m = { t: 'awareness', update }
      break
    }
    case MESSAGE_QUERY_AWARENESS:
      m = { t: 'queryAwareness' }
      break
    default:
      throw new YMessageError(`unknown message type ${type} (y-websocket clients send 0 sync, 1 awareness, 3 query awareness)`)
  }
  if (decoding.hasContent(dec)) throw new YMessageError(`${dec.arr.length - dec.pos} trailing bytes after a ${m.t} message`)
  return m
}

/** A Yjs state vector: count, then (client, clock) pairs. */
export function checkStateVector(sv: Uint8Array): void {
  const dec = decoding.createDecoder(sv)
  guard('state vector', () => {
    const n = readUint(dec, 'state vector')
    if (n * 2 > sv.length) throw new Error(`count ${n} exceeds the bytes left`)
    for (let i = 0; i < n; i++) {
      readUint(dec, 'state vector')
      readUint(dec, 'state vector')
    }
  })
  if (decoding.hasContent(dec)) throw new YMessageError('trailing bytes after a state vector')
}

/**
 * An awareness update: count, then per client its id, clock and state as JSON text. Checked in
 * full before y-protocols applies it, which would otherwise apply the entries before a bad one
 * and then throw without telling anyone of them.
 */
export function checkAwarenessUpdate(update: Uint8Array): void {
  const dec = decoding.createDecoder(update)
  guard('awareness update', () => {
    const n = readUint(dec, 'awareness update')
    if (n * 3 > update.length) throw new Error(`count ${n} exceeds the bytes left`)
    for (let i = 0; i < n; i++) {
      readUint(dec, 'awareness update')
      readUint(dec, 'awareness update')
      JSON.parse(readString(dec, 'awareness update'))
    }
  })
  if (decoding.hasContent(dec)) throw new YMessageError('trailing bytes after an awareness update')
}

function syncMessage(kind: number, payload: Uint8Array): Uint8Array {
  const enc = encoding.createEncoder()
  encoding.writeVarUint(enc, MESSAGE_SYNC)
  encoding.writeVarUint(enc, kind)
  encoding.writeVarUint8Array(enc, payload)
  return encoding.toUint8Array(enc)
}

export const encodeSyncStep1 = (sv: Uint8Array): Uint8Array => syncMessage(SYNC_STEP1, sv)
export const encodeSyncStep2 = (update: Uint8Array): Uint8Array => syncMessage(SYNC_STEP2, update)
export const encodeUpdate = (update: Uint8Array): Uint8Array => syncMessage(SYNC_UPDATE, update)

export function encodeAwareness(update: Uint8Array): Uint8Array {
  const enc = encoding.createEncoder()
  encoding.writeVarUint(enc, MESSAGE_AWARENESS)
  encoding.writeVarUint8Array(enc, update)
  return encoding.toUint8Array(enc)
}
