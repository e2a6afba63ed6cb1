/**
 * The event store over `@effect/sql`'s `SqlClient`: the implementation behind `Sqlite.layer`, `Postgres.layer` and
 * `LibSql.layer`, chosen by the client's dialect. The SQL text lives in `internal/` once per concern — schema
 * (`migrations.ts`), write path (`sqlWrite.ts`), read path (`sqlRead.ts`) — and driver errors are classified in
 * `sqlErrors.ts`, so a dialect is an addition there, not a rewrite here.
 *
 * An append is one statement: a conditional `INSERT … SELECT` that reads the stream's head and writes the new
 * events only if the expected version holds, so the check and the write are atomic without a transaction; the
 * unique index on (stream, version) is the backstop against any other writer. On SQLite, batches too large for one
 * statement run as several such statements in one transaction, and concurrent appends share a transaction (group
 * commit). On PostgreSQL an append is one call of the `eventstore_append` function, on LibSQL one statement with its
 * events as a JSON parameter, each in autocommit.
 *
 * @since 0.1.0
 */
import * as SqlClient from "@effect/sql/SqlClient"
import type { Connection } from "@effect/sql/SqlConnection"
import { SqlError } from "@effect/sql/SqlError"
import * as Cause from "effect/Cause"
import * as Clock from "effect/Clock"
import * as Context from "effect/Context"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Either from "effect/Either"
import * as Exit from "effect/Exit"
import type * as Fiber from "effect/Fiber"
import * as Layer from "effect/Layer"
import * as Option from "effect/Option"
import * as Schedule from "effect/Schedule"
import type * as Scope from "effect/Scope"
import type * as Tracer from "effect/Tracer"
import { ConcurrencyError, InlineProjectionError, StoreError } from "./Errors.js"
import type { NewEvent } from "./Event.js"
import { type AppendError, type AppendOptions, type AppendResult, EventStore, type EventStoreService } from "./EventStore.js"
import * as Background from "./internal/background.js"
import {
  appendSpan,
  type Backend,
  type CommandTransaction,
  DriverFailure,
  FOLD_PAGE,
  fromBackend,
  type InlineProjections,
  onDatabase,
  type SyncCommands,
  withHeadNow,
  withInline
} from "./internal/backend.js"
import { type FoldRow, type PreparedAppend, prepareAppend, recorded, type StoredEvent } from "./internal/codec.js"
import {
  executeOf,
  isSync,
  listenOf,
  outsideTransactions,
  type PgExecute,
  type SyncConnection
} from "./internal/connection.js"
import * as GroupCommit from "./internal/groupCommit.js"
import * as Guards from "./internal/guards.js"
import * as Health from "./Health.js"
import type { Replayed } from "./internal/guards.js"
import * as Migrations from "./internal/migrations.js"
import { Signal } from "./internal/paging.js"
import { codeOf, isBusy } from "./internal/sqlErrors.js"
import * as SqlRead from "./internal/sqlRead.js"
import {
  type AppendFailure,
  beginOf,
  type Inline,
  type Outcome,
  sqlError,
  type Written,
  writeGroup,
  HOT_SQLITE,
  writeGroupSync,
  writeOneSync,
  writeLibsql,
  writePg
} from "./internal/sqlWrite.js"
import * as Instruments from "./internal/instruments.js"
import * as Tracing from "./internal/tracing.js"
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
  /**
   * When the store's scope closes, how long appends still queued may take to commit; default 5 s. After it, the
   * group being written finishes (it commits or fails as a whole) and the appends still queued fail with
   * `StoreError` (nothing of them written).
   */
  readonly shutdownGrace?: Duration.DurationInput
}

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

const storeError = (operation: string) => (cause: SqlError) => new StoreError({ operation, cause })

// --- step 1: the group-commit writer -------------------------------------------------------------------------------

/** Counts a settled group in the metrics and wakes subscribers. */
const settled = (signal: Signal) => (exits: ReadonlyArray<Outcome>) => {
  signal.notify()
  let conflicts = 0
  for (const exit of exits) {
    if (Exit.isFailure(exit) && exit.cause._tag === "Fail" && exit.cause.error instanceof ConcurrencyError) conflicts++
  }
  Telemetry.commits.unsafeUpdate(1, [])
  Telemetry.appends.unsafeUpdate(exits.length - conflicts, [])
  Telemetry.groupSize.unsafeUpdate(exits.length, [])
  if (conflicts > 0) Telemetry.conflicts.unsafeUpdate(conflicts, [])
  return exits
}

/**
 * The writer: groups of appends, each group one transaction. On a synchronous connection (SQLite's own writer) a
 * whole group runs in one synchronous call and a lone append is written on the spot; otherwise each group runs on a
 * connection (held, or reserved from the client per group).
 */
/** What an append gets once the store's scope has closed: nothing of it was written. */
const closed = () => new SqlError({ cause: "the event store is closed", message: "the event store is closed" })

