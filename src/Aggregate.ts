/**
 * Aggregates as deciders: `initialState`, `decide(command, state)` and `evolve(state, event)` over events defined with
 * `effect/Schema`, and the one command handler every entry point goes through: load (read + fold), decide, append
 * with the loaded version as the expected version, and on a `ConcurrencyError` load and decide again under a
 * `Schedule` the caller can override.
 *
 * @since 0.1.0
 */
import * as Effect from "effect/Effect"
import * as Either from "effect/Either"
import * as Schedule from "effect/Schedule"
import * as Stream from "effect/Stream"
import type { ConcurrencyError, EventDecodeError, InvalidInput, StoreError } from "./Errors.js"
import * as Event from "./Event.js"
import { type AppendError, EventStore, type ReadError, type ReadOptions } from "./EventStore.js"
import * as Telemetry from "./Telemetry.js"

/**
 * The pure core of an aggregate. `decide` returns the events a command produces (none for an idempotent no-op) or
 * fails with a typed domain error; `evolve` folds one event into the state and must not fail.
 *
 * @since 0.1.0
 */
export interface Decider<State, Command, E, Err = never, R = never> {
  readonly initialState: State
  readonly decide: (command: Command, state: State) => Effect.Effect<ReadonlyArray<E>, Err, R>
  readonly evolve: (state: State, event: E) => State
}

/** @since 0.1.0 */
export interface Loaded<State> {
  readonly state: State
  /** The stream's version the state reflects; 0 for a new aggregate. */
  readonly version: number
}

/** What a handled command produced. @since 0.1.0 */
export interface Handled<State, E> {
  /** The new events as recorded (empty when `decide` returned none). */
  readonly events: ReadonlyArray<Event.RecordedEvent<E>>
  readonly version: number
  readonly state: State
  /** How many times a concurrent writer forced load + decide to run again. */
  readonly retries: number
}

/** @since 0.1.0 */
export interface HandleOptions {
  readonly metadata?: Event.Metadata
  /** Overrides the aggregate's retry schedule for this command. */
  readonly retry?: Schedule.Schedule<unknown, ConcurrencyError>
}

/** @since 0.1.0 */
export interface Aggregate<State, Command, E extends { readonly _tag: string }, Err, R> {
  readonly name: string
  readonly events: Event.Registry<E>
  readonly decider: Decider<State, Command, E, Err, R>
  /** The stream that holds aggregate `id`: `${name}-${id}`. */
  readonly streamId: (id: string) => string
  /** Reads and folds the aggregate's events. */
  readonly load: (id: string) => Effect.Effect<Loaded<State>, ReadError, EventStore>
  /** The aggregate's events, decoded. */
  readonly read: (id: string, options?: ReadOptions) => Stream.Stream<Event.RecordedEvent<E>, ReadError, EventStore>
  /** Runs a command: load, decide, append; retried on `ConcurrencyError`. */
  readonly handle: (
    id: string,
    command: Command,
    options?: HandleOptions
  ) => Effect.Effect<Handled<State, E>, Err | AppendError | ReadError, EventStore | R>
}

/**
 * The default retry on a conflict: up to 5 more attempts with jittered exponential backoff from 5 ms.
 *
 * @since 0.1.0
 */
export const defaultRetry: Schedule.Schedule<unknown, ConcurrencyError> = Schedule.intersect(
  Schedule.jittered(Schedule.exponential("5 millis")),
  Schedule.recurs(5)
)

/**
 * Defines an aggregate.
 *
 * @example
 * ```ts
 * const Counter = Aggregate.make({
 *   name: "Counter",
 *   events: Event.registry([Incremented]),
 *   decider: {
 *     initialState: 0,
 *     decide: (command: { readonly by: number }, _state: number) => Effect.succeed([Incremented.make({ by: command.by })]),
 *     evolve: (state, event) => state + event.by
 *   }
 * })
 * // yield* Counter.handle("c-1", { by: 2 })
 * ```
 *
 * @since 0.1.0
 */
