/**
 * Operator benchmarks (issue 14): the CLI and the dashboard on an SQLite store of 1,000,000 events in 100,000
 * streams (`--quick`: 20,000 in 2,000), each against raw better-sqlite3 doing the same work, in the same run.
 *
 * - `cli.streams.page`: a page of 100 streams with a prefix filter (`Operator.streams`, in process; ms) against the
 *   same keyset-paged `GROUP BY` query prepared once. Prints `EXPLAIN QUERY PLAN` and the time of every statement the
 *   streams page, the overview, the projections' status and the tail run (to stderr, once).
 * - `cli.tail.lag.p50` / `.p99`: `effect-eventstore tail --all --json` as a child process while this process appends
 *   through the library at a steady pace: acknowledged append → the line read from the child's stdout (ms), against
 *   a raw poller child (`SELECT … WHERE position > ?` every 20 ms).
 * - `cli.status.wall`: `effect-eventstore projections status --json` as a whole process (ms), against `node -e`
 *   reading the checkpoints and the head with better-sqlite3.
 * - `dashboard.first.load` (ms) and `.bytes` (KB): what a browser's first visit asks of `Dashboard.serve` (the page,
 *   `/api/overview`, the first event of `/api/live`); `dashboard.live.interval`: the interval between `/api/live`'s
 *   overview events while appends go on (ms, against the configured 250).
 * - `cli.export` / `cli.import` (events/s): `Operator.exportEvents` to an NDJSON file, `Operator.importLines` of it
 *   into a fresh store in chunks of 50,000 (what the CLI reads at a time), against raw iteration / one prepared insert per line in one transaction.
 *
 * The full dataset is built once with raw inserts into a file whose schema the library made, and kept in the temp
 * directory under a versioned name; every run works on a copy of it.
 */
import * as HttpServer from "@effect/platform/HttpServer"
import Database from "better-sqlite3"
import { EventStore } from "effect-eventstore"
import * as Dashboard from "effect-eventstore/Dashboard"
import * as Operator from "effect-eventstore/Operator"
import * as Sqlite from "effect-eventstore/Sqlite"
import * as SqlProjection from "effect-eventstore/SqlProjection"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Logger from "effect/Logger"
import * as LogLevel from "effect/LogLevel"
import * as ManagedRuntime from "effect/ManagedRuntime"
import * as Stream from "effect/Stream"
import { type ChildProcess, spawn, spawnSync } from "node:child_process"
import * as crypto from "node:crypto"
import * as fs from "node:fs"
import * as http from "node:http"
import * as os from "node:os"
import * as path from "node:path"
import { fileURLToPath } from "node:url"
import { median, percentile } from "./common.js"

type Emit = (bench: string, value: number, unit: string, baseline: number) => void

/** Bump when the dataset's shape changes: the cached file is rebuilt under the new name. */
const DATASET_VERSION = "operator-v1"

const E = "eventstore_events"
const ROOT = path.join(path.dirname(fileURLToPath(import.meta.url)), "..")
const BIN = path.join(ROOT, "dist", "bin", "bin.js")
/** What the CLI's import hands `importLines` at a time (src/Cli.ts IMPORT_LINES). */
const IMPORT_CHUNK = 50_000

// the harness prints JSON lines only
const quiet = Logger.minimumLogLevel(LogLevel.Warning)
const note = (text: string) => process.stderr.write(`[operator] ${text}\n`)

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

const removeDb = (file: string) => {
  for (const ext of ["", "-wal", "-shm", "-journal"]) fs.rmSync(file + ext, { force: true })
}

/** A file with the library's schema: the store's migrations and the projections' tables, run by the library. */
async function libraryFile(file: string) {
  removeDb(file)
  const rt = ManagedRuntime.make(Sqlite.layer({ filename: file }).pipe(Layer.provideMerge(quiet)))
  await rt.runPromise(SqlProjection.migrate)
  await rt.dispose()
}

// --- the dataset -----------------------------------------------------------------------------------------------------

const TYPES = [
  { name: "Account", first: "AccountOpened", next: ["MoneyDeposited", "MoneyWithdrawn"] },
  { name: "Order", first: "OrderPlaced", next: ["OrderPaid", "OrderShipped"] },
  { name: "Customer", first: "CustomerRegistered", next: ["CustomerUpdated"] }
] as const

/** Stream `s`'s type: half Account, 30 % Order, 20 % Customer, spread evenly over the numbers. */
const typeOf = (s: number) => TYPES[s % 10 < 5 ? 0 : s % 10 < 8 ? 1 : 2]!
const streamIdOf = (s: number) => `${typeOf(s).name}-${String(s).padStart(6, "0")}`

const payloadOf = (s: number, version: number, type: string) =>
  version === 1
    ? JSON.stringify({ owner: `Owner ${s}`, email: `owner${s}@example.com`, currency: "EUR" })
    : JSON.stringify({ amount: (s * 31 + version * 7) % 10_000, reference: `ref-${s}-${version}`, kind: type })

interface Dataset {
  readonly file: string
  readonly events: number
  readonly streams: number
}

/**
 * `events` events in `streams` streams (round robin: stream `p % streams` gets position `p`'s event), `recorded_at`
 * 5 ms apart, every event with a correlation id in its metadata; three projections' checkpoints (one at the head, one
 * 5,000 behind, one frozen far behind) and 20 parked events. Written raw in one transaction.
 */
