"""POST /reconstruct and /encode: parameters checked first, then (through the dependencies) the token, Triton's
availability and admission, then the upload is read and decoded, then one Triton ensemble call.

The OpenAPI schema says exactly what the replies are (content types, every status, the 8k+1 frame rule and the
step bound), so a schema fuzzer can check every reply against it.
"""

# No `from __future__ import annotations`: the route signatures use the settings' bounds, which FastAPI could not
# resolve from postponed annotations inside `inference_router`.
import io
import time
from enum import Enum
from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, Depends, Query, Request, Security
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response

from hybrid.contracts import CONDITIONING, FRAMES, PIPELINES, VIDEO, ensemble_name, round_up_frames, valid_frame_count
from hybrid.media import OUTPUT_FORMATS, SINGLE_FRAME_FORMATS, encode_frames
from service.dependencies import (
    Gateway,
    GatewayDep,
    admit,
    bearer_scheme,
    receive_upload,
    require_token,
    require_triton,
)
from service.errors import ApiError, error_responses
from service.settings import Settings
from service.tracing import inference_attributes

# Query-parameter enums built from the contracts, so the API and the models cannot disagree on the choices. A type
# checker cannot list members made at run time: members are looked up by value, `Pipeline("hybrid")`.
Pipeline = Enum("Pipeline", {p: p for p in PIPELINES}, type=str)  # type: ignore[misc]
OutputFormat = Enum("OutputFormat", {f: f for f in OUTPUT_FORMATS}, type=str)  # type: ignore[misc]
DEFAULT_PIPELINE = Pipeline("hybrid")
PipelineParam = Annotated[Pipeline, Query(description="hybrid, vlm (baseline) or spatial (baseline)")]
SINGLE_FRAME_REFUSAL = "format: png holds one frame; ask for webp, gif, mp4 or npz"

INPUTS = "PNG, JPEG or WebP image; animated GIF, WebP or PNG, MP4 or WebM video"
UPLOAD_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {"file": {"type": "string", "format": "binary", "description": INPUTS}},
                }
            }
        },
    }
}
ERRORS = (400, 401, 403, 408, 413, 422, 429, 500, 502, 503, 504)
BINARY = {"schema": {"type": "string", "format": "binary"}}
REPLY_HEADERS = {
    "Server-Timing": {"description": "gateway, decode, triton and encode times in ms", "schema": {"type": "string"}},
    "X-Pipeline": {"description": "the pipeline that answered", "schema": {"type": "string"}},
    "X-Request-ID": {"description": "the request's id, in the gateway's log lines too", "schema": {"type": "string"}},
}


class Timer:
    """Named spans for the Server-Timing header."""

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.spans: dict[str, float] = {}

    def add(self, name: str, since: float) -> float:
        now = time.perf_counter()
        self.spans[name] = self.spans.get(name, 0.0) + now - since
        return now

    def header(self) -> str:
        spans = {"gateway": time.perf_counter() - self.start, **self.spans}
        return ", ".join(f"{name};dur={seconds * 1000:.1f}" for name, seconds in spans.items())


def bad_parameter(gateway: Gateway, message: str) -> ApiError:
    gateway.metrics.rejected.labels("bad_parameter").inc()
    return ApiError(400, "invalid_parameter", message)


async def run_ensemble(
    gateway: Gateway, model: str, inputs: dict[str, np.ndarray], output: str, timer: Timer
) -> np.ndarray:
    """One Triton call, inside the admission slot the request holds."""
    inference_attributes(inputs)  # on the request's span, when it is traced: what was asked (steps, seed, frames)
    since = time.perf_counter()
    try:
        result = await (await gateway.triton.client()).infer(model, inputs, output)
    finally:
        timer.add("triton", since)
    gateway.metrics.observe_triton(model, time.perf_counter() - since)
    return result


