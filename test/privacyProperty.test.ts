/**
 * The crypto-shredding property (issue 15): for random subjects and random histories of events with personal fields,
 * after `forget` none of a forgotten subject's plain-text values occurs in the bytes of the SQLite database file or
 * its WAL — scanned while the store is open (after `purge`, before anything else checkpoints), after it closes, and
 * after a checkpoint from a raw connection — while every other subject loads to exactly the state a pure fold of its
 * commands gives, and the forgotten ones to their declared replacements.
 *
 * Every generated value is `<kind> <letters> <12 digits>`, the digits unique within a run: no value is a substring of
 * another, none can occur by chance in the store's own data (ids, base64, JSON keys hold no space followed by twelve
 * digits), and none needs escaping in JSON.
 */
import { afterAll, describe, expect, it } from "@effect/vitest"
import * as SqlClient from "@effect/sql/SqlClient"
import Database from "better-sqlite3"
import { Aggregate, EventStore, KeyStore, Privacy, Projection, Snapshot } from "effect-eventstore"
import * as Sqlite from "effect-eventstore/Sqlite"
import * as SqlProjection from "effect-eventstore/SqlProjection"
import * as Chunk from "effect/Chunk"
import * as Effect from "effect/Effect"
import * as Either from "effect/Either"
import * as FastCheck from "effect/FastCheck"
import * as Layer from "effect/Layer"
import * as Logger from "effect/Logger"
import * as LogLevel from "effect/LogLevel"
import * as Option from "effect/Option"
import * as Redacted from "effect/Redacted"
import * as Stream from "effect/Stream"
import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"
import {
  Customer,
  Customers,
  type CustomerCommand,
  type CustomerEvent,
  CustomerEvents,
  CustomerRegistered,
  type CustomerState,
  decide,
  evolve,
  GiftSent,
  initialState,
  testKek
} from "./fixtures/customers.js"

const dir = fs.mkdtempSync(path.join(os.tmpdir(), "effect-eventstore-privacy-prop-"))
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }))

// --- the application under test (as test/privacy.test.ts composes it) ------------------------------------------------


const sqliteApp = (filename: string) => {
  const base = Privacy.layer({ registries: [CustomerEvents], kek: Redacted.make(testKek), settle: "30 millis" }).pipe(
    Layer.provideMerge(KeyStore.layerSql()),
    Layer.provideMerge(Sqlite.layer({ filename, pollInterval: "20 millis" }))
  )
  const handler = Aggregate.layer(Customer, { snapshotWrites: "inline" }).pipe(Layer.provide(base))
  const projections = Projection.layer([Customers]).pipe(
    Layer.provide(SqlProjection.layer.pipe(Layer.provideMerge(base)))
  )
  return Layer.mergeAll(handler, projections).pipe(Layer.provideMerge(base))
}

// --- scenarios -------------------------------------------------------------------------------------------------------

type Step =
  | { readonly _tag: "Register"; readonly who: number; readonly name: string; readonly email: string | undefined; readonly card: string }
  | { readonly _tag: "ChangeEmail"; readonly who: number; readonly email: string }
  | { readonly _tag: "PlaceOrder"; readonly who: number; readonly amount: number; readonly shipTo: string | null }
  | {
    readonly _tag: "Gift"
    readonly from: number
    readonly to: number
    readonly note: string
    readonly toName: string
    readonly amount: number
    /** Its own `Gift-n` stream, or the giver's `Customer-` stream (where it counts in the giver's total). */
    readonly into: "gift" | "customer"
  }

interface Scenario {
  readonly subjects: number
  readonly nonce: number
  readonly steps: ReadonlyArray<Step>
  /** Indices of the subjects to forget, in that order: at least one, never all. */
  readonly forget: ReadonlyArray<number>
  /** Whether the projection has caught up before the forget (else it may read the events after it). */
  readonly projectedFirst: boolean
}

const word = FastCheck.array(FastCheck.constantFrom(..."abcdefghijklmnopqrstuvwxyz"), { minLength: 2, maxLength: 8 })
  .map((letters) => letters.join(""))

