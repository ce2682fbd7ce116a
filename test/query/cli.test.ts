/**
 * `speedlayer batch` and `speedlayer query` as child processes (the built CLI in dist/: run
 * `npx tsc -p tsconfig.json` first) against a child `speedlayer start` with the demo views.
 */
import { afterEach, describe, expect, it } from 'vitest'
import { writeFile } from 'node:fs/promises'
import path from 'node:path'
import { E2E, REPO_ROOT, STACK_FRAME, lines } from '../e2e/helpers.js'

const VIEWS = path.join(REPO_ROOT, 'bench/pageview-views.json')
const HOUR = 3_600_000

let e2e: E2E
afterEach(async () => {
  await e2e?.cleanup()
})

describe('speedlayer batch and query', () => {
  it('imports a batch view from a file, then answers from batch and realtime; refusals are one clean line', async () => {
    e2e = new E2E()
    const node = await e2e.start({ id: 'n1', data: await e2e.tempDir(), args: ['--views', VIEWS, '--token', 'tk'] })
    const t0 = Math.floor(Date.now() / HOUR) * HOUR - 3 * HOUR
    const iso = (t: number) => new Date(t).toISOString()
    const key = (h: number) => `/home|${iso(t0 + h * HOUR)}`
    const events = [0, 1, 2].map((h) => JSON.stringify({ kind: 'pageview', url: '/home', site: 's', user: `u${h}`, ts: t0 + h * HOUR + 5 }))
    const evFile = path.join(await e2e.tempDir(), 'events.ndjson')
    await writeFile(evFile, events.join('\n') + '\n')
    const ing = await e2e.run(['ingest', '--url', node.url, '--token', 'tk', evFile])
    expect(ing.exit.code, ing.stderr).toBe(0)

    const dir = await e2e.tempDir()
    const file = path.join(dir, 'pageviews.ndjson')
    await writeFile(file, [JSON.stringify({ key: key(0), value: 40 }), JSON.stringify({ key: key(1), value: 41 })].join('\n') + '\n')
    const r = await e2e.run(['batch', '--url', node.url, '--token', 'tk', '--view', 'pageviews', '--horizon', iso(t0 + 2 * HOUR), file])
    expect(r.exit, r.stderr).toEqual({ code: 0, signal: null })
    expect(lines(r.stdout)).toHaveLength(1)
    expect(r.stdout).toMatch(new RegExp(`^imported 2 keys into pageviews with horizon ${iso(t0 + 2 * HOUR).replace(/\./g, '\\.')} in [0-9.]+ s \\([0-9.]+ MB\\); 2 realtime keys expired\\n$`))

    const q0 = await e2e.run(['query', '--url', node.url, 'pageviews', key(0)])
    expect(q0.exit.code, q0.stderr).toBe(0)
    expect(JSON.parse(q0.stdout)).toEqual({ value: 40, exact: true, batch: 40, realtime: null })
    const q2 = await e2e.run(['query', '--url', node.url, 'pageviews', key(2)])
    expect(JSON.parse(q2.stdout)).toEqual({ value: 1, exact: false, batch: null, realtime: 1 })
    const qr = await e2e.run(['query', '--url', node.url, 'pageviews', '--prefix', '/home', '--from', String(t0), '--to', iso(t0 + 3 * HOUR)])
    expect(qr.exit.code, qr.stderr).toBe(0)
    expect(JSON.parse(qr.stdout)).toEqual({ value: 82, exact: false, buckets: 3 })

    // A bad line: one line naming it, nothing imported, exit 1.
    const bad = path.join(dir, 'bad.ndjson')
    await writeFile(bad, [JSON.stringify({ key: key(0), value: 1 }), '{"key": 3}'].join('\n') + '\n')
    const b = await e2e.run(['batch', '--url', node.url, '--token', 'tk', '--view', 'pageviews', '--horizon', String(t0 + 2 * HOUR), bad])
    expect(b.exit.code).toBe(1)
    expect(b.stdout).toBe('')
    const msg = lines(b.stderr).filter((l) => !l.startsWith('batch: '))
    expect(msg).toHaveLength(1)
    expect(msg[0]).toMatch(/HTTP 400 bad_line: line 2: .*nothing was imported/)
    expect(b.stderr).not.toContain(STACK_FRAME)
    // Without the token; an unknown view; usage errors: exit 2.
    const noTok = await e2e.run(['batch', '--url', node.url, '--view', 'pageviews', '--horizon', '0', file])
    expect(noTok.exit.code).toBe(1)
    expect(noTok.stderr).toMatch(/HTTP 401.*--token/)
    const unknown = await e2e.run(['query', '--url', node.url, 'nope', 'x'])
    expect(unknown.exit.code).toBe(1)
    expect(unknown.stderr).toMatch(/HTTP 404/)
    for (const args of [['query', '--url', node.url, 'pageviews'], ['batch', '--url', node.url, file], ['query', 'a', 'b']]) {
      const u = await e2e.run(args)
      expect(u.exit.code, args.join(' ')).toBe(2)
      expect(u.stderr).not.toContain(STACK_FRAME)
    }
    const still = await e2e.run(['query', '--url', node.url, 'pageviews', key(0)])
    expect(JSON.parse(still.stdout).value).toBe(40)
  })
})
