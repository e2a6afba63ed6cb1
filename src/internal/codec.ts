/**
 * What every backend shares on the way in and out: input validation and encoding of an append (so every backend
 * rejects the same inputs before writing anything), and the stored row format with its decoding into
 * `RecordedEvent`s (so a corrupt row fails the same way everywhere).
 */
import * as DateTime from "effect/DateTime"
import * as Duration from "effect/Duration"
import * as Either from "effect/Either"
import * as Option from "effect/Option"
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
  /** How deeply a payload's objects and arrays may nest (a cycle nests forever). */
  payloadDepth: 256,
  metadataBytes: 64 * 1024,
  /** A unique value's length (`Claim.value`); its index name is an id (`idLength`). */
  claimValueLength: 1024,
  /** Claims and releases in one append. */
  claims: 1000
} as const

/**
 * Between a tenant and a stream id in the key a tenant's stream is stored under (`tenant \u001f streamId`): a control
 * character, which no stream id, command id or tenant id may contain, so a key names one tenant's stream and no
 * stream id written through another store can be mistaken for it.
 */
export const TENANT_SEPARATOR = "\u001f"

/** The key a tenant's stream (or command id) is stored under. */
export const tenantKey = (tenant: string, id: string): string => `${tenant}${TENANT_SEPARATOR}${id}`

/** The stream id a stored key stands for (the key itself for a stream without a tenant). */
export const userStreamId = (key: string): string => {
  const cut = key.indexOf(TENANT_SEPARATOR)
  return cut < 0 ? key : key.slice(cut + 1)
}

/** What a tenant id is (see `Tenancy`). */
export const TENANT_PATTERN = /^[A-Za-z0-9][A-Za-z0-9_-]{0,62}$/

/** Checks a stream id, or a tenant's key of one (see `tenantKey`): what a tenant's snapshot store hands on. */
export const checkStreamKey = (field: string, key: unknown): InvalidInput | undefined => {
  if (typeof key !== "string") return checkId(field, key, limits.idLength)
  const cut = key.indexOf(TENANT_SEPARATOR)
  if (cut >= 0 && !TENANT_PATTERN.test(key.slice(0, cut))) {
    return new InvalidInput({ field, reason: "names no tenant before its separator" })
  }
  return checkId(field, cut < 0 ? key : key.slice(cut + 1), limits.idLength)
}

const otherTenant = (field: string, given: string, tenant: string) =>
  new InvalidInput({ field, reason: `names tenant ${JSON.stringify(given)} in a store of tenant ${JSON.stringify(tenant)}` })

/** How long a command id's record lasts when the append does not say. */
export const DEFAULT_COMMAND_TTL = 24 * 60 * 60 * 1000

/** The longest a command id's record may last: 100 years (its expiry stays an exact integer of milliseconds). */
const MAX_COMMAND_TTL = 100 * 365.25 * 24 * 60 * 60 * 1000

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
  /** The event's claims and releases as stored with it (`{"claim":[[index,value]…],"release":[…]}`), or `null`. */
  readonly claimsJson: string | null
}

/**
 * What one unique value ends up as after an append: `first` is what the append does to it first (what the table
 * must allow: a claim needs the value free or held by the stream, a release needs it held by the stream), `last`
 * what it does last (what the table holds afterwards). Steps in between follow from these within the append.
 */
export interface ClaimChange {
  readonly tenantId: string
  readonly index: string
  readonly value: string
  readonly first: "claim" | "release"
  readonly last: "claim" | "release"
}

/** What a guarded append checks and records in its transaction besides its events. */
export interface Guard {
  /** The command id and when its record expires (ms since the epoch). */
  readonly command: { readonly id: string; readonly expiresAt: number } | undefined
  readonly claims: ReadonlyArray<ClaimChange>
}

/** An append that passed validation: everything a backend needs to write it. */
export interface PreparedAppend {
  readonly streamId: string
  readonly streamType: string
  readonly expected: ExpectedVersion
  readonly recordedAt: number
  readonly events: ReadonlyArray<PreparedEvent>
  /** Present when the append has a command id or claims: its writes then run in a transaction with their checks. */
  readonly guard?: Guard
}

