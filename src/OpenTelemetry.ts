/**
 * Exporting what the library (and your code) reports to OpenTelemetry: one layer that installs an OpenTelemetry
 * tracer for Effect's spans and sends traces and Effect `Metric`s (all of them, the library's `Telemetry` metrics
 * included) over OTLP/HTTP, or to any other exporter you hand it (the embedded SQLite store of `TelemetryStore`, an
 * in-memory exporter in tests). Built on `@effect/opentelemetry` over the Node SDK 2.x.
 *
 * What it sets up: a resource (`service.name`, `service.version`, `deployment.environment`, a `service.instance.id`
 * (a random UUID per build of the layer, unless your attributes give one) and your attributes), a
 * sampler (a ratio, parent-based by default: a span continues its parent's sampling decision, a root span is sampled
 * with the ratio), a batch span processor per span exporter, a periodic metric reader per metric exporter, and, unless
 * `registerGlobal: false`, the SDK as the process's global OpenTelemetry tracer provider with the W3C trace-context
 * and baggage propagator and an AsyncLocalStorage context manager, so OpenTelemetry-instrumented libraries called
 * from Effect code join Effect's traces and `propagation.inject` writes the current span's `traceparent`. When the
 * layer's scope closes, the metric readers export once more while the span processors flush (in parallel, all within
 * `shutdownTimeout`), and the globals this layer registered are unregistered (a global that another SDK had already
 * registered is left to it, and a warning is logged).
 *
 * The tracer is installed only when a span can be recorded: with no span exporter, or with the constant `always_off`
 * sampler (`sampleRatio: 0` and `parentBased: false`), Effect's native tracer stays and the library's no-tracer fast
 * paths stay on. Metrics are exported with unit `s` for names ending in `_seconds`, an annotation (`{position}`,
 * `{event}`, `{connection}`) for the library's gauges, and `1` otherwise (or the metric's `unit` tag).
 *
 * Trace context: the library's own transports (`Cqrs`, the bus) read and write W3C `traceparent` headers as Effect
 * external spans; this layer honours the sampled flag of such a parent (`-00` is not sampled, `-01` is), which
 * `@effect/opentelemetry` alone treats as always sampled.
 *
 * Without this layer nothing of it loads or runs: the root module imports no OpenTelemetry package, and while Effect's
 * built-in tracer is the current one the library skips the spans of its command path (see `Telemetry`). The subpath
 * (`effect-eventstore/OpenTelemetry`) needs `@effect/opentelemetry`, `@opentelemetry/api`, `@opentelemetry/resources`,
 * `@opentelemetry/sdk-trace-base`, `@opentelemetry/sdk-trace-node`, `@opentelemetry/sdk-metrics`,
 * `@opentelemetry/semantic-conventions` (imported by `@effect/opentelemetry`) and the two OTLP/HTTP exporters.
 *
 * @example
 * import * as OpenTelemetry from "effect-eventstore/OpenTelemetry"
 *
 * // everything from the standard OTEL_* environment variables
 * const TelemetryLive = OpenTelemetry.layerConfig({ serviceName: "bank" })
 *
 * // or explicit
 * const TelemetryLive2 = OpenTelemetry.layer({
 *   serviceName: "bank",
 *   serviceVersion: "1.4.0",
 *   environment: "production",
 *   sampleRatio: 0.1,
 *   otlp: { endpoint: "http://collector:4318" }
 * })
 *
 * @since 0.1.0
 */
