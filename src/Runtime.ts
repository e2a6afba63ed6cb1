/**
 * Running an application as a service: `run` builds the application's layer (with a startup timeout), serves its
 * health over HTTP when a port is given, runs until SIGINT/SIGTERM (or until its `main` Effect completes), then stops
 * it within a shutdown timeout and exits with a code that says how it went. It owns the order of a stop, which
 * `NodeRuntime.runMain` alone does not give: first refuse new work and wait for the work in flight (`track`), then
 * interrupt `main`, then close the layers (in reverse order of their construction: projections stop after their
 * batch, the store lets queued appends commit), and only then close the health endpoint. A stop that does not
 * finish in time exits non-zero instead of hanging (`runMain`'s default teardown would exit 0 after an interrupt).
 *
 * The library's layers register their health checks in the `Health` service this module provides (see `Health`):
 * the event store (`eventstore`: reachable and writable), projections (`projections/<name>`: state and lag) and the
 * NATS connection. For a local `nats-server` in development and tests, compose `NatsServer.layer` into the layer.
 *
 * Node only: needs `@effect/platform` and `@effect/platform-node` (optional peers of the package).
 *
 * @example
 * ```ts
 * import * as Runtime from "effect-eventstore/Runtime"
 *
 * // runs until SIGTERM; GET :9000/health/ready answers 200 once every layer is built
 * Runtime.run(AppLive, { health: { port: 9000 }, shutdownTimeout: "20 seconds" })
 * ```
 *
 * @since 0.1.0
 */
import * as HttpRouter from "@effect/platform/HttpRouter"
import * as HttpServerResponse from "@effect/platform/HttpServerResponse"
import * as NodeHttpServer from "@effect/platform-node/NodeHttpServer"
import * as NodeRuntime from "@effect/platform-node/NodeRuntime"
import * as Cause from "effect/Cause"
import * as Clock from "effect/Clock"
import * as Config from "effect/Config"
import * as Context from "effect/Context"
import * as Deferred from "effect/Deferred"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as ExecutionStrategy from "effect/ExecutionStrategy"
import * as Exit from "effect/Exit"
import * as Fiber from "effect/Fiber"
import * as FiberRef from "effect/FiberRef"
import * as Layer from "effect/Layer"
import * as Option from "effect/Option"
import * as EffectRuntime from "effect/Runtime"
import * as Schema from "effect/Schema"
import * as Scope from "effect/Scope"
import * as Http from "node:http"
import * as Health from "./Health.js"

// --- the lifecycle: phases and work in flight --------------------------------------------------------------------

/**
 * - `starting`: the layers are being built.
 * - `ready`: built; `main` runs.
 * - `stopping`: a stop began: new work is refused, work in flight finishes, the layers close.
 * - `stopped`: everything is closed (or the stop was given up: see `Outcome`).
 *
 * @since 0.1.0
 */
export type Phase = "starting" | "ready" | "stopping" | "stopped"

/**
 * Work refused by `track` because the service is stopping. An HTTP handler answers it with 503.
 *
 * @since 0.1.0
 */
export class ShuttingDown extends Schema.TaggedError<ShuttingDown>()("ShuttingDown", {}) {
  override get message(): string {
    return "the service is shutting down"
  }
}

/**
 * Why a stop was forced (the `cause` of a `forced` outcome): what was still open when `shutdownTimeout` ran out —
 * work in flight, `main`, or the layers.
 *
 * @since 0.1.0
 */
export class ShutdownTimeout extends Schema.TaggedError<ShutdownTimeout>()("ShutdownTimeout", {
  /** What stayed open: `N still in flight`, `main did not stop` or `the layers did not close`. */
  open: Schema.String,
  timeoutMillis: Schema.Number
}) {
  override get message(): string {
    return `the shutdown timeout (${this.timeoutMillis} ms) ran out: ${this.open}`
  }
}

