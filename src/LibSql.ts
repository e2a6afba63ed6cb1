/**
 * The event store on LibSQL (`@effect/sql-libsql`): a local SQLite file through libsql, a remote database (Turso,
 * `sqld`) or an embedded replica (a local file kept in sync with a remote one). An `EventStore`, a `SnapshotStore` and
 * the `LibsqlClient` / `SqlClient` they use, on SQLite's schema.
 *
 * What to know:
 * - **An append is one statement** in autocommit (its events as one JSON parameter), with the expected-version check
 *   in it: atomic on its own, on a local file and over the network alike (the client cannot hold a `BEGIN … COMMIT`
 *   of ours open on a remote connection). A write lock held by someone else is retried with a backoff for up to
 *   `busyTimeout`, never waited on inside the driver.
 * - **Positions** are SQLite rowids, assigned under SQLite's single write lock, so they follow commit order: readers
 *   never skip an event.
 * - **Durability** is libsql's: a local file in its default mode (WAL is not switched on here), the server's for a
 *   remote database; an embedded replica writes through to the remote database.
 * - **Subscribers** are woken at once by commits made through this store; commits of other processes show up at the
 *   next poll (`pollInterval`, default 500 ms).
 * - **Projections**: `SqlProjection.layer` on the provided `SqlClient`, its transactions through the client's
 *   transaction API. Inline projections and the synchronous command road are the `Sqlite` layer's only.
 *
 * The conformance suites run against a local file here. Remote URLs, auth tokens and embedded-replica settings are
 * checked and passed to the client as they are; there was no server to test them against.
 *
 * @since 0.1.0
 */
import * as LibsqlClient from "@effect/sql-libsql/LibsqlClient"
import * as Reactivity from "@effect/experimental/Reactivity"
import * as SqlClient from "@effect/sql/SqlClient"
import * as Config from "effect/Config"
import type * as ConfigError from "effect/ConfigError"
import * as Context from "effect/Context"
import type * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import type * as Redacted from "effect/Redacted"
import { InvalidInput, StoreError } from "./Errors.js"
import { EventStore } from "./EventStore.js"
import { SnapshotStore } from "./Snapshot.js"
import * as SqlEventStore from "./SqlEventStore.js"
import * as SqlSnapshotStore from "./SqlSnapshotStore.js"

/** @since 0.1.0 */
export interface Options {
  /**
   * Where the database is: a local file (`file:./data/events.db`, or a plain path), or a remote database
   * (`libsql://…`, `https://…`, `wss://…`, and their insecure `http://` / `ws://` forms). With `syncUrl`, a local file
   * that is an embedded replica of the remote database at `syncUrl`.
   */
  readonly url: string
  /** The remote database's token (Turso, `sqld` with authentication). */
  readonly authToken?: Redacted.Redacted
  /** An embedded replica's remote database (`libsql://…` or `https://…`); `url` is then a local file. */
  readonly syncUrl?: string
  /** An embedded replica: seconds between syncs from the remote database (a positive integer); default: only on writes. */
  readonly syncInterval?: number
  /** Encryption at rest of a local file. */
  readonly encryptionKey?: Redacted.Redacted
  /** How long appends retry while another connection holds the write lock; default 5 seconds. */
  readonly busyTimeout?: Duration.DurationInput
  /** How often a caught-up subscription looks for events appended by other processes; default 500 ms. */
  readonly pollInterval?: Duration.DurationInput
}

const REMOTE = /^(libsql|https?|wss?):\/\//

const invalid = (field: string, reason: string) =>
  new StoreError({ operation: "open", cause: new InvalidInput({ field, reason }) })

