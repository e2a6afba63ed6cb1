import { describe, expect, it } from "@effect/vitest"
import { Bus, Telemetry } from "effect-eventstore"
import * as Effect from "effect/Effect"
import * as Metric from "effect/Metric"
import { busSuite, envelopes, eventually } from "./conformance/Bus.js"

busSuite("memory", () => Bus.layerMemory)

describe("bus consumers' bookkeeping", () => {
  it.live("deliveries are counted in eventstore_bus_deliveries_total by consumer and outcome", () =>
    Effect.gen(function*() {
      const bus = yield* Bus.EventBus
      const consumer = `metered-${Date.now()}`
      const seen: Array<string> = []
      yield* bus.consume({ name: consumer, filter: { eventTypes: ["Deposited"] } }, (e) => Effect.sync(() => seen.push(e.eventId)))
      yield* bus.publish([...envelopes("m", 3), ...envelopes("n", 2, { type: "Withdrawn" })])
      yield* eventually(() => seen.length >= 3)
      yield* Effect.sleep("50 millis")
      const count = (outcome: string) =>
        Effect.map(
          Metric.value(Metric.tagged(Metric.tagged(Telemetry.busDeliveries, "consumer", consumer), "outcome", outcome)),
          (s) => s.count
        )
      expect(yield* count("ack")).toBe(3)
      expect(yield* count("skip")).toBe(2)
    }).pipe(Effect.scoped, Effect.provide(Bus.layerMemory)))

  it("the dedupe window remembers the last n ids, forgetting the oldest first", () => {
    const recent = new Bus.Recent(3)
    for (const id of ["a", "b", "c"]) recent.add(id)
    expect(["a", "b", "c"].map((id) => recent.has(id))).toEqual([true, true, true])
    recent.add("b") // already there: nothing moves
    recent.add("d")
    expect(["a", "b", "c", "d"].map((id) => recent.has(id))).toEqual([false, true, true, true])
    recent.add("e")
    recent.add("f")
    expect(["b", "c", "d", "e", "f"].map((id) => recent.has(id))).toEqual([false, false, true, true, true])
    const none = new Bus.Recent(0)
    none.add("x")
    expect(none.has("x")).toBe(false)
  })
})
