/**
 * Benchmark entry point: `node dist/bench/main.js [NAME...] [--json] [--quick]`.
 *
 * A suite is added by one line in SUITES. Suites load lazily so that running one does not pay
 * for (or break on) another's imports. Stdout carries only the table or the JSON lines.
 */
import { Reporter, type Suite } from './report.js'

const SUITES: Record<string, () => Promise<Suite>> = {
  crdts: async () => (await import('./crdts.js')).suite,
  storage: async () => (await import('./storage.js')).suite,
  replication: async () => (await import('./replication.js')).suite,
  ingest: async () => (await import('./ingest.js')).suite,
  yjs: async () => (await import('./yjs.js')).suite,
  demo: async () => (await import('./demo.js')).suite,
  dashboard: async () => (await import('./dashboard.js')).suite,
}

const USAGE = `usage: node dist/bench/main.js [NAME...] [--json] [--quick]   (NAME: ${Object.keys(SUITES).join(', ')})`

function fail(msg: string, code: number): never {
  process.stderr.write(`bench: ${msg}\n`)
  process.exit(code)
}

async function main(argv: string[]): Promise<void> {
  let json = false
  let quick = false
  const names: string[] = []
  for (const a of argv) {
    if (a === '--json') json = true
    else if (a === '--quick') quick = true
    else if (a === '--help' || a === '-h') {
      process.stdout.write(USAGE + '\n')
      return
    } else if (a.startsWith('-')) fail(`unknown option ${a}; ${USAGE}`, 2)
    else if (!Object.hasOwn(SUITES, a)) fail(`unknown benchmark "${a}" (available: ${Object.keys(SUITES).join(', ')})`, 2)
    else if (!names.includes(a)) names.push(a)
  }
  const run = names.length > 0 ? names : Object.keys(SUITES)
  const report = new Reporter(json)
  for (const name of run) {
    const suite = await (SUITES[name] as () => Promise<Suite>)()
    report.beginSuite(name)
    const t0 = performance.now()
    await suite.run({ quick, report })
    report.endSuite(name)
    report.progress(`bench ${name}: done in ${((performance.now() - t0) / 1000).toFixed(1)} s`)
  }
}

main(process.argv.slice(2)).catch((err: unknown) => {
  fail(err instanceof Error ? (err.stack ?? err.message) : String(err), 1)
})
