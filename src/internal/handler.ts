/**
 * The command handler behind `Aggregate.layer`, in named steps: where a load starts (`makeStarts`, decorated by the
 * state cache), the fold of the events after it (`makeFold`), snapshot writes (`makeSnapshotWriter`), and the
 * handler itself (one attempt = load, decide, append; conflicts retried with `Effect.retry`).
 */
import * as Effect from "effect/Effect"
import * as Either from "effect/Either"
import * as Option from "effect/Option"
import type * as Scope from "effect/Scope"
import type { Aggregate, HandleError, Handled, HandleOptions, HandlerService, LayerOptions, Loaded } from "../Aggregate.js"
import { defaultRetry } from "../Aggregate.js"
import * as Analytics from "../Analytics.js"
import { ConcurrencyError, InvalidInput, type StoreError } from "../Errors.js"
import type * as Event from "../Event.js"
import { EventStore, type EventStoreService, type ReadError } from "../EventStore.js"
import * as Snapshot from "../Snapshot.js"
import * as StateCache from "../StateCache.js"
import * as Telemetry from "../Telemetry.js"
import * as Background from "./background.js"

const isEvents = <E>(decision: unknown): decision is ReadonlyArray<E> => Array.isArray(decision)

const PAGE = 512

type Start<State> = StateCache.Start<State>
type Cached<State> = StateCache.Cached<State>

/** Folds the events after a start onto it, page by page (no Stream, no per-event effects). */
const makeFold = <State, E extends { readonly _tag: string }>(
  store: EventStoreService,
  registry: Event.Registry<E>,
  evolve: (state: State, event: E) => State,
  withAnalytics: boolean
) =>
/**
 * A start past version 0 (a snapshot, a cached state) is checked on the way: the first page starts at its own
 * version, which must be there; if it is not, the stream is behind the start (a snapshot of another database, a
 * truncated stream) and the result is `undefined`, so the caller replays.
 */
(sid: string, from: Start<State>): Effect.Effect<Start<State> | undefined, ReadError> => {
  const tracker = withAnalytics ? new Analytics.Tracker(from.analytics) : undefined
  let state = from.state
  let version = from.version
  const next = (first: boolean): Effect.Effect<Start<State> | undefined, ReadError> => {
    const verify = first && version > 0
    return Effect.flatMap(store.readPage(sid, { after: verify ? version - 1 : version, limit: PAGE }), (page) => {
      let i = 0
      if (verify) {
        if (page[0]?.version !== version) return Effect.succeed(undefined)
        i = 1
      }
      for (; i < page.length; i++) {
        const raw = page[i]!
        const decoded = registry.decodePayload(raw)
        if (Either.isLeft(decoded)) return Effect.fail(decoded.left)
        state = evolve(state, decoded.right)
        version = raw.version
        tracker?.record(raw.type, raw.recordedAt)
      }
      return page.length < PAGE
        ? Effect.succeed({ state, version, analytics: tracker?.value, source: from.source })
        : next(false)
    })
  }
  return next(true)
}

/** Where loads start without a cache: the latest usable snapshot (with a policy), else a replay. */
const makeStarts = <State>(
  name: string,
  initial: Start<State>,
  withAnalytics: boolean,
  snapshots: { readonly policy: Snapshot.Policy<State>; readonly store: Snapshot.SnapshotStoreService } | undefined
): StateCache.Starts<State> & { readonly ignored: (sid: string, version: number, reason: string) => Effect.Effect<void> } => {
  const ignored = (sid: string, version: number, reason: string) =>
    Effect.logWarning("snapshot ignored, replaying the stream").pipe(
      Effect.annotateLogs({ "aggregate.id": sid, "aggregate.type": name, "snapshot.version": version, reason }),
      Effect.zipRight(Effect.sync(() => Telemetry.snapshotsIgnored.unsafeUpdate(1, [])))
    )
  const noop = () => {}
  if (snapshots === undefined) return { start: () => Effect.succeed(initial), seen: noop, forget: noop, ignored }
  const { policy, store } = snapshots
  const start = (sid: string): Effect.Effect<Start<State>> =>
    store.latest(sid).pipe(
      Effect.flatMap(Option.match({
        onNone: () => Effect.succeed(initial),
        onSome: (snapshot) => {
          const decoded = Snapshot.decode(policy, snapshot)
          if (Either.isLeft(decoded)) return Effect.as(ignored(sid, snapshot.version, decoded.left), initial)
          if (withAnalytics && decoded.right.analytics === undefined) {
            return Effect.as(ignored(sid, snapshot.version, "the snapshot has no analytics"), initial)
          }
          return Effect.succeed<Start<State>>({
            state: decoded.right.state,
            version: snapshot.version,
            analytics: withAnalytics ? decoded.right.analytics : undefined,
            source: "snapshot"
          })
        }
      })),
      Effect.catchAll((error) => Effect.as(ignored(sid, 0, error.message), initial))
    )
  return { start, seen: noop, forget: noop, ignored }
}

