import { describe, expect, it } from "@effect/vitest"
import * as SqlClient from "@effect/sql/SqlClient"
import { Aggregate, type Event, Event as EventModule, EventStore, Projection } from "effect-eventstore"
import * as Sqlite from "effect-eventstore/Sqlite"
import * as SqlProjection from "effect-eventstore/SqlProjection"
import * as Effect from "effect/Effect"
import * as Fiber from "effect/Fiber"
import * as Layer from "effect/Layer"
import * as Schema from "effect/Schema"
import * as Stream from "effect/Stream"
import { spawn } from "node:child_process"
import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"
import { projectionSuite } from "./conformance/Projection.js"
import { sqlModel } from "./fixtures/sqlModel.js"
import { readModel, replay, Totals, TotalsSql } from "./fixtures/totals.js"

const dir = fs.mkdtempSync(path.join(os.tmpdir(), "effect-eventstore-projection-"))
const dbFile = (name: string) => path.join(dir, `${name}-${crypto.randomUUID().slice(0, 8)}.db`)

const sqliteEnv = (filename: () => string) => () => {
  const store = Sqlite.layer({ filename: filename(), pollInterval: "1 hour" })
  return { layer: SqlProjection.layer.pipe(Layer.provideMerge(store)), model: sqlModel }
}

const statements = (filename: () => string) => () => ({
  ...sqliteEnv(filename)(),
  statement: (projection: string, event: Event.RecordedEvent, sql: SqlClient.SqlClient) =>
    sql`INSERT INTO test_seen (projection, position) VALUES (${projection}, ${event.position})`
})

projectionSuite("sqlite", sqliteEnv(() => dbFile("suite")))
projectionSuite("sqlite :memory:", sqliteEnv(() => ":memory:"))
// statement handlers: on a file, each batch is one synchronous transaction on the store's writer connection
projectionSuite("sqlite, statement handlers", statements(() => dbFile("statements")))
projectionSuite("sqlite :memory:, statement handlers", statements(() => ":memory:"))

const root = path.resolve(import.meta.dirname, "..")

describe("SQL projections on SQLite", () => {
  for (const mode of ["effect", "sql"] as const) {
  it.live(`exactly once across kill -9 (${mode} handlers): after every crash the read model is a full replay up to its checkpoint`, () =>
    Effect.gen(function*() {
      const filename = dbFile(`crash-${mode}`)
      const layer = SqlProjection.layer.pipe(Layer.provideMerge(Sqlite.layer({ filename })))
      yield* Effect.gen(function*() {
        const store = yield* EventStore.EventStore
        const sql = yield* SqlClient.SqlClient
        let appended = 0
        const appender = yield* Effect.forkScoped(Effect.forever(Effect.gen(function*() {
          const k = appended++ % 13
          yield* store.append(`Acc-${k}`, Array.from({ length: 1 + (appended % 3) }, (_, i) => ({ type: "Added", payload: { n: appended * 10 + i } })))
          if (appended % 7 === 0) yield* store.append(`Other-${k}`, [{ type: "Other", payload: {} }])
          yield* Effect.sleep("1 millis")
        })))
        const checkpoint = Effect.map(
          sql<{ position: number }>`SELECT position FROM eventstore_projections WHERE name = 'totals'`,
          (rows) => rows[0]?.position ?? 0
        )
        // what the model holds must be a replay of exactly the log up to the checkpoint: read both in one transaction
        const consistent = sql.withTransaction(Effect.gen(function*() {
          const at = yield* checkpoint
          const model = yield* readModel
          return { at, model }
        }))
        const check = Effect.gen(function*() {
          const { at, model } = yield* consistent
          const events = yield* Stream.runCollect(store.readAll({ pageSize: 1000 }))
          expect(model).toEqual(replay([...events].filter((e) => e.position <= at)))
          return at
        })
        const checkpoints: Array<number> = []
        for (let trial = 0; trial < 20; trial++) {
          const child = spawn(
            // node itself, with tsx as a loader: the `tsx` command would run the worker in a child process of its
            // own, which a SIGKILL of the command does not reach
            process.execPath,
            ["--import", "tsx", "--conditions=@effect-eventstore/source", path.join(root, "test/fixtures/projection-worker.ts"), filename, mode],
            { cwd: root, stdio: ["ignore", "pipe", "pipe"] }
          )
          let err = ""
          child.stderr.on("data", (d) => (err += d))
          const exited = Effect.async<number | null>((resume) => {
            child.on("exit", (code) => resume(Effect.succeed(code)))
          })
          const started = Effect.async<void>((resume) => {
            child.stdout.on("data", (d) => String(d).includes("started") && resume(Effect.void))
          })
          // kill it at a random moment after it started (most trials), or while it starts
          yield* Effect.timeout(started, "20 seconds").pipe(Effect.ignore)
          yield* Effect.sleep(`${Math.floor(Math.random() * (trial % 4 === 0 ? 30 : 400))} millis`)
          child.kill("SIGKILL")
          const code = yield* exited
          if (code !== null && err !== "") throw new Error(`worker exited ${code}: ${err}`)
          checkpoints.push(yield* check)
        }
        yield* Fiber.interrupt(appender)
        // the last restart catches up to the head
        const projections = yield* Projection.start([mode === "sql" ? TotalsSql : Totals], { leaseTtl: "300 millis" })
        const head = yield* store.head
        yield* projections.awaitPosition("totals", head, "30 seconds").pipe(
          Effect.tapError(() => Effect.flatMap(projections.status("totals"), (s) => Effect.logError("status", s)))
        )
        const { at, model } = yield* consistent
        expect(at).toBe(head)
        expect(model).toEqual(replay([...(yield* Stream.runCollect(store.readAll({ pageSize: 1000 })))]))
        // the crashes landed while it was working: the checkpoint moved between most of them
        expect(new Set(checkpoints).size).toBeGreaterThan(10)
      }).pipe(Effect.provide(layer), Effect.scoped)
    }), 180_000)
  }
})

