import { describe, expect, it } from "@effect/vitest"
import * as SqlClient from "@effect/sql/SqlClient"
import { EventStore } from "effect-eventstore"
import * as Sqlite from "effect-eventstore/Sqlite"
import * as Chunk from "effect/Chunk"
import * as Effect from "effect/Effect"
import * as Fiber from "effect/Fiber"
import * as Stream from "effect/Stream"
import { spawn } from "node:child_process"
import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"
import * as SqliteConnection from "../src/internal/sqliteConnection.js"
import { eventStoreSuite } from "./conformance/EventStore.js"
import { guaranteesSuite } from "./conformance/Guarantees.js"
import { tenancySuite } from "./conformance/Tenancy.js"

const dir = fs.mkdtempSync(path.join(os.tmpdir(), "effect-eventstore-sqlite-"))
const dbFile = (name: string) => path.join(dir, `${name}-${crypto.randomUUID().slice(0, 8)}.db`)
const root = path.resolve(import.meta.dirname, "..")

// An hour-long poll interval: the subscription tests pass only if commits wake subscribers directly.
eventStoreSuite("sqlite", Sqlite.layer({ filename: dbFile("conformance"), pollInterval: "1 hour" }))
// ":memory:" writes through the shared client, on the effectful write path (the one PostgreSQL will use).
eventStoreSuite("sqlite :memory:", Sqlite.layer({ filename: ":memory:", pollInterval: "1 hour" }))
guaranteesSuite("sqlite", Sqlite.layer({ filename: dbFile("guarantees") }))
guaranteesSuite("sqlite :memory:", Sqlite.layer({ filename: ":memory:" }))
tenancySuite("sqlite", Sqlite.layer({ filename: dbFile("tenancy") }))

const collect = <A, E, R>(s: Stream.Stream<A, E, R>) => Effect.map(Stream.runCollect(s), Chunk.toReadonlyArray)