async function buildDataset(file: string, events: number, streams: number) {
  const started = performance.now()
  await libraryFile(file)
  const db = new Database(file)
  db.pragma("synchronous = OFF")
  db.pragma("cache_size = -262144")
  const insert = db.prepare(`INSERT INTO ${E} (event_id, stream_id, stream_type, version, event_type, schema_version,
    payload, metadata, tenant_id, recorded_at, claims) VALUES (?, ?, ?, ?, ?, 1, ?, ?, NULL, ?, NULL)`)
  const end = Date.now()
  db.transaction(() => {
    for (let p = 0; p < events; p++) {
      const s = p % streams
      const version = Math.floor(p / streams) + 1
      const type = typeOf(s)
      const eventType = version === 1 ? type.first : type.next[version % type.next.length]!
      insert.run(
        crypto.randomUUID(),
        streamIdOf(s),
        type.name,
        version,
        eventType,
        payloadOf(s, version, eventType),
        `{"correlationId":"corr-${s}-${version >> 2}"}`,
        end - (events - p) * 5
      )
    }
  })()
  const head = events
  const checkpoint = db.prepare(`INSERT INTO eventstore_projections (name, position, owner, lease_until, updated_at)
    VALUES (?, ?, NULL, 0, ?)`)
  checkpoint.run("balances", head, end)
  checkpoint.run("audit", Math.max(0, head - 5_000), end - 1_000)
  checkpoint.run("search", Math.floor(head / 2), end - 3_600_000)
  const park = db.prepare(`INSERT INTO eventstore_parked_events (projection, position, event_id, stream_id, event_type,
    reason, parked_at) VALUES ('audit', ?, ?, ?, ?, 'bench: a handler failed', ?)`)
  const rows = db.prepare(`SELECT position, event_id, stream_id, event_type FROM ${E} WHERE position > ? LIMIT 20`)
    .all(Math.floor(head / 3)) as Array<{ position: number; event_id: string; stream_id: string; event_type: string }>
  for (const r of rows) park.run(r.position, r.event_id, r.stream_id, r.event_type, end - 60_000)
  db.pragma("wal_checkpoint(TRUNCATE)")
  db.close()
  note(`built ${events} events in ${streams} streams in ${((performance.now() - started) / 1000).toFixed(1)} s: ${file}`)
}

/** The dataset for this mode: the cached file (built when missing), copied to `dir`. */
async function dataset(dir: string, quick: boolean): Promise<Dataset> {
  const events = quick ? 20_000 : 1_000_000
  const streams = quick ? 2_000 : 100_000
  const cached = path.join(os.tmpdir(), `effect-eventstore-bench-${DATASET_VERSION}-${events}-${streams}.db`)
  if (!fs.existsSync(cached)) {
    const building = `${cached}.building-${process.pid}`
    await buildDataset(building, events, streams)
    fs.renameSync(building, cached)
    removeDb(building)
  }
  const file = path.join(dir, "operator.db")
  removeDb(file)
  fs.copyFileSync(cached, file)
  return { file, events, streams }
}

const operatorRuntime = (file: string) =>
  ManagedRuntime.make(
    Operator.layer().pipe(Layer.provideMerge(Sqlite.layer({ filename: file })), Layer.provideMerge(quiet))
  )

// --- statements the library runs, and their plans -----------------------------------------------------------------

interface Captured {
  readonly sql: string
  readonly params: ReadonlyArray<unknown>
}

/**
 * Records every statement better-sqlite3 runs in this process while `f` runs (the library's reads go through it):
 * the SQL and its parameters.
 */
async function capture<A>(f: () => Promise<A>): Promise<{ result: A; statements: Array<Captured> }> {
  const probe = new Database(":memory:")
  const proto = Object.getPrototypeOf(probe.prepare("SELECT 1")) as Record<string, any>
  probe.close()
  const statements: Array<Captured> = []
  const originals = new Map<string, any>()
  for (const method of ["all", "get", "run", "iterate"]) {
    const original = proto[method]
    originals.set(method, original)
    proto[method] = function(this: { source: string }, ...params: Array<unknown>) {
      statements.push({ sql: this.source, params })
      return original.apply(this, params)
    }
  }
  try {
    return { result: await f(), statements }
  } finally {
    for (const [method, original] of originals) proto[method] = original
  }
}

/**
 * The plan and the median time (raw, on the 1M store) of each statement; a statement reading the events table
 * without an index search or a LIMIT that stops it early, or taking more than 20 ms, is flagged.
 */
