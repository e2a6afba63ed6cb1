// Summarises a V8 .cpuprofile (from `node --cpu-prof`): self time by function, then by file.
//   node bench/cpuprofile.mjs <file.cpuprofile> [how many functions, default 40]
// Native calls (better-sqlite3's `run`, `all`) show under their own names; "(garbage collector)" is GC time.
import fs from "node:fs"

const [file, top = "40"] = process.argv.slice(2)
if (file === undefined) {
  console.error("usage: node bench/cpuprofile.mjs <file.cpuprofile> [top]")
  process.exit(1)
}
const profile = JSON.parse(fs.readFileSync(file, "utf8"))
const nodes = new Map(profile.nodes.map((node) => [node.id, node]))
const self = new Map()
for (let i = 0; i < profile.samples.length; i++) {
  self.set(profile.samples[i], (self.get(profile.samples[i]) ?? 0) + profile.timeDeltas[i])
}
const total = profile.timeDeltas.reduce((a, b) => a + b, 0)
const byFunction = new Map()
const byFile = new Map()
for (const [id, time] of self) {
  const { functionName, lineNumber, url } = nodes.get(id).callFrame
  const where = url.split("/").slice(-2).join("/")
  const fn = `${functionName || "(anonymous)"} ${where}:${lineNumber + 1}`
  byFunction.set(fn, (byFunction.get(fn) ?? 0) + time)
  const f = where || functionName
  byFile.set(f, (byFile.get(f) ?? 0) + time)
}
const show = (map, n) =>
  [...map].sort((a, b) => b[1] - a[1]).slice(0, n).forEach(([name, time]) =>
    console.log(`${(time / total * 100).toFixed(1).padStart(5)} %  ${name}`)
  )
show(byFunction, Number(top))
console.log("--- by file")
show(byFile, 20)
