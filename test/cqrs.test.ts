import { describe, expect, it } from "@effect/vitest"
import * as Cqrs from "effect-eventstore/Cqrs"
import * as Nats from "effect-eventstore/Nats"
import * as Deferred from "effect/Deferred"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Fiber from "effect/Fiber"
import * as Layer from "effect/Layer"
import * as Logger from "effect/Logger"
import * as LogLevel from "effect/LogLevel"
import * as Option from "effect/Option"
import * as Schema from "effect/Schema"
import * as Scope from "effect/Scope"
import * as Tracer from "effect/Tracer"
import * as Transport from "@nats-io/transport-node"
import { formatTraceparent, parseTraceparent } from "../src/internal/cqrsNats.js"
import * as Fixture from "./fixtures/nats.js"

// --- a small bank: definitions, handlers with in-memory state --------------------------------------------------------

class AccountClosed extends Schema.TaggedError<AccountClosed>()("AccountClosed", { accountId: Schema.String }) {}

class InsufficientFunds extends Schema.TaggedError<InsufficientFunds>()("InsufficientFunds", {
  accountId: Schema.String,
  balance: Schema.Number,
  requested: Schema.Number
}) {}

const Movement = Schema.Struct({ accountId: Schema.String, amount: Schema.Int })

const Deposit = Cqrs.command("Deposit", {
  payload: Movement,
  success: Schema.Struct({ balance: Schema.Number }),
  failure: Schema.Union(AccountClosed, InsufficientFunds),
  roles: ["teller"]
})

const Withdraw = Cqrs.command("Withdraw", {
  payload: Movement,
  success: Schema.Struct({ balance: Schema.Number }),
  failure: Schema.Union(AccountClosed, InsufficientFunds)
})

const Balance = Cqrs.query("Balance", {
  payload: Schema.Struct({ accountId: Schema.String }),
  success: Schema.Struct({ balance: Schema.Number })
})

/** What the handler saw of its request. */
const Whoami = Cqrs.query("Whoami", {
  payload: Schema.Void,
  success: Schema.Struct({
    server: Schema.String,
    kind: Schema.String,
    correlationId: Schema.String,
    tenantId: Schema.NullOr(Schema.String),
    principal: Schema.NullOr(Schema.String)
  })
})

const Slow = Cqrs.command("Slow", { payload: Schema.Struct({ millis: Schema.Number }), success: Schema.String })

const Crash = Cqrs.command("Crash", { payload: Schema.Struct({ how: Schema.Literal("die", "throw") }) })

const Bank = Cqrs.group("bank", [Deposit, Withdraw, Balance, Whoami, Slow, Crash])

const makeHandlers = (server: string, started?: Deferred.Deferred<void>, handled?: Map<string, number>) => {
  const balances = new Map<string, number>()
  return Cqrs.handlers(Bank, {
    Deposit: ({ accountId, amount }) =>
      accountId === "closed"
        ? Effect.fail(new AccountClosed({ accountId }))
        : Effect.sync(() => {
          const balance = (balances.get(accountId) ?? 0) + amount
          balances.set(accountId, balance)
          return { balance }
        }),
    Withdraw: ({ accountId, amount }) =>
      Effect.suspend(() => {
        const balance = balances.get(accountId) ?? 0
        if (amount > balance) return Effect.fail(new InsufficientFunds({ accountId, balance, requested: amount }))
        balances.set(accountId, balance - amount)
        return Effect.succeed({ balance: balance - amount })
      }),
    Balance: ({ accountId }) => Effect.succeed({ balance: balances.get(accountId) ?? 0 }),
    Whoami: () =>
      Effect.map(Cqrs.RequestContext, (context) => {
        handled?.set(server, (handled.get(server) ?? 0) + 1)
        return {
        server,
        kind: context.kind,
        correlationId: context.correlationId,
        tenantId: context.tenantId ?? null,
        principal: context.principal?.id ?? null
        }
      }),
    Slow: ({ millis }) =>
      Effect.zipRight(
        started === undefined ? Effect.void : Deferred.succeed(started, undefined),
        Effect.as(Effect.sleep(millis), "done")
      ),
    Crash: ({ how }) =>
      how === "die"
        ? Effect.die(new Error("boom"))
        : Effect.sync(() => {
          throw new Error("thrown in a handler")
        })
  })
}

const teller: Cqrs.Principal = { id: "alice", roles: ["teller"] }
const auditor: Cqrs.Principal = { id: "bob", roles: ["auditor"] }

