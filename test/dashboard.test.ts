/**
 * The dashboard in a real browser: headless Chromium (Debian's `chromium` package) driven by `playwright-core`,
 * against a SQLite store this test fills and a projection it runs. The numbers the page shows are checked against the
 * store itself (its head, the checkpoint table), the stream browser and the event detail against what was appended,
 * and an append made after the page loaded must show up through the server-sent events.
 */
import { afterAll, beforeAll, describe, expect, it } from "@effect/vitest"
import * as SqlClient from "@effect/sql/SqlClient"
import type { SqlError } from "@effect/sql/SqlError"
import * as HttpServer from "@effect/platform/HttpServer"
import { Event, EventStore, Projection } from "effect-eventstore"
import * as Dashboard from "effect-eventstore/Dashboard"
import * as Operator from "effect-eventstore/Operator"
import * as Sqlite from "effect-eventstore/Sqlite"
import * as SqlProjection from "effect-eventstore/SqlProjection"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as ManagedRuntime from "effect/ManagedRuntime"
import * as Redacted from "effect/Redacted"
import * as Schedule from "effect/Schedule"
import * as Schema from "effect/Schema"
import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"
import { type Browser, chromium, type Page } from "playwright-core"

const CHROMIUM = "/usr/bin/chromium"
const TOKEN = "s3cret-admin-token"

const Deposited = Schema.TaggedStruct("Deposited", { amount: Schema.Int })
const Withdrawn = Schema.TaggedStruct("Withdrawn", { amount: Schema.Int })
const Events = Event.registry([Deposited, Withdrawn])

/** Balances per account; a negative deposit is refused, so the projection stops on it (and the test parks it). */
const Balances = Projection.make({
  name: "balances",
  events: Events,
  init: [
    Effect.flatMap(SqlClient.SqlClient, (sql) =>
      sql`CREATE TABLE balances (id TEXT PRIMARY KEY, balance INTEGER NOT NULL)`.pipe(Effect.asVoid))
  ],
  reset: Effect.flatMap(SqlClient.SqlClient, (sql) => sql`DELETE FROM balances`.pipe(Effect.asVoid)),
  handlers: {
    Deposited: (event): Effect.Effect<void, string | SqlError, SqlClient.SqlClient> =>
      Effect.gen(function*() {
        if (event.payload.amount < 0) return yield* Effect.fail(`negative deposit ${event.payload.amount}`)
        const sql = yield* SqlClient.SqlClient
        yield* sql`INSERT INTO balances VALUES (${event.streamId}, ${event.payload.amount})
          ON CONFLICT (id) DO UPDATE SET balance = balance + excluded.balance`
      }),
    Withdrawn: (event) =>
      Effect.flatMap(SqlClient.SqlClient, (sql) =>
        sql`UPDATE balances SET balance = balance - ${event.payload.amount} WHERE id = ${event.streamId}`.pipe(
          Effect.asVoid
        ))
  }
})

const dir = fs.mkdtempSync(path.join(os.tmpdir(), "effect-eventstore-dashboard-"))
const filename = path.join(dir, "store.db")

// user data the page must show as text, never run: it goes into a stream id, a payload and a parked reason
const XSS = `<img src=x onerror="window.__xss=1">`
const hostile = `Account-${XSS}&"'`

const store = Sqlite.layer({ filename })
const projections = Projection.layer([Balances], { retry: Schedule.recurs(0) }).pipe(
  Layer.provide(SqlProjection.layer),
  Layer.provideMerge(store)
)
const admin = ManagedRuntime.make(
  Dashboard.serve({ port: 0, adminToken: Redacted.make(TOKEN), liveInterval: "100 millis" }).pipe(
    Layer.provideMerge(Operator.layer({ projections: [Balances] })),
    Layer.provideMerge(projections)
  )
)
// a second dashboard over the same file (a store instance of its own), without a token: read-only
const readOnly = ManagedRuntime.make(
  Dashboard.serve({ port: 0 }).pipe(Layer.provideMerge(Operator.layer()), Layer.provideMerge(Sqlite.layer({ filename })))
)

const urlOf = (runtime: typeof admin | typeof readOnly) =>
  runtime.runPromise(Effect.map(HttpServer.HttpServer, (server) => {
    const address = server.address
    if (address._tag !== "TcpAddress") throw new Error("not a TCP server")
    return `http://127.0.0.1:${address.port}/`
  }))

const head = () => admin.runPromise(Effect.flatMap(EventStore.EventStore, (s) => s.head))
const append = (streamId: string, events: ReadonlyArray<Event.NewEvent>) =>
  admin.runPromise(Effect.flatMap(EventStore.EventStore, (s) => s.append(streamId, events)))
