/**
 * The `effect-eventstore` operator CLI: browse, tail, check and repair a store from a terminal or a script. It is
 * made of the `Operator` (the same queries the dashboard answers) and connects as the library does: `--db FILE`
 * (SQLite), `--pg URL` (PostgreSQL) or `--url URL` (a running dashboard, through its API), each with an environment
 * fallback (`EVENTSTORE_DB`, `EVENTSTORE_PG`, `EVENTSTORE_URL`; the PostgreSQL URL and the admin token are
 * `Redacted`).
 *
 * Conventions, the same for every command:
 * - `--json`: one JSON object on stdout (NDJSON for `tail` and `export`); human output (aligned columns) otherwise.
 *   Progress goes to stderr, never into the data.
 * - A failure is one line on stderr, `error: <_tag>: <message>` (with `--json`: `{"error":{...}}`), and exit code 1.
 * - Checks (`projections check`, `bus check`, `db doctor`) answer like Nagios plugins: a first line
 *   `OK|WARN|CRIT: ...`, exit code 0/1/2, and 3 (`UNKNOWN`) when they could not check.
 * - Commands that change the store say so first in their help ("Changes the store: ..."), ask for `--yes` (or
 *   `y` at a prompt when stdin is a terminal; without either they refuse with `NotConfirmed`), and print what they
 *   changed.
 *
 * The standalone bin knows no projection handlers: `projections rebuild` and `parked retry` need them. Run the CLI
 * from your own code with your projections for those (`Cli.run({ projections })`), or use `--url` against the
 * dashboard of the service that runs them.
 *
 * Startup is kept short (a status check is a whole process): PostgreSQL, NATS and the HTTP client are loaded only
 * when their option is used.
 *
 * @example
 * ```ts
 * // scripts/eventstore.ts: the CLI with this service's projections (rebuild, parked retry)
 * import * as Cli from "effect-eventstore/Cli"
 * import { Balances, DailyTotals } from "../src/projections.js"
 *
 * Cli.run({ projections: [Balances, DailyTotals] })
 * ```
 *
 * @since 0.1.0
 */
import * as Args from "@effect/cli/Args"
import * as Command from "@effect/cli/Command"
import * as Options from "@effect/cli/Options"
import * as NodeFileSystem from "@effect/platform-node/NodeFileSystem"
import * as NodePath from "@effect/platform-node/NodePath"
import * as NodeRuntime from "@effect/platform-node/NodeRuntime"
import * as NodeTerminal from "@effect/platform-node/NodeTerminal"
import type * as SqlClient from "@effect/sql/SqlClient"
import * as Cause from "effect/Cause"
import * as Chunk from "effect/Chunk"
import * as Config from "effect/Config"
import * as Context from "effect/Context"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Layer from "effect/Layer"
import * as Logger from "effect/Logger"
import * as Option from "effect/Option"
import * as Redacted from "effect/Redacted"
import * as Schema from "effect/Schema"
import type * as Scope from "effect/Scope"
import * as Stream from "effect/Stream"
import * as fs from "node:fs"
import { createRequire } from "node:module"
import * as readline from "node:readline"
import { InvalidInput, StoreError } from "./Errors.js"
import { EventStore } from "./EventStore.js"
import * as Operator from "./Operator.js"
import * as Projection from "./Projection.js"
import * as Sqlite from "./Sqlite.js"

// ---------------------------------------------------------------------------------------------------------------------
// Errors of the CLI itself
// ---------------------------------------------------------------------------------------------------------------------

/**
 * The SQLite file given to a command does not exist (only `db migrate` creates one).
 *
 * @since 0.1.0
 */
export class StoreFileNotFound extends Schema.TaggedError<StoreFileNotFound>()("StoreFileNotFound", {
  filename: Schema.String
}) {
  override get message() {
    return `SQLite file ${this.filename} does not exist ` +
      `(create a store with: effect-eventstore db migrate --db ${this.filename})`
  }
}

/**
 * A command that changes the store ran without `--yes`, on a stdin that is not a terminal (nobody to ask), or the
 * answer at the prompt was not yes. Nothing was changed.
 *
 * @since 0.1.0
 */
export class NotConfirmed extends Schema.TaggedError<NotConfirmed>()("NotConfirmed", {
  action: Schema.String,
  reason: Schema.String
}) {
  override get message() {
    return `${this.action}: ${this.reason}; nothing was changed`
  }
}

// ---------------------------------------------------------------------------------------------------------------------
// What `run` hands to the commands
// ---------------------------------------------------------------------------------------------------------------------

/** @since 0.1.0 */
export interface RunOptions {
  /** Your projections: what `projections rebuild` and `parked retry` run (their handlers, in this process). */
  readonly projections?: ReadonlyArray<Projection.Projection<any, any, any>>
  /** How a rebuild runs them (`Projection.layer`'s options: batch size, retry, lease). */
  readonly projectionOptions?: Projection.Options
  /** The command line after the script's name; default `process.argv.slice(2)`. */
  readonly argv?: ReadonlyArray<string>
}

/**
 * The projections the commands may run (provided by `run`; absent: none).
 *
 * @since 0.1.0
 */
export class Registered extends Context.Tag("effect-eventstore/Cli/Registered")<Registered, {
  readonly projections: ReadonlyArray<Projection.Projection<any, any, any>>
  readonly projectionOptions: Projection.Options
}>() {}

const registered = Effect.map(
  Effect.serviceOption(Registered),
  Option.getOrElse(() => ({ projections: [], projectionOptions: {} }))
)

// ---------------------------------------------------------------------------------------------------------------------
// Output
// ---------------------------------------------------------------------------------------------------------------------

const out = (text: string) => Effect.sync(() => void process.stdout.write(`${text}\n`))
const err = (text: string) => Effect.sync(() => void process.stderr.write(`${text}\n`))
const outJson = (value: unknown) => out(JSON.stringify(value))

/** Aligned columns; the last one is not padded. */
const table = (head: ReadonlyArray<string>, rows: ReadonlyArray<ReadonlyArray<string>>): string => {
  const widths = head.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? "").length)))
  const line = (cells: ReadonlyArray<string>) =>
    cells.map((c, i) => i === cells.length - 1 ? c : c.padEnd(widths[i]!)).join("  ").trimEnd()
  return [line(head), ...rows.map(line)].join("\n")
}

/** `key  value` lines, keys aligned. */
const pairs = (entries: ReadonlyArray<readonly [string, string]>): string => {
  const width = Math.max(...entries.map(([k]) => k.length))
  return entries.map(([k, v]) => `${k.padEnd(width)}  ${v}`).join("\n")
}

const seconds = (s: number) => s === 0 ? "0" : s < 10 ? s.toFixed(1) : String(Math.round(s))

const duration = (ms: number): string => {
  if (!Number.isFinite(ms)) return "?"
  if (ms < 1000) return `${Math.round(ms)} ms`
  const s = ms / 1000
  if (s < 60) return `${s.toFixed(1)} s`
  const m = Math.floor(s / 60)
  if (m < 60) return `${m}m ${String(Math.round(s % 60)).padStart(2, "0")}s`
  return `${Math.floor(m / 60)}h ${String(m % 60).padStart(2, "0")}m`
}

const rate = (n: number) => n >= 100 ? String(Math.round(n)) : String(Math.round(n * 10) / 10)

const eventLine = (e: Operator.EventView) =>
  `${e.position} ${e.streamId}@${e.version} ${e.type} ${JSON.stringify(e.payload)}`

/** Keeps the keys whose value is defined: options objects under `exactOptionalPropertyTypes`. */
const defined = <T extends Record<string, unknown>>(o: T): { [K in keyof T]?: Exclude<T[K], undefined> } => {
  const result: Record<string, unknown> = {}
  for (const [k, v] of Object.entries(o)) if (v !== undefined) result[k] = v
  return result as { [K in keyof T]?: Exclude<T[K], undefined> }
}

const some = Option.getOrUndefined

// ---------------------------------------------------------------------------------------------------------------------
// Failures: one line, and the exit code
// ---------------------------------------------------------------------------------------------------------------------

/** What the commands fail with: any tagged error (the library's, the HTTP client's, the CLI's). */
interface Failure {
  readonly _tag: string
  readonly message: string
}

const describe = (
  cause: Cause.Cause<unknown>
): { readonly tag: string; readonly message: string; readonly fields: object } => {
  const failure = Cause.failureOption(cause)
  const error: unknown = Option.isSome(failure) ? failure.value : Cause.squash(cause)
  if (typeof error === "object" && error !== null) {
    const tag = (error as { _tag?: unknown })._tag
    const message = (error as { message?: unknown }).message
    const fields: Record<string, unknown> = {}
    for (const [k, v] of Object.entries(error)) {
      // an HTTP error's request carries the admin token in its headers: never printed
      if (k === "cause" || k === "stack" || k === "request" || k === "response" || typeof v === "function") continue
      fields[k] = v
    }
    const cause = (error as { cause?: unknown }).cause
    if (cause !== undefined) fields.cause = cause instanceof Error ? cause.message : String(cause)
    return {
      tag: typeof tag === "string" ? tag : Option.isSome(failure) ? "Error" : "Defect",
      message: typeof message === "string" && message.length > 0 ? message : String(error),
      fields
    }
  }
  return { tag: Option.isSome(failure) ? "Error" : "Defect", message: String(error), fields: {} }
}

/**
 * Runs a command's body: a failure is printed (one line) and sets the exit code (1; 3 for a check, which also prints
 * its `UNKNOWN` line on stdout). An interruption (SIGINT) passes through: the process ends with 0.
 */
