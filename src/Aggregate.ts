/**
 * Aggregates as deciders: `initialState`, `decide(command, state)` and `evolve(state, event)` over events defined with
 * `effect/Schema`.
 *
 * `Aggregate.make` is a pure definition — what `Testing.spec` runs — and needs nothing. The command handler is built
 * by a layer, `Aggregate.layer(Account)`, with its stores, its state cache and its background snapshot writes, so
 * that every requirement shows in the types: the layer needs an `EventStore`, and a `SnapshotStore` when the
 * aggregate has a snapshot policy (a policy can never be silently off). Every command goes through one handler: load,
 * decide, append with the loaded version as the expected version, and on a `ConcurrencyError` load and decide again
 * under a `Schedule` the caller can override.
 *
 * Loading starts from the newest of: a cached state (opt-in `cache`), the latest snapshot (opt-in `snapshots`), or
 * the initial state — then folds the events after it. Whatever the start, a command's outcome is decided on the
 * state a full replay would give. (With a cache, a command decides on the cached state without reading the stream:
 * if another writer has moved the stream on, that decision never stands — its append conflicts, or, when it appends
 * nothing, it is checked against the stream — and `decide` runs again on the current state.) Event analytics
 * (opt-in) are folded alongside.
 *
 * @since 0.1.0
 */
import * as Context from "effect/Context"
import type * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Either from "effect/Either"
import * as Layer from "effect/Layer"
import * as Schedule from "effect/Schedule"
import type * as Scope from "effect/Scope"
import * as Stream from "effect/Stream"
import * as Analytics from "./Analytics.js"
import { ConcurrencyError, type EventDecodeError, InvalidInput, type StoreError } from "./Errors.js"
import * as Event from "./Event.js"
import { type AppendError, EventStore, type ReadError, type ReadOptions } from "./EventStore.js"
import { checkId, limits } from "./internal/codec.js"
import * as Handlers from "./internal/handler.js"
import type * as Snapshot from "./Snapshot.js"
import type * as StateCache from "./StateCache.js"

// --- the pure definition -------------------------------------------------------------------------------------------

/**
 * What `decide` returns: the events (none for an idempotent no-op), an `Either` of the events or a typed domain
 * error, or an `Effect` when deciding needs services (a fraud check, a clock).
 *
 * @since 0.1.0
 */
export type Decision<E, Err = never, R = never> =
  | ReadonlyArray<E>
  | Either.Either<ReadonlyArray<E>, Err>
  | Effect.Effect<ReadonlyArray<E>, Err, R>

/**
 * The pure core of an aggregate. `decide` returns the events a command produces or a typed domain error; `evolve`
 * folds one event into the state and must not fail.
 *
 * @example
 * ```ts
 * const decider = {
 *   initialState: 0,
 *   decide: (command: Withdraw, balance: number) =>
 *     command.amount > balance ? Either.left(new Overdraft({ balance })) : Either.right([Withdrawn.make(command)]),
 *   evolve: (balance: number, event: Withdrawn) => balance - event.amount
 * }
 * ```
 *
 * @since 0.1.0
 */
export interface Decider<State, Command, E, Err = never, R = never> {
  readonly initialState: State
  readonly decide: (command: Command, state: State) => Decision<E, Err, R>
  readonly evolve: (state: State, event: E) => State
}

/**
 * Runs `decide` and returns its decision as an Effect, whichever form it took.
 *
 * @since 0.1.0
 */
export const decide = <State, Command, E, Err, R>(
  decider: Decider<State, Command, E, Err, R>,
  command: Command,
  state: State
): Effect.Effect<ReadonlyArray<E>, Err, R> =>
  Effect.suspend(() => {
    const decision = decider.decide(command, state)
    // An Either is also an Effect in Effect 3: it is tested first, so its meaning never depends on that.
    if (Either.isEither(decision)) return decision
    if (Effect.isEffect(decision)) return decision
    return Effect.succeed(decision)
  })

