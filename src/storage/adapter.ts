/**
 * The storage seam: an ordered map of bytes to bytes with atomic batches, as automerge-repo's
 * storage adapters store bytes under keys and know nothing of what they mean. The layout (what
 * the keys and values are) lives in layout.ts; the engine (group commit, recovery, compaction) in
 * engine.ts. LevelDB is the adapter a node uses; the in-memory one serves tests and embedders
 * that want no disk. Both pass test/adapters/storageAdapter.test.ts.
 */

export type WriteOp = { type: 'put'; key: Uint8Array; value: Uint8Array } | { type: 'del'; key: Uint8Array }

/** Keys k with gte <= k < lt, compared bytewise. */
export interface KeyRange {
  gte: Uint8Array
  lt: Uint8Array
}

export interface StorageAdapter {
  get(key: Uint8Array): Promise<Uint8Array | undefined>
  /** Applies all ops atomically; with `sync` the batch is on stable storage when this resolves. */
  write(ops: WriteOp[], opts: { sync: boolean }): Promise<void>
  /** Entries in ascending key order, delivered in chunks so a scan of millions stays cheap. */
  scan(range: KeyRange, opts?: { reverse?: boolean; limit?: number }): AsyncIterable<Array<[Uint8Array, Uint8Array]>>
  /** Deletes every key in the range. */
  clear(range: KeyRange): Promise<void>
  /** Gives the space of deleted or overwritten entries in the range back to the file system. */
  compact(range: KeyRange): Promise<void>
  /** Bytes the store takes on disk now (0 for memory). */
  diskBytes(): Promise<number>
  close(): Promise<void>
}

export class StorageError extends Error {
  override readonly name = 'StorageError'
  constructor(
    readonly code: 'locked' | 'io' | 'corrupt' | 'replica_mismatch' | 'closed' | 'layout',
    message: string,
  ) {
    super(message)
  }
}

export function compareBytes(a: Uint8Array, b: Uint8Array): number {
  const n = Math.min(a.length, b.length)
  for (let i = 0; i < n; i++) {
    const d = (a[i] as number) - (b[i] as number)
    if (d !== 0) return d
  }
  return a.length - b.length
}
