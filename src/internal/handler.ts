/**
 * The command handler behind `Aggregate.layer`, in named steps: where a load starts (`makeStarts`, decorated by the
 * state cache), the fold of the events after it (`makeFold`), snapshot writes (`makeSnapshotWriter`), and the
 * handler itself (one attempt = load, decide, append; conflicts retried with `Effect.retry`).
 */
import * as Clock from "effect/Clock"
import * as Context from "effect/Context"
import * as Effect from "effect/Effect"
import * as Either from "effect/Either"
import * as Exit from "effect/Exit"
import type * as Fiber from "effect/Fiber"
import * as Option from "effect/Option"
import type * as Scope from "effect/Scope"
import type { Aggregate, HandleError, Handled, HandleOptions, HandlerService, LayerOptions, Loaded } from "../Aggregate.js"
import { defaultRetry } from "../Aggregate.js"
import * as Analytics from "../Analytics.js"
import { ConcurrencyError, InvalidInput, type StoreError } from "../Errors.js"
import * as Event from "../Event.js"
import type { RecordedEvent } from "../Event.js"
import {
  type AppendOptions,
  type AppendResult,
  EventStore,
  type EventStoreService,
  type ReadError
} from "../EventStore.js"
import * as Snapshot from "../Snapshot.js"
import * as StateCache from "../StateCache.js"
import * as Telemetry from "../Telemetry.js"
import * as Background from "./background.js"
import * as Instruments from "./instruments.js"
import * as EventLoop from "./eventLoop.js"
import * as Tracing from "./tracing.js"
import { DriverFailure, FOLD_PAGE, type FoldRows, foldRowsOf, forgetHooksOf, syncCommandsOf, tenantOf } from "./backend.js"
import { alongside, scopeSnapshots } from "./tenants.js"
import * as GroupCommit from "./groupCommit.js"
import { FoldEvent, type FoldRow, readFoldRow, toInteger } from "./codec.js"
import { uuidV5 } from "./uuid.js"

const isEvents = <E>(decision: unknown): decision is ReadonlyArray<E> => Array.isArray(decision)

const PAGE = FOLD_PAGE

type Start<State> = StateCache.Start<State>
type Cached<State> = StateCache.Cached<State>

type Fold<State> = (sid: string, from: Start<State>) => Effect.Effect<Start<State> | undefined, ReadError>

/**
 * Folds the events after a start onto it, page by page (no Stream, no per-event effects). A start past version 0
 * (a snapshot, a cached state) is checked on the way: the first page starts at its own version, which must be there;
 * if it is not, the stream is behind the start (a snapshot of another database, a truncated stream) and the result
 * is `undefined`, so the caller replays.
 *
 * A store built on the storage seam is read through its lean fold read (only the columns a fold needs); any other
 * `EventStoreService` (or a registry not built by `Event.registry`) through `readPage`.
 */
const makeFold = <State, E extends { readonly _tag: string }>(
  store: EventStoreService,
  registry: Event.Registry<E>,
  evolve: (state: State, event: E) => State,
  withAnalytics: boolean
): Fold<State> => {
  const rows = foldRowsOf(store)
  const careful = makePageFold(store, registry, evolve, withAnalytics)
  return rows !== undefined && Event.readsPayloadOnly(registry)
    ? makeLeanFold(rows, registry, evolve, withAnalytics, careful)
    : careful
}

/**
 * Decodes the events of a lean fold (a registry built by `Event.registry`, whose `decodePayload` reads only what a
 * `FoldEvent` holds): the compiled decoder of the row's type, looked up again only when the type changes, else
 * `decodePayload`. `undefined` when the payload does not decode: the caller reads the row the careful way.
 */
const foldDecoder = <E extends { readonly _tag: string }>(registry: Event.Registry<E>) => {
  let type = ""
  let version = 0
  let fast: ((payload: unknown) => unknown) | undefined
  return (event: FoldEvent): E | undefined => {
    if (event.type !== type || event.schemaVersion !== version) {
      type = event.type
      version = event.schemaVersion
      fast = Event.fastDecoderOf(registry, type, version)
    }
    const value = fast?.(event.payload)
    if (value !== undefined) return value as E
    const decoded = registry.decodePayload(event as unknown as RecordedEvent)
    return Either.isRight(decoded) ? decoded.right : undefined
  }
}

