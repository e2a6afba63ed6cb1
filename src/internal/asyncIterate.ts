/**
 * Runs `f` on each value of an async iterable until it ends. Not `Stream.fromAsyncIterable`: when interrupted, that
 * awaits the iterator's `return()` in a finalizer, and an async generator's `return()` waits for the `next()` in
 * flight — which, for the NATS client's iterators (status, consumer messages), resolves only when a message comes
 * or the subscription closes: the scope would never close. Here an interruption abandons the pending `next()`; the
 * owner ends the iterator by closing what it reads (the connection, the consumer's messages).
 */
import * as Effect from "effect/Effect"

export const iterate = <A, E, R, E2>(
  iterable: AsyncIterable<A>,
  onError: (cause: unknown) => E2,
  f: (a: A) => Effect.Effect<void, E, R>
): Effect.Effect<void, E | E2, R> =>
  Effect.suspend(() => {
    const iterator = iterable[Symbol.asyncIterator]()
    const next = Effect.tryPromise({ try: () => iterator.next(), catch: onError })
    const loop: Effect.Effect<void, E | E2, R> = Effect.flatMap(next, (r) =>
      r.done ? Effect.void : Effect.zipRight(f(r.value), loop))
    return loop
  })
