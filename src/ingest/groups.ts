/**
 * The events of one ingest batch, grouped per (view, key): each rule folds the events of a key
 * into one op (a counter's sum, a set's or sketch's elements, the latest value of each map field)
 * instead of one op per event. A batch of pageviews touches far fewer keys than it holds events
 * (a few sites, the pages of one hour, the users active in it), so the store applies, logs and
 * replicates a fraction of the ops and deltas; and reading an event into a group allocates
 * nothing but the group itself.
 *
 * The folded ops give every key the value the events applied one by one would give, and each
 * rule rejects exactly the events it would reject one by one (see `compileRule`):
 * - counters: one `inc` of the sum. A gcounter only grows, so the sum fits wherever every prefix
 *   fits; a pncounter's running sum (its highest and lowest point) is checked against the key's
 *   value right before it is applied (combine.ts). An op the store refuses (a counter leaving the
 *   safe range) is replayed event by event, which refuses exactly the events that would have
 *   been refused;
 * - orset, hll: one `add` of the elements (a set or sketch of a union is the union). Elements the
 *   type would refuse (ill-formed UTF-16) are rejected per event before they join a group;
 * - lwwmap: per field, the value of the event with the latest time (the later one among equal
 *   times, as one by one the later write of an equal time wins); one `set` per distinct time.
 *   Values are checked per event as the type checks them, so the folded set cannot be refused.
 * Stamps differ from the one-by-one path (one dot per element instead of one per event, one
 * register stamp per field); values do not.
 *
 * One class for every type, with a switch on the kind, and one shape for every group: the fold
 * runs for every rule on every event, and with a class (and a group shape) per type its call
 * sites saw three of each and ran at a third of the speed.
 */
import { lwwmap } from '../../crdts/index.js'
import type { Write } from '../node.js'
import { RuleReader, own, setField, wellFormed } from './rules.js'

type IngestOp = Record<string, unknown>

/** A key's events folded so far. Fields a kind does not use stay at their initial value. */
class Group {
  /** Events folded in. */
  n = 0
  /** Counters: the sum, and the highest and lowest running sum (0 included). */
  sum = 0
  hi = 0
  lo = 0
  /** Counters with an amount field: each event's amount, in order, for a replay. */
  amounts: number[] | null = null
  /** orset, hll: the elements in event order, repeats included. */
  elems: string[] | null = null
  /** lwwmap: where this group's fields start in the rule's value and time arrays. */
  slot = 0

  constructor(
    readonly key: string,
    /** Why the key itself cannot be used (every event of it is rejected), or null. */
    readonly bad: string | null,
  ) {}
}

export type { Group }

/** What a rule's groups need from the batch while draining. */
export interface DrainContext {
  /** Largest element count of one op (the store's `maxOpElements`). */
  maxElements: number
}

export interface Owner {
  rule: RuleGroups
  /** null: a write of one event. */
  group: Group | null
}

const hasOwn = Object.prototype.hasOwnProperty

/** A value the lwwmap type takes as it is (no nesting to bound, nothing JSON cannot hold). */
function simple(v: unknown): boolean {
  switch (typeof v) {
    case 'string':
    case 'boolean':
      return true
    case 'number':
      return Number.isFinite(v)
    default:
      return v === null
  }
}

const enum Kind {
  Counter,
  Set,
  Map,
}

/**
 * One rule's groups. `add` takes an event; `drain` appends one or a few writes per group and
 * forgets the groups; `refused` answers a write the store refused.
 */
export class RuleGroups {
  /** Events this rule turned into a contribution (its rejections excluded). */
  taken = 0
  /** Events this rule could not use, or whose write the store refused. */
  rejected = 0
  /** Of `rejected`: events whose write the store refused (they were `taken` first). */
  refusedByStore = 0
  /** Contributions since the last drain. */
  pending = 0
  private readonly kind: Kind
  private readonly withAmounts: boolean
  private flat = new Map<string, Group>()
  private byBucket = new Map<number, Map<string, Group>>()
  private lastBucket = NaN
  private lastMap: Map<string, Group> = this.flat
  private readonly unified = new Map<string, Group>()
  private groups = 0
  /** lwwmap: the rule's fields; per group and field (slot + i) the winning value and its time (-1: none). */
  private readonly fields: readonly string[]
  private readonly badName: Array<string | null>
  private vals: unknown[] = []
  private times: number[] = []
  /** lwwmap without event times: the later event wins, its arrival number stands in for a time. */
  private arrival = 0

