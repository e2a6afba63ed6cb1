/**
 * The embedded telemetry store: spans and Effect metrics exported by the OpenTelemetry layer into SQLite, read back
 * as a trace tree, slowest operations and metric summaries; retention in bounded passes; the last spans reach the
 * file when the layer closes.
 */
import { describe, expect, it } from "@effect/vitest"
import { AggregationTemporality, DataPointType } from "@opentelemetry/sdk-metrics"
import * as TelemetryStore from "effect-eventstore/TelemetryStore"
import * as OpenTelemetry from "effect-eventstore/OpenTelemetry"
import * as ConfigProvider from "effect/ConfigProvider"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Layer from "effect/Layer"
import * as Metric from "effect/Metric"
import * as MetricBoundaries from "effect/MetricBoundaries"
import * as TestClock from "effect/TestClock"
import Sqlite from "better-sqlite3"
import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"

const live = (filename = ":memory:", store: Partial<TelemetryStore.Options> = {}) =>
  TelemetryStore.layerOpenTelemetry(
    { filename, ...store },
    { serviceName: "store-test", serviceVersion: "0.0.1", registerGlobal: false, spanExportDelay: "50 millis" }
  )

const unique = () => Math.random().toString(36).slice(2, 8)

/** A finished span as the SDK hands it to an exporter (what the store reads of it). */
const fakeSpan = (name: string, startMs: number, durationMs: number, statusCode: number) => {
  const hr = (ms: number): [number, number] => [Math.floor(ms / 1000), Math.round((ms % 1000) * 1e6)]
  const spanId = Math.floor(Math.random() * 2 ** 48).toString(16).padStart(16, "0")
  const traceId = Math.floor(Math.random() * 2 ** 48).toString(16).padStart(32, "0")
  return {
    name,
    kind: 0,
    spanContext: () => ({ traceId, spanId, traceFlags: 1 }),
    parentSpanContext: undefined,
    startTime: hr(startMs),
    endTime: hr(startMs + durationMs),
    status: { code: statusCode },
    attributes: {},
    events: [],
    links: [],
    instrumentationScope: { name: "test" },
    resource: { attributes: { "service.name": "fake" } }
  }
}

