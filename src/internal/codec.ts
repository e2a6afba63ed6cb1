/**
 * What every backend shares on the way in and out: input validation and encoding of an append (so every backend
 * rejects the same inputs before writing anything), and the stored row format with its decoding into
 * `RecordedEvent`s (so a corrupt row fails the same way everywhere).
 */
import * as DateTime from "effect/DateTime"
import * as Either from "effect/Either"
import type { ExpectedVersion } from "../Errors.js"
import { EventDecodeError, InvalidInput } from "../Errors.js"
import type { Metadata, NewEvent, RecordedEvent } from "../Event.js"
import { uuidV7 } from "./uuid.js"

/** Limits on what an append may carry. */
export const limits = {
  idLength: 256,
  eventIdLength: 128,
  typeLength: 256,
  payloadBytes: 1024 * 1024,
  metadataBytes: 64 * 1024
} as const

/**
 * One event as every backend stores it: the payload and metadata as JSON text. What a driver hands back is checked
 * by `fromStored` before anything trusts it (a `bigint` column arrives from `pg` as a string).
 */
export interface StoredEvent {
  readonly position: number
  readonly eventId: string
  readonly streamId: string
  readonly streamType: string
  readonly version: number
  readonly type: string
  readonly schemaVersion: number
  readonly payload: string
  readonly metadata: string | null
  readonly recordedAt: number
}

export interface PreparedEvent {
  readonly eventId: string
  readonly type: string
  readonly schemaVersion: number
  readonly payload: unknown
  readonly payloadJson: string
  readonly metadata: Metadata
  readonly metadataJson: string | null
  readonly tenantId: string | null
}

/** An append that passed validation: everything a backend needs to write it. */
export interface PreparedAppend {
  readonly streamId: string
  readonly streamType: string
  readonly expected: ExpectedVersion
  readonly recordedAt: number
  readonly events: ReadonlyArray<PreparedEvent>
}

export interface AppendInput {
  readonly expectedVersion?: ExpectedVersion | undefined
  readonly streamType?: string | undefined
  readonly metadata?: Metadata | undefined
}

// C0 controls, DEL and C1 controls.
const CONTROL = /[\u0000-\u001f\u007f-\u009f]/

export const checkId = (field: string, value: unknown, max: number): InvalidInput | undefined => {
  if (typeof value !== "string" || value.length === 0) return new InvalidInput({ field, reason: "must be a non-empty string" })
  if (value.length > max) return new InvalidInput({ field, reason: `longer than ${max} characters` })
  if (CONTROL.test(value)) return new InvalidInput({ field, reason: "contains control characters" })
  return undefined
}

/**
 * The stream type of a stream id without an explicit one: the part before the first `-` (the category, as in
 * `Account-42`), or the whole id.
 */
export const categoryOf = (streamId: string): string => {
  const dash = streamId.indexOf("-")
  return dash > 0 ? streamId.slice(0, dash) : streamId
}

const EMPTY_METADATA: Metadata = Object.freeze({})

const isEmpty = (m: Metadata) => {
  for (const _ in m) return false
  return true
}

const mergeMetadata = (base: Metadata | undefined, own: Metadata | undefined): Metadata => {
  if (own === undefined || isEmpty(own)) return base ?? EMPTY_METADATA
  if (base === undefined || isEmpty(base)) return own
  const tags = base.tags !== undefined && own.tags !== undefined ? { ...base.tags, ...own.tags } : own.tags ?? base.tags
  return tags === undefined ? { ...base, ...own } : { ...base, ...own, tags }
}

const METADATA_KEYS = new Set(["correlationId", "causationId", "tenantId", "principalId", "tags"])

const checkMetadata = (metadata: Metadata): InvalidInput | undefined => {
  if (typeof metadata !== "object" || metadata === null || Array.isArray(metadata)) {
    return new InvalidInput({ field: "metadata", reason: "must be an object" })
  }
  for (const key in metadata) {
    if (!METADATA_KEYS.has(key)) return new InvalidInput({ field: `metadata.${key}`, reason: "is not a metadata field" })
  }
  for (const key of ["correlationId", "causationId", "tenantId", "principalId"] as const) {
    const value = metadata[key]
    if (value !== undefined && typeof value !== "string") {
      return new InvalidInput({ field: `metadata.${key}`, reason: "must be a string" })
    }
  }
  if (metadata.tags !== undefined) {
    if (typeof metadata.tags !== "object" || metadata.tags === null) {
      return new InvalidInput({ field: "metadata.tags", reason: "must be a record of strings" })
    }
    for (const key in metadata.tags) {
      if (typeof metadata.tags[key] !== "string") {
        return new InvalidInput({ field: `metadata.tags.${key}`, reason: "must be a string" })
      }
    }
  }
  return undefined
}

