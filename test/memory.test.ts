import { EventStore } from "effect-eventstore"
import { eventStoreSuite } from "./conformance/EventStore.js"

eventStoreSuite("memory", EventStore.layerMemory)
