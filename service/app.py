"""The FastAPI gateway: POST /reconstruct and /encode over Triton ensembles, health, readiness and metrics.

The gateway validates everything a client sends before Triton sees it (parameters, upload size, decodable
media, pixel and frame bounds), bounds the requests in flight, and measures every request.
"""

from __future__ import annotations

import io
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from enum import Enum
from typing import Annotated

import numpy as np
from fastapi import FastAPI, File, Query, Request, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from hybrid.contracts import CONDITIONING, PIPELINES, VIDEO, ensemble_name, round_up_frames, valid_frame_count
from hybrid.media import OUTPUT_FORMATS, SINGLE_FRAME_FORMATS, DecodedMedia, MediaError, decode_media, encode_frames
from hybrid.profiles import get_profile
from service.errors import ApiError, error_response, install_error_handlers
from service.metrics import GatewayMetrics
from service.overhead import OverheadCollector, OverheadTracker
from service.settings import Settings
from service.triton_client import TritonClient

log = logging.getLogger(__name__)


# Query-parameter enums built from the contracts, so the API and the models cannot disagree on the choices.
Pipeline = Enum("Pipeline", {p: p for p in PIPELINES}, type=str)
OutputFormat = Enum("OutputFormat", {f: f for f in OUTPUT_FORMATS}, type=str)


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


