/**
 * Credentials: the secrets a service needs to reach its backends (a database password, a NATS token or `.creds`
 * file, a TLS key), read from a provider, cached, refreshed in the background, and rotated without a restart.
 *
 * - `Credentials` is the service: `get(name)` gives the current credential, `changes(name)` a `Stream` of it and
 *   every later rotation, `rotate(name)` re-reads it now, `invalidate(name)` makes the next `get` re-read it.
 * - A `Provider` is where credentials come from: `staticProvider`, `envProvider` (effect `Config`, so any
 *   `ConfigProvider` works), `directoryProvider` (one file per name: Docker / Kubernetes secrets, re-read when a
 *   file changes), `encryptedFileProvider` (AES-256-GCM, written by `writeEncryptedFile`), `chain` (the first
 *   provider that has the name), and `effect-eventstore/Vault` (HashiCorp Vault KV v2). A cloud secret store is
 *   adapted by implementing `Provider` (see its doc) and passing it to `layer`.
 * - Secret parts are `Redacted` from the moment they are read: `String`, `JSON.stringify` and `util.inspect` of a
 *   credential show `<redacted>`; errors carry the credential's name and provider, never a value.
 *
 * Needs nothing beyond `effect` and Node built-ins (`node:crypto`, `node:fs`).
 *
 * @since 0.1.0
 */
import * as Crypto from "node:crypto"
import * as Fs from "node:fs"
import * as Path from "node:path"
import * as Config from "effect/Config"
import * as ConfigError from "effect/ConfigError"
import * as Clock from "effect/Clock"
import * as Context from "effect/Context"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Either from "effect/Either"
import * as Layer from "effect/Layer"
import * as Option from "effect/Option"
import * as Redacted from "effect/Redacted"
import * as Schedule from "effect/Schedule"
import * as Schema from "effect/Schema"
import type * as Scope from "effect/Scope"
import * as Stream from "effect/Stream"
import * as SubscriptionRef from "effect/SubscriptionRef"

// --- credentials --------------------------------------------------------------------------------------------------

/**
 * What every credential may carry besides its secret: when it stops being valid, and the provider's version and
 * creation time of it (Vault's `metadata.version` / `created_time`, for instance).
 *
 * @since 0.1.0
 */
export interface Meta {
  readonly expiresAt?: Date
  readonly version?: string
  readonly createdAt?: Date
}

/**
 * A bearer token (a NATS token, an API token, or a password alone: PostgreSQL takes it as the password).
 *
 * @since 0.1.0
 */
export interface Token extends Meta {
  readonly _tag: "Token"
  readonly token: Redacted.Redacted<string>
}

/**
 * A user name and password. The user name is not treated as a secret (it shows in logs); the password is.
 *
 * @since 0.1.0
 */
export interface UserPassword extends Meta {
  readonly _tag: "UserPassword"
  readonly username: string
  readonly password: Redacted.Redacted<string>
}

/**
 * NATS decentralized auth: either the body of a `.creds` file (`creds`: a user JWT and its nkey seed), or a user
 * JWT and/or an nkey seed on their own (`jwt` + `seed`: JWT auth; `seed` alone: nkey auth; `jwt` alone: a bearer JWT).
 *
 * @since 0.1.0
 */
export interface NatsCreds extends Meta {
  readonly _tag: "NatsCreds"
  readonly creds?: Redacted.Redacted<string>
  readonly jwt?: Redacted.Redacted<string>
  readonly seed?: Redacted.Redacted<string>
}

/**
 * A TLS client certificate and its private key (PEM), with an optional CA bundle (PEM, not secret).
 *
 * @since 0.1.0
 */
export interface Tls extends Meta {
  readonly _tag: "Tls"
  readonly cert: Redacted.Redacted<string>
  readonly key: Redacted.Redacted<string>
  readonly ca?: string
}

/**
 * A credential's value, as a provider holds it: one of four kinds, told apart by `_tag`.
 *
 * @since 0.1.0
 */
export type Value = Token | UserPassword | NatsCreds | Tls

/**
 * A credential as `Credentials.get` returns it: its value, the name it was asked for, and the provider that
 * answered (for a chain, the member that had it).
 *
 * @since 0.1.0
 */
export type Credential = Value & { readonly name: string; readonly provider: string }

const metaOf = (meta: Meta): Meta => ({
  ...(meta.expiresAt !== undefined ? { expiresAt: meta.expiresAt } : {}),
  ...(meta.version !== undefined ? { version: meta.version } : {}),
  ...(meta.createdAt !== undefined ? { createdAt: meta.createdAt } : {})
})

/** @since 0.1.0 */
export const token = (value: Redacted.Redacted<string>, meta: Meta = {}): Token => ({
  _tag: "Token",
  token: value,
  ...metaOf(meta)
})

/** @since 0.1.0 */
export const userPassword = (username: string, password: Redacted.Redacted<string>, meta: Meta = {}): UserPassword => ({
  _tag: "UserPassword",
  username,
  password,
  ...metaOf(meta)
})

/** @since 0.1.0 */
export const natsCreds = (
  parts: {
    readonly creds?: Redacted.Redacted<string>
    readonly jwt?: Redacted.Redacted<string>
    readonly seed?: Redacted.Redacted<string>
  },
  meta: Meta = {}
): NatsCreds => ({
  _tag: "NatsCreds",
  ...(parts.creds !== undefined ? { creds: parts.creds } : {}),
  ...(parts.jwt !== undefined ? { jwt: parts.jwt } : {}),
  ...(parts.seed !== undefined ? { seed: parts.seed } : {}),
  ...metaOf(meta)
})

/** @since 0.1.0 */
export const tls = (
  parts: { readonly cert: Redacted.Redacted<string>; readonly key: Redacted.Redacted<string>; readonly ca?: string },
  meta: Meta = {}
): Tls => ({
  _tag: "Tls",
  cert: parts.cert,
  key: parts.key,
  ...(parts.ca !== undefined ? { ca: parts.ca } : {}),
  ...metaOf(meta)
})

const secretEq = (a: Redacted.Redacted<string> | undefined, b: Redacted.Redacted<string> | undefined) =>
  a === undefined || b === undefined ? a === b : Redacted.value(a) === Redacted.value(b)

/**
 * Whether two credentials are the same (kind, secrets, user name, expiry and version): a refresh that reads the
 * same credential again is not a rotation.
 *
 * @since 0.1.0
 */
