/**
 * Schema evolution of events: versions with upcasters, renames (chains included) and both together, every gap a
 * typed `EventDecodeError`, definition errors thrown when the registry is built, and old names selected by store
 * filters and routed to projections' handlers (memory, and the SQLite roads: statement batches on the store's own
 * database, inline projections) and folds (memory, and SQLite's lean fold).
 */
import { describe, expect, it } from "@effect/vitest"
import * as SqlClient from "@effect/sql/SqlClient"
import { Aggregate, Event, EventStore, Projection } from "effect-eventstore"
import * as Sqlite from "effect-eventstore/Sqlite"
import * as SqlProjection from "effect-eventstore/SqlProjection"
import * as Cause from "effect/Cause"
import * as DateTime from "effect/DateTime"
import * as Effect from "effect/Effect"
import * as Either from "effect/Either"
import * as Exit from "effect/Exit"
import * as Layer from "effect/Layer"
import * as Option from "effect/Option"
import * as Schema from "effect/Schema"
import * as Stream from "effect/Stream"
import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"
import { fastDecoderOf } from "../src/Event.js"

// The history of AccountOpened: stored as "AccountCreated" { owner } (v1), renamed "AccountRegistered" (still v1),
// then v2 { holder }, then renamed "AccountOpened" with v3 { holder, currency }.
const AccountOpened = Schema.TaggedStruct("AccountOpened", { holder: Schema.String, currency: Schema.String })
const Deposited = Schema.TaggedStruct("Deposited", { amount: Schema.Int })

const upcasts: Array<number> = []
const upcast = (payload: unknown, from: number): unknown => {
  upcasts.push(from)
  let p = payload as Record<string, unknown>
  if (from === 1) p = { holder: p.owner }
  else if (from !== 2) throw new Error(`no upcaster from version ${from}`)
  return { ...p, currency: "EUR" }
}

const renames = { AccountCreated: "AccountRegistered", AccountRegistered: "AccountOpened" }
const Events = Event.registry([Event.versioned(AccountOpened, 3, upcast), Deposited], { renames })

const stored = (type: string, payload: unknown, schemaVersion: number): Event.RecordedEvent => ({
  eventId: "e",
  streamId: "S-1",
  streamType: "S",
  version: 3,
  position: 42,
  type,
  schemaVersion,
  payload,
  metadata: {},
  recordedAt: DateTime.unsafeMake(0)
})

const decoded = (event: Event.RecordedEvent) => {
  upcasts.length = 0
  return Either.getOrThrow(Events.decode(event))
}

