/**
 * Crypto-shredding benchmarks (`Privacy`): the same workload through the library with and without `Privacy.layer`,
 * in the same run, interleaved. The baseline here is the library's plain store, not raw better-sqlite3: what is
 * measured is what encrypting personal fields costs on top of the store.
 *
 * - `sqlite.privacy.append`: single appends of an event with two personal fields of one subject, over 100 subjects'
 *   streams (20 with `--quick`) whose keys exist and were read in a warm-up (events/s).
 * - `sqlite.privacy.load.10k`: `Aggregate.load` of a 10k-event stream whose events carry one subject's personal
 *   fields (ms); `sqlite.privacy.decrypt.perEvent`: (privacy − plain) / events, against plain / events (µs).
 * - `sqlite.privacy.forget`: `forget` of a subject with 1,000 events over 10 streams while a `Projection.sql` read
 *   model runs (ms), against reading those 1,000 events through the plain store.
 */
import * as SqlClient from "@effect/sql/SqlClient"
import { Aggregate, Event, EventStore, KeyStore, Privacy, Projection } from "effect-eventstore"
import * as Sqlite from "effect-eventstore/Sqlite"
import * as SqlProjection from "effect-eventstore/SqlProjection"
import * as Effect from "effect/Effect"
import * as Either from "effect/Either"
import * as Layer from "effect/Layer"
import * as Logger from "effect/Logger"
import * as LogLevel from "effect/LogLevel"
import * as ManagedRuntime from "effect/ManagedRuntime"
import * as Redacted from "effect/Redacted"
import * as Schema from "effect/Schema"
import * as Stream from "effect/Stream"
import * as fs from "node:fs"
import { median } from "./common.js"

type Emit = (bench: string, value: number, unit: string, baseline: number) => void

// --- the domain: one event with two personal fields of one subject ---------------------------------------------------
const ProfileUpdated = Schema.TaggedStruct("ProfileUpdated", {
  customerId: Schema.String.pipe(Privacy.subject),
  name: Schema.String.pipe(Privacy.personal({ replacement: "(forgotten)" })),
  email: Schema.String.pipe(Privacy.personal({ replacement: "" })),
  amount: Schema.Int
})
const Events = Event.registry([ProfileUpdated])
const Forgettable = Event.registry([ProfileUpdated, Privacy.SubjectForgotten])

interface Profile {
  readonly name: string
  readonly email: string
  readonly total: number
}
const Customer = Aggregate.make({
  name: "Customer",
  events: Events,
  decider: {
    initialState: { name: "", email: "", total: 0 } as Profile,
    decide: (_: never, __: Profile) => Effect.succeed([]),
    // reads the personal fields, so that a load cannot skip their decryption
    evolve: (state: Profile, event: typeof ProfileUpdated.Type): Profile => ({
      name: event.name,
      email: event.email,
      total: state.total + event.amount
    })
  }
})

/** One subject's event (encoded through the registry, as an aggregate's append has it). */
const eventOf = (subject: string, amount: number): Event.NewEvent =>
  Either.getOrThrow(Events.encode(ProfileUpdated.make({
    customerId: subject,
    name: `Customer ${subject}`,
    email: `${subject}@example.com`,
    amount
  })))

/** The customers read model: one row per subject, deleted on `SubjectForgotten`. */
const Customers = Projection.sql({
  name: "customers",
  events: Forgettable,
  init: [Effect.flatMap(SqlClient.SqlClient, (sql) =>
    Effect.asVoid(sql`CREATE TABLE customers (id TEXT PRIMARY KEY, name TEXT NOT NULL, email TEXT NOT NULL, total INTEGER NOT NULL)`))],
  handlers: {
    ProfileUpdated: (e, sql) =>
      sql`INSERT INTO customers (id, name, email, total) VALUES (${e.payload.customerId}, ${e.payload.name}, ${e.payload.email}, ${e.payload.amount})
        ON CONFLICT (id) DO UPDATE SET name = excluded.name, email = excluded.email, total = total + excluded.total`,
    SubjectForgotten: (e, sql) => sql`DELETE FROM customers WHERE id = ${e.payload.subject}`
  }
})

