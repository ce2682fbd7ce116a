/**
 * The `storage` suite: what durability costs. Acknowledged writes/s in-process and over HTTP
 * against raw LevelDB, ack latency with and without a compaction running, disk bytes per live
 * byte, heap per key, recovery time, and HTTP point reads.
 *
 * Every contender of a figure runs in the same process run, interleaved repetition by repetition
 * in rotating order after a discarded warm-up round (as report.ts's timeSideBySide does for
 * synchronous contenders; these are asynchronous, so the loop is written out here). Each
 * contender gets a fresh LevelDB directory under os.tmpdir(); all are removed at the end.
 *
 * Modelling choices (documented because they decide the numbers):
 * - Keys are `key:<i>` in one gcounter view `pv`; each write is {"inc": 1}. Write sequences draw
 *   keys uniformly with a seeded PRNG, so every contender writes the same sequence.
 * - The node runs with its defaults (group commit, fsync off, automatic compaction on, as
 *   `speedlayer start` without --fsync).
 * - raw_level_batch_puts_per_s is what a naive store would write: per write one put of key = the
 *   key string, value = the encoded delta (pre-encoded before timing, so the baseline does not
 *   pay for encoding and the ratio errs against us), in sequential batches of the average size of
 *   the node's group commits in the latest node run (writes / log records: a log record is one
 *   group commit of writes; stats.batches also counts compaction-only flushes).
 * - HTTP throughput and reads run against a child `node dist/src/cli/main.js start` (the real
 *   CLI, its own process, so client and server do not share a core on a 2-core machine), 16
 *   concurrent requests over a keep-alive http.Agent with 16 sockets.
 * - Latency runs against a child built like `start` (bench/storageChild.ts: openNode +
 *   startServer) that the bench can tell when to compact. The load is open loop: a fixed number
 *   of writes per second on a fixed schedule, whatever the answers do, over a keep-alive pool
 *   large enough (512) that no request waits in the client for a socket: latency, from sending
 *   the request to the end of the answer, is the server's. (With only 16 sockets, a stall of the
 *   server would show as client-side queueing that grows for as long as the stall lasts.)
 */
import http from 'node:http'
import { fork, spawn, type ChildProcess } from 'node:child_process'
import { rmSync } from 'node:fs'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { ClassicLevel } from 'classic-level'
import { gcounter, slotState } from '../crdts/gcounter.js'
import { encodeState } from '../crdts/codec.js'
import { openNode, type SpeedNode } from '../src/node.js'
import { snapshotKey } from '../src/storage/layout.js'
import { gc, median, now, type Suite, type SuiteOptions } from './report.js'
import { BENCH_ID as ID, BENCH_VIEW as VIEW, NO_AUTO_COMPACTION, keyOf, type ChildCommand, type ChildMessage } from './storageChild.js'

const BENCH = 'storage'
const CLI = fileURLToPath(new URL('../src/cli/main.js', import.meta.url))
const CHILD = fileURLToPath(new URL('./storageChild.js', import.meta.url))
const VIEWS = { [VIEW]: { type: 'gcounter' } }
const INC = { inc: 1 }
const INC_BODY = JSON.stringify(INC)
/** What the node's LevelDB adapter opens with; the raw baseline uses the same. */
const WRITE_BUFFER = 2 * 1024 * 1024

interface Sizes {
  runs: number
  /** Figures 1, 2, 7: writes over keys, in-process and HTTP. */
  keys: number
  writes: number
  outstanding: number
  httpClients: number
  reads: number
  /** Figure 3. */
  latencyRate: number
  /** Keep-alive sockets the open-loop load may use: enough that no request waits in the client for one. */
  latencySockets: number
  latencyKeys: number
  latencyWindowMs: number
  latencyWarmMs: number
  /** Figures 4, 5, 6: a write-heavy run over this many keys (every key once, then `bigWrites - bigKeys` more). */
  bigKeys: number
  bigWrites: number
}

