/**
 * The command path on SQLite's writer connection: a command without a cache or snapshots runs as one transaction
 * (read, fold, decide, append, commit), and every way out of it must leave the store as the usual road would: the
 * events and their order, typed errors, defects, wake-ups, metrics, and nothing half-written.
 */
import { describe, expect, it } from "@effect/vitest"
import Database from "better-sqlite3"
import { Aggregate, Event, EventStore, Telemetry } from "effect-eventstore"
import * as Sqlite from "effect-eventstore/Sqlite"
import * as Cause from "effect/Cause"
import * as Context from "effect/Context"
import * as Effect from "effect/Effect"
import * as Either from "effect/Either"
import * as Exit from "effect/Exit"
import * as Fiber from "effect/Fiber"
import * as Layer from "effect/Layer"
import * as Schema from "effect/Schema"
import * as Stream from "effect/Stream"
import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"

const dir = fs.mkdtempSync(path.join(os.tmpdir(), "effect-eventstore-command-"))
const dbFile = (name: string) => path.join(dir, `${name}-${crypto.randomUUID().slice(0, 8)}.db`)

const Added = Schema.TaggedStruct("Added", { n: Schema.Int })
class Refused extends Schema.TaggedError<Refused>()("Refused", { total: Schema.Number }) {}
class Checker extends Context.Tag("test/Checker")<Checker, { readonly allow: (n: number) => Effect.Effect<boolean> }>() {}

type Command =
  | { readonly _tag: "Add"; readonly n: number }
  | { readonly _tag: "AddChecked"; readonly n: number }
  | { readonly _tag: "Nothing" }
  | { readonly _tag: "Refuse" }
  | { readonly _tag: "Throw" }
  | { readonly _tag: "Bad" }

const Tally = Aggregate.make({
  name: "Tally",
  events: Event.registry([Added]),
  decider: {
    initialState: 0,
    decide: (command: Command, total: number) => {
      switch (command._tag) {
        case "Add":
          return [Added.make({ n: command.n })]
        case "AddChecked":
          return Effect.flatMap(Checker, (checker) =>
            Effect.map(checker.allow(command.n), (ok) => ok ? [Added.make({ n: command.n })] : []))
        case "Nothing":
          return []
        case "Refuse":
          return Either.left(new Refused({ total }))
        case "Throw":
          throw new Error("decider bug")
        case "Bad":
          return [{ _tag: "Added", n: 1.5 } as typeof Added.Type]
      }
    },
    evolve: (total: number, event: typeof Added.Type) => total + event.n
  }
})

const layerFor = (filename: string) =>
  Aggregate.layer(Tally).pipe(
    Layer.provideMerge(Sqlite.layer({ filename, pollInterval: "1 hour" }) as Layer.Layer<EventStore.EventStore>),
    Layer.provideMerge(Layer.succeed(Checker, { allow: (n) => Effect.succeed(n > 0) }))
  )

const versions = (id: string) =>
  Effect.flatMap(EventStore.EventStore, (store) =>
    Effect.map(store.readPage(`Tally-${id}`), (page) => page.map((e) => [e.version, e.payload])))

