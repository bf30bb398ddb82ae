"""Tests of the load-test harness (loadtest/): the verdict on recorded Locust CSVs, the guards that keep a
run bounded and on loopback, and one short real Locust run against the embedded stack.

The recorded CSVs in tests/data/loadtest/ carry the exact header Locust 2.47 writes (CRLF line ends
included), so the verdict is tested on what Locust really produces without running Locust.
Nothing here imports locust in the pytest process: it monkey-patches the standard library with gevent.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from loadtest import runner
from loadtest.config import ConfigError, from_env, parse_weights, validate_frames
from loadtest.inputs import input_set, make_image, png_bytes
from loadtest.steps import StepPlan, StepRecorder, analyze_steps, read_steps_csv, write_steps_csv
from loadtest.verdict import compute_verdict, read_stats_csv, render_markdown, render_text

DATA = Path(__file__).parent / "data" / "loadtest"
REPO = Path(__file__).resolve().parents[1]
UNUSED_PORT_URL = "http://127.0.0.1:9"  # discard port: nothing listens, a connection is refused at once


@pytest.fixture(autouse=True)
def _clean_loadtest_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """The thresholds and traffic defaults come from ``LOADTEST_*``; the caller's shell must not change them."""
    for key in list(os.environ):
        if key.startswith("LOADTEST_"):
            monkeypatch.delenv(key)


def rows(case: str) -> list[dict[str, str]]:
    return read_stats_csv(DATA / case / "locust_stats.csv")


# --- verdict on recorded CSVs -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("case", "status", "exit_code"),
    [
        ("under_budget", "pass", 0),
        ("over_budget", "fail", 1),
        ("over_budget_p95", "fail", 1),
        ("failures_over_bound", "fail", 1),
        ("missing_vlm", "inconclusive", 2),
        ("no_samples", "inconclusive", 2),
        ("step_load", "pass", 0),
    ],
)
def test_verdict_subcommand_exit_codes(case: str, status: str, exit_code: int, capsys: pytest.CaptureFixture) -> None:
    assert runner.main(["verdict", str(DATA / case)]) == exit_code
    out = capsys.readouterr().out
    assert f"verdict: {status.upper()}" in out


@pytest.mark.parametrize(("case", "exit_code"), [("under_budget", 0), ("over_budget", 1), ("missing_vlm", 2)])
def test_verdict_cli_process_exit_code(case: str, exit_code: int) -> None:
    """The real ``python -m loadtest verdict`` process, as CI would call it."""
    proc = subprocess.run(
        [sys.executable, "-m", "loadtest", "verdict", str(DATA / case / "locust_stats.csv")],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )
    assert proc.returncode == exit_code, proc.stdout + proc.stderr
    assert "hybrid" in proc.stdout


def test_under_budget_numbers() -> None:
    verdict = compute_verdict(rows("under_budget"))
    assert list(verdict.pipelines) == ["hybrid", "vlm", "spatial"]
    assert verdict.overhead["p50"] == pytest.approx(590 / 520 - 1)
    assert verdict.overhead["p95"] == pytest.approx(720 / 640 - 1)
    hybrid = verdict.pipelines["hybrid"]
    assert (hybrid.requests, hybrid.failures, hybrid.p99) == (198, 0, 850)
    assert hybrid.rps == pytest.approx(3.3012, abs=1e-3)
    assert verdict.total is not None and verdict.total.requests == 1234
    assert all(c.ok for c in verdict.checks)


def test_over_budget_names_the_failing_percentile() -> None:
    verdict = compute_verdict(rows("over_budget_p95"))
    failed = {c.name for c in verdict.checks if not c.ok}
    assert failed == {"overhead_p95"}
    assert verdict.overhead["p50"] is not None and verdict.overhead["p50"] < 0.25
    assert "OVER BUDGET" in render_text(verdict)


