/**
 * The `SnapshotStore` in an SQL database (table `eventstore_snapshots`), over the `SqlClient` in context: what
 * `Sqlite.layer` provides. The SQL text is in `internal/sqlSnapshots.ts`, once per dialect.
 *
 * @since 0.1.0
 */
import * as SqlClient from "@effect/sql/SqlClient"
import type { SqlError } from "@effect/sql/SqlError"
import * as Effect from "effect/Effect"
import * as Either from "effect/Either"
import * as Layer from "effect/Layer"
import type * as Schedule from "effect/Schedule"
import { type InvalidInput, StoreError } from "./Errors.js"
import * as Migrations from "./internal/migrations.js"
import { isBusy } from "./internal/sqlErrors.js"
import * as SqlSnapshots from "./internal/sqlSnapshots.js"
import { decodeStored, prepare, span, statsOf } from "./internal/snapshotRows.js"
import * as Tracing from "./internal/tracing.js"
import { SnapshotStore, type SnapshotStoreService } from "./Snapshot.js"

/** @since 0.1.0 */
export interface Options {
  /**
   * Retries a write that found the database locked by another process (a failed attempt returns at once; the wait
   * between attempts does not block the thread). Default: none.
   */
  readonly busyRetry?: Schedule.Schedule<unknown>
  /**
   * The client that saves and deletes go through; default the `SqlClient` in context. `Sqlite.layer` passes one over
   * its writer connection, which fails at once on another process's lock (busy timeout 0), so that `busyRetry`
   * waits between attempts without blocking the thread; reads stay on the `SqlClient` in context.
   */
  readonly writeClient?: SqlClient.SqlClient
}

/**
 * Snapshots in the database of the `SqlClient` in context. Runs the library's migrations first.
 *
 * @since 0.1.0
 */
export const make = (
  options: Options = {}
): Effect.Effect<SnapshotStoreService, StoreError, SqlClient.SqlClient> =>
  Effect.gen(function*() {
    const sql = yield* SqlClient.SqlClient
    yield* Migrations.migrate
    const statements = SqlSnapshots.make(sql)
    const writes = options.writeClient === undefined ? statements : SqlSnapshots.make(options.writeClient)
    const storeError = (operation: string) => (cause: SqlError) => new StoreError({ operation, cause })
    const retried = <A>(write: Effect.Effect<A, SqlError>) =>
      options.busyRetry === undefined ? write : Effect.retry(write, { schedule: options.busyRetry, while: isBusy })

    const save: SnapshotStoreService["save"] = (snapshot) =>
      Effect.clockWith((clock): Effect.Effect<void, InvalidInput | StoreError> => {
        const row = prepare(snapshot, clock.unsafeCurrentTimeMillis())
        if (Either.isLeft(row)) return Effect.fail(row.left)
        return Effect.mapError(retried(writes.upsert(row.right)), storeError("snapshot.save"))
      }).pipe((effect) => Tracing.withSpan(effect, "SnapshotStore.save", () => span(snapshot.streamId)))

    const atOrBefore: SnapshotStoreService["atOrBefore"] = (streamId, version) =>
      statements.atOrBefore(streamId, version).pipe(
        Effect.mapError(storeError("snapshot.load")),
        Effect.flatMap((rows) => decodeStored(rows[0])),
        (effect) => Tracing.withSpan(effect, "SnapshotStore.load", () => span(streamId))
      )

    return SnapshotStore.of({
      save,
      latest: (streamId) => atOrBefore(streamId, Number.MAX_SAFE_INTEGER),
      atOrBefore,
      deleteOlderThan: (streamId, version) =>
        Effect.mapError(retried(writes.deleteOlderThan(streamId, version)), storeError("snapshot.delete")),
      stats: Effect.mapError(Effect.map(statements.stats, statsOf), storeError("snapshot.stats"))
    })
  })

/**
 * The SQL snapshot store as a layer over a `SqlClient`.
 *
 * @since 0.1.0
 */
export const layer = (options?: Options): Layer.Layer<SnapshotStore, StoreError, SqlClient.SqlClient> =>
  Layer.effect(SnapshotStore, make(options))
