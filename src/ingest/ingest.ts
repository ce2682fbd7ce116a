/**
 * Ingest: every view's rule applied to every event (CONTRACT.md, "POST /ingest").
 *
 * `ingestNdjson` is the HTTP route's work. Pass 1 (ndjson.ts) checks every line as the body
 * arrives; while the body is within the memory bound, each event is folded into its groups
 * (groups.ts) at once, so nothing of it is kept but the groups. Once the whole body has passed,
 * the groups become writes, applied through `node.applyMany` (they share group commits), and the
 * answer comes once all of them are durable. A body past the memory bound goes to a temp file
 * in pass 1 and is read back in pass 2, folded and applied a slice at a time. When the write
 * queue is full an ingest waits and retries: it slows down under load, it does not fail.
 *
 * What "nothing of the batch is applied" covers: a bad line (or a line over the bound) anywhere in
 * the body, found in pass 1, before anything is applied. A failure in pass 2 (the node shutting
 * down, a disk error) can leave a prefix of the batch applied; the request still fails, and the
 * node refuses every later write after a disk error anyway.
 */
import type { Readable } from 'node:stream'
import { NodeError, type SpeedNode, type Write } from '../node.js'
import { isPlainObject } from '../../crdts/validate.js'
import { RuleReader } from './rules.js'
import { RuleGroups, type DrainContext, type Owner } from './groups.js'
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
  /** Per view: events its rule turned into a write that was applied. */
  applied: Map<string, number>
  /** Ingest requests refused in pass 1: a bad or too long line, a body cut short. */
  badBatches: number
  /** Bodies that went to a temp file because they were larger than the memory bound. */
  spooled: number
  /** Body bytes read by ingest requests, refused ones included. */
  bytes: number
  /** Writes (folded ops) the accepted requests applied: `events / writes` is the folding factor. */
  writes: number
}

const statsByNode = new WeakMap<SpeedNode, IngestStats>()

/** The ingest totals of a node (created empty on first use). */
export function ingestStats(node: SpeedNode): IngestStats {
  let s = statsByNode.get(node)
  if (!s) statsByNode.set(node, (s = { batches: 0, events: 0, rejected: new Map(), applied: new Map(), badBatches: 0, spooled: 0, bytes: 0, writes: 0 }))
  return s
}

export interface IngestOptions {
  /** Longest line in bytes (--max-body). */
  maxLineBytes: number
  /** Bodies up to this size are folded as they arrive, larger ones kept in a temp file for pass 2. */
  memoryBytes?: number
  tmpDir?: string
}

/** Writes per `applyMany` call: large enough to batch, small enough not to hold the event loop long. */
const CHUNK_WRITES = 4096
/** Pass 2 (a spooled body): events folded before their writes are applied. */
const SLICE_EVENTS = 65_536
/** Chunks applied but not yet durable: lets group commit batch several while the next is applied. */
const MAX_IN_FLIGHT = 16
const MAX_BACKOFF_MS = 250
/** An overload that lasts this long (a failed disk, or a queue that never drains) is answered 503 after all. */
const OVERLOAD_GIVE_UP_MS = 30_000

const delay = (ms: number) => new Promise<void>((r) => setTimeout(r, ms))

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
  /** Writes applied (after folding). */
  writes = 0

  constructor(private readonly node: SpeedNode) {
    const maxElements = node.store.limits.maxOpElements
    for (const v of node.views()) {
      if (!v.def.ingest) continue
      this.rules.push(new RuleGroups(v.name, new RuleReader(v.def as typeof v.def & { ingest: NonNullable<typeof v.def.ingest> }, { maxDriftMs: node.maxDriftMs }), maxElements))
    }
    this.now = node.now()
    this.ctx = { maxElements, read: (view, key) => node.read(view, key).value }
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

  /** Applies what is folded (waiting while the node is overloaded). */
  async flush(): Promise<void> {
    const writes: Write[] = []
    const owners: Owner[] = []
    for (const r of this.rules) r.drain(this.ctx, writes, owners)
    this.tick()
    await this.apply(writes, owners)
  }

  private async apply(writes: Write[], owners: Owner[]): Promise<void> {
    const replay: Write[] = []
    const replayOwners: Owner[] = []
    const answered = new Set<NonNullable<Owner['group']>>()
    for (let i = 0; i < writes.length; i += CHUNK_WRITES) {
      const refused = await this.applyChunk(i === 0 && writes.length <= CHUNK_WRITES ? writes : writes.slice(i, i + CHUNK_WRITES))
      for (const k of refused) {
        const o = owners[i + k] as Owner
        o.rule.refused(o.group, replay, replayOwners, answered)
      }
    }
    this.writes += writes.length
    // Replayed writes are single events: their refusals are counted, never replayed again.
    if (replay.length > 0) await this.apply(replay, replayOwners)
  }

  /** Applies writes; returns the indexes the store refused. */
  private async applyChunk(writes: Write[]): Promise<number[]> {
    let backoff = 5
    let since: number | null = null
    let refused: number[]
    for (;;) {
      try {
        const r = this.node.applyMany(writes)
        refused = r.refused.map((x) => x.index)
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
    return refused
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
  s.writes += batch.writes
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
