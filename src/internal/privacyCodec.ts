/**
 * `Privacy`'s stored form of events: what an append encrypts (each subject's personal fields sealed together with
 * the subject's key; with tenants, the whole payload sealed again with the tenant's), and decryption on the way back
 * (a destroyed key's fields read as their declared replacements).
 */
import type { KeyObject } from "node:crypto"
import * as Chunk from "effect/Chunk"
import * as Effect from "effect/Effect"
import * as Either from "effect/Either"
import * as Stream from "effect/Stream"
import { EventDecodeError, InvalidInput, type StoreError } from "../Errors.js"
import type * as Event from "../Event.js"
import { checkId, type PreparedEvent } from "./codec.js"
import * as P from "./privacy.js"
import type { Keys } from "./privacyKeys.js"

const decodeError = (event: Event.RecordedEvent, reason: string) =>
  new EventDecodeError({ streamId: event.streamId, version: event.version, position: event.position, type: event.type, reason })

/** One subject's part of an event: its personal fields present, their key, the field naming them, the kept parts. */
export interface SubjectPart {
  readonly fields: ReadonlyArray<P.FieldPlan>
  readonly keyId: string
  readonly subjectField: string
  readonly kept: Record<string, unknown> | undefined
}

export interface Prepared {
  /** The event as the codec checked it: a plain JSON payload (a copy), its id, merged metadata and tenant. */
  readonly event: PreparedEvent
  /** The subjects whose personal fields are present. */
  readonly subjects: ReadonlyArray<SubjectPart>
  /** The names of those fields. */
  readonly personal: ReadonlySet<string>
  readonly tenant: string | undefined
}

/** Decrypted events up to the first that could not be (`error`), as a page of the store delivers them. */
export interface Decrypted {
  readonly events: ReadonlyArray<Event.RecordedEvent>
  readonly error: EventDecodeError | undefined
}

export interface CodecOptions {
  /** The plans by every name an event may be stored under. */
  readonly plans: ReadonlyMap<string, P.EventPlan>
  /** Whole payloads of tenants' events encrypted with the tenant's key. */
  readonly tenants: boolean
  readonly keys: Pick<Keys, "load" | "lookup" | "stale">
}