export const equals = (a: Value, b: Value): boolean => {
  if (a._tag !== b._tag || a.version !== b.version || a.expiresAt?.getTime() !== b.expiresAt?.getTime()) return false
  switch (a._tag) {
    case "Token":
      return secretEq(a.token, (b as Token).token)
    case "UserPassword":
      return a.username === (b as UserPassword).username && secretEq(a.password, (b as UserPassword).password)
    case "NatsCreds": {
      const o = b as NatsCreds
      return secretEq(a.creds, o.creds) && secretEq(a.jwt, o.jwt) && secretEq(a.seed, o.seed)
    }
    case "Tls": {
      const o = b as Tls
      return secretEq(a.cert, o.cert) && secretEq(a.key, o.key) && a.ca === o.ca
    }
  }
}

// --- errors -------------------------------------------------------------------------------------------------------

/**
 * The provider has no credential of this name (for a chain: none of its members has).
 *
 * @since 0.1.0
 */
export class CredentialNotFound extends Schema.TaggedError<CredentialNotFound>()("CredentialNotFound", {
  name: Schema.String,
  provider: Schema.String
}) {
  override get message(): string {
    return `credential "${this.name}" not found in ${this.provider}`
  }
}

/**
 * The credential's `expiresAt` has passed, and re-reading it gave no newer one.
 *
 * @since 0.1.0
 */
export class CredentialExpired extends Schema.TaggedError<CredentialExpired>()("CredentialExpired", {
  name: Schema.String,
  provider: Schema.String,
  expiredAt: Schema.Date
}) {
  override get message(): string {
    return `credential "${this.name}" from ${this.provider} expired at ${this.expiredAt.toISOString()}`
  }
}

/**
 * The provider has the credential, but it is not usable: a missing field, a field of the wrong type, an unknown
 * `type`, or a kind the consumer cannot use (a TLS credential given to PostgreSQL as its password). `reason` names
 * fields, never values.
 *
 * @since 0.1.0
 */
export class CredentialInvalid extends Schema.TaggedError<CredentialInvalid>()("CredentialInvalid", {
  name: Schema.String,
  provider: Schema.String,
  reason: Schema.String
}) {
  override get message(): string {
    return `credential "${this.name}" from ${this.provider} is invalid: ${this.reason}`
  }
}

/**
 * The provider could not answer: a file unreadable or undecryptable, a secret store unreachable, refusing access or
 * failing. `retryable` says whether trying again may help (a timeout, a 5xx); `Credentials` retries those under its
 * `retry` schedule before reporting this.
 *
 * @since 0.1.0
 */
export class CredentialProviderError extends Schema.TaggedError<CredentialProviderError>()("CredentialProviderError", {
  name: Schema.String,
  provider: Schema.String,
  reason: Schema.String,
  retryable: Schema.Boolean
}) {
  override get message(): string {
    return `credential "${this.name}": ${this.provider} failed: ${this.reason}`
  }
}

/** @since 0.1.0 */
export type CredentialsError = CredentialNotFound | CredentialExpired | CredentialInvalid | CredentialProviderError

/**
 * `writeEncryptedFile` could not write the file (`reason` never holds a secret).
 *
 * @since 0.1.0
 */
export class CredentialsFileError extends Schema.TaggedError<CredentialsFileError>()("CredentialsFileError", {
  path: Schema.String,
  reason: Schema.String
}) {
  override get message(): string {
    return `credentials file ${this.path}: ${this.reason}`
  }
}

// --- the document format ------------------------------------------------------------------------------------------

/**
 * How a credential is written where it is stored as text (a JSON file in a secrets directory, an entry of an
 * encrypted file, a Vault secret's fields, `<NAME>_<FIELD>` environment variables): string fields
 *
 * - `type`: `token`, `user_password`, `nats` or `tls`; when absent it is inferred from the fields present;
 * - `token`; `username` + `password`; `creds` (a `.creds` file body) or `jwt` and/or `seed`; `cert` + `key` (+ `ca`);
 * - `expires_at` (ISO 8601), optional.
 *
 * @since 0.1.0
 */
export type Document = Readonly<Record<string, string>>

const textOf = (value: unknown): string | undefined =>
  typeof value === "string" ? value : Redacted.isRedacted(value) ? String(Redacted.value(value)) : undefined

/**
 * Reads a credential from its stored fields (`Document`). The values of the `Document` fields may be strings or
 * `Redacted` strings (`null` counts as absent); any other type there is invalid. Fields that are not `Document`
 * fields are ignored, whatever their type. For providers you write: `decode(name, "my-store", fields)`.
 *
 * @since 0.1.0
 */
export const decode = (
  name: string,
  provider: string,
  fields: Readonly<Record<string, unknown>>
): Effect.Effect<Credential, CredentialInvalid> =>
  Effect.suspend(() => {
    const invalid = (reason: string) => Effect.fail(new CredentialInvalid({ name, provider, reason }))
    const known = ["type", "token", "username", "password", "creds", "jwt", "seed", "cert", "key", "ca", "expires_at"]
    const strings: Record<string, string> = {}
    for (const [field, value] of Object.entries(fields)) {
      // unknown fields (whatever their type: a Vault secret's `"port": 5432`) are ignored
      if (!known.includes(field) || value === undefined || value === null) continue
      const text = textOf(value)
      if (text === undefined) return invalid(`field "${field}" must be a string`)
      strings[field] = text
    }
    const secret = (field: string) => strings[field] !== undefined ? Redacted.make(strings[field]!) : undefined
    const meta: { expiresAt?: Date } = {}
    if (strings.expires_at !== undefined) {
      const at = new Date(strings.expires_at)
      if (Number.isNaN(at.getTime())) return invalid(`field "expires_at" is not an ISO 8601 date`)
      meta.expiresAt = at
    }
    const has = (field: string) => strings[field] !== undefined && strings[field] !== ""
    const inferred = strings.type ?? (has("token")
      ? "token"
      : has("password") || has("username")
      ? "user_password"
      : has("creds") || has("jwt") || has("seed")
      ? "nats"
      : has("cert") || has("key")
      ? "tls"
      : undefined)
    const stamp = (value: Value): Credential => ({ ...value, name, provider })
    switch (inferred) {
      case undefined:
        return invalid("no credential fields (token, username/password, creds/jwt/seed, cert/key)")
      case "token":
        return has("token") ? Effect.succeed(stamp(token(secret("token")!, meta))) : invalid(`"token" is missing`)
      case "user_password":
        if (!has("username")) return invalid(`"username" is missing`)
        if (!has("password")) return invalid(`"password" is missing`)
        return Effect.succeed(stamp(userPassword(strings.username!, secret("password")!, meta)))
      case "nats":
        if (has("creds") && (has("jwt") || has("seed"))) return invalid(`give "creds", or "jwt" and/or "seed", not both`)
        if (!has("creds") && !has("jwt") && !has("seed")) return invalid(`"creds", "jwt" or "seed" is missing`)
        return Effect.succeed(stamp(natsCreds({
          ...(has("creds") ? { creds: secret("creds")! } : {}),
          ...(has("jwt") ? { jwt: secret("jwt")! } : {}),
          ...(has("seed") ? { seed: secret("seed")! } : {})
        }, meta)))
      case "tls":
        if (!has("cert")) return invalid(`"cert" is missing`)
        if (!has("key")) return invalid(`"key" is missing`)
        return Effect.succeed(stamp(tls({
          cert: secret("cert")!,
          key: secret("key")!,
          ...(has("ca") ? { ca: strings.ca! } : {})
        }, meta)))
      default:
        return invalid(`unknown "type" (expected token, user_password, nats or tls)`)
    }
  })