/** @since 0.1.0 */
export interface Options<State, Command, E extends { readonly _tag: string }, Err, R> {
  readonly name: string
  readonly events: Event.Registry<E>
  readonly decider: Decider<State, Command, E, Err, R>
  /** Retry on conflict; default {@link defaultRetry}. */
  readonly retry?: Schedule.Schedule<unknown, ConcurrencyError>
  /** Snapshot the state every N events or on demand. The aggregate's layer then needs a `SnapshotStore`. */
  readonly snapshots?: Snapshot.Policy<State> | undefined
  /**
   * Keep up to `capacity` states in memory (LRU, in the aggregate's layer): a load reads only newer events, and a
   * command decides on the cached state without reading (its append expects the cached version).
   */
  readonly cache?: StateCache.Options | undefined
  /** Fold event analytics with the state (restored from snapshots). Off by default. */
  readonly analytics?: boolean | undefined
  /**
   * The unique values an event claims or releases (see `Event.NewEvent.claims`): checked and recorded with the
   * command's append, atomically. A value another stream holds fails the command with `UniqueConstraintViolation`.
   */
  readonly claims?:
    | ((event: E) => {
      readonly claims?: ReadonlyArray<Event.Claim>
      readonly releases?: ReadonlyArray<Event.Claim>
    } | undefined)
    | undefined
}

/** Where a load started and what it found. @since 0.1.0 */
export interface Loaded<State> {
  readonly state: State
  /** The stream's version the state reflects; 0 for a new aggregate. */
  readonly version: number
  /** Where the load started: a full replay, a snapshot, or the cached state. */
  readonly source: StateCache.Source
  /** The aggregate's event analytics, when the aggregate keeps them (`analytics: true`). */
  readonly analytics?: Analytics.Analytics
}

/** What a handled command produced. @since 0.1.0 */
export interface Handled<State, E> extends Loaded<State> {
  /** The new events as recorded, with the domain values `decide` returned (empty when it returned none). */
  readonly events: ReadonlyArray<Event.RecordedEvent<E>>
  /** The global position of the last new event; absent when `decide` returned no events. */
  readonly position?: number
  /**
   * How many times a concurrent writer forced load + decide to run again under the retry schedule. A cached state
   * found stale (the stream had moved on before the command started) is decided again without counting here.
   */
  readonly retries: number
  /**
   * `true` when the command's `commandId` had been handled already: nothing was decided or written, `events` and
   * `version` are the ones that handling appended, and `state` is the state at that version.
   */
  readonly replayed?: boolean
}

/** @since 0.1.0 */
export interface HandleOptions {
  readonly metadata?: Event.Metadata
  /** Overrides the aggregate's retry schedule for this command. */
  readonly retry?: Schedule.Schedule<unknown, ConcurrencyError>
  /**
   * Makes the command idempotent. Before deciding, the handler looks for the record of this id: if the command was
   * handled (and its record has not expired), it returns that result with `replayed: true` without deciding again.
   * Otherwise its events get ids derived from the command id and the versions they are written at (a retry after
   * a lost reply produces the same ids), and the append records the id in its transaction (see
   * `EventStore.AppendOptions.commandId`). An id used by another aggregate's stream is `InvalidInput`. A decision
   * that appends nothing records nothing.
   */
  readonly commandId?: string
  /** How long the record of `commandId` lasts; 24 hours when omitted. */
  readonly commandTtl?: Duration.DurationInput
}

/** The errors `handle` can fail with besides the decider's own. @since 0.1.0 */
export type HandleError = AppendError | EventDecodeError | InvalidInput | StoreError

/** Identifies the handler service of the aggregate named `Name`. @since 0.1.0 */
export interface Handler<Name extends string> {
  readonly _Handler: Name
}

/**
 * An aggregate's command handler: what `Aggregate.layer` builds and the aggregate's accessors use.
 *
 * @since 0.1.0
 */
export interface HandlerService<State, Command, E, Err, R> {
  /** The aggregate's current state. */
  readonly load: (id: string) => Effect.Effect<Loaded<State>, ReadError>
  /** Runs a command: load, decide, append; retried on `ConcurrencyError`. */
  readonly handle: (
    id: string,
    command: Command,
    options?: HandleOptions
  ) => Effect.Effect<Handled<State, E>, Err | HandleError, R>
  /**
   * Writes a snapshot of the current state now (the on-demand policy; works with any policy). Returns the version
   * it reflects (0, and nothing written, for an empty stream). `InvalidInput` when the aggregate has no policy.
   */
  readonly snapshot: (id: string) => Effect.Effect<number, ReadError | InvalidInput>
}

/**
 * An aggregate: its definition, and accessors that run through its handler (provided by `Aggregate.layer`).
 *
 * @since 0.1.0
 */
