import { describe, expect, it } from "@effect/vitest"
import * as SqlClient from "@effect/sql/SqlClient"
import { Event, EventStore, Projection, Telemetry } from "effect-eventstore"
import * as Postgres from "effect-eventstore/Postgres"
import * as SqlProjection from "effect-eventstore/SqlProjection"
import * as Context from "effect/Context"
import * as Effect from "effect/Effect"
import * as Fiber from "effect/Fiber"
import * as Layer from "effect/Layer"
import * as Metric from "effect/Metric"
import * as Option from "effect/Option"
import * as Redacted from "effect/Redacted"
import * as Schema from "effect/Schema"
import * as Stream from "effect/Stream"
import { spawn } from "node:child_process"
import * as path from "node:path"
import PgDriver from "pg"
import { eventStoreSuite } from "./conformance/EventStore.js"
import { guaranteesSuite } from "./conformance/Guarantees.js"
import { tenancySuite } from "./conformance/Tenancy.js"
import { projectionSuite, type ReadModel } from "./conformance/Projection.js"
import { snapshotStoreSuite } from "./conformance/SnapshotStore.js"
import * as Pg from "./fixtures/pg.js"
import { Seen } from "./fixtures/pg-seen.js"
import { inlinePg, runBatchedPg } from "../src/internal/statements.js"

/** The projection suite's read model as PostgreSQL tables (rows in handling order; a duplicate would show). */
const pgModel: ReadModel<SqlClient.SqlClient> = {
  init: () =>
    Effect.flatMap(SqlClient.SqlClient, (sql) =>
      Effect.all([
        sql`CREATE TABLE IF NOT EXISTS test_seen (seq BIGSERIAL PRIMARY KEY, projection TEXT, position BIGINT)`,
        sql`CREATE TABLE IF NOT EXISTS test_migrations (seq BIGSERIAL PRIMARY KEY, projection TEXT, id INTEGER)`
      ])),
  add: (projection, event) =>
    Effect.flatMap(SqlClient.SqlClient, (sql) =>
      sql`INSERT INTO test_seen (projection, position) VALUES (${projection}, ${event.position})`),
  seen: (projection) =>
    Effect.flatMap(SqlClient.SqlClient, (sql) =>
      Effect.map(
        sql<{ position: string }>`SELECT position FROM test_seen WHERE projection = ${projection} ORDER BY seq`,
        (rows) => rows.map((r) => Number(r.position))
      )).pipe(Effect.catchAll(() => Effect.succeed([]))),
  reset: (projection) =>
    Effect.flatMap(SqlClient.SqlClient, (sql) => sql`DELETE FROM test_seen WHERE projection = ${projection}`),
  migrated: (projection, id) =>
    Effect.flatMap(SqlClient.SqlClient, (sql) =>
      // (no CREATE TABLE IF NOT EXISTS here: PostgreSQL refuses two of them racing; init made the table)
      sql`INSERT INTO test_migrations (projection, id) VALUES (${projection}, ${id})`),
  migrations: (projection) =>
    Effect.flatMap(SqlClient.SqlClient, (sql) =>
      Effect.map(
        sql<{ id: number }>`SELECT id FROM test_migrations WHERE projection = ${projection} ORDER BY seq`,
        (rows) => rows.map((r) => r.id)
      )).pipe(Effect.catchAll(() => Effect.succeed([])))
}

const pgEnv = (label: string) => () => ({
  layer: SqlProjection.layer.pipe(Layer.provideMerge(Pg.layer(label, { pollInterval: "1 hour" }))),
  model: pgModel
})

describe.skipIf(!Pg.available)("PostgreSQL", () => {
  // An hour-long poll interval: the subscription tests pass only if commits wake subscribers directly.
  eventStoreSuite("postgres", Pg.layer("conformance", { pollInterval: "1 hour" }))
  guaranteesSuite("postgres", Pg.layer("guarantees"))
  tenancySuite("postgres", Pg.layer("tenancy"))
  snapshotStoreSuite("postgres", Pg.layer("snapshots"))
  projectionSuite("postgres", pgEnv("projections"))
  projectionSuite("postgres, statement handlers", () => ({
    ...pgEnv("statements")(),
    statement: (projection: string, event: Event.RecordedEvent<unknown>, sql: SqlClient.SqlClient) =>
      sql`INSERT INTO test_seen (projection, position) VALUES (${projection}, ${event.position})`
  }))
})

