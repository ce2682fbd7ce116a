/** Parsers for the CLI's human-friendly values; each throws a UsageError saying what was expected. */

export class UsageError extends Error {
  override readonly name = 'UsageError'
}

/** A command that ran and failed for a reason the user can act on: one line, exit status 1. */
export class CommandError extends Error {
  override readonly name = 'CommandError'
}

const SIZE_UNITS: Record<string, number> = { '': 1, b: 1, kb: 1e3, mb: 1e6, gb: 1e9, kib: 1024, mib: 1024 ** 2, gib: 1024 ** 3 }

/** "1MiB", "512KiB", "2MB", "4096" -> bytes. */
export function parseSize(flag: string, raw: string): number {
  const m = /^([0-9]+(?:\.[0-9]+)?)\s*([a-zA-Z]*)$/.exec(raw.trim())
  const unit = m ? SIZE_UNITS[(m[2] as string).toLowerCase()] : undefined
  if (!m || unit === undefined) throw new UsageError(`${flag} expects a size such as 1MiB, 512KiB or 1048576, got "${raw}"`)
  const n = Math.floor(Number(m[1]) * unit)
  if (n < 1 || !Number.isSafeInteger(n)) throw new UsageError(`${flag} must be at least 1 byte, got "${raw}"`)
  return n
}

const DURATION_UNITS: Record<string, number> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000 }

/** "60s", "500ms", "2m" -> milliseconds. */
export function parseDuration(flag: string, raw: string): number {
  const m = /^([0-9]+(?:\.[0-9]+)?)(ms|s|m|h)$/.exec(raw.trim())
  if (!m) throw new UsageError(`${flag} expects a duration such as 60s, 500ms or 2m, got "${raw}"`)
  return Math.round(Number(m[1]) * (DURATION_UNITS[m[2] as string] as number))
}

export function parsePort(flag: string, raw: string): number {
  if (!/^[0-9]{1,5}$/.test(raw) || Number(raw) > 65535) throw new UsageError(`${flag} expects a port number from 0 to 65535, got "${raw}"`)
  return Number(raw)
}

export function parsePeerUrls(raw: string): string[] {
  const urls = raw
    .split(',')
    .map((s) => s.trim())
    .filter((s) => s.length > 0)
  for (const u of urls) {
    let url: URL
    try {
      url = new URL(u)
    } catch {
      throw new UsageError(`--peers expects ws:// URLs such as ws://127.0.0.1:7002/peer, got "${u}"`)
    }
    if (url.protocol !== 'ws:' && url.protocol !== 'wss:') throw new UsageError(`--peers expects ws:// URLs such as ws://127.0.0.1:7002/peer, got "${u}"`)
  }
  return urls
}
