/**
 * The input rules of an append, proved on adversarial values: the hand-written checks on the append path accept
 * exactly what the Schemas (`Event.Metadata`, `ExpectedVersion`) accept, and exactly the payloads whose JSON reads
 * back as the same value. And event type names are any strings: analytics count `__proto__` and `constructor` like
 * any other type, through the Tracker, `merge` and the Schema/JSON round trip of a snapshot.
 */
import { describe, expect, it } from "@effect/vitest"
import { Analytics, Event } from "effect-eventstore"
import { ExpectedVersion } from "effect-eventstore/Errors"
import * as DateTime from "effect/DateTime"
import * as Either from "effect/Either"
import * as FastCheck from "effect/FastCheck"
import * as Option from "effect/Option"
import * as Schema from "effect/Schema"
import * as Codec from "../src/internal/codec.js"

// --- adversarial values ------------------------------------------------------------------------------------------

class Point {
  x = 1
}
class Stamp {
  toJSON() {
    return "2024-01-01"
  }
}
class Shaped {
  a = 1
  toJSON() {
    return { a: 1 }
  }
}
class List extends Array<number> {}
const holey: Array<number> = [1]
holey[2] = 3

/** Values JSON does not read back as written, or that are not JSON at all. */
const odd = FastCheck.constantFrom<unknown>(
  undefined,
  Number.NaN,
  Infinity,
  -Infinity,
  () => 1,
  Symbol("s"),
  10n,
  new Date(0),
  new Map([["a", 1]]),
  new Set([1]),
  new String("ab"),
  new Number(1),
  new Boolean(false),
  new Point(),
  new Stamp(),
  new Shaped(),
  Object.create({ inherited: "x" }),
  /re/,
  new Uint8Array(2),
  List.of(1),
  holey,
  [undefined]
)

/** Keys that trip up objects used as maps. */
const key = FastCheck.oneof(
  { weight: 4, arbitrary: FastCheck.string({ maxLength: 3 }) },
  { weight: 1, arbitrary: FastCheck.constantFrom("__proto__", "constructor", "toString", "toJSON", "hasOwnProperty", "0") }
)

const enumerable = FastCheck.oneof({ weight: 9, arbitrary: FastCheck.constant(true) }, { weight: 1, arbitrary: FastCheck.constant(false) })

/**
 * An object from entries, each defined as an own property (so "__proto__" is a key, not the prototype), on
 * `Object.prototype` or `null`, sometimes with a symbol key.
 */
const objectOf = (entries: FastCheck.Arbitrary<readonly [string, unknown, boolean]>) =>
  FastCheck.tuple(
    FastCheck.array(entries, { maxLength: 4 }),
    FastCheck.constantFrom("object", "object", "object", "null"),
    FastCheck.oneof({ weight: 12, arbitrary: FastCheck.constant(false) }, { weight: 1, arbitrary: FastCheck.constant(true) })
  ).map(([entries, proto, symbol]) => {
    const out: Record<PropertyKey, unknown> = proto === "null" ? Object.create(null) : {}
    for (const [k, value, isEnumerable] of entries) {
      Object.defineProperty(out, k, { value, enumerable: isEnumerable, writable: true, configurable: true })
    }
    if (symbol) out[Symbol("s")] = "x"
    return out
  })

const jsonLeaf = FastCheck.oneof(
  FastCheck.string({ maxLength: 4 }),
  FastCheck.integer(),
  FastCheck.double({ noNaN: true, noDefaultInfinity: true }),
  FastCheck.boolean(),
  FastCheck.constant(null),
  FastCheck.constant(-0)
)

