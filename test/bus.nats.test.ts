import { describe, expect, it } from "@effect/vitest"
import { connect } from "@nats-io/transport-node"
import { Bus } from "effect-eventstore"
import * as DateTime from "effect/DateTime"
import * as Effect from "effect/Effect"
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

describe.skipIf(!Fixture.available)("JetStream subjects and headers", () => {
  it.live("a tenant's events carry the tenant in the subject and the es-tenant-id header; names are encoded tokens", () =>
    Effect.gen(function*() {
      const name = Fixture.unique("SUBJ")
      const nc = yield* Effect.acquireRelease(Effect.promise(() => connect({ servers: Fixture.url })), (c) => Effect.promise(() => c.close()))
      const seen: Array<{ subject: string; tenant: string | undefined; msgId: string | undefined; data: string }> = []
      nc.subscribe(`${name}.>`, {
        callback: (_, m) => {
          seen.push({ subject: m.subject, tenant: m.headers?.get("es-tenant-id") || undefined, msgId: m.headers?.get("Nats-Msg-Id"), data: m.string() })
        }
      })
      yield* Effect.promise(() => nc.flush())
      const envelope = (tenantId: string | undefined, streamType: string, type: string): Bus.Envelope => ({
        eventId: crypto.randomUUID(),
        streamId: "s-1",
        streamType,
        version: 1,
        position: 1,
        type,
        schemaVersion: 1,
        payload: { a: 1 },
        metadata: tenantId === undefined ? {} : { tenantId },
        recordedAt: DateTime.unsafeMake(1_700_000_000_000)
      })
      const a = envelope("acme", "Account", "Deposited")
      const b = envelope(undefined, "Bank.Account *", "Opened>v2")
      yield* Effect.flatMap(Bus.EventBus, (bus) => bus.publish([a, b])).pipe(
        Effect.provide(Nats.layerBus({ stream: name, prefix: name }).pipe(Layer.provide(Nats.layer({ servers: Fixture.url }))))
      )
      yield* Effect.sleep("200 millis")
      const byId = new Map(seen.map((m) => [m.msgId, m]))
      expect(byId.get(a.eventId)?.subject).toBe(`${name}.acme.Account.Deposited`)
      expect(byId.get(a.eventId)?.tenant).toBe("acme")
      expect(byId.get(b.eventId)?.subject).toBe(`${name}._.Bank~2EAccount~20~2A.Opened~3Ev2`)
      expect(byId.get(b.eventId)?.tenant).toBeUndefined()
      // the documented JSON, readable without the library
      expect(JSON.parse(byId.get(a.eventId)!.data)).toEqual({
        eventId: a.eventId,
        streamId: "s-1",
        streamType: "Account",
        version: 1,
        position: 1,
        type: "Deposited",
        schemaVersion: 1,
        recordedAt: "2023-11-14T22:13:20.000Z",
        metadata: { tenantId: "acme" },
        payload: { a: 1 }
      })
    }).pipe(Effect.scoped))
})
