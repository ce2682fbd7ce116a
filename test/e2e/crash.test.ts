/**
 * Crash safety (CONTRACT.md, "Durability"): 8 clients write to a real `speedlayer start` child,
 * which is SIGKILLed at moments a seeded PRNG picks, some of them while compaction runs; after
 * every restart on the same --data, every acknowledged write is there and nothing that was never
 * sent, or sent once, shows up twice.
 *
 * What a write in flight at the kill may do is open: it may or may not have reached the log. So
 * the test keeps, per key, what was acknowledged and what was "maybe" (in flight at a kill), and
 * checks acknowledged <= value <= acknowledged + maybe for counters, acknowledged ⊆ elements ⊆
 * acknowledged ∪ maybe for the OR-set, and for an LWW field the write of the highest acknowledged
 * ts or a maybe write of a higher one. Whatever a restart shows must still be there after the
 * next one (recovered data is never lost again).
 *
 * `SEED=n npx vitest run test/e2e/crash.test.ts` replays the PRNG's choices (which op, which
 * key, when to kill); the interleaving of 8 clients with a real process is not replayable, so
 * a failure prints the seed and the state that broke.
 */
import { writeFile } from 'node:fs/promises'
import path from 'node:path'
import * as prng from 'lib0/prng'
import { afterEach, expect, it } from 'vitest'
import { E2E, STACK_FRAME, type HttpClient, type StartedNode } from './helpers.js'

const e2e = new E2E()
afterEach(() => e2e.cleanup())

const CLIENTS = 8
const MIN_KILLS = 5
const MIN_ACKED = 4_000
/** Stop adding rounds after this long, then assert (so a slow machine fails clearly, not by timeout). */
const BUDGET_MS = 70_000
const MAX_ROUNDS = 40

const COUNTER_KEYS = 600
const SET_KEYS = 40
const MAP_KEYS = 80
const MAP_FIELDS = 2
/** LWW values carry padding so the log passes the 1 MiB compaction threshold every round or two. */
const PAD_MIN = 1000
const PAD_MAX = 4000
/** Explicit event times, unique per write, well in the past (any ts within --max-drift is fine). */
const TS_BASE = 1_600_000_000_000

type KillPolicy = 'acks' | 'time' | 'compacting'

interface MapWrite {
  w: number
  ts: number
  pad: number
}

function padOf(w: number, len: number): string {
  return String.fromCharCode(97 + (w % 26)).repeat(len)
}

class Expectations {
  readonly counterAcked = new Map<string, number>()
  readonly counterMaybe = new Map<string, number>()
  readonly counterSeen = new Map<string, number>()
  readonly setAcked = new Map<string, Set<string>>()
  readonly setMaybe = new Map<string, Set<string>>()
  readonly setSeen = new Map<string, Set<string>>()
  /** Per "key\0field": the acknowledged write with the highest ts. */
  readonly mapAcked = new Map<string, MapWrite>()
  readonly mapMaybe = new Map<string, MapWrite[]>()
  readonly mapSeen = new Map<string, number>()
  readonly mapWrites = new Map<number, MapWrite>()
}

function add(m: Map<string, number>, k: string, n: number): void {
  m.set(k, (m.get(k) ?? 0) + n)
}

function addToSet(m: Map<string, Set<string>>, k: string, e: string): void {
  let s = m.get(k)
  if (!s) m.set(k, (s = new Set()))
  s.add(e)
}

/** One write, and what to record once its fate is known. */
interface PlannedWrite {
  path: string
  body: unknown
  acked(x: Expectations): void
  maybe(x: Expectations): void
}

interface RoundState {
  killed: boolean
  acked: number
  maybe: number
  onAck: () => void
}

async function clientLoop(c: HttpClient, gen: prng.PRNG, client: number, round: number, counters: { w: number; ts: number }, x: Expectations, st: RoundState): Promise<void> {
  let n = 0
  while (!st.killed) {
    const plan = planWrite(gen, client, round, n++, counters)
    let answer
    try {
      answer = await c.request('POST', plan.path, plan.body)
    } catch (err) {
      if (!st.killed) throw new Error(`POST ${plan.path} failed while the node was up: ${(err as Error).message}`)
      plan.maybe(x)
      st.maybe++
      return
    }
    if (answer.status === 200) {
      // An answer that arrives after the kill was still sent by the node: it is an acknowledgement.
      plan.acked(x)
      st.acked++
      st.onAck()
    } else if (answer.status !== 503) {
      throw new Error(`POST ${plan.path} ${JSON.stringify(plan.body).slice(0, 200)} answered ${answer.status}: ${answer.text}`)
    }
    // 503 (overload) changes nothing; the loop just goes on.
  }
}

