/**
 * The bank-account example on an embedded SQLite file: opens accounts, deposits, a concurrent deposit resolved by
 * retry, an overdraft rejected with its typed error, the account's history read back from the store, and two read
 * models (account balances, transactions per day) kept by projections and queried once they have caught up.
 *
 *   npm start          an SQLite file in ./data (no server; whatever DATABASE_URL says)
 *   npm run start:pg   PostgreSQL at DATABASE_URL (default postgres://postgres@127.0.0.1:5432/postgres), schema bank_account
 */
import { NodeRuntime } from "@effect/platform-node"
import * as SqlClient from "@effect/sql/SqlClient"
import { Aggregate, Analytics, EventStore, Projection, Snapshot } from "effect-eventstore"
import * as Postgres from "effect-eventstore/Postgres"
import * as Sqlite from "effect-eventstore/Sqlite"
import * as SqlProjection from "effect-eventstore/SqlProjection"
import * as Config from "effect/Config"
import * as Console from "effect/Console"
import * as DateTime from "effect/DateTime"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Option from "effect/Option"
import * as Redacted from "effect/Redacted"
import * as Schedule from "effect/Schedule"
import * as Stream from "effect/Stream"
import { mkdirSync } from "node:fs"
import * as path from "node:path"
import { Account, cents, Deposit, FraudCheck, formatCents, OpenAccount, Withdraw } from "./Account.js"
import { AccountBalances, TransactionsPerDay } from "./ReadModels.js"

const postgres = process.argv.includes("--postgres")
const dataDir = process.env.BANK_DATA_DIR ?? path.join(process.cwd(), "data")
const filename = path.join(dataDir, "bank-account.db")

// Large deposits wait for a (simulated) fraud review: long enough for two concurrent deposits to overlap.
const FraudCheckLive = Layer.succeed(FraudCheck, {
  review: (amount) => amount >= 100_000 ? Effect.sleep("20 millis") : Effect.void
})

