/**
 * The codec of the messages protocol 2 changed or added (aeDigests, aeNeed, links): what is
 * encoded decodes to the same message, and input that breaks a rule of the format (a mask naming
 * more children than a split has, a child to ship whole that does not differ, a prefix wider
 * than its depth, digests the bytes cannot hold) is a ProtocolError, never a crash or a message.
 */
import { describe, expect, it } from 'vitest'
import fc from 'fast-check'
import * as encoding from 'lib0/encoding'
import { decodeMessage, encodeMessage, MSG, ProtocolError, type Message } from '../../src/replication/messages.js'

const popcount = (x: number): number => x.toString(2).replaceAll('0', '').length

const digestsArb: fc.Arbitrary<Extract<Message, { t: 'aeDigests' }>> = fc
  .record({ depth: fc.integer({ min: 0, max: 28 }), bits: fc.integer({ min: 1, max: 4 }), n: fc.integer({ min: 0, max: 20 }) })
  .map(({ depth, bits, n }) => ({ depth, bits, n: Math.min(n, 2 ** depth) }))
  .chain(({ depth, bits, n }) =>
    fc.record({
      session: fc.nat(),
      req: fc.nat(),
      view: fc.string(),
      parents: fc.uniqueArray(fc.integer({ min: 0, max: 2 ** depth - 1 }), { minLength: n, maxLength: n }).map((ps) => ps.sort((a, b) => a - b)),
      present: fc.array(fc.integer({ min: 0, max: 2 ** (1 << bits) - 1 }), { minLength: n, maxLength: n }),
      seed: fc.nat(),
    }).map(({ session, req, view, parents, present, seed }) => {
      const count = present.slice(0, parents.length).reduce((t, m) => t + popcount(m), 0)
      return {
        t: 'aeDigests' as const,
        session,
        req,
        view,
        depth,
        bits,
        parents,
        present: present.slice(0, parents.length),
        digests: Array.from({ length: count }, (_, i) => (Math.imul(seed + i, 0x9e3779b1) >>> 0)),
      }
    }),
  )

const needArb: fc.Arbitrary<Extract<Message, { t: 'aeNeed' }>> = fc.integer({ min: 1, max: 4 }).chain((bits) =>
  fc
    .array(fc.tuple(fc.integer({ min: 0, max: 2 ** (1 << bits) - 1 }), fc.integer({ min: 0, max: 2 ** (1 << bits) - 1 })), { maxLength: 20 })
    .chain((pairs) =>
      fc.record({ session: fc.nat(), req: fc.nat() }).map(({ session, req }) => ({
        t: 'aeNeed' as const,
        session,
        req,
        bits,
        differ: pairs.map(([d]) => d),
        whole: pairs.map(([d, w]) => d & w),
      })),
    ),
)

function raw(type: number, write: (enc: encoding.Encoder) => void): Uint8Array {
  const enc = encoding.createEncoder()
  encoding.writeUint8(enc, type)
  write(enc)
  return encoding.toUint8Array(enc)
}

describe('protocol 2 messages', () => {
  it('aeDigests, aeNeed and links round-trip', () => {
    const roundTrips = (m: Message): void => {
      expect(decodeMessage(encodeMessage(m))).toEqual(m)
    }
    fc.assert(fc.property(digestsArb, roundTrips))
    fc.assert(fc.property(needArb, roundTrips))
    fc.assert(fc.property(fc.array(fc.string()), (peers) => roundTrips({ t: 'links', peers })))
  })

  it('every truncation of a valid message is refused with a ProtocolError', () => {
    fc.assert(
      fc.property(fc.oneof(digestsArb, needArb), (m) => {
        const bytes = encodeMessage(m)
        for (let n = 1; n < bytes.length; n++) expect(() => decodeMessage(bytes.subarray(0, n))).toThrow(ProtocolError)
      }),
    )
  })

  const bad: Array<[string, Uint8Array, RegExp]> = [
    [
      'a split of 5 bits',
      raw(MSG.aeDigests, (e) => {
        for (const x of [1, 1]) encoding.writeVarUint(e, x)
        encoding.writeVarString(e, 'v')
        encoding.writeUint8(e, 0)
        encoding.writeUint8(e, 5)
        encoding.writeVarUint(e, 0)
      }),
      /split of 5 bits/,
    ],
    [
      'a prefix wider than its depth',
      raw(MSG.aeDigests, (e) => {
        for (const x of [1, 1]) encoding.writeVarUint(e, x)
        encoding.writeVarString(e, 'v')
        encoding.writeUint8(e, 4)
        encoding.writeUint8(e, 4)
        encoding.writeVarUint(e, 1)
        encoding.writeVarUint(e, 16)
        encoding.writeVarUint(e, 0)
      }),
      /prefix 16 has more than 4 bits/,
    ],
    [
      'a mask naming a fifth child of a 4-way split',
      raw(MSG.aeDigests, (e) => {
        for (const x of [1, 1]) encoding.writeVarUint(e, x)
        encoding.writeVarString(e, 'v')
        encoding.writeUint8(e, 2)
        encoding.writeUint8(e, 2)
        encoding.writeVarUint(e, 1)
        encoding.writeVarUint(e, 0)
        encoding.writeVarUint(e, 16)
      }),
      /mask 16 names more than 4 children/,
    ],
    [
      'more digests than bytes',
      raw(MSG.aeDigests, (e) => {
        for (const x of [1, 1]) encoding.writeVarUint(e, x)
        encoding.writeVarString(e, 'v')
        encoding.writeUint8(e, 0)
        encoding.writeUint8(e, 4)
        encoding.writeVarUint(e, 1)
        encoding.writeVarUint(e, 0)
        encoding.writeVarUint(e, 0xffff)
        encoding.writeUint32(e, 7)
      }),
      /16 digests exceed the 4 bytes left/,
    ],
    [
      'a child to ship whole that does not differ',
      raw(MSG.aeNeed, (e) => {
        for (const x of [1, 1]) encoding.writeVarUint(e, x)
        encoding.writeUint8(e, 1)
        encoding.writeVarUint(e, 1)
        encoding.writeVarUint(e, 1 + 2 * 4)
      }),
      /ship whole that does not differ/,
    ],
  ]
  for (const [what, bytes, reason] of bad) {
    it(`refuses ${what}`, () => {
      expect(() => decodeMessage(bytes)).toThrow(ProtocolError)
      expect(() => decodeMessage(bytes)).toThrow(reason)
    })
  }
})
