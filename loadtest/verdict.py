"""Turn Locust's stats CSV into the E-P2.6 verdict: is hybrid's latency overhead over vlm within budget?

Pure functions over CSV rows, so recorded CSVs can be judged without a gateway (and re-judged with a
different budget after the fact via ``python -m loadtest verdict DIR``).

Rules
-----
* A pipeline's numbers come from the row whose name is ``<endpoint>:<pipeline>`` (see
  :func:`loadtest.config.request_name`); Locust's ``50%``/``95%``/``99%`` columns give the percentiles.
* ``overhead_pX = hybrid_pX / vlm_pX - 1`` for X in 50 and 95, judged against the budget by
  :mod:`service.verdict` (the one E-P2.6 definition the gateway and the paired benchmark use too).
* **pass** iff both overheads are within the budget, every pipeline's failure ratio <= the bound and the whole run's
  (Locust's ``Aggregated`` row) too.  Percentiles include failed requests, so the failure bound is what keeps
  fast 429s from making an overloaded pipeline look quick.
* **inconclusive** (exit 2, like a usage error) when hybrid or vlm has fewer than ``min_requests`` samples
  or vlm's percentile is 0: there is nothing to compare, and a CI job must not read that as a regression
  (exit 1) nor as a pass (exit 0).
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from loadtest.config import PIPELINES
from service.verdict import Verdict as BudgetVerdict
from service.verdict import judge, overhead_ratio

PERCENTILE_COLUMNS: dict[str, str] = {"p50": "50%", "p95": "95%", "p99": "99%"}
REQUIRED_COLUMNS: tuple[str, ...] = (
    "Type",
    "Name",
    "Request Count",
    "Failure Count",
    "Requests/s",
    *PERCENTILE_COLUMNS.values(),
)
AGGREGATED = "Aggregated"

EXIT_PASS = 0
EXIT_FAIL = 1
EXIT_ERROR = 2


class StatsFormatError(ValueError):
    """The file is not a Locust requests-stats CSV (``<prefix>_stats.csv``)."""


@dataclass(frozen=True)
class PipelineStats:
    """Whole-run numbers of one request name; latencies in milliseconds, ``None`` when Locust wrote N/A."""

    name: str
    requests: int
    failures: int
    rps: float
    p50: float | None
    p95: float | None
    p99: float | None

    @property
    def failure_ratio(self) -> float:
        return self.failures / self.requests if self.requests else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "failure_ratio": self.failure_ratio}


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str


@dataclass
class Verdict:
    status: str  # "pass" | "fail" | "inconclusive"
    budget: float
    max_failure_ratio: float
    endpoint: str
    pipelines: dict[str, PipelineStats]
    total: PipelineStats | None
    overhead: dict[str, float | None]
    checks: list[Check]
    reasons: list[str]
    steps: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def exit_code(self) -> int:
        return {"pass": EXIT_PASS, "fail": EXIT_FAIL}.get(self.status, EXIT_ERROR)

    def to_dict(self) -> dict[str, Any]:
        return {
            "verdict": self.status,
            "exit_code": self.exit_code,
            "budget": self.budget,
            "max_failure_ratio": self.max_failure_ratio,
            "endpoint": self.endpoint,
            "pipelines": {k: v.to_dict() for k, v in self.pipelines.items()},
            "total": None if self.total is None else self.total.to_dict(),
            "overhead": self.overhead,
            "checks": [asdict(c) for c in self.checks],
            "reasons": self.reasons,
            "steps": self.steps,
            **self.extra,
        }


def read_stats_csv(path: str | Path) -> list[dict[str, str]]:
    """Rows of a Locust ``*_stats.csv``; raises :class:`StatsFormatError` if the header is not Locust's."""
    return read_checked_csv(path, REQUIRED_COLUMNS, "Locust stats CSV")


def read_checked_csv(path: str | Path, required: Sequence[str], kind: str) -> list[dict[str, str]]:
    """Rows of a CSV that must have the `required` columns; raises :class:`StatsFormatError` otherwise."""
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            missing = [c for c in required if c not in (reader.fieldnames or [])]
            if missing:
                raise StatsFormatError(f"{path}: not a {kind}, missing columns {missing}")
            return list(reader)
    except FileNotFoundError:
        raise StatsFormatError(f"{path}: no such file") from None


def csv_number(text: str | None) -> float | None:
    """A Locust CSV cell as a number; None for an empty or "N/A" cell."""
    if text is None or text.strip() in ("", "N/A"):
        return None
    return float(text)


def row_stats(row: Mapping[str, str]) -> PipelineStats:
    return PipelineStats(
        name=row["Name"],
        requests=int(row["Request Count"]),
        failures=int(row["Failure Count"]),
        rps=float(row["Requests/s"] or 0.0),
        **{key: csv_number(row[col]) for key, col in PERCENTILE_COLUMNS.items()},
    )


