/**
 * The Credentials provider conformance suite: one contract (get, not found, invalid, expired, cache, invalidate,
 * rotate and `changes`), run by every provider's test file against a layer that provides `Credentials` (with no
 * background refresh and a long TTL, so what is cached is deterministic) and a `Backing` that writes into the
 * provider's store. Each test uses its own credential names.
 */
import { expect, layer } from "@effect/vitest"
import * as Credentials from "effect-eventstore/Credentials"
import * as Chunk from "effect/Chunk"
import * as Context from "effect/Context"
import * as Effect from "effect/Effect"
import * as Fiber from "effect/Fiber"
import type * as Layer from "effect/Layer"
import * as Option from "effect/Option"
import * as Redacted from "effect/Redacted"
import * as Stream from "effect/Stream"

/** Writes into the store behind the provider under test (fields as in `Credentials.Document`). */
export interface BackingService {
  readonly set: (name: string, fields: Credentials.Document) => Effect.Effect<void>
  readonly remove: (name: string) => Effect.Effect<void>
}

export class Backing extends Context.Tag("test/CredentialsBacking")<Backing, BackingService>() {}

const uid = () => crypto.randomUUID().replace(/-/g, "").slice(0, 10)
export const credentialName = (label: string) => `${label}-${uid()}`

const value = (r: Redacted.Redacted<string> | undefined) => r === undefined ? undefined : Redacted.value(r)

const CREDS = [
  "-----BEGIN NATS USER JWT-----",
  "eyJ0eXAiOiJKV1QiLCJhbGciOiJlZDI1NTE5LW5rZXkifQ.e30.c2lnbmF0dXJl",
  "------END NATS USER JWT------",
  "",
  "-----BEGIN USER NKEY SEED-----",
  "SUAIBDPBAUTWCWBKIO6XHQNINK5FWJW4OHLXC3HQ2KFE4PEJUA44CNHTC4",
  "------END USER NKEY SEED------"
].join("\n")

export interface SuiteOptions {
  /** Whether the backing can hold a malformed document (an encrypted file written by the library cannot). */
  readonly malformed?: boolean
}