import * as Resource from "@effect/opentelemetry/Resource"
import * as OtelTracer from "@effect/opentelemetry/Tracer"
import * as Metrics from "@effect/opentelemetry/Metrics"
import * as OtelApi from "@opentelemetry/api"
import { OTLPMetricExporter } from "@opentelemetry/exporter-metrics-otlp-http"
import { OTLPTraceExporter } from "@opentelemetry/exporter-trace-otlp-http"
import { resourceFromAttributes } from "@opentelemetry/resources"
import type { MetricDescriptor, MetricProducer, MetricReader, PushMetricExporter } from "@opentelemetry/sdk-metrics"
import { PeriodicExportingMetricReader } from "@opentelemetry/sdk-metrics"
import type { Sampler, SpanExporter } from "@opentelemetry/sdk-trace-base"
import {
  AlwaysOffSampler,
  AlwaysOnSampler,
  BatchSpanProcessor,
  ParentBasedSampler,
  TraceIdRatioBasedSampler
} from "@opentelemetry/sdk-trace-base"
import { NodeTracerProvider } from "@opentelemetry/sdk-trace-node"
import * as Config from "effect/Config"
import * as ConfigError from "effect/ConfigError"
import * as Context from "effect/Context"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Either from "effect/Either"
import * as Layer from "effect/Layer"
import * as Option from "effect/Option"
import * as Redacted from "effect/Redacted"
import * as Schema from "effect/Schema"
import * as EffectTracer from "effect/Tracer"
import { randomUUID } from "node:crypto"

/**
 * The options could not make a working SDK (a malformed endpoint URL, a ratio outside 0..1, a non-positive interval).
 *
 * @since 0.1.0
 */
export class OpenTelemetryError extends Schema.TaggedError<OpenTelemetryError>()("OpenTelemetryError", {
  reason: Schema.String
}) {
  override get message(): string {
    return `OpenTelemetry: ${this.reason}`
  }
}

/**
 * OTLP/HTTP (JSON) export. `endpoint` is the collector's base URL (default `http://localhost:4318`); traces go to
 * `${endpoint}/v1/traces` and metrics to `${endpoint}/v1/metrics` unless `tracesEndpoint` / `metricsEndpoint` give
 * the full URL. `headers` go with every request (an API key: give it `Redacted`; it is unwrapped only when a request
 * is sent). `traces: false` / `metrics: false` turn one signal's export off. `timeout` bounds each request (default
 * 10 s).
 *
 * Like every OpenTelemetry OTLP exporter, the SDK's exporters also read `OTEL_EXPORTER_OTLP_*` from `process.env` for
 * what is not given here (e.g. headers are merged with `OTEL_EXPORTER_OTLP_HEADERS`).
 *
 * @since 0.1.0
 */
export interface OtlpOptions {
  readonly endpoint?: string | undefined
  readonly tracesEndpoint?: string | undefined
  readonly metricsEndpoint?: string | undefined
  readonly headers?: Readonly<Record<string, string | Redacted.Redacted<string>>> | undefined
  readonly timeout?: Duration.DurationInput | undefined
  readonly traces?: boolean | undefined
  readonly metrics?: boolean | undefined
}

/**
 * - `serviceName`, `serviceVersion`, `environment` (`deployment.environment` and `deployment.environment.name`),
 *   `attributes`: the resource every span and metric point carries.
 * - `sampleRatio`: the fraction of traces sampled, 0..1 (default 1). `parentBased` (default true): a span with a
 *   parent follows the parent's decision and the ratio applies to root spans only; `false` applies the ratio to
 *   every span's trace id.
 * - `otlp`: export over OTLP/HTTP (none when omitted).
 * - `spanExporters` / `metricExporters`: more exporters, each behind its own batch span processor / periodic reader.
 * - `spanExportDelay`: how long the batch span processor gathers spans before an export (default 5 s).
 * - `metricInterval`: the metric export interval (default 60 s).
 * - `shutdownTimeout`: the bound on the final metric export and span flush when the scope closes (default 5 s).
 * - `registerGlobal` (default true): make the SDK the global OpenTelemetry tracer provider, propagator (W3C trace
 *   context and baggage) and context manager while the layer is up (each one that no other SDK registered first).
 *
 * @since 0.1.0
 */
export interface Options {
  readonly serviceName: string
  readonly serviceVersion?: string | undefined
  readonly environment?: string | undefined
  readonly attributes?: Readonly<Record<string, string | number | boolean>> | undefined
  readonly sampleRatio?: number | undefined
  readonly parentBased?: boolean | undefined
  readonly otlp?: OtlpOptions | undefined
  readonly spanExporters?: ReadonlyArray<SpanExporter> | undefined
  readonly metricExporters?: ReadonlyArray<PushMetricExporter> | undefined
  readonly spanExportDelay?: Duration.DurationInput | undefined
  readonly metricInterval?: Duration.DurationInput | undefined
  readonly shutdownTimeout?: Duration.DurationInput | undefined
  readonly registerGlobal?: boolean | undefined
}

