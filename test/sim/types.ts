/**
 * The seam between the simulated network and whatever protocol runs on it.
 *
 * A node is a `SimPeer` built by a `SimNodeFactory` from two things the simulator owns: a
 * `SimEndpoint` (its only way to talk and to read time) and a `SimStorage` (what survives a
 * crash). The same protocol code runs in production over WebSockets and LevelDB; a transport
 * adapter there maps a socket's open/close/message events onto exactly these three callbacks, so
 * whatever passes here has been exercised against every interleaving the simulator can produce.
 *
 * The contract a protocol may rely on, and nothing more:
 * - A *connection* is a pair of nodes whose link is up. With the faults of `SimFaults` off, a
 *   link behaves like a TCP connection: FIFO and exactly once until it goes down. Switched on,
 *   the simulator may also duplicate a message, reorder messages within a link, hold one back,
 *   or lose one on a live link; a protocol that claims to survive those is tested with them.
 * - When a link goes down every message still in flight on it, in both directions, is dropped,
 *   as a closed socket drops its buffers; both ends get `onDisconnect`. `send` on a link that is
 *   down is silently dropped too (a write to a closed socket), so a protocol must never assume
 *   that what it sent arrived: it learns what the peer has only from what the peer says.
 * - When a link comes up (start, heal, restart) both ends get `onConnect` before either receives
 *   anything on the new connection; nothing from an earlier connection can arrive after it. The
 *   order of the two `onConnect` calls is chosen by the seed.
 * - Callbacks are never re-entered: `send` only queues, and delivery happens later, one message
 *   at a time, driven by the test. A callback may throw; the exception fails the test (a decoder
 *   that throws on a peer's bytes is a bug the simulator is there to find).
 * - Bytes are copied on `send`: a sender may reuse its buffer, a receiver may keep what it got.
 */

/** What a node is given to act on the world. */
export interface SimEndpoint {
  /** This node's id (also its replica id). */
  readonly id: string
  /** Queues `bytes` to `to`; dropped without error if the link to `to` is down. */
  send(to: string, bytes: Uint8Array): void
  /** This node's clock in ms: simulated time plus the node's skew (see SimNetworkOptions). */
  now(): number
  /**
   * Runs `fn` once this node's clock has advanced by `ms`. Timers die with the node (crash).
   * Returns a function that cancels the timer.
   */
  setTimer(ms: number, fn: () => void): () => void
}

/** What the network calls on a node. */
export interface SimPeer {
  readonly id: string
  onConnect(peer: string): void
  onDisconnect(peer: string): void
  onMessage(from: string, bytes: Uint8Array): void
}

/**
 * The durable store of one node: what it finds again after `crash` + `restart`. Writes are
 * durable as soon as `set` returns (the fsync'd model); a lossy model (writes since the last
 * sync are lost on crash) can be added behind the same interface.
 */
export interface SimStorage {
  get(key: string): Uint8Array | undefined
  set(key: string, bytes: Uint8Array): void
  delete(key: string): void
  /** Keys in ascending order. */
  keys(): string[]
}

/**
 * Builds (or, after a crash, rebuilds) a node. On restart the factory gets a fresh endpoint and
 * the same storage; the node must reload its state from `storage` alone.
 */
export type SimNodeFactory<P extends SimPeer> = (endpoint: SimEndpoint, storage: SimStorage) => P

/**
 * Fault probabilities, each in [0, 1]; all default to 0 (a perfect network of TCP-like links,
 * apart from partitions, which the test drives).
 */
export interface SimFaults {
  /** A delivered message is put back at the head of its link and delivered again later. */
  duplicate?: number
  /** A delivery takes a random due message of its link rather than the head (reconnect reordering). */
  reorder?: number
  /** A sent message is held back by 1..maxDelay ms of simulated time (head-of-line blocking its link). */
  delay?: number
  maxDelay?: number
  /** A sent message on a live link is lost. Not TCP-like: only for protocols that claim to survive it. */
  drop?: number
}

/** One entry of the recorded trace: what happened, in order. */
export type SimEvent =
  | { kind: 'deliver'; time: number; from: string; to: string; size: number; hash: number; duplicate: boolean }
  | { kind: 'drop'; time: number; from: string; to: string; size: number; hash: number; reason: 'down' | 'cut' | 'lost' }
  | { kind: 'connect' | 'disconnect'; time: number; a: string; b: string }
  | { kind: 'crash' | 'restart'; time: number; node: string }
  | { kind: 'timer'; time: number; node: string }