def test_failure_bound_is_per_pipeline() -> None:
    """hybrid sheds 2.5% while the run as a whole stays under 1%: the per-pipeline bound must catch it."""
    verdict = compute_verdict(rows("failures_over_bound"))
    failed = {c.name for c in verdict.checks if not c.ok}
    assert failed == {"failures_hybrid"}
    assert verdict.total is not None and verdict.total.failure_ratio < 0.01


@pytest.mark.parametrize(
    ("case", "options", "exit_code"),
    [
        ("over_budget", ["--budget", "0.5"], 0),
        ("under_budget", ["--budget", "0.10"], 1),
        ("failures_over_bound", ["--max-failure-ratio", "0.05"], 0),
        ("under_budget", ["--min-requests", "500"], 2),
    ],
)
def test_verdict_thresholds_are_options(case: str, options: list[str], exit_code: int) -> None:
    assert runner.main(["verdict", str(DATA / case), *options]) == exit_code


def test_verdict_write_reports(tmp_path: Path) -> None:
    shutil.copy(DATA / "over_budget" / "locust_stats.csv", tmp_path / "locust_stats.csv")
    assert runner.main(["verdict", str(tmp_path), "--write"]) == 1
    data = json.loads((tmp_path / "verdict.json").read_text())
    assert data["verdict"] == "fail" and data["exit_code"] == 1
    assert set(data["pipelines"]) == {"hybrid", "vlm", "spatial"}
    assert data["overhead"]["p95"] == pytest.approx(900 / 640 - 1)
    assert "**FAIL**" in (tmp_path / "verdict.md").read_text()


def test_verdict_rejects_other_csvs(tmp_path: Path) -> None:
    bad = tmp_path / "locust_failures.csv"
    bad.write_text("Method,Name,Error,Occurrences\r\n")
    assert runner.main(["verdict", str(bad)]) == 2
    assert runner.main(["verdict", str(tmp_path / "missing.csv")]) == 2


def test_markdown_has_table_and_steps() -> None:
    steps = analyze_steps(read_steps_csv(DATA / "step_load" / "locust_steps.csv"), "reconstruct", 2000, 0.01)
    md = render_markdown(compute_verdict(rows("step_load"), steps=steps))
    assert "| hybrid | 207 | 2 | 0.97% |" in md
    assert "Highest rate under the bound: 16.80 req/s" in md


# --- step load -----------------------------------------------------------------------------------------


def test_step_capacity_from_recorded_steps() -> None:
    step_rows = read_steps_csv(DATA / "step_load" / "locust_steps.csv")
    result = analyze_steps(step_rows, "reconstruct", p95_bound_ms=2000, max_failure_ratio=0.01)
    assert [s["ok"] for s in result["steps"]] == [True, True, True, False]
    assert (result["best_step"], result["users_at_best"]) == (2, 9)
    assert result["max_rps_under_bound"] == pytest.approx(16.8)
    assert result["steps"][0]["overhead_p95"] == pytest.approx(631.9 / 557.4 - 1)
    tighter = analyze_steps(step_rows, "reconstruct", p95_bound_ms=1000, max_failure_ratio=0.01)
    assert tighter["best_step"] == 0
    assert analyze_steps(step_rows, "reconstruct", 100, 0.01)["max_rps_under_bound"] is None


def test_step_plan_schedule_and_bound() -> None:
    plan = StepPlan(start_users=3, step_users=3, step_time_s=10, max_users=9, spawn_rate=3)
    assert plan.n_steps == 3 and plan.duration_s == 30
    assert [plan.target(t) for t in (0, 9.9, 10, 25)] == [(3, 3), (3, 3), (6, 3), (9, 3)]
    assert plan.target(30) is None
    bounded = StepPlan(start_users=3, step_users=3, step_time_s=10, max_users=9, spawn_rate=3, time_limit_s=15)
    assert bounded.target(14.9) == (6, 3) and bounded.target(15) is None
    assert StepPlan(start_users=3, step_users=2, step_time_s=5, max_users=8, spawn_rate=1).users_at(3) == 8


