"""Writes a Triton model repository from `hybrid.contracts` and a profile: every config.pbtxt, the thin
`model.py` adapters and the ensembles. The checked-in `model_repository/` is this module's output for the tiny
profile (a test keeps them equal); other profiles and devices are generated with

    python -m export.repository --profile full --profile-overrides '{"random_weights": true}' \
        --instance-kind KIND_GPU --out build/model_repository

Configs are Triton's own `ModelConfig` protobufs (the message tritonserver parses config.pbtxt into), printed with
`google.protobuf.text_format`: a field name or value Triton would refuse cannot be written, and tests inspect the
messages rather than parse text back. This is the `torch` target of `python -m export`; `export.targets` derives
the other targets from it.
"""

from __future__ import annotations

import argparse
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from google.protobuf import text_format
from tritonclient.grpc.model_config_pb2 import DataType, ModelConfig, ModelInput, ModelInstanceGroup, ModelOutput

from hybrid.contracts import (
    CONDITIONING,
    ENCODE_CHAINS,
    FRAMES,
    MAX_BATCH_SIZE,
    NUM_FRAMES,
    PIPELINES,
    SEED,
    STEPS,
    VIDEO,
    ModelSpec,
    TensorSpec,
    ensemble_name,
    model_specs,
)
from hybrid.profiles import get_profile

PYTHON_MODELS: dict[str, str] = {
    "preprocess": "PreprocessModel",
    "vlm_encoder": "VLMEncoderModel",
    "spatial_encoder": "SpatialEncoderModel",
    "fusion": "FusionHeadModel",
    "vlm_adapter": "FusionHeadModel",
    "spatial_adapter": "FusionHeadModel",
    "video_decoder": "VideoDecoderModel",
}
"""Each composing model's class in `hybrid.serving`."""


@dataclass(frozen=True)
class RepositoryOptions:
    profile: str = "tiny"
    profile_overrides: str = ""  # JSON, passed to the models as a config parameter
    instance_kind: str = "KIND_CPU"  # KIND_GPU on a GPU host
    # How long the batcher holds a request for more to batch with. None: under load requests queue while a model
    # is busy and batch anyway, while at low load every held microsecond is latency (1 ms per step before: 4 ms of
    # a one-frame hybrid reconstruction on an H200, benchmarks/results/gpu-h200/variant-compiled.json).
    max_queue_delay_us: int = 0
    # Composing models answered from Triton's response cache (`response_cache { enable: true }`; the server needs
    # `--cache-config`). None by default: the checked-in repository caches nothing.
    response_cache: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        unknown = sorted(set(self.response_cache) - set(PYTHON_MODELS))
        if unknown:
            choices = ", ".join(PYTHON_MODELS)
            raise ValueError(f"no composing model {', '.join(unknown)} to cache; choose from {choices}")


GPU_PREFERRED_BATCH_SIZES: tuple[int, ...] = (4, 8)
"""The batches the dynamic batcher aims for on a GPU: the compiled runtime's prepared sizes above 1."""

RAGGED_INPUT_MODELS: frozenset[str] = frozenset({"fusion", "vlm_adapter", "spatial_adapter"})
"""Python-backend heads that pad and mask token streams themselves (`FusionHeadModel.collate`): their token
inputs allow ragged batches, so an image's and a clip's requests share one execution."""


@dataclass
class Repository:
    """A model repository before it is written: each model's config, and for each Python-backend model the class
    in `hybrid.serving` that its `1/model.py` imports. Models without an adapter are ensembles or native models
    (onnxruntime, TensorRT), whose `1/` holds an exported file instead."""

    configs: dict[str, ModelConfig] = field(default_factory=dict)
    adapters: dict[str, str] = field(default_factory=dict)

    def files(self) -> dict[str, str]:
        """Relative path → file content."""
        files: dict[str, str] = {}
        for name, config in self.configs.items():
            files[f"{name}/config.pbtxt"] = config_text(config)
            if name in self.adapters:
                files[f"{name}/1/model.py"] = model_py_for(name, self.adapters[name])
            elif config.platform == "ensemble":
                # Triton needs a version directory for an ensemble too; git keeps it through this marker.
                files[f"{name}/1/.gitkeep"] = ""
        return files


def config_text(config: ModelConfig) -> str:
    """config.pbtxt: the message in protobuf text format, dims on one line as Triton's own examples write them."""
    return text_format.MessageToString(config, use_short_repeated_primitives=True)


def _set_tensor(tensor: ModelInput | ModelOutput, spec: TensorSpec) -> None:
    tensor.name = spec.name
    tensor.data_type = DataType.Value(f"TYPE_{spec.dtype}")
    tensor.dims.extend(spec.dims)


def set_io(config: ModelConfig, inputs: tuple[TensorSpec, ...], outputs: tuple[TensorSpec, ...]) -> None:
    """The contract's tensors as the config's inputs and outputs (dims without the batch dimension)."""
    for spec in inputs:
        _set_tensor(config.input.add(), spec)
    for spec in outputs:
        _set_tensor(config.output.add(), spec)


def set_parameters(config: ModelConfig, params: dict[str, str]) -> None:
    """String parameters, which the Python-backend models read from `args["model_config"]`."""
    for key, value in params.items():
        config.parameters[key].string_value = value


def add_instance_group(config: ModelConfig, kind: str, count: int = 1) -> None:
    config.instance_group.add(count=count, kind=ModelInstanceGroup.Kind.Value(kind))