/** @since 0.1.0 */
export interface LifecycleService {
  readonly phase: Effect.Effect<Phase>
  /**
   * Runs `effect` as work in flight: a stop waits for it to finish (up to the shutdown timeout) before it interrupts
   * `main` and closes the layers. Once a stop has begun, it fails with `ShuttingDown` without running `effect`,
   * except inside tracked work (a `track` nested in the effect of another, or in a fiber it forked): that runs as
   * part of the work already in flight. `effect` stays as interruptible as it was: only the stop waits for it, it does
   * not shield it from its caller.
   */
  readonly track: <A, E, R>(effect: Effect.Effect<A, E, R>) => Effect.Effect<A, E | ShuttingDown, R>
  /** Completes when a stop begins: a loop that produces work ends on it. */
  readonly stopping: Effect.Effect<void>
  /** How many `track`ed effects are running. */
  readonly inFlight: Effect.Effect<number>
}

/**
 * What the running service offers to its layers and `main` (provided by `run` and `start`).
 *
 * @since 0.1.0
 */
export class Lifecycle extends Context.Tag("effect-eventstore/Runtime/Lifecycle")<Lifecycle, LifecycleService>() {}

interface Gate extends LifecycleService {
  /** Refuses new work from now on and completes `stopping`. */
  readonly close: Effect.Effect<void>
  /** Completes when nothing is in flight (after `close`, for good). */
  readonly drained: Effect.Effect<void>
  readonly setPhase: (phase: Phase) => void
  readonly currentPhase: () => Phase
}

const makeGate = Effect.gen(function*() {
  const stopping = yield* Deferred.make<void>()
  // set inside tracked work (and the fibers it forks): a nested `track` is part of the work already counted
  const inside = FiberRef.unsafeMake(false)
  let phase: Phase = "starting"
  let closed = false
  let inFlight = 0
  const idle = new Set<() => void>()
  const release = () => {
    inFlight--
    if (inFlight === 0) for (const wake of [...idle]) wake()
  }
  const gate: Gate = {
    phase: Effect.sync(() => phase),
    currentPhase: () => phase,
    setPhase: (next) => {
      phase = next
    },
    inFlight: Effect.sync(() => inFlight),
    stopping: Deferred.await(stopping),
    track: <A, E, R>(effect: Effect.Effect<A, E, R>) =>
      Effect.flatMap(FiberRef.get(inside), (nested): Effect.Effect<A, E | ShuttingDown, R> =>
        nested ? effect : Effect.uninterruptibleMask((restore) =>
          Effect.suspend((): Effect.Effect<A, E | ShuttingDown, R> => {
            if (closed) return Effect.fail(new ShuttingDown())
            inFlight++
            return Effect.ensuring(Effect.locally(restore(effect), inside, true), Effect.sync(release))
          })
        )),
    close: Effect.suspend(() => {
      closed = true
      return Deferred.succeed(stopping, undefined)
    }),
    drained: Effect.async<void>((resume) => {
      if (inFlight === 0) return resume(Effect.void)
      const wake = () => {
        idle.delete(wake)
        resume(Effect.void)
      }
      idle.add(wake)
      return Effect.sync(() => idle.delete(wake))
    })
  }
  return gate
})

/**
 * Runs `effect` as work in flight of the running service (see `LifecycleService.track`); outside `run` and `start`
 * (no `Lifecycle` in context) it just runs `effect`.
 *
 * @example
 * ```ts
 * // in a request handler: a stop waits for the command, and refuses the ones that come after it began
 * Runtime.track(Account.handle(id, command))
 * ```
 *
 * @since 0.1.0
 */
export const track = <A, E, R>(effect: Effect.Effect<A, E, R>): Effect.Effect<A, E | ShuttingDown, R> =>
  Effect.flatMap(
    Effect.serviceOption(Lifecycle),
    Option.match({ onNone: () => effect, onSome: (lifecycle) => lifecycle.track(effect) })
  )

/**
 * The aggregate health of the components registered in `Health`.
 *
 * @since 0.1.0
 */
