/**
 * Secrets never leak: every credential path the library has (static, environment, directory, encrypted file, Vault,
 * PostgreSQL and NATS taking credentials, their failures and rotations) runs under a capturing logger and a
 * recording tracer, and then no secret value may appear in a log line, an error's message / `String` /
 * `JSON.stringify` / `util.inspect` / pretty cause, a span (name, attributes, events, exit), or the serialized form
 * of any library value holding one (credentials, errors, the Postgres and NATS options). A negative control puts a
 * secret into each channel on purpose and checks the scan finds it, so this test can fail.
 */
import { afterAll, describe, expect, it } from "@effect/vitest"
import * as FetchHttpClient from "@effect/platform/FetchHttpClient"
import * as SqlClient from "@effect/sql/SqlClient"
import * as Credentials from "effect-eventstore/Credentials"
import * as Nats from "effect-eventstore/Nats"
import * as NatsServer from "effect-eventstore/NatsServer"
import * as Postgres from "effect-eventstore/Postgres"
import * as Vault from "effect-eventstore/Vault"
import * as Cause from "effect/Cause"
import * as ConfigProvider from "effect/ConfigProvider"
import * as Context from "effect/Context"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Layer from "effect/Layer"
import * as Logger from "effect/Logger"
import * as LogLevel from "effect/LogLevel"
import * as Redacted from "effect/Redacted"
import * as Schedule from "effect/Schedule"
import * as Tracer from "effect/Tracer"
import * as Crypto from "node:crypto"
import * as Fs from "node:fs"
import * as Http from "node:http"
import type * as Net from "node:net"
import * as Os from "node:os"
import * as Path from "node:path"
import * as Util from "node:util"
import * as Pg from "./fixtures/pg.js"

const inCI = !["", "0", "false"].includes((process.env.CI ?? "").toLowerCase())
const natsInstalled = ["/usr/sbin/nats-server", "/usr/local/bin/nats-server"].some((file) => Fs.existsSync(file))
if (!natsInstalled && !inCI) console.log("noLeak.test.ts: the NATS part is skipped: nats-server is not installed")

/** Every secret of the run: distinctive, so a substring search cannot miss or misfire. */
const secrets = new Map<string, string>()
const secret = (label: string) => {
  const value = `S3CR3T-${label}-${Crypto.randomBytes(6).toString("hex")}`
  secrets.set(label, value)
  return value
}
const leaksIn = (text: string): Array<string> =>
  Array.from(secrets.entries()).filter(([, value]) => text.includes(value)).map(([label]) => label)

/** Every way a value gets printed. */
const renderings = (value: unknown): Array<string> => {
  const out: Array<string> = []
  const attempt = (f: () => string) => {
    try {
      out.push(f())
    } catch (error) {
      out.push(`<unrenderable: ${error}>`)
    }
  }
  attempt(() => String(value))
  attempt(() => JSON.stringify(value) ?? "")
  attempt(() => Util.inspect(value, { depth: 12, showHidden: false }))
  attempt(() => Util.format("%o", value))
  if (value instanceof Error) {
    attempt(() => value.message)
    attempt(() => value.stack ?? "")
    attempt(() => Cause.pretty(Cause.fail(value)))
  }
  return out
}

/** A capturing logger (logfmt and JSON renderings of every entry) and a recording tracer. */
const observe = () => {
  const lines: Array<string> = []
  const spans: Array<Tracer.Span> = []
  const capture = Logger.zip(
    Logger.map(Logger.logfmtLogger, (line) => void lines.push(line)),
    Logger.map(Logger.jsonLogger, (line) => void lines.push(line))
  )
  const withObservation = <A, E, R>(effect: Effect.Effect<A, E, R>) =>
    Effect.flatMap(Effect.tracer, (base) => {
      const recording = Tracer.make({
        span: (...args) => {
          const span = base.span(...args)
          spans.push(span)
          return span
        },
        context: base.context
      })
      return effect.pipe(
        Effect.withTracer(recording),
        Effect.provide(Logger.replace(Logger.defaultLogger, capture)),
        Logger.withMinimumLogLevel(LogLevel.All)
      )
    })
  const spanText = () =>
    spans.map((span) => {
      const parts = [span.name, Util.inspect(Array.from(span.attributes.entries()), { depth: 8 })]
      const events = (span as unknown as { events?: Array<unknown> }).events
      if (events !== undefined) parts.push(Util.inspect(events, { depth: 8 }))
      if (span.status._tag === "Ended" && Exit.isFailure(span.status.exit)) parts.push(Cause.pretty(span.status.exit.cause))
      return parts.join(" ")
    }).join("\n")
  return { lines, spans, withObservation, spanText }
}