describe("TelemetryStore", () => {
  it.live("spansOfTrace returns the trace as a tree: parents first, siblings by start time", () =>
    Effect.gen(function*() {
      const traceId = yield* Effect.gen(function*() {
        const root = yield* Effect.currentSpan
        yield* Effect.sleep("5 millis").pipe(Effect.withSpan("child.a"))
        yield* Effect.gen(function*() {
          yield* Effect.sleep("2 millis").pipe(Effect.withSpan("grandchild"))
        }).pipe(Effect.withSpan("child.b", { attributes: { "aggregate.type": "Account" } }))
        yield* Effect.fail("boom").pipe(Effect.withSpan("child.c"), Effect.ignore)
        return root.traceId
      }).pipe(Effect.withSpan("root"))
      yield* OpenTelemetry.flush
      const spans = yield* TelemetryStore.spansOfTrace(traceId)
      expect(spans.map((s) => [s.name, s.depth])).toEqual([
        ["root", 0],
        ["child.a", 1],
        ["child.b", 1],
        ["grandchild", 2],
        ["child.c", 1]
      ])
      const byName = Object.fromEntries(spans.map((s) => [s.name, s]))
      expect(byName["child.a"]!.parentSpanId).toBe(byName["root"]!.spanId)
      expect(byName["grandchild"]!.parentSpanId).toBe(byName["child.b"]!.spanId)
      expect(byName["root"]!.parentSpanId).toBeUndefined()
      expect(byName["child.b"]!.attributes["aggregate.type"]).toBe("Account")
      expect(byName["child.a"]!.durationMs).toBeGreaterThanOrEqual(4)
      expect(byName["child.c"]!.status).toBe("error")
      expect(byName["root"]!.service).toBe("store-test")
      expect(yield* TelemetryStore.spansOfTrace("0".repeat(32))).toEqual([])
    }).pipe(Effect.provide(live())))

  it.live("slowestOperations: count, errors and p50/p95/max per span name, slowest first", () =>
    Effect.gen(function*() {
      const slow = `slow.${unique()}`
      const fast = `fast.${unique()}`
      for (const ms of [20, 25, 60]) yield* Effect.sleep(`${ms} millis`).pipe(Effect.withSpan(slow))
      for (let i = 0; i < 4; i++) yield* Effect.void.pipe(Effect.withSpan(fast))
      yield* Effect.fail("x").pipe(Effect.withSpan(fast), Effect.ignore)
      yield* OpenTelemetry.flush
      const ops = yield* TelemetryStore.slowestOperations({ window: "5 minutes", limit: 10 })
      expect(ops.map((o) => o.name)).toEqual([slow, fast])
      const [s, f] = ops
      expect(s!.count).toBe(3)
      expect(s!.errors).toBe(0)
      expect(s!.p50Ms).toBeGreaterThanOrEqual(24) // the 25 ms one: nearest rank 2 of 3
      expect(s!.p50Ms).toBeLessThan(60)
      expect(s!.p95Ms).toBe(s!.maxMs) // nearest rank 3 of 3
      expect(s!.maxMs).toBeGreaterThanOrEqual(59)
      expect(f!.count).toBe(5)
      expect(f!.errors).toBe(1)
      expect(f!.maxMs).toBeLessThan(s!.p50Ms)
      expect(yield* TelemetryStore.slowestOperations({ limit: 1 })).toHaveLength(1)
    }).pipe(Effect.provide(live())))

  it.live("metricSummaries: counters (value and change), gauges, histograms, by attributes", () =>
    Effect.gen(function*() {
      const id = unique()
      const counter = Metric.counter(`store_test_${id}_total`, { incremental: true })
      const gauge = Metric.gauge(`store_test_${id}_lag`)
      const histogram = Metric.histogram(
        `store_test_${id}_duration`,
        MetricBoundaries.fromIterable([10, 50, 100])
      )
      yield* Metric.incrementBy(Metric.tagged(counter, "outcome", "ok"), 3)
      yield* Metric.incrementBy(Metric.tagged(counter, "outcome", "error"), 1)
      yield* Metric.set(gauge, 10)
      yield* Metric.update(histogram, 5)
      yield* Metric.update(histogram, 70)
      yield* OpenTelemetry.flush
      yield* Metric.incrementBy(Metric.tagged(counter, "outcome", "ok"), 2)
      yield* Metric.set(gauge, 4)
      yield* Metric.update(histogram, 20)
      yield* OpenTelemetry.flush

      const counters = yield* TelemetryStore.metricSummaries({ name: `store_test_${id}_total` })
      expect(counters.map((c) => [c.attributes["outcome"], c.type, c.value, c.change, c.points])).toEqual([
        ["error", "counter", 1, 1, 2],
        ["ok", "counter", 5, 5, 2]
      ])
      expect(counters[0]!.service).toBe("store-test")

      const [lag] = yield* TelemetryStore.metricSummaries({ name: `store_test_${id}_lag` })
      expect(lag).toMatchObject({ type: "gauge", value: 4, min: 4, max: 10, points: 2 })

      const [duration] = yield* TelemetryStore.metricSummaries({ name: `store_test_${id}_duration` })
      expect(duration).toMatchObject({ type: "histogram", value: 3, count: 3, sum: 95, min: 5, max: 70 })

      const all = yield* TelemetryStore.metricSummaries({ window: "5 minutes" })
      expect(all.some((m) => m.name === `store_test_${id}_lag`)).toBe(true)
    }).pipe(Effect.provide(live())))

  it.effect("retention deletes rows older than the retention, at most pruneBatch per pass", () =>
    Effect.gen(function*() {
      // the test clock starts at the epoch: these spans are dated 1970
      const traceId = yield* Effect.gen(function*() {
        for (let i = 0; i < 5; i++) yield* Effect.void.pipe(Effect.withSpan(`old.${i}`))
        return (yield* Effect.currentSpan).traceId
      }).pipe(Effect.withSpan("old.root"))
      yield* OpenTelemetry.flush
      // 6 written; each export's own retention pass removed pruneBatch of them: the spans' export, and the metric
      // export of the same flush when it ended after the spans were written
      const left = (yield* TelemetryStore.spansOfTrace(traceId)).length
      expect([2, 4]).toContain(left)

      const store = yield* TelemetryStore.TelemetryStore
      for (let n = left; n > 0; n -= 2) {
        expect(yield* store.prune).toMatchObject({ spans: 2 })
        expect(yield* TelemetryStore.spansOfTrace(traceId)).toHaveLength(n - 2)
      }
      expect(yield* store.prune).toMatchObject({ spans: 0 })
      expect(yield* TelemetryStore.spansOfTrace(traceId)).toEqual([])

      // metric points too, by their export time
      const old = [5, 0] as [number, number]
      const exported = yield* Effect.async<{ code: number }>((resume) =>
        store.metricExporter.export(
          {
            resource: { attributes: { "service.name": "old" } } as never,
            scopeMetrics: [{
              scope: { name: "test" },
              metrics: [{
                descriptor: { name: "old_total", description: "", unit: "1", valueType: 1 },
                aggregationTemporality: AggregationTemporality.CUMULATIVE,
                dataPointType: DataPointType.SUM,
                isMonotonic: true,
                dataPoints: [1, 2, 3].map((value) => ({ startTime: old, endTime: old, attributes: { value }, value }))
              }]
            }]
          },
          (result) => resume(Effect.succeed(result))
        )
      )
      expect(exported.code).toBe(0)
      // the export wrote 3 and its own pass removed 2
      expect(yield* store.prune).toMatchObject({ metricPoints: 1 })
      expect(yield* store.prune).toMatchObject({ metricPoints: 0 })

      // a span inside the retention stays through further exports and passes
      yield* TestClock.setTime(Date.now())
      const recent = yield* Effect.map(Effect.currentSpan, (s) => s.traceId).pipe(Effect.withSpan("recent"))
      yield* OpenTelemetry.flush
      expect(yield* store.prune).toMatchObject({ spans: 0 })
      expect((yield* TelemetryStore.spansOfTrace(recent)).map((s) => s.name)).toEqual(["recent"])
    }).pipe(Effect.provide(live(":memory:", { retention: "1 hour", pruneBatch: 2 }))))

  it.live("closing the layer writes the last spans before the file closes", () =>
    Effect.gen(function*() {
      const dir = fs.mkdtempSync(path.join(os.tmpdir(), "telemetry-store-"))
      const filename = path.join(dir, "telemetry.db")
      try {
        // a long export delay: only the shutdown flush can write this span
        const traceId = yield* Effect.map(Effect.currentSpan, (s) => s.traceId).pipe(
          Effect.withSpan("last.words"),
          Effect.provide(
            TelemetryStore.layerOpenTelemetry(
              { filename },
              { serviceName: "closing", registerGlobal: false, spanExportDelay: "1 hour" }
            )
          )
        )
        const spans = yield* TelemetryStore.spansOfTrace(traceId).pipe(
          Effect.provide(TelemetryStore.layer({ filename }))
        )
        expect(spans.map((s) => s.name)).toEqual(["last.words"])
        const wal = fs.existsSync(`${filename}-wal`)
        expect(wal || fs.existsSync(filename)).toBe(true)
      } finally {
        fs.rmSync(dir, { recursive: true, force: true })
      }
    }))

  it.live("layerOpenTelemetryConfig: OTEL_* settings, exporting to the file only", () =>
    Effect.gen(function*() {
      const spans = yield* Effect.gen(function*() {
        const traceId = yield* Effect.map(Effect.currentSpan, (s) => s.traceId).pipe(Effect.withSpan("configured.op"))
        yield* OpenTelemetry.flush
        return yield* TelemetryStore.spansOfTrace(traceId)
      }).pipe(
        Effect.provide(
          TelemetryStore.layerOpenTelemetryConfig({ filename: ":memory:" }, { registerGlobal: false }).pipe(
            Layer.provide(Layer.setConfigProvider(ConfigProvider.fromMap(
              new Map([
                ["OTEL_SERVICE_NAME", "from-env"],
                ["OTEL_TRACES_EXPORTER", "none"],
                ["OTEL_METRICS_EXPORTER", "none"],
                // nothing listens here: with both exporters "none" nothing is sent
                ["OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:9"]
              ])
            )))
          )
        )
      )
      expect(spans.map((s) => [s.name, s.service])).toEqual([["configured.op", "from-env"]])
    }))

  it.live("an export that meets another writer's lock retries instead of waiting in SQLite", () =>
    Effect.gen(function*() {
      const dir = fs.mkdtempSync(path.join(os.tmpdir(), "telemetry-store-"))
      const filename = path.join(dir, "telemetry.db")
      try {
        yield* Effect.gen(function*() {
          const other = new Sqlite(filename)
          other.exec("BEGIN IMMEDIATE")
          const traceId = yield* Effect.map(Effect.currentSpan, (s) => s.traceId).pipe(Effect.withSpan("locked.op"))
          const flushing = yield* Effect.fork(OpenTelemetry.flush)
          yield* Effect.sleep("60 millis")
          // still locked: nothing written yet, and the thread was free to run this
          expect(yield* TelemetryStore.spansOfTrace(traceId)).toEqual([])
          other.exec("COMMIT")
          other.close()
          yield* flushing.await
          expect((yield* TelemetryStore.spansOfTrace(traceId)).map((s) => s.name)).toEqual(["locked.op"])
        }).pipe(Effect.provide(live(filename)))
      } finally {
        fs.rmSync(dir, { recursive: true, force: true })
      }
    }))

  it.effect("open failures are TelemetryStoreErrors", () =>
    Effect.gen(function*() {
      const missingDir = path.join(os.tmpdir(), `no-such-dir-${unique()}`, "t.db")
      const error = yield* Effect.flip(Effect.scoped(TelemetryStore.make({ filename: missingDir })))
      expect(error).toMatchObject({ _tag: "TelemetryStoreError", operation: "open", filename: missingDir })
      const batch = yield* Effect.flip(Effect.scoped(TelemetryStore.make({ filename: ":memory:", pruneBatch: 0 })))
      expect(batch).toMatchObject({ _tag: "TelemetryStoreError", operation: "open" })
    }))

  it.live("the store layer alone exports nothing and answers empty queries", () =>
    Effect.gen(function*() {
      expect(yield* TelemetryStore.slowestOperations()).toEqual([])
      expect(yield* TelemetryStore.metricSummaries()).toEqual([])
    }).pipe(Effect.provide(TelemetryStore.layer({ filename: ":memory:" }))))

  it.live("slowestOperations: count, errors, max and mean over the window; percentiles over the 10,000 latest spans", () =>
    Effect.gen(function*() {
      const store = yield* TelemetryStore.TelemetryStore
      const now = Date.now()
      const name = `capped.${unique()}`
      // 1,000 slow spans (1 s) first, then 10,000 fast ones (1 ms): over all 11,000 the p95 would be a slow one
      const spans = [
        ...Array.from({ length: 1_000 }, (_, i) => fakeSpan(name, now - 60_000 + i, 1_000, i === 0 ? 2 : 1)),
        ...Array.from({ length: 10_000 }, (_, i) => fakeSpan(name, now - 30_000 + i, 1, 1))
      ]
      const result = yield* Effect.async<{ code: number }>((resume) =>
        store.spanExporter.export(spans as never, (r) => resume(Effect.succeed(r)))
      )
      expect(result.code).toBe(0)
      const [op] = yield* TelemetryStore.slowestOperations({ window: "5 minutes" })
      expect(op).toMatchObject({ name, count: 11_000, errors: 1, maxMs: 1_000, p50Ms: 1, p95Ms: 1 })
      expect(op!.avgMs).toBeCloseTo((1_000 * 1_000 + 10_000) / 11_000, 6)
      // a span outside the window counts nowhere
      expect(yield* TelemetryStore.slowestOperations({ window: "45 seconds" })).toMatchObject([
        { name, count: 10_000, errors: 0, maxMs: 1, p95Ms: 1 }
      ])
    }).pipe(Effect.provide(TelemetryStore.layer({ filename: ":memory:" }))))

  it.live("a retention pass deletes in statements of 100 rows with macrotasks between them", () =>
    Effect.gen(function*() {
      const dir = fs.mkdtempSync(path.join(os.tmpdir(), "telemetry-store-"))
      const filename = path.join(dir, "telemetry.db")
      try {
        // the tables, then 1,500 spans from 1970 written behind the store's back
        yield* Effect.scoped(TelemetryStore.make({ filename }))
        const db = new Sqlite(filename)
        db.prepare(`INSERT INTO otel_resources (attributes, service_name) VALUES ('{}', NULL)`).run()
        const insert = db.prepare(
          `INSERT INTO otel_spans (trace_id, span_id, name, kind, start_us, end_us, duration_us, status_code, attributes,
             scope, resource_id) VALUES (?, ?, 'old', 0, ?, ?, 0, 0, '{}', 'test', 1)`
        )
        db.transaction(() => {
          for (let i = 0; i < 1_500; i++) insert.run("a".repeat(32), i.toString(16).padStart(16, "0"), 1_000 + i, 1_000 + i)
        })()
        db.close()
        yield* Effect.gen(function*() {
          const store = yield* TelemetryStore.TelemetryStore
          let turns = 0
          let done = false
          const tick = () => {
            if (done) return
            turns++
            setImmediate(tick)
          }
          setImmediate(tick)
          const first = yield* store.prune
          done = true
          expect(first).toEqual({ spans: 1_000, metricPoints: 0 })
          // ten statements, nine macrotasks between them (the ticker runs in each); one synchronous pass would let
          // it run at most once
          expect(turns).toBeGreaterThanOrEqual(5)
          expect(yield* store.prune).toEqual({ spans: 500, metricPoints: 0 })
          expect(yield* store.prune).toEqual({ spans: 0, metricPoints: 0 })
        }).pipe(Effect.provide(TelemetryStore.layer({ filename, retention: "1 hour" })))
      } finally {
        fs.rmSync(dir, { recursive: true, force: true })
      }
    }))

  it.live("opening a file whose write lock another process holds retries briefly, then fails", () =>
    Effect.gen(function*() {
      const dir = fs.mkdtempSync(path.join(os.tmpdir(), "telemetry-store-"))
      const filename = path.join(dir, "telemetry.db")
      try {
        yield* Effect.scoped(TelemetryStore.make({ filename }))
        const other = new Sqlite(filename)
        other.exec("BEGIN IMMEDIATE")
        const opening = yield* Effect.fork(Effect.scoped(Effect.asVoid(TelemetryStore.make({ filename }))))
        yield* Effect.sleep("100 millis")
        other.exec("COMMIT")
        expect(yield* opening.await).toEqual(Exit.void)
        // held throughout: the open gives up after its backoff (about 0.85 s)
        other.exec("BEGIN IMMEDIATE")
        const started = Date.now()
        const error = yield* Effect.flip(Effect.scoped(TelemetryStore.make({ filename })))
        const took = Date.now() - started
        other.exec("COMMIT")
        other.close()
        expect(error).toMatchObject({ _tag: "TelemetryStoreError", operation: "open", filename })
        expect(took).toBeGreaterThanOrEqual(700)
        expect(took).toBeLessThan(3_000)
      } finally {
        fs.rmSync(dir, { recursive: true, force: true })
      }
    }))
})

