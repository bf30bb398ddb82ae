"""Qwen2.5-VL as a feature extractor: the lab's full chat-templated sequence, or the visual tokens alone."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from hybrid.profiles import VLM_FEATURES, Profile, VLMConfig

if TYPE_CHECKING:
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLModel


def build_qwen_config(cfg: VLMConfig) -> Qwen2_5_VLConfig:
    from transformers import Qwen2_5_VLConfig

    token_ids: dict[str, Any] = dict(cfg.token_ids)  # image/video/vision-marker ids, keyword arguments by name
    return Qwen2_5_VLConfig(text_config=dict(cfg.text), vision_config=dict(cfg.vision), **token_ids)


class VLMFeatureExtractor(nn.Module):
    """Runs Qwen2.5-VL over one image or video per batch item and returns [B, N, D] features.

    - `full_sequence` (the lab's features): the LLM sees `before <vision_start> <pad>×n <vision_end> after`,
      where `before`/`after` are the chat template's tokens around the vision block (system turn, user turn with
      the prompt "Describe.", generation prompt); every position's state is returned, N = len(before) + n + 2 +
      len(after) (`VLMConfig.sequence_length`).
    - `visual_tokens`: the LLM sees `<vision_start> <pad>×n <vision_end>` and only the n visual positions are
      returned.
    In a batch every item has the same grid (Triton stacks equal shapes only), hence the same length: no padding.
    """

    def __init__(
        self,
        model: Qwen2_5_VLModel,
        features: str = "full_sequence",
        layer: str = "final",
        template: tuple[list[int], list[int]] = ([], []),
    ) -> None:
        super().__init__()
        self.model = model  # transformers' Qwen2_5_VLModel (vision tower + language model, no LM head)
        self.config = model.config
        num_layers = self.config.get_text_config().num_hidden_layers
        if features not in VLM_FEATURES:
            raise ValueError(f"VLM features must be one of {', '.join(VLM_FEATURES)}, got {features!r}")
        if layer not in ("vision", "final") and not (layer.isdigit() and 0 <= int(layer) <= num_layers):
            raise ValueError(f"VLM layer must be 'vision', 'final' or 0..{num_layers}, got {layer!r}")
        if layer == "vision" and features == "full_sequence":
            raise ValueError("layer 'vision' has visual tokens only: use features 'visual_tokens' with it")
        self.features = features
        self.layer = layer
        self.before, self.after = (list(template[0]), list(template[1])) if features == "full_sequence" else ([], [])
        # The stages as called, batch-first: `accelerate_vlm` swaps in graphed calls of the same functions.
        self.vision: Callable[[torch.Tensor, tuple[int, int, int]], torch.Tensor] = self.encode_batch
        self.final_states: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = self.language_final_states
        self.prepared: dict[tuple[int, int, int], tuple[int, ...]] = {}  # grid → batch sizes with graphs
        self._vision_inputs: dict[tuple, dict[str, Any]] = {}
        self._sequences: dict[tuple, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}

    @property
    def dim(self) -> int:
        return int(self.config.get_text_config().hidden_size)

    def input_ids(self, visual_id: int, visual_tokens: int, batch: int, device: torch.device) -> torch.Tensor:
        cfg = self.config
        ids = [*self.before, cfg.vision_start_token_id, *[visual_id] * visual_tokens, cfg.vision_end_token_id]
        return torch.tensor([ids + self.after] * batch, device=device)

    def vision_inputs(self, grid: tuple[int, int, int], batch: int, device: torch.device) -> dict[str, Any]:
        """The vision tower's grid-only tensors for `batch` items of one grid, computed once per (grid, batch)
        (transformers' precomputed vision kwargs). Sequence boundaries stay on the CPU: the tower reads them with
        `.tolist()`, which on a GPU tensor would synchronize and make the tower impossible to capture as a CUDA
        graph."""
        key = (grid, batch, str(device))
        if key not in self._vision_inputs:
            from transformers.vision_utils import (
                get_vision_attention_seqlens,
                get_vision_position_ids,
                get_vision_window_index,
            )

            visual = self.model.visual
            cpu_grid = torch.tensor([grid] * batch)
            cu_seqlens, max_seqlen = get_vision_attention_seqlens(cpu_grid, visual.config)
            window_index, cu_window_seqlens = get_vision_window_index(
                cpu_grid, visual.spatial_merge_size, visual.window_size, visual.patch_size
            )
            self._vision_inputs[key] = {
                "position_ids": get_vision_position_ids(cpu_grid, visual.spatial_merge_size).to(device),
                "cu_seqlens": cu_seqlens,
                "max_seqlen": int(max_seqlen) if max_seqlen is not None else None,
                "window_index": window_index.to(device),
                "cu_window_seqlens": cu_window_seqlens,
                "max_window_seqlen": int((cu_window_seqlens[1:] - cu_window_seqlens[:-1]).max()),
            }
        return self._vision_inputs[key]

    def encode_batch(self, pixels: torch.Tensor, grid: tuple[int, int, int]) -> torch.Tensor:
        """The vision tower over [B, P, 1176] patches of B items of one grid → [B, n, D] merged tokens: one tower
        call for the batch (items attend only within themselves: the sequence boundaries say where each ends)."""
        batch = pixels.shape[0]
        kwargs = self.vision_inputs(grid, batch, pixels.device)
        flat = pixels.reshape(-1, pixels.shape[-1])
        merged = self.model.visual(flat, grid_thw=torch.tensor([grid] * batch), **kwargs).pooler_output
        return merged.reshape(batch, -1, merged.shape[-1])

    def sequence_inputs(
        self, is_video: bool, visual_tokens: int, batch: int, grid: tuple[int, int, int], device: torch.device
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(input_ids [B, L], visual-token mask [B, L], M-RoPE position ids [B, 3, L], batch-first like every
        input of a prepared call) of one sequence layout, built once: they depend on the template, the grid and the
        batch size only."""
        key = (is_video, visual_tokens, batch, grid, str(device))
        if key not in self._sequences:
            cfg = self.config
            visual_id = cfg.video_token_id if is_video else cfg.image_token_id
            input_ids = self.input_ids(visual_id, visual_tokens, batch, device)
            visual = input_ids == visual_id
            # Without mm_token_type_ids transformers silently falls back to 1-D positions (wrong M-RoPE states).
            mm_token_type_ids = visual.int() * (2 if is_video else 1)
            grid_thw = torch.tensor([grid] * batch, device=device)
            # transformers annotates these as the legacy LongTensor/IntTensor classes, which no tensor is.
            get_rope_index: Callable[..., tuple[torch.Tensor, torch.Tensor]] = self.model.get_rope_index
            positions, _ = get_rope_index(
                input_ids,
                mm_token_type_ids=mm_token_type_ids,
                image_grid_thw=None if is_video else grid_thw,
                video_grid_thw=grid_thw if is_video else None,
            )
            self._sequences[key] = (input_ids, visual, positions.transpose(0, 1).contiguous())
        return self._sequences[key]

    def language_final_states(self, embeds: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """The language model's normed last layer over the merged embeddings [B, L, D] (positions [B, 3, L]).

        The attention masks are given as already made, all None: with no padding every layer is plain causal
        attention (SDPA's `is_causal`), which is what transformers would build — but building it checks the
        positions for packed sequences with a host synchronization, which no CUDA graph can hold."""
        masks = {layer_type: None for layer_type in set(self.model.language_model.config.layer_types)}
        return self.model.language_model(
            inputs_embeds=embeds, position_ids=positions.transpose(0, 1), attention_mask=masks, use_cache=False
        ).last_hidden_state

    @torch.inference_mode()
    def forward(self, pixel_values: torch.Tensor, grid_thw: torch.Tensor) -> torch.Tensor:
        """pixel_values [B, P, 1176], grid_thw [B, 3] (identical rows: one shape per batch) → [B, N, D].

        The same computation as `Qwen2_5_VLModel.forward`, in three separable stages — vision tower, token
        embedding with the visual features scattered in, language model — so each can be compiled or captured
        (`hybrid.acceleration`) and the grid-only tensors are computed once per grid.
        """
        batch = pixel_values.shape[0]
        t, h, w = (int(v) for v in grid_thw[0].tolist())
        grid = (t, h, w)
        visual_embeds = self.vision(pixel_values.to(self.model.visual.dtype), grid)  # [B, n, D]
        if self.layer == "vision":
            return visual_embeds.float()

        visual_tokens = visual_embeds.shape[1]
        device = pixel_values.device
        input_ids, visual, positions = self.sequence_inputs(grid[0] > 1, visual_tokens, batch, grid, device)
        embeds = self.model.get_input_embeddings()(input_ids)
        embeds = embeds.masked_scatter(visual.unsqueeze(-1), visual_embeds.to(embeds.dtype))
        if self.layer == "final":
            # hidden_states[-1] is last_hidden_state (after the final norm): the lab's hidden_states[-1].
            states = self.final_states(embeds, positions)
        else:
            out = self.model.language_model(
                inputs_embeds=embeds,
                position_ids=positions.transpose(0, 1),
                output_hidden_states=True,
                use_cache=False,
            )
            states = out.hidden_states[int(self.layer)]
        if self.features == "full_sequence":
            return states.float()
        return states[visual].reshape(batch, visual_tokens, -1).float()


def build_vlm(profile: Profile, device: str | torch.device = "cpu") -> VLMFeatureExtractor:
    """Qwen2.5-VL for `profile`: seeded random weights, or the checkpoint loaded offline from a local path or
    the Hugging Face cache (its chat template supplies the prompt's tokens when it ships a tokenizer)."""
    from transformers import Qwen2_5_VLModel

    cfg = profile.vlm
    dtype = getattr(torch, profile.dtype)
    if profile.random_weights or cfg.checkpoint is None:
        torch.manual_seed(profile.seed)
        # Built on the target device in the target dtype: a 7B model initialized on a CPU in fp32 takes minutes.
        with torch.device(device):
            model = Qwen2_5_VLModel._from_config(build_qwen_config(cfg), dtype=dtype)
    else:
        model = Qwen2_5_VLModel.from_pretrained(cfg.checkpoint, dtype=dtype, local_files_only=True)
    return VLMFeatureExtractor(model.eval().to(device), cfg.features, cfg.layer, feature_template(profile))


def feature_template(profile: Profile) -> tuple[list[int], list[int]]:
    """The token ids around the vision block of the full-sequence features: the checkpoint's chat template when it
    ships one, else the profile's stand-in of the same length (random weights, bare checkpoints). The encoder and
    the heads that prepare graphs for its output length (`hybrid.serving.FusionHeadModel`) both ask here."""
    cfg = profile.vlm
    if profile.random_weights or cfg.checkpoint is None:
        return cfg.stand_in_template
    return chat_template_ids(cfg.checkpoint, cfg.prompt) or cfg.stand_in_template


def chat_template_ids(checkpoint: str, prompt: str) -> tuple[list[int], list[int]] | None:
    """The checkpoint's chat template for one user turn [image, `prompt`] with the generation prompt, as the
    token ids before `<|vision_start|>` and after `<|vision_end|>`; None when it ships no tokenizer.

    The template is the same for an image and a video apart from the pad token inside the vision block.
    """
    from transformers import AutoProcessor

    try:
        processor = AutoProcessor.from_pretrained(checkpoint, local_files_only=True)
    except (OSError, ValueError):
        return None
    tokenizer = getattr(processor, "tokenizer", None)
    if tokenizer is None or getattr(processor, "chat_template", None) is None:
        return None
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]
    text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
    start = ids.index(tokenizer.convert_tokens_to_ids("<|vision_start|>"))
    end = ids.index(tokenizer.convert_tokens_to_ids("<|vision_end|>"))
    return ids[:start], ids[end + 1 :]
