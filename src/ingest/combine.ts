/**
 * Applies the folded writes of ingest requests, one round at a time per node, and merges the
 * writes of the requests that meet in a round per (view, key).
 *
 * Why rounds: a write is durable only with the group commit after the one in flight, so the
 * writes of a request that finishes while a commit is on its way to disk wait anyway. Here they
 * wait unapplied, with those of every other request finishing meanwhile; the next round then
 * merges them (two requests' events on one user, page hour or site make one write) and applies
 * them together, as the commit in flight lands. Merging requests is folding over a larger batch:
 * fewer store writes, log deltas and replication deltas for the same events, and no later
 * acknowledgement than applying each request on its own.
 *
 * Exactness is kept as in groups.ts: a merged write the store refuses is applied again as the
 * writes it was made of, each then answered by the request that made it (replayed event by event
 * where that applies). Merged are only writes that cannot change meaning by merging: gcounter
 * sums (a gcounter only grows), set and sketch elements, lwwmap fields (the later request wins
 * ties, as it would applied after the earlier one). Counter writes are applied one at a time, in
 * order, each first checked against the value it meets, wherever a sum might not fit: every
 * pncounter write, and a gcounter key's merged writes when their sum and the value exceed the
 * safe range (see `applyOrdered`).
 */
import { NodeError, type SpeedNode, type Write } from '../node.js'
import type { Group, Owner } from './groups.js'
import { setField } from './rules.js'
import { ingestStats } from './stats.js'

/** Writes per `applyMany` call: large enough to batch, small enough not to hold the event loop long. */
const CHUNK_WRITES = 4096
const MAX_BACKOFF_MS = 250
/** An overload that lasts this long (a failed disk, or a queue that never drains) is answered 503 after all. */
const OVERLOAD_GIVE_UP_MS = 30_000

const delay = (ms: number) => new Promise<void>((r) => setTimeout(r, ms))

interface Submission {
  writes: Write[]
  owners: Owner[]
  resolve: () => void
  reject: (err: Error) => void
}

/** A write of a round: one submitted write, or several merged (`parts`, their indexes in the round). */
interface Entry {
  write: Write
  /** Set on the entry once it holds more than one write. */
  parts: number[] | null
  /** The first part's index (the entry's own write until merged). */
  first: number
  /** lwwmap: per field the winning value and event time (-1 without times), once merged. */
  fields: Map<string, { v: unknown; ts: number }> | null
  type: string
  /** gcounter: a part is one event's, or the sum left the safe range: applied the ordered way. */
  risky: boolean
}

/** Indexes of the writes of a counter type, in order. */
function counterWrites(owners: Owner[], type: 'pncounter'): number[] {
  const out: number[] = []
  for (let i = 0; i < owners.length; i++) if ((owners[i] as Owner).rule.reader.type === type) out.push(i)
  return out
}

export class IngestCombiner {
  private queue: Submission[] = []
  private running = false
  private readonly maxElements: number

  constructor(private readonly node: SpeedNode) {
    this.maxElements = node.store.limits.maxOpElements
  }

  /**
   * Applies the writes (owners[i] answers a refusal of writes[i]); resolves once they are
   * durable. Rejects when the node refuses them (closed, overloaded for good, disk failed).
   */
  submit(writes: Write[], owners: Owner[]): Promise<void> {
    return new Promise((resolve, reject) => {
      this.queue.push({ writes, owners, resolve, reject })
      if (!this.running) void this.run()
    })
  }

  private async run(): Promise<void> {
    this.running = true
    try {
      while (this.queue.length > 0) {
        const round = this.queue
        this.queue = []
        // The next round is applied once this one is on disk: what arrives meanwhile merges.
        try {
          await this.apply(round)
          for (const s of round) s.resolve()
        } catch (err) {
          for (const s of round) s.reject(err as Error)
        }
      }
    } finally {
      this.running = false
    }
  }

