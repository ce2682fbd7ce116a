/**
 * `speedlayer demo [--nodes 3] [--rate N] [--port 7001]` (what `npm start` runs): a small Lambda
 * Architecture on one machine.
 *
 *   generator ──▶ master dataset (./.demo-data/master.ndjson, append-only)
 *       │                    │
 *       │ POST /ingest        └─▶ batch layer: exact views per bucket ──▶ speedlayer batch (every bucket)
 *       ▼
 *   node1 ◀──▶ node2 ◀──▶ node3 ...   (speedlayer start child processes, full mesh, dashboard at /)
 *
 * Stdout: one line per node, then `dashboard: URL`. Stderr: the nodes' logs (prefixed), batch
 * imports as they land, and a status line every 10 s. SIGINT/SIGTERM stop every node cleanly
 * (a repeated signal changes nothing); if this process is killed outright, the nodes notice that
 * their supervisor is gone and close by themselves.
 *
 * Environment (for tests and benchmarks; the defaults are the demo):
 *   SPEEDLAYER_DEMO_BUCKET=5s    bucket size of every bucketed view (default: demo/views.json's 1m);
 *                                the batch layer runs once per bucket
 *   SPEEDLAYER_DEMO_STATUS=2s    period of the status line (default 10s)
 *   SPEEDLAYER_DEMO_SEED=42      seed of the generator (default: random)
 *   SPEEDLAYER_DEMO_RETENTION=30 complete buckets the batch view keeps (default 30)
 *   SPEEDLAYER_DEMO_NODE_FLAGS="--cpu-prof --cpu-prof-dir=/tmp/p"   Node.js flags for the node
 *                                processes (profiling them: NODE_OPTIONS refuses --cpu-prof)
 */
