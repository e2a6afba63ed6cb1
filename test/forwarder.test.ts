/**
 * The forwarder: the store's log onto the bus, in order per stream, with nothing lost — in one process on the memory
 * bus; on JetStream with the forwarder process killed (SIGKILL) and the NATS server restarted mid-run; and on a
 * 3-node JetStream cluster whose stream leader and consumer leader are killed mid-run.
 */
import { describe, expect, it } from "@effect/vitest"
import { JetStreamApiError, jetstreamManager } from "@nats-io/jetstream"
import { connect } from "@nats-io/transport-node"
import { Bus, EventStore, Projection } from "effect-eventstore"
import * as Nats from "effect-eventstore/Nats"
import * as NatsServer from "effect-eventstore/NatsServer"
import * as Sqlite from "effect-eventstore/Sqlite"
import * as Context from "effect/Context"
import * as Effect from "effect/Effect"
import * as Fiber from "effect/Fiber"
import * as Layer from "effect/Layer"
import * as Schedule from "effect/Schedule"
import { spawn } from "node:child_process"
import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"
import { eventually } from "./conformance/Bus.js"
import * as Fixture from "./fixtures/nats.js"

const root = path.resolve(import.meta.dirname, "..")
const dir = fs.mkdtempSync(path.join(os.tmpdir(), "effect-eventstore-forwarder-"))
const inCI = !["", "0", "false"].includes((process.env.CI ?? "").toLowerCase())
const binary = ["/usr/sbin/nats-server", "/usr/local/bin/nats-server"].find((f) => fs.existsSync(f))
if (binary === undefined) {
  if (inCI) throw new Error("nats-server is required in CI (the forwarder tests restart it)")
  console.log("forwarder.test.ts: the NATS process tests are skipped: no nats-server binary")
}

/** Appends `perStream` events to each of `streams` streams (one event per append, streams interleaved). */
const appendAll = (streams: number, perStream: number, label: string, delay?: number) =>
  Effect.gen(function*() {
    const store = yield* EventStore.EventStore
    for (let v = 0; v < perStream; v++) {
      for (let s = 0; s < streams; s++) {
        yield* store.append(`${label}-${s}`, [{ type: "Deposited", payload: { v: v + 1 } }], { streamType: "Account" })
      }
      if (delay !== undefined) yield* Effect.sleep(`${delay} millis`)
    }
  })

/** What a consumer saw: every delivery, and per stream the versions in the order first handled. */
const recorder = () => {
  const handled: Array<string> = []
  const versions = new Map<string, Array<number>>()
  return {
    handled,
    versions,
    handler: (e: Bus.Envelope) =>
      Effect.sync(() => {
        handled.push(e.eventId)
        versions.set(e.streamId, [...(versions.get(e.streamId) ?? []), e.version])
      })
  }
}

const expectComplete = (r: ReturnType<typeof recorder>, streams: number, perStream: number, label: string) => {
  // none handled twice
  expect(new Set(r.handled).size).toBe(r.handled.length)
  expect([...r.versions].filter(([id]) => id.startsWith(`${label}-`)).flatMap(([, vs]) => vs).length).toBe(streams * perStream)
  // in order per stream
  for (let s = 0; s < streams; s++) {
    expect(r.versions.get(`${label}-${s}`)).toEqual(Array.from({ length: perStream }, (_, i) => i + 1))
  }
}

describe("forwarder on the memory bus", () => {
  it.live("forwards the log in order per stream; a rebuild or republish delivers nothing twice", () =>
    Effect.gen(function*() {
      const bus = yield* Bus.EventBus
      const store = yield* EventStore.EventStore
      yield* appendAll(10, 20, "m")
      const r = recorder()
      yield* bus.consume({ name: "reader" }, r.handler)
      const projections = yield* Projection.start([Bus.forwarder()], { batchSize: 37 })
      yield* projections.awaitPosition("bus-forwarder", yield* store.head, "10 seconds")
      yield* appendAll(10, 5, "n")
      yield* projections.awaitPosition("bus-forwarder", yield* store.head, "10 seconds")
      yield* eventually(() => r.handled.length >= 250, 10_000, "250 deliveries")
      expectComplete(r, 10, 20, "m")
      // the whole log again: the bus drops what it holds
      expect(yield* Bus.republish()).toBe(250)
      yield* Effect.sleep("200 millis")
      expect(r.handled.length).toBe(250)
      // a part of it
      expect(yield* Bus.republish({ fromPosition: 100, toPosition: 120 })).toBe(20)
      expect((yield* projections.status("bus-forwarder")).state).toBe("live")
    }).pipe(
      Effect.scoped,
      Effect.provide(Layer.mergeAll(EventStore.layerMemory, Bus.layerMemory, Projection.layerMemory))
    ))
})

