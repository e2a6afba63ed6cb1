/**
 * Multi-tenancy: a tenant's data kept apart from every other tenant's, in one shared database or in a database per
 * tenant.
 *
 * **Shared database.** `eventStore(store, tenantId)` (or `layer`, with the `Tenant` in context) gives the store of
 * one tenant on the same database. The tenant is part of a stream's identity: two tenants' `Account-1` are two
 * streams (own versions, own conflicts), as are their command ids and their unique values. A tenant's store reads
 * and writes only its own streams; its `readAll` and `subscribe` (and so the projections run on it) deliver only its
 * own events. Every event it appends carries `tenantId` in its metadata; an append naming another tenant there is
 * `InvalidInput`. The store the database layer provides is the whole database: its streams are those without a
 * tenant, and its `readAll`/`subscribe` deliver every tenant's events (for cross-tenant read models and operators;
 * `metadata.tenantId` tells them apart). Snapshots and projection checkpoints are kept apart the same way by
 * `snapshotStore` / `checkpointStore` (or `layerSnapshots` / `layerCheckpoints`); an aggregate's handler and the
 * projection runners on a tenant's store do it by themselves with a snapshot or checkpoint store of the whole
 * database. A projection's read-model tables are the projection's own to keep apart (a tenant column, or tables per
 * tenant). Positions are global (a tenant's `head` is the log's), event ids unique across the database.
 *
 * **Database per tenant.** `databasePerTenant(open)` opens a tenant's database (an SQLite file, a PostgreSQL schema)
 * with `open(tenantId)` the first time the tenant is used, shares it while it is used, and closes it with the scope
 * (or after `idleTimeToLive` unused). The tenant id is checked before `open` sees it.
 *
 * Tenant ids: 1 to 63 characters, ASCII letters, digits, `_` and `-`, starting with a letter or digit (no path
 * separators, dots, quotes or spaces: an id is safe to put into a file name, a schema name or a NATS subject).
 *
 * @since 0.1.0
 */
import * as Context from "effect/Context"
import type * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as RcMap from "effect/RcMap"
import * as Schema from "effect/Schema"
import type * as Scope from "effect/Scope"
import { InvalidInput } from "./Errors.js"
import { EventStore, type EventStoreService } from "./EventStore.js"
import { tenantStoreOf } from "./internal/backend.js"
import { TENANT_PATTERN } from "./internal/codec.js"
import { scopeCheckpoints, scopeSnapshots, tenantOf } from "./internal/tenants.js"
import { CheckpointStore, type CheckpointStoreService } from "./Projection.js"
import { SnapshotStore, type SnapshotStoreService } from "./Snapshot.js"

/**
 * The tenant a program (a request, a job) works for.
 *
 * @since 0.1.0
 */
export class Tenant extends Context.Tag("effect-eventstore/Tenant")<Tenant, { readonly id: string }>() {}

/** @since 0.1.0 */
export const pattern: RegExp = TENANT_PATTERN

/**
 * A tenant id (see the module's rules).
 *
 * @since 0.1.0
 */
export const TenantId = Schema.String.pipe(
  Schema.pattern(pattern, {
    message: () => "a tenant id is 1 to 63 ASCII letters, digits, _ and -, starting with a letter or digit"
  })
)

/**
 * Checks a tenant id.
 *
 * @since 0.1.0
 */
export const validate = (tenantId: unknown): Effect.Effect<string, InvalidInput> =>
  typeof tenantId === "string" && pattern.test(tenantId)
    ? Effect.succeed(tenantId)
    : Effect.fail(
      new InvalidInput({
        field: "tenantId",
        reason: `${
          typeof tenantId === "string" ? JSON.stringify(tenantId.slice(0, 80)) : typeof tenantId
        } is not a tenant id: 1 to 63 ASCII letters, digits, _ and -, starting with a letter or digit`
      })
    )

/**
 * The store of one tenant in the database `store` works on (see the module). `store` must be a store of the whole
 * database as a backend layer provides it (`EventStore.layerMemory`, `Sqlite.layer`, `Postgres.layer`,
 * `LibSql.layer`); anything else is `InvalidInput`.
 *
 * @since 0.1.0
 */
export const eventStore = (store: EventStoreService, tenantId: string): Effect.Effect<EventStoreService, InvalidInput> =>
  Effect.flatMap(validate(tenantId), (tenant) => {
    const scoped = tenantStoreOf(store, tenant)
    return scoped === undefined
      ? Effect.fail(
        new InvalidInput({
          field: "store",
          reason: "only a store of a whole database, as a backend layer provides it, has tenants' stores"
        })
      )
      : Effect.succeed(scoped)
  })

/**
 * The snapshots of one tenant's streams: kept under the tenant's keys (another tenant's stream of the same id has
 * its own). `stats` covers the whole store.
 *
 * @since 0.1.0
 */