/**
 * The running SDK. `flush` exports what is buffered now (spans in the batch processors, a metric collection), within
 * the shutdown timeout.
 *
 * @since 0.1.0
 */
export interface OpenTelemetryService {
  readonly flush: Effect.Effect<void>
}

/**
 * @since 0.1.0
 */
export class OpenTelemetry extends Context.Tag("effect-eventstore/OpenTelemetry")<
  OpenTelemetry,
  OpenTelemetryService
>() {}

/**
 * Exports what is buffered now (see `OpenTelemetryService.flush`).
 *
 * @since 0.1.0
 */
export const flush: Effect.Effect<void, never, OpenTelemetry> = Effect.flatMap(OpenTelemetry, (otel) => otel.flush)

const DEFAULT_ENDPOINT = "http://localhost:4318"

const signalUrl = (base: string, signal: "traces" | "metrics") => `${base.replace(/\/+$/, "")}/v1/${signal}`

const checkUrl = (url: string, what: string): Either.Either<string, OpenTelemetryError> => {
  try {
    const parsed = new URL(url)
    if (parsed.protocol !== "http:" && parsed.protocol !== "https:") {
      return Either.left(new OpenTelemetryError({ reason: `${what}: not an http(s) URL` }))
    }
    return Either.right(parsed.href)
  } catch {
    return Either.left(new OpenTelemetryError({ reason: `${what}: not a URL` }))
  }
}

const positiveMillis = (input: Duration.DurationInput, what: string): Either.Either<number, OpenTelemetryError> => {
  const millis = Duration.toMillis(Duration.decode(input))
  return millis > 0 && Number.isFinite(millis)
    ? Either.right(millis)
    : Either.left(new OpenTelemetryError({ reason: `${what} must be a positive finite duration` }))
}

/** The sampler for a ratio (0 and 1 are the constant samplers), parent-based or not. */
const makeSampler = (ratio: number, parentBased: boolean): Sampler => {
  const root = ratio >= 1 ? new AlwaysOnSampler() : ratio <= 0 ? new AlwaysOffSampler() : new TraceIdRatioBasedSampler(ratio)
  return parentBased ? new ParentBasedSampler({ root }) : root
}

/**
 * Effect's external spans (a W3C `traceparent` read by `Cqrs` or the bus) carry `sampled`, but `@effect/opentelemetry`
 * reads a remote parent's trace flags only from its own context tag and otherwise assumes "sampled": a `-00` parent
 * would be recorded. This tracer adds the tag from `sampled` before the span starts.
 */
const honourSampledFlag = (tracer: EffectTracer.Tracer): EffectTracer.Tracer =>
  EffectTracer.make({
    span: (name, parent, context, links, startTime, kind, options) =>
      tracer.span(name, withTraceFlags(parent), context, links, startTime, kind, options),
    context: (f, fiber) => tracer.context(f, fiber)
  })

const withTraceFlags = (parent: Option.Option<EffectTracer.AnySpan>): Option.Option<EffectTracer.AnySpan> => {
  if (parent._tag === "None" || parent.value._tag !== "ExternalSpan") return parent
  const span = parent.value
  if (Option.isSome(Context.getOption(span.context, OtelTracer.OtelTraceFlags))) return parent
  return Option.some({
    ...span,
    context: Context.add(
      span.context,
      OtelTracer.OtelTraceFlags,
      span.sampled ? OtelApi.TraceFlags.SAMPLED : OtelApi.TraceFlags.NONE
    )
  })
}

interface Plan {
  readonly attributes: Record<string, string | number | boolean>
  readonly serviceName: string
  readonly serviceVersion: string | undefined
  readonly sampler: Sampler
  /** Whether a span can be recorded at all: a span exporter, and a sampler that is not constant-off. */
  readonly tracing: boolean
  readonly spanExporters: ReadonlyArray<SpanExporter>
  readonly metricExporters: ReadonlyArray<PushMetricExporter>
  readonly spanExportDelay: number
  readonly metricInterval: number
  readonly metricTimeout: number
  readonly shutdownTimeout: Duration.Duration
  readonly registerGlobal: boolean
}