const makeWriter = (
  sql: SqlClient.SqlClient,
  options: Options,
  signal: Signal,
  background: Background.Background,
  inline: Inline
) => {
  const held = options.writeConnection
  const maxSize = options.maxGroupEvents ?? 2048
  const size = (append: PreparedAppend) => append.events.length
  const done = settled(signal)
  if (held !== undefined && isSync(held)) {
    return GroupCommit.make<PreparedAppend, ReadonlyArray<Written>, AppendFailure | SqlError>({
      run: (appends) => Effect.map(Effect.try({ try: () => writeGroupSync(held, appends, inline), catch: sqlError }), done),
      // A lone append is written on the spot; only a failure of the whole write (a lock) takes the slower road.
      runSync: (append) => {
        try {
          return done(writeGroupSync(held, [append], inline))[0]
        } catch {
          return undefined
        }
      },
      size,
      maxSize,
      fork: background.run,
      closed
    })
  }
  const begin = beginOf(sql)
  const withWriter: <A, E>(f: (conn: Connection) => Effect.Effect<A, E>) => Effect.Effect<A, E | SqlError> =
    held === undefined ? (f) => Effect.scoped(Effect.flatMap(sql.reserve, f)) : (f) => f(held)
  return GroupCommit.make<PreparedAppend, ReadonlyArray<Written>, AppendFailure | SqlError>({
    run: (appends) => Effect.map(withWriter((conn) => writeGroup(conn, begin, appends)), done),
    size,
    maxSize,
    fork: background.run,
    closed
  })
}

// --- step 2: the append --------------------------------------------------------------------------------------------

const result = (prepared: PreparedAppend, written: ReadonlyArray<Written>): AppendResult => {
  const last = written[written.length - 1]!
  return {
    streamId: prepared.streamId,
    version: last.version,
    position: last.position,
    events: recorded(prepared, written.map((w) => w.position), written[0]!.version)
  }
}

/**
 * Validates, submits to the writer, and retries (with a backoff that does not block the thread) when another
 * process holds the database's write lock.
 */
const makeAppend = (
  options: Options,
  writer: GroupCommit.GroupCommit<PreparedAppend, ReadonlyArray<Written>, AppendFailure | SqlError>
): Backend["append"] => {
  const busyRetry = options.busyRetry ?? defaultBusyRetry("5 seconds")
  const toStoreError = <E extends { readonly _tag: string }>(e: E | SqlError) =>
    e._tag === "SqlError" ? storeError("append")(e as SqlError) : e as E

  /** The append's result, its latency and events recorded (`Instruments.recordAppend`: no wrapper per append). */
  const succeeded = (prepared: PreparedAppend, written: ReadonlyArray<Written>, started: number): AppendResult => {
    const done = result(prepared, written)
    Instruments.recordAppend(started, done)
    return done
  }
  const failed = <E>(e: E, started: number): E => {
    Instruments.recordAppend(started, undefined)
    return e
  }

  const submit = (
    prepared: PreparedAppend,
    submitted: Effect.Effect<ReadonlyArray<Written>, AppendFailure | SqlError>,
    started: number
  ): Effect.Effect<AppendResult, AppendError | Replayed> =>
    Effect.matchEffect(submitted, {
      onSuccess: (written) => Effect.succeed(succeeded(prepared, written, started)),
      onFailure: (e) =>
        e._tag !== "SqlError"
          ? Effect.fail(failed(e, started))
          : isBusy(e)
          // Locked by another process: try again after a backoff (the retry is built only when needed).
          ? Effect.mapBoth(
            Effect.retry(writer.submit(prepared), { schedule: busyRetry, while: (e) => e._tag === "SqlError" && isBusy(e) }),
            {
              onFailure: (e) => failed(toStoreError(e), started),
              onSuccess: (written) => succeeded(prepared, written, started)
            }
          )
          : Effect.fail(failed(storeError("append")(e), started))
    })

  /** The outcome of a commit made on the spot (`trySync`), as the append's result. */
  const settledNow = (
    prepared: PreparedAppend,
    exit: Exit.Exit<ReadonlyArray<Written>, AppendFailure | SqlError>,
    started: number
  ): Effect.Effect<AppendResult, AppendError | Replayed> => {
    if (Exit.isSuccess(exit)) return Effect.as(GroupCommit.afterCommit(), succeeded(prepared, exit.value, started))
    const failure = Cause.failureOption(exit.cause)
    if (failure._tag === "None") return failed(exit as Exit.Exit<never, never>, started)
    return Effect.zipRight(GroupCommit.afterCommit(), Effect.fail(failed(toStoreError(failure.value), started)))
  }

  /**
   * Everything an append does before the writer, in one step with the caller's fiber at hand: its clock, whether it
   * is inside the store's own transaction, and (when the writer is idle) the commit itself.
   */
  const appendWith = (
    fiber: Fiber.RuntimeFiber<unknown, unknown>,
    streamId: string,
    events: ReadonlyArray<NewEvent>,
    appendOptions: AppendOptions | undefined,
    tenant: string | undefined
  ): Effect.Effect<AppendResult, AppendError | Replayed> => {
    // Appends are never part of a caller's SqlClient transaction. With one shared connection (SQLite ":memory:"),
    // an append from inside such a transaction would wait for the connection that transaction holds: refuse it.
    if (
      options.writeConnection === undefined &&
      Option.isSome(Context.getOption(fiber.currentContext, SqlClient.TransactionConnection))
    ) {
      return Effect.fail(
        new StoreError({
          operation: "append",
          cause: "an append cannot run inside a transaction of the store's own SqlClient connection"
        })
      )
    }
    const now = Context.get(fiber.currentDefaultServices, Clock.Clock).unsafeCurrentTimeMillis()
    const prepared = prepareAppend(streamId, events, appendOptions, now, tenant)
    if (Either.isLeft(prepared)) return Effect.fail(prepared.left)
    const started = performance.now()
    const exit = writer.trySync(fiber.id().id, prepared.right)
    return exit === undefined
      ? submit(prepared.right, writer.enqueue(prepared.right), started)
      : settledNow(prepared.right, exit, started)
  }

  return (streamId, events, appendOptions, tenant) =>
    Effect.withFiberRuntime((fiber) =>
      Tracing.isNative(fiber.currentTracer)
        ? appendWith(fiber, streamId, events, appendOptions, tenant)
        : Tracing.spanExit(
          Effect.withFiberRuntime((inner) => appendWith(inner, streamId, events, appendOptions, tenant)),
          "EventStore.append",
          appendSpan(streamId, appendOptions?.streamType, events.length),
          (span, exit) => appendExit(span, exit, tenant)
        )
    )
}

