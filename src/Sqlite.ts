/**
 * The embedded default: an event store in one SQLite file, no server. WAL journal, `synchronous=FULL` (an
 * acknowledged append survives `kill -9` and power loss) unless `durability: "normal"` is chosen. Writes go through
 * a connection of their own, held by the store, so they never queue behind reads; reads and your own queries use
 * the `SqlClient` this layer provides.
 *
 * Opening checks the file once, so that a bad one fails the layer with a `StoreError` naming it (never a defect, and
 * never later at the first append): that it opens, that it is an SQLite database (its header), that this process
 * may write it, and that the schema is in place. No wait for another process's lock blocks the thread: the library's
 * writes (appends, migrations, snapshots) fail at once inside SQLite and retry after an asynchronous backoff, for up
 * to `busyTimeout`.
 *
 * @since 0.1.0
 */
import * as Reactivity from "@effect/experimental/Reactivity"
import * as SqliteClient from "@effect/sql-sqlite-node/SqliteClient"
import * as SqlClient from "@effect/sql/SqlClient"
import { SqlError } from "@effect/sql/SqlError"
import * as Clock from "effect/Clock"
import * as Config from "effect/Config"
import type * as ConfigError from "effect/ConfigError"
import * as Context from "effect/Context"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as ExecutionStrategy from "effect/ExecutionStrategy"
import * as Exit from "effect/Exit"
import * as Layer from "effect/Layer"
import type * as Schedule from "effect/Schedule"
import * as Scope from "effect/Scope"
import { StoreError } from "./Errors.js"
import { EventStore } from "./EventStore.js"
import type { SyncConnection } from "./internal/connection.js"
import * as Migrations from "./internal/migrations.js"
import { codeOf, isBusy, isCantOpen, isDiskFull, isNotADatabase, isReadOnly } from "./internal/sqlErrors.js"
import * as SqliteConnection from "./internal/sqliteConnection.js"
import { SnapshotStore } from "./Snapshot.js"
import * as SqlEventStore from "./SqlEventStore.js"
import * as SqlSnapshotStore from "./SqlSnapshotStore.js"

/** @since 0.1.0 */
export interface Options {
  /** Path of the database file (created if missing; its directory must exist). `":memory:"` works, on a single connection. */
  readonly filename: string
  /**
   * `"full"` (default): every acknowledged append is on disk (`synchronous=FULL`).
   * `"normal"`: faster; a power loss may drop the last commits, a process crash does not (`synchronous=NORMAL`).
   */
  readonly durability?: "full" | "normal"
  /**
   * How long the library's writes (appends, snapshots, the migrations when the store opens) wait for another
   * process's write lock before failing with `StoreError`; default 5 seconds. They retry with a backoff instead of
   * blocking the thread. Your own statements on the `SqlClient` wait inside SQLite (`PRAGMA busy_timeout`) for as long.
   */
  readonly busyTimeout?: Duration.DurationInput
  /** How often a caught-up subscription looks for events appended by other processes; default 500 ms. */
  readonly pollInterval?: Duration.DurationInput
  /**
   * When the layer's scope closes, how long appends still queued may take to commit; after it they fail with
   * `StoreError` (nothing of them written). Default 5 seconds.
   */
  readonly shutdownGrace?: Duration.DurationInput
}

const busyTimeout = (options: Options) => Duration.decode(options.busyTimeout ?? "5 seconds")

const synchronous = (options: Options) => `synchronous = ${options.durability === "normal" ? "NORMAL" : "FULL"}`

/**
 * Deleted rows are overwritten in the file (`secure_delete`): a snapshot, a read-model row or a data key that was
 * deleted (`Privacy.forget`) leaves no copy in the database's free pages.
 */
const SECURE_DELETE = "secure_delete = ON"

// The writer never waits inside SQLite: a lock held by another process makes its write fail at once and retry
// after a backoff (`SqlEventStore.defaultBusyRetry`), so that this process's thread is never blocked meanwhile.
/** @internal */
export const writerPragmas = (options: Options) => ["busy_timeout = 0", synchronous(options), SECURE_DELETE]

