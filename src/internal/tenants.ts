/**
 * Tenants' views of shared stores (see `Tenancy`): the mark that says whose a service is, and the snapshot and
 * checkpoint stores of one tenant. Internal so that the command handler and the projection runner can give a
 * tenant's event store the same tenant's snapshots and checkpoints, whatever their layer provided.
 */
import * as Effect from "effect/Effect"
import * as Option from "effect/Option"
import { InvalidInput, type StoreError } from "../Errors.js"
import type { CheckpointStoreService } from "../Projection.js"
import type { SnapshotStoreService } from "../Snapshot.js"
import { databaseOf, markTenant, onDatabase, tenantOf } from "./backend.js"
import { tenantKey, userStreamId } from "./codec.js"

export { markTenant, tenantOf }

/** The snapshots of one tenant's streams, under its keys. */
export const scopeSnapshots = (store: SnapshotStoreService, tenant: string): SnapshotStoreService => {
  const key = (streamId: string) => tenantKey(tenant, streamId)
  const back = Option.map(<S extends { readonly streamId: string }>(s: S): S => ({ ...s, streamId: userStreamId(s.streamId) }))
  const scoped: SnapshotStoreService = {
    save: (snapshot) => store.save({ ...snapshot, streamId: key(snapshot.streamId) }),
    latest: (streamId) => Effect.map(store.latest(key(streamId)), back),
    atOrBefore: (streamId, version) => Effect.map(store.atOrBefore(key(streamId), version), back),
    deleteOlderThan: (streamId, version) => store.deleteOlderThan(key(streamId), version),
    stats: store.stats
  }
  const database = databaseOf(store)
  return markTenant(database === undefined ? scoped : onDatabase(scoped, database), tenant)
}

const redactParkedWithinKey = Symbol.for("effect-eventstore/redactParkedWithin")

/**
 * `CheckpointStoreService.redactParked` confined to the projections whose stored name begins with `prefix` (all when
 * `undefined`). A tenant's parked events are stored under the tenant's projection keys but with the stream's own id
 * (as its events carry it, without the tenant), so only the projection tells whose they are: a tenant's view redacts
 * through this, and never reaches another tenant's.
 */
export type RedactParkedWithin = (
  prefix: string | undefined,
  streamIds: ReadonlyArray<string>,
  reason: string
) => Effect.Effect<number, StoreError>

/** Marks a checkpoint store of the library with its confined redaction (see `RedactParkedWithin`). */
export const withRedactParkedWithin = (
  service: CheckpointStoreService,
  redact: RedactParkedWithin
): CheckpointStoreService => {
  Object.defineProperty(service, redactParkedWithinKey, { value: redact, enumerable: false })
  return service
}

/** The confined redaction a store was marked with; `undefined` for any other store (a user's own, a wrapper). */
export const redactParkedWithinOf = (service: CheckpointStoreService): RedactParkedWithin | undefined =>
  (service as { readonly [redactParkedWithinKey]?: RedactParkedWithin })[redactParkedWithinKey]

/**
 * The checkpoints of one tenant's projections, under its keys. `redactParked` only where the store can confine it to
 * the tenant's projections (the library's stores): passed on as it is, it would rewrite other tenants' parked events
 * of a stream of the same id.
 */
export const scopeCheckpoints = (store: CheckpointStoreService, tenant: string): CheckpointStoreService => {
  const key = (projection: string) => tenantKey(tenant, projection)
  const within = redactParkedWithinOf(store)
  const scoped: CheckpointStoreService = {
    exactlyOnce: store.exactlyOnce,
    acquire: (projection, owner, ttl, renew) => store.acquire(key(projection), owner, ttl, renew),
    release: (projection, owner) => store.release(key(projection), owner),
    load: (projection) => store.load(key(projection)),
    commit: (projection, owner, from, to, work, park) =>
      store.commit(key(projection), owner, from, to, work, park === undefined ? undefined : { ...park, projection: key(park.projection) }),
    migrate: (projection, id, migration) => store.migrate(key(projection), id, migration),
    reset: (projection, owner, work) => store.reset(key(projection), owner, work),
    parked: (projection) => Effect.map(store.parked(key(projection)), (rows) => rows.map((row) => ({ ...row, projection }))),
    generation: (projection) => store.generation(key(projection)),
    promote: (projection, owner, shadow, generation, work) =>
      store.promote(key(projection), owner, key(shadow), generation, work),
    discard: (projection) => store.discard(key(projection)),
    ...(within === undefined
      ? {}
      : { redactParked: (streamIds: ReadonlyArray<string>, reason: string) => within(key(""), streamIds, reason) })
  }
  const database = databaseOf(store)
  return markTenant(database === undefined ? scoped : onDatabase(scoped, database), tenant)
}

/**
 * The service to use beside an event store of `tenant` (`undefined`: the whole database's): the same one when it is
 * that tenant's (or both are the whole database's), the tenant's view of it when it is the whole database's. One of
 * another tenant is refused: a programming error, a defect.
 */
export const alongside = <A extends object>(
  service: A,
  tenant: string | undefined,
  scope: (service: A, tenant: string) => A,
  what: string
): Effect.Effect<A> => {
  const own = tenantOf(service)
  if (own === tenant) return Effect.succeed(service)
  if (own === undefined && tenant !== undefined) return Effect.succeed(scope(service, tenant))
  return Effect.die(
    new InvalidInput({
      field: what,
      reason: `is tenant ${JSON.stringify(own)}'s, beside an event store of ${
        tenant === undefined ? "the whole database" : `tenant ${JSON.stringify(tenant)}`
      }`
    })
  )
}
