"""A load test's shape as data: stages (``10s:5,20s:20@2``) and the pure :func:`stage_target` that
Locust's shape asks once a tick (the Locust ``custom_shape`` habit: a table plus a pure tick)."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from loadgen.errors import LoadgenError

StageMode = Literal["step", "ramp"]
STAGE_MODES: tuple[StageMode, ...] = ("step", "ramp")
#: Above this spawn rate Locust warns that it may misbehave; steps spawn no faster.
MAX_SPAWN_RATE = 100.0


@dataclass(frozen=True)
class Stage:
    """``users`` for ``duration_s``; ``spawn_rate`` (users/s) when the spec gave one."""

    duration_s: float
    users: int
    spawn_rate: float | None = None


_DURATION = re.compile(r"^(\d+(?:\.\d*)?|\.\d+)(ms|s|m|h)?$")
_UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration_s(text: str) -> float:
    """``500ms``, ``10s``, ``1.5m``, ``2h`` or a bare number of seconds → seconds."""
    match = _DURATION.match(text.strip())
    if not match:
        raise LoadgenError(f"bad duration {text!r}: expected e.g. 500ms, 10s, 1.5m, 2h or seconds")
    return float(match.group(1)) * _UNIT_S[match.group(2) or "s"]


def parse_stages(spec: str) -> tuple[Stage, ...]:
    """``"10s:5,20s:20@2,10s:5"`` → stages: ``DURATION:USERS[@SPAWN_RATE]``, comma-separated."""
    stages: list[Stage] = []
    for number, part in enumerate(spec.split(","), start=1):
        where = f"--stages {spec!r}, stage {number}"
        duration_text, sep, rest = part.strip().partition(":")
        if not sep:
            raise LoadgenError(f"{where}: expected DURATION:USERS[@SPAWN_RATE], e.g. 10s:5, got {part!r}")
        try:
            duration_s = parse_duration_s(duration_text)
        except LoadgenError as exc:
            raise LoadgenError(f"{where}: {exc}") from None
        users_text, at, rate_text = rest.partition("@")
        try:
            users = int(users_text)
            rate = float(rate_text) if at else None
        except ValueError:
            raise LoadgenError(
                f"{where}: users must be an integer and spawn rate a number, got {rest!r}"
            ) from None
        if duration_s <= 0 or users < 0 or (rate is not None and not (math.isfinite(rate) and rate > 0)):
            raise LoadgenError(f"{where}: need a duration > 0, users ≥ 0 and spawn rate > 0, got {part!r}")
        stages.append(Stage(duration_s, users, rate))
    return tuple(stages)


def stage_target(
    stages: Sequence[Stage], mode: StageMode, run_time_s: float, tick_s: float = 1.0
) -> tuple[int, float] | None:
    """Users and spawn rate at ``run_time_s`` into the stages; ``None`` once they are over.

    ``step`` holds each stage's users for its whole duration, spawned at the stage's rate (else
    as fast as Locust allows). ``ramp`` goes linearly from the previous stage's users (0 before
    the first) to this stage's over its duration, as k6's stages do. Locust asks about once per
    ``tick_s``, so a ramp answers with the count due at the *next* tick and a spawn rate that
    gets there by then: the users follow the line instead of lagging a tick behind it.
    """
    start_s = 0.0
    previous = 0
    for stage in stages:
        end_s = start_s + stage.duration_s
        if run_time_s < end_s:
            if mode == "step":
                rate = stage.spawn_rate or min(float(max(stage.users, 1)), MAX_SPAWN_RATE)
                return stage.users, rate
            fraction = (min(run_time_s + tick_s, end_s) - start_s) / stage.duration_s
            users = round(previous + (stage.users - previous) * fraction)
            slope = abs(stage.users - previous) / stage.duration_s
            return users, stage.spawn_rate or min(max(1.0, slope), MAX_SPAWN_RATE)
        start_s = end_s
        previous = stage.users
    return None