/** The stored form of a value (secrets in clear): only for writing an encrypted file. */
const toDocument = (value: Value): Record<string, string> => {
  const out: Record<string, string> = {}
  if (value.expiresAt !== undefined) out.expires_at = value.expiresAt.toISOString()
  switch (value._tag) {
    case "Token":
      return { ...out, type: "token", token: Redacted.value(value.token) }
    case "UserPassword":
      return { ...out, type: "user_password", username: value.username, password: Redacted.value(value.password) }
    case "NatsCreds":
      return {
        ...out,
        type: "nats",
        ...(value.creds !== undefined ? { creds: Redacted.value(value.creds) } : {}),
        ...(value.jwt !== undefined ? { jwt: Redacted.value(value.jwt) } : {}),
        ...(value.seed !== undefined ? { seed: Redacted.value(value.seed) } : {})
      }
    case "Tls":
      return {
        ...out,
        type: "tls",
        cert: Redacted.value(value.cert),
        key: Redacted.value(value.key),
        ...(value.ca !== undefined ? { ca: value.ca } : {})
      }
  }
}

// --- providers ----------------------------------------------------------------------------------------------------

/**
 * Where credentials come from. To adapt a secret store (AWS Secrets Manager, GCP Secret Manager, Azure Key Vault …),
 * implement it and pass it to `layer`, which adds caching, background refresh, rotation and `changes`:
 *
 * - `name`: the provider as errors and `Credential.provider` show it (`"aws-secrets-manager"`).
 * - `get(name)`: reads the credential now (no caching: `Credentials` caches). It answers with the credential (build
 *   it with `decode(name, provider, fields)` when the store holds `Document` fields), or fails with
 *   `CredentialNotFound` when the store has no such name (a `chain` then asks the next provider),
 *   `CredentialInvalid` when it is unusable, or `CredentialProviderError` when the store could not answer
 *   (`retryable: true` for timeouts, throttling and 5xx). Never put a secret value in an error.
 * - `watch` (optional): names that may have changed, as the store learns of it (`undefined`: any of them);
 *   `Credentials` re-reads them at once instead of waiting for its refresh schedule.
 *
 * Reading through a KMS (a service that encrypts and decrypts with keys it never hands out) is not a secret store:
 * it has nothing to `get`. Keep a KMS-encrypted blob in a store and decrypt it in your `get`.
 *
 * @example
 * ```ts
 * const Aws: Credentials.Provider = {
 *   name: "aws-secrets-manager",
 *   get: (name) =>
 *     Effect.tryPromise({
 *       try: () => client.send(new GetSecretValueCommand({ SecretId: name })),
 *       catch: (e) => new Credentials.CredentialProviderError({ name, provider: "aws-secrets-manager", reason: "request failed", retryable: true })
 *     }).pipe(Effect.flatMap((out) => Credentials.decode(name, "aws-secrets-manager", JSON.parse(out.SecretString!))))
 * }
 * const CredentialsLive = Credentials.layer(Aws, { ttl: "10 minutes" })
 * ```
 *
 * @since 0.1.0
 */
export interface Provider {
  readonly name: string
  readonly get: (name: string) => Effect.Effect<Credential, CredentialsError>
  readonly watch?: Stream.Stream<string | undefined>
}

/**
 * Fixed credentials, given in code (tests, development). `provider` names it in errors; default `static`.
 *
 * @since 0.1.0
 */
export const staticProvider = (entries: Readonly<Record<string, Value>>, provider = "static"): Provider => ({
  name: provider,
  get: (name) =>
    Object.prototype.hasOwnProperty.call(entries, name)
      ? Effect.succeed({ ...entries[name]!, name, provider })
      : Effect.fail(new CredentialNotFound({ name, provider }))
})

/** `db` → `DB`, `nats-main` → `NATS_MAIN`. */
const constantCase = (name: string) => name.replace(/[^A-Za-z0-9]+/g, "_").toUpperCase()

const envFields = ["type", "token", "username", "password", "creds", "jwt", "seed", "cert", "key", "ca", "expires_at"]

/** @since 0.1.0 */
export interface EnvOptions {
  /** Put before every variable, e.g. `APP_` reads `APP_DB_PASSWORD`; default none. */
  readonly prefix?: string
}

/**
 * Credentials from configuration (effect `Config`, so the environment by default, or whatever `ConfigProvider` is
 * in place when the layer is built). The credential `db` is read from `DB_<FIELD>`: `DB_TOKEN`, or `DB_USERNAME` and
 * `DB_PASSWORD`, or `DB_CREDS` / `DB_JWT` / `DB_SEED`, or `DB_CERT` and `DB_KEY` (and `DB_CA`), plus optional
 * `DB_TYPE` and `DB_EXPIRES_AT` (the `Document` fields, upper-cased). Names are upper-cased with runs of other
 * characters turned into `_` (`nats-main` → `NATS_MAIN_TOKEN`). No variable of a name: `CredentialNotFound`.
 *
 * Every read goes to the `ConfigProvider` again, so a changed value shows on the next refresh or `rotate`.
 *
 * @since 0.1.0
 */
