/**
 * The real replication protocol under the seeded simulator: five nodes, each a real ViewStore +
 * Storage (group commit, compaction, log retention, crash recovery) + Replicator
 * (./replicatorPeer.ts), on a full mesh and on the chain a-b-c-d-e. Views of all five types are
 * defined on random replicas (definitions replicate through the catalog); random ops from small
 * alphabets land on random replicas; links are cut, healed and partitioned; nodes crash (some
 * inside the group-commit window, losing unacknowledged writes) and recover from their storage;
 * logs are compacted and, past a tiny retention bound, forgotten, so peers must catch up by key
 * (the journal) or, where a node's journal is tiny and gives up or the peer was unknown, by
 * anti-entropy. Then everything heals, runs until quiet, and every replica must hold:
 * - the same catalog bytes and the same views;
 * - for every key of every view the same bytes, equal to a replica rebuilt from every
 *   acknowledged delta (an unacknowledged write lost in a crash must leave no trace anywhere);
 * - counters equal to the exact sum of the acknowledged ops;
 * - a `storage.logged` that covers every acknowledged delta.
 *
 * Network faults: only what TCP-like links allow. Messages are delayed (head-of-line blocking),
 * delivered on random links in random order across links, and in bursts of several per
 * event-loop turn (the group-commit window); a link going down drops what is in flight. No
 * duplication, reordering or loss within a live link: the protocol relies on ordered,
 * exactly-once links (WebSockets) and does not claim to survive those.
 *
 * `SEED=n` replays one seed; `SIM_SEEDS=n` sets the number of seeds per scenario (default 8);
 * `SIM_STEPS=n` the steps of each run (default 400). A replay needs the same SIM_STEPS.
 */
import { describe, expect, it } from 'vitest'
import * as prng from 'lib0/prng'
import * as encoding from 'lib0/encoding'
import { crdtTypes, isTypeName, type AnyCrdtType } from '../../crdts/index.js'
import { decodeState, encodeState } from '../../crdts/codec.js'
import { SimNetwork } from './network.js'
import { drain, ReplicaNode, World, type AppliedOp, type ReplicaNodeOptions } from './replicatorPeer.js'
import { MSG } from '../../src/replication/messages.js'
import { reproCommand, testSeeds } from './seeds.js'

const IDS = ['a', 'b', 'c', 'd', 'e']
/** One view per type; the name says nothing of the type so a wrong lookup shows. */
const VIEWS: Record<string, { type: string }> = {
  hits: { type: 'gcounter' },
  balance: { type: 'pncounter' },
  tags: { type: 'orset' },
  profile: { type: 'lwwmap' },
  visitors: { type: 'hll' },
}
const VIEW_NAMES = Object.keys(VIEWS)
const KEYS = ['k0', 'k1', 'k2', 'k3']
/** Node clocks start here (plus a per-node skew), so explicit event times interleave with HLC stamps. */
const EPOCH = 1_000_000
const ACK_MS = 20
const SWEEP_MS = 200
/** Steps per run; `SIM_STEPS=n` lengthens runs for a soak. */
const STEPS = process.env.SIM_STEPS ? Number(process.env.SIM_STEPS) : 400
const DEFAULT_SEEDS = 8

function elements(gen: prng.PRNG, alphabet: readonly string[]): string | string[] {
  if (prng.int31(gen, 0, 4) > 0) return prng.oneOf(gen, [...alphabet])
  return Array.from({ length: prng.int31(gen, 0, 3) }, () => prng.oneOf(gen, [...alphabet]))
}

const json = (gen: prng.PRNG): unknown =>
  prng.oneOf(gen, [() => prng.int31(gen, -3, 3), () => null, () => prng.word(gen, 0, 3), () => ({ n: prng.int31(gen, 0, 2) }), () => [true]])()

