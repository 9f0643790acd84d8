"""An asyncio dynamic batcher, generic over an async batch function.

It knows nothing of HTTP or torch: callers :meth:`Batcher.submit` an item and await its result;
a background loop groups queued items into batches and calls ``handle_batch(items)``, which returns
an awaitable of the results (a coroutine, or a future for work it has already handed on).

Semantics (each one is tested in ``tests/service/test_batching.py``):

* **Cutting a batch.** A :class:`~service.policy.BatchPolicy` decides, from the queue and the
  clock (``time.monotonic()``, never the wall clock, which can jump): the default
  :class:`~service.policy.StaticPolicy` cuts when ``max_batch_size`` items are queued, or when
  ``max_wait_ms`` has passed since the *first* queued item arrived (``max_wait_ms == 0`` is
  "greedy": take whatever is queued); ``policy="adaptive"`` picks size and wait itself under
  ``slo_p99_ms`` (:mod:`service.adaptive`). Whatever the policy, ``max_batch_size`` caps every
  batch and the batcher alone handles deadlines, the bounded queue and the drain. The policy learns
  from every arrival, batch (compute time and, given ``batch_energy``, its energy) and answer.
* **Slots before batches.** With ``max_concurrent_batches`` batches already running (1 by default,
  one batch per model at a time) the loop waits for a slot *before* cutting the next batch, so
  items that arrive during a batch join the next one instead of being cut early into a small batch.
  This is what makes batches grow with load. When a batch's results are in, its slot is freed
  and the next batch cut and started in that same step, before its answers go out; a batch
  function that hands its work on when *called* (rather than when awaited) has it with no turn of
  the event loop in between. One exception to slots first: with ``queue_ahead`` (a batch function
  that queues what it is handed behind the running batches, as the model's executor does), one
  *full* batch may be cut while every slot is busy, when all its items can wait two batches' time
  before their deadlines: it cannot grow by waiting, and queued ahead it starts the moment the
  running batch ends, without waiting for the event loop. Its start, queue waits and batch metrics
  count from then, and until then its items count as waiting (``max_queue``, the queue-depth
  gauge, ``Retry-After``): queueing ahead changes when the model gets a batch, nothing else.
* **Bounded queue, with admission.** ``max_queue`` bounds the items waiting *plus* the places
  reserved with :meth:`Batcher.reserve` for items still being prepared (a request whose image is
  being read and decoded), so a full queue refuses work before it costs anything. ``reserve`` (or
  ``submit`` without a reservation) raises :class:`QueueFullError` (HTTP 429 + ``Retry-After``)
  when that many are taken; nothing is queued in that case. A reservation is an
  :class:`Admission`: ``submit(item, admission=...)`` turns it into a queued item, and
  :meth:`Admission.release` (or leaving its ``with`` block) gives the place back if the item never
  comes (a bad image, a client gone); releasing a used reservation is a no-op.
* **Deadlines.** An item whose deadline passes while it waits is removed from the queue at that
  moment and fails with :class:`DeadlineExceededError` (HTTP 504); it is never computed. A
  deadline only guards the wait: once computing, an item runs to completion.
* **Cancellation.** A caller that goes away (its task is cancelled, e.g. the client disconnected)
  has its item removed from the queue; items of cancelled callers never reach ``handle_batch``.
* **Failures.** An exception from ``handle_batch`` is delivered to every caller of that batch and
  only to them; a result list of the wrong length is a :class:`BatchResultLengthError` for each.
* **Runtime settings.** :meth:`reconfigure` changes size, wait and queue bound while serving; the
  observer hears the settings in force at construction and after every change.
* **Drain.** :meth:`close` stops accepting (:class:`DrainingError`, HTTP 503: new reservations and
  submits without one), answers everything already accepted (batches are cut without waiting once
  draining; items reserved before the drain may still be submitted, and are waited for), and after
  ``drain_timeout_s`` fails what is left with :class:`DrainingError` and logs how many. An item is
  in flight from the moment its batch is cut, so a batch cut but not yet started is waited for and
  counted like a running one.

Improves on Ray Serve's ``_BatchQueue`` (the anchor in STYLE.md): monotonic clock, graceful
drain, per-item deadlines enforced while waiting, and a bounded queue with a typed rejection.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import itertools
import logging
import math
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Generic, Protocol, TypeVar

from service.errors import (
    BatchResultLengthError,
    DeadlineExceededError,
    DrainingError,
    InvalidParameterError,
    QueueFullError,
)
from service.policy import POLICY_NAMES, BatchPolicy, QueueView, make_policy
from service.tasks import create_logged_task

logger = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")

BatchFn = Callable[[list[T]], Awaitable[Sequence[R]]]


@dataclass(frozen=True)
class BatchingConfig:
    """Batching settings; validated on construction so a bad runtime update changes nothing."""

    max_batch_size: int = 32
    max_wait_ms: float = 5.0
    max_queue: int = 1024
    policy: str = "static"  # one of service.policy.POLICY_NAMES
    slo_p99_ms: float | None = None  # the adaptive policies' latency objective

    def __post_init__(self) -> None:
        if self.policy not in POLICY_NAMES:
            raise InvalidParameterError(
                f"batching must be one of {', '.join(POLICY_NAMES)}, got {self.policy!r}"
            )
        if self.slo_p99_ms is not None and not (
            math.isfinite(self.slo_p99_ms) and 0 < self.slo_p99_ms <= 600_000
        ):
            raise InvalidParameterError(f"slo_p99_ms must be in (0, 600000], got {self.slo_p99_ms}")
        if self.policy != "static" and self.slo_p99_ms is None:
            raise InvalidParameterError(
                f"batching {self.policy!r} needs slo_p99_ms, the p99 latency objective"
            )
        if not 1 <= self.max_batch_size <= 4096:
            raise InvalidParameterError(f"max_batch_size must be in 1..4096, got {self.max_batch_size}")
        if not (math.isfinite(self.max_wait_ms) and 0 <= self.max_wait_ms <= 60_000):
            raise InvalidParameterError(f"max_wait_ms must be in 0..60000, got {self.max_wait_ms}")
        if not 1 <= self.max_queue <= 1_000_000:
            raise InvalidParameterError(f"max_queue must be in 1..1000000, got {self.max_queue}")


@dataclass(frozen=True)
class Outcome(Generic[R]):
    """What a caller gets back: the batch function's result for its item, plus batching facts."""

    value: R
    queue_wait_s: float
    batch_size: int