function explain(db: Database.Database, label: string, statements: ReadonlyArray<Captured>) {
  const flagged: Array<string> = []
  const seen = new Set<string>()
  for (const { params, sql } of statements) {
    const key = sql + JSON.stringify(params)
    if (seen.has(key) || /^\s*(BEGIN|COMMIT|ROLLBACK|SAVEPOINT|RELEASE|PRAGMA)/i.test(sql)) continue
    seen.add(key)
    let plan: Array<{ detail: string }>
    try {
      plan = db.prepare(`EXPLAIN QUERY PLAN ${sql}`).all(...(params as Array<any>)) as Array<{ detail: string }>
    } catch (e) {
      note(`${label}: cannot explain ${sql.replace(/\s+/g, " ")}: ${e}`)
      continue
    }
    const statement = db.prepare(sql)
    const times: Array<number> = []
    for (let i = 0; i < 5; i++) {
      const t = performance.now()
      if (statement.reader) statement.all(...(params as Array<any>))
      times.push(performance.now() - t)
    }
    const ms = median(times)
    const text = sql.replace(/\s+/g, " ").trim()
    const scans = plan.filter((p) => /^SCAN/.test(p.detail) && p.detail.includes(E))
    const bounded = /\bLIMIT\b/i.test(text)
    const whole = scans.length > 0 && !bounded
    const mark = whole ? "  <-- SCANS THE EVENTS TABLE WITHOUT A LIMIT" : ms > 20 ? "  <-- SLOW (> 20 ms)" : ""
    if (mark !== "") flagged.push(`${label}: ${text} (${ms.toFixed(2)} ms; ${plan.map((p) => p.detail).join("; ")})`)
    note(`${label}: ${ms.toFixed(3)} ms  ${text.slice(0, 240)}${mark}`)
    for (const p of plan) note(`    ${p.detail}`)
  }
  return flagged
}

// --- cli.streams.page ------------------------------------------------------------------------------------------------

/** Queries of a page: a type's prefix, from its start or after a random stream of it (keyset paging). */
const pageQueries = (streams: number, n: number) => {
  let seed = 42
  const random = () => {
    seed = (seed * 1_103_515_245 + 12_345) % 2 ** 31
    return seed / 2 ** 31
  }
  return Array.from({ length: n }, (_, i) => {
    const type = TYPES[i % TYPES.length]!.name
    // a random stream number in the first half: a full page follows it
    const after = i % 2 === 0 ? undefined : `${type}-${String(Math.floor(random() * streams * 0.5)).padStart(6, "0")}`
    return { prefix: `${type}-0`, after }
  })
}

const PAGE_SQL = `SELECT stream_id, min(stream_type) AS stream_type, max(version) AS version, max(recorded_at) AS last_at
  FROM ${E} WHERE stream_id >= ? AND stream_id < ? GROUP BY stream_id ORDER BY stream_id LIMIT ?`
const PAGE_AFTER_SQL = `SELECT stream_id, min(stream_type) AS stream_type, max(version) AS version, max(recorded_at) AS last_at
  FROM ${E} WHERE stream_id > ? AND stream_id >= ? AND stream_id < ? GROUP BY stream_id ORDER BY stream_id LIMIT ?`

async function streamsPageBench(emit: Emit, data: Dataset, quick: boolean) {
  const rt = operatorRuntime(data.file)
  const op = await rt.runPromise(Operator.Operator)
  const raw = new Database(data.file, { readonly: true })
  const first = raw.prepare(PAGE_SQL)
  const next = raw.prepare(PAGE_AFTER_SQL)
  const rawPage = (q: { prefix: string; after: string | undefined }) => {
    const end = q.prefix + "\u{10FFFF}"
    const rows = (q.after === undefined ? first.all(q.prefix, end, 101) : next.all(q.after, q.prefix, end, 101)) as Array<
      { stream_id: string; stream_type: string; version: number; last_at: number }
    >
    const streams = rows.slice(0, 100).map((r) => ({
      streamId: r.stream_id,
      streamType: r.stream_type,
      version: r.version,
      lastRecordedAt: new Date(r.last_at).toISOString()
    }))
    return rows.length > 100 ? { streams, next: streams[streams.length - 1]!.streamId } : { streams }
  }
  const libPage = (q: { prefix: string; after: string | undefined }) =>
    rt.runPromise(op.streams({ prefix: q.prefix, after: q.after, limit: 100 }))

  const queries = pageQueries(data.streams, quick ? 60 : 300)
  // the same answers
  for (const q of queries.slice(0, 6)) {
    const a = await libPage(q)
    const b = rawPage(q)
    if (JSON.stringify(a) !== JSON.stringify(b)) throw new Error(`streams page differs for ${JSON.stringify(q)}`)
    if (a.streams.length !== 100) throw new Error(`streams page of ${a.streams.length} for ${JSON.stringify(q)}`)
  }
  for (const q of queries.slice(0, 20)) {
    await libPage(q)
    rawPage(q)
  }
  const libTimes: Array<number> = []
  const rawTimes: Array<number> = []
  for (let i = 0; i < queries.length; i++) {
    const q = queries[i]!
    const runLib = async () => {
      const t = performance.now()
      await libPage(q)
      libTimes.push(performance.now() - t)
    }
    const runRaw = () => {
      const t = performance.now()
      rawPage(q)
      rawTimes.push(performance.now() - t)
    }
    if (i % 2 === 0) {
      await runLib()
      runRaw()
    } else {
      runRaw()
      await runLib()
    }
  }
  emit("cli.streams.page", median(libTimes), "ms", median(rawTimes))
  note(`cli.streams.page: p99 lib ${percentile(libTimes, 0.99).toFixed(2)} ms, raw ${percentile(rawTimes, 0.99).toFixed(2)} ms`)

  // what the hot paths run, and how: the streams page, the overview (dashboard), the projections' status, the tail
  const flagged: Array<string> = []
  const head = data.events
  const cases: Array<[string, () => Promise<unknown>]> = [
    ["streams(prefix)", () => libPage({ prefix: "Account-0", after: undefined })],
    ["streams(prefix, after)", () => libPage({ prefix: "Order-0", after: `Order-${String(data.streams / 2).padStart(6, "0")}` })],
    // an `after` below the prefix (a stale cursor, or one of another prefix): SQLite takes one of the two lower bounds
    ["streams(prefix, after < prefix)", () => libPage({ prefix: "Order-0", after: "Account-050000" })],
    ["streams()", () => rt.runPromise(op.streams({ limit: 100 }))],
    // the other filters (not a target; how they scale)
    ["streams(type)", () => rt.runPromise(op.streams({ streamType: "Customer", limit: 100 }))],
    ["streams(eventType)", () => rt.runPromise(op.streams({ eventType: "OrderShipped", limit: 100 }))],
    ["streams(since)", () => rt.runPromise(op.streams({ since: Date.now() - 60_000, limit: 100 }))],
    ["overview", () => rt.runPromise(op.overview)],
    ["projections", () => rt.runPromise(op.projections)],
    ["after(head - 10)", () => rt.runPromise(op.after(head - 10))]
  ]
  for (const [label, f] of cases) {
    const { statements } = await capture(f)
    flagged.push(...explain(raw, label, statements))
  }
  if (flagged.length > 0) for (const f of flagged) note(`FLAGGED ${f}`)
  else note("no statement of these paths scans the events table or takes over 20 ms")
  raw.close()
  await rt.dispose()
}

