"""The gateway's ASGI middleware (plain ASGI: they see every reply, a 500 included, and cost no extra task).

Outermost first:
- `RequestContext`: a request id on every reply and log line, the access log line, Server-Timing on replies that
  have none, and the measurement of every inference reply, whatever its status;
- `OriginGuard`: refuses browser requests from origins that are not allowed (a multipart POST needs no CORS
  preflight, so without it any web page could make its visitors' browsers run inference here);
- `DeclaredSizeLimit`: 413 for a declared Content-Length over the upload limit, before admission.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from urllib.parse import parse_qs

from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.errors import error_response
from service.logs import REQUEST_ID, new_request_id
from service.uploads import FRAMING_ALLOWANCE

access_log = logging.getLogger("service.access")

INFERENCE_PATHS = {"/reconstruct": "reconstruct", "/encode": "encode"}
QUIET_PATHS = {"/healthz", "/readyz", "/metrics"}  # probes and scrapes: logged at debug, not info

# (endpoint, pipeline, status, seconds) for every reply of an inference endpoint.
InferenceObserver = Callable[[str, str, int, float], None]


class RequestContext:
    def __init__(self, app: ASGIApp, observe: InferenceObserver) -> None:
        self.app = app
        self.observe = observe

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = new_request_id(Headers(scope=scope).get("x-request-id"))
        REQUEST_ID.set(request_id)  # each request runs in its own task: the value does not leak
        scope["request_id"] = request_id
        start = time.perf_counter()
        status = 500  # if the app raises before replying, Starlette's outermost handler answers 500

        async def send_with_context(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = MutableHeaders(scope=message)
                headers["X-Request-ID"] = request_id
                if "server-timing" not in headers:
                    headers.append("Server-Timing", f"gateway;dur={(time.perf_counter() - start) * 1000:.1f}")
            await send(message)

        try:
            await self.app(scope, receive, send_with_context)
        finally:
            elapsed = time.perf_counter() - start
            path = scope["path"]
            endpoint = INFERENCE_PATHS.get(path)
            if endpoint and scope["method"] == "POST":
                query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
                self.observe(endpoint, query.get("pipeline", ["hybrid"])[0], status, elapsed)
            access_log.log(
                logging.DEBUG if path in QUIET_PATHS and status < 400 else logging.INFO,
                "%s %s %d",
                scope["method"],
                path,
                status,
                extra={"status": status, "duration_ms": round(elapsed * 1000, 1), "client": _client(scope)},
            )


def _client(scope: Scope) -> str:
    client = scope.get("client")
    return f"{client[0]}:{client[1]}" if client else "-"


class OriginGuard:
    def __init__(self, app: ASGIApp, allowed: list[str]) -> None:
        self.app = app
        self.allowed = set(allowed)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            headers = Headers(scope=scope)
            origin = headers.get("origin")
            if origin is not None and origin not in self.allowed and not _same_origin(origin, scope, headers):
                reply = error_response(
                    403, "origin_not_allowed", "requests from this browser origin are not allowed (HYBRID_CORS_ORIGINS)"
                )
                await reply(scope, receive, send)
                return
        await self.app(scope, receive, send)


def _same_origin(origin: str, scope: Scope, headers: Headers) -> bool:
    return origin == f"{scope.get('scheme', 'http')}://{headers.get('host', '')}"


class DeclaredSizeLimit:
    def __init__(self, app: ASGIApp, max_upload_bytes: int) -> None:
        self.app = app
        self.max_request_bytes = max_upload_bytes + FRAMING_ALLOWANCE
        self.max_upload_bytes = max_upload_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            length = Headers(scope=scope).get("content-length", "")
            if length.isdigit() and int(length) > self.max_request_bytes:
                reply = error_response(
                    413,
                    "file_too_large",
                    f"the request has {length} bytes; the limit is {self.max_upload_bytes}",
                    {"Connection": "close"},
                )
                await reply(scope, receive, send)
                return
        await self.app(scope, receive, send)
