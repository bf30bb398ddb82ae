"""The gateway's per-app state and the FastAPI dependencies of its routes.

An inference request meets them in this order: the bearer token, Triton's availability, admission (the in-flight
limit) — all before a byte of the upload is read or decoded, so a refused request costs microseconds whatever it
uploads. Decoding then runs in a small pool of threads (`HYBRID_DECODE_WORKERS`): each decode holds about one
full-size frame, so the pool bounds the gateway's decoding memory however many requests are admitted.
"""

from __future__ import annotations

import asyncio
import contextvars
import ctypes
import ctypes.util
import functools
import hmac
import logging
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Annotated, Protocol

import numpy as np
from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from hybrid.contracts import IMAGE_SIZE
from hybrid.media import MediaError, MediaLimits, decode_media
from hybrid.profiles import Profile
from service.errors import ApiError
from service.metrics import GatewayMetrics
from service.overhead import OverheadTracker
from service.settings import Settings
from service.triton_client import TritonClient
from service.uploads import UploadLimits, read_upload

log = logging.getLogger(__name__)

bearer_scheme = HTTPBearer(auto_error=False, description="HYBRID_API_TOKEN, when the service sets one")


class TritonState(Protocol):
    """What the routes need to know of a supervised Triton (service.embedded_triton.TritonSupervisor)."""

    @property
    def ready(self) -> bool: ...

    @property
    def failed(self) -> bool: ...

    @property
    def restarts(self) -> int: ...

    def retry_after_s(self) -> int: ...

    def problem(self) -> str | None: ...


@dataclass(frozen=True)
class Upload:
    """A validated upload, decoded: the frames Triton gets, [F, 224, 224, 3] uint8 (the `FRAMES` contract)."""

    frames: np.ndarray
    decoded_pixels: int

    @property
    def num_frames(self) -> int:
        return int(self.frames.shape[0])


class Admission:
    """The in-flight limit as a non-blocking semaphore: a request past it is refused at once with 429."""

    def __init__(self, limit: int, retry_after_s: int, metrics: GatewayMetrics) -> None:
        self.limit = limit
        self.retry_after_s = retry_after_s
        self.metrics = metrics
        self._slots = asyncio.Semaphore(limit)

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        if self._slots.locked():
            self.metrics.rejected.labels("overloaded").inc()
            raise ApiError(
                429,
                "overloaded",
                f"{self.limit} requests are in flight; retry later",
                {"Retry-After": str(self.retry_after_s)},
            )
        await self._slots.acquire()  # returns at once: a slot is free
        try:
            with self.metrics.in_flight.track_inprogress():
                yield
        finally:
            self._slots.release()


class Decoder:
    """Validates and decodes uploads in a bounded thread pool (see the module docstring)."""

    def __init__(self, limits: MediaLimits, workers: int, metrics: GatewayMetrics) -> None:
        self.limits = limits
        self.metrics = metrics
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="decode")

    async def __call__(self, data: bytes) -> Upload:
        context = contextvars.copy_context()  # the request id, for the pool thread's log lines
        call = functools.partial(context.run, prepare_upload, data, self.limits)
        try:
            return await asyncio.get_running_loop().run_in_executor(self.pool, call)
        except MediaError as exc:
            self.metrics.rejected.labels("bad_media").inc()
            raise ApiError(exc.status, exc.code, exc.message) from None

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)


class TritonConnection:
    """The Triton client the routes and the E-P2.6 tracker share, renewed after the supervisor restarted Triton:
    the old channel would wait out gRPC's reconnect backoff (up to two minutes) before it noticed the new server,
    answering 503 meanwhile although /readyz, asked over other channels, said ready."""

    def __init__(
        self,
        factory: Callable[[], TritonClient],
        state: TritonState | None,
        tracker: OverheadTracker,
        metrics_url: str,
    ) -> None:
        self.factory = factory
        self.state = state
        self.tracker = tracker
        self.metrics_url = metrics_url
        self._client: TritonClient | None = None
        self._restarts_seen = 0

    def open(self) -> None:
        self._client = self.factory()
        self.tracker.start(self._client, self.metrics_url)

    async def client(self) -> TritonClient:
        assert self._client is not None, "open() runs in the app's lifespan"
        state = self.state
        if state is not None and state.ready and state.restarts != self._restarts_seen:
            self._restarts_seen = state.restarts
            old, self._client = self._client, self.factory()
            log.info("tritonserver restarted: a new Triton client")
            await self.tracker.stop()
            self.tracker.start(self._client, self.metrics_url)
            await old.close()
        return self._client

    async def close(self) -> None:
        await self.tracker.stop()
        if self._client is not None:
            await self._client.close()