  /** Applies a round; resolves once it is durable. */
  private async apply(round: Submission[]): Promise<void> {
    let writes: Write[]
    let owners: Owner[]
    if (round.length === 1) {
      writes = (round[0] as Submission).writes
      owners = (round[0] as Submission).owners
    } else {
      writes = []
      owners = []
      for (const s of round) {
        for (const w of s.writes) writes.push(w)
        for (const o of s.owners) owners.push(o)
      }
    }
    const durable: Promise<void>[] = []
    const refused: number[] = []
    // One request's writes touch a key once per view: only a round of several is merged.
    const { entries, ordered } = round.length === 1 ? { entries: null, ordered: counterWrites(owners, 'pncounter') } : this.merge(writes, owners)
    await this.applyOrdered(writes, owners, ordered, durable)
    if (entries === null) {
      const skip = new Set(ordered)
      const rest = ordered.length === 0 ? writes : writes.filter((_, i) => !skip.has(i))
      const index = ordered.length === 0 ? null : writes.flatMap((_, i) => (skip.has(i) ? [] : [i]))
      for (const i of await this.applyAll(rest, durable)) refused.push(index === null ? i : (index[i] as number))
    } else {
      const again: number[] = []
      // The writes of one merged lwwmap entry share its parts: they are applied again once.
      const seen = new Set<number[]>()
      for (const i of await this.applyAll(entries.map((e) => e.write), durable)) {
        const e = entries[i] as Entry
        if (e.parts === null) refused.push(e.first)
        else if (!seen.has(e.parts)) {
          seen.add(e.parts)
          for (const p of e.parts) again.push(p)
        }
      }
      // A merged write refused (its view was redefined meanwhile): its parts, each on its own,
      // answered by their requests.
      if (again.length > 0) for (const i of await this.applyAll(again.map((p) => writes[p] as Write), durable)) refused.push(again[i] as number)
    }
    ingestStats(this.node).writes += entries === null ? writes.length : entries.length + ordered.length
    if (refused.length > 0) {
      const replay: Write[] = []
      const replayOwners: Owner[] = []
      const answered = new Set<Group>()
      for (const i of refused) {
        const o = owners[i] as Owner
        o.rule.refused(o.group, replay, replayOwners, answered)
      }
      // Replays are single events: their refusals are counted, never replayed.
      for (const i of await this.applyAll(replay, durable)) (replayOwners[i] as Owner).rule.refused(null, [], [], answered)
    }
    await Promise.all(durable)
  }

  /**
   * Merges the writes of a round per (view, key) where merging keeps their meaning; returns the
   * entries in first-write order, and the indexes of the counter writes that must be applied one
   * at a time, in order (see `applyOrdered`): every pncounter write, and the gcounter writes of a
   * key whose merged sum might not fit.
   */
  private merge(writes: Write[], owners: Owner[]): { entries: Entry[]; ordered: number[] } {
    let entries: Entry[] = []
    let ordered: number[] = []
    const byView = new Map<string, Map<string, Entry>>()
    let risky = false
    for (let i = 0; i < writes.length; i++) {
      const w = writes[i] as Write
      const o = owners[i] as Owner
      const type = o.rule.reader.type
      if (type === 'pncounter') {
        ordered.push(i)
        continue
      }
      // A write of one event (a replayed group) stays as it is; a gcounter one makes its key ordered.
      if (o.group === null && type !== 'gcounter') {
        entries.push({ write: w, parts: null, first: i, fields: null, type, risky: false })
        continue
      }
      let byKey = byView.get(w.view)
      if (byKey === undefined) byView.set(w.view, (byKey = new Map()))
      const e = byKey.get(w.key)
      if (e !== undefined && e.type === type && this.fold(e, w, writes[e.first] as Write)) {
        ;(e.parts ??= [e.first]).push(i)
        if (o.group === null) e.risky = true
        risky ||= e.risky
        continue
      }
      const fresh: Entry = { write: w, parts: null, first: i, fields: null, type, risky: o.group === null }
      risky ||= fresh.risky
      entries.push(fresh)
      byKey.set(w.key, fresh)
    }
    // A gcounter key whose merged sum might leave the safe range: its writes in order, one at a
    // time, so that exactly the events that do not fit are refused, as one by one.
    const fits = (e: Entry) => {
      if (e.type !== 'gcounter' || e.parts === null) return !e.risky
      const v = this.node.read(e.write.view, e.write.key).value
      return !e.risky && typeof v === 'number' && Number.isSafeInteger(v + (e.write.op as { inc: number }).inc)
    }
    if (risky || entries.some((e) => e.type === 'gcounter' && e.parts !== null)) {
      const keep: Entry[] = []
      for (const e of entries) {
        if (e.type !== 'gcounter' || fits(e)) keep.push(e)
        else for (const p of e.parts ?? [e.first]) ordered.push(p)
      }
      entries = keep
      ordered = ordered.sort((a, b) => a - b)
    }
    for (const e of entries) if (e.fields !== null) e.write = { view: e.write.view, key: e.write.key, op: lwwOps(e.fields) }
    // An lwwmap entry of several event times is several writes: written out, they follow one another.
    return { entries: entries.flatMap((e) => (Array.isArray(e.write.op) ? splitLww(e) : [e])), ordered }
  }

