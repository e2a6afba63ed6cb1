/**
 * Commands and queries: typed definitions (a name, a payload, a success and a failure schema, the roles that may run
 * it), their handlers, dispatch through middleware (validation, authorization, logging, defect recovery, tracing and
 * the caller's own), an in-process client (`local`) and NATS request/reply (`serve`, `client`) with one subject per
 * definition, so that NATS queue groups spread each one over the servers that handle it and NATS permissions can
 * be set per command.
 *
 * Nothing here retries. A command that meets a concurrent write is retried on the server by its aggregate's own
 * retry (its `Schedule`), which a second loop here would only multiply; and a client that retries after a
 * `TimeoutError` may run a command twice unless the command is idempotent (it carries a command id).
 *
 * ## Wire format (NATS request/reply, JSON)
 *
 * - Subject: `<prefix>.cmd.<group>.<name>` for a command, `<prefix>.qry.<group>.<name>` for a query (`prefix`
 *   defaults to `svc`). Servers subscribe in the queue group `<group>` (by default): NATS gives each request to one.
 * - Request body: the payload encoded by its schema, as UTF-8 JSON. An empty body is `undefined` (a `Schema.Void`
 *   payload).
 * - Request headers, all optional, names case-insensitive:
 *   - `es-correlation-id`: the request's correlation id (the server makes one when it is absent);
 *   - `es-tenant-id`: the tenant the request is for (a tenant id as `Tenancy.pattern` has it; another is answered
 *     with a `ValidationError`);
 *   - `es-principal`: who sends it, `{"id":"alice","roles":["teller"]}`; read only by a server started with
 *     `trustPrincipal: true`;
 *   - `traceparent` (and `tracestate`): W3C trace context; the server's span is a child of it (a malformed
 *     `traceparent` is ignored: the request starts a trace of its own).
 * - Reply body, UTF-8 JSON: `{"_tag":"Success","value":<the success encoded by its schema>}` or
 *   `{"_tag":"Failure","error":<the error encoded by its schema, with its "_tag">}`. The error is one of the
 *   definition's failure schema or `Unauthorized`, `ValidationError`, `InternalError` (a handler may also pass on the
 *   `TimeoutError` or `Unavailable` of a request it made itself); those five `_tag`s are reserved.
 *
 * For example, a request on `svc.cmd.bank.Deposit` with body `{"accountId":"a1","amount":5}` and header
 * `es-principal: {"id":"alice","roles":["teller"]}` is answered `{"_tag":"Success","value":{"balance":5}}` or
 * `{"_tag":"Failure","error":{"_tag":"AccountClosed","accountId":"a1"}}`.
 *
 * @since 0.1.0
 */
import * as Context from "effect/Context"
import type * as Duration from "effect/Duration"
import type * as Effect from "effect/Effect"
import * as Schema from "effect/Schema"
import type * as Scope from "effect/Scope"
import * as Dispatch from "./internal/cqrsDispatch.js"
import * as CqrsNats from "./internal/cqrsNats.js"
import type { InvalidInput } from "./Errors.js"
import type { NatsClient, NatsError } from "./Nats.js"

// --- errors ---------------------------------------------------------------------------------------------------------

/**
 * No reply came within the client's timeout. The request may still have run (a command may have been handled).
 *
 * @since 0.1.0
 */
export class TimeoutError extends Schema.TaggedError<TimeoutError>()("TimeoutError", {
  request: Schema.String,
  timeoutMillis: Schema.Number
}) {
  override get message(): string {
    return `${this.request}: no reply within ${this.timeoutMillis} ms`
  }
}

/**
 * The request could not be delivered: no server serves its subject (`reason` "no responders"), or the connection
 * failed or is closed. Nothing ran.
 *
 * @since 0.1.0
 */
export class Unavailable extends Schema.TaggedError<Unavailable>()("Unavailable", {
  request: Schema.String,
  subject: Schema.String,
  reason: Schema.String
}) {
  override get message(): string {
    return `${this.request} (${this.subject}) is unavailable: ${this.reason}`
  }
}

/**
 * The request needs one of the `required` roles and its principal (`principal`, the id; absent when the request has
 * none) has none of them. Nothing ran.
 *
 * @since 0.1.0
 */
export class Unauthorized extends Schema.TaggedError<Unauthorized>()("Unauthorized", {
  request: Schema.String,
  principal: Schema.optionalWith(Schema.String, { exact: true }),
  required: Schema.Array(Schema.String)
}) {
  override get message(): string {
    return `${this.request} needs one of the roles ${this.required.join(", ")}; ${
      this.principal === undefined ? "the request has no principal" : `${JSON.stringify(this.principal)} has none`
    }`
  }
}

