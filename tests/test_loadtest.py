"""`python -m loadtest`: real short headless Locust runs against the tiny stack, judged by the verdict table and
the exit code; runs refused before any traffic; a recorded run judged again.

Each run is its own `python -m loadtest` process, as `make loadtest` starts it: Locust monkey-patches the standard
library with gevent, which the pytest process must not inherit.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
NOTHING_LISTENS = "http://127.0.0.1:9"  # the discard port: a connection is refused at once
HEADER = re.compile(r"^pipeline +requests +failures +fail % +req/s +p50 ms +p95 ms +p99 ms$", re.MULTILINE)


SAFETY_NET_S = 300  # a run that does not stop by itself fails here; the runs below take seconds


def loadtest(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """One `python -m loadtest` process; its own bound is --run-time + --stop-timeout, this one's a safety net."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("LOADTEST_")}
    return subprocess.run(
        [sys.executable, "-m", "loadtest", *args],
        capture_output=True,
        text=True,
        timeout=SAFETY_NET_S,
        cwd=REPO,
        env={**clean, **(env or {})},
    )


def verdict_of(out: Path) -> dict[str, Any]:
    return json.loads((out / "verdict.json").read_text(encoding="utf-8"))


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (["--host", "http://192.0.2.1:8080"], {}, "not loopback"),
        (["--host", "http://127.0.0.1:9/?x=1"], {}, "--host must be an http(s) URL"),
        (["--run-time", "0"], {}, "--run-time must be between"),
        (["--frames", "4"], {}, "8k+1"),
        (["HybridUser", "SpatialUser"], {}, "vlm gets no users"),
        (["--users", "2"], {}, "2 users (at first) for 3 user classes"),
        (["--shape", "step", "--step-users", "2"], {}, "2 users (at first) for 3 user classes"),
        (["--budget", "-0.1"], {}, "argument --budget: must be >= 0"),
        ([], {"LOADTEST_BUDGET": "lots"}, "argument --budget: not a number"),
        ([], {"LOCUST_USERS": "1"}, "is not ready"),  # a stray LOCUST_* variable changes nothing
        (["--wait-ready", "0"], {}, "is not ready"),
    ],
)
def test_refused_before_any_traffic(args: list[str], env: dict[str, str], message: str, tmp_path: Path) -> None:
    out = tmp_path / "run"
    proc = loadtest("--host", NOTHING_LISTENS, "--wait-ready", "0", "--out", str(out), *args, env=env)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert message in proc.stderr
    assert not out.exists(), "a refused run leaves no reports"


def test_a_used_report_directory_is_refused(tmp_path: Path) -> None:
    (tmp_path / "verdict.json").write_text("{}")
    proc = loadtest("--out", str(tmp_path))
    assert proc.returncode == 2 and "already holds a run" in proc.stderr


@pytest.mark.integration
def test_pipeline_users_pass_with_every_report(gateway_url: str, tmp_path: Path) -> None:
    """The default users, one per pipeline, for 5 s. A budget of +10000% makes the verdict depend only on the
    failure bound: the tiny random-weight models say nothing about the real overhead. That the run stops by itself
    is Locust's --run-time; a run that did not would meet the safety net."""
    out = tmp_path / "run"
    proc = loadtest("--host", gateway_url, "--run-time", "5s", "--budget", "100", "--out", str(out))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    table = proc.stdout[proc.stdout.index("E-P2.6 load-test verdict: PASS") :]
    assert HEADER.search(table) and "overhead hybrid/vlm at p95:" in table
    verdict = verdict_of(out)
    assert verdict["verdict"] == "pass" and verdict["exit_code"] == 0
    assert list(verdict["pipelines"]) == ["hybrid", "vlm", "spatial"]
    for name, r in verdict["pipelines"].items():
        assert r["requests"] > 0 and r["failures"] == 0, name
        assert 0 < r["p50"] <= r["p95"] <= r["p99"], name
        assert f"\n{name} " in table
    assert sum(r["requests"] for r in verdict["pipelines"].values()) == verdict["total"]["requests"]
    hybrid, vlm = verdict["pipelines"]["hybrid"], verdict["pipelines"]["vlm"]
    assert verdict["overhead"]["p95"] == pytest.approx(hybrid["p95"] / vlm["p95"] - 1)
    assert verdict["run"]["host"] == gateway_url and verdict["run"]["run_time"] == 5
    stats_csv = (out / "locust_stats.csv").read_text().splitlines()
    aggregated = next(line for line in stats_csv if ",Aggregated," in line)
    assert aggregated.split(",")[2] == str(verdict["total"]["requests"]), "the CSV is Locust's final snapshot"
    for name in ("report.html", "locust_failures.csv", "verdict.md"):
        assert (out / name).is_file(), name
    assert "Load-test verdict: **PASS**" in (out / "verdict.md").read_text()


