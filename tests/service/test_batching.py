"""Batcher behaviour, driven by events rather than sleeps: a gate holds a batch open."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Sequence

import pytest

from service.batching import Batcher, BatchingConfig, DrainReport, NullObserver
from service.errors import (
    BatchResultLengthError,
    DeadlineExceededError,
    DrainingError,
    InvalidParameterError,
    ModelError,
    QueueFullError,
)


class Recorder:
    """A batch function that records each batch and can be held open with a gate."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.gate = asyncio.Event()
        self.gate.set()
        self.entered = asyncio.Event()
        self.fail_on: set[int] = set()
        self.short_result = False

    async def __call__(self, items: list[int]) -> Sequence[int]:
        self.batches.append(list(items))
        self.entered.set()
        await self.gate.wait()
        if self.fail_on.intersection(items):
            raise RuntimeError(f"boom on {sorted(self.fail_on.intersection(items))}")
        if self.short_result:
            return [i * 10 for i in items][:-1]
        return [i * 10 for i in items]

    @property
    def computed(self) -> list[int]:
        return [i for b in self.batches for i in b]


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
async def make_batcher(recorder: Recorder) -> AsyncIterator[object]:
    made: list[Batcher[int, int]] = []

    def make(**config: float) -> Batcher[int, int]:
        b: Batcher[int, int] = Batcher(recorder, BatchingConfig(**config))  # type: ignore[arg-type]
        b.start()
        made.append(b)
        return b

    yield make
    recorder.gate.set()
    for b in made:
        await b.close(drain_timeout_s=5)


async def hold_first_batch(batcher: Batcher[int, int], recorder: Recorder) -> asyncio.Task[object]:
    """Submit item 0 and keep its batch running until ``recorder.gate`` is set.

    Item 0 is cut at once (greedy), then the batcher's own max wait is restored.
    """
    wait_ms = batcher.config.max_wait_ms
    batcher.reconfigure(max_wait_ms=0)
    recorder.gate.clear()
    task = asyncio.create_task(batcher.submit(0))
    await recorder.entered.wait()
    batcher.reconfigure(max_wait_ms=wait_ms)
    return task  # type: ignore[return-value]


async def test_batch_cut_by_size(make_batcher, recorder: Recorder) -> None:
    batcher = make_batcher(max_batch_size=4, max_wait_ms=60_000)
    first = await hold_first_batch(batcher, recorder)
    tasks = [asyncio.create_task(batcher.submit(i)) for i in range(1, 9)]
    await asyncio.sleep(0)  # let the submits enqueue
    recorder.gate.set()
    outcomes = await asyncio.gather(*tasks)
    await first
    # A one-minute wait could never elapse here: both batches were cut because they were full.
    assert recorder.batches == [[0], [1, 2, 3, 4], [5, 6, 7, 8]]
    assert [o.value for o in outcomes] == [i * 10 for i in range(1, 9)]
    assert {o.batch_size for o in outcomes} == {4}


async def test_batch_cut_by_time_from_first_arrival(make_batcher, recorder: Recorder) -> None:
    batcher = make_batcher(max_batch_size=64, max_wait_ms=20)
    outcome = await batcher.submit(7)
    assert recorder.batches == [[7]]
    assert outcome.batch_size == 1
    # The wait is counted from the first arrival, not restarted by later ones.
    assert outcome.queue_wait_s >= 0.019


async def test_greedy_mode_takes_whatever_is_queued(make_batcher, recorder: Recorder) -> None:
    batcher = make_batcher(max_batch_size=64, max_wait_ms=0)
    first = await hold_first_batch(batcher, recorder)
    tasks = [asyncio.create_task(batcher.submit(i)) for i in range(1, 4)]
    await asyncio.sleep(0)
    recorder.gate.set()
    await asyncio.gather(first, *tasks)
    assert recorder.batches == [[0], [1, 2, 3]]


async def test_deadline_expiry_never_computes(make_batcher, recorder: Recorder) -> None:
    batcher = make_batcher(max_batch_size=8, max_wait_ms=0)
    first = await hold_first_batch(batcher, recorder)
    doomed = asyncio.create_task(batcher.submit(99, deadline=time.monotonic() + 0.01))
    survivor = asyncio.create_task(batcher.submit(5))
    with pytest.raises(DeadlineExceededError):
        await doomed  # fails while batch 0 still holds the only slot
    assert batcher.queue_depth == 1
    recorder.gate.set()
    await first
    assert (await survivor).value == 50
    assert 99 not in recorder.computed


