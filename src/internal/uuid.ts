/** Time-ordered UUIDs (RFC 9562 version 7) for event ids: they index well and sort roughly by creation. */
import { createHash, randomFillSync } from "node:crypto"

// Random bytes are drawn in blocks: one syscall per 512 ids instead of one per id.
const pool = new Uint8Array(10 * 512)
let offset = pool.length

// The id is written as ASCII into one buffer and read out as one string (no intermediate strings).
const HEX = new Uint8Array(Array.from("0123456789abcdef", (c) => c.charCodeAt(0)))
const text = Buffer.alloc(36)
const DASH = "-".charCodeAt(0)

const put = (at: number, byte: number) => {
  text[at] = HEX[byte >>> 4]!
  text[at + 1] = HEX[byte & 0x0f]!
}

/** @internal */
export const uuidV7 = (millis: number): string => {
  if (offset === pool.length) {
    randomFillSync(pool)
    offset = 0
  }
  const r = offset
  offset += 10
  const ms = Math.max(0, Math.floor(millis))
  const hi = Math.floor(ms / 0x1000000) // top 24 bits of 48
  const lo = ms % 0x1000000 // bottom 24 bits
  put(0, (hi >>> 16) & 0xff)
  put(2, (hi >>> 8) & 0xff)
  put(4, hi & 0xff)
  put(6, (lo >>> 16) & 0xff)
  text[8] = DASH
  put(9, (lo >>> 8) & 0xff)
  put(11, lo & 0xff)
  text[13] = DASH
  put(14, 0x70 | (pool[r]! & 0x0f))
  put(16, pool[r + 1]!)
  text[18] = DASH
  put(19, 0x80 | (pool[r + 2]! & 0x3f))
  put(21, pool[r + 3]!)
  text[23] = DASH
  for (let i = 0; i < 6; i++) put(24 + 2 * i, pool[r + 4 + i]!)
  return text.toString("latin1", 0, 36)
}

/** The namespace of the library's name-based ids (a UUID v4 drawn once, fixed forever). */
const NAMESPACE = Buffer.from("6f1c0d0e4b6a4f0e9d8e2c7a5b3f1e42", "hex")

/**
 * A name-based UUID (RFC 9562 version 5: SHA-1 over the library's namespace and `name`): the same name always gives
 * the same id. Event ids derived from a command id and a stream version, and seeded events, use it.
 *
 * @internal
 */
export const uuidV5 = (name: string): string => {
  const hash = createHash("sha1").update(NAMESPACE).update(name, "utf8").digest()
  hash[6] = (hash[6]! & 0x0f) | 0x50
  hash[8] = (hash[8]! & 0x3f) | 0x80
  const hex = hash.toString("hex", 0, 16)
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20, 32)}`
}
