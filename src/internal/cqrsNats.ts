/**
 * `Cqrs` over NATS request/reply: the headers, W3C `traceparent` both ways, the server (one queue subscription per
 * definition, a fiber per request) and the client. The wire format is documented in `Cqrs.ts`.
 *
 * The server forks each request's fiber with its `RequestContext` already in the context and its log annotations
 * already in the fiber refs (`Runtime.runFork` with `updateRefs`), instead of `provideService` and `annotateLogs`
 * inside the fiber, and replies from the fiber's observer instead of an `onExit` in it: the server's CPU per request
 * went from 13 µs to 5 µs (measured with a fake connection; raw `JSON.parse` and `respond` take 0.8 µs).
 */
import type * as Transport from "@nats-io/transport-node"
import { MsgHdrsImpl, NoRespondersError, RequestError, TimeoutError as NatsTimeoutError } from "@nats-io/transport-node"
import * as Cause from "effect/Cause"
import * as Context from "effect/Context"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Either from "effect/Either"
import * as Exit from "effect/Exit"
import * as Fiber from "effect/Fiber"
import * as FiberRef from "effect/FiberRef"
import * as FiberRefs from "effect/FiberRefs"
import * as HashMap from "effect/HashMap"
import * as Option from "effect/Option"
import * as Runtime from "effect/Runtime"
import * as Schema from "effect/Schema"
import type * as Scope from "effect/Scope"
import * as Tracer from "effect/Tracer"
import { randomUUID } from "node:crypto"
import type {
  Client,
  ClientOptions,
  CqrsError,
  Definition,
  Group,
  Handlers,
  RequestContextService,
  ServeOptions
} from "../Cqrs.js"
import { InternalError, Principal, RequestContext, TimeoutError, Unavailable, ValidationError } from "../Cqrs.js"
import { InvalidInput } from "../Errors.js"
import { TENANT_PATTERN } from "./codec.js"
import { NatsClient, NatsError } from "../Nats.js"
import {
  checkToken,
  type Entry,
  entryOf,
  environmentOf,
  makeClient,
  outerContext,
  payloadError,
  pipeline,
  reasonOf,
  type SpanParent,
  tagOf
} from "./cqrsDispatch.js"
import * as Tracing from "./tracing.js"

// --- headers and trace context --------------------------------------------------------------------------------------

const CORRELATION_ID = "es-correlation-id"
const TENANT_ID = "es-tenant-id"
/** Node's timers take at most 2^31 - 1 ms (a longer one fires at once). */
const MAX_TIMEOUT = 2 ** 31 - 1
const PRINCIPAL = "es-principal"
const TRACEPARENT = Tracing.TRACEPARENT
const TRACESTATE = Tracing.TRACESTATE

interface RequestHeaders {
  correlationId: string | undefined
  tenantId: string | undefined
  principal: string | undefined
  traceparent: string | undefined
  tracestate: string | undefined
}

/** The request headers by case-insensitive name (a non-Effect client may canonicalize them), in one pass. */
const readHeaders = (headers: Transport.MsgHdrs | undefined): RequestHeaders => {
  const out: RequestHeaders = { correlationId: undefined, tenantId: undefined, principal: undefined, traceparent: undefined, tracestate: undefined }
  if (headers === undefined) return out
  for (const [key, values] of headers) {
    const value = values[0]
    if (value === undefined || value === "") continue
    switch (key.toLowerCase()) {
      case CORRELATION_ID:
        out.correlationId = value
        break
      case TENANT_ID:
        out.tenantId = value
        break
      case PRINCIPAL:
        out.principal = value
        break
      case TRACEPARENT:
        out.traceparent = value
        break
      case TRACESTATE:
        out.tracestate = value
        break
    }
  }
  return out
}

const CRLF = /[\r\n]/

/** @internal The W3C trace context (see `tracing.ts`). */
export const formatTraceparent = Tracing.formatTraceparent
/** @internal */
export const parseTraceparent = Tracing.parseTraceparent

// --- server ---------------------------------------------------------------------------------------------------------

const subjectOf = (prefix: string, group: string, definition: Definition.Any) =>
  `${prefix}.${definition.kind === "command" ? "cmd" : "qry"}.${group}.${definition.name}`

/** The options that become subject tokens or the queue group, checked before anything reaches NATS. */
const checkOptions = (prefix: string, queue?: string): Effect.Effect<void, InvalidInput> =>
  Effect.try({
    try: () => {
      for (const token of prefix.split(".")) checkToken("subject prefix token", token)
      if (queue !== undefined) checkToken("queue group", queue)
    },
    catch: (e) => new InvalidInput({ field: "options", reason: reasonOf(e) })
  })