export interface Aggregate<
  State,
  Command,
  E extends { readonly _tag: string },
  Err = never,
  R = never,
  Name extends string = string,
  Needs = never
> {
  readonly name: Name
  readonly events: Event.Registry<E>
  readonly decider: Decider<State, Command, E, Err, R>
  readonly options: Options<State, Command, E, Err, R>
  /** The stream that holds aggregate `id`: `${name}-${id}`. */
  readonly streamId: (id: string) => string
  /** The handler's service tag. */
  readonly Handler: Context.Tag<Handler<Name>, HandlerService<State, Command, E, Err, R>>
  /** The aggregate's current state. */
  readonly load: (id: string) => Effect.Effect<Loaded<State>, ReadError, Handler<Name>>
  /** Runs a command: load, decide, append; retried on `ConcurrencyError`. */
  readonly handle: (
    id: string,
    command: Command,
    options?: HandleOptions
  ) => Effect.Effect<Handled<State, E>, Err | HandleError, Handler<Name> | R>
  /** Writes a snapshot of the current state now (see {@link HandlerService}). */
  readonly snapshot: (id: string) => Effect.Effect<number, ReadError | InvalidInput, Handler<Name>>
  /** The aggregate's events, decoded (straight from the store: no handler needed). */
  readonly read: (id: string, options?: ReadOptions) => Stream.Stream<Event.RecordedEvent<E>, ReadError, EventStore>
  /** What the aggregate's layer needs besides the `EventStore` (a `SnapshotStore` with a snapshot policy). */
  readonly _Needs?: (_: never) => Needs
}

/** Any aggregate. @since 0.1.0 */
export interface Any {
  readonly name: string
  readonly events: Event.Registry<any>
  readonly decider: Decider<any, any, any, any, any>
  readonly options: Options<any, any, any, any, any>
  readonly Handler: Context.Tag<any, any>
  readonly _Needs?: (_: never) => unknown
}

/** The services an aggregate's layer needs. @since 0.1.0 */
export type Requirements<A> = A extends { readonly _Needs?: (_: never) => infer Needs } ? EventStore | Needs : never

/** The handler service an aggregate's layer provides. @since 0.1.0 */
export type HandlerOf<A> = A extends { readonly Handler: Context.Tag<infer I, any> } ? I : never

/**
 * The default retry on a conflict: up to 5 more attempts with jittered exponential backoff from 5 ms.
 *
 * @since 0.1.0
 */
export const defaultRetry: Schedule.Schedule<unknown, ConcurrencyError> = Schedule.intersect(
  Schedule.jittered(Schedule.exponential("5 millis")),
  Schedule.recurs(5)
)

const isPositiveInteger = (n: unknown): boolean => typeof n === "number" && Number.isSafeInteger(n) && n > 0

/**
 * A definition that could only misbehave later (a snapshot policy that never writes, a cache of no entries) is
 * refused when it is made: `make` throws the `InvalidInput`, as `Event.registry` throws on a duplicate type.
 */
const checkDefinition = (options: Options<any, any, any, any, any>): void => {
  const fail = (field: string, reason: string) => {
    throw new InvalidInput({ field, reason })
  }
  const bad = checkId("name", options.name, limits.idLength)
  if (bad) throw bad
  const policy = options.snapshots
  if (policy !== undefined) {
    if (policy.every !== "on-demand" && !isPositiveInteger(policy.every)) {
      fail("snapshots.every", `must be a positive integer or "on-demand", got ${String(policy.every)}`)
    }
    if (policy.version !== undefined && !isPositiveInteger(policy.version)) {
      fail("snapshots.version", "must be a positive integer")
    }
    if (policy.write !== undefined && policy.write !== "inline" && policy.write !== "background") {
      fail("snapshots.write", `must be "inline" or "background"`)
    }
  }
  if (options.cache !== undefined && !isPositiveInteger(options.cache.capacity)) {
    fail("cache.capacity", "must be a positive integer")
  }
}