const scenarioArb: FastCheck.Arbitrary<Scenario> = FastCheck.integer({ min: 2, max: 5 }).chain((n) => {
  const who = FastCheck.nat(n - 1)
  const step: FastCheck.Arbitrary<Step> = FastCheck.oneof(
    {
      weight: 3,
      arbitrary: FastCheck.record({
        _tag: FastCheck.constant("Register" as const),
        who,
        name: word,
        email: FastCheck.option(word, { nil: undefined }),
        card: word
      })
    },
    { weight: 2, arbitrary: FastCheck.record({ _tag: FastCheck.constant("ChangeEmail" as const), who, email: word }) },
    {
      weight: 3,
      arbitrary: FastCheck.record({
        _tag: FastCheck.constant("PlaceOrder" as const),
        who,
        amount: FastCheck.integer({ min: 1, max: 500 }),
        shipTo: FastCheck.option(word, { nil: null })
      })
    },
    {
      weight: 2,
      arbitrary: FastCheck.record({
        from: who,
        other: FastCheck.nat(n - 2),
        note: word,
        toName: word,
        amount: FastCheck.integer({ min: 1, max: 50 }),
        into: FastCheck.constantFrom("gift" as const, "customer" as const)
      }).map(({ from, other, ...rest }): Step => ({ _tag: "Gift", from, to: (from + 1 + other) % n, ...rest }))
    }
  )
  return FastCheck.record({
    subjects: FastCheck.constant(n),
    nonce: FastCheck.integer({ min: 10_000_000, max: 99_999_999 }),
    steps: FastCheck.array(step, { minLength: 4, maxLength: 30, size: "max" }),
    forget: FastCheck.uniqueArray(FastCheck.nat(n - 1), { minLength: 1, maxLength: n - 1 }),
    projectedFirst: FastCheck.boolean()
  })
})

type Action =
  | { readonly _tag: "handle"; readonly id: string; readonly command: CustomerCommand }
  | { readonly _tag: "append"; readonly streamId: string; readonly event: CustomerEvent }

/** A scenario with its values made unique and what a pure fold of it gives. */
interface Plan {
  readonly ids: ReadonlyArray<string>
  readonly actions: ReadonlyArray<Action>
  /** The events each stream holds, in order, as the decider produced them. */
  readonly streams: ReadonlyMap<string, ReadonlyArray<CustomerEvent>>
  /** Each subject's state by a pure fold of its commands (and the gifts appended to its stream). */
  readonly states: ReadonlyMap<string, CustomerState>
  /** Each subject's personal values that were written (in an event), by subject id. */
  readonly values: ReadonlyMap<string, ReadonlyArray<string>>
}

const customerStream = (id: string) => `Customer-${id}`

/** The subjects whose personal data an event holds, with the values. */
const personalValues = (event: CustomerEvent): ReadonlyArray<readonly [subject: string, value: string]> => {
  switch (event._tag) {
    case "CustomerRegistered":
      return [event.name, event.email, event.card].flatMap((v) => v === undefined ? [] : [[event.customerId, v] as const])
    case "EmailChanged":
      return [[event.customerId, event.email]]
    case "OrderPlaced":
      return event.shipTo === null ? [] : [[event.customerId, event.shipTo]]
    case "GiftSent":
      return [[event.from, event.note], [event.to, event.toName]]
  }
}

/** The subjects whose data key an event is encrypted with (a `null` shipTo is encrypted too). */
const subjectsOf = (event: CustomerEvent): ReadonlyArray<string> =>
  event._tag === "GiftSent" ? [event.from, event.to] : [event.customerId]

const plan = (scenario: Scenario): Plan => {
  const ids = Array.from({ length: scenario.subjects }, (_, i) => `c${i}`)
  let seq = 0
  const unique = (kind: string, w: string) => `${kind} ${w} ${scenario.nonce}${String(seq++).padStart(4, "0")}`
  const actions: Array<Action> = []
  const streams = new Map<string, Array<CustomerEvent>>()
  const states = new Map<string, CustomerState>(ids.map((id) => [id, initialState]))
  const values = new Map<string, Array<string>>(ids.map((id) => [id, []]))
  const record = (streamId: string, events: ReadonlyArray<CustomerEvent>) => {
    if (events.length === 0) return
    streams.set(streamId, [...(streams.get(streamId) ?? []), ...events])
    for (const event of events) for (const [subject, value] of personalValues(event)) values.get(subject)!.push(value)
  }
  let gifts = 0
  for (const step of scenario.steps) {
    if (step._tag === "Gift") {
      const event = GiftSent.make({
        from: ids[step.from]!,
        to: ids[step.to]!,
        note: unique("note", step.note),
        toName: unique("toname", step.toName),
        amount: step.amount
      })
      const streamId = step.into === "gift" ? `Gift-${gifts++}` : customerStream(event.from)
      actions.push({ _tag: "append", streamId, event })
      record(streamId, [event])
      if (step.into === "customer") states.set(event.from, evolve(states.get(event.from)!, event))
      continue
    }
    const id = ids[step.who]!
    const command: CustomerCommand = step._tag === "Register"
      ? {
        _tag: "Register",
        customerId: id,
        name: unique("name", step.name),
        ...(step.email !== undefined ? { email: unique("mail", step.email) } : {}),
        card: unique("card", step.card)
      }
      : step._tag === "ChangeEmail"
      ? { _tag: "ChangeEmail", customerId: id, email: unique("mail", step.email) }
      : { _tag: "PlaceOrder", customerId: id, amount: step.amount, shipTo: step.shipTo === null ? null : unique("ship", step.shipTo) }
    const state = states.get(id)!
    const events = decide(command, state)
    actions.push({ _tag: "handle", id, command })
    record(customerStream(id), events)
    states.set(id, events.reduce(evolve, state))
  }
  return { ids, actions, streams, states, values }
}

