/**
 * The event store contract: append with an expected version, read a stream, read the global log, subscribe to it,
 * and ask a stream's version. Every backend (memory here; SQLite, PostgreSQL through `SqlEventStore`) provides the
 * same `EventStore` service and passes the same conformance suite.
 *
 * @since 0.1.0
 */
import * as Clock from "effect/Clock"
import * as Context from "effect/Context"
import type * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Either from "effect/Either"
import * as Layer from "effect/Layer"
import * as Stream from "effect/Stream"
import type { ExpectedVersion } from "./Errors.js"
import { ConcurrencyError, DuplicateEventError, EventDecodeError, InvalidInput, StoreError } from "./Errors.js"
import type { Metadata, NewEvent, RecordedEvent } from "./Event.js"
import { categoryOf, type EventRow, fromRow, prepareAppend, recorded } from "./internal/codec.js"
import { catchUp, live, Signal } from "./internal/paging.js"

export {
  /** @since 0.1.0 */
  ConcurrencyError,
  /** @since 0.1.0 */
  DuplicateEventError,
  /** @since 0.1.0 */
  EventDecodeError,
  /** @since 0.1.0 */
  type ExpectedVersion,
  /** @since 0.1.0 */
  InvalidInput,
  /** @since 0.1.0 */
  StoreError
}

/** @since 0.1.0 */
export interface AppendOptions {
  /** Checked atomically with the write; `"any"` when omitted. */
  readonly expectedVersion?: ExpectedVersion
  /** The aggregate the stream belongs to; when omitted, the part of the stream id before its first `-`. */
  readonly streamType?: string
  /** Applied to every event of the append (an event's own metadata wins field by field). */
  readonly metadata?: Metadata
}

/** @since 0.1.0 */
export interface AppendResult {
  readonly streamId: string
  /** The stream's version after the append: the version of its last event. */
  readonly version: number
  /** The global position of the append's last event. */
  readonly position: number
  readonly events: ReadonlyArray<RecordedEvent>
}

/** @since 0.1.0 */
export interface ReadOptions {
  /** First version to read, inclusive; 1 when omitted. */
  readonly from?: number
  /** Last version to read, inclusive; the end of the stream when omitted. */
  readonly to?: number
  /** `"backward"` reads from `to` down to `from`. */
  readonly direction?: "forward" | "backward"
  readonly pageSize?: number
}

/**
 * Which events of the global log to deliver. Both lists narrow the selection; an absent or empty list selects all.
 *
 * @since 0.1.0
 */
export interface Filter {
  readonly streamTypes?: ReadonlyArray<string>
  readonly eventTypes?: ReadonlyArray<string>
}

/** @since 0.1.0 */
export interface PageOptions {
  /** Events with a version greater than this; 0 (the default) starts at the beginning. */
  readonly after?: number
  /** At most this many events; default 512, at most 10000. */
  readonly limit?: number
}

/** @since 0.1.0 */
export interface ReadAllOptions {
  /**
   * Deliver events *after* this global position (exclusive), so a checkpoint — the position of the last event
   * handled — resumes without handling it twice. 0 (the default) reads from the beginning.
   */
  readonly fromPosition?: number
  readonly filter?: Filter
  readonly pageSize?: number
}

/** @since 0.1.0 */
export interface SubscribeOptions {
  /** As for `readAll` (exclusive); `"end"` delivers only events committed after the subscription starts. */
  readonly fromPosition?: number | "end"
  readonly filter?: Filter
  readonly pageSize?: number
}

/** Errors an append can fail with. @since 0.1.0 */
export type AppendError = ConcurrencyError | DuplicateEventError | InvalidInput | StoreError

/** Errors a read can fail with. @since 0.1.0 */
export type ReadError = EventDecodeError | InvalidInput | StoreError

/**
 * The operations of an event store. All streams are paged from the backend; none loads a whole stream or the log.
 *
 * @since 0.1.0
 */
