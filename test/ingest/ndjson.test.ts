import { describe, expect, it, vi } from 'vitest'
import fc from 'fast-check'
import { Readable } from 'node:stream'
import { readdirSync } from 'node:fs'
import { mkdtemp, rm } from 'node:fs/promises'
import os from 'node:os'
import path from 'node:path'
import { LineSplitter, NdjsonError, parseLine, spoolNdjson } from '../../src/ingest/ndjson.js'

/** Cuts `buf` at the given fractions into chunks (some possibly empty). */
function cut(buf: Buffer, cuts: number[]): Buffer[] {
  const points = [...new Set(cuts.map((c) => Math.floor(c * buf.length)))].sort((a, b) => a - b)
  const out: Buffer[] = []
  let prev = 0
  for (const p of points) {
    out.push(buf.subarray(prev, p))
    prev = p
  }
  out.push(buf.subarray(prev))
  return out
}

function split(chunks: Buffer[], max = 1 << 20, checkUtf8 = true): Array<[string, number]> {
  const got: Array<[string, number]> = []
  const s = new LineSplitter(max, (line, n) => got.push([line, n]), checkUtf8)
  for (const c of chunks) s.push(c)
  s.end()
  return got
}

function thrown(f: () => unknown): NdjsonError {
  try {
    f()
  } catch (err) {
    if (err instanceof NdjsonError) return err
    throw err
  }
  throw new Error('expected an NdjsonError')
}

const lineArb = fc.string({ unit: fc.constantFrom('a', 'é', '€', '😀', ' ', '\r', '{', '"'), maxLength: 12 })

describe('LineSplitter', () => {
  it('property: however the bytes are cut, the lines and their numbers are the same', () => {
    fc.assert(
      fc.property(fc.array(lineArb, { maxLength: 20 }), fc.boolean(), fc.array(fc.double({ min: 0, max: 1, noNaN: true }), { maxLength: 12 }), (lines, finalNewline, cuts) => {
        const text = lines.join('\n') + (finalNewline && lines.length > 0 ? '\n' : '')
        // A newline ends a line; text after the last newline, if any, is one more line.
        const parts = text.split('\n')
        if (parts[parts.length - 1] === '') parts.pop()
        const expected = parts.map((l, i) => [l, i + 1])
        expect(split(cut(Buffer.from(text), cuts))).toEqual(expected)
      }),
      { numRuns: 500 },
    )
  })

  it('property: a line over the bound is refused with its number, however the bytes are cut', () => {
    fc.assert(
      fc.property(fc.array(fc.string({ maxLength: 8 }), { minLength: 1, maxLength: 10 }), fc.nat(), fc.array(fc.double({ min: 0, max: 1, noNaN: true }), { maxLength: 8 }), (lines, at, cuts) => {
        const i = at % (lines.length + 1)
        const all = [...lines]
        all.splice(i, 0, 'x'.repeat(40))
        const err = thrown(() => split(cut(Buffer.from(all.join('\n')), cuts), 32))
        expect(err.status).toBe(413)
        expect(err.line).toBe(i + 1)
        expect(err.message).toMatch(new RegExp(`^line ${i + 1} is longer than --max-body \\(32 bytes\\)`))
      }),
      { numRuns: 300 },
    )
  })

  it('a line of exactly the bound passes; CR counts as a byte of the line', () => {
    expect(split([Buffer.from('abcd\nef\n')], 4)).toEqual([['abcd', 1], ['ef', 2]])
    expect(thrown(() => split([Buffer.from('ab\nabcd\r\n')], 4)).line).toBe(2)
    expect(thrown(() => split([Buffer.from('ab\nab'), Buffer.from('cde')], 4)).line).toBe(2)
  })

  it('invalid UTF-8 is refused with the line number, even split across chunks; unchecked mode trusts the bytes', () => {
    const body = Buffer.concat([Buffer.from('{"a":1}\n{"b":"'), Buffer.from([0xe2, 0x82]), Buffer.from('"}\n{"c":3}\n')])
    for (let i = 0; i <= body.length; i++) {
      const err = thrown(() => split([body.subarray(0, i), body.subarray(i)]))
      expect(err.status).toBe(400)
      expect(err.line).toBe(2)
      expect(err.message).toMatch(/^line 2 is not valid UTF-8/)
    }
    // A multi-byte character cut in two by the chunks is one character, not an error.
    const euro = Buffer.from('{"e":"€€"}\n')
    for (let i = 0; i <= euro.length; i++) expect(split([euro.subarray(0, i), euro.subarray(i)])).toEqual([['{"e":"€€"}', 1]])
    expect(split([Buffer.from([0x7b, 0xff, 0x0a])], 100, false)).toHaveLength(1)
  })
})

