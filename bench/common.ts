/** What the benchmark files share: medians, percentiles, the raw single-event insert, the warm-up and stream count. */

/** The raw insert of one event, as the library's schema has it. */
export const INSERT = `INSERT INTO eventstore_events (event_id, stream_id, stream_type, version, event_type, schema_version,
  payload, metadata, tenant_id, recorded_at) VALUES (?, ?, ?, ?, ?, 1, ?, NULL, NULL, ?)`

/**
 * Appends and commands run untimed at the start of each round, raw and library alike: each round opens a new file
 * (and the library a new runtime), and what is measured is the steady state of a running service, not the first
 * calls of a connection (a cold page cache, first calls through new closures).
 */
export const WARMUP = 20

/** Streams the append benches spread their appends over. */
export const STREAMS = 100

export const median = (xs: ReadonlyArray<number>) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!

export const percentile = (xs: ReadonlyArray<number>, p: number) =>
  [...xs].sort((a, b) => a - b)[Math.floor(p * (xs.length - 1))]!