  constructor(
    readonly view: string,
    readonly reader: RuleReader,
    private readonly maxElements: number,
  ) {
    const t = reader.type
    this.kind = t === 'gcounter' || t === 'pncounter' ? Kind.Counter : t === 'lwwmap' ? Kind.Map : Kind.Set
    this.withAmounts = reader.valueField !== undefined
    this.fields = reader.setFields
    this.badName = this.fields.map((f) => {
      try {
        lwwmap.validate({ set: { [f]: null } })
        return null
      } catch (err) {
        return (err as Error).message
      }
    })
  }

  /** Takes one event (now: the node's clock, for the drift bound). */
  add(event: Record<string, unknown>, now: number): void {
    const r = this.reader
    if (!r.matches(event)) return
    // The value is judged before a group is found: an event with a bad value must not create one.
    if (r.locate(event, now) !== null || this.check(event) !== null) {
      this.rejected++
      return
    }
    const g = this.find(r.part, r.bucket)
    if (g.bad !== null) {
      this.rejected++
      return
    }
    this.fold(g, event)
    g.n++
    this.taken++
    this.pending++
  }

  /** Reads the event's value; why it cannot be used, or null. */
  private check(event: Record<string, unknown>): string | null {
    const r = this.reader
    switch (this.kind) {
      case Kind.Counter:
        return r.readAmount(event)
      case Kind.Set: {
        const why = r.readElement(event)
        if (why !== null) return why
        // The type refuses a whole op holding one such element: reject the event, not the group.
        return wellFormed(r.element) ? null : `element ${JSON.stringify(r.element)} is not well-formed UTF-16`
      }
      case Kind.Map:
        return this.checkFields(event)
    }
  }

  /** lwwmap: what the store would refuse of this event's own op, checked as the type checks it. */
  private checkFields(event: Record<string, unknown>): string | null {
    const fields = this.fields
    let present = 0
    let complex = false
    for (let i = 0; i < fields.length; i++) {
      const f = fields[i] as string
      if (!hasOwn.call(event, f)) continue
      const bad = this.badName[i]
      if (bad !== null && bad !== undefined) return bad
      present++
      if (!simple(event[f])) complex = true
    }
    if (present === 0) return this.reader.noFields()
    if (present > this.maxElements) return `an op may carry at most ${this.maxElements} elements, this one has ${present}`
    if (complex) {
      const set: Record<string, unknown> = {}
      for (const f of fields) if (hasOwn.call(event, f)) setField(set, f, event[f])
      try {
        lwwmap.validate({ set })
      } catch (err) {
        return (err as Error).message
      }
    }
    return null
  }

  /** Folds the value `check` read into the group. */
  private fold(g: Group, event: Record<string, unknown>): void {
    const r = this.reader
    switch (this.kind) {
      case Kind.Counter: {
        const a = r.amount
        g.sum += a
        if (g.sum > g.hi) g.hi = g.sum
        if (g.sum < g.lo) g.lo = g.sum
        if (this.withAmounts) (g.amounts ??= []).push(a)
        return
      }
      case Kind.Set:
        ;(g.elems ??= []).push(r.element)
        return
      case Kind.Map: {
        const fields = this.fields
        const t = r.stamps ? (r.ts as number) : this.arrival++
        const vals = this.vals
        const times = this.times
        for (let i = 0, s = g.slot; i < fields.length; i++, s++) {
          const v = own(event, fields[i] as string)
          if (v === undefined || t < (times[s] as number)) continue
          vals[s] = v
          times[s] = t
        }
      }
    }
  }

  /**
   * The group of (part, bucket). Events of a batch mostly share one bucket: the map of the last
   * bucket is kept at hand, and the key string is made once per group, not per event. Two parts
   * that make one key string (a part holding "|") share their group.
   */
  private find(part: string, bucket: number): Group {
    let m: Map<string, Group>
    if (this.reader.bucketMs === 0) m = this.flat
    else if (bucket === this.lastBucket) m = this.lastMap
    else {
      let b = this.byBucket.get(bucket)
      if (b === undefined) this.byBucket.set(bucket, (b = new Map()))
      this.lastBucket = bucket
      this.lastMap = m = b
    }
    let g = m.get(part)
    if (g !== undefined) return g
    const key = this.reader.keyOf(part, bucket)
    const bad = this.reader.keyProblem(key)
    const k = key ?? ''
    g = bad === null && this.reader.bucketMs !== 0 ? this.unified.get(k) : undefined
    if (g === undefined) {
      g = new Group(k, bad)
      if (bad === null && this.reader.bucketMs !== 0) this.unified.set(k, g)
      if (this.kind === Kind.Map) {
        g.slot = this.groups * this.fields.length
        for (let i = 0; i < this.fields.length; i++) {
          this.vals.push(undefined)
          this.times.push(-1)
        }
      }
      this.groups++
    }
    m.set(part, g)
    return g
  }

