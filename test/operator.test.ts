/**
 * The `Operator` in process, on SQLite and PostgreSQL: streams with filters and keyset paging, a stream either way,
 * an event's chain, projections' lag and stall, `check` levels, parked skip and retry, doctor, export and import
 * (idempotent, versions kept, conflicts refused).
 */
import { describe, expect, it } from "@effect/vitest"
import * as SqlClient from "@effect/sql/SqlClient"
import { EventStore, Operator, Projection } from "effect-eventstore"
import * as Sqlite from "effect-eventstore/Sqlite"
import * as SqlProjection from "effect-eventstore/SqlProjection"
import * as Chunk from "effect/Chunk"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Stream from "effect/Stream"
import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"
import * as Nats from "effect-eventstore/Nats"
import * as NatsFixture from "./fixtures/nats.js"
import * as Pg from "./fixtures/pg.js"
import { Totals } from "./fixtures/totals.js"

const dir = fs.mkdtempSync(path.join(os.tmpdir(), "effect-eventstore-operator-"))
const dbFile = (name: string) => path.join(dir, `${name}-${crypto.randomUUID().slice(0, 8)}.db`)

const sqlite = (options: Operator.Options = {}, durability: "full" | "normal" = "full") =>
  Operator.layer(options).pipe(
    Layer.provideMerge(SqlProjection.layer),
    Layer.provideMerge(Sqlite.layer({ filename: dbFile("op"), durability, pollInterval: "20 millis" }))
  )

const fill = Effect.gen(function*() {
  const store = yield* EventStore.EventStore
  for (let i = 0; i < 12; i++) {
    const id = `Account-${String(i).padStart(2, "0")}`
    yield* store.append(id, [
      { type: "Opened", payload: { i }, metadata: { correlationId: `c-${i % 3}` } },
      ...(i % 2 === 0 ? [{ type: "Added", payload: { n: i } }] : [])
    ])
  }
  yield* store.append("Order-1", [{ type: "Placed", payload: {} }])
})

