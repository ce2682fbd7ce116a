/**
 * Real-process helpers: the built CLI (dist/, so run `npx tsc -p tsconfig.json` after changing
 * src/) as a child process, temp dirs, HTTP over keep-alive agents. Every test file makes one
 * `E2E` and calls `cleanup()` in afterEach: it SIGKILLs whatever child is still running (a
 * failed assertion must never leave a node holding a port or a LevelDB lock), destroys the agents
 * and removes the temp dirs. Everything waits for events (the ready line, an exit, an HTTP
 * answer), never for a fixed time.
 */
import { spawn, type ChildProcess } from 'node:child_process'
import { existsSync } from 'node:fs'
import { mkdtemp, rm } from 'node:fs/promises'
import http from 'node:http'
import net from 'node:net'
import os from 'node:os'
import path from 'node:path'
import { fileURLToPath } from 'node:url'

export const REPO_ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..')
export const CLI = path.join(REPO_ROOT, 'dist/src/cli/main.js')

/** A stack frame line as Node prints them; an error message for a user must never hold one. */
export const STACK_FRAME = '    at '

/** How long a start or an exit may take before the helper gives up (CI machines are slow). */
const DEFAULT_TIMEOUT_MS = 20_000

export function assertBuilt(): void {
  if (!existsSync(CLI)) throw new Error(`${CLI} is missing: run \`npx tsc -p tsconfig.json\` (or npm install) first`)
}

export interface Exit {
  code: number | null
  signal: NodeJS.Signals | null
}

/** A running `speedlayer` child with its output collected as it arrives. */
export class Child {
  stdout = ''
  stderr = ''
  exit: Exit | null = null
  /** Resolves once the process has exited and its stdout/stderr are closed. */
  readonly exited: Promise<Exit>
  private waiters: Array<() => void> = []

  constructor(readonly proc: ChildProcess) {
    proc.stdout?.setEncoding('utf8')
    proc.stderr?.setEncoding('utf8')
    proc.stdout?.on('data', (s: string) => {
      this.stdout += s
      this.wake()
    })
    proc.stderr?.on('data', (s: string) => {
      this.stderr += s
      this.wake()
    })
    this.exited = new Promise((resolve) => {
      proc.once('close', (code, signal) => {
        this.exit = { code, signal }
        this.wake()
        resolve(this.exit)
      })
      // A spawn failure (ENOENT...) ends in 'close' as well, after 'error'.
      proc.once('error', (err) => {
        this.stderr += `[spawn error] ${err.message}\n`
      })
    })
  }

  get pid(): number {
    if (this.proc.pid === undefined) throw new Error('the child has no pid (spawn failed)')
    return this.proc.pid
  }

  get running(): boolean {
    return this.exit === null && this.proc.exitCode === null && this.proc.signalCode === null
  }

  /** Sends a signal; false when the process was already gone. */
  signal(sig: NodeJS.Signals): boolean {
    if (!this.running) return false
    return this.proc.kill(sig)
  }

  /** Resolves once `pred` holds (checked on every output chunk and at exit), or rejects on timeout. */
  waitFor(what: string, pred: () => boolean, timeoutMs = DEFAULT_TIMEOUT_MS): Promise<void> {
    if (pred()) return Promise.resolve()
    return new Promise((resolve, reject) => {
      const check = () => {
        if (pred()) {
          clearTimeout(timer)
          this.waiters = this.waiters.filter((w) => w !== check)
          resolve()
        }
      }
      const timer = setTimeout(() => {
        this.waiters = this.waiters.filter((w) => w !== check)
        reject(new Error(`timed out after ${timeoutMs} ms waiting for ${what}\n${this.describe()}`))
      }, timeoutMs)
      this.waiters.push(check)
    })
  }

  /** Waits for the exit, SIGKILLing the child if it takes longer than `timeoutMs`. */
  async waitExit(timeoutMs = DEFAULT_TIMEOUT_MS): Promise<Exit> {
    let timer: NodeJS.Timeout | undefined
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(() => {
        this.proc.kill('SIGKILL')
        reject(new Error(`the child did not exit within ${timeoutMs} ms\n${this.describe()}`))
      }, timeoutMs)
    })
    try {
      return await Promise.race([this.exited, timeout])
    } finally {
      clearTimeout(timer)
    }
  }

  /** SIGKILL (kill -9) and wait until it is gone; a no-op for an exited child. */
  async kill9(): Promise<Exit> {
    if (this.running) this.proc.kill('SIGKILL')
    return this.exited
  }

  describe(): string {
    const exit = this.exit ? `exit code ${this.exit.code} signal ${this.exit.signal}` : 'still running'
    return `[${exit}]\n--- stdout ---\n${this.stdout}--- stderr ---\n${this.stderr}`
  }

  private wake(): void {
    for (const w of [...this.waiters]) w()
  }
}

