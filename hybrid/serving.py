"""Triton Python-backend models over the `hybrid` families. Each `model_repository/<name>/1/model.py` is one
import of a class below, so serving and export build from the same code.

Tensor I/O goes through DLPack only: the backend stub is built against numpy 1 and `as_numpy()` returns wrong
sizes under numpy 2 (NGC images), while DLPack works under both and keeps GPU tensors on the GPU.
Requests the dynamic batcher delivers together are stacked when their shapes (and decoder settings) agree, run as
one batch, and answered one by one; a request that fails gets its own error and never takes another's result.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Hashable
from pathlib import Path
from typing import Any

import torch
from torch.utils.dlpack import from_dlpack, to_dlpack

from hybrid.profiles import Profile, get_profile
from hybrid.runtime import for_device, instance_device

log = logging.getLogger(__name__)


def _pb():
    """triton_python_backend_utils exists only inside the backend stub's interpreter."""
    import triton_python_backend_utils as pb_utils

    return pb_utils


class ClientError(ValueError):
    """A request the client got wrong (bad media, bad parameters): answered as INVALID_ARGUMENT."""


class ServedModel:
    """Base of every Python-backend model here, whatever runs the network (PyTorch, or onnxruntime for the exported
    ones): reads the profile from config.pbtxt parameters, places the instance on its device, builds the network,
    stacks the requests the batcher delivers, and answers each one (or its own error)."""

    host_inputs: frozenset[str] = frozenset()
    """Inputs read on the host (shapes, settings): kept on the CPU, where reading them costs no device sync."""

    def initialize(self, args: dict[str, Any]) -> None:
        config = json.loads(args["model_config"])
        params = {k: v.get("string_value", "") for k, v in config.get("parameters", {}).items()}
        self.name = config["name"]
        self.device = instance_device(params.get("device", "auto"), args)
        if self.device.type == "cuda" and self.device.index is not None:
            torch.cuda.set_device(self.device)  # graphs, compiled kernels and allocations on this instance's GPU
        overrides = json.loads(params.get("profile_overrides") or "{}")
        self.profile: Profile = for_device(get_profile(params.get("profile", "tiny"), overrides), self.device)
        if params.get("torch_threads"):
            torch.set_num_threads(int(params["torch_threads"]))
        # Replies from host memory: Triton's response cache stores only responses whose outputs are on the host.
        self.host_outputs = params.get("host_outputs") == "yes"
        self.input_names = [t["name"] for t in config["input"]]
        self.output_names = [t["name"] for t in config["output"]]
        started = time.perf_counter()
        if self.profile.runtime == "compiled":
            from hybrid.acceleration import configure_cache

            configure_cache(self.profile.compile_cache)
        self.build()
        if self.compiled:
            from hybrid.acceleration import freeze

            freeze()  # prepared: from now on nothing compiles on a request's time
        log.info(
            "%s ready in %.1f s: profile %s on %s (%s, %s)",
            self.name,
            time.perf_counter() - started,
            self.profile.name,
            self.device,
            self.profile.dtype,
            self.profile.runtime,
        )

    @property
    def compiled(self) -> bool:
        return self.profile.runtime == "compiled"

    def run_batch(self, fn: Callable[..., torch.Tensor], *inputs: Any) -> torch.Tensor:
        """`fn` over a batch. In the compiled runtime `fn` is a `GraphedCall`, and the batch runs in the chunks its
        prepared batch sizes allow (padded up, or split), so it replays what was prepared at load; a shape it never
        prepared runs as it is. Eager runs the batch as it is."""
        from hybrid.acceleration import GraphedCall, run_chunked

        if not isinstance(fn, GraphedCall):
            return fn(*inputs)
        return run_chunked(fn, fn.batch_sizes(*inputs), *inputs)

    def build(self) -> None:
        raise NotImplementedError

    def forward(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """A batch of stacked inputs → outputs with the same leading batch dimension."""
        raise NotImplementedError

    def group_key(self, inputs: dict[str, torch.Tensor]) -> Hashable:
        """Requests with equal keys are stacked into one batch: by default, equal input shapes."""
        return tuple(tuple(t.shape) for t in inputs.values())

    def collate(self, requests: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        """One group's requests → the batch `forward` takes: by default each input concatenated on the device
        (host inputs on the CPU)."""
        return {
            n: torch.cat([r[n] for r in requests]).to("cpu" if n in self.host_inputs else self.device)
            for n in self.input_names
        }

    def execute(self, requests: list) -> list:
        pb = _pb()
        responses: list = [None] * len(requests)
        decoded: list[dict[str, torch.Tensor]] = []
        groups: dict[Hashable, list[int]] = {}
        for index, request in enumerate(requests):
            tensors = {n: from_dlpack(pb.get_input_tensor_by_name(request, n).to_dlpack()) for n in self.input_names}
            decoded.append(tensors)
            groups.setdefault(self.group_key(tensors), []).append(index)
        for indices in groups.values():
            try:
                outputs = self.forward(self.collate([decoded[i] for i in indices]))
                if self.device.type == "cuda":
                    # GPU work is asynchronous: wait for it here, so that Triton's compute_infer holds the model's
                    # GPU time and compute_output only the hand-off (the hand-off would wait for it anyway).
                    torch.cuda.current_stream(self.device).synchronize()
                if self.host_outputs:
                    outputs = {n: t.cpu() for n, t in outputs.items()}
                offset = 0
                for i in indices:
                    size = decoded[i][self.input_names[0]].shape[0]
                    responses[i] = pb.InferenceResponse(
                        output_tensors=[
                            pb.Tensor.from_dlpack(n, to_dlpack(outputs[n][offset : offset + size].contiguous()))
                            for n in self.output_names
                        ]
                    )
                    offset += size
            except Exception as exc:  # noqa: BLE001 - every failure must become this request's error reply
                client = isinstance(exc, ClientError)
                if not client:
                    log.exception("%s failed", self.name)
                error = _triton_error(pb, f"{self.name}: {exc}", client)
                for i in indices:
                    responses[i] = pb.InferenceResponse(output_tensors=[], error=error)
        return responses

    def finalize(self) -> None:
        log.info("%s unloaded", self.name)


def _triton_error(pb, message: str, client: bool):
    code = getattr(pb.TritonError, "INVALID_ARG" if client else "INTERNAL", None)
    return pb.TritonError(message) if code is None else pb.TritonError(message, code)


class PreprocessModel(ServedModel):
    """The gateway's decoded 224×224 uint8 frames → each encoder's input tensors (`hybrid.preprocess`), on the
    instance's device: a GPU on a GPU host, where the encoders take them without a copy."""

    def build(self) -> None:
        pass  # nothing to load: normalizing and patchifying are a few element-wise passes

    def forward(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        from hybrid.contracts import MAX_INPUT_FRAMES
        from hybrid.preprocess import preprocess

        frames = inputs["FRAMES"]
        if not 1 <= frames.shape[1] <= MAX_INPUT_FRAMES:  # Triton checks the rest of the shape and the dtype
            raise ClientError(f"FRAMES holds {frames.shape[1]} frames; 1 to {MAX_INPUT_FRAMES} are served")
        encoder_inputs = preprocess(frames)
        return {
            "VLM_PIXELS": encoder_inputs.vlm_pixels,
            "VLM_GRID_THW": encoder_inputs.vlm_grid_thw,
            "SPATIAL_PIXELS": encoder_inputs.spatial_pixels,
        }


class VLMEncoderModel(ServedModel):
    host_inputs = frozenset({"VLM_GRID_THW"})

    def build(self) -> None:
        from hybrid.vlm import build_vlm

        self.vlm = build_vlm(self.profile, self.device)
        if self.compiled:
            from hybrid.acceleration import accelerate_vlm

            accelerate_vlm(self.vlm, self.device, self.profile)

    def forward(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        from hybrid.acceleration import run_chunked

        pixels, grid_thw = inputs["VLM_PIXELS"], inputs["VLM_GRID_THW"]
        t, h, w = (int(v) for v in grid_thw[0].tolist())
        sizes = self.vlm.prepared.get((t, h, w), ())
        return {"VLM_TOKENS": run_chunked(self.vlm, sizes, pixels, grid_thw)}


class SpatialEncoderModel(ServedModel):
    def build(self) -> None:
        from hybrid.spatial import build_spatial

        self.encoder = build_spatial(self.profile, self.device)
        self.run: Callable[..., torch.Tensor] = self.encoder  # or its graphed call (below)
        if self.compiled:
            from hybrid.acceleration import accelerate_spatial

            self.run = accelerate_spatial(self.encoder, self.device, self.profile)

    @torch.inference_mode()
    def forward(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {"SPATIAL_TOKENS": self.run_batch(self.run, inputs["SPATIAL_PIXELS"].contiguous())}


class FusionHeadModel(ServedModel):
    """fusion, vlm_adapter or spatial_adapter (the lab's modules): which one is the model's name in config.pbtxt.

    Requests with different token counts (an image and a clip, say) share one batch: each stream is padded to the
    longest and masked out of attention, so a request's result does not depend on its batch-mates.
    """

    def build(self) -> None:
        from hybrid.fusion import build_fusion_module

        self.head = build_fusion_module(self.name, self.profile, self.device)
        self.run: Callable[..., torch.Tensor] = self.unmasked  # or its graphed call (below)
        if self.compiled:
            from hybrid.acceleration import accelerate_head

            self.run = accelerate_head(self.head, self.device, self.profile)

    def unmasked(self, vlm_tokens: torch.Tensor | None, spatial_tokens: torch.Tensor | None) -> torch.Tensor:
        """The head over a batch of one token count per stream (no padding)."""
        return self.head(vlm_tokens, spatial_tokens).float()

    def group_key(self, inputs: dict[str, torch.Tensor]) -> Hashable:
        return "all"  # every request fits one padded batch

    def collate(self, requests: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        from hybrid.fusion import pad_tokens

        batch: dict[str, torch.Tensor] = {}
        for name in self.input_names:
            rows = [row.to(self.device) for r in requests for row in r[name]]
            batch[name], mask = pad_tokens(rows)
            if mask is not None:
                batch[f"{name}_MASK"] = mask
        return batch

    @torch.inference_mode()
    def forward(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        vlm, spatial = inputs.get("VLM_TOKENS"), inputs.get("SPATIAL_TOKENS")
        if any(name.endswith("_MASK") for name in inputs):  # a padded batch of mixed token counts: no graphs
            masks = inputs.get("VLM_TOKENS_MASK"), inputs.get("SPATIAL_TOKENS_MASK")
            return {"CONDITIONING": self.head(vlm, spatial, *masks).float()}
        streams = [t.contiguous() if t is not None else None for t in (vlm, spatial)]
        return {"CONDITIONING": self.run_batch(self.run, *streams)}


class VideoDecoderModel(ServedModel):
    host_inputs = frozenset({"NUM_FRAMES", "STEPS", "SEED"})

    def build(self) -> None:
        from hybrid.decoder import build_decoder

        self.decoder = build_decoder(self.profile, self.device)
        if self.compiled:
            from hybrid.acceleration import accelerate_decoder

            accelerate_decoder(self.decoder, self.device, self.profile)

    def group_key(self, inputs: dict[str, torch.Tensor]) -> Hashable:
        # Only requests asking for the same frame count and steps can share one diffusion run.
        return (int(inputs["NUM_FRAMES"].flatten()[0]), int(inputs["STEPS"].flatten()[0]))

    def forward(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        cfg = self.profile.decoder
        frames, steps = int(inputs["NUM_FRAMES"].flatten()[0]), int(inputs["STEPS"].flatten()[0])
        if frames > cfg.max_frames:
            raise ClientError(f"at most {cfg.max_frames} frames can be decoded, asked for {frames}")
        if not 1 <= steps <= cfg.max_steps:
            raise ClientError(f"steps must be within 1..{cfg.max_steps}, got {steps}")
        seeds = [int(s) for s in inputs["SEED"].flatten().tolist()]
        video = self.decoder(inputs["CONDITIONING"], frames, steps, seeds)
        return {"VIDEO": torch.from_numpy(video)}


class OnnxRuntimeModel(ServedModel):
    """An exported model (spatial_encoder, fusion or an adapter) run by onnxruntime inside the Python backend:
    the `embedded` target of `python -m export`, for the bundled tritonserver, which has no ONNX Runtime backend.

    The ONNX file lives in the model's own version folder (`<model>/1/model.onnx`, parameter `onnx_file`), so
    an exported repository is self-contained. It keeps the contract's tensor names, FP32 in and out at every
    precision (an fp16 export casts inside the graph), so the ensembles are the torch repository's.
    """

    def initialize(self, args: dict[str, Any]) -> None:
        params = _config_parameters(args)
        version_dir = Path(args["model_repository"]) / str(args["model_version"])
        self.onnx_path = version_dir / (params.get("onnx_file") or "model.onnx")
        self.intra_op_threads = int(params.get("ort_intra_op_threads") or 0)
        super().initialize(args)

    def build(self) -> None:
        from hybrid.onnx_runtime import OnnxRunner

        self.runner = OnnxRunner(self.onnx_path, self.device.type, self.intra_op_threads)
        missing = set(self.input_names) - set(self.runner.input_names)
        if missing or set(self.output_names) - set(self.runner.output_names):
            raise RuntimeError(
                f"{self.onnx_path} has inputs {self.runner.input_names} and outputs {self.runner.output_names}; "
                f"config.pbtxt asks for {self.input_names} → {self.output_names}"
            )
        log.info("%s: %s on %s", self.name, self.onnx_path.name, ", ".join(self.runner.providers))
        # onnxruntime takes host arrays and copies to its device itself: stack the batch on the CPU.
        self.device = torch.device("cpu")

    def forward(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        outputs = self.runner(inputs)
        return {name: outputs[name] for name in self.output_names}


def _config_parameters(args: dict[str, Any]) -> dict[str, str]:
    config = json.loads(args["model_config"])
    return {k: v.get("string_value", "") for k, v in config.get("parameters", {}).items()}
