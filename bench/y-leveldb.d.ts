/**
 * y-leveldb 0.2.0 ships declarations but its package.json "exports" does not name them, so
 * TypeScript cannot find them; this declares the part bench/yjs.ts uses.
 */
declare module 'y-leveldb' {
  import type { Doc } from 'yjs'
  export class LeveldbPersistence {
    constructor(location: string, opts?: { levelOptions?: object })
    storeUpdate(docName: string, update: Uint8Array): Promise<number>
    getYDoc(docName: string): Promise<Doc>
    destroy(): Promise<void>
  }
  /** Encodes y-leveldb's keys (e.g. ['v1', docName, 'update', clock]) into the bytes it stores. */
  export const keyEncoding: { encode(key: Array<string | number>): Uint8Array }
}