// --- a fake Vault (as in vault.test.ts): one secret, one token ------------------------------------------------

const vaultToken = secret("vault-token")
const vaultSecret = secret("vault-password")
const vault = Http.createServer((req, res) => {
  res.setHeader("content-type", "application/json")
  if (req.headers["x-vault-token"] !== vaultToken) {
    res.writeHead(403)
    return res.end(JSON.stringify({ errors: ["permission denied"] }))
  }
  if (req.url !== "/v1/secret/data/db") {
    res.writeHead(404)
    return res.end(JSON.stringify({ errors: [] }))
  }
  res.writeHead(200)
  res.end(JSON.stringify({
    data: {
      data: { username: "app", password: vaultSecret },
      metadata: { created_time: new Date().toISOString(), deletion_time: "", destroyed: false, version: 1 }
    }
  }))
})
await new Promise<void>((resolve) => vault.listen(0, "127.0.0.1", resolve))
const vaultAddress = `http://127.0.0.1:${(vault.address() as Net.AddressInfo).port}`
afterAll(() => new Promise<void>((resolve) => vault.close(() => resolve())))

describe("no secret leaks", () => {
  it.live("negative control: a secret put into a log line, an error, a span or a value is found", () =>
    Effect.gen(function*() {
      const { lines, spanText, withObservation } = observe()
      const planted = secret("planted")
      yield* withObservation(Effect.gen(function*() {
        yield* Effect.logDebug(`oops ${planted}`)
        yield* Effect.void.pipe(Effect.withSpan("leaky", { attributes: { value: planted } }))
      }))
      expect(leaksIn(lines.join("\n"))).toContain("planted")
      expect(leaksIn(spanText())).toContain("planted")
      const error = new Credentials.CredentialInvalid({ name: "x", provider: "y", reason: planted })
      expect(leaksIn(renderings(error).join("\n"))).toContain("planted")
      expect(leaksIn(renderings({ raw: planted }).join("\n"))).toContain("planted")
      secrets.delete("planted")
    }))

  it.live("credentials, providers, consumers and their failures show no secret anywhere", () =>
    Effect.gen(function*() {
      const { lines, spanText, spans, withObservation } = observe()
      const values: Array<unknown> = []
      const errors: Array<unknown> = []
      const keep = <A>(value: A) => {
        values.push(value)
        return value
      }
      const failure = <A, E, R>(effect: Effect.Effect<A, E, R>) =>
        Effect.flatMap(Effect.flip(effect), (error) => Effect.sync(() => void errors.push(error)))

      const dir = Fs.mkdtempSync(Path.join(Os.tmpdir(), "ees-noleak-"))
      const staticToken = secret("static-token")
      const envPassword = secret("env-password")
      const fileToken = secret("file-token")
      const brokenJson = secret("broken-json")
      const invalidDoc = secret("invalid-doc")
      const encPassword = secret("encrypted-password")
      const fileKey = secret("file-key")
      const passphrase = secret("passphrase")
      const natsToken = secret("nats-token")
      const natsWrong = secret("nats-wrong")
      const pgPassword = secret("pg-password")
      const urlPassword = secret("url-password")
      const seed = secret("nkey-seed")
      const tlsKey = secret("tls-key")

      Fs.writeFileSync(Path.join(dir, "file"), `${fileToken}\n`)
      Fs.writeFileSync(Path.join(dir, "broken"), `{ "token": "${brokenJson}"`)
      Fs.writeFileSync(Path.join(dir, "invalid"), JSON.stringify({ type: "user_password", password: invalidDoc }))
      const encFile = Path.join(dir, "secrets.enc")
      const key = Redacted.make(Crypto.randomBytes(32).toString("hex"))

      yield* withObservation(Effect.gen(function*() {
        // the values themselves
        const all = {
          token: keep(Credentials.token(Redacted.make(staticToken))),
          nats: keep(Credentials.natsCreds({ jwt: Redacted.make("eyJ.public.jwt"), seed: Redacted.make(seed) })),
          tls: keep(Credentials.tls({ cert: Redacted.make("CERT"), key: Redacted.make(tlsKey) }))
        }
        yield* Credentials.writeEncryptedFile(encFile, {
          db: Credentials.userPassword("app", Redacted.make(encPassword))
        }, { passphrase: Redacted.make(passphrase), cost: { log2N: 10 } })
        yield* failure(Credentials.writeEncryptedFile(encFile, {}, { key: Redacted.make(fileKey) }))

        const provider = Credentials.chain(
          Credentials.staticProvider(all),
          Credentials.directoryProvider({ path: dir, watch: false }),
          Credentials.encryptedFileProvider({ path: encFile, passphrase: Redacted.make(passphrase), watch: false })
        )
        const credentials = yield* Credentials.make(provider, { ttl: "1 hour", refresh: Schedule.spaced("20 millis") })
        keep(credentials)
        for (const name of ["token", "nats", "tls", "file", "db"]) keep(yield* credentials.get(name))
        // text that starts with { but is not JSON is a token
        keep(yield* credentials.get("broken"))
        yield* failure(credentials.get("invalid"))
        yield* failure(credentials.get("missing"))
        // a rotation logged, and a background refresh failing and logged
        Fs.writeFileSync(Path.join(dir, "file"), `${fileToken}-rotated`)
        keep(yield* credentials.rotate("file"))
        Fs.writeFileSync(Path.join(dir, "file"), JSON.stringify({ type: "user_password", password: fileToken }))
        yield* Effect.sleep("100 millis")
        // the wrong key or passphrase for the encrypted file
        yield* failure(Credentials.make(
          Credentials.encryptedFileProvider({ path: encFile, passphrase: Redacted.make(fileKey), watch: false }),
          { refresh: false }
        ).pipe(Effect.flatMap((c) => c.get("db"))))
        yield* failure(Credentials.make(Credentials.encryptedFileProvider({ path: encFile, key, watch: false }), {
          refresh: false
        }).pipe(Effect.flatMap((c) => c.get("db"))))

        // the environment through Config
        const env = yield* Credentials.envProvider().pipe(
          Effect.withConfigProvider(ConfigProvider.fromMap(new Map([["DB_USERNAME", "app"], ["DB_PASSWORD", envPassword], [
            "BAD_TYPE",
            "user_password"
          ], ["BAD_PASSWORD", envPassword]])))
        )
        keep(yield* env.get("db"))
        yield* failure(env.get("bad"))

        // Vault: a good read (its HTTP span carries the request headers), a bad token
        const vaultOptions = keep({ address: vaultAddress, token: Redacted.make(vaultToken) })
        const fromVault = yield* Effect.flatMap(Vault.provider(vaultOptions), (p) => Credentials.make(p, { refresh: false }))
          .pipe(Effect.provide(FetchHttpClient.layer))
        keep(yield* fromVault.get("db"))
        yield* failure(fromVault.get("nothing"))
        yield* failure(
          Effect.flatMap(
            Vault.provider({ address: vaultAddress, token: Redacted.make(`${vaultToken}-wrong`) }),
            (p) => Credentials.make(p, { refresh: false, retry: Schedule.stop })
          ).pipe(Effect.flatMap((c) => c.get("db")), Effect.provide(FetchHttpClient.layer))
        )

        // PostgreSQL: options holding passwords, a layer on credentials, and a connection that fails
        if (Pg.available) {
          const withPassword = keep<Postgres.Options>({
            url: Redacted.make(`postgres://postgres:${urlPassword}@127.0.0.1:1/none`),
            password: Redacted.make(pgPassword),
            connectTimeout: "2 seconds"
          })
          yield* failure(Layer.build(Postgres.layer(withPassword)))
          const onCredentials = keep<Postgres.CredentialsOptions>({
            url: Redacted.make(Pg.url),
            schema: Pg.freshSchema("noleak"),
            credentials: "pg"
          })
          const context = yield* Layer.build(Postgres.layer(onCredentials).pipe(Layer.provide(
            Credentials.layerStatic({ pg: Credentials.userPassword("postgres", Redacted.make(pgPassword)) })
          )))
          yield* Context.get(context, SqlClient.SqlClient)`SELECT 1`
          yield* failure(Layer.build(Postgres.layer({ ...onCredentials, url: Redacted.make("postgres://127.0.0.1:1/none"), connectTimeout: "2 seconds" }).pipe(Layer.provide(
            Credentials.layerStatic({ pg: Credentials.userPassword("postgres", Redacted.make(pgPassword)) })
          ))))
        }

        // NATS: a token-protected server, a connection on credentials, one with the wrong token
        if (natsInstalled || inCI) {
          const conf = Path.join(dir, "nats.conf")
          Fs.writeFileSync(conf, `authorization { token: ${JSON.stringify(natsToken)} }\n`)
          const server = yield* NatsServer.make({ args: ["-c", conf] })
          const natsOptions = keep<Nats.CredentialsOptions>({ servers: server.url, credentials: "nats" })
          const client = yield* Nats.make(natsOptions).pipe(
            Effect.provide(Credentials.layerStatic({ nats: Credentials.token(Redacted.make(natsToken)) }))
          )
          keep(client)
          yield* Effect.promise(() => client.connection.flush())
          keep<Nats.Options>({ servers: server.url, token: Redacted.make(natsToken), password: Redacted.make(natsToken) })
          // a connection on a fixed token (no Credentials): the client keeps its options on the connection object
          const fixed = yield* Nats.make({ servers: server.url, token: Redacted.make(natsToken) })
          yield* Effect.promise(() => fixed.connection.flush())
          keep(fixed)
          yield* failure(Nats.make({ servers: server.url, credentials: "nats", connectTimeout: "2 seconds" }).pipe(
            Effect.provide(Credentials.layerStatic({ nats: Credentials.token(Redacted.make(natsWrong)) }))
          ))
          // a restart: disconnect and reconnect log lines, authenticated again through the credential
          yield* server.restart
          yield* Effect.tryPromise(() => client.connection.flush()).pipe(
            Effect.retry(Schedule.spaced("100 millis")),
            Effect.timeout("10 seconds")
          )
        }
      }).pipe(Effect.scoped))

      // every path above ran: the failures, the HTTP span with its (redacted) token header, the log lines
      const tags = errors.map((e) => (e as { _tag?: string })._tag)
      expect(tags).toEqual(expect.arrayContaining([
        "CredentialsFileError",
        "CredentialInvalid",
        "CredentialNotFound",
        "CredentialProviderError",
        ...(Pg.available ? ["StoreError"] : []),
        ...(natsInstalled || inCI ? ["NatsError"] : [])
      ]))
      const headerSpan = spans.find((span) => span.attributes.has("http.request.header.x-vault-token"))
      expect(String(headerSpan?.attributes.get("http.request.header.x-vault-token"))).toBe("<redacted>")
      expect(spans.length).toBeGreaterThan(5)
      expect(lines.some((line) => line.includes("changed"))).toBe(true)
      expect(lines.some((line) => line.includes("refreshing"))).toBe(true)
      expect(leaksIn(lines.join("\n"))).toEqual([])
      expect(leaksIn(spanText())).toEqual([])
      expect(leaksIn(errors.flatMap(renderings).join("\n"))).toEqual([])
      expect(leaksIn(values.flatMap(renderings).join("\n"))).toEqual([])
    }), 120_000)
})
