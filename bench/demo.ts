/**
 * The `demo` suite: what `npm start` costs and whether it stays flat over time.
 *
 * - demo_start_to_dashboard_ms: from spawning `speedlayer demo` (3 nodes, fresh directory) to its
 *   `dashboard:` line, i.e. three nodes up and meshed-to-be, generator and batch layer running;
 *   baseline: one `speedlayer start` to its ready line, measured in the same run, interleaved.
 * - For the default rate (200 events/s) and 10x (2000): the whole demo is sampled from
 *   /proc/PID/stat and /proc/PID/status over a run of 10 minutes each (`--quick`: 12 s, with
 *   5 s buckets so the batch layer runs too). RSS: the demo process and its nodes; CPU: those and
 *   the `speedlayer batch` runs it reaps, which /proc bills to it as cutime/cstime. RSS and CPU
 *   of the end window (the last 10% of the samples) are reported against the start window (10%
 *   to 20% into the run, after the sessions have ramped up): the goal is flat, a ratio near 1.
 *   The events per second the nodes acknowledged after the ramp-up say whether the cluster keeps
 *   up with the rate asked.
 *
 * Every demo runs in a temporary working directory (its .demo-data goes there) on free ports, is
 * stopped with SIGINT, and the suite waits until none of its processes is left.
 *
 * The dashboard's figures (bundle size gzipped, time to the first chart drawn, subscription
 * messages/s per browser at 10x) belong to this suite too: see DURING_10X and the end of run().
 */
import { spawn, type ChildProcess } from 'node:child_process'
import { existsSync, readFileSync, readdirSync, rmSync } from 'node:fs'
import { mkdtemp, rm } from 'node:fs/promises'
import net from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { median, now, type Suite, type SuiteOptions } from './report.js'

const BENCH = 'demo'
const CLI = fileURLToPath(new URL('../src/cli/main.js', import.meta.url))
const DEFAULT_RATE = 200
/** Linux clock ticks per second (USER_HZ): /proc times are in these. */
const CLK_TCK = 100

interface Plan {
  startRuns: number
  runMs: number
  sampleMs: number
  bucket?: string
}

const plan = (quick: boolean): Plan => (quick ? { startRuns: 3, runMs: 12_000, sampleMs: 1000, bucket: '5s' } : { startRuns: 3, runMs: 600_000, sampleMs: 10_000 })

// ---------------------------------------------------------------------------------------------
// Processes

const liveDirs = new Set<string>()
const liveProcs = new Set<ChildProcess>()
let hooked = false
function installExitHook(): void {
  if (hooked) return
  hooked = true
  const cleanup = () => {
    // The demo's nodes close by themselves once the demo is gone.
    for (const p of liveProcs) p.kill('SIGKILL')
    for (const d of liveDirs) rmSync(d, { recursive: true, force: true })
  }
  process.once('exit', cleanup)
  // Ctrl-C on a 20-minute run: Node's default would exit without 'exit' handlers, orphaning the
  // demo. The demo is stopped as a user stops it, so its nodes are gone before their dirs go.
  for (const sig of ['SIGINT', 'SIGTERM'] as const) {
    process.once(sig, () => {
      const closing = [...liveProcs].map((p) => new Promise<void>((r) => (p.exitCode !== null || p.signalCode !== null ? r() : p.once('close', () => r()))))
      for (const p of liveProcs) p.kill('SIGINT')
      const late = new Promise<void>((r) => setTimeout(r, 30_000).unref())
      void Promise.race([Promise.all(closing), late]).then(() => {
        cleanup()
        process.exit(130)
      })
    })
  }
}

function childEnv(extra: Record<string, string> = {}): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = { ...process.env, ...extra }
  delete env.NODE_OPTIONS
  return env
}

async function freePort(): Promise<number> {
  const s = net.createServer()
  await new Promise<void>((resolve, reject) => {
    s.once('error', reject)
    s.listen(0, '127.0.0.1', () => resolve())
  })
  const port = (s.address() as net.AddressInfo).port
  await new Promise<void>((r) => s.close(() => r()))
  return port
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0)
    return true
  } catch {
    return false
  }
}

interface ProcStat {
  ppid: number
  /** utime + stime (+ cutime + cstime when asked), in clock ticks. */
  ticks: number
  rssKb: number
}

