/**
 * Inline projections: a `Projection.sql` projection whose statements run inside each append's savepoint on SQLite's
 * writer connection, so its read model never lags the log. Its checkpoint (in `eventstore_projections`, read and
 * moved in the same transaction) lets it handle, before an append's events, any earlier events it has not seen —
 * appended before it was registered, or by a process that does not run it.
 */
import type * as SqlClient from "@effect/sql/SqlClient"
import * as Either from "effect/Either"
import { InlineProjectionError } from "../Errors.js"
import type { RecordedEvent } from "../Event.js"
import type { Projection } from "../Projection.js"
import { fromStored, recorded, type StoredEvent } from "./codec.js"
import type { SyncConnection } from "./connection.js"
import { tables } from "./migrations.js"
import { logBetweenSqlite, logSqlite } from "./sqlRead.js"
import type { InlineHook } from "./sqlWrite.js"
import * as Statements from "./statements.js"

const PAGE = 500
const CHECKPOINT = `SELECT position FROM ${tables.projections} WHERE name = ?`
const MOVE = `UPDATE ${tables.projections} SET position = ?, updated_at = ? WHERE name = ?`

export const makeHook = (projection: Projection<any, any, any>, client: SqlClient.SqlClient): InlineHook => {
  const name = projection.name
  const handlers = projection.statements as Record<string, Statements.StatementHandler | undefined>
  const streamTypes = projection.streamTypes && new Set(projection.streamTypes)

  const fail = (event: { readonly streamId: string; readonly position: number; readonly type: string }, reason: string) =>
    new InlineProjectionError({
      projection: name,
      streamId: event.streamId,
      position: event.position,
      eventType: event.type,
      reason
    })

  const handle = (conn: SyncConnection, event: RecordedEvent): void => {
    const handler = handlers[event.type]
    if (handler === undefined || (streamTypes !== undefined && !streamTypes.has(event.streamType))) return
    const decoded = projection.events.decode(event)
    if (Either.isLeft(decoded)) throw fail(event, decoded.left.message)
    try {
      Statements.runSync(handler(decoded.right, client, (table: string) => table), conn.runAnySync)
    } catch (cause) {
      throw fail(event, Statements.thrownReason(cause))
    }
  }

  const handleRows = (conn: SyncConnection, rows: ReadonlyArray<StoredEvent>): void => {
    for (const row of rows) {
      const event = fromStored(row)
      if (Either.isLeft(event)) throw fail(row, event.left.message)
      handle(conn, event.right)
    }
  }

  const checkpointOf = (conn: SyncConnection): number => {
    const rows = conn.executeValuesSync(CHECKPOINT, [name])
    return rows.length === 0 ? 0 : Number(rows[0]![0])
  }

  return {
    onAppend: (conn, append, written) => {
      const first = written[0]!.position
      const last = written[written.length - 1]!.position
      let checkpoint = checkpointOf(conn)
      // earlier events it has not handled (positions are dense on SQLite unless an append was rolled back)
      while (checkpoint < first - 1) {
        const rows = conn.executeSync(logBetweenSqlite(PAGE), [checkpoint, first]) as ReadonlyArray<StoredEvent>
        if (rows.length === 0) break
        handleRows(conn, rows)
        checkpoint = rows[rows.length - 1]!.position
      }
      for (const event of recorded(append, written.map((w) => w.position), written[0]!.version)) handle(conn, event)
      conn.runSync(MOVE, [last, append.recordedAt, name])
    },
    catchUp: (conn, limit, now) => {
      const rows = conn.executeSync(logSqlite(limit), [checkpointOf(conn)]) as ReadonlyArray<StoredEvent>
      if (rows.length === 0) return 0
      handleRows(conn, rows)
      conn.runSync(MOVE, [rows[rows.length - 1]!.position, now, name])
      return rows.length
    }
  }
}
