/**
 * Debian's Chromium driven by playwright-core, headless, with a fresh profile: what the browser
 * test and bench/dashboard.ts use. No browser is downloaded; a missing /usr/bin/chromium is a
 * clear error (`.ci/run` installs it), never a skip.
 */
import { existsSync } from 'node:fs'
import { mkdtemp, rm } from 'node:fs/promises'
import os from 'node:os'
import path from 'node:path'
import { chromium, type BrowserContext, type ConsoleMessage, type Page } from 'playwright-core'

export const CHROMIUM = process.env.CHROMIUM_PATH ?? '/usr/bin/chromium'

export const CHROMIUM_FLAGS = ['--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update', '--disable-sync', '--no-first-run']

export interface Browser {
  context: BrowserContext
  /** A new page whose console errors and page errors are collected in `errors`. */
  page(): Promise<{ page: Page; errors: string[] }>
  close(): Promise<void>
}

export async function launchChromium(): Promise<Browser> {
  if (!existsSync(CHROMIUM)) {
    throw new Error(`${CHROMIUM} is missing: the browser test needs Debian's chromium (apt-get install -y chromium; .ci/run does it)`)
  }
  const profile = await mkdtemp(path.join(os.tmpdir(), 'speedlayer-chromium-'))
  let context: BrowserContext
  try {
    context = await chromium.launchPersistentContext(profile, {
      executablePath: CHROMIUM,
      headless: true,
      args: CHROMIUM_FLAGS,
      viewport: { width: 1440, height: 1000 },
      deviceScaleFactor: 1,
      timeout: 60_000,
    })
  } catch (err) {
    await rm(profile, { recursive: true, force: true })
    throw err
  }
  return {
    context,
    async page() {
      const page = await context.newPage()
      const errors: string[] = []
      page.on('console', (m: ConsoleMessage) => {
        if (m.type() === 'error') errors.push(`console: ${m.text()} (${m.location().url})`)
      })
      page.on('pageerror', (e) => errors.push(`page error: ${e.message}`))
      return { page, errors }
    },
    async close() {
      await context.close().catch(() => {})
      await rm(profile, { recursive: true, force: true, maxRetries: 3 })
    },
  }
}