const { value } = FastCheck.letrec<{ value: unknown; object: Record<PropertyKey, unknown>; array: Array<unknown> }>(
  (tie) => ({
    value: FastCheck.oneof(
      { depthSize: "small" },
      { weight: 8, arbitrary: jsonLeaf },
      { weight: 1, arbitrary: odd },
      { weight: 3, arbitrary: tie("object") },
      { weight: 2, arbitrary: tie("array") }
    ),
    object: objectOf(FastCheck.tuple(key, tie("value"), enumerable)),
    array: FastCheck.array(tie("value"), { maxLength: 4 })
  })
)

/** What a payload may be: mostly objects, and anything else now and then. */
const payloadArb = FastCheck.oneof(
  { weight: 10, arbitrary: objectOf(FastCheck.tuple(key, value, enumerable)) },
  { weight: 1, arbitrary: odd },
  { weight: 1, arbitrary: value }
)

const stringFields = FastCheck.constantFrom("correlationId", "causationId", "tenantId", "principalId")
const mostlyString = FastCheck.oneof({ weight: 10, arbitrary: FastCheck.string({ maxLength: 4 }) }, { weight: 1, arbitrary: odd }, {
  weight: 1,
  arbitrary: value
})
const tagsArb = FastCheck.oneof(
  { weight: 10, arbitrary: objectOf(FastCheck.tuple(key, mostlyString, enumerable)) },
  { weight: 1, arbitrary: odd },
  { weight: 1, arbitrary: value }
)
/** What metadata may be: mostly the right fields with mostly the right values, and every kind of wrong. */
const metadataArb = FastCheck.oneof(
  {
    weight: 12,
    arbitrary: objectOf(FastCheck.oneof(
      { weight: 6, arbitrary: FastCheck.tuple(stringFields, mostlyString, enumerable) },
      { weight: 3, arbitrary: FastCheck.tuple(FastCheck.constant("tags"), tagsArb, enumerable) },
      { weight: 1, arbitrary: FastCheck.tuple(FastCheck.constantFrom("extra", "__proto__", "constructor", "Tags"), value, enumerable) }
    ))
  },
  { weight: 1, arbitrary: odd },
  { weight: 1, arbitrary: value }
)

const expectedVersionArb = FastCheck.oneof(
  FastCheck.integer({ min: -3, max: 1_000_000 }),
  FastCheck.double(),
  FastCheck.string({ maxLength: 3 }),
  FastCheck.constantFrom<unknown>(
    "any",
    "no-stream",
    "stream-exists",
    "Any",
    "5",
    "",
    null,
    undefined,
    -0,
    2 ** 53,
    2 ** 53 - 1,
    Number.MAX_VALUE,
    new Number(1),
    new String("any"),
    [],
    [1],
    {},
    1n,
    true
  ),
  value
)

// --- the oracle for payloads -------------------------------------------------------------------------------------

/**
 * Whether `parsed` (JSON's reading of `original`) is the same value: plain objects (either prototype) with the same
 * keys — less those whose value is `undefined`, which JSON leaves out — plain arrays, equal primitives (`-0` equals
 * `0`, as `===` says).
 */
const sameAsJson = (original: unknown, parsed: unknown): boolean => {
  if (typeof original === "number") return Number.isFinite(original) && parsed === original
  if (typeof original === "string" || typeof original === "boolean" || original === null) return parsed === original
  if (typeof original !== "object") return false
  if (Array.isArray(original)) {
    if (Object.getPrototypeOf(original) !== Array.prototype || !Array.isArray(parsed)) return false
    return parsed.length === original.length && original.every((item, i) => sameAsJson(item, parsed[i])) &&
      Object.keys(original).length === original.length // no holes
  }
  const proto = Object.getPrototypeOf(original)
  if (proto !== Object.prototype && proto !== null) return false
  if (typeof parsed !== "object" || parsed === null || Array.isArray(parsed)) return false
  const record = original as Record<string, unknown>
  const keys = Object.keys(record).filter((k) => record[k] !== undefined)
  return keys.length === Object.keys(parsed).length &&
    keys.every((k) => Object.hasOwn(parsed, k) && sameAsJson(record[k], (parsed as Record<string, unknown>)[k]))
}

