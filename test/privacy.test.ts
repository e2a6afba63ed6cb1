import { describe, expect, it } from "@effect/vitest"
import * as SqlClient from "@effect/sql/SqlClient"
import { Aggregate, Bus, Event, EventStore, KeyStore, Privacy, Projection, Snapshot, Tenancy } from "effect-eventstore"
import * as Credentials from "effect-eventstore/Credentials"
import * as Sqlite from "effect-eventstore/Sqlite"
import * as Pg from "./fixtures/pg.js"
import * as SqlProjection from "effect-eventstore/SqlProjection"
import * as Chunk from "effect/Chunk"
import * as Config from "effect/Config"
import * as ConfigProvider from "effect/ConfigProvider"
import * as Effect from "effect/Effect"
import * as Either from "effect/Either"
import * as Exit from "effect/Exit"
import * as Layer from "effect/Layer"
import * as Option from "effect/Option"
import * as Redacted from "effect/Redacted"
import * as Schedule from "effect/Schedule"
import * as Schema from "effect/Schema"
import * as Stream from "effect/Stream"
import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"
import {
  Customer,
  Customers,
  CustomerEvents,
  CustomerRegistered,
  GiftSent,
  otherKek,
  testKek
} from "./fixtures/customers.js"

const dir = fs.mkdtempSync(path.join(os.tmpdir(), "effect-eventstore-privacy-"))
const dbFile = (name: string) => path.join(dir, `${name}-${crypto.randomUUID().slice(0, 8)}.db`)

const kek = Redacted.make(testKek)


/** SQLite file → raw store, key store, the privacy layer over them, the customer handler and projection. */
const sqliteApp = (filename: string, options: Partial<Privacy.Options<any>> = {}) => {
  const sqlite = Sqlite.layer({ filename, pollInterval: "20 millis" })
  // as a user composes it: the privacy layer's EventStore (the decorated one) wins over the raw one it is given
  const base = Privacy.layer({ registries: [CustomerEvents], kek, settle: "30 millis", ...options }).pipe(
    Layer.provideMerge(KeyStore.layerSql()),
    Layer.provideMerge(sqlite)
  )
  const handler = Aggregate.layer(Customer, { snapshotWrites: "inline" }).pipe(Layer.provide(base))
  const projections = Projection.layer([Customers]).pipe(
    Layer.provide(SqlProjection.layer.pipe(Layer.provideMerge(base)))
  )
  return Layer.mergeAll(handler, projections).pipe(Layer.provideMerge(base))
}

const raw = (filename: string) => Sqlite.layer({ filename })

/** Every stored payload, as the database holds it. */
const storedPayloads = (filename: string) =>
  Effect.scoped(Effect.gen(function*() {
    const store = yield* EventStore.EventStore
    return yield* Stream.runCollect(store.readAll()).pipe(Effect.map(Chunk.toReadonlyArray))
  }).pipe(Effect.provide(raw(filename))))

const fileBytes = (file: string) => (fs.existsSync(file) ? fs.readFileSync(file) : Buffer.alloc(0))
const occurs = (filename: string, value: string) => {
  const needle = Buffer.from(value, "utf8")
  return fileBytes(filename).includes(needle) || fileBytes(`${filename}-wal`).includes(needle)
}

describe("Privacy: declarations", () => {
  it.effect("a personal field without a subject, or without a replacement it could read as, is refused at startup", () =>
    Effect.gen(function*() {
      const NoSubject = Schema.TaggedStruct("NoSubject", { name: Schema.String.pipe(Privacy.personal({ replacement: "" })) })
      const NoReplacement = Schema.TaggedStruct("NoReplacement", {
        id: Schema.String.pipe(Privacy.subject),
        name: Schema.String.pipe(Privacy.personal())
      })
      const TwoSubjects = Schema.TaggedStruct("TwoSubjects", {
        a: Schema.String.pipe(Privacy.subject),
        b: Schema.String.pipe(Privacy.subject),
        name: Schema.String.pipe(Privacy.personal({ replacement: "" }))
      })
      for (const schema of [NoSubject, NoReplacement, TwoSubjects]) {
        const exit = yield* Layer.build(
          Privacy.layer({ registries: [Event.registry([schema])], kek }).pipe(
            Layer.provide(Layer.merge(EventStore.layerMemory, KeyStore.layerMemory))
          )
        ).pipe(Effect.scoped, Effect.exit)
        expect(Exit.isFailure(exit)).toBe(true)
        if (Exit.isFailure(exit)) expect(JSON.stringify(exit.cause)).toContain("InvalidInput")
      }
    }))

  it.effect("the key-encryption key from Credentials: a Token credential; another kind is a typed error at startup", () =>
    Effect.gen(function*() {
      const deps = Layer.merge(EventStore.layerMemory, KeyStore.layerMemory)
      const ok = Privacy.layer({ registries: [CustomerEvents], kek: Privacy.kekFromCredentials("kek") }).pipe(
        Layer.provide(Layer.merge(deps, Credentials.layerStatic({ kek: Credentials.token(kek) })))
      )
      yield* Layer.build(ok).pipe(Effect.scoped)
      const wrongKind = Privacy.layer({ registries: [CustomerEvents], kek: Privacy.kekFromCredentials("kek") }).pipe(
        Layer.provide(Layer.merge(deps, Credentials.layerStatic({ kek: Credentials.userPassword("u", kek) })))
      )
      const error = yield* Effect.flip(Layer.build(wrongKind).pipe(Effect.scoped))
      expect(error).toMatchObject({ _tag: "KeyEncryptionKeyError", reason: "missing" })
      expect(JSON.stringify(error)).not.toContain(testKek)
    }))

  it.effect("a payload with its own $privacy field is refused", () =>
    Effect.gen(function*() {
      const store = yield* EventStore.EventStore
      const error = yield* Effect.flip(store.append("X-1", [{ type: "X", payload: { $privacy: [] } }]))
      expect(error._tag).toBe("InvalidInput")
    }).pipe(
      Effect.provide(
        Privacy.layer({ registries: [CustomerEvents], kek }).pipe(
          Layer.provide(Layer.merge(EventStore.layerMemory, KeyStore.layerMemory))
        )
      )
    ))
})

