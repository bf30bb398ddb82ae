"""Frames → each encoder's input tensors.

Both encoders see every input frame resized (not cropped: a reconstruction should keep the whole picture) to
224×224. Qwen2.5-VL gets its own processor's normalization and patch layout (so real checkpoints see exactly what
they were trained on); DINOv2 gets ImageNet normalization, one 224×224 image per frame.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from hybrid.contracts import IMAGE_SIZE

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


@dataclass(frozen=True)
class EncoderInputs:
    vlm_pixels: np.ndarray  # [P, 1176] float32, Qwen2.5-VL flattened patches
    vlm_grid_thw: np.ndarray  # [3] int64: temporal, height, width patch counts
    spatial_pixels: np.ndarray  # [F, 3, 224, 224] float32


def resize_frames(frames: np.ndarray, size: int = IMAGE_SIZE) -> np.ndarray:
    """[F, H, W, 3] uint8 → [F, size, size, 3] uint8 with bicubic resampling (Qwen's and DINOv2's own)."""
    if frames.shape[1:3] == (size, size):
        return frames
    return np.stack([np.asarray(Image.fromarray(f).resize((size, size), Image.Resampling.BICUBIC)) for f in frames])


class Preprocessor:
    """Holds the Qwen2-VL processors (constructed offline with their defaults, resizing disabled)."""

    def __init__(self) -> None:
        from transformers import Qwen2VLImageProcessor, Qwen2VLVideoProcessor

        self._image = Qwen2VLImageProcessor(do_resize=False)
        self._video = Qwen2VLVideoProcessor(do_resize=False, do_sample_frames=False)

    def __call__(self, frames: np.ndarray) -> EncoderInputs:
        frames = resize_frames(frames)
        spatial = (frames.astype(np.float32) / 255.0 - IMAGENET_MEAN) / IMAGENET_STD
        if frames.shape[0] == 1:
            out = self._image(images=[frames[0]], return_tensors="np")
            pixels, grid = out["pixel_values"], out["image_grid_thw"]
        else:
            # Qwen2.5-VL patches pairs of frames (temporal patch 2): pad an odd count with the last frame.
            if frames.shape[0] % 2:
                frames = np.concatenate([frames, frames[-1:]])
            out = self._video(videos=[frames], return_tensors="np", cap_pixels_per_frame=False)
            pixels, grid = out["pixel_values_videos"], out["video_grid_thw"]
        return EncoderInputs(
            vlm_pixels=np.ascontiguousarray(pixels, dtype=np.float32),
            vlm_grid_thw=np.asarray(grid[0], dtype=np.int64),
            spatial_pixels=np.ascontiguousarray(spatial.transpose(0, 3, 1, 2)),
        )
