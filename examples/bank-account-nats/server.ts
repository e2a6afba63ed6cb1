/**
 * The bank's server process: the event store (an SQLite file), the Account aggregate behind the bank's commands and
 * queries over NATS request/reply (a queue group: start several servers and they share the load), and the forwarder
 * that publishes every committed event to JetStream. Runs until SIGINT/SIGTERM, then stops serving (requests in
 * flight finish), stops the forwarder after its batch and drains the NATS connection.
 *
 *   tsx --conditions=@effect-eventstore/source examples/bank-account-nats/server.ts
 */
import { NodeRuntime } from "@effect/platform-node"
import { Aggregate, Bus } from "effect-eventstore"
import * as Cqrs from "effect-eventstore/Cqrs"
import * as Nats from "effect-eventstore/Nats"
import * as Sqlite from "effect-eventstore/Sqlite"
import * as SqlProjection from "effect-eventstore/SqlProjection"
import * as Console from "effect/Console"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import { mkdirSync } from "node:fs"
import * as path from "node:path"
import {
  Account,
  AccountAlreadyOpened,
  AccountNotOpen,
  BalanceNotZero,
  CloseAccount,
  Deposit,
  FraudCheckNoop,
  InsufficientFunds,
  OpenAccount,
  Withdraw
} from "../bank-account/Account.js"
import { BankApi, busPrefix, busStream, natsUrl } from "./Api.js"

const dataDir = process.env.BANK_DATA_DIR ?? path.join(process.cwd(), "data")
const filename = path.join(dataDir, "bank-account-nats.db")

const receipt = (r: { readonly version: number; readonly state: { readonly balance: number } }) => ({
  version: r.version,
  balance: r.state.balance
})

/**
 * The errors a command answers with are the domain's (they cross the wire, typed); anything else — the store
 * failing, say — is the server's problem: a defect, which the client sees as an `InternalError`.
 */
const only = <const C extends ReadonlyArray<new(...args: any) => any>>(...classes: C) =>
<A, E, R>(effect: Effect.Effect<A, E, R>): Effect.Effect<A, InstanceType<C[number]>, R> =>
  Effect.catchAll(effect, (e) => classes.some((c) => e instanceof c) ? Effect.fail(e as InstanceType<C[number]>) : Effect.die(e))

const handlers = Cqrs.handlers(BankApi, {
  OpenAccount: ({ accountId, currency, holder }) =>
    Account.handle(accountId, OpenAccount.make({ holder, currency })).pipe(Effect.map(receipt), only(AccountAlreadyOpened)),
  Deposit: ({ accountId, amount }) =>
    Account.handle(accountId, Deposit.make({ amount })).pipe(Effect.map(receipt), only(AccountNotOpen)),
  Withdraw: ({ accountId, amount }) =>
    Account.handle(accountId, Withdraw.make({ amount })).pipe(Effect.map(receipt), only(AccountNotOpen, InsufficientFunds)),
  CloseAccount: ({ accountId }) =>
    Account.handle(accountId, CloseAccount.make({})).pipe(Effect.map(receipt), only(AccountNotOpen, BalanceNotZero)),
  Balance: ({ accountId }) =>
    Effect.map(Effect.orDie(Account.load(accountId)), (loaded) => ({ ...loaded.state, version: loaded.version }))
})

const Connection = Nats.layer({ servers: natsUrl, name: "bank-server" })
const Store = SqlProjection.layer.pipe(
  Layer.provideMerge(Layer.unwrapEffect(Effect.sync(() => {
    mkdirSync(dataDir, { recursive: true })
    return Sqlite.layer({ filename })
  })))
)
// The command server: its scope is the layer's, so it stops (draining) when the process is told to stop.
// `trustPrincipal`: the example's clients say who they are; on a real deployment only on an authenticated connection.
const Server = Layer.scopedDiscard(Cqrs.serve(handlers, { trustPrincipal: true }))
const Forwarder = Bus.layerForwarder().pipe(Layer.provide(Nats.layerBus({ stream: busStream, prefix: busPrefix })))

const Live = Layer.mergeAll(Server, Forwarder).pipe(
  Layer.provide(Aggregate.layer(Account)),
  Layer.provide(FraudCheckNoop),
  Layer.provideMerge(Store),
  Layer.provide(Connection)
)

Layer.launch(
  Live.pipe(Layer.tap(() => Console.log(`bank server: ready (${natsUrl}, ${path.relative(process.cwd(), filename)})`)))
).pipe(NodeRuntime.runMain)