const guarded = <R>(json: boolean, check: boolean, body: Effect.Effect<void, unknown, R>): Effect.Effect<void, never, R> =>
  Effect.catchAllCause(body, (cause) => {
    if (Cause.isInterruptedOnly(cause)) return Effect.failCause(cause as Cause.Cause<never>)
    const { fields, message, tag } = describe(cause)
    return Effect.sync(() => {
      if (check) {
        process.stdout.write(
          json
            ? `${JSON.stringify({ level: "UNKNOWN", code: 3, error: { _tag: tag, message, ...fields } })}\n`
            : `UNKNOWN: ${tag}: ${message}\n`
        )
      }
      process.stderr.write(
        json ? `${JSON.stringify({ error: { ...fields, _tag: tag, message } })}\n` : `error: ${tag}: ${message}\n`
      )
      if (!json && tag === "ProjectionFailed") {
        const f = fields as { position?: number; eventType?: string; streamId?: string; eventId?: string }
        process.stderr.write(
          `  at position ${f.position}, event type ${f.eventType}${f.streamId ? `, stream ${f.streamId}` : ""}${
            f.eventId ? `, event ${f.eventId}` : ""
          }\n`
        )
      }
      process.exitCode = check ? 3 : 1
    })
  })

/**
 * Asks before a change: `--yes` goes on; a terminal on stdin is asked y/N; anything else refuses with `NotConfirmed`.
 */
const confirm = (yes: boolean, action: string): Effect.Effect<void, NotConfirmed> => {
  if (yes) return Effect.void
  if (process.stdin.isTTY !== true) {
    return Effect.fail(
      new NotConfirmed({ action, reason: "this changes the store: pass --yes (stdin is not a terminal to ask)" })
    )
  }
  return Effect.flatMap(
    Effect.async<string>((resume) => {
      const rl = readline.createInterface({ input: process.stdin, output: process.stderr })
      rl.question(`${action}. Go on? [y/N] `, (answer) => {
        rl.close()
        resume(Effect.succeed(answer))
      })
      return Effect.sync(() => rl.close())
    }),
    (answer) =>
      /^y(es)?$/i.test(answer.trim())
        ? Effect.void
        : Effect.fail(new NotConfirmed({ action, reason: "not confirmed at the prompt" }))
  )
}

// ---------------------------------------------------------------------------------------------------------------------
// Connecting
// ---------------------------------------------------------------------------------------------------------------------

const connectionOptions = {
  db: Options.text("db").pipe(
    Options.withDescription("The store's SQLite file (env EVENTSTORE_DB)."),
    Options.withFallbackConfig(Config.string("EVENTSTORE_DB")),
    Options.optional
  ),
  pg: Options.redacted("pg").pipe(
    Options.withDescription("The store's PostgreSQL URL (env EVENTSTORE_PG)."),
    Options.withFallbackConfig(Config.redacted("EVENTSTORE_PG")),
    Options.optional
  ),
  schema: Options.text("schema").pipe(
    Options.withDescription("With --pg: the schema of the store's tables; default public (env EVENTSTORE_PG_SCHEMA)."),
    Options.withFallbackConfig(Config.string("EVENTSTORE_PG_SCHEMA")),
    Options.optional
  ),
  url: Options.text("url").pipe(
    Options.withDescription("A running dashboard's URL, to work through its API (env EVENTSTORE_URL)."),
    Options.withFallbackConfig(Config.string("EVENTSTORE_URL")),
    Options.optional
  ),
  token: Options.redacted("token").pipe(
    Options.withDescription("With --url: the dashboard's admin token, for actions (env EVENTSTORE_ADMIN_TOKEN)."),
    Options.withFallbackConfig(Config.redacted("EVENTSTORE_ADMIN_TOKEN")),
    Options.optional
  )
}

interface Connection {
  readonly db: Option.Option<string>
  readonly pg: Option.Option<Redacted.Redacted>
  readonly schema: Option.Option<string>
  readonly url: Option.Option<string>
  readonly token: Option.Option<Redacted.Redacted>
}

type Target =
  | { readonly _tag: "sqlite"; readonly filename: string }
  | { readonly _tag: "pg"; readonly url: Redacted.Redacted; readonly schema: string | undefined }
  | { readonly _tag: "remote"; readonly url: string; readonly token: Redacted.Redacted | undefined }

const targetOf = (c: Connection): Effect.Effect<Target, InvalidInput> => {
  const given = (Option.isSome(c.db) ? 1 : 0) + (Option.isSome(c.pg) ? 1 : 0) + (Option.isSome(c.url) ? 1 : 0)
  if (given !== 1) {
    return Effect.fail(
      new InvalidInput({
        field: "connection",
        reason: given === 0
          ? "give the store: --db FILE (SQLite), --pg URL (PostgreSQL) or --url URL (a dashboard)"
          : "give only one of --db, --pg and --url"
      })
    )
  }
  if (Option.isSome(c.db)) return Effect.succeed({ _tag: "sqlite", filename: c.db.value })
  if (Option.isSome(c.pg)) return Effect.succeed({ _tag: "pg", url: c.pg.value, schema: some(c.schema) })
  return Effect.succeed({ _tag: "remote", url: (c.url as Option.Some<string>).value, token: some(c.token) })
}

/** Where the command works, without credentials. */
const describeTarget = (target: Target): string => {
  if (target._tag === "sqlite") return target.filename
  if (target._tag === "remote") return target.url
  const schema = ` (schema ${target.schema ?? "public"})`
  try {
    const url = new URL(Redacted.value(target.url) as string)
    return `postgres://${url.host}${url.pathname}${schema}`
  } catch {
    return `PostgreSQL${schema}`
  }
}

type LocalTarget = Exclude<Target, { readonly _tag: "remote" }>

const localOnly = (target: Target, what: string): Effect.Effect<LocalTarget, Operator.Unsupported> =>
  target._tag === "remote"
    ? Effect.fail(new Operator.Unsupported({ reason: `${what} works on the store itself: give --db or --pg, not --url` }))
    : Effect.succeed(target)

type StoreServices = EventStore | SqlClient.SqlClient

/** The store's layer; the SQLite file must exist unless `create`. */
const storeLayer = (target: LocalTarget, create = false): Layer.Layer<StoreServices, Failure> =>
  Layer.unwrapEffect(Effect.gen(function*() {
    if (target._tag === "sqlite") {
      if (!create && target.filename !== ":memory:" && !fs.existsSync(target.filename)) {
        return yield* new StoreFileNotFound({ filename: target.filename })
      }
      return Sqlite.layer({ filename: target.filename }) as Layer.Layer<StoreServices, Failure>
    }
    const Postgres = yield* Effect.promise(() => import("./Postgres.js"))
    return Postgres.layer({
      url: target.url,
      applicationName: "effect-eventstore-cli",
      maxConnections: 2,
      ...(target.schema !== undefined ? { schema: target.schema } : {})
    }) as Layer.Layer<StoreServices, Failure>
  }))

// ---------------------------------------------------------------------------------------------------------------------
// What the commands do, locally or through a dashboard
// ---------------------------------------------------------------------------------------------------------------------

interface Progress {
  readonly processed: number
  readonly total: number
  readonly eventsPerSecond: number
  readonly etaMillis?: number | undefined
  readonly done: boolean
}

/** The operator's queries, on the store (`Operator`) or through a dashboard's API. */
interface Ops {
  readonly where: string
  readonly head: Effect.Effect<number, Failure>
  readonly overview: Effect.Effect<Operator.Overview, Failure>
  readonly streams: (query: Operator.StreamsQuery) => Effect.Effect<Operator.StreamsPage, Failure>
  readonly stream: (id: string, query: Operator.StreamQuery) => Effect.Effect<Operator.EventsPage, Failure>
  readonly event: (id: string) => Effect.Effect<Operator.EventDetail, Failure>
  readonly after: (
    position: number,
    options: { readonly streamId?: string; readonly streamType?: string; readonly limit?: number }
  ) => Effect.Effect<ReadonlyArray<Operator.EventView>, Failure>
  readonly projections: Effect.Effect<ReadonlyArray<Operator.ProjectionInfo>, Failure>
  readonly check: (
    thresholds: Operator.Thresholds,
    names: ReadonlyArray<string>
  ) => Effect.Effect<Operator.CheckResult, Failure>
  readonly parked: (
    projection: string | undefined,
    options: { readonly after?: number; readonly until?: number; readonly limit?: number }
  ) => Effect.Effect<Operator.ParkedPage, Failure>
  readonly parkedEvent: (projection: string, position: number) => Effect.Effect<
    { readonly parked: Operator.ParkedView; readonly event?: Operator.EventView | undefined },
    Failure
  >
  readonly skip: (projection: string, position: number, until: number | undefined) => Effect.Effect<number, Failure>
  readonly retry: (projection: string, position: number, until: number | undefined) => Effect.Effect<number, Failure>
  readonly rebuild: (name: string) => Stream.Stream<Progress, Failure>
  readonly doctor: Effect.Effect<Operator.Doctor, Failure>
}

const projectionOf = (ops: Ops, name: string) =>
  Effect.flatMap(ops.projections, (all) => {
    const found = all.find((p) => p.name === name)
    return found === undefined
      ? Effect.fail(new Operator.NotFound({ what: "projection", id: name }))
      : Effect.succeed(found)
  })

const localOps = (op: Operator.OperatorService, where: string): Ops => ({
  where,
  head: op.head,
  overview: op.overview,
  streams: op.streams,
  stream: op.stream,
  event: op.event,
  after: op.after,
  projections: op.projections,
  check: (thresholds, names) => op.check(thresholds, names.length === 0 ? undefined : names),
  parked: op.parked,
  parkedEvent: op.parkedEvent,
  skip: op.skip,
  retry: (projection, position, until) => Effect.map(op.retry(projection, position, until), (r) => r.retried),
  rebuild: op.rebuild,
  doctor: op.doctor
})

