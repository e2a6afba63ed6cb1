/**
 * The storage seam: what a backend (memory, SQL) implements — an append, a version query, pages of stored rows, a
 * commit signal — and `fromBackend`, which builds the whole reading side of the `EventStore` contract from it
 * once (validation, paging, total decoding, spans, subscriptions), the same for every backend. Not public API:
 * users see only `EventStore`.
 */
import * as Clock from "effect/Clock"
import type * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import type * as Exit from "effect/Exit"
import * as Either from "effect/Either"
import * as Option from "effect/Option"
import * as Stream from "effect/Stream"
import { instrumentBackend } from "./instruments.js"
import type {
  ClaimNotHeld,
  ConcurrencyError,
  DuplicateEventError,
  EventDecodeError,
  InlineProjectionError,
  StoreError,
  UniqueConstraintViolation
} from "../Errors.js"
import { InvalidInput, StoreError as StoreErrorClass } from "../Errors.js"
import type { NewEvent, RecordedEvent } from "../Event.js"
import type {
  AppendError,
  AppendOptions,
  AppendResult,
  EventStoreService,
  Filter,
  PageOptions,
  ReadError,
  ReadOptions
} from "../EventStore.js"
import {
  categoryOf,
  checkId,
  type FoldRow,
  fromStored,
  limits,
  outOfSequence,
  type StoredEvent,
  TENANT_PATTERN,
  tenantKey,
  userStreamId
} from "./codec.js"
import type { Replayed } from "./guards.js"
import { catchUp, live, type Signal } from "./paging.js"
import type { InlineHook } from "./sqlWrite.js"
import * as Tracing from "./tracing.js"

const positionOf = (row: RecordedEvent) => row.position
const versionOf = (row: RecordedEvent) => row.version

export const defaults = { pageSize: 512 } as const

/** Validates read options shared by every backend. */
export const checkPage = (pageSize: number | undefined): Effect.Effect<number, InvalidInput> =>
  pageSize === undefined
    ? Effect.succeed(defaults.pageSize)
    : Number.isSafeInteger(pageSize) && pageSize > 0 && pageSize <= 10_000
    ? Effect.succeed(pageSize)
    : Effect.fail(new InvalidInput({ field: "pageSize", reason: "must be an integer from 1 to 10000" }))

export const checkPageOptions = (options: PageOptions | undefined) => {
  const after = options?.after ?? 0
  if (!Number.isSafeInteger(after) || after < 0) {
    return Effect.fail(new InvalidInput({ field: "after", reason: "must be a non-negative integer" }))
  }
  return Effect.map(checkPage(options?.limit), (limit) => ({ after, limit }))
}

/**
 * @internal decodes a page of one stream's rows after version `after`: all of them, or the first failure (a row
 * that does not decode, or whose version does not follow the one before it)
 */
export const decodeRows = (
  rows: ReadonlyArray<StoredEvent>,
  after: number
): Effect.Effect<Array<RecordedEvent>, EventDecodeError> => {
  const out: Array<RecordedEvent> = new Array(rows.length)
  for (let i = 0; i < rows.length; i++) {
    const decoded = fromStored(rows[i]!)
    if (Either.isLeft(decoded)) return Effect.fail(decoded.left)
    if (decoded.right.version !== after + i + 1) return Effect.fail(outOfSequence(decoded.right, after + i + 1))
    out[i] = decoded.right
  }
  return Effect.succeed(out)
}

export const checkPosition = (position: unknown): Effect.Effect<number, InvalidInput> =>
  typeof position === "number" && Number.isSafeInteger(position) && position >= 0
    ? Effect.succeed(position)
    : Effect.fail(new InvalidInput({ field: "fromPosition", reason: "must be a non-negative integer" }))

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

export const appendSpan = (streamId: string, streamType: string | undefined, count: number) => ({
  captureStackTrace: false,
  attributes: {
    "aggregate.id": streamId,
    "aggregate.type": streamType ?? categoryOf(streamId),
    "event.count": count
  }
})

