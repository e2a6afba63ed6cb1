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
import * as Migrator from "@effect/sql/Migrator"
import * as SqlClient from "@effect/sql/SqlClient"
import type { SqlError } from "@effect/sql/SqlError"
import * as Data from "effect/Data"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Either from "effect/Either"
import * as Exit from "effect/Exit"
import * as Layer from "effect/Layer"
import * as Schedule from "effect/Schedule"
import type * as Scope from "effect/Scope"
import * as Stream from "effect/Stream"
import { ConcurrencyError, DuplicateEventError, StoreError } from "./Errors.js"
import type { ExpectedVersion } from "./Errors.js"
import {
  type AppendError,
  appendSpan,
  type AppendResult,
  checkPage,
  checkPageOptions,
  checkPosition,
  decodeRows,
  checkRange,
  EventStore,
  type EventStoreService,
  type Filter,
  nonEmpty
} from "./EventStore.js"
import { type EventRow, type PreparedAppend, prepareAppend, recorded } from "./internal/codec.js"
import * as GroupCommit from "./internal/groupCommit.js"
import { isSync, type SyncConnection } from "./internal/connection.js"
import * as Telemetry from "./Telemetry.js"
import { catchUp, live, Signal } from "./internal/paging.js"

/** @since 0.1.0 */
export interface Options {
  /**
   * How often a caught-up subscription looks for events written by other processes. Commits made through this store
   * wake subscribers at once; default 500 ms.
   */
  readonly pollInterval?: Duration.DurationInput
  /** Retries an append that found the database locked by another process. Default: 20 jittered tries over ~2 s. */
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

/** @internal */
export const tables = {
  events: "eventstore_events",
  migrations: "eventstore_migrations"
} as const

const E = tables.events

const migrations: Record<string, Effect.Effect<void, unknown, SqlClient.SqlClient>> = {
  "1_create_events": Effect.gen(function*() {
    const sql = yield* SqlClient.SqlClient
    yield* sql.onDialectOrElse({
      sqlite: () =>
        Effect.all([
          // position is the rowid: assigned max+1 under SQLite's single write lock, so it follows commit order.
          // tenant_id, and the constraint-claim and command tables of later migrations, are written in the
          // same statement/transaction as the events.
          sql.unsafe(`CREATE TABLE ${E} (
  position INTEGER PRIMARY KEY,
  event_id TEXT NOT NULL,
  stream_id TEXT NOT NULL,
  stream_type TEXT NOT NULL,
  version INTEGER NOT NULL,
  event_type TEXT NOT NULL,
  schema_version INTEGER NOT NULL,
  payload TEXT NOT NULL,
  metadata TEXT,
  tenant_id TEXT,
  recorded_at INTEGER NOT NULL
)`),
          sql.unsafe(`CREATE UNIQUE INDEX ${E}_event_id ON ${E} (event_id)`),
          sql.unsafe(`CREATE UNIQUE INDEX ${E}_stream ON ${E} (stream_id, version)`),
          sql.unsafe(`CREATE INDEX ${E}_type ON ${E} (stream_type, position)`)
        ], { discard: true }),
      orElse: () => Effect.dieMessage(`effect-eventstore: SQL dialect not supported yet`)
    })
  })
}

const latestMigration = Math.max(...Object.keys(migrations).map((key) => Number(key.split("_")[0])))

class MigrationPending extends Data.TaggedError("MigrationPending")<{ readonly found: number }> {}

/**
 * Runs the library's migrations (table `eventstore_migrations`). Safe to run from several processes at once: a
 * process that finds another one migrating waits until the schema is complete.
 *
 * @since 0.1.0
 */
export const migrate: Effect.Effect<void, StoreError, SqlClient.SqlClient> = Effect.gen(function*() {
  const sql = yield* SqlClient.SqlClient
  yield* Migrator.make({})({ loader: Migrator.fromRecord(migrations), table: tables.migrations })
  const rows = yield* sql.unsafe<{ id: number | null }>(`SELECT MAX(migration_id) AS id FROM ${tables.migrations}`)
  const found = Number(rows[0]?.id ?? 0)
  if (found < latestMigration) return yield* new MigrationPending({ found })
}).pipe(
  Effect.retry({
    schedule: Schedule.intersect(Schedule.spaced("50 millis"), Schedule.recurs(200)),
    while: (e) => e._tag === "MigrationPending" || (e._tag === "SqlError" && isBusy(e))
  }),
  Effect.mapError((cause) => new StoreError({ operation: "migrate", cause })),
  Effect.withSpan("EventStore.migrate", { captureStackTrace: false })
)

const errorCode = (error: SqlError): string | undefined => {
  const cause = error.cause as { readonly code?: unknown } | undefined
  return typeof cause?.code === "string" ? cause.code : undefined
}

const isUniqueViolation = (error: SqlError) => {
  const code = errorCode(error)
  return code === "SQLITE_CONSTRAINT_UNIQUE" || code === "SQLITE_CONSTRAINT_PRIMARYKEY" || code === "23505"
}

/** Locked by another connection: worth retrying. */
const isBusy = (error: SqlError) => {
  const code = errorCode(error)
  return code !== undefined && (code.startsWith("SQLITE_BUSY") || code.startsWith("SQLITE_LOCKED"))
}

// Rows per INSERT statement: stays far below SQLite's 32766 bound parameters.
const CHUNK = 500

const condition = (expected: ExpectedVersion) =>
  expected === "any" ? "" : expected === "no-stream" ? " WHERE h.v = 0" : expected === "stream-exists" ? " WHERE h.v > 0" : " WHERE h.v = ?"

const statements = new Map<string, string>()

/**
 * The conditional insert of `rows` events. Parameters: stream id, stream type, recorded-at, stream id, then per event
 * (event id, type, schema version, payload, metadata, tenant), then the expected version when it is a number.
 */
const insertSql = (rows: number, expected: ExpectedVersion): string => {
  const mode = typeof expected === "number" ? "n" : expected
  const key = `${mode}:${rows}`
  let text = statements.get(key)
  if (text === undefined) {
    const values = Array.from({ length: rows }, (_, i) => `(?, ${i + 1}, ?, ?, ?, ?, ?)`).join(", ")
    text = `INSERT INTO ${E} (event_id, stream_id, stream_type, version, event_type, schema_version, payload, metadata, tenant_id, recorded_at)
SELECT v.column1, ?, ?, h.v + v.column2, v.column3, v.column4, v.column5, v.column6, v.column7, ?
FROM (SELECT COALESCE((SELECT version FROM ${E} WHERE stream_id = ? ORDER BY version DESC LIMIT 1), 0) AS v) AS h,
(VALUES ${values}) AS v${condition(expected)}
ORDER BY v.column2
RETURNING version, position`
    statements.set(key, text)
  }
  return text
}

const VERSION_SQL =
  `SELECT COALESCE((SELECT version FROM ${E} WHERE stream_id = ? ORDER BY version DESC LIMIT 1), 0) AS v`

interface Written {
  readonly version: number
  readonly position: number
}

const insertParams = (append: PreparedAppend, from: number, to: number, expected: ExpectedVersion) => {
  const params: Array<unknown> = [append.streamId, append.streamType, append.recordedAt, append.streamId]
  for (let i = from; i < to; i++) {
    const e = append.events[i]!
    params.push(e.eventId, e.type, e.schemaVersion, e.payloadJson, e.metadataJson, e.tenantId)
  }
  if (typeof expected === "number") params.push(expected)
  return params
}

const insertChunk = (
  conn: Connection,
  append: PreparedAppend,
  from: number,
  to: number,
  expected: ExpectedVersion
) =>
  conn.execute(insertSql(to - from, expected), insertParams(append, from, to, expected), undefined) as Effect.Effect<
    ReadonlyArray<Written>,
    SqlError
  >

/**
 * The synchronous fast path of a lone append on a synchronous driver: the same single statement, run on the spot.
 * Anything but a success (a conflict, a constraint, a lock) returns `undefined` with nothing written, and the
 * effectful path runs it again and explains the failure.
 */
const writeSync = (conn: SyncConnection, append: PreparedAppend): ReadonlyArray<Written> | undefined => {
  const n = append.events.length
  if (n > CHUNK) return undefined
  let rows: ReadonlyArray<Written>
  try {
    rows = conn.executeSync(insertSql(n, append.expected), insertParams(append, 0, n, append.expected))
  } catch {
    return undefined
  }
  if (rows.length === 0) return undefined
  return rows.length > 1 ? [...rows].sort(byVersion) : rows
}

const currentVersion = (conn: Connection, streamId: string) =>
  Effect.map(
    conn.execute(VERSION_SQL, [streamId], undefined) as Effect.Effect<ReadonlyArray<{ v: number }>, SqlError>,
    (rows) => Number(rows[0]?.v ?? 0)
  )

/** Why a unique index refused the insert: a stored event id, or a concurrent writer on the stream. */
const explainUnique = (
  conn: Connection,
  append: PreparedAppend
): Effect.Effect<never, ConcurrencyError | DuplicateEventError | SqlError> =>
  Effect.flatMap(
    conn.execute(
      `SELECT event_id FROM ${E} WHERE event_id IN (${append.events.map(() => "?").join(", ")}) LIMIT 1`,
      append.events.map((e) => e.eventId),
      undefined
    ) as Effect.Effect<ReadonlyArray<{ event_id: string }>, SqlError>,
    (rows): Effect.Effect<never, ConcurrencyError | DuplicateEventError | SqlError> =>
      rows.length > 0
        ? Effect.fail(new DuplicateEventError({ streamId: append.streamId, eventId: rows[0]!.event_id }))
        : Effect.flatMap(currentVersion(conn, append.streamId), (actual) =>
          Effect.fail(new ConcurrencyError({ streamId: append.streamId, expected: append.expected, actual })))
  )

type AppendFailure = ConcurrencyError | DuplicateEventError

/**
 * Writes one append on `conn`, inside the group's transaction or (alone) in autocommit. A conflict or a duplicate
 * event id fails only this append, with nothing of it written: a single statement is atomic on its own, and an
 * append spanning several statements runs inside a savepoint. Any other SQL error fails the whole group.
 */
const writeOne = (
  conn: Connection,
  append: PreparedAppend,
  inTransaction: boolean
): Effect.Effect<ReadonlyArray<Written>, AppendFailure | SqlError> => {
  const n = append.events.length
  const conflict = Effect.flatMap(currentVersion(conn, append.streamId), (actual) =>
    Effect.fail(new ConcurrencyError({ streamId: append.streamId, expected: append.expected, actual })))
  const onUnique = <A>(self: Effect.Effect<A, AppendFailure | SqlError>) =>
    Effect.catchTag(self, "SqlError", (e) => isUniqueViolation(e) ? explainUnique(conn, append) : Effect.fail(e))
  if (n <= CHUNK) {
    return insertChunk(conn, append, 0, n, append.expected).pipe(
      Effect.flatMap((rows) =>
        rows.length === 0 ? conflict : Effect.succeed(rows.length > 1 ? [...rows].sort(byVersion) : rows)
      ),
      onUnique
    )
  }
  // Too large for one statement: chunks, each expecting the version the previous one reached (nobody else can
  // change it while we hold the write lock), inside a savepoint so that a failure undoes them all.
  const chunks = Effect.gen(function*() {
    const written: Array<Written> = []
    let expected = append.expected
    for (let from = 0; from < n; from += CHUNK) {
      const rows = yield* insertChunk(conn, append, from, Math.min(n, from + CHUNK), expected)
      if (rows.length === 0) return yield* conflict
      const sorted = [...rows].sort(byVersion)
      written.push(...sorted)
      expected = sorted[sorted.length - 1]!.version
    }
    return written
  }).pipe(onUnique)
  const savepoint = Effect.zipRight(
    exec(conn, "SAVEPOINT eventstore_append"),
    Effect.tapErrorTag(chunks, "ConcurrencyError", () => rollbackTo(conn)).pipe(
      Effect.tapErrorTag("DuplicateEventError", () => rollbackTo(conn)),
      Effect.zipLeft(exec(conn, "RELEASE eventstore_append"))
    )
  )
  return inTransaction ? savepoint : transaction(conn, savepoint)
}

const exec = (conn: Connection, statement: string) => Effect.asVoid(conn.execute(statement, [], undefined))

const rollbackTo = (conn: Connection) =>
  Effect.zipRight(exec(conn, "ROLLBACK TO eventstore_append"), exec(conn, "RELEASE eventstore_append"))

/** Runs `body` in a write transaction; rolls back on any failure. Callers run it uninterruptibly. */
const transaction = <A, E>(conn: Connection, body: Effect.Effect<A, E | SqlError>): Effect.Effect<A, E | SqlError> =>
  Effect.zipRight(
    exec(conn, BEGIN),
    body.pipe(
      Effect.zipLeft(exec(conn, "COMMIT")),
      Effect.onError(() => Effect.ignore(exec(conn, "ROLLBACK")))
    )
  )

/**
 * Writes a group of appends: one that fits a statement alone runs in autocommit; anything else shares one
 * transaction (one fsync). Per-append conflicts come back as failed exits; SQL errors fail the group.
 */
const writeGroup = (
  conn: Connection,
  appends: ReadonlyArray<PreparedAppend>
): Effect.Effect<ReadonlyArray<Exit.Exit<ReadonlyArray<Written>, AppendFailure>>, SqlError> => {
  const separate = (append: PreparedAppend, inTransaction: boolean) =>
    Effect.matchEffect(writeOne(conn, append, inTransaction), {
      onFailure: (e) => e._tag === "SqlError" ? Effect.fail(e) : Effect.succeed(Exit.fail(e)),
      onSuccess: (written) => Effect.succeed(Exit.succeed(written))
    })
  if (appends.length === 1) return Effect.map(separate(appends[0]!, false), (exit) => [exit])
  if (isSync(conn)) return transaction(conn, writeManySync(conn, appends, separate))
  return transaction(conn, Effect.forEach(appends, (append) => separate(append, true)))
}

/**
 * The appends of a group on a synchronous driver, inside the group's transaction: each one's statement runs on the
 * spot; the few that do not simply succeed (a conflict, a duplicate id, more rows than one statement takes) go
 * through the effectful path afterwards, in the same transaction, which writes or explains them. Commit order
 * within the group is the order they were written in.
 */
const writeManySync = (
  conn: SyncConnection,
  appends: ReadonlyArray<PreparedAppend>,
  separate: (
    append: PreparedAppend,
    inTransaction: boolean
  ) => Effect.Effect<Exit.Exit<ReadonlyArray<Written>, AppendFailure>, SqlError>
): Effect.Effect<ReadonlyArray<Exit.Exit<ReadonlyArray<Written>, AppendFailure>>, SqlError> =>
  Effect.suspend(() => {
    const exits: Array<Exit.Exit<ReadonlyArray<Written>, AppendFailure>> = new Array(appends.length)
    const rest: Array<number> = []
    for (let i = 0; i < appends.length; i++) {
      const written = writeSync(conn, appends[i]!)
      if (written === undefined) rest.push(i)
      else exits[i] = Exit.succeed(written)
    }
    if (rest.length === 0) return Effect.succeed(exits)
    return Effect.as(
      Effect.forEach(rest, (i) => Effect.map(separate(appends[i]!, true), (exit) => exits[i] = exit), { discard: true }),
      exits
    )
  })

// IMMEDIATE takes SQLite's write lock up front, so the busy timeout applies instead of a deadlock error later.
const BEGIN = "BEGIN IMMEDIATE"

const byVersion = (a: Written, b: Written) => a.version - b.version

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
    const busyRetry = options.busyRetry ??
      Schedule.intersect(Schedule.jittered(Schedule.spaced("100 millis")), Schedule.recurs(20))
    const storeError = (operation: string) => (cause: SqlError) => new StoreError({ operation, cause })

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

