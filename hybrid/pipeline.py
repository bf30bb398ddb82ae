"""The in-process reference pipeline: the same families, the same code path as serving, no Triton.

Tests compare Triton's outputs with it (seeded random weights are identical in every process), and the
benchmarks use it as the baseline that measures what the gateway + Triton add: in the profile's `compiled`
runtime it prepares the same graphs as the served models (`hybrid.acceleration`), so the difference between the
two is the serving path alone.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from hybrid.contracts import ENCODE_CHAINS, PIPELINES
from hybrid.decoder import VideoDecoder, build_decoder
from hybrid.fusion import HEADS, ConditioningHead, build_fusion_module
from hybrid.preprocess import preprocess_frames
from hybrid.profiles import Profile
from hybrid.runtime import for_device, resolve_device
from hybrid.spatial import SpatialEncoder, build_spatial
from hybrid.vlm import VLMFeatureExtractor, build_vlm


@dataclass
class ReferencePipeline:
    """Every model of a profile in one process."""

    profile: Profile
    vlm: VLMFeatureExtractor
    spatial: SpatialEncoder
    heads: dict[str, ConditioningHead]  # fusion, vlm_adapter, spatial_adapter
    decoder: VideoDecoder
    # What `encode` calls: the modules themselves, or their graphed calls in the compiled runtime.
    spatial_call: Callable[[torch.Tensor], torch.Tensor] = field(init=False)
    head_calls: dict[str, Callable[[torch.Tensor | None, torch.Tensor | None], torch.Tensor]] = field(init=False)

    def __post_init__(self) -> None:
        self.spatial_call = self.spatial
        self.head_calls = {kind: head for kind, head in self.heads.items()}

    @classmethod
    def build(cls, profile: Profile, device: str = "auto") -> ReferencePipeline:
        """Every model built on `device`; in the profile's compiled runtime also accelerated and prepared for the
        shapes of `profile.prepare`, as the Triton models are at load."""
        dev = resolve_device(device)
        profile = for_device(profile, dev)
        pipeline = cls(
            profile=profile,
            vlm=build_vlm(profile, dev),
            spatial=build_spatial(profile, dev),
            heads={k: build_fusion_module(k, profile, dev) for k in HEADS},
            decoder=build_decoder(profile, dev),
        )
        if profile.runtime == "compiled":
            pipeline.accelerate(dev)
        return pipeline

    def accelerate(self, device: torch.device) -> None:
        from hybrid.acceleration import (
            accelerate_decoder,
            accelerate_head,
            accelerate_spatial,
            accelerate_vlm,
            configure_cache,
        )

        configure_cache(self.profile.compile_cache)
        accelerate_vlm(self.vlm, device, self.profile)
        self.spatial_call = accelerate_spatial(self.spatial, device, self.profile)
        self.head_calls = {kind: accelerate_head(head, device, self.profile) for kind, head in self.heads.items()}
        accelerate_decoder(self.decoder, device, self.profile)

    @property
    def device(self) -> torch.device:
        return self.decoder.device

    def encode(self, frames: np.ndarray, pipeline: str) -> np.ndarray:
        """[F, H, W, 3] uint8 frames → [1, 64, 4096] float32 conditioning."""
        return self.conditioning(frames, pipeline).cpu().numpy()

    @torch.inference_mode()
    def conditioning(self, frames: np.ndarray, pipeline: str) -> torch.Tensor:
        """`encode`'s conditioning as a tensor on the pipeline's device (what the decoder takes)."""
        if pipeline not in PIPELINES:
            raise ValueError(f"unknown pipeline {pipeline!r}")
        inputs = preprocess_frames(frames, self.device)
        chain = ENCODE_CHAINS[pipeline]
        vlm_tokens = spatial_tokens = None
        if "vlm_encoder" in chain:
            vlm_tokens = self.vlm(inputs.vlm_pixels, inputs.vlm_grid_thw)
        if "spatial_encoder" in chain:
            spatial_tokens = self.spatial_call(inputs.spatial_pixels)
        return self.head_calls[chain[-1]](vlm_tokens, spatial_tokens).float()

    def reconstruct(self, frames: np.ndarray, pipeline: str, num_frames: int, steps: int, seed: int) -> np.ndarray:
        """[F, H, W, 3] uint8 frames → [num_frames, h, w, 3] uint8 reconstruction."""
        return self.decoder(self.conditioning(frames, pipeline), num_frames, steps, [seed])[0]