const isMemory = (filename: string) => filename === ":memory:" || filename === ""

// --- errors --------------------------------------------------------------------------------------------------------

/**
 * Why a store could not be opened on an SQLite file: the `cause` of the `StoreError` the layer fails with. Its
 * message names the file and the reason; `code` is SQLite's (`SQLITE_CANTOPEN`, `SQLITE_NOTADB`, `SQLITE_READONLY`,
 * `SQLITE_FULL`, `SQLITE_BUSY` …) when the driver gave one, and `cause` is the driver's error.
 *
 * @since 0.1.0
 */
export class OpenError extends Error {
  override readonly name = "SqliteOpenError"
  readonly filename: string
  readonly code: string | undefined
  constructor(filename: string, reason: string, options: { readonly code: string | undefined; readonly cause: unknown }) {
    super(`SQLite file ${filename}: ${reason}`, { cause: options.cause })
    this.filename = filename
    this.code = options.code
  }
}

// The driver's error under the wrappers (SqlError, the Migrator's error, StoreError): the first with an SQLite
// code, else the innermost.
const driverError = (error: unknown): unknown => {
  let current = error
  for (let depth = 0; depth < 6; depth++) {
    const code = (current as { readonly code?: unknown } | null | undefined)?.code
    if (typeof code === "string" && code.startsWith("SQLITE_")) return current
    const next = (current as { readonly cause?: unknown } | null | undefined)?.cause
    if (next === undefined || next === null) return current
    current = next
  }
  return current
}

const hint = (error: unknown, timeout: Duration.Duration): string | undefined => {
  if (isCantOpen(error)) {
    return "cannot open or create the file (is it a directory? does this process have permission to it and its directory?)"
  }
  if (isNotADatabase(error)) return "not an SQLite database, or its header is damaged"
  if (isReadOnly(error)) return "read-only for this process (the file, its directory or its filesystem), and the store needs to write"
  if (isDiskFull(error)) return "the disk is full"
  if (isBusy(error)) return `another process held the write lock for longer than busyTimeout (${Duration.format(timeout)})`
  return undefined
}

const openError = (filename: string, timeout: Duration.Duration, operation: string) => (error: unknown): StoreError => {
  const [op, inner] = error instanceof StoreError ? [error.operation, error.cause] : [operation, error]
  const driver = driverError(inner)
  const code = codeOf(driver)
  const message = driver instanceof Error ? driver.message : String(driver)
  const pending = (inner as { readonly _tag?: unknown } | null)?._tag === "MigrationPending"
  const why = pending ? `${message}; still not done after busyTimeout (${Duration.format(timeout)})` : message
  const explained = hint(driver, timeout)
  const reason = `${explained === undefined ? why : `${explained}: ${why}`}${code === undefined ? "" : ` (${code})`}`
  return new StoreError({ operation: op, cause: new OpenError(filename, reason, { code, cause: driver }) })
}

// --- opening -------------------------------------------------------------------------------------------------------

interface Opening {
  readonly options: Options
  /** Maps every failure and defect of a step to a `StoreError` naming the file. */
  readonly guard: <A, E, R>(effect: Effect.Effect<A, E, R>, operation?: string) => Effect.Effect<A, StoreError, R>
  /** Retries a step that found the database locked, with a backoff, until `busyTimeout` after the opening began. */
  readonly patiently: <A, E, R>(effect: Effect.Effect<A, E, R>) => Effect.Effect<A, E, R>
  /** The busy retry for what is left of `busyTimeout`. */
  readonly remaining: Effect.Effect<Schedule.Schedule<unknown>>
}

