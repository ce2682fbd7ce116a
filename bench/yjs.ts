/**
 * The `yjs` suite (issue 8): what the y-websocket endpoint costs, against the reference server
 * (`@y/websocket-server` 0.1.1, the release built on yjs 13) and `y-leveldb`, measured in the same
 * run, interleaved repetition by repetition after a discarded warm-up round.
 *
 * Modelling choices (they decide the numbers):
 * - Servers are child processes: a `speedlayer start` node (LevelDB in a temp dir, no --fsync,
 *   every update durable before it is broadcast) and the reference server in memory
 *   (bench/yjsRefServer.ts; without YPERSISTENCE it persists nothing). Clients run in this
 *   process; the machine's cores are shared by the server and the clients.
 * - Updates/s: W writers per document, each a raw WebSocket speaking y-websocket, send their
 *   pre-encoded small updates (one character typed at the end of their own run of text, a
 *   distinct Yjs client each) all at once; writer 0 of each document also watches: the clock
 *   stops when every watcher has received every other writer's last update (Y.parseUpdateMeta
 *   on what it receives). The other writers read and drop what they receive. A fresh room per
 *   repetition. "1 doc": 20 writers on one document; "100 docs": 2 writers on each of 100.
 * - Cold load: one document written as N small updates (an editor typing, with backspaces,
 *   cursor jumps and map changes: see `typing`), through the node's API (speedlayer: compacted on the way, as
 *   the node does) and as `LeveldbPersistence.storeUpdate` stores them (y-leveldb: the same keys
 *   and values, written in batches, since storeUpdate itself takes minutes); each data directory
 *   is copied before the first load, and every repetition loads a fresh copy after a restart:
 *   the time to have the Y.Doc in memory (`acquire`; y-leveldb: `getYDoc`, which also trims the
 *   update log when it is long, as it does on a real first load), in ms of CPU (the machines are
 *   shared; wall time would mostly measure the neighbours), next to the floor any Yjs server
 *   pays: Y.applyUpdate of the document's encoded state into a fresh Y.Doc. Disk: the node's
 *   whole data directory after the restart, over Y.encodeStateAsUpdate of the document.
 * - Sync: a document of ~S bytes (64 KiB text inserts, uploaded by a client that stays
 *   connected so both servers hold it in memory); time from creating a stock WebsocketProvider
 *   until its document holds all of it.
 * - Memory: the heap growth (after a full GC) per loaded document without clients, each with a
 *   small content (100 characters of text, 3 map fields): N documents in a node in this process
 *   against N of the reference server's WSSharedDoc (`getYDoc`) with the same content.
 */
import { spawn, type ChildProcess } from 'node:child_process'
import { cpSync, rmSync } from 'node:fs'
import { mkdtemp, rm } from 'node:fs/promises'
import os from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import * as Y from 'yjs'
import * as encoding from 'lib0/encoding'
import * as decoding from 'lib0/decoding'
import WebSocket from 'ws'
import { WebsocketProvider } from 'y-websocket'
import { LeveldbPersistence, keyEncoding as yKeyEncoding } from 'y-leveldb'
import { ClassicLevel } from 'classic-level'
import { openNode } from '../src/node.js'
import { dirBytes } from '../src/storage/levelAdapter.js'
import { cpuTime, gc, heapUsed, now, type Suite, type SuiteOptions } from './report.js'

const BENCH = 'yjs'
const CLI = fileURLToPath(new URL('../src/cli/main.js', import.meta.url))
const REF = fileURLToPath(new URL('./yjsRefServer.js', import.meta.url))
const CORES = `${os.availableParallelism()} cores shared by the server and the clients`

interface Sizes {
  runs: number
  oneDocWriters: number
  oneDocUpdates: number
  docs: number
  docWriters: number
  docUpdates: number
  coldUpdates: number
  syncBytes: number
  idleDocs: number
}

function sizes(quick: boolean): Sizes {
  return quick
    ? { runs: 3, oneDocWriters: 20, oneDocUpdates: 25, docs: 100, docWriters: 2, docUpdates: 5, coldUpdates: 5000, syncBytes: 1 << 20, idleDocs: 200 }
    : { runs: 5, oneDocWriters: 20, oneDocUpdates: 500, docs: 100, docWriters: 2, docUpdates: 50, coldUpdates: 100_000, syncBytes: 10 << 20, idleDocs: 1000 }
}