/**
 * A payload or a reply does not match its schema, or the request is malformed (not JSON, a bad `es-principal`
 * header). `reason` starts with what failed (`payload:`, `reply:`, the header's name). Nothing ran, unless the reply
 * is what failed.
 *
 * @since 0.1.0
 */
export class ValidationError extends Schema.TaggedError<ValidationError>()("ValidationError", {
  request: Schema.String,
  reason: Schema.String
}) {
  override get message(): string {
    return `${this.request}: ${this.reason}`
  }
}

/**
 * The handler died (a defect: a thrown exception, `Effect.die`), was interrupted, or failed with an error its
 * definition does not declare. `reason` is the defect's message, never a stack; the server logs the whole cause
 * (annotated with the correlation id).
 *
 * @since 0.1.0
 */
export class InternalError extends Schema.TaggedError<InternalError>()("InternalError", {
  request: Schema.String,
  reason: Schema.String
}) {
  override get message(): string {
    return `${this.request} failed on the server: ${this.reason}`
  }
}

/**
 * The errors of this module: what a request can fail with besides its definition's own failures.
 *
 * @since 0.1.0
 */
export type CqrsError = TimeoutError | Unavailable | Unauthorized | ValidationError | InternalError

/**
 * A schema that can cross the wire: no requirements. (`Schema.Never`, the default failure, is the second member.)
 *
 * @since 0.1.0
 */
export type WireSchema = Schema.Schema<any, any, never> | Schema.Schema<never, never, never>

// --- definitions ----------------------------------------------------------------------------------------------------

/** @since 0.1.0 */
export type Kind = "command" | "query"

/**
 * A command or a query: its name (unique in its group, one NATS subject token), schemas and the roles that may send
 * it. Schemas have no requirements: they cross the wire.
 *
 * @since 0.1.0
 */
export interface Definition<
  Name extends string,
  K extends Kind,
  Payload extends WireSchema,
  Success extends WireSchema,
  Failure extends WireSchema
> {
  readonly kind: K
  readonly name: Name
  readonly payload: Payload
  readonly success: Success
  readonly failure: Failure
  /** Any one of them suffices; empty: anybody, with a principal or without. */
  readonly roles: ReadonlyArray<string>
}

/** @since 0.1.0 */
export declare namespace Definition {
  /** @since 0.1.0 */
  export type Any = Definition<
    string,
    Kind,
    WireSchema,
    WireSchema,
    WireSchema
  >
  /** @since 0.1.0 */
  export type Payload<D extends Any> = Schema.Schema.Type<D["payload"]>
  /** @since 0.1.0 */
  export type Success<D extends Any> = Schema.Schema.Type<D["success"]>
  /** @since 0.1.0 */
  export type Failure<D extends Any> = Schema.Schema.Type<D["failure"]>
}

/**
 * What `command` and `query` take. `success` defaults to `Schema.Void`, `failure` to `Schema.Never` (no domain
 * errors); failures should be `Schema.TaggedError` classes, so they arrive as instances of their class.
 *
 * @since 0.1.0
 */
export interface DefinitionOptions<
  Payload extends WireSchema,
  Success extends WireSchema,
  Failure extends WireSchema
> {
  readonly payload: Payload
  readonly success?: Success
  readonly failure?: Failure
  /** The roles that may send it: any one of them suffices (default: no check, not even for a principal). */
  readonly roles?: ReadonlyArray<string>
}

const define = <K extends Kind>(kind: K) =>
<
  const Name extends string,
  Payload extends WireSchema,
  Success extends WireSchema = typeof Schema.Void,
  Failure extends WireSchema = typeof Schema.Never
>(
  name: Name,
  options: DefinitionOptions<Payload, Success, Failure>
): Definition<Name, K, Payload, Success, Failure> => {
  Dispatch.checkToken(`${kind} name`, name)
  return {
    kind,
    name,
    payload: options.payload,
    success: (options.success ?? Schema.Void) as Success,
    failure: (options.failure ?? Schema.Never) as Failure,
    roles: options.roles ?? []
  }
}

