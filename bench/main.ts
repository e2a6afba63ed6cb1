/**
 * The benchmark harness: each bench runs the library and raw better-sqlite3 doing the same work on the same schema,
 * interleaved in rounds so that machine noise hits both, and prints one JSON line:
 *   {"bench", "value", "unit", "baseline", "ratio"}   ratio = value / baseline
 *
 *   npm run bench             full sizes (the numbers issues quote)
 *   npm run bench -- --quick  small sizes, for CI (well under 60 s)
 */
import Database from "better-sqlite3"
import { Aggregate, Event, EventStore, Snapshot } from "effect-eventstore"
import * as Sqlite from "effect-eventstore/Sqlite"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as ManagedRuntime from "effect/ManagedRuntime"
import * as Schedule from "effect/Schedule"
import * as Schema from "effect/Schema"
import { spawnSync } from "node:child_process"
import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"
import { fileURLToPath } from "node:url"

const args = process.argv.slice(2)
const quick = args.includes("--quick")
/** `--only=<prefix>` runs the benches whose name starts with it. */
const only = args.find((a) => a.startsWith("--only="))?.slice("--only=".length)
const want = (name: string) => only === undefined || name.startsWith(only)
const dir = fs.mkdtempSync(path.join(os.tmpdir(), "effect-eventstore-bench-"))
let files = 0
const freshFile = () => path.join(dir, `b${files++}.db`)

const emit = (bench: string, value: number, unit: string, baseline: number) => {
  const round = (n: number) => Math.round(n * 1000) / 1000
  console.log(JSON.stringify({ bench, value: round(value), unit, baseline: round(baseline), ratio: round(value / baseline) }))
}

// --- the domain the load benchmarks fold ---------------------------------------------------------------------------
const Deposited = Schema.TaggedStruct("Deposited", { amount: Schema.Int })
const ledgerOptions = {
  name: "Ledger",
  events: Event.registry([Deposited]),
  decider: {
    initialState: 0,
    decide: (_: never, __: number) => Effect.succeed([]),
    evolve: (state: number, event: typeof Deposited.Type) => state + event.amount
  }
}
const Ledger = Aggregate.make(ledgerOptions)

// --- helpers -------------------------------------------------------------------------------------------------------
/** A library runtime on a fresh (or given) SQLite file, durable unless asked. */
const libRuntime = (filename: string) =>
  ManagedRuntime.make(
    Layer.mergeAll(Aggregate.layer(Ledger), Aggregate.layer(Counter)).pipe(
      Layer.provideMerge(Sqlite.layer({ filename }) as Layer.Layer<EventStore.EventStore | Snapshot.SnapshotStore>)
    )
  )

/** A raw connection on a file whose schema the library created, configured like the library's. */
const rawDb = async (filename: string) => {
  const rt = libRuntime(filename)
  await rt.runPromise(Effect.void)
  await rt.dispose()
  const db = new Database(filename)
  db.pragma("journal_mode = WAL")
  db.pragma("synchronous = FULL")
  db.pragma("busy_timeout = 5000")
  return db
}

const INSERT = `INSERT INTO eventstore_events (event_id, stream_id, stream_type, version, event_type, schema_version,
  payload, metadata, tenant_id, recorded_at) VALUES (?, ?, ?, ?, ?, 1, ?, NULL, NULL, ?)`

const median = (xs: ReadonlyArray<number>) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!

// --- appends -------------------------------------------------------------------------------------------------------
const STREAMS = 100

async function rawAppends(count: number, perAppend: number): Promise<number> {
  const db = await rawDb(freshFile())
  const insert = db.prepare(INSERT)
  const versions = new Array<number>(STREAMS).fill(0)
  const appendMany = db.transaction((s: number, i: number) => {
    for (let k = 0; k < perAppend; k++) {
      insert.run(crypto.randomUUID(), `Bench-${s}`, "Bench", ++versions[s]!, "Deposited", JSON.stringify({ amount: i + k }), Date.now())
    }
  })
  const start = performance.now()
  for (let i = 0; i < count; i++) {
    const s = i % STREAMS
    if (perAppend === 1) {
      insert.run(crypto.randomUUID(), `Bench-${s}`, "Bench", ++versions[s]!, "Deposited", JSON.stringify({ amount: i }), Date.now())
    } else {
      appendMany(s, i)
    }
  }
  const seconds = (performance.now() - start) / 1000
  db.close()
  return (count * perAppend) / seconds
}

