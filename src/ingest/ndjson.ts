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
 * Splits a byte stream into lines (without their "\n"). Splitting bytes on 0x0A is safe in UTF-8:
 * that byte never occurs inside a multi-byte sequence. A line within one chunk is handed on as a
 * view of that chunk, with no copy; only a line spread over chunks is joined.
 */
export class LineSplitter {
  private parts: Buffer[] = []
  private partBytes = 0
  /** Lines handed on so far; the number of the last one. */
  line = 0

  constructor(
    private readonly maxLineBytes: number,
    private readonly onLine: (line: Buffer, lineNo: number) => void,
  ) {}

  /** Throws NdjsonError 413 as soon as a line grows past the bound, before holding more of it. */
  push(chunk: Buffer): void {
    let start = 0
    for (;;) {
      const nl = chunk.indexOf(NL, start)
      if (nl < 0) {
        if (start < chunk.length) {
          this.partBytes += chunk.length - start
          if (this.partBytes > this.maxLineBytes) throw this.tooLong(this.line + 1)
          this.parts.push(chunk.subarray(start))
        }
        return
      }
      let line = chunk.subarray(start, nl)
      if (this.partBytes > 0) {
        if (this.partBytes + line.length > this.maxLineBytes) throw this.tooLong(this.line + 1)
        this.parts.push(line)
        line = Buffer.concat(this.parts, this.partBytes + line.length)
        this.parts = []
        this.partBytes = 0
      } else if (line.length > this.maxLineBytes) {
        throw this.tooLong(this.line + 1)
      }
      start = nl + 1
      this.onLine(line, ++this.line)
    }
  }

  /** The last line, if the body does not end with a newline. */
  end(): void {
    if (this.partBytes === 0) return
    const line = Buffer.concat(this.parts, this.partBytes)
    this.parts = []
    this.partBytes = 0
    this.onLine(line, ++this.line)
  }

  private tooLong(lineNo: number): NdjsonError {
    return new NdjsonError(413, 'too_large', `line ${lineNo} is longer than --max-body (${this.maxLineBytes} bytes)`, lineNo)
  }
}

function isBlank(line: Buffer): boolean {
  for (let i = 0; i < line.length; i++) {
    const b = line[i]
    if (b !== 0x20 && b !== 0x09 && b !== 0x0d) return false
  }
  return true
}

const BOM = Buffer.from([0xef, 0xbb, 0xbf])

/**
 * One line: the event, or null for a blank line. Throws NdjsonError 400 naming the line when it is
 * not a JSON object. `checked` skips the UTF-8 check for lines that passed it before.
 */
export function parseLine(line: Buffer, lineNo: number, checked = false): Record<string, unknown> | null {
  // A UTF-8 byte order mark, which some editors put first, is no reason to refuse a file.
  if (lineNo === 1 && line.length >= 3 && line[0] === 0xef && line.subarray(0, 3).equals(BOM)) line = line.subarray(3)
  if (isBlank(line)) return null
  if (!checked && !isUtf8(line)) throw new NdjsonError(400, 'bad_line', `line ${lineNo} is not valid UTF-8`, lineNo)
  let event: unknown
  try {
    event = JSON.parse(line.toString('utf8'))
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
}

/**
 * A body whose every line passed. A body kept in memory comes back parsed (`parsed`: its events
 * in order, so pass 2 does not parse them again); one in a temp file comes back as raw bytes
 * (`chunks()`). Either way, `dispose()` of it afterwards.
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
    let parsed: Record<string, unknown>[] | null = []
    let bytes = 0
    let events = 0
    let file: { path: string; stream: WriteStream } | null = null
    let settled = false
    const splitter = new LineSplitter(opts.maxLineBytes, (line, n) => {
      const event = parseLine(line, n)
      if (event === null) return
      events++
      parsed?.push(event)
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
    function onError(err: Error) {
      fail(err)
    }
    function onClose() {
      // A client that goes away mid-body: nothing was applied, nothing will be.
      if (!body.readableEnded) fail(new NdjsonError(400, 'aborted', 'the request body ended before it was complete', 0))
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
