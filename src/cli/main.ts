#!/usr/bin/env node
/** The `speedlayer` command: one line per error, never a stack trace. */
// Commands load on demand: a short-lived client command (`batch`, which the demo's batch layer
// runs every bucket per view and node) must not pay for loading the whole node.
import { CommandError, UsageError } from './parse.js'

const help = async () => `speedlayer: realtime views as CRDTs (counters, sets, maps, HyperLogLog), durable in LevelDB.

${(await import('./start.js')).START_USAGE}
${(await import('./demo.js')).DEMO_USAGE}
${(await import('./ingest.js')).INGEST_USAGE}
${(await import('./query.js')).QUERY_USAGE}
${(await import('./batch.js')).BATCH_USAGE}

Run \`speedlayer start --id node1 --port 7001 --data ./data\`, then for example
  curl -X PUT localhost:7001/views/pageviews -d '{"type":"gcounter"}'
  curl -X POST localhost:7001/views/pageviews/home -d '{"inc":1}'
  curl localhost:7001/views/pageviews/home`

async function main(argv: string[]): Promise<void> {
  const [command, ...rest] = argv
  switch (command) {
    case 'start':
      return (await import('./start.js')).startCommand(rest)
    case 'demo':
      return (await import('./demo.js')).demoCommand(rest)
    case undefined:
    case 'help':
    case '--help':
    case '-h':
      process.stdout.write(`${await help()}\n`)
      return
    case 'ingest':
      return (await import('./ingest.js')).ingestCommand(rest)
    case 'query':
      return (await import('./query.js')).queryCommand(rest)
    case 'batch':
      return (await import('./batch.js')).batchCommand(rest)
    default:
      throw new UsageError(`unknown command "${command}"; see speedlayer --help`)
  }
}

main(process.argv.slice(2)).catch(async (err: unknown) => {
  const { StorageError } = await import('../storage/adapter.js')
  const { StoreError } = await import('../store/viewStore.js')
  const known = err instanceof UsageError || err instanceof CommandError || err instanceof StorageError || err instanceof StoreError
  const message = err instanceof Error ? err.message : String(err)
  process.stderr.write(`speedlayer: ${known ? message : `unexpected error: ${message}`}\n`)
  process.exit(err instanceof UsageError ? 2 : 1)
})