async function libAppends(count: number, perAppend: number): Promise<number> {
  const rt = libRuntime(freshFile())
  const seconds = await rt.runPromise(Effect.gen(function*() {
    const store = yield* EventStore.EventStore
    const versions = new Array<number>(STREAMS).fill(0)
    const start = performance.now()
    for (let i = 0; i < count; i++) {
      const s = i % STREAMS
      const events = Array.from({ length: perAppend }, (_, k) => ({ type: "Deposited", payload: { amount: i + k } }))
      const r = yield* store.append(`Bench-${s}`, events, { expectedVersion: versions[s]! })
      versions[s] = r.version
    }
    return (performance.now() - start) / 1000
  }))
  await rt.dispose()
  return (count * perAppend) / seconds
}

/**
 * Short interleaved rounds (alternating who goes first), after one warm-up round each; the medians are reported, so
 * that a burst of noise from the machine's neighbours in one round does not decide the ratio.
 */
async function appendBench(name: string, rounds: number, count: number, perAppend: number) {
  await rawAppends(count, perAppend)
  await libAppends(count, perAppend)
  const lib: Array<number> = []
  const raw: Array<number> = []
  for (let r = 0; r < rounds; r++) {
    if (r % 2 === 0) {
      raw.push(await rawAppends(count, perAppend))
      lib.push(await libAppends(count, perAppend))
    } else {
      lib.push(await libAppends(count, perAppend))
      raw.push(await rawAppends(count, perAppend))
    }
  }
  emit(name, median(lib), "events/s", median(raw))
}

// --- concurrency -------------------------------------------------------------------------------------------------
const percentile = (xs: ReadonlyArray<number>, p: number) => [...xs].sort((a, b) => a - b)[Math.floor(p * (xs.length - 1))]!

/** `fibers` fibers, each appending single events to its own stream; appends/s and every append's latency (ms). */
async function libConcurrent(fibers: number, perFiber: number) {
  const rt = libRuntime(freshFile())
  const out = await rt.runPromise(Effect.gen(function*() {
    const store = yield* EventStore.EventStore
    const latencies: Array<number> = []
    const start = performance.now()
    yield* Effect.forEach(Array.from({ length: fibers }, (_, f) => f), (f) =>
      Effect.gen(function*() {
        for (let i = 0; i < perFiber; i++) {
          const t = performance.now()
          yield* store.append(`Conc-${f}`, [{ type: "Deposited", payload: { amount: i } }], { expectedVersion: i })
          latencies.push(performance.now() - t)
        }
      }), { concurrency: "unbounded", discard: true })
    return { rate: (fibers * perFiber) / ((performance.now() - start) / 1000), latencies }
  }))
  await rt.dispose()
  return out
}

/** Raw single-insert commits: throughput and per-insert latency (ms), the baseline for the concurrent benches. */
async function rawSingles(count: number) {
  const db = await rawDb(freshFile())
  const insert = db.prepare(INSERT)
  const latencies: Array<number> = []
  const start = performance.now()
  for (let i = 0; i < count; i++) {
    const t = performance.now()
    insert.run(crypto.randomUUID(), `Conc-${i % 32}`, "Conc", Math.floor(i / 32) + 1, "Deposited", JSON.stringify({ amount: i }), Date.now())
    latencies.push(performance.now() - t)
  }
  const rate = count / ((performance.now() - start) / 1000)
  db.close()
  return { rate, latencies }
}

