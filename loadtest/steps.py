"""Step load: the user-count schedule, per-step latency bookkeeping and the capacity read-out.

The question the step load answers is "what is the highest request rate at which p95 stays under a
bound?".  Locust's own CSVs hold whole-run percentiles (and ``--csv-full-history`` only a sliding 10 s
window), so the locustfile records every request into a :class:`StepRecorder`, keyed by the step the
request *started* in, and writes ``locust_steps.csv`` at shutdown.  :func:`analyze_steps` turns that file
into the capacity line of the verdict.

Pure Python, no locust import, so the schedule and the analysis are unit-testable.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loadtest.verdict import csv_number, read_checked_csv

STEPS_COLUMNS: tuple[str, ...] = (
    "Step",
    "Users",
    "Start (s)",
    "End (s)",
    "Name",
    "Request Count",
    "Failure Count",
    "Requests/s",
    "50%",
    "95%",
    "99%",
)
AGGREGATED = "Aggregated"


def percentile(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile (``q`` in 0..1), the definition Locust's percentile columns approximate."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(q * len(ordered)))
    return float(ordered[rank - 1])


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


@dataclass(frozen=True)
class StepPlan:
    """``start_users`` users, ``step_users`` more every ``step_time_s``, up to ``max_users``.

    The run ends after the last step has had its full ``step_time_s`` or at ``time_limit_s`` (Locust's
    ``--run-time``), whichever is first: Locust does not apply ``--run-time`` while a shape is running,
    so the shape has to enforce the bound itself.
    """

    start_users: int
    step_users: int
    step_time_s: float
    max_users: int
    spawn_rate: float
    time_limit_s: float | None = None

    def __post_init__(self) -> None:
        if self.start_users < 1 or self.step_users < 1 or self.max_users < 1:
            raise ValueError("step plan user counts must be >= 1")
        if self.step_time_s <= 0 or self.spawn_rate <= 0:
            raise ValueError("step time and spawn rate must be > 0")

    @property
    def n_steps(self) -> int:
        if self.max_users <= self.start_users:
            return 1
        return 1 + math.ceil((self.max_users - self.start_users) / self.step_users)

    @property
    def duration_s(self) -> float:
        """Planned length of the whole run."""
        planned = self.n_steps * self.step_time_s
        return planned if self.time_limit_s is None else min(planned, self.time_limit_s)

    def users_at(self, step: int) -> int:
        return min(self.start_users + step * self.step_users, self.max_users)

    def step_index(self, elapsed_s: float) -> int:
        return max(0, int(elapsed_s // self.step_time_s))

    def step_bounds(self, step: int) -> tuple[float, float]:
        start = step * self.step_time_s
        return start, min(start + self.step_time_s, self.duration_s)

    def target(self, elapsed_s: float) -> tuple[int, float] | None:
        """``(users, spawn_rate)`` for :meth:`locust.LoadTestShape.tick`; ``None`` stops the run."""
        if elapsed_s >= self.duration_s:
            return None
        return self.users_at(self.step_index(elapsed_s)), self.spawn_rate


@dataclass
class StepRecorder:
    """Collects response times per (step, request name) while the step load runs."""

    plan: StepPlan
    times: dict[tuple[int, str], list[float]] = field(default_factory=dict)
    failures: dict[tuple[int, str], int] = field(default_factory=dict)

    def record(self, name: str, start_offset_s: float, response_time_ms: float, failed: bool) -> None:
        """Book one request under the step it started in; requests after the planned end are dropped."""
        if start_offset_s >= self.plan.duration_s:
            return
        key = (self.plan.step_index(start_offset_s), name)
        self.times.setdefault(key, []).append(float(response_time_ms))
        if failed:
            self.failures[key] = self.failures.get(key, 0) + 1

    def rows(self, elapsed_s: float | None = None) -> list[dict[str, Any]]:
        """One row per (step, name) plus an ``Aggregated`` row per step, in ``STEPS_COLUMNS`` order.

        ``elapsed_s`` cuts the last step short when the run ended early, so its rate is not understated.
        """
        out: list[dict[str, Any]] = []
        steps = sorted({step for step, _ in self.times})
        for step in steps:
            start, end = self.plan.step_bounds(step)
            if elapsed_s is not None:
                end = max(start, min(end, elapsed_s))
            span = max(end - start, 1e-9)
            names = sorted(name for s, name in self.times if s == step)
            everything: list[float] = []
            failed_total = 0
            for name in [*names, AGGREGATED]:
                if name == AGGREGATED:
                    values, failed = everything, failed_total
                else:
                    values = self.times[(step, name)]
                    failed = self.failures.get((step, name), 0)
                    everything.extend(values)
                    failed_total += failed
                out.append(
                    {
                        "Step": step,
                        "Users": self.plan.users_at(step),
                        "Start (s)": round(start, 3),
                        "End (s)": round(end, 3),
                        "Name": name,
                        "Request Count": len(values),
                        "Failure Count": failed,
                        "Requests/s": round(len(values) / span, 4),
                        "50%": _round(percentile(values, 0.50)),
                        "95%": _round(percentile(values, 0.95)),
                        "99%": _round(percentile(values, 0.99)),
                    }
                )
        return out

    def write_csv(self, path: str | Path, elapsed_s: float | None = None) -> None:
        write_steps_csv(path, self.rows(elapsed_s))


def write_steps_csv(path: str | Path, rows: Iterable[Mapping[str, Any]]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(STEPS_COLUMNS))
        writer.writeheader()
        for row in rows:
            writer.writerow({k: ("N/A" if row[k] is None else row[k]) for k in STEPS_COLUMNS})


def read_steps_csv(path: str | Path) -> list[dict[str, str]]:
    return read_checked_csv(path, STEPS_COLUMNS, "steps CSV")


def analyze_steps(
    rows: Sequence[Mapping[str, str]],
    endpoint: str,
    p95_bound_ms: float,
    max_failure_ratio: float,
) -> dict[str, Any]:
    """Per-step table and the highest request rate whose steps keep every pipeline's p95 under the bound.

    A step qualifies when every pipeline that got requests in it has p95 <= ``p95_bound_ms`` and a failure
    ratio <= ``max_failure_ratio`` (a gateway that sheds load with fast 429s must not look fast).  The
    hybrid-over-vlm p95 overhead is reported per step because the budget has to hold at every load level.
    """
    prefix = f"{endpoint}:"
    by_step: dict[int, dict[str, Any]] = {}
    for row in rows:
        step = int(row["Step"])
        entry = by_step.setdefault(
            step,
            {
                "step": step,
                "users": int(row["Users"]),
                "start_s": float(row["Start (s)"]),
                "end_s": float(row["End (s)"]),
                "rps": 0.0,
                "requests": 0,
                "pipelines": {},
            },
        )
        name = row["Name"]
        requests = int(row["Request Count"])
        failures = int(row["Failure Count"])
        if name == AGGREGATED:
            entry["rps"] = float(row["Requests/s"])
            entry["requests"] = requests
            continue
        if not name.startswith(prefix):
            continue
        entry["pipelines"][name[len(prefix) :]] = {
            "requests": requests,
            "failures": failures,
            "failure_ratio": failures / requests if requests else 0.0,
            "rps": float(row["Requests/s"]),
            "p50": csv_number(row["50%"]),
            "p95": csv_number(row["95%"]),
            "p99": csv_number(row["99%"]),
        }

    steps: list[dict[str, Any]] = []
    for step in sorted(by_step):
        entry = by_step[step]
        pipes = entry["pipelines"]
        hybrid_p95 = pipes.get("hybrid", {}).get("p95")
        vlm_p95 = pipes.get("vlm", {}).get("p95")
        entry["overhead_p95"] = hybrid_p95 / vlm_p95 - 1.0 if hybrid_p95 is not None and vlm_p95 else None
        entry["ok"] = bool(pipes) and all(
            p["requests"] > 0
            and p["p95"] is not None
            and p["p95"] <= p95_bound_ms
            and p["failure_ratio"] <= max_failure_ratio
            for p in pipes.values()
        )
        steps.append(entry)

    good = [s for s in steps if s["ok"]]
    best = max(good, key=lambda s: s["rps"]) if good else None
    return {
        "p95_bound_ms": p95_bound_ms,
        "steps": steps,
        "best_step": None if best is None else best["step"],
        "max_rps_under_bound": None if best is None else best["rps"],
        "users_at_best": None if best is None else best["users"],
    }
