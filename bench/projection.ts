/**
 * Projection benchmarks: a one-table upsert read model (`balances`) on the event store's SQLite file, against raw
 * better-sqlite3 doing the same work the fastest correct way: pages of the log by position as arrays, `JSON.parse`,
 * one prepared upsert per event and the checkpoint update, one transaction per batch of the same size.
 */
import * as SqlClient from "@effect/sql/SqlClient"
import Database from "better-sqlite3"
import { Event, EventStore, Projection } from "effect-eventstore"
import * as Sqlite from "effect-eventstore/Sqlite"
import * as SqlProjection from "effect-eventstore/SqlProjection"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Logger from "effect/Logger"
import * as LogLevel from "effect/LogLevel"
import * as ManagedRuntime from "effect/ManagedRuntime"
import * as Schema from "effect/Schema"
import * as fs from "node:fs"
import { INSERT, median, percentile, STREAMS, WARMUP } from "./common.js"

const BATCH = 500

const Deposited = Schema.TaggedStruct("Deposited", { amount: Schema.Int })
const Events = Event.registry([Deposited])

const createBalances = Effect.flatMap(SqlClient.SqlClient, (sql) =>
  sql`CREATE TABLE balances (id TEXT PRIMARY KEY, balance INTEGER NOT NULL)`)

/** Statement handlers: the shape the library runs in one synchronous transaction per batch. */
const Balances = Projection.sql({
  name: "balances",
  events: Events,
  init: [createBalances],
  handlers: {
    Deposited: (event, sql) =>
      sql`INSERT INTO balances (id, balance) VALUES (${event.streamId}, ${event.payload.amount})
        ON CONFLICT (id) DO UPDATE SET balance = balance + excluded.balance`
  }
})

/** The same read model with handlers that are Effects on the `SqlClient` (each statement through @effect/sql). */
const BalancesEffect = Projection.make({
  name: "balances",
  events: Events,
  init: [createBalances],
  handlers: {
    Deposited: (event) =>
      Effect.flatMap(SqlClient.SqlClient, (sql) =>
        sql`INSERT INTO balances (id, balance) VALUES (${event.streamId}, ${event.payload.amount})
          ON CONFLICT (id) DO UPDATE SET balance = balance + excluded.balance`)
  }
})

const storeLayer = (filename: string) =>
  SqlProjection.layer.pipe(
    Layer.provideMerge(Sqlite.layer({ filename })),
    // the harness prints JSON lines only
    Layer.provideMerge(Logger.minimumLogLevel(LogLevel.Warning))
  )

/** A file with `n` Deposited events over 1000 streams, written in appends of 1000. */
export async function seedLog(filename: string, n: number) {
  const rt = ManagedRuntime.make(Sqlite.layer({ filename }))
  await rt.runPromise(Effect.gen(function*() {
    const store = yield* EventStore.EventStore
    for (let v = 0; v < n; v += 1000) {
      const size = Math.min(1000, n - v)
      for (let s = 0; s < size; s += 100) {
        yield* store.append(
          `Account-${(v / 100 + s / 100) % 1000}`,
          Array.from({ length: 100 }, (_, i) => ({ type: "Deposited", payload: { amount: (v + s + i) % 97 } }))
        )
      }
    }
  }))
  await rt.dispose()
}

const copy = (from: string, to: string) => {
  fs.copyFileSync(from, to)
  for (const ext of ["-wal", "-shm"]) if (fs.existsSync(from + ext)) fs.copyFileSync(from + ext, to + ext)
}