/** The client's configuration, checked: a typed error names the option that is wrong. */
const clientConfig = (options: Options): Effect.Effect<LibsqlClient.LibsqlClientConfig, StoreError> =>
  Effect.gen(function*() {
    if (typeof options.url !== "string" || options.url.trim() === "") {
      return yield* invalid("url", "must be a file path, a file: URL or a libsql:, http(s): or ws(s): URL")
    }
    const remote = REMOTE.test(options.url)
    if (!remote && /^[a-z][a-z0-9+.-]*:\/\//i.test(options.url) && !options.url.startsWith("file:")) {
      return yield* invalid("url", `unsupported scheme in ${options.url.split("://")[0]}://`)
    }
    const url = remote || options.url.startsWith("file:") ? options.url : `file:${options.url}`
    if (options.syncUrl !== undefined) {
      if (remote) return yield* invalid("syncUrl", "an embedded replica's url must be a local file")
      if (!REMOTE.test(options.syncUrl)) return yield* invalid("syncUrl", "must be a libsql:, http(s): or ws(s): URL")
    }
    if (options.syncInterval !== undefined) {
      if (options.syncUrl === undefined) return yield* invalid("syncInterval", "only with syncUrl (an embedded replica)")
      if (!Number.isSafeInteger(options.syncInterval) || options.syncInterval <= 0) {
        return yield* invalid("syncInterval", "must be a positive integer (seconds)")
      }
    }
    if (options.encryptionKey !== undefined && remote) {
      return yield* invalid("encryptionKey", "encrypts a local file; a remote database encrypts on its own")
    }
    return {
      url,
      intMode: "number",
      ...(options.authToken !== undefined ? { authToken: options.authToken } : {}),
      ...(options.syncUrl !== undefined ? { syncUrl: options.syncUrl } : {}),
      ...(options.syncInterval !== undefined ? { syncInterval: options.syncInterval } : {}),
      ...(options.encryptionKey !== undefined ? { encryptionKey: options.encryptionKey } : {})
    }
  })

/**
 * A ready `EventStore` and `SnapshotStore` on LibSQL, plus the `LibsqlClient` / `SqlClient` they use. Creates the
 * tables if missing. Fails with a `StoreError` when the options are invalid (its cause an `InvalidInput` naming the
 * option) or the database cannot be opened or written.
 *
 * @example
 * ```ts
 * const StoreLive = LibSql.layer({ url: "file:./data/events.db" })
 * const Remote = LibSql.layer({ url: "libsql://my-db.turso.io", authToken: Redacted.make(token) })
 * ```
 *
 * @since 0.1.0
 */
export const layer = (
  options: Options
): Layer.Layer<EventStore | SnapshotStore | LibsqlClient.LibsqlClient | SqlClient.SqlClient, StoreError> =>
  Layer.scopedContext(Effect.gen(function*() {
    const config = yield* clientConfig(options)
    const reactivity = yield* Layer.build(Reactivity.layer)
    const client = yield* Effect.provide(LibsqlClient.make(config), reactivity)
    const context = Context.make(LibsqlClient.LibsqlClient, client).pipe(Context.add(SqlClient.SqlClient, client))
    const busyRetry = SqlEventStore.defaultBusyRetry(options.busyTimeout ?? "5 seconds")
    const [eventStore, snapshotStore] = yield* Effect.all([
      SqlEventStore.make({
        busyRetry,
        ...(options.pollInterval !== undefined ? { pollInterval: options.pollInterval } : {})
      }),
      SqlSnapshotStore.make({ busyRetry })
    ]).pipe(Effect.provide(context))
    return context.pipe(
      Context.add(EventStore, EventStore.of(eventStore)),
      Context.add(SnapshotStore, snapshotStore)
    )
  }).pipe(Effect.catchAllDefect((defect) => Effect.fail(new StoreError({ operation: "open", cause: defect })))))

/**
 * `layer`, with its options read from `Config`.
 *
 * @example
 * ```ts
 * const StoreLive = LibSql.layerConfig({
 *   url: Config.string("LIBSQL_URL"),
 *   authToken: Config.redacted("LIBSQL_AUTH_TOKEN")
 * })
 * ```
 *
 * @since 0.1.0
 */
export const layerConfig = (
  config: Config.Config.Wrap<Options>
): Layer.Layer<
  EventStore | SnapshotStore | LibsqlClient.LibsqlClient | SqlClient.SqlClient,
  StoreError | ConfigError.ConfigError
> => Layer.unwrapEffect(Effect.map(Config.unwrap(config), layer))
