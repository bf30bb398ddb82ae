"""One trace per request. Without Triton: the gateway's spans through an in-memory exporter (the W3C context
accepted and returned, sampling decided by the caller's flag, refusals traced, probes not). With the real stack:
a traced /reconstruct?pipeline=hybrid gives one trace id over the gateway's spans and Triton's own spans for the
ensemble and each of its steps, collected by an OTLP/HTTP receiver (service.trace_sink) the way a collector
would receive them."""

from __future__ import annotations

import http.client
import logging
import secrets
from collections.abc import Iterator

import httpx
import pytest
from fastapi.testclient import TestClient
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from opentelemetry.trace import SpanKind, StatusCode

from hybrid import samples
from service import tracing
from service.app import create_app
from service.local_stack import Stack, StackError, free_port, running_stack
from service.settings import Settings
from service.trace_sink import ReceivedSpan, TraceSink, parse_export, render, running_sink

STEPS = ("preprocess", "vlm_encoder", "spatial_encoder", "fusion", "video_decoder")


def traceparent(trace_id: str, span_id: str, sampled: bool = True) -> str:
    return f"00-{trace_id}-{span_id}-{'01' if sampled else '00'}"


def new_ids() -> tuple[str, str]:
    return secrets.token_hex(16), secrets.token_hex(8)


# ---------------------------------------------------------------------------------------------------------
# The gateway alone: an in-memory exporter, Triton unreachable (every inference answers 503 after its span).


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def traced_gateway(exporter: InMemorySpanExporter) -> Iterator[TestClient]:
    provider = TracerProvider(sampler=ParentBased(TraceIdRatioBased(1.0)))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    settings = Settings(triton_grpc_url=f"127.0.0.1:{free_port()}", request_timeout_s=5, max_upload_bytes=1000)
    with TestClient(create_app(settings, tracer_provider=provider)) as client:
        yield client


def spans_of(exporter: InMemorySpanExporter, trace_id: str) -> list[ReadableSpan]:
    return [
        s for s in exporter.get_finished_spans() if s.context is not None and f"{s.context.trace_id:032x}" == trace_id
    ]


def test_a_request_continues_the_callers_trace_and_returns_its_own_span(
    traced_gateway: TestClient, exporter: InMemorySpanExporter
) -> None:
    trace_id, parent = new_ids()
    reply = traced_gateway.post(
        "/reconstruct?pipeline=vlm&steps=2",
        files={"file": ("a.png", samples.png(8, 8))},
        headers={"traceparent": traceparent(trace_id, parent), "X-Request-ID": "traced-1"},
    )
    assert reply.status_code == 503  # no Triton: the trace still says where the time went
    spans = spans_of(exporter, trace_id)
    (server,) = [s for s in spans if s.kind == SpanKind.SERVER]
    (client,) = [s for s in spans if s.kind == SpanKind.CLIENT]
    assert server.parent is not None and f"{server.parent.span_id:016x}" == parent
    assert server.name == "POST /reconstruct"
    attributes = dict(server.attributes or {})
    assert attributes["http.response.status_code"] == 503 and attributes["http.route"] == "/reconstruct"
    assert attributes["hybrid.request_id"] == "traced-1"
    assert attributes["hybrid.input.steps"] == 2 and "hybrid.server_timing.gateway_ms" in attributes
    assert server.status.status_code == StatusCode.ERROR
    # The Triton call is the server span's child, and failed.
    assert client.parent is not None and server.context is not None
    assert client.parent.span_id == server.context.span_id
    assert client.name == "triton reconstruct_vlm" and client.status.status_code == StatusCode.ERROR
    assert dict(client.attributes or {})["hybrid.error_code"] == "triton_unavailable"
    # The reply names the gateway's span, in the caller's trace.
    assert reply.headers["traceparent"] == traceparent(trace_id, f"{server.context.span_id:016x}")


def test_a_request_without_context_starts_a_trace(traced_gateway: TestClient, exporter: InMemorySpanExporter) -> None:
    reply = traced_gateway.post("/reconstruct", files={"file": ("a.png", samples.png(8, 8))})
    version, trace_id, span_id, flags = reply.headers["traceparent"].split("-")
    assert version == "00" and int(flags, 16) & 1 and int(trace_id, 16) and int(span_id, 16)  # sampled
    (server,) = [s for s in spans_of(exporter, trace_id) if s.kind == SpanKind.SERVER]
    assert server.parent is None and server.context is not None and f"{server.context.span_id:016x}" == span_id


def test_the_callers_unsampled_flag_is_honoured(traced_gateway: TestClient, exporter: InMemorySpanExporter) -> None:
    trace_id, parent = new_ids()
    reply = traced_gateway.post(
        "/reconstruct",
        files={"file": ("a.png", samples.png(8, 8))},
        headers={"traceparent": traceparent(trace_id, parent, False)},
    )
    assert reply.status_code == 503
    assert spans_of(exporter, trace_id) == []  # nothing recorded, so nothing for Triton either
    assert reply.headers["traceparent"].startswith(f"00-{trace_id}-") and reply.headers["traceparent"].endswith("-00")


