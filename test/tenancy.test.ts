import { describe, expect, it } from "@effect/vitest"
import { Aggregate, Event, EventStore, Projection, Snapshot, Tenancy } from "effect-eventstore"
import * as Sqlite from "effect-eventstore/Sqlite"
import * as SqlProjection from "effect-eventstore/SqlProjection"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Option from "effect/Option"
import * as Schema from "effect/Schema"
import * as Stream from "effect/Stream"
import * as SqlClient from "@effect/sql/SqlClient"
import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"

const dir = fs.mkdtempSync(path.join(os.tmpdir(), "effect-eventstore-tenancy-"))
const Added = Schema.TaggedStruct("Added", { n: Schema.Int })
const Events = Event.registry([Added])

const Counter = Aggregate.make({
  name: "Counter",
  events: Events,
  decider: {
    initialState: 0,
    decide: (n: number) => [Added.make({ n })],
    evolve: (total: number, e: typeof Added.Type) => total + e.n
  },
  snapshots: { schema: Schema.Number, every: 2, write: "inline" }
})

const forTenant = (tenant: string) => Layer.succeed(Tenancy.Tenant, { id: tenant })

describe("Tenancy on a shared database", () => {
  it.effect("each tenant's projection sees its own events and keeps its own checkpoint", () =>
    Effect.gen(function*() {
      const seen = new Map<string, Array<number>>()
      const projectionOf = (tenant: string) =>
        Projection.make({
          name: "totals",
          events: Events,
          handlers: {
            Added: (e) => Effect.sync(() => seen.set(tenant, [...(seen.get(tenant) ?? []), e.payload.n]))
          }
        })
      const Shared = SqlProjection.layer.pipe(Layer.provideMerge(Sqlite.layer({ filename: path.join(dir, "shared.db") })))
      const tenantLayer = (tenant: string) =>
        Projection.layer([projectionOf(tenant)]).pipe(
          Layer.provideMerge(Layer.merge(Tenancy.layer, Tenancy.layerCheckpoints)),
          Layer.provide(forTenant(tenant))
        )
      const run = (tenant: string, values: ReadonlyArray<number>) =>
        Effect.gen(function*() {
          const store = yield* EventStore.EventStore
          for (const n of values) yield* store.append("Counter-1", [{ type: "Added", payload: { n } }])
          const projections = yield* Projection.Projections
          yield* projections.awaitPosition("totals", yield* store.head, "10 seconds")
          return (yield* projections.status("totals")).checkpoint
        }).pipe(Effect.provide(tenantLayer(tenant)))
      const program = Effect.gen(function*() {
        const a = yield* run("acme", [1, 2, 3])
        const b = yield* run("globex", [10])
        const a2 = yield* run("acme", [4])
        return { a, b, a2 }
      })
      const { a, a2, b } = yield* program.pipe(Effect.provide(Shared))
      expect(seen.get("acme")).toEqual([1, 2, 3, 4])
      expect(seen.get("globex")).toEqual([10])
      expect(a).toBe(3)
      expect(b).toBe(4)
      expect(a2).toBe(5)
    }))

  it.effect("snapshots are the tenant's own: another tenant's stream of the same id does not start from them", () =>
    Effect.gen(function*() {
      const handle = (tenant: string, n: number) =>
        Effect.scoped(Effect.flatMap(Aggregate.handler(Counter), (h) => h.handle("1", n))).pipe(
          Effect.provide(Layer.merge(Tenancy.layer, Tenancy.layerSnapshots)),
          Effect.provide(forTenant(tenant))
        )
      yield* handle("acme", 5)
      yield* handle("acme", 5) // a snapshot at version 2, state 10
      const first = yield* handle("globex", 1)
      expect(first).toMatchObject({ version: 1, state: 1, source: "replay" })
      const third = yield* handle("acme", 1)
      expect(third).toMatchObject({ version: 3, state: 11, source: "snapshot" })
      const snapshots = yield* Snapshot.SnapshotStore
      const acme = yield* Tenancy.snapshotStore(snapshots, "acme")
      expect(Option.map(yield* acme.latest("Counter-1"), (s) => [s.streamId, s.version])).toEqual(Option.some(["Counter-1", 2]))
      expect(yield* snapshots.latest("Counter-1")).toEqual(Option.none())
    }).pipe(Effect.provide(Layer.merge(EventStore.layerMemory, Snapshot.layerMemory))))
})

