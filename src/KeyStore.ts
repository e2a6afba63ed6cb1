/**
 * The data keys of crypto-shredding (`Privacy`). A key is named by an id (`"subject:c-42"`, `"tenant:acme"`) and has
 * versions 1, 2, 3 … (a rotation adds one; older ones stay, to decrypt what they encrypted, until the key is
 * destroyed). The store keeps each version *wrapped*: encrypted under a key-encryption key (KEK) that only `Privacy`
 * holds. To the store, `wrapped` is opaque bytes; it never sees a plaintext key.
 *
 * Destroying a key deletes the bytes of every version and records how far the key was destroyed, in a row of its own
 * that outlives them: a destroyed version is never written again, so data encrypted under it stays unreadable for
 * good. Beside the keys, the store keeps which streams hold data under each key (what `forget` must visit), an audit
 * log, and a few named values (the KEK's fingerprint).
 *
 * Backends: memory (`layerMemory`) and SQL (`layerSql`, over the `SqlClient` in context: SQLite, LibSQL or
 * PostgreSQL, in the tables `eventstore_privacy_*` that the library's migrations create). What "deleted" leaves
 * behind on each is said at `purge`.
 *
 * @since 0.1.0
 */
import * as SqlClient from "@effect/sql/SqlClient"
import type { SqlError } from "@effect/sql/SqlError"
import * as Context from "effect/Context"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Option from "effect/Option"
import type * as Schedule from "effect/Schedule"
import { InvalidInput, StoreError } from "./Errors.js"
import * as Migrations from "./internal/migrations.js"
import * as SqlKeys from "./internal/sqlKeys.js"
import { isBusy } from "./internal/sqlErrors.js"
import * as Tracing from "./internal/tracing.js"
import { defaultBusyRetry } from "./SqlEventStore.js"

/**
 * One version of a data key, wrapped by a KEK.
 *
 * @since 0.1.0
 */
export interface WrappedKey {
  readonly keyId: string
  /** 1, 2, … (at most 2³¹ − 1). */
  readonly version: number
  /** The key encrypted under the KEK: opaque to the store, never interpreted. */
  readonly wrapped: Uint8Array
  /** The fingerprint of the KEK that wrapped it (an opaque short string). */
  readonly kekId: string
  /** Epoch milliseconds. */
  readonly createdAt: number
}

/**
 * What the store holds of one key.
 *
 * @since 0.1.0
 */
export interface KeyRecord {
  readonly keyId: string
  /** Live versions, ascending by version. Empty after destroy. */
  readonly versions: ReadonlyArray<WrappedKey>
  /** Every version ≤ this was destroyed (0: nothing destroyed). A destroyed version never comes back. */
  readonly destroyedThrough: number
  /** Epoch ms of the last destroy, undefined when never destroyed. */
  readonly destroyedAt: number | undefined
}

/**
 * One line of the audit log.
 *
 * @since 0.1.0
 */
export interface AuditEntry {
  /** Epoch milliseconds. */
  readonly at: number
  /** `"create"`, `"rotate"`, `"forget"` … (free text, the caller's). */
  readonly action: string
  readonly keyId: string
  /** Free text; never key material. */
  readonly detail: string
}

/**
 * Every operation fails only with `StoreError` (`operation`: `"keystore.put"`, `"keystore.destroy"` …): the backend
 * failed, or the input was malformed (then its `cause` is an `InvalidInput` and nothing was written).
 *
 * @since 0.1.0
 */
