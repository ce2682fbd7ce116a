/**
 * Which cross-origin pages may read this node's answers: the dashboards of its siblings. The
 * dashboard served by one node shows every node of the cluster and has buttons that cut and heal
 * their links, so it calls the other nodes' APIs from its own origin. Allowed: an http origin on
 * the same host as this node (another node on this machine, any port), or the HTTP address of a
 * peer this node dials (ws://HOST:PORT/peer -> http://HOST:PORT). Anything else gets no CORS
 * header, so a browser keeps the answer from that page. `--token` still guards the write routes.
 */
import type { PeerInfo } from '../replication/replicator.js'

function hostnameOf(hostHeader: string): string {
  // "[::1]:7001" -> "[::1]", "127.0.0.1:7001" -> "127.0.0.1"
  const m = /^(\[[^\]]*\]|[^:]*)(?::\d+)?$/.exec(hostHeader)
  return (m?.[1] ?? hostHeader).toLowerCase()
}

/** The peer URL's HTTP origin, or null when it is not a ws(s) URL. */
export function peerOrigin(url: string): string | null {
  try {
    const u = new URL(url)
    if (u.protocol !== 'ws:' && u.protocol !== 'wss:') return null
    return `${u.protocol === 'wss:' ? 'https:' : 'http:'}//${u.host}`
  } catch {
    return null
  }
}

/** The value for access-control-allow-origin, or null for none. */
export function corsOrigin(origin: string | undefined, host: string | undefined, peers: () => PeerInfo[]): string | null {
  if (origin === undefined || origin === 'null') return null
  let u: URL
  try {
    u = new URL(origin)
  } catch {
    return null
  }
  if (u.protocol !== 'http:' && u.protocol !== 'https:') return null
  if (host !== undefined && u.hostname.toLowerCase() === hostnameOf(host)) return origin
  for (const p of peers()) if (p.url !== null && peerOrigin(p.url) === u.origin) return origin
  return null
}
