/**
 * Yjs documents on disk: their own region ('y') of the node's LevelDB, written through the
 * storage adapter by a group commit of their own (one LevelDB batch per turn of the event loop),
 * so that a burst of edits costs one write and the view engine's queue is left alone.
 *
 * Layout (docs/storage.md):
 *
 *   'y' 'd' utf8(name)                          directory record: what a peer can be told without
 *                                               loading the document (see DocDir)
 *   'y' 'u' u16be(len) utf8(name) u64be(seq)    one entry per update, in the order applied here
 *
 * The entries of a document are a snapshot (kind 0: Y.encodeStateAsUpdate of everything up to
 * its seq) followed by the updates after it (kind 1). Compaction writes a new snapshot at the seq
 * of the last update it includes and deletes the entries before it in the same batch, so a crash
 * leaves either the old entries or the new snapshot, never a gap. Yjs updates are idempotent, so
 * an update found again in a later snapshot would change nothing either.
 */
import * as encoding from 'lib0/encoding'
import * as decoding from 'lib0/decoding'
import { readBytes, readUint } from '../../crdts/codec.js'
import { StorageError, type KeyRange, type StorageAdapter, type WriteOp } from '../storage/adapter.js'
import { crc32 } from 'node:zlib'
import { LAYOUT_VERSION, LayoutError, YJS_PREFIX, seal, unseal } from '../storage/layout.js'

const DIR = 0x64 // 'd'
const DATA = 0x75 // 'u'
const KIND_SNAPSHOT = 0
const KIND_UPDATE = 1
/** Past this many entries to delete, compaction clears a range after the batch instead of deleting key by key. */
const MAX_DELETES_IN_BATCH = 4096

const utf8 = new TextEncoder()
const utf8d = new TextDecoder('utf-8', { fatal: true })

/**
 * A document's directory record: its state vector and a hash of its delete set as of update
 * `seq`, which lets catch-up with a peer decide without loading the document whether the peer
 * lacks anything. Written when the document is compacted or unloaded; when later updates exist
 * on disk (a crash came first) the record is stale and the document is loaded instead.
 */
export interface DocDir {
  seq: number
  sv: Uint8Array
  dsHash: Uint8Array
  /** Bytes of the document's entries (snapshot and updates) as of `seq`. */
  bytes: number
  /** Updates after the snapshot as of `seq`. */
  updates: number
}

/** What `read` finds of a document. */
export interface StoredDoc {
  snapshot: Uint8Array | null
  updates: Uint8Array[]
  /** Seq of the first entry (the snapshot if any), 0 when there is none. */
  firstSeq: number
  /** Seq of the last entry, 0 when there is none. */
  lastSeq: number
  snapshotBytes: number
  updateBytes: number
}

export interface DirectoryEntry {
  name: string
  dir: DocDir
  /** Seq of the document's last entry on disk. */
  lastSeq: number
}

/** Key prefixes of recent names: an update's key is built for every update. */
const prefixes = new Map<string, Uint8Array>()

function namePrefix(name: string): Uint8Array {
  const cached = prefixes.get(name)
  if (cached) return cached
  if (prefixes.size >= 4096) prefixes.clear()
  const nb = utf8.encode(name)
  if (nb.length > 0xffff) throw new LayoutError('document name too long')
  const k = new Uint8Array(4 + nb.length)
  k[0] = YJS_PREFIX
  k[1] = DATA
  k[2] = nb.length >>> 8
  k[3] = nb.length & 0xff
  k.set(nb, 4)
  prefixes.set(name, k)
  return k
}

export function dataKey(name: string, seq: number): Uint8Array {
  const p = namePrefix(name)
  const k = new Uint8Array(p.length + 8)
  k.set(p, 0)
  const v = new DataView(k.buffer)
  v.setUint32(p.length, Math.floor(seq / 2 ** 32))
  v.setUint32(p.length + 4, seq >>> 0)
  return k
}

function seqOf(key: Uint8Array): number {
  const v = new DataView(key.buffer, key.byteOffset, key.byteLength)
  return v.getUint32(key.length - 8) * 2 ** 32 + v.getUint32(key.length - 4)
}

/** Every entry of one document: the prefix is unique per name because it carries the name's length. */
export function docRange(name: string): KeyRange {
  const p = namePrefix(name)
  return { gte: dataKey(name, 0), lt: Uint8Array.from([...p, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]) }
}

function dirKey(name: string): Uint8Array {
  return Uint8Array.from([YJS_PREFIX, DIR, ...utf8.encode(name)])
}

const DIR_RANGE: KeyRange = { gte: Uint8Array.of(YJS_PREFIX, DIR), lt: Uint8Array.of(YJS_PREFIX, DIR + 1) }
/** The whole Yjs region, for whoever wants its size. */
export const YJS_RANGE: KeyRange = { gte: Uint8Array.of(YJS_PREFIX), lt: Uint8Array.of(YJS_PREFIX + 1) }