/** The raw catch-up: events/s. */
function rawCatchup(filename: string): number {
  const start = performance.now()
  const db = new Database(filename)
  db.pragma("journal_mode = WAL")
  db.pragma("synchronous = FULL")
  db.exec("CREATE TABLE IF NOT EXISTS raw_checkpoints (name TEXT PRIMARY KEY, position INTEGER NOT NULL)")
  db.exec("CREATE TABLE IF NOT EXISTS balances (id TEXT PRIMARY KEY, balance INTEGER NOT NULL)")
  db.prepare("INSERT OR IGNORE INTO raw_checkpoints VALUES ('balances', 0)").run()
  const page = db.prepare(
    `SELECT position, stream_id, event_type, payload FROM eventstore_events WHERE position > ? ORDER BY position LIMIT ${BATCH}`
  ).raw(true)
  const upsert = db.prepare(
    "INSERT INTO balances (id, balance) VALUES (?, ?) ON CONFLICT (id) DO UPDATE SET balance = balance + excluded.balance"
  )
  const checkpoint = db.prepare("UPDATE raw_checkpoints SET position = ? WHERE name = 'balances'")
  const apply = db.transaction((rows: Array<[number, string, string, string]>) => {
    for (const [, stream, type, payload] of rows) {
      if (type === "Deposited") upsert.run(stream, (JSON.parse(payload) as { amount: number }).amount)
    }
    checkpoint.run(rows[rows.length - 1]![0])
  })
  let position = 0
  let count = 0
  for (;;) {
    const rows = page.all(position) as Array<[number, string, string, string]>
    if (rows.length === 0) break
    apply(rows)
    position = rows[rows.length - 1]![0]
    count += rows.length
  }
  const elapsed = performance.now() - start
  db.close()
  return (count * 1000) / elapsed
}

/** The library's catch-up: events/s from the start of the projection to its reaching the head. */
async function libCatchup(filename: string, effectHandlers = false): Promise<number> {
  const rt = ManagedRuntime.make(storeLayer(filename))
  const rate = await rt.runPromise(Effect.scoped(Effect.gen(function*() {
    const store = yield* EventStore.EventStore
    const head = yield* store.head
    const start = performance.now()
    const projections = yield* Projection.start([effectHandlers ? BalancesEffect : Balances], { batchSize: BATCH })
    yield* projections.awaitPosition("balances", head, "10 minutes")
    return (head * 1000) / (performance.now() - start)
  })))
  await rt.dispose()
  return rate
}


export async function catchupBench(
  emit: (bench: string, value: number, unit: string, baseline: number) => void,
  freshFile: () => string,
  n: number,
  rounds: number
) {
  const seeded = freshFile()
  await seedLog(seeded, n)
  const runners = [
    (f: string) => libCatchup(f),
    (f: string) => Promise.resolve(rawCatchup(f)),
    (f: string) => libCatchup(f, true)
  ]
  const samples = runners.map(() => [] as Array<number>)
  for (let r = 0; r < rounds; r++) {
    for (let k = 0; k < runners.length; k++) {
      const i = (k + r) % runners.length
      const f = freshFile()
      copy(seeded, f)
      samples[i]!.push(await runners[i]!(f))
    }
  }
  emit(`sqlite.projection.catchup`, median(samples[0]!), `events/s (${n / 1000}k events)`, median(samples[1]!))
  emit(`sqlite.projection.catchup.effectHandlers`, median(samples[2]!), `events/s (${n / 1000}k events)`, median(samples[1]!))
}

/**
 * Live lag: single appends at a steady pace while the projection is live; for each, the time from the append's
 * acknowledgement to the projection having handled it (its commit included). Baseline: raw better-sqlite3's
 * transaction for one event (read it, upsert, checkpoint), the least a projector does after being woken.
 */
