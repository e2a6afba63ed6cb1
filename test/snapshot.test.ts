import { describe, expect, it } from "@effect/vitest"
import { Aggregate, Analytics, Event, EventStore, Snapshot, StateCache, Telemetry } from "effect-eventstore"
import * as Sqlite from "effect-eventstore/Sqlite"
import * as DateTime from "effect/DateTime"
import * as Effect from "effect/Effect"
import * as Either from "effect/Either"
import * as FastCheck from "effect/FastCheck"
import * as Layer from "effect/Layer"
import * as Logger from "effect/Logger"
import * as Option from "effect/Option"
import * as Schedule from "effect/Schedule"
import * as Schema from "effect/Schema"
import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"
import { snapshotStoreSuite } from "./conformance/SnapshotStore.js"

const dir = fs.mkdtempSync(path.join(os.tmpdir(), "effect-eventstore-snapshots-"))

snapshotStoreSuite("memory", Snapshot.layerMemory)
snapshotStoreSuite("sqlite", Sqlite.layer({ filename: path.join(dir, "conformance.db") }))

// --- a small domain: a tally with three event types ----------------------------------------------------------------
const Added = Schema.TaggedStruct("Added", { n: Schema.Int })
const Doubled = Schema.TaggedStruct("Doubled", {})
const Renamed = Schema.TaggedStruct("Renamed", { name: Schema.String })
type TallyEvent = typeof Added.Type | typeof Doubled.Type | typeof Renamed.Type
const TallyState = Schema.Struct({ total: Schema.Int, name: Schema.String })
type TallyState = typeof TallyState.Type
const registry = Event.registry([Added, Doubled, Renamed])
const evolve = (s: TallyState, e: TallyEvent): TallyState =>
  e._tag === "Added" ? { ...s, total: s.total + e.n } : e._tag === "Doubled" ? { ...s, total: s.total * 2 } : { ...s, name: e.name }
const initialState: TallyState = { total: 0, name: "" }
type Command = { readonly events: ReadonlyArray<TallyEvent>; readonly pause?: boolean }
const decider = {
  initialState,
  decide: (command: Command, _: TallyState) =>
    Effect.as(command.pause ? Effect.sleep("30 millis") : Effect.void, command.events),
  evolve
}
const tally = (extra: Partial<Aggregate.Options<TallyState, Command, TallyEvent, never, never>> = {}) =>
  Aggregate.make({ name: "Tally", events: registry, decider, ...extra })

const eventArb = FastCheck.oneof(
  FastCheck.integer({ min: -5, max: 5 }).map((n) => Added.make({ n })),
  FastCheck.constant(Doubled.make({})),
  FastCheck.string({ maxLength: 3 }).map((name) => Renamed.make({ name }))
)

/** An EventStore decorator that records every page read: the round trips a load makes. */
const counting = () => {
  const reads: Array<{ readonly after: number; readonly events: number }> = []
  const layer = Layer.effect(
    EventStore.EventStore,
    Effect.map(EventStore.EventStore, (inner) => ({
      ...inner,
      readPage: (streamId: string, options?: EventStore.PageOptions) =>
        Effect.tap(inner.readPage(streamId, options), (page) => {
          reads.push({ after: options?.after ?? 0, events: page.length })
        })
    }))
  ).pipe(Layer.provide(EventStore.layerMemory))
  return { reads, layer: Layer.merge(layer, Snapshot.layerMemory) }
}

const append = (id: string, events: ReadonlyArray<TallyEvent>) =>
  Effect.flatMap(EventStore.EventStore, (store) =>
    store.append(`Tally-${id}`, events.map((e) => Either.getOrThrow(registry.encode(e))), { streamType: "Tally" }))

const waitForSnapshot = (streamId: string, version: number) =>
  Effect.flatMap(Snapshot.SnapshotStore, (store) =>
    store.latest(streamId).pipe(
      Effect.flatMap((s) => Option.isSome(s) && s.value.version >= version ? Effect.succeed(s.value) : Effect.fail("not yet")),
      Effect.retry({ times: 400, schedule: Schedule.spaced("5 millis") }),
      Effect.orElse(() => Effect.dieMessage(`no snapshot at ${version} for ${streamId}`))
    ))

