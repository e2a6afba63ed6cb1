/**
 * Event bus benchmarks on JetStream, each against raw @nats-io doing the same work the fastest correct way:
 *
 * - `bus.forward`: the forwarder (`Bus.layerForwarder` on `Nats.layerBus`) shipping a memory store's log to a stream,
 *   from its start until its checkpoint reaches the head; raw: the same envelopes (`Bus.encode`, `msgID` = event id,
 *   the same subjects) published to a stream of the same settings with a sliding window of publishes in flight.
 *   `.onestream` is the same with every event in one stream, which the forwarder sends one at a time by design.
 * - `bus.consume`: a durable consumer (`bus.consume`) reading a pre-filled stream to its end; raw: a durable pull
 *   consumer with explicit acks (the library's settings) that `JSON.parse`s and acks each message. `.ordered` is a
 *   reference: the raw ordered consumer (no acks) against the raw durable one.
 * - `bus.e2e.lag.p50` / `.p99`: committed append (SQLite file) → handler in another process, at a steady rate; raw:
 *   better-sqlite3's insert, then the publish, to a raw durable consumer in the other process.
 *
 * Every stream is this run's own (named after the pid) and deleted at the end.
 */
import * as JetStream from "@nats-io/jetstream"
import * as Transport from "@nats-io/transport-node"
import Database from "better-sqlite3"
import { Bus, EventStore, Projection } from "effect-eventstore"
import type { InvalidInput } from "effect-eventstore/Errors"
import * as Nats from "effect-eventstore/Nats"
import * as Sqlite from "effect-eventstore/Sqlite"
import * as SqlProjection from "effect-eventstore/SqlProjection"
import * as Chunk from "effect/Chunk"
import * as Context from "effect/Context"
import * as Deferred from "effect/Deferred"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Logger from "effect/Logger"
import * as LogLevel from "effect/LogLevel"
import * as ManagedRuntime from "effect/ManagedRuntime"
import * as Stream from "effect/Stream"
import { spawn } from "node:child_process"
import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"
import { fileURLToPath } from "node:url"
import { INSERT, median, percentile } from "./common.js"

type Emit = (bench: string, value: number, unit: string, baseline: number) => void

const url = process.env.NATS_URL ?? "nats://127.0.0.1:4222"
const here = path.dirname(fileURLToPath(import.meta.url))
const tag = `${process.pid}_${Date.now().toString(36)}`
/** Streams this run made (each with its `_DLQ` when the library made it): all deleted at the end. */
const made = new Set<string>()

/** A stream name and subject prefix of this run's own. */
const names = (what: string) => {
  const stream = `BENCH_BUS_${what}_${tag}`
  made.add(stream)
  return { stream, prefix: `benchbus_${what}_${tag}` }
}

/**
 * Publishes in flight at once in the raw baselines: a sliding window (a new publish as each one is acknowledged).
 * On a local server, windows from 100 to 2000 measured within noise of each other, and all of 20000 at once slower.
 */
const WINDOW = 1000
/** Events of each e2e round left out of its percentiles: the first trips through new connections and functions. */
const E2E_WARMUP = 20

const quiet = Logger.minimumLogLevel(LogLevel.Warning)
const seconds = (start: number) => (performance.now() - start) / 1000
/** Wall-clock milliseconds with sub-millisecond precision, comparable between processes on one machine. */
const now = () => performance.timeOrigin + performance.now()

type NatsRuntime = ManagedRuntime.ManagedRuntime<Nats.NatsClient, Nats.NatsError>

interface Raw {
  readonly nc: Transport.NatsConnection
  readonly js: JetStream.JetStreamClient
  readonly jsm: JetStream.JetStreamManager
}

/** A stream with the settings `Nats.layerBus` gives its own (for the raw baselines). */
const addStream = (raw: Raw, stream: string, prefix: string) =>
  raw.jsm.streams.add({
    name: stream,
    subjects: [`${prefix}.*.*.*`],
    storage: JetStream.StorageType.File,
    retention: JetStream.RetentionPolicy.Limits,
    num_replicas: 1,
    duplicate_window: Transport.nanos(120_000),
    max_age: 0
  })

const expectMessages = async (raw: Raw, stream: string, n: number) => {
  const info = await raw.jsm.streams.info(stream)
  if (info.state.messages !== n) throw new Error(`${stream} holds ${info.state.messages} messages, expected ${n}`)
}

