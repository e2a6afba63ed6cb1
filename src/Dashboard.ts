/**
 * A live web dashboard over the `Operator`: one `HttpApi` contract (`Api`, every endpoint under `/api`) serves the
 * page, the CLI's `--url` mode (`client`, derived from the same contract) and tests. The page (`/`) is one HTML
 * document with its CSS and JS inline, no build step: overview (head, events/s, projections with lag and status,
 * parked counts), a stream browser with filters, event detail with its chain, and the projections with their errors
 * and rebuilds; it stays live over server-sent events (`/api/live`).
 *
 * Read-only unless an admin token is set (`adminToken`, a `Redacted`): the actions (rebuild, parked skip/retry) then
 * need `Authorization: Bearer <token>` and each one is logged; without a token they answer 403.
 *
 * `layer` adds the routes to an `HttpLayerRouter` (mount it in your own server beside your routes); `serve` runs a
 * Node HTTP server with just the dashboard.
 *
 * @since 0.1.0
 */
import * as HttpApi from "@effect/platform/HttpApi"
import * as HttpApiBuilder from "@effect/platform/HttpApiBuilder"
import * as HttpApiClient from "@effect/platform/HttpApiClient"
import * as HttpApiEndpoint from "@effect/platform/HttpApiEndpoint"
import * as HttpApiGroup from "@effect/platform/HttpApiGroup"
import * as HttpClient from "@effect/platform/HttpClient"
import * as HttpClientRequest from "@effect/platform/HttpClientRequest"
import * as HttpLayerRouter from "@effect/platform/HttpLayerRouter"
import type * as HttpServer from "@effect/platform/HttpServer"
import * as HttpServerRequest from "@effect/platform/HttpServerRequest"
import * as HttpServerResponse from "@effect/platform/HttpServerResponse"
import * as NodeHttpServer from "@effect/platform-node/NodeHttpServer"
import * as Config from "effect/Config"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as FiberSet from "effect/FiberSet"
import * as Layer from "effect/Layer"
import * as Option from "effect/Option"
import * as Redacted from "effect/Redacted"
import * as Schedule from "effect/Schedule"
import * as Schema from "effect/Schema"
import * as Stream from "effect/Stream"
import { createServer } from "node:http"
import { timingSafeEqual } from "node:crypto"
import { InvalidInput, StoreError } from "./Errors.js"
import { page } from "./internal/dashboardPage.js"
import * as Operator from "./Operator.js"

/** An action without the admin token, or with a wrong one. @since 0.1.0 */
export class Unauthorized extends Schema.TaggedError<Unauthorized>()("Unauthorized", {
  reason: Schema.String
}) {
  override get message() {
    return this.reason
  }
}

/** An action on a dashboard that has no admin token: it is read-only. @since 0.1.0 */
export class ReadOnly extends Schema.TaggedError<ReadOnly>()("ReadOnly", {}) {
  override get message() {
    return "the dashboard is read-only: start it with an admin token to allow actions"
  }
}

const Count = Schema.NumberFromString.pipe(Schema.int(), Schema.nonNegative())

