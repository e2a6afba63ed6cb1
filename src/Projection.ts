/**
 * Projections: read models built from the global log. A projection is a name, the event registry it reads, and a
 * handler per event type; `layer` runs several of them in the background (catch up from the checkpoint, then stay
 * live), each with its own checkpoint in a `CheckpointStore`, and answers what each is doing (`Projections`).
 *
 * Delivery depends on the checkpoint store:
 * - SQL (`SqlProjection.layer`): a batch's handler statements and the checkpoint move commit in one transaction on
 *   the `SqlClient` the handlers use, so a read model in that database sees every event exactly once, across crashes.
 * - memory (`layerMemory`), or handlers with side effects outside that database (e-mail, another service): at least
 *   once — the checkpoint is saved after the batch, so a batch cut short is handled again. Such handlers deduplicate
 *   by `event.eventId`, which is stable across deliveries.
 *
 * @since 0.1.0
 */
import type * as SqlClient from "@effect/sql/SqlClient"
import type { SqlError } from "@effect/sql/SqlError"
import type * as Statement from "@effect/sql/Statement"
import * as Context from "effect/Context"
import type * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import type * as Schedule from "effect/Schedule"
import * as Schema from "effect/Schema"
import type * as Scope from "effect/Scope"
import type * as Stream from "effect/Stream"
import type { InlineProjectionError, InvalidInput, StoreError } from "./Errors.js"
import * as Event from "./Event.js"
import type { EventStore } from "./EventStore.js"
import * as Runner from "./internal/projectionRunner.js"
import * as Statements from "./internal/statements.js"

// --- errors --------------------------------------------------------------------------------------------------------

/**
 * No projection of that name runs in this `Projections` layer.
 *
 * @since 0.1.0
 */
export class ProjectionNotFound extends Schema.TaggedError<ProjectionNotFound>()("ProjectionNotFound", {
  projection: Schema.String
}) {
  override get message(): string {
    return `no projection named ${JSON.stringify(this.projection)} runs here`
  }
}

/**
 * Why a projection stopped: the event it could not get past (its position, id, stream and type; `eventId` and
 * `streamId` are empty when the stored row itself could not be read) and the reason. The projection stays at its
 * checkpoint until an operator resumes it or parks the event.
 *
 * @since 0.1.0
 */
export class ProjectionFailed extends Schema.TaggedError<ProjectionFailed>()("ProjectionFailed", {
  projection: Schema.String,
  position: Schema.Number,
  eventId: Schema.String,
  streamId: Schema.String,
  eventType: Schema.String,
  reason: Schema.String
}) {
  override get message(): string {
    return `projection ${JSON.stringify(this.projection)} failed at position ${this.position} (${this.eventType}): ${this.reason}`
  }
}

/**
 * `awaitPosition` gave up: the projection had not reached `position` within the timeout.
 *
 * @since 0.1.0
 */
export class ProjectionTimeout extends Schema.TaggedError<ProjectionTimeout>()("ProjectionTimeout", {
  projection: Schema.String,
  position: Schema.Number,
  checkpoint: Schema.Number
}) {
  override get message(): string {
    return `projection ${JSON.stringify(this.projection)} is at ${this.checkpoint}, not yet at ${this.position}`
  }
}

/**
 * An operation that needs the projection in another state (`park` on a projection that has not failed).
 *
 * @since 0.1.0
 */
export class ProjectionStateError extends Schema.TaggedError<ProjectionStateError>()("ProjectionStateError", {
  projection: Schema.String,
  state: Schema.String,
  reason: Schema.String
}) {
  override get message(): string {
    return `projection ${JSON.stringify(this.projection)} is ${this.state}: ${this.reason}`
  }
}

/**
 * The checkpoint was not where this runner left it: another process took the projection over (its lease had
 * expired). Nothing of the batch was written; the runner goes back to standby.
 *
 * @since 0.1.0
 */
export class CheckpointConflict extends Schema.TaggedError<CheckpointConflict>()("CheckpointConflict", {
  projection: Schema.String,
  expected: Schema.Number
}) {
  override get message(): string {
    return `projection ${JSON.stringify(this.projection)}: the checkpoint moved away from ${this.expected} (another runner took it over)`
  }
}

// --- definitions ---------------------------------------------------------------------------------------------------

