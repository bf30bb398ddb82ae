"""Profiles: every model's configuration and where its weights come from.

- `tiny`: the real architectures (the same classes) at tiny sizes with seeded random weights — the embedded
  default on CPU and in CI. Seeding makes every process that builds a family get identical weights, so Triton's
  outputs can be compared with the in-process reference pipeline.
- `full`: Qwen2.5-VL-7B, DINOv2 ViT-L/14 (B and g selectable), fusion d=1024 × 4 layers, LTX-Video 2B. Weights
  come from local paths or the Hugging Face cache (`HF_HUB_OFFLINE=1`); fusion and adapters from safetensors.
  `random_weights=True` builds them from config for latency benchmarks (latency does not depend on values).

Torch-free on purpose: the gateway reads profiles too.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from typing import Any

from hybrid.contracts import MAX_INPUT_FRAMES

SPATIAL_VARIANTS: dict[str, str] = {
    "vits14": "vit_small_patch14_dinov2",
    "vitb14": "vit_base_patch14_dinov2",
    "vitl14": "vit_large_patch14_dinov2",
    "vitg14": "vit_giant_patch14_dinov2",
}
"""timm architectures; pretrained tags are `<name>.lvd142m` on the Hugging Face hub (timm/ namespace)."""


@dataclass(frozen=True)
class VLMConfig:
    """Qwen2.5-VL as a feature extractor.

    `features` selects what the fusion sees:
    - "full_sequence" (the lab's): the chat-templated sequence — a user turn holding the image (or video) and the
      text `prompt` ("Describe."), generation prompt added — through the LLM; the states of every position.
    - "visual_tokens": only the visual-token positions, with no text around them.
    `layer` picks the hidden state: "final" (the normed last layer, `hidden_states[-1]`: the lab's), an LLM layer
    index k (after k decoder layers, 0 = input embeddings) or "vision" (the merger output, before the LLM;
    visual tokens only).
    With a checkpoint that ships a tokenizer, the template comes from its chat template; without one (random
    weights, the tiny profile) `template_ids` stands in: token ids before and after the vision block, of the
    real template's length for the full profile, so latency and shapes are those of the lab's features.
    """

    checkpoint: str | None = None  # local directory or hub id (resolved offline)
    features: str = "full_sequence"
    layer: str = "final"
    prompt: str = "Describe."
    template_ids: dict[str, list[int]] = field(default_factory=dict)  # {"before": [...], "after": [...]}
    text: dict[str, Any] = field(default_factory=dict)
    vision: dict[str, Any] = field(default_factory=dict)
    token_ids: dict[str, int] = field(default_factory=dict)

    @property
    def dim(self) -> int:
        return int(self.text["hidden_size"])

    @property
    def stand_in_template(self) -> tuple[list[int], list[int]]:
        """`template_ids` as (before, after)."""
        return list(self.template_ids.get("before", [])), list(self.template_ids.get("after", []))

    def sequence_length(self, visual_tokens: int, template: tuple[list[int], list[int]] | None = None) -> int:
        """Tokens the features hold for `visual_tokens` merged visual tokens (64 per 224² image or frame pair):
        the visual tokens alone, or with the vision markers and the template around them — `template` as
        `hybrid.vlm.feature_template` gives it (a real tokenizer's), else the stand-in `template_ids`."""
        if self.features == "visual_tokens" or self.layer == "vision":
            return visual_tokens
        before, after = template if template is not None else self.stand_in_template
        return len(before) + visual_tokens + 2 + len(after)


@dataclass(frozen=True)
class SpatialConfig:
    """DINOv2 through timm: patch tokens [B, 256, D] at 224×224."""

    variant: str = "vitl14"
    overrides: dict[str, Any] = field(default_factory=dict)  # timm kwargs (embed_dim, depth, …) for tiny
    checkpoint: str | None = None  # a local .safetensors file; else the HF cache under HF_HUB_OFFLINE
    dim: int = 1024


@dataclass(frozen=True)
class FusionConfig:
    """The lab's `HybridFusionModule` (hybrid.fusion): 64 learned queries through post-norm Transformer decoder
    layers over the projected [VLM; DINOv2] tokens, output [B, 64, 4096]. 77.5 M parameters at full size."""

    fusion_dim: int = 1024
    num_layers: int = 4
    nhead: int = 8
    num_queries: int = 64
    checkpoint: str | None = None  # a .safetensors state dict (`python -m hybrid.checkpoints` converts the lab's .pt)


@dataclass(frozen=True)
class AdapterConfig:
    """The lab's `DINOv2Adapter` (hybrid.fusion), used for both single-encoder baselines: `spatial_adapter` over
    DINOv2 tokens (the lab's E-P2.2) and `vlm_adapter` over VLM features (same architecture, input width 3584).
    212 M parameters at full size over DINOv2-L."""

    hidden_dim: int = 2048
    num_layers: int = 4
    nhead: int = 8
    num_tokens: int = 64
    vlm_checkpoint: str | None = None
    spatial_checkpoint: str | None = None


@dataclass(frozen=True)
class DecoderConfig:
    """LTX-Video without its text encoder: the conditioning goes in as prompt_embeds."""

    checkpoint: str | None = None  # a diffusers LTXPipeline directory (transformer/, vae/, scheduler/)
    transformer: dict[str, Any] = field(default_factory=dict)
    vae: dict[str, Any] = field(default_factory=dict)
    height: int = 224
    width: int = 224
    default_steps: int = 8
    max_frames: int = 33
    max_steps: int = 50


@dataclass(frozen=True)
class PrepareConfig:
    """The request shapes the compiled runtime prepares at load (`hybrid.acceleration`): one-frame requests at
    the batch sizes the batcher is asked for (a batch is padded up to the next), clips of every frame count up to
    `max_input_frames` in and every 8k+1 count up to the decoder's `max_frames` out at `clip_batch_sizes` (a
    batch of clips runs in chunks of those)."""

    batch_sizes: tuple[int, ...] = (1, 4, 8)
    clip_batch_sizes: tuple[int, ...] = (1,)
    max_input_frames: int = MAX_INPUT_FRAMES


@dataclass(frozen=True)
class Profile:
    name: str
    vlm: VLMConfig
    spatial: SpatialConfig
    fusion: FusionConfig
    adapter: AdapterConfig
    decoder: DecoderConfig
    random_weights: bool = False
    seed: int = 0
    dtype: str = "float32"  # "bfloat16" / "float16" on a GPU
    # "compiled": every model compiled or replayed as CUDA graphs, prepared at load (hybrid.acceleration);
    # "eager": plain PyTorch — for debugging and for the side-by-side measurement.
    runtime: str = "eager"
    compile_cache: str | None = None  # a persistent directory for Inductor's caches (TORCHINDUCTOR_CACHE_DIR)
    prepare: PrepareConfig = field(default_factory=PrepareConfig)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)


VLM_FEATURES: tuple[str, ...] = ("full_sequence", "visual_tokens")
RUNTIMES: tuple[str, ...] = ("eager", "compiled")
"""How the serving models run: plain PyTorch, or compiled / CUDA-graphed and prepared at load (hybrid.acceleration)."""

_QWEN_TEMPLATE_IDS = {
    # "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n" in Qwen2.5's vocabulary
    "before": [151644, 8948, 198, 2610, 525, 264, 10950, 17847, 13, 151645, 198, 151644, 872, 198],
    # "Describe.<|im_end|>\n<|im_start|>assistant\n": "Describe." as two tokens stands in for its ids
    "after": [74785, 13, 151645, 198, 151644, 77091, 198],
}
"""Qwen2.5-VL's chat template around the vision block, used only when no tokenizer is available (random
weights): same length as the real template, so the LLM runs the lab's sequence length."""

_QWEN_TOKEN_IDS = {
    "image_token_id": 151655,
    "video_token_id": 151656,
    "vision_start_token_id": 151652,
    "vision_end_token_id": 151653,
}


def tiny() -> Profile:
    """Tiny real architectures, random weights: quick to build and to serve on a CPU (their latency through the
    stack: benchmarks/results/serving-tiny-cpu.md)."""
    return Profile(
        name="tiny",
        random_weights=True,
        vlm=VLMConfig(
            text={
                "hidden_size": 64,
                "intermediate_size": 128,
                "num_hidden_layers": 2,
                "num_attention_heads": 4,
                "num_key_value_heads": 2,
                "vocab_size": 1024,
                "bos_token_id": 1004,
                "eos_token_id": 1005,
                "pad_token_id": 1006,
                "max_position_embeddings": 4096,
                "rope_scaling": {"type": "mrope", "mrope_section": [2, 3, 3]},
            },
            vision={
                "depth": 2,
                "hidden_size": 32,
                "intermediate_size": 64,
                "num_heads": 2,
                "out_hidden_size": 64,
                "patch_size": 14,
                "spatial_merge_size": 2,
                "temporal_patch_size": 2,
                "window_size": 56,
                "fullatt_block_indexes": [1],
            },
            template_ids={
                "before": [7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20],
                "after": [21, 13, 22, 23, 24],
            },
            token_ids={
                "image_token_id": 1000,
                "video_token_id": 1001,
                "vision_start_token_id": 1002,
                "vision_end_token_id": 1003,
            },
        ),
        spatial=SpatialConfig(variant="vits14", overrides={"embed_dim": 48, "depth": 2, "num_heads": 2}, dim=48),
        fusion=FusionConfig(fusion_dim=64, num_layers=2, nhead=4),
        adapter=AdapterConfig(hidden_dim=64, num_layers=2, nhead=4),
        decoder=DecoderConfig(
            transformer={
                "in_channels": 8,
                "out_channels": 8,
                "patch_size": 1,
                "patch_size_t": 1,
                "num_attention_heads": 2,
                "attention_head_dim": 16,
                "cross_attention_dim": 32,
                "num_layers": 1,
                "caption_channels": 4096,
            },
            vae={
                "in_channels": 3,
                "out_channels": 3,
                "latent_channels": 8,
                "block_out_channels": [8, 8, 8, 8],
                "decoder_block_out_channels": [8, 8, 8, 8],
                "layers_per_block": [1, 1, 1, 1, 1],
                "decoder_layers_per_block": [1, 1, 1, 1, 1],
                "spatio_temporal_scaling": [True, True, False, False],
                "decoder_spatio_temporal_scaling": [True, True, False, False],
                "decoder_inject_noise": [False, False, False, False, False],
                "upsample_residual": [False, False, False, False],
                "upsample_factor": [1, 1, 1, 1],
                "timestep_conditioning": False,
                "patch_size": 1,
                "patch_size_t": 1,
                "encoder_causal": True,
                "decoder_causal": False,
            },
            height=64,
            width=64,
            default_steps=4,
        ),
    )


def full(random_weights: bool = False, spatial_variant: str = "vitl14") -> Profile:
    """The lab's sizes. Architecture values mirror the public Qwen2.5-VL-7B-Instruct, DINOv2 and LTX-Video
    0.9 configs so that `random_weights` builds the same shapes a checkpoint would."""
    spatial_dims = {"vits14": 384, "vitb14": 768, "vitl14": 1024, "vitg14": 1536}
    return Profile(
        name="full",
        random_weights=random_weights,
        dtype="bfloat16",
        runtime="compiled",
        vlm=VLMConfig(
            checkpoint=None if random_weights else "Qwen/Qwen2.5-VL-7B-Instruct",
            text={
                "hidden_size": 3584,
                "intermediate_size": 18944,
                "num_hidden_layers": 28,
                "num_attention_heads": 28,
                "num_key_value_heads": 4,
                "vocab_size": 152064,
                "max_position_embeddings": 128000,
                "rms_norm_eps": 1e-6,
                "rope_theta": 1000000.0,
                "rope_scaling": {"type": "mrope", "mrope_section": [16, 24, 24]},
            },
            vision={
                "depth": 32,
                "hidden_size": 1280,
                "intermediate_size": 3420,
                "num_heads": 16,
                "out_hidden_size": 3584,
                "patch_size": 14,
                "spatial_merge_size": 2,
                "temporal_patch_size": 2,
                "window_size": 112,
                "fullatt_block_indexes": [7, 15, 23, 31],
                "tokens_per_second": 2,
            },
            template_ids={k: list(v) for k, v in _QWEN_TEMPLATE_IDS.items()},
            token_ids=dict(_QWEN_TOKEN_IDS),
        ),
        spatial=SpatialConfig(variant=spatial_variant, dim=spatial_dims[spatial_variant]),
        fusion=FusionConfig(),
        adapter=AdapterConfig(),
        decoder=DecoderConfig(
            checkpoint=None if random_weights else "Lightricks/LTX-Video",
            transformer={},  # diffusers' defaults are the 2B model
            vae={},  # diffusers' defaults are the LTX-Video 0.9 VAE
            height=224,
            width=224,
            default_steps=8,
        ),
    )


PROFILES = ("tiny", "full")


def get_profile(name: str, overrides: dict[str, Any] | None = None) -> Profile:
    """A profile by name, with nested overrides such as {"vlm": {"layer": "12"}, "random_weights": true}.

    `full` honours `random_weights` and `spatial.variant` in the overrides. HYBRID_PROFILE_OVERRIDES in the
    environment (JSON, or the path of a JSON file such as the one `python -m hybrid.checkpoints` writes) is applied
    after `overrides`, so a deployment can point at local weight paths without editing the model repository.
    """
    merged = dict(overrides or {})
    env = os.environ.get("HYBRID_PROFILE_OVERRIDES", "").strip()
    if env:
        merged = _deep_merge(merged, _read_overrides(env))
    if name == "tiny":
        base = tiny()
    elif name == "full":
        base = full(
            random_weights=bool(merged.get("random_weights", False)),
            spatial_variant=merged.get("spatial", {}).get("variant", "vitl14"),
        )
    else:
        raise ValueError(f"unknown profile {name!r}; choose one of {', '.join(PROFILES)}")
    return _apply(base, merged)


def _read_overrides(value: str) -> dict[str, Any]:
    """HYBRID_PROFILE_OVERRIDES: inline JSON (starts with "{") or a JSON file's path."""
    if not value.startswith("{"):
        with open(value, encoding="utf-8") as file:
            value = file.read()
    overrides = json.loads(value)
    if not isinstance(overrides, dict):
        raise ValueError("HYBRID_PROFILE_OVERRIDES must hold a JSON object")
    return overrides


def _deep_merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    out = dict(a)
    for k, v in b.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _apply(obj: Any, changes: dict[str, Any]) -> Any:
    """Return a copy of a (nested) frozen dataclass with `changes` applied; unknown keys are an error."""
    fields = {f.name for f in dataclasses.fields(obj)}
    updates = {}
    for key, value in changes.items():
        if key not in fields:
            raise ValueError(f"{type(obj).__name__} has no setting {key!r}")
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current) and isinstance(value, dict):
            updates[key] = _apply(current, value)
        elif isinstance(current, dict) and isinstance(value, dict):
            updates[key] = _deep_merge(current, value)
        else:
            updates[key] = value
    return dataclasses.replace(obj, **updates)
