/**
 * The `ingest` suite: events per second end to end through POST /ingest with the four pageview views
 * (bench/pageview-views.json) applied to every event, each request answered once durable, against Redis
 * given the same events as a pipelined INCRBY / PFADD / SADD / HSET mix; and the node's CPU time
 * per event.
 *
 * Modelling choices (documented because they decide the numbers):
 * - Events: bench/pageviews.ts, seeded, Zipf URLs (2,000) and users (100,000), 10% clicks (which
 *   the pageview rules filter out, as they do in the demo), spread over the 6 hours before now.
 * - The node runs in a child process of its own (this file forked with `serve DIR`), built as
 *   `speedlayer start` builds it (openNode + startServer, defaults: group commit, no fsync,
 *   automatic compaction on), so that the client does not share its core. The child reports
 *   process.cpuUsage() over IPC: CPU µs per event are the node process's user + system time
 *   over the run (compactions included) divided by the events.
 * - The node's client sends NDJSON bodies of ~1 MB (built before timing), 4 in flight on a
 *   keep-alive agent (4 connections); a run ends when the last answer (durable) is in. The
 *   client's own CPU time per event is reported on stderr: it must stay small next to the node's,
 *   or the client would be what is measured.
 * - The node child also reports its main thread's CPU time (from /proc, Linux): JavaScript runs
 *   there, LevelDB's writes and compactions on threads of their own, so the main thread bounds
 *   the events/s one node process can take; and ingest's writes after folding per event.
 * - Redis: its own `redis-server` on a free loopback port, `--save '' --appendonly yes
 *   --appendfsync everysec`: Redis write()s the AOF before it replies, so an acknowledged write is
 *   in the kernel's page cache, exactly what the node's acknowledgement means without --fsync;
 *   neither survives a machine crash, both survive a kill -9. Per event the same work as the
 *   demo rules: a pageview does INCRBY pv:<url>|<hour> 1, PFADD uv:<url>|<hour> <user>,
 *   SADD online:<site> <user>; every event does HSET profile:<user> country .. device .. url ..
 *   (a plain overwrite: Redis is spared the LWW-by-event-time check the node does, which errs in
 *   Redis's favour). The RESP bytes are built before timing (the keys are computed client-side:
 *   the node computes them itself from raw events, another difference in Redis's favour), sent
 *   with the same concurrency as the node's client (4 connections), each pipelining chunks of
 *   1,000 events, 2 chunks in flight per connection (HTTP/1.1 cannot pipeline; Redis may); a
 *   run ends when every reply is in. Redis CPU per event comes from /proc/PID/stat (Linux; 10 ms
 *   ticks).
 * - No Redis client library: RESP is a few lines over node:net, so no dependency was added.
 * - If redis-server is missing, the full run tries `apt-get install -y redis-server`; the quick
 *   run does not, and then reports the node's figures alone (saying so on stderr).
 * - Every figure is the median of 3 runs after a discarded warm-up, node and Redis interleaved in
 *   rotating order, each run on a fresh data directory / fresh Redis. Within a run, each
 *   contender first takes 40,000 other events (another seed) untimed, the same for both: a fresh
 *   node process runs its first bodies in V8's interpreter while the JIT compiles (a cold
 *   20,000-event run cost twice the CPU per event of a warm one), and a serving node is warm.
 */
import http from 'node:http'
import net from 'node:net'
import { fork, spawn, spawnSync, type ChildProcess } from 'node:child_process'
import { readFileSync, rmSync } from 'node:fs'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join, resolve } from 'node:path'
import { fileURLToPath } from 'node:url'
import { openNode } from '../src/node.js'
import { startServer } from '../src/server/http.js'
import { ingestStats } from '../src/ingest/ingest.js'
import { now, type Suite, type SuiteOptions } from './report.js'
import { generatePageviews, hourKey, type PageviewEvent } from './pageviews.js'