    const writer = GroupCommit.make<PreparedAppend, ReadonlyArray<Written>, AppendFailure | SqlError>({
      run: (appends) =>
        Effect.map(withWriter((conn) => writeGroup(conn, appends)), (exits) => {
          signal.notify()
          let conflicts = 0
          for (const exit of exits) {
            if (Exit.isFailure(exit) && exit.cause._tag === "Fail" && exit.cause.error._tag === "ConcurrencyError") {
              conflicts++
            }
          }
          committed(exits.length, conflicts)
          return exits
        }),
      runSync: held !== undefined && isSync(held)
        ? (append) => {
          const written = writeSync(held, append)
          if (written !== undefined) {
            signal.notify()
            committed(1, 0)
          }
          return written
        }
        : undefined,
      size: (append) => append.events.length,
      maxSize: options.maxGroupEvents ?? 2048
    })

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

    const append: EventStoreService["append"] = (streamId, events, options) =>
      Effect.useSpan("EventStore.append", appendSpan(streamId, options?.streamType, events.length), () =>
        Effect.clockWith((clock) => {
          const prepared = prepareAppend(streamId, events, options, clock.unsafeCurrentTimeMillis())
          return Either.isLeft(prepared) ? Effect.fail(prepared.left) : submit(prepared.right)
        }))