const NatsLive = Nats.layer({ servers: Fixture.url })

/** A server of the bank on a prefix of its own (trusting the principal header), and a client of it (a teller). */
const setup = (options: { readonly client?: Omit<Cqrs.ClientOptions, "prefix"> } = {}) =>
  Effect.gen(function*() {
    const prefix = Fixture.unique("cqrs")
    yield* Cqrs.serve(makeHandlers("a"), { prefix, trustPrincipal: true })
    const bank = yield* Cqrs.client(Bank, { prefix, principal: teller, ...options.client })
    return { prefix, bank }
  })

/** A raw request, as a non-Effect client sends it: the reply's JSON. */
const raw = (subject: string, body: string, headers: Record<string, string> = {}) =>
  Effect.flatMap(Nats.NatsClient, ({ connection }) =>
    Effect.promise(async () => {
      const h = Transport.headers()
      for (const [k, v] of Object.entries(headers)) h.set(k, v)
      const msg = await connection.request(subject, body, { timeout: 2000, headers: h })
      return JSON.parse(msg.string()) as unknown
    }))

describe.skipIf(!Fixture.available)("Cqrs over NATS", () => {
  it.scopedLive("a command and a query round trip", () =>
    Effect.gen(function*() {
      const { bank } = yield* setup()
      expect(yield* bank.Deposit({ accountId: "a1", amount: 5 })).toEqual({ balance: 5 })
      expect(yield* bank.Deposit({ accountId: "a1", amount: 7 })).toEqual({ balance: 12 })
      expect(yield* bank.Balance({ accountId: "a1" })).toEqual({ balance: 12 })
      expect(yield* bank.Balance({ accountId: "a2" })).toEqual({ balance: 0 })
    }).pipe(Effect.provide(NatsLive)))

  it.scopedLive("domain errors arrive as instances of their class, with their fields", () =>
    Effect.gen(function*() {
      const { bank } = yield* setup()
      yield* bank.Deposit({ accountId: "a1", amount: 3 })
      const insufficient = yield* Effect.flip(bank.Withdraw({ accountId: "a1", amount: 10 }))
      expect(insufficient).toBeInstanceOf(InsufficientFunds)
      expect(insufficient).toMatchObject({ accountId: "a1", balance: 3, requested: 10 })
      const closed = yield* Effect.flip(bank.Deposit({ accountId: "closed", amount: 1 }))
      expect(closed).toBeInstanceOf(AccountClosed)
      expect(closed).toMatchObject({ _tag: "AccountClosed", accountId: "closed" })
      // the error is recoverable by tag, like any typed failure
      const recovered = yield* bank.Withdraw({ accountId: "a1", amount: 10 }).pipe(
        Effect.catchTag("InsufficientFunds", (e) => Effect.succeed({ balance: e.balance }))
      )
      expect(recovered).toEqual({ balance: 3 })
    }).pipe(Effect.provide(NatsLive)))

  it.scopedLive("the wire format: JSON payloads and replies a non-Effect client can use", () =>
    Effect.gen(function*() {
      const { prefix } = yield* setup()
      const principal = JSON.stringify(teller)
      expect(yield* raw(`${prefix}.cmd.bank.Deposit`, `{"accountId":"a1","amount":5}`, { "es-principal": principal }))
        .toEqual({ _tag: "Success", value: { balance: 5 } })
      expect(yield* raw(`${prefix}.cmd.bank.Deposit`, `{"accountId":"closed","amount":5}`, { "Es-Principal": principal }))
        .toEqual({ _tag: "Failure", error: { _tag: "AccountClosed", accountId: "closed" } })
      expect(yield* raw(`${prefix}.qry.bank.Balance`, `{"accountId":"a1"}`)).toEqual({ _tag: "Success", value: { balance: 5 } })
      expect(yield* raw(`${prefix}.qry.bank.Whoami`, "", { "es-correlation-id": "c-raw", "es-tenant-id": "acme" }))
        .toMatchObject({ _tag: "Success", value: { correlationId: "c-raw", tenantId: "acme", kind: "query" } })
      // a malformed traceparent is ignored (the request starts a new trace), as W3C says
      expect(yield* raw(`${prefix}.qry.bank.Balance`, `{"accountId":"a1"}`, { traceparent: "00-zz-1-01" }))
        .toEqual({ _tag: "Success", value: { balance: 5 } })
    }).pipe(Effect.provide(NatsLive)))

  it.scopedLive("a tenant that is not a tenant id, or a timeout Node cannot keep, is a ValidationError", () =>
    Effect.gen(function*() {
      const { bank, prefix } = yield* setup()
      const badTenant = yield* Effect.flip(bank.Balance({ accountId: "a1" }, { tenantId: "two words" }))
      expect(badTenant._tag).toBe("ValidationError")
      const tooLong = yield* Effect.flip(bank.Balance({ accountId: "a1" }, { timeout: "30 days" }))
      expect(tooLong._tag).toBe("ValidationError")
      const zero = yield* Effect.flip(bank.Balance({ accountId: "a1" }, { timeout: 0 }))
      expect(zero._tag).toBe("ValidationError")
      // a raw client's header is checked by the server
      expect(yield* raw(`${prefix}.qry.bank.Balance`, `{"accountId":"a1"}`, { "es-tenant-id": "-nope" }))
        .toMatchObject({ _tag: "Failure", error: { _tag: "ValidationError" } })
    }).pipe(Effect.provide(NatsLive)))

  it.scopedLive("a prefix or queue group that is not subject tokens is InvalidInput, before anything reaches NATS", () =>
    Effect.gen(function*() {
      const serve = yield* Effect.flip(Cqrs.serve(makeHandlers("q"), { prefix: "a b" }))
      expect(serve._tag).toBe("InvalidInput")
      const queue = yield* Effect.flip(Cqrs.serve(makeHandlers("q"), { prefix: Fixture.unique("q"), queue: "x\r\nPUB" }))
      expect(queue._tag).toBe("InvalidInput")
      const client = yield* Effect.flip(Cqrs.client(Bank, { prefix: "svc.>" }))
      expect(client._tag).toBe("InvalidInput")
    }).pipe(Effect.provide(NatsLive)))

  it.scopedLive("a payload failing its schema is a ValidationError, on the server and before sending", () =>
    Effect.gen(function*() {
      const { prefix, bank } = yield* setup()
      const principal = JSON.stringify(teller)
      const wrongType = yield* raw(`${prefix}.cmd.bank.Deposit`, `{"accountId":1,"amount":5}`, { "es-principal": principal })
      expect(wrongType).toMatchObject({ _tag: "Failure", error: { _tag: "ValidationError", request: "Deposit" } })
      expect((wrongType as { error: { reason: string } }).error.reason).toMatch(/^payload: /)
      const notJson = yield* raw(`${prefix}.cmd.bank.Deposit`, `{accountId`, { "es-principal": principal })
      expect(notJson).toMatchObject({ _tag: "Failure", error: { _tag: "ValidationError" } })
      expect((notJson as { error: { reason: string } }).error.reason).toMatch(/not JSON/)
      const badPrincipal = yield* raw(`${prefix}.cmd.bank.Deposit`, `{"accountId":"a","amount":5}`, { "es-principal": `{"id":1}` })
      expect(badPrincipal).toMatchObject({ _tag: "Failure", error: { _tag: "ValidationError" } })
      // client side: 1.5 is not an Int, so nothing is sent (the balance is untouched)
      const local = yield* Effect.flip(bank.Deposit({ accountId: "a", amount: 1.5 }))
      expect(local).toBeInstanceOf(Cqrs.ValidationError)
      expect(local).toMatchObject({ request: "Deposit" })
      expect(yield* bank.Balance({ accountId: "a" })).toEqual({ balance: 0 })
      // a header value NATS cannot carry is refused before sending
      expect(yield* Effect.flip(bank.Balance({ accountId: "a" }, { tenantId: "acme\r\nx-evil: 1" })))
        .toMatchObject({ _tag: "ValidationError", request: "Balance" })
    }).pipe(Effect.provide(NatsLive)))

  it.scopedLive("a server runs its middleware on each request, after validation and authorization", () =>
    Effect.gen(function*() {
      const prefix = Fixture.unique("cqrs")
      const seen: Array<string> = []
      const record: Cqrs.Middleware = (handler, request) =>
        Effect.zipRight(
          Effect.sync(() =>
            seen.push(`${request.definition.name} ${request.context.tenantId} ${request.context.principal?.id}`)
          ),
          handler
        )
      yield* Cqrs.serve(makeHandlers("a"), { prefix, trustPrincipal: true, middleware: [record] })
      const bank = yield* Cqrs.client(Bank, { prefix, principal: teller, tenantId: "acme" })
      yield* bank.Deposit({ accountId: "a", amount: 1 })
      yield* Effect.flip(bank.Deposit({ accountId: "a", amount: 1 }, { principal: auditor }))
      yield* bank.Balance({ accountId: "a" })
      expect(seen).toEqual(["Deposit acme alice", "Balance acme alice"])
    }).pipe(Effect.provide(NatsLive)))

  it.scopedLive("Unauthorized: without a principal, with other roles, and with an untrusted principal header", () =>
    Effect.gen(function*() {
      const { prefix, bank } = yield* setup()
      const anonymous = yield* Cqrs.client(Bank, { prefix })
      const noPrincipal = yield* Effect.flip(anonymous.Deposit({ accountId: "a", amount: 1 }))
      expect(noPrincipal).toBeInstanceOf(Cqrs.Unauthorized)
      expect(noPrincipal).toMatchObject({ request: "Deposit", required: ["teller"] })
      expect((noPrincipal as Cqrs.Unauthorized).principal).toBeUndefined()

      const wrongRoles = yield* Effect.flip(bank.Deposit({ accountId: "a", amount: 1 }, { principal: auditor }))
      expect(wrongRoles).toBeInstanceOf(Cqrs.Unauthorized)
      expect(wrongRoles).toMatchObject({ principal: "bob", required: ["teller"] })

      // a definition without roles is open to all
      expect(yield* anonymous.Balance({ accountId: "a" })).toEqual({ balance: 0 })
      expect(yield* bank.Deposit({ accountId: "a", amount: 1 })).toEqual({ balance: 1 })

      // a server that does not trust the header sees no principal
      const untrusting = Fixture.unique("cqrs")
      yield* Cqrs.serve(makeHandlers("u"), { prefix: untrusting })
      const claims = yield* Cqrs.client(Bank, { prefix: untrusting, principal: teller })
      const ignored = yield* Effect.flip(claims.Deposit({ accountId: "a", amount: 1 }))
      expect(ignored).toBeInstanceOf(Cqrs.Unauthorized)
      expect((ignored as Cqrs.Unauthorized).principal).toBeUndefined()
      expect(yield* claims.Whoami(undefined)).toMatchObject({ principal: null })

      // rolesOf: roles from the application's own mapping
      const mapped = Fixture.unique("cqrs")
      yield* Cqrs.serve(makeHandlers("m"), {
        prefix: mapped,
        trustPrincipal: true,
        rolesOf: (p) => p.id === "bob" ? ["teller"] : []
      })
      const viaMapping = yield* Cqrs.client(Bank, { prefix: mapped })
      expect(yield* viaMapping.Deposit({ accountId: "a", amount: 2 }, { principal: auditor })).toEqual({ balance: 2 })
      expect(yield* Effect.flip(viaMapping.Deposit({ accountId: "a", amount: 2 }, { principal: teller })))
        .toBeInstanceOf(Cqrs.Unauthorized)
    }).pipe(Effect.provide(NatsLive)))

  it.scopedLive("a handler slower than the client's timeout is a TimeoutError", () =>
    Effect.gen(function*() {
      const { bank } = yield* setup({ client: { timeout: "100 millis" } })
      const start = Date.now()
      const error = yield* Effect.flip(bank.Slow({ millis: 400 }))
      expect(Date.now() - start).toBeLessThan(350)
      expect(error).toBeInstanceOf(Cqrs.TimeoutError)
      expect(error).toMatchObject({ request: "Slow", timeoutMillis: 100 })
      // a call's own timeout overrides the client's
      expect(yield* bank.Slow({ millis: 150 }, { timeout: "2 seconds" })).toBe("done")
    }).pipe(Effect.provide(NatsLive)))

  it.scopedLive("no server on the subject is Unavailable", () =>
    Effect.gen(function*() {
      const prefix = Fixture.unique("cqrs")
      const bank = yield* Cqrs.client(Bank, { prefix })
      const start = Date.now()
      const error = yield* Effect.flip(bank.Balance({ accountId: "a" }))
      expect(Date.now() - start).toBeLessThan(1000) // not a timeout (5 s)
      expect(error).toBeInstanceOf(Cqrs.Unavailable)
      expect(error).toMatchObject({ request: "Balance", subject: `${prefix}.qry.bank.Balance`, reason: "no responders" })
    }).pipe(Effect.provide(NatsLive)))

  it.scopedLive("correlation id, tenant and principal reach the handler's RequestContext", () =>
    Effect.gen(function*() {
      const { bank, prefix } = yield* setup({ client: { tenantId: "acme" } })
      const seen = yield* bank.Whoami(undefined, { correlationId: "corr-1" })
      expect(seen).toEqual({ server: "a", kind: "query", correlationId: "corr-1", tenantId: "acme", principal: "alice" })
      expect(yield* bank.Whoami(undefined, { tenantId: "globex" })).toMatchObject({ tenantId: "globex" })
      // made when absent, one per request
      const first = yield* bank.Whoami(undefined)
      const second = yield* bank.Whoami(undefined)
      expect(first.correlationId).not.toBe("")
      expect(first.correlationId).not.toBe(second.correlationId)
      // a call made inside a request passes its correlation id and tenant on (a client's own tenant comes first)
      const outer = {
        name: "Outer",
        kind: "command",
        correlationId: "outer-7",
        tenantId: "initech",
        principal: undefined
      } as const
      const anyTenant = yield* Cqrs.client(Bank, { prefix })
      expect(yield* anyTenant.Whoami(undefined).pipe(Effect.provideService(Cqrs.RequestContext, outer)))
        .toMatchObject({ correlationId: "outer-7", tenantId: "initech" })
      expect(yield* bank.Whoami(undefined).pipe(Effect.provideService(Cqrs.RequestContext, outer)))
        .toMatchObject({ correlationId: "outer-7", tenantId: "acme" })
    }).pipe(Effect.provide(NatsLive)))

  it.scopedLive("the server's span continues the client's trace, with the request's attributes", () =>
    Effect.gen(function*() {
      const base = yield* Effect.tracer
      const spans: Array<Tracer.Span> = []
      const recording = Tracer.make({
        span: (...args) => {
          const span = base.span(...args)
          spans.push(span)
          return span
        },
        context: base.context
      })
      yield* Effect.gen(function*() {
        const { bank } = yield* setup({ client: { tenantId: "acme" } })
        yield* bank.Deposit({ accountId: "t", amount: 1 }, { correlationId: "trace-1" }).pipe(Effect.withSpan("test"))
      }).pipe(Effect.withTracer(recording))
      const root = spans.find((s) => s.name === "test")!
      const client = spans.find((s) => s.name === "Cqrs.request Deposit")!
      const server = spans.find((s) => s.name === "Cqrs.command Deposit")!
      expect(client.traceId).toBe(root.traceId)
      expect(server.traceId).toBe(client.traceId)
      expect(Option.getOrThrow(server.parent).spanId).toBe(client.spanId)
      expect(server.kind).toBe("server")
      expect(Object.fromEntries(server.attributes)).toMatchObject({
        "command.type": "Deposit",
        "command.kind": "command",
        "tenant.id": "acme",
        "correlation.id": "trace-1"
      })
      expect(server.status._tag).toBe("Ended")
    }).pipe(Effect.provide(NatsLive)))

  it.scopedLive("a defect in a handler is an InternalError with the defect's message, never a stack", () =>
    Effect.gen(function*() {
      const { bank } = yield* setup()
      const died = yield* Effect.flip(bank.Crash({ how: "die" }))
      expect(died).toBeInstanceOf(Cqrs.InternalError)
      expect(died).toMatchObject({ request: "Crash", reason: "boom" })
      const thrown = yield* Effect.flip(bank.Crash({ how: "throw" }))
      expect(thrown).toMatchObject({ _tag: "InternalError", reason: "thrown in a handler" })
      // the server keeps serving
      expect(yield* bank.Balance({ accountId: "x" })).toEqual({ balance: 0 })
    }).pipe(Effect.provide(NatsLive), Logger.withMinimumLogLevel(LogLevel.None)))

  it.scopedLive("two servers in one queue group share the requests", () =>
    Effect.gen(function*() {
      const prefix = Fixture.unique("cqrs")
      const handled = new Map<string, number>()
      for (const server of ["a", "b"]) {
        const connection = yield* Nats.make({ servers: Fixture.url })
        yield* Cqrs.serve(makeHandlers(server, undefined, handled), { prefix }).pipe(
          Effect.provideService(Nats.NatsClient, connection)
        )
      }
      const bank = yield* Cqrs.client(Bank, { prefix })
      const repliedBy = new Map<string, number>()
      for (let i = 0; i < 40; i++) {
        const { server } = yield* bank.Whoami(undefined)
        repliedBy.set(server, (repliedBy.get(server) ?? 0) + 1)
      }
      yield* Effect.sleep("50 millis") // a request given to both servers would have been handled twice by now
      expect(handled.get("a")).toBeGreaterThan(0)
      expect(handled.get("b")).toBeGreaterThan(0)
      // each request went to one server of the queue group
      expect((handled.get("a") ?? 0) + (handled.get("b") ?? 0)).toBe(40)
      expect(repliedBy).toEqual(handled)
    }).pipe(Effect.provide(NatsLive)))

  it.scopedLive("closing a server lets the requests in flight reply, then stops serving", () =>
    Effect.gen(function*() {
      const prefix = Fixture.unique("cqrs")
      const started = yield* Deferred.make<void>()
      const scope = yield* Scope.make()
      yield* Cqrs.serve(makeHandlers("a", started), { prefix }).pipe(Scope.extend(scope))
      const bank = yield* Cqrs.client(Bank, { prefix })
      const inFlight = yield* Effect.fork(bank.Slow({ millis: 300 }))
      yield* Deferred.await(started)
      yield* Scope.close(scope, Exit.void)
      expect(yield* Fiber.join(inFlight)).toBe("done")
      expect(yield* Effect.flip(bank.Balance({ accountId: "a" }))).toBeInstanceOf(Cqrs.Unavailable)
    }).pipe(Effect.provide(NatsLive)))

  it.scopedLive("a request still running after drainTimeout is interrupted and replies InternalError", () =>
    Effect.gen(function*() {
      const prefix = Fixture.unique("cqrs")
      const started = yield* Deferred.make<void>()
      const scope = yield* Scope.make()
      yield* Cqrs.serve(makeHandlers("a", started), { prefix, drainTimeout: "50 millis" }).pipe(Scope.extend(scope))
      const bank = yield* Cqrs.client(Bank, { prefix })
      const inFlight = yield* Effect.fork(Effect.flip(bank.Slow({ millis: 5000 })))
      yield* Deferred.await(started)
      yield* Scope.close(scope, Exit.void)
      const error = yield* Fiber.join(inFlight)
      expect(error).toBeInstanceOf(Cqrs.InternalError)
      expect(error).toMatchObject({ request: "Slow", reason: "interrupted (the server is closing)" })
    }).pipe(Effect.provide(NatsLive)))
})

