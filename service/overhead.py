"""E-P2.6 in the gateway: the overhead of `hybrid` over the `vlm` baseline, live, on GET /v1/overhead and /metrics.

Two estimators, each named wherever it is shown:

- `service_time` (the verdict): the pipelines' service times from Triton's statistics, queueing excluded,
  combined along each ensemble's graph, with a 95% interval (`service/service_time.py`). It measures the pipelines,
  whatever the traffic.
- `request_latency` (what users feel): p50/p95 of the gateway's own latencies of successful requests per pipeline
  over the window, and their ratio. Under uneven traffic this ratio compares queues, not pipelines, so no verdict
  is drawn from it; it stays beside the verdict as the latency clients see.

`OverheadTracker.run()` polls every Triton replica's statistics over the gateway's gRPC client and reads the device
from Triton's metrics endpoint; `OverheadCollector` exposes everything to Prometheus at scrape time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import httpx
from prometheus_client.core import GaugeMetricFamily, InfoMetricFamily, Metric
from prometheus_client.registry import Collector
from tritonclient.utils import InferenceServerException

from hybrid.contracts import PIPELINES
from service.service_time import SCOPES, STAGES, ServiceTimeWindow, Snapshot, chain, parse_statistics
from service.triton_device import UNKNOWN, Device, read_device
from service.verdict import Verdict, combine, overhead_ratio, quantile

log = logging.getLogger(__name__)

QUANTILES = (0.5, 0.95)
SNAPSHOT_INTERVAL_S = 1.0  # Triton statistics poll: the bootstrap's unit of resampling
ESTIMATOR_NOTE = (
    "service_time: per model, the mean compute (input + infer + output) of one batch-1 execution from Triton's "
    "statistics, queueing excluded, combined along each ensemble's graph (parallel branches: the slower); a branch "
    "model's time is split per pipeline through the ensembles' compute (branch_factors), since beside its sibling "
    "on a shared device it runs slower than alone; overhead "
    "= hybrid / vlm - 1 with a bootstrap 95% interval over the poll intervals; the verdict is within_budget only "
    "when the whole interval is. request_latency: quantiles of the gateway's latencies of the requests that "
    "arrived, queueing included: what users feel under the current traffic, not a comparison of the pipelines."
)


class StatisticsSource(Protocol):
    """What the tracker needs from the gateway's Triton client."""

    async def inference_statistics(self) -> dict[str, dict]: ...


class LatencyWindow:
    """Latencies of successful requests in the last `window_s` seconds, per (endpoint, pipeline)."""

    def __init__(self, window_s: float, max_samples: int = 10_000) -> None:
        self.window_s = window_s
        self._samples: dict[tuple[str, str], deque[tuple[float, float]]] = {}
        self._max = max_samples

    def add(self, endpoint: str, pipeline: str, seconds: float, now: float | None = None) -> None:
        key = (endpoint, pipeline)
        self._samples.setdefault(key, deque(maxlen=self._max)).append(
            (time.monotonic() if now is None else now, seconds)
        )

    def values(self, endpoint: str, pipeline: str, now: float | None = None) -> list[float]:
        samples = self._samples.get((endpoint, pipeline))
        if not samples:
            return []
        horizon = (time.monotonic() if now is None else now) - self.window_s
        while samples and samples[0][0] < horizon:
            samples.popleft()
        return [seconds for _, seconds in samples]


@dataclass(frozen=True)
class LatencyRatio:
    """The `request_latency` estimator in one scope: hybrid over vlm at each quantile, and the sample counts."""

    ratios: dict[float, float]  # NaN with fewer than min_samples requests of either pipeline
    samples: dict[str, int]


def latency_ratio(hybrid: list[float], vlm: list[float], min_samples: int) -> LatencyRatio:
    samples = {"hybrid": len(hybrid), "vlm": len(vlm)}
    if min(samples.values()) < min_samples:
        return LatencyRatio({q: math.nan for q in QUANTILES}, samples)
    return LatencyRatio({q: overhead_ratio(quantile(hybrid, q), quantile(vlm, q)) for q in QUANTILES}, samples)