def test_refusals_are_traced_and_probes_are_not(traced_gateway: TestClient, exporter: InMemorySpanExporter) -> None:
    trace_id, parent = new_ids()
    big = traced_gateway.post(
        "/reconstruct",
        content=b"x" * 200_000,
        headers={"traceparent": traceparent(trace_id, parent), "Content-Type": "multipart/form-data; boundary=x"},
    )
    assert big.status_code == 413  # refused by DeclaredSizeLimit, before any route
    (server,) = spans_of(exporter, trace_id)
    assert dict(server.attributes or {})["http.response.status_code"] == 413
    assert server.status.status_code == StatusCode.UNSET  # a client's mistake is not the service's error
    before = len(exporter.get_finished_spans())
    assert traced_gateway.get("/healthz").status_code == 200
    assert "traceparent" not in traced_gateway.get("/healthz").headers
    assert len(exporter.get_finished_spans()) == before


def test_tracing_is_off_by_default() -> None:
    settings = Settings(triton_grpc_url=f"127.0.0.1:{free_port()}", request_timeout_s=5)
    assert settings.otlp_traces_endpoint == ""
    with TestClient(create_app(settings)) as client:
        reply = client.post("/reconstruct", files={"file": ("a.png", samples.png(8, 8))})
    assert reply.status_code == 503 and "traceparent" not in reply.headers


def test_triton_is_started_tracing_only_what_the_gateway_propagates() -> None:
    assert tracing.triton_trace_args("") == []
    args = tracing.triton_trace_args("http://127.0.0.1:4318/v1/traces")
    assert "--trace-config=mode=opentelemetry" in args
    assert "--trace-config=opentelemetry,url=http://127.0.0.1:4318/v1/traces" in args
    assert "--trace-config=rate=0" in args and "--trace-config=level=TIMESTAMPS" in args


def test_only_a_sampled_context_is_propagated() -> None:
    provider = TracerProvider(sampler=ParentBased(TraceIdRatioBased(1.0)))
    tracer = provider.get_tracer("test")
    with tracer.start_as_current_span("sampled") as span:
        headers = tracing.outgoing_headers()
        assert headers["traceparent"] == tracing.traceparent_of(span)
    assert tracing.outgoing_headers() == {}  # no current span
    unsampled = TracerProvider(sampler=TraceIdRatioBased(0.0)).get_tracer("test")
    with unsampled.start_as_current_span("dropped"):
        assert tracing.outgoing_headers() == {}


def test_log_lines_name_the_trace(caplog: pytest.LogCaptureFixture) -> None:
    tracer = TracerProvider().get_tracer("test")
    caplog.handler.addFilter(tracing.TraceIdFilter())
    with tracer.start_as_current_span("request") as span, caplog.at_level(logging.INFO):
        logging.getLogger("service.test").info("inside")
    assert caplog.records[-1].trace_id == f"{span.get_span_context().trace_id:032x}"  # type: ignore[attr-defined]


def test_server_timing_parses_the_gateways_header() -> None:
    assert tracing.server_timing("gateway;dur=12.5, decode;dur=1.0, triton;desc=x;dur=9, bad;dur=x, nodur") == {
        "gateway": 12.5,
        "decode": 1.0,
        "triton": 9.0,
    }


def test_the_sink_reads_both_encodings() -> None:
    # Triton posts OTLP/JSON (hex ids, numbered enums); the Python exporter posts protobuf (bytes ids).
    body = (
        b'{"resourceSpans":[{"resource":{"attributes":[{"key":"service.name","value":{"stringValue":"triton"}}]},'
        b'"scopeSpans":[{"spans":[{"traceId":"0AF7651916CD43DD8448EB211C80319C","spanId":"b7ad6b7169203331",'
        b'"parentSpanId":"","name":"InferRequest","kind":2,"startTimeUnixNano":"1000","endTimeUnixNano":"3000000",'
        b'"attributes":[{"key":"triton.request_id","value":{"stringValue":"r1"}}],"status":{"code":0}}]}]}]}'
    )
    (span,) = parse_export(body, "application/json")
    assert (span.trace_id, span.span_id, span.parent_id) == ("0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331", "")
    assert (span.service, span.kind, span.status, span.attributes) == (
        "triton",
        "server",
        "unset",
        {"triton.request_id": "r1"},
    )
    assert span.duration_ms == pytest.approx(2.999)
    assert "InferRequest" in render([span])


