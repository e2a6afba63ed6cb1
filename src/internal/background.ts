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
  /** Runs `effect` in the background; it stops with the owning scope. `false`: the scope is closed, nothing ran. */
  readonly run: (effect: Effect.Effect<unknown>) => Effect.Effect<boolean>
}

export const make = (grace: Duration.DurationInput): Effect.Effect<Background, never, Scope.Scope> =>
  Effect.gen(function*() {
    const set = yield* FiberSet.make<unknown, never>()
    let open = true
    // Runs after the wait below and before the FiberSet's finalizer interrupts what is left.
    yield* Effect.addFinalizer(() => Effect.sync(() => (open = false)))
    // Finalizers run in reverse order: this wait runs before the FiberSet's own finalizer interrupts what is left.
    // (Finalizers are uninterruptible: the wait must be made interruptible for the timeout to end it.)
    yield* Effect.addFinalizer(() => Effect.ignore(Effect.timeout(Effect.interruptible(FiberSet.awaitEmpty(set)), grace)))
    return {
      run: (effect) =>
        // interruptible whatever the region it was started from (a fiber inherits its parent's): the owner's
        // scope must be able to stop it
        Effect.suspend(() => open ? Effect.as(FiberSet.run(set, Effect.interruptible(effect)), true) : Effect.succeed(false))
    }
  })
