/**
 * What an operator asks of a running event store, as one service: the head and rate of the log, a keyset-paged list
 * of streams with filters, one stream's events either way, one event with the chain around it, the projections'
 * checkpoints with lag and stall detection, parked events, NDJSON export and import, and the database's safety
 * settings. The CLI (`effect-eventstore`) and the dashboard (`Dashboard`) are both made of it.
 *
 * It reads the store's own SQL tables through the `SqlClient` the store's layer provides (`Sqlite.layer`,
 * `Postgres.layer`); nothing on a hot path counts the events table. When a `Projections` service is in context (the
 * operator runs inside the service), its live status (state, events/s, failure, rebuild progress) is merged in and
 * `rebuild` runs there.
 *
 * @since 0.1.0
 */
import * as SqlClient from "@effect/sql/SqlClient"
import type * as Statement from "@effect/sql/Statement"
import type { SqlError } from "@effect/sql/SqlError"
import * as Chunk from "effect/Chunk"
import * as Clock from "effect/Clock"
import * as Context from "effect/Context"
import * as DateTime from "effect/DateTime"
import * as Effect from "effect/Effect"
import * as Either from "effect/Either"
import * as Layer from "effect/Layer"
import * as Option from "effect/Option"
import * as Schema from "effect/Schema"
import * as Stream from "effect/Stream"
import { InvalidInput, StoreError } from "./Errors.js"
import type { RecordedEvent } from "./Event.js"
import { EventStore } from "./EventStore.js"
import { fromStored, type StoredEvent } from "./internal/codec.js"
import { tables } from "./internal/migrations.js"
import * as Statements from "./internal/statements.js"
import * as Projection from "./Projection.js"

const E = tables.events
const P = tables.projections
const K = tables.parked

// ---------------------------------------------------------------------------------------------------------------------
// What the operator hands out: schemas (the dashboard's HttpApi and the CLI's --json share them)
// ---------------------------------------------------------------------------------------------------------------------

/** An event as the operator shows it: `recordedAt` in ISO 8601, payload and metadata as stored (JSON). @since 0.1.0 */
export const EventView = Schema.Struct({
  position: Schema.Number,
  eventId: Schema.String,
  streamId: Schema.String,
  streamType: Schema.String,
  version: Schema.Number,
  type: Schema.String,
  schemaVersion: Schema.Number,
  payload: Schema.Unknown,
  metadata: Schema.Unknown,
  recordedAt: Schema.String
})
/** @since 0.1.0 */
export type EventView = typeof EventView.Type

/** @since 0.1.0 */
export const StreamInfo = Schema.Struct({
  streamId: Schema.String,
  streamType: Schema.String,
  /** The stream's version: the version of its last event. */
  version: Schema.Number,
  /** When its last event was recorded (ISO 8601). */
  lastRecordedAt: Schema.String
})
/** @since 0.1.0 */
export type StreamInfo = typeof StreamInfo.Type

/** @since 0.1.0 */
export const StreamsPage = Schema.Struct({
  streams: Schema.Array(StreamInfo),
  /** Pass as `after` for the next page; absent on the last page. */
  next: Schema.optional(Schema.String)
})
/** @since 0.1.0 */
export type StreamsPage = typeof StreamsPage.Type

/** @since 0.1.0 */
export const EventsPage = Schema.Struct({
  events: Schema.Array(EventView),
  /** The version to pass as `from` for the next page in the same direction; absent on the last page. */
  next: Schema.optional(Schema.Number)
})
/** @since 0.1.0 */
export type EventsPage = typeof EventsPage.Type

/** @since 0.1.0 */
export const EventDetail = Schema.Struct({
  event: EventView,
  /** Its causes, nearest first: the event whose id is its `causationId`, that event's cause, and so on (at most 20). */
  causes: Schema.Array(EventView),
  /**
   * The events sharing its `correlationId`, or caused by it (`causationId` = its id), by position: searched within
   * `CHAIN_WINDOW` positions either side of it.
   */
  related: Schema.Array(EventView)
})
/** @since 0.1.0 */
export type EventDetail = typeof EventDetail.Type

/** @since 0.1.0 */
export const ParkedView = Schema.Struct({
  projection: Schema.String,
  position: Schema.Number,
  eventId: Schema.String,
  streamId: Schema.String,
  eventType: Schema.String,
  reason: Schema.String,
  parkedAt: Schema.String
})
/** @since 0.1.0 */
export type ParkedView = typeof ParkedView.Type

/** @since 0.1.0 */
export const ParkedPage = Schema.Struct({
  parked: Schema.Array(ParkedView),
  /**
   * Pass as `after` (with the same projection) for the next page; absent on the last page. A page ends with every
   * record at its last position (one per projection parked there), so it may hold a few more than `limit`.
   */
  next: Schema.optional(Schema.Number)
})
/** @since 0.1.0 */
export type ParkedPage = typeof ParkedPage.Type

/** @since 0.1.0 */
export const ProjectionInfo = Schema.Struct({
  name: Schema.String,
  /** The checkpoint: the position of the last event it dealt with. */
  position: Schema.Number,
  head: Schema.Number,
  /** Events after the checkpoint (every event of the log, whatever the projection's filter). */
  lag: Schema.Number,
  /** How long the oldest event after the checkpoint has waited, in seconds; 0 when there is none. */
  lagSeconds: Schema.Number,
  /**
   * How long the checkpoint has stood still while events were waiting after it, in seconds: the time since the later
   * of its last move and the oldest waiting event. 0 when nothing waits. A running projection resets it with every
   * move, however far behind it is; a frozen one lets it grow.
   */
  stalledSeconds: Schema.Number,
  /** When the checkpoint last moved (ISO 8601). */
  updatedAt: Schema.String,
  /** Whether a runner holds its lease now. */
  leased: Schema.Boolean,
  /** Live, from the `Projections` service of this process: absent when the projection does not run here. */
  state: Schema.optional(Schema.String),
  /** Live (as `state`): events per second over the last few seconds. */
  eventsPerSecond: Schema.optional(Schema.Number),
  /** Live (as `state`): what it stopped on. */
  failure: Schema.optional(Schema.Struct({ position: Schema.Number, eventType: Schema.String, reason: Schema.String })),
  /** Live (as `state`): the rebuild under way, if any. */
  rebuild: Schema.optional(Schema.Struct({
    processed: Schema.Number,
    total: Schema.Number,
    eventsPerSecond: Schema.Number,
    etaMillis: Schema.optional(Schema.Number),
    done: Schema.Boolean
  })),
  /** Parked events. */
  parked: Schema.Number,
  /** The reason of its parked event with the highest position, with its position and type. */
  lastParked: Schema.optional(Schema.Struct({ position: Schema.Number, eventType: Schema.String, reason: Schema.String }))
})
/** @since 0.1.0 */
export type ProjectionInfo = typeof ProjectionInfo.Type

/** A durable consumer of the event bus, as its broker reports it (`Nats.consumers`). @since 0.1.0 */
export const BusConsumer = Schema.Struct({
  name: Schema.String,
  stream: Schema.String,
  /** Messages not yet delivered to it. */
  pending: Schema.Number,
  /** Delivered, not yet acknowledged. */
  ackPending: Schema.Number,
  redelivered: Schema.Number,
  /** Its last delivery (ISO 8601), when it had one. */
  lastActive: Schema.optional(Schema.String)
})
/** @since 0.1.0 */
export type BusConsumer = typeof BusConsumer.Type

