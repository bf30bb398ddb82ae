"""Export: the repository of every target (configs parse, ensembles resolve, contracts kept), the ONNX files
(interfaces, dynamic sizes, parity that can fail), the TensorRT target without TensorRT, and — end to end — the
service over an exported `embedded` repository answering like the torch-backed service.

Documented tolerance of the end-to-end comparison (ONNX fp32 against torch fp32, both on this CPU):
`/encode` conditioning within 1e-4 absolute + 1e-4 relative; `/reconstruct` uint8 frames within 1 level (the
decoder turns ~1e-6 differences of conditioning into at most one rounding step).
"""

from __future__ import annotations

import copy
import io
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import onnx
import pytest
import torch
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

import hybrid.serving
from export.exportable import EXPORTED_MODELS, exportables
from export.onnx_export import PARITY_BOUNDS, ParityError, check_parity, export_onnx, require_parity
from export.repository import (
    GPU_PREFERRED_BATCH_SIZES,
    RAGGED_INPUT_MODELS,
    RepositoryOptions,
    build_repository,
    render,
)
from export.targets import ARTIFACT_FILES, PLATFORMS, TARGETS, TargetOptions, build_target, render_target
from export.tensorrt_engine import trtexec_command
from hybrid import samples
from hybrid.contracts import ENSEMBLES, MAX_BATCH_SIZE, model_specs
from hybrid.profiles import get_profile
from service.local_stack import ROOT, Stack, StackError, running_stack

FULL = json.dumps({"random_weights": True})
ONNX_DTYPES = {"FP32": onnx.TensorProto.FLOAT}


def assert_ensembles_resolve(configs: dict[str, model_config_pb2.ModelConfig]) -> None:
    """Every step's input is produced earlier (or is an ensemble input) with the model's dtype and dims; every
    model input is mapped; every ensemble output is produced with its declared dims."""
    assert set(ENSEMBLES) <= set(configs)
    for name in ENSEMBLES:
        ensemble = configs[name]
        available = {t.name: t for t in ensemble.input}
        for step in ensemble.ensemble_scheduling.step:
            model = configs[step.model_name]
            assert model.max_batch_size == ensemble.max_batch_size, f"{step.model_name} batches differently"
            model_inputs = {t.name: t for t in model.input}
            assert set(step.input_map) == set(model_inputs), f"{name}: {step.model_name} inputs unmapped"
            for key, tensor in step.input_map.items():
                assert tensor in available, f"{name}: {tensor} is used before any step produces it"
                assert available[tensor].data_type == model_inputs[key].data_type
                assert list(available[tensor].dims) == list(model_inputs[key].dims)
            model_outputs = {t.name: t for t in model.output}
            for key, tensor in step.output_map.items():
                assert key in model_outputs, f"{name}: {step.model_name} has no output {key}"
                available[tensor] = model_outputs[key]
        for output in ensemble.output:
            assert output.name in available, f"{name}: output {output.name} is never produced"
            assert list(available[output.name].dims) == list(output.dims)


