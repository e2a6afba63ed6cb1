/**
 * The event model: events defined with `effect/Schema` (tagged structs or classes whose `_tag` is the event type
 * name), the registry that encodes them for storage and decodes them on the way back (with schema versions and
 * upcasters), metadata, and the envelope every stored event travels in.
 *
 * @since 0.1.0
 */
import * as Chunk from "effect/Chunk"
import * as Either from "effect/Either"
import * as ParseResult from "effect/ParseResult"
import type * as DateTime from "effect/DateTime"
import * as Schema from "effect/Schema"
import * as SchemaAST from "effect/SchemaAST"
import * as Stream from "effect/Stream"
import { EventDecodeError, InvalidInput } from "./Errors.js"
import { isPlainObject } from "./internal/codec.js"
import * as FastDecode from "./internal/fastDecode.js"

/**
 * A schema for plain objects only (prototype `Object.prototype` or `null`): a `Date`, a `Map`, a boxed string or a
 * class instance is refused even where a `Struct` or a `Record` would read fields off it. The check is on the input
 * itself, which a filter (it sees only the decoded copy) cannot make.
 */
const plainObject = <A, I>(schema: Schema.Schema<A, I>): Schema.Schema<A, I> =>
  Schema.transformOrFail(schema, Schema.typeSchema(schema), {
    strict: true,
    decode: (a, _, ast, i) =>
      isPlainObject(i)
        ? ParseResult.succeed(a)
        : ParseResult.fail(new ParseResult.Type(ast, i, "must be a plain object")),
    encode: ParseResult.succeed
  })

/**
 * A tag name: any string but `__proto__` (a decoded record would lose that key, and code reading `tags[name]` would
 * see `Object.prototype`).
 */
const TagName = Schema.String.pipe(
  Schema.filter((key) => key !== "__proto__", { message: () => "__proto__ is not a tag name" })
)

/**
 * Who and what caused an event. Stored with every event; `tags` carries custom string values.
 *
 * This schema is the rule an append checks metadata against (the store's hand-written check is proved equal to it by
 * a property test): a plain object with only these fields, each a string when present (an explicit `undefined` is
 * refused: leave the field out), and `tags` a plain object of strings whose names are not `__proto__`. Excess fields
 * are errors, whatever the parse options.
 *
 * @since 0.1.0
 */
export const Metadata = plainObject(Schema.Struct({
  correlationId: Schema.optionalWith(Schema.String, { exact: true }),
  causationId: Schema.optionalWith(Schema.String, { exact: true }),
  tenantId: Schema.optionalWith(Schema.String, { exact: true }),
  principalId: Schema.optionalWith(Schema.String, { exact: true }),
  tags: Schema.optionalWith(plainObject(Schema.Record({ key: TagName, value: Schema.String })), { exact: true })
})).annotations({ identifier: "Metadata", parseOptions: { onExcessProperty: "error" } })

/** @since 0.1.0 */
export type Metadata = typeof Metadata.Type

/**
 * An event on its way into the store, already encoded: `payload` is a plain JSON object (what a registry's `encode`
 * produces; at most 1 MiB serialized, nested at most 256 deep) that reads back as it was written — plain objects
 * (prototype `Object.prototype` or `null`), arrays, strings, finite numbers, booleans and `null`. Anything else,
 * anywhere in it (a `Date`, `Map`, `Set`, boxed primitive, class instance, `toJSON` method, function, symbol, bigint,
 * NaN, Infinity, `undefined` in an array, a cycle), is `InvalidInput`. Fields whose value is `undefined` are left out
 * (as JSON does), and `-0` is stored as `0`. The store keeps a copy: the caller may change its objects afterwards.
 *
 * @since 0.1.0
 */
export interface NewEvent {
  readonly type: string
  readonly payload: unknown
  /** The version of the event's schema that wrote `payload`; 1 when omitted. */
  readonly schemaVersion?: number
  /** A unique id; a time-ordered UUID (v7) is generated when omitted. */
  readonly eventId?: string
  /** Merged over the append's metadata, field by field (tags name by name). */
  readonly metadata?: Metadata
  /**
   * Unique values this event takes for its stream (an email address, a user name): checked and recorded in the same
   * transaction as the append. A value another stream holds fails the whole append with a
   * `UniqueConstraintViolation`; a value the stream holds already is taken again without error.
   */
  readonly claims?: ReadonlyArray<Claim>
  /** Unique values this event gives up; releasing a value the stream does not hold fails with `ClaimNotHeld`. */
  readonly releases?: ReadonlyArray<Claim>
}