/** What an append's span learns when it ends: the stream's new version and tenant, or the error's type. */
const appendExit = (span: Tracer.Span, exit: Exit.Exit<AppendResult, unknown>, tenant: string | undefined): void => {
  if (Exit.isFailure(exit)) {
    const type = Instruments.errorTypeOf(exit)
    if (type !== undefined) span.attribute("error.type", type)
    return
  }
  span.attribute("aggregate.version", exit.value.version)
  if (tenant !== undefined) span.attribute("tenant.id", tenant)
}

// --- step 2b: whole commands in one transaction ----------------------------------------------------------------------

/**
 * Commands in one synchronous transaction on SQLite's writer connection (see `SyncCommands`): taken only when the
 * writer is idle and uncontended, so it never competes with a group commit; `BEGIN IMMEDIATE` takes the write lock
 * first, so nothing can change the stream between the read and the append. A commit counts and signals like a group
 * of one.
 */
const makeSyncCommands = (
  held: SyncConnection,
  writer: GroupCommit.GroupCommit<PreparedAppend, ReadonlyArray<Written>, AppendFailure | SqlError>,
  signal: Signal,
  inline: Inline
): SyncCommands => {
  const done = settled(signal)
  held.prepareSync([...HOT_SQLITE, foldSql(false, FOLD_PAGE), foldSql(true, FOLD_PAGE)])
  const failure = (operation: string) => (cause: unknown) =>
    new DriverFailure(
      storeError(operation)(cause instanceof SqlError ? cause : operation === "read" ? readError(cause) : sqlError(cause))
    )
  let outcome: Outcome | undefined
  const tx: CommandTransaction = {
    foldRows: (streamId, after, limit, withRecordedAt) => {
      try {
        return foldPageSync(held, foldSql(withRecordedAt, limit), streamId, after)
      } catch (cause) {
        throw failure("read")(cause)
      }
    },
    append: (streamId, events, appendOptions, now) => {
      const prepared = prepareAppend(streamId, events, appendOptions, now)
      if (Either.isLeft(prepared)) return Exit.fail(prepared.left)
      try {
        outcome = writeOneSync(held, prepared.right, inline)
      } catch (cause) {
        throw failure("append")(cause)
      }
      if (Exit.isSuccess(outcome)) return Exit.succeed(result(prepared.right, outcome.value))
      const failed = Cause.failureOption(outcome.cause)
      // commands in one transaction carry no command id: nothing can be a replay here
      if (failed._tag === "Some" && failed.value._tag === "Replayed") {
        throw failure("append")(new SqlError({ cause: failed.value, message: "unexpected command replay" }))
      }
      return outcome as Exit.Exit<never, Exclude<AppendFailure, Replayed>>
    },
    logRows: (after, limit) => {
      try {
        const rows = held.executeValuesSync(SqlRead.logSqlite(limit), [after])
        const out: Array<StoredEvent> = new Array(rows.length)
        for (let i = 0; i < rows.length; i++) {
          const r = rows[i] as ReadonlyArray<any>
          out[i] = {
            position: r[0],
            eventId: r[1],
            streamId: r[2],
            streamType: r[3],
            version: r[4],
            type: r[5],
            schemaVersion: r[6],
            payload: r[7],
            metadata: r[8],
            recordedAt: r[9]
          }
        }
        return out
      } catch (cause) {
        throw failure("read")(cause)
      }
    },
    run: (sql, params) => held.runAnySync(sql, params)
  }
  return {
    run: (fiberId, body, force) => {
      if (force !== true && (fiberId === undefined ? !writer.free() : !writer.idle(fiberId))) return undefined
      try {
        held.executeSync("BEGIN IMMEDIATE", [])
      } catch (cause) {
        // locked by another process: the usual road retries with a backoff
        if (isBusy(cause)) return undefined
        throw failure("append")(cause)
      }
      outcome = undefined
      try {
        const { commit, value } = body(tx)
        try {
          held.executeSync(commit ? "COMMIT" : "ROLLBACK", [])
        } catch (cause) {
          throw failure("append")(cause)
        }
        if (commit && outcome !== undefined) done([outcome])
        return { value }
      } catch (error) {
        try {
          held.executeSync("ROLLBACK", [])
        } catch {
          // already rolled back (SQLite does on some errors); the first error is the one to report
        }
        throw error
      }
    }
  }
}