    const read: EventStoreService["read"] = (streamId, options) =>
      Stream.unwrap(Effect.gen(function*() {
        const { backward, from, to } = yield* checkRange(options)
        const pageSize = yield* checkPage(options?.pageSize)
        return catchUp({
          start: backward ? to + 1 : from - 1,
          pageSize,
          cursorOf: (row) => row.version,
          fetch: (cursor, limit) =>
            Effect.mapError(
              backward
                ? sql<EventRow>`SELECT * FROM ${sql(E)} WHERE stream_id = ${streamId} AND version < ${cursor}
                    AND version >= ${from} ORDER BY version DESC LIMIT ${limit}`.withoutTransform
                : sql<EventRow>`SELECT * FROM ${sql(E)} WHERE stream_id = ${streamId} AND version > ${cursor}
                    AND version <= ${to} ORDER BY version LIMIT ${limit}`.withoutTransform,
              storeError("read")
            )
        })
      })).pipe(Stream.withSpan("EventStore.read", { captureStackTrace: false, attributes: { "aggregate.id": streamId } }))

    const readPage: EventStoreService["readPage"] = (streamId, options) =>
      Effect.flatMap(checkPageOptions(options), ({ after, limit }) =>
        sql<EventRow>`SELECT * FROM ${sql(E)} WHERE stream_id = ${streamId} AND version > ${after}
          ORDER BY version LIMIT ${limit}`.withoutTransform.pipe(
          Effect.mapError(storeError("read")),
          Effect.flatMap(decodeRows)
        ))