const opening = (options: Options): Effect.Effect<Opening> =>
  Effect.map(Clock.currentTimeMillis, (start) => {
    const timeout = busyTimeout(options)
    const deadline = start + Duration.toMillis(timeout)
    const remaining = Effect.map(
      Clock.currentTimeMillis,
      (now) => SqlEventStore.defaultBusyRetry(Duration.millis(Math.max(0, deadline - now)))
    )
    return {
      options,
      remaining,
      guard: (effect, operation = "open") =>
        effect.pipe(
          Effect.catchAllDefect((defect) => Effect.fail(defect)),
          Effect.mapError(openError(options.filename, timeout, operation))
        ),
      patiently: (effect) =>
        Effect.flatMap(remaining, (schedule) => Effect.retry(effect, { schedule, while: (e) => isBusy(e) }))
    }
  })

/**
 * Puts the file in WAL mode, once. A file already in WAL mode is left alone: converting needs an exclusive lock,
 * which a connection that opened the file before another process converted it would ask for in vain for as long as
 * that process keeps the file open (WAL connections hold a shared lock for their lifetime). SQLite answers a
 * conversion it could not make with the old mode, not an error: that is retried like a lock.
 */
const toWal = (client: SqliteClient.SqliteClient) =>
  Effect.flatMap(client.unsafe<{ journal_mode: string }>("PRAGMA journal_mode"), (rows) =>
    rows[0]?.journal_mode === "wal" ? Effect.void : Effect.flatMap(
      client.unsafe<{ journal_mode: string }>("PRAGMA journal_mode = WAL"),
      (rows) =>
        rows[0]?.journal_mode === "wal"
          ? Effect.void
          : Effect.fail(
            new SqlError({
              cause: Object.assign(new Error(`journal mode stays ${rows[0]?.journal_mode}`), { code: "SQLITE_BUSY" }),
              message: "cannot switch to WAL yet"
            })
          )
    ))

/**
 * The shared client: opened without SQLite's own waiting (busy timeout 0 while the store opens; the sqlite-node
 * client's WAL switch is ours, because it would run under better-sqlite3's default 5 s busy timeout), then checked:
 * `journal_mode` and `schema_version` read the header, so a file that is not a database fails here.
 */
const openClient = ({ guard, options, patiently }: Opening) =>
  Effect.gen(function*() {
    const outer = yield* Effect.scope
    // Each attempt opens a connection of its own, in a scope of its own, closed when the attempt fails: a connection
    // that opened the file just before another process converted it to WAL can keep answering "locked" (seen under
    // load), while a fresh connection reads the file as it now is.
    const attempt = Effect.gen(function*() {
      const scope = yield* Scope.fork(outer, ExecutionStrategy.sequential)
      const opened = yield* Effect.exit(Effect.gen(function*() {
        const client = yield* Scope.extend(SqliteClient.make({ filename: options.filename, disableWAL: true }), scope)
        yield* client.unsafe("PRAGMA busy_timeout = 0")
        if (!isMemory(options.filename)) yield* toWal(client)
        yield* client.unsafe(`PRAGMA ${synchronous(options)}`)
        yield* client.unsafe(`PRAGMA ${SECURE_DELETE}`)
        yield* client.unsafe("PRAGMA schema_version")
        return client
      }))
      if (Exit.isFailure(opened)) yield* Scope.close(scope, opened)
      return yield* opened
    })
    return yield* guard(patiently(attempt))
  })

// After the opening, users' statements on the client wait for a lock inside SQLite, as SQLite users expect.
const userBusyTimeout = (client: SqliteClient.SqliteClient, { guard, options }: Opening) =>
  guard(client.unsafe(`PRAGMA busy_timeout = ${Math.round(Duration.toMillis(busyTimeout(options)))}`))

const clientContext = (client: SqliteClient.SqliteClient) =>
  Context.make(SqliteClient.SqliteClient, client).pipe(Context.add(SqlClient.SqlClient, client))

