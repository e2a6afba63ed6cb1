/**
 * The event bus on JetStream (see `Bus.ts` for the contract and the wire format, `Nats.layerBus` for the options).
 *
 * - One stream holds the events: subjects `<prefix>.*.*.*` (tenant, stream type, event type), file storage, limits
 *   retention (late consumers replay), a duplicate window that drops a republished event id. A second stream,
 *   `<stream>_DLQ`, holds the dead letters on `<prefix>.dlq.<consumer>` (three tokens: never in the first stream).
 * - Publishing: each stream's events in a chain (the next once the previous is acknowledged), the chains side by
 *   side. A failed chain stops; the call waits for every chain to settle before it fails, so a retry never races a
 *   chain of the attempt before it.
 * - Consumers are durable pull consumers with explicit acks and no server-side delivery limit: the library counts
 *   attempts itself (`max_deliver` on the server would drop the event unseen if the process died during the last
 *   attempt), naks with the backoff's delay, and after `maxDeliver` attempts publishes a dead letter and terminates
 *   the message. nats-server 2.9 takes one filter subject per consumer: a filter with one value per field becomes
 *   the server's filter subject; a field with several values is filtered here (the skipped deliveries are acked).
 *   One consumer per subject would have split a stream's events of different types over several consumers, out of
 *   order with each other.
 * - Pulls expire after 5 seconds with heartbeats, so a consumer whose server-side leader moved (a cluster
 *   failover) pulls again within seconds instead of waiting out the default 30 s.
 */
import * as JetStream from "@nats-io/jetstream"
import * as Transport from "@nats-io/transport-node"
import * as Chunk from "effect/Chunk"
import * as Deferred from "effect/Deferred"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Either from "effect/Either"
import * as Exit from "effect/Exit"
import * as FiberId from "effect/FiberId"
import * as Option from "effect/Option"
import * as Schedule from "effect/Schedule"
import * as Stream from "effect/Stream"
import { createHash } from "node:crypto"
import * as Bus from "../Bus.js"
import type { BusOptions } from "../Nats.js"
import { iterate } from "./asyncIterate.js"
import { InvalidInput } from "../Errors.js"
import * as Instruments from "./instruments.js"
import * as Tracing from "./tracing.js"

const reasonOf = (cause: unknown): string => cause instanceof Error ? cause.message : String(cause)
const busError = (operation: string) => (cause: unknown) => new Bus.BusError({ operation, reason: reasonOf(cause) })

const STREAM_NAME = /^[A-Za-z0-9_-]{1,200}$/
const PREFIX = /^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$/

interface DeadLetterWire {
  readonly consumer: string
  readonly error: string
  readonly deliveries: number
  readonly sequence: number
  readonly failedAt: number
  readonly envelope?: unknown
  readonly raw?: string
}

/**
 * A delivery whose sequence and attempt are read from the message's reply subject only when asked for (by a handler,
 * or when it fails): parsing it for every delivery cost as much as the rest of a successful one.
 */
class Delivered implements Bus.Delivery {
  constructor(readonly consumer: string, private readonly m: JetStream.JsMsg) {}
  get sequence(): number {
    return this.m.seq
  }
  get attempt(): number {
    return this.m.info.deliveryCount
  }
}

