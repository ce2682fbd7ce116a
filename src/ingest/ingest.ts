/**
 * Ingest: every view's rule applied to every event (CONTRACT.md, "POST /ingest").
 *
 * `ingestNdjson` is the HTTP route's work. Pass 1 (ndjson.ts) checks every line as the body
 * arrives; while the body is within the memory bound, each event is folded into its groups
 * (groups.ts) at once, so nothing of it is kept but the groups. Once the whole body has passed,
 * the groups become writes, handed to the node's combiner (combine.ts), which merges them with
 * those of other requests finishing meanwhile and applies them through `node.applyMany` (they
 * share group commits); the answer comes once all of them are durable. A body past the memory bound goes to a temp file
 * in pass 1 and is read back in pass 2, folded and applied a slice at a time. When the write
 * queue is full an ingest waits and retries: it slows down under load, it does not fail.
 *
 * What "nothing of the batch is applied" covers: a bad line (or a line over the bound) anywhere in
 * the body, found in pass 1, before anything is applied. A failure in pass 2 (the node shutting
 * down, a disk error) can leave a prefix of the batch applied; the request still fails, and the
 * node refuses every later write after a disk error anyway.
 */
import type { Readable } from 'node:stream'
import type { SpeedNode, Write } from '../node.js'
import { isPlainObject } from '../../crdts/validate.js'
import { RuleReader } from './rules.js'
import { RuleGroups, type DrainContext, type Owner } from './groups.js'
import { IngestCombiner } from './combine.js'
import { ingestStats } from './stats.js'
import { DEFAULT_MEMORY_BYTES, LineSplitter, parseLine, spoolNdjson } from './ndjson.js'

export interface IngestResult {
  /** Events taken: every line that is a JSON object. */
  accepted: number
  /** Per view with an ingest rule: events that rule could not use (0 included). */
  rejected: Record<string, number>
}

export { ingestStats, type IngestStats } from './stats.js'

export interface IngestOptions {
  /** Longest line in bytes (--max-body). */
  maxLineBytes: number
  /** Bodies up to this size are folded as they arrive, larger ones kept in a temp file for pass 2. */
  memoryBytes?: number
  tmpDir?: string
}

/** Pass 2 (a spooled body): events folded before their writes are applied. */
const SLICE_EVENTS = 65_536
/** Slices submitted but not yet durable: the next is read and folded meanwhile. */
const MAX_IN_FLIGHT = 4

const combiners = new WeakMap<SpeedNode, IngestCombiner>()

function combiner(node: SpeedNode): IngestCombiner {
  let c = combiners.get(node)
  if (!c) combiners.set(node, (c = new IngestCombiner(node)))
  return c
}

/**
 * Applies the rules of the node's views to events: `add` folds one event into the groups of
 * every rule, `flush` applies what is folded, `finish` resolves with the counts once every write
 * is durable.
 */
export class IngestBatch {
  private readonly rules: RuleGroups[] = []
  private inFlight: Promise<void>[] = []
  private now: number
  private readonly ctx: DrainContext
  accepted = 0

  constructor(private readonly node: SpeedNode) {
    const maxElements = node.store.limits.maxOpElements
    for (const v of node.views()) {
      if (!v.def.ingest) continue
      this.rules.push(new RuleGroups(v.name, new RuleReader(v.def as typeof v.def & { ingest: NonNullable<typeof v.def.ingest> }, { maxDriftMs: node.maxDriftMs }), maxElements))
    }
    this.now = node.now()
    this.ctx = { maxElements }
  }

  /** Takes one event; true when enough is folded that the caller should `flush`. */
  add(event: Record<string, unknown>): boolean {
    this.accepted++
    const now = this.now
    let pending = 0
    for (let i = 0; i < this.rules.length; i++) {
      const r = this.rules[i] as RuleGroups
      r.add(event, now)
      pending += r.pending
    }
    return pending >= SLICE_EVENTS
  }

  /** Reads the node's clock again (the drift bound moves with it while a long body arrives). */
  tick(): void {
    this.now = this.node.now()
  }

  /** Hands what is folded to the node's combiner (see combine.ts); waits while too much of it is not yet durable. */
  async flush(): Promise<void> {
    const writes: Write[] = []
    const owners: Owner[] = []
    for (const r of this.rules) r.drain(this.ctx, writes, owners)
    this.tick()
    if (writes.length === 0) return
    const durable = combiner(this.node).submit(writes, owners)
    // Awaited below or in finish; a failure must not count as unhandled meanwhile.
    durable.catch(() => {})
    this.inFlight.push(durable)
    while (this.inFlight.length > MAX_IN_FLIGHT) await this.inFlight.shift()
  }

  async finish(): Promise<IngestResult> {
    await this.flush()
    const all = this.inFlight
    this.inFlight = []
    await Promise.all(all)
    const rejected: Record<string, number> = {}
    for (const r of this.rules) rejected[r.view] = r.rejected
    return { accepted: this.accepted, rejected }
  }

  /** Per view: events its rule applied (taken, minus those whose write the store refused). */
  applied(): Array<[string, number]> {
    return this.rules.map((r) => [r.view, r.taken - r.refusedByStore])
  }
}

function record(node: SpeedNode, batch: IngestBatch, result: IngestResult): void {
  const s = ingestStats(node)
  s.batches++
  s.events += result.accepted
  for (const [view, n] of Object.entries(result.rejected)) s.rejected.set(view, (s.rejected.get(view) ?? 0) + n)
  for (const [view, n] of batch.applied()) s.applied.set(view, (s.applied.get(view) ?? 0) + n)
}

/**
 * POST /ingest: an NDJSON body, checked whole before anything is applied, then applied and made
 * durable. Throws NdjsonError (400/413, with the line) for a body it refuses; the caller drains
 * what is left of the body.
 */
export async function ingestNdjson(node: SpeedNode, body: Readable, opts: IngestOptions): Promise<IngestResult> {
  const stats = ingestStats(node)
  let batch: IngestBatch | null = new IngestBatch(node)
  let spooled
  try {
    spooled = await spoolNdjson(body, {
      maxLineBytes: opts.maxLineBytes,
      memoryBytes: opts.memoryBytes ?? DEFAULT_MEMORY_BYTES,
      tmpDir: opts.tmpDir,
      onEvent: (event) => void batch?.add(event),
      onSpill: () => {
        batch = null
      },
      onChunk: (bytes) => {
        stats.bytes += bytes
        batch?.tick()
      },
    })
  } catch (err) {
    stats.badBatches++
    throw err
  }
  try {
    if (!spooled.onDisk && batch !== null) {
      const b: IngestBatch = batch
      const result = await b.finish()
      record(node, b, result)
      return result
    }
    stats.spooled++
    const slices = new IngestBatch(node)
    let full = false
    // Every line passed pass 1, so no line can throw here.
    const splitter = new LineSplitter(
      opts.maxLineBytes,
      (line, n) => {
        const event = parseLine(line, n)
        if (event !== null && slices.add(event)) full = true
      },
      false,
    )
    for await (const chunk of spooled.chunks()) {
      splitter.push(chunk)
      if (full) {
        full = false
        await slices.flush()
      }
    }
    splitter.end()
    const result = await slices.finish()
    record(node, slices, result)
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
  record(node, batch, result)
  return result
}
