/**
 * Snapshots: the `SnapshotStore` contract and its memory layer (the SQL store is `SqlSnapshotStore`), the snapshot
 * policy an aggregate chooses, and the schema-versioned codec of its state. Loading from a snapshot is an optimisation
 * that must never change what `decide` sees, so every problem with a snapshot (an old schema version without an
 * upcaster, a state that no longer decodes) makes the load fall back to a full replay, with a warning.
 *
 * @since 0.1.0
 */
import * as Context from "effect/Context"
import * as DateTime from "effect/DateTime"
import * as Effect from "effect/Effect"
import * as Either from "effect/Either"
import * as Layer from "effect/Layer"
import * as Option from "effect/Option"
import * as ParseResult from "effect/ParseResult"
import * as Schema from "effect/Schema"
import * as Analytics from "./Analytics.js"
import { InvalidInput, type StoreError } from "./Errors.js"
import { decodeStored, prepare, span, statsOf, type StoredSnapshot } from "./internal/snapshotRows.js"
import * as Tracing from "./internal/tracing.js"

/**
 * A stored snapshot. `state` and `analytics` are the encoded (JSON) values.
 *
 * @since 0.1.0
 */
export interface Snapshot {
  readonly streamId: string
  readonly streamType: string
  /** The stream version the state reflects. */
  readonly version: number
  /** The version of the state's schema that encoded `state`. */
  readonly schemaVersion: number
  readonly state: unknown
  readonly analytics: unknown
  readonly sizeBytes: number
  readonly createdAt: DateTime.Utc
}

/** @since 0.1.0 */
export interface NewSnapshot {
  readonly streamId: string
  readonly streamType: string
  readonly version: number
  readonly schemaVersion: number
  readonly state: unknown
  readonly analytics?: unknown
}

/** @since 0.1.0 */
export interface Stats {
  readonly count: number
  /** Streams with at least one snapshot. */
  readonly aggregates: number
  readonly totalBytes: number
  readonly averageBytes: number
  readonly oldest: Option.Option<DateTime.Utc>
  readonly newest: Option.Option<DateTime.Utc>
}

/** @since 0.1.0 */
export interface SnapshotStoreService {
  /** Saves a snapshot; saving the same stream and version again replaces it. */
  readonly save: (snapshot: NewSnapshot) => Effect.Effect<void, InvalidInput | StoreError>
  /** The newest snapshot of a stream. */
  readonly latest: (streamId: string) => Effect.Effect<Option.Option<Snapshot>, StoreError>
  /** The newest snapshot at or before `version`. */
  readonly atOrBefore: (streamId: string, version: number) => Effect.Effect<Option.Option<Snapshot>, StoreError>
  /** Deletes the stream's snapshots older than `version` (not `version` itself); returns how many. */
  readonly deleteOlderThan: (streamId: string, version: number) => Effect.Effect<number, StoreError>
  readonly stats: Effect.Effect<Stats, StoreError>
}

/** @since 0.1.0 */
export class SnapshotStore extends Context.Tag("effect-eventstore/SnapshotStore")<SnapshotStore, SnapshotStoreService>() {}

// --- memory --------------------------------------------------------------------------------------------------------

/**
 * Snapshots in memory, for tests.
 *
 * @since 0.1.0
 */
export const makeMemory: Effect.Effect<SnapshotStoreService> = Effect.sync(() => {
  const byStream = new Map<string, Array<StoredSnapshot>>() // ascending by version
  const save: SnapshotStoreService["save"] = (snapshot) =>
    Effect.clockWith((clock) => {
      const row = prepare(snapshot, clock.unsafeCurrentTimeMillis())
      if (Either.isLeft(row)) return Effect.fail(row.left)
      const rows = (byStream.get(snapshot.streamId) ?? []).filter((r) => r.version !== snapshot.version)
      rows.push(row.right)
      rows.sort((a, b) => a.version - b.version)
      byStream.set(snapshot.streamId, rows)
      return Effect.void
    }).pipe((effect) => Tracing.withSpan(effect, "SnapshotStore.save", () => span(snapshot.streamId)))
  const atOrBefore: SnapshotStoreService["atOrBefore"] = (streamId, version) =>
    Effect.suspend(() => decodeStored((byStream.get(streamId) ?? []).filter((r) => r.version <= version).at(-1)))
  return SnapshotStore.of({
    save,
    latest: (streamId) => atOrBefore(streamId, Number.MAX_SAFE_INTEGER),
    atOrBefore,
    deleteOlderThan: (streamId, version) =>
      Effect.sync(() => {
        const rows = byStream.get(streamId) ?? []
        const kept = rows.filter((r) => r.version >= version)
        byStream.set(streamId, kept)
        return rows.length - kept.length
      }),
    stats: Effect.sync(() => statsOf([...byStream.values()].flat()))
  })
})

