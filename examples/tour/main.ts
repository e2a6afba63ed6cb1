/**
 * The README's tour, runnable: `npx tsx --conditions=source examples/tour/main.ts`.
 */
import { Aggregate, Event } from "effect-eventstore"
import * as Sqlite from "effect-eventstore/Sqlite"
import { Effect, Schema } from "effect"
import * as os from "node:os"
import * as path from "node:path"

// events: Schema tagged structs; `_tag` is the event type
const Deposited = Schema.TaggedStruct("Deposited", { amount: Schema.Int.pipe(Schema.positive()) })
const Withdrawn = Schema.TaggedStruct("Withdrawn", { amount: Schema.Int.pipe(Schema.positive()) })
class Overdraft extends Schema.TaggedError<Overdraft>()("Overdraft", { balance: Schema.Int }) {}

type Command = { readonly _tag: "Deposit" | "Withdraw"; readonly amount: number }

const Account = Aggregate.make({
  name: "Account",
  events: Event.registry([Deposited, Withdrawn]),
  decider: {
    initialState: 0,
    decide: (command: Command, balance: number) =>
      command._tag === "Deposit"
        ? Effect.succeed([Deposited.make({ amount: command.amount })])
        : command.amount > balance
        ? Effect.fail(new Overdraft({ balance }))
        : Effect.succeed([Withdrawn.make({ amount: command.amount })]),
    evolve: (balance: number, event: typeof Deposited.Type | typeof Withdrawn.Type) =>
      event._tag === "Deposited" ? balance + event.amount : balance - event.amount
  }
})

const program = Effect.gen(function*() {
  yield* Account.handle("42", { _tag: "Deposit", amount: 100 }) // load → decide → append (expected v0)
  const { state, version } = yield* Account.handle("42", { _tag: "Withdraw", amount: 30 })
  console.log(state, version) // 70 2
  const refused = yield* Effect.flip(Account.handle("42", { _tag: "Withdraw", amount: 500 }))
  console.log(refused._tag, refused._tag === "Overdraft" ? refused.balance : "") // Overdraft 70
})

const filename = path.join(os.tmpdir(), `effect-eventstore-tour-${process.pid}.db`)
program.pipe(Effect.provide(Sqlite.layer({ filename })), Effect.runPromise)