def test_step_recorder_rows_round_trip(tmp_path: Path) -> None:
    plan = StepPlan(start_users=2, step_users=2, step_time_s=10, max_users=4, spawn_rate=2)
    recorder = StepRecorder(plan)
    for i in range(10):
        recorder.record("reconstruct:hybrid", 1.0 + i * 0.5, 100.0 + i, failed=False)
        recorder.record("reconstruct:vlm", 1.0 + i * 0.5, 90.0 + i, failed=i == 0)
        recorder.record("reconstruct:hybrid", 11.0 + i * 0.5, 200.0 + i, failed=False)
    recorder.record("reconstruct:vlm", 25.0, 1.0, failed=False)  # after the planned end: dropped
    path = tmp_path / "locust_steps.csv"
    recorder.write_csv(path, elapsed_s=20.0)
    result = analyze_steps(read_steps_csv(path), "reconstruct", p95_bound_ms=150, max_failure_ratio=0.2)
    first, second = result["steps"]
    assert (first["users"], first["requests"], first["rps"]) == (2, 20, 2.0)
    assert first["pipelines"]["vlm"]["failures"] == 1
    assert first["pipelines"]["hybrid"]["p95"] == 109.0
    assert (second["users"], second["requests"]) == (4, 10) and "vlm" not in second["pipelines"]
    assert result["best_step"] == 0  # step 1's hybrid p95 (209 ms) is over 150 ms


def test_steps_csv_writes_na_for_empty_percentiles(tmp_path: Path) -> None:
    path = tmp_path / "s.csv"
    row = {
        "Step": 0,
        "Users": 1,
        "Start (s)": 0,
        "End (s)": 1,
        "Name": "Aggregated",
        "Request Count": 0,
        "Failure Count": 0,
        "Requests/s": 0.0,
        "50%": None,
        "95%": None,
        "99%": None,
    }
    write_steps_csv(path, [row])
    assert read_steps_csv(path)[0]["95%"] == "N/A"


# --- configuration and inputs --------------------------------------------------------------------------


def test_config_defaults_and_query() -> None:
    config = from_env({})
    assert config.weights == {"hybrid": 1, "vlm": 1, "spatial": 1}
    assert config.request_name("vlm") == "reconstruct:vlm"
    assert config.query("hybrid") == {"pipeline": "hybrid", "frames": "1", "seed": "0", "format": "png"}
    assert config.user_class_count() == 3 and config.active_pipelines() == ["hybrid", "vlm", "spatial"]
    encode = from_env({"LOADTEST_ENDPOINT": "encode", "LOADTEST_STEPS": "4"})
    assert encode.query("vlm") == {"pipeline": "vlm"}
    server_default = from_env({"LOADTEST_FRAMES": "", "LOADTEST_STEPS": "8", "LOADTEST_FORMAT": "mp4"})
    assert server_default.query("vlm") == {"pipeline": "vlm", "steps": "8", "seed": "0", "format": "mp4"}
    paired = from_env({"LOADTEST_USER": "paired", "LOADTEST_WEIGHTS": "spatial=1"})
    assert paired.active_pipelines() == ["hybrid", "vlm"] and paired.user_class_count() == 1


@pytest.mark.parametrize(
    "env",
    [
        {"LOADTEST_WEIGHTS": "hybrid=1,vlm=x"},
        {"LOADTEST_WEIGHTS": "hybrid=1,bogus=1"},
        {"LOADTEST_WEIGHTS": "hybrid=0,vlm=0"},
        {"LOADTEST_WEIGHTS": "hybrid=1,hybrid=2"},
        {"LOADTEST_FRAMES": "4"},
        {"LOADTEST_FRAMES": "0"},
        {"LOADTEST_FORMAT": "bmp"},
        {"LOADTEST_USER": "robot"},
        {"LOADTEST_SHAPE": "spike"},
        {"LOADTEST_STEP_TIME": "0"},
        {"LOADTEST_ENDPOINT": "healthz"},
    ],
)
def test_config_rejects(env: dict[str, str]) -> None:
    with pytest.raises(ConfigError):
        from_env(env)


