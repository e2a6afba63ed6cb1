/**
 * Credentials: every file-, environment- and chain-based provider through the conformance suite; the encrypted
 * file's format; the chain's fall-through rule; the cache (TTL, background refresh under a Schedule, retries,
 * expiry, watch); and the consumers: PostgreSQL reading its password per new connection (a real role rotated with
 * ALTER ROLE, and a scram-sha-256 server of our own) and NATS authenticating with a rotated token.
 */
import { describe, expect, it } from "@effect/vitest"
import * as SqlClient from "@effect/sql/SqlClient"
import { EventStore, Health } from "effect-eventstore"
import * as Credentials from "effect-eventstore/Credentials"
import * as Nats from "effect-eventstore/Nats"
import * as NatsServer from "effect-eventstore/NatsServer"
import * as Postgres from "effect-eventstore/Postgres"
import * as Context from "effect/Context"
import type * as Duration from "effect/Duration"
import * as ConfigProvider from "effect/ConfigProvider"
import * as Effect from "effect/Effect"
import * as Fiber from "effect/Fiber"
import * as Layer from "effect/Layer"
import * as Redacted from "effect/Redacted"
import * as Ref from "effect/Ref"
import * as Schedule from "effect/Schedule"
import * as Stream from "effect/Stream"
import * as Chunk from "effect/Chunk"
import * as TestClock from "effect/TestClock"
import * as ChildProcess from "node:child_process"
import * as Crypto from "node:crypto"
import * as Net from "node:net"
import PgDriver from "pg"
import * as Fs from "node:fs"
import * as Os from "node:os"
import * as Path from "node:path"
import { Backing, credentialsSuite } from "./conformance/Credentials.js"
import * as Pg from "./fixtures/pg.js"

const tempDir = (label: string) => Fs.mkdtempSync(Path.join(Os.tmpdir(), `ees-cred-${label}-`))
const secretOf = (c: Credentials.Credential) =>
  c._tag === "Token" ? Redacted.value(c.token) : c._tag === "UserPassword" ? Redacted.value(c.password) : c._tag
const noRefresh = { refresh: false, ttl: "1 hour" } as const

// --- providers ------------------------------------------------------------------------------------------------

describe("providers", () => {
  it.effect("static: answers what it was given, NotFound otherwise", () =>
    Effect.gen(function*() {
      const credentials = yield* Credentials.Credentials
      const got = yield* credentials.get("api")
      expect(got.provider).toBe("static")
      expect(secretOf(got)).toBe("t0ken")
      expect((yield* Effect.flip(credentials.get("other")))._tag).toBe("CredentialNotFound")
    }).pipe(
      Effect.provide(Credentials.layerStatic({ api: Credentials.token(Redacted.make("t0ken")) }, noRefresh))
    ))

  it.effect("env: reads through the ConfigProvider in place when the layer is built, commas and all", () =>
    Effect.gen(function*() {
      const credentials = yield* Credentials.Credentials
      const got = yield* credentials.get("nats-main")
      expect(got._tag).toBe("UserPassword")
      expect(got._tag === "UserPassword" && got.username).toBe("bus")
      expect(secretOf(got)).toBe("p,a ss=word")
    }).pipe(
      Effect.provide(
        Credentials.layerEnv(noRefresh).pipe(
          Layer.provide(Layer.setConfigProvider(ConfigProvider.fromMap(
            new Map([["NATS_MAIN_USERNAME", "bus"], ["NATS_MAIN_PASSWORD", "p,a ss=word"]])
          )))
        )
      )
    ))

  it.effect("directory: a plain file is a token, a .creds body is NatsCreds, text starting with { that is not JSON is a token, a name that cannot be a file is not found", () =>
    Effect.gen(function*() {
      const dir = tempDir("raw")
      Fs.writeFileSync(Path.join(dir, "db_password"), "plain-Secret\n")
      Fs.writeFileSync(
        Path.join(dir, "nats.creds"),
        "-----BEGIN NATS USER JWT-----\neyJhbGciOi\n------END NATS USER JWT------\n"
      )
      Fs.writeFileSync(Path.join(dir, "broken"), "{ not json, has-Secret")
      const credentials = yield* Credentials.make(Credentials.directoryProvider({ path: dir, watch: false }), noRefresh)
      expect(secretOf(yield* credentials.get("db_password"))).toBe("plain-Secret")
      expect((yield* credentials.get("nats.creds"))._tag).toBe("NatsCreds")
      for (const name of ["../etc/passwd", "apps/db", ".hidden", "-x", "a:b"]) {
        const error = yield* Effect.flip(credentials.get(name))
        expect([name, error._tag]).toEqual([name, "CredentialNotFound"])
      }
      const broken = yield* credentials.get("broken")
      expect([broken._tag, secretOf(broken)]).toEqual(["Token", "{ not json, has-Secret"])
      // a JSON object is still a document, and a malformed one is invalid
      Fs.writeFileSync(Path.join(dir, "doc"), JSON.stringify({ type: "user_password", password: "lonely-Secret" }))
      const invalid = yield* Effect.flip(credentials.get("doc"))
      expect(invalid._tag).toBe("CredentialInvalid")
      expect(invalid.message).not.toContain("lonely-Secret")
    }).pipe(Effect.scoped))

  it.live("directory with watch: a rewritten file is emitted on changes without rotate or refresh", () =>
    Effect.gen(function*() {
      const dir = tempDir("watch")
      Fs.writeFileSync(Path.join(dir, "db"), "v1-Secret")
      const credentials = yield* Credentials.make(Credentials.directoryProvider({ path: dir }), noRefresh)
      const seen = yield* credentials.changes("db").pipe(Stream.take(2), Stream.runCollect, Effect.fork)
      yield* credentials.get("db")
      yield* Effect.sleep("50 millis")
      Fs.writeFileSync(Path.join(dir, ".db.tmp"), "v2-Secret")
      Fs.renameSync(Path.join(dir, ".db.tmp"), Path.join(dir, "db"))
      const values = yield* Fiber.join(seen).pipe(Effect.timeout("5 seconds"))
      expect(Chunk.toReadonlyArray(values).map(secretOf)).toEqual(["v1-Secret", "v2-Secret"])
    }).pipe(Effect.scoped))

  it.live("encrypted file with watch: a rewritten file is emitted on changes", () =>
    Effect.gen(function*() {
      const file = Path.join(tempDir("encw"), "s.enc")
      yield* Credentials.writeEncryptedFile(file, { db: Credentials.token(Redacted.make("w1-Secret")) }, { key: keyHex })
      const credentials = yield* Credentials.make(Credentials.encryptedFileProvider({ path: file, key: keyHex }), noRefresh)
      const seen = yield* credentials.changes("db").pipe(Stream.take(2), Stream.runCollect, Effect.fork)
      yield* credentials.get("db")
      yield* Effect.sleep("50 millis")
      yield* Credentials.writeEncryptedFile(file, { db: Credentials.token(Redacted.make("w2-Secret")) }, { key: keyHex })
      const values = yield* Fiber.join(seen).pipe(Effect.timeout("5 seconds"))
      expect(Chunk.toReadonlyArray(values).map(secretOf)).toEqual(["w1-Secret", "w2-Secret"])
    }).pipe(Effect.scoped))
})