const BENCH = 'ingest'
const SELF = fileURLToPath(import.meta.url)
const VIEWS_FILE = fileURLToPath(new URL('../../bench/pageview-views.json', import.meta.url))
const BODY_BYTES = 1024 * 1024
/** Concurrent clients, for the node (one request in flight each) and for Redis alike. */
const CONNECTIONS = 4
const REDIS_CHUNK = 1000
/** Pipelined chunks in flight per Redis connection. */
const REDIS_IN_FLIGHT = 2

interface Sizes {
  events: number
  /** Events each contender takes, untimed, before the timed ones (another seed, same shape). */
  warmup: number
  runs: number
}

const sizes = (quick: boolean): Sizes => (quick ? { events: 30_000, warmup: 10_000, runs: 3 } : { events: 200_000, warmup: 40_000, runs: 3 })

// ---------------------------------------------------------------------------------------------
// The node child: `fork(ingest.js, ['serve', DIR])`

type ChildCommand = { cmd: 'cpu' } | { cmd: 'stop' }
/** cpu: the process's CPU µs (every thread), its main thread's, and ingest's totals so far. */
type ChildMessage = { kind: 'ready'; port: number } | { kind: 'cpu'; us: number; mainUs: number; events: number; writes: number } | { kind: 'error'; message: string }

async function serve(dir: string): Promise<void> {
  const send = (m: ChildMessage) => process.send?.(m)
  const views = (JSON.parse(readFileSync(VIEWS_FILE, 'utf8')) as { views: Record<string, unknown> }).views
  const log = (line: string) => void process.stderr.write(`${line}\n`)
  const node = await openNode({ id: 'bench', dataDir: dir, views, log })
  const server = await startServer(node, { host: '127.0.0.1', port: 0, maxBody: 1024 * 1024, log })
  process.on('message', (m: ChildCommand) => {
    if (m.cmd === 'cpu') {
      const u = process.cpuUsage()
      const st = ingestStats(node)
      // The main thread is the task whose id is the process id.
      send({ kind: 'cpu', us: u.user + u.system, mainUs: procCpuUs(process.pid, process.pid), events: st.events, writes: st.writes })
    } else if (m.cmd === 'stop') {
      void server
        .close()
        .then(() => node.close())
        .then(() => process.exit(0))
    }
  })
  process.on('disconnect', () => process.exit(1))
  send({ kind: 'ready', port: Number(new URL(server.url).port) })
}

// ---------------------------------------------------------------------------------------------
// Plumbing: children, dirs, exit hook

const liveDirs = new Set<string>()
const liveChildren = new Set<ChildProcess>()
let hooked = false
function installExitHook(): void {
  if (hooked) return
  hooked = true
  process.once('exit', () => {
    for (const c of liveChildren) c.kill('SIGKILL')
    for (const d of liveDirs) rmSync(d, { recursive: true, force: true })
  })
}

async function tempDir(what: string): Promise<string> {
  const d = await mkdtemp(join(tmpdir(), `sl-bench-ingest-${what}-`))
  liveDirs.add(d)
  return d
}

async function removeDir(d: string): Promise<void> {
  await rm(d, { recursive: true, force: true })
  liveDirs.delete(d)
}

function childEnv(): NodeJS.ProcessEnv {
  const env = { ...process.env }
  delete env.NODE_OPTIONS
  return env
}

function track(proc: ChildProcess): Promise<number | null> {
  liveChildren.add(proc)
  return new Promise((res) => {
    proc.once('close', (code) => {
      liveChildren.delete(proc)
      res(code)
    })
  })
}

interface NodeChild {
  port: number
  cpu(): Promise<Extract<ChildMessage, { kind: 'cpu' }>>
  stop(): Promise<void>
}

