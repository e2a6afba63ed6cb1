import { describe, expect, it } from "@effect/vitest"
import { Aggregate, Event, EventStore } from "effect-eventstore"
import * as Effect from "effect/Effect"
import * as Schema from "effect/Schema"

const Noted = Schema.TaggedStruct("Noted", { text: Schema.String })
const Notes = Aggregate.make({
  name: "Notes",
  events: Event.registry([Noted]),
  decider: {
    initialState: 0,
    decide: (command: { readonly text: string }) => [Noted.make(command), Noted.make({ text: `${command.text}!` })],
    evolve: (n: number) => n + 1
  }
})

const handled = (commandId: string | undefined) =>
  Effect.gen(function*() {
    const notes = yield* Aggregate.handler(Notes)
    yield* notes.handle("n", { text: "first" })
    const options = commandId === undefined ? {} : { commandId }
    return (yield* notes.handle("n", { text: "second" }, options)).events.map((e) => e.eventId)
  }).pipe(Effect.scoped, Effect.provide(EventStore.layerMemory))

describe("command ids in the aggregate handler", () => {
  it.effect("event ids derive from the command id and the versions: another store, the same ids", () =>
    Effect.gen(function*() {
      const a = yield* handled("cmd-42")
      const b = yield* handled("cmd-42")
      expect(a).toEqual(b)
      expect(a[0]).toMatch(/^[0-9a-f]{8}-[0-9a-f]{4}-5[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/)
      expect(new Set(a).size).toBe(2)
      expect(yield* handled("cmd-43")).not.toEqual(a)
      // without a command id: fresh ids each time
      expect(yield* handled(undefined)).not.toEqual(yield* handled(undefined))
    }))
})

describe("rebuilding unique values from the log", () => {
  it("a release by a stream that no longer holds the value does not free it (PostgreSQL's log order)", async () => {
    const { foldClaims } = await import("../src/internal/guards.js")
    const held = new Map<string, { tenantId: string; index: string; value: string; streamId: string }>()
    // S1 held v; S2's claim took a lower position than S1's release, which committed first
    foldClaims(held, "S1", "", JSON.stringify({ claim: [["email", "v"]] }))
    foldClaims(held, "S2", "", JSON.stringify({ claim: [["email", "v"]] }))
    foldClaims(held, "S1", "", JSON.stringify({ release: [["email", "v"]] }))
    expect([...held.values()].map((h) => h.streamId)).toEqual(["S2"])
    foldClaims(held, "S2", "", JSON.stringify({ release: [["email", "v"]] }))
    expect(held.size).toBe(0)
    expect(foldClaims(held, "S3", "", "not json")).toBe(false)
    expect(foldClaims(held, "S3", "", JSON.stringify({ claim: [["only-index"]] }))).toBe(false)
  })
})
