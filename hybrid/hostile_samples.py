"""A hostile-media corpus, generated in-process (nothing is downloaded): decompression bombs, frames that grow past
their screen or change size, huge canvases, long and huge videos, truncations and wrong types. Each entry says
what the service must answer, so the same corpus drives the unit tests of `hybrid.media` and the stack tests.

Each file is small (at most a few hundred kB) however many pixels it describes.
"""

from __future__ import annotations

import fractions
import io
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass

from PIL import Image

from hybrid import samples


@dataclass(frozen=True)
class Hostile:
    name: str
    make: Callable[[], bytes]
    status: int  # what the gateway answers
    code: str | None  # the error code, None for 200


def _gif_parts(image: Image.Image) -> tuple[bytes, bytes]:
    """A one-frame GIF split into its header (with the global colour table) and its frame blocks."""
    buffer = io.BytesIO()
    image.save(buffer, format="GIF")
    data = buffer.getvalue()
    flags = data[10]
    header_end = 13 + (3 << ((flags & 7) + 1) if flags & 0x80 else 0)
    return data[:header_end], data[header_end:-1]


def _palette_image(width: int, height: int, color: int = 1) -> Image.Image:
    image = Image.new("P", (width, height), color)
    image.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0, 0, 0, 255] + [0] * (256 * 3 - 12))
    return image


def gif_bomb(frames: int = 16, side: int = 4096) -> bytes:
    """`frames` frames of side×side: ~15 kB per frame of LZW for 16 M pixels (within every limit at 16×4096²)."""
    header, frame = _gif_parts(_palette_image(side, side))
    return header + frame * frames + b";"


def gif_growing(second: tuple[int, int]) -> bytes:
    """A 16×16 screen whose second frame is `second` large (GIF lets a frame reach past its screen)."""
    header, first = _gif_parts(_palette_image(16, 16))
    _, big = _gif_parts(_palette_image(*second, color=2))
    return header + first + big + b";"


def gif_many_frames(count: int = 200_000) -> bytes:
    """`count` 1×1 frames in ~3 MB: a frame count only the block headers reveal."""
    header, frame = _gif_parts(_palette_image(1, 1))
    return header + frame * count + b";"


def gif_cut_after_second_descriptor() -> bytes:
    data = samples.gif(4)
    first = data.index(b"\x2c")  # image descriptors start with ','
    second = data.index(b"\x2c", first + 20)
    return data[: second + 10]


def _png_chunk(tag: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + tag + payload + struct.pack(">I", zlib.crc32(tag + payload) & 0xFFFFFFFF)


def png_short_ihdr() -> bytes:
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", b"\x00\x00\x00\x10\x00\x00") + _png_chunk(b"IEND", b"")


def png_huge_ztxt() -> bytes:
    """A valid image with a zTXt chunk that inflates to 64 MB (Pillow refuses text over 1 MB)."""
    data = samples.png()
    text = b"comment\x00\x00" + zlib.compress(b"\x00" * (64 << 20), 9)
    return data[:33] + _png_chunk(b"zTXt", text) + data[33:]


def png_tall(height: int = 20_000_000) -> bytes:
    """A 1×height PNG: few bytes, more pixels than the limit in one dimension."""
    header = struct.pack(">IIBBBBB", 1, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IEND", b"")


def apng_frame_outside_canvas() -> bytes:
    """An APNG whose second frame claims to reach past the canvas."""
    frames = [Image.new("RGB", (16, 16), (i * 40, 0, 0)) for i in range(2)]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="PNG", save_all=True, append_images=frames[1:])
    data = bytearray(buffer.getvalue())
    second_fctl = data.index(b"fcTL", data.index(b"fcTL") + 4)
    data[second_fctl + 8 : second_fctl + 16] = struct.pack(">II", 5000, 5000)  # width, height
    return bytes(data)


def jpeg_truncated() -> bytes:
    data = samples.jpeg()
    return data[: len(data) // 3]


def jpeg_with_size(width: int, height: int) -> bytes:
    """A small JPEG whose frame header (SOF0) claims width×height."""
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (10, 200, 30)).save(buffer, format="JPEG", quality=50)
    data = buffer.getvalue()
    sof = data.index(b"\xff\xc0")
    return data[: sof + 5] + struct.pack(">HH", height, width) + data[sof + 9 :]


def bmp_bad_depth() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buffer, format="BMP")
    data = bytearray(buffer.getvalue())
    data[28:30] = struct.pack("<H", 7)  # bits per pixel
    return bytes(data)