async function concurrentBench(rounds: number, perFiber: number) {
  await libConcurrent(32, Math.min(perFiber, 20))
  const lib: Array<Awaited<ReturnType<typeof libConcurrent>>> = []
  const raw: Array<Awaited<ReturnType<typeof rawSingles>>> = []
  for (let r = 0; r < rounds; r++) {
    raw.push(await rawSingles(Math.min(32 * perFiber, 2000)))
    lib.push(await libConcurrent(32, perFiber))
  }
  const libLat = lib.flatMap((x) => x.latencies)
  const rawLat = raw.flatMap((x) => x.latencies)
  emit("sqlite.append.concurrent32", median(lib.map((x) => x.rate)), "appends/s", median(raw.map((x) => x.rate)))
  emit("sqlite.append.concurrent32.p50", percentile(libLat, 0.5), "ms", percentile(rawLat, 0.5))
  emit("sqlite.append.concurrent32.p99", percentile(libLat, 0.99), "ms", percentile(rawLat, 0.99))
}

/** 32 fibers running commands on 4 hot aggregates through the handler: commands/s and retries. */
const Counter = Aggregate.make({
  name: "Hot",
  events: Event.registry([Deposited]),
  decider: {
    initialState: 0,
    decide: (amount: number, _state: number) => Effect.succeed([Deposited.make({ amount })]),
    evolve: (state: number, event: typeof Deposited.Type) => state + event.amount
  },
  retry: Schedule.intersect(Schedule.jittered(Schedule.exponential("1 millis", 1.5)), Schedule.recurs(100))
})

async function libContended(perFiber: number) {
  const rt = libRuntime(freshFile())
  const out = await rt.runPromise(Effect.gen(function*() {
    let retries = 0
    const start = performance.now()
    yield* Effect.forEach(Array.from({ length: 32 }, (_, f) => f), (f) =>
      Effect.gen(function*() {
        for (let i = 0; i < perFiber; i++) retries += (yield* Counter.handle(`h${f % 4}`, 1)).retries
      }), { concurrency: "unbounded", discard: true })
    const seconds = (performance.now() - start) / 1000
    const total = yield* Effect.forEach([0, 1, 2, 3], (h) => Counter.load(`h${h}`))
    if (total.reduce((a, l) => a + l.state, 0) !== 32 * perFiber) throw new Error("contended: lost commands")
    return { rate: (32 * perFiber) / seconds, retries }
  }))
  await rt.dispose()
  return out
}

async function contendedBench(rounds: number, perFiber: number) {
  const lib: Array<Awaited<ReturnType<typeof libContended>>> = []
  const raw: Array<number> = []
  for (let r = 0; r < rounds; r++) {
    raw.push((await rawSingles(1000)).rate)
    lib.push(await libContended(perFiber))
  }
  emit("sqlite.append.contended", median(lib.map((x) => x.rate)), "commands/s", median(raw))
  const commands = 32 * perFiber * rounds
  emit("sqlite.append.contended.retries", lib.reduce((a, x) => a + x.retries, 0), "retries", commands)
}

// --- loads ---------------------------------------------------------------------------------------------------------
const PAGE = 512

/** Writes one stream of `n` Deposited events and returns the file and aggregate id. */
async function seedStream(n: number) {
  const filename = freshFile()
  const rt = libRuntime(filename)
  await rt.runPromise(Effect.gen(function*() {
    const store = yield* EventStore.EventStore
    for (let v = 0; v < n; v += 1000) {
      const size = Math.min(1000, n - v)
      yield* store.append(
        Ledger.streamId("big"),
        Array.from({ length: size }, (_, i) => ({ type: "Deposited", payload: { amount: (v + i) % 7 } })),
        { expectedVersion: v, streamType: "Ledger" }
      )
    }
  }))
  await rt.dispose()
  return filename
}

/** Raw paged select + JSON.parse + the same fold. */
const rawLoad = (db: Database.Database, streamId: string) => {
  const page = db.prepare(
    "SELECT * FROM eventstore_events WHERE stream_id = ? AND version > ? ORDER BY version LIMIT ?"
  )
  let state = 0
  let version = 0
  for (;;) {
    const rows = page.all(streamId, version, PAGE) as Array<{ version: number; payload: string }>
    for (const row of rows) {
      state += (JSON.parse(row.payload) as { amount: number }).amount
      version = row.version
    }
    if (rows.length < PAGE) break
  }
  return { state, version }
}

