"""One Triton model repository per deployment target, all with the same ensembles and the same tensor contract.

| target        | spatial_encoder, fusion, vlm_adapter, spatial_adapter                   | where it runs            |
|---------------|--------------------------------------------------------------------------|--------------------------|
| `embedded`    | Python backend running `<model>/1/model.onnx` with onnxruntime           | the bundled tritonserver |
| `onnxruntime` | `platform: "onnxruntime_onnx"`, `<model>/1/model.onnx`                   | NGC Triton images        |
| `tensorrt`    | `platform: "tensorrt_plan"`, `<model>/1/model.plan` (KIND_GPU)           | NGC Triton, same release |
| `torch`       | the Python-backend torch models of `export.repository`                   | anywhere                 |

preprocess, vlm_encoder and video_decoder stay Python-backend torch models in every target, and every ensemble
is `export.repository`'s, unchanged: each target only swaps how four composing models are implemented, behind
the same names, data types and dims (`hybrid.contracts.model_specs`). The exported graphs present exactly those
dims with the batch dimension first, so the native configs carry `max_batch_size` like the Python ones.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

from tritonclient.grpc.model_config_pb2 import ModelConfig

from export.exportable import EXPORTED_MODELS
from export.repository import (
    Repository,
    RepositoryOptions,
    add_instance_group,
    build_repository,
    python_model_config,
    set_io,
    set_parameters,
)
from hybrid.contracts import MAX_BATCH_SIZE, ModelSpec, model_specs
from hybrid.profiles import RUNTIMES, get_profile

TARGETS: tuple[str, ...] = ("embedded", "onnxruntime", "tensorrt", "torch")
PRECISIONS: dict[str, tuple[str, ...]] = {
    # onnxruntime's CPU provider has no bf16 kernels: ONNX files are fp32 or fp16.
    "embedded": ("fp32", "fp16"),
    "onnxruntime": ("fp32", "fp16"),
    "tensorrt": ("fp16", "bf16", "fp32"),
    "torch": ("fp32", "fp16", "bf16"),
}
"""Precisions per target; the first is the default, except `torch`, whose default is the profile's own dtype."""
ARTIFACT_FILES: dict[str, str] = {"embedded": "model.onnx", "onnxruntime": "model.onnx", "tensorrt": "model.plan"}
"""Where each target's exported file lies inside `<model>/1/` (Triton's default_model_filename for natives)."""
PLATFORMS: dict[str, str] = {"onnxruntime": "onnxruntime_onnx", "tensorrt": "tensorrt_plan"}
TORCH_DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}


@dataclass(frozen=True)
class TargetOptions:
    target: str = "embedded"
    precision: str | None = None  # None: the target's default
    repository: RepositoryOptions = RepositoryOptions()
    exported: tuple[str, ...] = EXPORTED_MODELS  # the models this target replaces (all four unless narrowed)
    ort_intra_op_threads: int = 0  # embedded: onnxruntime threads per model (0 = one per core)
    runtime: str | None = None  # torch: "compiled" or "eager" (hybrid.acceleration); None keeps the profile's

    def __post_init__(self) -> None:
        if self.target not in TARGETS:
            raise ValueError(f"unknown target {self.target!r}; choose one of {', '.join(TARGETS)}")
        if self.precision is not None and self.precision not in PRECISIONS[self.target]:
            raise ValueError(
                f"the {self.target} target takes precision {' or '.join(PRECISIONS[self.target])}, not "
                f"{self.precision}" + (" (onnxruntime runs no bf16 on the CPU)" if self.precision == "bf16" else "")
            )
        if set(self.exported) - set(EXPORTED_MODELS):
            raise ValueError(f"only {', '.join(EXPORTED_MODELS)} are exported")
        if self.runtime is not None and self.target != "torch":
            raise ValueError("the runtime is a torch-target option (TensorRT and onnxruntime schedule their own)")
        if self.runtime not in (None, *RUNTIMES):
            raise ValueError(f"unknown runtime {self.runtime!r}; choose one of {', '.join(RUNTIMES)}")

    @property
    def resolved_precision(self) -> str | None:
        """The precision in effect; None for a torch target that keeps the profile's dtype."""
        if self.precision is not None or self.target == "torch":
            return self.precision
        return PRECISIONS[self.target][0]

    @property
    def onnx_precision(self) -> str:
        """The precision of the ONNX files: TensorRT builds from fp32 ONNX and applies fp16/bf16 as flags."""
        return "fp32" if self.target == "tensorrt" else str(self.resolved_precision)