const readsBackTheSame = (payload: unknown): boolean => {
  if (typeof payload !== "object" || payload === null || Array.isArray(payload)) return false
  let json: string | undefined
  try {
    json = JSON.stringify(payload)
  } catch {
    return false
  }
  return json !== undefined && sameAsJson(payload, JSON.parse(json))
}

/**
 * Equal as JSON values, prototypes included (`toStrictEqual` compares `constructor` properties, which payloads may
 * have as own keys).
 */
const jsonEqual = (a: unknown, b: unknown): boolean => {
  if (typeof a !== "object" || a === null || typeof b !== "object" || b === null) return Object.is(a, b)
  if (Object.getPrototypeOf(a) !== Object.getPrototypeOf(b)) return false
  if (Array.isArray(a)) return Array.isArray(b) && a.length === b.length && a.every((item, i) => jsonEqual(item, b[i]))
  const keys = Object.keys(a)
  return keys.length === Object.keys(b).length &&
    keys.every((k, i) => Object.keys(b)[i] === k && jsonEqual((a as Record<string, unknown>)[k], (b as Record<string, unknown>)[k]))
}

const prepare = (events: ReadonlyArray<Event.NewEvent>, options?: Codec.AppendInput) =>
  Codec.prepareAppend("Rules-1", events, options, 1_700_000_000_000)

/** Both answers are common enough in an arbitrary's values for a property over it to mean something. */
const expectBothAnswers = <A>(arbitrary: FastCheck.Arbitrary<A>, accepts: (a: A) => boolean) => {
  const samples = FastCheck.sample(arbitrary, { numRuns: 2000, seed: 42 })
  const accepted = samples.filter(accepts).length
  expect(accepted).toBeGreaterThan(samples.length * 0.15)
  expect(accepted).toBeLessThan(samples.length * 0.85)
}

// --- payloads ----------------------------------------------------------------------------------------------------

describe("payload rule: a plain JSON object that reads back as it was written", () => {
  it.prop("accepted exactly when its JSON reads back as the same value; then stored and returned as that JSON", [payloadArb], ([payload]) => {
    const prepared = prepare([{ type: "A", payload }])
    expect(Either.isRight(prepared)).toBe(readsBackTheSame(payload))
    if (Either.isLeft(prepared)) {
      expect(prepared.left).toMatchObject({ _tag: "InvalidInput", field: "events[0].payload" })
      return
    }
    const event = prepared.right.events[0]!
    // what the result carries is what a read parses (keys in the same order), and is not the caller's object
    const [recorded] = Codec.recorded(prepared.right, [1], 1)
    expect(jsonEqual(recorded!.payload, JSON.parse(event.payloadJson))).toBe(true)
    expect(recorded!.payload).not.toBe(payload)
  }, { fastCheck: { numRuns: 3000 } })

  it("the property sees both accepted and refused payloads", () => expectBothAnswers(payloadArb, readsBackTheSame))

  it("own keys named like Object.prototype's members are kept in order", () => {
    const payload = { constructor: {}, toString: "s", "1": 1, __defineGetter__: [null] }
    const prepared = Either.getOrThrow(prepare([{ type: "A", payload }]))
    expect(prepared.events[0]!.payloadJson).toBe(`{"1":1,"constructor":{},"toString":"s","__defineGetter__":[null]}`)
    expect(jsonEqual(prepared.events[0]!.payload, JSON.parse(prepared.events[0]!.payloadJson))).toBe(true)
    expect(jsonEqual({ constructor: {} }, { constructor: [] })).toBe(false)
  })

  it("undefined fields are left out, -0 is 0, own __proto__ keys and null prototypes are fine", () => {
    const payload = { a: undefined, b: -0, c: [{ d: undefined }], e: JSON.parse(`{"__proto__":{"x":1}}`), f: Object.create(null) }
    const prepared = Either.getOrThrow(prepare([{ type: "A", payload }]))
    expect(prepared.events[0]!.payloadJson).toBe(`{"b":0,"c":[{}],"e":{"__proto__":{"x":1}},"f":{}}`)
    expect(prepared.events[0]!.payload).toStrictEqual(JSON.parse(`{"b":0,"c":[{}],"e":{"__proto__":{"x":1}},"f":{}}`))
  })

  it("the reason says what was found and where", () => {
    const failed = prepare([{ type: "A", payload: {} }, { type: "B", payload: { a: [{ ok: 1 }, { "odd key": new Map() }] } }])
    expect(Either.isLeft(failed) && failed.left).toMatchObject({ field: "events[1].payload" })
    expect(Either.isLeft(failed) && failed.left.reason).toMatch(/^holds a Map at payload\.a\[1\]\["odd key"\]/)
    const date = prepare([{ type: "A", payload: new Date(0) }])
    expect(Either.isLeft(date) && date.left.reason).toMatch(/not a Date/)
  })

  it("nesting is limited (a cycle nests forever) and a shared sub-tree cannot be expanded past the size limit", () => {
    let deep: Record<string, unknown> = {}
    for (let i = 0; i < Codec.limits.payloadDepth - 1; i++) deep = { d: deep }
    expect(Either.isRight(prepare([{ type: "A", payload: deep }]))).toBe(true)
    const deeper = prepare([{ type: "A", payload: { d: deep } }])
    expect(Either.isLeft(deeper) && deeper.left.reason).toMatch(/nesting deeper than 256/)
    let shared: Record<string, unknown> = { leaf: 1 }
    for (let i = 0; i < 40; i++) shared = { a: shared, b: shared } // 2^40 values once expanded
    const wide = prepare([{ type: "A", payload: shared }])
    expect(Either.isLeft(wide) && wide.left).toMatchObject({ _tag: "InvalidInput", field: "events[0].payload" })
  })
})