const plan = (options: Options): Either.Either<Plan, OpenTelemetryError> =>
  Either.gen(function*() {
    const ratio = options.sampleRatio ?? 1
    if (!(ratio >= 0 && ratio <= 1)) {
      return yield* Either.left(new OpenTelemetryError({ reason: "sampleRatio must be from 0 to 1" }))
    }
    const spanExportDelay = yield* positiveMillis(options.spanExportDelay ?? "5 seconds", "spanExportDelay")
    const metricInterval = yield* positiveMillis(options.metricInterval ?? "60 seconds", "metricInterval")
    const shutdownMillis = yield* positiveMillis(options.shutdownTimeout ?? "5 seconds", "shutdownTimeout")
    const attributes: Record<string, string | number | boolean> = { ...options.attributes }
    attributes["service.name"] = options.serviceName
    if (options.serviceVersion !== undefined) attributes["service.version"] = options.serviceVersion
    if (options.environment !== undefined) {
      attributes["deployment.environment"] = options.environment
      attributes["deployment.environment.name"] = options.environment
    }
    attributes["telemetry.sdk.name"] = "@effect/opentelemetry"
    attributes["telemetry.sdk.language"] = "nodejs"
    const spanExporters = [...(options.spanExporters ?? [])]
    const metricExporters = [...(options.metricExporters ?? [])]
    let requestTimeout = 10_000
    const otlp = options.otlp
    if (otlp !== undefined) {
      requestTimeout = yield* positiveMillis(otlp.timeout ?? "10 seconds", "otlp.timeout")
      const base = otlp.endpoint ?? DEFAULT_ENDPOINT
      yield* checkUrl(base, "otlp.endpoint")
      const headers = otlp.headers ?? {}
      // unwrapped per request, inside the exporter
      const headerFactory = () =>
        Promise.resolve(
          Object.fromEntries(
            Object.entries(headers).map(([key, value]) => [key, Redacted.isRedacted(value) ? Redacted.value(value) : value])
          )
        )
      if (otlp.traces !== false) {
        const url = yield* checkUrl(otlp.tracesEndpoint ?? signalUrl(base, "traces"), "otlp.tracesEndpoint")
        spanExporters.push(new OTLPTraceExporter({ url, headers: headerFactory, timeoutMillis: requestTimeout }))
      }
      if (otlp.metrics !== false) {
        const url = yield* checkUrl(otlp.metricsEndpoint ?? signalUrl(base, "metrics"), "otlp.metricsEndpoint")
        metricExporters.push(new OTLPMetricExporter({ url, headers: headerFactory, timeoutMillis: requestTimeout }))
      }
    }
    const parentBased = options.parentBased ?? true
    return {
      attributes,
      serviceName: options.serviceName,
      serviceVersion: options.serviceVersion,
      sampler: makeSampler(ratio, parentBased),
      // always_off (ratio 0, not parent-based) records nothing; parent-based ratio 0 still follows a sampled remote parent
      tracing: spanExporters.length > 0 && !(ratio <= 0 && !parentBased),
      spanExporters,
      metricExporters,
      spanExportDelay,
      metricInterval,
      // the SDK requires the export timeout not to exceed the interval
      metricTimeout: Math.min(metricInterval, Math.max(requestTimeout, 1)),
      shutdownTimeout: Duration.millis(shutdownMillis),
      registerGlobal: options.registerGlobal ?? true
    }
  })

/**
 * Units the OpenTelemetry export gives Effect metrics (which have no unit field: `@effect/opentelemetry` exports `1`
 * unless a `unit` / `time_unit` tag says otherwise): `s` for a name ending in `_seconds`, and an annotation for the
 * library's gauges that count things, so that a Prometheus exporter does not read them as ratios.
 */
const GAUGE_UNITS: Readonly<Record<string, string>> = {
  eventstore_projection_checkpoint: "{position}",
  eventstore_projection_lag_events: "{event}",
  eventstore_held_back_events: "{event}",
  eventstore_nats_connected: "{connection}"
}

