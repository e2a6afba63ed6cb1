/**
 * NATS: the connection (`NatsClient`, scoped: drained when its scope closes; reconnects reported as log lines and
 * metrics) and the JetStream event bus (`layerBus`, see `effect-eventstore/Bus` for the contract). Commands and
 * queries over NATS request/reply are in `effect-eventstore/Cqrs`; a local `nats-server` for development and tests
 * (started as a child process on a free port) is `effect-eventstore/NatsServer`.
 *
 * Authentication: a token or user/password in `Options`, or a credential from `effect-eventstore/Credentials`
 * (`credentials: "<name>"`), followed through its rotations on every reconnect. With a `Health` service in context,
 * the connection reports itself as `nats`: connected → healthy, disconnected or reconnecting → degraded, closed →
 * unhealthy.
 *
 * Needs the optional peers `@nats-io/transport-node` and `@nats-io/jetstream` (3.x); only this subpath (and `Cqrs`)
 * load them.
 *
 * @since 0.1.0
 */
import type * as Operator from "./Operator.js"
import * as JetStream from "@nats-io/jetstream"
import * as Transport from "@nats-io/transport-node"
import * as Config from "effect/Config"
import type * as ConfigError from "effect/ConfigError"
import * as Context from "effect/Context"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Metric from "effect/Metric"
import * as Redacted from "effect/Redacted"
import * as Schema from "effect/Schema"
import type * as Scope from "effect/Scope"
import * as Stream from "effect/Stream"
import * as Bus from "./Bus.js"
import * as Credentials from "./Credentials.js"
import * as Health from "./Health.js"
import { iterate } from "./internal/asyncIterate.js"
import type { InvalidInput } from "./Errors.js"
import * as JetStreamBus from "./internal/jetstreamBus.js"
import * as Telemetry from "./Telemetry.js"

/**
 * The NATS connection could not be made, or a NATS operation outside the bus failed. `reason` is the client's
 * message (never a credential).
 *
 * @since 0.1.0
 */
export class NatsError extends Schema.TaggedError<NatsError>()("NatsError", {
  operation: Schema.String,
  reason: Schema.String
}) {
  override get message(): string {
    return `NATS ${this.operation} failed: ${this.reason}`
  }
}

/**
 * A connection to NATS, with its JetStream client and manager. The raw `@nats-io` objects are exposed for what the
 * library does not wrap; they belong to the layer (do not close them).
 *
 * @since 0.1.0
 */
export interface NatsClientService {
  readonly connection: Transport.NatsConnection
  readonly jetstream: JetStream.JetStreamClient
  readonly manager: JetStream.JetStreamManager
}

/** @since 0.1.0 */
export class NatsClient extends Context.Tag("effect-eventstore/NatsClient")<NatsClient, NatsClientService>() {}

/** @since 0.1.0 */
export interface Options {
  /** One URL or several (a cluster); default `nats://127.0.0.1:4222`. */
  readonly servers?: string | ReadonlyArray<string>
  /** The connection's name, as the server shows it. */
  readonly name?: string
  /** A fixed token (it wins over `user`/`password`). Handed to the client as a function, never as plain text. */
  readonly token?: Redacted.Redacted
  readonly user?: string
  readonly password?: Redacted.Redacted
  /** How long the first connect may take; default 10 seconds. */
  readonly connectTimeout?: Duration.DurationInput
  /** Reconnect attempts per server after a disconnect; default -1 (for ever). */
  readonly maxReconnectAttempts?: number
  /** The wait between reconnect attempts to one server; default 1 second. */
  readonly reconnectTimeWait?: Duration.DurationInput
  /** How long closing may drain in-flight messages before the connection is closed; default 10 seconds. */
  readonly drainTimeout?: Duration.DurationInput
}

/**
 * `Options` whose authentication comes from the `Credentials` service: `credentials` names a `Token`, a
 * `UserPassword` or a `NatsCreds` (a `.creds` body, a user JWT with its nkey seed, or an nkey seed alone). The
 * connection follows the credential's `changes`: every connect and reconnect authenticates with the latest value,
 * so after a rotation the next reconnect (a server restart, a config reload that drops the old credential) uses
 * the new one; the open connection is not dropped for it. `token`, `user` and `password` are ignored.
 *
 * @since 0.1.0
 */
export interface CredentialsOptions extends Options {
  readonly credentials: string
}

const reasonOf = (cause: unknown): string => cause instanceof Error ? cause.message : String(cause)

