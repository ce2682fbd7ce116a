/**
 * Random histories over a few replicas: ops applied locally and whole-state syncs between
 * replicas, so the generated states are related the way real replicas are (concurrent adds and
 * removes of the same element, counters touched by several replicas, equal timestamps...).
 */
import fc from 'fast-check'
import type { CrdtType, OpContext } from '../../crdts/types.js'

export type Step = { kind: 'op'; replica: number; op: unknown } | { kind: 'sync'; from: number; to: number }

export const REPLICA_IDS = ['a', 'b', 'c', 'd', 'e', 'f', 'g'] as const

export function stepArb(genOp: fc.Arbitrary<unknown>, replicas: number): fc.Arbitrary<Step> {
  return fc.oneof(
    { weight: 3, arbitrary: fc.record({ kind: fc.constant('op' as const), replica: fc.nat(replicas - 1), op: genOp }) },
    { weight: 1, arbitrary: fc.record({ kind: fc.constant('sync' as const), from: fc.nat(replicas - 1), to: fc.nat(replicas - 1) }) },
  )
}

export function historyArb(genOp: fc.Arbitrary<unknown>, replicas: number, maxSteps = 30): fc.Arbitrary<Step[]> {
  return fc.array(stepArb(genOp, replicas), { maxLength: maxSteps })
}

/**
 * A deterministic clock per replica: each op advances that replica's wall time by one ms, and
 * replicas are skewed by a few ms from each other so that stamps interleave across replicas.
 */
export function contextFor(replica: number, step: number): OpContext {
  return { replica: REPLICA_IDS[replica] as string, time: { ts: 1_000_000 + step * 3 + ((replica * 7) % 5), c: 0 } }
}

/** Runs a history; returns each replica's final state. Ops that the type refuses are skipped. */
export function runHistory<S, O>(type: CrdtType<S, O, unknown>, steps: Step[], replicas: number): S[] {
  const states = Array.from({ length: replicas }, () => type.empty())
  steps.forEach((step, i) => {
    if (step.kind === 'op') {
      const op = type.validate(step.op)
      type.apply(states[step.replica] as S, op, contextFor(step.replica, i))
    } else if (step.from !== step.to) {
      type.join(states[step.to] as S, type.clone(states[step.from] as S))
    }
  })
  return states
}