// --- cli.status.wall -------------------------------------------------------------------------------------------------

const RAW_STATUS = `
const Database = require("better-sqlite3")
const db = new Database(process.argv[1], { readonly: true })
const head = db.prepare("SELECT MAX(position) AS p FROM eventstore_events").get().p ?? 0
const rows = db.prepare("SELECT name, position, owner, lease_until, updated_at FROM eventstore_projections ORDER BY name").all()
console.log(JSON.stringify(rows.map((r) => ({ ...r, head, lag: head - r.position }))))
`

const wall = (command: string, args: ReadonlyArray<string>) => {
  const t = performance.now()
  const child = spawnSync(command, args, { cwd: ROOT, encoding: "utf8" })
  const ms = performance.now() - t
  if (child.status !== 0) throw new Error(`${command} ${args.join(" ")}: exit ${child.status}: ${child.stderr}`)
  return { ms, stdout: child.stdout }
}

async function statusBench(emit: Emit, data: Dataset, quick: boolean) {
  const lib = () => wall(process.execPath, [BIN, "projections", "status", "--db", data.file, "--json"])
  const raw = () => wall(process.execPath, ["-e", RAW_STATUS, data.file])
  // the answer names the projections of the file
  const out = lib().stdout
  for (const name of ["audit", "balances", "search"]) {
    if (!out.includes(`"${name}"`)) throw new Error(`projections status does not show ${name}: ${out.slice(0, 500)}`)
  }
  raw()
  const [libRuns, rawRuns] = await interleave(quick ? 3 : 11, [async () => lib().ms, async () => raw().ms])
  emit("cli.status.wall", median(libRuns!), "ms", median(rawRuns!))
}

// --- cli.tail.lag ----------------------------------------------------------------------------------------------------

const RAW_POLL_MS = 20

/** The raw tail: polls the log after the last position it printed and prints each event as JSON, like `tail --json`. */
const RAW_TAIL = `
const Database = require("better-sqlite3")
const db = new Database(process.argv[1])
db.pragma("busy_timeout = 5000")
let last = db.prepare("SELECT MAX(position) AS p FROM eventstore_events").get().p ?? 0
const after = db.prepare("SELECT position, event_id, stream_id, stream_type, version, event_type, schema_version, payload, metadata, recorded_at FROM eventstore_events WHERE position > ? ORDER BY position LIMIT 500")
setInterval(() => {
  const rows = after.all(last)
  if (rows.length === 0) return
  let out = ""
  for (const r of rows) {
    out += JSON.stringify({ position: r.position, eventId: r.event_id, streamId: r.stream_id, streamType: r.stream_type,
      version: r.version, type: r.event_type, schemaVersion: r.schema_version, payload: JSON.parse(r.payload),
      metadata: r.metadata === null ? null : JSON.parse(r.metadata), recordedAt: new Date(r.recorded_at).toISOString() }) + "\\n"
    last = r.position
  }
  process.stdout.write(out)
}, ${RAW_POLL_MS})
`

/** A tailing child: the time each position's line arrived (this process's clock). */
function tailChild(command: string, args: ReadonlyArray<string>) {
  const child: ChildProcess = spawn(command, args, { cwd: ROOT, stdio: ["ignore", "pipe", "pipe"] })
  const arrived = new Map<number, number>()
  let buffer = ""
  let stderr = ""
  child.stdout!.setEncoding("utf8")
  child.stdout!.on("data", (chunk: string) => {
    const now = performance.now()
    buffer += chunk
    let nl: number
    while ((nl = buffer.indexOf("\n")) >= 0) {
      const line = buffer.slice(0, nl)
      buffer = buffer.slice(nl + 1)
      if (line.trim() === "") continue
      try {
        const position = (JSON.parse(line) as { position: number }).position
        if (typeof position === "number" && !arrived.has(position)) arrived.set(position, now)
      } catch {
        stderr += `unparsed line: ${line.slice(0, 200)}\n`
      }
    }
  })
  child.stderr!.setEncoding("utf8")
  child.stderr!.on("data", (chunk: string) => {
    stderr += chunk
  })
  return {
    arrived,
    stderr: () => stderr,
    stop: () =>
      new Promise<void>((resolve) => {
        if (child.exitCode !== null || child.signalCode !== null) return resolve()
        child.once("exit", () => resolve())
        child.kill("SIGTERM")
      })
  }
}

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms))

