import { fileURLToPath } from "node:url"
import { defineConfig } from "vitest/config"

const src = fileURLToPath(new URL("./src/", import.meta.url))

export default defineConfig({
  resolve: {
    // Tests import the package by name, as users do; map it to src/ (no build step). tsc and tsx do the same
    // through the "@effect-eventstore/source" export condition.
    alias: [
      { find: /^effect-eventstore$/, replacement: `${src}index.ts` },
      { find: /^effect-eventstore\/(.*)$/, replacement: `${src}$1.ts` }
    ]
  },
  test: {
    include: ["test/**/*.test.ts"],
    testTimeout: 60_000,
    hookTimeout: 60_000
  }
})
