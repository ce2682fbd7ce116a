/**
 * The element hash of the HyperLogLog type. It is part of the wire format: every replica must put
 * an element in the same register with the same rank forever, so this function never changes
 * (a different hash would need a new format version).
 *
 * Definition: MurmurHash3_x86_128 (Austin Appleby's smhasher, the 128-bit variant built from 32-bit
 * operations) with seed 0, over the UTF-8 bytes of the string, where a lone surrogate encodes as
 * U+FFFD (EF BF BD), exactly the bytes `new TextEncoder().encode(s)` gives. The 64-bit hash is the
 * first 8 bytes of the 16-byte digest read as a little-endian integer: with the digest's words
 * h1..h4, hash = h2 * 2^32 + h1, so its high word is h2 and its low word is h1.
 *
 * With seed 0 the empty input hashes to 0, so "" always lands in register 0 with the largest rank;
 * the estimator counts a register at the largest rank like any other, so this costs nothing.
 *
 * Why this one: it is a published function with a reference verification value (0xB3ECE62A), so an
 * implementation in any language can be checked; and it needs only 32-bit multiplies (Math.imul),
 * so no BigInt on the hot path. The UTF-8 bytes are produced from charCodeAt into a reusable
 * scratch buffer: hashing allocates nothing unless a string is longer than any seen before.
 */

const C1 = 0x239b961b
const C2 = 0xab0e9789
const C3 = 0x38b34ae5
const C4 = 0xa1e38b93

function rotl(x: number, r: number): number {
  return (x << r) | (x >>> (32 - r))
}

function fmix(h: number): number {
  h ^= h >>> 16
  h = Math.imul(h, 0x85ebca6b)
  h ^= h >>> 13
  h = Math.imul(h, 0xc2b2ae35)
  h ^= h >>> 16
  return h
}

function word(b: Uint8Array, i: number): number {
  return (b[i] as number) | ((b[i + 1] as number) << 8) | ((b[i + 2] as number) << 16) | ((b[i + 3] as number) << 24)
}

/**
 * MurmurHash3_x86_128 of `bytes[0..len)` with `seed`; writes the digest words h1..h4 (unsigned)
 * to out[0..3]. The digest's byte form is h1, h2, h3, h4, each little-endian.
 */
export function murmur3x86_128(bytes: Uint8Array, len: number, seed: number, out: Uint32Array): void {
  let h1 = seed | 0
  let h2 = h1
  let h3 = h1
  let h4 = h1
  const blocksEnd = len - (len & 15)
  let i = 0
  for (; i < blocksEnd; i += 16) {
    let k1 = word(bytes, i)
    let k2 = word(bytes, i + 4)
    let k3 = word(bytes, i + 8)
    let k4 = word(bytes, i + 12)

    k1 = Math.imul(rotl(Math.imul(k1, C1), 15), C2)
    h1 ^= k1
    h1 = (Math.imul(rotl(h1, 19) + h2, 5) + 0x561ccd1b) | 0

    k2 = Math.imul(rotl(Math.imul(k2, C2), 16), C3)
    h2 ^= k2
    h2 = (Math.imul(rotl(h2, 17) + h3, 5) + 0x0bcaa747) | 0

    k3 = Math.imul(rotl(Math.imul(k3, C3), 17), C4)
    h3 ^= k3
    h3 = (Math.imul(rotl(h3, 15) + h4, 5) + 0x96cd1c35) | 0

    k4 = Math.imul(rotl(Math.imul(k4, C4), 18), C1)
    h4 ^= k4
    h4 = (Math.imul(rotl(h4, 13) + h1, 5) + 0x32ac3b17) | 0
  }

  // The tail: up to 15 bytes, assembled little-endian into k1..k4 (the reference's fall-through switch).
  const tail = len & 15
  if (tail > 0) {
    let k1 = 0
    let k2 = 0
    let k3 = 0
    let k4 = 0
    for (let t = tail - 1; t >= 0; t--) {
      const b = bytes[i + t] as number
      const shift = (t & 3) << 3
      if (t >= 12) k4 |= b << shift
      else if (t >= 8) k3 |= b << shift
      else if (t >= 4) k2 |= b << shift
      else k1 |= b << shift
    }
    if (tail > 12) h4 ^= Math.imul(rotl(Math.imul(k4, C4), 18), C1)
    if (tail > 8) h3 ^= Math.imul(rotl(Math.imul(k3, C3), 17), C4)
    if (tail > 4) h2 ^= Math.imul(rotl(Math.imul(k2, C2), 16), C3)
    h1 ^= Math.imul(rotl(Math.imul(k1, C1), 15), C2)
  }

  h1 ^= len
  h2 ^= len
  h3 ^= len
  h4 ^= len
  h1 = (h1 + h2 + h3 + h4) | 0
  h2 = (h2 + h1) | 0
  h3 = (h3 + h1) | 0
  h4 = (h4 + h1) | 0
  h1 = fmix(h1)
  h2 = fmix(h2)
  h3 = fmix(h3)
  h4 = fmix(h4)
  h1 = (h1 + h2 + h3 + h4) | 0
  h2 = (h2 + h1) | 0
  h3 = (h3 + h1) | 0
  h4 = (h4 + h1) | 0
  out[0] = h1
  out[1] = h2
  out[2] = h3
  out[3] = h4
}