function sizes(quick: boolean): Sizes {
  return quick
    ? {
        runs: 3,
        keys: 5_000,
        writes: 10_000,
        outstanding: 5000,
        httpClients: 16,
        reads: 5_000,
        latencyRate: 1000,
        latencySockets: 512,
        latencyKeys: 20_000,
        latencyWindowMs: 1000,
        latencyWarmMs: 250,
        bigKeys: 50_000,
        bigWrites: 100_000,
      }
    : {
        runs: 3,
        keys: 100_000,
        writes: 200_000,
        outstanding: 5000,
        httpClients: 16,
        reads: 50_000,
        latencyRate: 1000,
        latencySockets: 512,
        latencyKeys: 200_000,
        latencyWindowMs: 5000,
        latencyWarmMs: 500,
        bigKeys: 1_000_000,
        bigWrites: 2_000_000,
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


function uniformKeys(keys: number, n: number, seed: number): string[] {
  const rng = prng(seed)
  const out = new Array<string>(n)
  for (let i = 0; i < n; i++) out[i] = keyOf(Math.floor(rng() * keys))
  return out
}

const label = (n: number): string => (n >= 1e6 && n % 1e6 === 0 ? `${n / 1e6}M` : n >= 1000 && n % 1000 === 0 ? `${n / 1000}k` : String(n))

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
  const d = await mkdtemp(join(tmpdir(), 'sl-bench-storage-'))
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

function track(proc: ChildProcess): Promise<{ code: number | null; signal: NodeJS.Signals | null }> {
  liveChildren.add(proc)
  return new Promise((resolve) => {
    proc.once('close', (code, signal) => {
      liveChildren.delete(proc)
      resolve({ code, signal })
    })
  })
}

interface CliNode {
  port: number
  stop(): Promise<void>
}

/** `speedlayer start` as a child; resolves once its ready line names the port. */
async function startCli(dir: string): Promise<CliNode> {
  const proc = spawn(process.execPath, [CLI, 'start', '--id', ID, '--port', '0', '--data', dir, '--host', '127.0.0.1'], {
    env: childEnv(),
    stdio: ['ignore', 'pipe', 'pipe'],
  })
  const exited = track(proc)
  let stdout = ''
  let stderr = ''
  proc.stderr?.setEncoding('utf8').on('data', (s: string) => (stderr += s))
  const port = await new Promise<number>((resolve, reject) => {
    proc.stdout?.setEncoding('utf8').on('data', (s: string) => {
      stdout += s
      const m = /listening on http:\/\/127\.0\.0\.1:(\d+)\n/.exec(stdout)
      if (m) resolve(Number(m[1]))
    })
    void exited.then((e) => reject(new Error(`speedlayer start exited (${e.code ?? e.signal}) before its ready line:\n${stdout}${stderr}`)))
  })
  return {
    port,
    async stop() {
      proc.kill('SIGTERM')
      const e = await exited
      if (e.code !== 0) throw new Error(`speedlayer start ended with ${e.code ?? e.signal} after SIGTERM:\n${stderr}`)
    },
  }
}

interface Child {
  /** The next message of the child (an 'error' message rejects). */
  next(): Promise<ChildMessage>
  /** Sends a command and resolves with the child's answer of kind `want`. */
  ask<K extends ChildMessage['kind']>(cmd: ChildCommand, want: K): Promise<Extract<ChildMessage, { kind: K }>>
  /** Resolves once the child has exited with status 0. */
  exited(): Promise<void>
  /** Asks a `serve` child to close its node and exit, and waits for that. */
  stop(): Promise<void>
  kill(): void
}

/** Forks bench/storageChild.js with `args` (see there) and an IPC channel. */
function forkChild(args: string[]): Child {
  const proc = fork(CHILD, args, { env: childEnv(), stdio: ['ignore', 'ignore', 'pipe', 'ipc'] })
  const exit = track(proc)
  let stderr = ''
  proc.stderr?.setEncoding('utf8').on('data', (s: string) => (stderr += s))
  const queue: ChildMessage[] = []
  let waiter: { resolve: (m: ChildMessage) => void; reject: (e: Error) => void } | null = null
  let gone: Error | null = null
  const deliver = (): void => {
    if (!waiter) return
    const w = waiter
    const m = queue.shift()
    if (m !== undefined) {
      waiter = null
      if (m.kind === 'error') w.reject(new Error(`storageChild ${args[0]} failed: ${m.message}`))
      else w.resolve(m)
    } else if (gone) {
      waiter = null
      w.reject(gone)
    }
  }
  proc.on('message', (m: ChildMessage) => {
    queue.push(m)
    deliver()
  })
  void exit.then((e) => {
    gone = new Error(`storageChild ${args[0]} exited (${e.code ?? e.signal}):\n${stderr}`)
    deliver()
  })
  const next = (): Promise<ChildMessage> =>
    new Promise((resolve, reject) => {
      waiter = { resolve, reject }
      deliver()
    })
  return {
    next,
    async ask(cmd, want) {
      const answer = next()
      proc.send(cmd)
      const m = await answer
      if (m.kind !== want) throw new Error(`asked ${cmd.cmd}, storageChild answered ${m.kind}`)
      return m as Extract<ChildMessage, { kind: typeof want }>
    },
    async exited() {
      const e = await exit
      if (e.code !== 0) throw new Error(`storageChild ${args[0]} ended with ${e.code ?? e.signal}:\n${stderr}`)
    },
    async stop() {
      if (proc.connected) proc.send({ cmd: 'stop' } satisfies ChildCommand)
      else proc.kill('SIGKILL')
      await this.exited()
    },
    kill() {
      proc.kill('SIGKILL')
    },
  }
}

/** Runs a one-shot child mode and returns its one message. */
async function childResult<K extends ChildMessage['kind']>(args: string[], want: K): Promise<Extract<ChildMessage, { kind: K }>> {
  const c = forkChild(args)
  try {
    const m = await c.next()
    if (m.kind !== want) throw new Error(`storageChild ${args[0]} answered ${m.kind}`)
    await c.exited()
    return m as Extract<ChildMessage, { kind: K }>
  } finally {
    c.kill()
  }
}

/**
 * Runs start(0..total-1) with at most `limit` in flight, starting the next as each one settles
 * (a closed loop of `limit` clients). Rejects on the first failure.
 */
function pump(total: number, limit: number, start: (i: number) => Promise<unknown>): Promise<void> {
  return new Promise((resolve, reject) => {
    let next = 0
    let inflight = 0
    let failed = false
    const fill = (): void => {
      while (!failed && inflight < limit && next < total) {
        inflight++
        start(next++).then(settled, fail)
      }
      if (inflight === 0 && next === total) resolve()
    }
    const settled = (): void => {
      inflight--
      fill()
    }
    const fail = (err: unknown): void => {
      failed = true
      reject(err)
    }
    fill()
  })
}

/**
 * Idle sockets are dropped after 1 s, well before the server's keep-alive timeout (5 s): a
 * request sent on a socket the server is closing at that moment would fail with a hang-up.
 */
function keepAliveAgent(sockets: number): http.Agent {
  return new http.Agent({ keepAlive: true, maxSockets: sockets, maxFreeSockets: sockets, timeout: 1000 })
}

/** One request; resolves with the body of a 200 answer, rejects on anything else. */
function request(agent: http.Agent, port: number, method: 'GET' | 'POST' | 'PUT', path: string, body?: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const headers = body === undefined ? undefined : { 'content-type': 'application/json', 'content-length': String(Buffer.byteLength(body)) }
    const req = http.request({ agent, host: '127.0.0.1', port, method, path, headers }, (res) => {
      let text = ''
      res.setEncoding('utf8')
      res.on('data', (s: string) => (text += s))
      res.on('end', () => {
        const status = res.statusCode ?? 0
        if (status >= 200 && status < 300) resolve(text)
        else reject(new Error(`${method} ${path}: ${status} ${text}`))
      })
      res.on('error', reject)
    })
    req.on('error', reject)
    req.end(body)
  })
}

