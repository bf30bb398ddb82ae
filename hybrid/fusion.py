"""The lab's conditioning heads, state-dict compatible with their checkpoints.

- `HybridFusionModule` (the lab's E-P2.3/E-P2.4 fusion): projected VLM and DINOv2 tokens form one memory; 64
  learned queries run through post-norm `nn.TransformerDecoderLayer`s (self-attention, cross-attention to the
  memory, ReLU MLP) and a Linear → GELU → Linear head to LTX-Video's 4096-wide caption space: [B, 64, 4096].
- `DINOv2Adapter` (the lab's E-P2.2 DINOv2-only baseline): 64 learned queries cross-attend to the projected tokens
  (no self-attention), each attention and FFN followed by a post-residual LayerNorm.
- The VLM-only baseline (`vlm_adapter`) is not defined by the lab's seed; it is the `DINOv2Adapter` architecture
  over VLM features (input width 3584 at full size), so the three pipelines differ only in what they see. Its
  projection keeps the lab's parameter name `dino_proj`, so a checkpoint trained with that class loads as is.

Parameter names, shapes and eval-mode outputs match the lab's classes: their `torch.save(model.state_dict())`
files load with `strict=True` (see `tests/test_lab_reference.py`, which replays their test vectors).

Padding: in a batch of different token counts, `pad_tokens` pads each stream to the longest and returns a mask;
padded positions are excluded from attention (the lab padded with zeros, which the queries then attend to; for a
batch of equal lengths — every batch Triton forms for one input shape — both are the same computation).
"""

from __future__ import annotations

import torch
from torch import nn

from hybrid.contracts import CONDITIONING_DIM, SPATIAL_PATCHES_PER_FRAME
from hybrid.profiles import Profile

HEADS: tuple[str, ...] = ("fusion", "vlm_adapter", "spatial_adapter")
"""The three conditioning heads: one per pipeline (hybrid, vlm, spatial)."""