describe("inline projections (SQLite)", () => {
  const Added = Schema.TaggedStruct("Added", { n: Schema.Int })
  const Events = EventModule.registry([Added])
  const Sums = Projection.sql({
    name: "sums",
    events: Events,
    init: [Effect.flatMap(SqlClient.SqlClient, (sql) =>
      sql`CREATE TABLE sums (stream TEXT PRIMARY KEY, total INTEGER NOT NULL, count INTEGER NOT NULL)`)],
    handlers: {
      Added: (event, sql) => {
        if (event.payload.n === 13) throw new Error("unlucky")
        return sql`INSERT INTO sums (stream, total, count) VALUES (${event.streamId}, ${event.payload.n}, 1)
          ON CONFLICT (stream) DO UPDATE SET total = total + excluded.total, count = count + 1`
      }
    }
  })
  const sums = Effect.flatMap(SqlClient.SqlClient, (sql) =>
    Effect.map(sql<{ stream: string; total: number; count: number }>`SELECT * FROM sums ORDER BY stream`, (rows) =>
      Object.fromEntries(rows.map((r) => [r.stream, [r.total, r.count]]))))
  const added = (n: number) => ({ type: "Added", payload: { n } })
  const base = (filename: string) => SqlProjection.layer.pipe(Layer.provideMerge(Sqlite.layer({ filename })))
  const withInline = (filename: string) => Projection.layerInline([Sums]).pipe(Layer.provideMerge(base(filename)))

  it.live("the read model is written in the append's transaction: no lag; events from before it started are caught up", () =>
    Effect.gen(function*() {
      const filename = dbFile("inline")
      yield* Effect.flatMap(EventStore.EventStore, (store) => store.append("S-1", [added(1), added(2)])).pipe(
        Effect.provide(base(filename))
      )
      yield* Effect.gen(function*() {
        const store = yield* EventStore.EventStore
        expect(yield* sums).toEqual({ "S-1": [3, 2] })
        yield* store.append("S-1", [added(10)])
        expect(yield* sums).toEqual({ "S-1": [13, 3] })
        yield* Effect.forEach([1, 2, 3, 4, 5, 6], (i) => store.append(`S-${i % 3}`, [added(i)]), { concurrency: "unbounded" })
        expect(yield* sums).toEqual({ "S-0": [9, 2], "S-1": [18, 5], "S-2": [7, 2] })
      }).pipe(Effect.provide(withInline(filename)))
    }))

  it.live("a failing inline handler fails that append alone, with nothing of it written; the others commit", () =>
    Effect.gen(function*() {
      const store = yield* EventStore.EventStore
      const results = yield* Effect.forEach(
        [1, 13, 2],
        (n) => Effect.either(store.append(`F-${n}`, [added(n), added(100)])),
        { concurrency: "unbounded" }
      )
      expect(results.map((r) => r._tag)).toEqual(["Right", "Left", "Right"])
      expect((results[1] as any).left).toMatchObject({
        _tag: "InlineProjectionError",
        projection: "sums",
        streamId: "F-13",
        eventType: "Added"
      })
      expect(yield* store.version("F-13")).toBe(0)
      expect(yield* sums).toEqual({ "F-1": [101, 2], "F-2": [102, 2] })
      // a single append on its own, too
      expect(yield* Effect.flip(store.append("F-13", [added(13)]))).toMatchObject({ _tag: "InlineProjectionError" })
      expect(yield* store.version("F-13")).toBe(0)
    }).pipe(Effect.provide(withInline(dbFile("inline-fail")))))

  it.live("events appended by a store that does not run it are handled with the next append of one that does", () =>
    Effect.gen(function*() {
      const filename = dbFile("inline-other")
      yield* Effect.gen(function*() {
        const store = yield* EventStore.EventStore
        yield* store.append("O-1", [added(1)])
        // a second store on the file, without the inline projection (another process, in effect)
        yield* Effect.flatMap(EventStore.EventStore, (other) => other.append("O-2", [added(5)])).pipe(
          Effect.provide(Sqlite.layer({ filename }))
        )
        expect(yield* sums).toEqual({ "O-1": [1, 1] })
        yield* store.append("O-1", [added(2)])
        expect(yield* sums).toEqual({ "O-1": [3, 2], "O-2": [5, 1] })
      }).pipe(Effect.provide(withInline(filename)))
    }))

  it.live("a command (load, decide, append in one transaction) updates the inline read model too", () =>
    Effect.gen(function*() {
      const Counter = Aggregate.make({
        name: "Counter",
        events: Events,
        decider: {
          initialState: 0,
          decide: (n: number, state: number) => Effect.succeed([Added.make({ n: n + state })]),
          evolve: (state: number, event: typeof Added.Type) => state + event.n
        }
      })
      yield* Effect.gen(function*() {
        yield* Counter.handle("c1", 1)
        yield* Counter.handle("c1", 2)
        expect(yield* sums).toEqual({ "Counter-c1": [4, 2] })
      }).pipe(Effect.provide(Aggregate.layer(Counter)))
    }).pipe(Effect.provide(withInline(dbFile("inline-command")))))

  it.live("inline projections need statement handlers and an SQLite file store", () =>
    Effect.gen(function*() {
      const effectful = Projection.make({ name: "e", events: Events, handlers: { Added: () => Effect.void } })
      const a = yield* Effect.flip(Layer.build(Projection.layerInline([effectful]).pipe(Layer.provide(base(dbFile("x"))))))
      expect(a).toMatchObject({ _tag: "InvalidInput", field: "projections" })
      const b = yield* Effect.flip(
        Layer.build(Projection.layerInline([Sums]).pipe(Layer.provide(
          Layer.mergeAll(EventStore.layerMemory, Projection.layerMemory, Sqlite.layerClient({ filename: ":memory:" }))
        )))
      )
      expect(b).toMatchObject({ _tag: "InvalidInput", field: "projections" })
    }).pipe(Effect.scoped))
})

