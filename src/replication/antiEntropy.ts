/**
 * Digest-based anti-entropy, for a peer that lacks deltas the log no longer holds (as Riak's and
 * Cassandra's repairs compare hashed key ranges instead of histories).
 *
 * Keys are placed by a 32-bit hash of the key; a range is a hash prefix of 4 bits per level (16
 * children per node). A range's digest is the XOR of a 32-bit hash of (key, encoded state) over
 * its keys, with the key count beside it. The initiator sends the digests of the 16 top ranges of
 * a view; the responder answers which differ; the initiator splits those into their 16 children,
 * and so on, until a range is small (or the responder holds nothing there): then the initiator
 * ships the states of its keys in that range. The responder joins them, so it ends up holding
 * everything the initiator held when it started, and `aeDone` tells it which deltas that covers.
 *
 * Encodings are canonical (equal states, equal bytes), so equal ranges have equal digests; a
 * collision (two different ranges with one 32-bit digest and count) is left for the next run.
 */
import * as encoding from 'lib0/encoding'
import { hash64, hash64Bytes } from '../../crdts/hash.js'
import type { ViewStore, View } from '../store/viewStore.js'
import type { VersionVector } from '../storage/versionVector.js'
import type { DigestNode, Message, WireState } from './messages.js'
import type { Link, ReplicationStats } from './replicator.js'

const BITS = 4
const FANOUT = 1 << BITS
const MAX_LEVEL = 8 // 32 bits of key hash
/** A range of at most this many keys is shipped rather than split further. */
const LEAF_KEYS = 2
const MAX_STATES_BYTES = 512 * 1024

interface Item {
  kh: number
  ih: number
  key: string
}

/** A view's keys sorted by key hash, with per-key state hashes: computed once per session. */
interface Tree {
  view: View
  items: Item[]
}

const h = new Uint32Array(4)

function buildTree(view: View): Tree {
  const items: Item[] = []
  for (const [key, state] of view.states.entries()) {
    hash64(key, h)
    const kh = h[1] as number
    const enc = encoding.createEncoder()
    encoding.writeVarString(enc, key)
    view.type.encode(enc, state)
    hash64Bytes(encoding.toUint8Array(enc), h)
    items.push({ kh, ih: h[0] as number, key })
  }
  items.sort((a, b) => a.kh - b.kh)
  return { view, items }
}

function lowerBound(items: Item[], kh: number): number {
  let lo = 0
  let hi = items.length
  while (lo < hi) {
    const mid = (lo + hi) >>> 1
    if ((items[mid] as Item).kh < kh) lo = mid + 1
    else hi = mid
  }
  return lo
}

/** The items of range `prefix` at `level` (level 0 is the whole view). */
function range(tree: Tree, level: number, prefix: number): Item[] {
  if (level === 0) return tree.items
  const shift = 32 - BITS * level
  const lo = prefix * 2 ** shift
  const hi = (prefix + 1) * 2 ** shift
  const a = lowerBound(tree.items, lo)
  const b = hi >= 2 ** 32 ? tree.items.length : lowerBound(tree.items, hi)
  return tree.items.slice(a, b)
}

function digestOf(items: Item[]): DigestNode['digest'] {
  let d = 0
  for (const it of items) d ^= it.ih
  return d >>> 0
}

interface Session {
  id: number
  /** Initiator: views whose ranges are still being compared, and requests outstanding. */
  outstanding: number
  vv: VersionVector | null
  trees: Map<string, Tree>
  resolve: (() => void) | null
  /** Initiator: the states shipped so far, each sent once the writes it includes are durable. */
  shipped: Promise<void>
}

export class AntiEntropy {
  private nextSession = 1
  /** Sessions this node started, by link. */
  private readonly started = new Map<Link, Session>()
  /** Trees this node computed while answering a peer's session, by link and session. */
  private readonly answering = new Map<Link, Session>()

  constructor(
    private readonly store: ViewStore,
    private readonly send: (link: Link, m: Message) => number,
    private readonly stats: ReplicationStats,
    /** Resolves once every write applied so far is durable here. */
    private readonly durable: () => Promise<void>,
  ) {}

  private sendCounted(link: Link, m: Message): void {
    this.stats.antiEntropyBytes += this.send(link, m)
  }

  /** Runs a session towards `link`: resolves once the peer holds everything this node holds. */
  start(link: Link, vv: VersionVector): Promise<void> {
    return new Promise((resolve) => {
      const s: Session = { id: this.nextSession++, outstanding: 0, vv, trees: new Map(), resolve, shipped: Promise.resolve() }
      this.started.set(link, s)
      for (const view of this.store.views()) {
        const tree = buildTree(view)
        s.trees.set(view.name, tree)
        if (tree.items.length === 0) continue
        this.sendChildren(link, s, tree, 0, [0])
      }
      this.maybeDone(link, s)
    })
  }

