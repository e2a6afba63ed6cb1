/**
 * Every SQL statement of the event store's read path, in one place: one stream by version, the global log by
 * position (optionally filtered), the head of the log and a stream's version. Columns are selected under their
 * `StoredEvent` names, so rows need no renaming; `fromStored` checks every value a driver hands back.
 */
import type * as SqlClient from "@effect/sql/SqlClient"
import type { SqlError } from "@effect/sql/SqlError"
import * as Effect from "effect/Effect"
import type { Filter } from "../EventStore.js"
import { nonEmpty } from "./backend.js"
import { type StoredEvent, tenantKey, toInteger } from "./codec.js"
import type { PgExecute } from "./connection.js"
import { SAFE_PG, tables } from "./migrations.js"

const E = tables.events

// every column a RecordedEvent needs (not tenant_id), under its StoredEvent name
const COLUMNS = `position, event_id AS "eventId", stream_id AS "streamId", stream_type AS "streamType", version,
  event_type AS "type", schema_version AS "schemaVersion", payload, metadata, recorded_at AS "recordedAt"`

const FOLD_COLUMNS = "version, event_type, schema_version, payload"

// PostgreSQL stores payloads as `json`: read back as text, as they were written (the driver would parse them)
const COLUMNS_PG = `position, event_id AS "eventId", stream_id AS "streamId", stream_type AS "streamType", version,
  event_type AS "type", schema_version AS "schemaVersion", payload::text AS payload, metadata::text AS metadata,
  recorded_at AS "recordedAt"`

const FOLD_COLUMNS_PG = "version, event_type, schema_version, payload::text"

/** The log after a position (`?`), by position, as `StoredEvent` rows: for a synchronous connection. */
export const logSqlite = (limit: number) =>
  `SELECT ${COLUMNS} FROM ${E} WHERE position > ? ORDER BY position LIMIT ${limitOf(limit)}`

/** The log after a position and before another (`?`, `?`), by position, as `StoredEvent` rows. */
export const logBetweenSqlite = (limit: number) =>
  `SELECT ${COLUMNS} FROM ${E} WHERE position > ? AND position < ? ORDER BY position LIMIT ${limitOf(limit)}`

/**
 * A page size as SQL text. Limits are written into the statement, not bound: SQLite reads a page of a stream about
 * twice as fast with `LIMIT 512` as with `LIMIT ?` (measured: 14.5 vs 31 µs for a 10-event stream). Only ever given
 * validated integers (`checkPage`, the fold's page size).
 */
const limitOf = (limit: number): string => {
  if (!Number.isSafeInteger(limit) || limit < 0) throw new RangeError(`not a page size: ${limit}`)
  return String(limit)
}

/** The fold's read (`fold` below) as SQLite text, for the writer connection's synchronous path. */
export const foldSqlite = (withRecordedAt: boolean, limit: number) =>
  `SELECT ${FOLD_COLUMNS}${withRecordedAt ? ", recorded_at" : ""} FROM ${E}
  WHERE stream_id = ? AND version > ? ORDER BY version LIMIT ${limitOf(limit)}`

export interface StreamRange {
  readonly backward: boolean
  readonly cursor: number
  readonly from: number
  readonly to: number
  readonly limit: number
}

/** The read statements on SQLite (LibSQL too), through the `SqlClient`. */
export const make = (sql: SqlClient.SqlClient) => {
  const columns = sql.literal(COLUMNS)
  const foldColumns = sql.literal(FOLD_COLUMNS)
  const table = sql(E)
  return {
    /** Forward: versions after `cursor` up to `to`; backward: versions before `cursor` down to `from`. */
    stream: (streamId: string, { backward, cursor, from, limit, to }: StreamRange) =>
      backward
        ? sql<StoredEvent>`SELECT ${columns} FROM ${table} WHERE stream_id = ${streamId} AND version < ${cursor}
            AND version >= ${from} ORDER BY version DESC LIMIT ${sql.literal(limitOf(limit))}`.withoutTransform
        : sql<StoredEvent>`SELECT ${columns} FROM ${table} WHERE stream_id = ${streamId} AND version > ${cursor}
            AND version <= ${to} ORDER BY version LIMIT ${sql.literal(limitOf(limit))}`.withoutTransform,

    /** The log after a position, by position, selected by `filter`. */
    log: (filter: Filter | undefined, tenant?: string) => {
      const streamTypes = nonEmpty(filter?.streamTypes)
      const eventTypes = nonEmpty(filter?.eventTypes)
      if (streamTypes === undefined && eventTypes === undefined && tenant === undefined) {
        return (after: number, limit: number) =>
          sql<StoredEvent>`SELECT ${columns} FROM ${table} WHERE position > ${after}
            ORDER BY position LIMIT ${sql.literal(limitOf(limit))}`.withoutTransform
      }
      const where = sql.and([
        // the column, and the key's prefix: a row of another tenant's (or of no tenant's) never matches both
        ...(tenant !== undefined
          ? [sql`tenant_id = ${tenant} AND substr(stream_id, 1, ${tenant.length + 1}) = ${tenantKey(tenant, "")}`]
          : []),
        ...(streamTypes ? [sql.in("stream_type", streamTypes)] : []),
        ...(eventTypes ? [sql.in("event_type", eventTypes)] : [])
      ])
      return (after: number, limit: number) =>
        sql<StoredEvent>`SELECT ${columns} FROM ${table} WHERE position > ${after} AND ${where}
          ORDER BY position LIMIT ${sql.literal(limitOf(limit))}`.withoutTransform
    },

    /** One stream's rows after a version, with only the columns a fold reads (`FoldRow`), as arrays. */
    fold: (streamId: string, after: number, limit: number, withRecordedAt: boolean) =>
      sql`SELECT ${foldColumns}${sql.literal(withRecordedAt ? ", recorded_at" : "")} FROM ${table}
        WHERE stream_id = ${streamId} AND version > ${after} ORDER BY version LIMIT ${sql.literal(limitOf(limit))}`
        .values,

    /** The position of the last event; 0 when the log is empty. */
    head: Effect.map(
      sql<{ p: unknown }>`SELECT MAX(position) AS p FROM ${table}`.withoutTransform,
      (rows) => toInteger(rows[0]?.p) ?? 0
    ) as Effect.Effect<number, SqlError>,

    /** The stream's version; 0 when it has no events. */
    version: (streamId: string): Effect.Effect<number, SqlError> =>
      Effect.map(
        sql<{ v: unknown }>`SELECT COALESCE((SELECT version FROM ${table} WHERE stream_id = ${streamId}
          ORDER BY version DESC LIMIT 1), 0) AS v`.withoutTransform,
        (rows) => toInteger(rows[0]?.v) ?? 0
      )
  }
}

