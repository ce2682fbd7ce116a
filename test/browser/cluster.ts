/**
 * A cluster for the dashboard's browser test and benchmark: N `speedlayer start` processes on
 * 127.0.0.1 in a full mesh with the demo's views, pageview events POSTed to /ingest spread over
 * the nodes, and a small batch layer that imports the exact pageviews and visitors of every
 * complete bucket shortly after it closes (as the demo's batch layer does every minute).
 *
 * `startDemo` runs `speedlayer demo` instead; the test picks one with a single switch. Both give
 * the same `Cluster`. Everything started here is SIGKILLed by `stop()`, temp dirs removed.
 */
import { spawn, type ChildProcess } from 'node:child_process'
import { existsSync } from 'node:fs'
import { mkdtemp, rm } from 'node:fs/promises'
import net from 'node:net'
import os from 'node:os'
import path from 'node:path'
import { fileURLToPath } from 'node:url'

/** The checkout: up from this file (test/browser, or dist/test/browser when compiled for the bench) to package.json. */
function findRoot(): string {
  let dir = path.dirname(fileURLToPath(import.meta.url))
  while (!existsSync(path.join(dir, 'package.json')) || path.basename(dir) === 'dist') {
    const up = path.dirname(dir)
    if (up === dir) throw new Error('cannot find the checkout (package.json) above test/browser')
    dir = up
  }
  return dir
}
const ROOT = findRoot()
export const CLI = path.join(ROOT, 'dist/src/cli/main.js')
export const VIEWS_FILE = path.join(ROOT, 'test/browser/views.json')
const BUCKET_MS = 60_000

export interface ClusterNode {
  id: string
  port: number
  url: string
  child: ChildProcess | null
  stderr: string
}

export interface Cluster {
  nodes: ClusterNode[]
  /** The dashboard of the first node. */
  readonly dashboard: string
  /** Events the nodes accepted so far. */
  readonly accepted: number
  /** Horizon of the last batch import (ms), or null. */
  readonly horizon: number | null
  /** Events per second (0 pauses the generator). */
  setRate(rate: number): void
  /** SIGKILLs node i (the generator skips it while it is down). */
  kill(i: number): Promise<void>
  /** Starts node i again on its port and data directory. */
  restart(i: number): Promise<void>
  stop(): Promise<void>
  /** What the nodes logged, for a failure message. */
  describe(): string
}

export interface ClusterOptions {
  nodes?: number
  /** Events per second over all nodes. */
  rate?: number
  /** Import batch views as buckets close (default true). */
  batch?: boolean
  /**
   * Minutes of past traffic in the master dataset (default 0): the batch layer imports it at
   * once, so the charts (and the README's screenshot) have a past, exact, as if the cluster had
   * been running for a while.
   */
  history?: number
  log?: (line: string) => void
}

export async function freePort(): Promise<number> {
  const server = net.createServer()
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject)
    server.listen(0, '127.0.0.1', () => resolve())
  })
  const port = (server.address() as net.AddressInfo).port
  await new Promise<void>((r) => server.close(() => r()))
  return port
}

function waitForLine(child: ChildProcess, pattern: RegExp, what: string, timeoutMs = 30_000): Promise<RegExpExecArray> {
  return new Promise((resolve, reject) => {
    let out = ''
    const timer = setTimeout(() => done(new Error(`${what}: no line matching ${pattern} within ${timeoutMs} ms`)), timeoutMs)
    const onData = (chunk: Buffer) => {
      out += chunk.toString('utf8')
      const m = pattern.exec(out)
      if (m) done(null, m)
    }
    const onExit = (code: number | null, signal: string | null) => done(new Error(`${what} exited (${code ?? signal}) before printing ${pattern}`))
    const done = (err: Error | null, m?: RegExpExecArray) => {
      clearTimeout(timer)
      child.stdout?.off('data', onData)
      child.off('exit', onExit)
      if (err) reject(err)
      else resolve(m as RegExpExecArray)
    }
    child.stdout?.on('data', onData)
    child.once('exit', onExit)
  })
}

function killed(child: ChildProcess | null): Promise<void> {
  if (!child || child.exitCode !== null || child.signalCode !== null) return Promise.resolve()
  return new Promise((resolve) => {
    child.once('exit', () => resolve())
    child.kill('SIGKILL')
  })
}