/** A random op for a view of `type`, from small alphabets so that replicas conflict. */
function genOp(gen: prng.PRNG, type: string, now: number): unknown {
  switch (type) {
    case 'gcounter':
      return prng.int31(gen, 0, 3) === 0 ? {} : { inc: prng.int31(gen, 0, 5) }
    case 'pncounter':
      return prng.bool(gen) ? { inc: prng.int31(gen, -5, 5) } : { dec: prng.int31(gen, 0, 5) }
    case 'orset':
      return { [prng.int31(gen, 0, 2) === 0 ? 'remove' : 'add']: elements(gen, ['a', 'b', 'c', 'd']) }
    case 'lwwmap': {
      const fields = ['x', 'y', 'z']
      const op: Record<string, unknown> =
        prng.int31(gen, 0, 3) === 0
          ? { delete: Array.from({ length: prng.int31(gen, 0, 2) }, () => prng.oneOf(gen, fields)) }
          : { set: Object.fromEntries(Array.from({ length: prng.int31(gen, 1, 2) }, () => [prng.oneOf(gen, fields), json(gen)])) }
      // Event times from a narrow window just behind the clock: equal stamps across replicas happen.
      if (prng.int31(gen, 0, 2) === 0) op.ts = Math.max(0, now - prng.int31(gen, 0, 40))
      return op
    }
    case 'hll':
      return { add: elements(gen, Array.from({ length: 40 }, (_, i) => `u${i}`)) }
  }
  throw new Error(`no ops for ${type}`)
}

/** The exact amount a counter op adds. */
function amount(type: string, op: unknown): number {
  const o = op as { inc?: number; dec?: number }
  if (type === 'gcounter') return o.inc ?? 1
  return o.inc ?? -(o.dec ?? 0)
}

type Net = SimNetwork<ReplicaNode>

interface Run {
  net: Net
  world: World
  /** Every op applied, acknowledged or not. */
  applied: AppliedOp[]
  acked: AppliedOp[]
  /** What the driver did, step by step (printed on failure). */
  steps: string[]
  counts: Record<string, number>
}

/** Per node options, fixed for a seed (a restarted node gets the same). */
function nodeOptions(setup: prng.PRNG): Map<string, ReplicaNodeOptions> {
  const secret = prng.bool(setup) ? 'sim-secret' : undefined
  // At least one node keeps almost no log: what it compacts, it forgets, and its peers must be
  // caught up by anti-entropy.
  const forgetful = new Set([prng.oneOf(setup, IDS)])
  if (prng.bool(setup)) forgetful.add(prng.oneOf(setup, IDS))
  const out = new Map<string, ReplicaNodeOptions>()
  for (const id of IDS) {
    const small = forgetful.has(id)
    out.set(id, {
      secret,
      storage: small
        ? { maxRetainedLogBytes: prng.oneOf(setup, [0, 100, 400]), compactMinLogBytes: prng.oneOf(setup, [128, 512]) }
        : { compactMinLogBytes: prng.oneOf(setup, [1024, 1024 * 1024]) },
      replication: {
        ackIntervalMs: ACK_MS,
        sweepIntervalMs: SWEEP_MS,
        // Small marks make links lag (backpressure) and batches split.
        highWaterBytes: prng.oneOf(setup, [8 * 1024 * 1024, 8 * 1024 * 1024, 1024, 200]),
        maxMessageBytes: prng.oneOf(setup, [1024 * 1024, 1024 * 1024, 600]),
        // A journal this small gives up at once: its peers fall back to anti-entropy.
        maxTrackedKeys: prng.oneOf(setup, [1_000_000, 1_000_000, 3]),
      },
    })
  }
  return out
}

/** After every step: let the nodes' storage settle, then redial links a node closed. */
async function settleStep(net: Net, world: World, note: (s: string) => void = () => {}): Promise<void> {
  await drain(world)
  while (world.bounces.length > 0) {
    const [a, b] = world.bounces.shift() as [string, string]
    if (net.isUp(a) && net.isUp(b) && net.connected(a, b)) {
      note(`redial ${a}-${b}`)
      net.cut(a, b)
      net.heal(a, b)
    }
    await drain(world)
  }
}

/**
 * Delivers and lets time pass (acks, sweeps) until nothing was sent for three sweep intervals
 * and nothing is in flight. Sweeps re-arm forever, so "no timer left" never comes.
 */
async function untilQuiet(net: Net, world: World, note?: (s: string) => void): Promise<void> {
  let quietSince = net.time
  let lastSends = world.sends
  for (let i = 0; ; i++) {
    if (i > 200_000) throw new Error(`the network did not go quiet (${net.pending()} messages queued)`)
    if (!net.flushRandomMessage()) net.advance(ACK_MS)
    await settleStep(net, world, note)
    if (world.sends !== lastSends) {
      lastSends = world.sends
      quietSince = net.time
    } else if (net.pending() === 0 && net.time - quietSince > 3 * SWEEP_MS) return
  }
}

