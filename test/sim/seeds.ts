/**
 * Seeds for simulation tests. `SEED=n` runs exactly that seed; otherwise a test runs
 * `SIM_SEEDS` (default 30) seeds counted up from its base. A failure names the seed and the
 * command that replays it alone.
 */
import path from 'node:path'
import { fileURLToPath } from 'node:url'

export const DEFAULT_SEED_COUNT = 30

export function parseSeed(raw: string, name: string): number {
  const n = Number(raw)
  if (!/^\d+$/.test(raw.trim()) || !Number.isSafeInteger(n) || n < 1 || n >= 2 ** 32) {
    throw new Error(`${name} must be an integer in [1, 2^32), got ${JSON.stringify(raw)}`)
  }
  return n
}

/** The seeds a test runs: SEED alone if set, else SIM_SEEDS (default 30) seeds from `base`. */
export function testSeeds(base: number, env: NodeJS.ProcessEnv = process.env): number[] {
  if (env.SEED !== undefined && env.SEED !== '') return [parseSeed(env.SEED, 'SEED')]
  const count = env.SIM_SEEDS !== undefined && env.SIM_SEEDS !== '' ? parseSeed(env.SIM_SEEDS, 'SIM_SEEDS') : DEFAULT_SEED_COUNT
  return Array.from({ length: count }, (_, i) => base + i)
}

/**
 * `SEED=… npx vitest run FILE -t "NAME$"`: NAME escaped as the regex `-t` takes and anchored at
 * the end, so that "x converges" does not also run "x converges on the chain".
 */
export function reproCommand(fileUrl: string, testName: string, seed: number): string {
  const file = path.relative(process.cwd(), fileURLToPath(fileUrl)).split(path.sep).join('/')
  const pattern = testName.replace(/[.*+?^${}()|[\]\\"]/g, '\\$&')
  return `SEED=${seed} npx vitest run ${file} -t "${pattern}$"`
}

/**
 * Runs `fn` for every seed; the first failure is rethrown with the seed and the reproduction
 * command prepended to its message (so it shows in vitest's report as is).
 */
export function forEachSeed(fileUrl: string, testName: string, base: number, fn: (seed: number) => void): void {
  for (const seed of testSeeds(base)) {
    try {
      fn(seed)
    } catch (err) {
      const head = `seed ${seed} failed; reproduce with:\n  ${reproCommand(fileUrl, testName, seed)}\n`
      if (err instanceof Error) {
        err.message = head + err.message
        throw err
      }
      throw new Error(head + String(err))
    }
  }
}