const suite = (name: string, make: () => Layer.Layer<Operator.Operator | EventStore.EventStore | SqlClient.SqlClient, unknown>) =>
  describe(`Operator on ${name}`, () => {
    it.live("streams: prefix, stream type, event type and time filters, keyset pages that neither skip nor repeat", () =>
      Effect.gen(function*() {
        yield* fill
        const op = yield* Operator.Operator
        const seen: Array<string> = []
        let after: string | undefined
        for (let pages = 0; pages < 10; pages++) {
          const page: Operator.StreamsPage = yield* op.streams({ prefix: "Account-", limit: 5, after })
          seen.push(...page.streams.map((s) => s.streamId))
          if (page.next === undefined) break
          after = page.next
        }
        expect(seen).toEqual(Array.from({ length: 12 }, (_, i) => `Account-${String(i).padStart(2, "0")}`))
        const first = yield* op.streams({ prefix: "Account-0" })
        expect(first.streams.map((s) => [s.streamId, s.version])).toEqual(
          Array.from({ length: 10 }, (_, i) => [`Account-0${i}`, i % 2 === 0 ? 2 : 1])
        )
        expect((yield* op.streams({ streamType: "Order" })).streams.map((s) => s.streamId)).toEqual(["Order-1"])
        expect((yield* op.streams({ eventType: "Added" })).streams).toHaveLength(6)
        expect((yield* op.streams({ since: Date.now() + 60_000 })).streams).toEqual([])
        expect((yield* op.streams({ until: Date.now() + 60_000 })).streams).toHaveLength(13)
        const bad = yield* Effect.flip(op.streams({ limit: 0 }))
        expect(bad._tag).toBe("InvalidInput")
      }).pipe(Effect.provide(make())))

    it.live("a stream forward and backward, page by page; an unknown stream is NotFound", () =>
      Effect.gen(function*() {
        const store = yield* EventStore.EventStore
        yield* store.append("Long-1", Array.from({ length: 7 }, (_, i) => ({ type: "Added", payload: { n: i } })))
        const op = yield* Operator.Operator
        const forward: Array<number> = []
        let from: number | undefined
        for (;;) {
          const page: Operator.EventsPage = yield* op.stream("Long-1", { limit: 3, from })
          forward.push(...page.events.map((e) => e.version))
          if (page.next === undefined) break
          from = page.next
        }
        expect(forward).toEqual([1, 2, 3, 4, 5, 6, 7])
        const backward: Array<number> = []
        from = undefined
        for (;;) {
          const page: Operator.EventsPage = yield* op.stream("Long-1", { limit: 3, from, direction: "backward" })
          backward.push(...page.events.map((e) => e.version))
          if (page.next === undefined) break
          from = page.next
        }
        expect(backward).toEqual([7, 6, 5, 4, 3, 2, 1])
        expect((yield* Effect.flip(op.stream("Nope-1")))._tag).toBe("NotFound")
      }).pipe(Effect.provide(make())))

    it.live("an event by id or position, with its causes and the events of its correlation", () =>
      Effect.gen(function*() {
        const store = yield* EventStore.EventStore
        const a = yield* store.append("Chain-1", [{ type: "Started", payload: {}, metadata: { correlationId: "k" } }])
        const rootId = a.events[0]!.eventId
        const b = yield* store.append("Chain-2", [{
          type: "Followed",
          payload: {},
          metadata: { correlationId: "k", causationId: rootId }
        }])
        const middle = b.events[0]!
        yield* store.append("Chain-3", [{ type: "Ended", payload: {}, metadata: { correlationId: "k", causationId: middle.eventId } }])
        yield* store.append("Other-1", [{ type: "Unrelated", payload: {}, metadata: { correlationId: "z" } }])
        const op = yield* Operator.Operator
        const byPosition = yield* op.event(String(middle.position))
        expect(byPosition.event.eventId).toBe(middle.eventId)
        expect(byPosition.causes.map((e) => e.eventId)).toEqual([rootId])
        expect(byPosition.related.map((e) => e.streamId)).toEqual(["Chain-1", "Chain-3"])
        const byId = yield* op.event(middle.eventId)
        expect(byId.event.position).toBe(middle.position)
        expect((yield* Effect.flip(op.event("999999")))._tag).toBe("NotFound")
      }).pipe(Effect.provide(make())))

    it.live("export then import into another store: the same events, versions and ids; a second import writes nothing", () =>
      Effect.gen(function*() {
        const lines = yield* Effect.gen(function*() {
          yield* fill
          const op = yield* Operator.Operator
          return Chunk.toArray(yield* Stream.runCollect(op.exportEvents()))
        }).pipe(Effect.provide(make()))
        expect(lines).toHaveLength(19)
        yield* Effect.gen(function*() {
          const op = yield* Operator.Operator
          const store = yield* EventStore.EventStore
          expect(yield* op.importLines(lines)).toEqual({ written: 19, skipped: 0 })
          expect(yield* op.importLines(lines)).toEqual({ written: 0, skipped: 19 })
          const again = Chunk.toArray(yield* Stream.runCollect(op.exportEvents()))
          const strip = (l: string) => {
            const { position: _, ...rest } = JSON.parse(l)
            return rest
          }
          expect(again.map(strip)).toEqual(lines.map(strip))
          // the store goes on from the imported versions
          const next = yield* store.append("Account-00", [{ type: "Added", payload: { n: 1 } }], { expectedVersion: 2 })
          expect(next.version).toBe(3)
          // a stored id at another place, and a version gap, are refused with nothing of the chunk written
          const moved = JSON.stringify({ ...JSON.parse(lines[0]!), streamId: "Elsewhere-1" })
          expect((yield* Effect.flip(op.importLines([moved])))._tag).toBe("InvalidInput")
          const gap = JSON.stringify({ ...JSON.parse(lines[0]!), eventId: "fresh-1", version: 9 })
          const fresh = JSON.stringify({ ...JSON.parse(lines[0]!), eventId: "fresh-2", streamId: "New-1", version: 1 })
          expect((yield* Effect.flip(op.importLines([fresh, gap])))._tag).toBe("InvalidInput")
          expect(yield* store.version("New-1")).toBe(0)
          expect((yield* Effect.flip(op.importLines(["{not json"])))._tag).toBe("InvalidInput")
        }).pipe(Effect.provide(make()))
      }))
  })

