/**
 * The local nats-server: a real process on free ports, JetStream data that survives a clean stop and a kill, clear
 * errors for a missing binary and an early exit, and a 3-node cluster that elects a new stream leader when the old
 * one is killed and takes the node back when it starts again.
 *
 * Needs the nats-server binary. Outside CI a missing binary skips the tests with a one-line reason; with `CI=true`
 * they fail.
 */
import { describe, expect, it } from "@effect/vitest"
import { jetstream, jetstreamManager, StorageType } from "@nats-io/jetstream"
import { connect, type NatsConnection } from "@nats-io/transport-node"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Schedule from "effect/Schedule"
import { spawnSync } from "node:child_process"
import * as Fs from "node:fs"
import * as Net from "node:net"
import * as Path from "node:path"
import * as NatsServer from "effect-eventstore/NatsServer"

const inCI = !["", "0", "false"].includes((process.env.CI ?? "").toLowerCase())
const installed = ["/usr/sbin/nats-server", "/usr/local/bin/nats-server"].some((file) => Fs.existsSync(file)) ||
  spawnSync("nats-server", ["--version"]).status === 0
const skip = !installed && !inCI
if (skip) console.log("natsServer.test.ts skipped: nats-server is not installed (Debian: apt install nats-server)")

const unique = (label: string) => `${label}_${process.pid}_${Math.random().toString(36).slice(2, 8)}`

/** A connection that follows the servers through restarts, closed with the scope. */
const client = (servers: string | ReadonlyArray<string>) =>
  Effect.acquireRelease(
    Effect.tryPromise(() =>
      connect({
        servers: typeof servers === "string" ? [servers] : [...servers],
        timeout: 2000,
        maxReconnectAttempts: -1,
        reconnectTimeWait: 100
      })
    ),
    (nc) => Effect.promise(() => nc.close().catch(() => undefined))
  )

const addStream = (nc: NatsConnection, name: string, replicas: number) =>
  Effect.tryPromise(async () => {
    const jsm = await jetstreamManager(nc, { checkAPI: false })
    return jsm.streams.add({ name, subjects: [`${name}.>`], storage: StorageType.File, num_replicas: replicas })
  })

const publish = (nc: NatsConnection, subject: string, data: string) =>
  Effect.tryPromise(() => jetstream(nc).publish(subject, data, { timeout: 2000 }))

const messages = (nc: NatsConnection, stream: string) =>
  Effect.tryPromise(async () => {
    const jsm = await jetstreamManager(nc, { checkAPI: false })
    const { state } = await jsm.streams.info(stream)
    const out: Array<string> = []
    for (let seq = state.first_seq; seq <= state.last_seq && state.messages > 0; seq++) {
      const message = await jsm.streams.getMessage(stream, { seq })
      if (message !== null) out.push(message.string())
    }
    return out
  })

const streamInfo = (nc: NatsConnection, stream: string) =>
  Effect.tryPromise(async () => (await jetstreamManager(nc, { checkAPI: false })).streams.info(stream))

/** Retried until it succeeds: in a cluster that lost a node, requests fail until new leaders are elected. */
const eventually = <A, E, R>(effect: Effect.Effect<A, E, R>) =>
  effect.pipe(Effect.retry(Schedule.spaced("100 millis")), Effect.timeout("15 seconds"))

/** Whether something accepts TCP connections on the port. */
const listening = (port: number) =>
  Effect.async<boolean>((resume) => {
    const socket = Net.connect({ host: "127.0.0.1", port })
    socket.once("connect", () => {
      socket.destroy()
      resume(Effect.succeed(true))
    })
    socket.once("error", () => resume(Effect.succeed(false)))
  })

describe("NatsServer", () => {
  it.live("a missing binary is a NatsServerError that says what to do", () =>
    Effect.gen(function*() {
      for (const binary of ["/nonexistent/nats-server", "no-such-nats-server"]) {
        const error = yield* Effect.flip(Effect.scoped(NatsServer.make({ binary })))
        expect(error).toBeInstanceOf(NatsServer.NatsServerError)
        expect(error.operation).toBe("start")
        expect(error.reason).toContain("nats-server not found")
        expect(error.reason).toContain("apt install nats-server")
      }
    }))
})