describe("decode", () => {
  it.effect("fields that are not Document fields are ignored whatever their type; a Document field must be a string", () =>
    Effect.gen(function*() {
      const got = yield* Credentials.decode("db", "p", {
        username: "app",
        password: Redacted.make("pw-Secret"),
        port: 5432,
        rotation: { days: 30 },
        enabled: true,
        ca: null
      })
      expect([got._tag, secretOf(got)]).toEqual(["UserPassword", "pw-Secret"])
      const error = yield* Effect.flip(Credentials.decode("db", "p", { username: "app", password: 1234 }))
      expect([error._tag, error.message]).toEqual(["CredentialInvalid", `credential "db" from p is invalid: field "password" must be a string`])
    }))
})

/** An encrypted file built by hand, following the documented layout, with a raw key (kdf 0). */
const handMade = (key: Buffer, plaintext: string, aad: (header: Buffer, iv: Buffer) => Buffer | undefined) => {
  const header = Buffer.concat([Buffer.from("EECRED", "ascii"), Buffer.from([1, 0])])
  const iv = Crypto.randomBytes(12)
  const cipher = Crypto.createCipheriv("aes-256-gcm", key, iv)
  const additional = aad(header, iv)
  if (additional !== undefined) cipher.setAAD(additional)
  const ciphertext = Buffer.concat([cipher.update(plaintext, "utf8"), cipher.final()])
  return Buffer.concat([header, iv, cipher.getAuthTag(), ciphertext])
}

/** Decrypts a file written by writeEncryptedFile with node:crypto alone, following the documented layout. */
const decryptByHand = (file: Buffer, key: Buffer, aad: "header and IV" | "none" | "changed") => {
  const offset = file[7] === 0 ? 8 : 12 + file[11]!
  const iv = file.subarray(offset, offset + 12)
  const decipher = Crypto.createDecipheriv("aes-256-gcm", key, iv)
  const additional = Buffer.from(file.subarray(0, offset + 12))
  if (aad === "changed") additional[6] = 2
  if (aad !== "none") decipher.setAAD(additional)
  decipher.setAuthTag(file.subarray(offset + 12, offset + 28))
  return Buffer.concat([decipher.update(file.subarray(offset + 28)), decipher.final()]).toString("utf8")
}