const keyPath = (key: string): string => `/views/${VIEW}/${encodeURIComponent(key)}`
const perSecond = (ops: number, ms: number): number => (ops * 1000) / ms

/** The p-th percentile (0..100) by nearest rank. */
function percentile(xs: readonly number[], p: number): number {
  if (xs.length === 0) throw new Error('percentile of nothing')
  const s = Float64Array.from(xs).sort()
  return s[Math.min(s.length - 1, Math.max(0, Math.ceil((p / 100) * s.length) - 1))] as number
}

/** Bytes of the live state as storage holds it: snapshot key + sealed encoded state (see test/storage/engine.test.ts). */
function liveBytes(node: SpeedNode): number {
  let total = 0
  for (const v of node.store.views()) {
    for (const [key, state] of v.states.entries()) total += snapshotKey(v.no, key).length + encodeState(v.type, state).length + 5
  }
  return total
}

/** Runs `fn` over the contenders: one discarded warm-up round, then `runs` rounds, order rotating. */
async function sideBySide(names: readonly string[], runs: number, fn: (name: string, round: number) => Promise<void>): Promise<void> {
  for (let r = -1; r < runs; r++) {
    for (let j = 0; j < names.length; j++) await fn(names[(j + Math.max(r, 0)) % names.length] as string, r)
  }
}

