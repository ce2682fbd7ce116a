#!/usr/bin/env node
/** The `speedlayer` command: one line per error, never a stack trace. */
import { CommandError, UsageError } from './parse.js'
import { START_USAGE, startCommand } from './start.js'
import { demoCommand, DEMO_USAGE } from './demo.js'
import { ingestCommand, INGEST_USAGE } from './ingest.js'
import { queryCommand, QUERY_USAGE } from './query.js'
import { batchCommand, BATCH_USAGE } from './batch.js'
import { StorageError } from '../storage/adapter.js'
import { StoreError } from '../store/viewStore.js'

const HELP = `speedlayer: realtime views as CRDTs (counters, sets, maps, HyperLogLog), durable in LevelDB.

${START_USAGE}
${DEMO_USAGE}
${INGEST_USAGE}
${QUERY_USAGE}
${BATCH_USAGE}

Run \`speedlayer start --id node1 --port 7001 --data ./data\`, then for example
  curl -X PUT localhost:7001/views/pageviews -d '{"type":"gcounter"}'
  curl -X POST localhost:7001/views/pageviews/home -d '{"inc":1}'
  curl localhost:7001/views/pageviews/home`

async function main(argv: string[]): Promise<void> {
  const [command, ...rest] = argv
  switch (command) {
    case 'start':
      return startCommand(rest)
    case 'demo':
      return demoCommand(rest)
    case undefined:
    case 'help':
    case '--help':
    case '-h':
      process.stdout.write(`${HELP}\n`)
      return
    case 'ingest':
      return ingestCommand(rest)
    case 'query':
      return queryCommand(rest)
    case 'batch':
      return batchCommand(rest)
    default:
      throw new UsageError(`unknown command "${command}"; see speedlayer --help`)
  }
}

main(process.argv.slice(2)).catch((err: unknown) => {
  const known = err instanceof UsageError || err instanceof CommandError || err instanceof StorageError || err instanceof StoreError
  const message = err instanceof Error ? err.message : String(err)
  process.stderr.write(`speedlayer: ${known ? message : `unexpected error: ${message}`}\n`)
  process.exit(err instanceof UsageError ? 2 : 1)
})
