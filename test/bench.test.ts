/**
 * Smoke test of the benchmark harness: the crdts suite in its --quick form, run as a user would
 * run it (the built dist/, which `npm install` produces before `npm test`), must print only
 * well-formed figure records (see /work/shared/BENCH.md) on stdout.
 */
import { describe, expect, it } from 'vitest'
import { execFile } from 'node:child_process'
import { fileURLToPath } from 'node:url'

const root = fileURLToPath(new URL('..', import.meta.url))
const main = 'dist/bench/main.js'

interface Run {
  code: number | null
  stdout: string
  stderr: string
}

function bench(args: string[]): Promise<Run> {
  return new Promise((resolve, reject) => {
    execFile(process.execPath, [main, ...args], { cwd: root, maxBuffer: 16 << 20 }, (err, stdout, stderr) => {
      if (err !== null && typeof err.code !== 'number') return reject(err)
      resolve({ code: err === null ? 0 : (err.code as number), stdout, stderr })
    })
  })
}

describe('bench harness', () => {
  it('crdts --quick --json prints one figure record per line and nothing else', { timeout: 300_000 }, async () => {
    const r = await bench(['crdts', '--quick', '--json'])
    expect(r.code, r.stderr).toBe(0)
    const lines = r.stdout.split('\n').filter((l) => l !== '')
    expect(lines.length).toBeGreaterThan(0)
    const figures = new Set<string>()
    for (const line of lines) {
      const f = JSON.parse(line) as Record<string, unknown>
      expect(f.bench).toBe('crdts')
      expect(f.figure).toMatch(/^[a-z0-9]+(_[a-z0-9]+)*$/)
      expect(figures.has(f.figure as string), `duplicate figure ${String(f.figure)}`).toBe(false)
      figures.add(f.figure as string)
      expect(typeof f.value).toBe('number')
      expect(Number.isFinite(f.value)).toBe(true)
      expect(typeof f.unit).toBe('string')
      expect(f.runs as number).toBeGreaterThanOrEqual(3)
      expect(f.min as number).toBeLessThanOrEqual(f.value as number)
      expect(f.max as number).toBeGreaterThanOrEqual(f.value as number)
      if ('baseline' in f) {
        expect(typeof f.baseline).toBe('string')
        expect(typeof f.baseline_value).toBe('number')
        expect(typeof f.ratio).toBe('number')
        const exact = (f.value as number) / (f.baseline_value as number)
        // All three are rounded to a few significant digits.
        expect(Math.abs((f.ratio as number) - exact)).toBeLessThanOrEqual(0.01 * Math.abs(exact))
      } else {
        expect('baseline_value' in f || 'ratio' in f).toBe(false)
      }
      if ('goal' in f) expect(f.goal).toMatch(/^(>=|<=) \d+(\.\d+)?$/)
      const known = ['bench', 'figure', 'value', 'unit', 'baseline', 'baseline_value', 'ratio', 'goal', 'runs', 'min', 'max']
      for (const k of Object.keys(f)) expect(known).toContain(k)
    }
    for (const name of ['gcounter_inc_per_s', 'gcounter_vs_yjs_ops_ratio', 'gcounter_heap_bytes_per_key']) {
      expect(figures).toContain(name)
    }
    for (const t of ['gcounter', 'pncounter', 'orset', 'lwwmap', 'hll']) {
      expect(figures).toContain(`${t}_join_100k_keys_ms`)
      expect(figures).toContain(`${t}_encoded_bytes_per_key`)
    }
  })

  it('an unknown benchmark name is one clear line on stderr and exit status 2', async () => {
    const r = await bench(['nosuch'])
    expect(r.code).toBe(2)
    expect(r.stdout).toBe('')
    expect(r.stderr.trim().split('\n')).toHaveLength(1)
    expect(r.stderr).toContain('nosuch')
  })
})