export const nonEmpty = (list: ReadonlyArray<string> | undefined) =>
  list !== undefined && list.length > 0 ? list : undefined

/**
 * What a backend provides. The reading side of the contract (validation, paging, decoding, spans,
 * subscriptions) is built from it once, the same for every backend.
 */
export interface Backend {
  /**
   * Fails with `Replayed` when the append's command id has a live record (nothing written): `fromBackend` answers
   * with the recorded result then.
   */
  readonly append: (
    streamId: string,
    events: ReadonlyArray<NewEvent>,
    options?: AppendOptions,
    /** The tenant whose stream it is (see `fromBackend`); `prepareAppend` makes its key. */
    tenant?: string
  ) => Effect.Effect<AppendResult, AppendError | Replayed>
  /**
   * `true`: `append` records its own latency and events appended (`Instruments.recordAppend`), where that is cheaper
   * than a wrapper (SQLite's writer, which has the start and the outcome at hand).
   */
  readonly appendInstrumented?: true
  /** The live record of a command id at `now`. */
  readonly command: (commandId: string, now: number) => Effect.Effect<Option.Option<CommandRecord>, StoreError>
  /** The stream holding a unique value. */
  readonly claimOwner: (tenantId: string, index: string, value: string) => Effect.Effect<Option.Option<string>, StoreError>
  /** Rebuilds the unique values from the log in one transaction; how many are held after. */
  readonly rebuildClaims: Effect.Effect<number, StoreError>
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
  ) => Effect.Effect<ReadonlyArray<StoredEvent>, StoreError>
  /** Rows of the global log after a position, selected by `filter`, at most `limit`, by position. */
  readonly logRows: (
    filter: Filter | undefined,
    operation: string,
    /** Only this tenant's rows; every row when absent. */
    tenant?: string
  ) => (after: number, limit: number) => Effect.Effect<ReadonlyArray<StoredEvent>, StoreError>
  /** The position of the last event in the log; 0 when empty. */
  readonly head: Effect.Effect<number, StoreError>
  /** Woken after each commit made through this store. */
  readonly signal: Signal
  /** How often a caught-up subscription polls for other processes' commits; `undefined`: never. */
  readonly pollInterval: Duration.Duration | undefined
  /** The lean read of the aggregate handler's fold (see `FoldRows`). */
  readonly foldRows: FoldRows
  /** Whole commands in one synchronous transaction, where the driver can (see `SyncCommands`). */
  readonly syncCommands?: SyncCommands | undefined
}

/**
 * Rows of one stream after version `after` (at most `limit`, by version) with only the columns a fold reads (see
 * `FoldRow`; `recordedAt` too when asked). The aggregate handler folds through it instead of `readPage` when the
 * store it was given has it: no `RecordedEvent`s, ids or metadata built for events that are only folded. Rows are
 * still checked one by one (`readFoldRow`); where anything is off, the fold goes on through `readPage`, which names
 * a bad row. A backend that transforms what it reads (decryption, say) must do it here too.
 */
export type FoldRows = (
  streamId: string,
  after: number,
  limit: number,
  withRecordedAt: boolean
) => Effect.Effect<ReadonlyArray<FoldRow>, StoreError>

/** What a command id's record says: the append's stream, its first and last version, its last position. */
export interface CommandRecord {
  readonly streamId: string
  readonly firstVersion: number
  readonly lastVersion: number
  readonly position: number
}