describe("SQLite specifics", () => {
  it.live("durable by default: WAL, synchronous=FULL, a busy timeout", () =>
    Effect.gen(function*() {
      const sql = yield* SqlClient.SqlClient
      expect((yield* sql.unsafe<{ journal_mode: string }>("PRAGMA journal_mode"))[0]!.journal_mode).toBe("wal")
      expect((yield* sql.unsafe<{ synchronous: number }>("PRAGMA synchronous"))[0]!.synchronous).toBe(2)
      expect((yield* sql.unsafe<{ timeout: number }>("PRAGMA busy_timeout"))[0]!.timeout).toBe(5000)
    }).pipe(Effect.provide(Sqlite.layer({ filename: dbFile("pragmas") }))))

  it.live("the writer connection, which commits the events, is durable too", () =>
    Effect.gen(function*() {
      const filename = dbFile("writer")
      expect(Sqlite.writerPragmas({ filename })).toContain("synchronous = FULL")
      expect(Sqlite.writerPragmas({ filename, durability: "normal" })).toContain("synchronous = NORMAL")
      const conn = yield* SqliteConnection.make(filename, Sqlite.writerPragmas({ filename }))
      expect(conn.executeSync("PRAGMA synchronous", [])).toEqual([{ synchronous: 2 }])
      expect(conn.executeSync("PRAGMA journal_mode", [])).toEqual([{ journal_mode: "wal" }])
    }).pipe(Effect.scoped))

  it.live(":memory: refuses an append from inside a transaction of its own connection (instead of deadlocking)", () =>
    Effect.gen(function*() {
      const store = yield* EventStore.EventStore
      const sql = yield* SqlClient.SqlClient
      const inside = yield* Effect.flip(sql.withTransaction(store.append("Tx-1", [{ type: "A", payload: {} }])))
      expect(inside).toMatchObject({ _tag: "StoreError", operation: "append" })
      expect((yield* store.append("Tx-2", [{ type: "A", payload: {} }])).version).toBe(1)
    }).pipe(Effect.provide(Sqlite.layer({ filename: ":memory:" }))))

  it.live("durability \"normal\" is opt-in", () =>
    Effect.gen(function*() {
      const sql = yield* SqlClient.SqlClient
      expect((yield* sql.unsafe<{ synchronous: number }>("PRAGMA synchronous"))[0]!.synchronous).toBe(1)
    }).pipe(Effect.provide(Sqlite.layer({ filename: dbFile("normal"), durability: "normal" }))))

  it.live("reopening a file keeps its events and does not migrate twice", () =>
    Effect.gen(function*() {
      const filename = dbFile("reopen")
      const append = Effect.flatMap(EventStore.EventStore, (store) =>
        store.append("Re-1", [{ type: "A", payload: {} }])).pipe(Effect.provide(Sqlite.layer({ filename })))
      expect((yield* append).version).toBe(1)
      expect((yield* append).version).toBe(2)
      const migrations = yield* Effect.flatMap(SqlClient.SqlClient, (sql) =>
        sql.unsafe<{ n: number }>("SELECT COUNT(*) AS n FROM eventstore_migrations")).pipe(
          Effect.provide(Sqlite.layerClient({ filename }))
        )
      expect(migrations[0]!.n).toBe(4)
    }))

  it.live("a row with malformed JSON is an EventDecodeError naming its position, after the events before it", () =>
    Effect.gen(function*() {
      const store = yield* EventStore.EventStore
      const sql = yield* SqlClient.SqlClient
      const written = yield* store.append("Bad-1", [1, 2, 3].map((i) => ({ type: "A", payload: { i } })))
      const broken = written.events[1]!.position
      yield* sql.unsafe("UPDATE eventstore_events SET payload = '{not json' WHERE position = ?", [broken])
      const seen: Array<number> = []
      const error = yield* store.read("Bad-1").pipe(
        Stream.runForEach((e) => Effect.sync(() => seen.push(e.version))),
        Effect.flip
      )
      expect(seen).toEqual([1])
      expect(error).toMatchObject({ _tag: "EventDecodeError", streamId: "Bad-1", version: 2, position: broken })
      const fromAll = yield* Effect.flip(collect(store.readAll({ filter: { streamTypes: ["Bad"] } })))
      expect(fromAll).toMatchObject({ _tag: "EventDecodeError", position: broken })
    }).pipe(Effect.provide(Sqlite.layer({ filename: dbFile("corrupt") }))))

  it.live("a subscription sees commits of another connection by polling", () =>
    Effect.gen(function*() {
      const filename = dbFile("poll")
      const other = Effect.flatMap(EventStore.EventStore, (store) =>
        store.append("Poll-1", [{ type: "A", payload: {} }, { type: "B", payload: {} }])).pipe(
          Effect.provide(Sqlite.layer({ filename }))
        )
      const got = yield* Effect.gen(function*() {
        const store = yield* EventStore.EventStore
        const sub = yield* Effect.fork(collect(Stream.take(store.subscribe({ fromPosition: "end" }), 2)))
        yield* Effect.sleep("100 millis")
        yield* other
        return yield* Fiber.join(sub).pipe(Effect.timeout("10 seconds"))
      }).pipe(Effect.provide(Sqlite.layer({ filename, pollInterval: "50 millis" })))
      expect(got.map((e) => e.type)).toEqual(["A", "B"])
    }))

  it.live("two processes appending to one file: every acknowledged event is stored exactly once", () =>
    Effect.gen(function*() {
      const filename = dbFile("two-process")
      const appends = 150
      const run = (worker: string) =>
        Effect.async<ReadonlyArray<string>, Error>((resume) => {
          const child = spawn(
            path.join(root, "node_modules/.bin/tsx"),
            ["--conditions=@effect-eventstore/source", path.join(root, "test/fixtures/append-worker.ts"), filename, worker, String(appends)],
            { cwd: root, stdio: ["ignore", "pipe", "pipe"] }
          )
          let out = ""
          let err = ""
          child.stdout.on("data", (d) => (out += d))
          child.stderr.on("data", (d) => (err += d))
          child.on("exit", (code) =>
            resume(
              code === 0
                ? Effect.succeed(out.split("\n").filter((l) => l.startsWith("ack ")).map((l) => l.slice(4)))
                : Effect.fail(new Error(`worker ${worker} exited ${code}: ${err}`))
            ))
        })
      const [a, b] = yield* Effect.all([run("a"), run("b")], { concurrency: 2 })
      expect(a.length).toBe(appends * 3)
      expect(b.length).toBe(appends * 3)
      const events = yield* Effect.flatMap(EventStore.EventStore, (store) => collect(store.readAll({ pageSize: 1000 }))).pipe(
        Effect.provide(Sqlite.layer({ filename }))
      )
      const counts = new Map<string, number>()
      for (const e of events) counts.set(e.eventId, (counts.get(e.eventId) ?? 0) + 1)
      for (const id of [...a, ...b]) expect(counts.get(id)).toBe(1)
      expect(events.length).toBe(a.length + b.length)
      for (let i = 1; i < events.length; i++) expect(events[i]!.position).toBeGreaterThan(events[i - 1]!.position)
      const shared = events.filter((e) => e.streamId === "Shared-1").map((e) => e.version)
      expect(shared).toEqual(Array.from({ length: appends * 2 }, (_, i) => i + 1))
    }), 120_000)
})
