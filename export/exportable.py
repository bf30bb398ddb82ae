"""The four models that export to ONNX/TensorRT — spatial_encoder (DINOv2), fusion and the two adapters — each
built from `hybrid/` for a profile, wrapped so that its graph presents exactly the Triton contract.

Why a wrapper: the contract (hybrid/contracts.py) is FP32 in and out at every precision, and names the tensors.
The wrapper casts the FP32 inputs to the module's dtype and the output back to FP32 *inside* the graph, so an
fp16 export and an fp32 export have the same interface and the ensembles need no change.

The spatial encoder is exported as the whole [B, F, 3, 224, 224] → [B, F·256, D] module, batch and frame count
both dynamic — not as the per-frame backbone — because Triton's native `onnxruntime_onnx` and `tensorrt_plan`
models have no Python around them to do the reshape: the graph itself must present the contract's dims.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from hybrid.contracts import (
    IMAGE_SIZE,
    MAX_BATCH_SIZE,
    SPATIAL_PATCHES_PER_FRAME,
    SPATIAL_PIXELS,
    SPATIAL_TOKENS,
    VLM_TOKENS,
    ModelSpec,
    model_specs,
)
from hybrid.media import MediaLimits
from hybrid.profiles import Profile

EXPORTED_MODELS: tuple[str, ...] = ("spatial_encoder", "fusion", "vlm_adapter", "spatial_adapter")
"""The composing models that become ONNX/TensorRT artifacts; the others stay Python-backend torch models."""

DEFAULT_MAX_FRAMES = MediaLimits().max_frames
"""The gateway's default HYBRID_MAX_INPUT_FRAMES: the largest frame count the TensorRT profiles are built for."""

VLM_TOKENS_PER_FRAME_PAIR = 64
"""Qwen2.5-VL at 224×224 merges 2 frames × 16×16 patches into 64 visual tokens; an image counts as one (padded)
pair. The features hold more positions with the lab's full sequence: `VLMConfig.sequence_length`."""

_KWARG_OF_INPUT = {SPATIAL_PIXELS: "frames", VLM_TOKENS: "vlm_tokens", SPATIAL_TOKENS: "spatial_tokens"}


class ContractIO(nn.Module):
    """Positional FP32 inputs in the contract's order → the module in its own dtype → an FP32 output."""

    def __init__(self, module: nn.Module, input_names: tuple[str, ...], dtype: torch.dtype) -> None:
        super().__init__()
        self.module = module
        self.kwargs = tuple(_KWARG_OF_INPUT[name] for name in input_names)
        self.dtype = dtype

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        named = {kwarg: x.to(self.dtype) for kwarg, x in zip(self.kwargs, inputs, strict=True)}
        return self.module(**named).float()


@dataclass(frozen=True)
class ShapeRange:
    """One input's shapes (batch dimension included) for a TensorRT optimization profile."""

    min: tuple[int, ...]
    opt: tuple[int, ...]
    max: tuple[int, ...]