const decoder = new TextDecoder()

const respond = (runtime: Runtime.Runtime<never>, msg: Transport.Msg, body: string): void => {
  try {
    msg.respond(body)
  } catch (cause) {
    // the connection closed under the reply: the client times out
    Runtime.runFork(runtime, Effect.logWarning(`Cqrs: cannot reply on ${msg.subject}: ${reasonOf(cause)}`))
  }
}

/**
 * The reply of a request, from its fiber's exit (an observer: it also runs when the fiber is interrupted). An error
 * the definition does not declare is replied as `InternalError`, and logged.
 */
const reply = (
  runtime: Runtime.Runtime<never>,
  msg: Transport.Msg,
  entry: Entry,
  context: RequestContextService,
  exit: Exit.Exit<unknown, unknown>
): void => {
  if (msg.reply === undefined || msg.reply === "") return
  if (Exit.isSuccess(exit)) return respond(runtime, msg, JSON.stringify({ _tag: "Success", value: exit.value }))
  const failure = Cause.failureOption(exit.cause)
  const error = Option.isSome(failure)
    ? failure.value
    : new InternalError({
      request: entry.definition.name,
      reason: Cause.isInterruptedOnly(exit.cause) ? "interrupted (the server is closing)" : "the handler died"
    })
  const encoded = entry.encodeFailure(error)
  if (encoded._tag === "Right") return respond(runtime, msg, JSON.stringify({ _tag: "Failure", error: encoded.right }))
  Runtime.runFork(
    runtime,
    Effect.logError(
      `${entry.definition.kind} ${entry.definition.name} failed with an undeclared error; replying InternalError`,
      exit.cause
    ).pipe(Effect.annotateLogs("correlation.id", context.correlationId))
  )
  const internal = new InternalError({ request: entry.definition.name, reason: `undeclared failure ${tagOf(error)}` })
  respond(runtime, msg, JSON.stringify({ _tag: "Failure", error: Either.getOrThrow(entry.encodeFailure(internal)) }))
}

