/**
 * The projection runner behind `Projection.start`: per projection, a fiber in the layer's scope that waits for the
 * projection's lease, applies its migrations, then reads the global log from its checkpoint through the store's
 * `subscribe` (which catches up page by page and then wakes on each commit) and commits each page as one batch
 * through the `CheckpointStore`. A failure stops that projection alone; an operator's `resume` or `park` restarts it.
 */
import * as Cause from "effect/Cause"
import * as Chunk from "effect/Chunk"
import * as Clock from "effect/Clock"
import * as Deferred from "effect/Deferred"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Either from "effect/Either"
import * as Exit from "effect/Exit"
import * as Metric from "effect/Metric"
import * as Option from "effect/Option"
import * as Queue from "effect/Queue"
import * as Schedule from "effect/Schedule"
import * as Stream from "effect/Stream"
import * as SubscriptionRef from "effect/SubscriptionRef"
import type { EventDecodeError } from "../Errors.js"
import { InlineProjectionError, InvalidInput, StoreError } from "../Errors.js"
import type { RecordedEvent } from "../Event.js"
import type * as SqlClient from "@effect/sql/SqlClient"
import type * as Statement from "@effect/sql/Statement"
import { EventStore } from "../EventStore.js"
import { SqlClient as SqlClientTag } from "@effect/sql/SqlClient"
import type {
  CheckpointStoreService,
  Options,
  ParkedEvent,
  Projection,
  ProjectionsService,
  RebuildProgress,
  State,
  Status,
  TableName
} from "../Projection.js"
import {
  BatchEventFailed,
  CheckpointConflict,
  CheckpointStore,
  generationTable,
  ProjectionFailed,
  ProjectionNotFound,
  ProjectionStateError,
  ProjectionTimeout
} from "../Projection.js"
import * as Health from "../Health.js"
import * as Telemetry from "../Telemetry.js"
import {
  type CommandTransaction,
  commitsOf,
  databaseOf,
  headNowOf,
  DriverFailure,
  inlineOf,
  type SyncCommands,
  syncCommandsOf,
  tenantOf
} from "./backend.js"
import { alongside, type RedactParkedWithin, scopeCheckpoints, withRedactParkedWithin } from "./tenants.js"
import { makeHook } from "./inlineProjection.js"
import * as Statements from "./statements.js"
import { fromStored } from "./codec.js"
import * as EventLoop from "./eventLoop.js"
import { tables } from "./migrations.js"

// --- the memory checkpoint store -----------------------------------------------------------------------------------

export const memoryCheckpoints = (): CheckpointStoreService => {
  const rows = new Map<string, { position: number; owner: string | undefined; leaseUntil: number; generation: number }>()
  const applied = new Set<string>()
  const parked = new Map<string, Array<ParkedEvent>>()
  const row = (projection: string) => {
    let r = rows.get(projection)
    if (r === undefined) {
      r = { position: 0, owner: undefined, leaseUntil: 0, generation: 1 }
      rows.set(projection, r)
    }
    return r
  }
  const redactWithin: RedactParkedWithin = (prefix, streamIds, reason) =>
    Effect.sync(() => {
      const streams = new Set(streamIds)
      let changed = 0
      for (const [projection, list] of parked) {
        if (prefix !== undefined && !projection.startsWith(prefix)) continue
        for (let i = 0; i < list.length; i++) {
          const p = list[i]!
          if (!streams.has(p.streamId) || p.reason === reason) continue
          list[i] = { ...p, reason }
          changed++
        }
      }
      return changed
    })
  const check = (projection: string, owner: string, from: number, to = Infinity) =>
    Effect.suspend(() => {
      const r = row(projection)
      return r.position === from && r.owner === owner && to > from
        ? Effect.void
        : Effect.fail(new CheckpointConflict({ projection, expected: from }))
    })
  return withRedactParkedWithin({
    exactlyOnce: false,
    acquire: (projection, owner, ttl, renew) =>
      Effect.map(Clock.currentTimeMillis, (now) => {
        const r = row(projection)
        if (renew === true ? r.owner !== owner : r.owner !== undefined && r.owner !== owner && r.leaseUntil >= now) {
          return false
        }
        r.owner = owner
        r.leaseUntil = now + Duration.toMillis(ttl)
        return true
      }),
    release: (projection, owner) =>
      Effect.sync(() => {
        const r = row(projection)
        if (r.owner === owner) {
          r.owner = undefined
          r.leaseUntil = 0
        }
      }),
    load: (projection) => Effect.sync(() => row(projection).position),
    commit: (projection, owner, from, to, work, park) =>
      check(projection, owner, from, to).pipe(
        Effect.zipRight(work),
        Effect.zipRight(check(projection, owner, from)),
        Effect.zipRight(Effect.sync(() => {
          row(projection).position = to
          if (park !== undefined) {
            const list = (parked.get(park.projection) ?? []).filter((p) => p.position !== park.position)
            list.push(park)
            list.sort((a, b) => a.position - b.position)
            parked.set(park.projection, list)
          }
        }))
      ),
    migrate: (projection, id, migration) =>
      Effect.suspend(() => {
        const key = `${projection}\u0000${id}`
        if (applied.has(key)) return Effect.succeed(false)
        return Effect.as(Effect.zipRight(migration, Effect.sync(() => applied.add(key))), true)
      }),
    reset: <E, R>(projection: string, owner: string, work: Effect.Effect<void, E, R>) =>
      Effect.suspend((): Effect.Effect<void, E | CheckpointConflict, R> => {
        const r = row(projection)
        if (r.owner !== owner) return Effect.fail(new CheckpointConflict({ projection, expected: r.position }))
        return Effect.zipRight(work, Effect.sync(() => void (r.position = 0)))
      }),
    parked: (projection) => Effect.sync(() => [...(parked.get(projection) ?? [])]),
    generation: (projection) => Effect.sync(() => row(projection).generation),
    promote: <E, R>(projection: string, owner: string, shadow: string, generation: number, work: Effect.Effect<void, E, R>) =>
      Effect.suspend((): Effect.Effect<number, E | CheckpointConflict, R> => {
        const main = row(projection)
        const built = rows.get(shadow)
        if (main.owner !== owner || built === undefined || built.owner !== owner) {
          return Effect.fail(new CheckpointConflict({ projection, expected: main.position }))
        }
        return Effect.as(
          Effect.zipRight(
            work,
            Effect.sync(() => {
              main.position = built.position
              main.generation = generation
              rows.delete(shadow)
            })
          ),
          built.position
        )
      }),
    discard: (projection) =>
      Effect.sync(() => {
        rows.delete(projection)
        for (const key of applied) if (key.startsWith(`${projection}\u0000`)) applied.delete(key)
      }),
    redactParked: (streamIds, reason) => redactWithin(undefined, streamIds, reason)
  }, redactWithin)
}

// --- failures ------------------------------------------------------------------------------------------------------

/** A batch that failed on one event: `retryable` is false where trying again cannot help (it does not decode). */
class EventFailure {
  readonly _tag = "EventFailure"
  constructor(readonly event: RecordedEvent, readonly reason: string, readonly retryable: boolean) {}
}

/** The runner's lease went to another process. */
class LeaseLost {
  readonly _tag = "LeaseLost"
}

/** Why a run stopped, with whether an operator can park what it stopped on. */
interface Stop {
  readonly failure: ProjectionFailed
  readonly parkable: boolean
}

/** What an operator asks of a runner. `resume` and `park` carry the failure they were asked for (claimed). */
type Command =
  | { readonly _tag: "resume"; readonly stop: Stop; readonly done: Deferred.Deferred<void, ProjectionStateError> }
  | {
    readonly _tag: "park"
    readonly stop: Stop
    readonly done: Deferred.Deferred<ParkedEvent, ProjectionFailed | ProjectionStateError>
  }
  | { readonly _tag: "rebuild"; readonly done: Deferred.Deferred<void, ProjectionStateError | StoreError> }

