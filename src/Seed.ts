/**
 * Seeding: bootstrap data (reference data, a migration's events) written once, however often the program runs.
 *
 * A seed is the beginning of a stream: its events are written at versions 1, 2, 3 … with ids derived from the stream,
 * the version, the event type and the payload (UUID v5), so the same seed always produces the same events. Running
 * it again writes nothing and reports the events as skipped; a seed that grew (events added at its end) writes only
 * the new ones. Each stream's missing events are one append (all of them or none, no gaps), with the store's checks:
 * expected version, unique claims, tenants. Every seeded event is tagged `seeded: "true"`, with the seed's own tags.
 *
 * @example
 * ```ts
 * const result = yield* Seed.seed([
 *   { streamId: "Currency-EUR", events: [{ type: "CurrencyDefined", payload: { code: "EUR", decimals: 2 } }] },
 *   { streamId: "Currency-JPY", events: [{ type: "CurrencyDefined", payload: { code: "JPY", decimals: 0 } }] }
 * ], { tags: { migration: "2026-11-currencies" } })
 * // first run: { saved: 2, skipped: 0, streams: 2 }; every later run: { saved: 0, skipped: 2, streams: 2 }
 * ```
 *
 * @since 0.1.0
 */
import * as Effect from "effect/Effect"
import type { NewEvent } from "./Event.js"
import { type AppendError, EventStore, type ReadError } from "./EventStore.js"
import { InvalidInput, SeedConflict } from "./Errors.js"
import { tenantOf } from "./internal/backend.js"
import { canonicalJson } from "./internal/codec.js"
import { uuidV5 } from "./internal/uuid.js"

export {
  /** @since 0.1.0 */
  SeedConflict
}

/** One stream of a seed: the events it begins with. @since 0.1.0 */
export interface SeedStream {
  readonly streamId: string
  /** Encoded events, as for `EventStore.append`; their `eventId`s are derived (one given is `InvalidInput`). */
  readonly events: ReadonlyArray<NewEvent>
  /** As for `EventStore.append`; the part of the stream id before its first `-` when omitted. */
  readonly streamType?: string
}

/** @since 0.1.0 */
export interface SeedOptions {
  /** Tags added to every seeded event's metadata, besides `seeded: "true"` (a migration's name, say). */
  readonly tags?: Readonly<Record<string, string>>
  /** Called after each stream with the totals so far. */
  readonly onProgress?: (progress: SeedProgress) => Effect.Effect<void>
}

/** @since 0.1.0 */
export interface SeedProgress {
  /** Streams done so far, of `total`. */
  readonly streams: number
  readonly total: number
  /** Events written so far. */
  readonly saved: number
  /** Events found already written so far. */
  readonly skipped: number
}

/** @since 0.1.0 */
export interface SeedResult {
  readonly streams: number
  readonly saved: number
  readonly skipped: number
}

/** Errors a seed can fail with. @since 0.1.0 */
export type SeedError = AppendError | ReadError | SeedConflict

/**
 * The id of the event a seed writes at `version` of `streamId` (of tenant `tenantId`, when the seed runs on a
 * tenant's store): the same for the same tenant, stream, version, type and payload (its JSON with keys sorted),
 * whoever computes it.
 *
 * @since 0.1.0
 */
export const eventIdOf = (
  streamId: string,
  version: number,
  event: Pick<NewEvent, "type" | "payload">,
  tenantId?: string
): string =>
  uuidV5(
    `effect-eventstore/seed\u0000${tenantId === undefined ? "" : `${tenantId}\u0000`}${streamId}\u0000${version}\u0000${event.type}\u0000${
      canonicalJson(event.payload)
    }`
  )

const seedOne = (
  stream: SeedStream,
  options: SeedOptions | undefined
): Effect.Effect<{ readonly saved: number; readonly skipped: number }, SeedError, EventStore> =>
  Effect.gen(function*() {
    const store = yield* EventStore
    const { events, streamId } = stream
    if (!Array.isArray(events) || events.length === 0) {
      return yield* new InvalidInput({ field: "events", reason: `the seed of ${JSON.stringify(streamId)} has no events` })
    }
    for (let i = 0; i < events.length; i++) {
      if (events[i]?.eventId !== undefined) {
        return yield* new InvalidInput({ field: `events[${i}].eventId`, reason: "a seed's event ids are derived" })
      }
    }
    // a tenant's seed has ids of its own (event ids are unique across the database)
    const tenant = tenantOf(store)
    const ids = events.map((event, i) => eventIdOf(streamId, i + 1, event, tenant))
    const tags = { ...options?.tags, seeded: "true" }
    for (let attempt = 1;; attempt++) {
      // what the stream already holds of the seed: a prefix of it, or a conflict
      let found = 0
      while (found < events.length) {
        const page = yield* store.readPage(streamId, { after: found, limit: Math.min(10_000, events.length - found) })
        for (const event of page) {
          if (event.eventId !== ids[found]) {
            return yield* new SeedConflict({
              streamId,
              version: event.version,
              reason: `it holds event ${event.eventId} (${event.type}) where the seed has ${ids[found]} (${events[found]!.type})`
            })
          }
          found++
        }
        if (page.length === 0) break
      }
      if (found === events.length) return { saved: 0, skipped: found }
      const rest = events.slice(found).map((event, i): NewEvent => ({
        ...event,
        eventId: ids[found + i]!,
        metadata: { ...event.metadata, tags: { ...event.metadata?.tags, ...tags } }
      }))
      const appended = yield* store.append(streamId, rest, {
        expectedVersion: found,
        ...(stream.streamType === undefined ? {} : { streamType: stream.streamType })
      }).pipe(
        // another process seeding the same stream at the same moment: look again
        Effect.catchTag("ConcurrencyError", (e) => attempt < 3 ? Effect.succeed(undefined) : Effect.fail(e))
      )
      if (appended !== undefined) return { saved: rest.length, skipped: found }
    }
  })

/**
 * Seeds streams, one after another (each all or nothing). Returns how many events were written and how many were
 * found written already.
 *
 * @since 0.1.0
 */
export const seed = (
  streams: ReadonlyArray<SeedStream>,
  options?: SeedOptions
): Effect.Effect<SeedResult, SeedError, EventStore> =>
  Effect.gen(function*() {
    let saved = 0
    let skipped = 0
    let done = 0
    for (const stream of streams) {
      const one = yield* seedOne(stream, options)
      saved += one.saved
      skipped += one.skipped
      done++
      if (options?.onProgress !== undefined) {
        yield* options.onProgress({ streams: done, total: streams.length, saved, skipped })
      }
    }
    return { streams: done, saved, skipped }
  }).pipe(Effect.withSpan("Seed.seed", { captureStackTrace: false, attributes: { "seed.streams": streams.length } }))
