/**
 * Tenants in a shared database, run by every backend against its layer: the tenant is part of a stream's identity,
 * and a tenant's store never delivers another tenant's event (a property over random appends).
 */
import { expect, layer } from "@effect/vitest"
import { Aggregate, Event, EventStore, Seed, Tenancy } from "effect-eventstore"
import * as Chunk from "effect/Chunk"
import * as Effect from "effect/Effect"
import * as FastCheck from "effect/FastCheck"
import * as Fiber from "effect/Fiber"
import type * as Layer from "effect/Layer"
import * as Option from "effect/Option"
import * as Schema from "effect/Schema"
import * as Stream from "effect/Stream"

const uid = () => crypto.randomUUID().replace(/-/g, "").slice(0, 10)
const ev = (payload: Record<string, unknown> = {}, extra: Partial<Event.NewEvent> = {}): Event.NewEvent => ({
  type: "Happened",
  payload,
  ...extra
})
const collect = <A, E, R>(s: Stream.Stream<A, E, R>) => Effect.map(Stream.runCollect(s), Chunk.toReadonlyArray)
const Store = EventStore.EventStore

export const tenancySuite = (name: string, storeLayer: Layer.Layer<EventStore.EventStore, unknown>) =>
  layer(storeLayer, { excludeTestServices: true, timeout: "120 seconds" })(`tenancy: ${name}`, (it) => {
    it.effect("two tenants' streams of one id are two streams; the whole database's store has its own", () =>
      Effect.gen(function*() {
        const store = yield* Store
        const tenantA = `a${uid()}`
        const a = yield* Tenancy.eventStore(store, tenantA)
        const b = yield* Tenancy.eventStore(store, `b${uid()}`)
        const stream = `Account-${uid()}`
        yield* a.append(stream, [ev({ n: 1 }), ev({ n: 2 })], { expectedVersion: "no-stream" })
        yield* b.append(stream, [ev({ n: 3 })], { expectedVersion: "no-stream" })
        yield* store.append(stream, [ev({ n: 4 })], { expectedVersion: "no-stream" })
        expect(yield* a.version(stream)).toBe(2)
        expect(yield* b.version(stream)).toBe(1)
        expect(yield* store.version(stream)).toBe(1)
        const readA = yield* collect(a.read(stream))
        expect(readA.map((e) => [e.streamId, e.payload])).toEqual([[stream, { n: 1 }], [stream, { n: 2 }]])
        expect(readA.map((e) => e.metadata.tenantId)).toEqual([tenantA, tenantA])
        expect((yield* b.readPage(stream)).map((e) => e.payload)).toEqual([{ n: 3 }])
        // a conflict names the stream as the tenant does
        const conflict = yield* Effect.flip(a.append(stream, [ev()], { expectedVersion: 0 }))
        expect(conflict).toMatchObject({ _tag: "ConcurrencyError", streamId: stream, actual: 2 })
        const appended = yield* b.append(stream, [ev()], { expectedVersion: 1 })
        expect(appended.streamId).toBe(stream)
        expect(appended.events.map((e) => e.streamId)).toEqual([stream])
      }))

    it.effect("a tenant's store stamps its tenant and refuses another; the whole store sees every tenant", () =>
      Effect.gen(function*() {
        const store = yield* Store
        const tenant = `t${uid()}`
        const t = yield* Tenancy.eventStore(store, tenant)
        const stream = `Doc-${uid()}`
        const before = yield* store.head
        const written = yield* t.append(stream, [ev(), ev({}, { metadata: { tenantId: tenant, principalId: "p" } })])
        expect(written.events.map((e) => e.metadata.tenantId)).toEqual([tenant, tenant])
        const other = yield* Effect.flip(t.append(stream, [ev()], { metadata: { tenantId: "other" } }))
        expect(other).toMatchObject({ _tag: "InvalidInput", field: "metadata.tenantId" })
        const own = yield* Effect.flip(t.append(stream, [ev(), ev({}, { metadata: { tenantId: "other" } })]))
        expect(own).toMatchObject({ _tag: "InvalidInput", field: "events[1].metadata.tenantId" })
        expect(yield* t.version(stream)).toBe(2)
        const all = yield* collect(store.readAll({ fromPosition: before }))
        const mine = all.filter((e) => e.metadata.tenantId === tenant)
        expect(mine.map((e) => [e.streamId, e.version])).toEqual([[stream, 1], [stream, 2]])
        // an unscoped append's metadata tenantId is only metadata: the stream is not the tenant's
        yield* store.append(stream, [ev({ n: 9 }, { metadata: { tenantId: tenant } })])
        expect(yield* t.version(stream)).toBe(2)
        expect((yield* collect(t.readAll({ fromPosition: before }))).map((e) => e.version)).toEqual([1, 2])
      }))

    it.effect("command ids are per tenant", () =>
      Effect.gen(function*() {
        const store = yield* Store
        const a = yield* Tenancy.eventStore(store, `a${uid()}`)
        const b = yield* Tenancy.eventStore(store, `b${uid()}`)
        const stream = `Cmd-${uid()}`
        const commandId = `cmd-${uid()}`
        const first = yield* a.append(stream, [ev()], { commandId })
        const other = yield* b.append(stream, [ev()], { commandId })
        expect(other.replayed).not.toBe(true)
        const again = yield* a.append(stream, [ev()], { commandId })
        expect(again).toMatchObject({ replayed: true, streamId: stream, position: first.position })
        expect(Option.map(yield* b.command(commandId), (r) => r.position)).toEqual(Option.some(other.position))
        expect(yield* store.command(commandId)).toEqual(Option.none())
      }))

    it.effect("the same seed and the same command id in two tenants: each writes its own events", () =>
      Effect.gen(function*() {
        const store = yield* Store
        const [a, b] = yield* Effect.all([Tenancy.eventStore(store, `a${uid()}`), Tenancy.eventStore(store, `b${uid()}`)])
        const seed = [{ streamId: "Currency-EUR", events: [ev({ code: "EUR" })] }]
        const run = (s: EventStore.EventStoreService) => Seed.seed(seed).pipe(Effect.provideService(Store, s))
        expect(yield* run(a)).toMatchObject({ saved: 1 })
        expect(yield* run(b)).toMatchObject({ saved: 1 })
        expect(yield* run(a)).toMatchObject({ saved: 0, skipped: 1 })
        const [ea] = yield* a.readPage("Currency-EUR")
        const [eb] = yield* b.readPage("Currency-EUR")
        expect(ea!.eventId).not.toBe(eb!.eventId)
        const Counted = Schema.TaggedStruct("Counted", { by: Schema.Int })
        const Counter = Aggregate.make({
          name: `C${uid()}`,
          events: Event.registry([Counted]),
          decider: { initialState: 0, decide: (by: number) => [Counted.make({ by })], evolve: (n: number) => n + 1 }
        })
        const handle = (s: EventStore.EventStoreService) =>
          Effect.scoped(Effect.flatMap(Aggregate.handler(Counter), (h) => h.handle("1", 1, { commandId: "req-1" })))
            .pipe(Effect.provideService(Store, s))
        const ha = yield* handle(a)
        const hb = yield* handle(b)
        expect([ha.replayed, hb.replayed]).toEqual([undefined, undefined])
        expect(ha.events[0]!.eventId).not.toBe(hb.events[0]!.eventId)
        expect((yield* handle(a)).replayed).toBe(true)
      }))

    it.effect("bad tenant ids are InvalidInput", () =>
      Effect.gen(function*() {
        const store = yield* Store
        for (const id of ["", "../x", "a/b", "x'y", "1; DROP TABLE x", "a.b", " a", "-a", "a".repeat(64), "a\u001fb", "é"]) {
          const error = yield* Effect.flip(Tenancy.eventStore(store, id))
          expect(error).toMatchObject({ _tag: "InvalidInput", field: "tenantId" })
        }
        const scoped = yield* Tenancy.eventStore(store, "ok")
        expect((yield* Effect.flip(Tenancy.eventStore(scoped, "ok")))._tag).toBe("InvalidInput")
      }))

    it.effect("an aggregate on a tenant's store: its own state, snapshots and conflicts", () =>
      Effect.gen(function*() {
        const Counted = Schema.TaggedStruct("Counted", { by: Schema.Int })
        const Counter = Aggregate.make({
          name: `Counter${uid()}`,
          events: Event.registry([Counted]),
          decider: {
            initialState: 0,
            decide: (by: number) => [Counted.make({ by })],
            evolve: (n: number, e: typeof Counted.Type) => n + e.by
          }
        })
        const store = yield* Store
        const run = (tenant: string | undefined, by: number) =>
          Effect.gen(function*() {
            const scoped = tenant === undefined ? store : yield* Tenancy.eventStore(store, tenant)
            const handler = yield* Aggregate.handler(Counter).pipe(Effect.provideService(EventStore.EventStore, scoped))
            return yield* handler.handle("1", by)
          }).pipe(Effect.scoped)
        const a = `a${uid()}`
        const b = `b${uid()}`
        yield* Effect.all([run(a, 1), run(a, 2), run(b, 10), run(undefined, 100), run(a, 3)], { concurrency: "unbounded" })
        expect((yield* run(a, 0)).state).toBe(6)
        expect((yield* run(b, 0)).state).toBe(10)
        expect((yield* run(undefined, 0)).state).toBe(100)
      }))

    it.effect("property: a tenant's readAll and subscribe never deliver another tenant's event", () =>
      Effect.gen(function*() {
        const store = yield* Store
        const tenants = ["t1", "t2", "t3"].map((t) => `${t}${uid()}`)
        const scoped = yield* Effect.forEach(tenants, (t) => Tenancy.eventStore(store, t))
        const start = yield* store.head
        const live = yield* Effect.forEach(scoped, (s) =>
          Effect.fork(collect(s.subscribe({ fromPosition: start }).pipe(Stream.takeUntil((e) => (e.payload as any).last === true)))))
        const scenarios = FastCheck.sample(
          FastCheck.array(
            FastCheck.record({
              tenant: FastCheck.integer({ min: -1, max: 2 }),
              stream: FastCheck.constantFrom("A-1", "A-2", "B-1"),
              n: FastCheck.integer({ min: 1, max: 3 })
            }),
            { minLength: 5, maxLength: 25 }
          ),
          { numRuns: 8, seed: 42 }
        )
        const expected = new Map<number, Array<string>>()
        let i = 0
        for (const scenario of scenarios) {
          for (const step of scenario) {
            const events = Array.from({ length: step.n }, () => ev({ i: i++ }))
            if (step.tenant < 0) yield* store.append(step.stream, events)
            else {
              yield* scoped[step.tenant]!.append(step.stream, events)
              const list = expected.get(step.tenant) ?? []
              for (const e of events) list.push(`${step.stream}:${(e.payload as any).i}`)
              expected.set(step.tenant, list)
            }
          }
        }
        for (let t = 0; t < tenants.length; t++) {
          yield* scoped[t]!.append("End", [ev({ last: true })])
          const read = yield* collect(scoped[t]!.readAll({ fromPosition: start }))
          expect(read.every((e) => e.metadata.tenantId === tenants[t])).toBe(true)
          const seen = read.filter((e) => e.streamId !== "End").map((e) => `${e.streamId}:${(e.payload as any).i}`)
          expect(seen).toEqual(expected.get(t) ?? [])
          // versions per stream are the tenant's own: 1, 2, 3 …
          const versions = new Map<string, number>()
          for (const e of read) {
            expect(e.version).toBe((versions.get(e.streamId) ?? 0) + 1)
            versions.set(e.streamId, e.version)
          }
          const filtered = yield* collect(scoped[t]!.readAll({ fromPosition: start, filter: { streamTypes: ["A"] } }))
          expect(filtered.map((e) => `${e.streamId}:${(e.payload as any).i}`)).toEqual(
            (expected.get(t) ?? []).filter((s) => s.startsWith("A-"))
          )
        }
        for (let t = 0; t < tenants.length; t++) {
          const delivered = yield* Fiber.join(live[t]!)
          expect(delivered.every((e) => e.metadata.tenantId === tenants[t])).toBe(true)
          expect(delivered.filter((e) => e.streamId !== "End").length).toBe((expected.get(t) ?? []).length)
        }
      }))
  })
