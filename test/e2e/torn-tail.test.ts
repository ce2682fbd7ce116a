/**
 * A torn tail (CONTRACT.md, "Durability"; src/storage/engine.ts, recovery): the last record of the
 * delta log may be torn by a crash and is then reported and skipped; a corrupt record anywhere
 * else means the directory cannot be trusted, and the node refuses to start (one line on
 * stderr) rather than silently skipping acknowledged writes. The records are damaged through
 * classic-level while the node is stopped, as a crash or a bad disk would leave them.
 */
import path from 'node:path'
import { ClassicLevel } from 'classic-level'
import { afterEach, describe, expect, it } from 'vitest'
import { E2E, STACK_FRAME, lines, type Child } from './helpers.js'

const e2e = new E2E()
afterEach(() => e2e.cleanup())

/** The delta log's region: keys 'l' + u64be position (docs/storage.md). */
const LOG_PREFIX = 0x6c

type Db = ClassicLevel<Uint8Array, Uint8Array>

async function withDb<T>(dir: string, fn: (db: Db) => Promise<T>): Promise<T> {
  const db: Db = new ClassicLevel<Uint8Array, Uint8Array>(dir, { keyEncoding: 'view', valueEncoding: 'view' })
  await db.open({ createIfMissing: false })
  try {
    return await fn(db)
  } finally {
    await db.close()
  }
}

/** Every log record, first to last. */
async function logRecords(db: Db): Promise<Array<[Uint8Array, Uint8Array]>> {
  return db.iterator({ gte: Uint8Array.of(LOG_PREFIX), lt: Uint8Array.of(LOG_PREFIX + 1) }).all()
}

function positionOf(key: Uint8Array): number {
  const view = new DataView(key.buffer, key.byteOffset, key.byteLength)
  return view.getUint32(1) * 2 ** 32 + view.getUint32(5)
}

const damage: Record<string, (value: Uint8Array) => Uint8Array> = {
  // A write cut short: the first half of the record.
  'cut short': (v) => v.slice(0, Math.max(1, v.length >> 1)),
  // Garbage of the same length behind a plausible version byte, so only the checksum can tell.
  'replaced by garbage': (v) => {
    const out = new Uint8Array(v.length)
    for (let i = 0; i < out.length; i++) out[i] = (i * 151 + 89) & 0xff
    out[0] = v[0] as number
    return out
  },
  // One bit flipped in the body.
  'with one bit flipped': (v) => {
    const out = Uint8Array.from(v)
    const i = out.length - 1
    out[i] = (out[i] as number) ^ 0x10
    return out
  },
  emptied: () => new Uint8Array(0),
}

/** A stopped node's DIR with views and one log record per write (each write awaited in turn). */
async function prepare(): Promise<{ data: string; writes: number }> {
  const data = path.join(await e2e.tempDir(), 'data')
  const node = await e2e.start({ id: 'n1', data })
  const c = e2e.client(node.url)
  await c.expect(201, 'PUT', '/views/hits', { type: 'gcounter' })
  await c.expect(201, 'PUT', '/views/tags', { type: 'orset' })
  await c.expect(201, 'PUT', '/views/profile', { type: 'lwwmap' })
  let writes = 0
  const post = async (p: string, op: unknown) => {
    await c.expect(200, 'POST', p, op)
    writes++
  }
  for (let i = 1; i <= 5; i++) await post('/views/hits/a', { inc: i })
  await post('/views/tags/t', { add: ['x', 'y'] })
  await post('/views/tags/t', { remove: 'y' })
  await post('/views/profile/u', { set: { name: 'Ada', city: 'London' }, ts: 1000 })
  await post('/views/profile/u', { delete: ['city'], ts: 1001 })
  await post('/views/hits/last', { inc: 1 })
  node.child.signal('SIGTERM')
  expect(await node.child.waitExit(), node.child.describe()).toEqual({ code: 0, signal: null })
  return { data, writes }
}

/**
 * A clean recovery prints nothing about the log; to check that nothing was printed, first wait
 * for the line that ends recovery (src/cli/start.ts), which comes after any warning of it.
 */
