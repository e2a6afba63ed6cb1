/**
 * What every snapshot backend shares: validation and encoding of a snapshot on its way in (so every backend refuses
 * the same input), the stored form (`StoredSnapshot`, camelCase, JSON text), and its total decoding on the way out:
 * a stored snapshot that is not what was written (malformed JSON, a column of the wrong type) is treated as absent —
 * the load replays the stream — with a warning, never a defect.
 */
import * as DateTime from "effect/DateTime"
import * as Effect from "effect/Effect"
import * as Either from "effect/Either"
import * as Option from "effect/Option"
import { InvalidInput } from "../Errors.js"
import type { NewSnapshot, Snapshot, Stats } from "../Snapshot.js"
import { checkId, checkStreamKey, limits } from "./codec.js"
import { toInteger } from "./codec.js"

/** One snapshot as backends store it. Values read back from a driver are checked by `fromStored`. */
export interface StoredSnapshot {
  readonly streamId: string
  readonly streamType: string
  readonly version: number
  readonly schemaVersion: number
  readonly state: string
  readonly analytics: string | null
  readonly sizeBytes: number
  readonly createdAt: number
}

const stringify = (value: unknown): string | undefined => {
  try {
    return JSON.stringify(value)
  } catch {
    return undefined
  }
}

/** Validates and encodes a snapshot; `now` comes from the caller's `Clock`. */
export const prepare = (snapshot: NewSnapshot, now: number): Either.Either<StoredSnapshot, InvalidInput> => {
  const bad = checkStreamKey("streamId", snapshot.streamId) ??
    checkId("streamType", snapshot.streamType, limits.idLength)
  if (bad) return Either.left(bad)
  if (!Number.isSafeInteger(snapshot.version) || snapshot.version < 1) {
    return Either.left(new InvalidInput({ field: "version", reason: "must be a positive integer" }))
  }
  if (!Number.isSafeInteger(snapshot.schemaVersion) || snapshot.schemaVersion < 1) {
    return Either.left(new InvalidInput({ field: "schemaVersion", reason: "must be a positive integer" }))
  }
  const state = stringify(snapshot.state)
  if (state === undefined) return Either.left(new InvalidInput({ field: "state", reason: "must be a JSON value" }))
  const analytics = snapshot.analytics === undefined ? undefined : stringify(snapshot.analytics)
  if (snapshot.analytics !== undefined && analytics === undefined) {
    return Either.left(new InvalidInput({ field: "analytics", reason: "must be a JSON value" }))
  }
  return Either.right({
    streamId: snapshot.streamId,
    streamType: snapshot.streamType,
    version: snapshot.version,
    schemaVersion: snapshot.schemaVersion,
    state,
    analytics: analytics ?? null,
    sizeBytes: Buffer.byteLength(state) + (analytics === undefined ? 0 : Buffer.byteLength(analytics)),
    createdAt: now
  })
}

/** A stored snapshot back as a `Snapshot`; `Left` with the reason when a column is not what was written. */
export const fromStored = (row: StoredSnapshot): Either.Either<Snapshot, string> => {
  const version = toInteger(row.version)
  const schemaVersion = toInteger(row.schemaVersion)
  const sizeBytes = toInteger(row.sizeBytes)
  const createdAt = toInteger(row.createdAt)
  if (version === undefined || version < 1) return Either.left("version is not a positive integer")
  if (schemaVersion === undefined || schemaVersion < 1) return Either.left("schema version is not a positive integer")
  if (sizeBytes === undefined || createdAt === undefined) return Either.left("size or creation time is not an integer")
  if (typeof row.state !== "string" || (row.analytics !== null && typeof row.analytics !== "string")) {
    return Either.left("state or analytics is not JSON text")
  }
  try {
    return Either.right({
      streamId: String(row.streamId),
      streamType: String(row.streamType),
      version,
      schemaVersion,
      state: JSON.parse(row.state),
      analytics: row.analytics === null ? undefined : JSON.parse(row.analytics),
      sizeBytes,
      createdAt: DateTime.unsafeMake(createdAt)
    })
  } catch (cause) {
    return Either.left(`stored JSON is malformed: ${String(cause)}`)
  }
}

/** A stored snapshot that cannot be decoded is treated as absent (and the load replays), with a warning. */
export const decodeStored = (row: StoredSnapshot | undefined): Effect.Effect<Option.Option<Snapshot>> => {
  if (row === undefined) return Effect.succeed(Option.none())
  const decoded = fromStored(row)
  return Either.isRight(decoded)
    ? Effect.succeed(Option.some(decoded.right))
    : Effect.as(
      Effect.logWarning("snapshot ignored: the stored row cannot be decoded").pipe(
        Effect.annotateLogs({ "aggregate.id": String(row.streamId), "snapshot.version": String(row.version), reason: decoded.left })
      ),
      Option.none()
    )
}

export const statsOf = (rows: ReadonlyArray<Pick<StoredSnapshot, "streamId" | "sizeBytes" | "createdAt">>): Stats => {
  let totalBytes = 0
  let oldest: number | undefined
  let newest: number | undefined
  const streams = new Set<string>()
  for (const row of rows) {
    totalBytes += Number(row.sizeBytes)
    streams.add(row.streamId)
    const at = Number(row.createdAt)
    if (oldest === undefined || at < oldest) oldest = at
    if (newest === undefined || at > newest) newest = at
  }
  return {
    count: rows.length,
    aggregates: streams.size,
    totalBytes,
    averageBytes: rows.length === 0 ? 0 : totalBytes / rows.length,
    oldest: Option.map(Option.fromNullable(oldest), DateTime.unsafeMake),
    newest: Option.map(Option.fromNullable(newest), DateTime.unsafeMake)
  }
}

export const span = (streamId?: string) => ({
  captureStackTrace: false,
  attributes: streamId === undefined ? {} : { "aggregate.id": streamId }
})