// --- in process ----------------------------------------------------------------------------------------------------

describe("Cqrs in process", () => {
  it.effect("the local client runs handlers through the same checks, with the caller's middleware", () =>
    Effect.gen(function*() {
      const calls: Array<string> = []
      const trace = (label: string): Cqrs.Middleware => (handler, request) =>
        Effect.suspend(() => {
          calls.push(`${label}>${request.definition.name}:${JSON.stringify(request.payload)}`)
          return Effect.tap(handler, () => Effect.sync(() => calls.push(`${label}<`)))
        })
      const blockTenant: Cqrs.Middleware = (handler, request) =>
        request.context.tenantId === "blocked"
          ? Effect.fail(new Cqrs.Unauthorized({ request: request.definition.name, required: [] }))
          : handler
      const bank = yield* Cqrs.local(makeHandlers("local"), {
        principal: teller,
        middleware: [trace("outer"), trace("inner"), blockTenant]
      })
      expect(yield* bank.Deposit({ accountId: "a", amount: 4 })).toEqual({ balance: 4 })
      expect(calls).toEqual([
        `outer>Deposit:{"accountId":"a","amount":4}`,
        `inner>Deposit:{"accountId":"a","amount":4}`,
        "inner<",
        "outer<"
      ])
      // refused by the middleware: the handler does not run
      const refused = yield* Effect.flip(bank.Deposit({ accountId: "a", amount: 1 }, { tenantId: "blocked" }))
      expect(refused).toBeInstanceOf(Cqrs.Unauthorized)
      expect(yield* bank.Balance({ accountId: "a" })).toEqual({ balance: 4 })
      // validation and authorization run before the middleware
      calls.length = 0
      expect(yield* Effect.flip(bank.Deposit({ accountId: "a", amount: 0.5 }))).toBeInstanceOf(Cqrs.ValidationError)
      expect(yield* Effect.flip(bank.Deposit({ accountId: "a", amount: 1 }, { principal: auditor })))
        .toBeInstanceOf(Cqrs.Unauthorized)
      expect(calls).toEqual([])
      // typed failures and defects as over NATS
      expect(yield* Effect.flip(bank.Withdraw({ accountId: "a", amount: 9 }))).toBeInstanceOf(InsufficientFunds)
      expect(yield* Effect.flip(bank.Crash({ how: "die" }).pipe(Logger.withMinimumLogLevel(LogLevel.None))))
        .toMatchObject({ _tag: "InternalError", reason: "boom" })
      expect(yield* bank.Whoami(undefined, { correlationId: "c1", tenantId: "acme" }))
        .toEqual({ server: "local", kind: "query", correlationId: "c1", tenantId: "acme", principal: "alice" })
    }))

  it.effect("a middleware may need a service, provided where the client is made", () =>
    Effect.gen(function*() {
      class Audit extends Effect.Tag("test/Audit")<Audit, { readonly record: (name: string) => Effect.Effect<void> }>() {}
      const recorded: Array<string> = []
      const audit: Cqrs.Middleware<Audit> = (handler, request) =>
        Effect.zipRight(Audit.record(`${request.context.kind} ${request.definition.name}`), handler)
      const bank = yield* Cqrs.local(makeHandlers("local"), { middleware: [audit] }).pipe(
        Effect.provide(Layer.succeed(Audit, { record: (name) => Effect.sync(() => recorded.push(name)) }))
      )
      yield* bank.Balance({ accountId: "a" })
      yield* bank.Withdraw({ accountId: "a", amount: 0 })
      expect(recorded).toEqual(["query Balance", "command Withdraw"])
    }))

  it.effect("one debug line per request, with its outcome, annotated with the name and correlation id", () =>
    Effect.gen(function*() {
      const lines: Array<{ message: unknown; level: string; annotations: Record<string, unknown> }> = []
      const capture = Logger.make(({ annotations, logLevel, message }) => {
        lines.push({
          message: Array.isArray(message) ? message[0] : message,
          level: logLevel.label,
          annotations: Object.fromEntries(annotations)
        })
      })
      const bank = yield* Cqrs.local(makeHandlers("local"), { principal: teller })
      yield* Effect.gen(function*() {
        yield* bank.Deposit({ accountId: "a", amount: 1 }, { correlationId: "c-ok" })
        yield* Effect.flip(bank.Withdraw({ accountId: "a", amount: 5 }, { correlationId: "c-fail" }))
      }).pipe(Effect.provide(Logger.replace(Logger.defaultLogger, capture)), Logger.withMinimumLogLevel(LogLevel.Debug))
      expect(lines).toHaveLength(2)
      expect(lines[0]).toMatchObject({
        level: "DEBUG",
        annotations: { "command.type": "Deposit", "correlation.id": "c-ok" }
      })
      expect(lines[0]!.message).toMatch(/^command Deposit succeeded in [\d.]+ ms$/)
      expect(lines[1]!.message).toMatch(/^command Withdraw failed with InsufficientFunds in [\d.]+ ms$/)
      expect(lines[1]!.annotations).toMatchObject({ "correlation.id": "c-fail" })
    }))

  it("traceparent: W3C trace context both ways; malformed values are ignored", () => {
    const span = Tracer.externalSpan({ traceId: "4bf92f3577b34da6a3ce929d0e0e4736", spanId: "00f067aa0ba902b7", sampled: true })
    const header = formatTraceparent(span)
    expect(header).toBe("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
    expect(parseTraceparent(header!)).toMatchObject({ traceId: span.traceId, spanId: span.spanId, sampled: true })
    expect(parseTraceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00")).toMatchObject({ sampled: false })
    // a later version may append fields
    expect(parseTraceparent("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-later")).toMatchObject({
      spanId: "00f067aa0ba902b7"
    })
    for (
      const bad of [
        "",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
        "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
        "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
        "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01"
      ]
    ) expect(parseTraceparent(bad)).toBeUndefined()
    // ids that are not W3C's are not sent
    expect(formatTraceparent(Tracer.externalSpan({ traceId: "t", spanId: "s" }))).toBeUndefined()
  })

  it("definitions refuse names that are not one NATS subject token, and duplicate names", () => {
    expect(() => Cqrs.command("Bad.Name", { payload: Schema.Void })).toThrow(/subject token/)
    expect(() => Cqrs.group("bank", [Balance, Balance])).toThrow(/twice/)
  })
})