const isExpectedVersion = (u: unknown): u is ExpectedVersion =>
  u === "any" || u === "no-stream" || u === "stream-exists" ||
  (typeof u === "number" && Number.isSafeInteger(u) && u >= 0)

/** JSON has no NaN or Infinity (`JSON.stringify` writes `null`): a payload holding one would not read back. */
const hasNonFinite = (value: unknown, depth = 0): boolean => {
  if (typeof value === "number") return !Number.isFinite(value)
  if (typeof value !== "object" || value === null || depth > 64) return false
  if (Array.isArray(value)) {
    for (const item of value) if (hasNonFinite(item, depth + 1)) return true
    return false
  }
  for (const key in value) if (hasNonFinite((value as Record<string, unknown>)[key], depth + 1)) return true
  return false
}

const stringify = (value: unknown): string | undefined => {
  try {
    return JSON.stringify(value)
  } catch {
    return undefined
  }
}

/** Validates and encodes an append. Pure: `recordedAt` comes from the caller's `Clock`. */
export const prepareAppend = (
  streamId: string,
  events: ReadonlyArray<NewEvent>,
  options: AppendInput | undefined,
  recordedAt: number
): Either.Either<PreparedAppend, InvalidInput> => {
  const badStream = checkId("streamId", streamId, limits.idLength)
  if (badStream) return Either.left(badStream)
  const streamType = options?.streamType ?? categoryOf(streamId)
  const badType = checkId("streamType", streamType, limits.idLength)
  if (badType) return Either.left(badType)
  const expected = options?.expectedVersion ?? "any"
  if (!isExpectedVersion(expected)) {
    return Either.left(
      new InvalidInput({
        field: "expectedVersion",
        reason: `must be "any", "no-stream", "stream-exists" or a non-negative integer`
      })
    )
  }
  if (!Array.isArray(events) || events.length === 0) {
    return Either.left(new InvalidInput({ field: "events", reason: "an append needs at least one event" }))
  }
  if (options?.metadata !== undefined) {
    const bad = checkMetadata(options.metadata)
    if (bad) return Either.left(bad)
  }
  const prepared: Array<PreparedEvent> = new Array(events.length)
  const ids = events.length > 1 ? new Set<string>() : undefined
  for (let i = 0; i < events.length; i++) {
    const event = events[i]!
    const field = `events[${i}]`
    if (typeof event !== "object" || event === null) {
      return Either.left(new InvalidInput({ field, reason: "must be an object with a type and a payload" }))
    }
    const badEventType = checkId(`${field}.type`, event.type, limits.typeLength)
    if (badEventType) return Either.left(badEventType)
    let eventId: string
    if (event.eventId === undefined) {
      eventId = uuidV7(recordedAt)
    } else {
      const badId = checkId(`${field}.eventId`, event.eventId, limits.eventIdLength)
      if (badId) return Either.left(badId)
      eventId = event.eventId
    }
    if (ids !== undefined) {
      if (ids.has(eventId)) {
        return Either.left(new InvalidInput({ field: `${field}.eventId`, reason: `${eventId} appears twice` }))
      }
      ids.add(eventId)
    }
    const schemaVersion = event.schemaVersion ?? 1
    if (!Number.isSafeInteger(schemaVersion) || schemaVersion < 1) {
      return Either.left(new InvalidInput({ field: `${field}.schemaVersion`, reason: "must be a positive integer" }))
    }
    const payloadJson = stringify(event.payload)
    if (
      payloadJson === undefined || typeof event.payload !== "object" || event.payload === null ||
      Array.isArray(event.payload)
    ) {
      return Either.left(new InvalidInput({ field: `${field}.payload`, reason: "must be a JSON object" }))
    }
    if (hasNonFinite(event.payload)) {
      return Either.left(new InvalidInput({ field: `${field}.payload`, reason: "holds NaN or Infinity, which JSON cannot store" }))
    }
    if (payloadJson.length * 3 > limits.payloadBytes && Buffer.byteLength(payloadJson) > limits.payloadBytes) {
      return Either.left(
        new InvalidInput({ field: `${field}.payload`, reason: `larger than ${limits.payloadBytes} bytes` })
      )
    }
    if (event.metadata !== undefined) {
      const bad = checkMetadata(event.metadata)
      if (bad) return Either.left(bad)
    }
    const metadata = mergeMetadata(options?.metadata, event.metadata)
    let metadataJson: string | null = null
    if (metadata !== EMPTY_METADATA) {
      const json = stringify(metadata)
      if (json === undefined) {
        return Either.left(new InvalidInput({ field: `${field}.metadata`, reason: "must be serializable as JSON" }))
      }
      metadataJson = json
      if (metadataJson.length > limits.metadataBytes) {
        return Either.left(
          new InvalidInput({ field: `${field}.metadata`, reason: `larger than ${limits.metadataBytes} bytes` })
        )
      }
    }
    prepared[i] = {
      eventId,
      type: event.type,
      schemaVersion,
      payload: event.payload,
      payloadJson,
      metadata,
      metadataJson,
      tenantId: metadata.tenantId ?? null
    }
  }
  return Either.right({ streamId, streamType, expected, recordedAt, events: prepared })
}

