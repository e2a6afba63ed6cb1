/** Time-ordered UUIDs (RFC 9562 version 7) for event ids: they index well and sort roughly by creation. */
import { randomFillSync } from "node:crypto"

const HEX: Array<string> = Array.from({ length: 256 }, (_, i) => i.toString(16).padStart(2, "0"))
// Random bytes are drawn in blocks: one syscall per 512 ids instead of one per id.
const pool = new Uint8Array(10 * 512)
let offset = pool.length

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
  return HEX[(hi >>> 16) & 0xff]! + HEX[(hi >>> 8) & 0xff]! + HEX[hi & 0xff]! +
    HEX[(lo >>> 16) & 0xff]! + "-" + HEX[(lo >>> 8) & 0xff]! + HEX[lo & 0xff]! + "-" +
    HEX[0x70 | (pool[r]! & 0x0f)]! + HEX[pool[r + 1]!]! + "-" +
    HEX[0x80 | (pool[r + 2]! & 0x3f)]! + HEX[pool[r + 3]!]! + "-" +
    HEX[pool[r + 4]!]! + HEX[pool[r + 5]!]! + HEX[pool[r + 6]!]! + HEX[pool[r + 7]!]! +
    HEX[pool[r + 8]!]! + HEX[pool[r + 9]!]!
}