/**
 * A unique value: `value` within `index` (`"user-email"`, say). At most 256 characters each, no control characters.
 * Stored with the event that claims or releases it, so the table of owners can always be rebuilt from the log.
 *
 * @since 0.1.0
 */
export interface Claim {
  readonly index: string
  readonly value: string
}

/**
 * A stored event. `payload` is the JSON value as stored (`RecordedEvent<unknown>`) or, after a registry decoded
 * it, the domain event (`RecordedEvent<A>`).
 *
 * @since 0.1.0
 */
export interface RecordedEvent<P = unknown> {
  readonly eventId: string
  readonly streamId: string
  /** The aggregate (or category) the stream belongs to. */
  readonly streamType: string
  /** 1-based, gapless within the stream. */
  readonly version: number
  /**
   * Global, unique, increasing; readers hand positions out in order and never skip one (PostgreSQL: see
   * `effect-eventstore/Postgres`). Positions may have holes.
   */
  readonly position: number
  readonly type: string
  readonly schemaVersion: number
  readonly payload: P
  readonly metadata: Metadata
  /** When the store recorded the event, from Effect's `Clock`, millisecond precision. */
  readonly recordedAt: DateTime.Utc
}

/**
 * A schema for one event type: its decoded form has a literal `_tag`, the event type name.
 *
 * @since 0.1.0
 */
export type EventSchema = Schema.Schema<any, any, never>

/**
 * An event schema with a version above 1 and the upcaster that lifts payloads written by older versions. Versions
 * are whole numbers from 1; `Event.registry` throws a `TypeError` for any other.
 *
 * @since 0.1.0
 */
export interface Versioned<S extends EventSchema = EventSchema> {
  readonly _tag: "Versioned"
  readonly schema: S
  readonly version: number
  /**
   * Turns a payload written with `fromVersion` (< `version`) into the current encoded shape. One function for every
   * older version: a version it has no answer for should throw (or return a value that does not decode); either way
   * the event's decode fails with an `EventDecodeError`.
   */
  readonly upcast: (payload: unknown, fromVersion: number) => unknown
}

/**
 * Declares that `schema` is at `version` and how older payloads become current ones.
 *
 * @example
 * ```ts
 * const Deposited = Schema.TaggedStruct("Deposited", { amount: Schema.Int, currency: Schema.String })
 * // version 1 had no currency
 * const registry = Event.registry([Event.versioned(Deposited, 2, (p: any) => ({ ...p, currency: "EUR" }))])
 * ```
 *
 * @since 0.1.0
 */
export const versioned = <S extends EventSchema>(
  schema: S,
  version: number,
  upcast: (payload: unknown, fromVersion: number) => unknown
): Versioned<S> => ({ _tag: "Versioned", schema, version, upcast })

type Definition = EventSchema | Versioned

/** @since 0.1.0 */
export type DefinitionType<D> = D extends Versioned<infer S> ? Schema.Schema.Type<S>
  : D extends Schema.Schema.Any ? Schema.Schema.Type<D>
  : never

/**
 * Encodes domain events for the store and decodes stored events back, by event type (an old name of a renamed
 * type included: see {@link RegistryOptions}).
 *
 * @since 0.1.0
 */
export interface Registry<A extends { readonly _tag: string }> {
  /** The union of all event schemas. */
  readonly schema: Schema.Schema<A, unknown>
  /** The event type names, in definition order. */
  readonly types: ReadonlyArray<A["_tag"]>
  /** Encodes one event; a value failing its schema is `InvalidInput`. */
  readonly encode: (
    event: A,
    options?: { readonly eventId?: string; readonly metadata?: Metadata }
  ) => Either.Either<NewEvent, InvalidInput>
  /**
   * Decodes one stored event, upcasting older schema versions; failures are `EventDecodeError`s (naming the type as
   * stored). The decoded event's `type` is the current name of its type (an event stored under an old name comes
   * back under the new one, like its payload's `_tag`); `schemaVersion` stays the version that wrote the payload.
   */
  readonly decode: (event: RecordedEvent) => Either.Either<RecordedEvent<A>, EventDecodeError>
  /** Like `decode`, for the payload only (what a fold needs). */
  readonly decodePayload: (event: RecordedEvent) => Either.Either<A, EventDecodeError>
  /**
   * Every name events of these types may be stored under: for each type its current name, then its old names (see
   * {@link RegistryOptions}), without repeats. What a store `Filter`'s `eventTypes` needs to select a renamed type's
   * older events too. An old name counts as its type; a name the registry does not know is returned as it is. An
   * empty list gives an empty list (which a `Filter` reads as no filter at all).
   *
   * @example
   * ```ts
   * store.readAll({ filter: { eventTypes: AccountEvents.storedNames(["AccountOpened", "AccountClosed"]) } })
   * ```
   */
  readonly storedNames: (types: A["_tag"] | ReadonlyArray<A["_tag"]>) => ReadonlyArray<string>
}

