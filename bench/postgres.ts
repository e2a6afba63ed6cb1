/**
 * PostgreSQL benchmarks: the library (`Postgres.layer`) against raw node-postgres doing the same work the fastest
 * correct way, on the same tables (a schema of their own per run, created by the library, dropped at the end),
 * interleaved in rounds. The raw appends take positions and transaction ids like the library's rows need them
 * (`nextval`, `pg_current_xact_id()`), in one prepared statement, without the library's allocation lock.
 * The server's `synchronous_commit` (default `on`) is the same for both and printed in the units.
 */
import * as SqlClient from "@effect/sql/SqlClient"
import { Aggregate, Event, EventStore, Projection } from "effect-eventstore"
import * as Postgres from "effect-eventstore/Postgres"
import * as SqlProjection from "effect-eventstore/SqlProjection"
import * as Effect from "effect/Effect"
import * as Either from "effect/Either"
import * as Layer from "effect/Layer"
import * as Logger from "effect/Logger"
import * as LogLevel from "effect/LogLevel"
import * as ManagedRuntime from "effect/ManagedRuntime"
import * as Redacted from "effect/Redacted"
import * as Schema from "effect/Schema"
import Pg from "pg"
import { median, STREAMS, WARMUP } from "./common.js"

type Emit = (bench: string, value: number, unit: string, baseline: number) => void

const url = process.env.DATABASE_URL ?? "postgres://postgres@127.0.0.1:5432/test"
const schemas: Array<string> = []
const freshSchema = () => {
  const name = `bench_${process.pid}_${schemas.length}_${Math.random().toString(36).slice(2, 6)}`
  schemas.push(name)
  return name
}

const quiet = Logger.minimumLogLevel(LogLevel.Warning)
const storeLayer = (schema: string, maxConnections = 10) =>
  Postgres.layer({ url: Redacted.make(url), schema, maxConnections }).pipe(Layer.provideMerge(quiet))

const rawClient = async (schema: string) => {
  const client = new Pg.Client({ connectionString: url, options: `-c search_path="${schema}"` })
  await client.connect()
  return client
}

/** A schema with the library's tables, and nothing in them. */
const emptySchema = async () => {
  const schema = freshSchema()
  const rt = ManagedRuntime.make(storeLayer(schema))
  await rt.runPromise(Effect.void)
  await rt.dispose()
  return schema
}

const Deposited = Schema.TaggedStruct("Deposited", { amount: Schema.Int })

// --- appends -------------------------------------------------------------------------------------------------------

/** The raw append of one event: the expected-version check and the insert in one prepared statement. */
const RAW_APPEND = {
  name: "raw_append",
  text: `INSERT INTO eventstore_events (position, event_id, stream_id, stream_type, version, event_type, schema_version,
  payload, metadata, tenant_id, recorded_at, tx)
SELECT nextval('eventstore_events_position'), $1, $2, 'Bench', h.v + 1, 'Deposited', 1, $3::json, NULL, NULL, $4,
  pg_current_xact_id()
FROM (SELECT COALESCE((SELECT version FROM eventstore_events WHERE stream_id = $2 ORDER BY version DESC LIMIT 1), 0) AS v) h
WHERE h.v = $5
RETURNING position`
}

/** The raw append of several events: arrays, unnested, in one prepared statement. */
const RAW_APPEND_MANY = {
  name: "raw_append_many",
  text: `INSERT INTO eventstore_events (position, event_id, stream_id, stream_type, version, event_type, schema_version,
  payload, metadata, tenant_id, recorded_at, tx)
SELECT nextval('eventstore_events_position'), u.id, $1, 'Bench', h.v + u.n, 'Deposited', 1, u.p::json, NULL, NULL, $2,
  pg_current_xact_id()
FROM (SELECT COALESCE((SELECT version FROM eventstore_events WHERE stream_id = $1 ORDER BY version DESC LIMIT 1), 0) AS v) h,
  unnest($3::text[], $4::text[]) WITH ORDINALITY AS u(id, p, n)
WHERE h.v = $5
ORDER BY u.n
RETURNING position`
}

/** The library's own append function, called by the raw driver: the same SQL, without the library around it. */
const SAME_FUNCTION = {
  name: "raw_same_function",
  text: `SELECT v, p FROM eventstore_append($1, 'Bench', $2, $3::text[], $4::text[], $5::int[], $6::text[], $7::text[],
  $8::text[], 3, $9)`
}

