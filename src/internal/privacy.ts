/**
 * The parts of `Privacy` that need no services: the annotations' plans (which encoded fields of an event are
 * personal, whose, and what they read as once their key is gone), AES-256-GCM sealing of values and of data keys,
 * and the stored form of encrypted personal data inside a payload.
 */
import { createCipheriv, createDecipheriv, createHmac, createSecretKey, type KeyObject, randomBytes, randomFillSync } from "node:crypto"
import * as Context from "effect/Context"
import type * as Effect from "effect/Effect"
import * as Either from "effect/Either"
import * as Option from "effect/Option"
import * as ParseResult from "effect/ParseResult"
import * as Schema from "effect/Schema"
import * as SchemaAST from "effect/SchemaAST"
import { type EventDecodeError, InvalidInput, type StoreError } from "../Errors.js"
import type { RecordedEvent } from "../Event.js"

// --- annotations ---------------------------------------------------------------------------------------------------

/** The annotation of a personal field (see `Privacy.personal`). */
export const PersonalId: unique symbol = Symbol.for("effect-eventstore/Privacy/Personal")
/** The annotation of a field that holds a data subject's id (see `Privacy.subject`). */
export const SubjectId: unique symbol = Symbol.for("effect-eventstore/Privacy/Subject")

export interface PersonalAnnotation {
  readonly subject?: string | undefined
  readonly replacement?: { readonly value: unknown } | undefined
  readonly keep?: ((value: any) => unknown) | undefined
}

/** The key in a stored payload under which its encrypted parts travel. Not a field name a schema may use. */
export const FIELD = "$privacy"

// --- plans ---------------------------------------------------------------------------------------------------------

/** What a personal field reads as once its key is gone: an encoded value, or nothing (the field left out). */
export type Replacement = { readonly _tag: "value"; readonly encoded: unknown } | { readonly _tag: "omit" }

export interface FieldPlan {
  /** The field's name in the encoded payload. */
  readonly name: string
  /** The name of the field holding its subject's id. */
  readonly subject: string
  readonly replacement: Replacement
  /** The encoded value to the encoded part kept in plain text, or `undefined` when there is none. */
  readonly keep: ((encoded: unknown) => Either.Either<unknown, string>) | undefined
}

export interface EventPlan {
  readonly type: string
  /** The personal fields by the field holding their subject. */
  readonly bySubject: ReadonlyMap<string, ReadonlyArray<FieldPlan>>
  readonly fields: ReadonlyMap<string, FieldPlan>
}

interface Property {
  readonly name: string
  readonly type: SchemaAST.AST
  readonly isOptional: boolean
}

/** The properties of an event schema's encoded side (a struct, a class, a refined or transformed struct). */
const propertiesOf = (ast: SchemaAST.AST): ReadonlyArray<Property> | undefined => {
  switch (ast._tag) {
    case "TypeLiteral":
      return ast.propertySignatures.flatMap((ps) =>
        typeof ps.name === "string" ? [{ name: ps.name, type: ps.type, isOptional: ps.isOptional }] : []
      )
    case "Transformation":
    case "Refinement":
      return propertiesOf(ast.from)
    case "Suspend":
      return propertiesOf(ast.f())
    default:
      return undefined
  }
}

/** The `_tag` literal of an event schema (on its encoded side, where the stored payload's fields are). */
export const eventTypeOf = (ast: SchemaAST.AST): string | undefined => {
  const tag = propertiesOf(ast)?.find((p) => p.name === "_tag")?.type
  return tag?._tag === "Literal" && typeof tag.literal === "string" ? tag.literal : undefined
}

/** An annotation on a field's schema, or on a member of its union (`Schema.optional` adds `undefined`). */
const findAnnotation = <A>(id: symbol, ast: SchemaAST.AST): A | undefined => {
  const own = SchemaAST.getAnnotation<A>(ast, id)
  if (Option.isSome(own)) return own.value
  switch (ast._tag) {
    case "Union":
      for (const member of ast.types) {
        const found = findAnnotation<A>(id, member)
        if (found !== undefined) return found
      }
      return undefined
    case "Transformation":
      return findAnnotation<A>(id, ast.to) ?? findAnnotation<A>(id, ast.from)
    case "Refinement":
      return findAnnotation<A>(id, ast.from)
    default:
      return undefined
  }
}

const invalid = (type: string, reason: string) => new InvalidInput({ field: `event ${type}`, reason })

