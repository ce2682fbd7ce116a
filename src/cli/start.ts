/** `speedlayer start`: one node serving HTTP until SIGTERM/SIGINT. */
import { parseArgs } from 'node:util'
import { readFile } from 'node:fs/promises'
import { mkdir } from 'node:fs/promises'
import { openNode, type SpeedNode } from '../node.js'
import { startServer, type SpeedServer } from '../server/http.js'
import { isPlainObject } from '../../crdts/validate.js'
import { UsageError, parseDuration, parsePeerUrls, parsePort, parseSize } from './parse.js'

export const START_USAGE = `usage: speedlayer start --id ID --port PORT --data DIR [--host 127.0.0.1]
                        [--peers URL,URL...] [--views FILE] [--secret SECRET]
                        [--token TOKEN [--token-reads]] [--fsync] [--max-drift 60s]
                        [--max-body 1MiB] [--max-backoff 2s]`

export interface StartConfig {
  id: string
  port: number
  host: string
  data: string
  peers: string[]
  viewsFile?: string
  secret?: string
  token?: string
  tokenReads: boolean
  fsync: boolean
  maxDriftMs: number
  maxBody: number
  maxBackoffMs: number
}

export function parseStartArgs(argv: string[]): StartConfig {
  let parsed
  try {
    parsed = parseArgs({
      args: argv,
      strict: true,
      allowPositionals: false,
      options: {
        id: { type: 'string' },
        port: { type: 'string' },
        data: { type: 'string' },
        host: { type: 'string', default: '127.0.0.1' },
        peers: { type: 'string' },
        views: { type: 'string' },
        secret: { type: 'string' },
        token: { type: 'string' },
        'token-reads': { type: 'boolean', default: false },
        fsync: { type: 'boolean', default: false },
        'max-drift': { type: 'string', default: '60s' },
        'max-body': { type: 'string', default: '1MiB' },
        'max-backoff': { type: 'string', default: '2s' },
      },
    })
  } catch (err) {
    throw new UsageError(`${(err as Error).message}; see speedlayer --help`)
  }
  const v = parsed.values
  if (!v.id) throw new UsageError('--id is required (the replica id, e.g. --id node1)')
  if (!/^[A-Za-z0-9._-]{1,64}$/.test(v.id)) throw new UsageError(`--id must be 1 to 64 of A-Z a-z 0-9 . _ -, got "${v.id}"`)
  if (v.port === undefined) throw new UsageError('--port is required (e.g. --port 7001)')
  if (!v.data) throw new UsageError('--data is required (the data directory, created if missing)')
  if (v['token-reads'] && v.token === undefined) throw new UsageError('--token-reads needs --token')
  return {
    id: v.id,
    port: parsePort('--port', v.port),
    host: v.host as string,
    data: v.data,
    peers: v.peers ? parsePeerUrls(v.peers) : [],
    viewsFile: v.views,
    secret: v.secret,
    token: v.token,
    tokenReads: v['token-reads'] as boolean,
    fsync: v.fsync as boolean,
    maxDriftMs: parseDuration('--max-drift', v['max-drift'] as string),
    maxBody: parseSize('--max-body', v['max-body'] as string),
    maxBackoffMs: parseDuration('--max-backoff', v['max-backoff'] as string),
  }
}

export async function readViewsFile(path: string): Promise<Record<string, unknown>> {
  let text: string
  try {
    text = await readFile(path, 'utf8')
  } catch (err) {
    throw new UsageError(`cannot read the views file ${path}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`)
  }
  let json: unknown
  try {
    json = JSON.parse(text)
  } catch (err) {
    throw new UsageError(`the views file ${path} is not valid JSON: ${(err as Error).message}`)
  }
  if (!isPlainObject(json) || !isPlainObject(json.views)) throw new UsageError(`the views file ${path} must be {"views": {NAME: DEFINITION, ...}}`)
  return json.views
}

