/**
 * The projection conformance suite: checkpoint stores and the runner over them, run by every backend's test file.
 * `makeEnv` builds a fresh backend (an empty event store, a checkpoint store, and a small read model the suite's
 * projections write to); each test gets its own.
 */
import { describe, expect, it } from "@effect/vitest"
import type * as SqlClient from "@effect/sql/SqlClient"
import type * as Statement from "@effect/sql/Statement"
import { Event, EventStore, Projection, Tenancy } from "effect-eventstore"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Fiber from "effect/Fiber"
import type * as Layer from "effect/Layer"
import * as Schedule from "effect/Schedule"
import * as Schema from "effect/Schema"
import type * as Scope from "effect/Scope"
import * as Stream from "effect/Stream"

/** A read model the suite's handlers write to: which positions each projection handled, in order. */
export interface ReadModel<R> {
  readonly init: (projection: string) => Effect.Effect<void, unknown, R>
  readonly add: (projection: string, event: Event.RecordedEvent) => Effect.Effect<void, unknown, R>
  readonly seen: (projection: string) => Effect.Effect<ReadonlyArray<number>, unknown, R>
  /** Empties what `projection` recorded (its reset, for a rebuild). */
  readonly reset: (projection: string) => Effect.Effect<void, unknown, R>
  /** Records that migration `id` of `projection` ran (each run counts). */
  readonly migrated: (projection: string, id: number) => Effect.Effect<void, unknown, R>
  readonly migrations: (projection: string) => Effect.Effect<ReadonlyArray<number>, unknown, R>
}

export interface Env<R> {
  readonly layer: Layer.Layer<EventStore.EventStore | Projection.CheckpointStore | R, unknown>
  readonly model: ReadModel<R>
  /**
   * When given, the suite's projections are `Projection.sql` ones whose handlers return this statement (instead of
   * running `model.add`).
   */
  readonly statement?: (projection: string, event: Event.RecordedEvent, sql: SqlClient.SqlClient) => Statement.Statement<unknown>
}

const Added = Schema.TaggedStruct("Added", { n: Schema.Int })
const Noted = Schema.TaggedStruct("Noted", { text: Schema.String })
const Events = Event.registry([Added, Noted])

const uid = () => crypto.randomUUID().replace(/-/g, "").slice(0, 10)

const added = (n: number) => ({ type: "Added", payload: { n } })
const other = (text: string) => ({ type: "Other", payload: { text } })