/** Whether an annotation sits anywhere below a field's own schema (in a nested struct, an array, a tuple). */
const nested = (id: symbol, ast: SchemaAST.AST, seen: Set<SchemaAST.AST> = new Set()): boolean => {
  if (seen.has(ast)) return false
  seen.add(ast)
  switch (ast._tag) {
    case "TypeLiteral":
      return ast.propertySignatures.some((ps) => findAnnotation(id, ps.type) !== undefined || nested(id, ps.type, seen)) ||
        ast.indexSignatures.some((is) => findAnnotation(id, is.type) !== undefined || nested(id, is.type, seen))
    case "TupleType":
      return [...ast.elements.map((e) => e.type), ...ast.rest.map((r) => r.type)].some((t) =>
        findAnnotation(id, t) !== undefined || nested(id, t, seen)
      )
    case "Union":
      return ast.types.some((t) => nested(id, t, seen))
    case "Refinement":
      return nested(id, ast.from, seen)
    case "Transformation":
      return nested(id, ast.from, seen) || nested(id, ast.to, seen)
    case "Suspend":
      return nested(id, ast.f(), seen)
    default:
      return false
  }
}

const replacementOf = (
  type: string,
  property: Property,
  schema: Schema.Schema<unknown, unknown>,
  annotation: PersonalAnnotation
): Either.Either<Replacement, InvalidInput> => {
  if (annotation.replacement !== undefined) {
    const encoded = Schema.encodeEither(schema)(annotation.replacement.value)
    return Either.isLeft(encoded)
      ? Either.left(invalid(type, `the replacement of ${property.name} does not encode: ${ParseResult.TreeFormatter.formatErrorSync(encoded.left)}`))
      : Either.right({ _tag: "value", encoded: encoded.right })
  }
  if (property.isOptional) return Either.right({ _tag: "omit" })
  // an empty value the field's own schema accepts: null (NullOr, OptionFromNullOr), then an encoded Option.none
  for (const empty of [null, { _tag: "None" }]) {
    if (Either.isRight(Schema.decodeUnknownEither(schema)(empty))) return Either.right({ _tag: "value", encoded: empty })
  }
  return Either.left(
    invalid(
      type,
      `personal field ${property.name} needs a replacement (Privacy.personal({ replacement })): it is neither optional nor nullable`
    )
  )
}

/**
 * The plan of one event schema: `undefined` when it has no personal field. Fails with `InvalidInput` for a
 * declaration that cannot work (a personal field without a subject, a subject that is not a field, a field named
 * `$privacy`, a replacement that does not encode).
 */
export const planOf = (type: string, schema: Schema.Schema.Any): Either.Either<EventPlan | undefined, InvalidInput> => {
  const properties = propertiesOf(schema.ast)
  if (properties === undefined) {
    return nested(PersonalId, schema.ast) || nested(SubjectId, schema.ast)
      ? Either.left(invalid(type, "personal data is declared where it cannot be read: an event is a struct of fields"))
      : Either.right(undefined)
  }
  for (const property of properties) {
    if (nested(PersonalId, property.type) || nested(SubjectId, property.type)) {
      return Either.left(
        invalid(type, `${property.name}: Privacy.personal and Privacy.subject mark top-level fields of an event (mark ${property.name} itself)`)
      )
    }
  }
  const names = new Set(properties.map((p) => p.name))
  if (names.has(FIELD)) return Either.left(invalid(type, `${FIELD} is reserved for encrypted personal data`))
  const subjects = properties.filter((p) => findAnnotation(SubjectId, p.type) !== undefined).map((p) => p.name)
  const fields = new Map<string, FieldPlan>()
  const bySubject = new Map<string, Array<FieldPlan>>()
  for (const property of properties) {
    const annotation = findAnnotation<PersonalAnnotation>(PersonalId, property.type)
    if (annotation === undefined) continue
    if (subjects.includes(property.name)) {
      return Either.left(invalid(type, `${property.name} holds a subject id: it cannot be personal too`))
    }
    const subject = annotation.subject ?? (subjects.length === 1 ? subjects[0] : undefined)
    if (subject === undefined) {
      return Either.left(
        invalid(
          type,
          subjects.length === 0
            ? `personal field ${property.name} has no subject: mark the field holding the subject's id with Privacy.subject`
            : `personal field ${property.name}: name its subject (Privacy.personal({ subject })), the event has several`
        )
      )
    }
    if (!names.has(subject) || subject === property.name) {
      return Either.left(invalid(type, `personal field ${property.name}: its subject ${subject} is not another field of the event`))
    }
    const fieldSchema = Schema.make(property.type) as Schema.Schema<unknown, unknown>
    const replacement = replacementOf(type, property, fieldSchema, annotation)
    if (Either.isLeft(replacement)) return Either.left(replacement.left)
    const keep = annotation.keep
    const decode = Schema.decodeUnknownEither(fieldSchema)
    const encode = Schema.encodeEither(fieldSchema)
    const plan: FieldPlan = {
      name: property.name,
      subject,
      replacement: replacement.right,
      keep: keep === undefined ? undefined : (encoded) => {
        // the reasons name no value: they end up in errors and logs
        const value = decode(encoded)
        if (Either.isLeft(value)) return Either.left("the value does not decode with the field's schema")
        let kept: unknown
        try {
          kept = keep(value.right)
        } catch {
          return Either.left("keep threw")
        }
        return Either.mapLeft(encode(kept), () => "what keep returned does not encode with the field's schema")
      }
    }
    fields.set(property.name, plan)
    const list = bySubject.get(subject)
    if (list === undefined) bySubject.set(subject, [plan])
    else list.push(plan)
  }
  for (const plan of fields.values()) {
    if (fields.has(plan.subject)) {
      return Either.left(invalid(type, `personal field ${plan.name}: its subject ${plan.subject} is personal itself (a subject id stays in plain text)`))
    }
  }
  return Either.right(fields.size === 0 ? undefined : { type, bySubject, fields })
}

