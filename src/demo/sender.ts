/**
 * Ships the generator's events to one node: queued lines go out as one NDJSON `POST /ingest`
 * per flush (the demo flushes every ~100 ms) over a keep-alive connection, one request in flight
 * at a time. Users whose session ended are removed from `online` (`POST /views/online/SITE
 * {"remove": [users]}`) only after the node has acknowledged the ingest holding their last
 * pageview: the remove then observes every add of the session, so no user stays online for ever.
 *
 * A node that is down or slow does not make the demo buffer without bound: past `maxPending`
 * events the oldest are dropped from the realtime path (they are in the master dataset, and the
 * batch layer counts them). A failed request is retried after a growing pause (up to 3 s: below the node's 5 s keep-alive timeout, so the idle connection is still there), and a
 * backlog goes out in requests of at most `maxBatch` events, so a node that stalled is not
 * buried under one huge request the moment it answers again.
 */
import http from 'node:http'

export interface SenderStats {
  sent: number
  dropped: number
  failedRequests: number
  removed: number
}

export class IngestSender {
  readonly stats: SenderStats = { sent: 0, dropped: 0, failedRequests: 0, removed: 0 }
  /** The last failure, cleared by the next success: the status line says why a node lags. */
  lastError: string | null = null
  private lines: string[] = []
  /** site -> users whose session ended with one of the queued (or earlier) lines. */
  private leaving = new Map<string, string[]>()
  private inFlight: Promise<void> | null = null
  private readonly agent = new http.Agent({ keepAlive: true, maxSockets: 2 })

  /** After a failure, nothing is sent before this time (performance.now()); see backOff(). */
  private retryAt = 0
  private backoffMs = 0

  constructor(
    readonly id: string,
    readonly url: string,
    private readonly maxPending: number,
    /** Events per request at most: a node that fell behind gets its backlog in bounded bites. */
    private readonly maxBatch: number,
    private readonly onlineView = 'online',
  ) {}

  push(line: string): void {
    this.lines.push(line)
    if (this.lines.length > this.maxPending) {
      const drop = this.lines.length - this.maxPending
      this.lines.splice(0, drop)
      this.stats.dropped += drop
    }
  }

  /** The user leaves `site` once what is queued now is acknowledged. */
  leave(site: string, user: string): void {
    let users = this.leaving.get(site)
    if (users === undefined) this.leaving.set(site, (users = []))
    users.push(user)
  }

  /**
   * Sends what is queued (up to maxBatch events), unless a request is still in flight or the node
   * failed a moment ago: the next flush takes the rest.
   */
  flush(): void {
    if (this.inFlight !== null || (this.lines.length === 0 && this.leaving.size === 0)) return
    if (performance.now() < this.retryAt) return
    let lines = this.lines
    let leaving = this.leaving
    if (lines.length > this.maxBatch) {
      // Sessions that ended are removed once their last pageview is in: keep them with the rest.
      lines = this.lines.slice(0, this.maxBatch)
      this.lines = this.lines.slice(this.maxBatch)
      leaving = new Map()
    } else {
      this.lines = []
      this.leaving = new Map()
    }
    this.inFlight = this.send(lines, leaving).finally(() => (this.inFlight = null))
  }

  /** A failed request: wait before the next one, longer each time (a stalled node gets air). */
  private backOff(): void {
    this.backoffMs = Math.min(3000, Math.max(200, this.backoffMs * 2))
    this.retryAt = performance.now() + this.backoffMs
  }

  close(): void {
    this.agent.destroy()
  }

  private async send(lines: string[], leaving: Map<string, string[]>): Promise<void> {
    if (lines.length > 0) {
      const a = await this.request('POST', '/ingest', `${lines.join('\n')}\n`, 'application/x-ndjson')
      if (a.status !== 200) {
        this.stats.failedRequests++
        this.backOff()
        this.lastError = a.status === 0 ? a.text : `POST /ingest answered ${a.status}: ${a.text.slice(0, 200)}`
        // Retried with the next flush, ahead of newer events (bounded by maxPending).
        this.lines = lines.concat(this.lines)
        for (const [site, users] of leaving) for (const u of users) this.leave(site, u)
        if (this.lines.length > this.maxPending) {
          const drop = this.lines.length - this.maxPending
          this.lines.splice(0, drop)
          this.stats.dropped += drop
        }
        return
      }
      this.stats.sent += lines.length
    }
    const sites = [...leaving]
    for (let i = 0; i < sites.length; i++) {
      const [site, users] = sites[i] as [string, string[]]
      const a = await this.request('POST', `/views/${encodeURIComponent(this.onlineView)}/${encodeURIComponent(site)}`, JSON.stringify({ remove: users }), 'application/json')
      if (a.status === 200) {
        this.stats.removed += users.length
        continue
      }
      this.stats.failedRequests++
      this.backOff()
      this.lastError = a.status === 0 ? a.text : `removing from ${this.onlineView} answered ${a.status}: ${a.text.slice(0, 200)}`
      // Their adds are acknowledged already: retrying later still removes them.
      for (const [s, us] of sites.slice(i)) for (const u of us) this.leave(s, u)
      return
    }
    this.lastError = null
    this.backoffMs = 0
  }

  /**
   * One request; a network error is status 0 with the reason as text (the demo keeps going). The
   * timeout is long: an ingest that timed out may still have been applied, and sending it again
   * would count its events twice.
   */
  request(method: string, path: string, body: string | undefined, contentType = 'application/json'): Promise<{ status: number; text: string }> {
    return new Promise((resolve) => {
      const headers: Record<string, string | number> = {}
      if (body !== undefined) {
        headers['content-type'] = contentType
        headers['content-length'] = Buffer.byteLength(body)
      }
      const req = http.request(`${this.url}${path}`, { method, agent: this.agent, headers, timeout: 120_000 }, (res) => {
        const parts: Buffer[] = []
        res.on('data', (c: Buffer) => parts.push(c))
        res.on('end', () => resolve({ status: res.statusCode ?? 0, text: Buffer.concat(parts).toString('utf8') }))
        res.on('error', (err) => resolve({ status: 0, text: err.message }))
      })
      req.on('timeout', () => req.destroy(new Error('no answer within 120 s')))
      req.on('error', (err) => resolve({ status: 0, text: `${(err as NodeJS.ErrnoException).code ?? err.message}` }))
      req.end(body)
    })
  }
}
