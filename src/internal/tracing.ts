/**
 * Spans only when someone reads them. Without an installed tracer (OpenTelemetry, DevTools, `Layer.setTracer`),
 * Effect's native tracer keeps spans that go nowhere, and on the command path they cost more than the library's own
 * work (a few µs and several allocations each: measured 8 µs for `Effect.withSpan` on this machine). So the
 * library's spans are created only when the fiber's tracer is not the native one; attributes are built only then.
 */
import * as Context from "effect/Context"
import * as DefaultServices from "effect/DefaultServices"
import * as Effect from "effect/Effect"
import * as Tracer from "effect/Tracer"

/** Effect's built-in tracer: the one in the default services when nobody installed another. */
const native = Context.get(DefaultServices.liveServices, Tracer.Tracer)
const nativeTracer = (): Tracer.Tracer => native

/** Whether `tracer` is Effect's built-in one (nobody installed a tracer). */
export const isNative = (tracer: Tracer.Tracer): boolean => tracer === nativeTracer()

/** `Effect.withSpan` (the span is the parent of what `effect` does), when a tracer is installed. */
export const withSpan = <A, E, R>(
  effect: Effect.Effect<A, E, R>,
  name: string,
  options: () => Tracer.SpanOptions
): Effect.Effect<A, E, R> =>
  Effect.tracerWith((tracer) => tracer === nativeTracer() ? effect : Effect.withSpan(effect, name, options()))

/** `Effect.useSpan` (a span around `effect`, not its parent), when a tracer is installed. */
export const useSpan = <A, E, R>(
  name: string,
  options: () => Tracer.SpanOptions,
  effect: () => Effect.Effect<A, E, R>
): Effect.Effect<A, E, R> =>
  Effect.tracerWith((tracer) => tracer === nativeTracer() ? effect() : Effect.useSpan(name, options(), effect))
