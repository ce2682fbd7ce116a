/**
 * URLs of a node's API as the page calls them. A node started with --token wants the token on
 * writes (the cut and heal buttons) and, with --token-reads, on reads and /live too: open the
 * dashboard as http://HOST:PORT/?token=TOKEN and every call carries it as ?token= (a query
 * parameter rather than a header, so calls to sibling nodes stay simple CORS requests).
 */
const token = new URLSearchParams(location.search).get('token')

export function apiUrl(base: string, path: string): URL {
  const url = new URL(path, base)
  if (token !== null) url.searchParams.set('token', token)
  return url
}
