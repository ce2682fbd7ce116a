/**
 * The `replication` suite (issue 4): what replicating costs. Sustained writes/s of three nodes in
 * a mesh against one node, propagation delay from acknowledgement on one node to visibility on
 * the others, and the bytes and time a catch-up after a partition takes, from the log and by
 * anti-entropy.
 *
 * Every contender of a figure runs in the same process run, interleaved repetition by repetition
 * in rotating order after a discarded warm-up round (see report.ts). Loopback only; every data
 * dir is removed and every child killed, also when the suite crashes.
 *
 * Modelling choices (documented because they decide the numbers):
 * - Nodes are real `node dist/src/cli/main.js start` children, each with the gcounter view `pv`
 *   from a --views file. Node i dials nodes j > i (a full mesh, one link per pair); the mesh is up
 *   once every node's GET /peers shows the other two connected.
 * - One 1-node and one 3-node cluster serve every round of figures 1 and 2 (each round adds
 *   writes to the same nodes): child start-up would otherwise be most of a smoke run's time.
 * - Writes are {"inc": 1} over `key:<i>`, keys drawn uniformly with a seeded PRNG; a closed loop of
 *   16 keep-alive HTTP clients for a fixed time, write i going to node i mod N (round robin).
 * - replicated_writes_per_s counts a write once it is acknowledged by its node AND durable on the
 *   other two: the clock stops when, by every node's /metrics, its own acknowledged writes plus
 *   the remote deltas it applied equal the writes of all nodes and nothing waits for disk. Acks
 *   alone would hide a backlog of replication; the ack-only rate is printed as progress.
 * - The machine's cores (2 on the CI boxes) are shared by all the nodes and the client: the
 *   3-node figure pays for three nodes' CPU on the same cores, so its ratio is the cost of
 *   replication on one machine, not of a cluster of three machines.
 * - Propagation: a background open-loop load (round robin over the nodes, fixed schedule) at
 *   half the measured 3-node maximum (replicated_writes_per_s), and sequential probes: an inc to a
 *   fresh key on node i mod 3; once acknowledged, the other two nodes are polled back to back with
 *   GET until the key shows; delay = the end of the first GET that shows it - the end of the
 *   acknowledgement (an upper bound, by at most one GET round trip).
 * - Catch-up: two nodes in this process (A dials B; B has an HTTP server for /peer), N keys
 *   written on A and synced to B; A cuts the link (the operator's disconnect), increments 1% of the
 *   keys, compacts, and reconnects. "log": A keeps the log records B has not acknowledged (the
 *   default bound); "dropped": A runs with maxRetainedLogBytes 0, so the compaction drops them and
 *   the catch-up ships the states of the keys A's journal names; "anti-entropy": the same with
 *   A's journal off (maxTrackedKeys 0, as when it gave up), so the catch-up must use digests. Time
 *   runs from connect() until B holds every changed value; bytes are catch-up (or anti-entropy)
 *   bytes sent by both nodes, over the encoded size of the changed keys' states plus their key
 *   bytes.
 */
import http from 'node:http'
import { spawn, type ChildProcess } from 'node:child_process'
import { rmSync } from 'node:fs'
import { mkdtemp, rm, writeFile } from 'node:fs/promises'
import os from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { encodeState } from '../crdts/codec.js'
import { openNode, type SpeedNode, type Write } from '../src/node.js'
import { startServer, type SpeedServer } from '../src/server/http.js'
import { MSG } from '../src/replication/messages.js'
import type { Link } from '../src/replication/replicator.js'
import { gc, median, now, type Suite, type SuiteOptions } from './report.js'

const BENCH = 'replication'
const CLI = fileURLToPath(new URL('../src/cli/main.js', import.meta.url))
const VIEW = 'pv'
const VIEWS = { [VIEW]: { type: 'gcounter' } }
const INC = { inc: 1 }
const INC_BODY = JSON.stringify(INC)
const NODE_IDS = ['A', 'B', 'C']

interface Sizes {
  runs: number
  /** Figure 1: closed-loop writes for this long per run, over this many keys, by this many clients. */
  writeMs: number
  keys: number
  clients: number
  /** Figure 2: probes per run, background load as a fraction of the 3-node maximum. */
  probes: number
  loadFraction: number
  loadSockets: number
  loadWarmMs: number
  /** Figure 3: keys synced before the partition, and the fraction changed during it. */
  catchUpKeys: number
  changedFraction: number
}

function sizes(quick: boolean): Sizes {
  return quick
    ? {
        runs: 3,
        writeMs: 1000,
        keys: 10_000,
        clients: 16,
        probes: 30,
        loadFraction: 0.5,
        loadSockets: 256,
        loadWarmMs: 200,
        catchUpKeys: 10_000,
        changedFraction: 0.01,
      }
    : {
        runs: 3,
        writeMs: 5000,
        keys: 10_000,
        clients: 16,
        probes: 200,
        loadFraction: 0.5,
        loadSockets: 512,
        loadWarmMs: 500,
        catchUpKeys: 100_000,
        changedFraction: 0.01,
      }
}