async function simulate(seed: number, topology: 'mesh' | 'chain', steps = STEPS): Promise<Run> {
  // Setup draws come from a generator of their own so the network's stream does not depend on them.
  const setup = prng.create(seed)
  const options = nodeOptions(setup)
  const world = new World(prng.bool(setup))
  const net: Net = new SimNetwork<ReplicaNode>({
    seed,
    faults: { delay: prng.oneOf(setup, [0, 0.1, 0.3]), maxDelay: prng.int31(setup, 1, 30) },
    topology: topology === 'chain' ? IDS.slice(1).map((id, i) => [IDS[i] as string, id] as const) : 'mesh',
    record: true,
  })
  const run: Run = { net, world, applied: [], acked: [], steps: [], counts: {} }
  const note = (s: string) => {
    run.steps.push(`${net.time}: ${s}`)
    world.mix(`s${s};`)
  }
  const count = (k: string) => {
    run.counts[k] = (run.counts[k] ?? 0) + 1
  }
  const factory = ReplicaNode.factory(world, (id) => options.get(id) as ReplicaNodeOptions)
  for (const id of IDS) net.addNode(id, factory, { skew: EPOCH + prng.int31(setup, -50, 50) })

  const settle = () => settleStep(net, world, note)
  await settle()

  const gen = net.prng
  const live = () => net.liveNodes()
  const define = (node: ReplicaNode) => {
    const name = prng.oneOf(gen, VIEW_NAMES)
    const r = node.define(name, VIEWS[name])
    note(`define ${name} on ${node.id}: ${r}`)
  }
  const applyOp = (node: ReplicaNode) => {
    const views = node.store.views()
    if (views.length === 0) return define(node)
    const view = prng.oneOf(gen, views)
    const key = prng.oneOf(gen, KEYS)
    const op = genOp(gen, view.def.type, EPOCH + net.time)
    const { applied, durable } = node.apply(view.name, key, op)
    run.applied.push(applied)
    durable.then(
      () => run.acked.push(applied),
      () => {},
    )
    note(`op ${node.id}#${applied.seq} ${view.name}/${key} ${JSON.stringify(op)}`)
  }
  /** Several deliveries in one event-loop turn: no group commit runs in between. */
  const burst = (n: number) => {
    for (let i = 0; i < n; i++) net.flushRandomMessage()
  }
  const crash = (node: ReplicaNode) => {
    node.kill()
    net.crash(node.id)
    count('crashes')
  }

  for (let step = 0; step < steps; step++) {
    const r = prng.real53(gen)
    const nodes = live()
    if (r < 0.3) {
      if (nodes.length > 0) applyOp(prng.oneOf(gen, nodes))
    } else if (r < 0.33) {
      if (nodes.length > 0) define(prng.oneOf(gen, nodes))
    } else if (r < 0.38) {
      note(net.randomFault())
    } else if (r < 0.395) {
      if (nodes.length > 1) {
        const node = prng.oneOf(gen, nodes)
        note(`crash ${node.id}`)
        crash(node)
      }
    } else if (r < 0.405) {
      if (nodes.length > 1) {
        // A crash inside the group-commit window: writes applied in memory, maybe some messages
        // handled, then the process dies before the batch reaches the disk.
        const node = prng.oneOf(gen, nodes)
        const k = prng.int31(gen, 1, 3)
        for (let i = 0; i < k; i++) applyOp(node)
        const m = prng.int31(gen, 0, 12)
        note(`burst ${m}, then crash ${node.id} in its commit window`)
        burst(m)
        crash(node)
        count('windowCrashes')
      }
    } else if (r < 0.435) {
      const down = IDS.filter((id) => !net.isUp(id))
      if (down.length > 0) {
        const id = prng.oneOf(gen, down)
        note(`restart ${id}`)
        net.restart(id)
      }
    } else if (r < 0.45) {
      if (nodes.length > 0) {
        const node = prng.oneOf(gen, nodes)
        note(`compact ${node.id}`)
        void node.storage.compact()
      }
    } else if (r < 0.49) {
      const ms = prng.int31(gen, 1, SWEEP_MS)
      note(`advance ${ms}`)
      net.advance(ms)
    } else if (r < 0.52) {
      const m = prng.int31(gen, 2, 6)
      note(`burst ${m}`)
      burst(m)
    } else {
      net.flushRandomMessage()
    }
    await settle()
  }

  // Everything heals; the protocol alone (no forced reconnect) must bring every node level.
  note('final: restart all, heal all')
  net.setFaults({})
  for (const id of IDS) if (!net.isUp(id)) net.restart(id)
  await settle()
  net.heal()
  await settle()
  await untilQuiet(net, world, note)
  note('quiet')
  for (const e of net.trace) {
    // Message hashes are in the world's own trace already, with hello/auth nonces masked.
    const { hash: _hash, ...rest } = e as typeof e & { hash?: number }
    world.mix(JSON.stringify(rest))
  }
  return run
}