describe("Privacy on SQLite", () => {
  it.scopedLive("personal fields are stored encrypted (unmarked ones plain) and read back decrypted", () =>
    Effect.gen(function*() {
      const filename = dbFile("roundtrip")
      yield* Effect.gen(function*() {
        yield* Customer.handle("c-1", { _tag: "Register", customerId: "c-1", name: "Ada Lovelace", email: "ada@example.com", card: "4111111111114242" })
        yield* Customer.handle("c-1", { _tag: "PlaceOrder", customerId: "c-1", amount: 12, shipTo: "1 Analytical Way" })
        const loaded = yield* Customer.load("c-1")
        expect(loaded.state).toMatchObject({ name: "Ada Lovelace", email: "ada@example.com", card: "4111111111114242", lastShipTo: "1 Analytical Way" })
        const events = yield* Stream.runCollect(Customer.read("c-1"))
        expect(Chunk.toReadonlyArray(events).map((e) => e.payload._tag)).toEqual(["CustomerRegistered", "OrderPlaced"])
      }).pipe(Effect.provide(sqliteApp(filename)))
      const stored = yield* storedPayloads(filename)
      const registered = stored.find((e) => e.type === "CustomerRegistered")!
      const payload = registered.payload as Record<string, unknown>
      expect(payload.customerId).toBe("c-1")
      expect(payload.plan).toBe("basic")
      expect(payload.name).toBeUndefined()
      expect(JSON.stringify(stored)).not.toContain("Ada Lovelace")
      expect(JSON.stringify(stored)).not.toContain("ada@example.com")
      expect(JSON.stringify(stored)).not.toContain("Analytical")
    }))

  it.scopedLive("forget: loads, commands, snapshots and projections go on with replacements; nothing of the subject is left in the file", () =>
    Effect.gen(function*() {
      const filename = dbFile("forget")
      yield* Effect.gen(function*() {
        const privacy = yield* Privacy.Privacy
        const projections = yield* Projection.Projections
        const sql = yield* SqlClient.SqlClient
        for (const [id, name] of [["c-1", "Ada Lovelace"], ["c-2", "Grace Hopper"]] as const) {
          yield* Customer.handle(id, { _tag: "Register", customerId: id, name, email: `${id}@example.com`, card: `41111111111${id === "c-1" ? "14242" : "19999"}` })
          yield* Customer.handle(id, { _tag: "PlaceOrder", customerId: id, amount: 5, shipTo: `${name}'s house` })
          yield* Customer.handle(id, { _tag: "ChangeEmail", customerId: id, email: `${id}.new@example.org` })
        }
        // snapshots were written (every 2 events) and hold the decrypted state
        const snapshots = yield* Snapshot.SnapshotStore
        expect(Option.isSome(yield* snapshots.latest("Customer-c-1"))).toBe(true)
        const head = yield* Effect.flatMap(EventStore.EventStore, (s) => s.head)
        yield* projections.awaitPosition("customers", head, "5 seconds")

        const report = yield* privacy.forget("c-1")
        expect(report.destroyed).toBe(true)
        expect(report.streams).toEqual(["Customer-c-1"])
        expect(report.snapshotsDeleted).toBeGreaterThan(0)
        expect(Option.isNone(yield* snapshots.latest("Customer-c-1"))).toBe(true)

        // loads replay with the replacements (and the kept part of the card)
        const loaded = yield* Customer.load("c-1")
        expect(loaded.state).toEqual({ name: "(forgotten)", email: "", card: "…4242", orders: 1, total: 5, lastShipTo: null })
        // forgetting again destroys nothing and appends no second tombstone
        const again = yield* privacy.forget("c-1")
        expect(again.destroyed).toBe(false)
        expect(again.position).toBe(report.position)
        // commands go on; what they append is encrypted with a new key (a subject may come back)
        yield* Customer.handle("c-1", { _tag: "PlaceOrder", customerId: "c-1", amount: 7, shipTo: "Ada's new house" })
        expect((yield* Customer.load("c-1")).state).toMatchObject({ total: 12, lastShipTo: "Ada's new house" })
        // the other subject is untouched
        expect((yield* Customer.load("c-2")).state).toMatchObject({ name: "Grace Hopper", email: "c-2.new@example.org" })

        // the projection purged the row on the tombstone; a rebuild goes through the shredded stream
        yield* projections.awaitPosition("customers", report.position, "5 seconds")
        expect(yield* sql`SELECT id FROM customers ORDER BY id`).toEqual([{ id: "c-1" }, { id: "c-2" }].slice(1).concat([]))
        const progress = yield* Stream.runCollect(projections.rebuild("customers"))
        expect(Chunk.last(progress).pipe(Option.map((p) => p.done))).toEqual(Option.some(true))
        const rows = yield* sql<{ id: string; name: string; card: string }>`SELECT id, name, card FROM customers ORDER BY id`
        // the replayed registration reads as its replacement, then the tombstone deletes the row again
        expect(rows.map((r) => r.id)).toEqual(["c-2"])

        // the data appended since is under a live key: verification says so, a second forget shreds it
        const live = yield* privacy.verifyForgotten("c-1")
        expect(live.findings.map((f) => f.where)).toEqual(["key"])
        const second = yield* privacy.forget("c-1")
        expect(second.destroyed).toBe(true)
        expect(second.position).toBeGreaterThan(report.position)
        expect((yield* Customer.load("c-1")).state).toMatchObject({ total: 12, lastShipTo: null })

        yield* Effect.sleep("100 millis") // the second pass
        yield* privacy.purge
        const verification = yield* privacy.verifyForgotten("c-1", {
          values: ["Ada Lovelace", "c-1@example.com", "c-1.new@example.org", "Ada Lovelace's house", "Ada's new house", "4111111111114242"],
          tables: ["customers"],
          files: [filename, `${filename}-wal`]
        })
        expect(verification.findings).toEqual([])
        expect(verification.clean).toBe(true)
        const audit = yield* privacy.audit("c-1")
        expect(audit.map((a) => a.action)).toEqual(["create", "forget", "forget", "create", "forget"])
      }).pipe(Effect.provide(sqliteApp(filename)))
      for (const value of ["Ada Lovelace", "c-1@example.com", "c-1.new@example.org", "Ada's new house", "4111111111114242"]) {
        expect(occurs(filename, value), value).toBe(false)
      }
    }))

  it.scopedLive("verifyForgotten reports a value stored in an unmarked field, and a subject never forgotten", () =>
    Effect.gen(function*() {
      const filename = dbFile("verify")
      yield* Effect.gen(function*() {
        const privacy = yield* Privacy.Privacy
        const store = yield* EventStore.EventStore
        yield* Customer.handle("c-9", { _tag: "Register", customerId: "c-9", name: "Alan Turing", card: "4000000000000002" })
        yield* store.append("Note-1", [{ type: "Note", payload: { text: "call Alan Turing back" } }])
        // a unique value is stored in plain text (claims are not encrypted)
        yield* store.append("Login-1", [{ type: "LoginCreated", payload: {}, claims: [{ index: "email", value: "alan@example.com" }] }])
        const before = yield* privacy.verifyForgotten("c-9")
        expect(before.clean).toBe(false)
        expect(before.findings.map((f) => f.where)).toContain("key")
        yield* privacy.forget("c-9")
        const after = yield* privacy.verifyForgotten("c-9", { values: ["Alan Turing", "alan@example.com"] })
        expect(after.findings.map((f) => f.where)).toEqual(["events", "claims", "claims"])
      }).pipe(Effect.provide(sqliteApp(filename)))
    }))

  it.scopedLive("a wrong or missing key-encryption key fails at startup with a typed error, and writes nothing", () =>
    Effect.gen(function*() {
      const filename = dbFile("kek")
      yield* Customer.handle("c-1", { _tag: "Register", customerId: "c-1", name: "Ada", card: "1234" }).pipe(
        Effect.provide(sqliteApp(filename))
      )
      const size = fs.statSync(filename).size + fileBytes(`${filename}-wal`).length
      const wrong = yield* Effect.flip(Layer.build(sqliteApp(filename, { kek: Redacted.make(otherKek) })).pipe(Effect.scoped))
      expect(wrong).toMatchObject({ _tag: "KeyEncryptionKeyError", reason: "mismatch" })
      const malformed = yield* Effect.flip(Layer.build(sqliteApp(filename, { kek: Redacted.make("short") })).pipe(Effect.scoped))
      expect(malformed).toMatchObject({ _tag: "KeyEncryptionKeyError", reason: "malformed" })
      const missing = yield* Effect.flip(
        Layer.build(sqliteApp(filename, { kek: Config.redacted("NO_SUCH_PRIVACY_KEK") })).pipe(
          Effect.scoped,
          Effect.withConfigProvider(ConfigProvider.fromMap(new Map()))
        )
      )
      expect(missing).toMatchObject({ _tag: "KeyEncryptionKeyError", reason: "missing" })
      expect(JSON.stringify(missing)).not.toContain(testKek)
      // nothing was written by the failed starts
      const events = yield* storedPayloads(filename)
      expect(events.length).toBe(1)
      void size
    }))

  it.scopedLive("a KEK rotation: start with the new KEK and the old one, wrap the keys again, then the old one is not needed (nor accepted)", () =>
    Effect.gen(function*() {
      const filename = dbFile("rekek")
      const newKek = Redacted.make(otherKek)
      yield* Customer.handle("c-1", { _tag: "Register", customerId: "c-1", name: "Ada", card: "1234" }).pipe(
        Effect.provide(sqliteApp(filename))
      )
      const rewrapped = yield* Effect.gen(function*() {
        expect((yield* Customer.load("c-1")).state.name).toBe("Ada")
        return yield* Effect.flatMap(Privacy.Privacy, (p) => p.rewrapKeys)
      }).pipe(Effect.provide(sqliteApp(filename, { kek: newKek, previousKeks: [kek] })))
      expect(rewrapped).toBe(1)
      const name = yield* Effect.map(Customer.load("c-1"), (l) => l.state.name).pipe(
        Effect.provide(sqliteApp(filename, { kek: newKek }))
      )
      expect(name).toBe("Ada")
      const old = yield* Effect.flip(Layer.build(sqliteApp(filename)).pipe(Effect.scoped))
      expect(old).toMatchObject({ _tag: "KeyEncryptionKeyError", reason: "mismatch" })
    }))

  it.scopedLive("a tampered ciphertext is a typed decode error naming its position", () =>
    Effect.gen(function*() {
      const filename = dbFile("tamper")
      yield* Customer.handle("c-1", { _tag: "Register", customerId: "c-1", name: "Ada", card: "1234" }).pipe(
        Effect.provide(sqliteApp(filename))
      )
      yield* Effect.gen(function*() {
        const sql = yield* SqlClient.SqlClient
        const [row] = yield* sql<{ position: number; payload: string }>`SELECT position, payload FROM eventstore_events`
        const payload = JSON.parse(row!.payload)
        const c: string = payload.$privacy[0].c
        payload.$privacy[0].c = (c[10] === "A" ? "B" : "A") + c.slice(1, 10) + (c[10] === "A" ? "B" : "A") + c.slice(11)
        yield* sql`UPDATE eventstore_events SET payload = ${JSON.stringify(payload)} WHERE position = ${row!.position}`
      }).pipe(Effect.provide(raw(filename)))
      const error = yield* Effect.flip(Customer.load("c-1").pipe(Effect.provide(sqliteApp(filename))))
      expect(error).toMatchObject({ _tag: "EventDecodeError", streamId: "Customer-c-1", position: 1, version: 1 })
    }))

  it.scopedLive("rotation: new events take the new version, old ones still decrypt; nothing is rewritten", () =>
    Effect.gen(function*() {
      const filename = dbFile("rotate")
      yield* Effect.gen(function*() {
        const privacy = yield* Privacy.Privacy
        yield* Customer.handle("c-1", { _tag: "Register", customerId: "c-1", name: "Ada", card: "1234" })
        expect(yield* privacy.rotate("c-1")).toBe(2)
        yield* Customer.handle("c-1", { _tag: "PlaceOrder", customerId: "c-1", amount: 1, shipTo: "Somewhere" })
        const loaded = yield* Customer.load("c-1")
        expect(loaded.state).toMatchObject({ name: "Ada", lastShipTo: "Somewhere" })
      }).pipe(Effect.provide(sqliteApp(filename)))
      const stored = yield* storedPayloads(filename)
      expect(stored.map((e) => (e.payload as any).$privacy[0].v)).toEqual([1, 2])
    }))

  it.scopedLive("a gift between two subjects: forgetting one keeps the other's part", () =>
    Effect.gen(function*() {
      const filename = dbFile("gift")
      yield* Effect.gen(function*() {
        const privacy = yield* Privacy.Privacy
        const store = yield* EventStore.EventStore
        const encoded = Either.getOrThrow(
          CustomerEvents.encode(GiftSent.make({ from: "c-1", to: "c-2", note: "happy birthday", toName: "Grace", amount: 3 }))
        )
        yield* store.append("Gift-1", [encoded])
        yield* privacy.forget("c-1")
        const [event] = yield* store.readPage("Gift-1")
        const decoded = Either.getOrThrow(CustomerEvents.decodePayload(event!))
        expect(decoded).toEqual(GiftSent.make({ from: "c-1", to: "c-2", note: "", toName: "Grace", amount: 3 }))
        expect((yield* privacy.forget("c-2")).streams).toEqual(["Gift-1"])
        const [after] = yield* store.readPage("Gift-1")
        expect(Either.getOrThrow(CustomerEvents.decodePayload(after!))).toMatchObject({ note: "", toName: "(forgotten)" })
      }).pipe(Effect.provide(sqliteApp(filename)))
    }))
})

