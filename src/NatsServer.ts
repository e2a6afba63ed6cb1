/**
 * A local `nats-server` for development and tests, run as a child process of this one (what Go programs get from an
 * embedded NATS): `make` starts one JetStream server on free loopback ports with a fresh store directory, `cluster`
 * starts N of them routed into one JetStream cluster. Both are scoped: the processes are stopped and the temporary
 * directories removed when the scope closes. A server can be stopped, killed (as in a crash) and started again on
 * the same ports and store, so tests can take NATS away mid-run and see JetStream data survive.
 *
 * Readiness is the server's own answer, not an open port: `/healthz` on its monitoring port, which in a cluster also
 * waits for contact with a JetStream meta leader and for the node's streams to catch up.
 *
 * Needs the `nats-server` binary (Debian: `apt install nats-server`); uses only Node built-ins.
 *
 * @since 0.1.0
 */
import * as ChildProcess from "node:child_process"
import * as Fs from "node:fs"
import * as Net from "node:net"
import * as Os from "node:os"
import * as Path from "node:path"
import * as Context from "effect/Context"
import * as Deferred from "effect/Deferred"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as FiberId from "effect/FiberId"
import * as Layer from "effect/Layer"
import * as Schedule from "effect/Schedule"
import * as Schema from "effect/Schema"
import type * as Scope from "effect/Scope"

/**
 * A local server could not be started: the binary is missing, the process exited before it was ready (`reason`
 * ends with the tail of its log), or it was not ready in time.
 *
 * @since 0.1.0
 */
export class NatsServerError extends Schema.TaggedError<NatsServerError>()("NatsServerError", {
  operation: Schema.Literal("start", "cluster"),
  reason: Schema.String
}) {
  override get message(): string {
    return `nats-server ${this.operation} failed: ${this.reason}`
  }
}

/**
 * One running (or stopped) local server. `start`, `stop`, `kill` and `restart` are serialized; `start` on a running
 * server and `stop`/`kill` on a stopped one do nothing.
 *
 * @since 0.1.0
 */
export interface NatsServerService {
  /** `nats://host:port`, what clients connect to. */
  readonly url: string
  readonly port: number
  /** The monitoring endpoint, e.g. `${monitorUrl}/jsz`. */
  readonly monitorUrl: string
  /** The server's `server_name` (in a cluster, what `StreamInfo.cluster.leader` reports). */
  readonly name: string
  readonly storeDir: string
  /** The server's stdout and stderr, across restarts. */
  readonly logFile: string
  /** Starts the server again on the same ports and store (JetStream data survives) and waits until it is ready. */
  readonly start: Effect.Effect<void, NatsServerError>
  /** SIGTERM and wait for the exit (a clean shutdown); SIGKILL if it takes longer than `stopTimeout`. */
  readonly stop: Effect.Effect<void>
  /** SIGKILL and wait for the exit: a crash. */
  readonly kill: Effect.Effect<void>
  /** `stop`, then `start`. */
  readonly restart: Effect.Effect<void, NatsServerError>
}

/** @since 0.1.0 */
export class NatsServer extends Context.Tag("effect-eventstore/NatsServer")<NatsServer, NatsServerService>() {}

/** @since 0.1.0 */
export interface Options {
  /**
   * The `nats-server` executable: a path, or a name looked up on `PATH`. Default: `nats-server` on `PATH`, then
   * `/usr/sbin/nats-server`, then `/usr/local/bin/nats-server`.
   */
  readonly binary?: string
  /** The address to listen on; default `127.0.0.1`. */
  readonly host?: string
  /** The client port; default a free one. */
  readonly port?: number
  /** The monitoring (HTTP) port, used for readiness; default a free one. */
  readonly monitorPort?: number
  /** The JetStream store directory, kept when the scope closes; default a fresh temporary one, removed then. */
  readonly storeDir?: string
  /** The `server_name`; default `nats-<port>`. */
  readonly serverName?: string
  /** How long a start may take until the server is ready; default 10 seconds. */
  readonly startTimeout?: Duration.DurationInput
  /** How long `stop` waits after SIGTERM before it sends SIGKILL; default 5 seconds. */
  readonly stopTimeout?: Duration.DurationInput
  /** More command-line arguments, appended to the ones this module passes. */
  readonly args?: ReadonlyArray<string>
}

