/**
 * Health as a running service reports it: the checks the library's layers register (the event store, each
 * projection), their aggregate, the HTTP endpoint's answers in each phase, and the stop's order (work in flight
 * first). Runs services in this process with `Runtime.start` (no signals, no exit).
 */
import { describe, expect, it } from "@effect/vitest"
import { Errors, Event, EventStore, Health, Projection } from "effect-eventstore"
import * as Runtime from "effect-eventstore/Runtime"
import * as Sqlite from "effect-eventstore/Sqlite"
import Sqlite3 from "better-sqlite3"
import * as Cause from "effect/Cause"
import * as Clock from "effect/Clock"
import * as ConfigProvider from "effect/ConfigProvider"
import * as Deferred from "effect/Deferred"
import * as Effect from "effect/Effect"
import * as Fiber from "effect/Fiber"
import * as Layer from "effect/Layer"
import * as Option from "effect/Option"
import * as Schedule from "effect/Schedule"
import * as Schema from "effect/Schema"
import * as fs from "node:fs"
import * as net from "node:net"
import * as os from "node:os"
import * as path from "node:path"
import * as pg from "./fixtures/pg.js"
import * as Nats from "effect-eventstore/Nats"
import * as NatsServer from "effect-eventstore/NatsServer"
import * as Postgres from "effect-eventstore/Postgres"
import * as Redacted from "effect/Redacted"
import { spawnSync } from "node:child_process"

const inCI = !["", "0", "false"].includes((process.env.CI ?? "").toLowerCase())
const natsInstalled = ["/usr/sbin/nats-server", "/usr/local/bin/nats-server"].some((file) => fs.existsSync(file)) ||
  spawnSync("nats-server", ["--version"]).status === 0
if (!natsInstalled && !inCI) console.log("health.test.ts: the nats-server test skipped: nats-server is not installed")

const Added = Schema.TaggedStruct("Added", { n: Schema.Int })
const Events = Event.registry([Added])

const append = (streamId: string, n: number) =>
  Effect.flatMap(EventStore.EventStore, (store) => store.append(streamId, [{ type: "Added", payload: { n } }]))

const get = (port: number, route: string) =>
  Effect.promise(async () => {
    const response = await fetch(`http://127.0.0.1:${port}${route}`)
    return { status: response.status, body: await response.json() as Runtime.Readiness }
  })

const portOf = (running: Runtime.Running) =>
  Effect.flatMap(running.healthPort, (port) => Option.isSome(port) ? Effect.succeed(port.value) : Effect.die("no port"))

const waitForPhase = (running: Runtime.Running, phase: Runtime.Phase) => poll(running.phase, (p) => p === phase)

/** Runs `effect` until `done` holds of its value (every 10 ms, up to 10 s), and returns that value. */
const poll = <A, E, R>(effect: Effect.Effect<A, E, R>, done: (a: A) => boolean) =>
  effect.pipe(
    Effect.filterOrFail(done),
    Effect.retry(Schedule.spaced("10 millis")),
    Effect.timeout("10 seconds"),
    Effect.orDie
  )

const component = (report: Health.Report, name: string) => report.components.find((c) => c.component === name)

