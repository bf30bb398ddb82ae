"""``python -m loadtest``: one bounded, headless Locust run against the gateway, then the verdict.

The lab wants a verdict, not a pile of CSVs, and a run that cannot hurt anything:

* traffic goes only to a host that resolves to loopback, unless ``--allow-remote-host`` names another one
  explicitly; the Locust client ignores proxy variables, so "127.0.0.1" really means this machine;
* every run has a ``--run-time`` (Locust's own bound) *and* a hard wall-clock timeout on the Locust process
  slightly above it, so a wedged gateway or locustfile cannot keep a CI job alive;
* the exit code is the verdict: 0 pass, 1 fail, 2 usage or run error (bad option, gateway not ready, no
  samples, Locust crashed or was killed).

``python -m loadtest verdict DIR_OR_CSV`` re-judges recorded results without sending any traffic.
"""

from __future__ import annotations

import argparse
import datetime as dt
import ipaddress
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import urlsplit

from loadtest.config import ENDPOINTS, FORMATS, SHAPES, ConfigError, LoadConfig, from_env
from loadtest.steps import analyze_steps, read_steps_csv
from loadtest.verdict import (
    EXIT_ERROR,
    StatsFormatError,
    Verdict,
    compute_verdict,
    read_stats_csv,
    render_text,
)
from loadtest.verdict import write_reports as write_verdict_reports

DEFAULT_HOST = "http://127.0.0.1:8080"
LOCUSTFILE = Path(__file__).with_name("locustfile.py")
MAX_RUN_TIME_S = 24 * 3600
# Locust start-up (importing gevent, generating inputs) and report writing on top of run + stop timeout.
HARD_TIMEOUT_GRACE_S = 60.0
_PROXY_VARS = ("http_proxy", "https_proxy", "all_proxy", "no_proxy")


class UsageError(Exception):
    """Bad command line, refused host, gateway not ready: exit 2 before or instead of a verdict."""


# --- small pure helpers (unit-tested) -----------------------------------------------------------------


def parse_timespan(text: str) -> int:
    """Seconds in a Locust-style timespan: ``90``, ``90s``, ``2m``, ``1h30m``, ``1m30s``."""
    value = text.strip().lower()
    if value.isdigit():
        seconds = int(value)
    else:
        match = re.fullmatch(r"(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?", value)
        if not value or match is None:
            raise UsageError(f"invalid timespan {text!r}; use e.g. 45s, 2m, 1h30m")
        h, m, s = (int(g) if g else 0 for g in match.groups())
        seconds = h * 3600 + m * 60 + s
    return seconds


