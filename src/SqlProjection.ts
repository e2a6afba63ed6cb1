/**
 * The SQL `CheckpointStore`: projections' checkpoints, leases, applied migrations and parked events in tables of the
 * read model's database, reached through the `SqlClient` in context — the same client the projections' handlers
 * write with. A batch's handler statements and the checkpoint move run in one transaction on it, so a read model in
 * that database sees each event exactly once, across crashes and restarts.
 *
 * The read model may live in the event store's database (`Sqlite.layer` provides its `SqlClient`) or in another one
 * (provide that database's `SqlClient` to `layer` and to the projections). Handlers must write through this same
 * client: `@effect/sql` runs every statement made inside a transaction on the transaction's connection.
 *
 * Tables (created when the store starts, if missing): `eventstore_projections` (name, checkpoint, lease),
 * `eventstore_projection_migrations`, `eventstore_parked_events`.
 *
 * @since 0.1.0
 */
import * as SqlClient from "@effect/sql/SqlClient"
import type { Connection } from "@effect/sql/SqlConnection"
import type { SqlError } from "@effect/sql/SqlError"
import * as Clock from "effect/Clock"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Layer from "effect/Layer"
import * as Scope from "effect/Scope"
import { StoreError } from "./Errors.js"
import { onDatabase } from "./internal/backend.js"
import { SCHEMA_LOCK, tables } from "./internal/migrations.js"
import { type RedactParkedWithin, withRedactParkedWithin } from "./internal/tenants.js"
import { CheckpointConflict, CheckpointStore, type CheckpointStoreService, type ParkedEvent } from "./Projection.js"

const P = tables.projections
const M = tables.projectionMigrations
const K = tables.parked

const storeError = (operation: string) => (cause: SqlError) => new StoreError({ operation, cause })

const toNumber = (u: unknown): number => typeof u === "bigint" ? Number(u) : Number(u)

/** Stream ids per `redactParked` statement: well under SQLite's 999 host parameters of old builds. */
const REDACT_BATCH = 500

/**
 * Creates the tables if they are missing. Safe to run from several processes at once.
 *
 * @since 0.1.0
 */
export const migrate: Effect.Effect<void, StoreError, SqlClient.SqlClient> = Effect.gen(function*() {
  const sql = yield* SqlClient.SqlClient
  yield* sql.withTransaction(Effect.all([
    // PostgreSQL: two CREATE TABLE IF NOT EXISTS racing fail (a unique violation in the catalog): one at a time
    sql.onDialectOrElse({ pg: () => sql.unsafe(`SELECT pg_advisory_xact_lock(${SCHEMA_LOCK})`), orElse: () => Effect.void }),
    sql.unsafe(`CREATE TABLE IF NOT EXISTS ${P} (
  name TEXT PRIMARY KEY,
  position BIGINT NOT NULL,
  owner TEXT,
  lease_until BIGINT NOT NULL,
  updated_at BIGINT NOT NULL,
  generation INTEGER NOT NULL DEFAULT 1
)`),
    sql.unsafe(`CREATE TABLE IF NOT EXISTS ${M} (
  projection TEXT NOT NULL,
  id INTEGER NOT NULL,
  applied_at BIGINT NOT NULL,
  PRIMARY KEY (projection, id)
)`),
    sql.unsafe(`CREATE TABLE IF NOT EXISTS ${K} (
  projection TEXT NOT NULL,
  position BIGINT NOT NULL,
  event_id TEXT NOT NULL,
  stream_id TEXT NOT NULL,
  event_type TEXT NOT NULL,
  reason TEXT NOT NULL,
  parked_at BIGINT NOT NULL,
  PRIMARY KEY (projection, position)
)`)
  ], { discard: true }))
}).pipe(Effect.mapError(storeError("projection.migrate")))

interface Held {
  readonly owner: string
  readonly scope: Scope.CloseableScope
  readonly conn: Connection
}

/**
 * PostgreSQL: one active runner per projection across processes, through a session advisory lock held on a
 * connection of its own (taken from the pool) for as long as the runner is active. A process that dies or loses
 * that connection loses the lock at once, and a standby takes over without waiting for the lease to expire; a
 * runner that finds its connection gone stops being active at its next renewal (its writes were already fenced:
 * every commit checks the owner). Behind a transaction-mode pooler (PgBouncer) a session lock is not kept: connect
 * the runners directly, or in session mode. `undefined` on other databases (the lease alone decides there).
 */