/** Answers a command that will not be carried out. */
const refuse = (command: Command, error: ProjectionStateError): Effect.Effect<boolean> =>
  Deferred.fail(command.done as Deferred.Deferred<unknown, ProjectionStateError>, error)

const reasonOf = (cause: Cause.Cause<unknown>): string => {
  const failure = Cause.failureOption(cause)
  if (Option.isSome(failure)) {
    const e = failure.value
    if (!(e instanceof Error)) return String(e)
    // an SqlError's own message is generic ("Failed to execute statement"): the driver's says what went wrong
    const driver = (e as { readonly cause?: unknown }).cause
    const detail = (e as { _tag?: string })._tag === "SqlError" && driver instanceof Error ? ` (${driver.message})` : ""
    return `${(e as { _tag?: string })._tag ?? e.name}: ${e.message}${detail}`
  }
  return Cause.pretty(cause).split("\n")[0] ?? "defect"
}

const defaultRetry: Schedule.Schedule<unknown, unknown> = Schedule.exponential("100 millis").pipe(
  Schedule.intersect(Schedule.recurs(5))
)

// --- the runner ----------------------------------------------------------------------------------------------------

interface Runner {
  readonly projection: Projection<any, any, any>
  readonly status: SubscriptionRef.SubscriptionRef<Status>
  readonly control: Queue.Queue<Command>
  /** The failure it stopped on, while failed. */
  stop: Stop | undefined
  /** Why the last attempt to take the lease failed (the checkpoint store), while standing by; `undefined` otherwise. */
  leaseError: string | undefined
  /** The status as last set (what `status` reads). */
  latest: Status
  /** `awaitPosition` callers: each says, given a status, whether it is answered. */
  readonly waiters: Set<{ readonly check: (s: Status) => boolean }>
}

const initial = (name: string): Status => ({
  name,
  state: "standby",
  checkpoint: 0,
  head: 0,
  lag: 0,
  lagMillis: 0,
  eventsPerSecond: 0,
  failure: undefined,
  rebuild: undefined
})

export const make = (
  projections: ReadonlyArray<Projection<any, any, any>>,
  options: Options
) =>
  Effect.gen(function*() {
    const batchSize = options.batchSize ?? 500
    if (!Number.isSafeInteger(batchSize) || batchSize < 1 || batchSize > 10_000) {
      return yield* new InvalidInput({ field: "batchSize", reason: "must be an integer from 1 to 10000" })
    }
    const names = new Set<string>()
    for (const p of projections) {
      if (names.has(p.name)) {
        return yield* new InvalidInput({ field: "projections", reason: `two projections are named ${p.name}` })
      }
      names.add(p.name)
    }
    const ttl = Duration.decode(options.leaseTtl ?? "10 seconds")
    if (!Duration.isFinite(ttl) || Duration.toMillis(ttl) < 10) {
      return yield* new InvalidInput({ field: "leaseTtl", reason: "must be a finite duration of at least 10 ms" })
    }
    const retry = options.retry ?? defaultRetry
    const lagThreshold = options.lagThreshold ?? 1000
    if (!Number.isSafeInteger(lagThreshold) || lagThreshold < 0) {
      return yield* new InvalidInput({ field: "lagThreshold", reason: "must be a non-negative integer" })
    }
    const store = yield* EventStore
    // a tenant's store keeps the tenant's checkpoints (see `alongside`)
    const checkpoints = yield* Effect.flatMap(CheckpointStore, (c) => alongside(c, tenantOf(store), scopeCheckpoints, "CheckpointStore"))
    const context = yield* Effect.context<never>()
    const owner = crypto.randomUUID()

    const runners = new Map<string, Runner>()
    for (const projection of projections) {
      runners.set(projection.name, {
        projection,
        status: yield* SubscriptionRef.make(initial(projection.name)),
        control: yield* Queue.unbounded<Command>(),
        stop: undefined,
        leaseError: undefined,
        latest: initial(projection.name),
        waiters: new Set()
      })
    }

    for (const runner of runners.values()) {
      yield* Effect.forkScoped(
        runProjection(runner, { batchSize, ttl, retry, owner, store, checkpoints, context }).pipe(
          Effect.annotateLogs("projection", runner.projection.name)
        )
      )
    }

    const find = (name: string) =>
      Effect.suspend(() => {
        const runner = runners.get(name)
        return runner === undefined ? Effect.fail(new ProjectionNotFound({ projection: name })) : Effect.succeed(runner)
      })

    // While this process stands by, the checkpoint another process saves, every 50 ms. Never fails.
    const standbyPoll = (name: string, position: number, runner: Runner): Effect.Effect<void> =>
      Effect.gen(function*() {
        while (true) {
          if (runner.latest.state === "standby") {
            const saved = yield* Effect.orElseSucceed(checkpoints.load(name), () => 0)
            if (saved >= position) return
          }
          yield* Effect.sleep("50 millis")
        }
      })

    const service: ProjectionsService = {
      names: [...runners.keys()],
      status: (name) => Effect.flatMap(find(name), (r) => SubscriptionRef.get(r.status)),
      changes: (name) => Stream.unwrap(Effect.map(find(name), (r) => r.status.changes)),
      awaitPosition: (name, position, timeout) =>
        Effect.flatMap(find(name), (runner) =>
          Effect.async<void, ProjectionFailed>((resume) => {
            // answered from the runner's own status updates: no stream per wait
            const check = (s: Status): boolean => {
              if (s.checkpoint >= position) resume(Effect.void)
              else if (s.state === "failed" && s.failure !== undefined && s.failure.position <= position) {
                resume(Effect.fail(s.failure))
              } else return false
              return true
            }
            if (check(runner.latest)) return
            const waiter = { check }
            runner.waiters.add(waiter)
            return Effect.sync(() => runner.waiters.delete(waiter))
          }).pipe(
            // in a standby process the projection runs elsewhere: its saved checkpoint tells
            (waiting) => Effect.raceFirst(waiting, standbyPoll(name, position, runner)),
            Effect.timeoutFail({
              duration: timeout,
              onTimeout: () => new ProjectionTimeout({ projection: name, position, checkpoint: runner.latest.checkpoint })
            })
          )),
      resume: (name) =>
        Effect.flatMap(find(name), (runner) =>
          Effect.gen(function*() {
            // the failure is claimed here, once: a second resume or park of the same failure is refused
            const stop = runner.stop
            runner.stop = undefined
            if (stop === undefined) {
              return yield* new ProjectionStateError({
                projection: name,
                state: runner.latest.state,
                reason: "only a failed projection resumes (once)"
              })
            }
            // answered once the runner has left the failed state, so that what the caller does next (an
            // awaitPosition) sees it running
            const done = yield* Deferred.make<void, ProjectionStateError>()
            yield* Queue.offer(runner.control, { _tag: "resume", stop, done })
            return yield* Deferred.await(done)
          })),
      park: (name) =>
        Effect.flatMap(find(name), (runner) =>
          Effect.gen(function*() {
            const stop = runner.stop
            if (stop === undefined) {
              return yield* new ProjectionStateError({
                projection: name,
                state: runner.latest.state,
                reason: "only a failed projection parks the event it stopped on (once)"
              })
            }
            if (!stop.parkable) {
              return yield* new ProjectionStateError({
                projection: name,
                state: runner.latest.state,
                reason: `it did not stop on an event (${stop.failure.reason}); resume it instead`
              })
            }
            runner.stop = undefined
            const done = yield* Deferred.make<ParkedEvent, ProjectionFailed | ProjectionStateError>()
            yield* Queue.offer(runner.control, { _tag: "park", stop, done })
            return yield* Deferred.await(done)
          })),
      parked: (name) => Effect.flatMap(find(name), () => checkpoints.parked(name)),
      rebuild: (name) =>
        Stream.unwrap(Effect.gen(function*() {
          const runner = yield* find(name)
          if (runner.projection.reset === undefined && runner.projection.tables === undefined) {
            return yield* new ProjectionStateError({
              projection: name,
              state: runner.latest.state,
              reason: "it has no reset (nor tables, for a blue/green rebuild): a rebuild needs one to empty the read model"
            })
          }
          const state = runner.latest.state
          if (state === "standby" || state === "stopped") {
            return yield* new ProjectionStateError({
              projection: name,
              state,
              reason: state === "standby" ? "another process runs it: rebuild it there" : "its layer has stopped"
            })
          }
          const done = yield* Deferred.make<void, ProjectionStateError | StoreError>()
          yield* Queue.offer(runner.control, { _tag: "rebuild", done })
          yield* Deferred.await(done)
          return runner.status.changes.pipe(
            Stream.takeUntil((s) => s.state !== "rebuilding"),
            Stream.mapEffect((s): Effect.Effect<RebuildProgress | undefined, ProjectionFailed | ProjectionStateError> =>
              s.state === "failed" && s.failure !== undefined
                ? Effect.fail(s.failure)
                : s.state === "standby" || s.state === "stopped"
                ? Effect.fail(
                  new ProjectionStateError({ projection: name, state: s.state, reason: "the rebuild was cut short" })
                )
                : Effect.succeed(s.rebuild)
            ),
            Stream.filter((p): p is RebuildProgress => p !== undefined)
          )
        }))
    }
    // one check for all of them: `projections/<name>` in the report, removed when the layer's scope closes (before
    // the runners stop: the scope's finalizers run in reverse order). The lag is measured against the head as it is
    // now (one query that answers at once, for all of them), not as a runner last saw it: a runner stuck in a batch
    // does not update its status. Each projection's checkpoint is remembered with the time a check first saw it
    // behind the head there: stalled is the same checkpoint, behind, in two checks at least `stalledAfter` apart.
    const seen = new Map<string, { readonly checkpoint: number; readonly since: number }>()
    yield* Health.register(
      "projections",
      Effect.gen(function*() {
        const headNow = yield* Effect.option(headNowOf(store))
        const now = yield* Clock.currentTimeMillis
        return new Map(Array.from(runners, ([name, runner]) => {
          const status = runner.latest
          const head = Math.max(status.head, status.checkpoint, Option.getOrElse(headNow, () => 0))
          const last = seen.get(name)
          if (head === status.checkpoint) seen.delete(name)
          const since = last !== undefined && last.checkpoint === status.checkpoint ? last.since : now
          if (head > status.checkpoint) seen.set(name, { checkpoint: status.checkpoint, since })
          return [name, healthOf(status, head, now - since, lagThreshold, runner.leaseError)]
        }))
      })
    )
    return service
  })

