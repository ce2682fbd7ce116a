/**
 * Challenge-response with a shared secret: each side sends a fresh nonce in its hello and
 * proves the secret by an HMAC over the other side's nonce and its own id. The secret never
 * crosses the wire, and a proof cannot be replayed to another link (the nonce is fresh).
 */
import { createHmac, randomBytes, timingSafeEqual } from 'node:crypto'

const CONTEXT = 'speedlayer-peer-v1'

export function newNonce(): Uint8Array {
  return new Uint8Array(randomBytes(16))
}

export function proof(secret: string, challengerNonce: Uint8Array, proverId: string): Uint8Array {
  const h = createHmac('sha256', secret)
  h.update(CONTEXT)
  h.update('\u0000')
  h.update(challengerNonce)
  h.update('\u0000')
  h.update(proverId)
  return new Uint8Array(h.digest())
}

export function verify(secret: string, myNonce: Uint8Array, proverId: string, mac: Uint8Array): boolean {
  const want = proof(secret, myNonce, proverId)
  return mac.length === want.length && timingSafeEqual(mac, want)
}
