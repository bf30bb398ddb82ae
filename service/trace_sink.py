"""A minimal OTLP/HTTP traces receiver that keeps spans in memory and prints each trace as a tree: enough to read
the gateway's and Triton's spans on a machine without a collector (no Docker, no Jaeger), and what the tests
collect spans with.

    python -m service.trace_sink --port 4318        # then, in another shell:
    HYBRID_OTLP_TRACES_ENDPOINT=http://127.0.0.1:4318/v1/traces make up

It accepts both OTLP/HTTP encodings, since the two exporters differ: the gateway's Python exporter posts
protobuf, Triton's C++ exporter posts JSON. Anywhere with a real collector (Jaeger, Tempo, an OpenTelemetry
Collector) point HYBRID_OTLP_TRACES_ENDPOINT at it instead; this is a reading aid, not a store.
"""

from __future__ import annotations

import argparse
import base64
import gzip
import json
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from google.protobuf.json_format import MessageToDict
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

MAX_BODY_BYTES = 32 * 1024 * 1024
_KINDS = {0: "unspecified", 1: "internal", 2: "server", 3: "client", 4: "producer", 5: "consumer"}
_STATUSES = {0: "unset", 1: "ok", 2: "error"}


@dataclass(frozen=True)
class ReceivedSpan:
    """One span as received, whichever service and encoding sent it; ids in lowercase hex."""

    trace_id: str
    span_id: str
    parent_id: str  # "" for a root
    name: str
    service: str
    kind: str
    start_ns: int
    end_ns: int
    attributes: dict[str, Any] = field(default_factory=dict)
    events: tuple[tuple[str, int], ...] = ()
    status: str = "unset"

    @property
    def duration_ms(self) -> float:
        return (self.end_ns - self.start_ns) / 1e6


def _value(value: dict[str, Any]) -> Any:
    """An OTLP AnyValue (as JSON) as a Python value."""
    for key in ("stringValue", "boolValue", "doubleValue"):
        if key in value:
            return value[key]
    if "intValue" in value:
        return int(value["intValue"])  # 64-bit integers travel as strings in OTLP/JSON
    if "arrayValue" in value:
        return [_value(v) for v in value["arrayValue"].get("values", [])]
    return None


def _attributes(items: Iterable[dict[str, Any]]) -> dict[str, Any]:
    return {item["key"]: _value(item.get("value", {})) for item in items}


def _hex(value: str, base64_ids: bool) -> str:
    """OTLP/JSON carries ids as hex; protobuf's bytes fields come out of MessageToDict as base64."""
    if not base64_ids:
        return value.lower()
    return base64.b64decode(value).hex() if value else ""


def _enum(value: int | str, names: dict[int, str], prefix: str) -> str:
    """An OTLP enum as a short name: Triton's JSON numbers them, MessageToDict names them (SPAN_KIND_SERVER)."""
    if isinstance(value, int):
        return names.get(value, str(value))
    return value.removeprefix(prefix).lower()


def parse_export(body: bytes, content_type: str) -> list[ReceivedSpan]:
    """The spans of one ExportTraceServiceRequest, protobuf or JSON."""
    if "json" in content_type:
        message, base64_ids = json.loads(body), False
    else:
        request = ExportTraceServiceRequest()
        request.ParseFromString(body)
        message, base64_ids = MessageToDict(request), True
    spans = []
    for resource_spans in message.get("resourceSpans", []):
        resource = _attributes(resource_spans.get("resource", {}).get("attributes", []))
        service = str(resource.get("service.name", "?"))
        for scope_spans in resource_spans.get("scopeSpans", []):
            for span in scope_spans.get("spans", []):
                events = span.get("events", ())
                spans.append(
                    ReceivedSpan(
                        trace_id=_hex(span["traceId"], base64_ids),
                        span_id=_hex(span["spanId"], base64_ids),
                        parent_id=_hex(span.get("parentSpanId", ""), base64_ids),
                        name=span.get("name", ""),
                        service=service,
                        kind=_enum(span.get("kind", 0), _KINDS, "SPAN_KIND_"),
                        start_ns=int(span.get("startTimeUnixNano", 0)),
                        end_ns=int(span.get("endTimeUnixNano", 0)),
                        attributes=_attributes(span.get("attributes", [])),
                        events=tuple((e.get("name", ""), int(e.get("timeUnixNano", 0))) for e in events),
                        status=_enum(span.get("status", {}).get("code", 0), _STATUSES, "STATUS_CODE_"),
                    )
                )
    return spans


