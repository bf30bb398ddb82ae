"""The E-P2.6 load-test verdict: is hybrid's latency overhead over vlm within budget under load?

The locustfile judges Locust's own numbers at `quitting` (:func:`row` of each `<endpoint>:<pipeline>` StatsEntry);
`python -m loadtest verdict DIR` judges a run's verdict.json again, e.g. with another budget. The overhead
(hybrid / vlm − 1, at p50 and at p95) and its verdict against the budget are `service.verdict`'s, the one definition
the gateway and the paired benchmark use too. **pass** (exit 0) iff both are within the budget and every pipeline's
failure ratio, and the whole run's, within the bound (percentiles include failed requests: the bound keeps fast 429s
from making a pipeline look quick); **fail** (exit 1) otherwise; **inconclusive** (exit 2) when hybrid or vlm has
fewer than `min_requests` samples or no ratio exists, which must read neither as a regression nor as a pass.
No locust import here: it monkey-patches the standard library with gevent.
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from hybrid.contracts import PIPELINES
from service.verdict import Verdict, overhead_ratio
from service.verdict import judge as judge_ratio

PERCENTILES: dict[str, float] = {"p50": 0.50, "p95": 0.95, "p99": 0.99}
EXIT_CODES: dict[str, int] = {"pass": 0, "fail": 1, "inconclusive": 2}
THRESHOLDS = ("budget", "max_failure_ratio", "min_requests", "p95_bound_ms")


Row = dict[str, Any]
"""One request name's numbers as Locust computes them: requests, failures, fail_ratio, rps, p50, p95, p99 (ms)."""


def row(entry: Any, seconds: float | None = None) -> Row:
    """A Locust `StatsEntry` as a :data:`Row`; `seconds` gives the rate over a step instead of the whole run."""
    n = entry.num_requests
    quantiles = {k: float(entry.get_response_time_percentile(q)) if n else None for k, q in PERCENTILES.items()}
    rate = n / seconds if seconds else entry.total_rps
    return {"requests": n, "failures": entry.num_failures, "fail_ratio": entry.fail_ratio, "rps": rate, **quantiles}


def _ratio(pipelines: Mapping[str, Row], key: str) -> float | None:
    value = overhead_ratio(pipelines.get("hybrid", {}).get(key), pipelines.get("vlm", {}).get(key))
    return None if math.isnan(value) else value


def capacity(steps: list[dict[str, Any]], p95_bound_ms: float, max_failure_ratio: float) -> dict[str, Any]:
    """Per step: p95 overhead and whether every pipeline kept p95 and failures within bounds; the best such rate."""
    for step in steps:
        pipes: dict[str, Row] = step["pipelines"]
        step["overhead_p95"] = _ratio(pipes, "p95")
        step["ok"] = bool(pipes) and all(
            r["requests"] and r["p95"] is not None and r["p95"] <= p95_bound_ms and r["fail_ratio"] <= max_failure_ratio
            for r in pipes.values()
        )
    best = max((s for s in steps if s["ok"]), key=lambda s: s["rps"], default=None)
    return {
        "p95_bound_ms": p95_bound_ms,
        "steps": steps,
        "best": best and {k: best[k] for k in ("step", "users", "rps")},
    }


def judge(
    measured: Mapping[str, Any],
    budget: float,
    max_failure_ratio: float,
    min_requests: int = 1,
    p95_bound_ms: float = 2000.0,
) -> dict[str, Any]:
    """The verdict of one run's numbers: `measured` holds `endpoint`, `pipelines`, `total` and `steps` (or None)."""
    endpoint, pipes, total = measured["endpoint"], measured["pipelines"], measured["total"]
    reasons = [
        f"{endpoint}:{p} has {n} requests (need >= {min_requests})"
        for p in ("hybrid", "vlm")
        if (n := pipes.get(p, {}).get("requests", 0)) < min_requests
    ]
    overhead = {key: _ratio(pipes, key) for key in ("p50", "p95")}
    if not reasons:
        reasons = [f"no overhead at {key}: vlm's {key} is not positive" for key, v in overhead.items() if v is None]
    checks = {
        f"overhead_{key}": (judge_ratio(v, budget) is Verdict.WITHIN, f"{v:+.1%} vs budget {budget:.0%}")
        for key, v in overhead.items()
        if v is not None
    }
    for name, r in [*pipes.items(), ("total", total)]:
        detail = f"{r['failures']}/{r['requests']} = {r['fail_ratio']:.2%} vs bound {max_failure_ratio:.2%}"
        checks[f"failures_{name}"] = (r["fail_ratio"] <= max_failure_ratio, detail)
    failed = [f"{name}: {detail}" for name, (ok, detail) in checks.items() if not ok]
    status = "inconclusive" if reasons else "fail" if failed else "pass"
    steps = measured.get("steps")
    return {
        "verdict": status,
        "exit_code": EXIT_CODES[status],
        "budget": budget,
        "max_failure_ratio": max_failure_ratio,
        "min_requests": min_requests,
        "p95_bound_ms": p95_bound_ms,
        "endpoint": endpoint,
        "pipelines": {p: pipes[p] for p in PIPELINES if p in pipes},
        "total": total,
        "overhead": overhead,
        "checks": checks,
        "reasons": reasons or failed,
        "steps": None if steps is None else capacity(steps, p95_bound_ms, max_failure_ratio),
    }