/**
 * Starts a JetStream server on free ports and waits until it is ready; stops it and removes its temporary
 * directory when the scope closes.
 *
 * @example
 * ```ts
 * const program = Effect.gen(function*() {
 *   const server = yield* NatsServer.make()
 *   const nc = yield* Nats.make({ servers: server.url })
 *   yield* server.kill // NATS goes away mid-run …
 *   yield* server.start // … and comes back on the same port with its streams
 * }).pipe(Effect.scoped)
 * ```
 *
 * @since 0.1.0
 */
export const make = (options: Options = {}): Effect.Effect<NatsServerService, NatsServerError, Scope.Scope> =>
  Effect.gen(function*() {
    const binary = yield* resolveBinary(options.binary)
    const [port, monitorPort] = yield* freePorts([options.port, options.monitorPort])
    const server = yield* prepare({ ...options, binary, port, monitorPort, extraArgs: [] })
    yield* server.start
    return server
  }).pipe(Effect.withSpan("NatsServer.make"))

/**
 * `make` as a layer.
 *
 * @example
 * ```ts
 * const NatsLive = Layer.unwrapEffect(Effect.map(NatsServer.NatsServer, (s) => Nats.layer({ servers: s.url })))
 *   .pipe(Layer.provideMerge(NatsServer.layer()))
 * ```
 *
 * @since 0.1.0
 */
export const layer = (options: Options = {}): Layer.Layer<NatsServer, NatsServerError> =>
  Layer.scoped(NatsServer, make(options))

/**
 * A JetStream cluster on loopback. `nodes[i]` is `n<i+1>`; each node can be killed and started on its own (the
 * others elect new leaders). A node's `start` waits for contact with a meta leader, which needs a quorum: after
 * stopping a majority, start them concurrently (`Effect.forEach(nodes, (n) => n.start, { concurrency: "unbounded" })`).
 *
 * @since 0.1.0
 */
export interface ClusterService {
  /** The cluster name. */
  readonly name: string
  /** Every node's client URL, for `servers`. */
  readonly urls: ReadonlyArray<string>
  readonly nodes: ReadonlyArray<NatsServerService>
}

/** @since 0.1.0 */
export class NatsCluster extends Context.Tag("effect-eventstore/NatsCluster")<NatsCluster, ClusterService>() {}

/** @since 0.1.0 */
export interface ClusterOptions {
  /** The number of nodes; default 3. */
  readonly size?: number
  /** The cluster name; default a fresh one. */
  readonly name?: string
  readonly binary?: string
  /** How long the whole cluster may take to start (and each node's later `start`); default 20 seconds. */
  readonly startTimeout?: Duration.DurationInput
  readonly stopTimeout?: Duration.DurationInput
  /** More command-line arguments for every node. */
  readonly args?: ReadonlyArray<string>
}

/**
 * Starts `size` JetStream servers on loopback, routed to each other, and waits until every node is ready and all
 * agree on a meta leader; stops them all and removes their temporary directories when the scope closes.
 *
 * @since 0.1.0
 */
export const cluster = (options: ClusterOptions = {}): Effect.Effect<ClusterService, NatsServerError, Scope.Scope> =>
  Effect.gen(function*() {
    const size = options.size ?? 3
    if (!Number.isInteger(size) || size < 1) {
      return yield* new NatsServerError({ operation: "cluster", reason: `size must be a positive integer, got ${size}` })
    }
    const binary = yield* resolveBinary(options.binary)
    const name = options.name ?? `local-${Math.random().toString(36).slice(2, 8)}`
    const startTimeout = options.startTimeout ?? "20 seconds"
    const ports = yield* freePorts(Array.from({ length: size * 3 }, () => undefined))
    const routeUrl = (i: number) => `nats://127.0.0.1:${ports[size * 2 + i]}`
    const nodes = yield* Effect.forEach(Array.from({ length: size }, (_, i) => i), (i) =>
      prepare({
        binary,
        host: "127.0.0.1",
        port: ports[i]!,
        monitorPort: ports[size + i]!,
        serverName: `n${i + 1}`,
        startTimeout,
        ...(options.stopTimeout !== undefined ? { stopTimeout: options.stopTimeout } : {}),
        ...(options.args !== undefined ? { args: options.args } : {}),
        extraArgs: [
          "--cluster_name",
          name,
          "--cluster",
          routeUrl(i),
          ...(size > 1 ? ["--routes", ports.slice(0, size).flatMap((_, j) => j === i ? [] : [routeUrl(j)]).join(",")] : [])
        ]
      }))
    // Every node waits for a meta leader before it is ready, so they can only start together.
    yield* Effect.forEach(
      nodes,
      (node) =>
        Effect.mapError(node.start, (error) =>
          new NatsServerError({ operation: "cluster", reason: `node ${node.name}: ${error.reason}` })),
      { concurrency: "unbounded", discard: true }
    )
    let leaders: ReadonlyArray<string | undefined> = []
    yield* Effect.forEach(nodes, (node) => metaLeader(node.monitorUrl)).pipe(
      Effect.tap((found) => {
        leaders = found
      }),
      Effect.repeat({
        schedule: Schedule.spaced("50 millis"),
        until: (found) => found[0] !== undefined && found.every((leader) => leader === found[0])
      }),
      Effect.timeoutFail({
        duration: startTimeout,
        onTimeout: () =>
          new NatsServerError({
            operation: "cluster",
            reason: `the nodes did not agree on a JetStream meta leader within ${Duration.format(startTimeout)} ` +
              `(${nodes.map((node, i) => `${node.name}: ${leaders[i] ?? "none"}`).join(", ")})`
          })
      })
    )
    return { name, urls: nodes.map((node) => node.url), nodes }
  }).pipe(Effect.withSpan("NatsServer.cluster", { attributes: { "nats.cluster.size": options.size ?? 3 } }))

