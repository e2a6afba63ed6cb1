/**
 * HashiCorp Vault's KV secrets engine, version 2, as a `Credentials` provider: a credential `name` is read with
 * `GET {address}/v1/{mount}/data/{path(name)}` (the latest version), and its secret's fields are a credential
 * `Document` (`{ "username": "app", "password": "…" }`, see `Credentials.decode`). Over `@effect/platform`'s
 * `HttpClient` (provide one: `FetchHttpClient.layer`, or `NodeHttpClient.layer` from `@effect/platform-node`); no
 * Vault SDK.
 *
 * How Vault's answers map:
 * - 200 with `data.data`: the credential; `data.metadata.version` is its `version`, `created_time` its `createdAt`.
 * - 404 with `{"errors": []}` (no such secret), or a version that is deleted (`deletion_time` set) or destroyed:
 *   `CredentialNotFound` (a `chain` goes on).
 * - Any other 404 (`"no handler for route"`: a wrong mount; a body that is not Vault's: a wrong address or a proxy):
 *   `CredentialProviderError`, not retryable.
 * - 403 (bad or expired token, no policy): `CredentialProviderError`, not retryable.
 * - 429, 5xx (sealed, standby, overloaded), timeouts (the time limit covers the response's headers and body) and
 *   connection failures: `CredentialProviderError`, retryable (`Credentials` retries them under its `retry`
 *   schedule).
 * - The token cannot be read (`tokenFrom`: its credential is missing, invalid or its provider failed):
 *   `CredentialProviderError` of this provider, retryable when the token's provider error was.
 *
 * The Vault token is `Redacted`: from configuration, or from another credential (`tokenFrom("vault-token")`, e.g.
 * a file a Vault agent keeps fresh). It is sent as `X-Vault-Token`, which is added to the header names
 * `@effect/platform` redacts in its request spans.
 *
 * This module is its own subpath: the package root never loads `@effect/platform`.
 *
 * @since 0.1.0
 */
import * as Headers from "@effect/platform/Headers"
import * as HttpClient from "@effect/platform/HttpClient"
import * as HttpClientRequest from "@effect/platform/HttpClientRequest"
import * as Config from "effect/Config"
import type * as ConfigError from "effect/ConfigError"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import type * as Layer from "effect/Layer"
import * as Redacted from "effect/Redacted"
import * as Credentials from "./Credentials.js"

/** @since 0.1.0 */
export interface Options<R = never> {
  /** Vault's address, e.g. `https://vault.internal:8200`. */
  readonly address: string
  /** The token, or an effect that reads it (each request asks again, so a renewed token is used). */
  readonly token: Redacted.Redacted<string> | Effect.Effect<Redacted.Redacted<string>, Credentials.CredentialsError, R>
  /** The KV v2 mount; default `secret`. */
  readonly mount?: string
  /** The secret's path under the mount for a credential name; default the name itself (`db` → `secret/data/db`). */
  readonly path?: (name: string) => string
  /** Vault Enterprise namespace, sent as `X-Vault-Namespace`. */
  readonly namespace?: string
  /** How long one request may take, its response's body included; default 10 seconds. */
  readonly timeout?: Duration.DurationInput
  /** The provider's name in errors and on credentials; default `vault`. */
  readonly name?: string
}

/**
 * The Vault token from another credential (which must be a `Token`), e.g. one read from the file a Vault agent
 * writes: `Credentials.directoryProvider({ path: "/vault/secrets" })` provides it, this provider reads with it.
 *
 * @since 0.1.0
 */
export const tokenFrom = (
  name: string
): Effect.Effect<Redacted.Redacted<string>, Credentials.CredentialsError, Credentials.Credentials> =>
  Credentials.getToken(name, "a Vault token")

const segments = (path: string) => path.split("/").filter((s) => s !== "")

/** Vault's KV v2 "no such secret": `{"errors": []}`, or the metadata of a deleted or destroyed version. */
const isKvNotFound = (body: unknown): boolean => {
  if (typeof body !== "object" || body === null) return false
  const { data, errors } = body as { errors?: unknown; data?: unknown }
  if (Array.isArray(errors) && errors.length === 0) return true
  return typeof data === "object" && data !== null && typeof (data as { metadata?: unknown }).metadata === "object" &&
    (data as { metadata?: unknown }).metadata !== null
}

