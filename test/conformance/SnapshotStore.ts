/**
 * The SnapshotStore conformance suite, run by every backend against its layer.
 */
import { expect, layer } from "@effect/vitest"
import { Snapshot } from "effect-eventstore"
import * as Effect from "effect/Effect"
import type * as Layer from "effect/Layer"
import * as Option from "effect/Option"
import * as TestClock from "effect/TestClock"
import * as TestContext from "effect/TestContext"

const uid = () => `S${crypto.randomUUID().replace(/-/g, "").slice(0, 12)}`
const snap = (streamId: string, version: number, state: unknown = { v: version }): Snapshot.NewSnapshot => ({
  streamId,
  streamType: "Snap",
  version,
  schemaVersion: 1,
  state
})

export const snapshotStoreSuite = (name: string, storeLayer: Layer.Layer<Snapshot.SnapshotStore, unknown>) =>
  layer(storeLayer, { excludeTestServices: true, timeout: "60 seconds" })(`SnapshotStore conformance: ${name}`, (it) => {
    it.effect("latest, at-or-before, replace, delete older", () =>
      Effect.gen(function*() {
        const store = yield* Snapshot.SnapshotStore
        const s = uid()
        expect(yield* store.latest(s)).toEqual(Option.none())
        yield* store.save(snap(s, 10))
        yield* store.save(snap(s, 20))
        yield* store.save({ ...snap(s, 30), schemaVersion: 2, analytics: { total: 30, counts: { A: 30 } } })
        const latest = Option.getOrThrow(yield* store.latest(s))
        expect(latest).toMatchObject({ streamId: s, streamType: "Snap", version: 30, schemaVersion: 2, state: { v: 30 } })
        expect(latest.analytics).toEqual({ total: 30, counts: { A: 30 } })
        expect(latest.sizeBytes).toBeGreaterThan(0)
        expect(Option.getOrThrow(yield* store.atOrBefore(s, 25)).version).toBe(20)
        expect(Option.getOrThrow(yield* store.atOrBefore(s, 20)).version).toBe(20)
        expect(yield* store.atOrBefore(s, 9)).toEqual(Option.none())
        yield* store.save(snap(s, 20, { v: "replaced" }))
        expect(Option.getOrThrow(yield* store.atOrBefore(s, 20)).state).toEqual({ v: "replaced" })
        expect(yield* store.deleteOlderThan(s, 20)).toBe(1)
        expect(yield* store.atOrBefore(s, 15)).toEqual(Option.none())
        expect(Option.getOrThrow(yield* store.latest(s)).version).toBe(30)
        expect(yield* store.latest(uid())).toEqual(Option.none())
      }))

    it.effect("stats count snapshots, aggregates, bytes and age", () =>
      Effect.gen(function*() {
        const store = yield* Snapshot.SnapshotStore
        const before = yield* store.stats
        yield* TestClock.setTime(1_000)
        const a = uid()
        yield* store.save(snap(a, 1, { blob: "x".repeat(100) }))
        yield* TestClock.setTime(2_000)
        yield* store.save(snap(a, 2))
        yield* store.save(snap(uid(), 1))
        const after = yield* store.stats
        expect(after.count - before.count).toBe(3)
        expect(after.aggregates - before.aggregates).toBe(2)
        expect(after.totalBytes - before.totalBytes).toBeGreaterThan(100)
        expect(after.averageBytes).toBeCloseTo(after.totalBytes / after.count)
        expect(Option.getOrThrow(after.newest).epochMillis).toBeGreaterThanOrEqual(2_000)
        expect(Option.getOrThrow(after.oldest).epochMillis).toBeLessThanOrEqual(1_000)
      }).pipe(Effect.provide(TestContext.TestContext)))

    it.effect("bad snapshots are InvalidInput and nothing is saved", () =>
      Effect.gen(function*() {
        const store = yield* Snapshot.SnapshotStore
        const s = uid()
        const cyclic: Record<string, unknown> = {}
        cyclic.self = cyclic
        for (const bad of [snap("", 1), snap(s, 0), snap(s, 1.5), { ...snap(s, 1), schemaVersion: 0 }, snap(s, 1, cyclic), snap(s, 1, 1n)]) {
          expect((yield* Effect.flip(store.save(bad)))._tag).toBe("InvalidInput")
        }
        expect(yield* store.latest(s)).toEqual(Option.none())
      }))
  })