const program = Effect.gen(function*() {
  yield* Console.log(
    postgres
      ? "effect-eventstore · bank account on PostgreSQL (schema bank_account)"
      : `effect-eventstore · bank account on SQLite (${path.relative(process.cwd(), filename)}, durable)`
  )
  // A fresh account id per run: the database file keeps the history of earlier runs.
  const id = `acc-${Date.now().toString(36)}`
  const show = (label: string, r: { version: number; state: { balance: number } }) =>
    Console.log(`${label.padEnd(44)} → v${r.version}, balance ${formatCents(r.state.balance)}`)

  yield* show(`open ${id} for Ada`, yield* Account.handle(id, OpenAccount.make({ holder: "Ada" })))
  yield* show("deposit 100.00", yield* Account.handle(id, Deposit.make({ amount: cents(100_00) })))

  // Two tellers deposit at the same moment: both load version 2, one append wins, the other gets a
  // ConcurrencyError, reloads, decides again and succeeds.
  const [a, b] = yield* Effect.all([
    Account.handle(id, Deposit.make({ amount: cents(2_500_00) })),
    Account.handle(id, Deposit.make({ amount: cents(1_000_00) }))
  ], { concurrency: "unbounded" })
  yield* Console.log(
    `${"concurrent deposits 2500.00 ‖ 1000.00".padEnd(44)} → v${Math.max(a.version, b.version)}, ` +
      `balance ${formatCents(Math.max(a.version, b.version) === a.version ? a.state.balance : b.state.balance)}, ` +
      `${a.retries + b.retries} retry`
  )

  const overdraft = yield* Account.handle(id, Withdraw.make({ amount: cents(5_000_00) })).pipe(Effect.flip)
  yield* Console.log(`${"withdraw 5000.00".padEnd(44)} → rejected: ${overdraft._tag}` +
    (overdraft._tag === "InsufficientFunds"
      ? ` (balance ${formatCents(overdraft.balance)}, requested ${formatCents(overdraft.requested)})`
      : ""))
  yield* show("withdraw 600.00", yield* Account.handle(id, Withdraw.make({ amount: cents(600_00) })))

  yield* Console.log(`\nhistory of ${Account.streamId(id)}:`)
  yield* Account.read(id).pipe(
    Stream.runForEach((e) => {
      const { _tag, ...fields } = e.payload
      return Console.log(`  v${e.version}  pos ${String(e.position).padStart(4)}  ${_tag.padEnd(15)} ${JSON.stringify(fields)}`)
    })
  )

  // A busy account: 250 small deposits; a snapshot is written after every 100 events.
  const busy = `${id}-busy`
  yield* Account.handle(busy, OpenAccount.make({ holder: "Grace", currency: "CHF" }))
  for (let i = 0; i < 249; i++) {
    yield* Account.handle(busy, i % 10 === 9 ? Withdraw.make({ amount: cents(50) }) : Deposit.make({ amount: cents(100) }))
  }
  const snapshots = yield* Snapshot.SnapshotStore
  const latest = yield* Effect.retry(
    Effect.flatMap(
      snapshots.latest(Account.streamId(busy)),
      (s) => Option.isSome(s) && s.value.version >= 200 ? Effect.succeed(s.value) : Effect.fail("snapshot pending")
    ),
    { times: 100, schedule: Schedule.spaced("10 millis") }
  )
  const loaded = yield* Account.load(busy)
  yield* Console.log(
    `\n${Account.streamId(busy)}: v${loaded.version}, balance ${formatCents(loaded.state.balance)}, ` +
      `loaded from ${loaded.source === "snapshot" ? `the snapshot at v${latest.version}` : `the ${loaded.source}`} + ` +
      `${loaded.version - latest.version} events`
  )
  if (loaded.analytics !== undefined) {
    const a = loaded.analytics
    const share = Analytics.distribution(a)
    yield* Console.log(`analytics: ${a.total} events, ` + Object.entries(a.counts).map(([type, n]) =>
      `${type} ${n} (${share[type]!.toFixed(1)}%)`
    ).join(", "))
    yield* Console.log(
      `  most frequent ${Option.getOrThrow(Analytics.mostFrequent(a)).type}, least frequent ${
        Option.getOrThrow(Analytics.leastFrequent(a)).type
      }, first ${a.firstAt ? DateTime.formatIso(a.firstAt) : "-"}, last ${a.lastAt ? DateTime.formatIso(a.lastAt) : "-"}`
    )
  }

  const store = yield* EventStore.EventStore
  const total = yield* Stream.runCount(store.readAll({ filter: { streamTypes: ["Account"] } }))
  yield* Console.log(`\nthe store holds ${total} account events (runs accumulate in the same database)`)

  // The read side: wait until both projections have seen every event so far (read-your-writes), then query them.
  const projections = yield* Projection.Projections
  const head = yield* store.head
  yield* projections.awaitPosition(AccountBalances.name, head, "10 seconds")
  yield* projections.awaitPosition(TransactionsPerDay.name, head, "10 seconds")
  const sql = yield* SqlClient.SqlClient
  yield* Console.log(`\nread model account_balances (projection ${AccountBalances.name}):`)
  const balances = yield* sql<{ stream_id: string; holder: string; currency: string; balance: number; status: string }>`
    SELECT stream_id, holder, currency, balance, status FROM account_balances WHERE stream_id IN (${Account.streamId(id)}, ${
    Account.streamId(busy)
  }) ORDER BY stream_id`
  for (const row of balances) {
    yield* Console.log(
      `  ${row.stream_id.padEnd(30)} ${row.holder.padEnd(6)} ${row.currency} ${formatCents(row.balance).padStart(10)}  ${row.status}`
    )
  }
  yield* Console.log(`read model transactions_per_day (projection ${TransactionsPerDay.name}):`)
  const days = yield* sql<{ day: string; deposits: number; withdrawals: number; volume: number }>`
    SELECT day, deposits, withdrawals, volume FROM transactions_per_day ORDER BY day DESC LIMIT 3`
  for (const row of days) {
    yield* Console.log(`  ${row.day}  ${row.deposits} deposits, ${row.withdrawals} withdrawals, ${formatCents(row.volume)} moved`)
  }
  const status = yield* projections.status(AccountBalances.name)
  yield* Console.log(`projection ${status.name}: ${status.state} at position ${status.checkpoint}, lag ${status.lag}`)
})

// The account's command handler (with its snapshot policy it needs a SnapshotStore) and the read side's projections
// (checkpoints in the same database), on an SQLite file or on PostgreSQL: the only line that differs.
const Backend = postgres
  ? Postgres.layerConfig({
    url: Config.redacted("DATABASE_URL").pipe(
      Config.withDefault(Redacted.make("postgres://postgres@127.0.0.1:5432/postgres"))
    ),
    schema: Config.succeed("bank_account")
  })
  : Layer.unwrapEffect(Effect.sync(() => {
    mkdirSync(dataDir, { recursive: true })
    return Sqlite.layer({ filename })
  }))
const StoreLive = SqlProjection.layer.pipe(Layer.provideMerge(Backend))
const AppLive = Layer.mergeAll(
  Aggregate.layer(Account),
  Projection.layer([AccountBalances, TransactionsPerDay])
).pipe(Layer.provideMerge(StoreLive))

program.pipe(
  Effect.provide(Layer.merge(AppLive, FraudCheckLive)),
  NodeRuntime.runMain
)
