/**
 * The embedded telemetry store's SQLite side: the schema, the OpenTelemetry exporters that write spans and metric
 * points into it, retention, and the queries behind `TelemetryStore`.
 *
 * Writes happen where the SDK calls exporters: the batch span processor's timer and the periodic metric reader, never
 * on the path of the traced work. better-sqlite3 is synchronous, so a batch is written in transactions of
 * `CHUNK` rows with a macrotask between them, and retention deletes at most `pruneBatch` rows per table per export,
 * `PRUNE_CHUNK` per statement with a macrotask between them; `slowestOperations` reads index ranges, not a sorted window:
 * the thread is never held for long (invariant 11). The connection never waits on a lock (busy timeout 0); a batch
 * refused because another process holds the write lock is retried a few times after an asynchronous backoff, then
 * reported to the SDK as failed (the SDK drops it).
 *
 * Telemetry is not the system of record: the file runs `synchronous = NORMAL` in WAL mode (a power cut may lose the
 * last exports, never corrupt the file).
 */
import type { Attributes, HrTime } from "@opentelemetry/api"
import type { PushMetricExporter, ResourceMetrics } from "@opentelemetry/sdk-metrics"
import { AggregationTemporality, DataPointType } from "@opentelemetry/sdk-metrics"
import type { ReadableSpan, SpanExporter } from "@opentelemetry/sdk-trace-base"
import Sqlite from "better-sqlite3"
// the query results are the public types, declared once in TelemetryStore
import type { MetricSummary, OperationSummary, SpanRecord } from "../TelemetryStore.js"

/** Rows per write transaction. */
const CHUNK = 100
/** Rows per retention `DELETE` statement (a macrotask between two). */
const PRUNE_CHUNK = 100
/** `slowestOperations`: percentiles come from at most this many of each name's most recent spans in the window. */
export const PERCENTILE_ROWS = 10_000
/** Attempts of a batch (or an open) refused with SQLITE_BUSY, with their backoff in ms. */
const BUSY_BACKOFF = [10, 40, 160, 640] as const

const SCHEMA = [
  `CREATE TABLE IF NOT EXISTS otel_resources (
    id INTEGER PRIMARY KEY,
    attributes TEXT NOT NULL UNIQUE,
    service_name TEXT
  )`,
  `CREATE TABLE IF NOT EXISTS otel_spans (
    id INTEGER PRIMARY KEY,
    trace_id TEXT NOT NULL,
    span_id TEXT NOT NULL,
    parent_span_id TEXT,
    name TEXT NOT NULL,
    kind INTEGER NOT NULL,
    start_us INTEGER NOT NULL,
    end_us INTEGER NOT NULL,
    duration_us INTEGER NOT NULL,
    status_code INTEGER NOT NULL,
    status_message TEXT,
    attributes TEXT NOT NULL,
    events TEXT,
    links TEXT,
    scope TEXT NOT NULL,
    resource_id INTEGER NOT NULL
  )`,
  `CREATE UNIQUE INDEX IF NOT EXISTS otel_spans_ids ON otel_spans (trace_id, span_id)`,
  `CREATE INDEX IF NOT EXISTS otel_spans_start ON otel_spans (start_us)`,
  // slowestOperations: each name's window as an index range, covering its aggregates (no table read, no sort)
  `CREATE INDEX IF NOT EXISTS otel_spans_name_start ON otel_spans (name, start_us, duration_us, status_code)`,
  `CREATE TABLE IF NOT EXISTS otel_metric_points (
    id INTEGER PRIMARY KEY,
    time_us INTEGER NOT NULL,
    start_us INTEGER NOT NULL,
    name TEXT NOT NULL,
    unit TEXT NOT NULL,
    type TEXT NOT NULL,
    temporality INTEGER NOT NULL,
    attributes TEXT NOT NULL,
    value REAL,
    count REAL,
    sum REAL,
    min REAL,
    max REAL,
    resource_id INTEGER NOT NULL
  )`,
  `CREATE INDEX IF NOT EXISTS otel_metric_points_name ON otel_metric_points (name, time_us)`,
  `CREATE INDEX IF NOT EXISTS otel_metric_points_time ON otel_metric_points (time_us)`
] as const

/** @internal */
export type MetricType = "counter" | "updowncounter" | "gauge" | "histogram"

/** @internal */
export interface StoreOptions {
  readonly filename: string
  readonly retentionMs: number
  readonly pruneBatch: number
}

