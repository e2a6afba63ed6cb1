/**
 * Every SQL statement of the key store (`KeyStore.makeSql`), in one place, with the dialect branches for SQLite
 * (and LibSQL) and PostgreSQL. Columns are selected under their `Row` names, never through the client's name
 * transforms. Transactions, retries and errors are the caller's.
 */
import * as SqlClient from "@effect/sql/SqlClient"
import type { SqlError } from "@effect/sql/SqlError"
import * as Effect from "effect/Effect"
import * as Option from "effect/Option"
import type { KeyRecord, WrappedKey } from "../KeyStore.js"
import { tables } from "./migrations.js"
import { codeOf, isBusy } from "./sqlErrors.js"

const K = tables.privacyKeys
const S = tables.privacyKeyState
const T = tables.privacyStreams
const A = tables.privacyAudit
const M = tables.privacyMeta

/**
 * PostgreSQL: the class of the transaction-scoped advisory locks (`pg_advisory_xact_lock(class, hashtext(key_id))`)
 * that `put` and `destroy` of one key take, so that a `put` never re-creates a version a concurrent `destroy` is
 * deleting. Two-integer advisory locks never collide with the library's single-bigint ones.
 */
export const KEY_LOCK = 734_911

/**
 * A key's version (`version` set) or its destroyed state (`destroyedThrough` set): what `rows` returns, one query
 * for both. PostgreSQL returns BIGINT columns as strings.
 */
export interface Row {
  readonly keyId: string
  readonly version: number | string | null
  readonly wrapped: unknown
  readonly kekId: string | null
  readonly createdAt: number | string | null
  readonly destroyedThrough: number | string | null
  readonly destroyedAt: number | string | null
}

const toNumber = (value: number | string | null): number => Number(value)

const toBytes = (value: unknown): Uint8Array | undefined =>
  value instanceof Uint8Array
    ? Uint8Array.from(value)
    : value instanceof ArrayBuffer
    ? new Uint8Array(value.slice(0))
    : undefined

/** The records in `rows` (versions ascending), or what is wrong with a version whose bytes are not bytes. */
export const recordsOf = (rows: ReadonlyArray<Row>): Map<string, KeyRecord> | string => {
  const byKey = new Map<string, { versions: Array<WrappedKey>; destroyedThrough: number; destroyedAt: number | undefined }>()
  for (const row of rows) {
    let entry = byKey.get(row.keyId)
    if (entry === undefined) {
      entry = { versions: [], destroyedThrough: 0, destroyedAt: undefined }
      byKey.set(row.keyId, entry)
    }
    if (row.version !== null) {
      const wrapped = toBytes(row.wrapped)
      if (wrapped === undefined) return `the wrapped bytes of ${JSON.stringify(row.keyId)} v${row.version} are not bytes`
      entry.versions.push({
        keyId: row.keyId,
        version: toNumber(row.version),
        wrapped,
        kekId: row.kekId ?? "",
        createdAt: toNumber(row.createdAt)
      })
    } else {
      entry.destroyedThrough = toNumber(row.destroyedThrough)
      entry.destroyedAt = toNumber(row.destroyedAt)
    }
  }
  const records = new Map<string, KeyRecord>()
  for (const [keyId, entry] of byKey) {
    entry.versions.sort((a, b) => a.version - b.version)
    records.set(keyId, { keyId, ...entry })
  }
  return records
}

export interface AuditRow {
  readonly at: number | string
  readonly action: string
  readonly keyId: string
  readonly detail: string
}

/** The bytes as the drivers bind them (a `Buffer` over the same memory, no copy). */
const blob = (bytes: Uint8Array): Buffer => Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength)