/**
 * A command: a request that changes state.
 *
 * @example
 * ```ts
 * class InsufficientFunds extends Schema.TaggedError<InsufficientFunds>()("InsufficientFunds", {
 *   accountId: Schema.String, balance: Schema.Number
 * }) {}
 * const Withdraw = Cqrs.command("Withdraw", {
 *   payload: Schema.Struct({ accountId: Schema.String, amount: Schema.Int }),
 *   success: Schema.Struct({ balance: Schema.Number }),
 *   failure: InsufficientFunds,
 *   roles: ["teller"]
 * })
 * ```
 *
 * @since 0.1.0
 */
export const command = define("command")

/**
 * A query: a request that reads.
 *
 * @since 0.1.0
 */
export const query = define("query")

/**
 * Definitions served together: one NATS subject each under the group's name, which is also the default queue group.
 *
 * @since 0.1.0
 */
export interface Group<Name extends string, Defs extends Definition.Any> {
  readonly name: Name
  readonly definitions: ReadonlyArray<Defs>
}

/** @since 0.1.0 */
export declare namespace Group {
  /** @since 0.1.0 */
  export type Any = Group<string, Definition.Any>
  /** @since 0.1.0 */
  export type Definitions<G extends Any> = G extends Group<string, infer Defs> ? Defs : never
}

/**
 * A group of definitions (names unique in it).
 *
 * @example
 * ```ts
 * const Bank = Cqrs.group("bank", [Deposit, Withdraw, Balance])
 * ```
 *
 * @since 0.1.0
 */
export const group = <const Name extends string, const Defs extends ReadonlyArray<Definition.Any>>(
  name: Name,
  definitions: Defs
): Group<Name, Defs[number]> => {
  Dispatch.checkToken("group name", name)
  const seen = new Set<string>()
  for (const d of definitions) {
    if (seen.has(d.name)) throw new Error(`Cqrs: group ${JSON.stringify(name)} defines ${JSON.stringify(d.name)} twice`)
    seen.add(d.name)
  }
  return { name, definitions }
}

// --- request context ------------------------------------------------------------------------------------------------

/**
 * Who sends a request: an id and roles.
 *
 * @since 0.1.0
 */
export const Principal = Schema.Struct({ id: Schema.String, roles: Schema.Array(Schema.String) })

/** @since 0.1.0 */
export interface Principal extends Schema.Schema.Type<typeof Principal> {}

/** @since 0.1.0 */
export interface RequestContextService {
  readonly name: string
  readonly kind: Kind
  readonly correlationId: string
  readonly tenantId: string | undefined
  readonly principal: Principal | undefined
}

/**
 * The request being handled, in the context of its handler and middleware. A client used inside a handler passes the
 * request's correlation id and tenant on to the requests it makes (not its principal: a client sends its own).
 *
 * @since 0.1.0
 */
export class RequestContext
  extends Context.Tag("effect-eventstore/Cqrs/RequestContext")<RequestContext, RequestContextService>()
{}

// --- handlers and middleware ----------------------------------------------------------------------------------------

/**
 * One handler per definition of a group: the decoded payload in, the success or a declared failure out (or one of
 * this module's errors, e.g. an `Unauthorized` decided from the data). `RequestContext` is in its context.
 *
 * @since 0.1.0
 */
export type HandlerFunctions<Defs extends Definition.Any> = {
  readonly [D in Defs as D["name"]]: (
    payload: Definition.Payload<D>
  ) => Effect.Effect<Definition.Success<D>, Definition.Failure<D> | CqrsError, any>
}

/**
 * A group's handlers, needing `R` (what the handlers need besides `RequestContext`).
 *
 * @since 0.1.0
 */
export interface Handlers<Defs extends Definition.Any, R> {
  readonly group: Group<string, Defs>
  readonly implementations: {
    readonly [name: string]: (payload: any) => Effect.Effect<unknown, unknown, R>
  }
}

type HandlerContext<H> = {
  [K in keyof H]: H[K] extends (...args: ReadonlyArray<any>) => Effect.Effect<any, any, infer R> ? R : never
}[keyof H]

/**
 * The handlers of a group, checked against its definitions (payload, success and failure types).
 *
 * @example
 * ```ts
 * const BankHandlers = Cqrs.handlers(Bank, {
 *   Deposit: ({ accountId, amount }) => Effect.map(Accounts.deposit(accountId, amount), (balance) => ({ balance })),
 *   Balance: ({ accountId }) => Accounts.balance(accountId)
 * })
 * ```
 *
 * @since 0.1.0
 */