describe("renames", () => {
  it("an event stored under an old name decodes as the current type, type and _tag", () => {
    const event = stored("AccountRegistered", { holder: "Ada", currency: "CHF" }, 3)
    const result = decoded(event)
    expect(result).toEqual({ ...event, type: "AccountOpened", payload: { _tag: "AccountOpened", holder: "Ada", currency: "CHF" } })
    expect(upcasts).toEqual([]) // stored at the current version: nothing to upcast
    expect(Either.getOrThrow(Events.decodePayload(event))).toEqual({ _tag: "AccountOpened", holder: "Ada", currency: "CHF" })
    // the current name decodes as before, the envelope untouched
    expect(decoded(stored("AccountOpened", { holder: "Ada", currency: "CHF" }, 3)).type).toBe("AccountOpened")
  })

  it("chains: events stored under the first and the second old name both decode as the third", () => {
    expect(decoded(stored("AccountCreated", { holder: "Ada", currency: "USD" }, 3)).payload)
      .toEqual({ _tag: "AccountOpened", holder: "Ada", currency: "USD" })
    expect(decoded(stored("AccountRegistered", { holder: "Ada", currency: "USD" }, 3)).payload)
      .toEqual({ _tag: "AccountOpened", holder: "Ada", currency: "USD" })
    // the order the renames are listed in does not matter
    const reversed = Event.registry([AccountOpened], {
      renames: { AccountRegistered: "AccountOpened", AccountCreated: "AccountRegistered" }
    })
    const a = Either.getOrThrow(reversed.decode(stored("AccountCreated", { holder: "Ada", currency: "USD" }, 1)))
    expect([a.type, a.payload]).toEqual(["AccountOpened", { _tag: "AccountOpened", holder: "Ada", currency: "USD" }])
  })

  it("rename and version together: an old name's payload at version n goes through the current upcaster from n", () => {
    const fromCreated = decoded(stored("AccountCreated", { owner: "Ada" }, 1))
    expect(upcasts).toEqual([1])
    expect(fromCreated).toMatchObject({
      type: "AccountOpened",
      schemaVersion: 1, // the version that wrote the payload, as stored
      payload: { _tag: "AccountOpened", holder: "Ada", currency: "EUR" }
    })
    expect(decoded(stored("AccountRegistered", { owner: "Bo" }, 1)).payload)
      .toEqual({ _tag: "AccountOpened", holder: "Bo", currency: "EUR" })
    expect(upcasts).toEqual([1])
    expect(decoded(stored("AccountRegistered", { holder: "Cy" }, 2)).payload)
      .toEqual({ _tag: "AccountOpened", holder: "Cy", currency: "EUR" })
    expect(upcasts).toEqual([2])
  })

  it("the compiled decoder a fold uses serves an old name at the current version (and nothing to upcast)", () => {
    const fast = fastDecoderOf(Events, "AccountCreated", 3)
    expect(fast?.({ holder: "Ada", currency: "EUR" })).toEqual({ _tag: "AccountOpened", holder: "Ada", currency: "EUR" })
    expect(fastDecoderOf(Events, "AccountCreated", 1)).toBeUndefined()
  })

  it("encode writes the current name and version", () => {
    expect(Either.getOrThrow(Events.encode(AccountOpened.make({ holder: "Ada", currency: "EUR" })))).toEqual({
      type: "AccountOpened",
      payload: { holder: "Ada", currency: "EUR" },
      schemaVersion: 3
    })
  })

  it("decodeStream hands old-name events on under the current name", () =>
    Effect.gen(function*() {
      const events = yield* Stream.runCollect(
        Stream.make(stored("AccountCreated", { owner: "Ada" }, 1), stored("Deposited", { amount: 5 }, 1)).pipe(
          Event.decodeStream(Events)
        )
      )
      expect([...events].map((e) => [e.type, e.payload._tag])).toEqual([
        ["AccountOpened", "AccountOpened"],
        ["Deposited", "Deposited"]
      ])
    }).pipe(Effect.runPromise))
})

describe("gaps are EventDecodeErrors, never defects", () => {
  const cases: ReadonlyArray<readonly [string, Event.RecordedEvent, string]> = [
    ["above the current version", stored("AccountOpened", { holder: "A", currency: "EUR" }, 4), "registry has 3"],
    ["above the current version, under an old name", stored("AccountCreated", { owner: "A" }, 4), "registry has 3 (of AccountOpened"],
    ["an older version of a type without an upcaster", stored("Deposited", { amount: 1 }, 0), "no upcaster"],
    ["a newer version of a type without an upcaster", stored("Deposited", { amount: 1 }, 2), "registry has 1"],
    ["a version the upcaster has no answer for", stored("AccountCreated", { owner: "A" }, 0), "no upcaster from version 0"],
    ["an upcast that does not decode", stored("AccountRegistered", { name: "A" }, 1), "holder"],
    ["an upcaster thrown at by a bad payload", stored("AccountCreated", null, 1), "upcaster failed"],
    ["an old name's payload that does not decode", stored("AccountRegistered", { holder: 1, currency: "EUR" }, 3), "holder"]
  ]
  for (const [label, event, reason] of cases) {
    it(label, () =>
      Effect.gen(function*() {
        const result = Events.decode(event)
        expect(Either.isLeft(result)).toBe(true)
        const error = Either.isLeft(result) ? result.left : undefined
        expect(error).toMatchObject({ _tag: "EventDecodeError", streamId: "S-1", version: 3, position: 42, type: event.type })
        expect(error?.reason).toContain(reason)
        // through a stream: a typed failure, not a defect
        const exit = yield* Effect.exit(Stream.runCollect(Stream.make(event).pipe(Event.decodeStream(Events))))
        expect(Exit.isFailure(exit) && Cause.isDie(exit.cause)).toBe(false)
        expect(Exit.isFailure(exit) ? Option.getOrUndefined(Cause.failureOption(exit.cause)) : undefined)
          .toMatchObject({ _tag: "EventDecodeError", type: event.type })
      }).pipe(Effect.runPromise))
  }
})

