"""Writes a Triton model repository from `hybrid.contracts` and a profile: every config.pbtxt, the thin
`model.py` adapters and the ensembles. The checked-in `model_repository/` is this module's output for the tiny
profile (a test keeps them equal); other profiles and devices are generated with

    python -m export.repository --profile full --profile-overrides '{"random_weights": true}' \
        --instance-kind KIND_GPU --out build/model_repository

This is the `torch` target of `python -m export`; `export.targets` derives the other targets from it.
"""

from __future__ import annotations

import argparse
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from hybrid.contracts import (
    CONDITIONING,
    ENCODE_CHAINS,
    MAX_BATCH_SIZE,
    MEDIA,
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
    max_queue_delay_us: int = 1000


GPU_PREFERRED_BATCH_SIZES: tuple[int, ...] = (4, 8)
"""The batches the dynamic batcher aims for on a GPU: the compiled runtime's prepared sizes above 1."""
PREPROCESS_GPU_HOST_INSTANCES = 4

RAGGED_INPUT_MODELS: frozenset[str] = frozenset({"fusion", "vlm_adapter", "spatial_adapter"})
"""Python-backend heads that pad and mask token streams themselves (`FusionHeadModel.collate`): their token
inputs allow ragged batches, so an image's and a clip's requests share one execution."""


def _tensor(spec: TensorSpec, ragged: bool = False) -> str:
    dims = ", ".join(str(d) for d in spec.dims)
    extra = "\n    allow_ragged_batch: true" if ragged else ""
    return f'  {{\n    name: "{spec.name}"\n    data_type: TYPE_{spec.dtype}\n    dims: [ {dims} ]{extra}\n  }}'


def io_block(key: str, specs: tuple[TensorSpec, ...], ragged: bool = False) -> str:
    return f"{key} [\n" + ",\n".join(_tensor(s, ragged) for s in specs) + "\n]\n"


def parameters_block(params: dict[str, str]) -> str:
    return "".join(
        f'parameters {{\n  key: "{k}"\n  value: {{ string_value: {json.dumps(v)} }}\n}}\n' for k, v in params.items()
    )


def python_model_config(spec: ModelSpec, options: RepositoryOptions) -> str:
    """config.pbtxt of a Python-backend composing model."""
    params = {"profile": options.profile, "device": "auto"}
    if options.profile_overrides:
        params["profile_overrides"] = options.profile_overrides
    if spec.name != "preprocess":
        # Let GPU tensors from the previous step arrive without a copy to the host (DLPack handles both).
        params["FORCE_CPU_ONLY_INPUT_TENSORS"] = "no"
    gpu = options.instance_kind == "KIND_GPU"
    # On a GPU the compiled models hold graphs for batches of 1, 4 and 8 (hybrid.acceleration): ask the batcher
    # for those sizes.
    preferred = f"  preferred_batch_size: [ {', '.join(map(str, GPU_PREFERRED_BATCH_SIZES))} ]\n" if gpu else ""
    batching = (
        f"dynamic_batching {{\n{preferred}  max_queue_delay_microseconds: {options.max_queue_delay_us}\n}}\n"
        if spec.dynamic_batching
        else ""
    )
    kind = "KIND_CPU" if spec.name == "preprocess" else options.instance_kind
    # Preprocess decodes media on the CPU, one request at a time: on a GPU host several instances keep it off
    # the critical path under load (a GPU host has the cores; the embedded CPU run has two).
    count = PREPROCESS_GPU_HOST_INSTANCES if gpu and spec.name == "preprocess" else 1
    return (
        f'name: "{spec.name}"\nbackend: "python"\nmax_batch_size: {MAX_BATCH_SIZE}\n'
        + io_block("input", spec.inputs, ragged=spec.name in RAGGED_INPUT_MODELS)
        + io_block("output", spec.outputs)
        + batching
        + f"instance_group [\n  {{\n    count: {count}\n    kind: {kind}\n  }}\n]\n"
        + parameters_block(params)
    )


def _step(model: ModelSpec) -> str:
    """One ensemble step; tensors are named after their contract names throughout the ensemble."""
    inputs = "".join(f'      input_map {{ key: "{t.name}" value: "{t.name}" }}\n' for t in model.inputs)
    outputs = "".join(f'      output_map {{ key: "{t.name}" value: "{t.name}" }}\n' for t in model.outputs)
    return f'    {{\n      model_name: "{model.name}"\n      model_version: -1\n{inputs}{outputs}    }}'


def ensemble_config(kind: str, pipeline: str, specs: dict[str, ModelSpec]) -> str:
    """`encode_<pipeline>` (media → conditioning) or `reconstruct_<pipeline>` (media → frames)."""
    chain = list(ENCODE_CHAINS[pipeline]) + (["video_decoder"] if kind == "reconstruct" else [])
    by_name = {t.name: t for s in specs.values() for t in (*s.inputs, *s.outputs)}
    inputs = [by_name[MEDIA]] + ([by_name[n] for n in (NUM_FRAMES, STEPS, SEED)] if kind == "reconstruct" else [])
    output = by_name[VIDEO] if kind == "reconstruct" else by_name[CONDITIONING]
    # Preprocess emits both encoders' inputs; a pipeline maps only what its chain consumes.
    consumed = {t.name for name in chain for t in specs[name].inputs}
    steps = []
    for name in chain:
        spec = specs[name]
        if name == "preprocess":
            spec = ModelSpec(spec.name, spec.inputs, tuple(t for t in spec.outputs if t.name in consumed), False)
        steps.append(_step(spec))
    return (
        f'name: "{ensemble_name(kind, pipeline)}"\nplatform: "ensemble"\nmax_batch_size: {MAX_BATCH_SIZE}\n'
        + io_block("input", tuple(inputs))
        + io_block("output", (output,))
        + "ensemble_scheduling {\n  step [\n"
        + ",\n".join(steps)
        + "\n  ]\n}\n"
    )


def model_py_for(name: str, class_name: str) -> str:
    """A model's `1/model.py`: one import of its class in `hybrid.serving`."""
    return (
        f'"""Triton Python-backend model `{name}`: a thin adapter over hybrid.serving."""\n\n'
        f"from hybrid.serving import {class_name} as TritonPythonModel\n\n"
        '__all__ = ["TritonPythonModel"]\n'
    )


def model_py(name: str) -> str:
    return model_py_for(name, PYTHON_MODELS[name])


def render(options: RepositoryOptions) -> dict[str, str]:
    """Relative path → file content of the whole repository."""
    profile = get_profile(options.profile, json.loads(options.profile_overrides or "{}"))
    specs = model_specs(profile.vlm.dim, profile.spatial.dim)
    files: dict[str, str] = {}
    for name, spec in specs.items():
        files[f"{name}/config.pbtxt"] = python_model_config(spec, options)
        files[f"{name}/1/model.py"] = model_py(name)
    for kind in ("encode", "reconstruct"):
        for pipeline in PIPELINES:
            name = ensemble_name(kind, pipeline)
            files[f"{name}/config.pbtxt"] = ensemble_config(kind, pipeline, specs)
            # Triton needs a version directory for an ensemble too; git keeps it through this marker.
            files[f"{name}/1/.gitkeep"] = ""
    return files


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
    args = parser.parse_args(argv)
    options = RepositoryOptions(args.profile, args.profile_overrides, args.instance_kind)
    paths = write(options, args.out)
    print(f"wrote {len(paths)} files under {args.out}")


if __name__ == "__main__":
    main()
