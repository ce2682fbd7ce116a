/**
 * Smoke test of the replication benchmark: `replication --quick --json`, run as a user would run
 * it (the built dist/, with the CLI children it starts), must print only well-formed figure
 * records (see /work/shared/BENCH.md), one per figure the issue asks for, and leave no data
 * directory behind.
 */
import { describe, expect, it } from 'vitest'
import { execFile } from 'node:child_process'
import { mkdtemp, readdir, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'

const root = fileURLToPath(new URL('..', import.meta.url))
const main = 'dist/bench/main.js'

const FIGURES = [
  'replicated_writes_per_s',
  'mesh_deltas_received_per_remote_write',
  'propagation_p50_ms',
  'propagation_p99_ms',
  'propagation_idle_p50_ms',
  'propagation_idle_p99_ms',
  'catchup_log_bytes_per_changed_byte',
  'catchup_dropped_bytes_per_changed_byte',
  'catchup_ae_bytes_per_changed_byte',
  'catchup_log_ms',
  'catchup_dropped_ms',
  'catchup_ae_ms',
]

const GOALS: Record<string, string> = {
  propagation_p99_ms: '<= 50',
  catchup_log_bytes_per_changed_byte: '<= 1.5',
  catchup_dropped_bytes_per_changed_byte: '<= 1.5',
  catchup_ae_bytes_per_changed_byte: '<= 1.5',
}

const BASELINES: Record<string, string> = {
  replicated_writes_per_s: 'single_node_writes_per_s',
}

/** Runs the bench with its own TMPDIR, so what it leaves behind (if anything) is easy to see. */
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

describe('replication bench', () => {
  it('replication --quick --json prints one well-formed record per figure and cleans up', { timeout: 180_000 }, async () => {
    const tmp = await mkdtemp(join(tmpdir(), 'sl-bench-test-'))
    let r: Awaited<ReturnType<typeof bench>>
    let left: string[]
    try {
      r = await bench(['replication', '--quick', '--json'], tmp)
      left = await readdir(tmp)
    } finally {
      await rm(tmp, { recursive: true, force: true })
    }
    expect(r.code, r.stderr).toBe(0)
    // The suite removes every data directory it made (and its children are gone with them).
    expect(left).toEqual([])
    const lines = r.stdout.split('\n').filter((l) => l !== '')
    const seen = new Map<string, Record<string, unknown>>()
    for (const line of lines) {
      const f = JSON.parse(line) as Record<string, unknown>
      expect(f.bench).toBe('replication')
      expect(f.figure).toMatch(/^[a-z0-9]+(_[a-z0-9]+)*$/)
      expect(seen.has(f.figure as string), `duplicate figure ${String(f.figure)}`).toBe(false)
      seen.set(f.figure as string, f)
      expect(typeof f.value).toBe('number')
      expect(Number.isFinite(f.value)).toBe(true)
      expect(f.value as number).toBeGreaterThan(0)
      expect(typeof f.unit).toBe('string')
      expect(f.runs as number).toBeGreaterThanOrEqual(3)
      expect(f.min as number).toBeLessThanOrEqual(f.value as number)
      expect(f.max as number).toBeGreaterThanOrEqual(f.value as number)
      if ('baseline' in f) {
        expect(typeof f.baseline).toBe('string')
        expect(typeof f.baseline_value).toBe('number')
        expect(typeof f.ratio).toBe('number')
        const exact = (f.value as number) / (f.baseline_value as number)
        expect(Math.abs((f.ratio as number) - exact)).toBeLessThanOrEqual(0.01 * Math.abs(exact))
      } else {
        expect('baseline_value' in f || 'ratio' in f).toBe(false)
      }
      if ('goal' in f) expect(f.goal).toMatch(/^(>=|<=) \d+(\.\d+)?$/)
      const known = ['bench', 'figure', 'value', 'unit', 'baseline', 'baseline_value', 'ratio', 'goal', 'runs', 'min', 'max']
      for (const k of Object.keys(f)) expect(known).toContain(k)
    }
    expect([...seen.keys()].sort()).toEqual([...FIGURES].sort())
    for (const [figure, goal] of Object.entries(GOALS)) expect(seen.get(figure)?.goal, figure).toBe(goal)
    for (const [figure, baseline] of Object.entries(BASELINES)) expect(seen.get(figure)?.baseline, figure).toBe(baseline)
    // The figure text says that every node and the client share the machine's cores.
    expect(seen.get('replicated_writes_per_s')?.unit).toMatch(/cores shared by every node and the client/)
  })
})
