/**
 * NATS: the connection (`NatsClient`, scoped: drained when its scope closes; reconnects reported as log lines and
 * metrics) and the JetStream event bus (`layerBus`, see `effect-eventstore/Bus` for the contract). Commands and
 * queries over NATS request/reply are in `effect-eventstore/Cqrs`; a local `nats-server` for development and tests
 * (started as a child process on a free port) is `effect-eventstore/NatsServer`.
 *
 * Needs the optional peers `@nats-io/transport-node` and `@nats-io/jetstream` (3.x); only this subpath (and `Cqrs`)
 * load them.
 *
 * @since 0.1.0
 */
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
import * as Bus from "./Bus.js"
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

const reasonOf = (cause: unknown): string => cause instanceof Error ? cause.message : String(cause)

/**
 * Connects, and drains the connection when the scope closes (in-flight requests and acks finish, subscriptions stop;
 * after `drainTimeout` it is closed). Reconnects are automatic: each disconnect, reconnect and server error is a
 * log line, `eventstore_nats_connected` is 1 while connected, and `eventstore_nats_reconnects_total` counts reconnects.
 *
 * @since 0.1.0
 */
export const make = (options: Options = {}): Effect.Effect<NatsClientService, NatsError, Scope.Scope> =>
  Effect.gen(function*() {
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
            ...(options.token !== undefined ? { token: Redacted.value(options.token) } : {}),
            ...(options.user !== undefined ? { user: options.user } : {}),
            ...(options.password !== undefined ? { pass: Redacted.value(options.password) } : {}),
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
    // Reports connection changes until the connection closes (the status iterator ends then).
    yield* iterate(connection.status(), (e) => e, (status) => {
        switch (status.type) {
          case "disconnect":
            return Effect.zipRight(
              Metric.set(Telemetry.natsConnected, 0),
              Effect.logWarning(`NATS: disconnected from ${status.server}`)
            )
          case "reconnect":
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
export const layer = (options: Options = {}): Layer.Layer<NatsClient, NatsError> =>
  Layer.scoped(NatsClient, make(options))

/**
 * `layer` from configuration, e.g. `Nats.layerConfig({ servers: Config.string("NATS_URL") })`.
 *
 * @since 0.1.0
 */
export const layerConfig = (config: Config.Config.Wrap<Options>): Layer.Layer<NatsClient, NatsError | ConfigError.ConfigError> =>
  Layer.unwrapEffect(Effect.map(Config.unwrap(config), layer))

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