export const make = (sql: SqlClient.SqlClient) => {
  const bytesType = sql.onDialectOrElse({ pg: () => "BYTEA", orElse: () => "BLOB" })
  return {
    /** PostgreSQL: waits for the key's lock, held until the transaction ends. SQLite's write lock serializes already. */
    lock: (keyId: string): Effect.Effect<void, SqlError> =>
      sql.onDialectOrElse({
        pg: () => Effect.asVoid(sql`SELECT pg_advisory_xact_lock(${sql.literal(String(KEY_LOCK))}, hashtext(${keyId}))`),
        orElse: () => Effect.void
      }),

    /** The versions and the destroyed state of these keys, in one statement (so one snapshot of them). */
    rows: (keyIds: ReadonlyArray<string>): Effect.Effect<ReadonlyArray<Row>, SqlError> =>
      sql<Row>`SELECT key_id AS "keyId", version, wrapped, kek_id AS "kekId", created_at AS "createdAt",
          NULL AS "destroyedThrough", NULL AS "destroyedAt"
        FROM ${sql(K)} WHERE key_id IN ${sql.in(keyIds)}
        UNION ALL
        SELECT key_id, NULL, NULL, NULL, NULL, destroyed_through, destroyed_at
        FROM ${sql(S)} WHERE key_id IN ${sql.in(keyIds)}`.withoutTransform,

    /** Adds the version unless it exists or the key was destroyed through it. */
    insert: (
      key: {
        readonly keyId: string
        readonly version: number
        readonly wrapped: Uint8Array
        readonly kekId: string
        readonly createdAt: number
      }
    ): Effect.Effect<void, SqlError> =>
      // the casts: PostgreSQL types a SELECT list's parameters as text otherwise
      Effect.asVoid(
        sql`INSERT INTO ${sql(K)} (key_id, version, wrapped, kek_id, created_at)
          SELECT ${key.keyId}, CAST(${key.version} AS INTEGER), CAST(${blob(key.wrapped)} AS ${sql.literal(bytesType)}),
            ${key.kekId}, CAST(${key.createdAt} AS BIGINT)
          WHERE NOT EXISTS (SELECT 1 FROM ${sql(S)} WHERE key_id = ${key.keyId} AND destroyed_through >= ${key.version})
          ON CONFLICT (key_id, version) DO NOTHING`.raw
      ),

    /** SQLite: deleted rows are overwritten in the file (a flag of the connection). */
    secureDelete: sql.onDialectOrElse({
      sqlite: () => Effect.asVoid(sql.unsafe("PRAGMA secure_delete = ON")),
      orElse: () => Effect.void
    }),

    /** Deletes every version of the key; returns the versions deleted. */
    deleteVersions: (keyId: string): Effect.Effect<ReadonlyArray<number>, SqlError> =>
      Effect.map(
        sql<{ version: number | string }>`DELETE FROM ${sql(K)} WHERE key_id = ${keyId} RETURNING version`.withoutTransform,
        (rows) => rows.map((r) => Number(r.version))
      ),

    /** Records the destroy: `destroyed_through` only rises; `destroyed_at` is the latest. */
    destroyed: (keyId: string, through: number, at: number): Effect.Effect<void, SqlError> =>
      Effect.asVoid(
        sql`INSERT INTO ${sql(S)} AS s (key_id, destroyed_through, destroyed_at) VALUES (${keyId}, ${through}, ${at})
          ON CONFLICT (key_id) DO UPDATE SET
            destroyed_through = CASE WHEN excluded.destroyed_through > s.destroyed_through
              THEN excluded.destroyed_through ELSE s.destroyed_through END,
            destroyed_at = excluded.destroyed_at`.raw
      ),

    track: (keyId: string, streamIds: ReadonlyArray<string>): Effect.Effect<void, SqlError> =>
      Effect.asVoid(
        sql`INSERT INTO ${sql(T)} (key_id, stream_id) VALUES ${sql.csv(streamIds.map((s) => sql`(${keyId}, ${s})`))}
          ON CONFLICT DO NOTHING`.raw
      ),

    destroyedSince: (at: number, limit: number) =>
      sql<{ keyId: string; destroyedThrough: number | string; destroyedAt: number | string }>`SELECT key_id AS "keyId",
          destroyed_through AS "destroyedThrough", destroyed_at AS "destroyedAt"
        FROM ${sql(S)} WHERE destroyed_at > ${at} ORDER BY destroyed_at LIMIT ${limit}`.withoutTransform,

    streamsOf: (keyId: string): Effect.Effect<ReadonlyArray<string>, SqlError> =>
      Effect.map(
        sql<{ streamId: string }>`SELECT stream_id AS "streamId" FROM ${sql(T)} WHERE key_id = ${keyId}
          ORDER BY stream_id`.withoutTransform,
        (rows) => rows.map((r) => r.streamId)
      ),

    insertMeta: (name: string, value: string): Effect.Effect<void, SqlError> =>
      Effect.asVoid(sql`INSERT INTO ${sql(M)} (name, value) VALUES (${name}, ${value}) ON CONFLICT (name) DO NOTHING`.raw),

    meta: (name: string): Effect.Effect<string | undefined, SqlError> =>
      Effect.map(
        sql<{ value: string }>`SELECT value FROM ${sql(M)} WHERE name = ${name}`.withoutTransform,
        (rows) => rows[0]?.value
      ),

    setMeta: (name: string, value: string): Effect.Effect<void, SqlError> =>
      Effect.asVoid(
        sql`INSERT INTO ${sql(M)} (name, value) VALUES (${name}, ${value})
          ON CONFLICT (name) DO UPDATE SET value = excluded.value`.raw
      ),

    audit: (entry: AuditRow): Effect.Effect<void, SqlError> =>
      Effect.asVoid(
        sql`INSERT INTO ${sql(A)} (at, action, key_id, detail)
          VALUES (${entry.at}, ${entry.action}, ${entry.keyId}, ${entry.detail})`.raw
      ),

    auditLog: (keyId: string | undefined): Effect.Effect<ReadonlyArray<AuditRow>, SqlError> =>
      sql<AuditRow>`SELECT at, action, key_id AS "keyId", detail FROM ${sql(A)}
        ${keyId === undefined ? sql.literal("") : sql`WHERE key_id = ${keyId}`} ORDER BY id`.withoutTransform,

    keyIds: (after: string | undefined, limit: number): Effect.Effect<ReadonlyArray<string>, SqlError> =>
      Effect.map(
        sql<{ keyId: string }>`SELECT DISTINCT key_id AS "keyId" FROM ${sql(K)}
          ${after === undefined ? sql.literal("") : sql`WHERE key_id > ${after}`}
          ORDER BY key_id LIMIT ${limit}`.withoutTransform,
        (rows) => rows.map((r) => r.keyId)
      ),

    rewrap: (keyId: string, version: number, wrapped: Uint8Array, kekId: string): Effect.Effect<boolean, SqlError> =>
      Effect.map(
        sql<{ version: unknown }>`UPDATE ${sql(K)} SET wrapped = ${blob(wrapped)}, kek_id = ${kekId}
          WHERE key_id = ${keyId} AND version = ${version} RETURNING version`.withoutTransform,
        (rows) => rows.length > 0
      ),

    purge: sql.onDialectOrElse({
      sqlite: () => checkpoint(sql),
      pg: () => vacuum(sql),
      orElse: () => Effect.succeed({ complete: false })
    })
  }
}

