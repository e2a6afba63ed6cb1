import { EventStore, Projection } from "effect-eventstore"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import { projectionSuite, type ReadModel } from "./conformance/Projection.js"

projectionSuite("memory", () => {
  const seen = new Map<string, Array<number>>()
  const migrations = new Map<string, Array<number>>()
  const push = (map: Map<string, Array<number>>, key: string, value: number) => {
    const list = map.get(key) ?? []
    list.push(value)
    map.set(key, list)
  }
  const model: ReadModel<never> = {
    init: () => Effect.void,
    add: (projection, event) => Effect.sync(() => push(seen, projection, event.position)),
    seen: (projection) => Effect.sync(() => [...(seen.get(projection) ?? [])]),
    reset: (projection) => Effect.sync(() => void seen.delete(projection)),
    migrated: (projection, id) => Effect.sync(() => push(migrations, projection, id)),
    migrations: (projection) => Effect.sync(() => [...(migrations.get(projection) ?? [])])
  }
  return { layer: Layer.merge(EventStore.layerMemory, Projection.layerMemory), model }
})
