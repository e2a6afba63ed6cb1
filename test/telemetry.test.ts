import * as NodeSdk from "@effect/opentelemetry/NodeSdk"
import * as OtelTracer from "@effect/opentelemetry/Tracer"
import { describe, expect, it } from "@effect/vitest"
import {
  AggregationTemporality,
  DataPointType,
  InMemoryMetricExporter,
  PeriodicExportingMetricReader
} from "@opentelemetry/sdk-metrics"
import { InMemorySpanExporter, type ReadableSpan, SimpleSpanProcessor } from "@opentelemetry/sdk-trace-base"
import { Aggregate, Bus, Errors, Event, EventStore, Snapshot, Telemetry, Tenancy } from "effect-eventstore"
import * as Cqrs from "effect-eventstore/Cqrs"
import * as Nats from "effect-eventstore/Nats"
import * as DateTime from "effect/DateTime"
import * as Deferred from "effect/Deferred"
import * as Effect from "effect/Effect"
import * as Either from "effect/Either"
import * as Layer from "effect/Layer"
import * as Metric from "effect/Metric"
import * as MetricState from "effect/MetricState"
import * as Schedule from "effect/Schedule"
import * as Schema from "effect/Schema"
import { spawn } from "node:child_process"
import * as path from "node:path"
import * as Fixture from "./fixtures/nats.js"

const root = path.resolve(import.meta.dirname, "..")

const Added = Schema.TaggedStruct("Added", { n: Schema.Int })
const Capped = Schema.TaggedStruct("Capped", {})
class TooBig extends Schema.TaggedError<TooBig>()("TooBig", { n: Schema.Int }) {}
type Command = { readonly _tag: "Add"; readonly n: number } | { readonly _tag: "Fill" }

/** A counter named `name` (each test its own: the metric registry is the process's), snapshotting every 2 events. */
const counter = <const Name extends string>(name: Name) =>
  Aggregate.make({
    name,
    events: Event.registry([Added, Capped]),
    decider: {
      initialState: 0,
      decide: (command: Command, state: number) =>
        command._tag === "Fill"
          ? Either.right([Added.make({ n: 100 - state }), Capped.make({})])
          : state + command.n > 100
          ? Either.left(new TooBig({ n: state + command.n }))
          : Either.right([Added.make({ n: command.n })]),
      evolve: (state: number, event: typeof Added.Type | typeof Capped.Type) => event._tag === "Added" ? state + event.n : state
    },
    snapshots: { schema: Schema.Number, every: 2, write: "inline" }
  })

/** An OpenTelemetry SDK whose spans and metrics stay in memory. */
const sdk = () => {
  const spans = new InMemorySpanExporter()
  const metrics = new InMemoryMetricExporter(AggregationTemporality.CUMULATIVE)
  const reader = new PeriodicExportingMetricReader({ exporter: metrics, exportIntervalMillis: 3_600_000 })
  const layer = NodeSdk.layer(() => ({
    resource: { serviceName: "telemetry-test" },
    spanProcessor: new SimpleSpanProcessor(spans),
    metricReader: reader
  }))
  /** The data points of metric `name`, as exported now. */
  const points = (name: string) =>
    Effect.promise(async () => {
      metrics.reset()
      await reader.forceFlush()
      const out: Array<{ readonly attributes: Record<string, unknown>; readonly value: unknown }> = []
      for (const resource of metrics.getMetrics()) {
        for (const scope of resource.scopeMetrics) {
          for (const metric of scope.metrics) {
            if (metric.descriptor.name !== name) continue
            for (const point of metric.dataPoints) {
              out.push({
                attributes: point.attributes,
                value: metric.dataPointType === DataPointType.HISTOGRAM
                  ? (point.value as { readonly count: number }).count
                  : point.value
              })
            }
          }
        }
      }
      return out
    })
  return { spans, layer, points }
}

const byName = (spans: ReadonlyArray<ReadableSpan>, name: string) => {
  const found = spans.filter((s) => s.name === name)
  expect(found.map((s) => s.name), `span ${name}`).toHaveLength(1)
  return found[0]!
}
const parentOf = (span: ReadableSpan) => span.parentSpanContext?.spanId

const store = Layer.merge(EventStore.layerMemory, Snapshot.layerMemory)

