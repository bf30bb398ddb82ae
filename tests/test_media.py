"""Decoding uploads and encoding replies (hybrid.media), including every way an upload can be bad."""

from __future__ import annotations

import io
import re

import numpy as np
import pytest
from PIL import Image

from hybrid import hostile_samples, samples
from hybrid.contracts import IMAGE_SIZE
from hybrid.media import MediaError, MediaLimits, decode_media, encode_frames, gif_layout
from hybrid.preprocess import resize_frames

LIMITS = MediaLimits(max_bytes=4 * 1024 * 1024, max_pixels=2048 * 2048, max_frames=16)


@pytest.mark.parametrize(
    ("data", "kind", "count"),
    [
        (samples.png(), "image", 1),
        (samples.jpeg(), "image", 1),
        (encode_frames(samples.frames(1), "webp"), "image", 1),
        (samples.gif(4), "video", 4),
        (samples.animated_webp(3), "video", 3),
        (samples.mp4(6), "video", 6),
    ],
    ids=["png", "jpeg", "webp", "gif", "animated-webp", "mp4"],
)
def test_decode_formats(data: bytes, kind: str, count: int) -> None:
    media = decode_media(data, LIMITS)
    assert media.kind == kind and media.num_frames == count
    assert media.frames.dtype == np.uint8 and media.frames.ndim == 4 and media.frames.shape[-1] == 3


def test_png_round_trip_is_lossless() -> None:
    frames = samples.frames(1)
    np.testing.assert_array_equal(decode_media(encode_frames(frames, "png"), LIMITS).frames, frames)


@pytest.mark.parametrize(
    ("data", "code", "status"),
    [
        (b"", "empty_file", 400),
        (b"definitely not an image" * 10, "unsupported_media", 422),
        (samples.truncated_png(), "corrupt_media", 422),
        (samples.png_bomb(), "too_many_pixels", 413),
        (samples.png_bomb(3000), "too_many_pixels", 413),  # under Pillow's own bomb limit, over ours
        (samples.gif(17), "too_many_frames", 422),
        (samples.mp4(17), "too_many_frames", 422),
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
        decode_media(samples.png(), MediaLimits(max_bytes=100))
    assert info.value.status == 413


def test_unsupported_image_format() -> None:
    buffer = io.BytesIO()
    Image.fromarray(samples.frames(1)[0]).save(buffer, format="BMP")
    with pytest.raises(MediaError, match="BMP"):
        decode_media(buffer.getvalue(), LIMITS)


@pytest.mark.parametrize("fmt", ["webp", "gif", "mp4", "npz"])
def test_encode_animations(fmt: str) -> None:
    frames = samples.frames(9, 64, 64)
    data = encode_frames(frames, fmt)
    if fmt == "npz":
        np.testing.assert_array_equal(np.load(io.BytesIO(data))["frames"], frames)
    else:
        assert decode_media(data, LIMITS).num_frames == 9


def test_png_holds_one_frame() -> None:
    with pytest.raises(ValueError, match="one frame"):
        encode_frames(samples.frames(2), "png")


# Bounded decoding: the hostile corpus, header-first checks, every frame checked, resizing as frames are decoded.


@pytest.mark.parametrize("entry", hostile_samples.CORPUS, ids=[h.name for h in hostile_samples.CORPUS])
def test_hostile_corpus_is_refused_by_name_or_decoded_small(entry: hostile_samples.Hostile) -> None:
    """Every file of the corpus is either refused with the status and code the gateway will answer, or decoded
    into frames at the encoders' size; nothing raises anything but MediaError."""
    data = entry.make()
    if entry.status == 200:
        media = decode_media(data, MediaLimits(), size=IMAGE_SIZE)
        assert media.frames.shape[1:] == (IMAGE_SIZE, IMAGE_SIZE, 3)
        return
    with pytest.raises(MediaError) as info:
        decode_media(data, MediaLimits(), size=IMAGE_SIZE)
    assert (info.value.status, info.value.code) == (entry.status, entry.code), info.value.message
    assert not re.search(r"object at 0x", info.value.message)  # no object reprs from a decoder


def test_gif_frames_are_checked_from_their_headers() -> None:
    """A later GIF frame larger than the screen is refused from its descriptor, before anything is decoded, and
    the descriptor scan stops once the frame limit is passed."""
    screen, frames = gif_layout(hostile_samples.gif_growing((8000, 8000)), max_frames=17)
    assert screen == (16, 16) and frames == [(16, 16), (8000, 8000)]
    _, many = gif_layout(hostile_samples.gif_many_frames(1000), max_frames=17)
    assert len(many) == 17


def test_total_pixel_budget_counts_every_frame() -> None:
    data = hostile_samples.gif_bomb(frames=4, side=1024)  # 4 M pixels over 4 frames, 1 M each
    assert decode_media(data, MediaLimits(max_total_pixels=4 * 1024 * 1024), size=IMAGE_SIZE).num_frames == 4
    with pytest.raises(MediaError) as info:
        decode_media(data, MediaLimits(max_total_pixels=3 * 1024 * 1024), size=IMAGE_SIZE)
    assert info.value.status == 413 and "over all its frames" in info.value.message


def test_frames_of_changing_size_need_a_size() -> None:
    """MJPEG frames may change size: decoded at the encoders' size they stack, at their own size they are a 422
    naming the problem (never a 500 from stacking)."""
    data = hostile_samples.mkv_mjpeg([(64, 64), (96, 80)])
    assert decode_media(data, LIMITS, size=IMAGE_SIZE).num_frames == 2
    with pytest.raises(MediaError, match="change size"):
        decode_media(data, LIMITS)


def test_resizing_while_decoding_matches_the_reference_preprocessing() -> None:
    """Frames resized as they are decoded are the frames the reference pipeline resizes after decoding: the served
    and in-process paths see the same pixels."""
    for data in (samples.png(300, 400), samples.gif(3), samples.mp4(3)):
        full = decode_media(data, LIMITS).frames
        np.testing.assert_array_equal(decode_media(data, LIMITS, size=IMAGE_SIZE).frames, resize_frames(full))


def _apng(frames: np.ndarray) -> bytes:
    images = [Image.fromarray(frame) for frame in frames]
    buffer = io.BytesIO()
    images[0].save(buffer, format="PNG", save_all=len(images) > 1, append_images=images[1:])
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("encoder", "count"), [("png", 1), *((encoder, n) for encoder in ("webp", "apng") for n in (1, 2, 5, 16))]
)
def test_lossless_media_round_trips_bit_for_bit(count: int, encoder: str) -> None:
    """The replies' own PNG and muxed WebP, and Pillow's APNG, decode back to the very frames."""
    frames = samples.frames(count, IMAGE_SIZE, IMAGE_SIZE)
    if count == 5:
        frames[2] = frames[3] = frames[1]  # identical consecutive frames stay separate frames
    data = _apng(frames) if encoder == "apng" else encode_frames(frames, encoder)
    media = decode_media(data, LIMITS, size=IMAGE_SIZE)
    assert media.num_frames == count
    np.testing.assert_array_equal(media.frames, frames)