function planWrite(gen: prng.PRNG, client: number, round: number, n: number, counters: { w: number; ts: number }): PlannedWrite {
  const r = gen.next()
  if (r < 0.45) {
    const key = `k${prng.uint32(gen, 0, COUNTER_KEYS - 1)}`
    const inc = prng.uint32(gen, 1, 5)
    return {
      path: `/views/hits/${key}`,
      body: { inc },
      acked: (x) => add(x.counterAcked, key, inc),
      maybe: (x) => add(x.counterMaybe, key, inc),
    }
  }
  if (r < 0.7) {
    const key = `s${prng.uint32(gen, 0, SET_KEYS - 1)}`
    const elems = [`e${round}.${client}.${n}`]
    if (prng.bool(gen)) elems.push(`e${round}.${client}.${n}b`)
    return {
      path: `/views/tags/${key}`,
      body: { add: elems.length === 1 ? elems[0] : elems },
      acked: (x) => elems.forEach((e) => addToSet(x.setAcked, key, e)),
      maybe: (x) => elems.forEach((e) => addToSet(x.setMaybe, key, e)),
    }
  }
  const key = `p${prng.uint32(gen, 0, MAP_KEYS - 1)}`
  const field = `f${prng.uint32(gen, 0, MAP_FIELDS - 1)}`
  const write: MapWrite = { w: ++counters.w, ts: TS_BASE + ++counters.ts, pad: prng.uint32(gen, PAD_MIN, PAD_MAX) }
  const id = `${key}\0${field}`
  return {
    path: `/views/profiles/${key}`,
    body: { set: { [field]: { w: write.w, ts: write.ts, pad: padOf(write.w, write.pad) } }, ts: write.ts },
    acked: (x) => {
      x.mapWrites.set(write.w, write)
      const prev = x.mapAcked.get(id)
      if (!prev || prev.ts < write.ts) x.mapAcked.set(id, write)
    },
    maybe: (x) => {
      x.mapWrites.set(write.w, write)
      const list = x.mapMaybe.get(id) ?? []
      list.push(write)
      x.mapMaybe.set(id, list)
    },
  }
}

/** Reads everything back and checks it against what was acknowledged; returns a problem or null. */
async function verify(c: HttpClient, x: Expectations): Promise<string[]> {
  const problems: string[] = []
  const hits = await c.scanAll('hits')
  for (const [key, acked] of x.counterAcked) {
    const v = hits.get(key) ?? 0
    const maybe = x.counterMaybe.get(key) ?? 0
    if (typeof v !== 'number' || v < acked || v > acked + maybe) problems.push(`hits/${key} = ${v}, acknowledged ${acked}, in flight at kills ${maybe}`)
    const seen = x.counterSeen.get(key) ?? 0
    if (typeof v === 'number' && v < seen) problems.push(`hits/${key} = ${v} went back from ${seen}, seen after an earlier restart`)
  }
  for (const [key, v] of hits) {
    if (!x.counterAcked.has(key) && !x.counterMaybe.has(key)) problems.push(`hits/${key} = ${JSON.stringify(v)} was never written`)
    if (typeof v === 'number') x.counterSeen.set(key, Math.max(v, x.counterSeen.get(key) ?? 0))
  }

  const tags = await c.scanAll('tags')
  const setKeys = new Set([...x.setAcked.keys(), ...x.setMaybe.keys(), ...tags.keys()])
  for (const key of setKeys) {
    const v = (tags.get(key) ?? []) as string[]
    const have = new Set(v)
    const acked = x.setAcked.get(key) ?? new Set()
    const maybe = x.setMaybe.get(key) ?? new Set()
    const missing = [...acked].filter((e) => !have.has(e))
    if (missing.length > 0) problems.push(`tags/${key} lost acknowledged elements ${missing.slice(0, 5).join(', ')} (${missing.length})`)
    const lost = [...(x.setSeen.get(key) ?? [])].filter((e) => !have.has(e))
    if (lost.length > 0) problems.push(`tags/${key} lost elements seen after an earlier restart: ${lost.slice(0, 5).join(', ')}`)
    const alien = v.filter((e) => !acked.has(e) && !maybe.has(e))
    if (alien.length > 0) problems.push(`tags/${key} holds elements never sent: ${alien.slice(0, 5).join(', ')}`)
    if (v.length !== have.size) problems.push(`tags/${key} holds duplicates`)
    x.setSeen.set(key, have)
  }

  const profiles = await c.scanAll('profiles')
  const fieldIds = new Set([...x.mapAcked.keys(), ...x.mapMaybe.keys()])
  for (const [key, value] of profiles) {
    for (const field of Object.keys(value as object)) fieldIds.add(`${key}\0${field}`)
  }
  for (const id of fieldIds) {
    const [key, field] = id.split('\0') as [string, string]
    const got = ((profiles.get(key) ?? {}) as Record<string, { w: number; ts: number; pad: string } | undefined>)[field]
    const acked = x.mapAcked.get(id)
    const where = `profiles/${key}.${field}`
    if (got === undefined) {
      if (acked) problems.push(`${where} is missing; acknowledged w=${acked.w} ts=${acked.ts}`)
      continue
    }
    const sent = x.mapWrites.get(got.w)
    if (!sent || sent.ts !== got.ts || got.pad !== padOf(sent.w, sent.pad)) {
      problems.push(`${where} holds a value never sent: w=${got.w} ts=${got.ts} pad length ${got.pad?.length}`)
      continue
    }
    if (acked && got.ts < acked.ts) problems.push(`${where} holds w=${got.w} ts=${got.ts}; acknowledged w=${acked.w} ts=${acked.ts} is newer`)
    if (acked && got.ts > acked.ts && !(x.mapMaybe.get(id) ?? []).some((m) => m.w === got.w)) {
      problems.push(`${where} holds w=${got.w} ts=${got.ts}, newer than the acknowledged ts=${acked.ts} and never in flight`)
    }
    if (!acked && !(x.mapMaybe.get(id) ?? []).some((m) => m.w === got.w)) problems.push(`${where} holds w=${got.w}, which was never acknowledged nor in flight`)
    const seen = x.mapSeen.get(id) ?? 0
    if (got.ts < seen) problems.push(`${where} went back to ts=${got.ts} from ts=${seen}, seen after an earlier restart`)
    x.mapSeen.set(id, Math.max(seen, got.ts))
  }
  return problems
}

