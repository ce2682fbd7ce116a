/**
 * Serves the dashboard that Vite builds from demo/dashboard/ into dist/dashboard/ at every path
 * outside the API: files under /assets/ by name (their names carry a content hash, so they are
 * cached for good), anything else gets index.html (the page routes itself). The files are read
 * once and kept in memory with their gzip form: the whole bundle is a few hundred KB.
 *
 * Without a build (a checkout where `npm run build` has not run), a small page says so and what
 * the node holds, instead of a blank answer.
 */
import { existsSync, readdirSync, readFileSync, statSync } from 'node:fs'
import { dirname, extname, join, relative, sep } from 'node:path'
import { fileURLToPath } from 'node:url'
import { gzipSync } from 'node:zlib'
import type http from 'node:http'
import type { SpeedNode } from '../node.js'

const TYPES: Record<string, string> = {
  '.html': 'text/html; charset=utf-8',
  '.js': 'text/javascript; charset=utf-8',
  '.css': 'text/css; charset=utf-8',
  '.svg': 'image/svg+xml',
  '.png': 'image/png',
  '.ico': 'image/x-icon',
  '.json': 'application/json; charset=utf-8',
  '.map': 'application/json; charset=utf-8',
  '.txt': 'text/plain; charset=utf-8',
}

interface Asset {
  type: string
  body: Buffer
  gzip: Buffer | null
  immutable: boolean
}

/** Where the build lands, seen from dist/src/server (compiled) or src/server (tests on sources). */
export function dashboardDir(): string | null {
  const here = dirname(fileURLToPath(import.meta.url))
  for (const dir of [join(here, '..', '..', 'dashboard'), join(here, '..', '..', 'dist', 'dashboard')]) {
    if (existsSync(join(dir, 'index.html'))) return dir
  }
  return null
}

function load(dir: string): Map<string, Asset> {
  const out = new Map<string, Asset>()
  const walk = (d: string) => {
    for (const name of readdirSync(d)) {
      const path = join(d, name)
      if (statSync(path).isDirectory()) {
        walk(path)
        continue
      }
      const rel = '/' + relative(dir, path).split(sep).join('/')
      const type = TYPES[extname(name)] ?? 'application/octet-stream'
      const body = readFileSync(path)
      const compressible = /^(text|application\/json|image\/svg)/.test(type) && body.length > 512
      out.set(rel, { type, body, gzip: compressible ? gzipSync(body, { level: 9 }) : null, immutable: rel.startsWith('/assets/') })
    }
  }
  walk(dir)
  return out
}

export interface Dashboard {
  /** Answers a GET outside the API. */
  serve(req: http.IncomingMessage, res: http.ServerResponse, path: string): void
  readonly built: boolean
}

export function createDashboard(node: SpeedNode, dir: string | null = dashboardDir()): Dashboard {
  let assets: Map<string, Asset> | null = null
  const files = () => (assets ??= dir ? load(dir) : new Map())
  return {
    built: dir !== null,
    serve(req, res, path) {
      const map = files()
      const index = map.get('/index.html')
      if (!index) {
        const page = fallbackPage(node)
        res.writeHead(200, { 'content-type': 'text/html; charset=utf-8', 'content-length': Buffer.byteLength(page), 'cache-control': 'no-store' })
        res.end(page)
        return
      }
      let asset = map.get(path)
      if (!asset) {
        if (path.startsWith('/assets/')) {
          const text = 'no such dashboard file'
          res.writeHead(404, { 'content-type': 'text/plain; charset=utf-8', 'content-length': text.length })
          res.end(text)
          return
        }
        asset = index
      }
      const gz = asset.gzip !== null && /\bgzip\b/.test(String(req.headers['accept-encoding'] ?? ''))
      const body = gz ? (asset.gzip as Buffer) : asset.body
      const headers: Record<string, string | number> = {
        'content-type': asset.type,
        'content-length': body.length,
        'cache-control': asset.immutable ? 'public, max-age=31536000, immutable' : 'no-cache',
        'x-content-type-options': 'nosniff',
        vary: 'accept-encoding',
      }
      if (gz) headers['content-encoding'] = 'gzip'
      res.writeHead(200, headers)
      res.end(body)
    },
  }
}

const esc = (s: string) => s.replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`)

/** What a node shows when the dashboard was not built: what it holds and how to build the rest. */
export function fallbackPage(node: SpeedNode): string {
  const rows = node
    .views()
    .map((v) => `<tr><td><a href="/views/${encodeURIComponent(v.name)}">${esc(v.name)}</a></td><td>${esc(v.type)}</td><td>${v.keys}</td></tr>`)
    .join('')
  return `<!doctype html><html lang="en"><head><meta charset="utf-8"><title>speedlayer ${esc(node.id)}</title>
<style>body{font:15px system-ui,sans-serif;margin:2rem;color:#222}table{border-collapse:collapse}td,th{padding:.3rem .8rem;border-bottom:1px solid #ddd;text-align:left}</style></head>
<body><h1>speedlayer <small>${esc(node.id)}</small></h1>
<p>The dashboard is not built: run <code>npm run build</code> in the checkout. API: <a href="/health">/health</a>, <a href="/views">/views</a>, <a href="/metrics">/metrics</a>.</p>
<table><thead><tr><th>view</th><th>type</th><th>keys</th></tr></thead><tbody>${rows || '<tr><td colspan="3">no views yet: PUT /views/NAME {"type": "gcounter"}</td></tr>'}</tbody></table>
</body></html>`
}