describe('parseLine', () => {
  it('objects pass, blank lines are null, anything else is a 400 with the number', () => {
    expect(parseLine('{"a":1}', 3)).toEqual({ a: 1 })
    expect(parseLine(' \t{"a":1} \r', 3)).toEqual({ a: 1 })
    for (const blank of ['', ' ', '\r', '\t \r']) expect(parseLine(blank, 1)).toBeNull()
    expect(parseLine('\uFEFF{"a":1}', 1)).toEqual({ a: 1 })
    expect(thrown(() => parseLine('\uFEFF{"a":1}', 2)).line).toBe(2)
    for (const bad of ['[]', '1', '"x"', 'null', 'true', '{', '{"a":1}{"b":2}', '{"a":1},']) {
      const err = thrown(() => parseLine(bad, 9))
      expect(err.status).toBe(400)
      expect(err.line).toBe(9)
      expect(err.message).toMatch(/^line 9 /)
    }
  })
})

describe('spoolNdjson', () => {
  const body = Buffer.from(Array.from({ length: 1000 }, (_, i) => `{"i":${i},"s":"${'x'.repeat(i % 50)}"}`).join('\n') + '\n\n')

  it('in memory below the bound: the events come back parsed', async () => {
    const sp = await spoolNdjson(Readable.from(cut(body, [0.1, 0.5, 0.51])), { maxLineBytes: 1000, memoryBytes: body.length })
    expect(sp.onDisk).toBe(false)
    expect(sp.events).toBe(1000)
    expect(sp.lines).toBe(1001)
    expect(sp.parsed?.map((e) => e.i)).toEqual(Array.from({ length: 1000 }, (_, i) => i))
    await sp.dispose()
  })

  it('past the bound: a temp file that reads back byte for byte and is removed by dispose', async () => {
    const dir = await mkdtemp(path.join(os.tmpdir(), 'speedlayer-spool-test-'))
    try {
      const sp = await spoolNdjson(Readable.from(cut(body, [0.1, 0.5, 0.51])), { maxLineBytes: 1000, memoryBytes: 1000, tmpDir: dir })
      expect(sp.onDisk).toBe(true)
      expect(sp.parsed).toBeNull()
      expect(readdirSync(dir)).toHaveLength(1)
      const back: Buffer[] = []
      for await (const c of sp.chunks()) back.push(c)
      expect(Buffer.concat(back).equals(body)).toBe(true)
      await sp.dispose()
      expect(readdirSync(dir)).toEqual([])
    } finally {
      await rm(dir, { recursive: true, force: true })
    }
  })

  it('a bad line after the switch to a file rejects with its number and removes the file', async () => {
    const dir = await mkdtemp(path.join(os.tmpdir(), 'speedlayer-spool-test-'))
    try {
      const bad = Buffer.concat([body, Buffer.from('[1]\n'), body])
      const err = await spoolNdjson(Readable.from(cut(bad, [0.2, 0.4])), { maxLineBytes: 1000, memoryBytes: 1000, tmpDir: dir }).catch((e: unknown) => e)
      expect(err).toBeInstanceOf(NdjsonError)
      expect((err as NdjsonError).line).toBe(1002)
      await vi.waitFor(() => expect(readdirSync(dir)).toEqual([]), { timeout: 5000, interval: 10 })
    } finally {
      await rm(dir, { recursive: true, force: true })
    }
  })
})