/** @since 0.1.0 */
export const Overview = Schema.Struct({
  head: Schema.Number,
  /** When the last event was recorded (ISO 8601); absent on an empty log. */
  lastRecordedAt: Schema.optional(Schema.String),
  /** Events appended per second over the last 10 seconds (from at most the last 10,000 events). */
  eventsPerSecond: Schema.Number,
  projections: Schema.Array(ProjectionInfo),
  /** Parked events, all projections. */
  parked: Schema.Number,
  /** The bus's consumers, when the operator was given where to ask (`Options.busConsumers`). */
  bus: Schema.optional(Schema.Array(BusConsumer))
})
/** @since 0.1.0 */
export type Overview = typeof Overview.Type

/** @since 0.1.0 */
export const Level = Schema.Literal("OK", "WARN", "CRIT")
/** @since 0.1.0 */
export type Level = typeof Level.Type

/** @since 0.1.0 */
export const CheckResult = Schema.Struct({
  level: Level,
  /** Nagios exit code: 0 OK, 1 WARN, 2 CRIT. */
  code: Schema.Number,
  projections: Schema.Array(Schema.Struct({
    name: Schema.String,
    level: Level,
    reasons: Schema.Array(Schema.String),
    lag: Schema.Number,
    lagSeconds: Schema.Number,
    stalledSeconds: Schema.Number,
    parked: Schema.Number
  }))
})
/** @since 0.1.0 */
export type CheckResult = typeof CheckResult.Type

/**
 * Thresholds of `check`; a threshold left out is not checked. `stalledWarn` / `stalledCrit` (seconds) catch a
 * frozen checkpoint whatever its lag; `lagWarn` / `lagCrit` count events, `lagSecondsWarn` / `lagSecondsCrit` the
 * oldest waiting event's age; `parkedWarn` / `parkedCrit` count parked events.
 *
 * @since 0.1.0
 */
export const Thresholds = Schema.Struct({
  lagWarn: Schema.optional(Schema.Number),
  lagCrit: Schema.optional(Schema.Number),
  lagSecondsWarn: Schema.optional(Schema.Number),
  lagSecondsCrit: Schema.optional(Schema.Number),
  stalledWarn: Schema.optional(Schema.Number),
  stalledCrit: Schema.optional(Schema.Number),
  parkedWarn: Schema.optional(Schema.Number),
  parkedCrit: Schema.optional(Schema.Number)
})
/** @since 0.1.0 */
export type Thresholds = typeof Thresholds.Type

/** @since 0.1.0 */
export const Doctor = Schema.Struct({
  backend: Schema.Literal("sqlite", "pg"),
  ok: Schema.Boolean,
  findings: Schema.Array(Schema.Struct({
    setting: Schema.String,
    value: Schema.String,
    level: Level,
    advice: Schema.String
  }))
})
/** @since 0.1.0 */
export type Doctor = typeof Doctor.Type

/** @since 0.1.0 */
export const ImportResult = Schema.Struct({
  /** Events written. */
  written: Schema.Number,
  /** Events already in the store (same event id, stream and version): not written again. */
  skipped: Schema.Number
})
/** @since 0.1.0 */
export type ImportResult = typeof ImportResult.Type

/** @since 0.1.0 */
export interface StreamsQuery {
  /** Only streams whose id starts with this. */
  readonly prefix?: string | undefined
  readonly streamType?: string | undefined
  /** Only streams holding at least one event of this type. */
  readonly eventType?: string | undefined
  /** Only streams whose last event was recorded at or after this time (epoch ms). */
  readonly since?: number | undefined
  /** Only streams whose last event was recorded before this time (epoch ms). */
  readonly until?: number | undefined
  /** Streams after this id (the previous page's `next`). */
  readonly after?: string | undefined
  /** Default 100, at most 1000. */
  readonly limit?: number | undefined
}

/** @since 0.1.0 */
export interface StreamQuery {
  /** First version of the page: 1 forward, the last version backward, when omitted. */
  readonly from?: number | undefined
  readonly direction?: "forward" | "backward" | undefined
  /** Default 100, at most 1000. */
  readonly limit?: number | undefined
}

/** What `export` and `import` select: one stream, the streams of one type, or (both absent) all. @since 0.1.0 */
export interface Selection {
  readonly streamId?: string | undefined
  readonly streamType?: string | undefined
}

/** How far `CHAIN_WINDOW` searches either side of an event for its chain. @since 0.1.0 */
export const CHAIN_WINDOW = 10_000

/**
 * A projection named to the operator that does not exist (no checkpoint, and not running in this process).
 *
 * @since 0.1.0
 */
export class NotFound extends Schema.TaggedError<NotFound>()("NotFound", {
  what: Schema.String,
  id: Schema.String
}) {
  override get message() {
    return `${this.what} ${JSON.stringify(this.id)} not found`
  }
}

/**
 * The operator was asked for something this process cannot do: a rebuild of a projection that is not registered
 * here (the standalone CLI knows no handlers), say.
 *
 * @since 0.1.0
 */
export class Unsupported extends Schema.TaggedError<Unsupported>()("Unsupported", {
  reason: Schema.String
}) {
  override get message() {
    return this.reason
  }
}

/** @since 0.1.0 */
export type OperatorError = StoreError | InvalidInput | NotFound | Unsupported

/** What a read of the operator can fail with. @since 0.1.0 */
export type ReadFailure = StoreError | InvalidInput | NotFound

