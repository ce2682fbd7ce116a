/**
 * The body of `PUT /batch/:view?horizon=T`: NDJSON, one `{"key": K, "value": V}` per line (blank
 * lines skipped), read as a stream with the same line splitting, line bound (--max-body) and UTF-8
 * check as POST /ingest (src/ingest/ndjson.ts). Every line is checked as it arrives and the entries
 * are built in memory (a batch view is held whole anyway); the first bad line refuses the whole
 * body with its 1-based number, and nothing is imported.
 */
import type { Readable } from 'node:stream'
import { isPlainObject } from '../../crdts/validate.js'
import { LineSplitter, NdjsonError } from '../ingest/ndjson.js'
import { BatchValueError } from './batchView.js'
import type { BatchEntries } from './batchViews.js'

function isBlank(line: string): boolean {
  for (let i = 0; i < line.length; i++) {
    const c = line.charCodeAt(i)
    if (c !== 0x20 && c !== 0x09 && c !== 0x0d) return false
  }
  return true
}

/** Checks one line and adds its entry; throws NdjsonError 400 naming the line. */
export function addBatchLine(entries: BatchEntries, line: string, lineNo: number): void {
  if (lineNo === 1 && line.charCodeAt(0) === 0xfeff) line = line.slice(1)
  if (isBlank(line)) return
  const bad = (why: string) => new NdjsonError(400, 'bad_line', `line ${lineNo}: ${why}`, lineNo)
  let entry: unknown
  try {
    entry = JSON.parse(line)
  } catch (err) {
    throw bad(`not valid JSON: ${(err as Error).message}`)
  }
  if (!isPlainObject(entry)) throw bad('not a JSON object; each line is {"key": KEY, "value": VALUE}')
  for (const k of Object.keys(entry)) {
    if (k !== 'key' && k !== 'value') throw bad(`unknown field ${JSON.stringify(k)}; each line is {"key": KEY, "value": VALUE}`)
  }
  if (!('key' in entry)) throw bad('missing "key"')
  if (!('value' in entry)) throw bad('missing "value"')
  try {
    entries.add(entry.key, entry.value)
  } catch (err) {
    if (err instanceof BatchValueError) throw bad(err.message)
    throw err
  }
}

/**
 * Reads `body` to its end into `entries`. Rejects with NdjsonError at the first bad line (400), a
 * line over `maxLineBytes` (413) or a body cut short (400); the caller drains what is left unread.
 */
export function readBatchNdjson(body: Readable, entries: BatchEntries, maxLineBytes: number): Promise<{ lines: number; bytes: number }> {
  return new Promise((resolve, reject) => {
    let settled = false
    let bytes = 0
    const splitter = new LineSplitter(maxLineBytes, (line, n) => addBatchLine(entries, line, n))
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
      reject(err)
    }
    function onData(chunk: Buffer) {
      if (settled) return
      bytes += chunk.length
      try {
        splitter.push(chunk)
      } catch (err) {
        fail(err as Error)
      }
    }
    function onEnd() {
      if (settled) return
      try {
        splitter.end()
      } catch (err) {
        return fail(err as Error)
      }
      settled = true
      detach()
      resolve({ lines: splitter.line, bytes })
    }
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
