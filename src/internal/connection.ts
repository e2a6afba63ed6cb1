/** A write connection that can also run a statement synchronously (SQLite); it throws the driver's error. */
import type { Connection } from "@effect/sql/SqlConnection"
import type { SqlError } from "@effect/sql/SqlError"
import type * as Effect from "effect/Effect"

export interface SyncConnection extends Connection {
  readonly executeSync: (sql: string, params: ReadonlyArray<unknown>) => ReadonlyArray<unknown>
  /** A statement that returns no rows: how many rows it changed, and the rowid of the last row it inserted. */
  readonly runSync: (sql: string, params: ReadonlyArray<unknown>) => { readonly changes: number; readonly lastInsertRowid: number | bigint }
  /** Any statement (one that returns rows too, `RETURNING`): how many rows it changed (0 for a query). */
  readonly runAnySync: (sql: string, params: ReadonlyArray<unknown>) => number
  /** Prepares statements ahead of their first use (a command should not pay for preparing them). */
  readonly prepareSync: (sql: ReadonlyArray<string>) => void
  /** A query's rows as arrays of column values. */
  readonly executeValuesSync: (sql: string, params: ReadonlyArray<unknown>) => ReadonlyArray<ReadonlyArray<unknown>>
}

export const isSync = (conn: Connection): conn is SyncConnection =>
  typeof (conn as Partial<SyncConnection>).executeSync === "function"

/**
 * Runs one statement on PostgreSQL (`$1`… placeholders): under `name`, a statement each connection prepares once
 * (what `Postgres.layer` provides, on its pool); with an empty name, unprepared. Rows as objects, or as arrays of
 * column values with `arrays`.
 */
export type PgExecute = (
  name: string,
  text: string,
  values: ReadonlyArray<unknown>,
  arrays?: boolean
) => Effect.Effect<ReadonlyArray<any>, SqlError>
