/**
 * Opening an SQLite store: every way a file can be unusable fails the layer with a `StoreError` naming the file
 * (never a defect, never later at the first append), the options can come from `Config`, and waiting on another
 * process's write lock is bounded by `busyTimeout` without blocking the thread.
 *
 * Root may read and write any file, so the permission cases run in a child process as `nobody` (uid 65534). The
 * read-only filesystem and the full disk are small tmpfs mounts (root only); without root they are skipped outside
 * CI, with the reason printed, and fail in CI. The full disk falls back to a file-size limit when mount is refused.
 */
import { afterAll, beforeAll, describe, expect, it } from "@effect/vitest"
import * as SqlClient from "@effect/sql/SqlClient"
import { EventStore, Snapshot } from "effect-eventstore"
import type { StoreError } from "effect-eventstore/Errors"
import * as Sqlite from "effect-eventstore/Sqlite"
import * as Cause from "effect/Cause"
import * as Config from "effect/Config"
import * as ConfigError from "effect/ConfigError"
import * as ConfigProvider from "effect/ConfigProvider"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Layer from "effect/Layer"
import * as Option from "effect/Option"
import { type ChildProcess, execFileSync, spawn } from "node:child_process"
import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"
import { codeOf } from "../src/internal/sqlErrors.js"

const root = path.resolve(import.meta.dirname, "..")
const tsx = path.join(root, "node_modules/.bin/tsx")
const ci = process.env.CI !== undefined && process.env.CI !== "" && process.env.CI !== "false"
const isRoot = process.getuid?.() === 0

const dir = fs.mkdtempSync(path.join(os.tmpdir(), "effect-eventstore-open-"))
// The permission cases' child runs as another user: it must reach the directories it is meant to reach.
fs.chmodSync(dir, 0o755)
const dbFile = (name: string, under = dir) => path.join(under, `${name}-${crypto.randomUUID().slice(0, 8)}.db`)

/** Opens the store and returns its typed failure; an open that succeeds or dies fails the test. */
const openFailure = (options: Sqlite.Options) =>
  Effect.gen(function*() {
    const exit = yield* Effect.exit(Effect.scoped(Layer.build(Sqlite.layer(options))))
    if (Exit.isSuccess(exit)) return yield* Effect.dieMessage(`${options.filename} opened`)
    const failure = Cause.failureOption(exit.cause)
    if (Option.isNone(failure)) return yield* Effect.dieMessage(`died instead of failing: ${Cause.pretty(exit.cause)}`)
    return failure.value
  })

const expectNamed = (error: StoreError, filename: string, code: RegExp | undefined, operation = "open") => {
  expect(error).toMatchObject({ _tag: "StoreError", operation })
  expect(error.message).toContain(filename)
  expect(error.cause).toBeInstanceOf(Sqlite.OpenError)
  if (code !== undefined) expect(codeOf(error.cause)).toMatch(code)
}

/** A store with its schema, closed again. */
const createStore = (filename: string) => Effect.scoped(Layer.build(Sqlite.layer({ filename })))

const mounts: Array<string> = []
const restoreModes: Array<string> = []
afterAll(() => {
  for (const at of mounts) execFileSync("umount", ["-l", at])
  for (const p of restoreModes) fs.chmodSync(p, 0o755)
  fs.rmSync(dir, { recursive: true, force: true })
})

describe("opening a file that cannot hold a store fails with a StoreError naming it", () => {
  it.live("a directory that does not exist", () =>
    Effect.gen(function*() {
      const filename = path.join(dir, "missing", "store.db")
      expectNamed(yield* openFailure({ filename }), filename, undefined)
      expect(fs.existsSync(path.dirname(filename))).toBe(false)
    }))

  it.live("a path that is a directory", () =>
    Effect.gen(function*() {
      const filename = dbFile("a-directory")
      fs.mkdirSync(filename)
      expectNamed(yield* openFailure({ filename }), filename, /^SQLITE_CANTOPEN/)
    }))

  it.live("a file that is not SQLite", () =>
    Effect.gen(function*() {
      const filename = dbFile("text")
      fs.writeFileSync(filename, "these are not the pages you are looking for\n".repeat(200))
      expectNamed(yield* openFailure({ filename }), filename, /^SQLITE_NOTADB/)
    }))

  it.live("a store whose header is damaged", () =>
    Effect.gen(function*() {
      const filename = dbFile("damaged")
      yield* createStore(filename)
      const fd = fs.openSync(filename, "r+")
      fs.writeSync(fd, Buffer.from("SQLite format 9\0"), 0, 16, 0)
      fs.closeSync(fd)
      expectNamed(yield* openFailure({ filename }), filename, /^SQLITE_NOTADB/)
    }))
})