@pytest.mark.parametrize("profile", ["tiny", "full"])
@pytest.mark.parametrize("target", TARGETS)
def test_target_configs_parse_and_ensembles_resolve(target: str, profile: str) -> None:
    repository = RepositoryOptions(profile, FULL if profile == "full" else "", "KIND_GPU")
    built = build_target(TargetOptions(target, None, repository))
    files, configs = built.files(), built.configs
    for name, config in configs.items():
        # What Triton reads back is the message itself, in its model's folder.
        assert config.name == name
        assert text_format.Parse(files[f"{name}/config.pbtxt"], model_config_pb2.ModelConfig()) == config
    assert_ensembles_resolve(configs)
    p = get_profile(profile, json.loads(repository.profile_overrides or "{}"))
    specs = model_specs(p.vlm.dim, p.spatial.dim)
    for name in EXPORTED_MODELS:
        config = configs[name]
        # Whatever implements the model, it presents the contract: names, data types, dims, batching.
        assert [(t.name, model_config_pb2.DataType.Name(t.data_type), tuple(t.dims)) for t in config.input] == [
            (t.name, f"TYPE_{t.dtype}", t.dims) for t in specs[name].inputs
        ]
        assert [(t.name, tuple(t.dims)) for t in config.output] == [(t.name, t.dims) for t in specs[name].outputs]
        assert config.max_batch_size == MAX_BATCH_SIZE
        if target in PLATFORMS:
            assert config.platform == PLATFORMS[target] and not config.backend
            assert config.default_model_filename == ARTIFACT_FILES[target]
            assert f"{name}/1/model.py" not in files
        else:
            assert config.backend == "python"
            adapter = files[f"{name}/1/model.py"]
            class_name = adapter.split("import ")[1].split(" as")[0]
            assert hasattr(hybrid.serving, class_name), adapter
            assert (class_name == "OnnxRuntimeModel") == (target == "embedded")
    if target == "tensorrt":
        kinds = {configs[n].instance_group[0].kind for n in EXPORTED_MODELS}
        assert kinds == {model_config_pb2.ModelInstanceGroup.KIND_GPU}


def test_ensembles_and_torch_models_are_the_same_in_every_target() -> None:
    torch_files = render(RepositoryOptions())
    assert render_target(TargetOptions("torch")) == torch_files  # the torch target is the checked-in repository
    for target in TARGETS:
        files = render_target(TargetOptions(target))
        for rel, content in torch_files.items():
            if rel.split("/")[0] not in EXPORTED_MODELS:
                assert files[rel] == content, f"{target}: {rel} differs from the torch repository"


def test_torch_target_precision_sets_the_dtype() -> None:
    options = TargetOptions("torch", "bf16", RepositoryOptions(instance_kind="KIND_GPU"))
    config = build_target(options).configs["vlm_encoder"]
    overrides = json.loads(config.parameters["profile_overrides"].string_value)
    assert overrides == {"dtype": "bfloat16"}
    assert get_profile("tiny", overrides).dtype == "bfloat16"


@pytest.mark.parametrize(("target", "precision"), [("embedded", "bf16"), ("onnxruntime", "bf16"), ("nope", None)])
def test_unsupported_choices_are_refused(target: str, precision: str | None) -> None:
    with pytest.raises(ValueError):
        TargetOptions(target, precision)
    with pytest.raises(ValueError, match="torch-target"):
        TargetOptions("tensorrt", runtime="compiled")
    with pytest.raises(ValueError, match="unknown runtime"):
        TargetOptions("torch", runtime="fast")


@pytest.mark.parametrize("runtime", ["compiled", "eager"])
def test_torch_target_runtime_switch(runtime: str) -> None:
    options = TargetOptions("torch", "bf16", RepositoryOptions(instance_kind="KIND_GPU"), runtime=runtime)
    configs = build_target(options).configs
    assert_ensembles_resolve(configs)
    for name, config in configs.items():
        if config.backend == "python":
            params = {k: v.string_value for k, v in config.parameters.items()}
            profile = get_profile(params["profile"], json.loads(params["profile_overrides"]))
            assert profile.runtime == runtime and profile.dtype == "bfloat16", name


@pytest.mark.parametrize("instance_kind", ["KIND_CPU", "KIND_GPU"])
def test_batching_and_instances_follow_the_device(instance_kind: str) -> None:
    """Every composing model runs on the repository's device (preprocess too: it normalizes the gateway's frames
    where the encoders run) and batches without holding requests; a GPU repository asks the batcher for the
    compiled runtime's batch sizes; the heads accept ragged token inputs on either device."""
    configs = build_repository(RepositoryOptions(instance_kind=instance_kind)).configs
    gpu = instance_kind == "KIND_GPU"
    kinds = model_config_pb2.ModelInstanceGroup
    for name, config in configs.items():
        if config.platform == "ensemble":
            continue
        assert [t.allow_ragged_batch for t in config.input] == [name in RAGGED_INPUT_MODELS] * len(config.input)
        (group,) = config.instance_group
        assert (group.kind, group.count) == (kinds.Kind.Value(instance_kind), 1), name
        if name != "preprocess":  # its input comes from the client, on the host
            assert config.parameters["FORCE_CPU_ONLY_INPUT_TENSORS"].string_value == "no"
        assert config.HasField("dynamic_batching"), name
        assert config.dynamic_batching.max_queue_delay_microseconds == 0
        expected = list(GPU_PREFERRED_BATCH_SIZES) if gpu else []
        assert list(config.dynamic_batching.preferred_batch_size) == expected


