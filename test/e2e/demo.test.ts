/**
 * `speedlayer demo` as a user runs it: real processes (the demo and its `speedlayer start`
 * children, `speedlayer batch` runs), real ports, a temporary working directory so that
 * .demo-data goes there. Buckets are 5 s (SPEEDLAYER_DEMO_BUCKET) so a batch import lands within
 * seconds. Everything waits for an event (a line of output, a value on a node, a process gone),
 * never a fixed time; values and processes are polled, as there is nothing to subscribe to.
 */
import { spawn } from 'node:child_process'
import { existsSync, readFileSync, readdirSync } from 'node:fs'
import { mkdtemp, rm } from 'node:fs/promises'
import http from 'node:http'
import net from 'node:net'
import os from 'node:os'
import path from 'node:path'
import { afterEach, describe, expect, it } from 'vitest'
import { CLI, Child, STACK_FRAME, assertBuilt, freePort, lines } from './helpers.js'

const BUCKET_MS = 5000
const START_TIMEOUT_MS = 60_000

assertBuilt()

interface Demo {
  child: Child
  cwd: string
  nodes: Array<{ id: string; url: string; port: number }>
  dashboard: string
  /** Every process of the demo (itself, its nodes) seen so far. */
  pids: Set<number>
}

const running: Demo[] = []
const dirs: string[] = []

afterEach(async () => {
  for (const d of running.splice(0)) {
    await d.child.kill9()
    for (const pid of d.pids) if (alive(pid)) process.kill(pid, 'SIGKILL')
  }
  await Promise.all(dirs.splice(0).map((d) => rm(d, { recursive: true, force: true, maxRetries: 3 })))
})

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0)
    return true
  } catch {
    return false
  }
}

/** The pid and every descendant of it (Linux /proc). */
function processTree(root: number): number[] {
  const children = new Map<number, number[]>()
  for (const name of readdirSync('/proc')) {
    if (!/^[0-9]+$/.test(name)) continue
    let stat: string
    try {
      stat = readFileSync(`/proc/${name}/stat`, 'utf8')
    } catch {
      continue
    }
    // "pid (comm) state ppid ...": comm may hold spaces and parentheses; the last ")" ends it.
    const ppid = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1])
    const list = children.get(ppid) ?? []
    list.push(Number(name))
    children.set(ppid, list)
  }
  const out: number[] = []
  const todo = [root]
  while (todo.length > 0) {
    const p = todo.pop() as number
    out.push(p)
    todo.push(...(children.get(p) ?? []))
  }
  return out
}