export const envProvider = (options: EnvOptions = {}): Effect.Effect<Provider> =>
  Effect.configProviderWith((configProvider) =>
    Effect.succeed<Provider>({
      name: "env",
      get: (name): Effect.Effect<Credential, CredentialsError> => {
        const base = `${options.prefix ?? ""}${constantCase(name)}_`
        return Effect.forEach(envFields, (field) =>
          Effect.map(
            Config.option(Config.redacted(`${base}${field.toUpperCase()}`)),
            (value) => [field, Option.getOrUndefined(value)] as const
          )).pipe(
            Effect.withConfigProvider(configProvider),
            Effect.mapError((error) =>
              new CredentialProviderError({
                name,
                provider: "env",
                reason: ConfigError.isConfigError(error) ? "the configuration could not be read" : "failed",
                retryable: false
              })
            ),
            Effect.flatMap((pairs): Effect.Effect<Credential, CredentialsError> => {
              const found = pairs.filter(([, value]) => value !== undefined)
              return found.length === 0
                ? Effect.fail(new CredentialNotFound({ name, provider: "env" }))
                : decode(name, "env", Object.fromEntries(found))
            })
          )
      }
    })
  )

const SAFE_NAME = /^[A-Za-z0-9_][A-Za-z0-9_.-]*$/

/**
 * A file's text as a credential: a JSON object (a `Document`), a NATS `.creds` body, or else a token (trimmed).
 * Text that starts with `{` but is not a JSON object is a token too (a generated password may start with `{`).
 */
const parseText = (name: string, provider: string, text: string): Effect.Effect<Credential, CredentialInvalid> => {
  const trimmed = text.trim()
  if (trimmed.startsWith("{")) {
    let fields: unknown = undefined
    try {
      fields = JSON.parse(trimmed)
    } catch {
      // not JSON: a token (the parser's message quotes the text, and is dropped)
    }
    if (typeof fields === "object" && fields !== null && !Array.isArray(fields)) {
      return decode(name, provider, fields as Record<string, unknown>)
    }
  }
  if (trimmed === "") return Effect.fail(new CredentialInvalid({ name, provider, reason: "the file is empty" }))
  if (trimmed.includes("-----BEGIN NATS USER JWT-----")) {
    return Effect.succeed({ ...natsCreds({ creds: Redacted.make(trimmed) }), name, provider })
  }
  return Effect.succeed({ ...token(Redacted.make(trimmed)), name, provider })
}

/** @since 0.1.0 */
export interface DirectoryOptions {
  /** The directory, e.g. `/run/secrets` (Docker) or a mounted Kubernetes secret. */
  readonly path: string
  /** Re-read a credential as soon as its file changes (`fs.watch`); default `true`. */
  readonly watch?: boolean
}

/**
 * One file per credential in a directory (Docker and Kubernetes secrets): the credential `db` is the file `db`.
 * A file holding a JSON object is read as a `Document`; one holding a NATS `.creds` body is a `NatsCreds`; any
 * other text is a `Token` (surrounding whitespace removed; also text that starts with `{` but is not a JSON object),
 * which PostgreSQL takes as its password. A file name is letters, digits, `_`, `.` and `-`, not starting with `.`
 * or `-`; any other name (`apps/db`, `../x`) is `CredentialNotFound` without touching the file system, so a `chain`
 * asks its next member.
 *
 * With `watch`, a changed file (including Kubernetes' atomic swap of `..data`) is re-read at once and a changed
 * credential emitted on `changes`; without it, changes show at the next refresh.
 *
 * @since 0.1.0
 */
export const directoryProvider = (options: DirectoryOptions): Provider => {
  const provider = `directory ${options.path}`
  const watchDir: Stream.Stream<string | undefined> = Stream.asyncScoped<string | undefined>((emit) =>
    Effect.acquireRelease(
      Effect.try(() =>
        Fs.watch(options.path, { persistent: false }, (_event, file) => {
          const name = typeof file === "string" && !file.startsWith("..") ? file : undefined
          void emit.single(name)
        })
      ),
      (watcher) => Effect.sync(() => watcher.close())
    ).pipe(
      Effect.tap((watcher) => Effect.sync(() => watcher.on("error", () => void emit.end()))),
      Effect.catchAll(() => Effect.logWarning(`Credentials: cannot watch ${options.path}; changes show at the next refresh`))
    )
  )
  return {
    name: provider,
    get: (name) =>
      // a name that cannot be a file name is not in the directory (and no path is ever built from it): a chain
      // goes on to its next member
      !SAFE_NAME.test(name)
        ? Effect.fail(new CredentialNotFound({ name, provider }))
        : Effect.tryPromise({
          try: () => Fs.promises.readFile(Path.join(options.path, name), "utf8"),
          catch: (cause) => {
            const code = (cause as NodeJS.ErrnoException).code
            return code === "ENOENT"
              ? new CredentialNotFound({ name, provider })
              : new CredentialProviderError({
                name,
                provider,
                reason: `cannot read the file (${code ?? "error"})`,
                retryable: code === "EMFILE" || code === "EAGAIN"
              })
          }
        }).pipe(Effect.flatMap((text) => parseText(name, provider, text))),
    ...(options.watch === false ? {} : { watch: watchDir })
  }
}

/**
 * The first provider that has the name. `CredentialNotFound` falls through to the next one; any other error
 * (`CredentialInvalid`, `CredentialExpired`, `CredentialProviderError`) stops the search and is reported as it is,
 * so a secret store that is down is never silently replaced by a weaker fallback further down the chain. When no
 * member has the name: `CredentialNotFound` with provider `chain(a, b, …)`.
 *
 * @since 0.1.0
 */
export const chain = (...providers: ReadonlyArray<Provider>): Provider => {
  const name = `chain(${providers.map((p) => p.name).join(", ")})`
  const watches = providers.flatMap((p) => p.watch === undefined ? [] : [p.watch])
  return {
    name,
    get: (credential) => {
      const go = (i: number): Effect.Effect<Credential, CredentialsError> =>
        i >= providers.length
          ? Effect.fail(new CredentialNotFound({ name: credential, provider: name }))
          : Effect.catchTag(providers[i]!.get(credential), "CredentialNotFound", () => go(i + 1))
      return go(0)
    },
    ...(watches.length > 0 ? { watch: Stream.mergeAll(watches, { concurrency: "unbounded" }) } : {})
  }
}

// --- the encrypted file -------------------------------------------------------------------------------------------

/*
 * Layout (version 1), every number big-endian:
 *   "EECRED" (6 bytes) | version 1 (1) | kdf (1: 0 = raw 32-byte key, 1 = scrypt)
 *   [kdf 1: log2 N (1) | r (1) | p (1) | salt length (1) | salt]
 *   IV (12) | GCM tag (16) | ciphertext
 * Everything before the tag (header and IV) is authenticated as additional data, so a changed parameter fails
 * decryption like a changed ciphertext. The plaintext is JSON: `{ "credentials": { "<name>": Document } }`.
 */