import { parseArgs } from 'node:util'
import { writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { CommandError, UsageError, parseDuration, parsePort } from './parse.js'
import { parseBucketSize } from '../store/definition.js'
import { isPlainObject } from '../../crdts/validate.js'
import { Cluster, choosePorts } from '../demo/cluster.js'
import { claimDataDir, type DataDir } from '../demo/dataDir.js'
import { DEMO_SITES, PageviewGenerator } from '../demo/generator.js'
import { MasterWriter } from '../demo/master.js'
import { IngestSender } from '../demo/sender.js'
import { BatchLayer } from '../demo/batchLayer.js'

export const DEMO_USAGE = 'usage: speedlayer demo [--nodes 3] [--rate EVENTS_PER_S] [--port 7001]'

const CLI = fileURLToPath(new URL('./main.js', import.meta.url))
const VIEWS_FILE = fileURLToPath(new URL('../../../demo/views.json', import.meta.url))
const TICK_MS = 100

interface DemoConfig {
  nodes: number
  rate: number
  port: number
  bucket?: string
  statusMs: number
  seed: number
  retention: number
  nodeFlags: string[]
}

function parseDemoArgs(argv: string[], env: NodeJS.ProcessEnv): DemoConfig {
  let values
  try {
    values = parseArgs({
      args: argv,
      strict: true,
      options: { nodes: { type: 'string', default: '3' }, rate: { type: 'string', default: '200' }, port: { type: 'string', default: '7001' } },
    }).values
  } catch (err) {
    throw new UsageError(`${(err as Error).message}\n${DEMO_USAGE}`)
  }
  const nodes = Number(values.nodes)
  if (!/^[0-9]+$/.test(values.nodes as string) || nodes < 1 || nodes > 16) throw new UsageError(`--nodes expects a number of nodes from 1 to 16, got "${values.nodes}"`)
  const rate = Number(values.rate)
  if (!/^[0-9]+(\.[0-9]+)?$/.test(values.rate as string) || rate <= 0 || rate > 100_000) throw new UsageError(`--rate expects events per second from 1 to 100000, got "${values.rate}"`)
  const port = parsePort('--port', values.port as string)
  const bucket = env.SPEEDLAYER_DEMO_BUCKET || undefined
  if (bucket !== undefined) {
    try {
      parseBucketSize(bucket)
    } catch {
      throw new UsageError(`SPEEDLAYER_DEMO_BUCKET expects a bucket size such as 5s or 1m, got "${bucket}"`)
    }
  }
  const statusMs = env.SPEEDLAYER_DEMO_STATUS ? parseDuration('SPEEDLAYER_DEMO_STATUS', env.SPEEDLAYER_DEMO_STATUS) : 10_000
  if (statusMs < 100) throw new UsageError('SPEEDLAYER_DEMO_STATUS must be at least 100ms')
  const seed = env.SPEEDLAYER_DEMO_SEED ? Number(env.SPEEDLAYER_DEMO_SEED) : Math.floor(Math.random() * 2 ** 32)
  if (!Number.isSafeInteger(seed)) throw new UsageError(`SPEEDLAYER_DEMO_SEED expects an integer, got "${env.SPEEDLAYER_DEMO_SEED}"`)
  const retention = env.SPEEDLAYER_DEMO_RETENTION ? Number(env.SPEEDLAYER_DEMO_RETENTION) : 30
  if (!Number.isSafeInteger(retention) || retention < 1) throw new UsageError(`SPEEDLAYER_DEMO_RETENTION expects a number of buckets >= 1, got "${env.SPEEDLAYER_DEMO_RETENTION}"`)
  const nodeFlags = (env.SPEEDLAYER_DEMO_NODE_FLAGS ?? '').split(' ').filter((f) => f !== '')
  if (nodeFlags.some((f) => !f.startsWith('-'))) throw new UsageError(`SPEEDLAYER_DEMO_NODE_FLAGS expects Node.js flags such as --cpu-prof, got "${env.SPEEDLAYER_DEMO_NODE_FLAGS}"`)
  return { nodes, rate, port, bucket, statusMs, seed, retention, nodeFlags }
}

/** demo/views.json, with every bucket resized when SPEEDLAYER_DEMO_BUCKET asks (written to DIR). */
async function demoViews(dir: string, bucket: string | undefined): Promise<{ file: string; definitions: Record<string, unknown> }> {
  // Loaded here, not at the top: the demo process itself runs no node, and need not load one.
  const { readViewsFile } = await import('./start.js')
  const definitions = await readViewsFile(VIEWS_FILE)
  if (bucket === undefined) return { file: VIEWS_FILE, definitions }
  const resized: Record<string, unknown> = {}
  for (const [name, def] of Object.entries(definitions)) {
    const ingest = isPlainObject(def) && isPlainObject(def.ingest) ? def.ingest : undefined
    const b = ingest && isPlainObject(ingest.bucket) ? ingest.bucket : undefined
    resized[name] = b ? { ...(def as Record<string, unknown>), ingest: { ...ingest, bucket: { ...b, size: bucket } } } : def
  }
  const file = join(dir, `views-${bucket}.json`)
  await writeFile(file, JSON.stringify({ views: resized }, null, 2) + '\n')
  return { file, definitions: resized }
}

const mb = (bytes: number) => `${(bytes / 1e6).toFixed(1)} MB`
const clock = (t: number) => new Date(t).toISOString().slice(11, 19)

export async function demoCommand(argv: string[]): Promise<void> {
  const cfg = parseDemoArgs(argv, process.env)
  const log = (line: string) => void process.stderr.write(`${line}\n`)
  const say = (line: string) => void process.stdout.write(`${line}\n`)
  // `npm start | head` must not crash the demo (and orphan nothing either way).
  process.stdout.on('error', () => {})
  process.stderr.on('error', () => {})

  let cluster: Cluster | null = null
  let dataDir: DataDir | null = null
  let batch: BatchLayer | null = null
  let master: MasterWriter | null = null
  let senders: IngestSender[] = []
  const timers: NodeJS.Timeout[] = []
  let stopping: Promise<void> | null = null

  // Every piece is stopped in the reverse order it was started; what was never started is skipped.
  const stop = (why: string): Promise<void> => {
    stopping ??= (async () => {
      log(`demo: ${why}: stopping`)
      for (const t of timers) clearInterval(t)
      await batch?.stop()
      await cluster?.stop()
      for (const s of senders) s.close()
      await master?.close().catch(() => {})
      await dataDir?.release().catch(() => {})
    })()
    return stopping
  }
  for (const sig of ['SIGINT', 'SIGTERM'] as const) {
    process.on(sig, () => {
      // A repeated signal finds the stop under way and changes nothing.
      if (stopping) return
      stop(sig).then(
        () => process.exit(0),
        (err: unknown) => {
          log(`demo: error while stopping: ${(err as Error).message}`)
          process.exit(1)
        },
      )
    })
  }

  try {
    dataDir = await claimDataDir(join(process.cwd(), '.demo-data'), log)
    const views = await demoViews(dataDir.path, cfg.bucket)
    const ports = await choosePorts(cfg.port, cfg.nodes, log)
    if (stopping) return
    try {
      cluster = await Cluster.start({ cli: CLI, nodes: cfg.nodes, port: cfg.port, dataRoot: dataDir.path, viewsFile: views.file, nodeFlags: cfg.nodeFlags, log }, ports, (c) => (cluster = c))
    } catch (err) {
      if (stopping) return
      const why = (err as Error).message
      const hint = /another definition/.test(why) && !dataDir.temporary ? `; ${dataDir.path} was made by a demo with other views: remove it to start afresh` : ''
      throw new CommandError(`${why}${hint}`)
    }
    if (stopping) return
    const nodes = cluster.nodes
    await dataDir.setChildren(cluster.pids())
    cluster.onUnexpectedExit((n, code, signal) => log(`demo: ${n.id} exited (${signal ?? `exit code ${code}`}); the other nodes keep running, and its share of events waits in the master dataset`))

    senders = nodes.map((n) => new IngestSender(n.id, n.url, Math.max(1000, cfg.rate * 10), Math.max(500, Math.ceil(cfg.rate))))
    // Sessions of a previous run never ended: nobody from it is online any more.
    await Promise.all(senders.map((s) => clearOnline(s)))

    master = await MasterWriter.open(join(dataDir.path, 'master.ndjson'))
    const m = master
    batch = new BatchLayer({
      definitions: views.definitions,
      masterPath: join(dataDir.path, 'master.ndjson'),
      dir: join(dataDir.path, 'batch'),
      cli: CLI,
      nodes: () => nodes.filter((n) => n.running).map((n) => ({ id: n.id, url: n.url })),
      flushed: () => m.flushed(),
      retentionBuckets: cfg.retention,
      log,
    })
    if (stopping) return

    const gen = new PageviewGenerator({ rate: cfg.rate, nodes: nodes.length, seed: cfg.seed })
    let made = 0
    const t0 = Date.now()
    timers.push(
      setInterval(() => {
        const now = Date.now()
        let due = Math.floor(((now - t0) * cfg.rate) / 1000) - made
        // After a stall (a suspended laptop), skip the backlog rather than burst it.
        if (due > cfg.rate) {
          made += due - Math.ceil(cfg.rate)
          due = Math.ceil(cfg.rate)
        }
        let text = ''
        for (let i = 0; i < due; i++) {
          const g = gen.next(now)
          const line = JSON.stringify(g.event)
          text += `${line}\n`
          const s = senders[g.node] as IngestSender
          s.push(line)
          if (g.ended) s.leave(g.event.site, g.event.user)
        }
        made += due
        m.append(text)
        for (const s of senders) s.flush()
      }, TICK_MS),
    )

    let lastSent = 0
    let lastAt = t0
    timers.push(
      setInterval(() => {
        const now = Date.now()
        const sent = senders.reduce((t, s) => t + s.stats.sent, 0)
        const dropped = senders.reduce((t, s) => t + s.stats.dropped, 0)
        const perS = ((sent - lastSent) * 1000) / Math.max(1, now - lastAt)
        lastSent = sent
        lastAt = now
        const b = batch as BatchLayer
        const problems = senders.filter((s) => s.lastError !== null).map((s) => `${s.id}: ${s.lastError}`)
        log(
          `demo: ${sent} events sent (${perS.toFixed(0)}/s), ${made} generated${dropped > 0 ? `, ${dropped} dropped` : ''}; ` +
            `${gen.sessions} sessions online; master ${mb(m.bytes)}; ` +
            `${b.imports} batch imports${Number.isNaN(b.lastHorizon) ? '' : `, exact up to ${clock(b.lastHorizon)}Z`}` +
            (problems.length > 0 ? `; ${problems.join('; ')}` : ''),
        )
      }, cfg.statusMs),
    )
    batch.start()

    const bucketNote = batch.periodMs > 0 ? `; the batch layer makes each ${batch.periodMs / 1000} s bucket exact shortly after it ends` : ''
    log(`demo: ${cfg.rate} pageviews/s over ${nodes.length} node${nodes.length > 1 ? 's' : ''}, data in ${dataDir.path}${bucketNote}; Ctrl-C stops`)
    for (const n of nodes) say(`${n.id}: ${n.url}`)
    say(`dashboard: ${(nodes[0] as (typeof nodes)[number]).url}/`)
  } catch (err) {
    await stop('cannot start')
    throw err
  }
}

/** Removes every member of `online` on this node (one request per demo site). */
async function clearOnline(s: IngestSender): Promise<void> {
  for (const site of DEMO_SITES) {
    const path = `/views/online/${encodeURIComponent(site)}`
    const a = await s.request('GET', path, undefined)
    if (a.status !== 200) continue
    const members = (JSON.parse(a.text) as { value?: unknown }).value
    if (Array.isArray(members) && members.length > 0) await s.request('POST', path, JSON.stringify({ remove: members }))
  }
}
