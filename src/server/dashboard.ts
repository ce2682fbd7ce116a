/**
 * What a node serves at paths outside the API until the demo's dashboard (built with Vite) lands:
 * a small page that says what this node holds and where the API is.
 */
import type { SpeedNode } from '../node.js'

const esc = (s: string) => s.replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`)

export function dashboardPage(node: SpeedNode): string {
  const rows = node
    .views()
    .map((v) => `<tr><td><a href="/views/${encodeURIComponent(v.name)}">${esc(v.name)}</a></td><td>${esc(v.type)}</td><td>${v.keys}</td></tr>`)
    .join('')
  return `<!doctype html><html lang="en"><head><meta charset="utf-8"><title>speedlayer ${esc(node.id)}</title>
<style>body{font:15px system-ui,sans-serif;margin:2rem;color:#222}table{border-collapse:collapse}td,th{padding:.3rem .8rem;border-bottom:1px solid #ddd;text-align:left}</style></head>
<body><h1>speedlayer <small>${esc(node.id)}</small></h1>
<p>A realtime view store. API: <a href="/health">/health</a>, <a href="/views">/views</a>, <a href="/metrics">/metrics</a>.</p>
<table><thead><tr><th>view</th><th>type</th><th>keys</th></tr></thead><tbody>${rows || '<tr><td colspan="3">no views yet: PUT /views/NAME {"type": "gcounter"}</td></tr>'}</tbody></table>
</body></html>`
}
