"""ONNX export with the dynamo exporter, and the parity check of every exported file against PyTorch.

Export: `torch.onnx.export(..., dynamo=True)` with the dynamic dimensions of `export.exportable` (batch; frames;
VLM token count; spatial token count = 256 × frames). The legacy TorchScript exporter is not used: it freezes the
token count inside attention. Opset 18 (LayerNormalization is native, which TensorRT needs to keep normalization
in FP32 under an fp16 build) is read by the ONNX Runtime and TensorRT of every NGC release since 24.01.

Parity: the exported file, run by the same onnxruntime runner the `embedded` models use, against the fp32
PyTorch module on fresh random inputs whose batch and frame counts differ from the export example (so a size
frozen at export shows up as an error, not as a pass). Errors are reported as

    max_abs = max |onnx − torch|        max_rel = max_abs / max |torch|

(relative to the output's scale: an element-wise ratio explodes on outputs near zero). The bounds:

    fp32  max_rel ≤ 1e-4   the same math in another order: DINOv2-L and the fusion module measure ~1.5e-6
    fp16  max_rel ≤ 2e-2   fp16 weights and activations against the fp32 reference (11-bit mantissa, ~5e-4 per
                           rounding, accumulated over 24 DINOv2-L blocks): ~9e-4 measured on random weights;
                           trained weights have larger activations, hence the margin (export/results/full-cpu.md)
    bf16  max_rel ≤ 6e-2   8-bit mantissa, 8× coarser than fp16 (TensorRT engines only)
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from export.exportable import Exportable
from export.progress import say, step

OPSET = 18
DTYPES: dict[str, torch.dtype] = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
PARITY_BOUNDS: dict[str, float] = {"fp32": 1e-4, "fp16": 2e-2, "bf16": 6e-2}
"""The largest accepted max_rel per precision (see the module docstring for why)."""
EXPORT_EXAMPLE = (2, 2)
"""(batch, frames) of the example inputs the graph is traced with; no parity case uses it."""
PARITY_CASES: tuple[tuple[int, int], ...] = ((1, 1), (3, 3))
"""(batch, frames): one image; three 3-frame videos (128 VLM tokens, 768 spatial tokens each)."""


class ParityError(RuntimeError):
    """An export whose outputs are further from PyTorch than its precision's bound."""


@dataclass
class OnnxArtifact:
    model: str
    precision: str
    path: Path
    files: list[str]  # model.onnx and, past 2 GB, its external data file
    size_bytes: int
    export_s: float


@dataclass
class ParityCase:
    batch: int
    frames: int
    input_shapes: dict[str, list[int]]
    max_abs: float
    max_rel: float
    mean_abs: float


@dataclass
class ParityReport:
    model: str
    precision: str
    bound_max_rel: float
    cases: list[ParityCase] = field(default_factory=list)

    @property
    def max_abs(self) -> float:
        return max(c.max_abs for c in self.cases)

    @property
    def max_rel(self) -> float:
        return max(c.max_rel for c in self.cases)

    @property
    def passed(self) -> bool:
        return self.max_rel <= self.bound_max_rel

    def to_dict(self) -> dict:
        return {**asdict(self), "max_abs": self.max_abs, "max_rel": self.max_rel, "passed": self.passed}


def export_onnx(exportable: Exportable, module: nn.Module, precision: str, path: Path) -> OnnxArtifact:
    """Export `module` (the fp32 hybrid module) at `precision` to `path`; weights go to `<path>.data` only when
    the model passes protobuf's 2 GB limit (DINOv2-g in fp32), so smaller models are one self-contained file."""
    if precision not in ("fp32", "fp16"):
        raise ValueError(f"ONNX files are exported in fp32 or fp16, not {precision} (bf16 is a TensorRT build flag)")
    wrapped = exportable.wrap(module, DTYPES[precision])
    example = exportable.inputs(*EXPORT_EXAMPLE, generator=torch.Generator().manual_seed(0))
    path.parent.mkdir(parents=True, exist_ok=True)
    with step(f"{exportable.name} ({precision}): ONNX export") as timing, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's deprecation chatter, not about this model
        program = torch.onnx.export(
            wrapped,
            example,
            None,
            dynamo=True,
            opset_version=OPSET,
            input_names=list(exportable.input_names),
            output_names=list(exportable.output_names),
            dynamic_shapes=(exportable.dynamic_shapes(),),  # one entry: forward(*inputs)
            optimize=True,
            verbose=False,
        )
        assert program is not None  # the dynamo exporter always returns its program
        size = sum(p.numel() * p.element_size() for p in wrapped.parameters())
        program.save(path, external_data=size > 1.8 * 2**30)
    del program, wrapped
    files = sorted(p.name for p in path.parent.iterdir() if p.name == path.name or p.name.startswith(f"{path.name}."))
    size_bytes = sum((path.parent / f).stat().st_size for f in files)
    say(f"{exportable.name} ({precision}): {path} — {size_bytes / 1e6:.1f} MB")
    return OnnxArtifact(exportable.name, precision, path, files, size_bytes, timing.seconds)


@torch.inference_mode()
def check_parity(
    exportable: Exportable, module: nn.Module, artifact: OnnxArtifact, seed: int = 1, threads: int = 0
) -> ParityReport:
    """Run the exported file with onnxruntime and the fp32 module with PyTorch on the same fresh inputs."""
    from hybrid.onnx_runtime import OnnxRunner

    runner = OnnxRunner(artifact.path, "cpu", intra_op_threads=threads)
    reference = exportable.wrap(module, torch.float32)
    report = ParityReport(exportable.name, artifact.precision, PARITY_BOUNDS[artifact.precision])
    generator = torch.Generator().manual_seed(seed)
    with step(f"{exportable.name} ({artifact.precision}): parity vs PyTorch fp32"):
        for batch, frames in PARITY_CASES:
            inputs = exportable.inputs(batch, frames, generator)
            expected = reference(*inputs)
            got = runner(dict(zip(exportable.input_names, inputs, strict=True)))[exportable.output_names[0]]
            if got.shape != expected.shape:
                raise ParityError(f"{exportable.name}: ONNX output {tuple(got.shape)}, torch {tuple(expected.shape)}")
            report.cases.append(compare(batch, frames, exportable, inputs, got, expected))
    for case in report.cases:
        say(
            f"  {exportable.name} ({artifact.precision}) batch {case.batch} × {case.frames} frames: "
            f"max abs {case.max_abs:.2e}, max rel {case.max_rel:.2e} (bound {report.bound_max_rel:.0e})"
        )
    return report


def compare(
    batch: int,
    frames: int,
    exportable: Exportable,
    inputs: tuple[torch.Tensor, ...],
    got: torch.Tensor,
    expected: torch.Tensor,
) -> ParityCase:
    diff = (got.double() - expected.double()).abs()
    max_abs = float(diff.max()) if torch.isfinite(got).all() else float("inf")
    scale = float(expected.abs().max()) or 1.0
    return ParityCase(
        batch=batch,
        frames=frames,
        input_shapes={name: list(x.shape) for name, x in zip(exportable.input_names, inputs, strict=True)},
        max_abs=max_abs,
        max_rel=max_abs / scale,
        mean_abs=float(diff.mean()),
    )


def require_parity(reports: list[ParityReport]) -> None:
    """Raise when any export is past its bound, naming every failure."""
    failed = [r for r in reports if not r.passed]
    if failed:
        lines = [f"{r.model} ({r.precision}): max rel {r.max_rel:.2e} > {r.bound_max_rel:.0e}" for r in failed]
        raise ParityError("exports out of bounds:\n  " + "\n  ".join(lines))