/**
 * One round: the child started and seen printing a first append (its start not timed), then `count` appends through
 * the library, `1000 / rate` ms apart; the lag of each (acknowledged → its line read here).
 */
async function tailRound(
  store: EventStore.EventStoreService,
  rt: ManagedRuntime.ManagedRuntime<any, any>,
  command: string,
  args: ReadonlyArray<string>,
  count: number,
  rate: number
) {
  const tail = tailChild(command, args)
  const append = (i: number) =>
    rt.runPromise(store.append(`Tail-${i % 10}`, [{ type: "Ticked", payload: { i } }], { streamType: "Tail" }))
  try {
    // ready: the child prints appends made after its start
    const deadline = performance.now() + 30_000
    let ready = false
    while (!ready && performance.now() < deadline) {
      const r = await append(-1)
      const until = performance.now() + 1_000
      while (performance.now() < until && !tail.arrived.has(r.position)) await sleep(10)
      ready = tail.arrived.has(r.position)
    }
    if (!ready) throw new Error(`tail child printed nothing in 30 s: ${tail.stderr().slice(0, 1000)}`)
    const acknowledged = new Map<number, number>()
    const start = performance.now()
    for (let i = 0; i < count; i++) {
      const due = start + (i * 1000) / rate
      const wait = due - performance.now()
      if (wait > 0) await sleep(wait)
      const r = await append(i)
      acknowledged.set(r.position, performance.now())
    }
    const last = performance.now() + 5_000
    while (performance.now() < last && [...acknowledged.keys()].some((p) => !tail.arrived.has(p))) await sleep(10)
    const lags: Array<number> = []
    for (const [position, at] of acknowledged) {
      const arrived = tail.arrived.get(position)
      if (arrived === undefined) throw new Error(`tail child never printed position ${position}: ${tail.stderr().slice(0, 1000)}`)
      lags.push(arrived - at)
    }
    return lags
  } finally {
    await tail.stop()
  }
}

async function tailBench(emit: Emit, data: Dataset, quick: boolean) {
  const rt = ManagedRuntime.make(Sqlite.layer({ filename: data.file }).pipe(Layer.provideMerge(quiet)))
  const store = await rt.runPromise(EventStore.EventStore)
  const rate = 20
  const perRound = quick ? 40 : 100
  const lib = () => tailRound(store, rt, process.execPath, [BIN, "tail", "--all", "--json", "--db", data.file], perRound, rate)
  const raw = () => tailRound(store, rt, process.execPath, ["-e", RAW_TAIL, data.file], perRound, rate)
  const [libRounds, rawRounds] = await interleave(quick ? 1 : 2, [lib, raw])
  const libLags = libRounds!.flat()
  const rawLags = rawRounds!.flat()
  await rt.dispose()
  emit("cli.tail.lag.p50", percentile(libLags, 0.5), "ms", percentile(rawLags, 0.5))
  emit("cli.tail.lag.p99", percentile(libLags, 0.99), "ms", percentile(rawLags, 0.99))
  note(`cli.tail.lag: ${libLags.length} appends at ${rate}/s; max lib ${Math.max(...libLags).toFixed(1)} ms, raw ${
    Math.max(...rawLags).toFixed(1)
  } ms`)
}

// --- dashboard -------------------------------------------------------------------------------------------------------

interface Fetched {
  readonly body: string
  readonly bytes: number
}

/** A GET on a new connection: its body and the bytes read from the socket (headers included). */
const get = (url: string) =>
  new Promise<Fetched>((resolve, reject) => {
    const request = http.get(url, { agent: false }, (res) => {
      const chunks: Array<Buffer> = []
      res.on("data", (c: Buffer) => chunks.push(c))
      res.on("end", () => {
        if (res.statusCode !== 200) return reject(new Error(`GET ${url}: ${res.statusCode}`))
        resolve({ body: Buffer.concat(chunks).toString("utf8"), bytes: request.socket?.bytesRead ?? 0 })
      })
      res.on("error", reject)
    })
    request.on("error", reject)
  })

/**
 * The server-sent events of `url` on a new connection: calls `onEvent` with each event's name, data and arrival time
 * until it returns true, then closes the connection; the bytes read.
 */
const sse = (url: string, onEvent: (event: string, data: string, at: number) => boolean) =>
  new Promise<number>((resolve, reject) => {
    const request = http.get(url, { agent: false }, (res) => {
      if (res.statusCode !== 200) return reject(new Error(`GET ${url}: ${res.statusCode}`))
      let buffer = ""
      res.setEncoding("utf8")
      res.on("data", (chunk: string) => {
        const at = performance.now()
        buffer += chunk
        let end: number
        while ((end = buffer.indexOf("\n\n")) >= 0) {
          const block = buffer.slice(0, end)
          buffer = buffer.slice(end + 2)
          let event = "message"
          const data: Array<string> = []
          for (const line of block.split("\n")) {
            if (line.startsWith("event:")) event = line.slice(6).trim()
            else if (line.startsWith("data:")) data.push(line.slice(5).trimStart())
          }
          if (data.length === 0) continue
          if (onEvent(event, data.join("\n"), at)) {
            const bytes = request.socket?.bytesRead ?? 0
            request.destroy()
            return resolve(bytes)
          }
        }
      })
      res.on("error", () => undefined)
    })
    request.on("error", (e) => {
      if ((e as NodeJS.ErrnoException).code !== "ECONNRESET") reject(e)
    })
  })

