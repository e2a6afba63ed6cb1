/**
 * Command round trips over NATS request/reply: a `Cqrs` command (the client's encoding and principal header; the
 * server's headers, correlation id, validation, role check, log annotations, defect recovery and reply encoding; the
 * client's reply decoding) against raw @nats-io doing the same JSON work: the raw client `JSON.stringify`s the
 * payload, requests and `JSON.parse`s the reply; the raw server `JSON.parse`s the payload, updates the same in-memory balance, builds the
 * same `{"_tag":"Success","value":…}` reply and `JSON.stringify`s it. Both use the same two connections (a server's
 * and a client's) and run sequential requests, in interleaved rounds.
 *
 * The p99s are mostly young-generation GC pauses (1–3 ms here): client and server together, the library allocates
 * about 36 KB per round trip against raw's 16 KB (of which the NATS client's own request bookkeeping is most), so a
 * round of the library meets more of them.
 */
import * as JetStream from "@nats-io/jetstream"
import * as Transport from "@nats-io/transport-node"
import * as Cqrs from "effect-eventstore/Cqrs"
import * as Nats from "effect-eventstore/Nats"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Layer from "effect/Layer"
import * as ManagedRuntime from "effect/ManagedRuntime"
import * as Schema from "effect/Schema"
import * as Scope from "effect/Scope"
import { median, percentile, WARMUP } from "./common.js"

const url = process.env.NATS_URL ?? "nats://127.0.0.1:4222"

const Deposit = Cqrs.command("Deposit", {
  payload: Schema.Struct({ accountId: Schema.String, amount: Schema.Int }),
  success: Schema.Struct({ balance: Schema.Number }),
  roles: ["teller"]
})
const Bank = Cqrs.group("bank", [Deposit])

const ACCOUNTS = 100

/** The latencies (ms) of `n` sequential deposits through the library, after `WARMUP` untimed ones. */
const libRound = (bank: Cqrs.Client<typeof Deposit>, n: number) =>
  Effect.gen(function*() {
    for (let i = 0; i < WARMUP; i++) yield* bank.Deposit({ accountId: `a${i % ACCOUNTS}`, amount: 1 })
    const latencies: Array<number> = []
    for (let i = 0; i < n; i++) {
      const start = performance.now()
      yield* bank.Deposit({ accountId: `a${i % ACCOUNTS}`, amount: 1 })
      latencies.push(performance.now() - start)
    }
    return latencies
  })

/** The same with raw request/reply. */
async function rawRound(nc: Transport.NatsConnection, subject: string, n: number) {
  const one = async (i: number) => {
    const msg = await nc.request(subject, JSON.stringify({ accountId: `a${i % ACCOUNTS}`, amount: 1 }), { timeout: 5000 })
    const reply = JSON.parse(msg.string()) as { _tag: string; value: { balance: number } }
    if (reply._tag !== "Success") throw new Error("raw deposit failed")
  }
  for (let i = 0; i < WARMUP; i++) await one(i)
  const latencies: Array<number> = []
  for (let i = 0; i < n; i++) {
    const start = performance.now()
    await one(i)
    latencies.push(performance.now() - start)
  }
  return latencies
}

/** `cqrs.roundtrip.p50` and `.p99`: medians over the rounds of each round's percentile. */
export async function cqrsBenches(
  emit: (bench: string, value: number, unit: string, baseline: number) => void,
  quick: boolean
): Promise<void> {
  const rounds = quick ? 5 : 10
  const perRound = quick ? 100 : 500
  const serverConnection = await Transport.connect({ servers: url })
  const clientConnection = await Transport.connect({ servers: url })
  const prefix = `bench_${process.pid}`

  // raw server
  const rawBalances = new Map<string, number>()
  const rawSubject = `${prefix}_raw.cmd.bank.Deposit`
  serverConnection.subscribe(rawSubject, {
    queue: "bank",
    callback: (_error, msg) => {
      const payload = JSON.parse(msg.string()) as { accountId: string; amount: number }
      const balance = (rawBalances.get(payload.accountId) ?? 0) + payload.amount
      rawBalances.set(payload.accountId, balance)
      msg.respond(JSON.stringify({ _tag: "Success", value: { balance } }))
    }
  })

  // library server and client, each on its connection
  const balances = new Map<string, number>()
  const handlers = Cqrs.handlers(Bank, {
    Deposit: ({ accountId, amount }) =>
      Effect.sync(() => {
        const balance = (balances.get(accountId) ?? 0) + amount
        balances.set(accountId, balance)
        return { balance }
      })
  })
  // the library on the raw benchmark's connections, so that both use the same sockets
  const on = async (connection: Transport.NatsConnection) =>
    Layer.succeed(Nats.NatsClient, {
      connection,
      jetstream: JetStream.jetstream(connection),
      manager: await JetStream.jetstreamManager(connection, { checkAPI: false })
    })
  const server = ManagedRuntime.make(await on(serverConnection))
  const client = ManagedRuntime.make(await on(clientConnection))
  const serving = Effect.runSync(Scope.make())
  try {
    await server.runPromise(Scope.extend(Cqrs.serve(handlers, { prefix, trustPrincipal: true }), serving))
    const bank = await client.runPromise(Cqrs.client(Bank, { prefix, principal: { id: "bench", roles: ["teller"] } }))
    await serverConnection.flush()

    // Both paths run hot before the rounds (a running service's steady state, not its first requests through
    // functions V8 has yet to optimize); each round then starts with WARMUP untimed requests.
    const warmup = 2000
    await client.runPromise(libRound(bank, warmup))
    await rawRound(clientConnection, rawSubject, warmup)

    const p50 = { lib: [] as Array<number>, raw: [] as Array<number> }
    const p99 = { lib: [] as Array<number>, raw: [] as Array<number> }
    for (let r = 0; r < rounds; r++) {
      const order = r % 2 === 0 ? (["lib", "raw"] as const) : (["raw", "lib"] as const)
      for (const who of order) {
        const latencies = who === "lib"
          ? await client.runPromise(libRound(bank, perRound))
          : await rawRound(clientConnection, rawSubject, perRound)
        p50[who].push(percentile(latencies, 0.5))
        p99[who].push(percentile(latencies, 0.99))
      }
    }
    emit("cqrs.roundtrip.p50", median(p50.lib), "ms", median(p50.raw))
    emit("cqrs.roundtrip.p99", median(p99.lib), "ms", median(p99.raw))
  } finally {
    await Effect.runPromise(Scope.close(serving, Exit.void))
    await client.dispose()
    await server.dispose()
    await clientConnection.drain()
    await serverConnection.drain()
  }
}
