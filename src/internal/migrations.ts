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
  migrations: "eventstore_migrations",
  projections: "eventstore_projections",
  projectionMigrations: "eventstore_projection_migrations",
  parked: "eventstore_parked_events"
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

/** Another process has claimed the migrations and not finished them yet. */
class MigrationPending extends Data.TaggedError("MigrationPending")<{ readonly found: number }> {
  override get message(): string {
    return `another process is creating the schema (at migration ${this.found} of ${latestMigration})`
  }
}

const attempt = Effect.gen(function*() {
  const sql = yield* SqlClient.SqlClient
  yield* Migrator.make({})({ loader: Migrator.fromRecord(migrations), table: tables.migrations })
  const rows = yield* sql.unsafe<{ id: number | null }>(`SELECT MAX(migration_id) AS id FROM ${tables.migrations}`)
  const found = Number(rows[0]?.id ?? 0)
  if (found < latestMigration) return yield* new MigrationPending({ found })
}).pipe(
  // The Migrator turns a failed migration (a full disk, a lock) and a failed COMMIT into defects; its transaction
  // is rolled back by then, so they are failures like any other here.
  Effect.catchAllDefect((defect) => Effect.fail(defect))
)

// A failed migration reaches us as the Migrator's error (or a defect) around the driver's: busy is busy at any depth.
const lockedOut = (error: unknown): boolean => {
  for (let e = error, depth = 0; e !== undefined && e !== null && depth < 4; depth++) {
    if (isBusy(e)) return true
    e = (e as { readonly cause?: unknown }).cause
  }
  return false
}

/**
 * Runs the library's migrations; waits for another process that is running them. `retry` paces the attempts made
 * while another process holds the write lock or is midway through the migrations. Each attempt returns at once on a
 * lock only if the connection's busy timeout is 0 (the SQLite layer migrates through its writer connection, which is
 * so); otherwise each attempt may also wait inside the driver.
 */
export const migrateWithin = (retry: Schedule.Schedule<unknown>): Effect.Effect<void, StoreError, SqlClient.SqlClient> =>
  attempt.pipe(
    Effect.retry({
      schedule: retry,
      while: (e) => (typeof e === "object" && e !== null && (e as { _tag?: unknown })._tag === "MigrationPending") || lockedOut(e)
    }),
    Effect.mapError((cause) => new StoreError({ operation: "migrate", cause })),
    Effect.withSpan("EventStore.migrate", { captureStackTrace: false })
  )

/** Runs the library's migrations; waits (up to 10 s) for another process that is running them. */
export const migrate: Effect.Effect<void, StoreError, SqlClient.SqlClient> = migrateWithin(
  Schedule.intersect(Schedule.spaced("50 millis"), Schedule.recurs(200))
)
