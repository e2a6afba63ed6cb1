/**
 * What users test deciders with: a given/when/then spec that needs no store, a `replay` of command sequences for
 * property tests, and arbitraries derived from the same Schemas the domain uses (for `it.prop`).
 *
 * @since 0.1.0
 */
import * as Arbitrary from "effect/Arbitrary"
import * as Data from "effect/Data"
import * as Effect from "effect/Effect"
import * as Either from "effect/Either"
import * as Equal from "effect/Equal"
import * as FastCheck from "effect/FastCheck"
import type * as Schema from "effect/Schema"
import * as Utils from "effect/Utils"
import * as Layer from "effect/Layer"
import * as Schedule from "effect/Schedule"
import * as Aggregate from "./Aggregate.js"
import type { Decider } from "./Aggregate.js"
import { type EventStore, layerMemory } from "./EventStore.js"
import * as Snapshot from "./Snapshot.js"

export {
  /**
   * The in-memory event store alone.
   *
   * @since 0.1.0
   */
  layerMemory
}

/**
 * Everything a unit test of aggregates needs, in memory: an `EventStore`, a `SnapshotStore`, and the handler of every
 * aggregate given, with snapshots written inline (a command returns after its snapshot is saved) and conflicts
 * retried without delay (up to 10 times), so tests run under `it.effect`'s `TestClock` with no background work and
 * no sleep to wait for. Each build is fresh and empty.
 *
 * @example
 * ```ts
 * it.effect("a deposit", () =>
 *   Effect.gen(function*() {
 *     const { state } = yield* Account.handle("1", Deposit.make({ amount: 10 }))
 *     expect(state.balance).toBe(10)
 *   }).pipe(Effect.provide(Testing.layer(Account))))
 * ```
 *
 * @since 0.1.0
 */
export const layer = <const Aggregates extends ReadonlyArray<Aggregate.Any>>(
  ...aggregates: Aggregates
): Layer.Layer<Aggregate.HandlerOf<Aggregates[number]> | EventStore | Snapshot.SnapshotStore> => {
  const stores = Layer.merge(layerMemory, Snapshot.layerMemory)
  const handlers = aggregates.map((aggregate) =>
    Aggregate.layer(aggregate as Aggregate.Aggregate<any, any, any, any, any, string, any>, {
      snapshotWrites: "inline",
      retry: Schedule.recurs(10)
    }) as Layer.Layer<
      unknown,
      never,
      EventStore | Snapshot.SnapshotStore
    >
  )
  return Layer.provideMerge(
    handlers.length === 0 ? Layer.empty : Layer.mergeAll(...(handlers as [Layer.Layer<unknown, never, EventStore | Snapshot.SnapshotStore>])),
    stores
  ) as Layer.Layer<Aggregate.HandlerOf<Aggregates[number]> | EventStore | Snapshot.SnapshotStore>
}

/**
 * A spec step did not hold: `expected` and `actual` say how.
 *
 * @since 0.1.0
 */
export class SpecFailure extends Data.TaggedError("SpecFailure")<{
  readonly message: string
  readonly expected: unknown
  readonly actual: unknown
}> {}

/** Structural equality: plain objects and arrays by content, Schema classes and Data values by their own `Equal`. */
export const equals = (a: unknown, b: unknown): boolean => Utils.structuralRegion(() => Equal.equals(a, b))

type Subject<State, Command, E, Err, R> =
  | Decider<State, Command, E, Err, R>
  | Aggregate.Aggregate<State, Command, E & { readonly _tag: string }, Err, R, any, any>

const deciderOf = <State, Command, E, Err, R>(d: Subject<State, Command, E, Err, R>): Decider<State, Command, E, Err, R> =>
  "decider" in d ? d.decider as Decider<State, Command, E, Err, R> : d

const show = (u: unknown) => {
  try {
    return JSON.stringify(u)
  } catch {
    return String(u)
  }
}

/**
 * A given/when/then spec for a decider (or an aggregate's decider).
 *
 * @example
 * ```ts
 * it.effect("withdrawing more than the balance fails", () =>
 *   Testing.spec(Account)
 *     .given([Opened.make({ owner: "ada" }), Deposited.make({ amount: 100 })])
 *     .when(Withdraw.make({ amount: 150 }))
 *     .thenFails(new InsufficientFunds({ balance: 100, requested: 150 })))
 * ```
 *
 * @since 0.1.0
 */
