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
