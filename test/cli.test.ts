/**
 * The `effect-eventstore` CLI as an operator runs it: child processes against real stores (SQLite files, and
 * PostgreSQL for a few commands), asserting their output and exit codes.
 *
 * Most commands run from a bundle of the sources (`src/bin.ts` and the user's own CLI `test/fixtures/cli-app.ts`,
 * built with esbuild before the tests): the same code, loaded in a fraction of the time `tsx`'s loader hooks take
 * per process (about 0.5 s of CPU against 3.5 s on the 2-core CI machine), which keeps some forty processes within
 * the file's budget. `--version` runs straight from the sources through `tsx`, as `npm run cli` does (and finds the
 * package's version there).
 */
import { afterAll, beforeAll, describe, expect, it } from "@effect/vitest"
import * as SqlClient from "@effect/sql/SqlClient"
import { Bus, Projection } from "effect-eventstore"
import { EventStore } from "effect-eventstore/EventStore"
import * as Sqlite from "effect-eventstore/Sqlite"
import * as SqlProjection from "effect-eventstore/SqlProjection"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Schedule from "effect/Schedule"
import { jetstreamManager } from "@nats-io/jetstream"
import { connect } from "@nats-io/transport-node"
import * as esbuild from "esbuild"
import { spawn } from "node:child_process"
import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"
import { counter, Events, picky, projectionOptions } from "./fixtures/cli-app.js"
import * as Nats from "./fixtures/nats.js"
import * as Pg from "./fixtures/pg.js"

const root = path.resolve(import.meta.dirname, "..")
const dir = fs.mkdtempSync(path.join(os.tmpdir(), "effect-eventstore-cli-"))
// under the repository: the bundle's external packages (better-sqlite3, pg, nats) resolve from its node_modules
const bundleDir = path.join(root, "node_modules", ".cache", "effect-eventstore-cli-test", `${process.pid}`)
const dbFile = (name: string) => path.join(dir, `${name}.db`)

afterAll(() => {
  fs.rmSync(bundleDir, { recursive: true, force: true })
  fs.rmSync(dir, { recursive: true, force: true })
})

// --- running the CLI ---------------------------------------------------------------------------------------------

interface Result {
  readonly code: number | null
  readonly signal: NodeJS.Signals | null
  readonly stdout: string
  readonly stderr: string
}

// the environment without a store of its own: every command says which one it works on
const env = Object.fromEntries(
  Object.entries(process.env).filter(([k]) => !k.startsWith("EVENTSTORE_") && k !== "NATS_URL")
) as NodeJS.ProcessEnv

const exec = (
  argv: ReadonlyArray<string>,
  options: { readonly input?: string; readonly env?: Record<string, string>; readonly timeoutMs?: number } = {}
): Promise<Result> =>
  new Promise((resolve, reject) => {
    const child = spawn(process.execPath, argv, { cwd: root, env: { ...env, ...options.env }, stdio: "pipe" })
    let stdout = ""
    let stderr = ""
    child.stdout.setEncoding("utf8").on("data", (d: string) => (stdout += d))
    child.stderr.setEncoding("utf8").on("data", (d: string) => (stderr += d))
    const timer = setTimeout(() => child.kill("SIGKILL"), options.timeoutMs ?? 45_000)
    child.on("error", reject)
    child.on("close", (code, signal) => {
      clearTimeout(timer)
      resolve({ code, signal, stdout, stderr })
    })
    child.stdin.end(options.input ?? "")
  })

/** The standalone bin (`effect-eventstore`). */
const cli = (...args: ReadonlyArray<string>) => exec([path.join(bundleDir, "bin.js"), ...args])
/** The user's own CLI, with its projections registered. */
const app = (args: ReadonlyArray<string>, extraEnv: Record<string, string> = {}) =>
  exec([path.join(bundleDir, "cli-app.js"), ...args], { env: extraEnv })
/** The bin straight from the sources, as `npm run cli` runs it. */
const fromSource = (...args: ReadonlyArray<string>) =>
  exec(["--import", "tsx", "--conditions=@effect-eventstore/source", path.join(root, "src/bin.ts"), ...args], {
    timeoutMs: 60_000
  })