const withLocal = <A, R>(
  target: LocalTarget,
  body: (ops: Ops) => Effect.Effect<A, unknown, R>,
  options: { readonly running?: Projection.Projection<any, any, any> } = {}
): Effect.Effect<A, unknown, Exclude<R, StoreServices | Operator.Operator | Projection.Projections> | Scope.Scope> =>
  Effect.gen(function*() {
    const { projectionOptions, projections } = yield* registered
    const store = storeLayer(target)
    let layer: Layer.Layer<Operator.Operator | StoreServices, Failure>
    if (options.running !== undefined) {
      const SqlProjection = yield* Effect.promise(() => import("./SqlProjection.js"))
      // only the projection asked for runs here: the others stay where they run
      const running = Projection.layer([options.running], projectionOptions) as Layer.Layer<
        Projection.Projections,
        Failure,
        EventStore | Projection.CheckpointStore | SqlClient.SqlClient
      >
      layer = Operator.layer({ projections }).pipe(
        Layer.provideMerge(running),
        Layer.provideMerge(SqlProjection.layer),
        Layer.provideMerge(store)
      )
    } else {
      layer = Operator.layer({ projections }).pipe(Layer.provideMerge(store))
    }
    const context = yield* Layer.build(layer)
    const op = Context.get(context, Operator.Operator)
    return yield* Effect.provide(body(localOps(op, describeTarget(target))), context)
  }) as any

/** Same as `withLocal`, or through a dashboard. */
const withOps = <A, R>(
  target: Target,
  body: (ops: Ops) => Effect.Effect<A, unknown, R>
): Effect.Effect<A, unknown, Exclude<R, StoreServices | Operator.Operator | Projection.Projections> | Scope.Scope> =>
  target._tag === "remote"
    ? Effect.flatMap(remoteOps(target), (ops) => body(ops)) as any
    : withLocal(target, body)

// --- through a dashboard ---------------------------------------------------------------------------------------------

const remoteOps = (target: Extract<Target, { readonly _tag: "remote" }>): Effect.Effect<Ops, Failure> =>
  Effect.gen(function*() {
    const [Dashboard, FetchHttpClient] = yield* Effect.promise(() =>
      Promise.all([import("./Dashboard.js"), import("@effect/platform/FetchHttpClient")])
    )
    const base = target.url.replace(/\/+$/, "")
    const client = yield* Dashboard.client(base, target.token as Redacted.Redacted<string> | undefined).pipe(
      Effect.provide(FetchHttpClient.layer)
    )
    // the HTTP client in every call; a refused action's error as the library's class
    const call = <A, E>(effect: Effect.Effect<A, E, any>): Effect.Effect<A, Failure> =>
      effect.pipe(
        Effect.provide(FetchHttpClient.layer),
        Effect.mapError((e): Failure => {
          const error = e as unknown as {
            _tag: string
            position?: number
            eventType?: string
            reason?: string
          }
          if (error._tag === "ProjectionFailed" && !(error instanceof Projection.ProjectionFailed)) {
            return new Projection.ProjectionFailed({
              projection: "",
              position: error.position ?? 0,
              eventId: "",
              streamId: "",
              eventType: error.eventType ?? "",
              reason: error.reason ?? ""
            })
          }
          return error as Failure
        })
      ) as Effect.Effect<A, Failure>
    const projections = call(Effect.map(client.store.projections(), (r) => r.projections))
    const ops: Ops = {
      where: base,
      head: call(Effect.map(client.store.overview(), (o) => o.head)),
      overview: call(client.store.overview()),
      streams: (q) =>
        call(client.store.streams({
          urlParams: defined({
            prefix: q.prefix,
            type: q.streamType,
            eventType: q.eventType,
            since: q.since,
            until: q.until,
            after: q.after,
            limit: q.limit
          })
        })),
      stream: (id, q) =>
        call(client.store.stream({
          path: { id },
          urlParams: defined({ from: q.from, direction: q.direction, limit: q.limit })
        })),
      event: (id) => call(client.store.event({ path: { id } })),
      after: (position, o) =>
        call(Effect.map(
          client.store.log({
            urlParams: defined({ after: position, stream: o.streamId, type: o.streamType, limit: o.limit })
          }),
          (r) => r.events
        )),
      projections,
      check: (thresholds, names) =>
        names.length <= 1
          ? call(client.store.check({ urlParams: defined({ ...thresholds, name: names[0] }) }))
          : call(Effect.map(client.store.check({ urlParams: defined({ ...thresholds }) }), (all) => {
            const chosen = all.projections.filter((p) => names.includes(p.name))
            const rank = { OK: 0, WARN: 1, CRIT: 2 } as const
            const level = chosen.reduce<Operator.Level>((w, p) => rank[p.level] > rank[w] ? p.level : w, "OK")
            return { level, code: rank[level], projections: chosen }
          })),
      parked: (projection, o) =>
        call(client.store.parked({ urlParams: defined({ projection, after: o.after, until: o.until, limit: o.limit }) })),
      parkedEvent: (projection, position) => call(client.store.parkedEvent({ path: { projection, position } })),
      skip: (projection, position, until) =>
        call(Effect.map(
          client.admin.skip({ path: { projection }, urlParams: { position, ...defined({ until }) } }),
          (r) => r.deleted
        )),
      retry: (projection, position, until) =>
        call(Effect.map(
          client.admin.retry({ path: { projection }, urlParams: { position, ...defined({ until }) } }),
          (r) => r.retried
        )),
      rebuild: (name) => remoteRebuild(name, projections, call(client.admin.rebuild({ path: { name } }))),
      doctor: call(client.store.doctor())
    }
    return ops
  })

/**
 * A rebuild through a dashboard: started there, followed through the projection's status (polled) until its last
 * progress, or its failure.
 */
const remoteRebuild = (
  name: string,
  projections: Effect.Effect<ReadonlyArray<Operator.ProjectionInfo>, Failure>,
  start: Effect.Effect<unknown, Failure>
): Stream.Stream<Progress, Failure> =>
  Stream.unwrap(Effect.gen(function*() {
    const find = Effect.flatMap(projections, (all) => {
      const found = all.find((p) => p.name === name)
      return found === undefined
        ? Effect.fail(new Operator.NotFound({ what: "projection", id: name }))
        : Effect.succeed(found)
    })
    const before = JSON.stringify((yield* find).rebuild ?? null)
    yield* start
    const startedAt = Date.now()
    let seen = false
    let finished = false
    return Stream.repeatEffectOption(
      Effect.gen(function*() {
        if (finished) return yield* Effect.fail(Option.none())
        yield* Effect.sleep("250 millis")
        const info = yield* Effect.mapError(find, Option.some)
        if (info.state === "failed" && info.failure !== undefined) {
          return yield* Effect.fail(Option.some<Failure>(
            new Projection.ProjectionFailed({
              projection: name,
              position: info.failure.position,
              eventId: "",
              streamId: "",
              eventType: info.failure.eventType,
              reason: info.failure.reason
            })
          ))
        }
        const progress = info.rebuild
        // the last rebuild's final progress stays in the status until this one reports
        if (info.state === "rebuilding" || (progress !== undefined && JSON.stringify(progress) !== before)) seen = true
        if (!seen || progress === undefined) {
          if (Date.now() - startedAt > 30_000) {
            return yield* Effect.fail(Option.some<Failure>(
              new Operator.Unsupported({ reason: `the dashboard did not report a rebuild of ${name} within 30 s` })
            ))
          }
          return { processed: 0, total: info.head, eventsPerSecond: 0, done: false }
        }
        if (progress.done) finished = true
        return progress
      })
    )
  }))

// ---------------------------------------------------------------------------------------------------------------------
// The leaves: connection options, --json, the guard
// ---------------------------------------------------------------------------------------------------------------------

const json = Options.boolean("json").pipe(Options.withDescription("Print JSON (one object; NDJSON for streams of events)."))
const yes = Options.boolean("yes").pipe(Options.withDescription("Do it without asking."))

const common = { connection: connectionOptions, json }

interface Common {
  readonly connection: Connection
  readonly json: boolean
}

const leaf = <Name extends string, const C extends Command.Command.Config>(
  name: Name,
  description: string,
  config: C,
  body: (
    c: Command.Command.ParseConfig<C> & Common,
    target: Target
  ) => Effect.Effect<void, unknown, Registered | Scope.Scope>,
  options: { readonly check?: boolean } = {}
) =>
  Command.make(name, { ...config, ...common }, (c) => {
    const all = c as unknown as Command.Command.ParseConfig<C> & Common
    return guarded(
      all.json,
      options.check === true,
      Effect.scoped(Effect.flatMap(targetOf(all.connection), (target) => body(all, target)))
    )
  }).pipe(Command.withDescription(description))

const group = <Name extends string>(name: Name, description: string) =>
  Command.make(name).pipe(Command.withDescription(description))

// ---------------------------------------------------------------------------------------------------------------------
// streams, stream, event, tail
// ---------------------------------------------------------------------------------------------------------------------

/** A time: epoch ms, ISO 8601, or a duration back from now (`90s`, `15m`, `2h`, `7d`). */
const timeOf = (field: string, text: string | undefined): Effect.Effect<number | undefined, InvalidInput> => {
  if (text === undefined) return Effect.succeed(undefined)
  if (/^\d+$/.test(text)) return Effect.succeed(Number(text))
  const ago = /^(\d+(?:\.\d+)?)(ms|s|m|h|d)$/.exec(text)
  if (ago !== null) {
    const unit = { ms: 1, s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 }[ago[2] as "ms"]
    return Effect.succeed(Date.now() - Math.round(Number(ago[1]) * unit))
  }
  const parsed = Date.parse(text)
  return Number.isNaN(parsed)
    ? Effect.fail(new InvalidInput({ field, reason: "must be epoch ms, an ISO 8601 time or a duration ago (15m, 2h, 7d)" }))
    : Effect.succeed(parsed)
}

