/**
 * Ingest: every view's rule applied to every event (CONTRACT.md, "POST /ingest").
 *
 * `ingestNdjson` is the HTTP route's work: pass 1 (ndjson.ts) checks the whole body while keeping
 * it, pass 2 reads it back and applies the rules through `node.applyMany` in chunks, so the writes
 * share group commits, and answers once all of them are durable. When the write queue is full it
 * waits and retries the chunk: an ingest slows down under load, it does not fail.
 *
 * What "nothing of the batch is applied" covers: a bad line (or a line over the bound) anywhere in
 * the body, found in pass 1, before anything is applied. A failure in pass 2 (the node shutting
 * down, a disk error) can leave a prefix of the batch applied; the request still fails, and the
 * node refuses every later write after a disk error anyway.
 */
import type { Readable } from 'node:stream'
import { NodeError, type SpeedNode, type Write } from '../node.js'
import { isPlainObject } from '../../crdts/validate.js'
import { compileRule, type CompiledRule } from './rules.js'
import { DEFAULT_MEMORY_BYTES, LineSplitter, parseLine, spoolNdjson } from './ndjson.js'

export interface IngestResult {
  /** Events taken: every line that is a JSON object. */
  accepted: number
  /** Per view with an ingest rule: events that rule could not use (0 included). */
  rejected: Record<string, number>
}

/** Totals since start, for /metrics and the dashboard. */
export interface IngestStats {
  /** Ingest requests answered 200. */
  batches: number
  /** Events accepted by those requests. */
  events: number
  /** Per view: events its rule rejected. */
  rejected: Map<string, number>
  /** Ingest requests refused in pass 1: a bad or too long line, a body cut short. */
  badBatches: number
  /** Bodies that went to a temp file because they were larger than the memory bound. */
  spooled: number
}

const statsByNode = new WeakMap<SpeedNode, IngestStats>()

/** The ingest totals of a node (created empty on first use). */
export function ingestStats(node: SpeedNode): IngestStats {
  let s = statsByNode.get(node)
  if (!s) statsByNode.set(node, (s = { batches: 0, events: 0, rejected: new Map(), badBatches: 0, spooled: 0 }))
  return s
}

export interface IngestOptions {
  /** Longest line in bytes (--max-body). */
  maxLineBytes: number
  /** Bodies up to this size are kept in memory between the passes, larger ones in a temp file. */
  memoryBytes?: number
  tmpDir?: string
}

/** Writes per `applyMany` call: large enough to batch, small enough not to hold the event loop long. */
const CHUNK_WRITES = 4096
/** Chunks applied but not yet durable: lets group commit batch several while the next is applied. */
const MAX_IN_FLIGHT = 16
const MAX_BACKOFF_MS = 250
/** An overload that lasts this long (a failed disk, or a queue that never drains) is answered 503 after all. */
const OVERLOAD_GIVE_UP_MS = 30_000

const delay = (ms: number) => new Promise<void>((r) => setTimeout(r, ms))

/**
 * Applies the rules of the node's views to events, one at a time (`add`), in chunks; `finish`
 * resolves with the counts once every write is durable.
 */
export class IngestBatch {
  private readonly rules: Array<{ view: string; rule: CompiledRule }> = []
  private readonly rejectedBy: number[]
  private pending: Write[] = []
  private pendingRule: number[] = []
  private inFlight: Promise<void>[] = []
  private now: number
  accepted = 0

  constructor(private readonly node: SpeedNode) {
    for (const v of node.views()) {
      const rule = compileRule(v.def, { maxDriftMs: node.maxDriftMs })
      if (rule) this.rules.push({ view: v.name, rule })
    }
    this.rejectedBy = this.rules.map(() => 0)
    this.now = node.now()
  }

  /** Takes one event; true when enough writes are pending that the caller should `flush`. */
  add(event: Record<string, unknown>): boolean {
    this.accepted++
    const now = this.now
    for (let i = 0; i < this.rules.length; i++) {
      const r = this.rules[i] as { view: string; rule: CompiledRule }
      const out = r.rule(event, now)
      if ('key' in out) {
        this.pending.push({ view: r.view, key: out.key, op: out.op })
        this.pendingRule.push(i)
      } else if ('reject' in out) {
        this.reject(i)
      }
    }
    return this.pending.length >= CHUNK_WRITES
  }

  private reject(rule: number): void {
    this.rejectedBy[rule] = (this.rejectedBy[rule] as number) + 1
  }