const toMicros = (time: HrTime): number => time[0] * 1_000_000 + Math.floor(time[1] / 1_000)

/** JSON with sorted keys, so equal attribute sets are equal strings (the identity of a metric series). */
const canonical = (attributes: Attributes | undefined): string => {
  if (attributes === undefined) return "{}"
  const keys = Object.keys(attributes).sort()
  const out: Record<string, unknown> = {}
  for (const key of keys) {
    const value = attributes[key]
    if (value !== undefined) out[key] = value
  }
  return JSON.stringify(out)
}

const isBusy = (cause: unknown): boolean =>
  typeof cause === "object" && cause !== null &&
  typeof (cause as { code?: unknown }).code === "string" &&
  ((cause as { code: string }).code === "SQLITE_BUSY" || (cause as { code: string }).code.startsWith("SQLITE_BUSY_"))

const macrotask = () => new Promise<void>((resolve) => setImmediate(resolve))
const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms))

/** The SDK's `ExportResult` (from `@opentelemetry/core`, named through the exporter interface). */
type ExportResult = Parameters<Parameters<SpanExporter["export"]>[1]>[0]

const SUCCESS = { code: 0 } as ExportResult
const failed = (error: Error): ExportResult => ({ code: 1, error } as ExportResult)

type SpanRow = readonly [
  traceId: string,
  spanId: string,
  parentSpanId: string | null,
  name: string,
  kind: number,
  startUs: number,
  endUs: number,
  durationUs: number,
  statusCode: number,
  statusMessage: string | null,
  attributes: string,
  events: string | null,
  links: string | null,
  scope: string,
  resourceId: number
]

type PointRow = readonly [
  timeUs: number,
  startUs: number,
  name: string,
  unit: string,
  type: MetricType,
  temporality: number,
  attributes: string,
  value: number | null,
  count: number | null,
  sum: number | null,
  min: number | null,
  max: number | null,
  resourceId: number
]

const KINDS = ["internal", "server", "client", "producer", "consumer"] as const
const STATUS = ["unset", "ok", "error"] as const

interface RawSpan {
  readonly trace_id: string
  readonly span_id: string
  readonly parent_span_id: string | null
  readonly name: string
  readonly kind: number
  readonly start_us: number
  readonly duration_us: number
  readonly status_code: number
  readonly status_message: string | null
  readonly attributes: string
  readonly events: string | null
  readonly service_name: string | null
}

interface RawPoint {
  readonly time_us: number
  readonly start_us: number
  readonly name: string
  readonly unit: string
  readonly type: MetricType
  readonly temporality: number
  readonly attributes: string
  readonly value: number | null
  readonly count: number | null
  readonly sum: number | null
  readonly min: number | null
  readonly max: number | null
  readonly resource_id: number
  readonly service_name: string | null
}

/**
 * An open telemetry store: its connection, exporters and queries. Synchronous; `TelemetryStore` wraps it in Effects.
 *
 * @internal
 */
export class Store {
  readonly db: Sqlite.Database
  private readonly resourceIds = new Map<string, number>()
  private readonly pending = new Set<Promise<void>>()
  private closed = false
  private readonly insertSpan: Sqlite.Statement
  private readonly insertPoint: Sqlite.Statement
  private readonly insertResource: Sqlite.Statement
  private readonly selectResource: Sqlite.Statement
  private readonly pruneSpans: Sqlite.Statement
  private readonly prunePoints: Sqlite.Statement
  private readonly spanNames: Sqlite.Statement
  private readonly spanAggregates: Sqlite.Statement
  private readonly recentDurations: Sqlite.Statement

  /**
   * Opens the file (creating the tables), again after a backoff while another process holds its write lock (the
   * schema is checked in a write transaction); the last refusal is thrown.
   */
  static async open(options: StoreOptions): Promise<Store> {
    for (let attempt = 0;; attempt++) {
      try {
        return new Store(options)
      } catch (cause) {
        if (!isBusy(cause) || attempt >= BUSY_BACKOFF.length) throw cause
        await sleep(BUSY_BACKOFF[attempt]!)
      }
    }
  }

