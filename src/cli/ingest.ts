/**
 * `speedlayer ingest --url NODE_URL [FILE|-]`: streams NDJSON events to POST /ingest.
 *
 * The input is cut into requests of about `--chunk` bytes, always right after a newline, and each
 * request is streamed as it is read: neither the file nor a request body is ever held whole.
 * Each request is atomic on the node (a bad line refuses all of that request), so a huge file is
 * many atomic batches: on an error the CLI stops, says which line of the file was bad, and how
 * many events the requests before it delivered. Requests go one after another on one keep-alive
 * connection, in file order.
 */
import http from 'node:http'
import https from 'node:https'
import { open } from 'node:fs/promises'
import { parseArgs } from 'node:util'
import type { Readable } from 'node:stream'
import { CommandError, UsageError, parseSize } from './parse.js'

export const INGEST_USAGE = 'usage: speedlayer ingest --url NODE_URL [--token TOKEN] [--chunk 4MiB] [FILE|-]'

export interface IngestCliConfig {
  /** The node's base URL, without a trailing slash. */
  url: string
  token?: string
  chunkBytes: number
  /** A path, or '-' for stdin. */
  input: string
}

export function parseIngestArgs(argv: string[], env: NodeJS.ProcessEnv = process.env): IngestCliConfig {
  let parsed
  try {
    parsed = parseArgs({
      args: argv,
      strict: true,
      allowPositionals: true,
      options: { url: { type: 'string' }, token: { type: 'string' }, chunk: { type: 'string', default: '4MiB' } },
    })
  } catch (err) {
    throw new UsageError(`${(err as Error).message}\n${INGEST_USAGE}`)
  }
  const v = parsed.values
  if (!v.url) throw new UsageError(`--url is required (the node, e.g. --url http://127.0.0.1:7001)\n${INGEST_USAGE}`)
  let url: URL
  try {
    url = new URL(v.url)
  } catch {
    throw new UsageError(`--url expects an http:// URL such as http://127.0.0.1:7001, got "${v.url}"`)
  }
  if (url.protocol !== 'http:' && url.protocol !== 'https:') throw new UsageError(`--url expects an http:// URL such as http://127.0.0.1:7001, got "${v.url}"`)
  if (parsed.positionals.length > 1) throw new UsageError(`one input file at most (or - for stdin), got ${parsed.positionals.length}\n${INGEST_USAGE}`)
  return {
    url: url.href.replace(/\/+$/, ''),
    token: v.token ?? env.SPEEDLAYER_TOKEN,
    chunkBytes: parseSize('--chunk', v.chunk as string),
    input: parsed.positionals[0] ?? '-',
  }
}

interface Answer {
  status: number
  text: string
}

export interface IngestTotals {
  accepted: number
  rejected: Record<string, number>
  bytes: number
  requests: number
  ms: number
}

/** One request: its body is written as the input is read. */
class Upload {
  private readonly req: http.ClientRequest
  readonly answer: Promise<Answer>
  private answered: Answer | null = null
  private failure: Error | null = null
  bytes = 0
  newlines = 0

  constructor(cfg: IngestCliConfig, agent: http.Agent) {
    const target = new URL(`${cfg.url}/ingest`)
    const headers: Record<string, string> = { 'content-type': 'application/x-ndjson' }
    if (cfg.token !== undefined) headers.authorization = `Bearer ${cfg.token}`
    const request = target.protocol === 'https:' ? https.request : http.request
    this.req = request(target, { method: 'POST', agent, headers })
    this.answer = new Promise<Answer>((resolve, reject) => {
      this.req.on('response', (res) => {
        const parts: Buffer[] = []
        res.on('data', (c: Buffer) => parts.push(c))
        res.on('end', () => {
          const a = { status: res.statusCode ?? 0, text: Buffer.concat(parts).toString('utf8') }
          this.answered = a
          resolve(a)
        })
        res.on('error', reject)
      })
      this.req.on('error', (err) => {
        this.failure = err
        reject(err)
      })
    })
    // Whoever awaits the answer sees the failure; until then it must not count as unhandled.
    this.answer.catch(() => {})
  }

  /** False once the node has answered (or the connection failed) before the body was complete. */
  get open(): boolean {
    return this.answered === null && this.failure === null
  }