describe.skipIf(!Fixture.available)("forwarder on JetStream: an event the broker refuses", () => {
  it.live("stops the forwarder at that event (named, parkable); the rest flows once it is parked", () =>
    Effect.gen(function*() {
      const store = yield* EventStore.EventStore
      const bus = yield* Bus.EventBus
      const a1 = yield* store.append("a", [{ type: "Small", payload: { n: 1 } }])
      // within the store's 1 MiB, over NATS's default max_payload once wrapped in its envelope
      const huge = yield* store.append("b", [{ type: "Huge", payload: { blob: "x".repeat(1_048_500) } }])
      const a2 = yield* store.append("a", [{ type: "Small", payload: { n: 2 } }])
      const seen: Array<number> = []
      yield* bus.consume({ name: "after-park" }, (e) => Effect.sync(() => seen.push(e.position)))
      const projections = yield* Projection.start([Bus.forwarder()], { retry: Schedule.recurs(1) })
      yield* eventually(() => seen.length >= 1, 10_000, "the first event")
      const failed = yield* Effect.gen(function*() {
        for (let i = 0; i < 200; i++) {
          const s = yield* projections.status("bus-forwarder")
          if (s.state === "failed") return s
          yield* Effect.sleep("50 millis")
        }
        return yield* Effect.die(new Error("the forwarder did not stop"))
      })
      expect(failed.failure?.position).toBe(huge.position)
      expect(failed.failure?.streamId).toBe("b")
      const parked = yield* projections.park("bus-forwarder")
      expect(parked.position).toBe(huge.position)
      yield* eventually(() => seen.length >= 2, 10_000, "the event after the parked one")
      yield* Effect.sleep("200 millis")
      expect(seen).toEqual([a1.position, a2.position])
    }).pipe(
      Effect.scoped,
      Effect.provide(Layer.mergeAll(
        EventStore.layerMemory,
        Projection.layerMemory,
        Nats.layerBus({ stream: Fixture.unique("BIG"), prefix: Fixture.unique("big") }).pipe(
          Layer.provide(Nats.layer({ servers: Fixture.url }))
        )
      ))
    ))
})

/** The JetStream stream of the bus, and how many messages it holds. */
const messagesIn = (url: string, stream: string) =>
  Effect.promise(async () => {
    const nc = await connect({ servers: url })
    try {
      return (await (await jetstreamManager(nc)).streams.info(stream)).state.messages
    } catch {
      return -1
    } finally {
      await nc.close()
    }
  })

describe.skipIf(binary === undefined)("forwarder on JetStream, with processes killed", () => {
  it.live("a forwarder killed mid-stream and a NATS restart mid-run lose nothing and reorder nothing", () =>
    Effect.gen(function*() {
      const server = yield* NatsServer.make({ binary: binary! })
      const stream = Fixture.unique("FWD")
      const file = path.join(dir, `${stream}.db`)
      const STREAMS = 40
      const PER = 30
      const busLayer = Nats.layerBus({ stream, prefix: stream }).pipe(
        Layer.provide(Nats.layer({ servers: server.url, reconnectTimeWait: "100 millis" }))
      )
      const storeLayer = Sqlite.layer({ filename: file })
      // the consumer, in this process: it reconnects by itself after the restart
      const r = recorder()
      const bus = Context.get(yield* Layer.build(busLayer), Bus.EventBus)
      yield* bus.consume({ name: "checker" }, r.handler)
      const appender = yield* appendAll(STREAMS, PER, "k", 20).pipe(Effect.provide(storeLayer), Effect.fork)

      const worker = () => {
        const child = spawn(
          process.execPath,
          ["--import", "tsx", "--conditions=@effect-eventstore/source", path.join(root, "test/fixtures/forward-worker.ts"), file, server.url, stream],
          { cwd: root, stdio: ["ignore", "pipe", "pipe"] }
        )
        let err = ""
        child.stderr.on("data", (d) => (err += d))
        return { child, error: () => err }
      }
      // two kills while the appends go on
      for (const at of [200, 500]) {
        const w = worker()
        yield* eventually(() => r.handled.length >= at, 30_000, `${at} deliveries`)
        w.child.kill("SIGKILL")
        yield* Effect.async<void>((resume) => {
          w.child.on("exit", () => resume(Effect.void))
        })
      }
      const last = worker()
      // the server goes down (and comes back) while the forwarder publishes
      yield* eventually(() => r.handled.length >= 700, 30_000, "700 deliveries")
      yield* server.stop
      yield* Effect.sleep("1 second")
      yield* server.start
      yield* Fiber.join(appender)
      yield* eventually(() => r.handled.length >= STREAMS * PER, 60_000, "every event").pipe(
        Effect.tapError(() => Effect.sync(() => console.log(last.error())))
      )
      yield* Effect.sleep("500 millis")
      last.child.kill("SIGKILL")
      expectComplete(r, STREAMS, PER, "k")
      // the bus holds each event once (the duplicate window dropped the republished ones)
      expect(yield* messagesIn(server.url, stream)).toBe(STREAMS * PER)
    }).pipe(Effect.scoped), 120_000)
})

