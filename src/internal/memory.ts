/**
 * The memory backend of `EventStore.layerMemory`: the log and the streams as arrays of `StoredEvent`s (JSON text, so
 * a caller mutating what it appended or read never changes what the store holds).
 */
import * as Clock from "effect/Clock"
import * as Effect from "effect/Effect"
import * as Option from "effect/Option"
import { ClaimNotHeld, ConcurrencyError, DuplicateEventError, UniqueConstraintViolation } from "../Errors.js"
import type { AppendResult, EventStoreService } from "../EventStore.js"
import { appendSpan, type Backend, type CommandRecord, fromBackend, nonEmpty } from "./backend.js"
import { foldClaims, type GuardFailure, Replayed } from "./guards.js"
import { prepareAppend, recorded, type StoredEvent, tenantKey, toFoldRows } from "./codec.js"
import { Signal } from "./paging.js"
import { errorTypeOf } from "./instruments.js"
import * as Tracing from "./tracing.js"

export const make: Effect.Effect<EventStoreService> = Effect.gen(function*() {
  const log: Array<StoredEvent> = []
  const streams = new Map<string, Array<StoredEvent>>()
  const eventIds = new Set<string>()
  const signal = new Signal()
  /** Unique values: `tenant \0 index \0 value` → owner. */
  const unique = new Map<string, { tenantId: string; index: string; value: string; streamId: string }>()
  /** Command records by id, oldest first (a record written again moves to the end). */
  const commands = new Map<string, CommandRecord & { readonly expiresAt: number }>()
  /** The claims stored with events, in log order (what a rebuild reads). */
  const claimLog: Array<{ readonly streamId: string; readonly tenantId: string; readonly claims: string }> = []
  const keyOf = (tenantId: string, index: string, value: string) => `${tenantId}\u0000${index}\u0000${value}`

  const append: Backend["append"] = (userStreamId, events, options, tenant) =>
    Effect.flatMap(Clock.currentTimeMillis, (now) =>
      Effect.flatMap(prepareAppend(userStreamId, events, options, now, tenant), (prepared) =>
        Effect.suspend((): Effect.Effect<AppendResult, ConcurrencyError | DuplicateEventError | GuardFailure> => {
          // the stream's key (see `tenantKey`)
          const streamId = prepared.streamId
          const guard = prepared.guard
          const command = guard?.command
          if (command !== undefined) {
            const record = commands.get(command.id)
            if (record !== undefined && record.expiresAt > prepared.recordedAt) {
              return Effect.fail(new Replayed({ commandId: command.id }))
            }
          }
          const stream = streams.get(streamId)
          const actual = stream?.length ?? 0
          const expected = prepared.expected
          const ok = expected === "any" ||
            (expected === "no-stream" ? actual === 0 : expected === "stream-exists" ? actual > 0 : actual === expected)
          if (!ok) return Effect.fail(new ConcurrencyError({ streamId, expected, actual }))
          for (const event of prepared.events) {
            if (eventIds.has(event.eventId)) {
              return Effect.fail(new DuplicateEventError({ streamId, eventId: event.eventId }))
            }
          }
          if (guard !== undefined) {
            for (const change of guard.claims) {
              const owner = unique.get(keyOf(change.tenantId, change.index, change.value))?.streamId
              if (change.first === "claim" && owner !== undefined && owner !== streamId) {
                return Effect.fail(
                  new UniqueConstraintViolation({ streamId, index: change.index, value: change.value, owner })
                )
              }
              if (change.first === "release" && owner !== streamId) {
                return Effect.fail(
                  new ClaimNotHeld({
                    streamId,
                    index: change.index,
                    value: change.value,
                    ...(owner === undefined ? {} : { owner })
                  })
                )
              }
            }
            for (const change of guard.claims) {
              const key = keyOf(change.tenantId, change.index, change.value)
              if (change.last === "claim") unique.set(key, { ...change, streamId })
              else unique.delete(key)
            }
          }
          const rows = stream ?? []
          const positions: Array<number> = []
          for (const event of prepared.events) {
            const row: StoredEvent = {
              position: log.length + 1,
              eventId: event.eventId,
              streamId,
              streamType: prepared.streamType,
              version: rows.length + 1,
              type: event.type,
              schemaVersion: event.schemaVersion,
              payload: event.payloadJson,
              metadata: event.metadataJson,
              recordedAt: prepared.recordedAt
            }
            log.push(row)
            rows.push(row)
            eventIds.add(event.eventId)
            positions.push(row.position)
          }
          if (stream === undefined) streams.set(streamId, rows)
          if (guard !== undefined) {
            for (const event of prepared.events) {
              if (event.claimsJson !== null) {
                claimLog.push({ streamId, tenantId: event.tenantId ?? "", claims: event.claimsJson })
              }
            }
            if (command !== undefined) {
              let purged = 0
              for (const [id, record] of commands) {
                if (record.expiresAt > prepared.recordedAt || purged++ >= 16) break
                commands.delete(id)
              }
              commands.delete(command.id)
              commands.set(command.id, {
                streamId,
                firstVersion: actual + 1,
                lastVersion: rows.length,
                position: positions[positions.length - 1]!,
                expiresAt: command.expiresAt
              })
            }
          }
          signal.notify()
          return Effect.succeed({
            streamId,
            version: rows.length,
            position: positions[positions.length - 1]!,
            events: recorded(prepared, positions, actual + 1)
          })
        })).pipe((effect) =>
          Tracing.withSpanExit(
            effect,
            "EventStore.append",
            () => appendSpan(userStreamId, options?.streamType, events.length),
            (span, exit) => {
              if (exit._tag === "Failure") return span.attribute("error.type", errorTypeOf(exit))
              span.attribute("aggregate.version", exit.value.version)
              if (tenant !== undefined) span.attribute("tenant.id", tenant)
            }
          )
        ))

  const streamRows: Backend["streamRows"] = (streamId, { backward, cursor, from, limit, to }) =>
    Effect.sync(() => {
      const rows = streams.get(streamId) ?? []
      if (backward) {
        const end = Math.min(cursor - 1, rows.length) // highest version wanted
        const start = Math.max(from, end - limit + 1)
        return end < start ? [] : rows.slice(start - 1, end).reverse()
      }
      return rows.slice(cursor, Math.min(cursor + limit, to))
    })

  const logRows: Backend["logRows"] = (filter, _operation, tenant) => {
    const prefix = tenant === undefined ? undefined : tenantKey(tenant, "")
    const types = nonEmpty(filter?.streamTypes)
    const eventTypes = nonEmpty(filter?.eventTypes)
    const typeSet = types && new Set(types)
    const eventSet = eventTypes && new Set(eventTypes)
    return (after, limit) =>
      Effect.sync(() => {
        const out: Array<StoredEvent> = []
        for (let i = after; i < log.length && out.length < limit; i++) {
          const row = log[i]!
          if (typeSet && !typeSet.has(row.streamType)) continue
          if (eventSet && !eventSet.has(row.type)) continue
          if (prefix !== undefined && !row.streamId.startsWith(prefix)) continue
          out.push(row)
        }
        return out
      })
  }

  return fromBackend({
    append,
    version: (streamId) => Effect.sync(() => streams.get(streamId)?.length ?? 0),
    streamRows,
    logRows,
    head: Effect.sync(() => log.length),
    foldRows: (streamId, after, limit, _withRecordedAt) =>
      Effect.sync(() => toFoldRows((streams.get(streamId) ?? []).slice(after, after + limit))),
    signal,
    pollInterval: undefined,
    command: (commandId, now) =>
      Effect.sync(() => {
        const record = commands.get(commandId)
        return record !== undefined && record.expiresAt > now ? Option.some(record) : Option.none()
      }),
    claimOwner: (tenantId, index, value) =>
      Effect.sync(() => Option.fromNullable(unique.get(keyOf(tenantId, index, value))?.streamId)),
    rebuildClaims: Effect.sync(() => {
      unique.clear()
      for (const entry of claimLog) foldClaims(unique, entry.streamId, entry.tenantId, entry.claims)
      return unique.size
    })
  })
})