/**
 * Options of {@link registry}.
 *
 * `renames` maps an old event type name to the name that replaced it: a current type of the registry, or another
 * old name (a chain: `{ A: "B", B: "C" }` — A was renamed B, then B renamed C — decodes stored A and B events as C).
 * Renames are history: keep every entry for as long as the store holds events under the old name.
 *
 * - An event stored under an old name decodes as its current type, with `type` and `_tag` the current name.
 *   `encode` always writes the current name.
 * - A rename does not restart the schema version: versions count on across names. A payload stored under an old
 *   name at version `n` is decoded exactly like one stored under the current name at `n` — as it stands when `n` is
 *   the current version, else through the current type's upcaster from `n`. A rename that also changes the payload's
 *   shape therefore bumps the version (with `versioned`) in the same change.
 * - `storedNames` lists a type's old names, for store filters; `Projection.make` and `Projection.sql` route events
 *   stored under an old name to the handler of the current one.
 * - A rename to a name that is neither a type of the registry nor another old name, a cycle (`{ A: "B", B: "A" }`,
 *   `{ A: "A" }`), or an old name that is also a current type throws a `TypeError` when the registry is built.
 *
 * One stored event always decodes to one event: splitting an old event into several is not supported (folds,
 * projections and checkpoints count stored events by their version and position).
 *
 * @since 0.1.0
 */
export interface RegistryOptions {
  readonly renames?: Readonly<Record<string, string>>
}

interface Entry {
  readonly type: string
  readonly version: number
  readonly upcast: ((payload: unknown, fromVersion: number) => unknown) | undefined
  readonly encode: (a: unknown) => Either.Either<unknown, ParseResult.ParseError>
  readonly decode: (i: unknown) => Either.Either<unknown, ParseResult.ParseError>
  /** The payload (without `_tag`) to the decoded event, or `undefined` to use `decode`. */
  readonly fast: ((payload: unknown) => unknown) | undefined
  /** The event to its encoded payload (without `_tag`), or `undefined` to use `encode`. */
  readonly fastEncode: ((event: unknown) => Record<PropertyKey, unknown> | undefined) | undefined
}

const tagOf = (schema: Schema.Schema.Any): string => {
  const ast = SchemaAST.encodedAST(schema.ast)
  for (const ps of SchemaAST.getPropertySignatures(ast)) {
    if (ps.name === "_tag" && SchemaAST.isLiteral(ps.type) && typeof ps.type.literal === "string") {
      return ps.type.literal
    }
  }
  throw new TypeError(`an event schema needs a literal string _tag (Schema.TaggedStruct or Schema.TaggedClass)`)
}

const decodeError = (event: RecordedEvent, reason: string) =>
  new EventDecodeError({
    streamId: event.streamId,
    version: event.version,
    position: event.position,
    type: event.type,
    reason
  })

const isRecord = (u: unknown): u is Record<string, unknown> => typeof u === "object" && u !== null && !Array.isArray(u)

/**
 * Builds a registry from event schemas (or {@link versioned} ones). Each `_tag` must be unique. The payload is stored
 * without its `_tag` (the event type is its own column) and gets it back when decoded. `options.renames` maps old
 * type names to the current ones (see {@link RegistryOptions}). A definition that cannot work (a duplicate type, a
 * bad version, a bad rename) throws a `TypeError`.
 *
 * @example
 * ```ts
 * const Opened = Schema.TaggedStruct("AccountOpened", { owner: Schema.String })
 * const Deposited = Schema.TaggedStruct("Deposited", { amount: Schema.Int })
 * const AccountEvents = Event.registry([Opened, Deposited])
 * type AccountEvent = Event.Registry.Type<typeof AccountEvents>
 *
 * // "AccountCreated" was renamed "AccountRegistered", later "AccountOpened": events stored under either old name
 * // decode as AccountOpened (and a projection's AccountOpened handler receives them)
 * const Renamed = Event.registry([Opened, Deposited], {
 *   renames: { AccountCreated: "AccountRegistered", AccountRegistered: "AccountOpened" }
 * })
 * Renamed.storedNames("AccountOpened") // ["AccountOpened", "AccountCreated", "AccountRegistered"]
 * ```
 *
 * @since 0.1.0
 */
