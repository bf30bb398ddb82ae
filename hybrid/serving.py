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
