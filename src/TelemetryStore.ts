/**
 * An embedded telemetry backend: OpenTelemetry spans and metric points written to a local SQLite file, kept for a
 * retention period, and read back through a small query API (the spans of a trace as a tree, the slowest operations,
 * metric summaries) — tracing with no collector. The store provides the exporters; `layerOpenTelemetry` wires them
 * into the `OpenTelemetry` layer, or pass `spanExporter` / `metricExporter` to `OpenTelemetry.layer` yourself.
 *
 * The SDK calls the exporters from its batch span processor and periodic metric reader, so the writes happen off the
 * traced code's path, on the Node thread, in transactions of at most 100 rows with a macrotask between them (well
 * under a millisecond each on a laptop; a WAL checkpoint, every few MB written, takes longer); each export also
 * deletes at most `pruneBatch` rows older than the retention per table, 100 per statement with a macrotask between
 * them. Queries run on the Node thread too: `slowestOperations` aggregates each span name's window in SQL over an index
 * (no sort of the window) and takes its percentiles from at most 10,000 of the name's most recent spans. The file is WAL with `synchronous = NORMAL`: telemetry may lose its last exports on a power
 * cut, never the file.
 *
 * Reached by its own subpath (`effect-eventstore/TelemetryStore`); it needs `better-sqlite3` and the OpenTelemetry
 * SDK packages.
 *
 * @example
 * import * as TelemetryStore from "effect-eventstore/TelemetryStore"
 * import * as Effect from "effect/Effect"
 *
 * const report = Effect.gen(function*() {
 *   const slow = yield* TelemetryStore.slowestOperations({ window: "15 minutes", limit: 10 })
 *   for (const op of slow) console.log(op.name, op.count, op.p95Ms)
 * })
 *
 * @since 0.1.0
 */
import type { PushMetricExporter } from "@opentelemetry/sdk-metrics"
import type { SpanExporter } from "@opentelemetry/sdk-trace-base"
import * as Clock from "effect/Clock"
import * as Config from "effect/Config"
import type * as ConfigError from "effect/ConfigError"
import * as Context from "effect/Context"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Schema from "effect/Schema"
import type * as Scope from "effect/Scope"
import * as internal from "./internal/otelStore.js"
import * as OpenTelemetry from "./OpenTelemetry.js"

/**
 * The telemetry file could not be opened, or a query or retention pass failed. `reason` is the driver's message.
 *
 * @since 0.1.0
 */
export class TelemetryStoreError extends Schema.TaggedError<TelemetryStoreError>()("TelemetryStoreError", {
  operation: Schema.Literal("open", "query", "prune"),
  filename: Schema.String,
  reason: Schema.String
}) {
  override get message(): string {
    return `telemetry store ${JSON.stringify(this.filename)}: ${this.operation} failed: ${this.reason}`
  }
}

/**
 * A stored span. Times are milliseconds since the epoch (fractional); `depth` is its depth in `spansOfTrace`'s tree
 * (0 for a root, or for a span whose parent is not stored: another service's, or not exported yet).
 *
 * @since 0.1.0
 */
export interface SpanRecord {
  readonly traceId: string
  readonly spanId: string
  readonly parentSpanId: string | undefined
  readonly name: string
  readonly kind: "internal" | "server" | "client" | "producer" | "consumer"
  readonly startTime: number
  readonly durationMs: number
  readonly status: "unset" | "ok" | "error"
  readonly statusMessage: string | undefined
  readonly attributes: Readonly<Record<string, unknown>>
  readonly events: ReadonlyArray<{
    readonly name: string
    readonly time: number
    readonly attributes: Readonly<Record<string, unknown>>
  }>
  /** The `service.name` resource attribute of the process that exported it. */
  readonly service: string | undefined
  readonly depth: number
}

/**
 * The spans of one name that started within a window: how many, how many ended in error, and their durations
 * (nearest-rank p50 and p95, max, mean) in milliseconds. `count`, `errors`, `maxMs` and `avgMs` cover every span of
 * the window; `p50Ms` and `p95Ms` the name's 10,000 most recent spans of the window (all of them when there are fewer).
 *
 * @since 0.1.0
 */
export interface OperationSummary {
  readonly name: string
  readonly count: number
  readonly errors: number
  readonly p50Ms: number
  readonly p95Ms: number
  readonly maxMs: number
  readonly avgMs: number
}

/**
 * One metric series (name, exporting service, attributes) over a window, from the points exported in it.
 *
 * - `counter` / `updowncounter`: `value` is the last exported (cumulative) value; `change` what was added within the
 *   window (a process restart counts from zero again).
 * - `gauge`: `value` is the last value; `min` / `max` over the window's points.
 * - `histogram`: `value` is the last cumulative count; `count` / `sum` the observations within the window and their
 *   sum; `min` / `max` as last exported (Effect histograms report them since the process started).
 *
 * `lastTime` is when the last point was exported (ms since the epoch); `points` how many points the window holds.
 *
 * @since 0.1.0
 */
