/**
 * `Privacy`'s stored form of events: what an append encrypts (each subject's personal fields sealed together with
 * the subject's key; with tenants, the whole payload sealed again with the tenant's), and decryption on the way back
 * (a destroyed key's fields read as their declared replacements).
 */
import type { KeyObject } from "node:crypto"
import * as Effect from "effect/Effect"
import * as Either from "effect/Either"
import { EventDecodeError, InvalidInput, type StoreError } from "../Errors.js"
import type * as Event from "../Event.js"
import { checkId, type PreparedEvent } from "./codec.js"
import * as P from "./privacy.js"
import type { Keys } from "./privacyKeys.js"

const decodeError = (event: Event.RecordedEvent, reason: string) =>
  new EventDecodeError({ streamId: event.streamId, version: event.version, position: event.position, type: event.type, reason })

export interface Prepared {
  /** The event as the codec checked it: a plain JSON payload (a copy), its id, merged metadata and tenant. */
  readonly event: PreparedEvent
  /** The subjects whose personal fields are present: their fields and key id. */
  readonly subjects: ReadonlyArray<readonly [fields: ReadonlyArray<P.FieldPlan>, keyId: string]>
  /** The names of those fields. */
  readonly personal: ReadonlySet<string>
  readonly tenant: string | undefined
}

export interface CodecOptions {
  /** The plans by every name an event may be stored under. */
  readonly plans: ReadonlyMap<string, P.EventPlan>
  /** Whole payloads of tenants' events encrypted with the tenant's key. */
  readonly tenants: boolean
  readonly keys: Pick<Keys, "load" | "lookup">
}

