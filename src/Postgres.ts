/**
 * The event store on PostgreSQL (13 or later), for several application processes sharing one database: an
 * `EventStore`, a `SnapshotStore` and the `SqlClient` (a `PgClient` of `@effect/sql-pg`) they use, on one
 * connection pool. Every table lives in `schema` (created if missing; connections set `search_path` to it), so
 * several stores can share a database. Projections' checkpoints go in the same database with `SqlProjection.layer`.
 *
 * What to know:
 * - **Positions** come from a sequence: numbers, increasing, with holes where an append failed or lost a race.
 * - **Global order never skips an event.** PostgreSQL commits transactions in any order. An append takes its
 *   transaction id and its positions together, under an advisory lock held for microseconds (not until its commit),
 *   before it writes anything; `readAll`, `subscribe`, `head` and projections hand out only rows whose transaction
 *   is older than the oldest one still running on the server, which is always a prefix of the log. The trade-off: a
 *   long write transaction anywhere on the server delays readers of the global log (never makes them skip) until it
 *   ends; the gauge `eventstore_held_back_events` counts the committed events held back meanwhile. Reads of one
 *   stream are never delayed.
 * - **An append is one round trip**: one call of the `eventstore_append` function, atomic on its own: every
 *   expected-version mode is checked in it, and a conflict (including a concurrent writer refused by the unique
 *   index) is a `ConcurrencyError` carrying the version found. The function refuses to run in a transaction that has
 *   already written (its ordering rule needs a fresh transaction). A lost connection fails the append in flight with
 *   `StoreError` (it was written whole or not at all) and the pool opens new connections for what follows.
 * - **Live subscriptions** are woken at once by commits in this process and, through `LISTEN`/`NOTIFY`, by other
 *   processes' commits; `pollInterval` is the fallback (and how events held back by a long transaction show up).
 * - **Durability** is the server's: with its default `synchronous_commit = on`, an acknowledged append is on disk.
 * - Behind a transaction-mode pooler (PgBouncer), `search_path` set at connection start is not kept: use `public`
 *   or connect directly. `LISTEN` needs a session too (without it, subscribers rely on polling).
 * - **Credentials**: with `credentials: "<name>"` (`CredentialsOptions`) the user name and password come from the
 *   `Credentials` service (`effect-eventstore/Credentials`), and the password is read again for every new
 *   connection, so a rotated password is used without rebuilding the layer.
 * - A dump restored into another cluster brings transaction ids that cluster may not have reached (readers would
 *   hold those events back): when a store opens and finds the last event's transaction id in the cluster's future,
 *   it marks every stored event as old, once.
 *
 * @since 0.1.0
 */
import * as Reactivity from "@effect/experimental/Reactivity"
import * as PgClient from "@effect/sql-pg/PgClient"
import * as SqlClient from "@effect/sql/SqlClient"
import { SqlError } from "@effect/sql/SqlError"
import * as Config from "effect/Config"
import type * as ConfigError from "effect/ConfigError"
import * as Context from "effect/Context"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Redacted from "effect/Redacted"
import * as Runtime from "effect/Runtime"
import type { ConnectionOptions } from "node:tls"
import Pg from "pg"
import * as Credentials from "./Credentials.js"
import { InvalidInput, StoreError } from "./Errors.js"
import { EventStore } from "./EventStore.js"
import { SCHEMA_LOCK } from "./internal/migrations.js"
import { type PgExecute, type PgListen, withListen, withPrepared } from "./internal/connection.js"
import { SnapshotStore } from "./Snapshot.js"
import * as SqlEventStore from "./SqlEventStore.js"
import * as SqlSnapshotStore from "./SqlSnapshotStore.js"

/** @since 0.1.0 */
export interface Options {
  /** `postgres://user:password@host:port/database`; parts given below override it. */
  readonly url?: Redacted.Redacted
  readonly host?: string
  readonly port?: number
  readonly database?: string
  readonly username?: string
  readonly password?: Redacted.Redacted
  /** TLS: `true`, or node's TLS options. */
  readonly ssl?: boolean | ConnectionOptions
  /**
   * The schema every table of the store lives in (created if missing); default `public`. Letters, digits and
   * underscores, not starting with a digit, at most 63 characters; case is kept.
   */
  readonly schema?: string
  /** Connections in the pool; default 10. Each active projection runner holds one more for its lock. */
  readonly maxConnections?: number
  /** `application_name`, shown in `pg_stat_activity`; default `effect-eventstore`. */
  readonly applicationName?: string
  /** How long opening a connection may take; default 10 seconds. */
  readonly connectTimeout?: Duration.DurationInput
  /** How often a caught-up subscription looks for events when no notification came; default 500 ms. */
  readonly pollInterval?: Duration.DurationInput
  /**
   * How long appends retry after a deadlock or serialization failure (they never wait on locks otherwise); default
   * 5 seconds.
   */
  readonly busyTimeout?: Duration.DurationInput
}