describe.skipIf(!Pg.available)("Privacy on PostgreSQL", () => {
  it.scopedLive("keys in the database, snapshots deleted, loads and commands go on after forget", () =>
    Effect.gen(function*() {
      const pg = Pg.layer("privacy", { pollInterval: "50 millis" })
      const base = Privacy.layer({ registries: [CustomerEvents], kek, settle: "30 millis" }).pipe(
        Layer.provideMerge(KeyStore.layerSql()),
        Layer.provideMerge(pg)
      )
      const app = Aggregate.layer(Customer, { snapshotWrites: "inline" }).pipe(Layer.provideMerge(base))
      yield* Effect.gen(function*() {
        const privacy = yield* Privacy.Privacy
        const sql = yield* SqlClient.SqlClient
        yield* Customer.handle("c-1", { _tag: "Register", customerId: "c-1", name: "Ada Lovelace", card: "4111111111114242" })
        yield* Customer.handle("c-1", { _tag: "PlaceOrder", customerId: "c-1", amount: 5, shipTo: "1 Analytical Way" })
        const stored = yield* sql<{ payload: unknown }>`SELECT payload FROM eventstore_events`
        expect(JSON.stringify(stored)).not.toContain("Ada Lovelace")
        expect((yield* Customer.load("c-1")).state.name).toBe("Ada Lovelace")
        const report = yield* privacy.forget("c-1")
        expect(report).toMatchObject({ destroyed: true, streams: ["Customer-c-1"], snapshotsDeleted: 1, purged: true })
        expect((yield* Customer.load("c-1")).state).toMatchObject({ name: "(forgotten)", card: "…4242", lastShipTo: null, total: 5 })
        yield* Customer.handle("c-1", { _tag: "PlaceOrder", customerId: "c-1", amount: 2, shipTo: null })
        const check = yield* privacy.verifyForgotten("c-1", { values: ["Ada Lovelace", "1 Analytical Way"] })
        // the order placed after the forget made a new key (the subject came back): the only finding
        expect(check.findings.map((f) => f.where)).toEqual(["key"])
        yield* privacy.forget("c-1")
        expect((yield* privacy.verifyForgotten("c-1", { values: ["Ada Lovelace", "1 Analytical Way"] })).clean).toBe(true)
      }).pipe(Effect.provide(app))
    }), 30_000)
})