// --- layers ----------------------------------------------------------------------------------------------------------
const kek = Redacted.make(Buffer.alloc(32, 7).toString("base64"))
// the harness prints JSON lines only
const quiet = Logger.minimumLogLevel(LogLevel.Warning)

const plainStore = (filename: string) => Sqlite.layer({ filename }).pipe(Layer.provideMerge(quiet))
const privateStore = (filename: string) =>
  Privacy.layer({ registries: [Events], kek }).pipe(
    Layer.provideMerge(KeyStore.layerSql()),
    Layer.provideMerge(Sqlite.layer({ filename })),
    Layer.provideMerge(quiet)
  )
const withCustomer = <E, R>(store: Layer.Layer<EventStore.EventStore | R, E>) =>
  Aggregate.layer(Customer).pipe(Layer.provideMerge(store))

/** Copies an SQLite file (closed by its last user) with its WAL, if any. */
const copy = (from: string, to: string) => {
  fs.copyFileSync(from, to)
  for (const ext of ["-wal", "-shm"]) if (fs.existsSync(from + ext)) fs.copyFileSync(from + ext, to + ext)
}

/** Runs `runners` in `rounds` rounds, rotating who goes first; the samples of each. */
async function interleave<A>(rounds: number, runners: ReadonlyArray<() => Promise<A>>) {
  const samples = runners.map(() => [] as Array<A>)
  for (let r = 0; r < rounds; r++) {
    for (let k = 0; k < runners.length; k++) {
      const i = (k + r) % runners.length
      samples[i]!.push(await runners[i]!())
    }
  }
  return samples
}

// --- appends ---------------------------------------------------------------------------------------------------------

/**
 * A file where each of `subjects` subjects has appended one event to its stream (with Privacy: its key was created
 * then).
 */
async function seedSubjects<R>(store: Layer.Layer<EventStore.EventStore | R, unknown>, subjects: number) {
  const rt = ManagedRuntime.make(store)
  await rt.runPromise(Effect.flatMap(EventStore.EventStore, (es) =>
    Effect.forEach(Array.from({ length: subjects }, (_, s) => s), (s) =>
      es.append(`Customer-c-${s}`, [eventOf(`c-${s}`, s)], { expectedVersion: "no-stream", streamType: "Customer" }), {
      concurrency: 8,
      discard: true
    })))
  await rt.dispose()
}

/**
 * Single appends on a copy of a seeded file (every subject has its key): one untimed append per subject first (with
 * Privacy, its key is read into the cache and its stream recorded there), then `count` timed ones round-robin over
 * the subjects' streams. Events/s.
 */
async function appends<R>(
  store: Layer.Layer<EventStore.EventStore | R, unknown>,
  subjects: number,
  count: number
): Promise<number> {
  const rt = ManagedRuntime.make(store)
  const rate = await rt.runPromise(Effect.gen(function*() {
    const es = yield* EventStore.EventStore
    const events = Array.from({ length: subjects }, (_, s) => [eventOf(`c-${s}`, s)])
    const versions = new Array<number>(subjects).fill(1)
    let start = performance.now()
    for (let i = -subjects; i < count; i++) {
      if (i === 0) start = performance.now()
      const s = (i + subjects) % subjects
      const r = yield* es.append(`Customer-c-${s}`, events[s]!, { expectedVersion: versions[s]!, streamType: "Customer" })
      versions[s] = r.version
    }
    return (count * 1000) / (performance.now() - start)
  }))
  await rt.dispose()
  return rate
}

