"""Where a model runs: device and dtype choices shared by serving, the reference pipeline and benchmarks."""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from hybrid.profiles import Profile


def resolve_device(requested: str = "auto") -> torch.device:
    """ "auto" → the GPU when CUDA is present, the CPU otherwise; "cpu"/"cuda"/"cuda:1" as given."""
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(requested)


def instance_device(requested: str, args: dict[str, Any]) -> torch.device:
    """The device of one Triton model instance: "auto" on a KIND_GPU instance is the GPU Triton assigned it
    (`model_instance_device_id`: instances of a multi-GPU host spread over their GPUs); "auto" elsewhere is
    `resolve_device("auto")`; an explicit device is taken as given."""
    if requested == "auto" and args.get("model_instance_kind") == "GPU" and torch.cuda.is_available():
        return torch.device("cuda", int(args.get("model_instance_device_id", 0)))
    if requested == "auto" and args.get("model_instance_kind") == "CPU":
        return torch.device("cpu")
    return resolve_device(requested)


def for_device(profile: Profile, device: torch.device) -> Profile:
    """The profile with a dtype the device runs well: reduced precision only on a GPU (bf16 on a CPU is slow
    and changes results needlessly)."""
    if device.type == "cpu" and profile.dtype != "float32":
        return dataclasses.replace(profile, dtype="float32")
    return profile
