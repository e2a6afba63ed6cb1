import { describe, expect, it } from "@effect/vitest"
import { Aggregate, Event, EventStore, Testing } from "effect-eventstore"
import * as Chunk from "effect/Chunk"
import * as Effect from "effect/Effect"
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
