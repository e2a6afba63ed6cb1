/**
 * The names of what the library reports: span names and attributes (see each operation) and metrics. Metrics are
 * Effect `Metric`s, so any metrics layer (OpenTelemetry, Prometheus) exports them; their Effect tags become
 * OpenTelemetry attributes. Tagged instruments carry bounded values only (aggregate, stream, event and command types,
 * operations, outcomes, bus and consumer names), never ids: read one series with `Metric.tagged`, e.g.
 * `Metric.value(Telemetry.commands.pipe(Metric.tagged("aggregate_type", "Account"), ...))`. The spans of the command
 * path, read pages, snapshots, the bus and Cqrs are created only when a tracer is installed (an OpenTelemetry layer,
 * DevTools, `Layer.setTracer`): with Effect's built-in tracer, which exports nothing, they would cost more than the
 * work they describe. A few coarse spans are created whatever the tracer (`EventStore.read`, `readAll` and
 * `subscribe` around a whole stream, migrations, seeding, credentials): see the README's Telemetry section.
 *
 * Trace context crosses processes in W3C `traceparent` / `tracestate` headers: the JetStream bus writes them on every
 * message from its `Bus.publish` span and a consumer's `Bus.handle <consumer>` span continues that trace; `Cqrs` over
 * NATS does the same for requests (`Cqrs.request …` → `Cqrs.command …`).
 *
 * @since 0.1.0
 */
import * as Metric from "effect/Metric"
import * as MetricBoundaries from "effect/MetricBoundaries"
import { keys } from "./internal/instruments.js"

/**
 * Commits made by the SQL store's writer (one per group of appends).
 *
 * @since 0.1.0
 */
export const commits = Metric.counter("eventstore_commits_total", {
  description: "Transactions committed by the event store writer",
  incremental: true
})

/**
 * Appends written (each in some commit).
 *
 * @since 0.1.0
 */
export const appends = Metric.counter("eventstore_appends_total", {
  description: "Appends written by the event store",
  incremental: true
})

/**
 * How many appends shared each commit.
 *
 * @since 0.1.0
 */
export const groupSize = Metric.histogram(
  "eventstore_commit_group_size",
  MetricBoundaries.exponential({ start: 1, factor: 2, count: 10 }),
  "Appends per commit"
)

/**
 * Appends refused because the stream was not at the expected version.
 *
 * @since 0.1.0
 */
export const conflicts = Metric.counter("eventstore_append_conflicts_total", {
  description: "Appends refused with ConcurrencyError",
  incremental: true
})

/**
 * Commands that had to load and decide again after a conflict (one per retry).
 *
 * @since 0.1.0
 */
export const commandRetries = Metric.counter("eventstore_command_retries_total", {
  description: "Command handler retries after a ConcurrencyError",
  incremental: true
})

/**
 * Snapshots written by aggregates' snapshot policies (and on demand).
 *
 * @since 0.1.0
 */
export const snapshotsWritten = Metric.counter("eventstore_snapshots_written_total", {
  description: "Snapshots written",
  incremental: true
})

/**
 * Snapshot writes that failed (the command that triggered them had already succeeded).
 *
 * @since 0.1.0
 */
export const snapshotFailures = Metric.counter("eventstore_snapshot_failures_total", {
  description: "Snapshot writes that failed",
  incremental: true
})

/**
 * Snapshots ignored on load (old schema version without an upcaster, undecodable state): the load replayed instead.
 *
 * @since 0.1.0
 */
export const snapshotsIgnored = Metric.counter("eventstore_snapshots_ignored_total", {
  description: "Snapshots ignored on load",
  incremental: true
})

/**
 * Events a projection has dealt with (handled, or skipped because it has no handler for their type or stream type),
 * tagged `projection`.
 *
 * @since 0.1.0
 */
export const projectionEvents = Metric.counter("eventstore_projection_events_total", {
  description: "Events a projection has dealt with",
  incremental: true
})

/**
 * A projection's checkpoint: the position of the last event it has dealt with, tagged `projection`.
 *
 * @since 0.1.0
 */
export const projectionCheckpoint = Metric.gauge("eventstore_projection_checkpoint", {
  description: "Position of the last event a projection has dealt with"
})

/**
 * How many positions a projection is behind the head of the log (an upper bound: positions may have holes), tagged
 * `projection`.
 *
 * @since 0.1.0
 */
export const projectionLag = Metric.gauge("eventstore_projection_lag_events", {
  description: "Head of the log minus a projection's checkpoint"
})

/**
 * Times a projection stopped on a failure (after its retries), tagged `projection`.
 *
 * @since 0.1.0
 */
export const projectionFailures = Metric.counter("eventstore_projection_failures_total", {
  description: "Times a projection moved to failed",
  incremental: true
})

