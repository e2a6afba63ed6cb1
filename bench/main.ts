/**
 * The benchmark harness: each bench runs the library and the raw driver (better-sqlite3; node-postgres for the `pg.*`
 * benches, in `postgres.ts`) doing the same work on the same schema,
 * interleaved in rounds so that machine noise hits both, and prints one JSON line:
 *   {"bench", "value", "unit", "baseline", "ratio"}   ratio = value / baseline
 *
 *   npm run bench             full sizes (the numbers issues quote)
 *   npm run bench -- --quick  small sizes, for CI (well under 60 s)
 */
import Database from "better-sqlite3"
import { Aggregate, Event, EventStore, Snapshot } from "effect-eventstore"
import * as Sqlite from "effect-eventstore/Sqlite"
import { INSERT, median, percentile, STREAMS, WARMUP } from "./common.js"
import { busBenches } from "./bus.js"
import { cqrsBenches } from "./cqrs.js"
import { operatorBenches } from "./operator.js"
import { postgresBenches } from "./postgres.js"
import { privacyBenches } from "./privacy.js"
import { catchupBench, inlineBench, lagBench } from "./projection.js"
import * as Effect from "effect/Effect"
import * as Either from "effect/Either"
import * as Layer from "effect/Layer"
import * as ManagedRuntime from "effect/ManagedRuntime"
import * as Schedule from "effect/Schedule"
import * as Schema from "effect/Schema"
import { spawnSync } from "node:child_process"
import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"
import * as v8 from "node:v8"
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

/** One INSERT of `rows` events (the raw multi-row baseline). */
const insertRows = (rows: number) =>
  `INSERT INTO eventstore_events (event_id, stream_id, stream_type, version, event_type, schema_version, payload,
  metadata, tenant_id, recorded_at) VALUES ${Array.from({ length: rows }, () => "(?, ?, ?, ?, ?, 1, ?, NULL, NULL, ?)").join(", ")}`

// --- appends -------------------------------------------------------------------------------------------------------

