/**
 * The typed errors of the event store contract. They are `Schema.TaggedError`s, so they carry the fields a caller
 * needs (stream id, expected and actual version, position) and serialize across process boundaries unchanged.
 *
 * @since 0.1.0
 */
import * as Schema from "effect/Schema"

/**
 * What an append expects the stream to look like when it writes.
 *
 * - `"any"`: no check.
 * - `"no-stream"`: the stream must not exist (it has no events).
 * - `"stream-exists"`: the stream must have at least one event.
 * - `n`: the stream's current version must be exactly `n` (`0` is the same as `"no-stream"`).
 *
 * An append checks its option against this schema: `null`, an explicit `undefined`, `"5"`, `-1` or `1.5` are
 * `InvalidInput`, never a silent `"any"` — a caller that wants no check says `"any"` or leaves the option out.
 *
 * @since 0.1.0
 */
export const ExpectedVersion = Schema.Union(
  Schema.Literal("any", "no-stream", "stream-exists"),
  Schema.NonNegativeInt
)

/** @since 0.1.0 */
export type ExpectedVersion = typeof ExpectedVersion.Type

/**
 * The stream was not at the version the append expected. Nothing was written.
 *
 * @since 0.1.0
 */
export class ConcurrencyError extends Schema.TaggedError<ConcurrencyError>()("ConcurrencyError", {
  streamId: Schema.String,
  expected: ExpectedVersion,
  actual: Schema.NonNegativeInt
}) {
  override get message(): string {
    return `stream ${JSON.stringify(this.streamId)}: expected version ${this.expected}, actual ${this.actual}`
  }
}

/**
 * A stored event could not be turned back into a value: its type is unknown to the registry, its payload is not
 * valid JSON, it fails its schema, or an upcaster failed. The event stays in the store; the error names where it is.
 *
 * @since 0.1.0
 */
export class EventDecodeError extends Schema.TaggedError<EventDecodeError>()("EventDecodeError", {
  streamId: Schema.String,
  version: Schema.Number,
  position: Schema.Number,
  type: Schema.String,
  reason: Schema.String
}) {
  override get message(): string {
    return `cannot decode event ${this.type} at position ${this.position} (stream ${
      JSON.stringify(this.streamId)
    } v${this.version}): ${this.reason}`
  }
}

/**
 * The input was rejected before anything was written: a bad stream id or event id, an empty event list, a payload
 * that fails its schema or is too large, a malformed option.
 *
 * @since 0.1.0
 */
export class InvalidInput extends Schema.TaggedError<InvalidInput>()("InvalidInput", {
  field: Schema.String,
  reason: Schema.String
}) {
  override get message(): string {
    return `invalid ${this.field}: ${this.reason}`
  }
}

/**
 * An event id in the append is already stored. Event ids are unique across the store, so nothing was written.
 *
 * @since 0.1.0
 */
export class DuplicateEventError extends Schema.TaggedError<DuplicateEventError>()("DuplicateEventError", {
  streamId: Schema.String,
  eventId: Schema.String
}) {
  override get message(): string {
    return `event id ${this.eventId} is already stored (append to stream ${JSON.stringify(this.streamId)})`
  }
}

/**
 * The storage backend failed (I/O, a driver error, a lock held for too long). `operation` names what was running.
 *
 * @since 0.1.0
 */
export class StoreError extends Schema.TaggedError<StoreError>()("StoreError", {
  operation: Schema.String,
  cause: Schema.Defect
}) {
  override get message(): string {
    const cause = this.cause instanceof Error ? this.cause.message : String(this.cause)
    return `${this.operation} failed: ${cause}`
  }
}

/**
 * An inline projection (run in the append's own transaction) could not handle an event of the append, or an earlier
 * event it had not handled yet: the append was not written. `position` and `eventType` name the event, `reason` says
 * why (the handler's error, or the event not decoding).
 *
 * @since 0.1.0
 */
export class InlineProjectionError extends Schema.TaggedError<InlineProjectionError>()("InlineProjectionError", {
  projection: Schema.String,
  streamId: Schema.String,
  position: Schema.Number,
  eventType: Schema.String,
  reason: Schema.String
}) {
  override get message(): string {
    return `inline projection ${JSON.stringify(this.projection)} failed on ${this.eventType} at position ${this.position} (stream ${
      JSON.stringify(this.streamId)
    }): ${this.reason}`
  }
}

/**
 * An event of the append claims a unique value another stream holds (`owner`): nothing of the append was written.
 *
 * @since 0.1.0
 */
export class UniqueConstraintViolation extends Schema.TaggedError<UniqueConstraintViolation>()(
  "UniqueConstraintViolation",
  {
    streamId: Schema.String,
    index: Schema.String,
    value: Schema.String,
    owner: Schema.String
  }
) {
  override get message(): string {
    return `${JSON.stringify(this.value)} in unique index ${JSON.stringify(this.index)} is held by stream ${
      JSON.stringify(this.owner)
    } (append to stream ${JSON.stringify(this.streamId)})`
  }
}

/**
 * An event of the append releases a unique value its stream does not hold (`owner`: the stream that does, if any):
 * nothing of the append was written.
 *
 * @since 0.1.0
 */
export class ClaimNotHeld extends Schema.TaggedError<ClaimNotHeld>()("ClaimNotHeld", {
  streamId: Schema.String,
  index: Schema.String,
  value: Schema.String,
  owner: Schema.optionalWith(Schema.String, { exact: true })
}) {
  override get message(): string {
    return `stream ${JSON.stringify(this.streamId)} releases ${JSON.stringify(this.value)} in unique index ${
      JSON.stringify(this.index)
    }, which it does not hold (${this.owner === undefined ? "nobody does" : `stream ${JSON.stringify(this.owner)} does`})`
  }
}

/**
 * A seed's stream holds other events where the seed's belong (`version`: the first that differs): it was written by
 * something else, or by another seed of it. Nothing of the seed was written to the stream.
 *
 * @since 0.1.0
 */
export class SeedConflict extends Schema.TaggedError<SeedConflict>()("SeedConflict", {
  streamId: Schema.String,
  version: Schema.Number,
  reason: Schema.String
}) {
  override get message(): string {
    return `stream ${JSON.stringify(this.streamId)} cannot take its seed at version ${this.version}: ${this.reason}`
  }
}
