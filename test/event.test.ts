import { uuidV7 } from "../src/internal/uuid.js"
import { describe, expect, it } from "@effect/vitest"
import { Event } from "effect-eventstore"
import * as DateTime from "effect/DateTime"
import * as FastCheck from "effect/FastCheck"
import * as Either from "effect/Either"
import * as Schema from "effect/Schema"
import * as Codec from "../src/internal/codec.js"

class Renamed extends Schema.TaggedClass<Renamed>()("Renamed", { name: Schema.String, at: Schema.DateFromString }) {}
const Deposited = Schema.TaggedStruct("Deposited", { amount: Schema.Int, currency: Schema.String })

const stored = (type: string, payload: unknown, schemaVersion = 1): Event.RecordedEvent => ({
  eventId: "e",
  streamId: "S-1",
  streamType: "S",
  version: 3,
  position: 42,
  type,
  schemaVersion,
  payload,
  metadata: {},
  recordedAt: DateTime.unsafeMake(0)
})

describe("Event registry", () => {
  const registry = Event.registry([
    Renamed,
    Event.versioned(Deposited, 2, (payload) => ({ ...(payload as object), currency: "EUR" }))
  ])

  it("encodes without the _tag (the type is its own column) and with the schema version", () => {
    const encoded = Either.getOrThrow(registry.encode(new Renamed({ name: "x", at: new Date(0) })))
    expect(encoded).toEqual({ type: "Renamed", payload: { name: "x", at: "1970-01-01T00:00:00.000Z" }, schemaVersion: 1 })
    const deposited = Either.getOrThrow(registry.encode(Deposited.make({ amount: 1, currency: "USD" }), { eventId: "id-1" }))
    expect(deposited).toEqual({ type: "Deposited", payload: { amount: 1, currency: "USD" }, schemaVersion: 2, eventId: "id-1" })
  })

  it("decodes back to the domain value (class instances included)", () => {
    const decoded = Either.getOrThrow(registry.decode(stored("Renamed", { name: "x", at: "1970-01-01T00:00:00.000Z" })))
    expect(decoded.payload).toBeInstanceOf(Renamed)
    expect(decoded.payload).toEqual(new Renamed({ name: "x", at: new Date(0) }))
    expect(decoded.position).toBe(42)
    expect(registry.types).toEqual(["Renamed", "Deposited"])
  })

  it("upcasts payloads written by an older schema version", () => {
    const decoded = Either.getOrThrow(registry.decode(stored("Deposited", { amount: 5 }, 1)))
    expect(decoded.payload).toEqual({ _tag: "Deposited", amount: 5, currency: "EUR" })
  })

  it("decode failures are EventDecodeErrors naming the event, never defects", () => {
    const cases = [
      stored("Nope", {}),
      stored("Deposited", { amount: "x", currency: "EUR" }, 2),
      stored("Deposited", { amount: 1, currency: "EUR" }, 3),
      stored("Deposited", null, 2)
    ]
    for (const event of cases) {
      const result = registry.decode(event)
      expect(Either.isLeft(result)).toBe(true)
      expect(Either.isLeft(result) && result.left).toMatchObject({
        _tag: "EventDecodeError",
        streamId: "S-1",
        version: 3,
        position: 42,
        type: event.type
      })
    }
    const throwing = Event.registry([Event.versioned(Deposited, 2, () => {
      throw new Error("boom")
    })])
    const failed = throwing.decode(stored("Deposited", {}, 1))
    expect(Either.isLeft(failed) && failed.left.reason).toContain("boom")
  })

  it("encoding a value that fails its schema is InvalidInput", () => {
    const result = registry.encode(Deposited.make({ amount: 1.5, currency: "EUR" }, { disableValidation: true }))
    expect(Either.isLeft(result) && result.left._tag).toBe("InvalidInput")
  })

  it("an event whose schema encodes to something JSON does not read back is refused at append, not stored", () => {
    const AtSelf = Schema.TaggedStruct("AtSelf", { at: Schema.DateFromSelf, tags: Schema.ReadonlySetFromSelf(Schema.String) })
    const AtString = Schema.TaggedStruct("AtString", { at: Schema.Date, tags: Schema.ReadonlySet(Schema.String) })
    const both = Event.registry([AtSelf, AtString])
    const self = Either.getOrThrow(both.encode(AtSelf.make({ at: new Date(0), tags: new Set(["a"]) })))
    const refused = Codec.prepareAppend("S-1", [self], undefined, 0)
    expect(Either.isLeft(refused) && refused.left).toMatchObject({ _tag: "InvalidInput", field: "events[0].payload" })
    expect(Either.isLeft(refused) && refused.left.reason).toMatch(/holds a Date at payload\.at/)
    // the JSON-friendly encodings of the same values are stored, and decode back from what was stored
    const json = Either.getOrThrow(both.encode(AtString.make({ at: new Date(0), tags: new Set(["a"]) })))
    const prepared = Either.getOrThrow(Codec.prepareAppend("S-1", [json], undefined, 0))
    const [recorded] = Codec.recorded(prepared, [1], 1)
    expect(recorded!.payload).toEqual(JSON.parse(prepared.events[0]!.payloadJson))
    expect(Either.getOrThrow(both.decodePayload(recorded!))).toEqual(AtString.make({ at: new Date(0), tags: new Set(["a"]) }))
  })

  it("rejects schemas without a literal _tag and duplicate types at definition time", () => {
    expect(() => Event.registry([Schema.Struct({ a: Schema.String })])).toThrow(/_tag/)
    expect(() => Event.registry([Deposited, Deposited])).toThrow(/twice/)
  })
})