const sameFunction = (stream: string, ids: Array<string>, payloads: Array<string>, expected: number) => ({
  ...SAME_FUNCTION,
  values: [
    stream,
    Date.now(),
    ids,
    ids.map(() => "Deposited"),
    ids.map(() => 1),
    payloads,
    ids.map(() => null),
    ids.map(() => null),
    expected
  ]
})

async function rawAppends(count: number, perAppend: number, viaFunction = false) {
  const stream = (s: number) => `Bench-${s}`
  const client = await rawClient(await emptySchema())
  const versions = new Array<number>(STREAMS).fill(0)
  let start = performance.now()
  for (let i = -WARMUP; i < count; i++) {
    if (i === 0) start = performance.now()
    const s = (i + WARMUP) % STREAMS
    if (viaFunction) {
      const ids = Array.from({ length: perAppend }, () => crypto.randomUUID())
      const payloads = Array.from({ length: perAppend }, (_, k) => JSON.stringify({ amount: i + k }))
      const r = await client.query(sameFunction(stream(s), ids, payloads, versions[s]!))
      if (r.rows[0]?.p === null) throw new Error("raw append conflict")
    } else if (perAppend === 1) {
      const r = await client.query({
        ...RAW_APPEND,
        values: [crypto.randomUUID(), stream(s), JSON.stringify({ amount: i }), Date.now(), versions[s]]
      })
      if (r.rowCount !== 1) throw new Error("raw append conflict")
    } else {
      const ids = Array.from({ length: perAppend }, () => crypto.randomUUID())
      const payloads = Array.from({ length: perAppend }, (_, k) => JSON.stringify({ amount: i + k }))
      await client.query({ ...RAW_APPEND_MANY, values: [stream(s), Date.now(), ids, payloads, versions[s]] })
    }
    versions[s]! += perAppend
  }
  const seconds = (performance.now() - start) / 1000
  await client.end()
  return (count * perAppend) / seconds
}

async function libAppends(count: number, perAppend: number) {
  const rt = ManagedRuntime.make(storeLayer(freshSchema()))
  const seconds = await rt.runPromise(Effect.gen(function*() {
    const store = yield* EventStore.EventStore
    const versions = new Array<number>(STREAMS).fill(0)
    let start = performance.now()
    for (let i = -WARMUP; i < count; i++) {
      if (i === 0) start = performance.now()
      const s = (i + WARMUP) % STREAMS
      const events = Array.from({ length: perAppend }, (_, k) => ({ type: "Deposited", payload: { amount: i + k } }))
      const r = yield* store.append(`Bench-${s}`, events, { expectedVersion: versions[s]! })
      versions[s] = r.version
    }
    return (performance.now() - start) / 1000
  }))
  await rt.dispose()
  return (count * perAppend) / seconds
}

const interleaved = async (rounds: number, runners: Array<() => Promise<number>>) => {
  const samples = runners.map(() => [] as Array<number>)
  for (const run of runners) await run()
  for (let r = 0; r < rounds; r++) {
    for (let k = 0; k < runners.length; k++) {
      const i = (k + r) % runners.length
      samples[i]!.push(await runners[i]!())
    }
  }
  return samples.map(median)
}

/** `writers` fibers on the library (a pool as large), each appending single events to streams of its own. */
async function libConcurrent(writers: number, perWriter: number) {
  const rt = ManagedRuntime.make(storeLayer(freshSchema(), Math.max(10, writers)))
  const rate = await rt.runPromise(Effect.gen(function*() {
    const store = yield* EventStore.EventStore
    // warm: every connection of the pool has prepared the statements (and compiled the append function)
    for (let i = 0; i < WARMUP; i++) {
      yield* Effect.forEach(Array.from({ length: writers }, (_, w) => w), (w) =>
        store.append(`Warm-${w}`, [{ type: "Deposited", payload: { amount: 1 } }]), { concurrency: "unbounded" })
    }
    const start = performance.now()
    yield* Effect.forEach(Array.from({ length: writers }, (_, w) => w), (w) =>
      Effect.gen(function*() {
        for (let i = 0; i < perWriter; i++) {
          yield* store.append(`Conc-${w}-${i % 10}`, [{ type: "Deposited", payload: { amount: i } }], {
            expectedVersion: Math.floor(i / 10)
          })
        }
      }), { concurrency: "unbounded", discard: true })
    return (writers * perWriter) / ((performance.now() - start) / 1000)
  }))
  await rt.dispose()
  return rate
}