describe("Privacy: tenants' whole payloads", () => {
  it.effect("events with a tenant are stored whole-encrypted; forgetting the tenant leaves placeholders in global reads", () =>
    Effect.gen(function*() {
      const inner = yield* EventStore.makeMemory
      const layer = Privacy.layer({ registries: [CustomerEvents], kek, tenants: true }).pipe(
        Layer.provide(Layer.merge(Layer.succeed(EventStore.EventStore, inner), KeyStore.layerMemory))
      )
      yield* Effect.gen(function*() {
        const store = yield* EventStore.EventStore
        const privacy = yield* Privacy.Privacy
        const encoded = Either.getOrThrow(
          CustomerEvents.encode(CustomerRegistered.make({ customerId: "c-1", name: "Ada", card: "1234", plan: "gold" }))
        )
        yield* store.append("Customer-c-1", [encoded], { metadata: { tenantId: "acme" } })
        yield* store.append("Customer-c-2", [encoded])
        const stored = yield* Stream.runCollect(inner.readAll()).pipe(Effect.map(Chunk.toReadonlyArray))
        expect(Object.keys(stored[0]!.payload as object)).toEqual(["$privacy"])
        expect(JSON.stringify(stored[0]!.payload)).not.toContain("gold")
        expect((stored[1]!.payload as any).plan).toBe("gold")
        const [read] = yield* store.readPage("Customer-c-1")
        expect(read!.payload).toMatchObject({ customerId: "c-1", name: "Ada", plan: "gold" })

        yield* privacy.forgetTenant("acme")
        // global reads keep every position: the tenant's event as a placeholder with an empty payload
        const all = yield* Stream.runCollect(store.readAll()).pipe(Effect.map(Chunk.toReadonlyArray))
        expect(all.map((e) => [e.streamId, e.type, e.payload])).toEqual([
          ["Customer-c-1", Privacy.TENANT_FORGOTTEN, {}],
          ["Customer-c-2", "CustomerRegistered", expect.objectContaining({ name: "Ada" })]
        ])
        const error = yield* Effect.flip(store.readPage("Customer-c-1"))
        expect(error._tag).toBe("EventDecodeError")
      }).pipe(Effect.provide(layer))
    }))
})