describe.skipIf(binary === undefined)("forwarder on a 3-node JetStream cluster", () => {
  it.live("the stream leader killed mid-forward and the consumer leader killed mid-consume: nothing lost, nothing twice", () =>
    Effect.gen(function*() {
      const cluster = yield* NatsServer.cluster({ binary: binary! })
      const stream = Fixture.unique("CLU")
      const STREAMS = 30
      const connection = Nats.layer({ servers: cluster.urls, reconnectTimeWait: "100 millis" })
      const busLayer = Nats.layerBus({ stream, prefix: stream, replicas: 3, publishTimeout: "2 seconds" }).pipe(
        Layer.provide(connection)
      )
      const nodeOf = (name: string | undefined) => cluster.nodes.find((n) => n.name === name)
      const leaders = Effect.promise(async () => {
        const nc = await connect({ servers: [...cluster.urls] })
        try {
          const jsm = await jetstreamManager(nc)
          const s = await jsm.streams.info(stream)
          const c = await jsm.consumers.info(stream, "checker").catch((e) => {
            if (e instanceof JetStreamApiError) return undefined
            throw e
          })
          return { stream: s.cluster?.leader, consumer: c?.cluster?.leader }
        } finally {
          await nc.close()
        }
      }).pipe(Effect.retry(Schedule.spaced("500 millis").pipe(Schedule.upTo("20 seconds"))))

      const r = recorder()
      const handledAt: Array<number> = []
      // appends go on (a round: one event to each stream, every 50 ms) until both failovers are over
      let rounds = 0
      let stop = false
      const appender = Effect.gen(function*() {
        const store = yield* EventStore.EventStore
        while (!stop) {
          rounds++
          for (let s = 0; s < STREAMS; s++) {
            yield* store.append(`c-${s}`, [{ type: "Deposited", payload: { v: rounds } }], { streamType: "Account" })
          }
          yield* Effect.sleep("50 millis")
        }
      })
      const live = Layer.mergeAll(EventStore.layerMemory, Projection.layerMemory, busLayer)
      yield* Effect.gen(function*() {
        const bus = yield* Bus.EventBus
        yield* bus.consume({ name: "checker" }, (e) => Effect.zipRight(r.handler(e), Effect.sync(() => handledAt.push(Date.now()))))
        yield* Projection.start([Bus.forwarder()], { batchSize: 50 })
        const appending = yield* Effect.fork(appender)

        yield* eventually(() => r.handled.length >= 200, 30_000, "200 deliveries")
        const first = yield* leaders
        const streamLeader = nodeOf(first.stream)!
        const killedAt = Date.now()
        yield* streamLeader.kill
        yield* eventually(() => handledAt.some((t) => t > killedAt + 100), 60_000, "deliveries after the stream leader died")
        const resumed = handledAt.find((t) => t > killedAt + 100)! - killedAt
        yield* streamLeader.start

        yield* eventually(() => r.handled.length >= 700, 60_000, "700 deliveries")
        const second = yield* leaders
        const consumerLeader = nodeOf(second.consumer)!
        const killedAt2 = Date.now()
        yield* consumerLeader.kill
        yield* eventually(() => handledAt.some((t) => t > killedAt2 + 100), 60_000, "deliveries after the consumer leader died")
        const resumed2 = handledAt.find((t) => t > killedAt2 + 100)! - killedAt2
        yield* consumerLeader.start

        yield* Effect.sleep("1 second")
        stop = true
        yield* Fiber.join(appending)
        yield* eventually(() => r.handled.length >= STREAMS * rounds, 90_000, "every event")
        yield* Effect.sleep("1 second")
        expectComplete(r, STREAMS, rounds, "c")
        console.log(
          `cluster failover: deliveries resumed ${resumed} ms after the stream leader (${first.stream}) was killed, ` +
            `${resumed2} ms after the consumer leader (${second.consumer}) was killed`
        )
      }).pipe(Effect.scoped, Effect.provide(live))
    }).pipe(Effect.scoped), 180_000)
})