const unitOf = (name: string, unit: string): string =>
  unit !== "1" ? unit : name.endsWith("_seconds") ? "s" : GAUGE_UNITS[name] ?? unit

/** A metric producer that exports `producer`'s metrics with the units of `unitOf`. */
const withUnits = (producer: MetricProducer): MetricProducer => ({
  collect: async (options) => {
    const result = await producer.collect(options)
    for (const scope of result.resourceMetrics.scopeMetrics) {
      for (const metric of scope.metrics) {
        const unit = unitOf(metric.descriptor.name, metric.descriptor.unit)
        if (unit !== metric.descriptor.unit) {
          ;(metric as { descriptor: MetricDescriptor }).descriptor = { ...metric.descriptor, unit }
        }
      }
    }
    return result
  }
})

/**
 * Registers the SDK as the global tracer provider, context manager and propagator (what `provider.register()` does),
 * and tells which of the three this call installed: the OpenTelemetry API refuses a global that another SDK has
 * already registered, and those must stay when this layer closes.
 */
const registerGlobals = (provider: NodeTracerProvider) => {
  // the current globals (or the API's no-op ones), through accessors that the API's typings mark private
  const currentContext = () => (OtelApi.context as unknown as { _getContextManager(): unknown })._getContextManager()
  const currentPropagator = () =>
    (OtelApi.propagation as unknown as { _getGlobalPropagator(): unknown })._getGlobalPropagator()
  const contextBefore = currentContext()
  const propagatorBefore = currentPropagator()
  provider.register()
  const delegate = (OtelApi.trace.getTracerProvider() as OtelApi.ProxyTracerProvider).getDelegate()
  return {
    trace: delegate === provider,
    context: currentContext() !== contextBefore,
    propagation: currentPropagator() !== propagatorBefore
  }
}

const build = (plan: Plan) =>
  Layer.unwrapScoped(Effect.gen(function*() {
    const attributes = "service.instance.id" in plan.attributes
      ? plan.attributes
      : { ...plan.attributes, "service.instance.id": randomUUID() }
    const resource = resourceFromAttributes(attributes)
    const provider = new NodeTracerProvider({
      resource,
      sampler: plan.sampler,
      spanProcessors: plan.spanExporters.map((exporter) =>
        new BatchSpanProcessor(exporter, { scheduledDelayMillis: plan.spanExportDelay })
      )
    })
    const readers: Array<MetricReader> = plan.metricExporters.map((exporter) =>
      new PeriodicExportingMetricReader({
        exporter,
        exportIntervalMillis: plan.metricInterval,
        exportTimeoutMillis: plan.metricTimeout
      })
    )
    const producer = withUnits(yield* Metrics.makeProducer.pipe(Effect.provideService(Resource.Resource, resource)))
    // one bounded shutdown for both signals, in parallel: a slow metric export does not keep the spans from flushing
    // (the provider's shutdown flushes its processors)
    yield* Effect.acquireRelease(
      Effect.sync(() => {
        for (const reader of readers) reader.setMetricProducer(producer)
      }),
      () =>
        Effect.promise(() =>
          Promise.allSettled([...readers.map((reader) => reader.shutdown()), provider.shutdown()])
        ).pipe(Effect.interruptible, Effect.timeoutOption(plan.shutdownTimeout))
    )
    if (plan.registerGlobal) {
      yield* Effect.acquireRelease(
        Effect.sync(() => registerGlobals(provider)).pipe(
          Effect.tap((installed) =>
            installed.trace && installed.context && installed.propagation ? Effect.void : Effect.logWarning(
              "OpenTelemetry: another SDK already registered some OpenTelemetry globals; they are left in place",
              installed
            )
          )
        ),
        (installed) =>
          Effect.sync(() => {
            if (installed.trace) OtelApi.trace.disable()
            if (installed.context) OtelApi.context.disable()
            if (installed.propagation) OtelApi.propagation.disable()
          })
      )
    }
    const otelTracer = provider.getTracer(plan.serviceName, plan.serviceVersion)
    const flushAll = Effect.promise(() =>
      Promise.allSettled([...readers.map((reader) => reader.forceFlush()), provider.forceFlush()])
    ).pipe(Effect.timeoutOption(plan.shutdownTimeout), Effect.asVoid)
    const context = Context.make(OpenTelemetry, { flush: flushAll }).pipe(
      Context.add(Resource.Resource, resource),
      Context.add(OtelTracer.OtelTracer, otelTracer),
      Context.add(OtelTracer.OtelTracerProvider, provider)
    )
    // no span can be recorded: keep Effect's native tracer, so the library's no-tracer fast paths stay on
    if (!plan.tracing) return Layer.succeedContext(context)
    const tracer = yield* OtelTracer.make.pipe(Effect.provideService(OtelTracer.OtelTracer, otelTracer))
    // built one after the other, not with `Layer.merge`: a merge builds its sides in forked fibers and joins their
    // fiber refs, so the tracer would stay on the building fiber after the layer's scope closes
    return Layer.provideMerge(Layer.setTracer(honourSampledFlag(tracer)), Layer.succeedContext(context))
  }))