/** @since 0.1.0 */
export interface OperatorService {
  readonly backend: "sqlite" | "pg"
  readonly head: Effect.Effect<number, StoreError>
  readonly overview: Effect.Effect<Overview, StoreError>
  readonly streams: (query?: StreamsQuery) => Effect.Effect<StreamsPage, StoreError | InvalidInput>
  readonly stream: (streamId: string, query?: StreamQuery) => Effect.Effect<EventsPage, ReadFailure>
  /** An event by its id, or by its position (a decimal number). */
  readonly event: (idOrPosition: string) => Effect.Effect<EventDetail, ReadFailure>
  /** The events after a position, in order (what `tail` and the dashboard's live view poll). */
  readonly after: (
    position: number,
    options?: { readonly streamId?: string; readonly streamType?: string; readonly limit?: number }
  ) => Effect.Effect<ReadonlyArray<EventView>, StoreError | InvalidInput>
  readonly projections: Effect.Effect<ReadonlyArray<ProjectionInfo>, StoreError>
  readonly projection: (name: string) => Effect.Effect<ProjectionInfo, StoreError | NotFound>
  readonly check: (thresholds: Thresholds, names?: ReadonlyArray<string>) => Effect.Effect<CheckResult, ReadFailure>
  readonly parked: (
    projection?: string,
    options?: { readonly after?: number; readonly until?: number; readonly limit?: number }
  ) => Effect.Effect<ParkedPage, StoreError | InvalidInput>
  readonly parkedEvent: (projection: string, position: number) => Effect.Effect<
    { readonly parked: ParkedView; readonly event: EventView | undefined },
    ReadFailure
  >
  /**
   * Deletes the parked records of `projection` from `position` to `until` (inclusive; just `position` when absent),
   * a page at a time; returns how many it deleted. The projection does not handle them: its checkpoint is past them.
   */
  readonly skip: (projection: string, position: number, until?: number) => Effect.Effect<number, StoreError>
  /**
   * Hands the parked events from `position` to `until` (inclusive) to the projection's handler again, one at a time,
   * a page at a time; each one handled is deleted from the parked records. Stops at the first that fails again (it
   * stays parked). Only for projections registered with this operator (`layer({ projections })`).
   */
  readonly retry: (
    projection: string,
    position: number,
    until?: number
  ) => Effect.Effect<{ readonly retried: number }, OperatorError | Projection.ProjectionFailed>
  /**
   * Rebuilds a projection running in this process (`Projections.rebuild`): its progress, then the end.
   * `Unsupported` where the projection does not run in this process.
   */
  readonly rebuild: (name: string) => Stream.Stream<
    Projection.RebuildProgress,
    OperatorError | Projection.ProjectionFailed | Projection.ProjectionStateError | Projection.ProjectionNotFound
  >
  /** Whether `name` runs in this process (its `Projections` service is in context): what `rebuild` needs. */
  readonly runsHere: (name: string) => boolean
  readonly doctor: Effect.Effect<Doctor, StoreError>
  /** The selected events as NDJSON lines (no newline), by position, a page at a time: the stored form, exactly. */
  readonly exportEvents: (selection?: Selection) => Stream.Stream<string, StoreError>
  /**
   * Writes NDJSON lines made by `exportEvents` (a chunk at a time): each event with its id, stream, version, type,
   * payload, metadata and time as they were; positions are given by this store. Idempotent: an event whose id is
   * stored already, at the same stream and version, is skipped; a version taken by another event, or a version that
   * does not follow the stream's last, is `InvalidInput` (nothing of that chunk written).
   */
  readonly importLines: (
    lines: ReadonlyArray<string>,
    options?: { readonly firstLine?: number }
  ) => Effect.Effect<ImportResult, StoreError | InvalidInput>
}

/** @since 0.1.0 */
export class Operator extends Context.Tag("effect-eventstore/Operator")<Operator, OperatorService>() {}

// ---------------------------------------------------------------------------------------------------------------------

const storeError = (operation: string) => (cause: SqlError) => new StoreError({ operation, cause })

const num = (u: unknown): number => typeof u === "number" ? u : Number(u)

const iso = (ms: number) => new Date(ms).toISOString()

/** @internal */
export const viewOf = (event: RecordedEvent): EventView => ({
  position: event.position,
  eventId: event.eventId,
  streamId: event.streamId,
  streamType: event.streamType,
  version: event.version,
  type: event.type,
  schemaVersion: event.schemaVersion,
  payload: event.payload,
  metadata: event.metadata,
  recordedAt: DateTime.formatIso(event.recordedAt)
})

const limitOf = (limit: number | undefined, field = "limit"): Effect.Effect<number, InvalidInput> => {
  const n = limit ?? 100
  return Number.isSafeInteger(n) && n >= 1 && n <= 1000
    ? Effect.succeed(n)
    : Effect.fail(new InvalidInput({ field, reason: "must be an integer from 1 to 1000" }))
}

const ROW = `position, event_id AS "eventId", stream_id AS "streamId", stream_type AS "streamType", version,
  event_type AS "type", schema_version AS "schemaVersion", payload, metadata, recorded_at AS "recordedAt"`
const ROW_PG = `position, event_id AS "eventId", stream_id AS "streamId", stream_type AS "streamType", version,
  event_type AS "type", schema_version AS "schemaVersion", payload::text AS payload, metadata::text AS metadata,
  recorded_at AS "recordedAt"`

// export lines: the stored row as JSON, payload and metadata spliced in as stored (valid JSON text already)
const EXPORT_ROW = `position, event_id, stream_id, stream_type, version, event_type, schema_version, payload, metadata,
  tenant_id, recorded_at, claims`
const EXPORT_ROW_PG = `position, event_id, stream_id, stream_type, version, event_type, schema_version,
  payload::text AS payload, metadata::text AS metadata, tenant_id, recorded_at, claims`

/** @internal one NDJSON line of `exportEvents`, from a row of `EXPORT_ROW`'s columns in order (arrays: no row objects) */
export const exportLine = (r: ReadonlyArray<unknown>): string =>
  `{"eventId":${JSON.stringify(r[1])},"streamId":${JSON.stringify(r[2])},"streamType":${
    JSON.stringify(r[3])
  },"version":${num(r[4])},"type":${JSON.stringify(r[5])},"schemaVersion":${num(r[6])},"payload":${
    r[7] as string
  },"metadata":${(r[8] as string | null) ?? "null"},"tenantId":${
    r[9] === null ? "null" : JSON.stringify(r[9])
  },"recordedAt":${num(r[10])},"claims":${(r[11] as string | null) ?? "null"},"position":${num(r[0])}}`

/** A stored row as export wrote it: the store's columns but its position (the target gives its own). */
interface ImportRow extends Omit<StoredEvent, "position"> {
  readonly tenantId: string | null
  readonly claims: string | null
}

const isInt = (u: unknown, min: number): u is number => typeof u === "number" && Number.isSafeInteger(u) && u >= min
const isObject = (u: unknown): u is Record<string, unknown> => typeof u === "object" && u !== null && !Array.isArray(u)

/** @internal a line of `exportEvents` checked and back in the stored form */
export const parseLine = (line: string, n: number): Either.Either<ImportRow, InvalidInput> => {
  const bad = (reason: string) => Either.left(new InvalidInput({ field: `line ${n}`, reason }))
  let u: unknown
  try {
    u = JSON.parse(line)
  } catch {
    return bad("is not JSON")
  }
  if (!isObject(u)) return bad("is not a JSON object")
  const { claims, eventId, metadata, payload, recordedAt, schemaVersion, streamId, streamType, tenantId, type, version } =
    u
  if (typeof eventId !== "string" || eventId.length === 0) return bad("eventId must be a non-empty string")
  if (typeof streamId !== "string" || streamId.length === 0) return bad("streamId must be a non-empty string")
  if (typeof streamType !== "string" || streamType.length === 0) return bad("streamType must be a non-empty string")
  if (typeof type !== "string" || type.length === 0) return bad("type must be a non-empty string")
  if (!isInt(version, 1)) return bad("version must be a positive integer")
  if (!isInt(schemaVersion, 1)) return bad("schemaVersion must be a positive integer")
  if (!isInt(recordedAt, 0)) return bad("recordedAt must be an integer (epoch ms)")
  if (!isObject(payload)) return bad("payload must be a JSON object")
  if (metadata !== null && metadata !== undefined && !isObject(metadata)) return bad("metadata must be an object or null")
  if (tenantId !== null && tenantId !== undefined && typeof tenantId !== "string") return bad("tenantId must be a string")
  if (claims !== null && claims !== undefined && typeof claims !== "object") return bad("claims must be JSON (as exported) or null")
  return Either.right({
    eventId,
    streamId,
    streamType,
    version,
    type,
    schemaVersion,
    payload: JSON.stringify(payload),
    metadata: metadata === null || metadata === undefined ? null : JSON.stringify(metadata),
    tenantId: typeof tenantId === "string" ? tenantId : null,
    recordedAt,
    claims: claims === null || claims === undefined ? null : JSON.stringify(claims)
  })
}