  private constructor(readonly options: StoreOptions) {
    const db = new Sqlite(options.filename, { timeout: 0 })
    try {
      db.pragma("journal_mode = WAL")
      db.pragma("synchronous = NORMAL")
      db.transaction(() => {
        for (const statement of SCHEMA) db.exec(statement)
      }).immediate()
      this.insertSpan = db.prepare(
        `INSERT OR IGNORE INTO otel_spans (trace_id, span_id, parent_span_id, name, kind, start_us, end_us, duration_us,
           status_code, status_message, attributes, events, links, scope, resource_id)
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`
      )
      this.insertPoint = db.prepare(
        `INSERT INTO otel_metric_points (time_us, start_us, name, unit, type, temporality, attributes, value, count, sum,
           min, max, resource_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`
      )
      this.insertResource = db.prepare(
        `INSERT INTO otel_resources (attributes, service_name) VALUES (?, ?)
         ON CONFLICT (attributes) DO NOTHING`
      )
      this.selectResource = db.prepare(`SELECT id FROM otel_resources WHERE attributes = ?`).pluck()
      this.pruneSpans = db.prepare(
        `DELETE FROM otel_spans WHERE id IN (SELECT id FROM otel_spans WHERE start_us < ? ORDER BY start_us LIMIT ?)`
      )
      this.spanNames = db.prepare(
        `WITH RECURSIVE names(name) AS (
           SELECT MIN(name) FROM otel_spans
           UNION ALL
           SELECT (SELECT MIN(name) FROM otel_spans WHERE name > names.name) FROM names WHERE names.name IS NOT NULL
         )
         SELECT name FROM names WHERE name IS NOT NULL`
      ).pluck()
      this.spanAggregates = db.prepare(
        `SELECT COUNT(*) AS count, TOTAL(status_code = 2) AS errors, MAX(duration_us) AS max, AVG(duration_us) AS avg
         FROM otel_spans INDEXED BY otel_spans_name_start WHERE name = ? AND start_us >= ?`
      )
      this.recentDurations = db.prepare(
        `SELECT duration_us FROM otel_spans INDEXED BY otel_spans_name_start
         WHERE name = ? AND start_us >= ? ORDER BY start_us DESC LIMIT ?`
      ).pluck()
      this.prunePoints = db.prepare(
        `DELETE FROM otel_metric_points WHERE id IN
           (SELECT id FROM otel_metric_points WHERE time_us < ? ORDER BY time_us LIMIT ?)`
      )
    } catch (cause) {
      db.close()
      throw cause
    }
    this.db = db
  }

  /** Inside a write transaction. */
  private resourceId(attributes: Attributes): number {
    const json = canonical(attributes)
    const known = this.resourceIds.get(json)
    if (known !== undefined) return known
    const service = attributes["service.name"]
    this.insertResource.run(json, typeof service === "string" ? service : null)
    const id = this.selectResource.get(json) as number
    this.resourceIds.set(json, id)
    return id
  }

  /** Runs `f` (one statement or transaction), again after a backoff while another writer holds the lock. */
  private async retryBusy<A>(f: () => A): Promise<A> {
    for (let attempt = 0;; attempt++) {
      if (this.closed) throw new Error("telemetry store is closed")
      try {
        return f()
      } catch (cause) {
        if (!isBusy(cause) || attempt >= BUSY_BACKOFF.length) throw cause
        await sleep(BUSY_BACKOFF[attempt]!)
      }
    }
  }

  /** The row id of each resource's attribute set (inserted when new). */
  private async resourceIdsOf(resources: ReadonlyArray<Attributes>): Promise<ReadonlyArray<number>> {
    const missing = resources.filter((attributes) => !this.resourceIds.has(canonical(attributes)))
    if (missing.length > 0) {
      await this.retryBusy(() => this.db.transaction(() => {
        for (const attributes of missing) this.resourceId(attributes)
      }).immediate())
    }
    return resources.map((attributes) => this.resourceIds.get(canonical(attributes))!)
  }

  /** Writes `rows` in chunks with a macrotask between them, retrying a chunk refused with SQLITE_BUSY. */
  private async write<R extends ReadonlyArray<unknown>>(
    statement: () => Sqlite.Statement,
    rows: ReadonlyArray<R>
  ): Promise<void> {
    for (let i = 0; i < rows.length; i += CHUNK) {
      if (i > 0) await macrotask()
      const chunk = rows.slice(i, i + CHUNK)
      await this.retryBusy(() =>
        this.db.transaction(() => {
          const insert = statement()
          for (const row of chunk) insert.run(...row)
        }).immediate()
      )
    }
  }

