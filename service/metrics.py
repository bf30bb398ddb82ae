"""The gateway's Prometheus metrics (base units, `_seconds` histograms, `_total` counters, bounded labels).

Label values come from closed sets: endpoint ∈ {reconstruct, encode}, pipeline ∈ PIPELINES or "invalid",
status = the HTTP status code. Each app owns its registry, so tests can build several apps in one process.
"""

from __future__ import annotations

import math

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from hybrid.contracts import PIPELINES

ENDPOINTS = ("reconstruct", "encode")
BUCKET_STEP = 1.09  # 9%: still under 10% apart once rounded to three digits


def latency_buckets(low: float = 0.004, high: float = 2.5, step: float = BUCKET_STEP) -> tuple[float, ...]:
    """Bucket bounds `step` apart (under 10%) from `low` to `high`, then a coarse tail to 2 minutes.

    histogram_quantile interpolates inside a bucket, so a quantile is only as sharp as the buckets around it: to
    tell a 10% difference (well under the 25% budget) the bounds must be at most 10% apart over the range that
    matters, from the tiny models on a CPU (benchmarks/results/overhead-tiny.md) to the full models on a GPU under
    load (benchmarks/results/gpu-h200/summary.md), with room below and above both. Past that, long videos
    and timeouts only need to be counted. Bounds keep three significant digits so the `le` labels stay readable.
    """
    count = math.ceil(math.log(high / low) / math.log(step))
    fine = [float(f"{low * step**i:.3g}") for i in range(count + 1)]
    tail = [b for b in (3.0, 4.0, 5.0, 7.5, 10.0, 15.0, 20.0, 30.0, 60.0, 120.0) if b > fine[-1]]
    return tuple(dict.fromkeys(fine + tail))


LATENCY_BUCKETS = latency_buckets()


def pipeline_label(pipeline: str) -> str:
    return pipeline if pipeline in PIPELINES else "invalid"


class GatewayMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        labels = ("endpoint", "pipeline", "status")
        self.requests = Counter(
            "hybrid_gateway_requests",
            "Requests answered, by endpoint, pipeline and HTTP status.",
            labels,
            registry=self.registry,
        )
        self.latency = Histogram(
            "hybrid_gateway_request_duration_seconds",
            "Time from request received to reply ready, by endpoint, pipeline and HTTP status.",
            labels,
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.triton_latency = Histogram(
            "hybrid_gateway_triton_duration_seconds",
            "Time spent waiting for the Triton ensemble, by endpoint and pipeline (successful calls).",
            ("endpoint", "pipeline"),
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.in_flight = Gauge(
            "hybrid_gateway_in_flight_requests", "Inference requests being served now.", registry=self.registry
        )
        self.rejected = Counter(
            "hybrid_gateway_rejected_requests",
            "Requests refused before inference, by reason (overloaded, bad_media, bad_parameter).",
            ("reason",),
            registry=self.registry,
        )
        # Pre-create the bounded series so dashboards show zeros rather than gaps before the first request.
        for endpoint in ENDPOINTS:
            for pipeline in PIPELINES:
                self.triton_latency.labels(endpoint, pipeline)
        for reason in ("overloaded", "bad_media", "bad_parameter"):
            self.rejected.labels(reason)

    def observe(self, endpoint: str, pipeline: str, status: int, seconds: float) -> None:
        labels = (endpoint, pipeline_label(pipeline), str(status))
        self.requests.labels(*labels).inc()
        self.latency.labels(*labels).observe(seconds)

    def observe_triton(self, ensemble: str, seconds: float) -> None:
        """A successful call of ensemble `<endpoint>_<pipeline>` (hybrid.contracts.ensemble_name)."""
        endpoint, _, pipeline = ensemble.partition("_")
        self.triton_latency.labels(endpoint, pipeline_label(pipeline)).observe(seconds)