/** `seal([kind, ...bytes])`, in one allocation (every update goes through here). */
function sealEntry(kind: number, bytes: Uint8Array): Uint8Array {
  const out = new Uint8Array(6 + bytes.length)
  out[0] = LAYOUT_VERSION
  out[5] = kind
  out.set(bytes, 6)
  new DataView(out.buffer).setUint32(1, crc32(out.subarray(5)), true)
  return out
}

export function encodeDir(d: DocDir): Uint8Array {
  const enc = encoding.createEncoder()
  encoding.writeVarUint(enc, d.seq)
  encoding.writeVarUint8Array(enc, d.sv)
  encoding.writeVarUint8Array(enc, d.dsHash)
  encoding.writeVarUint(enc, d.bytes)
  encoding.writeVarUint(enc, d.updates)
  return seal(encoding.toUint8Array(enc))
}

export function decodeDir(value: Uint8Array): DocDir {
  const dec = decoding.createDecoder(unseal(value))
  const what = 'yjs directory record'
  const d: DocDir = { seq: readUint(dec, what), sv: readBytes(dec, what).slice(), dsHash: readBytes(dec, what).slice(), bytes: readUint(dec, what), updates: readUint(dec, what) }
  if (decoding.hasContent(dec)) throw new LayoutError('trailing bytes in a yjs directory record')
  return d
}

interface Batch {
  ops: WriteOp[]
  bytes: number
  done: Promise<void>
  resolve: () => void
  reject: (err: Error) => void
  awaited: boolean
  /** Ranges to clear once the batch is written (compactions too large for one batch). */
  clears: KeyRange[]
}

function newBatch(): Batch {
  let resolve!: () => void
  let reject!: (err: Error) => void
  const done = new Promise<void>((res, rej) => {
    resolve = res
    reject = rej
  })
  // Reported to whoever awaits the batch; an unawaited one must not crash the process.
  done.catch(() => {})
  return { ops: [], bytes: 0, done, resolve, reject, awaited: false, clears: [] }
}

export interface DocStoreStats {
  batches: number
  updatesWritten: number
  updateBytesWritten: number
  snapshotsWritten: number
}

export class DocStore {
  private pending = newBatch()
  private flushing = false
  private scheduled = false
  private inFlightBytes = 0
  private closed = false
  private failure: Error | null = null
  readonly stats: DocStoreStats = { batches: 0, updatesWritten: 0, updateBytesWritten: 0, snapshotsWritten: 0 }

  constructor(
    private readonly adapter: StorageAdapter,
    private readonly opts: { fsync: boolean },
  ) {}

  /** Set once a write failed: nothing written after it can be promised durable. */
  get failed(): Error | null {
    return this.failure
  }

  pendingBytes(): number {
    return this.inFlightBytes + this.pending.bytes
  }

  /** Every document with a directory record, and the seq of its last entry on disk. */
  async directory(): Promise<DirectoryEntry[]> {
    const out: DirectoryEntry[] = []
    for await (const chunk of this.adapter.scan(DIR_RANGE)) {
      for (const [k, v] of chunk) {
        let name: string
        let dir: DocDir
        try {
          name = utf8d.decode(k.subarray(2))
          dir = decodeDir(v)
        } catch (err) {
          throw new StorageError('corrupt', `a yjs directory record is corrupt (${(err as Error).message}); the data directory cannot be trusted`)
        }
        out.push({ name, dir, lastSeq: 0 })
      }
    }
    // One seek per document: a directory record older than the last entry means a crash came
    // between an update and the next record, and the record cannot be trusted for catch-up.
    for (const e of out) {
      for await (const chunk of this.adapter.scan(docRange(e.name), { reverse: true, limit: 1 })) {
        for (const [k] of chunk) e.lastSeq = seqOf(k)
      }
    }
    return out
  }

  /** A document's snapshot and the updates after it, in order. */
  async read(name: string): Promise<StoredDoc> {
    const out: StoredDoc = { snapshot: null, updates: [], firstSeq: 0, lastSeq: 0, snapshotBytes: 0, updateBytes: 0 }
    for await (const chunk of this.adapter.scan(docRange(name))) {
      for (const [k, v] of chunk) {
        const seq = seqOf(k)
        let body: Uint8Array
        try {
          body = unseal(v)
          if (body.length < 1 || (body[0] !== KIND_SNAPSHOT && body[0] !== KIND_UPDATE)) throw new LayoutError('unknown entry kind')
        } catch (err) {
          throw new StorageError('corrupt', `entry ${seq} of yjs document "${name}" is corrupt (${(err as Error).message})`)
        }
        if (out.firstSeq === 0) out.firstSeq = seq
        out.lastSeq = seq
        // A copy with a buffer of its own: Yjs decoders must not see past the entry.
        const bytes = body.slice(1)
        if (body[0] === KIND_SNAPSHOT) {
          // Only the first entry can be a snapshot; one further on means an interrupted
          // compaction left older entries before it: they are included in it.
          out.snapshot = bytes
          out.snapshotBytes = v.length
          out.updates = []
          out.updateBytes = 0
        } else {
          out.updates.push(bytes)
          out.updateBytes += v.length
        }
      }
    }
    return out
  }