/** An event as it reads once the subjects in `forgotten` are: their fields as the fixture's declarations replace them. */
const redact = (event: CustomerEvent, forgotten: ReadonlySet<string>): CustomerEvent => {
  switch (event._tag) {
    case "CustomerRegistered":
      return forgotten.has(event.customerId)
        ? CustomerRegistered.make({
          customerId: event.customerId,
          name: "(forgotten)",
          card: `…${event.card.slice(-4)}`,
          plan: event.plan
        })
        : event
    case "EmailChanged":
      return forgotten.has(event.customerId) ? { ...event, email: "" } : event
    case "OrderPlaced":
      return forgotten.has(event.customerId) ? { ...event, shipTo: null } : event
    case "GiftSent":
      return {
        ...event,
        note: forgotten.has(event.from) ? "" : event.note,
        toName: forgotten.has(event.to) ? "(forgotten)" : event.toName
      }
  }
}

// --- the raw bytes ---------------------------------------------------------------------------------------------------

const databaseFiles = (filename: string) => [filename, `${filename}-wal`]

/** The values whose UTF-8 bytes occur in the database file or its WAL. */
const occurring = (filename: string, values: ReadonlyArray<string>): Array<string> => {
  const contents = databaseFiles(filename).flatMap((file) => fs.existsSync(file) ? [fs.readFileSync(file)] : [])
  return values.filter((value) => {
    const needle = Buffer.from(value, "utf8")
    return contents.some((bytes) => bytes.includes(needle))
  })
}

const checkpointRaw = (filename: string) => {
  const db = new Database(filename)
  try {
    const [result] = db.pragma("wal_checkpoint(TRUNCATE)") as Array<{ busy: number }>
    expect(result?.busy).toBe(0)
  } finally {
    db.close()
  }
}

// --- the property ----------------------------------------------------------------------------------------------------

/** Scenarios per run (about half a second each here); `PRIVACY_PROPERTY_RUNS=500` for a longer soak. */
const runs = Number(process.env.PRIVACY_PROPERTY_RUNS ?? 20)
/** After this, no new scenario starts: a loaded machine runs fewer rather than time out; a failure's shrinking stops. */
const timeLimit = Math.max(40_000, runs * 2_000)