/** The checkpoint as stored, read past the operator. */
const checkpoint = (name: string) =>
  admin.runPromise(Effect.flatMap(SqlClient.SqlClient, (sql) =>
    Effect.map(
      sql<{ position: number }>`SELECT position FROM eventstore_projections WHERE name = ${name}`,
      (rows) => Number(rows[0]?.position)
    )))

let browser: Browser
let adminUrl: string
let readOnlyUrl: string
/** The event ids of the `Account-1` stream, in order; its events share one correlation id. */
const account1: Array<string> = []
const pageErrors: Array<string> = []

const open = async (url: string): Promise<Page> => {
  const page = await browser.newPage({ viewport: { width: 1280, height: 900 } })
  page.on("pageerror", (e) => pageErrors.push(String(e)))
  page.on("dialog", (d) => void d.accept())
  await page.goto(url)
  return page
}

const hashIncludes = (page: Page, fragment: string) =>
  page.waitForFunction(
    (f) => (globalThis as unknown as { location: { hash: string } }).location.hash.includes(f),
    fragment
  )

const value = (page: Page, selector: string) => page.locator(selector).getAttribute("data-value")

beforeAll(async () => {
  adminUrl = await urlOf(admin)
  readOnlyUrl = await urlOf(readOnly)
  for (let i = 1; i <= 3; i++) {
    const correlationId = `corr-${i}`
    const first = crypto.randomUUID()
    const written = [first, crypto.randomUUID(), crypto.randomUUID()]
    if (i === 1) account1.push(...written)
    await append(`Account-${i}`, [
      { type: "Deposited", payload: { amount: 100 * i }, eventId: written[0]!, metadata: { correlationId } },
      { type: "Withdrawn", payload: { amount: 10 }, eventId: written[1]!, metadata: { correlationId, causationId: first } },
      { type: "Deposited", payload: { amount: 5 }, eventId: written[2]!, metadata: { correlationId, causationId: written[1]! } }
    ])
  }
  await append("Order-1", [{ type: "Placed", payload: { note: XSS } }, { type: "Shipped", payload: {} }])
  await append("Order-2", [{ type: "Placed", payload: { note: "</script><b>bold</b>" } }])
  await append(hostile, [{ type: "Deposited", payload: { amount: -1 } }])
  // the projection stops on the negative deposit: park it, then let the projection catch up with the log
  await admin.runPromise(Effect.gen(function*() {
    const live = yield* Projection.Projections
    yield* Effect.repeat(live.status("balances"), {
      until: (s) => s.state === "failed",
      schedule: Schedule.spaced("20 millis")
    }).pipe(Effect.timeout("10 seconds"))
    yield* live.park("balances")
    const store = yield* EventStore.EventStore
    yield* live.awaitPosition("balances", yield* store.head, "10 seconds")
  }))
  browser = await chromium.launch({ executablePath: CHROMIUM, args: ["--no-sandbox"] })
}, 60_000)

afterAll(async () => {
  await browser?.close()
  await admin.dispose()
  await readOnly.dispose()
})