const root = path.resolve(import.meta.dirname, "..")

const Added = Schema.TaggedStruct("Added", { n: Schema.Int })
const Events = Event.registry([Added])
const added = (n: number) => ({ type: "Added", payload: { n } })

/** A client of our own on the store's schema, outside the library (what another process would do). */
const rawClient = (schema: string) =>
  Effect.acquireRelease(
    Effect.promise(async () => {
      const client = new PgDriver.Client({ connectionString: Pg.url, options: `-c search_path="${schema}"` })
      await client.connect()
      return client
    }),
    (client) => Effect.promise(() => client.end().catch(() => {}))
  )

/** An append by hand through the store's function, inside whatever transaction `client` has open. */
const rawAppend = (client: PgDriver.Client, stream: string, n: number) =>
  Effect.promise(() =>
    client.query(
      `SELECT v, p FROM eventstore_append($1, $2, $3, $4::text[], $5::text[], $6::int[], $7::text[], $8::text[],
        $9::text[], 0, 0)`,
      [stream, stream.split("-")[0], Date.now(), [crypto.randomUUID()], ["Added"], [1], [JSON.stringify({ n })], [null], [null]]
    )
  ).pipe(Effect.map((r) => Number(r.rows[0].p)))

const recording = (name: string, handled: Array<number>, streamTypes: ReadonlyArray<string>) =>
  Projection.make({
    name,
    events: Events,
    streamTypes,
    handlers: { Added: (e) => Effect.sync(() => void handled.push(e.position)) }
  })

describe("a batch's statements as one PostgreSQL query: parameters written in as literals", () => {
  it("writes each placeholder's value as a literal, and nothing inside quotes, identifiers, comments or dollar quotes", () => {
    expect(inlinePg("INSERT INTO t VALUES ($1, $2, $3, $4, $5, $6)", ["it's", -5, 10n, true, null, "a\\b"]))
      .toBe("INSERT INTO t VALUES (E'it''s', '-5', '10', 'true', NULL, E'a\\\\b')")
    expect(inlinePg("SELECT '$1', \"$1\", $$ $1 $$, $f$ $1 $f$ -- $1\n, $1, a$1", [7]))
      .toBe("SELECT '$1', \"$1\", $$ $1 $$, $f$ $1 $f$ -- $1\n, '7', a$1")
    // text the scanner does not follow exactly is left to bound parameters
    expect(inlinePg("SELECT E'5\\' off $1', $1", ["x"])).toBeUndefined()
    expect(inlinePg("SELECT $1 /* a /* nested */ $1 */", ["x"])).toBeUndefined()
    expect(inlinePg("SELECT $1, $10", Array.from({ length: 10 }, (_, i) => i + 1))).toBe("SELECT '1', '10'")
    expect(inlinePg("SELECT 'it''s $1', $1", ["x"])).toBe("SELECT 'it''s $1', E'x'")
    expect(inlinePg("SELECT $1", [new Date(0)])).toBeUndefined()
    expect(inlinePg("SELECT $1", [[1, 2]])).toBeUndefined()
    expect(inlinePg("SELECT $1", [Number.NaN])).toBeUndefined()
  })
})