async def test_past_deadline_is_refused_at_submit(make_batcher) -> None:
    batcher = make_batcher()
    with pytest.raises(DeadlineExceededError):
        await batcher.submit(1, deadline=time.monotonic() - 1)


async def test_full_queue_rejects_with_retry_after(make_batcher, recorder: Recorder) -> None:
    batcher = make_batcher(max_batch_size=2, max_wait_ms=0, max_queue=3)
    first = await hold_first_batch(batcher, recorder)
    queued = [asyncio.create_task(batcher.submit(i)) for i in range(1, 4)]
    await asyncio.sleep(0)
    assert batcher.queue_depth == 3
    with pytest.raises(QueueFullError) as info:
        await batcher.submit(4)
    assert info.value.status_code == 429
    assert int(info.value.headers["Retry-After"]) >= 1
    recorder.gate.set()
    await asyncio.gather(first, *queued)
    assert 4 not in recorder.computed
    assert (await batcher.submit(5)).value == 50  # room again


async def test_failing_batch_fails_only_its_callers(make_batcher, recorder: Recorder) -> None:
    batcher = make_batcher(max_batch_size=2, max_wait_ms=0)
    first = await hold_first_batch(batcher, recorder)
    recorder.fail_on = {1}
    bad = [asyncio.create_task(batcher.submit(i)) for i in (1, 2)]
    good = [asyncio.create_task(batcher.submit(i)) for i in (3, 4)]
    await asyncio.sleep(0)
    recorder.gate.set()
    await first
    results = await asyncio.gather(*bad, return_exceptions=True)
    assert all(isinstance(r, RuntimeError) and "boom" in str(r) for r in results)
    assert [o.value for o in await asyncio.gather(*good)] == [30, 40]
    assert recorder.batches == [[0], [1, 2], [3, 4]]
    assert (await batcher.submit(6)).value == 60  # and the batcher keeps serving


async def test_wrong_length_result_is_an_error(make_batcher, recorder: Recorder) -> None:
    batcher = make_batcher(max_batch_size=4, max_wait_ms=0)
    recorder.short_result = True
    with pytest.raises(BatchResultLengthError):
        await batcher.submit(1)
    recorder.short_result = False
    assert (await batcher.submit(2)).value == 20


async def test_cancelled_caller_is_dropped(make_batcher, recorder: Recorder) -> None:
    batcher = make_batcher(max_batch_size=8, max_wait_ms=0)
    first = await hold_first_batch(batcher, recorder)
    gone = asyncio.create_task(batcher.submit(13))
    stays = asyncio.create_task(batcher.submit(14))
    await asyncio.sleep(0)
    gone.cancel()
    with pytest.raises(asyncio.CancelledError):
        await gone
    assert batcher.queue_depth == 1
    recorder.gate.set()
    await first
    assert (await stays).value == 140
    assert 13 not in recorder.computed


async def test_runtime_reconfiguration(make_batcher, recorder: Recorder) -> None:
    batcher = make_batcher(max_batch_size=2, max_wait_ms=60_000)
    first = await hold_first_batch(batcher, recorder)
    batcher.reconfigure(max_batch_size=3)
    tasks = [asyncio.create_task(batcher.submit(i)) for i in range(1, 4)]
    await asyncio.sleep(0)
    recorder.gate.set()
    await asyncio.gather(first, *tasks)
    assert recorder.batches[-1] == [1, 2, 3]
    # A long wait becomes short at runtime: the lone item is cut without waiting a minute.
    recorder.gate.clear()
    lone = asyncio.create_task(batcher.submit(9))
    await asyncio.sleep(0)
    batcher.reconfigure(max_wait_ms=0)
    recorder.gate.set()
    assert (await lone).batch_size == 1
    with pytest.raises(InvalidParameterError):
        batcher.reconfigure(max_batch_size=0)
    assert batcher.config == BatchingConfig(max_batch_size=3, max_wait_ms=0, max_queue=1024)