// --- permissions: a child process as another user --------------------------------------------------------------------

interface OpenLine {
  readonly file: string
  readonly outcome: "ok" | "fail" | "die"
  readonly tag?: string
  readonly operation?: string
  readonly message?: string
  readonly code?: string
}

/** Runs `test/fixtures/open-store.ts` on the files (as `nobody` when we are root) and collects its lines. */
const openInChild = (files: ReadonlyArray<string>, options: { readonly fileSizeLimit?: number } = {}) =>
  Effect.async<ReadonlyMap<string, OpenLine>, Error>((resume) => {
    const args = [path.join(root, "test/fixtures/open-store.ts"), ...files]
    const [command, argv] = options.fileSizeLimit === undefined
      ? [tsx, args]
      : ["prlimit", [`--fsize=${options.fileSizeLimit}`, "--", tsx, ...args]]
    const child = spawn(command, argv, {
      cwd: root,
      stdio: ["ignore", "pipe", "pipe"],
      // tsx would cache compiled files under the system temp dir: not writable under a file-size limit.
      env: { ...process.env, TSX_DISABLE_CACHE: "1" },
      ...(isRoot ? { uid: 65534, gid: 65534 } : {})
    })
    let out = ""
    let err = ""
    child.stdout.on("data", (d) => (out += d))
    child.stderr.on("data", (d) => (err += d))
    child.on("exit", (code) => {
      if (code !== 0) return resume(Effect.fail(new Error(`open-store exited ${code}: ${err}`)))
      const lines = out.split("\n").filter((l) => l.startsWith("{")).map((l) => JSON.parse(l) as OpenLine)
      resume(Effect.succeed(new Map(lines.map((l) => [l.file, l]))))
    })
  })

describe("permissions (as another user)", () => {
  const perm = path.join(dir, "perm")
  const files = {
    unreadable: path.join(perm, "unreadable.db"),
    inClosedDirectory: path.join(perm, "closed", "store.db"),
    readOnlyFile: path.join(perm, "open", "read-only.db"),
    inReadOnlyDirectory: path.join(perm, "read-only", "store.db"),
    newInReadOnlyDirectory: path.join(perm, "read-only", "new.db")
  }
  let results: Promise<ReadonlyMap<string, OpenLine>>

  beforeAll(async () => {
    for (const d of [perm, path.dirname(files.inClosedDirectory), path.dirname(files.readOnlyFile), path.dirname(files.inReadOnlyDirectory)]) {
      fs.mkdirSync(d, { recursive: true, mode: 0o777 })
      fs.chmodSync(d, 0o777)
    }
    for (const f of [files.unreadable, files.inClosedDirectory, files.readOnlyFile, files.inReadOnlyDirectory]) {
      await Effect.runPromise(createStore(f))
    }
    fs.chmodSync(files.unreadable, 0o000)
    fs.chmodSync(path.dirname(files.inClosedDirectory), 0o000)
    fs.chmodSync(files.readOnlyFile, 0o444)
    fs.chmodSync(files.inReadOnlyDirectory, 0o666)
    fs.chmodSync(path.dirname(files.inReadOnlyDirectory), 0o555)
    restoreModes.push(path.dirname(files.inClosedDirectory), path.dirname(files.inReadOnlyDirectory))
    results = Effect.runPromise(openInChild(Object.values(files)))
  })

  const expectLine = (file: string, code: RegExp) =>
    Effect.map(Effect.promise(() => results), (lines) => {
      const line = lines.get(file)
      expect(line).toMatchObject({ outcome: "fail", tag: "StoreError", operation: "open" })
      expect(line!.message).toContain(file)
      expect(line!.code).toMatch(code)
    })

  it.live("a file it may not read", () => expectLine(files.unreadable, /^SQLITE_CANTOPEN/))
  it.live("a file in a directory it may not enter", () => expectLine(files.inClosedDirectory, /^SQLITE_CANTOPEN/))
  // SQLite quietly opens such a file read-only: the write probe refuses it at open, not at the first append.
  it.live("a file it may only read: refused at open", () => expectLine(files.readOnlyFile, /^SQLITE_READONLY/))
  it.live("a writable file in a read-only directory (no room for the WAL)", () =>
    expectLine(files.inReadOnlyDirectory, /^SQLITE_READONLY/))
  it.live("a new file in a read-only directory", () => expectLine(files.newInReadOnlyDirectory, /^SQLITE_CANTOPEN/))
})