export interface KeyStoreService {
  /** The key's record; None when no version was ever created nor destroyed. */
  readonly get: (keyId: string) => Effect.Effect<Option.Option<KeyRecord>, StoreError>
  /** Records for many ids at once (one query per ≤ 500 ids on SQL); ids without a record are absent from the map. */
  readonly getMany: (keyIds: ReadonlyArray<string>) => Effect.Effect<ReadonlyMap<string, KeyRecord>, StoreError>
  /**
   * Adds `key` unless its (keyId, version) exists already or `version <= destroyedThrough` — then writes nothing.
   * Returns the record as it is afterwards (so of two processes creating version 1 at once, both see the one that won).
   * Atomic on SQL (INSERT … ON CONFLICT DO NOTHING, then read, in one transaction; on PostgreSQL under a lock of the
   * key that `destroy` takes too). Malformed input (an empty `keyId`, a `version` that is not an integer from 1 to
   * 2³¹ − 1, a `createdAt` that is not a non-negative safe integer) fails with an `InvalidInput` cause.
   */
  readonly put: (key: WrappedKey) => Effect.Effect<KeyRecord, StoreError>
  /**
   * Destroys every version of the key: the wrapped bytes are deleted (SQLite: on a connection with
   * `PRAGMA secure_delete = ON`, which this runs first, so the bytes are overwritten in the file), `destroyedThrough`
   * becomes the highest version ever created (kept in a separate state row that survives), `destroyedAt = at`.
   * Idempotent: destroying again keeps destroyedThrough (or raises it if versions were added since), sets
   * `destroyedAt` to the new `at`, and returns the record. A key never created gets a state row with destroyedThrough 0
   * and destroyedAt set (so `get` returns Some with empty versions). The bytes may survive in the SQLite WAL until
   * `purge`.
   */
  readonly destroy: (keyId: string, at: number) => Effect.Effect<KeyRecord, StoreError>
  /** Records that data encrypted with `keyId` is in these streams (idempotent). */
  readonly track: (keyId: string, streamIds: ReadonlyArray<string>) => Effect.Effect<void, StoreError>
  /** The streams recorded by `track` for the key, sorted (by code point, as `keyIds`). */
  readonly streamsOf: (keyId: string) => Effect.Effect<ReadonlyArray<string>, StoreError>
  /**
   * A small named value kept with the keys (the KEK fingerprint check): stores `value` under `name` when absent and
   * returns the stored value (the existing one when present). Atomic.
   */
  readonly claimMeta: (name: string, value: string) => Effect.Effect<string, StoreError>
  /** Replaces the named value (for a KEK rotation). */
  readonly setMeta: (name: string, value: string) => Effect.Effect<void, StoreError>
  readonly audit: (entry: AuditEntry) => Effect.Effect<void, StoreError>
  /** Audit entries, oldest (first written) first; of one key when given. */
  readonly auditLog: (keyId?: string) => Effect.Effect<ReadonlyArray<AuditEntry>, StoreError>
  /**
   * Every key id with live versions, sorted (for a KEK rewrap); paged: after `after`, at most `limit` (default 1000,
   * a positive integer). Sorted by code point (the byte order of UTF-8) on every backend: PostgreSQL's columns use
   * the "C" collation.
   */
  readonly keyIds: (
    options?: { readonly after?: string; readonly limit?: number }
  ) => Effect.Effect<ReadonlyArray<string>, StoreError>
  /**
   * Replaces the wrapped bytes and kekId of an existing (keyId, version) (KEK rotation); false when it is not there.
   */
  readonly rewrap: (keyId: string, version: number, wrapped: Uint8Array, kekId: string) => Effect.Effect<boolean, StoreError>
  /**
   * Makes deleted bytes unrecoverable where the backend can.
   * - SQLite: `PRAGMA wal_checkpoint(TRUNCATE)`, which copies the pages `destroy` overwrote into the file and empties
   *   the WAL; `complete` is `busy === 0`. The checkpoint runs with the connection's busy timeout at 0 (restored
   *   after), so one that would have to wait for another connection's reader or writer answers busy at once instead
   *   of blocking the thread: `complete: false`, never a failure; call it again later. Inside a transaction it does
   *   nothing and answers `complete: false` (SQLite does not checkpoint there). A database not in WAL mode has nothing
   *   to checkpoint: `complete: true` (its deleted rollback journals are the filesystem's).
   * - PostgreSQL: `VACUUM` of the keys table, which removes the deleted rows' tuples from the table and its index, then
   *   `complete: true`; inside a transaction, where PostgreSQL refuses `VACUUM`, nothing is done and `complete: false`.
   *   A role that does not own the table gets only a warning from the server, and nothing is removed. The server may
   *   still hold the bytes in the table file's free space until it is reused, in its WAL until the segments are
   *   recycled, and in base backups, WAL archives and replicas: none of that is reachable from a connection.
   * - Memory: `complete: true` (`destroy` zeroed the store's own arrays; copies it handed out are the caller's).
   */
  readonly purge: Effect.Effect<{ readonly complete: boolean }, StoreError>
  /**
   * The keys destroyed after `at` (epoch ms, by the `at` their `destroy` was given), oldest first, at most `limit`
   * (default 1000): how a process learns of another's forgets.
   */
  readonly destroyedSince: (
    at: number,
    limit?: number
  ) => Effect.Effect<ReadonlyArray<{ readonly keyId: string; readonly destroyedThrough: number; readonly destroyedAt: number }>, StoreError>
}