async def test_drain_answers_every_accepted_request(recorder: Recorder) -> None:
    batcher: Batcher[int, int] = Batcher(recorder, BatchingConfig(max_batch_size=2, max_wait_ms=60_000))
    batcher.start()
    first = await hold_first_batch(batcher, recorder)
    accepted = [asyncio.create_task(batcher.submit(i)) for i in range(1, 6)]
    await asyncio.sleep(0)
    closing = asyncio.create_task(batcher.close(drain_timeout_s=30))
    await asyncio.sleep(0)
    with pytest.raises(DrainingError):
        await batcher.submit(100)  # no new work while draining
    recorder.gate.set()
    report = await closing
    await first
    assert [o.value for o in await asyncio.gather(*accepted)] == [10, 20, 30, 40, 50]
    # Draining cuts batches without waiting the minute-long max wait.
    assert recorder.batches == [[0], [1, 2], [3, 4], [5]]
    assert report.answered == 6 and report.failed == 0 and not report.timed_out


async def test_drain_timeout_fails_leftovers_with_503(recorder: Recorder) -> None:
    batcher: Batcher[int, int] = Batcher(recorder, BatchingConfig(max_batch_size=1, max_wait_ms=0))
    batcher.start()
    first = await hold_first_batch(batcher, recorder)
    queued = asyncio.create_task(batcher.submit(1))
    await asyncio.sleep(0)
    report = await batcher.close(drain_timeout_s=0.01)
    assert report.timed_out
    for task in (first, queued):
        with pytest.raises(DrainingError):
            await task
    assert 1 not in recorder.computed


async def test_concurrent_batches_when_configured(recorder: Recorder) -> None:
    batcher: Batcher[int, int] = Batcher(
        recorder, BatchingConfig(max_batch_size=1, max_wait_ms=0), max_concurrent_batches=2
    )
    batcher.start()
    recorder.gate.clear()
    tasks = [asyncio.create_task(batcher.submit(i)) for i in range(3)]
    while len(recorder.batches) < 2:
        await asyncio.sleep(0)
    assert batcher.in_flight_batches == 2  # two run at once, the third waits for a slot
    recorder.gate.set()
    await asyncio.gather(*tasks)
    await batcher.close()


def test_config_validation_names_the_value() -> None:
    with pytest.raises(InvalidParameterError, match=r"max_wait_ms.*-1"):
        BatchingConfig(max_wait_ms=-1)
    with pytest.raises(InvalidParameterError, match="max_queue"):
        BatchingConfig(max_queue=0)


class ConfigLog(NullObserver):
    def __init__(self) -> None:
        self.configs: list[BatchingConfig] = []

    def on_config(self, config: BatchingConfig) -> None:
        self.configs.append(config)


async def test_the_observer_hears_the_settings_at_construction_and_after_each_change(
    recorder: Recorder,
) -> None:
    log = ConfigLog()
    batcher: Batcher[int, int] = Batcher(recorder, BatchingConfig(max_batch_size=8), observer=log)
    assert log.configs == [BatchingConfig(max_batch_size=8)]
    batcher.reconfigure(max_wait_ms=0)
    with pytest.raises(InvalidParameterError):
        batcher.reconfigure(max_queue=0)  # refused: changes nothing, nothing heard
    assert log.configs == [BatchingConfig(max_batch_size=8), BatchingConfig(max_batch_size=8, max_wait_ms=0)]


class CutSignal(NullObserver):
    """An observer whose ``cut`` event is set when the queue empties after a submit: a batch
    was just cut, and its ``handle_batch`` has not started yet."""

    def __init__(self) -> None:
        self.cut = asyncio.Event()
        self._queued = False

    def on_queue_depth(self, depth: int) -> None:
        if depth > 0:
            self._queued = True
        elif self._queued:
            self.cut.set()


async def test_drain_counts_a_batch_cut_but_not_started(recorder: Recorder) -> None:
    signal = CutSignal()
    batcher: Batcher[int, int] = Batcher(recorder, BatchingConfig(max_wait_ms=0), observer=signal)
    batcher.start()
    submitted = asyncio.create_task(batcher.submit(3))
    await signal.cut.wait()  # the batch [3] is cut; its handle_batch has not run yet
    assert recorder.batches == []
    report = await batcher.close(drain_timeout_s=30)
    assert (await submitted).value == 30  # awaited, not dropped
    assert recorder.batches == [[3]]
    assert report == DrainReport(answered=1, failed=0, timed_out=False)


