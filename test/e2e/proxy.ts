/**
 * A TCP proxy on 127.0.0.1 for partition tests: every peer link of an e2e test goes through one,
 * so a test can cut a link at the network level (both sockets destroyed, new connections
 * refused) rather than only through the operator API, and heal it again.
 *
 * The proxy listens before its target exists (nodes start on port 0 and name their port in the
 * ready line): until `setTarget`, and while cut, a connection is accepted and destroyed at
 * once, which a WebSocket dialler sees as a failed dial and retries with backoff. `connections`
 * counts every connection attempt: tests use it as a clock made of events ("the dialler behind
 * this proxy has retried N times") instead of waiting a fixed time.
 */
import net from 'node:net'

export class TcpProxy {
  /** Connection attempts seen (forwarded or refused). */
  connections = 0
  /** Connections forwarded to the target. */
  forwarded = 0
  private target: number | null = null
  private isCut = false
  private readonly sockets = new Set<net.Socket>()
  private waiters: Array<() => void> = []

  private constructor(private readonly server: net.Server) {
    server.on('connection', (client) => this.onConnection(client))
  }

  static async start(target: number | null = null): Promise<TcpProxy> {
    const server = net.createServer({ noDelay: true })
    const proxy = new TcpProxy(server)
    proxy.target = target
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject)
      server.listen(0, '127.0.0.1', () => {
        server.off('error', reject)
        resolve()
      })
    })
    return proxy
  }

  get port(): number {
    return (this.server.address() as net.AddressInfo).port
  }

  /** The peer URL a node dials to reach the target through this proxy. */
  get peerUrl(): string {
    return `ws://127.0.0.1:${this.port}/peer`
  }

  get cut(): boolean {
    return this.isCut
  }

  /** Where new connections go (a restarted node may come back on another port). */
  setTarget(port: number): void {
    this.target = port
  }

  /** Destroys every open connection and refuses new ones until `heal`. */
  cutLink(): void {
    this.isCut = true
    for (const s of this.sockets) s.destroy()
    this.sockets.clear()
  }

  heal(): void {
    this.isCut = false
  }

  /** Resolves once `pred` holds (checked on every connection attempt). */
  waitFor(what: string, pred: () => boolean, timeoutMs = 10_000): Promise<void> {
    if (pred()) return Promise.resolve()
    return new Promise((resolve, reject) => {
      const check = () => {
        if (!pred()) return
        clearTimeout(timer)
        this.waiters = this.waiters.filter((w) => w !== check)
        resolve()
      }
      const timer = setTimeout(() => {
        this.waiters = this.waiters.filter((w) => w !== check)
        reject(new Error(`proxy :${this.port}: timed out after ${timeoutMs} ms waiting for ${what} (connections ${this.connections}, forwarded ${this.forwarded})`))
      }, timeoutMs)
      this.waiters.push(check)
    })
  }

  close(): Promise<void> {
    this.cutLink()
    return new Promise((resolve) => this.server.close(() => resolve()))
  }

  private onConnection(client: net.Socket): void {
    this.connections++
    const target = this.target
    if (this.isCut || target === null) {
      client.destroy()
    } else {
      this.forwarded++
      const upstream = net.connect({ port: target, host: '127.0.0.1', noDelay: true })
      this.sockets.add(client)
      this.sockets.add(upstream)
      const end = () => {
        client.destroy()
        upstream.destroy()
        this.sockets.delete(client)
        this.sockets.delete(upstream)
      }
      client.on('error', end)
      upstream.on('error', end)
      client.on('close', end)
      upstream.on('close', end)
      client.pipe(upstream)
      upstream.pipe(client)
    }
    for (const w of [...this.waiters]) w()
  }
}