export const credentialsSuite = (
  label: string,
  suiteLayer: Layer.Layer<Credentials.Credentials | Backing, unknown>,
  options: SuiteOptions = {}
) =>
  layer(suiteLayer, { excludeTestServices: true, timeout: "30 seconds" })(`Credentials conformance: ${label}`, (it) => {
    it.effect("get returns a username/password with the password Redacted, named and attributed", () =>
      Effect.gen(function*() {
        const backing = yield* Backing
        const credentials = yield* Credentials.Credentials
        const name = credentialName("db")
        yield* backing.set(name, { username: "app", password: "pw-one-Secret" })
        const got = yield* credentials.get(name)
        expect(got._tag).toBe("UserPassword")
        if (got._tag !== "UserPassword") return
        expect(got.username).toBe("app")
        expect(Redacted.isRedacted(got.password)).toBe(true)
        expect(Redacted.value(got.password)).toBe("pw-one-Secret")
        expect(String(got.password)).toBe("<redacted>")
        expect(got.name).toBe(name)
        // a chain answers with the member that had it
        expect(credentials.provider).toContain(got.provider)
      }))

    it.effect("every kind reads back: token, NATS creds body, jwt + seed, TLS, and expires_at", () =>
      Effect.gen(function*() {
        const backing = yield* Backing
        const credentials = yield* Credentials.Credentials
        const [t, c, j, tl] = [credentialName("t"), credentialName("c"), credentialName("j"), credentialName("tls")]
        const later = new Date(Date.now() + 3_600_000)
        yield* backing.set(t, { type: "token", token: "tok-Secret", expires_at: later.toISOString() })
        yield* backing.set(c, { type: "nats", creds: CREDS })
        yield* backing.set(j, { jwt: "jwt-Secret", seed: "SUAseed-Secret" })
        yield* backing.set(tl, { cert: "CERT-Secret", key: "KEY-Secret", ca: "CA-public" })
        const token = yield* credentials.get(t)
        expect(token._tag === "Token" && value(token.token)).toBe("tok-Secret")
        expect(token.expiresAt?.getTime()).toBe(later.getTime())
        const creds = yield* credentials.get(c)
        expect(creds._tag === "NatsCreds" && value(creds.creds)).toBe(CREDS)
        const jwt = yield* credentials.get(j)
        expect(jwt._tag === "NatsCreds" && [value(jwt.jwt), value(jwt.seed), jwt.creds]).toEqual([
          "jwt-Secret",
          "SUAseed-Secret",
          undefined
        ])
        const cert = yield* credentials.get(tl)
        expect(cert._tag === "Tls" && [value(cert.cert), value(cert.key), cert.ca]).toEqual([
          "CERT-Secret",
          "KEY-Secret",
          "CA-public"
        ])
      }))

    it.effect("an unknown name is CredentialNotFound carrying the name and the provider", () =>
      Effect.gen(function*() {
        const credentials = yield* Credentials.Credentials
        const name = credentialName("missing")
        const error = yield* Effect.flip(credentials.get(name))
        expect(error._tag).toBe("CredentialNotFound")
        expect(error.name).toBe(name)
        expect(error.provider).toBe(credentials.provider)
      }))

    it.effect("a past expires_at is CredentialExpired", () =>
      Effect.gen(function*() {
        const backing = yield* Backing
        const credentials = yield* Credentials.Credentials
        const name = credentialName("old")
        yield* backing.set(name, { token: "expired-Secret", expires_at: "2020-01-01T00:00:00.000Z" })
        const error = yield* Effect.flip(credentials.get(name))
        expect(error._tag).toBe("CredentialExpired")
        if (error._tag !== "CredentialExpired") return
        expect(error.expiredAt.toISOString()).toBe("2020-01-01T00:00:00.000Z")
        expect(error.name).toBe(name)
      }))

    if (options.malformed !== false) {
      it.effect("a malformed document is CredentialInvalid naming the field, never the values", () =>
        Effect.gen(function*() {
          const backing = yield* Backing
          const credentials = yield* Credentials.Credentials
          const name = credentialName("bad")
          yield* backing.set(name, { type: "user_password", password: "lonely-Secret" })
          const error = yield* Effect.flip(credentials.get(name))
          expect(error._tag).toBe("CredentialInvalid")
          expect(error.message).toContain("username")
          expect(error.message).not.toContain("lonely-Secret")
          expect(JSON.stringify(error)).not.toContain("lonely-Secret")
        }))
    }

    it.effect("a value is served from the cache until invalidated", () =>
      Effect.gen(function*() {
        const backing = yield* Backing
        const credentials = yield* Credentials.Credentials
        const name = credentialName("cached")
        yield* backing.set(name, { token: "first-Secret" })
        const first = yield* credentials.get(name)
        yield* backing.set(name, { token: "second-Secret" })
        const cached = yield* credentials.get(name)
        expect(cached._tag === "Token" && value(cached.token)).toBe("first-Secret")
        expect(first._tag === "Token" && value(first.token)).toBe("first-Secret")
        yield* credentials.invalidate(name)
        const fresh = yield* credentials.get(name)
        expect(fresh._tag === "Token" && value(fresh.token)).toBe("second-Secret")
      }))

    it.effect("rotate reads the new value, and changes emits the current value then the rotated one", () =>
      Effect.gen(function*() {
        const backing = yield* Backing
        const credentials = yield* Credentials.Credentials
        const name = credentialName("rot")
        yield* backing.set(name, { username: "app", password: "before-Secret" })
        const seen = yield* credentials.changes(name).pipe(Stream.take(2), Stream.runCollect, Effect.fork)
        // the stream has its first value once get has answered
        yield* credentials.get(name)
        yield* Effect.sleep("20 millis")
        yield* backing.set(name, { username: "app", password: "after-Secret" })
        const rotated = yield* credentials.rotate(name)
        expect(rotated._tag === "UserPassword" && value(rotated.password)).toBe("after-Secret")
        const values = Chunk.toReadonlyArray(yield* Fiber.join(seen).pipe(Effect.timeout("5 seconds")))
        expect(values.map((c) => c._tag === "UserPassword" ? value(c.password) : c._tag)).toEqual([
          "before-Secret",
          "after-Secret"
        ])
        const now = yield* credentials.get(name)
        expect(now._tag === "UserPassword" && value(now.password)).toBe("after-Secret")
      }))

    it.effect("rotating to the same value emits nothing new", () =>
      Effect.gen(function*() {
        const backing = yield* Backing
        const credentials = yield* Credentials.Credentials
        const name = credentialName("same")
        yield* backing.set(name, { token: "same-Secret" })
        const seen = yield* credentials.changes(name).pipe(Stream.take(2), Stream.runCollect, Effect.fork)
        yield* credentials.get(name)
        yield* credentials.rotate(name)
        yield* credentials.rotate(name)
        const result = yield* Fiber.join(seen).pipe(Effect.timeout("300 millis"), Effect.option)
        expect(Option.isNone(result)).toBe(true)
        yield* Fiber.interrupt(seen)
      }))

    it.effect("a credential removed from the store is not found once re-read", () =>
      Effect.gen(function*() {
        const backing = yield* Backing
        const credentials = yield* Credentials.Credentials
        const name = credentialName("gone")
        yield* backing.set(name, { token: "gone-Secret" })
        yield* credentials.get(name)
        yield* backing.remove(name)
        const rotated = yield* Effect.flip(credentials.rotate(name))
        expect(rotated._tag).toBe("CredentialNotFound")
        const later = yield* Effect.flip(credentials.get(name))
        expect(later._tag).toBe("CredentialNotFound")
      }))
  })
