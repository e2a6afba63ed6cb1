/**
 * `Runtime.run` as an operator sees it: real processes, real signals, exit codes. The bank-account service is put
 * under load and sent SIGTERM mid-load: it must exit 0 within its shutdown timeout, and every command it
 * acknowledged must be in the SQLite file afterwards. The fixture `service-modes.ts` covers the other exits: a failed
 * start, a start timeout, a forced stop, a second signal, `main`'s success and failure.
 */
import Sqlite from "better-sqlite3"
import { describe, expect, it } from "vitest"
import { type ChildProcess, spawn } from "node:child_process"
import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"

const root = path.resolve(import.meta.dirname, "..")

interface Child {
  readonly process: ChildProcess
  /** Everything it printed so far, stdout and stderr interleaved as they arrived. */
  output: () => string
  readonly exited: Promise<{ readonly code: number | null; readonly signal: NodeJS.Signals | null }>
}

const start = (file: string, args: ReadonlyArray<string> = [], env: Record<string, string> = {}): Child => {
  const child = spawn(process.execPath, ["--import", "tsx", "--conditions=@effect-eventstore/source", file, ...args], {
    cwd: root,
    env: { ...process.env, ...env },
    stdio: ["ignore", "pipe", "pipe"]
  })
  let output = ""
  child.stdout!.on("data", (chunk) => (output += chunk))
  child.stderr!.on("data", (chunk) => (output += chunk))
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) =>
    child.on("exit", (code, signal) => resolve({ code, signal }))
  )
  return { process: child, output: () => output, exited }
}

const waitFor = async (what: string, done: () => boolean | Promise<boolean>, child: Child, timeout = 30_000) => {
  const deadline = Date.now() + timeout
  while (!(await done())) {
    if (Date.now() > deadline) {
      child.process.kill("SIGKILL")
      throw new Error(`timed out waiting for ${what}; output:\n${child.output()}`)
    }
    await new Promise((resolve) => setTimeout(resolve, 20))
  }
}

const fixture = path.join("test", "fixtures", "service-modes.ts")

const exitOf = async (child: Child, timeout: number) => {
  const timer = setTimeout(() => child.process.kill("SIGKILL"), timeout)
  const exit = await child.exited
  clearTimeout(timer)
  return exit
}