// A Zipf-like choice: item i with weight 1/(i+1), as real traffic concentrates on few pages.
const URLS = ['/', '/pricing', '/docs', '/blog/crdts', '/signup', '/docs/api', '/blog/lambda', '/about', '/docs/storage', '/careers', '/changelog', '/contact']
const SITES = ['shop.example', 'docs.example', 'blog.example']
const POOLS = [900, 500, 250]
const COUNTRIES = ['DE', 'FR', 'US', 'JP', 'BR', 'IN']
const DEVICES = ['mobile', 'desktop', 'tablet']
const zipfTotal = URLS.reduce((t, _, i) => t + 1 / (i + 1), 0)
function zipfUrl(r: number): string {
  let x = r * zipfTotal
  for (let i = 0; i < URLS.length; i++) {
    x -= 1 / (i + 1)
    if (x <= 0) return URLS[i] as string
  }
  return URLS[URLS.length - 1] as string
}

/** A pageview: Zipf URLs, sites of unequal size, returning users (a small pool, a long tail). */
function makeEvent(ts: number): Event {
  const r = Math.random
  const s = r()
  const site = s < 0.5 ? 0 : s < 0.8 ? 1 : 2
  return {
    kind: 'pageview',
    url: zipfUrl(r()),
    site: SITES[site] as string,
    // Each site has its own pool of returning users.
    user: `u${Math.floor(r() ** 2 * (POOLS[site] as number))}`,
    country: COUNTRIES[Math.floor(r() * COUNTRIES.length)] as string,
    device: DEVICES[Math.floor(r() * DEVICES.length)] as string,
    ts,
  }
}

/**
 * Past traffic, up to the current bucket, with a swell: it goes to the master dataset only, so the
 * batch layer's first import brings it in as exact buckets, as a cluster that had been running
 * for a while would have it. (Ingesting it would cost minutes on a busy machine.)
 */
function backfill(master: MasterCounts, rate: number, minutes: number): number {
  const end = Math.floor(Date.now() / BUCKET_MS) * BUCKET_MS
  let n = 0
  for (let start = end - minutes * BUCKET_MS; start < end; start += BUCKET_MS) {
    const m = (start / BUCKET_MS) % 1000
    const perMinute = Math.round(rate * 60 * (0.55 + 0.3 * Math.sin(m / 2.2) + 0.15 * Math.random()))
    for (let i = 0; i < perMinute; i++) master.add(makeEvent(start + Math.floor(Math.random() * BUCKET_MS)))
    n += perMinute
  }
  return n
}

interface Event {
  kind: 'pageview'
  url: string
  site: string
  user: string
  country: string
  device: string
  ts: number
}

/** What the batch layer knows: every accepted event, folded per bucket. */
class MasterCounts {
  readonly pageviews = new Map<number, Map<string, number>>()
  readonly visitors = new Map<number, Map<string, Set<string>>>()

  add(e: Event): void {
    const b = Math.floor(e.ts / BUCKET_MS) * BUCKET_MS
    let pv = this.pageviews.get(b)
    if (!pv) this.pageviews.set(b, (pv = new Map()))
    pv.set(e.url, (pv.get(e.url) ?? 0) + 1)
    let vis = this.visitors.get(b)
    if (!vis) this.visitors.set(b, (vis = new Map()))
    let users = vis.get(e.site)
    if (!users) vis.set(e.site, (users = new Set()))
    users.add(e.user)
  }

  /** NDJSON of PUT /batch for buckets that end by `horizon`. */
  ndjson(view: 'pageviews' | 'visitors', horizon: number): string {
    const lines: string[] = []
    if (view === 'pageviews') {
      for (const [b, m] of this.pageviews) if (b + BUCKET_MS <= horizon) for (const [url, n] of m) lines.push(JSON.stringify({ key: `${url}|${new Date(b).toISOString()}`, value: n }))
    } else {
      for (const [b, m] of this.visitors) if (b + BUCKET_MS <= horizon) for (const [site, users] of m) lines.push(JSON.stringify({ key: `${site}|${new Date(b).toISOString()}`, value: [...users].sort() }))
    }
    return lines.join('\n') + '\n'
  }
}