  /**
   * One bounded retention pass: deletes at most `pruneBatch` spans and `pruneBatch` metric points older than the
   * retention, `PRUNE_CHUNK` rows per statement with a macrotask between them. Stops early (keeping what it deleted)
   * when another process holds the write lock or the store closes.
   */
  async prune(nowMs: number): Promise<{ readonly spans: number; readonly metricPoints: number }> {
    const horizon = Math.floor((nowMs - this.options.retentionMs) * 1000)
    const spans = await this.pruneTable(this.pruneSpans, horizon)
    const metricPoints = await this.pruneTable(this.prunePoints, horizon)
    return { spans, metricPoints }
  }

  private async pruneTable(statement: Sqlite.Statement, horizon: number): Promise<number> {
    let deleted = 0
    while (deleted < this.options.pruneBatch) {
      if (this.closed) break
      const limit = Math.min(PRUNE_CHUNK, this.options.pruneBatch - deleted)
      let changes: number
      try {
        changes = statement.run(horizon, limit).changes
      } catch (cause) {
        if (isBusy(cause)) break
        throw cause
      }
      deleted += changes
      if (changes < limit) break
      await macrotask()
    }
    return deleted
  }

  private track(work: () => Promise<void>, done: (result: ExportResult) => void): void {
    if (this.closed) {
      done(failed(new Error("telemetry store is closed")))
      return
    }
    const promise = work().then(
      async () => {
        try {
          await this.prune(Date.now())
        } catch {
          // retention runs again after the next export
        }
        done(SUCCESS)
      },
      (cause) => done(failed(cause instanceof Error ? cause : new Error(String(cause))))
    ).finally(() => this.pending.delete(promise))
    this.pending.add(promise)
  }

  /** Waits for the exports in progress. */
  async flush(): Promise<void> {
    while (this.pending.size > 0) await Promise.all(this.pending)
  }

  exportSpans(spans: ReadonlyArray<ReadableSpan>, done: (result: ExportResult) => void): void {
    this.track(async () => {
      const resourceIds = await this.resourceIdsOf(spans.map((span) => span.resource.attributes))
      const rows: Array<SpanRow> = []
      for (let i = 0; i < spans.length; i++) {
        const span = spans[i]!
        const context = span.spanContext()
        const startUs = toMicros(span.startTime)
        const endUs = toMicros(span.endTime)
        rows.push([
          context.traceId,
          context.spanId,
          span.parentSpanContext?.spanId ?? null,
          span.name,
          span.kind,
          startUs,
          endUs,
          Math.max(0, endUs - startUs),
          span.status.code,
          span.status.message ?? null,
          JSON.stringify(span.attributes),
          span.events.length === 0 ? null : JSON.stringify(
            span.events.map((event) => ({
              name: event.name,
              time: toMicros(event.time) / 1000,
              attributes: event.attributes ?? {}
            }))
          ),
          span.links.length === 0 ? null : JSON.stringify(
            span.links.map((link) => ({
              traceId: link.context.traceId,
              spanId: link.context.spanId,
              attributes: link.attributes ?? {}
            }))
          ),
          span.instrumentationScope.name,
          resourceIds[i]!
        ])
      }
      await this.write(() => this.insertSpan, rows)
    }, done)
  }

  exportMetrics(metrics: ResourceMetrics, done: (result: ExportResult) => void): void {
    this.track(async () => {
      const [resourceId] = await this.resourceIdsOf([metrics.resource.attributes])
      const rows: Array<PointRow> = []
      for (const scope of metrics.scopeMetrics) {
        for (const metric of scope.metrics) {
          const { name, unit } = metric.descriptor
          const temporality = metric.aggregationTemporality
          switch (metric.dataPointType) {
            case DataPointType.SUM:
            case DataPointType.GAUGE: {
              const type: MetricType = metric.dataPointType === DataPointType.GAUGE
                ? "gauge"
                : metric.isMonotonic
                ? "counter"
                : "updowncounter"
              for (const point of metric.dataPoints) {
                rows.push([
                  toMicros(point.endTime),
                  toMicros(point.startTime),
                  name,
                  unit,
                  type,
                  temporality,
                  canonical(point.attributes),
                  point.value,
                  null,
                  null,
                  null,
                  null,
                  resourceId
                ])
              }
              break
            }
            case DataPointType.HISTOGRAM:
            case DataPointType.EXPONENTIAL_HISTOGRAM: {
              for (const point of metric.dataPoints) {
                const value = point.value
                rows.push([
                  toMicros(point.endTime),
                  toMicros(point.startTime),
                  name,
                  unit,
                  "histogram",
                  temporality,
                  canonical(point.attributes),
                  null,
                  value.count,
                  value.sum ?? null,
                  value.min ?? null,
                  value.max ?? null,
                  resourceId
                ])
              }
              break
            }
          }
        }
      }
      await this.write(() => this.insertPoint, rows)
    }, done)
  }

