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
from collections.abc import Hashable
from pathlib import Path
from typing import Any

import torch
from torch.utils.dlpack import from_dlpack, to_dlpack

from hybrid.profiles import Profile, get_profile
from hybrid.runtime import for_device, resolve_device

log = logging.getLogger(__name__)


def _pb():
    """triton_python_backend_utils exists only inside the backend stub's interpreter."""
    import triton_python_backend_utils as pb_utils

    return pb_utils


class ClientError(ValueError):
    """A request the client got wrong (bad media, bad parameters): answered as INVALID_ARGUMENT."""


class TorchModel:
    """Base: reads the profile from config.pbtxt parameters, builds the network, batches requests."""

    def initialize(self, args: dict[str, Any]) -> None:
        config = json.loads(args["model_config"])
        params = {k: v.get("string_value", "") for k, v in config.get("parameters", {}).items()}
        self.name = config["name"]
        self.device = resolve_device(params.get("device", "auto"))
        overrides = json.loads(params.get("profile_overrides") or "{}")
        self.profile: Profile = for_device(get_profile(params.get("profile", "tiny"), overrides), self.device)
        if params.get("torch_threads"):
            torch.set_num_threads(int(params["torch_threads"]))
        self.input_names = [t["name"] for t in config["input"]]
        self.output_names = [t["name"] for t in config["output"]]
        self.build()
        log.info("%s ready: profile %s on %s (%s)", self.name, self.profile.name, self.device, self.profile.dtype)

    def build(self) -> None:
        raise NotImplementedError

    def forward(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """A batch of stacked inputs → outputs with the same leading batch dimension."""
        raise NotImplementedError

    def group_key(self, inputs: dict[str, torch.Tensor]) -> Hashable:
        """Requests with equal keys are stacked into one batch: by default, equal input shapes."""
        return tuple(tuple(t.shape) for t in inputs.values())

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
                stacked = {n: torch.cat([decoded[i][n] for i in indices]).to(self.device) for n in self.input_names}
                outputs = self.forward(stacked)
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


class PreprocessModel(TorchModel):
    """Encoded media bytes → each encoder's input tensors (decode, resize, normalize, patchify)."""

    def build(self) -> None:
        from hybrid.media import MediaLimits
        from hybrid.preprocess import Preprocessor

        self.preprocessor = Preprocessor()
        self.limits = MediaLimits()
        self.device = torch.device("cpu")  # decoding and patchifying are CPU work

    def forward(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        from hybrid.media import MediaError, decode_media

        results = []
        for row in inputs["MEDIA"]:
            try:
                media = decode_media(row.numpy().tobytes(), self.limits)
            except MediaError as exc:
                raise ClientError(exc.message) from None
            results.append(self.preprocessor(media.frames))
        return {
            "VLM_PIXELS": torch.stack([torch.from_numpy(r.vlm_pixels) for r in results]),
            "VLM_GRID_THW": torch.stack([torch.from_numpy(r.vlm_grid_thw) for r in results]),
            "SPATIAL_PIXELS": torch.stack([torch.from_numpy(r.spatial_pixels) for r in results]),
        }


class VLMEncoderModel(TorchModel):
    def build(self) -> None:
        from hybrid.vlm import build_vlm

        self.vlm = build_vlm(self.profile, self.device)

    def forward(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {"VLM_TOKENS": self.vlm(inputs["VLM_PIXELS"], inputs["VLM_GRID_THW"])}


class SpatialEncoderModel(TorchModel):
    def build(self) -> None:
        from hybrid.spatial import build_spatial

        self.encoder = build_spatial(self.profile, self.device)

    @torch.inference_mode()
    def forward(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {"SPATIAL_TOKENS": self.encoder(inputs["SPATIAL_PIXELS"])}


class FusionHeadModel(TorchModel):
    """fusion, vlm_adapter or spatial_adapter: which one is the model's name in config.pbtxt."""

    def build(self) -> None:
        from hybrid.fusion import build_fusion_module

        self.head = build_fusion_module(self.name, self.profile, self.device)

    @torch.inference_mode()
    def forward(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {"CONDITIONING": self.head(inputs.get("VLM_TOKENS"), inputs.get("SPATIAL_TOKENS")).float()}


class VideoDecoderModel(TorchModel):
    def build(self) -> None:
        from hybrid.decoder import build_decoder

        self.decoder = build_decoder(self.profile, self.device)

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


class OnnxRuntimeModel(TorchModel):
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


class CudaGraphRunner:
    """Replays a CUDA graph of `fn` per input-shape signature, so a GPU model pays one launch instead of hundreds
    (DINOv2-L in bf16 at batch 1: 5.5–8 ms eager, 1.6 ms as a graph on an H200; export/results/cuda-graphs-h200.md).

    What it does, exactly: on the first call with a new combination of input shapes it warms `fn` up on a side
    stream, captures one graph into a memory pool shared by all graphs, and from then on copies the inputs into
    the graph's static buffers, replays it and returns a copy of the output. At most `max_graphs` shapes are
    captured (they share one memory pool, safe because each output is copied out right after its replay);
    further shapes run eagerly. Inputs must be CUDA tensors —
    callers fall back to eager on a CPU. Only for functions without host synchronization or data-dependent
    control flow (DINOv2, the fusion heads; not the Qwen vision tower, whose capture fails).
    """

    def __init__(self, fn, max_graphs: int = 8, warmup: int = 2) -> None:
        self.fn = fn
        self.max_graphs = max_graphs
        self.warmup = warmup
        self.graphs: dict[tuple, tuple[Any, tuple[torch.Tensor, ...], torch.Tensor]] = {}
        self.pool = None

    def __call__(self, *inputs: torch.Tensor) -> torch.Tensor:
        key = tuple((tuple(x.shape), x.dtype) for x in inputs)
        entry = self.graphs.get(key)
        if entry is None:
            if len(self.graphs) >= self.max_graphs:
                return self.fn(*inputs)
            entry = self.graphs[key] = self._capture(inputs)
        graph, static_inputs, static_output = entry
        for buffer, x in zip(static_inputs, inputs, strict=True):
            buffer.copy_(x)
        graph.replay()
        return static_output.clone()

    def _capture(self, inputs: tuple[torch.Tensor, ...]) -> tuple[Any, tuple[torch.Tensor, ...], torch.Tensor]:
        static_inputs = tuple(x.clone() for x in inputs)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(self.warmup):
                self.fn(*static_inputs)
        torch.cuda.current_stream().wait_stream(side)
        if self.pool is None:
            self.pool = torch.cuda.graph_pool_handle()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool):
            static_output = self.fn(*static_inputs)
        log.info("captured a CUDA graph for input shapes %s", [tuple(x.shape) for x in inputs])
        return graph, static_inputs, static_output


def _config_parameters(args: dict[str, Any]) -> dict[str, str]:
    config = json.loads(args["model_config"])
    return {k: v.get("string_value", "") for k, v in config.get("parameters", {}).items()}


class _CudaGraphSettings:
    """Reads `cuda_graph_max_shapes` (default 8) from config.pbtxt before the base class builds the model."""

    max_graphs: int = 8

    def initialize(self, args: dict[str, Any]) -> None:
        self.max_graphs = int(_config_parameters(args).get("cuda_graph_max_shapes") or 8)
        super().initialize(args)  # type: ignore[misc]


class CudaGraphSpatialEncoderModel(_CudaGraphSettings, SpatialEncoderModel):
    """SpatialEncoderModel replaying CUDA graphs on a GPU (`python -m export --target torch --cuda-graphs`);
    on a CPU it is SpatialEncoderModel, eager."""

    def build(self) -> None:
        super().build()
        self.graphs = CudaGraphRunner(self.encoder, self.max_graphs) if self.device.type == "cuda" else None

    @torch.inference_mode()
    def forward(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if self.graphs is None:
            return super().forward(inputs)
        return {"SPATIAL_TOKENS": self.graphs(inputs["SPATIAL_PIXELS"].contiguous())}


class CudaGraphFusionHeadModel(_CudaGraphSettings, FusionHeadModel):
    """FusionHeadModel replaying CUDA graphs on a GPU (`--cuda-graphs`); on a CPU it is FusionHeadModel, eager."""

    def build(self) -> None:
        super().build()
        kwargs = {"VLM_TOKENS": "vlm_tokens", "SPATIAL_TOKENS": "spatial_tokens"}
        names = [kwargs[n] for n in self.input_names]

        def head(*tokens: torch.Tensor) -> torch.Tensor:
            return self.head(**dict(zip(names, tokens, strict=True))).float()

        self.graphs = CudaGraphRunner(head, self.max_graphs) if self.device.type == "cuda" else None

    @torch.inference_mode()
    def forward(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if self.graphs is None:
            return super().forward(inputs)
        return {"CONDITIONING": self.graphs(*(inputs[n].contiguous() for n in self.input_names))}
