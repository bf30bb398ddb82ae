"""Locust users for the gateway and the E-P2.6 verdict: hybrid's overhead over vlm under load, budget 25%.

`python -m loadtest [options] [UserClass ...]` (`make loadtest`) is `locust -f loadtest/locustfile.py`, and every
part is Locust's own mechanism: options through its parser (`init_command_line_parser`, each with a `LOADTEST_*`
variable) with defaults that make a run headless, bounded and aimed at 127.0.0.1:8080; user classes by name
(default: the three pipeline users) and weights through `--config-users`; the load, plain or in steps, from one
`LoadTestShape` (which also enforces `--run-time`: Locust does not apply it to shapes); the verdict from Locust's
in-process stats at `quitting`, as `environment.process_exit_code`. Refused before any traffic, with exit 2: a host
that is not loopback (unless `--allow-remote-host`), an unbounded run, hybrid or vlm without users, a gateway whose
/readyz is not 200. Request names are `<endpoint>:<pipeline>`: one stats row per pipeline. See loadtest/README.md.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import datetime as dt
import ipaddress
import itertools
import math
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import requests
from locust import HttpUser, LoadTestShape, events, log, task
from locust.env import Environment
from locust.stats import PERCENTILES_TO_REPORT, RequestStats, StatsCSV
from locust.user.wait_time import constant_throughput

from hybrid import samples
from hybrid.contracts import IMAGE_SIZE, PIPELINES, valid_frame_count
from hybrid.media import OUTPUT_FORMATS
from loadtest.verdict import judge, render_text, row, write_reports

DEFAULT_HOST = "http://127.0.0.1:8080"
MAX_RUN_TIME_S = 24 * 3600


class UsageError(Exception):
    """A run that must not start: reported as exit 2, never as a verdict."""


def _number(low: float, kind: Callable[[str], Any] = float, empty_is_none: bool = False) -> Callable[[str], Any]:
    """argparse type: a number >= `low` (a budget or a bound below it is a typo, not a setting)."""

    def parse(text: str) -> Any:
        if empty_is_none and not text.strip():
            return None
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be >= {low}, got {text}")
        return value

    return parse


class _OutDir(argparse.Action):
    """`--out DIR`: the report directory; Locust's CSVs and HTML report go there too. A used one is refused."""

    def __call__(self, parser: Any, namespace: argparse.Namespace, value: Any, option_string: Any = None) -> None:
        if (Path(value) / "verdict.json").exists():
            parser.error(f"--out {value} already holds a run; pick a fresh one")
        namespace.out, namespace.csv_prefix, namespace.html_file = value, f"{value}/locust", f"{value}/report.html"