class HybridFusionModule(nn.Module):
    """The lab's fusion: [B, Nv, vlm_dim] VLM tokens + [B, Ns, spatial_dim] DINOv2 tokens → [B, Q, output_dim].

    `spatial_pos` holds one 224² frame's 16×16 patch positions. The lab adds it to the first n ≤ 256 spatial
    tokens; for a clip (F·256 tokens, frames in order) the service adds the same positions to every frame, which
    leaves a single frame's result unchanged.
    """

    def __init__(
        self,
        vlm_dim: int = 3584,
        spatial_dim: int = 1024,
        fusion_dim: int = 1024,
        num_fusion_layers: int = 4,
        num_output_queries: int = 64,
        output_dim: int = CONDITIONING_DIM,
        nhead: int = 8,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        self.vlm_proj = nn.Linear(vlm_dim, fusion_dim)
        self.spatial_proj = nn.Linear(spatial_dim, fusion_dim)
        self.spatial_pos = nn.Parameter(torch.randn(SPATIAL_PATCHES_PER_FRAME, fusion_dim) * 0.02)
        self.output_queries = nn.Parameter(torch.randn(num_output_queries, fusion_dim) * 0.02)
        self.fusion_layers = nn.ModuleList(
            nn.TransformerDecoderLayer(
                fusion_dim, nhead, dim_feedforward=4 * fusion_dim, dropout=dropout, batch_first=True
            )
            for _ in range(num_fusion_layers)
        )
        self.output_proj = nn.Sequential(
            nn.Linear(fusion_dim, fusion_dim), nn.GELU(), nn.Linear(fusion_dim, output_dim)
        )

    def add_positions(self, spatial: torch.Tensor) -> torch.Tensor:
        """Adds `spatial_pos` per frame: tokens [B, F·256, d] (whole frames; one frame is the lab's case) or
        [B, n < 256, d] (the lab's "first n" rule). Whole frames are tested first so that an export with a
        symbolic frame count takes one branch."""
        b, n, d = spatial.shape
        per_frame = self.spatial_pos.shape[0]
        if n % per_frame == 0:
            return (spatial.reshape(b, n // per_frame, per_frame, d) + self.spatial_pos).reshape(b, n, d)
        if n < per_frame:
            return spatial + self.spatial_pos[:n]
        raise ValueError(f"{n} spatial tokens are neither fewer than {per_frame} nor whole frames of {per_frame}")

    def forward(
        self,
        vlm_tokens: torch.Tensor,
        spatial_tokens: torch.Tensor,
        vlm_mask: torch.Tensor | None = None,
        spatial_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Masks are [B, N] bool, True where a token is real (see `pad_tokens`); None means all real."""
        dtype = self.output_queries.dtype
        vlm = self.vlm_proj(vlm_tokens.to(dtype))
        spatial = self.add_positions(self.spatial_proj(spatial_tokens.to(dtype)))
        memory = torch.cat([vlm, spatial], dim=1)
        padding = _memory_padding(memory, [(vlm, vlm_mask), (spatial, spatial_mask)])
        queries = self.output_queries.unsqueeze(0).expand(memory.shape[0], -1, -1)
        for layer in self.fusion_layers:
            queries = layer(queries, memory, memory_key_padding_mask=padding)
        return self.output_proj(queries)


class DINOv2Adapter(nn.Module):
    """The lab's single-stream adapter: [B, N, dino_dim] tokens → [B, n_output_tokens, ltx_dim].

    Per layer: queries ← LayerNorm(queries + CrossAttention(queries, tokens)), then
    queries ← LayerNorm(queries + FFN(queries)); `layer_norms[2i]` and `[2i + 1]` are layer i's two norms.
    """

    def __init__(
        self,
        dino_dim: int = 1024,
        ltx_dim: int = CONDITIONING_DIM,
        hidden_dim: int = 2048,
        n_output_tokens: int = 64,
        nhead: int = 8,
        layers: int = 4,
    ) -> None:
        super().__init__()
        self.queries = nn.Parameter(torch.randn(n_output_tokens, hidden_dim) * 0.02)
        self.dino_proj = nn.Linear(dino_dim, hidden_dim)
        self.cross_attn = nn.ModuleList(
            nn.MultiheadAttention(hidden_dim, nhead, batch_first=True) for _ in range(layers)
        )
        self.ffn = nn.ModuleList(
            nn.Sequential(nn.Linear(hidden_dim, 4 * hidden_dim), nn.GELU(), nn.Linear(4 * hidden_dim, hidden_dim))
            for _ in range(layers)
        )
        self.layer_norms = nn.ModuleList(nn.LayerNorm(hidden_dim) for _ in range(2 * layers))
        self.out_proj = nn.Linear(hidden_dim, ltx_dim)

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """`mask` is [B, N] bool, True where a token is real; None means all real."""
        x = self.dino_proj(tokens.to(self.queries.dtype))
        padding = None if mask is None else ~mask.to(torch.bool)
        q = self.queries.unsqueeze(0).expand(x.shape[0], -1, -1)
        for i, (attention, ffn) in enumerate(zip(self.cross_attn, self.ffn, strict=True)):
            attended, _ = attention(q, x, x, key_padding_mask=padding, need_weights=False)
            q = self.layer_norms[2 * i](q + attended)
            q = self.layer_norms[2 * i + 1](q + ffn(q))
        return self.out_proj(q)


def _memory_padding(
    memory: torch.Tensor, streams: list[tuple[torch.Tensor, torch.Tensor | None]]
) -> torch.Tensor | None:
    """The key-padding mask of the concatenated memory (True = ignore), or None when nothing is padded."""
    if all(mask is None for _, mask in streams):
        return None
    parts = [
        torch.ones(x.shape[:2], dtype=torch.bool, device=memory.device) if mask is None else mask.to(torch.bool)
        for x, mask in streams
    ]
    return ~torch.cat(parts, dim=1)


def pad_tokens(rows: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor | None]:
    """[N_i, D] (or [1, N_i, D]) tensors → ([B, max N, D] zero-padded, [B, max N] mask of real tokens), with
    mask None when every row has the same length (no padding, so the fast unmasked path runs)."""
    rows = [r[0] if r.dim() == 3 else r for r in rows]
    lengths = [r.shape[0] for r in rows]
    if len(set(lengths)) == 1:
        return torch.stack(rows), None
    longest = max(lengths)
    padded = rows[0].new_zeros(len(rows), longest, rows[0].shape[-1])
    mask = torch.zeros(len(rows), longest, dtype=torch.bool, device=rows[0].device)
    for i, row in enumerate(rows):
        padded[i, : row.shape[0]] = row
        mask[i, : row.shape[0]] = True
    return padded, mask


class ConditioningHead(nn.Module):
    """One served head with the serving signature: (vlm_tokens, spatial_tokens, masks) → [B, 64, 4096].

    Wraps the lab's module so the Triton model, the reference pipeline and export call all three heads alike;
    `state_dict()` of `module` is the lab's checkpoint layout.
    """

    def __init__(self, kind: str, module: nn.Module) -> None:
        super().__init__()
        if kind not in HEADS:
            raise ValueError(f"unknown head {kind!r}; choose one of {', '.join(HEADS)}")
        self.kind = kind
        self.module = module

    @property
    def inputs(self) -> tuple[str, ...]:
        """Which streams this head reads: ("vlm", "spatial"), ("vlm",) or ("spatial",)."""
        return {"fusion": ("vlm", "spatial"), "vlm_adapter": ("vlm",), "spatial_adapter": ("spatial",)}[self.kind]

    def forward(
        self,
        vlm_tokens: torch.Tensor | None = None,
        spatial_tokens: torch.Tensor | None = None,
        vlm_mask: torch.Tensor | None = None,
        spatial_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        for stream, tokens in (("vlm", vlm_tokens), ("spatial", spatial_tokens)):
            if stream in self.inputs and tokens is None:
                raise ValueError(f"{self.kind} reads {stream} tokens: {stream}_tokens is required")
        if self.kind == "fusion":
            return self.module(vlm_tokens, spatial_tokens, vlm_mask, spatial_mask)
        if self.kind == "vlm_adapter":
            return self.module(vlm_tokens, vlm_mask)
        return self.module(spatial_tokens, spatial_mask)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.module.parameters())


def build_head_module(kind: str, profile: Profile) -> nn.Module:
    """The lab's module for `kind`, sized by `profile`, with freshly initialized weights (on the current default
    device: build under `torch.device("meta")` to read names and shapes without allocating)."""
    fusion, adapter = profile.fusion, profile.adapter
    if kind == "fusion":
        return HybridFusionModule(
            vlm_dim=profile.vlm.dim,
            spatial_dim=profile.spatial.dim,
            fusion_dim=fusion.fusion_dim,
            num_fusion_layers=fusion.num_layers,
            num_output_queries=fusion.num_queries,
            output_dim=CONDITIONING_DIM,
            nhead=fusion.nhead,
        )
    if kind in ("vlm_adapter", "spatial_adapter"):
        return DINOv2Adapter(
            dino_dim=profile.vlm.dim if kind == "vlm_adapter" else profile.spatial.dim,
            ltx_dim=CONDITIONING_DIM,
            hidden_dim=adapter.hidden_dim,
            n_output_tokens=adapter.num_tokens,
            nhead=adapter.nhead,
            layers=adapter.num_layers,
        )
    raise ValueError(f"unknown head {kind!r}; choose one of {', '.join(HEADS)}")


CHECKPOINT_SETTINGS: dict[str, tuple[str, str]] = {
    "fusion": ("fusion", "checkpoint"),
    "vlm_adapter": ("adapter", "vlm_checkpoint"),
    "spatial_adapter": ("adapter", "spatial_checkpoint"),
}
"""Where the profile names each head's safetensors file: (section, setting), e.g. profile.adapter.vlm_checkpoint."""


def head_checkpoint(kind: str, profile: Profile) -> str | None:
    """The safetensors file the profile names for `kind`, if any."""
    section, setting = CHECKPOINT_SETTINGS[kind]
    return getattr(getattr(profile, section), setting)


def build_fusion_module(kind: str, profile: Profile, device: str | torch.device = "cpu") -> ConditioningHead:
    """`fusion`, `vlm_adapter` or `spatial_adapter` for `profile`: seeded random weights, or the profile's
    safetensors checkpoint loaded strictly (never a pickle; `python -m hybrid.checkpoints` converts the lab's
    `.pt` files)."""
    from safetensors.torch import load_file

    # Seeds differ per kind so the three modules are not copies of one another.
    torch.manual_seed(profile.seed + HEADS.index(kind) + 1)
    with torch.device(device):  # initialize on the target device: 212 M parameters take seconds on a CPU
        module = build_head_module(kind, profile)
    checkpoint = head_checkpoint(kind, profile)
    if checkpoint:  # a checkpoint named explicitly wins over `random_weights`
        module.load_state_dict(load_file(checkpoint, device=str(device)), strict=True)
    return ConditioningHead(kind, module.to(getattr(torch, profile.dtype)).eval())