describe("Tenancy.layer alone", () => {
  it.effect("a tenant's aggregate sees the tenant's snapshots, not another's, with the whole database's snapshot store", () =>
    Effect.gen(function*() {
      const handle = (tenant: string, n: number) =>
        Effect.scoped(Effect.flatMap(Aggregate.handler(Counter), (h) => h.handle("1", n))).pipe(
          Effect.provide(Tenancy.layer),
          Effect.provide(forTenant(tenant))
        )
      yield* handle("acme", 100)
      yield* handle("acme", 100) // acme's snapshot at version 2, state 200
      yield* handle("globex", 1)
      yield* handle("globex", 1)
      yield* handle("globex", 1)
      const fourth = yield* handle("globex", 1)
      expect(fourth).toMatchObject({ version: 4, state: 4 })
      expect(yield* Effect.flatMap(Snapshot.SnapshotStore, (s) => s.latest("Counter-1"))).toEqual(Option.none())
    }).pipe(Effect.provide(Layer.merge(EventStore.layerMemory, Snapshot.layerMemory))))

  it.effect("a tenant's projections keep the tenant's checkpoints with the whole database's checkpoint store", () =>
    Effect.gen(function*() {
      const seen: Array<string> = []
      const Totals = Projection.make({
        name: "totals",
        events: Events,
        handlers: { Added: (e) => Effect.sync(() => seen.push(`${e.metadata.tenantId}:${e.payload.n}`)) }
      })
      const run = (tenant: string, n: number) =>
        Effect.gen(function*() {
          const store = yield* EventStore.EventStore
          yield* store.append("Counter-1", [{ type: "Added", payload: { n } }])
          const projections = yield* Projection.Projections
          yield* projections.awaitPosition("totals", yield* store.head, "10 seconds")
        }).pipe(Effect.provide(Projection.layer([Totals]).pipe(Layer.provideMerge(Tenancy.layer))), Effect.provide(forTenant(tenant)))
      yield* run("acme", 1)
      yield* run("globex", 2)
      yield* run("acme", 3)
      expect(seen).toEqual(["acme:1", "globex:2", "acme:3"])
      const checkpoints = yield* Projection.CheckpointStore
      expect(yield* checkpoints.load("totals")).toBe(0)
    }).pipe(Effect.provide(Layer.merge(EventStore.layerMemory, Projection.layerMemory))))

  it.effect("a snapshot store of another tenant beside a tenant's event store is refused (a defect)", () =>
    Effect.gen(function*() {
      const snapshots = yield* Snapshot.SnapshotStore
      const globex = yield* Tenancy.snapshotStore(snapshots, "globex")
      const exit = yield* Effect.scoped(Aggregate.handler(Counter)).pipe(
        Effect.provide(Tenancy.layer),
        Effect.provide(forTenant("acme")),
        Effect.provideService(Snapshot.SnapshotStore, globex),
        Effect.exit
      )
      expect(exit._tag).toBe("Failure")
      expect(String(exit)).toContain("SnapshotStore")
    }).pipe(Effect.provide(Layer.merge(EventStore.layerMemory, Snapshot.layerMemory))))

  it.effect("a row marked with a tenant but not stored under its key (an older writer) is not that tenant's", () =>
    Effect.gen(function*() {
      const store = yield* EventStore.EventStore
      const sql = yield* SqlClient.SqlClient
      const acme = yield* Tenancy.eventStore(store, "acme")
      yield* acme.append("Own-1", [{ type: "Added", payload: { n: 1 } }])
      yield* store.append("Root-1", [{ type: "Added", payload: { n: 2 } }], { metadata: { tenantId: "acme" } })
      yield* sql`UPDATE eventstore_events SET tenant_id = 'acme' WHERE stream_id = 'Root-1'`
      const seen = yield* Stream.runCollect(acme.readAll())
      expect([...seen].map((e) => e.streamId)).toEqual(["Own-1"])
    }).pipe(Effect.provide(Sqlite.layer({ filename: path.join(dir, "older-writer.db") }))))
})

describe("Tenancy: a database per tenant", () => {
  const root = path.join(dir, "per-tenant")
  fs.mkdirSync(root)
  const open = (tenant: string) => Sqlite.layer({ filename: path.join(root, `${tenant}.db`) })

  it.effect("a tenant's database opens on first use, is shared while used, and closes with the scope", () =>
    Effect.gen(function*() {
      const opened: Array<string> = []
      const version = yield* Effect.scoped(Effect.gen(function*() {
        const databases = yield* Tenancy.databasePerTenant((tenant) => {
          opened.push(tenant)
          return open(tenant)
        })
        expect(fs.existsSync(path.join(root, "acme.db"))).toBe(false)
        const append = (tenant: string) =>
          Effect.flatMap(EventStore.EventStore, (store) => store.append("Doc-1", [{ type: "Added", payload: { n: 1 } }]))
            .pipe(databases.provide(tenant))
        yield* append("acme")
        yield* append("acme")
        yield* append("globex")
        // held open across uses in one scope
        yield* Effect.scoped(Effect.gen(function*() {
          const context = yield* databases.get("acme")
          const store = EventStore.EventStore.pipe((tag) => Effect.provide(tag, context))
          yield* Effect.flatMap(store, (s) => s.append("Doc-1", [{ type: "Added", payload: { n: 1 } }]))
        }))
        return yield* Effect.flatMap(EventStore.EventStore, (s) => s.version("Doc-1")).pipe(databases.provide("acme"))
      }))
      expect(version).toBe(3)
      expect(fs.existsSync(path.join(root, "acme.db"))).toBe(true)
      expect(fs.existsSync(path.join(root, "globex.db"))).toBe(true)
      // closed with the scope: SQLite removes the WAL file when the last connection closes
      expect(fs.existsSync(path.join(root, "acme.db-wal"))).toBe(false)
      expect(opened.filter((t) => t === "globex")).toHaveLength(1)
    }))

  it.effect("a tenant id that is not one never reaches open: InvalidInput, no file", () =>
    Effect.gen(function*() {
      const before = fs.readdirSync(root).sort()
      const opened: Array<string> = []
      yield* Effect.scoped(Effect.gen(function*() {
        const databases = yield* Tenancy.databasePerTenant((tenant) => {
          opened.push(tenant)
          return open(tenant)
        })
        for (const id of ["../escape", "a/b", "..", "x'; DROP TABLE t; --", "a b", "", "a".repeat(64), "con.db"]) {
          const error = yield* Effect.flip(EventStore.EventStore.pipe(databases.provide(id)))
          expect(error).toMatchObject({ _tag: "InvalidInput", field: "tenantId" })
        }
      }))
      expect(opened).toEqual([])
      expect(fs.readdirSync(root).sort()).toEqual(before)
      expect(fs.existsSync(path.join(dir, "escape.db"))).toBe(false)
    }))
})