/**
 * One handler per event type, typed by the registry's schemas. Each gets the decoded event in its envelope
 * (`event.payload` is the domain value; `event.eventId`, `position`, `streamId` are the stored ones). A handler is
 * keyed by its type's current name and also receives the events stored under the type's old names (see
 * `Event.RegistryOptions`), decoded as the current type (`event.type` is the current name).
 *
 * @since 0.1.0
 */
export type Handlers<A extends { readonly _tag: string }, E, R> = {
  readonly [K in A["_tag"]]?: (event: Event.RecordedEvent<Extract<A, { readonly _tag: K }>>) => Effect.Effect<void, E, R>
}

/**
 * A projection definition (see `make`).
 *
 * @since 0.1.0
 */
export interface Projection<A extends { readonly _tag: string }, E, R> {
  readonly name: string
  readonly events: Event.Registry<A>
  /** As given, and (made by `make` or `sql`) under the old names of renamed types too: runners look up stored names. */
  readonly handlers: Handlers<A, E, R>
  readonly streamTypes: ReadonlyArray<string> | undefined
  readonly init: ReadonlyArray<Migration<E, R>>
  readonly reset: Effect.Effect<void, E, R> | undefined
  /**
   * The statement handlers of a projection made by `sql` (`handlers` then runs them through the `SqlClient`), under
   * the old names of renamed types too.
   */
  readonly statements: SqlHandlers<A> | undefined
  /** The read model's tables, named through the projection for blue/green rebuilds (see `sql`). */
  readonly tables: ReadonlyArray<string> | undefined
  /** The handler of a projection made by `batch`: every event of each batch, undecoded. */
  readonly batch: ((events: ReadonlyArray<Event.RecordedEvent>) => Effect.Effect<void, E, R>) | undefined
}

/**
 * Resolves a read model table's name (as listed in a projection's `tables`) to the table of the generation being
 * written; other names are returned as they are.
 *
 * @since 0.1.0
 */
export type TableName = (name: string) => string

/**
 * A migration of a projection's read model: an Effect, or a function of the table names of the generation it
 * creates (for a projection with `tables`).
 *
 * @since 0.1.0
 */
export type Migration<E, R> = Effect.Effect<void, E, R> | ((table: TableName) => Effect.Effect<void, E, R>)

/**
 * The table of generation `generation` behind the view `name` of a projection with `tables`.
 *
 * @since 0.1.0
 */
export const generationTable = (name: string, generation: number): string => `${name}__g${generation}`

/**
 * One handler per event type that returns the SQL statements to run for the event (built with the `sql` template of
 * the client it is given, not run): the library runs them, in the batch's transaction.
 *
 * @since 0.1.0
 */
export type SqlHandlers<A extends { readonly _tag: string }> = {
  readonly [K in A["_tag"]]?: (
    event: Event.RecordedEvent<Extract<A, { readonly _tag: K }>>,
    sql: SqlClient.SqlClient,
    table: TableName
  ) => Statement.Statement<unknown> | ReadonlyArray<Statement.Statement<unknown>>
}

/** The services a projection's handlers, migrations and reset need. @since 0.1.0 */
export type Requirements<P> = P extends Projection<any, any, infer R> ? R : never

/**
 * Defines a projection.
 *
 * - `handlers`: one per event type it handles. Events of other types (and of other registries) are skipped and
 *   still move the checkpoint on.
 * - `streamTypes`: only events of streams of these types are handled (all when absent).
 * - `init`: the read model's migrations, in order. Each is applied once per projection, in a transaction of its own
 *   with the record that it ran (SQL checkpoint stores); appending one to the list applies it at the next start.
 * - `reset`: empties the read model for a rebuild (run with the checkpoint's move back to 0, in one transaction).
 *
 * A projection's `name` identifies its checkpoint: renaming it starts from the beginning. It is at most 200
 * characters, without `#`; anything else throws a `TypeError` (a definition is code, not input).
 *
 * @example
 * ```ts
 * const Balances = Projection.make({
 *   name: "balances",
 *   events: AccountEvents,
 *   init: [Effect.flatMap(SqlClient.SqlClient, (sql) =>
 *     sql`CREATE TABLE balances (id TEXT PRIMARY KEY, balance INTEGER NOT NULL)`)],
 *   handlers: {
 *     Deposited: (event) => Effect.flatMap(SqlClient.SqlClient, (sql) =>
 *       sql`INSERT INTO balances VALUES (${event.streamId}, ${event.payload.amount})
 *           ON CONFLICT (id) DO UPDATE SET balance = balance + excluded.balance`)
 *   }
 * })
 * ```
 *
 * @since 0.1.0
 */