/**
 * Connects, and drains the connection when the scope closes (in-flight requests and acks finish, subscriptions stop;
 * after `drainTimeout` it is closed). Reconnects are automatic: each disconnect, reconnect and server error is a
 * log line, `eventstore_nats_connected` is 1 while connected, and `eventstore_nats_reconnects_total` counts reconnects.
 *
 * @since 0.1.0
 */
export const make: {
  (options: CredentialsOptions): Effect.Effect<
    NatsClientService,
    NatsError | Credentials.CredentialsError,
    Scope.Scope | Credentials.Credentials
  >
  (options?: Options): Effect.Effect<NatsClientService, NatsError, Scope.Scope>
} = ((options: Options | CredentialsOptions = {}) =>
  Effect.gen(function*() {
    const authenticator = "credentials" in options ? yield* authenticatorFrom(options.credentials) : undefined
    const servers = options.servers === undefined
      ? ["nats://127.0.0.1:4222"]
      : typeof options.servers === "string"
      ? [options.servers]
      : [...options.servers]
    const connection = yield* Effect.acquireRelease(
      Effect.tryPromise({
        try: () =>
          Transport.connect({
            servers,
            ...(options.name !== undefined ? { name: options.name } : {}),
            ...(authenticator !== undefined
              ? { authenticator }
              : staticAuthenticator(options)),
            timeout: Duration.toMillis(options.connectTimeout ?? "10 seconds"),
            maxReconnectAttempts: options.maxReconnectAttempts ?? -1,
            reconnectTimeWait: Duration.toMillis(options.reconnectTimeWait ?? "1 second")
          }),
        catch: (cause) => new NatsError({ operation: "connect", reason: reasonOf(cause) })
      }),
      (nc) =>
        // (finalizers are uninterruptible: the drain must be made interruptible for the timeout to end it)
        Effect.interruptible(Effect.promise(() => nc.drain().catch(() => undefined))).pipe(
          Effect.timeout(options.drainTimeout ?? "10 seconds"),
          Effect.catchAll(() => Effect.promise(() => nc.close().catch(() => undefined)))
        )
    )
    yield* Metric.set(Telemetry.natsConnected, 1)
    // what the health check reports: the last connection event
    let state: { readonly status: "connected" | "disconnected" | "reconnecting"; readonly server: string } = {
      status: "connected",
      server: connection.getServer()
    }
    yield* Health.register(
      "nats",
      Effect.sync(() =>
        connection.isClosed()
          ? Health.unhealthy("the connection is closed")
          : state.status === "connected"
          ? Health.healthy({ server: connection.getServer() })
          : Health.degraded(
            state.status === "reconnecting"
              ? `reconnecting (last server ${state.server})`
              : `disconnected from ${state.server}`
          )
      )
    )
    // Reports connection changes until the connection closes (the status iterator ends then).
    yield* iterate(connection.status(), (e) => e, (status) => {
        switch (status.type) {
          case "reconnecting":
            return Effect.sync(() => {
              state = { status: "reconnecting", server: state.server }
            })
          case "disconnect":
            state = { status: "disconnected", server: status.server }
            return Effect.zipRight(
              Metric.set(Telemetry.natsConnected, 0),
              Effect.logWarning(`NATS: disconnected from ${status.server}`)
            )
          case "reconnect":
            state = { status: "connected", server: status.server }
            return Effect.zipRight(
              Effect.zipRight(Metric.set(Telemetry.natsConnected, 1), Metric.increment(Telemetry.natsReconnects)),
              Effect.logInfo(`NATS: reconnected to ${status.server}`)
            )
          case "error":
            return Effect.logWarning(`NATS: server error: ${status.error.message}`)
          case "ldm":
            return Effect.logInfo(`NATS: ${status.server} entered lame duck mode`)
          case "close":
            return Metric.set(Telemetry.natsConnected, 0)
          default:
            return Effect.void
        }
      }).pipe(Effect.ignore, Effect.forkScoped)
    return {
      connection,
      jetstream: JetStream.jetstream(connection),
      manager: yield* Effect.tryPromise({
        try: () => JetStream.jetstreamManager(connection, { checkAPI: false }),
        catch: (cause) => new NatsError({ operation: "jetstream", reason: reasonOf(cause) })
      })
    }
  })) as {
    (options: CredentialsOptions): Effect.Effect<
      NatsClientService,
      NatsError | Credentials.CredentialsError,
      Scope.Scope | Credentials.Credentials
    >
    (options?: Options): Effect.Effect<NatsClientService, NatsError, Scope.Scope>
  }

