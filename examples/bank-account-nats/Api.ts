/**
 * The bank's commands and queries as the outside world sees them: names, payloads, replies and the typed errors that
 * cross the wire (the domain's own `Schema.TaggedError`s). Shared by the server and every client; no code generation.
 */
import * as Cqrs from "effect-eventstore/Cqrs"
import * as Schema from "effect/Schema"
import { AccountAlreadyOpened, AccountNotOpen, BalanceNotZero, Cents, Currency, InsufficientFunds } from "../bank-account/Account.js"

const AccountId = Schema.String.pipe(Schema.pattern(/^[a-z0-9-]{1,64}$/))
const Receipt = Schema.Struct({ version: Schema.Int, balance: Schema.Int })

export const OpenAccount = Cqrs.command("OpenAccount", {
  payload: Schema.Struct({ accountId: AccountId, holder: Schema.NonEmptyTrimmedString, currency: Currency }),
  success: Receipt,
  failure: AccountAlreadyOpened
})

export const Deposit = Cqrs.command("Deposit", {
  payload: Schema.Struct({ accountId: AccountId, amount: Cents }),
  success: Receipt,
  failure: AccountNotOpen
})

/** Only tellers withdraw. */
export const Withdraw = Cqrs.command("Withdraw", {
  payload: Schema.Struct({ accountId: AccountId, amount: Cents }),
  success: Receipt,
  failure: Schema.Union(AccountNotOpen, InsufficientFunds),
  roles: ["teller"]
})

export const CloseAccount = Cqrs.command("CloseAccount", {
  payload: Schema.Struct({ accountId: AccountId }),
  success: Receipt,
  failure: Schema.Union(AccountNotOpen, BalanceNotZero)
})

export const Balance = Cqrs.query("Balance", {
  payload: Schema.Struct({ accountId: AccountId }),
  success: Schema.Struct({
    status: Schema.Literal("new", "open", "closed"),
    holder: Schema.String,
    currency: Schema.String,
    balance: Schema.Int,
    version: Schema.Int
  })
})

export const BankApi = Cqrs.group("bank", [OpenAccount, Deposit, Withdraw, CloseAccount, Balance])

/** Where the example's events go on JetStream, and where the commands are served. */
export const natsUrl = process.env.NATS_URL ?? "nats://127.0.0.1:4222"
export const busStream = "BANK_EXAMPLE"
export const busPrefix = "bank-example"
