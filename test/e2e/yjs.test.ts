/**
 * Yjs documents in real `speedlayer start` processes: a node restarted after SIGTERM, and again
 * after `kill -9`, serves the full document to a new stock y-websocket client; an edit another
 * client has seen survives a `kill -9` in the middle of a stream of edits.
 */
import { afterEach, describe, expect, it } from 'vitest'
import { E2E } from './helpers.js'
import { content, synced, until, yClient, type YClient } from '../yjs/helpers.js'

const e2e = new E2E()
const clients: YClient[] = []
afterEach(async () => {
  for (const c of clients.splice(0)) c.close()
  await e2e.cleanup()
})

function client(url: string, room: string): YClient {
  const c = yClient(url, room)
  clients.push(c)
  return c
}

function drop(c: YClient): void {
  c.close()
  clients.splice(clients.indexOf(c), 1)
}

describe('Yjs documents survive restarts', () => {
  it('after SIGTERM and after kill -9, a new client gets the full document', async () => {
    const data = await e2e.tempDir()
    let n = await e2e.start({ id: 'y1', data })
    const writer = client(n.url, 'doc')
    const watcher = client(n.url, 'doc')
    await Promise.all([synced(writer), synced(watcher)])
    writer.text.insert(0, 'before SIGTERM.')
    writer.map.set('phase', 1)
    writer.map.set('list', [1, 2, 3])
    await until([watcher.doc], () => watcher.text.toString() === 'before SIGTERM.' && watcher.map.get('phase') === 1, 'the watcher seeing the edits')
    const expected1 = content(writer)
    drop(writer)
    drop(watcher)

    expect(n.child.signal('SIGTERM')).toBe(true)
    expect(await n.child.waitExit()).toEqual({ code: 0, signal: null })

    n = await e2e.start({ id: 'y1', data })
    const fresh = client(n.url, 'doc')
    await synced(fresh)
    await until([fresh.doc], () => JSON.stringify(content(fresh)) === JSON.stringify(expected1), 'the full document after SIGTERM')
    fresh.text.insert(fresh.text.length, ' after SIGTERM.')
    fresh.map.set('phase', 2)
    const watcher2 = client(n.url, 'doc')
    await synced(watcher2)
    await until([watcher2.doc], () => watcher2.map.get('phase') === 2 && watcher2.text.toString().endsWith('after SIGTERM.'), 'the watcher seeing the new edits')
    const expected2 = content(fresh)
    drop(fresh)
    drop(watcher2)

    await n.child.kill9()
    n = await e2e.start({ id: 'y1', data })
    const afterKill = client(n.url, 'doc')
    await synced(afterKill)
    await until([afterKill.doc], () => JSON.stringify(content(afterKill)) === JSON.stringify(expected2), 'the full document after kill -9')
    const list = (await (await fetch(n.url + '/yjs')).json()) as Array<{ name: string }>
    expect(list.map((d) => d.name)).toEqual(['doc'])
  })

  it('an edit another client has seen survives a kill -9 in the middle of a stream of edits', async () => {
    const data = await e2e.tempDir()
    // --fsync: each batch takes a while on disk, so an edit shown before it is durable would be caught.
    let n = await e2e.start({ id: 'y2', data, args: ['--fsync'] })
    const writer = client(n.url, 'stream')
    const watcher = client(n.url, 'stream')
    await Promise.all([synced(writer), synced(watcher)])
    let seen = ''
    watcher.doc.on('update', () => {
      seen = watcher.text.toString()
    })
    // The writer appends as fast as it can; the watcher's view is what others have seen.
    let i = 0
    const typing = setInterval(() => {
      for (let k = 0; k < 20; k++) writer.text.insert(writer.text.length, `${i++},`)
    }, 1)
    try {
      await until([watcher.doc], () => seen.length > 2000, 'the watcher seeing a good part of the stream', 10_000)
      await n.child.kill9()
    } finally {
      clearInterval(typing)
    }
    const lastSeen = seen
    drop(writer)
    drop(watcher)
    n = await e2e.start({ id: 'y2', data })
    const after = client(n.url, 'stream')
    await synced(after)
    await until([after.doc], () => after.text.length >= lastSeen.length, 'the recovered document')
    expect(after.text.toString().startsWith(lastSeen)).toBe(true)
  })
})
