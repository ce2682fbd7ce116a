/**
 * `speedlayer start` as a user runs it (CONTRACT.md, "CLI"): the ready line, SIGTERM/SIGINT,
 * the replica id and the lock on DIR, and one clear line (never a stack trace) for each way a
 * start can be refused.
 */
import http from 'node:http'
import { existsSync } from 'node:fs'
import { mkdir, writeFile } from 'node:fs/promises'
import path from 'node:path'
import { afterEach, describe, expect, it } from 'vitest'
import { E2E, STACK_FRAME, freePort, lines, type Exit } from './helpers.js'

const e2e = new E2E()
afterEach(() => e2e.cleanup())

/** A refused start: one line on stderr, nothing on stdout, a non-zero exit, no stack trace. */
function expectOneLineFailure(r: { exit: Exit; stdout: string; stderr: string }): string {
  const ctx = `stdout: ${JSON.stringify(r.stdout)}\nstderr: ${JSON.stringify(r.stderr)}`
  expect(r.exit.signal, ctx).toBeNull()
  expect(r.exit.code, ctx).not.toBe(0)
  expect(r.exit.code, ctx).not.toBeNull()
  expect(r.stdout, ctx).toBe('')
  expect(r.stderr, ctx).not.toContain(STACK_FRAME)
  expect(lines(r.stderr), ctx).toHaveLength(1)
  expect(r.stderr.endsWith('\n'), ctx).toBe(true)
  const line = lines(r.stderr)[0] as string
  expect(line.trim().length, ctx).toBeGreaterThan(10)
  // A message the CLI did not anticipate is still one line, but says "unexpected error".
  expect(line, ctx).not.toMatch(/unexpected error/i)
  return line
}

async function writeViewsFile(dir: string, content: string): Promise<string> {
  const file = path.join(dir, 'views.json')
  await writeFile(file, content)
  return file
}