/** The overview's queries, raw: what `/api/overview` reads, prepared once, answered as the same JSON. */
const rawOverview = (db: Database.Database) => {
  const head = db.prepare(`SELECT MAX(position) AS p FROM ${E}`).pluck()
  const last = db.prepare(`SELECT recorded_at FROM ${E} ORDER BY position DESC LIMIT 1`).pluck()
  const recent = db.prepare(`SELECT count(*) AS n, min(recorded_at) AS oldest FROM (
    SELECT recorded_at FROM ${E} ORDER BY position DESC LIMIT 10000) WHERE recorded_at >= ?`)
  const checkpoints = db.prepare(`SELECT name, position, owner, lease_until, updated_at FROM eventstore_projections ORDER BY name`)
  const parked = db.prepare(`SELECT projection, count(*) AS n FROM eventstore_parked_events GROUP BY projection`)
  const firstAfter = db.prepare(`SELECT recorded_at FROM ${E} WHERE position > ? ORDER BY position LIMIT 1`).pluck()
  const lastParked = db.prepare(`SELECT position, event_type, reason FROM eventstore_parked_events WHERE projection = ?
    ORDER BY parked_at DESC, position DESC LIMIT 1`)
  return () => {
    const now = Date.now()
    const h = head.get() as number
    const r = recent.get(now - 10_000) as { n: number; oldest: number }
    const counts = new Map((parked.all() as Array<{ projection: string; n: number }>).map((x) => [x.projection, x.n]))
    const projections = (checkpoints.all() as Array<{ name: string; position: number; lease_until: number; updated_at: number }>)
      .map((c) => {
        const oldest = c.position < h ? firstAfter.get(c.position) as number : undefined
        const n = counts.get(c.name) ?? 0
        return {
          name: c.name,
          position: c.position,
          head: h,
          lag: h - c.position,
          lagSeconds: oldest === undefined ? 0 : (now - oldest) / 1000,
          stalledSeconds: oldest === undefined ? 0 : (now - Math.max(c.updated_at, oldest)) / 1000,
          updatedAt: new Date(c.updated_at).toISOString(),
          leased: c.lease_until >= now,
          parked: n,
          ...(n > 0 ? { lastParked: lastParked.get(c.name) } : {})
        }
      })
    const span = r.n >= 10_000 ? Math.max(1, now - r.oldest) : 10_000
    return JSON.stringify({
      head: h,
      lastRecordedAt: new Date(last.get() as number).toISOString(),
      eventsPerSecond: r.n === 0 ? 0 : Math.round((r.n * 1000 / span) * 10) / 10,
      projections,
      parked: [...counts.values()].reduce((a, b) => a + b, 0)
    })
  }
}

async function dashboardBench(emit: Emit, data: Dataset, quick: boolean, want: (name: string) => boolean) {
  const rt = ManagedRuntime.make(
    Dashboard.serve({ port: 0 }).pipe(
      Layer.provideMerge(Operator.layer()),
      Layer.provideMerge(Sqlite.layer({ filename: data.file })),
      Layer.provideMerge(quiet)
    )
  )
  const server = await rt.runPromise(HttpServer.HttpServer)
  const address = server.address as { port: number }
  const base = `http://127.0.0.1:${address.port}`
  const store = await rt.runPromise(EventStore.EventStore)

  if (want("dashboard.first.load")) {
    // a browser's first visit: the page, then what its script asks for on the overview route (the overview, and the
    // live stream whose first event carries one), each on a new connection
    const parts = { page: [] as Array<number>, overview: [] as Array<number>, live: [] as Array<number> }
    const load = async () => {
      const t = performance.now()
      const page = await get(`${base}/`)
      const t1 = performance.now()
      const [overview, live] = await Promise.all([
        get(`${base}/api/overview`).then((r) => {
          parts.overview.push(performance.now() - t1)
          return r
        }),
        sse(`${base}/api/live`, (event) => event === "overview").then((r) => {
          parts.live.push(performance.now() - t1)
          return r
        })
      ])
      const ms = performance.now() - t
      parts.page.push(t1 - t)
      if (!page.body.includes("<script") || JSON.parse(overview.body).head < data.events) {
        throw new Error("dashboard: unexpected page or overview")
      }
      return { ms, bytes: page.bytes + overview.bytes + live }
    }
    const raw = new Database(data.file, { readonly: true })
    const rawAnswer = rawOverview(raw)
    const cold = await load()
    note(`dashboard.first.load: the server's first load (cold) ${cold.ms.toFixed(1)} ms`)
    for (let i = 0; i < 3; i++) {
      await load()
      rawAnswer()
    }
    const [libRuns, rawRuns] = await interleave(quick ? 5 : 21, [load, async () => {
      const t = performance.now()
      rawAnswer()
      return { ms: performance.now() - t, bytes: 0 }
    }])
    raw.close()
    emit("dashboard.first.load", median(libRuns!.map((r) => r.ms)), "ms", median(rawRuns!.map((r) => r.ms)))
    emit("dashboard.first.load.bytes", median(libRuns!.map((r) => r.bytes)) / 1024, "KB", 100)
    note(`dashboard.first.load: medians: page ${median(parts.page).toFixed(1)} ms, then (in parallel) /api/overview ${
      median(parts.overview).toFixed(1)
    } ms, /api/live's first event ${median(parts.live).toFixed(1)} ms`)
  }

  if (want("dashboard.live.interval")) {
    // appends every 20 ms (through the store the dashboard serves) while the live stream is read
    const seconds = quick ? 3 : 10
    let appending = true
    let appended = 0
    const appender = (async () => {
      while (appending) {
        await rt.runPromise(store.append(`Live-${appended % 10}`, [{ type: "Ticked", payload: { i: appended } }], {
          streamType: "Live"
        }))
        appended++
        await sleep(20)
      }
    })()
    const arrivals: Array<number> = []
    const heads: Array<number> = []
    const until = performance.now() + seconds * 1000
    await sse(`${base}/api/live`, (event, body, at) => {
      if (event !== "overview") return false
      arrivals.push(at)
      heads.push((JSON.parse(body) as { head: number }).head)
      return at >= until
    })
    appending = false
    await appender
    // from the second event on: the first is sent at connect
    const intervals = arrivals.slice(2).map((t, i) => t - arrivals[i + 1]!)
    emit("dashboard.live.interval", median(intervals), "ms", 250)
    note(`dashboard.live.interval: ${intervals.length} intervals, p99 ${percentile(intervals, 0.99).toFixed(1)} ms, ${appended} appends, head ${
      heads[0]
    } → ${heads[heads.length - 1]}`)
  }
  await rt.dispose()
}

