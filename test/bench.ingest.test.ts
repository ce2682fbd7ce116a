/**
 * Smoke test of the ingest benchmark: `ingest --quick --json`, run as a user would run it (the
 * built dist/, with the node child and the redis-server it starts), must print only well-formed
 * figure records (see /work/shared/BENCH.md) and leave nothing behind. With redis-server
 * installed the events/s figure carries the Redis baseline and the goal; without it the quick run
 * says so on stderr and reports the node's figures alone.
 */
import { describe, expect, it } from 'vitest'
import { execFile, spawnSync } from 'node:child_process'
import { mkdtemp, readdir, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'

const root = fileURLToPath(new URL('..', import.meta.url))
const main = 'dist/bench/main.js'
const hasRedis = spawnSync('sh', ['-c', 'command -v redis-server']).status === 0

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

describe('ingest bench', () => {
  it(`ingest --quick --json prints one well-formed record per figure and cleans up (redis-server ${hasRedis ? 'installed' : 'not installed: node figures only'})`, { timeout: 300_000 }, async () => {
    const tmp = await mkdtemp(join(tmpdir(), 'sl-bench-ingest-test-'))
    let r: Awaited<ReturnType<typeof bench>>
    let left: string[]
    try {
      r = await bench(['ingest', '--quick', '--json'], tmp)
      left = await readdir(tmp)
    } finally {
      await rm(tmp, { recursive: true, force: true })
    }
    expect(r.code, r.stderr).toBe(0)
    expect(left).toEqual([])
    const seen = new Map<string, Record<string, unknown>>()
    for (const line of r.stdout.split('\n').filter((l) => l !== '')) {
      const f = JSON.parse(line) as Record<string, unknown>
      expect(f.bench).toBe('ingest')
      expect(f.figure).toMatch(/^[a-z0-9]+(_[a-z0-9]+)*$/)
      expect(seen.has(f.figure as string)).toBe(false)
      seen.set(f.figure as string, f)
      expect(Number.isFinite(f.value)).toBe(true)
      expect(f.value as number).toBeGreaterThan(0)
      expect(f.runs as number).toBeGreaterThanOrEqual(3)
      expect(f.min as number).toBeLessThanOrEqual(f.value as number)
      expect(f.max as number).toBeGreaterThanOrEqual(f.value as number)
      const known = ['bench', 'figure', 'value', 'unit', 'baseline', 'baseline_value', 'ratio', 'goal', 'runs', 'min', 'max']
      for (const k of Object.keys(f)) expect(known).toContain(k)
      if ('baseline' in f) {
        const exact = (f.value as number) / (f.baseline_value as number)
        expect(Math.abs((f.ratio as number) - exact)).toBeLessThanOrEqual(0.01 * Math.abs(exact))
      }
    }
    // The main thread's CPU comes from /proc: Linux only.
    const figures = ['ingest_cpu_us_per_event', 'ingest_events_per_s', ...(process.platform === 'linux' ? ['ingest_main_thread_cpu_us_per_event'] : []), 'ingest_writes_per_event']
    expect([...seen.keys()].sort()).toEqual(figures)
    const perS = seen.get('ingest_events_per_s') as Record<string, unknown>
    expect(perS.unit).toBe('events/s')
    if (hasRedis) {
      expect(perS.baseline).toBe('redis_pipeline_events_per_s')
      expect(perS.goal).toBe('>= 1')
      expect(seen.get('ingest_cpu_us_per_event')?.baseline).toBe('redis_cpu_us_per_event')
    } else {
      expect('baseline' in perS).toBe(false)
      expect(r.stderr).toMatch(/redis-server is not installed/)
    }
  })
})
