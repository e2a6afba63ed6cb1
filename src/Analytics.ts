/**
 * Event analytics of one aggregate: how many events it has, of which types, when the first and the last were
 * recorded. Maintained incrementally while the aggregate is folded, persisted with its snapshots and restored from
 * them, so a load from a snapshot reports exactly what a full replay would.
 *
 * @since 0.1.0
 */
import * as DateTime from "effect/DateTime"
import * as Option from "effect/Option"
import * as ParseResult from "effect/ParseResult"
import * as Schema from "effect/Schema"
import { isPlainObject } from "./internal/codec.js"

/**
 * Counts by event type, as a null-prototype object. Event types are any strings, `__proto__`, `constructor` and
 * `toString` included: on a `{}` those would read `Object.prototype`'s members (`counts.constructor + 1` is a string)
 * or, assigned, set the prototype instead of a key.
 */
const makeCounts = (): Record<string, number> => Object.create(null)

const isCount = (u: unknown): u is number => typeof u === "number" && Number.isSafeInteger(u) && u >= 0

/**
 * Decodes (and encodes) counts into a fresh null-prototype object, key by own key. `Schema.Record` cannot be used: it
 * builds its output with `out[key] = value`, which drops an own `__proto__` key (as `JSON.parse` makes one).
 */
const parseCounts = (input: unknown, _: unknown, ast: Schema.declare<Record<string, number>>["ast"]) => {
  if (!isPlainObject(input)) return ParseResult.fail(new ParseResult.Type(ast, input, "expected a plain object of counts"))
  const out = makeCounts()
  for (const key of Object.keys(input)) {
    const value = input[key]
    if (!isCount(value)) {
      return ParseResult.fail(new ParseResult.Type(ast, input, `count of ${JSON.stringify(key)} is not a non-negative integer`))
    }
    out[key] = value
  }
  return ParseResult.succeed(out)
}

const Counts: Schema.Schema<{ readonly [type: string]: number }> = Schema.declare([], {
  decode: () => parseCounts,
  encode: () => parseCounts
}, {
  identifier: "Counts",
  description: "counts by event type",
  jsonSchema: { type: "object", additionalProperties: { type: "integer", minimum: 0 } },
  arbitrary: () => (fc) =>
    fc.dictionary(fc.string(), fc.nat()).map((d) => {
      const out = makeCounts()
      for (const [key, value] of Object.entries(d)) out[key] = value
      return out
    }),
  pretty: () => (counts) => JSON.stringify(counts),
  equivalence: () => (a, b) => {
    const keys = Object.keys(a)
    return keys.length === Object.keys(b).length && keys.every((key) => Object.hasOwn(b, key) && a[key] === b[key])
  }
})

/**
 * @since 0.1.0
 */
export const Analytics = Schema.Struct({
  total: Schema.NonNegativeInt,
  counts: Counts,
  firstAt: Schema.optionalWith(Schema.DateTimeUtcFromNumber, { exact: true }),
  lastAt: Schema.optionalWith(Schema.DateTimeUtcFromNumber, { exact: true })
})

/** @since 0.1.0 */
export interface Analytics extends Schema.Schema.Type<typeof Analytics> {}

/** @since 0.1.0 */
export const empty: Analytics = { total: 0, counts: Object.freeze(makeCounts()) }

/**
 * A mutable accumulator for folds: one per load, frozen into an `Analytics` at the end.
 *
 * @since 0.1.0
 */
export class Tracker {
  private total: number
  private readonly counts: Map<string, number>
  private firstAt: number | undefined
  private lastAt: number | undefined

  constructor(from: Analytics = empty) {
    this.total = from.total
    this.counts = new Map(Object.entries(from.counts))
    this.firstAt = from.firstAt?.epochMillis
    this.lastAt = from.lastAt?.epochMillis
  }

  /** Records one applied event. */
  record(type: string, recordedAt: DateTime.Utc): void {
    this.recordAt(type, recordedAt.epochMillis)
  }

  /**
   * Records one applied event recorded at `epochMillis`.
   *
   * @since 0.1.0
   */
  recordAt(type: string, epochMillis: number): void {
    this.total++
    this.counts.set(type, (this.counts.get(type) ?? 0) + 1)
    if (this.firstAt === undefined) this.firstAt = epochMillis
    this.lastAt = epochMillis
  }

  get value(): Analytics {
    const counts = makeCounts()
    for (const [type, count] of this.counts) counts[type] = count
    return {
      total: this.total,
      counts,
      ...(this.firstAt !== undefined ? { firstAt: DateTime.unsafeMake(this.firstAt) } : {}),
      ...(this.lastAt !== undefined ? { lastAt: DateTime.unsafeMake(this.lastAt) } : {})
    }
  }
}

/**
 * The share of each event type, in percent of all events.
 *
 * @since 0.1.0
 */
export const distribution = (analytics: Analytics): Record<string, number> => {
  const out = makeCounts()
  for (const [type, count] of Object.entries(analytics.counts)) {
    out[type] = analytics.total === 0 ? 0 : (count / analytics.total) * 100
  }
  return out
}

const extreme = (analytics: Analytics, better: (a: number, b: number) => boolean) => {
  let best: { readonly type: string; readonly count: number } | undefined
  for (const [type, count] of Object.entries(analytics.counts).sort(([a], [b]) => a < b ? -1 : a > b ? 1 : 0)) {
    if (best === undefined || better(count, best.count)) best = { type, count }
  }
  return Option.fromNullable(best)
}

/**
 * The most frequent event type (ties: the first by name).
 *
 * @since 0.1.0
 */
export const mostFrequent = (analytics: Analytics): Option.Option<{ readonly type: string; readonly count: number }> =>
  extreme(analytics, (a, b) => a > b)

/**
 * The least frequent event type (ties: the first by name).
 *
 * @since 0.1.0
 */
export const leastFrequent = (analytics: Analytics): Option.Option<{ readonly type: string; readonly count: number }> =>
  extreme(analytics, (a, b) => a < b)

const minAt = (a: DateTime.Utc | undefined, b: DateTime.Utc | undefined) =>
  a === undefined ? b : b === undefined ? a : a.epochMillis <= b.epochMillis ? a : b
const maxAt = (a: DateTime.Utc | undefined, b: DateTime.Utc | undefined) =>
  a === undefined ? b : b === undefined ? a : a.epochMillis >= b.epochMillis ? a : b

/**
 * Combines the analytics of two sets of events (two aggregates, or two parts of one stream).
 *
 * @since 0.1.0
 */
export const merge = (a: Analytics, b: Analytics): Analytics => {
  const counts = makeCounts()
  for (const [type, count] of Object.entries(a.counts)) counts[type] = count
  for (const [type, count] of Object.entries(b.counts)) counts[type] = (counts[type] ?? 0) + count
  const firstAt = minAt(a.firstAt, b.firstAt)
  const lastAt = maxAt(a.lastAt, b.lastAt)
  return {
    total: a.total + b.total,
    counts,
    ...(firstAt !== undefined ? { firstAt } : {}),
    ...(lastAt !== undefined ? { lastAt } : {})
  }
}