const limit = Options.integer("limit").pipe(
  Options.withDescription("At most this many (1 to 1000; default 100)."),
  Options.optional
)

const streamsLs = leaf(
  "ls",
  "Lists streams by id, a page at a time (keyset paging: pass the page's `next` as --after).",
  {
    prefix: Options.text("prefix").pipe(Options.withDescription("Only streams whose id starts with this."), Options.optional),
    type: Options.text("type").pipe(Options.withDescription("Only streams of this stream type."), Options.optional),
    eventType: Options.text("event-type").pipe(
      Options.withDescription("Only streams holding an event of this type."),
      Options.optional
    ),
    since: Options.text("since").pipe(
      Options.withDescription("Only streams written at or after this time (epoch ms, ISO 8601, or 15m / 2h / 7d ago)."),
      Options.optional
    ),
    until: Options.text("until").pipe(Options.withDescription("Only streams last written before this time."), Options.optional),
    after: Options.text("after").pipe(
      Options.withDescription("Streams after this id: the previous page's next."),
      Options.optional
    ),
    limit
  },
  (c, target) =>
    withOps(target, (ops) =>
      Effect.gen(function*() {
        const since = yield* timeOf("since", some(c.since))
        const until = yield* timeOf("until", some(c.until))
        const page = yield* ops.streams({
          prefix: some(c.prefix),
          streamType: some(c.type),
          eventType: some(c.eventType),
          since,
          until,
          after: some(c.after),
          limit: some(c.limit)
        })
        if (c.json) return yield* outJson(page)
        yield* out(table(
          ["STREAM", "TYPE", "VERSION", "LAST EVENT AT"],
          page.streams.map((s) => [s.streamId, s.streamType, String(s.version), s.lastRecordedAt])
        ))
        if (page.next !== undefined) yield* out(`next page: --after ${JSON.stringify(page.next)}`)
      }))
)

const streamShow = leaf(
  "show",
  "Shows a stream's events, a page at a time, from its first version (or its last, with --backward).",
  {
    from: Options.integer("from").pipe(Options.withDescription("The page's first version."), Options.optional),
    backward: Options.boolean("backward").pipe(Options.withDescription("Newest first.")),
    limit,
    id: Args.text({ name: "stream" }).pipe(Args.withDescription("The stream's id."))
  },
  (c, target) =>
    withOps(target, (ops) =>
      Effect.gen(function*() {
        const page = yield* ops.stream(c.id, {
          from: some(c.from),
          direction: c.backward ? "backward" : "forward",
          limit: some(c.limit)
        })
        if (c.json) return yield* outJson(page)
        yield* out(table(
          ["VERSION", "POSITION", "TYPE", "RECORDED AT", "PAYLOAD"],
          page.events.map((e) => [String(e.version), String(e.position), e.type, e.recordedAt, JSON.stringify(e.payload)])
        ))
        if (page.next !== undefined) {
          yield* out(`next page: --from ${page.next}${c.backward ? " --backward" : ""}`)
        }
      }))
)

const eventRows = (events: ReadonlyArray<Operator.EventView>) =>
  table(
    ["POSITION", "STREAM", "TYPE", "EVENT ID", "RECORDED AT"],
    events.map((e) => [String(e.position), `${e.streamId}@${e.version}`, e.type, e.eventId, e.recordedAt])
  )

const eventShow = leaf(
  "show",
  "Shows an event (by id or position) with its metadata, its causes and the events of its correlation.",
  { id: Args.text({ name: "id|position" }).pipe(Args.withDescription("The event's id, or its position.")) },
  (c, target) =>
    withOps(target, (ops) =>
      Effect.gen(function*() {
        const detail = yield* ops.event(c.id)
        if (c.json) return yield* outJson(detail)
        const e = detail.event
        yield* out(pairs([
          ["event", e.eventId],
          ["position", String(e.position)],
          ["stream", `${e.streamId} (type ${e.streamType}), version ${e.version}`],
          ["type", `${e.type} (schema version ${e.schemaVersion})`],
          ["recorded at", e.recordedAt],
          ["payload", JSON.stringify(e.payload)],
          ["metadata", JSON.stringify(e.metadata)]
        ]))
        yield* out("")
        yield* out(
          detail.causes.length === 0 ? "causes: none" : `causes (nearest first):\n${eventRows(detail.causes)}`
        )
        yield* out("")
        yield* out(
          detail.related.length === 0
            ? "related: none"
            : `related (same correlation id, or caused by it; within ${Operator.CHAIN_WINDOW} positions):\n${
              eventRows(detail.related)
            }`
        )
      }))
)

const tail = leaf(
  "tail",
  "Follows the log live: one line per event (`position stream@version type payload`), NDJSON with --json. " +
    "Starts at the head (or after --from) and runs until interrupted.",
  {
    all: Options.boolean("all").pipe(Options.withDescription("Every stream.")),
    type: Options.text("type").pipe(Options.withDescription("Only streams of this stream type."), Options.optional),
    from: Options.integer("from").pipe(
      Options.withDescription("Start after this position (0: the beginning); default the head."),
      Options.optional
    ),
    stream: Args.text({ name: "stream" }).pipe(Args.withDescription("Only this stream."), Args.optional)
  },
  (c, target) =>
    withOps(target, (ops) =>
      Effect.gen(function*() {
        const stream = some(c.stream)
        const type = some(c.type)
        if ([stream !== undefined, c.all, type !== undefined].filter(Boolean).length !== 1) {
          return yield* new InvalidInput({ field: "tail", reason: "give one of: a stream id, --all, --type T" })
        }
        const filter = defined({ streamId: stream, streamType: type })
        let position = Option.isSome(c.from) ? c.from.value : yield* ops.head
        const what = stream ?? (type !== undefined ? `stream type ${type}` : "all streams")
        yield* err(`tail: following ${what} after position ${position}`)
        // polls every 20 ms: a commit shows within that plus one query (SQLite needs no server to notify)
        for (;;) {
          const events = yield* ops.after(position, { ...filter, limit: 1000 })
          if (events.length > 0) {
            let text = ""
            for (const e of events) text += `${c.json ? JSON.stringify(e) : eventLine(e)}\n`
            yield* write(process.stdout, text)
            position = events[events.length - 1]!.position
          }
          if (events.length < 1000) yield* Effect.sleep("20 millis")
        }
      }))
)

/** Writes to a stream, waiting for it to drain when its buffer is full (a slow reader holds the producer back). */
const write = (stream: NodeJS.WritableStream, text: string): Effect.Effect<void> =>
  stream.write(text)
    ? Effect.void
    : Effect.async<void>((resume) => {
      const go = () => resume(Effect.void)
      stream.once("drain", go)
      return Effect.sync(() => stream.removeListener("drain", go))
    })

// ---------------------------------------------------------------------------------------------------------------------
// projections
// ---------------------------------------------------------------------------------------------------------------------

const projectionRows = (all: ReadonlyArray<Operator.ProjectionInfo>) =>
  table(
    ["NAME", "POSITION", "HEAD", "LAG", "LAG S", "STALLED S", "PARKED", "STATE", "LEASED"],
    all.map((p) => [
      p.name,
      String(p.position),
      String(p.head),
      String(p.lag),
      seconds(p.lagSeconds),
      seconds(p.stalledSeconds),
      String(p.parked),
      p.state ?? "-",
      p.leased ? "yes" : "no"
    ])
  )

const projectionDetail = (p: Operator.ProjectionInfo) =>
  pairs([
    ["projection", p.name],
    ["position", String(p.position)],
    ["head", String(p.head)],
    ["lag", `${p.lag} events, ${seconds(p.lagSeconds)} s`],
    ["stalled", `${seconds(p.stalledSeconds)} s`],
    ["checkpoint moved", p.updatedAt],
    ["leased", p.leased ? "yes (a runner holds it)" : "no"],
    ...(p.state !== undefined ? [["state", p.state] as const] : []),
    ...(p.eventsPerSecond !== undefined ? [["events/s", rate(p.eventsPerSecond)] as const] : []),
    ...(p.failure !== undefined
      ? [["failed at", `position ${p.failure.position} (${p.failure.eventType}): ${p.failure.reason}`] as const]
      : []),
    ...(p.rebuild !== undefined
      ? [[
        "rebuild",
        `${p.rebuild.processed}/${p.rebuild.total}, ${rate(p.rebuild.eventsPerSecond)} events/s${p.rebuild.done ? ", done" : ""}`
      ] as const]
      : []),
    ["parked", String(p.parked)],
    ...(p.lastParked !== undefined
      ? [[
        "last parked",
        `position ${p.lastParked.position} (${p.lastParked.eventType}): ${p.lastParked.reason}`
      ] as const]
      : [])
  ])

const projectionsLs = leaf(
  "ls",
  "Lists the projections' checkpoints: position, head, lag (events and seconds), stall, parked events.",
  {},
  (c, target) =>
    withOps(target, (ops) =>
      Effect.gen(function*() {
        const all = yield* ops.projections
        if (c.json) return yield* outJson({ projections: all })
        yield* out(all.length === 0 ? "no projections (no checkpoint saved yet)" : projectionRows(all))
      }))
)

