/**
 * The demo's nodes: N `speedlayer start` child processes on 127.0.0.1, peered in a full mesh,
 * each with its own data directory. A node is ready when its ready line is on its stdout
 * (CONTRACT.md); its log lines are passed on to our stderr, prefixed with its id.
 *
 * No orphans: each child gets SPEEDLAYER_PARENT_PID and a stdin pipe that we never write to, and
 * `start` closes cleanly when that pipe closes (src/cli/start.ts), which the kernel does however
 * this process ends, kill -9 included. `stop()` SIGTERMs every child and waits for its exit.
 */
import { spawn, type ChildProcessWithoutNullStreams } from 'node:child_process'
import net from 'node:net'
import { join } from 'node:path'

/** A node that could not start; the message is the node's own reason, one line. */
export class ClusterError extends Error {
  override readonly name = 'ClusterError'
}

export interface ClusterOptions {
  /** dist/src/cli/main.js */
  cli: string
  nodes: number
  /** First port; node K listens on port + K - 1 when those ports are free. */
  port: number
  /** Node K keeps its data in `<dataRoot>/nodeK`. */
  dataRoot: string
  viewsFile: string
  /** Node.js flags for the node processes (e.g. --cpu-prof), before the script. */
  nodeFlags?: string[]
  log: (line: string) => void
}

export interface ClusterNode {
  id: string
  port: number
  url: string
  pid: number
  /** False once the process has exited. */
  running: boolean
}

const HOST = '127.0.0.1'
/** How long a node may take to close after SIGTERM before it is killed. */
const STOP_TIMEOUT_MS = 15_000
/** How long a node may take to print its ready line (LevelDB recovery of a big .demo-data included). */
const READY_TIMEOUT_MS = 60_000

/** True if `port` can be listened on at 127.0.0.1 right now. */
function portFree(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = net.createServer()
    s.once('error', () => resolve(false))
    s.listen({ port, host: HOST, exclusive: true }, () => s.close(() => resolve(true)))
  })
}

/** n distinct ports the kernel hands out as free (held together, so never the same one twice). */
async function freePorts(n: number): Promise<number[]> {
  const servers = await Promise.all(
    Array.from(
      { length: n },
      () =>
        new Promise<net.Server>((resolve, reject) => {
          const s = net.createServer()
          s.once('error', reject)
          s.listen(0, HOST, () => resolve(s))
        }),
    ),
  )
  const ports = servers.map((s) => (s.address() as net.AddressInfo).port)
  await Promise.all(servers.map((s) => new Promise<void>((r) => s.close(() => r()))))
  return ports
}

/** PORT..PORT+N-1 if all are free, else free ports, saying why. */
export async function choosePorts(port: number, n: number, log: (line: string) => void): Promise<number[]> {
  const wanted = Array.from({ length: n }, (_, i) => port + i)
  if (port > 0 && port + n - 1 <= 65535) {
    const free = await Promise.all(wanted.map(portFree))
    if (free.every(Boolean)) return wanted
    const taken = wanted.filter((_, i) => !free[i])
    log(`demo: port${taken.length > 1 ? 's' : ''} ${taken.join(', ')} on ${HOST} ${taken.length > 1 ? 'are' : 'is'} taken (another demo running?); using free ports instead`)
  }
  return freePorts(n)
}

interface Member {
  node: ClusterNode
  proc: ChildProcessWithoutNullStreams
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>
}

export class Cluster {
  readonly nodes: ClusterNode[] = []
  private readonly members: Member[] = []
  private stopping: Promise<void> | null = null
  private exitListeners: Array<(node: ClusterNode, code: number | null, signal: NodeJS.Signals | null) => void> = []

  private constructor(private readonly opts: ClusterOptions) {}

  /**
   * Spawns every node and resolves once all are ready. If one cannot start, the others are
   * stopped and the error says why (the node's own message).
   */
  static async start(opts: ClusterOptions, ports: number[], onSpawn?: (cluster: Cluster) => void): Promise<Cluster> {
    const c = new Cluster(opts)
    const ready: Promise<void>[] = []
    for (let k = 0; k < ports.length; k++) {
      const id = `node${k + 1}`
      const port = ports[k] as number
      const peers = ports.filter((_, j) => j !== k).map((p) => `ws://${HOST}:${p}/peer`)
      const args = [...(opts.nodeFlags ?? []), opts.cli, 'start', '--id', id, '--port', String(port), '--host', HOST, '--data', join(opts.dataRoot, id), '--views', opts.viewsFile]
      if (peers.length > 0) args.push('--peers', peers.join(','))
      ready.push(c.spawnNode(id, port, args))
    }
    onSpawn?.(c)
    const results = await Promise.allSettled(ready)
    const failed = results.find((r): r is PromiseRejectedResult => r.status === 'rejected')
    if (failed) {
      await c.stop()
      throw failed.reason
    }
    return c
  }