async function startNodeChild(dir: string): Promise<NodeChild> {
  const proc = fork(SELF, ['serve', dir], { env: childEnv(), stdio: ['ignore', 'ignore', 'pipe', 'ipc'] })
  const exited = track(proc)
  let stderr = ''
  proc.stderr?.setEncoding('utf8').on('data', (s: string) => (stderr += s))
  const waiters: Array<(m: ChildMessage) => void> = []
  proc.on('message', (m: ChildMessage) => waiters.shift()?.(m))
  const next = () =>
    new Promise<ChildMessage>((res, rej) => {
      waiters.push(res)
      void exited.then((code) => rej(new Error(`the node child exited (${code}):\n${stderr}`)))
    })
  const ready = await next()
  if (ready.kind !== 'ready') throw new Error(`node child: ${ready.kind === 'error' ? ready.message : ready.kind}`)
  return {
    port: ready.port,
    async cpu() {
      const p = next()
      proc.send({ cmd: 'cpu' } satisfies ChildCommand)
      const m = await p
      if (m.kind !== 'cpu') throw new Error('node child: unexpected answer')
      return m
    },
    async stop() {
      proc.send({ cmd: 'stop' } satisfies ChildCommand)
      const code = await exited
      if (code !== 0) throw new Error(`the node child ended with ${code}:\n${stderr}`)
    },
  }
}

// ---------------------------------------------------------------------------------------------
// The node contender

/** The events as NDJSON bodies of about BODY_BYTES, each ending with a newline. */
function bodies(events: readonly PageviewEvent[]): Buffer[] {
  const out: Buffer[] = []
  let cur: string[] = []
  let bytes = 0
  for (const e of events) {
    const line = `${JSON.stringify(e)}\n`
    cur.push(line)
    bytes += line.length
    if (bytes >= BODY_BYTES) {
      out.push(Buffer.from(cur.join('')))
      cur = []
      bytes = 0
    }
  }
  if (cur.length > 0) out.push(Buffer.from(cur.join('')))
  return out
}

function post(agent: http.Agent, port: number, body: Buffer): Promise<void> {
  return new Promise((res, rej) => {
    const req = http.request({ host: '127.0.0.1', port, path: '/ingest', method: 'POST', agent, headers: { 'content-type': 'application/x-ndjson', 'content-length': body.length } }, (r) => {
      const parts: Buffer[] = []
      r.on('data', (c: Buffer) => parts.push(c))
      r.on('end', () => (r.statusCode === 200 ? res() : rej(new Error(`POST /ingest: ${r.statusCode} ${Buffer.concat(parts).toString('utf8').slice(0, 300)}`))))
      r.on('error', rej)
    })
    req.on('error', rej)
    req.end(body)
  })
}

async function inFlight<T>(items: readonly T[], n: number, f: (x: T) => Promise<void>): Promise<void> {
  let next = 0
  await Promise.all(
    Array.from({ length: Math.min(n, items.length) }, async () => {
      while (next < items.length) await f(items[next++] as T)
    }),
  )
}

interface Run {
  perS: number
  cpuUsPerEvent: number
  /** Node only: main-thread CPU µs per event, writes per event, the client's CPU µs per event. */
  mainUsPerEvent?: number
  writesPerEvent?: number
  clientUsPerEvent?: number
}

async function runNode(warm: readonly Buffer[], bodyList: readonly Buffer[], events: number): Promise<Run> {
  const dir = await tempDir('node')
  const child = await startNodeChild(dir)
  const agent = new http.Agent({ keepAlive: true, maxSockets: CONNECTIONS })
  try {
    await inFlight(warm, CONNECTIONS, (b) => post(agent, child.port, b))
    const c0 = await child.cpu()
    const client0 = process.cpuUsage()
    const t0 = now()
    await inFlight(bodyList, CONNECTIONS, (b) => post(agent, child.port, b))
    const ms = now() - t0
    const client = process.cpuUsage(client0)
    const c1 = await child.cpu()
    return {
      perS: events / (ms / 1000),
      cpuUsPerEvent: (c1.us - c0.us) / events,
      mainUsPerEvent: (c1.mainUs - c0.mainUs) / events,
      writesPerEvent: (c1.writes - c0.writes) / (c1.events - c0.events),
      clientUsPerEvent: (client.user + client.system) / events,
    }
  } finally {
    agent.destroy()
    await child.stop()
    await removeDir(dir)
  }
}

// ---------------------------------------------------------------------------------------------
// The Redis contender