describe("blue/green rebuilds (SQL)", () => {
  const Added = Schema.TaggedStruct("Added", { n: Schema.Int })
  const Events = EventModule.registry([Added])
  const Totals = Projection.sql({
    name: "bg",
    events: Events,
    tables: ["bg_totals"],
    init: [(table) =>
      Effect.flatMap(SqlClient.SqlClient, (sql) =>
        sql`CREATE TABLE ${sql(table("bg_totals"))} (stream TEXT PRIMARY KEY, total INTEGER NOT NULL)`)],
    handlers: {
      Added: (event, sql, table) =>
        sql`INSERT INTO ${sql(table("bg_totals"))} (stream, total) VALUES (${event.streamId}, ${event.payload.n})
          ON CONFLICT (stream) DO UPDATE SET total = total + excluded.total`
    }
  })
  const totals = Effect.flatMap(SqlClient.SqlClient, (sql) =>
    Effect.map(sql<{ stream: string; total: number }>`SELECT stream, total FROM bg_totals ORDER BY stream`, (rows) =>
      Object.fromEntries(rows.map((r) => [r.stream, r.total]))))
  const objects = Effect.flatMap(SqlClient.SqlClient, (sql) =>
    Effect.map(
      sql<{ name: string; type: string }>`SELECT name, type FROM sqlite_master WHERE name LIKE 'bg_totals%' ORDER BY name`,
      (rows) => rows.map((r) => `${r.type} ${r.name}`)
    ))

  for (const [label, filename] of [["file", () => dbFile("bluegreen")], [":memory:", () => ":memory:"]] as const) {
    it.live(`${label}: readers keep the old model while the new one builds; the switch is one transaction`, () =>
      Effect.gen(function*() {
        const store = yield* EventStore.EventStore
        const sql = yield* SqlClient.SqlClient
        yield* Effect.forEach(Array.from({ length: 600 }, (_, i) => i), (i) => store.append(`G-${i % 7}`, [{ type: "Added", payload: { n: i } }]), {
          discard: true
        })
        const projections = yield* Projection.start([Totals], { batchSize: 50 })
        yield* projections.awaitPosition("bg", yield* store.head, "10 seconds")
        const before = yield* totals
        expect(Object.keys(before)).toHaveLength(7)
        expect(yield* objects).toEqual(["view bg_totals", "table bg_totals__g1"])
        // a reader during the rebuild: always the complete model (the same totals), never an empty or partial one
        const sum = (t: Record<string, number>) => Object.values(t).reduce((a, b) => a + b, 0)
        const seen: Array<number> = []
        const reader = yield* Effect.fork(Effect.forever(Effect.zipRight(
          Effect.flatMap(totals, (t) => Effect.sync(() => seen.push(sum(t)))),
          Effect.sleep("1 millis")
        )))
        const progress = yield* Stream.runCollect(projections.rebuild("bg"))
        yield* Fiber.interrupt(reader)
        expect([...progress].at(-1)!.done).toBe(true)
        expect(seen.length).toBeGreaterThan(0)
        expect(seen.every((n) => n === sum(before))).toBe(true)
        expect(yield* totals).toEqual(before)
        expect(yield* objects).toEqual(["view bg_totals", "table bg_totals__g2"])
        expect((yield* projections.status("bg")).state).toBe("live")
        // live on the new generation
        const r = yield* store.append("G-0", [{ type: "Added", payload: { n: 1000 } }])
        yield* projections.awaitPosition("bg", r.position, "10 seconds")
        expect((yield* totals)["G-0"]).toBe(before["G-0"]! + 1000)
        const generation = yield* sql<{ generation: number }>`SELECT generation FROM eventstore_projections WHERE name = 'bg'`
        expect(generation[0]!.generation).toBe(2)
      }).pipe(
        Effect.scoped,
        // a restart goes on with generation 2 (no migration runs again, the views stay)
        Effect.zipRight(Effect.scoped(Effect.gen(function*() {
          const store = yield* EventStore.EventStore
          const projections = yield* Projection.start([Totals])
          const r = yield* store.append("G-1", [{ type: "Added", payload: { n: 1 } }])
          yield* projections.awaitPosition("bg", r.position, "10 seconds")
          expect(yield* objects).toEqual(["view bg_totals", "table bg_totals__g2"])
          expect(Object.keys(yield* totals)).toHaveLength(7)
        }))),
        Effect.provide(SqlProjection.layer.pipe(Layer.provideMerge(Sqlite.layer({ filename: filename() }))))
      ), 30_000)
  }
})

