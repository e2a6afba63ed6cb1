/**
 * The README's tour, runnable: `npm run example:tour`.
 */
import { Aggregate, Event } from "effect-eventstore"
import * as Sqlite from "effect-eventstore/Sqlite"
import { Effect, Either, Layer, Schema } from "effect"
import * as os from "node:os"
import * as path from "node:path"

// events: Schema tagged structs; `_tag` is the event type
const Deposited = Schema.TaggedStruct("Deposited", { amount: Schema.Int.pipe(Schema.positive()) })
const Withdrawn = Schema.TaggedStruct("Withdrawn", { amount: Schema.Int.pipe(Schema.positive()) })
class Overdraft extends Schema.TaggedError<Overdraft>()("Overdraft", { balance: Schema.Int }) {}

type Command = { readonly _tag: "Deposit" | "Withdraw"; readonly amount: number }

// a pure decider: decide returns the events, or Either.left with a typed domain error
const Account = Aggregate.make({
  name: "Account",
  events: Event.registry([Deposited, Withdrawn]),
  decider: {
    initialState: 0,
    decide: (command: Command, balance: number) =>
      command._tag === "Deposit"
        ? Either.right([Deposited.make({ amount: command.amount })])
        : command.amount > balance
        ? Either.left(new Overdraft({ balance }))
        : Either.right([Withdrawn.make({ amount: command.amount })]),
    evolve: (balance: number, event: typeof Deposited.Type | typeof Withdrawn.Type) =>
      event._tag === "Deposited" ? balance + event.amount : balance - event.amount
  }
})

const program = Effect.gen(function*() {
  const id = crypto.randomUUID() // a new account each run
  yield* Account.handle(id, { _tag: "Deposit", amount: 100 }) // load → decide → append (expected v0)
  const { state, version } = yield* Account.handle(id, { _tag: "Withdraw", amount: 30 })
  console.log(state, version) // 70 2
  const refused = yield* Effect.flip(Account.handle(id, { _tag: "Withdraw", amount: 500 }))
  console.log(refused._tag, refused._tag === "Overdraft" ? refused.balance : "") // Overdraft 70
})

const filename = path.join(os.tmpdir(), `effect-eventstore-tour-${process.pid}.db`)
// the aggregate's handler needs an EventStore: here, one SQLite file
const AppLive = Aggregate.layer(Account).pipe(Layer.provide(Sqlite.layer({ filename })))
program.pipe(Effect.provide(AppLive), Effect.runPromise)