/**
 * PostgreSQL: committed events that readers (`readAll`, subscriptions, projections) do not hand out yet, because a
 * transaction that began before theirs is still running (see `Postgres`); measured when a reader catches up.
 *
 * @since 0.1.0
 */
export const heldBack = Metric.gauge("eventstore_held_back_events", {
  description: "Committed events held back behind a running transaction"
})

/**
 * 1 while the NATS connection is up, 0 while it is disconnected (reconnecting) or closed.
 *
 * @since 0.1.0
 */
export const natsConnected = Metric.gauge("eventstore_nats_connected", {
  description: "Whether the NATS connection is up (1) or not (0)"
})

/**
 * Reconnects of the NATS connection.
 *
 * @since 0.1.0
 */
export const natsReconnects = Metric.counter("eventstore_nats_reconnects_total", {
  description: "Reconnects of the NATS connection",
  incremental: true
})

/**
 * Events published to the bus (acknowledged), tagged by `bus` (the stream name, or `memory`).
 *
 * @since 0.1.0
 */
export const busPublished = Metric.fromMetricKey(keys.busPublished)

/**
 * Deliveries a bus consumer handled, tagged by `consumer` and `outcome` (`ack`, `skip`, `duplicate`, `nak`,
 * `dead-letter`).
 *
 * @since 0.1.0
 */
export const busDeliveries = Metric.counter("eventstore_bus_deliveries_total", {
  description: "Deliveries handled by event bus consumers, by outcome",
  incremental: true
})

// --- tagged instruments ----------------------------------------------------------------------------------------------
// Each series below carries its attributes as Effect metric tags (OpenTelemetry attributes once exported). Values are
// bounded: aggregate, stream, event and command types, operations and outcomes; never an id.

/**
 * How long each aggregate command took (`Aggregate.handle`: load, decide, append, the retries after conflicts), in
 * seconds, tagged `aggregate_type`, `command_type` (the command's `_tag`, else its `typeof`) and `outcome`:
 * `success`; `rejected` (the decider's own error, or `UniqueConstraintViolation`: a unique value another stream
 * holds); `conflict` (`ConcurrencyError` after the retries); `error` (any other library error, a defect, an
 * interruption).
 *
 * @since 0.1.0
 */
export const commandDuration = Metric.fromMetricKey(keys.commandDuration)

/**
 * Aggregate commands handled, tagged like {@link commandDuration}.
 *
 * @since 0.1.0
 */
export const commands = Metric.fromMetricKey(keys.commands)

/**
 * Events appended, tagged `aggregate_type` (the stream type of the append). Counted by the store for every append
 * (commands and direct `EventStore.append` calls) on stores that report it (see the README); a command id's replay
 * appends nothing and counts nothing.
 *
 * @since 0.1.0
 */
export const eventsAppended = Metric.fromMetricKey(keys.eventsAppended)

/**
 * How long each call of the event store took, in seconds, tagged `operation`: `append`, `read` (a page of one
 * stream, for `read` and `readPage`), `readAll` and `subscribe` (a page of the log), `fold` (a page of the lean
 * read of an aggregate load), `version`, `head`, `command` (the look-up of a command id's record). Reported by the
 * stores that report it (see the README).
 *
 * @since 0.1.0
 */
export const storeLatency = Metric.fromMetricKey(keys.storeLatency)

/**
 * Loads of an aggregate's state (each command's load, again after a stale cached state; `Aggregate.load`;
 * `Aggregate.snapshot`), tagged `aggregate_type` and `source`: where the load started (`replay`: from the first
 * event; `snapshot`; `cache`: the state cache).
 *
 * @since 0.1.0
 */
export const aggregateLoads = Metric.fromMetricKey(keys.aggregateLoads)

/**
 * Loads of an aggregate with a snapshot policy that started from its latest snapshot, tagged `aggregate_type`.
 *
 * @since 0.1.0
 */
export const snapshotHits = Metric.fromMetricKey(keys.snapshotHits)

/**
 * Loads of an aggregate with a snapshot policy that found no snapshot, or one it could not use (then
 * {@link snapshotsIgnored} counts it too), tagged `aggregate_type`. A load that starts from the state cache
 * looks for no snapshot and counts in neither.
 *
 * @since 0.1.0
 */
export const snapshotMisses = Metric.fromMetricKey(keys.snapshotMisses)

/**
 * How long the bus took to acknowledge each published event, in seconds, tagged `bus` (the stream name, or
 * `memory`), `stream_type` and `event_type`.
 *
 * @since 0.1.0
 */
export const busPublishLatency = Metric.fromMetricKey(keys.busPublishLatency)

/**
 * Events through the bus, tagged `bus`, `direction` (`publish`: acknowledged by the bus; `consume`: handed to a
 * consumer's handler), `stream_type` and `event_type`.
 *
 * @since 0.1.0
 */
export const busMessages = Metric.fromMetricKey(keys.busMessages)
