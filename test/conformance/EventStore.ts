/**
 * The EventStore conformance suite: one contract, run by every backend's test file against its layer. A backend is
 * done when all of it passes. Tests share one store per backend and isolate themselves with unique stream types.
 */
import { expect, layer } from "@effect/vitest"
import { Aggregate, Event, EventStore } from "effect-eventstore"
import * as Chunk from "effect/Chunk"
import * as Effect from "effect/Effect"
import * as Either from "effect/Either"
import * as Exit from "effect/Exit"
import * as Fiber from "effect/Fiber"
import type * as Layer from "effect/Layer"
import * as Schema from "effect/Schema"
import * as Stream from "effect/Stream"
import * as TestClock from "effect/TestClock"
import * as TestContext from "effect/TestContext"

const uid = () => crypto.randomUUID().replace(/-/g, "").slice(0, 12)
/** A stream type no other test uses, and stream ids in it. */
const category = () => {
  const type = `T${uid()}`
  return { type, stream: (n: number | string = 1) => `${type}-${n}` }
}
const ev = (type: string, payload: Record<string, unknown> = {}, extra: Partial<Event.NewEvent> = {}): Event.NewEvent => ({
  type,
  payload,
  ...extra
})
const evs = (n: number, type = "Happened") => Array.from({ length: n }, (_, i) => ev(type, { i }))

const Store = EventStore.EventStore

const collect = <A, E, R>(s: Stream.Stream<A, E, R>) => Effect.map(Stream.runCollect(s), Chunk.toReadonlyArray)

const versionsOf = (events: ReadonlyArray<Event.RecordedEvent>) => events.map((e) => e.version)

const expectIncreasing = (positions: ReadonlyArray<number>) => {
  for (let i = 1; i < positions.length; i++) expect(positions[i]!).toBeGreaterThan(positions[i - 1]!)
}

