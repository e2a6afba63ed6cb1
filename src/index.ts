/**
 * effect-eventstore: event sourcing and CQRS for Effect. The root holds the backend-free modules only; backends
 * (`effect-eventstore/Sqlite`, `effect-eventstore/SqlEventStore`, `effect-eventstore/SqlSnapshotStore`) are reached
 * by their subpath, so importing the root loads no native module.
 *
 * @since 0.1.0
 */

/** @since 0.1.0 */
export * as Aggregate from "./Aggregate.js"
/** @since 0.1.0 */
export * as Analytics from "./Analytics.js"
/** @since 0.1.0 */
export * as Bus from "./Bus.js"
/** @since 0.1.0 */
export * as Errors from "./Errors.js"
/** @since 0.1.0 */
export * as Event from "./Event.js"
/** @since 0.1.0 */
export * as EventStore from "./EventStore.js"
/** @since 0.1.0 */
export * as Health from "./Health.js"
/** @since 0.1.0 */
export * as KeyStore from "./KeyStore.js"
export * as Operator from "./Operator.js"
/** @since 0.1.0 */
export * as Privacy from "./Privacy.js"
/** @since 0.1.0 */
export * as Projection from "./Projection.js"
/** @since 0.1.0 */
export * as Seed from "./Seed.js"
/** @since 0.1.0 */
export * as Snapshot from "./Snapshot.js"
/** @since 0.1.0 */
export * as StateCache from "./StateCache.js"
/** @since 0.1.0 */
export * as Tenancy from "./Tenancy.js"
/** @since 0.1.0 */
export * as Telemetry from "./Telemetry.js"
/** @since 0.1.0 */
export * as Testing from "./Testing.js"