async def test_drain_timeout_fails_a_batch_cut_but_not_started(recorder: Recorder) -> None:
    signal = CutSignal()
    batcher: Batcher[int, int] = Batcher(recorder, BatchingConfig(max_wait_ms=0), observer=signal)
    batcher.start()
    recorder.gate.clear()
    submitted = asyncio.create_task(batcher.submit(3))
    await signal.cut.wait()
    report = await batcher.close(drain_timeout_s=0)
    # Its caller is answered (never left waiting), whether or not the batch had started.
    with pytest.raises(DrainingError):
        await asyncio.wait_for(submitted, timeout=30)
    assert report.timed_out and report.answered + report.failed == 1
    assert batcher.in_flight_items == 0


# --- admission: a queue place reserved before the item exists ---------------------------------


async def test_reservations_count_toward_max_queue(make_batcher, recorder: Recorder) -> None:
    batcher = make_batcher(max_batch_size=1, max_wait_ms=0, max_queue=2)
    first = await hold_first_batch(batcher, recorder)
    a = batcher.reserve()
    b = batcher.reserve()
    assert batcher.reserved == 2 and batcher.queue_depth == 0
    with pytest.raises(QueueFullError) as info:
        batcher.reserve()
    assert int(info.value.headers["Retry-After"]) >= 1
    with pytest.raises(QueueFullError):
        await batcher.submit(9)  # a submit without a reservation sees the reserved places too
    # Submitting with a reservation consumes it: the place moves from reserved to queued.
    queued = asyncio.create_task(batcher.submit(1, admission=a))
    await asyncio.sleep(0)
    assert batcher.reserved == 1 and batcher.queue_depth == 1
    with pytest.raises(QueueFullError):
        batcher.reserve()
    b.release()  # e.g. the request's image did not decode
    b.release()  # idempotent
    assert batcher.reserved == 0
    c = batcher.reserve()
    recorder.gate.set()
    await first
    assert (await queued).value == 10
    assert (await batcher.submit(2, admission=c)).value == 20
    assert batcher.reserved == 0
    assert 9 not in recorder.computed


async def test_reservation_is_released_on_every_failure(make_batcher, recorder: Recorder) -> None:
    batcher = make_batcher(max_batch_size=1, max_wait_ms=0, max_queue=1)
    with pytest.raises(ValueError), batcher.reserve():
        raise ValueError("the body was not an image")
    assert batcher.reserved == 0
    with batcher.reserve() as admission, pytest.raises(DeadlineExceededError):  # refused at submit
        await batcher.submit(1, deadline=time.monotonic() - 1, admission=admission)
    assert batcher.reserved == 0
    first = await hold_first_batch(batcher, recorder)
    with batcher.reserve() as admission:  # the caller goes away while its item is queued
        gone = asyncio.create_task(batcher.submit(2, admission=admission))
        await asyncio.sleep(0)
        gone.cancel()
        with pytest.raises(asyncio.CancelledError):
            await gone
    assert batcher.reserved == 0 and batcher.queue_depth == 0
    with batcher.reserve() as admission:  # cancelled before its submit ever ran
        never = asyncio.create_task(batcher.submit(3, admission=admission))
        never.cancel()
        with pytest.raises(asyncio.CancelledError):
            await never
    assert batcher.reserved == 0
    with batcher.reserve() as admission:
        pass  # never used
    with pytest.raises(RuntimeError, match="released"):
        await batcher.submit(4, admission=admission)
    recorder.gate.set()
    await first
    assert (await batcher.submit(5)).value == 50  # no place leaked: max_queue is 1
    assert recorder.computed == [0, 5]


async def test_drain_waits_for_reserved_requests(recorder: Recorder) -> None:
    batcher: Batcher[int, int] = Batcher(recorder, BatchingConfig(max_wait_ms=0))
    batcher.start()
    admission = batcher.reserve()  # a request admitted, its image still decoding
    closing = asyncio.create_task(batcher.close(drain_timeout_s=30))
    await asyncio.sleep(0)
    with pytest.raises(DrainingError):
        batcher.reserve()  # no new admissions while draining
    with pytest.raises(DrainingError):
        await batcher.submit(8)
    assert not closing.done()
    assert (await batcher.submit(7, admission=admission)).value == 70  # admitted before: answered
    report = await closing
    assert report == DrainReport(answered=1, failed=0, timed_out=False)