def test_tensorrt_profiles_cover_the_configs() -> None:
    profile = get_profile("full", {"random_weights": True})
    for exportable in exportables(profile, max_frames=16):
        ranges = exportable.shape_ranges()
        assert list(ranges) == list(exportable.input_names)
        for spec in exportable.spec.inputs:
            r = ranges[spec.name]
            assert r.min[0] == 1 and r.opt[0] == 1 and r.max[0] == MAX_BATCH_SIZE  # Triton needs the max batch
            for shape in (r.min, r.opt, r.max):
                assert len(shape) == 1 + len(spec.dims)
                assert all(d == s for d, s in zip(spec.dims, shape[1:], strict=True) if d != -1), (spec, shape)
            assert all(a <= b <= c for a, b, c in zip(r.min, r.opt, r.max, strict=True))
    fusion = exportables(profile, ("fusion",), max_frames=16)[0].shape_ranges()
    # The lab's VLM features: 8 frame pairs × 64 visual tokens inside the chat template (21 tokens + 2 markers).
    vlm_max = profile.vlm.sequence_length(8 * 64)
    assert vlm_max == 8 * 64 + 23
    assert fusion["SPATIAL_TOKENS"].max == (8, 16 * 256, 1024) and fusion["VLM_TOKENS"].max == (8, vlm_max, 3584)
    command = trtexec_command(Path("m.onnx"), Path("m.plan"), fusion, "fp16")
    assert "--fp16" in command and f"--maxShapes=VLM_TOKENS:8x{vlm_max}x3584,SPATIAL_TOKENS:8x4096x1024" in command


def run_export(*args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "export", *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout
    )


def test_tensorrt_target_without_tensorrt_says_what_to_install(tmp_path: Path) -> None:
    try:
        import tensorrt  # noqa: F401

        pytest.skip("TensorRT is installed here")
    except ImportError:
        pass
    done = run_export("--profile", "full", "--target", "tensorrt", "--precision", "fp16", "--out", str(tmp_path / "r"))
    assert done.returncode == 3, done.stderr
    assert "TensorRT" in done.stderr and "docker compose --profile export run --rm export" in done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "r").exists()  # stopped before any work
    # The configs need no TensorRT.
    done = run_export("--target", "tensorrt", "--configs-only", "--out", str(tmp_path / "c"))
    assert done.returncode == 0, done.stderr
    config = text_format.Parse((tmp_path / "c/fusion/config.pbtxt").read_text(), model_config_pb2.ModelConfig())
    assert config.platform == "tensorrt_plan"


def test_bad_arguments_exit_2(tmp_path: Path) -> None:
    done = run_export("--target", "embedded", "--precision", "bf16", "--out", str(tmp_path))
    assert done.returncode == 2 and "fp32 or fp16" in done.stderr


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny profile's `embedded` repository, made by the real command."""
    out = tmp_path_factory.mktemp("exported") / "model_repository"
    done = run_export("--profile", "tiny", "--target", "embedded", "--precision", "fp32", "--out", str(out))
    assert done.returncode == 0, done.stderr[-4000:]
    return out


