import { describe, expect, it } from "@effect/vitest"
import * as SqlClient from "@effect/sql/SqlClient"
import * as LibSql from "effect-eventstore/LibSql"
import * as Sqlite from "effect-eventstore/Sqlite"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Option from "effect/Option"
import Database from "better-sqlite3"
import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"
import * as KeyStore from "effect-eventstore/KeyStore"
import { keyStoreSuite } from "./conformance/KeyStore.js"
import * as Pg from "./fixtures/pg.js"

const dir = fs.mkdtempSync(path.join(os.tmpdir(), "effect-eventstore-keystore-"))
const dbFile = (name: string) => path.join(dir, `${name}-${crypto.randomUUID().slice(0, 8)}.db`)

const sqliteKeys = (filename: string) => KeyStore.layerSql().pipe(Layer.provideMerge(Sqlite.layer({ filename })))

keyStoreSuite("memory", KeyStore.layerMemory)
keyStoreSuite("sqlite", sqliteKeys(dbFile("conformance")))
keyStoreSuite("libsql (local file)", KeyStore.layerSql().pipe(Layer.provide(LibSql.layer({ url: `file:${dbFile("libsql")}` }))))

describe.skipIf(!Pg.available)("PostgreSQL", () => {
  keyStoreSuite("postgres", KeyStore.layerSql().pipe(Layer.provide(Pg.layer("keystore"))))

  it.live("purge inside a transaction does nothing and says so", () =>
    Effect.gen(function*() {
      const store = yield* KeyStore.KeyStore
      const sql = yield* SqlClient.SqlClient
      expect(yield* sql.withTransaction(store.purge)).toEqual({ complete: false })
      expect(yield* store.purge).toEqual({ complete: true })
    }).pipe(Effect.provide(KeyStore.layerSql().pipe(Layer.provideMerge(Pg.layer("keystore_purge"))))))
})

/** 64 bytes no other value in the file has: a fixed xorshift sequence from `seed`. */
const pattern = (seed: number): Uint8Array => {
  let x = seed >>> 0 || 1
  return Uint8Array.from({ length: 64 }, () => {
    x ^= x << 13
    x >>>= 0
    x ^= x >>> 17
    x ^= x << 5
    x >>>= 0
    return x & 0xff
  })
}

const contains = (file: string, bytes: Uint8Array): boolean =>
  fs.existsSync(file) && fs.readFileSync(file).indexOf(Buffer.from(bytes)) >= 0

const wrappedKey = (keyId: string, wrapped: Uint8Array): KeyStore.WrappedKey => ({
  keyId,
  version: 1,
  wrapped,
  kekId: "kek-1",
  createdAt: 1
})

describe("KeyStore on SQLite", () => {
  it.live("destroy then purge leaves none of the key's bytes in the database file or its WAL", () => {
    const filename = dbFile("bytes")
    const wal = `${filename}-wal`
    const [checkpointed, inWal, kept] = [pattern(0x5eed_0001), pattern(0x5eed_0002), pattern(0x5eed_0003)]
    return Effect.gen(function*() {
      const store = yield* KeyStore.KeyStore
      yield* store.put(wrappedKey("subject:checkpointed", checkpointed))
      yield* store.put(wrappedKey("subject:kept", kept))
      expect(yield* store.purge).toEqual({ complete: true })
      // the scan sees what is there: both in the file after the checkpoint
      expect(contains(filename, checkpointed)).toBe(true)
      expect(contains(filename, kept)).toBe(true)
      yield* store.put(wrappedKey("subject:in-wal", inWal))
      expect(contains(wal, inWal)).toBe(true)

      yield* store.destroy("subject:checkpointed", 10)
      yield* store.destroy("subject:in-wal", 10)
      expect(yield* store.purge).toEqual({ complete: true })
      for (const file of [filename, wal]) {
        expect(contains(file, checkpointed), `${path.basename(file)} holds a destroyed key`).toBe(false)
        expect(contains(file, inWal), `${path.basename(file)} holds a destroyed key`).toBe(false)
      }
      expect(contains(filename, kept) || contains(wal, kept)).toBe(true)
      expect([...Option.getOrThrow(yield* store.get("subject:kept")).versions[0]!.wrapped]).toEqual([...kept])
    }).pipe(Effect.provide(sqliteKeys(filename)))
  })

  it.live("purge answers incomplete at once while another connection reads, and completes after", () => {
    const filename = dbFile("busy")
    return Effect.gen(function*() {
      const store = yield* KeyStore.KeyStore
      const sql = yield* SqlClient.SqlClient
      yield* store.put(wrappedKey("subject:a", pattern(1)))
      const reader = new Database(filename)
      try {
        reader.prepare("BEGIN").run()
        reader.prepare("SELECT count(*) FROM eventstore_privacy_keys").get()
        yield* store.put(wrappedKey("subject:b", pattern(2)))
        yield* store.destroy("subject:a", 1)
        const started = Date.now()
        expect(yield* store.purge).toEqual({ complete: false })
        // the connection's busy timeout is 5 s: the checkpoint did not wait for it
        expect(Date.now() - started).toBeLessThan(1_000)
        reader.prepare("ROLLBACK").run()
      } finally {
        reader.close()
      }
      expect(yield* store.purge).toEqual({ complete: true })
      // the connection's own busy timeout is back
      expect(yield* sql<{ timeout: number }>`PRAGMA busy_timeout`).toEqual([{ timeout: 5_000 }])
      expect(yield* sql.withTransaction(store.purge)).toEqual({ complete: false })
    }).pipe(Effect.provide(sqliteKeys(filename)))
  })

  it.live("keys, destroyed state, streams, names and the audit log outlive the process", () => {
    const filename = dbFile("reopen")
    return Effect.gen(function*() {
      yield* Effect.gen(function*() {
        const store = yield* KeyStore.KeyStore
        yield* store.put(wrappedKey("subject:live", Uint8Array.of(1, 2, 3)))
        yield* store.put(wrappedKey("subject:gone", Uint8Array.of(4, 5, 6)))
        yield* store.destroy("subject:gone", 77)
        yield* store.track("subject:live", ["Customer-1"])
        yield* store.claimMeta("kek", "fp-1")
        yield* store.audit({ at: 5, action: "forget", keyId: "subject:gone", detail: "tombstone at 12" })
      }).pipe(Effect.provide(sqliteKeys(filename)))
      yield* Effect.gen(function*() {
        const store = yield* KeyStore.KeyStore
        expect([...Option.getOrThrow(yield* store.get("subject:live")).versions[0]!.wrapped]).toEqual([1, 2, 3])
        expect(yield* store.get("subject:gone")).toEqual(
          Option.some({ keyId: "subject:gone", versions: [], destroyedThrough: 1, destroyedAt: 77 })
        )
        expect((yield* store.put(wrappedKey("subject:gone", Uint8Array.of(9)))).versions).toEqual([])
        expect(yield* store.streamsOf("subject:live")).toEqual(["Customer-1"])
        expect(yield* store.claimMeta("kek", "fp-2")).toBe("fp-1")
        expect(yield* store.auditLog()).toEqual([{ at: 5, action: "forget", keyId: "subject:gone", detail: "tombstone at 12" }])
        expect(yield* store.keyIds()).toEqual(["subject:live"])
      }).pipe(Effect.provide(sqliteKeys(filename)))
    })
  })
})