const hex = (b: Uint8Array): string => Buffer.from(b).toString('hex')

function catalogBytes(node: ReplicaNode): string {
  const enc = encoding.createEncoder()
  node.store.catalogType.encode(enc, node.store.catalog())
  return hex(encoding.toUint8Array(enc))
}

/** Every key of every view of a node, encoded: what two replicas must agree on byte for byte. */
function snapshot(node: ReplicaNode): Map<string, Map<string, string>> {
  const out = new Map<string, Map<string, string>>()
  for (const view of node.store.views()) {
    const keys = new Map<string, string>()
    for (const [key, state] of view.states.entries()) keys.set(key, hex(encodeState(view.type, state)))
    out.set(`${view.name}:${view.defJson}`, keys)
  }
  return out
}

/** The final state of every replica as one string (for the determinism check). */
function fingerprintRun(run: Run): string {
  return IDS.map((id) => {
    const node = run.net.node(id)
    const views = [...snapshot(node)].map(([v, keys]) => `${v}{${[...keys].map(([k, b]) => `${k}=${b}`).join(',')}}`)
    return `${id}|${catalogBytes(node)}|${JSON.stringify(node.storage.logged.toJSON())}|${views.join(';')}`
  }).join('\n')
}

function check(run: Run): void {
  const { net, world, acked } = run
  const nodes = IDS.map((id) => net.node(id))
  const totals = world.replicationTotals()
  expect(totals.malformed, 'messages a node could not decode or apply').toBe(0)
  expect(totals.linksRefused, 'links a node refused').toBe(0)

  // Catalogs and views.
  const catalog = catalogBytes(nodes[0] as ReplicaNode)
  for (const node of nodes) expect(catalogBytes(node), `catalog of ${node.id}`).toBe(catalog)
  const viewNames = (nodes[0] as ReplicaNode).store.views().map((v) => `${v.name}:${v.defJson}`)
  for (const node of nodes) expect(node.store.views().map((v) => `${v.name}:${v.defJson}`), `views of ${node.id}`).toEqual(viewNames)

  // The oracle: per view and key, the join of every acknowledged delta.
  const oracle = new Map<string, Map<string, { type: AnyCrdtType; state: unknown }>>()
  const sums = new Map<string, number>()
  for (const a of acked) {
    if (!isTypeName(a.type)) throw new Error(`unknown type ${a.type}`)
    const type = crdtTypes[a.type]
    let keys = oracle.get(a.view)
    if (!keys) oracle.set(a.view, (keys = new Map()))
    const slot = keys.get(a.key) ?? { type, state: type.empty() }
    // As in the store: a key exists once a delta changed it (a no-op on a new key leaves none).
    if (type.join(slot.state, decodeState(type, a.delta))) keys.set(a.key, slot)
    if (a.type === 'gcounter' || a.type === 'pncounter') sums.set(`${a.view}/${a.key}`, (sums.get(`${a.view}/${a.key}`) ?? 0) + amount(a.type, a.op))
  }
  for (const view of (nodes[0] as ReplicaNode).store.views()) {
    const want = oracle.get(view.name) ?? new Map()
    const keys = new Set<string>(want.keys())
    for (const node of nodes) for (const [k] of node.store.view(view.name).states.entries()) keys.add(k)
    for (const key of [...keys].sort()) {
      const w = want.get(key)
      const wantBytes = w ? hex(encodeState(w.type, w.state)) : '(absent)'
      const got: Record<string, string> = {}
      for (const node of nodes) {
        const state = node.store.view(view.name).states.get(key)
        got[node.id] = state === undefined ? '(absent)' : hex(encodeState(view.type, state))
      }
      expect(got, `${view.name}/${key} at every replica vs the join of every acknowledged delta`).toEqual(Object.fromEntries(IDS.map((id) => [id, wantBytes])))
      if (view.def.type === 'gcounter' || view.def.type === 'pncounter') {
        for (const node of nodes) expect(node.store.read(view.name, key), `${view.name}/${key} at ${node.id} vs the sum of acknowledged ops`).toBe(sums.get(`${view.name}/${key}`) ?? 0)
      }
    }
  }
  // Every acknowledged op was on a view that exists everywhere.
  for (const name of oracle.keys()) expect(viewNames.some((v) => v.startsWith(`${name}:`)), `view ${name} everywhere`).toBe(true)

  // Every replica's version vector covers every acknowledged delta.
  for (const node of nodes) {
    for (const a of acked) {
      if (!node.storage.logged.covers(a.origin, a.seq)) {
        throw new Error(`${node.id}'s logged vector ${JSON.stringify(node.storage.logged.toJSON())} lacks ${a.origin}#${a.seq}`)
      }
    }
  }
}