suite("SQLite", () => sqlite())
describe.skipIf(!Pg.available && !["true", "1"].includes(process.env.CI ?? ""))("PostgreSQL", () => {
  suite("PostgreSQL", () => Operator.layer().pipe(Layer.provideMerge(Pg.layer("operator"))))
})

describe("Operator: projections", () => {
  it.live("lag, lag seconds and a stall: a checkpoint frozen while events wait is CRIT whatever its lag", () =>
    Effect.gen(function*() {
      const filename = dbFile("stall")
      const storeLayer = Sqlite.layer({ filename, pollInterval: "20 millis" })
      // the projection runs, catches up, then stops (its layer closes): its checkpoint stays where it was
      yield* Effect.gen(function*() {
        const store = yield* EventStore.EventStore
        const projections = yield* Projection.Projections
        const last = yield* store.append("Acc-1", [{ type: "Added", payload: { n: 1 } }, { type: "Added", payload: { n: 2 } }])
        yield* projections.awaitPosition("totals", last.position, "10 seconds")
      }).pipe(Effect.provide(Projection.layer([Totals]).pipe(Layer.provideMerge(SqlProjection.layer), Layer.provideMerge(storeLayer))))
      yield* Effect.gen(function*() {
        const op = yield* Operator.Operator
        const healthy = yield* op.check({ stalledCrit: 1, lagCrit: 100 })
        expect(healthy.level).toBe("OK")
        const store = yield* EventStore.EventStore
        yield* store.append("Acc-2", [{ type: "Added", payload: { n: 3 } }])
        const [info] = yield* op.projections
        expect(info).toMatchObject({ name: "totals", position: 2, head: 3, lag: 1, parked: 0, leased: false })
        expect(info!.state).toBeUndefined()
        yield* Effect.sleep("1200 millis")
        const stalled = yield* op.check({ stalledCrit: 1, lagCrit: 100 })
        expect(stalled).toMatchObject({ level: "CRIT", code: 2 })
        expect(stalled.projections[0]!.reasons.join()).toContain("stalled")
        // a lag threshold alone does not see it: the lag is 1
        expect((yield* op.check({ lagWarn: 10 })).level).toBe("OK")
        expect((yield* op.check({ lagSecondsWarn: 1 })).level).toBe("WARN")
        expect((yield* Effect.flip(op.check({}, ["nope"])))._tag).toBe("NotFound")
      }).pipe(Effect.provide(Operator.layer().pipe(Layer.provideMerge(storeLayer))))
    }))

  it.live("parked events: listed by page, skipped in a range, retried through a registered projection's handler", () =>
    Effect.gen(function*() {
      const op = yield* Operator.Operator
      const sql = yield* SqlClient.SqlClient
      const store = yield* EventStore.EventStore
      yield* Effect.all(Totals.init.map((m) => typeof m === "function" ? m((t) => t) : m))
      const appended = yield* store.append("Acc-9", Array.from({ length: 5 }, (_, i) => ({ type: "Added", payload: { n: i + 1 } })))
      const positions = appended.events.map((e) => e.position)
      yield* SqlProjection.migrate
      for (const [i, p] of positions.entries()) {
        yield* sql`INSERT INTO eventstore_parked_events (projection, position, event_id, stream_id, event_type, reason, parked_at)
          VALUES ('totals', ${p}, ${appended.events[i]!.eventId}, 'Acc-9', 'Added', ${`boom ${i}`}, ${Date.now() + i})`
      }
      const page1 = yield* op.parked("totals", { limit: 2 })
      expect(page1.parked.map((p) => p.position)).toEqual(positions.slice(0, 2))
      const page2 = yield* op.parked("totals", { limit: 2, after: page1.next! })
      expect(page2.parked.map((p) => p.position)).toEqual(positions.slice(2, 4))
      // two projections parked at one position: pages of one still list both (a page ends with its position's all)
      yield* sql`INSERT INTO eventstore_parked_events (projection, position, event_id, stream_id, event_type, reason, parked_at)
        VALUES ('another', ${positions[0]!}, ${appended.events[0]!.eventId}, 'Acc-9', 'Added', 'x', ${Date.now()})`
      const listed: Array<string> = []
      let cursor: number | undefined
      for (let pages = 0; pages < 10; pages++) {
        const page: Operator.ParkedPage = yield* op.parked(undefined, { limit: 1, ...(cursor !== undefined ? { after: cursor } : {}) })
        listed.push(...page.parked.map((p) => `${p.projection}@${p.position}`))
        if (page.next === undefined) break
        cursor = page.next
      }
      expect(listed).toEqual([`another@${positions[0]}`, ...positions.map((p) => `totals@${p}`)])
      expect(yield* op.skip("another", positions[0]!)).toBe(1)
      const shown = yield* op.parkedEvent("totals", positions[0]!)
      expect(shown.parked.reason).toBe("boom 0")
      expect(shown.event?.eventId).toBe(appended.events[0]!.eventId)
      expect(yield* op.skip("totals", positions[0]!, positions[1]!)).toBe(2)
      expect((yield* op.retry("totals", positions[2]!, positions[4]!))).toEqual({ retried: 3 })
      expect((yield* op.parked("totals")).parked).toEqual([])
      const rows = yield* sql<{ sum: number }>`SELECT sum FROM totals WHERE stream = 'Acc-9'`
      expect(rows[0]!.sum).toBe(3 + 4 + 5)
      const unknown = yield* Effect.flip(op.retry("other", 1))
      expect(unknown._tag).toBe("Unsupported")
      const rebuild = yield* Effect.flip(Stream.runDrain(op.rebuild("totals")))
      expect(rebuild._tag).toBe("Unsupported")
    }).pipe(Effect.provide(sqlite({ projections: [Totals] }))))

  it.live("doctor: WAL and synchronous FULL are OK; durability normal is a WARN", () =>
    Effect.gen(function*() {
      const full = yield* Effect.provide(Effect.flatMap(Operator.Operator, (op) => op.doctor), sqlite())
      expect(full.ok).toBe(true)
      expect(full.findings.map((f) => [f.setting, f.value])).toEqual([["journal_mode", "wal"], ["synchronous", "FULL"]])
      const normal = yield* Effect.provide(Effect.flatMap(Operator.Operator, (op) => op.doctor), sqlite({}, "normal"))
      expect(normal.ok).toBe(false)
      expect(normal.findings.find((f) => f.setting === "synchronous")).toMatchObject({ value: "NORMAL", level: "WARN" })
    }))
})

