"""Errors as the API promises them: `{"error": {"code": ..., "message": ...}}` with a 4xx naming the client's
mistake, 503 when Triton is down, 429 with Retry-After when overloaded — never a stack trace, an exception's
text or an internal address. A 5xx reply says what kind of failure it was; the details go to the log under the
request's id (X-Request-ID on every reply)."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger(__name__)

# What a client is told for each server-side failure; the message it replaced is logged.
PUBLIC_5XX = {
    "internal_error": "the gateway failed to answer; the request id is in X-Request-ID",
    "inference_failed": "inference failed; the request id is in X-Request-ID",
    "triton_unavailable": "the inference server is not available; retry after Retry-After seconds",
    "triton_restarting": "the inference server is restarting; retry after Retry-After seconds",
    "triton_timeout": "the inference server did not answer within the request timeout",
}

# Every status an endpoint can answer with, for the OpenAPI schema (a schema fuzzer checks replies against it).
STATUS_DESCRIPTIONS = {
    400: "A parameter is invalid, the upload is empty or not multipart/form-data with a field `file`",
    401: "A bearer token is required (HYBRID_API_TOKEN) and was missing or wrong",
    403: "A browser origin that is not allowed (HYBRID_CORS_ORIGINS)",
    408: "The client went silent while sending its request, or took longer than the upload timeout",
    413: "The upload or its decoded size (pixels per frame, pixels over all frames) is over a limit",
    422: "The file is not supported media, is truncated or corrupt, or has too many frames",
    429: "Too many requests in flight; retry after Retry-After seconds",
    500: "The gateway failed (a bug): nothing of the failure is disclosed but the request id",
    502: "A model failed on input the gateway accepted",
    503: "Triton is not available (restarting after a crash, or unreachable); retry after Retry-After seconds",
    504: "Triton did not answer within the request timeout",
}


class ErrorDetail(BaseModel):
    code: str
    message: str


class ErrorBody(BaseModel):
    error: ErrorDetail


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}


def error_response(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status, headers=headers)


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses=` entries: each status with its description and the error body's schema."""
    return {status: {"model": ErrorBody, "description": STATUS_DESCRIPTIONS[status]} for status in statuses}


def public_error(exc: ApiError) -> JSONResponse:
    """The reply for an ApiError: a 4xx as raised (it names the client's problem), a 5xx with a fixed message."""
    message = exc.message
    if exc.status >= 500:
        log.warning("%s %s: %s", exc.status, exc.code, exc.message, extra={"status": exc.status, "code": exc.code})
        message = PUBLIC_5XX.get(exc.code, "the service failed to answer; the request id is in X-Request-ID")
    return error_response(exc.status, exc.code, message, exc.headers)


def _validation_message(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err.get("loc", ()) if p not in ("query", "body"))
        parts.append(f"{where}: {err.get('msg', 'invalid')}" if where else err.get("msg", "invalid"))
    return "; ".join(parts) or "invalid request"


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
        return public_error(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(400, "invalid_parameter", _validation_message(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return error_response(exc.status_code, code, str(exc.detail), getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        # Runs in Starlette's outermost middleware: the request id is in the scope, not in the reply yet.
        request_id = request.scope.get("request_id", "-")
        log.error("unhandled %s", type(exc).__name__, exc_info=exc, extra={"status": 500})
        return error_response(500, "internal_error", PUBLIC_5XX["internal_error"], {"X-Request-ID": request_id})
