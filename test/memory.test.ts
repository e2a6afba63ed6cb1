import { EventStore } from "effect-eventstore"
import { eventStoreSuite } from "./conformance/EventStore.js"
import { guaranteesSuite } from "./conformance/Guarantees.js"
import { tenancySuite } from "./conformance/Tenancy.js"

eventStoreSuite("memory", EventStore.layerMemory)
guaranteesSuite("memory", EventStore.layerMemory)
tenancySuite("memory", EventStore.layerMemory)
