/**
 * The write connection of the SQLite layer: an `@effect/sql` `Connection` straight over better-sqlite3, owned by
 * the event store's writer for the store's lifetime. `@effect/sql-sqlite-node`'s client serves reads and users'
 * queries; for the append path its per-statement machinery (an effectful prepared-statement cache with a TTL, a
 * semaphore, a scope) cost about as much CPU as SQLite's own work on a single-event append, so the writer keeps
 * its prepared statements in a plain Map and runs them synchronously. Every append is still a statement through
 * the same `Connection` interface the PostgreSQL writer uses.
 *
 * The connection never waits inside SQLite (busy timeout 0, from the moment it is opened): a lock held by another
 * process fails a statement at once, and its caller retries after an asynchronous backoff. The library's other
 * writes (migrations, snapshots) reach it through `makeClient`, an `SqlClient` over the same connection.
 */
import type * as Reactivity from "@effect/experimental/Reactivity"
import * as SqlClient from "@effect/sql/SqlClient"
import { SqlError } from "@effect/sql/SqlError"
import * as Statement from "@effect/sql/Statement"
import Sqlite from "better-sqlite3"
import * as Effect from "effect/Effect"
import type * as Scope from "effect/Scope"
import type { SyncConnection } from "./connection.js"
import { isBusy } from "./sqlErrors.js"

// The writer runs a bounded set of statements (the conditional insert per row count and mode, a few more);
// the cap only guards against pathological use.
const MAX_STATEMENTS = 512

/**
 * Opens `filename` in WAL mode and runs `pragmas` on it; closed with the scope. The driver's own busy timeout is 0
 * from the start (better-sqlite3 defaults to 5 s), so that even the first `journal_mode` never blocks the thread.
 */
export const make = (
  filename: string,
  pragmas: ReadonlyArray<string>
): Effect.Effect<SyncConnection, SqlError, Scope.Scope> =>
  Effect.map(
    Effect.acquireRelease(
      Effect.try({
        try: () => {
          const db = new Sqlite(filename, { timeout: 0 })
          try {
            db.pragma("journal_mode = WAL")
            for (const pragma of pragmas) db.pragma(pragma)
          } catch (cause) {
            db.close()
            throw cause
          }
          return db
        },
        catch: (cause) => new SqlError({ cause, message: `cannot open ${filename}` })
      }),
      (db) => Effect.sync(() => db.close())
    ),
    (db) => {
      const statements = new Map<string, Sqlite.Statement>()
      const prepare = (sql: string) => {
        let statement = statements.get(sql)
        if (statement === undefined) {
          if (statements.size >= MAX_STATEMENTS) statements.clear()
          statement = db.prepare(sql)
          statements.set(sql, statement)
        }
        return statement
      }
      const run = (sql: string, params: ReadonlyArray<unknown>, raw: boolean, prepared: boolean) =>
        Effect.suspend(() => {
          try {
            const statement = prepared ? prepare(sql) : db.prepare(sql)
            if (statement.reader) {
              if (raw) statement.raw(true)
              try {
                return Effect.succeed(statement.all(...params))
              } finally {
                if (raw) statement.raw(false)
              }
            }
            statement.run(...params)
            return Effect.succeed([])
          } catch (cause) {
            return Effect.fail(new SqlError({ cause, message: "Failed to execute statement" }))
          }
        })
      const connection: SyncConnection = {
        executeSync: (sql, params) => {
          const statement = prepare(sql)
          if (statement.reader) return statement.all(...params)
          statement.run(...params)
          return []
        },
        runSync: (sql, params) => prepare(sql).run(...params),
        runAnySync: (sql, params) => {
          const statement = prepare(sql)
          if (!statement.reader) return statement.run(...params).changes
          statement.all(...params)
          return 0
        },
        prepareSync: (texts) => {
          for (const sql of texts) prepare(sql)
        },
        executeValuesSync: (sql, params) => {
          const statement = prepare(sql)
          statement.raw(true)
          try {
            return statement.all(...params) as Array<Array<unknown>>
          } finally {
            statement.raw(false)
          }
        },
        execute: (sql, params, transformRows) =>
          transformRows ? Effect.map(run(sql, params, false, true), (rows) => transformRows(rows as Array<object>)) : run(sql, params, false, true),
        executeRaw: (sql, params) => run(sql, params, false, true),
        executeValues: (sql, params) => run(sql, params, true, true) as Effect.Effect<ReadonlyArray<ReadonlyArray<unknown>>, SqlError>,
        executeUnprepared: (sql, params, transformRows) =>
          transformRows
            ? Effect.map(run(sql, params, false, false), (rows) => transformRows(rows as Array<object>))
            : run(sql, params, false, false),
        executeStream: () => Effect.dieMessage("executeStream is not supported by the event store's writer connection") as never
      }
      return connection
    }
  )

/**
 * Fails unless this connection may write. SQLite quietly opens a file it may not write (its permissions, a
 * read-only directory or filesystem) read-only, and `BEGIN IMMEDIATE` alone does not tell: on a read-only database
 * it starts a read transaction. So the probe changes the header's `user_version` to its own value inside a
 * transaction and rolls back: nothing reaches the file. A lock held by another process answers `SQLITE_BUSY` before
 * any of this; SQLite refuses a read-only database before it looks at locks, so busy means writable.
 */
export const checkWritable = (conn: SyncConnection): Effect.Effect<void, SqlError> =>
  Effect.try({
    try: () => {
      const version = Number((conn.executeSync("PRAGMA user_version", [])[0] as { user_version: number }).user_version)
      try {
        conn.executeSync("BEGIN IMMEDIATE", [])
      } catch (cause) {
        if (isBusy(cause)) return
        throw cause
      }
      let refused: unknown = undefined
      try {
        conn.executeSync(`PRAGMA user_version = ${version}`, [])
      } catch (cause) {
        refused = cause
      }
      try {
        conn.executeSync("ROLLBACK", [])
      } catch (cause) {
        // After some failures (a full disk) SQLite has already rolled back: the first error is the one to report.
        if (refused === undefined) throw cause
      }
      if (refused !== undefined) throw refused
    },
    catch: (cause) => new SqlError({ cause, message: "the database refuses writes" })
  })

/**
 * An `SqlClient` over the writer connection, for the library's writes that are not appends (migrations, snapshots):
 * they share the writer's never-waiting connection, and the callers retry a busy failure asynchronously. Each such
 * write is one statement, or (migrations) a transaction run before the event store starts, so it never interleaves
 * with an append's transaction, which runs synchronously from `BEGIN` to `COMMIT`.
 */
export const makeClient = (conn: SyncConnection): Effect.Effect<SqlClient.SqlClient, never, Reactivity.Reactivity> =>
  SqlClient.make({
    acquirer: Effect.succeed(conn),
    compiler: Statement.makeCompilerSqlite(),
    spanAttributes: [["db.system.name", "sqlite"]]
  })