/** `runners` in `rounds` interleaved rounds (rotating who goes first) after one untimed round each; the samples. */
async function interleaved(rounds: number, runners: ReadonlyArray<() => Promise<number>>) {
  const samples = runners.map(() => [] as Array<number>)
  for (const run of runners) await run()
  for (let r = 0; r < rounds; r++) {
    for (let k = 0; k < runners.length; k++) {
      const i = (k + r) % runners.length
      samples[i]!.push(await runners[i]!())
    }
  }
  return samples
}

// --- forward -------------------------------------------------------------------------------------------------------

/** A memory store holding `n` Deposited events over `streams` streams, one event per append, round robin. */
const seeded = (n: number, streams: number) =>
  Layer.effectDiscard(Effect.gen(function*() {
    const store = yield* EventStore.EventStore
    for (let i = 0; i < n; i++) {
      yield* store.append(`Account-${i % streams}`, [{ type: "Deposited", payload: { amount: i % 97 } }])
    }
  })).pipe(Layer.provideMerge(EventStore.layerMemory))

/** The library: events/s from the forwarder's start until its checkpoint is at the head. */
const libForward = (natsRt: NatsRuntime, raw: Raw, stream: string, prefix: string, n: number, streams: number) =>
  async () => {
    await raw.jsm.streams.purge(stream).catch(() => undefined)
    const rate = await natsRt.runPromise(Effect.scoped(Effect.gen(function*() {
      const ready = yield* Layer.build(
        Layer.mergeAll(seeded(n, streams), Projection.layerMemory, Nats.layerBus({ stream, prefix }))
      )
      const head = yield* Effect.provide(Effect.flatMap(EventStore.EventStore, (s) => s.head), ready)
      const start = performance.now()
      const running = yield* Layer.build(Bus.layerForwarder({ name: "forwarder" })).pipe(Effect.provide(ready))
      yield* Context.get(running, Projection.Projections).awaitPosition("forwarder", head, "5 minutes")
      return head / seconds(start)
    })))
    await expectMessages(raw, stream, n)
    return rate
  }

/** Raw: the same envelopes, encoded and published with `WINDOW` publishes in flight. */
const rawForward = (raw: Raw, stream: string, prefix: string, n: number, streams: number) => async () => {
  await raw.jsm.streams.purge(stream)
  const events = await Effect.runPromise(
    Effect.flatMap(EventStore.EventStore, (s) => Stream.runCollect(s.readAll())).pipe(
      Effect.map(Chunk.toReadonlyArray),
      Effect.provide(seeded(n, streams))
    )
  )
  const encoder = new TextEncoder()
  const subject = `${prefix}.${Bus.noTenant}.Account.Deposited`
  const start = performance.now()
  let next = 0
  await Promise.all(Array.from({ length: WINDOW }, async () => {
    while (next < events.length) {
      const e = events[next++]!
      await raw.js.publish(subject, encoder.encode(Bus.encode(e)), { msgID: e.eventId, timeout: 30_000 })
    }
  }))
  const rate = events.length / seconds(start)
  await expectMessages(raw, stream, n)
  return rate
}

async function forwardBench(
  emit: Emit,
  raw: Raw,
  natsRt: NatsRuntime,
  bench: string,
  rounds: number,
  n: number,
  streams: number
) {
  const lib = names(`fwdlib${streams}`)
  const base = names(`fwdraw${streams}`)
  await addStream(raw, base.stream, base.prefix)
  const [l, r] = await interleaved(rounds, [
    libForward(natsRt, raw, lib.stream, lib.prefix, n, streams),
    rawForward(raw, base.stream, base.prefix, n, streams)
  ])
  emit(bench, median(l!), `events/s (${n} events, ${streams} streams)`, median(r!))
}

// --- consume -------------------------------------------------------------------------------------------------------

/** Fills the stream with `n` envelopes (raw publishes, as the forwarder would have). */
async function fill(raw: Raw, stream: string, prefix: string, n: number) {
  const events = await Effect.runPromise(
    Effect.flatMap(EventStore.EventStore, (s) => Stream.runCollect(s.readAll())).pipe(
      Effect.map(Chunk.toReadonlyArray),
      Effect.provide(seeded(n, 200))
    )
  )
  const subject = `${prefix}.${Bus.noTenant}.Account.Deposited`
  let next = 0
  await Promise.all(Array.from({ length: WINDOW }, async () => {
    while (next < events.length) {
      const e = events[next++]!
      await raw.js.publish(subject, Bus.encode(e), { msgID: e.eventId, timeout: 30_000 })
    }
  }))
  await expectMessages(raw, stream, n)
}