@dataclass(frozen=True)
class DrainReport:
    """What a drain did: items accepted before or during it that were answered (a result or an
    error of their own), items it failed with :class:`DrainingError`, and whether it timed out."""

    answered: int
    failed: int
    timed_out: bool


class Admission:
    """A place in a batcher's queue, reserved by :meth:`Batcher.reserve` before the item exists.

    Pass it to :meth:`Batcher.submit` (which uses it up), or :meth:`release` it; as a context
    manager it is released on leaving the block, so no path leaks the place. Releasing twice, or
    after ``submit`` used it, does nothing.
    """

    __slots__ = ("_owner", "_state")

    def __init__(self, owner: Batcher[Any, Any]) -> None:
        self._owner = owner
        self._state = "reserved"  # then "used" or "released"

    @property
    def active(self) -> bool:
        """Still holding its place (neither used by ``submit`` nor released)."""
        return self._state == "reserved"

    def release(self) -> None:
        if self._state == "reserved":
            self._state = "released"
            self._owner._release_reservation()

    def _use(self, owner: Batcher[Any, Any]) -> None:
        if owner is not self._owner:
            raise RuntimeError("this admission was reserved on another batcher")
        if self._state != "reserved":
            raise RuntimeError(f"this admission was already {self._state}")
        self._state = "used"

    def __enter__(self) -> Admission:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.release()