export const make = <A extends { readonly _tag: string }, E = never, R = never>(options: {
  readonly name: string
  readonly events: Event.Registry<A>
  readonly handlers: Handlers<A, E, R>
  readonly streamTypes?: ReadonlyArray<string>
  readonly init?: ReadonlyArray<Effect.Effect<void, E, R>>
  readonly reset?: Effect.Effect<void, E, R>
}): Projection<A, E, R> => {
  nameCheck(options.name)
  return {
    name: options.name,
    events: options.events,
    handlers: routed(options.events, options.handlers) as Handlers<A, E, R>,
    streamTypes: options.streamTypes !== undefined && options.streamTypes.length > 0 ? options.streamTypes : undefined,
    init: options.init ?? [],
    reset: options.reset,
    statements: undefined,
    tables: undefined,
    batch: undefined
  }
}

/**
 * What a `batch` handler fails with to name the event of its batch it cannot get past: the projection then stops
 * at that event (not the batch's first), so that `Projections.park` skips that one event.
 *
 * @since 0.1.0
 */
export class BatchEventFailed extends Schema.TaggedError<BatchEventFailed>()("BatchEventFailed", {
  position: Schema.Number,
  reason: Schema.String
}) {
  override get message(): string {
    return `the event at position ${this.position} failed: ${this.reason}`
  }
}

/**
 * Defines a projection with one handler for each batch of the log: it gets every event of the batch (of
 * `streamTypes` when given), in log order and undecoded (`payload` as stored), and the checkpoint moves past the
 * batch after the handler succeeds. For work outside the checkpoint store's database — shipping events to a broker
 * (the bus forwarder is one), a search index, another service — where a batch is cheaper than its events one by
 * one. At least once with every checkpoint store: a batch cut short is handed over again, whole.
 *
 * A failing handler is retried under the runner's `retry` like any projection's, then the projection stops
 * (`failed`) at the batch's first event — or at the event a `BatchEventFailed` names — until it is resumed or the
 * event is parked.
 *
 * @since 0.1.0
 */
export const batch = <E = never, R = never>(options: {
  readonly name: string
  readonly handler: (events: ReadonlyArray<Event.RecordedEvent>) => Effect.Effect<void, E, R>
  readonly streamTypes?: ReadonlyArray<string>
  readonly init?: ReadonlyArray<Effect.Effect<void, E, R>>
  readonly reset?: Effect.Effect<void, E, R>
}): Projection<any, E, R> => {
  nameCheck(options.name)
  return {
    name: options.name,
    events: Event.registry([]) as unknown as Event.Registry<any>,
    handlers: Object.create(null) as Handlers<any, E, R>,
    streamTypes: options.streamTypes !== undefined && options.streamTypes.length > 0 ? options.streamTypes : undefined,
    init: options.init ?? [],
    reset: options.reset,
    statements: undefined,
    tables: undefined,
    batch: options.handler
  }
}

/**
 * `handlers` keyed by every name their types are stored under (`Event.Registry.storedNames`): the runners (and
 * inline projections) look a handler up by the stored event's type, so an event stored under a renamed type's old
 * name reaches the handler of the current one. Null prototype: a stored type named `constructor` or `toString`
 * finds no handler.
 */
const routed = <H>(events: Event.Registry<any>, handlers: object): Record<string, H | undefined> => {
  const out: Record<string, H | undefined> = Object.create(null)
  for (const [type, handler] of Object.entries(handlers as Record<string, H | undefined>)) {
    if (handler === undefined) continue
    for (const name of events.storedNames(type)) out[name] = handler
  }
  return out
}

const nameCheck = (name: unknown) => {
  // "#" is reserved: the checkpoint of a blue/green rebuild's next generation is named `<name>#g<n>`
  if (typeof name !== "string" || name.length === 0 || name.length > 200 || name.includes("#")) {
    throw new TypeError("a projection's name must be a non-empty string of at most 200 characters, without \"#\"")
  }
}

