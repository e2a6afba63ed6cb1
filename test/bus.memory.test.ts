import { Bus } from "effect-eventstore"
import { busSuite } from "./conformance/Bus.js"

busSuite("memory", () => Bus.layerMemory)
