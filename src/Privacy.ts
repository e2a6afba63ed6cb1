/**
 * Encryption at rest and crypto-shredding: forget a person without rewriting the log.
 *
 * Personal data is declared on the event schemas: `Privacy.subject` marks the field holding a data subject's id,
 * `Privacy.personal` the fields holding their data. `Privacy.layer` decorates the `EventStore`: on append, each
 * subject's personal fields of an event are encrypted together as one value (AES-256-GCM, a random IV, bound to the
 * event's id and type) with the subject's data key; unmarked fields stay plain and queryable. Reads decrypt. Data keys
 * live in a `KeyStore`, wrapped by a key-encryption key (KEK) the layer is given (a `Redacted`, from `Config` or
 * `Credentials`).
 *
 * `forget(subject)` destroys the subject's data key, so every copy of their encrypted data — in the log, on the bus,
 * in dead letters, in backups — becomes unreadable at once, then removes what the library kept decrypted (snapshots,
 * cached states) and appends a `SubjectForgotten` event that projections handle to purge their rows. Afterwards the
 * subject's fields read as their declared replacement: loads, commands, projections and rebuilds go on.
 *
 * @example
 * ```ts
 * const CustomerRegistered = Schema.TaggedStruct("CustomerRegistered", {
 *   customerId: Schema.String.pipe(Privacy.subject),
 *   name: Schema.String.pipe(Privacy.personal({ replacement: "(forgotten)" })),
 *   email: Schema.optional(Schema.String.pipe(Privacy.personal())),
 *   card: Schema.String.pipe(Privacy.personal({ replacement: "", keep: (card: string) => `…${card.slice(-4)}` })),
 *   plan: Schema.String
 * })
 * const Customers = Event.registry([CustomerRegistered])
 *
 * const StoreLive = Privacy.layer({ registries: [Customers], kek: Config.redacted("PRIVACY_KEK") }).pipe(
 *   Layer.provideMerge(KeyStore.layerSql()),
 *   Layer.provideMerge(Sqlite.layer({ filename: "app.db" }))
 * )
 * ```
 *
 * @since 0.1.0
 */
import { createHash, type KeyObject } from "node:crypto"
import * as SqlClient from "@effect/sql/SqlClient"
import { type FileHandle, open } from "node:fs/promises"
import * as Context from "effect/Context"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Either from "effect/Either"
import * as Layer from "effect/Layer"
import * as Option from "effect/Option"
import * as Redacted from "effect/Redacted"
import * as Schedule from "effect/Schedule"
import * as Schema from "effect/Schema"
import * as Stream from "effect/Stream"
import { EventBus } from "./Bus.js"
import * as Credentials from "./Credentials.js"
import { EventDecodeError, InvalidInput, StoreError } from "./Errors.js"
import * as Event from "./Event.js"
import { type AppendResult, EventStore, type EventStoreService, type ReadError } from "./EventStore.js"
import { carryMarks, databaseOf, type ForgetHooks, tenantStoreOf, withForgetHooks } from "./internal/backend.js"
import { tables } from "./internal/migrations.js"
import { checkId, prepareAppend, tenantKey, TENANT_PATTERN, userStreamId } from "./internal/codec.js"
import * as P from "./internal/privacy.js"
import * as Codec from "./internal/privacyCodec.js"
import * as Keys from "./internal/privacyKeys.js"
import { type AuditEntry, KeyStore } from "./KeyStore.js"
import { CheckpointStore } from "./Projection.js"
import { SnapshotStore } from "./Snapshot.js"

// --- declarations ----------------------------------------------------------------------------------------------------

/**
 * Options of {@link personal}.
 *
 * @since 0.1.0
 */
export interface PersonalOptions<A> {
  /**
   * The field holding the id of the subject this data belongs to. May be left out when exactly one field of the event
   * is marked with {@link subject}.
   */
  readonly subject?: string
  /**
   * What the field reads as once its subject is forgotten (a value of the field's type). Optional fields are left out
   * and nullable ones read as `null` (an `Option` field as `Option.none()`) when none is given; any other field needs
   * one (`Privacy.layer` fails with `InvalidInput` without).
   */
  readonly replacement?: A
  /**
   * A part of the value kept in plain text at append time (the last four digits of a card, say), read instead of
   * `replacement` once the subject is forgotten. It is stored unencrypted: keep only what may outlive the person.
   */
  readonly keep?: (value: A) => A
}

/**
 * Marks a field of an event schema as personal data of a subject: it is stored encrypted with the subject's key.
 * Top-level fields of the event (a whole nested struct may be one personal field).
 *
 * @since 0.1.0
 */
export const personal = <A = any>(options: PersonalOptions<A> = {}) => <S extends Schema.Schema<any, any, never>>(self: S): S =>
  self.annotations({
    [P.PersonalId]: {
      subject: options.subject,
      replacement: "replacement" in options ? { value: options.replacement } : undefined,
      keep: options.keep
    } satisfies P.PersonalAnnotation
  }) as S

/**
 * Marks the field holding a data subject's id: a non-empty string of at most 256 characters without control
 * characters (a number is taken as its decimal text). The id itself stays in plain text: it is what `forget` is
 * called with.
 *
 * @since 0.1.0
 */