describe.skipIf(!NatsFixture.available)("Operator: the bus's consumers on the overview", () => {
  it.live("Nats.consumers lists a JetStream stream's durable consumers with their pending counts; the overview shows them", () =>
    Effect.gen(function*() {
      const stream = NatsFixture.unique("OPS")
      const client = yield* Nats.NatsClient
      yield* Effect.promise(() => client.manager.streams.add({ name: stream, subjects: [`${stream}.>`] }))
      yield* Effect.promise(() => client.manager.consumers.add(stream, { durable_name: "billing", ack_policy: "explicit" as any }))
      for (let i = 0; i < 3; i++) yield* Effect.promise(() => client.jetstream.publish(`${stream}.x`, new Uint8Array([i])))
      const listed = yield* Nats.consumers(stream)
      expect(listed.map((c) => [c.name, c.stream, c.pending, c.ackPending])).toEqual([["billing", stream, 3, 0]])
      const overview = yield* Effect.provide(
        Effect.flatMap(Operator.Operator, (op) => op.overview),
        Operator.layer({ busConsumers: Nats.consumers(stream) }).pipe(
          Layer.provideMerge(Sqlite.layer({ filename: dbFile("bus") })),
          Layer.provide(Layer.succeed(Nats.NatsClient, client))
        )
      )
      expect(overview.bus?.map((c) => c.name)).toEqual(["billing"])
      // a broker that cannot answer leaves them out of the overview; the overview still answers
      const missing = yield* Effect.provide(
        Effect.flatMap(Operator.Operator, (op) => op.overview),
        Operator.layer({ busConsumers: Effect.provideService(Nats.consumers("NO_SUCH_STREAM_X"), Nats.NatsClient, client) }).pipe(
          Layer.provideMerge(Sqlite.layer({ filename: dbFile("bus2") }))
        )
      )
      expect(missing.bus).toBeUndefined()
      yield* Effect.promise(() => client.manager.streams.delete(stream))
    }).pipe(Effect.provide(Nats.layer({ servers: NatsFixture.url }))))
})