/** @since 0.1.0 */
export class KeyStore extends Context.Tag("effect-eventstore/KeyStore")<KeyStore, KeyStoreService>() {}

// --- shared rules --------------------------------------------------------------------------------------------------

const MAX_VERSION = 2_147_483_647
const DEFAULT_LIMIT = 1000

const invalid = (operation: string, field: string, reason: string) =>
  new StoreError({ operation, cause: new InvalidInput({ field, reason }) })

const isTime = (n: number) => Number.isSafeInteger(n) && n >= 0

const checkPut = (key: WrappedKey): StoreError | undefined =>
  typeof key.keyId !== "string" || key.keyId === ""
    ? invalid("keystore.put", "keyId", "must be a non-empty string")
    : !Number.isInteger(key.version) || key.version < 1 || key.version > MAX_VERSION
    ? invalid("keystore.put", "version", `must be an integer from 1 to ${MAX_VERSION}`)
    : !(key.wrapped instanceof Uint8Array)
    ? invalid("keystore.put", "wrapped", "must be a Uint8Array")
    : typeof key.kekId !== "string"
    ? invalid("keystore.put", "kekId", "must be a string")
    : !isTime(key.createdAt)
    ? invalid("keystore.put", "createdAt", "must be a non-negative safe integer (epoch ms)")
    : undefined

const checkDestroy = (keyId: string, at: number): StoreError | undefined =>
  typeof keyId !== "string" || keyId === ""
    ? invalid("keystore.destroy", "keyId", "must be a non-empty string")
    : !isTime(at)
    ? invalid("keystore.destroy", "at", "must be a non-negative safe integer (epoch ms)")
    : undefined

const checkAudit = (entry: AuditEntry): StoreError | undefined =>
  !isTime(entry.at) ? invalid("keystore.audit", "at", "must be a non-negative safe integer (epoch ms)") : undefined

const limitOf = (options: { readonly limit?: number } | undefined): number | StoreError => {
  const limit = options?.limit ?? DEFAULT_LIMIT
  return Number.isSafeInteger(limit) && limit > 0 ? limit : invalid("keystore.keyIds", "limit", "must be a positive integer")
}

const checked = <A>(error: StoreError | undefined, effect: () => Effect.Effect<A, StoreError>) =>
  error === undefined ? effect() : Effect.fail(error)

/**
 * Code point order (the byte order of UTF-8): what SQLite's default collation and PostgreSQL's "C" one sort by.
 * JavaScript's `<` compares UTF-16 code units, which puts U+10000 and above before U+E000–U+FFFF; shifting the code
 * units so that surrogates come last fixes that.
 */