export const subject = <S extends Schema.Schema<any, any, never>>(self: S): S =>
  self.annotations({ [P.SubjectId]: true }) as S

// --- errors, events, results ---------------------------------------------------------------------------------------

/**
 * The key-encryption key is missing (`missing`: its source failed), is not 32 bytes (`malformed`), or is not the one
 * the key store's keys were wrapped with (`mismatch`). Raised when the layer starts, before anything is written.
 *
 * @since 0.1.0
 */
export class KeyEncryptionKeyError extends Schema.TaggedError<KeyEncryptionKeyError>()("KeyEncryptionKeyError", {
  reason: Schema.Literal("missing", "malformed", "mismatch"),
  detail: Schema.String
}) {
  override get message() {
    return `key-encryption key ${this.reason}: ${this.detail}`
  }
}

/**
 * The tombstone `forget` appends (to the stream `PrivacyForgotten-<subject>`): a typed event for projections, whose
 * handlers purge the subject's rows. Add {@link events} to a projection's registry to receive it.
 *
 * @since 0.1.0
 */
export const SubjectForgotten = Schema.TaggedStruct("SubjectForgotten", {
  subject: Schema.String,
  /** Epoch milliseconds. */
  forgottenAt: Schema.Number,
  /** How many streams held the subject's encrypted data. */
  streams: Schema.Number
})

/** @since 0.1.0 */
export type SubjectForgotten = typeof SubjectForgotten.Type

/** The registry of the privacy events. @since 0.1.0 */
export const events = Event.registry([SubjectForgotten])

/**
 * The type a forgotten tenant's event is read as in global reads (`readAll`, `subscribe`, and so projections and
 * `decrypt`): same position, stream and id, an empty payload. Projections skip it (no handler has its type); a batch
 * projection receives it (the forwarder publishes the event as stored).
 *
 * @since 0.1.0
 */
export const TENANT_FORGOTTEN: typeof P.TENANT_FORGOTTEN = P.TENANT_FORGOTTEN

/** The stream type of the tombstones. @since 0.1.0 */
export const STREAM_TYPE = "PrivacyForgotten"

/**
 * What `forget` did.
 *
 * @since 0.1.0
 */
export interface ForgetReport {
  readonly subject: string
  /** `false` when the subject had no live key (never seen, or forgotten before): nothing was destroyed now. */
  readonly destroyed: boolean
  /** The streams that held the subject's encrypted data. */
  readonly streams: ReadonlyArray<string>
  /** Snapshots deleted (of those streams). */
  readonly snapshotsDeleted: number
  /**
   * Parked projection events of those streams whose failure text was replaced (it may quote the subject's data), in
   * the `CheckpointStore` in context or the one the layer was given, where it can (`redactParked`).
   */
  readonly parkedRedacted: number
  /** The position of the `SubjectForgotten` tombstone: wait for projections to pass it before verifying. */
  readonly position: number
  /** Whether deleted bytes were made unrecoverable in the database files (SQLite: the WAL was checkpointed and truncated). */
  readonly purged: boolean
}

/**
 * Where `verifyForgotten` found something of the subject left.
 *
 * @since 0.1.0
 */
export interface Finding {
  /**
   * `key`, `tombstone`, `events`, `snapshots`, `claims`, `table <name>`, `parked <projection>`,
   * `dead letters <consumer>`, `file <path>`.
   */
  readonly where: string
  readonly detail: string
}

/** @since 0.1.0 */
export interface Verification {
  readonly subject: string
  /** No finding. */
  readonly clean: boolean
  readonly findings: ReadonlyArray<Finding>
}

/**
 * What `verifyForgotten` scans beyond its own checks (the key is destroyed, a tombstone exists, no snapshot of the
 * subject's streams was taken before the forget).
 *
 * @since 0.1.0
 */
export interface VerifyOptions {
  /**
   * Plain-text values of the subject (their name, their email — what the person asked to be forgotten gave): searched
   * for (as they are, and as JSON escapes them) in every event of the log (payload and metadata), in the snapshots of
   * the subject's streams, in the unique values (claims) and the claims stored with events (an SQL store's tables), in
   * `tables`, in the parked events of `projections`, in the dead
   * letters of `deadLetters` and in `files`. The library cannot know them itself once the key is gone.
   */
  readonly values?: ReadonlyArray<string>
  /** SQL tables (your projections' read models) searched row by row, through the `SqlClient` in context. */
  readonly tables?: ReadonlyArray<string>
  /** Projections whose parked events' reasons are searched. */
  readonly projections?: ReadonlyArray<string>
  /** Files searched byte for byte (an SQLite database and its `-wal`): text as UTF-8. A missing file is skipped. */
  readonly files?: ReadonlyArray<string>
  /**
   * Bus consumers whose dead letters are searched, through the `EventBus` in context (the forwarder publishes events
   * as stored — personal data encrypted — so only a value in an unmarked field, or in a failure's text, is found).
   */
  readonly deadLetters?: ReadonlyArray<string>
}

/**
 * The privacy operations of the store `Privacy.layer` decorates.
 *
 * @since 0.1.0
 */