describe("Privacy: what an append is refused for", () => {
  const memory = () =>
    Effect.gen(function*() {
      const inner = yield* EventStore.makeMemory
      const keys = yield* KeyStore.makeMemory
      const layer = Privacy.layer({ registries: [CustomerEvents], kek, tenants: true }).pipe(
        Layer.provide(Layer.merge(Layer.succeed(EventStore.EventStore, inner), Layer.succeed(KeyStore.KeyStore, keys)))
      )
      return { inner, keys, layer }
    })

  it.effect("a payload the store would refuse is refused in plain text, typed, before any key is made", () =>
    Effect.gen(function*() {
      const { inner, keys, layer } = yield* memory()
      yield* Effect.gen(function*() {
        const store = yield* EventStore.EventStore
        const cyclic: Record<string, unknown> = { customerId: "c-1", card: "1", plan: "p" }
        cyclic.name = cyclic
        const bad: ReadonlyArray<unknown> = [
          cyclic,
          { customerId: "c-1", name: 10n, card: "1", plan: "p" },
          { customerId: "c-1", name: new Date(0), card: "1", plan: "p" },
          { customerId: "c-1", name: NaN, card: "1", plan: "p" }
        ]
        for (const payload of bad) {
          const error = yield* Effect.flip(store.append("Customer-c-1", [{ type: "CustomerRegistered", payload }]))
          expect(error._tag).toBe("InvalidInput")
        }
        // a bad stream id, and a tenant's payload that is not an object
        const good = { customerId: "c-2", name: "Ada", card: "1234", plan: "p" }
        expect((yield* Effect.flip(store.append("Customer-\u0001", [{ type: "CustomerRegistered", payload: good }])))._tag)
          .toBe("InvalidInput")
        expect(
          (yield* Effect.flip(
            store.append("X-1", [{ type: "X", payload: [1, 2] }], { metadata: { tenantId: "acme" } })
          ))._tag
        ).toBe("InvalidInput")
      }).pipe(Effect.provide(layer))
      expect(yield* keys.get("subject:c-1")).toEqual(Option.none())
      expect(yield* keys.get("subject:c-2")).toEqual(Option.none())
      expect(yield* keys.get("tenant:acme")).toEqual(Option.none())
      expect(yield* inner.head).toBe(0)
    }))

  it.effect("a subject id of 256 characters is forgotten (its tombstone stream id stays within the limit)", () =>
    Effect.gen(function*() {
      const { layer } = yield* memory()
      yield* Effect.gen(function*() {
        const store = yield* EventStore.EventStore
        const privacy = yield* Privacy.Privacy
        const subject = "s".repeat(256)
        const encoded = Either.getOrThrow(CustomerEvents.encode(CustomerRegistered.make({ customerId: subject, name: "Ada", card: "1234", plan: "p" })))
        yield* store.append("Customer-long", [encoded])
        const report = yield* privacy.forget(subject)
        expect(report.destroyed).toBe(true)
        expect((yield* privacy.forget(subject)).position).toBe(report.position)
        expect((yield* privacy.verifyForgotten(subject)).clean).toBe(true)
      }).pipe(Effect.provide(layer))
    }))

  it.effect("an edited subject field does not move the data to another subject: a typed decode error", () =>
    Effect.gen(function*() {
      const { inner, layer } = yield* memory()
      yield* Effect.gen(function*() {
        const store = yield* EventStore.EventStore
        const encoded = Either.getOrThrow(CustomerEvents.encode(CustomerRegistered.make({ customerId: "c-1", name: "Ada", card: "1234", plan: "p" })))
        yield* store.append("Customer-c-1", [encoded])
        const [stored] = yield* inner.readPage("Customer-c-1")
        // the same ciphertext under another subject's id, as a tamperer would copy it
        yield* inner.append("Customer-c-9", [{
          type: stored!.type,
          eventId: crypto.randomUUID(),
          payload: { ...(stored!.payload as object), customerId: "c-9" }
        }])
        const error = yield* Effect.flip(store.readPage("Customer-c-9"))
        expect(error).toMatchObject({ _tag: "EventDecodeError", streamId: "Customer-c-9", version: 1 })
      }).pipe(Effect.provide(layer))
    }))

  it.effect("personal data declared below a top-level field is refused at startup", () =>
    Effect.gen(function*() {
      const Nested = Schema.TaggedStruct("Nested", {
        id: Schema.String.pipe(Privacy.subject),
        address: Schema.Struct({ street: Schema.String.pipe(Privacy.personal({ replacement: "" })) })
      })
      const error = yield* Effect.flip(
        Layer.build(
          Privacy.layer({ registries: [Event.registry([Nested])], kek }).pipe(
            Layer.provide(Layer.merge(EventStore.layerMemory, KeyStore.layerMemory))
          )
        ).pipe(Effect.scoped)
      )
      expect(error._tag).toBe("InvalidInput")
    }))
})