@pytest.mark.integration
def test_a_failing_pipeline_fails_the_run_and_can_be_judged_again(gateway_url: str, tmp_path: Path) -> None:
    """Nine frames as PNG is refused by the gateway (400): every request fails, so the exit code must be 1."""
    out = tmp_path / "run"
    proc = loadtest(
        "PairedUser", "--host", gateway_url, "--users", "1", "--run-time", "2s", "--frames", "9", "--out", str(out)
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "E-P2.6 load-test verdict: FAIL" in proc.stdout
    assert "- failures_hybrid: " in proc.stdout and "- failures_vlm: " in proc.stdout
    verdict = verdict_of(out)
    assert verdict["exit_code"] == 1 and "spatial" not in verdict["pipelines"]
    assert verdict["total"]["fail_ratio"] == 1.0
    assert "HTTP 400 invalid_parameter" in (out / "locust_failures.csv").read_text()

    def again(*args: str) -> subprocess.CompletedProcess[str]:
        return loadtest("verdict", str(out), *args)

    assert again().returncode == 1
    # 400s take about a millisecond; Locust rounds below 100 ms to whole ms, so a ratio exists unless vlm's is 0.
    defined = None not in verdict["overhead"].values()
    tolerant = again("--max-failure-ratio", "1", "--budget", "100", "--write")
    assert tolerant.returncode == (0 if defined else 2), tolerant.stdout + tolerant.stderr
    assert HEADER.search(tolerant.stdout) and "failures_" not in tolerant.stdout
    assert verdict_of(out)["exit_code"] == tolerant.returncode and verdict_of(out)["max_failure_ratio"] == 1
    assert again("--min-requests", str(10**9)).returncode == 2
    missing = loadtest("verdict", str(tmp_path / "nothing"))
    assert missing.returncode == 2 and "not a recorded verdict" in missing.stderr


@pytest.mark.integration
def test_step_load_books_each_step_and_ends_after_the_last(gateway_url: str, tmp_path: Path) -> None:
    """Paired users, 1 then 2, 3 s each: the shape ends after 6 s although --run-time allows an hour (a run that
    waited for it would meet the safety net). The p95 bound is out of reach of any latency, so whether a step is
    ok depends on its failures only, not on how busy the machine is; a bound no latency meets follows."""
    out = tmp_path / "run"
    proc = loadtest(
        "PairedUser",
        *("--host", gateway_url, "--shape", "step", "--step-users", "1", "--users", "2", "--step-time", "3"),
        *("--run-time", "3600s", "--budget", "100", "--p95-bound-ms", "1e9", "--out", str(out)),
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    steps = verdict_of(out)["steps"]
    assert [(s["step"], s["users"]) for s in steps["steps"]] == [(0, 1), (1, 2)]
    for step in steps["steps"]:
        assert set(step["pipelines"]) == {"hybrid", "vlm"} and step["rps"] > 0
        assert step["overhead_p95"] is not None and step["ok"]
    assert steps["best"]["rps"] == max(s["rps"] for s in steps["steps"])
    assert "step load (p95 bound 1000000000 ms):" in proc.stdout and "  step 1: 2 users" in proc.stdout
    too_tight = loadtest("verdict", str(out), "--p95-bound-ms", "0.5")
    assert "no step kept p95 under the bound" in too_tight.stdout
