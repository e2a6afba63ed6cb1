/**
 * The KeyStore conformance suite, run by every backend against its layer: each operation's contract (put's
 * idempotence and its one winner among concurrent creators, destroy's idempotence and the versions that may follow
 * it, reads of many keys, streams, named values, the audit log's order, paging of key ids in byte order, rewrap,
 * purge, malformed input). Every test uses key ids and names of its own, so tests share one store.
 */
import { expect, layer } from "@effect/vitest"
import * as Effect from "effect/Effect"
import type * as Layer from "effect/Layer"
import * as Option from "effect/Option"
import * as KeyStore from "effect-eventstore/KeyStore"

const uid = () => crypto.randomUUID().replace(/-/g, "").slice(0, 12)
const bytes = (...values: Array<number>) => Uint8Array.from(values)
const key = (keyId: string, version: number, wrapped = bytes(version, 1, 2, 3), kekId = "kek-1"): KeyStore.WrappedKey => ({
  keyId,
  version,
  wrapped,
  kekId,
  createdAt: 1_700_000_000_000 + version
})
const plain = (record: KeyStore.KeyRecord) => ({
  ...record,
  versions: record.versions.map((v) => ({ ...v, wrapped: [...v.wrapped] }))
})

export const keyStoreSuite = (name: string, storeLayer: Layer.Layer<KeyStore.KeyStore, unknown>) =>
  layer(storeLayer, { excludeTestServices: true, timeout: "60 seconds" })(`KeyStore conformance: ${name}`, (it) => {
    it.effect("get: None for a key never created nor destroyed; put adds versions, ascending, bytes as given", () =>
      Effect.gen(function*() {
        const store = yield* KeyStore.KeyStore
        const id = `subject:${uid()}`
        expect(yield* store.get(id)).toEqual(Option.none())
        const first = yield* store.put(key(id, 1, bytes(0, 255, 7)))
        expect(plain(first)).toEqual({
          keyId: id,
          versions: [{ keyId: id, version: 1, wrapped: [0, 255, 7], kekId: "kek-1", createdAt: 1_700_000_000_001 }],
          destroyedThrough: 0,
          destroyedAt: undefined
        })
        yield* store.put(key(id, 3))
        const after = yield* store.put(key(id, 2))
        expect(after.versions.map((v) => v.version)).toEqual([1, 2, 3])
        const got = Option.getOrThrow(yield* store.get(id))
        expect(plain(got)).toEqual(plain(after))
        expect(got.versions[0]!.wrapped).toBeInstanceOf(Uint8Array)
      }))

    it.effect("put is idempotent: an existing (keyId, version) is never replaced", () =>
      Effect.gen(function*() {
        const store = yield* KeyStore.KeyStore
        const id = `subject:${uid()}`
        yield* store.put(key(id, 1, bytes(1, 1, 1), "kek-a"))
        const again = yield* store.put({ ...key(id, 1, bytes(9, 9, 9), "kek-b"), createdAt: 5 })
        expect(plain(again).versions).toEqual([
          { keyId: id, version: 1, wrapped: [1, 1, 1], kekId: "kek-a", createdAt: 1_700_000_000_001 }
        ])
      }))

    it.effect("the store keeps its own copy of the bytes", () =>
      Effect.gen(function*() {
        const store = yield* KeyStore.KeyStore
        const id = `subject:${uid()}`
        const wrapped = bytes(4, 5, 6)
        const record = yield* store.put(key(id, 1, wrapped))
        wrapped.fill(0)
        record.versions[0]!.wrapped.fill(0)
        expect([...Option.getOrThrow(yield* store.get(id)).versions[0]!.wrapped]).toEqual([4, 5, 6])
      }))

    it.effect("concurrent puts of version 1: one wins, and every caller sees the winner", () =>
      Effect.gen(function*() {
        const store = yield* KeyStore.KeyStore
        const id = `subject:${uid()}`
        const candidates = Array.from({ length: 8 }, (_, i) => key(id, 1, bytes(i, i, i, i), `kek-${i}`))
        const results = yield* Effect.forEach(candidates, (candidate) => store.put(candidate), { concurrency: "unbounded" })
        const winner = plain(results[0]!)
        expect(winner.versions).toHaveLength(1)
        expect(candidates.map((c) => c.kekId)).toContain(winner.versions[0]!.kekId)
        for (const result of results) expect(plain(result)).toEqual(winner)
        expect(plain(Option.getOrThrow(yield* store.get(id)))).toEqual(winner)
      }))

    it.effect("destroy: every version's bytes gone, destroyedThrough the highest version, destroyedAt set", () =>
      Effect.gen(function*() {
        const store = yield* KeyStore.KeyStore
        const id = `subject:${uid()}`
        yield* store.put(key(id, 1))
        yield* store.put(key(id, 2))
        const destroyed = yield* store.destroy(id, 1_000)
        expect(destroyed).toEqual({ keyId: id, versions: [], destroyedThrough: 2, destroyedAt: 1_000 })
        expect(Option.getOrThrow(yield* store.get(id))).toEqual(destroyed)
        // idempotent: the same record, destroyedAt the latest
        expect(yield* store.destroy(id, 2_000)).toEqual({ ...destroyed, destroyedAt: 2_000 })
        expect(yield* store.rewrap(id, 2, bytes(1), "kek-2")).toBe(false)
      }))

    it.effect("destroyedSince: the keys destroyed after a time, oldest first, at most limit", () =>
      Effect.gen(function*() {
        const store = yield* KeyStore.KeyStore
        // times of their own (far in the future) so that other tests' destroys do not interleave
        const base = 9_000_000_000_000 + Math.floor(Math.random() * 1_000_000) * 1000
        const ids = [uid(), uid(), uid()].map((u) => `subject:${u}`)
        yield* store.put(key(ids[0]!, 1))
        yield* store.destroy(ids[1]!, base + 20)
        yield* store.destroy(ids[0]!, base + 10)
        yield* store.destroy(ids[2]!, base + 30)
        const all = (yield* store.destroyedSince(base)).filter((d) => ids.includes(d.keyId))
        expect(all).toEqual([
          { keyId: ids[0], destroyedThrough: 1, destroyedAt: base + 10 },
          { keyId: ids[1], destroyedThrough: 0, destroyedAt: base + 20 },
          { keyId: ids[2], destroyedThrough: 0, destroyedAt: base + 30 }
        ])
        expect((yield* store.destroyedSince(base + 10)).filter((d) => ids.includes(d.keyId)).map((d) => d.keyId))
          .toEqual([ids[1], ids[2]])
        expect((yield* store.destroyedSince(base, 1)).map((d) => d.keyId)).toEqual([ids[0]])
      }))

    it.effect("after destroy, versions ≤ destroyedThrough are refused; later ones are live until destroyed too", () =>
      Effect.gen(function*() {
        const store = yield* KeyStore.KeyStore
        const id = `subject:${uid()}`
        yield* store.put(key(id, 1))
        yield* store.put(key(id, 2))
        yield* store.destroy(id, 1_000)
        for (const version of [1, 2]) {
          expect(yield* store.put(key(id, version))).toEqual({
            keyId: id,
            versions: [],
            destroyedThrough: 2,
            destroyedAt: 1_000
          })
        }
        const revived = yield* store.put(key(id, 3))
        expect(revived.versions.map((v) => v.version)).toEqual([3])
        expect(revived.destroyedThrough).toBe(2)
        expect(revived.destroyedAt).toBe(1_000)
        // destroying again raises destroyedThrough to the versions added since
        expect(yield* store.destroy(id, 3_000)).toEqual({ keyId: id, versions: [], destroyedThrough: 3, destroyedAt: 3_000 })
        expect((yield* store.put(key(id, 3))).versions).toEqual([])
      }))

    it.effect("a put racing a destroy never brings back a destroyed version", () =>
      Effect.gen(function*() {
        const store = yield* KeyStore.KeyStore
        for (let round = 0; round < 20; round++) {
          const id = `race:${uid()}`
          yield* store.put(key(id, 1))
          const [destroyed, put] = yield* Effect.all(
            [store.destroy(id, round), store.put(key(id, 1, bytes(9, 9), "kek-racer"))],
            { concurrency: "unbounded" }
          )
          expect(destroyed).toMatchObject({ versions: [], destroyedThrough: 1 })
          expect(Option.getOrThrow(yield* store.get(id))).toMatchObject({ versions: [], destroyedThrough: 1 })
          // the put saw the key before the destroy (the first version 1, kept) or after it (nothing)
          if (put.destroyedThrough === 0) expect(put.versions.map((v) => v.kekId)).toEqual(["kek-1"])
          else expect(put).toMatchObject({ versions: [], destroyedThrough: 1 })
        }
      }))

    it.effect("destroy of a key never created: Some with no versions, destroyedThrough 0; version 1 may follow", () =>
      Effect.gen(function*() {
        const store = yield* KeyStore.KeyStore
        const id = `subject:${uid()}`
        const record = yield* store.destroy(id, 42)
        expect(record).toEqual({ keyId: id, versions: [], destroyedThrough: 0, destroyedAt: 42 })
        expect(yield* store.get(id)).toEqual(Option.some(record))
        expect((yield* store.put(key(id, 1))).versions.map((v) => v.version)).toEqual([1])
      }))

    it.effect("getMany: the records of the ids that have one, live and destroyed, in batches past 500", () =>
      Effect.gen(function*() {
        const store = yield* KeyStore.KeyStore
        const p = uid()
        const [a, b, c, missing] = [`a:${p}`, `b:${p}`, `c:${p}`, `m:${p}`]
        yield* store.put(key(a, 1))
        yield* store.put(key(a, 2))
        yield* store.put(key(b, 1))
        yield* store.destroy(b, 7)
        yield* store.destroy(c, 8)
        const many = yield* store.getMany([a, missing, b, c, a])
        expect([...many.keys()].sort()).toEqual([a, b, c].sort())
        expect(many.get(a)!.versions.map((v) => v.version)).toEqual([1, 2])
        expect(many.get(b)).toEqual({ keyId: b, versions: [], destroyedThrough: 1, destroyedAt: 7 })
        expect(many.get(c)).toEqual({ keyId: c, versions: [], destroyedThrough: 0, destroyedAt: 8 })
        expect((yield* store.getMany([])).size).toBe(0)
        // 1,200 ids (three batches on SQL), the records spread over them
        const ids = Array.from({ length: 1_200 }, (_, i) => `n:${p}:${i}`)
        yield* store.put(key(ids[3]!, 1))
        yield* store.put(key(ids[777]!, 1))
        yield* store.destroy(ids[1_199]!, 9)
        const wide = yield* store.getMany([...ids, a])
        expect([...wide.keys()].sort()).toEqual([ids[3]!, ids[777]!, ids[1_199]!, a].sort())
      }))

    it.effect("track / streamsOf: idempotent, sorted, per key", () =>
      Effect.gen(function*() {
        const store = yield* KeyStore.KeyStore
        const id = `subject:${uid()}`
        const other = `subject:${uid()}`
        expect(yield* store.streamsOf(id)).toEqual([])
        yield* store.track(id, ["Order-2", "Customer-1", "Order-2"])
        yield* store.track(id, ["Customer-1", "Order-10"])
        yield* store.track(id, [])
        yield* store.track(other, ["Elsewhere-1"])
        expect(yield* store.streamsOf(id)).toEqual(["Customer-1", "Order-10", "Order-2"])
        expect(yield* store.streamsOf(other)).toEqual(["Elsewhere-1"])
        const many = Array.from({ length: 1_100 }, (_, i) => `S-${String(i).padStart(4, "0")}`)
        yield* store.track(other, many)
        expect(yield* store.streamsOf(other)).toEqual(["Elsewhere-1", ...many])
      }))

    it.effect("claimMeta stores the first value and returns the stored one; concurrent claims agree; setMeta replaces", () =>
      Effect.gen(function*() {
        const store = yield* KeyStore.KeyStore
        const name = `kek:${uid()}`
        expect(yield* store.claimMeta(name, "fp-1")).toBe("fp-1")
        expect(yield* store.claimMeta(name, "fp-2")).toBe("fp-1")
        yield* store.setMeta(name, "fp-3")
        expect(yield* store.claimMeta(name, "fp-4")).toBe("fp-3")
        const raced = `kek:${uid()}`
        const answers = yield* Effect.forEach(
          Array.from({ length: 8 }, (_, i) => `fp-${i}`),
          (value) => store.claimMeta(raced, value),
          { concurrency: "unbounded" }
        )
        expect(new Set(answers).size).toBe(1)
        expect(answers[0]).toMatch(/^fp-[0-7]$/)
        expect(yield* store.claimMeta(raced, "late")).toBe(answers[0])
        const fresh = `kek:${uid()}`
        yield* store.setMeta(fresh, "set-first")
        expect(yield* store.claimMeta(fresh, "claimed")).toBe("set-first")
      }))

    it.effect("audit log: in the order written, all of it or one key's", () =>
      Effect.gen(function*() {
        const store = yield* KeyStore.KeyStore
        const a = `subject:${uid()}`
        const b = `subject:${uid()}`
        const entries: Array<KeyStore.AuditEntry> = [
          { at: 300, action: "create", keyId: a, detail: "v1" },
          { at: 100, action: "create", keyId: b, detail: "v1" },
          { at: 200, action: "rotate", keyId: a, detail: "v2, kek \"k1\"" },
          { at: 400, action: "forget", keyId: a, detail: "" }
        ]
        for (const entry of entries) yield* store.audit(entry)
        const all = (yield* store.auditLog()).filter((e) => e.keyId === a || e.keyId === b)
        expect(all).toEqual(entries)
        expect(yield* store.auditLog(a)).toEqual(entries.filter((e) => e.keyId === a))
        expect(yield* store.auditLog(`subject:${uid()}`)).toEqual([])
      }))

    it.effect("keyIds: keys with live versions, in byte order, paged with after and limit", () =>
      Effect.gen(function*() {
        const store = yield* KeyStore.KeyStore
        const p = `page:${uid()}/`
        // byte (code point) order: "B" < "Z" < "a" < "é" < "ｦ" (U+FF66) < "😀" (U+1F600); UTF-16 order would put
        // the emoji before U+FF66
        const ids = ["😀", "a", "ｦ", "Z", "é", "B"].map((s) => p + s)
        for (const id of ids) yield* store.put(key(id, 1))
        yield* store.put(key(p + "a", 2))
        yield* store.destroy(p + "gone", 1)
        yield* store.put(key(p + "dead", 1))
        yield* store.destroy(p + "dead", 2)
        const expected = ["B", "Z", "a", "é", "ｦ", "😀"].map((s) => p + s)
        const pages: Array<ReadonlyArray<string>> = []
        let after = p
        for (let i = 0; i < 4; i++) {
          const page = (yield* store.keyIds({ after, limit: 2 })).filter((id) => id.startsWith(p))
          pages.push(page)
          if (page.length < 2) break
          after = page.at(-1)!
        }
        expect(pages.flat()).toEqual(expected)
        expect(pages[0]).toEqual(expected.slice(0, 2))
        expect((yield* store.keyIds({ after: p })).filter((id) => id.startsWith(p))).toEqual(expected)
        const everything = yield* store.keyIds({ limit: 100_000 })
        expect(everything.filter((id) => id.startsWith(p))).toEqual(expected)
        expect([...everything].sort(codePointOrder)).toEqual(everything)
        expect(yield* store.keyIds({ after: expected.at(-1)!, limit: 1 })).not.toContain(expected.at(-1))
      }))

    it.effect("rewrap replaces the bytes and kekId of an existing version only", () =>
      Effect.gen(function*() {
        const store = yield* KeyStore.KeyStore
        const id = `subject:${uid()}`
        yield* store.put(key(id, 1, bytes(1, 1), "kek-old"))
        yield* store.put(key(id, 2, bytes(2, 2), "kek-old"))
        expect(yield* store.rewrap(id, 2, bytes(7, 7, 7), "kek-new")).toBe(true)
        expect(yield* store.rewrap(id, 3, bytes(7), "kek-new")).toBe(false)
        expect(yield* store.rewrap(`subject:${uid()}`, 1, bytes(7), "kek-new")).toBe(false)
        expect(plain(Option.getOrThrow(yield* store.get(id))).versions).toEqual([
          { keyId: id, version: 1, wrapped: [1, 1], kekId: "kek-old", createdAt: 1_700_000_000_001 },
          { keyId: id, version: 2, wrapped: [7, 7, 7], kekId: "kek-new", createdAt: 1_700_000_000_002 }
        ])
      }))

    it.effect("purge completes when nothing else holds the database", () =>
      Effect.gen(function*() {
        const store = yield* KeyStore.KeyStore
        const id = `subject:${uid()}`
        yield* store.put(key(id, 1))
        yield* store.destroy(id, 1)
        expect(yield* store.purge).toEqual({ complete: true })
        expect(yield* store.purge).toEqual({ complete: true })
      }))

    it.effect("malformed input is a StoreError with an InvalidInput cause, and nothing is written", () =>
      Effect.gen(function*() {
        const store = yield* KeyStore.KeyStore
        const id = `subject:${uid()}`
        const bad: Array<[KeyStore.WrappedKey, string]> = [
          [key("", 1), "keyId"],
          [key(id, 0), "version"],
          [key(id, -1), "version"],
          [key(id, 1.5), "version"],
          [key(id, 2 ** 31), "version"],
          [{ ...key(id, 1), createdAt: -1 }, "createdAt"],
          [{ ...key(id, 1), createdAt: Number.NaN }, "createdAt"]
        ]
        for (const [input, field] of bad) {
          const error = yield* Effect.flip(store.put(input))
          expect(error._tag).toBe("StoreError")
          expect(error.operation).toBe("keystore.put")
          expect(error.cause).toMatchObject({ _tag: "InvalidInput", field })
        }
        expect(yield* store.get(id)).toEqual(Option.none())
        expect((yield* Effect.flip(store.destroy(id, -5))).cause).toMatchObject({ _tag: "InvalidInput", field: "at" })
        expect((yield* Effect.flip(store.destroy("", 5))).cause).toMatchObject({ _tag: "InvalidInput", field: "keyId" })
        expect(yield* store.get(id)).toEqual(Option.none())
        for (const limit of [0, -1, 1.5]) {
          expect((yield* Effect.flip(store.keyIds({ limit }))).cause).toMatchObject({ _tag: "InvalidInput", field: "limit" })
        }
        expect((yield* Effect.flip(store.audit({ at: 1.5, action: "x", keyId: id, detail: "" }))).cause)
          .toMatchObject({ _tag: "InvalidInput", field: "at" })
        expect(yield* store.auditLog(id)).toEqual([])
      }))
  })

/** Code point order, independently of the store's: compares the UTF-8 bytes. */
const codePointOrder = (a: string, b: string) => Buffer.compare(Buffer.from(a), Buffer.from(b))
