"""DINOv2 through timm gives the hub's `x_norm_patchtokens` for the same weights (issue 14, Build 3).

The reference is transformers' `Dinov2Model`, a port of the hub's code written apart from timm's: its
`last_hidden_state` is the final-normed sequence, so `[:, 1:]` is `x_norm_patchtokens`. Weights are a seeded random
state dict in the hub's layout (`dinov2_vitl14_pretrain.pth`'s keys) at a tiny size, written to a file and served
through `hybrid.spatial.build_spatial`, exactly as a real checkpoint would be.

Position embeddings: with a 16×16 grid nothing is interpolated and the two must agree. With the hub's 37×37 grid the
hub interpolates at run time with a scale factor of (16 + 0.1) / 37 and no antialiasing, while transformers'
port interpolates to an output size (16×16) and timm's own loader does so with antialiasing: three different grids.
The service resamples at load the hub's way; the reference then runs the hub's rule at run time (installed on the HF
model below), and the other two rules are shown to differ.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from transformers import Dinov2Config, Dinov2Model

from hybrid.profiles import get_profile
from hybrid.spatial import CheckpointError, SpatialEncoder, build_spatial, read_state_dict

DIM, DEPTH, HEADS, PATCH = 48, 2, 2, 14
TOLERANCE = 1e-5


def hub_state_dict(side: int, swiglu: bool = False, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random tensors under the hub's names and shapes (`mlp.w12`/`w3` for the giant's SwiGLU), grid side×side.

    Every tensor is random, LayerNorm and LayerScale included, so a mis-mapped key cannot go unnoticed."""
    g = torch.Generator().manual_seed(seed)

    def rand(*shape: int, scale: float = 0.3, mean: float = 0.0) -> torch.Tensor:
        return torch.randn(*shape, generator=g) * scale + mean

    hidden = 4 * DIM
    state = {
        "cls_token": rand(1, 1, DIM),
        "pos_embed": rand(1, 1 + side * side, DIM),
        "mask_token": rand(1, DIM),
        "patch_embed.proj.weight": rand(DIM, 3, PATCH, PATCH, scale=0.05),
        "patch_embed.proj.bias": rand(DIM),
    }
    for i in range(DEPTH):
        b = f"blocks.{i}."
        state |= {
            b + "norm1.weight": rand(DIM, mean=1.0),
            b + "norm1.bias": rand(DIM),
            b + "attn.qkv.weight": rand(3 * DIM, DIM, scale=0.2),
            b + "attn.qkv.bias": rand(3 * DIM),
            b + "attn.proj.weight": rand(DIM, DIM, scale=0.2),
            b + "attn.proj.bias": rand(DIM),
            b + "ls1.gamma": rand(DIM, scale=0.5),
            b + "norm2.weight": rand(DIM, mean=1.0),
            b + "norm2.bias": rand(DIM),
            b + "ls2.gamma": rand(DIM, scale=0.5),
        }
        if swiglu:  # the hub's SwiGLUFFNFused: hidden = 2/3 of 4·D, rounded up to a multiple of 8
            swiglu_hidden = (int(hidden * 2 / 3) + 7) // 8 * 8
            state |= {
                b + "mlp.w12.weight": rand(2 * swiglu_hidden, DIM, scale=0.2),
                b + "mlp.w12.bias": rand(2 * swiglu_hidden),
                b + "mlp.w3.weight": rand(DIM, swiglu_hidden, scale=0.2),
                b + "mlp.w3.bias": rand(DIM),
            }
        else:
            state |= {
                b + "mlp.fc1.weight": rand(hidden, DIM, scale=0.2),
                b + "mlp.fc1.bias": rand(hidden),
                b + "mlp.fc2.weight": rand(DIM, hidden, scale=0.2),
                b + "mlp.fc2.bias": rand(DIM),
            }
    state |= {"norm.weight": rand(DIM, mean=1.0), "norm.bias": rand(DIM)}
    return state


