/**
 * Dashboard figures (issue 7): the bundle's gzipped size, the time from starting the nodes to
 * the first chart drawn in Chromium, and live subscription frames per second per browser at a
 * given event rate. The functions are exported for the demo's suite (bench/demo.ts), which
 * passes its own way of starting things; this suite runs them on its own against a cluster of
 * `speedlayer start` processes (test/browser/cluster.ts).
 */
import { readdirSync, readFileSync, statSync } from 'node:fs'
import path from 'node:path'
import { gzipSync } from 'node:zlib'
import type { Page } from 'playwright-core'
import { dashboardDir } from '../src/server/dashboard.js'
import { launchChromium, type Browser } from '../test/browser/chromium.js'
import { startCluster } from '../test/browser/cluster.js'
import type { Suite, SuiteOptions } from './report.js'

export interface BundleSize {
  files: number
  rawBytes: number
  gzipBytes: number
}

/** Every file the node serves for the dashboard, gzipped one by one (as a browser fetches them). */
export function bundleSize(dir: string | null = dashboardDir()): BundleSize {
  if (dir === null) throw new Error('dist/dashboard is missing: run `npm run build` first')
  let files = 0
  let rawBytes = 0
  let gzipBytes = 0
  const walk = (d: string) => {
    for (const name of readdirSync(d)) {
      const p = path.join(d, name)
      if (statSync(p).isDirectory()) {
        walk(p)
        continue
      }
      const body = readFileSync(p)
      files++
      rawBytes += body.length
      gzipBytes += gzipSync(body, { level: 9 }).length
    }
  }
  walk(dir)
  return { files, rawBytes, gzipBytes }
}

/** Waits until the page says its first chart with data is on screen; returns performance.now() then. */
export async function waitFirstChart(page: Page, timeoutMs = 60_000): Promise<number> {
  const handle = await page.waitForFunction('window.__dashboard?.firstChartAt ?? null', undefined, { timeout: timeoutMs, polling: 50 })
  return (await handle.jsonValue()) as number
}

export interface FirstChart {
  /** From calling `start` to the first chart with data drawn in the page. */
  totalMs: number
  /** From calling `start` to its URL answering (the nodes' own start, the baseline). */
  readyMs: number
}

/**
 * Times from calling `start` (which starts nodes and traffic and resolves with the dashboard's
 * URL once the first node answers) to the first chart drawn. The page is opened as soon as the
 * URL is known, as a visitor following the printed link would.
 */
export async function timeToFirstChart(browser: Browser, start: () => Promise<string>): Promise<FirstChart> {
  const t0 = performance.now()
  const url = await start()
  const readyMs = performance.now() - t0
  const { page } = await browser.page()
  try {
    await page.goto(url)
    await waitFirstChart(page)
    return { totalMs: performance.now() - t0, readyMs }
  } finally {
    await page.close()
  }
}

export interface LiveRate {
  /** Frames per second the page received over all its subscriptions (one per node). */
  perBrowser: number
  /** Frames per second on the busiest single subscription (the server's bound applies to each). */
  perSubscription: number
  subscriptions: number
}

/** Frames per second the dashboard at `url` receives over `seconds`, once its charts are up. */
export async function subscriptionRate(browser: Browser, url: string, seconds: number): Promise<LiveRate> {
  const { page } = await browser.page()
  try {
    await page.goto(url)
    await waitFirstChart(page)
    // Let the other nodes' subscriptions open too.
    const read = async () => (await page.evaluate('window.__dashboard.messages()')) as Record<string, number>
    const a = await read()
    const t0 = performance.now()
    await page.waitForTimeout(seconds * 1000)
    const b = await read()
    const dt = (performance.now() - t0) / 1000
    const rates = Object.keys(b).map((k) => ((b[k] ?? 0) - (a[k] ?? 0)) / dt)
    return { perBrowser: rates.reduce((x, y) => x + y, 0), perSubscription: Math.max(0, ...rates), subscriptions: rates.length }
  } finally {
    await page.close()
  }
}

const DEFAULT_RATE = 200

export const suite: Suite = {
  name: 'dashboard',
  async run({ quick, report }: SuiteOptions) {
    const bench = 'dashboard'
    const size = bundleSize()
    report.progress(`bundle: ${size.files} files, ${size.rawBytes} bytes, ${size.gzipBytes} gzipped`)
    // A size is the same every time: three identical samples satisfy the harness's median.
    report.add(bench, { figure: 'dashboard_bundle_gzip_kb', samples: [1, 2, 3].map(() => size.gzipBytes / 1024), unit: 'KB', goal: '< 150' })

    const browser = await launchChromium()
    try {
      const firsts: number[] = []
      const readies: number[] = []
      for (let i = 0; i < 3; i++) {
        let stop: (() => Promise<void>) | null = null
        try {
          const r = await timeToFirstChart(browser, async () => {
            const c = await startCluster({ nodes: 3, rate: DEFAULT_RATE, batch: false })
            stop = () => c.stop()
            return c.dashboard
          })
          firsts.push(r.totalMs)
          readies.push(r.readyMs)
          report.progress(`first chart ${i + 1}: ${r.totalMs.toFixed(0)} ms after the start (nodes answering after ${r.readyMs.toFixed(0)} ms)`)
        } finally {
          await (stop as (() => Promise<void>) | null)?.()
        }
      }
      // The baseline is the nodes' own start: the ratio says what the page adds to it.
      report.add(bench, { figure: 'dashboard_start_to_first_chart_ms', samples: firsts, unit: 'ms', baseline: { name: 'start_to_nodes_answering_ms', samples: readies } })

      const seconds = quick ? 3 : 10
      for (const mult of [1, 10]) {
        const rate = DEFAULT_RATE * mult
        const cluster = await startCluster({ nodes: 3, rate, batch: false })
        try {
          const per: number[] = []
          const sub: number[] = []
          const took: number[] = []
          for (let i = 0; i < 3; i++) {
            const a0 = cluster.accepted
            const t0 = performance.now()
            const r = await subscriptionRate(browser, cluster.dashboard, seconds)
            took.push((cluster.accepted - a0) / ((performance.now() - t0) / 1000))
            per.push(r.perBrowser)
            sub.push(r.perSubscription)
            report.progress(`${rate} events/s asked, ${took[i]?.toFixed(0)} taken: ${r.perBrowser.toFixed(2)} frames/s over ${r.subscriptions} subscriptions, ${r.perSubscription.toFixed(2)} on the busiest`)
          }
          const tag = mult === 1 ? 'default_rate' : '10x_rate'
          // What the nodes took of the asked rate: on a saturated machine the live frames slow with them.
          report.add(bench, { figure: `dashboard_events_taken_per_s_${tag}`, samples: took, unit: 'events/s' })
          report.add(bench, { figure: `dashboard_live_frames_per_s_per_browser_${tag}`, samples: per, unit: 'frames/s' })
          // The server's bound: at most 4 frames a second to one subscription, whatever the event rate.
          report.add(bench, { figure: `dashboard_live_frames_per_s_per_subscription_${tag}`, samples: sub, unit: 'frames/s', goal: '<= 5' })
        } finally {
          await cluster.stop()
        }
      }
    } finally {
      await browser.close()
    }
  },
}