class OverheadTracker:
    """The E-P2.6 state of one gateway."""

    def __init__(self, window_s: float, budget: float, min_samples: int, profile: str) -> None:
        self.window_s = window_s
        self.budget = budget
        self.min_samples = min_samples
        self.profile = profile
        self.device: Device = UNKNOWN
        self.latencies = LatencyWindow(window_s)
        self.service_times = ServiceTimeWindow(window_s, budget, min_samples)
        self._poller: asyncio.Task | None = None

    async def snapshot(self, triton: StatisticsSource) -> None:
        """One snapshot of every replica's statistics into the service-time window."""
        replicas = await triton.inference_statistics()
        self.service_times.add(Snapshot(time.monotonic(), {a: parse_statistics(s) for a, s in replicas.items()}))

    async def run(self, triton: StatisticsSource, metrics_url: str, interval_s: float = SNAPSHOT_INTERVAL_S) -> None:
        """Poll Triton's statistics every `interval_s` (and its device until known) until cancelled. Failures are
        logged and retried, never fatal: the gateway serves without its E-P2.6 view."""
        while True:
            try:
                await self.snapshot(triton)
            except (InferenceServerException, OSError) as exc:
                log.debug("Triton statistics unavailable: %s", exc)
            except Exception:
                log.exception("Triton statistics could not be read")
            if self.device is UNKNOWN and metrics_url:
                try:
                    self.device = await read_device(metrics_url)
                except httpx.HTTPError as exc:
                    log.debug("Triton metrics unavailable: %s", exc)
            await asyncio.sleep(interval_s)

    def start(self, triton: StatisticsSource, metrics_url: str) -> None:
        """Run the poller in the background (from the app's lifespan)."""
        self._poller = asyncio.create_task(self.run(triton, metrics_url))

    async def stop(self) -> None:
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poller
            self._poller = None

    def latency_ratios(self) -> dict[str, LatencyRatio]:
        return {
            scope: latency_ratio(
                self.latencies.values(endpoint, "hybrid"), self.latencies.values(endpoint, "vlm"), self.min_samples
            )
            for scope, endpoint in SCOPES.items()
        }

    def report(self) -> dict[str, Any]:
        """GET /v1/overhead: the verdict and its estimator, the latencies users see, and the stage breakdown."""
        estimate = self.service_times.estimate()
        latency = self.latency_ratios()

        def summary(values: list[float]) -> dict[str, Any]:
            return {"p50_s": _finite(quantile(values, 0.5)), "p95_s": _finite(quantile(values, 0.95)),
                    "samples": len(values)}  # fmt: skip

        pipelines = {}
        for pipeline in PIPELINES:
            pipelines[pipeline] = {
                "reconstruct": summary(self.latencies.values("reconstruct", pipeline)),
                "encode": summary(self.latencies.values("encode", pipeline)),
                "service_time_s": {scope: _finite(estimate.scopes[scope].service_s[pipeline]) for scope in SCOPES},
                "stages": {m: estimate.stages[m].as_dict() for m in chain("reconstruct", pipeline)},
            }
        return {
            "experiment": "E-P2.6",
            "question": "latency overhead of the hybrid pipeline over the VLM-only baseline",
            "budget": self.budget,
            "window_s": self.window_s,
            "min_samples": self.min_samples,
            "device": str(self.device),
            "device_source": self.device.source,
            "profile": self.profile,
            "verdict": combine(s.verdict for s in estimate.scopes.values()).value,
            "estimator": "service_time",
            "overhead": {scope: s.as_dict() for scope, s in estimate.scopes.items()},
            "request_latency": {
                scope: {
                    "p50": _finite(r.ratios[0.5]),
                    "p95": _finite(r.ratios[0.95]),
                    "samples": r.samples,
                }
                for scope, r in latency.items()
            },
            "pipelines": pipelines,
            "stages": {m: s.as_dict() for m, s in estimate.stages.items()},
            "branch_factors": {m: {p: _finite(f) for p, f in by.items()} for m, by in estimate.factors.items()},
            "branch_split": {
                m: {p: {"requests": n, "compute_s": spent} for p, (n, spent) in by.items()}
                for m, by in estimate.split.items()
            },
            "ensemble_requests": estimate.ensembles,
            "statistics": {
                "intervals": estimate.intervals,
                "span_s": estimate.span_s,
                "snapshots": self.service_times.added,  # every poll so far, window or not
            },
            "estimator_note": ESTIMATOR_NOTE,
        }