/** `writers` raw clients, each appending single events to streams of its own, all at once. */
async function rawConcurrent(writers: number, perWriter: number, viaFunction = false) {
  const schema = await emptySchema()
  const clients = await Promise.all(Array.from({ length: writers }, () => rawClient(schema)))
  await Promise.all(clients.map(async (client, w) => {
    for (let i = 0; i < WARMUP; i++) {
      await client.query({ ...RAW_APPEND, values: [crypto.randomUUID(), `Warm-${w}`, "{}", Date.now(), i] })
    }
  }))
  const start = performance.now()
  await Promise.all(clients.map(async (client, w) => {
    for (let i = 0; i < perWriter; i++) {
      await client.query(
        viaFunction
          ? sameFunction(`Conc-${w}-${i % 10}`, [crypto.randomUUID()], [JSON.stringify({ amount: i })], Math.floor(i / 10))
          : {
            ...RAW_APPEND,
            values: [crypto.randomUUID(), `Conc-${w}-${i % 10}`, JSON.stringify({ amount: i }), Date.now(), Math.floor(i / 10)]
          }
      )
    }
  }))
  const rate = (writers * perWriter) / ((performance.now() - start) / 1000)
  await Promise.all(clients.map((c) => c.end()))
  return rate
}

/** One raw client committing `group` single-event appends per transaction: what group commit could reach. */
async function rawGrouped(group: number, total: number) {
  const client = await rawClient(await emptySchema())
  const start = performance.now()
  for (let i = 0; i < total; i += group) {
    await client.query("BEGIN")
    for (let k = 0; k < group; k++) {
      await client.query({
        ...RAW_APPEND,
        values: [crypto.randomUUID(), `Conc-${k}-${(i / group) % 10}`, JSON.stringify({ amount: i }), Date.now(), Math.floor(i / group / 10)]
      })
    }
    await client.query("COMMIT")
  }
  const rate = total / ((performance.now() - start) / 1000)
  await client.end()
  return rate
}

// --- loads and commands --------------------------------------------------------------------------------------------

const Ledger = Aggregate.make({
  name: "Ledger",
  events: Event.registry([Deposited]),
  decider: {
    initialState: 0,
    decide: (_: never, __: number) => Effect.succeed([]),
    evolve: (state: number, event: typeof Deposited.Type) => state + event.amount
  }
})

const PAGE = 512

async function loadBench(n: number, runs: number) {
  const schema = freshSchema()
  const rt = ManagedRuntime.make(Aggregate.layer(Ledger).pipe(Layer.provideMerge(storeLayer(schema))))
  await rt.runPromise(Effect.gen(function*() {
    const store = yield* EventStore.EventStore
    for (let v = 0; v < n; v += 1000) {
      yield* store.append(
        Ledger.streamId("big"),
        Array.from({ length: Math.min(1000, n - v) }, (_, i) => ({ type: "Deposited", payload: { amount: (v + i) % 7 } })),
        { expectedVersion: v }
      )
    }
  }))
  const client = await rawClient(schema)
  // the raw load: the fold's columns in pages of arrays, JSON.parse and the same fold
  const rawLoad = async () => {
    let state = 0
    let version = 0
    for (;;) {
      const { rows } = await client.query({
        name: "raw_load",
        text: `SELECT version, event_type, payload::text FROM eventstore_events WHERE stream_id = $1 AND version > $2
          ORDER BY version LIMIT $3`,
        values: [Ledger.streamId("big"), version, PAGE],
        rowMode: "array"
      })
      for (const row of rows as Array<[string, string, string]>) {
        if (row[1] === "Deposited") state += (JSON.parse(row[2]) as { amount: number }).amount
        version = Number(row[0])
      }
      if (rows.length < PAGE) break
    }
    return { state, version }
  }
  const expected = await rawLoad()
  const got = await rt.runPromise(Ledger.load("big"))
  if (got.state !== expected.state || got.version !== n) throw new Error(`load mismatch: ${JSON.stringify(got)}`)
  const lib: Array<number> = []
  const raw: Array<number> = []
  for (let r = 0; r < runs; r++) {
    const order = [
      async () => {
        const t = performance.now()
        await rawLoad()
        raw.push(performance.now() - t)
      },
      async () => {
        const t = performance.now()
        await rt.runPromise(Ledger.load("big"))
        lib.push(performance.now() - t)
      }
    ]
    for (let k = 0; k < order.length; k++) await order[(k + r) % order.length]!()
  }
  await client.end()
  await rt.dispose()
  return { lib: median(lib), raw: median(raw) }
}

