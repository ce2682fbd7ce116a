/**
 * Document names. A y-websocket client puts the room name after the server URL as it is
 * (`ws://HOST:PORT/yjs` + "/" + room), so the name is the rest of the path after `/yjs/`,
 * percent-decoded; like a view key it is 1 to 1024 UTF-8 bytes of valid Unicode.
 */
import { checkName } from '../store/definition.js'

export const DOC_NAME_MAX_BYTES = 1024

/** Why `name` cannot name a document, or null if it can. */
export function checkDocName(name: string): string | null {
  return checkName(name, 'the document name')
}

/** The document name of an upgrade path (`/yjs/NAME`, without the query), or an error text. */
export function docNameFromPath(path: string): { name: string } | { error: string } {
  if (!path.startsWith('/yjs/')) return { error: 'not a /yjs/ path' }
  let name: string
  try {
    name = decodeURIComponent(path.slice(5))
  } catch {
    return { error: 'the document name has a malformed percent escape or invalid UTF-8' }
  }
  const bad = checkDocName(name)
  return bad ? { error: bad } : { name }
}