// --- step 2c: command records and unique values ---------------------------------------------------------------------

/**
 * Reads of command records and unique values, and the rebuild of unique values from the log: in a transaction of
 * the client's, or (SQLite's writer connection, `held`) in one synchronous `BEGIN IMMEDIATE … COMMIT` on it, where
 * every write of this process goes (another connection would wait for its lock).
 */
const makeGuards = (
  sql: SqlClient.SqlClient,
  pg: boolean,
  held?: SyncConnection,
  busyRetry?: Schedule.Schedule<unknown>
): Pick<Backend, "command" | "claimOwner" | "rebuildClaims"> => {
  const query = (text: string, params: ReadonlyArray<unknown>) =>
    sql.unsafe(pg ? Guards.pgText(text) : text, params as Array<any>).withoutTransform as Effect.Effect<
      ReadonlyArray<any>,
      SqlError
    >
  // a failure undoes the rebuild: unreadable claims roll the transaction back like a driver error
  const rebuilt = (outcome: number | { readonly unreadable: unknown }): Effect.Effect<number, StoreError> =>
    typeof outcome === "number" ? Effect.succeed(outcome) : Effect.fail(
      new StoreError({
        operation: "rebuildClaims",
        cause: `the claims stored with the event at position ${String(outcome.unreadable)} are not readable`
      })
    )
  const rebuildClaims: Effect.Effect<number, StoreError> = held === undefined
    ? outsideTransactions(sql.withTransaction(
      Effect.zipRight(
        pg ? query(`LOCK TABLE ${Migrations.tables.unique} IN EXCLUSIVE MODE`, []) : Effect.void,
        Effect.flatMap(Guards.runEffect(Guards.rebuild(), query), rebuilt)
      )
    )).pipe(Effect.mapError((e) => e._tag === "SqlError" ? storeError("rebuildClaims")(e) : e))
    : Effect.suspend(() => {
      // one synchronous call: nothing else of this process can write in between
      let outcome: number | { readonly unreadable: unknown }
      try {
        held.executeSync("BEGIN IMMEDIATE", [])
      } catch (cause) {
        return Effect.fail(storeError("rebuildClaims")(sqlError(cause)))
      }
      try {
        outcome = Guards.runSync(Guards.rebuild(), (text, params) => held.executeSync(text, params))
        held.executeSync(typeof outcome === "number" ? "COMMIT" : "ROLLBACK", [])
      } catch (cause) {
        try {
          held.executeSync("ROLLBACK", [])
        } catch {
          // already rolled back (SQLite does on some errors); the first error is the one to report
        }
        return Effect.fail(storeError("rebuildClaims")(sqlError(cause)))
      }
      return rebuilt(outcome)
    }).pipe(
      Effect.retry({
        schedule: busyRetry ?? defaultBusyRetry("5 seconds"),
        while: (e) => e.cause instanceof SqlError && isBusy(e.cause)
      })
    )
  return {
    command: (commandId, now) =>
      Effect.map(
        Effect.mapError(outsideTransactions(query(Guards.RECORD_OF, [commandId, now])), storeError("command")),
        (rows) =>
          rows.length === 0 ? Option.none() : Option.some({
            streamId: String(rows[0].stream_id),
            firstVersion: Number(rows[0].first_version),
            lastVersion: Number(rows[0].last_version),
            position: Number(rows[0].position)
          })
      ),
    claimOwner: (tenantId, index, value) =>
      Effect.map(
        Effect.mapError(outsideTransactions(query(Guards.OWNER_OF, [tenantId, index, value])), storeError("claimOwner")),
        (rows) => rows.length === 0 ? Option.none() : Option.some(String(rows[0].stream_id))
      ),
    rebuildClaims
  }
}

// --- step 3: the reading side --------------------------------------------------------------------------------------