@dataclass
class Gateway:
    """Everything the routes share, one per app (tests build several apps in one process)."""

    settings: Settings
    profile: Profile
    metrics: GatewayMetrics
    admission: Admission
    decoder: Decoder
    triton: TritonConnection
    triton_state: TritonState | None = None  # set when the gateway supervises its own tritonserver

    @property
    def upload_limits(self) -> UploadLimits:
        s = self.settings
        return UploadLimits(s.max_upload_bytes, s.client_timeout_s, s.upload_timeout_s)


def get_gateway(request: Request) -> Gateway:
    return request.app.state.gateway


GatewayDep = Annotated[Gateway, Depends(get_gateway)]


async def _check_token(request: Request, gateway: Gateway) -> None:
    token = gateway.settings.api_token
    if token is None:
        return
    credentials: HTTPAuthorizationCredentials | None = await bearer_scheme(request)
    offered = credentials.credentials.encode() if credentials else b""
    if not hmac.compare_digest(offered, token.get_secret_value().encode()):
        raise ApiError(401, "unauthorized", "a valid bearer token is required", {"WWW-Authenticate": "Bearer"})


async def require_token(request: Request, gateway: GatewayDep) -> None:
    """`Authorization: Bearer <HYBRID_API_TOKEN>` (constant-time compare); a no-op when no token is set."""
    await _check_token(request, gateway)


async def require_token_for_probes(request: Request, gateway: GatewayDep) -> None:
    if gateway.settings.auth_probes:
        await _check_token(request, gateway)


async def require_token_for_metrics(request: Request, gateway: GatewayDep) -> None:
    if gateway.settings.auth_metrics:
        await _check_token(request, gateway)


async def require_triton(gateway: GatewayDep) -> None:
    """503 at once, before the upload is read, while a supervised Triton is down or restarting."""
    state = gateway.triton_state
    if state is not None and not state.ready:
        raise ApiError(
            503,
            "triton_restarting",
            state.problem() or "Triton is restarting",
            {"Retry-After": str(state.retry_after_s())},
        )


async def admit(gateway: GatewayDep) -> AsyncIterator[None]:
    """One of HYBRID_MAX_IN_FLIGHT slots, held until the reply is sent; 429 when none is free."""
    async with gateway.admission.slot():
        yield


async def receive_upload(request: Request, gateway: GatewayDep) -> Upload:
    """Read the multipart upload (capped, timed) and decode it in the pool. Called by the routes after their
    parameters are checked, so a bad parameter never costs an upload."""
    data = await read_upload(request, gateway.upload_limits)
    return await gateway.decoder(data)


LARGE_DECODE_PIXELS = 16 * 448 * 448
"""Past this many decoded pixels the freed full-size frames are handed back to the system after the decode."""


def prepare_upload(data: bytes, limits: MediaLimits) -> Upload:
    """Decode once (bounded, every frame resized to the encoders' size as it comes): Triton gets these frames
    and decodes nothing, so an upload costs one decode, wherever it was expensive."""
    try:
        media = decode_media(data, limits, size=IMAGE_SIZE)
    except MediaError:
        _release_heap()  # a refused bomb may have decoded frames before the limit caught it
        raise
    if media.decoded_pixels > LARGE_DECODE_PIXELS:
        _release_heap()
    return Upload(np.ascontiguousarray(media.frames), media.decoded_pixels)


@functools.cache
def _libc() -> ctypes.CDLL | None:
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None


def _release_heap() -> None:
    """Hand freed memory back to the system after a large decode: glibc keeps freed full-size frames in its heap
    arenas otherwise, and a burst of large uploads would leave the gateway gigabytes bigger for good."""
    libc = _libc()
    if libc is not None and hasattr(libc, "malloc_trim"):
        libc.malloc_trim(0)
