/**
 * Smoke test of the demo benchmark: `demo --quick --json`, run as a user would run it (the built
 * dist/, real demos with their node processes), must print only well-formed figure records (see
 * /work/shared/BENCH.md), one per figure, and leave no directory and no process behind (the
 * suite itself waits until every process of each demo is gone).
 */
import { describe, expect, it } from 'vitest'
import { execFile } from 'node:child_process'
import { mkdtemp, readdir, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'

const root = fileURLToPath(new URL('..', import.meta.url))
const main = 'dist/bench/main.js'

const REQUIRED = ['demo_start_to_dashboard_ms', 'demo_rss_mb_rate_200', 'demo_cpu_pct_rate_200', 'demo_rss_mb_rate_2000', 'demo_cpu_pct_rate_2000']
/** Present when enough status lines came in after the ramp-up (a starved machine may not give them). */
const OPTIONAL = ['demo_events_per_s_rate_200', 'demo_events_per_s_rate_2000']

function bench(args: string[], tmp: string): Promise<{ code: number | null; stdout: string; stderr: string }> {
  const env: NodeJS.ProcessEnv = { ...process.env, TMPDIR: tmp }
  delete env.NODE_OPTIONS
  return new Promise((resolve, reject) => {
    execFile(process.execPath, [main, ...args], { cwd: root, env, maxBuffer: 16 << 20 }, (err, stdout, stderr) => {
      if (err !== null && typeof err.code !== 'number') return reject(err)
      resolve({ code: err === null ? 0 : (err.code as number), stdout, stderr })
    })
  })
}

describe('demo bench', () => {
  it('demo --quick --json prints one well-formed record per figure and cleans up', { timeout: 300_000 }, async () => {
    const tmp = await mkdtemp(join(tmpdir(), 'sl-bench-test-'))
    let r: Awaited<ReturnType<typeof bench>>
    let left: string[]
    try {
      r = await bench(['demo', '--quick', '--json'], tmp)
      left = await readdir(tmp)
    } finally {
      await rm(tmp, { recursive: true, force: true })
    }
    expect(r.code, r.stderr).toBe(0)
    expect(left).toEqual([])
    const seen = new Map<string, Record<string, unknown>>()
    for (const line of r.stdout.split('\n').filter((l) => l !== '')) {
      const f = JSON.parse(line) as Record<string, unknown>
      expect(f.bench).toBe('demo')
      expect(seen.has(f.figure as string), `duplicate figure ${String(f.figure)}`).toBe(false)
      seen.set(f.figure as string, f)
      expect(Number.isFinite(f.value)).toBe(true)
      expect(f.value as number).toBeGreaterThanOrEqual(0)
      expect(f.runs as number).toBeGreaterThanOrEqual(3)
      if ('baseline' in f) {
        expect(typeof f.baseline).toBe('string')
        expect(f.ratio).toBeCloseTo((f.value as number) / (f.baseline_value as number), 1)
      }
    }
    for (const name of REQUIRED) expect(seen.has(name), `${name} missing\n${r.stderr}`).toBe(true)
    for (const name of seen.keys()) expect([...REQUIRED, ...OPTIONAL]).toContain(name)
    expect(seen.get('demo_rss_mb_rate_200')?.baseline).toBe('demo_rss_mb_rate_200_start')
    expect(seen.get('demo_start_to_dashboard_ms')?.baseline).toBe('node_start_to_ready_ms')
  })
})