async def test_reservation_submitted_after_the_drain_timeout_is_refused(recorder: Recorder) -> None:
    batcher: Batcher[int, int] = Batcher(recorder, BatchingConfig(max_wait_ms=0))
    batcher.start()
    admission = batcher.reserve()
    report = await batcher.close(drain_timeout_s=0)
    assert report.timed_out
    with pytest.raises(DrainingError):
        await batcher.submit(7, admission=admission)
    assert batcher.reserved == 0 and recorder.computed == []


async def test_close_twice_returns_the_same_report(recorder: Recorder) -> None:
    batcher: Batcher[int, int] = Batcher(recorder, BatchingConfig(max_wait_ms=0))
    batcher.start()
    first = await hold_first_batch(batcher, recorder)
    one = asyncio.create_task(batcher.close(drain_timeout_s=30))
    two = asyncio.create_task(batcher.close(drain_timeout_s=30))
    await asyncio.sleep(0)
    recorder.gate.set()
    assert (await first).value == 0  # type: ignore[attr-defined]
    assert await one == await two == DrainReport(answered=1, failed=0, timed_out=False)


async def test_next_batch_reaches_the_model_before_the_previous_answers_go_out(
    make_batcher, recorder: Recorder
) -> None:
    """When a batch's results come in and a full batch is queued, that batch is handed to the batch
    function before the finished batch's callers are woken: the model does not idle while the
    answers are written (docs/performance.md)."""
    batcher = make_batcher(max_batch_size=2, max_wait_ms=60_000)
    events: list[str] = []
    first = await hold_first_batch(batcher, recorder)
    first.add_done_callback(lambda _: events.append("answer 0"))
    queued = [asyncio.create_task(batcher.submit(i)) for i in (1, 2)]
    await asyncio.sleep(0)  # both queued: a full batch waits for the model
    recorder.entered.clear()

    async def watch_second_batch() -> None:
        await recorder.entered.wait()
        events.append("batch [1, 2] started")

    watcher = asyncio.create_task(watch_second_batch())
    recorder.gate.set()
    outcomes = await asyncio.gather(first, *queued)
    await watcher
    assert recorder.batches == [[0], [1, 2]]
    assert [o.value for o in outcomes] == [0, 10, 20]  # type: ignore[attr-defined]
    # The second batch entered the batch function before the first one's caller was answered.
    assert events.index("batch [1, 2] started") < events.index("answer 0")


def _submitting_model() -> tuple[
    list[list[int]],
    list[asyncio.Future[Sequence[int]]],
    Callable[[list[int]], asyncio.Future[Sequence[int]]],
]:
    """A batch function that hands its work on when called, as the model's engine does: it records
    each batch and returns a future the test resolves (the batches it is handed queue, in order)."""
    loop = asyncio.get_running_loop()
    calls: list[list[int]] = []
    futures: list[asyncio.Future[Sequence[int]]] = []

    def submit(items: list[int]) -> asyncio.Future[Sequence[int]]:
        calls.append(list(items))
        futures.append(loop.create_future())
        return futures[-1]

    return calls, futures, submit


async def test_a_batch_function_that_hands_work_on_when_called_gets_the_next_batch_in_the_same_turn() -> None:
    """A batch function that submits at call time (the model's engine: a thread pool's future) is
    called for the next batch in the very turn of the event loop in which the previous batch's
    results arrive; handing over through the batching loop's task took four turns of a busy loop
    (the light model's thread idled ~6 ms per batch, docs/performance.md)."""
    calls, futures, submit_now = _submitting_model()
    batcher: Batcher[int, int] = Batcher(submit_now, BatchingConfig(max_batch_size=2, max_wait_ms=60_000))
    batcher.start()
    first = asyncio.create_task(batcher.submit(0))
    while not calls:  # [0] waits its max wait; make it greedy for this one
        batcher.reconfigure(max_wait_ms=0)
        await asyncio.sleep(0)
    batcher.reconfigure(max_wait_ms=60_000)
    queued = [asyncio.create_task(batcher.submit(i)) for i in (1, 2)]
    await asyncio.sleep(0)
    assert calls == [[0]]  # a full batch is queued while the model is busy
    futures[0].set_result([0])
    await asyncio.sleep(0)  # one turn: the batch's task wakes with its results
    assert calls == [[0], [1, 2]]
    assert not first.done()  # the answer goes out after the hand-over
    futures[1].set_result([10, 20])
    assert [o.value for o in await asyncio.gather(first, *queued)] == [0, 10, 20]
    assert (await batcher.close(drain_timeout_s=5)).failed == 0