const projectionsStatus = leaf(
  "status",
  "The store at a glance (head, events/s, parked) with every projection; or one projection in detail.",
  { name: Args.text({ name: "name" }).pipe(Args.withDescription("One projection."), Args.optional) },
  (c, target) =>
    withOps(target, (ops) =>
      Effect.gen(function*() {
        if (Option.isSome(c.name)) {
          const p = yield* projectionOf(ops, c.name.value)
          return yield* c.json ? outJson(p) : out(projectionDetail(p))
        }
        const o = yield* ops.overview
        if (c.json) return yield* outJson(o)
        yield* out(pairs([
          ["store", ops.where],
          ["head", String(o.head)],
          ["last event at", o.lastRecordedAt ?? "-"],
          ["events/s", `${rate(o.eventsPerSecond)} (last 10 s)`],
          ["parked", String(o.parked)]
        ]))
        yield* out("")
        yield* out(o.projections.length === 0 ? "no projections (no checkpoint saved yet)" : projectionRows(o.projections))
      }))
)

const thresholdOptions = {
  warnLag: Options.integer("warn-lag").pipe(Options.withDescription("WARN at this many events behind."), Options.optional),
  critLag: Options.integer("crit-lag").pipe(Options.withDescription("CRIT at this many events behind."), Options.optional),
  warnLagSeconds: Options.integer("warn-lag-seconds").pipe(
    Options.withDescription("WARN when the oldest waiting event is this many seconds old."),
    Options.optional
  ),
  critLagSeconds: Options.integer("crit-lag-seconds").pipe(
    Options.withDescription("CRIT when the oldest waiting event is this many seconds old."),
    Options.optional
  ),
  warnStalled: Options.integer("warn-stalled").pipe(
    Options.withDescription("WARN when the checkpoint has not moved for this many seconds while events wait."),
    Options.optional
  ),
  critStalled: Options.integer("crit-stalled").pipe(
    Options.withDescription("CRIT when the checkpoint has not moved for this many seconds while events wait."),
    Options.optional
  ),
  warnParked: Options.integer("warn-parked").pipe(Options.withDescription("WARN at this many parked events."), Options.optional),
  critParked: Options.integer("crit-parked").pipe(Options.withDescription("CRIT at this many parked events."), Options.optional)
}

interface ThresholdConfig {
  readonly warnLag: Option.Option<number>
  readonly critLag: Option.Option<number>
  readonly warnLagSeconds: Option.Option<number>
  readonly critLagSeconds: Option.Option<number>
  readonly warnStalled: Option.Option<number>
  readonly critStalled: Option.Option<number>
  readonly warnParked: Option.Option<number>
  readonly critParked: Option.Option<number>
}

const thresholdsOf = (c: ThresholdConfig): Operator.Thresholds =>
  defined({
    lagWarn: some(c.warnLag),
    lagCrit: some(c.critLag),
    lagSecondsWarn: some(c.warnLagSeconds),
    lagSecondsCrit: some(c.critLagSeconds),
    stalledWarn: some(c.warnStalled),
    stalledCrit: some(c.critStalled),
    parkedWarn: some(c.warnParked),
    parkedCrit: some(c.critParked)
  })

/** Nagios: the first line `LEVEL: summary | perfdata`, a line per projection, the exit code. */
const printCheck = (result: Operator.CheckResult, json: boolean, what: string) =>
  Effect.gen(function*() {
    process.exitCode = result.code
    if (json) return yield* outJson(result)
    const bad = result.projections.filter((p) => p.level !== "OK")
    const summary = result.projections.length === 0
      ? `no ${what}s to check`
      : bad.length === 0
      ? `${result.projections.length} ${what}${result.projections.length === 1 ? "" : "s"} OK`
      : bad.map((p) => `${p.name}: ${p.reasons.join(", ")}`).join("; ")
    const perf = result.projections
      .map((p) =>
        `${p.name}_lag=${p.lag} ${p.name}_lag_seconds=${seconds(p.lagSeconds)}s ` +
        `${p.name}_stalled=${seconds(p.stalledSeconds)}s ${p.name}_parked=${p.parked}`
      )
      .join(" ")
    yield* out(`${result.level}: ${summary}${perf.length > 0 ? ` | ${perf}` : ""}`)
    for (const p of result.projections) {
      yield* out(
        `  ${p.name}: ${p.level}, lag ${p.lag} (${seconds(p.lagSeconds)} s), stalled ${seconds(p.stalledSeconds)} s, ` +
          `parked ${p.parked}${p.reasons.length > 0 ? ` — ${p.reasons.join(", ")}` : ""}`
      )
    }
  })

const projectionsCheck = leaf(
  "check",
  "Checks the projections against thresholds, Nagios style: OK/WARN/CRIT on the first line, exit code 0/1/2 " +
    "(3: could not check). A stalled checkpoint (frozen while events wait) is caught whatever its lag.",
  {
    ...thresholdOptions,
    name: Options.text("name").pipe(Options.withDescription("Only this projection (repeat for more)."), Options.repeated)
  },
  (c, target) =>
    withOps(target, (ops) => Effect.flatMap(ops.check(thresholdsOf(c), c.name), (r) => printCheck(r, c.json, "projection"))),
  { check: true }
)

const progressLine = (name: string, p: Progress) => {
  const pct = p.total > 0 ? ` (${Math.min(100, Math.floor((p.processed * 100) / p.total))}%)` : ""
  const eta = p.done ? "done" : p.etaMillis !== undefined ? `ETA ${duration(p.etaMillis)}` : "ETA ?"
  return `rebuild ${name}: ${p.processed}/${p.total}${pct}, ${rate(p.eventsPerSecond)} events/s, ${eta}`
}

/** How fast this process reads the log: a lower bound of a rebuild's time (its handlers add theirs). */
const readRate = Effect.gen(function*() {
  const store = yield* EventStore
  const started = performance.now()
  const n = yield* store.readAll({ pageSize: 1000 }).pipe(Stream.take(10_000), Stream.runCount)
  const ms = performance.now() - started
  return n === 0 ? undefined : (n * 1000) / Math.max(ms, 1)
})

const projectionsRebuild = leaf(
  "rebuild",
  "Changes the store: rebuilds a projection from the beginning of the log (its read model is reset, or built " +
    "beside the old one for a blue/green projection), printing progress, rate and ETA; any failure is printed with " +
    "its event's position and type (exit 1). Runs the projection's handlers: from your own code (Cli.run({ projections })), " +
    "or through --url against the dashboard of the service that runs it. --dry-run shows what it would do.",
  {
    dryRun: Options.boolean("dry-run").pipe(Options.withDescription("Show the scope and an estimate; change nothing.")),
    yes,
    name: Args.text({ name: "name" }).pipe(Args.withDescription("The projection."))
  },
  (c, target) =>
    Effect.gen(function*() {
      const { projections } = yield* registered
      const definition = projections.find((p) => p.name === c.name)
      if (c.dryRun) return yield* rebuildDryRun(c.name, definition, target, c.json)
      yield* confirm(c.yes, `Rebuild projection ${c.name} from the beginning of the log (${describeTarget(target)})`)
      const run = (ops: Ops) =>
        Effect.gen(function*() {
          const started = Date.now()
          let shown = 0
          let last: Progress | undefined = undefined
          yield* ops.rebuild(c.name).pipe(
            Stream.runForEach((p) =>
              Effect.sync(() => {
                last = p
                const now = Date.now()
                if (p.done || now - shown >= 500) {
                  shown = now
                  process.stderr.write(`${progressLine(c.name, p)}\n`)
                }
              })
            )
          )
          const end = last as Progress | undefined
          const result = {
            rebuilt: c.name,
            processed: end?.processed ?? 0,
            total: end?.total ?? 0,
            seconds: Math.round((Date.now() - started) / 100) / 10
          }
          yield* c.json
            ? outJson(result)
            : out(`rebuilt ${c.name}: ${result.processed} events in ${result.seconds} s`)
        })
      if (target._tag === "remote") return yield* withOps(target, run)
      if (definition === undefined) {
        return yield* new Operator.Unsupported({
          reason: `projection ${JSON.stringify(c.name)} is not registered with this CLI: a rebuild runs its handlers. ` +
            "Run the CLI from your service's code with Cli.run({ projections }), or use --url against its dashboard" +
            (projections.length > 0 ? ` (registered here: ${projections.map((p) => p.name).join(", ")})` : "")
        })
      }
      return yield* withLocal(target, (ops) =>
        Effect.gen(function*() {
          const live = yield* Projection.Projections
          // the runner starts as a standby: give it a moment to take the lease (another process may hold it)
          yield* live.changes(c.name).pipe(
            Stream.filter((s) => s.state !== "standby"),
            Stream.runHead,
            Effect.timeout("3 seconds"),
            Effect.ignore
          )
          return yield* run(ops)
        }), { running: definition })
    })
)