export const registry = <const Defs extends ReadonlyArray<Definition>>(
  definitions: Defs,
  options?: RegistryOptions
): Registry<Extract<DefinitionType<Defs[number]>, { readonly _tag: string }>> => {
  type A = Extract<DefinitionType<Defs[number]>, { readonly _tag: string }>
  const entries = new Map<string, Entry>()
  const schemas: Array<Schema.Schema.Any> = []
  for (const def of definitions) {
    const schema: EventSchema = "_tag" in def && def._tag === "Versioned" ? (def as Versioned).schema : def as EventSchema
    const type = tagOf(schema)
    if (entries.has(type)) throw new TypeError(`event type ${type} is defined twice`)
    const isVersioned = "_tag" in def && def._tag === "Versioned"
    if (isVersioned) {
      const version = (def as Versioned).version
      if (!Number.isSafeInteger(version) || version < 1) {
        throw new TypeError(`event type ${type}: a schema version is a whole number from 1, not ${String(version)}`)
      }
    }
    entries.set(type, {
      type,
      version: isVersioned ? (def as Versioned).version : 1,
      upcast: isVersioned ? (def as Versioned).upcast : undefined,
      encode: Schema.encodeEither(schema as Schema.Schema<unknown, unknown>),
      decode: Schema.decodeUnknownEither(schema as Schema.Schema<unknown, unknown>),
      fast: FastDecode.compile(schema, type),
      fastEncode: FastDecode.compileEncode(schema, type)
    })
    schemas.push(schema)
  }
  // every name an event may be stored under (current names and old ones) to its type's entry
  const byStoredName = new Map(entries)
  const oldNames = resolveRenames(options?.renames ?? {}, entries)
  for (const [old, current] of oldNames) byStoredName.set(old, entries.get(current)!)
  const namesOf = new Map<string, Array<string>>([...entries.keys()].map((type) => [type, [type]]))
  for (const [old, current] of oldNames) namesOf.get(current)!.push(old)
  const storedNames: Registry<A>["storedNames"] = (types) => {
    const out = new Set<string>()
    for (const type of (typeof types === "string" ? [types] : types) as ReadonlyArray<string>) {
      const entry = byStoredName.get(type)
      for (const name of entry === undefined ? [type] : namesOf.get(entry.type)!) out.add(name)
    }
    return [...out]
  }
  const union = (schemas.length === 1 ? schemas[0] : Schema.Union(...schemas)) as unknown as Schema.Schema<A, unknown>

  const encode: Registry<A>["encode"] = (event, options) => {
    const entry = isRecord(event) && typeof event._tag === "string" ? entries.get(event._tag) : undefined
    if (entry === undefined) {
      return Either.left(
        new InvalidInput({ field: "event", reason: `unknown event type ${String((event as any)?._tag)}` })
      )
    }
    const fast = entry.fastEncode?.(event)
    if (fast !== undefined) {
      return Either.right(
        options === undefined
          ? { type: entry.type, payload: fast, schemaVersion: entry.version }
          : {
            type: entry.type,
            payload: fast,
            schemaVersion: entry.version,
            ...(options.eventId !== undefined ? { eventId: options.eventId } : {}),
            ...(options.metadata !== undefined ? { metadata: options.metadata } : {})
          }
      )
    }
    const encoded = entry.encode(event)
    if (Either.isLeft(encoded)) {
      return Either.left(
        new InvalidInput({
          field: `event ${entry.type}`,
          reason: ParseResult.TreeFormatter.formatErrorSync(encoded.left)
        })
      )
    }
    const { _tag, ...payload } = encoded.right as Record<string, unknown>
    return Either.right({
      type: entry.type,
      payload,
      schemaVersion: entry.version,
      ...(options?.eventId !== undefined ? { eventId: options.eventId } : {}),
      ...(options?.metadata !== undefined ? { metadata: options.metadata } : {})
    })
  }

  const decodePayload: Registry<A>["decodePayload"] = (event) => {
    const entry = byStoredName.get(event.type)
    if (entry === undefined) return Either.left(decodeError(event, "unknown event type"))
    let payload = event.payload
    if (event.schemaVersion !== entry.version) {
      if (event.schemaVersion > entry.version || entry.upcast === undefined) {
        return Either.left(
          decodeError(
            event,
            `stored schema version ${event.schemaVersion}, registry has ${entry.version}` +
              (entry.type === event.type ? "" : ` (of ${entry.type}, which ${event.type} was renamed to)`) +
              (event.schemaVersion < entry.version ? " and no upcaster" : "")
          )
        )
      }
      try {
        payload = entry.upcast(payload, event.schemaVersion)
      } catch (cause) {
        return Either.left(decodeError(event, `upcaster failed: ${String(cause)}`))
      }
    }
    if (entry.fast !== undefined) {
      const value = entry.fast(payload)
      if (value !== undefined) return Either.right(value as A)
    }
    if (!isRecord(payload)) return Either.left(decodeError(event, "payload is not an object"))
    const decoded = entry.decode({ ...payload, _tag: entry.type })
    if (Either.isLeft(decoded)) {
      return Either.left(decodeError(event, ParseResult.TreeFormatter.formatErrorSync(decoded.left)))
    }
    return Either.right(decoded.right as A)
  }

  const decode: Registry<A>["decode"] = (event) =>
    Either.map(decodePayload(event), (payload) => {
      const current = oldNames.get(event.type)
      return current === undefined ? { ...event, payload } : { ...event, type: current, payload }
    })

  const built = {
    schema: union,
    types: [...entries.keys()] as Array<A["_tag"]>,
    encode,
    decode,
    decodePayload,
    storedNames
  }
  builtHere.set(built, (type, schemaVersion) => {
    const entry = byStoredName.get(type)
    return entry !== undefined && entry.version === schemaVersion ? entry.fast : undefined
  })
  return built
}