export const handlers = <G extends Group.Any, H extends HandlerFunctions<Group.Definitions<G>>>(
  group: G,
  implementations: H
): Handlers<Group.Definitions<G>, Exclude<HandlerContext<H>, RequestContext>> => {
  for (const d of group.definitions) {
    if (typeof (implementations as Record<string, unknown>)[d.name] !== "function") {
      throw new Error(`Cqrs: no handler for ${JSON.stringify(d.name)} in group ${JSON.stringify(group.name)}`)
    }
  }
  return { group, implementations } as unknown as Handlers<Group.Definitions<G>, Exclude<HandlerContext<H>, RequestContext>>
}

/**
 * A request as middleware sees it: its definition, the decoded payload and its context.
 *
 * @since 0.1.0
 */
export interface Request {
  readonly definition: Definition.Any
  readonly payload: unknown
  readonly context: RequestContextService
}

/**
 * Wraps the handler of every request (after validation and authorization, inside logging, defect recovery and the
 * span): it may act before and after, or refuse with one of this module's errors; it keeps the handler's success
 * and failure types. `R` is what it needs.
 *
 * @example
 * ```ts
 * const audit: Cqrs.Middleware<AuditLog> = (handler, request) =>
 *   Effect.tap(handler, () => Effect.flatMap(AuditLog, (log) => log.record(request.definition.name, request.context)))
 * ```
 *
 * @since 0.1.0
 */
export interface Middleware<R = never> {
  <A, E, R2>(handler: Effect.Effect<A, E, R2>, request: Request): Effect.Effect<A, E | CqrsError, R | R2>
}

/**
 * How requests are dispatched to handlers, in process (`local`) and on a server (`serve`).
 *
 * @since 0.1.0
 */
export interface DispatchOptions<RM = never> {
  /** The caller's middleware; the first is the outermost. */
  readonly middleware?: ReadonlyArray<Middleware<RM>>
  /**
   * The roles of a principal, for authorization (a definition with roles runs for a principal holding any one of
   * them); default the principal's own `roles`.
   */
  readonly rolesOf?: (principal: Principal) => ReadonlyArray<string>
}

/**
 * What one call may set, over the client's defaults. A tenant not given here comes from the client's options, then
 * from the `RequestContext` the call is made in (a handler calling another service); a correlation id from that
 * `RequestContext`, and without one the server (or the local client) makes one for the request.
 *
 * @since 0.1.0
 */
export interface CallOptions {
  /** From 1 ms to 2^31 - 1 ms (about 24 days); another is a `ValidationError`, and nothing is sent. */
  readonly timeout?: Duration.DurationInput
  readonly correlationId?: string
  /** A tenant id (`Tenancy.pattern`); another is a `ValidationError`, and nothing is sent. */
  readonly tenantId?: string
  readonly principal?: Principal
}

/**
 * A client of a group: one function per definition, by name.
 *
 * @example
 * ```ts
 * const bank = yield* Cqrs.client(Bank, { principal: { id: "alice", roles: ["teller"] } })
 * const { balance } = yield* bank.Deposit({ accountId: "a1", amount: 5 })
 * ```
 *
 * @since 0.1.0
 */
export type Client<Defs extends Definition.Any> = {
  readonly [D in Defs as D["name"]]: (
    payload: Definition.Payload<D>,
    options?: CallOptions
  ) => Effect.Effect<Definition.Success<D>, Definition.Failure<D> | CqrsError>
}

// --- in process -----------------------------------------------------------------------------------------------------

/**
 * Options of `local`: dispatch options, and the tenant and principal of its requests (a call's options override
 * them). A principal here is trusted: it is the program's own.
 *
 * @since 0.1.0
 */
export interface LocalOptions<RM = never> extends DispatchOptions<RM> {
  readonly tenantId?: string
  readonly principal?: Principal
  /** How long a request may take (`TimeoutError` after it); default no limit. */
  readonly timeout?: Duration.DurationInput
}

/**
 * A client that runs the handlers in this process, through the same pipeline as a server (the payload is validated
 * against its schema's type, since it is not decoded from JSON; the success is not encoded). It has the type of the
 * NATS client: for tests, and for a monolith that may be split later. The handlers' services are those where the
 * client is made.
 *
 * @example
 * ```ts
 * const bank = yield* Cqrs.local(BankHandlers, { principal: { id: "alice", roles: ["teller"] } })
 * yield* bank.Deposit({ accountId: "a1", amount: 5 })
 * ```
 *
 * @since 0.1.0
 */