export const health: Effect.Effect<Health.Report, never, Health.Health> = Health.check

// --- options and outcome -----------------------------------------------------------------------------------------

/** @since 0.1.0 */
export interface HealthServerOptions extends Health.Options {
  /**
   * The port of the health endpoint (`0`: any free one). Without it, the `HEALTH_PORT` configuration is read;
   * without that either, no endpoint is served.
   */
  readonly port?: number
  /** The interface to listen on; default `HEALTH_HOST`, else all interfaces (what a Kubernetes probe needs). */
  readonly host?: string
}

/** @since 0.1.0 */
export interface Options<A = void, E = never, R = never> {
  /** Names the service in its log lines; default `"service"`. */
  readonly name?: string
  /** How long building the layers may take; default 30 seconds. Exceeded: exit code 1. */
  readonly startupTimeout?: Duration.DurationInput
  /**
   * How long a stop may take, from its start to the last layer closed (work in flight, then `main`, then the
   * layers); default 20 seconds (less than Kubernetes' default grace of 30 s). Exceeded: exit code 2.
   */
  readonly shutdownTimeout?: Duration.DurationInput
  /** The health service's check timeout, and the HTTP endpoint (see `HealthServerOptions`). */
  readonly health?: HealthServerOptions
  /**
   * What the service does once it is ready, with the layer's services: a stop interrupts it (after the work in
   * flight). When it completes, the service stops: exit code 0 when it succeeded, 1 when it failed. Without it, the
   * service runs until a signal (or `Running.stop`).
   */
  readonly main?: Effect.Effect<A, E, R>
}

/**
 * How a run ended, and the process exit code that goes with it:
 * - `stopped` (0): a signal or `stop`, and everything closed in time.
 * - `completed` (0): `main` succeeded and everything closed in time.
 * - `failed` (1): `main` failed or died.
 * - `start-failed` (1): building the layers (or the health endpoint) failed.
 * - `start-timeout` (1): building the layers took longer than `startupTimeout`.
 * - `forced` (2): the stop took longer than `shutdownTimeout` (what was still open was left to the process exit).
 *
 * A second SIGINT/SIGTERM during a stop exits at once with 130/143 (128 + the signal's number).
 *
 * @since 0.1.0
 */
export interface Outcome {
  readonly reason: "stopped" | "completed" | "failed" | "start-failed" | "start-timeout" | "forced"
  readonly exitCode: number
  /** What failed (`failed`, `start-failed`), or what stayed open (`forced`: a `ShutdownTimeout` failure). */
  readonly cause?: Cause.Cause<unknown>
}

/** @since 0.1.0 */
export const exitCodes = {
  ok: 0,
  failure: 1,
  forced: 2
} as const

/**
 * What the endpoint and `Running.health` answer: the aggregate report, with the service's phase and whether it is
 * ready (`ready` phase and an aggregate of `healthy` or `degraded`).
 *
 * @since 0.1.0
 */
export interface Readiness extends Health.Report {
  readonly phase: Phase
  readonly ready: boolean
}

/**
 * A service started by `start`.
 *
 * @since 0.1.0
 */
export interface Running {
  readonly phase: Effect.Effect<Phase>
  readonly health: Effect.Effect<Readiness>
  /** The health endpoint's port once it listens; `None` when none is served (or it failed to start). */
  readonly healthPort: Effect.Effect<Option.Option<number>>
  /** Begins the stop (once; later calls join it) and waits for the outcome. */
  readonly stop: Effect.Effect<Outcome>
  /** Waits for the outcome: after a stop, a failed start, or `main`'s end. */
  readonly await: Effect.Effect<Outcome>
}

// --- the health endpoint -----------------------------------------------------------------------------------------

const readinessOf = (gate: Gate, service: Health.HealthService): Effect.Effect<Readiness> =>
  Effect.map(service.check, (report) => {
    const phase = gate.currentPhase()
    return { ...report, phase, ready: phase === "ready" && report.status !== "unhealthy" }
  })