export interface PrivacyService {
  /**
   * Forgets a data subject: destroys their data key (every version), then deletes the snapshots of the streams that
   * held their data and drops those streams from this process's state caches, replaces the failure text of those
   * streams' parked projection events (where the `CheckpointStore` can: `redactParked`), appends a `SubjectForgotten`
   * tombstone (to the whole database's log, and to each tenant's whose streams held the data), writes an audit entry
   * and purges the database files of deleted bytes (SQLite). A second pass over the streams (read again), snapshots
   * and caches runs `settle` later, or when the layer closes first (a snapshot written by a command that loaded the
   * stream just before). Idempotent: forgetting again destroys nothing and appends no second tombstone.
   */
  readonly forget: (subject: string) => Effect.Effect<ForgetReport, StoreError | InvalidInput>
  /** Checks that nothing of the subject is left where the library can look (see {@link VerifyOptions}). */
  readonly verifyForgotten: (
    subject: string,
    options?: VerifyOptions
  ) => Effect.Effect<Verification, StoreError | InvalidInput | ReadError>
  /**
   * A new version of the subject's key for what is appended from now on; older versions still decrypt older events
   * (nothing is rewritten). Returns the new version. Other processes encrypt with it within a second.
   */
  readonly rotate: (subject: string) => Effect.Effect<number, StoreError | InvalidInput>
  /** `rotate` for a tenant's key (`tenants: true`). */
  readonly rotateTenant: (tenant: string) => Effect.Effect<number, StoreError | InvalidInput>
  /**
   * Forgets a tenant (with `tenants: true`): destroys the tenant's key, deletes the snapshots of its streams and drops
   * them from this process's caches. Their events' payloads can no longer be read: global reads (`readAll`,
   * `subscribe`, so projections) and `decrypt` deliver each as a {@link TENANT_FORGOTTEN} event with an empty payload
   * (projections skip it and keep their place), and reading one of the tenant's streams fails with an
   * `EventDecodeError`.
   */
  readonly forgetTenant: (tenant: string) => Effect.Effect<ForgetReport, StoreError | InvalidInput>
  /**
   * Decrypts an event as stored (one received from the bus, say); an event without encrypted parts is returned as it
   * is, a forgotten tenant's as a {@link TENANT_FORGOTTEN} event.
   */
  readonly decrypt: (event: Event.RecordedEvent) => Effect.Effect<Event.RecordedEvent, EventDecodeError | StoreError>
  /** Makes deleted bytes unrecoverable in the database files where the key store's backend can (see `KeyStore.purge`). */
  readonly purge: Effect.Effect<{ readonly complete: boolean }, StoreError>
  /**
   * Wraps every data key that an earlier key-encryption key (`previousKeks`) wrapped with the current one, then
   * records the current one as the key store's: a KEK rotation. Returns how many key versions it wrapped again. Once
   * it has run, the layer starts without `previousKeks`, and the old KEK can be destroyed (backups taken before hold
   * keys only it opens). Keys it cannot open stay as they are and fail it with a `StoreError` naming them.
   */
  readonly rewrapKeys: Effect.Effect<number, StoreError>
  /** Audit entries of a subject's key (creation, rotation, forgetting), oldest first. */
  readonly audit: (subject: string) => Effect.Effect<ReadonlyArray<AuditEntry>, StoreError>
}

/** @since 0.1.0 */
export class Privacy extends Context.Tag("effect-eventstore/Privacy")<Privacy, PrivacyService>() {}

/**
 * Options of {@link layer}.
 *
 * @since 0.1.0
 */
export interface Options<E = never, R = never> {
  /** The registries whose schemas declare personal fields. */
  readonly registries: ReadonlyArray<Event.Registry<any>>
  /**
   * The key-encryption key: 32 random bytes as base64 or hex (`openssl rand -base64 32`), as a `Redacted` or an
   * Effect giving one (`Config.redacted("PRIVACY_KEK")`, {@link kekFromCredentials}). Its failure is a
   * `KeyEncryptionKeyError` (`missing`).
   */
  readonly kek: Redacted.Redacted<string> | Effect.Effect<Redacted.Redacted<string>, E, R>
  /** Earlier key-encryption keys, for keys not yet wrapped again after a KEK rotation (see `rewrapKeys`). */
  readonly previousKeks?: ReadonlyArray<Redacted.Redacted<string>>
  /**
   * Whole-payload encryption per tenant: every event with a `tenantId` (in its metadata, or appended through a
   * tenant's store) is stored with its whole payload encrypted by the tenant's key (after its personal fields were
   * encrypted by their subjects' keys). Events without a tenant are not affected. Default `false`.
   */
  readonly tenants?: boolean
  /**
   * How long this process decrypts with the keys it read without reading them again (default 1 minute), and how
   * often it reads the keys other processes destroyed (then drops them, and those streams' cached states): another
   * process's `forget` takes effect here within about that long. Encryption reads a key's state again after a second
   * at most: a key another process destroyed encrypts here for at most a second more (what it encrypts then reads as
   * its replacements). `forget` in this process takes effect here at once.
   */
  readonly keyCacheTtl?: Duration.DurationInput
  /** When `forget`'s second pass over snapshots and caches runs (default 2 seconds). */
  readonly settle?: Duration.DurationInput
}

/**
 * The key-encryption key from `Credentials` (a `Token` credential holding the key's text).
 *
 * @since 0.1.0
 */
export const kekFromCredentials = (
  name: string
): Effect.Effect<Redacted.Redacted<string>, Credentials.CredentialsError, Credentials.Credentials> =>
  Credentials.getToken(name, "a key-encryption key")