describe("definitions that cannot work throw a TypeError when the registry is built", () => {
  const bad: ReadonlyArray<readonly [string, () => unknown, RegExp]> = [
    ["a rename to an unknown type", () => Event.registry([AccountOpened], { renames: { Old: "Nope" } }), /Old is renamed to Nope/],
    ["a chain ending at an unknown type", () =>
      Event.registry([AccountOpened], { renames: { A: "B", B: "AccountOpenedd" } }), /B is renamed to AccountOpenedd/],
    ["a cycle", () => Event.registry([AccountOpened], { renames: { A: "B", B: "A" } }), /cycle A → B → A/],
    ["a rename to itself", () => Event.registry([AccountOpened], { renames: { A: "A" } }), /cycle A → A/],
    ["a cycle behind a chain", () => Event.registry([AccountOpened], { renames: { A: "B", B: "C", C: "B" } }), /cycle/],
    ["an old name that is a current type", () =>
      Event.registry([AccountOpened, Deposited], { renames: { Deposited: "AccountOpened" } }), /Deposited is a current event type/],
    ["a rename to a non-string", () => Event.registry([AccountOpened], { renames: { A: 1 as any } }), /A must be renamed/],
    ["a version of 0", () => Event.registry([Event.versioned(AccountOpened, 0, upcast)]), /whole number from 1, not 0/],
    ["a fractional version", () => Event.registry([Event.versioned(AccountOpened, 1.5, upcast)]), /not 1.5/],
    ["a duplicate type", () => Event.registry([AccountOpened, AccountOpened]), /defined twice/]
  ]
  for (const [label, build, message] of bad) {
    it(label, () => {
      expect(build).toThrow(TypeError)
      expect(build).toThrow(message)
    })
  }

  it("the same shapes without the mistake build", () => {
    expect(() => Event.registry([AccountOpened], { renames: { A: "B", B: "AccountOpened" } })).not.toThrow()
    expect(() => Event.registry([AccountOpened, Deposited], { renames: { Paid: "Deposited", A: "AccountOpened" } })).not
      .toThrow()
    expect(() => Event.registry([Event.versioned(AccountOpened, 1, upcast)])).not.toThrow()
  })
})

describe("stored names", () => {
  it("lists a type's current name, then its old names; an old name counts as its type", () => {
    expect(Events.storedNames("AccountOpened")).toEqual(["AccountOpened", "AccountCreated", "AccountRegistered"])
    expect(Events.storedNames("Deposited")).toEqual(["Deposited"])
    expect(Events.storedNames(["Deposited", "AccountOpened", "Deposited"]))
      .toEqual(["Deposited", "AccountOpened", "AccountCreated", "AccountRegistered"])
    expect(Events.storedNames("AccountCreated" as any)).toEqual(["AccountOpened", "AccountCreated", "AccountRegistered"])
    expect(Events.storedNames("Unknown" as any)).toEqual(["Unknown"])
    expect(Events.storedNames([])).toEqual([])
  })

  it.effect("a store filter built from them selects the events stored under old names too", () =>
    Effect.gen(function*() {
      const store = yield* EventStore.EventStore
      yield* store.append("Account-1", [
        { type: "AccountCreated", payload: { owner: "Ada" } },
        { type: "Deposited", payload: { amount: 1 } },
        { type: "AccountRegistered", payload: { holder: "Bo" }, schemaVersion: 2 },
        { type: "Other", payload: {} },
        { type: "AccountOpened", payload: { holder: "Cy", currency: "CHF" }, schemaVersion: 3 }
      ])
      const opened = yield* Stream.runCollect(
        store.readAll({ filter: { eventTypes: Events.storedNames("AccountOpened") } }).pipe(Event.decodeStream(Events))
      )
      expect([...opened].map((e) => [e.position, e.type, e.payload])).toEqual([
        [1, "AccountOpened", { _tag: "AccountOpened", holder: "Ada", currency: "EUR" }],
        [3, "AccountOpened", { _tag: "AccountOpened", holder: "Bo", currency: "EUR" }],
        [5, "AccountOpened", { _tag: "AccountOpened", holder: "Cy", currency: "CHF" }]
      ])
      // the current name alone misses them
      expect(yield* Stream.runCount(store.readAll({ filter: { eventTypes: ["AccountOpened"] } }))).toBe(1)
    }).pipe(Effect.provide(EventStore.layerMemory)))
})