// --- cli.export / cli.import -----------------------------------------------------------------------------------------

const EXPORT_COLUMNS = `position, event_id, stream_id, stream_type, version, event_type, schema_version, payload,
  metadata, tenant_id, recorded_at, claims`

/** The same line as the library's `exportEvents`: the row as JSON, payload and metadata spliced in as stored. */
const rawLine = (r: Array<any>) =>
  `{"eventId":${JSON.stringify(r[1])},"streamId":${JSON.stringify(r[2])},"streamType":${JSON.stringify(r[3])},"version":${
    r[4]
  },"type":${JSON.stringify(r[5])},"schemaVersion":${r[6]},"payload":${r[7]},"metadata":${r[8] ?? "null"},"tenantId":${
    r[9] === null ? "null" : JSON.stringify(r[9])
  },"recordedAt":${r[10]},"claims":${r[11] ?? "null"},"position":${r[0]}}`

/** Raw export: one statement iterated as arrays, lines written 5,000 at a time. */
function rawExport(file: string, out: string, limit: number) {
  const db = new Database(file, { readonly: true })
  const fd = fs.openSync(out, "w")
  const rows = db.prepare(`SELECT ${EXPORT_COLUMNS} FROM ${E} WHERE position <= ? ORDER BY position`).raw(true)
  let batch: Array<string> = []
  let n = 0
  for (const r of rows.iterate(limit) as Iterable<Array<any>>) {
    batch.push(rawLine(r))
    n++
    if (batch.length === 5000) {
      fs.writeSync(fd, batch.join("\n") + "\n")
      batch = []
    }
  }
  if (batch.length > 0) fs.writeSync(fd, batch.join("\n") + "\n")
  fs.closeSync(fd)
  db.close()
  return n
}

/** Library export: `exportEvents`, a chunk (a page of 5,000) written at a time. */
async function libExport(rt: ManagedRuntime.ManagedRuntime<Operator.Operator, any>, out: string, limit: number) {
  const fd = fs.openSync(out, "w")
  let n = 0
  await rt.runPromise(Effect.flatMap(Operator.Operator, (op) =>
    op.exportEvents().pipe(
      Stream.take(limit),
      Stream.runForEachChunk((chunk) =>
        Effect.sync(() => {
          const lines = Array.from(chunk)
          n += lines.length
          fs.writeSync(fd, lines.join("\n") + "\n")
        })
      )
    )))
  fs.closeSync(fd)
  return n
}

const readLines = (file: string) => {
  const text = fs.readFileSync(file, "utf8")
  const lines = text.split("\n")
  if (lines[lines.length - 1] === "") lines.pop()
  return lines
}

/** Raw import: each line parsed, one prepared insert (skipping a stored event id) per line, one transaction. */
async function rawImport(ndjson: string, file: string) {
  await libraryFile(file)
  const db = new Database(file)
  db.pragma("journal_mode = WAL")
  db.pragma("synchronous = FULL")
  const insert = db.prepare(`INSERT INTO ${E} (event_id, stream_id, stream_type, version, event_type, schema_version,
    payload, metadata, tenant_id, recorded_at, claims) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
    ON CONFLICT (event_id) DO NOTHING`)
  const t = performance.now()
  const lines = readLines(ndjson)
  let written = 0
  db.transaction(() => {
    for (const line of lines) {
      const e = JSON.parse(line)
      written += insert.run(
        e.eventId,
        e.streamId,
        e.streamType,
        e.version,
        e.type,
        e.schemaVersion,
        JSON.stringify(e.payload),
        e.metadata === null || e.metadata === undefined ? null : JSON.stringify(e.metadata),
        e.tenantId ?? null,
        e.recordedAt,
        Array.isArray(e.claims) ? JSON.stringify(e.claims) : null
      ).changes
    }
  })()
  const seconds = (performance.now() - t) / 1000
  db.close()
  return { seconds, written }
}