// --- PostgreSQL ----------------------------------------------------------------------------------------------------

const STREAM_FORWARD_PG = `SELECT ${COLUMNS_PG} FROM ${E} WHERE stream_id = $1 AND version > $2 AND version <= $3
  ORDER BY version LIMIT $4`
const STREAM_BACKWARD_PG = `SELECT ${COLUMNS_PG} FROM ${E} WHERE stream_id = $1 AND version < $2 AND version >= $3
  ORDER BY version DESC LIMIT $4`
const logPg = (streamTypes: boolean, eventTypes: boolean, tenant: boolean) => {
  let n = 2
  return `SELECT ${COLUMNS_PG} FROM ${E} WHERE position > $1 AND ${SAFE_PG}${
    streamTypes ? ` AND stream_type = ANY($${++n}::text[])` : ""
  }${eventTypes ? ` AND event_type = ANY($${++n}::text[])` : ""}${
    tenant ? ` AND tenant_id = $${++n} AND starts_with(stream_id, $${n} || chr(31))` : ""
  } ORDER BY position LIMIT $2`
}
const FOLD_PG = `SELECT ${FOLD_COLUMNS_PG} FROM ${E} WHERE stream_id = $1 AND version > $2 ORDER BY version LIMIT $3`
const FOLD_AT_PG = `SELECT ${FOLD_COLUMNS_PG}, recorded_at FROM ${E} WHERE stream_id = $1 AND version > $2
  ORDER BY version LIMIT $3`
// the last position below the horizon: a backward scan of the primary key past what is held back
const SAFE_HEAD_PG = `SELECT position FROM ${E} WHERE ${SAFE_PG} ORDER BY position DESC LIMIT 1`
const HEAD_PG = `SELECT COALESCE((${SAFE_HEAD_PG}), 0) AS p`
const HELD_BACK_PG = `SELECT count(*) AS n FROM ${E} WHERE position > COALESCE((${SAFE_HEAD_PG}), 0)`
/** A stream's version on PostgreSQL (column `v`); 0 when it has no events. */
export const VERSION_PG = `SELECT COALESCE((SELECT version FROM ${E} WHERE stream_id = $1 ORDER BY version DESC LIMIT 1), 0) AS v`

/**
 * The read statements on PostgreSQL, prepared once per connection: the global log is read only below the horizon
 * no running transaction can fall behind (`SAFE_PG`).
 */
export const makePg = (execute: PgExecute) => ({
  stream: (streamId: string, { backward, cursor, from, limit, to }: StreamRange) =>
    (backward
      ? execute("es_stream_back", STREAM_BACKWARD_PG, [streamId, cursor, from, limit])
      : execute("es_stream", STREAM_FORWARD_PG, [streamId, cursor, to, limit])) as Effect.Effect<
        ReadonlyArray<StoredEvent>,
        SqlError
      >,

  log: (filter: Filter | undefined, tenant?: string) => {
    const streamTypes = nonEmpty(filter?.streamTypes)
    const eventTypes = nonEmpty(filter?.eventTypes)
    const name = `es_log${streamTypes ? "_s" : ""}${eventTypes ? "_e" : ""}${tenant !== undefined ? "_t" : ""}`
    const text = logPg(streamTypes !== undefined, eventTypes !== undefined, tenant !== undefined)
    const extra = [
      ...(streamTypes ? [streamTypes] : []),
      ...(eventTypes ? [eventTypes] : []),
      ...(tenant !== undefined ? [tenant] : [])
    ]
    return (after: number, limit: number) =>
      execute(name, text, [after, limit, ...extra]) as Effect.Effect<ReadonlyArray<StoredEvent>, SqlError>
  },

  fold: (streamId: string, after: number, limit: number, withRecordedAt: boolean) =>
    withRecordedAt
      ? execute("es_fold_at", FOLD_AT_PG, [streamId, after, limit], true)
      : execute("es_fold", FOLD_PG, [streamId, after, limit], true),

  head: Effect.map(execute("es_head", HEAD_PG, []), (rows) => toInteger(rows[0]?.p) ?? 0),

  heldBack: Effect.map(execute("es_held_back", HELD_BACK_PG, []), (rows) => toInteger(rows[0]?.n) ?? 0),

  version: (streamId: string) =>
    Effect.map(execute("es_version", VERSION_PG, [streamId]), (rows) => toInteger(rows[0]?.v) ?? 0)
})
