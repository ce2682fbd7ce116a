/** Unit tests of the simulator itself: if it lies, every test built on it lies too. */
import { describe, expect, it } from 'vitest'
import * as prng from 'lib0/prng'
import { SimNetwork } from './network.js'
import type { SimEndpoint, SimFaults, SimPeer, SimStorage } from './types.js'
import { forEachSeed, reproCommand, testSeeds } from './seeds.js'

/** Records everything that happens to it; messages are a sequence number (one byte per unit). */
class Probe implements SimPeer {
  readonly id: string
  readonly events: string[] = []
  readonly received: Array<{ from: string; seq: number }> = []
  constructor(
    readonly endpoint: SimEndpoint,
    readonly storage: SimStorage,
  ) {
    this.id = endpoint.id
  }
  onConnect(peer: string): void {
    this.events.push(`connect ${peer}`)
  }
  onDisconnect(peer: string): void {
    this.events.push(`disconnect ${peer}`)
  }
  onMessage(from: string, bytes: Uint8Array): void {
    const seq = decodeSeq(bytes)
    this.events.push(`message ${from} ${seq}`)
    this.received.push({ from, seq })
  }
  send(to: string, seq: number): void {
    this.endpoint.send(to, encodeSeq(seq))
  }
}

const encodeSeq = (n: number): Uint8Array => new Uint8Array([n & 0xff, (n >> 8) & 0xff, (n >> 16) & 0xff])
const decodeSeq = (b: Uint8Array): number => (b[0] as number) | ((b[1] as number) << 8) | ((b[2] as number) << 16)

const probe = (endpoint: SimEndpoint, storage: SimStorage): Probe => new Probe(endpoint, storage)

function network(seed: number, ids: string[], faults: SimFaults = {}, record = false): SimNetwork<Probe> {
  const net = new SimNetwork<Probe>({ seed, faults, record })
  for (const id of ids) net.addNode(id, probe)
  return net
}

/** A busy random run: sends, deliveries, cuts, heals, partitions. */
function randomRun(seed: number): SimNetwork<Probe> {
  const net = network(seed, ['a', 'b', 'c', 'd'], { duplicate: 0.1, delay: 0.2, reorder: 0.1, drop: 0.05 }, true)
  const gen = net.prng
  let seq = 0
  for (let i = 0; i < 400; i++) {
    const r = prng.real53(gen)
    if (r < 0.4) {
      const from = prng.oneOf(gen, net.liveNodes())
      const to = prng.oneOf(gen, net.ids().filter((id) => id !== from.id))
      from.send(to, seq++)
    } else if (r < 0.45) net.randomFault()
    else net.flushRandomMessage()
  }
  net.heal()
  net.settle()
  return net
}

const FILE = import.meta.url