let consumers = 0

/** The library: events/s from `consume` until the handler has seen all `n`. */
const libConsume = (busRt: ManagedRuntime.ManagedRuntime<Bus.EventBus, Bus.BusError | Nats.NatsError | InvalidInput>, raw: Raw, stream: string, n: number) =>
  async () => {
    const name = `lib${consumers++}`
    const rate = await busRt.runPromise(Effect.scoped(Effect.gen(function*() {
      const bus = yield* Bus.EventBus
      const done = yield* Deferred.make<void>()
      let seen = 0
      const start = performance.now()
      yield* bus.consume({ name }, () =>
        Effect.suspend(() => ++seen === n ? Deferred.succeed(done, undefined) : Effect.void))
      yield* Effect.timeoutFail(Deferred.await(done), {
        duration: "2 minutes",
        onTimeout: () => new Error(`bus.consume: ${seen} of ${n} events in 2 minutes`)
      })
      return n / seconds(start)
    })))
    await raw.jsm.consumers.delete(stream, name)
    return rate
  }

/** Raw: a durable pull consumer with the library's settings; `JSON.parse` and ack each message. */
const rawConsume = (raw: Raw, stream: string, prefix: string, n: number) => async () => {
  const name = `raw${consumers++}`
  const start = performance.now()
  await raw.jsm.consumers.add(stream, {
    durable_name: name,
    ack_policy: JetStream.AckPolicy.Explicit,
    ack_wait: Transport.nanos(30_000),
    max_ack_pending: 1000,
    filter_subject: `${prefix}.*.*.*`,
    deliver_policy: JetStream.DeliverPolicy.All
  })
  const consumer = await raw.js.consumers.get(stream, name)
  // the callback form: each message handled as it arrives, no promise per message (faster than the async iterator)
  let seen = 0
  let done!: () => void
  const finished = new Promise<void>((resolve) => (done = resolve))
  const messages = await consumer.consume({
    max_messages: 256,
    callback: (m) => {
      if (seen >= n) return
      JSON.parse(m.string())
      m.ack()
      if (++seen === n) done()
    }
  })
  const stuck = setTimeout(done, 120_000)
  await finished
  const rate = n / seconds(start)
  clearTimeout(stuck)
  if (seen < n) throw new Error(`raw durable consumer: ${seen} of ${n} events in 2 minutes`)
  await messages.close()
  await raw.jsm.consumers.delete(stream, name)
  return rate
}

/** Raw: an ordered consumer (ephemeral, no acks) reading the same messages. */
const rawOrdered = (raw: Raw, stream: string, n: number) => async () => {
  const start = performance.now()
  const consumer = await raw.js.consumers.get(stream)
  const messages = await consumer.consume({ max_messages: 256 })
  const stuck = setTimeout(() => void messages.close(), 120_000)
  let seen = 0
  for await (const m of messages) {
    JSON.parse(m.string())
    if (++seen === n) break
  }
  const rate = n / seconds(start)
  clearTimeout(stuck)
  if (seen < n) throw new Error(`raw ordered consumer: ${seen} of ${n} events in 2 minutes`)
  await messages.close()
  return rate
}

async function consumeBench(
  emit: Emit,
  raw: Raw,
  rounds: number,
  n: number
) {
  const { prefix, stream } = names("consume")
  const busRt = ManagedRuntime.make(
    Nats.layerBus({ stream, prefix }).pipe(Layer.provide(Nats.layer({ servers: url })), Layer.provideMerge(quiet))
  )
  try {
    await busRt.runPromise(Effect.void)
    await fill(raw, stream, prefix, n)
    const [lib, durable, ordered] = await interleaved(rounds, [
      libConsume(busRt, raw, stream, n),
      rawConsume(raw, stream, prefix, n),
      rawOrdered(raw, stream, n)
    ])
    emit("bus.consume", median(lib!), `events/s (${n} events)`, median(durable!))
    emit("bus.consume.ordered", median(ordered!), `events/s (${n} events, raw ordered vs raw durable)`, median(durable!))
  } finally {
    await busRt.dispose()
  }
}

// --- end to end ----------------------------------------------------------------------------------------------------

