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
      // 6 written; the export's own retention pass already removed pruneBatch of them
      expect(yield* TelemetryStore.spansOfTrace(traceId)).toHaveLength(4)

      const store = yield* TelemetryStore.TelemetryStore
      expect(yield* store.prune).toMatchObject({ spans: 2 })
      expect(yield* TelemetryStore.spansOfTrace(traceId)).toHaveLength(2)
      expect(yield* store.prune).toMatchObject({ spans: 2 })
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
})

