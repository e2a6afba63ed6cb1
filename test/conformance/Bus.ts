/**
 * The event bus contract, run by every backend's test file: delivery, filters, resume after a restart (no replay of
 * acknowledged events), competing consumers, retry with backoff, dead letters after `maxDeliver`, duplicate publishes,
 * replay from a sequence. `make` gives a fresh, empty bus for each test (its own stream on JetStream).
 */
import { describe, expect, it } from "@effect/vitest"
import { Bus } from "effect-eventstore"
import * as DateTime from "effect/DateTime"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import type * as Layer from "effect/Layer"
import * as Schedule from "effect/Schedule"
import * as Scope from "effect/Scope"
import * as Stream from "effect/Stream"

let counter = 0
/** `n` events of stream `streamId`, versions 1..n. */
export const envelopes = (
  streamId: string,
  n: number,
  options: { readonly streamType?: string; readonly type?: string; readonly tenantId?: string } = {}
): Array<Bus.Envelope> =>
  Array.from({ length: n }, (_, i) => ({
    eventId: crypto.randomUUID(),
    streamId,
    streamType: options.streamType ?? "Account",
    version: i + 1,
    position: ++counter,
    type: options.type ?? "Deposited",
    schemaVersion: 1,
    payload: { amount: i + 1 },
    metadata: options.tenantId !== undefined ? { tenantId: options.tenantId } : {},
    recordedAt: DateTime.unsafeMake(1_700_000_000_000 + counter)
  }))

/** Polls `check` until it holds (or fails after `timeoutMs`). */
export const eventually = (check: () => boolean, timeoutMs = 10_000, what = "condition") =>
  Effect.gen(function*() {
    const start = Date.now()
    while (!check()) {
      if (Date.now() - start > timeoutMs) return yield* Effect.die(new Error(`timed out waiting for ${what}`))
      yield* Effect.sleep("10 millis")
    }
  })

/** Runs `effect` in a scope of its own and closes it (a consumer that stops, as a process would). */
const inScope = <A, E, R>(effect: Effect.Effect<A, E, R | Scope.Scope>) =>
  Effect.gen(function*() {
    const scope = yield* Scope.make()
    const a = yield* Scope.extend(effect, scope)
    return { value: a, close: Scope.close(scope, Exit.void) }
  })

const byStream = (seen: ReadonlyArray<Bus.Envelope>) => {
  const out = new Map<string, Array<number>>()
  for (const e of seen) out.set(e.streamId, [...(out.get(e.streamId) ?? []), e.version])
  return out
}

const fastRetry = Schedule.spaced("100 millis")

