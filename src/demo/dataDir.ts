/**
 * Who owns ./.demo-data. A demo holds it through `demo.lock` (its pid and its nodes' pids); a
 * second demo started while the first runs cannot share it (each node's LevelDB is locked), so it
 * runs on a temporary directory of its own, removed when it stops. A lock left by a demo that was
 * killed is taken over once that demo's nodes are gone (they exit by themselves when their
 * supervisor dies, within a second).
 */
import { mkdir, mkdtemp, readFile, rm, unlink, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'

export interface DataDir {
  path: string
  /** A temporary directory because another demo holds the usual one; removed by release(). */
  temporary: boolean
  /** Records the nodes' pids in the lock, so a successor can wait for them. */
  setChildren(pids: number[]): Promise<void>
  release(): Promise<void>
}

interface Lock {
  pid: number
  children: number[]
}

const LOCK = 'demo.lock'
const WAIT_FOR_NODES_MS = 15_000

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0)
    return true
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM'
  }
}

/** Is `pid` a running demo (and not some process that reused a dead demo's pid)? */
async function isDemo(pid: number): Promise<boolean> {
  if (!alive(pid)) return false
  try {
    const argv = (await readFile(`/proc/${pid}/cmdline`, 'utf8')).split('\0')
    return argv.includes('demo')
  } catch {
    // No /proc (not Linux): a live process with that pid is taken for the demo.
    return true
  }
}

async function readLock(file: string): Promise<Lock | null> {
  try {
    const raw = JSON.parse(await readFile(file, 'utf8')) as Partial<Lock>
    if (typeof raw.pid !== 'number') return null
    return { pid: raw.pid, children: Array.isArray(raw.children) ? raw.children.filter((p): p is number => typeof p === 'number') : [] }
  } catch {
    return null
  }
}

async function waitGone(pids: number[], timeoutMs: number): Promise<boolean> {
  const deadline = Date.now() + timeoutMs
  for (;;) {
    if (!pids.some(alive)) return true
    if (Date.now() > deadline) return false
    await new Promise((r) => setTimeout(r, 100))
  }
}

export async function claimDataDir(root: string, log: (line: string) => void): Promise<DataDir> {
  await mkdir(root, { recursive: true })
  const file = join(root, LOCK)
  const mine = (children: number[]) => JSON.stringify({ pid: process.pid, children }) + '\n'
  const owned = (): DataDir => ({
    path: root,
    temporary: false,
    setChildren: (pids) => writeFile(file, mine(pids)),
    async release() {
      const held = await readLock(file)
      if (held?.pid === process.pid) await unlink(file).catch(() => {})
    },
  })
  try {
    await writeFile(file, mine([]), { flag: 'wx' })
    return owned()
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err
  }
  const held = await readLock(file)
  if (held !== null && held.pid !== process.pid && (await isDemo(held.pid))) {
    const tmp = await mkdtemp(join(tmpdir(), 'speedlayer-demo-'))
    log(`demo: ${root} is in use by another demo (pid ${held.pid}); this one keeps its data in ${tmp} (removed when it stops)`)
    return {
      path: tmp,
      temporary: true,
      setChildren: async () => {},
      release: () => rm(tmp, { recursive: true, force: true, maxRetries: 3 }),
    }
  }
  // A killed demo's lock: its nodes are closing by themselves; their LevelDB locks go with them.
  if (held !== null && !(await waitGone(held.children, WAIT_FOR_NODES_MS))) {
    log(`demo: nodes of a previous demo (pids ${held.children.filter(alive).join(', ')}) still hold ${root}; continuing anyway`)
  }
  await writeFile(file, mine([]))
  return owned()
}
