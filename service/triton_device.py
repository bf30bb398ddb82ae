"""What Triton runs on, read from Triton's own metrics endpoint rather than from a free-text setting.

Triton exports `nv_gpu_*` gauges (labelled `gpu_uuid`) for every GPU it can use, and none without one, in which
case it exports only `nv_cpu_*`. The models themselves take the GPU whenever CUDA is present
(`hybrid.runtime.resolve_device("auto")`), so the GPUs Triton sees are the devices the figures come from.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import httpx

_GPU_SERIES = re.compile(r'^nv_gpu_[a-z_]+\{[^}]*gpu_uuid="(?P<uuid>[^"]+)"', re.MULTILINE)


@dataclass(frozen=True)
class Device:
    kind: str  # "gpu", "cpu", or "unknown" when Triton's metrics could not be read
    gpus: tuple[str, ...] = ()  # the GPUs' UUIDs as Triton reports them
    source: str = ""

    def __str__(self) -> str:
        return f"gpu ({', '.join(self.gpus)})" if self.gpus else self.kind


UNKNOWN = Device("unknown", source="Triton's metrics endpoint not read yet (HYBRID_TRITON_METRICS_URL)")


def parse_device(metrics_text: str, source: str) -> Device:
    """The device Triton's Prometheus text exposition describes: its GPUs by UUID, else the CPU."""
    gpus = tuple(dict.fromkeys(match.group("uuid") for match in _GPU_SERIES.finditer(metrics_text)))
    return Device("gpu" if gpus else "cpu", gpus, source)


async def read_device(metrics_url: str, timeout_s: float = 5.0) -> Device:
    """Ask Triton's metrics endpoint (`http://host:8002/metrics`); raises httpx.HTTPError when it cannot."""
    async with httpx.AsyncClient(timeout=timeout_s) as client:
        reply = await client.get(metrics_url)
        reply.raise_for_status()
    return parse_device(reply.text, f"Triton metrics {metrics_url}")