/**
 * Folds fold rows onto a start, one at a time: `add` checks the row (its version the one after the last), decodes
 * and applies it, and says `false` (nothing applied) when the row needs the careful way. Shared by the lean fold and
 * the command in one transaction.
 */
const rowFolder = <State, E extends { readonly _tag: string }>(
  sid: string,
  from: Start<State>,
  registry: Event.Registry<E>,
  evolve: (state: State, event: E) => State,
  withAnalytics: boolean
) => {
  const tracker = withAnalytics ? new Analytics.Tracker(from.analytics) : undefined
  const event = new FoldEvent(sid)
  const decode = foldDecoder(registry)
  const folder = {
    state: from.state,
    version: from.version,
    add: (row: FoldRow): boolean => {
      if (!readFoldRow(row, event, folder.version + 1, withAnalytics)) return false
      const decoded = decode(event)
      if (decoded === undefined) return false
      folder.state = evolve(folder.state, decoded)
      folder.version++
      tracker?.recordAt(event.type, event.recordedAt)
      return true
    },
    /** Where the fold got to. */
    reached: (): Start<State> => ({
      state: folder.state,
      version: folder.version,
      analytics: tracker?.value,
      source: from.source
    })
  }
  return folder
}

/**
 * The lean fold: pages of `FoldRows`, each row checked (its version the one after the last) and decoded on the spot.
 * Wherever anything is off — a row the lean check refuses, a payload the registry does not decode as it stands (an
 * older schema version to upcast, say) — the fold goes on from where it is through `careful` (`readPage`), which
 * decodes what only looked wrong and names what is.
 */
const makeLeanFold = <State, E extends { readonly _tag: string }>(
  rows: FoldRows,
  registry: Event.Registry<E>,
  evolve: (state: State, event: E) => State,
  withAnalytics: boolean,
  careful: Fold<State>
): Fold<State> =>
(sid, from) => {
  const folder = rowFolder(sid, from, registry, evolve, withAnalytics)
  // from where the lean fold got to (a start past version 0 is checked again there)
  const carefully = () => careful(sid, folder.reached())
  const next = (first: boolean): Effect.Effect<Start<State> | undefined, ReadError> => {
    const verify = first && folder.version > 0
    const after = verify ? folder.version - 1 : folder.version
    return Effect.flatMap(rows(sid, after, PAGE, withAnalytics), (page) => {
      const n = page.length
      let i = 0
      if (verify) {
        // a start past version 0 must have its own version in the stream: else the stream is behind it (replay)
        if (n === 0 || toInteger(page[0]![0]) !== folder.version) return Effect.succeed(undefined)
        i = 1
      }
      for (; i < n; i++) if (!folder.add(page[i]!)) return carefully()
      return n < PAGE
        ? Effect.succeed(folder.reached())
        : EventLoop.due()
        ? Effect.zipRight(EventLoop.yieldToLoop, next(false))
        : next(false)
    })
  }
  return next(true)
}

const makePageFold = <State, E extends { readonly _tag: string }>(
  store: EventStoreService,
  registry: Event.Registry<E>,
  evolve: (state: State, event: E) => State,
  withAnalytics: boolean
): Fold<State> =>
(sid, from) => {
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
        : EventLoop.due()
        ? Effect.zipRight(EventLoop.yieldToLoop, next(false))
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
  const hits = Instruments.series(Instruments.keys.snapshotHits, [["aggregate_type", name]])
  const misses = Instruments.series(Instruments.keys.snapshotMisses, [["aggregate_type", name]])
  const miss = Effect.sync(() => Instruments.add(misses, 1))
  const start = (sid: string): Effect.Effect<Start<State>> =>
    store.latest(sid).pipe(
      Effect.flatMap(Option.match({
        onNone: () => Effect.as(miss, initial),
        onSome: (snapshot) => {
          const decoded = Snapshot.decode(policy, snapshot)
          if (Either.isLeft(decoded)) return Effect.as(Effect.zipRight(miss, ignored(sid, snapshot.version, decoded.left)), initial)
          if (withAnalytics && decoded.right.analytics === undefined) {
            return Effect.as(Effect.zipRight(miss, ignored(sid, snapshot.version, "the snapshot has no analytics")), initial)
          }
          Instruments.add(hits, 1)
          return Effect.succeed<Start<State>>({
            state: decoded.right.state,
            version: snapshot.version,
            analytics: withAnalytics ? decoded.right.analytics : undefined,
            source: "snapshot"
          })
        }
      })),
      Effect.catchAll((error) => Effect.as(Effect.zipRight(miss, ignored(sid, 0, error.message)), initial))
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
    if (mode === "inline") return write
    const annotations = { "aggregate.id": sid, "snapshot.version": after.version }
    // A background write still running when the layer's grace ends is interrupted: say so (the snapshot is written
    // at a later command; loads replay the events meanwhile).
    const abandonable = Effect.onInterrupt(
      write,
      () =>
        Effect.logWarning("snapshot write abandoned: the aggregate layer closed before it finished").pipe(
          Effect.annotateLogs(annotations)
        )
    )
    return background.run(abandonable).pipe(
      Effect.flatMap((ran) =>
        ran ? Effect.void : Effect.logWarning("snapshot write skipped: the aggregate layer is closing").pipe(
          Effect.annotateLogs(annotations)
        )
      )
    )
  }
  return { writeSnapshot, afterAppend }
}