const advisoryLocks = (sql: SqlClient.SqlClient) =>
  Effect.gen(function*() {
    if (!sql.onDialectOrElse({ pg: () => true, orElse: () => false })) return undefined
    const held = new Map<string, Held>()
    const TRY = `SELECT pg_try_advisory_lock(hashtextextended(current_schema() || '/' || $1, ${SCHEMA_LOCK})) AS ok`
    // closing the reserved connection's scope returns it to the pool: its session locks go first
    // never cut short (a shutdown's timeout): a connection back in the pool still holding the lock would keep the
    // projection from every other process
    const let_go = (h: Held) =>
      Effect.uninterruptible(Effect.zipRight(
        Effect.ignore(h.conn.execute("SELECT pg_advisory_unlock_all()", [], undefined)),
        Scope.close(h.scope, Exit.void)
      ))
    yield* Effect.addFinalizer(() => Effect.forEach([...held.values()], let_go, { discard: true }))
    const drop = (projection: string, owner?: string) =>
      Effect.suspend(() => {
        const h = held.get(projection)
        if (h === undefined || (owner !== undefined && h.owner !== owner)) return Effect.void
        held.delete(projection)
        return let_go(h)
      })
    /**
     * Whether `owner` holds the projection's lock: taking it if it is free (not on a renewal), checking its
     * connection if held. Another owner in this process whose lease expired hands it over (the lock is this
     * process's either way); one in another process keeps it for as long as its connection lives.
     */
    const take = (projection: string, owner: string, renew: boolean): Effect.Effect<boolean, StoreError> =>
      Effect.uninterruptible(Effect.suspend(() => {
        const h = held.get(projection)
        if (h !== undefined) {
          const alive = Effect.matchEffect(h.conn.execute("SELECT 1", [], undefined), {
            onFailure: () => Effect.as(drop(projection), false),
            onSuccess: () => Effect.succeed(true)
          })
          if (h.owner === owner) return alive
          if (renew) return Effect.succeed(false)
          return Effect.flatMap(
            Effect.zip(
              Clock.currentTimeMillis,
              Effect.mapError(
                sql<{ lease_until: unknown }>`SELECT lease_until FROM ${sql(P)} WHERE name = ${projection}`.withoutTransform,
                storeError("projection.acquire")
              )
            ),
            ([now, rows]) => {
              if (rows.length > 0 && Number(rows[0]!.lease_until) >= now) return Effect.succeed(false)
              held.set(projection, { ...h, owner })
              return alive
            }
          )
        }
        if (renew) return Effect.succeed(false)
        return Effect.gen(function*() {
          const scope = yield* Scope.make()
          const attempt = Effect.gen(function*() {
            const conn = yield* Scope.extend(sql.reserve, scope)
            const rows = yield* conn.execute(TRY, [projection], undefined) as Effect.Effect<ReadonlyArray<{ ok: unknown }>, SqlError>
            return { conn, ok: rows[0]?.ok === true }
          })
          const result = yield* Effect.exit(attempt)
          if (Exit.isFailure(result)) {
            yield* Scope.close(scope, Exit.void)
            return yield* Effect.flatMap(Effect.mapError(result, storeError("projection.acquire")), () => Effect.succeed(false))
          }
          if (!result.value.ok) {
            yield* Scope.close(scope, Exit.void)
            return false
          }
          held.set(projection, { owner, scope, conn: result.value.conn })
          return true
        })
      }))
    return { take, drop }
  })

/**
 * The store on the `SqlClient` in context; creates its tables first.
 *
 * @since 0.1.0
 */