const quiet = (): void => {}
const label = (n: number): string => (n >= 1 << 20 ? `${n / (1 << 20)} MB` : n >= 1000 ? `${n / 1000}k` : String(n))

// ---------------------------------------------------------------------------------------------
// Plumbing: temp dirs and children, removed even when the suite crashes

const liveDirs = new Set<string>()
const liveChildren = new Set<ChildProcess>()
let exitHookInstalled = false
function installExitHook(): void {
  if (exitHookInstalled) return
  exitHookInstalled = true
  process.once('exit', () => {
    for (const c of liveChildren) c.kill('SIGKILL')
    for (const d of liveDirs) rmSync(d, { recursive: true, force: true })
  })
}

async function tempDir(): Promise<string> {
  const d = await mkdtemp(join(os.tmpdir(), 'sl-bench-yjs-'))
  liveDirs.add(d)
  return d
}

async function removeDir(d: string): Promise<void> {
  await rm(d, { recursive: true, force: true })
  liveDirs.delete(d)
}

export interface Server {
  name: string
  url: string
  stop(): Promise<void>
}

/** A child that prints `listening on http://127.0.0.1:PORT`; resolves once it has. */
async function startChild(name: string, args: string[]): Promise<Server> {
  const env = { ...process.env }
  delete env.NODE_OPTIONS
  const proc = spawn(process.execPath, args, { env, stdio: ['ignore', 'pipe', 'pipe'] })
  liveChildren.add(proc)
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => {
    proc.once('close', (code, signal) => {
      liveChildren.delete(proc)
      resolve({ code, signal })
    })
  })
  let stdout = ''
  let stderr = ''
  proc.stderr?.setEncoding('utf8').on('data', (s: string) => (stderr = (stderr + s).slice(-8192)))
  const port = await new Promise<number>((resolve, reject) => {
    proc.stdout?.setEncoding('utf8').on('data', (s: string) => {
      stdout += s
      const m = /listening on http:\/\/127\.0\.0\.1:(\d+)\n/.exec(stdout)
      if (m) resolve(Number(m[1]))
    })
    void exited.then((e) => reject(new Error(`${name} exited (${e.code ?? e.signal}) before it listened:\n${stdout}${stderr}`)))
  })
  return {
    name,
    url: `http://127.0.0.1:${port}`,
    async stop() {
      proc.kill('SIGTERM')
      const e = await exited
      if (e.code !== 0) throw new Error(`${name} ended with ${e.code ?? e.signal} after SIGTERM:\n${stderr}`)
    },
  }
}

/** Runs `fn` over the contenders: one discarded warm-up round, then `runs` rounds, order rotating. */
async function sideBySide(names: readonly string[], runs: number, fn: (name: string, round: number) => Promise<void>): Promise<void> {
  for (let r = -1; r < runs; r++) {
    for (let j = 0; j < names.length; j++) await fn(names[(j + Math.max(r, 0)) % names.length] as string, r)
  }
}

const tagOf = (r: number, runs: number): string => (r < 0 ? 'warm-up' : `run ${r + 1}/${runs}`)

