"""A discrete-event simulation of greenserve's batcher: a trace in, the run's figures out, no server.

It replays an arrival trace (:class:`~loadgen.trace.Trace`) through the rules of
:mod:`service.batching`, with each batch taking the time and energy a :class:`ModelProfile` gives
for its size, and predicts the figures a real sweep measures (:class:`~loadgen.figures.RunFigures`,
same fields, same percentile definition), so that the two can be compared field by field. Time is
simulated: nothing sleeps, and a trace of 10 000 arrivals takes a few tens of milliseconds.

The batcher's rules, as simulated (``docs/simulator.md`` has the model and what it ignores):

* a batch is cut when ``max_batch_size`` items are queued, or ``max_wait_ms`` after the arrival of
  the *first* queued item; ``max_wait_ms == 0`` takes whatever is queued. Given a ``policy``
  (:class:`~service.policy.BatchPolicy`, the server's own objects), every cut is the policy's
  decision instead, asked on the simulated clock, and the policy learns from simulated arrivals,
  batches and answers as it does in the server;
* slots before batches: with ``max_concurrent_batches`` batches running, nothing is cut until one
  ends, so arrivals during a batch join the next one;
* a request that finds ``max_queue`` items waiting is rejected (429) and never queued;
* a request whose deadline (``timeout_ms`` after its arrival) passes while it waits leaves the
  queue at that instant (504); the deadline only guards the wait, a cut item always completes.

Events at the same instant are taken in one fixed order, where the real server would race:
batches ending, then deadlines passing, then arrivals, then cuts. So an arrival at the very
instant of a cut joins that batch, an item whose deadline is that instant does not, and a batch
ending at that instant frees its slot for it.
"""

from __future__ import annotations

import dataclasses
import heapq
import math
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from loadgen.errors import GridError
from loadgen.figures import RunFigures, percentiles_ms
from loadgen.trace import Trace
from service.policy import BatchPolicy, QueueView
from studies.kit.files import write_csv_atomic
from studies.profile.format import CPU_SOURCES, ModelProfile
from studies.sweep.settings import GREEDY, SweepConfig

#: The server's defaults (service.config.Settings), so that a bare ``SimConfig()`` is a default server.
DEFAULT_MAX_BATCH_SIZE = 32
DEFAULT_MAX_WAIT_MS = 5.0
DEFAULT_MAX_QUEUE = 1024
DEFAULT_TIMEOUT_MS = 30_000.0

#: A policy that waits until a moment already past is asked again this much later, as the server's
#: batcher does (service.batching: "let the loop breathe"), so that it cannot stall simulated time.
POLICY_RETRY_S = 0.0005


