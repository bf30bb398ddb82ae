"""Decoding uploads and encoding replies (hybrid.media), including every way an upload can be bad."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from hybrid.media import MediaError, MediaLimits, decode_media, encode_frames
from tests import media_samples

LIMITS = MediaLimits(max_bytes=4 * 1024 * 1024, max_pixels=2048 * 2048, max_frames=16)


@pytest.mark.parametrize(
    ("data", "kind", "count"),
    [
        (media_samples.png(), "image", 1),
        (media_samples.jpeg(), "image", 1),
        (encode_frames(media_samples.frames(1), "webp"), "image", 1),
        (media_samples.gif(4), "video", 4),
        (media_samples.animated_webp(3), "video", 3),
        (media_samples.mp4(6), "video", 6),
    ],
    ids=["png", "jpeg", "webp", "gif", "animated-webp", "mp4"],
)
def test_decode_formats(data: bytes, kind: str, count: int) -> None:
    media = decode_media(data, LIMITS)
    assert media.kind == kind and media.num_frames == count
    assert media.frames.dtype == np.uint8 and media.frames.ndim == 4 and media.frames.shape[-1] == 3


def test_png_round_trip_is_lossless() -> None:
    frames = media_samples.frames(1)
    np.testing.assert_array_equal(decode_media(encode_frames(frames, "png"), LIMITS).frames, frames)


@pytest.mark.parametrize(
    ("data", "code", "status"),
    [
        (b"", "empty_file", 400),
        (b"definitely not an image" * 10, "unsupported_media", 422),
        (media_samples.truncated_png(), "corrupt_media", 422),
        (media_samples.png_bomb(), "too_many_pixels", 413),
        (media_samples.png_bomb(3000), "too_many_pixels", 413),  # under Pillow's own bomb limit, over ours
        (media_samples.gif(17), "too_many_frames", 422),
        (media_samples.mp4(17), "too_many_frames", 422),
        (b"\x00\x00\x00\x18ftypmp42" + b"\x00" * 64, "corrupt_media", 422),
    ],
    ids=["empty", "garbage", "truncated", "bomb", "over-limit", "gif-frames", "mp4-frames", "broken-mp4"],
)
def test_bad_media(data: bytes, code: str, status: int) -> None:
    with pytest.raises(MediaError) as info:
        decode_media(data, LIMITS)
    assert info.value.code == code and info.value.status == status
    assert info.value.message


def test_upload_size_limit() -> None:
    with pytest.raises(MediaError) as info:
        decode_media(media_samples.png(), MediaLimits(max_bytes=100))
    assert info.value.status == 413


def test_unsupported_image_format() -> None:
    buffer = io.BytesIO()
    Image.fromarray(media_samples.frames(1)[0]).save(buffer, format="BMP")
    with pytest.raises(MediaError, match="BMP"):
        decode_media(buffer.getvalue(), LIMITS)


@pytest.mark.parametrize("fmt", ["webp", "gif", "mp4", "npz"])
def test_encode_animations(fmt: str) -> None:
    frames = media_samples.frames(9, 64, 64)
    data = encode_frames(frames, fmt)
    if fmt == "npz":
        np.testing.assert_array_equal(np.load(io.BytesIO(data))["frames"], frames)
    else:
        assert decode_media(data, LIMITS).num_frames == 9


def test_png_holds_one_frame() -> None:
    with pytest.raises(ValueError, match="one frame"):
        encode_frames(media_samples.frames(2), "png")
