/**
 * Smoke test of the Yjs benchmark: `yjs --quick --json`, run as a user would run it (the built
 * dist/, with the node and reference-server children it starts), must print only well-formed
 * figure records (see /work/shared/BENCH.md), one per figure the issue asks for, with the
 * baselines and goals it names, and leave no data directory behind.
 */
import { describe, expect, it } from 'vitest'
import { execFile } from 'node:child_process'
import { mkdtemp, readdir, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'

const root = fileURLToPath(new URL('..', import.meta.url))
const main = 'dist/bench/main.js'

const FIGURES: Record<string, { baseline?: string; goal?: string }> = {
  updates_per_s_1_doc: { baseline: 'reference_server_updates_per_s_1_doc', goal: '>= 1' },
  updates_per_s_100_docs: { baseline: 'reference_server_updates_per_s_100_docs', goal: '>= 1' },
  cold_load_ms: { goal: '<= 100' },
  cold_load_ms_vs_y_leveldb: { baseline: 'y_leveldb_get_ydoc_ms' },
  cold_load_ms_vs_yjs_apply: { baseline: 'yjs_apply_encoded_state_ms' },
  disk_bytes_per_encoded_state_byte: { goal: '<= 2' },
  sync_large_doc_ms: { baseline: 'reference_server_sync_large_doc_ms' },
  memory_bytes_per_idle_doc: { baseline: 'reference_server_bytes_per_idle_doc' },
}

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

describe('yjs bench', () => {
  it('yjs --quick --json prints one well-formed record per figure and cleans up', { timeout: 300_000 }, async () => {
    const tmp = await mkdtemp(join(tmpdir(), 'sl-bench-yjs-test-'))
    let r: Awaited<ReturnType<typeof bench>>
    let left: string[]
    try {
      r = await bench(['yjs', '--quick', '--json'], tmp)
      left = await readdir(tmp)
    } finally {
      await rm(tmp, { recursive: true, force: true })
    }
    expect(r.code, r.stderr).toBe(0)
    expect(left).toEqual([])
    const seen = new Map<string, Record<string, unknown>>()
    for (const line of r.stdout.split('\n').filter((l) => l !== '')) {
      const f = JSON.parse(line) as Record<string, unknown>
      expect(f.bench).toBe('yjs')
      expect(f.figure).toMatch(/^[a-z0-9]+(_[a-z0-9]+)*$/)
      expect(seen.has(f.figure as string), `duplicate figure ${String(f.figure)}`).toBe(false)
      seen.set(f.figure as string, f)
      expect(Number.isFinite(f.value)).toBe(true)
      expect(f.value as number).toBeGreaterThan(0)
      expect(typeof f.unit).toBe('string')
      expect(f.runs as number).toBeGreaterThanOrEqual(3)
      expect(f.min as number).toBeLessThanOrEqual(f.value as number)
      expect(f.max as number).toBeGreaterThanOrEqual(f.value as number)
      const spec = FIGURES[f.figure as string]
      expect(spec, `unexpected figure ${String(f.figure)}`).toBeDefined()
      expect(f.baseline).toBe(spec?.baseline)
      expect(f.goal).toBe(spec?.goal)
      if (spec?.baseline) {
        const exact = (f.value as number) / (f.baseline_value as number)
        expect(Math.abs((f.ratio as number) - exact)).toBeLessThanOrEqual(0.01 * Math.abs(exact))
      } else {
        expect('baseline_value' in f || 'ratio' in f).toBe(false)
      }
    }
    expect([...seen.keys()].sort()).toEqual(Object.keys(FIGURES).sort())
  })
})