/** Library import: `importLines` in chunks of IMPORT_CHUNK lines (one transaction each), into a fresh store. */
async function libImport(ndjson: string, file: string) {
  removeDb(file)
  const rt = operatorRuntime(file)
  const op = await rt.runPromise(Operator.Operator)
  const t = performance.now()
  const lines = readLines(ndjson)
  const written = await rt.runPromise(Effect.gen(function*() {
    let n = 0
    for (let i = 0; i < lines.length; i += IMPORT_CHUNK) n += (yield* op.importLines(lines.slice(i, i + IMPORT_CHUNK))).written
    return n
  }))
  const seconds = (performance.now() - t) / 1000
  await rt.dispose()
  return { seconds, written }
}

const sha = (file: string) => crypto.createHash("sha256").update(fs.readFileSync(file)).digest("hex")

async function exportImportBench(emit: Emit, dir: string, data: Dataset, quick: boolean, want: (name: string) => boolean) {
  const exportCount = data.events
  const importCount = quick ? data.events : 200_000
  const rounds = quick ? 1 : 3
  const libOut = path.join(dir, "export-lib.ndjson")
  const rawOut = path.join(dir, "export-raw.ndjson")
  const rt = operatorRuntime(data.file)
  await rt.runPromise(Operator.Operator)
  if (want("cli.export")) {
    const [libRuns, rawRuns] = await interleave(rounds, [
      async () => {
        const t = performance.now()
        const n = await libExport(rt, libOut, exportCount)
        return n / ((performance.now() - t) / 1000)
      },
      async () => {
        const t = performance.now()
        const n = rawExport(data.file, rawOut, exportCount)
        return n / ((performance.now() - t) / 1000)
      }
    ])
    if (sha(libOut) !== sha(rawOut)) throw new Error("cli.export: the library's and the raw export differ")
    emit("cli.export", median(libRuns!), "events/s", median(rawRuns!))
    note(`cli.export: ${exportCount} events, ${(fs.statSync(libOut).size / 2 ** 20).toFixed(0)} MB`)
  }
  await rt.dispose()
  if (want("cli.import")) {
    // the first `importCount` events of the log (every stream's first versions: a valid log of its own)
    const source = path.join(dir, "import.ndjson")
    rawExport(data.file, source, importCount)
    const libFile = path.join(dir, "import-lib.db")
    const rawFile = path.join(dir, "import-raw.db")
    const [libRuns, rawRuns] = await interleave(rounds, [
      async () => {
        const r = await libImport(source, libFile)
        if (r.written !== importCount) throw new Error(`cli.import: the library wrote ${r.written} of ${importCount}`)
        return importCount / r.seconds
      },
      async () => {
        const r = await rawImport(source, rawFile)
        if (r.written !== importCount) throw new Error(`cli.import: raw wrote ${r.written} of ${importCount}`)
        return importCount / r.seconds
      }
    ])
    // the same store either way: the library's import of its own export again writes nothing
    const again = await libImportAgain(source, libFile)
    if (again.written !== 0 || again.skipped !== importCount) {
      throw new Error(`cli.import: a second import wrote ${again.written}, skipped ${again.skipped}`)
    }
    emit("cli.import", median(libRuns!), "events/s", median(rawRuns!))
    note(`cli.import: ${importCount} events in chunks of ${IMPORT_CHUNK}`)
    removeDb(libFile)
    removeDb(rawFile)
    fs.rmSync(source, { force: true })
  }
  fs.rmSync(libOut, { force: true })
  fs.rmSync(rawOut, { force: true })
}

async function libImportAgain(ndjson: string, file: string) {
  const rt = operatorRuntime(file)
  const op = await rt.runPromise(Operator.Operator)
  const lines = readLines(ndjson)
  const result = await rt.runPromise(Effect.gen(function*() {
    let written = 0
    let skipped = 0
    for (let i = 0; i < lines.length; i += IMPORT_CHUNK) {
      const r = yield* op.importLines(lines.slice(i, i + IMPORT_CHUNK))
      written += r.written
      skipped += r.skipped
    }
    return { written, skipped }
  }))
  await rt.dispose()
  return result
}

// --- entry -----------------------------------------------------------------------------------------------------------

export async function operatorBenches(emit: Emit, dir: string, quick: boolean, want: (name: string) => boolean) {
  const names = [
    "cli.streams.page",
    "cli.status.wall",
    "cli.tail.lag",
    "dashboard.first.load",
    "dashboard.live.interval",
    "cli.export",
    "cli.import"
  ]
  if (!names.some((n) => want(n))) return
  note(`load average ${os.loadavg().map((l) => l.toFixed(2)).join(" ")} on ${os.cpus().length} cores`)
  const data = await dataset(dir, quick)
  const needsBin = want("cli.status.wall") || want("cli.tail.lag.p99") || want("cli.tail.lag.p50")
  if (needsBin && !fs.existsSync(BIN)) throw new Error(`${BIN} is missing: build the CLI (npm run build) first`)
  if (want("cli.streams.page")) await streamsPageBench(emit, data, quick)
  if (want("cli.status.wall")) await statusBench(emit, data, quick)
  if (want("cli.tail.lag.p50") || want("cli.tail.lag.p99")) await tailBench(emit, data, quick)
  if (want("dashboard.first.load") || want("dashboard.live.interval")) await dashboardBench(emit, data, quick, want)
  if (want("cli.export") || want("cli.import")) await exportImportBench(emit, dir, data, quick, want)
  removeDb(data.file)
}
