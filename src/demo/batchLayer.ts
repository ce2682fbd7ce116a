/**
 * The demo's batch layer: shortly after each bucket completes, it folds the new part of the
 * master dataset into the exact per-bucket values (batchCompute.ts) and imports the batch view of
 * every bucketed view with horizon = the end of the last complete bucket, by running
 * `speedlayer batch --url NODE --view VIEW --horizon T FILE` as a child process, as a user's batch
 * job would. The import makes the realtime buckets it covers expire: a visitor sees estimates
 * (HLL) turn exact and counts settle to the master dataset's.
 *
 * The batch view is imported on every node: until batch views replicate over peer links, an
 * import reaches only the node it is sent to. (Once they replicate, importing everywhere is
 * redundant but still right: identical contents, and the join keeps one.)
 *
 * Retention: the batch view holds the last `retentionBuckets` complete buckets, not the whole
 * history, so a demo left running for days keeps a bounded memory on every node. Older buckets
 * read as empty.
 */
import { spawn, type ChildProcess } from 'node:child_process'
import { mkdir, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { BatchCompute } from './batchCompute.js'
import { MasterReader } from './master.js'

export interface BatchTarget {
  id: string
  url: string
}

export interface BatchLayerOptions {
  /** The views file's {NAME: DEFINITION}. */
  definitions: Record<string, unknown>
  masterPath: string
  /** Where the batch view files are written (one per view, overwritten by each run). */
  dir: string
  /** dist/src/cli/main.js */
  cli: string
  nodes: () => BatchTarget[]
  /** Resolves once everything the generator appended to the master dataset is written. */
  flushed: () => Promise<void>
  retentionBuckets: number
  log: (line: string) => void
  now?: () => number
}

export interface ImportOutcome {
  view: string
  horizon: number
  keys: number
  expired: number
  nodes: string[]
  failed: string[]
}

const iso = (t: number) => new Date(t).toISOString()

export class BatchLayer {
  readonly compute: BatchCompute
  /** Imports that landed (view x node). */
  imports = 0
  lastHorizon = NaN
  private readonly reader: MasterReader
  private readonly now: () => number
  private readonly stepMs: number
  private timer: NodeJS.Timeout | undefined
  private running: Promise<unknown> | null = null
  private readonly children = new Set<ChildProcess>()
  private stopped = false

  constructor(private readonly opts: BatchLayerOptions) {
    this.compute = new BatchCompute(opts.definitions)
    this.reader = new MasterReader(opts.masterPath)
    this.now = opts.now ?? Date.now
    const sizes = this.compute.bucketed.map((v) => v.sizeMs)
    this.stepMs = sizes.length > 0 ? Math.min(...sizes) : 0
  }

  /** The bucket size the layer runs at (ms); 0 when no view is bucketed. */
  get periodMs(): number {
    return this.stepMs
  }

  /**
   * Reads what the master dataset already holds (a previous run's events), imports right away if
   * complete buckets are in it, then runs shortly after every bucket boundary.
   */
  start(): void {
    if (this.stepMs === 0) return
    this.running = this.run(true).finally(() => {
      this.running = null
      this.schedule()
    })
  }

  /** Cancels the next run and ends a running import (its node refuses the cut body: nothing half-imported). */
  async stop(): Promise<void> {
    this.stopped = true
    clearTimeout(this.timer)
    for (const c of this.children) c.kill('SIGTERM')
    await this.running
  }

  private schedule(): void {
    if (this.stopped) return
    const now = this.now()
    // Shortly after the boundary: the generator's last events of the bucket are ingested and appended by then.
    const delay = Math.min(2000, Math.round(this.stepMs / 4))
    const at = Math.floor(now / this.stepMs) * this.stepMs + this.stepMs + delay
    this.timer = setTimeout(() => {
      this.running = this.run(false).finally(() => {
        this.running = null
        this.schedule()
      })
    }, at - now)
  }

  /** One batch run; `initial`: import only if the master dataset already covers complete buckets. */
  async run(initial = false): Promise<ImportOutcome[]> {
    const now = this.now()
    const horizonOf = (sizeMs: number) => Math.floor(now / sizeMs) * sizeMs
    const keepFromOf = (sizeMs: number) => horizonOf(sizeMs) - this.opts.retentionBuckets * sizeMs
    const views = this.compute.bucketed
    const keepFrom = Math.min(...views.map((v) => keepFromOf(v.sizeMs)))
    try {
      await this.opts.flushed()
      await this.reader.readNew((line) => this.compute.addLine(line, keepFrom))
    } catch (err) {
      this.opts.log(`batch: cannot read the master dataset ${this.opts.masterPath}: ${(err as Error).message}`)
      return []
    }
    if (initial && this.compute.coveredBuckets(horizonOf(this.stepMs), keepFrom) === 0) return []
    await mkdir(this.opts.dir, { recursive: true })
    const out: ImportOutcome[] = []
    for (const v of views) {
      if (this.stopped) break
      const horizon = horizonOf(v.sizeMs)
      out.push(await this.importView(v.name, horizon, keepFromOf(v.sizeMs)))
    }
    this.compute.forget(keepFrom)
    if (out.length > 0) this.lastHorizon = Math.max(...out.map((o) => o.horizon))
    return out
  }

  private async importView(view: string, horizon: number, keepFrom: number): Promise<ImportOutcome> {
    const file = join(this.opts.dir, `${view}.ndjson`)
    const parts: string[] = []
    for (const l of this.compute.lines(view, horizon, keepFrom)) parts.push(JSON.stringify(l))
    await writeFile(file, parts.length > 0 ? `${parts.join('\n')}\n` : '')
    const targets = this.opts.nodes()
    const results = await Promise.all(targets.map((t) => this.importOn(t, view, horizon, file)))
    const outcome: ImportOutcome = { view, horizon, keys: parts.length, expired: 0, nodes: [], failed: [] }
    for (let i = 0; i < targets.length; i++) {
      const r = results[i] as { ok: true; expired: number } | { ok: false; why: string }
      const id = (targets[i] as BatchTarget).id
      if (r.ok) {
        outcome.nodes.push(id)
        outcome.expired += r.expired
        this.imports++
      } else {
        outcome.failed.push(id)
        if (!this.stopped) this.opts.log(`batch: ${view} on ${id} failed: ${r.why}`)
      }
    }
    if (outcome.nodes.length > 0) {
      this.opts.log(
        `batch: ${view} exact up to ${iso(horizon)}: ${outcome.keys} keys imported on ${outcome.nodes.join(', ')}; ${outcome.expired} realtime keys expired`,
      )
    }
    return outcome
  }

  private importOn(target: BatchTarget, view: string, horizon: number, file: string): Promise<{ ok: true; expired: number } | { ok: false; why: string }> {
    return new Promise((resolve) => {
      const child = spawn(process.execPath, [this.opts.cli, 'batch', '--url', target.url, '--view', view, '--horizon', String(horizon), file], {
        stdio: ['ignore', 'pipe', 'pipe'],
      })
      this.children.add(child)
      let stdout = ''
      let stderr = ''
      child.stdout.setEncoding('utf8').on('data', (s: string) => (stdout += s))
      child.stderr.setEncoding('utf8').on('data', (s: string) => (stderr += s))
      child.on('error', (err) => (stderr += err.message))
      child.on('close', (code, signal) => {
        this.children.delete(child)
        const m = /imported (\d+) keys .*; (\d+) realtime keys expired/.exec(stdout)
        if (code === 0 && m) return resolve({ ok: true, expired: Number(m[2]) })
        const why = stderr.trim().split('\n').pop()?.replace(/^speedlayer: /, '') || (signal ? `killed by ${signal}` : `exit code ${code}`)
        resolve({ ok: false, why })
      })
    })
  }
}
