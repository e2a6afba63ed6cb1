import { describe, expect, it } from "@effect/vitest"
import { Aggregate, Errors, Event, EventStore, Snapshot, Testing } from "effect-eventstore"
import * as Chunk from "effect/Chunk"
import * as Effect from "effect/Effect"
import * as Either from "effect/Either"
import * as Layer from "effect/Layer"
import * as Logger from "effect/Logger"
import * as Option from "effect/Option"
import * as Schedule from "effect/Schedule"
import * as Schema from "effect/Schema"
import * as Stream from "effect/Stream"
import * as Tracer from "effect/Tracer"

const Added = Schema.TaggedStruct("Added", { n: Schema.Int })
const Reset = Schema.TaggedStruct("Reset", {})
class TooBig extends Schema.TaggedError<TooBig>()("TooBig", { n: Schema.Int }) {}

type Command = { readonly _tag: "Add"; readonly n: number; readonly pause?: boolean } | { readonly _tag: "Noop" }

const Counter = Aggregate.make({
  name: "Counter",
  events: Event.registry([Added, Reset]),
  decider: {
    initialState: 0,
    decide: (command: Command, state: number) =>
      command._tag === "Noop"
        ? Effect.succeed([])
        : state + command.n > 100
        ? Effect.fail(new TooBig({ n: state + command.n }))
        : Effect.as(command.pause ? Effect.sleep("20 millis") : Effect.void, [{ _tag: "Added" as const, n: command.n }]),
    evolve: (state: number, event: typeof Added.Type | typeof Reset.Type) => event._tag === "Added" ? state + event.n : 0
  }
})

const id = () => crypto.randomUUID()

describe("Aggregate", () => {
  it.live("handle: loads, decides, appends with the loaded version, returns the new state", () =>
    Effect.gen(function*() {
      const c = id()
      const first = yield* Counter.handle(c, { _tag: "Add", n: 2 })
      expect(first).toMatchObject({ version: 1, state: 2, retries: 0 })
      expect(first.events.map((e) => e.payload)).toEqual([Added.make({ n: 2 })])
      expect(first.events[0]).toMatchObject({ streamId: `Counter-${c}`, streamType: "Counter", type: "Added", version: 1 })
      const second = yield* Counter.handle(c, { _tag: "Add", n: 3 }, { metadata: { correlationId: "corr" } })
      expect(second).toMatchObject({ version: 2, state: 5 })
      expect(yield* Counter.load(c)).toEqual({ state: 5, version: 2, source: "replay" })
      const read = yield* Effect.map(Stream.runCollect(Counter.read(c)), Chunk.toReadonlyArray)
      expect(read.map((e) => e.payload)).toEqual([Added.make({ n: 2 }), Added.make({ n: 3 })])
      expect(read[1]!.metadata).toEqual({ correlationId: "corr" })
    }).pipe(Effect.provide(Testing.layer(Counter))))

  it.live("a command that decides nothing appends nothing", () =>
    Effect.gen(function*() {
      const c = id()
      yield* Counter.handle(c, { _tag: "Add", n: 1 })
      const noop = yield* Counter.handle(c, { _tag: "Noop" })
      expect(noop).toEqual({ events: [], version: 1, state: 1, source: "replay", retries: 0 })
      expect(yield* Effect.flatMap(EventStore.EventStore, (s) => s.version(Counter.streamId(c)))).toBe(1)
    }).pipe(Effect.provide(Testing.layer(Counter))))

  it.live("a domain error passes through typed and nothing is written", () =>
    Effect.gen(function*() {
      const c = id()
      yield* Counter.handle(c, { _tag: "Add", n: 90 })
      const error = yield* Effect.flip(Counter.handle(c, { _tag: "Add", n: 20 }))
      expect(error).toEqual(new TooBig({ n: 110 }))
      expect((yield* Counter.load(c)).version).toBe(1)
    }).pipe(Effect.provide(Testing.layer(Counter))))

  it.live("concurrent commands on one aggregate: the loser reloads, decides again and succeeds", () =>
    Effect.gen(function*() {
      const c = id()
      const results = yield* Effect.all(
        [1, 2, 3, 4].map((n) => Counter.handle(c, { _tag: "Add", n, pause: true })),
        { concurrency: "unbounded" }
      )
      expect(results.reduce((acc, r) => acc + r.retries, 0)).toBeGreaterThan(0)
      expect(yield* Counter.load(c)).toMatchObject({ state: 10, version: 4 })
      // A domain rule is checked against the fresh state on every retry.
      const c2 = id()
      const exits = yield* Effect.all(
        [60, 60].map((n) => Effect.either(Counter.handle(c2, { _tag: "Add", n, pause: true }))),
        { concurrency: "unbounded" }
      )
      expect(exits.filter((e) => e._tag === "Left").map((e) => e._tag === "Left" && e.left._tag)).toEqual(["TooBig"])
      expect(yield* Counter.load(c2)).toMatchObject({ state: 60, version: 1 })
    }).pipe(Effect.provide(Testing.layer(Counter))))

  it.live("when the retry schedule is exhausted the ConcurrencyError surfaces", () =>
    Effect.gen(function*() {
      const c = id()
      const error = yield* Effect.flip(Effect.all(
        [1, 2].map((n) => Counter.handle(c, { _tag: "Add", n, pause: true }, { retry: Schedule.stop })),
        { concurrency: "unbounded" }
      ))
      expect(error).toMatchObject({ _tag: "ConcurrencyError", streamId: `Counter-${c}`, expected: 0, actual: 1 })
    }).pipe(Effect.provide(Testing.layer(Counter))))

  it.live("an event that fails its schema on the way in is InvalidInput; nothing is written", () =>
    Effect.gen(function*() {
      const c = id()
      const error = yield* Effect.flip(Counter.handle(c, { _tag: "Add", n: 1.5 }))
      expect(error._tag).toBe("InvalidInput")
      expect((yield* Counter.load(c)).version).toBe(0)
    }).pipe(Effect.provide(Testing.layer(Counter))))

  it.live("handle and append run in spans carrying the aggregate, type and event count", () =>
    Effect.gen(function*() {
      const base = yield* Effect.tracer
      const spans: Array<Tracer.Span> = []
      const recording = Tracer.make({
        span: (...args) => {
          const span = base.span(...args)
          spans.push(span)
          return span
        },
        context: base.context
      })
      const c = id()
      yield* Counter.handle(c, { _tag: "Add", n: 1 }).pipe(Effect.withTracer(recording))
      const byName = (name: string) => spans.find((s) => s.name === name)
      expect(byName("Aggregate.handle")?.attributes.get("aggregate.id")).toBe(c)
      expect(byName("Aggregate.handle")?.attributes.get("command.type")).toBe("Add")
      const append = byName("EventStore.append")
      expect(append?.attributes.get("aggregate.id")).toBe(`Counter-${c}`)
      expect(append?.attributes.get("aggregate.type")).toBe("Counter")
      expect(append?.attributes.get("event.count")).toBe(1)
    }).pipe(Effect.provide(Testing.layer(Counter))))
})