const healthApp = (gate: Gate, service: Health.HealthService) =>
  HttpRouter.empty.pipe(
    HttpRouter.get(
      "/health/live",
      Effect.sync(() => {
        const phase = gate.currentPhase()
        const alive = phase === "starting" || phase === "ready"
        return HttpServerResponse.unsafeJson({ status: alive ? "alive" : "stopping", phase }, {
          status: alive ? 200 : 503
        })
      })
    ),
    HttpRouter.get(
      "/health/ready",
      Effect.map(readinessOf(gate, service), (readiness) =>
        HttpServerResponse.unsafeJson(readiness, { status: readiness.ready ? 200 : 503 }))
    )
  )

// `Config.port` refuses 0: a port here is 0 (any free one) to 65535
const healthPortConfig = Config.option(
  Config.integer("HEALTH_PORT").pipe(
    Config.validate({ message: "a port from 0 (any free one) to 65535", validation: (p) => p >= 0 && p <= 65535 })
  )
)
const healthHostConfig = Config.option(Config.string("HEALTH_HOST"))

/** Serves the endpoint in `scope`; its port, or `None` when no port is configured. */
const serveHealth = (gate: Gate, service: Health.HealthService, options: HealthServerOptions | undefined) =>
  Effect.gen(function*() {
    const port = options?.port !== undefined ? Option.some(options.port) : yield* healthPortConfig
    if (Option.isNone(port)) return Option.none<number>()
    const host = options?.host !== undefined ? Option.some(options.host) : yield* healthHostConfig
    const server = yield* NodeHttpServer.make(
      () => Http.createServer(),
      Option.isSome(host) ? { port: port.value, host: host.value } : { port: port.value }
    )
    yield* server.serve(healthApp(gate, service))
    return Option.some(server.address._tag === "TcpAddress" ? server.address.port : port.value)
  })

// --- the run -----------------------------------------------------------------------------------------------------

const ms = (d: Duration.DurationInput) => Duration.format(Duration.decode(d))

/**
 * Closes `scope` within what is left until `deadline`; `None` when it did not finish in time. The close runs in a
 * fiber of its own, detached: a finalizer that hangs cannot hold the stop (it is left to the process exit).
 */
const closeWithin = (scope: Scope.CloseableScope, exit: Exit.Exit<unknown, unknown>, deadline: number) =>
  Effect.gen(function*() {
    // forkDaemon, on purpose: this is the close of the service's own root, which no other scope can own, and a
    // fiber forked in a scope would be awaited by that scope's close (hanging with the finalizer it waits for)
    const closing = yield* Effect.forkDaemon(Scope.close(scope, exit))
    const left = deadline - (yield* Clock.currentTimeMillis)
    return yield* Effect.timeout(Fiber.await(closing), Duration.millis(Math.max(0, left))).pipe(
      Effect.map(Option.some),
      Effect.catchTag("TimeoutException", () => Effect.succeed(Option.none<Exit.Exit<void>>()))
    )
  })

/** Waits for `effect` until `deadline`; `false` when time ran out. */
const within = (effect: Effect.Effect<void>, deadline: number) =>
  Effect.flatMap(Clock.currentTimeMillis, (now) =>
    Effect.timeoutTo(effect, {
      duration: Duration.millis(Math.max(0, deadline - now)),
      onTimeout: () => false,
      onSuccess: () => true
    }))

/**
 * Starts the service in the background of the current scope and returns at once: the layers are built (with the
 * `Health` and `Lifecycle` services provided to them), the health endpoint served, `main` run, as `run` does, but
 * without signals and without exiting the process — for tests, or for embedding. `stop` stops it as a signal would;
 * so does closing the scope (it waits for the stop, which `shutdownTimeout` bounds).
 *
 * @since 0.1.0
 */