export interface MetricSummary {
  readonly name: string
  readonly type: "counter" | "updowncounter" | "gauge" | "histogram"
  readonly unit: string
  readonly service: string | undefined
  readonly attributes: Readonly<Record<string, unknown>>
  readonly points: number
  readonly lastTime: number
  readonly value: number
  readonly change: number | undefined
  readonly min: number | undefined
  readonly max: number | undefined
  readonly count: number | undefined
  readonly sum: number | undefined
}

/**
 * The store: its exporters (for the OpenTelemetry SDK) and queries. Windows are measured back from the Effect
 * `Clock`'s current time.
 *
 * @since 0.1.0
 */
export interface TelemetryStoreService {
  readonly filename: string
  /** Writes the spans the SDK hands it. Hand it to one tracer provider. */
  readonly spanExporter: SpanExporter
  /** Writes the metric points the SDK hands it (cumulative temporality). Hand it to one metric reader. */
  readonly metricExporter: PushMetricExporter
  /** The spans of `traceId` in tree order: each parent before its children, siblings by start time. */
  readonly spansOfTrace: (traceId: string) => Effect.Effect<ReadonlyArray<SpanRecord>, TelemetryStoreError>
  /** Span names by p95 duration, slowest first (default window 1 hour, limit 20). */
  readonly slowestOperations: (options?: {
    readonly window?: Duration.DurationInput | undefined
    readonly limit?: number | undefined
  }) => Effect.Effect<ReadonlyArray<OperationSummary>, TelemetryStoreError>
  /** One summary per series, by name then service then attributes (default window 1 hour; all names). */
  readonly metricSummaries: (options?: {
    readonly window?: Duration.DurationInput | undefined
    readonly name?: string | undefined
  }) => Effect.Effect<ReadonlyArray<MetricSummary>, TelemetryStoreError>
  /**
   * One retention pass now, as each export does: deletes at most `pruneBatch` spans and `pruneBatch` metric points (100
   * rows per statement, a macrotask between them; a pass that meets another process's write lock stops there)
   * older than the retention (by the wall clock); returns how many went.
   */
  readonly prune: Effect.Effect<{ readonly spans: number; readonly metricPoints: number }, TelemetryStoreError>
  /** Waits for the exports in progress to be written. */
  readonly flush: Effect.Effect<void>
}

/**
 * @since 0.1.0
 */
export class TelemetryStore extends Context.Tag("effect-eventstore/TelemetryStore")<
  TelemetryStore,
  TelemetryStoreService
>() {}

/**
 * - `filename`: the SQLite file (created with its tables when missing; `:memory:` for tests).
 * - `retention`: rows older than this are deleted (default 7 days).
 * - `pruneBatch`: at most this many rows per table deleted per export (default 1000).
 * - `closeTimeout`: on scope close, how long to wait for exports in progress before closing the file (default 2 s).
 *
 * @since 0.1.0
 */
export interface Options {
  readonly filename: string
  readonly retention?: Duration.DurationInput | undefined
  readonly pruneBatch?: number | undefined
  readonly closeTimeout?: Duration.DurationInput | undefined
}

const reasonOf = (cause: unknown): string => cause instanceof Error ? cause.message : String(cause)

/**
 * Opens the store; while another process holds the file's write lock, the open is retried four times with a backoff
 * (10 ms to 640 ms, about 0.85 s in all) before it fails. The file closes with the scope (after the exports in progress, within `closeTimeout`). Close the
 * SDK that uses the exporters first: `layerOpenTelemetry` orders this for you.
 *
 * @since 0.1.0
 */
export const make = (options: Options): Effect.Effect<TelemetryStoreService, TelemetryStoreError, Scope.Scope> =>
  Effect.gen(function*() {
    const retention = Duration.decode(options.retention ?? "7 days")
    const pruneBatch = options.pruneBatch ?? 1000
    const closeTimeout = options.closeTimeout ?? "2 seconds"
    const filename = options.filename
    if (!Number.isInteger(pruneBatch) || pruneBatch < 1) {
      return yield* new TelemetryStoreError({ operation: "open", filename, reason: "pruneBatch must be an integer ≥ 1" })
    }
    const store = yield* Effect.acquireRelease(
      Effect.tryPromise({
        try: () => internal.Store.open({ filename, retentionMs: Duration.toMillis(retention), pruneBatch }),
        catch: (cause) => new TelemetryStoreError({ operation: "open", filename, reason: reasonOf(cause) })
      }),
      (store) =>
        Effect.promise(() => store.flush()).pipe(
          Effect.interruptible,
          Effect.timeoutOption(closeTimeout),
          Effect.zipRight(Effect.sync(() => store.close()))
        )
    )
    const query = <A>(f: () => A) =>
      Effect.try({
        try: f,
        catch: (cause) => new TelemetryStoreError({ operation: "query", filename, reason: reasonOf(cause) })
      })
    const since = (window: Duration.DurationInput | undefined) =>
      Effect.map(Clock.currentTimeMillis, (now) => now - Duration.toMillis(window ?? "1 hour"))
    return {
      filename,
      spanExporter: store.spanExporter(),
      metricExporter: store.metricExporter(),
      spansOfTrace: (traceId) => query(() => store.spansOfTrace(traceId)),
      slowestOperations: (options) =>
        Effect.flatMap(since(options?.window), (from) =>
          Effect.tryPromise({
            try: () => store.slowestOperations(from, Math.max(1, Math.floor(options?.limit ?? 20))),
            catch: (cause) => new TelemetryStoreError({ operation: "query", filename, reason: reasonOf(cause) })
          })),
      metricSummaries: (options) =>
        Effect.flatMap(since(options?.window), (from) => query(() => store.metricSummaries(from, options?.name))),
      prune: Effect.tryPromise({
        try: () => store.prune(Date.now()),
        catch: (cause) => new TelemetryStoreError({ operation: "prune", filename, reason: reasonOf(cause) })
      }),
      flush: Effect.promise(() => store.flush())
    } satisfies TelemetryStoreService
  })