const rebuildDryRun = (
  name: string,
  definition: Projection.Projection<any, any, any> | undefined,
  target: Target,
  json: boolean
) =>
  withOps(target, (ops) =>
    Effect.gen(function*() {
      const head = yield* ops.head
      const info = yield* projectionOf(ops, name).pipe(
        Effect.map(Option.some),
        Effect.catchTag("NotFound", () => Effect.succeed(Option.none()))
      )
      if (Option.isNone(info) && definition === undefined) {
        return yield* new Operator.NotFound({ what: "projection", id: name })
      }
      const checkpoint = Option.match(info, { onNone: () => 0, onSome: (p) => p.position })
      const mode = definition === undefined
        ? undefined
        : definition.tables !== undefined
        ? "blue/green: the new read model is built beside the one readers use, then replaces it"
        : definition.reset !== undefined
        ? "reset: the read model is emptied, then replayed"
        : "none: the projection has no reset (nor tables), it cannot be rebuilt"
      let perSecond: number | undefined = undefined
      let basis = "unknown"
      const live = Option.flatMap(info, (p) => Option.fromNullable(p.eventsPerSecond))
      if (Option.isSome(live) && live.value > 0) {
        perSecond = live.value
        basis = "the projection's recent rate"
      } else if (target._tag !== "remote") {
        perSecond = yield* readRate
        basis = "reading the log alone (a lower bound: handlers add their time)"
      }
      const estimateSeconds = perSecond === undefined ? undefined : Math.round((head / perSecond) * 10) / 10
      const result = {
        dryRun: true,
        projection: name,
        registered: target._tag === "remote" ? undefined : definition !== undefined,
        mode,
        checkpoint,
        head,
        eventsToReplay: head,
        estimate: { seconds: estimateSeconds, eventsPerSecond: perSecond, basis }
      }
      if (json) return yield* outJson(defined(result))
      yield* out(pairs([
        ["projection", name],
        ...(target._tag === "remote"
          ? []
          : [[
            "registered here",
            definition !== undefined ? "yes" : "no (a rebuild needs its handlers: Cli.run({ projections }))"
          ] as const]),
        ...(mode !== undefined ? [["mode", mode] as const] : []),
        ["checkpoint", Option.isSome(info) ? String(checkpoint) : "none saved yet"],
        ["head", String(head)],
        ["to replay", `up to ${head} events (positions 1..${head}; the head moves on meanwhile)`],
        [
          "estimate",
          estimateSeconds === undefined
            ? "unknown"
            : `about ${duration(estimateSeconds * 1000)} at ${rate(perSecond!)} events/s: ${basis}`
        ],
        ["dry run", "nothing was changed"]
      ]))
    }))

// ---------------------------------------------------------------------------------------------------------------------
// parked
// ---------------------------------------------------------------------------------------------------------------------

const parkedLs = leaf(
  "ls",
  "Lists parked events (events a projection skipped after failing on them), by position.",
  {
    projection: Options.text("projection").pipe(Options.withDescription("Only this projection's."), Options.optional),
    after: Options.integer("after").pipe(
      Options.withDescription("After this position: the previous page's next."),
      Options.optional
    ),
    limit
  },
  (c, target) =>
    withOps(target, (ops) =>
      Effect.gen(function*() {
        const page = yield* ops.parked(some(c.projection), defined({ after: some(c.after), limit: some(c.limit) }))
        if (c.json) return yield* outJson(page)
        yield* out(page.parked.length === 0 ? "no parked events" : table(
          ["PROJECTION", "POSITION", "TYPE", "STREAM", "PARKED AT", "REASON"],
          page.parked.map((p) => [p.projection, String(p.position), p.eventType, p.streamId, p.parkedAt, p.reason])
        ))
        if (page.next !== undefined) yield* out(`next page: --after ${page.next}`)
      }))
)

const position = Args.integer({ name: "position" }).pipe(Args.withDescription("The parked event's position."))
const projectionArg = Args.text({ name: "projection" }).pipe(Args.withDescription("The projection."))
const until = Options.integer("until").pipe(
  Options.withDescription("A range: every parked event of the projection from <position> to this one (inclusive)."),
  Options.optional
)

const parkedShow = leaf(
  "show",
  "Shows a parked event: why it was parked, and the event.",
  { projection: projectionArg, position },
  (c, target) =>
    withOps(target, (ops) =>
      Effect.gen(function*() {
        const r = yield* ops.parkedEvent(c.projection, c.position)
        if (c.json) return yield* outJson(r)
        yield* out(pairs([
          ["projection", r.parked.projection],
          ["position", String(r.parked.position)],
          ["event", r.parked.eventId],
          ["stream", r.parked.streamId],
          ["type", r.parked.eventType],
          ["parked at", r.parked.parkedAt],
          ["reason", r.parked.reason],
          ["payload", r.event === undefined ? "(the event is gone from the log)" : JSON.stringify(r.event.payload)],
          ["metadata", r.event === undefined ? "-" : JSON.stringify(r.event.metadata)]
        ]))
      }))
)

const rangeText = (position: number, until: number | undefined) =>
  until === undefined ? `position ${position}` : `positions ${position}..${until}`

const parkedRetry = leaf(
  "retry",
  "Changes the store: hands parked events (one, or a range with --until) to the projection's handler again, " +
    "a page at a time; each one handled leaves the parked list. Stops at the first that fails again (printed with " +
    "its position and type). Needs the projection's handlers (Cli.run({ projections })) or --url.",
  { yes, until, projection: projectionArg, position },
  (c, target) =>
    Effect.gen(function*() {
      const last = some(c.until)
      yield* confirm(c.yes, `Retry the parked events of ${c.projection} at ${rangeText(c.position, last)}`)
      const retried = yield* withOps(target, (ops) => ops.retry(c.projection, c.position, last))
      yield* c.json
        ? outJson({ projection: c.projection, retried })
        : out(
          `retried ${retried} parked event${retried === 1 ? "" : "s"} of ${c.projection} ` +
            `(${rangeText(c.position, last)}): handled and removed from the parked list`
        )
    })
)

const parkedSkip = leaf(
  "skip",
  "Changes the store: deletes parked events (one, or a range with --until) without handling them, a page at a " +
    "time. The projection's checkpoint is past them already: they are dropped for good.",
  { yes, until, projection: projectionArg, position },
  (c, target) =>
    Effect.gen(function*() {
      const last = some(c.until)
      yield* confirm(c.yes, `Delete the parked events of ${c.projection} at ${rangeText(c.position, last)} without handling them`)
      const deleted = yield* withOps(target, (ops) => ops.skip(c.projection, c.position, last))
      yield* c.json
        ? outJson({ projection: c.projection, deleted })
        : out(`deleted ${deleted} parked event${deleted === 1 ? "" : "s"} of ${c.projection} (${rangeText(c.position, last)})`)
    })
)

// ---------------------------------------------------------------------------------------------------------------------
// bus
// ---------------------------------------------------------------------------------------------------------------------

const forwarder = Options.text("forwarder").pipe(
  Options.withDescription("The forwarder projection's name."),
  Options.withDefault("bus-forwarder")
)

const busStatus = leaf(
  "status",
  "The bus forwarder's checkpoint: how far the log is published to the bus.",
  { forwarder },
  (c, target) =>
    withOps(target, (ops) =>
      Effect.gen(function*() {
        const p = yield* projectionOf(ops, c.forwarder)
        yield* c.json ? outJson(p) : out(projectionDetail(p))
      }))
)

const busCheck = leaf(
  "check",
  "Checks the bus forwarder against thresholds, Nagios style (exit 0/1/2, 3: could not check).",
  { ...thresholdOptions, forwarder },
  (c, target) =>
    withOps(target, (ops) => Effect.flatMap(ops.check(thresholdsOf(c), [c.forwarder]), (r) => printCheck(r, c.json, "forwarder"))),
  { check: true }
)

const natsUrl = Options.text("nats").pipe(Options.withDescription("The NATS server's URL (env NATS_URL)."))

const busRepublish = leaf(
  "republish",
  "Changes the bus: publishes the log again from after --from (to --to, default the head) to the JetStream " +
    "stream, page by page. Events the bus holds already (within its duplicate window) are not duplicated. " +
    "Opening the bus creates the stream if missing and applies its settings.",
  {
    yes,
    from: Options.integer("from").pipe(Options.withDescription("Publish the events after this position (0: all).")),
    to: Options.integer("to").pipe(Options.withDescription("Up to this position; default the head."), Options.optional),
    nats: natsUrl.pipe(Options.withFallbackConfig(Config.string("NATS_URL"))),
    stream: Options.text("stream").pipe(Options.withDescription("The JetStream stream; default EVENTS."), Options.optional),
    prefix: Options.text("prefix").pipe(Options.withDescription("The subject prefix; default events."), Options.optional)
  },
  (c, target) =>
    Effect.gen(function*() {
      const local = yield* localOnly(target, "bus republish")
      const to = some(c.to)
      yield* confirm(
        c.yes,
        `Publish the events after position ${c.from}${to === undefined ? "" : ` up to ${to}`} to the bus at ${c.nats} again`
      )
      const [Bus, Nats] = yield* Effect.promise(() => Promise.all([import("./Bus.js"), import("./Nats.js")]))
      const bus = Nats.layerBus(defined({ stream: some(c.stream), prefix: some(c.prefix) })).pipe(
        Layer.provide(Nats.layer({ servers: c.nats, name: "effect-eventstore-cli" }))
      )
      const started = Date.now()
      const published = yield* Bus.republish(defined({ fromPosition: c.from, toPosition: to })).pipe(
        Effect.provide(Layer.merge(storeLayer(local), bus))
      )
      const result = { published, from: c.from, seconds: Math.round((Date.now() - started) / 100) / 10 }
      yield* c.json
        ? outJson(defined({ ...result, to }))
        : out(
          `published ${published} events (after position ${c.from}${to === undefined ? "" : `, up to ${to}`}) ` +
            `in ${result.seconds} s`
        )
    })
)

// ---------------------------------------------------------------------------------------------------------------------
// db
// ---------------------------------------------------------------------------------------------------------------------

interface SchemaState {
  readonly tables: ReadonlyArray<string>
  readonly migrations: ReadonlyArray<string>
}