const MAGIC = Buffer.from("EECRED", "ascii")
const FORMAT_VERSION = 1

/**
 * scrypt's cost for a passphrase. The bounds, checked when a file is written and again, before any derivation,
 * when it is read (so a file with an altered or hostile header costs nothing to refuse): integers with
 * `log2N ≥ 1`, `r ≥ 1`, `1 ≤ p ≤ 4`, and scrypt's memory `128 · r · 2^log2N` at most 256 MiB (e.g. `log2N` 18 with
 * `r` 8). The salt, written as 16 random bytes, must be 16 to 64 bytes long.
 *
 * @since 0.1.0
 */
export interface ScryptCost {
  /** log2 of scrypt's N; default 17 (N = 131072, 128 MiB with r = 8). */
  readonly log2N?: number
  /** Default 8. */
  readonly r?: number
  /** Default 1; at most 4. */
  readonly p?: number
}

const MAX_SCRYPT_MEMORY = 256 * 1024 * 1024

/** Why a scrypt cost (and salt length) is refused, or `undefined` when it is within the bounds of `ScryptCost`. */
const checkCost = (log2N: number, r: number, p: number, saltLength: number): string | undefined => {
  if (![log2N, r, p, saltLength].every(Number.isInteger)) return "scrypt cost: integers only"
  if (log2N < 1 || r < 1 || p < 1 || p > 4) return "scrypt cost: log2N ≥ 1, r ≥ 1, p 1..4"
  if (128 * r * 2 ** log2N > MAX_SCRYPT_MEMORY) return "scrypt cost: 128 · r · 2^log2N is above 256 MiB"
  if (saltLength < 16 || saltLength > 64) return "scrypt salt: 16..64 bytes"
  return undefined
}

/**
 * The key of an encrypted file: `key`, 32 bytes as 64 hex digits or base64; or `passphrase`, stretched with scrypt
 * (its salt and cost are in the file's header).
 *
 * @since 0.1.0
 */
export type FileKey =
  | { readonly key: Redacted.Redacted<string> }
  | { readonly passphrase: Redacted.Redacted<string> }

const rawKey = (key: Redacted.Redacted<string>): Buffer | undefined => {
  const text = Redacted.value(key).trim()
  if (/^[0-9a-fA-F]{64}$/.test(text)) return Buffer.from(text, "hex")
  if (/^[A-Za-z0-9+/_-]+={0,2}$/.test(text)) {
    const bytes = Buffer.from(text, "base64")
    if (bytes.length === 32) return bytes
  }
  return undefined
}

/** Only after `checkCost` accepted the cost. Never throws: node's synchronous parameter errors reject. */
const scrypt = (passphrase: Redacted.Redacted<string>, salt: Buffer, log2N: number, r: number, p: number) =>
  new Promise<Buffer>((resolve, reject) => {
    const N = 2 ** log2N
    try {
      // off the main thread (libuv's pool): a 128 MiB derivation takes a good fraction of a second
      Crypto.scrypt(Redacted.value(passphrase), salt, 32, { N, r, p, maxmem: 256 * N * r + 32 * 1024 * 1024 }, (e, key) =>
        e ? reject(e) : resolve(key))
    } catch (e) {
      reject(e)
    }
  })

/**
 * Writes an encrypted credentials file (AES-256-GCM with a fresh random IV; with a passphrase, a fresh random salt),
 * atomically (a new temporary file, synced to disk, renamed over the old one), readable by its owner only (mode
 * 0600). A passphrase's `cost` must be within the bounds of `ScryptCost`. Use it to create the file
 * `encryptedFileProvider` reads, and again to rotate a value in it.
 *
 * @example
 * ```ts
 * yield* Credentials.writeEncryptedFile("secrets.enc", {
 *   db: Credentials.userPassword("app", Redacted.make("s3cret"))
 * }, { passphrase: Redacted.make(process.env.SECRETS_PASSPHRASE!) })
 * ```
 *
 * @since 0.1.0
 */
export const writeEncryptedFile = (
  path: string,
  entries: Readonly<Record<string, Value>>,
  key: FileKey & { readonly cost?: ScryptCost }
): Effect.Effect<void, CredentialsFileError> =>
  Effect.gen(function*() {
    const fail = (reason: string) => new CredentialsFileError({ path, reason })
    let header: Buffer
    let aesKey: Buffer
    if ("key" in key) {
      const raw = rawKey(key.key)
      if (raw === undefined) return yield* fail("the key must be 32 bytes, as 64 hex digits or base64")
      aesKey = raw
      header = Buffer.concat([MAGIC, Buffer.from([FORMAT_VERSION, 0])])
    } else {
      const log2N = key.cost?.log2N ?? 17
      const r = key.cost?.r ?? 8
      const p = key.cost?.p ?? 1
      const refused = checkCost(log2N, r, p, 16)
      if (refused !== undefined) return yield* fail(refused)
      const salt = Crypto.randomBytes(16)
      aesKey = yield* Effect.tryPromise({
        try: () => scrypt(key.passphrase, salt, log2N, r, p),
        catch: () => fail("scrypt failed")
      })
      header = Buffer.concat([MAGIC, Buffer.from([FORMAT_VERSION, 1, log2N, r, p, salt.length]), salt])
    }
    const iv = Crypto.randomBytes(12)
    const aad = Buffer.concat([header, iv])
    const cipher = Crypto.createCipheriv("aes-256-gcm", aesKey, iv)
    cipher.setAAD(aad)
    const documents = Object.fromEntries(Object.entries(entries).map(([name, value]) => [name, toDocument(value)]))
    const ciphertext = Buffer.concat([cipher.update(JSON.stringify({ credentials: documents }), "utf8"), cipher.final()])
    const file = Buffer.concat([aad, cipher.getAuthTag(), ciphertext])
    const temp = `${path}.${process.pid}.${Crypto.randomBytes(4).toString("hex")}.tmp`
    yield* Effect.tryPromise({
      try: async () => {
        try {
          // "wx": never through a file (or symlink) already at the temporary path; synced before the rename, so a
          // crash leaves the old file or the new one, never an empty one
          const handle = await Fs.promises.open(temp, "wx", 0o600)
          try {
            await handle.writeFile(file)
            await handle.sync()
          } finally {
            await handle.close()
          }
          await Fs.promises.rename(temp, path)
        } catch (error) {
          await Fs.promises.rm(temp, { force: true }).catch(() => undefined)
          throw error
        }
        // the rename itself, durable (best effort: some platforms and file systems cannot sync a directory)
        await Fs.promises.open(Path.dirname(Path.resolve(path)), "r").then(
          (dir) => dir.sync().finally(() => dir.close()),
          () => undefined
        ).catch(() => undefined)
      },
      catch: (cause) => fail(`cannot write (${(cause as NodeJS.ErrnoException).code ?? "error"})`)
    })
  }).pipe(Effect.withSpan("Credentials.writeEncryptedFile"))