const quiet = (): void => {}

// ---------------------------------------------------------------------------------------------
// Figures 1, 2, 7: acknowledged writes/s (in-process, raw LevelDB, HTTP) and HTTP point reads

interface WriteWorkload {
  seq: string[]
  /** The encoded gcounter delta each write produces, what the raw baseline stores. */
  deltas: Uint8Array[]
  paths: string[]
  readPaths: string[]
}

function writeWorkload(z: Sizes): WriteWorkload {
  const seq = uniformKeys(z.keys, z.writes, 1)
  const counts = new Map<string, number>()
  const deltas = seq.map((k) => {
    const c = (counts.get(k) ?? 0) + 1
    counts.set(k, c)
    return encodeState(gcounter, slotState(ID, c))
  })
  const paths = seq.map(keyPath)
  const readPaths = uniformKeys(z.keys, z.reads, 2).map(keyPath)
  return { seq, deltas, paths, readPaths }
}

interface NodeRun {
  ms: number
  /** Average writes per group commit. */
  perCommit: number
  batches: number
  records: number
}

async function nodeWrites(w: WriteWorkload, z: Sizes): Promise<NodeRun> {
  const dir = await tempDir()
  try {
    const node = await openNode({ id: ID, dataDir: dir, views: VIEWS, log: quiet })
    const s0 = node.stats().storage
    gc()
    const t0 = now()
    await pump(w.seq.length, z.outstanding, (i) => node.apply(VIEW, w.seq[i] as string, INC))
    const ms = now() - t0
    const s1 = node.stats().storage
    await node.close()
    const records = s1.logRecords - s0.logRecords
    return { ms, perCommit: w.seq.length / records, batches: s1.batches - s0.batches, records }
  } finally {
    await removeDir(dir)
  }
}

async function rawWrites(w: WriteWorkload, batchSize: number): Promise<number> {
  const dir = await tempDir()
  try {
    const db = new ClassicLevel<string, Uint8Array>(dir, { keyEncoding: 'utf8', valueEncoding: 'view' })
    await db.open({ createIfMissing: true, writeBufferSize: WRITE_BUFFER })
    const n = w.seq.length
    gc()
    const t0 = now()
    for (let i = 0; i < n; i += batchSize) {
      const end = Math.min(n, i + batchSize)
      const ops: Array<{ type: 'put'; key: string; value: Uint8Array }> = new Array(end - i)
      for (let j = i; j < end; j++) ops[j - i] = { type: 'put', key: w.seq[j] as string, value: w.deltas[j] as Uint8Array }
      await db.batch(ops)
    }
    const ms = now() - t0
    await db.close()
    return ms
  } finally {
    await removeDir(dir)
  }
}