  /** Queues an update for the next group commit; resolves once it is durable. */
  append(name: string, seq: number, update: Uint8Array): Promise<void> {
    const value = sealEntry(KIND_UPDATE, update)
    this.stats.updatesWritten++
    this.stats.updateBytesWritten += value.length
    return this.enqueue({ type: 'put', key: dataKey(name, seq), value })
  }

  /** Bytes an update of this size takes in its entry (what GET /yjs counts). */
  static entryBytes(update: Uint8Array): number {
    return update.length + 6
  }

  putDir(name: string, dir: DocDir): Promise<void> {
    return this.enqueue({ type: 'put', key: dirKey(name), value: encodeDir(dir) })
  }

  /**
   * Writes `snapshot` as the document's entry `seq` (which it replaces) and deletes the entries
   * from `fromSeq` up to it, with the directory record, in one batch queued after every update
   * appended so far: the snapshot is never on disk without the updates it includes being gone
   * in the same write, nor before them.
   */
  replace(name: string, seq: number, snapshot: Uint8Array, fromSeq: number, dir: DocDir): Promise<void> {
    const ops: WriteOp[] = [{ type: 'put', key: dataKey(name, seq), value: sealEntry(KIND_SNAPSHOT, snapshot) }]
    const b = this.pending
    if (seq - fromSeq <= MAX_DELETES_IN_BATCH) {
      for (let s = fromSeq; s < seq; s++) ops.push({ type: 'del', key: dataKey(name, s) })
    } else {
      // Safe after the batch: until the range is cleared the old entries are merely redundant.
      b.clears.push({ gte: dataKey(name, fromSeq), lt: dataKey(name, seq) })
    }
    ops.push({ type: 'put', key: dirKey(name), value: encodeDir(dir) })
    this.stats.snapshotsWritten++
    return this.enqueue(...ops)
  }

  /**
   * Gives the space of a document's deleted entries back to the file system. `firstSeq` is the
   * seq of its snapshot (entries before it were deleted).
   *
   * Why twice, with a write in between: LevelDB's CompactRange first writes its memtable out,
   * and a table that overlaps nothing goes straight to level 2, which CompactRange then leaves
   * alone (it compacts only the levels above the deepest one holding the range). Deleted entries
   * and their tombstones would stay on disk until some later write came to overlap them. A key
   * written and deleted again inside the range makes the second memtable table land above them
   * (level 1), and the second CompactRange merges it down, dropping what was deleted.
   */
  async compactDisk(name: string, firstSeq: number): Promise<void> {
    if (this.closed) return
    const range = docRange(name)
    await this.adapter.compact(range)
    if (firstSeq < 2 || this.closed) return
    // Between entry firstSeq - 1 (deleted) and firstSeq: inside what the first pass wrote out.
    const k = dataKey(name, firstSeq - 1)
    const marker = new Uint8Array(k.length + 1)
    marker.set(k, 0)
    await this.adapter.write(
      [
        { type: 'put', key: marker, value: new Uint8Array(0) },
        { type: 'del', key: marker },
      ],
      { sync: false },
    )
    await this.adapter.compact(range)
  }

  /** Resolves once everything queued so far is durable (rejects if a write failed). */
  barrier(): Promise<void> {
    if (this.failure) return Promise.reject(this.failure)
    this.pending.awaited = true
    this.schedule()
    return this.pending.done
  }

  private enqueue(...ops: WriteOp[]): Promise<void> {
    if (this.failure) return Promise.reject(this.failure)
    if (this.closed) return Promise.reject(new StorageError('closed', 'the node is shutting down'))
    const b = this.pending
    for (const op of ops) {
      b.ops.push(op)
      b.bytes += op.key.length + (op.type === 'put' ? op.value.length : 0)
    }
    this.schedule()
    return b.done
  }

  private schedule(): void {
    if (this.scheduled || this.flushing) return
    this.scheduled = true
    setImmediate(() => void this.flush())
  }

  private async flush(): Promise<void> {
    this.scheduled = false
    const b = this.pending
    this.pending = newBatch()
    if (b.ops.length === 0 && b.clears.length === 0) {
      b.resolve()
      return
    }
    this.flushing = true
    this.inFlightBytes = b.bytes
    try {
      await this.adapter.write(b.ops, { sync: this.opts.fsync })
      for (const r of b.clears) await this.adapter.clear(r)
      this.stats.batches++
      b.resolve()
    } catch (err) {
      // Memory holds edits the disk does not: from now on nothing can be promised durable.
      this.failure = new StorageError('io', `a write of yjs documents failed (${(err as Error).message}); restart the node`)
      b.reject(this.failure)
    } finally {
      this.flushing = false
      this.inFlightBytes = 0
    }
    const p = this.pending
    if (p.ops.length > 0 || p.clears.length > 0 || p.awaited) this.schedule()
  }

  /** Writes what is queued; afterwards every write is refused. The adapter is the node's to close. */
  async close(): Promise<void> {
    if (this.closed) return
    await this.barrier().catch(() => {})
    this.closed = true
    while (this.flushing) await new Promise<void>((r) => setImmediate(r))
  }
}
