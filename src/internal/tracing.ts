/**
 * Spans only when someone reads them. Without an installed tracer (OpenTelemetry, DevTools, `Layer.setTracer`),
 * Effect's native tracer keeps spans that go nowhere, and on the command path they cost more than the library's own
 * work (a few µs and several allocations each: measured 8 µs for `Effect.withSpan` on this machine). So the
 * library's spans are created only when the fiber's tracer is not the native one; attributes are built only then.
 *
 * Also the W3C trace context that crosses processes (`traceparent`, `tracestate`): written from the current span by
 * the bus and the command transport, read back as the remote parent of the receiving side's span.
 */
import * as Context from "effect/Context"
import * as DefaultServices from "effect/DefaultServices"
import * as Effect from "effect/Effect"
import type * as Exit from "effect/Exit"
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

/**
 * `withSpan`, and `onExit` adds attributes that only the outcome knows (the version reached, the error's type)
 * before the span ends.
 */
export const withSpanExit = <A, E, R>(
  effect: Effect.Effect<A, E, R>,
  name: string,
  options: () => Tracer.SpanOptions,
  onExit: (span: Tracer.Span, exit: Exit.Exit<A, E>) => void
): Effect.Effect<A, E, R> =>
  Effect.tracerWith((tracer) => tracer === nativeTracer() ? effect : spanExit(effect, name, options(), onExit))

/** `withSpanExit` whatever the tracer (for a caller that knows one is installed). */
export const spanExit = <A, E, R>(
  effect: Effect.Effect<A, E, R>,
  name: string,
  options: Tracer.SpanOptions,
  onExit: (span: Tracer.Span, exit: Exit.Exit<A, E>) => void
): Effect.Effect<A, E, R> =>
  Effect.useSpan(name, options, (span) =>
    Effect.onExit(Effect.withParentSpan(effect, span), (exit) => {
      onExit(span, exit)
      return Effect.void
    }))

/** `Effect.useSpan` (a span around `effect`, not its parent), when a tracer is installed. */
export const useSpan = <A, E, R>(
  name: string,
  options: () => Tracer.SpanOptions,
  effect: () => Effect.Effect<A, E, R>
): Effect.Effect<A, E, R> =>
  Effect.tracerWith((tracer) => tracer === nativeTracer() ? effect() : Effect.useSpan(name, options(), effect))

// --- W3C trace context ----------------------------------------------------------------------------------------------

export const TRACEPARENT = "traceparent"
export const TRACESTATE = "tracestate"

const HEX32 = /^[0-9a-f]{32}$/
const HEX16 = /^[0-9a-f]{16}$/
const TRACEPARENT_00 = /^00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$/
const TRACEPARENT_LATER = /^([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(?:-.*)?$/
const ZEROS = /^0+$/
/** At most 32 list members of printable ASCII (the W3C limit is 512 characters in practice; we keep 1024). */
const TRACESTATE_TEXT = /^[\x20-\x7e]{1,1024}$/

/** The W3C `traceparent` of a span whose ids have the W3C shape (Effect's and OpenTelemetry's do). */
export const formatTraceparent = (span: Tracer.AnySpan): string | undefined =>
  HEX32.test(span.traceId) && HEX16.test(span.spanId)
    ? `00-${span.traceId}-${span.spanId}-${span.sampled ? "01" : "00"}`
    : undefined

/**
 * The tags under which `@effect/opentelemetry` reads a parent span's trace flags and trace state (by key: the library
 * does not load OpenTelemetry for them).
 */
const OtelTraceFlags = Context.GenericTag<"OtelTraceFlags", number>("@effect/opentelemetry/Tracer/OtelTraceFlags")
const OtelTraceState = Context.GenericTag<"OtelTraceState", TraceState>("@effect/opentelemetry/Tracer/OtelTraceState")

/**
 * The `tracestate` of a span, when it has one: an OpenTelemetry span's (its span context), or a remote parent's.
 */
export const traceStateOf = (span: Tracer.AnySpan): string | undefined => {
  const otel = (span as { readonly span?: { readonly spanContext?: () => { readonly traceState?: TraceStateLike } } }).span
  const fromOtel = typeof otel?.spanContext === "function" ? otel.spanContext().traceState : undefined
  const state = fromOtel ?? Context.getOption(span.context, OtelTraceState).pipe((o) => o._tag === "Some" ? o.value : undefined)
  const text = state?.serialize()
  return text === undefined || text === "" ? undefined : text
}

interface TraceStateLike {
  readonly serialize: () => string
}

/**
 * A W3C trace state, immutable, as OpenTelemetry's `TraceState` interface has it (`get`, `set`, `unset`,
 * `serialize`): what a remote parent carries, so that the spans continuing it keep the caller's vendor entries.
 */
class TraceState {
  constructor(private readonly entries: ReadonlyArray<readonly [string, string]>) {}
  static parse(text: string): TraceState {
    const entries: Array<readonly [string, string]> = []
    for (const member of text.split(",")) {
      const m = member.trim()
      const eq = m.indexOf("=")
      if (eq <= 0) continue
      const key = m.slice(0, eq)
      if (entries.some(([k]) => k === key)) continue
      entries.push([key, m.slice(eq + 1)])
      if (entries.length === 32) break
    }
    return new TraceState(entries)
  }
  get(key: string): string | undefined {
    return this.entries.find(([k]) => k === key)?.[1]
  }
  set(key: string, value: string): TraceState {
    return new TraceState([[key, value], ...this.entries.filter(([k]) => k !== key)])
  }
  unset(key: string): TraceState {
    return new TraceState(this.entries.filter(([k]) => k !== key))
  }
  serialize(): string {
    return this.entries.map(([k, v]) => `${k}=${v}`).join(",")
  }
}

/**
 * The remote parent of a W3C `traceparent` (with its `tracestate`, if any); `undefined` for a malformed one
 * (version `ff`, all-zero ids), which the spec says to ignore: the receiver starts a new trace. Versions after 00
 * may append fields. The parent's sampled flag is kept where OpenTelemetry reads it, so a parent-based sampler
 * follows the caller's decision.
 */
export const parseTraceparent = (value: string, tracestate?: string): Tracer.ExternalSpan | undefined => {
  const m = TRACEPARENT_00.exec(value) ?? TRACEPARENT_LATER.exec(value)
  if (m === null) return undefined
  const [traceId, spanId, flags] = m.length === 4 ? [m[1]!, m[2]!, m[3]!] : [m[2]!, m[3]!, m[4]!]
  // version ff is invalid, and version 00 has exactly four fields
  if (m.length === 5 && (m[1] === "ff" || m[1] === "00")) return undefined
  if (ZEROS.test(traceId) || ZEROS.test(spanId)) return undefined
  const traceFlags = parseInt(flags, 16) & 1
  let context = Context.make(OtelTraceFlags, traceFlags)
  if (tracestate !== undefined && TRACESTATE_TEXT.test(tracestate)) {
    context = Context.add(context, OtelTraceState, TraceState.parse(tracestate))
  }
  return Tracer.externalSpan({ traceId, spanId, sampled: traceFlags === 1, context })
}

/** The trace context headers of a span: `traceparent`, and `tracestate` when the span has one. */
export const headersOf = (span: Tracer.AnySpan): { readonly traceparent: string; readonly tracestate?: string } | undefined => {
  const traceparent = formatTraceparent(span)
  if (traceparent === undefined) return undefined
  const tracestate = traceStateOf(span)
  return tracestate === undefined ? { traceparent } : { traceparent, tracestate }
}