  async write(buf: Buffer): Promise<void> {
    if (!this.open) return
    this.bytes += buf.length
    let i = buf.indexOf(0x0a)
    while (i >= 0) {
      this.newlines++
      i = buf.indexOf(0x0a, i + 1)
    }
    if (this.req.write(buf)) return
    await new Promise<void>((resolve) => {
      const done = () => {
        this.req.off('drain', done)
        resolve()
      }
      this.req.on('drain', done)
      // A node that answers (or a connection that breaks) never drains: stop waiting then too.
      this.answer.then(done, done)
    })
  }

  end(): Promise<Answer> {
    if (this.open) this.req.end()
    return this.answer
  }
}

function fmt(n: number): string {
  return Math.round(n).toLocaleString('en-US')
}

function mb(bytes: number): string {
  return `${(bytes / 1e6).toFixed(1)} MB`
}

/** Renders a progress line on stderr: in place on a terminal, a line every few seconds otherwise. */
class Progress {
  private timer: NodeJS.Timeout | null = null
  private shown = false

  constructor(
    private readonly out: NodeJS.WriteStream,
    private readonly line: () => string,
  ) {}

  start(): void {
    const tty = this.out.isTTY === true
    this.timer = setInterval(() => this.show(), tty ? 250 : 5000)
    this.timer.unref()
  }

  private show(): void {
    if (this.out.isTTY) this.out.write(`\r${this.line()}\x1b[K`)
    else this.out.write(`${this.line()}\n`)
    this.shown = true
  }

  stop(): void {
    if (this.timer) clearInterval(this.timer)
    this.timer = null
    // The last state stays on screen, on its own line, above whatever comes next.
    if (this.shown && this.out.isTTY) {
      this.show()
      this.out.write('\n')
    }
  }
}

function errorMessage(a: Answer): { code: string; message: string } {
  try {
    const j = JSON.parse(a.text) as { error?: { code?: unknown; message?: unknown } }
    if (typeof j.error?.message === 'string') return { code: String(j.error.code ?? ''), message: j.error.message }
  } catch {
    // Not the node's JSON: a proxy, or not a speedlayer node at all.
  }
  return { code: '', message: a.text.trim().slice(0, 200) || `HTTP ${a.status}` }
}

function networkError(cfg: IngestCliConfig, err: Error): CommandError {
  const code = (err as NodeJS.ErrnoException).code
  if (code === 'ECONNREFUSED' || code === 'ENOTFOUND' || code === 'EHOSTUNREACH' || code === 'ETIMEDOUT' || code === 'EAI_AGAIN') {
    return new CommandError(`cannot reach the node at ${cfg.url} (${code}); is it running?`)
  }
  return new CommandError(`the connection to ${cfg.url} failed: ${code ?? err.message}`)
}

export function emptyTotals(): IngestTotals {
  return { accepted: 0, rejected: {}, bytes: 0, requests: 0, ms: 0 }
}

/**
 * Streams `input` to the node; resolves with the totals, throws CommandError with one clear line.
 * `totals` is kept up to date as it goes (bytes as they are sent, counts as answers come), for a
 * progress line.
 */