// ---------------------------------------------------------------------------------------------
// Plumbing: PRNG, temp dirs, children, bounded concurrency, HTTP

/** mulberry32: a tiny seeded PRNG, so every run draws the same sequences. */
function prng(seed: number): () => number {
  let a = seed >>> 0
  return () => {
    a = (a + 0x6d2b79f5) >>> 0
    let t = a
    t = Math.imul(t ^ (t >>> 15), t | 1)
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61)
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296
  }
}

const keyOf = (i: number): string => `key:${i}`
const keyPath = (key: string): string => `/views/${VIEW}/${encodeURIComponent(key)}`
const perSecond = (ops: number, ms: number): number => (ops * 1000) / ms
const label = (n: number): string => (n >= 1e6 && n % 1e6 === 0 ? `${n / 1e6}M` : n >= 1000 && n % 1000 === 0 ? `${n / 1000}k` : String(n))
const quiet = (): void => {}
const delay = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms))
const CORES = `${os.availableParallelism()} cores shared by every node and the client`

function uniformPaths(keys: number, n: number, seed: number): string[] {
  const rng = prng(seed)
  const out = new Array<string>(n)
  for (let i = 0; i < n; i++) out[i] = keyPath(keyOf(Math.floor(rng() * keys)))
  return out
}

/** Everything this suite creates, so a crash (process.exit in bench/main.ts) leaves nothing behind. */
const liveDirs = new Set<string>()
const liveChildren = new Set<ChildProcess>()
let exitHookInstalled = false
function installExitHook(): void {
  if (exitHookInstalled) return
  exitHookInstalled = true
  process.once('exit', () => {
    for (const c of liveChildren) c.kill('SIGKILL')
    for (const d of liveDirs) rmSync(d, { recursive: true, force: true })
  })
}

async function tempDir(): Promise<string> {
  const d = await mkdtemp(join(os.tmpdir(), 'sl-bench-repl-'))
  liveDirs.add(d)
  return d
}

async function removeDir(d: string): Promise<void> {
  await rm(d, { recursive: true, force: true })
  liveDirs.delete(d)
}

/** The environment a child runs in: as a user runs it, not under a test runner's loaders. */
function childEnv(): NodeJS.ProcessEnv {
  const env = { ...process.env }
  delete env.NODE_OPTIONS
  return env
}

