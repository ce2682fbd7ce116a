/**
 * `speedlayer batch --url NODE_URL --view VIEW --horizon T FILE`: streams an NDJSON file of
 * `{"key", "value"}` lines as one PUT /batch/VIEW?horizon=T. One request, because an import is
 * one batch view that replaces the previous one whole: it cannot be cut into parts the way
 * `speedlayer ingest` cuts events. The file is streamed, never held; progress on stderr; one
 * summary line on stdout.
 */
import { open } from 'node:fs/promises'
import { parseArgs } from 'node:util'
import type { Readable } from 'node:stream'
import { CommandError, UsageError } from './parse.js'
import { nodeUrl, refusal, requestText } from './client.js'

export const BATCH_USAGE = 'usage: speedlayer batch --url NODE_URL --view VIEW --horizon T [--token TOKEN] FILE|-   (T: ms since the epoch or ISO 8601)'

export interface BatchCliConfig {
  url: string
  token?: string
  view: string
  horizon: string
  input: string
}

export function parseBatchArgs(argv: string[], env: NodeJS.ProcessEnv = process.env): BatchCliConfig {
  let parsed
  try {
    parsed = parseArgs({
      args: argv,
      strict: true,
      allowPositionals: true,
      options: { url: { type: 'string' }, token: { type: 'string' }, view: { type: 'string' }, horizon: { type: 'string' } },
    })
  } catch (err) {
    throw new UsageError(`${(err as Error).message}\n${BATCH_USAGE}`)
  }
  const v = parsed.values
  const url = nodeUrl(v.url, BATCH_USAGE)
  if (!v.view) throw new UsageError(`--view is required (the bucketed view the batch view is for)\n${BATCH_USAGE}`)
  if (!v.horizon) throw new UsageError(`--horizon is required (the batch layer's results are exact up to it)\n${BATCH_USAGE}`)
  if (parsed.positionals.length !== 1) throw new UsageError(`expected one input FILE (or - for stdin), got ${parsed.positionals.length}\n${BATCH_USAGE}`)
  return { url, token: v.token ?? env.SPEEDLAYER_TOKEN, view: v.view, horizon: v.horizon, input: parsed.positionals[0] as string }
}

function mb(bytes: number): string {
  return `${(bytes / 1e6).toFixed(1)} MB`
}

export async function batchCommand(argv: string[]): Promise<void> {
  const cfg = parseBatchArgs(argv)
  let input: Readable
  let name: string
  let total = 0
  if (cfg.input === '-') {
    input = process.stdin
    name = 'stdin'
  } else {
    name = cfg.input
    try {
      const fh = await open(cfg.input, 'r')
      total = (await fh.stat()).size
      input = fh.createReadStream({ highWaterMark: 1024 * 1024 })
    } catch (err) {
      throw new CommandError(`cannot read ${cfg.input}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`)
    }
  }
  const path = `/batch/${encodeURIComponent(cfg.view)}?${new URLSearchParams({ horizon: cfg.horizon })}`
  const t0 = performance.now()
  let sent = 0
  const err = process.stderr
  const line = () => `batch: ${mb(sent)}${total > 0 ? ` of ${mb(total)}` : ''} sent, ${((performance.now() - t0) / 1000).toFixed(0)} s`
  const timer = setInterval(() => err.write(err.isTTY ? `\r${line()}\x1b[K` : `${line()}\n`), err.isTTY ? 250 : 5000)
  timer.unref()
  let a
  try {
    a = await requestText(cfg.url, 'PUT', path, cfg.token, input, (n) => (sent += n))
  } finally {
    clearInterval(timer)
    if (err.isTTY && performance.now() - t0 > 250) err.write(`\r${line()}\x1b[K\n`)
    input.destroy()
  }
  if (a.status !== 200) {
    const e = refusal(a, `the node refused the batch view from ${name}`)
    // Line numbers in the node's answer are lines of the file: the whole file is one request.
    throw new CommandError(`${e.message}; nothing was imported`)
  }
  let body: { keys?: unknown; expired?: unknown; horizon?: unknown }
  try {
    body = JSON.parse(a.text) as typeof body
  } catch {
    throw new CommandError(`${cfg.url} answered PUT /batch with something that is not JSON; is it a speedlayer node?`)
  }
  if (typeof body.keys !== 'number' || typeof body.expired !== 'number' || typeof body.horizon !== 'number') {
    throw new CommandError(`${cfg.url} answered PUT /batch without the counts; is it a speedlayer node?`)
  }
  const s = (performance.now() - t0) / 1000
  process.stdout.write(`imported ${body.keys} keys into ${cfg.view} with horizon ${new Date(body.horizon).toISOString()} in ${s.toFixed(1)} s (${mb(sent)}); ${body.expired} realtime keys expired\n`)
}