def _merge(a: PipelineStats, b: PipelineStats) -> PipelineStats:
    """Two rows for one name (different HTTP methods): add counts, keep the worse percentile."""

    def worse(x: float | None, y: float | None) -> float | None:
        return y if x is None else x if y is None else max(x, y)

    return PipelineStats(
        a.name,
        a.requests + b.requests,
        a.failures + b.failures,
        a.rps + b.rps,
        worse(a.p50, b.p50),
        worse(a.p95, b.p95),
        worse(a.p99, b.p99),
    )


def pipeline_stats(rows: Sequence[Mapping[str, str]], endpoint: str = "reconstruct") -> dict[str, PipelineStats]:
    """Per-pipeline stats for ``endpoint``, in :data:`PIPELINES` order (unknown pipelines after)."""
    prefix = f"{endpoint}:"
    found: dict[str, PipelineStats] = {}
    for row in rows:
        name = row["Name"]
        if name == AGGREGATED or not name.startswith(prefix):
            continue
        pipeline = name[len(prefix) :]
        stats = row_stats(row)
        found[pipeline] = _merge(found[pipeline], stats) if pipeline in found else stats
    order = [p for p in PIPELINES if p in found] + sorted(p for p in found if p not in PIPELINES)
    return {p: found[p] for p in order}


def aggregated_stats(rows: Sequence[Mapping[str, str]]) -> PipelineStats | None:
    for row in rows:
        if row["Name"] == AGGREGATED and not row["Type"]:
            return row_stats(row)
    return None


def overhead(hybrid: float | None, vlm: float | None) -> float | None:
    """``hybrid / vlm - 1`` (:func:`service.verdict.overhead_ratio`); ``None`` when there is no meaningful ratio."""
    ratio = overhead_ratio(hybrid, vlm)
    return None if math.isnan(ratio) else ratio


def compute_verdict(
    rows: Sequence[Mapping[str, str]],
    budget: float = 0.25,
    max_failure_ratio: float = 0.01,
    endpoint: str = "reconstruct",
    min_requests: int = 1,
    steps: dict[str, Any] | None = None,
) -> Verdict:
    """Judge one run; see the module docstring for the rules."""
    pipes = pipeline_stats(rows, endpoint)
    total = aggregated_stats(rows)
    reasons: list[str] = []
    checks: list[Check] = []

    for needed in ("hybrid", "vlm"):
        got = pipes[needed].requests if needed in pipes else 0
        if got < min_requests:
            reasons.append(f"{endpoint}:{needed} has {got} requests (need >= {min_requests})")
    hybrid, vlm = pipes.get("hybrid"), pipes.get("vlm")
    ratios: dict[str, float | None] = {
        key: overhead(getattr(hybrid, key, None), getattr(vlm, key, None)) for key in ("p50", "p95")
    }
    if not reasons:
        for key, value in ratios.items():
            if value is None:
                reasons.append(
                    f"overhead at {key} is undefined (hybrid {key}={getattr(hybrid, key)}, "
                    f"vlm {key}={getattr(vlm, key)})"
                )

    for key, value in ratios.items():
        if value is not None:
            ok = judge(value, budget) is BudgetVerdict.WITHIN
            checks.append(Check(f"overhead_{key}", ok, f"{value:+.1%} vs budget {budget:.0%}"))
    counted = [(f"failures_{p}", s) for p, s in pipes.items()]
    if total is not None:
        counted.append(("failures_total", total))
    for check_name, s in counted:
        detail = f"{s.failures}/{s.requests} = {s.failure_ratio:.2%} vs bound {max_failure_ratio:.2%}"
        checks.append(Check(check_name, s.failure_ratio <= max_failure_ratio, detail))

    if reasons:
        status = "inconclusive"
    elif all(c.ok for c in checks):
        status = "pass"
    else:
        status = "fail"
        reasons.extend(f"{c.name}: {c.detail}" for c in checks if not c.ok)
    return Verdict(status, budget, max_failure_ratio, endpoint, pipes, total, ratios, checks, reasons, steps)


# --- rendering ----------------------------------------------------------------------------------------


def _ms(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.0f}"


def _pct(value: float | None, signed: bool = True) -> str:
    if value is None:
        return "n/a"
    return f"{value:+.1%}" if signed else f"{value:.2%}"


def _table_rows(verdict: Verdict) -> list[list[str]]:
    rows = []
    items = list(verdict.pipelines.items())
    if verdict.total is not None:
        items.append(("(all)", verdict.total))
    for name, s in items:
        rows.append(
            [
                name,
                str(s.requests),
                str(s.failures),
                _pct(s.failure_ratio, signed=False),
                f"{s.rps:.2f}",
                _ms(s.p50),
                _ms(s.p95),
                _ms(s.p99),
            ]
        )
    return rows


TABLE_HEADER = ["pipeline", "requests", "failures", "fail %", "req/s", "p50 ms", "p95 ms", "p99 ms"]


