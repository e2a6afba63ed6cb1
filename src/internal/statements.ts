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

// --- PostgreSQL: a batch's statements in one round trip -----------------------------------------------------------

/**
 * A parameter as a PostgreSQL literal, where it can be written as one exactly: text (`E'…'`, whatever
 * `standard_conforming_strings` says), numbers and bigints as quoted literals (of unknown type, resolved from where
 * they stand, as a bound parameter is), booleans, null. `undefined` for anything else (dates, bytes, arrays, JSON
 * fragments): such a statement is sent on its own, with its parameters.
 */
const literal = (value: unknown): string | undefined => {
  switch (typeof value) {
    case "string":
      return value.includes("\u0000") ? undefined : `E'${value.replace(/\\/g, "\\\\").replace(/'/g, "''")}'`
    case "number":
      return Number.isFinite(value) ? `'${value}'` : undefined
    case "bigint":
      return `'${value}'`
    case "boolean":
      // as a bound parameter is sent: text, typed where it stands
      return value ? "'true'" : "'false'"
    case "undefined":
      return "NULL"
    case "object":
      return value === null ? "NULL" : undefined
    default:
      return undefined
  }
}

/**
 * A compiled statement (`$1`… placeholders) with its parameters written in as literals; `undefined` when one cannot
 * be. Placeholders inside quoted text, quoted identifiers, dollar-quoted bodies and comments are left alone.
 */
export const inlinePg = (text: string, params: ReadonlyArray<unknown>): string | undefined => {
  const literals = literalsOf(params)
  return literals === undefined ? undefined : substitute(text, literals)
}

/** Every parameter as a literal, or `undefined` when one cannot be. */
const literalsOf = (params: ReadonlyArray<unknown>): Array<string> | undefined => {
  const literals: Array<string> = new Array(params.length)
  for (let i = 0; i < params.length; i++) {
    const l = literal(params[i])
    if (l === undefined) return undefined
    literals[i] = l
  }
  return literals
}

/** A letter, digit, `_` or any non-ASCII character: what SQL words are made of. */
const isWord = (code: number) =>
  (code >= 97 && code <= 122) || (code >= 65 && code <= 90) || (code >= 48 && code <= 57) || code === 95 || code >= 128

const substitute = (text: string, literals: ReadonlyArray<string>): string | undefined => {
  if (literals.length === 0) return text
  // Text the scanner below does not follow exactly (backslash escapes of E'…' strings, nested comments) is never
  // rewritten: such a statement goes on its own, with its parameters bound.
  if (text.includes("\\") || text.includes("/*")) return undefined
  let out = ""
  let i = 0
  const n = text.length
  while (i < n) {
    const c = text[i]!
    if (c === "'" || c === "\"") {
      // a quoted literal or identifier: to its closing quote (a doubled quote stays inside)
      let j = i + 1
      while (j < n && !(text[j] === c && text[j + 1] !== c)) j += text[j] === c ? 2 : 1
      out += text.slice(i, j + 1)
      i = j + 1
    } else if (c === "-" && text[i + 1] === "-") {
      const j = text.indexOf("\n", i)
      const end = j < 0 ? n : j
      out += text.slice(i, end)
      i = end
    } else if (isWord(text.charCodeAt(i))) {
      // a word: an identifier or keyword may hold `$` (`a$1` is one identifier), never a placeholder
      let j = i + 1
      while (j < n && (isWord(text.charCodeAt(j)) || text.charCodeAt(j) === 36)) j++
      out += text.slice(i, j)
      i = j
    } else if (c === "$") {
      const number = /^\$(\d+)/.exec(text.slice(i, i + 12))
      if (number !== null) {
        const k = Number(number[1]) - 1
        if (k < 0 || k >= literals.length) return undefined
        out += literals[k]
        i += number[0].length
        continue
      }
      const tag = /^\$[A-Za-z_][A-Za-z0-9_]*\$|^\$\$/.exec(text.slice(i, i + 64))
      if (tag !== null) {
        const j = text.indexOf(tag[0], i + tag[0].length)
        const end = j < 0 ? n : j + tag[0].length
        out += text.slice(i, end)
        i = end
      } else {
        out += c
        i++
      }
    } else {
      out += c
      i++
    }
  }
  return out
}

let batches = 0

/**
 * Runs statements on PostgreSQL in as few round trips as it can: those whose parameters can be written in as
 * literals go together, as one multi-statement query (inside the caller's transaction); any other is sent on its
 * own, in its place in the order. Within a query, a statement text that comes back several times is prepared once
 * (`PREPARE` … `EXECUTE` with the literals, `DEALLOCATE` at the end), so the server parses and plans it once: it
 * infers the parameters' types as it does for a bound statement. Names are new for every query, so that one left
 * behind by a failed query never collides.
 */
export const runBatchedPg = (
  client: SqlClient.SqlClient,
  statements: ReadonlyArray<Statement.Statement<unknown>>
): Effect.Effect<void, SqlError> =>
  Effect.suspend(() => {
    const steps: Array<Effect.Effect<unknown, SqlError>> = []
    let pending: Array<{ readonly text: string; readonly literals: ReadonlyArray<string>; readonly inlined: string }> = []
    const flush = () => {
      if (pending.length === 0) return
      const counts = new Map<string, number>()
      for (const { literals, text } of pending) {
        if (literals.length > 0) counts.set(text, (counts.get(text) ?? 0) + 1)
      }
      const batch = `es_b${(batches = (batches + 1) % 1_000_000_000)}`
      const names = new Map<string, string>()
      const head: Array<string> = []
      for (const [text, count] of counts) {
        if (count < 2) continue
        const name = `${batch}_${names.size}`
        names.set(text, name)
        head.push(`PREPARE ${name} AS ${text}`)
      }
      const body: Array<string> = []
      for (const { inlined, literals, text } of pending) {
        const name = names.get(text)
        body.push(name !== undefined ? `EXECUTE ${name}(${literals.join(", ")})` : inlined)
      }
      const tail = [...names.values()].map((name) => `DEALLOCATE ${name}`)
      // each statement ends on a line of its own: a trailing `--` comment cannot swallow the separator
      steps.push(client.unsafe([...head, ...body, ...tail].join("\n;\n")).raw)
      pending = []
    }
    for (const statement of statements) {
      const [text, params] = statement.compile()
      const literals = literalsOf(params)
      const inlined = literals === undefined ? undefined : substitute(text, literals)
      if (literals === undefined || inlined === undefined) {
        flush()
        steps.push(statement)
      } else {
        pending.push({ text, literals, inlined })
      }
    }
    flush()
    return Effect.forEach(steps, (step) => step, { discard: true })
  })

/** The statements a handler returned, as a list. */
export const statementList = (out: Statements): ReadonlyArray<Statement.Statement<unknown>> => listOf(out)