const byCodePoint = (a: string, b: string): number => {
  const n = Math.min(a.length, b.length)
  for (let i = 0; i < n; i++) {
    const x = a.charCodeAt(i)
    const y = b.charCodeAt(i)
    if (x !== y) return shift(x) - shift(y)
  }
  return a.length - b.length
}
const shift = (unit: number) => unit >= 0xd800 && unit <= 0xdfff ? unit + 0x2000 : unit >= 0xe000 ? unit - 0x800 : unit

const copy = (key: WrappedKey): WrappedKey => ({
  keyId: key.keyId,
  version: key.version,
  wrapped: Uint8Array.from(key.wrapped),
  kekId: key.kekId,
  createdAt: key.createdAt
})

/** Every operation in a span (when a tracer is installed). Key ids stay out of spans: they may name a person. */
const traced = (store: KeyStoreService): KeyStoreService => {
  const span = (attributes: Record<string, unknown> = {}) => () => ({
    captureStackTrace: false,
    attributes
  })
  return KeyStore.of({
    get: (keyId) => Tracing.withSpan(store.get(keyId), "KeyStore.get", span()),
    getMany: (keyIds) => Tracing.withSpan(store.getMany(keyIds), "KeyStore.getMany", span({ "key.count": keyIds.length })),
    put: (key) => Tracing.withSpan(store.put(key), "KeyStore.put", span({ "key.version": key.version })),
    destroy: (keyId, at) => Tracing.withSpan(store.destroy(keyId, at), "KeyStore.destroy", span()),
    track: (keyId, streamIds) =>
      Tracing.withSpan(store.track(keyId, streamIds), "KeyStore.track", span({ "stream.count": streamIds.length })),
    streamsOf: (keyId) => Tracing.withSpan(store.streamsOf(keyId), "KeyStore.streamsOf", span()),
    claimMeta: (name, value) => Tracing.withSpan(store.claimMeta(name, value), "KeyStore.claimMeta", span()),
    setMeta: (name, value) => Tracing.withSpan(store.setMeta(name, value), "KeyStore.setMeta", span()),
    audit: (entry) => Tracing.withSpan(store.audit(entry), "KeyStore.audit", span()),
    auditLog: (keyId) => Tracing.withSpan(store.auditLog(keyId), "KeyStore.auditLog", span()),
    keyIds: (options) => Tracing.withSpan(store.keyIds(options), "KeyStore.keyIds", span()),
    rewrap: (keyId, version, wrapped, kekId) =>
      Tracing.withSpan(store.rewrap(keyId, version, wrapped, kekId), "KeyStore.rewrap", span({ "key.version": version })),
    purge: Tracing.withSpan(store.purge, "KeyStore.purge", span()),
    destroyedSince: (at, limit) => Tracing.withSpan(store.destroyedSince(at, limit), "KeyStore.destroyedSince", span())
  })
}

// --- memory --------------------------------------------------------------------------------------------------------

/**
 * Keys in memory, for tests and single-process development. Bytes are copied in and out, so no caller holds the
 * store's own arrays; `destroy` zeroes them before it drops them.
 *
 * @since 0.1.0
 */
