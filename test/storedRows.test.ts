/**
 * Rows the store did not write the way it writes them (SQLite columns are loosely typed, so a stray UPDATE can put
 * text in an INTEGER column): every read path delivers the good events before the bad row, then fails with an
 * `EventDecodeError` naming the row's stream and position — a typed failure, never a defect, never a silent skip.
 */
import { describe, expect, it } from "@effect/vitest"
import * as SqlClient from "@effect/sql/SqlClient"
import { Aggregate, Event, EventStore } from "effect-eventstore"
import * as Sqlite from "effect-eventstore/Sqlite"
import * as Cause from "effect/Cause"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Option from "effect/Option"
import * as Schema from "effect/Schema"
import * as Stream from "effect/Stream"
import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"

const dir = fs.mkdtempSync(path.join(os.tmpdir(), "effect-eventstore-rows-"))
const layer = Sqlite.layer({ filename: path.join(dir, "rows.db"), pollInterval: "1 hour" })

/** Runs a stream to its end, keeping what it delivered and how it ended. */
const drain = <E>(stream: Stream.Stream<Event.RecordedEvent, E>) =>
  Effect.gen(function*() {
    const seen: Array<Event.RecordedEvent> = []
    const exit = yield* Effect.exit(Stream.runForEach(stream, (e) => Effect.sync(() => seen.push(e))))
    return { seen, exit }
  })

/** The typed error an exit failed with; a defect, an interruption or a success fails the test. */
const failure = <A, E>(exit: Exit.Exit<A, E>): E => {
  expect(Exit.isFailure(exit)).toBe(true)
  if (Exit.isSuccess(exit)) throw new Error("succeeded")
  expect(Cause.isDie(exit.cause)).toBe(false)
  const error = Cause.failureOption(exit.cause)
  expect(Option.isSome(error)).toBe(true)
  return Option.getOrThrow(error)
}

/** The domain the aggregate loads below fold: "Good" events counted. */
const Good = Schema.TaggedStruct("Good", { i: Schema.Int })
const counter = (type: string, analytics = false) =>
  Aggregate.make({
    name: type,
    events: Event.registry([Good]),
    decider: {
      initialState: 0,
      decide: (_: never, __: number) => [],
      evolve: (n: number) => n + 1
    },
    analytics
  })

/**
 * A corruption, and whether an aggregate's fold reads the column: always, only with analytics (recorded_at), or
 * never (metadata and event ids).
 */
const corruptions: ReadonlyArray<readonly [string, string, boolean | "analytics"]> = [
  ["recorded_at that is not a number", "recorded_at = 'yesterday'", "analytics"],
  ["recorded_at out of range", "recorded_at = 1e300", "analytics"],
  ["schema version that is not an integer", "schema_version = 'two'", true],
  ["payload that is a JSON array", "payload = '[1]'", true],
  ["payload that is a JSON string", "payload = '\"str\"'", true],
  ["payload that is JSON null", "payload = 'null'", true],
  ["payload that is malformed JSON", "payload = '{not json'", true],
  ["payload that is a blob", "payload = X'7B7D'", true],
  ["metadata that is a JSON array", "metadata = '[1]'", false],
  ["event type that is a blob", "event_type = X'476F6F64'", true],
  ["event id that is a blob", "event_id = X'41'", false],
  ["metadata that is malformed JSON", "metadata = '{'", false]
]

