"""E-P2.6 in the gateway: how much latency `hybrid` adds over the `vlm` baseline, stage by stage.

- `LatencyWindow` keeps the latencies of successful requests per (endpoint, pipeline) over a sliding window.
  End-to-end overhead compares /reconstruct latencies, encode-stage overhead /encode latencies (the
  `encode_*` ensembles): overhead(q) = quantile_q(hybrid) / quantile_q(vlm) − 1, against the 25% budget.
- `StageStats` polls Triton's statistics API (`GET /v2/models/stats`, cumulative queue and compute time per
  model) and turns consecutive snapshots into per-request queue and compute time of each composing model. The
  API only has sums, so p50/p95 per stage are over the per-poll-interval means, and the mean is exact.
- `OverheadCollector` exposes both to Prometheus at scrape time; `report()` is the JSON of GET /v1/overhead.
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

import httpx
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from hybrid.contracts import ENCODE_CHAINS, PIPELINES

log = logging.getLogger(__name__)

STAGES: tuple[str, ...] = (
    "preprocess",
    "vlm_encoder",
    "spatial_encoder",
    "fusion",
    "vlm_adapter",
    "spatial_adapter",
    "video_decoder",
)
SCOPES = {"end_to_end": "reconstruct", "encode": "encode"}  # overhead scope → the endpoint it compares
QUANTILES = (0.5, 0.95)


def quantile(values: list[float], q: float) -> float:
    """Linear-interpolated quantile (numpy's default); NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    position = q * (len(ordered) - 1)
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


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
class Overhead:
    ratios: dict[float, float]  # quantile → hybrid/vlm − 1 (NaN without enough samples)
    samples: dict[str, int]  # pipeline → sample count
    verdict: str  # within_budget | over_budget | insufficient_samples


def overhead(hybrid: list[float], vlm: list[float], budget: float, min_samples: int) -> Overhead:
    samples = {"hybrid": len(hybrid), "vlm": len(vlm)}
    if min(samples.values()) < min_samples:
        return Overhead({q: math.nan for q in QUANTILES}, samples, "insufficient_samples")
    ratios = {q: quantile(hybrid, q) / quantile(vlm, q) - 1 for q in QUANTILES}
    verdict = "within_budget" if all(r <= budget for r in ratios.values()) else "over_budget"
    return Overhead(ratios, samples, verdict)


@dataclass(frozen=True)
class StageSnapshot:
    at: float
    counts: dict[str, int]  # model → successful requests so far
    queue_ns: dict[str, int]
    compute_ns: dict[str, int]  # compute_input + compute_infer + compute_output


def parse_statistics(payload: dict, at: float) -> StageSnapshot:
    """A snapshot of the composing models' cumulative statistics (KServe v2 statistics extension)."""
    counts, queue, compute = {}, {}, {}
    for model in payload.get("model_stats", []):
        name = model.get("name")
        if name not in STAGES:
            continue
        stats = model.get("inference_stats", {})
        counts[name] = counts.get(name, 0) + int(stats.get("success", {}).get("count", 0))
        queue[name] = queue.get(name, 0) + int(stats.get("queue", {}).get("ns", 0))
        compute[name] = compute.get(name, 0) + sum(
            int(stats.get(k, {}).get("ns", 0)) for k in ("compute_input", "compute_infer", "compute_output")
        )
    return StageSnapshot(at, counts, queue, compute)


class StageStats:
    """Snapshots of Triton's statistics over the window, and the per-stage breakdown they imply."""

    def __init__(self, window_s: float) -> None:
        self.window_s = window_s
        self.snapshots: deque[StageSnapshot] = deque()

    def add(self, snapshot: StageSnapshot) -> None:
        self.snapshots.append(snapshot)
        # Keep one snapshot older than the window as the baseline of the first interval in it.
        while len(self.snapshots) > 2 and self.snapshots[1].at < snapshot.at - self.window_s:
            self.snapshots.popleft()

    def breakdown(self) -> dict[str, dict[str, float]]:
        """model → mean/p50/p95 queue and compute seconds per request, and the request count, over the window."""
        result: dict[str, dict[str, float]] = {}
        pairs = list(zip(self.snapshots, list(self.snapshots)[1:], strict=False))
        for model in STAGES:
            requests = 0
            totals = {"queue": 0, "compute": 0}
            interval_means: dict[str, list[float]] = {"queue": [], "compute": []}
            for before, after in pairs:
                count = after.counts.get(model, 0) - before.counts.get(model, 0)
                if count <= 0:
                    continue
                requests += count
                for phase, series in (("queue", "queue_ns"), ("compute", "compute_ns")):
                    spent = getattr(after, series).get(model, 0) - getattr(before, series).get(model, 0)
                    totals[phase] += spent
                    interval_means[phase].append(spent / count / 1e9)
            if not requests:
                continue
            entry: dict[str, float] = {"requests": requests}
            for phase in ("queue", "compute"):
                entry[f"{phase}_mean_s"] = totals[phase] / requests / 1e9
                entry[f"{phase}_p50_s"] = quantile(interval_means[phase], 0.5)
                entry[f"{phase}_p95_s"] = quantile(interval_means[phase], 0.95)
            result[model] = entry
        return result

    async def poll_forever(self, url: str, interval_s: float) -> None:
        """Fetch `url`/v2/models/stats every `interval_s` until cancelled; failures are logged, never fatal."""
        async with httpx.AsyncClient(timeout=5) as client:
            while True:
                try:
                    reply = await client.get(f"{url}/v2/models/stats")
                    reply.raise_for_status()
                    self.add(parse_statistics(reply.json(), time.monotonic()))
                except (httpx.HTTPError, ValueError) as exc:
                    log.debug("Triton statistics unavailable: %s", exc)
                await asyncio.sleep(interval_s)


@dataclass
class OverheadTracker:
    """The E-P2.6 state of one gateway."""

    window_s: float
    budget: float
    min_samples: int
    device: str
    profile: str

    def __post_init__(self) -> None:
        self.latencies = LatencyWindow(self.window_s)
        self.stages = StageStats(self.window_s)
        self._poller: asyncio.Task | None = None

    def start_polling(self, triton_http_url: str, interval_s: float) -> None:
        if triton_http_url:
            self._poller = asyncio.create_task(self.stages.poll_forever(triton_http_url, interval_s))

    async def stop_polling(self) -> None:
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poller

    def overheads(self) -> dict[str, Overhead]:
        return {
            scope: overhead(
                self.latencies.values(endpoint, "hybrid"),
                self.latencies.values(endpoint, "vlm"),
                self.budget,
                self.min_samples,
            )
            for scope, endpoint in SCOPES.items()
        }

    def report(self) -> dict:
        """The E-P2.6 table: per pipeline and per stage p50/p95, both overheads and their verdicts."""

        def summary(values: list[float]) -> dict[str, float | int | None]:
            return {"p50_s": _finite(quantile(values, 0.5)), "p95_s": _finite(quantile(values, 0.95)),
                    "samples": len(values)}  # fmt: skip

        stages = self.stages.breakdown()
        pipelines = {}
        for pipeline in PIPELINES:
            chain = [*ENCODE_CHAINS[pipeline], "video_decoder"]
            pipelines[pipeline] = {
                "reconstruct": summary(self.latencies.values("reconstruct", pipeline)),
                "encode": summary(self.latencies.values("encode", pipeline)),
                "stages": {model: stages[model] for model in chain if model in stages},
            }
        return {
            "experiment": "E-P2.6",
            "question": "latency overhead of the hybrid pipeline over the VLM-only baseline",
            "budget": self.budget,
            "window_s": self.window_s,
            "min_samples": self.min_samples,
            "device": self.device,
            "profile": self.profile,
            "overhead": {
                scope: {
                    "p50": _finite(o.ratios[0.5]),
                    "p95": _finite(o.ratios[0.95]),
                    "samples": o.samples,
                    "verdict": o.verdict,
                }
                for scope, o in self.overheads().items()
            },
            "pipelines": pipelines,
            "stages": stages,
            "stage_note": "Triton statistics API: mean per request is exact; p50/p95 are over per-interval means.",
        }


def _finite(value: float) -> float | None:
    return None if math.isnan(value) else value


class OverheadCollector(Collector):
    """Prometheus view of an OverheadTracker, computed at scrape time."""

    def __init__(self, tracker: OverheadTracker) -> None:
        self.tracker = tracker

    def collect(self) -> Iterator[GaugeMetricFamily]:
        ratio = GaugeMetricFamily(
            "hybrid_overhead_ratio",
            "E-P2.6: hybrid latency over vlm latency minus 1, over the sliding window (NaN without enough samples).",
            labels=["scope", "quantile"],
        )
        samples = GaugeMetricFamily(
            "hybrid_overhead_samples",
            "Successful requests in the overhead window, by scope and pipeline.",
            labels=["scope", "pipeline"],
        )
        for scope, result in self.tracker.overheads().items():
            for q, value in result.ratios.items():
                ratio.add_metric([scope, str(q)], value)
            for pipeline, count in result.samples.items():
                samples.add_metric([scope, pipeline], count)
        yield ratio
        yield samples
        yield GaugeMetricFamily(
            "hybrid_overhead_budget_ratio", "E-P2.6 budget: the largest acceptable overhead.", value=self.tracker.budget
        )
        stage = GaugeMetricFamily(
            "hybrid_stage_duration_seconds",
            "Mean queue or compute time per request of each composing Triton model over the window.",
            labels=["model", "phase"],
        )
        for model, entry in self.tracker.stages.breakdown().items():
            for phase in ("queue", "compute"):
                stage.add_metric([model, phase], entry[f"{phase}_mean_s"])
        yield stage
