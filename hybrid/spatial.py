"""DINOv2 through timm: per-frame patch tokens, the spatial-precision stream."""

from __future__ import annotations

import torch
from torch import nn

from hybrid.contracts import IMAGE_SIZE
from hybrid.profiles import SPATIAL_VARIANTS, Profile


class SpatialEncoder(nn.Module):
    """[B, F, 3, 224, 224] normalized frames → [B, F·256, D] patch tokens (CLS and register tokens dropped)."""

    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        self.num_prefix_tokens = int(backbone.num_prefix_tokens)

    @property
    def dim(self) -> int:
        return int(self.backbone.embed_dim)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        batch, num_frames = frames.shape[:2]
        tokens = self.backbone.forward_features(frames.flatten(0, 1).to(self.backbone.cls_token.dtype))
        patches = tokens[:, self.num_prefix_tokens :]
        return patches.reshape(batch, num_frames * patches.shape[1], patches.shape[2]).float()


def build_spatial(profile: Profile, device: str | torch.device = "cpu") -> SpatialEncoder:
    """DINOv2 for `profile`: seeded random weights, a local safetensors file, or timm's pretrained tag resolved
    from the Hugging Face cache (set HF_HUB_OFFLINE=1: nothing is downloaded at run time)."""
    import timm

    cfg = profile.spatial
    name = SPATIAL_VARIANTS[cfg.variant]
    kwargs = {"img_size": IMAGE_SIZE, **cfg.overrides}
    if profile.random_weights:
        torch.manual_seed(profile.seed)
        with torch.device(device):
            backbone = timm.create_model(name, pretrained=False, **kwargs)
    elif cfg.checkpoint:
        backbone = timm.create_model(name, pretrained=True, pretrained_cfg_overlay={"file": cfg.checkpoint}, **kwargs)
    else:
        backbone = timm.create_model(f"{name}.lvd142m", pretrained=True, **kwargs)
    backbone = backbone.to(getattr(torch, profile.dtype)).eval().to(device)
    return SpatialEncoder(backbone)