// --- keys and sealing ----------------------------------------------------------------------------------------------

const IV = 12
const TAG = 16

/** A key-encryption key from its text: 32 bytes as base64 (44 characters) or hex (64). */
export const parseKek = (text: string): Either.Either<Buffer, string> => {
  const trimmed = text.trim()
  const bytes = /^[0-9a-fA-F]{64}$/.test(trimmed)
    ? Buffer.from(trimmed, "hex")
    : /^[A-Za-z0-9+/_-]{43}=?$/.test(trimmed)
    ? Buffer.from(trimmed, "base64")
    : undefined
  return bytes !== undefined && bytes.length === 32
    ? Either.right(bytes)
    : Either.left("must be 32 bytes, as base64 (44 characters) or hex (64 characters)")
}

/** The fingerprint of a key-encryption key (an HMAC of a fixed text under it: it tells keys apart, reveals nothing). */
export const kekIdOf = (kek: Buffer): string =>
  createHmac("sha256", kek).update("effect-eventstore/privacy/kek").digest("base64url").slice(0, 22)

// IVs are drawn from the CSPRNG in blocks (one call per 1024 IVs instead of one per seal: a call costs microseconds);
// each IV is fresh random output, used once.
const ivPool = Buffer.alloc(IV * 1024)
let ivOffset = ivPool.length

const nextIv = (): Buffer => {
  if (ivOffset === ivPool.length) {
    randomFillSync(ivPool)
    ivOffset = 0
  }
  const iv = Buffer.from(ivPool.subarray(ivOffset, ivOffset + IV))
  ivOffset += IV
  return iv
}

/** Seals `plaintext` with AES-256-GCM: a random 12-byte IV, the ciphertext, the 16-byte tag. */
export const seal = (key: KeyObject, aad: string, plaintext: Buffer): Buffer => {
  const iv = nextIv()
  const cipher = createCipheriv("aes-256-gcm", key, iv)
  cipher.setAAD(Buffer.from(aad, "utf8"))
  const body = cipher.update(plaintext)
  const final = cipher.final()
  return Buffer.concat([iv, body, final, cipher.getAuthTag()])
}

/** Opens what `seal` sealed; `undefined` when it does not authenticate (tampered, another key or another AAD). */
export const open = (key: KeyObject, aad: string, sealed: Buffer): Buffer | undefined => {
  if (sealed.length < IV + TAG) return undefined
  try {
    const decipher = createDecipheriv("aes-256-gcm", key, sealed.subarray(0, IV))
    decipher.setAAD(Buffer.from(aad, "utf8"))
    decipher.setAuthTag(sealed.subarray(sealed.length - TAG))
    const plain = decipher.update(sealed.subarray(IV, sealed.length - TAG))
    decipher.final() // checks the tag; GCM returns nothing more
    return plain
  } catch {
    return undefined
  }
}

export const newDataKey = (): Buffer => randomBytes(32)

export const keyObject = (bytes: Buffer): KeyObject => createSecretKey(bytes)