@events.init_command_line_parser.add_listener
def _options(parser: Any) -> None:
    out = Path("results", "loadtest", dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ"))
    parser.set_defaults(
        host=DEFAULT_HOST,
        headless=True,
        only_summary=True,
        num_users=3,
        run_time=60,
        stop_timeout=10,
        user_classes=["HybridUser", "VlmUser", "SpatialUser"],
        out=str(out),
        csv_prefix=str(out / "locust"),
        html_file=str(out / "report.html"),
    )
    g = parser.add_argument_group("loadtest (E-P2.6 verdict; see loadtest/README.md)")
    g.add_argument("--out", action=_OutDir, help="report directory (default results/loadtest/<UTC time>)")
    g.add_argument("--allow-remote-host", action="store_true", help="allow a --host that is not loopback")
    g.add_argument("--wait-ready", type=_number(0), default=30.0, help="seconds to wait for /readyz to be 200")
    verdict = {"budget": 0.25, "max-failure-ratio": 0.01, "p95-bound-ms": 2000.0}
    for name, default in verdict.items():
        env = "LOADTEST_" + name.upper().replace("-", "_")
        g.add_argument(f"--{name}", type=_number(0), default=default, env_var=env, help=f"{env} (default {default})")
    g.add_argument("--min-requests", type=_number(1, int), default=1, help="fewer hybrid or vlm: inconclusive")
    g.add_argument("--endpoint", choices=("reconstruct", "encode"), default="reconstruct", env_var="LOADTEST_ENDPOINT")
    g.add_argument("--frames", type=_number(1, int, True), default="1", env_var="LOADTEST_FRAMES", help="8k+1")
    g.add_argument("--denoising-steps", type=_number(1, int, True), env_var="LOADTEST_DENOISING_STEPS")
    g.add_argument("--seed", type=_number(0, int), default=0, env_var="LOADTEST_SEED")
    g.add_argument("--format", choices=[*OUTPUT_FORMATS, ""], default="png", env_var="LOADTEST_FORMAT")
    g.add_argument("--rate", type=_number(0), default=0.0, env_var="LOADTEST_RATE", help="total req/s at --users")
    g.add_argument("--request-timeout", type=_number(0.001), default=120.0, env_var="LOADTEST_TIMEOUT")
    g.add_argument("--shape", choices=("none", "step"), default="none", env_var="LOADTEST_SHAPE")
    g.add_argument("--step-users", type=_number(1, int), env_var="LOADTEST_STEP_USERS", help="default: one user set")
    g.add_argument("--step-time", type=_number(0.001), default=20.0, env_var="LOADTEST_STEP_TIME", help="seconds")
    g.add_argument("--step-start-users", type=_number(1, int), env_var="LOADTEST_STEP_START_USERS")


def check_response(response: Any, pipeline: str) -> None:
    """Failed unless a non-empty 200 from the pipeline asked for; messages without per-request detail, so Locust's
    failure table groups them by cause."""
    if not response.status_code:
        response.failure(f"connection error: {type(response.error).__name__}")
    elif response.status_code != 200:
        try:
            code = f" {response.json()['error']['code']}"
        except (ValueError, KeyError, TypeError):  # not the gateway's JSON error body
            code = ""
        response.failure(f"HTTP {response.status_code}{code}")
    elif response.headers.get("X-Pipeline", pipeline) != pipeline:
        response.failure(f"X-Pipeline is {response.headers['X-Pipeline']!r}, expected {pipeline!r}")
    elif not response.content:
        response.failure("empty body")
    else:
        response.success()


_TURNS = itertools.count()


class GatewayUser(HttpUser):
    """Posts the deterministic inputs to its pipelines in a closed loop (or paced by `--rate`)."""

    abstract = True
    pipelines: tuple[str, ...] = ()
    images: list[bytes] = []  # set at init

    def on_start(self) -> None:
        self.client.trust_env = False  # requests honours HTTP(S)_PROXY; traffic must reach only the named host
        self.turn = next(_TURNS)  # users start at different images (and orders), then rotate

    def wait_time(self) -> float:
        o = self.environment.parsed_options
        if not o.rate:
            return 0.0
        return constant_throughput(o.rate / o.num_users / len(self.pipelines))(self)

    @task
    def send(self) -> None:
        o = self.environment.parsed_options
        image = self.images[self.turn % len(self.images)]
        order = self.pipelines if self.turn % 2 == 0 else self.pipelines[::-1]  # cancels warm-cache order effects
        self.turn += 1
        for pipeline in order:
            query = {"pipeline": pipeline}
            if o.endpoint == "reconstruct":  # unset values are left to the server's defaults
                given = {"frames": o.frames, "steps": o.denoising_steps, "seed": o.seed, "format": o.format or None}
                query |= {k: str(v) for k, v in given.items() if v is not None}
            with self.client.post(
                f"/{o.endpoint}",
                params=query,
                files={"file": ("input.png", image, "image/png")},
                name=f"{o.endpoint}:{pipeline}",
                timeout=o.request_timeout,
                catch_response=True,
            ) as response:
                check_response(response, pipeline)


class HybridUser(GatewayUser):
    pipelines = ("hybrid",)


class VlmUser(GatewayUser):
    pipelines = ("vlm",)


class SpatialUser(GatewayUser):
    pipelines = ("spatial",)


class PairedUser(GatewayUser):
    """The same image and parameters to hybrid and vlm back to back: identical inputs under identical load."""

    pipelines = ("hybrid", "vlm")


class LoadShape(LoadTestShape):
    """`--users` at once (`--shape none`), or `--step-start-users` plus `--step-users` every `--step-time` seconds
    up to `--users` (`--shape step`); ends at `--run-time` or after the last step. With the step load every request
    is also booked, by the step it started in, into that step's own Locust `RequestStats`."""

    use_common_options = True
    o: argparse.Namespace  # the run's options, set at init

    def __init__(self) -> None:
        super().__init__()
        self.step_stats: dict[int, RequestStats] = {}

    def users_at(self, step: int) -> int:
        return min(self.o.step_start_users + step * self.o.step_users, self.o.num_users)

    def duration(self) -> float:
        if self.o.shape == "none":
            return float(self.o.run_time)
        more = max(0, self.o.num_users - self.o.step_start_users)
        return min((1 + math.ceil(more / self.o.step_users)) * self.o.step_time, self.o.run_time)

    def tick(self) -> tuple[int, float] | None:
        elapsed = self.get_run_time()
        if elapsed >= self.duration():
            return None
        users = self.o.num_users if self.o.shape == "none" else self.users_at(int(elapsed // self.o.step_time))
        return users, self.o.spawn_rate

    def book(self, request_type: str, name: str, response_time: float, response_length: int, **kw: Any) -> None:
        started = self.get_run_time() - response_time / 1000
        if started < self.duration():
            stats = self.step_stats.setdefault(int(started // self.o.step_time), RequestStats(False))
            stats.log_request(request_type, name, int(response_time), response_length)
            if kw.get("exception") is not None:
                stats.log_error(request_type, name, kw["exception"])

    def measured_steps(self) -> list[dict[str, Any]]:
        steps = []
        for step, stats in sorted(self.step_stats.items()):
            seconds = min((step + 1) * self.o.step_time, self.duration()) - step * self.o.step_time
            names = {name.rpartition(":")[2]: entry for (name, _), entry in stats.entries.items()}
            pipelines = {p: row(names[p], seconds) for p in PIPELINES if p in names}
            rps = stats.total.num_requests / seconds
            steps.append({"step": step, "users": self.users_at(step), "rps": rps, "pipelines": pipelines})
        return steps


def check_host(url: str, allow_remote: bool) -> None:
    """Every address the host resolves to must be loopback: a name resolving to both could send traffic away."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment:
        raise UsageError(f"--host must be an http(s) URL such as {DEFAULT_HOST}, got {url!r}")
    try:
        infos = socket.getaddrinfo(parts.hostname, parts.port or 80, proto=socket.IPPROTO_TCP)
    except (OSError, ValueError) as exc:
        raise UsageError(f"--host {url!r}: cannot resolve {parts.hostname!r} ({exc})") from None
    addresses = sorted({str(info[4][0]) for info in infos})
    if not allow_remote and not all(ipaddress.ip_address(a.split("%")[0]).is_loopback for a in addresses):
        raise UsageError(
            f"--host {url!r} resolves to {', '.join(addresses)}, which is not loopback; load tests go to 127.0.0.1 "
            "unless --allow-remote-host names another host explicitly"
        )


def _session() -> requests.Session:
    session = requests.Session()
    session.trust_env = False  # no proxy, as for the users
    return session


def wait_ready(host: str, timeout_s: float) -> None:
    """A run against a warming-up gateway would measure its start-up, not the pipelines."""
    deadline, last = time.monotonic() + timeout_s, "no answer"
    with _session() as session:
        while True:
            try:
                status = session.get(f"{host}/readyz", timeout=5).status_code
                if status == 200:
                    return
                last = f"HTTP {status}"
            except requests.RequestException as exc:
                last = type(exc).__name__
            if time.monotonic() >= deadline:
                raise UsageError(f"gateway at {host} is not ready ({host}/readyz: {last}); is it up (`make up`)?")
            time.sleep(1.0)


@events.init.add_listener
def _prepare(environment: Environment, **_: Any) -> None:
    """Refuse a run that cannot be judged or must not run, before any traffic; resolve the shape's defaults."""
    o = environment.parsed_options
    assert o is not None
    classes = [c for c in environment.user_classes if c.weight > 0]
    try:
        check_host(environment.host or "", o.allow_remote_host)
        if not 0 < (o.run_time or 0) <= MAX_RUN_TIME_S:
            raise UsageError(f"--run-time must be between 1s and {MAX_RUN_TIME_S}s")
        if o.frames is not None and not valid_frame_count(o.frames):
            raise UsageError(f"--frames must be 8k+1 (1, 9, 17, ...), got {o.frames}")
        if not isinstance(environment.shape_class, LoadShape):
            raise UsageError("--run-time is enforced by loadtest's LoadShape; another shape class was chosen")
        served = {p for c in classes for p in getattr(c, "pipelines", ())}
        if missing := [p for p in ("hybrid", "vlm") if p not in served]:
            raise UsageError(f"the verdict compares hybrid with vlm; {', '.join(missing)} gets no users")
        o.step_users = o.step_users or sum(c.weight for c in classes)  # one user set keeps the weights' ratio
        o.step_start_users = o.step_start_users or o.step_users
        first = o.num_users if o.shape == "none" else min(o.step_start_users, o.num_users)
        if first < len(classes):
            raise UsageError(f"{first} users (at first) for {len(classes)} user classes: a pipeline would get none")
        o.spawn_rate = o.spawn_rate or (o.num_users if o.shape == "none" else o.step_users)
        wait_ready(environment.host or "", o.wait_ready)
    except UsageError as exc:
        sys.stderr.write(f"loadtest: error: {exc}\n")
        if o.csv_prefix:  # Locust opened its CSVs before this event; a run refused leaves no files
            prefix = Path(o.csv_prefix)
            for created in prefix.parent.glob(f"{prefix.name}_*.csv"):
                created.unlink()
            with contextlib.suppress(OSError):
                prefix.parent.rmdir()
        raise SystemExit(2) from None
    GatewayUser.images = samples.pngs(3, IMAGE_SIZE, seed=1000)  # generated here: nothing is downloaded
    environment.shape_class.o = o
    if o.shape == "step":
        environment.events.request.add_listener(environment.shape_class.book)


@events.quitting.add_listener
def _verdict(environment: Environment, **_: Any) -> None:
    """Judge Locust's final stats; the exit code is the verdict's (2 when Locust itself failed)."""
    environment.process_exit_code = 2  # unless the verdict below is reached
    o, stats, shape = environment.parsed_options, environment.stats, environment.shape_class
    assert o is not None and isinstance(shape, LoadShape)
    entries = {p: stats.entries.get((f"{o.endpoint}:{p}", "POST")) for p in PIPELINES}
    measured = {
        "endpoint": o.endpoint,
        "pipelines": {p: row(e) for p, e in entries.items() if e is not None},
        "total": row(stats.total),
        "steps": shape.measured_steps() if o.shape == "step" else None,
    }
    verdict = judge(measured, o.budget, o.max_failure_ratio, o.min_requests, o.p95_bound_ms)
    run_keys = ("host", "num_users", "spawn_rate", "run_time", "stop_timeout", "shape", "step_users", "step_time")
    verdict["run"] = {k: getattr(o, k) for k in (*run_keys, "frames", "denoising_steps", "seed", "format", "rate")}
    verdict["run"]["user_classes"] = {c.__name__: c.weight for c in environment.user_classes}
    verdict["run"]["command"] = sys.argv
    try:  # best effort: the gateway's own live estimate beside the client-side verdict
        with _session() as session:
            verdict["server_overhead"] = session.get(f"{environment.host}/v1/overhead", timeout=5).json()
    except (requests.RequestException, ValueError):
        verdict["server_overhead"] = None
    write_reports(verdict, Path(o.out))
    if o.csv_prefix:  # Locust rewrites its stats CSV once a second; the last second and the stop would be missing
        with open(f"{o.csv_prefix}_stats.csv", "w", newline="", encoding="utf-8") as final:
            StatsCSV(environment, PERCENTILES_TO_REPORT).requests_csv(csv.writer(final))
    text = f"\n{render_text(verdict)}\n\nreports: {o.out}/ (verdict.json, verdict.md, report.html, locust_*.csv)"
    environment.events.quit.add_listener(lambda **_: print(text, flush=True))  # after Locust's own summary
    if not log.unhandled_greenlet_exception:
        environment.process_exit_code = verdict["exit_code"]
