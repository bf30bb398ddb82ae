"""DINOv2 through timm: per-frame patch tokens, the spatial-precision stream.

The lab's DINOv2 features are torch.hub `dinov2_vitl14`'s `x_norm_patchtokens` at 224×224. timm's
`vit_*_patch14_dinov2` is the same network (pre-norm blocks with LayerScale, LayerNorm eps 1e-6, final norm), so its
`forward_features` minus the CLS token is `x_norm_patchtokens` — except for one step: the position embeddings.
The checkpoints hold a 37×37 grid (518 px). The hub keeps it and interpolates at run time, bicubic with a scale
factor of (16 + 0.1) / 37 and no antialiasing (`interpolate_offset=0.1`, `interpolate_antialias=False`); timm's
own loader resamples it once to 16×16 by output size, bicubic with antialiasing. Those are different grids
(tests/test_dinov2_hub.py measures the difference), so checkpoints load here through `load_dinov2_checkpoint`,
which resamples at load exactly as the hub does at run time: the tokens then match the hub's to float32 rounding.

Measured at 224 px on the tests' tiny random weights (patch tokens |x| ≈ 0.8 on average): timm's own loader moves
the tokens by 0.11 mean / 1.1 max absolute, transformers' `Dinov2Model` (interpolation by size, no antialiasing) by
0.04 / 0.58; this loader by 0. Real checkpoints have smoother position tables, so their gap is smaller but not zero
(a 2-D sin-cos table gave 0.008 / 0.24 through timm's loader).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from hybrid.checkpoints import CheckpointError, read_state_dict
from hybrid.contracts import IMAGE_SIZE
from hybrid.profiles import SPATIAL_VARIANTS, Profile

if TYPE_CHECKING:
    from timm.models.vision_transformer import VisionTransformer

HUB_INTERPOLATE_OFFSET = 0.1
"""dinov2's hubconf builds every backbone with `interpolate_offset=0.1` (a kludge kept from DINO v1)."""

_HUB_SWIGLU = re.compile(r"^(blocks\.\d+\.mlp\.)(w12|w3)(\.(?:weight|bias))$")
_TIMM_SWIGLU = {"w12": "fc1", "w3": "fc2"}  # the giant's packed SwiGLU: same [gate; value] order in both


class SpatialEncoder(nn.Module):
    """[B, F, 3, 224, 224] normalized frames → [B, F·256, D] patch tokens (CLS and register tokens dropped)."""

    def __init__(self, backbone: VisionTransformer) -> None:
        super().__init__()
        self.backbone = backbone
        self.num_prefix_tokens = int(backbone.num_prefix_tokens)

    @property
    def dim(self) -> int:
        return int(self.backbone.embed_dim)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        batch, num_frames = frames.shape[:2]
        tokens = self.backbone.forward_features(frames.flatten(0, 1).to(self.backbone.patch_embed.proj.weight.dtype))
        patches = tokens[:, self.num_prefix_tokens :]
        return patches.reshape(batch, num_frames * patches.shape[1], patches.shape[2]).float()