/** Polls `pred` every `everyMs` until it holds; rejects with `what` after `timeoutMs`. */
async function until(what: string, pred: () => boolean | Promise<boolean>, timeoutMs = 60_000, everyMs = 5): Promise<void> {
  const t0 = now()
  while (!(await pred())) {
    if (now() - t0 > timeoutMs) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`)
    await delay(everyMs)
  }
}

function keepAliveAgent(sockets: number): http.Agent {
  return new http.Agent({ keepAlive: true, maxSockets: sockets, maxFreeSockets: sockets })
}

/** One request; resolves with the body of a 2xx answer, rejects on anything else. */
function request(agent: http.Agent, port: number, method: 'GET' | 'POST', path: string, body?: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const headers = body === undefined ? undefined : { 'content-type': 'application/json', 'content-length': String(Buffer.byteLength(body)) }
    const req = http.request({ agent, host: '127.0.0.1', port, method, path, headers }, (res) => {
      let text = ''
      res.setEncoding('utf8')
      res.on('data', (s: string) => (text += s))
      res.on('end', () => {
        const status = res.statusCode ?? 0
        if (status >= 200 && status < 300) resolve(text)
        else reject(new Error(`${method} ${path} on port ${port}: ${status} ${text}`))
      })
      res.on('error', reject)
    })
    req.on('error', reject)
    req.end(body)
  })
}

/** The p-th percentile (0..100) by nearest rank. */
function percentile(xs: readonly number[], p: number): number {
  if (xs.length === 0) throw new Error('percentile of nothing')
  const s = Float64Array.from(xs).sort()
  return s[Math.min(s.length - 1, Math.max(0, Math.ceil((p / 100) * s.length) - 1))] as number
}

/** Runs `fn` over the contenders: one discarded warm-up round, then `runs` rounds, order rotating. */
async function sideBySide(names: readonly string[], runs: number, fn: (name: string, round: number) => Promise<void>): Promise<void> {
  for (let r = -1; r < runs; r++) {
    for (let j = 0; j < names.length; j++) await fn(names[(j + Math.max(r, 0)) % names.length] as string, r)
  }
}

const tagOf = (r: number, runs: number): string => (r < 0 ? 'warm-up' : `run ${r + 1}/${runs}`)

// ---------------------------------------------------------------------------------------------
// Clusters of `speedlayer start` children

interface CliNode {
  id: string
  port: number
  stderr(): string
  /** SIGTERM, and an error unless it exits 0. */
  stop(): Promise<void>
  kill(): Promise<void>
}

/** `speedlayer start` as a child; resolves once its ready line names the port. */
async function startCli(id: string, dir: string, viewsFile: string, peers: readonly string[]): Promise<CliNode> {
  const args = [CLI, 'start', '--id', id, '--port', '0', '--data', dir, '--host', '127.0.0.1', '--views', viewsFile, '--max-backoff', '200ms']
  if (peers.length > 0) args.push('--peers', peers.join(','))
  const proc = spawn(process.execPath, args, { env: childEnv(), stdio: ['ignore', 'pipe', 'pipe'] })
  liveChildren.add(proc)
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => {
    proc.once('close', (code, signal) => {
      liveChildren.delete(proc)
      resolve({ code, signal })
    })
  })
  let stdout = ''
  let stderr = ''
  // Peers log a line per (re)connect; only the tail matters for an error message.
  proc.stderr?.setEncoding('utf8').on('data', (s: string) => (stderr = (stderr + s).slice(-8192)))
  const port = await new Promise<number>((resolve, reject) => {
    proc.stdout?.setEncoding('utf8').on('data', (s: string) => {
      stdout += s
      const m = /listening on http:\/\/127\.0\.0\.1:(\d+)\n/.exec(stdout)
      if (m) resolve(Number(m[1]))
    })
    void exited.then((e) => reject(new Error(`speedlayer start ${id} exited (${e.code ?? e.signal}) before its ready line:\n${stdout}${stderr}`)))
  })
  return {
    id,
    port,
    stderr: () => stderr,
    async stop() {
      proc.kill('SIGTERM')
      const e = await exited
      if (e.code !== 0) throw new Error(`speedlayer start ${id} ended with ${e.code ?? e.signal} after SIGTERM:\n${stderr}`)
    },
    async kill() {
      if (proc.exitCode === null && proc.signalCode === null) proc.kill('SIGKILL')
      await exited
    },
  }
}

interface Counters {
  writes: number
  deltasIn: number
  duplicatesIn: number
  pendingBytes: number
  catchUpBytes: number
  antiEntropyRuns: number
}

const COUNTERS: Record<keyof Counters, string> = {
  writes: 'speedlayer_writes_total',
  deltasIn: 'speedlayer_replication_deltas_in_total',
  duplicatesIn: 'speedlayer_replication_duplicates_in_total',
  pendingBytes: 'speedlayer_storage_pending_bytes',
  catchUpBytes: 'speedlayer_replication_catchup_bytes_total',
  antiEntropyRuns: 'speedlayer_replication_antientropy_runs_total',
}

/** The few /metrics gauges the bench reads (node-wide series). */
function parseCounters(text: string): Counters {
  const out = {} as Counters
  for (const [k, name] of Object.entries(COUNTERS) as Array<[keyof Counters, string]>) {
    // Series carry a {replica="..."} label; a per-peer series would carry a peer label too.
    const m = new RegExp(`^${name}(?:\\{replica="[^"]*"\\})? (\\S+)$`, 'm').exec(text)
    if (!m) throw new Error(`/metrics has no ${name}`)
    out[k] = Number(m[1])
  }
  return out
}

interface PeerRow {
  replica: string | null
  connected: boolean
}

interface Cluster {
  nodes: CliNode[]
  /** True when every node holds every write made anywhere, durably (see `converged` below). */
  converged(): Promise<boolean>
  /** What `converged` looks at, per node, for an error message. */
  describe(): Promise<string>
  /** Every node's counters, in node order. */
  counters(): Promise<Counters[]>
  stop(): Promise<void>
}

/**
 * `n` children in a full mesh: started last to first, so each dials nodes already listening
 * (no backoff in the way), node i dialling every node j > i.
 */
async function startCluster(n: number): Promise<Cluster> {
  const dirs: string[] = []
  const nodes: CliNode[] = []
  // Not kept alive: its sockets idle for longer than the server's keep-alive timeout between
  // polls, and a request on a socket the server is closing fails with ECONNRESET.
  const control = new http.Agent({ keepAlive: false })
  const stopAll = async (): Promise<void> => {
    control.destroy()
    const errors: unknown[] = []
    await Promise.all(nodes.map((c) => c.stop().catch((err: unknown) => errors.push(err))))
    for (const d of dirs) await removeDir(d)
    if (errors.length > 0) throw errors[0]
  }
  try {
    const viewsDir = await tempDir()
    dirs.push(viewsDir)
    const viewsFile = join(viewsDir, 'views.json')
    await writeFile(viewsFile, JSON.stringify({ views: VIEWS }))
    for (let i = n - 1; i >= 0; i--) {
      const dir = await tempDir()
      dirs.push(dir)
      const peers = nodes.map((c) => `ws://127.0.0.1:${c.port}/peer`)
      nodes.unshift(await startCli(NODE_IDS[i] as string, dir, viewsFile, peers))
    }
    const peersOf = async (c: CliNode): Promise<PeerRow[]> => JSON.parse(await request(control, c.port, 'GET', '/peers')) as PeerRow[]
    const meshUp = async (): Promise<boolean> => {
      for (const c of nodes) if ((await peersOf(c)).filter((p) => p.connected).length !== n - 1) return false
      return true
    }
    if (n > 1) {
      try {
        await until('the mesh', meshUp, 20_000)
      } catch (err) {
        throw new Error(`${(err as Error).message}\n${nodes.map((c) => `--- ${c.id}\n${c.stderr()}`).join('\n')}`)
      }
    }
    const countersOf = async (c: CliNode): Promise<Counters> => parseCounters(await request(control, c.port, 'GET', '/metrics'))
    return {
      nodes,
      /**
       * Each node's own acknowledged writes plus the remote deltas it applied equal the writes of
       * all nodes, and nothing waits for disk. Not GET /peers' lagOps: a peer's acknowledgements
       * can stay stale for good once traffic stops (a receiver acknowledges only when it gets
       * something, possibly before it is durable, and never for what it sent itself), so
       * lagOps may never reach 0 although every node holds everything. Deltas that arrive folded
       * into states (a link that fell behind and caught up) are not in deltasIn: such a run times
       * out, and describe() shows the catch-up bytes that explain it.
       */
      async converged() {
        const cs = await Promise.all(nodes.map(countersOf))
        const total = cs.reduce((a, c) => a + c.writes, 0)
        return cs.every((c) => c.writes + c.deltasIn === total && c.pendingBytes === 0)
      },
      async describe() {
        const cs = await Promise.all(nodes.map(countersOf))
        return nodes.map((c, i) => `${c.id}: ${JSON.stringify(cs[i])}`).join('; ')
      },
      counters: () => Promise.all(nodes.map(countersOf)),
      stop: stopAll,
    }
  } catch (err) {
    for (const c of nodes) await c.kill()
    control.destroy()
    for (const d of dirs) await removeDir(d)
    throw err
  }
}

async function untilConverged(cluster: Cluster, timeoutMs: number): Promise<void> {
  try {
    await until('replication to converge', () => cluster.converged(), timeoutMs, 2)
  } catch (err) {
    throw new Error(`${(err as Error).message}: ${await cluster.describe()}`)
  }
}

// ---------------------------------------------------------------------------------------------
// Figure 1: sustained writes/s, 3 replicating nodes vs 1 node

interface WriteRun {
  writes: number
  ackMs: number
  /** Until every node holds every write durably (= ackMs for a single node). */
  convergedMs: number
  /**
   * Deltas received (applied or already held) per write made on another node: 1 when every
   * node gets each remote write once; relays a node did not need push it above 1.
   */
  copiesPerRemoteWrite: number
}

async function clusterWrites(cluster: Cluster, paths: readonly string[], z: Sizes): Promise<WriteRun> {
  const { nodes } = cluster
  const n = nodes.length
  // Fresh agents per run: a socket left idle past the server's keep-alive timeout fails with
  // ECONNRESET when reused.
  const agents = nodes.map(() => keepAliveAgent(z.clients))
  try {
    const before = n > 1 ? await cluster.counters() : []
    gc()
    const t0 = now()
    const stopAt = t0 + z.writeMs
    // Fixed duration: each client issues its next write until the time is up.
    let next = 0
    const client = async (): Promise<void> => {
      while (now() < stopAt) {
        const i = next++
        await request(agents[i % n] as http.Agent, (nodes[i % n] as CliNode).port, 'POST', paths[i % paths.length] as string, INC_BODY)
      }
    }
    await Promise.all(Array.from({ length: z.clients }, client))
    const ackMs = now() - t0
    if (n > 1) await untilConverged(cluster, 120_000)
    const convergedMs = now() - t0
    let copiesPerRemoteWrite = 0
    if (n > 1) {
      const after = await cluster.counters()
      let received = 0
      let remote = 0
      for (let i = 0; i < n; i++) {
        const a = after[i] as Counters
        const b = before[i] as Counters
        received += a.deltasIn - b.deltasIn + (a.duplicatesIn - b.duplicatesIn)
        remote += (a.writes - b.writes) * (n - 1)
      }
      copiesPerRemoteWrite = received / remote
    }
    return { writes: next, ackMs, convergedMs, copiesPerRemoteWrite }
  } finally {
    for (const a of agents) a.destroy()
  }
}

async function throughput(o: SuiteOptions, z: Sizes, one: Cluster, three: Cluster): Promise<number> {
  const { report } = o
  const paths = uniformPaths(z.keys, 100_003, 1)
  report.progress(`  writes: ${z.writeMs} ms of incs over ${label(z.keys)} keys, ${z.clients} keep-alive clients; 3 replicating children vs 1 (${CORES})`)
  const single: number[] = []
  const replicated: number[] = []
  const replicatedAcks: number[] = []
  const copies: number[] = []
  await sideBySide(['single', 'replicated'], z.runs, async (name, r) => {
    const tag = tagOf(r, z.runs)
    if (name === 'single') {
      const w = await clusterWrites(one, paths, z)
      report.progress(`    ${tag} 1 node: ${w.writes} writes in ${w.ackMs.toFixed(0)} ms = ${perSecond(w.writes, w.ackMs).toFixed(0)} writes/s`)
      if (r >= 0) single.push(perSecond(w.writes, w.ackMs))
    } else {
      const w = await clusterWrites(three, paths, z)
      report.progress(
        `    ${tag} 3 nodes: ${w.writes} writes acked in ${w.ackMs.toFixed(0)} ms (${perSecond(w.writes, w.ackMs).toFixed(0)} writes/s), ` +
          `durable on all in ${w.convergedMs.toFixed(0)} ms = ${perSecond(w.writes, w.convergedMs).toFixed(0)} writes/s; ` +
          `${w.copiesPerRemoteWrite.toFixed(3)} deltas received per remote write`,
      )
      if (r >= 0) {
        copies.push(w.copiesPerRemoteWrite)
        replicated.push(perSecond(w.writes, w.convergedMs))
        replicatedAcks.push(perSecond(w.writes, w.ackMs))
      }
    }
  })
  report.progress(`    3 nodes, acknowledgements alone: median ${median(replicatedAcks).toFixed(0)} writes/s`)
  report.add(BENCH, {
    figure: 'replicated_writes_per_s',
    samples: replicated,
    unit: `writes/s (3 CLI children in a mesh, ${z.writeMs / 1000} s of incs over ${label(z.keys)} keys round robin from ${z.clients} keep-alive clients, until durable on all 3; ${CORES})`,
    baseline: { name: 'single_node_writes_per_s', samples: single },
  })
  report.add(BENCH, {
    figure: 'mesh_deltas_received_per_remote_write',
    samples: copies,
    unit: `deltas (applied or already held) each node received per write made on another node, during the 3-node write runs; 1 = no redundant relay`,
  })
  return median(replicated)
}

// ---------------------------------------------------------------------------------------------
// Figure 2: propagation delay, acknowledgement on one node -> visible on the others

interface LoadGen {
  sent(): number
  stop(): Promise<void>
}

/** Open-loop writes: `rate` per second on a fixed schedule, round robin over the nodes. */
function startLoad(agent: http.Agent, nodes: readonly CliNode[], paths: readonly string[], rate: number): LoadGen {
  let failure: unknown = null
  let outstanding = 0
  let drained: (() => void) | null = null
  const t0 = now()
  let issued = 0
  const tick = (): void => {
    const due = Math.floor(((now() - t0) * rate) / 1000)
    while (issued < due && failure === null) {
      const i = issued++
      outstanding++
      request(agent, (nodes[i % nodes.length] as CliNode).port, 'POST', paths[i % paths.length] as string, INC_BODY).then(
        () => {
          if (--outstanding === 0) drained?.()
        },
        (err: unknown) => {
          failure ??= err
          if (--outstanding === 0) drained?.()
        },
      )
    }
  }
  const timer = setInterval(tick, 1)
  return {
    sent: () => issued,
    async stop() {
      clearInterval(timer)
      if (outstanding > 0) await new Promise<void>((r) => (drained = r))
      if (failure !== null) throw failure
    },
  }
}

/** GETs `path` on `port` back to back until the value is at least `want`; resolves with the time of the answer that showed it. */
async function pollUntil(agent: http.Agent, port: number, path: string, want: number): Promise<number> {
  for (let i = 0; ; i++) {
    const body = JSON.parse(await request(agent, port, 'GET', path)) as { value: number }
    if (body.value >= want) return now()
    if (i > 1_000_000) throw new Error(`${path} never reached ${want} on port ${port}`)
  }
}

/** `count` sequential probes; returns the delays (ms), two per probe (one per other node). */
async function probes(cluster: Cluster, agent: http.Agent, count: number, tag: string): Promise<number[]> {
  const { nodes } = cluster
  const out: number[] = []
  for (let i = 0; i < count; i++) {
    const origin = nodes[i % nodes.length] as CliNode
    const path = keyPath(`probe:${tag}:${i}`)
    await request(agent, origin.port, 'POST', path, INC_BODY)
    const acked = now()
    const others = nodes.filter((c) => c !== origin)
    const seen = await Promise.all(others.map((c) => pollUntil(agent, c.port, path, 1)))
    for (const t of seen) out.push(t - acked)
  }
  return out
}

async function propagation(o: SuiteOptions, z: Sizes, cluster: Cluster, maxRate: number): Promise<void> {
  const { report } = o
  const rate = Math.max(1, Math.round(maxRate * z.loadFraction))
  report.progress(`  propagation: ${z.probes} probes per run, with a background load of ${rate} writes/s (${z.loadFraction * 100}% of the 3-node maximum) and without`)
  const loaded50: number[] = []
  const loaded99: number[] = []
  const idle50: number[] = []
  const idle99: number[] = []
  const paths = uniformPaths(z.keys, 100_003, 2)
  await sideBySide(['loaded', 'idle'], z.runs, async (name, r) => {
    const tag = tagOf(r, z.runs)
    // Neither contender may inherit the other's replication backlog.
    await untilConverged(cluster, 60_000)
    let xs: number[]
    let load: LoadGen | undefined
    // Fresh agents per round: a socket left idle past the server's keep-alive timeout would
    // fail with ECONNRESET when reused.
    const loadAgent = keepAliveAgent(z.loadSockets)
    const probeAgent = keepAliveAgent(4)
    const t0 = now()
    try {
      if (name === 'loaded') {
        load = startLoad(loadAgent, cluster.nodes, paths, rate)
        await delay(z.loadWarmMs)
      }
      try {
        xs = await probes(cluster, probeAgent, z.probes, `${name}${r}`)
      } finally {
        await load?.stop()
      }
    } finally {
      loadAgent.destroy()
      probeAgent.destroy()
    }
    const extra = load ? `, load ${perSecond(load.sent(), now() - t0).toFixed(0)} writes/s` : ''
    report.progress(`    ${tag} ${name}: ${xs.length} delays, p50 ${percentile(xs, 50).toFixed(2)} ms, p99 ${percentile(xs, 99).toFixed(2)} ms, max ${Math.max(...xs).toFixed(1)} ms${extra}`)
    if (r < 0) return
    if (name === 'loaded') {
      loaded50.push(percentile(xs, 50))
      loaded99.push(percentile(xs, 99))
    } else {
      idle50.push(percentile(xs, 50))
      idle99.push(percentile(xs, 99))
    }
  })
  const how = `from the ack on one of 3 CLI children to a GET showing it on each other one, ${z.probes} probes per run`
  const loadText = `background load ${rate} writes/s = ${z.loadFraction * 100}% of replicated_writes_per_s; ${CORES}`
  report.add(BENCH, { figure: 'propagation_p50_ms', samples: loaded50, unit: `ms (${how}; ${loadText})` })
  report.add(BENCH, { figure: 'propagation_p99_ms', samples: loaded99, unit: `ms (${how}; ${loadText})`, goal: '<= 50' })
  report.add(BENCH, { figure: 'propagation_idle_p50_ms', samples: idle50, unit: `ms (${how}; no other load)` })
  report.add(BENCH, { figure: 'propagation_idle_p99_ms', samples: idle99, unit: `ms (${how}; no other load)` })
}

// ---------------------------------------------------------------------------------------------
// Figure 3: catch-up after a partition, from the log and by anti-entropy

interface CatchUpRun {
  ms: number
  /** Catch-up plus anti-entropy bytes sent by both nodes. */
  bytes: number
  changedBytes: number
  /** Bytes per protocol message type received by either node during the catch-up. */
  byType: Map<string, number>
  mechanism: string
}

type CatchUpMode = 'log' | 'dropped' | 'ae'

const TYPE_NAMES = new Map<number, string>(Object.entries(MSG).map(([k, v]) => [v, k]))

interface Tally {
  on: boolean
  byType: Map<string, number>
}

/** Tallies the protocol messages a node receives, by type: where a catch-up's bytes go. */
function tallyReceived(node: SpeedNode, into: Tally): void {
  const r = node.replication.replicator
  const receive = r.receive.bind(r)
  r.receive = (link: Link, bytes: Uint8Array): void => {
    if (into.on && bytes.length > 0) {
      const t = TYPE_NAMES.get(bytes[0] as number) ?? String(bytes[0])
      into.byType.set(t, (into.byType.get(t) ?? 0) + bytes.length)
    }
    receive(link, bytes)
  }
}

const catchUpBytesOf = (n: SpeedNode): number => n.replication.stats().catchUpBytes + n.replication.stats().antiEntropyBytes

interface Pair {
  a: SpeedNode
  b: SpeedNode
  tally: Tally
  close(): Promise<void>
}

/**
 * A dials B; `keys` keys written once on A, synced to B live, then folded into snapshots. With
 * modes 'dropped' and 'ae', A keeps no log for peers (maxRetainedLogBytes 0), so every compaction
 * forgets what B lacks; with 'ae' its journal is off too. Automatic compaction is off in both
 * nodes: compactions are the bench's, at fixed points.
 */
async function openPair(keys: number, mode: CatchUpMode): Promise<Pair> {
  const dirA = await tempDir()
  const dirB = await tempDir()
  let a: SpeedNode | undefined
  let b: SpeedNode | undefined
  let server: SpeedServer | undefined
  const close = async (): Promise<void> => {
    await a?.close()
    await server?.close()
    await b?.close()
    await removeDir(dirA)
    await removeDir(dirB)
  }
  try {
    b = await openNode({ id: 'B', dataDir: dirB, views: VIEWS, log: quiet })
    server = await startServer(b, { host: '127.0.0.1', port: 0, maxBody: 1024 * 1024, log: quiet })
    const peerUrl = `${server.url.replace('http://', 'ws://')}/peer`
    const noAuto = { compactMinLogBytes: Number.MAX_SAFE_INTEGER }
    const storage = mode === 'log' ? noAuto : { ...noAuto, maxRetainedLogBytes: 0 }
    const replication = mode === 'ae' ? { maxTrackedKeys: 0 } : {}
    a = await openNode({ id: 'A', dataDir: dirA, views: VIEWS, peers: [peerUrl], maxBackoffMs: 200, storage, replication, log: quiet })
    const A = a
    const B = b
    const tally: Tally = { on: false, byType: new Map() }
    tallyReceived(A, tally)
    tallyReceived(B, tally)
    await until('A and B to connect', () => A.replication.replicator.isConnected('B') && B.replication.replicator.isConnected('A'), 20_000)
    const chunk = 5000
    for (let i = 0; i < keys; i += chunk) {
      const ws: Write[] = []
      for (let j = i; j < Math.min(keys, i + chunk); j++) ws.push({ view: VIEW, key: keyOf(j), op: INC })
      await A.applyMany(ws).durable
    }
    await until('B to hold the initial keys', () => synced(A, B), 120_000)
    await A.storage.compact()
    return { a: A, b: B, tally, close }
  } catch (err) {
    await close()
    throw err
  }
}

/**
 * B holds every delta A holds, durably. B's own vector, not A's view of B's acknowledgements:
 * those can stay stale once traffic stops (see Cluster.converged).
 */
function synced(A: SpeedNode, B: SpeedNode): boolean {
  return B.storage.logged.get('A') >= A.storage.logged.get('A') && B.storage.getStats().pendingBytes === 0
}

/** One partition: cut, change `fraction` of the keys on A, compact A, reconnect, measure. */
async function catchUpRound(pair: Pair, keys: number, fraction: number, seed: number, mode: CatchUpMode): Promise<CatchUpRun> {
  const { a: A, b: B, tally } = pair
  A.replication.disconnect('B')
  await until('the link to go down', () => !A.replication.replicator.isConnected('B') && !B.replication.replicator.isConnected('A'), 20_000)
  const changed = Math.max(1, Math.round(keys * fraction))
  const rng = prng(seed)
  const picked = new Set<number>()
  while (picked.size < changed) picked.add(Math.floor(rng() * keys))
  const changedKeys = [...picked].map(keyOf)
  await A.applyMany(changedKeys.map((key) => ({ view: VIEW, key, op: INC }))).durable
  await A.storage.compact()
  const view = A.store.view(VIEW)
  let changedBytes = 0
  const target = new Map<string, number>()
  for (const key of changedKeys) {
    changedBytes += Buffer.byteLength(key) + encodeState(view.type, A.store.state(view, key)).length
    target.set(key, A.read(VIEW, key).value as number)
  }
  const canServe = A.storage.lowWater('A') <= B.storage.logged.get('A') + 1
  if (canServe !== (mode === 'log')) {
    throw new Error(`catch-up ${mode}: the log ${canServe ? 'still' : 'no longer'} reaches back (lowWater ${A.storage.lowWater('A')}, B has ${B.storage.logged.get('A')})`)
  }

  // Reconnect; the clock stops when B shows every changed value.
  let off = (): void => {}
  const seen = new Promise<number>((resolve) => {
    off = B.subscribe((ev) => {
      if (ev.kind !== 'value' || ev.view.name !== VIEW) return
      const want = target.get(ev.key)
      if (want === undefined || (B.read(VIEW, ev.key).value as number) < want) return
      target.delete(ev.key)
      if (target.size === 0) resolve(now())
    })
  })
  let timer: NodeJS.Timeout | undefined
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`catch-up ${mode}: B still lacks ${target.size} keys after 120 s`)), 120_000)
  })
  const before = { ...A.replication.stats() }
  const bytes0 = catchUpBytesOf(A) + catchUpBytesOf(B)
  tally.byType = new Map()
  gc()
  tally.on = true
  const t0 = now()
  A.replication.connect('B')
  let t1: number
  try {
    t1 = await Promise.race([seen, timeout])
  } finally {
    clearTimeout(timer)
    off()
  }
  // What is still in flight (the end of a session, acknowledgements) belongs to the catch-up too.
  await until('B to cover A', () => synced(A, B), 60_000)
  tally.on = false
  const after = A.replication.stats()
  const journalStates = after.journalStates - before.journalStates
  const mechanism = `${after.catchUps - before.catchUps} catch-ups, ${journalStates} states by key, ${after.antiEntropyRuns - before.antiEntropyRuns} anti-entropy runs on A`
  if ((mode === 'ae') !== after.antiEntropyRuns > before.antiEntropyRuns || (mode === 'dropped') !== journalStates > 0) {
    throw new Error(`catch-up ${mode}: unexpected mechanism (${mechanism})`)
  }
  return { ms: t1 - t0, bytes: catchUpBytesOf(A) + catchUpBytesOf(B) - bytes0, changedBytes, byType: tally.byType, mechanism }
}