function resp(args: readonly string[]): string {
  let s = `*${args.length}\r\n`
  for (const a of args) s += `$${Buffer.byteLength(a)}\r\n${a}\r\n`
  return s
}

/** Per chunk of REDIS_CHUNK events: the pipelined commands and how many replies they get. */
function redisChunks(events: readonly PageviewEvent[]): Array<{ bytes: Buffer; replies: number }> {
  const out: Array<{ bytes: Buffer; replies: number }> = []
  for (let i = 0; i < events.length; i += REDIS_CHUNK) {
    let s = ''
    let replies = 0
    for (const e of events.slice(i, i + REDIS_CHUNK)) {
      if (e.kind === 'pageview') {
        const k = hourKey(e.url, e.ts)
        s += resp(['INCRBY', `pv:${k}`, '1']) + resp(['PFADD', `uv:${k}`, e.user]) + resp(['SADD', `online:${e.site}`, e.user])
        replies += 3
      }
      s += resp(['HSET', `profile:${e.user}`, 'country', e.country, 'device', e.device, 'url', e.url])
      replies++
    }
    out.push({ bytes: Buffer.from(s), replies })
  }
  return out
}

function redisBinary(): string | null {
  const r = spawnSync('sh', ['-c', 'command -v redis-server'], { encoding: 'utf8' })
  const p = r.stdout.trim()
  return r.status === 0 && p !== '' ? p : null
}

/** Tries to install redis-server with apt-get (as root, on Debian-like systems). */
function installRedis(progress: (m: string) => void): string | null {
  if (typeof process.getuid !== 'function' || process.getuid() !== 0) return null
  progress('  redis-server is not installed: trying apt-get install -y redis-server')
  const r = spawnSync('apt-get', ['install', '-y', 'redis-server'], { stdio: ['ignore', 'ignore', 'pipe'], encoding: 'utf8', timeout: 300_000 })
  if (r.status !== 0) progress(`  apt-get failed (${r.status ?? r.error?.message}): ${(r.stderr ?? '').trim().split('\n').slice(-1)[0] ?? ''}`)
  return redisBinary()
}

function freePort(): Promise<number> {
  return new Promise((res, rej) => {
    const s = net.createServer()
    s.once('error', rej)
    s.listen(0, '127.0.0.1', () => {
      const port = (s.address() as net.AddressInfo).port
      s.close(() => res(port))
    })
  })
}

/** A connection that sends pipelined commands and counts replies (all integer replies here). */
class RespConn {
  private pending: Array<{ left: number; done: () => void; fail: (e: Error) => void }> = []
  private lineStart = true
  private error: string | null = null

  constructor(private readonly socket: net.Socket) {
    socket.on('data', (buf: Buffer) => this.onData(buf))
    socket.on('error', (err) => this.failAll(err))
    socket.on('close', () => this.failAll(new Error('redis closed the connection')))
  }

  static connect(port: number): Promise<RespConn> {
    return new Promise((res, rej) => {
      const s = net.connect(port, '127.0.0.1', () => {
        s.off('error', rej)
        s.setNoDelay(true)
        res(new RespConn(s))
      })
      s.once('error', rej)
    })
  }

  private onData(buf: Buffer): void {
    let from = 0
    for (;;) {
      if (this.lineStart && from < buf.length && buf[from] === 0x2d) this.error ??= buf.toString('utf8', from, Math.min(buf.length, from + 200))
      const nl = buf.indexOf(0x0a, from)
      if (nl < 0) {
        this.lineStart = from >= buf.length
        return
      }
      from = nl + 1
      this.lineStart = true
      const head = this.pending[0]
      if (!head) continue
      if (--head.left === 0) {
        this.pending.shift()
        if (this.error !== null) head.fail(new Error(`redis: ${this.error}`))
        else head.done()
      }
      if (from >= buf.length) return
    }
  }

  private failAll(err: Error): void {
    for (const p of this.pending.splice(0)) p.fail(err)
  }