async def test_a_batch_function_that_raises_when_called_fails_only_that_batch() -> None:
    def broken(items: list[int]) -> asyncio.Future[Sequence[int]]:
        if 1 in items:
            raise RuntimeError("refused at call time")
        future: asyncio.Future[Sequence[int]] = asyncio.get_running_loop().create_future()
        future.set_result([i * 10 for i in items])
        return future

    batcher: Batcher[int, int] = Batcher(broken, BatchingConfig(max_batch_size=1, max_wait_ms=0))
    batcher.start()
    with pytest.raises(RuntimeError, match="refused at call time"):
        await batcher.submit(1)
    assert (await batcher.submit(2)).value == 20  # and the batcher keeps serving
    await batcher.close(drain_timeout_s=5)


class Starts(NullObserver):
    def __init__(self) -> None:
        self.starts: list[int] = []
        self.depths: list[int] = []

    def on_batch_start(self, batch_size: int, queue_waits_s: Sequence[float]) -> None:
        self.starts.append(batch_size)

    def on_queue_depth(self, depth: int) -> None:
        self.depths.append(depth)


async def _queued_model(
    *, queue_ahead: bool, max_queue: int = 1024
) -> tuple[Batcher[int, int], list[list[int]], list[asyncio.Future[Sequence[int]]], Starts]:
    """A batcher of max batch 2 over a 'model' that queues what it is handed (futures the test
    resolves), after one finished batch (so it knows how long a batch takes)."""
    calls, futures, model = _submitting_model()
    starts = Starts()
    batcher: Batcher[int, int] = Batcher(
        model,
        BatchingConfig(max_batch_size=2, max_wait_ms=60_000, max_queue=max_queue),
        observer=starts,
        queue_ahead=queue_ahead,
    )
    batcher.start()
    warm = [asyncio.create_task(batcher.submit(i)) for i in (100, 101)]
    while not futures:
        await asyncio.sleep(0)
    futures[0].set_result([0, 0])
    await asyncio.gather(*warm)
    return batcher, calls, futures, starts


async def _turns(n: int = 5) -> None:
    for _ in range(n):
        await asyncio.sleep(0)


async def test_a_full_batch_is_queued_ahead_of_the_running_one_when_the_model_queues() -> None:
    batcher, calls, futures, starts = await _queued_model(queue_ahead=True)
    running = [asyncio.create_task(batcher.submit(i)) for i in (1, 2)]
    await _turns()
    assert calls[1:] == [[1, 2]]
    one = asyncio.create_task(batcher.submit(3))
    await _turns()
    assert calls[1:] == [[1, 2]]  # not full: it may still grow, so it waits for the slot
    ahead = [one, asyncio.create_task(batcher.submit(4))]
    later = [asyncio.create_task(batcher.submit(i)) for i in (5, 6)]
    await _turns()
    assert calls[1:] == [[1, 2], [3, 4]]  # full: handed over while [1, 2] computes; one ahead only
    assert starts.starts == [2, 2]  # [3, 4] has not started computing: no metrics for it yet
    assert batcher.in_flight_items == 4
    futures[1].set_result([10, 20])
    await _turns()
    assert starts.starts == [2, 2, 2]  # [3, 4] computes from the moment [1, 2] ended
    assert calls[1:] == [[1, 2], [3, 4], [5, 6]]  # and [5, 6] is now the one queued ahead
    futures[2].set_result([30, 40])
    futures[3].set_result([50, 60])
    outcomes = await asyncio.gather(*running, *ahead, *later)
    assert [o.value for o in outcomes] == [10, 20, 30, 40, 50, 60]
    assert (await batcher.close(drain_timeout_s=5)).failed == 0