function seedsFor(base: number): number[] {
  const env = { ...process.env }
  if ((env.SIM_SEEDS ?? '') === '') env.SIM_SEEDS = String(DEFAULT_SEEDS)
  return testSeeds(base, env)
}

const FILE = import.meta.url

/** Runs every seed; a failure names its seed, the replay command and the tail of what happened. */
async function forEachSeed(testName: string, base: number, fn: (seed: number) => Promise<Run>): Promise<Run[]> {
  const runs: Run[] = []
  for (const seed of seedsFor(base)) {
    let run: Run | null = null
    try {
      run = await fn(seed)
      check(run)
      runs.push(run)
    } catch (err) {
      const tail = run ? `\nlast steps:\n  ${run.steps.slice(-40).join('\n  ')}\nlast log lines:\n  ${run.world.lines.slice(-40).join('\n  ')}\n` : ''
      const steps = process.env.SIM_STEPS ? `SIM_STEPS=${process.env.SIM_STEPS} ` : ''
      const head = `seed ${seed} failed; reproduce with:\n  ${steps}${reproCommand(FILE, testName, seed)}\n`
      if (err instanceof Error) {
        err.message = head + err.message + tail
        throw err
      }
      throw new Error(head + String(err) + tail)
    }
  }
  return runs
}

const timeout = Math.max(60_000, seedsFor(1).length * 15_000)

