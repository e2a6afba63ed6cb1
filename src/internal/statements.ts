/**
 * Statement handlers (`Projection.sql`): what they return, run on either road — as Effects on the `SqlClient` in
 * context, or compiled and run synchronously on a driver connection (the writer's batch, an append's savepoint).
 */
import * as SqlClient from "@effect/sql/SqlClient"
import type { SqlError } from "@effect/sql/SqlError"
import type * as Statement from "@effect/sql/Statement"
import * as Effect from "effect/Effect"
import type { RecordedEvent } from "../Event.js"

export type Statements = Statement.Statement<unknown> | ReadonlyArray<Statement.Statement<unknown>>

export type StatementHandler = (
  event: RecordedEvent<any>,
  sql: SqlClient.SqlClient,
  table: (name: string) => string
) => Statements

const listOf = (out: Statements): ReadonlyArray<Statement.Statement<unknown>> =>
  Array.isArray(out) ? out as ReadonlyArray<Statement.Statement<unknown>> : [out as Statement.Statement<unknown>]

/** The handler as an Effect: its statements run, in order, on the `SqlClient` in context. */
export const asEffect = (handler: StatementHandler, table: (name: string) => string) =>
(event: RecordedEvent<any>): Effect.Effect<void, SqlError, SqlClient.SqlClient> =>
  Effect.flatMap(SqlClient.SqlClient, (client) => Effect.forEach(listOf(handler(event, client, table)), (s) => s, { discard: true }))

/** Compiles what a handler returned and runs it, in order, through `run` (a synchronous driver call). */
export const runSync = (out: Statements, run: (sql: string, params: ReadonlyArray<unknown>) => unknown): void => {
  for (const statement of listOf(out)) {
    const [text, params] = statement.compile()
    run(text, params)
  }
}

/** Why a handler threw, in a line: the driver's code where it has one. */
export const thrownReason = (cause: unknown): string =>
  cause instanceof Error ? `${(cause as { code?: string }).code ?? cause.name}: ${cause.message}` : String(cause)