describe("encrypted file format", () => {
  const entries = { db: Credentials.userPassword("app", Redacted.make("format-Secret")) }

  it.effect("key: versioned header, 12-byte random IV, 16-byte tag; no plaintext in the file; owner-only", () =>
    Effect.gen(function*() {
      const file = Path.join(tempDir("fmt"), "a.enc")
      yield* Credentials.writeEncryptedFile(file, entries, { key: keyHex })
      const first = Fs.readFileSync(file)
      yield* Credentials.writeEncryptedFile(file, entries, { key: keyHex })
      const second = Fs.readFileSync(file)
      expect(first.subarray(0, 6).toString("ascii")).toBe("EECRED")
      expect([first[6], first[7]]).toEqual([1, 0])
      // header 8 | IV 12 | tag 16 | ciphertext: same plaintext, a fresh IV, so different bytes
      expect(first.subarray(8, 20).equals(second.subarray(8, 20))).toBe(false)
      expect(first.length).toBe(second.length)
      expect(first.toString("latin1")).not.toContain("format-Secret")
      expect(Fs.statSync(file).mode & 0o777).toBe(0o600)
      // the key in hex and in base64 is the same key
      const b64 = Redacted.make(Buffer.from(Redacted.value(keyHex), "hex").toString("base64"))
      const got = yield* Credentials.make(Credentials.encryptedFileProvider({ path: file, key: b64, watch: false }), noRefresh)
        .pipe(Effect.flatMap((c) => c.get("db")))
      expect(secretOf(got)).toBe("format-Secret")
    }).pipe(Effect.scoped))

  it.effect("passphrase: scrypt salt and cost in the header; a different salt each write", () =>
    Effect.gen(function*() {
      const file = Path.join(tempDir("fmtp"), "p.enc")
      yield* Credentials.writeEncryptedFile(file, entries, { passphrase, cost: { log2N: 11, r: 8, p: 2 } })
      const first = Fs.readFileSync(file)
      expect([first[6], first[7], first[8], first[9], first[10], first[11]]).toEqual([1, 1, 11, 8, 2, 16])
      yield* Credentials.writeEncryptedFile(file, entries, { passphrase, cost: { log2N: 11, r: 8, p: 2 } })
      const second = Fs.readFileSync(file)
      expect(first.subarray(12, 28).equals(second.subarray(12, 28))).toBe(false)
      const got = yield* Credentials.make(Credentials.encryptedFileProvider({ path: file, passphrase, watch: false }), noRefresh)
        .pipe(Effect.flatMap((c) => c.get("db")))
      expect(secretOf(got)).toBe("format-Secret")
    }).pipe(Effect.scoped))

  it.effect("a wrong key, a wrong passphrase, an altered byte (even in the header) or a missing file: ProviderError", () =>
    Effect.gen(function*() {
      const dir = tempDir("bad")
      const file = Path.join(dir, "k.enc")
      const pfile = Path.join(dir, "p.enc")
      yield* Credentials.writeEncryptedFile(file, entries, { key: keyHex })
      yield* Credentials.writeEncryptedFile(pfile, entries, { passphrase, cost: { log2N: 10 } })
      const read = (options: Credentials.EncryptedFileOptions) =>
        Credentials.make(Credentials.encryptedFileProvider({ ...options, watch: false }), noRefresh).pipe(
          Effect.flatMap((c) => Effect.flip(c.get("db"))),
          Effect.scoped
        )
      const other = Redacted.make(Crypto.randomBytes(32).toString("hex"))
      const wrongKey = yield* read({ path: file, key: other })
      expect(wrongKey._tag).toBe("CredentialProviderError")
      expect(wrongKey.message).toContain("decryption failed")
      const wrongPass = yield* read({ path: pfile, passphrase: Redacted.make("nope") })
      expect(wrongPass.message).toContain("decryption failed")
      for (const at of [9, 30, -1]) {
        const bytes = Fs.readFileSync(pfile)
        const i = at < 0 ? bytes.length + at : at
        bytes[i] = bytes[i]! ^ 1
        const altered = Path.join(dir, `altered-${i}.enc`)
        Fs.writeFileSync(altered, bytes)
        const error = yield* read({ path: altered, passphrase })
        expect(error._tag).toBe("CredentialProviderError")
      }
      // the header and IV are the GCM additional data: a file whose tag does not cover them is refused, although
      // its key, IV and ciphertext are right
      const raw = Buffer.from(Redacted.value(keyHex), "hex")
      const plaintext = JSON.stringify({ credentials: { db: { type: "token", token: "hand-Secret" } } })
      const good = Path.join(dir, "hand-good.enc")
      Fs.writeFileSync(good, handMade(raw, plaintext, (header, iv) => Buffer.concat([header, iv])))
      const fromHand = yield* Credentials.make(Credentials.encryptedFileProvider({ path: good, key: keyHex, watch: false }), noRefresh)
        .pipe(Effect.flatMap((c) => c.get("db")), Effect.scoped)
      expect(secretOf(fromHand)).toBe("hand-Secret")
      for (const [label, aad] of [
        ["no AAD", () => undefined],
        ["the header without the IV", (header: Buffer) => header],
        ["another version byte", (header: Buffer, iv: Buffer) => Buffer.concat([header, iv]).fill(2, 6, 7)]
      ] as const) {
        const path = Path.join(dir, `hand-${label.replace(/ /g, "-")}.enc`)
        Fs.writeFileSync(path, handMade(raw, plaintext, aad))
        const error = yield* read({ path, key: keyHex })
        expect([label, error.message]).toEqual([label, expect.stringContaining("decryption failed")])
      }
      // decrypted plaintext that is not an object: a typed error, not a defect
      const nullFile = Path.join(dir, "hand-null.enc")
      Fs.writeFileSync(nullFile, handMade(raw, "null", (header, iv) => Buffer.concat([header, iv])))
      expect((yield* read({ path: nullFile, key: keyHex })).message).toContain("not a credentials map")
      const mixed = yield* read({ path: pfile, key: keyHex })
      expect(mixed.message).toContain("passphrase")
      const missing = yield* read({ path: Path.join(dir, "none.enc"), key: keyHex })
      expect(missing._tag).toBe("CredentialProviderError")
      const badKey = yield* Effect.flip(
        Credentials.writeEncryptedFile(file, entries, { key: Redacted.make("too-short") })
      )
      expect(badKey._tag).toBe("CredentialsFileError")
    }))
})

describe("encrypted file: scrypt cost bounds", () => {
  const header = (log2N: number, r: number, p: number, saltLength: number) =>
    Buffer.concat([
      Buffer.from("EECRED", "ascii"),
      Buffer.from([1, 1, log2N, r, p, saltLength]),
      Crypto.randomBytes(saltLength),
      Crypto.randomBytes(12 + 16 + 40)
    ])

  it.live("a hostile or altered cost in the header is refused at once, as a corrupt header, without deriving", () =>
    Effect.gen(function*() {
      const dir = tempDir("cost")
      const cases: ReadonlyArray<readonly [string, Buffer]> = [
        ["log2N 0 (N = 1)", header(0, 8, 1, 16)],
        ["log2N 24, r 8 (16 GiB)", header(24, 8, 1, 16)],
        ["r 136 (2.2 GiB at N = 2^17)", header(17, 136, 1, 16)],
        ["log2N 21 (2 GiB at r = 8)", header(21, 8, 1, 16)],
        ["log2N 255", header(255, 255, 255, 16)],
        ["p 255", header(10, 8, 255, 16)],
        ["r 0", header(10, 0, 1, 16)],
        ["p 0", header(10, 8, 0, 16)],
        ["salt of 0 bytes", header(10, 8, 1, 0)],
        ["salt of 8 bytes", header(10, 8, 1, 8)],
        ["salt of 65 bytes", header(10, 8, 1, 65)]
      ]
      const started = Date.now()
      for (const [label, bytes] of cases) {
        const path = Path.join(dir, `${label.replace(/[^a-z0-9]+/gi, "-")}.enc`)
        Fs.writeFileSync(path, bytes)
        const error = yield* Credentials.make(
          Credentials.encryptedFileProvider({ path, passphrase, watch: false }),
          noRefresh
        ).pipe(Effect.flatMap((c) => Effect.flip(c.get("db"))), Effect.scoped)
        expect([label, error._tag, error.message]).toEqual([
          label,
          "CredentialProviderError",
          expect.stringContaining("the header is corrupt")
        ])
      }
      // not one derivation ran (the smallest refused one above would take a while, the largest for ever)
      expect(Date.now() - started).toBeLessThan(1000)
    }))

  it.effect("the writer refuses what the reader would refuse, and what it accepts reads back", () =>
    Effect.gen(function*() {
      const file = Path.join(tempDir("costw"), "c.enc")
      const entries = { db: Credentials.token(Redacted.make("cost-Secret")) }
      for (const cost of [{ log2N: 24 }, { log2N: 19, r: 8 }, { log2N: 17, r: 136 }, { p: 5 }, { log2N: 0 }, { r: 0 }, { log2N: 1.5 }]) {
        const error = yield* Effect.flip(Credentials.writeEncryptedFile(file, entries, { passphrase, cost }))
        expect([cost, error._tag]).toEqual([cost, "CredentialsFileError"])
      }
      expect(Fs.existsSync(file)).toBe(false)
      for (const cost of [{ log2N: 1, r: 1, p: 1 }, { log2N: 4, r: 2, p: 4 }]) {
        yield* Credentials.writeEncryptedFile(file, entries, { passphrase, cost })
        const got = yield* Credentials.make(Credentials.encryptedFileProvider({ path: file, passphrase, watch: false }), noRefresh)
          .pipe(Effect.flatMap((c) => c.get("db")), Effect.scoped)
        expect(secretOf(got)).toBe("cost-Secret")
        // and node:crypto alone decrypts it with the documented layout: AAD = header ‖ IV
        const bytes = Fs.readFileSync(file)
        const key = Crypto.scryptSync(Redacted.value(passphrase), bytes.subarray(12, 12 + bytes[11]!), 32, {
          N: 2 ** bytes[8]!,
          r: bytes[9]!,
          p: bytes[10]!
        })
        expect(JSON.parse(decryptByHand(bytes, key, "header and IV"))).toEqual({
          credentials: { db: { type: "token", token: "cost-Secret" } }
        })
        expect(() => decryptByHand(bytes, key, "none")).toThrow()
        expect(() => decryptByHand(bytes, key, "changed")).toThrow()
      }
    }))
})