export interface AppendInput {
  readonly expectedVersion?: ExpectedVersion | undefined
  readonly streamType?: string | undefined
  readonly metadata?: Metadata | undefined
  readonly commandId?: string | undefined
  readonly commandTtl?: Duration.DurationInput | undefined
}

// C0 controls, DEL and C1 controls.
const CONTROL = /[\u0000-\u001f\u007f-\u009f]/

export const checkId = (field: string, value: unknown, max: number): InvalidInput | undefined => {
  if (typeof value !== "string" || value.length === 0) return new InvalidInput({ field, reason: "must be a non-empty string" })
  if (value.length > max) return new InvalidInput({ field, reason: `longer than ${max} characters` })
  if (UNSAFE.test(value)) {
    return new InvalidInput({
      field,
      reason: CONTROL.test(value) ? "contains control characters" : "contains a lone surrogate (not valid Unicode text)"
    })
  }
  return undefined
}

// Control characters, or a UTF-16 surrogate without its pair: drivers store such a string as U+FFFD, so two ids
// would become one.
const UNSAFE =
  /[\u0000-\u001f\u007f-\u009f]|[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/

/**
 * The stream type of a stream id without an explicit one: the part before the first `-` (the category, as in
 * `Account-42`), or the whole id.
 */
export const categoryOf = (streamId: string): string => {
  const dash = streamId.indexOf("-")
  return dash > 0 ? streamId.slice(0, dash) : streamId
}

/**
 * A plain object: its prototype is `Object.prototype` or `null`. Arrays, `Date`s, `Map`s, boxed primitives and class
 * instances are not (JSON would write them as something else, or as `{}`).
 */
export const isPlainObject = (u: unknown): u is Record<string, unknown> => {
  if (typeof u !== "object" || u === null) return false
  const proto = Object.getPrototypeOf(u)
  return proto === Object.prototype || proto === null
}

/** What a value is, for an error's reason. Only called on the way to an error. */
const describe = (u: unknown): string => {
  switch (typeof u) {
    case "undefined":
      return "undefined"
    case "function":
      return "a function"
    case "symbol":
      return "a symbol"
    case "bigint":
      return "a bigint"
    case "number":
      return String(u)
    case "object": {
      if (u === null) return "null"
      if (Array.isArray(u)) return Object.getPrototypeOf(u) === Array.prototype ? "an array" : "an Array subclass"
      try {
        const name: unknown = Object.getPrototypeOf(u)?.constructor?.name
        return typeof name === "string" && name !== "" ? `a ${name}` : "an object that is not plain"
      } catch {
        return "an object that is not plain"
      }
    }
    default:
      return `a ${typeof u}`
  }
}

// --- metadata ------------------------------------------------------------------------------------------------------

const EMPTY_METADATA: Metadata = Object.freeze({})

const STRING_FIELDS = ["correlationId", "causationId", "tenantId", "principalId"] as const
const STRING_FIELD_SET: ReadonlySet<PropertyKey> = new Set(STRING_FIELDS)
const NOT_A_FIELD = `is not a metadata field (${STRING_FIELDS.join(", ")}, tags)`

/**
 * The fast form of `Event.Metadata` (whose annotations make excess properties errors): accepts exactly what that
 * schema accepts — `test/inputRules.test.ts` proves it on adversarial inputs. Like the schema's excess check it sees
 * every own key, non-enumerable and symbol keys included (`Reflect.ownKeys` would say so in one call, but costs ten
 * times `Object.getOwnPropertyNames`); tag values are checked over the enumerable keys, as `Schema.Record` does.
 */
export const checkMetadata = (metadata: unknown, field = "metadata"): InvalidInput | undefined => {
  if (!isPlainObject(metadata)) {
    return new InvalidInput({ field, reason: `must be a plain object, not ${describe(metadata)}` })
  }
  for (const key of Object.getOwnPropertyNames(metadata)) {
    if (key === "tags") {
      const bad = checkTags(metadata.tags, `${field}.tags`)
      if (bad) return bad
    } else if (STRING_FIELD_SET.has(key)) {
      const value = metadata[key]
      if (typeof value !== "string") {
        return new InvalidInput({
          field: `${field}.${key}`,
          reason: value === undefined ?
            "must be a string: an absent field is left out, not set to undefined" :
            `must be a string, not ${describe(value)}`
        })
      }
    } else {
      return new InvalidInput({ field: `${field}.${key}`, reason: NOT_A_FIELD })
    }
  }
  if (Object.getOwnPropertySymbols(metadata).length > 0) {
    return new InvalidInput({ field, reason: `has a symbol key, which ${NOT_A_FIELD}` })
  }
  return undefined
}

const checkTags = (tags: unknown, field: string): InvalidInput | undefined => {
  if (!isPlainObject(tags)) {
    return new InvalidInput({ field, reason: `must be a plain object of strings, not ${describe(tags)}` })
  }
  for (const key in tags) {
    const value = tags[key]
    if (typeof value !== "string") {
      return new InvalidInput({ field: `${field}.${key}`, reason: `must be a string, not ${describe(value)}` })
    }
  }
  // Checked even when not enumerable, as the schema's excess check does.
  if (Object.hasOwn(tags, "__proto__")) {
    return new InvalidInput({ field: `${field}.__proto__`, reason: "__proto__ is not a tag name" })
  }
  if (Object.getOwnPropertySymbols(tags).length > 0) {
    return new InvalidInput({ field, reason: "has a symbol key (tag names are strings)" })
  }
  return undefined
}

type MutableMetadata = { -readonly [K in keyof Metadata]: Metadata[K] }

/**
 * Checked metadata as the store writes it: `own` fields over `base`'s, tags merged name by name, in the schema's
 * field order — a fresh object (what `Schema.decode(Event.Metadata)` builds), never the caller's. `own` is checked:
 * a field it has is a string, so `undefined` means it has none.
 */
const mergeMetadata = (base: Metadata, own: Metadata): Metadata => {
  const out: MutableMetadata = {}
  let empty = true
  for (const key of STRING_FIELDS) {
    const value = own[key] ?? base[key]
    if (value !== undefined) {
      out[key] = value
      empty = false
    }
  }
  const ownTags = own.tags
  if (ownTags !== undefined || base.tags !== undefined) {
    const tags: Record<string, string> = { ...base.tags }
    for (const key in ownTags) tags[key] = ownTags[key]!
    out.tags = tags
    empty = false
  }
  return empty ? EMPTY_METADATA : out
}

/** A copy of checked metadata (tags included), for a result that must not share it. */
const copyMetadata = (m: Metadata): Metadata => {
  if (m === EMPTY_METADATA) return m
  const out: MutableMetadata = { ...m }
  if (m.tags !== undefined) out.tags = { ...m.tags }
  return out
}

// --- expected version ------------------------------------------------------------------------------------------------

/**
 * The fast form of `ExpectedVersion` (a literal mode or a non-negative safe integer); equal to the schema, proved by
 * a property test. An explicit `null` or `undefined` is not "any": a caller that means no check leaves the option out.
 */
export const isExpectedVersion = (u: unknown): u is ExpectedVersion =>
  u === "any" || u === "no-stream" || u === "stream-exists" ||
  (typeof u === "number" && Number.isSafeInteger(u) && u >= 0)

// --- payloads ------------------------------------------------------------------------------------------------------

/**
 * Why a payload failed (set with `NOT_JSON`): what was found and where. The copy below reports through these instead
 * of exceptions or result objects, so a good payload costs no allocation beyond its copy.
 */
let failure: { what: string; path: Array<string | number> } = { what: "", path: [] }
let budget = 0
const NOT_JSON: unknown = Symbol("NotJson")

const notJson = (what: string): unknown => {
  failure = { what, path: [] }
  return NOT_JSON
}

/**
 * A copy of `value` made of what JSON stores and reads back unchanged — plain objects (`Object.prototype` or `null`
 * prototype), plain arrays, strings, finite numbers, booleans, `null` — or `NOT_JSON`. Object fields that are
 * `undefined` are left out (as `JSON.stringify` does); `-0` becomes `0` (as JSON writes it); only own enumerable
 * string keys are read (as `JSON.stringify` does). Anything else anywhere is refused: a `Date`, `Map`, `Set`, boxed
 * primitive, class instance, an object with a `toJSON` method, a function, symbol, bigint, NaN, Infinity, `undefined`
 * or a hole in an array, nesting deeper than `limits.payloadDepth` (a cycle). It visits at most `budget` values, so
 * a shared sub-tree repeated into more than a payload's worth of values fails fast instead of being expanded.
 *
 * The copy is what the append's result returns: equal to what a read parses, shared with no caller. Copying while
 * checking was measured against the alternatives (check + stringify the caller's object): it adds ~20% to that for
 * a two-field payload and for a 20-value one, where checking, stringifying and then `JSON.parse` of the text adds
 * 100-150%.
 */
const copyJson = (value: unknown, depth: number): unknown => {
  if (--budget < 0) return notJson(`more than ${limits.payloadBytes} values`)
  switch (typeof value) {
    case "string":
    case "boolean":
      return value
    case "number":
      return value === 0 ? 0 : Number.isFinite(value) ? value : notJson(String(value))
    case "object": {
      if (value === null) return null
      if (depth >= limits.payloadDepth) return notJson(`nesting deeper than ${limits.payloadDepth} levels (or a cycle)`)
      if (Array.isArray(value)) {
        if (Object.getPrototypeOf(value) !== Array.prototype) return notJson(describe(value))
        const n = value.length
        const out: Array<unknown> = new Array(n)
        for (let i = 0; i < n; i++) {
          const item: unknown = value[i]
          const copy = item === undefined
            ? notJson("undefined in an array (JSON writes null)")
            : copyJson(item, depth + 1)
          if (copy === NOT_JSON) {
            failure.path.push(i)
            return NOT_JSON
          }
          out[i] = copy
        }
        return out
      }
      return isPlainObject(value) ? copyObject(value, depth) : notJson(describe(value))
    }
    default:
      return notJson(describe(value))
  }
}

const copyObject = (value: Record<string, unknown>, depth: number): unknown => {
  // JSON.stringify would call it (even were it not enumerable, so the loop below would not see it)
  if (typeof value.toJSON === "function") return notJson("a toJSON method")
  const out: Record<string, unknown> = {}
  for (const key in value) {
    const item = value[key]
    if (item === undefined) continue
    const copy = copyJson(item, depth + 1)
    if (copy === NOT_JSON) {
      failure.path.push(key)
      return NOT_JSON
    }
    // Assigning "__proto__" would set the copy's prototype; JSON.parse makes it an own property, and so do we.
    if (key === "__proto__") {
      Object.defineProperty(out, key, { value: copy, enumerable: true, writable: true, configurable: true })
    } else {
      out[key] = copy
    }
  }
  return out
}

const pathOf = (path: ReadonlyArray<string | number>) => {
  let out = ""
  for (let i = path.length - 1; i >= 0; i--) {
    const key = path[i]!
    out += typeof key === "number"
      ? `[${key}]`
      : /^[A-Za-z_$][\w$]*$/.test(key)
      ? `.${key}`
      : `[${JSON.stringify(key)}]`
  }
  return out
}

const PAYLOAD_RULE = "a payload is a plain JSON object: plain objects, arrays, strings, finite numbers, " +
  "booleans and null, which read back as written"

// What `preparePayload` made, read right after it returns (a result object per event measurably cost more).
let payloadValue: unknown = undefined
let payloadJson = ""

/** Makes the payload a fresh JSON object and its text (in `payloadValue`, `payloadJson`), or says why it is not one. */
const preparePayload = (
  payload: unknown,
  field: string
): InvalidInput | undefined => {
  if (!isPlainObject(payload)) {
    return new InvalidInput({ field, reason: `must be a plain JSON object, not ${describe(payload)}` })
  }
  budget = limits.payloadBytes
  const value = copyObject(payload, 0)
  if (value === NOT_JSON) {
    const at = `payload${pathOf(failure.path)}`
    return new InvalidInput({ field, reason: `holds ${failure.what} at ${at}; ${PAYLOAD_RULE}` })
  }
  // A tree of plain values: stringify cannot throw or call user code.
  const json = JSON.stringify(value)
  if (json.length * 3 > limits.payloadBytes && Buffer.byteLength(json) > limits.payloadBytes) {
    return new InvalidInput({ field, reason: `larger than ${limits.payloadBytes} bytes` })
  }
  payloadValue = value
  payloadJson = json
  return undefined
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

// --- the append ----------------------------------------------------------------------------------------------------

/**
 * Validates and encodes an append. Pure: `recordedAt` comes from the caller's `Clock`. What it keeps of the caller's
 * payloads and metadata are fresh copies (the JSON it writes, as values), so neither side can change the other's
 * after the call.
 */
export const prepareAppend = (
  streamId: string,
  events: ReadonlyArray<NewEvent>,
  options: AppendInput | undefined,
  recordedAt: number,
  tenant?: string
): Either.Either<PreparedAppend, InvalidInput> => {
  const badStream = checkId("streamId", streamId, limits.idLength)
  if (badStream) return Either.left(badStream)
  const key = tenant === undefined ? streamId : tenantKey(tenant, streamId)
  if (options !== undefined && (typeof options !== "object" || options === null)) {
    return Either.left(new InvalidInput({ field: "options", reason: `must be an object, not ${describe(options)}` }))
  }
  const streamType = options?.streamType === undefined ? categoryOf(streamId) : options.streamType
  const badType = checkId("streamType", streamType, limits.idLength)
  if (badType) return Either.left(badType)
  let expected: ExpectedVersion = "any"
  if (options !== undefined && "expectedVersion" in options) {
    const given: unknown = options.expectedVersion
    if (!isExpectedVersion(given)) {
      return Either.left(
        new InvalidInput({
          field: "expectedVersion",
          reason: `must be "any", "no-stream", "stream-exists" or a non-negative integer, not ${
            typeof given === "string" ? JSON.stringify(given) : describe(given)
          }${given === undefined || given === null ? ` (leave the option out for "any")` : ""}`
        })
      )
    }
    expected = given
  }
  if (!Array.isArray(events) || events.length === 0) {
    return Either.left(new InvalidInput({ field: "events", reason: "an append needs at least one event" }))
  }
  let shared = EMPTY_METADATA
  let sharedJson: string | null = null
  if (options?.metadata !== undefined) {
    const bad = checkMetadata(options.metadata)
    if (bad) return Either.left(bad)
    shared = mergeMetadata(EMPTY_METADATA, options.metadata)
    if (shared !== EMPTY_METADATA) {
      sharedJson = JSON.stringify(shared)
      if (sharedJson.length > limits.metadataBytes) {
        return Either.left(new InvalidInput({ field: "metadata", reason: `larger than ${limits.metadataBytes} bytes` }))
      }
    }
  }
  if (tenant !== undefined) {
    // a tenant's store stamps its tenant on every event, and takes no other
    if (shared.tenantId !== undefined && shared.tenantId !== tenant) {
      return Either.left(otherTenant("metadata.tenantId", shared.tenantId, tenant))
    }
    if (shared.tenantId === undefined) {
      shared = mergeMetadata(shared, { tenantId: tenant })
      sharedJson = JSON.stringify(shared)
    }
  }
  const prepared: Array<PreparedEvent> = new Array(events.length)
  let changes: Map<string, ClaimChange> | undefined
  let claimCount = 0
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
    const schemaVersion = event.schemaVersion === undefined ? 1 : event.schemaVersion
    if (!Number.isSafeInteger(schemaVersion) || schemaVersion < 1) {
      return Either.left(new InvalidInput({ field: `${field}.schemaVersion`, reason: "must be a positive integer" }))
    }
    const badPayload = preparePayload(event.payload, `${field}.payload`)
    if (badPayload !== undefined) return Either.left(badPayload)
    let metadata = shared
    let metadataJson = sharedJson
    if (event.metadata !== undefined) {
      const bad = checkMetadata(event.metadata, `${field}.metadata`)
      if (bad) return Either.left(bad)
      if (tenant !== undefined && event.metadata.tenantId !== undefined && event.metadata.tenantId !== tenant) {
        return Either.left(otherTenant(`${field}.metadata.tenantId`, event.metadata.tenantId, tenant))
      }
      metadata = mergeMetadata(shared, event.metadata)
      metadataJson = metadata === EMPTY_METADATA ? null : JSON.stringify(metadata)
      if (metadataJson !== null && metadataJson.length > limits.metadataBytes) {
        return Either.left(
          new InvalidInput({ field: `${field}.metadata`, reason: `larger than ${limits.metadataBytes} bytes` })
        )
      }
    }
    let claimsJson: string | null = null
    if (event.claims !== undefined || event.releases !== undefined) {
      if (changes === undefined) changes = new Map()
      const bad = prepareClaims(event, field, tenant ?? "", changes, claimCount)
      if (typeof bad !== "string") return Either.left(bad)
      claimCount += (event.claims?.length ?? 0) + (event.releases?.length ?? 0)
      claimsJson = bad === "" ? null : bad
    }
    prepared[i] = {
      eventId,
      type: event.type,
      schemaVersion,
      payload: payloadValue,
      payloadJson,
      metadata,
      metadataJson,
      tenantId: tenant ?? null,
      claimsJson
    }
  }
  let command: Guard["command"]
  if (options?.commandId !== undefined || options?.commandTtl !== undefined) {
    const id = options.commandId
    const badId = checkId("commandId", id, limits.idLength)
    if (badId) return Either.left(badId)
    let ttl = DEFAULT_COMMAND_TTL
    if (options.commandTtl !== undefined) {
      const decoded = Option.getOrUndefined(Duration.decodeUnknown(options.commandTtl))
      const millis = decoded === undefined ? NaN : Duration.toMillis(decoded)
      if (!(millis > 0) || !Number.isFinite(millis) || millis > MAX_COMMAND_TTL) {
        return Either.left(new InvalidInput({ field: "commandTtl", reason: "must be a positive duration of at most 100 years" }))
      }
      ttl = Math.ceil(millis)
    }
    command = { id: tenant === undefined ? id! : tenantKey(tenant, id!), expiresAt: recordedAt + ttl }
  }
  const append: PreparedAppend = { streamId: key, streamType, expected, recordedAt, events: prepared }
  if (command === undefined && (changes === undefined || changes.size === 0)) return Either.right(append)
  const claims = changes === undefined ? [] : [...changes.values()].sort(byValue)
  return Either.right({ ...append, guard: { command, claims } })
}

/**
 * The order a guarded append takes its values in: one order for every append, so that two appends taking the same
 * values never wait for each other in a cycle (PostgreSQL locks each value's row as it takes it).
 */
const byValue = (a: ClaimChange, b: ClaimChange): number =>
  a.tenantId < b.tenantId ? -1 : a.tenantId > b.tenantId ? 1 :
  a.index < b.index ? -1 : a.index > b.index ? 1 :
  a.value < b.value ? -1 : a.value > b.value ? 1 : 0

const LONE_SURROGATE = /[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/

/**
 * Checks an event's claims and releases, folds them into `changes` (one entry per value, in order) and returns their
 * stored JSON ("" for none), or the input error. Within one append, a value released twice with no claim between is
 * an error.
 */
const prepareClaims = (
  event: NewEvent,
  field: string,
  tenantId: string,
  changes: Map<string, ClaimChange>,
  before: number
): string | InvalidInput => {
  const stored: { claim?: Array<[string, string]>; release?: Array<[string, string]> } = {}
  for (const kind of ["claim", "release"] as const) {
    const list: unknown = kind === "claim" ? event.claims : event.releases
    if (list === undefined) continue
    const name = `${field}.${kind === "claim" ? "claims" : "releases"}`
    if (!Array.isArray(list)) return new InvalidInput({ field: name, reason: "must be an array of { index, value }" })
    if (before + list.length > limits.claims) {
      return new InvalidInput({ field: name, reason: `an append may claim and release at most ${limits.claims} values` })
    }
    const pairs: Array<[string, string]> = []
    for (let j = 0; j < list.length; j++) {
      const claim: unknown = list[j]
      const at = `${name}[${j}]`
      if (!isPlainObject(claim) || Object.keys(claim).some((k) => k !== "index" && k !== "value")) {
        return new InvalidInput({ field: at, reason: "must be a plain object { index, value }" })
      }
      const badIndex = checkId(`${at}.index`, claim.index, limits.idLength)
      if (badIndex) return badIndex
      const value = claim.value
      if (typeof value !== "string" || value.length === 0 || value.length > limits.claimValueLength) {
        return new InvalidInput({
          field: `${at}.value`,
          reason: `must be a non-empty string of at most ${limits.claimValueLength} characters`
        })
      }
      if (LONE_SURROGATE.test(value)) return new InvalidInput({ field: `${at}.value`, reason: "has a lone surrogate" })
      if (value.includes("\u0000")) return new InvalidInput({ field: `${at}.value`, reason: "contains a NUL character" })
      const index = claim.index as string
      const key = JSON.stringify([index, value])
      const seen = changes.get(key)
      if (kind === "release" && seen?.last === "release") {
        return new InvalidInput({ field: at, reason: `releases ${JSON.stringify(value)} in ${index} twice` })
      }
      changes.set(key, { tenantId, index, value, first: seen?.first ?? kind, last: kind })
      pairs.push([index, value])
    }
    if (pairs.length > 0) stored[kind] = pairs
  }
  return stored.claim === undefined && stored.release === undefined ? "" : JSON.stringify(stored)
}

/**
 * The events of an append as they were recorded, given the version and position of its first event: equal to what
 * a read returns. Hands the prepared payload copies over to the result (call it once per append); metadata, which
 * events of one append may share, is copied per event.
 */
export const recorded = (
  append: PreparedAppend,
  positions: ReadonlyArray<number>,
  firstVersion: number
): Array<RecordedEvent> => {
  const recordedAt = dateTimeOf(append.recordedAt)
  const streamId = userStreamId(append.streamId)
  return append.events.map((event, i) => ({
    eventId: event.eventId,
    streamId,
    streamType: append.streamType,
    version: firstVersion + i,
    position: positions[i]!,
    type: event.type,
    schemaVersion: event.schemaVersion,
    payload: event.payload,
    metadata: copyMetadata(event.metadata),
    recordedAt
  }))
}

/**
 * The error of a read by stream whose next stored version is not `expected`, the one that must follow: a row is
 * missing or its version was changed. Such a read fails at that row instead of skipping to it.
 */
export const outOfSequence = (event: RecordedEvent, expected: number): EventDecodeError =>
  new EventDecodeError({
    streamId: event.streamId,
    version: event.version,
    position: event.position,
    type: event.type,
    reason: `stored version ${event.version} where version ${expected} must follow: ` +
      "a row of the stream is missing or its version was changed"
  })

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

/**
 * Decodes a stored event. Total: a row whose columns are not what the store writes (malformed JSON, a version or
 * timestamp that is not an integer, a payload that is not a JSON object) is an `EventDecodeError` naming the row.
 */
export const fromStored = (row: StoredEvent): Either.Either<RecordedEvent, EventDecodeError> => {
  // The common case, as SQLite hands rows back: every check inline, no allocation but the event. Anything else (a
  // driver's string for a 64-bit integer, a wrong type, malformed JSON) takes the careful path below, which converts
  // or names what is wrong.
  const { position, recordedAt, schemaVersion, version } = row
  if (
    typeof position === "number" && position >= 1 && Number.isSafeInteger(position) &&
    typeof version === "number" && version >= 1 && Number.isSafeInteger(version) &&
    typeof schemaVersion === "number" && schemaVersion >= 1 && Number.isSafeInteger(schemaVersion) &&
    typeof recordedAt === "number" && Number.isSafeInteger(recordedAt) && Math.abs(recordedAt) <= 8.64e15 &&
    typeof row.eventId === "string" && typeof row.streamId === "string" && typeof row.streamType === "string" &&
    typeof row.type === "string" && typeof row.payload === "string" &&
    (row.metadata === null || typeof row.metadata === "string")
  ) {
    let payload: unknown
    let metadata: unknown
    try {
      payload = JSON.parse(row.payload)
      metadata = row.metadata === null ? EMPTY_METADATA : JSON.parse(row.metadata)
    } catch {
      return fromStoredChecked(row)
    }
    if (isPlainObject(payload) && isPlainObject(metadata)) {
      return Either.right({
        eventId: row.eventId,
        streamId: userStreamId(row.streamId),
        streamType: row.streamType,
        version,
        position,
        type: row.type,
        schemaVersion,
        payload,
        metadata: metadata as Metadata,
        recordedAt: dateTimeOf(recordedAt)
      })
    }
  }
  return fromStoredChecked(row)
}

const fromStoredChecked = (row: StoredEvent): Either.Either<RecordedEvent, EventDecodeError> => {
  const position = toInteger(row.position)
  const version = toInteger(row.version)
  const streamId = userStreamId(typeof row.streamId === "string" ? row.streamId : String(row.streamId))
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
  if (
    typeof row.eventId !== "string" || typeof row.streamType !== "string" || typeof row.streamId !== "string" ||
    typeof row.type !== "string"
  ) return fail("stored ids or event type are not text")
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

// --- the fold's lean read ------------------------------------------------------------------------------------------

/**
 * One stored event as a fold reads it: only the columns it needs, as an array (what SQLite's raw mode returns),
 * `[version, type, schemaVersion, payload JSON]`, and `recordedAt` fifth when the fold keeps analytics. Each value is
 * checked by `readFoldRow`.
 */
export type FoldRow = ReadonlyArray<unknown>

/**
 * The event a fold is at, reused for every row of a page (a fold keeps nothing of it but the decoded payload).
 * Shaped like the `RecordedEvent` fields that `Registry.decodePayload` reads; its position is not read (0), so an
 * error is never reported from it: a row that fails is read again the careful way (`readPage`), which names it.
 */
export class FoldEvent {
  position = 0
  version = 0
  type = ""
  schemaVersion = 1
  payload: unknown = undefined
  recordedAt = 0
  constructor(readonly streamId: string) {}
}

/**
 * Checks one fold row and fills `into` with it: the row must hold version `expected` (the one after the previous
 * row; SQLite columns are loosely typed, so a version of 2.5 or "x" is caught here) and its columns must be what
 * the store writes (the same rules as `fromStored`, drivers' integer strings converted). `false` when anything is
 * off: the caller reads on the careful way, which names what is wrong or decodes what only looked wrong.
 */
export const readFoldRow = (row: FoldRow, into: FoldEvent, expected: number, withRecordedAt: boolean): boolean => {
  const version = row[0]
  const type = row[1]
  let schemaVersion = row[2]
  const payload = row[3]
  if (version !== expected && toInteger(version) !== expected) return false
  if (typeof type !== "string" || typeof payload !== "string") return false
  if (typeof schemaVersion !== "number" || !Number.isSafeInteger(schemaVersion)) schemaVersion = toInteger(schemaVersion)
  if (schemaVersion === undefined || (schemaVersion as number) < 1) return false
  if (withRecordedAt) {
    const recordedAt = typeof row[4] === "number" && Number.isSafeInteger(row[4]) ? row[4] : toInteger(row[4])
    if (recordedAt === undefined || Math.abs(recordedAt) > 8.64e15) return false
    into.recordedAt = recordedAt
  }
  let parsed: unknown
  try {
    parsed = JSON.parse(payload)
  } catch {
    return false
  }
  // what JSON.parse makes is a plain object unless it is an array, null or a primitive
  if (typeof parsed !== "object" || parsed === null || Array.isArray(parsed)) return false
  into.version = expected
  into.type = type
  into.schemaVersion = schemaVersion as number
  into.payload = parsed
  return true
}

/** Stored events as fold rows (the memory backend's). */
export const toFoldRows = (rows: ReadonlyArray<StoredEvent>): Array<FoldRow> =>
  rows.map((row) => [row.version, row.type, row.schemaVersion, row.payload, row.recordedAt])

/**
 * JSON with object keys sorted at every depth: one text for equal JSON values, whatever their key order (what a
 * derived id hashes). A value JSON cannot hold, or nested deeper than the payload limit, gives `""` (its append
 * is refused anyway).
 */
export const canonicalJson = (value: unknown): string => {
  const write = (v: unknown, depth: number): string => {
    if (depth > limits.payloadDepth) throw new RangeError("too deep")
    if (Array.isArray(v)) return `[${v.map((x) => write(x === undefined ? null : x, depth + 1)).join(",")}]`
    if (typeof v === "object" && v !== null) {
      const parts: Array<string> = []
      for (const key of Object.keys(v).sort()) {
        const field = (v as Record<string, unknown>)[key]
        if (field !== undefined) parts.push(`${JSON.stringify(key)}:${write(field, depth + 1)}`)
      }
      return `{${parts.join(",")}}`
    }
    return JSON.stringify(v) ?? "null"
  }
  try {
    return write(value, 0)
  } catch {
    return ""
  }
}