/**
 * `cluster` as a layer.
 *
 * @since 0.1.0
 */
export const layerCluster = (options: ClusterOptions = {}): Layer.Layer<NatsCluster, NatsServerError> =>
  Layer.scoped(NatsCluster, cluster(options))

// ---------------------------------------------------------------------------------------------------------------
// internals

const missing = "install it (Debian: apt install nats-server) or pass `binary`"

const isExecutable = (file: string): boolean => {
  try {
    Fs.accessSync(file, Fs.constants.X_OK)
    return Fs.statSync(file).isFile()
  } catch {
    return false
  }
}

const onPath = (name: string): string | undefined =>
  (process.env.PATH ?? "").split(Path.delimiter).filter((dir) => dir !== "").map((dir) => Path.join(dir, name))
    .find(isExecutable)

// Debian puts nats-server in /usr/sbin, which is not on an ordinary user's PATH.
const fallbacks = ["/usr/sbin/nats-server", "/usr/local/bin/nats-server"]

const resolveBinary = (binary: string | undefined): Effect.Effect<string, NatsServerError> =>
  Effect.suspend(() => {
    const found = binary === undefined
      ? onPath("nats-server") ?? fallbacks.find(isExecutable)
      : binary.includes(Path.sep)
      ? (isExecutable(binary) ? binary : undefined)
      : onPath(binary)
    return found !== undefined
      ? Effect.succeed(found)
      : Effect.fail(
        new NatsServerError({
          operation: "start",
          reason: binary === undefined
            ? `nats-server not found on PATH or in ${fallbacks.join(", ")}: ${missing}`
            : `nats-server not found: ${JSON.stringify(binary)} is not an executable file; ${missing}`
        })
      )
  })

/**
 * Free TCP ports on loopback, one per `undefined` (a given port is kept). All are held open until all are chosen,
 * so they differ; another process may still take one before the server binds it (the start then fails clearly).
 */
const freePorts = (wanted: ReadonlyArray<number | undefined>): Effect.Effect<Array<number>, NatsServerError> =>
  Effect.tryPromise({
    try: async () => {
      const held: Array<Net.Server> = []
      try {
        const ports: Array<number> = []
        for (const port of wanted) {
          if (port !== undefined) {
            ports.push(port)
            continue
          }
          const server = Net.createServer()
          held.push(server)
          await new Promise<void>((resolve, reject) => {
            server.once("error", reject)
            server.listen(0, "127.0.0.1", () => resolve())
          })
          ports.push((server.address() as Net.AddressInfo).port)
        }
        return ports
      } finally {
        await Promise.all(held.map((server) => new Promise<void>((resolve) => server.close(() => resolve()))))
      }
    },
    catch: (cause) =>
      new NatsServerError({
        operation: "start",
        reason: `no free port: ${cause instanceof Error ? cause.message : String(cause)}`
      })
  })

// Children still alive when this process exits without closing their scopes (process.exit, an aborted test run)
// are killed and the temporary directories removed, so nothing is left behind. Best effort: nothing runs when this
// process is killed with SIGKILL.
const live = new Set<ChildProcess.ChildProcess>()
const tempDirs = new Set<string>()
let exitHook = false
const onExit = (): void => {
  if (exitHook) return
  exitHook = true
  process.on("exit", () => {
    for (const child of live) child.kill("SIGKILL")
    for (const dir of tempDirs) {
      try {
        Fs.rmSync(dir, { recursive: true, force: true })
      } catch {
        // best effort
      }
    }
  })
}
const track = (child: ChildProcess.ChildProcess): void => {
  onExit()
  live.add(child)
  child.once("exit", () => live.delete(child))
}