describe("chain", () => {
  const failing: Credentials.Provider = {
    name: "down",
    get: (name) => Effect.fail(new Credentials.CredentialProviderError({ name, provider: "down", reason: "unreachable", retryable: false }))
  }
  const a = Credentials.staticProvider({ one: Credentials.token(Redacted.make("from-a")) }, "a")
  const b = Credentials.staticProvider({
    one: Credentials.token(Redacted.make("from-b")),
    two: Credentials.token(Redacted.make("from-b"))
  }, "b")

  it.effect("the first member that has the name answers, and the credential names that member", () =>
    Effect.gen(function*() {
      const credentials = yield* Credentials.make(Credentials.chain(a, b), noRefresh)
      const one = yield* credentials.get("one")
      const two = yield* credentials.get("two")
      expect([secretOf(one), one.provider]).toEqual(["from-a", "a"])
      expect([secretOf(two), two.provider]).toEqual(["from-b", "b"])
      const none = yield* Effect.flip(credentials.get("three"))
      expect(none._tag).toBe("CredentialNotFound")
      expect(none.provider).toBe("chain(a, b)")
    }).pipe(Effect.scoped))

  it.effect("a directory first: a name that cannot be a file (a Vault path) falls through to the next member", () =>
    Effect.gen(function*() {
      const dir = tempDir("chaindir")
      Fs.writeFileSync(Path.join(dir, "local"), "local-Secret")
      const vaultLike = Credentials.staticProvider({ "apps/db": Credentials.token(Redacted.make("store-Secret")) }, "store")
      const credentials = yield* Credentials.make(
        Credentials.chain(Credentials.directoryProvider({ path: dir, watch: false }), vaultLike),
        noRefresh
      )
      const got = yield* credentials.get("apps/db")
      expect([secretOf(got), got.provider]).toEqual(["store-Secret", "store"])
      expect(secretOf(yield* credentials.get("local"))).toBe("local-Secret")
    }).pipe(Effect.scoped))

  it.effect("a failing member stops the search: its error is reported, later members are not asked", () =>
    Effect.gen(function*() {
      const credentials = yield* Credentials.make(Credentials.chain(failing, b), noRefresh)
      const error = yield* Effect.flip(credentials.get("two"))
      expect(error._tag).toBe("CredentialProviderError")
      expect(error.provider).toBe("down")
    }).pipe(Effect.scoped))
})

// --- the cache --------------------------------------------------------------------------------------------------

/** A provider over a Ref, counting its reads. */
const counting = (initial: Credentials.Value) =>
  Effect.gen(function*() {
    const current = yield* Ref.make<Credentials.Value | undefined>(initial)
    const reads = yield* Ref.make(0)
    const failures = yield* Ref.make<ReadonlyArray<Credentials.CredentialsError>>([])
    const provider: Credentials.Provider = {
      name: "counting",
      get: (name) =>
        Effect.zipRight(
          Ref.update(reads, (n) => n + 1),
          Effect.flatMap(Ref.modify(failures, ([first, ...rest]) => [first, rest]), (failure) =>
            failure !== undefined
              ? Effect.fail(failure)
              : Effect.flatMap(Ref.get(current), (value) =>
                value === undefined
                  ? Effect.fail(new Credentials.CredentialNotFound({ name, provider: "counting" }))
                  : Effect.succeed({ ...value, name, provider: "counting" })))
        )
    }
    return { provider, current, reads, failures }
  })