// --- filesystems: small tmpfs mounts -----------------------------------------------------------------------------------

const mountTmpfs = (name: string, size: string): string | { readonly reason: string } => {
  if (!isRoot) return { reason: "mounting a tmpfs needs root" }
  const at = path.join(dir, name)
  fs.mkdirSync(at)
  try {
    execFileSync("mount", ["-t", "tmpfs", "-o", `size=${size},mode=0777`, "tmpfs", at], { stdio: "pipe" })
  } catch (e) {
    return { reason: `mount -t tmpfs refused: ${String((e as { stderr?: unknown }).stderr ?? e).trim()}` }
  }
  mounts.push(at)
  return at
}

describe("filesystems", () => {
  it.live("a read-only filesystem: an existing store and a new file", (ctx) => {
    const at = mountTmpfs("read-only-fs", "1m")
    if (typeof at !== "string") {
      if (ci) throw new Error(`cannot test a read-only filesystem: ${at.reason}`)
      console.log(`skipped: ${at.reason}`)
      ctx.skip()
    }
    const mounted = at as string
    return Effect.gen(function*() {
      const existing = path.join(mounted, "store.db")
      yield* createStore(existing)
      execFileSync("mount", ["-o", "remount,ro", mounted])
      expectNamed(yield* openFailure({ filename: existing }), existing, /^SQLITE_(CANTOPEN|READONLY)/)
      const fresh = path.join(mounted, "new.db")
      expectNamed(yield* openFailure({ filename: fresh }), fresh, /^SQLITE_(CANTOPEN|READONLY)/)
    })
  })

  it.live("a new file on a full disk", () => {
    const at = mountTmpfs("full-fs", "64k")
    if (typeof at === "string") {
      return Effect.gen(function*() {
        try {
          fs.writeFileSync(path.join(at, "filler"), Buffer.alloc(256 * 1024))
        } catch {
          // ENOSPC: the disk is full, as intended
        }
        const filename = path.join(at, "store.db")
        expectNamed(yield* openFailure({ filename }), filename, /^SQLITE_FULL/)
      })
    }
    // No mount: the same failure through a file-size limit on a child process (writes fail with EFBIG).
    console.log(`full disk through RLIMIT_FSIZE: ${at.reason}`)
    const writable = path.join(dir, "size-limited")
    fs.mkdirSync(writable, { mode: 0o777 })
    fs.chmodSync(writable, 0o777)
    const filename = dbFile("store", writable)
    return Effect.map(openInChild([filename], { fileSizeLimit: 1024 }), (lines) => {
      expect(lines.get(filename)).toMatchObject({ outcome: "fail", tag: "StoreError", operation: "open" })
      expect(lines.get(filename)!.message).toContain(filename)
      expect(lines.get(filename)!.code).toMatch(/^SQLITE_(FULL|IOERR)/)
    })
  })
})

// --- Config ------------------------------------------------------------------------------------------------------------