def test_the_sink_keeps_connections_alive() -> None:
    # tritonserver's exporter reuses its connection: a receiver that closed it after each reply lost a batch.
    body = b'{"resourceSpans":[{"scopeSpans":[{"spans":[{"traceId":"%s","spanId":"%s","name":"s"}]}]}]}'
    with running_sink() as sink:
        host, port = sink.url.removeprefix("http://").split("/")[0].split(":")
        connection = http.client.HTTPConnection(host, int(port), timeout=10)
        for trace_id in ("01" * 16, "02" * 16):
            connection.request(
                "POST", "/v1/traces", body % (trace_id.encode(), b"03" * 8), {"Content-Type": "application/json"}
            )
            reply = connection.getresponse()
            assert reply.status == 200 and reply.read() == b"{}"
            assert reply.version == 11 and not reply.will_close  # the same connection carries the next export
        connection.close()
        assert [s.trace_id for s in sink.spans()] == ["01" * 16, "02" * 16]


# ---------------------------------------------------------------------------------------------------------
# The real stack: gateway and tritonserver exporting to one OTLP/HTTP receiver.


@pytest.fixture(scope="module")
def sink() -> Iterator[TraceSink]:
    with running_sink() as started:
        yield started


@pytest.fixture(scope="module")
def traced_stack(sink: TraceSink, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    log_path = tmp_path_factory.mktemp("traced-stack") / "service.log"
    env = {
        "HYBRID_OTLP_TRACES_ENDPOINT": sink.url,
        "OTEL_BSP_SCHEDULE_DELAY": "100",  # both exporters (Python's and Triton's) batch for 100 ms, not 5 s
    }
    try:
        with running_stack(log_path, env) as started:
            yield started
    except StackError as exc:
        pytest.fail(str(exc))


def _complete(trace_id: str) -> object:
    """True once the spans of `trace_id` hold the gateway's server and client spans and Triton's step spans."""

    def ready(spans: list[ReceivedSpan]) -> bool:
        names = {s.name for s in spans if s.trace_id == trace_id}
        return {"POST /reconstruct", "triton reconstruct_hybrid", "InferRequest", "reconstruct_hybrid", *STEPS} <= names

    return ready


@pytest.mark.integration
def test_one_trace_covers_the_gateway_and_every_ensemble_step(traced_stack: Stack, sink: TraceSink) -> None:
    url = f"{traced_stack.gateway_url}/reconstruct"
    untraced, _ = new_ids()
    # An unsampled request first: nothing of it may reach the receiver, from the gateway or from Triton.
    reply = httpx.post(
        url,
        params={"pipeline": "hybrid"},
        files={"file": ("in.png", samples.png())},
        headers={"traceparent": traceparent(untraced, secrets.token_hex(8), sampled=False)},
        timeout=120,
    )
    assert reply.status_code == 200, reply.text
    trace_id, parent = new_ids()
    reply = httpx.post(
        url,
        params={"pipeline": "hybrid", "steps": 2, "seed": 7},
        files={"file": ("in.png", samples.png())},
        headers={"traceparent": traceparent(trace_id, parent), "X-Request-ID": "trace-e2e-1"},
        timeout=120,
    )
    assert reply.status_code == 200, reply.text
    assert reply.headers["traceparent"].startswith(f"00-{trace_id}-")

    sink.wait_for(_complete(trace_id), timeout_s=60)
    spans = sink.spans(trace_id)
    print(render(spans))  # the tree `python -m service.trace_sink` prints (pytest -s shows it)
    by_name: dict[str, list[ReceivedSpan]] = {}
    for span in spans:
        by_name.setdefault(span.name, []).append(span)
    (server,) = by_name["POST /reconstruct"]
    (client,) = by_name["triton reconstruct_hybrid"]
    (infer,) = by_name["InferRequest"]
    (ensemble,) = by_name["reconstruct_hybrid"]
    # One chain of parents: the caller → the gateway's request → its Triton call → Triton's request → the ensemble.
    assert server.parent_id == parent and server.service == tracing.GATEWAY_SERVICE and server.kind == "server"
    assert reply.headers["traceparent"] == traceparent(trace_id, server.span_id)
    assert client.parent_id == server.span_id and client.kind == "client"
    assert infer.parent_id == client.span_id and infer.service == tracing.TRITON_SERVICE
    assert ensemble.parent_id == infer.span_id
    assert server.attributes["hybrid.request_id"] == "trace-e2e-1"
    assert server.attributes["hybrid.input.steps"] == 2 and server.attributes["hybrid.input.seed"] == 7
    assert server.attributes["http.response.status_code"] == 200
    for name in STEPS:
        (step,) = by_name[name]
        assert step.parent_id == ensemble.span_id, name
        assert step.attributes["triton.request_id"] == "trace-e2e-1"  # Triton was given the gateway's request id
        assert step.duration_ms > 0, name
        # Inside the gateway's Triton call (both clocks are this machine's real-time clock).
        assert client.start_ns <= step.start_ns and step.end_ns <= client.end_ns, name
        (compute,) = [s for s in spans if s.parent_id == step.span_id]
        assert compute.name == "compute" and {"COMPUTE_START", "COMPUTE_END"} <= {e for e, _ in compute.events}
    assert sink.spans(untraced) == []