/**
 * The old names of `renames` to the current type each one ends at (following chains), in the order given. Throws a
 * `TypeError` for an old name that is a current type, a rename to a name that is neither a type nor an old name,
 * and a cycle.
 */
const resolveRenames = (
  renames: Readonly<Record<string, string>>,
  types: ReadonlyMap<string, unknown>
): ReadonlyMap<string, string> => {
  const next = new Map<string, string>()
  for (const [old, to] of Object.entries(renames)) {
    if (typeof to !== "string") throw new TypeError(`renames: ${old} must be renamed to an event type name`)
    if (types.has(old)) throw new TypeError(`renames: ${old} is a current event type, not an old name`)
    next.set(old, to)
  }
  const resolved = new Map<string, string>()
  for (const old of next.keys()) {
    const path = [old]
    let name = next.get(old)!
    while (!types.has(name)) {
      if (!next.has(name)) throw new TypeError(`renames: ${path.at(-1)} is renamed to ${name}, which is not an event type of the registry`)
      if (path.includes(name)) throw new TypeError(`renames: a cycle ${[...path, name].join(" → ")}`)
      path.push(name)
      name = next.get(name)!
    }
    resolved.set(old, name)
  }
  return resolved
}

type FastDecoder = (payload: unknown) => unknown
const builtHere = new WeakMap<object, (type: string, schemaVersion: number) => FastDecoder | undefined>()

/**
 * @internal the compiled decoder of a registry built by `registry` for payloads of `type` stored at `schemaVersion`
 * (the current one, nothing to upcast), or `undefined`: then `decodePayload` (which gives the same result, and every
 * error). A decoder returns `undefined` for a payload it does not accept as it stands.
 */
export const fastDecoderOf = (registry: object, type: string, schemaVersion: number): FastDecoder | undefined =>
  builtHere.get(registry)?.(type, schemaVersion)

/**
 * @internal whether `registry` was built by `registry` above: its `decodePayload` reads only an event's type,
 * schema version and payload (and names the event by stream, version, position and type in an error), so a fold
 * may hand it a partial event.
 */
export const readsPayloadOnly = (registry: object): boolean => builtHere.has(registry)

/** @since 0.1.0 */
export declare namespace Registry {
  /** The event union a registry holds. */
  export type Type<R> = R extends Registry<infer A> ? A : never
}

/**
 * Decodes a stream of stored events with a registry. Events before an undecodable one are delivered; then the
 * stream fails with its `EventDecodeError`.
 *
 * @since 0.1.0
 */
export const decodeStream = <A extends { readonly _tag: string }>(registry: Registry<A>) =>
<E, R>(self: Stream.Stream<RecordedEvent, E, R>): Stream.Stream<RecordedEvent<A>, E | EventDecodeError, R> =>
  Stream.flatMap(Stream.chunks(self), (chunk) => {
    const out: Array<RecordedEvent<A>> = []
    for (const event of chunk) {
      const decoded = registry.decode(event)
      if (Either.isLeft(decoded)) {
        return Stream.concat(Stream.fromIterable(out), Stream.fail(decoded.left))
      }
      out.push(decoded.right)
    }
    return Stream.fromChunk(Chunk.unsafeFromArray(out))
  })