def _is_loopback(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback


def check_host(url: str, allow_remote: bool = False) -> str:
    """Validate ``--host``; returns it without a trailing slash or raises :class:`UsageError`.

    Every address the name resolves to must be loopback: a name that resolves to both (a hosts-file trick
    or split DNS) would let Locust's connection go elsewhere.
    """
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UsageError(f"--host must be an http(s) URL such as {DEFAULT_HOST}, got {url!r}")
    if parts.query or parts.fragment:
        raise UsageError(f"--host must not carry a query or fragment: {url!r}")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
        infos = socket.getaddrinfo(parts.hostname, port, proto=socket.IPPROTO_TCP)
    except (OSError, ValueError) as exc:
        raise UsageError(f"--host {url!r}: cannot resolve {parts.hostname!r} ({exc})") from None
    addresses = sorted({info[4][0] for info in infos})
    if not all(_is_loopback(a) for a in addresses) and not allow_remote:
        raise UsageError(
            f"--host {url!r} resolves to {', '.join(addresses)}, which is not loopback; load tests go to "
            "127.0.0.1 unless you pass --allow-remote-host to name another host explicitly"
        )
    return url.rstrip("/")


def locust_env(base: Mapping[str, str], overrides: Mapping[str, str]) -> dict[str, str]:
    """Environment for the Locust process.

    Proxy variables and ``LOCUST_*`` settings are dropped so that neither a proxy nor a stray
    ``LOCUST_HOST``/``LOCUST_RUN_TIME`` in the caller's shell changes where traffic goes or how long it lasts.
    """
    env = {
        k: v
        for k, v in base.items()
        if k.lower() not in _PROXY_VARS and not k.startswith("LOCUST_") and not k.startswith("OTEL_")
    }
    env.update(overrides)
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def locust_command(
    host: str,
    users: int,
    spawn_rate: float | None,
    run_time_s: int,
    stop_timeout_s: int,
    out_dir: Path,
    python: str = sys.executable,
) -> list[str]:
    """The headless Locust command line: CSVs to ``out_dir/locust_*.csv``, HTML to ``out_dir/report.html``."""
    cmd = [
        python,
        "-m",
        "locust",
        "-f",
        str(LOCUSTFILE),
        "--headless",
        "--only-summary",
        "--host",
        host,
        "--users",
        str(users),
        "--run-time",
        f"{run_time_s}s",
        "--stop-timeout",
        f"{stop_timeout_s}s",
        "--csv",
        str(out_dir / "locust"),
        "--html",
        str(out_dir / "report.html"),
        "--exit-code-on-error",
        "1",
    ]
    if spawn_rate is not None:
        cmd += ["--spawn-rate", f"{spawn_rate:g}"]
    return cmd


def default_out_dir(now: dt.datetime | None = None) -> Path:
    stamp = (now or dt.datetime.now(dt.timezone.utc)).strftime("%Y%m%dT%H%M%SZ")
    return Path("results") / "loadtest" / stamp


# --- the run ------------------------------------------------------------------------------------------


def _opener() -> urllib.request.OpenerDirector:
    """urllib without proxies, for the same reason as :func:`locust_env`."""
    return urllib.request.build_opener(urllib.request.ProxyHandler({}))


def wait_ready(host: str, timeout_s: float) -> None:
    """Poll ``/readyz`` until it answers 200: a run against a warming-up gateway would measure start-up."""
    deadline = time.monotonic() + timeout_s
    last = "no answer"
    opener = _opener()
    while True:
        try:
            with opener.open(f"{host}/readyz", timeout=5) as resp:
                if resp.status == 200:
                    return
                last = f"HTTP {resp.status}"
        except urllib.error.HTTPError as exc:
            last = f"HTTP {exc.code}"
        except (urllib.error.URLError, OSError) as exc:
            last = str(getattr(exc, "reason", exc))
        if time.monotonic() >= deadline:
            raise UsageError(f"gateway at {host} is not ready ({host}/readyz: {last}); is it up (`make up`)?")
        time.sleep(1.0)


def fetch_server_overhead(host: str, out_dir: Path) -> Any:
    """Best effort: keep the gateway's own ``/v1/overhead`` view next to the client-side verdict."""
    try:
        with _opener().open(f"{host}/v1/overhead", timeout=5) as resp:
            data = json.loads(resp.read().decode("utf-8"))
    except (urllib.error.URLError, OSError, ValueError):
        return None
    (out_dir / "server_overhead.json").write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    return data


def _pump(stream: TextIO, log: TextIO, echo: bool) -> None:
    for line in stream:
        log.write(line)
        if echo:
            sys.stdout.write(line)
            sys.stdout.flush()


def run_locust(
    cmd: Sequence[str], env: Mapping[str, str], hard_timeout_s: float, log_path: Path, echo: bool = True
) -> tuple[int | None, str | None]:
    """Run Locust, tee its output to ``log_path``; returns ``(returncode, error)``.

    On the hard timeout Locust gets SIGTERM (it then still writes its reports), then SIGKILL 15 s later.
    """
    with open(log_path, "w", encoding="utf-8") as log:
        proc = subprocess.Popen(
            list(cmd),
            env=dict(env),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            bufsize=1,
        )
        assert proc.stdout is not None
        pump = threading.Thread(target=_pump, args=(proc.stdout, log, echo), daemon=True)
        pump.start()
        error: str | None = None
        try:
            proc.wait(timeout=hard_timeout_s)
        except subprocess.TimeoutExpired:
            error = f"Locust did not stop within the hard timeout of {hard_timeout_s:.0f}s; terminated"
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        except KeyboardInterrupt:
            # The terminal's Ctrl+C reached Locust too; let it write its reports, then judge what we have.
            error = "interrupted"
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        pump.join(timeout=5)
    return proc.returncode, error


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m loadtest",
        description="Bounded headless Locust run against the gateway, then the E-P2.6 overhead verdict. "
        "`python -m loadtest verdict DIR` re-judges recorded results.",
    )
    parser.add_argument("--host", default=DEFAULT_HOST, help="gateway base URL (default %(default)s)")
    parser.add_argument(
        "--allow-remote-host", action="store_true", help="allow a --host that does not resolve to loopback"
    )
    parser.add_argument("--users", type=int, default=3, help="concurrent users; the ceiling with --shape step")
    parser.add_argument(
        "--spawn-rate", type=float, default=None, help="users started per second (default: all at once)"
    )
    parser.add_argument("--run-time", default="60s", help="bound of the run, e.g. 45s, 2m (default %(default)s)")
    parser.add_argument("--stop-timeout", default="10s", help="grace for in-flight requests at the end")
    parser.add_argument("--out", type=Path, default=None, help="report directory (default results/loadtest/<UTC time>)")
    add_verdict_options(parser)
    group = parser.add_argument_group("traffic (default: the LOADTEST_* variable, see loadtest/README.md)")
    group.add_argument("--user-class", dest="user", help="pipeline, paired or pipeline,paired (LOADTEST_USER)")
    group.add_argument("--shape", choices=SHAPES, help="none or step (LOADTEST_SHAPE)")
    group.add_argument("--weights", help='pipeline user weights, e.g. "hybrid=1,vlm=1,spatial=1"')
    group.add_argument("--endpoint", choices=ENDPOINTS, help="reconstruct or encode (LOADTEST_ENDPOINT)")
    group.add_argument("--frames", help="8k+1 frames per request; empty for the server default")
    group.add_argument("--steps", help="decoder steps per request; empty for the server default")
    group.add_argument("--seed", help="seed query parameter (LOADTEST_SEED)")
    group.add_argument("--format", choices=FORMATS, help="reply format (LOADTEST_FORMAT)")
    group.add_argument(
        "--rate",
        type=float,
        default=None,
        help="target total requests/s at --users (paced users); default: closed loop",
    )
    group.add_argument("--request-timeout", help="per-request timeout in seconds (LOADTEST_TIMEOUT)")
    group.add_argument("--step-users", help="users added per step (LOADTEST_STEP_USERS)")
    group.add_argument("--step-time", help="seconds per step (LOADTEST_STEP_TIME)")
    group.add_argument("--step-start-users", help="users in the first step (LOADTEST_STEP_START_USERS)")
    parser.add_argument(
        "--wait-ready",
        type=float,
        default=30.0,
        help="seconds to wait for /readyz before giving up (default %(default)s)",
    )
    parser.add_argument("--quiet", action="store_true", help="do not echo Locust's output (it is in locust.log)")
    return parser


