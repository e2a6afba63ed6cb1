/**
 * The bank's read side: two projections of the account events into SQL tables, kept exactly once by the library
 * (each batch's statements and the checkpoint commit together). Their handlers only build statements; the library
 * runs them.
 */
import * as SqlClient from "@effect/sql/SqlClient"
import { Projection } from "effect-eventstore"
import * as DateTime from "effect/DateTime"
import * as Effect from "effect/Effect"
import { AccountEvents } from "./Account.js"

const create = (ddl: (sql: SqlClient.SqlClient) => Effect.Effect<unknown, unknown>) =>
  Effect.flatMap(SqlClient.SqlClient, (sql) => Effect.asVoid(ddl(sql)))

/**
 * One row per account: holder, currency, balance, status. The migrations are the table's history: the second and
 * third came with version 2 of `AccountOpened` (owner → holder, a currency) and run once on a database that had the
 * first; rows from before them hold EUR, as the event's upcaster says.
 */
export const AccountBalances = Projection.sql({
  name: "account-balances",
  events: AccountEvents,
  init: [
    create((sql) =>
      sql`CREATE TABLE account_balances (
        stream_id TEXT PRIMARY KEY, owner TEXT NOT NULL, balance INTEGER NOT NULL, status TEXT NOT NULL)`
    ),
    create((sql) => sql`ALTER TABLE account_balances RENAME COLUMN owner TO holder`),
    create((sql) => sql`ALTER TABLE account_balances ADD COLUMN currency TEXT NOT NULL DEFAULT 'EUR'`)
  ],
  reset: create((sql) => sql`DELETE FROM account_balances`),
  handlers: {
    AccountOpened: (e, sql) =>
      sql`INSERT INTO account_balances (stream_id, holder, currency, balance, status)
        VALUES (${e.streamId}, ${e.payload.holder}, ${e.payload.currency}, 0, 'open') ON CONFLICT (stream_id) DO NOTHING`,
    MoneyDeposited: (e, sql) =>
      sql`UPDATE account_balances SET balance = balance + ${e.payload.amount} WHERE stream_id = ${e.streamId}`,
    MoneyWithdrawn: (e, sql) =>
      sql`UPDATE account_balances SET balance = balance - ${e.payload.amount} WHERE stream_id = ${e.streamId}`,
    AccountClosed: (e, sql) => sql`UPDATE account_balances SET status = 'closed' WHERE stream_id = ${e.streamId}`
  }
})

const day = (e: { readonly recordedAt: DateTime.Utc }) => DateTime.formatIso(e.recordedAt).slice(0, 10)

/** Per day: how many deposits and withdrawals, and the money moved. */
export const TransactionsPerDay = Projection.sql({
  name: "transactions-per-day",
  events: AccountEvents,
  init: [create((sql) =>
    sql`CREATE TABLE transactions_per_day (
      day TEXT PRIMARY KEY, deposits INTEGER NOT NULL, withdrawals INTEGER NOT NULL, volume INTEGER NOT NULL)`
  )],
  reset: create((sql) => sql`DELETE FROM transactions_per_day`),
  handlers: {
    MoneyDeposited: (e, sql) =>
      sql`INSERT INTO transactions_per_day (day, deposits, withdrawals, volume) VALUES (${day(e)}, 1, 0, ${e.payload.amount})
        ON CONFLICT (day) DO UPDATE SET deposits = transactions_per_day.deposits + 1,
          volume = transactions_per_day.volume + excluded.volume`,
    MoneyWithdrawn: (e, sql) =>
      sql`INSERT INTO transactions_per_day (day, deposits, withdrawals, volume) VALUES (${day(e)}, 0, 1, ${e.payload.amount})
        ON CONFLICT (day) DO UPDATE SET withdrawals = transactions_per_day.withdrawals + 1,
          volume = transactions_per_day.volume + excluded.volume`
  }
})
