/**
 * `speedlayer demo`: until the three-node demo lands, one node with the demo's pageview views and
 * a generator of pageview events, so `npm start` shows a working realtime view store at once.
 */
import { parseArgs } from 'node:util'
import { join, dirname } from 'node:path'
import { fileURLToPath } from 'node:url'
import { UsageError, parsePort } from './parse.js'
import { readViewsFile, runNode } from './start.js'

export const DEMO_USAGE = 'usage: speedlayer demo [--nodes 3] [--rate EVENTS_PER_S] [--port 7001]'

const URLS = ['/', '/pricing', '/docs', '/blog/crdts', '/blog/lambda', '/signup', '/about', '/docs/api', '/docs/storage', '/careers']
const SITES = ['shop.example', 'docs.example', 'blog.example']
const COUNTRIES = ['DE', 'FR', 'US', 'JP', 'BR', 'IN']
const DEVICES = ['mobile', 'desktop', 'tablet']

/** Zipf-like pick: item i with weight 1/(i+1). */
function zipf<T>(items: T[], rnd: () => number): T {
  const total = items.reduce((t, _, i) => t + 1 / (i + 1), 0)
  let x = rnd() * total
  for (let i = 0; i < items.length; i++) {
    x -= 1 / (i + 1)
    if (x <= 0) return items[i] as T
  }
  return items[items.length - 1] as T
}

export async function demoCommand(argv: string[]): Promise<void> {
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
  const rate = Number(values.rate)
  if (!Number.isFinite(rate) || rate <= 0 || rate > 1e6) throw new UsageError(`--rate expects events per second from 1 to 1000000, got "${values.rate}"`)
  const port = parsePort('--port', values.port as string)
  const log = (line: string) => process.stderr.write(`${line}\n`)
  const root = join(dirname(fileURLToPath(import.meta.url)), '..', '..', '..')
  const viewsFile = join(root, 'demo', 'views.json')
  const views = await readViewsFile(viewsFile)
  const running = await runNode(
    {
      id: 'node1',
      port,
      host: '127.0.0.1',
      data: join(process.cwd(), '.demo-data', 'node1'),
      peers: [],
      viewsFile,
      tokenReads: false,
      fsync: false,
      maxDriftMs: 60_000,
      maxBody: 1024 * 1024,
      maxBackoffMs: 2000,
    },
    log,
  )
  const { node, server } = running
  log(`node1: ${server.url} (single node: the three-node demo comes with replication)`)
  process.stdout.write(`dashboard: ${server.url}/\n`)
  log(`views: ${Object.keys(views).join(', ')}; generating ${rate} pageviews/s (Ctrl-C stops)`)

  let seq = 0
  let sent = 0
  const rnd = Math.random
  const hour = (ts: number) => new Date(Math.floor(ts / 3_600_000) * 3_600_000).toISOString()
  const timer = setInterval(() => {
    const batch = Math.max(1, Math.round(rate / 10))
    for (let i = 0; i < batch; i++) {
      const ts = Date.now()
      const url = zipf(URLS, rnd)
      const user = `u${Math.floor(rnd() * 500)}`
      const site = SITES[(seq++ >> 3) % SITES.length] as string
      const key = `${url}|${hour(ts)}`
      const writes = [
        node.apply('pageviews', key, { inc: 1 }),
        node.apply('visitors', key, { add: user }),
        node.apply('online', site, { add: user }),
        node.apply('profiles', user, { set: { country: zipf(COUNTRIES, rnd), device: zipf(DEVICES, rnd), url }, ts }),
      ]
      Promise.all(writes).then(
        () => sent++,
        (err: unknown) => log(`write failed: ${(err as Error).message}`),
      )
    }
  }, 100)
  const status = setInterval(() => {
    const s = node.stats()
    log(`events ${sent}, keys ${s.keys}, log ${(s.storage.logBytes / 1e6).toFixed(1)} MB written, compactions ${s.storage.compactions}`)
  }, 10_000)

  let stopping = false
  const stop = (sig: string) => {
    if (stopping) return
    stopping = true
    clearInterval(timer)
    clearInterval(status)
    log(`${sig}: stopping the demo`)
    running.stop().then(
      () => process.exit(0),
      () => process.exit(1),
    )
  }
  process.on('SIGINT', () => stop('SIGINT'))
  process.on('SIGTERM', () => stop('SIGTERM'))
}