// --- folds and projections -------------------------------------------------------------------------------------

const history = [
  { type: "AccountCreated", payload: { owner: "Ada" } },
  { type: "Deposited", payload: { amount: 5 } },
  { type: "AccountRegistered", payload: { holder: "Bo" }, schemaVersion: 2 },
  { type: "Other", payload: { x: 1 } },
  { type: "AccountRegistered", payload: { holder: "Cy", currency: "CHF" }, schemaVersion: 3 },
  { type: "AccountOpened", payload: { holder: "Di", currency: "USD" }, schemaVersion: 3 }
]
const expectedOpened = [
  [1, "AccountOpened", "Ada", "EUR"],
  [3, "AccountOpened", "Bo", "EUR"],
  [5, "AccountOpened", "Cy", "CHF"],
  [6, "AccountOpened", "Di", "USD"]
]

const dir = fs.mkdtempSync(path.join(os.tmpdir(), "effect-eventstore-upcasting-"))
const dbFile = (name: string) => path.join(dir, `${name}-${crypto.randomUUID().slice(0, 8)}.db`)

describe("folds", () => {
  const Holders = Aggregate.make({
    name: "Holders",
    events: Events,
    decider: {
      initialState: [] as ReadonlyArray<string>,
      decide: () => [],
      evolve: (state: ReadonlyArray<string>, event: Event.Registry.Type<typeof Events>) =>
        event._tag === "AccountOpened" ? [...state, `${event.holder}/${event.currency}`] : [...state, `+${event.amount}`]
    }
  })
  const folded = ["Ada/EUR", "+5", "Bo/EUR", "Cy/CHF", "Di/USD"]
  const foldHistory = history.filter((e) => e.type !== "Other")
  const loadAfterAppend = Effect.gen(function*() {
    const store = yield* EventStore.EventStore
    yield* store.append("Holders-1", foldHistory)
    return yield* Holders.load("1")
  })

  it.effect("an aggregate folds events stored under old names (memory)", () =>
    Effect.map(loadAfterAppend, (loaded) => expect(loaded).toMatchObject({ version: 5, state: folded })).pipe(
      Effect.provide(Aggregate.layer(Holders).pipe(Layer.provideMerge(EventStore.layerMemory)))
    ))

  it.live("an aggregate folds events stored under old names (SQLite file: the lean fold)", () =>
    Effect.map(loadAfterAppend, (loaded) => expect(loaded).toMatchObject({ version: 5, state: folded })).pipe(
      Effect.provide(Aggregate.layer(Holders).pipe(Layer.provideMerge(Sqlite.layer({ filename: dbFile("fold") }))))
    ))
})