def test_weights_and_frames() -> None:
    assert parse_weights("hybrid=2, vlm=1") == {"hybrid": 2, "vlm": 1, "spatial": 0}
    assert [validate_frames(f) for f in (1, 9, 17)] == [1, 9, 17]


def test_inputs_are_deterministic() -> None:
    first = input_set(3, 224)
    assert [name for name, _ in first] == ["input-0.png", "input-1.png", "input-2.png"]
    png_bytes.cache_clear()
    assert input_set(3, 224) == first
    assert len({data for _, data in first}) == 3
    assert (make_image(1) == make_image(1)).all()
    with Image.open(io.BytesIO(first[0][1])) as img:
        assert (img.size, img.mode) == ((224, 224), "RGB")


def test_locustfile_user_selection() -> None:
    """``locust --list`` imports the locustfile and lists the runnable classes without sending traffic."""

    def listed(**env: str) -> set[str]:
        proc = subprocess.run(
            [sys.executable, "-m", "locust", "-f", str(runner.LOCUSTFILE), "--list"],
            capture_output=True,
            text=True,
            timeout=120,
            env={**runner.locust_env(os.environ, {}), **env},
        )
        assert proc.returncode == 0, proc.stderr
        return {line.strip() for line in proc.stdout.splitlines()[1:] if line.strip()}

    assert listed() == {"HybridUser", "VlmUser", "SpatialUser"}
    assert listed(LOADTEST_USER="paired") == {"PairedUser"}
    assert listed(LOADTEST_USER="pipeline,paired", LOADTEST_WEIGHTS="hybrid=1,vlm=1") == {
        "HybridUser",
        "VlmUser",
        "PairedUser",
    }


# --- run guards ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("host", ["http://127.0.0.1:8080", "http://localhost:8080/", "http://[::1]:8080"])
def test_loopback_hosts_accepted(host: str) -> None:
    assert runner.check_host(host) == host.rstrip("/")


@pytest.mark.parametrize("host", ["http://192.0.2.10:8080", "http://0.0.0.0:8080", "http://[2001:db8::1]:80"])
def test_remote_hosts_need_explicit_permission(host: str) -> None:
    with pytest.raises(runner.UsageError, match="--allow-remote-host"):
        runner.check_host(host)
    assert runner.check_host(host, allow_remote=True) == host


@pytest.mark.parametrize("host", ["ftp://127.0.0.1", "127.0.0.1:8080", "http://127.0.0.1:8080/?x=1"])
def test_malformed_hosts_rejected(host: str) -> None:
    with pytest.raises(runner.UsageError):
        runner.check_host(host)


def test_parse_timespan() -> None:
    assert [runner.parse_timespan(t) for t in ("45", "45s", "2m", "1h30m", "1m5s")] == [45, 45, 120, 5400, 65]
    for bad in ("", "abc", "5d", "-3s"):
        with pytest.raises(runner.UsageError):
            runner.parse_timespan(bad)


def test_locust_env_drops_proxies_and_locust_settings() -> None:
    base = {
        "PATH": "/bin",
        "HTTP_PROXY": "http://proxy:3128",
        "https_proxy": "x",
        "LOCUST_HOST": "http://x",
        "LOCUST_RUN_TIME": "10h",
        "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector",
        "LOADTEST_FRAMES": "9",
    }
    env = runner.locust_env(base, {"LOADTEST_STEPS": "4"})
    assert env["PATH"] == "/bin" and env["LOADTEST_FRAMES"] == "9" and env["LOADTEST_STEPS"] == "4"
    assert not {"HTTP_PROXY", "https_proxy", "LOCUST_HOST", "LOCUST_RUN_TIME", "OTEL_EXPORTER_OTLP_ENDPOINT"} & set(env)