def test_export_writes_a_complete_repository(exported: Path) -> None:
    files = render_target(TargetOptions("embedded"))
    for rel, content in files.items():
        assert (exported / rel).read_text() == content
    for name in EXPORTED_MODELS:
        assert (exported / name / "1" / "model.onnx").stat().st_size > 100_000
    report = json.loads((exported / "export_report.json").read_text())
    assert set(report["models"]) == set(EXPORTED_MODELS)
    for entry in report["models"].values():
        assert entry["parity"]["passed"] and entry["parity"]["max_rel"] <= PARITY_BOUNDS["fp32"]
        assert entry["onnx"]["size_bytes"] > 0 and entry["onnx"]["export_s"] > 0


def test_onnx_files_present_the_native_contract(exported: Path) -> None:
    """What Triton's onnxruntime_onnx backend checks: the graph's inputs/outputs are the config's names, FP32,
    batch first, static dims equal and variable dims symbolic."""
    configs = build_target(TargetOptions("onnxruntime")).configs
    for name in EXPORTED_MODELS:
        graph = onnx.load(str(exported / name / "1" / "model.onnx"), load_external_data=False).graph
        config = configs[name]
        for tensors, declared in ((graph.input, config.input), (graph.output, config.output)):
            assert [t.name for t in tensors] == [t.name for t in declared]
            for tensor, spec in zip(tensors, declared, strict=True):
                assert tensor.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
                dims = tensor.type.tensor_type.shape.dim
                assert len(dims) == 1 + len(spec.dims) and dims[0].dim_param  # a symbolic batch dimension
                for dim, size in zip(dims[1:], spec.dims, strict=True):
                    assert (dim.dim_value == size) if size != -1 else bool(dim.dim_param), (name, tensor.name)


@pytest.mark.parametrize("target", ["onnxruntime", "tensorrt"])
def test_native_target_layout(tmp_path: Path, target: str) -> None:
    """Native models: config + `1/<artifact>`, no model.py (tensorrt: configs only, without TensorRT)."""
    args = ["--models", "vlm_adapter", "--out", str(tmp_path)]
    done = run_export("--target", target, *args, *(["--configs-only"] if target == "tensorrt" else []))
    assert done.returncode == 0, done.stderr[-4000:]
    assert (tmp_path / "vlm_adapter" / "config.pbtxt").exists()
    assert not (tmp_path / "vlm_adapter" / "1" / "model.py").exists()
    assert (tmp_path / "fusion" / "1" / "model.py").exists()  # not exported this time: the torch model stays
    if target == "onnxruntime":
        assert (tmp_path / "vlm_adapter" / "1" / "model.onnx").stat().st_size > 100_000
        report = json.loads((tmp_path / "export_report.json").read_text())
        assert list(report["models"]) == ["vlm_adapter"] and report["models"]["vlm_adapter"]["parity"]["passed"]


def test_exported_spatial_encoder_takes_any_batch_and_frame_count(exported: Path) -> None:
    from hybrid.onnx_runtime import OnnxRunner

    runner = OnnxRunner(exported / "spatial_encoder" / "1" / "model.onnx")
    encoder = exportables(get_profile("tiny"), ("spatial_encoder",))[0]
    module = encoder.build()
    pixels = torch.randn(2, 5, 3, 224, 224)
    got = runner({"SPATIAL_PIXELS": pixels})["SPATIAL_TOKENS"]
    with torch.inference_mode():
        expected = module(pixels)
    assert got.shape == (2, 5 * 256, 48)
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


def test_fp16_export_is_within_its_bound_and_half_the_size(tmp_path: Path) -> None:
    fusion = exportables(get_profile("tiny"), ("fusion",))[0]
    module = fusion.build()
    sizes, reports = {}, {}
    for precision in ("fp32", "fp16"):
        artifact = export_onnx(fusion, module, precision, tmp_path / precision / "model.onnx")
        sizes[precision], reports[precision] = artifact.size_bytes, check_parity(fusion, module, artifact)
    assert reports["fp16"].passed and reports["fp32"].passed
    assert reports["fp16"].max_rel > 10 * reports["fp32"].max_rel  # it really computes in fp16
    assert sizes["fp16"] < 0.6 * sizes["fp32"]