export const makeCodec = ({ keys: { load, lookup }, plans, tenants }: CodecOptions) => {
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
      const subjects: Array<readonly [ReadonlyArray<P.FieldPlan>, string]> = []
      const personal = new Set<string>()
      if (plan !== undefined) {
        for (const [field, fields] of plan.bySubject) {
          const present = fields.filter((f) => payload[f.name] !== undefined)
          if (present.length === 0) continue
          const id = subjectOf(payload, field, event.type)
          if (Either.isLeft(id)) return Either.left(id.left)
          subjects.push([present, P.subjectKeyId(id.right)])
          for (const f of present) personal.add(f.name)
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
  ): Either.Either<Event.NewEvent, InvalidInput> => {
    const { event } = prepared
    if (prepared.subjects.length === 0 && prepared.tenant === undefined) return Either.right(original)
    const eventId = event.eventId
    const source = event.payload as Record<string, unknown>
    // the unmarked fields, copied (not the personal ones deleted from a copy: that slows every later use of it)
    let payload: Record<string, unknown> = {}
    for (const name in source) {
      if (!prepared.personal.has(name)) payload[name] = source[name]
    }
    const entries: Array<P.Entry> = []
    for (const [fields, keyId] of prepared.subjects) {
      const { key, version } = keys.get(keyId)!
      const values: Record<string, unknown> = {}
      let kept: Record<string, unknown> | undefined = undefined
      for (const field of fields) {
        const value = source[field.name]
        values[field.name] = value
        if (field.keep !== undefined) {
          const part = field.keep(value)
          if (Either.isLeft(part)) {
            return Either.left(new InvalidInput({ field: `event ${event.type}: ${field.name}`, reason: part.left }))
          }
          kept ??= {}
          kept[field.name] = part.right
        }
      }
      const names = fields.map((f) => f.name)
      const sealed = P.seal(
        key,
        P.valueAad(keyId, version, eventId, event.type, names, kept),
        Buffer.from(JSON.stringify(values), "utf8")
      )
      entries.push({ k: keyId, v: version, f: names, c: sealed.toString("base64"), ...(kept !== undefined ? { p: kept } : {}) })
    }
    if (entries.length > 0) payload[P.FIELD] = entries
    if (prepared.tenant !== undefined) {
      const keyId = P.tenantKeyId(prepared.tenant)
      const { key, version } = keys.get(keyId)!
      const sealed = P.seal(
        key,
        P.valueAad(keyId, version, eventId, event.type, undefined, undefined),
        Buffer.from(JSON.stringify(payload), "utf8")
      )
      payload = { [P.FIELD]: [{ k: keyId, v: version, w: 1, c: sealed.toString("base64") }] }
    }
    return Either.right({ ...original, eventId, payload })
  }

  // --- decryption ---
  /** The event with its encrypted parts opened (or replaced), `undefined` for a forgotten tenant's, or the reason. */
  const decryptOne = (event: Event.RecordedEvent): Event.RecordedEvent | undefined | EventDecodeError => {
    if (P.entriesOf(event.payload) === undefined) return event
    let payload = event.payload as Record<string, unknown>
    for (let round = 0; round < 2; round++) {
      const entries = P.entriesOf(payload)
      if (entries === undefined) break
      if (typeof entries === "string") return decodeError(event, entries)
      const out: Record<string, unknown> = {}
      for (const name in payload) {
        if (name !== P.FIELD) out[name] = payload[name]
      }
      let whole: Record<string, unknown> | undefined = undefined
      const plan = plans.get(event.type)
      for (const entry of entries) {
        // a subject's part is keyed to the subject its fields name (an edited subject field does not move it)
        const owner = entry.f === undefined || entry.f.length === 0 ? undefined : plan?.fields.get(entry.f[0]!)?.subject
        if (owner !== undefined) {
          const id = payload[owner]
          if (typeof id !== "string" && typeof id !== "number" || P.subjectKeyId(String(id)) !== entry.k) {
            return decodeError(event, `its personal data is keyed to another subject than its field ${owner} names`)
          }
        }
        const key = lookup(entry.k, entry.v)
        if (key === "destroyed") {
          if (entry.w === 1) return undefined
          for (const name of entry.f!) {
            const kept = entry.p?.[name]
            if (kept !== undefined) {
              out[name] = kept
              continue
            }
            const replacement = plan?.fields.get(name)?.replacement
            if (replacement?._tag === "value") out[name] = replacement.encoded
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
          P.valueAad(entry.k, entry.v, event.eventId, event.type, entry.f, entry.p),
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
        else Object.assign(out, values)
      }
      payload = whole ?? out
      if (whole === undefined) break
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
  const tenantForgotten = (event: Event.RecordedEvent) =>
    decodeError(event, "its tenant's key was destroyed (Privacy.forgetTenant)")

  /**
   * Decrypts events. With `placeholders` (global reads: a reader keeps its place in the log), a forgotten tenant's
   * event becomes a `placeholder` and each decrypted event keeps its stored form; else a forgotten tenant's fails.
   */
  const decryptAll = (
    events: ReadonlyArray<Event.RecordedEvent>,
    placeholders: boolean
  ): Effect.Effect<ReadonlyArray<Event.RecordedEvent>, EventDecodeError | StoreError> => {
    const ids = keyIdsOf(events)
    if (ids === undefined) return Effect.succeed(events)
    return Effect.flatMap(load(ids), () => {
      // a tenant's payload holds its subjects' entries: they are known only once it is open
      const inner = new Set<string>()
      const out: Array<Event.RecordedEvent> = new Array(events.length)
      const retry: Array<number> = []
      for (let i = 0; i < events.length; i++) {
        const event = events[i]!
        const decrypted = decryptOne(event)
        if (decrypted instanceof EventDecodeError) {
          // a key this process has not read yet (a version made by another process since), or a subject's key
          // inside a tenant's payload: read them and try again once
          const entries = P.entriesOf(event.payload)
          if (entries !== undefined && typeof entries !== "string") for (const e of entries) inner.add(e.k)
          retry.push(i)
          out[i] = event
          continue
        }
        if (decrypted === undefined) {
          if (!placeholders) return Effect.fail(tenantForgotten(event))
          out[i] = placeholder(event)
          continue
        }
        out[i] = placeholders && decrypted !== event ? withStoredForm(decrypted, event) : decrypted
      }
      if (retry.length === 0) return Effect.succeed(out)
      return Effect.flatMap(load(subjectIdsInside(retry.map((i) => out[i]!)).concat([...inner]), 0), () => {
        for (const i of retry) {
          const decrypted = decryptOne(out[i]!)
          if (decrypted instanceof EventDecodeError) return Effect.fail(decrypted)
          if (decrypted === undefined) {
            if (!placeholders) return Effect.fail(tenantForgotten(out[i]!))
            out[i] = placeholder(out[i]!)
            continue
          }
          out[i] = placeholders && decrypted !== out[i] ? withStoredForm(decrypted, out[i]!) : decrypted
        }
        return Effect.succeed(out)
      })
    })
  }

  /** The subjects' key ids inside tenants' payloads (their entries are sealed inside the tenant's). */
  const subjectIdsInside = (events: ReadonlyArray<Event.RecordedEvent>): Array<string> => {
    const ids: Array<string> = []
    for (const event of events) {
      const entries = P.entriesOf(event.payload)
      if (entries === undefined || typeof entries === "string") continue
      for (const entry of entries) {
        if (entry.w !== 1) continue
        const key = lookup(entry.k, entry.v)
        if (typeof key === "string") continue
        const plain = P.open(
          key,
          P.valueAad(entry.k, entry.v, event.eventId, event.type, undefined, undefined),
          Buffer.from(entry.c, "base64")
        )
        if (plain === undefined) continue
        try {
          const inner = P.entriesOf(JSON.parse(plain.toString("utf8")))
          if (inner !== undefined && typeof inner !== "string") for (const e of inner) ids.push(e.k)
        } catch {
          // reported by the decryption itself
        }
      }
    }
    return ids
  }


  return { prepare, encryptOne, decryptAll }
}