// --- helpers ---------------------------------------------------------------------------------------------------------

const storeError = (operation: string, cause: unknown) => new StoreError({ operation, cause })

/** A short digest of an id, for ids derived from it that must stay within the 256-character limit. */
const digest = (text: string) => createHash("sha256").update(text, "utf8").digest("base64url")

/** The stream of a subject's tombstones: `PrivacyForgotten-<subject>`, or a digest of a subject id too long for it. */
export const tombstoneStream = (subject: string): string => {
  const stream = `${STREAM_TYPE}-${subject}`
  return stream.length <= 256 ? stream : `${STREAM_TYPE}-#${digest(subject)}`
}

/** What a parked event's failure text reads once its stream's subject is forgotten. */
const REDACTED = "(redacted: the event's data subject was forgotten)"

/**
 * The decorated `EventStore` and the `Privacy` service. Needs the `EventStore` to decorate and a `KeyStore`; uses the
 * `SnapshotStore` and `CheckpointStore` in context, when there are ones, to delete snapshots and search parked events.
 * Fails with `KeyEncryptionKeyError` (before anything is written) when the key-encryption key is missing, malformed
 * or not the key store's, and `InvalidInput` when a schema's declaration cannot work.
 *
 * The decorated store reads through `readPage` (not a backend's lean fold) and runs no inline projections.
 *
 * @since 0.1.0
 */