const Cents = Schema.Int.pipe(Schema.positive(), Schema.brand("Cents"))
const AccountOpened = Schema.TaggedStruct("AccountOpened", { owner: Schema.String })
const MoneyDeposited = Schema.TaggedStruct("MoneyDeposited", { amount: Cents })
type AccountEvent = typeof AccountOpened.Type | typeof MoneyDeposited.Type
interface Account {
  readonly open: boolean
  readonly balance: number
}
class AccountNotOpen extends Schema.TaggedError<AccountNotOpen>()("AccountNotOpen", {}) {}
const Accounts = Aggregate.make({
  name: "Account",
  events: Event.registry([AccountOpened, MoneyDeposited]),
  decider: {
    initialState: { open: false, balance: 0 } as Account,
    decide: (command: { readonly amount: number }, state: Account) =>
      state.open
        ? Either.right([MoneyDeposited.make({ amount: Cents.make(command.amount) })])
        : Either.left(new AccountNotOpen()),
    evolve: (state: Account, event: AccountEvent): Account =>
      event._tag === "AccountOpened" ? { open: true, balance: 0 } : { ...state, balance: state.balance + event.amount }
  }
})

/** A schema with `accounts` streams of 10 events (opened, 9 deposits). */
async function seedAccounts(accounts: number) {
  const schema = freshSchema()
  const rt = ManagedRuntime.make(storeLayer(schema))
  await rt.runPromise(Effect.gen(function*() {
    const store = yield* EventStore.EventStore
    yield* Effect.forEach(Array.from({ length: accounts }, (_, a) => a), (a) =>
      store.append(Accounts.streamId(`a${a}`), [
        { type: "AccountOpened", payload: { owner: `o${a}` } },
        ...Array.from({ length: 9 }, (_, v) => ({ type: "MoneyDeposited", payload: { amount: v + 2 } }))
      ]), { concurrency: 8, discard: true })
  }))
  await rt.dispose()
  return schema
}

/** Raw: read the stream's fold columns, fold, decide, then the conditional insert at the version read. */
async function rawCommands(accounts: number) {
  const client = await rawClient(await seedAccounts(WARMUP + accounts))
  const deposit = async (streamId: string, amount: number) => {
    const { rows } = await client.query({
      name: "raw_fold",
      text: `SELECT version, event_type, payload::text FROM eventstore_events WHERE stream_id = $1 AND version > $2
        ORDER BY version LIMIT ${PAGE}`,
      values: [streamId, 0],
      rowMode: "array"
    })
    let state: Account = { open: false, balance: 0 }
    let version = 0
    for (const [v, type, payload] of rows as Array<[string, string, string]>) {
      const event = JSON.parse(payload) as { amount: number }
      state = type === "AccountOpened" ? { open: true, balance: 0 } : { ...state, balance: state.balance + event.amount }
      version = Number(v)
    }
    if (!state.open) throw new Error("account not open")
    const r = await client.query({
      ...RAW_APPEND,
      values: [crypto.randomUUID(), streamId, JSON.stringify({ amount }), Date.now(), version]
    })
    if (r.rowCount !== 1) throw new Error("raw command conflict")
  }
  for (let a = 0; a < WARMUP; a++) await deposit(Accounts.streamId(`a${a}`), 5)
  const start = performance.now()
  for (let a = WARMUP; a < WARMUP + accounts; a++) await deposit(Accounts.streamId(`a${a}`), 5)
  const rate = accounts / ((performance.now() - start) / 1000)
  await client.end()
  return rate
}