async function appendBench(
  emit: Emit,
  freshFile: () => string,
  quick: boolean,
  rounds: number,
  subjects: number,
  count: number
) {
  const seeded = { privacy: freshFile(), plain: freshFile() }
  await seedSubjects(privateStore(seeded.privacy), subjects)
  await seedSubjects(plainStore(seeded.plain), subjects)
  const on = (from: string) => {
    const f = freshFile()
    copy(from, f)
    return f
  }
  const runners = [
    () => appends(privateStore(on(seeded.privacy)), subjects, count),
    () => appends(plainStore(on(seeded.plain)), subjects, count)
  ]
  // a whole untimed round first (skipped with --quick, for time)
  if (!quick) for (const run of runners) await run()
  const [privacy, plain] = await interleave(rounds, runners)
  emit("sqlite.privacy.append", median(privacy!), "events/s", median(plain!))
}

// --- loads -----------------------------------------------------------------------------------------------------------

/** Appends `n` events of subject `c-big` to `Customer-big`, in appends of 100. */
const seedBig = (n: number) =>
  Effect.gen(function*() {
    const es = yield* EventStore.EventStore
    for (let v = 0; v < n; v += 100) {
      const size = Math.min(100, n - v)
      yield* es.append(
        Customer.streamId("big"),
        Array.from({ length: size }, (_, i) => eventOf("c-big", (v + i) % 97)),
        { expectedVersion: v, streamType: "Customer" }
      )
    }
  })

async function loadBench(emit: Emit, freshFile: () => string, rounds: number, n: number) {
  const privacyRt = ManagedRuntime.make(withCustomer(privateStore(freshFile())))
  const plainRt = ManagedRuntime.make(withCustomer(plainStore(freshFile())))
  await privacyRt.runPromise(seedBig(n))
  await plainRt.runPromise(seedBig(n))
  const load = Customer.load("big")
  const a = await privacyRt.runPromise(load)
  const b = await plainRt.runPromise(load)
  if (a.version !== n || JSON.stringify(a.state) !== JSON.stringify(b.state) || a.state.name !== "Customer c-big") {
    throw new Error(`privacy load mismatch: ${JSON.stringify(a)} / ${JSON.stringify(b)}`)
  }
  const timed = (rt: typeof privacyRt | typeof plainRt) => async () => {
    const t = performance.now()
    await rt.runPromise(load)
    return performance.now() - t
  }
  const [privacy, plain] = await interleave(rounds, [timed(privacyRt), timed(plainRt)])
  await privacyRt.dispose()
  await plainRt.dispose()
  const privacyMs = median(privacy!)
  const plainMs = median(plain!)
  const label = n >= 1000 ? `${n / 1000}k` : `${n}`
  emit(`sqlite.privacy.load.${label}`, privacyMs, "ms", plainMs)
  emit(
    "sqlite.privacy.decrypt.perEvent",
    ((privacyMs - plainMs) * 1000) / n,
    `µs per event (value: (privacy load − plain load) / ${label} events; baseline: plain load / events)`,
    (plainMs * 1000) / n
  )
}

// --- forget ----------------------------------------------------------------------------------------------------------

const FORGET_STREAMS = 10
const PER_STREAM = 100
const OTHERS = 9

/**
 * The subject `c-0`'s 1,000 events over 10 streams (`Order-c-0-<k>`), and `OTHERS` other subjects' 100 events each in
 * one stream, so that the key store and the read model hold more than the one subject.
 */
const seedForget = Effect.gen(function*() {
  const es = yield* EventStore.EventStore
  for (let k = 0; k < FORGET_STREAMS; k++) {
    yield* es.append(`Order-c-0-${k}`, Array.from({ length: PER_STREAM }, (_, i) => eventOf("c-0", i % 97)), {
      expectedVersion: "no-stream",
      streamType: "Order"
    })
  }
  for (let s = 1; s <= OTHERS; s++) {
    yield* es.append(`Order-c-${s}-0`, Array.from({ length: PER_STREAM }, (_, i) => eventOf(`c-${s}`, i % 97)), {
      expectedVersion: "no-stream",
      streamType: "Order"
    })
  }
  return yield* es.head
})