async function catchUp(o: SuiteOptions, z: Sizes): Promise<void> {
  const { report } = o
  const changed = Math.round(z.catchUpKeys * z.changedFraction)
  report.progress(
    `  catch-up: ${label(z.catchUpKeys)} keys synced, ${label(changed)} changed during each partition; from the log vs by key (the log dropped them) vs by anti-entropy (2 nodes in this process)`,
  )
  const modes: CatchUpMode[] = ['log', 'dropped', 'ae']
  const res = new Map(modes.map((m) => [m, { ms: [] as number[], ratio: [] as number[] }]))
  const pairs = new Map<string, Pair>()
  try {
    for (const mode of modes) {
      const t0 = now()
      pairs.set(mode, await openPair(z.catchUpKeys, mode))
      report.progress(`    ${mode} pair: ${label(z.catchUpKeys)} keys written and synced in ${(now() - t0).toFixed(0)} ms`)
    }
    await sideBySide(modes, z.runs, async (name, r) => {
      const mode = name as CatchUpMode
      // Each round changes other keys (the seed), on the same pair.
      const x = await catchUpRound(pairs.get(mode) as Pair, z.catchUpKeys, z.changedFraction, 100 + r, mode)
      const types = [...x.byType].map(([t, n]) => `${t} ${n}`).join(', ')
      report.progress(
        `    ${tagOf(r, z.runs)} ${mode}: ${x.ms.toFixed(0)} ms, ${x.bytes} B shipped / ${x.changedBytes} B changed = ${(x.bytes / x.changedBytes).toFixed(2)} ` +
          `(${x.mechanism}; received by type: ${types})`,
      )
      if (r < 0) return
      const into = res.get(mode) as { ms: number[]; ratio: number[] }
      into.ms.push(x.ms)
      into.ratio.push(x.bytes / x.changedBytes)
    })
  } finally {
    for (const p of pairs.values()) await p.close()
  }
  const what = `${label(changed)} of ${label(z.catchUpKeys)} gcounter keys changed during a partition`
  const per = 'bytes shipped / bytes of the changed keys (encoded state + key)'
  const how: Record<CatchUpMode, string> = {
    log: 'from the log',
    dropped: 'the log dropped them: states of the keys the journal names',
    ae: 'by digest anti-entropy (journal off: the last resort)',
  }
  for (const mode of modes) {
    const x = res.get(mode) as { ms: number[]; ratio: number[] }
    const extra = mode === 'ae' ? ', digests included' : ''
    report.add(BENCH, { figure: `catchup_${mode}_bytes_per_changed_byte`, samples: x.ratio, unit: `x (${per}${extra}; ${how[mode]}; ${what})`, goal: '<= 1.5' })
  }
  for (const mode of modes) {
    report.add(BENCH, { figure: `catchup_${mode}_ms`, samples: (res.get(mode) as { ms: number[] }).ms, unit: `ms (reconnect until the peer shows every changed value; ${how[mode]}; ${what})` })
  }
}

export const suite: Suite = {
  name: BENCH,
  async run(o: SuiteOptions): Promise<void> {
    installExitHook()
    const z = sizes(o.quick)
    let t0 = now()
    // Both clusters live through figures 1 and 2 (each run adds writes to the same nodes): child
    // start-up is most of a smoke run's time on a loaded machine.
    const clusters: Cluster[] = []
    try {
      const one = await startCluster(1)
      clusters.push(one)
      const three = await startCluster(3)
      clusters.push(three)
      o.report.progress(`  clusters of 1 and 3 nodes up in ${((now() - t0) / 1000).toFixed(1)} s`)
      t0 = now()
      const maxRate = await throughput(o, z, one, three)
      o.report.progress(`  writes: ${((now() - t0) / 1000).toFixed(1)} s`)
      t0 = now()
      await propagation(o, z, three, maxRate)
      o.report.progress(`  propagation: ${((now() - t0) / 1000).toFixed(1)} s`)
    } finally {
      for (const c of clusters) await c.stop()
    }
    t0 = now()
    await catchUp(o, z)
    o.report.progress(`  catch-up: ${((now() - t0) / 1000).toFixed(1)} s`)
  },
}