describe("snapshots", () => {
  it.live("every N events: written after the append that crosses a multiple of N; loads start from it", () => {
    const { layer, reads } = counting()
    const Tally = tally({ snapshots: { schema: TallyState, every: 10 } })
    return Effect.gen(function*() {
      for (let i = 0; i < 7; i++) yield* Tally.handle("a", { events: [Added.make({ n: 1 }), Added.make({ n: 1 })] })
      const snapshot = yield* waitForSnapshot("Tally-a", 10)
      expect(snapshot.version).toBe(10) // the append of versions 9-10 reached 10; 11-14 crossed no multiple
      reads.length = 0
      const loaded = yield* Tally.load("a")
      expect(loaded).toEqual({ state: { total: 14, name: "" }, version: 14, source: "snapshot" })
      // from the snapshot: its own version (to check it is there) and the 4 after it
      expect(reads).toEqual([{ after: 9, events: 5 }])
    }).pipe(Effect.provide(Aggregate.layer(Tally)), Effect.provide(layer))
  })

  it.live.prop(
    "loading from any snapshot point gives the state and analytics of a full replay",
    [FastCheck.array(eventArb, { minLength: 1, maxLength: 60 }), FastCheck.nat()],
    ([events, at]) =>
      Effect.gen(function*() {
        const k = at % (events.length + 1)
        const Snapped = tally({ snapshots: { schema: TallyState, every: "on-demand" }, analytics: true })
        const Plain = tally({ analytics: true })
        const id = crypto.randomUUID()
        // written in a few appends, with a snapshot taken at version k
        yield* append(id, events.slice(0, k).length > 0 ? events.slice(0, k) : []).pipe(Effect.when(() => k > 0))
        const snapped = Aggregate.layer(Snapped)
        if (k > 0) expect(yield* Effect.provide(Snapped.snapshot(id), snapped)).toBe(k)
        if (k < events.length) yield* append(id, events.slice(k))
        const fromSnapshot = yield* Effect.provide(Snapped.load(id), snapped)
        const replayed = yield* Effect.provide(Plain.load(id), Aggregate.layer(Plain))
        expect(fromSnapshot.source).toBe(k > 0 ? "snapshot" : "replay")
        expect(replayed.source).toBe("replay")
        expect({ ...fromSnapshot, source: "replay" }).toEqual(replayed)
        expect(fromSnapshot.state).toEqual(events.reduce(evolve, initialState))
        expect(fromSnapshot.analytics?.total).toBe(events.length)
      }).pipe(Effect.provide(Layer.merge(EventStore.layerMemory, Snapshot.layerMemory))),
    { fastCheck: { numRuns: 60 } }
  )

  it.live("a snapshot from an old schema version without an upcaster is ignored: full replay and a warning", () => {
    const logs: Array<string> = []
    const logger = Logger.replace(Logger.defaultLogger, Logger.make(({ message }) => logs.push(String(message))))
    return Effect.gen(function*() {
      yield* append("old", [Added.make({ n: 5 }), Added.make({ n: 6 })])
      const V1 = tally({ snapshots: { schema: TallyState, every: "on-demand" } })
      yield* V1.snapshot("old").pipe(Effect.provide(Aggregate.layer(V1)))
      const ignoredBefore = Telemetry.snapshotsIgnored.unsafeValue([]).count
      const V2 = tally({ snapshots: { schema: TallyState, every: "on-demand", version: 2 } })
      expect(yield* V2.load("old").pipe(Effect.provide(Aggregate.layer(V2)))).toEqual({
        state: { total: 11, name: "" },
        version: 2,
        source: "replay"
      })
      expect(logs.some((l) => l.includes("snapshot ignored"))).toBe(true)
      expect(Telemetry.snapshotsIgnored.unsafeValue([]).count).toBe(ignoredBefore + 1)
      // with an upcaster the old snapshot is used
      const Upcasting = tally({
        snapshots: {
          schema: TallyState,
          every: "on-demand",
          version: 2,
          upcast: (state) => ({ ...(state as object), name: "upcast" })
        }
      })
      const upcast = yield* Upcasting.load("old").pipe(Effect.provide(Aggregate.layer(Upcasting)))
      expect(upcast).toMatchObject({ state: { total: 11, name: "upcast" }, source: "snapshot" })
    }).pipe(Effect.provide(Layer.merge(EventStore.layerMemory, Snapshot.layerMemory)), Effect.provide(logger))
  })

  it.live("a snapshot whose state no longer decodes is ignored", () =>
    Effect.gen(function*() {
      yield* append("bad", [Added.make({ n: 1 })])
      const snapshots = yield* Snapshot.SnapshotStore
      yield* snapshots.save({ streamId: "Tally-bad", streamType: "Tally", version: 1, schemaVersion: 1, state: { total: "many" } })
      const Tally = tally({ snapshots: { schema: TallyState, every: "on-demand" } })
      expect(yield* Tally.load("bad").pipe(Effect.provide(Aggregate.layer(Tally)))).toEqual({
        state: { total: 1, name: "" },
        version: 1,
        source: "replay"
      })
    }).pipe(Effect.provide(Layer.merge(EventStore.layerMemory, Snapshot.layerMemory))))

  it.live("a snapshot ahead of the stream (another database's, a truncated stream) is ignored", () =>
    Effect.gen(function*() {
      yield* append("ahead", [Added.make({ n: 1 })])
      const snapshots = yield* Snapshot.SnapshotStore
      yield* snapshots.save({ streamId: "Tally-ahead", streamType: "Tally", version: 9, schemaVersion: 1, state: { total: 100, name: "" } })
      const Tally = tally({ snapshots: { schema: TallyState, every: "on-demand" } })
      yield* Effect.gen(function*() {
        expect(yield* Tally.load("ahead")).toEqual({ state: { total: 1, name: "" }, version: 1, source: "replay" })
        const handled = yield* Tally.handle("ahead", { events: [Added.make({ n: 2 })] })
        expect(handled).toMatchObject({ version: 2, state: { total: 3, name: "" }, retries: 0 })
      }).pipe(Effect.provide(Aggregate.layer(Tally)))
    }).pipe(Effect.provide(Layer.merge(EventStore.layerMemory, Snapshot.layerMemory))))

  it.live("a failing snapshot write never fails the command; it is counted", () => {
    const failing = Layer.succeed(Snapshot.SnapshotStore, {
      save: () => Effect.die("disk on fire"),
      latest: () => Effect.succeed(Option.none()),
      atOrBefore: () => Effect.succeed(Option.none()),
      deleteOlderThan: () => Effect.succeed(0),
      stats: Effect.die("unused")
    })
    const Tally = tally({ snapshots: { schema: TallyState, every: 1 } })
    return Effect.gen(function*() {
      const before = Telemetry.snapshotFailures.unsafeValue([]).count
      const handled = yield* Tally.handle("fail", { events: [Added.make({ n: 3 })] })
      expect(handled.version).toBe(1)
      yield* Effect.sleep("50 millis")
      expect(Telemetry.snapshotFailures.unsafeValue([]).count).toBe(before + 1)
    }).pipe(Effect.provide(Aggregate.layer(Tally)), Effect.provide(Layer.merge(EventStore.layerMemory, failing)))
  })
})

