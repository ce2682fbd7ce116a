/**
 * Convergence of every CRDT type under the simulated network, through the reference replica
 * protocol (./crdtReplica.ts): random ops on random replicas while links duplicate, delay,
 * reorder and lose messages, partitions come and go and nodes crash and reload; then one clean
 * anti-entropy round, and every replica must hold the very same bytes, which must also equal a
 * fresh replica rebuilt from every delta ever produced (the check yjs's `compare` makes).
 *
 * `SEED=n` replays one seed; `SIM_SEEDS=n` raises the number of seeds for a soak run.
 */
import { describe, expect, it } from 'vitest'
import * as prng from 'lib0/prng'
import type { AnyCrdtType } from '../../crdts/types.js'
import { decodeState, encodeState } from '../../crdts/codec.js'
import { gcounter } from '../../crdts/gcounter.js'
import { pncounter } from '../../crdts/pncounter.js'
import { orset } from '../../crdts/orset.js'
import { lwwmap } from '../../crdts/lwwmap.js'
import { hll, hllWithPrecision } from '../../crdts/hll.js'
import { SimNetwork, type SimStats } from './network.js'
import { CrdtReplica } from './crdtReplica.js'
import { forEachSeed, testSeeds } from './seeds.js'
import type { SimFaults } from './types.js'

type Replica = CrdtReplica<unknown, unknown, unknown>

interface TypeCase {
  type: AnyCrdtType
  /** The test's name for it, when the type name alone is ambiguous. */
  label?: string
  /** A random op as JSON, from small alphabets so that replicas conflict. */
  genOp(gen: prng.PRNG): unknown
  /** For counters: the exact amount an op adds to the value. */
  amount?(op: unknown): number
}

const KEYS = ['k0', 'k1', 'k2']
/** Node clocks start here (plus a per-node skew), so explicit event times interleave with HLC stamps. */
const EPOCH = 1_000_000

function elements(gen: prng.PRNG, alphabet: readonly string[]): string | string[] {
  if (prng.int31(gen, 0, 4) > 0) return prng.oneOf(gen, [...alphabet])
  return Array.from({ length: prng.int31(gen, 0, 3) }, () => prng.oneOf(gen, [...alphabet]))
}

const HLL_ELEMENTS = Array.from({ length: 60 }, (_, i) => `e${i}`)

const json = (gen: prng.PRNG): unknown =>
  prng.oneOf(gen, [() => prng.int31(gen, -3, 3), () => null, () => prng.word(gen, 0, 3), () => ({ n: prng.int31(gen, 0, 2) }), () => [true]])()

const cases: TypeCase[] = [
  {
    type: gcounter,
    genOp: (gen) => (prng.int31(gen, 0, 3) === 0 ? {} : { inc: prng.int31(gen, 0, 5) }),
    amount: (op) => (op as { inc?: number }).inc ?? 1,
  },
  {
    type: pncounter,
    genOp: (gen) => (prng.bool(gen) ? { inc: prng.int31(gen, -5, 5) } : { dec: prng.int31(gen, 0, 5) }),
    amount: (op) => {
      const o = op as { inc?: number; dec?: number }
      return o.inc ?? -(o.dec ?? 0)
    },
  },
  {
    type: orset,
    genOp: (gen) => ({ [prng.int31(gen, 0, 2) === 0 ? 'remove' : 'add']: elements(gen, ['a', 'b', 'c', 'd']) }),
  },
  {
    type: lwwmap,
    genOp: (gen) => {
      const fields = ['x', 'y', 'z']
      const op: Record<string, unknown> =
        prng.int31(gen, 0, 3) === 0
          ? { delete: Array.from({ length: prng.int31(gen, 0, 2) }, () => prng.oneOf(gen, fields)) }
          : { set: Object.fromEntries(Array.from({ length: prng.int31(gen, 1, 2) }, () => [prng.oneOf(gen, fields), json(gen)])) }
      // Event time from a narrow window: equal timestamps across replicas are the point.
      if (prng.int31(gen, 0, 2) === 0) op.ts = EPOCH + prng.int31(gen, 0, 40)
      return op
    },
  },
  {
    type: hll,
    genOp: (gen) => ({ add: elements(gen, HLL_ELEMENTS) }),
  },
  {
    // 16 registers: sketches turn dense within a few ops, so sparse/dense joins are exercised.
    type: hllWithPrecision(4),
    label: 'hll p4',
    genOp: (gen) => ({ add: elements(gen, HLL_ELEMENTS) }),
  },
]

function randomFaults(gen: prng.PRNG): SimFaults {
  return {
    duplicate: prng.oneOf(gen, [0, 0.05, 0.2]),
    reorder: prng.oneOf(gen, [0, 0, 0.3]),
    delay: prng.oneOf(gen, [0, 0.1, 0.3]),
    maxDelay: prng.int31(gen, 1, 30),
    drop: prng.oneOf(gen, [0, 0, 0.02]),
  }
}

interface Run {
  net: SimNetwork<Replica>
  /** Every delta any replica originated, encoded, in the order produced. */
  log: Array<{ key: string; bytes: Uint8Array }>
  /** For counters: the exact value each key must end with. */
  expected: Map<string, number>
}