describe.skipIf(!Pg.available)("Privacy: the caller's SQL transaction", () => {
  it.scopedLive("PostgreSQL: a new key is committed on its own, whatever becomes of the caller's transaction", () =>
    Effect.gen(function*() {
      const base = Privacy.layer({ registries: [CustomerEvents], kek }).pipe(
        Layer.provideMerge(KeyStore.layerSql()),
        Layer.provideMerge(Pg.layer("privacytx"))
      )
      yield* Effect.gen(function*() {
        const store = yield* EventStore.EventStore
        const sql = yield* SqlClient.SqlClient
        const keys = yield* KeyStore.KeyStore
        const encoded = Either.getOrThrow(CustomerEvents.encode(CustomerRegistered.make({ customerId: "c-1", name: "Ada", card: "1234", plan: "p" })))
        yield* sql.withTransaction(Effect.zipRight(store.append("Customer-c-1", [encoded]), Effect.fail("rolled back"))).pipe(Effect.ignore)
        // the append committed (the store's own), and so did its key
        expect(Option.isSome(yield* keys.get("subject:c-1"))).toBe(true)
        const [read] = yield* store.readPage("Customer-c-1")
        expect(read!.payload).toMatchObject({ name: "Ada" })
      }).pipe(Effect.provide(base))
    }), 30_000)

  it.scopedLive("SQLite: an append that needs a new key inside the caller's transaction is a typed error, nothing written", () =>
    Effect.gen(function*() {
      const filename = dbFile("tx")
      yield* Effect.gen(function*() {
        const store = yield* EventStore.EventStore
        const sql = yield* SqlClient.SqlClient
        const encoded = Either.getOrThrow(CustomerEvents.encode(CustomerRegistered.make({ customerId: "c-1", name: "Ada", card: "1234", plan: "p" })))
        const error = yield* Effect.flip(sql.withTransaction(store.append("Customer-c-1", [encoded])))
        expect(error._tag).toBe("StoreError")
        expect(yield* store.head).toBe(0)
        // outside it, the same append goes through; then, with the key made, inside one too
        yield* store.append("Customer-c-1", [encoded])
        yield* sql.withTransaction(store.append("Customer-c-1", [encoded]))
        expect(yield* store.version("Customer-c-1")).toBe(2)
      }).pipe(Effect.provide(sqliteApp(filename)))
    }))
})

describe("Privacy: reading what cannot be decrypted", () => {
  it.effect("a global read delivers the events before one that does not decrypt, then fails with its typed error", () =>
    Effect.gen(function*() {
      const inner = yield* EventStore.makeMemory
      const layer = Privacy.layer({ registries: [CustomerEvents], kek }).pipe(
        Layer.provide(Layer.merge(Layer.succeed(EventStore.EventStore, inner), KeyStore.layerMemory))
      )
      yield* Effect.gen(function*() {
        const store = yield* EventStore.EventStore
        const encoded = (id: string) =>
          Either.getOrThrow(CustomerEvents.encode(CustomerRegistered.make({ customerId: id, name: "Ada", card: "1234", plan: "p" })))
        for (const id of ["c-1", "c-2", "c-3"]) yield* store.append(`Customer-${id}`, [encoded(id)])
        // a copied ciphertext under another subject: cannot be decrypted
        const [stored] = yield* inner.readPage("Customer-c-1")
        yield* inner.append("Customer-c-9", [{ type: stored!.type, payload: { ...(stored!.payload as object), customerId: "c-9" } }])
        yield* store.append("Customer-c-4", [encoded("c-4")])
        const seen: Array<string> = []
        const error = yield* Effect.flip(
          store.readAll({ pageSize: 10 }).pipe(Stream.runForEach((e) => Effect.sync(() => seen.push(e.streamId))))
        )
        expect(seen).toEqual(["Customer-c-1", "Customer-c-2", "Customer-c-3"])
        expect(error).toMatchObject({ _tag: "EventDecodeError", position: 4 })
      }).pipe(Effect.provide(layer))
    }))

  it.effect("the subject check reads the field named when the event was written: a later rename of it (with an upcaster) still decodes", () =>
    Effect.gen(function*() {
      const V1 = Schema.TaggedStruct("Registered", {
        customerId: Schema.String.pipe(Privacy.subject),
        name: Schema.String.pipe(Privacy.personal({ replacement: "" }))
      })
      const V2 = Schema.TaggedStruct("Registered", {
        clientId: Schema.String.pipe(Privacy.subject),
        name: Schema.String.pipe(Privacy.personal({ replacement: "" }))
      })
      const R1 = Event.registry([V1])
      const R2 = Event.registry([Event.versioned(V2, 2, (p: any) => ({ clientId: p.customerId, name: p.name }))])
      const inner = yield* EventStore.makeMemory
      const keys = yield* KeyStore.makeMemory
      const deps = Layer.merge(Layer.succeed(EventStore.EventStore, inner), Layer.succeed(KeyStore.KeyStore, keys))
      yield* Effect.flatMap(EventStore.EventStore, (store) =>
        store.append("R-1", [Either.getOrThrow(R1.encode(V1.make({ customerId: "c-1", name: "Ada" })))])).pipe(
          Effect.provide(Privacy.layer({ registries: [R1], kek }).pipe(Layer.provide(deps)))
        )
      const decoded = yield* Effect.flatMap(EventStore.EventStore, (store) =>
        Effect.map(store.readPage("R-1"), (events) => Either.getOrThrow(R2.decodePayload(events[0]!)))).pipe(
          Effect.provide(Privacy.layer({ registries: [R2], kek }).pipe(Layer.provide(deps)))
        )
      expect(decoded).toEqual(V2.make({ clientId: "c-1", name: "Ada" }))
    }))

  it.effect("a personal field whose subject is personal itself is refused at startup", () =>
    Effect.gen(function*() {
      const Bad = Schema.TaggedStruct("Bad", {
        id: Schema.String.pipe(Privacy.subject),
        partnerId: Schema.String.pipe(Privacy.personal({ replacement: "" })),
        partnerName: Schema.String.pipe(Privacy.personal({ subject: "partnerId", replacement: "" }))
      })
      const error = yield* Effect.flip(
        Layer.build(
          Privacy.layer({ registries: [Event.registry([Bad])], kek }).pipe(
            Layer.provide(Layer.merge(EventStore.layerMemory, KeyStore.layerMemory))
          )
        ).pipe(Effect.scoped)
      )
      expect(error._tag).toBe("InvalidInput")
    }))
})