export const projectionSuite = <R>(name: string, makeEnv: () => Env<R>) =>
  describe(`Projection conformance: ${name}`, () => {
    const run = <A, E>(
      body: (env: Env<R>) => Effect.Effect<A, E, EventStore.EventStore | Projection.CheckpointStore | R | Scope.Scope>
    ) =>
      Effect.suspend(() => {
        const env = makeEnv()
        current = env
        return Effect.scoped(Effect.provide(body(env), env.layer))
      })

    // A projection recording every Added event it handles (and failing where `fail` says).
    let current: Env<R> | undefined
    const recorder = (model: ReadModel<R>, options: {
      readonly name?: string
      readonly streamTypes?: ReadonlyArray<string>
      readonly fail?: (event: Event.RecordedEvent) => boolean
      readonly init?: number
    } = {}) => {
      const pname = options.name ?? `p${uid()}`
      const migrations = Array.from({ length: options.init ?? 1 }, (_, i) =>
        i === 0
          ? Effect.zipRight(model.init(pname), model.migrated(pname, 1))
          : model.migrated(pname, i + 1))
      const statement = current?.statement
      if (statement !== undefined) {
        return Projection.sql({
          name: pname,
          events: Events,
          reset: model.reset(pname),
          ...(options.streamTypes ? { streamTypes: options.streamTypes } : {}),
          init: migrations,
          handlers: {
            Added: (event, sql) => {
              if (options.fail?.(event)) throw new Error(`cannot handle ${event.position}`)
              return statement(pname, event, sql)
            }
          }
        }) as unknown as Projection.Projection<any, unknown, R>
      }
      return Projection.make({
        name: pname,
        events: Events,
        reset: model.reset(pname),
        ...(options.streamTypes ? { streamTypes: options.streamTypes } : {}),
        init: migrations,
        handlers: {
          Added: (event) =>
            options.fail?.(event) ? Effect.fail(new Error(`cannot handle ${event.position}`)) : model.add(pname, event)
        }
      })
    }

    // What the read model holds, as positions: exactly what was handled where the store is exactly-once; with an
    // at-least-once store, each position once (a failed batch is handled again), and every one at least once.
    const seenBy = (model: ReadModel<R>, projection: string) =>
      Effect.gen(function*() {
        const checkpoints = yield* Projection.CheckpointStore
        const seen = yield* model.seen(projection)
        if (checkpoints.exactlyOnce) return seen
        return [...new Set(seen)]
      })

    // waits until the projection has started (its migrations applied) and caught up
    const live = (projections: Projection.ProjectionsService, name: string) =>
      Stream.runHead(Stream.filter(projections.changes(name), (st) => st.state === "live")).pipe(
        Effect.timeoutFail({ duration: "10 seconds", onTimeout: () => new Error(`${name} never went live`) })
      )

    const options = (extra: Partial<Projection.Options> = {}): Projection.Options => ({
      leaseTtl: "1 second",
      ...extra
    })

    it.live("catches up from the beginning, then handles each new commit; status says where it is", () =>
      run(({ model }) =>
        Effect.gen(function*() {
          const store = yield* EventStore.EventStore
          const s = `Acc${uid()}`
          for (let i = 0; i < 7; i++) yield* store.append(`${s}-1`, [added(i), added(i + 100)])
          const p = recorder(model)
          const projections = yield* Projection.start([p], options({ batchSize: 5 }))
          yield* projections.awaitPosition(p.name, yield* store.head, "10 seconds")
          expect((yield* seenBy(model, p.name)).length).toBe(14)
          const status = yield* projections.status(p.name)
          expect(status).toMatchObject({ name: p.name, state: "live", lag: 0, failure: undefined })
          expect(status.checkpoint).toBe(yield* store.head)
          const r = yield* store.append(`${s}-2`, [added(1)])
          yield* projections.awaitPosition(p.name, r.position, "5 seconds")
          const seen = yield* seenBy(model, p.name)
          expect(seen.length).toBe(15)
          expect(seen[14]).toBe(r.position)
          expect(yield* Effect.flip(projections.status("nope"))).toMatchObject({ _tag: "ProjectionNotFound" })
        })))

    it.live("types without a handler, other registries' events and other stream types move the checkpoint on", () =>
      run(({ model }) =>
        Effect.gen(function*() {
          const store = yield* EventStore.EventStore
          const a = `A${uid()}`
          const b = `B${uid()}`
          yield* store.append(`${a}-1`, [added(1), { type: "Noted", payload: { text: "x" } }])
          yield* store.append(`${b}-1`, [added(2)])
          const last = yield* store.append(`${a}-2`, [other("y"), other("z")])
          const p = recorder(model, { streamTypes: [a] })
          const projections = yield* Projection.start([p], options())
          yield* projections.awaitPosition(p.name, last.position, "10 seconds")
          const status = yield* projections.status(p.name)
          expect(status.checkpoint).toBe(last.position)
          expect(status.state).toBe("live")
          expect(yield* seenBy(model, p.name)).toHaveLength(1)
        })))

    it.live("appends racing with catch-up: every event once, in position order", () =>
      run(({ model }) =>
        Effect.gen(function*() {
          const store = yield* EventStore.EventStore
          const s = `R${uid()}`
          yield* Effect.forEach(Array.from({ length: 40 }, (_, i) => i), (i) => store.append(`${s}-${i % 5}`, [added(i)]), {
            discard: true
          })
          const p = recorder(model)
          const projections = yield* Projection.start([p], options({ batchSize: 7 }))
          const writers = yield* Effect.fork(Effect.forEach(
            Array.from({ length: 160 }, (_, i) => i),
            (i) => store.append(`${s}-${i % 9}`, [added(i), added(-i)]),
            { concurrency: 8, discard: true }
          ))
          yield* Fiber.join(writers)
          const head = yield* store.head
          yield* projections.awaitPosition(p.name, head, "20 seconds")
          const seen = yield* seenBy(model, p.name)
          const all = yield* Stream.runCollect(store.readAll({ filter: { streamTypes: [s] } }))
          expect(seen).toEqual([...all].map((e) => e.position))
        })))

    it.live("a restart resumes after the checkpoint: nothing handled twice, nothing missed", () =>
      run(({ model }) =>
        Effect.gen(function*() {
          const store = yield* EventStore.EventStore
          const s = `S${uid()}`
          const p = recorder(model)
          yield* store.append(`${s}-1`, [added(1), added(2), added(3)])
          yield* Effect.scoped(Effect.gen(function*() {
            const projections = yield* Projection.start([p], options({ batchSize: 2 }))
            yield* projections.awaitPosition(p.name, yield* store.head, "10 seconds")
          }))
          yield* store.append(`${s}-1`, [added(4), added(5)])
          const projections = yield* Projection.start([p], options({ batchSize: 2 }))
          yield* projections.awaitPosition(p.name, yield* store.head, "10 seconds")
          const all = yield* Stream.runCollect(store.readAll({ filter: { streamTypes: [s] } }))
          expect(yield* seenBy(model, p.name)).toEqual([...all].map((e) => e.position))
          expect(yield* model.migrations(p.name)).toEqual([1])
        })))

    it.live("migrations apply once; one added to the list applies at the next start", () =>
      run(({ model }) =>
        Effect.gen(function*() {
          const name = `m${uid()}`
          yield* Effect.scoped(Effect.gen(function*() {
            const projections = yield* Projection.start([recorder(model, { name, init: 2 })], options())
            yield* live(projections, name)
          }))
          expect(yield* model.migrations(name)).toEqual([1, 2])
          yield* Effect.scoped(Effect.gen(function*() {
            const projections = yield* Projection.start([recorder(model, { name, init: 2 })], options())
            yield* live(projections, name)
          }))
          expect(yield* model.migrations(name)).toEqual([1, 2])
          const projections = yield* Projection.start([recorder(model, { name, init: 3 })], options())
          yield* live(projections, name)
          expect(yield* model.migrations(name)).toEqual([1, 2, 3])
        })))

    it.live("a failing handler is retried, then the projection fails naming the event; park skips it and it goes on", () =>
      run(({ model }) =>
        Effect.gen(function*() {
          const store = yield* EventStore.EventStore
          const s = `F${uid()}`
          yield* store.append(`${s}-1`, [added(1), added(2)])
          const poison = yield* store.append(`${s}-2`, [added(666)])
          yield* store.append(`${s}-1`, [added(3)])
          let attempts = 0
          const p = recorder(model, {
            fail: (e) => {
              if (e.position !== poison.position) return false
              attempts++
              return true
            }
          })
          const healthy = recorder(model)
          const projections = yield* Projection.start([p, healthy], options({ retry: Schedule.recurs(2) }))
          const head = yield* store.head
          yield* projections.awaitPosition(healthy.name, head, "10 seconds")
          const failure = yield* Effect.flip(projections.awaitPosition(p.name, head, "20 seconds"))
          expect(failure).toMatchObject({
            _tag: "ProjectionFailed",
            projection: p.name,
            position: poison.position,
            eventType: "Added",
            eventId: poison.events[0]!.eventId,
            streamId: `${s}-2`
          })
          expect(attempts).toBe(3) // the first try and 2 retries
          const status = yield* projections.status(p.name)
          expect(status.state).toBe("failed")
          expect(status.failure?.position).toBe(poison.position)
          expect(status.checkpoint).toBeLessThan(poison.position)
          const parked = yield* projections.park(p.name)
          expect(parked).toMatchObject({ projection: p.name, position: poison.position, eventType: "Added" })
          yield* projections.awaitPosition(p.name, head, "10 seconds")
          expect(yield* projections.parked(p.name)).toEqual([parked])
          const all = yield* Stream.runCollect(store.readAll({ filter: { streamTypes: [s] } }))
          expect(yield* seenBy(model, p.name)).toEqual([...all].map((e) => e.position).filter((x) => x !== poison.position))
          expect(yield* seenBy(model, healthy.name)).toEqual([...all].map((e) => e.position))
          expect(yield* Effect.flip(projections.park(p.name))).toMatchObject({ _tag: "ProjectionStateError" })
        })), 30_000)

    it.live("resume retries a failed projection (a handler that failed for a while)", () =>
      run(({ model }) =>
        Effect.gen(function*() {
          const store = yield* EventStore.EventStore
          const s = `Q${uid()}`
          const r = yield* store.append(`${s}-1`, [added(1)])
          let broken = true
          const p = recorder(model, { fail: () => broken })
          const projections = yield* Projection.start([p], options({ retry: Schedule.recurs(1), batchSize: 10 }))
          yield* Effect.flip(projections.awaitPosition(p.name, r.position, "20 seconds"))
          broken = false
          // a second resume of the same failure is refused, not queued for a later one
          const [first, second] = yield* Effect.all(
            [Effect.either(projections.resume(p.name)), Effect.either(projections.resume(p.name))],
            { concurrency: "unbounded" }
          )
          expect([first._tag, second._tag].sort()).toEqual(["Left", "Right"])
          yield* projections.awaitPosition(p.name, r.position, "10 seconds")
          expect(yield* seenBy(model, p.name)).toEqual([r.position])
          expect(yield* Effect.flip(projections.resume(p.name))).toMatchObject({ _tag: "ProjectionStateError" })
        })), 30_000)

    it.live("an event that does not decode fails that projection alone, without retries; others go on", () =>
      run(({ model }) =>
        Effect.gen(function*() {
          const store = yield* EventStore.EventStore
          const s = `D${uid()}`
          yield* store.append(`${s}-1`, [added(1)])
          const bad = yield* store.append(`${s}-1`, [{ type: "Added", payload: { n: "not a number" } }])
          yield* store.append(`${s}-1`, [added(2)])
          const p = recorder(model)
          const healthy = Projection.make({
            name: `h${uid()}`,
            events: Event.registry([Noted]),
            handlers: { Noted: () => Effect.void }
          })
          const projections = yield* Projection.start([p, healthy], options())
          const head = yield* store.head
          const failure = yield* Effect.flip(projections.awaitPosition(p.name, head, "10 seconds"))
          expect(failure).toMatchObject({ _tag: "ProjectionFailed", position: bad.position, eventType: "Added" })
          yield* projections.awaitPosition(healthy.name, head, "10 seconds")
          yield* projections.park(p.name)
          yield* projections.awaitPosition(p.name, head, "10 seconds")
          expect((yield* seenBy(model, p.name)).length).toBe(2)
        })))

    it.live("awaitPosition times out with the checkpoint it reached", () =>
      run(({ model }) =>
        Effect.gen(function*() {
          const store = yield* EventStore.EventStore
          const p = recorder(model)
          const projections = yield* Projection.start([p], options())
          const head = yield* store.head
          const error = yield* Effect.flip(projections.awaitPosition(p.name, head + 1000, "200 millis"))
          expect(error).toMatchObject({ _tag: "ProjectionTimeout", projection: p.name, position: head + 1000 })
        })))

    it.live("two runners of one projection: one is active, the other stands by and takes over when it stops", () =>
      run(({ model }) =>
        Effect.gen(function*() {
          const store = yield* EventStore.EventStore
          const s = `L${uid()}`
          const p = recorder(model)
          yield* store.append(`${s}-1`, [added(1)])
          const first = yield* Effect.forkScoped(Effect.scoped(Effect.gen(function*() {
            const projections = yield* Projection.start([p], options())
            yield* projections.awaitPosition(p.name, yield* store.head, "10 seconds")
            yield* Effect.never
          })))
          // let the first take the lease
          yield* Effect.sleep("300 millis")
          const second = yield* Projection.start([p], options())
          yield* Effect.sleep("300 millis")
          expect((yield* second.status(p.name)).state).toBe("standby")
          // read-your-writes from the standby process: it follows the checkpoint the active one saves
          const r0 = yield* store.append(`${s}-1`, [added(5)])
          yield* second.awaitPosition(p.name, r0.position, "10 seconds")
          expect(yield* Effect.flip(Stream.runDrain(second.rebuild(p.name)))).toMatchObject({
            _tag: "ProjectionStateError",
            state: "standby"
          })
          yield* Fiber.interrupt(first)
          const r = yield* store.append(`${s}-1`, [added(2)])
          yield* second.awaitPosition(p.name, r.position, "10 seconds")
          expect(yield* seenBy(model, p.name)).toHaveLength(3)
        })))

    it.live("rebuild: resets, replays with progress while appends go on, and ends as the first build did", () =>
      run(({ model }) =>
        Effect.gen(function*() {
          const store = yield* EventStore.EventStore
          const s = `B${uid()}`
          yield* Effect.forEach(Array.from({ length: 30 }, (_, i) => i), (i) => store.append(`${s}-${i % 4}`, [added(i)]), {
            discard: true
          })
          const p = recorder(model)
          const projections = yield* Projection.start([p], options({ batchSize: 4 }))
          yield* projections.awaitPosition(p.name, yield* store.head, "10 seconds")
          const first = yield* seenBy(model, p.name)
          const writer = yield* Effect.fork(Effect.forEach(
            Array.from({ length: 10 }, (_, i) => i),
            (i) => store.append(`${s}-9`, [added(i)]),
            { discard: true }
          ))
          const progress = yield* Stream.runCollect(projections.rebuild(p.name))
          yield* Fiber.join(writer)
          yield* projections.awaitPosition(p.name, yield* store.head, "10 seconds")
          const last = [...progress].at(-1)!
          expect(last.done).toBe(true)
          expect(last.processed).toBeGreaterThanOrEqual(30)
          expect(last.total).toBeGreaterThanOrEqual(first[first.length - 1]!)
          const all = yield* Stream.runCollect(store.readAll({ filter: { streamTypes: [s] } }))
          const rebuilt = yield* seenBy(model, p.name)
          expect(rebuilt).toEqual([...all].map((e) => e.position))
          expect(rebuilt.slice(0, first.length)).toEqual(first)
          expect((yield* projections.status(p.name)).state).toBe("live")
          const withoutReset = Projection.make({ name: `n${uid()}`, events: Events, handlers: {} })
          const other = yield* Projection.start([withoutReset], options())
          expect(yield* Effect.flip(Stream.runDrain(other.rebuild(withoutReset.name)))).toMatchObject({
            _tag: "ProjectionStateError"
          })
        })), 30_000)

    it.live("a handler that throws (a defect) stops that projection as a failure; it does not die", () =>
      run(() =>
        Effect.gen(function*() {
          const store = yield* EventStore.EventStore
          const r = yield* store.append(`T${uid()}-1`, [added(1)])
          const p = Projection.make({
            name: `t${uid()}`,
            events: Events,
            handlers: {
              Added: (): Effect.Effect<void> => {
                throw new Error("boom")
              }
            }
          })
          const projections = yield* Projection.start([p], options({ retry: Schedule.recurs(0) }))
          const failure = yield* Effect.flip(projections.awaitPosition(p.name, r.position, "10 seconds"))
          expect(failure).toMatchObject({ _tag: "ProjectionFailed", position: r.position })
          expect((failure as Projection.ProjectionFailed).reason).toContain("boom")
          expect((yield* projections.status(p.name)).state).toBe("failed")
        })))

    it.live("the checkpoint store: a commit from the wrong position or owner writes nothing; leases; parked events", () =>
      run(({ model }) =>
        Effect.gen(function*() {
          const checkpoints = yield* Projection.CheckpointStore
          const p = `c${uid()}`
          yield* model.init(p)
          expect(yield* checkpoints.acquire(p, "a", Duration.seconds(30))).toBe(true)
          expect(yield* checkpoints.acquire(p, "b", Duration.seconds(30))).toBe(false)
          expect(yield* checkpoints.load(p)).toBe(0)
          const event = { position: 5 } as Event.RecordedEvent
          yield* checkpoints.commit(p, "a", 0, 5, model.add(p, event))
          expect(yield* checkpoints.load(p)).toBe(5)
          const conflicts = [
            checkpoints.commit(p, "a", 0, 9, model.add(p, { position: 9 } as Event.RecordedEvent)),
            checkpoints.commit(p, "b", 5, 9, model.add(p, { position: 9 } as Event.RecordedEvent)),
            checkpoints.commit(p, "a", 5, 5, model.add(p, { position: 9 } as Event.RecordedEvent))
          ]
          for (const commit of conflicts) {
            expect(yield* Effect.flip(commit)).toMatchObject({ _tag: "CheckpointConflict" })
          }
          expect(yield* checkpoints.load(p)).toBe(5)
          if (checkpoints.exactlyOnce) expect(yield* model.seen(p)).toEqual([5])
          // a lease that expired is taken; a released one at once
          expect(yield* checkpoints.acquire(p, "a", Duration.millis(1))).toBe(true)
          yield* Effect.sleep("20 millis")
          expect(yield* checkpoints.acquire(p, "b", Duration.seconds(30))).toBe(true)
          // a renewal keeps only a lease still held: not one taken over, not one released in between
          expect(yield* checkpoints.acquire(p, "a", Duration.seconds(30), true)).toBe(false)
          expect(yield* checkpoints.acquire(p, "b", Duration.seconds(30), true)).toBe(true)
          yield* checkpoints.release(p, "b")
          expect(yield* checkpoints.acquire(p, "b", Duration.seconds(30), true)).toBe(false)
          expect(yield* checkpoints.acquire(p, "a", Duration.seconds(30))).toBe(true)
          // parking the same position twice keeps one record (a rebuild may stop on it again)
          const parked = (reason: string): Projection.ParkedEvent => ({
            projection: p,
            position: 7,
            eventId: "e",
            streamId: "s",
            eventType: "Added",
            reason,
            parkedAt: 1
          })
          yield* checkpoints.commit(p, "a", 5, 7, Effect.void, parked("first"))
          yield* checkpoints.reset(p, "a", Effect.void)
          expect(yield* checkpoints.load(p)).toBe(0)
          yield* checkpoints.commit(p, "a", 0, 7, Effect.void, parked("again"))
          expect((yield* checkpoints.parked(p)).map((e) => e.reason)).toEqual(["again"])
          // migrations: each id once
          expect(yield* checkpoints.migrate(p, 1, Effect.void)).toBe(true)
          expect(yield* checkpoints.migrate(p, 1, Effect.void)).toBe(false)
          // generations: promote takes the shadow's checkpoint; discard forgets one
          expect(yield* checkpoints.generation(p)).toBe(1)
          const shadow = `${p}#g2`
          yield* checkpoints.acquire(shadow, "a", Duration.seconds(30))
          yield* checkpoints.commit(shadow, "a", 0, 11, Effect.void)
          expect(yield* Effect.flip(checkpoints.promote(p, "b", shadow, 2, Effect.void))).toMatchObject({
            _tag: "CheckpointConflict"
          })
          expect(yield* checkpoints.promote(p, "a", shadow, 2, Effect.void)).toBe(11)
          expect(yield* checkpoints.generation(p)).toBe(2)
          expect(yield* checkpoints.load(p)).toBe(11)
          expect(yield* checkpoints.load(shadow)).toBe(0)
          yield* checkpoints.migrate(`${p}#g3`, 1, Effect.void)
          yield* checkpoints.discard(`${p}#g3`)
          expect(yield* checkpoints.migrate(`${p}#g3`, 1, Effect.void)).toBe(true)
        })))

    it.live("the checkpoint store: redactParked rewrites the reasons parked for the given streams, in every projection", () =>
      run(() =>
        Effect.gen(function*() {
          const checkpoints = yield* Projection.CheckpointStore
          // every store of the library has it (it is optional for a user's own)
          const redact = checkpoints.redactParked!
          expect(redact).toBeTypeOf("function")
          const [p, q] = [`r${uid()}`, `r${uid()}`]
          const [s1, s2] = [`Acc${uid()}-1`, `Acc${uid()}-2`]
          const parked = (projection: string, position: number, streamId: string): Projection.ParkedEvent => ({
            projection,
            position,
            eventId: `e${position}`,
            streamId,
            eventType: "Added",
            reason: `Expected string, actual {"name":"Ada ${position}"}`,
            parkedAt: 1000 + position
          })
          const park = (store: Projection.CheckpointStoreService, projection: string, streams: ReadonlyArray<string>) =>
            Effect.gen(function*() {
              expect(yield* store.acquire(projection, "a", Duration.seconds(30))).toBe(true)
              for (let i = 0; i < streams.length; i++) {
                yield* store.commit(projection, "a", i, i + 1, Effect.void, parked(projection, i + 1, streams[i]!))
              }
            })
          yield* park(checkpoints, p, [s1, s2, s1])
          yield* park(checkpoints, q, [s2, s1])
          expect(yield* redact([s1], "(forgotten)")).toBe(3)
          // only that stream's reasons, and nothing else of them
          expect(yield* checkpoints.parked(p)).toEqual([
            { ...parked(p, 1, s1), reason: "(forgotten)" },
            parked(p, 2, s2),
            { ...parked(p, 3, s1), reason: "(forgotten)" }
          ])
          expect(yield* checkpoints.parked(q)).toEqual([parked(q, 1, s2), { ...parked(q, 2, s1), reason: "(forgotten)" }])
          // what already reads so is not counted again; unknown streams and none change nothing
          expect(yield* redact([s1], "(forgotten)")).toBe(0)
          expect(yield* redact([`Nope${uid()}`], "(forgotten)")).toBe(0)
          expect(yield* redact([], "(forgotten)")).toBe(0)
          // more ids than one statement takes (and one twice): the stream at the end is reached
          const many = Array.from({ length: 1234 }, (_, i) => `Many${uid()}-${i}`)
          expect(yield* redact([...many, s1, s2, s2], "gone")).toBe(5)
          expect((yield* checkpoints.parked(p)).map((e) => e.reason)).toEqual(["gone", "gone", "gone"])

          // a tenant's view: that tenant's projections only, found by the stream's own id
          const [t1, t2] = [`t${uid()}`, `t${uid()}`]
          const [one, two] = [yield* Tenancy.checkpointStore(checkpoints, t1), yield* Tenancy.checkpointStore(checkpoints, t2)]
          const s3 = `Acc${uid()}-3`
          yield* park(one, "balances", [s3, s2])
          yield* park(two, "balances", [s3])
          const all = `r${uid()}`
          yield* park(checkpoints, all, [s3])
          expect(yield* one.redactParked!([s3], "(forgotten)")).toBe(1)
          expect(yield* one.parked("balances")).toEqual([
            { ...parked("balances", 1, s3), reason: "(forgotten)" },
            parked("balances", 2, s2)
          ])
          expect(yield* two.parked("balances")).toEqual([parked("balances", 1, s3)])
          expect(yield* checkpoints.parked(all)).toEqual([parked(all, 1, s3)])
          // the whole database's store: every tenant's
          expect(yield* redact([s3], "(forgotten)")).toBe(2)
          expect((yield* two.parked("balances")).map((e) => e.reason)).toEqual(["(forgotten)"])
          expect((yield* checkpoints.parked(all)).map((e) => e.reason)).toEqual(["(forgotten)"])
        })))

    it.live("bad options are InvalidInput", () =>
      run(({ model }) =>
        Effect.gen(function*() {
          const p = recorder(model)
          expect(yield* Effect.flip(Projection.start([p], { batchSize: 0 }))).toMatchObject({
            _tag: "InvalidInput",
            field: "batchSize"
          })
          expect(yield* Effect.flip(Projection.start([p, p]))).toMatchObject({ _tag: "InvalidInput", field: "projections" })
        })))
  })