/** @internal */
export const serve = <Defs extends Definition.Any, R, RM>(
  handlers: Handlers<Defs, R>,
  options: ServeOptions<RM>
): Effect.Effect<void, NatsError | InvalidInput, Scope.Scope | NatsClient | R | RM> =>
  Effect.gen(function*() {
    const { connection } = yield* NatsClient
    const prefix = options.prefix ?? "svc"
    const queue = options.queue ?? handlers.group.name
    yield* checkOptions(prefix, queue)
    const trustPrincipal = options.trustPrincipal === true
    const decodePrincipal = Schema.decodeUnknownEither(Principal)
    const runtime = yield* Effect.runtime<R | RM>()
    const run = pipeline(handlers as Handlers<Definition.Any, R>, options, environmentOf(runtime.fiberRefs))
    const logRuntime = runtime as Runtime.Runtime<never>
    // a request's span has the remote parent or none, never the span `serve` was called in
    const services = Context.omit(Tracer.ParentSpan)(runtime.context) as Context.Context<R | RM>
    const annotations = FiberRefs.getOrDefault(runtime.fiberRefs, FiberRef.currentLogAnnotations)
    const inFlight = new Set<Fiber.RuntimeFiber<unknown, unknown>>()

    const start = (entry: Entry, annotated: HashMap.HashMap<string, unknown>, msg: Transport.Msg) => {
      const definition = entry.definition
      const headers = readHeaders(msg.headers)
      let problem: string | undefined
      let principal: Principal | undefined
      if (trustPrincipal && headers.principal !== undefined) {
        try {
          const decoded = decodePrincipal(JSON.parse(headers.principal))
          if (decoded._tag === "Right") principal = decoded.right
          else problem = `${PRINCIPAL} header: ${decoded.left.message}`
        } catch (cause) {
          problem = `${PRINCIPAL} header is not JSON: ${reasonOf(cause)}`
        }
      }
      if (problem === undefined && headers.tenantId !== undefined && !TENANT_PATTERN.test(headers.tenantId)) {
        problem = `${TENANT_ID} header: not a tenant id (${TENANT_PATTERN})`
      }
      let input: unknown = undefined
      if (problem === undefined && msg.data.length > 0) {
        try {
          input = JSON.parse(decoder.decode(msg.data))
        } catch (cause) {
          problem = `payload is not JSON: ${reasonOf(cause)}`
        }
      }
      const context: RequestContextService = {
        name: definition.name,
        kind: definition.kind,
        correlationId: headers.correlationId ?? randomUUID(),
        tenantId: headers.tenantId,
        principal
      }
      const parse = problem === undefined
        ? () => Either.mapLeft(entry.decodePayload(input), (e) => payloadError(entry, e))
        : () => Either.left(new ValidationError({ request: definition.name, reason: problem }))
      const parent: SpanParent = {
        _tag: "Remote",
        span: headers.traceparent === undefined ? undefined : parseTraceparent(headers.traceparent, headers.tracestate)
      }
      let logAnnotations = HashMap.set(annotated, "correlation.id", context.correlationId)
      if (context.tenantId !== undefined) logAnnotations = HashMap.set(logAnnotations, "tenant.id", context.tenantId)
      const requestRuntime = Runtime.make({
        context: Context.add(services, RequestContext, context),
        fiberRefs: runtime.fiberRefs,
        runtimeFlags: runtime.runtimeFlags
      })
      const fiber = Runtime.runFork(requestRuntime, run(entry, parse, context, parent, true), {
        updateRefs: (refs, fiberId) =>
          FiberRefs.updateAs(refs, { fiberId, fiberRef: FiberRef.currentLogAnnotations, value: logAnnotations })
      })
      inFlight.add(fiber)
      // the reply goes out from the exit, even when the request is interrupted (the server closing)
      fiber.addObserver((exit) => {
        inFlight.delete(fiber)
        reply(logRuntime, msg, entry, context, exit)
      })
    }

    const subscriptions: Array<Transport.Subscription> = []
    yield* Effect.acquireRelease(
      Effect.try({
        try: () => {
          for (const definition of handlers.group.definitions) {
            const entry = entryOf(definition)
            const annotated = HashMap.set(annotations, "command.type", definition.name)
            const subject = subjectOf(prefix, handlers.group.name, definition)
            subscriptions.push(connection.subscribe(subject, {
              queue,
              callback: (error, msg) => {
                if (error === null) start(entry, annotated, msg)
                else {
                  Runtime.runFork(logRuntime, Effect.logWarning(`Cqrs: the subscription to ${subject} ended: ${error.message}`))
                }
              }
            }))
          }
        },
        catch: (cause) => {
          for (const s of subscriptions) s.unsubscribe()
          return new NatsError({ operation: "subscribe", reason: reasonOf(cause) })
        }
      }),
      () =>
        Effect.promise(() => Promise.all(subscriptions.map((s) => s.drain().catch(() => undefined)))).pipe(
          Effect.zipRight(Effect.suspend(() => Fiber.awaitAll(Array.from(inFlight)))),
          // a finalizer is uninterruptible: without this the time limit could not stop the wait
          Effect.interruptible,
          Effect.timeout(options.drainTimeout ?? "10 seconds"),
          Effect.ignore,
          // interrupted without waiting for them: a handler in an uninterruptible region must not hold the close
          Effect.zipRight(Effect.suspend(() => Effect.forEach(Array.from(inFlight), Fiber.interruptFork, { discard: true })))
        )
    )
    // the server has the subscriptions once it answers a ping sent after them
    yield* Effect.tryPromise({
      try: () => connection.flush(),
      catch: (cause) => new NatsError({ operation: "subscribe", reason: reasonOf(cause) })
    })
  })

// --- client ---------------------------------------------------------------------------------------------------------

const transportError = (entry: Entry, subject: string, timeoutMillis: number, cause: unknown): CqrsError => {
  const request = entry.definition.name
  if (cause instanceof NatsTimeoutError) return new TimeoutError({ request, timeoutMillis })
  if ((cause instanceof RequestError && cause.isNoResponders()) || cause instanceof NoRespondersError) {
    return new Unavailable({ request, subject, reason: "no responders" })
  }
  return new Unavailable({ request, subject, reason: reasonOf(cause) })
}

const decodeReply = (entry: Entry, msg: Transport.Msg): Effect.Effect<unknown, unknown> => {
  const request = entry.definition.name
  let body: unknown
  try {
    body = JSON.parse(decoder.decode(msg.data))
  } catch (cause) {
    return Effect.fail(new ValidationError({ request, reason: `reply: not JSON: ${reasonOf(cause)}` }))
  }
  if (typeof body === "object" && body !== null && "_tag" in body) {
    if (body._tag === "Success") {
      const decoded = entry.decodeSuccess((body as { readonly value?: unknown }).value)
      return decoded._tag === "Right"
        ? Effect.succeed(decoded.right)
        : Effect.fail(new ValidationError({ request, reason: `reply: ${decoded.left.message}` }))
    }
    if (body._tag === "Failure") {
      const decoded = entry.decodeFailure((body as { readonly error?: unknown }).error)
      return Effect.fail(
        decoded._tag === "Right" ? decoded.right : new ValidationError({ request, reason: `reply: ${decoded.left.message}` })
      )
    }
  }
  return Effect.fail(new ValidationError({ request, reason: "reply: neither a Success nor a Failure" }))
}

