/**
 * Background work owned by a scope: the fibers a layer starts (a group-commit drain, snapshot writes) run in a
 * `FiberSet` of the layer's scope, never as daemons. When the scope closes, in-flight work gets `grace` to finish,
 * then whatever is left is interrupted.
 */
import type * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as FiberSet from "effect/FiberSet"
import type * as Scope from "effect/Scope"

export interface Background {
  /** Runs `effect` in the background; it stops with the owning scope. */
  readonly run: (effect: Effect.Effect<unknown>) => Effect.Effect<void>
  /** Waits until no background fiber is running. */
  readonly idle: Effect.Effect<void>
}

export const make = (grace: Duration.DurationInput): Effect.Effect<Background, never, Scope.Scope> =>
  Effect.gen(function*() {
    const set = yield* FiberSet.make<unknown, never>()
    // Finalizers run in reverse order: this wait runs before the FiberSet's own finalizer interrupts what is left.
    // (Finalizers are uninterruptible: the wait must be made interruptible for the timeout to end it.)
    yield* Effect.addFinalizer(() => Effect.ignore(Effect.timeout(Effect.interruptible(FiberSet.awaitEmpty(set)), grace)))
    return {
      run: (effect) => Effect.asVoid(FiberSet.run(set, effect)),
      idle: FiberSet.awaitEmpty(set)
    }
  })
