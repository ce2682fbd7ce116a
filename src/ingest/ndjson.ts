/**
 * NDJSON bodies for `POST /ingest`, read as a stream: lines are split across chunks without ever
 * holding the body, and a single line may not exceed a bound (--max-body).
 *
 * "A bad line is answered with its line number and nothing of the batch is applied", yet a bad
 * line may come after gigabytes of good ones. Hence two passes: `spoolNdjson` checks every line
 * while it keeps the raw body (in memory up to a bound, past it in a temp file), and only once
 * the whole body has passed does the caller read it back (`Spooled.chunks`) and apply it.
 */
import { createReadStream, createWriteStream, type WriteStream } from 'node:fs'
import { unlink } from 'node:fs/promises'
import { isUtf8 } from 'node:buffer'
import { randomUUID } from 'node:crypto'
import os from 'node:os'
import path from 'node:path'
import type { Readable } from 'node:stream'
import { isPlainObject } from '../../crdts/validate.js'

/** A body that cannot be taken: `line` is its 1-based number (0 when no line is to blame). */
export class NdjsonError extends Error {
  override readonly name = 'NdjsonError'
  constructor(
    readonly status: 400 | 413 | 503,
    readonly code: string,
    message: string,
    readonly line: number,
  ) {
    super(message)
  }
}

const NL = 0x0a

/**
 * Splits a byte stream into lines (without their "\n") and hands them on as strings. Splitting
 * bytes on 0x0A is safe in UTF-8: that byte never occurs inside a multi-byte sequence. The whole
 * lines of a chunk are checked and decoded in one go and split as a string: a Buffer view and a
 * decode per line would cost more than parsing the line. Only a line spread over chunks is joined.
 */
export class LineSplitter {
  private parts: Buffer[] = []
  private partBytes = 0
  /** Lines handed on so far; the number of the last one. */
  line = 0

  /** `checkUtf8` false skips the UTF-8 check, for bytes that passed it before. */
  constructor(
    private readonly maxLineBytes: number,
    private readonly onLine: (line: string, lineNo: number) => void,
    private readonly checkUtf8 = true,
  ) {}

  /**
   * Throws NdjsonError 413 as soon as a line grows past the bound (before holding more of it),
   * 400 for a line that is not UTF-8, and whatever `onLine` throws.
   */
  push(chunk: Buffer): void {
    let start = 0
    if (this.partBytes > 0) {
      const nl = chunk.indexOf(NL)
      if (nl < 0) return this.keep(chunk, 0)
      if (this.partBytes + nl > this.maxLineBytes) throw this.tooLong(this.line + 1)
      this.parts.push(chunk.subarray(0, nl))
      const joined = Buffer.concat(this.parts, this.partBytes + nl)
      this.parts = []
      this.partBytes = 0
      this.emit(joined, 0, joined.length)
      start = nl + 1
    }
    const last = chunk.lastIndexOf(NL)
    if (last >= start) {
      this.emit(chunk, start, last)
      start = last + 1
    }
    if (start < chunk.length) this.keep(chunk, start)
  }

  /** The last line, if the body does not end with a newline. */
  end(): void {
    if (this.partBytes === 0) return
    const line = Buffer.concat(this.parts, this.partBytes)
    this.parts = []
    this.partBytes = 0
    this.emit(line, 0, line.length)
  }

  private keep(chunk: Buffer, from: number): void {
    this.partBytes += chunk.length - from
    if (this.partBytes > this.maxLineBytes) throw this.tooLong(this.line + 1)
    this.parts.push(from === 0 ? chunk : chunk.subarray(from))
  }