// --- the shapes of decide, what a load and a command report, conflicts by class ---------------------------------
const Pure = Aggregate.make({
  name: "Pure",
  events: Event.registry([Added]),
  decider: {
    initialState: 0,
    decide: (command: { readonly form: "array" | "right" | "left" | "effect"; readonly n: number }, state: number) =>
      command.form === "array"
        ? [Added.make({ n: command.n })]
        : command.form === "right"
        ? Either.right([Added.make({ n: command.n })])
        : command.form === "left"
        ? Either.left(new TooBig({ n: state }))
        : Effect.succeed([Added.make({ n: command.n })]),
    evolve: (state: number, event: typeof Added.Type) => state + event.n
  }
})

/** A domain error that happens to be tagged like the store's conflict: it must not be retried. */
class LookAlike extends Schema.TaggedError<LookAlike>()("ConcurrencyError", { reason: Schema.String }) {}
let lookAlikeDecides = 0
const Strict = Aggregate.make({
  name: "Strict",
  events: Event.registry([Added]),
  decider: {
    initialState: 0,
    decide: (_: "go", _state: number) => {
      lookAlikeDecides++
      return Either.left(new LookAlike({ reason: "domain" }))
    },
    evolve: (state: number, event: typeof Added.Type) => state + event.n
  }
})