  /** One message with the 16 children of every parent range to split at `level`. */
  private sendChildren(link: Link, s: Session, tree: Tree, level: number, parents: number[]): void {
    const nodes: DigestNode[] = []
    for (const prefix of parents) {
      for (let c = 0; c < FANOUT; c++) {
        const items = range(tree, level + 1, prefix * FANOUT + c)
        nodes.push({ digest: digestOf(items), count: items.length })
      }
    }
    s.outstanding++
    this.sendCounted(link, { t: 'aeDigests', session: s.id, view: tree.view.name, level: level + 1, parents, nodes })
  }

  /** Encodes the range's states as they are now, into `out` (messages of at most MAX_STATES_BYTES). */
  private encodeRange(tree: Tree, items: Item[], out: WireState[][]): void {
    // Ranges of one answer share messages: one view table, not one per range.
    let states: WireState[] = out.pop() ?? []
    let bytes = states.reduce((t, x) => t + x.bytes.length + x.key.length, 0)
    for (const it of items) {
      const state = tree.view.states.get(it.key)
      if (state === undefined) continue
      const enc = encoding.createEncoder()
      tree.view.type.encode(enc, state)
      const b = encoding.toUint8Array(enc)
      states.push({ view: tree.view.name, type: tree.view.def.type, key: it.key, bytes: b })
      bytes += b.length + it.key.length
      if (bytes > MAX_STATES_BYTES) {
        out.push(states)
        states = []
        bytes = 0
      }
    }
    if (states.length > 0) out.push(states)
  }

  /**
   * Sends states once the writes they include are durable. The store's memory runs ahead of its
   * disk by the group commit being written; a state shipped from there could carry a local
   * write that a crash then loses, and the node would reuse its sequence number for another
   * write while the peer keeps the lost one forever (a G-counter slot that never comes down).
   */
  private ship(link: Link, s: Session, messages: WireState[][]): void {
    if (messages.length === 0) return
    s.shipped = s.shipped
      .then(() => this.durable())
      .then(() => {
        for (const states of messages) this.sendCounted(link, { t: 'states', states, covers: null })
      })
    // A failed disk stops the session's sends; the rejection is handled where the session ends.
    s.shipped.catch(() => {})
  }

  private maybeDone(link: Link, s: Session): void {
    if (s.outstanding > 0 || !s.resolve) return
    this.started.delete(link)
    const r = s.resolve
    s.resolve = null
    // aeDone lets the peer count our deltas as delivered: only after every state it needs, and
    // never if those could not be sent.
    void s.shipped
      .then(() => this.sendCounted(link, { t: 'aeDone', session: s.id, vv: s.vv as VersionVector }))
      .catch(() => {})
      .then(r)
  }

  handle(link: Link, m: Message, onDone: (covers: VersionVector) => void): void {
    if (m.t === 'aeDigests') {
      // Responder: compare the initiator's ranges with ours.
      let s = this.answering.get(link)
      if (!s || s.id !== m.session) {
        s = { id: m.session, outstanding: 0, vv: null, trees: new Map(), resolve: null, shipped: Promise.resolve() }
        this.answering.set(link, s)
      }
      let tree = s.trees.get(m.view)
      if (!tree) {
        const view = this.store.hasView(m.view) ? this.store.view(m.view) : null
        tree = view ? buildTree(view) : { view: null as unknown as View, items: [] }
        s.trees.set(m.view, tree)
      }
      const prefixes: number[] = []
      m.nodes.forEach((n, i) => {
        if (n.count === 0) return
        const prefix = (m.parents[Math.floor(i / FANOUT)] as number) * FANOUT + (i % FANOUT)
        const mine = range(tree, m.level, prefix)
        if (mine.length === n.count && digestOf(mine) === n.digest) return
        // Flag bit: 1 = ship the whole range now (we hold nothing there, or it is small).
        const all = mine.length === 0 || n.count <= LEAF_KEYS || m.level >= MAX_LEVEL
        prefixes.push(prefix * 2 + (all ? 1 : 0))
      })
      this.sendCounted(link, { t: 'aeNeed', session: m.session, view: m.view, level: m.level, prefixes })
      return
    }
    if (m.t === 'aeNeed') {
      // Initiator: split what differs, ship what is small.
      const s = this.started.get(link)
      if (!s || s.id !== m.session) return
      const tree = s.trees.get(m.view)
      s.outstanding--
      if (tree) {
        const out: WireState[][] = []
        const split: number[] = []
        for (const p of m.prefixes) {
          const prefix = Math.floor(p / 2)
          const items = range(tree, m.level, prefix)
          if (p % 2 === 1 || items.length <= LEAF_KEYS || m.level >= MAX_LEVEL) this.encodeRange(tree, items, out)
          else split.push(prefix)
        }
        if (split.length > 0) this.sendChildren(link, s, tree, m.level, split)
        this.ship(link, s, out)
      }
      this.maybeDone(link, s)
      return
    }
    if (m.t === 'aeDone') {
      this.answering.delete(link)
      onDone(m.vv)
    }
  }

  linkClosed(link: Link): void {
    const s = this.started.get(link)
    this.started.delete(link)
    this.answering.delete(link)
    if (s?.resolve) {
      const r = s.resolve
      s.resolve = null
      r()
    }
  }
}
