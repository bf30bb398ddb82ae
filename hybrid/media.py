"""Decoding client media into frames and encoding frames into replies. Torch-free: the gateway uses it to
reject bad uploads before Triton sees them, and the preprocess model uses it to decode them.

Every failure is a `MediaError` whose `code` and message name the problem, so the gateway can map it to a 4xx.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageSequence, UnidentifiedImageError

IMAGE_FORMATS = ("PNG", "JPEG", "WEBP", "GIF")
OUTPUT_FORMATS: dict[str, str] = {
    "png": "image/png",
    "webp": "image/webp",
    "gif": "image/gif",
    "mp4": "video/mp4",
    "npz": "application/octet-stream",
}
SINGLE_FRAME_FORMATS = ("png",)


class MediaError(ValueError):
    """Client media that cannot be used. `status` is the HTTP status the gateway replies with."""

    def __init__(self, code: str, message: str, status: int = 422) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status


@dataclass(frozen=True)
class MediaLimits:
    """Bounds that keep one request from exhausting the server (decompression bombs, endless videos)."""

    max_bytes: int = 32 * 1024 * 1024
    max_pixels: int = 4096 * 4096
    max_frames: int = 16


@dataclass(frozen=True)
class DecodedMedia:
    frames: np.ndarray  # [F, H, W, 3] uint8
    kind: str  # "image" or "video"
    format: str

    @property
    def num_frames(self) -> int:
        return int(self.frames.shape[0])


def decode_media(data: bytes, limits: MediaLimits) -> DecodedMedia:
    """Decode an image (PNG, JPEG, WebP), an animation (GIF, WebP) or a video (MP4, WebM, …) into RGB frames."""
    if not data:
        raise MediaError("empty_file", "the uploaded file is empty", 400)
    if len(data) > limits.max_bytes:
        raise MediaError("file_too_large", f"the upload has {len(data)} bytes; the limit is {limits.max_bytes}", 413)
    if _looks_like_iso_video(data) or data[:4] == b"\x1a\x45\xdf\xa3":
        return _decode_video(data, limits)
    return _decode_image(data, limits)


def _looks_like_iso_video(data: bytes) -> bool:
    return len(data) > 12 and data[4:8] in (b"ftyp", b"moov", b"mdat", b"free", b"wide")


def _check_pixels(width: int, height: int, limits: MediaLimits) -> None:
    if width <= 0 or height <= 0:
        raise MediaError("invalid_media", f"the media reports an empty size {width}x{height}")
    if width * height > limits.max_pixels:
        raise MediaError(
            "too_many_pixels",
            f"the media is {width}x{height} = {width * height} pixels; the limit is {limits.max_pixels}",
            413,
        )


def _check_frames(count: int, limits: MediaLimits) -> None:
    if count > limits.max_frames:
        raise MediaError("too_many_frames", f"the media has {count} frames or more; the limit is {limits.max_frames}")


def _decode_image(data: bytes, limits: MediaLimits) -> DecodedMedia:
    try:
        with warnings.catch_warnings():
            # Pillow's own bomb check warns or raises at its global limit; ours is checked explicitly below.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise MediaError(
            "unsupported_media", "the file is not a supported image or video (PNG, JPEG, WebP, GIF, MP4)"
        ) from None
    except Image.DecompressionBombError:
        raise MediaError(
            "too_many_pixels", f"the image is a decompression bomb; the limit is {limits.max_pixels} pixels", 413
        ) from None
    if image.format not in IMAGE_FORMATS:
        raise MediaError("unsupported_media", f"image format {image.format} is not accepted")
    _check_pixels(image.width, image.height, limits)
    count = getattr(image, "n_frames", 1)
    _check_frames(count, limits)
    try:
        frames = [np.asarray(frame.convert("RGB")) for frame in ImageSequence.Iterator(image)]
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise MediaError("corrupt_media", f"the {image.format} file is truncated or corrupt: {exc}") from None
    kind = "video" if len(frames) > 1 else "image"
    return DecodedMedia(np.stack(frames), kind, image.format.lower())


def _decode_video(data: bytes, limits: MediaLimits) -> DecodedMedia:
    import av  # imported lazily: FFmpeg's libraries load in a few hundred ms

    try:
        with av.open(io.BytesIO(data), mode="r") as container:
            if not container.streams.video:
                raise MediaError("unsupported_media", "the container has no video stream")
            stream = container.streams.video[0]
            _check_pixels(stream.codec_context.width, stream.codec_context.height, limits)
            if stream.frames:
                _check_frames(stream.frames, limits)
            frames: list[np.ndarray] = []
            for frame in container.decode(stream):
                frames.append(frame.to_ndarray(format="rgb24"))
                _check_frames(len(frames), limits)
    except MediaError:
        raise
    except (av.FFmpegError, ValueError, OSError) as exc:
        raise MediaError("corrupt_media", f"the video cannot be decoded: {exc}") from None
    if not frames:
        raise MediaError("corrupt_media", "the video holds no decodable frame")
    return DecodedMedia(np.stack(frames), "video", "mp4")


def encode_frames(frames: np.ndarray, fmt: str, fps: int = 8) -> bytes:
    """Encode [F, H, W, 3] uint8 frames as `fmt` (png for one frame; webp, gif, mp4 for several; npz raw)."""
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"expected [F, H, W, 3] uint8 frames, got {frames.shape} {frames.dtype}")
    buffer = io.BytesIO()
    if fmt == "npz":
        np.savez_compressed(buffer, frames=frames)
    elif fmt == "png":
        if frames.shape[0] != 1:
            raise ValueError("png holds one frame; ask for webp, gif or mp4")
        Image.fromarray(frames[0]).save(buffer, format="PNG")
    elif fmt in ("webp", "gif"):
        images = [Image.fromarray(f) for f in frames]
        extra = {"lossless": True} if fmt == "webp" else {}
        images[0].save(
            buffer,
            format=fmt.upper(),
            save_all=True,
            append_images=images[1:],
            duration=1000 // fps,
            loop=0,
            **extra,
        )
    elif fmt == "mp4":
        _encode_mp4(frames, fps, buffer)
    else:
        raise ValueError(f"unknown output format {fmt!r}")
    return buffer.getvalue()


def _encode_mp4(frames: np.ndarray, fps: int, buffer: io.BytesIO) -> None:
    import av

    height, width = frames.shape[1:3]
    with av.open(buffer, mode="w", format="mp4") as container:
        # H.264 where this FFmpeg build has an encoder for it, MPEG-4 part 2 otherwise: both play everywhere.
        codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height = width + width % 2, height + height % 2
        stream.pix_fmt = "yuv420p"
        for array in frames:
            if array.shape[:2] != (stream.height, stream.width):
                array = np.pad(array, ((0, stream.height - height), (0, stream.width - width), (0, 0)), "edge")
            for packet in stream.encode(av.VideoFrame.from_ndarray(array, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
