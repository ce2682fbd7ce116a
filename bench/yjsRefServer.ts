/**
 * The reference y-websocket server for bench/yjs.ts, as a child process: `@y/websocket-server`
 * 0.1.1's `setupWSConnection` (in memory, as its own server runs without YPERSISTENCE) behind the
 * same URL shape as a speedlayer node (`ws://HOST:PORT/yjs/DOCNAME`). Prints
 * `listening on http://127.0.0.1:PORT` once it accepts connections; SIGTERM ends it.
 */
import http from 'node:http'
import type { AddressInfo } from 'node:net'
import { WebSocketServer } from 'ws'
import { setupWSConnection } from '@y/websocket-server/utils'

const wss = new WebSocketServer({ noServer: true })
const server = http.createServer((_req, res) => {
  res.writeHead(404)
  res.end()
})
server.on('upgrade', (req, socket, head) => {
  const path = (req.url ?? '/').split('?')[0] as string
  const docName = decodeURIComponent(path.replace(/^\/yjs\//, ''))
  wss.handleUpgrade(req, socket, head, (ws) => setupWSConnection(ws, req, { docName }))
})
server.listen(0, '127.0.0.1', () => {
  process.stdout.write(`listening on http://127.0.0.1:${(server.address() as AddressInfo).port}\n`)
})
process.on('SIGTERM', () => process.exit(0))