def create_app(settings: Settings | None = None, triton: TritonClient | None = None) -> FastAPI:
    settings = settings or Settings()
    profile = get_profile(settings.profile)
    metrics = GatewayMetrics()
    tracker = OverheadTracker(
        settings.overhead_window_s,
        settings.overhead_budget,
        settings.overhead_min_samples,
        settings.profile,
    )
    metrics.registry.register(OverheadCollector(tracker))

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.triton = triton or TritonClient(settings.triton_grpc_url, settings.request_timeout_s)
        tracker.start(app.state.triton, settings.triton_metrics_url)
        yield
        await tracker.stop()
        await app.state.triton.close()

    app = FastAPI(
        title="Hybrid encoder reconstruction service",
        version="0.1.0",
        summary="Qwen2.5-VL + DINOv2 fusion conditioning LTX-Video, served by Triton (experiment E-P2.6).",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.in_flight = 0
    install_error_handlers(app)

    @app.middleware("http")
    async def reject_oversized_bodies(request: Request, call_next):
        """Refuse an upload whose declared size is over the limit before reading it."""
        length = request.headers.get("content-length")
        # Multipart framing adds a little around the file itself.
        if length and length.isdigit() and int(length) > settings.max_upload_bytes + 64 * 1024:
            return error_response(
                413, "file_too_large", f"the request has {length} bytes; the limit is {settings.max_upload_bytes}"
            )
        return await call_next(request)

    async def read_media(file: UploadFile, timer: Timer) -> tuple[DecodedMedia, bytes]:
        since = time.perf_counter()
        data = await file.read(settings.max_upload_bytes + 1)
        try:
            media = await run_in_threadpool(decode_media, data, settings.media_limits)
        except MediaError as exc:
            metrics.rejected.labels("bad_media").inc()
            raise ApiError(exc.status, exc.code, exc.message) from None
        timer.add("decode", since)
        return media, data

    async def run_ensemble(model: str, inputs: dict[str, np.ndarray], output: str, timer: Timer) -> np.ndarray:
        if app.state.in_flight >= settings.max_in_flight:
            metrics.rejected.labels("overloaded").inc()
            raise ApiError(
                429,
                "overloaded",
                f"{settings.max_in_flight} requests are in flight; retry later",
                {"Retry-After": str(settings.retry_after_s)},
            )
        app.state.in_flight += 1
        metrics.in_flight.inc()
        since = time.perf_counter()
        try:
            result = await app.state.triton.infer(model, inputs, output)
            metrics.observe_triton(model, time.perf_counter() - since)
            return result
        finally:
            app.state.in_flight -= 1
            metrics.in_flight.dec()
            timer.add("triton", since)

    def bad_parameter(message: str) -> ApiError:
        metrics.rejected.labels("bad_parameter").inc()
        return ApiError(400, "invalid_parameter", message)

    @app.middleware("http")
    async def measure(request: Request, call_next):
        endpoint = request.url.path.strip("/")
        if endpoint not in ("reconstruct", "encode") or request.method != "POST":
            return await call_next(request)
        start = time.perf_counter()
        response = await call_next(request)
        elapsed = time.perf_counter() - start
        pipeline = request.query_params.get("pipeline", "hybrid")
        metrics.observe(endpoint, pipeline, response.status_code, elapsed)
        if response.status_code == 200:
            tracker.latencies.add(endpoint, pipeline, elapsed)
        return response

    @app.post(
        "/reconstruct",
        summary="Reconstruct an image or short video through a pipeline",
        responses={
            200: {"content": {t: {} for t in OUTPUT_FORMATS.values()}},
            400: {},
            413: {},
            422: {},
            429: {},
            503: {},
        },
    )
    async def reconstruct(
        file: Annotated[UploadFile, File(description="PNG, JPEG, WebP image; animated GIF/WebP or MP4 video")],
        pipeline: Annotated[Pipeline, Query(description="hybrid, vlm (baseline) or spatial (baseline)")] = (
            Pipeline.hybrid
        ),
        frames: Annotated[
            int | None,
            Query(description="frames out, 8k+1; default 1 for an image, the input's count rounded up for a video"),
        ] = None,  # noqa: E501
        steps: Annotated[int | None, Query(ge=1, description="denoising steps; default from the profile")] = None,
        seed: Annotated[int, Query(ge=0, le=2**63 - 1)] = 0,
        format: Annotated[OutputFormat | None, Query(description="png (one frame), webp, gif, mp4, npz")] = None,
    ) -> Response:
        timer = Timer()
        steps = profile.decoder.default_steps if steps is None else steps
        if steps > settings.max_steps:
            raise bad_parameter(f"steps: at most {settings.max_steps}, got {steps}")
        if frames is not None and not valid_frame_count(frames):
            raise bad_parameter(f"frames: LTX-Video decodes 8k+1 frames (1, 9, 17, …), got {frames}")
        if frames is not None and frames > settings.max_output_frames:
            raise bad_parameter(f"frames: at most {settings.max_output_frames}, got {frames}")
        if frames is not None and frames > 1 and format is OutputFormat.png:
            raise bad_parameter("format: png holds one frame; ask for webp, gif, mp4 or npz")
        media, data = await read_media(file, timer)
        if frames is None:
            frames = min(round_up_frames(media.num_frames), settings.max_output_frames)
        fmt = (format or (OutputFormat.png if frames == 1 else OutputFormat.webp)).value
        if frames > 1 and fmt in SINGLE_FRAME_FORMATS:
            raise bad_parameter("format: png holds one frame; ask for webp, gif, mp4 or npz")
        video = await run_ensemble(
            ensemble_name("reconstruct", pipeline.value),
            {
                "MEDIA": np.frombuffer(data, dtype=np.uint8)[None],
                "NUM_FRAMES": np.array([[frames]], dtype=np.int32),
                "STEPS": np.array([[steps]], dtype=np.int32),
                "SEED": np.array([[seed]], dtype=np.int64),
            },
            VIDEO,
            timer,
        )
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

    @app.post("/encode", summary="The 64×4096 conditioning a pipeline gives LTX-Video, as a .npy array")
    async def encode(
        file: Annotated[UploadFile, File(description="PNG, JPEG, WebP image; animated GIF/WebP or MP4 video")],
        pipeline: Annotated[Pipeline, Query()] = Pipeline.hybrid,
    ) -> Response:
        timer = Timer()
        _, data = await read_media(file, timer)
        conditioning = await run_ensemble(
            ensemble_name("encode", pipeline.value),
            {"MEDIA": np.frombuffer(data, dtype=np.uint8)[None]},
            CONDITIONING,
            timer,
        )
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

    @app.get("/healthz", summary="The gateway process is alive")
    async def healthz() -> dict[str, str]:
        return {"status": "alive"}

    @app.get("/readyz", summary="At least one Triton replica serves every ensemble; each replica's readiness")
    async def readyz() -> JSONResponse:
        report = await app.state.triton.readiness_report()
        return JSONResponse(report.as_dict(), status_code=200 if report.ready else 503)

    @app.get("/v1/overhead", summary="E-P2.6: hybrid-over-vlm latency overhead, per pipeline and per stage")
    async def overhead_report() -> dict:
        return tracker.report()

    @app.get("/metrics", summary="Prometheus metrics")
    async def prometheus_metrics() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app
