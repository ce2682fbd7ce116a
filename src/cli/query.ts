/**
 * `speedlayer query --url NODE_URL VIEW KEY`: prints the node's answer to GET /query/VIEW/KEY (one
 * JSON line). With `--prefix P [--from T1] [--to T2]` and only VIEW, the range form:
 * GET /query/VIEW?prefix=P&from=T1&to=T2.
 */
import { parseArgs } from 'node:util'
import { CommandError, UsageError } from './parse.js'
import { nodeUrl, requestText, refusal } from './client.js'

export const QUERY_USAGE = 'usage: speedlayer query --url NODE_URL [--token TOKEN] VIEW KEY\n       speedlayer query --url NODE_URL [--token TOKEN] VIEW --prefix P [--from T1] [--to T2]   (times: ms or ISO 8601)'

export interface QueryCliConfig {
  url: string
  token?: string
  view: string
  key?: string
  range?: { prefix: string; from?: string; to?: string }
}

export function parseQueryArgs(argv: string[], env: NodeJS.ProcessEnv = process.env): QueryCliConfig {
  let parsed
  try {
    parsed = parseArgs({
      args: argv,
      strict: true,
      allowPositionals: true,
      options: { url: { type: 'string' }, token: { type: 'string' }, prefix: { type: 'string' }, from: { type: 'string' }, to: { type: 'string' } },
    })
  } catch (err) {
    throw new UsageError(`${(err as Error).message}\n${QUERY_USAGE}`)
  }
  const v = parsed.values
  const url = nodeUrl(v.url, QUERY_USAGE)
  const token = v.token ?? env.SPEEDLAYER_TOKEN
  const pos = parsed.positionals
  if (v.prefix !== undefined) {
    if (pos.length !== 1) throw new UsageError(`a range query takes the view alone (with --prefix), got ${pos.length} arguments\n${QUERY_USAGE}`)
    return { url, token, view: pos[0] as string, range: { prefix: v.prefix, from: v.from, to: v.to } }
  }
  if (v.from !== undefined || v.to !== undefined) throw new UsageError(`--from and --to go with --prefix (a range query)\n${QUERY_USAGE}`)
  if (pos.length !== 2) throw new UsageError(`expected VIEW KEY, got ${pos.length} argument${pos.length === 1 ? '' : 's'}\n${QUERY_USAGE}`)
  return { url, token, view: pos[0] as string, key: pos[1] as string }
}

export function queryPath(cfg: QueryCliConfig): string {
  const view = encodeURIComponent(cfg.view)
  if (cfg.range === undefined) return `/query/${view}/${encodeURIComponent(cfg.key as string)}`
  const q = new URLSearchParams({ prefix: cfg.range.prefix })
  if (cfg.range.from !== undefined) q.set('from', cfg.range.from)
  if (cfg.range.to !== undefined) q.set('to', cfg.range.to)
  return `/query/${view}?${q}`
}

export async function queryCommand(argv: string[]): Promise<void> {
  const cfg = parseQueryArgs(argv)
  const a = await requestText(cfg.url, 'GET', queryPath(cfg), cfg.token)
  if (a.status !== 200) throw refusal(a, `GET ${queryPath(cfg)}`)
  let body: unknown
  try {
    body = JSON.parse(a.text)
  } catch {
    throw new CommandError(`${cfg.url} answered with something that is not JSON; is it a speedlayer node?`)
  }
  process.stdout.write(`${JSON.stringify(body)}\n`)
}