  /** Sends `bytes` and resolves once `replies` replies to them are in (replies come in order). */
  send(bytes: Buffer, replies: number): Promise<void> {
    return new Promise((done, fail) => {
      this.pending.push({ left: replies, done, fail })
      this.socket.write(bytes)
    })
  }

  close(): void {
    this.socket.removeAllListeners('close')
    this.socket.destroy()
  }
}

interface RedisServer {
  port: number
  pid: number
  stop(): Promise<void>
}

async function startRedis(bin: string, dir: string): Promise<RedisServer> {
  const port = await freePort()
  const proc = spawn(bin, ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'yes', '--appendfsync', 'everysec', '--dir', dir, '--daemonize', 'no', '--protected-mode', 'yes', '--logfile', ''], {
    stdio: ['ignore', 'ignore', 'pipe'],
  })
  const exited = track(proc)
  let stderr = ''
  proc.stderr?.setEncoding('utf8').on('data', (s: string) => (stderr += s))
  const t0 = now()
  for (;;) {
    try {
      const c = await RespConn.connect(port)
      await c.send(Buffer.from(resp(['PING'])), 1)
      c.close()
      break
    } catch (err) {
      if (proc.exitCode !== null || now() - t0 > 20_000) throw new Error(`redis-server did not start: ${(err as Error).message}\n${stderr}`)
      await new Promise((r) => setTimeout(r, 20))
    }
  }
  return {
    port,
    pid: proc.pid as number,
    async stop() {
      proc.kill('SIGTERM')
      await exited
    },
  }
}

/** CPU µs a process (or one of its threads) has used, from /proc (Linux); NaN elsewhere. */
function procCpuUs(pid: number, tid?: number): number {
  try {
    const stat = readFileSync(tid === undefined ? `/proc/${pid}/stat` : `/proc/${pid}/task/${tid}/stat`, 'utf8')
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ')
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after "(comm) state".
    return ((Number(fields[11]) + Number(fields[12])) * 1e6) / 100
  } catch {
    return NaN
  }
}

type Chunk = { bytes: Buffer; replies: number }

/** Sends the chunks over the connections, each taking the next chunk, REDIS_IN_FLIGHT written ahead of their replies. */
async function pipeline(conns: readonly RespConn[], chunks: readonly Chunk[]): Promise<void> {
  let next = 0
  await Promise.all(
    conns.map(async (conn) => {
      const inflight: Promise<void>[] = []
      while (next < chunks.length) {
        const c = chunks[next++] as Chunk
        inflight.push(conn.send(c.bytes, c.replies))
        if (inflight.length >= REDIS_IN_FLIGHT) await inflight.shift()
      }
      await Promise.all(inflight)
    }),
  )
}

async function runRedis(bin: string, warm: readonly Chunk[], chunks: readonly Chunk[], events: number): Promise<Run> {
  const dir = await tempDir('redis')
  const server = await startRedis(bin, dir)
  const conns: RespConn[] = []
  try {
    for (let i = 0; i < CONNECTIONS; i++) conns.push(await RespConn.connect(server.port))
    await pipeline(conns, warm)
    const cpu0 = procCpuUs(server.pid)
    const t0 = now()
    await pipeline(conns, chunks)
    const ms = now() - t0
    const cpu1 = procCpuUs(server.pid)
    return { perS: events / (ms / 1000), cpuUsPerEvent: (cpu1 - cpu0) / events }
  } finally {
    for (const conn of conns) conn.close()
    await server.stop()
    await removeDir(dir)
  }
}

// ---------------------------------------------------------------------------------------------