const commandType = (command: unknown): string =>
  typeof command === "object" && command !== null && typeof (command as { _tag?: unknown })._tag === "string"
    ? (command as { _tag: string })._tag
    : typeof command

/** The distinct event types of a command's events, comma-separated, in order of first appearance. */
const eventTypes = (events: ReadonlyArray<{ readonly type: string }>): string => {
  if (events.length === 1) return events[0]!.type
  const seen: Array<string> = []
  for (const e of events) if (!seen.includes(e.type)) seen.push(e.type)
  return seen.join(",")
}

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
    // A tenant's store keeps the tenant's snapshots: a snapshot store of the whole database is seen through the
    // tenant's keys (another tenant's is refused).
    const tenant = tenantOf(store)
    const snapshotStore = policy === undefined
      ? undefined
      : yield* Effect.flatMap(Snapshot.SnapshotStore, (snapshots) => alongside(snapshots, tenant, scopeSnapshots, "SnapshotStore"))
    const snapshotWrite = layerOptions.snapshotWrites ?? policy?.write ?? "background"
    const background = yield* Background.make(layerOptions.shutdownGrace ?? "5 seconds")
    const withAnalytics = options.analytics === true
    const retry = layerOptions.retry ?? options.retry ?? defaultRetry
    const streamId = aggregate.streamId
    // this aggregate's series (see `instruments.ts`): made once, looked up by their other labels' values
    const aggregateType: readonly [string, string] = ["aggregate_type", name]
    const commandCounts = new Instruments.SeriesCache(Instruments.keys.commands, ["command_type", "outcome"], [aggregateType])
    const commandDurations = new Instruments.SeriesCache(Instruments.keys.commandDuration, ["command_type", "outcome"], [
      aggregateType
    ])
    const loads = new Instruments.SeriesCache(Instruments.keys.aggregateLoads, ["source"], [aggregateType])
    const loadedFrom = (source: StateCache.Source) => Instruments.add(loads.get(source), 1)
    const appendedEvents = Instruments.series(Instruments.keys.eventsAppended, [aggregateType])

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
    // A store that may forget personal data (`Privacy`) tells the cache which streams' states to drop.
    const forgetHooks = options.cache === undefined ? undefined : forgetHooksOf(store)
    if (forgetHooks !== undefined) {
      yield* Effect.acquireRelease(
        Effect.sync(() => forgetHooks.add((streamIds) => streamIds.forEach((sid) => starts.forget(sid)))),
        (remove) => Effect.sync(remove)
      )
    }
    const fold = makeFold(store, registry, decider.evolve, withAnalytics)
    // Whole commands in one store transaction, for loads that always start from the initial state and a registry
    // whose decoding a fold row can feed.
    const syncCommands = Event.readsPayloadOnly(registry) ? syncCommandsOf(store) : undefined
    const replayStarts = policy === undefined && options.cache === undefined

    /** `replay`: ignore the cache and snapshots (they claimed a version the stream does not have). */
    const loadFrom = (sid: string, replay: boolean): Effect.Effect<Start<State>, ReadError> =>
      replay ? continueFrom(sid, initial) : Effect.flatMap(starts.start(sid), (from) => continueFrom(sid, from))

    /** The events after `from`, folded onto it. */
    const continueFrom = (sid: string, from: Start<State>): Effect.Effect<Start<State>, ReadError> =>
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
        loadedFrom(loaded.source)
        return Effect.succeed(loaded)
      })

    const loaded = (value: Start<State>): Loaded<State> =>
      value.analytics === undefined
        ? { state: value.state, version: value.version, source: value.source }
        : { state: value.state, version: value.version, source: value.source, analytics: value.analytics }

    const { afterAppend, writeSnapshot } = makeSnapshotWriter(name, policy, snapshotStore, snapshotWrite, background)

    /**
     * A command's events for the store: encoded, with their claims (the aggregate's `claims`), and with ids derived
     * from the command id and the version each is written at, when there is one.
     */
    const claimsOf = options.claims
    const encodeAll = (
      sid: string,
      decided: ReadonlyArray<E>,
      version: number,
      commandId: string | undefined
    ): Either.Either<Array<Event.NewEvent>, InvalidInput> => {
      const encoded: Array<Event.NewEvent> = new Array(decided.length)
      for (let i = 0; i < decided.length; i++) {
        const event = decided[i]!
        const result = registry.encode(
          event,
          commandId === undefined ? undefined : {
            eventId: uuidV5(
              `${tenant === undefined ? "" : `${tenant}\u0000`}${commandId}\u0000${sid}\u0000${version + i + 1}`
            )
          }
        )
        if (Either.isLeft(result)) return Either.left(result.left)
        const claims = claimsOf?.(event)
        encoded[i] = claims === undefined ? result.right : {
          ...result.right,
          ...(claims.claims === undefined ? {} : { claims: claims.claims }),
          ...(claims.releases === undefined ? {} : { releases: claims.releases })
        }
      }
      return Either.right(encoded)
    }

    /** The state of a stream at `version`, folded from the start (what a replayed command reports). */
    const stateAt = (sid: string, version: number): Effect.Effect<State, ReadError> => {
      const page = (state: State, after: number): Effect.Effect<State, ReadError> =>
        after >= version ? Effect.succeed(state) : Effect.flatMap(
          store.readPage(sid, { after, limit: Math.min(PAGE, version - after) }),
          (events) => {
            let next = state
            for (const raw of events) {
              const decoded = registry.decodePayload(raw)
              if (Either.isLeft(decoded)) return Effect.fail(decoded.left)
              next = decider.evolve(next, decoded.right)
            }
            return events.length === 0 ? Effect.succeed(next) : page(next, after + events.length)
          }
        )
      return page(decider.initialState, 0)
    }

    /** The result of a command whose id was handled already: what that handling appended, and the state after it. */
    const replayed = (sid: string, result: AppendResult): Effect.Effect<Handled<State, E>, HandleError> => {
      if (result.streamId !== sid) {
        return Effect.fail(
          new InvalidInput({ field: "commandId", reason: `was used for stream ${JSON.stringify(result.streamId)}` })
        )
      }
      const events: Array<Event.RecordedEvent<E>> = []
      for (const event of result.events) {
        const decoded = registry.decode(event)
        if (Either.isLeft(decoded)) return Effect.fail(decoded.left)
        events.push(decoded.right)
      }
      return Effect.map(stateAt(sid, result.version), (state): Handled<State, E> => ({
        state,
        version: result.version,
        source: "replay",
        events,
        position: result.position,
        retries: 0,
        replayed: true
      }))
    }

    const load: HandlerService<State, Command, E, Err, R>["load"] = (id) =>
      Tracing.withSpanExit(Effect.map(loadFrom(streamId(id), false), loaded), "Aggregate.load", () => ({
        captureStackTrace: false,
        attributes: spanStart(id)
      }), (span, exit) => {
        if (Exit.isSuccess(exit)) {
          span.attribute("aggregate.version", exit.value.version)
          span.attribute("aggregate.source", exit.value.source)
        } else span.attribute("error.type", Instruments.errorTypeOf(exit))
      })

    /**
     * One attempt of a command: load, decide, encode, append, then the state after it.
     *
     * A state from the cache is decided on without reading the stream: the append's expected version is the cached
     * one, so a stream that moved on (another process wrote to it) fails the append with a conflict, and the retry
     * loads the stream. A decision that appends nothing (no events, or the decider's own error) is not checked by
     * an append: before it stands, the events after the cached version are read, and if there are any the command
     * is decided again on the current state.
     */
    const attempt = (
      sid: string,
      command: Command,
      handleOptions: HandleOptions | undefined,
      run: { attempts: number; replay: boolean }
    ): Effect.Effect<Handled<State, E>, Err | HandleError, R> =>
      Effect.suspend(() => attemptNow(sid, command, handleOptions, run))

    const attemptNow = (
      sid: string,
      command: Command,
      handleOptions: HandleOptions | undefined,
      run: { attempts: number; replay: boolean }
    ): Effect.Effect<Handled<State, E>, Err | HandleError, R> => {
      if (run.attempts++ > 0) Telemetry.commandRetries.unsafeUpdate(1, [])
      const retries = run.attempts - 1
      const commandId = handleOptions?.commandId
      const appendOptionsAt = (expectedVersion: number): AppendOptions => {
        const base: AppendOptions = handleOptions?.metadata !== undefined
          ? { expectedVersion, streamType: name, metadata: handleOptions.metadata }
          : { expectedVersion, streamType: name }
        if (commandId === undefined) return base
        return handleOptions?.commandTtl === undefined
          ? { ...base, commandId }
          : { ...base, commandId, commandTtl: handleOptions.commandTtl }
      }

      const commit = (
        current: Start<State>,
        decided: ReadonlyArray<E>
      ): Effect.Effect<Handled<State, E>, Err | HandleError> => {
        if (decided.length === 0) return Effect.succeed({ ...loaded(current), events: [], retries })
        const encoded = encodeAll(sid, decided, current.version, commandId)
        if (Either.isLeft(encoded)) return Effect.fail(encoded.left)
        return Effect.flatMap(
          store.append(sid, encoded.right, appendOptionsAt(current.version)),
          (appended) => appended.replayed === true ? replayed(sid, appended) : completed(current, decided, appended)
        )
      }

      /** The command's result once its events are appended: the state after them, and a snapshot if one is due. */
      const completed = (
        current: Start<State>,
        decided: ReadonlyArray<E>,
        appended: AppendResult
      ): Effect.Effect<Handled<State, E>> => {
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
        const events = new Array<Event.RecordedEvent<E>>(decided.length)
        for (let i = 0; i < decided.length; i++) {
          const e = appended.events[i]!
          events[i] = {
            eventId: e.eventId,
            streamId: e.streamId,
            streamType: e.streamType,
            version: e.version,
            position: e.position,
            type: e.type,
            schemaVersion: e.schemaVersion,
            payload: decided[i]!,
            metadata: e.metadata,
            recordedAt: e.recordedAt
          }
        }
        const handled: Handled<State, E> = analytics === undefined
          ? { state, version: appended.version, source: current.source, events, position: appended.position, retries }
          : {
            state,
            version: appended.version,
            source: current.source,
            analytics,
            events,
            position: appended.position,
            retries
          }
        const snapshot = afterAppend(sid, current.version, after)
        return snapshot === Effect.void ? Effect.succeed(handled) : Effect.as(snapshot, handled)
      }

      /**
       * The whole command in one synchronous transaction of the store (see `SyncCommands`): read and fold the
       * stream, decide, append, commit. Taken for a replay start (no cache, no snapshots) of a stream shorter than a
       * page when the store offers it, nobody traces, and the writer is idle. A decider that returns an Effect is run after the transaction (rolled
       * back, nothing written), on the state it read. `undefined` (take the usual road) when the store declined, or
       * when the fold found anything to read carefully (see `makeLeanFold`).
       */
      const inOneTransaction = (
        fiber: Fiber.RuntimeFiber<unknown, unknown>
      ): Effect.Effect<Handled<State, E>, Err | HandleError, R> | undefined => {
        type Outcome =
          | { readonly _tag: "Usual" }
          | { readonly _tag: "Failed"; readonly error: Err | HandleError }
          | { readonly _tag: "Nothing"; readonly current: Start<State> }
          | { readonly _tag: "Later"; readonly current: Start<State>; readonly decision: Effect.Effect<ReadonlyArray<E>, Err, R> }
          | {
            readonly _tag: "Appended"
            readonly current: Start<State>
            readonly decided: ReadonlyArray<E>
            readonly exit: Exit.Exit<AppendResult, HandleError>
          }
        const done = (value: Outcome, commit = false) => ({ commit, value })
        let ran: { readonly value: Outcome } | undefined
        try {
          ran = syncCommands!.run(fiber.id().id, (tx) => {
            // One page at most: a longer stream takes the usual road, whose fold neither holds the write lock nor
            // keeps the event loop waiting (it yields between pages). So does anything off (see `makeLeanFold`):
            // the usual road's fold goes on carefully.
            const page = tx.foldRows(sid, 0, PAGE, withAnalytics)
            if (page.length === PAGE) return done({ _tag: "Usual" })
            const folder = rowFolder(sid, initial, registry, decider.evolve, withAnalytics)
            for (const row of page) if (!folder.add(row)) return done({ _tag: "Usual" })
            const current = folder.reached()
            loadedFrom("replay")
            const version = current.version
            const decision = decider.decide(command, current.state)
            let decided: ReadonlyArray<E>
            if (isEvents(decision)) decided = decision
            else if (Either.isEither(decision)) {
              if (Either.isLeft(decision)) return done({ _tag: "Failed", error: decision.left })
              decided = decision.right
            } else return done({ _tag: "Later", current, decision })
            if (decided.length === 0) return done({ _tag: "Nothing", current })
            const encoded = encodeAll(sid, decided, version, undefined)
            if (Either.isLeft(encoded)) return done({ _tag: "Failed", error: encoded.left })
            const now = Context.get(fiber.currentDefaultServices, Clock.Clock).unsafeCurrentTimeMillis()
            const exit = tx.append(sid, encoded.right, appendOptionsAt(version), now)
            return done({ _tag: "Appended", current, decided, exit }, Exit.isSuccess(exit))
          })
        } catch (error) {
          return error instanceof DriverFailure ? Effect.fail(error.cause) : Effect.die(error)
        }
        if (ran === undefined) return undefined
        const outcome = ran.value
        switch (outcome._tag) {
          case "Usual":
            return undefined
          case "Failed":
            return Effect.fail(outcome.error)
          case "Nothing":
            return Effect.succeed({ ...loaded(outcome.current), events: [], retries })
          case "Later":
            return Effect.flatMap(outcome.decision, (events) => commit(outcome.current, events))
          case "Appended": {
            const { current, decided, exit } = outcome
            if (Exit.isFailure(exit)) return exit as Exit.Exit<never, HandleError>
            // written in the command's own transaction, past the store's counting
            Instruments.add(appendedEvents, decided.length)
            return Effect.zipRight(GroupCommit.afterCommit(), completed(current, decided, exit.value))
          }
        }
      }

      const decideOn = (current: Start<State>): Effect.Effect<Handled<State, E>, Err | HandleError, R> => {
        const decision = decider.decide(command, current.state)
        return isEvents(decision) ? commit(current, decision) : Effect.flatMap(decision, (events) => commit(current, events))
      }

      /** A decision on a cached state that appended nothing: it stands if the stream is still where the cache was. */
      const confirm = <A, E2>(
        cached: Start<State>,
        outcome: Effect.Effect<A, E2>
      ): Effect.Effect<A | Handled<State, E>, E2 | Err | HandleError, R> =>
        Effect.flatMap(fold(sid, cached), (current): Effect.Effect<A | Handled<State, E>, E2 | Err | HandleError, R> => {
          if (current === undefined) {
            starts.forget(sid)
            return Effect.flatMap(loadFrom(sid, true), decideOn)
          }
          if (current.version === cached.version) return outcome
          starts.seen(sid, current)
          return decideOn(current)
        })

      /**
       * The append of a decision on a cached state conflicted: the cache was behind the stream (another writer). That
       * is not a race of this command with another, so it does not wait for the retry schedule: the command is
       * decided again at once on a fresh load (a conflict there is a real one, and retried as usual).
       */
      const stale = (conflict: ConcurrencyError): Effect.Effect<Handled<State, E>, Err | HandleError, R> => {
        starts.forget(sid)
        const behind = typeof conflict.expected === "number" && conflict.actual < conflict.expected
        return Effect.flatMap(loadFrom(sid, behind), decideOn)
      }

      const usual = (): Effect.Effect<Handled<State, E>, Err | HandleError, R> =>
        run.replay
          ? Effect.flatMap(loadFrom(sid, true), decideOn)
          : Effect.flatMap(starts.start(sid), (from) => {
          if (from.source !== "cache") return Effect.flatMap(continueFrom(sid, from), decideOn)
          loadedFrom("cache")
          const decision = decider.decide(command, from.state)
          const decided = isEvents(decision) ? Effect.succeed(decision) : decision
          return Effect.matchEffect(decided, {
            onFailure: (error) => confirm(from, Effect.fail(error)),
            onSuccess: (events) =>
              events.length > 0 ? Effect.catchIf(commit(from, events), isConflict, stale) : confirm(from, commit(from, events))
          })
        })
      // a command id takes the usual road: its record is looked for first, and a replay is answered from it
      const once: Effect.Effect<Handled<State, E>, Err | HandleError, R> =
        syncCommands === undefined || !replayStarts || commandId !== undefined
        ? usual()
        : Effect.withFiberRuntime<Handled<State, E>, Err | HandleError, R>((fiber) =>
          Tracing.isNative(fiber.currentTracer) ? inOneTransaction(fiber) ?? usual() : usual()
        )
      // A conflict means the cached state (if any) is behind; a stream behind the version we started from means
      // the snapshot (or cache) was ahead of it: replay next time.
      return Effect.tapError(once, (error) =>
        Effect.sync(() => {
          if (!isConflict(error)) return
          starts.forget(sid)
          if (typeof error.expected === "number" && error.actual < error.expected) run.replay = true
        }))
    }

    const handle: HandlerService<State, Command, E, Err, R>["handle"] = (id, command, handleOptions) => {
      const type = commandType(command)
      const measured = Instruments.timed(handleNow(id, command, handleOptions), (seconds, exit) => {
        const outcome = Instruments.outcomeOf(exit)
        Instruments.add(commandDurations.get(type, outcome), seconds)
        Instruments.add(commandCounts.get(type, outcome), 1)
      })
      return Tracing.withSpanExit(measured, "Aggregate.handle", () => {
        const attributes = spanStart(id)
        attributes["command.type"] = type
        if (handleOptions?.commandId !== undefined) attributes["command.id"] = handleOptions.commandId
        return { captureStackTrace: false, attributes }
      }, (span, exit) => {
        if (Exit.isFailure(exit)) return span.attribute("error.type", Instruments.errorTypeOf(exit))
        const handled = exit.value
        span.attribute("aggregate.version", handled.version)
        span.attribute("aggregate.source", handled.source)
        span.attribute("event.count", handled.events.length)
        if (handled.events.length > 0) span.attribute("event.types", eventTypes(handled.events))
        if (handled.retries > 0) span.attribute("command.retries", handled.retries)
        if (handled.replayed === true) span.attribute("command.replayed", true)
      })
    }

    /** The attributes every span of this handler starts with. */
    const spanStart = (id: string): Record<string, unknown> =>
      tenant === undefined
        ? { "aggregate.id": id, "aggregate.type": name }
        : { "aggregate.id": id, "aggregate.type": name, "tenant.id": tenant }

    const handleNow = (
      id: string,
      command: Command,
      handleOptions: HandleOptions | undefined
    ): Effect.Effect<Handled<State, E>, Err | HandleError, R> =>
      Effect.suspend(() => {
        const run = { attempts: 0, replay: false }
        const sid = streamId(id)
        const commandId = handleOptions?.commandId
        const first = attempt(sid, command, handleOptions, run)
        // a handled command id is answered from its record, without deciding again
        const once: typeof first = commandId === undefined ? first : Effect.flatMap(
          store.command(commandId),
          Option.match({ onNone: () => first, onSome: (result) => replayed(sid, result) })
        )
        // The first attempt runs without the retry's machinery (most commands never conflict). On a conflict, the
        // retry starts by failing with that same conflict, so the schedule sees every conflict exactly once.
        const retried = (first: ConcurrencyError) => {
          // Only conflicts reach the schedule (a user's schedule may inspect its input): every other failure leaves
          // an attempt as a value and is raised again after the retry.
          const conflictsOnly = Effect.catchAll(
            Effect.map(once, Either.right),
            (error) => isConflict(error) ? Effect.fail(error) : Effect.succeed(Either.left(error))
          )
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
      })

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
      }).pipe((effect) =>
        Tracing.withSpanExit(effect, "Aggregate.snapshot", () => ({
          captureStackTrace: false,
          attributes: spanStart(id)
        }), (span, exit) => {
          if (Exit.isSuccess(exit)) span.attribute("aggregate.version", exit.value)
          else span.attribute("error.type", Instruments.errorTypeOf(exit))
        })
      )

    return { load, handle, snapshot }
  }) as Effect.Effect<HandlerService<State, Command, E, Err, R>, never, EventStore | Needs | Scope.Scope>