const makeReads = (
  sql: SqlClient.SqlClient,
  held: Connection | undefined
): Pick<Backend, "streamRows" | "logRows" | "head" | "version" | "foldRows"> => {
  const statements = SqlRead.make(sql)
  const foldRows: Backend["foldRows"] = (streamId, after, limit, withRecordedAt) =>
    Effect.mapError(statements.fold(streamId, after, limit, withRecordedAt), storeError("read"))
  return {
    streamRows: (streamId, range) => Effect.mapError(statements.stream(streamId, range), storeError("read")),
    logRows: (filter, operation, tenant) => {
      const page = statements.log(filter, tenant)
      return (after, limit) => Effect.mapError(page(after, limit), storeError(operation))
    },
    head: Effect.mapError(statements.head, storeError("head")),
    version: (streamId) => Effect.mapError(statements.version(streamId), storeError("version")),
    // On SQLite's writer connection the fold's read runs synchronously, as one call (WAL: a read never waits for the
    // write lock). A read that finds the database busy (another process recovering the WAL) takes the client's
    // road, which waits.
    foldRows: held !== undefined && isSync(held)
      ? (streamId, after, limit, withRecordedAt) =>
        Effect.suspend(() => {
          try {
            return Effect.succeed(foldPageSync(held, foldSql(withRecordedAt, limit), streamId, after))
          } catch (cause) {
            return isBusy(cause)
              ? foldRows(streamId, after, limit, withRecordedAt)
              : Effect.fail(storeError("read")(readError(cause)))
          }
        })
      : foldRows
  }
}

/** The fold's statements by analytics and page size (one page size in practice). */
const foldSql = (() => {
  const texts = new Map<number, string>()
  return (withRecordedAt: boolean, limit: number): string => {
    const key = withRecordedAt ? -1 - limit : limit
    let text = texts.get(key)
    if (text === undefined) {
      text = SqlRead.foldSqlite(withRecordedAt, limit)
      texts.set(key, text)
    }
    return text
  }
})()

/** A fold page on a synchronous connection. */
const foldPageSync = (conn: SyncConnection, sql: string, streamId: string, after: number): ReadonlyArray<FoldRow> =>
  conn.executeValuesSync(sql, [streamId, after])

const readError = (cause: unknown) =>
  new SqlError({ cause, message: `Failed to read events${codeOf(cause) ? ` (${codeOf(cause)})` : ""}` })

/**
 * An `EventStore` over the `SqlClient` in context. Runs the migrations first. The writer's background work (the
 * drain of queued appends) belongs to the scope: closing it lets in-flight commits finish (up to `shutdownGrace`).
 *
 * @since 0.1.0
 */
export const make = (
  options: Options = {}
): Effect.Effect<EventStoreService, StoreError, SqlClient.SqlClient | Scope.Scope> =>
  Effect.gen(function*() {
    const sql = yield* SqlClient.SqlClient
    yield* migrate
    if (sql.onDialectOrElse({ pg: () => true, orElse: () => false })) return yield* makePg(sql, options)
    if (isLibsql(sql)) {
      const store = yield* makeLibsql(sql, options)
      yield* Health.register("eventstore", probe("libsql", store.head, Effect.succeed(undefined)))
      return store
    }
    const signal = new Signal()
    const background = yield* Background.make(options.shutdownGrace ?? "5 seconds")
    const inline: Inline = { hooks: [] }
    const writer = makeWriter(sql, options, signal, background, inline)
    const held = options.writeConnection
    const store = fromBackend({
      append: makeAppend(options, writer),
      appendInstrumented: true,
      ...makeReads(sql, held),
      syncCommands: held !== undefined && isSync(held)
        ? yield* Effect.try({
          try: () => makeSyncCommands(held, writer, signal, inline),
          catch: (cause) =>
            storeError("open")(new SqlError({ cause, message: "Failed to prepare the writer's statements" }))
        })
        : undefined,
      ...makeGuards(sql, false, held !== undefined && isSync(held) ? held : undefined, options.busyRetry),
      signal,
      pollInterval: Duration.decode(options.pollInterval ?? "500 millis")
    })
    if (held !== undefined && isSync(held)) withInline(store, makeInline(held, writer, inline))
    yield* Health.register(
      "eventstore",
      probe(
        "sqlite",
        store.head,
        // the writer's transactions run synchronously from BEGIN to COMMIT: between them the probe cannot interleave
        held !== undefined && isSync(held)
          ? Effect.sync(() => writer.free() ? sqliteNotWritable(held) : undefined)
          : Effect.succeed(undefined)
      )
    )
    return onDatabase(store, sql)
  })

// --- health --------------------------------------------------------------------------------------------------------

const messageOf = (cause: unknown): string => {
  const inner = cause instanceof StoreError ? cause.cause : cause
  const driver = inner instanceof SqlError ? inner.cause : inner
  const message = driver instanceof Error ? driver.message : String(driver)
  const code = codeOf(driver)
  return code === undefined || message.includes(code) ? message : `${message} (${code})`
}

