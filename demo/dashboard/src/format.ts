/** Number, byte and time formats: short, fixed, readable at a glance. */
const intFmt = new Intl.NumberFormat('en-US', { maximumFractionDigits: 0 })

export const fmtInt = (n: number): string => intFmt.format(n)

export function fmtCompact(n: number): string {
  if (Math.abs(n) < 10_000) return intFmt.format(n)
  if (Math.abs(n) < 1e6) return `${(n / 1e3).toFixed(1)}k`
  return `${(n / 1e6).toFixed(2)}M`
}

export function fmtBytes(n: number): string {
  if (n < 1024) return `${n} B`
  const units = ['KB', 'MB', 'GB', 'TB']
  let v = n / 1024
  let i = 0
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024
    i++
  }
  return `${v.toFixed(v < 10 ? 1 : 0)} ${units[i]}`
}

export function fmtMs(ms: number): string {
  if (ms === 0) return '0 ms'
  if (ms < 1) return `${ms.toFixed(2)} ms`
  if (ms < 1000) return `${ms.toFixed(ms < 10 ? 1 : 0)} ms`
  if (ms < 60_000) return `${(ms / 1000).toFixed(1)} s`
  return `${Math.round(ms / 60_000)} min`
}

const two = (n: number) => String(n).padStart(2, '0')

/** Local wall-clock HH:MM of a bucket start. */
export function fmtClock(ms: number, seconds = false): string {
  const d = new Date(ms)
  return seconds ? `${two(d.getHours())}:${two(d.getMinutes())}:${two(d.getSeconds())}` : `${two(d.getHours())}:${two(d.getMinutes())}`
}

export function fmtPercent(x: number, digits = 1): string {
  return `${(x * 100).toFixed(digits)}%`
}