describe("Runtime.run", () => {
  it("the bank-account service stops on SIGTERM mid-load: exit 0 in time, every acknowledged command stored", async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), "effect-eventstore-service-"))
    const shutdownTimeout = 10_000
    // any free port: the service says which in its ready line
    const child = start(path.join("examples", "bank-account", "service.ts"), [], {
      BANK_DATA_DIR: dir,
      HEALTH_PORT: "0",
      TELLERS: "8",
      PAUSE_MS: "0",
      SHUTDOWN_TIMEOUT_MS: String(shutdownTimeout)
    })
    const acks = () =>
      child.output().split("\n").filter((line) => line.startsWith("{\"ack\"")).map((line) =>
        (JSON.parse(line) as { ack: { streamId: string; version: number } }).ack
      )

    let port = 0
    await waitFor("the ready line with the health port", () => {
      const match = /bank-account: ready, health on port (\d+)/.exec(child.output())
      if (match !== null) port = Number(match[1])
      return port > 0
    }, child)
    // ready: the endpoint answers 200 while it runs, with the store and both projections healthy
    let ready: { status: number; body: { status: string; components: Array<{ component: string; status: string }> } } | undefined
    await waitFor("/health/ready to answer 200", async () => {
      try {
        const response = await fetch(`http://127.0.0.1:${port}/health/ready`)
        ready = { status: response.status, body: await response.json() as any }
        return response.status === 200
      } catch {
        return false
      }
    }, child)
    expect(ready!.body.components.map((c) => c.component).sort()).toEqual([
      "eventstore",
      "projections/account-balances",
      "projections/transactions-per-day"
    ])
    await waitFor("200 acknowledged commands", () => acks().length >= 200, child)

    const signalled = Date.now()
    child.process.kill("SIGTERM")
    const exit = await exitOf(child, shutdownTimeout + 5_000)
    const took = Date.now() - signalled
    const output = child.output()
    expect(exit, output).toEqual({ code: 0, signal: null })
    expect(took).toBeLessThan(shutdownTimeout)
    expect(output).toContain("bank-account: stopping")
    expect(output).toContain("bank-account: stopped")
    // commands in flight when the signal came finished and were acknowledged after the stop began
    const lines = output.split("\n")
    const stoppingAt = lines.findIndex((line) => line.includes("bank-account: stopping"))
    expect(lines.slice(stoppingAt).some((line) => line.startsWith("{\"ack\""))).toBe(true)

    const acknowledged = acks()
    const db = new Sqlite(path.join(dir, "bank-account.db"), { readonly: true })
    try {
      const stored = db.prepare("SELECT 1 FROM eventstore_events WHERE stream_id = ? AND version = ?")
      const missing = acknowledged.filter((ack) => stored.get(ack.streamId, ack.version) === undefined)
      expect(missing).toEqual([])
      // and every stored command was acknowledged: the ack line is part of the tracked work, which the stop waits for
      const all = db.prepare("SELECT stream_id, version FROM eventstore_events").all() as Array<
        { stream_id: string; version: number }
      >
      const printed = new Set(acknowledged.map((ack) => `${ack.streamId}@${ack.version}`))
      expect(all.filter((row) => !printed.has(`${row.stream_id}@${row.version}`))).toEqual([])
      expect(all.length).toBe(acknowledged.length)
      // and each stream holds versions 1..n without gaps (nothing half-written)
      const streams = db.prepare(
        "SELECT stream_id, COUNT(*) AS n, MAX(version) AS v FROM eventstore_events GROUP BY stream_id"
      ).all() as Array<{ stream_id: string; n: number; v: number }>
      for (const s of streams) expect(s.n, s.stream_id).toBe(s.v)
    } finally {
      db.close()
    }
  })

  it("SIGTERM on a service that stops cleanly: exit 0", async () => {
    const child = start(fixture, ["clean"])
    await waitFor("READY", () => child.output().includes("READY"), child)
    child.process.kill("SIGTERM")
    const exit = await exitOf(child, 10_000)
    expect(exit, child.output()).toEqual({ code: 0, signal: null })
    expect(child.output()).toContain("fixture: stopped")
  })

  it("a layer that fails to build: exit 1 with the error logged", async () => {
    const child = start(fixture, ["fail-start"])
    const exit = await exitOf(child, 20_000)
    expect(exit.code, child.output()).toBe(1)
    expect(child.output()).toContain("fixture: start failed")
    expect(child.output()).toContain("no database")
    expect(child.output()).not.toContain("fixture: ready")
  })

  it("a start longer than startupTimeout: exit 1", async () => {
    const child = start(fixture, ["slow-start"])
    const exit = await exitOf(child, 20_000)
    expect(exit.code, child.output()).toBe(1)
    expect(child.output()).toContain("not ready after the startup timeout (300ms)")
  })

  it("a stop longer than shutdownTimeout: a forced stop, exit 2, soon after the timeout", async () => {
    const child = start(fixture, ["stuck-stop"])
    await waitFor("READY", () => child.output().includes("READY"), child)
    const signalled = Date.now()
    child.process.kill("SIGTERM")
    const exit = await exitOf(child, 10_000)
    expect(exit, child.output()).toEqual({ code: 2, signal: null })
    expect(Date.now() - signalled).toBeLessThan(5_000)
    expect(child.output()).toContain("forced stop: the shutdown timeout (500ms) ran out")
  })

  it("a second signal during the stop exits at once: 128 + the signal's number", async () => {
    const child = start(fixture, ["slow-stop"])
    await waitFor("READY", () => child.output().includes("READY"), child)
    child.process.kill("SIGTERM")
    await waitFor("the stop to begin", () => child.output().includes("STOPPING"), child)
    const signalled = Date.now()
    child.process.kill("SIGINT")
    const exit = await exitOf(child, 10_000)
    expect(exit, child.output()).toEqual({ code: 130, signal: null })
    // well before the finalizer's 10 s
    expect(Date.now() - signalled).toBeLessThan(5_000)
    expect(child.output()).toContain("forced stop: second signal (SIGINT)")
  })

  it("a clean end exits 0 at once, whatever handles are left open", async () => {
    const child = start(fixture, ["stray-handle"])
    const exit = await exitOf(child, 10_000)
    expect(exit, child.output()).toEqual({ code: 0, signal: null })
    expect(child.output()).toContain("done")
    expect(child.output()).toContain("fixture: stopped")
  })

  it("main decides the exit when it ends: 0 when it succeeds, 1 when it fails", async () => {
    const ok = start(fixture, ["main-ok"])
    const failed = start(fixture, ["main-fail"])
    const [okExit, failedExit] = await Promise.all([exitOf(ok, 20_000), exitOf(failed, 20_000)])
    expect(okExit, ok.output()).toEqual({ code: 0, signal: null })
    expect(ok.output()).toContain("done")
    expect(failedExit, failed.output()).toEqual({ code: 1, signal: null })
    expect(failed.output()).toContain("fixture: main failed")
  })
})
