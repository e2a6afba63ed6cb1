/**
 * Group commit, independent of any SQL dialect: concurrent submissions are gathered into groups and each group is
 * handed to `run` (one transaction, one fsync). There is no writer fiber to hop to: the first caller to find the
 * writer idle becomes the leader and runs groups on its own fiber; the others wait on a callback the leader
 * completes (a microtask, not a Deferred: this path runs once per append). Once the leader's own append is done,
 * whatever is still queued is drained by a background fiber (`fork`, owned by the store's scope), so no caller waits
 * on other callers' appends.
 *
 * Adaptive: a submission that finds the writer idle and no recent contention runs at once, with nothing added.
 * Once submissions come from more than one fiber in one turn of the event loop (or one has had to wait for a leader), leaders yield once before
 * taking a group, so that appenders that are ready to run join it; after a long enough run of groups of one, they
 * stop yielding again.
 *
 * Interruption: a waiting entry that has not been taken into a group is removed (nothing written). Once taken, the
 * group finishes; the interrupted caller then sees the interruption (its append stands). Leaders run
 * uninterruptibly for the same reason.
 */
import * as Cause from "effect/Cause"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as EventLoop from "./eventLoop.js"

export interface GroupCommit<In, Out, E> {
  readonly submit: (input: In) => Effect.Effect<Out, E>
  /**
   * For a caller that has its fiber at hand: when the writer is idle and uncontended (and `runSync` is given), commits
   * `input` on the spot and returns its result; `undefined` otherwise (then `submit` it). The caller yields after a
   * result (`afterCommit`), as `submit` does.
   */
  readonly trySync: (fiberId: number, input: In) => Exit.Exit<Out, E> | undefined
  /**
   * Whether the writer is idle and uncontended for a submission from fiber `fiberId` (counted as one, for
   * contention): then a caller may write on the spot, synchronously, as `trySync` does.
   */
  readonly idle: (fiberId: number) => boolean
  /**
   * Whether nothing is being written or queued now (contention not counted): for background work (a projection's
   * batch) that may use the writer's connection between groups, not for appends.
   */
  readonly free: () => boolean
  /** Queues `input` for the next group (after `trySync` declined it). */
  readonly enqueue: (input: In) => Effect.Effect<Out, E>
}

/** The longest stretch of synchronous commits one fiber makes before other fibers run. */
const FAIRNESS_MS = 1

let lastYield = 0

/**
 * What follows a synchronous commit. Each one held the thread for an fsync, so once a fiber has committed for
 * `FAIRNESS_MS` it lets other fibers run before it goes on (without it, a fiber appending in a loop holds the thread
 * for Effect's whole op budget, every other appender waiting behind dozens of fsyncs instead of joining a group);
 * once the thread has been at it for `EventLoop.BUDGET_MS`, the yield is a turn of the event loop (timers, I/O).
 * Yielding after every commit instead cost a single appender about 5 µs per append.
 */
export const afterCommit = (): Effect.Effect<void> => {
  if (EventLoop.due()) return EventLoop.yieldToLoop
  const now = performance.now()
  if (now - lastYield < FAIRNESS_MS) return Effect.void
  lastYield = now
  return Effect.yieldNow()
}

interface Entry<In, Out, E> {
  readonly input: In
  state: "queued" | "claimed" | "cancelled" | "done"
  exit: Exit.Exit<Out, E> | undefined
  resume: ((effect: Effect.Effect<Out, E>) => void) | undefined
  onDone: (() => void) | undefined
}

/** How many uncontended groups in a row turn the yield before a group off again. */
const CONTENTION_MEMORY = 64

/**
 * @param run executes one group and returns one result per input, in order (`Exit.fail` for an input that failed on
 *   its own). Failing as a whole (or dying) fails every input of the group.
 * @param size the weight of one input (events in an append); a group stops growing at `maxSize`.
 */
