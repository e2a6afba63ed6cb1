import { describe, expect, it } from "@effect/vitest"
import * as SqlClient from "@effect/sql/SqlClient"
import type { Event } from "effect-eventstore"
import * as SqlProjection from "effect-eventstore/SqlProjection"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import { eventStoreSuite } from "./conformance/EventStore.js"
import { projectionSuite, type ReadModel } from "./conformance/Projection.js"
import { snapshotStoreSuite } from "./conformance/SnapshotStore.js"
import * as Pg from "./fixtures/pg.js"

/** The projection suite's read model as PostgreSQL tables (rows in handling order; a duplicate would show). */
const pgModel: ReadModel<SqlClient.SqlClient> = {
  init: () =>
    Effect.flatMap(SqlClient.SqlClient, (sql) =>
      Effect.all([
        sql`CREATE TABLE IF NOT EXISTS test_seen (seq BIGSERIAL PRIMARY KEY, projection TEXT, position BIGINT)`,
        sql`CREATE TABLE IF NOT EXISTS test_migrations (seq BIGSERIAL PRIMARY KEY, projection TEXT, id INTEGER)`
      ])),
  add: (projection, event) =>
    Effect.flatMap(SqlClient.SqlClient, (sql) =>
      sql`INSERT INTO test_seen (projection, position) VALUES (${projection}, ${event.position})`),
  seen: (projection) =>
    Effect.flatMap(SqlClient.SqlClient, (sql) =>
      Effect.map(
        sql<{ position: string }>`SELECT position FROM test_seen WHERE projection = ${projection} ORDER BY seq`,
        (rows) => rows.map((r) => Number(r.position))
      )).pipe(Effect.catchAll(() => Effect.succeed([]))),
  reset: (projection) =>
    Effect.flatMap(SqlClient.SqlClient, (sql) => sql`DELETE FROM test_seen WHERE projection = ${projection}`),
  migrated: (projection, id) =>
    Effect.flatMap(SqlClient.SqlClient, (sql) =>
      // (no CREATE TABLE IF NOT EXISTS here: PostgreSQL refuses two of them racing; init made the table)
      sql`INSERT INTO test_migrations (projection, id) VALUES (${projection}, ${id})`),
  migrations: (projection) =>
    Effect.flatMap(SqlClient.SqlClient, (sql) =>
      Effect.map(
        sql<{ id: number }>`SELECT id FROM test_migrations WHERE projection = ${projection} ORDER BY seq`,
        (rows) => rows.map((r) => r.id)
      )).pipe(Effect.catchAll(() => Effect.succeed([])))
}

const pgEnv = (label: string) => () => ({
  layer: SqlProjection.layer.pipe(Layer.provideMerge(Pg.layer(label, { pollInterval: "1 hour" }))),
  model: pgModel
})

describe.skipIf(!Pg.available)("PostgreSQL", () => {
  // An hour-long poll interval: the subscription tests pass only if commits wake subscribers directly.
  eventStoreSuite("postgres", Pg.layer("conformance", { pollInterval: "1 hour" }))
  snapshotStoreSuite("postgres", Pg.layer("snapshots"))
  projectionSuite("postgres", pgEnv("projections"))
  projectionSuite("postgres, statement handlers", () => ({
    ...pgEnv("statements")(),
    statement: (projection: string, event: Event.RecordedEvent, sql: SqlClient.SqlClient) =>
      sql`INSERT INTO test_seen (projection, position) VALUES (${projection}, ${event.position})`
  }))
  it("placeholder", () => expect(1).toBe(1))
})