def render_text(verdict: Verdict) -> str:
    """The table printed at the end of ``make loadtest``."""
    rows = [TABLE_HEADER, *_table_rows(verdict)]
    widths = [max(len(r[i]) for r in rows) for i in range(len(TABLE_HEADER))]
    lines = [
        f"E-P2.6 load-test verdict: {verdict.status.upper()}   "
        f"(budget {verdict.budget:.0%} hybrid over vlm, failure bound {verdict.max_failure_ratio:.2%}, "
        f"endpoint /{verdict.endpoint})",
        "",
    ]
    for i, r in enumerate(rows):
        lines.append(
            "  ".join(c.ljust(w) if j == 0 else c.rjust(w) for j, (c, w) in enumerate(zip(r, widths, strict=True)))
        )
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    lines.append("")
    for key in ("p50", "p95"):
        value = verdict.overhead.get(key)
        mark = "n/a" if value is None else ("ok" if value <= verdict.budget else "OVER BUDGET")
        lines.append(f"overhead hybrid/vlm at {key}: {_pct(value)}  [{mark}]")
    lines.extend(_render_steps_text(verdict.steps))
    if verdict.reasons:
        lines.append("")
        lines.extend(f"- {r}" for r in verdict.reasons)
    return "\n".join(lines)


def _render_steps_text(steps: dict[str, Any] | None) -> list[str]:
    if not steps:
        return []
    lines = ["", f"step load (p95 bound {steps['p95_bound_ms']:.0f} ms):"]
    for s in steps["steps"]:
        p95s = ", ".join(f"{p} {_ms(v['p95'])}" for p, v in s["pipelines"].items())
        lines.append(
            f"  step {s['step']}: {s['users']} users, {s['rps']:.2f} req/s, p95 ms: {p95s}, "
            f"overhead p95 {_pct(s['overhead_p95'])}  [{'ok' if s['ok'] else 'over'}]"
        )
    if steps["max_rps_under_bound"] is None:
        lines.append("  no step kept p95 under the bound")
    else:
        bound, best = steps["p95_bound_ms"], steps["max_rps_under_bound"]
        lines.append(
            f"  highest rate with p95 <= {bound:.0f} ms: {best:.2f} req/s "
            f"(step {steps['best_step']}, {steps['users_at_best']} users)"
        )
    return lines


def render_markdown(verdict: Verdict) -> str:
    """``verdict.md``: the same content as :func:`render_text`, pasteable into a lab note or PR."""
    lines = [
        f"# Load-test verdict: **{verdict.status.upper()}**",
        "",
        f"Budget: hybrid over vlm <= {verdict.budget:.0%} at p50 and p95; failure ratio <= "
        f"{verdict.max_failure_ratio:.2%}; endpoint `/{verdict.endpoint}`.",
        "",
        "| " + " | ".join(TABLE_HEADER) + " |",
        "|" + "|".join(["---"] + ["---:"] * (len(TABLE_HEADER) - 1)) + "|",
    ]
    lines.extend("| " + " | ".join(r) + " |" for r in _table_rows(verdict))
    lines.append("")
    for key in ("p50", "p95"):
        value = verdict.overhead.get(key)
        mark = "n/a" if value is None else ("ok" if value <= verdict.budget else "**over budget**")
        lines.append(f"- overhead hybrid/vlm at {key}: {_pct(value)} ({mark})")
    if verdict.steps:
        steps = verdict.steps
        lines += [
            "",
            f"## Step load (p95 bound {steps['p95_bound_ms']:.0f} ms)",
            "",
            "| step | users | req/s | p95 ms per pipeline | overhead p95 | ok |",
            "|---:|---:|---:|---|---:|---|",
        ]
        for s in steps["steps"]:
            p95s = ", ".join(f"{p} {_ms(v['p95'])}" for p, v in s["pipelines"].items())
            lines.append(
                f"| {s['step']} | {s['users']} | {s['rps']:.2f} | {p95s} | {_pct(s['overhead_p95'])} | "
                f"{'yes' if s['ok'] else 'no'} |"
            )
        best = steps["max_rps_under_bound"]
        lines += ["", "Highest rate under the bound: " + ("none" if best is None else f"{best:.2f} req/s")]
    if verdict.reasons:
        lines += ["", "## Reasons", ""] + [f"- {r}" for r in verdict.reasons]
    return "\n".join(lines) + "\n"


def write_reports(verdict: Verdict, out_dir: str | Path) -> tuple[Path, Path]:
    """Write ``verdict.json`` and ``verdict.md`` into ``out_dir``; returns their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out / "verdict.json", out / "verdict.md"
    json_path.write_text(json.dumps(verdict.to_dict(), indent=2, sort_keys=False) + "\n", encoding="utf-8")
    md_path.write_text(render_markdown(verdict), encoding="utf-8")
    return json_path, md_path