/** @since 0.1.0 */
export interface Options<R = never> {
  /**
   * Projections this operator may hand parked events to again (`retry`), by name. Rebuilds run through the
   * `Projections` service in context, when there is one.
   */
  readonly projections?: ReadonlyArray<Projection.Projection<any, any, any>>
  /**
   * The bus's consumers for the overview (`Nats.consumers(stream)` on JetStream, with its `NatsClient` provided).
   * When it fails, the overview leaves them out and logs why.
   */
  readonly busConsumers?: Effect.Effect<ReadonlyArray<BusConsumer>, unknown, R>
}

/**
 * Makes the operator over the store's SQL database (the `SqlClient` in context, which must be the store's own:
 * `Sqlite.layer` and `Postgres.layer` provide it).
 *
 * @since 0.1.0
 */
export const make = <R = never>(
  options: Options<R> = {}
): Effect.Effect<OperatorService, never, SqlClient.SqlClient | EventStore | R> =>
  Effect.gen(function*() {
    const sql = yield* SqlClient.SqlClient
    const requirements = yield* Effect.context<R>()
    const busConsumers = options.busConsumers === undefined
      ? undefined
      : Effect.provide(options.busConsumers, requirements).pipe(Effect.timeout("2 seconds"))
    const store = yield* EventStore
    const context = yield* Effect.context<never>()
    const live = Context.getOption(context as Context.Context<Projection.Projections>, Projection.Projections)
    const backend = sql.onDialectOrElse({ pg: () => "pg" as const, orElse: () => "sqlite" as const })
    const pg = backend === "pg"
    const ROWS = pg ? ROW_PG : ROW
    const registered = new Map((options.projections ?? []).map((p) => [p.name, p] as const))

    const decode = (rows: ReadonlyArray<StoredEvent>): Effect.Effect<Array<EventView>, StoreError> =>
      Effect.forEach(rows, (row) =>
        Either.match(fromStored(row), {
          onLeft: (e) => Effect.fail(new StoreError({ operation: "operator.read", cause: e })),
          onRight: (event) => Effect.succeed(viewOf(event))
        }))

    // the library's tables are created, never dropped: once found, a table is not asked for again (the live view
    // asks for the overview every 250 ms)
    const found = new Set<string>()
    const tableExists = (name: string) =>
      found.has(name) ? Effect.succeed(true) : (pg
        ? sql<{ ok: unknown }>`SELECT to_regclass(${name}) IS NOT NULL AS ok`.withoutTransform
        : sql<{ ok: unknown }>`SELECT count(*) AS ok FROM sqlite_master WHERE type = 'table' AND name = ${name}`
          .withoutTransform).pipe(Effect.map((rows) => {
          const exists = rows.length > 0 && Boolean(num(rows[0]!.ok))
          if (exists) found.add(name)
          return exists
        }))

    const head = store.head

    const eventsPerSecond = Effect.gen(function*() {
      const now = yield* Clock.currentTimeMillis
      const since = now - 10_000
      // the newest events only (at most 10,000, by the primary key), never a count of the table
      const rows = yield* sql<{ lo: unknown; hi: unknown; oldest: unknown }>`SELECT min(position) AS lo,
        max(position) AS hi, min(recorded_at) AS oldest FROM (
        SELECT position, recorded_at FROM ${sql(E)} ORDER BY position DESC LIMIT 10000) recent
        WHERE recorded_at >= ${since}`.withoutTransform
      if (rows[0]?.lo === null || rows[0]?.lo === undefined) return 0
      // positions may have holes on PostgreSQL: at most 10,000 events, so a few too many at worst
      const n = Math.min(10_000, num(rows[0].hi) - num(rows[0].lo) + 1)
      const span = n >= 10_000 ? Math.max(1, now - num(rows[0].oldest)) : 10_000
      return Math.round((n * 1000 / span) * 10) / 10
    })

    const projectionRows = Effect.gen(function*() {
      if (!(yield* tableExists(P))) return []
      return yield* sql<{ name: string; position: unknown; lease_until: unknown; owner: string | null; updated_at: unknown }>`
        SELECT name, position, owner, lease_until, updated_at FROM ${sql(P)} ORDER BY name`.withoutTransform
    })

    const parkedCounts = Effect.gen(function*() {
      if (!(yield* tableExists(K))) return new Map<string, number>()
      const rows = yield* sql<{ projection: string; n: unknown }>`
        SELECT projection, count(*) AS n FROM ${sql(K)} GROUP BY projection`.withoutTransform
      return new Map(rows.map((r) => [r.projection, num(r.n)]))
    })

    const lastParked = (name: string) =>
      sql<{ position: unknown; event_type: string; reason: string }>`
        SELECT position, event_type, reason FROM ${sql(K)} WHERE projection = ${name}
        ORDER BY position DESC LIMIT 1`.withoutTransform.pipe(
        Effect.map((rows) =>
          rows.length === 0
            ? undefined
            : { position: num(rows[0]!.position), eventType: rows[0]!.event_type, reason: rows[0]!.reason }
        )
      )

    const firstAfter = (position: number) =>
      sql<{ recorded_at: unknown }>`SELECT recorded_at FROM ${sql(E)} WHERE position > ${position}
        ORDER BY position LIMIT 1`.withoutTransform.pipe(
        Effect.map((rows) => rows.length === 0 ? undefined : num(rows[0]!.recorded_at))
      )

    const liveStatus = (name: string) =>
      Option.isNone(live) || !live.value.names.includes(name)
        ? Effect.succeed(undefined)
        : Effect.option(live.value.status(name)).pipe(Effect.map(Option.getOrUndefined))

    const infoOf = (
      row: { name: string; position: unknown; lease_until: unknown; updated_at: unknown },
      headNow: number,
      now: number,
      parked: number
    ) =>
      Effect.gen(function*() {
        const position = num(row.position)
        const updatedAt = num(row.updated_at)
        const status = yield* liveStatus(row.name)
        // a runner in this process knows how far it has dealt with the log: past its saved checkpoint when the events
        // after it were not its to handle (it saves with the next event it handles)
        const dealt = status === undefined ? position : Math.max(position, status.checkpoint)
        const oldest = dealt < headNow ? yield* firstAfter(dealt) : undefined
        const last = parked > 0 ? yield* lastParked(row.name) : undefined
        const info: {
          -readonly [K in keyof ProjectionInfo]: ProjectionInfo[K]
        } = {
          name: row.name,
          position,
          head: headNow,
          lag: Math.max(0, headNow - dealt),
          lagSeconds: oldest === undefined ? 0 : Math.max(0, (now - oldest) / 1000),
          stalledSeconds: oldest === undefined ? 0 : Math.max(0, (now - Math.max(updatedAt, oldest)) / 1000),
          updatedAt: iso(updatedAt),
          leased: num(row.lease_until) >= now,
          parked
        }
        if (status !== undefined) {
          info.state = status.state
          info.eventsPerSecond = status.eventsPerSecond
          if (status.rebuild !== undefined) {
            const r = status.rebuild
            info.rebuild = {
              processed: r.processed,
              total: r.total,
              eventsPerSecond: r.eventsPerSecond,
              done: r.done,
              ...(r.etaMillis !== undefined ? { etaMillis: r.etaMillis } : {})
            }
          }
          if (status.failure !== undefined) {
            info.failure = {
              position: status.failure.position,
              eventType: status.failure.eventType,
              reason: status.failure.reason
            }
          }
        }
        if (last !== undefined) info.lastParked = last
        return info as ProjectionInfo
      })

    const projections = Effect.gen(function*() {
      const [rows, counts, headNow, now] = yield* Effect.all([projectionRows, parkedCounts, head, Clock.currentTimeMillis])
      return yield* Effect.forEach(rows, (row) => infoOf(row, headNow, now, counts.get(row.name) ?? 0))
    }).pipe(Effect.catchTag("SqlError", (e) => Effect.fail(storeError("operator.projections")(e))))

    const projection = (name: string) =>
      Effect.flatMap(projections, (all) => {
        const found = all.find((p) => p.name === name)
        return found === undefined ? Effect.fail(new NotFound({ what: "projection", id: name })) : Effect.succeed(found)
      })

    const overview = Effect.gen(function*() {
      const [headNow, rate, all, last] = yield* Effect.all([
        head,
        eventsPerSecond,
        projections,
        sql<{ recorded_at: unknown }>`SELECT recorded_at FROM ${sql(E)} ORDER BY position DESC LIMIT 1`.withoutTransform
      ])
      const result: { -readonly [K in keyof Overview]: Overview[K] } = {
        head: headNow,
        eventsPerSecond: rate,
        projections: all,
        parked: all.reduce((n, p) => n + p.parked, 0)
      }
      if (last.length > 0) result.lastRecordedAt = iso(num(last[0]!.recorded_at))
      if (busConsumers !== undefined) {
        const consumers = yield* Effect.either(busConsumers)
        if (consumers._tag === "Right") result.bus = consumers.right
        else yield* Effect.logWarning(`operator: the bus's consumers could not be read: ${String(consumers.left)}`)
      }
      return result as Overview
    }).pipe(Effect.catchTag("SqlError", (e) => Effect.fail(storeError("operator.overview")(e))))

    const streams = (query: StreamsQuery = {}) =>
      Effect.gen(function*() {
        const limit = yield* limitOf(query.limit)
        const conditions: Array<Statement.Fragment> = []
        const prefix = query.prefix !== undefined && query.prefix.length > 0 ? query.prefix : undefined
        if (pg) {
          if (query.after !== undefined) conditions.push(sql`stream_id > ${query.after}`)
          if (prefix !== undefined) conditions.push(sql`starts_with(stream_id, ${prefix})`)
        } else if (prefix !== undefined) {
          // binary order: the prefix's range, so the (stream_id, version) index finds it; one lower bound (SQLite
          // starts the range at the first of two, whichever it is)
          conditions.push(
            query.after !== undefined && query.after >= prefix
              ? sql`stream_id > ${query.after}`
              : sql`stream_id >= ${prefix}`,
            sql`stream_id < ${prefix + "\u{10FFFF}"}`
          )
        } else if (query.after !== undefined) {
          conditions.push(sql`stream_id > ${query.after}`)
        }
        if (query.streamType !== undefined) {
          // SQLite: `+` keeps the type index out, so the page walks the stream index in order and stops when full
          conditions.push(pg ? sql`stream_type = ${query.streamType}` : sql`+stream_type = ${query.streamType}`)
        }
        const having: Array<Statement.Fragment> = []
        if (query.eventType !== undefined) {
          having.push(sql`sum(CASE WHEN event_type = ${query.eventType} THEN 1 ELSE 0 END) > 0`)
        }
        if (query.since !== undefined) having.push(sql`max(recorded_at) >= ${query.since}`)
        if (query.until !== undefined) having.push(sql`max(recorded_at) < ${query.until}`)
        const rows = yield* sql<{ stream_id: string; stream_type: string; version: unknown; last_at: unknown }>`
          SELECT stream_id, min(stream_type) AS stream_type, max(version) AS version, max(recorded_at) AS last_at
          FROM ${sql(E)} ${conditions.length > 0 ? sql`WHERE ${sql.and(conditions)}` : sql``}
          GROUP BY stream_id ${having.length > 0 ? sql`HAVING ${sql.and(having)}` : sql``}
          ORDER BY stream_id LIMIT ${limit + 1}`.withoutTransform
        const page = rows.slice(0, limit).map((r): StreamInfo => ({
          streamId: r.stream_id,
          streamType: r.stream_type,
          version: num(r.version),
          lastRecordedAt: iso(num(r.last_at))
        }))
        return rows.length > limit ? { streams: page, next: page[page.length - 1]!.streamId } : { streams: page }
      }).pipe(Effect.catchTag("SqlError", (e) => Effect.fail(storeError("operator.streams")(e))))

    const stream = (streamId: string, query: StreamQuery = {}) =>
      Effect.gen(function*() {
        const limit = yield* limitOf(query.limit)
        const backward = query.direction === "backward"
        const from = query.from
        if (from !== undefined && (!Number.isSafeInteger(from) || from < 1)) {
          return yield* new InvalidInput({ field: "from", reason: "must be a positive integer" })
        }
        // one more than the page: the next page's first version, if there is one
        const options = backward
          ? { direction: "backward" as const, from: 1, ...(from !== undefined ? { to: from } : {}), pageSize: limit + 1 }
          : { from: from ?? 1, to: (from ?? 1) + limit, pageSize: limit + 1 }
        const events = yield* store.read(streamId, options).pipe(
          Stream.take(limit + 1),
          Stream.runCollect,
          Effect.mapError((e) => e._tag === "EventDecodeError" ? new StoreError({ operation: "operator.stream", cause: e }) : e)
        )
        const all = Array.from(events, viewOf)
        if (all.length === 0 && from === undefined) {
          const version = yield* store.version(streamId)
          if (version === 0) return yield* new NotFound({ what: "stream", id: streamId })
        }
        const page = all.slice(0, limit)
        return all.length > limit ? { events: page, next: all[limit]!.version } : { events: page }
      })

    const byPosition = (position: number) =>
      sql<StoredEvent>`SELECT ${sql.literal(ROWS)} FROM ${sql(E)} WHERE position = ${position}`.withoutTransform
    const byId = (id: string) =>
      sql<StoredEvent>`SELECT ${sql.literal(ROWS)} FROM ${sql(E)} WHERE event_id = ${id}`.withoutTransform

    const event = (idOrPosition: string) =>
      Effect.gen(function*() {
        const numeric = /^[0-9]{1,15}$/.test(idOrPosition)
        let rows = numeric ? yield* byPosition(Number(idOrPosition)) : yield* byId(idOrPosition)
        // an event id made of digits: found by its id when no event has that position
        if (rows.length === 0 && numeric) rows = yield* byId(idOrPosition)
        if (rows.length === 0) return yield* new NotFound({ what: "event", id: idOrPosition })
        const [found] = yield* decode(rows)
        const view = found!
        const metadata = (view.metadata ?? {}) as { correlationId?: string; causationId?: string }
        const causes: Array<EventView> = []
        const seen = new Set([view.eventId])
        let cause = metadata.causationId
        while (cause !== undefined && !seen.has(cause) && causes.length < 20) {
          seen.add(cause)
          const up = yield* byId(cause)
          if (up.length === 0) break
          const [next] = yield* decode(up)
          causes.push(next!)
          cause = (next!.metadata as { causationId?: string } | null)?.causationId
        }
        const lo = view.position - CHAIN_WINDOW
        const hi = view.position + CHAIN_WINDOW
        const correlation = metadata.correlationId ?? null
        const related = yield* (pg
          ? sql<StoredEvent>`SELECT ${sql.literal(ROWS)} FROM ${sql(E)} WHERE position BETWEEN ${lo} AND ${hi}
              AND position <> ${view.position}
              AND (metadata->>'correlationId' = ${correlation} OR metadata->>'causationId' = ${view.eventId})
              ORDER BY position LIMIT 1000`.withoutTransform
          : sql<StoredEvent>`SELECT ${sql.literal(ROWS)} FROM ${sql(E)} WHERE position BETWEEN ${lo} AND ${hi}
              AND position <> ${view.position} AND metadata IS NOT NULL
              AND (json_extract(metadata, '$.correlationId') = ${correlation}
                OR json_extract(metadata, '$.causationId') = ${view.eventId})
              ORDER BY position LIMIT 1000`.withoutTransform)
        return { event: view, causes, related: yield* decode(related) }
      }).pipe(Effect.catchTag("SqlError", (e) => Effect.fail(storeError("operator.event")(e))))

    const after = (
      position: number,
      options: { readonly streamId?: string; readonly streamType?: string; readonly limit?: number } = {}
    ) =>
      Effect.gen(function*() {
        const limit = yield* limitOf(options.limit ?? 500)
        if (!Number.isSafeInteger(position) || position < 0) {
          return yield* new InvalidInput({ field: "position", reason: "must be a non-negative integer" })
        }
        // PostgreSQL: only what the store's own readers would hand out (a prefix of the log, see SAFE_PG)
        const upTo = pg ? yield* head : Number.MAX_SAFE_INTEGER
        const rows = yield* sql<StoredEvent>`SELECT ${sql.literal(ROWS)} FROM ${sql(E)} WHERE position > ${position}
          AND position <= ${upTo}
          ${options.streamId !== undefined ? sql`AND stream_id = ${options.streamId}` : sql``}
          ${options.streamType !== undefined ? sql`AND stream_type = ${options.streamType}` : sql``}
          ORDER BY position LIMIT ${limit}`.withoutTransform
        return yield* decode(rows)
      }).pipe(Effect.catchTag("SqlError", (e) => Effect.fail(storeError("operator.after")(e))))

    const thresholdsCheck = (thresholds: Thresholds, names?: ReadonlyArray<string>) =>
      Effect.gen(function*() {
        const all = yield* projections
        for (const name of names ?? []) {
          if (!all.some((p) => p.name === name)) return yield* new NotFound({ what: "projection", id: name })
        }
        const chosen = names === undefined || names.length === 0 ? all : all.filter((p) => names.includes(p.name))
        const rank = { OK: 0, WARN: 1, CRIT: 2 } as const
        const results = chosen.map((p) => {
          let level: Level = "OK"
          const reasons: Array<string> = []
          const test = (value: number, warn: number | undefined, crit: number | undefined, what: string) => {
            if (crit !== undefined && value >= crit) {
              level = "CRIT"
              reasons.push(`${what} ${value} >= ${crit} (crit)`)
            } else if (warn !== undefined && value >= warn) {
              if (level === "OK") level = "WARN"
              reasons.push(`${what} ${value} >= ${warn} (warn)`)
            }
          }
          test(Math.round(p.stalledSeconds * 10) / 10, thresholds.stalledWarn, thresholds.stalledCrit, "stalled seconds")
          test(p.lag, thresholds.lagWarn, thresholds.lagCrit, "lag")
          test(Math.round(p.lagSeconds * 10) / 10, thresholds.lagSecondsWarn, thresholds.lagSecondsCrit, "lag seconds")
          test(p.parked, thresholds.parkedWarn, thresholds.parkedCrit, "parked")
          if (p.state === "failed") {
            level = "CRIT"
            reasons.push(`failed at ${p.failure?.position ?? "?"}: ${p.failure?.reason ?? ""}`)
          }
          return {
            name: p.name,
            level: level as Level,
            reasons,
            lag: p.lag,
            lagSeconds: p.lagSeconds,
            stalledSeconds: p.stalledSeconds,
            parked: p.parked
          }
        })
        const worst = results.reduce<Level>((w, r) => rank[r.level] > rank[w] ? r.level : w, "OK")
        return { level: worst, code: rank[worst], projections: results }
      })

    const parkedRow = (r: {
      projection: string
      position: unknown
      event_id: string
      stream_id: string
      event_type: string
      reason: string
      parked_at: unknown
    }): ParkedView => ({
      projection: r.projection,
      position: num(r.position),
      eventId: r.event_id,
      streamId: r.stream_id,
      eventType: r.event_type,
      reason: r.reason,
      parkedAt: iso(num(r.parked_at))
    })

    const parked = (
      name?: string,
      options: { readonly after?: number; readonly until?: number; readonly limit?: number } = {}
    ) =>
      Effect.gen(function*() {
        const limit = yield* limitOf(options.limit)
        if (!(yield* tableExists(K))) return { parked: [] }
        const rows = yield* sql<Parameters<typeof parkedRow>[0]>`
          SELECT projection, position, event_id, stream_id, event_type, reason, parked_at FROM ${sql(K)}
          WHERE position > ${options.after ?? 0}
          ${options.until !== undefined ? sql`AND position <= ${options.until}` : sql``}
          ${name !== undefined ? sql`AND projection = ${name}` : sql``}
          ORDER BY position, projection LIMIT ${limit + 1}`.withoutTransform
        if (rows.length <= limit) return { parked: rows.map(parkedRow) }
        // the cursor is a position: a page ends with every projection's record at its last position
        const last = num(rows[limit - 1]!.position)
        const page = rows.slice(0, limit)
        if (num(rows[limit]!.position) === last) {
          const rest = yield* sql<Parameters<typeof parkedRow>[0]>`
            SELECT projection, position, event_id, stream_id, event_type, reason, parked_at FROM ${sql(K)}
            WHERE position = ${last} AND projection > ${rows[limit - 1]!.projection}
            ${name !== undefined ? sql`AND projection = ${name}` : sql``}
            ORDER BY projection`.withoutTransform
          page.push(...rest)
        }
        return { parked: page.map(parkedRow), next: last }
      }).pipe(Effect.catchTag("SqlError", (e) => Effect.fail(storeError("operator.parked")(e))))

    const parkedEvent = (name: string, position: number) =>
      Effect.gen(function*() {
        const rows = (yield* tableExists(K))
          ? yield* sql<Parameters<typeof parkedRow>[0]>`
            SELECT projection, position, event_id, stream_id, event_type, reason, parked_at FROM ${sql(K)}
            WHERE projection = ${name} AND position = ${position}`.withoutTransform
          : []
        if (rows.length === 0) return yield* new NotFound({ what: "parked event", id: `${name}@${position}` })
        const events = yield* decode(yield* byPosition(position))
        return { parked: parkedRow(rows[0]!), event: events[0] }
      }).pipe(Effect.catchTag("SqlError", (e) => Effect.fail(storeError("operator.parked")(e))))

    const PAGE = 500

    const skip = (name: string, position: number, until?: number) =>
      Effect.gen(function*() {
        if (!(yield* tableExists(K))) return 0
        const last = until ?? position
        let deleted = 0
        let from = position - 1
        // a page at a time: bounded memory and short write transactions, whatever the range
        for (;;) {
          const page = yield* sql<{ position: unknown }>`SELECT position FROM ${sql(K)} WHERE projection = ${name}
            AND position > ${from} AND position <= ${last} ORDER BY position LIMIT ${PAGE}`.withoutTransform
          if (page.length === 0) return deleted
          const top = num(page[page.length - 1]!.position)
          const gone = yield* sql<{ position: unknown }>`DELETE FROM ${sql(K)} WHERE projection = ${name}
            AND position > ${from} AND position <= ${top} RETURNING position`.withoutTransform
          deleted += gone.length
          from = top
          if (page.length < PAGE) return deleted
        }
      }).pipe(Effect.catchTag("SqlError", (e) => Effect.fail(storeError("operator.skip")(e))))

    const retry = (name: string, position: number, until?: number) =>
      Effect.gen(function*() {
        const definition = registered.get(name)
        if (definition === undefined) {
          return yield* new Unsupported({
            reason: `projection ${JSON.stringify(name)} is not registered with this operator: retry needs its handlers ` +
              "(run the CLI from your service's code with Cli.run({ projections }), or use --url against its dashboard)"
          })
        }
        if (!(yield* tableExists(K))) return { retried: 0 }
        const last = until ?? position
        let retried = 0
        let from = position - 1
        for (;;) {
          const page = yield* sql<{ position: unknown }>`SELECT position FROM ${sql(K)} WHERE projection = ${name}
            AND position > ${from} AND position <= ${last} ORDER BY position LIMIT ${PAGE}`.withoutTransform
          for (const row of page) {
            const at = num(row.position)
            // read once, as the projection's runner reads it (the store's decoded form)
            const recorded = yield* store.readAll({ fromPosition: at - 1, pageSize: 1 }).pipe(
              Stream.take(1),
              Stream.runHead,
              Effect.mapError((e) => e._tag === "StoreError" ? e : new StoreError({ operation: "operator.retry", cause: e }))
            )
            if (Option.isSome(recorded) && recorded.value.position === at) {
              yield* handleOne(definition, recorded.value)
            }
            yield* sql`DELETE FROM ${sql(K)} WHERE projection = ${name} AND position = ${at}`.withoutTransform
            retried++
            from = at
          }
          if (page.length < PAGE) return { retried }
        }
      }).pipe(Effect.catchTag("SqlError", (e) => Effect.fail(storeError("operator.retry")(e))))

    const handleOne = (definition: Projection.Projection<any, any, any>, event: RecordedEvent) =>
      Effect.gen(function*() {
        const fail = (reason: string) =>
          new Projection.ProjectionFailed({
            projection: definition.name,
            position: event.position,
            eventId: event.eventId,
            streamId: event.streamId,
            eventType: event.type,
            reason
          })
        if (definition.batch !== undefined) {
          return yield* Effect.mapError(definition.batch([event]), (e) => fail(String(e)))
        }
        const decoded = definition.events.decode(event)
        if (Either.isLeft(decoded)) return yield* fail(String(decoded.left))
        if (definition.statements !== undefined) {
          const statement = (definition.statements as Record<string, Statements.StatementHandler | undefined>)[event.type]
          if (statement === undefined) return
          return yield* sql.withTransaction(Statements.asEffect(statement, (t) => t)(decoded.right)).pipe(
            Effect.provideService(SqlClient.SqlClient, sql),
            Effect.mapError((e) => fail(Statements.thrownReason(e)))
          )
        }
        const handler = (definition.handlers as Record<string, any>)[event.type]
        if (handler === undefined) return
        return yield* Effect.mapError(
          handler(decoded.right) as Effect.Effect<void, unknown>,
          (e) => fail(String(e))
        )
      }) as Effect.Effect<void, Projection.ProjectionFailed>

    const runsHere = (name: string) => Option.isSome(live) && live.value.names.includes(name)

    const rebuild = (name: string) =>
      Option.isSome(live) && live.value.names.includes(name)
        ? live.value.rebuild(name)
        : Stream.fail(
          new Unsupported({
            reason: `projection ${JSON.stringify(name)} does not run in this process: a rebuild runs where its ` +
              "handlers are (Cli.run({ projections }) in your service's code, or --url against its dashboard)"
          })
        )

    const doctor = Effect.gen(function*() {
      const findings: Array<Doctor["findings"][number]> = []
      if (pg) {
        const rows = yield* sql<{ setting: string }>`SELECT current_setting('synchronous_commit') AS setting`.withoutTransform
        const value = rows[0]?.setting ?? "?"
        findings.push(
          value === "off" || value === "local"
            ? {
              setting: "synchronous_commit",
              value,
              level: "CRIT",
              advice: "an acknowledged append can be lost in a crash: set synchronous_commit = on"
            }
            : { setting: "synchronous_commit", value, level: "OK", advice: "acknowledged appends are durable" }
        )
        const fsync = yield* sql<{ setting: string }>`SELECT current_setting('fsync') AS setting`.withoutTransform
        const f = fsync[0]?.setting ?? "?"
        findings.push(
          f === "off"
            ? { setting: "fsync", value: f, level: "CRIT", advice: "fsync = off risks corruption on power loss: turn it on" }
            : { setting: "fsync", value: f, level: "OK", advice: "" }
        )
      } else {
        const journal = yield* sql<{ journal_mode: string }>`PRAGMA journal_mode`.withoutTransform
        const mode = String(journal[0]?.journal_mode ?? "?")
        findings.push(
          mode.toLowerCase() === "wal"
            ? { setting: "journal_mode", value: mode, level: "OK", advice: "" }
            : {
              setting: "journal_mode",
              value: mode,
              level: "WARN",
              advice: "not WAL: readers block the writer; Sqlite.layer opens the file in WAL mode"
            }
        )
        const sync = yield* sql<{ synchronous: unknown }>`PRAGMA synchronous`.withoutTransform
        const level = num(sync[0]?.synchronous ?? -1)
        const name = ["OFF", "NORMAL", "FULL", "EXTRA"][level] ?? String(level)
        findings.push(
          level >= 2
            ? { setting: "synchronous", value: name, level: "OK", advice: "acknowledged appends survive power loss" }
            : {
              setting: "synchronous",
              value: name,
              level: level === 1 ? "WARN" : "CRIT",
              advice: level === 1
                ? "below FULL: a power loss may drop the last commits (Sqlite.layer durability \"normal\")"
                : "OFF: a crash can corrupt the database"
            }
        )
      }
      return { backend, ok: findings.every((f) => f.level === "OK"), findings }
    }).pipe(Effect.catchTag("SqlError", (e) => Effect.fail(storeError("operator.doctor")(e))))

    const EXPORT_PAGE = 5000
    // up to the head as of its start: on PostgreSQL that is what the store's readers hand out (a prefix of the log,
    // see SAFE_PG), so no event can commit below a page already read
    const exportEvents = (selection: Selection = {}) =>
      Stream.unwrap(Effect.map(head, (upTo) => exportUpTo(selection, upTo)))
    const exportUpTo = (selection: Selection, upTo: number) =>
      Stream.paginateChunkEffect(0, (from: number) =>
        sql`SELECT ${sql.literal(pg ? EXPORT_ROW_PG : EXPORT_ROW)} FROM ${sql(E)} WHERE position > ${from}
          AND position <= ${upTo}
          ${selection.streamId !== undefined ? sql`AND stream_id = ${selection.streamId}` : sql``}
          ${selection.streamType !== undefined ? sql`AND stream_type = ${selection.streamType}` : sql``}
          ORDER BY position LIMIT ${EXPORT_PAGE}`.values.pipe(
          Effect.map((rows) => {
            const lines = new Array<string>(rows.length)
            for (let i = 0; i < rows.length; i++) lines[i] = exportLine(rows[i]!)
            const next = rows.length < EXPORT_PAGE ? Option.none() : Option.some(num(rows[rows.length - 1]![0]))
            return [Chunk.unsafeFromArray(lines), next] as const
          }),
          Effect.mapError(storeError("operator.export"))
        )
      )

    const importLines = (lines: ReadonlyArray<string>, importOptions: { readonly firstLine?: number } = {}) =>
      Effect.gen(function*() {
        const rows: Array<ImportRow> = []
        const first = importOptions.firstLine ?? 1
        for (let i = 0; i < lines.length; i++) {
          const line = lines[i]!
          if (line.trim().length === 0) continue
          const parsed = parseLine(line, first + i)
          if (Either.isLeft(parsed)) return yield* parsed.left
          rows.push(parsed.right)
        }
        if (rows.length === 0) return { written: 0, skipped: 0 }
        return yield* importRows(rows)
      })

    const IMPORT_CHUNK = 400
    const importRows = (rows: ReadonlyArray<ImportRow>) =>
      sql.withTransaction(Effect.gen(function*() {
        // which are stored already: same id at the same stream and version is the same event; anything else conflicts
        const existing = new Map<string, { stream: string; version: number }>()
        for (let i = 0; i < rows.length; i += IMPORT_CHUNK) {
          const ids = rows.slice(i, i + IMPORT_CHUNK).map((r) => r.eventId)
          const found = yield* sql<{ event_id: string; stream_id: string; version: unknown }>`
            SELECT event_id, stream_id, version FROM ${sql(E)} WHERE ${sql.in("event_id", ids)}`.withoutTransform
          for (const f of found) existing.set(f.event_id, { stream: f.stream_id, version: num(f.version) })
        }
        const fresh: Array<ImportRow> = []
        let skipped = 0
        for (const r of rows) {
          const found = existing.get(r.eventId)
          if (found === undefined) {
            fresh.push(r)
          } else if (found.stream === r.streamId && found.version === r.version) {
            skipped++
          } else {
            return yield* new InvalidInput({
              field: "eventId",
              reason: `${r.eventId} is stored already at ${found.stream} version ${found.version}, ` +
                `not ${r.streamId} version ${r.version}`
            })
          }
        }
        if (fresh.length === 0) return { written: 0, skipped }
        // versions must follow each stream's last (the store's rule: gapless, 1-based)
        const streamsOf = [...new Set(fresh.map((r) => r.streamId))]
        const versions = new Map<string, number>()
        for (let i = 0; i < streamsOf.length; i += IMPORT_CHUNK) {
          const ids = streamsOf.slice(i, i + IMPORT_CHUNK)
          const found = yield* sql<{ stream_id: string; v: unknown }>`
            SELECT stream_id, max(version) AS v FROM ${sql(E)} WHERE ${sql.in("stream_id", ids)}
            GROUP BY stream_id`.withoutTransform
          for (const f of found) versions.set(f.stream_id, num(f.v))
        }
        for (const r of fresh) {
          const expected = (versions.get(r.streamId) ?? 0) + 1
          if (r.version !== expected) {
            return yield* new InvalidInput({
              field: "version",
              reason: `${r.streamId}: event ${r.eventId} has version ${r.version} where ${expected} must follow`
            })
          }
          versions.set(r.streamId, r.version)
        }
        if (pg) {
          yield* sql`SELECT pg_advisory_xact_lock(${sql.literal(String(7_349_112_002))})`.withoutTransform
        }
        for (let i = 0; i < fresh.length; i += IMPORT_CHUNK) {
          const part = fresh.slice(i, i + IMPORT_CHUNK)
          yield* (pg
            ? sql`INSERT INTO ${sql(E)} (position, event_id, stream_id, stream_type, version, event_type, schema_version,
                payload, metadata, tenant_id, recorded_at, claims, tx)
              SELECT nextval('${sql.literal(E)}_position'), u.event_id, u.stream_id, u.stream_type, u.version, u.event_type,
                u.schema_version, u.payload::json, u.metadata::json, u.tenant_id, u.recorded_at, u.claims,
                pg_current_xact_id()
              FROM unnest(${part.map((r) => r.eventId)}::text[], ${part.map((r) => r.streamId)}::text[],
                ${part.map((r) => r.streamType)}::text[], ${part.map((r) => r.version)}::bigint[],
                ${part.map((r) => r.type)}::text[], ${part.map((r) => r.schemaVersion)}::int[],
                ${part.map((r) => r.payload)}::text[], ${part.map((r) => r.metadata)}::text[],
                ${part.map((r) => r.tenantId)}::text[], ${part.map((r) => r.recordedAt)}::bigint[],
                ${part.map((r) => r.claims)}::text[])
                WITH ORDINALITY AS u(event_id, stream_id, stream_type, version, event_type, schema_version, payload,
                  metadata, tenant_id, recorded_at, claims, ord)
              ORDER BY u.ord`.withoutTransform
            : sql`INSERT INTO ${sql(E)} ${
              sql.insert(part.map((r) => ({
                event_id: r.eventId,
                stream_id: r.streamId,
                stream_type: r.streamType,
                version: r.version,
                event_type: r.type,
                schema_version: r.schemaVersion,
                payload: r.payload,
                metadata: r.metadata,
                tenant_id: r.tenantId,
                recorded_at: r.recordedAt,
                claims: r.claims
              })))
            }`.withoutTransform)
        }
        return { written: fresh.length, skipped }
      })).pipe(
        Effect.tap((result) =>
          // claims imported with the events: the table of owners is rebuilt from the log
          result.written > 0 && rows.some((r) => r.claims !== null) ? store.rebuildClaims : Effect.void
        ),
        Effect.catchTag("SqlError", (e) => Effect.fail(storeError("operator.import")(e)))
      )

    return {
      backend,
      head,
      overview,
      streams,
      stream,
      event,
      after,
      projections,
      projection,
      check: thresholdsCheck,
      parked,
      parkedEvent,
      skip,
      retry,
      rebuild,
      runsHere,
      doctor,
      exportEvents,
      importLines
    } satisfies OperatorService
  })

/**
 * The operator as a layer, over the store's layer (`Sqlite.layer`, `Postgres.layer`) and, when the service runs its
 * projections here, `Projection.layer`.
 *
 * @since 0.1.0
 */
export const layer = <R = never>(
  options: Options<R> = {}
): Layer.Layer<Operator, never, SqlClient.SqlClient | EventStore | R> => Layer.effect(Operator, make(options))
