/**
 * The in-process state cache: a decorator over where an aggregate's loads start (as equinox's caching category
 * wraps a store). Without it a load starts from the latest snapshot or the initial state; with it, from the state
 * the last load or command of this process left, and reads only the events after it; a command decides on that state
 * without reading at all (its append expects the cached version, so a stale state never commits). The cache lives in the
 * aggregate's handler layer (`Aggregate.layer`) and ends with it: one cache per handler, so two event stores in one
 * process never share entries. It assumes states are immutable values (as `evolve` should return).
 *
 * @since 0.1.0
 */
import * as Effect from "effect/Effect"
import type * as Analytics from "./Analytics.js"

/**
 * A state and the stream version it reflects.
 *
 * @since 0.1.0
 */
export interface Cached<State> {
  readonly state: State
  readonly version: number
  readonly analytics: Analytics.Analytics | undefined
}

/**
 * Where a load started: a full replay, a snapshot, or a cached state.
 *
 * @since 0.1.0
 */
export type Source = "replay" | "snapshot" | "cache"

/** @since 0.1.0 */
export interface Start<State> extends Cached<State> {
  readonly source: Source
}

/**
 * Where an aggregate's loads start, and what it learns about a stream: what the cache decorates.
 *
 * @since 0.1.0
 */
export interface Starts<State> {
  /** The start of a load of `streamId`; never fails (a broken snapshot means: replay). */
  readonly start: (streamId: string) => Effect.Effect<Start<State>>
  /** A load or a command left the stream at `value`. */
  readonly seen: (streamId: string, value: Cached<State>) => void
  /** The stream is not where we thought (a conflict, a start ahead of the stream): forget it. */
  readonly forget: (streamId: string) => void
}

/** @since 0.1.0 */
export interface Options {
  /** How many streams' states to keep; the least recently used goes first. */
  readonly capacity: number
}

/**
 * A bounded least-recently-used map of states by stream id.
 *
 * @since 0.1.0
 */
export class Lru<State> {
  private readonly entries = new Map<string, Cached<State>>()
  constructor(readonly capacity: number) {}

  get(streamId: string): Cached<State> | undefined {
    const entry = this.entries.get(streamId)
    if (entry !== undefined) {
      // most recently used last
      this.entries.delete(streamId)
      this.entries.set(streamId, entry)
    }
    return entry
  }

  set(streamId: string, entry: Cached<State>): void {
    this.entries.delete(streamId)
    this.entries.set(streamId, entry)
    if (this.entries.size > this.capacity) this.entries.delete(this.entries.keys().next().value!)
  }

  delete(streamId: string): void {
    this.entries.delete(streamId)
  }

  get size(): number {
    return this.entries.size
  }
}

/**
 * Decorates `inner` with a cache of `capacity` states: a load starts from the cached state when there is one.
 *
 * @since 0.1.0
 */
export const decorate = <State>(inner: Starts<State>, options: Options): Starts<State> & { readonly cache: Lru<State> } => {
  if (!Number.isSafeInteger(options.capacity) || options.capacity < 1) {
    throw new RangeError(`StateCache: capacity must be a positive integer, got ${options.capacity}`)
  }
  const cache = new Lru<State>(options.capacity)
  return {
    cache,
    start: (streamId) => {
      const cached = cache.get(streamId)
      return cached === undefined ? inner.start(streamId) : Effect.succeed({ ...cached, source: "cache" })
    },
    seen: (streamId, value) => {
      if (value.version > 0) cache.set(streamId, value)
      inner.seen(streamId, value)
    },
    forget: (streamId) => {
      cache.delete(streamId)
      inner.forget(streamId)
    }
  }
}
