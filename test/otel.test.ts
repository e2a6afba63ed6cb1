/**
 * The OpenTelemetry layer: OTLP/HTTP export to a fake collector on 127.0.0.1 (spans with the resource, the library's
 * Effect metrics), `layerConfig` from a ConfigProvider, the sampler, the W3C trace context shared with `Cqrs`'s
 * `traceparent` handling, and a bounded shutdown against a collector that never answers.
 */
import { describe, expect, it } from "@effect/vitest"
import * as OtelApi from "@opentelemetry/api"
import { AggregationTemporality, InMemoryMetricExporter } from "@opentelemetry/sdk-metrics"
import type { PushMetricExporter } from "@opentelemetry/sdk-metrics"
import type { SpanExporter } from "@opentelemetry/sdk-trace-base"
import { BasicTracerProvider, InMemorySpanExporter } from "@opentelemetry/sdk-trace-base"
import * as OpenTelemetry from "effect-eventstore/OpenTelemetry"
import * as Telemetry from "effect-eventstore/Telemetry"
import * as ConfigProvider from "effect/ConfigProvider"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Layer from "effect/Layer"
import * as Metric from "effect/Metric"
import * as MetricBoundaries from "effect/MetricBoundaries"
import * as Redacted from "effect/Redacted"
import * as Scope from "effect/Scope"
import * as Tracer from "effect/Tracer"
import * as http from "node:http"
import type { AddressInfo } from "node:net"
import { formatTraceparent, isNative, parseTraceparent } from "../src/internal/tracing.js"
import { Resource as OtelResource } from "@effect/opentelemetry/Resource"

interface Received {
  readonly path: string
  readonly headers: http.IncomingHttpHeaders
  readonly body: any
}

/** A fake OTLP/HTTP collector: records every JSON POST, answers 200 (or never, with `hang`). */
const collector = (options: { readonly hang?: boolean } = {}) =>
  Effect.acquireRelease(
    Effect.async<{ readonly url: string; readonly received: Array<Received> }>((resume) => {
      const received: Array<Received> = []
      const server = http.createServer((req, res) => {
        const chunks: Array<Buffer> = []
        req.on("data", (chunk: Buffer) => chunks.push(chunk))
        req.on("end", () => {
          const text = Buffer.concat(chunks).toString("utf8")
          received.push({ path: req.url ?? "", headers: req.headers, body: text === "" ? undefined : JSON.parse(text) })
          if (options.hang) return
          res.writeHead(200, { "content-type": "application/json" })
          res.end("{}")
        })
      })
      server.listen(0, "127.0.0.1", () => {
        const { port } = server.address() as AddressInfo
        resume(Effect.succeed(Object.assign({ url: `http://127.0.0.1:${port}`, received }, { server })))
      })
    }),
    (c) =>
      Effect.async<void>((resume) => {
        const server = (c as unknown as { server: http.Server }).server
        server.closeAllConnections()
        server.close(() => resume(Effect.void))
      })
  )

type OtlpAttribute = { key: string; value: Record<string, unknown> }
const attrs = (list: ReadonlyArray<OtlpAttribute> | undefined): Record<string, unknown> =>
  Object.fromEntries((list ?? []).map((a) => [a.key, Object.values(a.value)[0]]))

const spansIn = (received: ReadonlyArray<Received>) =>
  received.filter((r) => r.path === "/v1/traces").flatMap((r) =>
    (r.body.resourceSpans as Array<any>).flatMap((rs) =>
      (rs.scopeSpans as Array<any>).flatMap((ss) =>
        (ss.spans as Array<any>).map((span) => ({
          name: span.name as string,
          traceId: span.traceId as string,
          parentSpanId: span.parentSpanId as string | undefined,
          attributes: attrs(span.attributes),
          resource: attrs(rs.resource.attributes)
        }))
      )
    )
  )

const metricsIn = (received: ReadonlyArray<Received>) =>
  received.filter((r) => r.path === "/v1/metrics").flatMap((r) =>
    (r.body.resourceMetrics as Array<any>).flatMap((rm) =>
      (rm.scopeMetrics as Array<any>).flatMap((sm) =>
        (sm.metrics as Array<any>).map((metric) => ({
          name: metric.name as string,
          points: ((metric.sum ?? metric.gauge ?? metric.histogram)?.dataPoints ?? []) as Array<any>,
          resource: attrs(rm.resource.attributes)
        }))
      )
    )
  )

