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
  unique: "eventstore_unique",
  commands: "eventstore_commands",
  privacyKeys: "eventstore_privacy_keys",
  privacyKeyState: "eventstore_privacy_key_state",
  privacyStreams: "eventstore_privacy_streams",
  privacyAudit: "eventstore_privacy_audit",
  privacyMeta: "eventstore_privacy_meta"
} as const

/**
 * PostgreSQL's global order. Positions come from a sequence, so they follow the order appends took them, not the
 * order they commit in. Two rules make a reader safe anyway:
 * - an append takes its transaction id and its positions together, one append at a time (`eventstore_append`
 *   holds an advisory lock for just that, not until its commit), and has written nothing before: so positions
 *   and transaction ids rise together, and each row records its transaction id (`tx`);
 * - a reader hands out only rows whose transaction is older than the oldest one still running on the server
 *   (`tx < pg_snapshot_xmin(pg_current_snapshot())`): those transactions have all ended, and every transaction that
 *   took a lower position has an even older id, so it has ended too. What a reader sees is therefore a prefix of
 *   the log, and nothing can ever commit inside it.
 */
export const SAFE_PG = "tx < pg_snapshot_xmin(pg_current_snapshot())"

/** PostgreSQL: the advisory lock (session-scoped, held for microseconds) under which appends take positions. */
export const POSITION_LOCK = 7_349_112_002

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
      pg: () =>
        Effect.all([
          // position and tx: see SAFE_PG. Payloads are `json`: kept as written (jsonb reorders keys, drops
          // duplicates, refuses \u0000) and cheaper to write; read back as text, never through name transforms.
          // CACHE 1 (the default, written out): numbers are handed out in the order appends ask, under the lock
          sql.unsafe(`CREATE SEQUENCE ${E}_position AS BIGINT CACHE 1`),
          sql.unsafe(`CREATE TABLE ${E} (
  position BIGINT PRIMARY KEY,
  event_id TEXT NOT NULL,
  stream_id TEXT NOT NULL,
  stream_type TEXT NOT NULL,
  version BIGINT NOT NULL CHECK (version > 0),
  event_type TEXT NOT NULL,
  schema_version INTEGER NOT NULL,
  payload JSON NOT NULL,
  metadata JSON,
  tenant_id TEXT,
  recorded_at BIGINT NOT NULL,
  tx XID8 NOT NULL
)`),
          sql.unsafe(`CREATE UNIQUE INDEX ${E}_event_id ON ${E} (event_id)`),
          sql.unsafe(`CREATE UNIQUE INDEX ${E}_stream ON ${E} (stream_id, version)`),
          sql.unsafe(`CREATE INDEX ${E}_type ON ${E} (stream_type, position)`),
          // One append in one call (one round trip). Mode: 0 any, 1 no-stream, 2 stream-exists, 3 exactly
          // `expected`. Returns the events' versions and positions, or one row (the stream's version, no position)
          // when the expectation does not hold. The positions and the transaction id are taken under the lock
          // (see SAFE_PG), before anything is written; the insert runs after the lock is released. A unique
          // violation (a concurrent writer on the stream, or a stored event id) is raised as it is.
          sql.unsafe(`CREATE FUNCTION eventstore_append(
  p_stream TEXT, p_stream_type TEXT, p_recorded_at BIGINT, p_ids TEXT[], p_types TEXT[], p_schema_versions INT[],
  p_payloads TEXT[], p_metadata TEXT[], p_tenants TEXT[], p_mode INT, p_expected BIGINT
) RETURNS TABLE (v BIGINT, p BIGINT) LANGUAGE plpgsql AS $fn$
DECLARE
  head BIGINT;
  n INT := cardinality(p_ids);
  base BIGINT;
  xact XID8;
BEGIN
  -- the ordering rule (see SAFE_PG) needs this transaction's id to be taken below, under the lock
  IF pg_current_xact_id_if_assigned() IS NOT NULL THEN
    RAISE EXCEPTION 'effect-eventstore: eventstore_append must be the first write of its transaction'
      USING ERRCODE = '25001';
  END IF;
  head := COALESCE((SELECT e.version FROM ${E} e WHERE e.stream_id = p_stream ORDER BY e.version DESC LIMIT 1), 0);
  IF (p_mode = 1 AND head <> 0) OR (p_mode = 2 AND head = 0) OR (p_mode = 3 AND head <> p_expected) THEN
    RETURN QUERY SELECT head, NULL::BIGINT;
    RETURN;
  END IF;
  BEGIN
    PERFORM pg_advisory_lock(${POSITION_LOCK});
    xact := pg_current_xact_id();
    base := nextval('${E}_position');
    IF n > 1 THEN
      PERFORM setval('${E}_position', base + n - 1);
    END IF;
    PERFORM pg_advisory_unlock(${POSITION_LOCK});
  EXCEPTION WHEN OTHERS OR QUERY_CANCELED THEN
    PERFORM pg_advisory_unlock(${POSITION_LOCK});
    RAISE;
  END;
  RETURN QUERY INSERT INTO ${E} AS e (position, event_id, stream_id, stream_type, version, event_type,
    schema_version, payload, metadata, tenant_id, recorded_at, tx)
  SELECT base + u.ord - 1, u.event_id, p_stream, p_stream_type, head + u.ord, u.event_type, u.schema_version,
    u.payload::json, u.metadata::json, u.tenant_id, p_recorded_at, xact
  FROM unnest(p_ids, p_types, p_schema_versions, p_payloads, p_metadata, p_tenants)
    WITH ORDINALITY AS u(event_id, event_type, schema_version, payload, metadata, tenant_id, ord)
  ORDER BY u.ord
  RETURNING e.version, e.position;
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
  version BIGINT NOT NULL,
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

const U = tables.unique
const C = tables.commands

/**
 * Tenants, claims and command ids (store guarantees): the events' `claims` column (what each event claimed and released,
 * JSON, so the table of unique values can be rebuilt from the log), the table of unique values (one owner per
 * tenant, index and value) and the records of command ids (the result of the append that used each, until it
 * expires). All three are written in the append's own transaction.
 */
const guards = (sql: SqlClient.SqlClient, integer: string) => [
  sql.unsafe(`ALTER TABLE ${E} ADD COLUMN claims TEXT`),
  sql.unsafe(`CREATE TABLE ${U} (
  tenant_id TEXT NOT NULL,
  index_name TEXT NOT NULL,
  value TEXT NOT NULL,
  stream_id TEXT NOT NULL,
  PRIMARY KEY (tenant_id, index_name, value)
)`),
  sql.unsafe(`CREATE TABLE ${C} (
  command_id TEXT PRIMARY KEY,
  stream_id TEXT NOT NULL,
  first_version ${integer} NOT NULL,
  last_version ${integer} NOT NULL,
  position ${integer} NOT NULL,
  expires_at ${integer} NOT NULL
)`),
  sql.unsafe(`CREATE INDEX ${C}_expires ON ${C} (expires_at)`),
  // tenant_id names the tenant whose stream a row is in (see `tenantKey`); until now it copied the metadata's
  // tenantId, which made no stream a tenant's: those rows are streams without a tenant (their metadata keeps it)
  sql.unsafe(`UPDATE ${E} SET tenant_id = NULL WHERE tenant_id IS NOT NULL`),
  sql.unsafe(`CREATE INDEX ${E}_tenant ON ${E} (tenant_id, position) WHERE tenant_id IS NOT NULL`)
]

/**
 * PostgreSQL: a guarded append (a command id, unique values) in one call, so in one round trip and in autocommit,
 * as a plain one. In order: a live record of the command id raises `ES001` (nothing written); `eventstore_append`
 * (its rows are returned; a failed expectation returns its one row and ends the call); each value, in the order
 * given (sorted by the caller): a claim held by another stream raises `ES002`, a release of a value the stream does
 * not hold `ES003`, their message the JSON `[index, value, owner]`; the events' stored claims; the command's record
 * (a live one recorded meanwhile raises `ES001`) and the removal of a few expired ones. An exception undoes the
 * whole call. Claim arrays: tenants, indexes, values, first and last step (1 claim, 0 release).
 */
const APPEND_GUARDED_PG = `CREATE FUNCTION eventstore_append_guarded(
  p_stream TEXT, p_stream_type TEXT, p_recorded_at BIGINT, p_ids TEXT[], p_types TEXT[], p_schema_versions INT[],
  p_payloads TEXT[], p_metadata TEXT[], p_tenants TEXT[], p_mode INT, p_expected BIGINT,
  p_command TEXT, p_expires_at BIGINT, p_claim_tenants TEXT[], p_claim_indexes TEXT[], p_claim_values TEXT[],
  p_claim_first INT[], p_claim_last INT[], p_event_claims TEXT[]
) RETURNS TABLE (v BIGINT, p BIGINT) LANGUAGE plpgsql AS $fn$
DECLARE
  r RECORD;
  vs BIGINT[] := '{}';
  ps BIGINT[] := '{}';
  k INT;
  owner TEXT;
  done TEXT;
BEGIN
  IF p_command IS NOT NULL
    AND EXISTS (SELECT 1 FROM ${C} c WHERE c.command_id = p_command AND c.expires_at > p_recorded_at) THEN
    RAISE EXCEPTION USING ERRCODE = 'ES001', MESSAGE = 'replayed';
  END IF;
  FOR r IN SELECT a.v, a.p FROM eventstore_append(p_stream, p_stream_type, p_recorded_at, p_ids, p_types,
    p_schema_versions, p_payloads, p_metadata, p_tenants, p_mode, p_expected) a LOOP
    IF r.p IS NULL THEN
      v := r.v; p := NULL; RETURN NEXT; RETURN;
    END IF;
    vs := vs || r.v;
    ps := ps || r.p;
  END LOOP;
  FOR k IN 1 .. coalesce(cardinality(p_claim_values), 0) LOOP
    IF p_claim_first[k] = 1 THEN
      INSERT INTO ${U} AS u (tenant_id, index_name, value, stream_id)
        VALUES (p_claim_tenants[k], p_claim_indexes[k], p_claim_values[k], p_stream)
        ON CONFLICT (tenant_id, index_name, value) DO UPDATE SET stream_id = excluded.stream_id
        WHERE u.stream_id = excluded.stream_id
        RETURNING u.stream_id INTO done;
    ELSE
      DELETE FROM ${U} u WHERE u.tenant_id = p_claim_tenants[k] AND u.index_name = p_claim_indexes[k]
        AND u.value = p_claim_values[k] AND u.stream_id = p_stream
        RETURNING u.stream_id INTO done;
    END IF;
    IF done IS NULL THEN
      SELECT u.stream_id INTO owner FROM ${U} u WHERE u.tenant_id = p_claim_tenants[k]
        AND u.index_name = p_claim_indexes[k] AND u.value = p_claim_values[k];
      RAISE EXCEPTION USING ERRCODE = CASE WHEN p_claim_first[k] = 1 THEN 'ES002' ELSE 'ES003' END,
        MESSAGE = json_build_array(p_claim_indexes[k], p_claim_values[k], owner)::text;
    END IF;
    done := NULL;
    IF p_claim_last[k] <> p_claim_first[k] THEN
      IF p_claim_last[k] = 1 THEN
        INSERT INTO ${U} (tenant_id, index_name, value, stream_id)
          VALUES (p_claim_tenants[k], p_claim_indexes[k], p_claim_values[k], p_stream);
      ELSE
        DELETE FROM ${U} u WHERE u.tenant_id = p_claim_tenants[k] AND u.index_name = p_claim_indexes[k]
          AND u.value = p_claim_values[k] AND u.stream_id = p_stream;
      END IF;
    END IF;
  END LOOP;
  IF p_event_claims IS NOT NULL THEN
    UPDATE ${E} e SET claims = x.claims
      FROM unnest(ps, p_event_claims) AS x(position, claims)
      WHERE e.position = x.position AND x.claims IS NOT NULL;
  END IF;
  IF p_command IS NOT NULL THEN
    INSERT INTO ${C} AS c (command_id, stream_id, first_version, last_version, position, expires_at)
      VALUES (p_command, p_stream, vs[1], vs[cardinality(vs)], ps[cardinality(ps)], p_expires_at)
      ON CONFLICT (command_id) DO UPDATE SET stream_id = excluded.stream_id, first_version = excluded.first_version,
        last_version = excluded.last_version, position = excluded.position, expires_at = excluded.expires_at
      WHERE c.expires_at <= p_recorded_at
      RETURNING c.command_id INTO done;
    IF done IS NULL THEN
      RAISE EXCEPTION USING ERRCODE = 'ES001', MESSAGE = 'replayed';
    END IF;
    DELETE FROM ${C} WHERE command_id IN (SELECT c.command_id FROM ${C} c WHERE c.expires_at <= p_recorded_at
      LIMIT 16 FOR UPDATE SKIP LOCKED);
  END IF;
  FOR k IN 1 .. cardinality(vs) LOOP
    v := vs[k]; p := ps[k]; RETURN NEXT;
  END LOOP;
END $fn$`

migrations["3_create_guards"] = Effect.gen(function*() {
  const sql = yield* SqlClient.SqlClient
  yield* sql.onDialectOrElse({
    sqlite: () => Effect.all(guards(sql, "INTEGER"), { discard: true }),
    pg: () => Effect.all([...guards(sql, "BIGINT"), sql.unsafe(APPEND_GUARDED_PG)], { discard: true }),
    orElse: () => unsupported
  })
})

const PK = tables.privacyKeys
const PS = tables.privacyKeyState
const PT = tables.privacyStreams
const PA = tables.privacyAudit
const PM = tables.privacyMeta

/**
 * The key store of crypto-shredding (`KeyStore`): data keys, wrapped (opaque bytes), by key id and version; what was
 * destroyed of each key (a row that outlives the keys' rows, so a destroyed version is never written again); the
 * streams that hold data under each key; an audit log; a few named values. PostgreSQL compares ids in the "C"
 * collation (byte order), as SQLite's default does, so that paging and sorting agree across backends.
 */
const privacy = (
  sql: SqlClient.SqlClient,
  types: { readonly id: string; readonly bytes: string; readonly integer: string; readonly serial: string }
) => [
  sql.unsafe(`CREATE TABLE ${PK} (
  key_id ${types.id} NOT NULL,
  version INTEGER NOT NULL CHECK (version > 0),
  wrapped ${types.bytes} NOT NULL,
  kek_id TEXT NOT NULL,
  created_at ${types.integer} NOT NULL,
  PRIMARY KEY (key_id, version)
)`),
  sql.unsafe(`CREATE TABLE ${PS} (
  key_id ${types.id} PRIMARY KEY,
  destroyed_through INTEGER NOT NULL,
  destroyed_at ${types.integer} NOT NULL
)`),
  sql.unsafe(`CREATE INDEX ${PS}_at ON ${PS} (destroyed_at)`),
  sql.unsafe(`CREATE TABLE ${PT} (
  key_id ${types.id} NOT NULL,
  stream_id ${types.id} NOT NULL,
  PRIMARY KEY (key_id, stream_id)
)`),
  sql.unsafe(`CREATE TABLE ${PA} (
  id ${types.serial},
  at ${types.integer} NOT NULL,
  action TEXT NOT NULL,
  key_id ${types.id} NOT NULL,
  detail TEXT NOT NULL
)`),
  sql.unsafe(`CREATE INDEX ${PA}_key ON ${PA} (key_id, id)`),
  sql.unsafe(`CREATE TABLE ${PM} (
  name TEXT PRIMARY KEY,
  value TEXT NOT NULL
)`)
]

migrations["4_create_privacy"] = Effect.gen(function*() {
  const sql = yield* SqlClient.SqlClient
  yield* sql.onDialectOrElse({
    sqlite: () =>
      Effect.all(
        privacy(sql, { id: "TEXT", bytes: "BLOB", integer: "INTEGER", serial: "INTEGER PRIMARY KEY AUTOINCREMENT" }),
        { discard: true }
      ),
    pg: () =>
      Effect.all(
        privacy(sql, {
          id: `TEXT COLLATE "C"`,
          bytes: "BYTEA",
          integer: "BIGINT",
          serial: "BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY"
        }),
        { discard: true }
      ),
    orElse: () => unsupported
  })
})

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
    // transaction (aborting it), so the table is created here first.
    pg: () =>
      sql.withTransaction(Effect.gen(function*() {
        yield* sql.unsafe(`SELECT pg_advisory_xact_lock(${SCHEMA_LOCK})`)
        yield* sql.unsafe(`CREATE TABLE IF NOT EXISTS ${tables.migrations} (
  migration_id integer primary key,
  created_at timestamp with time zone not null default now(),
  name text not null
)`)
        yield* run
        // A dump restored into another cluster brings transaction ids from the old one, which the new one may not
        // have reached: readers would hold those events back until it does. Ids only rise with positions, so the
        // last event tells; the restored events all committed long ago, so their ids can be set to the oldest.
        // Every one of them: an id left between the new cluster's running ones would hide the rows after it.
        yield* sql.unsafe(`UPDATE ${E} SET tx = '3'::xid8
  WHERE EXISTS (SELECT 1 FROM ${E} l WHERE l.position = (SELECT max(position) FROM ${E})
    AND l.tx >= pg_snapshot_xmax(pg_current_snapshot()))`)
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