  /** Refuses further exports and closes the connection (an export still writing fails its remaining chunks). */
  close(): void {
    this.closed = true
    this.db.close()
  }

  spanExporter(): SpanExporter {
    return {
      export: (spans, done) => this.exportSpans(spans, done),
      forceFlush: () => this.flush(),
      // the connection belongs to the store's scope, which closes it after the SDK has shut down
      shutdown: () => this.flush()
    }
  }

  metricExporter(): PushMetricExporter {
    return {
      export: (metrics, done) => this.exportMetrics(metrics, done),
      forceFlush: () => this.flush(),
      shutdown: () => this.flush(),
      selectAggregationTemporality: () => AggregationTemporality.CUMULATIVE
    }
  }

  // --- queries ------------------------------------------------------------------------------------------------------

  /** The spans of a trace, parents before children, siblings by start time; orphans (parent not stored) are roots. */
  spansOfTrace(traceId: string): Array<SpanRecord> {
    const rows = this.db.prepare(
      `SELECT s.trace_id, s.span_id, s.parent_span_id, s.name, s.kind, s.start_us, s.duration_us, s.status_code,
              s.status_message, s.attributes, s.events, r.service_name
       FROM otel_spans s JOIN otel_resources r ON r.id = s.resource_id
       WHERE s.trace_id = ? ORDER BY s.start_us, s.id`
    ).all(traceId) as Array<RawSpan>
    const ids = new Set(rows.map((row) => row.span_id))
    const children = new Map<string | null, Array<RawSpan>>()
    for (const row of rows) {
      const parent = row.parent_span_id !== null && ids.has(row.parent_span_id) ? row.parent_span_id : null
      const list = children.get(parent)
      if (list === undefined) children.set(parent, [row])
      else list.push(row)
    }
    const out: Array<SpanRecord> = []
    const stack: Array<readonly [RawSpan, number]> = (children.get(null) ?? []).map((row) => [row, 0] as const)
      .reverse()
    while (stack.length > 0) {
      const [row, depth] = stack.pop()!
      out.push(toRecord(row, depth))
      const kids = children.get(row.span_id)
      if (kids !== undefined) for (let i = kids.length - 1; i >= 0; i--) stack.push([kids[i]!, depth + 1])
    }
    return out
  }

  /**
   * Per span name since `sinceMs`: count, errors, max and mean over every span of the window (one index range per
   * name, in SQL), nearest-rank p50/p95 over the name's `PERCENTILE_ROWS` most recent spans of the window; slowest
   * p95 first. A macrotask between two names.
   */
  async slowestOperations(sinceMs: number, limit: number): Promise<Array<OperationSummary>> {
    const since = Math.floor(sinceMs * 1000)
    const names = this.spanNames.all() as Array<string>
    const out: Array<OperationSummary> = []
    for (let i = 0; i < names.length; i++) {
      if (i > 0) await macrotask()
      if (this.closed) throw new Error("telemetry store is closed")
      const name = names[i]!
      const row = this.spanAggregates.get(name, since) as { count: number; errors: number; max: number; avg: number }
      if (row.count === 0) continue
      const durations = Float64Array.from(this.recentDurations.all(name, since, PERCENTILE_ROWS) as Array<number>)
      durations.sort()
      const rank = (p: number) => durations[Math.max(0, Math.ceil((durations.length * p) / 100) - 1)]!
      out.push({
        name,
        count: row.count,
        errors: row.errors,
        p50Ms: rank(50) / 1000,
        p95Ms: rank(95) / 1000,
        maxMs: row.max / 1000,
        avgMs: row.avg / 1000
      })
    }
    out.sort((a, b) => b.p95Ms - a.p95Ms || b.maxMs - a.maxMs || (a.name < b.name ? -1 : a.name > b.name ? 1 : 0))
    return out.slice(0, limit)
  }