export interface StartOptions {
  id: string
  data: string
  /** Default 0: the node picks a free port and the ready line tells which. */
  port?: number
  args?: string[]
}

export interface StartedNode {
  child: Child
  url: string
  port: number
  /** The exact ready line, without its newline. */
  readyLine: string
}

export function readyLinePattern(id: string): RegExp {
  return new RegExp(`^speedlayer ${id.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')} listening on (http://127\\.0\\.0\\.1:([0-9]{1,5}))$`)
}

/** Every child of this worker still running: the last-resort exit hook kills them. */
const live = new Set<Child>()
let exitHook = false

/**
 * One test's (or one file's) children, dirs and agents. Tests that run concurrently each take
 * their own, so that one test's cleanup never kills another's node.
 */
export class E2E {
  private children = new Set<Child>()
  private dirs: string[] = []
  private agents: http.Agent[] = []
  private servers: net.Server[] = []

  constructor() {
    assertBuilt()
    if (!exitHook) {
      exitHook = true
      // If the worker goes away without cleanup, no node may outlive it.
      process.once('exit', () => {
        for (const c of live) if (c.running) c.proc.kill('SIGKILL')
      })
    }
  }

  /** Spawns `node dist/src/cli/main.js ARGS` with stdin closed and stdout/stderr collected. */
  spawn(args: string[]): Child {
    const env = { ...process.env }
    // The child must run as a user runs it, not under the test runner's loaders.
    delete env.NODE_OPTIONS
    const proc = spawn(process.execPath, [CLI, ...args], { cwd: REPO_ROOT, env, stdio: ['ignore', 'pipe', 'pipe'] })
    const child = new Child(proc)
    this.children.add(child)
    live.add(child)
    void child.exited.then(() => {
      this.children.delete(child)
      live.delete(child)
    })
    return child
  }

  /** Runs a command to its end (killing it after `timeoutMs`). */
  async run(args: string[], timeoutMs = DEFAULT_TIMEOUT_MS): Promise<{ exit: Exit; stdout: string; stderr: string }> {
    const child = this.spawn(args)
    const exit = await child.waitExit(timeoutMs)
    return { exit, stdout: child.stdout, stderr: child.stderr }
  }

  /**
   * `speedlayer start` on 127.0.0.1; resolves once the ready line is on stdout, rejects (with the
   * child's output) if the process exits first, prints anything else first, or takes too long.
   */
  async start(opts: StartOptions, timeoutMs = DEFAULT_TIMEOUT_MS): Promise<StartedNode> {
    const args = ['start', '--id', opts.id, '--port', String(opts.port ?? 0), '--data', opts.data, '--host', '127.0.0.1', ...(opts.args ?? [])]
    const child = this.spawn(args)
    await child.waitFor('the ready line', () => child.stdout.includes('\n') || !child.running, timeoutMs)
    if (!child.stdout.includes('\n')) {
      await child.exited
      throw new Error(`speedlayer start exited before its ready line\n${child.describe()}`)
    }
    const readyLine = child.stdout.slice(0, child.stdout.indexOf('\n'))
    const m = readyLinePattern(opts.id).exec(readyLine)
    if (!m) {
      await child.kill9()
      throw new Error(`the first line on stdout is not the ready line: ${JSON.stringify(readyLine)}\n${child.describe()}`)
    }
    const port = Number(m[2])
    if (opts.port !== undefined && opts.port !== 0 && port !== opts.port) throw new Error(`ready line names port ${port}, asked for ${opts.port}`)
    return { child, url: m[1] as string, port, readyLine }
  }

  /** A fresh directory under os.tmpdir(), removed by cleanup(). */
  async tempDir(prefix = 'speedlayer-e2e-'): Promise<string> {
    const dir = await mkdtemp(path.join(os.tmpdir(), prefix))
    this.dirs.push(dir)
    return dir
  }

  /** A keep-alive agent destroyed by cleanup(). */
  agent(maxSockets = 8): http.Agent {
    const a = new http.Agent({ keepAlive: true, maxSockets })
    this.agents.push(a)
    return a
  }

  client(baseUrl: string, agent: http.Agent = this.agent()): HttpClient {
    return new HttpClient(baseUrl, agent)
  }

