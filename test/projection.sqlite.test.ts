import * as SqlClient from "@effect/sql/SqlClient"
import * as Sqlite from "effect-eventstore/Sqlite"
import * as SqlProjection from "effect-eventstore/SqlProjection"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"
import { projectionSuite, type ReadModel } from "./conformance/Projection.js"

const dir = fs.mkdtempSync(path.join(os.tmpdir(), "effect-eventstore-projection-"))
const dbFile = (name: string) => path.join(dir, `${name}-${crypto.randomUUID().slice(0, 8)}.db`)

/** The suite's read model as tables: rows in handling order (no unique key, so a duplicate would show). */
export const sqlModel: ReadModel<SqlClient.SqlClient> = {
  init: () =>
    Effect.flatMap(SqlClient.SqlClient, (sql) =>
      Effect.all([
        sql`CREATE TABLE IF NOT EXISTS test_seen (seq INTEGER PRIMARY KEY AUTOINCREMENT, projection TEXT, position INTEGER)`,
        sql`CREATE TABLE IF NOT EXISTS test_migrations (seq INTEGER PRIMARY KEY AUTOINCREMENT, projection TEXT, id INTEGER)`
      ])),
  add: (projection, event) =>
    Effect.flatMap(SqlClient.SqlClient, (sql) =>
      sql`INSERT INTO test_seen (projection, position) VALUES (${projection}, ${event.position})`),
  seen: (projection) =>
    Effect.flatMap(SqlClient.SqlClient, (sql) =>
      Effect.map(
        sql<{ position: number }>`SELECT position FROM test_seen WHERE projection = ${projection} ORDER BY seq`,
        (rows) => rows.map((r) => r.position)
      )).pipe(Effect.catchAll(() => Effect.succeed([]))),
  migrated: (projection, id) =>
    Effect.flatMap(SqlClient.SqlClient, (sql) =>
      Effect.zipRight(
        sql`CREATE TABLE IF NOT EXISTS test_migrations (seq INTEGER PRIMARY KEY AUTOINCREMENT, projection TEXT, id INTEGER)`,
        sql`INSERT INTO test_migrations (projection, id) VALUES (${projection}, ${id})`
      )),
  migrations: (projection) =>
    Effect.flatMap(SqlClient.SqlClient, (sql) =>
      Effect.map(
        sql<{ id: number }>`SELECT id FROM test_migrations WHERE projection = ${projection} ORDER BY seq`,
        (rows) => rows.map((r) => r.id)
      ))
}

const sqliteEnv = (filename: () => string) => () => {
  const store = Sqlite.layer({ filename: filename(), pollInterval: "1 hour" })
  return { layer: SqlProjection.layer.pipe(Layer.provideMerge(store)), model: sqlModel }
}

projectionSuite("sqlite", sqliteEnv(() => dbFile("suite")))
projectionSuite("sqlite :memory:", sqliteEnv(() => ":memory:"))