export const make = (
  client: { readonly connection: Transport.NatsConnection; readonly jetstream: JetStream.JetStreamClient; readonly manager: JetStream.JetStreamManager },
  options: BusOptions
): Effect.Effect<Bus.EventBusService, Bus.BusError | InvalidInput> =>
  Effect.gen(function*() {
    const stream = options.stream ?? "EVENTS"
    const prefix = options.prefix ?? "events"
    if (!STREAM_NAME.test(stream)) {
      return yield* new InvalidInput({ field: "stream", reason: "must be 1 to 200 letters, digits, - or _" })
    }
    if (!PREFIX.test(prefix)) {
      return yield* new InvalidInput({ field: "prefix", reason: "must be subject tokens of letters, digits, - or _" })
    }
    const dlqStream = `${stream}_DLQ`
    const replicas = options.replicas ?? 1
    const millis = (field: string, input: Duration.DurationInput, min: number, max = 2 ** 31 - 1) => {
      const d = Bus.durationOf(input)
      const ms = d === undefined || !Duration.isFinite(d) ? NaN : Duration.toMillis(d)
      return ms >= min && ms <= max
        ? Effect.succeed(ms)
        : Effect.fail(new InvalidInput({ field, reason: `must be a finite duration from ${min} ms to ${max} ms` }))
    }
    const duplicateWindow = yield* millis("duplicateWindow", options.duplicateWindow ?? "2 minutes", 100, 2 ** 52)
    const maxAge = options.maxAge === undefined ? 0 : yield* millis("maxAge", options.maxAge, duplicateWindow, 2 ** 52)
    const publishTimeout = yield* millis("publishTimeout", options.publishTimeout ?? "5 seconds", 1)
    // the client refuses pulls that expire in under a second
    const pullExpiry = yield* millis("pullExpiry", options.pullExpiry ?? "5 seconds", 1000)
    if (!Number.isInteger(replicas) || replicas < 1 || replicas > 5) {
      return yield* new InvalidInput({ field: "replicas", reason: "must be an integer from 1 to 5" })
    }
    const { jetstream: js, manager } = client

    const ensureStream = (config: Partial<JetStream.StreamConfig> & { name: string }) =>
      Effect.tryPromise({
        try: async () => {
          try {
            await manager.streams.info(config.name)
          } catch (e) {
            if (e instanceof JetStream.JetStreamApiError && e.code === JetStream.JetStreamApiCodes.StreamNotFound) {
              await manager.streams.add(config)
              return
            }
            throw e
          }
          await manager.streams.update(config.name, config)
        },
        catch: busError(`create stream ${config.name}`)
      })
    yield* ensureStream({
      name: stream,
      subjects: [`${prefix}.*.*.*`],
      storage: JetStream.StorageType.File,
      retention: JetStream.RetentionPolicy.Limits,
      num_replicas: replicas,
      duplicate_window: Transport.nanos(duplicateWindow),
      max_age: Transport.nanos(maxAge)
    })
    yield* ensureStream({
      name: dlqStream,
      subjects: [`${prefix}.dlq.*`],
      storage: JetStream.StorageType.File,
      retention: JetStream.RetentionPolicy.Limits,
      num_replicas: replicas
    })

    const subjectOf = (e: Bus.Envelope) =>
      `${prefix}.${e.metadata.tenantId !== undefined ? Bus.subjectToken(e.metadata.tenantId) : Bus.noTenant}.${
        Bus.subjectToken(e.streamType)
      }.${Bus.subjectToken(e.type)}`
    const encoder = new TextEncoder()
    const channel = Bus.channelOf("nats", stream)

    type Trace = ReturnType<typeof Tracing.headersOf>

    const publishOne = (e: Bus.Envelope, trace: Trace) => {
      const tenant = e.metadata.tenantId
      let headers: Transport.MsgHdrs | undefined
      if (tenant !== undefined || trace !== undefined) {
        headers = Transport.headers()
        if (tenant !== undefined) headers.set("es-tenant-id", tenant)
        if (trace !== undefined) {
          headers.set(Tracing.TRACEPARENT, trace.traceparent)
          if (trace.tracestate !== undefined) headers.set(Tracing.TRACESTATE, trace.tracestate)
        }
      }
      const start = performance.now()
      return js.publish(subjectOf(e), encoder.encode(Bus.encode(e)), {
        msgID: e.eventId,
        timeout: publishTimeout,
        ...(headers !== undefined ? { headers } : {})
      }).then((ack) => {
        Instruments.add(channel.latency.get(e.streamType, e.type), (performance.now() - start) / 1000)
        Instruments.add(channel.published.get(e.streamType, e.type), 1)
        return ack
      })
    }

    /** The remote parent of a delivery: the publisher's span, from the message's trace context headers. */
    const parentOf = (m: JetStream.JsMsg) => {
      const headers = m.headers
      const traceparent = headers?.get(Tracing.TRACEPARENT)
      if (headers === undefined || traceparent === undefined || traceparent === "") return undefined
      const tracestate = headers.get(Tracing.TRACESTATE)
      return Tracing.parseTraceparent(traceparent, tracestate === "" ? undefined : tracestate)
    }

    const publishAll = async (envelopes: ReadonlyArray<Bus.Envelope>, trace: Trace): Promise<void> => {
      const chains = new Map<string, Array<Bus.Envelope>>()
      for (const e of envelopes) {
        const chain = chains.get(e.streamId)
        if (chain === undefined) chains.set(e.streamId, [e])
        else chain.push(e)
      }
      const settled = await Promise.allSettled(Array.from(chains.values(), async (chain) => {
        for (const e of chain) await publishOne(e, trace)
      }))
      for (const s of settled) if (s.status === "rejected") throw s.reason
    }

    const filterSubject = (filter: Bus.Filter | undefined) => {
      const one = (values: ReadonlyArray<string> | undefined) =>
        values !== undefined && values.length === 1 ? Bus.subjectToken(values[0]!) : "*"
      return `${prefix}.${one(filter?.tenants)}.${one(filter?.streamTypes)}.${one(filter?.eventTypes)}`
    }

    const deliverPolicy = (from: Bus.From | undefined): Partial<JetStream.ConsumerConfig> => {
      if (from === undefined || from === "all") return { deliver_policy: JetStream.DeliverPolicy.All }
      if (from === "new") return { deliver_policy: JetStream.DeliverPolicy.New }
      if ("sequence" in from) return { deliver_policy: JetStream.DeliverPolicy.StartSequence, opt_start_seq: from.sequence }
      return { deliver_policy: JetStream.DeliverPolicy.StartTime, opt_start_time: from.time.toISOString() }
    }

    const decodeMessage = (m: JetStream.JsMsg): Either.Either<Bus.Envelope, string> => Bus.decode(m.string())

    const deadLetter = (letter: DeadLetterWire) =>
      Effect.tryPromise({
        try: () =>
          js.publish(`${prefix}.dlq.${letter.consumer}`, encoder.encode(JSON.stringify(letter)), {
            timeout: publishTimeout,
            // one letter per message's death, even when writing it is tried again
            msgID: `${letter.consumer}.${letter.sequence}`
          }),
        catch: busError("dead letter")
      })

    /** Reads `stream` from `from` to the last message present now, through an ephemeral consumer. */
    const readStream = (
      name: string,
      filter: string,
      from: Bus.From | undefined
    ): Stream.Stream<JetStream.JsMsg, Bus.BusError> =>
      Stream.unwrapScoped(Effect.gen(function*() {
        // the end: the last message in the stream now (later ones are not part of this read)
        const last = (yield* Effect.tryPromise({ try: () => manager.streams.info(name), catch: busError("replay") })).state.last_seq
        const info = yield* Effect.acquireRelease(
          Effect.tryPromise({
            try: () =>
              manager.consumers.add(name, {
                ack_policy: JetStream.AckPolicy.None,
                filter_subject: filter,
                mem_storage: true,
                inactive_threshold: Transport.nanos(60_000),
                ...deliverPolicy(from)
              }),
            catch: busError("replay")
          }),
          (ci) => Effect.ignore(Effect.timeout(Effect.interruptible(Effect.promise(() => manager.consumers.delete(name, ci.name).catch(() => false))), "2 seconds"))
        )
        const consumer = yield* Effect.tryPromise({ try: () => js.consumers.get(name, info.name), catch: busError("replay") })
        let done = info.num_pending === 0 || last === 0
        const page = Effect.tryPromise({
          try: async () => {
            const out: Array<JetStream.JsMsg> = []
            const batch = await consumer.fetch({ max_messages: 256, expires: 5000 })
            for await (const m of batch) {
              if (m.seq > last) {
                done = true
                break
              }
              out.push(m)
              if (m.seq === last || m.info.pending === 0) {
                done = true
                break
              }
            }
            return out
          },
          catch: busError("replay")
        })
        return Stream.repeatEffectChunkOption(Effect.suspend(() =>
          done ? Effect.fail(Option.none()) : page.pipe(
            Effect.mapError(Option.some),
            Effect.flatMap((ms) =>
              ms.length === 0 && !done
                // messages are pending and none came: not the end of the stream
                ? Effect.fail(Option.some(new Bus.BusError({ operation: "replay", reason: "no messages came within 5 seconds" })))
                : Effect.succeed(Chunk.unsafeFromArray(ms))
            )
          )
        ))
      }))

    const checkConsumer = (consumer: string) =>
      Bus.CONSUMER_NAME.test(consumer)
        ? Effect.void
        : Effect.fail(new InvalidInput({ field: "consumer", reason: "must be 1 to 64 letters, digits, - or _" }))

    const lettersOf = (consumer: string) =>
      readStream(dlqStream, `${prefix}.dlq.${consumer}`, "all").pipe(
        Stream.map((m): Bus.DeadLetter => {
          let wire: Partial<DeadLetterWire> = {}
          try {
            const json = m.json<unknown>()
            if (typeof json === "object" && json !== null) wire = json as Partial<DeadLetterWire>
          } catch {
            // not a dead letter of ours: shown as it is
          }
          const envelope = wire.envelope === undefined ? undefined : Bus.decodeJson(wire.envelope)
          const num = (u: unknown) => typeof u === "number" ? u : 0
          return {
            id: m.seq,
            consumer,
            envelope: envelope !== undefined && Either.isRight(envelope) ? envelope.right : undefined,
            raw: typeof wire.raw === "string" ? wire.raw : wire.envelope === undefined ? m.string() : undefined,
            error: typeof wire.error === "string" ? wire.error : "not a dead letter written by this library",
            deliveries: num(wire.deliveries),
            sequence: num(wire.sequence),
            failedAt: num(wire.failedAt)
          }
        })
      )

    const send = (envelopes: ReadonlyArray<Bus.Envelope>, trace: Trace) =>
      Effect.tryPromise({
        try: () => publishAll(envelopes, trace),
          catch: (cause) =>
            new Bus.BusError({
              operation: "publish",
              reason: reasonOf(cause),
              // the message itself was refused: the same message will be refused again
              retryable: !(cause instanceof Transport.errors.InvalidArgumentError ||
                cause instanceof Transport.errors.InvalidSubjectError ||
                cause instanceof Transport.errors.PermissionViolationError)
            })
        }).pipe(Effect.zipRight(Effect.sync(() => Instruments.add(channel.publishedTotal, envelopes.length))))

    const service: Bus.EventBusService = {
      // with a tracer installed, in a producer span whose trace context every message carries
      publish: (envelopes) =>
        envelopes.length === 0 ? Effect.void : Effect.withFiberRuntime<void, Bus.BusError>((fiber) =>
          Tracing.isNative(fiber.currentTracer) ? send(envelopes, undefined) : Effect.useSpan(
            "Bus.publish",
            Bus.publishSpan(channel, envelopes)(),
            (span) =>
              Effect.onExit(send(envelopes, Tracing.headersOf(span)), (exit) => {
                if (exit._tag === "Failure") span.attribute("error.type", Instruments.errorTypeOf(exit))
                return Effect.void
              })
          )
        ),

      consume: (options, handler) =>
        Effect.gen(function*() {
          const settings = yield* Bus.settingsOf(options)
          const name = settings.name
          const filter = filterSubject(options.filter)
          const config: Partial<JetStream.ConsumerConfig> = {
            durable_name: name,
            ack_policy: JetStream.AckPolicy.Explicit,
            ack_wait: Transport.nanos(settings.ackWaitMillis),
            max_deliver: -1,
            max_ack_pending: 1000,
            filter_subject: filter,
            // the whole filter (the server filters on one subject; several values are filtered here): a later
            // consume under this name with another filter is refused, as on every backend
            // (a digest: the server takes descriptions up to 4 KiB, a filter can be longer)
            description: `effect-eventstore filter ${createHash("sha256").update(Bus.filterKey(options.filter)).digest("hex")}`,
            ...deliverPolicy(options.from)
          }
          const existing = yield* Effect.tryPromise({
            try: () => manager.consumers.info(stream, name).catch((e) => {
              if (e instanceof JetStream.JetStreamApiError && e.code === JetStream.JetStreamApiCodes.ConsumerNotFound) {
                return undefined
              }
              throw e
            }),
            catch: busError(`consumer ${name}`)
          })
          if (existing === undefined) {
            yield* Effect.tryPromise({
              try: () => manager.consumers.add(stream, config),
              catch: busError(`create consumer ${name}`)
            })
          } else if (existing.config.ack_wait !== config.ack_wait &&
            (existing.config.filter_subject ?? `${prefix}.*.*.*`) === filter &&
            (existing.config.description ?? config.description) === config.description) {
            // the same consumer with another ackWait: the latest consume sets it
            yield* Effect.tryPromise({
              try: () => manager.consumers.update(stream, name, { ack_wait: config.ack_wait! }),
              catch: busError(`update consumer ${name}`)
            })
          } else if (
            (existing.config.filter_subject ?? `${prefix}.*.*.*`) !== filter ||
            (existing.config.description?.startsWith("effect-eventstore filter ") === true &&
              existing.config.description !== config.description)
          ) {
            return yield* new InvalidInput({ field: "filter", reason: `consumer ${name} exists with another filter` })
          }
          const recent = new Bus.Recent(settings.dedupeWindow)
          // trace context is read from the messages only when someone traces
          const traced = !Tracing.isNative(yield* Effect.tracer)
          const consumer = yield* Effect.tryPromise({
            try: () => js.consumers.get(stream, name),
            catch: busError(`consumer ${name}`)
          })

          const handBack: Array<JetStream.JsMsg> = []
          const settle = (m: JetStream.JsMsg, envelope: Bus.Envelope | undefined, raw: string | undefined, outcome: Bus.Outcome) => {
            switch (outcome._tag) {
              case "ack":
                return Effect.sync(() => m.ack())
              case "retry":
                return Effect.sync(() => m.nak(outcome.delayMillis))
              case "interrupted":
                // the consumer is stopping: handed back once its pull is closed (a nak now could be delivered
                // straight back to the pull being closed, and then wait out ackWait)
                return Effect.sync(() => handBack.push(m))
              case "dead":
                // the letter first: if it cannot be written, the message comes back (nothing is dropped)
                return deadLetter({
                  consumer: name,
                  error: outcome.error,
                  deliveries: m.info.deliveryCount,
                  sequence: m.seq,
                  failedAt: Date.now(),
                  ...(envelope !== undefined ? { envelope: JSON.parse(Bus.encode(envelope)) } : { raw: raw ?? "" })
                }).pipe(
                  Effect.retry(Schedule.recurs(3).pipe(Schedule.addDelay(() => "200 millis"))),
                  Effect.matchEffect({
                    // a bare +TERM: servers before 2.10.4 ignore a +TERM with a reason, and the message would come back
                    onSuccess: () => Effect.sync(() => m.term()),
                    onFailure: (e) =>
                      Effect.zipRight(
                        Effect.logError(`bus consumer ${name}: could not write a dead letter (${e.reason}); it comes back`),
                        Effect.flatMap(settings.delay(settings.maxDeliver), (ms) => Effect.sync(() => m.nak(ms)))
                      )
                  })
                )
            }
          }

          const handle = (m: JetStream.JsMsg): Effect.Effect<void, never, any> => {
            const decoded = decodeMessage(m)
            if (Either.isLeft(decoded)) {
              // not an envelope: no handler can take it
              return settle(m, undefined, m.string(), { _tag: "dead", error: `not an event envelope: ${decoded.left}` })
            }
            const delivery: Bus.Delivery = new Delivered(name, m)
            // the handler is interruptible (its own timeouts work; the scope's close cuts it short and the event is
            // nak'd for another delivery); the delivery is settled whatever happens
            return Effect.uninterruptibleMask((restore) =>
              Bus.deliver(settings, recent, handler, decoded.right, delivery, restore, channel, traced ? parentOf(m) : undefined).pipe(
                Effect.flatMap((outcome) => settle(m, decoded.right, undefined, outcome))
              )
            )
          }

          // Deliveries arrive through the client's callback into a buffer that the loop drains a chunk at a time:
          // a promise per message through the client's async iterator cost more than the rest of a delivery.
          // (The client pulls ahead either way, up to the consumer's max_ack_pending.)
          const loop = Effect.gen(function*() {
            const buffer: Array<JetStream.JsMsg> = []
            // the chunk being handled, and where in it
            let chunk: Array<JetStream.JsMsg> = []
            let at = 0
            let closing = false
            let waiting: Deferred.Deferred<void> | undefined
            const wake = () => {
              const d = waiting
              waiting = undefined
              if (d !== undefined) Deferred.unsafeDone(d, Exit.void)
            }
            const messages = yield* Effect.acquireRelease(
              Effect.tryPromise({
                try: () =>
                  consumer.consume({
                    max_messages: 256,
                    expires: pullExpiry,
                    callback: (m) => {
                      // (while closing, what still arrives goes straight back)
                      if (closing) return m.nak()
                      buffer.push(m)
                      wake()
                    }
                  }),
                catch: busError(`consume ${name}`)
              }),
              (messages) =>
                // what was pulled and not handled goes back at once (other processes need not wait out ackWait)
                Effect.sync(() => {
                  closing = true
                }).pipe(
                  Effect.zipRight(Effect.ignore(Effect.timeout(
                    Effect.interruptible(Effect.promise(() => messages.close().catch(() => undefined))),
                    "2 seconds"
                  ))),
                  Effect.zipRight(Effect.sync(() => {
                    for (const m of handBack.splice(0)) m.nak()
                    for (const m of chunk.slice(at + 1)) m.nak()
                    for (const m of buffer.splice(0)) m.nak()
                  }))
                )
            )
            // what the client does about a lost pull (missed heartbeats, a consumer leader moving) is worth a line
            yield* iterate(messages.status(), (e) => e, (n) =>
              n.type === "heartbeats_missed" || n.type === "no_responders" || n.type === "consumer_not_found" ||
                n.type === "stream_not_found" || n.type === "consumer_deleted"
                ? Effect.logWarning(`bus consumer ${name}: ${n.type}`)
                : Effect.void).pipe(Effect.ignore, Effect.forkScoped)
            let closed = false
            messages.closed().then(() => {
              closed = true
              wake()
            }, () => {
              closed = true
              wake()
            })
            const drain: Effect.Effect<void, never, any> = Effect.suspend(() => {
              if (buffer.length > 0) {
                chunk = buffer.splice(0)
                return Effect.forEach(chunk, (m, i) => {
                  at = i
                  return handle(m)
                }, { discard: true }).pipe(
                  Effect.zipRight(settings.flush),
                  Effect.zipRight(drain)
                )
              }
              if (closed) return Effect.void
              const d = Deferred.unsafeMake<void>(FiberId.none)
              waiting = d
              return Effect.zipRight(Deferred.await(d), drain)
            })
            yield* drain
          }).pipe(
            Effect.scoped,
            Effect.zipRight(Effect.fail(new Bus.BusError({ operation: `consume ${name}`, reason: "the consumer stopped" }))),
            Effect.tapError((e) => Effect.logWarning(`bus consumer ${name}: ${e.reason}; pulling again`)),
            // a closed connection ends the consumer (its layer is closing, or it gave up reconnecting); anything else
            // is pulled again
            Effect.retry({ schedule: Schedule.spaced("1 second"), while: () => !client.connection.isClosed() }),
            Effect.catchAll(() => Effect.logError(`bus consumer ${name}: the NATS connection is closed; the consumer stopped`))
          )
          yield* Effect.forkScoped(loop)
        }),

      replay: (opts) => {
        const bad = Bus.checkFrom(opts?.from)
        if (bad !== undefined) return Stream.fail(bad)
        const match = Bus.matches(opts?.filter)
        return readStream(stream, filterSubject(opts?.filter), opts?.from ?? "all").pipe(
          Stream.filterMap((m) => {
            const decoded = decodeMessage(m)
            return Either.isRight(decoded) && match(decoded.right)
              ? Option.some([m.seq, decoded.right] as const)
              : Option.none()
          })
        )
      },

      deadLetters: (consumer) =>
        Effect.zipRight(checkConsumer(consumer), Effect.map(Stream.runCollect(lettersOf(consumer)), (c) => Array.from(c))),

      replayDeadLetters: (consumer, handler) =>
        Effect.zipRight(
          checkConsumer(consumer),
          Effect.gen(function*() {
            const letters = yield* Stream.runCollect(lettersOf(consumer))
            let handled = 0
            for (const letter of letters) {
              if (letter.envelope === undefined) continue
              yield* handler(letter.envelope)
              yield* Effect.tryPromise({
                try: () => manager.streams.deleteMessage(dlqStream, letter.id),
                catch: busError("remove dead letter")
              })
              handled++
            }
            return handled
          })
        )
    }
    return service
  })
