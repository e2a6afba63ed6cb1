/**
 * `npm run example:nats`: the bank over NATS, as two processes on the local NATS server (NATS_URL, default
 * nats://127.0.0.1:4222, with JetStream): starts the server (`server.ts`), runs a client (`client.ts`) against it,
 * then stops the server with SIGTERM (it drains and exits). Run them yourself in two terminals to watch longer;
 * start several servers and they share the commands.
 */
import { spawn } from "node:child_process"
import * as path from "node:path"

const here = import.meta.dirname
const start = (file: string, label: string) => {
  const child = spawn(process.execPath, ["--import", "tsx", "--conditions=@effect-eventstore/source", path.join(here, file)], {
    stdio: ["ignore", "pipe", "pipe"]
  })
  const prefix = (data: Buffer, out: NodeJS.WriteStream) => {
    for (const line of String(data).split("\n")) if (line !== "") out.write(`[${label}] ${line}\n`)
  }
  child.stdout.on("data", (d: Buffer) => prefix(d, process.stdout))
  child.stderr.on("data", (d: Buffer) => prefix(d, process.stderr))
  const exited = new Promise<number | null>((resolve) => child.on("exit", (code) => resolve(code)))
  return { child, exited }
}

const server = start("server.ts", "server")
const ready = await Promise.race([
  new Promise<boolean>((resolve) => server.child.stdout.on("data", (d: Buffer) => String(d).includes("ready") && resolve(true))),
  server.exited.then(() => false),
  new Promise<boolean>((resolve) => setTimeout(() => resolve(false), 30_000))
])
if (!ready) {
  server.child.kill("SIGKILL")
  console.error("the server did not start (is NATS with JetStream running at NATS_URL?)")
  process.exit(1)
}
const client = start("client.ts", "client")
const clientCode = await client.exited
server.child.kill("SIGTERM")
const serverCode = await server.exited
console.log(`client exited ${clientCode}, server stopped (exit ${serverCode})`)
process.exit(clientCode === 0 && serverCode === 0 ? 0 : 1)
