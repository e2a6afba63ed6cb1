/**
 * Streams of stored events built from one page query, shared by every backend: catch-up reads that stop at the end,
 * and live subscriptions that wait for a commit signal (or a poll tick, for writers in other processes) once caught
 * up. Pages are decoded as they arrive; a corrupt row ends the stream with its `EventDecodeError` after every event
 * before it was emitted.
 */
import * as Chunk from "effect/Chunk"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Either from "effect/Either"
import * as Option from "effect/Option"
import * as Stream from "effect/Stream"
import type { EventDecodeError } from "../Errors.js"
import type { RecordedEvent } from "../Event.js"
import { fromStored, outOfSequence, type StoredEvent } from "./codec.js"

type State = { readonly cursor: number } | { readonly error: EventDecodeError }

/**
 * Decodes a page. With a `step` (reads by stream: +1 forward, -1 backward), each event's cursor must be the one
 * before it plus `step` — from `cursor` itself when `checkFirst` — so a missing row or a changed version fails the
 * read at that row instead of being skipped.
 */
const decodePage = (
  rows: ReadonlyArray<StoredEvent>,
  cursorOf: (event: RecordedEvent) => number,
  cursor: number,
  step?: 1 | -1,
  checkFirst = true
): readonly [Chunk.Chunk<RecordedEvent>, State] => {
  const out: Array<RecordedEvent> = new Array(rows.length)
  for (let i = 0; i < rows.length; i++) {
    const decoded = fromStored(rows[i]!)
    if (Either.isLeft(decoded)) {
      out.length = i
      return [Chunk.unsafeFromArray(out), { error: decoded.left }]
    }
    if (step !== undefined && (i > 0 || checkFirst)) {
      const expected = (i === 0 ? cursor : cursorOf(out[i - 1]!)) + step
      if (cursorOf(decoded.right) !== expected) {
        out.length = i
        return [Chunk.unsafeFromArray(out), { error: outOfSequence(decoded.right, expected) }]
      }
    }
    out[i] = decoded.right
  }
  return [Chunk.unsafeFromArray(out), { cursor: out.length > 0 ? cursorOf(out[out.length - 1]!) : cursor }]
}

/**
 * A finite read: pages until one comes back short. With `step` (reads by stream), cursors must follow each other by
 * `step` from `start` (backward, from the first event read: where a stream ends is not known in advance).
 */
export const catchUp = <E>(options: {
  readonly start: number
  readonly pageSize: number
  readonly fetch: (cursor: number, limit: number) => Effect.Effect<ReadonlyArray<StoredEvent>, E>
  readonly cursorOf: (event: RecordedEvent) => number
  readonly step?: 1 | -1
}): Stream.Stream<RecordedEvent, E | EventDecodeError> =>
  Stream.paginateChunkEffect<State, RecordedEvent, E | EventDecodeError, never>(
    { cursor: options.start },
    (state) => {
      if ("error" in state) return Effect.fail(state.error)
      return Effect.map(options.fetch(state.cursor, options.pageSize), (rows) => {
        const [chunk, next] = decodePage(
          rows,
          options.cursorOf,
          state.cursor,
          options.step,
          options.step === 1 || state.cursor !== options.start
        )
        const more = "error" in next || rows.length === options.pageSize
        return [chunk, more ? Option.some(next) : Option.none()] as const
      })
    }
  )

/**
 * Wakes subscribers after commits. `notify` is a plain call (it runs once per commit, on the write path); a
 * subscriber notes `version` before it reads, and `wait(seen)` returns at once if a commit came since.
 */
export class Signal {
  version = 0
  private waiters = new Set<() => void>()
  notify(): void {
    this.version++
    if (this.waiters.size === 0) return
    const waiters = this.waiters
    this.waiters = new Set()
    for (const wake of waiters) wake()
  }
  wait(seen: number): Effect.Effect<void> {
    return Effect.async<void>((resume) => {
      if (this.version !== seen) return resume(Effect.void)
      const wake = () => resume(Effect.void)
      this.waiters.add(wake)
      return Effect.sync(() => {
        this.waiters.delete(wake)
      })
    })
  }
}

/**
 * A live read by global position: catches up page by page, then waits for the store's commit signal or, when
 * `pollInterval` is set, at most that long (for commits made by other processes). Never ends on its own.
 */
export const live = <E>(options: {
  readonly start: Effect.Effect<number, E>
  readonly pageSize: number
  readonly fetch: (after: number, limit: number) => Effect.Effect<ReadonlyArray<StoredEvent>, E>
  readonly signal: Signal
  readonly pollInterval: Duration.Duration | undefined
}): Stream.Stream<RecordedEvent, E | EventDecodeError> =>
  Stream.unwrap(Effect.map(options.start, (start) => {
    const { signal } = options
    const wait = (seen: number) =>
      options.pollInterval === undefined || !Duration.isFinite(options.pollInterval)
        ? signal.wait(seen)
        : Effect.race(signal.wait(seen), Effect.sleep(options.pollInterval))
    // The signal's version is noted before each read, so a commit that lands while we read is not missed.
    const fetchNext = (after: number): Effect.Effect<ReadonlyArray<StoredEvent>, E> =>
      Effect.suspend(() => {
        const seen = signal.version
        return Effect.flatMap(
          options.fetch(after, options.pageSize),
          (rows) => rows.length > 0 ? Effect.succeed(rows) : Effect.zipRight(wait(seen), fetchNext(after))
        )
      })
    return Stream.paginateChunkEffect<State, RecordedEvent, E | EventDecodeError, never>(
      { cursor: start },
      (state) =>
        "error" in state
          ? Effect.fail(state.error)
          : Effect.map(fetchNext(state.cursor), (rows) => {
            const [chunk, next] = decodePage(rows, (event) => event.position, state.cursor)
            return [chunk, Option.some(next)] as const
          })
    )
  }))