/**
 * The store's health check (`Health.register("eventstore", …)`): reachable — a read of the head — and writable, as
 * `notWritable` tells (the reason it is not, `undefined` when it is). Writes nothing to the log.
 */
const probe = (
  backend: string,
  head: Effect.Effect<number, StoreError>,
  /** Why the store cannot be written (`undefined`: it can); a failure means the server could not be asked. */
  notWritable: Effect.Effect<string | undefined, unknown>
): Health.Check =>
  Effect.gen(function*() {
    const started = yield* Clock.currentTimeMillis
    const read = yield* Effect.either(head)
    if (Either.isLeft(read)) return Health.unhealthy(`unreachable: ${messageOf(read.left)}`, { backend })
    const asked = yield* Effect.either(notWritable)
    if (Either.isLeft(asked)) return Health.unhealthy(`unreachable: ${messageOf(asked.left)}`, { backend, head: read.right })
    const refused = asked.right
    const latencyMs = (yield* Clock.currentTimeMillis) - started
    return refused === undefined
      ? Health.healthy({ backend, head: read.right, latencyMs })
      : Health.unhealthy(`not writable: ${refused}`, { backend, head: read.right })
  })

/**
 * SQLite: takes the write lock and changes the header's `user_version` to its own value, then rolls back, on the
 * writer connection (as the store's opening checks it; `BEGIN IMMEDIATE` alone succeeds on a read-only file). A lock
 * held by another process means writable (SQLite refuses a read-only file before it looks at locks).
 */
const sqliteNotWritable = (held: SyncConnection): string | undefined => {
  try {
    const version = Number((held.executeSync("PRAGMA user_version", [])[0] as { user_version: number }).user_version)
    try {
      held.executeSync("BEGIN IMMEDIATE", [])
    } catch (cause) {
      if (isBusy(cause)) return undefined
      throw cause
    }
    let refused: unknown = undefined
    try {
      held.executeSync(`PRAGMA user_version = ${version}`, [])
    } catch (cause) {
      refused = cause
    }
    try {
      held.executeSync("ROLLBACK", [])
    } catch (cause) {
      if (refused === undefined) throw cause
    }
    return refused === undefined ? undefined : messageOf(refused)
  } catch (cause) {
    return messageOf(cause)
  }
}

/** PostgreSQL: a standby in recovery, or a session whose transactions are read-only, cannot append. */
const pgNotWritable = (execute: PgExecute): Effect.Effect<string | undefined, unknown> =>
  execute("", "SELECT pg_is_in_recovery() AS recovery, current_setting('transaction_read_only') AS read_only", []).pipe(
    Effect.map((rows) => {
      const row = rows[0] as { readonly recovery?: boolean; readonly read_only?: string } | undefined
      if (row?.recovery === true) return "the server is a standby in recovery"
      if (row?.read_only === "on") return "transactions are read-only (default_transaction_read_only)"
      return undefined
    })
  )

// --- PostgreSQL ----------------------------------------------------------------------------------------------------

/** The channel that wakes other processes' subscribers after commits (one per schema). */
const channelOf = (schema: string) => `eventstore_${schema}`.slice(0, 63)

/**
 * A store whose every append is one statement in autocommit (atomic on its own), through `write`: the PostgreSQL and
 * LibSQL backends. Commits wake this process's subscribers at once; `wake` adds other processes' (PostgreSQL's
 * `LISTEN`/`NOTIFY`), with polling as the fallback.
 */