describe("projections route events stored under old names to the current type's handler", () => {
  const seen: Array<ReadonlyArray<unknown>> = []
  const Recorder = Projection.make({
    name: "holders",
    events: Events,
    handlers: {
      AccountOpened: (e) =>
        Effect.sync(() => void seen.push([e.position, e.type, e.payload.holder, e.payload.currency]))
    }
  })

  it.live("Projection.make, on the memory store", () =>
    Effect.gen(function*() {
      seen.length = 0
      const store = yield* EventStore.EventStore
      yield* store.append("Account-1", history)
      yield* (yield* Projection.Projections).awaitPosition("holders", yield* store.head, "5 seconds")
      expect(seen).toEqual(expectedOpened)
    }).pipe(
      Effect.provide(
        Projection.layer([Recorder]).pipe(Layer.provideMerge(Layer.merge(EventStore.layerMemory, Projection.layerMemory)))
      )
    ))

  // handlers are looked up by the stored type in a null-prototype table
  const prototypeNames = [
    { type: "constructor", payload: {} },
    { type: "toString", payload: {} },
    { type: "AccountCreated", payload: { owner: "Ada" } }
  ]

  it.live("a stored type named like an Object.prototype member finds no handler (Projection.make)", () =>
    Effect.gen(function*() {
      seen.length = 0
      const store = yield* EventStore.EventStore
      yield* store.append("Account-1", prototypeNames)
      yield* (yield* Projection.Projections).awaitPosition("holders", 3, "5 seconds")
      expect(seen).toEqual([[3, "AccountOpened", "Ada", "EUR"]])
    }).pipe(
      Effect.provide(
        Projection.layer([Recorder]).pipe(Layer.provideMerge(Layer.merge(EventStore.layerMemory, Projection.layerMemory)))
      )
    ))

  it.live("an old-name event that does not decode stops the projection, named as stored", () =>
    Effect.gen(function*() {
      const store = yield* EventStore.EventStore
      yield* store.append("Account-1", [{ type: "AccountCreated", payload: { owner: "Ada" }, schemaVersion: 9 }])
      const failed = yield* Effect.flip((yield* Projection.Projections).awaitPosition("holders", 1, "5 seconds"))
      expect(failed).toMatchObject({ _tag: "ProjectionFailed", position: 1, eventType: "AccountCreated" })
      expect((failed as Projection.ProjectionFailed).reason).toContain("stored schema version 9")
    }).pipe(
      Effect.provide(
        Projection.layer([Recorder]).pipe(Layer.provideMerge(Layer.merge(EventStore.layerMemory, Projection.layerMemory)))
      )
    ))

  const Table = Projection.sql({
    name: "holders-sql",
    events: Events,
    init: [Effect.flatMap(SqlClient.SqlClient, (sql) =>
      sql`CREATE TABLE holders (position INTEGER PRIMARY KEY, type TEXT, holder TEXT, currency TEXT)`)],
    handlers: {
      AccountOpened: (e, sql) =>
        sql`INSERT INTO holders VALUES (${e.position}, ${e.type}, ${e.payload.holder}, ${e.payload.currency})`
    }
  })
  const rows = Effect.flatMap(SqlClient.SqlClient, (sql) =>
    Effect.map(
      sql<{ position: number; type: string; holder: string; currency: string }>`SELECT * FROM holders ORDER BY position`,
      (rows) => rows.map((r) => [r.position, r.type, r.holder, r.currency])
    ))
  const base = (filename: string) => SqlProjection.layer.pipe(Layer.provideMerge(Sqlite.layer({ filename })))

  it.live("Projection.sql on the store's own SQLite database (the synchronous road)", () =>
    Effect.gen(function*() {
      const store = yield* EventStore.EventStore
      yield* store.append("Account-1", history)
      yield* (yield* Projection.Projections).awaitPosition("holders-sql", yield* store.head, "5 seconds")
      expect(yield* rows).toEqual(expectedOpened)
    }).pipe(Effect.provide(Projection.layer([Table]).pipe(Layer.provideMerge(base(dbFile("sync")))))))

  it.live("a stored type named like an Object.prototype member finds no handler (Projection.sql, both roads)", () =>
    Effect.gen(function*() {
      const filename = dbFile("prototype")
      // the statement road: the checkpoint store on another database than the store's
      const other = Layer.mergeAll(
        EventStore.layerMemory,
        SqlProjection.layer.pipe(Layer.provideMerge(Sqlite.layerClient({ filename: ":memory:" })))
      )
      yield* Effect.gen(function*() {
        const store = yield* EventStore.EventStore
        yield* store.append("Account-1", prototypeNames)
        yield* (yield* Projection.Projections).awaitPosition("holders-sql", 3, "5 seconds")
        expect(yield* rows).toEqual([[3, "AccountOpened", "Ada", "EUR"]])
      }).pipe(Effect.provide(Projection.layer([Table]).pipe(Layer.provideMerge(other))))
      // the synchronous road, on the store's own database
      yield* Effect.gen(function*() {
        const store = yield* EventStore.EventStore
        yield* store.append("Account-1", prototypeNames)
        yield* (yield* Projection.Projections).awaitPosition("holders-sql", 3, "5 seconds")
        expect(yield* rows).toEqual([[3, "AccountOpened", "Ada", "EUR"]])
      }).pipe(Effect.provide(Projection.layer([Table]).pipe(Layer.provideMerge(base(filename)))))
    }))

  it.live("Projection.sql inline, in the append's transaction", () =>
    Effect.gen(function*() {
      const store = yield* EventStore.EventStore
      yield* store.append("Account-1", history)
      expect(yield* rows).toEqual(expectedOpened)
    }).pipe(Effect.provide(Projection.layerInline([Table]).pipe(Layer.provideMerge(base(dbFile("inline")))))))
})