/**
 * Starts `bus-child.ts` consuming `stream` (`lib`: `bus.consume`; `raw`: a raw durable consumer) until it has
 * handled `n` events; `ready` resolves once it consumes, `received` with each event's receive time by its index.
 */
function child(mode: "lib" | "raw", stream: string, prefix: string, consumer: string, n: number) {
  const proc = spawn(
    process.execPath,
    ["--import", "tsx", "--conditions=@effect-eventstore/source", path.join(here, "bus-child.ts"), mode, url, stream, prefix, consumer, String(n)],
    { cwd: path.join(here, ".."), stdio: ["ignore", "pipe", "pipe"] }
  )
  let out = ""
  let err = ""
  let onReady: () => void = () => undefined
  const ready = new Promise<void>((resolve) => (onReady = resolve))
  proc.stdout.setEncoding("utf8").on("data", (chunk: string) => {
    out += chunk
    if (out.includes("ready\n")) onReady()
  })
  proc.stderr.setEncoding("utf8").on("data", (chunk: string) => (err += chunk))
  const received = new Promise<Array<number>>((resolve, reject) => {
    const timer = setTimeout(() => proc.kill("SIGKILL"), 120_000)
    proc.on("exit", (code) => {
      clearTimeout(timer)
      const last = out.trim().split("\n").pop() ?? ""
      if (code === 0 && last.startsWith("[")) resolve(JSON.parse(last))
      else reject(new Error(`bus child (${mode}) exited with ${code}: ${err.trim()}`))
    })
  })
  // awaited once the appends are done; a failure before then is not an unhandled rejection
  received.catch(() => undefined)
  // a child that fails before it is ready ends the wait too
  const readyOrExit = Promise.race([ready, received.then(() => undefined)])
  return { ready: readyOrExit, received, kill: () => proc.kill("SIGKILL") }
}

/** Each event's lag (ms) from its commit to its handler, leaving out the first `E2E_WARMUP`. */
const lagsOf = (acked: ReadonlyArray<number>, received: ReadonlyArray<number>) =>
  acked.slice(E2E_WARMUP).map((a, i) => received[i + E2E_WARMUP]! - a)

/** The library: appends at `rate`/s to a SQLite file, the forwarder ships them, a child process consumes them. */
async function libE2e(raw: Raw, stream: string, prefix: string, filename: string, n: number, rate: number, round: number) {
  const rt = ManagedRuntime.make(
    Bus.layerForwarder({ name: "forwarder" }).pipe(
      Layer.provideMerge(Nats.layerBus({ stream, prefix })),
      Layer.provideMerge(SqlProjection.layer),
      Layer.provideMerge(Sqlite.layer({ filename })),
      Layer.provide(Nats.layer({ servers: url })),
      Layer.provideMerge(quiet)
    )
  )
  try {
    await rt.runPromise(Effect.void)
    await raw.jsm.streams.purge(stream)
    const consumer = `e2elib${round}`
    const c = child("lib", stream, prefix, consumer, n)
    try {
      await c.ready
      const acked = await rt.runPromise(Effect.gen(function*() {
        const store = yield* EventStore.EventStore
        const acked: Array<number> = []
        const start = performance.now()
        for (let i = 0; i < n; i++) {
          const wait = start + (i * 1000) / rate - performance.now()
          if (wait > 0) yield* Effect.sleep(wait)
          yield* store.append(`Account-${i % 50}`, [{ type: "Deposited", payload: { i } }])
          acked.push(now())
        }
        return acked
      }))
      const lags = lagsOf(acked, await c.received)
      await raw.jsm.consumers.delete(stream, consumer)
      return lags
    } finally {
      c.kill()
    }
  } finally {
    await rt.dispose()
  }
}