  /** Hands on the whole lines in buf[from, to), which holds no newline at `to`. */
  private emit(buf: Buffer, from: number, to: number): void {
    // Only a region longer than the bound can hold a line that is.
    if (to - from > this.maxLineBytes) this.eachLine(buf, from, to, (a, b, n) => {
      if (b - a > this.maxLineBytes) throw this.tooLong(n)
    })
    if (this.checkUtf8 && !isUtf8(buf.subarray(from, to))) {
      this.eachLine(buf, from, to, (a, b, n) => {
        if (!isUtf8(buf.subarray(a, b))) throw new NdjsonError(400, 'bad_line', `line ${n} is not valid UTF-8`, n)
      })
    }
    const text = buf.toString('utf8', from, to)
    if (text.indexOf('\n') < 0) return this.onLine(text, ++this.line)
    for (const line of text.split('\n')) this.onLine(line, ++this.line)
  }

  private eachLine(buf: Buffer, from: number, to: number, f: (a: number, b: number, lineNo: number) => void): void {
    let n = this.line
    for (let a = from; a <= to; ) {
      let b = buf.indexOf(NL, a)
      if (b < 0 || b > to) b = to
      f(a, b, ++n)
      a = b + 1
    }
  }

  private tooLong(lineNo: number): NdjsonError {
    return new NdjsonError(413, 'too_large', `line ${lineNo} is longer than --max-body (${this.maxLineBytes} bytes)`, lineNo)
  }
}

function isBlank(line: string): boolean {
  for (let i = 0; i < line.length; i++) {
    const c = line.charCodeAt(i)
    if (c !== 0x20 && c !== 0x09 && c !== 0x0d) return false
  }
  return true
}

/**
 * One line: the event, or null for a blank line. Throws NdjsonError 400 naming the line when it is
 * not a JSON object.
 */
export function parseLine(line: string, lineNo: number): Record<string, unknown> | null {
  // A byte order mark, which some editors put first, is no reason to refuse a file.
  if (lineNo === 1 && line.charCodeAt(0) === 0xfeff) line = line.slice(1)
  if (isBlank(line)) return null
  let event: unknown
  try {
    event = JSON.parse(line)
  } catch (err) {
    throw new NdjsonError(400, 'bad_line', `line ${lineNo} is not valid JSON: ${(err as Error).message}`, lineNo)
  }
  if (!isPlainObject(event)) {
    const what = event === null ? 'null' : Array.isArray(event) ? 'an array' : `a ${typeof event}`
    throw new NdjsonError(400, 'bad_line', `line ${lineNo} is ${what}, not a JSON object (one event per line)`, lineNo)
  }
  return event
}

export interface SpoolOptions {
  /** Longest line in bytes (--max-body). */
  maxLineBytes: number
  /** Bodies up to this many bytes stay in memory; larger ones go to a temp file. */
  memoryBytes: number
  /** Where temp files go (os.tmpdir() by default). */
  tmpDir?: string
  /**
   * Takes each event as it is parsed while the body is within `memoryBytes` (instead of keeping
   * it in `parsed`), so the caller can fold events as they arrive. Once the body outgrows the
   * bound, `onSpill` is called and events are no longer handed on: the caller starts over from
   * the temp file in pass 2.
   */
  onEvent?: (event: Record<string, unknown>) => void
  onSpill?: () => void
  /** Called with the size of each chunk read, before its lines are handled. */
  onChunk?: (bytes: number) => void
}

/**
 * A body whose every line passed. A body kept in memory comes back parsed (`parsed`: its events
 * in order, so pass 2 does not parse them again; null when `onEvent` took them); one in a temp
 * file comes back as raw bytes (`chunks()`). Either way, `dispose()` of it afterwards.
 */
export interface Spooled {
  bytes: number
  lines: number
  /** Lines that are JSON objects (blank lines excluded). */
  events: number
  /** True if the body went to a temp file. */
  onDisk: boolean
  parsed: Record<string, unknown>[] | null
  chunks(): AsyncIterable<Buffer>
  dispose(): Promise<void>
}

export const DEFAULT_MEMORY_BYTES = 8 * 1024 * 1024

/**
 * Pass 1: reads `body` to its end, checking every line, and keeps it for pass 2. Rejects with
 * NdjsonError for the first bad line; the caller drains whatever of the body is still unread so
 * the client gets the answer rather than a reset.
 */