export const busSuite = (name: string, make: () => Layer.Layer<Bus.EventBus, unknown>) =>
  describe(`EventBus conformance: ${name}`, () => {
    const run = <A, E>(effect: Effect.Effect<A, E, Bus.EventBus | Scope.Scope>) =>
      // the consumers stop (their scope) before the bus and its connection (the layer's)
      Effect.provide(Effect.scoped(effect), make())

    it.live("delivers every event once, in order per stream", () =>
      run(Effect.gen(function*() {
        const bus = yield* Bus.EventBus
        const a = envelopes("a", 20)
        const b = envelopes("b", 20)
        yield* bus.publish([...a.slice(0, 10), ...b.slice(0, 10)])
        const seen: Array<Bus.Envelope> = []
        const attempts: Array<number> = []
        yield* bus.consume({ name: "all" }, (e, d) => Effect.sync(() => (seen.push(e), attempts.push(d.attempt))))
        yield* bus.publish([...a.slice(10), ...b.slice(10)])
        yield* eventually(() => seen.length >= 40, 10_000, "40 deliveries")
        yield* Effect.sleep("200 millis")
        expect(seen.length).toBe(40)
        expect(byStream(seen).get("a")).toEqual(a.map((e) => e.version))
        expect(byStream(seen).get("b")).toEqual(b.map((e) => e.version))
        expect(new Set(attempts)).toEqual(new Set([1]))
        // the envelope arrives as it was published
        const first = seen.find((e) => e.eventId === a[0]!.eventId)!
        expect(first.payload).toEqual(a[0]!.payload)
        expect(first.position).toBe(a[0]!.position)
        expect(DateTime.toEpochMillis(first.recordedAt)).toBe(DateTime.toEpochMillis(a[0]!.recordedAt))
      })))

    it.live("filters by stream type, event type and tenant (one value or several)", () =>
      run(Effect.gen(function*() {
        const bus = yield* Bus.EventBus
        const events = [
          ...envelopes("a1", 3, { streamType: "Account", type: "Deposited", tenantId: "t1" }),
          ...envelopes("a2", 3, { streamType: "Account", type: "Withdrawn", tenantId: "t2" }),
          ...envelopes("l1", 3, { streamType: "Loan", type: "Deposited" }),
          ...envelopes("x.y", 3, { streamType: "Odd.Type *>", type: "Weird Name.v2" })
        ]
        yield* bus.publish(events)
        const collect = (consumer: string, filter: Bus.Filter) =>
          Effect.gen(function*() {
            const seen: Array<string> = []
            yield* bus.consume({ name: consumer, filter }, (e) => Effect.sync(() => seen.push(e.streamId)))
            return seen
          })
        const accounts = yield* collect("accounts", { streamTypes: ["Account"] })
        const withdrawn = yield* collect("withdrawn", { eventTypes: ["Withdrawn"] })
        const t1 = yield* collect("t1", { tenants: ["t1"] })
        const several = yield* collect("several", { streamTypes: ["Loan", "Odd.Type *>"] })
        const odd = yield* collect("odd", { eventTypes: ["Weird Name.v2"] })
        const both = yield* collect("both", { streamTypes: ["Account"], eventTypes: ["Deposited", "Withdrawn"], tenants: ["t2"] })
        yield* eventually(() =>
          accounts.length >= 6 && withdrawn.length >= 3 && t1.length >= 3 && several.length >= 6 && odd.length >= 3 &&
          both.length >= 3, 10_000, "filtered deliveries")
        yield* Effect.sleep("200 millis")
        expect(accounts.sort()).toEqual(["a1", "a1", "a1", "a2", "a2", "a2"])
        expect(withdrawn).toEqual(["a2", "a2", "a2"])
        expect(t1).toEqual(["a1", "a1", "a1"])
        expect(several.sort()).toEqual(["l1", "l1", "l1", "x.y", "x.y", "x.y"])
        expect(odd).toEqual(["x.y", "x.y", "x.y"])
        expect(both).toEqual(["a2", "a2", "a2"])
      })))

    it.live("a consumer resumes where it stopped: acknowledged events are not delivered again", () =>
      run(Effect.gen(function*() {
        const bus = yield* Bus.EventBus
        const first = envelopes("s", 10)
        yield* bus.publish(first)
        const seen: Array<string> = []
        const one = yield* inScope(bus.consume({ name: "durable" }, (e) => Effect.sync(() => seen.push(e.eventId))))
        yield* eventually(() => seen.length >= 10, 10_000, "first 10")
        yield* Effect.sleep("300 millis") // acknowledgements reach the broker
        yield* one.close
        const more = envelopes("t", 5)
        yield* bus.publish(more)
        const again: Array<string> = []
        yield* bus.consume({ name: "durable" }, (e) => Effect.sync(() => again.push(e.eventId)))
        yield* eventually(() => again.length >= 5, 10_000, "next 5")
        yield* Effect.sleep("300 millis")
        expect(again).toEqual(more.map((e) => e.eventId))
        // a new consumer from "new" sees only what is published after it starts
        const late: Array<string> = []
        yield* bus.consume({ name: "late", from: "new" }, (e) => Effect.sync(() => late.push(e.eventId)))
        const last = envelopes("u", 2)
        yield* bus.publish(last)
        yield* eventually(() => late.length >= 2, 10_000, "new ones")
        expect(late).toEqual(last.map((e) => e.eventId))
      })))

    it.live("consumers sharing a name split the work, each event handled once", () =>
      run(Effect.gen(function*() {
        const bus = yield* Bus.EventBus
        const events = Array.from({ length: 10 }, (_, i) => envelopes(`s${i}`, 10)).flat()
        const byWorker: Array<Array<string>> = [[], []]
        for (const worker of [0, 1]) {
          yield* bus.consume({ name: "shared" }, (e) =>
            Effect.zipRight(Effect.sleep("2 millis"), Effect.sync(() => byWorker[worker]!.push(e.eventId))))
        }
        yield* bus.publish(events)
        yield* eventually(() => byWorker[0]!.length + byWorker[1]!.length >= 100, 15_000, "100 deliveries")
        yield* Effect.sleep("300 millis")
        const all = [...byWorker[0]!, ...byWorker[1]!]
        expect(all.length).toBe(100)
        expect(new Set(all).size).toBe(100)
        expect(byWorker[0]!.length).toBeGreaterThan(0)
        expect(byWorker[1]!.length).toBeGreaterThan(0)
      })))

    it.live("a failed delivery comes back after the backoff, with its attempt number", () =>
      run(Effect.gen(function*() {
        const bus = yield* Bus.EventBus
        const [event] = envelopes("r", 1)
        const times: Array<[attempt: number, at: number]> = []
        yield* bus.consume(
          { name: "retrying", backoff: Schedule.spaced("300 millis"), maxDeliver: 5 },
          (_, d) =>
            Effect.suspend(() => {
              times.push([d.attempt, Date.now()])
              return d.attempt < 3 ? Effect.fail("not yet") : Effect.void
            })
        )
        yield* bus.publish([event!])
        yield* eventually(() => times.length >= 3, 10_000, "three attempts")
        yield* Effect.sleep("500 millis")
        expect(times.map(([a]) => a)).toEqual([1, 2, 3])
        expect(times[1]![1] - times[0]![1]).toBeGreaterThanOrEqual(250)
        expect(times[2]![1] - times[1]![1]).toBeGreaterThanOrEqual(250)
        expect(yield* bus.deadLetters("retrying")).toEqual([])
      })))

    it.live("after maxDeliver attempts an event goes to the dead letters; the others go on; dead letters replay", () =>
      run(Effect.gen(function*() {
        const bus = yield* Bus.EventBus
        const events = envelopes("d", 3)
        const poison = events[1]!
        const handled: Array<string> = []
        let attempts = 0
        yield* bus.consume(
          { name: "poisoned", maxDeliver: 3, backoff: fastRetry },
          (e) =>
            Effect.suspend(() => {
              if (e.eventId === poison.eventId) {
                attempts++
                return Effect.fail(new Error("cannot handle this one"))
              }
              handled.push(e.eventId)
              return Effect.void
            })
        )
        yield* bus.publish(events)
        yield* eventually(() => handled.length >= 2 && attempts >= 3, 10_000, "the poison's attempts")
        const letters = yield* Effect.gen(function*() {
          for (let i = 0; i < 200; i++) {
            const found = yield* bus.deadLetters("poisoned")
            if (found.length > 0) return found
            yield* Effect.sleep("20 millis")
          }
          return []
        })
        yield* Effect.sleep("500 millis")
        expect(attempts).toBe(3) // no fourth attempt: no loop
        expect(handled).toEqual([events[0]!.eventId, events[2]!.eventId])
        expect(letters.length).toBe(1)
        expect(letters[0]!.envelope?.eventId).toBe(poison.eventId)
        expect(letters[0]!.deliveries).toBe(3)
        expect(letters[0]!.consumer).toBe("poisoned")
        expect(letters[0]!.error).toContain("cannot handle this one")
        // the dead letters of another consumer are its own
        expect(yield* bus.deadLetters("someone-else")).toEqual([])
        // fixed: replaying handles it and removes it
        const replayed: Array<string> = []
        const n = yield* bus.replayDeadLetters("poisoned", (e) => Effect.sync(() => replayed.push(e.eventId)))
        expect(n).toBe(1)
        expect(replayed).toEqual([poison.eventId])
        expect(yield* bus.deadLetters("poisoned")).toEqual([])
      })))

    it.live("a dead letter stays dead: the event never comes back, even after the ack wait", () =>
      run(Effect.gen(function*() {
        const bus = yield* Bus.EventBus
        const [event] = envelopes("z", 1)
        let attempts = 0
        yield* bus.consume({ name: "terminal", maxDeliver: 1, ackWait: "1 second" }, () =>
          Effect.suspend(() => {
            attempts++
            return Effect.fail("no")
          }))
        yield* bus.publish([event!])
        yield* eventually(() => attempts >= 1, 10_000, "the attempt")
        yield* Effect.sleep("2500 millis")
        expect(attempts).toBe(1)
        expect((yield* bus.deadLetters("terminal")).length).toBe(1)
      })))

    it.live("a handler's own timeout works, and a handler still running when the consumer stops is cut short and delivered again", () =>
      run(Effect.gen(function*() {
        const bus = yield* Bus.EventBus
        const [event] = envelopes("slow", 1)
        const attempts: Array<number> = []
        const one = yield* inScope(bus.consume({ name: "slow", backoff: fastRetry, ackWait: "1 second" }, (_, d) =>
          Effect.suspend(() => {
            attempts.push(d.attempt)
            // the first attempt times out by itself; the second hangs until the consumer stops
            return d.attempt === 1
              ? Effect.timeoutFail(Effect.never, { duration: "100 millis", onTimeout: () => "timed out" })
              : Effect.never
          })))
        yield* bus.publish([event!])
        yield* eventually(() => attempts.length >= 2, 10_000, "two attempts")
        // closing the consumer does not wait for the hanging handler
        yield* Effect.timeoutFail(one.close, { duration: "5 seconds", onTimeout: () => "the consumer did not stop" })
        const again: Array<string> = []
        yield* bus.consume({ name: "slow" }, (e) => Effect.sync(() => again.push(e.eventId)))
        yield* eventually(() => again.length >= 1, 10_000, "the event again")
        expect(again).toEqual([event!.eventId])
      })))

    it.live("a handler that dies is retried like one that fails", () =>
      run(Effect.gen(function*() {
        const bus = yield* Bus.EventBus
        const [event] = envelopes("x", 1)
        const attempts: Array<number> = []
        yield* bus.consume({ name: "dying", maxDeliver: 2, backoff: fastRetry }, (_, d) =>
          Effect.suspend(() => {
            attempts.push(d.attempt)
            return d.attempt === 1 ? Effect.die(new Error("boom")) : Effect.void
          }))
        yield* bus.publish([event!])
        yield* eventually(() => attempts.length >= 2, 10_000, "the second attempt")
        expect(attempts).toEqual([1, 2])
      })))

    it.live("publishing an event again (same event id) delivers it once", () =>
      run(Effect.gen(function*() {
        const bus = yield* Bus.EventBus
        const events = envelopes("dup", 5)
        yield* bus.publish(events)
        yield* bus.publish(events)
        yield* bus.publish([events[2]!, events[4]!])
        const seen: Array<string> = []
        yield* bus.consume({ name: "once" }, (e) => Effect.sync(() => seen.push(e.eventId)))
        yield* eventually(() => seen.length >= 5, 10_000, "5 deliveries")
        yield* Effect.sleep("300 millis")
        expect(seen).toEqual(events.map((e) => e.eventId))
        const replayed = yield* Stream.runCollect(bus.replay())
        expect(Array.from(replayed, ([, e]) => e.eventId)).toEqual(events.map((e) => e.eventId))
      })))

    it.live("replays from a sequence number, in bus order, without moving any consumer", () =>
      run(Effect.gen(function*() {
        const bus = yield* Bus.EventBus
        const events = [...envelopes("p", 4), ...envelopes("q", 4, { streamType: "Loan" })]
        // one stream per call: the bus order is then the order of the list (streams of one call go side by side)
        yield* bus.publish(events.slice(0, 4))
        yield* bus.publish(events.slice(4))
        const all = Array.from(yield* Stream.runCollect(bus.replay()))
        expect(all.map(([, e]) => e.eventId)).toEqual(events.map((e) => e.eventId))
        const third = all[2]![0]
        const fromThird = Array.from(yield* Stream.runCollect(bus.replay({ from: { sequence: third } })))
        expect(fromThird.map(([, e]) => e.eventId)).toEqual(events.slice(2).map((e) => e.eventId))
        const loans = Array.from(yield* Stream.runCollect(bus.replay({ filter: { streamTypes: ["Loan"] } })))
        expect(loans.map(([, e]) => e.streamId)).toEqual(["q", "q", "q", "q"])
        // from a time: what was published at or after it
        yield* Effect.sleep("100 millis")
        const time = new Date()
        yield* Effect.sleep("100 millis")
        const later = envelopes("w", 2)
        yield* bus.publish(later)
        const fromTime = Array.from(yield* Stream.runCollect(bus.replay({ from: { time } })))
        expect(fromTime.map(([, e]) => e.eventId)).toEqual(later.map((e) => e.eventId))
      })))

    it.effect("refuses bad consumer names and options with InvalidInput", () =>
      run(Effect.gen(function*() {
        const bus = yield* Bus.EventBus
        for (const options of [{ name: "a.b" }, { name: "" }, { name: "x".repeat(65) }, { name: "ok", maxDeliver: 0 }]) {
          const exit = yield* Effect.exit(bus.consume(options, () => Effect.void))
          expect(Exit.isFailure(exit) && exit.cause._tag === "Fail" && exit.cause.error._tag).toBe("InvalidInput")
        }
        yield* bus.consume({ name: "fixed", filter: { streamTypes: ["A"] } }, () => Effect.void)
        const other = yield* Effect.exit(bus.consume({ name: "fixed", filter: { streamTypes: ["B"] } }, () => Effect.void))
        expect(Exit.isFailure(other) && other.cause._tag === "Fail" && other.cause.error._tag).toBe("InvalidInput")
        // several values (filtered in the consumer on JetStream) are part of the filter too
        yield* bus.consume({ name: "sets", filter: { eventTypes: ["X", "Y"] } }, () => Effect.void)
        yield* bus.consume({ name: "sets", filter: { eventTypes: ["Y", "X"] } }, () => Effect.void)
        const changed = yield* Effect.exit(bus.consume({ name: "sets", filter: { eventTypes: ["X", "Z"] } }, () => Effect.void))
        expect(Exit.isFailure(changed) && changed.cause._tag === "Fail" && changed.cause.error._tag).toBe("InvalidInput")
      })))
  })
