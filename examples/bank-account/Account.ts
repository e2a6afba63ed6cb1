/**
 * The bank account domain: stream, events, state and fold, commands and decisions. Pure: nothing here knows
 * about SQL or any other infrastructure. Money is integer minor units (cents), never floats.
 */
import { Aggregate, Event } from "effect-eventstore"
import * as Context from "effect/Context"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Schema from "effect/Schema"

// --- money -----------------------------------------------------------------------------------------------------
export const Cents = Schema.Int.pipe(Schema.positive(), Schema.brand("Cents"))
export type Cents = typeof Cents.Type
export const cents = (n: number): Cents => Cents.make(n)
export const formatCents = (n: number) => `${n < 0 ? "-" : ""}${Math.floor(Math.abs(n) / 100)}.${String(Math.abs(n) % 100).padStart(2, "0")}`

/** An ISO 4217 currency code. */
export const Currency = Schema.String.pipe(Schema.pattern(/^[A-Z]{3}$/))

/** What accounts opened before version 2 of `AccountOpened` (and of the state) are held in. */
const defaultCurrency = "EUR"

// --- events ----------------------------------------------------------------------------------------------------
/**
 * Version 2: the account's `owner` is now its `holder`, and the account has a `currency`. Version 1 payloads were
 * `{ owner }`; the upcaster lifts them (the store keeps them as they were written).
 */
export const AccountOpened = Schema.TaggedStruct("AccountOpened", {
  holder: Schema.NonEmptyTrimmedString,
  currency: Currency
})
export const MoneyDeposited = Schema.TaggedStruct("MoneyDeposited", { amount: Cents })
export const MoneyWithdrawn = Schema.TaggedStruct("MoneyWithdrawn", { amount: Cents })
export const AccountClosed = Schema.TaggedStruct("AccountClosed", {})

const upcastAccountOpened = (payload: unknown, fromVersion: number): unknown => {
  if (fromVersion !== 1) throw new Error(`no upcaster from AccountOpened version ${fromVersion}`)
  const { owner } = payload as { readonly owner: unknown }
  return { holder: owner, currency: defaultCurrency }
}

export const AccountEvents = Event.registry([
  Event.versioned(AccountOpened, 2, upcastAccountOpened),
  MoneyDeposited,
  MoneyWithdrawn,
  AccountClosed
])
export type AccountEvent = Event.Registry.Type<typeof AccountEvents>

// --- state and fold --------------------------------------------------------------------------------------------
export interface AccountState {
  readonly status: "new" | "open" | "closed"
  readonly holder: string
  readonly currency: string
  readonly balance: number
}

export const initialState: AccountState = { status: "new", holder: "", currency: defaultCurrency, balance: 0 }

/**
 * How the state is stored in snapshots: version 2 (with `AccountOpened` version 2). Version 1 snapshots were
 * `{ status, owner, balance }`; `upcastAccountState` lifts them, so loads keep starting from them.
 */
export const AccountStateSchema = Schema.Struct({
  status: Schema.Literal("new", "open", "closed"),
  holder: Schema.String,
  currency: Schema.String,
  balance: Schema.Int
})

const upcastAccountState = (state: unknown, fromVersion: number): unknown => {
  if (fromVersion !== 1) throw new Error(`no upcaster from account state version ${fromVersion}`)
  const { owner, ...rest } = state as { readonly owner: unknown }
  return { ...rest, holder: owner, currency: defaultCurrency }
}

export const evolve = (state: AccountState, event: AccountEvent): AccountState => {
  switch (event._tag) {
    case "AccountOpened":
      return { status: "open", holder: event.holder, currency: event.currency, balance: 0 }
    case "MoneyDeposited":
      return { ...state, balance: state.balance + event.amount }
    case "MoneyWithdrawn":
      return { ...state, balance: state.balance - event.amount }
    case "AccountClosed":
      return { ...state, status: "closed" }
  }
}