describe("the command path on SQLite", () => {
  it.live("every decision kind: events, nothing, a domain error, an Effect decision, invalid events", () =>
    Effect.gen(function*() {
      const commits = Telemetry.commits.unsafeValue([]).count
      expect(yield* Tally.handle("a", { _tag: "Add", n: 2 })).toMatchObject({ state: 2, version: 1, retries: 0 })
      expect((yield* Tally.handle("a", { _tag: "Add", n: 3 })).events.map((e) => [e.version, e.payload]))
        .toEqual([[2, { _tag: "Added", n: 3 }]])
      expect(yield* Tally.handle("a", { _tag: "Nothing" })).toMatchObject({ state: 5, version: 2, events: [] })
      expect(yield* Effect.flip(Tally.handle("a", { _tag: "Refuse" }))).toMatchObject({ _tag: "Refused", total: 5 })
      // a decision that is an Effect (it needs a service) is run after the read, then appended
      expect(yield* Tally.handle("a", { _tag: "AddChecked", n: 4 })).toMatchObject({ state: 9, version: 3 })
      expect(yield* Tally.handle("a", { _tag: "AddChecked", n: -4 })).toMatchObject({ state: 9, version: 3, events: [] })
      expect(yield* Effect.flip(Tally.handle("a", { _tag: "Bad" }))).toMatchObject({ _tag: "InvalidInput" })
      expect(yield* versions("a")).toEqual([[1, { n: 2 }], [2, { n: 3 }], [3, { n: 4 }]])
      // three commits: one per appended command
      expect(Telemetry.commits.unsafeValue([]).count - commits).toBeGreaterThanOrEqual(3)
    }).pipe(Effect.provide(layerFor(dbFile("kinds")))))

  it.live("a decider that throws is a defect; nothing is written and the store goes on", () =>
    Effect.gen(function*() {
      yield* Tally.handle("t", { _tag: "Add", n: 1 })
      const exit = yield* Effect.exit(Tally.handle("t", { _tag: "Throw" }))
      expect(Exit.isFailure(exit) && Cause.isDie(exit.cause)).toBe(true)
      // the transaction was rolled back: the next command and a plain append both work
      expect(yield* Tally.handle("t", { _tag: "Add", n: 1 })).toMatchObject({ state: 2, version: 2 })
      const store = yield* EventStore.EventStore
      yield* store.append("Tally-t", [{ type: "Added", payload: { n: 10 } }], { expectedVersion: 2 })
      expect(yield* Tally.load("t")).toMatchObject({ state: 12, version: 3 })
    }).pipe(Effect.provide(layerFor(dbFile("throw")))))

  it.live("a command wakes subscribers at once (an hour-long poll interval)", () =>
    Effect.gen(function*() {
      const store = yield* EventStore.EventStore
      const seen = yield* Effect.fork(Stream.runCollect(Stream.take(store.subscribe({ fromPosition: "end" }), 2)))
      yield* Effect.sleep("50 millis")
      yield* Tally.handle("w", { _tag: "Add", n: 1 })
      yield* Tally.handle("w", { _tag: "Add", n: 2 })
      const events = yield* Fiber.join(seen).pipe(Effect.timeout("5 seconds"))
      expect([...events].map((e) => e.version)).toEqual([1, 2])
    }).pipe(Effect.provide(layerFor(dbFile("wake")))))

  it.live("another connection holding the write lock: the command waits for it (asynchronously) and succeeds", () =>
    Effect.gen(function*() {
      const filename = dbFile("locked")
      return yield* Effect.gen(function*() {
        yield* Tally.handle("l", { _tag: "Add", n: 1 })
        const other = new Database(filename)
        other.exec("BEGIN IMMEDIATE")
        // released by a timer: it only fires if the command does not block the thread while it waits
        setTimeout(() => other.exec("COMMIT"), 100)
        const started = performance.now()
        expect(yield* Tally.handle("l", { _tag: "Add", n: 2 })).toMatchObject({ state: 3, version: 2 })
        expect(performance.now() - started).toBeGreaterThanOrEqual(90)
        other.close()
      }).pipe(Effect.provide(layerFor(filename)))
    }))

  it.live("a corrupt row fails the command naming it, and nothing is appended", () =>
    Effect.gen(function*() {
      const filename = dbFile("corrupt")
      return yield* Effect.gen(function*() {
        yield* Tally.handle("c", { _tag: "Add", n: 1 })
        const written = yield* Tally.handle("c", { _tag: "Add", n: 2 })
        const other = new Database(filename)
        other.prepare("UPDATE eventstore_events SET payload = '{not json' WHERE position = ?").run(written.position)
        other.close()
        expect(yield* Effect.flip(Tally.handle("c", { _tag: "Add", n: 3 })))
          .toMatchObject({ _tag: "EventDecodeError", streamId: "Tally-c", version: 2, position: written.position })
        const store = yield* EventStore.EventStore
        expect(yield* store.version("Tally-c")).toBe(2)
      }).pipe(Effect.provide(layerFor(filename)))
    }))

  it.live("events written with an older schema version are upcast on the way; a newer one is a decode error", () =>
    Effect.gen(function*() {
      const filename = dbFile("upcast")
      const Deposited = Schema.TaggedStruct("Deposited", { amount: Schema.Int, currency: Schema.String })
      const Ledger = Aggregate.make({
        name: "Ledger",
        events: Event.registry([
          Event.versioned(Deposited, 2, (payload) => ({ ...(payload as object), currency: "EUR" }))
        ]),
        decider: {
          initialState: [] as ReadonlyArray<string>,
          decide: (amount: number) => [Deposited.make({ amount, currency: "USD" })],
          evolve: (seen: ReadonlyArray<string>, e: typeof Deposited.Type) => [...seen, `${e.amount} ${e.currency}`]
        }
      })
      return yield* Effect.gen(function*() {
        const store = yield* EventStore.EventStore
        // written by version 1 of the schema: no currency
        yield* store.append("Ledger-u", [{ type: "Deposited", payload: { amount: 1 } }, { type: "Deposited", payload: { amount: 2 } }])
        expect(yield* Ledger.handle("u", 3)).toMatchObject({ state: ["1 EUR", "2 EUR", "3 USD"], version: 3 })
        expect((yield* Ledger.load("u")).state).toEqual(["1 EUR", "2 EUR", "3 USD"])
        // written by a newer version of the app: this one cannot read it
        const newer = yield* store.append(
          "Ledger-u",
          [{ type: "Deposited", payload: { amount: 4, currency: "CHF", rate: 1 }, schemaVersion: 3 }]
        )
        const named = { _tag: "EventDecodeError", streamId: "Ledger-u", version: 4, position: newer.position }
        expect(yield* Effect.flip(Ledger.load("u"))).toMatchObject(named)
        expect(yield* Effect.flip(Ledger.handle("u", 5))).toMatchObject(named)
        expect(yield* store.version("Ledger-u")).toBe(4)
      }).pipe(Effect.provide(Aggregate.layer(Ledger)), Effect.provide(Sqlite.layer({ filename })))
    }))
})