/** What the layer provides. @since 0.1.0 */
export type Services = EventStore | SnapshotStore | PgClient.PgClient | SqlClient.SqlClient

/**
 * `Options` whose password comes from the `Credentials` service: `credentials` names the credential, a
 * `UserPassword` (its user name is the connection's, read once when the layer starts) or a `Token` (taken as the
 * password; the user name comes from `username` or `url`). The password is read for every new connection the pool
 * opens (`Credentials.get`, so from its cache), so after a rotation (`Credentials.rotate`, a refresh, or a watched
 * file changing) new connections use the new password; open ones keep theirs, as PostgreSQL does after
 * `ALTER ROLE … PASSWORD`. A password in `url` or `password` is ignored.
 *
 * @since 0.1.0
 */
export interface CredentialsOptions extends Options {
  readonly credentials: string
}

const IDENTIFIER = /^[A-Za-z_][A-Za-z0-9_]{0,62}$/

const quote = (identifier: string) => `"${identifier}"`

const openError = (cause: unknown) =>
  new StoreError({ operation: "open", cause })

/** How the password reaches the driver when it comes from `Credentials`. */
interface Auth {
  readonly username: string | undefined
  readonly password: () => Promise<string>
}

/**
 * `url` with the parts given separately written into it (user name and password: `null` removes the password). pg
 * lets the parts of a connection string override the separate settings (an absent password even clears a given
 * one), so the URL itself carries them.
 */
const withParts = (
  url: string,
  parts: {
    readonly username: string | undefined
    readonly password: string | null | undefined
    readonly host: string | undefined
    readonly port: number | undefined
    readonly database: string | undefined
  }
): string => {
  if (Object.values(parts).every((part) => part === undefined)) return url
  let parsed: URL
  try {
    parsed = new URL(url)
  } catch {
    return url
  }
  if (parts.username !== undefined) parsed.username = encodeURIComponent(parts.username)
  if (parts.password === null) parsed.password = ""
  else if (parts.password !== undefined) parsed.password = encodeURIComponent(parts.password)
  if (parts.host !== undefined) parsed.hostname = parts.host
  if (parts.port !== undefined) parsed.port = String(parts.port)
  if (parts.database !== undefined) parsed.pathname = `/${encodeURIComponent(parts.database)}`
  return parsed.toString()
}

/** How every connection of the store is opened: `search_path` set to the store's schema. */
const connectionConfig = (options: Options, schema: string, auth: Auth | undefined): Pg.ClientConfig => {
  const username = auth?.username ?? options.username
  const password = auth !== undefined
    ? null
    : options.password !== undefined
    ? Redacted.value(options.password)
    : undefined
  return {
    ...(options.url !== undefined
      ? {
        connectionString: withParts(Redacted.value(options.url), {
          username,
          password,
          host: options.host,
          port: options.port,
          database: options.database
        })
      }
      : {}),
    ...(options.host !== undefined ? { host: options.host } : {}),
    ...(options.port !== undefined ? { port: options.port } : {}),
    ...(options.database !== undefined ? { database: options.database } : {}),
    ...(username !== undefined ? { user: username } : {}),
    ...(auth !== undefined ? { password: auth.password } : typeof password === "string" ? { password } : {}),
    ...(options.ssl !== undefined ? { ssl: options.ssl } : {}),
    connectionTimeoutMillis: Duration.toMillis(options.connectTimeout ?? "10 seconds"),
    application_name: options.applicationName ?? "effect-eventstore",
    options: `-c search_path=${quote(schema)}`
  }
}

/**
 * The driver's client, with the password function installed after construction: pg replaces a configured password
 * with the connection string's (empty) one, and only asks a function when the server requests a password, once per
 * new connection.
 */
const clientClass = (auth: Auth | undefined): typeof Pg.Client =>
  auth === undefined ? Pg.Client : withPassword(auth.password)