export const start = <ROut, E, A = void, E2 = never>(
  layer: Layer.Layer<ROut, E, Health.Health | Lifecycle>,
  options: Options<A, E2, NoInfer<ROut> | Health.Health | Lifecycle> = {}
): Effect.Effect<Running, never, Scope.Scope> => startWith(layer, options, () => {})

/** `start`, telling `onOutcome` the outcome as soon as it is known (`run` exits with it, however its fiber ended). */
const startWith = <ROut, E, A = void, E2 = never>(
  layer: Layer.Layer<ROut, E, Health.Health | Lifecycle>,
  options: Options<A, E2, NoInfer<ROut> | Health.Health | Lifecycle>,
  onOutcome: (outcome: Outcome) => void
): Effect.Effect<Running, never, Scope.Scope> =>
  Effect.gen(function*() {
    const name = options.name ?? "service"
    const startupTimeout = options.startupTimeout ?? "30 seconds"
    const shutdownTimeout = Duration.toMillis(Duration.decode(options.shutdownTimeout ?? "20 seconds"))
    const gate = yield* makeGate
    const healthService = yield* Health.make(options.health ?? {})
    const stopRequested = yield* Deferred.make<void>()
    const outcome = yield* Deferred.make<Outcome>()
    const port = yield* Deferred.make<Option.Option<number>>()
    const log = (message: string) => Effect.annotateLogs(Effect.logInfo(message), "service", name)
    const logError = (message: string, cause?: Cause.Cause<unknown>) =>
      Effect.annotateLogs(cause === undefined ? Effect.logError(message) : Effect.logError(message, cause), "service", name)

    const lifecycle = Effect.gen(function*() {
      yield* log(`${name}: starting`)
      // the endpoint lives in a scope of its own, open from before the layers are built until after they closed
      const endpoint = yield* Scope.make()
      const appScope = yield* Scope.make(ExecutionStrategy.sequential)
      const served = yield* Effect.exit(Scope.extend(serveHealth(gate, healthService, options.health), endpoint))
      yield* Deferred.succeed(port, Exit.isSuccess(served) ? served.value : Option.none())

      /** The endpoint closes last, briefly (it only answers probes): up to 1 s, and not past `deadline` if given. */
      const finish = (result: Outcome, deadline?: number) =>
        Effect.gen(function*() {
          gate.setPhase("stopped")
          const wait = deadline === undefined ? 1000 : Math.min(1000, deadline - (yield* Clock.currentTimeMillis))
          const closing = yield* Effect.forkDaemon(Scope.close(endpoint, Exit.void))
          if (wait > 0) yield* Effect.ignore(Effect.timeout(Fiber.await(closing), Duration.millis(wait)))
          return result
        })

      /** The stop: refuse new work, wait for work in flight, interrupt main, close the layers; all by `deadline`. */
      const stop = (mainFiber: Fiber.RuntimeFiber<unknown, unknown> | undefined, result: Omit<Outcome, "exitCode">) =>
        Effect.gen(function*() {
          gate.setPhase("stopping")
          yield* gate.close
          const deadline = (yield* Clock.currentTimeMillis) + shutdownTimeout
          const inFlight = yield* gate.inFlight
          yield* log(`${name}: stopping${inFlight > 0 ? ` (${inFlight} in flight)` : ""}`)
          let forced: string | undefined
          if (!(yield* within(gate.drained, deadline))) forced = `${yield* gate.inFlight} still in flight`
          if (forced === undefined && mainFiber !== undefined) {
            // interrupted in the background: main's own finalizers count against the deadline
            if (!(yield* within(Effect.asVoid(Fiber.interrupt(mainFiber)).pipe(Effect.disconnect), deadline))) {
              forced = "main did not stop"
            }
          }
          let closeExit: Exit.Exit<void> | undefined
          if (forced === undefined) {
            const closed = yield* closeWithin(appScope, Exit.void, deadline)
            if (Option.isNone(closed)) forced = "the layers did not close"
            else closeExit = closed.value
          }
          if (forced !== undefined) {
            yield* logError(`${name}: forced stop: the shutdown timeout (${ms(shutdownTimeout)}) ran out: ${forced}`)
            return yield* finish({
              reason: "forced",
              exitCode: exitCodes.forced,
              cause: Cause.fail(new ShutdownTimeout({ open: forced, timeoutMillis: shutdownTimeout }))
            }, deadline)
          }
          if (closeExit !== undefined && Exit.isFailure(closeExit)) {
            yield* logError(`${name}: stopped; closing the layers failed`, closeExit.cause)
            return yield* finish({ reason: "failed", exitCode: exitCodes.failure, cause: closeExit.cause }, deadline)
          }
          yield* log(`${name}: stopped`)
          return yield* finish({ ...result, exitCode: result.reason === "failed" ? exitCodes.failure : exitCodes.ok }, deadline)
        })

      if (Exit.isFailure(served)) {
        yield* logError(`${name}: start failed: the health endpoint`, served.cause)
        return yield* finish({ reason: "start-failed", exitCode: exitCodes.failure, cause: served.cause })
      }

      // build, under the startup timeout, unless a stop comes first (the build is interrupted in the background)
      const base = Context.make(Health.Health, healthService).pipe(Context.add(Lifecycle, gate))
      const build = Layer.buildWithScope(Layer.provideMerge(layer, Layer.succeedContext(base)), appScope).pipe(
        Effect.disconnect,
        Effect.timeoutTo({
          duration: startupTimeout,
          onTimeout: () => "timeout" as const,
          onSuccess: (context) => context
        }),
        Effect.exit,
        (built) => Effect.raceFirst(built, Effect.as(Deferred.await(stopRequested), "stop" as const))
      )
      const built = yield* build
      if (built === "stop") return yield* stop(undefined, { reason: "stopped" })
      if (Exit.isFailure(built) || built.value === "timeout") {
        const timedOut = Exit.isSuccess(built)
        if (timedOut) yield* logError(`${name}: start failed: not ready after the startup timeout (${ms(startupTimeout)})`)
        else yield* logError(`${name}: start failed`, built.cause)
        gate.setPhase("stopping")
        yield* gate.close
        const closed = yield* closeWithin(appScope, Exit.void, (yield* Clock.currentTimeMillis) + shutdownTimeout)
        if (Option.isNone(closed)) {
          // exit code 1 all the same (the start failed): not worded as a forced stop, which is exit code 2
          yield* logError(`${name}: start failed; closing it ran past the shutdown timeout (${ms(shutdownTimeout)})`)
        }
        return yield* finish(
          timedOut
            ? { reason: "start-timeout", exitCode: exitCodes.failure }
            : { reason: "start-failed", exitCode: exitCodes.failure, cause: built.cause }
        )
      }
      const context = built.value

      gate.setPhase("ready")
      const listening = Exit.isSuccess(served) && Option.isSome(served.value) ? `, health on port ${served.value.value}` : ""
      yield* log(`${name}: ready${listening}`)
      const main = options.main === undefined ? Effect.never : Effect.provide(options.main, context)
      // a daemon, like the closes in `closeWithin`: the lifecycle's fiber would otherwise wait for it when it ends,
      // and a main that does not stop in time must not hold the forced stop (the stop interrupts it explicitly)
      const mainFiber = yield* Effect.forkDaemon(main)
      const ended = yield* Effect.raceFirst(
        Effect.map(Fiber.await(mainFiber), (exit) => ({ _tag: "main" as const, exit })),
        Effect.as(Deferred.await(stopRequested), { _tag: "stop" as const })
      )
      if (ended._tag === "stop") return yield* stop(mainFiber, { reason: "stopped" })
      if (Exit.isSuccess(ended.exit)) return yield* stop(undefined, { reason: "completed" })
      yield* logError(`${name}: main failed`, ended.exit.cause)
      return yield* stop(undefined, { reason: "failed", cause: ended.exit.cause })
    })

    // the lifecycle is not interrupted by a stop: a stop is a request it answers in its own order
    yield* Effect.forkScoped(Effect.flatMap(Effect.exit(lifecycle), (exit) => {
      const result: Outcome = Exit.isSuccess(exit)
        ? exit.value
        : { reason: "failed", exitCode: exitCodes.failure, cause: exit.cause }
      onOutcome(result)
      return Deferred.succeed(outcome, result)
    }))

    // closing the scope stops the service as `stop` does (a no-op once it has stopped)
    yield* Effect.addFinalizer(() => Effect.zipRight(Deferred.succeed(stopRequested, undefined), Deferred.await(outcome)))

    const running: Running = {
      phase: gate.phase,
      health: readinessOf(gate, healthService),
      healthPort: Deferred.await(port),
      stop: Effect.zipRight(Deferred.succeed(stopRequested, undefined), Deferred.await(outcome)),
      await: Deferred.await(outcome)
    }
    return running
  })

