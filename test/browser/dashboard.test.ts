/**
 * The dashboard in a real browser (Debian's Chromium through playwright-core): a three-node
 * cluster with live traffic, a partition made with the dashboard's own button, its healing, a
 * bucket turning exact after a batch import, no console errors, and the page's message when its
 * node goes down. It takes the README's screenshot (docs/dashboard.png when UPDATE_SCREENSHOT=1
 * or when the file is missing; a temp file otherwise).
 *
 * Buckets are a minute long (the demo's views), so the partition is held across one bucket
 * boundary to show a closed bucket on which the nodes disagree, then agree: about a minute.
 */
import { existsSync } from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import type { Page } from 'playwright-core'
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest'
import { launchChromium, type Browser } from './chromium.js'
import { CLI, startCluster, startDemo, type Cluster } from './cluster.js'

/**
 * Where the nodes come from: 'cluster' starts three `speedlayer start` processes, traffic and a
 * batch layer from this test; 'demo' runs `speedlayer demo`, which does all of that itself.
 */
const SOURCE = 'demo' as 'cluster' | 'demo'

const ROOT = path.resolve(path.dirname(CLI), '..', '..', '..')
const SCREENSHOT = path.join(ROOT, 'docs', 'dashboard.png')

let browser: Browser
const clusters: Cluster[] = []

beforeAll(async () => {
  if (!existsSync(CLI)) throw new Error(`${CLI} is missing: run npm run build first`)
  if (!existsSync(path.join(ROOT, 'dist', 'dashboard', 'index.html'))) throw new Error('dist/dashboard is missing: run npm run build (it builds the dashboard with Vite)')
  browser = await launchChromium()
})

afterAll(async () => {
  await browser?.close()
})

afterEach(async () => {
  await Promise.all(clusters.splice(0).map((c) => c.stop()))
})

/** A figure of a node's card, with the bucket it is for. */
async function figure(page: Page, node: string, field: string): Promise<{ value: number | null; bucket: number | null; exact: boolean }> {
  const el = page.locator(`.node-card[data-node="${node}"] [data-field="${field}"]`)
  const [v, b, x] = await Promise.all([el.getAttribute('data-value'), el.getAttribute('data-bucket'), el.getAttribute('data-exact')])
  return { value: v ? Number(v) : null, bucket: b ? Number(b) : null, exact: x === 'true' }
}

/** Frames the page received from a node (the page's own probe, demo/dashboard/src/main.ts). */
async function frames(page: Page, node: string): Promise<number> {
  return Number(await page.evaluate(`window.__dashboard.messages()[${JSON.stringify(node)}] ?? 0`))
}

