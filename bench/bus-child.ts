/**
 * The consuming process of `bus.e2e.lag` (started by `bus.ts`):
 *   bus-child.ts <lib|raw> <natsUrl> <stream> <prefix> <consumer> <count>
 * Consumes `stream` with the durable consumer `consumer` — through `Nats.layerBus` and `bus.consume` (`lib`), or a
 * raw durable pull consumer with explicit acks that `JSON.parse`s each message (`raw`) — prints `ready` once it
 * consumes, and after `count` events one JSON line: each event's receive time (epoch ms, sub-millisecond) by the
 * index `i` of its payload. The times are kept in memory until then, so that writing them costs nothing measured.
 */
import * as JetStream from "@nats-io/jetstream"
import * as Transport from "@nats-io/transport-node"
import { Bus } from "effect-eventstore"
import * as Nats from "effect-eventstore/Nats"
import * as Deferred from "effect/Deferred"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Logger from "effect/Logger"
import * as LogLevel from "effect/LogLevel"
import * as ManagedRuntime from "effect/ManagedRuntime"

const [mode, url, stream, prefix, consumer, count] = process.argv.slice(2) as [string, string, string, string, string, string]
const n = Number(count)
const received = new Array<number>(n).fill(-1)
const now = () => performance.timeOrigin + performance.now()
const print = (line: string) => new Promise<void>((resolve) => process.stdout.write(line + "\n", () => resolve()))

async function lib() {
  const rt = ManagedRuntime.make(
    Nats.layerBus({ stream, prefix }).pipe(
      Layer.provide(Nats.layer({ servers: url })),
      Layer.provideMerge(Logger.minimumLogLevel(LogLevel.Warning))
    )
  )
  await rt.runPromise(Effect.scoped(Effect.gen(function*() {
    const bus = yield* Bus.EventBus
    const done = yield* Deferred.make<void>()
    let seen = 0
    yield* bus.consume({ name: consumer }, (envelope) =>
      Effect.suspend(() => {
        received[(envelope.payload as { i: number }).i] = now()
        return ++seen === n ? Deferred.succeed(done, undefined) : Effect.void
      }))
    yield* Effect.promise(() => print("ready"))
    yield* Deferred.await(done)
  })))
  await rt.dispose()
}

async function raw() {
  const nc = await Transport.connect({ servers: url })
  const js = JetStream.jetstream(nc)
  const jsm = await JetStream.jetstreamManager(nc)
  await jsm.consumers.add(stream, {
    durable_name: consumer,
    ack_policy: JetStream.AckPolicy.Explicit,
    ack_wait: Transport.nanos(30_000),
    max_ack_pending: 1000,
    filter_subject: `${prefix}.*.*.*`,
    deliver_policy: JetStream.DeliverPolicy.All
  })
  const messages = await (await js.consumers.get(stream, consumer)).consume({ max_messages: 256 })
  await print("ready")
  let seen = 0
  for await (const m of messages) {
    received[(JSON.parse(m.string()) as { payload: { i: number } }).payload.i] = now()
    m.ack()
    if (++seen === n) break
  }
  await messages.close()
  await nc.drain()
}

await (mode === "lib" ? lib() : raw())
await print(JSON.stringify(received))
process.exit(0)