  /** Applies what is pending (waiting while the node is overloaded). */
  async flush(): Promise<void> {
    const writes = this.pending
    const ruleOf = this.pendingRule
    this.pending = []
    this.pendingRule = []
    this.now = this.node.now()
    for (let i = 0; i < writes.length; i += CHUNK_WRITES) {
      await this.applyChunk(writes.slice(i, i + CHUNK_WRITES), ruleOf.slice(i, i + CHUNK_WRITES))
    }
  }

  private async applyChunk(writes: Write[], ruleOf: number[]): Promise<void> {
    let backoff = 5
    let since: number | null = null
    for (;;) {
      try {
        const r = this.node.applyMany(writes)
        // A write the store refuses (a value nested too deep for lwwmap, a counter leaving the
        // safe range) is an event that rule could not use, like any other.
        for (const { index } of r.refused) this.reject(ruleOf[index] as number)
        this.inFlight.push(r.durable)
        break
      } catch (err) {
        if (!(err instanceof NodeError) || err.code !== 'overload') throw err
        // The node also says "overload" once its disk has failed, for good: do not wait forever.
        since ??= performance.now()
        if (performance.now() - since > OVERLOAD_GIVE_UP_MS) throw err
        if (this.inFlight.length > 0) {
          // Our own writes in flight are most of the queue: once they are down there is room.
          const all = this.inFlight
          this.inFlight = []
          await Promise.all(all)
        } else {
          await delay(backoff)
          backoff = Math.min(backoff * 2, MAX_BACKOFF_MS)
        }
      }
    }
    while (this.inFlight.length > MAX_IN_FLIGHT) await this.inFlight.shift()
  }

  async finish(): Promise<IngestResult> {
    await this.flush()
    const all = this.inFlight
    this.inFlight = []
    await Promise.all(all)
    const rejected: Record<string, number> = {}
    for (let i = 0; i < this.rules.length; i++) rejected[(this.rules[i] as { view: string }).view] = this.rejectedBy[i] as number
    return { accepted: this.accepted, rejected }
  }
}

function record(node: SpeedNode, result: IngestResult): void {
  const s = ingestStats(node)
  s.batches++
  s.events += result.accepted
  for (const [view, n] of Object.entries(result.rejected)) s.rejected.set(view, (s.rejected.get(view) ?? 0) + n)
}

/**
 * POST /ingest: an NDJSON body, checked whole before anything is applied, then applied and made
 * durable. Throws NdjsonError (400/413, with the line) for a body it refuses; the caller drains
 * what is left of the body.
 */
export async function ingestNdjson(node: SpeedNode, body: Readable, opts: IngestOptions): Promise<IngestResult> {
  let spooled
  try {
    spooled = await spoolNdjson(body, { maxLineBytes: opts.maxLineBytes, memoryBytes: opts.memoryBytes ?? DEFAULT_MEMORY_BYTES, tmpDir: opts.tmpDir })
  } catch (err) {
    ingestStats(node).badBatches++
    throw err
  }
  try {
    if (spooled.onDisk) ingestStats(node).spooled++
    const batch = new IngestBatch(node)
    if (spooled.parsed) {
      for (const event of spooled.parsed) if (batch.add(event)) await batch.flush()
      const result = await batch.finish()
      record(node, result)
      return result
    }
    let full = false
    // Every line passed pass 1, so no line can throw here.
    const splitter = new LineSplitter(
      opts.maxLineBytes,
      (line, n) => {
        const event = parseLine(line, n)
        if (event !== null && batch.add(event)) full = true
      },
      false,
    )
    for await (const chunk of spooled.chunks()) {
      splitter.push(chunk)
      if (full) {
        full = false
        await batch.flush()
      }
    }
    splitter.end()
    const result = await batch.finish()
    record(node, result)
    return result
  } finally {
    await spooled.dispose()
  }
}

/**
 * The embedding form of POST /ingest: applies every view's rule to already parsed events and
 * resolves once the writes are durable. Like the route, it takes all or nothing of the list: an
 * entry that is not a plain object throws a TypeError (with its 0-based index) before anything
 * is applied.
 */
export async function ingestEvents(node: SpeedNode, events: readonly unknown[]): Promise<IngestResult> {
  events.forEach((e, i) => {
    if (!isPlainObject(e)) throw new TypeError(`event ${i} is not a JSON object`)
  })
  const batch = new IngestBatch(node)
  for (const e of events) {
    if (batch.add(e as Record<string, unknown>)) await batch.flush()
  }
  const result = await batch.finish()
  record(node, result)
  return result
}