async function libCommands(accounts: number) {
  const schema = await seedAccounts(WARMUP + accounts)
  const rt = ManagedRuntime.make(Aggregate.layer(Accounts).pipe(Layer.provideMerge(storeLayer(schema))))
  const rate = await rt.runPromise(Effect.gen(function*() {
    for (let a = 0; a < WARMUP; a++) yield* Accounts.handle(`a${a}`, { amount: 5 })
    const start = performance.now()
    for (let a = WARMUP; a < WARMUP + accounts; a++) {
      const handled = yield* Accounts.handle(`a${a}`, { amount: 5 })
      if (handled.version !== 11) throw new Error(`command: version ${handled.version}`)
    }
    return accounts / ((performance.now() - start) / 1000)
  }))
  await rt.dispose()
  return rate
}

// --- projections ---------------------------------------------------------------------------------------------------

const BATCH = 500

const Balances = Projection.sql({
  name: "balances",
  events: Event.registry([Deposited]),
  init: [Effect.flatMap(SqlClient.SqlClient, (sql) =>
    sql`CREATE TABLE balances (id TEXT PRIMARY KEY, balance BIGINT NOT NULL)`)],
  handlers: {
    Deposited: (event, sql) =>
      sql`INSERT INTO balances (id, balance) VALUES (${event.streamId}, ${event.payload.amount})
        ON CONFLICT (id) DO UPDATE SET balance = balances.balance + excluded.balance`
  }
})

/** `n` Deposited events over 1000 streams, in appends of 100. */
async function seedLog(n: number) {
  const schema = freshSchema()
  const rt = ManagedRuntime.make(storeLayer(schema))
  await rt.runPromise(Effect.gen(function*() {
    const store = yield* EventStore.EventStore
    yield* Effect.forEach(Array.from({ length: n / 100 }, (_, i) => i), (i) =>
      store.append(
        `Account-${i % 1000}`,
        Array.from({ length: 100 }, (_, k) => ({ type: "Deposited", payload: { amount: (i * 100 + k) % 97 } }))
      ), { concurrency: 4, discard: true })
  }))
  await rt.dispose()
  return schema
}

/** The read model and both checkpoints gone: each run starts from nothing. */
const resetModel = async (schema: string) => {
  const client = await rawClient(schema)
  await client.query("DROP TABLE IF EXISTS balances")
  await client.query("DROP TABLE IF EXISTS raw_checkpoints")
  await client.query("DELETE FROM eventstore_projections").catch(() => {})
  await client.query("DELETE FROM eventstore_projection_migrations").catch(() => {})
  await client.end()
}

/**
 * Raw catch-up: pages of the log (below the running-transaction horizon, as any correct reader must), and per page
 * one transaction: a prepared upsert per event and the checkpoint.
 */
async function rawCatchup(schema: string) {
  await resetModel(schema)
  const start = performance.now()
  const client = await rawClient(schema)
  await client.query("CREATE TABLE balances (id TEXT PRIMARY KEY, balance BIGINT NOT NULL)")
  await client.query("CREATE TABLE raw_checkpoints (name TEXT PRIMARY KEY, position BIGINT NOT NULL)")
  await client.query("INSERT INTO raw_checkpoints VALUES ('balances', 0)")
  let position = 0
  let count = 0
  for (;;) {
    const { rows } = await client.query({
      name: "raw_page",
      text: `SELECT position, stream_id, event_type, payload::text FROM eventstore_events
        WHERE position > $1 AND tx < pg_snapshot_xmin(pg_current_snapshot()) ORDER BY position LIMIT ${BATCH}`,
      values: [position],
      rowMode: "array"
    })
    if (rows.length === 0) break
    await client.query("BEGIN")
    for (const [, stream, type, payload] of rows as Array<[string, string, string, string]>) {
      if (type !== "Deposited") continue
      await client.query({
        name: "raw_upsert",
        text: `INSERT INTO balances (id, balance) VALUES ($1, $2)
          ON CONFLICT (id) DO UPDATE SET balance = balances.balance + excluded.balance`,
        values: [stream, (JSON.parse(payload) as { amount: number }).amount]
      })
    }
    const last = Number((rows[rows.length - 1] as Array<string>)[0])
    await client.query({ name: "raw_checkpoint", text: "UPDATE raw_checkpoints SET position = $1 WHERE name = 'balances'", values: [last] })
    await client.query("COMMIT")
    position = last
    count += rows.length
  }
  const rate = (count * 1000) / (performance.now() - start)
  await client.end()
  return rate
}