/** What a command does inside a synchronous write transaction (see `SyncCommands`). */
export interface CommandTransaction {
  /** `FoldRows`, synchronously, inside the transaction. */
  readonly foldRows: (
    streamId: string,
    after: number,
    limit: number,
    withRecordedAt: boolean
  ) => ReadonlyArray<FoldRow>
  /**
   * Validates and writes an append inside the transaction, recorded at `now`; a conflict, a duplicate id or invalid
   * input writes nothing of it.
   */
  readonly append: (
    streamId: string,
    events: ReadonlyArray<NewEvent>,
    options: AppendOptions,
    now: number
  ) => Exit.Exit<
    AppendResult,
    ClaimNotHeld | ConcurrencyError | DuplicateEventError | InlineProjectionError | InvalidInput | UniqueConstraintViolation
  >
  /** The global log after a position (at most `limit` rows, by position), inside the transaction. */
  readonly logRows: (after: number, limit: number) => ReadonlyArray<StoredEvent>
  /**
   * Runs one statement inside the transaction (a projection's writes) and returns how many rows it changed; throws
   * the driver's error as it is.
   */
  readonly run: (sql: string, params: ReadonlyArray<unknown>) => number
}

/** A driver failure inside a command transaction (the transaction was rolled back). */
export class DriverFailure {
  constructor(readonly cause: StoreError) {}
}

/**
 * A whole command in one synchronous write transaction (SQLite's writer connection): the stream read, the
 * decision and the append between one `BEGIN IMMEDIATE` and its `COMMIT`, as raw driver code would do it — one
 * transaction instead of a read transaction and then a write. `run` returns `undefined` without calling `body`
 * when it cannot now (the writer is busy with other appenders, whose group commit serves them better; another
 * process holds the lock); `body` says whether to commit. A driver failure rolls back and is thrown as a
 * `DriverFailure`; anything else `body` throws rolls back and is rethrown.
 */
export interface SyncCommands {
  /**
   * `fiberId`: the command's fiber (counted for group-commit contention); `undefined` for background work, which
   * runs whenever nothing is being written or queued.
   */
  readonly run: <A>(
    fiberId: number | undefined,
    body: (tx: CommandTransaction) => { readonly commit: boolean; readonly value: A },
    /**
     * Runs even while appends are queued (background work that has waited long enough): safe, since a group is
     * written in one synchronous call and cannot be interleaved; it only waits for this transaction.
     */
    force?: boolean
  ) => { readonly value: A } | undefined
}

/** How many rows a fold reads at a time (the SQL store prepares its fold statements for it). */
export const FOLD_PAGE = 512

const foldRowsKey = Symbol.for("effect-eventstore/foldRows")
const syncCommandsKey = Symbol.for("effect-eventstore/syncCommands")
const databaseKey = Symbol.for("effect-eventstore/database")
const commitsKey = Symbol.for("effect-eventstore/commits")
const inlineKey = Symbol.for("effect-eventstore/inline")

/** Where a store runs inline projections (SQLite's writer connection). */
export interface InlineProjections {
  /** Runs `hook` in every append's transaction from now on; returns its removal. */
  readonly add: (hook: InlineHook) => () => void
  /**
   * One catch-up step of `hook`, in a write transaction of its own: how many events it handled (0: none were left);
   * `undefined` when the writer is busy now. Throws a `DriverFailure`, or what the hook throws.
   */
  readonly catchUp: (hook: InlineHook, limit: number, now: number) => number | undefined
}

/** Marks a store as running inline projections through `inline`. */
export const withInline = (store: EventStoreService, inline: InlineProjections): EventStoreService => {
  Object.defineProperty(store, inlineKey, { value: inline, enumerable: false })
  return store
}

/** The inline projections of a store, where it has them. */
export const inlineOf = (store: EventStoreService): InlineProjections | undefined =>
  (store as { readonly [inlineKey]?: InlineProjections })[inlineKey]

/** How a reader in this process learns of new commits: the store's signal, and the poll for other processes'. */
export interface Commits {
  readonly signal: Signal
  readonly pollInterval: Duration.Duration | undefined
}

const headNowKey = Symbol.for("effect-eventstore/headNow")

/**
 * Marks a store whose `head` may wait (PostgreSQL's read-your-writes) with a `head` that answers at once: what the
 * projection runner measures its lag with.
 */
export const withHeadNow = (store: EventStoreService, head: EventStoreService["head"]): EventStoreService => {
  Object.defineProperty(store, headNowKey, { value: head, enumerable: false })
  return store
}

