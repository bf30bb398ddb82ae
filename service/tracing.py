"""One trace per request: an OpenTelemetry span for each HTTP request the gateway answers, a client span for its
Triton call, and Triton's own spans for every step of the ensemble under the same trace id.

Off unless `HYBRID_OTLP_TRACES_ENDPOINT` names an OTLP/HTTP traces endpoint (`http://collector:4318/v1/traces`):
the gateway then exports its spans there (batched, protobuf), and the embedded tritonserver is started in
Triton's `opentelemetry` trace mode exporting to the same endpoint. Triton reads the W3C `traceparent` the gateway
puts in the gRPC metadata of the call, so its spans (InferRequest → the ensemble → each composing model → its
compute) are children of the gateway's client span. Triton runs with `rate=0`: it traces only the requests that
arrive with a context, that is, those the gateway sampled, so the two samplers cannot disagree.

A client's own `traceparent` (and `tracestate`) is honoured: the request's span continues that trace, and its
sampled flag decides (ParentBased sampling; requests without one are sampled at `HYBRID_TRACE_SAMPLE_RATIO`). The
reply carries the gateway span's `traceparent`, so a client can find its trace without a header of its own.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress

import numpy as np
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, Tracer
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.logs import REQUEST_ID

GATEWAY_SERVICE = "hybrid-encoder-gateway"
TRITON_SERVICE = "triton-inference-server"
TRACEPARENT = "traceparent"
TRACESTATE = "tracestate"
_PROPAGATOR = TraceContextTextMapPropagator()
_SCOPE = "service.tracing"


def build_provider(endpoint: str, sample_ratio: float = 1.0) -> TracerProvider:
    """A provider exporting to the OTLP/HTTP traces endpoint in batches. Not installed as the global provider:
    tests build several gateways in one process, each with its own."""
    attributes = {} if os.environ.get("OTEL_SERVICE_NAME") else {SERVICE_NAME: GATEWAY_SERVICE}
    provider = TracerProvider(
        resource=Resource.create(attributes),  # OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES still apply
        sampler=ParentBased(root=TraceIdRatioBased(sample_ratio)),
    )
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint)))
    return provider


def tracer_of(provider: TracerProvider | None) -> Tracer:
    """The gateway's tracer; a no-op one (no spans, nothing propagated) when tracing is off."""
    return provider.get_tracer(_SCOPE) if provider is not None else trace.NoOpTracer()


def triton_trace_args(endpoint: str) -> list[str]:
    """tritonserver flags that export its spans to `endpoint` for the requests the gateway traces: opentelemetry
    mode (the only mode that reads a propagated `traceparent`), per-step TIMESTAMPS, and rate=0 so that requests
    without a context (the gateway's unsampled ones, anyone else's) are not traced."""
    if not endpoint:
        return []
    return [
        "--trace-config=mode=opentelemetry",
        f"--trace-config=opentelemetry,url={endpoint}",
        f"--trace-config=opentelemetry,resource=service.name={TRITON_SERVICE}",
        "--trace-config=level=TIMESTAMPS",
        "--trace-config=rate=0",
        "--trace-config=count=-1",
    ]


def outgoing_headers() -> dict[str, str]:
    """`traceparent` (and `tracestate`) of the current span, to send with a call, when it is sampled: Triton
    traces every request that carries a context, so an unsampled one must carry none."""
    context = trace.get_current_span().get_span_context()
    if not (context.is_valid and context.trace_flags.sampled):
        return {}
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier)
    return carrier


@contextmanager
def triton_call(tracer: Tracer, model: str, target: str) -> Iterator[Span]:
    """The client span of one Triton inference (retries included), current while the call runs, so that
    `outgoing_headers()` hands Triton this span as the parent of its own."""
    attributes = {
        "rpc.system": "grpc",
        "rpc.service": "inference.GRPCInferenceService",
        "rpc.method": "ModelInfer",
        "server.address": target,
        "triton.model": model,
    }
    with tracer.start_as_current_span(f"triton {model}", kind=SpanKind.CLIENT, attributes=attributes) as span:
        yield span