interface Running {
  readonly child: ChildProcess.ChildProcess
  /** Completed with how the process ended, e.g. `code 1` or `signal SIGKILL`. */
  readonly exited: Deferred.Deferred<string>
}

const alive = (running: Running | undefined): running is Running =>
  running !== undefined && running.child.exitCode === null && running.child.signalCode === null

const spawn = (binary: string, args: ReadonlyArray<string>, logFile: string): Effect.Effect<Running, NatsServerError> =>
  Effect.async<Running, NatsServerError>((resume) => {
    // stdout and stderr go straight to the file: no pipe to drain, and no SIGPIPE if this process dies first.
    const fd = Fs.openSync(logFile, "a")
    const child = ChildProcess.spawn(binary, args, { stdio: ["ignore", fd, fd] })
    Fs.closeSync(fd)
    const exited = Deferred.unsafeMake<string>(FiberId.none)
    child.once("exit", (code, signal) => {
      Deferred.unsafeDone(exited, Exit.succeed(signal !== null ? `signal ${signal}` : `code ${code}`))
    })
    const onError = (cause: Error) =>
      resume(Effect.fail(new NatsServerError({ operation: "start", reason: `could not run ${binary}: ${cause.message}` })))
    child.once("error", onError)
    child.once("spawn", () => {
      child.off("error", onError)
      // A later error (a failed kill) must not become an uncaught 'error' event.
      child.on("error", () => undefined)
      track(child)
      resume(Effect.succeed({ child, exited }))
    })
  })

/**
 * What the server logged since `from`, for an error: the first lines (a bad flag is reported before the usage text)
 * and the last ones (a fatal error ends the log), without the warnings our own readiness polls cause.
 */
const logTail = (logFile: string, from: number): string => {
  try {
    const lines = Fs.readFileSync(logFile, "utf8").slice(from).trimEnd().split("\n")
      .filter((line) => line !== "" && !line.includes("Healthcheck failed"))
    if (lines.length === 0) return " (the log is empty)"
    const shown = lines.length <= 20 ? lines : [...lines.slice(0, 3), "…", ...lines.slice(-15)]
    return `; log tail:\n${shown.join("\n")}`
  } catch {
    return ""
  }
}

const fileSize = (file: string): number => {
  try {
    return Fs.statSync(file).size
  } catch {
    return 0
  }
}

/** The body of a monitoring endpoint, or why there is none. */
const getJson = (url: string): Effect.Effect<unknown, string> =>
  Effect.tryPromise({
    try: async (signal) => {
      const response = await fetch(url, { signal: AbortSignal.any([signal, AbortSignal.timeout(2000)]) })
      return { status: response.status, body: await response.text() }
    },
    catch: (cause) => cause instanceof Error ? (cause.cause instanceof Error ? cause.cause.message : cause.message) : String(cause)
  }).pipe(
    Effect.flatMap(({ body, status }) =>
      Effect.try({ try: () => JSON.parse(body) as unknown, catch: () => `HTTP ${status}: ${body.slice(0, 200)}` })
    )
  )

const metaLeader = (monitorUrl: string): Effect.Effect<string | undefined> =>
  getJson(`${monitorUrl}/jsz`).pipe(
    Effect.map((jsz) => {
      const leader = (jsz as { meta_cluster?: { leader?: unknown } }).meta_cluster?.leader
      return typeof leader === "string" && leader !== "" ? leader : undefined
    }),
    Effect.orElseSucceed(() => undefined)
  )

interface Prepared {
  readonly binary: string
  readonly host?: string
  readonly port: number
  readonly monitorPort: number
  readonly storeDir?: string
  readonly serverName?: string
  readonly startTimeout?: Duration.DurationInput
  readonly stopTimeout?: Duration.DurationInput
  readonly args?: ReadonlyArray<string>
  readonly extraArgs: ReadonlyArray<string>
}

