"""CPU affinity (service.affinity): the plan, pinning threads, and a real server's placement."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import httpx
import pytest

from service.affinity import (
    CorePlan,
    allowed_cpus,
    cpu_quota,
    pin_other_threads,
    pin_this_thread,
    plan_cores,
)
from tests.conftest import gray_png, server_process

ALLOWED = allowed_cpus()
needs_two_cpus = pytest.mark.skipif(
    ALLOWED is None or len(ALLOWED) < 2, reason="needs sched_setaffinity and at least 2 CPUs"
)


def test_the_model_gets_the_last_cpus_and_the_front_end_the_rest() -> None:
    assert plan_cores({0, 1}, 1) == CorePlan(model=frozenset({1}), front=frozenset({0}))
    assert plan_cores({0, 2, 5, 7}, 2) == CorePlan(model=frozenset({5, 7}), front=frozenset({0, 2}))
    assert plan_cores({3}, 1) is None  # nothing would be left to the front end
    assert plan_cores({0, 1}, 2) is None
    assert plan_cores(None, 1) is None
    assert plan_cores({0, 1}, 0) is None
    assert "CPU 1" in CorePlan(frozenset({1}), frozenset({0})).describe()


def _cpus_of(tid: int, pid: int | str = "self") -> set[int]:
    text = Path(f"/proc/{pid}/task/{tid}/status").read_text()
    listed = next(
        line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("Cpus_allowed_list")
    )
    cpus: set[int] = set()
    for part in listed.split(","):
        low, _, high = part.partition("-")
        cpus.update(range(int(low), int(high or low) + 1))
    return cpus


@needs_two_cpus
def test_pinning_moves_only_the_threads_it_names() -> None:
    assert ALLOWED is not None
    plan = plan_cores(ALLOWED, 1)
    assert plan is not None
    main = threading.get_native_id()
    seen: dict[str, set[int]] = {}
    go, done = threading.Event(), threading.Event()

    def model_thread() -> None:
        pin_this_thread(plan.model)
        seen["model"] = set(os.sched_getaffinity(0))
        go.set()
        done.wait(10)

    worker = threading.Thread(target=model_thread)
    worker.start()
    try:
        assert go.wait(10)
        assert seen["model"] == set(plan.model)
        assert _cpus_of(main) == set(ALLOWED)  # the caller was not moved
        moved = pin_other_threads(plan.front, except_ids={worker.native_id or 0})
        assert moved >= 1
        assert _cpus_of(main) == set(plan.front)
        assert _cpus_of(worker.native_id or 0) == set(plan.model)
    finally:
        done.set()
        worker.join()
        pin_other_threads(ALLOWED)
    assert _cpus_of(main) == set(ALLOWED)


@needs_two_cpus
@pytest.mark.server
@pytest.mark.parametrize("affinity", ["auto", "off"])
def test_a_server_gives_its_model_thread_a_cpu_of_its_own(tmp_path: Path, affinity: str) -> None:
    assert ALLOWED is not None
    plan = plan_cores(ALLOWED, 1)
    assert plan is not None
    with server_process(tmp_path, "--torch-threads", "1", "--cpu-affinity", affinity) as server:
        assert (
            httpx.post(
                f"{server.url}/classify", content=gray_png(3), headers={"content-type": "image/png"}
            ).status_code
            == 200
        )
        pid = server.process.pid
        placements = {p.name: _cpus_of(int(p.name), pid) for p in Path(f"/proc/{pid}/task").iterdir()}
        log = server.log()
    if affinity == "off":
        assert all(cpus == set(ALLOWED) for cpus in placements.values())
        assert "CPU affinity" not in log
        return
    assert "CPU affinity: model thread(s) on CPU" in log
    assert placements[str(pid)] == set(plan.front)  # the event loop
    assert sum(cpus == set(plan.model) for cpus in placements.values()) >= 1  # the model thread
    assert all(cpus in (set(plan.front), set(plan.model)) for cpus in placements.values())


def test_a_cpu_quota_below_the_allowed_cpus_pins_nothing(tmp_path: Path) -> None:
    cpu_max = tmp_path / "cpu.max"
    cpu_max.write_text("max 100000\n")
    assert cpu_quota(cpu_max) is None
    cpu_max.write_text("150000 100000\n")
    assert cpu_quota(cpu_max) == 1.5
    assert cpu_quota(tmp_path / "missing") is None
    if ALLOWED is not None and len(ALLOWED) >= 2:
        # A Kubernetes CPU limit without the static CPU manager: the node's CPUs, a share of their time.
        assert allowed_cpus(cpu_max) is None
        cpu_max.write_text(f"{len(ALLOWED) * 100000} 100000\n")
        assert allowed_cpus(cpu_max) == ALLOWED