def _finite(value: float) -> float | None:
    return None if math.isnan(value) else value


class OverheadCollector(Collector):
    """Prometheus view of an OverheadTracker, computed at scrape time. A value that does not exist yet (too few
    samples) is left out rather than exported as NaN, so PromQL sees no data instead of a number."""

    def __init__(self, tracker: OverheadTracker) -> None:
        self.tracker = tracker

    def collect(self) -> Iterator[Metric]:
        estimate = self.tracker.service_times.estimate()
        ratio = GaugeMetricFamily(
            "hybrid_overhead_ratio",
            "E-P2.6: hybrid over vlm minus 1, by scope and estimator: service_time (mean service time from Triton's "
            "statistics, queueing excluded; the verdict) or request_latency (p50/p95 of gateway latencies under the "
            "current traffic).",
            labels=["scope", "estimator", "statistic"],
        )
        low = GaugeMetricFamily(
            "hybrid_overhead_ci95_lower_ratio",
            "Lower end of the 95% interval of the overhead, by scope and estimator.",
            labels=["scope", "estimator"],
        )
        high = GaugeMetricFamily(
            "hybrid_overhead_ci95_upper_ratio",
            "Upper end of the 95% interval of the overhead, by scope and estimator.",
            labels=["scope", "estimator"],
        )
        verdict = GaugeMetricFamily(
            "hybrid_overhead_verdict",
            "E-P2.6 verdict by scope and estimator: 1 for the current state, 0 for the others.",
            labels=["scope", "estimator", "verdict"],
        )
        samples = GaugeMetricFamily(
            "hybrid_overhead_samples",
            "What each estimate rests on, by scope, estimator and pipeline: successful requests (request_latency) or "
            "the fewest batch-1 executions of a model in the pipeline's chain (service_time).",
            labels=["scope", "estimator", "pipeline"],
        )
        pipeline_time = GaugeMetricFamily(
            "hybrid_pipeline_service_seconds",
            "Service time of each pipeline, by scope: batch-1 model service times along the ensemble's graph.",
            labels=["scope", "pipeline"],
        )
        for scope, result in estimate.scopes.items():
            _add(ratio, [scope, "service_time", "mean"], result.ratio)
            _add(low, [scope, "service_time"], result.ci95[0])
            _add(high, [scope, "service_time"], result.ci95[1])
            for state in Verdict:
                verdict.add_metric([scope, "service_time", state.value], float(state is result.verdict))
            for pipeline in ("hybrid", "vlm"):
                samples.add_metric([scope, "service_time", pipeline], result.executions[pipeline])
            for pipeline, seconds in result.service_s.items():
                _add(pipeline_time, [scope, pipeline], seconds)
        for scope, latency in self.tracker.latency_ratios().items():
            for q, value in latency.ratios.items():
                _add(ratio, [scope, "request_latency", f"p{round(q * 100)}"], value)
            for pipeline, count in latency.samples.items():
                samples.add_metric([scope, "request_latency", pipeline], count)
        yield from (ratio, low, high, verdict, samples, pipeline_time)
        yield GaugeMetricFamily(
            "hybrid_overhead_budget_ratio", "E-P2.6 budget: the largest acceptable overhead.", value=self.tracker.budget
        )
        stage_time = GaugeMetricFamily(
            "hybrid_stage_service_seconds",
            "Mean compute time of one batch-1 execution of each composing model over the window (queue excluded).",
            labels=["model"],
        )
        executions = GaugeMetricFamily(
            "hybrid_stage_service_executions",
            "Batch-1 executions of each composing model in the window: the samples behind its service time.",
            labels=["model"],
        )
        for model in STAGES:
            stage = estimate.stages[model]
            _add(stage_time, [model], stage.service_s)
            executions.add_metric([model], stage.executions)
        yield stage_time
        yield executions
        device = self.tracker.device
        yield InfoMetricFamily(
            "hybrid_triton_device",
            "The device Triton runs the models on, as Triton's metrics endpoint reports it.",
            value={"kind": device.kind, "gpus": ",".join(device.gpus)},
        )


def _add(family: GaugeMetricFamily, labels: list[str], value: float) -> None:
    if not math.isnan(value):
        family.add_metric(labels, value)
