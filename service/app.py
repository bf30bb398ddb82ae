"""The FastAPI gateway: POST /reconstruct and /encode over Triton ensembles, health, readiness and metrics.

The gateway validates everything a client sends before Triton sees it (parameters, upload size, decodable
media, pixel and frame bounds), admits at most HYBRID_MAX_IN_FLIGHT requests before reading their uploads, and
measures every reply. The pieces: `routes/` (the endpoints), `dependencies.py` (per-app state, token, admission,
decoding pool), `uploads.py` (the capped multipart reader), `middleware.py` (request ids, measurement, origins,
declared sizes), `errors.py` (the error body and the OpenAPI statuses), `tracing.py` (a trace per request, when
HYBRID_OTLP_TRACES_ENDPOINT is set), `routes/page.py` (the web page at /).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace import Tracer

from hybrid.profiles import get_profile
from service.dependencies import Admission, Decoder, Gateway, TritonConnection, TritonState
from service.embedded_triton import GRPC_ACCESS_HEADER
from service.errors import install_error_handlers
from service.metrics import GatewayMetrics
from service.middleware import QUIET_PATHS, DeclaredSizeLimit, OriginGuard, RequestContext
from service.overhead import OverheadCollector, OverheadTracker
from service.routes.inference import inference_router
from service.routes.page import page
from service.routes.probes import probes, telemetry
from service.settings import Settings
from service.tracing import TRACEPARENT, TRACESTATE, TraceRequests, build_provider, tracer_of
from service.triton_client import TritonClient

log = logging.getLogger(__name__)


def triton_client(settings: Settings, tracer: Tracer | None = None) -> TritonClient:
    key = settings.triton_access_key
    headers = {GRPC_ACCESS_HEADER: key.get_secret_value()} if key is not None else None
    return TritonClient(settings.triton_grpc_url, settings.request_timeout_s, headers=headers, tracer=tracer)


def create_app(
    settings: Settings | None = None,
    triton: TritonClient | None = None,
    triton_state: TritonState | None = None,
    tracer_provider: TracerProvider | None = None,
) -> FastAPI:
    """The gateway over Triton at `settings.triton_grpc_url` (or the client given); `triton_state` is the
    supervisor of an embedded tritonserver, whose crashes the gateway then answers at once. Requests are traced
    through `tracer_provider` (a test's in-memory exporter), else to HYBRID_OTLP_TRACES_ENDPOINT when set."""
    settings = settings or Settings()
    own_provider = tracer_provider is None and bool(settings.otlp_traces_endpoint)
    if own_provider:
        tracer_provider = build_provider(settings.otlp_traces_endpoint, settings.trace_sample_ratio)
    tracer = tracer_of(tracer_provider)
    metrics = GatewayMetrics()
    tracker = OverheadTracker(
        settings.overhead_window_s,
        settings.overhead_budget,
        settings.overhead_min_samples,
        settings.profile,
    )
    metrics.registry.register(OverheadCollector(tracker))
    gateway = Gateway(
        settings=settings,
        profile=get_profile(settings.profile),
        metrics=metrics,
        admission=Admission(settings.max_in_flight, settings.retry_after_s, metrics),
        decoder=Decoder(settings.media_limits, settings.decode_workers, metrics),
        triton=TritonConnection(
            (lambda: triton) if triton else lambda: triton_client(settings, tracer),
            triton_state,
            tracker,
            settings.triton_metrics_url,
        ),
        triton_state=triton_state,
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        gateway.triton.open()
        yield
        await gateway.triton.close()
        gateway.decoder.close()
        if own_provider and tracer_provider is not None:
            tracer_provider.shutdown()  # exports the spans still batched

    app = FastAPI(
        title="Hybrid encoder reconstruction service",
        version="0.1.0",
        summary="Qwen2.5-VL + DINOv2 fusion conditioning LTX-Video, served by Triton (experiment E-P2.6).",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.tracker = tracker
    app.state.gateway = gateway
    install_error_handlers(app)
    app.include_router(inference_router(settings))
    app.include_router(probes)
    app.include_router(telemetry)
    app.include_router(page)

    def observe(endpoint: str, pipeline: str, status: int, seconds: float) -> None:
        metrics.observe(endpoint, pipeline, status, seconds)
        if status == 200:
            tracker.latencies.add(endpoint, pipeline, seconds)

    # Added innermost first: a request meets TraceRequests (when tracing), RequestContext, CORS, OriginGuard, then
    # DeclaredSizeLimit.
    app.add_middleware(DeclaredSizeLimit, max_upload_bytes=settings.max_upload_bytes)
    app.add_middleware(OriginGuard, allowed=settings.allowed_origins)
    if settings.allowed_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.allowed_origins,
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type", "X-Request-ID", TRACEPARENT, TRACESTATE],
            expose_headers=["Server-Timing", "X-Pipeline", "X-Frames", "X-Request-ID", "Retry-After", TRACEPARENT],
        )
    app.add_middleware(RequestContext, observe=observe)
    if tracer_provider is not None:  # outermost: refusals of the middleware above are traced too
        app.add_middleware(TraceRequests, tracer=tracer, skip=frozenset(QUIET_PATHS))
    return app