  /** Folds write `w` into entry `e` (whose first write is `first`); false if it cannot be. */
  private fold(e: Entry, w: Write, first: Write): boolean {
    const op = w.op as Record<string, unknown>
    switch (e.type) {
      case 'gcounter': {
        const sum = (e.write.op as { inc: number }).inc + (op.inc as number)
        // A sum past the safe range is no op: the key goes the ordered way.
        if (!Number.isSafeInteger(sum)) e.risky = true
        e.write = { view: w.view, key: w.key, op: { inc: sum } }
        return true
      }
      case 'orset':
      case 'hll': {
        const a = (e.write.op as { add: string[] }).add
        const b = op.add as string[]
        if (a.length + b.length > this.maxElements) return false
        // Until the first merge the list is the first write's, which its request may still replay.
        let add = a
        if (e.parts === null) add = a.concat(b)
        else for (const x of b) add.push(x)
        e.write = { view: w.view, key: w.key, op: { add } }
        return true
      }
      case 'lwwmap': {
        if (e.fields === null) {
          e.fields = new Map()
          takeLww(e.fields, first.op as Record<string, unknown>)
        }
        const set = op.set as Record<string, unknown>
        let grow = 0
        for (const f of Object.keys(set)) if (!e.fields.has(f)) grow++
        if (e.fields.size + grow > this.maxElements) return false
        takeLww(e.fields, op)
        return true
      }
      default:
        return false
    }
  }

  /**
   * Applies counter writes one at a time, in order, as one by one: an event is refused when the
   * running value would leave the safe range. A folded write is applied whole only where its
   * highest and lowest running point, added to the value it meets, stay in range; else (or if
   * refused) its events are applied one by one, before the next write.
   */
  private async applyOrdered(writes: Write[], owners: Owner[], ordered: number[], durable: Promise<void>[]): Promise<void> {
    for (const i of ordered) {
      const w = writes[i] as Write
      const o = owners[i] as Owner
      const g = o.group
      if (g !== null) {
        let v: unknown
        try {
          v = this.node.read(w.view, w.key).value
        } catch {
          v = undefined // the view is gone: the write is refused below, and replayed
        }
        const whole = typeof v !== 'number' || (Number.isSafeInteger(v + g.hi) && Number.isSafeInteger(v + g.lo))
        if (whole && (await this.applyAll([w], durable)).length === 0) continue
      } else if ((await this.applyAll([w], durable)).length === 0) continue
      const replay: Write[] = []
      const replayOwners: Owner[] = []
      o.rule.refused(g, replay, replayOwners, new Set())
      for (const k of await this.applyAll(replay, durable)) (replayOwners[k] as Owner).rule.refused(null, [], [], new Set())
    }
  }

  /** Applies writes in chunks (waiting while the node is overloaded); returns the refused indexes. */
  private async applyAll(writes: Write[], durable: Promise<void>[]): Promise<number[]> {
    const refused: number[] = []
    for (let i = 0; i < writes.length; i += CHUNK_WRITES) {
      const chunk = i === 0 && writes.length <= CHUNK_WRITES ? writes : writes.slice(i, i + CHUNK_WRITES)
      for (const k of await this.applyChunk(chunk, durable)) refused.push(i + k)
    }
    return refused
  }

  private async applyChunk(writes: Write[], durable: Promise<void>[]): Promise<number[]> {
    let backoff = 5
    let since: number | null = null
    for (;;) {
      try {
        const r = this.node.applyMany(writes)
        durable.push(r.durable)
        return r.refused.map((x) => x.index)
      } catch (err) {
        if (!(err instanceof NodeError) || err.code !== 'overload') throw err
        // The node also says "overload" once its disk has failed, for good: do not wait forever.
        since ??= performance.now()
        if (performance.now() - since > OVERLOAD_GIVE_UP_MS) throw err
        if (durable.length > 0) {
          // This round's own writes are most of the queue: once they are down there is room.
          await Promise.all(durable)
        } else {
          await delay(backoff)
          backoff = Math.min(backoff * 2, MAX_BACKOFF_MS)
        }
      }
    }
  }
}

/** Takes an lwwmap op's fields into `fields`: per field the latest event time wins, ties the later op. */
function takeLww(fields: Map<string, { v: unknown; ts: number }>, op: Record<string, unknown>): void {
  const set = op.set as Record<string, unknown>
  const ts = typeof op.ts === 'number' ? op.ts : -1
  for (const f of Object.keys(set)) {
    const cur = fields.get(f)
    if (cur === undefined || ts >= cur.ts) fields.set(f, { v: set[f], ts })
  }
}

/** The ops of merged lwwmap fields: one per distinct event time (an array when more than one). */
function lwwOps(fields: Map<string, { v: unknown; ts: number }>): unknown {
  const byTs = new Map<number, Record<string, unknown>>()
  for (const [f, { v, ts }] of fields) {
    let set = byTs.get(ts)
    if (set === undefined) byTs.set(ts, (set = {}))
    setField(set, f, v)
  }
  const ops = [...byTs].map(([ts, set]) => (ts < 0 ? { set } : { set, ts }))
  return ops.length === 1 ? ops[0] : ops
}

function splitLww(e: Entry): Entry[] {
  return (e.write.op as unknown[]).map((op) => ({ ...e, write: { view: e.write.view, key: e.write.key, op } }))
}