def _non_negative(text: str) -> float:
    """argparse type: a float >= 0 (budgets, ratios and bounds below zero are typos, not settings)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def add_verdict_options(parser: argparse.ArgumentParser) -> None:
    """Thresholds shared by a run and by ``verdict``; string defaults from the environment go through ``type``,
    so a malformed ``LOADTEST_BUDGET`` is a usage error (exit 2) like a malformed ``--budget``."""
    env = os.environ
    parser.add_argument(
        "--budget",
        type=_non_negative,
        default=env.get("LOADTEST_BUDGET", "0.25"),
        help="max overhead of hybrid over vlm at p50 and p95 (default %(default)s)",
    )
    parser.add_argument(
        "--max-failure-ratio",
        type=_non_negative,
        default=env.get("LOADTEST_MAX_FAILURE_RATIO", "0.01"),
        help="max failed/total requests per pipeline and overall (default %(default)s)",
    )
    parser.add_argument(
        "--min-requests",
        type=int,
        default=1,
        help="fewer hybrid or vlm requests than this makes the verdict inconclusive",
    )
    parser.add_argument(
        "--p95-bound-ms",
        type=_non_negative,
        default=env.get("LOADTEST_P95_BOUND_MS", "2000"),
        help="p95 bound for the step-load capacity line (default %(default)s)",
    )


_ENV_OPTIONS = {
    "user": "LOADTEST_USER",
    "shape": "LOADTEST_SHAPE",
    "weights": "LOADTEST_WEIGHTS",
    "endpoint": "LOADTEST_ENDPOINT",
    "frames": "LOADTEST_FRAMES",
    "steps": "LOADTEST_STEPS",
    "seed": "LOADTEST_SEED",
    "format": "LOADTEST_FORMAT",
    "request_timeout": "LOADTEST_TIMEOUT",
    "step_users": "LOADTEST_STEP_USERS",
    "step_time": "LOADTEST_STEP_TIME",
    "step_start_users": "LOADTEST_STEP_START_USERS",
}


def _overrides(args: argparse.Namespace, users: int) -> dict[str, str]:
    out = {env: str(getattr(args, opt)) for opt, env in _ENV_OPTIONS.items() if getattr(args, opt) is not None}
    if args.rate is not None:
        if args.rate <= 0:
            raise UsageError("--rate must be > 0")
        out["LOADTEST_USER_RATE"] = f"{args.rate / users:.6g}"
    return out


def _validate(config: LoadConfig, users: int) -> None:
    """Refuse runs that cannot produce a verdict, before sending any traffic."""
    active = config.active_pipelines()
    missing = [p for p in ("hybrid", "vlm") if p not in active]
    if missing:
        raise UsageError(
            f"the verdict compares hybrid with vlm, but {', '.join(missing)} gets no traffic "
            f"(weights {config.weights}, user classes {','.join(config.user_kinds)})"
        )
    needed = config.user_class_count()
    if config.shape == "none" and users < needed:
        raise UsageError(
            f"--users {users} is fewer than the {needed} enabled user classes; "
            "Locust would leave a pipeline without users"
        )
    if config.shape == "step":
        first = config.step.start_users or config.step.step_users or config.user_set_size()
        if first < needed:
            raise UsageError(
                f"the first step has {first} users, fewer than the {needed} enabled user classes; "
                "raise --step-start-users or --step-users"
            )


def judge(out_dir: Path, args: argparse.Namespace, endpoint: str) -> Verdict:
    """Verdict for the reports in ``out_dir`` (raises :class:`StatsFormatError` without a stats CSV)."""
    rows = read_stats_csv(out_dir / "locust_stats.csv")
    steps_path = out_dir / "locust_steps.csv"
    steps = None
    if steps_path.exists():
        steps = analyze_steps(read_steps_csv(steps_path), endpoint, args.p95_bound_ms, args.max_failure_ratio)
    return compute_verdict(rows, args.budget, args.max_failure_ratio, endpoint, args.min_requests, steps)


def run_main(argv: Sequence[str]) -> int:
    args = build_parser().parse_args(argv)
    try:
        host = check_host(args.host, args.allow_remote_host)
        if args.users < 1:
            raise UsageError("--users must be >= 1")
        if args.spawn_rate is not None and args.spawn_rate <= 0:
            raise UsageError("--spawn-rate must be > 0")
        run_time_s = parse_timespan(args.run_time)
        stop_timeout_s = parse_timespan(args.stop_timeout)
        if not 0 < run_time_s <= MAX_RUN_TIME_S:
            raise UsageError(f"--run-time must be between 1s and {MAX_RUN_TIME_S}s, got {args.run_time!r}")
        env = locust_env(os.environ, _overrides(args, args.users))
        config = from_env(env)
        _validate(config, args.users)
        out_dir: Path = args.out or default_out_dir()
        if (out_dir / "locust_stats.csv").exists() or (out_dir / "verdict.json").exists():
            raise UsageError(f"{out_dir} already holds a run; pick a fresh --out")
        wait_ready(host, args.wait_ready)
        out_dir.mkdir(parents=True, exist_ok=True)
    except (UsageError, ConfigError) as exc:
        print(f"loadtest: error: {exc}", file=sys.stderr)
        return EXIT_ERROR

    spawn_rate = args.spawn_rate
    if spawn_rate is None and config.shape == "none":
        spawn_rate = float(args.users)
    cmd = locust_command(host, args.users, spawn_rate, run_time_s, stop_timeout_s, out_dir)
    hard_timeout_s = run_time_s + stop_timeout_s + HARD_TIMEOUT_GRACE_S
    what = f"{args.users} users" if config.shape == "none" else f"step load up to {args.users} users"
    print(
        f"loadtest: {what} against {host} for at most {run_time_s}s "
        f"(hard stop after {hard_timeout_s:.0f}s); reports in {out_dir}",
        flush=True,
    )
    started = time.monotonic()
    returncode, run_error = run_locust(cmd, env, hard_timeout_s, out_dir / "locust.log", echo=not args.quiet)
    wall_s = time.monotonic() - started
    if returncode not in (0, 1) and run_error is None:
        run_error = f"Locust exited with code {returncode} (see {out_dir / 'locust.log'})"

    final = out_dir / "locust_stats_final.csv"
    if final.exists():
        final.replace(out_dir / "locust_stats.csv")
    try:
        verdict = judge(out_dir, args, config.endpoint)
    except (StatsFormatError, ValueError) as exc:
        print(
            f"loadtest: error: no usable stats ({exc}); {run_error or 'see ' + str(out_dir / 'locust.log')}",
            file=sys.stderr,
        )
        return EXIT_ERROR
    verdict.extra["run"] = {
        "host": host,
        "users": args.users,
        "spawn_rate": spawn_rate,
        "run_time_s": run_time_s,
        "stop_timeout_s": stop_timeout_s,
        "wall_s": round(wall_s, 2),
        "locust_exit_code": returncode,
        "error": run_error,
        "command": cmd,
        "config": config.to_dict(),
    }
    verdict.extra["server_overhead"] = fetch_server_overhead(host, out_dir)
    json_path, md_path = write_verdict_reports(verdict, out_dir)
    print()
    print(render_text(verdict))
    print(f"\nreports: {out_dir / 'report.html'}, {out_dir / 'locust_stats.csv'}, {json_path}, {md_path}")
    if run_error:
        print(f"loadtest: run error: {run_error}", file=sys.stderr)
        return EXIT_ERROR
    return verdict.exit_code


def verdict_main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m loadtest verdict",
        description="Judge recorded Locust results (a *_stats.csv or a run directory); sends no traffic.",
    )
    parser.add_argument("path", type=Path, help="locust_stats.csv or a directory from `python -m loadtest`")
    parser.add_argument("--endpoint", choices=ENDPOINTS, default="reconstruct")
    parser.add_argument("--steps-csv", type=Path, default=None, help="per-step CSV (default: next to the stats)")
    parser.add_argument("--write", action="store_true", help="(re)write verdict.json/verdict.md next to the CSV")
    add_verdict_options(parser)
    args = parser.parse_args(argv)

    stats_path: Path = args.path
    if stats_path.is_dir():
        final = stats_path / "locust_stats_final.csv"
        stats_path = final if final.exists() else stats_path / "locust_stats.csv"
    try:
        rows = read_stats_csv(stats_path)
        steps_path = args.steps_csv or stats_path.with_name("locust_steps.csv")
        steps = None
        if steps_path.exists():
            steps = analyze_steps(read_steps_csv(steps_path), args.endpoint, args.p95_bound_ms, args.max_failure_ratio)
    except (StatsFormatError, ValueError, KeyError) as exc:
        print(f"loadtest verdict: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    verdict = compute_verdict(rows, args.budget, args.max_failure_ratio, args.endpoint, args.min_requests, steps)
    verdict.extra["source"] = str(stats_path)
    print(render_text(verdict))
    if args.write:
        write_verdict_reports(verdict, stats_path.parent)
    return verdict.exit_code


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: ``verdict`` subcommand, optional ``run`` subcommand, or the run options directly."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] == "verdict":
        return verdict_main(args[1:])
    if args and args[0] == "run":
        args = args[1:]
    return run_main(args)