/**
 * The running SDK and what it provides: the `OpenTelemetry` service, `@effect/opentelemetry`'s `Resource`, and the
 * OpenTelemetry tracer and tracer provider (for code that uses the OpenTelemetry API directly).
 *
 * @since 0.1.0
 */
export type Provided =
  | OpenTelemetry
  | Resource.Resource
  | OtelTracer.OtelTracer
  | OtelTracer.OtelTracerProvider

/**
 * The SDK from explicit options (see `Options`); reads no environment variable itself (the OTLP exporters do, for
 * what `otlp` leaves out).
 *
 * @since 0.1.0
 */
export const layer = (options: Options): Layer.Layer<Provided, OpenTelemetryError> =>
  Either.match(plan(options), { onLeft: Layer.fail, onRight: build })

/**
 * Values from the code that the environment may override in `layerConfig`; the exporters and lifecycle settings
 * are taken as given.
 *
 * @since 0.1.0
 */
export interface ConfigOptions extends
  Partial<
    Pick<
      Options,
      | "serviceName"
      | "serviceVersion"
      | "environment"
      | "spanExporters"
      | "metricExporters"
      | "spanExportDelay"
      | "shutdownTimeout"
      | "registerGlobal"
    >
  >
{}

/**
 * A list of `key=value` pairs separated by commas, values percent-encoded (the W3C baggage form the OpenTelemetry
 * specification uses for `OTEL_RESOURCE_ATTRIBUTES` and `OTEL_EXPORTER_OTLP_HEADERS`).
 */
const parsePairs = (text: string): Either.Either<Array<readonly [string, string]>, string> => {
  const out: Array<readonly [string, string]> = []
  for (const raw of text.split(",")) {
    const entry = raw.trim()
    if (entry === "") continue
    const eq = entry.indexOf("=")
    if (eq <= 0) return Either.left("expected key=value pairs separated by commas")
    const key = entry.slice(0, eq).trim()
    try {
      out.push([key, decodeURIComponent(entry.slice(eq + 1).trim())])
    } catch {
      return Either.left(`the value of ${key} is not valid percent-encoding`)
    }
  }
  return Either.right(out)
}

const pairs = (name: string) =>
  Config.string(name).pipe(
    Config.withDefault(""),
    Config.mapOrFail((text) =>
      Either.mapLeft(parsePairs(text), (reason) => ConfigError.InvalidData([name], reason))
    )
  )

const millisConfig = (name: string, fallback: number) =>
  Config.integer(name).pipe(
    Config.withDefault(fallback),
    Config.validate({ message: "must be a positive number of milliseconds", validation: (n) => n > 0 })
  )

const SAMPLERS = [
  "always_on",
  "always_off",
  "traceidratio",
  "parentbased_always_on",
  "parentbased_always_off",
  "parentbased_traceidratio"
] as const