export async function ingestStream(cfg: IngestCliConfig, input: Readable, name: string, totals: IngestTotals = emptyTotals()): Promise<IngestTotals> {
  const t0 = performance.now()
  const agent = new (cfg.url.startsWith('https:') ? https.Agent : http.Agent)({ keepAlive: true, maxSockets: 1 })
  /** Lines of the file before the current request. */
  let linesBefore = 0
  /** The request under way, if any. */
  const cur: { up: Upload | null } = { up: null }

  const finish = async (u: Upload) => {
    let a: Answer
    try {
      a = await u.end()
    } catch (err) {
      throw networkError(cfg, err as Error)
    }
    const first = linesBefore + 1
    if (a.status !== 200) {
      const { code, message } = errorMessage(a)
      const m = /^line ([0-9]+)/.exec(message)
      const where = m ? message.replace(/^line [0-9]+/, `line ${linesBefore + Number(m[1])} of ${name}`) : message
      const before = totals.requests > 0 ? `; the ${fmt(totals.accepted)} events before line ${first} were delivered` : ''
      const hint = a.status === 401 ? ' (pass --token TOKEN)' : ''
      throw new CommandError(`the node refused the events from line ${first} on (HTTP ${a.status}${code ? ` ${code}` : ''}): ${where}${hint}; none of that request was applied${before}`)
    }
    let body: { accepted?: unknown; rejected?: unknown }
    try {
      body = JSON.parse(a.text) as typeof body
    } catch {
      throw new CommandError(`${cfg.url} answered POST /ingest with something that is not JSON; is it a speedlayer node?`)
    }
    if (typeof body.accepted !== 'number' || typeof body.rejected !== 'object' || body.rejected === null) {
      throw new CommandError(`${cfg.url} answered POST /ingest without the counts; is it a speedlayer node?`)
    }
    totals.accepted += body.accepted
    for (const [view, n] of Object.entries(body.rejected as Record<string, unknown>)) {
      if (typeof n === 'number') totals.rejected[view] = (totals.rejected[view] ?? 0) + n
    }
    totals.requests++
    linesBefore += u.newlines
    totals.ms = performance.now() - t0
  }

  const endRequest = async () => {
    const u = cur.up
    if (!u) return
    cur.up = null
    await finish(u)
  }

  const write = async (buf: Buffer) => {
    const u = (cur.up ??= new Upload(cfg, agent))
    await u.write(buf)
    totals.bytes += buf.length
    // The node answered before the body was complete: only an error does that.
    if (!u.open) await endRequest()
  }

  try {
    for await (const raw of input) {
      const buf = raw as Buffer
      let off = 0
      while (off < buf.length) {
        const room = cfg.chunkBytes - (cur.up?.bytes ?? 0)
        if (room > 0) {
          const n = Math.min(room, buf.length - off)
          await write(buf.subarray(off, off + n))
          off += n
          continue
        }
        // Over the chunk size: the request ends with the line under way.
        const nl = buf.indexOf(0x0a, off)
        const end = nl < 0 ? buf.length : nl + 1
        await write(buf.subarray(off, end))
        off = end
        if (nl >= 0) await endRequest()
      }
    }
    await endRequest()
  } catch (err) {
    if (err instanceof CommandError) throw err
    const code = (err as NodeJS.ErrnoException).code
    throw new CommandError(`cannot read ${name}: ${code ?? (err as Error).message}`)
  } finally {
    agent.destroy()
  }
  totals.ms = performance.now() - t0
  return totals
}

export function summaryLine(t: IngestTotals): string {
  const s = t.ms / 1000
  const rate = s > 0 ? t.accepted / s : 0
  const views = Object.keys(t.rejected).sort()
  const rejected = views.length === 0 ? 'no ingest rules' : views.map((v) => `${v} ${t.rejected[v]}`).join(', ')
  return `accepted ${t.accepted} events in ${s.toFixed(1)} s (${fmt(rate)} events/s, ${mb(t.bytes)}); rejected: ${rejected}`
}

export async function ingestCommand(argv: string[]): Promise<void> {
  const cfg = parseIngestArgs(argv)
  let input: Readable
  let name: string
  if (cfg.input === '-') {
    input = process.stdin
    name = 'stdin'
    if (process.stdin.isTTY) process.stderr.write('reading NDJSON events from the terminal; end with Ctrl-D\n')
  } else {
    name = cfg.input
    try {
      const fh = await open(cfg.input, 'r')
      input = fh.createReadStream({ highWaterMark: 1024 * 1024 })
    } catch (err) {
      throw new CommandError(`cannot read ${cfg.input}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`)
    }
  }
  const live = emptyTotals()
  const t0 = performance.now()
  const progress = new Progress(process.stderr, () => {
    const s = (performance.now() - t0) / 1000
    return `ingest: ${fmt(live.accepted)} events (${fmt(s > 0 ? live.accepted / s : 0)} events/s), ${mb(live.bytes)} sent, ${s.toFixed(0)} s`
  })
  progress.start()
  let totals: IngestTotals
  try {
    totals = await ingestStream(cfg, input, name, live)
  } finally {
    progress.stop()
    input.destroy()
  }
  process.stdout.write(`${summaryLine(totals)}\n`)
}