const withPassword = (password: Auth["password"]): typeof Pg.Client =>
  class extends Pg.Client {
    constructor(config?: string | Pg.ClientConfig) {
      super(config)
      Object.defineProperty(this, "password", { configurable: true, enumerable: false, writable: true, value: password })
    }
  }

/** The password of a credential PostgreSQL can use. */
const passwordOf = (credential: Credentials.Credential): Effect.Effect<Redacted.Redacted<string>, Credentials.CredentialInvalid> =>
  credential._tag === "UserPassword"
    ? Effect.succeed(credential.password)
    : credential._tag === "Token"
    ? Effect.succeed(credential.token)
    : Effect.fail(
      new Credentials.CredentialInvalid({
        name: credential.name,
        provider: credential.provider,
        reason: `PostgreSQL needs a UserPassword or Token credential, not ${credential._tag}`
      })
    )

/**
 * Reads the credential once (so a missing or unusable one fails the layer at start), and answers pg's password
 * requests from `Credentials` from then on.
 */
const authFrom = (name: string): Effect.Effect<Auth, Credentials.CredentialsError, Credentials.Credentials> =>
  Effect.gen(function*() {
    const credentials = yield* Credentials.Credentials
    const first = yield* credentials.get(name)
    yield* passwordOf(first)
    const runtime = yield* Effect.runtime<never>()
    const current = credentials.get(name).pipe(Effect.flatMap(passwordOf), Effect.either)
    return {
      username: first._tag === "UserPassword" ? first.username : undefined,
      password: () =>
        Runtime.runPromise(runtime)(current).then((result) => {
          // the typed error itself (its message names the credential, never a value) becomes the connect error
          if (result._tag === "Left") throw result.left
          return Redacted.value(result.right)
        })
    }
  })

/**
 * `LISTEN` on a connection of its own (not the pool's), closed whenever this ends: when its scope closes, even in
 * the middle of connecting, and when the connection is lost (the caller opens a new one).
 */
const listenWith = (config: Pg.ClientConfig, Client: typeof Pg.Client): PgListen => (channel, wake) =>
  Effect.scoped(Effect.gen(function*() {
    const client = yield* Effect.acquireRelease(
      Effect.tryPromise({
        try: async () => {
          const client = new Client(config)
          client.on("error", () => {})
          try {
            await client.connect()
          } catch (error) {
            await client.end().catch(() => {})
            throw error
          }
          return client
        },
        catch: (cause) => new SqlError({ cause, message: "Failed to open the LISTEN connection" })
      }),
      (client) => Effect.promise(() => client.end().catch(() => {})).pipe(Effect.timeoutOption("2 seconds"))
    )
    return yield* Effect.async<never, SqlError>((resume) => {
      const lost = (cause: unknown) => resume(Effect.fail(new SqlError({ cause, message: "Lost the LISTEN connection" })))
      client.on("notification", (message) => {
        if (message.channel === channel) wake()
      })
      client.on("error", lost)
      client.on("end", () => lost("the connection ended"))
      client.query(`LISTEN ${Pg.escapeIdentifier(channel)}`).then(wake, lost)
    })
  }))

/** The pool, ended when the layer's scope closes. */
const makePool = (options: Options, config: Pg.ClientConfig, Client: typeof Pg.Client) =>
  Effect.acquireRelease(
    Effect.sync(() => {
      const pool = new Pg.Pool({
        ...config,
        max: options.maxConnections ?? 10,
        Client
      })
      // an idle connection that dies (a server restart, pg_terminate_backend) is dropped by the pool; without a
      // listener its error would crash the process
      pool.on("error", () => {})
      return pool
    }),
    (pool) => Effect.promise(() => pool.end()).pipe(Effect.interruptible, Effect.timeoutOption("5 seconds"))
  )

/** The store's statements, each prepared once per pool connection. */
const preparedOn = (pool: Pg.Pool): PgExecute => (name, text, values, arrays) =>
  Effect.async<ReadonlyArray<any>, SqlError>((resume) => {
    pool.query(
      {
        text,
        values: values as Array<unknown>,
        ...(name === "" ? {} : { name }),
        ...(arrays === true ? { rowMode: "array" as const } : {})
      },
      (error: Error | undefined, result: Pg.QueryResult | undefined) => {
        if (error) resume(Effect.fail(new SqlError({ cause: error, message: "Failed to execute statement" })))
        else resume(Effect.succeed(result?.rows ?? []))
      }
    )
  })