/** Polls `check` until it returns a value (not undefined), failing with `what` after `ms`. */
async function until<T>(what: string, check: () => Promise<T | undefined>, ms = 30_000, describe = () => ''): Promise<T> {
  const end = Date.now() + ms
  let last: unknown
  for (;;) {
    try {
      const r = await check()
      if (r !== undefined) return r
    } catch (err) {
      last = err
    }
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}${last ? ` (last error: ${(last as Error).message})` : ''}\n${describe()}`)
    // Polling the page (not the clock): each round reads what the page shows now.
    await new Promise((r) => setTimeout(r, 200))
  }
}

describe('the dashboard in Chromium', () => {
  it('shows three nodes live, diverging when one is cut off with its button, converging when healed, and a bucket turning exact', async () => {
    const cluster = SOURCE === 'demo' ? await startDemo() : await startCluster({ nodes: 3, rate: 100, history: 10 })
    clusters.push(cluster)
    const { page, errors } = await browser.page()
    const ctx = () => `${cluster.describe()}\npage errors: ${errors.join('\n')}`
    await page.goto(cluster.dashboard)
    const ids = cluster.nodes.map((n) => n.id)
    expect(ids).toHaveLength(3)
    const [n1, n2, n3] = ids as [string, string, string]

    // Every node's card, each with its own live counter, rising.
    await until('three node cards', async () => ((await page.locator('.node-card[data-state="open"]').count()) === 3 ? true : undefined), 30_000, ctx)
    const rising = async () => {
      const before = await Promise.all(ids.map((id) => figure(page, id, 'pv-current')))
      await until(
        'the counters to rise on all three nodes',
        async () => {
          const now = await Promise.all(ids.map((id) => figure(page, id, 'pv-current')))
          // A new bucket starts from zero: compare within one bucket only.
          return now.every((f, i) => f.value !== null && f.value > 0 && (f.bucket !== before[i]?.bucket || f.value > (before[i]?.value ?? 0))) ? true : undefined
        },
        20_000,
        ctx,
      )
    }
    await rising()
    await rising()
    await page.waitForFunction('document.documentElement.dataset.firstChart === "true"')

    // Cut node 3 off with the dashboard's own button.
    await page.click(`.node-card[data-node="${n3}"] button[data-action="isolate"]`)
    await until('both links of node 3 shown cut', async () => ((await page.locator('table.links tr[data-state="cut"]').count()) === 2 ? true : undefined), 15_000, ctx)
    expect(await page.getAttribute('.cluster-summary', 'data-state')).toBe('partitioned')
    expect(await page.locator(`table.links tr[data-link="${n1}-${n2}"]`).getAttribute('data-state')).toBe('up')

    // Its values diverge: node 3 sees only its own share of the traffic, the others only theirs.
    const cutBucket = await until(
      'node 3 to fall behind in the current bucket',
      async () => {
        const [a, c] = await Promise.all([figure(page, n1, 'pv-current'), figure(page, n3, 'pv-current')])
        return a.bucket !== null && a.bucket === c.bucket && a.value !== null && c.value !== null && a.value - c.value > 40 ? a.bucket : undefined
      },
      20_000,
      ctx,
    )
    await until('node 3 flagged behind', async () => ((await page.locator(`.node-card[data-node="${n3}"] [data-field="pv-current"] + .delta.behind`).count()) === 1 ? true : undefined), 20_000, ctx)

    // Held across a bucket boundary, the bucket of the cut is closed and the nodes disagree on it.
    await until(
      'the closed bucket of the partition, with node 3 apart',
      async () => {
        const agree = await page.locator('[data-field="agree"]')
        const bucket = Number(await agree.getAttribute('data-bucket'))
        if (bucket < cutBucket) return undefined
        const [a, b, c] = await Promise.all(ids.map((id) => figure(page, id, 'pv-last')))
        return (await agree.getAttribute('data-value')) === 'false' && a?.value !== c?.value && b?.value !== c?.value ? true : undefined
      },
      90_000,
      ctx,
    )

    // Heal with the same button: every link back up, and all three agree on that bucket.
    await page.click(`.node-card[data-node="${n3}"] button[data-action="heal"]`)
    await until('all links up again', async () => ((await page.locator('table.links tr[data-state="up"]').count()) === 3 ? true : undefined), 20_000, ctx)
    const agreed = await until(
      'all three nodes to agree on the closed bucket',
      async () => {
        const f = await Promise.all(ids.map((id) => figure(page, id, 'pv-last')))
        const same = f.every((x) => x.value !== null && x.value > 0 && x.value === f[0]?.value && x.bucket === f[0]?.bucket)
        return same && (await page.getAttribute('[data-field="agree"]', 'data-value')) === 'true' ? f : undefined
      },
      30_000,
      ctx,
    )
    expect(agreed[0]?.bucket).toBeGreaterThanOrEqual(cutBucket)

    // The batch layer's import turns the bucket of the cut exact (an estimate before).
    await until(
      `the bucket ${new Date(cutBucket).toISOString()} marked exact`,
      async () => ((await page.locator(`.bucket[data-bucket="${cutBucket}"][data-exact="true"]`).count()) === 1 ? true : undefined),
      90_000,
      ctx,
    )
    // The current bucket is still an estimate: only buckets up to the horizon are exact.
    await until('an estimate bucket', async () => ((await page.locator('.bucket[data-exact="false"]').count()) > 0 ? true : undefined), 20_000, ctx)

    await rising()
    // For the picture, not the verdict: give the catch-up after the partition a moment to finish.
    await until('replication caught up', async () => ((await page.locator('.node-card .state.up').count()) === 3 ? true : undefined), 30_000).catch(() => {})
    // No hover state in the picture.
    await page.mouse.move(1, 1)
    const shot = process.env.UPDATE_SCREENSHOT === '1' || !existsSync(SCREENSHOT) ? SCREENSHOT : path.join(os.tmpdir(), `speedlayer-dashboard-${process.pid}.png`)
    await page.screenshot({ path: shot, fullPage: true })
    expect(errors, ctx()).toEqual([])
    await page.close()
  }, 300_000)

  it('says clearly that its node is down, and reconnects by itself when the node is back', async () => {
    const cluster = await startCluster({ nodes: 1, rate: 40, batch: false })
    clusters.push(cluster)
    const { page } = await browser.page()
    await page.goto(cluster.dashboard)
    await page.waitForFunction('document.documentElement.dataset.firstChart === "true"', undefined, { timeout: 30_000 })
    expect(await page.locator('#banner').isVisible()).toBe(false)

    await cluster.kill(0)
    const banner = page.locator('#banner[data-state="down"]')
    await banner.waitFor({ state: 'visible', timeout: 15_000 })
    expect(await banner.textContent()).toMatch(/node1 at 127\.0\.0\.1:\d+ is down or unreachable/)
    expect(await page.locator('.pill.down').first().textContent()).toBe('offline')

    await cluster.restart(0)
    await page.waitForFunction('document.getElementById("banner").dataset.state !== "down"', undefined, { timeout: 20_000 })
    const before = await frames(page, 'node1')
    await until('frames from node1 again', async () => ((await frames(page, 'node1')) > before + 2 ? true : undefined), 20_000)
    expect(await page.locator('.pill.up').first().textContent()).toBe('live')
    await page.close()
  }, 120_000)
})
