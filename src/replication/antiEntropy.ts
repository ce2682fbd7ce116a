/**
 * Digest-based anti-entropy, the last resort for a peer that lacks deltas this node can neither
 * read from its log nor name by key (see journal.ts): as Riak's and Cassandra's repairs compare
 * hashed key ranges instead of histories.
 *
 * Keys are placed by a 32-bit hash of the key; a range is a hash prefix of `depth` bits. A
 * range's digest is the XOR of a 32-bit hash of (key, encoded state) over its keys. The
 * initiator splits each view's whole range into children and sends, per parent, a mask of the
 * children it holds keys in and their digests; the responder answers which differ (and which it
 * holds nothing of); the initiator splits those further, until a range holds a single key (or
 * the responder holds nothing there): then it ships the states of that range. The responder
 * joins them, so it ends up holding everything the initiator held when it started, and `aeDone`
 * tells it which deltas that covers.
 *
 * Cost. Most of a session's bytes are digests of ranges holding one changed key among unchanged
 * ones; each level costs 4 bytes per child. Ranges of many keys split 16 ways (most children
 * differ while changes are dense), ranges of few keys 4 ways (once a change is isolated, fewer
 * children per level is cheaper than fewer levels); empty children cost a mask bit, not a digest.
 *
 * Encodings are canonical (equal states, equal bytes), so equal ranges have equal digests; a
 * collision (two different ranges with one 32-bit digest) is left for the next run.
 */
import * as encoding from 'lib0/encoding'
import { hash64, hash64Bytes } from '../../crdts/hash.js'
import type { ViewStore, View } from '../store/viewStore.js'
import type { VersionVector } from '../storage/versionVector.js'
import { MAX_SPLIT_BITS, type Message, type WireState } from './messages.js'
import type { Link, ReplicationStats } from './replicator.js'

/** Ranges of more keys than this split 2^4 ways, smaller ones 2^2 ways. */
const WIDE_KEYS = 64
const NARROW_BITS = 2
/** A differing range of at most this many keys is shipped rather than split further. */
const LEAF_KEYS = 1
const MAX_STATES_BYTES = 512 * 1024
/** Parents per aeDigests message: each costs at most ~70 bytes, far below any message limit. */
const MAX_PARENTS = 2048

interface Item {
  kh: number
  ih: number
  key: string
}

/** A view's keys sorted by key hash, with per-key state hashes: computed once per session. */
interface Tree {
  view: View | null
  items: Item[]
}

const h = new Uint32Array(4)
/** Reused for every item: a lib0 encoder is reset by clearing its buffers. */
const scratch = encoding.createEncoder()

function buildTree(view: View): Tree {
  const items: Item[] = []
  for (const [key, state] of view.states.entries()) {
    hash64(key, h)
    const kh = h[1] as number
    scratch.cpos = 0
    scratch.bufs.length = 0
    encoding.writeVarString(scratch, key)
    view.type.encode(scratch, state)
    hash64Bytes(encoding.toUint8Array(scratch), h)
    items.push({ kh, ih: h[0] as number, key })
  }
  items.sort((a, b) => a.kh - b.kh)
  return { view, items }
}

function lowerBound(items: Item[], kh: number, lo = 0): number {
  let hi = items.length
  while (lo < hi) {
    const mid = (lo + hi) >>> 1
    if ((items[mid] as Item).kh < kh) lo = mid + 1
    else hi = mid
  }
  return lo
}

/** [start, end) of the items of range `prefix` at `depth` bits. */
function range(tree: Tree, depth: number, prefix: number): [number, number] {
  if (depth === 0) return [0, tree.items.length]
  const shift = 2 ** (32 - depth)
  const a = lowerBound(tree.items, prefix * shift)
  const hi = (prefix + 1) * shift
  return [a, hi >= 2 ** 32 ? tree.items.length : lowerBound(tree.items, hi, a)]
}

function digestOf(items: Item[], a: number, b: number): number {
  let d = 0
  for (let i = a; i < b; i++) d ^= (items[i] as Item).ih
  return d >>> 0
}

/** How many bits to split a range of `keys` keys at `depth` by. */
function splitBits(keys: number, depth: number): number {
  return Math.min(keys > WIDE_KEYS ? MAX_SPLIT_BITS : NARROW_BITS, 32 - depth)
}

interface Request {
  tree: Tree
  depth: number
  bits: number
  parents: number[]
}

interface Session {
  id: number
  /** Initiator: requests sent and not answered yet. */
  requests: Map<number, Request>
  nextReq: number
  vv: VersionVector | null
  trees: Map<string, Tree>
  resolve: (() => void) | null
  /** Initiator: the states shipped so far, each sent once the writes it includes are durable. */
  shipped: Promise<void>
}

function newSession(id: number, vv: VersionVector | null, resolve: (() => void) | null): Session {
  return { id, requests: new Map(), nextReq: 1, vv, trees: new Map(), resolve, shipped: Promise.resolve() }
}

export class AntiEntropy {
  private nextSession = 1
  /** Sessions this node started, by link. */
  private readonly started = new Map<Link, Session>()
  /** Trees this node computed while answering a peer's session, by link. */
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