export const layer = <E = never, R = never>(
  options: Options<E, R>
): Layer.Layer<EventStore | Privacy, KeyEncryptionKeyError | InvalidInput | StoreError, EventStore | KeyStore | R> =>
  Layer.scopedContext(Effect.gen(function*() {
    const inner = yield* EventStore
    const keyStore = yield* KeyStore
    const snapshots = yield* Effect.serviceOption(SnapshotStore)
    const checkpoints = yield* Effect.serviceOption(CheckpointStore)
    const ttl = Duration.toMillis(Duration.decode(options.keyCacheTtl ?? "1 minute"))
    const settle = Duration.decode(options.settle ?? "2 seconds")

    // plans by every name an event may be stored under
    const plans = new Map<string, P.EventPlan>()
    for (const registry of options.registries) {
      const ast = registry.schema.ast
      const members = ast._tag === "Union" ? ast.types : [ast]
      for (const member of members) {
        const schema = Schema.make(member)
        const type = P.eventTypeOf(member)
        if (type === undefined) continue
        const plan = P.planOf(type, schema)
        if (Either.isLeft(plan)) return yield* plan.left
        if (plan.right === undefined) continue
        for (const name of registry.storedNames(type)) plans.set(name, plan.right)
      }
    }

    // the key-encryption keys: the current one and earlier ones by fingerprint
    const kekText = Redacted.isRedacted(options.kek)
      ? options.kek
      : yield* Effect.mapError(
        options.kek as Effect.Effect<Redacted.Redacted<string>, E, R>,
        (e) => new KeyEncryptionKeyError({ reason: "missing", detail: describe(e) })
      )
    const parse = (text: Redacted.Redacted<string>) =>
      Either.mapLeft(P.parseKek(Redacted.value(text)), (detail) => new KeyEncryptionKeyError({ reason: "malformed", detail }))
    const kek = yield* parse(kekText)
    const kekId = P.kekIdOf(kek)
    const keks = new Map<string, KeyObject>([[kekId, P.keyObject(kek)]])
    for (const previous of options.previousKeks ?? []) {
      const bytes = yield* parse(previous)
      keks.set(P.kekIdOf(bytes), P.keyObject(bytes))
    }
    const claimed = yield* keyStore.claimMeta("kek", kekId)
    if (!keks.has(claimed)) {
      return yield* new KeyEncryptionKeyError({
        reason: "mismatch",
        detail: "the key store's data keys were wrapped with another key-encryption key"
      })
    }
    const currentKek = keks.get(kekId)!

    const now = Effect.clockWith((clock) => Effect.succeed(clock.unsafeCurrentTimeMillis()))

    // --- keys ---
    const keys = Keys.makeKeys({ keyStore, keks, kekId, ttl, dropCached: (streams) => dropCached(streams) })
    const { createVersion, currentKeys, forgetKey, remember, track } = keys

    // --- the stored form ---
    const { decryptAll, decryptStream, encryptOne, prepare } = Codec.makeCodec({ plans, tenants: options.tenants === true, keys })

    const decryptResult = (result: AppendResult) =>
      Effect.map(decryptAll(result.events, false), (events): AppendResult => ({ ...result, events }))
    /** An append's result, decrypted: what it wrote, so a failure to open it is the store's. */
    const appended = (result: AppendResult) =>
      Effect.catchTag(decryptResult(result), "EventDecodeError", (e) => Effect.fail(storeError("privacy.append", e)))

    // --- the decorated store ---
    const hooks = new Set<(streamIds: ReadonlyArray<string>) => void>()
    const forgetHooks: ForgetHooks = {
      add: (hook) => {
        hooks.add(hook)
        return () => hooks.delete(hook)
      }
    }

    /** Tells the handlers' state caches in this process to drop the streams (by the ids the handlers use). */
    const dropCached = (streams: ReadonlyArray<string>) =>
      Effect.sync(() => {
        if (streams.length === 0) return
        const ids = [...new Set(streams.flatMap((s) => [s, userStreamId(s)]))]
        for (const hook of hooks) hook(ids)
      })

    const decorate = (store: EventStoreService, tenant: string | undefined): EventStoreService => {
      const streamKey = (streamId: string) => tenant === undefined ? streamId : tenantKey(tenant, streamId)
      const wrapper: EventStoreService = {
        append: (streamId, events, appendOptions) =>
          Effect.gen(function*() {
            // the append as the store will check it, in plain text: refused here (typed, nothing keyed or written)
            // exactly as the store would refuse it
            const at = yield* now
            const checked = prepareAppend(streamId, events, appendOptions, at, tenant)
            if (Either.isLeft(checked)) return yield* checked.left
            const plain = checked.right.events
            const prepared = yield* prepare(plain)
            if (prepared === undefined) return yield* Effect.flatMap(store.append(streamId, events, appendOptions), appended)
            const keyIds = new Set<string>()
            const pairs: Array<readonly [string, string]> = []
            const key = streamKey(streamId)
            for (const p of prepared) {
              for (const { keyId } of p.subjects) {
                keyIds.add(keyId)
                pairs.push([keyId, key])
              }
              if (p.tenant !== undefined) {
                keyIds.add(P.tenantKeyId(p.tenant))
                pairs.push([P.tenantKeyId(p.tenant), key])
              }
            }
            const keys = yield* currentKeys(keyIds)
            yield* track(pairs)
            const encrypted: Array<Event.NewEvent> = new Array(prepared.length)
            for (let i = 0; i < prepared.length; i++) encrypted[i] = encryptOne(prepared[i]!, events[i]!, keys)
            const result = yield* store.append(streamId, encrypted, appendOptions)
            if (result.replayed === true) return yield* appended(result)
            // what was written, in plain text: the checked copies
            return {
              ...result,
              events: result.events.map((e, i): Event.RecordedEvent => ({ ...e, payload: plain[i]!.payload }))
            }
          }),
        read: (streamId, readOptions) => decryptStream(store.read(streamId, readOptions), false),
        readPage: (streamId, pageOptions) =>
          Effect.flatMap(store.readPage(streamId, pageOptions), (events) => decryptAll(events, false)),
        readAll: (readOptions) => decryptStream(store.readAll(readOptions), true),
        subscribe: (subscribeOptions) => decryptStream(store.subscribe(subscribeOptions), true),
        version: store.version,
        head: store.head,
        command: (commandId) =>
          Effect.flatMap(store.command(commandId), (found) =>
            Option.isNone(found) ? Effect.succeed(found) : Effect.map(decryptResult(found.value), Option.some)),
        claimOwner: store.claimOwner,
        rebuildClaims: store.rebuildClaims
      }
      carryMarks(store, wrapper, (tenantStore, t) => decorate(tenantStore, t))
      return withForgetHooks(wrapper, forgetHooks)
    }

    const decorated = decorate(inner, undefined)

    // another process's forgets reach this one within keyCacheTtl: its keys read again, its streams' cached states
    // dropped (a handler decides on a cached state without reading the stream)
    const started = yield* now
    yield* Effect.forkScoped(Effect.gen(function*() {
      let after = started
      let atAfter = new Set<string>()
      yield* Effect.repeat(
        Effect.gen(function*() {
          const rows = yield* keyStore.destroyedSince(after - 1)
          for (const row of rows) {
            const mark = `${row.keyId}@${row.destroyedAt}`
            if (row.destroyedAt < after || atAfter.has(mark)) continue
            keys.drop(row.keyId)
            yield* Effect.flatMap(keyStore.streamsOf(row.keyId), dropCached)
            if (row.destroyedAt > after) {
              after = row.destroyedAt
              atAfter = new Set()
            }
            atAfter.add(mark)
          }
        }).pipe(Effect.catchAll((e) => Effect.logWarning(`privacy: reading other processes' forgets failed: ${e.message}`))),
        Schedule.spaced(Duration.millis(Math.max(ttl, 10)))
      )
    }))

    // --- forgetting ---
    const checkSubject = (field: string, id: string) => {
      const problem = checkId(field, id, 256)
      return problem === undefined ? Effect.void : Effect.fail(problem)
    }

    const deleteSnapshots = (streams: ReadonlyArray<string>) =>
      Option.isNone(snapshots)
        ? Effect.succeed(0)
        : Effect.reduce(streams, 0, (n, stream) =>
          Effect.map(snapshots.value.deleteOlderThan(stream, Number.MAX_SAFE_INTEGER), (deleted) => n + deleted))

    /** Replaces the failure text of the streams' parked events, where the checkpoint store can; how many. */
    const redactParked = (streams: ReadonlyArray<string>) =>
      Effect.gen(function*() {
        const checkpointStore = Option.orElse(yield* Effect.serviceOption(CheckpointStore), () => checkpoints)
        const redact = Option.isSome(checkpointStore) ? checkpointStore.value.redactParked : undefined
        return redact === undefined || streams.length === 0 ? 0 : yield* redact([...new Set(streams.map(userStreamId))], REDACTED)
      })

    /**
     * The second pass of a forget: the streams read again (one written meanwhile included), caches, snapshots, parked
     * events (a projection that read an event before the key was destroyed may have parked it since).
     */
    const secondPass = (keyId: string) =>
      Effect.gen(function*() {
        const streams = yield* keyStore.streamsOf(keyId)
        yield* dropCached(streams)
        yield* deleteSnapshots(streams)
        yield* dropCached(streams)
        yield* redactParked(streams)
        yield* keyStore.purge
      }).pipe(Effect.catchAll((e) => Effect.logWarning(`privacy: the second pass after a forget failed: ${e.message}`)))

    const shred = (keyId: string, label: string, tombstone: boolean) =>
      Effect.gen(function*() {
        const at = yield* now
        const before = yield* keyStore.get(keyId)
        const hadLive = Option.isSome(before) && before.value.versions.length > 0
        const record = yield* keyStore.destroy(keyId, at)
        const destroyedThrough = record.destroyedThrough
        forgetKey(keyId, destroyedThrough, at)
        const streams = yield* keyStore.streamsOf(keyId)
        // caches, then snapshots, then caches again: a load between the first two may have cached a snapshot's state
        yield* dropCached(streams)
        const snapshotsDeleted = yield* deleteSnapshots(streams)
        yield* dropCached(streams)
        // a parked event's failure text may quote the subject's data (a decode failure prints values)
        const parkedRedacted = yield* redactParked(streams)
        let position = 0
        if (tombstone) {
          const encoded = events.encode(SubjectForgotten.make({ subject: label, forgottenAt: at, streams: streams.length }))
          const tombstoneEvent = Either.getOrThrow(encoded)
          const stream = tombstoneStream(label)
          const options = {
            streamType: STREAM_TYPE,
            // one tombstone per destruction: forgetting again (nothing new destroyed) replays it
            commandId: `privacy-forget:${digest(keyId)}:${destroyedThrough}`,
            commandTtl: "36500 days"
          } as const
          const toStore = (e: { readonly _tag: string }) => storeError("privacy.forget", e)
          position = (yield* Effect.mapError(inner.append(stream, [tombstoneEvent], options), toStore)).position
          // and in each tenant whose streams held the subject's data: a tenant's projections read only its own log
          for (const tenant of new Set(streams.flatMap((s) => (s === userStreamId(s) ? [] : [s.slice(0, s.length - userStreamId(s).length - 1)])))) {
            const scoped = tenantStoreOf(inner, tenant)
            if (scoped !== undefined) yield* Effect.mapError(scoped.append(stream, [tombstoneEvent], options), toStore)
          }
        }
        yield* keyStore.audit({
          at,
          action: tombstone ? "forget" : "forget-tenant",
          keyId,
          detail: `${hadLive ? "destroyed" : "nothing live to destroy"} through version ${destroyedThrough}; ` +
            `${streams.length} streams; ${snapshotsDeleted} snapshots deleted; ${parkedRedacted} parked events' reasons redacted`
        })
        const purged = yield* keyStore.purge
        // a command that loaded a stream just before may still write its snapshot (or cache its state): again after
        // `settle`, or at once when the layer closes first
        yield* Effect.forkIn(
          Effect.sleep(settle).pipe(
            Effect.onInterrupt(() => Effect.timeout(Effect.interruptible(secondPass(keyId)), "2 seconds").pipe(Effect.ignore)),
            Effect.zipRight(secondPass(keyId))
          ),
          scope
        )
        const report: ForgetReport = {
          subject: label,
          destroyed: hadLive,
          streams: [...new Set(streams.map(userStreamId))],
          snapshotsDeleted,
          parkedRedacted,
          position,
          purged: purged.complete
        }
        return report
      })

    const scope = yield* Effect.scope

    /** The values that occur in `value` (its strings as they are, and as JSON text escapes them). */
    const stringsIn = (value: unknown, needles: ReadonlyArray<string>): Array<string> => {
      const text = typeof value === "string" ? value : JSON.stringify(value) ?? ""
      return needles.filter((needle) => text.includes(needle) || text.includes(JSON.stringify(needle).slice(1, -1)))
    }

    /** Whether the file holds any of the values' bytes (UTF-8, and as JSON escapes them), read in chunks. */
    const fileHolds = (file: string, needles: ReadonlyArray<string>) =>
      Effect.tryPromise({
        try: async () => {
          const patterns = [...new Set(needles.flatMap((v) => [v, JSON.stringify(v).slice(1, -1)]))].map((v) => Buffer.from(v, "utf8"))
          const overlap = Math.max(0, ...patterns.map((p) => p.length)) - 1
          const found = new Set<number>()
          let handle: FileHandle
          try {
            handle = await open(file, "r")
          } catch (cause) {
            if ((cause as NodeJS.ErrnoException).code === "ENOENT") return undefined
            throw cause
          }
          try {
            const chunk = Buffer.alloc(1 << 20)
            let carry = Buffer.alloc(0)
            for (;;) {
              const { bytesRead } = await handle.read(chunk, 0, chunk.length, null)
              if (bytesRead === 0) break
              const window = Buffer.concat([carry, chunk.subarray(0, bytesRead)])
              patterns.forEach((p, i) => {
                if (window.includes(p)) found.add(i)
              })
              carry = Buffer.from(window.subarray(Math.max(0, window.length - overlap)))
            }
          } finally {
            await handle.close()
          }
          return needles.filter((v) =>
            found.has(patterns.findIndex((p) => p.equals(Buffer.from(v, "utf8")))) ||
            found.has(patterns.findIndex((p) => p.equals(Buffer.from(JSON.stringify(v).slice(1, -1), "utf8"))))
          )
        },
        catch: (cause) => storeError("privacy.verify", cause)
      })

    const verifyForgotten: PrivacyService["verifyForgotten"] = (subject, verify = {}) =>
      Effect.gen(function*() {
        yield* checkSubject("subject", subject)
        const keyId = P.subjectKeyId(subject)
        const findings: Array<Finding> = []
        const record = yield* keyStore.get(keyId)
        if (Option.isNone(record) || record.value.destroyedAt === undefined) {
          findings.push({ where: "key", detail: "the subject was never forgotten" })
        } else if (record.value.versions.length > 0) {
          findings.push({ where: "key", detail: `versions ${record.value.versions.map((k) => k.version).join(", ")} are live (data appended after the forget)` })
        }
        const destroyedAt = Option.isSome(record) ? record.value.destroyedAt : undefined
        const tombstones = yield* inner.version(tombstoneStream(subject))
        if (destroyedAt !== undefined && tombstones === 0) findings.push({ where: "tombstone", detail: "no SubjectForgotten event" })
        const values = (verify.values ?? []).filter((v) => v.length > 0)
        const streams = yield* keyStore.streamsOf(keyId)
        if (Option.isSome(snapshots)) {
          for (const stream of streams) {
            const latest = yield* snapshots.value.latest(stream)
            if (Option.isNone(latest)) continue
            const taken = latest.value.createdAt.epochMillis
            if (destroyedAt !== undefined && taken < destroyedAt) {
              findings.push({ where: "snapshots", detail: `${stream} has a snapshot taken before the forget (version ${latest.value.version})` })
            }
            const found = stringsIn(latest.value.state, values)
            if (found.length > 0) findings.push({ where: "snapshots", detail: `${stream}: ${found.length} of the values` })
          }
        }
        if (values.length > 0) {
          let hits = 0
          let first: Event.RecordedEvent | undefined = undefined
          yield* inner.readAll({ pageSize: 1000 }).pipe(
            Stream.runForEachChunk((chunk) =>
              Effect.sync(() => {
                for (const event of chunk) {
                  if (stringsIn(event.payload, values).length > 0 || stringsIn(event.metadata, values).length > 0) {
                    hits++
                    first ??= event
                  }
                }
              })
            )
          )
          if (hits > 0) {
            findings.push({
              where: "events",
              detail: `${hits} events hold a value in plain text (the first: ${first!.streamId} version ${first!.version}, position ${first!.position}, an unmarked field?)`
            })
          }
          // the library's tables that hold values in plain text: unique values (claims) and the claims stored with events,
          // in the database the store keeps its events in (an SQL store is marked with its client)
          const database = databaseOf(inner) as SqlClient.SqlClient | undefined
          if (database !== undefined) {
            const toStore = (cause: unknown) => storeError("privacy.verify", cause)
            const claimed = yield* Effect.mapError(
              database.unsafe<Record<string, unknown>>(`SELECT * FROM ${tables.unique}`),
              toStore
            )
            const held = claimed.filter((row) => stringsIn(row, values).length > 0).length
            if (held > 0) findings.push({ where: "claims", detail: `${held} unique values (claims) are a value` })
            const withClaims = yield* Effect.mapError(
              database.unsafe<{ claims: string }>(`SELECT claims FROM ${tables.events} WHERE claims IS NOT NULL`),
              toStore
            )
            const stored = withClaims.filter((row) => stringsIn(row.claims, values).length > 0).length
            if (stored > 0) findings.push({ where: "claims", detail: `${stored} events' stored claims hold a value` })
          }
          for (const table of verify.tables ?? []) {
            const hitsIn = yield* scanTable(table, values)
            if (hitsIn > 0) findings.push({ where: `table ${table}`, detail: `${hitsIn} rows hold a value` })
          }
          // the caller's CheckpointStore, else the one the layer was given
          const checkpointStore = Option.orElse(yield* Effect.serviceOption(CheckpointStore), () => checkpoints)
          if ((verify.projections ?? []).length > 0 && Option.isNone(checkpointStore)) {
            return yield* new InvalidInput({ field: "projections", reason: "no CheckpointStore in context to read parked events with" })
          }
          if (Option.isSome(checkpointStore)) {
            for (const projection of verify.projections ?? []) {
              const parked = yield* checkpointStore.value.parked(projection)
              const hitsIn = parked.filter((p) => stringsIn(p.reason, values).length > 0).length
              if (hitsIn > 0) findings.push({ where: `parked ${projection}`, detail: `${hitsIn} parked events' reasons hold a value` })
            }
          }
          if ((verify.deadLetters ?? []).length > 0) {
            const bus = yield* Effect.serviceOption(EventBus)
            if (Option.isNone(bus)) {
              return yield* new InvalidInput({ field: "deadLetters", reason: "no EventBus in context to read dead letters with" })
            }
            for (const consumer of verify.deadLetters!) {
              const letters = yield* Effect.mapError(bus.value.deadLetters(consumer), (e) =>
                e._tag === "InvalidInput" ? e : storeError("privacy.verify", e))
              const hitsIn = letters.filter((l) => stringsIn([l.envelope, l.raw, l.error], values).length > 0).length
              if (hitsIn > 0) findings.push({ where: `dead letters ${consumer}`, detail: `${hitsIn} dead letters hold a value` })
            }
          }
          for (const file of verify.files ?? []) {
            const found = yield* fileHolds(file, values)
            if (found !== undefined && found.length > 0) {
              findings.push({ where: `file ${file}`, detail: `${found.length} of the values occur in its bytes` })
            }
          }
        }
        return { subject, clean: findings.length === 0, findings } satisfies Verification
      })

    const scanTable = (table: string, values: ReadonlyArray<string>) =>
      Effect.gen(function*() {
        if (!/^[A-Za-z_][A-Za-z0-9_.]*$/.test(table)) {
          return yield* new InvalidInput({ field: "tables", reason: `${JSON.stringify(table)} is not a table name` })
        }
        const sql = yield* Effect.serviceOption(SqlClient.SqlClient)
        if (Option.isNone(sql)) {
          return yield* new InvalidInput({ field: "tables", reason: "no SqlClient in context to read tables with" })
        }
        const rows = yield* Effect.mapError(sql.value.unsafe(`SELECT * FROM ${table}`), (cause) => storeError("privacy.verify", cause))
        return rows.filter((row) => stringsIn(row, values).length > 0).length
      })

    const checkTenant = (tenant: string) =>
      TENANT_PATTERN.test(tenant)
        ? Effect.void
        : Effect.fail(new InvalidInput({ field: "tenant", reason: "not a tenant id (see Tenancy.validate)" }))

    const rotateKey = (keyId: string) =>
      Effect.gen(function*() {
        const at = yield* now
        const before = yield* keyStore.get(keyId)
        const highest = Option.match(before, {
          onNone: () => 0,
          onSome: (r) => Math.max(r.destroyedThrough, ...r.versions.map((k) => k.version))
        })
        const record = yield* createVersion(keyId, highest + 1, at, "rotate")
        return remember(record, at).current
      })

    const service: PrivacyService = {
      forget: (subject) =>
        Effect.zipRight(checkSubject("subject", subject), shred(P.subjectKeyId(subject), subject, true)).pipe(
          Effect.withSpan("Privacy.forget", { captureStackTrace: false })
        ),
      forgetTenant: (tenant) =>
        Effect.zipRight(checkTenant(tenant), shred(P.tenantKeyId(tenant), tenant, false)).pipe(
          Effect.withSpan("Privacy.forgetTenant", { captureStackTrace: false })
        ),
      verifyForgotten: (subject, verify) =>
        verifyForgotten(subject, verify).pipe(Effect.withSpan("Privacy.verifyForgotten", { captureStackTrace: false })),
      rotate: (subject) => Effect.zipRight(checkSubject("subject", subject), rotateKey(P.subjectKeyId(subject))),
      rotateTenant: (tenant) => Effect.zipRight(checkTenant(tenant), rotateKey(P.tenantKeyId(tenant))),
      decrypt: (event) =>
        Effect.flatMap(decryptAll([event], true), (out) => Effect.succeed(out[0]!)),
      purge: keyStore.purge,
      rewrapKeys: Effect.gen(function*() {
        let after: string | undefined = undefined
        let rewrapped = 0
        const failed: Array<string> = []
        while (true) {
          const ids: ReadonlyArray<string> = yield* keyStore.keyIds(after === undefined ? { limit: 500 } : { after, limit: 500 })
          if (ids.length === 0) break
          after = ids[ids.length - 1]
          const records = yield* keyStore.getMany(ids)
          for (const record of records.values()) {
            for (const key of record.versions) {
              if (key.kekId === kekId) continue
              const wrapping = keks.get(key.kekId)
              const raw = wrapping === undefined
                ? undefined
                : P.open(wrapping, P.wrapAad(key.keyId, key.version), Buffer.from(key.wrapped))
              if (raw === undefined) {
                failed.push(`${key.keyId} version ${key.version}`)
                continue
              }
              const wrapped = P.seal(currentKek, P.wrapAad(key.keyId, key.version), raw)
              raw.fill(0)
              if (yield* keyStore.rewrap(key.keyId, key.version, wrapped, kekId)) rewrapped++
            }
          }
        }
        if (failed.length > 0) {
          return yield* storeError(
            "privacy.rewrapKeys",
            `${failed.length} key versions are wrapped by a key-encryption key not given (${failed.slice(0, 5).join(", ")}${failed.length > 5 ? ", …" : ""})`
          )
        }
        yield* keyStore.setMeta("kek", kekId)
        const at = yield* now
        yield* keyStore.audit({ at, action: "rewrap", keyId: "*", detail: `${rewrapped} key versions wrapped by ${kekId}` })
        return rewrapped
      }).pipe(Effect.withSpan("Privacy.rewrapKeys", { captureStackTrace: false })),
      audit: (subject) => keyStore.auditLog(P.subjectKeyId(subject))
    }

    return Context.make(EventStore, decorated).pipe(Context.add(Privacy, service))
  }))

const describe = (e: unknown): string =>
  typeof e === "object" && e !== null && "message" in e && typeof e.message === "string" ? e.message : String(e)