export const eventStoreSuite = (name: string, storeLayer: Layer.Layer<EventStore.EventStore, unknown>) =>
  layer(storeLayer, { excludeTestServices: true, timeout: "60 seconds" })(`EventStore conformance: ${name}`, (it) => {
    // --- expected version ----------------------------------------------------------------------------------------
    it.effect("expectedVersion \"any\" appends to new and existing streams", () =>
      Effect.gen(function*() {
        const store = yield* Store
        const { stream } = category()
        const first = yield* store.append(stream(), evs(2), { expectedVersion: "any" })
        expect(first.version).toBe(2)
        const second = yield* store.append(stream(), evs(1))
        expect(second.version).toBe(3)
        expect(yield* store.version(stream())).toBe(3)
      }))

    it.effect("expectedVersion \"no-stream\" succeeds only on a new stream", () =>
      Effect.gen(function*() {
        const store = yield* Store
        const { stream } = category()
        yield* store.append(stream(), evs(2), { expectedVersion: "no-stream" })
        const error = yield* Effect.flip(store.append(stream(), evs(1), { expectedVersion: "no-stream" }))
        expect(error).toBeInstanceOf(EventStore.ConcurrencyError)
        expect(error).toMatchObject({ streamId: stream(), expected: "no-stream", actual: 2 })
        expect(yield* store.version(stream())).toBe(2)
      }))

    it.effect("expectedVersion \"stream-exists\" fails on a new stream and succeeds on an existing one", () =>
      Effect.gen(function*() {
        const store = yield* Store
        const { stream } = category()
        const error = yield* Effect.flip(store.append(stream(), evs(1), { expectedVersion: "stream-exists" }))
        expect(error).toMatchObject({ _tag: "ConcurrencyError", expected: "stream-exists", actual: 0 })
        expect(yield* store.version(stream())).toBe(0)
        yield* store.append(stream(), evs(1))
        const ok = yield* store.append(stream(), evs(2), { expectedVersion: "stream-exists" })
        expect(ok.version).toBe(3)
      }))

    it.effect("an exact expectedVersion must match the stream's version", () =>
      Effect.gen(function*() {
        const store = yield* Store
        const { stream } = category()
        yield* store.append(stream(), evs(1), { expectedVersion: 0 })
        yield* store.append(stream(), evs(2), { expectedVersion: 1 })
        const behind = yield* Effect.flip(store.append(stream(), evs(1), { expectedVersion: 1 }))
        expect(behind).toMatchObject({ _tag: "ConcurrencyError", streamId: stream(), expected: 1, actual: 3 })
        const ahead = yield* Effect.flip(store.append(stream(), evs(1), { expectedVersion: 7 }))
        expect(ahead).toMatchObject({ _tag: "ConcurrencyError", expected: 7, actual: 3 })
        const onNew = yield* Effect.flip(store.append(stream(2), evs(1), { expectedVersion: 1 }))
        expect(onNew).toMatchObject({ _tag: "ConcurrencyError", expected: 1, actual: 0 })
        expect(versionsOf(yield* collect(store.read(stream())))).toEqual([1, 2, 3])
        expect(yield* store.version(stream(2))).toBe(0)
      }))

    it.effect("many fibers racing on one version: exactly one wins, the rest get ConcurrencyError", () =>
      Effect.gen(function*() {
        const store = yield* Store
        const { stream } = category()
        yield* store.append(stream(), evs(1))
        for (let round = 1; round <= 5; round++) {
          const exits = yield* Effect.all(
            Array.from({ length: 16 }, (_, i) =>
              Effect.exit(store.append(stream(), [ev("Raced", { round, i })], { expectedVersion: round }))),
            { concurrency: "unbounded" }
          )
          const wins = exits.filter(Exit.isSuccess)
          expect(wins.length).toBe(1)
          for (const exit of exits.filter(Exit.isFailure)) {
            expect(Exit.isFailure(exit) && exit.cause._tag === "Fail" && exit.cause.error._tag).toBe("ConcurrencyError")
          }
        }
        expect(versionsOf(yield* collect(store.read(stream())))).toEqual([1, 2, 3, 4, 5, 6])
      }))

    // --- versions, batches, atomicity ----------------------------------------------------------------------------
    it.effect("versions are gapless and the result describes what was recorded", () =>
      Effect.gen(function*() {
        const store = yield* Store
        const { stream, type } = category()
        const a = yield* store.append(stream(), evs(3), { metadata: { correlationId: "c-1", tags: { k: "v" } } })
        expect(a.streamId).toBe(stream())
        expect(versionsOf(a.events)).toEqual([1, 2, 3])
        expect(a.version).toBe(3)
        expect(a.position).toBe(a.events[2]!.position)
        expectIncreasing(a.events.map((e) => e.position))
        const b = yield* store.append(stream(), [ev("Other", { x: 1 }, { metadata: { causationId: "z", tags: { j: "w" } } })], {
          metadata: { correlationId: "c-2", tags: { k: "v2" } }
        })
        expect(b.events[0]).toMatchObject({ version: 4, type: "Other", streamType: type, schemaVersion: 1 })
        expect(b.events[0]!.metadata).toEqual({ correlationId: "c-2", causationId: "z", tags: { k: "v2", j: "w" } })
        const read = yield* collect(store.read(stream()))
        expect(versionsOf(read)).toEqual([1, 2, 3, 4])
        expect(read.map((e) => e.eventId)).toEqual([...a.events, ...b.events].map((e) => e.eventId))
        expect(read.map((e) => e.position)).toEqual([...a.events, ...b.events].map((e) => e.position))
        expect(read[0]!.payload).toEqual({ i: 0 })
        expect(read[0]!.metadata).toEqual({ correlationId: "c-1", tags: { k: "v" } })
        expect(read[3]!.metadata).toEqual(b.events[0]!.metadata)
        expect(read[3]!.streamType).toBe(type)
      }))

    it.effect("generated event ids are unique UUIDs; given ones are kept", () =>
      Effect.gen(function*() {
        const store = yield* Store
        const { stream } = category()
        const given = `id-${uid()}`
        const r = yield* store.append(stream(), [...evs(3), ev("Given", {}, { eventId: given })])
        const ids = r.events.map((e) => e.eventId)
        expect(new Set(ids).size).toBe(4)
        for (const id of ids.slice(0, 3)) expect(id).toMatch(/^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/)
        expect(ids[3]).toBe(given)
      }))

    it.effect("a stored event id is rejected without a second row, and the whole batch with it", () =>
      Effect.gen(function*() {
        const store = yield* Store
        const { stream, type } = category()
        const id = `dup-${uid()}`
        yield* store.append(stream(1), [ev("A", {}, { eventId: id })])
        const again = yield* Effect.flip(store.append(stream(1), [ev("A", {}, { eventId: id })]))
        expect(again).toMatchObject({ _tag: "DuplicateEventError", eventId: id })
        const elsewhere = yield* Effect.flip(store.append(stream(2), [...evs(2), ev("A", {}, { eventId: id })]))
        expect(elsewhere).toMatchObject({ _tag: "DuplicateEventError", eventId: id, streamId: stream(2) })
        expect(yield* store.version(stream(1))).toBe(1)
        expect(yield* store.version(stream(2))).toBe(0)
        const all = yield* collect(store.readAll({ filter: { streamTypes: [type] } }))
        expect(all.filter((e) => e.eventId === id).length).toBe(1)
        expect(all.length).toBe(1)
      }))

    it.effect("a batch larger than one statement is written whole, or not at all", () =>
      Effect.gen(function*() {
        const store = yield* Store
        const { stream } = category()
        const big = yield* store.append(stream(1), evs(1234), { expectedVersion: "no-stream" })
        expect(big.version).toBe(1234)
        expectIncreasing(big.events.map((e) => e.position))
        const read = yield* collect(store.read(stream(1)))
        expect(versionsOf(read)).toEqual(Array.from({ length: 1234 }, (_, i) => i + 1))
        expect(read[1233]!.payload).toEqual({ i: 1233 })
        // The clash is in the last chunk: everything before it must be rolled back.
        const clash = read[0]!.eventId
        const failed = yield* Effect.flip(store.append(stream(2), [...evs(1100), ev("X", {}, { eventId: clash })]))
        expect(failed._tag).toBe("DuplicateEventError")
        expect(yield* store.version(stream(2))).toBe(0)
        const stale = yield* Effect.flip(store.append(stream(1), evs(700), { expectedVersion: 5 }))
        expect(stale).toMatchObject({ _tag: "ConcurrencyError", actual: 1234 })
        expect(yield* store.version(stream(1))).toBe(1234)
      }))

    // --- bad input -----------------------------------------------------------------------------------------------
    it.effect("bad inputs are rejected with InvalidInput naming the field, and nothing is written", () =>
      Effect.gen(function*() {
        const store = yield* Store
        const { stream, type } = category()
        const cyclic: Record<string, unknown> = {}
        cyclic.self = cyclic
        const pay = (payload: unknown, i = 0) => [...evs(i), { type: "A", payload }]
        const meta = (metadata: unknown) => ({ metadata: metadata as Event.Metadata })
        const expecting = (expectedVersion: unknown) => ({ expectedVersion: expectedVersion as EventStore.ExpectedVersion })
        class Point {
          x = 1
        }
        class Stamp {
          toJSON() {
            return "2024-01-01"
          }
        }
        class List extends Array<number> {}
        const holey: Array<number> = [1]
        holey[2] = 3
        const cases: ReadonlyArray<readonly [string, Effect.Effect<unknown, EventStore.AppendError>, string?]> = [
          ["empty stream id", store.append("", evs(1), { streamType: type }), "streamId"],
          ["long stream id", store.append(`${type}-${"x".repeat(300)}`, evs(1)), "streamId"],
          ["control character", store.append(`${type}-a\nb`, evs(1)), "streamId"],
          ["NUL", store.append(`${type}-a\u0000b`, evs(1)), "streamId"],
          ["empty event list", store.append(stream(), []), "events"],
          ["empty event type", store.append(stream(), [ev("")]), "events[0].type"],
          ["event type with control character", store.append(stream(), [ev("A\tB")]), "events[0].type"],
          ["duplicate ids in one batch", store.append(stream(), [ev("A", {}, { eventId: "same" }), ev("B", {}, { eventId: "same" })])],
          ["empty event id", store.append(stream(), [ev("A", {}, { eventId: "" })]), "events[0].eventId"],
          ["bad schema version", store.append(stream(), [ev("A", {}, { schemaVersion: 0 })]), "events[0].schemaVersion"],
          ["an event that is null", store.append(stream(), [null as unknown as Event.NewEvent]), "events[0]"],
          ["bad event after good ones", store.append(stream(), [...evs(3), ev("")]), "events[3].type"],
          // payloads: a plain JSON object that reads back as it was written
          ["payload not an object", store.append(stream(), pay(42)), "events[0].payload"],
          ["payload an array", store.append(stream(), pay([1])), "events[0].payload"],
          ["payload a Date", store.append(stream(), pay(new Date(0))), "events[0].payload"],
          ["payload a boxed string", store.append(stream(), pay(new String("x"))), "events[0].payload"],
          ["payload a boxed number", store.append(stream(), pay(new Number(1))), "events[0].payload"],
          ["payload a class instance", store.append(stream(), pay(new Point())), "events[0].payload"],
          ["payload whose toJSON gives a string", store.append(stream(), pay(new Stamp())), "events[0].payload"],
          ["payload a Map", store.append(stream(), pay(new Map([["a", 1]]))), "events[0].payload"],
          ["payload a Set", store.append(stream(), pay(new Set([1]))), "events[0].payload"],
          ["payload with a Date inside", store.append(stream(), pay({ at: new Date(0) })), "events[0].payload"],
          ["payload with a Map deep inside", store.append(stream(), pay({ a: [{ m: new Map() }] })), "events[0].payload"],
          ["payload with a Set inside", store.append(stream(), pay({ s: new Set() })), "events[0].payload"],
          ["payload with a boxed boolean inside", store.append(stream(), pay({ b: new Boolean(false) })), "events[0].payload"],
          ["payload with a class instance inside", store.append(stream(), pay({ p: new Point() })), "events[0].payload"],
          ["payload with an Array subclass inside", store.append(stream(), pay({ l: List.of(1) })), "events[0].payload"],
          ["payload with a function", store.append(stream(), pay({ f: () => 1 })), "events[0].payload"],
          ["payload with a symbol", store.append(stream(), pay({ s: Symbol("s") })), "events[0].payload"],
          ["payload with undefined in an array", store.append(stream(), pay({ a: [1, undefined] })), "events[0].payload"],
          ["payload with a hole in an array", store.append(stream(), pay({ a: holey })), "events[0].payload"],
          ["payload with a BigInt", store.append(stream(), pay({ n: 1n })), "events[0].payload"],
          ["payload with a BigInt deep inside", store.append(stream(), pay({ a: [{ n: 1n }] })), "events[0].payload"],
          ["cyclic payload", store.append(stream(), pay(cyclic)), "events[0].payload"],
          ["oversized payload", store.append(stream(), pay({ blob: "x".repeat(1_100_000) })), "events[0].payload"],
          ["payload with NaN", store.append(stream(), pay({ n: Number.NaN })), "events[0].payload"],
          ["payload with Infinity deep inside", store.append(stream(), pay({ a: [{ b: Infinity }] })), "events[0].payload"],
          ["bad payload after good events", store.append(stream(), pay(new Date(0), 2)), "events[2].payload"],
          // expected version: the ExpectedVersion schema; an explicit null or undefined is not "any"
          ["negative expected version", store.append(stream(), evs(1), expecting(-1)), "expectedVersion"],
          ["fractional expected version", store.append(stream(), evs(1), expecting(1.5)), "expectedVersion"],
          ["expected version null", store.append(stream(), evs(1), expecting(null)), "expectedVersion"],
          ["expected version explicitly undefined", store.append(stream(), evs(1), expecting(undefined)), "expectedVersion"],
          ["expected version a numeric string", store.append(stream(), evs(1), expecting("5")), "expectedVersion"],
          ["expected version NaN", store.append(stream(), evs(1), expecting(Number.NaN)), "expectedVersion"],
          ["expected version a boxed number", store.append(stream(), evs(1), expecting(new Number(1))), "expectedVersion"],
          ["options null", store.append(stream(), evs(1), null as unknown as EventStore.AppendOptions), "options"],
          // metadata: the Metadata schema
          ["metadata tag not a string", store.append(stream(), evs(1), meta({ tags: { a: 1 } })), "metadata.tags.a"],
          ["metadata tags an array", store.append(stream(), evs(1), meta({ tags: ["a"] })), "metadata.tags"],
          ["metadata tags a Map", store.append(stream(), evs(1), meta({ tags: new Map([["a", "b"]]) })), "metadata.tags"],
          ["metadata tags a boxed string", store.append(stream(), evs(1), meta({ tags: new String("ab") })), "metadata.tags"],
          ["metadata tag named __proto__", store.append(stream(), evs(1), meta({ tags: JSON.parse(`{"__proto__":"x"}`) })), "metadata.tags.__proto__"],
          ["metadata null", store.append(stream(), evs(1), meta(null)), "metadata"],
          ["metadata a string", store.append(stream(), evs(1), meta("abc")), "metadata"],
          ["metadata a Date", store.append(stream(), evs(1), meta(new Date(0))), "metadata"],
          ["metadata a class instance", store.append(stream(), evs(1), meta(new Point())), "metadata"],
          ["metadata with an unknown field", store.append(stream(), evs(1), meta({ extra: 1n })), "metadata.extra"],
          ["metadata with a symbol key", store.append(stream(), evs(1), meta({ [Symbol("s")]: "x" })), "metadata"],
          ["metadata field explicitly undefined", store.append(stream(), evs(1), meta({ correlationId: undefined })), "metadata.correlationId"],
          ["event metadata cyclic", store.append(stream(), [ev("A", {}, meta(cyclic))]), "events[0].metadata.self"],
          ["event metadata tags an array", store.append(stream(), [...evs(1), ev("A", {}, meta({ tags: [] }))]), "events[1].metadata.tags"]
        ]
        for (const [label, attempt, field] of cases) {
          const error = yield* Effect.flip(attempt)
          expect(error._tag, label).toBe("InvalidInput")
          if (field !== undefined) expect((error as EventStore.InvalidInput).field, label).toBe(field)
        }
        expect(yield* store.version(stream())).toBe(0)
        expect(yield* collect(store.readAll({ filter: { streamTypes: [type] } }))).toEqual([])
      }))

    it.effect("the append's result is what a read returns, and shares nothing with the caller", () =>
      Effect.gen(function*() {
        const store = yield* Store
        const { stream } = category()
        const payload = { n: 1, zero: -0, gone: undefined, list: [1, "two", null, { deep: true }], nested: { a: { b: "c" } } }
        const protoKey = JSON.parse(`{"__proto__":{"x":1},"k":"v"}`) as Record<string, unknown>
        const bare = Object.assign(Object.create(null) as Record<string, unknown>, { z: [] })
        const metadata = { correlationId: "c", tags: { t: "1" } }
        const result = yield* store.append(
          stream(),
          [ev("A", payload), ev("B", protoKey, { metadata: { causationId: "z", tags: { u: "2" } } }), ev("C", bare)],
          { metadata }
        )
        const read = yield* collect(store.read(stream()))
        const payloads = (events: ReadonlyArray<Event.RecordedEvent>) => events.map((e) => e.payload)
        const metadatas = (events: ReadonlyArray<Event.RecordedEvent>) => events.map((e) => e.metadata)
        expect(payloads(result.events)).toStrictEqual(payloads(read))
        expect(metadatas(result.events)).toStrictEqual(metadatas(read))
        expect(result.events).toEqual(read)
        // as JSON stores them: no undefined field, -0 is 0, an own "__proto__" key stays a key
        expect(result.events[0]!.payload).toStrictEqual({ n: 1, zero: 0, list: [1, "two", null, { deep: true }], nested: { a: { b: "c" } } })
        expect(Object.hasOwn(result.events[1]!.payload as object, "__proto__")).toBe(true)
        expect(result.events[1]!.payload).toStrictEqual(JSON.parse(`{"__proto__":{"x":1},"k":"v"}`))
        expect(result.events[1]!.metadata).toStrictEqual({ correlationId: "c", causationId: "z", tags: { t: "1", u: "2" } })
        expect(result.events[2]!.payload).toStrictEqual({ z: [] })
        // the caller changing its objects changes neither the result nor the store
        expect(result.events[0]!.payload).not.toBe(payload)
        payload.nested.a.b = "changed"
        payload.list.push(9)
        metadata.tags.t = "changed"
        expect(result.events[0]!.payload).toMatchObject({ nested: { a: { b: "c" } }, list: [1, "two", null, { deep: true }] })
        expect(result.events[0]!.metadata).toStrictEqual({ correlationId: "c", tags: { t: "1" } })
        // the result changing changes neither the caller's objects, the store, nor the other events of the result
        const first = result.events[0]! as { payload: { nested: { a: { b: string } } }; metadata: { tags: Record<string, string> } }
        first.payload.nested.a.b = "mutated"
        first.metadata.tags.t = "mutated"
        expect(payload.nested.a.b).toBe("changed")
        expect(result.events[2]!.metadata).toStrictEqual({ correlationId: "c", tags: { t: "1" } })
        expect(payloads(yield* collect(store.read(stream())))).toStrictEqual(payloads(read))
      }))

    it.effect("event types and tag values are any strings: __proto__, constructor, toString read back as written", () =>
      Effect.gen(function*() {
        const store = yield* Store
        const { stream, type } = category()
        const types = ["__proto__", "constructor", "toString", "hasOwnProperty", "__proto__"]
        const tags = { constructor: "c", toString: "t", hasOwnProperty: "h" }
        const result = yield* store.append(stream(), types.map((t) => ev(t, { t })), { metadata: { tags } })
        const read = yield* collect(store.read(stream()))
        expect(read.map((e) => e.type)).toEqual(types)
        expect(read.map((e) => e.metadata.tags)).toEqual(types.map(() => tags))
        expect(result.events).toEqual(read)
        const protos = yield* collect(store.readAll({ filter: { streamTypes: [type], eventTypes: ["__proto__"] } }))
        expect(protos.map((e) => e.version)).toEqual([1, 5])
      }))

    it.effect("bad read options are InvalidInput", () =>
      Effect.gen(function*() {
        const store = yield* Store
        const { stream } = category()
        const failures = [
          yield* Effect.flip(collect(store.read(stream(), { from: 0 }))),
          yield* Effect.flip(collect(store.read(stream(), { pageSize: 0 }))),
          yield* Effect.flip(collect(store.readAll({ fromPosition: -1 }))),
          yield* Effect.flip(collect(store.subscribe({ fromPosition: 1.5 })))
        ]
        expect(failures.map((e) => e._tag)).toEqual(["InvalidInput", "InvalidInput", "InvalidInput", "InvalidInput"])
      }))

    // --- reads ---------------------------------------------------------------------------------------------------
    it.effect("read: ranges, both directions, across page boundaries", () =>
      Effect.gen(function*() {
        const store = yield* Store
        const { stream } = category()
        yield* store.append(stream(), evs(10))
        const read = (options: EventStore.ReadOptions) => Effect.map(collect(store.read(stream(), options)), versionsOf)
        expect(yield* read({})).toEqual([1, 2, 3, 4, 5, 6, 7, 8, 9, 10])
        expect(yield* read({ pageSize: 3 })).toEqual([1, 2, 3, 4, 5, 6, 7, 8, 9, 10])
        expect(yield* read({ pageSize: 5 })).toEqual([1, 2, 3, 4, 5, 6, 7, 8, 9, 10])
        expect(yield* read({ from: 4, to: 8, pageSize: 2 })).toEqual([4, 5, 6, 7, 8])
        expect(yield* read({ from: 9 })).toEqual([9, 10])
        expect(yield* read({ to: 2 })).toEqual([1, 2])
        expect(yield* read({ direction: "backward" })).toEqual([10, 9, 8, 7, 6, 5, 4, 3, 2, 1])
        expect(yield* read({ direction: "backward", pageSize: 3 })).toEqual([10, 9, 8, 7, 6, 5, 4, 3, 2, 1])
        expect(yield* read({ direction: "backward", from: 3, to: 7, pageSize: 2 })).toEqual([7, 6, 5, 4, 3])
        expect(yield* read({ direction: "backward", to: 50 })).toEqual([10, 9, 8, 7, 6, 5, 4, 3, 2, 1])
        expect(yield* read({ from: 11 })).toEqual([])
        expect(yield* read({ from: 5, to: 4 })).toEqual([])
        expect(yield* Effect.map(collect(store.read(stream(99))), versionsOf)).toEqual([])
        expect(yield* Effect.map(collect(Stream.take(store.read(stream(), { pageSize: 2 }), 3)), versionsOf)).toEqual([1, 2, 3])
      }))

    it.effect("readPage: one page forward after a version, as an Effect", () =>
      Effect.gen(function*() {
        const store = yield* Store
        const { stream } = category()
        const written = yield* store.append(stream(), evs(7))
        const page = (options?: EventStore.PageOptions) => Effect.map(store.readPage(stream(), options), versionsOf)
        expect(yield* page()).toEqual([1, 2, 3, 4, 5, 6, 7])
        expect(yield* page({ after: 2, limit: 3 })).toEqual([3, 4, 5])
        expect(yield* page({ after: 5, limit: 3 })).toEqual([6, 7])
        expect(yield* page({ after: 7 })).toEqual([])
        expect(yield* Effect.map(store.readPage(stream(2)), versionsOf)).toEqual([])
        const [first] = yield* store.readPage(stream(), { limit: 1 })
        expect(first).toEqual(written.events[0])
        const bad = [
          yield* Effect.flip(store.readPage(stream(), { after: -1 })),
          yield* Effect.flip(store.readPage(stream(), { limit: 0 })),
          yield* Effect.flip(store.readPage(stream(), { limit: 10_001 }))
        ]
        expect(bad.map((e) => e._tag)).toEqual(["InvalidInput", "InvalidInput", "InvalidInput"])
      }))

    it.effect("readAll: global order, exclusive fromPosition, filters, paging", () =>
      Effect.gen(function*() {
        const store = yield* Store
        const a = category()
        const b = category()
        // interleave two types and two event types
        for (let i = 0; i < 7; i++) {
          yield* store.append(a.stream(i % 2), [ev(i % 3 === 0 ? "Ping" : "Pong", { i })])
          yield* store.append(b.stream(), [ev("Ping", { i })])
        }
        const both = { streamTypes: [a.type, b.type] }
        const all = yield* collect(store.readAll({ filter: both, pageSize: 3 }))
        expect(all.length).toBe(14)
        expectIncreasing(all.map((e) => e.position))
        expect(all.map((e) => e.streamType)).toEqual(Array.from({ length: 14 }, (_, i) => i % 2 === 0 ? a.type : b.type))
        const onlyA = yield* collect(store.readAll({ filter: { streamTypes: [a.type] }, pageSize: 2 }))
        expect(onlyA.map((e) => e.payload)).toEqual(Array.from({ length: 7 }, (_, i) => ({ i })))
        const pings = yield* collect(store.readAll({ filter: { ...both, eventTypes: ["Ping"] }, pageSize: 4 }))
        expect(pings.length).toBe(3 + 7)
        expect(pings.every((e) => e.type === "Ping")).toBe(true)
        const aPongs = yield* collect(store.readAll({ filter: { streamTypes: [a.type], eventTypes: ["Pong"] } }))
        expect(aPongs.map((e) => (e.payload as { i: number }).i)).toEqual([1, 2, 4, 5])
        // fromPosition is exclusive: resuming from a checkpoint does not repeat the checkpointed event
        const after = yield* collect(store.readAll({ filter: both, fromPosition: all[5]!.position, pageSize: 3 }))
        expect(after.map((e) => e.eventId)).toEqual(all.slice(6).map((e) => e.eventId))
        const none = yield* collect(store.readAll({ filter: both, fromPosition: all[13]!.position }))
        expect(none).toEqual([])
        // an empty filter list selects everything
        const unfiltered = yield* collect(store.readAll({ fromPosition: all[12]!.position, filter: { streamTypes: [], eventTypes: [] } }))
        expect(unfiltered.map((e) => e.eventId)).toContain(all[13]!.eventId)
      }))

    it.effect("positions are unique and strictly increasing across streams and writers", () =>
      Effect.gen(function*() {
        const store = yield* Store
        const { stream, type } = category()
        const results = yield* Effect.all(
          Array.from({ length: 8 }, (_, w) =>
            Effect.forEach(Array.from({ length: 10 }, (_, i) => i), (i) => store.append(stream(w), evs(1 + (i % 3))))),
          { concurrency: "unbounded" }
        )
        const written = results.flat().flatMap((r) => r.events.map((e) => e.position))
        expect(new Set(written).size).toBe(written.length)
        const all = yield* collect(store.readAll({ filter: { streamTypes: [type] }, pageSize: 7 }))
        expect(all.length).toBe(written.length)
        expectIncreasing(all.map((e) => e.position))
        expect([...all.map((e) => e.position)].sort((x, y) => x - y)).toEqual([...written].sort((x, y) => x - y))
      }))

    it.effect("version is 0 for a stream that does not exist", () =>
      Effect.gen(function*() {
        const store = yield* Store
        expect(yield* store.version(category().stream())).toBe(0)
      }))

    it.effect("head is the position of the last event in the log, and every event up to it is readable", () =>
      Effect.gen(function*() {
        const store = yield* Store
        const before = yield* store.head
        expect(before).toBeGreaterThanOrEqual(0)
        const s = category().stream()
        const first = yield* store.append(s, [{ type: "A", payload: {} }, { type: "B", payload: {} }])
        expect(yield* store.head).toBe(first.position)
        const results = yield* Effect.forEach([1, 2, 3, 4], (i) => store.append(s, [{ type: "C", payload: { i } }]), {
          concurrency: "unbounded"
        })
        const head = yield* store.head
        expect(head).toBe(Math.max(...results.map((r) => r.position)))
        const tail = yield* collect(store.readAll({ fromPosition: before }))
        expect(tail[tail.length - 1]!.position).toBe(head)
      }))

    it.effect("recordedAt comes from the Clock, with millisecond precision", () =>
      Effect.gen(function*() {
        const store = yield* Store
        const { stream } = category()
        yield* TestClock.setTime(1_700_000_000_123)
        const r = yield* store.append(stream(), evs(1))
        expect(r.events[0]!.recordedAt.epochMillis).toBe(1_700_000_000_123)
        const [read] = yield* collect(store.read(stream()))
        expect(read!.recordedAt.epochMillis).toBe(1_700_000_000_123)
      }).pipe(Effect.provide(TestContext.TestContext)))

    // --- typed decoding ------------------------------------------------------------------------------------------
    it.effect("a stored payload that fails its schema is an EventDecodeError naming its position", () =>
      Effect.gen(function*() {
        const store = yield* Store
        const { stream } = category()
        const Deposited = Schema.TaggedStruct("Deposited", { amount: Schema.Int })
        const registry = Event.registry([Deposited])
        const good = Either.getOrThrow(registry.encode(Deposited.make({ amount: 5 })))
        const written = yield* store.append(stream(), [good, { type: "Deposited", payload: { amount: "lots" } }, good])
        const decoded: Array<number> = []
        const error = yield* store.read(stream()).pipe(
          Event.decodeStream(registry),
          Stream.runForEach((e) => Effect.sync(() => decoded.push(e.payload.amount))),
          Effect.flip
        )
        expect(decoded).toEqual([5])
        expect(error).toMatchObject({
          _tag: "EventDecodeError",
          streamId: stream(),
          version: 2,
          position: written.events[1]!.position,
          type: "Deposited"
        })
        yield* store.append(stream(2), [{ type: "Unknown", payload: {} }])
        const unknown = yield* Effect.flip(collect(Event.decodeStream(registry)(store.read(stream(2)))))
        expect(unknown).toMatchObject({ _tag: "EventDecodeError", type: "Unknown", version: 1 })
      }))

    it.effect("an aggregate's fold (the store's lean read) agrees with reading the stream: pages, upcasts, starts", () =>
      Effect.gen(function*() {
        const store = yield* Store
        const { stream, type } = category()
        const Added = Schema.TaggedStruct("Added", { n: Schema.Int })
        const Named = Schema.TaggedStruct("Named", { name: Schema.String, by: Schema.String })
        const registry = Event.registry([Added, Event.versioned(Named, 2, (p) => ({ ...(p as object), by: "v1" }))])
        type Ev = Event.Registry.Type<typeof registry>
        type State = { readonly total: number; readonly names: ReadonlyArray<string> }
        const evolve = (s: State, e: Ev): State =>
          e._tag === "Added" ? { ...s, total: s.total + e.n } : { ...s, names: [...s.names, `${e.name}/${e.by}`] }
        const definition = {
          name: type,
          events: registry,
          decider: { initialState: { total: 0, names: [] } as State, decide: () => [], evolve },
          analytics: true
        }
        // more than a page (512) of events, one of them written by version 1 of its schema
        const events = Array.from({ length: 1100 }, (_, i) =>
          i === 700
            ? ev("Named", { name: "old" }, { schemaVersion: 1 })
            : i % 300 === 0
            ? Either.getOrThrow(registry.encode(Named.make({ name: `n${i}`, by: "v2" })))
            : Either.getOrThrow(registry.encode(Added.make({ n: i % 5 }))))
        for (let i = 0; i < events.length; i += 200) yield* store.append(stream(), events.slice(i, i + 200))
        const replayed = (yield* collect(Event.decodeStream(registry)(store.read(stream()))))
          .reduce((s, e) => evolve(s, e.payload), definition.decider.initialState)
        const plain = yield* Aggregate.handler(Aggregate.make(definition))
        const loaded = yield* plain.load("1")
        expect(loaded).toMatchObject({ state: replayed, version: 1100, source: "replay" })
        expect(loaded.analytics?.total).toBe(1100)
        // from a start past version 0 (a cached state): the rest is folded after it
        const cached = yield* Aggregate.handler(Aggregate.make({ ...definition, cache: { capacity: 4 } }))
        yield* cached.load("1")
        yield* store.append(stream(), [Either.getOrThrow(registry.encode(Added.make({ n: 100 })))])
        expect(yield* cached.load("1")).toMatchObject({
          state: { ...replayed, total: replayed.total + 100 },
          version: 1101,
          source: "cache"
        })
      }).pipe(Effect.scoped))

    // --- subscriptions -------------------------------------------------------------------------------------------
    it.effect("subscribe from 0 catches up and then delivers new commits", () =>
      Effect.gen(function*() {
        const store = yield* Store
        const { stream, type } = category()
        yield* store.append(stream(), evs(5))
        const fiber = yield* Effect.fork(collect(Stream.take(store.subscribe({ filter: { streamTypes: [type] }, pageSize: 2 }), 9)))
        yield* Effect.sleep("20 millis")
        yield* store.append(stream(), evs(2))
        yield* store.append(stream(2), evs(2))
        const got = yield* Fiber.join(fiber).pipe(Effect.timeout("10 seconds"))
        expect(got.map((e) => `${e.streamId}/${e.version}`)).toEqual([
          ...[1, 2, 3, 4, 5, 6, 7].map((v) => `${stream()}/${v}`),
          `${stream(2)}/1`,
          `${stream(2)}/2`
        ])
      }))

    it.effect("subscribe from a position starts after it; from \"end\" sees only new commits", () =>
      Effect.gen(function*() {
        const store = yield* Store
        const { stream, type } = category()
        const first = yield* store.append(stream(), evs(4))
        const filter = { streamTypes: [type] }
        const fromPos = yield* collect(
          Stream.take(store.subscribe({ filter, fromPosition: first.events[1]!.position }), 2)
        ).pipe(Effect.timeout("10 seconds"))
        expect(versionsOf(fromPos)).toEqual([3, 4])
        const tail = yield* Effect.fork(collect(Stream.take(store.subscribe({ filter, fromPosition: "end" }), 2)))
        yield* Effect.sleep("100 millis")
        yield* store.append(stream(), evs(2))
        const got = yield* Fiber.join(tail).pipe(Effect.timeout("10 seconds"))
        expect(versionsOf(got)).toEqual([5, 6])
      }))

    it.effect("subscribers with concurrent writers during catch-up: no gap, no duplicate, order kept", () =>
      Effect.gen(function*() {
        const store = yield* Store
        const { stream, type } = category()
        const writers = 6
        const perWriter = 40
        yield* store.append(stream("seed"), evs(50))
        const total = 50 + writers * perWriter
        const subscriber = (pageSize: number) =>
          Effect.fork(collect(Stream.take(store.subscribe({ filter: { streamTypes: [type] }, pageSize }), total)))
        const subs = [yield* subscriber(7), yield* subscriber(64)]
        yield* Effect.all(
          Array.from({ length: writers }, (_, w) =>
            Effect.forEach(Array.from({ length: perWriter }, (_, i) => i), (i) =>
              Effect.zipRight(
                i % 10 === 0 ? Effect.sleep("1 millis") : Effect.yieldNow(),
                store.append(stream(w), [ev("W", { w, i })])
              ))),
          { concurrency: "unbounded" }
        )
        for (const sub of subs) {
          const got = yield* Fiber.join(sub).pipe(Effect.timeout("20 seconds"))
          expect(got.length).toBe(total)
          expect(new Set(got.map((e) => e.eventId)).size).toBe(total)
          expectIncreasing(got.map((e) => e.position))
          for (let w = 0; w < writers; w++) {
            const mine = got.filter((e) => e.streamId === stream(w))
            expect(versionsOf(mine)).toEqual(Array.from({ length: perWriter }, (_, i) => i + 1))
          }
        }
      }))
  })