export const make = <State, Command, E extends { readonly _tag: string }, Err = never, R = never>(options: {
  readonly name: string
  readonly events: Event.Registry<E>
  readonly decider: Decider<State, Command, E, Err, R>
  readonly retry?: Schedule.Schedule<unknown, ConcurrencyError>
}): Aggregate<State, Command, E, Err, R> => {
  const { decider, events: registry, name } = options
  const retry = options.retry ?? defaultRetry
  const streamId = (id: string) => `${name}-${id}`

  // Page by page into a local state: no Stream (its fixed cost exceeds a short stream's whole load), no per-event
  // effects, nothing kept but the state.
  const loadStream = (store: EventStore["Type"], sid: string): Effect.Effect<Loaded<State>, ReadError> => {
    const next = (state: State, version: number): Effect.Effect<Loaded<State>, ReadError> =>
      Effect.flatMap(store.readPage(sid, { after: version, limit: PAGE }), (page) => {
        for (const raw of page) {
          const decoded = registry.decodePayload(raw)
          if (Either.isLeft(decoded)) return Effect.fail(decoded.left)
          state = decider.evolve(state, decoded.right)
          version = raw.version
        }
        return page.length < PAGE ? Effect.succeed({ state, version }) : next(state, version)
      })
    return Effect.suspend(() => next(decider.initialState, 0))
  }

  const load: Aggregate<State, Command, E, Err, R>["load"] = (id) =>
    Effect.flatMap(EventStore, (store) => loadStream(store, streamId(id))).pipe(
      Effect.withSpan("Aggregate.load", { captureStackTrace: false, attributes: { "aggregate.id": id, "aggregate.type": name } })
    )

  const read: Aggregate<State, Command, E, Err, R>["read"] = (id, readOptions) =>
    Stream.unwrap(Effect.map(EventStore, (store) => Event.decodeStream(registry)(store.read(streamId(id), readOptions))))

  const handle: Aggregate<State, Command, E, Err, R>["handle"] = (id, command, handleOptions) =>
    Effect.flatMap(EventStore, (store) =>
      Effect.suspend(() => {
        const sid = streamId(id)
        let retries = 0
        const attempt = Effect.gen(function*() {
          const { state, version } = yield* loadStream(store, sid)
          const decided = yield* decider.decide(command, state)
          if (decided.length === 0) return { events: [], version, state, retries }
          const encoded: Array<Event.NewEvent> = []
          for (const event of decided) {
            const result = registry.encode(event)
            if (Either.isLeft(result)) return yield* Effect.fail(result.left)
            encoded.push(result.right)
          }
          const appended = yield* store.append(sid, encoded, {
            expectedVersion: version,
            streamType: name,
            ...(handleOptions?.metadata !== undefined ? { metadata: handleOptions.metadata } : {})
          })
          let next = state
          for (const event of decided) next = decider.evolve(next, event)
          return {
            events: appended.events.map((recorded, i) => ({ ...recorded, payload: decided[i]! })),
            version: appended.version,
            state: next,
            retries
          }
        })
        // Only conflicts reach the schedule; every other failure leaves at once.
        return Effect.flatMap(Schedule.driver(handleOptions?.retry ?? retry), (driver) => {
          const run = (): Effect.Effect<Handled<State, E>, Err | AppendError | ReadError, R> =>
            Effect.catchAll(attempt, (error) =>
              isConflict(error)
                ? Effect.matchEffect(driver.next(error), {
                  onFailure: () => Effect.fail(error),
                  onSuccess: () => {
                    retries++
                    Telemetry.commandRetries.unsafeUpdate(1, [])
                    return run()
                  }
                })
                : Effect.fail(error))
          return run()
        })
      })).pipe(
        Effect.withSpan("Aggregate.handle", {
          captureStackTrace: false,
          attributes: { "aggregate.id": id, "aggregate.type": name, "command.type": commandType(command) }
        })
      )

  return { name, events: registry, decider, streamId, load, read, handle }
}

const PAGE = 512

const isConflict = (error: unknown): error is ConcurrencyError =>
  typeof error === "object" && error !== null && (error as { _tag?: unknown })._tag === "ConcurrencyError"

const commandType = (command: unknown): string =>
  typeof command === "object" && command !== null && typeof (command as { _tag?: unknown })._tag === "string"
    ? (command as { _tag: string })._tag
    : typeof command

/** The errors `handle` can fail with besides the decider's own. @since 0.1.0 */
export type HandleError = AppendError | EventDecodeError | InvalidInput | StoreError