@dataclass(frozen=True)
class SimConfig:
    """One batching configuration, and the simulator's model of the server around the batcher.

    The first five fields are the server's settings of the same names (``timeout_ms`` is the
    deadline every request gets: the server's ``default_timeout_ms``, or the load generator's
    ``X-Request-Timeout-Ms``; None: no deadline). The others describe costs the profile does not
    contain; all default to zero, which simulates the batcher and the model alone:

    * ``compute_scale`` multiplies the profile's batch latency: a served batch shares the CPU (or
      the GIL) with decoding and HTTP, and can compute slower than it did alone offline;
    * ``batch_overhead_ms`` is added to every batch's service time: handing the batch to the model
      thread and back, top-k, resolving the futures;
    * ``pre_queue_ms`` is the time from a request's arrival to its entry into the queue: receiving
      the body, decoding and preprocessing (a profile's ``preprocess_ms_per_image``). It delays
      queue entry, counts against the deadline, and does not occupy the model;
    * ``post_batch_ms`` is the time from a batch's end to each of its responses;
    * ``energy_scale`` multiplies the profile's batch energy: for a CPU meter a batch that
      computes slower because it shares the machine also draws power longer;
    * ``service_cv`` makes service times random: each batch's time is drawn from a gamma
      distribution with the mean above and this coefficient of variation (0: the mean, always),
      from a generator seeded with ``seed``, so a run is still reproducible. A served model's
      time varies more than offline (the machine is shared with decoding, HTTP, the client), and
      the p99 of small batches is mostly that variation;
    * ``overhead_j_per_request`` is the energy of that per-request work (decoding, HTTP; a
      profile's ``preprocess_j_per_image``, priced by the CPU meter). The server charges it to the
      request itself, whatever the model is doing (its whole-cost attribution, docs/energy.md); the
      simulator adds it to each answered request's batch, so J/request is the model's share plus it.

    * ``arrival_delay_ms`` lengthens the running batch for every request that reaches the server
      while it computes: decoding and HTTP compete with the model thread for the CPU and the GIL
      (what makes a served batch slower during a burst than at a steady rate);
    * ``energy_follows_time``: a batch's energy is ``energy_scale`` × the profile's power at its
      size (J ÷ s) × the batch's simulated duration (with every cost above): a batch that
      computes longer draws power longer. Off: the profile's energy at its size,
      whatever the duration;
    * ``post_batch_samples_ms``, when given, replaces ``post_batch_ms`` by a draw (seeded) from
      these measured values for each response: HTTP and the client have a tail of their own;
    * ``post_per_rank_ms`` delays the k-th response of a batch (from 0, in the batch's order) by
      k × this: the event loop sends a batch's responses one after another, so the last answer
      of a batch of 30 leaves several ms after the first.

    :meth:`with_profile_overheads` fills ``pre_queue_ms`` and ``overhead_j_per_request`` from a
    profile. Bad values are a :class:`GridError` naming the value.
    """

    max_batch_size: int = DEFAULT_MAX_BATCH_SIZE
    max_wait_ms: float = DEFAULT_MAX_WAIT_MS
    max_queue: int = DEFAULT_MAX_QUEUE
    max_concurrent_batches: int = 1
    timeout_ms: float | None = DEFAULT_TIMEOUT_MS
    compute_scale: float = 1.0
    energy_scale: float = 1.0
    service_cv: float = 0.0
    seed: int = 0
    batch_overhead_ms: float = 0.0
    pre_queue_ms: float = 0.0
    post_batch_ms: float = 0.0
    overhead_j_per_request: float = 0.0
    post_batch_samples_ms: tuple[float, ...] = ()
    arrival_delay_ms: float = 0.0
    energy_follows_time: bool = False
    post_per_rank_ms: float = 0.0

    def __post_init__(self) -> None:
        # The server's ranges (service.batching.BatchingConfig and service.config.Settings).
        _check_int("max_batch_size", self.max_batch_size, 1, 4096)
        _check_int("max_queue", self.max_queue, 1, 1_000_000)
        _check_int("max_concurrent_batches", self.max_concurrent_batches, 1, 64)
        if not (_finite(self.max_wait_ms) and 0 <= self.max_wait_ms <= 60_000):
            raise GridError(f"max_wait_ms must be in 0..60000, got {self.max_wait_ms!r}")
        if self.timeout_ms is not None and not (_finite(self.timeout_ms) and self.timeout_ms > 0):
            raise GridError(f"timeout_ms must be > 0 (or None: no deadline), got {self.timeout_ms!r}")
        for name in ("compute_scale", "energy_scale"):
            value = getattr(self, name)
            if not (_finite(value) and value > 0):
                raise GridError(f"{name} must be > 0, got {value!r}")
        if not (_finite(self.service_cv) and 0 <= self.service_cv <= 10):
            raise GridError(f"service_cv must be in 0..10, got {self.service_cv!r}")
        for name in (
            "batch_overhead_ms",
            "pre_queue_ms",
            "post_batch_ms",
            "overhead_j_per_request",
            "arrival_delay_ms",
            "post_per_rank_ms",
        ):
            value = getattr(self, name)
            if not (_finite(value) and value >= 0):
                raise GridError(f"{name} must be >= 0, got {value!r}")
        if not all(_finite(v) and v >= 0 for v in self.post_batch_samples_ms):
            raise GridError("post_batch_samples_ms must all be finite and >= 0")

    def with_profile_overheads(self, profile: ModelProfile) -> SimConfig:
        """This configuration with the profile's per-image decode cost as ``pre_queue_ms`` and, when
        its energy was priced by a CPU meter (``estimate``, ``rapl``, ``synthetic``: every profile
        made since the decode has its own source, on a GPU too; an older ``nvml`` profile read the
        GPU's idle draw instead), as ``overhead_j_per_request``. Unmeasured costs count as 0."""
        source = profile.preprocess_energy_source or profile.energy_source
        energy = profile.preprocess_j_per_image if source in CPU_SOURCES else None
        return dataclasses.replace(
            self, pre_queue_ms=profile.preprocess_ms_per_image or 0.0, overhead_j_per_request=energy or 0.0
        )