export async function startCluster(opts: ClusterOptions = {}): Promise<Cluster> {
  const n = opts.nodes ?? 3
  const log = opts.log ?? (() => {})
  const dir = await mkdtemp(path.join(os.tmpdir(), 'speedlayer-browser-'))
  const ports: number[] = []
  for (let i = 0; i < n; i++) ports.push(await freePort())
  const nodes: ClusterNode[] = ports.map((port, i) => ({ id: `node${i + 1}`, port, url: `http://127.0.0.1:${port}`, child: null, stderr: '' }))
  let stopped = false

  const launch = async (i: number) => {
    const node = nodes[i] as ClusterNode
    const peers = nodes.filter((_, j) => j !== i).map((p) => `ws://127.0.0.1:${p.port}/peer`)
    const args = [CLI, 'start', '--id', node.id, '--port', String(node.port), '--host', '127.0.0.1', '--data', path.join(dir, node.id), '--views', VIEWS_FILE, '--max-backoff', '500ms']
    if (peers.length) args.push('--peers', peers.join(','))
    const child = spawn(process.execPath, args, { stdio: ['ignore', 'pipe', 'pipe'] })
    node.child = child
    child.stderr?.on('data', (c: Buffer) => {
      node.stderr = (node.stderr + c.toString('utf8')).slice(-20_000)
    })
    await waitForLine(child, /listening on (http:\/\/\S+)\n/, `speedlayer start ${node.id}`)
    log(`${node.id} up at ${node.url}`)
  }
  try {
    await Promise.all(nodes.map((_, i) => launch(i)))
  } catch (err) {
    await Promise.all(nodes.map((x) => killed(x.child)))
    await rm(dir, { recursive: true, force: true })
    throw err
  }

  const master = new MasterCounts()
  let rate = opts.rate ?? 200
  let accepted = 0
  let horizon: number | null = null
  let seq = 0
  const up = () => nodes.filter((x) => x.child && x.child.exitCode === null && x.child.signalCode === null)
  const inflight = new Set<Promise<void>>()

  const post = (node: ClusterNode, events: Event[]) => {
    const p = fetch(`${node.url}/ingest`, { method: 'POST', body: events.map((e) => JSON.stringify(e)).join('\n') + '\n' })
      .then(async (res) => {
        if (!res.ok) return
        await res.arrayBuffer()
        accepted += events.length
        for (const e of events) master.add(e)
      })
      .catch(() => {})
      .finally(() => inflight.delete(p))
    inflight.add(p)
  }

  if (opts.history) {
    log(`${backfill(master, rate, opts.history)} past events in the master dataset`)
    // The current bucket's past seconds go through the nodes: that bucket is realtime.
    const now = Date.now()
    const start = Math.floor(now / BUCKET_MS) * BUCKET_MS
    const events = Array.from({ length: Math.round((rate * (now - start)) / 1000) }, () => makeEvent(start + Math.floor(Math.random() * (now - start))))
    for (let i = 0, k = 0; i < events.length; i += 2000, k++) {
      const chunk = events.slice(i, i + 2000)
      const node = nodes[k % nodes.length] as ClusterNode
      const res = await fetch(`${node.url}/ingest`, { method: 'POST', body: chunk.map((e) => JSON.stringify(e)).join('\n') + '\n' })
      if (!res.ok) throw new Error(`ingest on ${node.id}: ${res.status} ${await res.text()}`)
      await res.arrayBuffer()
      accepted += chunk.length
      for (const e of chunk) master.add(e)
    }
  }

  // 10 rounds a second; each node gets its share of the round as one NDJSON body.
  const gen = setInterval(() => {
    const targets = up()
    if (rate <= 0 || targets.length === 0 || inflight.size > 50) return
    const count = Math.max(1, Math.round(rate / 10))
    const per: Event[][] = targets.map(() => [])
    for (let k = 0; k < count; k++) (per[seq++ % targets.length] as Event[]).push(makeEvent(Date.now()))
    targets.forEach((t, i) => {
      const events = per[i] as Event[]
      if (events.length) post(t, events)
    })
  }, 100)

  // The batch layer: once a bucket has closed (and what was posted in it has landed), import
  // the exact views up to its end on the first node that answers; they replicate from there.
  const batch = opts.batch === false ? null : setInterval(() => void runBatch(), 1000)
  let batchRunning = false
  const runBatch = async () => {
    const now = Date.now()
    const h = Math.floor(now / BUCKET_MS) * BUCKET_MS
    // Nothing to make exact until a bucket with events has closed.
    const closed = [...master.pageviews.keys()].some((b) => b + BUCKET_MS <= h)
    if (batchRunning || (horizon !== null && h <= horizon) || now - h < 2000 || !closed) return
    batchRunning = true
    try {
      // Events of the closed buckets still on their way count too: the master dataset has them.
      await Promise.allSettled([...inflight])
      for (const target of up()) {
        try {
          for (const view of ['pageviews', 'visitors'] as const) {
            const res = await fetch(`${target.url}/batch/${view}?horizon=${h}`, { method: 'PUT', body: master.ndjson(view, h) })
            // 409: a batch view with this horizon already won there (replicated from a peer).
            if (!res.ok && res.status !== 409) throw new Error(`PUT /batch/${view}: ${res.status} ${await res.text()}`)
            await res.arrayBuffer()
          }
          horizon = h
          log(`batch views imported up to ${new Date(h).toISOString()} on ${target.id}`)
          break
        } catch (err) {
          log(`batch import on ${target.id} failed: ${(err as Error).message}`)
        }
      }
    } finally {
      batchRunning = false
    }
  }

  return {
    nodes,
    dashboard: `${(nodes[0] as ClusterNode).url}/`,
    get accepted() {
      return accepted
    },
    get horizon() {
      return horizon
    },
    setRate(r) {
      rate = r
    },
    async kill(i) {
      await killed((nodes[i] as ClusterNode).child)
    },
    async restart(i) {
      await launch(i)
    },
    async stop() {
      if (stopped) return
      stopped = true
      clearInterval(gen)
      if (batch) clearInterval(batch)
      await Promise.all(nodes.map((x) => killed(x.child)))
      await Promise.allSettled([...inflight])
      await rm(dir, { recursive: true, force: true, maxRetries: 3 })
    },
    describe() {
      return nodes.map((x) => `--- ${x.id} (${x.url}) stderr:\n${x.stderr.slice(-3000)}`).join('\n')
    },
  }
}

