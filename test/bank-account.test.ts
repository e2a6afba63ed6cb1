import { describe, expect, it } from "@effect/vitest"
import { Testing } from "effect-eventstore"
import * as Effect from "effect/Effect"
import * as FastCheck from "effect/FastCheck"
import {
  Account,
  AccountAlreadyOpened,
  AccountClosed,
  AccountCommand,
  AccountNotOpen,
  AccountOpened,
  BalanceNotZero,
  CloseAccount,
  cents,
  Deposit,
  FraudCheck,
  FraudCheckNoop,
  InsufficientFunds,
  MoneyDeposited,
  MoneyWithdrawn,
  OpenAccount,
  Withdraw
} from "../examples/bank-account/Account.js"

const opened = AccountOpened.make({ holder: "ada", currency: "EUR" })
const deposited = (n: number) => MoneyDeposited.make({ amount: cents(n) })

describe("bank account decider", () => {
  const spec = Testing.spec(Account)
  const check = <E>(effect: Effect.Effect<void, E, FraudCheck>) => Effect.provide(effect, FraudCheckNoop)

  it.effect("opens a new account (in EUR unless the command names a currency)", () =>
    check(Effect.all([
      spec.given([]).when(OpenAccount.make({ holder: "ada" })).then([opened]),
      spec.given([]).when(OpenAccount.make({ holder: "ada", currency: "CHF" }))
        .then([AccountOpened.make({ holder: "ada", currency: "CHF" })])
    ])))

  it.effect("opening again for the same holder and currency is a no-op; otherwise an error", () =>
    check(Effect.all([
      spec.given([opened]).when(OpenAccount.make({ holder: "ada" })).then([]),
      spec.given([opened]).when(OpenAccount.make({ holder: "bob" }))
        .thenFails(new AccountAlreadyOpened({ holder: "ada", currency: "EUR" })),
      spec.given([opened]).when(OpenAccount.make({ holder: "ada", currency: "USD" }))
        .thenFails(new AccountAlreadyOpened({ holder: "ada", currency: "EUR" }))
    ])))

  it.effect("deposits need an open account", () =>
    check(Effect.all([
      spec.given([]).when(Deposit.make({ amount: cents(5) })).thenFails(new AccountNotOpen({ status: "new" })),
      spec.given([opened]).when(Deposit.make({ amount: cents(5) })).then([deposited(5)])
    ])))

  it.effect("withdrawing more than the balance fails with the balance and the amount", () =>
    check(Effect.all([
      spec.given([opened, deposited(100)]).when(Withdraw.make({ amount: cents(150) }))
        .thenFails(new InsufficientFunds({ balance: 100, requested: 150 })),
      spec.given([opened, deposited(100)]).when(Withdraw.make({ amount: cents(100) }))
        .then([MoneyWithdrawn.make({ amount: cents(100) })])
    ])))

  it.effect("closing needs a zero balance; closing twice is a no-op", () =>
    check(Effect.all([
      spec.given([opened, deposited(1)]).when(CloseAccount.make({})).thenFails(new BalanceNotZero({ balance: 1 })),
      spec.given([opened]).when(CloseAccount.make({})).then([AccountClosed.make({})]),
      spec.given([opened, AccountClosed.make({})]).when(CloseAccount.make({})).then([]),
      spec.given([opened, AccountClosed.make({})]).when(Deposit.make({ amount: cents(1) }))
        .thenFails(new AccountNotOpen({ status: "closed" }))
    ])))

  it.effect("a spec that does not hold fails with SpecFailure", () =>
    Effect.gen(function*() {
      const wrong = yield* Effect.flip(check(spec.given([opened]).when(Deposit.make({ amount: cents(5) })).then([deposited(6)])))
      expect(wrong._tag).toBe("SpecFailure")
      const notFailing = yield* Effect.flip(
        check(spec.given([opened]).when(Deposit.make({ amount: cents(5) })).thenFails(new AccountNotOpen({ status: "new" })))
      )
      expect(notFailing._tag).toBe("SpecFailure")
    }))

  // Any sequence of commands, accepted or rejected, leaves a balance that is never negative and equals the sum of
  // deposits minus withdrawals.
  it.effect.prop("the balance never goes negative", [Testing.commandSequences(AccountCommand, { maxLength: 60 })], ([commands]) =>
    Effect.gen(function*() {
      const { events, states } = yield* Testing.replay(Account, [OpenAccount.make({ holder: "ada" }), ...commands])
      for (const state of states) expect(state.balance).toBeGreaterThanOrEqual(0)
      const sum = events.reduce((acc, e) =>
        e._tag === "MoneyDeposited" ? acc + e.amount : e._tag === "MoneyWithdrawn" ? acc - e.amount : acc, 0)
      expect(states[states.length - 1]!.balance).toBe(sum)
    }).pipe(Effect.provide(FraudCheckNoop)))

  // The store-backed handler reaches the same state as the pure replay for the same commands.
  it.effect.prop(
    "Aggregate.handle on a store agrees with the pure decider",
    [Testing.commandSequences(AccountCommand, { maxLength: 25 })],
    ([commands]) =>
      Effect.gen(function*() {
        const id = crypto.randomUUID()
        const all = [OpenAccount.make({ holder: "ada" }), ...commands]
        const replayed = yield* Testing.replay(Account, all)
        for (const command of all) yield* Effect.either(Account.handle(id, command))
        const loaded = yield* Account.load(id)
        expect(loaded.state).toEqual(replayed.states[replayed.states.length - 1])
        expect(loaded.version).toBe(replayed.events.length)
      }).pipe(Effect.provide(Testing.layer(Account)), Effect.provide(FraudCheckNoop)),
    { fastCheck: { numRuns: 50 } }
  )

  it("command arbitraries come from the command Schema", () => {
    const samples = FastCheck.sample(Testing.arbitrary(AccountCommand), 50)
    expect(samples.every((c) => ["OpenAccount", "Deposit", "Withdraw", "CloseAccount"].includes(c._tag))).toBe(true)
  })
})