/** @since 0.1.0 */
export type EncryptedFileOptions = FileKey & {
  readonly path: string
  /** Re-read the file as soon as it changes (`fs.watch`); default `true`. */
  readonly watch?: boolean
}

/**
 * Credentials from a file written by `writeEncryptedFile`, decrypted on every read (so a rewritten file shows on
 * the next refresh, or at once with `watch`). A missing or undecryptable file (wrong key, altered bytes, unknown
 * format version) is a `CredentialProviderError`; a name the file does not hold is `CredentialNotFound`.
 *
 * @since 0.1.0
 */
export const encryptedFileProvider = (options: EncryptedFileOptions): Provider => {
  const provider = `encrypted-file ${options.path}`
  // scrypt is slow on purpose: derive once per salt and cost, not on every read; concurrent first reads share one
  // derivation (the promise is kept), and a failed one is forgotten
  const derived = new Map<string, Promise<Buffer>>()
  const failed = (name: string, reason: string, retryable = false) =>
    new CredentialProviderError({ name, provider, reason, retryable })
  const open = (name: string, file: Buffer): Effect.Effect<unknown, CredentialProviderError> =>
    Effect.gen(function*() {
      if (file.length < 8 || !file.subarray(0, 6).equals(MAGIC)) {
        return yield* failed(name, "not an effect-eventstore credentials file")
      }
      if (file[6] !== FORMAT_VERSION) return yield* failed(name, `unsupported format version ${file[6]}`)
      let offset = 8
      let key: Buffer
      if (file[7] === 0) {
        if (!("key" in options)) return yield* failed(name, "the file is encrypted with a key, not a passphrase")
        const raw = rawKey(options.key)
        if (raw === undefined) return yield* failed(name, "the key must be 32 bytes, as 64 hex digits or base64")
        key = raw
      } else if (file[7] === 1) {
        if (!("passphrase" in options)) return yield* failed(name, "the file is encrypted with a passphrase, not a key")
        if (file.length < 12) return yield* failed(name, "the header is truncated")
        const [log2N, r, p, saltLength] = [file[8]!, file[9]!, file[10]!, file[11]!]
        offset = 12 + saltLength
        // before any derivation: an altered or hostile cost is refused, never run
        if (checkCost(log2N, r, p, saltLength) !== undefined || file.length < offset) {
          return yield* failed(name, "the header is corrupt")
        }
        const salt = Buffer.from(file.subarray(12, offset))
        const id = `${salt.toString("hex")}:${log2N}:${r}:${p}`
        let pending = derived.get(id)
        if (pending === undefined) {
          const started = scrypt(options.passphrase, salt, log2N, r, p)
          pending = started
          derived.clear()
          derived.set(id, started)
          started.catch(() => {
            if (derived.get(id) === started) derived.delete(id)
          })
        }
        const derivation = pending
        key = yield* Effect.tryPromise({ try: () => derivation, catch: () => failed(name, "scrypt failed") })
      } else return yield* failed(name, `unknown key derivation ${file[7]}`)
      if (file.length < offset + 28) return yield* failed(name, "the file is truncated")
      const iv = file.subarray(offset, offset + 12)
      const tag = file.subarray(offset + 12, offset + 28)
      try {
        const decipher = Crypto.createDecipheriv("aes-256-gcm", key, iv)
        decipher.setAAD(file.subarray(0, offset + 12))
        decipher.setAuthTag(tag)
        const plain = Buffer.concat([decipher.update(file.subarray(offset + 28)), decipher.final()])
        return JSON.parse(plain.toString("utf8")) as unknown
      } catch {
        return yield* failed(name, "decryption failed: wrong key or passphrase, or the file was altered")
      }
    })
  const watch: Stream.Stream<string | undefined> = Stream.asyncScoped<string | undefined, Error>((emit) =>
    Effect.acquireRelease(
      // the directory, not the file: an atomic rewrite replaces the file, which would end a watch on it
      Effect.try(() =>
        Fs.watch(Path.dirname(Path.resolve(options.path)), { persistent: false }, (_event, file) => {
          if (file === Path.basename(options.path)) void emit.single(undefined)
        })
      ),
      (watcher) => Effect.sync(() => watcher.close())
    ).pipe(
      // an FSWatcher error (the directory removed or unmounted) with no listener would be an uncaught exception
      Effect.tap((watcher) =>
        Effect.sync(() =>
          watcher.on("error", (error) => {
            void emit.fail(error)
          })
        )
      ),
      Effect.catchAll(() => Effect.logWarning(`Credentials: cannot watch ${options.path}`))
    )
  ).pipe(
    Stream.catchAll((error) => {
      const code = (error as NodeJS.ErrnoException).code ?? "error"
      return Stream.drain(Stream.fromEffect(
        Effect.logWarning(`Credentials: watching ${options.path} stopped (${code}); changes show at the next refresh`)
      ))
    })
  )
  return {
    name: provider,
    get: (name) =>
      Effect.tryPromise({
        try: () => Fs.promises.readFile(options.path),
        catch: (cause) =>
          failed(name, `cannot read the file (${(cause as NodeJS.ErrnoException).code ?? "error"})`)
      }).pipe(
        Effect.flatMap((file) => open(name, file)),
        Effect.flatMap((content): Effect.Effect<Credential, CredentialsError> => {
          if (typeof content !== "object" || content === null) {
            return Effect.fail(failed(name, "the content is not a credentials map"))
          }
          const all = (content as { credentials?: unknown }).credentials
          if (typeof all !== "object" || all === null) return Effect.fail(failed(name, "the content is not a credentials map"))
          const entry = Object.prototype.hasOwnProperty.call(all, name) ? (all as Record<string, unknown>)[name] : undefined
          if (entry === undefined) return Effect.fail(new CredentialNotFound({ name, provider }))
          if (typeof entry !== "object" || entry === null) {
            return Effect.fail(new CredentialInvalid({ name, provider, reason: "the entry is not an object" }))
          }
          return decode(name, provider, entry as Record<string, unknown>)
        })
      ),
    ...(options.watch === false ? {} : { watch })
  }
}