describe("Privacy: crypto-shredding on SQLite (property)", () => {
  it.scopedLive.prop(
    "after forget no value of a forgotten subject is in the database file or its WAL; everyone else loads unchanged",
    { scenario: scenarioArb },
    ({ scenario }) =>
      Effect.gen(function*() {
        const filename = path.join(dir, `run-${crypto.randomUUID().slice(0, 8)}.db`)
        const { actions, ids, states, streams, values } = plan(scenario)
        const forgotten = new Set(scenario.forget.map((i) => ids[i]!))
        const kept = ids.filter((id) => !forgotten.has(id))
        const forgottenValues = [...forgotten].flatMap((id) => values.get(id)!)
        /** Streams whose events are encrypted with a subject's key, sorted as the key store lists them. */
        const streamsOf = (id: string) =>
          [...streams].filter(([, events]) => events.some((e) => subjectsOf(e).includes(id))).map(([s]) => s).sort()
        const registered = (id: string) =>
          (streams.get(customerStream(id)) ?? []).some((e) => e._tag === "CustomerRegistered")
        /** Each subject's state after the forget: a fold of its stream's events as they read then. */
        const expectedState = (id: string) =>
          (streams.get(customerStream(id)) ?? []).map((e) => redact(e, forgotten)).reduce(evolve, initialState)
        // a positive control: a value of a kept subject the database does hold in plain text (the read model's row)
        const controls = kept.filter(registered).map((id) => states.get(id)!.name)

        const assertShredded = (phase: string) => {
          expect(occurring(filename, forgottenValues), `${phase}: forgotten values in the file or its WAL`).toEqual([])
          expect(occurring(filename, controls), `${phase}: the kept subjects' names (the scan's control)`).toEqual(controls)
        }

        const assertLoads = Effect.gen(function*() {
          for (const id of ids) {
            const loaded = yield* Customer.load(id)
            const expected = expectedState(id)
            expect(loaded.state, `state of ${id}${forgotten.has(id) ? " (forgotten)" : ""}`).toEqual(expected)
            expect(loaded.version).toBe(streams.get(customerStream(id))?.length ?? 0)
            if (!forgotten.has(id)) expect(expected).toEqual(states.get(id))
          }
          const store = yield* EventStore.EventStore
          for (const [streamId, events] of streams) {
            const read = yield* Stream.runCollect(store.read(streamId))
            const decoded = Chunk.toReadonlyArray(read).map((e) => Either.getOrThrow(CustomerEvents.decodePayload(e)))
            expect(decoded, `events of ${streamId}`).toEqual(events.map((e) => redact(e, forgotten)))
          }
        })

        yield* Effect.gen(function*() {
          const privacy = yield* Privacy.Privacy
          const projections = yield* Projection.Projections
          const snapshots = yield* Snapshot.SnapshotStore
          const store = yield* EventStore.EventStore
          const sql = yield* SqlClient.SqlClient

          for (const action of actions) {
            if (action._tag === "handle") yield* Customer.handle(action.id, action.command)
            else yield* store.append(action.streamId, [Either.getOrThrow(CustomerEvents.encode(action.event))])
          }
          if (scenario.projectedFirst) {
            yield* projections.awaitPosition("customers", yield* store.head, "10 seconds")
            // what the forget must remove is there: the read model's rows hold the forgotten subjects' names
            const exposed = [...forgotten].filter(registered).map((id) => states.get(id)!.name)
            expect(occurring(filename, exposed), "before the forget").toEqual(exposed)
          }

          const reports: Array<Privacy.ForgetReport> = []
          for (const id of forgotten) {
            const report = yield* privacy.forget(id)
            expect(report.streams).toEqual(streamsOf(id))
            expect(report.destroyed).toBe(report.streams.length > 0)
            for (const streamId of report.streams) {
              expect(Option.isNone(yield* snapshots.latest(streamId)), `snapshot of ${streamId}`).toBe(true)
            }
            reports.push(report)
          }
          // forgetting again destroys nothing and appends no second tombstone
          const again = yield* privacy.forget(reports[0]!.subject)
          expect(again).toMatchObject({ destroyed: false, position: reports[0]!.position })

          // loads right after the forget: the handler's cached states of the forgotten were dropped
          yield* assertLoads

          yield* projections.awaitPosition("customers", Math.max(...reports.map((r) => r.position)), "10 seconds")
          const rows = yield* sql<{ id: string }>`SELECT id FROM customers ORDER BY id`
          expect(rows.map((r) => r.id)).toEqual(kept.filter(registered).sort())

          // purge (again: the projection deleted its rows after the forget's own purge); it answers busy while a
          // reader is in the WAL, so try until it is complete
          let purged = yield* privacy.purge
          for (let attempt = 0; !purged.complete && attempt < 300; attempt++) {
            yield* Effect.sleep("10 millis")
            purged = yield* privacy.purge
          }
          expect(purged.complete).toBe(true)
          assertShredded("open, after purge")

          for (const id of forgotten) {
            const verification = yield* privacy.verifyForgotten(id, {
              values: values.get(id)!,
              tables: ["customers"],
              files: databaseFiles(filename)
            })
            expect(verification.findings, `verifyForgotten(${id})`).toEqual([])
            expect(verification.clean).toBe(true)
          }
        }).pipe(Effect.provide(sqliteApp(filename)), Effect.scoped)

        assertShredded("closed")
        checkpointRaw(filename)
        assertShredded("closed, after a raw checkpoint")

        // a fresh process's view: no cache, keys read from the key store
        yield* assertLoads.pipe(Effect.provide(sqliteApp(filename)), Effect.scoped)
        assertShredded("reopened and closed")
      }).pipe(Logger.withMinimumLogLevel(LogLevel.Warning)),
    { timeout: timeLimit + 20_000, fastCheck: { numRuns: runs, interruptAfterTimeLimit: timeLimit } }
  )
})