    const page = (filter: Filter | undefined) => {
      const streamTypes = nonEmpty(filter?.streamTypes)
      const eventTypes = nonEmpty(filter?.eventTypes)
      const where = sql.and([
        ...(streamTypes ? [sql.in("stream_type", streamTypes)] : []),
        ...(eventTypes ? [sql.in("event_type", eventTypes)] : [])
      ])
      return (after: number, limit: number, operation: string) =>
        Effect.mapError(
          streamTypes || eventTypes
            ? sql<EventRow>`SELECT * FROM ${sql(E)} WHERE position > ${after} AND ${where}
                ORDER BY position LIMIT ${limit}`.withoutTransform
            : sql<EventRow>`SELECT * FROM ${sql(E)} WHERE position > ${after}
                ORDER BY position LIMIT ${limit}`.withoutTransform,
          storeError(operation)
        )
    }

    const readAll: EventStoreService["readAll"] = (options) =>
      Stream.unwrap(Effect.gen(function*() {
        const start = yield* checkPosition(options?.fromPosition ?? 0)
        const pageSize = yield* checkPage(options?.pageSize)
        const fetch = page(options?.filter)
        return catchUp({
          start,
          pageSize,
          fetch: (after, limit) => fetch(after, limit, "readAll"),
          cursorOf: (row) => row.position
        })
      })).pipe(Stream.withSpan("EventStore.readAll", { captureStackTrace: false }))