describe("cache", () => {
  it.effect("serves from the cache within the TTL and reads again after it", () =>
    Effect.gen(function*() {
      const { provider, reads } = yield* counting(Credentials.token(Redacted.make("x")))
      const credentials = yield* Credentials.make(provider, { ttl: "1 minute", refresh: false })
      yield* credentials.get("k")
      yield* credentials.get("k")
      expect(yield* Ref.get(reads)).toBe(1)
      yield* TestClock.adjust("59 seconds")
      yield* credentials.get("k")
      expect(yield* Ref.get(reads)).toBe(1)
      yield* TestClock.adjust("1 second")
      yield* credentials.get("k")
      expect(yield* Ref.get(reads)).toBe(2)
    }).pipe(Effect.scoped))

  it.effect("when the store is down at a re-read, the cached value is served for another TTL; a deleted one is not", () =>
    Effect.gen(function*() {
      const { current, failures, provider, reads } = yield* counting(Credentials.token(Redacted.make("x")))
      const noRetry = { ttl: "1 minute", refresh: false, retry: Schedule.recurs(0) } as const
      const credentials = yield* Credentials.make(provider, noRetry)
      yield* credentials.get("k")
      yield* TestClock.adjust("61 seconds")
      const down = new Credentials.CredentialProviderError({ name: "k", provider: "counting", reason: "503", retryable: true })
      yield* Ref.set(failures, [down])
      expect(Redacted.value(((yield* credentials.get("k")) as Credentials.Token).token)).toBe("x")
      expect(yield* Ref.get(reads)).toBe(2)
      // served from the cache again, without asking the store, until the next TTL
      yield* credentials.get("k")
      expect(yield* Ref.get(reads)).toBe(2)
      // rotate asks the store and reports its failure
      yield* Ref.set(failures, [down])
      expect((yield* Effect.flip(credentials.rotate("k")))._tag).toBe("CredentialProviderError")
      // gone from the store: not masked
      yield* Ref.set(current, undefined)
      yield* TestClock.adjust("61 seconds")
      expect((yield* Effect.flip(credentials.get("k")))._tag).toBe("CredentialNotFound")
    }).pipe(Effect.scoped))

  it.effect("refreshes in the background under the Schedule, emits a change, and stops with the scope", () =>
    Effect.gen(function*() {
      const { current, provider, reads } = yield* counting(Credentials.token(Redacted.make("r1")))
      const seen = yield* Effect.scoped(Effect.gen(function*() {
        const credentials = yield* Credentials.make(provider, { ttl: "1 hour", refresh: Schedule.spaced("1 minute") })
        const fiber = yield* credentials.changes("k").pipe(Stream.take(2), Stream.runCollect, Effect.fork)
        yield* credentials.get("k")
        yield* Ref.set(current, Credentials.token(Redacted.make("r2")))
        yield* TestClock.adjust("1 minute")
        return yield* Fiber.join(fiber)
      }))
      expect(Chunk.toReadonlyArray(seen).map(secretOf)).toEqual(["r1", "r2"])
      const after = yield* Ref.get(reads)
      yield* TestClock.adjust("10 minutes")
      expect(yield* Ref.get(reads)).toBe(after)
    }))

  it.effect("a failed background refresh keeps the last value and the stream going", () =>
    Effect.gen(function*() {
      const { current, failures, provider } = yield* counting(Credentials.token(Redacted.make("f1")))
      const credentials = yield* Credentials.make(provider, {
        ttl: "1 hour",
        refresh: Schedule.spaced("1 minute"),
        retry: Schedule.stop
      })
      const fiber = yield* credentials.changes("k").pipe(Stream.take(2), Stream.runCollect, Effect.fork)
      yield* credentials.get("k")
      yield* Ref.set(failures, [new Credentials.CredentialProviderError({ name: "k", provider: "counting", reason: "down", retryable: true })])
      yield* TestClock.adjust("1 minute")
      expect(secretOf(yield* credentials.get("k"))).toBe("f1")
      yield* Ref.set(current, Credentials.token(Redacted.make("f2")))
      yield* TestClock.adjust("1 minute")
      expect(Chunk.toReadonlyArray(yield* Fiber.join(fiber)).map(secretOf)).toEqual(["f1", "f2"])
    }).pipe(Effect.scoped))

  it.effect("retries retryable provider errors under the retry schedule; others fail at once", () =>
    Effect.gen(function*() {
      const { failures, provider, reads } = yield* counting(Credentials.token(Redacted.make("ok")))
      const credentials = yield* Credentials.make(provider, {
        refresh: false,
        retry: Schedule.recurs(3)
      })
      const retryable = new Credentials.CredentialProviderError({ name: "k", provider: "counting", reason: "503", retryable: true })
      yield* Ref.set(failures, [retryable, retryable])
      expect(secretOf(yield* credentials.get("k"))).toBe("ok")
      expect(yield* Ref.get(reads)).toBe(3)
      const fatal = new Credentials.CredentialProviderError({ name: "j", provider: "counting", reason: "403", retryable: false })
      yield* Ref.set(failures, [fatal])
      const error = yield* Effect.flip(credentials.get("j"))
      expect(error._tag === "CredentialProviderError" && error.reason).toBe("403")
      expect(yield* Ref.get(reads)).toBe(4)
    }).pipe(Effect.scoped))

  it.effect("an expired credential is read again; still expired, it is CredentialExpired", () =>
    Effect.gen(function*() {
      const { current, provider } = yield* counting(
        Credentials.token(Redacted.make("e1"), { expiresAt: new Date(60_000) })
      )
      const credentials = yield* Credentials.make(provider, { ttl: "1 hour", refresh: false })
      expect(secretOf(yield* credentials.get("k"))).toBe("e1")
      yield* TestClock.adjust("1 minute")
      const error = yield* Effect.flip(credentials.get("k"))
      expect(error._tag).toBe("CredentialExpired")
      yield* Ref.set(current, Credentials.token(Redacted.make("e2"), { expiresAt: new Date(600_000) }))
      expect(secretOf(yield* credentials.get("k"))).toBe("e2")
    }).pipe(Effect.scoped))
})

// --- consumers: PostgreSQL --------------------------------------------------------------------------------------

const inCI = !["", "0", "false"].includes((process.env.CI ?? "").toLowerCase())

/** The newest local PostgreSQL's binaries (initdb, pg_ctl), if installed. */
const pgBin = (() => {
  try {
    const versions = Fs.readdirSync("/usr/lib/postgresql").sort((a, b) => Number(b) - Number(a))
    for (const version of versions) {
      const bin = Path.join("/usr/lib/postgresql", version, "bin")
      if (Fs.existsSync(Path.join(bin, "initdb")) && Fs.existsSync(Path.join(bin, "pg_ctl"))) return bin
    }
  } catch {
    // not installed
  }
  return undefined
})()
const isRoot = process.getuid?.() === 0
if (pgBin === undefined && !inCI) console.log("credentials.test.ts: scram-sha-256 test skipped: PostgreSQL binaries not installed")