/** The `head` of a store that answers at once. */
export const headNowOf = (store: EventStoreService): EventStoreService["head"] =>
  (store as { readonly [headNowKey]?: EventStoreService["head"] })[headNowKey] ?? store.head

/** The commit signal of a store built by `fromBackend`. */
export const commitsOf = (store: EventStoreService): Commits | undefined =>
  (store as { readonly [commitsKey]?: Commits })[commitsKey]

/**
 * Marks a service (a store, a checkpoint store) as keeping its data in the database `client` reaches, so that two
 * services can tell they share one (their writes may then share a transaction). Not enumerable: a copy of the
 * service does not carry it.
 */
export const onDatabase = <A extends object>(service: A, client: object): A => {
  Object.defineProperty(service, databaseKey, { value: client, enumerable: false })
  return service
}

/** The database a service was marked with by `onDatabase`. */
export const databaseOf = (service: object): object | undefined =>
  (service as { readonly [databaseKey]?: object })[databaseKey]

/** The synchronous command transactions of a store built by `fromBackend` on a backend that has them. */
export const syncCommandsOf = (store: EventStoreService): SyncCommands | undefined =>
  (store as { readonly [syncCommandsKey]?: SyncCommands })[syncCommandsKey]

/**
 * The lean fold read of a store built by `fromBackend`; `undefined` for any other `EventStoreService` (a user's own,
 * or a wrapper: it is not enumerable, so a spread copy does not carry it past an overridden `readPage`).
 */
export const foldRowsOf = (store: EventStoreService): FoldRows | undefined =>
  (store as { readonly [foldRowsKey]?: FoldRows })[foldRowsKey]

const streamSpan = (streamId: string) =>
  ({ captureStackTrace: false, attributes: { "aggregate.id": streamId } }) as const

const tenantsKey = Symbol.for("effect-eventstore/tenants")
const tenantMark = Symbol.for("effect-eventstore/tenant")

/** Marks a service (a store, a snapshot or checkpoint store) as one tenant's. Not enumerable: a copy does not carry it. */
export const markTenant = <A extends object>(service: A, tenant: string): A => {
  Object.defineProperty(service, tenantMark, { value: tenant, enumerable: false })
  return service
}

/** The tenant a service is marked with; `undefined` for a service of the whole database (or any other). */
export const tenantOf = (service: object): string | undefined =>
  (service as { readonly [tenantMark]?: string })[tenantMark]

/**
 * The store of one tenant on the same backend (see `fromBackend`), for a store of the whole database built on the
 * seam; `undefined` for any other store (a tenant's own, a wrapper, a user's). Marks carried over: the database.
 */
export const tenantStoreOf = (store: EventStoreService, tenant: string): EventStoreService | undefined => {
  const make = (store as { readonly [tenantsKey]?: (tenant: string) => EventStoreService })[tenantsKey]
  if (make === undefined) return undefined
  const scoped = make(tenant)
  const database = databaseOf(store)
  if (database !== undefined) onDatabase(scoped, database)
  const headNow = (store as { readonly [headNowKey]?: EventStoreService["head"] })[headNowKey]
  if (headNow !== undefined) withHeadNow(scoped, headNow)
  return scoped
}

/**
 * Marks `wrapper`, a decorator of `inner` that changes payloads on their way in and out (`Privacy`), with what readers
 * learn of `inner` that payloads do not matter to: its database, commit signal, tenant, a `head` that answers at once;
 * and, through `tenants`, how to make a tenant's store (the wrapper's own over `inner`'s). Not the lean fold, the
 * synchronous commands nor the inline projections: they read stored rows past the wrapper.
 */
