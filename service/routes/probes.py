"""GET /healthz (the gateway is alive, and what is wrong if anything), /readyz (Triton serves every ensemble),
/metrics (Prometheus) and /v1/overhead (E-P2.6). A bearer token guards probes and metrics only when configured
(HYBRID_AUTH_PROBES, HYBRID_AUTH_METRICS): orchestrators and scrapers usually call them without one."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from service.dependencies import GatewayDep, require_token_for_metrics, require_token_for_probes
from service.errors import error_responses


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {"application/json": {"schema": schema}}


HEALTH = {
    "type": "object",
    "required": ["status"],
    "properties": {
        "status": {"type": "string", "enum": ["alive", "failing"]},
        "triton": {"type": "string", "description": "what is wrong with the embedded tritonserver, if anything"},
    },
}
READY = {
    "type": "object",
    "required": ["ready"],
    "properties": {"ready": {"type": "boolean"}, "triton": {"type": "string"}},
}

probes = APIRouter(dependencies=[Depends(require_token_for_probes)], tags=["probes"])
telemetry = APIRouter(dependencies=[Depends(require_token_for_metrics)], tags=["telemetry"])


@probes.get(
    "/healthz",
    summary="The gateway is alive; while the embedded tritonserver is down, says what is wrong",
    responses={
        200: {"description": "Alive (restarting Triton by itself if it crashed)", "content": _json(HEALTH)},
        503: {"description": "Triton failed to restart: restart the service", "content": _json(HEALTH)},
        **error_responses(401, 403),
    },
)
async def healthz(gateway: GatewayDep) -> JSONResponse:
    state = gateway.triton_state
    problem = state.problem() if state is not None else None
    if problem is None:
        return JSONResponse({"status": "alive"})
    failed = state is not None and state.failed
    return JSONResponse({"status": "failing" if failed else "alive", "triton": problem}, 503 if failed else 200)


@probes.get(
    "/readyz",
    summary="Triton serves every ensemble (on at least one replica)",
    responses={
        200: {"description": "Ready", "content": _json(READY)},
        503: {"description": "Not ready", "content": _json(READY)},
        **error_responses(401, 403),
    },
)
async def readyz(gateway: GatewayDep) -> JSONResponse:
    state = gateway.triton_state
    if state is not None and not state.ready:
        return JSONResponse({"ready": False, "triton": state.problem() or "starting"}, 503)
    report = await (await gateway.triton.client()).readiness_report()
    return JSONResponse(report.as_dict(), status_code=200 if report.ready else 503)


@telemetry.get(
    "/metrics",
    summary="Prometheus metrics",
    response_class=Response,
    responses={
        200: {"description": "Prometheus text format", "content": {"text/plain": {"schema": {"type": "string"}}}},
        **error_responses(401, 403),
    },
)
async def prometheus_metrics(gateway: GatewayDep) -> Response:
    return Response(generate_latest(gateway.metrics.registry), media_type=CONTENT_TYPE_LATEST)


@telemetry.get(
    "/v1/overhead",
    summary="E-P2.6: hybrid-over-vlm latency overhead, per pipeline and per stage",
    responses={
        200: {"description": "The E-P2.6 report", "content": _json({"type": "object"})},
        **error_responses(401, 403),
    },
)
async def overhead_report(request: Request) -> dict[str, Any]:
    return request.app.state.tracker.report()
