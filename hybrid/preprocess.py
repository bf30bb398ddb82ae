"""Frames → each encoder's input tensors, in torch, on the device the encoders run on.

The gateway decodes an upload once and resizes every frame (not cropped: a reconstruction should keep the whole
picture) to 224×224 as it is decoded (`hybrid.media.decode_media(..., size=IMAGE_SIZE)`); what reaches Triton is
those uint8 frames. Normalizing and patchifying them is a few element-wise passes over 150 KB per frame, so it
runs where the encoders run (a GPU, in one or two kernels per output) instead of on a CPU in NumPy (6.7 ms per
request on an H200 host when Triton's preprocess decoded and patchified on the CPU: benchmarks/results/gpu-h200).

- Qwen2.5-VL gets exactly what its own processor (`Qwen2VLImageProcessor` / `Qwen2VLVideoProcessor` with resizing
  off) gives: CLIP normalization, frames paired in time (temporal patch 2; an odd count repeats its last frame, as
  the processor repeats a single image), 14-px patches ordered by 2×2 merge window. `tests/test_models.py` checks
  the two against each other.
- DINOv2 gets ImageNet normalization, one 224×224 image per frame.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from hybrid.contracts import IMAGE_SIZE

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
"""Qwen2-VL's processors normalize with OpenAI CLIP's statistics."""
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
PATCH = 14
TEMPORAL_PATCH = 2
MERGE = 2


@dataclass(frozen=True)
class EncoderInputs:
    """A batch of B requests of F frames each, ready for the encoders."""

    vlm_pixels: torch.Tensor  # [B, P, 1176] float32: Qwen2.5-VL's flattened patches, P = t·16·16
    vlm_grid_thw: torch.Tensor  # [B, 3] int64 on the CPU: temporal, height and width patch counts
    spatial_pixels: torch.Tensor  # [B, F, 3, 224, 224] float32


def vlm_grid_t(num_frames: int) -> int:
    """Qwen2.5-VL's temporal patches for a clip of `num_frames`: frames are paired, an odd count padded."""
    return max(1, -(-num_frames // TEMPORAL_PATCH))


def resize_frames(frames: np.ndarray, size: int = IMAGE_SIZE) -> np.ndarray:
    """[F, H, W, 3] uint8 → [F, size, size, 3] uint8 with bicubic resampling (Qwen's and DINOv2's own): the
    reference for the resize `hybrid.media` applies to each frame as it decodes it."""
    if frames.shape[1:3] == (size, size):
        return frames
    return np.stack([np.asarray(Image.fromarray(f).resize((size, size), Image.Resampling.BICUBIC)) for f in frames])


@functools.cache
def _statistics(values: tuple[float, ...], device: torch.device) -> torch.Tensor:
    """A normalization constant as a [3, 1, 1] tensor on `device`, made once (not copied to a GPU per request)."""
    return torch.tensor(values, dtype=torch.float32, device=device).view(3, 1, 1)


def _normalized(frames: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """[..., H, W, 3] uint8 → [..., 3, H, W] float32, rescaled to [0, 1] and then normalized (the processors'
    order of operations, so results agree to float32 rounding)."""
    x = frames.to(torch.float32).mul_(1 / 255).movedim(-1, -3)
    return (x - _statistics(mean, frames.device)) / _statistics(std, frames.device)


def vlm_patches(frames: torch.Tensor) -> torch.Tensor:
    """[B, F, H, W, 3] uint8 → [B, t·(H/14)·(W/14), 3·2·14·14] Qwen2.5-VL patches (the processors' layout)."""
    x = _normalized(frames, CLIP_MEAN, CLIP_STD)  # [B, F, C, H, W]
    if x.shape[1] % TEMPORAL_PATCH:
        x = torch.cat([x, x[:, -1:]], dim=1)
    b, f, c, h, w = x.shape
    t, gh, gw = f // TEMPORAL_PATCH, h // PATCH, w // PATCH
    x = x.reshape(b, t, TEMPORAL_PATCH, c, gh // MERGE, MERGE, PATCH, gw // MERGE, MERGE, PATCH)
    # → [B, t, gh/2, gw/2, 2, 2, C, temporal, 14, 14]: patches in merge-window order, channels outermost.
    x = x.permute(0, 1, 4, 7, 5, 8, 3, 2, 6, 9)
    return x.reshape(b, t * gh * gw, c * TEMPORAL_PATCH * PATCH * PATCH)


def preprocess(frames: torch.Tensor) -> EncoderInputs:
    """[B, F, 224, 224, 3] uint8 frames (any device) → both encoders' inputs on the same device."""
    if frames.dtype != torch.uint8 or frames.ndim != 5 or tuple(frames.shape[2:]) != (IMAGE_SIZE, IMAGE_SIZE, 3):
        raise ValueError(f"expected [B, F, {IMAGE_SIZE}, {IMAGE_SIZE}, 3] uint8 frames, got {tuple(frames.shape)}")
    batch, num_frames = frames.shape[:2]
    grid = (vlm_grid_t(num_frames), IMAGE_SIZE // PATCH, IMAGE_SIZE // PATCH)
    return EncoderInputs(
        vlm_pixels=vlm_patches(frames),
        vlm_grid_thw=torch.tensor([grid] * batch, dtype=torch.int64),
        spatial_pixels=_normalized(frames, IMAGENET_MEAN, IMAGENET_STD).contiguous(),
    )


def preprocess_frames(frames: np.ndarray, device: str | torch.device = "cpu") -> EncoderInputs:
    """One request's [F, H, W, 3] uint8 frames (NumPy, as `hybrid.media` decodes them; resized to 224×224 here
    when they are not already) → a batch of one."""
    return preprocess(torch.from_numpy(np.ascontiguousarray(resize_frames(frames)))[None].to(device))
