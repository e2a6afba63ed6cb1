/** Time-ordered UUIDs (RFC 9562 version 7) for event ids: they index well and sort roughly by creation. */
import { randomFillSync } from "node:crypto"

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