def resample_pos_embed_like_hub(pos_embed: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """[1, 1 + M·M, D] → [1, 1 + h·w, D]: the hub's `interpolate_pos_encoding`, done once instead of every forward.

    Bicubic in float32, scale factor (grid + 0.1) / M, no antialiasing, CLS position kept — the same call with the
    same arguments the hub makes, so a model built at 224 px sees the very embeddings the hub adds at 224 px.
    """
    side = math.isqrt(pos_embed.shape[1] - 1)
    if side * side != pos_embed.shape[1] - 1:
        raise CheckpointError(f"key 'pos_embed': {pos_embed.shape[1] - 1} patch positions are not a square grid")
    if (side, side) == tuple(grid):
        return pos_embed
    dim = pos_embed.shape[-1]
    patch = pos_embed[:, 1:].float().reshape(1, side, side, dim).permute(0, 3, 1, 2)
    scale = tuple((n + HUB_INTERPOLATE_OFFSET) / side for n in grid)
    patch = F.interpolate(patch, scale_factor=scale, mode="bicubic", antialias=False)
    if tuple(patch.shape[-2:]) != tuple(grid):
        raise CheckpointError(f"key 'pos_embed': a {side}×{side} grid does not resample to {grid}")
    patch = patch.permute(0, 2, 3, 1).reshape(1, grid[0] * grid[1], dim)
    return torch.cat([pos_embed[:, :1].float(), patch], dim=1)


def to_timm_state_dict(state: Mapping[str, torch.Tensor], backbone: VisionTransformer) -> dict[str, torch.Tensor]:
    """The hub's layout (or timm's own) → `backbone`'s names and shapes, checked key by key.

    Hub → timm: `mask_token` is dropped (used only by masked-image training, never by the hub's forward without
    masks); the giant's `mlp.w12`/`mlp.w3` become `mlp.fc1`/`mlp.fc2`; `pos_embed` is resampled to the model's
    grid the hub's way. Every other name is shared. The first unexpected, mis-shaped or missing key is an error.
    """
    expected = backbone.state_dict()
    grid = tuple(backbone.patch_embed.grid_size)
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key == "mask_token":
            continue
        match = _HUB_SWIGLU.match(key)
        name = f"{match[1]}{_TIMM_SWIGLU[match[2]]}{match[3]}" if match else key
        if name not in expected:
            raise CheckpointError(f"unexpected key {key!r}: not a parameter of this DINOv2 (wrong variant or file?)")
        if name == "pos_embed":
            value = resample_pos_embed_like_hub(value, grid)
        if tuple(value.shape) != tuple(expected[name].shape):
            raise CheckpointError(
                f"key {key!r} has shape {tuple(value.shape)}, this DINOv2 expects {tuple(expected[name].shape)}"
            )
        out[name] = value
    missing = [name for name in expected if name not in out]
    if missing:
        raise CheckpointError(f"missing key {missing[0]!r} ({len(missing)} missing in all)")
    return out


def load_dinov2_checkpoint(backbone: VisionTransformer, state: Mapping[str, torch.Tensor]) -> None:
    """Load a DINOv2 state dict (hub or timm layout, any grid) into `backbone`, strictly."""
    backbone.load_state_dict(to_timm_state_dict(state, backbone), strict=True)


def create_backbone(name: str, kwargs: dict[str, Any]) -> VisionTransformer:
    """timm's `name` without weights: every DINOv2 variant is a timm `VisionTransformer`."""
    import timm
    from timm.models.vision_transformer import VisionTransformer

    backbone = timm.create_model(name, pretrained=False, **kwargs)
    if not isinstance(backbone, VisionTransformer):
        raise TypeError(f"timm's {name} is a {type(backbone).__name__}, not the VisionTransformer DINOv2 is")
    return backbone


def build_spatial(profile: Profile, device: str | torch.device = "cpu") -> SpatialEncoder:
    """DINOv2 for `profile`: seeded random weights; `spatial.checkpoint`, a local file in the hub's layout
    (`dinov2_vitl14_pretrain.pth`, a torch.hub model's `state_dict()`) or timm's, `.safetensors` or `.pth`; or
    timm's `<name>.lvd142m` weights resolved from the Hugging Face cache (set HF_HUB_OFFLINE=1: nothing is
    downloaded at run time). Checkpoints go through `load_dinov2_checkpoint`, so features are the hub's."""
    cfg = profile.spatial
    name = SPATIAL_VARIANTS[cfg.variant]
    kwargs = {"img_size": IMAGE_SIZE, **cfg.overrides}
    if profile.random_weights:
        torch.manual_seed(profile.seed)
        with torch.device(device):
            backbone = create_backbone(name, kwargs)
    else:
        if cfg.checkpoint:
            source, state = cfg.checkpoint, read_state_dict(cfg.checkpoint)
        else:
            from timm.models import get_pretrained_cfg, load_state_dict_from_hf

            pretrained = get_pretrained_cfg(f"{name}.lvd142m")
            if pretrained is None or not pretrained.hf_hub_id:
                raise CheckpointError(f"timm has no {name}.lvd142m weights to resolve")
            source = pretrained.hf_hub_id
            state = load_state_dict_from_hf(source)
        backbone = create_backbone(name, kwargs)
        try:
            load_dinov2_checkpoint(backbone, state)
        except CheckpointError as exc:
            raise CheckpointError(f"{source} as {name}: {exc}") from None
    backbone = backbone.to(getattr(torch, profile.dtype)).eval().to(device)
    return SpatialEncoder(backbone)