// --- metadata ----------------------------------------------------------------------------------------------------

describe("metadata rule: the Event.Metadata schema", () => {
  const bySchema = Schema.decodeUnknownEither(Event.Metadata)

  it.prop("the append's check accepts exactly what Event.Metadata decodes, and stores what it decodes to", [metadataArb], ([metadata]) => {
    const decoded = bySchema(metadata)
    expect(Codec.checkMetadata(metadata) === undefined).toBe(Either.isRight(decoded))
    // (an option or field given as undefined is left out: no metadata)
    if (metadata === undefined) return
    for (const prepared of [prepare([{ type: "A", payload: {} }], { metadata: metadata as Event.Metadata }), prepare([{ type: "A", payload: {}, metadata: metadata as Event.Metadata }])]) {
      expect(Either.isRight(prepared)).toBe(Either.isRight(decoded))
      if (Either.isRight(prepared) && Either.isRight(decoded)) {
        const json = prepared.right.events[0]!.metadataJson
        expect(json === null ? {} : JSON.parse(json)).toStrictEqual(decoded.right)
        expect(prepared.right.events[0]!.metadata).toStrictEqual(decoded.right)
        expect(prepared.right.events[0]!.metadata).not.toBe(metadata)
      }
    }
  }, { fastCheck: { numRuns: 3000 } })

  it("the property sees both accepted and refused metadata", () =>
    expectBothAnswers(metadataArb, (m) => Either.isRight(bySchema(m))))

  it("the schema itself refuses what JSON would not store as given, whatever the parse options", () => {
    const refused = [
      { tags: ["a"] },
      { tags: new String("ab") },
      { tags: new Map() },
      { tags: new Point() },
      new Date(0),
      { tags: JSON.parse(`{"__proto__":"x"}`) },
      { correlationId: undefined },
      { extra: "x" }
    ]
    for (const m of refused) {
      expect(Either.isLeft(Schema.decodeUnknownEither(Event.Metadata)(m)), JSON.stringify(m)).toBe(true)
      expect(Either.isLeft(Schema.decodeUnknownEither(Event.Metadata, { onExcessProperty: "ignore" })(m))).toBe(true)
    }
    expect(Schema.decodeUnknownSync(Event.Metadata)({ tenantId: "t", tags: { constructor: "c" } })).toStrictEqual({
      tenantId: "t",
      tags: { constructor: "c" }
    })
  })

  it("an event's metadata is merged over the append's, field by field and tag by tag, into fresh objects", () => {
    const shared = { correlationId: "c", tenantId: "t", tags: { a: "1", b: "2" } }
    const own = { tenantId: "u", tags: { b: "3" } }
    const prepared = Either.getOrThrow(prepare([{ type: "A", payload: {}, metadata: own }, { type: "B", payload: {} }], { metadata: shared }))
    expect(prepared.events.map((e) => JSON.parse(e.metadataJson!))).toStrictEqual([
      { correlationId: "c", tenantId: "u", tags: { a: "1", b: "3" } },
      { correlationId: "c", tenantId: "t", tags: { a: "1", b: "2" } }
    ])
    // a row's tenant is the store's (see Tenancy), never the metadata's: these streams have none
    expect(prepared.events.map((e) => e.tenantId)).toEqual([null, null])
    const [first, second] = Codec.recorded(prepared, [1, 2], 1)
    expect(first!.metadata).toStrictEqual({ correlationId: "c", tenantId: "u", tags: { a: "1", b: "3" } })
    expect(second!.metadata).not.toBe(shared)
    expect(second!.metadata.tags).not.toBe(shared.tags)
  })
})