export interface EventStoreService {
  /**
   * Appends events to a stream: all of them or none, with versions following the stream's current version, checked
   * against `expectedVersion` atomically with the write.
   */
  readonly append: (
    streamId: string,
    events: ReadonlyArray<NewEvent>,
    options?: AppendOptions
  ) => Effect.Effect<AppendResult, AppendError>
  /** The events of one stream, by version. */
  readonly read: (streamId: string, options?: ReadOptions) => Stream.Stream<RecordedEvent, ReadError>
  /**
   * One page of a stream, forward: what `read` is made of, as a plain Effect. Folds that load an aggregate page by
   * page use it (a `Stream` costs more than a short page does).
   */
  readonly readPage: (streamId: string, options?: PageOptions) => Effect.Effect<ReadonlyArray<RecordedEvent>, ReadError>
  /** The global log by position, up to its end as of each page; ends when caught up. */
  readonly readAll: (options?: ReadAllOptions) => Stream.Stream<RecordedEvent, ReadError>
  /** The global log by position: catches up, then stays live. Every event once, in position order. */
  readonly subscribe: (options?: SubscribeOptions) => Stream.Stream<RecordedEvent, ReadError>
  /** The stream's current version; 0 when it has no events. */
  readonly version: (streamId: string) => Effect.Effect<number, StoreError>
}

/**
 * @example
 * ```ts
 * const program = Effect.gen(function*() {
 *   const store = yield* EventStore.EventStore
 *   yield* store.append("Account-1", [{ type: "Opened", payload: { owner: "ada" } }], { expectedVersion: "no-stream" })
 * })
 * ```
 *
 * @since 0.1.0
 */
export class EventStore extends Context.Tag("effect-eventstore/EventStore")<EventStore, EventStoreService>() {}

/** @internal */
export const defaults = { pageSize: 512 } as const

/** @internal validates read options shared by every backend */
export const checkPage = (pageSize: number | undefined): Effect.Effect<number, InvalidInput> =>
  pageSize === undefined
    ? Effect.succeed(defaults.pageSize)
    : Number.isSafeInteger(pageSize) && pageSize > 0 && pageSize <= 10_000
    ? Effect.succeed(pageSize)
    : Effect.fail(new InvalidInput({ field: "pageSize", reason: "must be an integer from 1 to 10000" }))

/** @internal */
export const checkPageOptions = (options: PageOptions | undefined) => {
  const after = options?.after ?? 0
  if (!Number.isSafeInteger(after) || after < 0) {
    return Effect.fail(new InvalidInput({ field: "after", reason: "must be a non-negative integer" }))
  }
  return Effect.map(checkPage(options?.limit), (limit) => ({ after, limit }))
}

/** @internal decodes a page of rows: all of them, or the first failure */
export const decodeRows = (rows: ReadonlyArray<EventRow>): Effect.Effect<Array<RecordedEvent>, EventDecodeError> => {
  const out: Array<RecordedEvent> = new Array(rows.length)
  for (let i = 0; i < rows.length; i++) {
    const decoded = fromRow(rows[i]!)
    if (Either.isLeft(decoded)) return Effect.fail(decoded.left)
    out[i] = decoded.right
  }
  return Effect.succeed(out)
}

/** @internal */
export const checkPosition = (position: unknown): Effect.Effect<number, InvalidInput> =>
  typeof position === "number" && Number.isSafeInteger(position) && position >= 0
    ? Effect.succeed(position)
    : Effect.fail(new InvalidInput({ field: "fromPosition", reason: "must be a non-negative integer" }))

/** @internal */
export const checkRange = (options: ReadOptions | undefined) => {
  const from = options?.from ?? 1
  const to = options?.to ?? Number.MAX_SAFE_INTEGER
  if (!Number.isSafeInteger(from) || from < 1) {
    return Effect.fail(new InvalidInput({ field: "from", reason: "must be a positive integer" }))
  }
  if (!Number.isSafeInteger(to) || to < 0) {
    return Effect.fail(new InvalidInput({ field: "to", reason: "must be a non-negative integer" }))
  }
  return Effect.succeed({ from, to, backward: options?.direction === "backward" })
}