  /**
   * Runs a session towards `link`: resolves once the peer holds everything this node holds.
   * `covers` goes out in `aeDone`: the deltas the peer may record as delivered (those this node
   * holds now and the peer was not known to have).
   */
  start(link: Link, covers: VersionVector): Promise<void> {
    return new Promise((resolve) => {
      const s = newSession(this.nextSession++, covers, resolve)
      this.started.set(link, s)
      for (const view of this.store.views()) {
        const tree = buildTree(view)
        s.trees.set(view.name, tree)
        if (tree.items.length === 0) continue
        this.sendSplit(link, s, tree, 0, splitBits(tree.items.length, 0), [0])
      }
      this.maybeDone(link, s)
    })
  }

  /** Digests of the children of `parents` (ranges at `depth`), `bits` bits deeper. */
  private sendSplit(link: Link, s: Session, tree: Tree, depth: number, bits: number, parents: number[]): void {
    const fanout = 1 << bits
    for (let from = 0; from < parents.length; from += MAX_PARENTS) {
      const chunk = parents.slice(from, from + MAX_PARENTS)
      const present: number[] = []
      const digests: number[] = []
      for (const prefix of chunk) {
        let mask = 0
        for (let c = 0; c < fanout; c++) {
          const [a, b] = range(tree, depth + bits, prefix * fanout + c)
          if (a === b) continue
          mask |= 1 << c
          digests.push(digestOf(tree.items, a, b))
        }
        present.push(mask >>> 0)
      }
      const req = s.nextReq++
      s.requests.set(req, { tree, depth, bits, parents: chunk })
      this.sendCounted(link, { t: 'aeDigests', session: s.id, req, view: (tree.view as View).name, depth, bits, parents: chunk, present, digests })
    }
  }

  /** Encodes the range's states as they are now, into `out` (messages of at most MAX_STATES_BYTES). */
  private encodeRange(tree: Tree, a: number, b: number, out: WireState[][]): void {
    const view = tree.view as View
    // Ranges of one answer share messages: one view table, not one per range.
    let states: WireState[] = out.pop() ?? []
    let bytes = states.reduce((t, x) => t + x.bytes.length + x.key.length, 0)
    for (let i = a; i < b; i++) {
      const key = (tree.items[i] as Item).key
      const state = view.states.get(key)
      if (state === undefined) continue
      const enc = encoding.createEncoder()
      view.type.encode(enc, state)
      const bs = encoding.toUint8Array(enc)
      states.push({ view: view.name, type: view.def.type, key, bytes: bs })
      bytes += bs.length + key.length
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
    if (s.requests.size > 0 || !s.resolve) return
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
    if (m.t === 'aeDigests') return this.answer(link, m)
    if (m.t === 'aeNeed') return this.onNeed(link, m)
    if (m.t === 'aeDone') {
      this.answering.delete(link)
      onDone(m.vv)
    }
  }

  /** Responder: compare the initiator's children with ours. */
  private answer(link: Link, m: Extract<Message, { t: 'aeDigests' }>): void {
    let s = this.answering.get(link)
    if (!s || s.id !== m.session) {
      s = newSession(m.session, null, null)
      this.answering.set(link, s)
    }
    let tree = s.trees.get(m.view)
    if (!tree) {
      tree = this.store.hasView(m.view) ? buildTree(this.store.view(m.view)) : { view: null, items: [] }
      s.trees.set(m.view, tree)
    }
    const fanout = 1 << m.bits
    const differ: number[] = []
    const whole: number[] = []
    let next = 0
    m.parents.forEach((prefix, i) => {
      const mask = m.present[i] as number
      let d = 0
      let w = 0
      for (let c = 0; c < fanout; c++) {
        if ((mask & (1 << c)) === 0) continue
        const digest = m.digests[next++] as number
        const [a, b] = range(tree, m.depth + m.bits, prefix * fanout + c)
        if (a === b) {
          d |= 1 << c
          w |= 1 << c
        } else if (digestOf(tree.items, a, b) !== digest) d |= 1 << c
      }
      differ.push(d >>> 0)
      whole.push(w >>> 0)
    })
    this.sendCounted(link, { t: 'aeNeed', session: m.session, req: m.req, bits: m.bits, differ, whole })
  }

  /** Initiator: split what differs, ship what is small. */
  private onNeed(link: Link, m: Extract<Message, { t: 'aeNeed' }>): void {
    const s = this.started.get(link)
    if (!s || s.id !== m.session) return
    const r = s.requests.get(m.req)
    if (!r) return
    if (m.bits !== r.bits || m.differ.length !== r.parents.length) throw new Error(`an answer that does not match request ${m.req}`)
    s.requests.delete(m.req)
    const fanout = 1 << r.bits
    const depth = r.depth + r.bits
    const out: WireState[][] = []
    const split = new Map<number, number[]>()
    r.parents.forEach((prefix, i) => {
      const d = m.differ[i] as number
      const w = m.whole[i] as number
      for (let c = 0; c < fanout; c++) {
        if ((d & (1 << c)) === 0) continue
        const child = prefix * fanout + c
        const [a, b] = range(r.tree, depth, child)
        if ((w & (1 << c)) !== 0 || b - a <= LEAF_KEYS || depth >= 32) this.encodeRange(r.tree, a, b, out)
        else {
          const bits = splitBits(b - a, depth)
          let group = split.get(bits)
          if (!group) split.set(bits, (group = []))
          group.push(child)
        }
      }
    })
    for (const [bits, parents] of split) this.sendSplit(link, s, r.tree, depth, bits, parents)
    this.ship(link, s, out)
    this.maybeDone(link, s)
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