    const head = Effect.mapError(
      Effect.map(
        sql<{ p: number | null }>`SELECT MAX(position) AS p FROM ${sql(E)}`.withoutTransform,
        (rows) => Number(rows[0]?.p ?? 0)
      ),
      storeError("subscribe")
    )

    const subscribe: EventStoreService["subscribe"] = (options) =>
      Stream.unwrap(Effect.gen(function*() {
        const from = options?.fromPosition ?? 0
        const start = from === "end" ? head : Effect.succeed(yield* checkPosition(from))
        const pageSize = yield* checkPage(options?.pageSize)
        const fetch = page(options?.filter)
        return live({ start, pageSize, fetch: (after, limit) => fetch(after, limit, "subscribe"), signal, pollInterval })
      })).pipe(Stream.withSpan("EventStore.subscribe", { captureStackTrace: false }))

    const version: EventStoreService["version"] = (streamId) =>
      sql<{ v: number }>`SELECT COALESCE((SELECT version FROM ${sql(E)} WHERE stream_id = ${streamId}
        ORDER BY version DESC LIMIT 1), 0) AS v`.withoutTransform.pipe(
        Effect.map((rows) => Number(rows[0]?.v ?? 0)),
        Effect.mapError(storeError("version")),
        Effect.withSpan("EventStore.version", { captureStackTrace: false, attributes: { "aggregate.id": streamId } })
      )

    return EventStore.of({ append, read, readPage, readAll, subscribe, version })
  })

/**
 * The SQL event store as a layer over a `SqlClient`.
 *
 * @since 0.1.0
 */
export const layer = (options?: Options): Layer.Layer<EventStore, StoreError, SqlClient.SqlClient> =>
  Layer.scoped(EventStore, make(options))