/** An enumerated variable, read case-insensitively (as the specification asks), with its default. */
const choice = <const A extends string>(name: string, values: ReadonlyArray<A>, fallback: A) =>
  Config.string(name).pipe(
    Config.withDefault(fallback),
    Config.mapOrFail((text) => {
      const value = text.trim().toLowerCase()
      return (values as ReadonlyArray<string>).includes(value)
        ? Either.right(value as A)
        : Either.left(ConfigError.InvalidData([name], `expected one of ${values.join(", ")}, got ${JSON.stringify(text)}`))
    })
  )

const exporterChoice = (name: string) => choice(name, ["otlp", "none"], "otlp")

/**
 * The OTLP protocol of one signal (`OTEL_EXPORTER_OTLP_<SIGNAL>_PROTOCOL`, else `OTEL_EXPORTER_OTLP_PROTOCOL`): only
 * `http/json`, what the layer's exporters send, is accepted; `grpc` and `http/protobuf` fail rather than send JSON
 * to an endpoint that expects something else.
 */
const protocolOf = (signal: "TRACES" | "METRICS") =>
  Effect.gen(function*() {
    const specific = `OTEL_EXPORTER_OTLP_${signal}_PROTOCOL`
    const own = yield* Config.option(Config.string(specific))
    const name = Option.isSome(own) ? specific : "OTEL_EXPORTER_OTLP_PROTOCOL"
    const value = Option.isSome(own) ? Option.some(own.value) : yield* Config.option(Config.string(name))
    if (Option.isNone(value) || value.value.trim().toLowerCase() === "http/json") return
    return yield* Effect.fail(ConfigError.InvalidData(
      [name],
      `only http/json is supported (the layer sends OTLP/HTTP with JSON bodies), got ${JSON.stringify(value.value)}`
    ))
  })

/**
 * The OpenTelemetry settings of the specification's environment variables, read through Effect `Config` (so a
 * `ConfigProvider` can supply them):
 *
 * - `OTEL_SDK_DISABLED`: `true` (any case) installs nothing; the library then creates no spans.
 * - `OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES` (`key=value,...`, values percent-decoded; `service.version` and
 *   `deployment.environment` are read from it).
 * - `OTEL_TRACES_SAMPLER` (`always_on`, `always_off`, `traceidratio`, `parentbased_always_on` — the default —,
 *   `parentbased_always_off`, `parentbased_traceidratio`; any case) and `OTEL_TRACES_SAMPLER_ARG` (the ratio, default 1;
 *   read only for the two `traceidratio` samplers, ignored for the others).
 * - `OTEL_EXPORTER_OTLP_ENDPOINT` (default `http://localhost:4318`), `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`,
 *   `OTEL_EXPORTER_OTLP_METRICS_ENDPOINT`, `OTEL_EXPORTER_OTLP_HEADERS` (read as `Redacted`), `OTEL_EXPORTER_OTLP_TIMEOUT`
 *   (ms, default 10000).
 * - `OTEL_EXPORTER_OTLP_PROTOCOL`, `OTEL_EXPORTER_OTLP_TRACES_PROTOCOL`, `OTEL_EXPORTER_OTLP_METRICS_PROTOCOL`: only
 *   `http/json` (what is sent); `grpc` or `http/protobuf` for a signal exported over OTLP fails with a `ConfigError`.
 * - `OTEL_TRACES_EXPORTER`, `OTEL_METRICS_EXPORTER`: `otlp` (default) or `none` (any case). With traces `none` and no
 *   `spanExporters`, or `always_off`, no tracer is installed.
 * - `OTEL_METRIC_EXPORT_INTERVAL` (ms, default 60000).
 *
 * A value that cannot be used (an unknown sampler, a ratio outside 0..1, an unsupported protocol, malformed pairs) fails
 * with a `ConfigError`. Precedence: `OTEL_SERVICE_NAME`, then `service.name` in `OTEL_RESOURCE_ATTRIBUTES`, then
 * `options.serviceName`, then `unknown_service:node`; the environment's version and environment over the options'.
 *
 * @since 0.1.0
 */
