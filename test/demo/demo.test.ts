/**
 * The demo's pure parts: the generator's traffic shape, the batch layer's computation (it must be
 * exactly what the realtime views would hold with every event applied), and the master dataset's
 * incremental reader (lines cut mid-write, multi-byte characters across chunk edges).
 */
import { appendFile, mkdtemp, readFile, rm } from 'node:fs/promises'
import os from 'node:os'
import path from 'node:path'
import { afterEach, describe, expect, it } from 'vitest'
import { PageviewGenerator, type PageviewEvent } from '../../src/demo/generator.js'
import { BatchCompute } from '../../src/demo/batchCompute.js'
import { MasterReader, MasterWriter } from '../../src/demo/master.js'
import { openNode } from '../../src/node.js'
import { ingestEvents } from '../../src/ingest/ingest.js'

const ROOT = path.resolve(path.dirname(new URL(import.meta.url).pathname), '../..')
const dirs: string[] = []
afterEach(async () => {
  await Promise.all(dirs.splice(0).map((d) => rm(d, { recursive: true, force: true })))
})
async function tmp(): Promise<string> {
  const d = await mkdtemp(path.join(os.tmpdir(), 'speedlayer-demo-unit-'))
  dirs.push(d)
  return d
}

async function demoViews(): Promise<Record<string, unknown>> {
  return (JSON.parse(await readFile(path.join(ROOT, 'demo/views.json'), 'utf8')) as { views: Record<string, unknown> }).views
}

describe('PageviewGenerator', () => {
  it('pins each session to one node, keeps sessions bounded, and ends every session it starts', () => {
    const g = new PageviewGenerator({ rate: 200, nodes: 3, seed: 7 })
    const nodeOf = new Map<string, number>()
    const ended = new Set<string>()
    const urls = new Map<string, number>()
    const users = new Set<string>()
    const bad: string[] = []
    let ends = 0
    for (let i = 0; i < 50_000; i++) {
      const { event, node, ended: last } = g.next(1_700_000_000_000 + i * 5)
      // Plain checks in the loop (expect() per event would dominate the run), reported once.
      if (event.kind !== 'pageview' || !event.url.startsWith(event.site)) bad.push(`malformed ${JSON.stringify(event)}`)
      if (ended.has(event.session)) bad.push(`a pageview after session ${event.session} ended`)
      const pinned = nodeOf.get(event.session)
      if (pinned !== undefined && pinned !== node) bad.push(`session ${event.session} moved from node ${pinned} to ${node}`)
      nodeOf.set(event.session, node)
      if (last) {
        ended.add(event.session)
        ends++
      }
      urls.set(event.url, (urls.get(event.url) ?? 0) + 1)
      users.add(event.user)
      if (g.sessions > Math.ceil(g.sessionsTarget * 1.3) + 1) bad.push(`${g.sessions} sessions under way`)
    }
    expect(bad.slice(0, 5)).toEqual([])
    expect(ends).toBeGreaterThan(5000)
    // Users return: far fewer distinct users than sessions; pages are Zipf: the top page dwarfs the median.
    expect(users.size).toBeLessThanOrEqual(g.users)
    expect(users.size).toBeLessThan(nodeOf.size)
    const counts = [...urls.values()].sort((a, b) => b - a)
    expect(counts[0] as number).toBeGreaterThan(10 * (counts[counts.length >> 1] as number))
    // Sessions spread evenly over the nodes.
    const perNode = [0, 0, 0]
    for (const n of nodeOf.values()) perNode[n] = (perNode[n] as number) + 1
    for (const n of perNode) expect(n).toBeGreaterThan(nodeOf.size / 4)
  })

  it('is reproducible from its seed', () => {
    const run = (seed: number) => {
      const g = new PageviewGenerator({ rate: 50, nodes: 2, seed })
      return Array.from({ length: 200 }, (_, i) => JSON.stringify(g.next(1000 + i)))
    }
    expect(run(3)).toEqual(run(3))
    expect(run(3)).not.toEqual(run(4))
  })
})

describe('BatchCompute', () => {
  it('gives exactly the values a node holds after ingesting the same events, bucket by bucket', async () => {
    const views = await demoViews()
    const g = new PageviewGenerator({ rate: 100, nodes: 1, seed: 11 })
    const t0 = Date.UTC(2025, 5, 1, 10, 0, 0)
    const events: PageviewEvent[] = Array.from({ length: 3000 }, (_, i) => g.next(t0 + i * 100)).map((x) => x.event)
    const end = t0 + 3000 * 100
    const horizon = Math.floor(end / 60_000) * 60_000

    const compute = new BatchCompute(views)
    expect(compute.bucketed.map((v) => v.name).sort()).toEqual(['countries', 'pageviews', 'visitors'])
    for (const e of events) compute.addLine(JSON.stringify(e), 0)
    compute.addLine('not json', 0)
    expect(compute.unreadable).toBe(1)

    const node = await openNode({ id: 'n1', dataDir: await tmp(), views, log: () => {}, now: () => end })
    try {
      await ingestEvents(node, events)
      for (const { name } of compute.bucketed) {
        const got = new Map<string, unknown>()
        for (const l of compute.lines(name, horizon, 0)) got.set(l.key, l.value)
        expect(got.size, name).toBeGreaterThan(0)
        for (const [key, value] of got) {
          expect(Date.parse(key.slice(key.lastIndexOf('|') + 1)) + 60_000).toBeLessThanOrEqual(horizon)
          const rt = node.read(name, key).value
          if (name === 'visitors') {
            // The sketch estimates what the batch view counts exactly.
            const exact = (value as string[]).length
            expect(Math.abs((rt as number) - exact) / exact, key).toBeLessThan(0.05)
            expect(new Set(value as string[]).size).toBe(exact)
          } else expect(value, `${name} ${key}`).toBe(rt)
        }
      }
    } finally {
      await node.close()
    }

    // Retention: buckets before keepFrom are left out, and forget() drops them.
    const keepFrom = horizon - 60_000
    for (const l of compute.lines('pageviews', horizon, keepFrom)) expect(l.key.endsWith(new Date(keepFrom).toISOString())).toBe(true)
    compute.forget(keepFrom)
    expect(compute.coveredBuckets(horizon, 0)).toBe(3)
  })
})

describe('master dataset', () => {
  it('reads each complete line once, leaves a line being written for later, and keeps UTF-8 intact across chunks', async () => {
    const file = path.join(await tmp(), 'master.ndjson')
    const r = new MasterReader(file)
    const seen: string[] = []
    expect(await r.readNew((l) => seen.push(l))).toBe(0)
    const w = await MasterWriter.open(file)
    const big = `{"u":"${'é'.repeat(700_000)}"}`
    w.append(`{"a":1}\n${big}\n`)
    await w.flushed()
    await appendFile(file, '{"half":')
    expect(await r.readNew((l) => seen.push(l))).toBe(2)
    expect(seen).toEqual(['{"a":1}', big])
    await appendFile(file, '2}\n')
    expect(await r.readNew((l) => seen.push(l))).toBe(1)
    expect(seen[2]).toBe('{"half":2}')
    expect(await r.readNew((l) => seen.push(l))).toBe(0)
    await w.close()
  })
})
