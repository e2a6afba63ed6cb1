/**
 * Store guarantees, run by every backend against its layer: unique values claimed and released with events (checked
 * and recorded in the append's transaction), and idempotent appends by command id. Tests share one store per backend
 * and isolate themselves with unique stream types, index names and command ids.
 */
import { expect, layer } from "@effect/vitest"
import { Aggregate, Event, EventStore, Seed, Tenancy } from "effect-eventstore"
import * as Effect from "effect/Effect"
import * as Either from "effect/Either"
import * as FastCheck from "effect/FastCheck"
import type * as Layer from "effect/Layer"
import * as Option from "effect/Option"
import * as Schema from "effect/Schema"

const uid = () => crypto.randomUUID().replace(/-/g, "").slice(0, 12)
const streamOf = () => {
  const type = `G${uid()}`
  return (n: number | string = 1) => `${type}-${n}`
}
const ev = (extra: Partial<Event.NewEvent> = {}): Event.NewEvent => ({ type: "Happened", payload: { n: 1 }, ...extra })

const Store = EventStore.EventStore

// --- an aggregate with a unique value and a decision that depends on the state ---------------------------------------
const Registered = Schema.TaggedStruct("Registered", { email: Schema.String })
const Charged = Schema.TaggedStruct("Charged", { amount: Schema.Int })
class NoCredit extends Schema.TaggedError<NoCredit>()("NoCredit", { left: Schema.Int }) {}
type UserEvent = typeof Registered.Type | typeof Charged.Type
type UserCommand = { readonly _tag: "Register"; readonly email: string } | { readonly _tag: "Charge"; readonly amount: number }
const userAggregate = (name: string) =>
  Aggregate.make({
    name,
    events: Event.registry([Registered, Charged]),
    decider: {
      initialState: { email: "", credit: 0 },
      decide: (command: UserCommand, state: { email: string; credit: number }) =>
        command._tag === "Register"
          ? Either.right([Registered.make({ email: command.email })])
          : command.amount > state.credit
          ? Either.left(new NoCredit({ left: state.credit }))
          : Either.right([Charged.make({ amount: command.amount })]),
      evolve: (state: { email: string; credit: number }, event: UserEvent) =>
        event._tag === "Registered" ? { email: event.email, credit: 10 } : { ...state, credit: state.credit - event.amount }
    },
    claims: (event: UserEvent) =>
      event._tag === "Registered" ? { claims: [{ index: `${name}-email`, value: event.email }] } : undefined
  })