  /**
   * One summary per series (metric name, service, attributes) with points exported since `sinceMs`. Cumulative
   * series: `change` is what was added within the window (a restart, seen as a new start time or a drop, counts
   * from zero); a series whose start lies before the window counts from its first point in it.
   */
  metricSummaries(sinceMs: number, name: string | undefined): Array<MetricSummary> {
    const sql = `SELECT p.time_us, p.start_us, p.name, p.unit, p.type, p.temporality, p.attributes, p.value, p.count,
                        p.sum, p.min, p.max, p.resource_id, r.service_name
                 FROM otel_metric_points p JOIN otel_resources r ON r.id = p.resource_id
                 WHERE p.time_us >= ? ${name === undefined ? "" : "AND p.name = ?"}
                 ORDER BY p.name, p.resource_id, p.attributes, p.time_us, p.id`
    const since = Math.floor(sinceMs * 1000)
    const statement = this.db.prepare(sql)
    const iterator = (name === undefined ? statement.iterate(since) : statement.iterate(since, name)) as
      IterableIterator<RawPoint>
    const out: Array<MetricSummary> = []
    let current: Accumulator | undefined
    for (const row of iterator) {
      if (
        current === undefined || current.first.name !== row.name || current.first.resource_id !== row.resource_id ||
        current.first.attributes !== row.attributes
      ) {
        if (current !== undefined) out.push(current.summary())
        current = new Accumulator(row, since)
      } else {
        current.add(row)
      }
    }
    if (current !== undefined) out.push(current.summary())
    return out
  }
}

/** Folds one series' points (in time order) into its summary. */
class Accumulator {
  points = 1
  last: RawPoint
  change = 0
  countChange = 0
  sumChange = 0
  gaugeMin: number
  gaugeMax: number

  constructor(readonly first: RawPoint, since: number) {
    this.last = first
    const value = first.value ?? 0
    this.gaugeMin = value
    this.gaugeMax = value
    // a cumulative series that began inside the window counts its first value; a delta point is all change
    const counts = first.temporality === AggregationTemporality.DELTA || first.start_us >= since
    if (counts) {
      this.change = value
      this.countChange = first.count ?? 0
      this.sumChange = first.sum ?? 0
    }
  }

  add(row: RawPoint): void {
    const prev = this.last
    this.points++
    this.last = row
    const value = row.value ?? 0
    if (value < this.gaugeMin) this.gaugeMin = value
    if (value > this.gaugeMax) this.gaugeMax = value
    if (row.temporality === AggregationTemporality.DELTA) {
      this.change += value
      this.countChange += row.count ?? 0
      this.sumChange += row.sum ?? 0
      return
    }
    const restarted = row.start_us !== prev.start_us
    if (row.type === "histogram") {
      const count = row.count ?? 0
      const sum = row.sum ?? 0
      const reset = restarted || count < (prev.count ?? 0)
      this.countChange += reset ? count : count - (prev.count ?? 0)
      this.sumChange += reset ? sum : sum - (prev.sum ?? 0)
    } else {
      const reset = restarted || (row.type === "counter" && value < (prev.value ?? 0))
      this.change += reset ? value : value - (prev.value ?? 0)
    }
  }

  summary(): MetricSummary {
    const row = this.last
    const histogram = row.type === "histogram"
    const gauge = row.type === "gauge"
    return {
      name: row.name,
      type: row.type,
      unit: row.unit,
      service: row.service_name ?? undefined,
      attributes: JSON.parse(row.attributes) as Record<string, unknown>,
      points: this.points,
      lastTime: row.time_us / 1000,
      value: histogram ? (row.count ?? 0) : (row.value ?? 0),
      change: gauge || histogram ? undefined : this.change,
      min: gauge ? this.gaugeMin : histogram ? (row.min ?? undefined) : undefined,
      max: gauge ? this.gaugeMax : histogram ? (row.max ?? undefined) : undefined,
      count: histogram ? this.countChange : undefined,
      sum: histogram ? this.sumChange : undefined
    }
  }
}

const toRecord = (row: RawSpan, depth: number): SpanRecord => ({
  traceId: row.trace_id,
  spanId: row.span_id,
  parentSpanId: row.parent_span_id ?? undefined,
  name: row.name,
  kind: KINDS[row.kind] ?? "internal",
  startTime: row.start_us / 1000,
  durationMs: row.duration_us / 1000,
  status: STATUS[row.status_code] ?? "unset",
  statusMessage: row.status_message ?? undefined,
  attributes: JSON.parse(row.attributes) as Record<string, unknown>,
  events: row.events === null ? [] : JSON.parse(row.events) as SpanRecord["events"],
  service: row.service_name ?? undefined,
  depth
})