/** A projection behind the head whose checkpoint has not moved for this long is `degraded` (stalled). */
const stalledAfter = 30_000

/**
 * A projection's health, with the head as it is now and how long its checkpoint has not moved: `failed` or
 * `stopped` is unhealthy (with its failure); running and more than `lagThreshold` events behind, or behind with a
 * checkpoint that has not moved for `stalledAfter`, is degraded; anything else (standby included: another process
 * runs it) healthy; the numbers in `details`.
 */
const healthOf = (
  status: Status,
  head: number,
  still: number,
  lagThreshold: number,
  leaseError: string | undefined
): Health.Result => {
  const lag = Math.max(0, head - status.checkpoint)
  const details = {
    state: status.state,
    checkpoint: status.checkpoint,
    head,
    lag,
    lagMillis: status.lagMillis,
    eventsPerSecond: Math.round(status.eventsPerSecond * 10) / 10
  }
  if (status.state === "failed") {
    return Health.unhealthy(status.failure !== undefined ? status.failure.message : "failed", details)
  }
  if (status.state === "stopped") return Health.unhealthy("stopped", details)
  if (status.state === "standby") {
    // standing by is healthy while another process holds the lease, not while the checkpoint store cannot be asked
    return leaseError === undefined ? Health.healthy(details) : Health.degraded(`cannot take the lease: ${leaseError}`, details)
  }
  if (lag > 0 && still >= stalledAfter) {
    return Health.degraded(
      `stalled: the checkpoint has not moved for ${Math.floor(still / 1000)} s, ${lag} events behind the head`,
      details
    )
  }
  if (lag > lagThreshold) return Health.degraded(`${lag} events behind the head (more than ${lagThreshold})`, details)
  return Health.healthy(details)
}

interface Env {
  readonly batchSize: number
  readonly ttl: Duration.Duration
  readonly retry: Schedule.Schedule<unknown, unknown>
  readonly owner: string
  readonly store: EventStore["Type"]
  readonly checkpoints: CheckpointStoreService
  readonly context: import("effect/Context").Context<never>
}