class BatcherObserver(Protocol):
    """Hooks for metrics; the batcher calls them from the event loop (``on_config`` also from its
    constructor). :class:`NullObserver` has a no-op for each."""

    def on_config(self, config: BatchingConfig) -> None: ...
    def on_batch_start(self, batch_size: int, queue_waits_s: Sequence[float]) -> None: ...
    def on_batch_end(self, batch_size: int, duration_s: float, ok: bool) -> None: ...
    def on_reject(self, reason: str) -> None: ...
    def on_queue_depth(self, depth: int) -> None: ...


class NullObserver:
    def on_config(self, config: BatchingConfig) -> None:
        pass

    def on_batch_start(self, batch_size: int, queue_waits_s: Sequence[float]) -> None:
        pass

    def on_batch_end(self, batch_size: int, duration_s: float, ok: bool) -> None:
        pass

    def on_reject(self, reason: str) -> None:
        pass

    def on_queue_depth(self, depth: int) -> None:
        pass


@dataclass(eq=False)
class _Pending(Generic[T, R]):
    item: T
    future: asyncio.Future[Outcome[R]]
    enqueued_at: float
    deadline: float | None
    timer: asyncio.TimerHandle | None = field(default=None)


@dataclass(eq=False)
class _Run(Generic[T, R]):
    """A batch handed to the batch function: when it started computing (for a batch queued ahead,
    when the batch before it finished), and whether it is still queued ahead."""

    batch: list[_Pending[T, R]]
    started: float
    ahead: bool


class _Once:
    """Calls ``fn`` the first time it is called, and never again."""

    __slots__ = ("_fn",)

    def __init__(self, fn: Callable[[], None]) -> None:
        self._fn: Callable[[], None] | None = fn

    def __call__(self) -> None:
        fn, self._fn = self._fn, None
        if fn is not None:
            fn()


async def _raise(exc: Exception) -> Sequence[Any]:
    raise exc


def _resolve(future: asyncio.Future[Outcome[R]], outcome: Outcome[R] | BaseException) -> bool:
    """Set a future's result or exception unless it is already done; return whether it was set."""
    if future.done():
        return False
    if isinstance(outcome, BaseException):
        future.set_exception(outcome)
    else:
        future.set_result(outcome)
    return True