const encoder = new TextEncoder()

/**
 * A fixed token or user/password, given to the client as an authenticator (a function) rather than as options: the
 * client keeps its options on the connection object, where inspecting it would show them.
 */
const staticAuthenticator = (options: Options): { readonly authenticator?: Transport.Authenticator } => {
  const { password, token, user } = options
  if (token !== undefined) return { authenticator: Transport.tokenAuthenticator(() => Redacted.value(token)) }
  if (user !== undefined || password !== undefined) {
    return {
      authenticator: Transport.usernamePasswordAuthenticator(
        user ?? "",
        password !== undefined ? () => Redacted.value(password) : undefined
      )
    }
  }
  return {}
}

/**
 * An authenticator fed by the credential's `changes`: the client calls it on every connect and reconnect, and it
 * answers with the latest value. Reads the credential first, so a missing or unusable one fails the connect.
 */
const authenticatorFrom = (
  name: string
): Effect.Effect<Transport.Authenticator, Credentials.CredentialsError, Credentials.Credentials | Scope.Scope> =>
  Effect.gen(function*() {
    const credentials = yield* Credentials.Credentials
    type Usable = Exclude<Credentials.Credential, { readonly _tag: "Tls" }>
    const usable = (credential: Credentials.Credential): Effect.Effect<Usable, Credentials.CredentialInvalid> =>
      credential._tag === "Tls"
        ? Effect.fail(
          new Credentials.CredentialInvalid({
            name,
            provider: credential.provider,
            reason: "NATS authenticates with a Token, UserPassword or NatsCreds credential, not Tls"
          })
        )
        : Effect.succeed(credential)
    let latest = yield* Effect.flatMap(credentials.get(name), usable)
    yield* credentials.changes(name).pipe(
      Stream.runForEach((credential) =>
        usable(credential).pipe(
          Effect.tap((ok) =>
            Effect.sync(() => {
              latest = ok
            })
          ),
          Effect.catchAll((error) => Effect.logWarning(`NATS: ignoring the rotated credential: ${error.message}`))
        )
      ),
      Effect.catchAll((error) => Effect.logWarning(`NATS: following credential "${name}" stopped: ${error.message}`)),
      Effect.interruptible,
      Effect.forkScoped
    )
    return (nonce?: string): Transport.Auth => {
      const credential = latest
      switch (credential._tag) {
        case "Token":
          return Transport.tokenAuthenticator(Redacted.value(credential.token))(nonce)
        case "UserPassword":
          return Transport.usernamePasswordAuthenticator(credential.username, Redacted.value(credential.password))(nonce)
        case "NatsCreds":
          if (credential.creds !== undefined) {
            return Transport.credsAuthenticator(encoder.encode(Redacted.value(credential.creds)))(nonce)
          }
          if (credential.jwt !== undefined) {
            return Transport.jwtAuthenticator(
              Redacted.value(credential.jwt),
              credential.seed !== undefined ? encoder.encode(Redacted.value(credential.seed)) : undefined
            )(nonce)
          }
          return Transport.nkeyAuthenticator(encoder.encode(Redacted.value(credential.seed!)))(nonce)
      }
    }
  })

/**
 * The connection as a layer.
 *
 * @example
 * ```ts
 * const Live = Nats.layerBus({ stream: "BANK" }).pipe(Layer.provide(Nats.layer({ servers: "nats://127.0.0.1:4222" })))
 * ```
 *
 * @since 0.1.0
 */
export const layer: {
  (options: CredentialsOptions): Layer.Layer<NatsClient, NatsError | Credentials.CredentialsError, Credentials.Credentials>
  (options?: Options): Layer.Layer<NatsClient, NatsError>
} = ((options: Options | CredentialsOptions = {}) =>
  Layer.scoped(NatsClient, make(options as CredentialsOptions))) as {
    (options: CredentialsOptions): Layer.Layer<NatsClient, NatsError | Credentials.CredentialsError, Credentials.Credentials>
    (options?: Options): Layer.Layer<NatsClient, NatsError>
  }

/**
 * `layer` from configuration, e.g. `Nats.layerConfig({ servers: Config.string("NATS_URL") })`. `credentials` (a
 * plain string, not a `Config`) names the credential to authenticate with, as in `CredentialsOptions`.
 *
 * @since 0.1.0
 */