const runProjection = (runner: Runner, env: Env): Effect.Effect<void> => {
  const { batchSize, checkpoints, owner, retry, store, ttl } = env
  const projection = runner.projection
  const name = projection.name
  const generational = projection.tables !== undefined
  const tableSet = new Set(projection.tables ?? [])
  // where batches go: the projection's own checkpoint and tables, or, during a blue/green rebuild, the new generation's
  let target = { row: name, generation: 1 }
  const tableOf = (generation: number) => (table: string) =>
    generational && tableSet.has(table) ? generationTable(table, generation) : table
  let table = tableOf(1)
  const setTarget = (next: { readonly row: string; readonly generation: number }) => {
    target = next
    table = tableOf(next.generation)
  }
  const statementsOf = projection.statements as
    | Record<string, ((event: RecordedEvent<any>, sql: SqlClient.SqlClient, table: TableName) => unknown) | undefined>
    | undefined
  const handlers: Record<string, ((event: RecordedEvent<any>) => Effect.Effect<void, unknown, unknown>) | undefined> =
    statementsOf === undefined
      ? projection.handlers as Record<string, ((event: RecordedEvent<any>) => Effect.Effect<void, unknown, unknown>) | undefined>
      // the statements of the generation being written (`table` changes during a blue/green rebuild); null
      // prototype, like `statementsOf`: a stored type named `constructor` finds no handler
      : Object.assign(
        Object.create(null),
        Object.fromEntries(Object.entries(statementsOf).map(([type, handler]) => [
          type,
          handler === undefined ? undefined : (event: RecordedEvent<any>) =>
            Statements.asEffect(handler as Statements.StatementHandler, table)(event)
        ]))
      )
  const streamTypes = projection.streamTypes && new Set(projection.streamTypes)
  // tagged once per runner, not per update
  const eventsMetric = Metric.tagged(Telemetry.projectionEvents, "projection", name)
  const checkpointMetric = Metric.tagged(Telemetry.projectionCheckpoint, "projection", name)
  const lagMetric = Metric.tagged(Telemetry.projectionLag, "projection", name)
  const failuresMetric = Metric.tagged(Telemetry.projectionFailures, "projection", name)
  const provide = <A, E>(effect: Effect.Effect<A, E, unknown>) =>
    Effect.provide(effect as Effect.Effect<A, E, never>, env.context)

  // what this runner knows: the checkpoint it saved, the position it has dealt with (>= saved: skipped events are
  // not saved one by one), and a park an operator asked for
  let saved = 0
  let position = 0
  let parkAt: { readonly stop: Stop; readonly done: Deferred.Deferred<ParkedEvent, ProjectionFailed | ProjectionStateError> } | undefined
  // events/s over a window of a few seconds
  let rebuilding:
    | {
      readonly total: number
      readonly startedAt: number
      processed: number
      loggedAt: number
      /** A blue/green rebuild: the generation it builds (its checkpoint is `rowOf(generation)`). */
      readonly shadow: number | undefined
    }
    | undefined
  let knownHead = 0
  let headAt = 0
  let windowStart = 0
  let windowCount = 0
  let rate = 0

  const update = (f: (s: Status) => Status) =>
    Effect.zipRight(
      SubscriptionRef.update(runner.status, (s) => (runner.latest = f(s))),
      Effect.sync(() => {
        for (const waiter of runner.waiters) if (waiter.check(runner.latest)) runner.waiters.delete(waiter)
      })
    )
  const setState = (state: State) =>
    Effect.zipRight(
      update((s) => ({ ...s, state, failure: state === "failed" ? s.failure : undefined })),
      Effect.logDebug(`projection ${name}: ${state} at ${position}`)
    )

  /** `caughtUp`: the batch read the log to its end inside its write transaction (its last position is the head). */
  const afterBatch = (count: number, lastRecordedAt: number, caughtUp = false) =>
    Effect.gen(function*() {
      const now = yield* Clock.currentTimeMillis
      // while catching up in full batches, the head is asked at most every 100 ms (a query per batch showed)
      if (caughtUp) {
        knownHead = position
        headAt = now
      } else if (count < batchSize || now - headAt >= 100) {
        knownHead = yield* Effect.orElseSucceed(headNowOf(store), () => knownHead)
        headAt = now
      }
      const head = Math.max(position, knownHead)
      if (windowStart === 0) windowStart = now
      windowCount += count
      if (now - windowStart >= 1000) {
        rate = (windowCount * 1000) / (now - windowStart)
        windowStart = now
        windowCount = 0
      }
      const lag = head - position
      let rebuild: RebuildProgress | undefined = undefined
      if (rebuilding !== undefined) {
        rebuilding.processed += count
        const elapsed = now - rebuilding.startedAt
        const perSecond = elapsed > 0 ? (rebuilding.processed * 1000) / elapsed : 0
        const left = Math.max(0, rebuilding.total - position)
        rebuild = {
          projection: name,
          processed: rebuilding.processed,
          total: rebuilding.total,
          eventsPerSecond: Math.round(perSecond),
          etaMillis: perSecond > 0 ? Math.round((left * 1000) / perSecond) : undefined,
          done: lag <= 0
        }
        if (lag <= 0) {
          if (rebuilding.shadow !== undefined) yield* promote(rebuilding.shadow)
          yield* Effect.logInfo(
            `projection ${name}: rebuilt, ${rebuilding.processed} events in ${(elapsed / 1000).toFixed(1)} s`
          )
          rebuilding = undefined
        } else if (now - rebuilding.loggedAt >= 5000) {
          rebuilding.loggedAt = now
          yield* Effect.logInfo(
            `projection ${name} rebuilding: ${rebuild.processed}/${rebuild.total} events, ${rebuild.eventsPerSecond}/s${
              rebuild.etaMillis === undefined ? "" : `, about ${Math.ceil(rebuild.etaMillis / 1000)} s left`
            }`
          )
        }
      }
      yield* Metric.incrementBy(eventsMetric, count)
      yield* Metric.set(checkpointMetric, position)
      yield* Metric.set(lagMetric, lag)
      yield* update((s) => ({
        ...s,
        state: rebuild !== undefined && !rebuild.done ? "rebuilding" : lag > 0 ? "catching-up" : "live",
        // the last progress of a rebuild stays until the next one
        rebuild: rebuild ?? s.rebuild,
        checkpoint: position,
        head,
        lag,
        lagMillis: lag > 0 ? Math.max(0, now - lastRecordedAt) : 0,
        eventsPerSecond: Math.round(now - windowStart < 1000 && rate === 0 ? windowCount : rate)
      }))
    })

  const failureOf = (event: RecordedEvent, reason: string): ProjectionFailed =>
    new ProjectionFailed({
      projection: name,
      position: event.position,
      eventId: event.eventId,
      streamId: event.streamId,
      eventType: event.type,
      reason
    })

  const handleOne = (event: RecordedEvent): Effect.Effect<void, EventFailure, unknown> => {
    const decoded = projection.events.decode(event)
    if (Either.isLeft(decoded)) return Effect.fail(new EventFailure(event, decoded.left.message, false))
    return Effect.suspend(() => handlers[event.type]!(decoded.right)).pipe(
      Effect.catchAllCause((cause) =>
        Cause.isInterruptedOnly(cause)
          ? Effect.failCause(cause as Cause.Cause<never>)
          : Effect.fail(new EventFailure(event, reasonOf(cause), true))
      )
    )
  }

  /**
   * PostgreSQL, statement handlers: a batch's statements go to the server together (`runBatchedPg`), a few round
   * trips instead of one per statement. When such a batch fails, it is tried again one event at a time
   * (`oneByOne`), so that the failure names its event.
   */
  let oneByOne = false
  const combined = statementsOf === undefined ? undefined : (events: ReadonlyArray<RecordedEvent>) =>
    Effect.flatMap(SqlClientTag, (client): Effect.Effect<void, EventFailure | StoreError> => {
      if (!client.onDialectOrElse({ pg: () => true, orElse: () => false })) {
        return Effect.forEach(events, handleOne, { discard: true }) as Effect.Effect<void, EventFailure>
      }
      const statements: Array<Statement.Statement<unknown>> = []
      for (const event of events) {
        const decoded = projection.events.decode(event)
        if (Either.isLeft(decoded)) return Effect.fail(new EventFailure(event, decoded.left.message, false))
        try {
          const out = statementsOf[event.type]!(decoded.right, client, table) as Statements.Statements
          for (const statement of Statements.statementList(out)) statements.push(statement)
        } catch (cause) {
          return Effect.fail(new EventFailure(event, reasonOf(Cause.die(cause)), true))
        }
      }
      return Statements.runBatchedPg(client, statements).pipe(
        Effect.catchAllCause((cause) => {
          if (Cause.isInterruptedOnly(cause)) return Effect.failCause(cause as Cause.Cause<never>)
          oneByOne = true
          return Effect.fail(new StoreError({ operation: "projection.batch", cause: Cause.squash(cause) }))
        })
      )
    })

  const batchHandler = projection.batch as
    | ((events: ReadonlyArray<RecordedEvent>) => Effect.Effect<void, unknown, unknown>)
    | undefined
  const relevant = (event: RecordedEvent) =>
    (batchHandler !== undefined || handlers[event.type] !== undefined) &&
    (streamTypes === undefined || streamTypes.has(event.streamType))

  /**
   * A batch handler (`Projection.batch`) works outside the checkpoint store's database: it runs first, and the
   * checkpoint moves after it (at least once). Its work stays interruptible (a publish waiting on a broker must not
   * hold a closing scope); only the move and this runner's note of it go together.
   */
  const batchWork = (events: ReadonlyArray<RecordedEvent>): Effect.Effect<void, EventFailure, unknown> =>
    Effect.suspend(() => batchHandler!(events)).pipe(
      Effect.catchAllCause((cause) => {
        if (Cause.isInterruptedOnly(cause)) return Effect.failCause(cause as Cause.Cause<never>)
        const failure = Cause.failureOption(cause)
        const named = Option.isSome(failure) && failure.value instanceof BatchEventFailed
          ? events.find((e) => e.position === (failure.value as BatchEventFailed).position)
          : undefined
        return named !== undefined
          ? Effect.fail(new EventFailure(named, (failure as Option.Some<BatchEventFailed>).value.reason, true))
          : Effect.fail(new EventFailure(events[0]!, reasonOf(cause), true))
      })
    )

  /** Commits `events` (consecutive in the log) as one batch; fails with the reason to stop. */
  const batch = (all: ReadonlyArray<RecordedEvent>): Effect.Effect<void, Stop | CheckpointConflict> => {
    // never behind the checkpoint: whatever a read hands back at or before it was dealt with already
    const events = all.length > 0 && all[0]!.position <= position ? all.filter((e) => e.position > position) : all
    if (events.length === 0) return Effect.void
    const last = events[events.length - 1]!
    const to = last.position
    const handled = events.filter(relevant)
    const done = Effect.suspend(() => {
      position = to
      return afterBatch(events.length, last.recordedAt.epochMillis)
    })
    if (handled.length === 0) return done
    const perEvent = Effect.forEach(handled, handleOne, { discard: true })
    const work = batchHandler !== undefined
      ? Effect.void
      : combined === undefined
      ? perEvent
      : Effect.suspend(() => oneByOne ? perEvent : combined(handled))
    // the commit and this runner's note of it go together
    const move = Effect.suspend(() =>
      Effect.uninterruptible(
        Effect.tap(provide(checkpoints.commit(target.row, owner, saved, to, work)), () =>
          Effect.sync(() => {
            saved = to
            oneByOne = false
          }))
      )
    )
    const commit = batchHandler === undefined ? move : Effect.zipRight(provide(batchWork(handled)), move)
    return commit.pipe(
      Effect.retry({
        schedule: retry,
        while: (e) => (e as { _tag?: string })._tag === "StoreError" || (e instanceof EventFailure && e.retryable)
      }),
      Effect.catchAll((e): Effect.Effect<never, Stop | CheckpointConflict> => {
        if (e instanceof CheckpointConflict) return Effect.fail(e)
        if (e instanceof EventFailure) return Effect.fail({ failure: failureOf(e.event, e.reason), parkable: true })
        const reason = e instanceof StoreError ? e.message : String(e)
        return Effect.fail({ failure: failureOf(handled[0]!, reason), parkable: false })
      }),
      Effect.zipRight(done)
    )
  }

  /** Records the event an operator parked, with the checkpoint's move past it. */
  const park = (at: NonNullable<typeof parkAt>) =>
    Effect.gen(function*() {
      const f = at.stop.failure
      const parked: ParkedEvent = {
        projection: name,
        position: f.position,
        eventId: f.eventId,
        streamId: f.streamId,
        eventType: f.eventType,
        reason: f.reason,
        parkedAt: yield* Clock.currentTimeMillis
      }
      // the commit, this runner's note of it and the answer to the operator go together
      yield* Effect.suspend(() =>
        Effect.uninterruptible(
          Effect.tap(provide(checkpoints.commit(target.row, owner, saved, f.position, Effect.void, parked)), () =>
            Effect.sync(() => {
              saved = position = f.position
              parkAt = undefined
              Deferred.unsafeDone(at.done, Exit.succeed(parked))
            }))
        )
      ).pipe(
        Effect.retry({ schedule: retry, while: (e) => e._tag === "StoreError" }),
        Effect.catchTag("StoreError", (e) => Effect.fail({ failure: new ProjectionFailed({ ...f, reason: e.message }), parkable: true } satisfies Stop))
      )
      yield* Effect.logWarning(`projection ${name}: parked the event at position ${f.position} (${f.eventType}): ${f.reason}`)
      yield* afterBatch(1, parked.parkedAt)
    })

  const handleChunk = (chunk: Chunk.Chunk<RecordedEvent>): Effect.Effect<void, Stop | CheckpointConflict> => {
    const events = Chunk.toReadonlyArray(chunk)
    const at = parkAt
    if (at !== undefined) {
      const k = events.findIndex((e) => e.position === at.stop.failure.position)
      if (k >= 0) {
        return batch(events.slice(0, k)).pipe(
          Effect.zipRight(Effect.suspend(() => park(at))),
          Effect.zipRight(Effect.suspend(() => batch(events.slice(k + 1))))
        )
      }
    }
    return batch(events)
  }

  /** A stop that is not at an event (a migration, the store, a bug): it cannot be parked, only resumed. */
  const notAtEvent = (reason: string, at = position + 1): Stop => ({
    failure: new ProjectionFailed({ projection: name, position: at, eventId: "", streamId: "", eventType: "", reason }),
    parkable: false
  })

  const readFailure = (e: EventDecodeError | StoreError | import("../Errors.js").InvalidInput): Stop =>
    e._tag === "EventDecodeError"
      ? {
        failure: new ProjectionFailed({
          projection: name,
          position: e.position,
          eventId: "",
          streamId: e.streamId,
          eventType: e.type,
          reason: e.message
        }),
        parkable: true
      }
      : notAtEvent(e.message)

  // Reads the log from where it is, for ever; stops only on a failure.
  const consume: Effect.Effect<never, Stop | CheckpointConflict> = Effect.suspend(() =>
    // each attempt (a retry after a read error too) reads from where the runner has got to
    Effect.suspend(() =>
      store.subscribe({ fromPosition: position, pageSize: batchSize }).pipe(
        // the next page is read while this one is handled and committed
        Stream.bufferChunks({ capacity: 1 }),
        Stream.mapError((e) => ({ read: e })),
        Stream.runForEachChunk((chunk) => Effect.mapError(handleChunk(chunk), (e) => ({ handled: e })))
      )
    ).pipe(
      Effect.retry({
        schedule: retry,
        while: (e) => "read" in e && e.read._tag === "StoreError"
      }),
      Effect.catchAll((e): Effect.Effect<void, Stop | CheckpointConflict> => {
        if ("handled" in e) return Effect.fail(e.handled)
        const stop = readFailure(e.read)
        const at = parkAt
        // a row the store cannot read at all: parking it moves the checkpoint past it
        if (at !== undefined && stop.parkable && at.stop.failure.position === stop.failure.position) {
          return park(at)
        }
        return Effect.fail(stop)
      }),
      Effect.zipRight(Effect.suspend(() => consume))
    )
  )


  // --- the synchronous road: statement handlers on the store's own SQLite database ---------------------------------
  const sync: SyncCommands | undefined = projection.statements !== undefined &&
      databaseOf(checkpoints) !== undefined && databaseOf(checkpoints) === databaseOf(store)
    ? syncCommandsOf(store)
    : undefined
  const client = databaseOf(store) as SqlClient.SqlClient
  const statementHandlers = statementsOf
  const MOVE = `UPDATE ${tables.projections} SET position = ?, updated_at = ? WHERE name = ? AND position = ? AND owner = ?`
  const PARK = `INSERT INTO ${tables.parked} (projection, position, event_id, stream_id, event_type, reason, parked_at)
    VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (projection, position) DO UPDATE SET event_id = excluded.event_id,
    stream_id = excluded.stream_id, event_type = excluded.event_type, reason = excluded.reason,
    parked_at = excluded.parked_at`

  interface SyncOutcome {
    readonly count: number
    readonly last: number
    readonly lastRecordedAt: number
    readonly committed: boolean
    readonly parked: ParkedEvent | undefined
    /** The batch read the log to its end (inside its transaction). */
    readonly caughtUp: boolean
  }

  const driver = (operation: string) => (cause: unknown) => new DriverFailure(new StoreError({ operation, cause }))

  /** One batch inside a `BEGIN IMMEDIATE` on the writer: read, handle, move the checkpoint; throws to roll back. */
  const syncBatch = (tx: CommandTransaction, now: number): { readonly commit: boolean; readonly value: SyncOutcome } => {
    const rows = tx.logRows(position, batchSize)
    if (rows.length === 0) {
      return { commit: false, value: { count: 0, last: position, lastRecordedAt: now, committed: false, parked: undefined, caughtUp: true } }
    }
    let handledCount = 0
    let parked: ParkedEvent | undefined = undefined
    let end = rows[rows.length - 1]!
    const at = parkAt
    for (const row of rows) {
      if (at !== undefined && row.position === at.stop.failure.position) {
        const f = at.stop.failure
        parked = { projection: name, position: f.position, eventId: f.eventId, streamId: f.streamId, eventType: f.eventType, reason: f.reason, parkedAt: now }
        try {
          tx.run(PARK, [name, f.position, f.eventId, f.streamId, f.eventType, f.reason, now])
        } catch (cause) {
          throw driver("projection.park")(cause)
        }
        // the batch ends at the parked event, so that a failure after it cannot take the park back
        end = row
        break
      }
      const handler = statementHandlers![row.type]
      if (handler === undefined || (streamTypes !== undefined && !streamTypes.has(row.streamType))) continue
      const stored = fromStored(row)
      if (Either.isLeft(stored)) {
        const e = stored.left
        throw new EventFailure({ position: e.position, eventId: "", streamId: e.streamId, type: e.type } as RecordedEvent, e.message, false)
      }
      const payload = projection.events.decodePayload(stored.right)
      if (Either.isLeft(payload)) throw new EventFailure(stored.right, payload.left.message, false)
      // the envelope was made for this event alone: it takes the domain value in place (one object per event), and
      // the current name of a renamed type (what `decode` gives the other roads)
      const event = stored.right as { payload: unknown; type: string }
      event.payload = payload.right
      const current = (payload.right as { readonly _tag?: unknown })._tag
      if (typeof current === "string") event.type = current
      try {
        Statements.runSync(handler(event as RecordedEvent<any>, client, table) as Statements.Statements, tx.run)
      } catch (cause) {
        // a failure names the event as stored
        throw new EventFailure({ ...stored.right, type: row.type }, Statements.thrownReason(cause), true)
      }
      handledCount++
    }
    const last = end
    const count = parked === undefined ? rows.length : rows.indexOf(end) + 1
    const caughtUp = parked === undefined && rows.length < batchSize
    const value = { count, last: last.position, lastRecordedAt: last.recordedAt, committed: false, parked, caughtUp }
    if (handledCount === 0 && parked === undefined) return { commit: false, value }
    let changes: number
    try {
      changes = tx.run(MOVE, [last.position, now, target.row, saved, owner])
    } catch (cause) {
      throw driver("projection.commit")(cause)
    }
    if (changes !== 1) throw new CheckpointConflict({ projection: target.row, expected: saved })
    return { commit: true, value: { ...value, committed: true } }
  }

  /** A batch on the synchronous road; `undefined` when the writer is busy now. */
  let seen = 0
  let busy = 0
  const syncStep = (commands: SyncCommands) =>
    Effect.flatMap(Clock.currentTimeMillis, (now) =>
      Effect.suspend((): Effect.Effect<SyncOutcome | undefined, EventFailure | CheckpointConflict | StoreError> => {
        try {
          seen = commits?.signal.version ?? 0
          // after a few tries that found the writer busy, the batch goes in between two groups anyway: under a
          // steady stream of appends the writer may never be idle
          const out = commands.run(undefined, (tx) => syncBatch(tx, now), busy >= 3)
          // what was committed is noted at once, with nothing in between (and a park answered)
          if (out !== undefined && out.value.count > 0) {
            if (out.value.committed) saved = out.value.last
            position = out.value.last
            if (out.value.parked !== undefined && parkAt !== undefined) {
              Deferred.unsafeDone(parkAt.done, Exit.succeed(out.value.parked))
              parkAt = undefined
            }
          }
          return Effect.succeed(out?.value)
        } catch (e) {
          if (e instanceof DriverFailure) return Effect.fail(e.cause)
          if (e instanceof EventFailure || e instanceof CheckpointConflict) return Effect.fail(e)
          return Effect.fail(new StoreError({ operation: "projection.commit", cause: e }))
        }
      }))

  // Waits for a commit after `seen` (the store's signal, noted before the batch that found nothing), or the poll
  // interval, for other processes' commits.
  const commits = commitsOf(store)
  const nextCommit = (seen: number): Effect.Effect<void> => {
    if (commits === undefined) return Effect.sleep("50 millis")
    const poll = commits.pollInterval
    return poll === undefined || !Duration.isFinite(poll)
      ? commits.signal.wait(seen)
      : Effect.race(commits.signal.wait(seen), Effect.sleep(poll))
  }

  const consumeSync = (commands: SyncCommands): Effect.Effect<never, Stop | CheckpointConflict> => {
    const step: Effect.Effect<void, Stop | CheckpointConflict> = syncStep(commands).pipe(
      Effect.retry({
        schedule: retry,
        while: (e) => e._tag === "StoreError" || (e instanceof EventFailure && e.retryable)
      }),
      Effect.catchAll((e): Effect.Effect<never, Stop | CheckpointConflict> => {
        if (e instanceof CheckpointConflict) return Effect.fail(e)
        if (e instanceof EventFailure) return Effect.fail({ failure: failureOf(e.event, e.reason), parkable: true })
        return Effect.fail(storeStop(e))
      }),
      Effect.flatMap((out) => {
        if (out === undefined) {
          // the writer is busy (its commits come first) or another process holds the lock: a turn of the event loop
          // first, then a growing pause
          busy++
          return busy === 1 ? EventLoop.yieldToLoop : Effect.sleep(Duration.millis(Math.min(50, 2 ** (busy - 1))))
        }
        busy = 0
        if (out.count === 0) return nextCommit(seen)
        const done = afterBatch(out.count, out.lastRecordedAt, out.caughtUp)
        if (out.parked === undefined) return done
        return Effect.zipRight(
          Effect.logWarning(
            `projection ${name}: parked the event at position ${out.parked.position} (${out.parked.eventType}): ${out.parked.reason}`
          ),
          done
        )
      })
    )
    // not `Effect.forever`, whose yield after each batch can be a timer (1 ms): the event loop gets a turn when the
    // library's synchronous work has held the thread for its budget
    const loop: Effect.Effect<never, Stop | CheckpointConflict> = Effect.flatMap(
      step,
      () => EventLoop.due() ? Effect.zipRight(EventLoop.yieldToLoop, loop) : loop
    )
    return loop
  }

  /** The checkpoint (and migration records) of generation `generation`'s tables. */
  const rowOf = (generation: number) => generation === 1 ? name : `${name}#g${generation}`

  /** Applies the migrations of the target's generation not applied yet. */
  const migrateAll = Effect.suspend(() => {
    const key = rowOf(target.generation)
    const names = table
    return Effect.forEach(
      projection.init,
      (migration, i) =>
        provide(checkpoints.migrate(key, i + 1, typeof migration === "function" ? migration(names) : migration)).pipe(
          Effect.tap((ran) => ran ? Effect.logInfo(`projection ${key}: applied migration ${i + 1}`) : Effect.void),
          Effect.catchAllCause((cause): Effect.Effect<never, Stop> =>
            Cause.isInterruptedOnly(cause)
              ? Effect.failCause(cause as Cause.Cause<never>)
              : Effect.fail(notAtEvent(`migration ${i + 1} failed: ${reasonOf(cause)}`))
          )
        ),
      { discard: true }
    )
  })

  /** Points the views of the projection's tables at generation `generation` (inside the caller's transaction). */
  const pointViews = (generation: number) =>
    Effect.flatMap(SqlClientTag, (sql) =>
      Effect.forEach(projection.tables ?? [], (t) =>
        Effect.zipRight(
          sql`DROP VIEW IF EXISTS ${sql(t)}`,
          sql`CREATE VIEW ${sql(t)} AS SELECT * FROM ${sql(generationTable(t, generation))}`
        ), { discard: true }))

  const dropTables = (generation: number) =>
    Effect.flatMap(SqlClientTag, (sql) =>
      Effect.forEach(projection.tables ?? [], (t) => sql`DROP TABLE IF EXISTS ${sql(generationTable(t, generation))}`, {
        discard: true
      }))

  const storeStop = (e: StoreError): Stop => notAtEvent(e.message)

  // One run while holding the lease: migrations, the checkpoint, then the log.
  const attempt: Effect.Effect<never, Stop | CheckpointConflict> = Effect.gen(function*() {
    if (rebuilding?.shadow === undefined) {
      const generation = generational ? yield* Effect.mapError(checkpoints.generation(name), storeStop) : 1
      setTarget({ row: name, generation })
    }
    yield* migrateAll
    if (generational && rebuilding?.shadow === undefined) {
      const generation = target.generation
      yield* provide(Effect.flatMap(SqlClientTag, (sql) => sql.withTransaction(pointViews(generation)))).pipe(
        Effect.catchAllCause((cause) =>
          Effect.fail(notAtEvent(`cannot create the views of generation ${generation}: ${reasonOf(cause)}`))
        )
      )
    }
    saved = position = yield* Effect.mapError(checkpoints.load(target.row), storeStop)
    yield* update((s) => ({ ...s, state: rebuilding !== undefined ? "rebuilding" : "catching-up", checkpoint: position }))
    yield* afterBatch(0, yield* Clock.currentTimeMillis)
    return yield* (sync !== undefined ? consumeSync(sync) : consume)
  })

  // A defect (a handler or migration that throws, a bug) stops the projection like a failure, with its reason.
  const attemptSafely: Effect.Effect<never, Stop | CheckpointConflict> = attempt.pipe(
    Effect.catchAllDefect((defect) => Effect.fail(notAtEvent(`unexpected: ${reasonOf(Cause.die(defect))}`)))
  )

  /** Resets the read model and the checkpoint for a rebuild; answers the request. */
  const startRebuild = (done: Deferred.Deferred<void, ProjectionStateError | StoreError>) =>
    Effect.gen(function*() {
      if (generational) return yield* startBlueGreen(done)
      if (projection.reset === undefined) {
        return yield* Deferred.fail(done, new ProjectionStateError({ projection: name, state: runner.latest.state, reason: "it has no reset" }))
      }
      const total = yield* Effect.orElseSucceed(headNowOf(store), () => knownHead)
      const reset = yield* Effect.either(
        provide(checkpoints.reset(name, owner, projection.reset)).pipe(
          Effect.catchAllDefect((defect) => Effect.fail(new StoreError({ operation: "projection.reset", cause: defect })))
        )
      )
      if (Either.isLeft(reset)) {
        const e = reset.left
        if (e instanceof CheckpointConflict) {
          yield* Deferred.fail(done, new ProjectionStateError({ projection: name, state: "standby", reason: "the lease went to another process" }))
          return yield* Effect.fail(e)
        }
        return yield* Deferred.fail(
          done,
          e instanceof StoreError ? e : new StoreError({ operation: "projection.reset", cause: e })
        )
      }
      yield* beginRebuild(total, undefined, `rebuilding from the beginning (${total} events in the log)`)
      yield* Deferred.succeed(done, undefined)
    })

  /** From here the runner replays from 0 (into generation `shadow`'s checkpoint and tables, when given). */
  const beginRebuild = (total: number, shadow: number | undefined, message: string) =>
    Effect.gen(function*() {
      const now = yield* Clock.currentTimeMillis
      if (shadow !== undefined) setTarget({ row: rowOf(shadow), generation: shadow })
      saved = position = 0
      parkAt = undefined
      rebuilding = { total, startedAt: now, processed: 0, loggedAt: now, shadow }
      runner.stop = undefined
      yield* update((s) => ({
        ...s,
        state: "rebuilding",
        checkpoint: 0,
        failure: undefined,
        rebuild: { projection: name, processed: 0, total, eventsPerSecond: 0, etaMillis: undefined, done: false }
      }))
      yield* Effect.logInfo(`projection ${name}: ${message}`)
    })

  /**
   * A blue/green rebuild: generation n+1 gets fresh tables (what an abandoned rebuild left is dropped first) and its
   * own checkpoint at 0; batches go there until it has caught up (`afterBatch` then promotes it). The current
   * generation keeps serving reads meanwhile.
   */
  const startBlueGreen = (done: Deferred.Deferred<void, ProjectionStateError | StoreError>) =>
    Effect.gen(function*() {
      const current = rebuilding?.shadow !== undefined ? rebuilding.shadow - 1 : target.generation
      const generation = current + 1
      const shadow = rowOf(generation)
      const total = yield* Effect.orElseSucceed(headNowOf(store), () => knownHead)
      const prepared = yield* Effect.either(Effect.gen(function*() {
        yield* checkpoints.discard(shadow)
        yield* provide(dropTables(generation))
        if (!(yield* checkpoints.acquire(shadow, owner, ttl))) {
          return yield* new StoreError({ operation: "projection.rebuild", cause: `${shadow} is held by another runner` })
        }
      }).pipe(Effect.catchAllDefect((defect) => Effect.fail(new StoreError({ operation: "projection.rebuild", cause: defect })))))
      if (Either.isLeft(prepared)) {
        const e = prepared.left
        return yield* Deferred.fail(done, e instanceof StoreError ? e : new StoreError({ operation: "projection.rebuild", cause: e }))
      }
      yield* beginRebuild(total, generation, `building generation ${generation} from the beginning (${total} events in the log)`)
      yield* Deferred.succeed(done, undefined)
    })

  /** Ends a blue/green rebuild: the new generation becomes the projection's, in one transaction. */
  const promote = (generation: number) =>
    Effect.gen(function*() {
      const shadow = rowOf(generation)
      const switched = provide(checkpoints.promote(
        name,
        owner,
        shadow,
        generation,
        Effect.zipRight(pointViews(generation), dropTables(generation - 1))
      )).pipe(
        Effect.mapError((e): Stop | CheckpointConflict =>
          e instanceof CheckpointConflict
            ? e
            : notAtEvent(`cannot switch to generation ${generation}: ${e instanceof Error ? e.message : String(e)}`, position)
        )
      )
      // the switch in the database and this runner's own go together (a rebuild request or a lost lease must not
      // come in between)
      yield* Effect.uninterruptible(Effect.tap(switched, (at) =>
        Effect.sync(() => {
          setTarget({ row: name, generation })
          // the new generation's saved checkpoint may be behind the events it skipped: those need no handling again
          saved = at
          position = Math.max(position, at)
        })))
      yield* Effect.logInfo(`projection ${name}: generation ${generation} is active`)
    })

  // Runs, and on a failure waits for an operator; leaves only when the lease is lost. A rebuild asked for meanwhile
  // stops the run after its in-flight batch.
  const active: Effect.Effect<never, CheckpointConflict> = Effect.gen(function*() {
    while (true) {
      const ran = yield* Effect.raceFirst(
        Effect.map(Effect.flip(attemptSafely), (stop) => ({ stop }) as const),
        Effect.map(Queue.take(runner.control), (command) => ({ command }) as const)
      )
      if ("command" in ran) {
        // only a rebuild reaches a running projection (resume and park need a failure to claim)
        if (ran.command._tag === "rebuild") yield* startRebuild(ran.command.done)
        else yield* refuse(ran.command, new ProjectionStateError({ projection: name, state: runner.latest.state, reason: "it is running" }))
        continue
      }
      let stop = ran.stop
      if (stop instanceof CheckpointConflict) return yield* stop
      if (rebuilding?.shadow !== undefined) {
        // a blue/green rebuild that fails is abandoned: the active generation goes on at resume, and the next rebuild
        // starts over
        const f = stop.failure
        stop = {
          failure: new ProjectionFailed({
            projection: f.projection,
            position: f.position,
            eventId: f.eventId,
            streamId: f.streamId,
            eventType: f.eventType,
            reason: `while building generation ${rebuilding.shadow} (abandoned; resume goes on with the active one): ${f.reason}`
          }),
          parkable: false
        }
      }
      const pending = parkAt
      parkAt = undefined
      if (pending !== undefined) yield* Deferred.fail(pending.done, stop.failure)
      rebuilding = undefined
      runner.stop = stop
      yield* Metric.increment(failuresMetric)
      yield* update((s) => ({ ...s, state: "failed", failure: stop.failure }))
      yield* Effect.logError(`projection ${name} stopped: ${stop.failure.message}`)
      const command = yield* Queue.take(runner.control)
      runner.stop = undefined
      if (command._tag === "rebuild") {
        yield* startRebuild(command.done)
        continue
      }
      if (command._tag === "park") parkAt = { stop: command.stop, done: command.done }
      yield* update((s) => ({ ...s, state: "catching-up", failure: undefined }))
      if (command._tag === "resume") yield* Deferred.succeed(command.done, undefined)
    }
  })

  /** Answers every command still queued, and a park in progress, with why it will not be carried out. */
  const refuseAll = (state: string, reason: string) =>
    Effect.gen(function*() {
      const error = new ProjectionStateError({ projection: name, state, reason })
      for (const command of yield* Queue.takeAll(runner.control)) yield* refuse(command, error)
      if (parkAt !== undefined) {
        yield* Deferred.fail(parkAt.done, error)
        parkAt = undefined
      }
      runner.stop = undefined
    })

  const acquire = Effect.flatMap(checkpoints.acquire(name, owner, ttl), (ok) => ok ? Effect.void : Effect.fail("held"))
  const renewEvery = Duration.millis(Math.max(5, Math.floor(Duration.toMillis(ttl) / 3)))

  // Renews the lease; fails when another owner has it, or when it could not be renewed for a whole ttl.
  const keepLease: Effect.Effect<never, LeaseLost> = Effect.gen(function*() {
    let renewed = yield* Clock.currentTimeMillis
    while (true) {
      yield* Effect.sleep(renewEvery)
      const result = yield* Effect.either(checkpoints.acquire(name, owner, ttl, true))
      const now = yield* Clock.currentTimeMillis
      if (Either.isRight(result)) {
        if (!result.right) return yield* Effect.fail(new LeaseLost())
        renewed = now
      } else if (now - renewed >= Duration.toMillis(ttl)) {
        return yield* Effect.fail(new LeaseLost())
      }
    }
  })

  // standby: ask for the lease until it is ours (a store that fails meanwhile is logged, not fatal)
  const waitForLease = Effect.retry(
    Effect.tapBoth(acquire, {
      onFailure: (e) =>
        Effect.suspend(() => {
          runner.leaseError = typeof e === "string" ? undefined : e.message
          return typeof e === "string"
            ? Effect.void
            : Effect.logWarning(`projection ${name}: cannot take the lease: ${e.message}`)
        }),
      onSuccess: () =>
        Effect.sync(() => {
          runner.leaseError = undefined
        })
    }),
    Schedule.spaced(renewEvery)
  ).pipe(Effect.orElse(() => Effect.never))

  const cycle = Effect.gen(function*() {
    yield* setState("standby")
    yield* waitForLease
    const lost = yield* Effect.flip(Effect.raceFirst(active, keepLease))
    // a blue/green rebuild in progress is abandoned (the next one starts over); whatever waits on this run is answered
    rebuilding = undefined
    yield* refuseAll("standby", "the lease went to another process")
    yield* Effect.logWarning(`projection ${name}: ${lost instanceof LeaseLost ? "lost its lease" : lost.message}; standing by`)
    yield* Effect.ignore(checkpoints.release(name, owner))
  }).pipe(
    // a safety net: nothing but interruption ends the runner; anything unexpected is logged and the cycle starts over
    Effect.catchAllCause((cause) =>
      Cause.isInterruptedOnly(cause)
        ? Effect.failCause(cause)
        : Effect.zipRight(
          Effect.logError(`projection ${name}: unexpected failure, starting over in 1 s`, cause),
          Effect.zipRight(Effect.ignore(checkpoints.release(name, owner)), Effect.sleep("1 second"))
        )
    )
  )

  return Effect.forever(cycle).pipe(
    Effect.onInterrupt(() =>
      Effect.zipRight(
        Effect.zipRight(
          Effect.ignore(Effect.timeout(checkpoints.release(name, owner), "2 seconds")),
          update((s) => ({ ...s, state: "stopped" }))
        ),
        refuseAll("stopped", "its layer has stopped")
      )
    )
  )
}

