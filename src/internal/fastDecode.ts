/**
 * A fast path for decoding stored events. `Schema.decodeUnknownEither` costs ~1.3 µs for a one-field struct on
 * our machines — more than reading and parsing the row — and a fold calls it once per event. For schemas without
 * transformations (tagged structs of literals, strings, numbers, booleans, refinements and brands, unions and
 * optional fields of those) this compiles a plain validator from the AST that builds the same output decode would
 * (known keys only, in schema order). It only ever answers "valid, here is the value"; anything else goes through
 * Schema's own decode, so errors and edge cases keep Schema's exact semantics.
 */
import * as Option from "effect/Option"
import type * as Schema from "effect/Schema"
import * as AST from "effect/SchemaAST"

type Check = (u: unknown) => boolean

const compileCheck = (ast: AST.AST): Check | undefined => {
  switch (ast._tag) {
    case "Literal": {
      const literal = ast.literal
      return (u) => u === literal
    }
    case "StringKeyword":
      return (u) => typeof u === "string"
    case "NumberKeyword":
      return (u) => typeof u === "number"
    case "BooleanKeyword":
      return (u) => typeof u === "boolean"
    case "UndefinedKeyword":
      return (u) => u === undefined
    case "UnknownKeyword":
    case "AnyKeyword":
      return () => true
    case "Refinement": {
      const from = compileCheck(ast.from)
      if (from === undefined) return undefined
      const options = {}
      return (u) => from(u) && Option.isNone(ast.filter(u, options, ast))
    }
    case "Union": {
      const members = ast.types.map(compileCheck)
      if (members.some((m) => m === undefined)) return undefined
      const checks = members as Array<Check>
      return (u) => checks.some((check) => check(u))
    }
    default:
      return undefined
  }
}

type Prop = { readonly name: PropertyKey; readonly optional: boolean; readonly check: Check | "tag" }

/** The checked properties of a tagged struct with `_tag` = `tag`; `undefined` when the fast path does not apply. */
const compileProps = (schema: Schema.Schema.Any, tag: string): ReadonlyArray<Prop> | undefined => {
  const ast = schema.ast
  if (ast._tag !== "TypeLiteral" || ast.indexSignatures.length > 0) return undefined
  const props: Array<Prop> = []
  for (const ps of ast.propertySignatures) {
    if (ps.name === "_tag") {
      if (ps.type._tag !== "Literal" || ps.type.literal !== tag) return undefined
      props.push({ name: ps.name, optional: false, check: "tag" })
      continue
    }
    const check = compileCheck(ps.type)
    if (check === undefined) return undefined
    props.push({ name: ps.name, optional: ps.isOptional, check })
  }
  return props
}

/**
 * The validator-builder both directions share: the known properties of `input`, checked, in schema order. Decoding
 * (a stored payload, which has no `_tag`) puts `_tag` back; encoding (an event, whose `_tag` must be `tag`) leaves it
 * out. `undefined` for anything the fast path does not accept as it stands.
 */
const build = (props: ReadonlyArray<Prop>, tag: string, direction: "decode" | "encode") =>
(u: unknown): Record<PropertyKey, unknown> | undefined => {
  if (typeof u !== "object" || u === null || Array.isArray(u)) return undefined
  const input = u as Record<PropertyKey, unknown>
  if (direction === "decode" ? "_tag" in input : input._tag !== tag) return undefined
  const out: Record<PropertyKey, unknown> = {}
  for (const { check, name, optional } of props) {
    if (check === "tag") {
      if (direction === "decode") out[name] = tag
      continue
    }
    if (!(name in input)) {
      if (optional) continue
      return undefined
    }
    const value = input[name]
    if (!check(value)) return undefined
    out[name] = value
  }
  return out
}

/**
 * An encoder for events of type `tag`: for a schema without transformations, encoding is validating, and the
 * payload is the event's known properties without `_tag` (what `Schema.encode` then dropping `_tag` gives).
 * Returns `undefined` when the fast path does not apply or the event fails, and Schema's encode takes over.
 */
export const compileEncode = (
  schema: Schema.Schema.Any,
  tag: string
): ((event: unknown) => Record<PropertyKey, unknown> | undefined) | undefined => {
  const props = compileProps(schema, tag)
  return props === undefined ? undefined : build(props, tag, "encode")
}

/**
 * A decoder for a stored payload of event type `tag` (the payload has no `_tag`; the schema's `_tag` must be that
 * literal). Returns the decoded event, or `undefined` when the fast path does not apply or the payload fails.
 */
export const compile = (schema: Schema.Schema.Any, tag: string): ((payload: unknown) => unknown) | undefined => {
  const props = compileProps(schema, tag)
  return props === undefined ? undefined : build(props, tag, "decode")
}