def webp_animation(width: int, height: int) -> bytes:
    """An animated WebP header claiming a width×height canvas, followed by a frame of garbage."""
    canvas = (width - 1).to_bytes(3, "little") + (height - 1).to_bytes(3, "little")
    payload = b"VP8X" + struct.pack("<I", 10) + b"\x02" + b"\x00" * 3 + canvas
    payload += b"ANMF" + struct.pack("<I", 64) + b"\x13" * 64
    return b"RIFF" + struct.pack("<I", 4 + len(payload)) + b"WEBP" + payload


def mp4_unknown_codec() -> bytes:
    """An MP4 whose sample entry names no codec FFmpeg knows: its stream has no codec context."""
    data = samples.mp4(6)
    entry = data.index(b"stsd") + 16
    return data[:entry] + b"zzzz" + data[entry + 4 :]


def mp4_truncated() -> bytes:
    data = samples.mp4(6)
    return data[: len(data) // 2]


def mkv_mjpeg(sizes: list[tuple[int, int]]) -> bytes:
    """A Matroska file of MJPEG frames, each its own size (the stream header claims the first's): uniform colour,
    so even a 5000×5000 frame is a few hundred kB."""
    import av

    buffer = io.BytesIO()
    with av.open(buffer, "w", format="matroska") as container:
        stream = container.add_stream("mjpeg", rate=8)
        stream.width, stream.height = sizes[0]
        stream.pix_fmt = "yuvj420p"
        for index, size in enumerate(sizes):
            jpeg = io.BytesIO()
            Image.new("RGB", size, (10, 200 - index % 100, 30)).save(jpeg, format="JPEG", quality=50)
            packet = av.Packet(jpeg.getvalue())
            packet.stream, packet.pts, packet.dts = stream, index, index
            packet.time_base = fractions.Fraction(1, 8)
            container.mux(packet)
    return buffer.getvalue()


CORPUS: tuple[Hostile, ...] = (
    Hostile("empty", lambda: b"", 400, "empty_file"),
    Hostile("text", lambda: b"hello, this is not an image\n" * 20, 422, "unsupported_media"),
    Hostile("pdf", lambda: b"%PDF-1.7\n" + b"0" * 200, 422, "unsupported_media"),
    Hostile("bmp-bad-depth", bmp_bad_depth, 422, "unsupported_media"),
    Hostile("png-bomb-20000", lambda: samples.png_bomb(20000), 413, "too_many_pixels"),
    Hostile("png-bomb-5000", lambda: samples.png_bomb(5000), 413, "too_many_pixels"),
    Hostile("png-1x20M", png_tall, 413, "too_many_pixels"),
    Hostile("png-short-ihdr", png_short_ihdr, 422, "corrupt_media"),
    Hostile("png-huge-ztxt", png_huge_ztxt, 422, "corrupt_media"),
    Hostile("png-truncated", samples.truncated_png, 422, "corrupt_media"),
    Hostile("apng-frame-outside-canvas", apng_frame_outside_canvas, 422, "corrupt_media"),
    Hostile("jpeg-truncated", jpeg_truncated, 422, "corrupt_media"),
    Hostile("jpeg-claims-60000x60000", lambda: jpeg_with_size(60000, 60000), 413, "too_many_pixels"),
    Hostile("webp-canvas-16Mx16M", lambda: webp_animation(1 << 24, 1 << 24), 413, "too_many_pixels"),
    Hostile("webp-garbage-frame", lambda: webp_animation(16, 16), 422, "corrupt_media"),
    Hostile("gif-16x4096x4096", gif_bomb, 200, None),
    Hostile("gif-17-frames-4096", lambda: gif_bomb(17), 422, "too_many_frames"),
    Hostile("gif-frame-8000-past-16-screen", lambda: gif_growing((8000, 8000)), 413, "too_many_pixels"),
    Hostile("gif-frame-1000-past-16-screen", lambda: gif_growing((1000, 1000)), 200, None),
    Hostile("gif-200000-frames", gif_many_frames, 422, "too_many_frames"),
    Hostile("gif-cut-after-second-descriptor", gif_cut_after_second_descriptor, 422, "corrupt_media"),
    Hostile("mp4-17-frames", lambda: samples.mp4(17), 422, "too_many_frames"),
    Hostile("mp4-unknown-codec", mp4_unknown_codec, 422, "unsupported_media"),
    Hostile("mp4-truncated", mp4_truncated, 422, "corrupt_media"),
    Hostile("mkv-mjpeg-64-then-1000", lambda: mkv_mjpeg([(64, 64), (1000, 1000), (64, 64)]), 200, None),
    Hostile("mkv-mjpeg-frame-5000", lambda: mkv_mjpeg([(64, 64), (5000, 5000)]), 413, "too_many_pixels"),
    Hostile("mkv-mjpeg-40-frames", lambda: mkv_mjpeg([(64, 64)] * 40), 422, "too_many_frames"),
)