function readProc(pid: number, withChildren: boolean): ProcStat | null {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8')
    // Fields after "(comm)": state ppid ... utime(14) stime(15) cutime(16) cstime(17), 1-based overall.
    const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ')
    const n = (i: number) => Number(f[i - 3])
    const ticks = n(14) + n(15) + (withChildren ? n(16) + n(17) : 0)
    const rss = /^VmRSS:\s+([0-9]+) kB/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))
    return { ppid: n(4), ticks, rssKb: rss ? Number(rss[1]) : 0 }
  } catch {
    return null
  }
}

/** The pid and its descendants. */
function tree(root: number): number[] {
  const kids = new Map<number, number[]>()
  for (const name of readdirSync('/proc')) {
    if (!/^[0-9]+$/.test(name)) continue
    const s = readProc(Number(name), false)
    if (!s) continue
    const list = kids.get(s.ppid) ?? []
    list.push(Number(name))
    kids.set(s.ppid, list)
  }
  const out: number[] = []
  const todo = [root]
  while (todo.length > 0) {
    const p = todo.pop() as number
    out.push(p)
    todo.push(...(kids.get(p) ?? []))
  }
  return out
}

interface Sample {
  at: number
  rssMb: number
  /** CPU seconds used so far by the demo's processes (the demo's reaped children included). */
  cpuS: number
  processes: number
}

/**
 * RSS: the demo and its nodes (`resident`), not the `speedlayer batch` runs of a few hundred ms
 * that a sample happens to catch: they would only add noise to a figure about growth. CPU: every
 * process, the batch runs included: the demo reaps them, so /proc bills their CPU to its cutime.
 */
function sample(root: number, resident: ReadonlySet<number>): Sample {
  let rssKb = 0
  let ticks = 0
  const pids = tree(root)
  for (const pid of pids) {
    const s = readProc(pid, pid === root)
    if (!s) continue
    if (resident.has(pid)) rssKb += s.rssKb
    ticks += s.ticks
  }
  return { at: now(), rssMb: rssKb / 1024, cpuS: ticks / CLK_TCK, processes: pids.length }
}

export interface RunningDemo {
  proc: ChildProcess
  pid: number
  cwd: string
  /** The node URLs, from its stdout. */
  nodes: string[]
  /** Acknowledged events as the status lines report them: [time, total]. */
  sent: Array<[number, number]>
  stderr: string
  /** ms from spawn to the dashboard line. */
  startMs: number
}

async function startDemo(rate: number, env: Record<string, string>): Promise<RunningDemo> {
  installExitHook()
  const cwd = await mkdtemp(join(tmpdir(), 'sl-bench-demo-'))
  liveDirs.add(cwd)
  const t0 = now()
  const proc = spawn(process.execPath, [CLI, 'demo', '--nodes', '3', '--rate', String(rate), '--port', String(await freePort())], { cwd, env: childEnv(env), stdio: ['ignore', 'pipe', 'pipe'] })
  liveProcs.add(proc)
  proc.once('close', () => liveProcs.delete(proc))
  const demo: RunningDemo = { proc, pid: proc.pid as number, cwd, nodes: [], sent: [], stderr: '', startMs: NaN }
  let errBuf = ''
  proc.stderr?.setEncoding('utf8').on('data', (s: string) => {
    errBuf += s
    let nl: number
    while ((nl = errBuf.indexOf('\n')) >= 0) {
      const line = errBuf.slice(0, nl)
      errBuf = errBuf.slice(nl + 1)
      const m = /^demo: ([0-9]+) events sent/.exec(line)
      if (m) demo.sent.push([now(), Number(m[1])])
      // Keep the head and the tail of the log for error messages, not ten minutes of it.
      if (demo.stderr.length < 20_000) demo.stderr += `${line}\n`
    }
  })
  await new Promise<void>((resolve, reject) => {
    let out = ''
    proc.stdout?.setEncoding('utf8').on('data', (s: string) => {
      out += s
      for (const m of out.matchAll(/^node[0-9]+: (\S+)$/gm)) if (!demo.nodes.includes(m[1] as string)) demo.nodes.push(m[1] as string)
      if (/^dashboard: /m.test(out) && Number.isNaN(demo.startMs)) {
        demo.startMs = now() - t0
        resolve()
      }
    })
    proc.once('close', (code) => reject(new Error(`the demo exited (code ${code}) before its dashboard line\n${demo.stderr}`)))
  })
  return demo
}

