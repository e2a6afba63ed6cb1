import { describe, expect, it } from "@effect/vitest"
import * as Deferred from "effect/Deferred"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Fiber from "effect/Fiber"
import * as Scope from "effect/Scope"
import * as Either from "effect/Either"
import * as Background from "../src/internal/background.js"
import * as GroupCommit from "../src/internal/groupCommit.js"

// The background drain runs in fibers of this scope (in the library: the store's layer scope).
const scope = Effect.runSync(Scope.make())
const fork = (effect: Effect.Effect<void>) => Effect.as(Effect.forkIn(effect, scope), true)
const closed = () => "closed"

/** A writer whose `run` records every group and can be slowed down or made to fail. */
const recorder = (options: { readonly delay?: "20 millis"; readonly maxSize?: number } = {}) => {
  const groups: Array<ReadonlyArray<number>> = []
  const started = Effect.runSync(Deferred.make<void>())
  const writer = GroupCommit.make<number, string, string>({
    run: (inputs) =>
      Effect.gen(function*() {
        groups.push(inputs)
        yield* Deferred.succeed(started, undefined)
        if (options.delay) yield* Effect.sleep(options.delay)
        if (inputs.includes(-1)) return yield* Effect.fail("group failed")
        if (inputs.includes(-2)) return yield* Effect.die("boom")
        return inputs.map((n) => n % 2 === 0 ? Exit.succeed(`ok ${n}`) : Exit.fail(`odd ${n}`))
      }),
    size: () => 1,
    maxSize: options.maxSize ?? 100,
    fork,
    closed
  })
  return { groups, writer, started: Deferred.await(started) }
}

describe("group commit", () => {
  it.live("one submitter alone: each submission is its own group", () =>
    Effect.gen(function*() {
      const { groups, writer } = recorder()
      for (let i = 0; i < 5; i++) expect(yield* writer.submit(i * 2)).toBe(`ok ${i * 2}`)
      expect(groups).toEqual([[0], [2], [4], [6], [8]])
    }))

  it.live("concurrent submitters share groups; each gets its own result", () =>
    Effect.gen(function*() {
      const { groups, writer } = recorder()
      const results = yield* Effect.forEach(
        Array.from({ length: 20 }, (_, i) => i),
        (i) => Effect.either(writer.submit(i)),
        { concurrency: "unbounded" }
      )
      expect(results.map((r) => r._tag === "Right" ? r.right : r.left)).toEqual(
        Array.from({ length: 20 }, (_, i) => i % 2 === 0 ? `ok ${i}` : `odd ${i}`)
      )
      expect(groups.flat().sort((a, b) => a - b)).toEqual(Array.from({ length: 20 }, (_, i) => i))
      expect(groups.length).toBeLessThan(20)
      expect(Math.max(...groups.map((g) => g.length))).toBeGreaterThan(1)
    }))

  it.live("fibers submitting in loops keep forming groups, within maxSize", () =>
    Effect.gen(function*() {
      const { groups, writer } = recorder({ maxSize: 4 })
      yield* Effect.forEach(Array.from({ length: 8 }, (_, f) => f), (f) =>
        Effect.forEach(Array.from({ length: 10 }, (_, i) => i), (i) => writer.submit((f * 100 + i) * 2), { discard: true }), {
        concurrency: "unbounded",
        discard: true
      })
      expect(groups.flat().length).toBe(80)
      expect(groups.every((g) => g.length <= 4)).toBe(true)
      expect(groups.filter((g) => g.length > 1).length).toBeGreaterThan(5)
    }))

  it.live("a group that fails as a whole fails every member; a defect kills them; the writer recovers", () =>
    Effect.gen(function*() {
      const { started, writer } = recorder({ delay: "20 millis" })
      const slow = yield* Effect.fork(writer.submit(0))
      yield* started
      const [a, b] = yield* Effect.all([Effect.exit(writer.submit(-1)), Effect.exit(writer.submit(2))], { concurrency: "unbounded" })
      yield* Fiber.join(slow)
      expect(a).toEqual(Exit.fail("group failed"))
      expect(b).toEqual(Exit.fail("group failed"))
      const died = yield* Effect.exit(writer.submit(-2))
      expect(Exit.isFailure(died) && died.cause._tag).toBe("Die")
      expect(yield* writer.submit(4)).toBe("ok 4")
    }))

  it.live("interrupted while queued: the submission is dropped and never reaches run", () =>
    Effect.gen(function*() {
      const { groups, started, writer } = recorder({ delay: "20 millis" })
      const leader = yield* Effect.fork(writer.submit(0))
      yield* started // the leader's group is running now
      const queued = yield* Effect.fork(writer.submit(42))
      yield* Effect.sleep("1 millis")
      yield* Fiber.interrupt(queued)
      yield* Fiber.join(leader)
      expect(yield* writer.submit(2)).toBe("ok 2")
      expect(groups.flat()).not.toContain(42)
    }))

  it.live("interrupted once its group runs: the group finishes first, then the caller is interrupted", () =>
    Effect.gen(function*() {
      const { groups, started, writer } = recorder({ delay: "20 millis" })
      const caller = yield* Effect.fork(writer.submit(8))
      yield* started
      const startedAt = Date.now()
      const exit = yield* Fiber.interrupt(caller)
      expect(Exit.isInterrupted(exit)).toBe(true)
      expect(Date.now() - startedAt).toBeGreaterThanOrEqual(10) // waited for the group
      expect(groups).toEqual([[8]])
      expect(yield* writer.submit(10)).toBe("ok 10")
    }))
})

