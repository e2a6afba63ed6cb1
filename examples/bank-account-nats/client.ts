/**
 * A client process of the bank: sends commands and a query over NATS (a typed client derived from `BankApi`, no
 * code generation) and follows the events the server's forwarder publishes to JetStream with a durable consumer.
 * Shows a typed domain error (`InsufficientFunds`), a command refused for lack of a role (`Unauthorized`) and a
 * payload refused before it is sent (`ValidationError`). Ends once it has seen every event of its accounts.
 *
 *   tsx --conditions=@effect-eventstore/source examples/bank-account-nats/client.ts
 */
import { NodeRuntime } from "@effect/platform-node"
import { Bus } from "effect-eventstore"
import * as Cqrs from "effect-eventstore/Cqrs"
import * as Nats from "effect-eventstore/Nats"
import * as Console from "effect/Console"
import * as Deferred from "effect/Deferred"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import { AccountEvents, cents, formatCents } from "../bank-account/Account.js"
import { BankApi, busPrefix, busStream, natsUrl } from "./Api.js"

const teller: Cqrs.Principal = { id: "grace", roles: ["teller"] }

const program = Effect.gen(function*() {
  const bank = yield* Cqrs.client(BankApi, { timeout: "5 seconds" })
  const bus = yield* Bus.EventBus
  const run = Date.now().toString(36)
  const ada = `ada-${run}`
  const alan = `alan-${run}`

  // Follow the accounts' events: a durable consumer resumes where its last run stopped, so it shows this run's events
  // (each account's in order) as the forwarder publishes them.
  const lastVersion = new Map<string, number>()
  const expected = new Map<string, number>()
  const allSeen = yield* Deferred.make<void>()
  const check = () => {
    if ([...expected].every(([id, v]) => (lastVersion.get(id) ?? 0) >= v)) Deferred.unsafeDone(allSeen, Effect.void)
  }
  const print = Bus.handlers(AccountEvents, {
      AccountOpened: (e) => Console.log(`  event  ${e.streamId} v${e.version} AccountOpened for ${e.payload.holder} (${e.payload.currency})`),
      MoneyDeposited: (e) => Console.log(`  event  ${e.streamId} v${e.version} MoneyDeposited ${formatCents(e.payload.amount)}`),
      MoneyWithdrawn: (e) => Console.log(`  event  ${e.streamId} v${e.version} MoneyWithdrawn ${formatCents(e.payload.amount)}`),
    AccountClosed: (e) => Console.log(`  event  ${e.streamId} v${e.version} AccountClosed`)
  })
  yield* bus.consume({ name: "bank-example-client", filter: { streamTypes: ["Account"] } }, (envelope, delivery) =>
    Effect.zipRight(
      print(envelope, delivery),
      Effect.sync(() => {
        lastVersion.set(envelope.streamId, Math.max(lastVersion.get(envelope.streamId) ?? 0, envelope.version))
        check()
      })
    ))

  const reply = (label: string, r: { readonly version: number; readonly balance: number }) =>
    Console.log(`${label.padEnd(40)} → v${r.version}, balance ${formatCents(r.balance)}`)

  yield* reply(`open ${ada}`, yield* bank.OpenAccount({ accountId: ada, holder: "Ada", currency: "EUR" }))
  yield* reply(`open ${alan}`, yield* bank.OpenAccount({ accountId: alan, holder: "Alan", currency: "GBP" }))
  yield* reply("deposit 250.00 to ada", yield* bank.Deposit({ accountId: ada, amount: cents(250_00) }))
  yield* reply("deposit 40.00 to alan", yield* bank.Deposit({ accountId: alan, amount: cents(40_00) }))
  yield* reply("withdraw 75.00 from ada (teller)", yield* bank.Withdraw({ accountId: ada, amount: cents(75_00) }, { principal: teller }))

  const overdraft = yield* Effect.flip(bank.Withdraw({ accountId: alan, amount: cents(100_00) }, { principal: teller }))
  yield* Console.log(`${"withdraw 100.00 from alan (teller)".padEnd(40)} → ${overdraft._tag}` +
    (overdraft._tag === "InsufficientFunds" ? ` (balance ${formatCents(overdraft.balance)})` : ""))
  const anonymous = yield* Effect.flip(bank.Withdraw({ accountId: ada, amount: cents(1_00) }))
  yield* Console.log(`${"withdraw 1.00 from ada (no principal)".padEnd(40)} → ${anonymous._tag}`)
  const invalid = yield* Effect.flip(bank.Deposit({ accountId: ada, amount: -5 as never }))
  yield* Console.log(`${"deposit -0.05 to ada".padEnd(40)} → ${invalid._tag} (not sent)`)

  const balance = yield* bank.Balance({ accountId: ada })
  yield* Console.log(`${"balance of ada (query)".padEnd(40)} → ${balance.status}, ${formatCents(balance.balance)} ${balance.currency}, v${balance.version}`)

  expected.set(`Account-${ada}`, 3)
  expected.set(`Account-${alan}`, 2)
  check()
  yield* Console.log("waiting for the events on the bus …")
  yield* Deferred.await(allSeen).pipe(Effect.timeout("30 seconds"))
  yield* Console.log("every event of this run arrived, in order per account")
})

const Live = Nats.layerBus({ stream: busStream, prefix: busPrefix }).pipe(
  Layer.provideMerge(Nats.layer({ servers: natsUrl, name: "bank-client" }))
)

program.pipe(Effect.scoped, Effect.provide(Live), NodeRuntime.runMain)