const parseJson = (text: string): unknown => {
  try {
    return JSON.parse(text) as unknown
  } catch {
    return undefined
  }
}

const errorsOf = (body: unknown): string | undefined => {
  const errors = (body as { errors?: unknown } | null)?.errors
  return Array.isArray(errors) && errors.every((e) => typeof e === "string") && errors.length > 0
    ? errors.join("; ")
    : undefined
}

interface KvResponse {
  readonly data?: {
    readonly data?: Record<string, unknown> | null
    readonly metadata?: {
      readonly version?: number
      readonly created_time?: string
      readonly deletion_time?: string
      readonly destroyed?: boolean
    } | null
  } | null
}

/**
 * The provider. Needs an `HttpClient` (and whatever `token` needs).
 *
 * @example
 * ```ts
 * const CredentialsLive = Credentials.layer(
 *   Vault.provider({ address: "https://vault.internal:8200", token: Redacted.make(process.env.VAULT_TOKEN!) })
 * ).pipe(Layer.provide(FetchHttpClient.layer))
 * ```
 *
 * @since 0.1.0
 */
export const provider = <R = never>(
  options: Options<R>
): Effect.Effect<Credentials.Provider, never, HttpClient.HttpClient | R> =>
  Effect.gen(function*() {
    const client = yield* HttpClient.HttpClient
    const context = yield* Effect.context<R>()
    const providerName = options.name ?? "vault"
    const address = options.address.replace(/\/+$/, "")
    const mount = segments(options.mount ?? "secret").map(encodeURIComponent).join("/")
    const timeout = options.timeout ?? "10 seconds"
    const token = Redacted.isRedacted(options.token)
      ? Effect.succeed(options.token as Redacted.Redacted<string>)
      : Effect.provide(options.token as Effect.Effect<Redacted.Redacted<string>, Credentials.CredentialsError, R>, context)

    const get = (name: string): Effect.Effect<Credentials.Credential, Credentials.CredentialsError> =>
      Effect.gen(function*() {
        const failed = (reason: string, retryable: boolean) =>
          new Credentials.CredentialProviderError({ name, provider: providerName, reason, retryable })
        const path = segments(options.path?.(name) ?? name)
        if (path.length === 0 || path.some((s) => s === "." || s === "..")) {
          return yield* new Credentials.CredentialInvalid({ name, provider: providerName, reason: "not a valid Vault path" })
        }
        const url = `${address}/v1/${mount}/data/${path.map(encodeURIComponent).join("/")}`
        // the token's own errors (a missing `vault-token` credential) are this provider failing, never "no `name`
        // in Vault": a chain must not fall through to its next member
        const secret = yield* Effect.mapError(token, (error) =>
          failed(
            `cannot read the Vault token (${error._tag})`,
            error._tag === "CredentialProviderError" && error.retryable
          ))
        const request = HttpClientRequest.get(url).pipe(
          HttpClientRequest.acceptJson,
          HttpClientRequest.setHeader("X-Vault-Token", Redacted.value(secret)),
          options.namespace !== undefined
            ? HttpClientRequest.setHeader("X-Vault-Namespace", options.namespace)
            : (r) => r
        )
        // one time limit for the headers and the body: a server that stalls after its headers times out too
        const { body, status } = yield* client.execute(request).pipe(
          Effect.flatMap((response) =>
            Effect.map(response.text, (text) => ({ status: response.status, body: parseJson(text) }))
          ),
          Effect.timeoutFail({ duration: timeout, onTimeout: () => failed(`no answer within ${Duration.format(timeout)}`, true) }),
          // the token must not reach the HTTP client's span attributes
          Effect.locallyWith(Headers.currentRedactedNames, (names) => [...names, "x-vault-token"]),
          Effect.catchTags({
            RequestError: (error) => Effect.fail(failed(`request failed (${error.reason})`, true)),
            ResponseError: (error) => Effect.fail(failed(`bad response (${error.reason})`, true))
          }),
          Effect.scoped
        )
        if (status === 404) {
          // only KV v2's own "no such secret" is not found; a wrong mount ("no handler for route"), a wrong address
          // or a proxy's 404 is an error, so a chain does not silently use its next member
          if (isKvNotFound(body)) return yield* new Credentials.CredentialNotFound({ name, provider: providerName })
          return yield* failed(`no such mount or path (404)${errorsOf(body) ? `: ${errorsOf(body)}` : ""}`, false)
        }
        if (status === 403) {
          return yield* failed(`permission denied (403)${errorsOf(body) ? `: ${errorsOf(body)}` : ""}`, false)
        }
        if (status === 429 || status >= 500) {
          return yield* failed(`Vault answered ${status}${errorsOf(body) ? `: ${errorsOf(body)}` : ""}`, true)
        }
        if (status !== 200) {
          return yield* failed(`Vault answered ${status}${errorsOf(body) ? `: ${errorsOf(body)}` : ""}`, false)
        }
        const kv = body as KvResponse | undefined
        const metadata = kv?.data?.metadata ?? undefined
        if (metadata?.destroyed === true || (metadata?.deletion_time ?? "") !== "") {
          return yield* new Credentials.CredentialNotFound({ name, provider: providerName })
        }
        const fields = kv?.data?.data
        if (typeof fields !== "object" || fields === null) {
          if (kv?.data?.data === null) return yield* new Credentials.CredentialNotFound({ name, provider: providerName })
          return yield* failed("the answer is not a KV v2 secret (is the mount KV version 2?)", false)
        }
        const credential = yield* Credentials.decode(name, providerName, fields)
        const created = metadata?.created_time !== undefined ? new Date(metadata.created_time) : undefined
        return {
          ...credential,
          ...(typeof metadata?.version === "number" ? { version: String(metadata.version) } : {}),
          ...(created !== undefined && !Number.isNaN(created.getTime()) ? { createdAt: created } : {})
        }
      }).pipe(Effect.withSpan("Vault.read", { attributes: { "credential.name": name, "vault.mount": mount } }))

    return { name: providerName, get }
  })