/** Raw: better-sqlite3's insert, then the publish of its envelope; a raw durable consumer in the child. */
async function rawE2e(raw: Raw, stream: string, prefix: string, filename: string, n: number, rate: number, round: number) {
  // the library's schema, then a raw connection configured like the library's writer
  const schema = ManagedRuntime.make(Sqlite.layer({ filename }))
  await schema.runPromise(Effect.void)
  await schema.dispose()
  const db = new Database(filename)
  db.pragma("journal_mode = WAL")
  db.pragma("synchronous = FULL")
  const insert = db.prepare(INSERT)
  await raw.jsm.streams.purge(stream)
  const consumer = `e2eraw${round}`
  const c = child("raw", stream, prefix, consumer, n)
  try {
    await c.ready
    const subject = `${prefix}.${Bus.noTenant}.Account.Deposited`
    const versions = new Array<number>(50).fill(0)
    const acked: Array<number> = []
    const start = performance.now()
    for (let i = 0; i < n; i++) {
      const wait = start + (i * 1000) / rate - performance.now()
      if (wait > 0) await new Promise((resolve) => setTimeout(resolve, wait))
      const eventId = crypto.randomUUID()
      const streamId = `Account-${i % 50}`
      const version = ++versions[i % 50]!
      const payload = JSON.stringify({ i })
      const recordedAt = Date.now()
      const position = Number(insert.run(eventId, streamId, "Account", version, "Deposited", payload, recordedAt).lastInsertRowid)
      acked.push(now())
      const envelope = JSON.stringify({
        eventId,
        streamId,
        streamType: "Account",
        version,
        position,
        type: "Deposited",
        schemaVersion: 1,
        recordedAt: new Date(recordedAt).toISOString(),
        metadata: {},
        payload: JSON.parse(payload)
      })
      await raw.js.publish(subject, envelope, { msgID: eventId })
    }
    const lags = lagsOf(acked, await c.received)
    await raw.jsm.consumers.delete(stream, consumer)
    return lags
  } finally {
    c.kill()
    db.close()
  }
}

async function e2eBench(emit: Emit, raw: Raw, rounds: number, n: number, rate: number) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "effect-eventstore-bus-bench-"))
  let files = 0
  const freshFile = () => path.join(dir, `e${files++}.db`)
  const lib = names("e2elib")
  const base = names("e2eraw")
  await addStream(raw, base.stream, base.prefix)
  const p50 = { lib: [] as Array<number>, raw: [] as Array<number> }
  const p99 = { lib: [] as Array<number>, raw: [] as Array<number> }
  try {
    for (let r = 0; r < rounds; r++) {
      const order = r % 2 === 0 ? (["lib", "raw"] as const) : (["raw", "lib"] as const)
      for (const who of order) {
        const lags = who === "lib"
          ? await libE2e(raw, lib.stream, lib.prefix, freshFile(), n, rate, r)
          : await rawE2e(raw, base.stream, base.prefix, freshFile(), n, rate, r)
        p50[who].push(percentile(lags, 0.5))
        p99[who].push(percentile(lags, 0.99))
      }
    }
  } finally {
    fs.rmSync(dir, { recursive: true, force: true })
  }
  const unit = `ms (${rate}/s, ${n} events, commit → handler in another process)`
  emit("bus.e2e.lag.p50", median(p50.lib), unit, median(p50.raw))
  emit("bus.e2e.lag.p99", median(p99.lib), unit, median(p99.raw))
}

// --- all of them ---------------------------------------------------------------------------------------------------

export async function busBenches(emit: Emit, quick: boolean, want: (name: string) => boolean): Promise<void> {
  let nc: Transport.NatsConnection
  try {
    nc = await Transport.connect({ servers: url, timeout: 5000 })
  } catch (error) {
    if (process.env.CI) throw error
    console.error(`bus benches skipped: NATS not reachable at ${url} (${String(error)})`)
    return
  }
  const raw: Raw = { nc, js: JetStream.jetstream(nc), jsm: await JetStream.jetstreamManager(nc) }
  const natsRt: NatsRuntime = ManagedRuntime.make(Nats.layer({ servers: url }).pipe(Layer.provideMerge(quiet)))
  try {
    const n = quick ? 3_000 : 20_000
    if (want("bus.forward")) await forwardBench(emit, raw, natsRt, "bus.forward", quick ? 2 : 5, n, 200)
    if (want("bus.forward.onestream")) {
      await forwardBench(emit, raw, natsRt, "bus.forward.onestream", quick ? 1 : 3, quick ? 1_000 : 5_000, 1)
    }
    if (want("bus.consume")) await consumeBench(emit, raw, quick ? 2 : 5, n)
    if (want("bus.e2e.lag.p50") || want("bus.e2e.lag.p99")) {
      await e2eBench(emit, raw, quick ? 1 : 3, quick ? 300 : 1_000, 200)
    }
  } finally {
    await natsRt.dispose()
    for (const stream of made) {
      for (const name of [stream, `${stream}_DLQ`]) {
        await raw.jsm.streams.delete(name).catch(() => false)
      }
    }
    await nc.drain()
  }
}