/**
 * Defines a projection whose handlers return SQL statements instead of running them: pure functions of the event
 * (and the `SqlClient` whose `sql` template builds the statements). Everything else is as in `make`.
 *
 * Where the read model lives in the event store's own SQLite database (`Sqlite.layer` with `SqlProjection.layer` on
 * its `SqlClient`), the runner reads each batch, runs its statements and moves the checkpoint in one synchronous
 * transaction on the store's writer connection — the raw driver's way, several times faster than handlers that are
 * Effects. Elsewhere the statements run through the `SqlClient` like `make`'s handlers.
 *
 * Blue/green: with `tables`, the read model's tables are named through the projection. Handlers and migrations
 * write `table("balances")` (the table of the generation being built: `balances__g1`, `balances__g2` …), and readers
 * query the view `balances`, which the library points at the active generation. `rebuild` then builds generation
 * n+1 from the beginning of the log while readers keep reading generation n, and switches the views, the
 * checkpoint and the generation in one transaction (dropping generation n's tables): readers never see an empty or
 * half-built model. (The old generation is not updated while the new one builds: it serves reads as it was.)
 *
 * @example
 * ```ts
 * const Balances = Projection.sql({
 *   name: "balances",
 *   events: AccountEvents,
 *   init: [Effect.flatMap(SqlClient.SqlClient, (sql) =>
 *     sql`CREATE TABLE balances (id TEXT PRIMARY KEY, balance INTEGER NOT NULL)`)],
 *   handlers: {
 *     Deposited: (event, sql) =>
 *       sql`INSERT INTO balances VALUES (${event.streamId}, ${event.payload.amount})
 *           ON CONFLICT (id) DO UPDATE SET balance = balance + excluded.balance`
 *   }
 * })
 * ```
 *
 * @since 0.1.0
 */
export const sql = <A extends { readonly _tag: string }, E = never, R = never>(options: {
  readonly name: string
  readonly events: Event.Registry<A>
  readonly handlers: SqlHandlers<A>
  readonly streamTypes?: ReadonlyArray<string>
  readonly init?: ReadonlyArray<Migration<E, R>>
  readonly reset?: Effect.Effect<void, E, R>
  readonly tables?: ReadonlyArray<string>
}): Projection<A, E | SqlError, R | SqlClient.SqlClient> => {
  nameCheck(options.name)
  for (const table of options.tables ?? []) {
    if (!/^[A-Za-z_][A-Za-z0-9_]{0,50}$/.test(table)) {
      throw new TypeError(`a projection's table name must be a plain SQL identifier of at most 51 characters: ${table}`)
    }
  }
  const statements = routed<Statements.StatementHandler>(options.events, options.handlers)
  const handlers: Record<string, (event: Event.RecordedEvent<any>) => Effect.Effect<void, SqlError, SqlClient.SqlClient>> =
    Object.create(null)
  for (const [type, handler] of Object.entries(statements)) {
    handlers[type] = Statements.asEffect(handler!, (table) => table)
  }
  return {
    name: options.name,
    events: options.events,
    handlers: handlers as Handlers<A, E | SqlError, R | SqlClient.SqlClient>,
    streamTypes: options.streamTypes !== undefined && options.streamTypes.length > 0 ? options.streamTypes : undefined,
    init: options.init ?? [],
    reset: options.reset,
    statements: statements as SqlHandlers<A>,
    tables: options.tables !== undefined && options.tables.length > 0 ? options.tables : undefined,
    batch: undefined
  }
}

// --- checkpoint stores ---------------------------------------------------------------------------------------------

/**
 * An event a projection skipped on an operator's word (`Projections.park`), with the failure that stopped it.
 *
 * @since 0.1.0
 */
export interface ParkedEvent {
  readonly projection: string
  readonly position: number
  /** Empty when the stored row itself could not be read. */
  readonly eventId: string
  readonly streamId: string
  readonly eventType: string
  readonly reason: string
  /** Epoch milliseconds. */
  readonly parkedAt: number
}

/**
 * Where projections keep their checkpoints, leases, applied migrations and parked events. Every store passes the
 * conformance suite in `test/conformance/Projection.ts`. Its operations are the runner's; applications use
 * `Projections`.
 *
 * @since 0.1.0
 */