describe("stored rows with wrong column types", () => {
  for (const [label, set, folded] of corruptions) {
    it.live(`a row with a ${label}: every read delivers the events before it, then fails naming it`, () =>
      Effect.gen(function*() {
        const store = yield* EventStore.EventStore
        const sql = yield* SqlClient.SqlClient
        const type = `R${crypto.randomUUID().replace(/-/g, "").slice(0, 10)}`
        const stream = `${type}-1`
        const written = yield* store.append(
          stream,
          [0, 1, 2].map((i) => ({ type: "Good", payload: { i }, metadata: { correlationId: `c-${i}` } }))
        )
        const bad = written.events[1]!.position
        yield* sql.unsafe(`UPDATE eventstore_events SET ${set} WHERE position = ?`, [bad])
        const named = { _tag: "EventDecodeError", streamId: stream, position: bad }
        const filter = { streamTypes: [type] }

        const read = yield* drain(store.read(stream))
        expect(read.seen.map((e) => e.position)).toEqual([written.events[0]!.position])
        expect(failure(read.exit)).toMatchObject(named)

        const fromAll = yield* drain(store.readAll({ filter }))
        expect(fromAll.seen.map((e) => e.position)).toEqual([written.events[0]!.position])
        expect(failure(fromAll.exit)).toMatchObject(named)

        // a subscription ends with the error instead of waiting for commits
        const live = yield* drain(store.subscribe({ filter })).pipe(Effect.timeout("10 seconds"))
        expect(live.seen.map((e) => e.position)).toEqual([written.events[0]!.position])
        expect(failure(live.exit)).toMatchObject(named)

        // one page: the bad row fails the page; the page before it is fine
        expect(failure(yield* Effect.exit(store.readPage(stream)))).toMatchObject(named)
        expect((yield* store.readPage(stream, { limit: 1 })).map((e) => e.version)).toEqual([1])

        // backward, the rows after it come first
        const backward = yield* drain(store.read(stream, { direction: "backward" }))
        expect(failure(backward.exit)).toMatchObject(named)
        expect(backward.seen.every((e) => e.position > bad)).toBe(true)

        // an aggregate's fold reads only the columns it needs: it fails naming the row if the column is one of them
        const plain = yield* Effect.exit((yield* Aggregate.handler(counter(type))).load("1"))
        const counted = yield* Effect.exit((yield* Aggregate.handler(counter(type, true))).load("1"))
        for (const [loaded, reads] of [[plain, folded === true], [counted, folded !== false]] as const) {
          if (reads) expect(failure(loaded)).toMatchObject(named)
          else expect(loaded).toMatchObject({ _tag: "Success", value: { state: 3, version: 3 } })
        }
      }).pipe(Effect.scoped, Effect.provide(layer)))
  }

  it.live("a row whose version is not an integer: the log reads name it; reads by stream fail where its version is missing", () =>
    Effect.gen(function*() {
      const store = yield* EventStore.EventStore
      const sql = yield* SqlClient.SqlClient
      const type = `V${crypto.randomUUID().replace(/-/g, "").slice(0, 10)}`
      const stream = `${type}-1`
      const written = yield* store.append(stream, [0, 1, 2].map((i) => ({ type: "Good", payload: { i } })))
      const [first, bad, third] = written.events.map((e) => e.position) as [number, number, number]
      // SQLite sorts text after every integer, and a read to version MAX_SAFE_INTEGER leaves "x" out: 1, 3
      yield* sql.unsafe(`UPDATE eventstore_events SET version = 'x' WHERE position = ?`, [bad])
      const filter = { streamTypes: [type] }
      for (const log of [store.readAll({ filter }), store.subscribe({ filter })]) {
        const { exit, seen } = yield* drain(log).pipe(Effect.timeout("10 seconds"))
        expect(seen.map((e) => e.position)).toEqual([first])
        expect(failure(exit)).toMatchObject({ _tag: "EventDecodeError", streamId: stream, position: bad, version: -1 })
      }
      // by stream, version 2 is missing: reads fail at version 3 instead of going on past the gap
      const missing = { _tag: "EventDecodeError", streamId: stream, position: third, version: 3 }
      const read = yield* drain(store.read(stream))
      expect(read.seen.map((e) => e.version)).toEqual([1])
      expect(failure(read.exit)).toMatchObject(missing)
      expect(failure(yield* Effect.exit(store.readPage(stream)))).toMatchObject(missing)
      const handler = yield* Aggregate.handler(counter(type))
      expect(failure(yield* Effect.exit(handler.load("1")))).toMatchObject(missing)
    }).pipe(Effect.scoped, Effect.provide(layer)))

  it.live("a row whose version is 2.5 (between 2 and 3): folds fail naming it, nothing is appended on top", () =>
    Effect.gen(function*() {
      const store = yield* EventStore.EventStore
      const sql = yield* SqlClient.SqlClient
      const type = `F${crypto.randomUUID().replace(/-/g, "").slice(0, 10)}`
      const stream = `${type}-1`
      const written = yield* store.append(stream, [0, 1, 2].map((i) => ({ type: "Good", payload: { i } })))
      const bad = written.events[1]!.position
      yield* sql.unsafe(`UPDATE eventstore_events SET version = 2.5 WHERE position = ?`, [bad])
      const named = { _tag: "EventDecodeError", streamId: stream, position: bad }
      expect(failure(yield* Effect.exit(store.readPage(stream)))).toMatchObject(named)
      const handler = yield* Aggregate.handler(counter(type))
      expect(failure(yield* Effect.exit(handler.load("1")))).toMatchObject(named)
      expect(failure(yield* Effect.exit(handler.handle("1", undefined as never)))).toMatchObject(named)
      expect((yield* sql.unsafe<{ n: number }>(`SELECT count(*) AS n FROM eventstore_events WHERE stream_id = ?`, [stream]))[0]!.n)
        .toBe(3)
    }).pipe(Effect.scoped, Effect.provide(layer)))

  it.live("a row whose version was changed to leave a gap is never read past silently", () =>
    Effect.gen(function*() {
      const store = yield* EventStore.EventStore
      const sql = yield* SqlClient.SqlClient
      const stream = `Gap${crypto.randomUUID().replace(/-/g, "").slice(0, 10)}-1`
      const written = yield* store.append(stream, [0, 1, 2].map((i) => ({ type: "Good", payload: { i } })))
      // version 2 becomes 7: the stream now reads 1, 3, 7
      yield* sql.unsafe(`UPDATE eventstore_events SET version = 7 WHERE position = ?`, [written.events[1]!.position])
      const third = written.events[2]!.position
      const named = { _tag: "EventDecodeError", streamId: stream, position: third, version: 3 }

      const read = yield* drain(store.read(stream))
      expect(read.seen.map((e) => e.version)).toEqual([1])
      expect(failure(read.exit)).toMatchObject(named)

      const paged = yield* drain(store.read(stream, { pageSize: 1 }))
      expect(paged.seen.map((e) => e.version)).toEqual([1])
      expect(failure(paged.exit)).toMatchObject(named)

      // backward: 7, then 3 where 6 must follow
      const backward = yield* drain(store.read(stream, { direction: "backward" }))
      expect(backward.seen.map((e) => e.version)).toEqual([7])
      expect(failure(backward.exit)).toMatchObject(named)

      expect(failure(yield* Effect.exit(store.readPage(stream)))).toMatchObject(named)
      expect(failure(yield* Effect.exit(store.readPage(stream, { after: 1 })))).toMatchObject(named)
      const handler = yield* Aggregate.handler(counter(stream.slice(0, -2)))
      expect(failure(yield* Effect.exit(handler.load("1")))).toMatchObject(named)
    }).pipe(Effect.scoped, Effect.provide(layer)))
})