/** The writer connection, checked writable, and the schema, migrated through it. */
const openWriter = (open: Opening, client: SqliteClient.SqliteClient) =>
  Effect.gen(function*() {
    const { guard, options, patiently, remaining } = open
    // ":memory:" is one database per connection: there, the store writes through the shared client.
    let writer: SyncConnection | undefined = undefined
    let writeClient: SqlClient.SqlClient = client
    if (!isMemory(options.filename)) {
      const connection = yield* guard(patiently(SqliteConnection.make(options.filename, writerPragmas(options))))
      yield* guard(SqliteConnection.checkWritable(connection))
      writer = connection
      writeClient = yield* SqliteConnection.makeClient(connection)
    }
    yield* guard(
      Effect.flatMap(remaining, (schedule) =>
        Effect.provideService(Migrations.migrateWithin(schedule), SqlClient.SqlClient, writeClient)),
      "migrate"
    )
    return { writer, writeClient }
  })

const withReactivity = <A, E>(
  f: (open: Opening) => Effect.Effect<A, E, Scope.Scope | Reactivity.Reactivity>,
  options: Options
): Effect.Effect<A, E, Scope.Scope> =>
  Effect.gen(function*() {
    const reactivity = yield* Layer.build(Reactivity.layer)
    return yield* Effect.provide(Effect.flatMap(opening(options), f), reactivity)
  })

// --- layers --------------------------------------------------------------------------------------------------------

/**
 * The `SqlClient` for an SQLite file, configured for the event store (WAL, durability, busy timeout) and checked as
 * `layer` checks it, without the writer and the migrations.
 *
 * @since 0.1.0
 */
export const layerClient = (
  options: Options
): Layer.Layer<SqliteClient.SqliteClient | SqlClient.SqlClient, StoreError> =>
  Layer.scopedContext(withReactivity((open) =>
    Effect.gen(function*() {
      const client = yield* openClient(open)
      yield* userBusyTimeout(client, open)
      return clientContext(client)
    }), options))

/**
 * A ready `EventStore` and `SnapshotStore` on an SQLite file, plus the `SqlClient` they read with (for your own
 * queries and projections in the same database). Fails with a `StoreError` naming the file when it cannot be
 * opened, is not a database, cannot be written, or stays locked by another process for longer than `busyTimeout`.
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
  Layer.scopedContext(withReactivity((open) =>
    Effect.gen(function*() {
      const client = yield* openClient(open)
      const { writeClient, writer } = yield* openWriter(open, client)
      const context = clientContext(client)
      const busyRetry = SqlEventStore.defaultBusyRetry(busyTimeout(options))
      // The schema is complete by now: the services' own migration check only reads.
      const [eventStore, snapshotStore] = yield* open.guard(
        Effect.all([
          SqlEventStore.make({
            busyRetry,
            ...(options.pollInterval !== undefined ? { pollInterval: options.pollInterval } : {}),
            ...(options.shutdownGrace !== undefined ? { shutdownGrace: options.shutdownGrace } : {}),
            ...(writer !== undefined ? { writeConnection: writer } : {})
          }),
          SqlSnapshotStore.make({ busyRetry, writeClient })
        ]).pipe(Effect.provide(context))
      )
      yield* userBusyTimeout(client, open)
      return context.pipe(
        Context.add(EventStore, EventStore.of(eventStore)),
        Context.add(SnapshotStore, snapshotStore)
      )
    }), options))

/**
 * `layer`, with its options read from `Config`: each option a `Config` of its own, or one `Config` of them all.
 *
 * @example
 * ```ts
 * const StoreLive = Sqlite.layerConfig({
 *   filename: Config.string("EVENTSTORE_FILE"),
 *   busyTimeout: Config.duration("EVENTSTORE_BUSY_TIMEOUT").pipe(Config.withDefault(Duration.seconds(5))),
 *   durability: Config.literal("full", "normal")("EVENTSTORE_DURABILITY").pipe(Config.withDefault("full"))
 * })
 * ```
 *
 * @since 0.1.0
 */
export const layerConfig = (
  config: Config.Config.Wrap<Options>
): Layer.Layer<
  EventStore | SnapshotStore | SqliteClient.SqliteClient | SqlClient.SqlClient,
  StoreError | ConfigError.ConfigError
> => Layer.unwrapEffect(Effect.map(Config.unwrap(config), layer))
