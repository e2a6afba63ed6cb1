/**
 * The event store contract: append with an expected version, read a stream, read the global log, subscribe to it,
 * and ask a stream's version. Every backend (memory here; SQLite, PostgreSQL through `SqlEventStore`) provides the
 * same `EventStore` service and passes the same conformance suite.
 *
 * @since 0.1.0
 */
import * as Context from "effect/Context"
import type * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import type * as Option from "effect/Option"
import type * as Stream from "effect/Stream"
import type { ExpectedVersion } from "./Errors.js"
import {
  ClaimNotHeld,
  ConcurrencyError,
  DuplicateEventError,
  EventDecodeError,
  InlineProjectionError,
  InvalidInput,
  StoreError,
  UniqueConstraintViolation
} from "./Errors.js"
import type { Metadata, NewEvent, RecordedEvent } from "./Event.js"
import * as Health from "./Health.js"
import * as Memory from "./internal/memory.js"

export {
  /** @since 0.1.0 */
  ClaimNotHeld,
  /** @since 0.1.0 */
  ConcurrencyError,
  /** @since 0.1.0 */
  DuplicateEventError,
  /** @since 0.1.0 */
  EventDecodeError,
  /** @since 0.1.0 */
  type ExpectedVersion,
  /** @since 0.1.0 */
  InlineProjectionError,
  /** @since 0.1.0 */
  InvalidInput,
  /** @since 0.1.0 */
  StoreError,
  /** @since 0.1.0 */
  UniqueConstraintViolation
}

/** @since 0.1.0 */
export interface AppendOptions {
  /** Checked atomically with the write; `"any"` when omitted. */
  readonly expectedVersion?: ExpectedVersion
  /** The aggregate the stream belongs to; when omitted, the part of the stream id before its first `-`. */
  readonly streamType?: string
  /** Applied to every event of the append (an event's own metadata wins field by field). */
  readonly metadata?: Metadata
  /**
   * Makes the append idempotent: the first append with this id writes and records its result (in the same
   * transaction); while that record lasts, another append with the same id writes nothing and returns the recorded
   * result with `replayed: true` — whatever its stream, events and expected version (a stale expected version
   * included). Of concurrent appends with one id, exactly one writes. At most 256 characters, no control characters.
   */
  readonly commandId?: string
  /** How long the record of `commandId` lasts; 24 hours when omitted. After it, the id writes again. */
  readonly commandTtl?: Duration.DurationInput
}

/** @since 0.1.0 */
export interface AppendResult {
  readonly streamId: string
  /** The stream's version after the append: the version of its last event. */
  readonly version: number
  /** The global position of the append's last event. */
  readonly position: number
  readonly events: ReadonlyArray<RecordedEvent>
  /** `true` when nothing was written: the result recorded for the append's `commandId` (see `AppendOptions`). */
  readonly replayed?: boolean
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

/**
 * Errors an append can fail with. `InlineProjectionError` only where inline projections run (`Projection.layerInline`).
 *
 * @since 0.1.0
 */
export type AppendError =
  | ClaimNotHeld
  | ConcurrencyError
  | DuplicateEventError
  | InlineProjectionError
  | InvalidInput
  | StoreError
  | UniqueConstraintViolation

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
  /**
   * The position of the last event in the global log; 0 when the log is empty. Every event at or below it is
   * readable by the time `head` returns, so a reader waiting for a projection to reach it (`Projections.awaitPosition`)
   * never waits for an event that could still appear below it.
   */
  readonly head: Effect.Effect<number, StoreError>
  /**
   * The result recorded for an append made with `commandId` (with `replayed: true`), while its record lasts;
   * `None` for an id never used or whose record has expired.
   */
  readonly command: (commandId: string) => Effect.Effect<Option.Option<AppendResult>, ReadError>
  /**
   * The stream holding a unique value (see `NewEvent.claims`). Values are held per tenant (the `tenantId` of the
   * claiming event's metadata): `tenantId` names it, none for values claimed by events without one.
   */
  readonly claimOwner: (
    index: string,
    value: string,
    options?: { readonly tenantId?: string }
  ) => Effect.Effect<Option.Option<string>, InvalidInput | StoreError>
  /**
   * Rebuilds the table of unique values from the claims and releases recorded with the events, in log order, in
   * one transaction; returns how many values are held afterwards.
   */
  readonly rebuildClaims: Effect.Effect<number, StoreError>
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

/**
 * An event store in memory: for tests and prototypes. Same contract as the durable ones, nothing survives the
 * process.
 *
 * @since 0.1.0
 */
export const makeMemory: Effect.Effect<EventStoreService> = Memory.make

/**
 * The in-memory store as a layer; each build is a fresh, empty store. Registers the `eventstore` health check
 * (always healthy) when a `Health` service is in context.
 *
 * @since 0.1.0
 */
export const layerMemory: Layer.Layer<EventStore> = Layer.scoped(
  EventStore,
  Effect.tap(makeMemory, () => Health.register("eventstore", Effect.succeed(Health.healthy({ backend: "memory" }))))
)