/**
 * A ready `EventStore` and `SnapshotStore` on PostgreSQL, plus the `PgClient` / `SqlClient` they use (for your own
 * queries and projections' read models, in the same schema). Creates the schema and the tables if missing, safely
 * from several processes at once. Fails with a `StoreError` when the server cannot be reached or refuses the
 * connection, or the options are invalid (the password is never part of an error).
 *
 * @example
 * ```ts
 * const StoreLive = Postgres.layer({
 *   url: Redacted.make("postgres://app@db.internal:5432/app"),
 *   schema: "billing"
 * })
 * // the user name and password from a credential, re-read for every new connection
 * const RotatingLive = Postgres.layer({ url: Redacted.make("postgres://db.internal:5432/app"), credentials: "db" })
 *   .pipe(Layer.provide(Credentials.layerDirectory({ path: "/run/secrets" })))
 * ```
 *
 * @since 0.1.0
 */
export const layer: {
  (options: CredentialsOptions): Layer.Layer<Services, StoreError | Credentials.CredentialsError, Credentials.Credentials>
  (options: Options): Layer.Layer<Services, StoreError>
} = (options: Options | CredentialsOptions) =>
  Layer.scopedContext(Effect.gen(function*() {
    const schema = options.schema ?? "public"
    if (!IDENTIFIER.test(schema)) {
      return yield* openError(
        new InvalidInput({
          field: "schema",
          reason: "must be letters, digits and underscores, not starting with a digit, at most 63 characters"
        })
      )
    }
    const maxConnections = options.maxConnections ?? 10
    if (!Number.isSafeInteger(maxConnections) || maxConnections < 1) {
      return yield* openError(new InvalidInput({ field: "maxConnections", reason: "must be a positive integer" }))
    }
    const auth = "credentials" in options ? yield* authFrom(options.credentials) : undefined
    const config = connectionConfig(options, schema, auth)
    const Client = clientClass(auth)
    const pool = yield* makePool(options, config, Client)
    const reactivity = yield* Layer.build(Reactivity.layer)
    const client = yield* PgClient.fromPool({ acquire: Effect.succeed(pool), applicationName: options.applicationName ?? "effect-eventstore" })
      .pipe(Effect.provide(reactivity), Effect.mapError(openError))
    withListen(withPrepared(client, preparedOn(pool)), listenWith(config, Client))
    const context = Context.make(PgClient.PgClient, client).pipe(Context.add(SqlClient.SqlClient, client))
    // reachable, and the schema there (one process at a time creates it)
    yield* client.withTransaction(Effect.zipRight(
      client.unsafe(`SELECT pg_advisory_xact_lock(${SCHEMA_LOCK})`),
      client.unsafe(`CREATE SCHEMA IF NOT EXISTS ${quote(schema)}`)
    )).pipe(
      Effect.timeoutFail({
        duration: Duration.sum(Duration.decode(options.connectTimeout ?? "10 seconds"), Duration.seconds(5)),
        onTimeout: () => new SqlError({ cause: "timed out", message: "the server did not answer in time" })
      }),
      Effect.mapError(openError)
    )
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
  })) as Layer.Layer<Services, StoreError>

/**
 * `layer`, with its options read from `Config`. `credentials` (a plain string, not a `Config`) names the credential
 * that gives the user name and password, as in `CredentialsOptions`.
 *
 * @example
 * ```ts
 * const StoreLive = Postgres.layerConfig({
 *   url: Config.redacted("DATABASE_URL"),
 *   schema: Config.string("EVENTSTORE_SCHEMA").pipe(Config.withDefault("public"))
 * })
 * ```
 *
 * @since 0.1.0
 */
export const layerConfig: {
  (config: Config.Config.Wrap<Options> & { readonly credentials: string }): Layer.Layer<
    Services,
    StoreError | ConfigError.ConfigError | Credentials.CredentialsError,
    Credentials.Credentials
  >
  (config: Config.Config.Wrap<Options>): Layer.Layer<Services, StoreError | ConfigError.ConfigError>
} = ((config: Config.Config.Wrap<Options> & { readonly credentials?: string }) => {
  const { credentials, ...rest } = config as Config.Config.Wrap<Options> & { readonly credentials?: string }
  return Layer.unwrapEffect(Effect.map(
    Config.unwrap(rest as Config.Config.Wrap<Options>),
    (options) => credentials === undefined ? layer(options) : layer({ ...options, credentials })
  ))
}) as typeof layerConfig