describe('the replication protocol under the simulator', () => {
  const mesh = 'five real nodes converge on a full mesh'
  it(
    mesh,
    async () => {
      const runs = await forEachSeed(mesh, 5000, (seed) => simulate(seed, 'mesh'))
      if (runs.length >= DEFAULT_SEEDS) {
        // Guard against a vacuous pass: over the seeds, every mechanism actually ran.
        const sum = (f: (r: Run) => number) => runs.reduce((n, r) => n + f(r), 0)
        expect(sum((r) => r.world.replicationTotals().antiEntropyRuns), 'anti-entropy runs').toBeGreaterThan(0)
        expect(sum((r) => r.world.replicationTotals().catchUpStates), 'states shipped by log catch-up').toBeGreaterThan(0)
        expect(sum((r) => r.world.replicationTotals().journalStates), 'states of keys the journal named').toBeGreaterThan(0)
        expect(sum((r) => r.counts.crashes ?? 0), 'crashes').toBeGreaterThan(0)
        expect(sum((r) => r.counts.windowCrashes ?? 0), 'crashes in the commit window').toBeGreaterThan(0)
        expect(sum((r) => r.applied.length - r.acked.length), 'writes lost unacknowledged').toBeGreaterThan(0)
        expect(sum((r) => r.net.stats.droppedByCut), 'messages dropped by cuts').toBeGreaterThan(0)
        expect(sum((r) => r.net.stats.delayed), 'delayed messages').toBeGreaterThan(0)
        expect(sum((r) => r.world.lines.filter((l) => l.includes('is slow')).length), 'links that lagged (backpressure)').toBeGreaterThan(0)
      }
    },
    timeout,
  )

  const chain = 'five real nodes converge on the chain a-b-c-d-e'
  it(
    chain,
    async () => {
      const runs = await forEachSeed(chain, 6000, (seed) => simulate(seed, 'chain'))
      if (runs.length >= DEFAULT_SEEDS) {
        expect(runs.reduce((n, r) => n + r.world.replicationTotals().antiEntropyRuns, 0), 'anti-entropy runs').toBeGreaterThan(0)
      }
    },
    timeout,
  )

  it('a write lost in a crash leaves no trace, even when the node answered anti-entropy meanwhile', async () => {
    const world = new World(false)
    const net: Net = new SimNetwork<ReplicaNode>({ seed: 1 })
    const options: ReplicaNodeOptions = {
      // a forgets its log at once, so b can only be caught up by anti-entropy.
      storage: { maxRetainedLogBytes: 0, compactMinLogBytes: 1e9 },
      replication: { ackIntervalMs: ACK_MS, sweepIntervalMs: SWEEP_MS },
    }
    const factory = ReplicaNode.factory(world, () => options)
    net.addNode('a', factory, { skew: EPOCH })
    net.addNode('b', factory, { skew: EPOCH })
    net.cut('a', 'b')
    await settleStep(net, world)
    const a = net.node('a')
    const b = net.node('b')
    a.define('hits', { type: 'gcounter' })
    for (let i = 0; i < 3; i++) void a.apply('hits', 'k', { inc: 1 }).durable
    await settleStep(net, world)
    await a.storage.compact()
    await settleStep(net, world)
    expect(a.storage.lowWater('a'), 'the log no longer serves a#1..3').toBe(4)

    // b's aeNeed reaches a while a holds a write in memory that its next group commit would
    // make durable: the ranges a ships now include it.
    let lost: Promise<void> | null = null
    a.beforeReceive = (_from, bytes) => {
      if (lost === null && bytes[0] === MSG.aeNeed) lost = a.apply('hits', 'k', { inc: 10 }).durable
    }
    net.heal('a', 'b')
    await settleStep(net, world)
    while (lost === null) {
      expect(net.flushRandomMessage(), 'a message is due').toBe(true)
      if (lost === null) await settleStep(net, world)
    }
    // Same event-loop turn: no group commit has run. Whatever a sent reaches b (a process that
    // dies after writing to a socket does not take back what the kernel sends), then a dies
    // before its batch reaches the disk.
    for (let i = 0; i < 1000 && net.flushRandomMessage(); i++);
    a.kill()
    let acknowledged = false
    ;(lost as Promise<void>).then(
      () => (acknowledged = true),
      () => {},
    )
    await settleStep(net, world)
    net.crash('a')
    expect(acknowledged, 'the write in the commit window was never acknowledged').toBe(false)
    net.restart('a')
    await settleStep(net, world)
    const a2 = net.node('a')
    await a2.apply('hits', 'k', { inc: 1 }).durable
    await untilQuiet(net, world)
    // Acknowledged: 1 + 1 + 1 + 1. The lost +10 must not show anywhere.
    expect({ a: a2.store.read('hits', 'k'), b: b.store.read('hits', 'k') }).toEqual({ a: 4, b: 4 })
  })

  it('one seed replays exactly: same trace, same bytes', async () => {
    const seed = seedsFor(7000)[0] as number
    const one = await simulate(seed, 'mesh', 200)
    const two = await simulate(seed, 'mesh', 200)
    expect(two.steps).toEqual(one.steps)
    expect(two.world.traceHash()).toBe(one.world.traceHash())
    expect(fingerprintRun(two)).toBe(fingerprintRun(one))
    // ...and the trace does depend on the seed (the check has teeth).
    const other = await simulate(seed + 1, 'mesh', 200)
    expect(other.world.traceHash()).not.toBe(one.world.traceHash())
  })
})

/**
 * Scenarios of catch-up where the log no longer reaches back, of restarts, and of relay in a
 * mesh: deterministic (one seed each), each asserting which mechanism ran, not only convergence.
 */