export const makeMemory: Effect.Effect<KeyStoreService> = Effect.sync(() => {
  const live = new Map<string, Map<number, WrappedKey>>()
  const destroyed = new Map<string, { readonly through: number; readonly at: number }>()
  const streams = new Map<string, Set<string>>()
  const meta = new Map<string, string>()
  const log: Array<AuditEntry> = []

  const recordOf = (keyId: string): KeyRecord | undefined => {
    const versions = live.get(keyId)
    const state = destroyed.get(keyId)
    if ((versions === undefined || versions.size === 0) && state === undefined) return undefined
    return {
      keyId,
      versions: [...(versions?.values() ?? [])].sort((a, b) => a.version - b.version).map(copy),
      destroyedThrough: state?.through ?? 0,
      destroyedAt: state?.at
    }
  }

  return traced({
    get: (keyId) => Effect.sync(() => Option.fromNullable(recordOf(keyId))),
    getMany: (keyIds) =>
      Effect.sync(() => {
        const found = new Map<string, KeyRecord>()
        for (const keyId of keyIds) {
          const record = recordOf(keyId)
          if (record !== undefined) found.set(keyId, record)
        }
        return found
      }),
    put: (key) =>
      checked(checkPut(key), () =>
        Effect.sync(() => {
          const versions = live.get(key.keyId) ?? new Map<number, WrappedKey>()
          if (!versions.has(key.version) && key.version > (destroyed.get(key.keyId)?.through ?? 0)) {
            versions.set(key.version, copy(key))
            live.set(key.keyId, versions)
          }
          return recordOf(key.keyId)!
        })),
    destroy: (keyId, at) =>
      checked(checkDestroy(keyId, at), () =>
        Effect.sync(() => {
          const versions = [...(live.get(keyId)?.values() ?? [])]
          const through = Math.max(destroyed.get(keyId)?.through ?? 0, ...versions.map((v) => v.version))
          for (const version of versions) version.wrapped.fill(0)
          live.delete(keyId)
          destroyed.set(keyId, { through, at })
          return recordOf(keyId)!
        })),
    track: (keyId, streamIds) =>
      Effect.sync(() => {
        if (streamIds.length === 0) return
        const set = streams.get(keyId) ?? new Set<string>()
        for (const streamId of streamIds) set.add(streamId)
        streams.set(keyId, set)
      }),
    streamsOf: (keyId) => Effect.sync(() => [...(streams.get(keyId) ?? [])].sort(byCodePoint)),
    claimMeta: (name, value) =>
      Effect.sync(() => {
        const stored = meta.get(name)
        if (stored !== undefined) return stored
        meta.set(name, value)
        return value
      }),
    setMeta: (name, value) => Effect.sync(() => void meta.set(name, value)),
    audit: (entry) =>
      checked(checkAudit(entry), () =>
        Effect.sync(() => {
          log.push({ at: entry.at, action: entry.action, keyId: entry.keyId, detail: entry.detail })
        })),
    auditLog: (keyId) => Effect.sync(() => keyId === undefined ? [...log] : log.filter((e) => e.keyId === keyId)),
    keyIds: (options) => {
      const limit = limitOf(options)
      if (typeof limit !== "number") return Effect.fail(limit)
      return Effect.sync(() => {
        const after = options?.after
        return [...live.keys()]
          .filter((keyId) => live.get(keyId)!.size > 0 && (after === undefined || byCodePoint(keyId, after) > 0))
          .sort(byCodePoint)
          .slice(0, limit)
      })
    },
    rewrap: (keyId, version, wrapped, kekId) =>
      Effect.sync(() => {
        const versions = live.get(keyId)
        const old = versions?.get(version)
        if (versions === undefined || old === undefined) return false
        old.wrapped.fill(0)
        versions.set(version, copy({ ...old, wrapped, kekId }))
        return true
      }),
    purge: Effect.succeed({ complete: true }),
    destroyedSince: (at, limit = 1000) =>
      Effect.sync(() =>
        [...destroyed.entries()]
          .filter(([, d]) => d.at > at)
          .sort((x, y) => x[1].at - y[1].at)
          .slice(0, limit)
          .map(([keyId, d]) => ({ keyId, destroyedThrough: d.through, destroyedAt: d.at }))
      )
  })
})

/** @since 0.1.0 */
export const layerMemory: Layer.Layer<KeyStore> = Layer.effect(KeyStore, makeMemory)

// --- SQL -----------------------------------------------------------------------------------------------------------

/** @since 0.1.0 */
export interface SqlOptions {
  /**
   * Retries a write that found the database locked by another connection or process (SQLite), or lost to a deadlock
   * or serialization failure (PostgreSQL); the wait between attempts does not block the thread. A transaction is
   * retried whole. Default: `SqlEventStore.defaultBusyRetry("5 seconds")`.
   */
  readonly busyRetry?: Schedule.Schedule<unknown>
}