describe.skipIf(skip)("NatsServer (with nats-server)", () => {
  it.live("JetStream data survives a clean stop, a kill and a restart on the same port", () =>
    Effect.gen(function*() {
      const server = yield* NatsServer.make()
      expect(server.port).not.toBe(4222)
      expect(server.url).toBe(`nats://127.0.0.1:${server.port}`)
      const stream = unique("SURVIVE")

      yield* Effect.scoped(Effect.gen(function*() {
        const nc = yield* client(server.url)
        yield* addStream(nc, stream, 1)
        yield* publish(nc, `${stream}.a`, "one")
      }))

      yield* server.kill
      expect(yield* listening(server.port)).toBe(false)
      yield* server.start
      yield* Effect.scoped(Effect.gen(function*() {
        const nc = yield* client(server.url)
        expect(yield* messages(nc, stream)).toEqual(["one"])
        yield* publish(nc, `${stream}.a`, "two")
      }))

      yield* server.stop
      expect(yield* listening(server.port)).toBe(false)
      yield* server.stop // stopping a stopped server does nothing
      yield* server.start
      yield* server.start // starting a running one neither
      yield* server.restart
      yield* Effect.scoped(Effect.gen(function*() {
        const nc = yield* client(server.url)
        expect(yield* messages(nc, stream)).toEqual(["one", "two"])
      }))
    }).pipe(Effect.scoped))

  it.live("closing the scope stops the server and removes its temporary directory", () =>
    Effect.gen(function*() {
      const server = yield* Effect.scoped(NatsServer.make())
      expect(yield* listening(server.port)).toBe(false)
      expect(Fs.existsSync(server.storeDir)).toBe(false)
      expect(Fs.existsSync(Path.dirname(server.logFile))).toBe(false)
    }))

  it.live("a server that exits before it is ready fails with the tail of its log", () =>
    Effect.gen(function*() {
      const first = yield* NatsServer.make()
      const error = yield* Effect.flip(Effect.scoped(NatsServer.make({ port: first.port })))
      expect(error.operation).toBe("start")
      expect(error.reason).toMatch(/exited \(code \d+\) before it was ready; log tail:/)
      expect(error.reason).toContain("address already in use")
      // The first server is untouched.
      expect(yield* listening(first.port)).toBe(true)
    }).pipe(Effect.scoped))

  it.live("a 3-node cluster elects a new stream leader when the leader is killed and takes it back", () =>
    Effect.gen(function*() {
      const cluster = yield* NatsServer.cluster()
      expect(cluster.nodes.map((node) => node.name)).toEqual(["n1", "n2", "n3"])
      expect(cluster.urls).toHaveLength(3)
      const nc = yield* client(cluster.urls)
      const stream = unique("R3")
      const info = yield* eventually(addStream(nc, stream, 3))
      expect(info.config.num_replicas).toBe(3)
      yield* publish(nc, `${stream}.a`, "one")

      const leaderName = (yield* streamInfo(nc, stream)).cluster?.leader
      const leader = cluster.nodes.find((node) => node.name === leaderName)
      expect(leader).toBeDefined()
      yield* leader!.kill

      // A publish succeeds again once the others elect a leader (and the client has moved off a dead node); the
      // JetStream API answers again once there is a meta leader (the killed node may have been that too).
      yield* eventually(publish(nc, `${stream}.a`, "two"))
      const after = yield* eventually(streamInfo(nc, stream))
      expect(after.cluster?.leader).toBeDefined()
      expect(after.cluster?.leader).not.toBe(leaderName)
      expect(yield* eventually(messages(nc, stream))).toEqual(["one", "two"])

      // The killed node comes back on its ports and catches up as a current replica.
      yield* leader!.start
      const replica = yield* streamInfo(nc, stream).pipe(
        Effect.map((i) => i.cluster?.replicas?.find((peer) => peer.name === leaderName)),
        Effect.filterOrFail((peer) => peer !== undefined && peer.current && !peer.offline),
        eventually
      )
      expect(replica).toMatchObject({ name: leaderName, current: true })
      yield* Effect.scoped(Effect.gen(function*() {
        const direct = yield* client(leader!.url)
        expect(yield* messages(direct, stream)).toEqual(["one", "two"])
      }))
    }).pipe(Effect.scoped, Effect.timeout(Duration.seconds(50))))
})
