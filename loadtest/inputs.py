"""Deterministic request images, generated in-process.

Every user posts from the same small set so that hybrid and vlm see identical inputs and two runs of the
load test send byte-identical bodies: latency differences then come from the pipelines, not the data.
Nothing is downloaded, so the load test works on an air-gapped lab machine.
"""

from __future__ import annotations

import io
from functools import lru_cache

import numpy as np
from PIL import Image


def make_image(index: int, size: int = 224) -> np.ndarray:
    """An RGB ``uint8`` image of ``size`` x ``size``: smooth colour fields plus seeded noise.

    Pure noise would be an unrealistically hard input for PNG decoding and for the vision encoders, and a
    flat image an unrealistically easy one; low-frequency structure with a little texture sits between.
    """
    rng = np.random.default_rng(1000 + index)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    channels = []
    for _ in range(3):
        fx, fy = rng.uniform(0.5, 3.0, size=2)
        phase = rng.uniform(0.0, 2 * np.pi)
        channels.append(0.5 + 0.4 * np.sin(2 * np.pi * (fx * xx + fy * yy) + phase))
    img = np.stack(channels, axis=-1) + rng.normal(0.0, 0.05, size=(size, size, 3))
    return (np.clip(img, 0.0, 1.0) * 255.0).round().astype(np.uint8)


@lru_cache(maxsize=32)
def png_bytes(index: int, size: int = 224) -> bytes:
    """PNG encoding of :func:`make_image`; cached so that users do not spend CPU the gateway needs."""
    buf = io.BytesIO()
    Image.fromarray(make_image(index, size)).save(buf, format="PNG")
    return buf.getvalue()


def input_set(count: int = 3, size: int = 224) -> list[tuple[str, bytes]]:
    """``count`` named PNG inputs, e.g. ``[("input-0.png", b"..."), ...]``."""
    return [(f"input-{i}.png", png_bytes(i, size)) for i in range(count)]