/** How many ids one `getMany` query asks for (twice each: SQLite's limit is 32,766 parameters, PostgreSQL's 65,535). */
const BATCH = 500

/**
 * Keys in the database of the `SqlClient` in context (tables `eventstore_privacy_*`). Runs the library's migrations
 * first. On SQLite, statements run on that client's connection: with `Sqlite.layer`, its shared one, where a write
 * that finds another process holding the write lock waits inside SQLite (blocking the thread, as every statement on
 * that client does) for up to the connection's busy timeout, and is then retried by `busyRetry`. The event store's
 * writer in this process never holds the lock across a yield, so it never makes these writes wait; it retries
 * instead while one of their transactions holds the lock. `purge` never waits inside SQLite.
 *
 * @since 0.1.0
 */
export const makeSql = (options: SqlOptions = {}): Effect.Effect<KeyStoreService, StoreError, SqlClient.SqlClient> =>
  Effect.gen(function*() {
    const sql = yield* SqlClient.SqlClient
    yield* Migrations.migrate
    const q = SqlKeys.make(sql)
    const busyRetry = options.busyRetry ?? defaultBusyRetry("5 seconds")
    const storeError = (operation: string) => (cause: SqlError | StoreError) =>
      cause._tag === "StoreError" ? cause : new StoreError({ operation, cause })
    /**
     * A write never joins a transaction the caller opened on the client: the events a key encrypts are committed by
     * the event store on its own, so a key rolled back with the caller's transaction would leave them unreadable.
     * PostgreSQL writes on a connection of its own from the pool; SQLite has one shared connection, which the
     * caller's transaction holds, so there the write fails with a `StoreError` before anything is written.
     */
    const detached = <A, E>(operation: string, effect: Effect.Effect<A, E>): Effect.Effect<A, E | StoreError> =>
      Effect.flatMap(Effect.serviceOption(SqlClient.TransactionConnection), (tx) =>
        Option.isNone(tx) ? effect : sql.onDialectOrElse({
          sqlite: () =>
            Effect.fail(
              new StoreError({
                operation,
                cause: "a data key cannot be written inside a transaction opened on the SQLite client (it holds the only connection): " +
                  "append events with personal data for a new subject or stream outside it"
              })
            ),
          orElse: () =>
            Effect.mapInputContext(effect, (context: Context.Context<never>) =>
              Context.omit(SqlClient.TransactionConnection)(context as Context.Context<SqlClient.TransactionConnection>) as Context.Context<never>)
        }))
    const write = <A>(operation: string, effect: Effect.Effect<A, SqlError>) =>
      Effect.mapError(detached(operation, Effect.retry(effect, { schedule: busyRetry, while: isBusy })), storeError(operation))
    const transaction = <A>(operation: string, effect: Effect.Effect<A, SqlError | StoreError>) =>
      Effect.mapError(
        detached(operation, Effect.retry(sql.withTransaction(effect), { schedule: busyRetry, while: isBusy })),
        storeError(operation)
      )

    const records = (operation: string, keyIds: ReadonlyArray<string>) =>
      Effect.flatMap(q.rows(keyIds), (rows) => {
        const found = SqlKeys.recordsOf(rows)
        return typeof found === "string"
          ? Effect.fail(new StoreError({ operation, cause: new Error(found) }))
          : Effect.succeed(found)
      })
    const recordIn = (operation: string, keyId: string) =>
      Effect.map(records(operation, [keyId]), (found) => Option.fromNullable(found.get(keyId)))
    const existing = (operation: string, keyId: string) =>
      Effect.map(
        recordIn(operation, keyId),
        Option.getOrElse((): KeyRecord => ({ keyId, versions: [], destroyedThrough: 0, destroyedAt: undefined }))
      )

    return traced({
      get: (keyId) => Effect.mapError(recordIn("keystore.get", keyId), storeError("keystore.get")),
      getMany: (keyIds) =>
        Effect.gen(function*() {
          const ids = [...new Set(keyIds)]
          const found = new Map<string, KeyRecord>()
          for (let i = 0; i < ids.length; i += BATCH) {
            for (const [keyId, record] of yield* records("keystore.getMany", ids.slice(i, i + BATCH))) {
              found.set(keyId, record)
            }
          }
          return found as ReadonlyMap<string, KeyRecord>
        }).pipe(Effect.mapError(storeError("keystore.getMany"))),
      put: (key) =>
        checked(checkPut(key), () =>
          transaction(
            "keystore.put",
            Effect.zipRight(
              Effect.zipRight(q.lock(key.keyId), q.insert(key)),
              existing("keystore.put", key.keyId)
            )
          )),
      destroy: (keyId, at) =>
        checked(checkDestroy(keyId, at), () =>
          Effect.zipRight(
            Effect.mapError(q.secureDelete, storeError("keystore.destroy")),
            transaction(
              "keystore.destroy",
              Effect.gen(function*() {
                yield* q.lock(keyId)
                const versions = yield* q.deleteVersions(keyId)
                yield* q.destroyed(keyId, Math.max(0, ...versions), at)
                return yield* existing("keystore.destroy", keyId)
              })
            )
          )),
      track: (keyId, streamIds) => {
        const ids = [...new Set(streamIds)]
        if (ids.length === 0) return Effect.void
        const batches: Array<Array<string>> = []
        for (let i = 0; i < ids.length; i += BATCH) batches.push(ids.slice(i, i + BATCH))
        return batches.length === 1
          ? write("keystore.track", q.track(keyId, ids))
          : transaction("keystore.track", Effect.forEach(batches, (batch) => q.track(keyId, batch), { discard: true }))
      },
      streamsOf: (keyId) => Effect.mapError(q.streamsOf(keyId), storeError("keystore.streamsOf")),
      claimMeta: (name, value) =>
        transaction(
          "keystore.claimMeta",
          Effect.zipRight(q.insertMeta(name, value), Effect.map(q.meta(name), (stored) => stored ?? value))
        ),
      setMeta: (name, value) => write("keystore.setMeta", q.setMeta(name, value)),
      audit: (entry) => checked(checkAudit(entry), () => write("keystore.audit", q.audit(entry))),
      auditLog: (keyId) =>
        Effect.map(
          Effect.mapError(q.auditLog(keyId), storeError("keystore.auditLog")),
          (rows) => rows.map((r) => ({ at: Number(r.at), action: r.action, keyId: r.keyId, detail: r.detail }))
        ),
      keyIds: (options) => {
        const limit = limitOf(options)
        if (typeof limit !== "number") return Effect.fail(limit)
        return Effect.mapError(q.keyIds(options?.after, limit), storeError("keystore.keyIds"))
      },
      rewrap: (keyId, version, wrapped, kekId) => write("keystore.rewrap", q.rewrap(keyId, version, wrapped, kekId)),
      purge: Effect.mapError(q.purge, storeError("keystore.purge")),
      destroyedSince: (at, limit = 1000) =>
        Effect.mapError(
          Effect.map(q.destroyedSince(at, limit), (rows) =>
            rows.map((r) => ({ keyId: r.keyId, destroyedThrough: Number(r.destroyedThrough), destroyedAt: Number(r.destroyedAt) }))),
          storeError("keystore.destroyedSince")
        )
    })
  })

/**
 * The SQL key store as a layer over a `SqlClient` (`Sqlite.layer`, `Postgres.layer`, `LibSql.layer` provide one).
 *
 * @example
 * ```ts
 * const KeysLive = KeyStore.layerSql().pipe(Layer.provide(Sqlite.layer({ filename: "./data/app.db" })))
 * ```
 *
 * @since 0.1.0
 */
export const layerSql = (options?: SqlOptions): Layer.Layer<KeyStore, StoreError, SqlClient.SqlClient> =>
  Layer.effect(KeyStore, makeSql(options))
