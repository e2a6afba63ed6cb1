/**
 * effect-eventstore: event sourcing and CQRS for Effect.
 *
 * @since 0.1.0
 */

/** @since 0.1.0 */
export * as Aggregate from "./Aggregate.js"
/** @since 0.1.0 */
export * as Analytics from "./Analytics.js"
/** @since 0.1.0 */
export * as Errors from "./Errors.js"
/** @since 0.1.0 */
export * as Event from "./Event.js"
/** @since 0.1.0 */
export * as EventStore from "./EventStore.js"
/** @since 0.1.0 */
export * as Snapshot from "./Snapshot.js"
/** @since 0.1.0 */
export * as Sqlite from "./Sqlite.js"
/** @since 0.1.0 */
export * as SqlEventStore from "./SqlEventStore.js"
/** @since 0.1.0 */
export * as Telemetry from "./Telemetry.js"
/** @since 0.1.0 */
export * as Testing from "./Testing.js"