export interface CheckpointStoreService {
  /**
   * `true`: `commit` runs the batch's work and the checkpoint move in one transaction (a read model written by that
   * work sees each event exactly once). `false`: the work runs first, the checkpoint is saved after it (at least once).
   */
  readonly exactlyOnce: boolean
  /**
   * Takes or renews the projection's lease for `owner` until `ttl` from now; `false` when another owner holds an
   * unexpired one. Creates the projection's checkpoint at 0 the first time. With `renew`, only a lease `owner`
   * still holds is extended (one that was taken over or released in between is not taken back).
   */
  readonly acquire: (
    projection: string,
    owner: string,
    ttl: Duration.Duration,
    renew?: boolean
  ) => Effect.Effect<boolean, StoreError>
  /** Gives the lease up (a standby can take over at once). */
  readonly release: (projection: string, owner: string) => Effect.Effect<void, StoreError>
  /** The saved checkpoint: the position of the last event dealt with; 0 before the first. */
  readonly load: (projection: string) => Effect.Effect<number, StoreError>
  /**
   * Runs `work` and moves the checkpoint from `from` to `to` (and records `park` when given), as one transaction
   * where the store has them. Fails with `CheckpointConflict` when the checkpoint is not at `from`, `to` is not past
   * it, or `owner` no longer holds the lease: a store with transactions then writes nothing of the batch.
   */
  readonly commit: <E, R>(
    projection: string,
    owner: string,
    from: number,
    to: number,
    work: Effect.Effect<void, E, R>,
    park?: ParkedEvent
  ) => Effect.Effect<void, E | CheckpointConflict | StoreError, R>
  /**
   * Applies the projection's migration `id` (1, 2, …) unless it was applied before, with the record that it was
   * (one transaction where the store has them). `true` when it ran now.
   */
  readonly migrate: <E, R>(
    projection: string,
    id: number,
    migration: Effect.Effect<void, E, R>
  ) => Effect.Effect<boolean, E | StoreError, R>
  /** Runs `work` (the read model's reset) and moves the checkpoint back to 0, as one transaction where it can. */
  readonly reset: <E, R>(
    projection: string,
    owner: string,
    work: Effect.Effect<void, E, R>
  ) => Effect.Effect<void, E | CheckpointConflict | StoreError, R>
  /** The events parked for the projection, by position. */
  readonly parked: (projection: string) => Effect.Effect<ReadonlyArray<ParkedEvent>, StoreError>
  /** The generation of the projection's tables (blue/green); 1 before any rebuild. */
  readonly generation: (projection: string) => Effect.Effect<number, StoreError>
  /**
   * Ends a blue/green rebuild, as one transaction where the store has them: the projection takes the checkpoint of
   * `shadow` (the checkpoint the rebuild moved) and `generation`, `shadow` is removed, and `work` runs (the switch
   * of the views). Returns the checkpoint. `CheckpointConflict` when `owner` does not hold both.
   */
  readonly promote: <E, R>(
    projection: string,
    owner: string,
    shadow: string,
    generation: number,
    work: Effect.Effect<void, E, R>
  ) => Effect.Effect<number, E | CheckpointConflict | StoreError, R>
  /** Forgets a checkpoint and its applied migrations (what an abandoned rebuild left). */
  readonly discard: (projection: string) => Effect.Effect<void, StoreError>
  /**
   * Replaces the `reason` of every parked event (of any projection) whose stream is one of `streamIds` with `reason`
   * (`Privacy.forget`: a failure's text may quote a forgotten person's data). Returns how many it changed. Optional:
   * a store without it keeps reasons as they are.
   *
   * `streamIds` are compared with `ParkedEvent.streamId` as recorded: a stream's id as events carry it, a tenant's
   * stream without its tenant (not the key it is stored under). A store of the whole database therefore redacts
   * that id in every tenant's projections; a tenant's store (`Tenancy.checkpointStore`) in that tenant's only. A
   * parked event whose reason already is `reason` is not counted.
   */
  readonly redactParked?: (streamIds: ReadonlyArray<string>, reason: string) => Effect.Effect<number, StoreError>
}

/** @since 0.1.0 */
export class CheckpointStore extends Context.Tag("effect-eventstore/CheckpointStore")<
  CheckpointStore,
  CheckpointStoreService
>() {}

/**
 * Checkpoints in memory: for tests, and for read models that live in memory themselves (they are rebuilt from the
 * log at every start anyway). At least once: the checkpoint moves after the batch's work.
 *
 * @since 0.1.0
 */
export const makeMemory: Effect.Effect<CheckpointStoreService> = Effect.sync(() => Runner.memoryCheckpoints())

/** @since 0.1.0 */
export const layerMemory: Layer.Layer<CheckpointStore> = Layer.effect(CheckpointStore, makeMemory)

