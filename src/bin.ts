#!/usr/bin/env node
/**
 * The `effect-eventstore` bin: the operator CLI without projection handlers (see `Cli`).
 *
 * @since 0.1.0
 */
import { run } from "./Cli.js"

run()