describe("layerConfig", () => {
  it.live("reads the options from Config", () => {
    const filename = dbFile("config")
    const provider = ConfigProvider.fromMap(
      new Map([["STORE_FILE", filename], ["STORE_BUSY_TIMEOUT", "2 seconds"], ["STORE_DURABILITY", "normal"]])
    )
    return Effect.gen(function*() {
      const sql = yield* SqlClient.SqlClient
      const store = yield* EventStore.EventStore
      expect((yield* store.append("Cfg-1", [{ type: "A", payload: {} }])).version).toBe(1)
      expect((yield* sql.unsafe<{ synchronous: number }>("PRAGMA synchronous"))[0]!.synchronous).toBe(1)
      expect((yield* sql.unsafe<{ timeout: number }>("PRAGMA busy_timeout"))[0]!.timeout).toBe(2000)
      expect(fs.existsSync(filename)).toBe(true)
    }).pipe(
      Effect.provide(Sqlite.layerConfig({
        filename: Config.string("STORE_FILE"),
        busyTimeout: Config.duration("STORE_BUSY_TIMEOUT"),
        durability: Config.literal("full", "normal")("STORE_DURABILITY")
      })),
      Effect.withConfigProvider(provider)
    )
  })

  it.live("one Config of all the options; a missing one is a ConfigError", () =>
    Effect.gen(function*() {
      const filename = dbFile("config-all")
      const config = Config.all({ filename: Config.string("FILE"), pollInterval: Config.duration("POLL") })
      const ok = yield* Effect.flatMap(EventStore.EventStore, (store) => store.version("Cfg-2")).pipe(
        Effect.provide(Sqlite.layerConfig(config)),
        Effect.withConfigProvider(ConfigProvider.fromMap(new Map([["FILE", filename], ["POLL", "100 millis"]])))
      )
      expect(ok).toBe(0)
      const missing = yield* Effect.flip(Effect.scoped(Layer.build(Sqlite.layerConfig(config))).pipe(
        Effect.withConfigProvider(ConfigProvider.fromMap(new Map([["FILE", filename]])))
      ))
      expect(ConfigError.isConfigError(missing)).toBe(true)
    }))
})

// --- another process's write lock ---------------------------------------------------------------------------------------

/** Another process holding `filename`'s write lock for `holdMillis`; `released` completes when it lets go. */
const holdLock = (filename: string, holdMillis: number) =>
  Effect.acquireRelease(
    Effect.async<{ readonly child: ChildProcess; readonly released: Promise<number> }, Error>((resume) => {
      const child = spawn(tsx, [path.join(root, "test/fixtures/hold-lock.ts"), filename, String(holdMillis)], {
        cwd: root,
        stdio: ["ignore", "pipe", "pipe"]
      })
      let onReleased: (at: number) => void = () => {}
      const released = new Promise<number>((resolve) => (onReleased = resolve))
      let out = ""
      let err = ""
      let locked = false
      child.stdout.on("data", (d) => {
        out += d
        if (!locked && out.includes("locked\n")) {
          locked = true
          resume(Effect.succeed({ child, released }))
        }
        if (out.includes("released\n")) onReleased(performance.now())
      })
      child.stderr.on("data", (d) => (err += d))
      child.on("exit", (code) => {
        if (!locked) resume(Effect.fail(new Error(`hold-lock exited ${code}: ${err}`)))
      })
    }),
    ({ child }) => Effect.sync(() => child.exitCode === null && child.kill("SIGKILL"))
  )

/** The longest time the event loop went without running a 10 ms interval, while `effect` ran. */
const longestStall = <A, E, R>(effect: Effect.Effect<A, E, R>) =>
  Effect.suspend(() => {
    let last = performance.now()
    let longest = 0
    const timer = setInterval(() => {
      const now = performance.now()
      longest = Math.max(longest, now - last)
      last = now
    }, 10)
    const started = performance.now()
    return Effect.ensuring(
      Effect.map(effect, (a) => ({ result: a, stall: Math.max(longest, performance.now() - last), elapsed: performance.now() - started })),
      Effect.sync(() => clearInterval(timer))
    )
  })

const snap = (streamId: string): Snapshot.NewSnapshot => ({
  streamId,
  streamType: "Snap",
  version: 1,
  schemaVersion: 1,
  state: { n: 1 }
})