export const snapshotStore = (
  store: SnapshotStoreService,
  tenantId: string
): Effect.Effect<SnapshotStoreService, InvalidInput> =>
  Effect.flatMap(validate(tenantId), (tenant) => scoped(store, tenant, scopeSnapshots, "snapshots"))

/**
 * The projection checkpoints (leases, migrations, parked events, generations) of one tenant's projections: a
 * tenant's projection named `balances` has its own checkpoint, apart from another tenant's and from the one of a
 * projection of the whole database.
 *
 * @since 0.1.0
 */
export const checkpointStore = (
  store: CheckpointStoreService,
  tenantId: string
): Effect.Effect<CheckpointStoreService, InvalidInput> =>
  Effect.flatMap(validate(tenantId), (tenant) => scoped(store, tenant, scopeCheckpoints, "checkpoints"))

/** A tenant's view of a store of the whole database; a store already a tenant's is `InvalidInput`. */
const scoped = <A extends object>(
  store: A,
  tenant: string,
  scope: (store: A, tenant: string) => A,
  what: string
): Effect.Effect<A, InvalidInput> =>
  tenantOf(store) === undefined
    ? Effect.succeed(scope(store, tenant))
    : Effect.fail(new InvalidInput({ field: what, reason: "is a tenant's already" }))

/**
 * The `EventStore` of the `Tenant` in context, in place of the store of the whole database: provide it per request
 * or job, with the `Tenant`.
 *
 * @example
 * ```ts
 * const forTenant = (tenantId: string) =>
 *   Tenancy.layer.pipe(Layer.provide(Layer.succeed(Tenancy.Tenant, { id: tenantId })))
 * program.pipe(Effect.provide(forTenant("acme")), Effect.provide(Sqlite.layer({ filename: "shared.db" })))
 * ```
 *
 * @since 0.1.0
 */
export const layer: Layer.Layer<EventStore, InvalidInput, EventStore | Tenant> = Layer.effect(
  EventStore,
  Effect.flatMap(Effect.all([EventStore, Tenant]), ([store, tenant]) => eventStore(store, tenant.id))
)

/** The `SnapshotStore` of the `Tenant` in context. @since 0.1.0 */
export const layerSnapshots: Layer.Layer<SnapshotStore, InvalidInput, SnapshotStore | Tenant> = Layer.effect(
  SnapshotStore,
  Effect.flatMap(Effect.all([SnapshotStore, Tenant]), ([store, tenant]) => snapshotStore(store, tenant.id))
)

/** The `CheckpointStore` of the `Tenant` in context. @since 0.1.0 */
export const layerCheckpoints: Layer.Layer<CheckpointStore, InvalidInput, CheckpointStore | Tenant> = Layer.effect(
  CheckpointStore,
  Effect.flatMap(Effect.all([CheckpointStore, Tenant]), ([store, tenant]) => checkpointStore(store, tenant.id))
)

// --- a database per tenant -------------------------------------------------------------------------------------------

/**
 * Tenants' databases, opened on first use: `get` gives a tenant's services for as long as the scope it is called
 * in lasts (the database stays open while any scope holds it).
 *
 * @since 0.1.0
 */
export interface Databases<ROut, E> {
  readonly get: (tenantId: string) => Effect.Effect<Context.Context<ROut>, E | InvalidInput, Scope.Scope>
  /** Runs `effect` with the tenant's services. */
  readonly provide: (
    tenantId: string
  ) => <A, E2, R>(effect: Effect.Effect<A, E2, R>) => Effect.Effect<A, E | E2 | InvalidInput, Exclude<R, ROut>>
}

/**
 * A database per tenant: `open(tenantId)` builds a tenant's services (called only with a valid tenant id, once
 * while the tenant's database is in use). Every database is closed when the scope closes; with `idleTimeToLive`,
 * also after that long unused.
 *
 * @example
 * ```ts
 * const databases = yield* Tenancy.databasePerTenant((tenantId) =>
 *   Sqlite.layer({ filename: path.join(dataDir, `${tenantId}.db`) }))
 * yield* Account.handle("1", command).pipe(
 *   Effect.provide(Aggregate.layer(Account)),
 *   databases.provide("acme")
 * )
 * ```
 *
 * @since 0.1.0
 */
export const databasePerTenant = <ROut, E>(
  open: (tenantId: string) => Layer.Layer<ROut, E>,
  options?: { readonly idleTimeToLive?: Duration.DurationInput }
): Effect.Effect<Databases<ROut, E>, never, Scope.Scope> =>
  Effect.map(
    RcMap.make({
      lookup: (tenantId: string) => Layer.build(open(tenantId)),
      ...(options?.idleTimeToLive === undefined ? {} : { idleTimeToLive: options.idleTimeToLive })
    }),
    (map): Databases<ROut, E> => {
      const get = (tenantId: string) => Effect.flatMap(validate(tenantId), (tenant) => RcMap.get(map, tenant))
      return {
        get,
        provide: (tenantId) => (effect) =>
          Effect.scoped(Effect.flatMap(get(tenantId), (context) => Effect.provide(effect, context)))
      }
    }
  )