interface HttpRun {
  writesMs: number
  readsMs: number
  healthMs: number
}

/** HTTP writes, then point reads of the keys just written, then GET /health: one fresh CLI child. */
async function httpRun(w: WriteWorkload, z: Sizes): Promise<HttpRun> {
  const dir = await tempDir()
  const agent = keepAliveAgent(z.httpClients)
  let cli: CliNode | undefined
  let ok = false
  try {
    cli = await startCli(dir)
    const port = cli.port
    await request(agent, port, 'PUT', `/views/${VIEW}`, JSON.stringify(VIEWS[VIEW]))
    gc()
    let t0 = now()
    await pump(w.paths.length, z.httpClients, (i) => request(agent, port, 'POST', w.paths[i] as string, INC_BODY))
    const writesMs = now() - t0
    gc()
    t0 = now()
    await pump(w.readPaths.length, z.httpClients, (i) => request(agent, port, 'GET', w.readPaths[i] as string))
    const readsMs = now() - t0
    gc()
    t0 = now()
    await pump(w.readPaths.length, z.httpClients, () => request(agent, port, 'GET', '/health'))
    const healthMs = now() - t0
    ok = true
    return { writesMs, readsMs, healthMs }
  } finally {
    agent.destroy()
    await cli?.stop().catch((err: unknown) => {
      if (ok) throw err
    })
    await removeDir(dir)
  }
}

async function throughput(o: SuiteOptions, z: Sizes): Promise<void> {
  const { report } = o
  const w = writeWorkload(z)
  report.progress(`  writes: ${label(z.writes)} gcounter incs over ${label(z.keys)} keys; in-process node vs raw LevelDB vs HTTP (CLI child)`)
  const nodeOps: number[] = []
  const rawOps: number[] = []
  const httpOps: number[] = []
  const readOps: number[] = []
  const healthOps: number[] = []
  const perCommit: number[] = []
  let batchSize = 0
  await sideBySide(['node', 'raw', 'http'], z.runs, async (name, r) => {
    const tag = r < 0 ? 'warm-up' : `run ${r + 1}/${z.runs}`
    if (name === 'node' || batchSize === 0) {
      const n = await nodeWrites(w, z)
      batchSize = Math.max(1, Math.round(n.perCommit))
      report.progress(`    ${tag} node: ${n.ms.toFixed(0)} ms, ${n.records} group commits (${n.batches} batches), ${n.perCommit.toFixed(0)} writes/commit`)
      if (r >= 0 && name === 'node') {
        nodeOps.push(perSecond(z.writes, n.ms))
        perCommit.push(n.perCommit)
      }
      if (name === 'node') return
    }
    if (name === 'raw') {
      const ms = await rawWrites(w, batchSize)
      report.progress(`    ${tag} raw: ${ms.toFixed(0)} ms in batches of ${batchSize}`)
      if (r >= 0) rawOps.push(perSecond(z.writes, ms))
    } else {
      const h = await httpRun(w, z)
      report.progress(`    ${tag} http: writes ${h.writesMs.toFixed(0)} ms, reads ${h.readsMs.toFixed(0)} ms, health ${h.healthMs.toFixed(0)} ms`)
      if (r >= 0) {
        httpOps.push(perSecond(z.writes, h.writesMs))
        readOps.push(perSecond(z.reads, h.readsMs))
        healthOps.push(perSecond(z.reads, h.healthMs))
      }
    }
  })
  report.add(BENCH, {
    figure: 'node_ack_writes_per_s',
    samples: nodeOps,
    unit: `writes/s (in-process openNode, ${label(z.writes)} incs over ${label(z.keys)} keys, ${z.outstanding} outstanding, ~${median(perCommit).toFixed(0)} writes/commit)`,
    baseline: { name: 'raw_level_batch_puts_per_s', samples: rawOps },
    goal: '>= 0.5',
  })
  report.add(BENCH, {
    figure: 'http_ack_writes_per_s',
    samples: httpOps,
    unit: `writes/s (POST to a speedlayer start child, ${z.httpClients} keep-alive clients)`,
    baseline: { name: 'node_ack_writes_per_s', samples: nodeOps },
  })
  report.add(BENCH, {
    figure: 'http_point_reads_per_s',
    samples: readOps,
    unit: `reads/s (GET /views/pv/KEY, ${label(z.keys)} keys, ${z.httpClients} keep-alive clients)`,
    baseline: { name: 'http_health_gets_per_s', samples: healthOps },
  })
}