async function run(o: SuiteOptions): Promise<void> {
  installExitHook()
  const z = sizes(o.quick)
  const progress = (m: string) => o.report.progress(m)
  const hour = 3_600_000
  const start = Date.now() - 6 * hour - 60_000
  const events = generatePageviews({ seed: 7, events: z.events, start, durationMs: 6 * hour, urls: 2000, users: 100_000 })
  const warmEvents = generatePageviews({ seed: 8, events: z.warmup, start, durationMs: 6 * hour, urls: 2000, users: 100_000 })
  const bodyList = bodies(events)
  const warmBodies = bodies(warmEvents)
  let bin = redisBinary()
  if (bin === null && !o.quick) bin = installRedis(progress)
  if (bin === null) progress(`  redis-server is not installed${o.quick ? ' (the quick run does not install it)' : ' and could not be installed'}: reporting the node's figures without the Redis baseline`)
  const chunks = bin !== null ? redisChunks(events) : []
  const warmChunks = bin !== null ? redisChunks(warmEvents) : []
  progress(
    `  ${z.events} events (after ${z.warmup} untimed), ${CONNECTIONS} connections each; node: ${bodyList.length} bodies of ~1 MB, one in flight per connection${bin ? `; redis: ${chunks.length} pipelined chunks of ${REDIS_CHUNK} events, ${REDIS_IN_FLIGHT} in flight per connection (${bin})` : ''}`,
  )

  const nodeRuns: Run[] = []
  const redisRuns: Run[] = []
  for (let r = -1; r < z.runs; r++) {
    const order = bin !== null && r % 2 !== 0 ? ['redis', 'node'] : ['node', 'redis']
    for (const who of order) {
      if (who === 'redis' && bin === null) continue
      const res = who === 'node' ? await runNode(warmBodies, bodyList, z.events) : await runRedis(bin as string, warmChunks, chunks, z.events)
      const detail =
        res.mainUsPerEvent === undefined
          ? ''
          : ` (main thread ${res.mainUsPerEvent.toFixed(1)}; ${(res.writesPerEvent as number).toFixed(2)} writes/event; client ${(res.clientUsPerEvent as number).toFixed(1)} CPU µs/event)`
      progress(`    ${r < 0 ? 'warm-up' : `run ${r + 1}/${z.runs}`} ${who}: ${Math.round(res.perS)} events/s, ${res.cpuUsPerEvent.toFixed(1)} CPU µs/event${detail}`)
      if (r >= 0) (who === 'node' ? nodeRuns : redisRuns).push(res)
    }
  }
  const withRedis = bin !== null
  o.report.add(BENCH, {
    figure: 'ingest_events_per_s',
    samples: nodeRuns.map((x) => x.perS),
    unit: 'events/s',
    ...(withRedis ? { baseline: { name: 'redis_pipeline_events_per_s', samples: redisRuns.map((x) => x.perS) }, goal: '>= 1' } : {}),
  })
  const redisCpu = redisRuns.map((x) => x.cpuUsPerEvent)
  o.report.add(BENCH, {
    figure: 'ingest_cpu_us_per_event',
    samples: nodeRuns.map((x) => x.cpuUsPerEvent),
    unit: 'µs/event',
    ...(withRedis && redisCpu.every((x) => Number.isFinite(x) && x > 0) ? { baseline: { name: 'redis_cpu_us_per_event', samples: redisCpu } } : {}),
  })
  const main = nodeRuns.map((x) => x.mainUsPerEvent as number)
  if (main.every((x) => Number.isFinite(x))) {
    o.report.add(BENCH, {
      figure: 'ingest_main_thread_cpu_us_per_event',
      samples: main,
      unit: 'µs/event',
      ...(withRedis && redisCpu.every((x) => Number.isFinite(x) && x > 0) ? { baseline: { name: 'redis_cpu_us_per_event', samples: redisCpu } } : {}),
    })
  }
  o.report.add(BENCH, { figure: 'ingest_writes_per_event', samples: nodeRuns.map((x) => x.writesPerEvent as number), unit: 'writes/event' })
}

export const suite: Suite = { name: BENCH, run }

// Only when forked as the node child; bench/main.ts imports this module for `suite`.
if (process.argv[1] !== undefined && SELF === resolve(process.argv[1]) && process.argv[2] === 'serve' && process.argv[3] !== undefined) {
  serve(process.argv[3]).catch((err: unknown) => {
    process.send?.({ kind: 'error', message: err instanceof Error ? (err.stack ?? err.message) : String(err) })
    process.exit(1)
  })
}