const read = HttpApiGroup.make("store")
  .add(HttpApiEndpoint.get("overview", "/overview").addSuccess(Operator.Overview))
  .add(
    HttpApiEndpoint.get("streams", "/streams")
      .setUrlParams(Schema.Struct({
        prefix: Schema.optional(Schema.String),
        type: Schema.optional(Schema.String),
        eventType: Schema.optional(Schema.String),
        since: Schema.optional(Count),
        until: Schema.optional(Count),
        after: Schema.optional(Schema.String),
        limit: Schema.optional(Count)
      }))
      .addSuccess(Operator.StreamsPage)
  )
  .add(
    HttpApiEndpoint.get("stream", "/streams/:id")
      .setPath(Schema.Struct({ id: Schema.String }))
      .setUrlParams(Schema.Struct({
        from: Schema.optional(Count),
        direction: Schema.optional(Schema.Literal("forward", "backward")),
        limit: Schema.optional(Count)
      }))
      .addSuccess(Operator.EventsPage)
  )
  .add(
    HttpApiEndpoint.get("event", "/events/:id")
      .setPath(Schema.Struct({ id: Schema.String }))
      .addSuccess(Operator.EventDetail)
  )
  .add(
    HttpApiEndpoint.get("log", "/log")
      .setUrlParams(Schema.Struct({
        after: Schema.optional(Count),
        stream: Schema.optional(Schema.String),
        type: Schema.optional(Schema.String),
        limit: Schema.optional(Count)
      }))
      .addSuccess(Schema.Struct({ events: Schema.Array(Operator.EventView) }))
  )
  .add(
    HttpApiEndpoint.get("projections", "/projections")
      .addSuccess(Schema.Struct({ projections: Schema.Array(Operator.ProjectionInfo) }))
  )
  .add(
    HttpApiEndpoint.get("check", "/check")
      .setUrlParams(Schema.Struct({
        lagWarn: Schema.optional(Count),
        lagCrit: Schema.optional(Count),
        lagSecondsWarn: Schema.optional(Count),
        lagSecondsCrit: Schema.optional(Count),
        stalledWarn: Schema.optional(Count),
        stalledCrit: Schema.optional(Count),
        parkedWarn: Schema.optional(Count),
        parkedCrit: Schema.optional(Count),
        name: Schema.optional(Schema.String)
      }))
      .addSuccess(Operator.CheckResult)
  )
  .add(
    HttpApiEndpoint.get("parked", "/parked")
      .setUrlParams(Schema.Struct({
        projection: Schema.optional(Schema.String),
        after: Schema.optional(Count),
        until: Schema.optional(Count),
        limit: Schema.optional(Count)
      }))
      .addSuccess(Operator.ParkedPage)
  )
  .add(
    HttpApiEndpoint.get("parkedEvent", "/parked/:projection/:position")
      .setPath(Schema.Struct({ projection: Schema.String, position: Count }))
      .addSuccess(Schema.Struct({ parked: Operator.ParkedView, event: Schema.optional(Operator.EventView) }))
  )
  .add(HttpApiEndpoint.get("doctor", "/doctor").addSuccess(Operator.Doctor))
  .addError(Operator.NotFound, { status: 404 })
  .addError(InvalidInput, { status: 400 })
  .addError(StoreError, { status: 500 })

const Range = Schema.Struct({ position: Count, until: Schema.optional(Count) })

const admin = HttpApiGroup.make("admin")
  .add(
    HttpApiEndpoint.post("rebuild", "/projections/:name/rebuild")
      .setPath(Schema.Struct({ name: Schema.String }))
      .addSuccess(Schema.Struct({ started: Schema.Boolean }))
  )
  .add(
    HttpApiEndpoint.post("skip", "/parked/:projection/skip")
      .setPath(Schema.Struct({ projection: Schema.String }))
      .setUrlParams(Range)
      .addSuccess(Schema.Struct({ deleted: Schema.Number }))
  )
  .add(
    HttpApiEndpoint.post("retry", "/parked/:projection/retry")
      .setPath(Schema.Struct({ projection: Schema.String }))
      .setUrlParams(Range)
      .addSuccess(Schema.Struct({ retried: Schema.Number }))
  )
  .addError(Unauthorized, { status: 401 })
  .addError(ReadOnly, { status: 403 })
  .addError(Operator.NotFound, { status: 404 })
  .addError(InvalidInput, { status: 400 })
  .addError(StoreError, { status: 500 })
  .addError(Operator.Unsupported, { status: 501 })
  .addError(
    Schema.Struct({
      _tag: Schema.Literal("ProjectionFailed"),
      position: Schema.Number,
      eventType: Schema.String,
      reason: Schema.String
    }),
    { status: 422 }
  )

/**
 * The dashboard's contract: what the page, the CLI's `--url` mode and tests call.
 *
 * @since 0.1.0
 */
export class Api extends HttpApi.make("effect-eventstore").add(read).add(admin).prefix("/api") {}

/** @since 0.1.0 */
export interface Options {
  /**
   * Allows the actions (rebuild, parked skip and retry), for requests carrying it as a bearer token. Without it the
   * dashboard is read-only.
   */
  readonly adminToken?: Redacted.Redacted<string> | undefined
  /** How often the live view (`/api/live`) looks for changes; default 250 ms. */
  readonly liveInterval?: Duration.DurationInput
}