// --- running -------------------------------------------------------------------------------------------------------

/**
 * - `standby`: waiting for the lease another process holds on this projection.
 * - `catching-up`: behind the head of the log, handling batches.
 * - `live`: caught up; handles each commit as it lands.
 * - `rebuilding`: replaying from 0 after `rebuild`.
 * - `failed`: stopped on an event (see `failure`) until `resume` or `park`.
 * - `stopped`: its layer's scope closed.
 *
 * @since 0.1.0
 */
export type State = "standby" | "catching-up" | "live" | "rebuilding" | "failed" | "stopped"

/** @since 0.1.0 */
export interface Status {
  readonly name: string
  readonly state: State
  /**
   * The position of the last event the projection has dealt with (handled, skipped or parked). Events it skips
   * are not saved one by one: after a restart it may read them again (and skip them again).
   */
  readonly checkpoint: number
  /** The head of the log when the projection last looked (after its last batch). */
  readonly head: number
  /** `head - checkpoint`: an upper bound of the events still to deal with (positions may have holes). */
  readonly lag: number
  /** While behind: how long ago the last event it dealt with was recorded, in ms. 0 when caught up. */
  readonly lagMillis: number
  /** Events dealt with per second, over the last few seconds. */
  readonly eventsPerSecond: number
  /** Why it stopped, while `failed`. */
  readonly failure: ProjectionFailed | undefined
  /** While `rebuilding` (and in the last status of a rebuild): how far it is. */
  readonly rebuild: RebuildProgress | undefined
}

/**
 * How far a rebuild is. `total` is the head of the log when the rebuild began (an upper bound of the events to
 * replay: positions may have holes); the rebuild ends when the projection has caught up with the head, which may
 * have moved on meanwhile.
 *
 * @since 0.1.0
 */
export interface RebuildProgress {
  readonly projection: string
  /** Events dealt with since the rebuild began. */
  readonly processed: number
  readonly total: number
  readonly eventsPerSecond: number
  /** Estimated ms to the end, from the current rate; `undefined` before there is one. */
  readonly etaMillis: number | undefined
  /** Whether the projection has caught up: the last progress of a rebuild. */
  readonly done: boolean
}

/**
 * The projections running under one `layer`.
 *
 * @since 0.1.0
 */
export interface ProjectionsService {
  readonly names: ReadonlyArray<string>
  readonly status: (name: string) => Effect.Effect<Status, ProjectionNotFound>
  /** The current status, then each change (every batch, every state change). */
  readonly changes: (name: string) => Stream.Stream<Status, ProjectionNotFound>
  /**
   * Waits until the projection has dealt with every event up to `position` (an `AppendResult`'s or a handled
   * command's `position`, or `EventStore.head`): read-your-writes for a read model. In a process where the
   * projection stands by (another process runs it), it follows the checkpoint that process saves (every 50 ms); events
   * the projection skips are not saved one by one there, so it may wait for the next handled event or the timeout.
   * Fails with `ProjectionFailed`
   * when the projection is stopped on an event at or before `position`, and with `ProjectionTimeout` after
   * `timeout`.
   */
  readonly awaitPosition: (
    name: string,
    position: number,
    timeout: Duration.DurationInput
  ) => Effect.Effect<void, ProjectionNotFound | ProjectionFailed | ProjectionTimeout>
  /** Retries a failed projection from its checkpoint. */
  readonly resume: (name: string) => Effect.Effect<void, ProjectionNotFound | ProjectionStateError>
  /**
   * Skips the event a failed projection stopped on: records it in the parked events (with the failure) together with
   * the checkpoint's move past it, and goes on. Returns what was parked once it is recorded; fails with
   * `ProjectionFailed` if the projection stops again before it gets there (another event before it failed), and with
   * `ProjectionStateError` when the projection is not failed, its failure was already resumed or parked, it did not
   * stop on an event, or its layer stops or loses the lease first.
   */
  readonly park: (
    name: string
  ) => Effect.Effect<ParkedEvent, ProjectionNotFound | ProjectionStateError | ProjectionFailed>
  /** The events parked for a projection. */
  readonly parked: (name: string) => Effect.Effect<ReadonlyArray<ParkedEvent>, ProjectionNotFound | StoreError>
  /**
   * Rebuilds a projection from the beginning of the log: once its in-flight batch is done, runs its `reset` and moves
   * its checkpoint back to 0 in one transaction, then replays (state `rebuilding`) until it has caught up with the
   * head. The stream starts the rebuild when it is run, emits the progress after every batch (and the projection
   * logs a line every 5 seconds), ends with a `done` progress, and fails with `ProjectionFailed` if the projection
   * stops on an event meanwhile — an error is never only a log line. Fails with `ProjectionStateError` for a
   * projection without `reset`. A projection with `tables` (see `sql`) is rebuilt blue/green instead: no reset, the
   * new generation is built beside the one readers use and replaces it in one transaction.
   *
   * Interrupting the stream does not stop the rebuild.
   */
  readonly rebuild: (
    name: string
  ) => Stream.Stream<RebuildProgress, ProjectionNotFound | ProjectionStateError | ProjectionFailed | StoreError>
}

