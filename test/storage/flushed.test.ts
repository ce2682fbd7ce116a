/**
 * A barrier on the group commit (`flushed()`, and `close()` and compaction, which wait on the
 * same barrier) must resolve even when it is taken while a batch is being written and no other
 * write ever comes: an idle node must not hang its anti-entropy sends or its shutdown.
 */
import { describe, expect, it } from 'vitest'
import { ViewStore } from '../../src/store/viewStore.js'
import { Storage } from '../../src/storage/engine.js'
import { memoryAdapter } from '../../src/storage/memoryAdapter.js'
import type { StorageAdapter, WriteOp } from '../../src/storage/adapter.js'

/** A memory adapter whose writes wait until the test releases them. */
function gatedAdapter(): { adapter: StorageAdapter; writing: () => boolean; release: () => void } {
  const inner = memoryAdapter()
  let gate: (() => void) | null = null
  const adapter: StorageAdapter = {
    ...inner,
    async write(ops: WriteOp[], opts: { sync: boolean }) {
      await new Promise<void>((resolve) => (gate = resolve))
      gate = null
      return inner.write(ops, opts)
    },
  }
  return { adapter, writing: () => gate !== null, release: () => gate?.() }
}

const turn = () => new Promise<void>((resolve) => setImmediate(resolve))

async function inFlight() {
  const gated = gatedAdapter()
  const store = new ViewStore()
  const storage = new Storage(gated.adapter, store)
  store.define('g', { type: 'gcounter' }, { replica: 'a', time: { ts: 1, c: 0 } })
  const { view, delta } = store.apply('g', 'k', { inc: 1 }, { replica: 'a', time: { ts: 2, c: 0 } })
  const written = storage.append(view, 'k', delta, 'a', 1)
  while (!gated.writing()) await turn()
  return { storage, written, gated }
}

/** Settles `p` within a few event-loop turns, releasing every write the storage starts meanwhile. */
async function settlesSoon(p: Promise<void>, gated: { writing: () => boolean; release: () => void }): Promise<boolean> {
  let done = false
  void p.then(() => (done = true))
  for (let i = 0; i < 50 && !done; i++) {
    if (gated.writing()) gated.release()
    await turn()
  }
  return done
}

describe('barriers on the group commit', () => {
  it('flushed() taken while a batch is in flight resolves without another write', async () => {
    const { storage, written, gated } = await inFlight()
    const barrier = storage.flushed()
    expect(await settlesSoon(barrier, gated)).toBe(true)
    await written
    expect(storage.idle()).toBe(true)
  })

  it('close() called while a batch is in flight finishes', async () => {
    const { storage, written, gated } = await inFlight()
    expect(await settlesSoon(storage.close(), gated)).toBe(true)
    await written
  })
})