export const guaranteesSuite = (name: string, storeLayer: Layer.Layer<EventStore.EventStore, unknown>) =>
  layer(storeLayer, { excludeTestServices: true, timeout: "60 seconds" })(`store guarantees: ${name}`, (it) => {
    // --- unique values ---------------------------------------------------------------------------------------------
    it.effect("a value held by one stream fails another stream's whole append; its owner takes it again", () =>
      Effect.gen(function*() {
        const store = yield* Store
        const stream = streamOf()
        const index = `email-${uid()}`
        yield* store.append(stream("a"), [ev({ claims: [{ index, value: "ada@example.com" }] })])
        const error = yield* Effect.flip(
          store.append(stream("b"), [ev(), ev({ claims: [{ index, value: "ada@example.com" }] })])
        )
        expect(error).toMatchObject({
          _tag: "UniqueConstraintViolation",
          streamId: stream("b"),
          index,
          value: "ada@example.com",
          owner: stream("a")
        })
        expect(yield* store.version(stream("b"))).toBe(0)
        const again = yield* store.append(stream("a"), [ev({ claims: [{ index, value: "ada@example.com" }] })])
        expect(again.version).toBe(2)
        expect(yield* store.claimOwner(index, "ada@example.com")).toEqual(Option.some(stream("a")))
        expect(yield* store.claimOwner(index, "nobody@example.com")).toEqual(Option.none())
      }))

    it.effect("a released value is free for another stream; releasing a value not held is ClaimNotHeld", () =>
      Effect.gen(function*() {
        const store = yield* Store
        const stream = streamOf()
        const index = `name-${uid()}`
        yield* store.append(stream("a"), [ev({ claims: [{ index, value: "ada" }] })])
        const notHeld = yield* Effect.flip(store.append(stream("b"), [ev({ releases: [{ index, value: "ada" }] })]))
        expect(notHeld).toMatchObject({ _tag: "ClaimNotHeld", streamId: stream("b"), index, value: "ada", owner: stream("a") })
        const nobody = yield* Effect.flip(store.append(stream("b"), [ev({ releases: [{ index, value: "grace" }] })]))
        expect(nobody._tag).toBe("ClaimNotHeld")
        expect("owner" in nobody && nobody.owner).toBe(false)
        expect(yield* store.version(stream("b"))).toBe(0)
        yield* store.append(stream("a"), [ev({ releases: [{ index, value: "ada" }] })])
        expect(yield* store.claimOwner(index, "ada")).toEqual(Option.none())
        yield* store.append(stream("b"), [ev({ claims: [{ index, value: "ada" }] })])
        expect(yield* store.claimOwner(index, "ada")).toEqual(Option.some(stream("b")))
      }))

    it.effect("claims and releases apply in event order within an append; a double release is invalid", () =>
      Effect.gen(function*() {
        const store = yield* Store
        const stream = streamOf()
        const index = `handle-${uid()}`
        // rename: give up the old value, take the new one, in one append
        yield* store.append(stream("a"), [ev({ claims: [{ index, value: "old" }] })])
        yield* store.append(stream("a"), [
          ev({ releases: [{ index, value: "old" }] }),
          ev({ claims: [{ index, value: "new" }] })
        ])
        expect(yield* store.claimOwner(index, "old")).toEqual(Option.none())
        expect(yield* store.claimOwner(index, "new")).toEqual(Option.some(stream("a")))
        // claimed then released within the append: free afterwards
        yield* store.append(stream("c"), [
          ev({ claims: [{ index, value: "brief" }] }),
          ev({ releases: [{ index, value: "brief" }] })
        ])
        expect(yield* store.claimOwner(index, "brief")).toEqual(Option.none())
        const twice = yield* Effect.flip(store.append(stream("a"), [
          ev({ releases: [{ index, value: "new" }] }),
          ev({ releases: [{ index, value: "new" }] })
        ]))
        expect(twice).toMatchObject({ _tag: "InvalidInput", field: "events[1].releases[0]" })
        expect(yield* store.claimOwner(index, "new")).toEqual(Option.some(stream("a")))
        // a violation by a later event undoes the earlier events' claims too
        yield* store.append(stream("x"), [ev({ claims: [{ index, value: "taken" }] })])
        yield* Effect.flip(store.append(stream("d"), [
          ev({ claims: [{ index, value: "mine" }] }),
          ev({ claims: [{ index, value: "taken" }] })
        ]))
        expect(yield* store.claimOwner(index, "mine")).toEqual(Option.none())
      }))

    it.effect("values are held per tenant: each tenant's store has its own", () =>
      Effect.gen(function*() {
        const store = yield* Store
        const t1 = yield* Tenancy.eventStore(store, `t1${uid()}`)
        const t2 = yield* Tenancy.eventStore(store, `t2${uid()}`)
        const stream = streamOf()
        const index = `email-${uid()}`
        const claim = [{ index, value: "ops@example.com" }]
        yield* t1.append(stream("a"), [ev({ claims: claim })])
        yield* t2.append(stream("b"), [ev({ claims: claim })])
        yield* store.append(stream("c"), [ev({ claims: claim })])
        const taken = yield* Effect.flip(t1.append(stream("d"), [ev({ claims: claim })]))
        // the owner as the tenant names it
        expect(taken).toMatchObject({ _tag: "UniqueConstraintViolation", streamId: stream("d"), owner: stream("a") })
        expect(yield* t1.claimOwner(index, "ops@example.com")).toEqual(Option.some(stream("a")))
        expect(yield* t2.claimOwner(index, "ops@example.com")).toEqual(Option.some(stream("b")))
        expect(yield* store.claimOwner(index, "ops@example.com")).toEqual(Option.some(stream("c")))
        expect(yield* store.claimOwner(index, "ops@example.com", { tenantId: "nobody" })).toEqual(Option.none())
      }))

    it.effect("bad claims are InvalidInput and write nothing", () =>
      Effect.gen(function*() {
        const store = yield* Store
        const stream = streamOf()
        const bad: ReadonlyArray<[string, unknown]> = [
          ["events[0].claims[0].index", [{ index: "", value: "x" }]],
          ["events[0].claims[0].value", [{ index: "i", value: "x".repeat(1025) }]],
          ["events[0].claims[0].value", [{ index: "i", value: "" }]],
          ["events[0].claims[0].value", [{ index: "i", value: 42 }]],
          ["events[0].claims[0].index", [{ index: "a\u0000b", value: "x" }]],
          ["events[0].claims[0].index", [{ index: "a\uD800", value: "x" }]],
          ["events[0].claims[0].value", [{ index: "i", value: "a\u0000b" }]],
          ["events[0].claims[0].value", [{ index: "i", value: "\uDC00a" }]],
          ["events[0].claims[0]", [{ index: "i", value: "x", extra: 1 }]],
          ["events[0].claims[0]", ["i"]],
          ["events[0].claims", "i"]
        ]
        for (const [field, claims] of bad) {
          const error = yield* Effect.flip(store.append(stream(), [ev({ claims: claims as any })]))
          expect(error).toMatchObject({ _tag: "InvalidInput", field })
        }
        expect(yield* store.version(stream())).toBe(0)
        expect((yield* Effect.flip(store.claimOwner("i", "x".repeat(1025))))._tag).toBe("InvalidInput")
        expect((yield* Effect.flip(store.claimOwner("i", "x", { tenantId: "../x" })))._tag).toBe("InvalidInput")
        // an empty list of claims is no claim
        const plain = yield* store.append(stream("e"), [ev({ claims: [], releases: [] })])
        expect(plain.version).toBe(1)
      }))

    it.effect("rebuildClaims rebuilds the table from the claims stored with the events", () =>
      Effect.gen(function*() {
        const store = yield* Store
        const stream = streamOf()
        const index = `rebuild-${uid()}`
        yield* store.append(stream("a"), [ev({ claims: [{ index, value: "1" }, { index, value: "2" }] })])
        yield* store.append(stream("b"), [ev({ claims: [{ index, value: "3" }] })])
        yield* store.append(stream("a"), [ev({ releases: [{ index, value: "1" }] })])
        yield* store.append(stream("a"), [ev({ claims: [{ index, value: "4" }] }), ev({ releases: [{ index, value: "4" }] })])
        const owners = Effect.all(["1", "2", "3", "4"].map((v) => store.claimOwner(index, v)))
        const before = yield* owners
        expect(before).toEqual([Option.none(), Option.some(stream("a")), Option.some(stream("b")), Option.none()])
        const held = yield* store.rebuildClaims
        expect(held).toBeGreaterThanOrEqual(2)
        expect(yield* owners).toEqual(before)
      }))

    // --- command ids -----------------------------------------------------------------------------------------------
    it.effect("a second append with the same command id writes nothing and returns the first result", () =>
      Effect.gen(function*() {
        const store = yield* Store
        const stream = streamOf()
        const commandId = `cmd-${uid()}`
        const first = yield* store.append(stream(), [ev(), ev()], { expectedVersion: "no-stream", commandId })
        expect(first.replayed).not.toBe(true)
        // a stale expected version, other events: still the recorded result
        const second = yield* store.append(stream(), [ev({ payload: { n: 2 } })], { expectedVersion: "no-stream", commandId })
        expect(second.replayed).toBe(true)
        expect(second.version).toBe(first.version)
        expect(second.position).toBe(first.position)
        expect(second.events.map((e) => [e.eventId, e.version, e.position])).toEqual(
          first.events.map((e) => [e.eventId, e.version, e.position])
        )
        expect(yield* store.version(stream())).toBe(2)
        const recorded = yield* store.command(commandId)
        expect(Option.map(recorded, (r) => [r.version, r.replayed])).toEqual(Option.some([2, true]))
        expect(yield* store.command(`cmd-${uid()}`)).toEqual(Option.none())
      }))

    it.effect("a failed append records nothing: the same command id writes once it succeeds", () =>
      Effect.gen(function*() {
        const store = yield* Store
        const stream = streamOf()
        const commandId = `cmd-${uid()}`
        yield* store.append(stream(), [ev()])
        const conflict = yield* Effect.flip(store.append(stream(), [ev()], { expectedVersion: 0, commandId }))
        expect(conflict._tag).toBe("ConcurrencyError")
        expect(yield* store.command(commandId)).toEqual(Option.none())
        const written = yield* store.append(stream(), [ev()], { expectedVersion: 1, commandId })
        expect(written).toMatchObject({ version: 2 })
        expect(written.replayed).not.toBe(true)
      }))

    it.effect("an expired record lets the command id write again", () =>
      Effect.gen(function*() {
        const store = yield* Store
        const stream = streamOf()
        const commandId = `cmd-${uid()}`
        yield* store.append(stream(), [ev()], { commandId, commandTtl: "100 millis" })
        const replay = yield* store.append(stream(), [ev()], { commandId, commandTtl: "100 millis" })
        expect(replay.replayed).toBe(true)
        yield* Effect.sleep("150 millis")
        expect(yield* store.command(commandId)).toEqual(Option.none())
        const again = yield* store.append(stream(), [ev()], { commandId })
        expect(again.replayed).not.toBe(true)
        expect(again.version).toBe(2)
        expect((yield* store.append(stream(), [ev()], { commandId })).replayed).toBe(true)
      }))

    it.effect("of concurrent appends with one command id, exactly one writes", () =>
      Effect.gen(function*() {
        const store = yield* Store
        const stream = streamOf()
        const commandId = `cmd-${uid()}`
        const results = yield* Effect.all(
          Array.from({ length: 12 }, (_, i) =>
            store.append(i % 2 === 0 ? stream("a") : stream("b"), [ev({ payload: { n: i } })], { commandId })),
          { concurrency: "unbounded" }
        )
        const written = results.filter((r) => r.replayed !== true)
        expect(written).toHaveLength(1)
        for (const r of results) expect(r.position).toBe(written[0]!.position)
        expect((yield* store.version(stream("a"))) + (yield* store.version(stream("b")))).toBe(1)
      }))

    it.effect("Aggregate: a handled command id is answered from its record without deciding again", () =>
      Effect.gen(function*() {
        const Users = userAggregate(`U${uid()}`)
        const users = yield* Aggregate.handler(Users)
        yield* users.handle("1", { _tag: "Register", email: "ada@example.com" })
        const commandId = `charge-${uid()}`
        const first = yield* users.handle("1", { _tag: "Charge", amount: 8 }, { commandId })
        expect(first).toMatchObject({ version: 2, state: { credit: 2 } })
        expect(first.replayed).not.toBe(true)
        // deciding again would fail (credit 2 < 8): the record answers instead
        const again = yield* users.handle("1", { _tag: "Charge", amount: 8 }, { commandId })
        expect(again).toMatchObject({ version: 2, replayed: true, state: { credit: 2 }, position: first.position })
        expect(again.events.map((e) => [e.eventId, e.payload])).toEqual(first.events.map((e) => [e.eventId, e.payload]))
        // the store's own record, read with the store: same ids
        const store = yield* Store
        expect(yield* store.version(Users.streamId("1"))).toBe(2)
        const other = yield* Effect.flip(users.handle("2", { _tag: "Charge", amount: 1 }, { commandId }))
        expect(other).toMatchObject({ _tag: "InvalidInput", field: "commandId" })
        const failed = yield* Effect.flip(users.handle("1", { _tag: "Charge", amount: 5 }, { commandId: `c-${uid()}` }))
        expect(failed).toMatchObject({ _tag: "NoCredit", left: 2 })
      }).pipe(Effect.scoped))

    it.effect("Aggregate: claims from the aggregate's events fail a command that takes a held value", () =>
      Effect.gen(function*() {
        const Users = userAggregate(`U${uid()}`)
        const users = yield* Aggregate.handler(Users)
        yield* users.handle("1", { _tag: "Register", email: "grace@example.com" })
        const error = yield* Effect.flip(users.handle("2", { _tag: "Register", email: "grace@example.com" }))
        expect(error).toMatchObject({
          _tag: "UniqueConstraintViolation",
          owner: Users.streamId("1"),
          value: "grace@example.com"
        })
        expect((yield* users.load("2")).version).toBe(0)
        const store = yield* Store
        expect(yield* store.claimOwner(`${Users.name}-email`, "grace@example.com")).toEqual(Option.some(Users.streamId("1")))
      }).pipe(Effect.scoped))

    // --- seeding ---------------------------------------------------------------------------------------------------
    it.effect("a seed writes once: derived ids, tags, skipped on every later run; a grown seed writes its new events", () =>
      Effect.gen(function*() {
        const store = yield* Store
        const stream = streamOf()
        const seedOf = (n: number) => [
          { streamId: stream("a"), events: Array.from({ length: n }, (_, i) => ev({ payload: { i, name: `a${i}` } })) },
          { streamId: stream("b"), events: [ev({ payload: { z: 1, a: [1, { y: 2, x: 1 }] } })], streamType: "Other" }
        ]
        const progress: Array<Seed.SeedProgress> = []
        const options = {
          tags: { migration: "m1" },
          onProgress: (p: Seed.SeedProgress) => Effect.sync(() => progress.push(p))
        }
        expect(yield* Seed.seed(seedOf(3), options)).toEqual({ streams: 2, saved: 4, skipped: 0 })
        expect(progress).toEqual([
          { streams: 1, total: 2, saved: 3, skipped: 0 },
          { streams: 2, total: 2, saved: 4, skipped: 0 }
        ])
        expect(yield* Seed.seed(seedOf(3), options)).toEqual({ streams: 2, saved: 0, skipped: 4 })
        expect(yield* Seed.seed(seedOf(5))).toEqual({ streams: 2, saved: 2, skipped: 4 })
        const a = yield* store.readPage(stream("a"))
        expect(a.map((e) => e.eventId)).toEqual(
          a.map((e) => Seed.eventIdOf(stream("a"), e.version, { type: "Happened", payload: { i: e.version - 1, name: `a${e.version - 1}` } }))
        )
        expect(a[0]!.metadata.tags).toEqual({ migration: "m1", seeded: "true" })
        expect(a[4]!.metadata.tags).toEqual({ seeded: "true" })
        const [b] = yield* store.readPage(stream("b"))
        expect(b!.streamType).toBe("Other")
        // the id does not depend on key order
        expect(b!.eventId).toBe(Seed.eventIdOf(stream("b"), 1, { type: "Happened", payload: { a: [1, { x: 1, y: 2 }], z: 1 } }))
      }))

    it.effect("a seed finding other events in its stream is SeedConflict; a claim held elsewhere writes nothing", () =>
      Effect.gen(function*() {
        const store = yield* Store
        const stream = streamOf()
        yield* store.append(stream("a"), [ev()])
        const conflict = yield* Effect.flip(Seed.seed([{ streamId: stream("a"), events: [ev(), ev()] }]))
        expect(conflict).toMatchObject({ _tag: "SeedConflict", streamId: stream("a"), version: 1 })
        expect(yield* store.version(stream("a"))).toBe(1)
        const index = `seed-${uid()}`
        yield* store.append(stream("owner"), [ev({ claims: [{ index, value: "v" }] })])
        const taken = yield* Effect.flip(Seed.seed([
          { streamId: stream("b"), events: [ev(), ev({ claims: [{ index, value: "v" }] })] }
        ]))
        expect(taken).toMatchObject({ _tag: "UniqueConstraintViolation", owner: stream("owner") })
        expect(yield* store.version(stream("b"))).toBe(0)
        const given = yield* Effect.flip(Seed.seed([{ streamId: stream("c"), events: [ev({ eventId: "mine" })] }]))
        expect(given).toMatchObject({ _tag: "InvalidInput", field: "events[0].eventId" })
        const empty = yield* Effect.flip(Seed.seed([{ streamId: stream("c"), events: [] }]))
        expect(empty._tag).toBe("InvalidInput")
      }))

    it.effect("property: whatever the order and concurrency of repeats, each command id writes once", () =>
      Effect.gen(function*() {
        const store = yield* Store
        const scenarios = FastCheck.sample(
          FastCheck.array(
            FastCheck.record({
              command: FastCheck.integer({ min: 0, max: 5 }),
              stream: FastCheck.constantFrom("a", "b"),
              events: FastCheck.integer({ min: 1, max: 3 }),
              stale: FastCheck.boolean()
            }),
            { minLength: 1, maxLength: 20 }
          ),
          { numRuns: 6, seed: 7 }
        )
        for (const steps of scenarios) {
          const stream = streamOf()
          const prefix = `p-${uid()}`
          // half of the steps run concurrently, the rest one after another
          const run = (step: (typeof steps)[number]) =>
            store.append(
              stream(step.stream),
              Array.from({ length: step.events }, (_, i) => ev({ payload: { i } })),
              { commandId: `${prefix}-${step.command}`, ...(step.stale ? { expectedVersion: "no-stream" as const } : {}) }
            ).pipe(Effect.either)
          const half = Math.ceil(steps.length / 2)
          const concurrent = yield* Effect.all(steps.slice(0, half).map(run), { concurrency: "unbounded" })
          const sequential = yield* Effect.forEach(steps.slice(half), run)
          const outcomes = [...concurrent, ...sequential]
          const firstOf = new Map<number, { position: number; version: number }>()
          let written = 0
          for (let i = 0; i < steps.length; i++) {
            const outcome = outcomes[i]!
            if (Either.isLeft(outcome)) {
              // only a stale expectation can fail, and then nothing of the command was recorded by it
              expect(outcome.left._tag).toBe("ConcurrencyError")
              continue
            }
            const result = outcome.right
            const seen = firstOf.get(steps[i]!.command)
            if (seen === undefined) firstOf.set(steps[i]!.command, { position: result.position, version: result.version })
            else expect({ position: result.position, version: result.version }).toEqual(seen)
            if (result.replayed !== true) written += result.events.length
          }
          // every written event belongs to exactly one command's first result
          const total = (yield* store.version(stream("a"))) + (yield* store.version(stream("b")))
          expect(total).toBe(written)
          for (const [command, first] of firstOf) {
            const recorded = yield* store.command(`${prefix}-${command}`)
            expect(Option.map(recorded, (r) => r.position)).toEqual(Option.some(first.position))
          }
        }
      }))

    it.effect("bad command ids and ttls are InvalidInput and write nothing", () =>
      Effect.gen(function*() {
        const store = yield* Store
        const stream = streamOf()
        for (const [field, options] of [
          ["commandId", { commandId: "" }],
          ["commandId", { commandId: "x".repeat(257) }],
          ["commandId", { commandId: "a\nb" }],
          ["commandTtl", { commandId: "ok", commandTtl: "0 millis" }],
          ["commandTtl", { commandId: "ok", commandTtl: "soon" }],
          ["commandTtl", { commandId: "ok", commandTtl: -5 }],
          ["commandTtl", { commandId: "ok", commandTtl: 1e300 }],
          ["commandId", { commandId: "c\uD800" }]
        ] as const) {
          const error = yield* Effect.flip(store.append(stream(), [ev()], options as any))
          expect(error).toMatchObject({ _tag: "InvalidInput", field })
        }
        expect(yield* store.version(stream())).toBe(0)
      }))
  })