describe("Aggregate definitions and handlers", () => {
  it.effect("decide may return the events, an Either, or an Effect", () =>
    Effect.gen(function*() {
      const c = id()
      expect((yield* Pure.handle(c, { form: "array", n: 1 })).state).toBe(1)
      expect((yield* Pure.handle(c, { form: "right", n: 2 })).state).toBe(3)
      expect((yield* Pure.handle(c, { form: "effect", n: 3 })).state).toBe(6)
      expect(yield* Effect.flip(Pure.handle(c, { form: "left", n: 0 }))).toEqual(new TooBig({ n: 6 }))
      expect((yield* Pure.load(c)).version).toBe(3)
      // the pure definition is what Testing.spec runs, with no store at all
      yield* Testing.spec(Pure).given([Added.make({ n: 1 })]).when({ form: "left", n: 0 }).thenFails(new TooBig({ n: 1 }))
      yield* Testing.spec(Pure).given([]).when({ form: "right", n: 4 }).then([Added.make({ n: 4 })])
    }).pipe(Effect.provide(Testing.layer(Pure))))

  it.effect("Handled carries the position of its last event; Loaded says where the load started", () =>
    Effect.gen(function*() {
      const c = id()
      const store = yield* EventStore.EventStore
      yield* store.append("Other-1", [{ type: "X", payload: {} }])
      const handled = yield* Pure.handle(c, { form: "array", n: 5 })
      const [recorded] = yield* Effect.map(Stream.runCollect(store.read(Pure.streamId(c))), Chunk.toReadonlyArray)
      expect(handled.position).toBe(recorded!.position)
      expect(handled.events[0]!.position).toBe(recorded!.position)
      expect(handled.events[0]!.payload).toEqual(Added.make({ n: 5 })) // the domain value
      expect(handled.source).toBe("replay")
      const noop = yield* Counter.handle(id(), { _tag: "Noop" })
      expect(noop.position).toBeUndefined()
    }).pipe(Effect.provide(Testing.layer(Pure, Counter))))

  it.effect("a conflict is recognised by its class, not by its _tag: a look-alike domain error is not retried", () =>
    Effect.gen(function*() {
      lookAlikeDecides = 0
      const error = yield* Effect.flip(Strict.handle(id(), "go"))
      expect(error).toBeInstanceOf(LookAlike)
      expect(lookAlikeDecides).toBe(1)
    }).pipe(Effect.provide(Testing.layer(Strict))))

  it.effect("the handler layer's type says what it needs: a snapshot policy needs a SnapshotStore", () =>
    Effect.gen(function*() {
      const Snapped = Aggregate.make({ ...Pure.options, name: "Snapped", snapshots: { schema: Schema.Number, every: 2 } })
      const needs: Layer.Layer<Aggregate.Handler<"Snapped">, never, EventStore.EventStore | Snapshot.SnapshotStore> =
        Aggregate.layer(Snapped)
      // @ts-expect-error without a SnapshotStore the layer cannot be built: a policy is never silently off
      const missing: Layer.Layer<Aggregate.Handler<"Snapped">, never, EventStore.EventStore> = Aggregate.layer(Snapped)
      const plain: Layer.Layer<Aggregate.Handler<"Pure">, never, EventStore.EventStore> = Aggregate.layer(Pure)
      expect([needs, missing, plain].every(Layer.isLayer)).toBe(true)
      // and at run time, a missing SnapshotStore is a failure to build, never a handler without snapshots
      const exit = yield* Effect.exit(
        Snapped.handle("x", { form: "array", n: 1 }).pipe(
          Effect.provide(missing),
          Effect.provide(EventStore.layerMemory)
        )
      )
      expect(exit._tag).toBe("Failure")
    }))

  it.effect("Testing.layer writes snapshots inline: the snapshot is there when the command returns (TestClock)", () =>
    Effect.gen(function*() {
      const Snapped = Aggregate.make({ ...Pure.options, name: "Inline", snapshots: { schema: Schema.Number, every: 2 } })
      yield* Effect.gen(function*() {
        yield* Snapped.handle("a", { form: "array", n: 1 })
        yield* Snapped.handle("a", { form: "array", n: 1 })
        const snapshots = yield* Snapshot.SnapshotStore
        const latest = yield* snapshots.latest(Snapped.streamId("a"))
        expect(Option.map(latest, (s) => s.version)).toEqual(Option.some(2))
        expect(yield* Snapped.load("a")).toMatchObject({ state: 2, version: 2, source: "snapshot" })
      }).pipe(Effect.provide(Testing.layer(Snapped)))
    }))

  it.live("background snapshot writes belong to the layer: closing it waits for them, within the grace period", () =>
    Effect.gen(function*() {
      const saved: Array<number> = []
      let hang = false
      const slow = Layer.succeed(Snapshot.SnapshotStore, {
        save: (s) => hang ? Effect.never : Effect.zipRight(Effect.sleep("100 millis"), Effect.sync(() => void saved.push(s.version))),
        latest: () => Effect.succeed(Option.none()),
        atOrBefore: () => Effect.succeed(Option.none()),
        deleteOlderThan: () => Effect.succeed(0),
        stats: Effect.die("unused")
      })
      const Snapped = Aggregate.make({ ...Pure.options, name: "Bg", snapshots: { schema: Schema.Number, every: 1 } })
      const stores = Layer.merge(EventStore.layerMemory, slow)
      // a write in flight when the scope closes is waited for
      yield* Effect.scoped(Effect.gen(function*() {
        const context = yield* Layer.build(Aggregate.layer(Snapped).pipe(Layer.provide(stores)))
        yield* Effect.provide(Snapped.handle("a", { form: "array", n: 1 }), context)
        expect(saved).toEqual([]) // the command did not wait for it
      }))
      expect(saved).toEqual([1])
      // a write that never ends is interrupted after the grace period
      hang = true
      const logs: Array<string> = []
      const capture = Logger.replace(Logger.defaultLogger, Logger.make(({ message }) => void logs.push(String(message))))
      const started = Date.now()
      yield* Effect.scoped(Effect.gen(function*() {
        const context = yield* Layer.build(
          Aggregate.layer(Snapped, { shutdownGrace: "200 millis" }).pipe(Layer.provide(stores))
        )
        yield* Effect.provide(Snapped.handle("b", { form: "array", n: 1 }), context)
      })).pipe(Effect.provide(capture))
      const took = Date.now() - started
      expect(took).toBeGreaterThanOrEqual(150)
      expect(took).toBeLessThan(2_000)
      // and says so
      expect(logs).toContain("snapshot write abandoned: the aggregate layer closed before it finished")
    }))
})