def python_model_config(spec: ModelSpec, options: RepositoryOptions) -> ModelConfig:
    """The config of a Python-backend composing model."""
    config = ModelConfig(name=spec.name, backend="python", max_batch_size=MAX_BATCH_SIZE)
    set_io(config, spec.inputs, spec.outputs)
    if spec.name in RAGGED_INPUT_MODELS:
        for tensor in config.input:
            tensor.allow_ragged_batch = True
    gpu = options.instance_kind == "KIND_GPU"
    if spec.dynamic_batching:
        config.dynamic_batching.SetInParent()  # present even when every field keeps its default
        config.dynamic_batching.max_queue_delay_microseconds = options.max_queue_delay_us
        if gpu:
            # On a GPU the compiled models hold graphs for batches of 1, 4 and 8 (hybrid.acceleration): ask the
            # batcher for those sizes.
            config.dynamic_batching.preferred_batch_size.extend(GPU_PREFERRED_BATCH_SIZES)
    add_instance_group(config, options.instance_kind)
    params = {"profile": options.profile, "device": "auto"}
    if options.profile_overrides:
        params["profile_overrides"] = options.profile_overrides
    if spec.name != "preprocess":
        # Let GPU tensors from the previous step arrive without a copy to the host (DLPack handles both).
        params["FORCE_CPU_ONLY_INPUT_TENSORS"] = "no"
    if spec.name in options.response_cache:
        config.response_cache.enable = True
        if gpu:
            # Triton caches only responses whose outputs are in host memory: a cached GPU model replies from there.
            params["host_outputs"] = "yes"
    set_parameters(config, params)
    return config


def ensemble_config(kind: str, pipeline: str, specs: dict[str, ModelSpec]) -> ModelConfig:
    """`encode_<pipeline>` (media → conditioning) or `reconstruct_<pipeline>` (media → frames). Tensors are named
    after their contract names throughout the ensemble."""
    chain = list(ENCODE_CHAINS[pipeline]) + (["video_decoder"] if kind == "reconstruct" else [])
    by_name = {t.name: t for s in specs.values() for t in (*s.inputs, *s.outputs)}
    inputs = [by_name[FRAMES]] + ([by_name[n] for n in (NUM_FRAMES, STEPS, SEED)] if kind == "reconstruct" else [])
    output = by_name[VIDEO] if kind == "reconstruct" else by_name[CONDITIONING]
    config = ModelConfig(name=ensemble_name(kind, pipeline), platform="ensemble", max_batch_size=MAX_BATCH_SIZE)
    set_io(config, tuple(inputs), (output,))
    # Preprocess emits both encoders' inputs; a pipeline maps only what its chain consumes.
    consumed = {t.name for name in chain for t in specs[name].inputs}
    for name in chain:
        step = config.ensemble_scheduling.step.add(model_name=name, model_version=-1)
        for tensor in specs[name].inputs:
            step.input_map[tensor.name] = tensor.name
        for tensor in specs[name].outputs:
            if name != "preprocess" or tensor.name in consumed:
                step.output_map[tensor.name] = tensor.name
    return config


def model_py_for(name: str, class_name: str) -> str:
    """A model's `1/model.py`: one import of its class in `hybrid.serving`."""
    return (
        f'"""Triton Python-backend model `{name}`: a thin adapter over hybrid.serving."""\n\n'
        f"from hybrid.serving import {class_name} as TritonPythonModel\n\n"
        '__all__ = ["TritonPythonModel"]\n'
    )


def build_repository(options: RepositoryOptions) -> Repository:
    """Every composing model (Python backend) and the six ensembles."""
    profile = get_profile(options.profile, json.loads(options.profile_overrides or "{}"))
    specs = model_specs(profile.vlm.dim, profile.spatial.dim)
    repository = Repository()
    for name, spec in specs.items():
        repository.configs[name] = python_model_config(spec, options)
        repository.adapters[name] = PYTHON_MODELS[name]
    for kind in ("encode", "reconstruct"):
        for pipeline in PIPELINES:
            repository.configs[ensemble_name(kind, pipeline)] = ensemble_config(kind, pipeline, specs)
    return repository


def render(options: RepositoryOptions) -> dict[str, str]:
    """Relative path → file content of the whole repository."""
    return build_repository(options).files()


def write(options: RepositoryOptions, out: Path) -> list[Path]:
    """Write the repository into `out`, replacing the models it generates (other folders are left alone)."""
    return write_files(render(options), out)


def write_files(files: dict[str, str], out: Path) -> list[Path]:
    """Write rendered files (relative path → content) under `out`, replacing each model folder they touch."""
    for model in {p.split("/")[0] for p in files}:
        shutil.rmtree(out / model, ignore_errors=True)
    written = []
    for rel, content in sorted(files.items()):
        path = out / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content)
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="tiny")
    parser.add_argument("--profile-overrides", default="", help="JSON merged into the profile")
    parser.add_argument("--instance-kind", default="KIND_CPU", choices=["KIND_CPU", "KIND_GPU"])
    parser.add_argument("--out", type=Path, default=Path("model_repository"))
    parser.add_argument(
        "--response-cache", default="", help="comma-separated composing models to answer from Triton's response cache"
    )
    args = parser.parse_args(argv)
    cached = tuple(name for name in args.response_cache.split(",") if name)
    options = RepositoryOptions(args.profile, args.profile_overrides, args.instance_kind, response_cache=cached)
    paths = write(options, args.out)
    print(f"wrote {len(paths)} files under {args.out}")


if __name__ == "__main__":
    main()
