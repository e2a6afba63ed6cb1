/**
 * The package as an app gets it: `npm pack` (whose `prepare` builds dist/), installed into a scratch app next to
 * an `effect` 3.22 patch other than the repository's own and the required peers, type-checked by a strict NodeNext
 * tsconfig and run on the memory store. What it guards: one copy of `effect` (peers, not dependencies), public
 * types that resolve without internal symbols (`stripInternal`) and an exports map whose every target ships.
 *
 * Needs the npm registry. Outside CI an unreachable registry skips the test with a one-line reason; with `CI=true`
 * it fails.
 */
import { execFile } from "node:child_process"
import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"
import { promisify } from "node:util"
import { afterAll, describe, expect, it } from "vitest"

const run = promisify(execFile)
const root = path.resolve(import.meta.dirname, "..")
const inCI = !["", "0", "false"].includes((process.env.CI ?? "").toLowerCase())

// Child npm processes keep the user's npm configuration (registry, proxy, cache, CA) but not what an enclosing
// `npm test` adds about itself (lifecycle event, package fields, prefixes).
const env = Object.fromEntries(
  Object.entries(process.env).filter(([key]) =>
    !/^npm_/i.test(key) || (/^npm_config_/i.test(key) && !/^npm_config_(call|local_prefix|prefix)$/i.test(key))
  )
)
const npm = (args: ReadonlyArray<string>, cwd: string) =>
  run("npm", [...args, "--no-audit", "--no-fund", "--no-update-notifier"], {
    cwd,
    env,
    maxBuffer: 64 * 1024 * 1024,
    timeout: 240_000
  })

interface PackageJson {
  readonly version: string
  readonly dependencies?: Record<string, string>
  readonly peerDependencies?: Record<string, string>
  readonly peerDependenciesMeta?: Record<string, { readonly optional?: boolean }>
  readonly exports: Record<string, string | Record<string, string>>
}
const readJson = <A>(file: string): A => JSON.parse(fs.readFileSync(file, "utf8")) as A

// The floor of the peer range unless the repository happens to use it: an app on a different patch than ours.
const repoEffect = readJson<PackageJson>(path.join(root, "node_modules/effect/package.json")).version
const appEffect = ["3.22.2", "3.22.3"].find((v) => v !== repoEffect)!

const registry = await npm(["view", `effect@${appEffect}`, "version", "--fetch-retries=0", "--fetch-timeout=20000"], root)
  .then(
    ({ stdout }) => stdout.trim() === appEffect ? undefined : `effect@${appEffect} not found on the registry`,
    (error: { stderr?: string; message: string }) =>
      `npm registry not usable (${(error.stderr || error.message).trim().split("\n")[0]})`
  )
if (registry !== undefined && !inCI) console.log(`package.test.ts skipped: ${registry}`)

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), "effect-eventstore-package-"))
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }))

/** Every installed `effect` package under `dir`, by its folder. */
const effectCopies = (dir: string): Array<string> => {
  const found: Array<string> = []
  const walk = (nodeModules: string) => {
    if (!fs.existsSync(nodeModules)) return
    for (const name of fs.readdirSync(nodeModules)) {
      const folders = name.startsWith("@")
        ? fs.readdirSync(path.join(nodeModules, name)).map((n) => path.join(nodeModules, name, n))
        : [path.join(nodeModules, name)]
      for (const folder of folders) {
        if (name === "effect") found.push(folder)
        walk(path.join(folder, "node_modules"))
      }
    }
  }
  walk(path.join(dir, "node_modules"))
  return found
}

// Ten lines an app would write: its own Schema through the library's registry, the memory store as a layer.
const program = `import { Effect, Schema, Stream } from "effect"
import { Event, EventStore } from "effect-eventstore"

const Deposited = Schema.TaggedStruct("Deposited", { amount: Schema.Int })
const events = Event.registry([Deposited])

const program = Effect.gen(function*() {
  const store = yield* EventStore.EventStore
  const first = yield* events.encode(Deposited.make({ amount: 100 }))
  const second = yield* events.encode(Deposited.make({ amount: 30 }))
  const { version } = yield* store.append("Account-1", [first, second], { expectedVersion: "no-stream" })
  const read = yield* Stream.runCollect(store.read("Account-1").pipe(Event.decodeStream(events)))
  const amounts = Array.from(read, (e) => \`\${e.payload._tag}@\${e.version}:\${e.payload.amount}\`)
  console.log(JSON.stringify({ version, amounts }))
})

program.pipe(Effect.provide(EventStore.layerMemory), Effect.runPromise)
`