/**
 * Snapshot writes of a handler: `writeSnapshot` now (on demand), and `afterAppend`, which writes one when an append
 * crossed a multiple of the policy's `every` — inline, or in the handler's background fibers — and never fails.
 */
const makeSnapshotWriter = <State>(
  name: string,
  policy: Snapshot.Policy<State> | undefined,
  snapshotStore: Snapshot.SnapshotStoreService | undefined,
  mode: "inline" | "background",
  background: Background.Background
) => {
  const writeSnapshot = (sid: string, value: Cached<State>): Effect.Effect<void, InvalidInput | StoreError> =>
    Effect.suspend(() => {
      if (policy === undefined || snapshotStore === undefined) {
        return Effect.fail(new InvalidInput({ field: "snapshots", reason: `aggregate ${name} has no snapshot policy` }))
      }
      const encoded = Snapshot.encode(policy, value.state, value.analytics)
      if (Either.isLeft(encoded)) return Effect.fail(encoded.left)
      return snapshotStore.save({
        streamId: sid,
        streamType: name,
        version: value.version,
        schemaVersion: encoded.right.schemaVersion,
        state: encoded.right.state,
        ...(encoded.right.analytics !== undefined ? { analytics: encoded.right.analytics } : {})
      })
    }).pipe(Effect.tap(() => Effect.sync(() => Telemetry.snapshotsWritten.unsafeUpdate(1, []))))

  const afterAppend = (sid: string, before: number, after: Cached<State>): Effect.Effect<void> => {
    if (policy === undefined || policy.every === "on-demand") return Effect.void
    if (Math.floor(after.version / policy.every) === Math.floor(before / policy.every)) return Effect.void
    const write = writeSnapshot(sid, after).pipe(
      Effect.catchAllCause((cause) =>
        Effect.logWarning("snapshot write failed; the command succeeded").pipe(
          Effect.annotateLogs({ "aggregate.id": sid, "snapshot.version": after.version }),
          Effect.annotateLogs("cause", cause),
          Effect.zipRight(Effect.sync(() => Telemetry.snapshotFailures.unsafeUpdate(1, [])))
        )
      )
    )
    return mode === "inline" ? write : Effect.asVoid(background.run(write))
  }
  return { writeSnapshot, afterAppend }
}

const commandType = (command: unknown): string =>
  typeof command === "object" && command !== null && typeof (command as { _tag?: unknown })._tag === "string"
    ? (command as { _tag: string })._tag
    : typeof command

const isConflict = (error: unknown): error is ConcurrencyError => error instanceof ConcurrencyError