/** The library's tables and applied migrations, read with the plain driver (before the store's layer migrates). */
const schemaState = (target: LocalTarget): Effect.Effect<SchemaState, Failure> =>
  Effect.tryPromise({
    try: async (): Promise<SchemaState> => {
      if (target._tag === "sqlite") {
        if (target.filename === ":memory:" || !fs.existsSync(target.filename)) return { tables: [], migrations: [] }
        const { default: Database } = await import("better-sqlite3")
        const db = new Database(target.filename, { readonly: true, fileMustExist: true })
        try {
          const tables = (db.prepare(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name LIKE 'eventstore\\_%' ESCAPE '\\' ORDER BY name"
          ).all() as Array<{ name: string }>).map((r) => r.name)
          const migrations = tables.includes("eventstore_migrations")
            ? (db.prepare("SELECT name FROM eventstore_migrations ORDER BY migration_id").all() as Array<{ name: string }>)
              .map((r) => r.name)
            : []
          return { tables, migrations }
        } finally {
          db.close()
        }
      }
      const { default: Pg } = await import("pg")
      const client = new Pg.Client({ connectionString: Redacted.value(target.url) as string })
      await client.connect()
      try {
        const schema = target.schema ?? "public"
        const tables = (await client.query(
          "SELECT table_name AS name FROM information_schema.tables " +
            "WHERE table_schema = $1 AND table_name LIKE 'eventstore\\_%' ORDER BY 1",
          [schema]
        )).rows.map((r: { name: string }) => r.name)
        const migrations = tables.includes("eventstore_migrations")
          ? (await client.query(`SELECT name FROM "${schema.replace(/"/g, "\"\"")}".eventstore_migrations ORDER BY migration_id`))
            .rows.map((r: { name: string }) => r.name)
          : []
        return { tables, migrations }
      } finally {
        await client.end()
      }
    },
    catch: (cause) =>
      new InvalidInput({
        field: "store",
        reason: `cannot read its schema: ${cause instanceof Error ? cause.message : String(cause)}`
      })
  })

const dbMigrate = leaf(
  "migrate",
  "Changes the store: creates the store (the SQLite file, or the PostgreSQL schema) and its tables if missing, " +
    "and applies the library's pending migrations (the checkpoint tables of projections included).",
  { yes },
  (c, target) =>
    Effect.gen(function*() {
      const local = yield* localOnly(target, "db migrate")
      const existed = local._tag === "pg" || fs.existsSync(local.filename)
      const before = yield* schemaState(local)
      yield* confirm(c.yes, `Create or migrate the store's schema in ${describeTarget(local)}`)
      const SqlProjection = yield* Effect.promise(() => import("./SqlProjection.js"))
      yield* Effect.provide(SqlProjection.migrate, storeLayer(local, true))
      const after = yield* schemaState(local)
      const result = {
        store: describeTarget(local),
        created: !existed,
        tables: after.tables.filter((t) => !before.tables.includes(t)),
        migrations: after.migrations.filter((m) => !before.migrations.includes(m))
      }
      if (c.json) return yield* outJson(result)
      if (result.created) yield* out(`created ${result.store}`)
      yield* out(
        result.migrations.length === 0 && result.tables.length === 0
          ? `${result.store}: up to date, nothing changed`
          : [
            ...(result.migrations.length > 0 ? [`applied migrations: ${result.migrations.join(", ")}`] : []),
            ...(result.tables.length > 0 ? [`created tables: ${result.tables.join(", ")}`] : [])
          ].join("\n")
      )
    })
)

type Finding = Operator.Doctor["findings"][number]

/** The JetStream stream's duplicate window: without one, a republished event is delivered twice. */
const natsFindings = (servers: string, stream: string): Effect.Effect<ReadonlyArray<Finding>, Failure> =>
  Effect.gen(function*() {
    const Nats = yield* Effect.promise(() => import("./Nats.js"))
    return yield* Effect.gen(function*() {
      const client = yield* Nats.NatsClient
      const info = yield* Effect.tryPromise({
        try: () => client.manager.streams.info(stream),
        catch: (cause) => cause
      }).pipe(Effect.either)
      if (info._tag === "Left") {
        const reason = info.left instanceof Error ? info.left.message : String(info.left)
        return [{
          setting: `nats stream ${stream}`,
          value: "missing",
          level: "CRIT" as const,
          advice: `cannot read the stream (${reason}): Nats.layerBus({ stream }) creates it`
        }]
      }
      const window = Number(info.right.config.duplicate_window ?? 0)
      return [
        window > 0
          ? {
            setting: `nats ${stream} duplicate_window`,
            value: duration(window / 1e6),
            level: "OK" as const,
            advice: "a republished event within the window is dropped by its id"
          }
          : {
            setting: `nats ${stream} duplicate_window`,
            value: "0",
            level: "CRIT" as const,
            advice: "no duplicate window: a republished or retried event is delivered twice (Nats.layerBus sets 2 minutes)"
          }
      ]
    }).pipe(Effect.provide(
      Nats.layer({ servers, name: "effect-eventstore-cli", connectTimeout: "5 seconds", maxReconnectAttempts: 0 })
    ))
  })

const dbDoctor = leaf(
  "doctor",
  "Flags unsafe settings, Nagios style (exit 0/1/2, 3: could not check): SQLite synchronous below FULL or no WAL, " +
    "PostgreSQL synchronous_commit off, and with --nats and --stream a JetStream stream without a duplicate window.",
  {
    nats: natsUrl.pipe(Options.optional),
    stream: Options.text("stream").pipe(
      Options.withDescription("With --nats: the JetStream stream of the events (default EVENTS)."),
      Options.optional
    )
  },
  (c, target) =>
    Effect.gen(function*() {
      // the journal mode as the file has it, read before the store opens it (opening turns WAL on)
      const journal = target._tag === "sqlite" ? yield* journalModeOf(target.filename) : undefined
      return yield* withOps(target, (ops) =>
      Effect.gen(function*() {
        const found = yield* ops.doctor
        const doctor = journal === undefined ? found : {
          ...found,
          findings: found.findings.map((f) =>
            f.setting === "journal_mode"
              ? journal.toLowerCase() === "wal"
                ? { ...f, value: journal, level: "OK" as const }
                : {
                  ...f,
                  value: journal,
                  level: "WARN" as const,
                  advice: "not WAL: readers block the writer (Sqlite.layer turns WAL on when it opens the file)"
                }
              : f.setting === "synchronous"
              ? { ...f, advice: `${f.advice} (set per connection: this is the CLI's; a service's shows through --url)` }
              : f
          )
        }
        const extra = Option.isSome(c.nats)
          ? yield* natsFindings(c.nats.value, Option.getOrElse(c.stream, () => "EVENTS"))
          : []
        const findings = [...doctor.findings, ...extra]
        const rank = { OK: 0, WARN: 1, CRIT: 2 } as const
        const level = findings.reduce<Operator.Level>((w, f) => rank[f.level] > rank[w] ? f.level : w, "OK")
        process.exitCode = rank[level]
        const result = { backend: doctor.backend, ok: level === "OK", level, code: rank[level], findings }
        if (c.json) return yield* outJson(result)
        const bad = findings.filter((f) => f.level !== "OK")
        yield* out(
          `${level}: ${doctor.backend} ${
            bad.length === 0 ? "settings are safe" : bad.map((f) => `${f.setting}=${f.value}`).join(", ")
          }`
        )
        yield* out(table(["SETTING", "VALUE", "LEVEL", "ADVICE"], findings.map((f) => [f.setting, f.value, f.level, f.advice])))
      }))
    }),
  { check: true }
)

/** An SQLite file's journal mode, read on a read-only connection of its own (undefined if the file is missing). */
const journalModeOf = (filename: string) =>
  Effect.tryPromise({
    try: async () => {
      if (!fs.existsSync(filename)) return undefined
      const { default: Database } = await import("better-sqlite3")
      const db = new Database(filename, { readonly: true, fileMustExist: true })
      try {
        return String(db.pragma("journal_mode", { simple: true }))
      } finally {
        db.close()
      }
    },
    catch: (cause) => new StoreError({ operation: "doctor.journal_mode", cause })
  })

// ---------------------------------------------------------------------------------------------------------------------
// export, import
// ---------------------------------------------------------------------------------------------------------------------

/** Progress on stderr at most every second. */
const ticker = (label: (n: number, perSecond: number) => string) => {
  const started = performance.now()
  let shown = started
  return {
    tick: (n: number) => {
      const now = performance.now()
      if (now - shown < 1000) return
      shown = now
      process.stderr.write(`${label(n, (n * 1000) / (now - started))}\n`)
    },
    seconds: () => (performance.now() - started) / 1000
  }
}

const CHUNK_BYTES = 1 << 20

const exportCommand = leaf(
  "export",
  "Writes events as NDJSON (their stored form, one per line, by position) to stdout or --out: all of them, one " +
    "stream, or the streams of one type. Progress on stderr.",
  {
    stream: Options.text("stream").pipe(Options.withDescription("Only this stream."), Options.optional),
    type: Options.text("type").pipe(Options.withDescription("Only streams of this stream type."), Options.optional),
    output: Options.text("out").pipe(Options.withDescription("Write to this file instead of stdout."), Options.optional)
  },
  (c, target) =>
    Effect.gen(function*() {
      const local = yield* localOnly(target, "export")
      const file = some(c.output)
      yield* withLocal(local, () =>
        Effect.gen(function*() {
          const op = yield* Operator.Operator
          const fd = file === undefined ? undefined : yield* Effect.acquireRelease(
            Effect.try({
              try: () => fs.openSync(file, "w"),
              catch: (e) => new InvalidInput({ field: "out", reason: e instanceof Error ? e.message : String(e) })
            }),
            (fd) => Effect.sync(() => fs.closeSync(fd))
          )
          const progress = ticker((n, r) => `export: ${n} events, ${rate(r)} events/s`)
          let count = 0
          // a page (5000 lines) is one string and one write
          const put = (text: string) =>
            fd === undefined ? write(process.stdout, text) : Effect.sync(() => void fs.writeSync(fd, text))
          yield* op.exportEvents(defined({ streamId: some(c.stream), streamType: some(c.type) })).pipe(
            Stream.runForEachChunk((chunk) =>
              Effect.suspend(() => {
                if (chunk.length === 0) return Effect.void
                count += chunk.length
                progress.tick(count)
                return put(`${Chunk.toReadonlyArray(chunk).join("\n")}\n`)
              })
            )
          )
          const secs = progress.seconds()
          const result = {
            exported: count,
            seconds: Math.round(secs * 10) / 10,
            eventsPerSecond: Math.round(count / Math.max(secs, 0.001))
          }
          yield* err(`export: ${count} events in ${duration(secs * 1000)} (${rate(result.eventsPerSecond)} events/s)`)
          if (file !== undefined) yield* c.json ? outJson({ ...result, out: file }) : out(`exported ${count} events to ${file}`)
        }))
    })
)