// --- the service --------------------------------------------------------------------------------------------------

/** @since 0.1.0 */
export interface CredentialsService {
  /**
   * The credential, from the cache while it is younger than `ttl`, else read from the provider. When that read fails
   * with `CredentialProviderError` (the store is down) and a value is cached, the cached value is served for another
   * `ttl` (with a warning); not found, invalid and expired are never masked. A credential whose `expiresAt` has passed
   * is re-read once; still expired, it fails with `CredentialExpired`.
   */
  readonly get: (name: string) => Effect.Effect<Credential, CredentialsError>
  /**
   * The current credential, then each different one a refresh, a watch or `rotate` finds. Fails like `get` if the
   * first read fails; later failed refreshes are logged and the stream goes on with the last good value.
   */
  readonly changes: (name: string) => Stream.Stream<Credential, CredentialsError>
  /** Reads the credential from the provider now (after you rotated it there), emits it on `changes` if it differs. */
  readonly rotate: (name: string) => Effect.Effect<Credential, CredentialsError>
  /** Forgets the cached credential: the next `get` reads the provider. */
  readonly invalidate: (name: string) => Effect.Effect<void>
  /** The provider's name. */
  readonly provider: string
}

/** @since 0.1.0 */
export class Credentials extends Context.Tag("effect-eventstore/Credentials")<Credentials, CredentialsService>() {}

/** @since 0.1.0 */
export interface CacheOptions {
  /** How long a read credential is served from the cache; default 5 minutes. */
  readonly ttl?: Duration.DurationInput
  /**
   * When every credential read so far is re-read in the background (a fiber in the layer's scope; a changed one is
   * emitted on `changes`); default `Schedule.spaced(ttl / 2)`. `false`: no background refresh.
   */
  readonly refresh?: Schedule.Schedule<unknown> | false
  /**
   * How a read that failed with a retryable `CredentialProviderError` is retried; default 3 more tries, 100 ms
   * doubling.
   */
  readonly retry?: Schedule.Schedule<unknown, CredentialsError>
}

interface Entry {
  readonly ref: SubscriptionRef.SubscriptionRef<Credential | undefined>
  readonly lock: Effect.Semaphore
  /** When the cached value was read (ms); `undefined`: nothing cached, or invalidated. */
  loadedAt: number | undefined
}

/**
 * The service over a provider: caching, background refresh, watch, rotation. Its background fibers belong to the
 * scope.
 *
 * @since 0.1.0
 */
export const make = (provider: Provider, options: CacheOptions = {}): Effect.Effect<CredentialsService, never, Scope.Scope> =>
  Effect.gen(function*() {
    const ttl = Duration.toMillis(options.ttl ?? "5 minutes")
    const retry = options.retry ?? Schedule.exponential("100 millis").pipe(Schedule.intersect(Schedule.recurs(3)))
    const entries = new Map<string, Entry>()
    const entriesLock = yield* Effect.makeSemaphore(1)
    const spanAttributes = (name: string) => ({ "credential.name": name, "credential.provider": provider.name })

    const entryOf = (name: string): Effect.Effect<Entry> =>
      Effect.suspend(() => {
        const found = entries.get(name)
        if (found !== undefined) return Effect.succeed(found)
        return entriesLock.withPermits(1)(Effect.suspend(() => {
          const again = entries.get(name)
          if (again !== undefined) return Effect.succeed(again)
          return Effect.map(SubscriptionRef.make<Credential | undefined>(undefined), (ref) => {
            const entry: Entry = { ref, lock: Effect.unsafeMakeSemaphore(1), loadedAt: undefined }
            entries.set(name, entry)
            return entry
          })
        }))
      })

    const fetch = (name: string) =>
      provider.get(name).pipe(
        Effect.retry({
          schedule: retry,
          while: (error) => error._tag === "CredentialProviderError" && error.retryable
        })
      )

    /** The cached credential if fresh (and `force` is not set), else a new read; a changed value is published. */
    const load = (name: string, force: boolean): Effect.Effect<Credential, CredentialsError> =>
      Effect.flatMap(entryOf(name), (entry) =>
        entry.lock.withPermits(1)(Effect.gen(function*() {
          const now = yield* Clock.currentTimeMillis
          const current = yield* SubscriptionRef.get(entry.ref)
          if (!force && current !== undefined && entry.loadedAt !== undefined && now - entry.loadedAt < ttl) {
            return current
          }
          const read = yield* fetch(name).pipe(
            // deleted from the store: stop serving it (the next get reads again and fails the same way)
            Effect.tapErrorTag("CredentialNotFound", () =>
              Effect.sync(() => {
                entry.loadedAt = undefined
              })),
            Effect.either
          )
          if (Either.isLeft(read)) {
            const error = read.left
            // The store is down (not: the credential is gone or bad): a cached value due for a re-read is served for
            // another ttl rather than failing its users (a database pool's new connections) during the outage.
            if (!force && current !== undefined && error._tag === "CredentialProviderError") {
              entry.loadedAt = now
              yield* Effect.logWarning(
                `Credentials: reading "${name}" failed (${error.reason}); serving the cached value for another ttl`
              )
              return current
            }
            return yield* Effect.fail(error)
          }
          const fresh = read.right
          entry.loadedAt = now
          if (current === undefined || !equals(current, fresh)) {
            yield* SubscriptionRef.set(entry.ref, fresh)
            if (current !== undefined) {
              yield* Effect.logInfo(
                `Credentials: "${name}" changed${fresh.version !== undefined ? ` (version ${fresh.version})` : ""}`
              )
            }
            return fresh
          }
          return current
        })))

    const notExpired = (name: string) => (credential: Credential): Effect.Effect<Credential, CredentialsError> =>
      Effect.flatMap(Clock.currentTimeMillis, (now) =>
        credential.expiresAt === undefined || credential.expiresAt.getTime() > now
          ? Effect.succeed(credential)
          : Effect.flatMap(load(name, true), (again) =>
            again.expiresAt === undefined || again.expiresAt.getTime() > now
              ? Effect.succeed(again)
              : Effect.fail(new CredentialExpired({ name, provider: again.provider, expiredAt: again.expiresAt })))
      )

    const get = (name: string) =>
      load(name, false).pipe(
        Effect.flatMap(notExpired(name)),
        Effect.withSpan("Credentials.get", { attributes: spanAttributes(name) })
      )

    const rotate = (name: string) =>
      load(name, true).pipe(
        Effect.flatMap(notExpired(name)),
        Effect.withSpan("Credentials.rotate", { attributes: spanAttributes(name) })
      )

    const invalidate = (name: string) =>
      Effect.sync(() => {
        const entry = entries.get(name)
        if (entry !== undefined) entry.loadedAt = undefined
      })

    const changes = (name: string): Stream.Stream<Credential, CredentialsError> =>
      Stream.unwrap(Effect.map(Effect.zip(get(name), entryOf(name)), ([, entry]) =>
        entry.ref.changes.pipe(
          Stream.filter((c): c is Credential => c !== undefined),
          Stream.changesWith((a: Credential, b: Credential) => equals(a, b))
        )))

    const refreshOne = (name: string) =>
      load(name, true).pipe(
        Effect.catchAll((error) => Effect.logWarning(`Credentials: refreshing "${name}" failed: ${error.message}`)),
        Effect.asVoid
      )
    // only names that were read successfully: a name never found is not polled for ever
    const refreshAll = Effect.suspend(() =>
      Effect.forEach(
        Array.from(entries.entries()),
        ([name, entry]) =>
          Effect.flatMap(SubscriptionRef.get(entry.ref), (value) => value === undefined ? Effect.void : refreshOne(name)),
        { discard: true }
      )
    ).pipe(Effect.withSpan("Credentials.refresh", { attributes: { "credential.provider": provider.name } }))

    const schedule = options.refresh === undefined ? Schedule.spaced(Duration.millis(Math.max(1, ttl / 2))) : options.refresh
    if (schedule !== false) {
      yield* refreshAll.pipe(Effect.schedule(schedule), Effect.interruptible, Effect.forkScoped)
    }
    if (provider.watch !== undefined) {
      yield* provider.watch.pipe(
        Stream.runForEach((name) =>
          name === undefined ? refreshAll : entries.has(name) ? refreshOne(name) : Effect.void
        ),
        Effect.catchAllCause((cause) => Effect.logWarning("Credentials: watching the provider stopped", cause)),
        Effect.interruptible,
        Effect.forkScoped
      )
    }
    return { get, changes, rotate, invalidate, provider: provider.name }
  })