const json = (r: Result): any => {
  try {
    return JSON.parse(r.stdout)
  } catch {
    throw new Error(`not JSON (exit ${r.code}): ${r.stdout}\nstderr: ${r.stderr}`)
  }
}

const ok = (r: Result) => {
  if (r.code !== 0) throw new Error(`exit ${r.code}: ${r.stdout}\nstderr: ${r.stderr}`)
  return r
}

// --- stores ------------------------------------------------------------------------------------------------------

const withStore = <A, E>(file: string, effect: Effect.Effect<A, E, EventStore | SqlClient.SqlClient | Projection.CheckpointStore>) =>
  Effect.runPromise(
    effect.pipe(Effect.provide(SqlProjection.layer.pipe(Layer.provideMerge(Sqlite.layer({ filename: file })))))
  ) as Promise<A>

/** Runs projections until they have dealt with the log (`picky` parks the `Poison` event it fails on), then stops them. */
const runProjections = (projections: ReadonlyArray<Projection.Projection<any, any, any>>) =>
  Effect.scoped(Effect.gen(function*() {
    const store = yield* EventStore
    const head = yield* store.head
    const live = yield* Projection.start(projections, projectionOptions)
    if (projections.includes(picky)) {
      yield* Effect.flatMap(live.status("picky"), (s) => s.state === "failed" ? Effect.void : Effect.fail("running")).pipe(
        Effect.retry(Schedule.spaced("20 millis").pipe(Schedule.upTo("10 seconds")))
      )
      yield* live.park("picky")
    }
    for (const p of projections) yield* live.awaitPosition(p.name, head, "10 seconds")
  }))

// handles the last event: its checkpoint is saved at the head (skipped events are not saved one by one)
const healthy = Projection.make({ name: "healthy", events: Events, handlers: { Added: () => Effect.void } })

interface Seeded {
  readonly head: number
  /** The position of the `Poison` event (parked by `picky`). */
  readonly poison: number
  readonly cause: { readonly eventId: string; readonly position: number }
  readonly effect: { readonly eventId: string; readonly position: number }
}

/**
 * Ten `Acc-NN` streams of five `Added` events, two `Order-N` streams (one holds the `Poison` event), a cause and its
 * effect in one correlation; `counter` and `picky` dealt with all of it (the poison parked), then one more event.
 */
const seed = (file: string) =>
  withStore(file, Effect.gen(function*() {
    const store = yield* EventStore
    for (let round = 1; round <= 5; round++) {
      for (let k = 1; k <= 10; k++) {
        yield* store.append(`Acc-${String(k).padStart(2, "0")}`, [{ type: "Added", payload: { n: round * k } }])
      }
    }
    const cause = yield* store.append("Order-1", [{ type: "Added", payload: { n: 1 }, metadata: { correlationId: "corr-1" } }])
    const effect = yield* store.append("Order-2", [{
      type: "Added",
      payload: { n: 2 },
      metadata: { correlationId: "corr-1", causationId: cause.events[0]!.eventId }
    }])
    const poison = yield* store.append("Order-2", [{ type: "Poison", payload: {} }])
    yield* runProjections([counter, picky])
    // the head moves on without them: their checkpoints are frozen from now on
    const last = yield* store.append("Acc-01", [{ type: "Added", payload: { n: 100 } }])
    return {
      head: last.position,
      poison: poison.position,
      cause: { eventId: cause.events[0]!.eventId, position: cause.position },
      effect: { eventId: effect.events[0]!.eventId, position: effect.position }
    } satisfies Seeded
  }))

const parkedCount = (file: string) =>
  withStore(file, Effect.flatMap(SqlClient.SqlClient, (sql) =>
    Effect.map(sql<{ n: number }>`SELECT count(*) AS n FROM eventstore_parked_events`, (rows) => Number(rows[0]!.n))))

// --- the tests ---------------------------------------------------------------------------------------------------

const browse = dbFile("browse")
let seeded: Seeded
let frozenAt = 0