describe('catch-up by key, known peers across restarts, and relay', () => {
  interface Cluster {
    net: Net
    world: World
    node(id: string): ReplicaNode
    totals(): ReturnType<World['replicationTotals']>
  }

  async function cluster(ids: string[], options: (id: string) => ReplicaNodeOptions, seed = 1): Promise<Cluster> {
    const world = new World(false)
    const net: Net = new SimNetwork<ReplicaNode>({ seed })
    const factory = ReplicaNode.factory(world, (id) => ({ ...options(id), replication: { ackIntervalMs: ACK_MS, sweepIntervalMs: SWEEP_MS, ...options(id).replication } }))
    for (const id of ids) net.addNode(id, factory, { skew: EPOCH })
    await settleStep(net, world)
    return { net, world, node: (id) => net.node(id), totals: () => world.replicationTotals() }
  }

  /** Every key of `view` on every node, as values. */
  function values(c: Cluster, ids: string[], view: string): Record<string, Record<string, unknown>> {
    return Object.fromEntries(ids.map((id) => [id, Object.fromEntries([...c.node(id).store.view(view).states.keys()].sort().map((k) => [k, c.node(id).store.read(view, k)]))]))
  }

  async function write(c: Cluster, id: string, view: string, key: string, inc: number): Promise<void> {
    const w = c.node(id).apply(view, key, { inc })
    await settleStep(c.net, c.world)
    await w.durable
  }

  /** Two nodes; a forgets every compacted log record at once. b is cut off, a changes two of ten keys, compacts. */
  async function droppedWhileAway(aOptions: ReplicaNodeOptions = {}): Promise<Cluster> {
    const c = await cluster(['a', 'b'], (id) => (id === 'a' ? { storage: { maxRetainedLogBytes: 0, compactMinLogBytes: 1e9 }, ...aOptions } : {}))
    c.node('a').define('hits', { type: 'gcounter' })
    for (let i = 0; i < 10; i++) await write(c, 'a', 'hits', `k${i}`, 1)
    await untilQuiet(c.net, c.world)
    expect(c.node('b').storage.logged.get('a')).toBe(10)
    c.net.cut('a', 'b')
    await settleStep(c.net, c.world)
    for (const k of ['k1', 'k2', 'k1']) await write(c, 'a', 'hits', k, 5)
    await c.node('a').storage.compact()
    await settleStep(c.net, c.world)
    expect(c.node('a').storage.lowWater('a'), 'the log no longer serves what b lacks').toBeGreaterThan(c.node('b').storage.logged.get('a') + 1)
    return c
  }

  it('a peer away while its deltas left the log catches up by key: the changed states only, no anti-entropy', async () => {
    const c = await droppedWhileAway()
    const before = c.totals()
    c.net.heal('a', 'b')
    await untilQuiet(c.net, c.world)
    const after = c.totals()
    expect(values(c, ['a', 'b'], 'hits').b).toEqual(values(c, ['a', 'b'], 'hits').a)
    expect(c.node('b').storage.logged.get('a')).toBe(13)
    expect(after.antiEntropyRuns - before.antiEntropyRuns, 'anti-entropy runs').toBe(0)
    expect(after.journalStates - before.journalStates, 'states the journal named').toBe(2)
  })

  it('the journal outlives a restart of the node whose log dropped the deltas', async () => {
    const c = await droppedWhileAway()
    c.node('a').kill()
    c.net.crash('a')
    c.net.restart('a')
    await settleStep(c.net, c.world)
    expect(c.node('a').replicator?.journal.size(), 'keys tracked after the restart').toBeGreaterThanOrEqual(2)
    const before = c.totals()
    c.net.heal('a', 'b')
    await untilQuiet(c.net, c.world)
    const after = c.totals()
    expect(values(c, ['a', 'b'], 'hits').b).toEqual(values(c, ['a', 'b'], 'hits').a)
    expect(c.node('b').storage.logged.get('a')).toBe(13)
    expect(after.antiEntropyRuns - before.antiEntropyRuns, 'anti-entropy runs').toBe(0)
    expect(after.journalStates - before.journalStates, 'states the journal named').toBe(2)
  })

  it('past its bound the journal gives up, and the peer catches up by anti-entropy', async () => {
    const c = await droppedWhileAway({ replication: { maxTrackedKeys: 1 } })
    const before = c.totals()
    c.net.heal('a', 'b')
    await untilQuiet(c.net, c.world)
    const after = c.totals()
    expect(values(c, ['a', 'b'], 'hits').b).toEqual(values(c, ['a', 'b'], 'hits').a)
    expect(c.node('b').storage.logged.get('a')).toBe(13)
    expect(after.antiEntropyRuns - before.antiEntropyRuns, 'anti-entropy runs').toBe(1)
  })

  it('a keyed catch-up never ships a write that is not durable yet (a crash in the commit window leaves no trace)', async () => {
    const c = await droppedWhileAway()
    const a = c.node('a')
    // b's vector reaches a (the catch-up starts) while a holds a write in memory that its next
    // group commit would make durable: the states a reads include it.
    let lost: Promise<void> | null = null
    a.beforeReceive = (_from, bytes) => {
      if (lost === null && bytes[0] === MSG.vv) lost = a.apply('hits', 'k1', { inc: 100 }).durable
    }
    c.net.heal('a', 'b')
    await settleStep(c.net, c.world)
    while (lost === null) {
      expect(c.net.flushRandomMessage(), 'a message is due').toBe(true)
      if (lost === null) await settleStep(c.net, c.world)
    }
    // Microtasks only (the simulated disk answers in microtasks; a group commit needs a
    // macrotask): the catch-up reads the log and would send its states now, were it not for
    // the wait until they are durable. Whatever a sent reaches b, then a dies.
    for (let i = 0; i < 1000; i++) await Promise.resolve()
    for (let i = 0; i < 1000 && c.net.flushRandomMessage(); i++);
    a.kill()
    let acknowledged = false
    ;(lost as Promise<void>).then(
      () => (acknowledged = true),
      () => {},
    )
    await settleStep(c.net, c.world)
    c.net.crash('a')
    expect(acknowledged).toBe(false)
    c.net.restart('a')
    await settleStep(c.net, c.world)
    await untilQuiet(c.net, c.world)
    // k1: 1 + 5 + 5; the lost +100 nowhere.
    expect({ a: c.node('a').store.read('hits', 'k1'), b: c.node('b').store.read('hits', 'k1') }).toEqual({ a: 11, b: 11 })
    expect(values(c, ['a', 'b'], 'hits').b).toEqual(values(c, ['a', 'b'], 'hits').a)
  })

  it('a restarted node still keeps the log records a known peer lacks: that peer catches up from the log', async () => {
    // Compaction after every few records; the retention bound is far away.
    const c = await cluster(['a', 'b'], (id) => (id === 'a' ? { storage: { compactMinLogBytes: 64 } } : {}))
    c.node('a').define('hits', { type: 'gcounter' })
    for (let i = 0; i < 5; i++) await write(c, 'a', 'hits', `k${i}`, 1)
    await untilQuiet(c.net, c.world)
    c.net.cut('a', 'b')
    await settleStep(c.net, c.world)
    for (let i = 0; i < 5; i++) await write(c, 'a', 'hits', `k${i}`, 2)
    c.node('a').kill()
    c.net.crash('a')
    c.net.restart('a')
    await settleStep(c.net, c.world)
    // After the restart, without b ever reconnecting: more writes, compactions.
    for (let i = 0; i < 5; i++) await write(c, 'a', 'hits', `k${i}`, 3)
    await c.node('a').storage.compact()
    await settleStep(c.net, c.world)
    expect(c.node('a').replicator?.peers().map((p) => p.replica), 'b is known after the restart').toEqual(['b'])
    expect(c.node('a').storage.lowWater('a'), 'the log still serves what b lacks').toBeLessThanOrEqual(c.node('b').storage.logged.get('a') + 1)
    const before = c.totals()
    c.net.heal('a', 'b')
    await untilQuiet(c.net, c.world)
    const after = c.totals()
    expect(values(c, ['a', 'b'], 'hits').b).toEqual(values(c, ['a', 'b'], 'hits').a)
    expect(c.node('b').storage.logged.get('a')).toBe(15)
    expect(after.antiEntropyRuns - before.antiEntropyRuns, 'anti-entropy runs').toBe(0)
    expect(after.journalStates - before.journalStates, 'states the journal named').toBe(0)
    expect(after.catchUpStates - before.catchUpStates, 'states from the log').toBe(5)
  })

  it('a full mesh relays nothing; a node that loses its link with the origin gets its deltas through a peer', async () => {
    const ids = ['a', 'b', 'c']
    const c = await cluster(ids, () => ({}))
    c.node('a').define('hits', { type: 'gcounter' })
    await untilQuiet(c.net, c.world)
    for (let i = 0; i < 20; i++) {
      const origin = ids[i % 3] as string
      await write(c, origin, 'hits', `k${i % 4}`, 1)
      // Deliveries interleave with the writes, as on a live network.
      for (let j = 0; j < 3; j++) c.net.flushRandomMessage()
      await settleStep(c.net, c.world)
    }
    await untilQuiet(c.net, c.world)
    let t = c.totals()
    expect(t.duplicatesIn, 'deltas a node received twice').toBe(0)
    expect(t.deltasIn, 'each write reached the two other nodes once').toBe(40)
    c.net.cut('a', 'c')
    await settleStep(c.net, c.world)
    for (let i = 0; i < 6; i++) await write(c, 'a', 'hits', `k${i % 4}`, 1)
    await untilQuiet(c.net, c.world)
    t = c.totals()
    const v = values(c, ids, 'hits')
    expect(v.c).toEqual(v.a)
    expect(v.b).toEqual(v.a)
    for (const id of ids) expect(c.node(id).storage.logged.get('a'), `${id} holds all of a's writes`).toBe(13)
    expect(t.antiEntropyRuns).toBe(0)
  })
})
