"""Synthetic media made in-process (nothing is downloaded): the one generator of inputs for the tests, the benchmarks
and the load test. Smooth gradients plus seeded noise — pure noise would be unrealistically hard for PNG and the
encoders, a flat image unrealistically easy — so the same seed gives the same bytes everywhere."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from PIL import Image

from hybrid.media import encode_frames


def frames(count: int = 1, height: int = 120, width: int = 160, seed: int = 0) -> np.ndarray:
    """Smooth random frames (gradients + noise) as [F, H, W, 3] uint8."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    out = []
    for i in range(count):
        base = np.stack([(x + 7 * i) % 256, (y + 3 * i) % 256, (x + y) % 256], axis=-1).astype(np.float32)
        out.append(np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8))
    return np.stack(out)


def png(height: int = 120, width: int = 160, seed: int = 0) -> bytes:
    return encode_frames(frames(1, height, width, seed), "png")


PNGS_PER_SEED = 100_003
"""`pngs` draws image i of seed s from frame seed s × PNGS_PER_SEED + i, so two calls with different seeds never
share an image (a cache test relies on it) as long as each asks for fewer than this many."""


def pngs(count: int, size: int, seed: int) -> list[bytes]:
    """`count` different size×size PNGs, none shared with another seed's: a benchmark's or load test's inputs."""
    if count > PNGS_PER_SEED:
        raise ValueError(f"at most {PNGS_PER_SEED} images per seed, asked for {count}")
    return [png(size, size, seed * PNGS_PER_SEED + i) for i in range(count)]


def jpeg(seed: int = 0) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(frames(1, seed=seed)[0]).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def gif(count: int = 4, seed: int = 0) -> bytes:
    return encode_frames(frames(count, 64, 64, seed), "gif")


def animated_webp(count: int = 3, seed: int = 0) -> bytes:
    return encode_frames(frames(count, 64, 64, seed), "webp")


def mp4(count: int = 6, seed: int = 0) -> bytes:
    return encode_frames(frames(count, 64, 96, seed), "mp4")


def png_bomb(side: int = 20000) -> bytes:
    """A valid side×side 1-bit PNG of ~50 kB that would decode to side² pixels."""

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    row = b"\x00" * (1 + (side + 7) // 8)
    compressor = zlib.compressobj(9)
    data = b"".join(compressor.compress(row) for _ in range(side)) + compressor.flush()
    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data) + chunk(b"IEND", b"")


def truncated_png() -> bytes:
    data = png()
    return data[: len(data) // 2]