const sameSecret = (given: string, expected: string) => {
  const a = Buffer.from(given)
  const b = Buffer.from(expected)
  return a.length === b.length && timingSafeEqual(a, b)
}

const handlers = (options: Options) => {
  const guard = (action: string, target: string) =>
    Effect.gen(function*() {
      if (options.adminToken === undefined) return yield* new ReadOnly()
      const request = yield* HttpServerRequest.HttpServerRequest
      const header = request.headers["authorization"] ?? ""
      const match = /^Bearer (.+)$/.exec(header)
      if (match === null || !sameSecret(match[1]!, Redacted.value(options.adminToken))) {
        yield* Effect.logWarning(`dashboard: refused ${action} ${target}: no valid admin token`)
        return yield* new Unauthorized({ reason: "this action needs the admin token (Authorization: Bearer ...)" })
      }
      yield* Effect.logInfo(`dashboard: ${action} ${target}`)
    })
  const StoreLive = HttpApiBuilder.group(Api, "store", (h) =>
    Effect.gen(function*() {
      const op = yield* Operator.Operator
      return h
        .handle("overview", () => op.overview)
        .handle("streams", ({ urlParams: u }) =>
          op.streams({
            prefix: u.prefix,
            streamType: u.type,
            eventType: u.eventType,
            since: u.since,
            until: u.until,
            after: u.after,
            limit: u.limit
          }))
        .handle("stream", ({ path, urlParams: u }) =>
          op.stream(path.id, { from: u.from, direction: u.direction, limit: u.limit }))
        .handle("event", ({ path }) => op.event(path.id))
        .handle("log", ({ urlParams: u }) =>
          op.after(u.after ?? 0, {
            ...(u.stream !== undefined ? { streamId: u.stream } : {}),
            ...(u.type !== undefined ? { streamType: u.type } : {}),
            ...(u.limit !== undefined ? { limit: u.limit } : {})
          }).pipe(Effect.map((events) => ({ events }))))
        .handle("projections", () => Effect.map(op.projections, (projections) => ({ projections })))
        .handle("check", ({ urlParams: { name, ...thresholds } }) =>
          op.check(thresholds, name === undefined ? undefined : [name]))
        .handle("parked", ({ urlParams: u }) =>
          op.parked(u.projection, {
            ...(u.after !== undefined ? { after: u.after } : {}),
            ...(u.until !== undefined ? { until: u.until } : {}),
            ...(u.limit !== undefined ? { limit: u.limit } : {})
          }))
        .handle("parkedEvent", ({ path }) =>
          Effect.map(op.parkedEvent(path.projection, path.position), (r) =>
            r.event === undefined ? { parked: r.parked } : { parked: r.parked, event: r.event }))
        .handle("doctor", () => op.doctor)
    }))
  const AdminLive = HttpApiBuilder.group(Api, "admin", (h) =>
    Effect.gen(function*() {
      const op = yield* Operator.Operator
      const running = yield* FiberSet.make()
      return h
        .handle("rebuild", ({ path }) =>
          Effect.gen(function*() {
            yield* guard("rebuild", path.name)
            if (!op.runsHere(path.name)) {
              yield* op.projection(path.name)
              return yield* new Operator.Unsupported({
                reason: `projection ${JSON.stringify(path.name)} does not run in this process`
              })
            }
            // runs on in the dashboard's scope; its progress shows in the projection's status
            yield* FiberSet.run(
              running,
              op.rebuild(path.name).pipe(
                Stream.runDrain,
                Effect.tapError((e) => Effect.logError(`dashboard: rebuild of ${path.name} failed: ${e.message}`))
              )
            )
            return { started: true }
          }))
        .handle("skip", ({ path, urlParams: u }) =>
          Effect.gen(function*() {
            yield* guard("parked skip", `${path.projection} ${u.position}${u.until === undefined ? "" : `..${u.until}`}`)
            return { deleted: yield* op.skip(path.projection, u.position, u.until) }
          }))
        .handle("retry", ({ path, urlParams: u }) =>
          Effect.gen(function*() {
            yield* guard("parked retry", `${path.projection} ${u.position}${u.until === undefined ? "" : `..${u.until}`}`)
            return yield* op.retry(path.projection, u.position, u.until).pipe(
              Effect.catchTag("ProjectionFailed", (e) =>
                Effect.fail({
                  _tag: "ProjectionFailed" as const,
                  position: e.position,
                  eventType: e.eventType,
                  reason: e.reason
                }))
            )
          }))
    }))
  return Layer.mergeAll(StoreLive, AdminLive)
}

