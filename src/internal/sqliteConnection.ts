/**
 * The write connection of the SQLite layer: an `@effect/sql` `Connection` straight over better-sqlite3, owned by
 * the event store's writer for the store's lifetime. `@effect/sql-sqlite-node`'s client serves reads and users'
 * queries; for the append path its per-statement machinery (an effectful prepared-statement cache with a TTL, a
 * semaphore, a scope) cost about as much CPU as SQLite's own work on a single-event append, so the writer keeps
 * its prepared statements in a plain Map and runs them synchronously. Every append is still a statement through
 * the same `Connection` interface the PostgreSQL writer uses.
 */
import type { SyncConnection } from "./connection.js"
import { SqlError } from "@effect/sql/SqlError"
import Sqlite from "better-sqlite3"
import * as Effect from "effect/Effect"
import type * as Scope from "effect/Scope"

// The writer runs a bounded set of statements (the conditional insert per row count and mode, a few more);
// the cap only guards against pathological use.
const MAX_STATEMENTS = 512

/** Opens `filename` in WAL mode and runs `pragmas` on it; closed with the scope. */
export const make = (
  filename: string,
  pragmas: ReadonlyArray<string>
): Effect.Effect<SyncConnection, SqlError, Scope.Scope> =>
  Effect.map(
    Effect.acquireRelease(
      Effect.try({
        try: () => {
          const db = new Sqlite(filename)
          db.pragma("journal_mode = WAL")
          for (const pragma of pragmas) db.pragma(pragma)
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