// --- expected version --------------------------------------------------------------------------------------------

describe("expected version rule: the ExpectedVersion schema", () => {
  const bySchema = Schema.decodeUnknownEither(ExpectedVersion)

  it.prop("accepted exactly when ExpectedVersion decodes it, given or explicitly undefined", [expectedVersionArb], ([expectedVersion]) => {
    const ok = Either.isRight(bySchema(expectedVersion))
    expect(Codec.isExpectedVersion(expectedVersion)).toBe(ok)
    const prepared = prepare([{ type: "A", payload: {} }], { expectedVersion: expectedVersion as ExpectedVersion })
    expect(Either.isRight(prepared)).toBe(ok)
    if (Either.isRight(prepared)) expect(prepared.right.expected).toBe(expectedVersion)
    else expect(prepared.left.field).toBe("expectedVersion")
  }, { fastCheck: { numRuns: 3000 } })

  it("the property sees both accepted and refused versions", () =>
    expectBothAnswers(expectedVersionArb, (v) => Either.isRight(bySchema(v))))

  it("left out, it is \"any\"; null or undefined are refused, saying so", () => {
    expect(Either.getOrThrow(prepare([{ type: "A", payload: {} }])).expected).toBe("any")
    expect(Either.getOrThrow(prepare([{ type: "A", payload: {} }], {})).expected).toBe("any")
    for (const given of [null, undefined]) {
      const failed = prepare([{ type: "A", payload: {} }], { expectedVersion: given as unknown as ExpectedVersion })
      expect(Either.isLeft(failed) && failed.left.reason).toMatch(/leave the option out for "any"/)
    }
  })
})

// --- analytics ---------------------------------------------------------------------------------------------------