/** A server that is not started yet, with its finalizers in the scope. */
const prepare = (options: Prepared): Effect.Effect<NatsServerService, never, Scope.Scope> =>
  Effect.gen(function*() {
    const host = options.host ?? "127.0.0.1"
    // A wildcard listen address is reached through loopback.
    const reach = host === "0.0.0.0" || host === "::" ? "127.0.0.1" : host.includes(":") ? `[${host}]` : host
    const { monitorPort, port } = options
    const name = options.serverName ?? `nats-${port}`
    const startTimeout = Duration.decode(options.startTimeout ?? "10 seconds")
    const stopTimeout = options.stopTimeout ?? "5 seconds"
    const dir = yield* Effect.acquireRelease(
      Effect.sync(() => {
        const dir = Fs.mkdtempSync(Path.join(Os.tmpdir(), "effect-eventstore-nats-"))
        onExit()
        tempDirs.add(dir)
        return dir
      }),
      (dir) =>
        Effect.promise(() => Fs.promises.rm(dir, { recursive: true, force: true }).catch(() => undefined)).pipe(
          Effect.ensuring(Effect.sync(() => tempDirs.delete(dir)))
        )
    )
    const storeDir = options.storeDir ?? Path.join(dir, "store")
    const logFile = Path.join(dir, "nats-server.log")
    const monitorUrl = `http://${reach}:${monitorPort}`
    const args = [
      "-a",
      host,
      "-p",
      String(port),
      "-m",
      String(monitorPort),
      "-js",
      "-sd",
      storeDir,
      "--server_name",
      name,
      ...options.extraArgs,
      ...(options.args ?? [])
    ]
    const lock = yield* Effect.makeSemaphore(1)
    let current: Running | undefined

    const awaitExit = (running: Running) =>
      Deferred.await(running.exited).pipe(Effect.timeout("5 seconds"), Effect.ignore)

    const killNow = Effect.suspend(() => {
      if (!alive(current)) return Effect.void
      current.child.kill("SIGKILL")
      return awaitExit(current)
    })

    const stopNow = Effect.suspend(() => {
      if (!alive(current)) return Effect.void
      const running = current
      running.child.kill("SIGTERM")
      // interruptible: this also runs as the scope's finalizer, where the time limit could not otherwise end the wait
      return Effect.interruptible(Deferred.await(running.exited)).pipe(
        Effect.timeout(stopTimeout),
        Effect.catchAll(() => Effect.zipRight(Effect.sync(() => running.child.kill("SIGKILL")), awaitExit(running)))
      )
    })

    const startNow = Effect.gen(function*() {
      if (alive(current)) return
      const from = fileSize(logFile)
      const running = yield* spawn(options.binary, args, logFile)
      current = running
      let last = "no answer yet"
      const healthy = getJson(`${monitorUrl}/healthz`).pipe(
        Effect.map((body) => {
          const health = body as { status?: unknown; error?: unknown }
          if (health.status === "ok") return true
          last = typeof health.error === "string" ? health.error : JSON.stringify(body)
          return false
        }),
        Effect.catchAll((reason) =>
          Effect.sync(() => {
            last = reason
            return false
          })
        ),
        Effect.repeat({ schedule: Schedule.spaced("25 millis"), until: (ok) => ok })
      )
      const exitedEarly = Deferred.await(running.exited).pipe(
        Effect.flatMap((how) =>
          new NatsServerError({
            operation: "start",
            reason: `${options.binary} exited (${how}) before it was ready${logTail(logFile, from)}`
          })
        )
      )
      yield* Effect.raceFirst(healthy, exitedEarly).pipe(
        Effect.timeoutFail({
          duration: startTimeout,
          onTimeout: () =>
            new NatsServerError({
              operation: "start",
              reason: `not ready within ${Duration.format(startTimeout)} (${monitorUrl}/healthz: ${last})` +
                logTail(logFile, from)
            })
        }),
        // A server that failed to become ready (or whose start was interrupted) does not stay behind.
        Effect.onError(() => killNow)
      )
    })

    const span = (operation: string) =>
      Effect.withSpan(`NatsServer.${operation}`, { attributes: { "nats.port": port, "nats.server_name": name } })

    yield* Effect.addFinalizer(() => lock.withPermits(1)(stopNow))
    return {
      url: `nats://${reach}:${port}`,
      port,
      monitorUrl,
      name,
      storeDir,
      logFile,
      start: lock.withPermits(1)(startNow).pipe(span("start")),
      stop: lock.withPermits(1)(stopNow).pipe(span("stop")),
      kill: lock.withPermits(1)(killNow).pipe(span("kill")),
      restart: lock.withPermits(1)(Effect.zipRight(stopNow, startNow)).pipe(span("restart"))
    }
  })