/**
 * `Credentials` from Vault (`Credentials.layer(Vault.provider(options), cache)`).
 *
 * @since 0.1.0
 */
export const layer = <R = never>(
  options: Options<R>,
  cache: Credentials.CacheOptions = {}
): Layer.Layer<Credentials.Credentials, never, HttpClient.HttpClient | R> => Credentials.layer(provider(options), cache)

/** @since 0.1.0 */
export interface ConfigOptions {
  /** e.g. `Config.string("VAULT_ADDR")` */
  readonly address: Config.Config<string>
  /** e.g. `Config.redacted("VAULT_TOKEN")` */
  readonly token: Config.Config<Redacted.Redacted<string>>
  readonly mount?: Config.Config<string>
  readonly namespace?: Config.Config<string>
}

/**
 * `layer` with the address, token, mount and namespace read from `Config`.
 *
 * @example
 * ```ts
 * const CredentialsLive = Vault.layerConfig({
 *   address: Config.string("VAULT_ADDR"),
 *   token: Config.redacted("VAULT_TOKEN")
 * }).pipe(Layer.provide(FetchHttpClient.layer))
 * ```
 *
 * @since 0.1.0
 */
export const layerConfig = (
  config: ConfigOptions,
  options: Omit<Options, "address" | "token" | "mount" | "namespace"> & Credentials.CacheOptions = {}
): Layer.Layer<Credentials.Credentials, ConfigError.ConfigError, HttpClient.HttpClient> =>
  Credentials.layer(
    Effect.flatMap(
      Config.all({
        address: config.address,
        token: config.token,
        mount: config.mount ?? Config.succeed(undefined),
        namespace: config.namespace ?? Config.succeed(undefined)
      }),
      ({ address, mount, namespace, token }) =>
        provider({
          ...options,
          address,
          token,
          ...(mount !== undefined ? { mount } : {}),
          ...(namespace !== undefined ? { namespace } : {})
        })
    ),
    options
  )