def hf_state_dict(hub: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The same tensors under transformers' Dinov2Model names (qkv split into q/k/v, w12 into gate/up)."""
    out = {
        "embeddings.cls_token": hub["cls_token"],
        "embeddings.mask_token": hub["mask_token"],
        "embeddings.position_embeddings": hub["pos_embed"],
        "embeddings.patch_embeddings.projection.weight": hub["patch_embed.proj.weight"],
        "embeddings.patch_embeddings.projection.bias": hub["patch_embed.proj.bias"],
        "layernorm.weight": hub["norm.weight"],
        "layernorm.bias": hub["norm.bias"],
    }
    for i in range(DEPTH):
        b, h = f"blocks.{i}.", f"encoder.layer.{i}."
        for kind in ("weight", "bias"):
            q, k, v = hub[b + f"attn.qkv.{kind}"].chunk(3)
            out |= {h + f"attention.q_proj.{kind}": q, h + f"attention.k_proj.{kind}": k}
            out |= {h + f"attention.v_proj.{kind}": v, h + f"attention.o_proj.{kind}": hub[b + f"attn.proj.{kind}"]}
            out |= {h + f"norm1.{kind}": hub[b + f"norm1.{kind}"], h + f"norm2.{kind}": hub[b + f"norm2.{kind}"]}
            if b + "mlp.w12.weight" in hub:
                gate, up = hub[b + f"mlp.w12.{kind}"].chunk(2)
                out |= {h + f"mlp.gate_proj.{kind}": gate, h + f"mlp.up_proj.{kind}": up}
                out[h + f"mlp.down_proj.{kind}"] = hub[b + f"mlp.w3.{kind}"]
            else:
                out |= {
                    h + f"mlp.fc1.{kind}": hub[b + f"mlp.fc1.{kind}"],
                    h + f"mlp.fc2.{kind}": hub[b + f"mlp.fc2.{kind}"],
                }
        out[h + "layer_scale1.lambda1"] = hub[b + "ls1.gamma"]
        out[h + "layer_scale2.lambda1"] = hub[b + "ls2.gamma"]
    return out


def hf_reference(hub: dict[str, torch.Tensor], side: int, swiglu: bool) -> Dinov2Model:
    config = Dinov2Config(
        hidden_size=DIM,
        num_hidden_layers=DEPTH,
        num_attention_heads=HEADS,
        mlp_ratio=4,
        patch_size=PATCH,
        image_size=side * PATCH,
        layerscale_value=1.0,
        layer_norm_eps=1e-6,
        use_swiglu_ffn=swiglu,
    )
    model = Dinov2Model(config).eval()
    model.load_state_dict(hf_state_dict(hub), strict=True)
    return model


def install_hub_interpolation(model: Dinov2Model) -> None:
    """Make the HF model add position embeddings the way the hub's `interpolate_pos_encoding` does, at run time:
    bicubic from the stored grid with scale factor (new + 0.1) / old, no antialiasing, in float32."""
    embeddings = model.embeddings

    def hub_rule(tokens: torch.Tensor, height: int, width: int) -> torch.Tensor:
        table = embeddings.position_embeddings.float()
        old = math.isqrt(table.shape[1] - 1)
        rows, cols = height // PATCH, width // PATCH
        if rows * cols == old * old and height == width:
            return embeddings.position_embeddings
        grid = table[:, 1:].reshape(1, old, old, -1).permute(0, 3, 1, 2)
        grid = F.interpolate(
            grid, scale_factor=((rows + 0.1) / old, (cols + 0.1) / old), mode="bicubic", antialias=False
        )
        assert grid.shape[-2:] == (rows, cols)
        return torch.cat([table[:, :1], grid.permute(0, 2, 3, 1).reshape(1, rows * cols, -1)], dim=1)

    embeddings.interpolate_pos_encoding = hub_rule


def served_encoder(checkpoint: Path, swiglu: bool) -> SpatialEncoder:
    """The service's DINOv2 over `checkpoint`, built from a profile as Triton builds it."""
    overrides = {
        "random_weights": False,
        "spatial": {
            "variant": "vitg14" if swiglu else "vits14",  # the giant is the hub's SwiGLU variant
            "checkpoint": str(checkpoint),
            "overrides": {"embed_dim": DIM, "depth": DEPTH, "num_heads": HEADS},
            "dim": DIM,
        },
    }
    return build_spatial(get_profile("tiny", overrides))


def frames(seed: int = 1) -> torch.Tensor:
    return torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(seed))


