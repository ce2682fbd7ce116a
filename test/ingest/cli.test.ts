/**
 * `speedlayer ingest` as a child process against a child `speedlayer start` (the built CLI in
 * dist/: run `npx tsc -p tsconfig.json` first).
 */
import { afterEach, describe, expect, it } from 'vitest'
import { spawn } from 'node:child_process'
import { writeFile } from 'node:fs/promises'
import path from 'node:path'
import { CLI, Child, E2E, REPO_ROOT, STACK_FRAME, freePort, lines } from '../e2e/helpers.js'

const VIEWS = path.join(REPO_ROOT, 'bench/pageview-views.json')
const HOUR = 3_600_000

let e2e: E2E
afterEach(async () => {
  await e2e?.cleanup()
})

async function demoNode(args: string[] = []) {
  e2e = new E2E()
  const data = await e2e.tempDir()
  return e2e.start({ id: 'n1', data, args: ['--views', VIEWS, ...args] })
}

/** Events spread over a few urls and users; every 10th is a click (filtered by the pageview rules). */
function events(n: number, t0: number): string[] {
  return Array.from({ length: n }, (_, i) => JSON.stringify({ kind: i % 10 === 9 ? 'click' : 'pageview', url: `/p${i % 20}`, site: `s${i % 3}`, user: `u${i % 500}`, ts: t0 + (i % 1000), country: 'DE' }))
}

async function pageviewTotal(url: string): Promise<number> {
  const c = e2e.client(url)
  let total = 0
  for (const v of (await c.scanAll('pageviews')).values()) total += v as number
  return total
}

function expectOneCleanLine(stderr: string): string {
  const ls = lines(stderr).filter((l) => !l.startsWith('ingest: '))
  expect(ls, stderr).toHaveLength(1)
  expect(stderr).not.toContain(STACK_FRAME)
  return ls[0] as string
}

describe('speedlayer ingest', () => {
  it('streams a file in many requests; one summary line on stdout; the values are there', async () => {
    const node = await demoNode()
    const t0 = Math.floor(Date.now() / HOUR) * HOUR - 2 * HOUR
    const file = path.join(await e2e.tempDir(), 'events.ndjson')
    const evs = events(20_000, t0)
    evs.splice(100, 0, '', '{"kind":"pageview","url":"/x"}') // a blank line; an event without ts or user
    await writeFile(file, evs.join('\n') + '\n')
    const r = await e2e.run(['ingest', '--url', node.url, '--chunk', '64KiB', file])
    expect(r.exit, r.stderr).toEqual({ code: 0, signal: null })
    const out = lines(r.stdout)
    expect(out).toHaveLength(1)
    expect(out[0]).toMatch(/^accepted 20001 events in [0-9.]+ s \([0-9,]+ events\/s, [0-9.]+ MB\); rejected: online 1, pageviews 1, profiles 1, visitors 1$/)
    expect(r.stderr).not.toContain(STACK_FRAME)
    expect(await pageviewTotal(node.url)).toBe(18_000)
    const c = e2e.client(node.url)
    // Users u0..u499 on s0, but those with u % 10 == 9 only ever click.
    expect(((await c.value('online', 's0')) as string[]).length).toBe(450)
  })

  it('reads stdin with "-"', async () => {
    const node = await demoNode()
    const t0 = Date.now() - 60_000
    const env = { ...process.env }
    delete env.NODE_OPTIONS
    const child = new Child(spawn(process.execPath, [CLI, 'ingest', '--url', node.url, '-'], { cwd: REPO_ROOT, env, stdio: ['pipe', 'pipe', 'pipe'] }))
    try {
      child.proc.stdin?.end(events(1000, t0).join('\n'))
      const exit = await child.waitExit()
      expect(exit, child.describe()).toEqual({ code: 0, signal: null })
      expect(lines(child.stdout)[0]).toMatch(/^accepted 1000 events /)
      expect(await pageviewTotal(node.url)).toBe(900)
    } finally {
      await child.kill9()
    }
  })

  it('a bad line: exit 1, one line naming the line of the file; the requests before it are applied, none after', async () => {
    const node = await demoNode()
    const t0 = Date.now() - HOUR
    const file = path.join(await e2e.tempDir(), 'bad.ndjson')
    const evs = events(30_000, t0)
    evs.splice(15_000, 0, '{"kind": "pageview", "url": ') // line 15001
    await writeFile(file, evs.join('\n') + '\n')
    const r = await e2e.run(['ingest', '--url', node.url, '--chunk', '64KiB', file])
    expect(r.exit.code, r.stderr).toBe(1)
    const line = expectOneCleanLine(r.stderr)
    expect(line).toMatch(/^speedlayer: /)
    expect(line).toContain(`line 15001 of ${file} is not valid JSON`)
    const m = /from line ([0-9]+) on/.exec(line)
    expect(m, line).not.toBeNull()
    const first = Number(m![1])
    expect(first).toBeGreaterThan(1)
    expect(first).toBeLessThanOrEqual(15_001)
    expect(line).toContain(`the ${(first - 1).toLocaleString('en-US')} events before line ${first} were delivered`)
    // Lines 1 .. first-1 are events 0 .. first-2; every 10th is a click.
    const delivered = first - 1
    const pageviews = delivered - Math.floor(delivered / 10)
    expect(await pageviewTotal(node.url)).toBe(pageviews)
    expect(r.stdout).toBe('')
  })

  it('an unreachable node, a missing file, a missing --url: one clear line and a non-zero exit', async () => {
    e2e = new E2E()
    const dir = await e2e.tempDir()
    const file = path.join(dir, 'e.ndjson')
    await writeFile(file, '{"a":1}\n')
    const port = await freePort()
    const down = await e2e.run(['ingest', '--url', `http://127.0.0.1:${port}`, file])
    expect(down.exit.code).toBe(1)
    expect(expectOneCleanLine(down.stderr)).toBe(`speedlayer: cannot reach the node at http://127.0.0.1:${port} (ECONNREFUSED); is it running?`)
    const missing = await e2e.run(['ingest', '--url', `http://127.0.0.1:${port}`, path.join(dir, 'nope.ndjson')])
    expect(missing.exit.code).toBe(1)
    expect(expectOneCleanLine(missing.stderr)).toMatch(/cannot read .*nope\.ndjson: ENOENT/)
    const usage = await e2e.run(['ingest', file])
    expect(usage.exit.code).toBe(2)
    expect(usage.stderr).toMatch(/--url is required/)
    expect(usage.stderr).not.toContain(STACK_FRAME)
  })

  it('--token: refused without it (401, said so), applied with it', async () => {
    const node = await demoNode(['--token', 'sekret'])
    const file = path.join(await e2e.tempDir(), 'e.ndjson')
    await writeFile(file, events(10, Date.now() - 1000).join('\n'))
    const no = await e2e.run(['ingest', '--url', node.url, file])
    expect(no.exit.code).toBe(1)
    expect(expectOneCleanLine(no.stderr)).toMatch(/HTTP 401.*--token/)
    const yes = await e2e.run(['ingest', '--url', node.url, '--token', 'sekret', file])
    expect(yes.exit, yes.stderr).toEqual({ code: 0, signal: null })
    expect(lines(yes.stdout)[0]).toMatch(/^accepted 10 events /)
  })
})