const makeStatementStore = (
  options: Options,
  backend: {
    readonly write: (append: PreparedAppend) => Effect.Effect<ReadonlyArray<Written>, AppendFailure | SqlError>
    readonly reads: Pick<Backend, "streamRows" | "logRows" | "head" | "version" | "foldRows">
    readonly guards: Pick<Backend, "command" | "claimOwner" | "rebuildClaims">
    /** Called after each commit made through this store, with what it wrote. */
    readonly committed?: (written: ReadonlyArray<Written>) => void
    /** Appends are refused inside this service's transactions (they would wait for the transaction forever). */
    readonly refuse?: Context.Tag<any, any>
    readonly signal: Signal
  }
) => {
  const { reads, signal } = backend
  const done = settled(signal)
  const busyRetry = options.busyRetry ?? defaultBusyRetry("5 seconds")
  const write = (prepared: PreparedAppend): Effect.Effect<AppendResult, AppendError | Replayed> =>
    Effect.matchEffect(
      // the retry is built only when a write found the database locked (not on every append)
      Effect.catchIf(
        backend.write(prepared),
        (e) => e._tag === "SqlError" && isBusy(e),
        () => Effect.retry(backend.write(prepared), { schedule: busyRetry, while: (e) => e._tag === "SqlError" && isBusy(e) })
      ),
      {
        onFailure: (e): Effect.Effect<never, AppendError | Replayed> => {
          if (e._tag === "SqlError") return Effect.fail(storeError("append")(e))
          done([Exit.fail(e)])
          return Effect.fail(e)
        },
        onSuccess: (written) => {
          done([Exit.succeed(written)])
          backend.committed?.(written)
          return Effect.succeed(result(prepared, written))
        }
      }
    )
  const append: Backend["append"] = (streamId, events, appendOptions, tenant) =>
    Effect.withFiberRuntime((fiber): Effect.Effect<AppendResult, AppendError | Replayed> => {
      if (backend.refuse !== undefined && Option.isSome(Context.getOption(fiber.currentContext, backend.refuse))) {
        return Effect.fail(
          new StoreError({
            operation: "append",
            cause: "an append cannot run inside a transaction of the store's own client (it would wait for it)"
          })
        )
      }
      const now = Context.get(fiber.currentDefaultServices, Clock.Clock).unsafeCurrentTimeMillis()
      const prepared = prepareAppend(streamId, events, appendOptions, now, tenant)
      if (Either.isLeft(prepared)) return Effect.fail(prepared.left)
      return write(prepared.right)
    }).pipe((effect) =>
      Tracing.withSpanExit(
        effect,
        "EventStore.append",
        () => appendSpan(streamId, appendOptions?.streamType, events.length),
        (span, exit) => appendExit(span, exit, tenant)
      )
    )
  return fromBackend({
    ...reads,
    ...backend.guards,
    append,
    signal,
    pollInterval: Duration.decode(options.pollInterval ?? "500 millis")
  })
}

/**
 * The PostgreSQL backend. An append is one statement in autocommit (`writePg`): PostgreSQL's own group commit
 * flushes concurrent commits together, so appends do not queue behind each other in this process. Reads of the
 * global log stop at the horizon (`SAFE_PG`). Commits wake this process's subscribers at once and other
 * processes' through `LISTEN`/`NOTIFY`, with polling as the fallback.
 */
const makePg = (sql: SqlClient.SqlClient, options: Options) =>
  Effect.gen(function*() {
    const execute = executeOf(sql)
    const signal = new Signal()
    const outgoing = new Signal()
    const schema = yield* Effect.mapError(
      sql<{ s: string }>`SELECT current_schema() AS s`.withoutTransform,
      storeError("open")
    )
    const channel = channelOf(schema[0]?.s ?? "public")

    // At most one notification per 50 ms, whatever the rate of commits (the first at once), in a transaction that
    // does not wait for its own flush to disk (a NOTIFY takes a transaction id and a database-wide lock at commit:
    // one per append would halve the rate of appends). Subscribers in this process are woken at once by the signal.
    const notify = `SET LOCAL synchronous_commit = off; SELECT pg_notify('${channel.replace(/'/g, "''")}', '1')`
    let sent = 0
    yield* Effect.forkScoped(Effect.forever(Effect.gen(function*() {
      yield* outgoing.wait(sent)
      sent = outgoing.version
      yield* Effect.ignore(execute("", notify, []))
      yield* Effect.sleep("50 millis")
    })))
    const listen = listenOf(sql)
    if (listen !== undefined) {
      // a lost connection is opened again; subscribers look once more then (a notification may have been missed)
      yield* Effect.forkScoped(
        listen(channel, () => signal.notify()).pipe(
          Effect.retry(Schedule.spaced("1 second")),
          Effect.ignore
        )
      )
    }

    const statements = SqlRead.makePg(execute)
    // Read-your-writes: the last position this store acknowledged. `head` and `readAll` at its end wait (every 5 ms,
    // up to 5 s) for the horizon to pass it, so that an append is seen by the reads made after it in this
    // process even while an older transaction elsewhere holds the horizon back for a moment (an autovacuum's
    // ANALYZE, another process's append). After 5 s they answer with what they can safely hand out.
    let lastCommitted = 0
    const ownWrites = Effect.suspend(() => {
      const target = lastCommitted
      if (target === 0) return Effect.void
      return Effect.ignore(
        Effect.repeat(Effect.mapError(statements.head, storeError("head")), {
          schedule: Schedule.spaced("5 millis").pipe(Schedule.upTo("5 seconds")),
          until: (head) => head >= target
        })
      )
    })
    // Events held back behind a running transaction show up when it ends, which nothing signals: readers look again
    // shortly (every 10 ms while any are held back), not at their next poll.
    let again = false
    const lookAgain = () => {
      if (again) return
      again = true
      setTimeout(() => {
        again = false
        signal.notify()
      }, 10).unref()
    }
    const heldBack = Effect.mapError(statements.heldBack, storeError("read")).pipe(
      Effect.tap((n) => Telemetry.heldBack(Effect.succeed(n))),
      Effect.tap((n) => n > 0 ? Effect.sync(lookAgain) : Effect.void)
    )
    const store = makeStatementStore(options, {
      write: (append) => writePg(execute, append),
      guards: makeGuards(sql, true),
      committed: (written) => {
        const last = written[written.length - 1]!.position
        if (last > lastCommitted) lastCommitted = last
        outgoing.notify()
      },
      signal,
      reads: {
        streamRows: (streamId, range) => Effect.mapError(statements.stream(streamId, range), storeError("read")),
        // a reader that has caught up measures what the horizon holds back
        logRows: (filter, operation, tenant) => {
          const page = statements.log(filter, tenant)
          const read = (after: number, limit: number) => Effect.mapError(page(after, limit), storeError(operation))
          return (after, limit) =>
            Effect.flatMap(read(after, limit), (rows) => {
              if (rows.length >= limit) return Effect.succeed(rows)
              const covered = rows.length > 0 ? rows[rows.length - 1]!.position : after
              // readAll ends at a short page: this store's own acknowledged appends may be beyond it, held back —
              // wait for them, read again (subscriptions go on instead, and look again every 10 ms while any are
              // held back)
              const reread = operation === "readAll" && covered < lastCommitted
                ? Effect.flatMap(ownWrites, () => read(after, limit))
                : Effect.succeed(rows)
              return Effect.tap(reread, () => Effect.ignore(heldBack))
            })
        },
        head: Effect.flatMap(ownWrites, () => Effect.mapError(statements.head, storeError("head"))),
        version: (streamId) => Effect.mapError(statements.version(streamId), storeError("version")),
        foldRows: (streamId, after, limit, withRecordedAt) =>
          Effect.mapError(statements.fold(streamId, after, limit, withRecordedAt), storeError("read"))
      }
    })
    const headNow = Effect.mapError(statements.head, storeError("head"))
    yield* Health.register("eventstore", probe("postgresql", headNow, pgNotWritable(execute)))
    return onDatabase(withHeadNow(store, headNow), sql)
  })