/** Builds an aggregate's command handler (see `Aggregate.handler`). */
export const make = <State, Command, E extends { readonly _tag: string }, Err, R, Name extends string, Needs>(
  aggregate: Aggregate<State, Command, E, Err, R, Name, Needs>,
  layerOptions: LayerOptions = {}
): Effect.Effect<HandlerService<State, Command, E, Err, R>, never, EventStore | Needs | Scope.Scope> =>
  Effect.gen(function*() {
    const { decider, events: registry, name, options } = aggregate
    const store = yield* EventStore
    const policy = options.snapshots
    // With a policy the SnapshotStore is required (the layer's type says so): never silently without snapshots.
    const snapshotStore = policy === undefined ? undefined : yield* Snapshot.SnapshotStore
    const snapshotWrite = layerOptions.snapshotWrites ?? policy?.write ?? "background"
    const background = yield* Background.make(layerOptions.shutdownGrace ?? "5 seconds")
    const withAnalytics = options.analytics === true
    const retry = layerOptions.retry ?? options.retry ?? defaultRetry
    const streamId = aggregate.streamId

    const initial: Start<State> = {
      state: decider.initialState,
      version: 0,
      analytics: withAnalytics ? Analytics.empty : undefined,
      source: "replay"
    }
    const base = makeStarts(
      name,
      initial,
      withAnalytics,
      policy === undefined || snapshotStore === undefined ? undefined : { policy, store: snapshotStore }
    )
    const starts = options.cache === undefined ? base : StateCache.decorate(base, options.cache)
    const fold = makeFold(store, registry, decider.evolve, withAnalytics)

    /** `replay`: ignore the cache and snapshots (they claimed a version the stream does not have). */
    const loadFrom = (sid: string, replay: boolean): Effect.Effect<Start<State>, ReadError> =>
      Effect.flatMap(replay ? Effect.succeed(initial) : starts.start(sid), (from) =>
        Effect.flatMap(fold(sid, from), (loaded) => {
          if (loaded === undefined) {
            // the start was ahead of the stream: forget it and replay from the beginning
            starts.forget(sid)
            return Effect.zipRight(
              from.source === "snapshot"
                ? base.ignored(sid, from.version, "the stream has no event at the snapshot's version")
                : Effect.void,
              loadFrom(sid, true)
            )
          }
          starts.seen(sid, loaded)
          return Effect.succeed(loaded)
        }))

    const loaded = (value: Start<State>): Loaded<State> =>
      value.analytics === undefined
        ? { state: value.state, version: value.version, source: value.source }
        : { state: value.state, version: value.version, source: value.source, analytics: value.analytics }

    const { afterAppend, writeSnapshot } = makeSnapshotWriter(name, policy, snapshotStore, snapshotWrite, background)

    const load: HandlerService<State, Command, E, Err, R>["load"] = (id) =>
      Effect.map(loadFrom(streamId(id), false), loaded).pipe(
        Effect.withSpan("Aggregate.load", {
          captureStackTrace: false,
          attributes: { "aggregate.id": id, "aggregate.type": name }
        })
      )

    /** One attempt of a command: load, decide, encode, append, then the state after it. */
    const attempt = (
      sid: string,
      command: Command,
      handleOptions: HandleOptions | undefined,
      run: { attempts: number; replay: boolean }
    ): Effect.Effect<Handled<State, E>, Err | HandleError, R> =>
      Effect.gen(function*() {
        if (run.attempts++ > 0) Telemetry.commandRetries.unsafeUpdate(1, [])
        const retries = run.attempts - 1
        const current = yield* loadFrom(sid, run.replay)
        const decision = decider.decide(command, current.state)
        const decided = isEvents(decision) ? decision : yield* decision
        if (decided.length === 0) return { ...loaded(current), events: [], retries }
        const encoded: Array<Event.NewEvent> = new Array(decided.length)
        for (let i = 0; i < decided.length; i++) {
          const result = registry.encode(decided[i]!)
          if (Either.isLeft(result)) return yield* result.left
          encoded[i] = result.right
        }
        const appended = yield* store.append(sid, encoded, {
          expectedVersion: current.version,
          streamType: name,
          ...(handleOptions?.metadata !== undefined ? { metadata: handleOptions.metadata } : {})
        })
        let state = current.state
        for (const event of decided) state = decider.evolve(state, event)
        let analytics = current.analytics
        if (withAnalytics) {
          const tracker = new Analytics.Tracker(current.analytics)
          for (const event of appended.events) tracker.record(event.type, event.recordedAt)
          analytics = tracker.value
        }
        const after: Cached<State> = { state, version: appended.version, analytics }
        starts.seen(sid, after)
        yield* afterAppend(sid, current.version, after)
        return {
          ...loaded({ ...after, source: current.source }),
          events: appended.events.map((recorded, i) => ({ ...recorded, payload: decided[i]! })),
          position: appended.position,
          retries
        }
      }).pipe(
        // A conflict means the cached state (if any) is behind; a stream behind the version we started from means
        // the snapshot (or cache) was ahead of it: replay next time.
        Effect.tapError((error) =>
          Effect.sync(() => {
            if (!isConflict(error)) return
            starts.forget(sid)
            if (typeof error.expected === "number" && error.actual < error.expected) run.replay = true
          })
        )
      )

    const handle: HandlerService<State, Command, E, Err, R>["handle"] = (id, command, handleOptions) =>
      Effect.suspend(() => {
        const run = { attempts: 0, replay: false }
        const once = attempt(streamId(id), command, handleOptions, run)
        // Only conflicts reach the schedule (a user's schedule may inspect its input): every other failure leaves
        // an attempt as a value and is raised again after the retry.
        const conflictsOnly = Effect.catchAll(
          Effect.map(once, Either.right),
          (error) => isConflict(error) ? Effect.fail(error) : Effect.succeed(Either.left(error))
        )
        // The first attempt runs without the retry's machinery (most commands never conflict). On a conflict, the
        // retry starts by failing with that same conflict, so the schedule sees every conflict exactly once.
        const retried = (first: ConcurrencyError) => {
          let replayed = false
          const attempts = Effect.suspend(() => {
            if (replayed) return conflictsOnly
            replayed = true
            return Effect.fail(first)
          })
          return Effect.flatMap(
            Effect.retry(attempts, { schedule: handleOptions?.retry ?? retry, while: isConflict }),
            (result): Effect.Effect<Handled<State, E>, Err | HandleError> => result
          )
        }
        return Effect.catchAll(once, (error) => isConflict(error) ? retried(error) : Effect.fail(error))
      }).pipe(
        Effect.withSpan("Aggregate.handle", {
          captureStackTrace: false,
          attributes: { "aggregate.id": id, "aggregate.type": name, "command.type": commandType(command) }
        })
      )

    const snapshot: HandlerService<State, Command, E, Err, R>["snapshot"] = (id) =>
      Effect.gen(function*() {
        const sid = streamId(id)
        const current = yield* loadFrom(sid, false)
        if (current.version === 0) {
          if (policy === undefined) {
            return yield* new InvalidInput({ field: "snapshots", reason: `aggregate ${name} has no snapshot policy` })
          }
          return 0
        }
        yield* writeSnapshot(sid, current)
        return current.version
      }).pipe(
        Effect.withSpan("Aggregate.snapshot", {
          captureStackTrace: false,
          attributes: { "aggregate.id": id, "aggregate.type": name }
        })
      )

    return { load, handle, snapshot }
  }) as Effect.Effect<HandlerService<State, Command, E, Err, R>, never, EventStore | Needs | Scope.Scope>