async function loadBench(n: number, runs: number) {
  const filename = await seedStream(n)
  const db = new Database(filename, { readonly: true })
  const rt = libRuntime(filename)
  const load = Ledger.load("big")
  const expected = rawLoad(db, Ledger.streamId("big"))
  const got = await rt.runPromise(load)
  if (got.state !== expected.state || got.version !== n) throw new Error(`load mismatch: ${JSON.stringify(got)}`)
  const libTimes: Array<number> = []
  const rawTimes: Array<number> = []
  const timeRaw = () => {
    const t = performance.now()
    rawLoad(db, Ledger.streamId("big"))
    rawTimes.push(performance.now() - t)
  }
  const timeLib = async () => {
    const t = performance.now()
    await rt.runPromise(load)
    libTimes.push(performance.now() - t)
  }
  for (let r = 0; r < runs; r++) {
    // alternate who goes first
    if (r % 2 === 0) {
      timeRaw()
      await timeLib()
    } else {
      await timeLib()
      timeRaw()
    }
  }
  await rt.dispose()
  db.close()
  return { filename, lib: median(libTimes), raw: median(rawTimes) }
}

/** Peak RSS of a fresh process that loads the stream once (lib or raw). */
const peakRss = (mode: "lib" | "raw", filename: string): number => {
  const self = fileURLToPath(import.meta.url)
  const tsx = path.join(path.dirname(self), "..", "node_modules", ".bin", "tsx")
  const child = spawnSync(tsx, [self, "--child-rss", mode, filename], { encoding: "utf8" })
  if (child.status !== 0) throw new Error(`rss child failed: ${child.stderr}`)
  return JSON.parse(child.stdout.trim().split("\n").pop()!).rssMb
}

async function childRss(mode: string, filename: string) {
  if (mode === "raw") {
    const db = new Database(filename, { readonly: true })
    rawLoad(db, Ledger.streamId("big"))
  } else {
    const rt = libRuntime(filename)
    await rt.runPromise(Ledger.load("big"))
    await rt.dispose()
  }
  console.log(JSON.stringify({ rssMb: process.resourceUsage().maxRSS / 1024 }))
}

// --- snapshots and cache -------------------------------------------------------------------------------------------
const LedgerState = Schema.Number

/**
 * On a stream of `n` events: a snapshot ≤ 100 events behind the head, then loads from it (baseline: the full
 * replay); a warm cache with no new events (baseline: the raw query for events after the cached version); and the
 * write of a 10 KB snapshot (baseline: the raw durable insert of the same row).
 */