// A LibSQL client's transactions: statements made inside one run on its connection (the tag's key is the client's).
const LibsqlTransaction = Context.GenericTag<unknown>("@effect/sql-libsql/LibsqlClient/LibsqlTransaction")

/** Whether `sql` is an `@effect/sql-libsql` client (it reports the "sqlite" dialect). */
const isLibsql = (sql: SqlClient.SqlClient): boolean => Symbol.for("@effect/sql-libsql/LibsqlClient") in sql

/**
 * The LibSQL backend (a local file, a remote server, an embedded replica): the client cannot hold a connection for
 * a `BEGIN … COMMIT` of ours, so an append is one statement in autocommit (`writeLibsql`), on SQLite's schema and
 * reads. SQLite has one writer at a time, so positions follow commit order.
 */
const makeLibsql = (sql: SqlClient.SqlClient, options: Options) =>
  Effect.sync(() => {
    const execute: PgExecute = (_name, text, values) =>
      Effect.mapInputContext(
        sql.unsafe(text, values as Array<any>).withoutTransform,
        (context: Context.Context<never>) => Context.omit(LibsqlTransaction)(context) as Context.Context<never>
      )
    const store = makeStatementStore(options, {
      write: (append) => writeLibsql(execute, append, sql),
      guards: makeGuards(sql, false),
      // the client runs one statement at a time while a transaction of it is open: an append in it would wait
      refuse: LibsqlTransaction,
      signal: new Signal(),
      reads: makeReads(sql, undefined)
    })
    return onDatabase(store, sql)
  })

/**
 * Inline projections on the writer connection: their hooks run in every append's savepoint (`writeOneSync`); a
 * catch-up step runs when the writer is free, in a `BEGIN IMMEDIATE` of its own.
 */
const makeInline = (
  held: SyncConnection,
  writer: GroupCommit.GroupCommit<PreparedAppend, ReadonlyArray<Written>, AppendFailure | SqlError>,
  inline: Inline
): InlineProjections => ({
  add: (hook) => {
    inline.hooks.push(hook)
    return () => {
      const i = inline.hooks.indexOf(hook)
      if (i >= 0) inline.hooks.splice(i, 1)
    }
  },
  catchUp: (hook, limit, now) => {
    if (!writer.free()) return undefined
    try {
      held.executeSync("BEGIN IMMEDIATE", [])
    } catch (cause) {
      if (isBusy(cause)) return undefined
      throw new DriverFailure(storeError("projection.catchUp")(sqlError(cause)))
    }
    try {
      const n = hook.catchUp(held, limit, now)
      held.executeSync("COMMIT", [])
      return n
    } catch (error) {
      try {
        held.executeSync("ROLLBACK", [])
      } catch {
        // already rolled back
      }
      throw error instanceof InlineProjectionError || error instanceof DriverFailure
        ? error
        : new DriverFailure(storeError("projection.catchUp")(sqlError(error)))
    }
  }
})

/**
 * The SQL event store as a layer over a `SqlClient`.
 *
 * @since 0.1.0
 */
export const layer = (options?: Options): Layer.Layer<EventStore, StoreError, SqlClient.SqlClient> =>
  Layer.scoped(EventStore, Effect.map(make(options), EventStore.of))
