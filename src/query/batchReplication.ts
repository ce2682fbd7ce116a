/**
 * Batch views over the peer protocol (the `batch` extension channel, docs/protocol.md).
 *
 * A batch view is a join-semilattice element of its own (the greater (horizon, stamp) wins whole,
 * batchView.ts), so replicating it needs no log: a node sends every batch view it holds when a link
 * comes up, and sends a batch view again to every other peer whenever one wins here (a local
 * import or a merge). A merge that changes nothing stops the flood, so relays along any connected
 * graph end, and a peer that missed an import during a partition gets it on reconnect.
 *
 * A batch view can be larger than one peer message, so it travels in chunks that the receiver
 * reassembles per (peer, view); a transfer that restarts at offset 0 replaces an unfinished one.
 *
 * Payload v1: version byte 1, view varString, total length varUint, offset varUint, chunk
 * varUint8Array (the bytes [offset, offset + chunk length) of the encoded batch view).
 */
import * as encoding from 'lib0/encoding'
import * as decoding from 'lib0/decoding'
import { readBytes, readString, readUint, readVersion, writeVersion } from '../../crdts/codec.js'
import type { ExtensionPort, Replicator } from '../replication/replicator.js'
import type { ViewStore } from '../store/viewStore.js'

export const BATCH_CHANNEL = 'batch'
const TYPE = 'batch channel'
const CHUNK_BYTES = 512 * 1024

/** What this module needs of the node's batch views (NodeBatch). */
export interface BatchSource {
  encode(view: string): Uint8Array | null
  merge(view: string, bytes: Uint8Array): boolean
  views(): string[]
  onChange(listener: (view: string) => void): () => void
}

export interface BatchChunk {
  view: string
  total: number
  offset: number
  chunk: Uint8Array
}

export function encodeBatchChunk(c: BatchChunk): Uint8Array {
  const enc = encoding.createEncoder()
  writeVersion(enc)
  encoding.writeVarString(enc, c.view)
  encoding.writeVarUint(enc, c.total)
  encoding.writeVarUint(enc, c.offset)
  encoding.writeVarUint8Array(enc, c.chunk)
  return encoding.toUint8Array(enc)
}

export function decodeBatchChunk(bytes: Uint8Array): BatchChunk {
  const dec = decoding.createDecoder(bytes)
  readVersion(dec, TYPE)
  const view = readString(dec, TYPE)
  const total = readUint(dec, TYPE)
  const offset = readUint(dec, TYPE)
  const chunk = readBytes(dec, TYPE)
  if (decoding.hasContent(dec)) throw new Error(`${TYPE}: trailing bytes`)
  if (offset + chunk.length > total) throw new Error(`${TYPE}: chunk [${offset}, ${offset + chunk.length}) beyond the total of ${total} bytes`)
  if (chunk.length === 0 && total > 0) throw new Error(`${TYPE}: empty chunk`)
  return { view, total, offset, chunk }
}

/** Splits an encoded batch view into the payloads that carry it. */
export function chunksOf(view: string, bytes: Uint8Array, chunkBytes = CHUNK_BYTES): Uint8Array[] {
  const out: Uint8Array[] = []
  for (let offset = 0; offset === 0 || offset < bytes.length; offset += chunkBytes) {
    out.push(encodeBatchChunk({ view, total: bytes.length, offset, chunk: bytes.subarray(offset, offset + chunkBytes) }))
  }
  return out
}

interface Assembly {
  buf: Uint8Array
  filled: number
}

export interface BatchReplicationStats {
  sent: number
  received: number
  won: number
  /** Batch views for a view this node does not know yet, held until its definition arrives. */
  held: number
}

/**
 * Wires the batch views of a node to its replicator. Returns a function that stops listening
 * (the channel stays registered: the replicator closes with the node).
 */
export function replicateBatchViews(batch: BatchSource, store: ViewStore, replicator: Replicator, log: (line: string) => void): { stats: BatchReplicationStats; stop: () => void } {
  const stats: BatchReplicationStats = { sent: 0, received: 0, won: 0, held: 0 }
  const assemblies = new Map<string, Assembly>()
  /** The latest batch view received for a view this node does not know yet. */
  const waiting = new Map<string, Uint8Array>()
  /** The peer whose batch view is being merged: it has it already. */
  let mergingFrom: string | null = null

  const sendTo = (port: ExtensionPort, peer: string, view: string): void => {
    const bytes = batch.encode(view)
    if (bytes === null) return
    for (const payload of chunksOf(view, bytes)) if (!port.send(peer, payload)) return
    stats.sent++
  }

  const mergeWhole = (peer: string, view: string, bytes: Uint8Array): void => {
    stats.received++
    if (!store.hasView(view)) {
      // Definitions travel ahead on the same link, so this is a view the catalog dropped or has
      // not merged yet: keep it (only the latest) until the view exists.
      waiting.set(view, bytes)
      stats.held = waiting.size
      return
    }
    mergingFrom = peer
    try {
      if (batch.merge(view, bytes)) stats.won++
    } finally {
      mergingFrom = null
    }
  }

  const port = replicator.extension(BATCH_CHANNEL, {
    linkUp(peer) {
      for (const view of batch.views()) sendTo(port, peer, view)
    },
    linkDown(peer) {
      for (const key of [...assemblies.keys()]) if (key.startsWith(`${peer}\u0000`)) assemblies.delete(key)
    },
    message(peer, payload) {
      const c = decodeBatchChunk(payload)
      const id = `${peer}\u0000${c.view}`
      if (c.offset === 0 && c.chunk.length === c.total) {
        assemblies.delete(id)
        return mergeWhole(peer, c.view, c.chunk)
      }
      let a = assemblies.get(id)
      if (c.offset === 0) {
        a = { buf: new Uint8Array(c.total), filled: 0 }
        assemblies.set(id, a)
      }
      if (a === undefined || a.buf.length !== c.total || a.filled !== c.offset) {
        throw new Error(`${TYPE}: chunk at ${c.offset} of view "${c.view}" out of sequence`)
      }
      a.buf.set(c.chunk, c.offset)
      a.filled += c.chunk.length
      if (a.filled === c.total) {
        assemblies.delete(id)
        mergeWhole(peer, c.view, a.buf)
      }
    },
  })

  const stopChange = batch.onChange((view) => {
    for (const peer of port.peers()) if (peer !== mergingFrom) sendTo(port, peer, view)
  })
  const stopDefine = store.subscribe((ev) => {
    if (ev.kind !== 'define') return
    const bytes = waiting.get(ev.view.name)
    if (bytes === undefined) return
    waiting.delete(ev.view.name)
    stats.held = waiting.size
    try {
      batch.merge(ev.view.name, bytes)
    } catch (err) {
      log(`a batch view received for "${ev.view.name}" before its definition does not apply to it: ${(err as Error).message}`)
    }
  })
  return {
    stats,
    stop: () => {
      stopChange()
      stopDefine()
    },
  }
}
