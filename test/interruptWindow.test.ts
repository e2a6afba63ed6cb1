/**
 * An append interrupted at any step between its validation and its group: the store must stay usable (no claim of
 * the writer left behind), and the caller either sees its append committed or nothing of it written. The fiber is
 * made to yield at chosen steps after the append reads its clock (a scheduler that yields on demand), and is
 * interrupted while it is parked there.
 */
import { describe, expect, it } from "@effect/vitest"
import { EventStore } from "effect-eventstore"
import * as Sqlite from "effect-eventstore/Sqlite"
import * as Cause from "effect/Cause"
import * as Clock from "effect/Clock"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Fiber from "effect/Fiber"
import type * as Scheduler from "effect/Scheduler"
import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"

const dir = fs.mkdtempSync(path.join(os.tmpdir(), "effect-eventstore-interrupt-"))

const attempt = (skip: number) =>
  Effect.gen(function*() {
    let armed = -1
    let capture = false
    let held: (() => void) | undefined
    // yields once, `skip` steps after the clock is read, and keeps the fiber parked until released
    const scheduler: Scheduler.Scheduler = {
      scheduleTask: (task) => {
        if (capture) {
          capture = false
          held = task
        } else setTimeout(task, 0)
      },
      shouldYield: () => {
        if (armed < 0 || armed-- > 0) return false
        capture = true
        return 0
      }
    }
    const base = Clock.make()
    const arming: Clock.Clock = Object.assign(Object.create(Object.getPrototypeOf(base)), base, {
      unsafeCurrentTimeMillis: () => {
        armed = skip
        return base.unsafeCurrentTimeMillis()
      }
    })
    const store = yield* EventStore.EventStore
    const stream = `Window-${skip}`
    const fiber = yield* Effect.fork(
      Effect.withScheduler(Effect.withClock(store.append(stream, [{ type: "T", payload: {} }]), arming), scheduler)
    )
    for (let i = 0; i < 200 && held === undefined && fiber.unsafePoll() === null; i++) yield* Effect.sleep("1 millis")
    yield* Fiber.interruptFork(fiber)
    yield* Effect.sleep("5 millis")
    // release whatever the scheduler parks (the clock may be read again on the way) until the fiber is done
    for (let i = 0; i < 2000 && fiber.unsafePoll() === null; i++) {
      const task = held
      held = undefined
      if (task !== undefined) setTimeout(task, 0)
      yield* Effect.sleep("1 millis")
    }
    const exit = yield* Fiber.await(fiber).pipe(Effect.timeout("1 second"))
    // the writer is not left claimed: the next append goes through
    const next = yield* Effect.either(Effect.timeout(store.append(`${stream}-next`, [{ type: "T", payload: {} }]), "2 seconds"))
    expect(next._tag).toBe("Right")
    const written = (yield* store.readPage(stream)).length
    if (Exit.isSuccess(exit)) expect(written).toBe(1)
    else {
      expect(Cause.isInterruptedOnly(exit.cause)).toBe(true)
      expect(written).toBeLessThanOrEqual(1)
    }
  })

describe("an append interrupted between its validation and its group", () => {
  for (const [label, filename] of [[":memory: (every append queued)", ":memory:"], ["a file", "file"]] as const) {
    it.live(`${label}: the store stays usable whatever step the interruption lands on`, () =>
      Effect.gen(function*() {
        for (let skip = 0; skip < 8; skip++) yield* attempt(skip)
      }).pipe(
        Effect.provide(
          Sqlite.layer({
            filename: filename === "file" ? path.join(dir, `w-${crypto.randomUUID().slice(0, 8)}.db`) : filename,
            pollInterval: "1 hour",
            shutdownGrace: "100 millis"
          })
        )
      ), 30_000)
  }
})
