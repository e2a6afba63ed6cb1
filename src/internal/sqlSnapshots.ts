/**
 * Every SQL statement of the snapshot store, in one place: a second dialect adds its branch here. Columns are
 * selected under their `StoredSnapshot` names, so rows need no renaming (and are checked by `fromStored`).
 */
import type * as SqlClient from "@effect/sql/SqlClient"
import type { SqlError } from "@effect/sql/SqlError"
import * as Effect from "effect/Effect"
import { tables } from "./migrations.js"
import type { StoredSnapshot } from "./snapshotRows.js"

const T = tables.snapshots

const COLUMNS = `stream_id AS "streamId", stream_type AS "streamType", version, schema_version AS "schemaVersion",
  state, analytics, size_bytes AS "sizeBytes", created_at AS "createdAt"`

export const make = (sql: SqlClient.SqlClient) => ({
  upsert: (r: StoredSnapshot): Effect.Effect<void, SqlError> =>
    Effect.asVoid(
      sql`INSERT INTO ${sql(T)} (stream_id, stream_type, version, schema_version, state, analytics, size_bytes, created_at)
        VALUES (${r.streamId}, ${r.streamType}, ${r.version}, ${r.schemaVersion}, ${r.state}, ${r.analytics},
          ${r.sizeBytes}, ${r.createdAt})
        ON CONFLICT (stream_id, version) DO UPDATE SET stream_type = excluded.stream_type,
          schema_version = excluded.schema_version, state = excluded.state, analytics = excluded.analytics,
          size_bytes = excluded.size_bytes, created_at = excluded.created_at`.raw
    ),
  atOrBefore: (streamId: string, version: number): Effect.Effect<ReadonlyArray<StoredSnapshot>, SqlError> =>
    sql<StoredSnapshot>`SELECT ${sql.literal(COLUMNS)} FROM ${sql(T)} WHERE stream_id = ${streamId}
      AND version <= ${version} ORDER BY version DESC LIMIT 1`.withoutTransform,
  deleteOlderThan: (streamId: string, version: number): Effect.Effect<number, SqlError> =>
    Effect.map(
      sql<{ n: number }>`DELETE FROM ${sql(T)} WHERE stream_id = ${streamId} AND version < ${version}
        RETURNING 1 AS n`.withoutTransform,
      (rows) => rows.length
    ),
  stats: sql<Pick<StoredSnapshot, "streamId" | "sizeBytes" | "createdAt">>`SELECT stream_id AS "streamId",
    size_bytes AS "sizeBytes", created_at AS "createdAt" FROM ${sql(T)}`.withoutTransform
})