async function libCatchup(schema: string, n: number) {
  await resetModel(schema)
  const rt = ManagedRuntime.make(SqlProjection.layer.pipe(Layer.provideMerge(storeLayer(schema))))
  const rate = await rt.runPromise(Effect.scoped(Effect.gen(function*() {
    const store = yield* EventStore.EventStore
    const head = yield* store.head
    const start = performance.now()
    const projections = yield* Projection.start([Balances], { batchSize: BATCH })
    yield* projections.awaitPosition("balances", head, "10 minutes")
    return (n * 1000) / (performance.now() - start)
  })))
  await rt.dispose()
  return rate
}

// --- all of them ---------------------------------------------------------------------------------------------------

export async function postgresBenches(emit: Emit, quick: boolean, want: (name: string) => boolean) {
  const probe = new Pg.Client({ connectionString: url })
  try {
    await probe.connect()
  } catch (error) {
    if (process.env.CI) throw error
    console.error(`postgres benches skipped: ${String(error)}`)
    return
  }
  const synchronous = (await probe.query("SHOW synchronous_commit")).rows[0].synchronous_commit as string
  await probe.end()
  const sync = `synchronous_commit=${synchronous}`
  try {
    if (want("pg.append.single")) {
      const count = quick ? 200 : 1000
      const [lib, raw, same] = await interleaved(quick ? 1 : 7, [
        () => libAppends(count, 1),
        () => rawAppends(count, 1),
        () => rawAppends(count, 1, true)
      ])
      emit("pg.append.single", lib!, `events/s (${sync})`, raw!)
      emit("pg.append.single.sameFunction", lib!, "events/s (vs the raw driver calling eventstore_append)", same!)
    }
    if (want("pg.append.batch100")) {
      const count = quick ? 10 : 50
      const [lib, raw] = await interleaved(quick ? 1 : 7, [() => libAppends(count, 100), () => rawAppends(count, 100)])
      emit("pg.append.batch100", lib!, `events/s (${sync})`, raw!)
    }
    if (want("pg.append.concurrent")) {
      const per = quick ? 50 : 300
      for (const writers of quick ? [8] : [1, 8, 32]) {
        const [lib, raw, same] = await interleaved(quick ? 1 : 5, [
          () => libConcurrent(writers, Math.ceil((per * 8) / writers)),
          () => rawConcurrent(writers, Math.ceil((per * 8) / writers)),
          () => rawConcurrent(writers, Math.ceil((per * 8) / writers), true)
        ])
        emit(`pg.append.concurrent${writers}`, lib!, `appends/s (${writers} fibers vs ${writers} raw clients, ${sync})`, raw!)
        emit(
          `pg.append.concurrent${writers}.sameFunction`,
          lib!,
          `appends/s (vs ${writers} raw clients calling eventstore_append)`,
          same!
        )
        if (writers === 8) {
          const grouped = median(await Promise.all([rawGrouped(8, per * 8)]))
          emit("pg.append.concurrent8.grouped", lib!, "appends/s (vs one raw client, 8 appends per transaction)", grouped)
        }
      }
    }
    if (want("pg.load")) {
      const n = quick ? 2_000 : 10_000
      const { lib, raw } = await loadBench(n, quick ? 3 : 15)
      emit(`pg.load.${n / 1000}k`, lib, "ms", raw)
    }
    if (want("pg.command.single")) {
      const accounts = quick ? 100 : 500
      const [lib, raw] = await interleaved(quick ? 1 : 5, [() => libCommands(accounts), () => rawCommands(accounts)])
      emit("pg.command.single", lib!, `commands/s (${sync})`, raw!)
    }
    if (want("pg.projection.catchup")) {
      const n = quick ? 10_000 : 100_000
      const schema = await seedLog(n)
      const [lib, raw] = await interleaved(quick ? 1 : 3, [() => libCatchup(schema, n), () => rawCatchup(schema)])
      emit("pg.projection.catchup", lib!, `events/s (${n / 1000}k events)`, raw!)
    }
  } finally {
    const client = new Pg.Client({ connectionString: url })
    await client.connect()
    for (const schema of schemas) await client.query(`DROP SCHEMA IF EXISTS "${schema}" CASCADE`)
    await client.end()
  }
}
