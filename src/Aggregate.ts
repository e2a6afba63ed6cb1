/**
 * Aggregates as deciders: `initialState`, `decide(command, state)` and `evolve(state, event)` over events defined with
 * `effect/Schema`, and the one command handler every entry point goes through: load, decide, append with the loaded
 * version as the expected version, and on a `ConcurrencyError` load and decide again under a `Schedule` the caller
 * can override.
 *
 * Loading starts from the newest of: a cached state (opt-in `cache`), the latest snapshot (opt-in `snapshots`
 * policy, with a `SnapshotStore` in context), or the initial state — then folds the events after it. Whatever the
 * start, `decide` sees the state a full replay would give. Event analytics (opt-in) are folded alongside.
 *
 * @since 0.1.0
 */
import * as Effect from "effect/Effect"
import * as Either from "effect/Either"
import * as Option from "effect/Option"
import * as Schedule from "effect/Schedule"
import * as Stream from "effect/Stream"
import * as Analytics from "./Analytics.js"
import type { ConcurrencyError, EventDecodeError, InvalidInput, StoreError } from "./Errors.js"
import * as Event from "./Event.js"
import { type AppendError, EventStore, type EventStoreService, type ReadError, type ReadOptions } from "./EventStore.js"
import * as Snapshot from "./Snapshot.js"
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
  /** The aggregate's event analytics, when the aggregate keeps them (`analytics: true`). */
  readonly analytics?: Analytics.Analytics
}