/** SIGINT, then waits for the demo's exit and for every one of its processes to be gone. */
async function stopDemo(d: RunningDemo): Promise<void> {
  const pids = tree(d.pid)
  const exited = new Promise<void>((r) => (d.proc.exitCode !== null || d.proc.signalCode !== null ? r() : d.proc.once('close', () => r())))
  d.proc.kill('SIGINT')
  await exited
  const deadline = Date.now() + 30_000
  while (pids.some(alive)) {
    if (Date.now() > deadline) throw new Error(`processes of the demo still running 30 s after it exited: ${pids.filter(alive).join(', ')}`)
    await new Promise((r) => setTimeout(r, 50))
  }
  if (d.proc.exitCode !== 0) throw new Error(`the demo exited with ${d.proc.exitCode ?? d.proc.signalCode} after SIGINT\n${d.stderr}`)
  await rm(d.cwd, { recursive: true, force: true })
  liveDirs.delete(d.cwd)
}

/** One `speedlayer start` to its ready line: the floor under the demo's start-up. */
async function nodeStartMs(): Promise<number> {
  installExitHook()
  const dir = await mkdtemp(join(tmpdir(), 'sl-bench-demo-node-'))
  liveDirs.add(dir)
  const t0 = now()
  const proc = spawn(process.execPath, [CLI, 'start', '--id', 'n1', '--port', '0', '--data', join(dir, 'data'), '--views', fileURLToPath(new URL('../../demo/views.json', import.meta.url))], {
    env: childEnv(),
    stdio: ['ignore', 'pipe', 'pipe'],
  })
  liveProcs.add(proc)
  const closed = new Promise<void>((r) => proc.once('close', () => r()))
  const ms = await new Promise<number>((resolve, reject) => {
    let out = ''
    proc.stdout?.setEncoding('utf8').on('data', (s: string) => {
      out += s
      if (out.includes('\n')) resolve(now() - t0)
    })
    void closed.then(() => reject(new Error('speedlayer start exited before its ready line')))
  })
  proc.kill('SIGTERM')
  await closed
  liveProcs.delete(proc)
  await rm(dir, { recursive: true, force: true })
  liveDirs.delete(dir)
  return ms
}

// ---------------------------------------------------------------------------------------------
// The runs

/**
 * Work done while the 10x demo runs, after the start window: the dashboard's figures that need a
 * loaded demo (subscription messages/s per browser) go here.
 */
export const DURING_10X: Array<(demo: RunningDemo, opts: SuiteOptions) => Promise<void>> = []

interface LoadResult {
  samples: Sample[]
  startWindow: Sample[]
  endWindow: Sample[]
  /** CPU % of one core over the intervals that end in each window. */
  startCpu: number[]
  endCpu: number[]
  /** Acknowledged events/s over each third of the run after the ramp-up. */
  eventsPerS: number[]
}

async function loadRun(rate: number, p: Plan, opts: SuiteOptions, during: typeof DURING_10X): Promise<LoadResult> {
  const env: Record<string, string> = { SPEEDLAYER_DEMO_STATUS: `${p.sampleMs}ms`, SPEEDLAYER_DEMO_SEED: '1' }
  if (p.bucket) env.SPEEDLAYER_DEMO_BUCKET = p.bucket
  const demo = await startDemo(rate, env)
  // At the dashboard line, the demo's children are its nodes and nothing else yet.
  const resident = new Set(tree(demo.pid))
  const samples: Sample[] = []
  const n = Math.round(p.runMs / p.sampleMs)
  const startIdx = Math.max(1, Math.floor(n * 0.1))
  const startEnd = Math.max(startIdx + 3, Math.floor(n * 0.2))
  const endFrom = Math.min(n - 3, Math.floor(n * 0.9))
  try {
    const t0 = now()
    for (let i = 0; i <= n; i++) {
      const wait = t0 + i * p.sampleMs - now()
      if (wait > 0) await new Promise((r) => setTimeout(r, wait))
      if (demo.proc.exitCode !== null) throw new Error(`the demo exited during the run\n${demo.stderr}`)
      const s = sample(demo.pid, resident)
      samples.push(s)
      const prev = samples[samples.length - 2]
      const cpu = prev ? ((s.cpuS - prev.cpuS) / ((s.at - prev.at) / 1000)) * 100 : 0
      opts.report.progress(`    rate ${rate}: ${((s.at - t0) / 1000).toFixed(0)} s, ${s.processes} processes, RSS ${s.rssMb.toFixed(0)} MB, CPU ${cpu.toFixed(0)}%`)
      if (i === startEnd) for (const f of during) await f(demo, opts)
    }
  } finally {
    await stopDemo(demo).catch((err: unknown) => {
      demo.proc.kill('SIGKILL')
      throw err
    })
  }
  const cpuPct: number[] = []
  for (let i = 1; i < samples.length; i++) {
    const a = samples[i - 1] as Sample
    const b = samples[i] as Sample
    cpuPct.push(((b.cpuS - a.cpuS) / ((b.at - a.at) / 1000)) * 100)
  }
  // cpuPct[i - 1] is the interval that ends at samples[i].
  // Acknowledgements come in bursts (one request in flight per node): rates over thirds of the
  // steady part of the run, not between consecutive status lines.
  const steady = demo.sent.filter(([t]) => t >= (samples[startEnd] as Sample).at)
  const eventsPerS: number[] = []
  if (steady.length >= 4) {
    for (let k = 0; k < 3; k++) {
      const [ta, a] = steady[Math.floor((k * (steady.length - 1)) / 3)] as [number, number]
      const [tb, b] = steady[Math.floor(((k + 1) * (steady.length - 1)) / 3)] as [number, number]
      if (tb > ta) eventsPerS.push(((b - a) * 1000) / (tb - ta))
    }
  }
  return {
    samples,
    startWindow: samples.slice(startIdx, startEnd),
    endWindow: samples.slice(endFrom),
    startCpu: cpuPct.slice(startIdx - 1, startEnd - 1),
    endCpu: cpuPct.slice(endFrom - 1),
    eventsPerS,
  }
}

