/**
 * The Vault KV v2 provider against a local fake Vault (node:http on 127.0.0.1) that answers with the responses
 * Vault documents for `GET /v1/:mount/data/:path` (KV secrets engine, version 2): the secret under `data.data`,
 * its `data.metadata` (`version`, `created_time`, `deletion_time`, `destroyed`), `{"errors": [...]}` bodies, 403
 * for a bad token, 404 `{"errors": []}` for a missing secret, 404 with the metadata for a deleted one, 404
 * `"no handler for route"` for a mount that does not exist, 503 while sealed; and, for what is not Vault (a wrong
 * address, a proxy), a plain-text 404. No real Vault is involved.
 */
import { afterAll, describe, expect, it } from "@effect/vitest"
import * as FetchHttpClient from "@effect/platform/FetchHttpClient"
import * as Credentials from "effect-eventstore/Credentials"
import * as Vault from "effect-eventstore/Vault"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Redacted from "effect/Redacted"
import * as Schedule from "effect/Schedule"
import * as Http from "node:http"
import type * as Net from "node:net"
import { Backing, credentialsSuite } from "./conformance/Credentials.js"

// --- the fake Vault -------------------------------------------------------------------------------------------

interface Version {
  readonly data: Record<string, string>
  readonly created_time: string
  deletion_time: string
  destroyed: boolean
}

const TOKEN = "hvs.fake-root-Secret"
/** secrets by mount then path, each a list of versions (version n at index n - 1) */
const mounts = new Map<string, Map<string, Array<Version>>>()
const requests: Array<{ readonly url: string; readonly token?: string; readonly namespace?: string }> = []
let failNext: Array<number> = []
let sealed = false
let hang = false
/** answer the headers and the start of a body, then nothing */
let stallBody = false
/** the KV v2 mounts that exist */
const MOUNTED = new Set(["secret", "kv"])
const open = new Set<Http.ServerResponse>()

const mountOf = (name: string) => {
  let mount = mounts.get(name)
  if (mount === undefined) mounts.set(name, mount = new Map())
  return mount
}

const put = (mount: string, path: string, data: Record<string, string>) => {
  const versions = mountOf(mount).get(path) ?? []
  versions.push({ data, created_time: new Date().toISOString(), deletion_time: "", destroyed: false })
  mountOf(mount).set(path, versions)
  return versions.length
}

const reply = (res: Http.ServerResponse, status: number, body: unknown) => {
  res.writeHead(status, { "content-type": "application/json" })
  res.end(JSON.stringify(body))
}

const server = Http.createServer((req, res) => {
  const token = req.headers["x-vault-token"]
  const namespace = req.headers["x-vault-namespace"]
  requests.push({
    url: req.url ?? "",
    ...(typeof token === "string" ? { token } : {}),
    ...(typeof namespace === "string" ? { namespace } : {})
  })
  if (hang) return void open.add(res) // never answers
  if (stallBody) {
    res.writeHead(200, { "content-type": "application/json" })
    res.write(`{"request_id":"x","data":`)
    return void open.add(res)
  }
  const status = failNext.shift()
  if (status !== undefined) return reply(res, status, { errors: ["internal error"] })
  if (sealed) return reply(res, 503, { errors: ["Vault is sealed"] })
  if (token !== TOKEN) return reply(res, 403, { errors: ["permission denied"] })
  const match = /^\/v1\/(.+?)\/data\/(.+)$/.exec(req.url ?? "")
  if (req.method !== "GET" || match === null) {
    // not Vault's API (a wrong address, a proxy in front): a plain 404
    res.writeHead(404, { "content-type": "text/plain" })
    return void res.end("404 page not found")
  }
  if (!MOUNTED.has(decodeURIComponent(match[1]!))) {
    return reply(res, 404, { errors: [`no handler for route "${decodeURIComponent(match[1]!)}/data/${match[2]}". route entry not found.`] })
  }
  const versions = mounts.get(decodeURIComponent(match[1]!))?.get(match[2]!.split("/").map(decodeURIComponent).join("/"))
  const latest = versions?.[versions.length - 1]
  if (latest === undefined) return reply(res, 404, { errors: [] })
  const metadata = {
    created_time: latest.created_time,
    custom_metadata: null,
    deletion_time: latest.deletion_time,
    destroyed: latest.destroyed,
    version: versions!.length
  }
  // Vault answers a deleted or destroyed version with 404 and its metadata
  if (latest.deletion_time !== "" || latest.destroyed) return reply(res, 404, { data: { data: null, metadata } })
  reply(res, 200, {
    request_id: "6ad3c4a4-0d3c-4b3f-9f0c-6d8c3a0d4b6e",
    lease_id: "",
    renewable: false,
    lease_duration: 0,
    data: { data: latest.data, metadata },
    wrap_info: null,
    warnings: null,
    auth: null
  })
})
await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve))
const address = `http://127.0.0.1:${(server.address() as Net.AddressInfo).port}`
afterAll(() =>
  new Promise<void>((resolve) => {
    for (const res of open) res.destroy()
    server.close(() => resolve())
    server.closeAllConnections()
  }))