export const layerConfig = (
  options: ConfigOptions = {}
): Layer.Layer<Provided, OpenTelemetryError | ConfigError.ConfigError> =>
  Layer.unwrapEffect(Effect.gen(function*() {
    const disabled = yield* Config.string("OTEL_SDK_DISABLED").pipe(
      Config.withDefault("false"),
      Config.map((value) => value.trim().toLowerCase() === "true")
    )
    if (disabled) {
      return Layer.succeedContext(
        Context.make(OpenTelemetry, { flush: Effect.void }).pipe(
          Context.add(Resource.Resource, resourceFromAttributes({})),
          Context.add(OtelTracer.OtelTracer, new OtelApi.ProxyTracerProvider().getTracer("noop")),
          Context.add(OtelTracer.OtelTracerProvider, new OtelApi.ProxyTracerProvider())
        )
      )
    }
    const serviceNameEnv = yield* Config.option(Config.string("OTEL_SERVICE_NAME"))
    const resourcePairs = yield* pairs("OTEL_RESOURCE_ATTRIBUTES")
    const sampler = yield* choice("OTEL_TRACES_SAMPLER", SAMPLERS, "parentbased_always_on")
    // the argument means something only to the ratio samplers; the others ignore it, as the specification says
    const samplerArg = sampler === "traceidratio" || sampler === "parentbased_traceidratio"
      ? yield* Config.number("OTEL_TRACES_SAMPLER_ARG").pipe(
        Config.withDefault(1),
        Config.validate({ message: "must be from 0 to 1", validation: (n) => n >= 0 && n <= 1 })
      )
      : 1
    const endpoint = yield* Config.string("OTEL_EXPORTER_OTLP_ENDPOINT").pipe(Config.withDefault(DEFAULT_ENDPOINT))
    const tracesEndpoint = yield* Config.option(Config.string("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))
    const metricsEndpoint = yield* Config.option(Config.string("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT"))
    const headersSecret = yield* Config.option(Config.redacted("OTEL_EXPORTER_OTLP_HEADERS"))
    const timeout = yield* millisConfig("OTEL_EXPORTER_OTLP_TIMEOUT", 10_000)
    const tracesExporter = yield* exporterChoice("OTEL_TRACES_EXPORTER")
    const metricsExporter = yield* exporterChoice("OTEL_METRICS_EXPORTER")
    const metricInterval = yield* millisConfig("OTEL_METRIC_EXPORT_INTERVAL", 60_000)
    if (tracesExporter === "otlp") yield* protocolOf("TRACES")
    if (metricsExporter === "otlp") yield* protocolOf("METRICS")

    const headers: Record<string, Redacted.Redacted<string>> = {}
    if (Option.isSome(headersSecret)) {
      const parsed = parsePairs(Redacted.value(headersSecret.value))
      if (Either.isLeft(parsed)) {
        // the reason names no value: the headers are secret
        return yield* Effect.fail(
          ConfigError.InvalidData(["OTEL_EXPORTER_OTLP_HEADERS"], parsed.left)
        )
      }
      for (const [key, value] of parsed.right) headers[key] = Redacted.make(value)
    }
    const attributes: Record<string, string> = Object.fromEntries(resourcePairs)
    const serviceName = Option.getOrUndefined(serviceNameEnv) ?? attributes["service.name"] ?? options.serviceName ??
      "unknown_service:node"
    const serviceVersion = attributes["service.version"] ?? options.serviceVersion
    const environment = attributes["deployment.environment.name"] ?? attributes["deployment.environment"] ??
      options.environment
    const ratio = sampler === "always_on" || sampler === "parentbased_always_on"
      ? 1
      : sampler === "always_off" || sampler === "parentbased_always_off"
      ? 0
      : samplerArg
    const otlp: OtlpOptions | undefined = tracesExporter === "none" && metricsExporter === "none" ? undefined : {
      endpoint,
      tracesEndpoint: Option.getOrUndefined(tracesEndpoint),
      metricsEndpoint: Option.getOrUndefined(metricsEndpoint),
      headers,
      timeout: Duration.millis(timeout),
      traces: tracesExporter === "otlp",
      metrics: metricsExporter === "otlp"
    }
    return layer({
      ...options,
      serviceName,
      serviceVersion,
      environment,
      attributes,
      sampleRatio: ratio,
      parentBased: sampler.startsWith("parentbased_"),
      otlp,
      metricInterval: Duration.millis(metricInterval)
    })
  }))