// ---------------------------------------------------------------------------------------------
// Figure 3: ack latency at a fixed load, with and without a compaction running

interface LoadGen {
  /** Latencies (ms) of requests sent at or after `from` (a now() time) and before `to`. */
  samples(from: number, to: number): number[]
  stop(): Promise<void>
}

/**
 * Open-loop writes: `rate` per second on a fixed schedule, whatever the answers do. Each tick
 * sends what the schedule owes; latency runs from sending to the end of the answer.
 */
function startLoad(agent: http.Agent, port: number, paths: readonly string[], rate: number): LoadGen {
  const sent: number[] = []
  const lat: number[] = []
  let failure: unknown = null
  let outstanding = 0
  let drained: (() => void) | null = null
  const t0 = now()
  let issued = 0
  const tick = (): void => {
    const due = Math.floor(((now() - t0) * rate) / 1000)
    while (issued < due && failure === null) {
      const i = issued++
      const t = now()
      outstanding++
      request(agent, port, 'POST', paths[i % paths.length] as string, INC_BODY).then(
        () => {
          sent.push(t)
          lat.push(now() - t)
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
    samples(from, to) {
      const out: number[] = []
      for (let i = 0; i < sent.length; i++) {
        const t = sent[i] as number
        if (t >= from && t < to) out.push(lat[i] as number)
      }
      return out
    },
    async stop() {
      clearInterval(timer)
      if (outstanding > 0) await new Promise<void>((r) => (drained = r))
      if (failure !== null) throw failure
    },
  }
}

const sleepUntil = (t: number): Promise<void> => new Promise((r) => setTimeout(r, Math.max(0, t - now())))

async function latency(o: SuiteOptions, z: Sizes): Promise<void> {
  const { report } = o
  const dir = await tempDir()
  const agent = keepAliveAgent(z.latencySockets)
  let child: Child | undefined
  let port = 0
  const p50: number[] = []
  const p99: number[] = []
  const p99c: number[] = []
  const compactMs: number[] = []
  let ok = false
  try {
    child = forkChild(['serve', dir])
    const c = child
    const ready = await c.next()
    if (ready.kind !== 'ready') throw new Error(`storageChild serve answered ${ready.kind}`)
    port = ready.port
    const paths = uniformKeys(z.latencyKeys, 100_003, 3).map(keyPath)
    report.progress(`  latency: ${z.latencyRate} writes/s open loop over ${label(z.latencyKeys)} keys; setting up (writes + first compaction)`)
    // The node holds every key before any window, so both windows see the same heap and index.
    await c.ask({ cmd: 'dirty', keys: z.latencyKeys }, 'dirtied')
    await c.ask({ cmd: 'compact' }, 'compacted')

    const quietWindow = async (): Promise<number[]> => {
      const load = startLoad(agent, port, paths, z.latencyRate)
      const from = now() + z.latencyWarmMs
      await sleepUntil(from + z.latencyWindowMs)
      const xs = load.samples(from, from + z.latencyWindowMs)
      await load.stop()
      return xs
    }
    const compactWindow = async (): Promise<{ xs: number[]; ms: number }> => {
      // Untimed: every key dirty again, so the compaction has them all to write.
      await c.ask({ cmd: 'dirty', keys: z.latencyKeys }, 'dirtied')
      const load = startLoad(agent, port, paths, z.latencyRate)
      await sleepUntil(now() + z.latencyWarmMs)
      const from = now()
      const done = await c.ask({ cmd: 'compact' }, 'compacted')
      const to = now()
      const xs = load.samples(from, to)
      await load.stop()
      return { xs, ms: done.ms }
    }

    await sideBySide(['quiet', 'compaction'], z.runs, async (name, r) => {
      const tag = r < 0 ? 'warm-up' : `run ${r + 1}/${z.runs}`
      if (name === 'quiet') {
        const xs = await quietWindow()
        report.progress(`    ${tag} no compaction: ${xs.length} acks, p50 ${percentile(xs, 50).toFixed(2)} ms, p99 ${percentile(xs, 99).toFixed(2)} ms, max ${Math.max(...xs).toFixed(1)} ms`)
        if (r >= 0) {
          p50.push(percentile(xs, 50))
          p99.push(percentile(xs, 99))
        }
      } else {
        const { xs, ms } = await compactWindow()
        report.progress(`    ${tag} compaction of ${label(z.latencyKeys)} keys (${ms.toFixed(0)} ms): ${xs.length} acks, p50 ${percentile(xs, 50).toFixed(2)} ms, p99 ${percentile(xs, 99).toFixed(2)} ms, max ${Math.max(...xs).toFixed(1)} ms`)
        if (r >= 0) {
          p99c.push(percentile(xs, 99))
          compactMs.push(ms)
        }
      }
    })
    ok = true
  } finally {
    agent.destroy()
    // A failed stop matters only when nothing failed before it: it must not hide the first error.
    await child?.stop().catch((err: unknown) => {
      if (ok) throw err
    })
    await removeDir(dir)
  }
  const load = `HTTP POST to a child node, ${z.latencyRate} writes/s open loop over keep-alive sockets`
  report.add(BENCH, { figure: 'ack_latency_p50_ms', samples: p50, unit: `ms (${load})` })
  report.add(BENCH, { figure: 'ack_latency_p99_ms', samples: p99, unit: `ms (${load})` })
  report.add(BENCH, {
    figure: 'ack_latency_p99_during_compaction_ms',
    samples: p99c,
    unit: `ms (${load}, while compaction writes ${label(z.latencyKeys)} snapshots in ~${median(compactMs).toFixed(0)} ms)`,
    baseline: { name: 'ack_latency_p99_ms', samples: p99 },
    goal: '<= 2',
  })
}

// ---------------------------------------------------------------------------------------------
// Figures 4, 5, 6: disk per live byte, heap per key, recovery

/**
 * The write-heavy run: every key once (in order), then `bigWrites - bigKeys` increments drawn
 * uniformly, ~5000 outstanding. With `compacted`, the node compacts as it goes (its defaults) and
 * once more at the end; without, the log keeps every record.
 */
async function writeHeavy(dir: string, z: Sizes, compacted: boolean): Promise<{ ms: number; disk: number; live: number }> {
  const node = await openNode({ id: ID, dataDir: dir, views: VIEWS, log: quiet, ...(compacted ? {} : { storage: NO_AUTO_COMPACTION }) })
  const rng = prng(4)
  const t0 = now()
  await pump(z.bigWrites, z.outstanding, (i) => node.apply(VIEW, keyOf(i < z.bigKeys ? i : Math.floor(rng() * z.bigKeys)), INC))
  if (compacted) {
    // The first call may join a compaction that started mid-run; the second folds in the rest.
    await node.storage.compact()
    await node.storage.compact()
  }
  const ms = now() - t0
  const disk = await node.storage.diskBytes()
  const live = liveBytes(node)
  await node.close()
  return { ms, disk, live }
}

/**
 * Opens a node on `dir` in a fresh process, as a restart would: milliseconds until openNode
 * resolves, and the heap the node holds per key (see bench/storageChild.ts for why a process).
 */
function recover(dir: string, keys: number): Promise<{ ms: number; heapPerKey: number }> {
  return childResult(['recover', dir, String(keys)], 'recovered')
}

/** The baseline for heap per key: a Map<string, number> of the same keys, key strings included, in a fresh process too. */
async function rawMapHeap(keys: number): Promise<number> {
  return (await childResult(['map', String(keys)], 'map')).heapPerKey
}

async function durability(o: SuiteOptions, z: Sizes): Promise<void> {
  const { report } = o
  const what = `${label(z.bigKeys)} keys, ${label(z.bigWrites)} writes`
  const compactedDirs: string[] = []
  let logDir: string | undefined
  const ratio: number[] = []
  try {
    for (let r = 0; r < z.runs; r++) {
      const dir = await tempDir()
      compactedDirs.push(dir)
      const h = await writeHeavy(dir, z, true)
      ratio.push(h.disk / h.live)
      report.progress(`    write-heavy run ${r + 1}/${z.runs} (${what}): ${h.ms.toFixed(0)} ms, disk ${h.disk} B / live ${h.live} B = ${(h.disk / h.live).toFixed(2)}`)
    }
    logDir = await tempDir()
    const hl = await writeHeavy(logDir, z, false)
    report.progress(`    the same with the log left uncompacted: ${hl.ms.toFixed(0)} ms, disk ${hl.disk} B`)
    report.add(BENCH, {
      figure: 'disk_to_live_ratio',
      samples: ratio,
      unit: `x (LevelDB dir bytes / encoded live bytes, after ${what} and compaction)`,
      goal: '<= 2',
    })

    const fromSnapshots: number[] = []
    const fromLog: number[] = []
    const heapNode: number[] = []
    const heapRaw: number[] = []
    const dirs = [...compactedDirs]
    const ld = logDir
    await sideBySide(['snapshots', 'log', 'map'], z.runs, async (name, r) => {
      const tag = r < 0 ? 'warm-up' : `run ${r + 1}/${z.runs}`
      if (name === 'map') {
        const b = await rawMapHeap(z.bigKeys)
        report.progress(`    ${tag} raw Map: ${b.toFixed(1)} B/key`)
        if (r >= 0) heapRaw.push(b)
        return
      }
      const dir = name === 'log' ? ld : (dirs[Math.max(r, 0)] as string)
      const x = await recover(dir, z.bigKeys)
      report.progress(`    ${tag} open from ${name}: ${x.ms.toFixed(0)} ms, ${x.heapPerKey.toFixed(1)} B/key`)
      if (r < 0) return
      if (name === 'log') fromLog.push(x.ms)
      else {
        fromSnapshots.push(x.ms)
        heapNode.push(x.heapPerKey)
      }
    })
    report.add(BENCH, {
      figure: 'heap_bytes_per_key',
      samples: heapNode,
      unit: `bytes/key (gcounter, ${label(z.bigKeys)} keys in a node recovered in a fresh process, key strings included)`,
      baseline: { name: 'raw_map_heap_bytes_per_key', samples: heapRaw },
    })
    report.add(BENCH, {
      figure: 'recovery_ms_1m_keys',
      samples: fromSnapshots,
      unit: `ms (openNode until it resolves, fresh process, ${label(z.bigKeys)} keys compacted into snapshots)`,
      goal: '<= 3000',
    })
    report.add(BENCH, {
      figure: 'recovery_ms_1m_keys_from_log',
      samples: fromLog,
      unit: `ms (openNode, fresh process, ${label(z.bigKeys)} keys, no snapshots: ${label(z.bigWrites)} deltas replayed from the log)`,
    })
  } finally {
    for (const d of compactedDirs) await removeDir(d)
    if (logDir !== undefined) await removeDir(logDir)
  }
}

export const suite: Suite = {
  name: BENCH,
  async run(o: SuiteOptions): Promise<void> {
    installExitHook()
    const z = sizes(o.quick)
    for (const [name, part] of [
      ['writes and reads', throughput],
      ['latency', latency],
      ['disk, heap, recovery', durability],
    ] as const) {
      const t0 = now()
      await part(o, z)
      o.report.progress(`  ${name}: ${((now() - t0) / 1000).toFixed(1)} s`)
    }
  },
}