  /** Appends the writes of every group (with `this` as their owner) and forgets the groups. */
  drain(ctx: DrainContext, out: Write[], owners: Owner[]): void {
    const emit = (g: Group) => {
      if (g.bad !== null || g.n === 0) return
      const from = out.length
      // A group written event by event from the start owns nothing: each write is one event's.
      const owner: Owner = { rule: this, group: this.ops(g, ctx, out) ? g : null }
      for (let i = from; i < out.length; i++) owners.push(owner)
    }
    if (this.reader.bucketMs === 0) for (const g of this.flat.values()) emit(g)
    else {
      // A group reached by two parts is emitted once.
      const seen = new Set<Group>()
      for (const b of this.byBucket.values()) {
        for (const g of b.values()) {
          if (seen.has(g)) continue
          seen.add(g)
          emit(g)
        }
      }
    }
    this.flat = new Map()
    this.byBucket = new Map()
    this.lastBucket = NaN
    this.lastMap = this.flat
    this.unified.clear()
    this.groups = 0
    this.vals = []
    this.times = []
    this.pending = 0
  }

  /** Appends the group's writes; false when they are its events one by one (not folded). */
  private ops(g: Group, ctx: DrainContext, out: Write[]): boolean {
    const view = this.view
    switch (this.kind) {
      case Kind.Counter: {
        // A pncounter's sum is checked against the key's value where it is applied (combine.ts).
        const whole = Number.isSafeInteger(g.sum)
        if (whole) out.push({ view, key: g.key, op: { inc: g.sum } })
        else for (const op of this.replay(g) as IngestOp[]) out.push({ view, key: g.key, op })
        return whole
      }
      case Kind.Set: {
        const elems = g.elems as string[]
        const max = ctx.maxElements
        if (elems.length <= max) out.push({ view, key: g.key, op: { add: elems } })
        else {
          const distinct = [...new Set(elems)]
          for (let i = 0; i < distinct.length; i += max) out.push({ view, key: g.key, op: { add: distinct.slice(i, i + max) } })
        }
        return true
      }
      case Kind.Map:
        this.mapOps(g, out)
        return true
    }
  }

  private mapOps(g: Group, out: Write[]): void {
    const fields = this.fields
    const vals = this.vals
    const times = this.times
    const s = g.slot
    if (!this.reader.stamps) {
      const set: Record<string, unknown> = {}
      for (let i = 0; i < fields.length; i++) if ((times[s + i] as number) >= 0) setField(set, fields[i] as string, vals[s + i])
      out.push({ view: this.view, key: g.key, op: { set } })
      return
    }
    // One set per distinct event time: usually one, the latest event carrying every field.
    for (let i = 0; i < fields.length; i++) {
      const ts = times[s + i] as number
      if (ts < 0) continue
      const set: Record<string, unknown> = {}
      for (let j = i; j < fields.length; j++) {
        if (times[s + j] !== ts) continue
        setField(set, fields[j] as string, vals[s + j])
        times[s + j] = -1 // taken into this set
      }
      out.push({ view: this.view, key: g.key, op: { set, ts } })
    }
  }

  /** Writes that replay the group event by event, or null when it cannot be replayed. */
  private replay(g: Group): IngestOp[] | null {
    switch (this.kind) {
      case Kind.Counter:
        return g.amounts === null ? Array.from({ length: g.n }, () => ({ inc: 1 })) : g.amounts.map((a) => ({ inc: a }))
      case Kind.Set:
        return (g.elems as string[]).map((e) => ({ add: e }))
      case Kind.Map:
        // Each event was checked as the store checks it: a refusal cannot be replayed event by
        // event (the group keeps only the winning values), only counted.
        return null
    }
  }

  /**
   * The store refused a write of `group` (nothing of it applied): replays the group's events one
   * by one into `out` (each refused one then counts as a rejection), or counts them all as
   * rejected when the group cannot be replayed. A group is answered once, however many of its
   * writes were refused.
   */
  refused(group: Group | null, out: Write[], owners: Owner[], answered: Set<Group>): void {
    if (group === null) {
      this.rejected++
      this.refusedByStore++
      return
    }
    if (answered.has(group)) return
    answered.add(group)
    const ops = this.replay(group)
    if (ops === null) {
      this.rejected += group.n
      this.refusedByStore += group.n
      return
    }
    for (const op of ops) {
      out.push({ view: this.view, key: group.key, op })
      owners.push({ rule: this, group: null })
    }
  }
}