  /** Called when a node exits while the cluster is not being stopped. */
  onUnexpectedExit(listener: (node: ClusterNode, code: number | null, signal: NodeJS.Signals | null) => void): void {
    this.exitListeners.push(listener)
  }

  /** Process ids of the nodes still running. */
  pids(): number[] {
    return this.nodes.filter((n) => n.running).map((n) => n.pid)
  }

  /** SIGTERM to every node, then waits for each exit (SIGKILL after STOP_TIMEOUT_MS). Idempotent. */
  stop(): Promise<void> {
    this.stopping ??= (async () => {
      await Promise.all(
        this.members.map(async (m) => {
          if (!m.node.running) return
          m.proc.kill('SIGTERM')
          let timer: NodeJS.Timeout | undefined
          const late = new Promise<'late'>((r) => (timer = setTimeout(() => r('late'), STOP_TIMEOUT_MS)))
          if ((await Promise.race([m.exited, late])) === 'late') {
            this.opts.log(`demo: ${m.node.id} did not close within ${STOP_TIMEOUT_MS / 1000} s; killing it`)
            m.proc.kill('SIGKILL')
            await m.exited
          }
          clearTimeout(timer)
        }),
      )
    })()
    return this.stopping
  }

  private spawnNode(id: string, port: number, args: string[]): Promise<void> {
    const proc = spawn(process.execPath, args, {
      stdio: ['pipe', 'pipe', 'pipe'],
      env: { ...process.env, SPEEDLAYER_PARENT_PID: String(process.pid) },
    })
    const node: ClusterNode = { id, port, url: `http://${HOST}:${port}`, pid: proc.pid ?? -1, running: true }
    const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => {
      proc.once('close', (code, signal) => {
        node.running = false
        resolve({ code, signal })
      })
    })
    const member: Member = { node, proc, exited }
    this.members.push(member)
    this.nodes.push(node)
    // Writing to a node that died must not take the demo down.
    proc.stdin.on('error', () => {})

    let isReady = false
    const early: string[] = []
    let errBuf = ''
    proc.stderr.setEncoding('utf8').on('data', (s: string) => {
      errBuf += s
      let nl: number
      while ((nl = errBuf.indexOf('\n')) >= 0) {
        const line = errBuf.slice(0, nl)
        errBuf = errBuf.slice(nl + 1)
        if (isReady || this.stopping) this.opts.log(`${id}: ${line}`)
        else early.push(line)
      }
    })

    return new Promise<void>((resolve, reject) => {
      let out = ''
      const expected = `speedlayer ${id} listening on http://${HOST}:${port}`
      const timer = setTimeout(() => {
        proc.kill('SIGKILL')
        reject(new ClusterError(`${id} printed no ready line within ${READY_TIMEOUT_MS / 1000} s`))
      }, READY_TIMEOUT_MS)
      const onData = (s: string) => {
        out += s
        const nl = out.indexOf('\n')
        if (nl < 0) return
        clearTimeout(timer)
        proc.stdout.off('data', onData)
        proc.stdout.resume()
        const line = out.slice(0, nl)
        if (line !== expected) {
          proc.kill('SIGKILL')
          return reject(new ClusterError(`${id} printed ${JSON.stringify(line)} instead of its ready line`))
        }
        isReady = true
        for (const l of early) this.opts.log(`${id}: ${l}`)
        early.length = 0
        resolve()
      }
      proc.stdout.setEncoding('utf8').on('data', onData)
      proc.once('error', (err) => {
        clearTimeout(timer)
        reject(new ClusterError(`cannot start ${id}: ${err.message}`))
      })
      void exited.then(({ code, signal }) => {
        if (!isReady) {
          clearTimeout(timer)
          // The node's own one-line reason ("speedlayer: port 7001 ... is already in use").
          const why = (early.concat(errBuf).filter((l) => l.trim() !== '').pop() ?? '').replace(/^speedlayer: /, '')
          reject(new ClusterError(`${id} did not start (${signal ?? `exit code ${code}`})${why ? `: ${why}` : ''}`))
          return
        }
        if (!this.stopping) for (const l of this.exitListeners) l(node, code, signal)
      })
    })
  }
}
