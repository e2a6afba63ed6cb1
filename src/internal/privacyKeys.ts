/**
 * `Privacy`'s data keys in this process: the cache of unwrapped keys (read again after a time-to-live, dropped when
 * destroyed), key creation and rotation through the `KeyStore`, and the record of which streams hold each key's data.
 */
import type { KeyObject } from "node:crypto"
import * as Effect from "effect/Effect"
import { StoreError } from "../Errors.js"
import type { KeyRecord, KeyStoreService, WrappedKey } from "../KeyStore.js"
import * as P from "./privacy.js"

/** What the cache holds of one key id. */
interface CachedKey {
  /** Live versions: the key, or `undefined` when it could not be unwrapped (another KEK, damaged). */
  readonly versions: Map<number, KeyObject | undefined>
  /** The highest live version; 0 when none. */
  readonly current: number
  readonly destroyedThrough: number
  readonly at: number
}

/** A key version, or why there is none: destroyed, never known, or not openable with the KEKs given. */
export type Lookup = KeyObject | "destroyed" | "unknown" | "unwrappable"

/** How long this process encrypts with a key it read without reading its state again (another process may destroy it). */
const ENCRYPT_TTL = 1000

/** At most this many (key, stream) pairs are remembered as recorded, and this many keys cached; then they start over. */
const TRACKED_LIMIT = 100_000
const KEY_CACHE_LIMIT = 100_000

const storeError = (operation: string, cause: unknown) => new StoreError({ operation, cause })

export interface KeysOptions {
  readonly keyStore: KeyStoreService
  /** The key-encryption keys by fingerprint: the current one and earlier ones. */
  readonly keks: ReadonlyMap<string, KeyObject>
  /** The current KEK's fingerprint. */
  readonly kekId: string
  /** How long a key read is used for decryption without reading it again, in ms. */
  readonly ttl: number
  /** Drops streams from this process's state caches (a key another process destroyed). */
  readonly dropCached: (streams: ReadonlyArray<string>) => Effect.Effect<void>
}

export type Keys = ReturnType<typeof makeKeys>