/** The events of an append as they were recorded, given the version and position of its first event. */
export const recorded = (
  append: PreparedAppend,
  positions: ReadonlyArray<number>,
  firstVersion: number
): Array<RecordedEvent> => {
  const recordedAt = DateTime.unsafeMake(append.recordedAt)
  return append.events.map((event, i) => ({
    eventId: event.eventId,
    streamId: append.streamId,
    streamType: append.streamType,
    version: firstVersion + i,
    position: positions[i]!,
    type: event.type,
    schemaVersion: event.schemaVersion,
    payload: event.payload,
    metadata: event.metadata,
    recordedAt
  }))
}

// Events appended together share their timestamp; reading them back, they share one (immutable) DateTime.
let lastMillis = Number.NaN
let lastDateTime: DateTime.Utc = DateTime.unsafeMake(0)
const dateTimeOf = (millis: number): DateTime.Utc => {
  if (millis !== lastMillis) {
    lastMillis = millis
    lastDateTime = DateTime.unsafeMake(millis)
  }
  return lastDateTime
}

/**
 * A driver's integer as a number: numbers that are safe integers, and the decimal strings (or bigints) drivers use
 * for 64-bit columns; `undefined` for anything else.
 */
export const toInteger = (value: unknown): number | undefined => {
  if (typeof value === "number") return Number.isSafeInteger(value) ? value : undefined
  if (typeof value === "bigint") {
    const n = Number(value)
    return Number.isSafeInteger(n) ? n : undefined
  }
  if (typeof value === "string" && /^-?[0-9]{1,16}$/.test(value)) {
    const n = Number(value)
    return Number.isSafeInteger(n) ? n : undefined
  }
  return undefined
}

const isPlainObject = (u: unknown): u is Record<string, unknown> =>
  typeof u === "object" && u !== null && !Array.isArray(u)

/**
 * Decodes a stored event. Total: a row whose columns are not what the store writes (malformed JSON, a version or
 * timestamp that is not an integer, a payload that is not a JSON object) is an `EventDecodeError` naming the row.
 */
export const fromStored = (row: StoredEvent): Either.Either<RecordedEvent, EventDecodeError> => {
  const position = toInteger(row.position)
  const version = toInteger(row.version)
  const streamId = typeof row.streamId === "string" ? row.streamId : String(row.streamId)
  const type = typeof row.type === "string" ? row.type : String(row.type)
  const fail = (reason: string) =>
    Either.left(
      new EventDecodeError({
        streamId,
        version: version ?? -1,
        position: position ?? -1,
        type,
        reason
      })
    )
  if (position === undefined || position < 1) return fail(`stored position ${String(row.position)} is not a positive integer`)
  if (version === undefined || version < 1) return fail(`stored version ${String(row.version)} is not a positive integer`)
  const schemaVersion = toInteger(row.schemaVersion)
  if (schemaVersion === undefined || schemaVersion < 1) {
    return fail(`stored schema version ${String(row.schemaVersion)} is not a positive integer`)
  }
  const recordedAt = toInteger(row.recordedAt)
  if (recordedAt === undefined || Math.abs(recordedAt) > 8.64e15) return fail(`stored recorded_at ${String(row.recordedAt)} is not a timestamp in milliseconds`)
  if (typeof row.eventId !== "string" || typeof row.streamType !== "string") return fail("stored ids are not text")
  if (typeof row.payload !== "string") return fail("stored payload is not JSON text")
  if (row.metadata !== null && typeof row.metadata !== "string") return fail("stored metadata is not JSON text")
  let payload: unknown
  let metadata: unknown
  try {
    payload = JSON.parse(row.payload)
    metadata = row.metadata === null ? EMPTY_METADATA : JSON.parse(row.metadata)
  } catch (cause) {
    return fail(`stored JSON is malformed: ${cause instanceof Error ? cause.message : String(cause)}`)
  }
  if (!isPlainObject(payload)) return fail("stored payload is not a JSON object")
  if (!isPlainObject(metadata)) return fail("stored metadata is not a JSON object")
  return Either.right({
    eventId: row.eventId,
    streamId,
    streamType: row.streamType,
    version,
    position,
    type,
    schemaVersion,
    payload,
    metadata: metadata as Metadata,
    recordedAt: dateTimeOf(recordedAt)
  })
}