export const local = <Defs extends Definition.Any, R, RM = never>(
  handlers: Handlers<Defs, R>,
  options: LocalOptions<RM> = {}
): Effect.Effect<Client<Defs>, never, R | RM> => Dispatch.local(handlers, options)

// --- NATS -----------------------------------------------------------------------------------------------------------

/**
 * Options of `serve`.
 *
 * @since 0.1.0
 */
export interface ServeOptions<RM = never> extends DispatchOptions<RM> {
  /** The first subject tokens; default `svc`. */
  readonly prefix?: string
  /** The NATS queue group the servers of the group share; default the group's name. */
  readonly queue?: string
  /**
   * Read the principal from the `es-principal` header. Set it only on a connection where whoever may publish on
   * these subjects is trusted to say who its user is (the client authenticated its user, NATS authenticated the
   * client, and NATS permissions keep everyone else off these subjects). Default false: requests have no principal,
   * so definitions with roles answer `Unauthorized`.
   */
  readonly trustPrincipal?: boolean
  /** How long closing waits for the requests in flight before interrupting them; default 10 seconds. */
  readonly drainTimeout?: Duration.DurationInput
}

/**
 * Serves a group's handlers over NATS until the scope closes: one queue subscription per definition on the
 * connection of `NatsClient`, so several servers of a group share its requests. It returns once NATS has the
 * subscriptions. Each request runs in a fiber of its own, with its `RequestContext`, log annotations
 * (`command.type`, `correlation.id`, `tenant.id`) and span (`Cqrs.command <name>` / `Cqrs.query <name>`, a child of
 * the request's `traceparent`). Closing drains the subscriptions and waits for the requests in flight to reply (up
 * to `drainTimeout`; those still running are interrupted and reply `InternalError`).
 *
 * No retry here: a command that meets a concurrent write is retried by its aggregate's own schedule.
 *
 * Fails with `InvalidInput` when `prefix` or `queue` is not made of NATS subject tokens (letters, digits, `_`, `-`),
 * and with `NatsError` when NATS refuses the subscriptions.
 *
 * @example
 * ```ts
 * const Server = Layer.scopedDiscard(Cqrs.serve(BankHandlers, { trustPrincipal: true })).pipe(
 *   Layer.provide(Nats.layer({ servers: "nats://127.0.0.1:4222" }))
 * )
 * ```
 *
 * @since 0.1.0
 */
export const serve = <Defs extends Definition.Any, R, RM = never>(
  handlers: Handlers<Defs, R>,
  options: ServeOptions<RM> = {}
): Effect.Effect<void, NatsError | InvalidInput, Scope.Scope | NatsClient | R | RM> => CqrsNats.serve(handlers, options)

/**
 * Options of `client`.
 *
 * @since 0.1.0
 */
export interface ClientOptions {
  /** The first subject tokens; default `svc`. */
  readonly prefix?: string
  /** How long a request waits for its reply; default 5 seconds. */
  readonly timeout?: Duration.DurationInput
  /** The tenant of every request (a call's options override it). */
  readonly tenantId?: string
  /** The principal sent with every request (a call's options override it); see `ServeOptions.trustPrincipal`. */
  readonly principal?: Principal
}

/**
 * A client of a group over NATS request/reply, on the connection of `NatsClient`. A call encodes the payload (one
 * its schema refuses is a `ValidationError`, and is not sent), sends it with the correlation id (the call's or the
 * enclosing request's; without one the server makes it), tenant, principal and the current span's `traceparent` and
 * `tracestate` (in a span `Cqrs.request <name>` when a tracer is installed), and decodes the reply: the success, a
 * declared failure as an instance of its class, or one of this module's errors. No reply within the timeout is a
 * `TimeoutError`; no server on the subject, or a closed connection, is `Unavailable`. Making the client fails with
 * `InvalidInput` for a `prefix` that is not made of NATS subject tokens.
 *
 * @example
 * ```ts
 * const program = Effect.gen(function*() {
 *   const bank = yield* Cqrs.client(Bank, { timeout: "2 seconds", principal: { id: "alice", roles: ["teller"] } })
 *   return yield* bank.Deposit({ accountId: "a1", amount: 5 }, { tenantId: "acme" })
 * }).pipe(Effect.provide(Nats.layer()))
 * ```
 *
 * @since 0.1.0
 */
export const client = <Defs extends Definition.Any>(
  group: Group<string, Defs>,
  options: ClientOptions = {}
): Effect.Effect<Client<Defs>, InvalidInput, NatsClient> => CqrsNats.client(group, options)
