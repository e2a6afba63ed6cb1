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
import * as Clock from "effect/Clock"
import * as Data from "effect/Data"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Schedule from "effect/Schedule"
import type * as Scope from "effect/Scope"
import * as Stream from "effect/Stream"
import { ConcurrencyError, DuplicateEventError, StoreError } from "./Errors.js"
import type { ExpectedVersion } from "./Errors.js"
import {
  appendSpan,
  checkPage,
  checkPosition,
  checkRange,
  EventStore,
  type EventStoreService,
  type Filter,
  nonEmpty
} from "./EventStore.js"
import { type EventRow, type PreparedAppend, prepareAppend, recorded } from "./internal/codec.js"
import { catchUp, live, makeSignal } from "./internal/paging.js"

/** @since 0.1.0 */
export interface Options {
  /**
   * How often a caught-up subscription looks for events written by other processes. Commits made through this store
   * wake subscribers at once; default 500 ms.
   */
  readonly pollInterval?: Duration.DurationInput
  /** Retries an append that found the database locked by another process. Default: 20 jittered tries over ~2 s. */
  readonly busyRetry?: Schedule.Schedule<unknown>
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
  Effect.withSpan("EventStore.migrate")
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

const insertChunk = (
  conn: Connection,
  append: PreparedAppend,
  from: number,
  to: number,
  expected: ExpectedVersion
) => {
  const params: Array<unknown> = [append.streamId, append.streamType, append.recordedAt, append.streamId]
  for (let i = from; i < to; i++) {
    const e = append.events[i]!
    params.push(e.eventId, e.type, e.schemaVersion, e.payloadJson, e.metadataJson, e.tenantId)
  }
  if (typeof expected === "number") params.push(expected)
  return conn.execute(insertSql(to - from, expected), params, undefined) as Effect.Effect<
    ReadonlyArray<Written>,
    SqlError
  >
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

/**
 * Writes one prepared append on `conn`. Returns the (version, position) of each event in version order, or fails
 * with a typed conflict. Runs outside any transaction when the append fits one statement.
 */
const write = (
  conn: Connection,
  append: PreparedAppend
): Effect.Effect<ReadonlyArray<Written>, ConcurrencyError | DuplicateEventError | SqlError> => {
  const n = append.events.length
  const conflict = Effect.flatMap(currentVersion(conn, append.streamId), (actual) =>
    Effect.fail(new ConcurrencyError({ streamId: append.streamId, expected: append.expected, actual })))
  const onUnique = <A>(self: Effect.Effect<A, ConcurrencyError | SqlError>) =>
    Effect.catchTag(self, "SqlError", (e) => isUniqueViolation(e) ? explainUnique(conn, append) : Effect.fail(e))
  if (n <= CHUNK) {
    return insertChunk(conn, append, 0, n, append.expected).pipe(
      Effect.flatMap((rows) =>
        rows.length === 0 ? conflict : Effect.succeed(rows.length > 1 ? [...rows].sort(byVersion) : rows)
      ),
      onUnique
    )
  }
  // Too large for one statement: chunks in one transaction; each chunk after the first expects the version the
  // previous one reached, which nobody else can change while we hold the write lock.
  return Effect.uninterruptibleMask((restore) =>
    Effect.gen(function*() {
      yield* conn.executeUnprepared(BEGIN, [], undefined)
      const result = yield* restore(Effect.gen(function*() {
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
      })).pipe(onUnique, Effect.onError(() => Effect.ignore(conn.executeUnprepared("ROLLBACK", [], undefined))))
      yield* conn.executeUnprepared("COMMIT", [], undefined)
      return result
    })
  )
}

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
    const signal = yield* makeSignal
    const pollInterval = Duration.decode(options.pollInterval ?? "500 millis")
    const busyRetry = options.busyRetry ??
      Schedule.intersect(Schedule.jittered(Schedule.spaced("100 millis")), Schedule.recurs(20))
    const storeError = (operation: string) => (cause: SqlError) => new StoreError({ operation, cause })

    const append: EventStoreService["append"] = (streamId, events, options) =>
      Effect.flatMap(Clock.currentTimeMillis, (now) =>
        Effect.flatMap(prepareAppend(streamId, events, options, now), (prepared) =>
          Effect.scoped(Effect.flatMap(sql.reserve, (conn) => write(conn, prepared))).pipe(
            Effect.retry({ schedule: busyRetry, while: (e) => e._tag === "SqlError" && isBusy(e) }),
            Effect.catchTag("SqlError", (e) => Effect.fail(storeError("append")(e))),
            Effect.flatMap((written) =>
              Effect.as(signal.notify, {
                streamId,
                version: written[written.length - 1]!.version,
                position: written[written.length - 1]!.position,
                events: recorded(prepared, written.map((w) => w.position), written[0]!.version)
              })
            )
          ))).pipe(Effect.withSpan("EventStore.append", appendSpan(streamId, options?.streamType, events.length)))

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
      })).pipe(Stream.withSpan("EventStore.read", { attributes: { "aggregate.id": streamId } }))

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
      })).pipe(Stream.withSpan("EventStore.readAll"))

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
      })).pipe(Stream.withSpan("EventStore.subscribe"))

    const version: EventStoreService["version"] = (streamId) =>
      sql<{ v: number }>`SELECT COALESCE((SELECT version FROM ${sql(E)} WHERE stream_id = ${streamId}
        ORDER BY version DESC LIMIT 1), 0) AS v`.withoutTransform.pipe(
        Effect.map((rows) => Number(rows[0]?.v ?? 0)),
        Effect.mapError(storeError("version")),
        Effect.withSpan("EventStore.version", { attributes: { "aggregate.id": streamId } })
      )

    return EventStore.of({ append, read, readAll, subscribe, version })
  })

/**
 * The SQL event store as a layer over a `SqlClient`.
 *
 * @since 0.1.0
 */
export const layer = (options?: Options): Layer.Layer<EventStore, StoreError, SqlClient.SqlClient> =>
  Layer.scoped(EventStore, make(options))