const IMPORT_LINES = 50_000

/** The lines of a file (or stdin), `IMPORT_LINES` at a time. */
const linesOf = (input: NodeJS.ReadableStream): Stream.Stream<ReadonlyArray<string>, Failure> =>
  Stream.fromAsyncIterable(
    (async function*() {
      let rest = ""
      let lines: Array<string> = []
      // one decoder for the whole input: a character split between two reads is joined, not replaced
      const decoder = new TextDecoder("utf-8")
      for await (const piece of input) {
        const text = rest + (typeof piece === "string" ? piece : decoder.decode(piece as Uint8Array, { stream: true }))
        let start = 0
        for (;;) {
          const end = text.indexOf("\n", start)
          if (end < 0) break
          lines.push(text.slice(start, end))
          start = end + 1
          if (lines.length >= IMPORT_LINES) {
            yield lines
            lines = []
          }
        }
        rest = text.slice(start)
      }
      rest += decoder.decode()
      if (rest.length > 0) lines.push(rest)
      if (lines.length > 0) yield lines
    })(),
    (cause) => new InvalidInput({ field: "input", reason: cause instanceof Error ? cause.message : String(cause) })
  )

const importCommand = leaf(
  "import",
  "Changes the store: writes events from NDJSON made by export (a file, or stdin), 50,000 lines at a time, each " +
    "with its id, stream, version and time as they were. Idempotent: events stored already (same id, stream and " +
    "version) are skipped, so a second import of a file writes nothing. Progress on stderr.",
  {
    yes,
    file: Args.text({ name: "file" }).pipe(
      Args.withDescription("The NDJSON file; stdin when absent."),
      Args.optional
    )
  },
  (c, target) =>
    Effect.gen(function*() {
      const local = yield* localOnly(target, "import")
      const file = some(c.file)
      yield* confirm(c.yes, `Import events from ${file ?? "stdin"} into ${describeTarget(local)}`)
      yield* withLocal(local, () =>
        Effect.gen(function*() {
          const op = yield* Operator.Operator
          if (file !== undefined && !fs.existsSync(file)) {
            return yield* new InvalidInput({ field: "file", reason: `${file} does not exist` })
          }
          const input = file === undefined
            ? process.stdin
            : fs.createReadStream(file, { highWaterMark: CHUNK_BYTES })
          const progress = ticker((n, r) => `import: ${n} lines, ${written} written, ${skipped} skipped, ${rate(r)} lines/s`)
          let lines = 0
          let written = 0
          let skipped = 0
          yield* linesOf(input).pipe(
            Stream.runForEach((chunk) =>
              Effect.map(op.importLines(chunk, { firstLine: lines + 1 }), (r) => {
                lines += chunk.length
                written += r.written
                skipped += r.skipped
                progress.tick(lines)
              })
            ),
            // the chunks before the one that failed are written: say so
            Effect.tapError(() =>
              err(`import: stopped after line ${lines}: ${written} events written, ${skipped} skipped before the failing chunk (nothing of that chunk was written)`)
            )
          )
          const secs = progress.seconds()
          yield* err(`import: ${lines} lines in ${duration(secs * 1000)} (${rate(lines / Math.max(secs, 0.001))} lines/s)`)
          yield* c.json
            ? outJson({ written, skipped })
            : out(`imported into ${describeTarget(local)}: ${written} written, ${skipped} skipped (stored already)`)
        }))
    })
)

// ---------------------------------------------------------------------------------------------------------------------
// serve
// ---------------------------------------------------------------------------------------------------------------------

const serve = leaf(
  "serve",
  "Serves the dashboard (and its API, what --url talks to) for the store, until interrupted. Read-only unless " +
    "an admin token is set.",
  {
    port: Options.integer("port").pipe(Options.withDescription("The port (0: any free one)."), Options.withDefault(8080)),
    host: Options.text("host").pipe(Options.withDescription("The interface."), Options.withDefault("127.0.0.1")),
    adminToken: Options.redacted("admin-token").pipe(
      Options.withDescription(
        "Allows the actions (rebuild, parked retry/skip) for requests bearing it (env EVENTSTORE_ADMIN_TOKEN)."
      ),
      Options.withFallbackConfig(Config.redacted("EVENTSTORE_ADMIN_TOKEN")),
      Options.optional
    )
  },
  (c, target) =>
    Effect.gen(function*() {
      const local = yield* localOnly(target, "serve")
      const [Dashboard, HttpServer] = yield* Effect.promise(() =>
        Promise.all([import("./Dashboard.js"), import("@effect/platform/HttpServer")])
      )
      yield* withLocal(local, () =>
        Effect.gen(function*() {
          const context = yield* Layer.build(
            Dashboard.serve({
              port: c.port,
              host: c.host,
              ...(Option.isSome(c.adminToken) ? { adminToken: c.adminToken.value as Redacted.Redacted<string> } : {})
            })
          )
          const address = Context.get(context, HttpServer.HttpServer).address
          const url = address._tag === "TcpAddress" ? `http://${address.hostname}:${address.port}` : address.path
          yield* c.json
            ? outJson({ url, readOnly: Option.isNone(c.adminToken) })
            : err(`dashboard on ${url}${Option.isNone(c.adminToken) ? " (read-only)" : ""}`)
          return yield* Effect.never
        }))
    })
)

// ---------------------------------------------------------------------------------------------------------------------
// The tree, and running it
// ---------------------------------------------------------------------------------------------------------------------

/**
 * The command tree, for tests or to embed in a CLI of your own (`Command.withSubcommands`). It reads the projections
 * to run from `Registered` (none when absent) and reports through `process.exitCode`.
 *
 * @since 0.1.0
 */
export const command = Command.make("effect-eventstore").pipe(
  Command.withDescription("Browse, tail, check and repair an effect-eventstore event store."),
  Command.withSubcommands([
    group("streams", "The streams of the store.").pipe(Command.withSubcommands([streamsLs])),
    group("stream", "One stream.").pipe(Command.withSubcommands([streamShow])),
    tail,
    group("event", "One event.").pipe(Command.withSubcommands([eventShow])),
    group("projections", "Projections: checkpoints, lag, checks, rebuilds.").pipe(
      Command.withSubcommands([projectionsLs, projectionsStatus, projectionsCheck, projectionsRebuild])
    ),
    group("parked", "Parked events: the events projections skipped after failing on them.").pipe(
      Command.withSubcommands([parkedLs, parkedShow, parkedRetry, parkedSkip])
    ),
    group("bus", "The bus forwarder: status, check, republish.").pipe(
      Command.withSubcommands([busStatus, busCheck, busRepublish])
    ),
    group("db", "The database: schema and safety settings.").pipe(Command.withSubcommands([dbMigrate, dbDoctor])),
    exportCommand,
    importCommand,
    serve
  ])
)

// the package's version, from src/ or dist/ (or a bundle one folder further down)
const version: string = (() => {
  const require = createRequire(import.meta.url)
  for (const candidate of ["../package.json", "../../package.json"]) {
    try {
      const json = require(candidate) as { name?: string; version?: string }
      if (json.name === "effect-eventstore" && json.version !== undefined) return json.version
    } catch {
      // not there
    }
  }
  return "unknown"
})()

const cli = Command.run(command, { name: "effect-eventstore", version })

const platform = Layer.mergeAll(
  NodeFileSystem.layer,
  NodePath.layer,
  NodeTerminal.layer,
  // the library's log lines (a rebuild's, a projection's) go to stderr: stdout is the commands' output
  Logger.replace(Logger.defaultLogger, Logger.prettyLogger({ stderr: true }))
)

/**
 * Runs the CLI as the process's main program and exits with its code: 0 when it went well, 1 on a failure (2 for a
 * CRIT check, 3 when a check could not check), 0 after SIGINT (`tail`, `serve`).
 *
 * @since 0.1.0
 */
export const run = (options: RunOptions = {}): void => {
  const argv = options.argv ?? process.argv.slice(2)
  const program = cli(["node", "effect-eventstore", ...argv]).pipe(
    Effect.provide(platform),
    Effect.provideService(Registered, {
      projections: options.projections ?? [],
      projectionOptions: options.projectionOptions ?? {}
    })
  )
  // a reader that went away (`| head`) ends the output, not with a stack trace
  process.stdout.on("error", (e: NodeJS.ErrnoException) => {
    if (e.code === "EPIPE") process.exit(process.exitCode ?? 0)
  })
  NodeRuntime.runMain(program, {
    disableErrorReporting: true,
    disablePrettyLogger: true,
    teardown: (exit, onExit) => {
      // a command's failure was printed and set the code; what fails here is the command line (printed by the parser)
      // (a refused command line of a check is UNKNOWN, 3, as Nagios reads it)
      const code = Exit.isFailure(exit) && !Cause.isInterruptedOnly(exit.cause)
        ? (typeof process.exitCode === "number" && process.exitCode !== 0
          ? process.exitCode
          : argv.some((a) => a === "check" || a === "doctor") ? 3 : 1)
        : typeof process.exitCode === "number" ? process.exitCode : 0
      onExit(code)
      process.exit(code)
    }
  })
}
