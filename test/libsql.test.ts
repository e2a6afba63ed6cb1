import { describe, expect, it } from "@effect/vitest"
import * as SqlClient from "@effect/sql/SqlClient"
import { EventStore, type Event } from "effect-eventstore"
import * as LibSql from "effect-eventstore/LibSql"
import * as SqlProjection from "effect-eventstore/SqlProjection"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Redacted from "effect/Redacted"
import * as Stream from "effect/Stream"
import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"
import { eventStoreSuite } from "./conformance/EventStore.js"
import { guaranteesSuite } from "./conformance/Guarantees.js"
import { tenancySuite } from "./conformance/Tenancy.js"
import { projectionSuite } from "./conformance/Projection.js"
import { snapshotStoreSuite } from "./conformance/SnapshotStore.js"
import { sqlModel } from "./fixtures/sqlModel.js"

const dir = fs.mkdtempSync(path.join(os.tmpdir(), "effect-eventstore-libsql-"))
const dbFile = (name: string) => path.join(dir, `${name}-${crypto.randomUUID().slice(0, 8)}.db`)

// An hour-long poll interval: the subscription tests pass only if commits wake subscribers directly.
eventStoreSuite("libsql (local file)", LibSql.layer({ url: `file:${dbFile("conformance")}`, pollInterval: "1 hour" }))
guaranteesSuite("libsql (local file)", LibSql.layer({ url: `file:${dbFile("guarantees")}` }))
tenancySuite("libsql (local file)", LibSql.layer({ url: `file:${dbFile("tenancy")}` }))
snapshotStoreSuite("libsql (local file)", LibSql.layer({ url: dbFile("snapshots") }))

const libsqlEnv = (label: string) => () => ({
  layer: SqlProjection.layer.pipe(Layer.provideMerge(LibSql.layer({ url: dbFile(label), pollInterval: "1 hour" }))),
  model: sqlModel
})
projectionSuite("libsql (local file)", libsqlEnv("projections"))
projectionSuite("libsql (local file), statement handlers", () => ({
  ...libsqlEnv("statements")(),
  statement: (projection: string, event: Event.RecordedEvent<unknown>, sql: SqlClient.SqlClient) =>
    sql`INSERT INTO test_seen (projection, position) VALUES (${projection}, ${event.position})`
}))

describe("LibSQL specifics", () => {
  it.live("options are checked: a typed error names the one that is wrong", () =>
    Effect.gen(function*() {
      const cases: Array<[LibSql.Options, string]> = [
        [{ url: "" }, "url"],
        [{ url: "ftp://host/db" }, "url"],
        [{ url: "libsql://db.example.com", syncUrl: "libsql://other.example.com" }, "syncUrl"],
        [{ url: "file:replica.db", syncUrl: "file:other.db" }, "syncUrl"],
        [{ url: "file:replica.db", syncInterval: 5 }, "syncInterval"],
        [{ url: "file:replica.db", syncUrl: "libsql://db.example.com", syncInterval: 0 }, "syncInterval"],
        [{ url: "libsql://db.example.com", encryptionKey: Redacted.make("k") }, "encryptionKey"]
      ]
      for (const [options, field] of cases) {
        const error = yield* Effect.flip(Effect.scoped(Layer.build(LibSql.layer(options))))
        expect(error).toMatchObject({ _tag: "StoreError", operation: "open", cause: { _tag: "InvalidInput", field } })
      }
    }))

  it.live("a remote URL with a token is accepted and tried: no server answers here, so the layer fails typed", () =>
    Effect.gen(function*() {
      const error = yield* Effect.flip(Effect.scoped(Layer.build(LibSql.layer({
        url: "http://127.0.0.1:1",
        authToken: Redacted.make("secret-token")
      }))))
      expect(error._tag).toBe("StoreError")
      expect(String(error) + JSON.stringify(error)).not.toContain("secret-token")
    }))

  it.live("a batch of 2000 events is one statement: written whole, read back in order", () =>
    Effect.gen(function*() {
      const store = yield* EventStore.EventStore
      const events = Array.from({ length: 2000 }, (_, i) => ({ type: "Added", payload: { n: i } }))
      const r = yield* store.append("Big-1", events, { expectedVersion: "no-stream" })
      expect(r.version).toBe(2000)
      const read = [...(yield* Stream.runCollect(store.read("Big-1")))]
      expect(read.map((e) => (e.payload as { n: number }).n)).toEqual(events.map((e) => e.payload.n))
      const dup = yield* Effect.flip(store.append("Big-2", [events[0]!, { ...events[1]!, eventId: r.events[5]!.eventId }]))
      expect(dup).toMatchObject({ _tag: "DuplicateEventError", eventId: r.events[5]!.eventId })
      expect(yield* store.version("Big-2")).toBe(0)
    }).pipe(Effect.provide(LibSql.layer({ url: dbFile("big") }))))

  it.live("an append inside a transaction of the store's own client is refused (instead of waiting forever)", () =>
    Effect.gen(function*() {
      const store = yield* EventStore.EventStore
      const sql = yield* SqlClient.SqlClient
      const inside = yield* Effect.flip(sql.withTransaction(store.append("Tx-1", [{ type: "A", payload: {} }])))
      expect(inside).toMatchObject({ _tag: "StoreError", operation: "append" })
      expect((yield* store.append("Tx-2", [{ type: "A", payload: {} }])).version).toBe(1)
    }).pipe(Effect.provide(LibSql.layer({ url: dbFile("tx") }))))

  it.live("two stores on one file (two clients): one winner per version, every append whole", () =>
    Effect.gen(function*() {
      const file = dbFile("two")
      const one = yield* Effect.map(Layer.build(LibSql.layer({ url: file })), (c) => c.unsafeMap.get(EventStore.EventStore.key) as EventStore.EventStoreService)
      const two = yield* Effect.map(Layer.build(LibSql.layer({ url: file })), (c) => c.unsafeMap.get(EventStore.EventStore.key) as EventStore.EventStoreService)
      let wins = 0
      yield* Effect.all(Array.from({ length: 4 }, (_, w) =>
        Effect.gen(function*() {
          const store = w % 2 ? one : two
          for (let i = 0; i < 30; i++) {
            const v = yield* store.version("Race-1")
            const r = yield* Effect.either(store.append("Race-1", [{ type: "Added", payload: { n: i + 1 } }, { type: "Added", payload: { n: -(i + 1) } }], { expectedVersion: v }))
            if (r._tag === "Right") wins++
            else expect(r.left._tag).toBe("ConcurrencyError")
          }
        })), { concurrency: "unbounded" })
      const events = [...(yield* Stream.runCollect(one.read("Race-1")))]
      expect(events.map((e) => e.version)).toEqual(Array.from({ length: wins * 2 }, (_, i) => i + 1))
      for (let i = 0; i < events.length; i += 2) {
        expect((events[i]!.payload as { n: number }).n).toBe(-(events[i + 1]!.payload as { n: number }).n)
      }
    }).pipe(Effect.scoped))
})