/**
 * Random ops, faults and deliveries for `steps` steps, then a clean anti-entropy round: every
 * crashed node restarts, every cut heals, every link is taken down and up again (so each pair
 * exchanges full states) and the network is flushed until quiet.
 */
function simulate(c: TypeCase, seed: number, topology: 'mesh' | 'chain', steps: number): Run {
  const chain = topology === 'chain'
  // The node count and the faults come from the seed too, from a generator of their own so that
  // the network's stream is not shifted by how many draws setting up took.
  const setup = prng.create(seed)
  const n = chain ? 4 : prng.int31(setup, 3, 7)
  const ids = Array.from({ length: n }, (_, i) => String.fromCharCode(97 + i))
  const net = new SimNetwork<Replica>({
    seed,
    faults: randomFaults(setup),
    topology: chain ? ids.slice(1).map((id, i) => [ids[i] as string, id] as const) : 'mesh',
    crashes: !chain,
  })
  const log: Run['log'] = []
  const expected = new Map<string, number>()
  const factory = CrdtReplica.factory(c.type, {
    relay: chain,
    persist: true,
    onDelta: (_replica, key, bytes) => log.push({ key, bytes }),
  })
  for (const id of ids) net.addNode(id, factory, { skew: EPOCH + prng.int31(setup, -50, 50) })

  const gen = net.prng
  for (let step = 0; step < steps; step++) {
    const r = prng.real53(gen)
    if (r < 0.35) {
      const node = prng.oneOf(gen, net.liveNodes())
      const key = prng.oneOf(gen, KEYS)
      const op = c.genOp(gen)
      node.apply(key, op)
      if (c.amount) expected.set(key, (expected.get(key) ?? 0) + c.amount(op))
    } else if (r < 0.4) {
      net.randomFault()
    } else {
      net.flushRandomMessage()
    }
  }

  net.setFaults({})
  for (const id of ids) if (!net.isUp(id)) net.restart(id)
  net.reconnectAll()
  net.settle()
  return { net, log, expected }
}

const hex = (b: Uint8Array): string => Buffer.from(b).toString('hex')

function checkConverged(c: TypeCase, { net, log, expected }: Run): void {
  const type = c.type
  // The oracle: a fresh replica that has joined every delta ever produced.
  const rebuilt = new Map<string, unknown>()
  for (const { key, bytes } of log) {
    const s = rebuilt.get(key) ?? type.empty()
    type.join(s, decodeState(type, bytes))
    rebuilt.set(key, s)
  }
  const keys = [...rebuilt.keys()].sort()
  for (const node of net.liveNodes()) {
    expect(node.keys(), `keys of replica ${node.id}`).toEqual(keys)
  }
  for (const key of keys) {
    const want = encodeState(type, rebuilt.get(key))
    const value = type.value(rebuilt.get(key))
    for (const node of net.liveNodes()) {
      expect(hex(node.encodeKey(key)), `bytes of ${key} at replica ${node.id} vs the rebuilt replica`).toBe(hex(want))
      expect(node.value(key), `value of ${key} at replica ${node.id}`).toEqual(value)
    }
    if (c.amount) expect(value, `value of ${key} vs the sum of its ops`).toBe(expected.get(key) ?? 0)
  }
}

function addStats(into: SimStats, s: SimStats): void {
  for (const k of Object.keys(into) as Array<keyof SimStats>) into[k] += s[k]
}

const STEPS = 300
const FILE = import.meta.url

describe('CRDT convergence over the simulated network', () => {
  for (const c of cases) {
    const name = c.label ?? c.type.name
    const mesh = `${name} converges`
    it(mesh, () => {
      const total: SimStats = { delivered: 0, duplicated: 0, droppedByCut: 0, lost: 0, delayed: 0, reordered: 0, crashes: 0 }
      forEachSeed(FILE, mesh, 1000, (seed) => {
        const run = simulate(c, seed, 'mesh', STEPS)
        checkConverged(c, run)
        addStats(total, run.net.stats)
      })
      // Guard against a vacuous pass: over the default seeds every fault actually happened.
      if (testSeeds(1000).length >= 10) {
        for (const k of Object.keys(total) as Array<keyof SimStats>) expect(total[k], `total ${k} over all seeds`).toBeGreaterThan(0)
      }
    })

    const chain = `${name} converges on the chain a-b-c-d with relay`
    it(chain, () => {
      forEachSeed(FILE, chain, 2000, (seed) => checkConverged(c, simulate(c, seed, 'chain', STEPS)))
    })
  }

  it('without relay the chain does not converge (the relay test has teeth)', () => {
    const net = new SimNetwork<Replica>({ seed: 7, topology: [['a', 'b'], ['b', 'c'], ['c', 'd']] })
    const factory = CrdtReplica.factory(gcounter as AnyCrdtType)
    for (const id of ['a', 'b', 'c', 'd']) net.addNode(id, factory)
    net.node('a').apply('k', { inc: 3 })
    net.reconnectAll()
    net.settle()
    expect(net.node('b').value('k')).toBe(3)
    expect(net.node('d').value('k')).toBe(0)
  })
})