// --- commands and errors ---------------------------------------------------------------------------------------
export const OpenAccount = Schema.TaggedStruct("OpenAccount", {
  holder: Schema.NonEmptyTrimmedString,
  currency: Schema.optionalWith(Currency, { default: () => defaultCurrency })
})
export const Deposit = Schema.TaggedStruct("Deposit", { amount: Cents })
export const Withdraw = Schema.TaggedStruct("Withdraw", { amount: Cents })
export const CloseAccount = Schema.TaggedStruct("CloseAccount", {})
export const AccountCommand = Schema.Union(OpenAccount, Deposit, Withdraw, CloseAccount)
export type AccountCommand = typeof AccountCommand.Type

export class AccountAlreadyOpened extends Schema.TaggedError<AccountAlreadyOpened>()("AccountAlreadyOpened", {
  holder: Schema.String,
  currency: Schema.String
}) {}
export class AccountNotOpen extends Schema.TaggedError<AccountNotOpen>()("AccountNotOpen", {
  status: Schema.Literal("new", "closed")
}) {}
export class InsufficientFunds extends Schema.TaggedError<InsufficientFunds>()("InsufficientFunds", {
  balance: Schema.Number,
  requested: Schema.Number
}) {}
export class BalanceNotZero extends Schema.TaggedError<BalanceNotZero>()("BalanceNotZero", {
  balance: Schema.Number
}) {}
export type AccountError = AccountAlreadyOpened | AccountNotOpen | InsufficientFunds | BalanceNotZero

/**
 * Large deposits are reviewed by a fraud check before they are accepted: a service `decide` depends on (its `R`),
 * provided as a layer like any other.
 */
export class FraudCheck extends Context.Tag("bank-account/FraudCheck")<FraudCheck, {
  readonly review: (amount: Cents) => Effect.Effect<void>
}>() {}

export const FraudCheckNoop = Layer.succeed(FraudCheck, { review: () => Effect.void })

// --- decide ----------------------------------------------------------------------------------------------------
const requireOpen = (state: AccountState) =>
  state.status === "open" ? Effect.void : Effect.fail(new AccountNotOpen({ status: state.status }))

export const decide = (
  command: AccountCommand,
  state: AccountState
): Effect.Effect<ReadonlyArray<AccountEvent>, AccountError, FraudCheck> => {
  switch (command._tag) {
    case "OpenAccount":
      if (state.status === "new") {
        return Effect.succeed([AccountOpened.make({ holder: command.holder, currency: command.currency })])
      }
      // Opening again for the same holder and currency is a retry of the same intent: nothing to do.
      return state.holder === command.holder && state.currency === command.currency
        ? Effect.succeed([])
        : Effect.fail(new AccountAlreadyOpened({ holder: state.holder, currency: state.currency }))
    case "Deposit":
      return requireOpen(state).pipe(
        Effect.zipRight(Effect.flatMap(FraudCheck, (check) => check.review(command.amount))),
        Effect.as([MoneyDeposited.make({ amount: command.amount })])
      )
    case "Withdraw":
      return Effect.zipRight(
        requireOpen(state),
        command.amount > state.balance
          ? Effect.fail(new InsufficientFunds({ balance: state.balance, requested: command.amount }))
          : Effect.succeed([MoneyWithdrawn.make({ amount: command.amount })])
      )
    case "CloseAccount":
      if (state.status === "closed") return Effect.succeed([])
      return Effect.zipRight(
        requireOpen(state),
        state.balance !== 0
          ? Effect.fail(new BalanceNotZero({ balance: state.balance }))
          : Effect.succeed([AccountClosed.make({})])
      )
  }
}

// --- the aggregate ---------------------------------------------------------------------------------------------
export const Account = Aggregate.make({
  name: "Account",
  events: AccountEvents,
  decider: { initialState, decide, evolve },
  // a snapshot every 100 events; loads start from the latest one
  snapshots: { schema: AccountStateSchema, version: 2, upcast: upcastAccountState, every: 100 },
  analytics: true
})