describe("Aggregate retries and definitions", () => {
  it.live("the retry schedule only ever sees ConcurrencyErrors", () =>
    Effect.gen(function*() {
      const seen: Array<unknown> = []
      const schedule = Schedule.recurs(3).pipe(Schedule.tapInput((input: unknown) => Effect.sync(() => void seen.push(input))))
      const c = id()
      yield* Counter.handle(c, { _tag: "Add", n: 90 })
      // a domain error, and an InvalidInput on the way in: neither reaches the schedule
      expect((yield* Effect.flip(Counter.handle(c, { _tag: "Add", n: 20 }, { retry: schedule })))._tag).toBe("TooBig")
      expect((yield* Effect.flip(Counter.handle(c, { _tag: "Add", n: 1.5 }, { retry: schedule })))._tag).toBe("InvalidInput")
      expect(seen).toEqual([])
      // a conflict does
      yield* Effect.all(
        [1, 2].map((n) => Counter.handle(c, { _tag: "Add", n, pause: true }, { retry: schedule })),
        { concurrency: "unbounded" }
      )
      expect(seen.length).toBeGreaterThan(0)
      expect(seen.every((e) => e instanceof Errors.ConcurrencyError)).toBe(true)
    }).pipe(Effect.provide(Testing.layer(Counter))))

  it.effect("under Testing.layer, conflicts are retried without waiting on the TestClock", () =>
    Effect.gen(function*() {
      const c = id()
      const Slow = Aggregate.make({
        ...Pure.options,
        name: "Slow",
        decider: {
          ...Pure.decider,
          // deciding yields, so that concurrent commands interleave and conflict
          decide: (command: { readonly form: "array" | "right" | "left" | "effect"; readonly n: number }) =>
            Effect.as(Effect.yieldNow(), [Added.make({ n: command.n })])
        }
      })
      const results = yield* Effect.all(
        [1, 2, 3, 4].map((n) => Slow.handle(c, { form: "effect", n })),
        { concurrency: "unbounded" }
      ).pipe(Effect.provide(Testing.layer(Slow)))
      expect(results.reduce((acc, r) => acc + r.retries, 0)).toBeGreaterThan(0)
      expect(Math.max(...results.map((r) => r.version))).toBe(4)
    }))

  it("a definition that cannot work is refused when it is made", () => {
    const base = { events: Event.registry([Added]), decider: Pure.decider }
    const refused = (f: () => unknown) => {
      try {
        f()
      } catch (error) {
        return error
      }
      return undefined
    }
    expect(refused(() => Aggregate.make({ ...base, name: "" }))).toMatchObject({ _tag: "InvalidInput", field: "name" })
    for (const every of [0, -1, 1.5, Infinity, Number.NaN]) {
      expect(refused(() => Aggregate.make({ ...base, name: "E", snapshots: { schema: Schema.Number, every } })))
        .toMatchObject({ _tag: "InvalidInput", field: "snapshots.every" })
    }
    expect(refused(() => Aggregate.make({ ...base, name: "C", cache: { capacity: 0 } })))
      .toMatchObject({ _tag: "InvalidInput", field: "cache.capacity" })
    expect(refused(() => Aggregate.make({ ...base, name: "Ok", snapshots: { schema: Schema.Number, every: 10 } })))
      .toBeUndefined()
  })
})
