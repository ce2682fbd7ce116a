/** Small HTTP client pieces shared by `speedlayer query` and `speedlayer batch`. */
import http from 'node:http'
import https from 'node:https'
import type { Readable } from 'node:stream'
import { CommandError, UsageError } from './parse.js'

export interface Answer {
  status: number
  text: string
}

/** Checks --url and returns it without a trailing slash. */
export function nodeUrl(raw: string | undefined, usage: string): string {
  if (!raw) throw new UsageError(`--url is required (the node, e.g. --url http://127.0.0.1:7001)\n${usage}`)
  let url: URL
  try {
    url = new URL(raw)
  } catch {
    throw new UsageError(`--url expects an http:// URL such as http://127.0.0.1:7001, got "${raw}"`)
  }
  if (url.protocol !== 'http:' && url.protocol !== 'https:') throw new UsageError(`--url expects an http:// URL such as http://127.0.0.1:7001, got "${raw}"`)
  return url.href.replace(/\/+$/, '')
}

function networkError(base: string, err: Error): CommandError {
  const code = (err as NodeJS.ErrnoException).code
  if (code === 'ECONNREFUSED' || code === 'ENOTFOUND' || code === 'EHOSTUNREACH' || code === 'ETIMEDOUT' || code === 'EAI_AGAIN') {
    return new CommandError(`cannot reach the node at ${base} (${code}); is it running?`)
  }
  return new CommandError(`the connection to ${base} failed: ${code ?? err.message}`)
}

/**
 * One request; `body` is streamed when given (`onSent` is told the bytes as they go). Resolves
 * with the answer, even one that comes before the body is complete (the node refused it early).
 */
export function requestText(base: string, method: string, path: string, token: string | undefined, body?: Readable, onSent?: (bytes: number) => void, contentType = 'application/x-ndjson'): Promise<Answer> {
  const target = new URL(`${base}${path}`)
  const headers: Record<string, string> = {}
  if (token !== undefined) headers.authorization = `Bearer ${token}`
  if (body !== undefined) headers['content-type'] = contentType
  const request = target.protocol === 'https:' ? https.request : http.request
  return new Promise<Answer>((resolve, reject) => {
    const req = request(target, { method, headers })
    let answered = false
    req.on('response', (res) => {
      answered = true
      const parts: Buffer[] = []
      res.on('data', (c: Buffer) => parts.push(c))
      res.on('end', () => {
        resolve({ status: res.statusCode ?? 0, text: Buffer.concat(parts).toString('utf8') })
        // The node answered before the body was complete: what is unsent is not wanted.
        if (body !== undefined && !req.writableFinished) {
          body.unpipe(req)
          body.destroy()
          req.destroy()
        }
      })
      res.on('error', (err) => reject(networkError(base, err)))
    })
    req.on('error', (err) => {
      if (!answered) reject(networkError(base, err))
    })
    if (body === undefined) {
      req.end()
      return
    }
    body.on('data', (c: Buffer) => onSent?.(c.length))
    body.on('error', (err) => {
      req.destroy()
      reject(new CommandError(`cannot read the input: ${(err as NodeJS.ErrnoException).code ?? err.message}`))
    })
    body.pipe(req)
  })
}

/** The node's error answer as one line. */
export function refusal(a: Answer, what: string): CommandError {
  let code = ''
  let message = a.text.trim().slice(0, 300) || `HTTP ${a.status}`
  try {
    const j = JSON.parse(a.text) as { error?: { code?: unknown; message?: unknown } }
    if (typeof j.error?.message === 'string') {
      code = String(j.error.code ?? '')
      message = j.error.message
    }
  } catch {
    // Not the node's JSON: a proxy, or not a speedlayer node at all.
  }
  const hint = a.status === 401 ? ' (pass --token TOKEN)' : ''
  return new CommandError(`${what}: the node answered HTTP ${a.status}${code ? ` ${code}` : ''}: ${message}${hint}`)
}
