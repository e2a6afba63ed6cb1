/**
 * The one place where driver errors are classified. Every SQL path of the library asks these questions (is the
 * database locked by someone else? did a unique index refuse the write?) instead of looking at driver codes itself,
 * so a new dialect adds its codes here and nowhere else. SQLite (better-sqlite3) reports `SQLITE_*` codes,
 * PostgreSQL (`pg`) SQLSTATE codes.
 */
import { SqlError } from "@effect/sql/SqlError"

/** The driver's error code of a failure: an `SqlError`'s cause, or the thrown driver error itself. */
export const codeOf = (error: unknown): string | undefined => {
  const cause = error instanceof SqlError ? error.cause : error
  const code = (cause as { readonly code?: unknown } | null | undefined)?.code
  return typeof code === "string" ? code : undefined
}

/** A unique index or primary key refused a write. */
export const isUniqueViolation = (error: unknown): boolean => {
  const code = codeOf(error)
  return code === "SQLITE_CONSTRAINT_UNIQUE" || code === "SQLITE_CONSTRAINT_PRIMARYKEY" || code === "23505"
}

/** Locked by another connection: worth retrying after a backoff. */
export const isBusy = (error: unknown): boolean => {
  const code = codeOf(error)
  return code !== undefined && (code.startsWith("SQLITE_BUSY") || code.startsWith("SQLITE_LOCKED") ||
    code === "40001" || code === "40P01" || code === "55P03")
}

/** The database refuses writes (a read-only file, directory or filesystem). */
export const isReadOnly = (error: unknown): boolean => {
  const code = codeOf(error)
  return code !== undefined && (code.startsWith("SQLITE_READONLY") || code === "25006")
}

/** The file cannot be opened or created (a directory, no permission, a missing directory on some platforms). */
export const isCantOpen = (error: unknown): boolean => codeOf(error)?.startsWith("SQLITE_CANTOPEN") === true

/** The file is not a database, or its header is damaged. */
export const isNotADatabase = (error: unknown): boolean => codeOf(error)?.startsWith("SQLITE_NOTADB") === true

/** The disk (or the filesystem's quota) is full. */
export const isDiskFull = (error: unknown): boolean => {
  const code = codeOf(error)
  return code !== undefined && (code.startsWith("SQLITE_FULL") || code === "53100")
}