export const layerConfig: {
  (config: Config.Config.Wrap<Options> & { readonly credentials: string }): Layer.Layer<
    NatsClient,
    NatsError | ConfigError.ConfigError | Credentials.CredentialsError,
    Credentials.Credentials
  >
  (config: Config.Config.Wrap<Options>): Layer.Layer<NatsClient, NatsError | ConfigError.ConfigError>
} = ((config: Config.Config.Wrap<Options> & { readonly credentials?: string }) => {
  const { credentials, ...rest } = config as Config.Config.Wrap<Options> & { readonly credentials?: string }
  return Layer.unwrapEffect(Effect.map(
    Config.unwrap(rest as Config.Config.Wrap<Options>),
    (options) => credentials === undefined ? layer(options) : layer({ ...options, credentials })
  ))
}) as {
  (config: Config.Config.Wrap<Options> & { readonly credentials: string }): Layer.Layer<
    NatsClient,
    NatsError | ConfigError.ConfigError | Credentials.CredentialsError,
    Credentials.Credentials
  >
  (config: Config.Config.Wrap<Options>): Layer.Layer<NatsClient, NatsError | ConfigError.ConfigError>
}

// --- the JetStream event bus ---------------------------------------------------------------------------------------

/** @since 0.1.0 */
export interface BusOptions {
  /** The JetStream stream of the events; default `EVENTS`. Its dead letters go to `<stream>_DLQ`. */
  readonly stream?: string
  /**
   * The subject prefix: events go to `<prefix>.<tenant>.<streamType>.<eventType>`, dead letters to
   * `<prefix>.dlq.<consumer>`; default `events`. Give the command/query transport (`Cqrs`) another prefix.
   */
  readonly prefix?: string
  /** How long the bus remembers an event id to drop a republished event; default 2 minutes. */
  readonly duplicateWindow?: Duration.DurationInput
  /** Replicas of the streams in a JetStream cluster; default 1. */
  readonly replicas?: number
  /** How long the bus keeps events; default for ever (the stream's limits retention). */
  readonly maxAge?: Duration.DurationInput
  /** How long a publish waits for its acknowledgement; default 5 seconds. */
  readonly publishTimeout?: Duration.DurationInput
  /**
   * How long a consumer's pull request lives; default 5 seconds. After a cluster failover a consumer pulls again
   * within about this long.
   */
  readonly pullExpiry?: Duration.DurationInput
}

/**
 * The durable consumers of a JetStream stream (default `EVENTS`, `layerBus`'s default), as the broker reports them:
 * for `Operator.layer({ busConsumers })`, so the dashboard's overview shows them.
 *
 * @since 0.1.0
 */
export const consumers = (
  stream = "EVENTS"
): Effect.Effect<ReadonlyArray<Operator.BusConsumer>, NatsError, NatsClient> =>
  Effect.flatMap(NatsClient, (client) =>
    Effect.tryPromise({
      try: async () => {
        const out: Array<Operator.BusConsumer> = []
        for await (const info of client.manager.consumers.list(stream)) {
          const last = info.delivered.last_active
          out.push({
            name: info.name,
            stream: info.stream_name,
            pending: info.num_pending,
            ackPending: info.num_ack_pending,
            redelivered: info.num_redelivered,
            ...(last !== undefined && last !== null ? { lastActive: new Date(last).toISOString() } : {})
          })
        }
        return out
      },
      catch: (cause) => new NatsError({ operation: "consumers", reason: reasonOf(cause) })
    }))

/**
 * The `EventBus` on JetStream (contract and wire format: `effect-eventstore/Bus`). Creates the stream and its
 * dead-letter stream when they do not exist (and updates their settings when they do). Fails with `BusError` when
 * JetStream is not reachable and `InvalidInput` for a bad stream name or prefix.
 *
 * @example
 * ```ts
 * const BusLive = Nats.layerBus({ stream: "BANK", prefix: "bank" }).pipe(Layer.provide(Nats.layer()))
 * ```
 *
 * @since 0.1.0
 */
export const makeBus = (options: BusOptions = {}): Effect.Effect<Bus.EventBusService, Bus.BusError | InvalidInput, NatsClient> =>
  Effect.flatMap(NatsClient, (client) => JetStreamBus.make(client, options))

/** @since 0.1.0 */
export const layerBus = (options: BusOptions = {}): Layer.Layer<Bus.EventBus, Bus.BusError | InvalidInput, NatsClient> =>
  Layer.effect(Bus.EventBus, makeBus(options))
