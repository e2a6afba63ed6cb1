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
  parked: "eventstore_parked_events",
  /** PostgreSQL: one row, the offset added to transaction ids in positions (see `POSITION_BITS`). */
  settings: "eventstore_settings"
} as const

/**
 * PostgreSQL positions: the writing transaction's id (plus an offset, normally 0) times 2^20, plus the event's place
 * in its append (1, 2, …). A reader then hands out only positions below the oldest running transaction's id times
 * 2^20 (`horizonPg`), and no transaction still running can ever commit a position below that: positions stay plain
 * numbers and never skip an event whatever the commit order. Room: 2^20 - 1 events per append, and transaction ids
 * up to 2^33 (positions stay below 2^53, so they are exact JavaScript numbers).
 */
export const POSITION_BITS = 20
export const POSITION_SCALE = 2 ** POSITION_BITS

/** PostgreSQL: the positions no running transaction can fall behind are those below this expression. */
export const horizonPg = `(SELECT (pg_snapshot_xmin(pg_current_snapshot())::text::bigint + position_offset) * ${POSITION_SCALE}
  FROM eventstore_settings WHERE id = 1)`

const E = tables.events
const S = tables.snapshots

const unsupported = Effect.dieMessage("effect-eventstore: SQL dialect not supported yet")
const T = tables.settings

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
      pg: () =>
        Effect.all([
          // position: see POSITION_BITS. Payloads are `json`: kept as written (jsonb reorders keys, drops
          // duplicates, refuses \u0000) and cheaper to write; read back as text, never through name transforms.
          sql.unsafe(`CREATE TABLE ${E} (
  position BIGINT PRIMARY KEY CHECK (position > 0 AND position < 9007199254740992),
  event_id TEXT NOT NULL,
  stream_id TEXT NOT NULL,
  stream_type TEXT NOT NULL,
  version INTEGER NOT NULL CHECK (version > 0),
  event_type TEXT NOT NULL,
  schema_version INTEGER NOT NULL,
  payload JSON NOT NULL,
  metadata JSON,
  tenant_id TEXT,
  recorded_at BIGINT NOT NULL
)`),
          sql.unsafe(`CREATE UNIQUE INDEX ${E}_event_id ON ${E} (event_id)`),
          sql.unsafe(`CREATE UNIQUE INDEX ${E}_stream ON ${E} (stream_id, version)`),
          sql.unsafe(`CREATE INDEX ${E}_type ON ${E} (stream_type, position)`),
          sql.unsafe(`CREATE TABLE ${T} (id INTEGER PRIMARY KEY CHECK (id = 1), position_offset BIGINT NOT NULL)`),
          sql.unsafe(`INSERT INTO ${T} (id, position_offset) VALUES (1, 0)`),
          // The base of an append's positions. The last stored position is read first, before this transaction
          // has an id: whatever it sees committed earlier, so its id is smaller than ours. A base at or below it
          // means transaction ids went back (a dump restored into another cluster): refuse, rather than write
          // positions readers have passed (eventstore_rebase() moves the offset past them).
          sql.unsafe(`CREATE FUNCTION eventstore_position_base() RETURNS bigint LANGUAGE plpgsql AS $fn$
DECLARE
  top bigint := (SELECT position FROM ${E} ORDER BY position DESC LIMIT 1);
  base bigint := (pg_current_xact_id()::text::bigint + (SELECT position_offset FROM ${T} WHERE id = 1)) * ${POSITION_SCALE};
BEGIN
  IF top >= base THEN
    RAISE EXCEPTION 'effect-eventstore: transaction ids are behind the stored positions (was the database restored into another cluster?); run SELECT eventstore_rebase()'
      USING ERRCODE = 'EV001';
  END IF;
  RETURN base;
END $fn$`),
          // Moves the offset so that every transaction from now on writes after the last stored position; a
          // no-op when they already do. Runs when a store opens.
          sql.unsafe(`CREATE FUNCTION eventstore_rebase() RETURNS bigint LANGUAGE plpgsql AS $fn$
DECLARE
  top bigint;
  next_xid bigint;
  current_offset bigint;
BEGIN
  LOCK TABLE ${T} IN EXCLUSIVE MODE;
  top := COALESCE((SELECT position FROM ${E} ORDER BY position DESC LIMIT 1), 0);
  next_xid := pg_snapshot_xmax(pg_current_snapshot())::text::bigint;
  current_offset := (SELECT position_offset FROM ${T} WHERE id = 1);
  IF (next_xid + current_offset) * ${POSITION_SCALE} <= top THEN
    current_offset := top / ${POSITION_SCALE} + 1 - next_xid;
    UPDATE ${T} SET position_offset = current_offset WHERE id = 1;
  END IF;
  RETURN current_offset;
END $fn$`)
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
      pg: () =>
        Effect.all([
          sql.unsafe(`CREATE TABLE ${S} (
  stream_id TEXT NOT NULL,
  stream_type TEXT NOT NULL,
  version INTEGER NOT NULL,
  schema_version INTEGER NOT NULL,
  state TEXT NOT NULL,
  analytics TEXT,
  size_bytes INTEGER NOT NULL,
  created_at BIGINT NOT NULL,
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

/** PostgreSQL: the advisory lock (transaction-scoped) that serializes schema changes across processes. */
export const SCHEMA_LOCK = 7_349_112_001

const attempt = Effect.gen(function*() {
  const sql = yield* SqlClient.SqlClient
  const run = Effect.gen(function*() {
    yield* Migrator.make({})({ loader: Migrator.fromRecord(migrations), table: tables.migrations })
    const rows = yield* sql.unsafe<{ id: unknown }>(`SELECT MAX(migration_id) AS id FROM ${tables.migrations}`)
    const found = Number(rows[0]?.id ?? 0)
    if (found < latestMigration) return yield* new MigrationPending({ found })
  })
  yield* sql.onDialectOrElse({
    // One process at a time, in one transaction: the Migrator's own "does the table exist" probe fails inside a
    // transaction (aborting it), so the table is created here first; positions are rebased last (a no-op unless
    // the database was restored into another cluster).
    pg: () =>
      sql.withTransaction(Effect.gen(function*() {
        yield* sql.unsafe(`SELECT pg_advisory_xact_lock(${SCHEMA_LOCK})`)
        yield* sql.unsafe(`CREATE TABLE IF NOT EXISTS ${tables.migrations} (
  migration_id integer primary key,
  created_at timestamp with time zone not null default now(),
  name text not null
)`)
        yield* run
        yield* sql.unsafe(`SELECT eventstore_rebase()`)
      })),
    orElse: () => run
  })
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