def _ms(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.0f}"


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:+.1%}"


def _aligned(rows: Sequence[Sequence[str]]) -> list[str]:
    """Rows as columns: the first left-aligned, the others right-aligned, a rule under the header."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = [
        "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True)))
        for r in rows
    ]
    return [lines[0], "  ".join("-" * w for w in widths), *lines[1:]]


def render_text(v: Mapping[str, Any]) -> str:
    """The table printed at the end of a run (and by `python -m loadtest verdict`)."""
    header = ["pipeline", "requests", "failures", "fail %", "req/s", "p50 ms", "p95 ms", "p99 ms"]
    table = [
        [name, str(r["requests"]), str(r["failures"]), f"{r['fail_ratio']:.2%}", f"{r['rps']:.2f}"]
        + [_ms(r[k]) for k in PERCENTILES]
        for name, r in [*v["pipelines"].items(), ("(all)", v["total"])]
    ]
    lines = [
        f"E-P2.6 load-test verdict: {v['verdict'].upper()}   (budget {v['budget']:.0%} hybrid over vlm, "
        f"failure bound {v['max_failure_ratio']:.2%}, endpoint /{v['endpoint']})",
        "",
        *_aligned([header, *table]),
        "",
    ]
    for key, value in v["overhead"].items():
        mark = "n/a" if value is None else ("ok" if value <= v["budget"] else "OVER BUDGET")
        lines.append(f"overhead hybrid/vlm at {key}: {_pct(value)}  [{mark}]")
    if steps := v["steps"]:
        lines += ["", f"step load (p95 bound {steps['p95_bound_ms']:.0f} ms):"]
        for s in steps["steps"]:
            p95s = ", ".join(f"{p} {_ms(r['p95'])}" for p, r in s["pipelines"].items())
            lines.append(
                f"  step {s['step']}: {s['users']} users, {s['rps']:.2f} req/s, p95 ms: {p95s}, "
                f"overhead p95 {_pct(s['overhead_p95'])}  [{'ok' if s['ok'] else 'over'}]"
            )
        best, bound = steps["best"], steps["p95_bound_ms"]
        lines.append(
            f"  highest rate with p95 <= {bound:.0f} ms: {best['rps']:.2f} req/s "
            f"(step {best['step']}, {best['users']} users)"
            if best
            else "  no step kept p95 under the bound"
        )
    if v["reasons"]:
        lines += ["", *(f"- {r}" for r in v["reasons"])]
    return "\n".join(lines)


def write_reports(v: Mapping[str, Any], out: Path) -> None:
    """verdict.json (every number behind the verdict and the run's parameters) and verdict.md (for lab notes, PRs)."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "verdict.json").write_text(json.dumps(v, indent=2) + "\n", encoding="utf-8")
    md = f"# Load-test verdict: **{v['verdict'].upper()}**\n\n```\n{render_text(v)}\n```\n"
    (out / "verdict.md").write_text(md, encoding="utf-8")


def main(argv: Sequence[str]) -> int:
    """`python -m loadtest verdict DIR`: judge a recorded run again, with the thresholds it had unless given."""
    parser = argparse.ArgumentParser(prog="python -m loadtest verdict", description=main.__doc__)
    parser.add_argument("path", type=Path, help="a run directory (or its verdict.json)")
    parser.add_argument("--budget", type=float, help="max overhead of hybrid over vlm at p50 and p95")
    parser.add_argument("--max-failure-ratio", type=float, help="max failed/total per pipeline and overall")
    parser.add_argument("--min-requests", type=int, help="fewer hybrid or vlm samples: inconclusive")
    parser.add_argument("--p95-bound-ms", type=float, help="p95 bound of the step-load capacity line")
    parser.add_argument("--write", action="store_true", help="rewrite verdict.json and verdict.md")
    args = parser.parse_args(argv)
    path: Path = args.path / "verdict.json" if args.path.is_dir() else args.path
    try:
        old = json.loads(path.read_text(encoding="utf-8"))
        given = {k: getattr(args, k) for k in THRESHOLDS}
        thresholds = {k: old[k] if value is None else value for k, value in given.items()}
        new = judge({**old, "steps": old["steps"] and old["steps"]["steps"]}, **thresholds)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        parser.exit(2, f"loadtest verdict: error: {path}: not a recorded verdict ({exc!r})\n")
    print(render_text(new))
    if args.write:
        write_reports({**old, **new}, path.parent)
    return int(new["exit_code"])