const reset = () => {
  failNext = []
  sealed = false
  hang = false
  stallBody = false
}

const noRefresh = { refresh: false, ttl: "1 hour" } as const
const vault = (options: Partial<Vault.Options> = {}, cache: Credentials.CacheOptions = {}) =>
  Effect.flatMap(Vault.provider({ address, token: Redacted.make(TOKEN), ...options }), (p) =>
    Credentials.make(p, { ...noRefresh, ...cache })).pipe(Effect.provide(FetchHttpClient.layer))

describe("Vault KV v2", () => {
  it.scoped("maps data.data, metadata.version and created_time, and sends the token and namespace", () =>
    Effect.gen(function*() {
      reset()
      const version = put("kv", "apps/billing/db", { username: "billing", password: "vault-pw-Secret" })
      const credentials = yield* vault({ mount: "kv", namespace: "team-a", path: (name) => `apps/billing/${name}` })
      const got = yield* credentials.get("db")
      expect(got._tag).toBe("UserPassword")
      expect(got._tag === "UserPassword" && [got.username, Redacted.value(got.password)]).toEqual(["billing", "vault-pw-Secret"])
      expect(got.version).toBe(String(version))
      expect(got.createdAt).toBeInstanceOf(Date)
      expect(got.provider).toBe("vault")
      const last = requests[requests.length - 1]!
      expect(last.url).toBe("/v1/kv/data/apps/billing/db")
      expect(last.token).toBe(TOKEN)
      expect(last.namespace).toBe("team-a")
    }))

  it.scoped("403 (bad token) is a provider error, not retried", () =>
    Effect.gen(function*() {
      reset()
      put("secret", "forbidden", { token: "x" })
      const before = requests.length
      const credentials = yield* vault({ token: Redacted.make("hvs.wrong-Secret") }, { retry: Schedule.recurs(3) })
      const error = yield* Effect.flip(credentials.get("forbidden"))
      expect(error._tag).toBe("CredentialProviderError")
      expect(error._tag === "CredentialProviderError" && [error.retryable, error.reason]).toEqual([
        false,
        "permission denied (403): permission denied"
      ])
      expect(requests.length - before).toBe(1)
      expect(error.message).not.toContain("wrong-Secret")
    }))

  it.scoped("5xx and a sealed Vault are retryable: retried under the schedule, then answered", () =>
    Effect.gen(function*() {
      reset()
      put("secret", "flaky", { token: "flaky-Secret" })
      failNext = [500, 502]
      const before = requests.length
      const credentials = yield* vault({}, { retry: Schedule.recurs(3) })
      const got = yield* credentials.get("flaky")
      expect(got._tag === "Token" && Redacted.value(got.token)).toBe("flaky-Secret")
      expect(requests.length - before).toBe(3)
      sealed = true
      const error = yield* Effect.flip(credentials.rotate("flaky"))
      expect(error._tag === "CredentialProviderError" && [error.retryable, error.reason]).toEqual([
        true,
        "Vault answered 503: Vault is sealed"
      ])
      // the cached value is still served while Vault is sealed
      expect((yield* credentials.get("flaky"))._tag).toBe("Token")
    }))

  it.scopedLive("a deleted or destroyed latest version is not found; a request that hangs times out, retryable", () =>
    Effect.gen(function*() {
      reset()
      put("secret", "deleted", { token: "d-Secret" })
      mountOf("secret").get("deleted")![0]!.deletion_time = new Date().toISOString()
      put("secret", "destroyed", { token: "d-Secret" })
      mountOf("secret").get("destroyed")![0]!.destroyed = true
      const credentials = yield* vault({ timeout: "300 millis" }, { retry: Schedule.stop })
      expect((yield* Effect.flip(credentials.get("deleted")))._tag).toBe("CredentialNotFound")
      expect((yield* Effect.flip(credentials.get("destroyed")))._tag).toBe("CredentialNotFound")
      hang = true
      const error = yield* Effect.flip(credentials.get("anything"))
      expect(error._tag === "CredentialProviderError" && error.retryable).toBe(true)
      hang = false
    }))

  it.scoped("the token can come from another credential", () =>
    Effect.gen(function*() {
      reset()
      put("secret", "chained", { token: "inner-Secret" })
      const credentials = yield* Effect.flatMap(
        Vault.provider({ address, token: Vault.tokenFrom("vault-token") }),
        (p) => Credentials.make(p, noRefresh)
      ).pipe(
        Effect.provide(Credentials.layerStatic({ "vault-token": Credentials.token(Redacted.make(TOKEN)) })),
        Effect.provide(FetchHttpClient.layer)
      )
      const got = yield* credentials.get("chained")
      expect(got._tag === "Token" && Redacted.value(got.token)).toBe("inner-Secret")
    }))

  it.scopedLive("the time limit covers the body: headers then a stalled body time out, retryable", () =>
    Effect.gen(function*() {
      reset()
      stallBody = true
      const credentials = yield* vault({ timeout: "300 millis" }, { retry: Schedule.stop })
      const started = Date.now()
      const error = yield* Effect.flip(credentials.get("stalled")).pipe(Effect.timeout("5 seconds"))
      expect(Date.now() - started).toBeLessThan(3000)
      expect(error._tag === "CredentialProviderError" && [error.retryable, error.reason]).toEqual([
        true,
        "no answer within 300ms"
      ])
      stallBody = false
    }))

  it.scoped("only KV v2's own 404 is not found: a missing mount or a 404 that is not Vault's is a provider error", () =>
    Effect.gen(function*() {
      reset()
      const missing = yield* Effect.flip(Effect.flatMap(vault(), (c) => c.get("never-written")))
      expect(missing._tag).toBe("CredentialNotFound")
      const before = requests.length
      const wrongMount = yield* Effect.flip(
        Effect.flatMap(vault({ mount: "kv-typo" }, { retry: Schedule.recurs(3) }), (c) => c.get("db"))
      )
      expect(wrongMount._tag).toBe("CredentialProviderError")
      expect(wrongMount._tag === "CredentialProviderError" && wrongMount.retryable).toBe(false)
      expect(wrongMount.message).toContain("no such mount or path (404): no handler for route")
      expect(requests.length - before).toBe(1)
      const notVault = yield* Effect.flip(
        Effect.flatMap(Vault.provider({ address: `${address}/behind-a-proxy`, token: Redacted.make(TOKEN) }), (p) => p.get("db"))
          .pipe(Effect.provide(FetchHttpClient.layer))
      )
      expect(notVault._tag === "CredentialProviderError" && [notVault.retryable, notVault.reason]).toEqual([
        false,
        "no such mount or path (404)"
      ])
      // in a chain, neither falls through to the fallback
      const fallback = Credentials.staticProvider({ db: Credentials.token(Redacted.make("fallback")) }, "fallback")
      const chained = yield* Effect.flip(
        Effect.flatMap(Vault.provider({ address, token: Redacted.make(TOKEN), mount: "kv-typo" }), (p) =>
          Credentials.chain(p, fallback).get("db")).pipe(Effect.provide(FetchHttpClient.layer))
      )
      expect([chained._tag, chained.provider]).toEqual(["CredentialProviderError", "vault"])
    }))

  it.scoped("a token that cannot be read is the Vault provider's error, and a chain does not fall through", () =>
    Effect.gen(function*() {
      reset()
      put("secret", "db", { token: "vault-db-Secret" })
      const before = requests.length
      const fallback = Credentials.staticProvider({ db: Credentials.token(Redacted.make("fallback")) }, "fallback")
      const credentials = yield* Effect.flatMap(
        Vault.provider({ address, token: Vault.tokenFrom("vault-token") }),
        (p) => Credentials.make(Credentials.chain(p, fallback), noRefresh)
      ).pipe(
        // no "vault-token" in here
        Effect.provide(Credentials.layerStatic({})),
        Effect.provide(FetchHttpClient.layer)
      )
      const error = yield* Effect.flip(credentials.get("db"))
      expect(error._tag === "CredentialProviderError" && [error.name, error.provider, error.reason, error.retryable])
        .toEqual(["db", "vault", "cannot read the Vault token (CredentialNotFound)", false])
      expect(requests.length).toBe(before)
    }))

  it.scoped("a path with .. is refused before any request", () =>
    Effect.gen(function*() {
      reset()
      const before = requests.length
      const credentials = yield* vault()
      expect((yield* Effect.flip(credentials.get("../sys/seal")))._tag).toBe("CredentialInvalid")
      expect(requests.length).toBe(before)
    }))
})

// --- the conformance suite (last: @effect/vitest's `layer` replaces the module's `it.effect`) --------------------

const backing = Layer.succeed(Backing, {
  set: (name, fields) => Effect.sync(() => void put("secret", name, { ...fields })),
  remove: (name) =>
    Effect.sync(() => {
      const versions = mountOf("secret").get(name)
      const latest = versions?.[versions.length - 1]
      if (latest !== undefined) latest.deletion_time = new Date().toISOString()
    })
})

credentialsSuite(
  "vault (fake KV v2 server)",
  Layer.merge(
    Vault.layer({ address, token: Redacted.make(TOKEN) }, noRefresh).pipe(Layer.provide(FetchHttpClient.layer)),
    backing
  )
)