describe("OpenTelemetry", () => {
  it.live("one command: Aggregate.handle under the caller's span, the store's spans under it, with their attributes", () => {
    const Tally = counter("TallySpans")
    const otel = sdk()
    // a tenant's store: the spans name the tenant
    const tenantStore = Layer.effect(
      EventStore.EventStore,
      Effect.flatMap(EventStore.EventStore, (s) => Tenancy.eventStore(s, "acme"))
    )
    return Effect.gen(function*() {
      yield* Tally.handle("a", { _tag: "Add", n: 1 })
      yield* Tally.handle("a", { _tag: "Fill" }, { commandId: "cmd-1" }).pipe(Effect.withSpan("request"))
      const spans = otel.spans.getFinishedSpans().filter((s) => s.spanContext().traceId === byName(otel.spans.getFinishedSpans(), "request").spanContext().traceId)
      const request = byName(spans, "request")
      const handle = byName(spans, "Aggregate.handle")
      const append = byName(spans, "EventStore.append")
      const save = byName(spans, "SnapshotStore.save")
      expect(parentOf(handle)).toBe(request.spanContext().spanId)
      expect(parentOf(append)).toBe(handle.spanContext().spanId)
      expect(parentOf(save)).toBe(handle.spanContext().spanId)
      expect(handle.attributes).toEqual({
        "aggregate.id": "a",
        "aggregate.type": "TallySpans",
        "aggregate.version": 3,
        "aggregate.source": "replay",
        "tenant.id": "acme",
        "command.type": "Fill",
        "command.id": "cmd-1",
        "event.count": 2,
        "event.types": "Added,Capped"
      })
      expect(append.attributes).toMatchObject({ "aggregate.type": "TallySpans", "event.count": 2 })

      // a rejected command: its span says the error's type
      const refused = yield* Effect.flip(Tally.handle("a", { _tag: "Add", n: 1 }).pipe(Effect.withSpan("refused")))
      expect(refused).toBeInstanceOf(TooBig)
      const failed = otel.spans.getFinishedSpans().filter((s) => s.name === "Aggregate.handle").at(-1)!
      expect(failed.attributes).toMatchObject({ "command.type": "Add", "error.type": "TooBig" })
      expect(failed.status.code).toBe(2) // ERROR

      // a load, from the snapshot written at version 2... and then from the state the snapshot store holds
      const loaded = yield* Tally.load("a").pipe(Effect.withSpan("load"))
      expect(loaded).toMatchObject({ version: 3, state: 100 })
      const load = otel.spans.getFinishedSpans().filter((s) => s.name === "Aggregate.load").at(-1)!
      expect(load.attributes).toMatchObject({ "aggregate.id": "a", "aggregate.version": 3, "aggregate.source": "snapshot" })
    }).pipe(
      Effect.provide(Aggregate.layer(Tally, { snapshotWrites: "inline" }).pipe(Layer.provide(tenantStore))),
      Effect.provide(store),
      Effect.provide(otel.layer)
    )
  })

  it.live("metric points carry the aggregate type, command type and outcome (and the other attributes)", () => {
    const Tally = counter("TallyMetrics")
    const otel = sdk()
    return Effect.gen(function*() {
      yield* Tally.handle("m", { _tag: "Add", n: 1 })
      yield* Tally.handle("m", { _tag: "Add", n: 2 })
      yield* Tally.handle("m", { _tag: "Add", n: 3 })
      yield* Effect.flip(Tally.handle("m", { _tag: "Add", n: 1000 }))
      yield* Tally.load("m")

      const mine = (points: ReadonlyArray<{ readonly attributes: Record<string, unknown>; readonly value: unknown }>) =>
        points.filter((p) => p.attributes.aggregate_type === "TallyMetrics")
      const commands = mine(yield* otel.points("eventstore_commands_total"))
      expect(commands).toEqual(expect.arrayContaining([
        { attributes: { aggregate_type: "TallyMetrics", command_type: "Add", outcome: "success" }, value: 3 },
        { attributes: { aggregate_type: "TallyMetrics", command_type: "Add", outcome: "rejected" }, value: 1 }
      ]))
      expect(commands).toHaveLength(2)
      const durations = mine(yield* otel.points("eventstore_command_duration_seconds"))
      expect(durations).toEqual(expect.arrayContaining([
        { attributes: { aggregate_type: "TallyMetrics", command_type: "Add", outcome: "success" }, value: 3 },
        { attributes: { aggregate_type: "TallyMetrics", command_type: "Add", outcome: "rejected" }, value: 1 }
      ]))
      expect(mine(yield* otel.points("eventstore_events_appended_total"))).toEqual([
        { attributes: { aggregate_type: "TallyMetrics" }, value: 3 }
      ])
      // each command loads once: the first two replay (no snapshot yet); the snapshot written at version 2 serves
      // the next two commands and the load
      const loads = mine(yield* otel.points("eventstore_aggregate_loads_total"))
      expect(loads).toEqual(expect.arrayContaining([
        { attributes: { aggregate_type: "TallyMetrics", source: "replay" }, value: 2 },
        { attributes: { aggregate_type: "TallyMetrics", source: "snapshot" }, value: 3 }
      ]))
      expect(loads).toHaveLength(2)
      expect(mine(yield* otel.points("eventstore_snapshot_hits_total"))).toEqual([
        { attributes: { aggregate_type: "TallyMetrics" }, value: 3 }
      ])
      expect(mine(yield* otel.points("eventstore_snapshot_misses_total"))).toEqual([
        { attributes: { aggregate_type: "TallyMetrics" }, value: 2 }
      ])
      const operations = (yield* otel.points("eventstore_store_latency_seconds")).map((p) => p.attributes.operation)
      expect(operations).toEqual(expect.arrayContaining(["append", "fold"]))

      // the same series through Effect's own metric API
      const success = yield* Metric.value(
        Telemetry.commands.pipe(
          Metric.tagged("aggregate_type", "TallyMetrics"),
          Metric.tagged("command_type", "Add"),
          Metric.tagged("outcome", "success")
        )
      )
      expect(success.count).toBe(3)
      const snapshot = yield* Metric.snapshot
      const histogram = snapshot.find((pair) =>
        pair.metricKey.name === "eventstore_command_duration_seconds" &&
        pair.metricKey.tags.some((t) => t.key === "aggregate_type" && t.value === "TallyMetrics") &&
        pair.metricKey.tags.some((t) => t.key === "outcome" && t.value === "rejected")
      )
      expect(MetricState.isHistogramState(histogram!.metricState) && histogram!.metricState.count).toBe(1)
    }).pipe(Effect.provide(Aggregate.layer(Tally)), Effect.provide(store), Effect.provide(otel.layer))
  })

  it.live("a conflict left after the retries is counted as a conflict; a store failure as an error", () => {
    const Tally = counter("TallyOutcomes")
    let failWith: "conflict" | "store" = "conflict"
    // a store whose appends always fail
    const failing = Layer.effect(
      EventStore.EventStore,
      Effect.map(EventStore.EventStore, (s): EventStore.EventStoreService => ({
        ...s,
        append: (streamId, _events, options) =>
          Effect.fail(
            failWith === "conflict"
              ? new Errors.ConcurrencyError({ streamId, expected: options?.expectedVersion ?? "any", actual: 7 })
              : new Errors.StoreError({ operation: "append", cause: "disk on fire" })
          )
      }))
    )
    const count = (outcome: string) =>
      Effect.map(
        Metric.value(
          Telemetry.commands.pipe(
            Metric.tagged("aggregate_type", "TallyOutcomes"),
            Metric.tagged("command_type", "Add"),
            Metric.tagged("outcome", outcome)
          )
        ),
        (state) => state.count
      )
    return Effect.gen(function*() {
      const conflict = yield* Effect.flip(Tally.handle("o", { _tag: "Add", n: 1 }))
      expect(conflict).toBeInstanceOf(Errors.ConcurrencyError)
      expect(yield* count("conflict")).toBe(1)
      failWith = "store"
      expect(yield* Effect.flip(Tally.handle("o", { _tag: "Add", n: 1 }))).toBeInstanceOf(Errors.StoreError)
      expect(yield* count("error")).toBe(1)
      expect(yield* count("success")).toBe(0)
    }).pipe(
      Effect.provide(Aggregate.layer(Tally, { retry: Schedule.recurs(1) }).pipe(Layer.provide(failing))),
      Effect.provide(store)
    )
  })

  it.live("a tenant's store counts its appends and store calls once, on the memory and SQLite stores", () => {
    const appendedOf = (type: string) =>
      Effect.map(Metric.value(Telemetry.eventsAppended.pipe(Metric.tagged("aggregate_type", type))), (s) => s.count)
    const appendsTimed = Effect.map(
      Metric.value(Telemetry.storeLatency.pipe(Metric.tagged("operation", "append"))),
      (s) => s.count
    )
    const run = (type: string, layer: Layer.Layer<EventStore.EventStore, unknown>) =>
      Effect.gen(function*() {
        const root = yield* EventStore.EventStore
        const tenant = yield* Tenancy.eventStore(root, "acme")
        const event = yield* Event.registry([Added]).encode(Added.make({ n: 1 }))
        const timedBefore = yield* appendsTimed
        yield* tenant.append(`${type}-1`, [event, { ...event, eventId: crypto.randomUUID() }], { streamType: type })
        expect(yield* appendedOf(type)).toBe(2)
        expect((yield* appendsTimed) - timedBefore).toBe(1)
      }).pipe(Effect.provide(layer))
    return Effect.gen(function*() {
      yield* run("TenantMemory", EventStore.layerMemory)
      const Sqlite = yield* Effect.promise(() => import("effect-eventstore/Sqlite"))
      yield* run("TenantSqlite", Sqlite.layer({ filename: ":memory:" }))
    })
  })

  it.live("the stream types a metric keeps series for are bounded: past the limit they are counted as other", () =>
    Effect.gen(function*() {
      const store = yield* EventStore.EventStore
      const event = yield* Event.registry([Added]).encode(Added.make({ n: 1 }))
      // ids without a dash: each its own stream type
      for (let i = 0; i < 300; i++) yield* store.append(`bounded${i}x${crypto.randomUUID().slice(0, 8)}`, [{ ...event, eventId: crypto.randomUUID() }])
      const series = (yield* Metric.snapshot).filter((pair) => pair.metricKey.name === "eventstore_events_appended_total")
      expect(series.length).toBeLessThanOrEqual(257)
      const other = series.find((pair) => pair.metricKey.tags.some((t) => t.key === "aggregate_type" && t.value === "other"))
      expect(other).toBeDefined()
    }).pipe(Effect.provide(EventStore.layerMemory)))

  it.live("without a tracer installed the library makes no spans (a decider and a bus handler run outside any)", () => {
    const Probe = Aggregate.make({
      name: "TallyUntraced",
      events: Event.registry([Added]),
      decider: {
        initialState: 0,
        decide: (_: { readonly _tag: "Probe" }) =>
          Effect.map(Effect.option(Effect.currentSpan), (span) => [Added.make({ n: span._tag === "Some" ? 1 : 0 })]),
        evolve: (state: number, event: typeof Added.Type) => state + event.n
      }
    })
    return Effect.gen(function*() {
      expect((yield* Probe.handle("u", { _tag: "Probe" })).state).toBe(0)
      const bus = yield* Bus.EventBus
      const seen = yield* Deferred.make<boolean>()
      yield* bus.consume({ name: "untraced" }, () =>
        Effect.flatMap(Effect.option(Effect.currentSpan), (span) => Deferred.succeed(seen, span._tag === "Some")))
      yield* bus.publish([envelope("Order", "Placed")])
      expect(yield* Deferred.await(seen)).toBe(false)
    }).pipe(Effect.scoped, Effect.provide(Bus.layerMemory), Effect.provide(Aggregate.layer(Probe)), Effect.provide(store))
  })

  it.live("the memory bus carries the trace: a delivery's span is a child of the publish's span", () => {
    const otel = sdk()
    return Effect.gen(function*() {
      const bus = yield* Bus.EventBus
      const handled = yield* Deferred.make<void>()
      yield* bus.consume({ name: "traced" }, () => Deferred.succeed(handled, undefined))
      yield* bus.publish([envelope("Order", "Placed")]).pipe(Effect.withSpan("publisher"))
      yield* Deferred.await(handled)
      yield* Effect.sleep("20 millis")
      const spans = otel.spans.getFinishedSpans()
      const publish = byName(spans, "Bus.publish")
      const handle = byName(spans, "Bus.handle traced")
      expect(parentOf(publish)).toBe(byName(spans, "publisher").spanContext().spanId)
      expect(handle.spanContext().traceId).toBe(publish.spanContext().traceId)
      expect(parentOf(handle)).toBe(publish.spanContext().spanId)
      expect(handle.attributes).toMatchObject({
        "messaging.system": "memory",
        "messaging.consumer.group.name": "traced",
        "event.type": "Placed",
        "aggregate.type": "Order",
        "delivery.attempt": 1
      })
    }).pipe(Effect.scoped, Effect.provide(Bus.layerMemory), Effect.provide(otel.layer))
  })
})