class Batcher(Generic[T, R]):
    """Groups submitted items into batches for ``handle_batch``; see the module docstring."""

    def __init__(
        self,
        handle_batch: BatchFn[T, R],
        config: BatchingConfig | None = None,
        *,
        max_concurrent_batches: int = 1,
        observer: BatcherObserver | None = None,
        name: str = "batcher",
        batch_energy: Callable[[Sequence[R]], float | None] | None = None,
        policy_seed: Mapping[int, tuple[float, float]] | None = None,
        queue_ahead: bool = False,
    ) -> None:
        if max_concurrent_batches < 1:
            raise ValueError(f"max_concurrent_batches must be >= 1, got {max_concurrent_batches}")
        self._handle_batch = handle_batch
        self._config = config or BatchingConfig()
        self._observer: BatcherObserver = observer or NullObserver()
        self._name = name
        self._max_concurrent = max_concurrent_batches
        self._queue: OrderedDict[int, _Pending[T, R]] = OrderedDict()
        self._ids = itertools.count()
        self._wakeup = asyncio.Event()
        self._busy = 0  # batches handed to the batch function whose slot is not yet free
        self._queue_ahead = queue_ahead
        self._ahead: _Run[T, R] | None = None  # the batch queued ahead, until one before it ends
        self._running: set[asyncio.Task[None]] = set()
        self._in_flight_items = 0  # cut into a batch and not yet answered (started or not)
        self._reserved = 0  # places held by active admissions
        self._loop_task: asyncio.Task[None] | None = None
        self._accepting = False
        self._draining = False
        self._closed = False  # the drain is over: not even reserved items are taken
        self._close_task: asyncio.Task[DrainReport] | None = None
        self._drain_accepted = 0  # items accepted after the drain began (reserved before it)
        self._drain_failed = 0  # items the drain failed with DrainingError
        self._ewma_batch_s: float | None = None
        self._batch_energy = batch_energy
        self._policy_seed = policy_seed
        self._policy = self._make_policy(self._config)
        self._regime: str | None = None
        self._observer.on_config(self._config)

    # --- public API --------------------------------------------------------------------------

    @property
    def config(self) -> BatchingConfig:
        return self._config

    @property
    def policy(self) -> BatchPolicy:
        """The policy cutting batches now (replaced by :meth:`reconfigure`)."""
        return self._policy

    def _make_policy(self, config: BatchingConfig) -> BatchPolicy:
        return make_policy(
            config.policy,
            max_batch_size=config.max_batch_size,
            max_wait_ms=config.max_wait_ms,
            slo_p99_ms=config.slo_p99_ms,
            seed=self._policy_seed,
        )

    @property
    def queue_depth(self) -> int:
        """Items waiting to compute: queued, or cut into a batch queued ahead (``queue_ahead``)."""
        return self._waiting()

    def _waiting(self) -> int:
        # A batch queued ahead has left the queue but still waits: it counts against max_queue,
        # in the queue-depth gauge and in Retry-After as its items did while queued, so that
        # queueing ahead changes when the model gets a batch and nothing else (the simulator
        # models the batcher without it: docs/simulator.md).
        return len(self._queue) + (len(self._ahead.batch) if self._ahead is not None else 0)

    @property
    def in_flight_batches(self) -> int:
        return len(self._running)

    @property
    def in_flight_items(self) -> int:
        """Items cut into a batch and not yet answered, whether or not the batch has started."""
        return self._in_flight_items

    @property
    def reserved(self) -> int:
        """Queue places held by admissions not yet used or released."""
        return self._reserved

    @property
    def accepting(self) -> bool:
        return self._accepting

    def start(self) -> None:
        """Start the batching loop; must be called from a running event loop."""
        if self._loop_task is not None:
            raise RuntimeError(f"{self._name} already started")
        self._accepting = True
        self._loop_task = create_logged_task(self._run(), name=f"{self._name}-loop")

    def reconfigure(
        self,
        *,
        max_batch_size: int | None = None,
        max_wait_ms: float | None = None,
        max_queue: int | None = None,
        policy: str | None = None,
        slo_p99_ms: float | None = None,
    ) -> BatchingConfig:
        """Change settings while serving; invalid values raise and change nothing. A change of
        policy, objective, size or wait starts a new policy (an adaptive one relearns, from its seed).

        Items already queued (and places already reserved) stay when ``max_queue`` shrinks below
        them; new items are refused until queued plus reserved falls below the new bound.
        """
        current = self._config
        config = BatchingConfig(
            max_batch_size=current.max_batch_size if max_batch_size is None else max_batch_size,
            max_wait_ms=current.max_wait_ms if max_wait_ms is None else max_wait_ms,
            max_queue=current.max_queue if max_queue is None else max_queue,
            policy=current.policy if policy is None else policy,
            slo_p99_ms=current.slo_p99_ms if slo_p99_ms is None else slo_p99_ms,
        )
        if (config.policy, config.slo_p99_ms, config.max_batch_size, config.max_wait_ms) != (
            current.policy,
            current.slo_p99_ms,
            current.max_batch_size,
            current.max_wait_ms,
        ):
            self._policy = self._make_policy(config)
            self._regime = None
        self._config = config
        logger.info(
            "%s reconfigured: batching=%s max_batch_size=%d max_wait_ms=%g max_queue=%d slo_p99_ms=%s",
            self._name,
            config.policy,
            config.max_batch_size,
            config.max_wait_ms,
            config.max_queue,
            "none" if config.slo_p99_ms is None else f"{config.slo_p99_ms:g}",
        )
        self._observer.on_config(self._config)
        self._wakeup.set()  # a smaller batch size or wait may complete the batch being formed
        return self._config

    def reserve(self) -> Admission:
        """Reserve a queue place for an item still being prepared; see :class:`Admission`.

        Raises :class:`DrainingError` or :class:`QueueFullError` (queued plus reserved items
        reach ``max_queue``), like :meth:`submit`, before the caller does any work.
        """
        self._check_admission()
        self._reserved += 1
        return Admission(self)

    async def submit(
        self, item: T, *, deadline: float | None = None, admission: Admission | None = None
    ) -> Outcome[R]:
        """Queue ``item`` and wait for its result.

        ``deadline`` is a ``time.monotonic()`` instant by which computing must have *started*.
        ``admission``, from :meth:`reserve`, is used up: the item takes its place, with no
        second queue-full check, and is accepted while a drain is still in progress.
        Raises :class:`DrainingError`, :class:`QueueFullError`, :class:`DeadlineExceededError`,
        or whatever ``handle_batch`` raised for this item's batch; ``RuntimeError`` for an
        admission already used or released.
        """
        if admission is None:
            self._check_admission()
        else:
            admission._use(self)
            self._reserved -= 1
            self._wakeup.set()
            if self._closed:
                self._observer.on_reject("draining")
                raise DrainingError("server shut down before this request could be queued")
        now = time.monotonic()
        loop = asyncio.get_running_loop()
        if deadline is not None and deadline <= now:
            self._observer.on_reject("deadline")
            raise DeadlineExceededError("deadline passed before the request was queued")
        key = next(self._ids)
        pending: _Pending[T, R] = _Pending(item, loop.create_future(), now, deadline)
        if deadline is not None:
            # loop.time() and time.monotonic() share a clock on every platform asyncio supports
            # (both are CLOCK_MONOTONIC), so the deadline translates directly.
            pending.timer = loop.call_at(loop.time() + (deadline - now), self._expire, key)
        self._queue[key] = pending
        self._policy.observe_arrival(now)
        if self._draining:
            self._drain_accepted += 1
        self._observer.on_queue_depth(self._waiting())
        self._wakeup.set()
        try:
            return await pending.future
        finally:
            if pending.timer is not None:
                pending.timer.cancel()
            if self._queue.pop(key, None) is not None:
                # Only reachable when the caller was cancelled while its item was still queued.
                self._observer.on_queue_depth(self._waiting())

    async def close(self, drain_timeout_s: float = 30.0) -> DrainReport:
        """Stop accepting, answer what was accepted, then stop the loop.

        Waits up to ``drain_timeout_s`` for queued, in-flight and reserved items; whatever is
        still waiting after that fails with :class:`DrainingError` (running batches are awaited
        no longer, their callers also get the error). Idempotent: a later or concurrent call
        waits for the same drain (its own timeout is ignored) and returns the same report.
        """
        if self._close_task is None:
            # Synchronously, so that nothing is accepted once close() has been called.
            self._accepting = False
            self._draining = True
            self._wakeup.set()
            pending_before = len(self._queue) + self._in_flight_items
            self._close_task = asyncio.get_running_loop().create_task(
                self._drain(drain_timeout_s, pending_before), name=f"{self._name}-drain"
            )
        return await asyncio.shield(self._close_task)

    # --- internals ---------------------------------------------------------------------------

    def _check_admission(self) -> None:
        """Refuse new work while draining or when queued plus reserved items fill the queue."""
        if not self._accepting:
            self._observer.on_reject("draining")
            raise DrainingError()
        waiting = self._waiting()
        if waiting + self._reserved >= self._config.max_queue:
            self._observer.on_reject("queue_full")
            raise QueueFullError(
                f"queue is full ({waiting} waiting and {self._reserved} being prepared, "
                f"of {self._config.max_queue})",
                retry_after_s=self._retry_after_s(),
            )

    def _release_reservation(self) -> None:
        self._reserved -= 1
        self._wakeup.set()  # a drain may be waiting for this place

    async def _drain(self, drain_timeout_s: float, pending_before: int) -> DrainReport:
        timed_out = False
        loop_task = self._loop_task
        if loop_task is not None and not loop_task.done():
            try:
                await asyncio.wait_for(self._drained(), timeout=max(0.0, drain_timeout_s))
            except TimeoutError:
                timed_out = True
            loop_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await loop_task
        self._closed = True
        for pending in list(self._queue.values()):
            if _resolve(pending.future, DrainingError("server shut down before this request was computed")):
                self._drain_failed += 1
        self._queue.clear()
        for task in list(self._running):
            task.cancel()  # _finish_batch fails its callers with DrainingError
        if self._running:
            await asyncio.gather(*self._running, return_exceptions=True)
        self._observer.on_queue_depth(0)
        failed = self._drain_failed
        answered = pending_before + self._drain_accepted - failed
        if timed_out or failed:
            logger.warning(
                "%s drain timed out after %.1f s: %d accepted requests failed with 503",
                self._name,
                drain_timeout_s,
                failed,
            )
        else:
            logger.info("%s closed: all %d pending requests answered", self._name, answered)
        return DrainReport(answered=answered, failed=failed, timed_out=timed_out)

    async def _drained(self) -> None:
        while self._queue or self._in_flight_items or self._reserved:
            self._wakeup.clear()
            await self._wakeup.wait()

    def _expire(self, key: int) -> None:
        pending = self._queue.pop(key, None)
        if pending is None:
            return
        self._observer.on_reject("deadline")
        self._observer.on_queue_depth(self._waiting())
        waited_ms = (time.monotonic() - pending.enqueued_at) * 1000
        _resolve(
            pending.future,
            DeadlineExceededError(f"deadline passed after {waited_ms:.0f} ms in the queue; not computed"),
        )
        self._wakeup.set()

    def _retry_after_s(self) -> int:
        """Seconds until the queue has likely drained enough to take a new item (at least 1)."""
        per_batch_s = self._ewma_batch_s or 0.1
        ahead = self._waiting() + self._reserved
        batches_ahead = ahead / (self._config.max_batch_size * self._max_concurrent)
        return max(1, math.ceil(batches_ahead * per_batch_s))

    async def _run(self) -> None:
        while True:
            batch = await self._next_batch()
            if batch is None:  # draining and nothing left
                return
            self._start(batch, ahead=self._busy >= self._max_concurrent)

    def _start(self, batch: list[_Pending[T, R]], *, ahead: bool = False) -> None:
        """Take a slot and start ``batch``: the batch function is *called* here, synchronously, so
        a batch function that hands its work on at call time (the model's engine submits to its
        thread and returns a future) has the batch in the model's hands before this returns.
        ``ahead``: every slot is busy and the batch function queues it behind them."""
        self._busy += 1
        run = _Run(batch, time.monotonic(), ahead)
        if ahead:
            self._ahead = run  # it starts computing when a batch before it ends: _promote
            self._observer.on_queue_depth(self._waiting())  # its items still wait
        else:
            self._observer.on_batch_start(len(batch), [run.started - p.enqueued_at for p in batch])
        free_slot = _Once(functools.partial(self._free_slot, run))
        work: Awaitable[Sequence[R]]
        try:
            work = self._handle_batch([p.item for p in batch])
        except Exception as exc:  # raised at call time: the batch's callers get it, as if awaited
            work = _raise(exc)
        task = create_logged_task(self._execute(run, work, free_slot), name=f"{self._name}-batch")
        self._running.add(task)
        task.add_done_callback(functools.partial(self._finish_batch, batch, work, free_slot))

    def _promote(self, run: _Run[T, R]) -> None:
        """A batch queued ahead starts computing now: its start, queue waits and metrics from here."""
        if run.ahead:
            run.ahead = False
            run.started = time.monotonic()
            self._observer.on_batch_start(len(run.batch), [run.started - p.enqueued_at for p in run.batch])
        if self._ahead is run:
            self._ahead = None
            self._observer.on_queue_depth(self._waiting())

    def _may_queue_ahead(self) -> bool:
        """Whether a batch may be cut now although every slot is busy: the batch function queues
        it behind the running ones (``queue_ahead``), none is queued ahead yet, not draining, and
        a *full* batch is waiting, whose items can all wait two batches' time (the running one's
        and their own) before their deadlines (a full batch cannot grow by waiting; cut ahead, it
        is in the model's queue when the running batch ends, and the model does not wait for the
        event loop to hand it over)."""
        if (
            not self._queue_ahead
            or self._ahead is not None
            or self._busy != self._max_concurrent
            or self._draining
            or self._ewma_batch_s is None
        ):
            return False
        cap = self._config.max_batch_size
        if len(self._queue) < cap:
            return False
        latest_start = time.monotonic() + 2 * self._ewma_batch_s
        live = 0
        for pending in self._queue.values():
            if pending.future.done():
                continue
            if pending.deadline is not None and pending.deadline < latest_start:
                return False
            live += 1
            if live == cap:
                return True
        return False

    def _dispatch_ready(self) -> None:
        """Cut and start the next batch now, if a slot is free and the policy cuts one now.

        Called when a batch's results are in, from that batch's task: the next batch reaches the
        model in the same turn of the event loop, before the finished batch's answers go out.
        Handing over through the batching loop's task took four turns of a loop busy with HTTP
        (the model thread idled ~6 ms per batch of a light model, docs/performance.md). Whatever
        this does not cut (the policy waits), the batching loop still cuts when it is due.
        """
        if (
            self._closed
            or self._loop_task is None
            or self._loop_task.done()
            or self._busy >= self._max_concurrent
            or not self._queue
        ):
            return
        size, _ = self._decide()
        if size > 0:
            batch = self._cut(size)
            if batch:
                self._start(batch)

    def _decide(self) -> tuple[int, float | None]:
        """The policy's decision on the queue now: (items to cut, 0 to wait; re-decide by when)."""
        first = next(iter(self._queue.values()))
        view = QueueView(
            now=time.monotonic(),
            queued=len(self._queue),
            oldest_enqueued_at=first.enqueued_at,
            max_batch_size=self._config.max_batch_size,
            draining=self._draining,
        )
        decision = self._policy.decide(view)
        regime = getattr(self._policy, "regime", None)
        if regime != self._regime:
            if self._regime is not None or regime is not None:
                logger.info(
                    "%s: batching policy %s changes regime %s -> %s (%s)",
                    self._name,
                    self._policy.name,
                    self._regime,
                    regime,
                    ", ".join(f"{k}={v:.4g}" for k, v in self._policy.describe().items()),
                )
            self._regime = regime
        size = min(max(decision.size, 0), view.queued, view.max_batch_size)
        if self._draining:
            size = min(view.queued, view.max_batch_size)  # waiting helps nobody once draining
        return size, decision.until

    async def _next_batch(self) -> list[_Pending[T, R]] | None:
        """Wait for a free slot, then a full batch or the first item's max wait; return live items
        (None: stop). Every wake-up asks again: a batch may have been started meanwhile
        (:meth:`_dispatch_ready`), the first item may have expired or been cancelled, items may
        have arrived, and the settings may have changed."""
        while True:
            ahead = self._busy >= self._max_concurrent
            if ahead and not self._may_queue_ahead():
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            if not self._queue:
                if self._draining and not self._reserved:
                    return None  # and nothing more can come: no new reservations while draining
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            size, until = self._decide()
            if ahead and size < self._config.max_batch_size:
                self._wakeup.clear()  # ahead, only the full batch the policy cuts now
                await self._wakeup.wait()
                continue
            if size <= 0:
                self._wakeup.clear()
                timeout = None if until is None else until - time.monotonic()
                if timeout is not None and timeout <= 0:
                    timeout = 0.0005  # a policy that asks again at once: let the loop breathe
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wakeup.wait(), timeout=timeout)
                continue
            batch = self._cut(size)
            if batch:
                return batch

    def _cut(self, size: int) -> list[_Pending[T, R]]:
        """Take up to ``size`` live items off the queue (failing those whose deadline passed)."""
        batch: list[_Pending[T, R]] = []
        now = time.monotonic()
        while self._queue and len(batch) < size:
            _, pending = self._queue.popitem(last=False)
            if pending.timer is not None:
                pending.timer.cancel()
            if pending.future.done():
                continue  # caller cancelled
            if pending.deadline is not None and pending.deadline <= now:
                self._observer.on_reject("deadline")
                _resolve(pending.future, DeadlineExceededError("deadline passed in the queue; not computed"))
                continue
            batch.append(pending)
        self._observer.on_queue_depth(self._waiting())
        # In flight from this moment, before its task starts: a drain beginning in between waits
        # for it and counts it.
        self._in_flight_items += len(batch)
        return batch

    async def _execute(
        self, run: _Run[T, R], work: Awaitable[Sequence[R]], free_slot: Callable[[], None]
    ) -> None:
        batch = run.batch
        ok = False
        try:
            results = await work
            self._promote(run)  # (a batch queued ahead was promoted when the one before it ended)
            if len(results) != len(batch):
                raise BatchResultLengthError(
                    f"batch function returned {len(results)} results for {len(batch)} items"
                )
            finished = time.monotonic()
            started = run.started
            energy_j = self._batch_energy(results) if self._batch_energy is not None else None
            self._policy.observe_batch(len(batch), started, finished - started, energy_j)
            for pending in batch:
                self._policy.observe_latency(finished - pending.enqueued_at, finished)
            # The model is free: the next batch is cut and handed to it (synchronously, in
            # _free_slot) before these answers go out. Resolving first scheduled every waiting
            # request's response ahead of the next batch, and the model idled while they were
            # written (docs/performance.md).
            free_slot()
            for pending, value in zip(batch, results, strict=True):
                _resolve(pending.future, Outcome(value, started - pending.enqueued_at, len(batch)))
            ok = True
        except Exception as exc:  # (a cancelled batch's callers are failed by _finish_batch)
            for pending in batch:
                _resolve(pending.future, exc)
        finally:
            self._promote(run)
            duration = time.monotonic() - run.started
            self._ewma_batch_s = (
                duration if self._ewma_batch_s is None else 0.8 * self._ewma_batch_s + 0.2 * duration
            )
            self._observer.on_batch_end(len(batch), duration, ok)

    def _free_slot(self, run: _Run[T, R]) -> None:
        self._busy -= 1
        if self._ahead is run:
            self._ahead = None  # ended (a drain) before any batch before it did
            self._observer.on_queue_depth(self._waiting())
        elif self._ahead is not None:
            self._promote(self._ahead)  # queued behind this batch: computing from now
        self._wakeup.set()
        self._dispatch_ready()

    def _finish_batch(
        self,
        batch: list[_Pending[T, R]],
        work: Awaitable[Sequence[R]],
        free_slot: Callable[[], None],
        task: asyncio.Task[None],
    ) -> None:
        """A batch's task is done: run or not (cancelled before it started), free its slot (unless
        it did once its results were in)."""
        self._running.discard(task)
        if task.cancelled():
            if inspect.iscoroutine(work):
                work.close()  # never awaited if the task was cancelled before it ran
            elif isinstance(work, asyncio.Future):
                work.cancel()
            for pending in batch:
                if _resolve(
                    pending.future, DrainingError("server shut down before this request's batch finished")
                ):
                    self._drain_failed += 1
        self._in_flight_items -= len(batch)
        free_slot()
        self._wakeup.set()