/**
 * `speedlayer demo --port P` as `npm start` runs it: its own nodes, generator and batch layer.
 * It prints `dashboard: URL` once it is up; its nodes are on P, P+1, ... (the demo picks free
 * ports when those are taken, so the URLs come from the first node's GET /peers).
 */
export async function startDemo(opts: { port?: number; rate?: number; log?: (line: string) => void } = {}): Promise<Cluster> {
  const port = opts.port ?? (await freePort())
  const dir = await mkdtemp(path.join(os.tmpdir(), 'speedlayer-demo-'))
  const args = [CLI, 'demo', '--port', String(port)]
  if (opts.rate !== undefined) args.push('--rate', String(opts.rate))
  const child = spawn(process.execPath, args, { cwd: dir, stdio: ['ignore', 'pipe', 'pipe'] })
  let stderr = ''
  child.stderr?.on('data', (c: Buffer) => {
    stderr = (stderr + c.toString('utf8')).slice(-20_000)
  })
  let m: RegExpExecArray
  try {
    m = await waitForLine(child, /dashboard: (http:\/\/\S+?)\/?\n/, 'speedlayer demo', 60_000)
  } catch (err) {
    await killed(child)
    throw new Error(`${(err as Error).message}\n${stderr}`)
  }
  const first = m[1] as string
  const peers = (await (await fetch(`${first}/peers`)).json()) as Array<{ replica: string; url: string | null }>
  const health = (await (await fetch(`${first}/health`)).json()) as { replica: string }
  const nodes: ClusterNode[] = [{ id: health.replica, port: Number(new URL(first).port), url: first, child: null, stderr: '' }]
  for (const p of peers) {
    if (p.url === null) continue
    const u = new URL(p.url)
    nodes.push({ id: p.replica, port: Number(u.port), url: `http://${u.host}`, child: null, stderr: '' })
  }
  nodes.sort((a, b) => (a.id < b.id ? -1 : 1))
  return {
    nodes,
    dashboard: `${first}/`,
    accepted: 0,
    horizon: null,
    setRate() {
      throw new Error('the demo runs at its --rate')
    },
    kill() {
      throw new Error('the demo owns its nodes')
    },
    restart() {
      throw new Error('the demo owns its nodes')
    },
    async stop() {
      if (child.exitCode === null && child.signalCode === null) {
        const exited = new Promise<void>((r) => child.once('exit', () => r()))
        child.kill('SIGTERM')
        const t = setTimeout(() => child.kill('SIGKILL'), 15_000)
        await exited
        clearTimeout(t)
      }
      await rm(dir, { recursive: true, force: true, maxRetries: 3 })
    },
    describe: () => `--- speedlayer demo stderr:\n${stderr.slice(-5000)}`,
  }
}
