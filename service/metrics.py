"""The gateway's Prometheus metrics (base units, `_seconds` histograms, `_total` counters, bounded labels).

Label values come from closed sets: endpoint ∈ {reconstruct, encode}, pipeline ∈ PIPELINES or "invalid",
status = the HTTP status code. Each app owns its registry, so tests can build several apps in one process.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from hybrid.contracts import PIPELINES

ENDPOINTS = ("reconstruct", "encode")
# From 10 ms (tiny models on a CPU) to 2 minutes (long full-size clips on a GPU).
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0)


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