/**
 * The store as a layer.
 *
 * @since 0.1.0
 */
export const layer = (options: Options): Layer.Layer<TelemetryStore, TelemetryStoreError> =>
  Layer.scoped(TelemetryStore, make(options))

/**
 * The store from configuration, e.g. `TelemetryStore.layerConfig({ filename: Config.string("TELEMETRY_FILE") })`.
 *
 * @since 0.1.0
 */
export const layerConfig = (
  config: Config.Config.Wrap<Options>
): Layer.Layer<TelemetryStore, TelemetryStoreError | ConfigError.ConfigError> =>
  Layer.scoped(TelemetryStore, Effect.flatMap(Config.unwrap(config), make))

/**
 * The spans of a trace in tree order (see `TelemetryStoreService.spansOfTrace`).
 *
 * @since 0.1.0
 */
export const spansOfTrace = (
  traceId: string
): Effect.Effect<ReadonlyArray<SpanRecord>, TelemetryStoreError, TelemetryStore> =>
  Effect.flatMap(TelemetryStore, (store) => store.spansOfTrace(traceId))

/**
 * Span names by p95 duration, slowest first (see `TelemetryStoreService.slowestOperations`).
 *
 * @since 0.1.0
 */
export const slowestOperations = (
  options?: Parameters<TelemetryStoreService["slowestOperations"]>[0]
): Effect.Effect<ReadonlyArray<OperationSummary>, TelemetryStoreError, TelemetryStore> =>
  Effect.flatMap(TelemetryStore, (store) => store.slowestOperations(options))

/**
 * Metric series summaries (see `TelemetryStoreService.metricSummaries` and `MetricSummary`).
 *
 * @since 0.1.0
 */
export const metricSummaries = (
  options?: Parameters<TelemetryStoreService["metricSummaries"]>[0]
): Effect.Effect<ReadonlyArray<MetricSummary>, TelemetryStoreError, TelemetryStore> =>
  Effect.flatMap(TelemetryStore, (store) => store.metricSummaries(options))

const withStoreExporters = <O extends {
  readonly spanExporters?: ReadonlyArray<SpanExporter> | undefined
  readonly metricExporters?: ReadonlyArray<PushMetricExporter> | undefined
}>(options: O, store: TelemetryStoreService): O => ({
  ...options,
  spanExporters: [...(options.spanExporters ?? []), store.spanExporter],
  metricExporters: [...(options.metricExporters ?? []), store.metricExporter]
})

/**
 * Tracing with no collector: the store, and `OpenTelemetry.layer(options)` exporting to it (and to OTLP as well when
 * `options.otlp` is given). The SDK shuts down (final export) before the file closes.
 *
 * @example
 * import * as TelemetryStore from "effect-eventstore/TelemetryStore"
 *
 * const TelemetryLive = TelemetryStore.layerOpenTelemetry(
 *   { filename: "telemetry.db", retention: "3 days" },
 *   { serviceName: "bank", metricInterval: "10 seconds" }
 * )
 *
 * @since 0.1.0
 */
export const layerOpenTelemetry = (
  store: Options,
  options: OpenTelemetry.Options
): Layer.Layer<TelemetryStore | OpenTelemetry.Provided, TelemetryStoreError | OpenTelemetry.OpenTelemetryError> =>
  Layer.unwrapEffect(
    Effect.map(TelemetryStore, (service) => OpenTelemetry.layer(withStoreExporters(options, service)))
  ).pipe(Layer.provideMerge(layer(store)))

/**
 * As `layerOpenTelemetry`, with the SDK's settings from the `OTEL_*` environment variables (`OpenTelemetry.layerConfig`;
 * set `OTEL_TRACES_EXPORTER=none` and `OTEL_METRICS_EXPORTER=none` to export to the file only).
 *
 * @since 0.1.0
 */
export const layerOpenTelemetryConfig = (
  store: Options,
  options: OpenTelemetry.ConfigOptions = {}
): Layer.Layer<
  TelemetryStore | OpenTelemetry.Provided,
  TelemetryStoreError | OpenTelemetry.OpenTelemetryError | ConfigError.ConfigError
> =>
  Layer.unwrapEffect(
    Effect.map(TelemetryStore, (service) => OpenTelemetry.layerConfig(withStoreExporters(options, service)))
  ).pipe(Layer.provideMerge(layer(store)))