describe("health of a running service", () => {
  it.live("the memory store and each projection register; /health/ready answers 200 with the report", () =>
    Effect.scoped(Effect.gen(function*() {
      const counted = Projection.make({ name: "counted", events: Events, handlers: { Added: () => Effect.void } })
      const AppLive = Projection.layer([counted]).pipe(
        Layer.provideMerge(Layer.merge(EventStore.layerMemory, Projection.layerMemory))
      )
      const running = yield* Runtime.start(AppLive, {
        health: { port: 0, host: "127.0.0.1" },
        main: Effect.zipRight(append("Counter-1", 1), Effect.never)
      })
      yield* waitForPhase(running, "ready")
      const port = yield* portOf(running)
      const ready = yield* poll(get(port, "/health/ready"), (r) => component(r.body, "projections/counted")?.details?.checkpoint === 1)
      expect(ready.status).toBe(200)
      expect(ready.body.status).toBe("healthy")
      expect(ready.body.phase).toBe("ready")
      expect(component(ready.body, "eventstore")).toMatchObject({ status: "healthy", details: { backend: "memory" } })
      expect(component(ready.body, "projections/counted")).toMatchObject({
        status: "healthy",
        details: { state: "live", lag: 0 }
      })
      expect((yield* get(port, "/health/live")).status).toBe(200)
      const outcome = yield* running.stop
      expect(outcome).toMatchObject({ reason: "stopped", exitCode: 0 })
    })))

  it.live("a failed projection makes the service unhealthy: /health/ready answers 503 with the failure", () =>
    Effect.scoped(Effect.gen(function*() {
      const broken = Projection.make<typeof Added.Type, string>({
        name: "broken",
        events: Events,
        handlers: { Added: (e) => e.payload.n === 2 ? Effect.fail("cannot add 2") : Effect.void }
      })
      const AppLive = Projection.layer([broken], { retry: Schedule.recurs(0) }).pipe(
        Layer.provideMerge(Layer.merge(EventStore.layerMemory, Projection.layerMemory))
      )
      const running = yield* Runtime.start(AppLive, {
        health: { port: 0, host: "127.0.0.1" },
        main: Effect.zipRight(Effect.all([append("Counter-1", 1), append("Counter-1", 2)]), Effect.never)
      })
      yield* waitForPhase(running, "ready")
      const port = yield* portOf(running)
      const answer = yield* poll(get(port, "/health/ready"), (r) => r.status === 503)
      expect(answer.status).toBe(503)
      expect(answer.body).toMatchObject({ status: "unhealthy", phase: "ready", ready: false })
      const failed = component(answer.body, "projections/broken")!
      expect(failed.status).toBe("unhealthy")
      expect(failed.reason).toContain("cannot add 2")
      expect(failed.details).toMatchObject({ state: "failed", checkpoint: 0 })
      // the store is still fine, and the aggregate is the worst of them
      expect(component(answer.body, "eventstore")?.status).toBe("healthy")
      expect((yield* running.health).status).toBe("unhealthy")
      // alive all the same: only a stop makes /health/live fail
      expect((yield* get(port, "/health/live")).status).toBe(200)
      yield* running.stop
    })))

  it.live("a projection further behind than lagThreshold is degraded, and degraded is still ready", () =>
    Effect.scoped(Effect.gen(function*() {
      const gate = yield* Deferred.make<void>()
      const slow = Projection.make({
        name: "slow",
        events: Events,
        handlers: { Added: (e) => e.payload.n === 1 ? Effect.void : Deferred.await(gate) }
      })
      // seven events before the projection starts: it handles the first, then waits on the second
      const Seeded = Layer.effectDiscard(Effect.forEach([1, 2, 3, 4, 5, 6, 7], (n) => append("Counter-1", n)))
      const AppLive = Projection.layer([slow], { lagThreshold: 3, batchSize: 1 }).pipe(
        Layer.provideMerge(Seeded),
        Layer.provideMerge(Layer.merge(EventStore.layerMemory, Projection.layerMemory))
      )
      const running = yield* Runtime.start(AppLive, { health: { port: 0, host: "127.0.0.1" } })
      yield* waitForPhase(running, "ready")
      const port = yield* portOf(running)
      const answer = yield* poll(get(port, "/health/ready"), (r) => component(r.body, "projections/slow")?.status === "degraded")
      expect(answer.status).toBe(200)
      expect(answer.body).toMatchObject({ status: "degraded", ready: true })
      const slowReport = component(answer.body, "projections/slow")!
      expect(slowReport.reason).toContain("6 events behind")
      expect(slowReport.details).toMatchObject({ checkpoint: 1, head: 7, lag: 6 })
      yield* Deferred.succeed(gate, undefined)
      const caughtUp = yield* poll(running.health, (r) => component(r, "projections/slow")?.details?.checkpoint === 7)
      expect(component(caughtUp, "projections/slow")?.status).toBe("healthy")
      yield* running.stop
    })))

  it.live("/health/ready answers 503 while the layers are being built, /health/live 200", () =>
    Effect.scoped(Effect.gen(function*() {
      const release = yield* Deferred.make<void>()
      const running = yield* Runtime.start(Layer.effectDiscard(Deferred.await(release)), {
        health: { port: 0, host: "127.0.0.1" }
      })
      const port = yield* portOf(running)
      const starting = yield* get(port, "/health/ready")
      expect(starting.status).toBe(503)
      expect(starting.body).toMatchObject({ phase: "starting", ready: false })
      expect((yield* get(port, "/health/live")).status).toBe(200)
      yield* Deferred.succeed(release, undefined)
      yield* waitForPhase(running, "ready")
      expect((yield* get(port, "/health/ready")).status).toBe(200)
      yield* running.stop
    })))

  it.live("a stop refuses new work, waits for the work in flight, then closes the layers in reverse order", () =>
    Effect.scoped(Effect.gen(function*() {
      const order: Array<string> = []
      const inFlight = yield* Deferred.make<void>()
      const finish = yield* Deferred.make<void>()
      const finished = yield* Deferred.make<string>()
      const resource = (name: string) =>
        Layer.scopedDiscard(Effect.addFinalizer(() => Effect.sync(() => order.push(`close ${name}`))))
      const AppLive = Layer.provideMerge(resource("outer"), resource("inner"))
      const lifecycle = yield* Deferred.make<Runtime.LifecycleService>()
      const main = Effect.gen(function*() {
        yield* Deferred.succeed(lifecycle, yield* Runtime.Lifecycle)
        const work = Runtime.track(
          Effect.zipRight(Deferred.succeed(inFlight, undefined), Effect.zipRight(Deferred.await(finish), Effect.succeed("done")))
        ).pipe(Effect.tap((value) => Effect.sync(() => order.push(`work ${value}`))))
        yield* Effect.fork(Effect.flatMap(work, (value) => Deferred.succeed(finished, value)))
        return yield* Effect.never
      }).pipe(Effect.onInterrupt(() => Effect.sync(() => order.push("main interrupted"))))
      const running = yield* Runtime.start(AppLive, { health: { port: 0, host: "127.0.0.1" }, main })
      yield* Deferred.await(inFlight)
      const port = yield* portOf(running)
      const stopping = yield* Effect.fork(running.stop)
      yield* waitForPhase(running, "stopping")
      // stopping: new work is refused, and the probes say so
      const service = yield* Deferred.await(lifecycle)
      expect(yield* service.inFlight).toBe(1)
      const refused = yield* Effect.flip(service.track(Effect.succeed("ran")))
      expect(refused).toBeInstanceOf(Runtime.ShuttingDown)
      expect((yield* get(port, "/health/live")).status).toBe(503)
      expect((yield* get(port, "/health/ready")).status).toBe(503)
      expect(order).toEqual([])
      yield* Deferred.succeed(finish, undefined)
      const outcome = yield* Fiber.join(stopping)
      expect(outcome).toMatchObject({ reason: "stopped", exitCode: 0 })
      expect(yield* Deferred.await(finished)).toBe("done")
      // the work finished first, main was interrupted next, then the layers closed, last built first
      expect(order).toEqual(["work done", "main interrupted", "close outer", "close inner"])
    })))

  it.live("work tracked after the stop began is refused with ShuttingDown", () =>
    Effect.scoped(Effect.gen(function*() {
      const refused = yield* Deferred.make<string>()
      // uninterruptible until it has answered: the stop interrupts main only after that
      const main = Effect.gen(function*() {
        const lifecycle = yield* Runtime.Lifecycle
        yield* lifecycle.stopping
        const exit = yield* Effect.exit(Runtime.track(Effect.succeed("ran")))
        yield* Deferred.succeed(refused, exit._tag === "Failure" ? JSON.stringify(exit.cause) : "ran")
      }).pipe(Effect.uninterruptible, Effect.zipRight(Effect.never))
      const running = yield* Runtime.start(Layer.empty, { main })
      yield* waitForPhase(running, "ready")
      const outcome = yield* running.stop
      expect(outcome.reason).toBe("stopped")
      expect(yield* Deferred.await(refused)).toContain("ShuttingDown")
    })))

  it.live("outcomes: a failed start, a start timeout, a forced stop, main's success and failure", () =>
    Effect.scoped(Effect.gen(function*() {
      class Boom extends Schema.TaggedError<Boom>()("Boom", {}) {}
      const failed = yield* Effect.flatMap(Runtime.start(Layer.fail(new Boom())), (r) => r.await)
      expect(failed).toMatchObject({ reason: "start-failed", exitCode: 1 })
      const slow = yield* Effect.flatMap(
        Runtime.start(Layer.effectDiscard(Effect.never), { startupTimeout: "50 millis" }),
        (r) => r.await
      )
      expect(slow).toMatchObject({ reason: "start-timeout", exitCode: 1 })
      const stuck = yield* Runtime.start(Layer.scopedDiscard(Effect.addFinalizer(() => Effect.never)), {
        shutdownTimeout: "100 millis"
      })
      yield* waitForPhase(stuck, "ready")
      const forced = yield* stuck.stop
      expect(forced).toMatchObject({ reason: "forced", exitCode: 2 })
      // the cause says what stayed open
      expect(Cause.squash(forced.cause!)).toMatchObject({ _tag: "ShutdownTimeout", open: "the layers did not close" })
      // a main that does not stop is forced too (and does not hold the scope's close)
      const stubborn = yield* Runtime.start(Layer.empty, {
        main: Effect.uninterruptible(Effect.never),
        shutdownTimeout: "100 millis"
      })
      yield* waitForPhase(stubborn, "ready")
      const forcedMain = yield* stubborn.stop
      expect(forcedMain).toMatchObject({ reason: "forced", exitCode: 2 })
      expect(Cause.squash(forcedMain.cause!)).toBeInstanceOf(Runtime.ShutdownTimeout)
      expect(Cause.squash(forcedMain.cause!)).toMatchObject({ open: "main did not stop", timeoutMillis: 100 })
      const done = yield* Effect.flatMap(Runtime.start(Layer.empty, { main: Effect.succeed(1) }), (r) => r.await)
      expect(done).toMatchObject({ reason: "completed", exitCode: 0 })
      const broken = yield* Effect.flatMap(Runtime.start(Layer.empty, { main: new Boom() }), (r) => r.await)
      expect(broken).toMatchObject({ reason: "failed", exitCode: 1 })
    })))

  it.live("the SQLite store's check reads the head and probes the writer: unhealthy when it refuses writes, nothing written", () =>
    Effect.scoped(Effect.gen(function*() {
      const dir = fs.mkdtempSync(path.join(os.tmpdir(), "effect-eventstore-health-"))
      const filename = path.join(dir, "store.db")
      // the store's writer connection is the one opened with `busy_timeout = 0` (see Sqlite.writerPragmas)
      const writers = yield* Effect.acquireRelease(
        Effect.sync(() => {
          const original = Sqlite3.prototype.pragma
          const opened: Array<Sqlite3.Database> = []
          Sqlite3.prototype.pragma = function(this: Sqlite3.Database, source: string, options?: Sqlite3.PragmaOptions) {
            if (source === "busy_timeout = 0") opened.push(this)
            return original.call(this, source, options)
          }
          return { opened, original }
        }),
        ({ original }) => Effect.sync(() => (Sqlite3.prototype.pragma = original))
      )
      const [before, refused, after, unchanged] = yield* Effect.gen(function*() {
        yield* append("Counter-1", 1)
        yield* append("Counter-1", 2)
        const db = yield* Effect.acquireRelease(
          Effect.sync(() => new Sqlite3(filename, { readonly: true })),
          (db) => Effect.sync(() => db.close())
        )
        const state = () => [db.pragma("user_version", { simple: true }), db.pragma("data_version", { simple: true })]
        const initially = state()
        const before = yield* Health.check
        expect(writers.opened).toHaveLength(1)
        writers.opened[0]!.pragma("query_only = 1")
        const refused = yield* Health.check
        writers.opened[0]!.pragma("query_only = 0")
        const after = yield* Health.check
        // the probes changed nothing in the file: the same user_version, and no commit seen by another connection
        return [before, refused, after, JSON.stringify(state()) === JSON.stringify(initially)] as const
      }).pipe(Effect.scoped, Effect.provide(Sqlite.layer({ filename }).pipe(Layer.provideMerge(Health.layer()))))
      expect(component(before, "eventstore")).toMatchObject({ status: "healthy", details: { backend: "sqlite", head: 2 } })
      expect(component(refused, "eventstore")).toMatchObject({ status: "unhealthy", details: { head: 2 } })
      expect(component(refused, "eventstore")?.reason).toMatch(/^not writable: .*readonly/)
      expect(component(after, "eventstore")?.status).toBe("healthy")
      expect(unchanged).toBe(true)
      // and nothing in the log: still two events
      const again = yield* Effect.flatMap(EventStore.EventStore, (store) => store.head).pipe(
        Effect.provide(Sqlite.layer({ filename }))
      )
      expect(again).toBe(2)
    })))

  it.live("a layer's check is removed when its scope closes", () =>
    Effect.gen(function*() {
      const health = yield* Health.make()
      yield* Effect.scoped(Effect.gen(function*() {
        yield* Layer.buildWithScope(EventStore.layerMemory, yield* Effect.scope)
        expect((yield* health.check).components.map((c) => c.component)).toEqual(["eventstore"])
      }).pipe(Effect.provideService(Health.Health, health)))
      expect((yield* health.check).components).toEqual([])
    }))

  it.live.skipIf(!pg.available)("the PostgreSQL store's check: reachable and not read-only", () =>
    Effect.gen(function*() {
      const report = yield* Health.check.pipe(
        Effect.provide(
          Postgres.layer({ url: Redacted.make(pg.url), schema: pg.freshSchema("health") }).pipe(
            Layer.provideMerge(Health.layer())
          )
        )
      )
      expect(component(report, "eventstore")).toMatchObject({
        status: "healthy",
        details: { backend: "postgresql", head: 0 }
      })
    }))

  it.live.skipIf(!natsInstalled && !inCI)("a local nats-server and a connection to it start and stop under the runtime", () =>
    Effect.scoped(Effect.gen(function*() {
      // the connection is built on the server, so it closes (drains) before the server stops
      const NatsLive = Layer.unwrapEffect(Effect.map(NatsServer.NatsServer, (server) => Nats.layer({ servers: server.url })))
        .pipe(Layer.provideMerge(NatsServer.layer()))
      const ports = yield* Deferred.make<number>()
      const running = yield* Runtime.start(NatsLive, {
        shutdownTimeout: "8 seconds",
        main: Effect.zipRight(
          Effect.flatMap(NatsServer.NatsServer, (server) => Deferred.succeed(ports, server.port)),
          Effect.never
        )
      })
      const port = yield* Deferred.await(ports)
      expect(yield* running.phase).toBe("ready")
      const started = Date.now()
      const outcome = yield* running.stop
      expect(outcome).toMatchObject({ reason: "stopped", exitCode: 0 })
      // a drain that waited on a stopped server would have taken its 10 s drain timeout
      expect(Date.now() - started).toBeLessThan(8_000)
      // the server is gone with the layers
      const refused = yield* Effect.promise(() =>
        new Promise<boolean>((resolve) => {
          const socket = net.connect(port, "127.0.0.1")
          socket.on("connect", () => (socket.destroy(), resolve(false)))
          socket.on("error", () => resolve(true))
        })
      )
      expect(refused).toBe(true)
    })))

  it.live("closing the scope of Runtime.start stops the service gracefully: work in flight first, then the layers", () =>
    Effect.gen(function*() {
      const order: Array<string> = []
      const inFlight = yield* Deferred.make<void>()
      const AppLive = Layer.scopedDiscard(Effect.addFinalizer(() => Effect.sync(() => order.push("layer closed"))))
      const main = Effect.zipRight(
        Runtime.track(
          Effect.zipRight(Deferred.succeed(inFlight, undefined), Effect.sleep("100 millis")).pipe(
            Effect.zipRight(Effect.sync(() => order.push("work done")))
          )
        ),
        Effect.never
      )
      yield* Effect.scoped(Effect.gen(function*() {
        yield* Runtime.start(AppLive, { main })
        yield* Deferred.await(inFlight)
      }))
      expect(order).toEqual(["work done", "layer closed"])
    }))

  it.live("a check that does not answer in time is unhealthy at the timeout, even when it cannot be interrupted", () =>
    Effect.scoped(Effect.gen(function*() {
      const health = yield* Health.make({ timeout: "100 millis" })
      yield* health.register("stuck", Effect.as(Effect.uninterruptible(Effect.sleep("3 seconds")), Health.healthy()))
      yield* health.register("fine", Effect.succeed(Health.healthy()))
      const started = Date.now()
      const report = yield* health.check
      expect(Date.now() - started).toBeLessThan(1_500)
      expect(report.status).toBe("unhealthy")
      expect(component(report, "stuck")).toMatchObject({ status: "unhealthy", reason: "timed out" })
      expect(component(report, "fine")?.status).toBe("healthy")
    })))

  it.live("each projection is projections/<name> whatever layer runs it; a second store is eventstore#2", () =>
    Effect.gen(function*() {
      const health = yield* Health.make()
      const one = Projection.make({ name: "one", events: Events, handlers: { Added: () => Effect.void } })
      const two = Projection.make({ name: "two", events: Events, handlers: { Added: () => Effect.void } })
      const AppLive = Layer.merge(Projection.layer([one]), Projection.layer([two])).pipe(
        Layer.provideMerge(Layer.merge(EventStore.layerMemory, Projection.layerMemory)),
        Layer.merge(Layer.fresh(EventStore.layerMemory))
      )
      yield* Effect.scoped(Effect.gen(function*() {
        yield* Layer.buildWithScope(AppLive, yield* Effect.scope)
        expect((yield* health.check).components.map((c) => c.component).sort()).toEqual([
          "eventstore",
          "eventstore#2",
          "projections/one",
          "projections/two"
        ])
      }).pipe(Effect.provideService(Health.Health, health)))
    }))

  it.live("a projection standing by because its checkpoint store refuses the lease is degraded, with the reason", () =>
    Effect.gen(function*() {
      const health = yield* Health.make()
      const one = Projection.make({ name: "leaseless", events: Events, handlers: { Added: () => Effect.void } })
      let refuse = true
      const flaky = Layer.effect(
        Projection.CheckpointStore,
        Effect.map(Projection.makeMemory, (store): Projection.CheckpointStoreService => ({
          ...store,
          acquire: (...args) =>
            Effect.suspend(() =>
              refuse ? Effect.fail(new Errors.StoreError({ operation: "acquire", cause: "database is down" })) : store.acquire(...args)
            )
        }))
      )
      const AppLive = Projection.layer([one], { leaseTtl: "300 millis" }).pipe(
        Layer.provideMerge(Layer.merge(EventStore.layerMemory, flaky))
      )
      yield* Effect.scoped(Effect.gen(function*() {
        yield* Layer.buildWithScope(AppLive, yield* Effect.scope)
        const refused = yield* poll(
          Effect.map(health.check, (report) => component(report, "projections/leaseless")),
          (c) => c?.status === "degraded"
        )
        expect(refused?.reason).toContain("cannot take the lease")
        refuse = false
        yield* poll(
          Effect.map(health.check, (report) => component(report, "projections/leaseless")),
          (c) => c?.status === "healthy" && c.details?.["state"] === "live"
        )
      }).pipe(Effect.provideService(Health.Health, health)))
    }))

  it.live("a projection stuck in a batch: the lag is measured against the head now, and it is degraded once stalled", () =>
    Effect.scoped(Effect.gen(function*() {
      const gate = yield* Deferred.make<void>()
      const hung = Projection.make({
        name: "hung",
        events: Events,
        handlers: { Added: (e) => e.payload.n === 2 ? Deferred.await(gate) : Effect.void }
      })
      // one event a batch: the checkpoint moves past event 1 before the handler hangs on event 2
      const AppLive = Projection.layer([hung], { lagThreshold: 5, batchSize: 1 }).pipe(
        Layer.provideMerge(Layer.merge(EventStore.layerMemory, Projection.layerMemory))
      )
      const stores = yield* Deferred.make<EventStore.EventStoreService>()
      const running = yield* Runtime.start(AppLive, {
        main: Effect.zipRight(Effect.flatMap(EventStore.EventStore, (store) => Deferred.succeed(stores, store)), Effect.never)
      })
      const appendAll = (ns: ReadonlyArray<number>) =>
        Effect.flatMap(Deferred.await(stores), (store) =>
          Effect.forEach(ns, (n) => Effect.provideService(append("Counter-1", n), EventStore.EventStore, store)))
      yield* appendAll([1, 2, 3])
      const hungOf = (report: Health.Report) => component(report, "projections/hung")
      // stuck on event 2: checkpoint 1, two behind (within lagThreshold): healthy, and the stall is timed from here
      const first = yield* poll(running.health, (r) => hungOf(r)?.details?.checkpoint === 1 && hungOf(r)?.details?.head === 3)
      expect(hungOf(first)).toMatchObject({ status: "healthy", details: { lag: 2 } })
      // the same checkpoint 31 s later, still behind: stalled (degraded, so still ready)
      const later = yield* Effect.withClock(running.health, shifted(31_000))
      expect(hungOf(later)).toMatchObject({ status: "degraded", details: { checkpoint: 1, head: 3, lag: 2 } })
      expect(hungOf(later)?.reason).toMatch(/^stalled: the checkpoint has not moved for 3\d s, 2 events behind the head$/)
      expect(later.ready).toBe(true)
      // events arriving while its handler hangs count at once (its own status still shows its last batch)
      yield* appendAll([4, 5, 6, 7, 8, 9, 10])
      const behind = hungOf(yield* running.health)
      expect(behind).toMatchObject({ status: "degraded", details: { checkpoint: 1, head: 10, lag: 9 } })
      expect(behind?.reason).toBe("9 events behind the head (more than 5)")
      yield* Deferred.succeed(gate, undefined)
      const caughtUp = yield* poll(running.health, (r) => hungOf(r)?.details?.checkpoint === 10)
      expect(hungOf(caughtUp)).toMatchObject({ status: "healthy", details: { lag: 0 } })
      // caught up: no stall however long it stays there
      expect(hungOf(yield* Effect.withClock(running.health, shifted(120_000)))?.status).toBe("healthy")
      yield* running.stop
    })))

  it.live("a nested track inside tracked work runs during the stop (it is part of the work in flight)", () =>
    Effect.scoped(Effect.gen(function*() {
      const started = yield* Deferred.make<void>()
      const result = yield* Deferred.make<string>()
      const main = Effect.gen(function*() {
        const lifecycle = yield* Runtime.Lifecycle
        const work = Runtime.track(Effect.gen(function*() {
          yield* Deferred.succeed(started, undefined)
          yield* lifecycle.stopping
          // a helper that tracks its own work, called from tracked work after the stop began
          return yield* Runtime.track(Effect.succeed("nested ran"))
        }))
        yield* Effect.fork(Effect.flatMap(Effect.either(work), (r) =>
          Deferred.succeed(result, r._tag === "Right" ? r.right : r.left._tag)))
        return yield* Effect.never
      })
      const running = yield* Runtime.start(Layer.empty, { main })
      yield* Deferred.await(started)
      const outcome = yield* running.stop
      expect(outcome).toMatchObject({ reason: "stopped", exitCode: 0 })
      expect(yield* Deferred.await(result)).toBe("nested ran")
    })))

  it.live("HEALTH_PORT=0 (and HEALTH_HOST) from the configuration: the endpoint listens on a free port", () =>
    Effect.scoped(Effect.gen(function*() {
      const running = yield* Runtime.start(Layer.empty).pipe(
        Effect.withConfigProvider(ConfigProvider.fromMap(new Map([["HEALTH_PORT", "0"], ["HEALTH_HOST", "127.0.0.1"]])))
      )
      yield* waitForPhase(running, "ready")
      const port = yield* portOf(running)
      expect(port).toBeGreaterThan(0)
      expect((yield* get(port, "/health/ready")).status).toBe(200)
      expect(yield* running.stop).toMatchObject({ reason: "stopped", exitCode: 0 })
    })))

  it.live("a HEALTH_PORT out of range fails the start", () =>
    Effect.scoped(Effect.gen(function*() {
      const outcome = yield* Effect.flatMap(
        Runtime.start(Layer.empty).pipe(
          Effect.withConfigProvider(ConfigProvider.fromMap(new Map([["HEALTH_PORT", "65536"]])))
        ),
        (running) => running.await
      )
      expect(outcome).toMatchObject({ reason: "start-failed", exitCode: 1 })
    })))
})

/** The real clock, `offsetMillis` ahead: what a check sees that long later. */
const shifted = (offsetMillis: number): Clock.Clock => {
  const real = Clock.make()
  const millis = () => real.unsafeCurrentTimeMillis() + offsetMillis
  const nanos = () => real.unsafeCurrentTimeNanos() + BigInt(offsetMillis) * 1_000_000n
  return {
    [Clock.ClockTypeId]: Clock.ClockTypeId,
    unsafeCurrentTimeMillis: millis,
    unsafeCurrentTimeNanos: nanos,
    currentTimeMillis: Effect.sync(millis),
    currentTimeNanos: Effect.sync(nanos),
    sleep: (duration) => real.sleep(duration)
  }
}