def test_parity_fails_on_a_wrong_export(tmp_path: Path) -> None:
    """The check can fail: an export of slightly different weights is caught."""
    adapter = exportables(get_profile("tiny"), ("vlm_adapter",))[0]
    module = adapter.build()
    wrong = copy.deepcopy(module)
    with torch.no_grad():
        wrong.module.out_proj.weight.mul_(1.01)
    artifact = export_onnx(adapter, wrong, "fp32", tmp_path / "model.onnx")
    report = check_parity(adapter, module, artifact)
    assert not report.passed and report.max_rel > PARITY_BOUNDS["fp32"]
    with pytest.raises(ParityError, match="vlm_adapter"):
        require_parity([report])


@pytest.fixture(scope="module")
def exported_stack(exported: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """`python -m service` over the exported repository, on free loopback ports (as conftest's `stack`)."""
    log_path = tmp_path_factory.mktemp("exported-stack") / "service.log"
    try:
        with running_stack(log_path, {"HYBRID_MODEL_REPOSITORY": str(exported)}) as started:
            yield started
    except StackError as exc:
        pytest.fail(str(exc))


def post(stack: Stack, path: str, data: bytes, name: str = "input.png", **params: object) -> httpx.Response:
    reply = httpx.post(f"{stack.gateway_url}{path}", params=params, files={"file": (name, data)}, timeout=300)
    assert reply.status_code == 200, reply.text
    return reply


@pytest.mark.integration
def test_exported_models_are_the_onnx_ones(exported_stack: Stack) -> None:
    for name in EXPORTED_MODELS:
        config = httpx.get(f"{exported_stack.triton_http_url}/v2/models/{name}/config").json()
        assert config["parameters"]["onnx_file"]["string_value"] == "model.onnx"
        assert httpx.get(f"{exported_stack.triton_http_url}/v2/models/{name}/ready").status_code == 200


@pytest.mark.integration
@pytest.mark.parametrize("pipeline", ["hybrid", "vlm", "spatial"])
def test_encode_over_onnx_matches_the_torch_service(exported_stack: Stack, stack: Stack, pipeline: str) -> None:
    data = samples.png(seed=6)
    served = np.load(io.BytesIO(post(exported_stack, "/encode", data, pipeline=pipeline).content))
    expected = np.load(io.BytesIO(post(stack, "/encode", data, pipeline=pipeline).content))
    assert served.shape == expected.shape == (1, 64, 4096)
    np.testing.assert_allclose(served, expected, atol=1e-4, rtol=1e-4)


@pytest.mark.integration
def test_encode_video_over_onnx_matches_the_torch_service(exported_stack: Stack, stack: Stack) -> None:
    data = samples.gif(5, seed=2)  # 5 frames: 192 VLM tokens, 1280 spatial tokens — not the export's sizes
    served = np.load(io.BytesIO(post(exported_stack, "/encode", data, name="in.gif").content))
    expected = np.load(io.BytesIO(post(stack, "/encode", data, name="in.gif").content))
    np.testing.assert_allclose(served, expected, atol=1e-4, rtol=1e-4)


@pytest.mark.integration
@pytest.mark.parametrize("pipeline", ["hybrid", "spatial"])
def test_reconstruct_over_onnx_matches_the_torch_service(exported_stack: Stack, stack: Stack, pipeline: str) -> None:
    data = samples.png(seed=8)
    params = {"pipeline": pipeline, "frames": 9, "steps": 3, "seed": 5, "format": "npz"}
    served = np.load(io.BytesIO(post(exported_stack, "/reconstruct", data, **params).content))["frames"]
    expected = np.load(io.BytesIO(post(stack, "/reconstruct", data, **params).content))["frames"]
    assert served.shape == expected.shape == (9, 64, 64, 3)
    assert np.abs(served.astype(int) - expected.astype(int)).max() <= 1