describe("group commit under churn", () => {
  it.live("a waiter interrupted just as the leader finishes does not strand the appends queued behind it", () =>
    Effect.gen(function*() {
      const gate = yield* Deferred.make<void>()
      const written: Array<string> = []
      let first = true
      const writer = GroupCommit.make<string, string, never>({
        run: (inputs) =>
          Effect.gen(function*() {
            if (first) {
              first = false
              yield* Deferred.await(gate)
            }
            written.push(...inputs)
            return inputs.map((i) => Exit.succeed(i))
          }),
        size: () => 1,
        maxSize: 100,
        fork,
        closed: () => {
          throw new Error("never closed here")
        }
      })
      const a = yield* Effect.fork(writer.submit("a"))
      yield* Effect.yieldNow()
      const b = yield* Effect.fork(writer.submit("b"))
      yield* Effect.yieldNow()
      const c = yield* Effect.fork(writer.submit("c"))
      yield* Effect.yieldNow()
      yield* Deferred.succeed(gate, undefined)
      yield* Effect.yieldNow()
      yield* Fiber.interrupt(b)
      expect(yield* Fiber.join(a)).toBe("a")
      expect(yield* Fiber.join(c).pipe(Effect.timeout("2 seconds"))).toBe("c")
      expect(written).toContain("c")
    }))

  it.live("a leader is not held by other fibers' appends once its own is done", () =>
    Effect.gen(function*() {
      const writer = GroupCommit.make<number, number, never>({
        run: (inputs) => Effect.as(Effect.sleep("2 millis"), inputs.map((i) => Exit.succeed(i))),
        size: () => 1,
        maxSize: 4,
        fork,
        closed: () => {
          throw new Error("never closed here")
        }
      })
      let worst = 0
      yield* Effect.forEach(Array.from({ length: 8 }, (_, f) => f), (f) =>
        Effect.gen(function*() {
          for (let i = 0; i < 50; i++) {
            const t = Date.now()
            yield* writer.submit(f)
            worst = Math.max(worst, Date.now() - t)
          }
        }), { concurrency: "unbounded", discard: true })
      // each append waits for at most a few 2 ms groups, not for the whole run (~200 ms)
      expect(worst).toBeLessThan(100)
    }))
})

describe("group commit and its scope", () => {
  it.live("closing the scope: queued appends get the grace period, then fail typed; later ones fail at once", () =>
    Effect.gen(function*() {
      const scope = yield* Scope.make()
      const background = yield* Scope.extend(Background.make("150 millis"), scope)
      const written: Array<number> = []
      const writer = GroupCommit.make<number, number, string>({
        // each group takes 100 ms: the queue cannot drain within the grace period
        run: (inputs) =>
          Effect.as(Effect.sleep("100 millis"), inputs.map((i) => {
            written.push(i)
            return Exit.succeed(i)
          })),
        size: () => 1,
        maxSize: 1,
        fork: background.run,
        closed: () => "closed"
      })
      const fibers = yield* Effect.forEach(
        Array.from({ length: 10 }, (_, i) => i),
        (i) => Effect.fork(Effect.either(writer.submit(i))),
        { concurrency: "unbounded" }
      )
      yield* Effect.sleep("150 millis") // the first leader's group is done; the rest drains in the background
      const started = Date.now()
      yield* Scope.close(scope, Exit.void)
      expect(Date.now() - started).toBeLessThan(1_000) // grace + at most one group, not the whole queue
      const results = yield* Effect.forEach(fibers, Fiber.join)
      const ok = results.filter((r) => r._tag === "Right").map((r) => r._tag === "Right" && r.right)
      const failed = results.filter((r) => r._tag === "Left").map((r) => r._tag === "Left" && r.left)
      expect(ok.length + failed.length).toBe(10)
      expect(failed.length).toBeGreaterThan(0)
      expect(new Set(failed)).toEqual(new Set(["closed"]))
      expect([...ok].sort()).toEqual([...written].sort()) // exactly the written ones succeeded
      expect(yield* Effect.either(writer.submit(99))).toEqual(Either.left("closed"))
    }))
})