/** @since 0.1.0 */
export const layerMemory: Layer.Layer<SnapshotStore> = Layer.effect(SnapshotStore, makeMemory)

// --- policy and codec ----------------------------------------------------------------------------------------------

/**
 * How an aggregate snapshots its state.
 *
 * @example
 * ```ts
 * Aggregate.make({ name, events, decider, snapshots: { schema: AccountState, every: 100 } })
 * ```
 *
 * @since 0.1.0
 */
export interface Policy<State> {
  /** Encodes the state for storage and decodes it back. */
  readonly schema: Schema.Schema<State, any, never>
  /** A snapshot after every `every` events (when an append crosses a multiple of it), or only on demand. */
  readonly every: number | "on-demand"
  /** The version of `schema`; bump it when the state's shape changes. Default 1. */
  readonly version?: number
  /**
   * `"background"` (default): a snapshot due after a command is written in a fiber of the aggregate's layer, and the
   * command returns without waiting. `"inline"`: the command waits for the write (its failure is still only logged
   * and counted, never the command's).
   */
  readonly write?: "inline" | "background"
  /** Lifts a state encoded by an older `version` to the current encoded shape. Without it, old snapshots are ignored. */
  readonly upcast?: (state: unknown, fromVersion: number) => unknown
}

/**
 * The state and analytics a snapshot holds, decoded with the policy; `Left` with the reason it cannot be used.
 *
 * @since 0.1.0
 */
export const decode = <State>(
  policy: Policy<State>,
  snapshot: Snapshot
): Either.Either<{ readonly state: State; readonly analytics: Analytics.Analytics | undefined }, string> => {
  const current = policy.version ?? 1
  let encoded = snapshot.state
  if (snapshot.schemaVersion !== current) {
    if (snapshot.schemaVersion > current || policy.upcast === undefined) {
      return Either.left(`snapshot schema version ${snapshot.schemaVersion}, policy has ${current}`)
    }
    try {
      encoded = policy.upcast(encoded, snapshot.schemaVersion)
    } catch (cause) {
      return Either.left(`snapshot upcaster failed: ${String(cause)}`)
    }
  }
  const state = Schema.decodeUnknownEither(policy.schema)(encoded)
  if (Either.isLeft(state)) return Either.left(ParseResult.TreeFormatter.formatErrorSync(state.left))
  if (snapshot.analytics === undefined) return Either.right({ state: state.right, analytics: undefined })
  const analytics = Schema.decodeUnknownEither(Analytics.Analytics)(snapshot.analytics)
  if (Either.isLeft(analytics)) return Either.left(ParseResult.TreeFormatter.formatErrorSync(analytics.left))
  return Either.right({ state: state.right, analytics: analytics.right })
}

/**
 * Encodes a state (and analytics) for `SnapshotStore.save`.
 *
 * @since 0.1.0
 */
export const encode = <State>(
  policy: Policy<State>,
  state: State,
  analytics: Analytics.Analytics | undefined
): Either.Either<{ readonly state: unknown; readonly analytics: unknown; readonly schemaVersion: number }, InvalidInput> =>
  Either.mapLeft(
    Either.all({
      state: Schema.encodeEither(policy.schema)(state),
      analytics: analytics === undefined ? Either.right(undefined) : Schema.encodeEither(Analytics.Analytics)(analytics)
    }),
    (error) => new InvalidInput({ field: "state", reason: ParseResult.TreeFormatter.formatErrorSync(error) })
  ).pipe(Either.map((encoded) => ({ ...encoded, schemaVersion: policy.version ?? 1 })))