def inference_router(settings: Settings) -> APIRouter:
    """The routes, with the bounds the settings give written into the schema."""
    guards = [Depends(require_token)]
    if settings.api_token is not None:
        guards.insert(0, Security(bearer_scheme))  # documents the scheme; require_token does the checking
    router = APIRouter(dependencies=guards, tags=["inference"])
    frame_counts = [f for f in range(1, settings.max_output_frames + 1) if valid_frame_count(f)]

    @router.post(
        "/reconstruct",
        summary="Reconstruct an image or short video through a pipeline",
        response_class=Response,
        responses={
            200: {
                "description": "The reconstruction, in the format asked for",
                "content": {mime: BINARY for mime in dict.fromkeys(OUTPUT_FORMATS.values())},
                "headers": {**REPLY_HEADERS, "X-Frames": {"description": "frames out", "schema": {"type": "string"}}},
            },
            **error_responses(*ERRORS),
        },
        openapi_extra=UPLOAD_BODY,
    )
    async def reconstruct(
        request: Request,
        gateway: GatewayDep,
        pipeline: PipelineParam = DEFAULT_PIPELINE,
        frames: Annotated[
            int | None,
            Query(
                description="frames out: LTX-Video decodes 8k+1 (1, 9, 17, …), at most HYBRID_MAX_OUTPUT_FRAMES; "
                "default 1 for an image, the input's count rounded up to 8k+1 for a video",
                json_schema_extra={"enum": frame_counts},
            ),
        ] = None,
        steps: Annotated[
            int | None, Query(ge=1, le=settings.max_steps, description="denoising steps; default from the profile")
        ] = None,
        seed: Annotated[int, Query(ge=0, le=2**63 - 1, description="the decoder's noise seed")] = 0,
        format: Annotated[
            OutputFormat | None, Query(description="png (one frame only), webp, gif, mp4, npz; default png or webp")
        ] = None,
        _triton: Annotated[None, Depends(require_triton)] = None,
        _slot: Annotated[None, Depends(admit)] = None,
    ) -> Response:
        timer = Timer()
        limits = gateway.settings
        steps = gateway.profile.decoder.default_steps if steps is None else steps
        if steps > limits.max_steps:
            raise bad_parameter(gateway, f"steps: at most {limits.max_steps}, got {steps}")
        if frames is not None and not valid_frame_count(frames):
            raise bad_parameter(gateway, f"frames: LTX-Video decodes 8k+1 frames (1, 9, 17, …), got {frames}")
        if frames is not None and frames > limits.max_output_frames:
            raise bad_parameter(gateway, f"frames: at most {limits.max_output_frames}, got {frames}")
        if frames is not None and frames > 1 and format is not None and format.value in SINGLE_FRAME_FORMATS:
            raise bad_parameter(gateway, SINGLE_FRAME_REFUSAL)  # before reading the upload
        since = time.perf_counter()
        upload = await receive_upload(request, gateway)
        timer.add("decode", since)
        if frames is None:
            frames = min(round_up_frames(upload.num_frames), limits.max_output_frames)
        fmt = (format or (OutputFormat("png") if frames == 1 else OutputFormat("webp"))).value
        if frames > 1 and fmt in SINGLE_FRAME_FORMATS:
            raise bad_parameter(gateway, SINGLE_FRAME_REFUSAL)
        inputs: dict[str, np.ndarray] = {
            FRAMES: upload.frames[None],
            "NUM_FRAMES": np.array([[frames]], dtype=np.int32),
            "STEPS": np.array([[steps]], dtype=np.int32),
            "SEED": np.array([[seed]], dtype=np.int64),
        }
        video = await run_ensemble(gateway, ensemble_name("reconstruct", pipeline.value), inputs, VIDEO, timer)
        since = time.perf_counter()
        body = await run_in_threadpool(encode_frames, video[0], fmt)
        timer.add("encode", since)
        return Response(
            body,
            media_type=OUTPUT_FORMATS[fmt],
            headers={
                "Server-Timing": timer.header(),
                "X-Pipeline": pipeline.value,
                "X-Frames": str(video.shape[1]),
                "Content-Disposition": f'inline; filename="reconstruction.{fmt}"',
            },
        )

    @router.post(
        "/encode",
        summary="The 64×4096 conditioning a pipeline gives LTX-Video, as a .npy array",
        response_class=Response,
        responses={
            200: {
                "description": "float32 [1, 64, 4096] in NumPy's .npy format",
                "content": {"application/octet-stream": BINARY},
                "headers": REPLY_HEADERS,
            },
            **error_responses(*ERRORS),
        },
        openapi_extra=UPLOAD_BODY,
    )
    async def encode(
        request: Request,
        gateway: GatewayDep,
        pipeline: PipelineParam = DEFAULT_PIPELINE,
        _triton: Annotated[None, Depends(require_triton)] = None,
        _slot: Annotated[None, Depends(admit)] = None,
    ) -> Response:
        timer = Timer()
        since = time.perf_counter()
        upload = await receive_upload(request, gateway)
        timer.add("decode", since)
        inputs = {FRAMES: upload.frames[None]}
        model = ensemble_name("encode", pipeline.value)
        conditioning = await run_ensemble(gateway, model, inputs, CONDITIONING, timer)
        buffer = io.BytesIO()
        np.save(buffer, conditioning)
        return Response(
            buffer.getvalue(),
            media_type="application/octet-stream",
            headers={
                "Server-Timing": timer.header(),
                "X-Pipeline": pipeline.value,
                "Content-Disposition": 'attachment; filename="conditioning.npy"',
            },
        )

    return router
