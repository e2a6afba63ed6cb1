/**
 * The embedded default: an event store in one SQLite file, no server. WAL journal, `synchronous=FULL` (an
 * acknowledged append survives `kill -9` and power loss) unless `durability: "normal"` is chosen, and a busy timeout
 * so that several processes can share the file.
 *
 * @since 0.1.0
 */
import * as SqliteClient from "@effect/sql-sqlite-node/SqliteClient"
import type * as SqlClient from "@effect/sql/SqlClient"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import { StoreError } from "./Errors.js"
import type { EventStore } from "./EventStore.js"
import * as SqlEventStore from "./SqlEventStore.js"

/** @since 0.1.0 */
export interface Options {
  /** Path of the database file (created if missing). */
  readonly filename: string
  /**
   * `"full"` (default): every acknowledged append is on disk (`synchronous=FULL`).
   * `"normal"`: faster; a power loss may drop the last commits, a process crash does not (`synchronous=NORMAL`).
   */
  readonly durability?: "full" | "normal"
  /** How long a write waits for another process's lock before failing with `StoreError`; default 5 seconds. */
  readonly busyTimeout?: Duration.DurationInput
  /** How often a caught-up subscription looks for events appended by other processes; default 500 ms. */
  readonly pollInterval?: Duration.DurationInput
}

/**
 * The `SqlClient` for an SQLite file, configured for the event store: WAL, durability, busy timeout.
 *
 * @since 0.1.0
 */
export const layerClient = (
  options: Options
): Layer.Layer<SqliteClient.SqliteClient | SqlClient.SqlClient, StoreError> =>
  Layer.effectDiscard(
    Effect.gen(function*() {
      const sql = yield* SqliteClient.SqliteClient
      const busy = Math.round(Duration.toMillis(Duration.decode(options.busyTimeout ?? "5 seconds")))
      yield* sql.unsafe(`PRAGMA busy_timeout = ${busy}`)
      yield* sql.unsafe(`PRAGMA synchronous = ${options.durability === "normal" ? "NORMAL" : "FULL"}`)
    }).pipe(Effect.mapError((cause) => new StoreError({ operation: "open", cause })))
  ).pipe(
    Layer.provideMerge(SqliteClient.layer({ filename: options.filename })),
    Layer.catchAll((error) =>
      Layer.fail(error instanceof StoreError ? error : new StoreError({ operation: "open", cause: error }))
    )
  )

/**
 * A ready `EventStore` on an SQLite file, plus the `SqlClient` it uses (for projections and snapshots in the same
 * database).
 *
 * @example
 * ```ts
 * const program = Account.handle("42", Account.Open({ owner: "ada" }))
 * program.pipe(Effect.provide(Sqlite.layer({ filename: "./data/bank.db" })))
 * ```
 *
 * @since 0.1.0
 */
export const layer = (
  options: Options
): Layer.Layer<EventStore | SqliteClient.SqliteClient | SqlClient.SqlClient, StoreError> =>
  SqlEventStore.layer(options.pollInterval === undefined ? {} : { pollInterval: options.pollInterval }).pipe(
    Layer.provideMerge(layerClient(options))
  )
