"""TensorRT engines (`<model>/1/model.plan`) from the exported ONNX, through TensorRT's public Python API.

NOT exercised by CI, and not runnable on the development machines: no TensorRT builder installs there (the
"TensorRT engines" section of export/README.md).
It runs inside the NGC TensorRT image (`docker compose --profile export run --rm export`), whose TensorRT must
be the release of the Triton image that loads the plans — a plan only loads in the TensorRT version, and on the
GPU model, that built it.

What it builds, for each exported model:
- the network from the fp32 ONNX file (ONNX parser), explicit batch;
- one optimization profile per input: min/opt/max shapes from `Exportable.shape_ranges` — batch 1..8
  (max_batch_size), frames 1..max_frames, VLM tokens 64..64·⌈max_frames/2⌉, spatial tokens 256..256·max_frames;
  opt is one image at batch 1, the gateway's common case;
- precision by builder flag: `fp16` or `bf16` let TensorRT pick reduced-precision kernels where it is faster
  (LayerNormalization is a native opset-18 op, kept in FP32 accumulation); `fp32` allows TF32 only.
`trtexec_command` prints the same build as a trtexec line, for building by hand on a GPU host.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path

import torch

from export.exportable import Exportable, ShapeRange
from export.onnx_export import PARITY_BOUNDS, PARITY_CASES, ParityCase, ParityReport, compare
from export.progress import say, step

INSTALL_HINT = (
    "the tensorrt target builds engines with TensorRT's Python API, and `import tensorrt` failed.\n"
    "Build them where TensorRT and a GPU are: on a GPU host with Docker, run\n"
    "    docker compose --profile export run --rm export\n"
    "(the NGC TensorRT image of the same release as the Triton image; see docker/README.md), or install the\n"
    "TensorRT of your Triton release (e.g. `pip install tensorrt-cu12==<that version>` from NVIDIA's index,\n"
    "https://docs.nvidia.com/deeplearning/tensorrt/latest/installing-tensorrt/installing.html).\n"
    "The `embedded`, `onnxruntime` and `torch` targets need no TensorRT."
)


class TensorRTUnavailable(RuntimeError):
    """TensorRT (the builder) is not importable here."""


def require_tensorrt() -> str:
    """TensorRT's version, or TensorRTUnavailable with what to install — checked before any export work."""
    try:
        import tensorrt as trt
    except ImportError as exc:
        raise TensorRTUnavailable(f"{INSTALL_HINT}\n({exc})") from None
    if not hasattr(trt, "Builder"):
        raise TensorRTUnavailable(f"{INSTALL_HINT}\n(this tensorrt {trt.__version__} is a lean runtime: no builder)")
    return str(trt.__version__)


@dataclass
class EngineArtifact:
    model: str
    precision: str
    path: Path
    size_bytes: int
    build_s: float
    tensorrt_version: str
    shapes: dict[str, dict[str, list[int]]]


def _dims(shape: tuple[int, ...]) -> str:
    return "x".join(str(d) for d in shape)


def trtexec_command(onnx_path: Path, plan_path: Path, ranges: dict[str, ShapeRange], precision: str) -> str:
    """The same build as one trtexec line (trtexec ships in the NGC TensorRT image)."""
    flags = {"fp16": ["--fp16"], "bf16": ["--bf16"], "fp32": []}[precision]
    shapes = [
        f"--{kind}Shapes=" + ",".join(f"{name}:{_dims(getattr(r, kind))}" for name, r in ranges.items())
        for kind in ("min", "opt", "max")
    ]
    return shlex.join(["trtexec", f"--onnx={onnx_path}", f"--saveEngine={plan_path}", *flags, *shapes])


def build_engine(
    exportable: Exportable, onnx_path: Path, plan_path: Path, precision: str, workspace_gb: float = 8.0
) -> EngineArtifact:
    """Parse `onnx_path`, build a serialized engine for `precision` with the model's optimization profile."""
    version = require_tensorrt()
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    if int(version.split(".")[0]) < 10:  # explicit batch is the only mode (and the default) from TensorRT 10
        flags = 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):  # finds external data beside the file
        errors = "\n".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT could not parse {onnx_path}:\n{errors}")

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gb * 2**30))
    if precision == "fp16":
        config.set_flag(trt.BuilderFlag.FP16)
    elif precision == "bf16":
        config.set_flag(trt.BuilderFlag.BF16)
    elif precision != "fp32":
        raise ValueError(f"no TensorRT precision {precision!r}")
    ranges = exportable.shape_ranges()
    profile = builder.create_optimization_profile()
    for name, r in ranges.items():
        profile.set_shape(name, r.min, r.opt, r.max)
    config.add_optimization_profile(profile)

    say("the same build by hand: " + trtexec_command(onnx_path, plan_path, ranges, precision))
    with step(f"{exportable.name} ({precision}): TensorRT {version} engine build") as timing:
        serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError(f"TensorRT failed to build {exportable.name}; its log above says why")
    plan_path.parent.mkdir(parents=True, exist_ok=True)
    plan_path.write_bytes(bytes(serialized))
    shapes = {n: {"min": list(r.min), "opt": list(r.opt), "max": list(r.max)} for n, r in ranges.items()}
    return EngineArtifact(
        exportable.name, precision, plan_path, plan_path.stat().st_size, timing.seconds, version, shapes
    )


@torch.inference_mode()
def check_engine_parity(
    exportable: Exportable, module: torch.nn.Module, engine: EngineArtifact, seed: int = 1
) -> ParityReport:
    """Run the plan with TensorRT's runtime on torch CUDA buffers and compare with the fp32 module on the GPU,
    on the same parity cases as the ONNX check, against the engine precision's bound."""
    import tensorrt as trt

    runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
    cuda_engine = runtime.deserialize_cuda_engine(engine.path.read_bytes())
    context = cuda_engine.create_execution_context()
    reference = exportable.wrap(module, torch.float32).cuda()
    stream = torch.cuda.Stream()
    generator = torch.Generator().manual_seed(seed)
    report = ParityReport(exportable.name, f"tensorrt-{engine.precision}", PARITY_BOUNDS[engine.precision])
    output_name = exportable.output_names[0]
    for batch, frames in PARITY_CASES:
        inputs = tuple(x.cuda() for x in exportable.inputs(batch, frames, generator))
        expected = reference(*inputs)
        for name, tensor in zip(exportable.input_names, inputs, strict=True):
            context.set_input_shape(name, tuple(tensor.shape))
            context.set_tensor_address(name, tensor.data_ptr())
        got = torch.empty(tuple(context.get_tensor_shape(output_name)), dtype=torch.float32, device="cuda")
        context.set_tensor_address(output_name, got.data_ptr())
        torch.cuda.synchronize()
        if not context.execute_async_v3(stream.cuda_stream):
            raise RuntimeError(f"TensorRT failed to run {engine.path}")
        stream.synchronize()
        case: ParityCase = compare(batch, frames, exportable, inputs, got.cpu(), expected.cpu())
        report.cases.append(case)
        say(f"  {exportable.name} engine ({engine.precision}) batch {batch} × {frames}: max rel {case.max_rel:.2e}")
    reference.cpu()
    return report
