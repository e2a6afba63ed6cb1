/**
 * The event store over `@effect/sql`'s `SqlClient`: the implementation behind `Sqlite.layer` (and the PostgreSQL
 * layer to come). Dialect differences are confined to the DDL, the append statement and error classification.
 *
 * An append is one statement: a conditional multi-row `INSERT … SELECT` that reads the stream's head and writes the
 * new events only if the expected version holds, so the check and the write are atomic without a transaction; the
 * unique index on (stream, version) is the backstop against any other writer. Batches too large for one statement
 * run as several such statements in one transaction.
 *
 * @since 0.1.0
 */
import type { Connection } from "@effect/sql/SqlConnection"
import * as SqlClient from "@effect/sql/SqlClient"
import type { SqlError } from "@effect/sql/SqlError"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Either from "effect/Either"
import * as Exit from "effect/Exit"
import * as Layer from "effect/Layer"
import * as Option from "effect/Option"
import * as Schedule from "effect/Schedule"
import type * as Scope from "effect/Scope"
import { StoreError } from "./Errors.js"
import {
  type AppendError,
  type AppendOptions,
  appendSpan,
  type AppendResult,
  type Backend,
  EventStore,
  type EventStoreService,
  fromBackend,
  nonEmpty
} from "./EventStore.js"
import type { NewEvent } from "./Event.js"
import { type EventRow, type PreparedAppend, prepareAppend, recorded } from "./internal/codec.js"
import { isSync } from "./internal/connection.js"
import * as GroupCommit from "./internal/groupCommit.js"
import * as Migrations from "./internal/migrations.js"
import { isBusy, tables } from "./internal/migrations.js"
import { Signal } from "./internal/paging.js"
import { type AppendFailure, type Outcome, sqlError, type Written, writeGroup, writeGroupSync } from "./internal/sqlWrite.js"
import * as Telemetry from "./Telemetry.js"

/** @since 0.1.0 */
export interface Options {
  /**
   * How often a caught-up subscription looks for events written by other processes. Commits made through this store
   * wake subscribers at once; default 500 ms.
   */
  readonly pollInterval?: Duration.DurationInput
  /** Retries an append that found the database locked by another process. Default: `defaultBusyRetry("5 seconds")`. */
  readonly busyRetry?: Schedule.Schedule<unknown>
  /**
   * A connection used only for writing, held by the store for its lifetime (SQLite: a second connection to the same
   * file, so that writes never wait behind reads). Without it, each commit reserves a connection from the
   * `SqlClient` in context.
   */
  readonly writeConnection?: Connection
  /** Concurrent appends share one transaction up to this many events in all; default 2048. */
  readonly maxGroupEvents?: number
}

const E = tables.events

/**
 * Retries a write that found the database locked by another process: jittered exponential backoff from 2 ms, at
 * most 50 ms apart, for up to `total`.
 *
 * @since 0.1.0
 */
export const defaultBusyRetry = (total: Duration.DurationInput): Schedule.Schedule<unknown> =>
  Schedule.jittered(Schedule.union(Schedule.exponential("2 millis", 1.5), Schedule.spaced("50 millis"))).pipe(
    Schedule.upTo(total)
  )

/**
 * Runs the library's migrations (table `eventstore_migrations`). Safe to run from several processes at once: a
 * process that finds another one migrating waits until the schema is complete.
 *
 * @since 0.1.0
 */
export const migrate: Effect.Effect<void, StoreError, SqlClient.SqlClient> = Migrations.migrate

/**
 * An `EventStore` over the `SqlClient` in context. Runs the migrations first.
 *
 * @since 0.1.0
 */