export function spoolNdjson(body: Readable, opts: SpoolOptions): Promise<Spooled> {
  return new Promise((resolve, reject) => {
    let chunks: Buffer[] = []
    let onEvent = opts.onEvent ?? null
    let parsed: Record<string, unknown>[] | null = onEvent === null ? [] : null
    let bytes = 0
    let events = 0
    let file: { path: string; stream: WriteStream } | null = null
    let settled = false
    const splitter = new LineSplitter(opts.maxLineBytes, (line, n) => {
      const event = parseLine(line, n)
      if (event === null) return
      events++
      if (onEvent !== null) onEvent(event)
      else parsed?.push(event)
    })

    const removeFile = async () => {
      if (!file) return
      const f = file
      file = null
      f.stream.destroy()
      await unlink(f.path).catch(() => {})
    }
    const detach = () => {
      body.off('data', onData)
      body.off('end', onEnd)
      body.off('error', onError)
      body.off('close', onClose)
    }
    const fail = (err: Error) => {
      if (settled) return
      settled = true
      detach()
      chunks = []
      parsed = null
      void removeFile()
      reject(err)
    }
    const spoolError = (err: Error) =>
      fail(new NdjsonError(503, 'spool', `cannot keep the body in a temp file (${(err as NodeJS.ErrnoException).code ?? err.message})`, 0))

    function onData(chunk: Buffer) {
      if (settled) return
      opts.onChunk?.(chunk.length)
      if (onEvent !== null && bytes + chunk.length > opts.memoryBytes) {
        // From here on the body is read back from the file and parsed again in pass 2.
        onEvent = null
        opts.onSpill?.()
      }
      try {
        splitter.push(chunk)
      } catch (err) {
        return fail(err as Error)
      }
      bytes += chunk.length
      if (file === null && bytes <= opts.memoryBytes) {
        chunks.push(chunk)
        return
      }
      if (file === null) {
        // From here on the body is read back from the file and parsed again; parsed events
        // would only hold memory.
        parsed = null
        const p = path.join(opts.tmpDir ?? os.tmpdir(), `speedlayer-ingest-${process.pid}-${randomUUID()}.ndjson`)
        // createWriteStream opens in the background and queues what is written meanwhile.
        file = { path: p, stream: createWriteStream(p, { flags: 'wx', mode: 0o600 }) }
        file.stream.on('error', spoolError)
        for (const c of chunks) file.stream.write(c)
        chunks = []
      }
      if (!file.stream.write(chunk)) {
        body.pause()
        file.stream.once('drain', () => {
          if (!settled) body.resume()
        })
      }
    }
    function onEnd() {
      if (settled) return
      try {
        splitter.end()
      } catch (err) {
        return fail(err as Error)
      }
      const done = (onDisk: boolean) => {
        settled = true
        detach()
        const kept = chunks
        const filePath = file?.path
        resolve({
          bytes,
          lines: splitter.line,
          events,
          onDisk,
          parsed,
          chunks: () => (filePath === undefined ? fromArray(kept) : fromFile(filePath)),
          dispose: () => removeFile(),
        })
      }
      if (file === null) return done(false)
      file.stream.end((err?: Error | null) => {
        if (err) spoolError(err)
        else if (!settled) done(true)
      })
    }
    // A client that goes away mid-body: nothing was applied, nothing will be. Not a server error.
    const aborted = () => new NdjsonError(400, 'aborted', 'the request body ended before it was complete', 0)
    function onError() {
      fail(aborted())
    }
    function onClose() {
      if (!body.readableEnded) fail(aborted())
    }
    body.on('data', onData)
    body.on('end', onEnd)
    body.on('error', onError)
    body.on('close', onClose)
  })
}

async function* fromArray(chunks: Buffer[]): AsyncIterable<Buffer> {
  for (const c of chunks) yield c
}

async function* fromFile(p: string): AsyncIterable<Buffer> {
  for await (const c of createReadStream(p, { highWaterMark: 1024 * 1024 })) yield c as Buffer
}