@dataclass(frozen=True)
class Exportable:
    """One exported model: its contract, how to build it, example inputs and the dynamic dimensions."""

    spec: ModelSpec
    build: Callable[[], nn.Module]  # the fp32 torch module from hybrid/, on the CPU, in eval mode
    max_frames: int
    vlm_length: Callable[[int], int]  # the VLM feature count for a frame count (`VLMConfig.sequence_length`)

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def input_names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.spec.inputs)

    @property
    def output_names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.spec.outputs)

    def wrap(self, module: nn.Module, dtype: torch.dtype) -> ContractIO:
        """The module ready for export at `dtype` (a copy when the dtype changes; the fp32 module stays intact
        as the parity reference)."""
        if dtype != torch.float32:
            module = copy.deepcopy(module).to(dtype)
        return ContractIO(module, self.input_names, dtype).eval()

    def inputs(self, batch: int, frames: int, generator: torch.Generator) -> tuple[torch.Tensor, ...]:
        """Random FP32 inputs for `batch` requests of `frames` frames: pixels as normalized frames (≈ N(0, 1)),
        tokens as unit-scale features. Token counts follow the frame count as the encoders' would."""
        out = []
        for tensor in self.spec.inputs:
            shape: tuple[int, ...]
            if tensor.name == SPATIAL_PIXELS:
                shape = (batch, frames, 3, IMAGE_SIZE, IMAGE_SIZE)
            elif tensor.name == VLM_TOKENS:
                shape = (batch, self.vlm_length(frames), tensor.dims[-1])
            else:
                shape = (batch, SPATIAL_PATCHES_PER_FRAME * frames, tensor.dims[-1])
            out.append(torch.randn(shape, generator=generator))
        return tuple(out)

    def dynamic_shapes(self) -> tuple[dict[int, object], ...]:
        """torch.export dimensions: batch everywhere; frames for pixels; the VLM token count free (64 per frame
        pair, but any count is valid); the spatial token count as 256 × frames, which the fusion's per-frame
        positional embedding needs (it reshapes to [B, F, 256, d])."""
        from torch.export import Dim

        # No upper bounds: the ONNX graph serves any size; TensorRT's limits are its profile (shape_ranges).
        batch, frames, vlm_tokens = Dim("batch", min=1), Dim("frames", min=1), Dim("vlm_tokens", min=1)
        dims: list[dict[int, object]] = []
        for tensor in self.spec.inputs:
            if tensor.name == SPATIAL_PIXELS:
                dims.append({0: batch, 1: frames})
            elif tensor.name == VLM_TOKENS:
                dims.append({0: batch, 1: vlm_tokens})
            else:
                dims.append({0: batch, 1: SPATIAL_PATCHES_PER_FRAME * frames})
        return tuple(dims)

    def shape_ranges(self) -> dict[str, ShapeRange]:
        """The TensorRT optimization profile: min one image, opt one image at batch 1 (the gateway sends one
        request at a time; the batcher stacks only equal shapes), max MAX_BATCH_SIZE × `max_frames`."""
        ranges = {}
        pairs = -(-self.max_frames // 2)
        for tensor in self.spec.inputs:
            one: tuple[int, ...]
            most: tuple[int, ...]
            if tensor.name == SPATIAL_PIXELS:
                one = (1, 1, 3, IMAGE_SIZE, IMAGE_SIZE)
                most = (MAX_BATCH_SIZE, self.max_frames, 3, IMAGE_SIZE, IMAGE_SIZE)
            elif tensor.name == VLM_TOKENS:
                width = tensor.dims[-1]
                one = (1, self.vlm_length(1), width)
                most = (MAX_BATCH_SIZE, self.vlm_length(2 * pairs), width)
            else:
                width = tensor.dims[-1]
                one = (1, SPATIAL_PATCHES_PER_FRAME, width)
                most = (MAX_BATCH_SIZE, SPATIAL_PATCHES_PER_FRAME * self.max_frames, width)
            ranges[tensor.name] = ShapeRange(one, one, most)
        return ranges


def exportables(
    profile: Profile, names: tuple[str, ...] = EXPORTED_MODELS, max_frames: int = DEFAULT_MAX_FRAMES
) -> list[Exportable]:
    """The exported models of `profile`, built in fp32 on the CPU (export and the parity reference both start
    from fp32; the export precision is applied by `Exportable.wrap`)."""
    from hybrid.fusion import build_fusion_module
    from hybrid.spatial import build_spatial

    fp32 = dataclasses.replace(profile, dtype="float32")
    specs = model_specs(profile.vlm.dim, profile.spatial.dim)
    unknown = set(names) - set(EXPORTED_MODELS)
    if unknown:
        raise ValueError(f"cannot export {sorted(unknown)}: only {', '.join(EXPORTED_MODELS)} are exported")

    def builder(name: str) -> Callable[[], nn.Module]:
        if name == "spatial_encoder":
            return lambda: build_spatial(fp32, "cpu")
        return lambda: build_fusion_module(name, fp32, "cpu")

    def vlm_length(frames: int) -> int:
        return profile.vlm.sequence_length(VLM_TOKENS_PER_FRAME_PAIR * -(-frames // 2))

    return [Exportable(specs[name], builder(name), max_frames, vlm_length) for name in names]
