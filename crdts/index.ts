/** The registry of replicated types, by the name a view definition gives. */
import type { AnyCrdtType, TypeName } from './types.js'
import { gcounter } from './gcounter.js'
import { pncounter } from './pncounter.js'
import { orset } from './orset.js'
import { lwwmap } from './lwwmap.js'
import { hll } from './hll.js'

export const crdtTypes: Readonly<Record<TypeName, AnyCrdtType>> = { gcounter, pncounter, orset, lwwmap, hll }

export function isTypeName(x: unknown): x is TypeName {
  return typeof x === 'string' && Object.prototype.hasOwnProperty.call(crdtTypes, x)
}

export * from './types.js'
export { gcounter, pncounter, orset, lwwmap, hll }
export { encodeState, decodeState, stateEquals, FORMAT_VERSION } from './codec.js'
