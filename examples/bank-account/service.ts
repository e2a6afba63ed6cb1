/**
 * The bank account as a long-running service under `Runtime.run`: the store in an SQLite file, the two read models
 * kept by projections, a health endpoint, and a load source — a few tellers depositing into their accounts — that
 * prints one JSON line per acknowledged command. SIGINT/SIGTERM stop it: the tellers' commands in flight finish and
 * are printed, new ones are refused, the projections stop after their batch, the store closes; exit code 0.
 *
 *   npm run start:service
 *   curl localhost:9000/health/ready
 *
 * Settings (environment): BANK_DATA_DIR (default ./data), HEALTH_PORT (default 9000; 0 for any free port),
 * DASHBOARD_PORT (the operator dashboard, default 9100 when HEALTH_PORT is not set either; 0 for any free port),
 * EVENTSTORE_ADMIN_TOKEN (allows the dashboard's actions; read-only without it), TELLERS (default 4), PAUSE_MS between
 * a teller's commands (default 200), SHUTDOWN_TIMEOUT_MS (default 20000).
 *
 *   open http://localhost:9100/
 *   npm run cli -- projections status --url http://localhost:9100
 */
import * as HttpServer from "@effect/platform/HttpServer"
import * as Dashboard from "effect-eventstore/Dashboard"
import * as Runtime from "effect-eventstore/Runtime"
import * as Sqlite from "effect-eventstore/Sqlite"
import * as SqlProjection from "effect-eventstore/SqlProjection"
import { Aggregate, Operator, Projection } from "effect-eventstore"
import * as Console from "effect/Console"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import { mkdirSync } from "node:fs"
import * as path from "node:path"
import { Account, cents, Deposit, FraudCheck, OpenAccount } from "./Account.js"
import { AccountBalances, TransactionsPerDay } from "./ReadModels.js"

const env = (name: string, fallback: number) => {
  const value = process.env[name]
  return value === undefined || value === "" ? fallback : Number(value)
}
const dataDir = process.env.BANK_DATA_DIR ?? path.join(process.cwd(), "data")
const filename = path.join(dataDir, "bank-account.db")
const tellers = env("TELLERS", 4)
const pause = env("PAUSE_MS", 200)

// Large deposits wait for a (simulated) fraud review: a command takes a while, so a stop finds some in flight.
const FraudCheckLive = Layer.succeed(FraudCheck, {
  review: (amount) => amount >= 100_000 ? Effect.sleep("50 millis") : Effect.void
})

const dashboardPort = process.env.DASHBOARD_PORT ?? (process.env.HEALTH_PORT === undefined ? "9100" : undefined)

// The operator dashboard, in this process: it sees the projections running here (live state, rebuilds)
const DashboardLive = dashboardPort === undefined ? Layer.empty : Layer.unwrapEffect(
  Effect.map(Dashboard.optionsConfig, (options) =>
    Layer.effectDiscard(Effect.flatMap(HttpServer.HttpServer, (server) =>
      server.address._tag === "TcpAddress"
        ? Effect.logInfo(`dashboard on http://127.0.0.1:${server.address.port}/`)
        : Effect.void)).pipe(
        Layer.provideMerge(Dashboard.serve({ ...options, port: Number(dashboardPort) })),
        Layer.provide(Operator.layer())
      ))
)

const AppCore = Layer.mergeAll(
  Aggregate.layer(Account),
  Projection.layer([AccountBalances, TransactionsPerDay])
).pipe(
  Layer.provideMerge(SqlProjection.layer),
  Layer.provideMerge(Layer.unwrapEffect(Effect.sync(() => {
    mkdirSync(dataDir, { recursive: true })
    return Sqlite.layer({ filename })
  }))),
  Layer.provideMerge(FraudCheckLive)
)

const AppLive = DashboardLive.pipe(Layer.provideMerge(AppCore))

/**
 * One teller: opens an account, then deposits into it until the service stops. Each command and its ack line run as
 * work in flight (`Runtime.track`): a stop waits for them, and refuses the next one with `ShuttingDown`, which ends
 * the teller.
 */
const teller = (run: string, n: number) =>
  Effect.gen(function*() {
    const id = `${run}-${n}`
    const command = (i: number) =>
      i === 0 ? OpenAccount.make({ holder: `teller ${n}` }) : Deposit.make({ amount: cents(i % 3 === 0 ? 1_000_00 : 10_00) })
    for (let i = 0;; i++) {
      // acknowledged: printed once the append is committed, inside the tracked work, so a stop waits for the line too
      yield* Runtime.track(
        Effect.tap(
          Account.handle(id, command(i)),
          (result) => Console.log(JSON.stringify({ ack: { streamId: Account.streamId(id), version: result.version } }))
        )
      )
      yield* Effect.sleep(pause)
    }
  }).pipe(Effect.catchTag("ShuttingDown", () => Effect.void))

const main = Effect.gen(function*() {
  const run = `acc-svc-${Date.now().toString(36)}`
  yield* Effect.forEach(Array.from({ length: tellers }, (_, n) => n), (n) => teller(run, n), {
    concurrency: "unbounded",
    discard: true
  })
})

Runtime.run(AppLive, {
  name: "bank-account",
  main,
  shutdownTimeout: env("SHUTDOWN_TIMEOUT_MS", 20_000),
  // the example serves its health on 9000 unless HEALTH_PORT says otherwise (`Runtime.run` reads HEALTH_PORT)
  health: process.env.HEALTH_PORT === undefined ? { port: 9000 } : {}
})