describe('speedlayer start', () => {
  it('prints exactly the ready line on stdout and nothing else, from start to exit', async () => {
    const data = path.join(await e2e.tempDir(), 'data')
    const port = await freePort()
    const node = await e2e.start({ id: 'node1', data, port })
    expect(node.readyLine).toBe(`speedlayer node1 listening on http://127.0.0.1:${port}`)
    expect(node.url).toBe(`http://127.0.0.1:${port}`)

    // Requests of every kind, a 4xx among them: whatever the node logs goes to stderr.
    const c = e2e.client(node.url)
    expect(await c.get('/health')).toEqual({ ok: true, replica: 'node1' })
    await c.expect(201, 'PUT', '/views/hits', { type: 'gcounter' })
    await c.expect(200, 'POST', '/views/hits/home', { inc: 2 })
    await c.expect(400, 'POST', '/views/hits/home', { inc: -1 })
    await c.expect(404, 'GET', '/views/nope/k')
    await c.metrics()
    await c.request('GET', '/')

    expect(node.child.signal('SIGTERM')).toBe(true)
    const exit = await node.child.waitExit()
    expect(exit, node.child.describe()).toEqual({ code: 0, signal: null })
    expect(node.child.stdout).toBe(`speedlayer node1 listening on http://127.0.0.1:${port}\n`)
    expect(node.child.stderr).not.toContain(STACK_FRAME)
  })

  it('SIGTERM exits 0 and every acknowledged write is there after a restart', async () => {
    const data = path.join(await e2e.tempDir(), 'data')
    const first = await e2e.start({ id: 'n1', data })
    const c = e2e.client(first.url)
    await c.expect(201, 'PUT', '/views/hits', { type: 'gcounter' })
    await c.expect(201, 'PUT', '/views/tags', { type: 'orset' })
    await c.expect(201, 'PUT', '/views/profile', { type: 'lwwmap' })
    await Promise.all(Array.from({ length: 50 }, (_, i) => c.expect(200, 'POST', `/views/hits/k${i % 5}`, { inc: i })))
    await c.expect(200, 'POST', '/views/tags/t', { add: ['b', 'a', 'c'] })
    await c.expect(200, 'POST', '/views/tags/t', { remove: 'c' })
    await c.expect(200, 'POST', '/views/profile/u1', { set: { name: 'Ada', nil: null }, ts: 1000 })
    await c.expect(200, 'POST', '/views/profile/u1', { set: { name: 'older' }, ts: 999 })

    first.child.signal('SIGTERM')
    expect(await first.child.waitExit(), first.child.describe()).toEqual({ code: 0, signal: null })

    const second = await e2e.start({ id: 'n1', data })
    const c2 = e2e.client(second.url)
    for (let k = 0; k < 5; k++) {
      let sum = 0
      for (let i = k; i < 50; i += 5) sum += i
      expect(await c2.value('hits', `k${k}`)).toBe(sum)
    }
    expect(await c2.value('tags', 't')).toEqual(['a', 'b'])
    expect(await c2.value('profile', 'u1')).toEqual({ name: 'Ada', nil: null })
    const views = (await c2.get('/views')) as Array<{ name: string; type: string }>
    expect(views.map((v) => [v.name, v.type]).sort()).toEqual([
      ['hits', 'gcounter'],
      ['profile', 'lwwmap'],
      ['tags', 'orset'],
    ])
    second.child.signal('SIGINT')
    expect(await second.child.waitExit(), second.child.describe()).toEqual({ code: 0, signal: null })
  })

  it('a second SIGTERM/SIGINT during shutdown changes nothing: still exit 0, data intact', async () => {
    const data = path.join(await e2e.tempDir(), 'data')
    const node = await e2e.start({ id: 'n1', data })
    const c = e2e.client(node.url)
    await c.expect(201, 'PUT', '/views/hits', { type: 'gcounter' })
    await c.expect(200, 'POST', '/views/hits/a', { inc: 7 })

    // A request whose body is still on its way keeps the shutdown from finishing, so the
    // repeated signals below surely arrive while it is under way. "Expect: 100-continue" makes
    // the node say when it has the request (Node answers 100 once it has parsed the headers).
    const agent = e2e.agent(1)
    const body = JSON.stringify({ inc: 5 })
    let answer: { status: number; text: string } | Error | undefined
    const slow = http.request(`${node.url}/views/hits/b`, {
      method: 'POST',
      agent,
      headers: { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body), expect: '100-continue' },
    })
    const answered = new Promise<void>((resolve) => {
      slow.on('response', (res) => {
        let text = ''
        res.setEncoding('utf8')
        res.on('data', (s: string) => (text += s))
        res.on('end', () => {
          answer = { status: res.statusCode ?? 0, text }
          resolve()
        })
      })
      slow.on('error', (err) => {
        answer = err
        resolve()
      })
    })
    const continued = new Promise<void>((resolve) => slow.once('continue', resolve))
    slow.flushHeaders()
    await Promise.race([continued, answered])
    expect(answer, 'the node answered before the body was sent').toBeUndefined()
    slow.write(body.slice(0, 3))

    expect(node.child.signal('SIGTERM')).toBe(true)
    await node.child.waitFor('the shutdown to begin', () => /SIGTERM/.test(node.child.stderr))
    expect(node.child.running, node.child.describe()).toBe(true)
    expect(node.child.signal('SIGINT')).toBe(true)
    expect(node.child.signal('SIGTERM')).toBe(true)
    slow.end(body.slice(3))
    await answered

    const exit = await node.child.waitExit()
    expect(exit, node.child.describe()).toEqual({ code: 0, signal: null })
    expect(node.child.stderr).not.toContain(STACK_FRAME)
    // The shutdown ran once: one line about it, not one per signal.
    expect(lines(node.child.stderr).filter((l) => /SIG(TERM|INT)/.test(l)), node.child.stderr).toHaveLength(1)
    expect(node.child.stdout).toBe(`${node.readyLine}\n`)

    const again = await e2e.start({ id: 'n1', data })
    const c2 = e2e.client(again.url)
    expect(await c2.value('hits', 'a')).toBe(7)
    // The in-flight write either was acknowledged (then it is durable) or refused (then absent).
    const b = await c2.value('hits', 'b')
    if (answer instanceof Error || answer === undefined || answer.status !== 200) {
      expect(answer instanceof Error || (answer !== undefined && answer.status >= 500), String(answer instanceof Error ? answer.message : answer?.text)).toBe(true)
      expect([0, 5]).toContain(b)
    } else {
      expect(JSON.parse(answer.text)).toEqual({ value: 5 })
      expect(b).toBe(5)
    }
  })

  it('creates DIR (and its parents) when missing', async () => {
    const data = path.join(await e2e.tempDir(), 'a', 'b', 'c')
    expect(existsSync(data)).toBe(false)
    const node = await e2e.start({ id: 'n1', data })
    expect(existsSync(data)).toBe(true)
    await e2e.client(node.url).expect(201, 'PUT', '/views/x', { type: 'gcounter' })
    node.child.signal('SIGTERM')
    expect((await node.child.waitExit()).code).toBe(0)
  })

  it('--views FILE defines the views at start, and the same file is accepted again on restart', async () => {
    const tmp = await e2e.tempDir()
    const data = path.join(tmp, 'data')
    const defs = {
      pageviews: { type: 'gcounter' },
      visitors: { type: 'hll', ingest: { key: ['url'], value: 'user', bucket: { time: 'ts', size: '1h' } } },
      users: { type: 'lwwmap' },
    }
    const file = await writeViewsFile(tmp, JSON.stringify({ views: defs }))
    const node = await e2e.start({ id: 'n1', data, args: ['--views', file] })
    const c = e2e.client(node.url)
    const views = (await c.get('/views')) as Array<{ name: string }>
    const byName = Object.fromEntries(views.map(({ name, ...def }) => [name, def]))
    expect(byName).toEqual(defs)
    expect(await c.expect(200, 'POST', '/views/pageviews/home', { inc: 3 })).toEqual({ value: 3 })
    // The definitions are the node's own now: re-defining one identically is a 200, not a 201.
    await c.expect(200, 'PUT', '/views/pageviews', { type: 'gcounter' })
    await c.expect(409, 'PUT', '/views/pageviews', { type: 'pncounter' })
    node.child.signal('SIGTERM')
    expect((await node.child.waitExit()).code).toBe(0)

    const again = await e2e.start({ id: 'n1', data, args: ['--views', file] })
    const c2 = e2e.client(again.url)
    expect(await c2.value('pageviews', 'home')).toBe(3)
    expect(((await c2.get('/views')) as unknown[]).length).toBe(3)
  })

  it('refuses to start on a DIR of another replica id: one line on stderr, non-zero exit', async () => {
    const data = path.join(await e2e.tempDir(), 'data')
    const node = await e2e.start({ id: 'alpha', data })
    await e2e.client(node.url).expect(201, 'PUT', '/views/x', { type: 'gcounter' })
    node.child.signal('SIGTERM')
    expect((await node.child.waitExit()).code).toBe(0)

    const r = await e2e.run(['start', '--id', 'beta', '--port', '0', '--data', data])
    const line = expectOneLineFailure(r)
    expect(line).toContain('alpha')

    // Nothing was changed by the refused start: the owner starts again.
    const back = await e2e.start({ id: 'alpha', data })
    expect(((await e2e.client(back.url).get('/views')) as unknown[]).length).toBe(1)
  })

  it('refuses a DIR locked by a running node with one clear line, and the running node is unharmed', async () => {
    const data = path.join(await e2e.tempDir(), 'data')
    const node = await e2e.start({ id: 'n1', data })
    const c = e2e.client(node.url)
    await c.expect(201, 'PUT', '/views/x', { type: 'gcounter' })

    const r = await e2e.run(['start', '--id', 'n1', '--port', '0', '--data', data])
    const line = expectOneLineFailure(r)
    expect(line).toMatch(/in use|locked/i)
    expect(line).toContain(data)

    expect(await c.expect(200, 'POST', '/views/x/k', { inc: 1 })).toEqual({ value: 1 })
    expect(node.child.running).toBe(true)
  })

  it('a port in use is one clear line, and leaves DIR usable', async () => {
    const data = path.join(await e2e.tempDir(), 'data')
    const port = await e2e.holdPort()
    const r = await e2e.run(['start', '--id', 'n1', '--port', String(port), '--host', '127.0.0.1', '--data', data])
    const line = expectOneLineFailure(r)
    expect(line).toContain(String(port))
    expect(line).toMatch(/in use/i)
    // The failed start closed LevelDB (no stale lock) before it exited.
    const node = await e2e.start({ id: 'n1', data })
    expect(await e2e.client(node.url).get('/health')).toEqual({ ok: true, replica: 'n1' })
  })

  describe('bad flags and views files: one line on stderr, non-zero exit, no stack trace', () => {
    const cases: Array<[string, (tmp: string) => Promise<string[]>, RegExp]> = [
      ['an unknown flag', async (tmp) => ['--id', 'n1', '--port', '0', '--data', tmp, '--bogus', 'x'], /bogus/],
      ['an unknown boolean flag', async (tmp) => ['--id', 'n1', '--port', '0', '--data', tmp, '--fast'], /fast/],
      ['a positional argument', async (tmp) => ['--id', 'n1', '--port', '0', '--data', tmp, 'extra'], /extra|argument/],
      ['a missing --id', async (tmp) => ['--port', '0', '--data', tmp], /--id/],
      ['--id without a value', async (tmp) => ['--port', '0', '--data', tmp, '--id'], /--id/],
      ['an invalid --id', async (tmp) => ['--id', 'a/b', '--port', '0', '--data', tmp], /--id/],
      ['a missing --port', async (tmp) => ['--id', 'n1', '--data', tmp], /--port/],
      ['a missing --data', async () => ['--id', 'n1', '--port', '0'], /--data/],
      ['a port out of range', async (tmp) => ['--id', 'n1', '--port', '70000', '--data', tmp], /--port/],
      ['a port that is not a number', async (tmp) => ['--id', 'n1', '--port', 'http', '--data', tmp], /--port/],
      ['a negative port', async (tmp) => ['--id', 'n1', '--port=-1', '--data', tmp], /--port/],
      ['a bad --max-body', async (tmp) => ['--id', 'n1', '--port', '0', '--data', tmp, '--max-body', 'lots'], /--max-body/],
      ['a zero --max-body', async (tmp) => ['--id', 'n1', '--port', '0', '--data', tmp, '--max-body', '0'], /--max-body/],
      ['a bad --max-drift', async (tmp) => ['--id', 'n1', '--port', '0', '--data', tmp, '--max-drift', 'soon'], /--max-drift/],
      ['a bad --peers URL', async (tmp) => ['--id', 'n1', '--port', '0', '--data', tmp, '--peers', 'http://x:1/peer'], /--peers/],
      [
        'a views file that does not exist',
        async (tmp) => ['--id', 'n1', '--port', '0', '--data', tmp, '--views', path.join(tmp, 'missing.json')],
        /missing\.json/,
      ],
      [
        'a views file that is a directory',
        async (tmp) => {
          await mkdir(path.join(tmp, 'views.d'))
          return ['--id', 'n1', '--port', '0', '--data', path.join(tmp, 'data'), '--views', path.join(tmp, 'views.d')]
        },
        /views\.d/,
      ],
      [
        'a views file with invalid JSON',
        async (tmp) => ['--id', 'n1', '--port', '0', '--data', path.join(tmp, 'data'), '--views', await writeViewsFile(tmp, '{"views": {"a": ')],
        /JSON/,
      ],
      [
        'a views file of the wrong shape',
        async (tmp) => ['--id', 'n1', '--port', '0', '--data', path.join(tmp, 'data'), '--views', await writeViewsFile(tmp, '[{"name": "a", "type": "gcounter"}]')],
        /views/,
      ],
      [
        'a views file with an unknown type',
        async (tmp) => ['--id', 'n1', '--port', '0', '--data', path.join(tmp, 'data'), '--views', await writeViewsFile(tmp, '{"views": {"a": {"type": "gcounter"}, "b": {"type": "nope"}}}')],
        /nope|type/,
      ],
      [
        'a views file with an unknown field in a definition',
        async (tmp) => ['--id', 'n1', '--port', '0', '--data', path.join(tmp, 'data'), '--views', await writeViewsFile(tmp, '{"views": {"a": {"type": "orset", "colour": "red"}}}')],
        /colour/,
      ],
      [
        'a views file with a bad ingest rule',
        async (tmp) =>
          ['--id', 'n1', '--port', '0', '--data', path.join(tmp, 'data'), '--views', await writeViewsFile(tmp, '{"views": {"a": {"type": "hll", "ingest": {"key": ["u"], "bucket": {"time": "ts", "size": "1y"}}}}}')],
        /1y|bucket/,
      ],
      ['an unknown command', async () => ['--', 'frobnicate'], /frobnicate|command/],
    ]
    for (const [name, build, mentions] of cases) {
      // Each run is a short-lived process of its own: these run side by side, each with its own E2E.
      it.concurrent(name, async ({ expect }) => {
        const own = new E2E()
        try {
          const tmp = await own.tempDir()
          const args = await build(tmp)
          const r = await own.run(args[0] === '--' ? args.slice(1) : ['start', ...args])
          const line = expectOneLineFailure(r)
          expect(line).toMatch(mentions)
        } finally {
          await own.cleanup()
        }
      })
    }
  })
})