const signals = { SIGINT: 2, SIGTERM: 15 } as const

/**
 * Runs `layer` as the process's service, on `NodeRuntime.runMain`: builds it (with `Health` and `Lifecycle`
 * provided to it) under `startupTimeout`, serves the health endpoint when a port is configured, runs `main` (or
 * until SIGINT/SIGTERM), stops within `shutdownTimeout` (see `start`), and exits the process with the outcome's exit
 * code (see `Outcome`). Logs a line when it starts, is ready, stops, has stopped, or was forced to stop.
 *
 * @example
 * ```ts
 * const AppLive = Projection.layer([Balances]).pipe(
 *   Layer.provideMerge(SqlProjection.layer),
 *   Layer.provideMerge(Sqlite.layer({ filename: "./data/bank.db" }))
 * )
 * Runtime.run(AppLive, { name: "bank", health: { port: 9000 } })
 * ```
 *
 * @since 0.1.0
 */
export const run = <ROut, E, A = void, E2 = never>(
  layer: Layer.Layer<ROut, E, Health.Health | Lifecycle>,
  options: Options<A, E2, NoInfer<ROut> | Health.Health | Lifecycle> = {}
): void => {
  let outcome: Outcome | undefined = undefined
  let received = 0
  let runtime: EffectRuntime.Runtime<never> | undefined = undefined
  // listening from before `runMain` does (it interrupts the program at the first signal, then stops listening): the
  // second signal is ours, however early the first came
  const listeners: Array<readonly [NodeJS.Signals, () => void]> = []
  for (const [signal, number] of Object.entries(signals) as Array<[NodeJS.Signals, number]>) {
    const listener = () => {
      received++
      if (received < 2) return
      const message = `${options.name ?? "service"}: forced stop: second signal (${signal})`
      if (runtime !== undefined) EffectRuntime.runSync(runtime)(Effect.logError(message))
      else process.stderr.write(`${message}\n`)
      process.exit(128 + number)
    }
    listeners.push([signal, listener])
    process.on(signal, listener)
  }
  const program = Effect.scoped(Effect.gen(function*() {
    runtime = yield* Effect.runtime<never>()
    const running = yield* startWith(layer, options, (result) => (outcome = result))
    yield* running.await.pipe(Effect.onInterrupt(() => running.stop))
  }))
  NodeRuntime.runMain(program, {
    disableErrorReporting: true,
    // runs once `program` ended, i.e. after the stop (the layers closed, or the stop was forced)
    teardown: (exit, onExit) => {
      for (const [signal, listener] of listeners) process.removeListener(signal, listener)
      const result = outcome as Outcome | undefined
      const code = result !== undefined
        ? result.exitCode
        : Exit.isFailure(exit) && !Cause.isInterruptedOnly(exit.cause)
        ? 1
        : 0
      onExit(code)
      // `runMain` exits by itself only after a signal or with a non-zero code: a clean end must not wait for handles
      // left open (a user's timer, an idle pool's, a keep-alive socket) to let the event loop empty
      process.exit(code)
    }
  })
}