beforeAll(async () => {
  const bundling = esbuild.build({
    entryPoints: { bin: path.join(root, "src/bin.ts"), "cli-app": path.join(root, "test/fixtures/cli-app.ts") },
    bundle: true,
    platform: "node",
    format: "esm",
    target: "node20",
    splitting: true,
    outdir: bundleDir,
    conditions: ["@effect-eventstore/source"],
    external: ["better-sqlite3", "pg", "pg-native", "@nats-io/*"],
    // CommonJS dependencies bundled into ESM call require() for node's modules
    banner: { js: "import { createRequire as __cliCreateRequire } from 'node:module'; const require = __cliCreateRequire(import.meta.url);" },
    logLevel: "warning"
  })
  seeded = await seed(browse)
  frozenAt = Date.now()
  // `healthy` is at the head, and nothing is appended to this store any more
  await withStore(browse, runProjections([healthy]))
  await bundling
}, 60_000)

describe.concurrent("effect-eventstore CLI", () => {
  it("--help, and --version from the sources", async () => {
    const [help, version, sub] = await Promise.all([
      cli("--help"),
      fromSource("--version"),
      cli("projections", "rebuild", "--help")
    ])
    expect(ok(help).stdout).toContain("projections rebuild")
    expect(help.stdout).toContain("parked skip")
    const pkg = JSON.parse(fs.readFileSync(path.join(root, "package.json"), "utf8")) as { version: string }
    expect(ok(version).stdout.trim()).toBe(pkg.version)
    expect(ok(sub).stdout).toContain("Changes the store:")
    expect(sub.stdout).toContain("--dry-run")
  })

  it("streams ls: a prefix, keyset pages", async () => {
    const first = json(ok(await cli("streams", "ls", "--db", browse, "--prefix", "Acc-", "--limit", "4", "--json")))
    expect(first.streams.map((s: any) => s.streamId)).toEqual(["Acc-01", "Acc-02", "Acc-03", "Acc-04"])
    expect(first.streams[0]).toMatchObject({ streamType: "Acc", version: 6 })
    expect(first.next).toBe("Acc-04")
    const [second, human] = await Promise.all([
      cli("streams", "ls", "--db", browse, "--prefix", "Acc-", "--after", first.next, "--json"),
      cli("streams", "ls", "--db", browse, "--prefix", "Order", "--limit", "1")
    ])
    expect(json(ok(second)).streams.map((s: any) => s.streamId)).toEqual(
      ["Acc-05", "Acc-06", "Acc-07", "Acc-08", "Acc-09", "Acc-10"]
    )
    expect(json(second).next).toBeUndefined()
    const lines = ok(human).stdout.trim().split("\n")
    expect(lines[0]).toMatch(/^STREAM\s+TYPE\s+VERSION\s+LAST EVENT AT$/)
    expect(lines[1]).toMatch(/^Order-1\s+Order\s+1\s+\d{4}-/)
    expect(lines[2]).toBe(`next page: --after "Order-1"`)
  })

  it("stream show: forward and backward, paged", async () => {
    const [forward, backward] = await Promise.all([
      cli("stream", "show", "Acc-01", "--db", browse, "--limit", "2", "--json"),
      cli("stream", "show", "Acc-01", "--backward", "--limit", "2", "--db", browse, "--json")
    ])
    const f = json(ok(forward))
    expect(f.events.map((e: any) => [e.version, e.payload])).toEqual([[1, { n: 1 }], [2, { n: 2 }]])
    expect(f.next).toBe(3)
    const b = json(ok(backward))
    expect(b.events.map((e: any) => [e.version, e.payload])).toEqual([[6, { n: 100 }], [5, { n: 5 }]])
    expect(b.next).toBe(4)
  })

  it("event show: by id and by position, with its causes and its correlation", async () => {
    const [byId, byPosition, human] = await Promise.all([
      cli("event", "show", seeded.effect.eventId, "--db", browse, "--json"),
      cli("event", "show", String(seeded.cause.position), "--db", browse, "--json"),
      cli("event", "show", seeded.effect.eventId, "--db", browse)
    ])
    const detail = json(ok(byId))
    expect(detail.event).toMatchObject({ position: seeded.effect.position, streamId: "Order-2", version: 1 })
    expect(detail.causes.map((e: any) => e.eventId)).toEqual([seeded.cause.eventId])
    expect(detail.related.map((e: any) => e.position)).toEqual([seeded.cause.position])
    expect(json(ok(byPosition)).related.map((e: any) => e.eventId)).toEqual([seeded.effect.eventId])
    expect(ok(human).stdout).toMatch(new RegExp(`causes \\(nearest first\\):\\nPOSITION.*\\n${seeded.cause.position}\\s+Order-1@1`))
  })

  it("projections status and ls: head, lag, parked", async () => {
    const [status, ls] = await Promise.all([
      cli("projections", "status", "--db", browse),
      cli("projections", "ls", "--db", browse, "--json")
    ])
    expect(ok(status).stdout).toMatch(new RegExp(`^head\\s+${seeded.head}$`, "m"))
    expect(status.stdout).toMatch(/^parked\s+1$/m)
    expect(status.stdout).toMatch(new RegExp(`^counter\\s+${seeded.head - 1}\\s+${seeded.head}\\s+1\\s`, "m"))
    expect(status.stdout).toMatch(new RegExp(`^healthy\\s+${seeded.head}\\s+${seeded.head}\\s+0\\s`, "m"))
    const all = json(ok(ls)).projections
    expect(all.map((p: any) => [p.name, p.position, p.lag, p.parked])).toEqual([
      ["counter", seeded.head - 1, 1, 0],
      ["healthy", seeded.head, 0, 0],
      ["picky", seeded.head - 1, 1, 1]
    ])
  })

  it("projections check: a frozen checkpoint while the head moved is CRIT (2), one at the head OK (0)", async () => {
    // stalled for more than a second since the last append
    const wait = frozenAt + 1500 - Date.now()
    if (wait > 0) await new Promise((r) => setTimeout(r, wait))
    const [stalled, healthyCheck, asJson, missing] = await Promise.all([
      cli("projections", "check", "--db", browse, "--crit-stalled", "1", "--name", "counter"),
      cli("projections", "check", "--db", browse, "--crit-stalled", "1", "--name", "healthy"),
      cli("projections", "check", "--db", browse, "--warn-parked", "1", "--crit-stalled", "3600", "--json"),
      cli("projections", "check", "--db", dbFile("nowhere"), "--crit-stalled", "1")
    ])
    expect(stalled.code).toBe(2)
    expect(stalled.stdout).toMatch(/^CRIT: counter: stalled seconds \d+(\.\d)? >= 1 \(crit\)/)
    expect(healthyCheck.code).toBe(0)
    expect(healthyCheck.stdout).toMatch(/^OK: 1 projection OK/)
    expect(asJson.code).toBe(1)
    expect(json(asJson)).toMatchObject({
      level: "WARN",
      code: 1,
      projections: [
        { name: "counter", level: "OK" },
        { name: "healthy", level: "OK" },
        { name: "picky", level: "WARN", reasons: ["parked 1 >= 1 (warn)"] }
      ]
    })
    // could not check: UNKNOWN
    expect(missing.code).toBe(3)
    expect(missing.stdout).toMatch(/^UNKNOWN: StoreFileNotFound: /)
  })

  it("a missing SQLite file is a typed error, exit 1; so is a missing connection", async () => {
    const [missing, asJson, none] = await Promise.all([
      cli("streams", "ls", "--db", dbFile("missing")),
      cli("streams", "ls", "--db", dbFile("missing"), "--json"),
      cli("streams", "ls")
    ])
    expect(missing.code).toBe(1)
    expect(missing.stderr).toBe(`error: StoreFileNotFound: SQLite file ${dbFile("missing")} does not exist (create a store with: effect-eventstore db migrate --db ${dbFile("missing")})\n`)
    expect(missing.stdout).toBe("")
    expect(fs.existsSync(dbFile("missing"))).toBe(false)
    expect(asJson.code).toBe(1)
    expect(JSON.parse(asJson.stderr).error).toMatchObject({ _tag: "StoreFileNotFound", filename: dbFile("missing") })
    expect(none.code).toBe(1)
    expect(none.stderr).toMatch(/^error: InvalidInput: invalid connection: give the store: --db FILE/)
  })

  it("db doctor: the SQLite store's settings are safe", async () => {
    const [human, asJson] = await Promise.all([
      cli("db", "doctor", "--db", browse),
      cli("db", "doctor", "--db", browse, "--json")
    ])
    expect(ok(human).stdout).toMatch(/^OK: sqlite settings are safe\n/)
    expect(json(ok(asJson))).toMatchObject({
      backend: "sqlite",
      ok: true,
      code: 0,
      findings: [
        { setting: "journal_mode", value: "wal", level: "OK" },
        { setting: "synchronous", value: "FULL", level: "OK" }
      ]
    })
  })

  it("tail: prints an event appended after it started, until SIGINT (exit 0)", async () => {
    const file = dbFile("tail")
    await withStore(file, Effect.flatMap(EventStore, (s) => s.append("Acc-1", [{ type: "Added", payload: { n: 1 } }])))
    const child = spawn(process.execPath, [path.join(bundleDir, "bin.js"), "tail", "--all", "--db", file], { env, stdio: "pipe" })
    const jsonChild = spawn(process.execPath, [path.join(bundleDir, "bin.js"), "tail", "Acc-2", "--json", "--db", file], { env, stdio: "pipe" })
    const collect = (c: typeof child) => {
      const o = { stdout: "", stderr: "" }
      c.stdout.setEncoding("utf8").on("data", (d: string) => (o.stdout += d))
      c.stderr.setEncoding("utf8").on("data", (d: string) => (o.stderr += d))
      return o
    }
    const out = collect(child)
    const jsonOut = collect(jsonChild)
    const until = async (test: () => boolean, what: string) => {
      for (let i = 0; i < 600 && !test(); i++) await new Promise((r) => setTimeout(r, 50))
      if (!test()) throw new Error(`timed out waiting for ${what}: ${JSON.stringify([out, jsonOut])}`)
    }
    try {
      await until(() => out.stderr.includes("after position 1") && jsonOut.stderr.includes("after position 1"), "the tails")
      const appended = await withStore(file, Effect.flatMap(EventStore, (s) =>
        Effect.zip(
          s.append("Acc-1", [{ type: "Added", payload: { n: 2 } }]),
          s.append("Acc-2", [{ type: "Added", payload: { n: 3 } }])
        )))
      await until(() => out.stdout.split("\n").length >= 3 && jsonOut.stdout.includes("\n"), "the lines")
      expect(out.stdout).toBe(`2 Acc-1@2 Added {"n":2}\n3 Acc-2@1 Added {"n":3}\n`)
      expect(JSON.parse(jsonOut.stdout)).toMatchObject({
        position: 3,
        eventId: appended[1].events[0]!.eventId,
        streamId: "Acc-2",
        version: 1,
        type: "Added",
        payload: { n: 3 }
      })
    } finally {
      child.kill("SIGINT")
      jsonChild.kill("SIGINT")
    }
    const codes = await Promise.all([child, jsonChild].map((c) =>
      new Promise<number | null>((resolve) => c.exitCode !== null ? resolve(c.exitCode) : c.on("close", (code) => resolve(code)))
    ))
    expect(codes).toEqual([0, 0])
  })

  it("--url: the commands through a dashboard served by the CLI; its actions need the admin token", async () => {
    const server = spawn(
      process.execPath,
      [path.join(bundleDir, "bin.js"), "serve", "--db", browse, "--port", "0", "--admin-token", "s3cret", "--json"],
      { env, stdio: "pipe" }
    )
    let served = ""
    server.stdout.setEncoding("utf8").on("data", (d: string) => (served += d))
    try {
      for (let i = 0; i < 600 && !served.includes("\n"); i++) await new Promise((r) => setTimeout(r, 50))
      const { readOnly, url } = JSON.parse(served) as { url: string; readOnly: boolean }
      expect(url).toMatch(/^http:\/\/127\.0\.0\.1:\d+$/)
      expect(readOnly).toBe(false)
      const [status, check, unauthorized, missing] = await Promise.all([
        cli("projections", "status", "--url", url, "--json"),
        cli("projections", "check", "--url", url, "--crit-stalled", "1", "--name", "counter"),
        cli("parked", "skip", "picky", String(seeded.poison), "--url", url, "--token", "wrong", "--yes"),
        cli("stream", "show", "Nope", "--url", url)
      ])
      expect(json(ok(status))).toMatchObject({ head: seeded.head, parked: 1 })
      expect(json(status).projections.map((p: any) => p.name)).toEqual(["counter", "healthy", "picky"])
      expect(check.code).toBe(2)
      expect(check.stdout).toMatch(/^CRIT: counter: stalled seconds/)
      expect(unauthorized.code).toBe(1)
      expect(unauthorized.stderr).toMatch(/^error: Unauthorized: /)
      expect(missing.code).toBe(1)
      expect(missing.stderr).toBe(`error: NotFound: stream "Nope" not found\n`)
    } finally {
      server.kill("SIGINT")
    }
    const code = await new Promise<number | null>((resolve) =>
      server.exitCode !== null ? resolve(server.exitCode) : server.on("close", (c) => resolve(c))
    )
    expect(code).toBe(0)
  })

  it("parked ls, show and skip: refused without --yes (nothing changed), done with it", async () => {
    const file = dbFile("skip")
    const s = await seed(file)
    const [ls, show, refused] = await Promise.all([
      cli("parked", "ls", "--db", file, "--json"),
      cli("parked", "show", "picky", String(s.poison), "--db", file),
      cli("parked", "skip", "picky", String(s.poison), "--db", file)
    ])
    expect(json(ok(ls)).parked).toMatchObject([
      { projection: "picky", position: s.poison, streamId: "Order-2", eventType: "Poison", reason: "poisoned" }
    ])
    expect(ok(show).stdout).toMatch(/^reason\s+poisoned$/m)
    expect(refused.code).toBe(1)
    expect(refused.stderr).toMatch(/^error: NotConfirmed: .*pass --yes/)
    expect(await parkedCount(file)).toBe(1)
    const skipped = await cli("parked", "skip", "picky", String(s.poison), "--db", file, "--yes", "--json")
    expect(json(ok(skipped))).toEqual({ projection: "picky", deleted: 1 })
    expect(await parkedCount(file)).toBe(0)
  })

  it("parked retry runs the projection's handler again (the user's CLI), and the standalone one cannot", async () => {
    const file = dbFile("retry")
    const s = await seed(file)
    const [standalone, stillFailing] = await Promise.all([
      cli("parked", "retry", "picky", String(s.poison), "--db", file, "--yes"),
      app(["parked", "retry", "picky", String(s.poison), "--db", file, "--yes"])
    ])
    expect(standalone.code).toBe(1)
    expect(standalone.stderr).toMatch(/^error: Unsupported: projection "picky" is not registered/)
    expect(stillFailing.code).toBe(1)
    expect(stillFailing.stderr).toContain(`error: ProjectionFailed: projection "picky" failed at position ${s.poison} (Poison): poisoned`)
    expect(await parkedCount(file)).toBe(1)
    const fixed = await app(["parked", "retry", "picky", String(s.poison), "--db", file, "--yes"], { PICKY_ACCEPTS: "1" })
    expect(ok(fixed).stdout).toBe(`retried 1 parked event of picky (position ${s.poison}): handled and removed from the parked list\n`)
    expect(await parkedCount(file)).toBe(0)
  })

  it("projections rebuild: a failing handler's position and type, exit 1; a good one's progress; --dry-run", async () => {
    const file = dbFile("rebuild")
    const s = await seed(file)
    const [failing, dryRun, standalone] = await Promise.all([
      app(["projections", "rebuild", "picky", "--db", file, "--yes"]),
      app(["projections", "rebuild", "counter", "--db", file, "--dry-run", "--json"]),
      cli("projections", "rebuild", "counter", "--db", file, "--yes")
    ])
    expect(failing.code).toBe(1)
    expect(failing.stderr).toContain(`error: ProjectionFailed: projection "picky" failed at position ${s.poison} (Poison): poisoned`)
    expect(failing.stderr).toContain(`at position ${s.poison}, event type Poison, stream Order-2`)
    expect(json(ok(dryRun))).toMatchObject({
      dryRun: true,
      projection: "counter",
      registered: true,
      checkpoint: s.head - 1,
      head: s.head,
      eventsToReplay: s.head
    })
    expect(standalone.code).toBe(1)
    expect(standalone.stderr).toMatch(/^error: Unsupported: projection "counter" is not registered with this CLI/)
    // the read model is emptied and replayed
    await withStore(file, Effect.flatMap(SqlClient.SqlClient, (sql) => sql`UPDATE cli_counter SET n = 1000`))
    const rebuilt = await app(["projections", "rebuild", "counter", "--db", file, "--yes"])
    expect(ok(rebuilt).stdout).toMatch(new RegExp(`^rebuilt counter: ${s.head} events in [0-9.]+ s\\n$`))
    expect(rebuilt.stderr).toMatch(new RegExp(`rebuild counter: ${s.head}/${s.head} \\(100%\\), [0-9.]+ events/s, done`))
    const counts = await withStore(file, Effect.flatMap(SqlClient.SqlClient, (sql) =>
      sql<{ stream: string; n: number }>`SELECT stream, n FROM cli_counter ORDER BY stream`))
    expect(counts.find((r) => r.stream === "Acc-01")?.n).toBe(6)
    expect(counts.reduce((n, r) => n + r.n, 0)).toBe(s.head - 1)
  })

  it("export, then import into a fresh store: the same events; a second import writes nothing", async () => {
    const exported = path.join(dir, "browse.ndjson")
    const fresh = dbFile("fresh")
    ok(await cli("export", "--db", browse, "--out", exported))
    const lines = fs.readFileSync(exported, "utf8").trim().split("\n")
    expect(lines.length).toBe(seeded.head)
    expect(JSON.parse(lines[0]!)).toMatchObject({ streamId: "Acc-01", version: 1, type: "Added", payload: { n: 1 }, position: 1 })
    const refused = await cli("db", "migrate", "--db", fresh)
    expect(refused.code).toBe(1)
    expect(fs.existsSync(fresh)).toBe(false)
    expect(ok(await cli("db", "migrate", "--db", fresh, "--yes")).stdout).toMatch(/^created .*fresh\.db\napplied migrations: create_events/)
    const first = await cli("import", exported, "--db", fresh, "--yes", "--json")
    expect(json(ok(first))).toEqual({ written: seeded.head, skipped: 0 })
    expect(first.stderr).toMatch(/import: \d+ lines in/)
    // from stdin, the second time
    const second = await exec([path.join(bundleDir, "bin.js"), "import", "--db", fresh, "--yes", "--json"], {
      input: fs.readFileSync(exported, "utf8")
    })
    expect(json(ok(second))).toEqual({ written: 0, skipped: seeded.head })
    const again = await cli("export", "--db", fresh)
    expect(ok(again).stdout).toBe(fs.readFileSync(exported, "utf8"))
  })

  it("import keeps text that is not ASCII whole, wherever the file's reads split it; a bad line names its line in the file", async () => {
    // 3 MiB of two-byte characters: the 1 MiB reads split some of them in two
    const file = path.join(dir, "accents.ndjson")
    const text = "é".repeat(150_000)
    const lines = Array.from({ length: 10 }, (_, i) =>
      JSON.stringify({
        eventId: `acc-${i}`, streamId: `Accent-${i}`, streamType: "Accent", version: 1, type: "Named",
        schemaVersion: 1, payload: { text }, metadata: null, tenantId: null, recordedAt: 1_700_000_000_000 + i,
        claims: null, position: i + 1
      }))
    fs.writeFileSync(file, lines.join("\n") + "\n")
    const target = dbFile("accents")
    ok(await cli("db", "migrate", "--db", target, "--yes"))
    expect(json(ok(await cli("import", file, "--db", target, "--yes", "--json")))).toEqual({ written: 10, skipped: 0 })
    const back = ok(await cli("export", "--db", target)).stdout.trim().split("\n")
    expect(back.map((l) => JSON.parse(l).payload.text === text)).toEqual(Array(10).fill(true))
    const bad = path.join(dir, "bad.ndjson")
    fs.writeFileSync(bad, [lines[0], lines[1], "{oops"].join("\n") + "\n")
    const failed = await cli("import", bad, "--db", target, "--yes")
    expect(failed.code).toBe(1)
    expect(failed.stderr).toContain("line 3")
  })

  it("bus status and check (the forwarder's checkpoint), republish to JetStream, doctor with the stream", async () => {
    if (!Nats.available) return console.log("skipped: NATS is not reachable (CI fails instead)")
    const file = dbFile("bus")
    const stream = Nats.unique("CLI")
    const head = await withStore(file, Effect.gen(function*() {
      const store = yield* EventStore
      for (let i = 1; i <= 12; i++) yield* store.append(`Acc-${i % 3}`, [{ type: "Added", payload: { n: i } }])
      const head = yield* store.head
      // the forwarder, to a bus in memory: its checkpoint is what `bus status` reads
      yield* Effect.scoped(Effect.gen(function*() {
        const live = yield* Layer.build(Bus.layerForwarder().pipe(Layer.provide(Bus.layerMemory)))
        yield* Projection.Projections.pipe(
          Effect.flatMap((p) => p.awaitPosition("bus-forwarder", head, "10 seconds")),
          Effect.provide(live)
        )
      }))
      return head
    }))
    try {
      const [status, check, missing] = await Promise.all([
        cli("bus", "status", "--db", file, "--json"),
        cli("bus", "check", "--db", file, "--crit-lag", "1", "--crit-stalled", "60"),
        cli("bus", "check", "--db", file, "--forwarder", "other")
      ])
      expect(json(ok(status))).toMatchObject({ name: "bus-forwarder", position: head, head, lag: 0 })
      expect(ok(check).stdout).toMatch(/^OK: 1 forwarder OK/)
      expect(missing.code).toBe(3)
      expect(missing.stdout).toBe(`UNKNOWN: NotFound: projection "other" not found\n`)
      const republished = await cli(
        "bus", "republish", "--from", "4", "--nats", Nats.url, "--stream", stream, "--prefix", stream.toLowerCase(),
        "--db", file, "--yes", "--json"
      )
      expect(json(ok(republished))).toMatchObject({ published: head - 4, from: 4 })
      const doctor = await cli("db", "doctor", "--db", file, "--nats", Nats.url, "--stream", stream, "--json")
      expect(json(ok(doctor)).findings).toContainEqual(
        expect.objectContaining({ setting: `nats ${stream} duplicate_window`, value: "2m 00s", level: "OK" })
      )
      const nc = await connect({ servers: Nats.url })
      try {
        expect((await (await jetstreamManager(nc)).streams.info(stream)).state.messages).toBe(head - 4)
      } finally {
        await nc.close()
      }
    } finally {
      const nc = await connect({ servers: Nats.url })
      const jsm = await jetstreamManager(nc)
      for (const name of [stream, `${stream}_DLQ`]) await jsm.streams.delete(name).catch(() => false)
      await nc.close()
    }
  })

  it("PostgreSQL: db migrate, import, streams ls and doctor", async () => {
    if (!Pg.available) return console.log("skipped: PostgreSQL is not reachable (CI fails instead)")
    const schema = Pg.freshSchema("cli")
    const pg = ["--pg", Pg.url, "--schema", schema]
    const exported = path.join(dir, "pg.ndjson")
    fs.writeFileSync(exported, ok(await cli("export", "--db", browse, "--type", "Acc")).stdout)
    const migrated = await cli("db", "migrate", ...pg, "--yes", "--json")
    expect(json(ok(migrated)).migrations).toContain("create_events")
    expect(json(ok(await cli("import", exported, ...pg, "--yes", "--json")))).toEqual({ written: 51, skipped: 0 })
    const [streams, doctor, fromSqlite] = await Promise.all([
      cli("streams", "ls", ...pg, "--prefix", "Acc-0", "--json"),
      cli("db", "doctor", ...pg, "--json"),
      cli("streams", "ls", "--db", browse, "--prefix", "Acc-0", "--json")
    ])
    expect(json(ok(streams))).toEqual(json(ok(fromSqlite)))
    expect(json(ok(doctor))).toMatchObject({ backend: "pg", findings: [{ setting: "synchronous_commit" }, { setting: "fsync" }] })
  })
})
