/**
 * Compatibility: `test/fixtures/compat/v1.db` was written by `write-v1.ts` with the library's schema and the bank
 * account's event schemas as they stood on 2026-11-27. Every later version must open a copy of it (migrating it
 * forward), read every row, decode every event with today's registry (upcasting what changed since) and load the
 * aggregates, from the snapshot where there is one.
 */
import { describe, expect, it } from "@effect/vitest"
import * as SqlClient from "@effect/sql/SqlClient"
import { Aggregate, EventStore, Event } from "effect-eventstore"
import * as Sqlite from "effect-eventstore/Sqlite"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Stream from "effect/Stream"
import { copyFileSync, mkdtempSync } from "node:fs"
import * as os from "node:os"
import * as path from "node:path"
import { fileURLToPath } from "node:url"
import { Account, AccountEvents, FraudCheckNoop, OpenAccount } from "../examples/bank-account/Account.js"

const fixture = fileURLToPath(new URL("./fixtures/compat/v1.db", import.meta.url))

const copy = () => {
  const file = path.join(mkdtempSync(path.join(os.tmpdir(), "es-compat-")), "v1.db")
  copyFileSync(fixture, file)
  return file
}

describe("the 2026-11-27 SQLite fixture", () => {
  it.effect("every event reads back and decodes with today's registry", () =>
    Effect.gen(function*() {
      const store = yield* EventStore.EventStore
      const events = yield* Stream.runCollect(store.readAll().pipe(Event.decodeStream(AccountEvents)))
      const all = [...events]
      expect(all.map((e) => [e.position, e.streamId, e.version, e.type])).toEqual([
        [1, "Account-a", 1, "AccountOpened"],
        [2, "Account-a", 2, "MoneyDeposited"],
        [3, "Account-a", 3, "MoneyDeposited"],
        [4, "Account-a", 4, "MoneyWithdrawn"],
        [5, "Account-a", 5, "MoneyDeposited"],
        [6, "Account-b", 1, "AccountOpened"],
        [7, "Account-b", 2, "MoneyDeposited"],
        [8, "Account-b", 3, "MoneyWithdrawn"],
        [9, "Account-b", 4, "AccountClosed"]
      ])
      expect(all[0]!.eventId).toBe("00000000-0000-7000-8000-000000000001")
      // written as AccountOpened v1 ({ owner }): read as v2 through its upcaster; the envelope keeps the version
      // that wrote the payload
      expect(all[0]!.payload).toEqual({ _tag: "AccountOpened", holder: "Ada", currency: "EUR" })
      expect(all[0]!.schemaVersion).toBe(1)
      expect(all[5]!.payload).toEqual({ _tag: "AccountOpened", holder: "Grace", currency: "EUR" })
      expect(all[0]!.metadata).toEqual({
        correlationId: "corr-Account-a",
        principalId: "teller-1",
        tags: { source: "write-v1" }
      })
      expect(all[5]!.metadata).toEqual({ tenantId: "acme" })
      expect(all[1]!.payload).toEqual({ _tag: "MoneyDeposited", amount: 10_000 })
      expect(yield* store.version("Account-a")).toBe(5)
      expect(yield* store.head).toBe(9)
    }).pipe(Effect.provide(Sqlite.layer({ filename: copy() }))))

  it.effect("aggregates load (Account-a from its v1 snapshot, upcast) and take new commands", () =>
    Effect.gen(function*() {
      const a = yield* Account.load("a")
      expect(a).toMatchObject({
        version: 5,
        source: "snapshot",
        state: { status: "open", holder: "Ada", currency: "EUR", balance: 11_500 }
      })
      const b = yield* Account.load("b")
      expect(b).toMatchObject({ version: 4, state: { status: "closed", holder: "Grace", currency: "EUR", balance: 0 } })
      const store = yield* EventStore.EventStore
      const appended = yield* store.append("Account-a", [{ type: "MoneyDeposited", payload: { amount: 1 } }], {
        expectedVersion: 5
      })
      expect(appended).toMatchObject({ version: 6, position: 10 })
      // a new account is opened with AccountOpened v2, beside the v1 rows
      yield* Account.handle("c", OpenAccount.make({ holder: "Lin", currency: "CHF" }))
      const [opened] = yield* Stream.runCollect(store.read("Account-c"))
      expect(opened).toMatchObject({ type: "AccountOpened", schemaVersion: 2, payload: { holder: "Lin", currency: "CHF" } })
    }).pipe(
      Effect.provide(Aggregate.layer(Account).pipe(Layer.provideMerge(Sqlite.layer({ filename: copy() })))),
      Effect.provide(FraudCheckNoop)
    ))

  it.effect("the projection's read model and checkpoint are where they were", () =>
    Effect.gen(function*() {
      const sql = yield* SqlClient.SqlClient
      expect(yield* sql`SELECT name, position FROM eventstore_projections`).toEqual([{ name: "balances", position: 9 }])
      expect(yield* sql`SELECT account, balance FROM balances ORDER BY account`).toEqual([
        { account: "Account-a", balance: 11_500 },
        { account: "Account-b", balance: 0 }
      ])
    }).pipe(Effect.provide(Sqlite.layer({ filename: copy() }))))
})