const envelope = (streamType: string, type: string): Bus.Envelope => ({
  eventId: crypto.randomUUID(),
  streamId: `${streamType}-1`,
  streamType,
  version: 1,
  position: 1,
  type,
  schemaVersion: 1,
  payload: { a: 1 },
  metadata: {},
  recordedAt: DateTime.unsafeNow()
})

describe.skipIf(!Fixture.available)("OpenTelemetry across processes", () => {
  it.live("a trace started here continues in another process that consumes the event from JetStream", () => {
    const otel = sdk()
    const name = Fixture.unique("TRACE")
    return Effect.gen(function*() {
      const bus = yield* Bus.EventBus
      // the caller's trace comes with a vendor's trace state: it travels too
      const parent = OtelTracer.makeExternalSpan({
        traceId: "4bf92f3577b34da6a3ce929d0e0e4736",
        spanId: "00f067aa0ba902b7",
        traceState: "vendor=abc"
      })
      yield* bus.publish([envelope("Order", "Placed")]).pipe(Effect.withSpan("publisher"), Effect.withParentSpan(parent))
      const publish = byName(otel.spans.getFinishedSpans(), "Bus.publish")
      expect(publish.spanContext().traceId).toBe("4bf92f3577b34da6a3ce929d0e0e4736")

      const output = yield* Effect.async<string, Error>((resume) => {
        const child = spawn(
          process.execPath,
          ["--import", "tsx", "--conditions=@effect-eventstore/source", path.join(root, "test/fixtures/trace-consumer.ts"), Fixture.url, name, "remote"],
          { cwd: root, stdio: ["ignore", "pipe", "pipe"] }
        )
        let out = ""
        let err = ""
        child.stdout.on("data", (d) => (out += d))
        child.stderr.on("data", (d) => (err += d))
        const timer = setTimeout(() => child.kill("SIGKILL"), 30_000)
        child.on("exit", (code) => {
          clearTimeout(timer)
          resume(code === 0 ? Effect.succeed(out) : Effect.fail(new Error(`consumer exited ${code}: ${err}`)))
        })
        return Effect.sync(() => child.kill("SIGKILL"))
      })
      const remote = JSON.parse(output.trim().split("\n").at(-1)!) as Array<{
        name: string
        kind: number
        traceId: string
        spanId: string
        parentSpanId?: string
        parentIsRemote?: boolean
        traceState?: string
        attributes: Record<string, unknown>
      }>
      const handle = remote.find((s) => s.name === "Bus.handle remote")!
      expect(handle, output).toBeDefined()
      expect(handle.traceId).toBe(publish.spanContext().traceId)
      expect(handle.parentSpanId).toBe(publish.spanContext().spanId)
      expect(handle.parentIsRemote).toBe(true)
      expect(handle.kind).toBe(4) // CONSUMER
      expect(handle.traceState).toBe("vendor=abc")
      expect(handle.attributes).toMatchObject({ "messaging.system": "nats", "messaging.destination.name": name, "event.type": "Placed" })
      // the handler's own spans continue under the delivery's
      const work = remote.find((s) => s.name === "handler.work")!
      expect(work.traceId).toBe(handle.traceId)
      expect(work.parentSpanId).toBe(handle.spanId)
    }).pipe(
      Effect.provide(Nats.layerBus({ stream: name, prefix: name }).pipe(Layer.provide(Nats.layer({ servers: Fixture.url })))),
      Effect.provide(otel.layer)
    )
  }, 60_000)

  it.scopedLive("Cqrs over NATS with the OpenTelemetry tracer: the server's span is a remote child of the client's", () => {
    const otel = sdk()
    const Ping = Cqrs.command("Ping", { payload: Schema.Struct({ n: Schema.Int }), success: Schema.Int })
    const Group = Cqrs.group("traced", [Ping])
    return Effect.gen(function*() {
      const prefix = Fixture.unique("cqrs")
      yield* Cqrs.serve(Cqrs.handlers(Group, { Ping: ({ n }) => Effect.succeed(n + 1) }), { prefix })
      const client = yield* Cqrs.client(Group, { prefix })
      const parent = OtelTracer.makeExternalSpan({
        traceId: "0af7651916cd43dd8448eb211c80319c",
        spanId: "b7ad6b7169203331",
        traceState: "vendor=xyz"
      })
      expect(yield* client.Ping({ n: 1 }).pipe(Effect.withSpan("caller"), Effect.withParentSpan(parent))).toBe(2)
      yield* Effect.sleep("20 millis")
      const spans = otel.spans.getFinishedSpans()
      const request = byName(spans, "Cqrs.request Ping")
      const command = byName(spans, "Cqrs.command Ping")
      expect(request.spanContext().traceId).toBe("0af7651916cd43dd8448eb211c80319c")
      expect(command.spanContext().traceId).toBe(request.spanContext().traceId)
      expect(parentOf(command)).toBe(request.spanContext().spanId)
      expect(command.parentSpanContext?.isRemote).toBe(true)
      expect(command.kind).toBe(1) // SERVER
      expect(command.spanContext().traceState?.serialize()).toBe("vendor=xyz")
    }).pipe(Effect.provide(Nats.layer({ servers: Fixture.url })), Effect.provide(otel.layer))
  })
})