async function run(opts: SuiteOptions): Promise<void> {
  if (!existsSync(CLI)) throw new Error(`${CLI} is missing: run npm run build first`)
  if (!existsSync('/proc/self/stat')) throw new Error('the demo suite reads /proc (Linux)')
  const p = plan(opts.quick)
  const { report } = opts

  // Start-up: demo to dashboard line vs one node to its ready line, interleaved.
  const demoStarts: number[] = []
  const nodeStarts: number[] = []
  for (let i = 0; i < p.startRuns; i++) {
    nodeStarts.push(await nodeStartMs())
    const d = await startDemo(DEFAULT_RATE, {})
    demoStarts.push(d.startMs)
    await stopDemo(d)
    report.progress(`    start ${i + 1}/${p.startRuns}: demo ${d.startMs.toFixed(0)} ms to its dashboard line, one node ${nodeStarts[i]?.toFixed(0)} ms to its ready line`)
  }
  report.add(BENCH, { figure: 'demo_start_to_dashboard_ms', samples: demoStarts, unit: 'ms', baseline: { name: 'node_start_to_ready_ms', samples: nodeStarts } })

  for (const rate of [DEFAULT_RATE, DEFAULT_RATE * 10]) {
    report.progress(`  rate ${rate} events/s for ${p.runMs / 1000} s${p.bucket ? ` (buckets ${p.bucket})` : ''}`)
    const r = await loadRun(rate, p, opts, rate === DEFAULT_RATE * 10 ? DURING_10X : [])
    report.add(BENCH, {
      figure: `demo_rss_mb_rate_${rate}`,
      samples: r.endWindow.map((s) => s.rssMb),
      unit: 'MB',
      baseline: { name: `demo_rss_mb_rate_${rate}_start`, samples: r.startWindow.map((s) => s.rssMb) },
      goal: '<= 1.2',
    })
    report.add(BENCH, {
      figure: `demo_cpu_pct_rate_${rate}`,
      samples: r.endCpu,
      unit: '% of a core',
      baseline: { name: `demo_cpu_pct_rate_${rate}_start`, samples: r.startCpu },
      goal: '<= 1.2',
    })
    if (r.eventsPerS.length >= 3) {
      report.add(BENCH, { figure: `demo_events_per_s_rate_${rate}`, samples: r.eventsPerS, unit: 'events/s', goal: `>= ${Math.round(rate * 0.95)}` })
    } else report.progress(`    rate ${rate}: too few status lines after the ramp-up for events/s (${r.eventsPerS.length})`)
    report.progress(`    rate ${rate}: RSS ${median(r.startWindow.map((s) => s.rssMb)).toFixed(0)} -> ${median(r.endWindow.map((s) => s.rssMb)).toFixed(0)} MB`)
  }

  // The dashboard's own figures (bundle size gzipped, start to first chart drawn) are added here.
}

export const suite: Suite = { name: BENCH, run }