/**
 * `PRAGMA wal_checkpoint(TRUNCATE)` on a connection reserved for it, with the connection's busy timeout at 0 for
 * the moment (restored after): a checkpoint that must wait for readers or a writer answers busy at once instead of
 * blocking the thread inside SQLite. A file not in WAL mode answers done. Busy, however it is reported, is
 * `complete: false`; so is a call inside a transaction (SQLite refuses to checkpoint there, and the connection to
 * reserve is the transaction's own).
 */
const checkpoint = (sql: SqlClient.SqlClient): Effect.Effect<{ readonly complete: boolean }, SqlError> =>
  Effect.flatMap(Effect.serviceOption(SqlClient.TransactionConnection), (inTransaction) =>
    Option.isSome(inTransaction) ? Effect.succeed({ complete: false }) : checkpointNow(sql))

const checkpointNow = (sql: SqlClient.SqlClient): Effect.Effect<{ readonly complete: boolean }, SqlError> =>
  Effect.scoped(Effect.gen(function*() {
    const connection = yield* sql.reserve
    // suspended: the sqlite-node connection prepares an unprepared statement when the effect is built, and SQLite
    // applies `PRAGMA busy_timeout = n` when it prepares it
    const run = <A extends object>(text: string) =>
      Effect.suspend(() => connection.executeUnprepared(text, [], undefined)) as Effect.Effect<ReadonlyArray<A>, SqlError>
    const timeout = (yield* run<{ timeout?: unknown }>("PRAGMA busy_timeout"))[0]?.timeout
    const swap = typeof timeout === "number" && timeout > 0
    if (swap) yield* run("PRAGMA busy_timeout = 0")
    const rows = yield* run<{ busy?: unknown }>("PRAGMA wal_checkpoint(TRUNCATE)").pipe(
      Effect.catchIf(isBusy, () => Effect.succeed([{ busy: 1 }])),
      Effect.ensuring(swap ? Effect.ignore(run(`PRAGMA busy_timeout = ${Math.round(timeout)}`)) : Effect.void)
    )
    return { complete: Number(rows[0]?.busy ?? 1) === 0 }
  }))

/**
 * `VACUUM` of the keys table: the deleted rows' tuples are removed from the table and its index. PostgreSQL refuses
 * it inside a transaction block (`25001`): then nothing was done, `complete: false`.
 */
const vacuum = (sql: SqlClient.SqlClient): Effect.Effect<{ readonly complete: boolean }, SqlError> =>
  sql.unsafe(`VACUUM ${K}`).pipe(
    Effect.as({ complete: true }),
    Effect.catchIf((error) => codeOf(error) === "25001", () => Effect.succeed({ complete: false }))
  )

