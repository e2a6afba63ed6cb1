import { describe } from "@effect/vitest"
import * as Nats from "effect-eventstore/Nats"
import * as Layer from "effect/Layer"
import { busSuite } from "./conformance/Bus.js"
import * as Fixture from "./fixtures/nats.js"

describe.skipIf(!Fixture.available)("JetStream", () => {
  busSuite("JetStream", () => {
    const name = Fixture.unique("BUS")
    return Nats.layerBus({ stream: name, prefix: name, duplicateWindow: "1 minute" }).pipe(
      Layer.provide(Nats.layer({ servers: Fixture.url }))
    )
  })
})
