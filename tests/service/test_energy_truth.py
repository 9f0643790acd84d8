"""Energy truth on a real server: the synthetic source (its true energy is known) under steady
closed-loop load of identical requests, read through a 100 ms counter whose reads take 4 ms, with
~5 ms batches. The same measurement is ``make bench-energy``'s (studies.accounting.run.measure)."""

from __future__ import annotations

from pathlib import Path

import pytest

from studies.accounting.run import measure

pytestmark = pytest.mark.server


def test_per_request_energy_closes_on_the_device_counter_and_matches_the_truth(tmp_path: Path) -> None:
    check = measure(
        "synthetic",  # 10 W idle + 10 W per core × CPU time, a 100 ms counter, 4 ms reads (defaults)
        model="tests.fakes:busy_classifier",
        env={"FAKE_BUSY_S": "0.005"},  # each batch uses 5 ms of CPU in the model thread
        clients=12,
        seconds=8.0,
        warm_s=1.5,
        max_batch_size=4,
        workdir=tmp_path,
    )
    print(check)
    assert check.requests > 500
    assert check.zero_or_null == 0, "a response with 0 J (or an unknown energy under a healthy meter)"
    # Σ per-request energy + idle/unattributed = the device's own counter over the window.
    assert check.closure == pytest.approx(1.0, abs=0.03)
    # Mean J/request against the truth: the power model applied to the server's CPU time (/proc).
    assert check.mean_vs_truth == pytest.approx(1.0, abs=0.05)
    # The idle counter holds the idle draw (10 W) and what no request used, never less.
    assert check.idle_j >= 10.0 * check.seconds * 0.97
    # Identical requests in batches of one size cost about the same: no lumps of counter ticks.
    assert check.p99_over_p50 <= 1.5, check