/**
 * Defines an aggregate: a pure value. Run its commands through `Aggregate.layer(aggregate)`. The name is the
 * aggregate's identity: its streams are `${name}-${id}` and its handler's service is keyed by it, so two aggregates
 * must not share a name. Throws `InvalidInput` for a definition that cannot work (an empty name, a snapshot policy's
 * `every` that is not a positive integer or `"on-demand"`, a cache capacity below 1).
 *
 * @example
 * ```ts
 * const Counter = Aggregate.make({
 *   name: "Counter",
 *   events: Event.registry([Incremented]),
 *   decider: {
 *     initialState: 0,
 *     decide: (command: { readonly by: number }, _state: number) => [Incremented.make({ by: command.by })],
 *     evolve: (state, event) => state + event.by
 *   },
 *   snapshots: { schema: Schema.Number, every: 100 }
 * })
 * // Counter.handle("c-1", { by: 2 }).pipe(Effect.provide(Aggregate.layer(Counter)), ...)
 * ```
 *
 * @since 0.1.0
 */
export const make = <
  State,
  Command,
  E extends { readonly _tag: string },
  Err = never,
  R = never,
  const Name extends string = string,
  P extends Snapshot.Policy<State> | undefined = undefined
>(
  options: Options<State, Command, E, Err, R> & { readonly name: Name; readonly snapshots?: P }
): Aggregate<State, Command, E, Err, R, Name, [P] extends [undefined] ? never : Snapshot.SnapshotStore> => {
  const { decider, events, name } = options
  checkDefinition(options)
  const Handler = Context.GenericTag<Handler<Name>, HandlerService<State, Command, E, Err, R>>(
    `effect-eventstore/Aggregate/${name}`
  )
  return {
    name,
    events,
    decider,
    options,
    streamId: (id) => `${name}-${id}`,
    Handler,
    load: (id) => Effect.flatMap(Handler, (handler) => handler.load(id)),
    handle: (id, command, handleOptions) => Effect.flatMap(Handler, (handler) => handler.handle(id, command, handleOptions)),
    snapshot: (id) => Effect.flatMap(Handler, (handler) => handler.snapshot(id)),
    read: (id, readOptions) =>
      Stream.unwrap(Effect.map(EventStore, (store) => Event.decodeStream(events)(store.read(`${name}-${id}`, readOptions))))
  }
}

// --- the handler ---------------------------------------------------------------------------------------------------

/** @since 0.1.0 */
export interface LayerOptions {
  /**
   * Overrides every snapshot policy's `write`: `"inline"` awaits each snapshot write inside the command (what
   * `Testing.layer` uses). Default: each policy's own (`"background"` unless it says otherwise).
   */
  readonly snapshotWrites?: "inline" | "background"
  /** When the layer's scope closes, how long background snapshot writes may take before they are interrupted; 5 s. */
  readonly shutdownGrace?: Duration.DurationInput
  /**
   * Overrides the aggregate's retry on conflict (a command's own `retry` still wins). `Testing.layer` uses a retry
   * without delays, so that conflicts in tests never wait on the `TestClock`.
   */
  readonly retry?: Schedule.Schedule<unknown, ConcurrencyError>
}

/**
 * Builds an aggregate's command handler with the stores in context. Its cache and its background snapshot writes
 * belong to the scope: closing it lets in-flight snapshot writes finish (up to `shutdownGrace`), then stops them.
 *
 * @since 0.1.0
 */
export const handler: <State, Command, E extends { readonly _tag: string }, Err, R, Name extends string, Needs>(
  aggregate: Aggregate<State, Command, E, Err, R, Name, Needs>,
  layerOptions?: LayerOptions
) => Effect.Effect<HandlerService<State, Command, E, Err, R>, never, EventStore | Needs | Scope.Scope> = Handlers.make

/**
 * The aggregate's command handler as a layer: needs an `EventStore`, and a `SnapshotStore` when the aggregate has a
 * snapshot policy. Its state cache and background snapshot writes live (and end) with the layer.
 *
 * @example
 * ```ts
 * const program = Account.handle("42", Deposit.make({ amount: 100 }))
 * program.pipe(Effect.provide(Aggregate.layer(Account)), Effect.provide(Sqlite.layer({ filename: "bank.db" })))
 * ```
 *
 * @since 0.1.0
 */
export const layer = <State, Command, E extends { readonly _tag: string }, Err, R, Name extends string, Needs>(
  aggregate: Aggregate<State, Command, E, Err, R, Name, Needs>,
  options?: LayerOptions
): Layer.Layer<Handler<Name>, never, EventStore | Needs> => Layer.scoped(aggregate.Handler, handler(aggregate, options))