function seedFromEnv(): number {
  const raw = process.env.SEED
  if (raw !== undefined && raw !== '') {
    const n = Number(raw)
    if (!Number.isSafeInteger(n) || n < 1 || n >= 2 ** 32) throw new Error(`SEED must be an integer in [1, 2^32), got ${JSON.stringify(raw)}`)
    return n
  }
  return 1 + Math.floor(Math.random() * (2 ** 32 - 2))
}

it('kill -9 at random moments, compaction included, loses no acknowledged write and doubles nothing', async () => {
  const seed = seedFromEnv()
  const gen = prng.create(seed)
  const tmp = await e2e.tempDir()
  const data = path.join(tmp, 'data')
  const viewsFile = path.join(tmp, 'views.json')
  await writeFile(viewsFile, JSON.stringify({ views: { hits: { type: 'gcounter' }, tags: { type: 'orset' }, profiles: { type: 'lwwmap' } } }))

  const x = new Expectations()
  const counters = { w: 0, ts: 0 }
  const log: string[] = []
  const t0 = performance.now()
  let totalAcked = 0
  let totalMaybe = 0
  let kills = 0
  let killsWhileCompacting = 0
  let killsAfterCompaction = 0
  let node: StartedNode | null = null

  try {
    for (let round = 0; round < MAX_ROUNDS; round++) {
      const enough = kills >= MIN_KILLS && totalAcked >= MIN_ACKED && killsWhileCompacting + killsAfterCompaction > 0
      if (enough || (performance.now() - t0 > BUDGET_MS && kills >= MIN_KILLS)) break

      node = await e2e.start({ id: 'crashy', data, args: ['--views', viewsFile] })
      const reader = e2e.client(node.url, e2e.agent(2))
      if (round > 0) {
        const problems = await verify(reader, x)
        if (problems.length > 0) throw new Error(`after restart ${round}: ${problems.length} problems:\n  ${problems.slice(0, 20).join('\n  ')}`)
      }

      const remaining = Math.max(MIN_ACKED - totalAcked, 0)
      const roundsLeft = Math.max(MIN_KILLS - kills, 1)
      const target = Math.max(200, Math.round((remaining / roundsLeft) * (0.5 + gen.next())))
      const policy: KillPolicy = prng.oneOf(gen, ['acks', 'acks', 'time', 'compacting'] as KillPolicy[])
      const delayMs = prng.uint32(gen, 0, 300)

      const child = node.child
      const st: RoundState = { killed: false, acked: 0, maybe: 0, onAck: () => {} }
      let compacting = 0
      let compactions = 0
      let compactionsAtStart = -1
      const kill = (why: string) => {
        if (st.killed) return
        st.killed = true
        child.proc.kill('SIGKILL')
        kills++
        if (compacting === 1) killsWhileCompacting++
        else if (compactions > 0) killsAfterCompaction++
        log.push(`round ${round}: ${why} after ${st.acked} acks; compacting=${compacting} compactions=${compactions} (at start ${compactionsAtStart})`)
      }
      // The fallback bounds every policy: the round ends by `target` acks (or 1.5x that).
      st.onAck = () => {
        if (policy === 'acks' && st.acked >= target) kill(`${target} acks`)
        else if (policy === 'time' && timer === undefined && st.acked >= target / 2) timer = setTimeout(() => kill(`${delayMs} ms after ${st.acked} acks`), delayMs)
        else if (st.acked >= target * 1.5) kill(`fallback at ${Math.round(target * 1.5)} acks`)
      }
      // 'time' kills at a moment unrelated to any answer: a random delay once half the target is in.
      let timer: NodeJS.Timeout | undefined
      const roundStart = performance.now()

      // /metrics is read every few answers (more often when the kill waits for a compaction), one
      // read at a time: paced by the writes rather than by a timer, and never hogging the node.
      const monitorClient = e2e.client(node.url, e2e.agent(1))
      const every = policy === 'compacting' ? 4 : 40
      let polling: Promise<void> = Promise.resolve()
      let busy = false
      let pollError: unknown = null
      const poll = () => {
        if (busy || st.killed) return
        busy = true
        polling = monitorClient.metrics().then(
          (m) => {
            busy = false
            compacting = m.get('speedlayer_storage_compacting') ?? 0
            compactions = m.get('speedlayer_storage_compactions_total') ?? 0
            if (compactionsAtStart < 0) compactionsAtStart = compactions
            if (policy === 'compacting' && compacting === 1) kill('compacting seen')
          },
          (err: unknown) => {
            busy = false
            if (!st.killed) {
              pollError = err
              kill('/metrics failed')
            }
          },
        )
      }
      const onAck = st.onAck
      st.onAck = () => {
        if (st.acked % every === 0) poll()
        onAck()
      }

      const clients = Array.from({ length: CLIENTS }, (_, i) => {
        const cg = prng.create(prng.uint32(gen, 1, 2 ** 31))
        return clientLoop(e2e.client(node!.url, e2e.agent(1)), cg, i, round, counters, x, st)
      })
      const results = await Promise.allSettled(clients)
      clearTimeout(timer)
      await polling
      const failed = results.find((r): r is PromiseRejectedResult => r.status === 'rejected')
      if (failed) {
        if (!st.killed) kill('a client failed')
        throw failed.reason
      }
      if (pollError) throw pollError
      const exit = await child.exited
      if (exit.signal !== 'SIGKILL') throw new Error(`the node was not killed by SIGKILL: ${JSON.stringify(exit)}\n${child.describe()}`)
      if (child.stderr.includes(STACK_FRAME)) throw new Error(`the node printed a stack trace\n${child.describe()}`)
      totalAcked += st.acked
      totalMaybe += st.maybe
      log[log.length - 1] += `; ${st.maybe} in flight; ${Math.round(performance.now() - roundStart)} ms`
    }

    // The last kill, verified once more, then a clean stop.
    node = await e2e.start({ id: 'crashy', data, args: ['--views', viewsFile] })
    const problems = await verify(e2e.client(node.url, e2e.agent(2)), x)
    if (problems.length > 0) throw new Error(`after the last restart: ${problems.length} problems:\n  ${problems.slice(0, 20).join('\n  ')}`)
    node.child.signal('SIGTERM')
    const exit = await node.child.waitExit()
    if (exit.code !== 0) throw new Error(`SIGTERM after the crash rounds exited ${JSON.stringify(exit)}\n${node.child.describe()}`)

    expect(kills, 'kills').toBeGreaterThanOrEqual(MIN_KILLS)
    expect(totalAcked, 'acknowledged writes').toBeGreaterThanOrEqual(MIN_ACKED)
    expect(killsWhileCompacting + killsAfterCompaction, 'kills while compaction ran or after it had run').toBeGreaterThan(0)
    if (process.env.CRASH_VERBOSE) {
      console.log(`seed ${seed}: ${kills} kills, ${totalAcked} acked, ${totalMaybe} in flight, ${killsWhileCompacting} while compacting, ${killsAfterCompaction} after compaction, ${Math.round(performance.now() - t0)} ms\n${log.join('\n')}`)
    }
  } catch (err) {
    const e = err instanceof Error ? err : new Error(String(err))
    e.message =
      `crash test failed with SEED=${seed} (replay the PRNG's choices: SEED=${seed} npx vitest run test/e2e/crash.test.ts)\n` +
      `${kills} kills, ${totalAcked} acknowledged, ${totalMaybe} in flight at kills\n${log.join('\n')}\n${e.message}` +
      (node ? `\n--- last node ---\n${node.child.describe()}` : '')
    throw e
  }
}, 120_000)