describe("fast decode path", () => {
  const Rich = Schema.TaggedStruct("Rich", {
    n: Schema.Int,
    s: Schema.String.pipe(Schema.minLength(2)),
    b: Schema.Boolean,
    kind: Schema.Literal("a", "b"),
    maybe: Schema.optional(Schema.Number),
    exact: Schema.optionalWith(Schema.String, { exact: true }),
    id: Schema.String.pipe(Schema.brand("Id"))
  })
  const registry = Event.registry([Rich])
  const full = Schema.decodeUnknownEither(Rich)
  const valueArb = FastCheck.oneof(
    FastCheck.integer(),
    FastCheck.double(),
    FastCheck.string(),
    FastCheck.boolean(),
    FastCheck.constantFrom("a", "b", undefined, null)
  )
  const payloadArb = FastCheck.record(
    { n: valueArb, s: valueArb, b: valueArb, kind: valueArb, maybe: valueArb, exact: valueArb, id: valueArb, extra: valueArb },
    { requiredKeys: [] }
  )

  it.prop("agrees with Schema's decode on every input", [payloadArb], ([payload]) => {
    const viaRegistry = registry.decode(stored("Rich", payload))
    const viaSchema = full({ ...payload, _tag: "Rich" })
    expect(Either.isRight(viaRegistry)).toBe(Either.isRight(viaSchema))
    if (Either.isRight(viaRegistry) && Either.isRight(viaSchema)) {
      expect(viaRegistry.right.payload).toStrictEqual(viaSchema.right)
    }
  }, { fastCheck: { numRuns: 2000 } })

  const encodeFull = Schema.encodeEither(Rich as unknown as Schema.Schema<unknown, unknown>)
  it.prop("encoding agrees with Schema's encode on every input", [payloadArb], ([payload]) => {
    const event = { ...payload, _tag: "Rich" }
    const viaRegistry = registry.encode(event as never)
    const viaSchema = encodeFull(event)
    expect(Either.isRight(viaRegistry)).toBe(Either.isRight(viaSchema))
    if (Either.isRight(viaRegistry) && Either.isRight(viaSchema)) {
      const { _tag, ...expected } = viaSchema.right as Record<string, unknown>
      expect(_tag).toBe("Rich")
      expect(viaRegistry.right.payload).toStrictEqual(expected)
    }
  }, { fastCheck: { numRuns: 2000 } })

  it("valid payloads are decoded (excess keys dropped, as Schema does)", () => {
    const ok = registry.decode(stored("Rich", { n: 1, s: "xy", b: true, kind: "a", id: "i", extra: 5 }))
    expect(Either.getOrThrow(ok).payload).toStrictEqual({ _tag: "Rich", n: 1, s: "xy", b: true, kind: "a", id: "i" })
  })
})

describe("event ids", () => {
  it("are RFC 9562 version 7 UUIDs, time-ordered, unique", () => {
    const ids = Array.from({ length: 2000 }, (_, i) => uuidV7(1_700_000_000_000 + Math.floor(i / 10)))
    for (const id of ids) expect(id).toMatch(/^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/)
    expect(new Set(ids).size).toBe(ids.length)
    // the first 48 bits are the milliseconds
    expect(Number.parseInt(ids[1999]!.replace(/-/g, "").slice(0, 12), 16)).toBe(1_700_000_000_199)
    const byTime = ids.filter((_, i) => i % 10 === 0)
    expect([...byTime].sort()).toEqual(byTime)
  })
})
