/**
 * The master dataset of the Lambda Architecture, as the demo keeps it: an append-only NDJSON file
 * of raw events, never rewritten. The speed layer may lose or double-count nothing that matters,
 * because the batch layer recomputes from this file.
 *
 * Writes are appended in the order they are made (one `write` at a time, chained); `flushed()`
 * resolves once every append made so far is in the file. The reader follows the file
 * incrementally: each `readNew` returns the complete lines appended since the last call, so the
 * batch layer never reads the same bytes twice.
 */
import { open, type FileHandle } from 'node:fs/promises'

export class MasterWriter {
  private tail: Promise<void> = Promise.resolve()
  private failure: Error | null = null
  bytes = 0

  private constructor(private readonly fh: FileHandle) {}

  static async open(path: string): Promise<MasterWriter> {
    const fh = await open(path, 'a')
    const w = new MasterWriter(fh)
    w.bytes = (await fh.stat()).size
    return w
  }

  /** Appends `text` (whole NDJSON lines, each ending in "\n"). Errors surface in `flushed()`. */
  append(text: string): void {
    if (text.length === 0) return
    const buf = Buffer.from(text, 'utf8')
    this.tail = this.tail.then(async () => {
      if (this.failure) return
      try {
        let off = 0
        while (off < buf.length) off += (await this.fh.write(buf, off)).bytesWritten
        this.bytes += buf.length
      } catch (err) {
        this.failure = err as Error
      }
    })
  }

  /** Resolves once everything appended so far is written; rejects if an append failed. */
  async flushed(): Promise<void> {
    await this.tail
    if (this.failure) throw this.failure
  }

  async close(): Promise<void> {
    await this.tail
    await this.fh.close()
  }
}

const CHUNK = 1 << 20

export class MasterReader {
  /** Bytes of complete lines consumed so far: the next call starts here. */
  offset = 0

  constructor(private readonly path: string) {}

  /**
   * Calls `onLine` for every complete line appended since the last call (a line still being
   * written is left for the next call, which reads it again whole). Reads in 1 MiB chunks, so
   * memory does not grow with the file.
   */
  async readNew(onLine: (line: string) => void): Promise<number> {
    let fh: FileHandle
    try {
      fh = await open(this.path, 'r')
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return 0
      throw err
    }
    let lines = 0
    try {
      const end = (await fh.stat()).size
      let carry: Buffer = Buffer.alloc(0)
      let pos = this.offset
      while (pos < end) {
        const chunk = Buffer.allocUnsafe(Math.min(CHUNK, end - pos))
        const { bytesRead } = await fh.read(chunk, 0, chunk.length, pos)
        if (bytesRead === 0) break
        pos += bytesRead
        const data = carry.length > 0 ? Buffer.concat([carry, chunk.subarray(0, bytesRead)]) : chunk.subarray(0, bytesRead)
        // Cut at the last newline: a chunk may end inside a line or a UTF-8 sequence, a newline never.
        const nl = data.lastIndexOf(0x0a)
        if (nl < 0) {
          carry = Buffer.from(data)
          continue
        }
        carry = Buffer.from(data.subarray(nl + 1))
        this.offset += nl + 1
        for (const line of data.toString('utf8', 0, nl).split('\n')) {
          if (line.length === 0) continue
          onLine(line)
          lines++
        }
      }
    } finally {
      await fh.close()
    }
    return lines
  }
}