let scratch = new Uint8Array(256)

/**
 * Writes the UTF-8 form of `s` into the scratch buffer and returns its length. Lone surrogates
 * become U+FFFD, as TextEncoder does, so that the hash is defined for every JS string; the HLL
 * type refuses such strings before they get here anyway.
 */
function utf8(s: string): number {
  const n = s.length
  if (n * 3 > scratch.length) scratch = new Uint8Array(Math.max(n * 3, scratch.length * 2))
  const b = scratch
  let j = 0
  for (let i = 0; i < n; i++) {
    let c = s.charCodeAt(i)
    if (c < 0x80) {
      b[j++] = c
    } else if (c < 0x800) {
      b[j++] = 0xc0 | (c >> 6)
      b[j++] = 0x80 | (c & 0x3f)
    } else if ((c & 0xf800) !== 0xd800) {
      b[j++] = 0xe0 | (c >> 12)
      b[j++] = 0x80 | ((c >> 6) & 0x3f)
      b[j++] = 0x80 | (c & 0x3f)
    } else {
      const d = i + 1 < n ? s.charCodeAt(i + 1) : 0
      if (c < 0xdc00 && (d & 0xfc00) === 0xdc00) {
        // a surrogate pair: one code point, four bytes (never more than the 3 per unit reserved)
        c = 0x10000 + ((c - 0xd800) << 10) + (d - 0xdc00)
        i++
        b[j++] = 0xf0 | (c >> 18)
        b[j++] = 0x80 | ((c >> 12) & 0x3f)
        b[j++] = 0x80 | ((c >> 6) & 0x3f)
        b[j++] = 0x80 | (c & 0x3f)
      } else {
        b[j++] = 0xef
        b[j++] = 0xbf
        b[j++] = 0xbd
      }
    }
  }
  return j
}

const digest = new Uint32Array(4)

/**
 * The 64-bit element hash of `s` (see the file comment), written as two unsigned 32-bit words:
 * out[0] = high word (digest h2), out[1] = low word (digest h1). Allocates nothing.
 */
export function hash64(s: string, out: Uint32Array): void {
  const len = utf8(s)
  murmur3x86_128(scratch, len, 0, digest)
  out[0] = digest[1] as number
  out[1] = digest[0] as number
}

/** The same hash over raw bytes (for tests and for callers that already hold UTF-8). */
export function hash64Bytes(bytes: Uint8Array, out: Uint32Array): void {
  murmur3x86_128(bytes, bytes.length, 0, digest)
  out[0] = digest[1] as number
  out[1] = digest[0] as number
}