/** @internal */
export const appendSpan = (streamId: string, streamType: string | undefined, count: number) => ({
  captureStackTrace: false,
  attributes: {
    "aggregate.id": streamId,
    "aggregate.type": streamType ?? categoryOf(streamId),
    "event.count": count
  }
})

/** @internal */
export const nonEmpty = (list: ReadonlyArray<string> | undefined) =>
  list !== undefined && list.length > 0 ? list : undefined

/**
 * @internal What a backend provides. The reading side of the contract (validation, paging, decoding, spans,
 * subscriptions) is built from it once, the same for every backend.
 */
export interface Backend {
  readonly append: EventStoreService["append"]
  readonly version: EventStoreService["version"]
  /**
   * Rows of one stream: forward, versions after `cursor` up to `to`; backward, versions before `cursor` down to
   * `from`; at most `limit`, in the direction's order.
   */
  readonly streamRows: (
    streamId: string,
    range: {
      readonly backward: boolean
      readonly cursor: number
      readonly from: number
      readonly to: number
      readonly limit: number
    }
  ) => Effect.Effect<ReadonlyArray<EventRow>, StoreError>
  /** Rows of the global log after a position, selected by `filter`, at most `limit`, by position. */
  readonly logRows: (
    filter: Filter | undefined,
    operation: string
  ) => (after: number, limit: number) => Effect.Effect<ReadonlyArray<EventRow>, StoreError>
  /** The position of the last event in the log; 0 when empty. */
  readonly head: Effect.Effect<number, StoreError>
  /** Woken after each commit made through this store. */
  readonly signal: Signal
  /** How often a caught-up subscription polls for other processes' commits; `undefined`: never. */
  readonly pollInterval: Duration.Duration | undefined
}

const streamSpan = (streamId: string) =>
  ({ captureStackTrace: false, attributes: { "aggregate.id": streamId } }) as const

/** @internal */
export const fromBackend = (backend: Backend): EventStoreService => {
  const read: EventStoreService["read"] = (streamId, options) =>
    Stream.unwrap(Effect.gen(function*() {
      const { backward, from, to } = yield* checkRange(options)
      const pageSize = yield* checkPage(options?.pageSize)
      return catchUp({
        start: backward ? to + 1 : from - 1,
        pageSize,
        cursorOf: (row) => row.version,
        fetch: (cursor, limit) => backend.streamRows(streamId, { backward, cursor, from, to, limit })
      })
    })).pipe(Stream.withSpan("EventStore.read", streamSpan(streamId)))

  const readPage: EventStoreService["readPage"] = (streamId, options) =>
    Effect.flatMap(checkPageOptions(options), ({ after, limit }) =>
      Effect.flatMap(
        backend.streamRows(streamId, { backward: false, cursor: after, from: 1, to: Number.MAX_SAFE_INTEGER, limit }),
        decodeRows
      )).pipe(Effect.withSpan("EventStore.readPage", streamSpan(streamId)))

  const readAll: EventStoreService["readAll"] = (options) =>
    Stream.unwrap(Effect.gen(function*() {
      const start = yield* checkPosition(options?.fromPosition ?? 0)
      const pageSize = yield* checkPage(options?.pageSize)
      return catchUp({ start, pageSize, fetch: backend.logRows(options?.filter, "readAll"), cursorOf: (row) => row.position })
    })).pipe(Stream.withSpan("EventStore.readAll", { captureStackTrace: false }))

  const subscribe: EventStoreService["subscribe"] = (options) =>
    Stream.unwrap(Effect.gen(function*() {
      const from = options?.fromPosition ?? 0
      const start = from === "end" ? backend.head : Effect.succeed(yield* checkPosition(from))
      const pageSize = yield* checkPage(options?.pageSize)
      return live({
        start,
        pageSize,
        fetch: backend.logRows(options?.filter, "subscribe"),
        signal: backend.signal,
        pollInterval: backend.pollInterval
      })
    })).pipe(Stream.withSpan("EventStore.subscribe", { captureStackTrace: false }))

  const version: EventStoreService["version"] = (streamId) =>
    backend.version(streamId).pipe(Effect.withSpan("EventStore.version", streamSpan(streamId)))

  return EventStore.of({ append: backend.append, read, readPage, readAll, subscribe, version })
}