/** @internal */
export const client = <Defs extends Definition.Any>(
  group: Group<string, Defs>,
  options: ClientOptions
): Effect.Effect<Client<Defs>, InvalidInput, NatsClient> =>
  Effect.zipRight(checkOptions(options.prefix ?? "svc"), NatsClient).pipe(Effect.map(({ connection }) => {
    const prefix = options.prefix ?? "svc"
    const defaultTimeout = Duration.toMillis(options.timeout ?? "5 seconds")
    const defaultPrincipal = options.principal === undefined ? undefined : JSON.stringify(options.principal)
    return makeClient(group, (entry) => {
      const definition = entry.definition
      const subject = subjectOf(prefix, group.name, definition)
      const requestSpan = `Cqrs.request ${definition.name}`

      const send = (
        correlationId: string | undefined,
        tenantId: string | undefined,
        principal: string | undefined,
        body: string,
        timeout: number,
        span: Tracer.AnySpan | undefined
      ): Effect.Effect<unknown, unknown> => {
        // Set on the headers' map directly: `MsgHdrs.set` scans and canonicalizes the keys on every call (the
        // client's CPU per request went from 3.4 to 2.5 µs). Values are checked for what the format cannot carry.
        if ((correlationId !== undefined && CRLF.test(correlationId)) || (tenantId !== undefined && CRLF.test(tenantId))) {
          return Effect.fail(
            new ValidationError({ request: definition.name, reason: "headers: values cannot contain CR or LF" })
          )
        }
        if (tenantId !== undefined && !TENANT_PATTERN.test(tenantId)) {
          return Effect.fail(new ValidationError({ request: definition.name, reason: `tenantId: not a tenant id (${TENANT_PATTERN})` }))
        }
        if (!(timeout >= 1 && timeout <= MAX_TIMEOUT)) {
          return Effect.fail(
            new ValidationError({ request: definition.name, reason: `timeout: must be from 1 ms to ${MAX_TIMEOUT} ms` })
          )
        }
        const headers = new MsgHdrsImpl()
        if (correlationId !== undefined) headers.headers.set(CORRELATION_ID, [correlationId])
        if (tenantId !== undefined) headers.headers.set(TENANT_ID, [tenantId])
        if (principal !== undefined) headers.headers.set(PRINCIPAL, [principal])
        const trace = span === undefined ? undefined : Tracing.headersOf(span)
        if (trace !== undefined) {
          headers.headers.set(TRACEPARENT, [trace.traceparent])
          if (trace.tracestate !== undefined) headers.headers.set(TRACESTATE, [trace.tracestate])
        }
        return Effect.async<unknown, unknown>((resume) => {
          try {
            connection.request(subject, body, headers.headers.size > 0 ? { timeout, headers } : { timeout }).then(
              (msg) => resume(decodeReply(entry, msg)),
              (cause) => resume(Effect.fail(transportError(entry, subject, timeout, cause)))
            )
          } catch (cause) {
            resume(Effect.fail(transportError(entry, subject, timeout, cause)))
          }
        })
      }

      return (payload, call) =>
        Effect.withFiberRuntime<unknown, unknown>((fiber) => {
          const encoded = entry.encodePayload(payload)
          if (encoded._tag === "Left") return Effect.fail(payloadError(entry, encoded.left))
          const outer = outerContext(fiber.currentContext)
          // A correlation id the call or the enclosing request gives; none otherwise: the server makes it.
          const correlationId = call?.correlationId ?? outer?.correlationId
          const tenantId = call?.tenantId ?? options.tenantId ?? outer?.tenantId
          const body = encoded.right === undefined ? "" : JSON.stringify(encoded.right)
          const principal = call?.principal !== undefined ? JSON.stringify(call.principal) : defaultPrincipal
          const timeout = call?.timeout !== undefined ? Duration.toMillis(call.timeout) : defaultTimeout
          if (Tracing.isNative(fiber.currentTracer)) {
            return send(correlationId, tenantId, principal, body, timeout, fiber.currentSpan)
          }
          // the client's span names the correlation id, so the client makes it
          const spanCorrelationId = correlationId ?? randomUUID()
          const attributes: Record<string, unknown> = {
            "command.type": definition.name,
            "command.kind": definition.kind,
            "correlation.id": spanCorrelationId
          }
          if (tenantId !== undefined) attributes["tenant.id"] = tenantId
          return Effect.useSpan(requestSpan, { kind: "client", attributes }, (span) =>
            send(spanCorrelationId, tenantId, principal, body, timeout, span))
        })
    })
  }))
