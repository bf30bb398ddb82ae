"""The in-process reference pipeline: the same families, the same code path as serving, no Triton.

Tests compare Triton's outputs with it (seeded random weights are identical in every process), and the
benchmark uses it as the baseline that measures what the gateway + Triton add.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from hybrid.contracts import ENCODE_CHAINS, PIPELINES
from hybrid.decoder import VideoDecoder, build_decoder
from hybrid.fusion import HEADS, ConditioningHead, build_fusion_module
from hybrid.preprocess import EncoderInputs, Preprocessor
from hybrid.profiles import Profile
from hybrid.runtime import for_device, resolve_device
from hybrid.spatial import SpatialEncoder, build_spatial
from hybrid.vlm import VLMFeatureExtractor, build_vlm


@dataclass
class ReferencePipeline:
    """Every model of a profile in one process."""

    profile: Profile
    preprocessor: Preprocessor
    vlm: VLMFeatureExtractor
    spatial: SpatialEncoder
    heads: dict[str, ConditioningHead]  # fusion, vlm_adapter, spatial_adapter
    decoder: VideoDecoder

    @classmethod
    def build(cls, profile: Profile, device: str = "auto") -> ReferencePipeline:
        dev = resolve_device(device)
        profile = for_device(profile, dev)
        return cls(
            profile=profile,
            preprocessor=Preprocessor(),
            vlm=build_vlm(profile, dev),
            spatial=build_spatial(profile, dev),
            heads={k: build_fusion_module(k, profile, dev) for k in HEADS},
            decoder=build_decoder(profile, dev),
        )

    @torch.inference_mode()
    def encode(self, frames: np.ndarray, pipeline: str) -> np.ndarray:
        """[F, H, W, 3] uint8 frames → [1, 64, 4096] float32 conditioning."""
        if pipeline not in PIPELINES:
            raise ValueError(f"unknown pipeline {pipeline!r}")
        inputs: EncoderInputs = self.preprocessor(frames)
        device = self.decoder.device
        chain = ENCODE_CHAINS[pipeline]
        vlm_tokens = spatial_tokens = None
        if "vlm_encoder" in chain:
            vlm_tokens = self.vlm(
                torch.from_numpy(inputs.vlm_pixels)[None].to(device),
                torch.from_numpy(inputs.vlm_grid_thw)[None].to(device),
            )
        if "spatial_encoder" in chain:
            spatial_tokens = self.spatial(torch.from_numpy(inputs.spatial_pixels)[None].to(device))
        head = self.heads[chain[-1]]
        return head(vlm_tokens, spatial_tokens).float().cpu().numpy()

    def reconstruct(self, frames: np.ndarray, pipeline: str, num_frames: int, steps: int, seed: int) -> np.ndarray:
        """[F, H, W, 3] uint8 frames → [num_frames, h, w, 3] uint8 reconstruction."""
        conditioning = torch.from_numpy(self.encode(frames, pipeline))
        return self.decoder(conditioning, num_frames, steps, [seed])[0]