/** The privacy store with the customers projection running on it. */
const withProjection = (filename: string) => {
  const store = privateStore(filename)
  const projections = Projection.layer([Customers]).pipe(
    Layer.provide(SqlProjection.layer.pipe(Layer.provideMerge(store)))
  )
  return projections.pipe(Layer.provideMerge(store))
}

/** A file with the seeded log and the projection caught up with it: each round forgets on a copy. */
async function seedForgetFile(filename: string) {
  const rt = ManagedRuntime.make(withProjection(filename))
  await rt.runPromise(Effect.gen(function*() {
    const head = yield* seedForget
    yield* Effect.flatMap(Projection.Projections, (running) => running.awaitPosition("customers", head, "30 seconds"))
  }))
  await rt.dispose()
}

/** ms of `forget("c-0")` on a copy of the seeded file, once the projection is running and caught up. */
async function forgetOnce(seeded: string, filename: string): Promise<number> {
  copy(seeded, filename)
  const rt = ManagedRuntime.make(withProjection(filename))
  const ms = await rt.runPromise(Effect.gen(function*() {
    const privacy = yield* Privacy.Privacy
    const running = yield* Projection.Projections
    const sql = yield* SqlClient.SqlClient
    const head = yield* Effect.flatMap(EventStore.EventStore, (es) => es.head)
    yield* running.awaitPosition("customers", head, "30 seconds")
    const t = performance.now()
    const report = yield* privacy.forget("c-0")
    const ms = performance.now() - t
    if (!report.destroyed || report.streams.length !== FORGET_STREAMS) {
      throw new Error(`forget: ${JSON.stringify(report)}`)
    }
    // untimed: the projection purges the subject's row on the tombstone
    yield* running.awaitPosition("customers", report.position, "30 seconds")
    const rows = yield* sql<{ id: string }>`SELECT id FROM customers ORDER BY id`
    if (rows.length !== OTHERS || rows.some((r) => r.id === "c-0")) throw new Error(`forget: rows ${JSON.stringify(rows)}`)
    return ms
  }))
  await rt.dispose()
  return ms
}

async function forgetBench(emit: Emit, freshFile: () => string, quick: boolean, rounds: number) {
  const seeded = freshFile()
  await seedForgetFile(seeded)
  // the baseline: reading the subject's 1,000 events (its 10 streams) through the plain store
  const plainRt = ManagedRuntime.make(plainStore(freshFile()))
  await plainRt.runPromise(seedForget)
  const readAll = Effect.gen(function*() {
    const es = yield* EventStore.EventStore
    let count = 0
    for (let k = 0; k < FORGET_STREAMS; k++) {
      yield* Stream.runForEachChunk(es.read(`Order-c-0-${k}`), (chunk) => Effect.sync(() => void (count += chunk.length)))
    }
    if (count !== FORGET_STREAMS * PER_STREAM) throw new Error(`read ${count} events`)
  })
  await plainRt.runPromise(readAll)
  const read = async () => {
    const t = performance.now()
    await plainRt.runPromise(readAll)
    return performance.now() - t
  }
  if (!quick) await forgetOnce(seeded, freshFile())
  const [forget, plain] = await interleave(rounds, [() => forgetOnce(seeded, freshFile()), read])
  await plainRt.dispose()
  emit("sqlite.privacy.forget", median(forget!), "ms", median(plain!))
}

// --- entry -----------------------------------------------------------------------------------------------------------

export async function privacyBenches(emit: Emit, freshFile: () => string, quick: boolean, want: (name: string) => boolean) {
  if (want("sqlite.privacy.append")) await appendBench(emit, freshFile, quick, quick ? 3 : 11, quick ? 20 : 100, quick ? 100 : 1_000)
  if (want("sqlite.privacy.load") || want("sqlite.privacy.decrypt")) {
    await loadBench(emit, freshFile, quick ? 3 : 15, 10_000)
  }
  if (want("sqlite.privacy.forget")) await forgetBench(emit, freshFile, quick, quick ? 3 : 7)
}