export const carryMarks = (
  inner: EventStoreService,
  wrapper: EventStoreService,
  tenants: ((inner: EventStoreService, tenant: string) => EventStoreService) | undefined
): EventStoreService => {
  const database = databaseOf(inner)
  if (database !== undefined) onDatabase(wrapper, database)
  const headNow = (inner as { readonly [headNowKey]?: EventStoreService["head"] })[headNowKey]
  if (headNow !== undefined) withHeadNow(wrapper, headNow)
  const commits = commitsOf(inner)
  if (commits !== undefined) Object.defineProperty(wrapper, commitsKey, { value: commits, enumerable: false })
  const tenant = tenantOf(inner)
  if (tenant !== undefined) markTenant(wrapper, tenant)
  const make = (inner as { readonly [tenantsKey]?: (tenant: string) => EventStoreService })[tenantsKey]
  if (make !== undefined && tenants !== undefined) {
    Object.defineProperty(wrapper, tenantsKey, {
      value: (t: string) => tenants(tenantStoreOf(inner, t)!, t),
      enumerable: false
    })
  }
  return wrapper
}

const forgetHooksKey = Symbol.for("effect-eventstore/forgetHooks")

/** Where in-process copies of streams' states (the handlers' state caches) are told to drop streams. */
export interface ForgetHooks {
  /** Adds `hook` (called with the stream ids to drop); returns its removal. */
  readonly add: (hook: (streamIds: ReadonlyArray<string>) => void) => () => void
}

/** Marks a store whose streams' states may have to be dropped from caches (`Privacy.forget`). */
export const withForgetHooks = (store: EventStoreService, hooks: ForgetHooks): EventStoreService => {
  Object.defineProperty(store, forgetHooksKey, { value: hooks, enumerable: false })
  return store
}

/** The forget hooks of a store, where it has them. */
export const forgetHooksOf = (store: EventStoreService): ForgetHooks | undefined =>
  (store as { readonly [forgetHooksKey]?: ForgetHooks })[forgetHooksKey]

/** The stream ids in an append's error as the caller named them (a tenant's store works with keys). */
const stripKeys = <E>(error: E): E => {
  if (typeof error !== "object" || error === null || !("streamId" in error)) return error
  const e = error as E & { readonly streamId: string; readonly owner?: string }
  const streamId = userStreamId(e.streamId)
  const owner = e.owner === undefined ? undefined : userStreamId(e.owner)
  if (streamId === e.streamId && owner === e.owner) return error
  const Class = (error as { constructor: new(fields: object) => E }).constructor
  const { _tag: _, ...fields } = e as unknown as Record<string, unknown>
  return new Class({ ...fields, streamId, ...(owner === undefined ? {} : { owner }) })
}

/** A command id's record vanished between a `Replayed` and its read, three times over. */
const lostRecord = (error: Replayed) =>
  new StoreErrorClass({
    operation: "append",
    cause: `the record of command ${JSON.stringify(error.commandId)} kept expiring while it was read`
  })

/**
 * Builds the `EventStore` contract on a backend. With `tenant`, the store of one tenant in a shared database: its
 * streams are stored under `tenantKey(tenant, streamId)` (another tenant's stream has another key, so it is never
 * read, written or conflicted with), its appends stamp the tenant on every event (and refuse another), and its
 * global reads deliver only rows of its tenant. Without, the store of the whole database: its streams are those
 * without a tenant, and its global reads deliver every tenant's events.
 */