async def test_a_batch_queued_ahead_still_counts_as_waiting_for_the_queue_bound_and_depth() -> None:
    # Queueing ahead changes when the model gets a batch, nothing else: its items keep their
    # places in max_queue (429 at the same point as without it), the depth gauge and Retry-After.
    batcher, calls, futures, starts = await _queued_model(queue_ahead=True, max_queue=4)
    running = [asyncio.create_task(batcher.submit(i)) for i in (1, 2)]
    await _turns()
    waiting = [asyncio.create_task(batcher.submit(i)) for i in (3, 4, 5, 6)]
    await _turns()
    assert calls[1:] == [[1, 2], [3, 4]]  # [3, 4] queued ahead, [5, 6] in the queue
    assert batcher.queue_depth == 4 and starts.depths[-1] == 4
    with pytest.raises(QueueFullError):
        await batcher.submit(7)
    futures[1].set_result([10, 20])
    await _turns()
    assert calls[1:] == [[1, 2], [3, 4], [5, 6]]  # [3, 4] computes, [5, 6] is ahead now
    assert batcher.queue_depth == 2 and starts.depths[-1] == 2
    extra = [asyncio.create_task(batcher.submit(i)) for i in (7, 8)]
    await _turns()
    assert batcher.queue_depth == 4
    futures[2].set_result([30, 40])
    await _turns()
    futures[3].set_result([50, 60])
    await _turns()
    futures[4].set_result([70, 80])
    outcomes = await asyncio.gather(*running, *waiting, *extra)
    assert [o.value for o in outcomes] == [10, 20, 30, 40, 50, 60, 70, 80]
    assert batcher.queue_depth == 0 and starts.depths[-1] == 0
    await batcher.close(drain_timeout_s=5)


async def test_a_batch_queued_ahead_that_fails_first_fails_alone_and_leaves_the_queue() -> None:
    batcher, calls, futures, starts = await _queued_model(queue_ahead=True)
    running = [asyncio.create_task(batcher.submit(i)) for i in (1, 2)]
    await _turns()
    ahead = [asyncio.create_task(batcher.submit(i)) for i in (3, 4)]
    await _turns()
    assert calls[1:] == [[1, 2], [3, 4]] and batcher.queue_depth == 2
    futures[2].set_exception(ModelError("model failed on this batch"))  # before [1, 2] ends
    for task in ahead:
        with pytest.raises(ModelError):
            await task
    assert batcher.queue_depth == 0 and starts.depths[-1] == 0
    futures[1].set_result([10, 20])
    assert [o.value for o in await asyncio.gather(*running)] == [10, 20]
    later = [asyncio.create_task(batcher.submit(i)) for i in (5, 6)]
    await _turns()
    assert calls[-1] == [5, 6]  # each batch freed its slot once: the next one is cut at once
    futures[-1].set_result([50, 60])
    assert [o.value for o in await asyncio.gather(*later)] == [50, 60]
    await batcher.close(drain_timeout_s=5)


async def test_a_drain_that_times_out_fails_a_batch_queued_ahead_and_empties_the_queue_gauge() -> None:
    batcher, calls, _, starts = await _queued_model(queue_ahead=True)
    tasks = [asyncio.create_task(batcher.submit(i)) for i in (1, 2, 3, 4)]
    await _turns()
    assert calls[1:] == [[1, 2], [3, 4]] and starts.depths[-1] == 2  # [1, 2] never ends
    report = await batcher.close(drain_timeout_s=0.05)
    assert report.timed_out and report.failed == 4
    for task in tasks:
        with pytest.raises(DrainingError):
            await task
    assert batcher.queue_depth == 0 and starts.depths[-1] == 0


async def test_no_batch_is_queued_ahead_by_default_or_past_a_near_deadline() -> None:
    for queue_ahead, deadline_s in ((False, None), (True, 0.0)):
        batcher, calls, futures, _ = await _queued_model(queue_ahead=queue_ahead)
        running = [asyncio.create_task(batcher.submit(i)) for i in (1, 2)]
        await _turns()
        # A deadline closer than two batches' time: not cut ahead (a batch "takes" a minute here).
        deadline = None
        if deadline_s is not None:
            batcher._ewma_batch_s = 60.0
            deadline = time.monotonic() + 30
        waiting = [asyncio.create_task(batcher.submit(i, deadline=deadline)) for i in (3, 4)]
        await _turns()
        assert calls[1:] == [[1, 2]], (queue_ahead, deadline_s)
        futures[1].set_result([10, 20])
        await _turns()
        assert calls[1:] == [[1, 2], [3, 4]]
        futures[2].set_result([30, 40])
        assert [o.value for o in await asyncio.gather(*running, *waiting)] == [10, 20, 30, 40]
        await batcher.close(drain_timeout_s=5)
