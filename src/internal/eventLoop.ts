/**
 * Keeping Node's event loop responsive while the library works synchronously. SQLite commits run synchronously
 * (each one holds the thread for an fsync), and Effect's scheduler runs fibers on microtasks, giving timers and I/O a
 * turn only every couple of thousand yields: with appenders in a loop, a 10 ms timer was measured firing up to 3 s
 * late, starving HTTP handlers, health checks and `Effect.timeout`. So the library's synchronous work (a commit, a
 * page of a fold) is followed by `yieldIfDue`: once `BUDGET_MS` have passed since the thread last went round the event
 * loop (as far as the library saw), the fiber waits for `setImmediate`, which lets timers and I/O run first.
 */
import * as Effect from "effect/Effect"

/** Longest stretch of the library's synchronous work between two turns of the event loop. */
export const BUDGET_MS = 5

let lastTurn = performance.now()

/** Whether the budget is used up. */
export const due = (): boolean => performance.now() - lastTurn >= BUDGET_MS

/** Waits for a turn of the event loop (timers, I/O, then this). Interruptible while it waits. */
export const yieldToLoop: Effect.Effect<void> = Effect.async<void>((resume) => {
  const handle = setImmediate(() => {
    lastTurn = performance.now()
    resume(Effect.void)
  })
  return Effect.sync(() => clearImmediate(handle))
})

let turn = 0
let probing = false
const advance = () => {
  turn++
  probing = false
}

/**
 * A number that changes each time Node's event loop goes round (timers, I/O), as far as the library needs to know:
 * work done under the same number ran in one stretch of microtasks, without I/O in between.
 */
export const currentTurn = (): number => {
  if (!probing) {
    probing = true
    setImmediate(advance).unref()
  }
  return turn
}

/** `yieldToLoop` when the budget is used up, otherwise nothing. */
export const yieldIfDue: Effect.Effect<void> = Effect.suspend(() => due() ? yieldToLoop : Effect.void)
