/** A write connection that can also run a statement synchronously (SQLite); it throws the driver's error. */
import * as SqlClient from "@effect/sql/SqlClient"
import type { Connection } from "@effect/sql/SqlConnection"
import type { SqlError } from "@effect/sql/SqlError"
import * as Context from "effect/Context"
import * as Effect from "effect/Effect"

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

// --- capabilities `Postgres.layer` gives its client, which the store looks for ----------------------------------

const preparedKey = Symbol.for("effect-eventstore/pgExecute")

/**
 * Marks a PostgreSQL client with a faster way to run the store's statements (prepared once per connection,
 * on the client's pool): what `Postgres.layer` does.
 */
export const withPrepared = <A extends object>(client: A, execute: PgExecute): A => {
  Object.defineProperty(client, preparedKey, { value: execute, enumerable: false })
  return client
}

const withoutTransaction = Effect.mapInputContext((context: Context.Context<never>) =>
  Context.omit(SqlClient.TransactionConnection)(context) as Context.Context<never>
)

// A LibSQL client's transactions (the tag's key is the client's).
const LibsqlTransaction = Context.GenericTag<unknown>("@effect/sql-libsql/LibsqlClient/LibsqlTransaction")

/**
 * Runs `effect` (a transaction of the store's own, say) outside any transaction of the caller's on the same client:
 * the client then opens a transaction of its own instead of a savepoint in the caller's, whose commit would decide
 * the fate of an append already acknowledged.
 */
export const outsideTransactions = <A, E, R>(effect: Effect.Effect<A, E, R>): Effect.Effect<A, E, R> =>
  Effect.mapInputContext(effect, (context: Context.Context<R>) =>
    Context.omit(SqlClient.TransactionConnection, LibsqlTransaction)(context) as Context.Context<R>)

/** The store's statements on any PostgreSQL `SqlClient`, outside any transaction of the caller's. */
export const executeOf = (sql: SqlClient.SqlClient): PgExecute =>
  (sql as { readonly [preparedKey]?: PgExecute })[preparedKey] ??
    ((_name, text, values, arrays) => {
      const statement = sql.unsafe(text, values as Array<any>)
      return withoutTransaction(arrays === true ? statement.values : statement.withoutTransform)
    })

/**
 * Listens on a channel for as long as it runs, calling `wake` for each notification (and once when it starts):
 * fails when its connection is lost.
 */
export type PgListen = (channel: string, wake: () => void) => Effect.Effect<never, SqlError>

const listenKey = Symbol.for("effect-eventstore/pgListen")

/** Marks a PostgreSQL client with a way to `LISTEN` (what `Postgres.layer` does). */
export const withListen = <A extends object>(client: A, listen: PgListen): A => {
  Object.defineProperty(client, listenKey, { value: listen, enumerable: false })
  return client
}

export const listenOf = (sql: SqlClient.SqlClient): PgListen | undefined =>
  (sql as { readonly [listenKey]?: PgListen })[listenKey]

