"""The cross-attention fusion module and the two single-stream baseline adapters — one class, three uses.

Learned queries (64) attend to the concatenation of the projected VLM tokens and the projected spatial tokens;
the spatial tokens carry a learned positional embedding over the 16×16 patch grid (shared by every frame) and
each stream a type embedding. The output is projected to LTX-Video's 4096-wide caption space: [B, 64, 4096].
The baselines are the same module with one stream: `vlm_adapter` (VLM-only, C1) and `spatial_adapter`
(DINOv2-only, E-P2.2), so the three pipelines differ only in what they see.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from hybrid.contracts import CONDITIONING_DIM, NUM_QUERIES, SPATIAL_PATCHES_PER_FRAME
from hybrid.profiles import FusionConfig, Profile

STREAMS = ("vlm", "spatial")


class Attention(nn.Module):
    """Multi-head attention over explicit projections and scaled_dot_product_attention, so that ONNX export
    keeps the key length (token count) dynamic."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"d_model {dim} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        h = self.num_heads
        q = self.q(x).reshape(b, n, h, d // h).transpose(1, 2)
        k, v = self.kv(context).reshape(b, -1, 2, h, d // h).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v)
        return self.out(y.transpose(1, 2).reshape(b, n, d))


class FusionBlock(nn.Module):
    """Pre-norm: queries cross-attend to the tokens, then self-attend, then an MLP."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.norm_q = nn.LayerNorm(dim)
        self.norm_ctx = nn.LayerNorm(dim)
        self.cross = Attention(dim, num_heads)
        self.norm_self = nn.LayerNorm(dim)
        self.self_attn = Attention(dim, num_heads)
        self.norm_mlp = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, queries: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        queries = queries + self.cross(self.norm_q(queries), self.norm_ctx(context))
        normed = self.norm_self(queries)
        queries = queries + self.self_attn(normed, normed)
        return queries + self.mlp(self.norm_mlp(queries))


class QueryFusion(nn.Module):
    """Learned-query cross-attention over one or both encoder streams → [B, 64, 4096] conditioning."""

    def __init__(
        self,
        streams: tuple[str, ...],
        vlm_dim: int,
        spatial_dim: int,
        cfg: FusionConfig,
        num_queries: int = NUM_QUERIES,
        out_dim: int = CONDITIONING_DIM,
    ) -> None:
        super().__init__()
        if not streams or any(s not in STREAMS for s in streams):
            raise ValueError(f"streams must be a non-empty subset of {STREAMS}, got {streams}")
        d = cfg.d_model
        self.streams = tuple(streams)
        self.vlm_proj = nn.Linear(vlm_dim, d) if "vlm" in streams else None
        self.spatial_proj = nn.Linear(spatial_dim, d) if "spatial" in streams else None
        self.spatial_pos = (
            nn.Parameter(torch.randn(SPATIAL_PATCHES_PER_FRAME, d) * 0.02) if "spatial" in streams else None
        )
        self.type_embed = nn.Parameter(torch.randn(len(streams), d) * 0.02)
        self.queries = nn.Parameter(torch.randn(num_queries, d) * 0.02)
        self.blocks = nn.ModuleList(FusionBlock(d, cfg.num_heads, cfg.mlp_ratio) for _ in range(cfg.num_layers))
        self.norm_out = nn.LayerNorm(d)
        self.proj_out = nn.Linear(d, out_dim)

    def forward(
        self, vlm_tokens: torch.Tensor | None = None, spatial_tokens: torch.Tensor | None = None
    ) -> torch.Tensor:
        """vlm_tokens [B, Nv, Dv] and/or spatial_tokens [B, F·256, Ds] (by the streams built) → [B, 64, 4096]."""
        parts = []
        for index, stream in enumerate(self.streams):
            if stream == "vlm":
                if vlm_tokens is None:
                    raise ValueError("this module fuses VLM tokens: vlm_tokens is required")
                x = self.vlm_proj(vlm_tokens.to(self.queries.dtype))
            else:
                if spatial_tokens is None:
                    raise ValueError("this module fuses spatial tokens: spatial_tokens is required")
                x = self.spatial_proj(spatial_tokens.to(self.queries.dtype))
                b, n, d = x.shape
                # The same patch-grid position for every frame: reshape to [B, F, 256, d] and broadcast.
                x = (x.reshape(b, -1, SPATIAL_PATCHES_PER_FRAME, d) + self.spatial_pos).reshape(b, n, d)
            parts.append(x + self.type_embed[index])
        context = torch.cat(parts, dim=1)
        queries = self.queries.unsqueeze(0).expand(context.shape[0], -1, -1)
        for block in self.blocks:
            queries = block(queries, context)
        return self.proj_out(self.norm_out(queries))

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


FUSION_MODULES: dict[str, tuple[str, ...]] = {
    "fusion": ("vlm", "spatial"),
    "vlm_adapter": ("vlm",),
    "spatial_adapter": ("spatial",),
}


def build_fusion_module(kind: str, profile: Profile, device: str | torch.device = "cpu") -> QueryFusion:
    """`fusion`, `vlm_adapter` or `spatial_adapter` for `profile`: seeded random weights or a safetensors
    checkpoint (never a pickle)."""
    from safetensors.torch import load_file

    cfg = profile.fusion
    # Seeds differ per kind so the three modules are not copies of one another.
    torch.manual_seed(profile.seed + list(FUSION_MODULES).index(kind) + 1)
    module = QueryFusion(FUSION_MODULES[kind], profile.vlm.dim, profile.spatial.dim, cfg)
    checkpoint = getattr(cfg, f"{kind}_checkpoint")
    if checkpoint and not profile.random_weights:
        module.load_state_dict(load_file(checkpoint), strict=True)
    return module.to(getattr(torch, profile.dtype)).eval().to(device)
