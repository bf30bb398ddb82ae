"""Qwen2.5-VL as a feature extractor: hidden states at the visual-token positions at a selectable layer."""

from __future__ import annotations

import torch
from torch import nn

from hybrid.profiles import Profile, VLMConfig


def build_qwen_config(cfg: VLMConfig):
    from transformers import Qwen2_5_VLConfig

    return Qwen2_5_VLConfig(text_config=dict(cfg.text), vision_config=dict(cfg.vision), **cfg.token_ids)


class VLMFeatureExtractor(nn.Module):
    """Runs Qwen2.5-VL over one image or video per batch item and returns [B, N, D] visual-token features.

    The LLM sees `[prompt] <vision_start> <image_pad|video_pad>×N <vision_end>`. The prompt comes before the
    visual tokens because attention is causal: text placed after them could not change their states. Without a
    tokenizer (tiny profile, bare checkpoints) the visual tokens stand alone.
    """

    def __init__(self, model: nn.Module, layer: str = "final", prompt_ids: list[int] | None = None) -> None:
        super().__init__()
        self.model = model  # transformers' Qwen2_5_VLModel (vision tower + language model, no LM head)
        self.config = model.config
        num_layers = self.config.text_config.num_hidden_layers
        if layer not in ("vision", "final") and not (layer.isdigit() and 0 <= int(layer) <= num_layers):
            raise ValueError(f"VLM layer must be 'vision', 'final' or 0..{num_layers}, got {layer!r}")
        self.layer = layer
        self.prompt_ids = list(prompt_ids or [])

    @property
    def dim(self) -> int:
        return int(self.config.text_config.hidden_size)

    @torch.inference_mode()
    def forward(self, pixel_values: torch.Tensor, grid_thw: torch.Tensor) -> torch.Tensor:
        """pixel_values [B, P, 1176], grid_thw [B, 3] (identical rows: one shape per batch) → [B, N, D]."""
        batch = pixel_values.shape[0]
        flat = pixel_values.reshape(-1, pixel_values.shape[-1]).to(self.model.visual.dtype)
        is_video = bool(grid_thw[0, 0] > 1)
        tokens_per_item = int(grid_thw[0].prod()) // self.config.vision_config.spatial_merge_size**2
        if self.layer == "vision":
            features = self.model.get_image_features(flat, grid_thw).pooler_output
            return torch.stack(list(features)).float()

        cfg = self.config
        visual_id = cfg.video_token_id if is_video else cfg.image_token_id
        ids = [*self.prompt_ids, cfg.vision_start_token_id, *[visual_id] * tokens_per_item, cfg.vision_end_token_id]
        input_ids = torch.tensor([ids] * batch, device=flat.device)
        visual = input_ids == visual_id
        # Without mm_token_type_ids transformers silently falls back to 1-D positions (wrong M-RoPE states).
        mm_token_type_ids = visual.int() * (2 if is_video else 1)
        kwargs = (
            {"pixel_values_videos": flat, "video_grid_thw": grid_thw}
            if is_video
            else {"pixel_values": flat, "image_grid_thw": grid_thw}
        )
        out = self.model(
            input_ids=input_ids,
            mm_token_type_ids=mm_token_type_ids,
            output_hidden_states=self.layer != "final",
            use_cache=False,
            **kwargs,
        )
        states = out.last_hidden_state if self.layer == "final" else out.hidden_states[int(self.layer)]
        return states[visual].reshape(batch, tokens_per_item, -1).float()


def build_vlm(profile: Profile, device: str | torch.device = "cpu") -> VLMFeatureExtractor:
    """Qwen2.5-VL for `profile`: seeded random weights, or the checkpoint loaded offline from a local path or
    the Hugging Face cache."""
    from transformers import Qwen2_5_VLModel

    cfg = profile.vlm
    dtype = getattr(torch, profile.dtype)
    prompt_ids: list[int] = []
    if profile.random_weights or cfg.checkpoint is None:
        torch.manual_seed(profile.seed)
        # Built on the target device in the target dtype: a 7B model initialized on a CPU in fp32 takes minutes.
        with torch.device(device):
            model = Qwen2_5_VLModel._from_config(build_qwen_config(cfg), dtype=dtype)
    else:
        model = Qwen2_5_VLModel.from_pretrained(cfg.checkpoint, dtype=dtype, local_files_only=True)
        if cfg.prompt:
            prompt_ids = _tokenize_prompt(cfg.checkpoint, cfg.prompt)
    return VLMFeatureExtractor(model.eval().to(device), cfg.layer, prompt_ids)


def _tokenize_prompt(checkpoint: str, prompt: str) -> list[int]:
    """Token ids of the prompt, or none when the checkpoint ships no tokenizer."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(checkpoint, local_files_only=True)
    except (OSError, ValueError):
        return []
    return list(tokenizer(prompt, add_special_tokens=False)["input_ids"])