function withTimeout<T>(what: string, p: Promise<T>, ms: number): Promise<T> {
  let timer: NodeJS.Timeout | undefined
  return Promise.race([
    p,
    new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms waiting for ${what}`)), ms)
    }),
  ]).finally(() => clearTimeout(timer))
}

// ---------------------------------------------------------------------------------------------
// y-websocket messages

function syncMessage(kind: number, payload: Uint8Array): Uint8Array {
  const enc = encoding.createEncoder()
  encoding.writeVarUint(enc, 0)
  encoding.writeVarUint(enc, kind)
  encoding.writeVarUint8Array(enc, payload)
  return encoding.toUint8Array(enc)
}

const updateMessage = (u: Uint8Array): Uint8Array => syncMessage(2, u)

/** The update a sync step 2 or update message carries, or null for anything else. */
function updateOf(msg: Uint8Array): Uint8Array | null {
  const dec = decoding.createDecoder(msg)
  if (decoding.readVarUint(dec) !== 0) return null
  const kind = decoding.readVarUint(dec)
  if (kind !== 1 && kind !== 2) return null
  return decoding.readVarUint8Array(dec)
}

function openSocket(url: string): Promise<WebSocket> {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(url)
    ws.binaryType = 'nodebuffer'
    ws.once('open', () => resolve(ws))
    ws.once('error', reject)
  })
}

function closeSocket(ws: WebSocket): Promise<void> {
  return new Promise((resolve) => {
    if (ws.readyState === WebSocket.CLOSED) return resolve()
    ws.once('close', () => resolve())
    ws.terminate()
  })
}

// ---------------------------------------------------------------------------------------------
// Figure 1: updates/s

interface Writer {
  id: number
  messages: Uint8Array[]
  finalClock: number
}

/** `n` small updates of one Yjs client: one character typed at the end of its own text. */
export function writer(id: number, n: number): Writer {
  const doc = new Y.Doc()
  doc.clientID = id
  const messages: Uint8Array[] = []
  doc.on('update', (u: Uint8Array) => messages.push(updateMessage(u)))
  const text = doc.getText('text')
  for (let i = 0; i < n; i++) text.insert(text.length, String.fromCharCode(97 + (i % 26)))
  return { id, messages, finalClock: Y.getState(doc.store, id) }
}

/**
 * One round: `writers[d]` write to document d (room `${room}-${d}`) at once; resolves with the
 * ms until every document's watcher has every other writer's last update.
 */
export async function writeRound(server: Server, room: string, writers: Writer[][]): Promise<number> {
  const base = server.url.replace(/^http/, 'ws') + '/yjs/'
  const sockets: WebSocket[][] = await Promise.all(writers.map((ws, d) => Promise.all(ws.map(() => openSocket(`${base}${room}-${d}`)))))
  try {
    const done: Array<Promise<void>> = []
    sockets.forEach((socks, d) => {
      const ws = writers[d] as Writer[]
      socks.forEach((sock, i) => {
        if (i > 0) {
          sock.on('message', () => {})
          return
        }
        // The watcher: what it still waits for, per other writer.
        const want = new Map<number, number>()
        for (const w of ws.slice(1)) want.set(w.id, w.finalClock)
        done.push(
          new Promise<void>((resolve) => {
            if (want.size === 0) resolve()
            sock.on('message', (data: Buffer) => {
              const u = updateOf(new Uint8Array(data.buffer, data.byteOffset, data.byteLength))
              if (u === null) return
              for (const [client, clock] of Y.parseUpdateMeta(u).to) {
                const need = want.get(client)
                if (need !== undefined && clock >= need) want.delete(client)
              }
              if (want.size === 0) resolve()
            })
          }),
        )
      })
    })
    const t0 = now()
    const longest = Math.max(...writers.flat().map((w) => w.messages.length))
    // Interleaved, as concurrent typists would send them.
    for (let k = 0; k < longest; k++) {
      sockets.forEach((socks, d) => socks.forEach((sock, i) => {
        const m = (writers[d] as Writer[])[i]?.messages[k]
        if (m) sock.send(m)
      }))
    }
    await withTimeout(`every update on ${server.name}`, Promise.all(done), 300_000)
    return now() - t0
  } finally {
    await Promise.all(sockets.flat().map(closeSocket))
  }
}

async function throughput(o: SuiteOptions, z: Sizes, servers: Server[]): Promise<void> {
  const cases = [
    { figure: 'updates_per_s_1_doc', docs: 1, writers: z.oneDocWriters, updates: z.oneDocUpdates },
    { figure: 'updates_per_s_100_docs', docs: z.docs, writers: z.docWriters, updates: z.docUpdates },
  ]
  for (const c of cases) {
    let nextId = 1
    const writers = Array.from({ length: c.docs }, () => Array.from({ length: c.writers }, () => writer(nextId++, c.updates)))
    const total = c.docs * c.writers * c.updates
    const samples = new Map<string, number[]>(servers.map((s) => [s.name, []]))
    let round = 0
    await sideBySide(
      servers.map((s) => s.name),
      z.runs,
      async (name, r) => {
        const server = servers.find((s) => s.name === name) as Server
        const ms = await writeRound(server, `${c.figure}-${round++}`, writers)
        const rate = (total * 1000) / ms
        if (r >= 0) (samples.get(name) as number[]).push(rate)
        o.report.progress(`    ${c.figure} ${tagOf(r, z.runs)} ${name}: ${total} updates in ${ms.toFixed(0)} ms = ${rate.toFixed(0)}/s`)
      },
    )
    o.report.add(BENCH, {
      figure: c.figure,
      samples: samples.get('speedlayer') as number[],
      unit: `updates/s (${c.docs} doc${c.docs > 1 ? 's' : ''} x ${c.writers} writing clients, ${c.updates} updates each; ${CORES})`,
      baseline: { name: `reference_server_${c.figure}`, samples: samples.get('reference') as number[] },
      goal: '>= 1',
    })
  }
}

// ---------------------------------------------------------------------------------------------
// Figure 2: cold load and disk

/**
 * `n` small updates as an editor makes them: one character typed at the cursor, and per update a
 * 1% chance that the cursor jumps somewhere else first, 5% that it is a backspace instead, 2% that
 * a map field changes instead.
 */
function typing(n: number): { doc: Y.Doc; updates: Uint8Array[] } {
  const doc = new Y.Doc()
  doc.clientID = 7
  const updates: Uint8Array[] = []
  doc.on('update', (u: Uint8Array) => updates.push(u))
  const text = doc.getText('text')
  const map = doc.getMap('map')
  let s = 1
  const rand = (k: number) => {
    s = (s * 1103515245 + 12345) & 0x7fffffff
    return s % k
  }
  let cursor = 0
  for (let i = 0; i < n; i++) {
    const r = rand(100)
    if (r < 1) cursor = rand(text.length + 1)
    if (r < 5 && cursor > 0) {
      text.delete(cursor - 1, 1)
      cursor--
    } else if (r >= 5 && r < 7) map.set(`field${rand(20)}`, i)
    else {
      text.insert(cursor, String.fromCharCode(97 + rand(26)))
      cursor++
    }
  }
  return { doc, updates }
}

async function coldLoad(o: SuiteOptions, z: Sizes): Promise<void> {
  const { doc, updates } = typing(z.coldUpdates)
  const textLength = doc.getText('text').length
  const oursDir = await tempDir()
  const theirsDir = await tempDir()
  const work = await tempDir()
  try {
    let t0 = now()
    const writing = await openNode({ id: 'cold', dataDir: join(oursDir, 'db'), log: quiet })
    for (let i = 0; i < updates.length; i += 1000) await Promise.all(updates.slice(i, i + 1000).map((u) => writing.yjs.applyUpdate('doc', u)))
    await writing.close()
    o.report.progress(`    cold load: ${updates.length} updates written to a node in ${(now() - t0).toFixed(0)} ms`)
    t0 = now()
    // What `storeUpdate` writes, update by update, without its per-update read of the last clock
    // (2-3 ms each: minutes for 100k): the same keys and values, in batches.
    const raw = new ClassicLevel<Uint8Array, Uint8Array>(join(theirsDir, 'db'), { keyEncoding: 'view', valueEncoding: 'view' })
    await raw.open()
    for (let i = 0; i < updates.length; i += 10_000) {
      const b = raw.batch()
      for (let k = i; k < Math.min(updates.length, i + 10_000); k++) b.put(yKeyEncoding.encode(['v1', 'doc', 'update', k]), updates[k] as Uint8Array)
      await b.write()
    }
    await raw.close()
    o.report.progress(`    cold load: ${updates.length} updates written in y-leveldb's layout in ${(now() - t0).toFixed(0)} ms`)

    const state = Y.encodeStateAsUpdate(doc)
    const loads = new Map<string, number[]>([
      ['speedlayer', []],
      ['y-leveldb', []],
      ['yjs', []],
    ])
    const disk: number[] = []
    await sideBySide(['speedlayer', 'y-leveldb', 'yjs'], z.runs, async (name, r) => {
      const copy = join(work, 'db')
      let ms: number
      let length: number
      if (name === 'yjs') {
        // The floor: what any Yjs server pays to have this content in a Y.Doc.
        gc()
        const c = cpuTime()
        const d = new Y.Doc()
        Y.applyUpdate(d, state)
        ms = cpuTime() - c
        length = d.getText('text').length
        d.destroy()
      } else {
        await rm(copy, { recursive: true, force: true })
        cpSync(join(name === 'speedlayer' ? oursDir : theirsDir, 'db'), copy, { recursive: true })
        if (name === 'speedlayer') {
          const node = await openNode({ id: 'cold', dataDir: copy, log: quiet })
          gc()
          const c = cpuTime()
          const live = await node.yjs.acquire('doc')
          ms = cpuTime() - c
          length = live.ydoc.getText('text').length
          await node.close()
          if (r >= 0) disk.push(await dirBytes(copy))
        } else {
          const ldb = new LeveldbPersistence(copy)
          gc()
          const c = cpuTime()
          const d = await ldb.getYDoc('doc')
          ms = cpuTime() - c
          length = d.getText('text').length
          d.destroy()
          await ldb.destroy()
        }
      }
      if (length !== textLength) throw new Error(`${name} loaded a text of ${length} characters, expected ${textLength}`)
      if (r >= 0) (loads.get(name) as number[]).push(ms)
      o.report.progress(`    cold load ${tagOf(r, z.runs)} ${name}: ${ms.toFixed(1)} ms of CPU`)
    })
    const unit = `ms of CPU (one document of ${state.length} bytes encoded, written as ${label(updates.length)} small updates, loaded after a restart)`
    o.report.add(BENCH, { figure: 'cold_load_ms', samples: loads.get('speedlayer') as number[], unit, goal: '<= 100' })
    o.report.add(BENCH, {
      figure: 'cold_load_ms_vs_y_leveldb',
      samples: loads.get('speedlayer') as number[],
      unit,
      baseline: { name: 'y_leveldb_get_ydoc_ms', samples: loads.get('y-leveldb') as number[] },
    })
    o.report.add(BENCH, {
      figure: 'cold_load_ms_vs_yjs_apply',
      samples: loads.get('speedlayer') as number[],
      unit,
      baseline: { name: 'yjs_apply_encoded_state_ms', samples: loads.get('yjs') as number[] },
    })
    o.report.add(BENCH, {
      figure: 'disk_bytes_per_encoded_state_byte',
      samples: disk.map((b) => b / state.length),
      unit: `bytes of the node's data directory per byte of Y.encodeStateAsUpdate (${state.length} bytes) after ${label(updates.length)} updates and a restart`,
      goal: '<= 2',
    })
  } finally {
    for (const d of [oursDir, theirsDir, work]) await removeDir(d)
  }
}

// ---------------------------------------------------------------------------------------------
// Figure 3: sync of a large document to a new client

function largeDoc(bytes: number): { updates: Uint8Array[]; length: number } {
  const doc = new Y.Doc()
  const updates: Uint8Array[] = []
  doc.on('update', (u: Uint8Array) => updates.push(u))
  const text = doc.getText('text')
  let s = 5
  const chunk = 64 * 1024
  while (text.length < bytes) {
    let str = ''
    for (let i = 0; i < chunk; i++) {
      s = (s * 1103515245 + 12345) & 0x7fffffff
      str += String.fromCharCode(97 + (s % 26))
    }
    text.insert(text.length, str)
  }
  return { updates, length: text.length }
}

/** A stock client; resolves with the ms until its text has `length` characters. */
async function syncOnce(server: Server, room: string, length: number): Promise<number> {
  const t0 = now()
  const doc = new Y.Doc()
  const provider = new WebsocketProvider(server.url.replace(/^http/, 'ws') + '/yjs', room, doc, {
    WebSocketPolyfill: WebSocket as unknown as typeof globalThis.WebSocket,
    disableBc: true,
  })
  try {
    await withTimeout(
      `the document from ${server.name}`,
      new Promise<void>((resolve) => {
        const check = () => doc.getText('text').length >= length && resolve()
        doc.on('update', check)
        check()
      }),
      120_000,
    )
    return now() - t0
  } finally {
    provider.destroy()
    doc.destroy()
  }
}

async function syncLarge(o: SuiteOptions, z: Sizes, servers: Server[]): Promise<void> {
  const { updates, length } = largeDoc(z.syncBytes)
  const uploaders: WebSocket[] = []
  try {
    for (const s of servers) {
      const ws = await openSocket(s.url.replace(/^http/, 'ws') + '/yjs/large')
      ws.on('message', () => {})
      uploaders.push(ws)
      for (const u of updates) ws.send(updateMessage(u))
    }
    const samples = new Map<string, number[]>(servers.map((s) => [s.name, []]))
    await sideBySide(
      servers.map((s) => s.name),
      z.runs,
      async (name, r) => {
        const ms = await syncOnce(servers.find((s) => s.name === name) as Server, 'large', length)
        if (r >= 0) (samples.get(name) as number[]).push(ms)
        o.report.progress(`    sync ${tagOf(r, z.runs)} ${name}: ${ms.toFixed(0)} ms`)
      },
    )
    o.report.add(BENCH, {
      figure: 'sync_large_doc_ms',
      samples: samples.get('speedlayer') as number[],
      unit: `ms until a new stock client holds a ${label(z.syncBytes)} document (${CORES})`,
      baseline: { name: 'reference_server_sync_large_doc_ms', samples: samples.get('reference') as number[] },
    })
  } finally {
    await Promise.all(uploaders.map(closeSocket))
  }
}

// ---------------------------------------------------------------------------------------------
// Figure 4: memory per idle loaded document

function smallContent(): Uint8Array {
  const d = new Y.Doc()
  d.getText('text').insert(0, 'x'.repeat(100))
  const m = d.getMap('map')
  m.set('title', 'a note')
  m.set('owner', 'ann')
  m.set('count', 3)
  return Y.encodeStateAsUpdate(d)
}

async function memory(o: SuiteOptions, z: Sizes): Promise<void> {
  const content = smallContent()
  const ref = await import('@y/websocket-server/utils')
  const samples = new Map<string, number[]>([
    ['speedlayer', []],
    ['reference', []],
  ])
  let round = 0
  await sideBySide(['speedlayer', 'reference'], z.runs, async (name, r) => {
    let perDoc: number
    if (name === 'speedlayer') {
      const dir = await tempDir()
      const node = await openNode({ id: 'mem', dataDir: dir, log: quiet, yjs: { idleMs: 3_600_000 } })
      try {
        const before = heapUsed()
        for (let i = 0; i < z.idleDocs; i += 100) {
          await Promise.all(Array.from({ length: Math.min(100, z.idleDocs - i) }, (_, k) => node.yjs.applyUpdate(`doc-${i + k}`, content)))
        }
        await node.yjs.flushed()
        perDoc = (heapUsed() - before) / z.idleDocs
        if (node.yjs.getStats().loaded !== z.idleDocs) throw new Error('documents were unloaded during the measurement')
      } finally {
        await node.close()
        await removeDir(dir)
      }
    } else {
      const before = heapUsed()
      const names: string[] = []
      for (let i = 0; i < z.idleDocs; i++) {
        const n = `mem-${round}-${i}`
        names.push(n)
        Y.applyUpdate(ref.getYDoc(n), content)
      }
      perDoc = (heapUsed() - before) / z.idleDocs
      for (const n of names) {
        ref.docs.get(n)?.destroy()
        ref.docs.delete(n)
      }
    }
    round++
    if (r >= 0) (samples.get(name) as number[]).push(perDoc)
    o.report.progress(`    memory ${tagOf(r, z.runs)} ${name}: ${perDoc.toFixed(0)} bytes per document`)
  })
  o.report.add(BENCH, {
    figure: 'memory_bytes_per_idle_doc',
    samples: samples.get('speedlayer') as number[],
    unit: `bytes of heap per loaded document without clients (${z.idleDocs} documents of 100 characters and 3 map fields)`,
    baseline: { name: 'reference_server_bytes_per_idle_doc', samples: samples.get('reference') as number[] },
  })
}

// ---------------------------------------------------------------------------------------------

export const suite: Suite = {
  name: BENCH,
  async run(o: SuiteOptions): Promise<void> {
    installExitHook()
    const z = sizes(o.quick)
    const servers: Server[] = []
    const dir = await tempDir()
    try {
      let t0 = now()
      servers.push(await startChild('speedlayer', [CLI, 'start', '--id', 'bench', '--port', '0', '--data', dir, '--host', '127.0.0.1']))
      servers.push(await startChild('reference', [REF]))
      o.report.progress(`  servers up in ${((now() - t0) / 1000).toFixed(1)} s`)
      t0 = now()
      await throughput(o, z, servers)
      o.report.progress(`  updates/s: ${((now() - t0) / 1000).toFixed(1)} s`)
      t0 = now()
      await syncLarge(o, z, servers)
      o.report.progress(`  sync: ${((now() - t0) / 1000).toFixed(1)} s`)
    } finally {
      for (const s of servers) await s.stop()
      await removeDir(dir)
    }
    let t0 = now()
    await coldLoad(o, z)
    o.report.progress(`  cold load: ${((now() - t0) / 1000).toFixed(1)} s`)
    t0 = now()
    await memory(o, z)
    o.report.progress(`  memory: ${((now() - t0) / 1000).toFixed(1)} s`)
  },
}