/** Runs `effect` with `telemetry` in a scope of its own and closes it (the SDK flushes on close). */
const within = <A, E, R, E2>(
  telemetry: Layer.Layer<R, E2>,
  effect: Effect.Effect<A, E, R>
): Effect.Effect<A, E | E2> => Effect.scoped(Effect.flatMap(Layer.build(telemetry), (ctx) => Effect.provide(effect, ctx)))

const inMemory = () => {
  const spans = new InMemorySpanExporter()
  const metrics = new InMemoryMetricExporter(AggregationTemporality.CUMULATIVE)
  return { spans, metrics }
}

describe("OpenTelemetry", () => {
  it.scopedLive("exports spans with the resource and the library's metrics to an OTLP/HTTP collector", () =>
    Effect.gen(function*() {
      const fake = yield* collector()
      const tagged = Metric.tagged(Telemetry.commits, "otel.test", "otlp")
      yield* within(
        OpenTelemetry.layer({
          serviceName: "otel-test",
          serviceVersion: "1.2.3",
          environment: "test",
          attributes: { "team": "ledger" },
          otlp: { endpoint: fake.url, headers: { authorization: Redacted.make("Bearer s3cret") } },
          registerGlobal: false
        }),
        Effect.gen(function*() {
          yield* Metric.incrementBy(tagged, 3)
          yield* Effect.annotateCurrentSpan("aggregate.type", "Account")
        }).pipe(Effect.withSpan("otel.test.op"))
      )
      const spans = spansIn(fake.received)
      const op = spans.find((s) => s.name === "otel.test.op")
      expect(op).toBeDefined()
      expect(op!.attributes["aggregate.type"]).toBe("Account")
      expect(op!.resource).toMatchObject({
        "service.name": "otel-test",
        "service.version": "1.2.3",
        "deployment.environment": "test",
        "team": "ledger"
      })
      const commits = metricsIn(fake.received).filter((m) => m.name === "eventstore_commits_total")
      expect(commits.length).toBeGreaterThan(0)
      const point = commits.flatMap((m) => m.points).find((p) => attrs(p.attributes)["otel.test"] === "otlp")
      expect(point).toBeDefined()
      expect(Number(point.asDouble ?? point.asInt)).toBe(3)
      expect(commits[0]!.resource["service.name"]).toBe("otel-test")
      // the Redacted header reached the wire
      expect(fake.received.every((r) => r.headers.authorization === "Bearer s3cret")).toBe(true)
    }))

  it.scopedLive("layerConfig reads the OTEL_* variables through Config", () =>
    Effect.gen(function*() {
      const fake = yield* collector()
      const env = ConfigProvider.fromMap(
        new Map([
          ["OTEL_SERVICE_NAME", "from-env"],
          ["OTEL_RESOURCE_ATTRIBUTES", "service.version=9.9.9,deployment.environment=staging,note=a%2Cb%3Dc"],
          ["OTEL_EXPORTER_OTLP_ENDPOINT", fake.url],
          ["OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", `${fake.url}/custom/metrics`],
          ["OTEL_EXPORTER_OTLP_HEADERS", "x-api-key=k%3Dey,x-other=2"],
          ["OTEL_TRACES_SAMPLER", "parentbased_traceidratio"],
          ["OTEL_TRACES_SAMPLER_ARG", "1"],
          ["OTEL_METRIC_EXPORT_INTERVAL", "100"]
        ])
      )
      const gauge = Metric.tagged(Telemetry.projectionLag, "projection", "otel-config")
      yield* within(
        OpenTelemetry.layerConfig({ serviceName: "overridden", registerGlobal: false }).pipe(
          Layer.provide(Layer.setConfigProvider(env))
        ),
        Effect.gen(function*() {
          yield* Metric.set(gauge, 7)
          // periodic export at 100 ms: metrics arrive while the layer is up
          yield* Effect.sleep("400 millis")
        }).pipe(Effect.withSpan("otel.config.op"))
      )
      const op = spansIn(fake.received).find((s) => s.name === "otel.config.op")
      expect(op?.resource).toMatchObject({
        "service.name": "from-env",
        "service.version": "9.9.9",
        "deployment.environment": "staging",
        "note": "a,b=c"
      })
      const metricPosts = fake.received.filter((r) => r.path === "/custom/metrics")
      expect(metricPosts.length).toBeGreaterThanOrEqual(2) // at least one periodic export before the final one
      expect(fake.received.every((r) => r.headers["x-api-key"] === "k=ey" && r.headers["x-other"] === "2")).toBe(true)
      const lag = metricPosts.flatMap((r) => metricsIn([{ ...r, path: "/v1/metrics" }]))
        .filter((m) => m.name === "eventstore_projection_lag_events")
        .flatMap((m) => m.points)
        .find((p) => attrs(p.attributes)["projection"] === "otel-config")
      expect(Number(lag?.asDouble ?? lag?.asInt)).toBe(7)
    }))

  it.effect("layerConfig: bad values are ConfigErrors that do not show the headers", () =>
    Effect.gen(function*() {
      const build = (entries: ReadonlyArray<readonly [string, string]>) =>
        Effect.exit(
          within(
            OpenTelemetry.layerConfig({ registerGlobal: false }).pipe(
              Layer.provide(Layer.setConfigProvider(ConfigProvider.fromMap(new Map(entries))))
            ),
            Effect.void
          )
        )
      for (
        const entries of [
          [["OTEL_TRACES_SAMPLER", "jaeger_remote"]],
          [["OTEL_TRACES_SAMPLER", "traceidratio"], ["OTEL_TRACES_SAMPLER_ARG", "1.5"]],
          [["OTEL_METRIC_EXPORT_INTERVAL", "0"]],
          [["OTEL_RESOURCE_ATTRIBUTES", "novalue"]],
          [["OTEL_TRACES_EXPORTER", "zipkin"]]
        ] as const
      ) {
        const exit = yield* build(entries)
        expect(Exit.isFailure(exit)).toBe(true)
        if (Exit.isFailure(exit)) expect(JSON.stringify(exit.cause)).toMatch(/"_op":"InvalidData"|InvalidData/)
      }
      const secret = yield* build([["OTEL_EXPORTER_OTLP_HEADERS", "token-without-equals-sign-TOPSECRET"]])
      expect(Exit.isFailure(secret)).toBe(true)
      expect(String(Exit.isFailure(secret) ? secret.cause : "")).not.toContain("TOPSECRET")
      expect(JSON.stringify(Exit.isFailure(secret) ? secret.cause : "")).not.toContain("TOPSECRET")
      const badUrl = yield* build([["OTEL_EXPORTER_OTLP_ENDPOINT", "not a url"]])
      expect(Exit.isFailure(badUrl)).toBe(true)
    }))

  it.live("OTEL_SDK_DISABLED=true installs no tracer", () =>
    Effect.gen(function*() {
      const native = yield* within(
        OpenTelemetry.layerConfig({ serviceName: "off" }).pipe(
          Layer.provide(Layer.setConfigProvider(ConfigProvider.fromMap(new Map([["OTEL_SDK_DISABLED", "TRUE"]]))))
        ),
        Effect.tracerWith((tracer) => Effect.succeed(isNative(tracer)))
      )
      expect(native).toBe(true)
      const installed = yield* within(
        OpenTelemetry.layer({ serviceName: "on", registerGlobal: false, spanExporters: [inMemory().spans] }),
        Effect.tracerWith((tracer) => Effect.succeed(isNative(tracer)))
      )
      expect(installed).toBe(false)
    }))

  it.live("sampleRatio 0 exports no span; 1 exports every span", () =>
    Effect.gen(function*() {
      const off = inMemory()
      yield* within(
        OpenTelemetry.layer({ serviceName: "s", sampleRatio: 0, spanExporters: [off.spans], registerGlobal: false }),
        Effect.gen(function*() {
          yield* Effect.forEach([1, 2, 3, 4, 5], (i) => Effect.withSpan(Effect.void, `unsampled.${i}`))
          yield* OpenTelemetry.flush
          expect(off.spans.getFinishedSpans()).toHaveLength(0)
        })
      )
      const on = inMemory()
      yield* within(
        OpenTelemetry.layer({ serviceName: "s", sampleRatio: 1, spanExporters: [on.spans], registerGlobal: false }),
        Effect.gen(function*() {
          yield* Effect.forEach([1, 2, 3, 4, 5], (i) => Effect.withSpan(Effect.void, `sampled.${i}`))
          yield* OpenTelemetry.flush
          expect(on.spans.getFinishedSpans().map((s) => s.name).sort()).toEqual(
            ["sampled.1", "sampled.2", "sampled.3", "sampled.4", "sampled.5"]
          )
        })
      )
    }))

  it.live("Effect metrics reach the OpenTelemetry metric export with their tags", () =>
    Effect.gen(function*() {
      const { metrics } = inMemory()
      const histogram = Metric.tagged(Telemetry.groupSize, "otel.test", "histogram")
      yield* within(
        OpenTelemetry.layer({ serviceName: "m", metricExporters: [metrics], registerGlobal: false }),
        Effect.gen(function*() {
          yield* Metric.update(histogram, 3)
          yield* Metric.update(histogram, 5)
          yield* OpenTelemetry.flush
          const exported = metrics.getMetrics().flatMap((rm) => rm.scopeMetrics.flatMap((sm) => sm.metrics))
          const group = exported.find((m) => m.descriptor.name === "eventstore_commit_group_size")
          expect(group).toBeDefined()
          const point = (group!.dataPoints as Array<any>).find((p) => p.attributes["otel.test"] === "histogram")
          expect(point.value.count).toBe(2)
          expect(point.value.sum).toBe(8)
        })
      )
    }))

  it.live("a traceparent read by Cqrs continues the trace and keeps its sampled flag", () =>
    Effect.gen(function*() {
      const { spans } = inMemory()
      const traceId = "4bf92f3577b34da6a3ce929d0e0e4736"
      const sampled = parseTraceparent(`00-${traceId}-00f067aa0ba902b7-01`)!
      const unsampled = parseTraceparent(`00-${traceId}-00f067aa0ba902b8-00`)!
      yield* within(
        OpenTelemetry.layer({ serviceName: "remote", spanExporters: [spans], registerGlobal: false }),
        Effect.gen(function*() {
          yield* Effect.withSpan(Effect.void, "server.sampled", { parent: sampled })
          yield* Effect.withSpan(Effect.void, "server.unsampled", { parent: unsampled })
          // an external span made by hand (no OpenTelemetry trace flags in its context) keeps its flag too
          const bare = Tracer.externalSpan({ traceId, spanId: "00f067aa0ba902b9", sampled: false })
          yield* Effect.withSpan(Effect.void, "bare.unsampled", { parent: bare })
          yield* OpenTelemetry.flush
          const finished = spans.getFinishedSpans()
          expect(finished.map((s) => s.name)).toEqual(["server.sampled"])
          expect(finished[0]!.spanContext().traceId).toBe(traceId)
          expect(finished[0]!.parentSpanContext?.spanId).toBe("00f067aa0ba902b7")
        })
      )
    }))

  it.live("registerGlobal: the W3C propagator writes the current Effect span's traceparent", () =>
    Effect.gen(function*() {
      const { spans } = inMemory()
      const [injected, own] = yield* within(
        OpenTelemetry.layer({ serviceName: "g", spanExporters: [spans] }),
        Effect.gen(function*() {
          const span = yield* Effect.currentSpan
          const carrier: Record<string, string> = {}
          OtelApi.propagation.inject(OtelApi.context.active(), carrier)
          return [carrier["traceparent"], formatTraceparent(span)] as const
        }).pipe(Effect.withSpan("global.op"))
      )
      expect(injected).toBeDefined()
      expect(injected).toBe(own)
      // unregistered with the scope
      const after: Record<string, string> = {}
      OtelApi.propagation.inject(OtelApi.context.active(), after)
      expect(after["traceparent"]).toBeUndefined()
    }))

  it.scopedLive("shutdown is bounded when the collector never answers", () =>
    Effect.gen(function*() {
      const fake = yield* collector({ hang: true })
      const scope = yield* Scope.make()
      const ctx = yield* Layer.buildWithScope(
        OpenTelemetry.layer({
          serviceName: "hang",
          otlp: { endpoint: fake.url, timeout: "30 seconds" },
          shutdownTimeout: "500 millis",
          registerGlobal: false
        }),
        scope
      )
      yield* Effect.withSpan(Effect.void, "hang.op").pipe(Effect.provide(ctx))
      const started = Date.now()
      yield* Scope.close(scope, Exit.void)
      const took = Date.now() - started
      expect(fake.received.length).toBeGreaterThan(0) // the export was attempted
      expect(took).toBeGreaterThanOrEqual(400)
      expect(took).toBeLessThan(2_000)
    }))

  it.effect("invalid options fail with OpenTelemetryError", () =>
    Effect.gen(function*() {
      const invalid: ReadonlyArray<OpenTelemetry.Options> = [
        { serviceName: "x", sampleRatio: 2 },
        { serviceName: "x", metricInterval: 0 },
        { serviceName: "x", otlp: { endpoint: "ftp://collector" } }
      ]
      for (const options of invalid) {
        const exit = yield* Effect.exit(within(OpenTelemetry.layer({ ...options, registerGlobal: false }), Effect.void))
        expect(exit).toMatchObject({ _tag: "Failure", cause: { error: { _tag: "OpenTelemetryError" } } })
      }
    }))

  it.live("metrics are exported with units: s for _seconds, annotations for the library's gauges, 1 otherwise", () =>
    Effect.gen(function*() {
      const { metrics } = inMemory()
      const seconds = Metric.histogram("otel_unit_test_seconds", MetricBoundaries.fromIterable([0.1, 1]))
      yield* within(
        OpenTelemetry.layer({ serviceName: "u", metricExporters: [metrics], registerGlobal: false }),
        Effect.gen(function*() {
          yield* Metric.update(seconds, 0.5)
          yield* Metric.set(Metric.tagged(Telemetry.projectionLag, "projection", "otel-unit"), 2)
          yield* Metric.set(Metric.tagged(Telemetry.projectionCheckpoint, "projection", "otel-unit"), 2)
          yield* Metric.increment(Metric.tagged(Telemetry.commits, "otel.test", "unit"))
          yield* OpenTelemetry.flush
          const units = Object.fromEntries(
            metrics.getMetrics().flatMap((rm) => rm.scopeMetrics.flatMap((sm) => sm.metrics))
              .map((m) => [m.descriptor.name, m.descriptor.unit])
          )
          expect(units["otel_unit_test_seconds"]).toBe("s")
          expect(units["eventstore_projection_lag_events"]).toBe("{event}")
          expect(units["eventstore_projection_checkpoint"]).toBe("{position}")
          expect(units["eventstore_commits_total"]).toBe("1")
        })
      )
    }))

  it.live("the resource gets a service.instance.id per build, unless the attributes give one", () =>
    Effect.gen(function*() {
      const instanceOf = (attributes?: Record<string, string>) => {
        const { spans } = inMemory()
        return within(
          OpenTelemetry.layer({ serviceName: "i", spanExporters: [spans], registerGlobal: false, attributes }),
          Effect.gen(function*() {
            yield* Effect.withSpan(Effect.void, "instance.op")
            yield* OpenTelemetry.flush
            return spans.getFinishedSpans()[0]!.resource.attributes["service.instance.id"]
          })
        )
      }
      const first = yield* instanceOf()
      const second = yield* instanceOf()
      expect(first).toMatch(/^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/)
      expect(second).not.toBe(first)
      expect(yield* instanceOf({ "service.instance.id": "replica-7" })).toBe("replica-7")
      const fromEnv = yield* within(
        OpenTelemetry.layerConfig({ registerGlobal: false }).pipe(
          Layer.provide(Layer.setConfigProvider(ConfigProvider.fromMap(
            new Map([
              ["OTEL_RESOURCE_ATTRIBUTES", "service.instance.id=pod-1"],
              ["OTEL_TRACES_EXPORTER", "none"],
              ["OTEL_METRICS_EXPORTER", "none"]
            ])
          )))
        ),
        Effect.map(OtelResource, (resource) => resource.attributes["service.instance.id"])
      )
      expect(fromEnv).toBe("pod-1")
    }))

  it.live("registerGlobal leaves in place the globals another SDK registered first", () =>
    Effect.gen(function*() {
      const other = new BasicTracerProvider()
      const propagator: OtelApi.TextMapPropagator = {
        inject: (_context, carrier, setter) => setter.set(carrier, "x-other", "1"),
        extract: (context) => context,
        fields: () => ["x-other"]
      }
      expect(OtelApi.trace.setGlobalTracerProvider(other)).toBe(true)
      expect(OtelApi.propagation.setGlobalPropagator(propagator)).toBe(true)
      try {
        const { spans } = inMemory()
        yield* within(OpenTelemetry.layer({ serviceName: "g2", spanExporters: [spans] }), Effect.void)
        // still the other SDK's, after the layer closed
        expect((OtelApi.trace.getTracerProvider() as OtelApi.ProxyTracerProvider).getDelegate()).toBe(other)
        const carrier: Record<string, string> = {}
        OtelApi.propagation.inject(OtelApi.context.active(), carrier)
        expect(carrier).toEqual({ "x-other": "1" })
      } finally {
        OtelApi.trace.disable()
        OtelApi.propagation.disable()
      }
      // and with nothing registered before, the layer's own globals are removed when it closes (the context too)
      const { spans } = inMemory()
      yield* within(OpenTelemetry.layer({ serviceName: "g3", spanExporters: [spans] }), Effect.void)
      expect((OtelApi.trace.getTracerProvider() as OtelApi.ProxyTracerProvider).getDelegate()).not.toBeInstanceOf(
        BasicTracerProvider
      )
      // a global can be registered again: the previous one was removed
      expect(OtelApi.propagation.setGlobalPropagator(propagator)).toBe(true)
      OtelApi.propagation.disable()
    }))

  it.live("no tracer is installed when no span can be recorded", () =>
    Effect.gen(function*() {
      const nativeWith = <E>(layer: Layer.Layer<OpenTelemetry.Provided, E>) =>
        // in a fiber of its own, awaited (not joined): the tracer one layer installed is not inherited by the next
        Effect.flatMap(
          Effect.fork(within(layer, Effect.tracerWith((tracer) => Effect.succeed(isNative(tracer))))),
          (fiber) => Effect.flatten(fiber.await)
        )
      const env = (entries: ReadonlyArray<readonly [string, string]>, options: OpenTelemetry.ConfigOptions = {}) =>
        OpenTelemetry.layerConfig({ registerGlobal: false, ...options }).pipe(
          Layer.provide(Layer.setConfigProvider(ConfigProvider.fromMap(new Map(entries))))
        )
      // metrics only
      expect(yield* nativeWith(env([["OTEL_TRACES_EXPORTER", "none"], ["OTEL_METRICS_EXPORTER", "none"]]))).toBe(true)
      expect(yield* nativeWith(env([["OTEL_TRACES_EXPORTER", "NONE"], ["OTEL_METRICS_EXPORTER", "None"]]))).toBe(true)
      // another span exporter still records
      const { spans } = inMemory()
      expect(
        yield* nativeWith(env([["OTEL_TRACES_EXPORTER", "none"], ["OTEL_METRICS_EXPORTER", "none"]], {
          spanExporters: [spans]
        }))
      ).toBe(false)
      expect(
        yield* nativeWith(env([["OTEL_TRACES_EXPORTER", "none"], ["OTEL_METRICS_EXPORTER", "none"], [
          "OTEL_TRACES_SAMPLER",
          "Always_Off"
        ]], { spanExporters: [spans] }))
      ).toBe(true)
      expect(yield* nativeWith(OpenTelemetry.layer({ serviceName: "n", registerGlobal: false }))).toBe(true)
      // and the tracer of a closed layer does not stay on the fiber that built it
      yield* within(OpenTelemetry.layer({ serviceName: "n", registerGlobal: false, spanExporters: [spans] }), Effect.void)
      expect(isNative(yield* Effect.tracer)).toBe(true)
      expect(
        yield* nativeWith(OpenTelemetry.layer({
          serviceName: "n",
          registerGlobal: false,
          otlp: { endpoint: "http://127.0.0.1:9", traces: false, metrics: false }
        }))
      ).toBe(true)
      expect(
        yield* nativeWith(
          OpenTelemetry.layer({ serviceName: "n", registerGlobal: false, sampleRatio: 0, parentBased: false, spanExporters: [spans] })
        )
      ).toBe(true)
      // parent-based ratio 0 still follows a sampled remote parent: a tracer is needed
      expect(
        yield* nativeWith(OpenTelemetry.layer({ serviceName: "n", registerGlobal: false, sampleRatio: 0, spanExporters: [spans] }))
      ).toBe(false)
    }))

  it.live("layerConfig: sampler names in any case; OTEL_TRACES_SAMPLER_ARG read only for ratio samplers", () =>
    Effect.gen(function*() {
      const run = (entries: ReadonlyArray<readonly [string, string]>) => {
        const { spans } = inMemory()
        return within(
          OpenTelemetry.layerConfig({ registerGlobal: false, spanExporters: [spans] }).pipe(
            Layer.provide(Layer.setConfigProvider(ConfigProvider.fromMap(
              new Map([["OTEL_TRACES_EXPORTER", "none"], ["OTEL_METRICS_EXPORTER", "none"], ...entries])
            )))
          ),
          Effect.gen(function*() {
            yield* Effect.withSpan(Effect.void, "sampler.op")
            yield* OpenTelemetry.flush
            return spans.getFinishedSpans().length
          })
        ).pipe(Effect.exit)
      }
      expect(yield* run([["OTEL_TRACES_SAMPLER", "PARENTBASED_TRACEIDRATIO"], ["OTEL_TRACES_SAMPLER_ARG", "1"]]))
        .toEqual(Exit.succeed(1))
      expect(yield* run([["OTEL_TRACES_SAMPLER", "TraceIdRatio"], ["OTEL_TRACES_SAMPLER_ARG", "0"]]))
        .toEqual(Exit.succeed(0))
      // ignored by a sampler that takes no argument
      expect(yield* run([["OTEL_TRACES_SAMPLER", "always_on"], ["OTEL_TRACES_SAMPLER_ARG", "abc"]]))
        .toEqual(Exit.succeed(1))
      expect(yield* run([["OTEL_TRACES_SAMPLER_ARG", "7"]])).toEqual(Exit.succeed(1))
      // still checked for a ratio sampler
      const bad = yield* run([["OTEL_TRACES_SAMPLER", "traceidratio"], ["OTEL_TRACES_SAMPLER_ARG", "abc"]])
      expect(Exit.isFailure(bad)).toBe(true)
    }))

  it.live("layerConfig: OTEL_EXPORTER_OTLP_PROTOCOL accepts http/json only, per signal exported over OTLP", () =>
    Effect.gen(function*() {
      const build = (entries: ReadonlyArray<readonly [string, string]>) =>
        Effect.exit(
          within(
            OpenTelemetry.layerConfig({ registerGlobal: false, shutdownTimeout: "200 millis" }).pipe(
              Layer.provide(Layer.setConfigProvider(ConfigProvider.fromMap(
                new Map([["OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:9"], ...entries])
              )))
            ),
            Effect.void
          )
        )
      const failsOn = (exit: Exit.Exit<void, unknown>, variable: string) => {
        expect(Exit.isFailure(exit)).toBe(true)
        const text = JSON.stringify(Exit.isFailure(exit) ? exit.cause : "")
        expect(text).toContain("InvalidData")
        expect(text).toContain(variable)
      }
      failsOn(yield* build([["OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"]]), "OTEL_EXPORTER_OTLP_PROTOCOL")
      failsOn(yield* build([["OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"]]), "OTEL_EXPORTER_OTLP_PROTOCOL")
      failsOn(
        yield* build([["OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"], ["OTEL_EXPORTER_OTLP_METRICS_PROTOCOL", "grpc"]]),
        "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL"
      )
      expect(yield* build([["OTEL_EXPORTER_OTLP_PROTOCOL", "HTTP/JSON"]])).toEqual(Exit.void)
      expect(yield* build([])).toEqual(Exit.void)
      // the per-signal value wins; a signal not exported over OTLP is not checked
      expect(
        yield* build([
          ["OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"],
          ["OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/json"],
          ["OTEL_METRICS_EXPORTER", "none"]
        ])
      ).toEqual(Exit.void)
    }))

  it.live("shutdown flushes the spans while a metric export hangs, within the one timeout", () =>
    Effect.gen(function*() {
      const exported: Array<string> = []
      const spanExporter: SpanExporter = {
        export: (spans, done) => {
          exported.push(...spans.map((span) => span.name))
          done({ code: 0 })
        },
        shutdown: () => Promise.resolve()
      }
      const never = () => new Promise<void>(() => {})
      const metricExporter: PushMetricExporter = {
        export: () => {},
        forceFlush: never,
        shutdown: never
      }
      const scope = yield* Scope.make()
      const ctx = yield* Layer.buildWithScope(
        OpenTelemetry.layer({
          serviceName: "parallel",
          spanExporters: [spanExporter],
          metricExporters: [metricExporter],
          spanExportDelay: "1 hour",
          shutdownTimeout: "500 millis",
          registerGlobal: false
        }),
        scope
      )
      yield* Effect.withSpan(Effect.void, "parallel.op").pipe(Effect.provide(ctx))
      const started = Date.now()
      yield* Scope.close(scope, Exit.void)
      expect(Date.now() - started).toBeLessThan(2_000)
      expect(exported).toEqual(["parallel.op"])
    }))
})
