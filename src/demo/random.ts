/**
 * Seeded randomness for the demo's traffic: a small PRNG (so a run can be replayed with
 * SPEEDLAYER_DEMO_SEED) and samplers over weighted and Zipf-distributed choices.
 */

/** mulberry32: 32 bits of state, fast, good enough for synthetic traffic (not for crypto). */
export function prng(seed: number): () => number {
  let a = seed >>> 0
  return () => {
    a = (a + 0x6d2b79f5) >>> 0
    let t = a
    t = Math.imul(t ^ (t >>> 15), t | 1)
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61)
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296
  }
}

/** Picks an index with probability proportional to its weight: O(log n) over a cumulative table. */
export class WeightedSampler {
  private readonly cdf: Float64Array

  constructor(weights: readonly number[]) {
    if (weights.length === 0) throw new Error('a sampler needs at least one weight')
    this.cdf = new Float64Array(weights.length)
    let total = 0
    for (let i = 0; i < weights.length; i++) {
      total += weights[i] as number
      this.cdf[i] = total
    }
    for (let i = 0; i < this.cdf.length; i++) (this.cdf as Float64Array)[i] = (this.cdf[i] as number) / total
  }

  get size(): number {
    return this.cdf.length
  }

  /** `u` uniform in [0, 1). */
  pick(u: number): number {
    let lo = 0
    let hi = this.cdf.length - 1
    while (lo < hi) {
      const mid = (lo + hi) >> 1
      if ((this.cdf[mid] as number) > u) hi = mid
      else lo = mid + 1
    }
    return lo
  }
}

/** Zipf over n ranks: rank r (0-based) with weight 1/(r+1)^s, as page and user popularity are. */
export function zipfSampler(n: number, s: number): WeightedSampler {
  const w: number[] = []
  for (let r = 0; r < n; r++) w.push(1 / (r + 1) ** s)
  return new WeightedSampler(w)
}

/** A stable 32-bit hash of a string (FNV-1a): fixed traits per user without storing them. */
export function hash32(text: string): number {
  let h = 0x811c9dc5
  for (let i = 0; i < text.length; i++) {
    h ^= text.charCodeAt(i)
    h = Math.imul(h, 0x01000193)
  }
  return h >>> 0
}