async function snapshotBench(filename: string, n: number, runs: number) {
  const Snapped = Aggregate.make({ ...ledgerOptions, snapshots: { schema: LedgerState, every: "on-demand" } })
  const Cached = Aggregate.make({ ...ledgerOptions, cache: { capacity: 16 } })
  const rt = ManagedRuntime.make(Sqlite.layer({ filename }))
  const tail = 50
  const out = await rt.runPromise(Effect.gen(function*() {
    const store = yield* EventStore.EventStore
    const snapshots = yield* Snapshot.SnapshotStore
    // three handlers of one aggregate (same streams): built directly, not through the aggregate's tag
    const ledger = yield* Aggregate.handler(Ledger)
    const snapped = yield* Aggregate.handler(Snapped)
    const cached = yield* Aggregate.handler(Cached)
    // the snapshot at n, then `tail` more events
    yield* snapped.snapshot("big")
    yield* store.append(
      Ledger.streamId("big"),
      Array.from({ length: tail }, (_, i) => ({ type: "Deposited", payload: { amount: i % 7 } })),
      { expectedVersion: n, streamType: "Ledger" }
    )
    const time = function*<A, E, R>(effect: Effect.Effect<A, E, R>, times: number) {
      const samples: Array<number> = []
      for (let i = 0; i < times; i++) {
        const t = performance.now()
        yield* effect
        samples.push(performance.now() - t)
      }
      return median(samples)
    }
    const full = yield* ledger.load("big")
    const fromSnapshot = yield* snapped.load("big")
    if (full.state !== fromSnapshot.state || full.version !== n + tail || fromSnapshot.source !== "snapshot") {
      throw new Error("snapshot load mismatch")
    }
    const snapshotMs = yield* time(snapped.load("big"), runs * 20)
    const fullMs = yield* time(ledger.load("big"), runs)
    yield* cached.load("big")
    const cachedMs = yield* time(cached.load("big"), 500)
    const state10k = { blob: "x".repeat(10 * 1024) }
    const writeMs = yield* time(
      snapshots.save({ streamId: "Bench-snap", streamType: "Bench", version: 1, schemaVersion: 1, state: state10k }),
      100
    )
    return { snapshotMs, fullMs, cachedMs, writeMs }
  }).pipe(Effect.scoped))
  await rt.dispose()
  // raw baselines on the same file
  const db = new Database(filename)
  db.pragma("journal_mode = WAL")
  db.pragma("synchronous = FULL")
  const after = db.prepare("SELECT * FROM eventstore_events WHERE stream_id = ? AND version > ? ORDER BY version LIMIT ?")
  const rawCached: Array<number> = []
  for (let i = 0; i < 500; i++) {
    const t = performance.now()
    after.all(Ledger.streamId("big"), n + tail, PAGE)
    rawCached.push(performance.now() - t)
  }
  const insert = db.prepare(
    `INSERT INTO eventstore_snapshots (stream_id, stream_type, version, schema_version, state, analytics, size_bytes, created_at)
     VALUES (?, 'Bench', ?, 1, ?, NULL, ?, ?)`
  )
  const json = JSON.stringify({ blob: "x".repeat(10 * 1024) })
  const rawWrite: Array<number> = []
  for (let i = 0; i < 100; i++) {
    const t = performance.now()
    insert.run("Bench-raw", i + 1, json, json.length, Date.now())
    rawWrite.push(performance.now() - t)
  }
  db.close()
  emit(`sqlite.load.snapshot.${label(n)}`, out.snapshotMs, "ms", out.fullMs)
  emit("sqlite.load.cached", out.cachedMs, "ms", median(rawCached))
  emit("sqlite.snapshot.write", out.writeMs, "ms", median(rawWrite))
}

// --- main ----------------------------------------------------------------------------------------------------------
const label = (n: number) => n >= 1000 ? `${n / 1000}k` : `${n}`

async function main() {
  if (args[0] === "--child-rss") return childRss(args[1]!, args[2]!)
  const small = quick ? 2_000 : 10_000
  const large = quick ? 20_000 : 100_000
  if (want("sqlite.append.single")) {
    await appendBench("sqlite.append.single", quick ? 3 : 11, quick ? 300 : 1_000, 1)
  }
  if (want("sqlite.append.batch100")) await appendBench("sqlite.append.batch100", quick ? 3 : 11, quick ? 10 : 40, 100)
  if (want("sqlite.append.concurrent32")) await concurrentBench(quick ? 2 : 5, quick ? 20 : 200)
  if (want("sqlite.append.contended")) await contendedBench(quick ? 1 : 3, quick ? 5 : 25)
  if (want("sqlite.load")) {
    const a = await loadBench(small, quick ? 5 : 15)
    emit(`sqlite.load.${label(small)}`, a.lib, "ms", a.raw)
    const b = await loadBench(large, quick ? 3 : 7)
    emit(`sqlite.load.${label(large)}`, b.lib, "ms", b.raw)
    emit("sqlite.load.scaling", b.lib / a.lib, `x (${label(large)} time / ${label(small)} time)`, b.raw / a.raw)
    emit(`sqlite.load.${label(small)}.peakRss`, peakRss("lib", a.filename), "MB", peakRss("raw", a.filename))
    emit(`sqlite.load.${label(large)}.peakRss`, peakRss("lib", b.filename), "MB", peakRss("raw", b.filename))
  }
  if (want("sqlite.load.snapshot") || want("sqlite.load.cached") || want("sqlite.snapshot")) {
    await snapshotBench(await seedStream(large), large, quick ? 3 : 7)
  }
  fs.rmSync(dir, { recursive: true, force: true })
}

main().catch((error) => {
  console.error(error)
  process.exit(1)
})