def traceparent_of(span: Span) -> str | None:
    """The W3C `traceparent` value naming `span`, or None for an invalid (no-op) span."""
    context = span.get_span_context()
    if not context.is_valid:
        return None
    return f"00-{context.trace_id:032x}-{context.span_id:016x}-{int(context.trace_flags):02x}"


def server_timing(value: str) -> dict[str, float]:
    """`gateway;dur=12.3, decode;dur=1.0` → {"gateway": 12.3, "decode": 1.0} (ms); entries without dur are left out."""
    timings: dict[str, float] = {}
    for entry in value.split(","):
        name, *params = (part.strip() for part in entry.split(";"))
        for param in params:
            key, _, number = param.partition("=")
            if name and key.strip() == "dur":
                with suppress(ValueError):
                    timings[name] = float(number)
    return timings


class TraceRequests:
    """ASGI middleware, outermost: one SERVER span per HTTP request (refusals of the inner middleware included),
    continuing the client's W3C context if it sent one; the reply's status, request id and Server-Timing
    breakdown as attributes; the span's `traceparent` on the reply. Paths in `skip` (probes, scrapes) are not
    traced: an orchestrator's polls would bury the requests people look for."""

    def __init__(self, app: ASGIApp, tracer: Tracer, skip: frozenset[str] = frozenset()) -> None:
        self.app = app
        self.tracer = tracer
        self.skip = skip

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self.skip:
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        carrier = {k: v for k in (TRACEPARENT, TRACESTATE) if (v := headers.get(k)) is not None}
        method = scope["method"]
        attributes: dict[str, str | int] = {
            "http.request.method": method,
            "url.path": scope["path"],
            "url.scheme": scope.get("scheme", "http"),
        }
        if query := scope.get("query_string", b"").decode("latin-1"):
            attributes["url.query"] = query
        if client := scope.get("client"):
            attributes["client.address"] = client[0]
        with self.tracer.start_as_current_span(
            method, context=_PROPAGATOR.extract(carrier), kind=SpanKind.SERVER, attributes=attributes
        ) as span:

            async def send_traced(message: Message) -> None:
                if message["type"] == "http.response.start":
                    _describe_reply(span, message)
                await send(message)

            try:
                await self.app(scope, receive, send_traced)
            finally:
                route = getattr(scope.get("route"), "path", None)  # set by the router when a route matched
                if route:
                    span.update_name(f"{method} {route}")
                    span.set_attribute("http.route", route)
                if (request_id := scope.get("request_id")) is not None:
                    span.set_attribute("hybrid.request_id", request_id)


def _describe_reply(span: Span, message: Message) -> None:
    status = int(message["status"])
    span.set_attribute("http.response.status_code", status)
    if status >= 500:  # a server span's 4xx is the client's mistake, not an error of the service
        span.set_status(Status(StatusCode.ERROR))
    headers = MutableHeaders(scope=message)
    for name, ms in server_timing(headers.get("server-timing", "")).items():
        span.set_attribute(f"hybrid.server_timing.{name}_ms", ms)
    for name in ("x-pipeline", "x-frames"):
        if (value := headers.get(name)) is not None:
            span.set_attribute(f"hybrid.{name[2:]}", value)
    if (value := traceparent_of(span)) is not None:
        headers[TRACEPARENT] = value


def inference_attributes(inputs: Mapping[str, np.ndarray]) -> None:
    """The Triton inputs of the current request on its span: scalars by value (steps, seed, frames asked for),
    tensors by shape, so a trace says what was asked without holding the media."""
    span = trace.get_current_span()
    if not span.is_recording():
        return
    for name, array in inputs.items():
        if array.size == 1:
            span.set_attribute(f"hybrid.input.{name.lower()}", array.item())
        else:
            span.set_attribute(f"hybrid.input.{name.lower()}.shape", list(array.shape))


class TraceIdFilter(logging.Filter):
    """Stamps log records with the current trace id, so a request's log lines lead to its trace."""

    def filter(self, record: logging.LogRecord) -> bool:
        context = trace.get_current_span().get_span_context()
        if context.is_valid:
            record.trace_id = f"{context.trace_id:032x}"
        return True


def request_id() -> str:
    """The current request's id for Triton's `request_id` (in its spans and log), empty outside a request."""
    value = REQUEST_ID.get()
    return "" if value == "-" else value
