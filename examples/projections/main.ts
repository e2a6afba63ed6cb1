/**
 * Projections, operated: a read model built from 100,000 events, rebuilt blue/green while a reader keeps querying it
 * (progress as a stream, a line every 200 ms here), then switched to the new generation in one transaction.
 *
 *   npm run example:projections
 */
import { NodeRuntime } from "@effect/platform-node"
import * as SqlClient from "@effect/sql/SqlClient"
import { Event, EventStore, Projection } from "effect-eventstore"
import * as Sqlite from "effect-eventstore/Sqlite"
import * as SqlProjection from "effect-eventstore/SqlProjection"
import * as Console from "effect/Console"
import * as Effect from "effect/Effect"
import * as Fiber from "effect/Fiber"
import * as Layer from "effect/Layer"
import * as Schema from "effect/Schema"
import * as Stream from "effect/Stream"
import { mkdtempSync } from "node:fs"
import * as os from "node:os"
import * as path from "node:path"

// --- the domain: sales per product -----------------------------------------------------------------------------
export const ItemSold = Schema.TaggedStruct("ItemSold", { sku: Schema.String, quantity: Schema.Int, cents: Schema.Int })
const SalesEvents = Event.registry([ItemSold])

// --- the read model: its table is named through the projection, so that a rebuild can build the next generation
// beside the one readers use. Readers query the view `product_sales`.
const ProductSales = Projection.sql({
  name: "product-sales",
  events: SalesEvents,
  tables: ["product_sales"],
  init: [(table) =>
    Effect.flatMap(SqlClient.SqlClient, (sql) =>
      sql`CREATE TABLE ${sql(table("product_sales"))} (
        sku TEXT PRIMARY KEY, sold INTEGER NOT NULL, revenue INTEGER NOT NULL)`)],
  handlers: {
    ItemSold: (e, sql, table) =>
      sql`INSERT INTO ${sql(table("product_sales"))} (sku, sold, revenue)
        VALUES (${e.payload.sku}, ${e.payload.quantity}, ${e.payload.quantity * e.payload.cents})
        ON CONFLICT (sku) DO UPDATE SET sold = sold + excluded.sold, revenue = revenue + excluded.revenue`
  }
})

const program = Effect.gen(function*() {
  const store = yield* EventStore.EventStore
  const sql = yield* SqlClient.SqlClient
  const projections = yield* Projection.Projections

  // 100,000 sales in 1,000 orders of 100 lines
  for (let order = 0; order < 1_000; order++) {
    yield* store.append(
      `Order-${order}`,
      Array.from({ length: 100 }, (_, i) => ({
        type: "ItemSold",
        payload: { sku: `sku-${(order + i) % 25}`, quantity: 1 + (i % 3), cents: 250 }
      }))
    )
  }
  const head = yield* store.head
  yield* projections.awaitPosition("product-sales", head, "30 seconds")
  const summary = Effect.map(
    sql<{ products: number; sold: number }>`SELECT COUNT(*) AS products, SUM(sold) AS sold FROM product_sales`,
    (rows) => rows[0]!
  )
  const generation = Effect.map(
    sql<{ generation: number }>`SELECT generation FROM eventstore_projections WHERE name = 'product-sales'`,
    (rows) => rows[0]!.generation
  )
  const before = yield* summary
  yield* Console.log(`read model: ${before.products} products, ${before.sold} items sold (generation ${yield* generation})`)

  // a reader querying the view all through the rebuild: it never sees an empty or half-built model
  let reads = 0
  let incomplete = 0
  const reader = yield* Effect.fork(Effect.forever(Effect.zipRight(
    Effect.map(summary, (s) => {
      reads++
      if (s.sold !== before.sold) incomplete++
    }),
    Effect.sleep("2 millis")
  )))

  yield* Console.log("rebuilding (blue/green):")
  let lastLine = 0
  yield* projections.rebuild("product-sales").pipe(
    Stream.runForEach((p) => {
      const now = Date.now()
      if (!p.done && now - lastLine < 200) return Effect.void
      lastLine = now
      return Console.log(
        `  ${p.processed}/${p.total} events, ${p.eventsPerSecond}/s` +
          (p.done ? ", done" : p.etaMillis === undefined ? "" : `, about ${Math.ceil(p.etaMillis / 1000)} s left`)
      )
    })
  )
  yield* Fiber.interrupt(reader)
  const after = yield* summary
  yield* Console.log(
    `switched to generation ${yield* generation}: ${after.products} products, ${after.sold} items sold; ` +
      `the reader made ${reads} queries during the rebuild, ${incomplete} saw an incomplete model`
  )
  const status = yield* projections.status("product-sales")
  yield* Console.log(`status: ${status.state} at ${status.checkpoint} (head ${status.head})`)
})

const dir = process.env.PROJECTIONS_DATA_DIR ?? mkdtempSync(path.join(os.tmpdir(), "effect-eventstore-projections-"))
const StoreLive = SqlProjection.layer.pipe(Layer.provideMerge(Sqlite.layer({ filename: path.join(dir, "sales.db") })))
const AppLive = Projection.layer([ProductSales]).pipe(Layer.provideMerge(StoreLive))

program.pipe(Effect.provide(AppLive), NodeRuntime.runMain)