function recoveryLogged(child: Child): Promise<void> {
  return child.waitFor('the recovery line', () => /recovered/.test(child.stderr))
}

async function expectEarlierValues(url: string): Promise<void> {
  const c = e2e.client(url)
  expect(await c.value('hits', 'a')).toBe(15)
  expect(await c.value('tags', 't')).toEqual(['x'])
  expect(await c.value('profile', 'u')).toEqual({ name: 'Ada' })
}

describe('a damaged delta log', () => {
  for (const [how, corrupt] of Object.entries(damage)) {
    it(`the last record ${how}: reported on stderr and skipped; every earlier value is intact`, async () => {
      const { data, writes } = await prepare()
      const torn = await withDb(data, async (db) => {
        const records = await logRecords(db)
        // Each acknowledged write above was its own group commit.
        expect(records.length).toBeGreaterThanOrEqual(writes)
        const [key, value] = records[records.length - 1] as [Uint8Array, Uint8Array]
        await db.put(key, corrupt(value))
        return positionOf(key)
      })

      const node = await e2e.start({ id: 'n1', data })
      // stderr and stdout are separate pipes: the warning, written first, may be read second.
      await node.child.waitFor('the torn-record warning', () => /torn|corrupt/i.test(node.child.stderr))
      const warnings = lines(node.child.stderr).filter((l) => /torn|corrupt/i.test(l))
      expect(warnings, node.child.stderr).toHaveLength(1)
      expect(warnings[0]).toContain(String(torn))
      expect(node.child.stderr).not.toContain(STACK_FRAME)
      await expectEarlierValues(node.url)
      // The torn record held the last write only.
      const c = e2e.client(node.url)
      expect(await c.value('hits', 'last')).toBe(0)

      // The node goes on from there, and the next start finds a clean log.
      expect(await c.expect(200, 'POST', '/views/hits/last', { inc: 2 })).toEqual({ value: 2 })
      node.child.signal('SIGTERM')
      expect((await node.child.waitExit()).code).toBe(0)
      const again = await e2e.start({ id: 'n1', data })
      await recoveryLogged(again.child)
      expect(again.child.stderr).not.toMatch(/torn|corrupt/i)
      await expectEarlierValues(again.url)
      expect(await e2e.client(again.url).value('hits', 'last')).toBe(2)
    })
  }

  it('a corrupt record that is not the last makes start fail with one clear line, and damages nothing', async () => {
    const { data } = await prepare()
    const { key, original, position } = await withDb(data, async (db) => {
      const records = await logRecords(db)
      const [key, value] = records[records.length - 2] as [Uint8Array, Uint8Array]
      await db.put(key, (damage['replaced by garbage'] as (v: Uint8Array) => Uint8Array)(value))
      return { key, original: value, position: positionOf(key) }
    })

    for (let attempt = 0; attempt < 2; attempt++) {
      const r = await e2e.run(['start', '--id', 'n1', '--port', '0', '--data', data])
      const ctx = `stdout: ${JSON.stringify(r.stdout)}\nstderr: ${JSON.stringify(r.stderr)}`
      expect(r.exit.code, ctx).not.toBe(0)
      expect(r.exit.signal, ctx).toBeNull()
      expect(r.stdout, ctx).toBe('')
      expect(lines(r.stderr), ctx).toHaveLength(1)
      expect(r.stderr, ctx).not.toContain(STACK_FRAME)
      expect(r.stderr, ctx).toMatch(/corrupt/i)
      expect(r.stderr, ctx).toContain(String(position))
    }

    // The refused starts deleted nothing: with the record repaired, every write is back.
    await withDb(data, (db) => db.put(key, original))
    const node = await e2e.start({ id: 'n1', data })
    await recoveryLogged(node.child)
    expect(node.child.stderr).not.toMatch(/torn|corrupt/i)
    await expectEarlierValues(node.url)
    expect(await e2e.client(node.url).value('hits', 'last')).toBe(1)
  })
})