const run = (file: string, args: ReadonlyArray<string>) =>
  new Promise<void>((resolve, reject) => {
    // initdb and postgres refuse to run as root: run them as the postgres user
    const [command, argv] = isRoot ? ["runuser", ["-u", "postgres", "--", file, ...args]] : [file, [...args]]
    const child = ChildProcess.spawn(command as string, argv as Array<string>, { stdio: ["ignore", "ignore", "pipe"] })
    let stderr = ""
    child.stderr.on("data", (chunk) => (stderr += String(chunk)))
    child.on("error", reject)
    child.on("exit", (code) => code === 0 ? resolve() : reject(new Error(`${Path.basename(file)} exited ${code}: ${stderr}`)))
  })

/**
 * A PostgreSQL cluster of our own whose every connection needs a scram-sha-256 password (the shared test server
 * trusts 127.0.0.1, where no password is ever asked for), with a superuser `postgres` / `super-pw`. Stopped and
 * removed with the scope.
 */
const scramCluster = Effect.acquireRelease(
  Effect.promise(async () => {
    const dir = Fs.mkdtempSync(Path.join(Os.tmpdir(), "ees-scram-"))
    if (isRoot) Fs.chownSync(dir, Number(ChildProcess.execFileSync("id", ["-u", "postgres"]).toString().trim()), -1)
    Fs.writeFileSync(Path.join(dir, "pw"), "super-pw\n")
    if (isRoot) Fs.chownSync(Path.join(dir, "pw"), Number(ChildProcess.execFileSync("id", ["-u", "postgres"]).toString().trim()), -1)
    const port = await new Promise<number>((resolve) => {
      const server = Net.createServer().listen(0, "127.0.0.1", () => {
        const { port } = server.address() as Net.AddressInfo
        server.close(() => resolve(port))
      })
    })
    const data = Path.join(dir, "data")
    await run(Path.join(pgBin!, "initdb"), ["-D", data, "-A", "scram-sha-256", "-U", "postgres", `--pwfile=${Path.join(dir, "pw")}`, "-N"])
    await run(Path.join(pgBin!, "pg_ctl"), [
      "-D",
      data,
      "-l",
      Path.join(dir, "log"),
      "-w",
      "-o",
      `-p ${port} -k ${dir} -c listen_addresses=127.0.0.1 -c fsync=off`,
      "start"
    ])
    return { dir, data, port, admin: `postgres://postgres:super-pw@127.0.0.1:${port}/postgres` }
  }),
  ({ data, dir }) =>
    Effect.promise(async () => {
      await run(Path.join(pgBin!, "pg_ctl"), ["-D", data, "-m", "immediate", "-w", "stop"]).catch(() => undefined)
      Fs.rmSync(dir, { recursive: true, force: true })
    })
)

const adminQuery = (url: string, text: string) =>
  Effect.promise(async () => {
    const client = new PgDriver.Client({ connectionString: url })
    await client.connect()
    try {
      return (await client.query(text)).rows
    } finally {
      await client.end()
    }
  })

describe.skipIf(!Pg.available)("PostgreSQL with credentials (the shared server)", () => {
  it.live("connects as the credential's user; a missing or unusable credential fails the layer with its typed error", () =>
    Effect.gen(function*() {
      const role = `cred_${process.pid}_${Math.random().toString(36).slice(2, 6)}`
      yield* Effect.promise(() => Pg.query(`CREATE ROLE ${role} LOGIN PASSWORD 'one-Secret'`))
      yield* Effect.promise(() => Pg.query(`GRANT CREATE ON DATABASE ${new URL(Pg.url).pathname.slice(1)} TO ${role}`))
      yield* Effect.addFinalizer(() =>
        Effect.promise(async () => {
          await Pg.query(`SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '${role}'`)
          // the role's schema and its grant go with it
          await Pg.query(`DROP OWNED BY ${role} CASCADE`)
          await Pg.query(`DROP ROLE ${role}`)
        }).pipe(Effect.ignore)
      )
      const schema = Pg.freshSchema("cred")
      const users = yield* Effect.scoped(Effect.gen(function*() {
        const context = yield* Layer.build(
          Postgres.layer({ url: Redacted.make(Pg.url), schema, credentials: "db", maxConnections: 2 }).pipe(
            Layer.provide(Credentials.layerStatic({ db: Credentials.userPassword(role, Redacted.make("one-Secret")) }))
          )
        )
        const sql = Context.get(context, SqlClient.SqlClient)
        return yield* sql<{ user: string }>`SELECT current_user AS user`
      }))
      expect(users[0]!.user).toBe(role)

      const missing = yield* Layer.build(
        Postgres.layer({ url: Redacted.make(Pg.url), schema, credentials: "absent" }).pipe(
          Layer.provide(Credentials.layerStatic({}))
        )
      ).pipe(Effect.scoped, Effect.flip)
      expect(missing._tag).toBe("CredentialNotFound")
      const wrongKind = yield* Layer.build(
        Postgres.layer({ url: Redacted.make(Pg.url), schema, credentials: "cert" }).pipe(
          Layer.provide(Credentials.layerStatic({
            cert: Credentials.tls({ cert: Redacted.make("c"), key: Redacted.make("k") })
          }))
        )
      ).pipe(Effect.scoped, Effect.flip)
      expect(wrongKind._tag).toBe("CredentialInvalid")
    }).pipe(Effect.scoped))
})

