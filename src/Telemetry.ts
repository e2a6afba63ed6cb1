/**
 * The names of what the library reports: span names and attributes (see each operation) and metrics. Metrics are
 * Effect `Metric`s, so any metrics layer (OpenTelemetry, Prometheus) exports them. Spans are created when a tracer
 * is installed (an OpenTelemetry layer, DevTools, `Layer.setTracer`); with Effect's built-in tracer, which exports
 * nothing, the library creates none (they cost more than the work they would describe).
 *
 * @since 0.1.0
 */
import * as Metric from "effect/Metric"
import * as MetricBoundaries from "effect/MetricBoundaries"

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
export const busPublished = Metric.counter("eventstore_bus_published_total", {
  description: "Events published to the event bus and acknowledged",
  incremental: true
})

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