describe("Privacy across processes", () => {
  it.scopedLive("a forget in one process reaches another's reads within keyCacheTtl, tenants' payloads included", () =>
    Effect.gen(function*() {
      const filename = dbFile("two")
      const app = () =>
        Privacy.layer({ registries: [CustomerEvents], kek, tenants: true, keyCacheTtl: "50 millis" }).pipe(
          Layer.provideMerge(KeyStore.layerSql()),
          Layer.provideMerge(Sqlite.layer({ filename, pollInterval: "20 millis" }))
        )
      const a = yield* Layer.build(app())
      const b = yield* Layer.build(app())
      const encoded = Either.getOrThrow(CustomerEvents.encode(CustomerRegistered.make({ customerId: "c-1", name: "Ada", card: "1234", plan: "p" })))
      const readName = (ctx: typeof a) =>
        Effect.flatMap(EventStore.EventStore, (store) =>
          Effect.map(store.readPage("Customer-c-1"), (events) => events.map((e) => (e.payload as any).name))).pipe(Effect.provide(ctx))
      const readTenant = (ctx: typeof a) =>
        Effect.flatMap(EventStore.EventStore, (store) =>
          Effect.map(store.readPage("Customer-t-1"), (events) => events.map((e) => (e.payload as any).name))).pipe(Effect.provide(ctx))
      yield* Effect.flatMap(EventStore.EventStore, (store) =>
        Effect.zipRight(
          store.append("Customer-c-1", [encoded]),
          store.append("Customer-t-1", [encoded], { metadata: { tenantId: "acme" } })
        )).pipe(Effect.provide(a))
      expect(yield* readName(b)).toEqual(["Ada"])
      expect(yield* readTenant(b)).toEqual(["Ada"])
      yield* Effect.flatMap(Privacy.Privacy, (p) => p.forget("c-1")).pipe(Effect.provide(a))
      yield* Effect.sleep("100 millis")
      expect(yield* readName(b)).toEqual(["(forgotten)"])
      expect(yield* readTenant(b)).toEqual(["(forgotten)"])
    }))

  it.scopedLive("another process's forget drops the states its handlers cached (they decide without reading)", () =>
    Effect.gen(function*() {
      const filename = dbFile("twocache")
      const app = () =>
        Aggregate.layer(Customer, { snapshotWrites: "inline" }).pipe(
          Layer.provideMerge(
            Privacy.layer({ registries: [CustomerEvents], kek, keyCacheTtl: "50 millis" }).pipe(
              Layer.provideMerge(KeyStore.layerSql()),
              Layer.provideMerge(Sqlite.layer({ filename, pollInterval: "20 millis" }))
            )
          )
        )
      const a = yield* Layer.build(app())
      const b = yield* Layer.build(app())
      yield* Customer.handle("c-1", { _tag: "Register", customerId: "c-1", name: "Ada", card: "1234" }).pipe(Effect.provide(b))
      const before = yield* Customer.load("c-1").pipe(Effect.provide(b))
      expect(before).toMatchObject({ source: "cache", state: { name: "Ada" } })
      yield* Effect.flatMap(Privacy.Privacy, (p) => p.forget("c-1")).pipe(Effect.provide(a))
      yield* Effect.sleep("200 millis")
      const after = yield* Customer.load("c-1").pipe(Effect.provide(b))
      expect(after.state.name).toBe("(forgotten)")
    }))
})

describe("Privacy and parked events", () => {
  it.live("forget replaces the failure text of the subject's parked events (it may quote their data)", () =>
    Effect.gen(function*() {
      class Refused extends Schema.TaggedError<Refused>()("Refused", { reason: Schema.String }) {}
      const Picky = Projection.make<Event.Registry.Type<typeof CustomerEvents>, Refused>({
        name: "picky",
        events: CustomerEvents,
        handlers: {
          CustomerRegistered: (e) => Effect.fail(new Refused({ reason: `no customers named ${e.payload.name}` }))
        }
      })
      const base = Privacy.layer({ registries: [CustomerEvents], kek }).pipe(
        Layer.provideMerge(Layer.mergeAll(EventStore.layerMemory, KeyStore.layerMemory, Projection.layerMemory))
      )
      const layer = Projection.layer([Picky], { retry: Schedule.recurs(0) }).pipe(Layer.provideMerge(base))
      yield* Effect.gen(function*() {
        const store = yield* EventStore.EventStore
        const privacy = yield* Privacy.Privacy
        const projections = yield* Projection.Projections
        const encoded = Either.getOrThrow(
          CustomerEvents.encode(CustomerRegistered.make({ customerId: "c-1", name: "Ada Lovelace", card: "1234", plan: "gold" }))
        )
        yield* store.append("Customer-c-1", [encoded])
        yield* Effect.repeat(projections.status("picky"), {
          until: (s) => s.state === "failed",
          schedule: Schedule.spaced("10 millis")
        })
        const parked = yield* projections.park("picky")
        expect(parked.reason).toContain("Ada Lovelace")
        const report = yield* privacy.forget("c-1")
        expect(report.parkedRedacted).toBe(1)
        const [after] = yield* projections.parked("picky")
        expect(after!.reason).not.toContain("Ada Lovelace")
        const check = yield* privacy.verifyForgotten("c-1", { values: ["Ada Lovelace"], projections: ["picky"] })
        expect(check.findings).toEqual([])
      }).pipe(Effect.provide(layer))
    }))
})