describe("Dashboard in Chromium", () => {
  it("serves one self-contained page under 100 KB", async () => {
    const response = await fetch(adminUrl)
    expect(response.status).toBe(200)
    expect(response.headers.get("content-type")).toMatch(/^text\/html/)
    const html = await response.text()
    expect(Buffer.byteLength(html)).toBeLessThan(100_000)
    // no external resource: nothing to fetch but the API
    expect(html).not.toMatch(/<(script|link|img)[^>]+(src|href)="(https?:)?\/\//)
  })

  it("shows the store's numbers, browses streams and events, updates live, and takes a screenshot", async () => {
    const page = await open(adminUrl)
    const atLoad = await head()
    // the overview: head and the projection's checkpoint and lag, as the store has them
    await page.locator(`#head[data-value="${atLoad}"]`).waitFor({ timeout: 5_000 })
    const row = page.locator(`tr[data-projection="balances"]`)
    await row.waitFor()
    expect(Number(await value(page, `tr[data-projection="balances"] td[data-field="position"]`)))
      .toBe(await checkpoint("balances"))
    expect(Number(await value(page, `tr[data-projection="balances"] td[data-field="lag"]`)))
      .toBe(atLoad - (await checkpoint("balances")))
    expect(await value(page, `tr[data-projection="balances"] td[data-field="state"]`)).toBe("live")
    expect(Number(await value(page, `tr[data-projection="balances"] td[data-field="parked"]`))).toBe(1)
    expect(await row.locator(`td[data-field="problem"]`).textContent()).toContain("negative deposit -1")
    expect(Number(await value(page, "#parked-total"))).toBe(1)
    expect(await page.locator("#last-recorded-at").getAttribute("data-value")).toMatch(/^\d{4}-\d\d-\d\dT/)

    // the stream browser: filter by prefix through the form
    await page.click(`nav a[data-nav="streams"]`)
    await page.fill(`#stream-filters input[name="prefix"]`, "Account-")
    await page.click(`#stream-filters button[type="submit"]`)
    await hashIncludes(page, "prefix=Account-")
    await page.locator("#streams").waitFor()
    const listed = await page.locator("#streams tbody tr").evaluateAll((rows) =>
      rows.map((r) => r.getAttribute("data-stream"))
    )
    expect(listed).toEqual(["Account-1", "Account-2", "Account-3", hostile])
    // by event type: only the streams holding a `Placed`
    await page.goto(`${adminUrl}#/streams?eventType=Placed`)
    await page.locator(`#streams tbody tr[data-stream="Order-2"]`).waitFor()
    expect(await page.locator("#streams tbody tr").count()).toBe(2)

    // follow a stream link: its events, in order
    await page.goto(`${adminUrl}#/streams?prefix=Account-`)
    await page.locator(`#streams a[href="#/stream/Account-1"]`).click()
    await page.locator("#events").waitFor()
    expect(await page.locator("#stream-id").textContent()).toBe("Account-1")
    const events = await page.locator("#events tbody tr").evaluateAll((rows) =>
      rows.map((r) => ({
        id: r.getAttribute("data-event"),
        version: r.querySelector(`[data-field="version"]`)?.textContent,
        type: r.querySelector(`[data-field="type"]`)?.textContent
      }))
    )
    expect(events).toEqual([
      { id: account1[0], version: "1", type: "Deposited" },
      { id: account1[1], version: "2", type: "Withdrawn" },
      { id: account1[2], version: "3", type: "Deposited" }
    ])
    await page.click("#newest-first")
    await hashIncludes(page, "direction=backward")
    await page.locator(`#events tbody tr[data-event="${account1[2]}"]`).first().waitFor()
    expect(await page.locator("#events tbody tr").first().getAttribute("data-event")).toBe(account1[2])

    // an event's detail: payload, metadata, its cause and the events of its correlation
    await page.locator(`#events a[href="#/event/${account1[2]}"]`).click()
    await page.locator("#payload").waitFor()
    expect(JSON.parse((await page.locator("#payload").textContent())!)).toEqual({ amount: 5 })
    expect(JSON.parse((await page.locator("#metadata").textContent())!)).toMatchObject({
      correlationId: "corr-1",
      causationId: account1[1]
    })
    expect(await page.locator("#causes tbody tr").evaluateAll((rows) => rows.map((r) => r.getAttribute("data-event"))))
      .toEqual([account1[1], account1[0]])
    const related = await page.locator("#related tbody tr").evaluateAll((rows) =>
      rows.map((r) => r.getAttribute("data-event"))
    )
    expect(related).toEqual(expect.arrayContaining([account1[0], account1[1]]))
    expect(related).not.toContain(undefined)

    // user data stays text: the hostile stream id and payloads are shown, never run
    await page.goto(`${adminUrl}#/stream/${encodeURIComponent(hostile)}`)
    await page.locator("#events").waitFor()
    expect(await page.locator("#stream-id").textContent()).toBe(hostile)
    await page.locator("#events tbody a").first().click()
    await page.locator("#payload").waitFor()
    expect(await page.locator(`[data-field="streamId"]`).textContent()).toBe(hostile)
    await page.goto(`${adminUrl}#/streams?prefix=Order-1`)
    await page.locator(`#streams a[href="#/stream/Order-1"]`).click()
    await page.locator("#events tbody a").first().click()
    expect(JSON.parse((await page.locator("#payload").textContent())!)).toEqual({ note: XSS })
    expect(await page.evaluate(() => (globalThis as { __xss?: number }).__xss)).toBeUndefined()
    expect(await page.locator("img").count()).toBe(0)

    // an unknown event: the API's error in the error box
    await page.goto(`${adminUrl}#/event/no-such-event`)
    await page.locator("#error").waitFor()
    expect(await page.locator("#error").textContent()).toContain("NotFound")

    // live: an append made now reaches the overview over server-sent events, without a reload
    await page.goto(`${adminUrl}#/`)
    await page.locator(`#head[data-value="${atLoad}"]`).waitFor()
    const appended = await append("Account-2", [{ type: "Deposited", payload: { amount: 1 } }])
    await page.locator(`#head[data-value="${appended.position}"]`).waitFor({ timeout: 2_000 })
    expect(Number(await value(page, "#head"))).toBe(await head())
    await page.locator(`tr[data-projection="balances"] td[data-field="position"][data-value="${appended.position}"]`)
      .waitFor({ timeout: 2_000 })
    expect(await page.locator("#live").getAttribute("data-state")).toBe("live")

    const screenshot = path.join(dir, "dashboard.png")
    await page.screenshot({ path: screenshot, fullPage: true })
    const png = fs.readFileSync(screenshot)
    expect(png.length).toBeGreaterThan(1000)
    expect(png.subarray(1, 4).toString()).toBe("PNG")
    await page.close()
    expect(pageErrors).toEqual([])
  })

  it("with an admin token: actions need it, and work with it", async () => {
    const unauthorized = await fetch(new URL("api/projections/balances/rebuild", adminUrl), { method: "POST" })
    expect(unauthorized.status).toBe(401)
    expect(await unauthorized.json()).toMatchObject({ _tag: "Unauthorized" })
    const wrong = await fetch(new URL("api/parked/balances/skip?position=1", adminUrl), {
      method: "POST",
      headers: { authorization: "Bearer not-the-token" }
    })
    expect(wrong.status).toBe(401)

    const page = await open(`${adminUrl}#/projections`)
    const row = page.locator(`tr[data-projection="balances"]`)
    await row.waitFor()
    expect(await page.locator("#mode").count()).toBe(0)
    // without the token typed in, the page shows the refusal
    await row.locator(`button[data-action="rebuild"]`).click()
    await page.locator("#error").waitFor()
    expect(await page.locator("#error").textContent()).toContain("Unauthorized")
    await page.fill("#token", TOKEN)
    await row.locator(`button[data-action="rebuild"]`).click()
    await page.locator("#notice").waitFor()
    expect(await page.locator("#notice").textContent()).toContain("Rebuild of balances started")
    // the rebuild replays the log and stops on the negative deposit again: the page shows where and why
    const bad = await admin.runPromise(Effect.flatMap(Operator.Operator, (op) => op.parked("balances")))
    const position = bad.parked[0]!.position
    await page.locator(`tr[data-projection="balances"][data-level="crit"]`).waitFor({ timeout: 10_000 })
    expect(await value(page, `tr[data-projection="balances"] td[data-field="state"]`)).toBe("failed")
    expect(await row.locator(`td[data-field="problem"]`).textContent())
      .toBe(`failed at ${position} (Deposited): negative deposit -1`)
    // parked again, the projection goes on to the head
    await admin.runPromise(Effect.gen(function*() {
      const live = yield* Projection.Projections
      yield* live.park("balances")
      yield* live.awaitPosition("balances", yield* Effect.flatMap(EventStore.EventStore, (s) => s.head), "10 seconds")
    }))
    await page.locator(`tr[data-projection="balances"][data-level="warn"]`).waitFor({ timeout: 5_000 })

    // parked events: the list, and a skip through the page with the token
    await page.goto(`${adminUrl}#/parked?projection=balances`)
    const parked = page.locator("#parked tbody tr")
    await parked.first().waitFor()
    expect(await parked.count()).toBe(1)
    expect(await parked.first().textContent()).toContain("negative deposit -1")
    await parked.first().locator(`button[data-action="skip"]`).click()
    await page.locator("#no-parked").waitFor()
    expect(await page.locator("#notice").textContent()).toContain("Skipped 1")
    const page2 = await admin.runPromise(Effect.flatMap(Operator.Operator, (op) => op.parked("balances")))
    expect(page2.parked).toEqual([])

    // from node, with the token: a skip of nothing deletes nothing
    const ok = await fetch(new URL("api/parked/balances/skip?position=1", adminUrl), {
      method: "POST",
      headers: { authorization: `Bearer ${TOKEN}` }
    })
    expect(ok.status).toBe(200)
    expect(await ok.json()).toEqual({ deleted: 0 })
    await page.close()
    expect(pageErrors).toEqual([])
  })

  it("without an admin token: read-only, no action buttons, actions refused", async () => {
    const page = await open(`${readOnlyUrl}#/projections`)
    await page.locator(`tr[data-projection="balances"]`).waitFor()
    expect(await page.locator("#mode").textContent()).toBe("read-only")
    expect(await page.locator("#token").count()).toBe(0)
    expect(await page.locator("button[data-action]").count()).toBe(0)
    expect(Number(await value(page, `tr[data-projection="balances"] td[data-field="position"]`)))
      .toBe(await checkpoint("balances"))
    await page.goto(`${readOnlyUrl}#/parked`)
    await page.locator("#parked, #no-parked").first().waitFor()
    expect(await page.locator("button").count()).toBe(0)
    const refused = await fetch(new URL("api/projections/balances/rebuild", readOnlyUrl), {
      method: "POST",
      headers: { authorization: `Bearer ${TOKEN}` }
    })
    expect(refused.status).toBe(403)
    expect(await refused.json()).toMatchObject({ _tag: "ReadOnly" })
    await page.close()
    expect(pageErrors).toEqual([])
  })
})
