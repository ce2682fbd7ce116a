/**
 * Figure records and their two renderings, as /work/shared/BENCH.md fixes them: an aligned table
 * for people (default) or one JSON object per line for machines (`--json`). Stdout carries
 * nothing else; progress goes to stderr.
 *
 * Timing helpers live here too so every suite measures the same way: a warm-up pass that is
 * thrown away, then at least three repetitions with contenders interleaved in rotating order
 * (absolute times on shared 2-core machines drift; side-by-side ratios much less), a forced GC
 * before each timed section so one contender does not pay for another's garbage, and process
 * CPU time rather than wall time for CPU-bound loops (see cpuTime).
 */
import * as v8 from 'node:v8'
import * as vm from 'node:vm'

export interface Figure {
  bench: string
  figure: string
  value: number
  unit: string
  baseline?: string
  baseline_value?: number
  ratio?: number
  goal?: string
  runs: number
  min: number
  max: number
}

export interface SuiteOptions {
  quick: boolean
  report: Reporter
}

/** A benchmark suite: registered by name in bench/main.ts. */
export interface Suite {
  readonly name: string
  run(opts: SuiteOptions): Promise<void>
}

export function median(xs: readonly number[]): number {
  if (xs.length === 0) throw new Error('median of nothing')
  const s = xs.slice().sort((a, b) => a - b)
  const mid = s.length >> 1
  return s.length % 2 === 1 ? (s[mid] as number) : ((s[mid - 1] as number) + (s[mid] as number)) / 2
}

/** Rounds to `digits` significant digits: more would only print noise. */
export function round(x: number, digits = 4): number {
  if (x === 0 || !Number.isFinite(x)) return x
  const mag = Math.floor(Math.log10(Math.abs(x)))
  // Integers of at least `digits` digits stay integers (ops/s); smaller values keep decimals.
  const decimals = Math.max(0, digits - 1 - mag)
  const f = 10 ** decimals
  return Math.round(x * f) / f
}

export interface FigureSpec {
  figure: string
  samples: readonly number[]
  unit: string
  baseline?: { name: string; samples: readonly number[] }
  goal?: string
}

/** Builds the record: value and baseline are medians, ratio = value / baseline_value. */
export function makeFigure(bench: string, spec: FigureSpec): Figure {
  const xs = spec.samples
  if (xs.length < 3) throw new Error(`${spec.figure}: ${xs.length} runs, at least 3 are needed`)
  const value = median(xs)
  // Built field by field so the JSON lines keep the order BENCH.md lists.
  const f = { bench, figure: spec.figure, value: round(value), unit: spec.unit } as Figure
  if (spec.baseline) {
    const b = median(spec.baseline.samples)
    f.baseline = spec.baseline.name
    f.baseline_value = round(b)
    // From the unrounded medians: rounding twice would skew ratios of small numbers.
    f.ratio = round(value / b, 3)
  }
  if (spec.goal !== undefined) f.goal = spec.goal
  f.runs = xs.length
  f.min = round(Math.min(...xs))
  f.max = round(Math.max(...xs))
  return f
}

/** Does the figure meet its goal? undefined when it has none. */
export function meetsGoal(f: Figure): boolean | undefined {
  if (f.goal === undefined) return undefined
  const m = /^\s*(<=|>=|<|>|==)\s*(-?[\d.eE+-]+)\s*$/.exec(f.goal)
  if (!m) return undefined
  const x = f.ratio ?? f.value
  const g = Number(m[2])
  switch (m[1]) {
    case '>=':
      return x >= g
    case '<=':
      return x <= g
    case '>':
      return x > g
    case '<':
      return x < g
    default:
      return x === g
  }
}

export class Reporter {
  readonly figures: Figure[] = []
  private suiteStart = 0

  constructor(
    readonly json: boolean,
    private readonly out: (line: string) => void = (l) => process.stdout.write(l + '\n'),
    private readonly err: (line: string) => void = (l) => process.stderr.write(l + '\n'),
  ) {}

  progress(msg: string): void {
    this.err(msg)
  }

  beginSuite(name: string): void {
    this.suiteStart = this.figures.length
    this.progress(`bench ${name}: starting`)
  }