describe("state cache", () => {
  it.live("a warm cache reads only the events after the cached version", () => {
    const { layer, reads } = counting()
    const Tally = tally({ cache: { capacity: 10 } })
    return Effect.gen(function*() {
      yield* append("c", Array.from({ length: 50 }, () => Added.make({ n: 1 })))
      expect((yield* Tally.load("c")).source).toBe("replay")
      reads.length = 0
      expect(yield* Tally.load("c")).toMatchObject({ state: { total: 50 }, version: 50, source: "cache" })
      expect(reads).toEqual([{ after: 49, events: 1 }]) // the cached version itself, checked, and nothing after it
      yield* append("c", [Doubled.make({})])
      reads.length = 0
      expect((yield* Tally.load("c")).state.total).toBe(100)
      expect(reads).toEqual([{ after: 49, events: 2 }])
    }).pipe(Effect.provide(Aggregate.layer(Tally)), Effect.provide(layer))
  })

  it.live("a conflict on a cached state drops it: the command is decided again at once on the stream as read", () => {
    const { layer, reads } = counting()
    const Tally = tally({ cache: { capacity: 10 } })
    return Effect.gen(function*() {
      for (let i = 0; i < 3; i++) yield* Tally.handle("x", { events: [Added.make({ n: 1 })] })
      reads.length = 0
      // another writer appends while this command is deciding
      const result = yield* Effect.all([
        Tally.handle("x", { events: [Added.make({ n: 10 })], pause: true }),
        Effect.zipRight(Effect.sleep("5 millis"), append("x", [Doubled.make({})]))
      ], { concurrency: "unbounded" })
      // the cache was behind the stream, not in a race with it: decided again at once, not a retry of the schedule
      expect(result[0].retries).toBe(0)
      expect(result[0].state.total).toBe(16)
      // decided on the cached state (v3) without a read; the append's conflict drops it, and the stream is read
      expect(reads.map((r) => r.after)).toEqual([0])
      // even a schedule that never retries: a stale cache is not a conflict of the command
      yield* append("x", [Doubled.make({})])
      const again = yield* Tally.handle("x", { events: [Added.make({ n: 1 })] }, { retry: Schedule.stop })
      expect(again).toMatchObject({ state: { total: 33 }, retries: 0 })
    }).pipe(Effect.provide(Aggregate.layer(Tally)), Effect.provide(layer))
  })

  it.live("a decision on a cached state that appends nothing stands only if the stream has not moved on", () => {
    class TooLow extends Schema.TaggedError<TooLow>()("TooLow", { total: Schema.Number }) {}
    type GateCommand = { readonly add: number } | { readonly atLeast: number }
    const Gate = Aggregate.make({
      name: "Gate",
      events: registry,
      decider: {
        initialState,
        decide: (command: GateCommand, state: TallyState) =>
          "add" in command
            ? Either.right([Added.make({ n: command.add })])
            : state.total >= command.atLeast
            ? Either.right([])
            : Either.left(new TooLow({ total: state.total })),
        evolve
      },
      cache: { capacity: 10 }
    })
    return Effect.gen(function*() {
      // two handlers of one aggregate on one store, each with its own cache: each is "another writer" to the other
      const mine = yield* Aggregate.handler(Gate)
      const theirs = yield* Aggregate.handler(Gate)
      yield* mine.handle("g", { add: 1 })
      expect(yield* Effect.flip(mine.handle("g", { atLeast: 5 }))).toMatchObject({ _tag: "TooLow", total: 1 })
      yield* theirs.handle("g", { add: 10 })
      // my cache says 1: the decider's error is checked against the stream (11) and the command decided again
      const passed = yield* mine.handle("g", { atLeast: 5 })
      expect(passed).toMatchObject({ state: { total: 11 }, version: 2, events: [] })
      yield* theirs.handle("g", { add: -20 })
      // my cache now says 11: "nothing to do" is checked too, and the stream (-9) says otherwise
      expect(yield* Effect.flip(mine.handle("g", { atLeast: 5 }))).toMatchObject({ _tag: "TooLow", total: -9 })
      // a decision with events on a stale cache: the append conflicts, and the command is decided again on the stream
      const added = yield* theirs.handle("g", { add: 1 })
      expect(added.version).toBe(4)
      const mineAdded = yield* mine.handle("g", { add: 100 })
      expect(mineAdded).toMatchObject({ state: { total: 92 }, version: 5, retries: 0 })
    }).pipe(Effect.scoped, Effect.provide(Layer.merge(EventStore.layerMemory, Snapshot.layerMemory)))
  })

  it.live("capacity bounds the cache (least recently used goes first); each handler layer has its own", () =>
    Effect.gen(function*() {
      const cache = new StateCache.Lru<number>(2)
      cache.set("s1", { state: 1, version: 1, analytics: undefined })
      cache.set("s2", { state: 2, version: 1, analytics: undefined })
      cache.get("s1")
      cache.set("s3", { state: 3, version: 1, analytics: undefined })
      expect(cache.get("s2")).toBeUndefined()
      expect(cache.get("s1")?.state).toBe(1)
      expect(cache.size).toBe(2)
      // through an aggregate: two stores (two handler layers), same stream id, separate states
      const Tally = tally({ cache: { capacity: 10 } })
      const run = (n: number) =>
        Effect.zipRight(
          Effect.tap(Tally.handle("same", { events: [Added.make({ n })] }), (handled) => {
            expect(handled.retries).toBe(0) // a state cached for the other store would have forced a conflict
            expect(handled.version).toBe(1)
          }),
          Tally.load("same")
        ).pipe(Effect.provide(Aggregate.layer(Tally)), Effect.provide(Layer.merge(EventStore.layerMemory, Snapshot.layerMemory)))
      expect((yield* run(1)).state.total).toBe(1)
      expect((yield* run(2)).state.total).toBe(2)
    }))
})

