/**
 * The embedded default: an event store in one SQLite file, no server. WAL journal, `synchronous=FULL` (an
 * acknowledged append survives `kill -9` and power loss) unless `durability: "normal"` is chosen, and a busy timeout
 * so that several processes can share the file. Writes go through a connection of their own, held by the store,
 * so they never queue behind reads; reads and your own queries use the `SqlClient` this layer provides.
 *
 * @since 0.1.0
 */
import * as Reactivity from "@effect/experimental/Reactivity"
import * as SqliteClient from "@effect/sql-sqlite-node/SqliteClient"
import * as SqlClient from "@effect/sql/SqlClient"
import * as Context from "effect/Context"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import { StoreError } from "./Errors.js"
import { EventStore } from "./EventStore.js"
import * as SqliteConnection from "./internal/sqliteConnection.js"
import type { SnapshotStore } from "./Snapshot.js"
import * as SqlEventStore from "./SqlEventStore.js"
import * as SqlSnapshotStore from "./SqlSnapshotStore.js"

/** @since 0.1.0 */
export interface Options {
  /** Path of the database file (created if missing). `":memory:"` works, on a single connection. */
  readonly filename: string
  /**
   * `"full"` (default): every acknowledged append is on disk (`synchronous=FULL`).
   * `"normal"`: faster; a power loss may drop the last commits, a process crash does not (`synchronous=NORMAL`).
   */
  readonly durability?: "full" | "normal"
  /**
   * How long a write waits for another process's lock before failing with `StoreError`; default 5 seconds. (The
   * event store's writer retries with a backoff instead of blocking the thread.)
   */
  readonly busyTimeout?: Duration.DurationInput
  /** How often a caught-up subscription looks for events appended by other processes; default 500 ms. */
  readonly pollInterval?: Duration.DurationInput
}

const busyTimeout = (options: Options) => Duration.decode(options.busyTimeout ?? "5 seconds")

const pragmas = (options: Options) => [
  `busy_timeout = ${Math.round(Duration.toMillis(busyTimeout(options)))}`,
  `synchronous = ${options.durability === "normal" ? "NORMAL" : "FULL"}`
]

// The writer never waits inside SQLite: a lock held by another process makes its write fail at once and retry
// after a backoff (`SqlEventStore.defaultBusyRetry`), so that this process's thread is never blocked meanwhile.
/** @internal */
export const writerPragmas = (options: Options) => [
  "busy_timeout = 0",
  `synchronous = ${options.durability === "normal" ? "NORMAL" : "FULL"}`
]

const configure = (client: SqliteClient.SqliteClient, options: Options) =>
  Effect.forEach(pragmas(options), (pragma) => client.unsafe(`PRAGMA ${pragma}`), { discard: true }).pipe(
    Effect.mapError((cause) => new StoreError({ operation: "open", cause }))
  )

/**
 * The `SqlClient` for an SQLite file, configured for the event store: WAL, durability, busy timeout.
 *
 * @since 0.1.0
 */
export const layerClient = (
  options: Options
): Layer.Layer<SqliteClient.SqliteClient | SqlClient.SqlClient, StoreError> =>
  Layer.scopedContext(Effect.map(client(options), (client) =>
    Context.make(SqliteClient.SqliteClient, client).pipe(Context.add(SqlClient.SqlClient, client))
  ))

const client = (options: Options) =>
  Effect.tap(
    Effect.provide(SqliteClient.make({ filename: options.filename }), Reactivity.layer),
    (client) => configure(client, options)
  )

const isMemory = (filename: string) => filename === ":memory:" || filename === ""

/**
 * A ready `EventStore` and `SnapshotStore` on an SQLite file, plus the `SqlClient` they read with (for your own
 * queries and projections in the same database).
 *
 * @example
 * ```ts
 * const program = Account.handle("42", OpenAccount.make({ owner: "ada" }))
 * program.pipe(Effect.provide(Sqlite.layer({ filename: "./data/bank.db" })))
 * ```
 *
 * @since 0.1.0
 */
export const layer = (
  options: Options
): Layer.Layer<EventStore | SnapshotStore | SqliteClient.SqliteClient | SqlClient.SqlClient, StoreError> =>
  Layer.merge(layerEventStore(options), SqlSnapshotStore.layer({ busyRetry: SqlEventStore.defaultBusyRetry(busyTimeout(options)) })).pipe(Layer.provideMerge(layerClient(options)))

const layerEventStore = (options: Options) =>
  Layer.scoped(
    EventStore,
    Effect.gen(function*() {
      // ":memory:" is one database per connection: there, the store writes through the shared client.
      const writeConnection = isMemory(options.filename) ? undefined : yield* SqliteConnection.make(
        options.filename,
        writerPragmas(options)
      ).pipe(Effect.mapError((cause) => new StoreError({ operation: "open", cause })))
      return yield* SqlEventStore.make({
        busyRetry: SqlEventStore.defaultBusyRetry(busyTimeout(options)),
        ...(options.pollInterval !== undefined ? { pollInterval: options.pollInterval } : {}),
        ...(writeConnection !== undefined ? { writeConnection } : {})
      })
    })
  )