// --- inline projections --------------------------------------------------------------------------------------------

/** Registers `projections` with the store's writer for the scope (see `Projection.layerInline`). */
export const makeInline = (projections: ReadonlyArray<Projection<any, any, any>>) =>
  Effect.gen(function*() {
    const store = yield* EventStore
    // a tenant's store keeps the tenant's checkpoints (see `alongside`)
    const checkpoints = yield* Effect.flatMap(CheckpointStore, (c) => alongside(c, tenantOf(store), scopeCheckpoints, "CheckpointStore"))
    const context = yield* Effect.context<never>()
    const inline = inlineOf(store)
    if (inline === undefined) {
      return yield* new InvalidInput({
        field: "projections",
        reason: "this event store does not run inline projections (an SQLite file store does: Sqlite.layer)"
      })
    }
    if (databaseOf(checkpoints) === undefined || databaseOf(checkpoints) !== databaseOf(store)) {
      return yield* new InvalidInput({
        field: "projections",
        reason: "inline projections need the SQL checkpoint store on the event store's own database (SqlProjection.layer)"
      })
    }
    const names = new Set<string>()
    for (const projection of projections) {
      if (projection.statements === undefined) {
        return yield* new InvalidInput({
          field: "projections",
          reason: `${projection.name}: an inline projection is made with Projection.sql (its handlers return statements)`
        })
      }
      if (projection.tables !== undefined) {
        return yield* new InvalidInput({
          field: "projections",
          reason: `${projection.name}: an inline projection does not name its tables through the projection (tables)`
        })
      }
      if (names.has(projection.name)) {
        return yield* new InvalidInput({ field: "projections", reason: `two projections are named ${projection.name}` })
      }
      names.add(projection.name)
    }
    const client = databaseOf(store) as SqlClient.SqlClient
    const owner = crypto.randomUUID()
    for (const projection of projections) {
      const name = projection.name
      // the checkpoint row (no lease is kept: every process that appends runs the projection inline)
      yield* checkpoints.acquire(name, owner, Duration.millis(1))
      yield* checkpoints.release(name, owner)
      yield* Effect.forEach(
        projection.init,
        (migration, i) =>
          Effect.provide(
            checkpoints.migrate(
              name,
              i + 1,
              (typeof migration === "function" ? migration((t: string) => t) : migration) as Effect.Effect<void, unknown, never>
            ),
            context
          ).pipe(
            Effect.mapError((cause) =>
              cause instanceof StoreError ? cause : new StoreError({ operation: `projection.migrate ${name} ${i + 1}`, cause })
            )
          ),
        { discard: true }
      )
      const hook = makeHook(projection, client)
      // catch up with the log in batches between appends, then, in the same synchronous step as the last (empty or
      // short) batch, join the writer: no append can come in between
      let busy = 0
      let remove: (() => void) | undefined = undefined
      while (remove === undefined) {
        const now = yield* Clock.currentTimeMillis
        const step = yield* Effect.try({
          try: () => {
            const n = inline.catchUp(hook, 500, now)
            if (n !== undefined && n < 500) remove = inline.add(hook)
            return n
          },
          catch: (e) =>
            e instanceof DriverFailure ? e.cause : e instanceof InlineProjectionError ? e : new StoreError({ operation: "projection.catchUp", cause: e })
        })
        if (step === undefined) {
          busy++
          yield* busy === 1 ? EventLoop.yieldToLoop : Effect.sleep(Duration.millis(Math.min(50, 2 ** (busy - 1))))
        } else {
          busy = 0
          yield* EventLoop.yieldIfDue
        }
      }
      const registered: () => void = remove
      yield* Effect.addFinalizer(() => Effect.sync(registered))
      yield* Effect.logDebug(`projection ${name}: runs inline`)
    }
  })