/**
 * An event store in memory: for tests and prototypes. Same contract as the durable ones, nothing survives the
 * process.
 *
 * @since 0.1.0
 */
export const makeMemory: Effect.Effect<EventStoreService> = Effect.gen(function*() {
  const log: Array<EventRow> = []
  const streams = new Map<string, Array<EventRow>>()
  const eventIds = new Set<string>()
  const signal = new Signal()

  const append: EventStoreService["append"] = (streamId, events, options) =>
    Effect.flatMap(Clock.currentTimeMillis, (now) =>
      Effect.flatMap(prepareAppend(streamId, events, options, now), (prepared) =>
        Effect.suspend((): Effect.Effect<AppendResult, ConcurrencyError | DuplicateEventError> => {
          const stream = streams.get(streamId)
          const actual = stream?.length ?? 0
          const expected = prepared.expected
          const ok = expected === "any" ||
            (expected === "no-stream" ? actual === 0 : expected === "stream-exists" ? actual > 0 : actual === expected)
          if (!ok) return Effect.fail(new ConcurrencyError({ streamId, expected, actual }))
          for (const event of prepared.events) {
            if (eventIds.has(event.eventId)) {
              return Effect.fail(new DuplicateEventError({ streamId, eventId: event.eventId }))
            }
          }
          const rows = stream ?? []
          const positions: Array<number> = []
          for (const event of prepared.events) {
            const row: EventRow = {
              position: log.length + 1,
              event_id: event.eventId,
              stream_id: streamId,
              stream_type: prepared.streamType,
              version: rows.length + 1,
              event_type: event.type,
              schema_version: event.schemaVersion,
              payload: event.payloadJson,
              metadata: event.metadataJson,
              recorded_at: prepared.recordedAt
            }
            log.push(row)
            rows.push(row)
            eventIds.add(event.eventId)
            positions.push(row.position)
          }
          if (stream === undefined) streams.set(streamId, rows)
          signal.notify()
          return Effect.succeed({
            streamId,
            version: rows.length,
            position: positions[positions.length - 1]!,
            events: recorded(prepared, positions, actual + 1)
          })
        })).pipe(Effect.withSpan("EventStore.append", appendSpan(streamId, options?.streamType, events.length))))

  const streamRows: Backend["streamRows"] = (streamId, { backward, cursor, from, limit, to }) =>
    Effect.sync(() => {
      const rows = streams.get(streamId) ?? []
      if (backward) {
        const end = Math.min(cursor - 1, rows.length) // highest version wanted
        const start = Math.max(from, end - limit + 1)
        return end < start ? [] : rows.slice(start - 1, end).reverse()
      }
      return rows.slice(cursor, Math.min(cursor + limit, to))
    })

  const logRows: Backend["logRows"] = (filter) => {
    const types = nonEmpty(filter?.streamTypes)
    const eventTypes = nonEmpty(filter?.eventTypes)
    const typeSet = types && new Set(types)
    const eventSet = eventTypes && new Set(eventTypes)
    return (after, limit) =>
      Effect.sync(() => {
        const out: Array<EventRow> = []
        for (let i = after; i < log.length && out.length < limit; i++) {
          const row = log[i]!
          if (typeSet && !typeSet.has(row.stream_type)) continue
          if (eventSet && !eventSet.has(row.event_type)) continue
          out.push(row)
        }
        return out
      })
  }

  return fromBackend({
    append,
    version: (streamId) => Effect.sync(() => streams.get(streamId)?.length ?? 0),
    streamRows,
    logRows,
    head: Effect.sync(() => log.length),
    signal,
    pollInterval: undefined
  })
})

/**
 * The in-memory store as a layer; each build is a fresh, empty store.
 *
 * @since 0.1.0
 */
export const layerMemory: Layer.Layer<EventStore> = Layer.effect(EventStore, makeMemory)