describe("Privacy: a forgotten tenant and projections", () => {
  it.live("a projection passes a forgotten tenant's events (they end the log) and reaches the head", () =>
    Effect.gen(function*() {
      let seen = 0
      const Counting = Projection.make({
        name: "counting",
        events: CustomerEvents,
        handlers: { CustomerRegistered: () => Effect.sync(() => void seen++) }
      })
      const base = Privacy.layer({ registries: [CustomerEvents], kek, tenants: true }).pipe(
        Layer.provideMerge(Layer.mergeAll(EventStore.layerMemory, KeyStore.layerMemory, Projection.layerMemory))
      )
      yield* Effect.gen(function*() {
        const store = yield* EventStore.EventStore
        const privacy = yield* Privacy.Privacy
        const encoded = Either.getOrThrow(
          CustomerEvents.encode(CustomerRegistered.make({ customerId: "c-1", name: "Ada", card: "1234", plan: "p" }))
        )
        yield* store.append("Customer-c-0", [encoded])
        yield* store.append("Customer-c-1", [encoded], { metadata: { tenantId: "acme" } })
        yield* store.append("Customer-c-2", [encoded], { metadata: { tenantId: "acme" } })
        yield* privacy.forgetTenant("acme")
        const head = yield* store.head
        yield* Effect.flatMap(Projection.Projections, (projections) =>
          Effect.zipRight(
            projections.awaitPosition("counting", head, "5 seconds"),
            Effect.map(projections.status("counting"), (status) => expect(status).toMatchObject({ checkpoint: head, lag: 0 }))
          )).pipe(Effect.provide(Projection.layer([Counting])))
        expect(seen).toBe(1)
      }).pipe(Effect.provide(base))
    }))
})

describe("Privacy with tenants' stores", () => {
  it.scopedLive("a tenant's store over the decorated store encrypts with the tenant's key and the subjects' keys", () =>
    Effect.gen(function*() {
      const filename = dbFile("tenancy")
      const layer = Privacy.layer({ registries: [CustomerEvents], kek, tenants: true }).pipe(
        Layer.provideMerge(KeyStore.layerSql()),
        Layer.provideMerge(Sqlite.layer({ filename }))
      )
      yield* Effect.gen(function*() {
        const store = yield* EventStore.EventStore
        const privacy = yield* Privacy.Privacy
        const acme = yield* Tenancy.eventStore(store, "acme")
        const encoded = Either.getOrThrow(
          CustomerEvents.encode(CustomerRegistered.make({ customerId: "c-1", name: "Ada", card: "1234", plan: "gold" }))
        )
        yield* acme.append("Customer-c-1", [encoded])
        const [read] = yield* acme.readPage("Customer-c-1")
        expect(read!.payload).toMatchObject({ name: "Ada", plan: "gold" })
        const forgotten = yield* privacy.forget("c-1")
        expect(forgotten.streams.length).toBe(1)
        const [after] = yield* acme.readPage("Customer-c-1")
        expect(after!.payload).toMatchObject({ name: "(forgotten)", card: "…1234", plan: "gold" })
      }).pipe(Effect.provide(layer))
      const stored = yield* storedPayloads(filename)
      // the tenant's event, and the tombstone in the whole database's log and in the tenant's (for its projections)
      expect(stored.map((e) => [e.type, e.metadata.tenantId])).toEqual([
        ["CustomerRegistered", "acme"],
        ["SubjectForgotten", undefined],
        ["SubjectForgotten", "acme"]
      ])
      expect(JSON.stringify(stored[0]!.payload)).not.toContain("gold")
    }))
})

describe("Privacy and the bus", () => {
  it.scopedLive("the forwarder publishes events as stored (encrypted); a consumer with Privacy reads them, replacements after forget", () =>
    Effect.gen(function*() {
      const seen: Array<string> = []
      const published: Array<unknown> = []
      const layer = Layer.mergeAll(
        Bus.layerForwarder({ name: "fwd" })
      ).pipe(
        Layer.provideMerge(Privacy.layer({ registries: [CustomerEvents], kek }).pipe(
          Layer.provide(Layer.merge(EventStore.layerMemory, KeyStore.layerMemory))
        )),
        Layer.provideMerge(Projection.layerMemory),
        Layer.provideMerge(Bus.layerMemory)
      )
      yield* Effect.gen(function*() {
        const store = yield* EventStore.EventStore
        const bus = yield* Bus.EventBus
        const privacy = yield* Privacy.Privacy
        yield* bus.consume({ name: "names" }, (envelope, delivery) =>
          Effect.zipRight(
            Effect.sync(() => published.push(envelope.payload)),
            Bus.handlers(CustomerEvents, {
              CustomerRegistered: (e) => Effect.sync(() => seen.push(e.payload.name))
            })(envelope, delivery)
          ))
        const encoded = Either.getOrThrow(
          CustomerEvents.encode(CustomerRegistered.make({ customerId: "c-1", name: "Ada", card: "1234", plan: "gold" }))
        )
        yield* store.append("Customer-c-1", [encoded])
        yield* Effect.repeat(Effect.sync(() => seen.length), { until: (n) => n >= 1 })
        expect(seen).toEqual(["Ada"])
        expect(JSON.stringify(published)).not.toContain("Ada")
        yield* privacy.forget("c-1")
        yield* store.append("Customer-c-1", [encoded])
        yield* Effect.repeat(Effect.sync(() => seen.length), { until: (n) => n >= 2 })
        // the second event was appended after the forget: a new key, readable
        expect(seen).toEqual(["Ada", "Ada"])
        const replayed: Array<string> = []
        yield* bus.replay().pipe(
          Stream.filter(([, envelope]) => envelope.type === "CustomerRegistered"),
          Stream.runForEach(([, envelope]) =>
            Effect.flatMap(privacy.decrypt(envelope), (opened) =>
              Effect.sync(() => replayed.push((Either.getOrThrowWith(CustomerEvents.decodePayload(opened), (e) => new Error(`${e.message} ${JSON.stringify(opened)}`)) as any).name))))
        )
        expect(replayed).toEqual(["(forgotten)", "Ada"])
      }).pipe(Effect.provide(layer))
    }), 20_000)
})