describe("event analytics", () => {
  const at = (ms: number) => DateTime.unsafeMake(ms)
  it("counts, first and last, distribution, most and least frequent, merge", () => {
    const t = new Analytics.Tracker()
    t.record("A", at(10))
    t.record("B", at(20))
    t.record("A", at(30))
    t.record("C", at(40))
    const a = t.value
    expect(a).toEqual({ total: 4, counts: { A: 2, B: 1, C: 1 }, firstAt: at(10), lastAt: at(40) })
    expect(Analytics.distribution(a)).toEqual({ A: 50, B: 25, C: 25 })
    expect(Analytics.mostFrequent(a)).toEqual(Option.some({ type: "A", count: 2 }))
    expect(Analytics.leastFrequent(a)).toEqual(Option.some({ type: "B", count: 1 }))
    expect(Analytics.mostFrequent(Analytics.empty)).toEqual(Option.none())
    const other = new Analytics.Tracker()
    other.record("C", at(5))
    expect(Analytics.merge(a, other.value)).toEqual({ total: 5, counts: { A: 2, B: 1, C: 2 }, firstAt: at(5), lastAt: at(40) })
    expect(Analytics.merge(Analytics.empty, Analytics.empty)).toEqual(Analytics.empty)
  })

  const Tally = tally({ analytics: true, snapshots: { schema: TallyState, every: 3 } })
  it.live("handle and load report the same analytics as a replay, restored from snapshots", () =>
    Effect.gen(function*() {
      yield* Tally.handle("an", { events: [Added.make({ n: 1 }), Doubled.make({})] })
      const last = yield* Tally.handle("an", { events: [Renamed.make({ name: "x" }), Added.make({ n: 2 })] })
      yield* waitForSnapshot("Tally-an", 4)
      const loaded = yield* Tally.load("an")
      expect(loaded.analytics).toEqual(last.analytics)
      expect(loaded.analytics?.counts).toEqual({ Added: 2, Doubled: 1, Renamed: 1 })
      const Replay = tally({ analytics: true })
      const replay = yield* Replay.load("an").pipe(Effect.provide(Aggregate.layer(Replay)))
      expect(replay.analytics).toEqual(loaded.analytics)
    }).pipe(Effect.provide(Aggregate.layer(Tally)), Effect.provide(Layer.merge(EventStore.layerMemory, Snapshot.layerMemory))))
})