def served_tokens(encoder: SpatialEncoder, pixels: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return encoder(pixels[:, None])  # two items of one frame each: [2, 256, D]


def hub_tokens(model: Dinov2Model, pixels: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(pixel_values=pixels).last_hidden_state[:, 1:]


def write(state: dict[str, torch.Tensor], path: Path) -> Path:
    if path.suffix == ".safetensors":
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:
        torch.save(state, path)
    return path


@pytest.mark.parametrize("swiglu", [False, True], ids=["mlp", "swiglu"])
@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_16x16_grid_matches_hub_patch_tokens(tmp_path: Path, swiglu: bool, suffix: str) -> None:
    """Case (a): a checkpoint whose grid is already 16×16 — no interpolation anywhere; same network, same tokens."""
    hub = hub_state_dict(side=16, swiglu=swiglu)
    encoder = served_encoder(write(hub, tmp_path / f"dinov2{suffix}"), swiglu)
    pixels = frames()
    ours, reference = served_tokens(encoder, pixels), hub_tokens(hf_reference(hub, 16, swiglu), pixels)
    assert ours.shape == reference.shape == (2, 256, DIM)
    assert (ours - reference).abs().max().item() <= TOLERANCE


@pytest.mark.parametrize("swiglu", [False, True], ids=["mlp", "swiglu"])
def test_37x37_grid_matches_hub_runtime_interpolation(tmp_path: Path, swiglu: bool) -> None:
    """Case (b): the hub's own 37×37 grid (518 px) at 224 px. The service resamples once at load; the reference
    interpolates at run time by the hub's rule. Same embeddings, same tokens."""
    hub = hub_state_dict(side=37, swiglu=swiglu)
    encoder = served_encoder(write(hub, tmp_path / "dinov2_pretrain.pth"), swiglu)
    reference = hf_reference(hub, 37, swiglu)
    install_hub_interpolation(reference)
    pixels = frames()
    assert (served_tokens(encoder, pixels) - hub_tokens(reference, pixels)).abs().max().item() <= TOLERANCE


def test_37x37_grid_other_resampling_rules_differ(tmp_path: Path) -> None:
    """Why the service does not use timm's loader or HF's interpolation: with a 37×37 grid, both give tokens far
    from the hub's (hybrid/README.md "DINOv2 features" quotes these sizes, measured on these random weights)."""
    import timm
    from timm.models.vision_transformer import checkpoint_filter_fn

    hub = hub_state_dict(side=37)
    pixels = frames()
    served = served_tokens(served_encoder(write(hub, tmp_path / "dinov2.pth"), False), pixels)

    timm_default = timm.create_model(
        "vit_small_patch14_dinov2", img_size=224, embed_dim=DIM, depth=DEPTH, num_heads=HEADS
    ).eval()
    timm_default.load_state_dict(checkpoint_filter_fn(dict(hub), timm_default), strict=True)
    with torch.no_grad():
        timm_tokens = timm_default.forward_features(pixels)[:, 1:]
    hf_own = hub_tokens(hf_reference(hub, 37, False), pixels)  # HF's interpolation: by size, no antialias

    for other in (timm_tokens, hf_own):
        difference = (other - served).abs()
        assert difference.mean().item() > 1e-3 and difference.max().item() > 0.05


def test_timm_layout_file_gives_the_same_tokens(tmp_path: Path) -> None:
    """timm's own layout (no mask_token; what the `.lvd142m` weights on the HF hub hold) loads through the same
    path with the same resampling, so the default full profile also gives the hub's tokens."""
    hub = hub_state_dict(side=37, swiglu=True)
    timm_layout = {
        k.replace("mlp.w12", "mlp.fc1").replace("mlp.w3", "mlp.fc2"): v for k, v in hub.items() if k != "mask_token"
    }
    pixels = frames()
    a = served_tokens(served_encoder(write(hub, tmp_path / "hub.pth"), True), pixels)
    b = served_tokens(served_encoder(write(timm_layout, tmp_path / "timm.safetensors"), True), pixels)
    torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (
            lambda s: s.update({"blocks.0.attn.qkvx.weight": s.pop("blocks.0.attn.qkv.weight")}),
            "blocks.0.attn.qkvx.weight",
        ),
        (lambda s: s.pop("blocks.1.ls2.gamma"), "missing key 'blocks.1.ls2.gamma'"),
        (lambda s: s.update({"norm.weight": torch.ones(DIM + 1)}), "key 'norm.weight' has shape (49,)"),
        (lambda s: s.update({"pos_embed": torch.zeros(1, 1 + 37 * 36, DIM)}), "not a square grid"),
        (lambda s: s.update({"register_tokens": torch.zeros(1, 4, DIM)}), "unexpected key 'register_tokens'"),
    ],
    ids=["renamed", "missing", "shape", "grid", "registers"],
)
def test_wrong_checkpoint_names_the_key(
    tmp_path: Path, edit: Callable[[dict[str, torch.Tensor]], object], message: str
) -> None:
    state = hub_state_dict(side=37)
    edit(state)
    path = write(state, tmp_path / "wrong.pth")
    with pytest.raises(CheckpointError, match=message.replace("(", r"\(").replace(")", r"\)")) as caught:
        served_encoder(path, swiglu=False)
    assert path.name in str(caught.value)


def test_wrong_variant_names_the_first_mismatching_key(tmp_path: Path) -> None:
    path = write(hub_state_dict(side=37), tmp_path / "small.pth")
    with pytest.raises(CheckpointError, match=r"key 'blocks\.0\.mlp\.fc1\.weight' has shape \(192, 48\)"):
        served_encoder(path, swiglu=True)  # an MLP checkpoint into the SwiGLU giant


class NotATensor:
    """Anything a plain state dict does not hold: `weights_only=True` refuses to build it."""


def test_reader_refuses_pickled_objects_and_non_tensors(tmp_path: Path) -> None:
    torch.save({"cls_token": torch.zeros(1), "extra": NotATensor()}, tmp_path / "pickle.pth")
    with pytest.raises(CheckpointError, match="not a plain torch state dict"):
        read_state_dict(tmp_path / "pickle.pth")
    torch.save({"cls_token": torch.zeros(1), "epoch": 3}, tmp_path / "epoch.pth")
    with pytest.raises(CheckpointError, match="key 'epoch' is not a tensor"):
        read_state_dict(tmp_path / "epoch.pth")
    with pytest.raises(CheckpointError, match="is not a file"):
        read_state_dict(tmp_path / "absent.safetensors")