export const make = (
  options: Options = {}
): Effect.Effect<EventStoreService, StoreError, SqlClient.SqlClient | Scope.Scope> =>
  Effect.gen(function*() {
    const sql = yield* SqlClient.SqlClient
    yield* migrate
    const signal = new Signal()
    const pollInterval = Duration.decode(options.pollInterval ?? "500 millis")
    const busyRetry = options.busyRetry ?? defaultBusyRetry("5 seconds")
    const begin = sql.onDialectOrElse({ sqlite: () => "BEGIN IMMEDIATE", orElse: () => "BEGIN" })
    const storeError = (operation: string) => (cause: SqlError) => new StoreError({ operation, cause })
    // every column a RecordedEvent needs (not tenant_id)
    const COLUMNS = sql.literal(
      "position, event_id, stream_id, stream_type, version, event_type, schema_version, payload, metadata, recorded_at"
    )

    // The write connection: held for the store's lifetime when a dedicated client is given, else reserved per group.
    const held = options.writeConnection
    const withWriter: <A, E>(f: (conn: Connection) => Effect.Effect<A, E>) => Effect.Effect<A, E | SqlError> =
      held === undefined ? (f) => Effect.scoped(Effect.flatMap(sql.reserve, f)) : (f) => f(held)

    const committed = (appends: number, conflicts: number) => {
      Telemetry.commits.unsafeUpdate(1, [])
      Telemetry.appends.unsafeUpdate(appends - conflicts, [])
      Telemetry.groupSize.unsafeUpdate(appends, [])
      if (conflicts > 0) Telemetry.conflicts.unsafeUpdate(conflicts, [])
    }

    const settled = (exits: ReadonlyArray<Outcome>) => {
      signal.notify()
      let conflicts = 0
      for (const exit of exits) {
        if (Exit.isFailure(exit) && exit.cause._tag === "Fail" && exit.cause.error._tag === "ConcurrencyError") {
          conflicts++
        }
      }
      committed(exits.length, conflicts)
      return exits
    }

    const writer = GroupCommit.make<PreparedAppend, ReadonlyArray<Written>, AppendFailure | SqlError>(
      held !== undefined && isSync(held)
        ? {
          run: (appends) => Effect.map(Effect.try({ try: () => writeGroupSync(held, appends), catch: sqlError }), settled),
          // A lone append is written on the spot; only a failure of the whole write (a lock) takes the slower road.
          runSync: (append) => {
            try {
              return settled(writeGroupSync(held, [append]))[0]
            } catch {
              return undefined
            }
          },
          size: (append) => append.events.length,
          maxSize: options.maxGroupEvents ?? 2048
        }
        : {
          run: (appends) => Effect.map(withWriter((conn) => writeGroup(conn, begin, appends)), settled),
          size: (append) => append.events.length,
          maxSize: options.maxGroupEvents ?? 2048
        }
    )

    const result = (prepared: PreparedAppend, written: ReadonlyArray<Written>): AppendResult => {
      const last = written[written.length - 1]!
      return {
        streamId: prepared.streamId,
        version: last.version,
        position: last.position,
        events: recorded(prepared, written.map((w) => w.position), written[0]!.version)
      }
    }

    const retryBusy = (prepared: PreparedAppend) =>
      Effect.retry(writer.submit(prepared), {
        schedule: busyRetry,
        while: (e) => e._tag === "SqlError" && isBusy(e)
      })

    const submit = (prepared: PreparedAppend): Effect.Effect<AppendResult, AppendError> =>
      Effect.matchEffect(writer.submit(prepared), {
        onSuccess: (written) => Effect.succeed(result(prepared, written)),
        onFailure: (e) =>
          e._tag !== "SqlError"
            ? Effect.fail(e)
            : isBusy(e)
            // Locked by another process beyond the busy timeout: try again (the retry is built only when needed).
            ? Effect.mapBoth(retryBusy(prepared), {
              onFailure: (e) => e._tag === "SqlError" ? storeError("append")(e) : e,
              onSuccess: (written) => result(prepared, written)
            })
            : Effect.fail(storeError("append")(e))
      })

    const prepareAndSubmit = (
      streamId: string,
      events: ReadonlyArray<NewEvent>,
      options: AppendOptions | undefined
    ): Effect.Effect<AppendResult, AppendError> =>
      Effect.clockWith((clock) => {
        const prepared = prepareAppend(streamId, events, options, clock.unsafeCurrentTimeMillis())
        return Either.isLeft(prepared) ? Effect.fail(prepared.left) : submit(prepared.right)
      })

    // Appends are never part of a caller's SqlClient transaction. With one shared connection (SQLite ":memory:"),
    // an append from inside such a transaction would wait for the connection that transaction holds: refuse it.
    const guarded: typeof prepareAndSubmit = held !== undefined
      ? prepareAndSubmit
      : (streamId, events, options) =>
        Effect.flatMap(Effect.serviceOption(SqlClient.TransactionConnection), (transaction) =>
          Option.isSome(transaction)
            ? Effect.fail(
              new StoreError({
                operation: "append",
                cause: "an append cannot run inside a transaction of the store's own SqlClient connection"
              })
            )
            : prepareAndSubmit(streamId, events, options))

    const append: EventStoreService["append"] = (streamId, events, options) =>
      Effect.useSpan(
        "EventStore.append",
        appendSpan(streamId, options?.streamType, events.length),
        () => guarded(streamId, events, options)
      )

    const streamRows: Backend["streamRows"] = (streamId, { backward, cursor, from, limit, to }) =>
      Effect.mapError(
        backward
          ? sql<EventRow>`SELECT ${COLUMNS} FROM ${sql(E)} WHERE stream_id = ${streamId} AND version < ${cursor}
              AND version >= ${from} ORDER BY version DESC LIMIT ${limit}`.withoutTransform
          : sql<EventRow>`SELECT ${COLUMNS} FROM ${sql(E)} WHERE stream_id = ${streamId} AND version > ${cursor}
              AND version <= ${to} ORDER BY version LIMIT ${limit}`.withoutTransform,
        storeError("read")
      )

    const logRows: Backend["logRows"] = (filter, operation) => {
      const streamTypes = nonEmpty(filter?.streamTypes)
      const eventTypes = nonEmpty(filter?.eventTypes)
      const where = sql.and([
        ...(streamTypes ? [sql.in("stream_type", streamTypes)] : []),
        ...(eventTypes ? [sql.in("event_type", eventTypes)] : [])
      ])
      return (after, limit) =>
        Effect.mapError(
          streamTypes || eventTypes
            ? sql<EventRow>`SELECT ${COLUMNS} FROM ${sql(E)} WHERE position > ${after} AND ${where}
                ORDER BY position LIMIT ${limit}`.withoutTransform
            : sql<EventRow>`SELECT ${COLUMNS} FROM ${sql(E)} WHERE position > ${after}
                ORDER BY position LIMIT ${limit}`.withoutTransform,
          storeError(operation)
        )
    }

    return fromBackend({
      append,
      version: (streamId) =>
        sql<{ v: number }>`SELECT COALESCE((SELECT version FROM ${sql(E)} WHERE stream_id = ${streamId}
          ORDER BY version DESC LIMIT 1), 0) AS v`.withoutTransform.pipe(
          Effect.map((rows) => Number(rows[0]?.v ?? 0)),
          Effect.mapError(storeError("version"))
        ),
      streamRows,
      logRows,
      head: Effect.mapError(
        Effect.map(
          sql<{ p: number | null }>`SELECT MAX(position) AS p FROM ${sql(E)}`.withoutTransform,
          (rows) => Number(rows[0]?.p ?? 0)
        ),
        storeError("subscribe")
      ),
      signal,
      pollInterval
    })
  })

/**
 * The SQL event store as a layer over a `SqlClient`.
 *
 * @since 0.1.0
 */
export const layer = (options?: Options): Layer.Layer<EventStore, StoreError, SqlClient.SqlClient> =>
  Layer.scoped(EventStore, make(options))
