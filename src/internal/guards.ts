/**
 * What a guarded append (one with a command id or claims, see `Guard`) does in its transaction besides writing its
 * events: before them, look for a live record of its command id; after them, take and give up its unique values,
 * store each event's claims with it, and record the command. Written once as steps (a generator of statements), run
 * by each driver's runner: synchronously on SQLite's writer connection, as Effects on LibSQL. PostgreSQL runs the
 * same steps in one call of `eventstore_append_guarded` (see the migrations), one round trip in autocommit; its
 * `ON CONFLICT` waits for a concurrent insert of the same key and then decides on the committed row. SQLite and
 * LibSQL have one writer at a time. So a value is never held by two streams and a command id is recorded once.
 */
import * as Data from "effect/Data"
import * as Effect from "effect/Effect"
import { ClaimNotHeld, UniqueConstraintViolation } from "../Errors.js"
import type { PreparedAppend } from "./codec.js"
import { tables } from "./migrations.js"

const E = tables.events
const U = tables.unique
const C = tables.commands

/**
 * The append's command id has a live record: nothing of the append may be written; the store answers with the
 * recorded result instead. Never reaches a caller.
 */
export class Replayed extends Data.TaggedError("Replayed")<{ readonly commandId: string }> {}

export type GuardFailure = ClaimNotHeld | UniqueConstraintViolation | Replayed

export interface Query {
  readonly text: string
  readonly params: ReadonlyArray<unknown>
}

/** Statements to run in order; each gets the rows of the one before. */
export type Steps<A> = Generator<Query, A, ReadonlyArray<any>>

const COMMAND_LIVE = `SELECT 1 AS live FROM ${C} WHERE command_id = ? AND expires_at > ?`

/** Takes a value that is free or already the stream's; returns no row when another stream holds it. */
const CLAIM = `INSERT INTO ${U} (tenant_id, index_name, value, stream_id) VALUES (?, ?, ?, ?)
ON CONFLICT (tenant_id, index_name, value) DO UPDATE SET stream_id = excluded.stream_id
WHERE ${U}.stream_id = excluded.stream_id
RETURNING stream_id`

/** Gives up a value the stream holds; returns no row when it does not hold it. */
const RELEASE = `DELETE FROM ${U} WHERE tenant_id = ? AND index_name = ? AND value = ? AND stream_id = ? RETURNING stream_id`

const OWNER = `SELECT stream_id FROM ${U} WHERE tenant_id = ? AND index_name = ? AND value = ?`

const MARK = `UPDATE ${E} SET claims = ? WHERE position = ?`

/** Records a command id, replacing an expired record; returns no row when a live one exists. */
const RECORD = `INSERT INTO ${C} (command_id, stream_id, first_version, last_version, position, expires_at)
VALUES (?, ?, ?, ?, ?, ?)
ON CONFLICT (command_id) DO UPDATE SET stream_id = excluded.stream_id, first_version = excluded.first_version,
  last_version = excluded.last_version, position = excluded.position, expires_at = excluded.expires_at
WHERE ${C}.expires_at <= ?
RETURNING command_id`

/**
 * Removes a few expired records (each recording append does, so they never pile up). SQLite and LibSQL: one writer
 * at a time (PostgreSQL's `eventstore_append_guarded` skips rows another append is removing).
 */
const PURGE = `DELETE FROM ${C} WHERE command_id IN (SELECT command_id FROM ${C} WHERE expires_at <= ? LIMIT 16)`

/** Before the events: a live record of the command id means the append is a replay. */
export function* before(append: PreparedAppend): Steps<Replayed | undefined> {
  const command = append.guard?.command
  if (command === undefined) return undefined
  const rows = yield { text: COMMAND_LIVE, params: [command.id, append.recordedAt] }
  return rows.length > 0 ? new Replayed({ commandId: command.id }) : undefined
}

/**
 * After the events (written at `positions`, the first at version `firstVersion`): the unique values, the events'
 * claims, the command's record. A failure means the transaction (or the append's savepoint) must be rolled back.
 */
export function* after(
  append: PreparedAppend,
  firstVersion: number,
  positions: ReadonlyArray<number>
): Steps<GuardFailure | undefined> {
  const guard = append.guard
  if (guard === undefined) return undefined
  const streamId = append.streamId
  for (const change of guard.claims) {
    const key = [change.tenantId, change.index, change.value]
    const done = yield { text: change.first === "claim" ? CLAIM : RELEASE, params: [...key, streamId] }
    if (done.length === 0) {
      const held = (yield { text: OWNER, params: key })[0]?.stream_id
      const owner = held === undefined || held === null ? undefined : String(held)
      return change.first === "claim"
        ? new UniqueConstraintViolation({ streamId, index: change.index, value: change.value, owner: owner ?? "" })
        : new ClaimNotHeld({
          streamId,
          index: change.index,
          value: change.value,
          ...(owner === undefined ? {} : { owner })
        })
    }
    // what the append does last, where it differs (the first step decided that it may)
    if (change.last !== change.first) {
      yield { text: change.last === "claim" ? CLAIM : RELEASE, params: [...key, streamId] }
    }
  }
  for (let i = 0; i < append.events.length; i++) {
    const claims = append.events[i]!.claimsJson
    if (claims !== null) yield { text: MARK, params: [claims, positions[i]] }
  }
  const command = guard.command
  if (command !== undefined) {
    const n = append.events.length
    const recorded = yield {
      text: RECORD,
      params: [
        command.id,
        streamId,
        firstVersion,
        firstVersion + n - 1,
        positions[n - 1],
        command.expiresAt,
        append.recordedAt
      ]
    }
    if (recorded.length === 0) return new Replayed({ commandId: command.id })
    yield { text: PURGE, params: [append.recordedAt] }
  }
  return undefined
}