export interface RunningNode {
  node: SpeedNode
  server: SpeedServer
  stop(): Promise<void>
}

/** Opens the node and its server; used by `start` and by the demo. */
export async function runNode(cfg: StartConfig, log: (line: string) => void): Promise<RunningNode> {
  const views = cfg.viewsFile ? await readViewsFile(cfg.viewsFile) : undefined
  await mkdir(cfg.data, { recursive: true })
  const node = await openNode({
    id: cfg.id,
    dataDir: cfg.data,
    views,
    fsync: cfg.fsync,
    maxDriftMs: cfg.maxDriftMs,
    log,
    peers: cfg.peers,
    secret: cfg.secret,
    maxBackoffMs: cfg.maxBackoffMs,
  })
  if (node.recovery.records > 0 || node.recovery.snapshots > 0) {
    log(`recovered ${node.recovery.snapshots} snapshots and ${node.recovery.records} log records in ${node.recovery.ms.toFixed(0)} ms`)
  }
  let server: SpeedServer
  try {
    server = await startServer(node, { host: cfg.host, port: cfg.port, maxBody: cfg.maxBody, token: cfg.token, tokenReads: cfg.tokenReads, log })
  } catch (err) {
    await node.close()
    const code = (err as NodeJS.ErrnoException).code
    if (code === 'EADDRINUSE') throw new UsageError(`port ${cfg.port} on ${cfg.host} is already in use; pick another --port`)
    if (code === 'EADDRNOTAVAIL') throw new UsageError(`cannot listen on ${cfg.host}: no such local address; try --host 127.0.0.1`)
    throw err
  }
  let stopping: Promise<void> | null = null
  return {
    node,
    server,
    stop() {
      stopping ??= (async () => {
        await server.close()
        await node.close()
      })()
      return stopping
    },
  }
}

export async function startCommand(argv: string[]): Promise<void> {
  const cfg = parseStartArgs(argv)
  const log = (line: string) => process.stderr.write(`${line}\n`)
  const running = await runNode(cfg, log)
  const host = cfg.host.includes(':') ? `[${cfg.host}]` : cfg.host
  const port = new URL(running.server.url).port
  process.stdout.write(`speedlayer ${cfg.id} listening on http://${host}:${port}\n`)
  const shutdown = (signal: string) => {
    log(`${signal}: closing`)
    running.stop().then(
      () => process.exit(0),
      (err: unknown) => {
        log(`error while closing: ${(err as Error).message}`)
        process.exit(1)
      },
    )
  }
  // A repeated signal finds the shutdown already under way and changes nothing.
  let signalled = false
  const once = (why: string) => {
    if (signalled) return
    signalled = true
    shutdown(why)
  }
  for (const sig of ['SIGTERM', 'SIGINT'] as const) process.on(sig, () => once(sig))
  watchSupervisor(process.env.SPEEDLAYER_PARENT_PID, once)
}

/**
 * Under a supervisor (`speedlayer demo` sets SPEEDLAYER_PARENT_PID and gives us a stdin pipe it
 * never writes to): close cleanly as soon as the supervisor is gone, however it went, kill -9
 * included, so that a demo never leaves orphan nodes. The kernel closes the pipe when the
 * supervisor dies; the ppid check covers a supervisor that handed us another stdin.
 */
function watchSupervisor(raw: string | undefined, stop: (why: string) => void): void {
  const ppid = Number(raw)
  if (raw === undefined || !Number.isSafeInteger(ppid) || ppid <= 0) return
  const gone = () => stop('supervisor gone')
  // With the supervisor gone, our stdout/stderr pipes are broken: logging must not crash the close.
  process.stdout.on('error', () => {})
  process.stderr.on('error', () => {})
  process.stdin.on('end', gone)
  process.stdin.on('error', gone)
  process.stdin.resume()
  setInterval(() => {
    if (process.ppid !== ppid) gone()
  }, 500).unref()
}