describe.skipIf(pgBin === undefined && !inCI)("PostgreSQL with credentials (a scram-sha-256 server)", () => {
  it.live("new connections use the rotated password (ALTER ROLE, then rotate); a wrong one in the credential is refused", () =>
    Effect.gen(function*() {
      const cluster = yield* scramCluster
      yield* adminQuery(cluster.admin, `CREATE ROLE app LOGIN PASSWORD 'first-Secret'`)
      yield* adminQuery(cluster.admin, `CREATE DATABASE app OWNER app`)
      const { current, provider, reads } = yield* counting(Credentials.userPassword("app", Redacted.make("first-Secret")))
      const context = yield* Layer.build(
        Postgres.layer({
          // no user name and no password in the URL: both come from the credential
          url: Redacted.make(`postgres://127.0.0.1:${cluster.port}/app`),
          schema: "store",
          credentials: "db",
          maxConnections: 2
        }).pipe(Layer.provideMerge(Credentials.layer(provider, noRefresh)))
      )
      const sql = Context.get(context, SqlClient.SqlClient)
      const credentials = Context.get(context, Credentials.Credentials)
      const store = Context.get(context, EventStore.EventStore)
      const dropConnections = adminQuery(
        cluster.admin,
        `SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = 'app'`
      ).pipe(Effect.zipRight(Effect.sleep("300 millis")))
      const append = (i: number) =>
        store.append(`Acc-${i}`, [{ type: "Opened", payload: { i } }]).pipe(
          Effect.retry({ schedule: Schedule.spaced("100 millis"), times: 3 })
        )
      yield* append(1)
      expect(yield* Ref.get(reads)).toBe(1)

      // rotate: the server first, then the credential; open connections are dropped so the pool opens new ones
      yield* adminQuery(cluster.admin, `ALTER ROLE app PASSWORD 'second-Secret'`)
      yield* Ref.set(current, Credentials.userPassword("app", Redacted.make("second-Secret")))
      yield* credentials.rotate("db")
      yield* dropConnections
      yield* append(2)
      const [who] = yield* sql<{ user: string }>`SELECT current_user AS user`
      expect(who!.user).toBe("app")

      // negative control: a wrong password in the credential, and new connections are refused
      yield* Ref.set(current, Credentials.userPassword("app", Redacted.make("wrong-Secret")))
      yield* credentials.rotate("db")
      yield* dropConnections
      const refused = yield* Effect.flip(store.append("Acc-3", [{ type: "Opened", payload: {} }]))
      expect(refused._tag).toBe("StoreError")
      expect(JSON.stringify(refused)).not.toContain("wrong-Secret")

      yield* Ref.set(current, Credentials.userPassword("app", Redacted.make("second-Secret")))
      yield* credentials.rotate("db")
      yield* append(4)
    }).pipe(Effect.scoped), 120_000)
})

// --- consumers: NATS ------------------------------------------------------------------------------------------

const natsInstalled = ["/usr/sbin/nats-server", "/usr/local/bin/nats-server"].some((file) => Fs.existsSync(file)) ||
  ChildProcess.spawnSync("nats-server", ["--version"]).status === 0
if (!natsInstalled && !inCI) console.log("credentials.test.ts: NATS tests skipped: nats-server is not installed")

/** A server that accepts only `token` (from a config file we can rewrite before a restart). */
const tokenServer = (token: string) =>
  Effect.gen(function*() {
    const conf = Path.join(tempDir("natsconf"), "auth.conf")
    const write = (value: string) => Fs.writeFileSync(conf, `authorization { token: ${JSON.stringify(value)} }\n`)
    write(token)
    const server = yield* NatsServer.make({ args: ["-c", conf] })
    return { server, write }
  })

const flushWithin = (nc: { flush: () => Promise<void> }, duration: Duration.DurationInput) =>
  Effect.tryPromise(() => nc.flush()).pipe(
    Effect.retry(Schedule.spaced("100 millis")),
    Effect.timeout(duration)
  )

describe.skipIf(!natsInstalled && !inCI)("NATS with credentials", () => {
  it.live("authenticates with the credential, and reconnects with the rotated token; a fixed old token cannot", () =>
    Effect.gen(function*() {
      const { server, write } = yield* tokenServer("tok-one-Secret")
      const { current, provider } = yield* counting(Credentials.token(Redacted.make("tok-one-Secret")))
      const credentials = yield* Credentials.make(provider, noRefresh)
      const client = yield* Nats.make({ servers: server.url, credentials: "nats", reconnectTimeWait: "100 millis" }).pipe(
        Effect.provideService(Credentials.Credentials, credentials)
      )
      const fixed = yield* Nats.make({
        servers: server.url,
        token: Redacted.make("tok-one-Secret"),
        reconnectTimeWait: "100 millis"
      })
      yield* flushWithin(client.connection, "5 seconds")
      yield* flushWithin(fixed.connection, "5 seconds")

      write("tok-two-Secret")
      yield* Ref.set(current, Credentials.token(Redacted.make("tok-two-Secret")))
      yield* credentials.rotate("nats")
      yield* Effect.sleep("100 millis")
      yield* server.restart
      yield* flushWithin(client.connection, "10 seconds")
      expect(client.connection.isClosed()).toBe(false)
      // negative control: the connection with the old token is refused by the restarted server
      const stale = yield* flushWithin(fixed.connection, "2 seconds").pipe(Effect.either)
      expect(stale._tag).toBe("Left")
    }).pipe(Effect.scoped), 60_000)

  it.live("a wrong token fails to connect with NatsError; an unusable credential with its typed error", () =>
    Effect.gen(function*() {
      const { server } = yield* tokenServer("right-Secret")
      const wrong = yield* Nats.make({ servers: server.url, credentials: "nats", connectTimeout: "2 seconds" }).pipe(
        Effect.provide(Credentials.layerStatic({ nats: Credentials.token(Redacted.make("wrong-Secret")) })),
        Effect.flip
      )
      expect(wrong._tag).toBe("NatsError")
      expect(JSON.stringify(wrong)).not.toContain("wrong-Secret")
      const tlsOnly = yield* Nats.make({ servers: server.url, credentials: "nats" }).pipe(
        Effect.provide(Credentials.layerStatic({
          nats: Credentials.tls({ cert: Redacted.make("c"), key: Redacted.make("k") })
        })),
        Effect.flip
      )
      expect(tlsOnly._tag).toBe("CredentialInvalid")
    }).pipe(Effect.scoped), 60_000)
})