/** What a wrapped data key is bound to: its id and version (a wrapped key moved to another id does not open). */
export const wrapAad = (keyId: string, version: number) => `effect-eventstore/privacy/key\u0000${keyId}\u0000${version}`

/**
 * What a sealed value is bound to: its key, the event's id and type, the field naming its subject, the fields it holds
 * and the parts kept in plain text beside it (a value moved to another event, or any of those edited, does not open).
 */
export const valueAad = (
  keyId: string,
  version: number,
  eventId: string,
  type: string,
  subject: string | undefined,
  fields: ReadonlyArray<string> | undefined,
  kept: Readonly<Record<string, unknown>> | undefined
) =>
  `${keyId}\u0000${version}\u0000${eventId}\u0000${type}\u0000${subject ?? "*"}\u0000${fields === undefined ? "*" : fields.join("\u0000")}\u0000${
    kept === undefined ? "" : JSON.stringify(Object.keys(kept).sort().map((k) => [k, kept[k]]))
  }`

// --- the stored form -------------------------------------------------------------------------------------------------

/**
 * One encrypted part of a payload: the key (`k`, version `v`) it is sealed with, the field holding its subject's id
 * (`s`) and the fields it holds (`f`) — both absent for a whole payload (`w: 1`) — the sealed JSON (`c`, base64) and
 * the parts kept in plain text (`p`).
 */
export interface Entry {
  readonly k: string
  readonly v: number
  readonly c: string
  readonly s?: string
  readonly f?: ReadonlyArray<string>
  readonly w?: 1
  readonly p?: Readonly<Record<string, unknown>>
}

const isRecord = (u: unknown): u is Record<string, unknown> => typeof u === "object" && u !== null && !Array.isArray(u)

/** The entries of a stored payload, `undefined` when it has none, or the reason they are malformed. */
export const entriesOf = (payload: unknown): ReadonlyArray<Entry> | undefined | string => {
  if (!isRecord(payload)) return undefined
  const entries = payload[FIELD]
  if (entries === undefined) return undefined
  if (!Array.isArray(entries) || entries.length === 0) return "malformed encrypted personal data"
  for (const entry of entries) {
    if (
      !isRecord(entry) || typeof entry.k !== "string" || typeof entry.c !== "string" ||
      typeof entry.v !== "number" || !Number.isSafeInteger(entry.v) || entry.v < 1 ||
      (entry.w === undefined
        ? typeof entry.s !== "string" || !Array.isArray(entry.f) || !entry.f.every((f: unknown) => typeof f === "string")
        : entry.w !== 1) ||
      (entry.p !== undefined && !isRecord(entry.p))
    ) return "malformed encrypted personal data"
  }
  return entries as ReadonlyArray<Entry>
}

/** The type a forgotten tenant's event is read as in global reads (see `Privacy.TENANT_FORGOTTEN`). */
export const TENANT_FORGOTTEN = "$privacy.TenantForgotten"

/** The key id of a data subject's key, and of a tenant's. */
export const subjectKeyId = (subject: string) => `subject:${subject}`
export const tenantKeyId = (tenant: string) => `tenant:${tenant}`

// --- for the bus -----------------------------------------------------------------------------------------------------

/** Where a decrypted event keeps the event as stored. */
export const storedFormKey = Symbol.for("effect-eventstore/privacy/stored")

/**
 * The event as the store holds it (its personal data encrypted), for an event `Privacy` decrypted; the event itself
 * for any other. What the bus forwarder publishes: the bus (and its dead letters) never hold plain personal data.
 */
export const storedForm = <A extends { readonly payload: unknown }>(event: A): A =>
  (event as { readonly [storedFormKey]?: A })[storedFormKey] ?? event

/** The part of the `Privacy` service the bus's consumers use (the same tag key: the same service). */
export interface Decryption {
  readonly decrypt: (event: RecordedEvent) => Effect.Effect<RecordedEvent, EventDecodeError | StoreError>
}

export const Decryption = Context.GenericTag<Decryption>("effect-eventstore/Privacy")

/** Sets `record[name]`, an own property even for `__proto__` (an assignment would set the prototype). */
export const put = (record: Record<string, unknown>, name: string, value: unknown): void => {
  if (name === "__proto__") Object.defineProperty(record, name, { value, enumerable: true, writable: true, configurable: true })
  else record[name] = value
}

/** Whether a payload carries encrypted parts. */
export const isEncrypted = (payload: unknown): boolean =>
  typeof payload === "object" && payload !== null && FIELD in payload
