/**
 * The library's SQL schema, as @effect/sql migrations in the library's own table (`eventstore_migrations`). Every
 * SQL-backed service runs `migrate` when it starts; it is idempotent and safe to run from several processes at once.
 */
import * as Migrator from "@effect/sql/Migrator"
import * as SqlClient from "@effect/sql/SqlClient"
import * as Data from "effect/Data"
import * as Effect from "effect/Effect"
import * as Schedule from "effect/Schedule"
import { StoreError } from "../Errors.js"
import { isBusy } from "./sqlErrors.js"

export const tables = {
  events: "eventstore_events",
  snapshots: "eventstore_snapshots",
  migrations: "eventstore_migrations"
} as const

const E = tables.events
const S = tables.snapshots

const unsupported = Effect.dieMessage("effect-eventstore: SQL dialect not supported yet")

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
      orElse: () => unsupported
    })
  }),
  "2_create_snapshots": Effect.gen(function*() {
    const sql = yield* SqlClient.SqlClient
    yield* sql.onDialectOrElse({
      sqlite: () =>
        Effect.all([
          sql.unsafe(`CREATE TABLE ${S} (
  stream_id TEXT NOT NULL,
  stream_type TEXT NOT NULL,
  version INTEGER NOT NULL,
  schema_version INTEGER NOT NULL,
  state TEXT NOT NULL,
  analytics TEXT,
  size_bytes INTEGER NOT NULL,
  created_at INTEGER NOT NULL,
  PRIMARY KEY (stream_id, version)
)`),
          sql.unsafe(`CREATE INDEX ${S}_created ON ${S} (created_at)`)
        ], { discard: true }),
      orElse: () => unsupported
    })
  })
}

const latestMigration = Math.max(...Object.keys(migrations).map((key) => Number(key.split("_")[0])))

class MigrationPending extends Data.TaggedError("MigrationPending")<{ readonly found: number }> {}

/** Runs the library's migrations; waits for another process that is running them. */
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
