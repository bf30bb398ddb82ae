"""The gateway as the evaluation sees it: `POST /reconstruct` with the raw frames back (`format=npz`), and what the
service says about itself (readiness, profile, device)."""

from __future__ import annotations

import io
from dataclasses import dataclass

import httpx
import numpy as np

from evaluation.datasets import Sample


class GatewayUnavailable(RuntimeError):
    """The gateway cannot be reached or is not ready: nothing can be evaluated."""


@dataclass(frozen=True)
class Reply:
    """One reconstruction, or why there is none. `status` is the HTTP status, None when no reply came."""

    status: int | None
    frames: np.ndarray | None = None  # [F, H, W, 3] uint8
    error: str | None = None


class Gateway:
    def __init__(self, url: str, timeout_s: float) -> None:
        self.url = url.rstrip("/")
        self._client = httpx.Client(base_url=self.url, timeout=timeout_s)

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> Gateway:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def check_ready(self) -> dict:
        """/readyz's body; raises GatewayUnavailable, naming the URL and the cause, when it is not 200."""
        try:
            reply = self._client.get("/readyz", timeout=10)
        except httpx.HTTPError as exc:
            raise GatewayUnavailable(f"cannot reach the gateway at {self.url}: {exc}") from None
        if reply.status_code != 200:
            raise GatewayUnavailable(f"the gateway at {self.url} is not ready ({reply.status_code}): {reply.text}")
        return reply.json()

    def service_info(self) -> dict:
        """Profile and device as the gateway reports them on /v1/overhead (empty when it does not)."""
        try:
            body = self._client.get("/v1/overhead", timeout=10).json()
        except (httpx.HTTPError, ValueError):
            return {}
        return {k: body[k] for k in ("profile", "device") if k in body}

    def reconstruct(self, sample: Sample, pipeline: str, params: dict[str, int]) -> Reply:
        """Send one input through `pipeline`; a refusal or a broken connection is a Reply, never an exception."""
        try:
            reply = self._client.post(
                "/reconstruct",
                params={"pipeline": pipeline, "format": "npz", **params},
                files={"file": (sample.filename, sample.data)},
            )
        except httpx.HTTPError as exc:
            return Reply(None, error=f"{type(exc).__name__}: {exc}")
        if reply.status_code != 200:
            return Reply(reply.status_code, error=_error_text(reply))
        try:
            frames = np.load(io.BytesIO(reply.content))["frames"]
        except (OSError, ValueError, KeyError) as exc:
            return Reply(reply.status_code, error=f"the reply is not an npz with 'frames': {exc}")
        if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
            return Reply(reply.status_code, error=f"unexpected frames {frames.shape} {frames.dtype}")
        return Reply(reply.status_code, frames=frames)


def _error_text(reply: httpx.Response) -> str:
    try:
        error = reply.json()["error"]
        return f"{error['code']}: {error['message']}"
    except (ValueError, KeyError, TypeError):
        return reply.text[:500]