export const spec = <State, Command, E, Err, R>(
  subject: Subject<State, Command, E, Err, R>
) => {
  const decider = deciderOf(subject)
  return {
    given: (history: ReadonlyArray<E>) => {
      const state = history.reduce(decider.evolve, decider.initialState)
      return {
        when: (command: Command) => {
          const decided = Effect.either(Aggregate.decide(decider, command, state))
          return {
            /** `decide` produces exactly these events. */
            then: (expected: ReadonlyArray<E>): Effect.Effect<void, SpecFailure, R> =>
              Effect.flatMap(decided, (result) =>
                Either.isLeft(result)
                  ? Effect.fail(
                    new SpecFailure({
                      message: `expected events ${show(expected)}, decide failed with ${show(result.left)}`,
                      expected,
                      actual: result.left
                    })
                  )
                  : equals(result.right, expected)
                  ? Effect.void
                  : Effect.fail(
                    new SpecFailure({
                      message: `expected events ${show(expected)}, got ${show(result.right)}`,
                      expected,
                      actual: result.right
                    })
                  )),
            /** `decide` fails with exactly this error. */
            thenFails: (expected: Err): Effect.Effect<void, SpecFailure, R> =>
              Effect.flatMap(decided, (result) =>
                Either.isRight(result)
                  ? Effect.fail(
                    new SpecFailure({
                      message: `expected failure ${show(expected)}, decide produced ${show(result.right)}`,
                      expected,
                      actual: result.right
                    })
                  )
                  : equals(result.left, expected)
                  ? Effect.void
                  : Effect.fail(
                    new SpecFailure({
                      message: `expected failure ${show(expected)}, got ${show(result.left)}`,
                      expected,
                      actual: result.left
                    })
                  ))
          }
        }
      }
    }
  }
}

/** @since 0.1.0 */
export interface Replay<State, E, Err> {
  /** The state after each command (index 0 is the initial state). */
  readonly states: ReadonlyArray<State>
  readonly events: ReadonlyArray<E>
  /** The commands `decide` rejected, with their errors. */
  readonly rejected: ReadonlyArray<Err>
}

/**
 * Runs a sequence of commands through a decider without a store: decide on the current state, fold the events,
 * collect rejections. The building block of property tests ("for any sequence of commands, the balance is never
 * negative").
 *
 * @since 0.1.0
 */
export const replay = <State, Command, E, Err, R>(
  subject: Subject<State, Command, E, Err, R>,
  commands: Iterable<Command>
): Effect.Effect<Replay<State, E, Err>, never, R> => {
  const decider = deciderOf(subject)
  return Effect.gen(function*() {
    let state = decider.initialState
    const states: Array<State> = [state]
    const events: Array<E> = []
    const rejected: Array<Err> = []
    for (const command of commands) {
      const result = yield* Effect.either(Aggregate.decide(decider, command, state))
      if (Either.isLeft(result)) {
        rejected.push(result.left)
      } else {
        for (const event of result.right) {
          state = decider.evolve(state, event)
          events.push(event)
        }
      }
      states.push(state)
    }
    return { states, events, rejected }
  })
}

/**
 * The fast-check arbitrary of a Schema (what `it.prop` derives when given a Schema).
 *
 * @since 0.1.0
 */
export const arbitrary: <A, I, R>(schema: Schema.Schema<A, I, R>) => FastCheck.Arbitrary<A> = Arbitrary.make

/**
 * Sequences of commands drawn from a command Schema, for `replay`-based properties.
 *
 * @since 0.1.0
 */
export const commandSequences = <A, I, R>(
  schema: Schema.Schema<A, I, R>,
  constraints?: { readonly minLength?: number; readonly maxLength?: number }
): FastCheck.Arbitrary<Array<A>> =>
  FastCheck.array(Arbitrary.make(schema), { minLength: constraints?.minLength ?? 0, maxLength: constraints?.maxLength ?? 50 })