const encoder = new TextEncoder()

/**
 * The dashboard's routes (the API, the page at `/`, the live view at `/api/live`), added to the `HttpLayerRouter`
 * of your server. Needs the `Operator`.
 *
 * @since 0.1.0
 */
export const layer = (options: Options = {}) => {
  const interval = Duration.decode(options.liveInterval ?? "250 millis")
  const html = page({ readOnly: options.adminToken === undefined, liveIntervalMs: Duration.toMillis(interval) })
  const Page = HttpLayerRouter.add(
    "GET",
    "/",
    HttpServerResponse.html(html)
  )
  const Live = HttpLayerRouter.add(
    "GET",
    "/api/live",
    Effect.gen(function*() {
      const op = yield* Operator.Operator
      let last = ""
      const updates = Stream.repeatEffectWithSchedule(
        Effect.either(op.overview),
        // fixed: an interval from start to start, whatever the overview's own time
        Schedule.fixed(interval)
      ).pipe(
        Stream.filterMap((result) => {
          const text = result._tag === "Right"
            ? `event: overview\ndata: ${JSON.stringify(result.right)}\n\n`
            : `event: failure\ndata: ${JSON.stringify({ error: result.left.message })}\n\n`
          if (text === last) return Option.none()
          last = text
          return Option.some(encoder.encode(text))
        })
      )
      // a comment now and then keeps proxies from closing a quiet connection
      const keepAlive = Stream.tick("15 seconds").pipe(Stream.as(encoder.encode(": keep-alive\n\n")))
      return HttpServerResponse.stream(Stream.merge(updates, keepAlive), {
        contentType: "text/event-stream",
        headers: { "cache-control": "no-cache", "x-accel-buffering": "no" }
      })
    })
  )
  return Layer.mergeAll(HttpLayerRouter.addHttpApi(Api), Page, Live).pipe(Layer.provide(handlers(options)))
}

/**
 * `layer`'s options from the environment: `EVENTSTORE_ADMIN_TOKEN` (optional; read-only without it).
 *
 * @since 0.1.0
 */
export const optionsConfig: Config.Config<Options> = Config.map(
  Config.option(Config.redacted("EVENTSTORE_ADMIN_TOKEN")),
  (token) => Option.match(token, { onNone: () => ({}), onSome: (adminToken) => ({ adminToken }) })
)

/**
 * A Node HTTP server with just the dashboard, on `port` (0 picks a free one: read it from the `HttpServer` this
 * layer provides) and `host` (default 127.0.0.1). Needs the `Operator`.
 *
 * @since 0.1.0
 */
export const serve = (options: Options & { readonly port: number; readonly host?: string }) =>
  HttpLayerRouter.serve(layer(options), { disableLogger: true, disableListenLog: true }).pipe(
    Layer.provideMerge(NodeHttpServer.layer(createServer, { port: options.port, host: options.host ?? "127.0.0.1" }))
  )

/**
 * A client of a dashboard's API at `baseUrl` (what the CLI's `--url` mode uses); `adminToken` is sent with every
 * request. Needs an `HttpClient` (`FetchHttpClient.layer`, `NodeHttpClient.layer`).
 *
 * @since 0.1.0
 */
export const client = (baseUrl: string, adminToken?: Redacted.Redacted<string>) =>
  HttpApiClient.make(Api, {
    baseUrl,
    ...(adminToken !== undefined
      ? {
        transformClient: HttpClient.mapRequest(HttpClientRequest.bearerToken(Redacted.value(adminToken)))
      }
      : {})
  })

/** @internal the type of `client`'s result */
export type Client = Effect.Effect.Success<ReturnType<typeof client>>

/** @internal */
export type ServerOf = HttpServer.HttpServer