/**
 * `Credentials` over a provider (or an effect that makes one, such as `envProvider()` or `Vault.provider(...)`).
 *
 * @example
 * ```ts
 * const CredentialsLive = Credentials.layer(
 *   Credentials.chain(Credentials.directoryProvider({ path: "/run/secrets" }), Credentials.staticProvider({})),
 *   { ttl: "10 minutes" }
 * )
 * ```
 *
 * @since 0.1.0
 */
export const layer = <E = never, R = never>(
  provider: Provider | Effect.Effect<Provider, E, R>,
  options: CacheOptions = {}
): Layer.Layer<Credentials, E, Exclude<R, Scope.Scope>> =>
  Layer.scoped(
    Credentials,
    Effect.flatMap(Effect.isEffect(provider) ? provider : Effect.succeed(provider), (p) => make(p, options))
  ) as Layer.Layer<Credentials, E, Exclude<R, Scope.Scope>>

/** @since 0.1.0 */
export const layerStatic = (entries: Readonly<Record<string, Value>>, options: CacheOptions = {}): Layer.Layer<Credentials> =>
  layer(staticProvider(entries), options)

/** @since 0.1.0 */
export const layerEnv = (options: EnvOptions & CacheOptions = {}): Layer.Layer<Credentials> =>
  layer(envProvider(options), options)

/** @since 0.1.0 */
export const layerDirectory = (options: DirectoryOptions & CacheOptions): Layer.Layer<Credentials> =>
  layer(directoryProvider(options), options)

/** @since 0.1.0 */
export const layerEncryptedFile = (options: EncryptedFileOptions & CacheOptions): Layer.Layer<Credentials> =>
  layer(encryptedFileProvider(options), options)

/**
 * `layerEncryptedFile` with the path and the key (or passphrase) read from `Config`.
 *
 * @example
 * ```ts
 * const CredentialsLive = Credentials.layerEncryptedFileConfig({
 *   path: Config.string("CREDENTIALS_FILE"),
 *   key: Config.redacted("CREDENTIALS_KEY")
 * })
 * ```
 *
 * @since 0.1.0
 */
export const layerEncryptedFileConfig = (
  config:
    | { readonly path: Config.Config<string>; readonly key: Config.Config<Redacted.Redacted<string>> }
    | { readonly path: Config.Config<string>; readonly passphrase: Config.Config<Redacted.Redacted<string>> },
  options: CacheOptions & { readonly watch?: boolean } = {}
): Layer.Layer<Credentials, ConfigError.ConfigError> =>
  layer(
    Effect.map(
      "key" in config
        ? Effect.map(Config.all([config.path, config.key]), ([path, key]): EncryptedFileOptions => ({ path, key }))
        : Effect.map(Config.all([config.path, config.passphrase]), ([path, passphrase]): EncryptedFileOptions => ({
          path,
          passphrase
        })),
      (file) => encryptedFileProvider({ ...file, ...(options.watch !== undefined ? { watch: options.watch } : {}) })
    ),
    options
  )

/**
 * Reads the credential `name` from the `Credentials` in context.
 *
 * @since 0.1.0
 */
export const get = (name: string): Effect.Effect<Credential, CredentialsError, Credentials> =>
  Effect.flatMap(Credentials, (credentials) => credentials.get(name))

/**
 * The secret of the credential `name`, which must be a `Token` (else `CredentialInvalid`, saying what it was for:
 * `purpose`, "a Vault token" say).
 *
 * @since 0.1.0
 */
export const getToken = (
  name: string,
  purpose: string
): Effect.Effect<Redacted.Redacted<string>, CredentialsError, Credentials> =>
  Effect.flatMap(get(name), (credential) =>
    credential._tag === "Token"
      ? Effect.succeed(credential.token)
      : Effect.fail(
        new CredentialInvalid({
          name,
          provider: credential.provider,
          reason: `${purpose} must be a Token credential, not ${credential._tag}`
        })
      ))

/**
 * The credential `name` and its rotations, from the `Credentials` in context.
 *
 * @since 0.1.0
 */
export const changes = (name: string): Stream.Stream<Credential, CredentialsError, Credentials> =>
  Stream.unwrap(Effect.map(Credentials, (credentials) => credentials.changes(name)))
