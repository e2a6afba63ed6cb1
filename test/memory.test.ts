import { EventStore } from "effect-eventstore"
import { eventStoreSuite } from "./conformance/EventStore.js"
import { guaranteesSuite } from "./conformance/Guarantees.js"

eventStoreSuite("memory", EventStore.layerMemory)
guaranteesSuite("memory", EventStore.layerMemory)