  /** JSON lines stream out as figures are made, so a crash loses only what was unfinished. */
  add(bench: string, spec: FigureSpec): Figure {
    const f = makeFigure(bench, spec)
    this.figures.push(f)
    if (this.json) this.out(JSON.stringify(f))
    else this.progress(`  ${f.figure} = ${f.value} ${f.unit}${f.ratio !== undefined ? ` (ratio ${f.ratio})` : ''}`)
    return f
  }

  endSuite(name: string): void {
    if (!this.json) this.out(formatTable(name, this.figures.slice(this.suiteStart)))
  }
}

function fmt(x: number | undefined): string {
  if (x === undefined) return ''
  return Number.isInteger(x) && Math.abs(x) >= 1e4 ? x.toLocaleString('en-US') : String(x)
}

export function formatTable(bench: string, figures: readonly Figure[]): string {
  const head = ['figure', 'value', 'unit', 'baseline', 'baseline_value', 'ratio', 'goal', 'ok', 'runs', 'min', 'max']
  const right = new Set(['value', 'baseline_value', 'ratio', 'runs', 'min', 'max'])
  const rows = figures.map((f) => {
    const ok = meetsGoal(f)
    return [
      f.figure,
      fmt(f.value),
      f.unit,
      f.baseline ?? '',
      fmt(f.baseline_value),
      fmt(f.ratio),
      f.goal ?? '',
      ok === undefined ? '' : ok ? 'yes' : 'NO',
      String(f.runs),
      fmt(f.min),
      fmt(f.max),
    ]
  })
  const widths = head.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] as string).length)))
  const line = (cells: string[]): string =>
    cells
      .map((c, i) => (right.has(head[i] as string) ? c.padStart(widths[i] as number) : c.padEnd(widths[i] as number)))
      .join('  ')
      .trimEnd()
  const rule = widths.map((w) => '-'.repeat(w)).join('  ')
  return [`# bench ${bench}`, line(head), rule, ...rows.map(line), ''].join('\n')
}

let gcFn: (() => void) | undefined

/**
 * A full, synchronous GC. Node hides `gc` unless started with --expose-gc; setting the flag at
 * run time and fetching `gc` from a fresh context gives the same function without re-executing
 * the process (and so without a second process to forward signals to).
 */
export function gc(): void {
  if (gcFn === undefined) {
    const g = (globalThis as { gc?: () => void }).gc
    if (typeof g === 'function') gcFn = g
    else {
      v8.setFlagsFromString('--expose-gc')
      gcFn = vm.runInNewContext('gc') as () => void
    }
  }
  gcFn()
  gcFn()
}

/** Used heap after a full GC, in bytes. */
export function heapUsed(): number {
  gc()
  return process.memoryUsage().heapUsed
}

export function now(): number {
  return performance.now()
}

/**
 * Milliseconds of CPU this process has used (user + system, all threads, so V8's GC helpers
 * count too). Single-threaded CPU-bound loops are timed with it: on the shared 2-core machines
 * their wall time mostly measures what else is running, their CPU time far less.
 */
export function cpuTime(): number {
  const u = process.cpuUsage()
  return (u.user + u.system) / 1000
}

/**
 * Runs every contender `runs` times (after one discarded warm-up pass), rotating the order each
 * repetition so no contender always goes first, and returns the milliseconds of `clock` (CPU
 * time unless told otherwise) per run.
 */
export function timeSideBySide(
  contenders: ReadonlyArray<{ name: string; setup?: () => void; run: () => unknown }>,
  runs: number,
  progress?: (msg: string) => void,
  clock: () => number = cpuTime,
): Map<string, number[]> {
  const out = new Map<string, number[]>(contenders.map((c) => [c.name, []]))
  for (let r = -1; r < runs; r++) {
    for (let j = 0; j < contenders.length; j++) {
      const c = contenders[(j + Math.max(r, 0)) % contenders.length] as (typeof contenders)[number]
      c.setup?.()
      gc()
      const w0 = now()
      const t0 = clock()
      // What run built is dropped right away: a big leftover (a Yjs document) would make every
      // later GC slower and bill the next contender for it.
      c.run()
      const ms = clock() - t0
      const wall = now() - w0
      if (r >= 0) (out.get(c.name) as number[]).push(ms)
      progress?.(`    ${r < 0 ? 'warm-up' : `run ${r + 1}/${runs}`} ${c.name}: ${ms.toFixed(1)} ms (wall ${wall.toFixed(1)} ms)`)
    }
  }
  return out
}