/** Polls `check` until it returns a value other than undefined. */
async function until<T>(what: string, check: () => Promise<T | undefined> | T | undefined, timeoutMs = 30_000, context = () => ''): Promise<T> {
  const deadline = Date.now() + timeoutMs
  for (;;) {
    const v = await check()
    if (v !== undefined) return v
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}\n${context()}`)
    await new Promise((r) => setTimeout(r, 100))
  }
}

const agent = new http.Agent({ keepAlive: false })

function getJson(url: string): Promise<{ status: number; body: unknown }> {
  return new Promise((resolve, reject) => {
    http
      .get(url, { agent, timeout: 10_000 }, (res) => {
        let text = ''
        res.setEncoding('utf8')
        res.on('data', (s: string) => (text += s))
        res.on('end', () => {
          let body: unknown
          try {
            body = JSON.parse(text)
          } catch {
            body = text
          }
          resolve({ status: res.statusCode ?? 0, body })
        })
      })
      .on('error', reject)
      .on('timeout', function (this: http.ClientRequest) {
        this.destroy(new Error(`GET ${url}: no answer`))
      })
  })
}

function portFree(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = net.createServer()
    s.once('error', () => resolve(false))
    s.listen(port, '127.0.0.1', () => s.close(() => resolve(true)))
  })
}

async function tempCwd(): Promise<string> {
  const d = await mkdtemp(path.join(os.tmpdir(), 'speedlayer-demo-test-'))
  dirs.push(d)
  return d
}

async function startDemo(cwd: string, args: string[]): Promise<Demo> {
  const env: NodeJS.ProcessEnv = { ...process.env, SPEEDLAYER_DEMO_BUCKET: `${BUCKET_MS / 1000}s`, SPEEDLAYER_DEMO_STATUS: '1s' }
  delete env.NODE_OPTIONS
  const proc = spawn(process.execPath, [CLI, 'demo', ...args], { cwd, env, stdio: ['ignore', 'pipe', 'pipe'] })
  const child = new Child(proc)
  const demo: Demo = { child, cwd, nodes: [], dashboard: '', pids: new Set([child.pid]) }
  running.push(demo)
  await child.waitFor('the dashboard line', () => /^dashboard: /m.test(child.stdout) || !child.running, START_TIMEOUT_MS)
  if (!child.running) throw new Error(`the demo exited before its dashboard line\n${child.describe()}`)
  for (const line of lines(child.stdout)) {
    const m = /^(node[0-9]+): (http:\/\/127\.0\.0\.1:([0-9]+))$/.exec(line)
    if (m) demo.nodes.push({ id: m[1] as string, url: m[2] as string, port: Number(m[3]) })
    const d = /^dashboard: (\S+)$/.exec(line)
    if (d) demo.dashboard = d[1] as string
  }
  for (const pid of processTree(child.pid)) demo.pids.add(pid)
  return demo
}

/** Waits until no process of the demo is left. */
async function allGone(d: Demo, timeoutMs = 20_000): Promise<void> {
  await until(
    'every process of the demo to exit',
    () => ([...d.pids].some(alive) ? undefined : true),
    timeoutMs,
    () => `still alive: ${[...d.pids].filter(alive).join(', ')}\n${d.child.describe()}`,
  )
}

async function rangeCount(url: string, view: string, prefix: string): Promise<number> {
  const a = await getJson(`${url}/query/${view}?prefix=${encodeURIComponent(prefix)}`)
  if (a.status !== 200) throw new Error(`GET /query/${view} answered ${a.status}: ${JSON.stringify(a.body)}`)
  return (a.body as { value: number }).value
}

describe('speedlayer demo', () => {
  it('runs three meshed nodes fed by the generator, imports exact batch views, and leaves nothing behind after SIGINT', async () => {
    const cwd = await tempCwd()
    const port = await freePort()
    const demo = await startDemo(cwd, ['--nodes', '3', '--rate', '50', '--port', String(port)])
    const ctx = () => demo.child.describe()

    // Stdout says where to look, and nothing else.
    expect(demo.nodes.map((n) => n.id), ctx()).toEqual(['node1', 'node2', 'node3'])
    expect(lines(demo.child.stdout), ctx()).toEqual([...demo.nodes.map((n) => `${n.id}: ${n.url}`), `dashboard: ${demo.nodes[0]?.url}/`])
    expect(new Set(demo.nodes.map((n) => n.port)).size).toBe(3)
    expect(demo.pids.size, `the demo and its three nodes: ${[...demo.pids]}`).toBeGreaterThanOrEqual(4)

    // The nodes are peered in a mesh: each lists the two others as connected.
    for (const n of demo.nodes) {
      await until(`${n.id} connected to both others`, async () => {
        const peers = (await getJson(`${n.url}/peers`)).body as Array<{ replica: string; connected: boolean }>
        const up = new Set(peers.filter((p) => p.connected).map((p) => p.replica))
        return demo.nodes.every((o) => o.id === n.id || up.has(o.id)) ? true : undefined
      }, 30_000, ctx)
    }

    // Counters rise on every node (US: the most common country; /query merges batch and realtime,
    // so the count never goes down when a batch import expires realtime buckets).
    for (const n of demo.nodes) {
      const first = await until(`pageviews on ${n.id}`, async () => {
        const v = await rangeCount(n.url, 'countries', 'US')
        return v > 0 ? v : undefined
      }, 30_000, ctx)
      await until(`the count on ${n.id} to rise above ${first}`, async () => ((await rangeCount(n.url, 'countries', 'US')) > first ? true : undefined), 30_000, ctx)
    }

    // A batch import lands on every node; the buckets it covers are exact and equal the master dataset's.
    const landed = await until(
      'a batch import of countries',
      () => {
        const m = /^batch: countries exact up to (\S+): ([0-9]+) keys imported on (.*);/m.exec(demo.child.stderr)
        return m ? { horizon: Date.parse(m[1] as string), on: (m[3] as string).split(', ') } : undefined
      },
      60_000,
      ctx,
    )
    expect(landed.on.sort()).toEqual(['node1', 'node2', 'node3'])
    expect(landed.horizon % BUCKET_MS).toBe(0)
    const bucket = landed.horizon - BUCKET_MS
    const events = readFileSync(path.join(cwd, '.demo-data', 'master.ndjson'), 'utf8')
      .split('\n')
      .filter((l) => l !== '')
      .map((l) => JSON.parse(l) as { ts: number; country: string; site: string; user: string })
      .filter((e) => e.ts >= bucket && e.ts < landed.horizon)
    expect(events.length, 'events in the last complete bucket').toBeGreaterThan(0)
    const us = events.filter((e) => e.country === 'US').length
    const shopUsers = new Set(events.filter((e) => e.site === 'shop.example').map((e) => e.user)).size
    const bucketIso = new Date(bucket).toISOString()
    for (const n of demo.nodes) {
      const held = (await getJson(`${n.url}/batch/countries`)).body as { horizon: number }
      expect(held.horizon, n.id).toBeGreaterThanOrEqual(landed.horizon)
      const c = (await getJson(`${n.url}/query/countries/${encodeURIComponent(`US|${bucketIso}`)}`)).body as { value: number; exact: boolean }
      expect(c, n.id).toMatchObject({ value: us, exact: true })
      // Unique visitors: the realtime estimate became the exact count once the import landed.
      await until(`the batch import of visitors on ${n.id}`, async () => ((await getJson(`${n.url}/batch/visitors`)).status === 200 ? true : undefined), 30_000, ctx)
      const v = (await getJson(`${n.url}/query/visitors/${encodeURIComponent(`shop.example|${bucketIso}`)}`)).body as { value: number; exact: boolean }
      expect(v, n.id).toMatchObject({ value: shopUsers, exact: true })
    }

    // `online` holds the users of sessions under way, not everyone ever seen.
    // A fifth of the sessions are one page long, so users leave from the start.
    await until(
      'users to leave online',
      async () => {
        const online = ((await getJson(`${demo.nodes[0]?.url}/views/online/shop.example`)).body as { value: string[] }).value
        const seen = new Set(
          readFileSync(path.join(cwd, '.demo-data', 'master.ndjson'), 'utf8')
            .split('\n')
            .filter((l) => l.includes('"site":"shop.example"'))
            .map((l) => (JSON.parse(l) as { user: string }).user),
        )
        return online.length > 0 && online.length < seen.size ? true : undefined
      },
      30_000,
      ctx,
    )

    // Ctrl-C: every node closes, the demo exits 0, the ports are free again.
    for (const pid of processTree(demo.child.pid)) demo.pids.add(pid)
    expect(demo.child.signal('SIGINT')).toBe(true)
    // A repeated signal changes nothing.
    demo.child.signal('SIGINT')
    expect(await demo.child.waitExit(30_000), ctx()).toEqual({ code: 0, signal: null })
    await allGone(demo)
    for (const n of demo.nodes) expect(await portFree(n.port), `port ${n.port} of ${n.id}`).toBe(true)
    expect(demo.child.stderr).not.toContain(STACK_FRAME)
    for (const n of demo.nodes) expect(demo.child.stderr, ctx()).toContain(`${n.id}: SIGTERM: closing`)
    expect(existsSync(path.join(cwd, '.demo-data', 'demo.lock'))).toBe(false)
  })

  it('a second demo in the same directory picks other ports and its own data; after kill -9 a demo\'s nodes exit by themselves and the next demo takes its data over', async () => {
    const cwd = await tempCwd()
    const port = await freePort()
    const first = await startDemo(cwd, ['--nodes', '2', '--rate', '20', '--port', String(port)])
    const second = await startDemo(cwd, ['--nodes', '2', '--rate', '20', '--port', String(port)])
    const ctx = () => `${first.child.describe()}\n=== second ===\n${second.child.describe()}`
    const firstPorts = new Set(first.nodes.map((n) => n.port))
    expect(second.nodes.some((n) => firstPorts.has(n.port)), ctx()).toBe(false)
    expect(second.child.stderr, ctx()).toMatch(/taken \(another demo running\?\); using free ports instead/)
    const tmp = /this one keeps its data in (\S+) \(removed when it stops\)/.exec(second.child.stderr)?.[1]
    expect(tmp, ctx()).toBeDefined()
    for (const n of second.nodes) expect((await getJson(`${n.url}/health`)).body).toEqual({ ok: true, replica: n.id })

    // SIGTERM: a clean stop, its temporary directory removed.
    for (const pid of processTree(second.child.pid)) second.pids.add(pid)
    second.child.signal('SIGTERM')
    expect(await second.child.waitExit(30_000), ctx()).toEqual({ code: 0, signal: null })
    await allGone(second)
    expect(existsSync(tmp as string)).toBe(false)

    // kill -9: nothing runs the demo's stop, yet its nodes notice and close by themselves.
    for (const pid of processTree(first.child.pid)) first.pids.add(pid)
    expect(first.pids.size, ctx()).toBeGreaterThanOrEqual(3)
    await first.child.kill9()
    await allGone(first)
    for (const n of first.nodes) expect(await portFree(n.port), `port ${n.port} of ${n.id}`).toBe(true)

    // The lock the killed demo left is stale: the next demo uses ./.demo-data again.
    const next = await startDemo(cwd, ['--nodes', '2', '--rate', '20', '--port', String(port)])
    expect(next.child.stderr).not.toContain('in use by another demo')
    expect(next.child.stderr).toContain(`data in ${path.join(cwd, '.demo-data')}`)
    next.child.signal('SIGTERM')
    expect(await next.child.waitExit(30_000), next.child.describe()).toEqual({ code: 0, signal: null })
    await allGone(next)
  })

  it('refuses bad flags with one line', async () => {
    const cwd = await tempCwd()
    const bad = [['--nodes', '0'], ['--rate', 'fast'], ['--port', '70000'], ['--bogus']]
    const children = bad.map((args) => new Child(spawn(process.execPath, [CLI, 'demo', ...args], { cwd, stdio: ['ignore', 'pipe', 'pipe'] })))
    for (const child of children) {
      const exit = await child.waitExit()
      expect(exit.code, child.describe()).toBe(2)
      expect(child.stdout).toBe('')
      expect(child.stderr).not.toContain(STACK_FRAME)
      expect(child.stderr.split('\n')[0], child.describe()).toMatch(/^speedlayer: /)
    }
    expect(existsSync(path.join(cwd, '.demo-data'))).toBe(false)
  })
})