  /** Holds a port on 127.0.0.1 (for "port in use") until cleanup(). */
  async holdPort(): Promise<number> {
    const server = net.createServer()
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject)
      server.listen(0, '127.0.0.1', () => resolve())
    })
    this.servers.push(server)
    return (server.address() as net.AddressInfo).port
  }

  async cleanup(): Promise<void> {
    const children = [...this.children]
    await Promise.all(children.map((c) => c.kill9()))
    this.children.clear()
    for (const a of this.agents) a.destroy()
    this.agents = []
    await Promise.all(this.servers.map((s) => new Promise<void>((r) => s.close(() => r()))))
    this.servers = []
    await Promise.all(this.dirs.map((d) => rm(d, { recursive: true, force: true, maxRetries: 3 })))
    this.dirs = []
  }
}

/** A port that was free a moment ago (listen on 0, read it, close). Prefer --port 0 where possible. */
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

export interface HttpAnswer {
  status: number
  headers: http.IncomingHttpHeaders
  text: string
  /** The parsed JSON body, or undefined if the body is not JSON. */
  json: unknown
}

export class HttpClient {
  constructor(
    readonly baseUrl: string,
    readonly agent: http.Agent,
  ) {}

  /** One request; `body` is sent as JSON unless it is a string. Rejects on a network error. */
  request(method: string, urlPath: string, body?: unknown, timeoutMs = DEFAULT_TIMEOUT_MS): Promise<HttpAnswer> {
    const payload = body === undefined ? undefined : typeof body === 'string' ? body : JSON.stringify(body)
    return new Promise((resolve, reject) => {
      const req = http.request(
        new URL(urlPath, this.baseUrl),
        {
          method,
          agent: this.agent,
          headers: payload === undefined ? {} : { 'content-type': 'application/json', 'content-length': Buffer.byteLength(payload) },
          timeout: timeoutMs,
        },
        (res) => {
          const chunks: Buffer[] = []
          res.on('data', (c: Buffer) => chunks.push(c))
          res.on('error', reject)
          res.on('end', () => {
            const text = Buffer.concat(chunks).toString('utf8')
            let json: unknown
            try {
              json = JSON.parse(text)
            } catch {
              json = undefined
            }
            resolve({ status: res.statusCode ?? 0, headers: res.headers, text, json })
          })
        },
      )
      req.on('timeout', () => req.destroy(new Error(`${method} ${urlPath}: no answer within ${timeoutMs} ms`)))
      req.on('error', reject)
      req.end(payload)
    })
  }

  /** A request that must answer `status`; returns the JSON body. */
  async expect(status: number, method: string, urlPath: string, body?: unknown): Promise<unknown> {
    const a = await this.request(method, urlPath, body)
    if (a.status !== status) throw new Error(`${method} ${urlPath} answered ${a.status}, expected ${status}: ${a.text}`)
    return a.json
  }

  get(urlPath: string): Promise<unknown> {
    return this.expect(200, 'GET', urlPath)
  }

  /** The `value` of GET /views/VIEW/KEY. */
  async value(view: string, key: string): Promise<unknown> {
    const body = (await this.get(`/views/${encodeURIComponent(view)}/${encodeURIComponent(key)}`)) as { value: unknown }
    return body.value
  }

  /** Every {key, value} of a view, following `next`. */
  async scanAll(view: string): Promise<Map<string, unknown>> {
    const out = new Map<string, unknown>()
    let after: string | null = null
    for (;;) {
      const q: string = after === null ? '' : `&after=${encodeURIComponent(after)}`
      const page = (await this.get(`/views/${encodeURIComponent(view)}?limit=1000${q}`)) as { items: Array<{ key: string; value: unknown }>; next: string | null }
      for (const item of page.items) out.set(item.key, item.value)
      if (page.next === null) return out
      after = page.next
    }
  }

  /** GET /metrics parsed into name -> value (labels dropped; our gauges carry only `replica`). */
  async metrics(): Promise<Map<string, number>> {
    const a = await this.request('GET', '/metrics')
    if (a.status !== 200) throw new Error(`GET /metrics answered ${a.status}: ${a.text}`)
    return parseMetrics(a.text)
  }
}

export function parseMetrics(text: string): Map<string, number> {
  const out = new Map<string, number>()
  for (const line of text.split('\n')) {
    if (line === '' || line.startsWith('#')) continue
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)/.exec(line)
    if (m && !out.has(m[1] as string)) out.set(m[1] as string, Number(m[3]))
  }
  return out
}

/** The lines of a stream's output, without the final empty string after the last newline. */
export function lines(text: string): string[] {
  const parts = text.split('\n')
  if (parts[parts.length - 1] === '') parts.pop()
  return parts
}