export const make = <In, Out, E>(options: {
  readonly run: (inputs: ReadonlyArray<In>) => Effect.Effect<ReadonlyArray<Exit.Exit<Out, E>>, E>
  /**
   * For a driver that runs statements synchronously (SQLite): commits one input alone, on the spot, and returns its
   * result; `undefined` when the write as a whole failed (nothing committed), and `run` takes over. Only called
   * when the writer is idle, so it cannot interleave with a group.
   */
  readonly runSync?: ((input: In) => Exit.Exit<Out, E> | undefined) | undefined
  readonly size: (input: In) => number
  readonly maxSize: number
  /**
   * Runs the drain of what is left once a leader's own input is done, in a fiber owned by the writer's scope;
   * `false` when that scope is closed (the fiber was not started).
   */
  readonly fork: (effect: Effect.Effect<void>) => Effect.Effect<boolean>
  /** The failure of an input that can no longer be written: the writer's scope closed first. */
  readonly closed: () => E
}): GroupCommit<In, Out, E> => {
  let queue: Array<Entry<In, Out, E>> = []
  let leading = false
  let contention = 0
  let closed = false

  const settle = (entry: Entry<In, Out, E>, exit: Exit.Exit<Out, E>) => {
    entry.exit = exit
    entry.state = "done"
    const resume = entry.resume
    entry.resume = undefined
    resume?.(exit)
    entry.onDone?.()
  }

  /** Takes the next group off the queue: at most `maxSize` in weight (but at least one entry). */
  const nextGroup = (): Array<Entry<In, Out, E>> => {
    const group: Array<Entry<In, Out, E>> = []
    let weight = 0
    let i = 0
    for (; i < queue.length; i++) {
      const entry = queue[i]!
      if (entry.state === "cancelled") continue
      const w = options.size(entry.input)
      if (group.length > 0 && weight + w > options.maxSize) break
      entry.state = "claimed"
      group.push(entry)
      weight += w
    }
    queue = i === queue.length ? [] : queue.slice(i)
    return group
  }

  const groupFailed = (cause: Cause.Cause<E>): Exit.Exit<Out, E> => {
    const failure = Cause.failureOption(cause)
    return failure._tag === "Some" ? Exit.fail(failure.value) : Exit.failCause(cause)
  }

  // `run` is called inside `suspend`, so that even a synchronous throw becomes a failure of this group.
  const runGroup = (group: ReadonlyArray<Entry<In, Out, E>>) =>
    Effect.matchCause(Effect.suspend(() => options.run(group.map((entry) => entry.input))), {
      onFailure: (cause) => {
        const exit = groupFailed(cause)
        for (const entry of group) settle(entry, exit)
      },
      onSuccess: (exits) => {
        if (group.length === 1 && queue.length === 0 && contention > 0) contention--
        for (let i = 0; i < group.length; i++) settle(group[i]!, exits[i]!)
      }
    })

  /** The writer's scope closed: what is queued fails (nothing of it was written), and so does every later input. */
  const close = () => {
    closed = true
    const failed = Exit.fail(options.closed())
    for (const entry of queue) if (entry.state === "queued") settle(entry, failed)
    queue = []
    leading = false
  }

  /**
   * Runs groups until the queue is empty. Leadership ends in the same synchronous step that finds the queue empty,
   * so an entry is either seen here or sees `leading === false` and leads itself: nothing is ever handed to a
   * waiting fiber (which could be interrupted before it acts on it). Once `own` is settled and more is queued, the
   * rest is drained by a background fiber of the writer's scope, so that the leader's caller is not held by other
   * fibers' appends.
   */
  const drain = (own: Entry<In, Out, E>): Effect.Effect<void> =>
    Effect.suspend(() => {
      const group = nextGroup()
      if (group.length === 0) {
        leading = false
        return Effect.void
      }
      return Effect.flatMap(runGroup(group), () => {
        if (own.state === "done" && queue.some((entry) => entry.state === "queued")) {
          return Effect.flatMap(
            options.fork(Effect.onInterrupt(Effect.ensuring(drainInBackground, release), () => Effect.sync(close))),
            (started) => started ? Effect.void : Effect.sync(close)
          )
        }
        // the thread has been committing for a while: let timers and I/O run (appenders keep queueing meanwhile)
        return EventLoop.due() ? Effect.zipRight(EventLoop.yieldToLoop, drain(own)) : drain(own)
      })
    })

  /**
   * The background drain: each group runs uninterruptibly (a group that has started commits or fails as a whole),
   * but the fiber can be interrupted between groups, when the writer's scope closes and its grace period is over:
   * what is still queued then fails (`close`), so that nothing waits forever.
   */
  const drainInBackground: Effect.Effect<void> = Effect.suspend(() => {
    const group = nextGroup()
    if (group.length === 0) {
      leading = false
      return Effect.void
    }
    return Effect.flatMap(
      Effect.uninterruptible(runGroup(group)),
      () => EventLoop.due() ? Effect.zipRight(EventLoop.yieldToLoop, drainInBackground) : drainInBackground
    )
  })

  // Only an internal bug could leave `drain` abnormally; never leave `leading` stuck if it does.
  const release = Effect.sync(() => {
    if (queue.every((entry) => entry.state !== "queued")) leading = false
  })

  /** The leader's work. Its caller's region is uninterruptible: a group that has started commits or fails whole. */
  const lead = (own: Entry<In, Out, E>): Effect.Effect<Out, E> =>
    // When appenders have been contending, let those ready to run join this group first.
    (contention > 0 ? Effect.zipRight(Effect.yieldNow(), drain(own)) : drain(own)).pipe(
      Effect.onExit((exit) => Exit.isSuccess(exit) ? Effect.void : release),
      Effect.zipRight(Effect.suspend(() => own.exit ?? Effect.dieMessage("group commit: entry not settled")))
    )

  const cancel = (entry: Entry<In, Out, E>) =>
    Effect.suspend(() => {
      if (entry.state === "queued") {
        entry.state = "cancelled"
        entry.resume = undefined
        return Effect.void
      }
      // taken into a group that is committing: wait for it, so the append's fate is settled before we are interrupted
      return Effect.async<void>((done) => {
        if (entry.state === "done") return done(Effect.void)
        entry.onDone = () => done(Effect.void)
      })
    })

  /**
   * Leads, or waits for a leader to settle the entry. Runs in an uninterruptible region (`drive`, `enqueue`): the
   * queueing of an entry, the choice and the claim of leadership can never be cut apart by an interruption (a claim
   * without its leader would leave every later append waiting). Only the wait is interruptible, and an interruption
   * of it — even one that arrives the moment the wait begins — cancels the entry unless a group has taken it.
   */
  const driveIn = (
    entry: Entry<In, Out, E>,
    restore: <A, E2, R>(effect: Effect.Effect<A, E2, R>) => Effect.Effect<A, E2, R>
  ): Effect.Effect<Out, E> => {
    if (entry.state === "done") return entry.exit!
    if (!leading) {
      leading = true
      return lead(entry)
    }
    contention = CONTENTION_MEMORY
    return Effect.onInterrupt(restore(wait(entry)), () => cancel(entry))
  }

  const wait = (entry: Entry<In, Out, E>): Effect.Effect<Out, E> =>
    Effect.async<Out, E>((resume) => {
      // re-checked at registration: the fiber may have yielded since the checks above
      if (entry.state === "done") return resume(entry.exit!)
      if (!leading) return resume(drive(entry))
      entry.resume = resume
    })

  // (the mask's function runs inside the uninterruptible region, when the effect runs: no `suspend` needed)
  const drive = (entry: Entry<In, Out, E>): Effect.Effect<Out, E> =>
    Effect.uninterruptibleMask((restore) => driveIn(entry, restore))

  // The fiber of the previous submission, and the turn of the event loop it came in. Submissions from different
  // fibers in one turn mean appenders run concurrently (even if, on a synchronous driver, each append happens to
  // finish before the next fiber runs): group them. Different fibers in different turns are requests one after
  // another (a server runs each in a fiber of its own): nothing to group.
  let lastFiber = -1
  let lastTurn = -1

  const idle = (id: number): boolean => {
    const turn = EventLoop.currentTurn()
    if (id !== lastFiber) {
      if (lastFiber !== -1 && turn === lastTurn) contention = CONTENTION_MEMORY
      lastFiber = id
    }
    lastTurn = turn
    return !closed && !leading && contention === 0 && queue.length === 0
  }

  const free = (): boolean => !closed && !leading && queue.length === 0

  const trySync = (id: number, input: In): Exit.Exit<Out, E> | undefined => {
    if (!idle(id)) return closed ? Exit.fail(options.closed()) : undefined
    return options.runSync === undefined ? undefined : options.runSync(input)
  }

  const enqueue = (input: In): Effect.Effect<Out, E> =>
    Effect.uninterruptibleMask((restore) => {
      const entry: Entry<In, Out, E> = { input, state: "queued", exit: undefined, resume: undefined, onDone: undefined }
      queue.push(entry)
      return driveIn(entry, restore)
    })

  return {
    idle,
    free,
    trySync,
    enqueue,
    submit: (input) =>
      Effect.withFiberRuntime((fiber) => {
        const exit = trySync(fiber.id().id, input)
        return exit === undefined ? enqueue(input) : Effect.zipRight(afterCommit(), exit)
      })
  }
}