describe.skipIf(!natsInstalled && !inCI)("NATS health", () => {
  it.live("connected → healthy, server gone → degraded with a reason, back → healthy, closed → unhealthy", () =>
    Effect.gen(function*() {
      const server = yield* NatsServer.make()
      const health = yield* Health.make()
      const client = yield* Nats.make({ servers: server.url, reconnectTimeWait: "100 millis" }).pipe(
        Effect.provideService(Health.Health, health)
      )
      const natsStatus = Effect.map(health.check, (report) => report.components.find((c) => c.component === "nats"))
      const until = (status: Health.Status) =>
        natsStatus.pipe(
          Effect.filterOrFail((c) => c?.status === status),
          Effect.retry(Schedule.spaced("50 millis")),
          Effect.timeout("10 seconds")
        )
      expect((yield* natsStatus)?.status).toBe("healthy")
      yield* server.stop
      const down = yield* until("degraded")
      expect(down?.reason).toMatch(/disconnected|reconnecting/)
      yield* server.start
      yield* until("healthy")
      yield* Effect.promise(() => client.connection.close())
      const closed = yield* natsStatus
      expect(closed?.status).toBe("unhealthy")
      expect(closed?.reason).toContain("closed")
    }).pipe(Effect.scoped), 60_000)

  it.live("the check is removed when the connection's scope closes", () =>
    Effect.gen(function*() {
      const server = yield* NatsServer.make()
      const health = yield* Health.make()
      yield* Effect.scoped(
        Nats.make({ servers: server.url }).pipe(
          Effect.provideService(Health.Health, health),
          Effect.zipRight(Effect.map(health.check, (r) => expect(r.components.map((c) => c.component)).toContain("nats")))
        )
      )
      expect((yield* health.check).components.map((c) => c.component)).not.toContain("nats")
    }).pipe(Effect.scoped), 60_000)
})

// --- the conformance suite, per provider (last: @effect/vitest's `layer` replaces the module's `it.effect`) ------------------------------------------------------------------------

const envPrefix = `EESTEST_${process.pid}_`
const envKey = (name: string, field: string) => `${envPrefix}${name.replace(/[^A-Za-z0-9]+/g, "_").toUpperCase()}_${field.toUpperCase()}`
const envBacking = Layer.succeed(Backing, {
  set: (name, fields) =>
    Effect.sync(() => {
      for (const field of ["type", "token", "username", "password", "creds", "jwt", "seed", "cert", "key", "ca", "expires_at"]) {
        delete process.env[envKey(name, field)]
      }
      for (const [field, value] of Object.entries(fields)) process.env[envKey(name, field)] = value
    }),
  remove: (name) =>
    Effect.sync(() => {
      for (const key of Object.keys(process.env)) if (key.startsWith(envKey(name, ""))) delete process.env[key]
    })
})
credentialsSuite("env", Layer.merge(Credentials.layerEnv({ prefix: envPrefix, ...noRefresh }), envBacking))

const dirBacking = (dir: string) =>
  Layer.succeed(Backing, {
    set: (name, fields) =>
      Effect.promise(async () => {
        // as Kubernetes and careful tools do: a new file renamed into place
        const temp = Path.join(dir, `.tmp-${name}`)
        await Fs.promises.writeFile(temp, JSON.stringify(fields))
        await Fs.promises.rename(temp, Path.join(dir, name))
      }),
    remove: (name) => Effect.promise(() => Fs.promises.rm(Path.join(dir, name), { force: true }))
  })
const secretsDir = tempDir("dir")
credentialsSuite(
  "directory",
  Layer.merge(Credentials.layerDirectory({ path: secretsDir, watch: false, ...noRefresh }), dirBacking(secretsDir))
)

/** An encrypted file's backing: rewrites the whole file (through the library's writer) on every change. */
const encryptedBacking = (file: string, key: Credentials.FileKey & { cost?: Credentials.ScryptCost }) => {
  const entries: Record<string, Credentials.Value> = {}
  return Layer.succeed(Backing, {
    set: (name, fields) =>
      Credentials.decode(name, "test", fields).pipe(
        Effect.flatMap((credential) => {
          const { name: _n, provider: _p, ...value } = credential
          entries[name] = value as Credentials.Value
          return Credentials.writeEncryptedFile(file, entries, key)
        }),
        Effect.orDie
      ),
    remove: (name) =>
      Effect.suspend(() => {
        delete entries[name]
        return Credentials.writeEncryptedFile(file, entries, key)
      }).pipe(Effect.orDie)
  })
}
const keyHex = Redacted.make(Crypto.randomBytes(32).toString("hex"))
const keyFile = Path.join(tempDir("enc"), "secrets.enc")
await Effect.runPromise(Credentials.writeEncryptedFile(keyFile, {}, { key: keyHex }))
credentialsSuite(
  "encrypted file (key)",
  Layer.merge(
    Credentials.layerEncryptedFile({ path: keyFile, key: keyHex, watch: false, ...noRefresh }),
    encryptedBacking(keyFile, { key: keyHex })
  ),
  { malformed: false }
)
const passFile = Path.join(tempDir("encp"), "secrets.enc")
const passphrase = Redacted.make("correct horse battery staple")
await Effect.runPromise(Credentials.writeEncryptedFile(passFile, {}, { passphrase, cost: { log2N: 10 } }))
credentialsSuite(
  "encrypted file (passphrase)",
  Layer.merge(
    Credentials.layerEncryptedFile({ path: passFile, passphrase, watch: false, ...noRefresh }),
    encryptedBacking(passFile, { passphrase, cost: { log2N: 10 } })
  ),
  { malformed: false }
)

// a chain whose first member never has the names: every answer falls through to the directory
const chainDir = tempDir("chain")
credentialsSuite(
  "chain (static → directory)",
  Layer.merge(
    Credentials.layer(
      Credentials.chain(Credentials.staticProvider({}), Credentials.directoryProvider({ path: chainDir, watch: false })),
      noRefresh
    ),
    dirBacking(chainDir)
  )
)