export const makeKeys = ({ dropCached, kekId, keks, keyStore, ttl }: KeysOptions) => {
  const currentKek = keks.get(kekId)!
  const cache = new Map<string, CachedKey>()
  const unwrap = (key: WrappedKey): KeyObject | undefined => {
    const wrapping = keks.get(key.kekId)
    if (wrapping === undefined) return undefined
    const raw = P.open(wrapping, P.wrapAad(key.keyId, key.version), Buffer.from(key.wrapped))
    return raw === undefined || raw.length !== 32 ? undefined : P.keyObject(raw)
  }
  const remember = (record: KeyRecord, now: number): CachedKey => {
    const versions = new Map<number, KeyObject | undefined>()
    let current = 0
    for (const key of record.versions) {
      versions.set(key.version, unwrap(key))
      if (key.version > current) current = key.version
    }
    const cached: CachedKey = { versions, current, destroyedThrough: record.destroyedThrough, at: now }
    if (cache.size >= KEY_CACHE_LIMIT) cache.clear()
    cache.set(record.keyId, cached)
    return cached
  }
  /**
   * Reads the records of the key ids the cache does not hold, or has held for `maxAge` (0: all of them). A key
   * another process destroyed since: its streams' states are dropped from this process's caches.
   */
  const load = (keyIds: Iterable<string>, maxAge: number = ttl): Effect.Effect<void, StoreError> =>
    Effect.clockWith((clock) => {
      const now = clock.unsafeCurrentTimeMillis()
      const missing = [...new Set(keyIds)].filter((id) => {
        const cached = cache.get(id)
        return cached === undefined || now - cached.at >= maxAge
      })
      if (missing.length === 0) return Effect.void
      return Effect.flatMap(keyStore.getMany(missing), (records) => {
        const raised: Array<string> = []
        for (const id of missing) {
          const record = records.get(id)
          const before = cache.get(id)
          if (record === undefined) cache.delete(id)
          else {
            if (before !== undefined && record.destroyedThrough > before.destroyedThrough) raised.push(id)
            remember(record, now)
          }
        }
        return raised.length === 0
          ? Effect.void
          : Effect.forEach(raised, (id) => Effect.flatMap(keyStore.streamsOf(id), dropCached), { discard: true })
      })
    })
  /** This process destroyed the key: nothing of it is used from now on, and its streams are recorded afresh. */
  const forgetKey = (keyId: string, destroyedThrough: number, at: number) => {
    cache.set(keyId, { versions: new Map(), current: 0, destroyedThrough, at })
    tracked.delete(keyId)
  }
  const lookup = (keyId: string, version: number): Lookup => {
    const cached = cache.get(keyId)
    if (cached === undefined) return "unknown"
    if (cached.versions.has(version)) return cached.versions.get(version) ?? "unwrappable"
    return version <= cached.destroyedThrough ? "destroyed" : "unknown"
  }

  /** The current key of each id, created (version 1, or the one after those destroyed) where there is none. */
  const currentKeys = (keyIds: ReadonlySet<string>) =>
    Effect.gen(function*() {
      // a key another process destroyed is not used for more than ENCRYPT_TTL
      yield* load(keyIds, Math.min(ttl, ENCRYPT_TTL))
      const out = new Map<string, { readonly key: KeyObject; readonly version: number }>()
      for (const keyId of keyIds) {
        let cached = cache.get(keyId)
        if (cached === undefined || cached.current === 0) {
          const now = yield* Effect.clockWith((clock) => Effect.succeed(clock.unsafeCurrentTimeMillis()))
          const record = yield* createVersion(keyId, (cached?.destroyedThrough ?? 0) + 1, now, "create")
          cached = remember(record, now)
        }
        const key = cached.versions.get(cached.current)
        if (key === undefined) {
          return yield* storeError(
            "privacy.key",
            `the data key ${keyId} version ${cached.current} cannot be unwrapped with the key-encryption keys given`
          )
        }
        out.set(keyId, { key, version: cached.current })
      }
      return out
    })
  const createVersion = (keyId: string, version: number, now: number, action: string) =>
    Effect.gen(function*() {
      const dataKey = P.newDataKey()
      const wrapped = P.seal(currentKek, P.wrapAad(keyId, version), dataKey)
      dataKey.fill(0)
      const record = yield* keyStore.put({ keyId, version, wrapped, kekId, createdAt: now })
      if (record.versions.some((k) => k.version === version && k.kekId === kekId)) {
        yield* keyStore.audit({ at: now, action, keyId, detail: `version ${version}` })
      }
      return record
    })

  // streams that hold each key's data, as recorded in the key store (so that `forget` finds them)
  const tracked = new Map<string, Set<string>>()
  let trackedPairs = 0
  const track = (pairs: ReadonlyArray<readonly [keyId: string, stream: string]>) => {
    const todo = new Map<string, Array<string>>()
    for (const [keyId, stream] of pairs) {
      if (tracked.get(keyId)?.has(stream)) continue
      const list = todo.get(keyId)
      if (list === undefined) todo.set(keyId, [stream])
      else if (!list.includes(stream)) list.push(stream)
    }
    if (todo.size === 0) return Effect.void
    return Effect.forEach(todo, ([keyId, streams]) =>
      Effect.tap(keyStore.track(keyId, streams), () =>
        Effect.sync(() => {
          if (trackedPairs > TRACKED_LIMIT) {
            tracked.clear()
            trackedPairs = 0
          }
          let set = tracked.get(keyId)
          if (set === undefined) tracked.set(keyId, set = new Set())
          for (const stream of streams) {
            if (!set.has(stream)) trackedPairs++
            set.add(stream)
          }
        })), { discard: true })
  }


  /** The ids the cache does not hold, or has held for `ttl` or longer. */
  const stale = (keyIds: Iterable<string>, now: number): Array<string> => {
    const out: Array<string> = []
    for (const id of keyIds) {
      const cached = cache.get(id)
      if (cached === undefined || now - cached.at >= ttl) out.push(id)
    }
    return out
  }

  /** Another process destroyed the key: read it again on its next use. */
  const drop = (keyId: string) => {
    cache.delete(keyId)
    tracked.delete(keyId)
  }

  return { load, lookup, stale, drop, currentKeys, createVersion, remember, forgetKey, track }
}