/** Runs steps on a synchronous driver. */
export const runSync = <A>(steps: Steps<A>, run: (text: string, params: ReadonlyArray<unknown>) => ReadonlyArray<any>): A => {
  let step = steps.next()
  while (!step.done) step = steps.next(run(step.value.text, step.value.params))
  return step.value
}

/** Runs steps as an Effect. */
export const runEffect = <A, E>(
  steps: Steps<A>,
  run: (text: string, params: ReadonlyArray<unknown>) => Effect.Effect<ReadonlyArray<any>, E>
): Effect.Effect<A, E> => {
  const go = (step: IteratorResult<Query, A>): Effect.Effect<A, E> =>
    step.done ? Effect.succeed(step.value) : Effect.flatMap(run(step.value.text, step.value.params), (rows) => go(steps.next(rows)))
  return Effect.suspend(() => go(steps.next()))
}

const pgTexts = new Map<string, string>()

/** A statement with `?` placeholders in PostgreSQL's numbered form (the statements here have no other `?`). */
export const pgText = (text: string): string => {
  let out = pgTexts.get(text)
  if (out === undefined) {
    let n = 0
    out = text.replace(/\?/g, () => `$${++n}`)
    pgTexts.set(text, out)
  }
  return out
}

// --- reads ---------------------------------------------------------------------------------------------------------

/** A live command record: `stream_id, first_version, last_version, position`. */
export const RECORD_OF = `SELECT stream_id, first_version, last_version, position FROM ${C}
WHERE command_id = ? AND expires_at > ?`

export const OWNER_OF = OWNER

/** The events that claim or release anything, in log order (for a rebuild). */
const CLAIMS_LOG = `SELECT position, stream_id, tenant_id, claims FROM ${E}
WHERE claims IS NOT NULL AND position > ? ORDER BY position LIMIT 1000`

const CLEAR_UNIQUE = `DELETE FROM ${U}`
const INSERT_UNIQUE = `INSERT INTO ${U} (tenant_id, index_name, value, stream_id) VALUES (?, ?, ?, ?)`

/**
 * Rebuilds the table of unique values from the claims stored with the events, in log order (run it in a
 * transaction): how many values are held afterwards, or the position of an event whose stored claims do not read.
 */
export function* rebuild(): Steps<number | { readonly unreadable: unknown }> {
  const held = new Map<string, { tenantId: string; index: string; value: string; streamId: string }>()
  let after = 0
  for (;;) {
    const rows = yield { text: CLAIMS_LOG, params: [after] }
    for (const row of rows) {
      if (!foldClaims(held, String(row.stream_id), String(row.tenant_id ?? ""), String(row.claims))) {
        return { unreadable: row.position }
      }
    }
    if (rows.length < 1000) break
    after = Number(rows[rows.length - 1]!.position)
  }
  yield { text: CLEAR_UNIQUE, params: [] }
  for (const entry of held.values()) {
    yield { text: INSERT_UNIQUE, params: [entry.tenantId, entry.index, entry.value, entry.streamId] }
  }
  return held.size
}

/**
 * Folds the claims stored with events (in log order) into the table a rebuild writes: `tenant\u0000index\u0000value` →
 * owner. A claim takes the value; a release gives it up only if the releasing stream holds it. On PostgreSQL an
 * append's position is taken before its values are, so the log may show a value's new owner claiming it before its
 * old owner's release: that release must not free it.
 */
export const foldClaims = (
  held: Map<string, { tenantId: string; index: string; value: string; streamId: string }>,
  streamId: string,
  tenantId: string,
  claims: string
): boolean => {
  let parsed: { claim?: Array<[string, string]>; release?: Array<[string, string]> }
  try {
    parsed = JSON.parse(claims)
  } catch {
    return false
  }
  const pairs = (list: unknown): list is Array<[string, string]> =>
    list === undefined || (Array.isArray(list) &&
      list.every((p) => Array.isArray(p) && p.length === 2 && typeof p[0] === "string" && typeof p[1] === "string"))
  if (typeof parsed !== "object" || parsed === null || !pairs(parsed.claim) || !pairs(parsed.release)) return false
  for (const [index, value] of parsed.claim ?? []) {
    held.set(`${tenantId}\u0000${index}\u0000${value}`, { tenantId, index, value, streamId })
  }
  for (const [index, value] of parsed.release ?? []) {
    const key = `${tenantId}\u0000${index}\u0000${value}`
    if (held.get(key)?.streamId === streamId) held.delete(key)
  }
  return true
}