describe("another process holds the write lock", () => {
  it.live("creating the schema gives up after busyTimeout, without blocking the thread", () =>
    Effect.gen(function*() {
      const filename = dbFile("locked-new")
      yield* holdLock(filename, 6000)
      const { elapsed, result: error, stall } = yield* longestStall(openFailure({ filename, busyTimeout: "1 second" }))
      expectNamed(error, filename, /^SQLITE_BUSY/, "migrate")
      expect(elapsed).toBeGreaterThanOrEqual(900)
      expect(elapsed).toBeLessThan(3000)
      expect(stall).toBeLessThan(100)
    }).pipe(Effect.scoped))

  it.live("creating the schema goes on as soon as the lock is released", () =>
    Effect.gen(function*() {
      const filename = dbFile("locked-new-released")
      const { released } = yield* holdLock(filename, 1000)
      const { elapsed, result: version, stall } = yield* longestStall(
        Effect.flatMap(EventStore.EventStore, (store) => store.append("Lock-1", [{ type: "A", payload: {} }])).pipe(
          Effect.provide(Sqlite.layer({ filename, busyTimeout: "20 seconds" })),
          Effect.map((r) => r.version)
        )
      )
      const done = performance.now()
      expect(version).toBe(1)
      expect(elapsed).toBeGreaterThanOrEqual(800)
      expect(done - (yield* Effect.promise(() => released))).toBeLessThan(500)
      expect(stall).toBeLessThan(100)
    }).pipe(Effect.scoped))

  it.live("opening a store that exists does not wait for the lock", () =>
    Effect.gen(function*() {
      const filename = dbFile("locked-existing")
      yield* createStore(filename)
      yield* holdLock(filename, 6000)
      const { elapsed, result: version } = yield* longestStall(
        Effect.flatMap(EventStore.EventStore, (store) => store.version("Lock-2")).pipe(
          Effect.provide(Sqlite.layer({ filename, busyTimeout: "5 seconds" }))
        )
      )
      expect(version).toBe(0)
      expect(elapsed).toBeLessThan(1000)
    }).pipe(Effect.scoped))

  it.live("a snapshot save gives up after busyTimeout, without blocking the thread", () =>
    Effect.gen(function*() {
      const filename = dbFile("locked-snapshot")
      const context = yield* Layer.build(Sqlite.layer({ filename, busyTimeout: "1 second" }))
      yield* holdLock(filename, 6000)
      const { elapsed, result: error, stall } = yield* longestStall(
        Effect.flip(Effect.flatMap(Snapshot.SnapshotStore, (store) => store.save(snap("Snap-1")))).pipe(
          Effect.provide(context)
        )
      )
      expect(error).toMatchObject({ _tag: "StoreError", operation: "snapshot.save" })
      expect(codeOf((error as StoreError).cause)).toMatch(/^SQLITE_BUSY/)
      expect(elapsed).toBeGreaterThanOrEqual(900)
      expect(elapsed).toBeLessThan(3000)
      expect(stall).toBeLessThan(100)
    }).pipe(Effect.scoped))

  it.live("a snapshot save succeeds once the lock is released, without blocking the thread meanwhile", () =>
    Effect.gen(function*() {
      const filename = dbFile("locked-snapshot-released")
      const context = yield* Layer.build(Sqlite.layer({ filename, busyTimeout: "20 seconds" }))
      const { released } = yield* holdLock(filename, 1000)
      const { elapsed, stall } = yield* longestStall(
        Effect.flatMap(Snapshot.SnapshotStore, (store) => store.save(snap("Snap-2"))).pipe(Effect.provide(context))
      )
      const done = performance.now()
      expect(elapsed).toBeGreaterThanOrEqual(800)
      expect(done - (yield* Effect.promise(() => released))).toBeLessThan(500)
      expect(stall).toBeLessThan(100)
      const saved = yield* Effect.flatMap(Snapshot.SnapshotStore, (store) => store.latest("Snap-2")).pipe(
        Effect.provide(context)
      )
      expect(Option.map(saved, (s) => s.version)).toEqual(Option.some(1))
    }).pipe(Effect.scoped))
})