export async function lagBench(
  emit: (bench: string, value: number, unit: string, baseline: number) => void,
  freshFile: () => string,
  appends: number
) {
  const filename = freshFile()
  const rt = ManagedRuntime.make(storeLayer(filename))
  const lags = await rt.runPromise(Effect.scoped(Effect.gen(function*() {
    const store = yield* EventStore.EventStore
    const projections = yield* Projection.start([Balances])
    yield* projections.awaitPosition("balances", 0, "10 seconds")
    const lags: Array<number> = []
    for (let i = 0; i < appends; i++) {
      const r = yield* store.append(`Account-${i % 50}`, [{ type: "Deposited", payload: { amount: i % 97 } }])
      const acked = performance.now()
      yield* projections.awaitPosition("balances", r.position, "10 seconds")
      lags.push(performance.now() - acked)
      yield* Effect.sleep("2 millis")
    }
    return lags
  })))
  await rt.dispose()

  const db = new Database(filename)
  db.pragma("synchronous = FULL")
  db.exec("CREATE TABLE IF NOT EXISTS raw_checkpoints (name TEXT PRIMARY KEY, position INTEGER NOT NULL)")
  db.prepare("INSERT OR REPLACE INTO raw_checkpoints VALUES ('balances', 0)").run()
  const read = db.prepare(
    "SELECT position, stream_id, event_type, payload FROM eventstore_events WHERE position > ? ORDER BY position LIMIT 1"
  ).raw(true)
  const upsert = db.prepare(
    "INSERT INTO balances (id, balance) VALUES (?, ?) ON CONFLICT (id) DO UPDATE SET balance = balance + excluded.balance"
  )
  const checkpoint = db.prepare("UPDATE raw_checkpoints SET position = ? WHERE name = 'balances'")
  const one = db.transaction((after: number) => {
    const [position, stream, , payload] = read.get(after) as [number, string, string, string]
    upsert.run(stream, (JSON.parse(payload) as { amount: number }).amount)
    checkpoint.run(position)
  })
  const raw: Array<number> = []
  for (let i = 0; i < appends; i++) {
    const start = performance.now()
    one(i)
    raw.push(performance.now() - start)
  }
  db.close()
  emit("sqlite.projection.lag.p50", percentile(lags, 0.5), "ms", percentile(raw, 0.5))
  emit("sqlite.projection.lag.p99", percentile(lags, 0.99), "ms", percentile(raw, 0.99))
}


/** Raw: per append, one transaction with the event's INSERT and the read model's upsert. Appends/s. */
async function rawInline(filename: string, count: number): Promise<number> {
  const rt = ManagedRuntime.make(storeLayer(filename))
  await rt.runPromise(Effect.void)
  await rt.dispose()
  const db = new Database(filename)
  db.pragma("journal_mode = WAL")
  db.pragma("synchronous = FULL")
  db.exec("CREATE TABLE balances (id TEXT PRIMARY KEY, balance INTEGER NOT NULL)")
  const insert = db.prepare(INSERT)
  const upsert = db.prepare(
    "INSERT INTO balances (id, balance) VALUES (?, ?) ON CONFLICT (id) DO UPDATE SET balance = balance + excluded.balance"
  )
  const versions = new Array<number>(STREAMS).fill(0)
  const append = db.transaction((s: number, i: number) => {
    insert.run(crypto.randomUUID(), `Account-${s}`, "Account", ++versions[s]!, "Deposited", JSON.stringify({ amount: i }), Date.now())
    upsert.run(`Account-${s}`, i)
  })
  let start = performance.now()
  for (let i = -WARMUP; i < count; i++) {
    if (i === 0) start = performance.now()
    append((i + WARMUP) % STREAMS, i)
  }
  const rate = (count * 1000) / (performance.now() - start)
  db.close()
  return rate
}

/** The library: single appends with the balances projection inline. Appends/s. */
async function libInline(filename: string, count: number): Promise<number> {
  const rt = ManagedRuntime.make(Projection.layerInline([Balances]).pipe(Layer.provideMerge(storeLayer(filename))))
  const rate = await rt.runPromise(Effect.gen(function*() {
    const store = yield* EventStore.EventStore
    const versions = new Array<number>(STREAMS).fill(0)
    let start = performance.now()
    for (let i = -WARMUP; i < count; i++) {
      if (i === 0) start = performance.now()
      const s = (i + WARMUP) % STREAMS
      const r = yield* store.append(`Account-${s}`, [{ type: "Deposited", payload: { amount: i } }], {
        expectedVersion: versions[s]!
      })
      versions[s] = r.version
    }
    return (count * 1000) / (performance.now() - start)
  }))
  await rt.dispose()
  return rate
}

export async function inlineBench(
  emit: (bench: string, value: number, unit: string, baseline: number) => void,
  freshFile: () => string,
  rounds: number,
  count: number
) {
  const lib: Array<number> = []
  const raw: Array<number> = []
  await libInline(freshFile(), count)
  await rawInline(freshFile(), count)
  for (let r = 0; r < rounds; r++) {
    if (r % 2 === 0) {
      lib.push(await libInline(freshFile(), count))
      raw.push(await rawInline(freshFile(), count))
    } else {
      raw.push(await rawInline(freshFile(), count))
      lib.push(await libInline(freshFile(), count))
    }
  }
  emit("sqlite.append.inline", median(lib), "appends/s", median(raw))
}