/** Raw appends, `perAppend` events each: one multi-row INSERT per append, or (`rowAtATime`) one INSERT per event. */
async function rawAppends(count: number, perAppend: number, rowAtATime = false): Promise<number> {
  const db = await rawDb(freshFile())
  const insert = db.prepare(INSERT)
  const multi = perAppend > 1 ? db.prepare(insertRows(perAppend)) : insert
  const versions = new Array<number>(STREAMS).fill(0)
  const appendRows = db.transaction((s: number, i: number) => {
    for (let k = 0; k < perAppend; k++) {
      insert.run(crypto.randomUUID(), `Bench-${s}`, "Bench", ++versions[s]!, "Deposited", JSON.stringify({ amount: i + k }), Date.now())
    }
  })
  const params: Array<unknown> = []
  let start = performance.now()
  for (let i = -WARMUP; i < count; i++) {
    if (i === 0) start = performance.now()
    const s = (i + WARMUP) % STREAMS
    if (perAppend === 1) {
      insert.run(crypto.randomUUID(), `Bench-${s}`, "Bench", ++versions[s]!, "Deposited", JSON.stringify({ amount: i }), Date.now())
    } else if (rowAtATime) {
      appendRows(s, i)
    } else {
      // one statement: atomic on its own, one transaction, one fsync
      params.length = 0
      const now = Date.now()
      for (let k = 0; k < perAppend; k++) {
        params.push(crypto.randomUUID(), `Bench-${s}`, "Bench", ++versions[s]!, "Deposited", JSON.stringify({ amount: i + k }), now)
      }
      multi.run(params)
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

/**
 * Short interleaved rounds (rotating who goes first), after one warm-up round each; the medians are reported, so
 * that a burst of noise from the machine's neighbours in one round does not decide the ratio. With `perAppend` > 1
 * the baseline is one multi-row INSERT per append, and the old row-at-a-time baseline is reported as
 * `<name>.rowAtATime`.
 */
async function appendBench(name: string, rounds: number, count: number, perAppend: number) {
  const runners: Array<() => Promise<number>> = [
    () => libAppends(count, perAppend),
    () => rawAppends(count, perAppend),
    ...(perAppend > 1 ? [() => rawAppends(count, perAppend, true)] : [])
  ]
  const samples = runners.map(() => [] as Array<number>)
  for (const run of runners) await run()
  for (let r = 0; r < rounds; r++) {
    for (let k = 0; k < runners.length; k++) {
      const i = (k + r) % runners.length
      samples[i]!.push(await runners[i]!())
    }
  }
  emit(name, median(samples[0]!), "events/s", median(samples[1]!))
  if (perAppend > 1) emit(`${name}.rowAtATime`, median(samples[0]!), "events/s", median(samples[2]!))
}

// --- concurrency -------------------------------------------------------------------------------------------------

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

/** Raw commits of 32 single-event inserts each (all 32 appends in one transaction): the grouped baseline. */
async function rawGrouped(count: number) {
  const db = await rawDb(freshFile())
  const insert = db.prepare(INSERT)
  const group = db.transaction((first: number) => {
    for (let i = first; i < first + 32; i++) {
      insert.run(crypto.randomUUID(), `Conc-${i % 32}`, "Conc", Math.floor(i / 32) + 1, "Deposited", JSON.stringify({ amount: i }), Date.now())
    }
  })
  const start = performance.now()
  for (let i = 0; i < count; i += 32) group(i)
  const rate = count / ((performance.now() - start) / 1000)
  db.close()
  return rate
}

async function concurrentBench(rounds: number, perFiber: number) {
  await libConcurrent(32, Math.min(perFiber, 20))
  const lib: Array<Awaited<ReturnType<typeof libConcurrent>>> = []
  const raw: Array<Awaited<ReturnType<typeof rawSingles>>> = []
  const grouped: Array<number> = []
  for (let r = 0; r < rounds; r++) {
    raw.push(await rawSingles(Math.min(32 * perFiber, 2000)))
    grouped.push(await rawGrouped(32 * perFiber))
    lib.push(await libConcurrent(32, perFiber))
  }
  const libLat = lib.flatMap((x) => x.latencies)
  const rawLat = raw.flatMap((x) => x.latencies)
  emit("sqlite.append.concurrent32", median(lib.map((x) => x.rate)), "appends/s", median(raw.map((x) => x.rate)))
  emit("sqlite.append.concurrent32.grouped", median(lib.map((x) => x.rate)), "appends/s", median(grouped))
  emit("sqlite.append.concurrent32.p50", percentile(libLat, 0.5), "ms", percentile(rawLat, 0.5))
  emit("sqlite.append.concurrent32.p99", percentile(libLat, 0.99), "ms", percentile(rawLat, 0.99))
}

// --- the event loop under write load ---------------------------------------------------------------------------

/** Delays (ms past due) of a 10 ms interval timer over `ms` milliseconds, while `load` runs. */
const timerDelays = async (ms: number, load: (stop: () => boolean) => Promise<unknown>) => {
  const delays: Array<number> = []
  let last = performance.now()
  const timer = setInterval(() => {
    const now = performance.now()
    delays.push(Math.max(0, now - last - 10))
    last = now
  }, 10)
  const until = performance.now() + ms
  await load(() => performance.now() >= until)
  clearInterval(timer)
  return delays
}

/** `fibers` fibers appending single events in a loop until `stop`; returns appends/s. */
const appendLoop = (rt: ReturnType<typeof libRuntime>, fibers: number) => (stop: () => boolean) =>
  rt.runPromise(Effect.gen(function*() {
    const store = yield* EventStore.EventStore
    let count = 0
    const start = performance.now()
    yield* Effect.forEach(Array.from({ length: fibers }, (_, f) => f), (f) =>
      Effect.gen(function*() {
        for (let v = 0; !stop(); v++) {
          yield* store.append(`Loop-${f}`, [{ type: "Deposited", payload: { amount: v } }], { expectedVersion: v })
          count++
        }
      }), { concurrency: "unbounded", discard: true })
    return count / ((performance.now() - start) / 1000)
  }))

/**
 * The p99 delay of a 10 ms timer while 1, 4 and 32 fibers append in a loop (baseline: the same timer with no load).
 * `sqlite.eventloop.delay.p99` is the 32-fiber figure; the throughput during it is reported beside it.
 */
async function eventLoopBench(ms: number) {
  const idle = await timerDelays(ms, (stop) =>
    new Promise<void>((resolve) => {
      const check = setInterval(() => stop() && (clearInterval(check), resolve()), 5)
    }))
  const idleP99 = percentile(idle, 0.99)
  for (const fibers of [1, 4, 32]) {
    const rt = libRuntime(freshFile())
    await rt.runPromise(Effect.void)
    let rate = 0
    const delays = await timerDelays(ms, async (stop) => {
      rate = await appendLoop(rt, fibers)(stop)
    })
    await rt.dispose()
    const name = fibers === 32 ? "sqlite.eventloop.delay.p99" : `sqlite.eventloop.delay.p99.fibers${fibers}`
    emit(name, percentile(delays, 0.99), "ms", idleP99)
    if (fibers === 32) emit("sqlite.eventloop.appends", rate, "appends/s (32 fibers, during the timer)", rate)
  }
}

// --- allocation per append -------------------------------------------------------------------------------------

/**
 * Bytes allocated per append while 32 fibers append (lib) or per raw single insert (raw), in a child process started
 * with `--expose-gc`: allocated = heap used after − heap used before + what every GC in between freed
 * (`v8.GCProfiler`).
 */
const allocation = (mode: "lib" | "raw"): number => {
  const self = fileURLToPath(import.meta.url)
  const child = spawnSync(process.execPath, ["--expose-gc", "--import", "tsx", self, "--child-alloc", mode], {
    encoding: "utf8"
  })
  if (child.status !== 0) throw new Error(`allocation child failed: ${child.stderr}`)
  return JSON.parse(child.stdout.trim().split("\n").pop()!).bytesPerAppend
}

async function childAlloc(mode: string) {
  const gc = (globalThis as { gc?: () => void }).gc!
  const measure = async (work: () => Promise<number>) => {
    gc()
    const profiler = new v8.GCProfiler()
    const before = v8.getHeapStatistics().used_heap_size
    profiler.start()
    const count = await work()
    const after = v8.getHeapStatistics().used_heap_size
    const freed = profiler.stop().statistics.reduce(
      (sum, s) => sum + s.beforeGC.heapStatistics.usedHeapSize - s.afterGC.heapStatistics.usedHeapSize,
      0
    )
    return (after - before + freed) / count
  }
  if (mode === "raw") {
    const db = await rawDb(freshFile())
    const insert = db.prepare(INSERT)
    const run = (n: number, offset: number) => {
      for (let i = offset; i < offset + n; i++) {
        insert.run(crypto.randomUUID(), `Conc-${i % 32}`, "Conc", Math.floor(i / 32) + 1, "Deposited", JSON.stringify({ amount: i }), Date.now())
      }
      return Promise.resolve(n)
    }
    await run(320, 0)
    console.log(JSON.stringify({ bytesPerAppend: await measure(() => run(3200, 320)) }))
    db.close()
  } else {
    const rt = libRuntime(freshFile())
    const run = (perFiber: number, from: number) =>
      rt.runPromise(Effect.gen(function*() {
        const store = yield* EventStore.EventStore
        yield* Effect.forEach(Array.from({ length: 32 }, (_, f) => f), (f) =>
          Effect.gen(function*() {
            for (let i = from; i < from + perFiber; i++) {
              yield* store.append(`Conc-${f}`, [{ type: "Deposited", payload: { amount: i } }], { expectedVersion: i })
            }
          }), { concurrency: "unbounded", discard: true })
        return 32 * perFiber
      }))
    await run(10, 0)
    console.log(JSON.stringify({ bytesPerAppend: await measure(() => run(100, 10)) }))
    await rt.dispose()
  }
  fs.rmSync(dir, { recursive: true, force: true })
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

/**
 * The raw load: a prepared SELECT of only the columns the fold needs, in pages of arrays (`raw()`; measured faster
 * than `iterate()` here: 74 vs 125 ms for 100k events), `JSON.parse` and the same fold (dispatching on the event
 * type, as a fold over several types must).
 */
const rawLoad = (db: Database.Database, streamId: string) => {
  const page = db.prepare(
    "SELECT version, event_type, payload FROM eventstore_events WHERE stream_id = ? AND version > ? ORDER BY version LIMIT ?"
  ).raw(true)
  let state = 0
  let version = 0
  for (;;) {
    const rows = page.all(streamId, version, PAGE) as Array<[number, string, string]>
    for (const row of rows) {
      if (row[1] === "Deposited") state += (JSON.parse(row[2]) as { amount: number }).amount
      version = row[0]
    }
    if (rows.length < PAGE) break
  }
  return { state, version }
}

/** The old raw load baseline: `SELECT *` pages + JSON.parse + the same fold. */
const rawLoadSelectStar = (db: Database.Database, streamId: string) => {
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
  if (rawLoadSelectStar(db, Ledger.streamId("big")).state !== expected.state) throw new Error("raw load mismatch")
  const libTimes: Array<number> = []
  const rawTimes: Array<number> = []
  const starTimes: Array<number> = []
  const timeRaw = (f: typeof rawLoad, into: Array<number>) => {
    const t = performance.now()
    f(db, Ledger.streamId("big"))
    into.push(performance.now() - t)
  }
  const timeLib = async () => {
    const t = performance.now()
    await rt.runPromise(load)
    libTimes.push(performance.now() - t)
  }
  for (let r = 0; r < runs; r++) {
    // rotate who goes first
    const order = [
      () => timeRaw(rawLoad, rawTimes),
      timeLib,
      () => timeRaw(rawLoadSelectStar, starTimes)
    ]
    for (let k = 0; k < order.length; k++) await order[(k + r) % order.length]!()
  }
  await rt.dispose()
  db.close()
  return { filename, lib: median(libTimes), raw: median(rawTimes), selectStar: median(starTimes) }
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

// --- commands --------------------------------------------------------------------------------------------------

const Cents = Schema.Int.pipe(Schema.positive(), Schema.brand("Cents"))
const AccountOpened = Schema.TaggedStruct("AccountOpened", { owner: Schema.String })
const MoneyDeposited = Schema.TaggedStruct("MoneyDeposited", { amount: Cents })
type AccountEvent = typeof AccountOpened.Type | typeof MoneyDeposited.Type
interface Account {
  readonly open: boolean
  readonly balance: number
}
class AccountNotOpen extends Schema.TaggedError<AccountNotOpen>()("AccountNotOpen", {}) {}
const accountOptions = {
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
}
const Accounts = Aggregate.make(accountOptions)
const CachedAccounts = Aggregate.make({ ...accountOptions, cache: { capacity: 100_000 } })

/** `accounts` streams of 10 events each (opened, then 9 deposits), written raw in one transaction. */
async function seedAccounts(accounts: number) {
  const filename = freshFile()
  const db = await rawDb(filename)
  const insert = db.prepare(INSERT)
  db.transaction(() => {
    for (let a = 0; a < accounts; a++) {
      const id = Accounts.streamId(`a${a}`)
      insert.run(crypto.randomUUID(), id, "Account", 1, "AccountOpened", JSON.stringify({ owner: `o${a}` }), Date.now())
      for (let v = 2; v <= 10; v++) {
        insert.run(crypto.randomUUID(), id, "Account", v, "MoneyDeposited", JSON.stringify({ amount: v }), Date.now())
      }
    }
  })()
  db.close()
  return filename
}

/**
 * Raw: a deposit as one IMMEDIATE transaction that selects the stream's events (only the columns the fold needs),
 * parses and folds them, checks the account is open and inserts the event (durable: WAL + FULL).
 */

async function rawCommands(accounts: number) {
  const db = await rawDb(await seedAccounts(WARMUP + accounts))
  const select = db.prepare("SELECT version, event_type, payload FROM eventstore_events WHERE stream_id = ? ORDER BY version")
    .raw(true)
  const insert = db.prepare(INSERT)
  const deposit = db.transaction((streamId: string, amount: number) => {
    let state: Account = accountOptions.decider.initialState
    let version = 0
    for (const [v, type, payload] of select.all(streamId) as Array<[number, string, string]>) {
      const event = JSON.parse(payload)
      state = type === "AccountOpened"
        ? { open: true, balance: 0 }
        : type === "MoneyDeposited"
        ? { ...state, balance: state.balance + (event as { amount: number }).amount }
        : state
      version = v
    }
    if (!state.open) throw new Error("account not open")
    insert.run(crypto.randomUUID(), streamId, "Account", version + 1, "MoneyDeposited", JSON.stringify({ amount }), Date.now())
  })
  for (let a = 0; a < WARMUP; a++) deposit.immediate(Accounts.streamId(`a${a}`), 5)
  const latencies: Array<number> = []
  const start = performance.now()
  for (let a = WARMUP; a < WARMUP + accounts; a++) {
    const t = performance.now()
    deposit.immediate(Accounts.streamId(`a${a}`), 5)
    latencies.push(performance.now() - t)
  }
  const rate = accounts / ((performance.now() - start) / 1000)
  db.close()
  return { rate, latencies }
}

/** The library: `handle` of a deposit on each account (a warm cache first, with `cached`). */
async function libCommands(accounts: number, cached: boolean) {
  const filename = await seedAccounts(WARMUP + accounts)
  const aggregate = cached ? CachedAccounts : Accounts
  const rt = ManagedRuntime.make(
    Aggregate.layer(aggregate).pipe(Layer.provide(Sqlite.layer({ filename }) as Layer.Layer<EventStore.EventStore>))
  )
  const out = await rt.runPromise(Effect.gen(function*() {
    if (cached) for (let a = 0; a < WARMUP + accounts; a++) yield* aggregate.load(`a${a}`)
    for (let a = 0; a < WARMUP; a++) yield* aggregate.handle(`a${a}`, { amount: 5 })
    const latencies: Array<number> = []
    const start = performance.now()
    for (let a = WARMUP; a < WARMUP + accounts; a++) {
      const t = performance.now()
      const handled = yield* aggregate.handle(`a${a}`, { amount: 5 })
      if (handled.version !== 11) throw new Error(`command: version ${handled.version}`)
      latencies.push(performance.now() - t)
    }
    return { rate: accounts / ((performance.now() - start) / 1000), latencies }
  }))
  await rt.dispose()
  return out
}

async function commandBench(rounds: number, accounts: number) {
  await rawCommands(Math.min(accounts, 100))
  await libCommands(Math.min(accounts, 100), false)
  await libCommands(Math.min(accounts, 100), true)
  const runners = [() => rawCommands(accounts), () => libCommands(accounts, false), () => libCommands(accounts, true)]
  const samples = runners.map(() => [] as Array<Awaited<ReturnType<typeof rawCommands>>>)
  for (let r = 0; r < rounds; r++) {
    for (let k = 0; k < runners.length; k++) {
      const i = (k + r) % runners.length
      samples[i]!.push(await runners[i]!())
    }
  }
  const [raw, single, cached] = samples.map((xs) => ({
    rate: median(xs.map((x) => x.rate)),
    latencies: xs.flatMap((x) => x.latencies)
  }))
  for (const [name, lib] of [["sqlite.command.single", single!], ["sqlite.command.cached", cached!]] as const) {
    emit(name, lib.rate, "commands/s", raw!.rate)
    emit(`${name}.p50`, percentile(lib.latencies, 0.5), "ms", percentile(raw!.latencies, 0.5))
    emit(`${name}.p99`, percentile(lib.latencies, 0.99), "ms", percentile(raw!.latencies, 0.99))
  }
}

// --- main ----------------------------------------------------------------------------------------------------------
const label = (n: number) => n >= 1000 ? `${n / 1000}k` : `${n}`

async function main() {
  if (args[0] === "--child-rss") return childRss(args[1]!, args[2]!)
  if (args[0] === "--child-alloc") return childAlloc(args[1]!)
  const small = quick ? 2_000 : 10_000
  const large = quick ? 20_000 : 100_000
  if (want("sqlite.command")) await commandBench(quick ? 3 : 7, quick ? 100 : 500)
  if (want("sqlite.append.single")) {
    await appendBench("sqlite.append.single", quick ? 3 : 11, quick ? 300 : 1_000, 1)
  }
  if (want("sqlite.append.batch100")) await appendBench("sqlite.append.batch100", quick ? 3 : 11, quick ? 10 : 40, 100)
  if (want("sqlite.append.concurrent32")) await concurrentBench(quick ? 2 : 5, quick ? 20 : 200)
  if (want("sqlite.append.bytesPerAppend")) {
    emit("sqlite.append.bytesPerAppend", allocation("lib"), "bytes", allocation("raw"))
  }
  if (want("sqlite.append.contended")) await contendedBench(quick ? 1 : 3, quick ? 5 : 25)
  if (want("sqlite.eventloop")) await eventLoopBench(quick ? 1_000 : 5_000)
  if (want("sqlite.load")) {
    const a = await loadBench(small, quick ? 5 : 15)
    emit(`sqlite.load.${label(small)}`, a.lib, "ms", a.raw)
    emit(`sqlite.load.${label(small)}.selectStar`, a.lib, "ms", a.selectStar)
    const b = await loadBench(large, quick ? 3 : 7)
    emit(`sqlite.load.${label(large)}`, b.lib, "ms", b.raw)
    emit(`sqlite.load.${label(large)}.selectStar`, b.lib, "ms", b.selectStar)
    emit("sqlite.load.scaling", b.lib / a.lib, `x (${label(large)} time / ${label(small)} time)`, b.raw / a.raw)
    emit(`sqlite.load.${label(small)}.peakRss`, peakRss("lib", a.filename), "MB", peakRss("raw", a.filename))
    emit(`sqlite.load.${label(large)}.peakRss`, peakRss("lib", b.filename), "MB", peakRss("raw", b.filename))
  }
  if (want("sqlite.load.snapshot") || want("sqlite.load.cached") || want("sqlite.snapshot")) {
    await snapshotBench(await seedStream(large), large, quick ? 3 : 7)
  }
  if (want("sqlite.projection.catchup")) await catchupBench(emit, freshFile, quick ? 10_000 : 100_000, quick ? 1 : 3)
  if (want("sqlite.projection.lag")) await lagBench(emit, freshFile, quick ? 100 : 500)
  if (want("sqlite.append.inline")) await inlineBench(emit, freshFile, quick ? 3 : 11, quick ? 300 : 1_000)
  if (want("sqlite.privacy") || only?.startsWith("sqlite.privacy")) await privacyBenches(emit, freshFile, quick, want)
  if (only === undefined || only.startsWith("pg")) await postgresBenches(emit, quick, want)
  if (only === undefined || only.startsWith("bus")) await busBenches(emit, quick, want)
  if (want("cqrs")) await cqrsBenches(emit, quick)
  if (want("cli") || want("dashboard") || only?.startsWith("cli") || only?.startsWith("dashboard")) {
    await operatorBenches(emit, dir, quick, want)
  }
  fs.rmSync(dir, { recursive: true, force: true })
}

main().catch((error) => {
  console.error(error)
  process.exit(1)
})