describe("statement handlers on SQLite", () => {
  const Added = Schema.TaggedStruct("Added", { n: Schema.Int })
  const Events = EventModule.registry([Added])
  // a statement that returns rows: the synchronous road runs it like the SqlClient would
  const Log = Projection.sql({
    name: "returning",
    events: Events,
    init: [Effect.flatMap(SqlClient.SqlClient, (sql) =>
      sql`CREATE TABLE returning_log (id INTEGER PRIMARY KEY AUTOINCREMENT, n INTEGER NOT NULL)`)],
    handlers: { Added: (e, sql) => sql`INSERT INTO returning_log (n) VALUES (${e.payload.n}) RETURNING id` }
  })
  for (const [label, filename] of [["file", () => dbFile("returning")], [":memory:", () => ":memory:"]] as const) {
    it.live(`${label}: a statement with RETURNING`, () =>
      Effect.gen(function*() {
        const store = yield* EventStore.EventStore
        const sql = yield* SqlClient.SqlClient
        const r = yield* store.append("R-1", [{ type: "Added", payload: { n: 1 } }, { type: "Added", payload: { n: 2 } }])
        const projections = yield* Projection.start([Log])
        yield* projections.awaitPosition("returning", r.position, "10 seconds")
        expect((yield* sql<{ n: number }>`SELECT n FROM returning_log ORDER BY id`).map((x) => x.n)).toEqual([1, 2])
      }).pipe(
        Effect.scoped,
        Effect.provide(SqlProjection.layer.pipe(Layer.provideMerge(Sqlite.layer({ filename: filename() }))))
      ))
  }
})
