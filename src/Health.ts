/**
 * Health: what each running component says of itself (`healthy`, `degraded` or `unhealthy`, with a reason), and the
 * aggregate of them all. The library's layers (event stores, projections, the NATS connection) register a check in
 * the `Health` service when one is in their context while they are built, and remove it when their scope closes;
 * without a `Health` service they register nothing and cost nothing. `Runtime.run` provides one and serves it over
 * HTTP (`/health/live`, `/health/ready`).
 *
 * @example
 * import { Health } from "effect-eventstore"
 * import * as Effect from "effect/Effect"
 * import * as Layer from "effect/Layer"
 *
 * // your own component's check, removed when the layer's scope closes
 * const Cache = Layer.scopedDiscard(
 *   Health.register("cache", Effect.succeed(Health.healthy()))
 * )
 *
 * @since 0.1.0
 */
import * as Context from "effect/Context"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Option from "effect/Option"
import * as Ref from "effect/Ref"
import type * as Scope from "effect/Scope"

/**
 * `healthy`: working. `degraded`: working, but something needs a look (a projection behind, a reconnect in
 * progress). `unhealthy`: not doing its job (the store unreachable, a projection failed, NATS closed).
 *
 * @since 0.1.0
 */
export type Status = "healthy" | "degraded" | "unhealthy"

/**
 * What one check found. `details` holds numbers an operator wants beside the status (a projection's lag, a
 * latency); it never holds a secret.
 *
 * @since 0.1.0
 */
export interface Result {
  readonly status: Status
  readonly reason?: string
  readonly details?: Readonly<Record<string, string | number | boolean>>
}

/** @since 0.1.0 */
export interface ComponentReport extends Result {
  readonly component: string
}

/**
 * The aggregate: the worst status of all components (`healthy` when none is registered).
 *
 * @since 0.1.0
 */
export interface Report {
  readonly status: Status
  readonly components: ReadonlyArray<ComponentReport>
}

/** @since 0.1.0 */
export const healthy = (details?: Result["details"]): Result => details === undefined ? { status: "healthy" } : {
  status: "healthy",
  details
}

/** @since 0.1.0 */
export const degraded = (reason: string, details?: Result["details"]): Result =>
  details === undefined ? { status: "degraded", reason } : { status: "degraded", reason, details }

/** @since 0.1.0 */
export const unhealthy = (reason: string, details?: Result["details"]): Result =>
  details === undefined ? { status: "unhealthy", reason } : { status: "unhealthy", reason, details }

const rank: Record<Status, number> = { healthy: 0, degraded: 1, unhealthy: 2 }

/**
 * The worse of statuses (`healthy` for none).
 *
 * @since 0.1.0
 */
export const worst = (statuses: Iterable<Status>): Status => {
  let result: Status = "healthy"
  for (const status of statuses) if (rank[status] > rank[result]) result = status
  return result
}

/**
 * A check: an Effect that says how a component is. It may return several results under one name (one per
 * projection): each is reported as `name/key`.
 *
 * @since 0.1.0
 */
export type Check = Effect.Effect<Result | ReadonlyMap<string, Result>>

/** @since 0.1.0 */
export interface HealthService {
  /**
   * Adds a check for the lifetime of the current scope. The reported component names are unique: a name already
   * reported by an earlier registration (a second store, or a projection of one name in a second layer) gets `#2`,
   * `#3`…
   */
  readonly register: (component: string, check: Check) => Effect.Effect<void, never, Scope.Scope>
  /**
   * Runs every check (side by side, each under the service's timeout: a check that does not answer in time is
   * `unhealthy` with reason `timed out`; one that dies is `unhealthy` with its defect's message).
   */
  readonly check: Effect.Effect<Report>
}

/** @since 0.1.0 */
export class Health extends Context.Tag("effect-eventstore/Health")<Health, HealthService>() {}

/** @since 0.1.0 */
export interface Options {
  /** How long one check may take before it counts as `unhealthy`; default 2 seconds. */
  readonly timeout?: Duration.DurationInput
}

const messageOf = (cause: unknown): string => cause instanceof Error ? cause.message : String(cause)

/** @since 0.1.0 */
export const make = (options: Options = {}): Effect.Effect<HealthService> =>
  Effect.gen(function*() {
    const timeout = options.timeout ?? "2 seconds"
    const checks = yield* Ref.make<ReadonlyArray<readonly [string, Check, number]>>([])
    let registered = 0
    const register = (component: string, check: Check) =>
      Effect.acquireRelease(
        Ref.modify(checks, (all) => {
          const id = ++registered
          return [id, [...all, [component, check, id] as const]]
        }),
        (id) => Ref.update(checks, (all) => all.filter(([, , taken]) => taken !== id))
      ).pipe(Effect.asVoid)
    const run = (name: string, check: Check): Effect.Effect<ReadonlyArray<ComponentReport>> =>
      // disconnected: the answer comes at the timeout even when the check's interruption takes longer (an
      // uninterruptible region, a query whose cancel waits for a free connection); it finishes in the background
      check.pipe(
        Effect.disconnect,
        Effect.timeoutTo({
          duration: timeout,
          onTimeout: (): Result | ReadonlyMap<string, Result> => unhealthy("timed out"),
          onSuccess: (result): Result | ReadonlyMap<string, Result> => result
        }),
        Effect.catchAllDefect((defect) => Effect.succeed(unhealthy(messageOf(defect)))),
        Effect.map((result): ReadonlyArray<ComponentReport> =>
          isMap(result)
            ? Array.from(result, ([key, value]) => ({ ...value, component: `${name}/${key}` }))
            : [{ ...result, component: name }]
        )
      )
    const check = Ref.get(checks).pipe(
      Effect.flatMap((all) => Effect.forEach(all, ([name, check]) => run(name, check), { concurrency: "unbounded" })),
      Effect.map((nested): Report => {
        // a component name taken by an earlier registration (two stores, or one projection name in two layers) gets
        // `#2`, `#3`… in the order of registration
        const taken = new Set<string>()
        const components = nested.flat().map((report) => {
          let name = report.component
          for (let n = 2; taken.has(name); n++) name = `${report.component}#${n}`
          taken.add(name)
          return name === report.component ? report : { ...report, component: name }
        })
        return { status: worst(components.map((c) => c.status)), components }
      })
    )
    return { register, check }
  })

const isMap = (value: Result | ReadonlyMap<string, Result>): value is ReadonlyMap<string, Result> =>
  value instanceof Map

/** @since 0.1.0 */
export const layer = (options: Options = {}): Layer.Layer<Health> => Layer.effect(Health, make(options))

/**
 * Registers a check in the `Health` service of the context, if there is one, for the lifetime of the current scope;
 * does nothing otherwise. This is how the library's layers report themselves without requiring `Health`.
 *
 * @since 0.1.0
 */
export const register = (component: string, check: Check): Effect.Effect<void, never, Scope.Scope> =>
  Effect.serviceOption(Health).pipe(
    Effect.flatMap(Option.match({
      onNone: () => Effect.void,
      onSome: (health) => health.register(component, check)
    }))
  )

/**
 * Runs every registered check.
 *
 * @since 0.1.0
 */
export const check: Effect.Effect<Report, never, Health> = Effect.flatMap(Health, (health) => health.check)