describe.skipIf(!Pg.available)("PostgreSQL specifics", () => {
  it.live("statement handlers batched into one query read back exactly what parameters would have written", () =>
    Effect.gen(function*() {
      const schema = Pg.freshSchema("inline")
      yield* Effect.gen(function*() {
        const sql = yield* SqlClient.SqlClient
        yield* sql`CREATE TABLE inline_t (a TEXT, b BIGINT, c NUMERIC, d BOOLEAN, e TEXT)`
        const rows: Array<[string, number | bigint, number, boolean, string | null]> = [
          ["it's \\ \"quoted\" $1 -- not a comment /* nor this */ $$x$$", -9007199254740991, 1.5, true, null],
          ["ünïcödé 🎉", 10n, -0.25, false, "E'x'"]
        ]
        yield* sql.withTransaction(runBatchedPg(sql, rows.map(([a, b, c, d, e]) =>
          sql`INSERT INTO inline_t VALUES (${a}, ${b}, ${c}, ${d}, ${e}) -- trailing comment`)))
        const back = yield* sql<{ a: string; b: string; c: string; d: boolean; e: string | null }>`SELECT * FROM inline_t`
        expect(back).toEqual(rows.map(([a, b, c, d, e]) => ({ a, b: String(b), c: String(c), d, e })))
      }).pipe(Effect.scoped, Effect.provide(Postgres.layer({ url: Redacted.make(Pg.url), schema })))
    }))

  it.live("out-of-order commits: readers stop at an open transaction's position, then deliver both, in order, once", () =>
    Effect.gen(function*() {
      const schema = Pg.freshSchema("order")
      const layer = SqlProjection.layer.pipe(
        Layer.provideMerge(Postgres.layer({ url: Redacted.make(Pg.url), schema, pollInterval: "50 millis" }))
      )
      yield* Effect.gen(function*() {
        const store = yield* EventStore.EventStore
        yield* store.append("Order-0", [added(0)])
        const a = yield* rawClient(schema)
        yield* Effect.promise(() => a.query("BEGIN"))
        const positionA = yield* rawAppend(a, "Order-a", 1) // taken, not committed
        const b = yield* store.append("Order-b", [added(2)]) // a later position, committed
        expect(b.position).toBeGreaterThan(positionA)

        const delivered: Array<number> = []
        yield* Effect.forkScoped(
          Stream.runForEach(store.subscribe({ filter: { streamTypes: ["Order"] } }), (e) =>
            Effect.sync(() => void delivered.push(e.position)))
        )
        const handled: Array<number> = []
        const projections = yield* Projection.start([recording("order", handled, ["Order"])])
        yield* Effect.sleep("700 millis")
        const first = delivered[0]!
        expect(delivered).toEqual([first])
        expect(handled).toEqual([first])
        // head and readAll wait (up to 5 s) for this store's own append B, then answer what is safe: not past A
        expect(yield* store.head).toBeLessThan(positionA)
        expect((yield* store.readAll({ fromPosition: first }).pipe(Stream.runCollect)).length).toBe(0)
        expect(delivered).toEqual([first])
        expect((yield* projections.status("order")).checkpoint).toBeLessThan(positionA)
        // B's event is committed and held back: the gauge says so
        expect((yield* Metric.value(Telemetry.heldBack)).value).toBeGreaterThanOrEqual(1)

        yield* Effect.promise(() => a.query("COMMIT"))
        yield* projections.awaitPosition("order", b.position, "10 seconds")
        yield* Effect.sleep("200 millis")
        expect(delivered).toEqual([first, positionA, b.position])
        expect(handled).toEqual([first, positionA, b.position])
        expect(yield* store.head).toBe(b.position)
      }).pipe(Effect.scoped, Effect.provide(layer))
    }))

  it.live("stress: 4 writer processes x 25,000 events, commits out of order: a subscriber and a projection get all 100,000, once each, in order", () =>
    Effect.gen(function*() {
      const schema = Pg.freshSchema("stress")
      const layer = SqlProjection.layer.pipe(
        Layer.provideMerge(Postgres.layer({ url: Redacted.make(Pg.url), schema, pollInterval: "100 millis" }))
      )
      yield* Effect.gen(function*() {
        const store = yield* EventStore.EventStore
        const sql = yield* SqlClient.SqlClient
        yield* store.append("Setup-start", [added(0)]) // the schema exists before the writers start
        const t0 = Date.now()
        const delivered: Array<number> = []
        const subscriber = yield* Effect.forkScoped(
          Stream.runForEach(store.subscribe({ filter: { streamTypes: ["Stress"] }, pageSize: 1000 }), (e) =>
            Effect.sync(() => void delivered.push(e.position)))
        )
        const Seen = Projection.sql({
          name: "stress",
          events: Events,
          streamTypes: ["Stress"],
          init: [Effect.flatMap(SqlClient.SqlClient, (sql) =>
            sql`CREATE TABLE stress_seen (seq BIGSERIAL PRIMARY KEY, position BIGINT NOT NULL)`)],
          handlers: { Added: (e, sql) => sql`INSERT INTO stress_seen (position) VALUES (${e.position})` }
        })
        const projections = yield* Projection.start([Seen], { batchSize: 1000 })
        const writers = yield* Effect.all(
          [0, 1, 2, 3].map((w) =>
            Effect.async<void, Error>((resume) => {
              const child = spawn(
                process.execPath,
                ["--import", "tsx", "--conditions=@effect-eventstore/source", path.join(root, "test/fixtures/pg-writer.ts"), Pg.url, schema, "25000", String(w)],
                { cwd: root, stdio: ["ignore", "pipe", "pipe"] }
              )
              let err = ""
              child.stderr.on("data", (d) => (err += d))
              child.on("exit", (code) => resume(code === 0 ? Effect.void : Effect.fail(new Error(`writer ${w}: ${code} ${err}`))))
            })),
          { concurrency: "unbounded" }
        )
        void writers
        const t1 = Date.now()
        const head = yield* store.head
        yield* projections.awaitPosition("stress", head, "60 seconds")
        console.log(`stress: writers ${t1 - t0} ms, projection caught up ${Date.now() - t1} ms later`)
        yield* Effect.sleep("300 millis")
        const all = [...(yield* Stream.runCollect(store.readAll({ filter: { streamTypes: ["Stress"] }, pageSize: 5000 })))]
        expect(all).toHaveLength(100_000)
        const positions = all.map((e) => e.position)
        expect(delivered).toEqual(positions)
        const seen = yield* sql<{ position: string }>`SELECT position FROM stress_seen ORDER BY seq`
        expect(seen.map((r) => Number(r.position))).toEqual(positions)
        for (let i = 1; i < positions.length; i++) if (positions[i]! <= positions[i - 1]!) throw new Error(`out of order at ${i}`)
        expect(new Set(all.map((e) => e.eventId)).size).toBe(100_000)
        yield* Fiber.interrupt(subscriber)
      }).pipe(Effect.scoped, Effect.provide(layer))
    }), 180_000)

  it.live("projections on two pools: one active runner once it settles while their connections are killed; every event once", () =>
    Effect.gen(function*() {
      const schema = Pg.freshSchema("failover")
      const app = (name: string) => `eventstore-${name}-${process.pid}-${Math.random().toString(36).slice(2, 6)}`
      const apps = [app("a"), app("b")]
      const runner = (applicationName: string) =>
        Effect.gen(function*() {
          const context = yield* Layer.build(SqlProjection.layer.pipe(Layer.provideMerge(
            Postgres.layer({ url: Redacted.make(Pg.url), schema, applicationName, pollInterval: "50 millis" })
          )))
          const projections = yield* Projection.start([Seen], { leaseTtl: "600 millis" }).pipe(Effect.provide(context))
          return { store: Context.get(context, EventStore.EventStore), sql: Context.get(context, SqlClient.SqlClient), projections }
        })
      const a = yield* runner(apps[0]!)
      const b = yield* runner(apps[1]!)
      const both = [a, b]
      let appended = 0
      yield* Effect.forkScoped(Effect.forever(Effect.zipRight(
        a.store.append(`Fail-${appended++ % 7}`, [added(appended)]).pipe(Effect.ignore),
        Effect.sleep("5 millis")
      )))
      const active = Effect.map(
        Effect.forEach(both, (r) => Effect.map(r.projections.status("seen"), (s) => s.state)),
        (states) => states.filter((state) => state !== "standby")
      )
      yield* Effect.sleep("800 millis")
      expect(yield* active).toHaveLength(1)
      for (let round = 0; round < 4; round++) {
        yield* Effect.promise(() =>
          Pg.query(`SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1`, [apps[round % 2]])
        )
        // a runner whose lock connection was killed learns it at its next renewal (a third of the lease); until
        // then both may say they are active, but its commits are refused (every commit checks the owner): the read
        // model below has every event once
        yield* Effect.sleep("1500 millis")
        const now = yield* active
        expect(now).toHaveLength(1)
        expect(["live", "catching-up"]).toContain(now[0])
      }
      const head = yield* b.store.head
      const live = (yield* Effect.forEach(both, (r) => Effect.map(r.projections.status("seen"), (s) => ({ r, s }))))
        .find(({ s }) => s.state !== "standby")!.r
      yield* live.projections.awaitPosition("seen", head, "10 seconds")
      const seen = yield* live.sql<{ position: string }>`SELECT position FROM failover_seen ORDER BY seq`
      const positions = [...(yield* Stream.runCollect(b.store.readAll()))].map((e) => e.position).filter((p) => p <= head)
      expect(seen.map((r) => Number(r.position)).filter((p) => p <= head)).toEqual(positions)
    }).pipe(Effect.scoped), 60_000)

  it.live("a runner process killed with -9: the standby takes over when its lock goes, long before the lease would expire", () =>
    Effect.gen(function*() {
      const schema = Pg.freshSchema("kill9")
      const layer = SqlProjection.layer.pipe(
        Layer.provideMerge(Postgres.layer({ url: Redacted.make(Pg.url), schema, pollInterval: "50 millis" }))
      )
      yield* Effect.gen(function*() {
        const store = yield* EventStore.EventStore
        const sql = yield* SqlClient.SqlClient
        yield* store.append("Kill9-1", [added(1)])
        const child = spawn(
          process.execPath,
          ["--import", "tsx", "--conditions=@effect-eventstore/source", path.join(root, "test/fixtures/pg-seen.ts"), Pg.url, schema, "9000 millis"],
          { cwd: root, stdio: ["ignore", "pipe", "pipe"] }
        )
        yield* Effect.addFinalizer(() => Effect.sync(() => child.kill("SIGKILL")))
        yield* Effect.async<void>((resume) => {
          child.stdout.on("data", (d) => String(d).includes("state live") && resume(Effect.void))
        }).pipe(Effect.timeout("30 seconds"))
        // the standby here, with the same 9 s lease: it asks every 3 s
        const projections = yield* Projection.start([Seen], { leaseTtl: "9 seconds" })
        yield* Effect.sleep("500 millis")
        expect((yield* projections.status("seen")).state).toBe("standby")
        child.kill("SIGKILL")
        const killedAt = Date.now()
        const last = yield* store.append("Kill9-1", [added(2)])
        yield* projections.awaitPosition("seen", last.position, "20 seconds")
        // the lease the child renewed had up to 9 s to run; the lock went with its connection
        expect(Date.now() - killedAt).toBeLessThan(6000)
        const seen = yield* sql<{ position: string }>`SELECT position FROM failover_seen ORDER BY seq`
        expect(seen.map((r) => Number(r.position))).toEqual(
          [...(yield* Stream.runCollect(store.readAll()))].map((e) => e.position)
        )
      }).pipe(Effect.scoped, Effect.provide(layer))
    }), 60_000)

  it.live("another process's commits wake a subscriber through LISTEN/NOTIFY (no polling)", () =>
    Effect.gen(function*() {
      const schema = Pg.freshSchema("notify")
      const storeOf = Effect.map(
        Layer.build(Postgres.layer({ url: Redacted.make(Pg.url), schema, pollInterval: "1 hour" })),
        (context) => Context.get(context, EventStore.EventStore)
      )
      const writer = yield* storeOf
      const reader = yield* storeOf
      const delivered: Array<number> = []
      yield* Effect.forkScoped(Stream.runForEach(reader.subscribe({ fromPosition: "end" }), (e) =>
        Effect.sync(() => void delivered.push(e.position))))
      yield* Effect.sleep("300 millis")
      const written: Array<number> = []
      for (let i = 0; i < 5; i++) {
        written.push((yield* writer.append(`Notify-${i}`, [added(i)])).position)
        yield* Effect.sleep("50 millis")
      }
      yield* Effect.sleep("500 millis")
      expect(delivered).toEqual(written)
    }).pipe(Effect.scoped))

  it.live("eventstore_append refuses to run after other writes of its transaction (its ordering rule needs a fresh one)", () =>
    Effect.gen(function*() {
      const schema = Pg.freshSchema("fresh")
      yield* Effect.gen(function*() {
        const store = yield* EventStore.EventStore
        yield* store.append("Fresh-0", [added(0)])
        const a = yield* rawClient(schema)
        yield* Effect.promise(() => a.query("BEGIN"))
        yield* rawAppend(a, "Fresh-1", 1)
        const second = yield* Effect.promise(() => rawAppend(a, "Fresh-2", 2).pipe(Effect.runPromise).then(() => "written", (e) => String(e)))
        expect(second).toContain("must be the first write of its transaction")
        yield* Effect.promise(() => a.query("ROLLBACK"))
        expect(yield* store.version("Fresh-1")).toBe(0)
      }).pipe(Effect.scoped, Effect.provide(Postgres.layer({ url: Redacted.make(Pg.url), schema })))
    }))

  it.live("appends with a command id or claims inside a transaction of yours are not part of it (acknowledged is written)", () =>
    Effect.gen(function*() {
      const store = yield* EventStore.EventStore
      const sql = yield* SqlClient.SqlClient
      const exit = yield* sql.withTransaction(Effect.gen(function*() {
        yield* sql`SELECT 1`
        yield* store.append("Ambient-1", [added(1)], { commandId: "ambient-1" })
        yield* store.append("Ambient-2", [{ ...added(2), claims: [{ index: "ambient", value: "v" }] }])
        return yield* Effect.fail("your transaction fails")
      })).pipe(Effect.exit)
      expect(exit._tag).toBe("Failure")
      expect(yield* store.version("Ambient-1")).toBe(1)
      expect(yield* store.version("Ambient-2")).toBe(1)
      expect(Option.isSome(yield* store.command("ambient-1"))).toBe(true)
      expect(yield* store.claimOwner("ambient", "v")).toEqual(Option.some("Ambient-2"))
      expect(yield* store.rebuildClaims.pipe(sql.withTransaction, Effect.zipRight(Effect.fail("again")), Effect.flip)).toBe("again")
      expect(yield* store.claimOwner("ambient", "v")).toEqual(Option.some("Ambient-2"))
    }).pipe(Effect.provide(Pg.layer("ambient"))))

  it.live("concurrent appends claiming the same values in opposite orders never deadlock", () =>
    Effect.gen(function*() {
      const store = yield* EventStore.EventStore
      for (let round = 0; round < 5; round++) {
        const [x, y] = [`x${round}`, `y${round}`]
        const started = Date.now()
        const outcomes = yield* Effect.all([
          store.append(`Lock-a${round}`, [{ ...added(1), claims: [{ index: "lock", value: x }, { index: "lock", value: y }] }]),
          store.append(`Lock-b${round}`, [{ ...added(2), claims: [{ index: "lock", value: y }, { index: "lock", value: x }] }])
        ], { concurrency: "unbounded", mode: "either" })
        // one takes both values, the other is told who holds them: no deadlock (40P01), no StoreError, no wait
        const tags = outcomes.map((o) => o._tag === "Right" ? "ok" : o.left._tag).sort()
        expect(tags).toEqual(["UniqueConstraintViolation", "ok"])
        expect(Date.now() - started).toBeLessThan(900)
      }
    }).pipe(Effect.provide(Pg.layer("deadlock", { busyTimeout: 0 }))))

  it.live("an aborted transaction leaves a hole, which readers pass", () =>
    Effect.gen(function*() {
      const schema = Pg.freshSchema("hole")
      yield* Effect.gen(function*() {
        const store = yield* EventStore.EventStore
        const a = yield* rawClient(schema)
        yield* Effect.promise(() => a.query("BEGIN"))
        const positionA = yield* rawAppend(a, "Hole-a", 1)
        const b = yield* store.append("Hole-b", [added(2)])
        yield* Effect.promise(() => a.query("ROLLBACK"))
        const all = yield* Stream.runCollect(store.readAll())
        expect([...all].map((e) => e.position)).toEqual([b.position])
        expect(b.position).toBeGreaterThan(positionA)
        expect(yield* store.head).toBe(b.position)
      }).pipe(Effect.scoped, Effect.provide(Postgres.layer({ url: Redacted.make(Pg.url), schema })))
    }))

  it.live("two stores (two pools, as two processes would be) on one stream: one winner per version; first appends race cleanly", () =>
    Effect.gen(function*() {
      const schema = Pg.freshSchema("race")
      const storeOf = Effect.map(
        Layer.build(Postgres.layer({ url: Redacted.make(Pg.url), schema })),
        (context) => Context.get(context, EventStore.EventStore)
      )
      const one = yield* storeOf
      const two = yield* storeOf
      let wins = 0
      let conflicts = 0
      const writer = (store: EventStore.EventStoreService, k: number) =>
        Effect.gen(function*() {
          for (let i = 0; i < 60; i++) {
            const version = yield* store.version("Race-1")
            const result = yield* Effect.either(store.append("Race-1", [added(k * 1000 + i)], { expectedVersion: version }))
            if (result._tag === "Right") wins++
            else {
              expect(result.left._tag).toBe("ConcurrencyError")
              conflicts++
            }
          }
        })
      yield* Effect.all([writer(one, 1), writer(two, 2), writer(one, 3), writer(two, 4)], { concurrency: "unbounded" })
      const events = [...(yield* Stream.runCollect(one.read("Race-1")))]
      expect(events.map((e) => e.version)).toEqual(Array.from({ length: wins }, (_, i) => i + 1))
      expect(wins + conflicts).toBe(240)
      expect(conflicts).toBeGreaterThan(0)

      const firsts = yield* Effect.all(
        Array.from({ length: 20 }, (_, i) =>
          Effect.all([
            Effect.either(one.append(`First-${i}`, [added(1)], { expectedVersion: "no-stream" })),
            Effect.either(two.append(`First-${i}`, [added(2)], { expectedVersion: "no-stream" }))
          ], { concurrency: 2 })),
        { concurrency: "unbounded" }
      )
      for (const pair of firsts) {
        expect(pair.filter((r) => r._tag === "Right")).toHaveLength(1)
        const lost = pair.find((r) => r._tag === "Left")
        expect(lost?._tag === "Left" && lost.left).toMatchObject({ _tag: "ConcurrencyError", expected: "no-stream", actual: 1 })
      }
      // "any" appends racing on one stream all land, one after another
      yield* Effect.all(
        Array.from({ length: 40 }, (_, i) => (i % 2 ? one : two).append("Any-1", [added(i)])),
        { concurrency: "unbounded" }
      )
      expect(yield* one.version("Any-1")).toBe(40)
    }).pipe(Effect.scoped))

  it.live("connections killed mid-run: appends fail with StoreError or succeed whole, and the store goes on", () =>
    Effect.gen(function*() {
      const schema = Pg.freshSchema("kill")
      const app = `eventstore-kill-${process.pid}-${Math.random().toString(36).slice(2, 6)}`
      yield* Effect.gen(function*() {
        const store = yield* EventStore.EventStore
        const acknowledged: Array<{ stream: string; ids: Array<string> }> = []
        const attempted: Array<{ stream: string; ids: Array<string> }> = []
        const failures: Array<string> = []
        let stop = false
        const writer = (w: number) =>
          Effect.gen(function*() {
            for (let i = 0; !stop; i++) {
              const stream = `Kill-${w}-${i}`
              const ids = Array.from({ length: 1 + (i % 4) }, () => crypto.randomUUID())
              attempted.push({ stream, ids })
              const result = yield* Effect.either(
                store.append(stream, ids.map((eventId, k) => ({ ...added(k), eventId })), { expectedVersion: "no-stream" })
              )
              if (result._tag === "Right") acknowledged.push({ stream, ids })
              else failures.push(result.left._tag)
            }
          })
        const writers = yield* Effect.fork(Effect.all([0, 1, 2, 3].map(writer), { concurrency: "unbounded" }))
        let killed = 0
        for (let round = 0; round < 5; round++) {
          yield* Effect.sleep("150 millis")
          killed += (yield* Effect.promise(() =>
            Pg.query(`SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1`, [app])
          )).length
        }
        expect(killed).toBeGreaterThanOrEqual(5)
        yield* Effect.sleep("150 millis")
        stop = true
        yield* writers.await
        expect(failures.filter((tag) => tag !== "StoreError")).toEqual([])
        const stored = new Map<string, Array<string>>()
        for (const e of yield* Stream.runCollect(store.readAll({ filter: { streamTypes: ["Kill"] } }))) {
          stored.set(e.streamId, [...(stored.get(e.streamId) ?? []), e.eventId])
        }
        for (const { ids, stream } of acknowledged) expect(stored.get(stream)).toEqual(ids)
        // every append is there whole or not at all
        for (const { ids, stream } of attempted) if (stored.has(stream)) expect(stored.get(stream)).toEqual(ids)
        expect(acknowledged.length).toBeGreaterThan(20)
        console.log(`kill: ${killed} connections killed, ${failures.length} appends failed, ${acknowledged.length} acknowledged`)
        const after = yield* store.append("Kill-after", [added(1)])
        expect(after.version).toBe(1)
      }).pipe(
        Effect.scoped,
        Effect.provide(Postgres.layer({ url: Redacted.make(Pg.url), schema, applicationName: app, busyTimeout: "1 second" }))
      )
    }))

  it.live("bad input: quoted schema names are refused typed; ids and types with quotes and SQL are stored verbatim", () =>
    Effect.gen(function*() {
      for (const schema of [`x"; DROP TABLE t; --`, "a b", "1abc", "", "x".repeat(64)]) {
        const error = yield* Effect.flip(
          Effect.scoped(Layer.build(Postgres.layer({ url: Redacted.make(Pg.url), schema })))
        )
        expect(error).toMatchObject({ _tag: "StoreError", operation: "open", cause: { _tag: "InvalidInput", field: "schema" } })
      }
      const schema = Pg.freshSchema("input")
      yield* Effect.gen(function*() {
        const store = yield* EventStore.EventStore
        const nasty = `Acc'); DROP TABLE eventstore_events; --"\\x`
        const type = `T"'; DELETE FROM eventstore_events; --`
        const written = yield* store.append(nasty, [{ type, payload: { s: "'); DROP TABLE x; --\u0000" } }], {
          streamType: `S'"; --`,
          metadata: { correlationId: `c'"); --`, tags: { "k'\"": "v'); --" } }
        })
        const [read] = [...(yield* Stream.runCollect(store.read(nasty)))]
        expect(read).toMatchObject({ streamId: nasty, type, streamType: `S'"; --`, payload: { s: "'); DROP TABLE x; --\u0000" } })
        expect(read!.metadata).toEqual({ correlationId: `c'"); --`, tags: { "k'\"": "v'); --" } })
        expect(written.position).toBe(read!.position)
        expect(yield* store.version(nasty)).toBe(1)
        expect((yield* Stream.runCollect(store.readAll())).length).toBe(1)
      }).pipe(Effect.scoped, Effect.provide(Postgres.layer({ url: Redacted.make(Pg.url), schema })))
    }))

  it.live("host, port and database given beside url override the url's own", () =>
    Effect.gen(function*() {
      const schema = Pg.freshSchema("parts")
      const real = new URL(Pg.url)
      // the url names a server and database that do not exist; the parts name the real ones
      const wrong = new URL(Pg.url)
      wrong.hostname = "127.0.0.2"
      wrong.port = "1"
      wrong.pathname = "/no_such_database"
      const head = yield* Effect.flatMap(EventStore.EventStore, (store) => store.head).pipe(
        Effect.provide(Postgres.layer({
          url: Redacted.make(wrong.toString()),
          host: real.hostname,
          port: Number(real.port || 5432),
          database: real.pathname.slice(1),
          schema,
          connectTimeout: "3 seconds"
        })),
        Effect.scoped
      )
      expect(head).toBe(0)
    }))

  it.live("an unreachable server fails the layer with a StoreError that does not show the password", () =>
    Effect.gen(function*() {
      const error = yield* Effect.flip(Effect.scoped(Layer.build(Postgres.layer({
        url: Redacted.make("postgres://someone:s3cr3t-pw@127.0.0.1:1/none"),
        connectTimeout: "2 seconds"
      }))))
      expect(error._tag).toBe("StoreError")
      expect(JSON.stringify(error) + String(error) + String((error as { cause?: unknown }).cause)).not.toContain("s3cr3t-pw")
    }))
})