def _finite(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _check_int(name: str, value: object, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise GridError(f"{name} must be an integer in {low}..{high}, got {value!r}")


@dataclass(frozen=True)
class BatchRecord:
    """One simulated batch: when it was cut and ended (seconds from the trace's start), its size,
    and its energy (the profile's, plus the overhead charged to it)."""

    start_s: float
    end_s: float
    size: int
    energy_j: float


@dataclass(frozen=True)
class SimResult:
    """The predicted figures of one configuration, with what they were computed from.

    ``latencies_s`` are the completed requests' latencies in trace order; ``statuses`` holds every
    arrival's simulated HTTP status (200, 429 or 504). ``figures.energy_source`` is the profile's
    source (with the decode's CPU meter when the decode is charged: ``nvml+rapl``), and
    ``figures.j_per_request_label`` says what the prediction holds; there is no amortised figure.

    Each batch's ``start_s`` is the moment it was cut, that is, when the cut was decided: the batch
    size over time is ``[(b.start_s, b.size) for b in batches]``. With a policy, ``batching`` is its
    name and ``policy_states`` holds its ``describe()`` right after each cut, one per batch (its
    target size and wait over time); without one, ``batching`` is ``"static"`` (the configuration's
    rule) and ``policy_states`` is empty.
    """

    config: SimConfig
    figures: RunFigures
    batches: tuple[BatchRecord, ...]
    latencies_s: tuple[float, ...]
    statuses: tuple[int, ...]
    model: str
    device: str
    #: First arrival to last response (seconds); the throughput's denominator.
    duration_s: float
    batching: str = "static"
    policy_states: tuple[dict[str, float], ...] = ()

    @property
    def busy_fraction(self) -> float:
        """Fraction of the run (first arrival to last response) during which a batch was computing,
        summed over slots (so up to ``max_concurrent_batches``)."""
        if self.duration_s <= 0:
            return 0.0
        return sum(b.end_s - b.start_s for b in self.batches) / self.duration_s


def simulate(
    trace: Trace | Sequence[float],
    profile: ModelProfile,
    config: SimConfig,
    policy: BatchPolicy | None = None,
) -> SimResult:
    """Run ``trace`` through the batcher described by ``config``, with ``profile``'s costs.

    ``trace`` may be plain arrival times (seconds, non-decreasing; else a :class:`TraceError`).
    Deterministic: the same inputs give the same result (a policy must be fresh, or in the same
    state, for that: it learns, and the simulation changes it).

    ``policy``: when given, it decides every cut, as the server's batcher asks it (when a slot is
    free and something is queued: after every event, and at the ``until`` of its last wait), with
    ``config.max_batch_size`` as the cap; ``config.max_wait_ms`` is then unused. It is told every
    queue entry (``observe_arrival``), every batch at its end (``observe_batch``: the simulated
    compute time and the batch's model energy, without the per-request overheads) and every answer
    (``observe_latency``: queue entry to batch end, what the server's batcher sees), all on the
    simulated clock. ``None``: the configuration's static rule, which is what
    ``StaticPolicy(config.max_batch_size, config.max_wait_ms)`` decides too, to the bit.
    """
    times = trace.times if isinstance(trace, Trace) else Trace.from_times(trace).times
    n = len(times)
    size_limit = config.max_batch_size
    wait_s = config.max_wait_ms / 1000
    timeout_s = None if config.timeout_ms is None else config.timeout_ms / 1000
    pre_s = config.pre_queue_ms / 1000
    # Costs per batch size, looked up rather than interpolated in the loop.
    service_s = [0.0] + [
        profile.latency_s(b) * config.compute_scale + config.batch_overhead_ms / 1000
        for b in range(1, size_limit + 1)
    ]
    batch_j = [0.0] + [profile.energy_j(b) * config.energy_scale for b in range(1, size_limit + 1)]
    power_w = [0.0] + [profile.energy_j(b) / profile.latency_s(b) for b in range(1, size_limit + 1)]
    arrival_delay_s = config.arrival_delay_ms / 1000
    members: list[list[int]] = []  # each batch's requests, to move their answers when it is lengthened
    # Gamma(k, 1/k) has mean 1 and CV 1/√k: a positive, right-skewed multiplier of the mean time.
    rng = np.random.default_rng(config.seed) if config.service_cv > 0 else None
    shape = 1.0 / config.service_cv**2 if config.service_cv > 0 else 0.0
    overhead_j = config.overhead_j_per_request

    enqueue = [t + pre_s for t in times]
    deadline = [math.inf] * n if timeout_s is None else [t + timeout_s for t in times]
    status = [0] * n
    done_s = [0.0] * n
    rank = [0] * n  # position in its batch: the order its response is sent in
    queue: deque[int] = deque()
    running: list[tuple[float, int]] = []  # heap of (end time, batch index)
    wake = math.inf  # with a policy: when it asked to decide again, if still waiting
    states: list[dict[str, float]] = []
    starts: list[float] = []
    ends: list[float] = []
    sizes: list[int] = []
    energies: list[float] = []
    free = config.max_concurrent_batches
    arrival = 0  # index of the next arrival to enter the queue
    now = -math.inf

    def _cut_batch(size: int) -> None:
        """Cut the ``size`` oldest queued items into a batch now, on a free slot."""
        nonlocal free
        end = now + service_s[size] * (1.0 if rng is None else float(rng.gamma(shape, 1.0 / shape)))
        members.append([])
        for position in range(size):
            item = queue.popleft()
            status[item] = 200
            done_s[item] = end
            rank[item] = position
            members[-1].append(item)
        heapq.heappush(running, (end, len(starts)))
        starts.append(now)
        ends.append(end)
        sizes.append(size)
        # Each request carries its own decode and serving energy (the server's whole-cost
        # attribution): its batch's energy is the model's plus that, size times.
        energies.append(batch_j[size] + overhead_j * size)
        free -= 1
        if policy is not None:
            states.append(policy.describe())

    def _decide(policy: BatchPolicy, *, draining: bool) -> int:
        """The policy's decision now, as the server's batcher takes it: the items to cut, capped by
        the queue and ``max_batch_size`` (everything when draining), or 0 and ``wake`` set."""
        nonlocal wake
        view = QueueView(
            now=now,
            queued=len(queue),
            oldest_enqueued_at=enqueue[queue[0]],
            max_batch_size=size_limit,
            draining=draining,
        )
        decision = policy.decide(view)
        if draining:
            return min(view.queued, size_limit)
        size = min(max(decision.size, 0), view.queued, size_limit)
        if not size:
            until = math.inf if decision.until is None else decision.until
            wake = until if until > now else now + POLICY_RETRY_S
        return size

    def _observe_end(policy: BatchPolicy, index: int) -> None:
        """Tell the policy that batch ``index`` ended now: its compute time and model energy (as
        the post-run pass below prices it), then each of its answers."""
        size, duration = sizes[index], ends[index] - starts[index]
        energy = batch_j[size]
        if config.energy_follows_time:
            energy = config.energy_scale * power_w[size] * duration
        policy.observe_batch(size, starts[index], duration, energy)
        for item in members[index]:
            policy.observe_latency(ends[index] - enqueue[item], ends[index])

    while True:
        # The next instant anything happens.
        upcoming = running[0][0] if running else math.inf
        if arrival < n:
            upcoming = min(upcoming, enqueue[arrival])
        if queue:
            upcoming = min(upcoming, deadline[queue[0]])
            if free and policy is not None:
                upcoming = min(upcoming, wake)
            elif free:
                first = queue[0]
                cut = now if len(queue) >= size_limit else max(now, enqueue[first] + wait_s)
                upcoming = min(upcoming, cut)
        if upcoming == math.inf:
            if policy is not None and queue and free:
                # The policy waits for a change that cannot come (no arrival, batch or deadline is
                # left): the server would hold these until it shuts down, and its drain cuts them.
                _cut_batch(_decide(policy, draining=True))
                continue
            break
        now = upcoming
        # 1. Batches that end now free their slots.
        while running and running[0][0] <= now:
            _, ended = heapq.heappop(running)
            free += 1
            if policy is not None:
                _observe_end(policy, ended)
        # 2. Deadlines that pass now: with one timeout for all, the front of the queue expires first.
        while queue and deadline[queue[0]] <= now:
            status[queue.popleft()] = 504
        # 3. Arrivals now: rejected when the queue is full, as the server's submit does.
        while arrival < n and enqueue[arrival] <= now:
            if len(queue) >= config.max_queue:
                status[arrival] = 429
            elif deadline[arrival] <= now:
                status[arrival] = 504  # the deadline passed while decoding (pre_queue_ms ≥ timeout)
            else:
                queue.append(arrival)
                if policy is not None:
                    policy.observe_arrival(now)
            if running and arrival_delay_s:
                # Decoding and HTTP lengthen the batch computing now (the latest when several are).
                latest = max(index for _, index in running)
                if arrival_delay_s:
                    ends[latest] += arrival_delay_s
                    for item in members[latest]:
                        done_s[item] += arrival_delay_s
                    running = [(ends[index], index) for _, index in running]
                    heapq.heapify(running)
            arrival += 1
        # 4. Cuts: while a slot is free and a batch is full or its first item's wait is over (or,
        # with a policy, while it says cut).
        if policy is not None:
            wake = math.inf
            while free and queue:
                size = _decide(policy, draining=False)
                if not size:
                    break
                _cut_batch(size)
        else:
            while free and queue and (len(queue) >= size_limit or enqueue[queue[0]] + wait_s <= now):
                _cut_batch(min(size_limit, len(queue)))
    if config.energy_follows_time:
        for index, size in enumerate(sizes):
            charged = energies[index] - batch_j[size]  # per-request overheads charged to it
            duration = ends[index] - starts[index]
            energies[index] = config.energy_scale * power_w[size] * duration + charged
    result = _result(times, status, done_s, rank, starts, ends, sizes, energies, profile, config)
    if policy is None:
        return result
    return dataclasses.replace(result, batching=policy.name, policy_states=tuple(states))


def _result(
    times: Sequence[float],
    status: list[int],
    done_s: list[float],
    rank: list[int],
    starts: list[float],
    ends: list[float],
    sizes: list[int],
    energies: list[float],
    profile: ModelProfile,
    config: SimConfig,
) -> SimResult:
    post_s = config.post_batch_ms / 1000
    answered = [i for i in range(len(times)) if status[i] == 200]
    if config.post_batch_samples_ms:
        # Its own generator (seed + 1): the compute times' draws stay what they were without it.
        rng = np.random.default_rng(config.seed + 1)
        draws = np.asarray(config.post_batch_samples_ms)[
            rng.integers(0, len(config.post_batch_samples_ms), len(answered))
        ]
        post = [float(d) / 1000 for d in draws]
    else:
        post = [post_s] * len(answered)
    if config.post_per_rank_ms:
        post = [p + rank[i] * config.post_per_rank_ms / 1000 for p, i in zip(post, answered, strict=True)]
    latencies = tuple(done_s[i] + post[k] - times[i] for k, i in enumerate(answered))
    completed = len(latencies)
    span = max(done_s[i] + post[k] for k, i in enumerate(answered)) - times[0] if answered else 0.0
    p50, p90, p99 = percentiles_ms(latencies)
    # The decode's joules come from the CPU meter (on a GPU, beside the batches' nvml).
    source = profile.served_energy_source if config.overhead_j_per_request else profile.energy_source
    figures = RunFigures(
        requests=len(times),
        completed=completed,
        throughput_rps=completed / span if span > 0 else 0.0,
        latency_p50_ms=p50,
        latency_p90_ms=p90,
        latency_p99_ms=p99,
        mean_batch_size=completed / len(sizes) if sizes else None,
        j_per_request=sum(energies) / completed if completed else None,
        energy_source=source,
        rejected_queue_full=status.count(429),
        rejected_deadline=status.count(504),
        errors=0,
        j_per_request_label=f"simulated: the profile's batches ({profile.energy_label})"
        + (" + decode per request" if config.overhead_j_per_request else ""),
    )
    batches = tuple(BatchRecord(*record) for record in zip(starts, ends, sizes, energies, strict=True))
    return SimResult(
        config=config,
        figures=figures,
        batches=batches,
        latencies_s=latencies,
        statuses=tuple(status),
        model=profile.model,
        device=profile.device,
        duration_s=span,
    )


def simulate_grid(
    trace: Trace | Sequence[float],
    profile: ModelProfile,
    configs: Iterable[SimConfig],
    policy: Callable[[SimConfig], BatchPolicy] | None = None,
) -> list[SimResult]:
    """:func:`simulate` for each configuration, in order; ``policy`` (when given) makes a fresh
    policy for each configuration, since a policy learns from the run it decides."""
    return [
        simulate(trace, profile, config, None if policy is None else policy(config)) for config in configs
    ]


def profile_seed(profile: ModelProfile) -> dict[int, tuple[float, float]]:
    """Batch size → (mean compute s, energy J per batch) at each of the profile's sizes: what a
    server started with ``--batching-profile`` on this profile's file seeds its policy with
    (:func:`service.policy.read_profile_seed`)."""
    return {size: (profile.latency_s(size), profile.energy_j(size)) for size in profile.batch_sizes}


def grid(
    base: SimConfig,
    *,
    max_batch_sizes: Iterable[int],
    max_waits_ms: Iterable[float],
    greedy_max_batch_size: int | None = None,
) -> list[SimConfig]:
    """Every (size, wait) combination on top of ``base``, sizes outermost, then, when
    ``greedy_max_batch_size`` is given, the sweep's greedy mode: that size with ``max_wait_ms = 0``
    (:mod:`studies.sweep`), unless the combinations already hold it."""
    waits = list(max_waits_ms)
    configs = [
        dataclasses.replace(base, max_batch_size=size, max_wait_ms=wait)
        for size in max_batch_sizes
        for wait in waits
    ]
    if greedy_max_batch_size is not None:
        greedy = dataclasses.replace(base, max_batch_size=greedy_max_batch_size, max_wait_ms=0.0)
        if greedy not in configs:
            configs.append(greedy)
    return configs


# --- results as a table ------------------------------------------------------------------------

#: CSV columns: the sweep's key and mode (to join a simulated row with the measured one), the
#: configuration, the figures in RunFigures' order, then the simulator's own.
RESULT_COLUMNS = (
    "method",
    "key",
    "mode",
    "model",
    "device",
    *(f.name for f in dataclasses.fields(SimConfig)),
    *RunFigures.field_names(),
    "busy_fraction",
    "batching",
)


def result_row(result: SimResult) -> dict[str, object]:
    """One CSV row; ``method`` is ``simulated``, to tell it from a measured sweep's rows.

    ``key`` and ``mode`` are the sweep's (:class:`studies.sweep.settings.SweepConfig`); a configuration with
    ``max_wait_ms = 0`` is the sweep's greedy mode, which is what that setting does. A run cut by
    another policy than the static rule has that policy's name as its mode and in its key
    (``model|b64|adaptive``: ``max_batch_size`` is then its cap, and ``max_wait_ms`` unused);
    ``batching`` names the policy (``static`` for the rule).
    """
    config = result.config
    greedy = config.max_wait_ms == 0
    key = SweepConfig(result.model, config.max_batch_size, config.max_wait_ms, greedy=greedy).key
    mode = GREEDY if greedy else "wait"
    if result.batching != "static":
        key, mode = f"{result.model}|b{config.max_batch_size}|{result.batching}", result.batching
    return {
        "method": "simulated",
        "key": key,
        "mode": mode,
        "model": result.model,
        "device": result.device,
        **dataclasses.asdict(config),
        # The samples themselves are the calibration's; the row says how many there were.
        "post_batch_samples_ms": len(config.post_batch_samples_ms),
        **dataclasses.asdict(result.figures),
        "busy_fraction": result.busy_fraction,
        "batching": result.batching,
    }


def write_results(results: Sequence[SimResult], path: Path) -> Path:
    """Write one row per result (:data:`RESULT_COLUMNS`) as CSV, atomically."""
    return write_csv_atomic(path, RESULT_COLUMNS, [result_row(result) for result in results])