describe("analytics count any event type name", () => {
  const at = (ms: number) => DateTime.unsafeMake(ms)
  const entries = (analytics: Analytics.Analytics) =>
    Object.entries(analytics.counts).sort(([a], [b]) => a < b ? -1 : a > b ? 1 : 0)
  const fold = (types: ReadonlyArray<string>, from?: Analytics.Analytics, start = 0) => {
    const tracker = new Analytics.Tracker(from)
    types.forEach((type, i) => tracker.record(type, at(1_000 + start + i)))
    return tracker.value
  }
  const countsOf = (types: ReadonlyArray<string>) => {
    const counts = new Map<string, number>()
    for (const type of types) counts.set(type, (counts.get(type) ?? 0) + 1)
    return [...counts].sort(([a], [b]) => a < b ? -1 : a > b ? 1 : 0)
  }
  /** Through the schema and JSON, as a snapshot stores analytics. */
  const roundTrip = (analytics: Analytics.Analytics) =>
    Schema.decodeUnknownSync(Analytics.Analytics)(JSON.parse(JSON.stringify(Schema.encodeSync(Analytics.Analytics)(analytics))))

  const types = ["constructor", "__proto__", "__proto__", "toString", "hasOwnProperty", "A", "constructor", "__proto__", "valueOf"]

  it("Tracker, schema and JSON round trip, resuming, merge, distribution, most and least frequent", () => {
    const a = fold(types)
    expect(a.total).toBe(9)
    expect(entries(a)).toEqual(countsOf(types))
    expect(a.counts["__proto__"]).toBe(3)
    expect(a.counts["constructor"]).toBe(2)
    expect(a.counts["isPrototypeOf"]).toBeUndefined()
    const json = JSON.parse(JSON.stringify(Schema.encodeSync(Analytics.Analytics)(a)))
    expect(Object.hasOwn(json.counts, "__proto__") && json.counts["__proto__"]).toBe(3)
    const back = roundTrip(a)
    expect(entries(back)).toEqual(countsOf(types))
    expect(back).toMatchObject({ total: 9, firstAt: at(1_000), lastAt: at(1_008) })
    // a load that resumes from a snapshot counts on from what it stored
    const resumed = fold(["__proto__", "toString"], back, 9)
    expect(entries(resumed)).toEqual(countsOf([...types, "__proto__", "toString"]))
    expect(entries(Analytics.merge(a, back))).toEqual(countsOf([...types, ...types]))
    expect(Analytics.distribution(a)["__proto__"]).toBeCloseTo(100 / 3)
    expect(Object.keys(Analytics.distribution(a)).sort()).toEqual(countsOf(types).map(([type]) => type))
    expect(Analytics.mostFrequent(a)).toEqual(Option.some({ type: "__proto__", count: 3 }))
    expect(Analytics.leastFrequent(a)).toEqual(Option.some({ type: "A", count: 1 }))
    expect(Analytics.mostFrequent(fold(["constructor", "constructor", "__proto__"]))).toEqual(
      Option.some({ type: "constructor", count: 2 })
    )
  })

  it("a decoded snapshot with bad counts is refused, not mis-read", () => {
    for (const counts of [{ a: -1 }, { a: 1.5 }, { a: "1" }, [1], JSON.parse(`{"__proto__":"x"}`), new Date(0)]) {
      expect(Either.isLeft(Schema.decodeUnknownEither(Analytics.Analytics)({ total: 1, counts }))).toBe(true)
    }
  })

  const typeName = FastCheck.oneof(
    FastCheck.constantFrom("__proto__", "constructor", "toString", "hasOwnProperty", "valueOf", "toJSON", "0", ""),
    FastCheck.string({ maxLength: 3 })
  )

  it.prop("split anywhere, merged, and through the snapshot round trip: the counts of one fold", [
    FastCheck.array(typeName, { maxLength: 30 }),
    FastCheck.nat()
  ], ([all, cut]) => {
    const k = all.length === 0 ? 0 : cut % (all.length + 1)
    const whole = fold(all)
    expect(entries(whole)).toEqual(countsOf(all))
    const head = roundTrip(fold(all.slice(0, k)))
    expect(entries(fold(all.slice(k), head, k))).toEqual(countsOf(all))
    expect(entries(Analytics.merge(head, fold(all.slice(k))))).toEqual(countsOf(all))
    expect(Analytics.merge(head, fold(all.slice(k))).total).toBe(all.length)
  })
})