describe.skipIf(registry !== undefined && !inCI)("the packed package in an app", () => {
  it("installs with one copy of effect, type-checks under strict NodeNext and runs on the memory store", async () => {
    if (registry !== undefined) throw new Error(`CI=true and ${registry}`)

    // npm pack runs `prepare`, which builds dist/.
    const packDir = path.join(tmp, "pack")
    fs.mkdirSync(packDir)
    const packed = JSON.parse((await npm(["pack", "--json", "--ignore-scripts=false", "--pack-destination", packDir], root)).stdout) as [
      { readonly filename: string; readonly files: ReadonlyArray<{ readonly path: string }> }
    ]
    const tarball = path.join(packDir, packed[0].filename)
    const shipped = new Set(packed[0].files.map((f) => f.path))
    expect(shipped).toContain("dist/index.js")
    expect(shipped).toContain("LICENSE")
    expect([...shipped].filter((f) => f.startsWith("test/") || f.startsWith("examples/"))).toEqual([])

    const pkg = readJson<PackageJson>(path.join(root, "package.json"))
    const targets = Object.values(pkg.exports).flatMap((entry) =>
      typeof entry === "string" ? [entry] : Object.values(entry)
    )
    expect(targets.map((t) => t.replace(/^\.\//, "")).filter((t) => !shipped.has(t))).toEqual([])

    // The app: the tarball in place of the registry name, a different effect patch, the required peers only (the
    // optional backends would need a native build).
    const app = path.join(tmp, "app")
    fs.mkdirSync(app)
    fs.writeFileSync(
      path.join(app, "package.json"),
      JSON.stringify({ name: "scratch-app", private: true, type: "module" }, null, 2)
    )
    fs.writeFileSync(
      path.join(app, "tsconfig.json"),
      JSON.stringify(
        {
          compilerOptions: {
            target: "ES2022",
            module: "NodeNext",
            moduleResolution: "NodeNext",
            strict: true,
            exactOptionalPropertyTypes: true,
            // Our .d.ts files are checked too: a public type naming a stripped `@internal` symbol fails here.
            skipLibCheck: false,
            types: ["node"],
            outDir: "out"
          },
          files: ["main.ts", "types.ts"]
        },
        null,
        2
      )
    )
    fs.writeFileSync(path.join(app, "main.ts"), program)
    // Every public module's types but the backends' (they need their optional drivers: @effect/sql-sqlite-node,
    // @effect/sql-pg, @effect/sql-libsql).
    const modules = Object.keys(pkg.exports).filter((k) =>
      k !== "./package.json" && k !== "./Sqlite" && k !== "./Postgres" && k !== "./LibSql"
    )
    fs.writeFileSync(
      path.join(app, "types.ts"),
      modules.map((k, i) => `export type * as M${i} from "${k === "." ? "effect-eventstore" : `effect-eventstore${k.slice(1)}`}"\n`)
        .join("")
    )

    // Optional peers in plain JavaScript (the NATS client, @effect/platform, OpenTelemetry): installed here so the
    // subpaths that need them (Nats, Cqrs, NatsServer, Runtime, Vault, OpenTelemetry, TelemetryStore) are checked.
    const plainPeers = Object.entries(pkg.peerDependencies ?? {})
      .filter(([name]) => /^@nats-io\/|^@opentelemetry\/|^@effect\/(platform|platform-node|opentelemetry|cli)$/.test(name))
      .map(([name, range]) => `${name}@${range}`)
    const peers = Object.entries(pkg.peerDependencies ?? {})
      .filter(([name]) => name !== "effect" && pkg.peerDependenciesMeta?.[name]?.optional !== true)
      .map(([name, range]) => `${name}@${range}`)
    await npm(
      ["install", "--ignore-scripts", "--prefer-offline", tarball, `effect@${appEffect}`, ...peers, ...plainPeers, "@types/node@^20"],
      app
    )

    expect(effectCopies(app)).toEqual([path.join(app, "node_modules/effect")])
    expect(readJson<PackageJson>(path.join(app, "node_modules/effect/package.json")).version).toBe(appEffect)
    expect(fs.existsSync(path.join(app, "node_modules/better-sqlite3"))).toBe(false)

    const tsc = await run(path.join(root, "node_modules/.bin/tsc"), ["-p", "tsconfig.json"], { cwd: app }).then(
      ({ stdout }) => stdout,
      (error: { stdout?: string; message: string }) => error.stdout || error.message
    )
    // The NATS client's own declarations (@nats-io/nats-core) do not pass exactOptionalPropertyTypes without
    // skipLibCheck; ours must. An error is its first line and the indented lines after it.
    const errors = tsc.split(/\n(?=\S)/).filter((e) => e.trim() !== "" && !e.startsWith("node_modules/@nats-io/"))
    expect(errors).toEqual([])

    const { stdout } = await run(process.execPath, ["out/main.js"], { cwd: app })
    expect(JSON.parse(stdout)).toEqual({ version: 2, amounts: ["Deposited@1:100", "Deposited@2:30"] })
    // Everything the library imports is a peer: an app's copy, never one of its own.
    expect(pkg.dependencies ?? {}).toEqual({})
  }, 300_000)
})