def test_locust_command_is_bounded(tmp_path: Path) -> None:
    cmd = runner.locust_command("http://127.0.0.1:8080", 4, 4.0, 60, 10, tmp_path)
    assert cmd[1:3] == ["-m", "locust"]
    joined = " ".join(cmd)
    for part in (
        "--headless",
        "--only-summary",
        "--run-time 60s",
        "--stop-timeout 10s",
        "--users 4",
        f"--csv {tmp_path / 'locust'}",
        f"--html {tmp_path / 'report.html'}",
        "--spawn-rate 4",
    ):
        assert part in joined


def test_hard_timeout_stops_a_wedged_run(tmp_path: Path) -> None:
    started = time.monotonic()
    code, error = runner.run_locust(
        [sys.executable, "-c", "import time; print('wedged', flush=True); time.sleep(60)"],
        dict(os.environ),
        hard_timeout_s=1.0,
        log_path=tmp_path / "locust.log",
        echo=False,
    )
    assert time.monotonic() - started < 20
    assert code is not None and code != 0
    assert error is not None and "hard timeout" in error
    assert "wedged" in (tmp_path / "locust.log").read_text()


@pytest.mark.parametrize(
    "args",
    [
        ["--host", "http://192.0.2.10:8080"],
        ["--host", UNUSED_PORT_URL, "--weights", "hybrid=1,spatial=1"],
        ["--host", UNUSED_PORT_URL, "--users", "2"],
        ["--host", UNUSED_PORT_URL, "--shape", "step", "--step-users", "1"],
        ["--host", UNUSED_PORT_URL, "--frames", "4"],
        ["--host", UNUSED_PORT_URL, "--run-time", "0s"],
        ["--host", UNUSED_PORT_URL, "--wait-ready", "0"],  # nothing listening: not ready
    ],
)
def test_run_usage_errors_exit_2_without_reports(args: list[str], tmp_path: Path) -> None:
    out = tmp_path / "run"
    assert runner.main([*args, "--out", str(out)]) == 2
    assert not out.exists()


def test_run_refuses_to_overwrite_a_run(tmp_path: Path) -> None:
    shutil.copy(DATA / "under_budget" / "locust_stats.csv", tmp_path / "locust_stats.csv")
    assert runner.main(["--host", UNUSED_PORT_URL, "--out", str(tmp_path)]) == 2


# --- a real, short Locust run against the embedded stack -------------------------------------------------


@pytest.mark.integration
def test_short_locust_run_against_embedded_stack(gateway_url: str, tmp_path: Path) -> None:
    out = tmp_path / "run"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "loadtest",
            "--host",
            gateway_url,
            "--users",
            "3",
            "--spawn-rate",
            "3",
            "--run-time",
            "8s",
            "--stop-timeout",
            "10s",
            "--out",
            str(out),
            "--quiet",
        ],
        capture_output=True,
        text=True,
        timeout=8 + 10 + runner.HARD_TIMEOUT_GRACE_S + 60,
        cwd=REPO,
    )
    # Random-weight CPU models say nothing about the real overhead: pass and fail are both valid verdicts.
    assert proc.returncode in (0, 1), proc.stdout + proc.stderr
    assert "load-test verdict" in proc.stdout
    for name in ("report.html", "locust_stats.csv", "locust_failures.csv", "verdict.json", "verdict.md"):
        assert (out / name).is_file(), name
    assert not (out / "locust_stats_final.csv").exists()  # swapped in for Locust's last periodic snapshot

    verdict = json.loads((out / "verdict.json").read_text())
    assert verdict["exit_code"] == proc.returncode
    assert set(verdict["pipelines"]) == {"hybrid", "vlm", "spatial"}
    for pipeline, stats in verdict["pipelines"].items():
        assert stats["requests"] > 0, pipeline
        assert stats["failure_ratio"] == 0, pipeline
        assert stats["p95"] is not None and stats["p95"] > 0, pipeline
    assert verdict["overhead"]["p50"] is not None and verdict["overhead"]["p95"] is not None
    assert verdict["run"]["host"] == gateway_url.rstrip("/") and verdict["run"]["error"] is None
    assert verdict["run"]["wall_s"] < 8 + 10 + runner.HARD_TIMEOUT_GRACE_S