export const fromBackend = (uninstrumented: Backend, tenant?: string): EventStoreService => {
  const backend = instrumentBackend(uninstrumented)
  const keyOf = tenant === undefined ? (streamId: string) => streamId : (streamId: string) => tenantKey(tenant, streamId)
  const read: EventStoreService["read"] = (streamId, options) =>
    Stream.unwrap(Effect.gen(function*() {
      const { backward, from, to } = yield* checkRange(options)
      const pageSize = yield* checkPage(options?.pageSize)
      return catchUp({
        start: backward ? to + 1 : from - 1,
        pageSize,
        cursorOf: versionOf,
        step: backward ? -1 : 1,
        fetch: (cursor, limit) => backend.streamRows(keyOf(streamId), { backward, cursor, from, to, limit })
      })
    })).pipe(Stream.withSpan("EventStore.read", streamSpan(streamId)))

  const readPage: EventStoreService["readPage"] = (streamId, options) =>
    Effect.flatMap(checkPageOptions(options), ({ after, limit }) =>
      Effect.flatMap(
        backend.streamRows(keyOf(streamId), { backward: false, cursor: after, from: 1, to: Number.MAX_SAFE_INTEGER, limit }),
        (rows) => decodeRows(rows, after)
      )).pipe((effect) => Tracing.withSpan(effect, "EventStore.readPage", () => streamSpan(streamId)))

  const readAll: EventStoreService["readAll"] = (options) =>
    Stream.unwrap(Effect.gen(function*() {
      const start = yield* checkPosition(options?.fromPosition ?? 0)
      const pageSize = yield* checkPage(options?.pageSize)
      return catchUp({ start, pageSize, fetch: backend.logRows(options?.filter, "readAll", tenant), cursorOf: positionOf })
    })).pipe(Stream.withSpan("EventStore.readAll", { captureStackTrace: false }))

  const subscribe: EventStoreService["subscribe"] = (options) =>
    Stream.unwrap(Effect.gen(function*() {
      const from = options?.fromPosition ?? 0
      const start = from === "end" ? backend.head : Effect.succeed(yield* checkPosition(from))
      const pageSize = yield* checkPage(options?.pageSize)
      return live({
        start,
        pageSize,
        fetch: backend.logRows(options?.filter, "subscribe", tenant),
        signal: backend.signal,
        pollInterval: backend.pollInterval
      })
    })).pipe(Stream.withSpan("EventStore.subscribe", { captureStackTrace: false }))

  const version: EventStoreService["version"] = (streamId) =>
    Tracing.withSpan(backend.version(keyOf(streamId)), "EventStore.version", () => streamSpan(streamId))

  const head = Tracing.withSpan(backend.head, "EventStore.head", () => ({ captureStackTrace: false }))

  /** The recorded result of a command id, its events read back (page by page: an append may be large). */
  const command: EventStoreService["command"] = (commandId) =>
    Effect.suspend(() => {
      const bad = checkId("commandId", commandId, limits.idLength)
      if (bad) return Effect.fail(bad)
      return Effect.flatMap(Clock.currentTimeMillis, (now) =>
        Effect.flatMap(backend.command(keyOf(commandId), now), Option.match({
          onNone: () => Effect.succeedNone,
          onSome: (record) => Effect.map(recordedEvents(record), (events) =>
            Option.some<AppendResult>({
              streamId: userStreamId(record.streamId),
              version: record.lastVersion,
              position: record.position,
              events,
              replayed: true
            }))
        })))
    }).pipe((effect) => Tracing.withSpan(effect, "EventStore.command", () => ({ captureStackTrace: false })))

  const recordedEvents = (record: CommandRecord): Effect.Effect<Array<RecordedEvent>, ReadError> => {
    const out: Array<RecordedEvent> = []
    const page = (after: number): Effect.Effect<Array<RecordedEvent>, ReadError> =>
      after >= record.lastVersion ? Effect.succeed(out) : Effect.flatMap(
        backend.streamRows(record.streamId, {
          backward: false,
          cursor: after,
          from: 1,
          to: record.lastVersion,
          limit: Math.min(defaults.pageSize, record.lastVersion - after)
        }),
        (rows) =>
          rows.length === 0
            ? Effect.succeed(out)
            : Effect.flatMap(decodeRows(rows, after), (events) => {
              for (const e of events) out.push(e)
              return page(after + events.length)
            })
      )
    return page(record.firstVersion - 1)
  }

  /**
   * An append with a command id whose write failed: a live record of the id (written by this append's own first
   * attempt elsewhere, or a concurrent one) turns the failure into the recorded result. A `Replayed` whose record
   * has expired since goes again (a few times at most).
   */
  const plain = tenant === undefined
    ? backend.append
    : (streamId: string, events: ReadonlyArray<NewEvent>, options: AppendOptions | undefined) =>
      Effect.mapBoth(backend.append(streamId, events, options, tenant), {
        onFailure: stripKeys,
        onSuccess: (result) => ({ ...result, streamId: userStreamId(result.streamId) })
      })
  const withCommand = (
    streamId: string,
    events: ReadonlyArray<NewEvent>,
    options: AppendOptions,
    commandId: string
  ) => {
    const attempt = (n: number): Effect.Effect<AppendResult, AppendError> =>
      Effect.catchAll(plain(streamId, events, options), (error): Effect.Effect<AppendResult, AppendError> => {
        if (error._tag === "InvalidInput" || error._tag === "StoreError" || error._tag === "InlineProjectionError") {
          return Effect.fail(error)
        }
        const recorded = Effect.catchTag(
          command(commandId),
          "EventDecodeError",
          (cause) => Effect.fail(new StoreErrorClass({ operation: "append", cause }))
        )
        return Effect.flatMap(recorded, Option.match({
          onSome: Effect.succeed,
          onNone: () => error._tag === "Replayed" ? (n < 3 ? attempt(n + 1) : Effect.fail(lostRecord(error))) : Effect.fail(error)
        }))
      })
    return attempt(1)
  }
  // the plain road allocates nothing for command ids
  const append: EventStoreService["append"] = (streamId, events, options) =>
    options?.commandId === undefined
      ? plain(streamId, events, options) as Effect.Effect<AppendResult, AppendError>
      : withCommand(streamId, events, options, options.commandId)

  const claimOwner: EventStoreService["claimOwner"] = (index, value, options) =>
    Effect.suspend((): Effect.Effect<Option.Option<string>, InvalidInput | StoreError> => {
      const bad = checkId("index", index, limits.idLength) ??
        (typeof value === "string" && value.length > 0 && value.length <= limits.claimValueLength
          ? undefined
          : new InvalidInput({ field: "value", reason: `must be a non-empty string of at most ${limits.claimValueLength} characters` })) ??
        (options?.tenantId === undefined || (typeof options.tenantId === "string" && TENANT_PATTERN.test(options.tenantId))
          ? undefined
          : new InvalidInput({ field: "tenantId", reason: "is not a tenant id (see Tenancy)" })) ??
        (tenant !== undefined && options?.tenantId !== undefined && options.tenantId !== tenant
          ? new InvalidInput({ field: "tenantId", reason: `is not this store's tenant ${JSON.stringify(tenant)}` })
          : undefined)
      if (bad) return Effect.fail(bad)
      return Effect.map(
        backend.claimOwner(tenant ?? options?.tenantId ?? "", index, value),
        Option.map(userStreamId)
      )
    })

  const service: EventStoreService = {
    append,
    read,
    readPage,
    readAll,
    subscribe,
    version,
    head,
    command,
    claimOwner,
    rebuildClaims: backend.rebuildClaims
  }
  Object.defineProperty(service, foldRowsKey, {
    value: tenant === undefined
      ? backend.foldRows
      : ((streamId, after, limit, withRecordedAt) => backend.foldRows(keyOf(streamId), after, limit, withRecordedAt)) satisfies FoldRows,
    enumerable: false
  })
  if (tenant !== undefined) markTenant(service, tenant)
  if (tenant === undefined) {
    // a tenant's store: the same backend, its tenant's keys and rows (no synchronous commands: their reads of the
    // log are not by tenant)
    // (from the uninstrumented backend: the tenant's store instruments its own copy once)
    const { syncCommands: _, ...shared } = uninstrumented
    Object.defineProperty(service, tenantsKey, { value: (t: string) => fromBackend(shared, t), enumerable: false })
  }
  Object.defineProperty(service, commitsKey, {
    value: { signal: backend.signal, pollInterval: backend.pollInterval } satisfies Commits,
    enumerable: false
  })
  if (backend.syncCommands !== undefined && tenant === undefined) {
    Object.defineProperty(service, syncCommandsKey, { value: backend.syncCommands, enumerable: false })
  }
  return service
}

