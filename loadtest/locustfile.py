"""Locust users for the reconstruction gateway (experiment E-P2.6: hybrid overhead over vlm < 25%).

Run it through ``python -m loadtest`` (``make loadtest``), which bounds the run and prints the verdict; or
by hand: ``locust -f loadtest/locustfile.py --host http://127.0.0.1:8080 --headless -u 3 -t 60s --csv x``.

User classes (``LOADTEST_USER``, a comma list):

``pipeline``
    ``HybridUser``, ``VlmUser`` and ``SpatialUser``, each posting to one pipeline in a closed loop (or at
    ``LOADTEST_USER_RATE`` requests/s); users are split by ``LOADTEST_WEIGHTS`` (``hybrid=1,vlm=1,...``).
``paired``
    ``PairedUser`` posts the same image with the same parameters to hybrid and to vlm back to back,
    alternating which goes first, so both see the same inputs under the same concurrent load.

Request names are ``<endpoint>:<pipeline>`` so Locust's stats CSV has one row per pipeline.  All inputs come
from :mod:`loadtest.inputs` (seeded, generated in-process).  ``LOADTEST_SHAPE=step`` adds the step load of
:mod:`loadtest.shapes`.  See loadtest/README.md for every variable.

At shutdown this file writes ``<csv prefix>_stats_final.csv``: Locust refreshes ``_stats.csv`` only once a
second and does not rewrite it after the users stop, so its last version misses the final second and
every request that completed during ``--stop-timeout``.  The runner swaps the final snapshot in.
"""

from __future__ import annotations

import contextlib
import csv
import itertools
import os
from typing import Any

from locust import HttpUser, events, task
from locust.env import Environment
from locust.stats import PERCENTILES_TO_REPORT, StatsCSV
from locust.user.wait_time import constant_throughput

from loadtest.config import LoadConfig, from_env
from loadtest.inputs import input_set
from loadtest.steps import StepRecorder

CONFIG: LoadConfig = from_env(os.environ)
INPUTS: list[tuple[str, bytes]] = input_set(CONFIG.images, CONFIG.image_size)
_SERIAL = itertools.count()

if CONFIG.shape == "step":
    from loadtest.shapes import StepLoadShape  # Locust picks up shape classes among this module's globals

    StepLoadShape.config = CONFIG


def check_response(response: Any, pipeline: str) -> None:
    """Mark a response failed unless it is a non-empty 200 from the pipeline that was asked for.

    Failure messages carry no per-request detail (Retry-After values, ids) so Locust's failures CSV groups
    them by cause.
    """
    status = response.status_code
    if status == 0 or status is None:
        response.failure(f"connection error: {type(response.error).__name__}")
        return
    if status != 200:
        code = ""
        with contextlib.suppress(ValueError, AttributeError):  # not the gateway's JSON error body
            code = str(response.json().get("error", {}).get("code", ""))
        response.failure(f"HTTP {status}" + (f" {code}" if code else ""))
        return
    served_by = response.headers.get("X-Pipeline")
    if served_by is not None and served_by != pipeline:
        response.failure(f"X-Pipeline is {served_by!r}, expected {pipeline!r}")
    elif not response.content:
        response.failure("empty body")
    else:
        response.success()


class GatewayUser(HttpUser):
    """Shared plumbing: proxy-free client, deterministic input rotation, optional fixed request rate."""

    abstract = True
    requests_per_task = 1

    def on_start(self) -> None:
        # requests honours HTTP(S)_PROXY; traffic must reach only the named host, never a proxy.
        self.client.trust_env = False
        self.serial = next(_SERIAL)
        self.iteration = 0

    def wait_time(self) -> float:
        """Closed loop by default; with ``LOADTEST_USER_RATE`` each user paces itself to that many req/s."""
        if CONFIG.user_rate <= 0:
            return 0.0
        return constant_throughput(CONFIG.user_rate / self.requests_per_task)(self)

    def next_input(self) -> int:
        """Input index for this iteration: users start at different images and rotate through the set."""
        index = (self.serial + self.iteration) % len(INPUTS)
        self.iteration += 1
        return index

    def post(self, pipeline: str, index: int) -> None:
        filename, data = INPUTS[index]
        with self.client.post(
            f"/{CONFIG.endpoint}",
            params=CONFIG.query(pipeline),
            files={"file": (filename, data, "image/png")},
            name=CONFIG.request_name(pipeline),
            timeout=CONFIG.request_timeout_s,
            catch_response=True,
        ) as response:
            check_response(response, pipeline)


class PipelineUser(GatewayUser):
    """One pipeline per user; the concrete classes below only name it."""

    abstract = True
    pipeline = ""

    @task
    def send(self) -> None:
        self.post(self.pipeline, self.next_input())


def _pipeline_enabled(pipeline: str) -> bool:
    return "pipeline" in CONFIG.user_kinds and CONFIG.weights.get(pipeline, 0) > 0


class HybridUser(PipelineUser):
    pipeline = "hybrid"
    weight = max(1, CONFIG.weights["hybrid"])
    abstract = not _pipeline_enabled("hybrid")


class VlmUser(PipelineUser):
    pipeline = "vlm"
    weight = max(1, CONFIG.weights["vlm"])
    abstract = not _pipeline_enabled("vlm")


class SpatialUser(PipelineUser):
    pipeline = "spatial"
    weight = max(1, CONFIG.weights["spatial"])
    abstract = not _pipeline_enabled("spatial")


class PairedUser(GatewayUser):
    """hybrid and vlm on identical inputs, back to back, order alternating to cancel warm-cache effects."""

    abstract = "paired" not in CONFIG.user_kinds
    requests_per_task = 2

    @task
    def pair(self) -> None:
        first_hybrid = self.iteration % 2 == 0
        index = self.next_input()
        for pipeline in ("hybrid", "vlm") if first_hybrid else ("vlm", "hybrid"):
            self.post(pipeline, index)


# --- shutdown reports ---------------------------------------------------------------------------------

_STATE: dict[str, Any] = {}


@events.init.add_listener
def _on_init(environment: Environment, **_: Any) -> None:
    _STATE["environment"] = environment
    shape = environment.shape_class
    if CONFIG.shape == "step" and shape is not None and hasattr(shape, "plan"):
        _STATE["shape"] = shape


@events.request.add_listener
def _on_request(name: str, response_time: float, exception: BaseException | None = None, **_: Any) -> None:
    shape = _STATE.get("shape")
    if shape is None:
        return
    recorder = _STATE.get("recorder")
    if recorder is None:
        recorder = _STATE["recorder"] = StepRecorder(shape.plan)
    started = shape.get_run_time() - (response_time or 0.0) / 1000.0
    recorder.record(name, started, response_time or 0.0, exception is not None)


@events.quit.add_listener
def _on_quit(**_: Any) -> None:
    environment: Environment | None = _STATE.get("environment")
    options = getattr(environment, "parsed_options", None)
    prefix = getattr(options, "csv_prefix", None)
    if environment is None or not prefix:
        return
    with open(f"{prefix}_stats_final.csv", "w", newline="", encoding="utf-8") as fh:
        StatsCSV(environment, PERCENTILES_TO_REPORT).requests_csv(csv.writer(fh))
    recorder: StepRecorder | None = _STATE.get("recorder")
    if recorder is not None:
        recorder.write_csv(f"{prefix}_steps.csv", elapsed_s=_STATE["shape"].get_run_time())