export const makeCodec = ({ keys: { load, lookup, stale }, plans, tenants }: CodecOptions) => {
  const subjectOf = (payload: Record<string, unknown>, field: string, type: string): Either.Either<string, InvalidInput> => {
    const value = payload[field]
    const id = typeof value === "number" && Number.isFinite(value) ? String(value) : value
    const problem = checkId(`event ${type}: subject ${field}`, id, 256)
    return problem === undefined ? Either.right(id as string) : Either.left(problem)
  }

  /**
   * What each event of an append encrypts, from the events as the codec checked them (so nothing is keyed, tracked
   * or sealed for an append the store would refuse); `undefined` when nothing is encrypted.
   */
  const prepare = (events: ReadonlyArray<PreparedEvent>): Either.Either<Array<Prepared> | undefined, InvalidInput> => {
    let any = false
    const out: Array<Prepared> = new Array(events.length)
    for (let i = 0; i < events.length; i++) {
      const event = events[i]!
      const payload = event.payload as Record<string, unknown>
      if (P.FIELD in payload) {
        return Either.left(new InvalidInput({ field: `event ${event.type}`, reason: `${P.FIELD} is reserved for encrypted personal data` }))
      }
      const plan = plans.get(event.type)
      const tenant = tenants ? (event.tenantId ?? event.metadata.tenantId) : undefined
      const subjects: Array<SubjectPart> = []
      const personal = new Set<string>()
      if (plan !== undefined) {
        for (const [field, fields] of plan.bySubject) {
          const present = fields.filter((f) => payload[f.name] !== undefined)
          if (present.length === 0) continue
          const id = subjectOf(payload, field, event.type)
          if (Either.isLeft(id)) return Either.left(id.left)
          // the parts kept in plain text, here: a `keep` that fails refuses the append before anything is keyed
          let kept: Record<string, unknown> | undefined = undefined
          for (const f of present) {
            personal.add(f.name)
            if (f.keep === undefined) continue
            const part = f.keep(payload[f.name])
            if (Either.isLeft(part)) return Either.left(new InvalidInput({ field: `event ${event.type}: ${f.name}`, reason: part.left }))
            kept ??= {}
            P.put(kept, f.name, part.right)
          }
          subjects.push({ fields: present, keyId: P.subjectKeyId(id.right), subjectField: field, kept })
        }
      }
      if (subjects.length > 0 || tenant !== undefined) any = true
      out[i] = { event, subjects, personal, tenant }
    }
    return Either.right(any ? out : undefined)
  }

  /** The event to append: its personal fields sealed by subject, then (a tenant's) the whole payload. */
  const encryptOne = (
    prepared: Prepared,
    original: Event.NewEvent,
    keys: ReadonlyMap<string, { readonly key: KeyObject; readonly version: number }>
  ): Event.NewEvent => {
    const { event } = prepared
    if (prepared.subjects.length === 0 && prepared.tenant === undefined) return original
    const eventId = event.eventId
    const source = event.payload as Record<string, unknown>
    // the unmarked fields, copied (not the personal ones deleted from a copy: that slows every later use of it)
    let payload: Record<string, unknown> = {}
    for (const name in source) {
      if (!prepared.personal.has(name)) P.put(payload, name, source[name])
    }
    const entries: Array<P.Entry> = []
    for (const { fields, keyId, kept, subjectField } of prepared.subjects) {
      const { key, version } = keys.get(keyId)!
      const values: Record<string, unknown> = {}
      for (const field of fields) P.put(values, field.name, source[field.name])
      const names = fields.map((f) => f.name)
      const sealed = P.seal(
        key,
        P.valueAad(keyId, version, eventId, event.type, subjectField, names, kept),
        Buffer.from(JSON.stringify(values), "utf8")
      )
      entries.push({
        k: keyId,
        v: version,
        s: subjectField,
        f: names,
        c: sealed.toString("base64"),
        ...(kept !== undefined ? { p: kept } : {})
      })
    }
    if (entries.length > 0) payload[P.FIELD] = entries
    if (prepared.tenant !== undefined) {
      const keyId = P.tenantKeyId(prepared.tenant)
      const { key, version } = keys.get(keyId)!
      const sealed = P.seal(
        key,
        P.valueAad(keyId, version, eventId, event.type, undefined, undefined, undefined),
        Buffer.from(JSON.stringify(payload), "utf8")
      )
      payload = { [P.FIELD]: [{ k: keyId, v: version, w: 1, c: sealed.toString("base64") }] }
    }
    return { ...original, eventId, payload }
  }

  // --- decryption ---
  /**
   * The event with its encrypted parts opened (or replaced), `undefined` for a forgotten tenant's, or the reason. The
   * keys it looks up inside tenants' payloads go to `inner` (known only once those are open).
   */
  const decryptOne = (event: Event.RecordedEvent, inner: Set<string>): Event.RecordedEvent | undefined | EventDecodeError => {
    let payload = event.payload as Record<string, unknown>
    let entries = P.entriesOf(payload)
    if (entries === undefined) return event
    for (let round = 0; round < 2; round++) {
      if (entries === undefined) break
      if (typeof entries === "string") return decodeError(event, entries)
      const out: Record<string, unknown> = {}
      for (const name in payload) {
        if (name !== P.FIELD) P.put(out, name, payload[name])
      }
      let whole: Record<string, unknown> | undefined = undefined
      const plan = plans.get(event.type)
      for (const entry of entries) {
        if (round > 0) inner.add(entry.k)
        // a subject's part is keyed to the subject its field names, as stored (an edited subject field does not move it)
        if (entry.s !== undefined) {
          const id = payload[entry.s]
          if ((typeof id !== "string" && typeof id !== "number") || P.subjectKeyId(String(id)) !== entry.k) {
            return decodeError(event, `its personal data is keyed to another subject than its field ${entry.s} names`)
          }
        }
        const key = lookup(entry.k, entry.v)
        if (key === "destroyed") {
          if (entry.w === 1) return undefined
          for (const name of entry.f!) {
            const kept = entry.p?.[name]
            if (kept !== undefined) {
              P.put(out, name, kept)
              continue
            }
            const replacement = plan?.fields.get(name)?.replacement
            if (replacement?._tag === "value") P.put(out, name, replacement.encoded)
          }
          continue
        }
        if (key === "unknown" || key === "unwrappable") {
          return decodeError(
            event,
            key === "unknown"
              ? `its personal data is encrypted with ${entry.k} version ${entry.v}, which the key store does not have`
              : `the data key ${entry.k} version ${entry.v} cannot be unwrapped with the key-encryption keys given`
          )
        }
        const plain = P.open(
          key,
          P.valueAad(entry.k, entry.v, event.eventId, event.type, entry.s, entry.f, entry.p),
          Buffer.from(entry.c, "base64")
        )
        if (plain === undefined) {
          return decodeError(event, `its personal data (version ${entry.v} of its key) does not authenticate: tampered, or moved from another event`)
        }
        let values: unknown
        try {
          values = JSON.parse(plain.toString("utf8"))
        } catch {
          return decodeError(event, "its decrypted personal data is not JSON")
        }
        if (typeof values !== "object" || values === null || Array.isArray(values)) {
          return decodeError(event, "its decrypted personal data is not an object")
        }
        if (entry.w === 1) whole = values as Record<string, unknown>
        else for (const name in values) P.put(out, name, (values as Record<string, unknown>)[name])
      }
      payload = whole ?? out
      if (whole === undefined) break
      entries = P.entriesOf(payload)
    }
    return { ...event, payload }
  }

  const keyIdsOf = (events: Iterable<Event.RecordedEvent>): Set<string> | undefined => {
    let ids: Set<string> | undefined = undefined
    for (const event of events) {
      const entries = P.entriesOf(event.payload)
      if (entries === undefined || typeof entries === "string") continue
      ids ??= new Set()
      for (const entry of entries) ids.add(entry.k)
    }
    return ids
  }

  /**
   * A decrypted event of a global read keeps the event as stored (what the bus forwarder publishes: see
   * `storedForm`). Reads of a stream (folds) do not need it, and it costs.
   */
  const withStoredForm = (decrypted: Event.RecordedEvent, stored: Event.RecordedEvent): Event.RecordedEvent => {
    Object.defineProperty(decrypted, P.storedFormKey, { value: stored, enumerable: false })
    return decrypted
  }

  /** A forgotten tenant's event, in a global read: its position, type `TENANT_FORGOTTEN` and an empty payload. */
  const placeholder = (event: Event.RecordedEvent): Event.RecordedEvent => {
    const out: Event.RecordedEvent = { ...event, type: P.TENANT_FORGOTTEN, schemaVersion: 1, payload: {} }
    Object.defineProperty(out, P.storedFormKey, { value: event, enumerable: false })
    return out
  }

  /** One pass over the events with the keys in the cache: the decrypted prefix, the first failure and where. */
  const pass = (events: ReadonlyArray<Event.RecordedEvent>, placeholders: boolean, inner: Set<string>) => {
    const out: Array<Event.RecordedEvent> = []
    for (let i = 0; i < events.length; i++) {
      const event = events[i]!
      const decrypted = decryptOne(event, inner)
      if (decrypted instanceof EventDecodeError) return { out, error: decrypted, at: i }
      if (decrypted === undefined) {
        if (!placeholders) {
          return { out, error: decodeError(event, "its tenant's key was destroyed (Privacy.forgetTenant)"), at: i }
        }
        out.push(placeholder(event))
        continue
      }
      out.push(placeholders && decrypted !== event ? withStoredForm(decrypted, event) : decrypted)
    }
    return { out, error: undefined, at: events.length }
  }

  /**
   * Decrypts events: those before the first that cannot be decrypted, and its error (as the store's own pages fail
   * after the events before a bad row). With `placeholders` (global reads: a reader keeps its place in the log), a
   * forgotten tenant's event becomes a placeholder and each decrypted event keeps its stored form; else it fails.
   */
  const decryptChunk = (
    events: ReadonlyArray<Event.RecordedEvent>,
    placeholders: boolean
  ): Effect.Effect<Decrypted, StoreError> => {
    const ids = keyIdsOf(events)
    if (ids === undefined) return Effect.succeed({ events, error: undefined })
    return Effect.gen(function*() {
      yield* load(ids)
      let inner = new Set<string>()
      let result = pass(events, placeholders, inner)
      // the keys inside tenants' payloads are known once those are open: read again those held too long
      const old = yield* Effect.clockWith((clock) => Effect.succeed(stale(inner, clock.unsafeCurrentTimeMillis())))
      if (old.length > 0) {
        yield* load(old)
        result = pass(events, placeholders, inner = new Set())
      }
      if (result.error !== undefined) {
        // a key version another process made since this one read the key: read its keys again, try once more
        const failed = events[result.at]!
        yield* load([...(keyIdsOf([failed]) ?? []), ...inner], 0)
        result = pass(events, placeholders, new Set())
      }
      return { events: result.out, error: result.error }
    })
  }

  /** `decryptChunk`, all or nothing. */
  const decryptAll = (
    events: ReadonlyArray<Event.RecordedEvent>,
    placeholders: boolean
  ): Effect.Effect<ReadonlyArray<Event.RecordedEvent>, EventDecodeError | StoreError> =>
    Effect.flatMap(decryptChunk(events, placeholders), (r) => r.error === undefined ? Effect.succeed(r.events) : Effect.fail(r.error))

  /** A stream of stored events decrypted: the events before one that cannot be, then its error. */
  const decryptStream = <E>(
    stream: Stream.Stream<Event.RecordedEvent, E>,
    placeholders: boolean
  ): Stream.Stream<Event.RecordedEvent, E | EventDecodeError | StoreError> =>
    Stream.flatMap(Stream.chunks(stream), (chunk) =>
      Stream.unwrap(Effect.map(decryptChunk(Chunk.toReadonlyArray(chunk), placeholders), ({ error, events }) => {
        const decrypted = Stream.fromChunk(Chunk.unsafeFromArray(events as Array<Event.RecordedEvent>))
        return error === undefined ? decrypted : Stream.concat(decrypted, Stream.fail(error))
      })))

  return { prepare, encryptOne, decryptAll, decryptStream }
}
