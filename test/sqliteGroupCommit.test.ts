import { describe, expect, it } from "@effect/vitest"
import { EventStore, Telemetry } from "effect-eventstore"
import * as Sqlite from "effect-eventstore/Sqlite"
import * as Chunk from "effect/Chunk"
import * as Effect from "effect/Effect"
import * as Stream from "effect/Stream"
import { spawn } from "node:child_process"
import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"

const dir = fs.mkdtempSync(path.join(os.tmpdir(), "effect-eventstore-group-"))
const dbFile = (name: string) => path.join(dir, `${name}-${crypto.randomUUID().slice(0, 8)}.db`)
const root = path.resolve(import.meta.dirname, "..")
const collect = <A, E, R>(s: Stream.Stream<A, E, R>) => Effect.map(Stream.runCollect(s), Chunk.toReadonlyArray)

describe("SQLite group commit", () => {
  it.live("a mixed group commits exactly the appends that are fine", () =>
    Effect.gen(function*() {
      const store = yield* EventStore.EventStore
      yield* store.append("Taken-1", [{ type: "A", payload: {}, eventId: "taken-id" }])
      for (let s = 0; s < 10; s++) yield* store.append(`Mixed-${s}`, [{ type: "Seed", payload: {} }])
      const commitsBefore = Telemetry.commits.unsafeValue([]).count
      type Case = { readonly kind: "fine" | "conflict" | "invalid" | "duplicate"; readonly run: Effect.Effect<unknown, EventStore.AppendError> }
      const cases: Array<Case> = []
      for (let i = 0; i < 60; i++) {
        const s = `Mixed-${i % 10}`
        switch (i % 4) {
          case 0: // stale expected version: every stream is at least at version 1
            cases.push({ kind: "conflict", run: store.append(s, [{ type: "Late", payload: { i } }], { expectedVersion: 0 }) })
            break
          case 1:
            cases.push({ kind: "invalid", run: store.append(s, [{ type: "Bad", payload: { n: 1n } }]) })
            break
          case 2:
            cases.push({ kind: "duplicate", run: store.append(s, [{ type: "Dup", payload: { i }, eventId: "taken-id" }]) })
            break
          default:
            cases.push({ kind: "fine", run: store.append(s, [{ type: "Fine", payload: { i } }, { type: "Fine", payload: { i, second: true } }]) })
        }
      }
      const exits = yield* Effect.all(cases.map((c) => Effect.either(c.run)), { concurrency: "unbounded" })
      const expected = { fine: "Right", conflict: "ConcurrencyError", invalid: "InvalidInput", duplicate: "DuplicateEventError" }
      exits.forEach((exit, i) => {
        expect(exit._tag === "Right" ? "Right" : exit.left._tag, `case ${i} (${cases[i]!.kind})`).toBe(expected[cases[i]!.kind])
      })
      // they were committed in groups, not one transaction each
      expect(Telemetry.commits.unsafeValue([]).count - commitsBefore).toBeLessThan(30)
      const written = yield* collect(store.readAll({ filter: { streamTypes: ["Mixed"] } }))
      expect(written.filter((e) => e.type === "Fine").length).toBe(30)
      expect(written.filter((e) => !["Fine", "Seed"].includes(e.type)).length).toBe(0)
      for (let s = 0; s < 10; s++) {
        const versions = written.filter((e) => e.streamId === `Mixed-${s}`).map((e) => e.version)
        expect(versions).toEqual(Array.from({ length: versions.length }, (_, k) => k + 1))
      }
      for (let i = 1; i < written.length; i++) expect(written[i]!.position).toBe(written[i - 1]!.position + 1)
    }).pipe(Effect.provide(Sqlite.layer({ filename: dbFile("mixed") }))))

  it.live("SIGKILL while 32 fibers append: every acknowledged append is there, none half, positions gapless", () =>
    Effect.gen(function*() {
      const filename = dbFile("kill")
      const acked = yield* Effect.async<ReadonlyArray<string>, Error>((resume) => {
        const child = spawn(
          // node itself, with tsx as a loader: the `tsx` command would run the worker in a child process of its
          // own, which a SIGKILL of the command does not reach
          process.execPath,
          ["--import", "tsx", "--conditions=@effect-eventstore/source", path.join(root, "test/fixtures/kill-worker.ts"), filename],
          { cwd: root, stdio: ["ignore", "pipe", "pipe"] }
        )
        let out = ""
        let err = ""
        let killed = false
        child.stdout.on("data", (d) => {
          out += d
          if (!killed && out.split("\n").length > 600) {
            killed = true
            child.kill("SIGKILL")
          }
        })
        child.stderr.on("data", (d) => (err += d))
        child.on("exit", (_code, signal) => {
          const acks = out.split("\n").filter((l) => l.startsWith("ack ")).map((l) => l.slice(4))
          resume(signal === "SIGKILL" ? Effect.succeed(acks) : Effect.fail(new Error(`worker ended without the kill: ${err}`)))
        })
      })
      expect(acked.length).toBeGreaterThan(500)
      const events = yield* Effect.flatMap(EventStore.EventStore, (store) => collect(store.readAll({ pageSize: 1000 }))).pipe(
        Effect.provide(Sqlite.layer({ filename }))
      )
      const parts = new Map<string, number>()
      for (const e of events) {
        const id = (e.payload as { appendId: string }).appendId
        parts.set(id, (parts.get(id) ?? 0) + 1)
      }
      for (const id of acked) expect(parts.get(id), `acknowledged append ${id}`).toBe(3)
      for (const [id, n] of parts) expect(n, `append ${id}`).toBe(3)
      expect(events.map((e) => e.position)).toEqual(Array.from({ length: events.length }, (_, i) => i + 1))
      const streams = new Map<string, Array<number>>()
      for (const e of events) streams.set(e.streamId, [...(streams.get(e.streamId) ?? []), e.version])
      for (const versions of streams.values()) expect(versions).toEqual(versions.map((_, i) => i + 1))
    }), 120_000)
})
