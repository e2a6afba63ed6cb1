/**
 * Tenants' views of shared stores (see `Tenancy`): the mark that says whose a service is, and the snapshot and
 * checkpoint stores of one tenant. Internal so that the command handler and the projection runner can give a
 * tenant's event store the same tenant's snapshots and checkpoints, whatever their layer provided.
 */
import * as Effect from "effect/Effect"
import * as Option from "effect/Option"
import { InvalidInput } from "../Errors.js"
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

/** The checkpoints of one tenant's projections, under its keys. */
export const scopeCheckpoints = (store: CheckpointStoreService, tenant: string): CheckpointStoreService => {
  const key = (projection: string) => tenantKey(tenant, projection)
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
    discard: (projection) => store.discard(key(projection))
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
