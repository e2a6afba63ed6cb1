/**
 * The bus's wire format: `encode` then `decode` gives the envelope back, and the hand-written fast path of `decode`
 * (`fastWire`) accepts only what Schema's decode of the wire struct accepts, giving the same value.
 */
import { describe, expect, it } from "@effect/vitest"
import { Bus } from "effect-eventstore"
import * as DateTime from "effect/DateTime"
import * as Either from "effect/Either"
import * as FastCheck from "effect/FastCheck"
import * as Schema from "effect/Schema"

const Wire = Schema.Struct({
  eventId: Schema.String,
  streamId: Schema.String,
  streamType: Schema.String,
  version: Schema.Int,
  position: Schema.Int,
  type: Schema.String,
  schemaVersion: Schema.Int,
  recordedAt: Schema.DateTimeUtc,
  metadata: Schema.Record({ key: Schema.String, value: Schema.Unknown }),
  payload: Schema.Unknown
})
const bySchema = Schema.decodeUnknownEither(Wire)

const anyValue = FastCheck.oneof(
  FastCheck.string(),
  FastCheck.integer(),
  FastCheck.double(),
  FastCheck.constant(Number.MAX_SAFE_INTEGER + 2),
  FastCheck.boolean(),
  FastCheck.constant(null),
  FastCheck.constant(undefined),
  FastCheck.array(FastCheck.integer(), { maxLength: 2 }),
  FastCheck.dictionary(FastCheck.string({ maxLength: 3 }), FastCheck.string(), { maxKeys: 2 }),
  FastCheck.constantFrom("2026-11-27T10:00:00.000Z", "2026-11-27", "not a date", "")
)
const field = <A>(valid: FastCheck.Arbitrary<A>) => FastCheck.oneof({ arbitrary: valid, weight: 4 }, { arbitrary: anyValue, weight: 1 })
const wireLike = FastCheck.record({
  eventId: field(FastCheck.uuid()),
  streamId: field(FastCheck.string()),
  streamType: field(FastCheck.string()),
  version: field(FastCheck.integer({ min: 1 })),
  position: field(FastCheck.integer({ min: 1 })),
  type: field(FastCheck.string()),
  schemaVersion: field(FastCheck.integer({ min: 1, max: 5 })),
  recordedAt: field(FastCheck.date({ min: new Date(0), max: new Date(4e12) }).map((d) => d.toISOString())),
  metadata: field(FastCheck.dictionary(
    FastCheck.oneof(FastCheck.string({ maxLength: 5 }), FastCheck.constantFrom("__proto__", "tenantId")),
    FastCheck.string()
  )),
  payload: field(FastCheck.jsonValue()),
  extra: FastCheck.option(FastCheck.string())
}, { requiredKeys: ["eventId"] })

describe("bus wire format", () => {
  it.prop("the fast decode agrees with Schema's", [wireLike], ([candidate]) => {
    // as JSON.parse would give it (own data properties, "__proto__" included)
    const json: unknown = JSON.parse(JSON.stringify(candidate))
    const fast = Bus.fastWire(json)
    const slow = bySchema(json)
    if (fast === undefined) return true // Schema decides those
    expect(Either.isRight(slow)).toBe(true)
    expect(fast).toEqual(Either.getOrThrow(slow))
    expect(Bus.decodeJson(json)).toEqual(Either.right(fast))
    return true
  }, { fastCheck: { numRuns: 2000 } })

  it.prop("accepts every well-formed envelope, and encode/decode round-trips", [wireLike.filter((w) => Either.isRight(bySchema(JSON.parse(JSON.stringify(w)))))], ([candidate]) => {
    const json: unknown = JSON.parse(JSON.stringify(candidate))
    const meta = (json as { metadata: object }).metadata
    if (!Object.hasOwn(meta, "__proto__") && !Array.isArray(meta)) expect(Bus.fastWire(json)).toBeDefined()
    const envelope = Either.getOrThrow(Bus.decode(JSON.stringify(json)))
    expect(Bus.decode(Bus.encode(envelope))).toEqual(Either.right(envelope))
    return true
  }, { fastCheck: { numRuns: 500 } })

  it("refuses what is not an envelope, with Schema's reason", () => {
    expect(Either.isLeft(Bus.decode("{"))).toBe(true)
    const good = Bus.encode({
      eventId: "e",
      streamId: "s",
      streamType: "T",
      version: 1,
      position: 1,
      type: "X",
      schemaVersion: 1,
      payload: {},
      metadata: {},
      recordedAt: DateTime.unsafeMake(0)
    })
    const bad = JSON.stringify({ ...JSON.parse(good), version: 1.5 })
    const decoded = Bus.decode(bad)
    expect(Either.isLeft(decoded) && decoded.left).toContain("version")
  })
})
