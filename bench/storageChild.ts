/**
 * The child processes of the storage suite (bench/storage.ts forks this file with an IPC channel):
 *
 * - `serve DIR`: a node and its HTTP server, built the way `speedlayer start` builds them
 *   (openNode + startServer) in a process of their own, so client and server do not share a
 *   core, but driven over IPC so the bench decides when compaction runs. Automatic compaction is
 *   off: the only compaction is the one the bench asks for, inside its measured window, and the
 *   windows without compaction are guaranteed free of it.
 *     in:  {cmd: 'dirty', keys: N}  increments key:0..N-1 in-process (every one becomes dirty)
 *          {cmd: 'compact'}         runs node.storage.compact() to its end
 *          {cmd: 'stop'}            closes server and node, then exits
 *     out: {kind: 'ready', port}, {kind: 'dirtied'}, {kind: 'compacted', ms}, {kind: 'error', message}
 * - `recover DIR KEYS`: opens a node on DIR as a restarted process would, and reports how long
 *   openNode took and the heap the node holds per key: {kind: 'recovered', ms, heapPerKey, keys}.
 * - `map KEYS`: the heap baseline, a Map<string, number> of the same keys: {kind: 'map', heapPerKey}.
 *
 * Heap figures are taken in a fresh process because a closed node can stay reachable for a while
 * (a pending timer holds it), which in a shared process would be counted against the next one.
 */
import { resolve } from 'node:path'
import { fileURLToPath } from 'node:url'
import { openNode } from '../src/node.js'
import { startServer } from '../src/server/http.js'
import { heapUsed, now } from './report.js'

export type ChildCommand = { cmd: 'dirty'; keys: number } | { cmd: 'compact' } | { cmd: 'stop' }
export type ChildMessage =
  | { kind: 'ready'; port: number }
  | { kind: 'dirtied' }
  | { kind: 'compacted'; ms: number }
  | { kind: 'recovered'; ms: number; heapPerKey: number; keys: number }
  | { kind: 'map'; heapPerKey: number }
  | { kind: 'error'; message: string }

export const BENCH_ID = 'bench'
export const BENCH_VIEW = 'pv'
export const keyOf = (i: number): string => `key:${i}`
/** Disables automatic compaction where a figure needs to decide when (or whether) it runs. */
export const NO_AUTO_COMPACTION = { compactMinLogBytes: Number.MAX_SAFE_INTEGER }

const send = (m: ChildMessage): Promise<void> =>
  new Promise((resolve, reject) => {
    if (!process.send) return reject(new Error('no IPC channel: start this file with child_process.fork'))
    process.send(m, undefined, undefined, (err) => (err ? reject(err) : resolve()))
  })

const log = (line: string): void => void process.stderr.write(`${line}\n`)

async function serve(dir: string): Promise<void> {
  const node = await openNode({ id: BENCH_ID, dataDir: dir, views: { [BENCH_VIEW]: { type: 'gcounter' } }, storage: NO_AUTO_COMPACTION, log })
  const server = await startServer(node, { host: '127.0.0.1', port: 0, maxBody: 1024 * 1024, log })
  const inc = { inc: 1 }
  process.on('message', (m: ChildCommand) => {
    const run = async (): Promise<void> => {
      switch (m.cmd) {
        case 'dirty': {
          // 5000 writers, each awaiting its own ack: ~5000 writes outstanding, as a busy client keeps.
          let next = 0
          const writer = async (): Promise<void> => {
            while (next < m.keys) await node.apply(BENCH_VIEW, keyOf(next++), inc)
          }
          await Promise.all(Array.from({ length: 5000 }, writer))
          return send({ kind: 'dirtied' })
        }
        case 'compact': {
          const t0 = now()
          await node.storage.compact()
          return send({ kind: 'compacted', ms: now() - t0 })
        }
        case 'stop': {
          await server.close()
          await node.close()
          process.exit(0)
        }
      }
    }
    run().catch((err: unknown) => void send({ kind: 'error', message: err instanceof Error ? (err.stack ?? err.message) : String(err) }))
  })
  // The parent gone (a crashed bench) means nobody will ever send 'stop'.
  process.on('disconnect', () => process.exit(1))
  await send({ kind: 'ready', port: Number(new URL(server.url).port) })
}

async function recover(dir: string, keys: number): Promise<void> {
  const before = heapUsed()
  const t0 = now()
  const node = await openNode({ id: BENCH_ID, dataDir: dir, storage: NO_AUTO_COMPACTION, log })
  const ms = now() - t0
  const after = heapUsed()
  const held = node.stats().keys
  if (held !== keys) throw new Error(`recovered ${held} keys, expected ${keys}`)
  await node.close()
  await send({ kind: 'recovered', ms, heapPerKey: (after - before) / keys, keys: held })
}

async function rawMap(keys: number): Promise<void> {
  const before = heapUsed()
  const m = new Map<string, number>()
  for (let i = 0; i < keys; i++) m.set(keyOf(i), 2)
  const after = heapUsed()
  if (m.size !== keys) throw new Error('unreachable')
  await send({ kind: 'map', heapPerKey: (after - before) / keys })
}

async function main(argv: string[]): Promise<void> {
  const [mode, a, b] = argv
  if (mode === 'serve' && a !== undefined) return serve(a)
  if (mode === 'recover' && a !== undefined && b !== undefined) return recover(a, Number(b))
  if (mode === 'map' && a !== undefined) return rawMap(Number(a))
  throw new Error('usage: fork(storageChild.js, [serve DIR | recover DIR KEYS | map KEYS])')
}

// Only when run as a child: bench/storage.ts imports this module for its types and constants.
if (process.argv[1] !== undefined && fileURLToPath(import.meta.url) === resolve(process.argv[1])) {
  main(process.argv.slice(2)).then(
    () => {
      if (process.argv[2] !== 'serve') process.exit(0)
    },
    (err: unknown) => {
      process.stderr.write(`storageChild: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`)
      process.exit(1)
    },
  )
}