export const make: Effect.Effect<CheckpointStoreService, StoreError, SqlClient.SqlClient | Scope.Scope> = Effect.gen(function*() {
  yield* migrate
  const sql = yield* SqlClient.SqlClient

  const serialize = sql.onDialectOrElse({
    pg: () => Effect.asVoid(sql.unsafe(`SELECT pg_advisory_xact_lock(${SCHEMA_LOCK})`)),
    orElse: () => Effect.void
  })

  // Moves the checkpoint first: on SQLite the transaction takes the write lock with its first statement, so a
  // commit by another connection cannot slip in between a read and the write.
  const move = (projection: string, owner: string, from: number, to: number, now: number) =>
    to <= from ? Effect.fail(new CheckpointConflict({ projection, expected: from })) : Effect.flatMap(
      sql<{ position: unknown }>`UPDATE ${sql(P)} SET position = ${to}, updated_at = ${now}
        WHERE name = ${projection} AND position = ${from} AND owner = ${owner} RETURNING position`.withoutTransform,
      (rows) => rows.length === 1 ? Effect.void : Effect.fail(new CheckpointConflict({ projection, expected: from }))
    )

  const isSqlError = (e: unknown): e is SqlError => (e as { _tag?: unknown } | null)?._tag === "SqlError"
  const transaction = <A, E, R>(operation: string, effect: Effect.Effect<A, E, R>) =>
    sql.withTransaction(effect).pipe(
      Effect.catchIf(
        (e): e is Extract<typeof e, SqlError> => isSqlError(e),
        (e) => Effect.fail(storeError(operation)(e as SqlError))
      ),
      // @effect/sql makes a failed COMMIT or ROLLBACK a defect (a lost connection, say): a failure like any other
      Effect.catchAllDefect((defect) => isSqlError(defect) ? Effect.fail(storeError(operation)(defect)) : Effect.die(defect))
    ) as Effect.Effect<A, Exclude<E, SqlError> | StoreError, R>

  // The lease in the table: taken when free, expired, or (`force`) whatever it says.
  const lease = (projection: string, owner: string, ttl: Duration.Duration, renew: boolean, force: boolean) =>
    Effect.flatMap(Clock.currentTimeMillis, (now) =>
      (renew
        ? sql<{ owner: unknown }>`UPDATE ${sql(P)} SET lease_until = ${now + Duration.toMillis(ttl)}
            WHERE name = ${projection} AND owner = ${owner} RETURNING owner`.withoutTransform
        : sql<{ owner: unknown }>`INSERT INTO ${sql(P)} (name, position, owner, lease_until, updated_at)
            VALUES (${projection}, 0, ${owner}, ${now + Duration.toMillis(ttl)}, ${now})
            ON CONFLICT (name) DO UPDATE SET owner = excluded.owner, lease_until = excluded.lease_until
            WHERE ${sql.literal(force ? "TRUE OR " : "")}${sql(P)}.owner IS NULL OR ${sql(P)}.owner = excluded.owner
              OR ${sql(P)}.lease_until < ${now}
            RETURNING owner`.withoutTransform)).pipe(
        Effect.map((rows) => rows.length === 1),
        Effect.mapError(storeError("projection.acquire"))
      )

  const locks = yield* advisoryLocks(sql)

  // one transaction: a forget redacts all of the subject's streams or none
  const redactWithin: RedactParkedWithin = (prefix, streamIds, reason) => {
    const ids = [...new Set(streamIds)]
    if (ids.length === 0) return Effect.succeed(0)
    const batches: Array<ReadonlyArray<string>> = []
    for (let i = 0; i < ids.length; i += REDACT_BATCH) batches.push(ids.slice(i, i + REDACT_BATCH))
    // a tenant's projections are stored under `tenant \u001f name` (see `Tenancy.checkpointStore`)
    const within = prefix === undefined
      ? sql.literal("")
      : sql` AND substr(projection, 1, ${prefix.length}) = ${prefix}`
    return transaction(
      "projection.redactParked",
      Effect.reduce(batches, 0, (n, batch) =>
        Effect.map(
          sql<{ position: unknown }>`UPDATE ${sql(K)} SET reason = ${reason}
            WHERE stream_id IN ${sql.in(batch)} AND reason <> ${reason}${within}
            RETURNING position`.withoutTransform,
          (rows) => n + rows.length
        ))
    )
  }

  const service: CheckpointStoreService = {
    exactlyOnce: true,
    acquire: (projection, owner, ttl, renew) =>
      locks === undefined
        ? lease(projection, owner, ttl, renew === true, false)
        : Effect.flatMap(locks.take(projection, owner, renew === true), (held) =>
          held
            // the lock proves no other runner is active: the row is taken whatever its lease says
            ? Effect.tap(lease(projection, owner, ttl, renew === true, renew !== true), (ok) =>
              ok ? Effect.void : locks.drop(projection))
            : Effect.succeed(false)),
    release: (projection, owner) =>
      Effect.zipRight(
        locks === undefined ? Effect.void : locks.drop(projection, owner),
        sql`UPDATE ${sql(P)} SET owner = NULL, lease_until = 0 WHERE name = ${projection} AND owner = ${owner}`.pipe(
          Effect.asVoid,
          Effect.mapError(storeError("projection.release"))
        )
      ),
    load: (projection) =>
      sql<{ position: unknown }>`SELECT position FROM ${sql(P)} WHERE name = ${projection}`.withoutTransform.pipe(
        Effect.map((rows) => rows.length === 0 ? 0 : toNumber(rows[0]!.position)),
        Effect.mapError(storeError("projection.load"))
      ),
    commit: (projection, owner, from, to, work, park) =>
      Effect.flatMap(Clock.currentTimeMillis, (now) =>
        transaction(
          "projection.commit",
          Effect.all([
            move(projection, owner, from, to, now),
            work,
            park === undefined ? Effect.void : sql`INSERT INTO ${sql(K)}
              (projection, position, event_id, stream_id, event_type, reason, parked_at)
              VALUES (${park.projection}, ${park.position}, ${park.eventId}, ${park.streamId}, ${park.eventType},
                ${park.reason}, ${park.parkedAt})
              ON CONFLICT (projection, position) DO UPDATE SET event_id = excluded.event_id,
                stream_id = excluded.stream_id, event_type = excluded.event_type, reason = excluded.reason,
                parked_at = excluded.parked_at`
          ], { discard: true })
        )),
    migrate: (projection, id, migration) =>
      Effect.flatMap(Clock.currentTimeMillis, (now) =>
        transaction(
          "projection.migrate",
          Effect.flatMap(
            // PostgreSQL: migrations run one at a time (two projections creating the same table would race)
            Effect.zipRight(serialize, sql<{ id: unknown }>`INSERT INTO ${sql(M)} (projection, id, applied_at) VALUES (${projection}, ${id}, ${now})
              ON CONFLICT (projection, id) DO NOTHING RETURNING id`.withoutTransform),
            (rows) => rows.length === 0 ? Effect.succeed(false) : Effect.as(migration, true)
          )
        )),
    reset: (projection, owner, work) =>
      Effect.flatMap(Clock.currentTimeMillis, (now) =>
        transaction(
          "projection.reset",
          Effect.zipRight(
            Effect.flatMap(
              sql<{ position: unknown }>`UPDATE ${sql(P)} SET position = 0, updated_at = ${now}
                WHERE name = ${projection} AND owner = ${owner} RETURNING position`.withoutTransform,
              (rows) => rows.length === 1 ? Effect.void : Effect.fail(new CheckpointConflict({ projection, expected: -1 }))
            ),
            work
          )
        )),
    generation: (projection) =>
      sql<{ generation: unknown }>`SELECT generation FROM ${sql(P)} WHERE name = ${projection}`.withoutTransform.pipe(
        Effect.map((rows) => rows.length === 0 ? 1 : toNumber(rows[0]!.generation)),
        Effect.mapError(storeError("projection.generation"))
      ),
    promote: (projection, owner, shadow, generation, work) =>
      Effect.flatMap(Clock.currentTimeMillis, (now) =>
        transaction(
          "projection.promote",
          Effect.gen(function*() {
            const built = yield* sql<{ position: unknown }>`SELECT position FROM ${sql(P)}
              WHERE name = ${shadow} AND owner = ${owner}`.withoutTransform
            if (built.length === 0) return yield* new CheckpointConflict({ projection, expected: -1 })
            const position = toNumber(built[0]!.position)
            const moved = yield* sql<{ position: unknown }>`UPDATE ${sql(P)}
              SET position = ${position}, generation = ${generation}, updated_at = ${now}
              WHERE name = ${projection} AND owner = ${owner} RETURNING position`.withoutTransform
            if (moved.length === 0) return yield* new CheckpointConflict({ projection, expected: -1 })
            yield* sql`DELETE FROM ${sql(P)} WHERE name = ${shadow}`
            yield* work
            return position
          })
        ).pipe(Effect.zipLeft(locks === undefined ? Effect.void : locks.drop(shadow)))),
    discard: (projection) =>
      sql.withTransaction(Effect.zipRight(
        sql`DELETE FROM ${sql(P)} WHERE name = ${projection}`,
        sql`DELETE FROM ${sql(M)} WHERE projection = ${projection}`
      )).pipe(
        Effect.asVoid,
        Effect.mapError(storeError("projection.discard")),
        Effect.zipLeft(locks === undefined ? Effect.void : locks.drop(projection))
      ),
    parked: (projection) =>
      sql<Record<string, unknown>>`SELECT position, event_id, stream_id, event_type, reason, parked_at FROM ${sql(K)}
        WHERE projection = ${projection} ORDER BY position`.withoutTransform.pipe(
        Effect.map((rows) =>
          rows.map((r): ParkedEvent => ({
            projection,
            position: toNumber(r.position),
            eventId: String(r.event_id),
            streamId: String(r.stream_id),
            eventType: String(r.event_type),
            reason: String(r.reason),
            parkedAt: toNumber(r.parked_at)
          }))
        ),
        Effect.mapError(storeError("projection.parked"))
      ),
    redactParked: (streamIds, reason) => redactWithin(undefined, streamIds, reason)
  }
  return onDatabase(withRedactParkedWithin(service, redactWithin), sql)
})

/**
 * The SQL checkpoint store as a layer, on the `SqlClient` in context.
 *
 * @since 0.1.0
 */
export const layer: Layer.Layer<CheckpointStore, StoreError, SqlClient.SqlClient> = Layer.scoped(CheckpointStore, make)