/** What a handled command produced. @since 0.1.0 */
export interface Handled<State, E> extends Loaded<State> {
  /** The new events as recorded (empty when `decide` returned none). */
  readonly events: ReadonlyArray<Event.RecordedEvent<E>>
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
export interface Options<State, Command, E extends { readonly _tag: string }, Err, R> {
  readonly name: string
  readonly events: Event.Registry<E>
  readonly decider: Decider<State, Command, E, Err, R>
  /** Retry on conflict; default {@link defaultRetry}. */
  readonly retry?: Schedule.Schedule<unknown, ConcurrencyError>
  /** Snapshot the state every N events or on demand. Needs a `SnapshotStore` in context (else: no snapshots). */
  readonly snapshots?: Snapshot.Policy<State>
  /** Keep up to `capacity` states in memory (LRU): a load then reads only newer events. Off by default. */
  readonly cache?: { readonly capacity: number }
  /** Fold event analytics with the state (restored from snapshots). Off by default. */
  readonly analytics?: boolean
}

/** @since 0.1.0 */
export interface Aggregate<State, Command, E extends { readonly _tag: string }, Err, R> {
  readonly name: string
  readonly events: Event.Registry<E>
  readonly decider: Decider<State, Command, E, Err, R>
  /** The stream that holds aggregate `id`: `${name}-${id}`. */
  readonly streamId: (id: string) => string
  /** The aggregate's current state. */
  readonly load: (id: string) => Effect.Effect<Loaded<State>, ReadError, EventStore>
  /** The aggregate's events, decoded. */
  readonly read: (id: string, options?: ReadOptions) => Stream.Stream<Event.RecordedEvent<E>, ReadError, EventStore>
  /** Runs a command: load, decide, append; retried on `ConcurrencyError`. */
  readonly handle: (
    id: string,
    command: Command,
    options?: HandleOptions
  ) => Effect.Effect<Handled<State, E>, Err | AppendError | ReadError, EventStore | R>
  /**
   * Writes a snapshot of the current state now (the on-demand policy; works with any policy). Returns the version
   * it reflects (0, and nothing written, for an empty stream).
   */
  readonly snapshot: (
    id: string
  ) => Effect.Effect<number, ReadError | InvalidInput, EventStore | Snapshot.SnapshotStore>
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

const PAGE = 512

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
 *   },
 *   snapshots: { schema: Schema.Number, every: 100 }
 * })
 * // yield* Counter.handle("c-1", { by: 2 })
 * ```
 *
 * @since 0.1.0
 */
export const make = <State, Command, E extends { readonly _tag: string }, Err = never, R = never>(
  options: Options<State, Command, E, Err, R>
): Aggregate<State, Command, E, Err, R> => {
  const { decider, events: registry, name } = options
  const retry = options.retry ?? defaultRetry
  const policy = options.snapshots
  const withAnalytics = options.analytics === true
  const cache = options.cache === undefined ? undefined : new Snapshot.StateCache<State>(options.cache.capacity)
  const streamId = (id: string) => `${name}-${id}`
  const snapshotStore = Effect.serviceOption(Snapshot.SnapshotStore)

  /** Folds the events after `from` onto it, page by page: no Stream, no per-event effects. */
  /**
   * Folds the events after `from` onto it, page by page: no Stream, no per-event effects. A start past version 0
   * (a snapshot, a cached state) is checked on the way: the first page starts at its own version, which must be
   * there; if it is not, the stream is behind the start (a snapshot of another database, a truncated stream) and
   * the result is `undefined`, so the caller replays.
   */
  const foldFrom = (
    store: EventStoreService,
    sid: string,
    from: Snapshot.Cached<State>
  ): Effect.Effect<Snapshot.Cached<State> | undefined, ReadError> => {
    const tracker = withAnalytics ? new Analytics.Tracker(from.analytics) : undefined
    let state = from.state
    let version = from.version
    const next = (first: boolean): Effect.Effect<Snapshot.Cached<State> | undefined, ReadError> => {
      const verify = first && version > 0
      return Effect.flatMap(store.readPage(sid, { after: verify ? version - 1 : version, limit: PAGE }), (page) => {
        let i = 0
        if (verify) {
          if (page[0]?.version !== version) return Effect.succeed(undefined)
          i = 1
        }
        for (; i < page.length; i++) {
          const raw = page[i]!
          const decoded = registry.decodePayload(raw)
          if (Either.isLeft(decoded)) return Effect.fail(decoded.left)
          state = decider.evolve(state, decoded.right)
          version = raw.version
          tracker?.record(raw.type, raw.recordedAt)
        }
        return page.length < PAGE
          ? Effect.succeed({ state, version, analytics: tracker?.value })
          : next(false)
      })
    }
    return next(true)
  }

  const initial: Snapshot.Cached<State> = {
    state: decider.initialState,
    version: 0,
    analytics: withAnalytics ? Analytics.empty : undefined
  }

  const ignored = (sid: string, version: number, reason: string) =>
    Effect.logWarning("snapshot ignored, replaying the stream").pipe(
      Effect.annotateLogs({ "aggregate.id": sid, "snapshot.version": version, reason }),
      Effect.zipRight(Effect.sync(() => Telemetry.snapshotsIgnored.unsafeUpdate(1, []))),
      Effect.as(initial)
    )

  /** Where a load starts: the latest usable snapshot, or the initial state. Never fails the load. */
  const fromSnapshot = (sid: string): Effect.Effect<Snapshot.Cached<State>> =>
    policy === undefined
      ? Effect.succeed(initial)
      : Effect.flatMap(snapshotStore, (snapshots) =>
        Option.isNone(snapshots) ? Effect.succeed(initial) : snapshots.value.latest(sid).pipe(
          Effect.flatMap(Option.match({
            onNone: () => Effect.succeed(initial),
            onSome: (snapshot) => {
              const decoded = Snapshot.decode(policy, snapshot)
              if (Either.isLeft(decoded)) return ignored(sid, snapshot.version, decoded.left)
              if (withAnalytics && decoded.right.analytics === undefined) {
                return ignored(sid, snapshot.version, "the snapshot has no analytics")
              }
              return Effect.succeed<Snapshot.Cached<State>>({
                state: decoded.right.state,
                version: snapshot.version,
                analytics: withAnalytics ? decoded.right.analytics : undefined
              })
            }
          })),
          Effect.catchAll((error) => ignored(sid, 0, error.message))
        ))

  /** `replay`: ignore the cache and snapshots (they claimed a version the stream does not have). */
  const loadFrom = (
    store: EventStoreService,
    sid: string,
    replay = false
  ): Effect.Effect<Snapshot.Cached<State>, ReadError> => {
    const cached = replay ? undefined : cache?.get(store, sid)
    const start = replay ? Effect.succeed(initial) : cached !== undefined ? Effect.succeed(cached) : fromSnapshot(sid)
    return Effect.flatMap(start, (from) =>
      Effect.flatMap(foldFrom(store, sid, from), (loaded) => {
        if (loaded === undefined) {
          // the start was ahead of the stream: forget it and replay from the beginning
          cache?.delete(store, sid)
          return Effect.zipRight(
            cached === undefined ? ignored(sid, from.version, "the stream has no event at the snapshot's version") : Effect.void,
            loadFrom(store, sid, true)
          )
        }
        if (cache !== undefined && loaded.version > 0) cache.set(store, sid, loaded)
        return Effect.succeed(loaded)
      }))
  }

  const loaded = (value: Snapshot.Cached<State>): Loaded<State> =>
    value.analytics === undefined
      ? { state: value.state, version: value.version }
      : { state: value.state, version: value.version, analytics: value.analytics }

  const writeSnapshot = (
    policy: Snapshot.Policy<State>,
    snapshots: Snapshot.SnapshotStoreService,
    sid: string,
    value: Snapshot.Cached<State>
  ) =>
    Effect.suspend(() => {
      const encoded = Snapshot.encode(policy, value.state, value.analytics)
      if (Either.isLeft(encoded)) return Effect.fail(encoded.left)
      return snapshots.save({
        streamId: sid,
        streamType: name,
        version: value.version,
        schemaVersion: encoded.right.schemaVersion,
        state: encoded.right.state,
        ...(encoded.right.analytics !== undefined ? { analytics: encoded.right.analytics } : {})
      })
    }).pipe(Effect.tap(() => Effect.sync(() => Telemetry.snapshotsWritten.unsafeUpdate(1, []))))

  /** After a successful append: a snapshot in the background when the append crossed a multiple of `every`. */
  const maybeSnapshot = (sid: string, before: number, after: Snapshot.Cached<State>) => {
    if (policy === undefined || policy.every === "on-demand") return Effect.void
    const every = policy.every
    if (Math.floor(after.version / every) === Math.floor(before / every)) return Effect.void
    return Effect.flatMap(snapshotStore, (snapshots) =>
      Option.isNone(snapshots) ? Effect.void : Effect.asVoid(Effect.forkDaemon(
        writeSnapshot(policy, snapshots.value, sid, after).pipe(
          Effect.catchAllCause((cause) =>
            Effect.logWarning("snapshot write failed; the command succeeded").pipe(
              Effect.annotateLogs({ "aggregate.id": sid, "snapshot.version": after.version }),
              Effect.annotateLogs("cause", cause),
              Effect.zipRight(Effect.sync(() => Telemetry.snapshotFailures.unsafeUpdate(1, [])))
            )
          )
        )
      )))
  }

  const load: Aggregate<State, Command, E, Err, R>["load"] = (id) =>
    Effect.flatMap(EventStore, (store) => Effect.map(loadFrom(store, streamId(id)), loaded)).pipe(
      Effect.withSpan("Aggregate.load", {
        captureStackTrace: false,
        attributes: { "aggregate.id": id, "aggregate.type": name }
      })
    )

  const read: Aggregate<State, Command, E, Err, R>["read"] = (id, readOptions) =>
    Stream.unwrap(Effect.map(EventStore, (store) => Event.decodeStream(registry)(store.read(streamId(id), readOptions))))

  const handle: Aggregate<State, Command, E, Err, R>["handle"] = (id, command, handleOptions) =>
    Effect.flatMap(EventStore, (store) =>
      Effect.suspend(() => {
        const sid = streamId(id)
        let retries = 0
        let replay = false
        const attempt = Effect.gen(function*() {
          const current = yield* loadFrom(store, sid, replay)
          const decided = yield* decider.decide(command, current.state)
          if (decided.length === 0) return { ...loaded(current), events: [], retries }
          const encoded: Array<Event.NewEvent> = []
          for (const event of decided) {
            const result = registry.encode(event)
            if (Either.isLeft(result)) return yield* Effect.fail(result.left)
            encoded.push(result.right)
          }
          const appended = yield* store.append(sid, encoded, {
            expectedVersion: current.version,
            streamType: name,
            ...(handleOptions?.metadata !== undefined ? { metadata: handleOptions.metadata } : {})
          })
          let state = current.state
          for (const event of decided) state = decider.evolve(state, event)
          let analytics = current.analytics
          if (withAnalytics) {
            const tracker = new Analytics.Tracker(current.analytics)
            for (const event of appended.events) tracker.record(event.type, event.recordedAt)
            analytics = tracker.value
          }
          const after: Snapshot.Cached<State> = { state, version: appended.version, analytics }
          cache?.set(store, sid, after)
          yield* maybeSnapshot(sid, current.version, after)
          return {
            ...loaded(after),
            events: appended.events.map((recorded, i) => ({ ...recorded, payload: decided[i]! })),
            retries
          }
        })
        // Only conflicts reach the schedule; every other failure leaves at once. A conflict also means the cached
        // state (if any) is behind: drop it.
        return Effect.flatMap(Schedule.driver(handleOptions?.retry ?? retry), (driver) => {
          const run = (): Effect.Effect<Handled<State, E>, Err | AppendError | ReadError, R> =>
            Effect.catchAll(attempt, (error) => {
              if (!isConflict(error)) return Effect.fail(error)
              cache?.delete(store, sid)
              // The stream is behind the version we started from: the snapshot (or cache) was ahead of it.
              if (typeof error.expected === "number" && error.actual < error.expected) replay = true
              return Effect.matchEffect(driver.next(error), {
                onFailure: () => Effect.fail(error),
                onSuccess: () => {
                  retries++
                  Telemetry.commandRetries.unsafeUpdate(1, [])
                  return run()
                }
              })
            })
          return run()
        })
      })).pipe(
        Effect.withSpan("Aggregate.handle", {
          captureStackTrace: false,
          attributes: { "aggregate.id": id, "aggregate.type": name, "command.type": commandType(command) }
        })
      )

  const snapshot: Aggregate<State, Command, E, Err, R>["snapshot"] = (id) =>
    Effect.gen(function*() {
      if (policy === undefined) {
        return yield* Effect.dieMessage(`aggregate ${name} has no snapshot policy (Aggregate.make({ snapshots }))`)
      }
      const store = yield* EventStore
      const snapshots = yield* Snapshot.SnapshotStore
      const sid = streamId(id)
      const current = yield* loadFrom(store, sid)
      if (current.version === 0) return 0
      yield* writeSnapshot(policy, snapshots, sid, current)
      return current.version
    }).pipe(
      Effect.withSpan("Aggregate.snapshot", {
        captureStackTrace: false,
        attributes: { "aggregate.id": id, "aggregate.type": name }
      })
    )

  return { name, events: registry, decider, streamId, load, read, handle, snapshot }
}

const isConflict = (error: unknown): error is ConcurrencyError =>
  typeof error === "object" && error !== null && (error as { _tag?: unknown })._tag === "ConcurrencyError"

const commandType = (command: unknown): string =>
  typeof command === "object" && command !== null && typeof (command as { _tag?: unknown })._tag === "string"
    ? (command as { _tag: string })._tag
    : typeof command

/** The errors `handle` can fail with besides the decider's own. @since 0.1.0 */
export type HandleError = AppendError | EventDecodeError | InvalidInput | StoreError