describe('SimNetwork', () => {
  it('the same seed gives the same trace; another seed another', () => {
    const one = randomRun(42)
    const two = randomRun(42)
    expect(one.trace.length).toBeGreaterThan(100)
    expect(JSON.stringify(two.trace)).toBe(JSON.stringify(one.trace))
    expect(two.stats).toEqual(one.stats)
    expect(JSON.stringify(randomRun(43).trace)).not.toBe(JSON.stringify(one.trace))
  })

  const fifo = 'each link is FIFO when reordering is off, under delays and duplicates'
  it(fifo, () => {
    forEachSeed(FILE, fifo, 100, (seed) => {
      const net = network(seed, ['a', 'b', 'c'], { delay: 0.3, maxDelay: 10, duplicate: 0.2 })
      const gen = net.prng
      const next = new Map<string, number>()
      for (let i = 0; i < 300; i++) {
        if (prng.bool(gen)) {
          const from = prng.oneOf(gen, net.liveNodes())
          const to = prng.oneOf(gen, net.ids().filter((id) => id !== from.id))
          const k = `${from.id}>${to}`
          const seq = next.get(k) ?? 0
          next.set(k, seq + 1)
          from.send(to, seq)
        } else net.flushRandomMessage()
      }
      net.settle()
      for (const node of net.liveNodes()) {
        for (const from of net.ids()) {
          if (from === node.id) continue
          const seqs = node.received.filter((m) => m.from === from).map((m) => m.seq)
          // In order, every message at least once, duplicates only right after their original.
          const distinct = seqs.filter((s, i) => i === 0 || s !== seqs[i - 1])
          expect(distinct, `${from} -> ${node.id}`).toEqual(Array.from({ length: next.get(`${from}>${node.id}`) ?? 0 }, (_, i) => i))
        }
      }
      expect(net.stats.delivered).toBeGreaterThan(0)
    })
  })

  it('faults really happen: duplicates, delays, reordering within a link, losses', () => {
    const net = network(5, ['a', 'b'], { duplicate: 0.2, delay: 0.3, reorder: 0.5, drop: 0.1 })
    for (let i = 0; i < 200; i++) net.node('a').send('b', i)
    net.settle()
    const seqs = net.node('b').received.map((m) => m.seq)
    expect(seqs.some((s, i) => i > 0 && s < (seqs[i - 1] as number))).toBe(true)
    expect(seqs.length).toBe(200 - net.stats.lost + net.stats.duplicated)
    expect(net.stats.duplicated).toBeGreaterThan(0)
    expect(net.stats.delayed).toBeGreaterThan(0)
    expect(net.stats.reordered).toBeGreaterThan(0)
    expect(net.stats.lost).toBeGreaterThan(0)
  })

  it('a cut drops the messages in flight both ways, and sends while down', () => {
    const net = network(1, ['a', 'b', 'c'])
    const [a, b] = [net.node('a'), net.node('b')]
    a.send('b', 1)
    a.send('b', 2)
    b.send('a', 3)
    a.send('c', 4)
    net.cut('a', 'b')
    a.send('b', 5)
    expect(net.stats.droppedByCut).toBe(4)
    net.heal()
    net.settle()
    expect(b.received).toEqual([])
    expect(a.received).toEqual([])
    expect(net.node('c').received).toEqual([{ from: 'a', seq: 4 }])
  })

  it('cut and heal tell both ends, and onConnect comes before any message of the new connection', () => {
    const net = network(3, ['a', 'b'])
    const [a, b] = [net.node('a'), net.node('b')]
    expect(a.events).toEqual(['connect b'])
    expect(b.events).toEqual(['connect a'])
    net.cut('a', 'b')
    expect(net.connected('a', 'b')).toBe(false)
    net.heal('a', 'b')
    a.send('b', 9)
    net.settle()
    expect(a.events).toEqual(['connect b', 'disconnect b', 'connect b'])
    expect(b.events).toEqual(['connect a', 'disconnect a', 'connect a', 'message a 9'])
  })

  it('partition cuts across groups, heals within them, isolates the unnamed', () => {
    const net = network(4, ['a', 'b', 'c', 'd', 'e'])
    net.partition([['a', 'b'], ['c', 'd']])
    expect(net.connected('a', 'b')).toBe(true)
    expect(net.connected('c', 'd')).toBe(true)
    expect(net.connected('a', 'c')).toBe(false)
    expect(net.connected('e', 'a')).toBe(false)
    net.partition([['a', 'c', 'd', 'e'], ['b']])
    expect(net.connected('a', 'b')).toBe(false)
    expect(net.connected('a', 'c')).toBe(true)
    expect(net.connected('e', 'd')).toBe(true)
    net.heal()
    for (const x of net.ids()) for (const y of net.ids()) if (x !== y) expect(net.connected(x, y)).toBe(true)
  })

  it('a topology limits which pairs ever connect', () => {
    const net = new SimNetwork<Probe>({ seed: 2, topology: [['a', 'b'], ['b', 'c']] })
    for (const id of ['a', 'b', 'c']) net.addNode(id, probe)
    expect(net.connected('a', 'b')).toBe(true)
    expect(net.connected('a', 'c')).toBe(false)
    net.node('a').send('c', 1)
    net.heal()
    net.settle()
    expect(net.node('c').received).toEqual([])
  })

  it('a crash drops links and timers but keeps storage; restart rebuilds from storage and reconnects', () => {
    const net = network(6, ['a', 'b'])
    const old = net.node('a')
    old.storage.set('x', new Uint8Array([7]))
    let fired = false
    old.endpoint.setTimer(5, () => {
      fired = true
    })
    old.send('b', 1)
    net.crash('a')
    expect(net.isUp('a')).toBe(false)
    expect(net.node('b').events).toEqual(['connect a', 'disconnect a'])
    old.send('b', 2) // a zombie's sends go nowhere
    net.advance(10)
    expect(fired).toBe(false)
    const fresh = net.restart('a')
    expect(fresh).not.toBe(old)
    expect(fresh.storage.get('x')).toEqual(new Uint8Array([7]))
    expect(fresh.events).toEqual(['connect b'])
    net.settle()
    expect(net.node('b').received).toEqual([])
    expect(net.node('b').events).toEqual(['connect a', 'disconnect a', 'connect a'])
  })

  it('timers fire in due order with simulated time and the node clock carries its skew', () => {
    const net = new SimNetwork<Probe>({ seed: 8, skew: { a: 500 } })
    const a = net.addNode('a', probe)
    const order: string[] = []
    a.endpoint.setTimer(30, () => order.push(`30 at ${a.endpoint.now()}`))
    a.endpoint.setTimer(10, () => order.push(`10 at ${a.endpoint.now()}`))
    const cancel = a.endpoint.setTimer(20, () => order.push('cancelled'))
    cancel()
    net.settle()
    expect(order).toEqual(['10 at 510', '30 at 530'])
  })

  it('settle refuses to spin forever on a protocol that never goes quiet', () => {
    const net = new SimNetwork<SimPeer>({ seed: 9 })
    const pingPong = (endpoint: SimEndpoint): SimPeer => ({
      id: endpoint.id,
      onConnect: (peer) => endpoint.send(peer, new Uint8Array([0])),
      onDisconnect: () => {},
      onMessage: (from, bytes) => endpoint.send(from, bytes),
    })
    net.addNode('a', pingPong)
    net.addNode('b', pingPong)
    expect(() => net.settle(1000)).toThrow(/did not go quiet/)
  })

  it('refuses a seed the generator cannot use', () => {
    expect(() => new SimNetwork({ seed: 0 })).toThrow(RangeError)
    expect(() => new SimNetwork({ seed: 2 ** 32 })).toThrow(RangeError)
  })
})

describe('seeds', () => {
  it('SEED picks one seed, SIM_SEEDS the count', () => {
    expect(testSeeds(10, { SEED: '77' })).toEqual([77])
    expect(testSeeds(10, { SIM_SEEDS: '3' })).toEqual([10, 11, 12])
    expect(testSeeds(10, {}).length).toBe(30)
    expect(() => testSeeds(10, { SEED: 'abc' })).toThrow(/SEED/)
  })

  it('a failure names the seed and the command that replays it', () => {
    let message = ''
    try {
      forEachSeed(FILE, 'orset converges', 5, (seed) => {
        if (seed >= 5) expect(seed).toBe(-1)
      })
    } catch (err) {
      message = (err as Error).message
    }
    const seed = testSeeds(5)[0] as number
    expect(message).toContain(`SEED=${seed} npx vitest run test/sim/network.test.ts -t "orset converges$"`)
    expect(reproCommand(FILE, 'a (b)', 1)).toBe('SEED=1 npx vitest run test/sim/network.test.ts -t "a \\(b\\)$"')
  })
})