class TraceSink:
    """The receiver: an HTTP server on `host:port` (0: a free port) whose POST /v1/traces stores spans."""

    def __init__(
        self, host: str = "127.0.0.1", port: int = 0, on_spans: Callable[[list[ReceivedSpan]], None] | None = None
    ) -> None:
        self._spans: list[ReceivedSpan] = []
        self._lock = threading.Condition()
        self._on_spans = on_spans
        self._host = host
        self._server = ThreadingHTTPServer((host, port), self._handler())
        self._server.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://{self._host}:{self._server.server_port}/v1/traces"

    def start(self) -> TraceSink:
        self._thread = threading.Thread(target=self._server.serve_forever, name="trace-sink", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def spans(self, trace_id: str | None = None) -> list[ReceivedSpan]:
        with self._lock:
            return [s for s in self._spans if trace_id is None or s.trace_id == trace_id]

    def wait_for(self, ready: Callable[[list[ReceivedSpan]], bool], timeout_s: float) -> list[ReceivedSpan]:
        """Block until `ready(spans so far)` holds (then return them) or `timeout_s` passes (TimeoutError)."""
        deadline = time.monotonic() + timeout_s
        with self._lock:
            while not ready(list(self._spans)):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"the spans expected did not arrive in {timeout_s:.0f} s")
                self._lock.wait(left)
            return list(self._spans)

    def _add(self, spans: list[ReceivedSpan]) -> None:
        with self._lock:
            self._spans.extend(spans)
            self._lock.notify_all()
        if self._on_spans is not None:
            self._on_spans(spans)

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        sink = self

        class Handler(BaseHTTPRequestHandler):
            # Keep-alive, as collectors do: tritonserver's exporter reuses its connection, and the batch it sends
            # on one the server has closed is lost (seen here: with HTTP/1.0 replies its second export never arrived).
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:  # noqa: N802 - the http.server API
                length = int(self.headers.get("content-length") or 0)
                if self.path.rstrip("/") != "/v1/traces" or not 0 < length <= MAX_BODY_BYTES:
                    self.send_error(404 if self.path.rstrip("/") != "/v1/traces" else 400)
                    return
                body = self.rfile.read(length)
                if self.headers.get("content-encoding", "").lower() == "gzip":
                    body = gzip.decompress(body)
                content_type = self.headers.get("content-type", "application/x-protobuf")
                try:
                    spans = parse_export(body, content_type)
                except (ValueError, KeyError) as exc:  # DecodeError is a ValueError
                    self.send_error(400, str(exc)[:200])
                    return
                sink._add(spans)
                reply = b"{}" if "json" in content_type else ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/json" if b"{" in reply[:1] else "application/x-protobuf")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the http.server API
                pass

        return Handler


@contextmanager
def running_sink(host: str = "127.0.0.1", port: int = 0) -> Iterator[TraceSink]:
    sink = TraceSink(host, port).start()
    try:
        yield sink
    finally:
        sink.stop()


def render(spans: list[ReceivedSpan]) -> str:
    """One trace as an indented tree: name, service, duration, the attributes that say what it was (each once,
    where it first appears down a branch), and for a Triton model its wait in the queue before its compute."""
    by_id = {s.span_id: s for s in spans}
    children: dict[str, list[ReceivedSpan]] = {}
    for span in spans:
        parent = span.parent_id if span.parent_id in by_id else ""
        children.setdefault(parent, []).append(span)
    lines = [f"trace {spans[0].trace_id}" if spans else "trace (empty)"]

    def walk(parent: str, depth: int, inherited: dict[str, Any]) -> None:
        for span in sorted(children.get(parent, []), key=lambda s: (s.start_ns, s.name)):
            shown = {k: v for k, v in span.attributes.items() if k in _SHOWN}
            details = [f"{k}={v}" for k, v in shown.items() if inherited.get(k) != v]
            if (queue := _queue_ms(span, children.get(span.span_id, []))) is not None:
                details.append(f"queue={queue:.2f}ms")
            if span.status == "error":
                details.append("ERROR")
            label = f"{'  ' * depth}{span.name}"
            lines.append(f"{label:<44} {span.service:<24} {span.duration_ms:9.2f} ms  {' '.join(details)}".rstrip())
            walk(span.span_id, depth + 1, {**inherited, **shown})

    walk("", 1, {})
    return "\n".join(lines)


def _queue_ms(span: ReceivedSpan, children: list[ReceivedSpan]) -> float | None:
    """Triton's model span has QUEUE_START, its compute child COMPUTE_START: the time between is the queue."""
    queued = [ns for name, ns in span.events if name == "QUEUE_START"]
    started = [ns for child in children for name, ns in child.events if name == "COMPUTE_START"]
    if not queued or not started:
        return None
    return max(min(started) - queued[0], 0) / 1e6


_SHOWN = {
    "http.response.status_code",
    "hybrid.pipeline",
    "hybrid.request_id",
    "hybrid.error_code",
    "triton.request_id",
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=4318, help="4318 is OTLP/HTTP's usual port")
    parser.add_argument("--settle-s", type=float, default=2.0, help="print a trace once no span came for this long")
    parser.add_argument("--jsonl", help="also append every span to this file, one JSON object per line")
    args = parser.parse_args(argv)
    pending: dict[str, float] = {}
    lock = threading.Lock()

    def received(spans: list[ReceivedSpan]) -> None:
        with lock:
            for span in spans:
                pending[span.trace_id] = time.monotonic()
        if args.jsonl:
            with open(args.jsonl, "a") as out:
                for span in spans:
                    out.write(json.dumps(span.__dict__, default=list) + "\n")

    sink = TraceSink(args.host, args.port, on_spans=received).start()
    print(f"OTLP/HTTP traces receiver on {sink.url}; Ctrl-C stops it", flush=True)
    try:
        while True:
            time.sleep(0.2)
            with lock:
                settled = [t for t, last in pending.items() if time.monotonic() - last >= args.settle_s]
                for trace_id in settled:
                    del pending[trace_id]
            for trace_id in settled:
                print(render(sink.spans(trace_id)) + "\n", flush=True)
    except KeyboardInterrupt:
        pass
    finally:
        sink.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