def torch_repository_options(options: TargetOptions) -> RepositoryOptions:
    """The repository options of the Python-backend models: a torch target's precision becomes the profile dtype
    (applied on a GPU only: `hybrid.runtime.for_device` keeps fp32 on a CPU) and its runtime the profile runtime,
    both through the models' profile overrides."""
    if options.target != "torch" or (options.precision is None and options.runtime is None):
        return options.repository
    overrides = json.loads(options.repository.profile_overrides or "{}")
    if options.precision is not None:
        overrides["dtype"] = TORCH_DTYPES[options.precision]
    if options.runtime is not None:
        overrides["runtime"] = options.runtime
    return dataclasses.replace(options.repository, profile_overrides=json.dumps(overrides, sort_keys=True))


def native_model_config(spec: ModelSpec, platform: str, options: RepositoryOptions) -> ModelConfig:
    """The config of an `onnxruntime_onnx` or `tensorrt_plan` model: the contract's tensors, batch first."""
    filename = ARTIFACT_FILES["tensorrt" if platform == PLATFORMS["tensorrt"] else "onnxruntime"]
    config = ModelConfig(
        name=spec.name, platform=platform, max_batch_size=MAX_BATCH_SIZE, default_model_filename=filename
    )
    set_io(config, spec.inputs, spec.outputs)
    if spec.dynamic_batching:
        config.dynamic_batching.max_queue_delay_microseconds = options.max_queue_delay_us
    # Triton's TensorRT backend runs on GPUs only.
    add_instance_group(config, "KIND_GPU" if platform == PLATFORMS["tensorrt"] else options.instance_kind)
    return config


def embedded_model_config(spec: ModelSpec, options: TargetOptions) -> ModelConfig:
    """The config of a Python-backend model that runs the exported ONNX with onnxruntime."""
    config = python_model_config(spec, options.repository)
    params = {
        "onnx_file": ARTIFACT_FILES["embedded"],
        "onnx_precision": options.onnx_precision,
        "ort_intra_op_threads": str(options.ort_intra_op_threads),
    }
    set_parameters(config, params)
    return config


def build_target(options: TargetOptions) -> Repository:
    """The target's repository: `export.repository`'s, with the exported models swapped in (`torch`: as it is)."""
    repository_options = torch_repository_options(options)
    repository = build_repository(repository_options)
    if options.target == "torch":
        return repository
    profile = get_profile(repository_options.profile, json.loads(repository_options.profile_overrides or "{}"))
    specs = model_specs(profile.vlm.dim, profile.spatial.dim)
    for name in options.exported:
        if options.target == "embedded":
            repository.configs[name] = embedded_model_config(specs[name], options)
            repository.adapters[name] = "OnnxRuntimeModel"
        else:
            repository.configs[name] = native_model_config(specs[name], PLATFORMS[options.target], repository_options)
            del repository.adapters[name]
    return repository


def render_target(options: TargetOptions) -> dict[str, str]:
    """Relative path → content of every text file of the target's repository (configs, model.py adapters,
    ensembles). The exported artifacts are binary and written by `python -m export`, at
    `<model>/1/<ARTIFACT_FILES[target]>`."""
    return build_target(options).files()


def artifact_paths(options: TargetOptions, out: Path) -> dict[str, Path]:
    """Exported model → the file the target's repository expects for it (none for `torch`)."""
    if options.target == "torch":
        return {}
    return {name: out / name / "1" / ARTIFACT_FILES[options.target] for name in options.exported}