/** @since 0.1.0 */
export class Projections extends Context.Tag("effect-eventstore/Projections")<Projections, ProjectionsService>() {}

/** @since 0.1.0 */
export interface Options {
  /** Events per batch (one transaction each); default 500, at most 10000. */
  readonly batchSize?: number
  /**
   * How a failing batch is retried before the projection moves to `failed`; default: 5 retries, exponentially from
   * 100 ms. Events that do not decode are not retried.
   */
  readonly retry?: Schedule.Schedule<unknown, unknown>
  /**
   * How long a projection's lease lasts without renewal (it is renewed every third of it); default 10 seconds. A
   * standby in another process takes over at most this long after the active runner died.
   */
  readonly leaseTtl?: Duration.DurationInput
  /**
   * Health: a projection more than this many events behind the head reports `degraded` (with its lag) to the
   * `Health` service, when one is in context; default 1000. A failed one reports `unhealthy`.
   */
  readonly lagThreshold?: number
}

/**
 * Runs `projections` in the background until the scope closes (each stops after its in-flight batch). Each
 * projection runs in only one process at a time per checkpoint store: the others wait as standbys. With a `Health`
 * service in context, registers one check, `projections`, reported per projection as `projections/<name>`.
 *
 * @since 0.1.0
 */
export const start = <const P extends ReadonlyArray<Projection<any, any, any>>>(
  projections: P,
  options?: Options
): Effect.Effect<
  ProjectionsService,
  InvalidInput,
  Scope.Scope | EventStore | CheckpointStore | Requirements<P[number]>
> => Runner.make(projections as ReadonlyArray<Projection<any, any, any>>, options ?? {}) as any

/**
 * `start` as a layer. Fails with `InvalidInput` for a bad option or two projections of one name.
 *
 * @example
 * ```ts
 * const ReadSide = Projection.layer([Balances, DailyTotals]).pipe(
 *   Layer.provide(SqlProjection.layer),
 *   Layer.provideMerge(Sqlite.layer({ filename: "bank.db" }))
 * )
 * ```
 *
 * @since 0.1.0
 */
export const layer = <const P extends ReadonlyArray<Projection<any, any, any>>>(
  projections: P,
  options?: Options
): Layer.Layer<Projections, InvalidInput, EventStore | CheckpointStore | Requirements<P[number]>> =>
  Layer.scoped(Projections, start(projections, options))

/**
 * Runs `projections` (made with `sql`) inline: their statements run inside each append's own transaction, in a
 * savepoint with the append, so their read models never lag the log. A handler that throws, or an event that does
 * not decode, fails that append alone with `InlineProjectionError` (nothing of it written); the other appends of its
 * group commit.
 *
 * When the layer starts it applies the projections' migrations and catches each one up with the log; from then on,
 * each append also handles any earlier event the projection has not seen (appended by a process that does not run
 * it). Every process that appends should run the same inline projections: otherwise the events it appends reach the
 * read model only with the next append of a process that does, and if one of them fails its handler, every append
 * fails with that error until the handler is fixed. Do not also run an inline projection with `start`.
 *
 * Needs the SQLite file store (`Sqlite.layer`) and `SqlProjection.layer` on its `SqlClient`; anything else fails the
 * layer with `InvalidInput`.
 *
 * @since 0.1.0
 */
export const layerInline = <const P extends ReadonlyArray<Projection<any, any, any>>>(
  projections: P
): Layer.Layer<
  never,
  InvalidInput | StoreError | InlineProjectionError,
  EventStore | CheckpointStore | Requirements<P[number]>
> => Layer.scopedDiscard(Runner.makeInline(projections)) as any
