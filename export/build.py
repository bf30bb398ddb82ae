"""`python -m export`: export DINOv2, the fusion module and the two adapters for a profile, check them against
PyTorch, and write a complete Triton model repository for one deployment target.

    python -m export --profile tiny --target embedded --out build/model_repository
    python -m export --profile full --random-weights --target onnxruntime --precision fp16 --out build/ort
    python -m export --profile full --spatial vitl14 --target tensorrt --precision fp16 --out /models  # GPU + TensorRT

Order of work, so that a failure leaves no half-made repository behind: check that the target's tools exist
(TensorRT) → export each model to ONNX in a work directory → parity against PyTorch (exit 1 past the bound) →
TensorRT engines and their parity (tensorrt) → write the repository (configs, model.py adapters, ensembles) and
move the artifacts into `<model>/1/` → `<out>/export_report.json` (sizes, times, parity, versions, command).
Exit codes: 0 done, 1 parity out of bounds, 2 bad arguments, 3 a tool is missing (the message says what to install).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import shlex
import shutil
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Any

from export.exportable import DEFAULT_MAX_FRAMES, EXPORTED_MODELS, exportables
from export.progress import peak_rss_gb, say
from export.repository import RepositoryOptions, write_files
from export.targets import PRECISIONS, TARGETS, TargetOptions, artifact_paths, render_target
from export.tensorrt_engine import TensorRTUnavailable, require_tensorrt
from hybrid.profiles import PROFILES, RUNTIMES, SPATIAL_VARIANTS, get_profile

REPORT_FILE = "export_report.json"
"""Written at the repository's top level, beside the model folders (Triton loads folders only)."""


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment() -> dict[str, Any]:
    """Versions and machine, recorded with every figure (a package that is absent is recorded as None)."""
    from importlib import metadata

    import torch

    def version(package: str) -> str | None:
        try:
            return metadata.version(package)
        except metadata.PackageNotFoundError:
            return None

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "onnx": version("onnx"),
        "onnxruntime": version("onnxruntime") or version("onnxruntime-gpu"),
        "tensorrt": _tensorrt_version(),
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def _tensorrt_version() -> str | None:
    try:
        import tensorrt
    except ImportError:
        return None
    return str(getattr(tensorrt, "__version__", "unknown"))


def write_repository(options: TargetOptions, out: Path, artifacts: dict[str, list[Path]]) -> list[Path]:
    """Write the target's text files and move each model's artifact files into `<model>/1/`, replacing the model
    folders this repository generates (other folders under `out` are left alone)."""
    written = write_files(render_target(options), out)
    expected = artifact_paths(options, out)
    for name, sources in artifacts.items():
        destination = expected[name]
        destination.parent.mkdir(parents=True, exist_ok=True)  # natives have no model.py making `1/`
        for source in sources:
            # model.onnx keeps its external data file's name: the ONNX file refers to it by that name.
            target = destination.parent / (destination.name + source.name[len(sources[0].name) :])
            shutil.move(str(source), target)
            written.append(target)
    return written


def export_models(
    options: TargetOptions,
    profile_name: str,
    overrides: dict[str, Any],
    work: Path,
    max_frames: int,
    workspace_gb: float,
) -> tuple[dict[str, list[Path]], dict[str, Any]]:
    """Export, check and (tensorrt) build every model of the target; returns the artifact files per model (the
    main file first) and the per-model report. One model is in memory at a time."""
    from export.onnx_export import check_parity, export_onnx, require_parity

    profile = get_profile(profile_name, overrides)
    artifacts: dict[str, list[Path]] = {}
    report: dict[str, Any] = {}
    for exportable in exportables(profile, options.exported, max_frames):
        say(f"{exportable.name}: building the fp32 torch module ({profile.name} profile)")
        module = exportable.build()
        onnx = export_onnx(exportable, module, options.onnx_precision, work / exportable.name / "model.onnx")
        parity = check_parity(exportable, module, onnx)
        entry: dict[str, Any] = {
            "onnx": {**asdict(onnx), "path": onnx.path.name},
            "parity": parity.to_dict(),
        }
        report[exportable.name] = entry
        require_parity([parity])
        files = [onnx.path.parent / f for f in onnx.files]
        if options.target == "tensorrt":
            from export.tensorrt_engine import build_engine, check_engine_parity

            plan = work / exportable.name / "model.plan"
            engine = build_engine(exportable, onnx.path, plan, str(options.resolved_precision), workspace_gb)
            engine_parity = check_engine_parity(exportable, module, engine)
            entry["engine"] = {**asdict(engine), "path": plan.name}
            entry["engine_parity"] = engine_parity.to_dict()
            require_parity([engine_parity])
            files = [plan]
        artifacts[exportable.name] = files
        del module
        gc.collect()
    return artifacts, report


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m export", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--profile", default="tiny", choices=PROFILES)
    parser.add_argument("--spatial", choices=sorted(SPATIAL_VARIANTS), help="DINOv2 variant (full profile)")
    parser.add_argument("--random-weights", action="store_true", help="build from config, no checkpoints")
    parser.add_argument("--profile-overrides", default="", help="JSON merged into the profile (weight paths, …)")
    parser.add_argument("--target", default="embedded", choices=TARGETS)
    parser.add_argument(
        "--precision",
        choices=sorted({p for ps in PRECISIONS.values() for p in ps}),
        help="embedded/onnxruntime: fp32 (default) or fp16 ONNX; tensorrt: fp16 (default), bf16 or fp32 engine "
        "(built from fp32 ONNX); torch: the models' dtype on a GPU (default: the profile's)",
    )
    parser.add_argument("--out", type=Path, default=Path("build/model_repository"), help="the repository to write")
    parser.add_argument("--instance-kind", default=None, choices=["KIND_CPU", "KIND_GPU"])
    parser.add_argument(
        "--models", default=",".join(EXPORTED_MODELS), help="comma-separated subset of the exported models"
    )
    parser.add_argument("--max-frames", type=int, default=DEFAULT_MAX_FRAMES, help="TensorRT profiles' max frames")
    parser.add_argument("--workspace-gb", type=float, default=8.0, help="TensorRT builder workspace")
    parser.add_argument("--ort-threads", type=int, default=0, help="embedded: onnxruntime threads per model")
    parser.add_argument("--keep-onnx", type=Path, help="also keep the ONNX files here (tensorrt)")
    parser.add_argument("--configs-only", action="store_true", help="write the configs and adapters, no artifacts")
    parser.add_argument(
        "--runtime",
        choices=RUNTIMES,
        help="torch target: 'compiled' (every model compiled or replayed as CUDA graphs, prepared at load) or "
        "'eager'; default: the profile's (full: compiled, tiny: eager)",
    )
    return parser.parse_args(argv)


def profile_overrides(args: argparse.Namespace) -> dict[str, Any]:
    overrides = json.loads(args.profile_overrides or "{}")
    if args.random_weights:
        overrides["random_weights"] = True
    if args.spatial:
        overrides.setdefault("spatial", {})["variant"] = args.spatial
    return overrides


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    overrides = profile_overrides(args)
    kind = args.instance_kind or ("KIND_GPU" if args.target == "tensorrt" else "KIND_CPU")
    try:
        repository = RepositoryOptions(args.profile, json.dumps(overrides, sort_keys=True) if overrides else "", kind)
        models = tuple(m for m in args.models.split(",") if m)
        options = TargetOptions(args.target, args.precision, repository, models, args.ort_threads, args.runtime)
        get_profile(args.profile, overrides)  # unknown settings fail here, before any work
    except (ValueError, json.JSONDecodeError) as exc:
        say(f"error: {exc}")
        return 2
    if args.target == "tensorrt" and not args.configs_only:
        try:
            say(f"TensorRT {require_tensorrt()}")
        except TensorRTUnavailable as exc:
            say(f"error: {exc}")
            return 3
        import torch

        if not torch.cuda.is_available():
            say("error: TensorRT builds engines on the GPU they will run on, and no CUDA GPU is visible here.")
            return 3

    command = shlex.join(["python", "-m", "export", *(sys.argv[1:] if argv is None else argv)])
    precision = options.resolved_precision or "the profile's dtype"
    say(f"{args.target} repository ({precision}) for the {args.profile} profile → {args.out}")
    report: dict[str, Any] = {
        "command": command,
        "target": args.target,
        "precision": options.resolved_precision,
        "onnx_precision": None if args.target == "torch" else options.onnx_precision,
        "profile": args.profile,
        "profile_overrides": overrides,
        "environment": environment(),
        "models": {},
    }
    with tempfile.TemporaryDirectory(prefix="hybrid-export-") as tmp:
        artifacts: dict[str, list[Path]] = {}
        if args.target != "torch" and not args.configs_only:
            from export.onnx_export import ParityError

            try:
                artifacts, report["models"] = export_models(
                    options, args.profile, overrides, Path(tmp), args.max_frames, args.workspace_gb
                )
            except ParityError as exc:
                say(f"error: {exc}")
                return 1
            if args.keep_onnx and args.target == "tensorrt":
                args.keep_onnx.mkdir(parents=True, exist_ok=True)
                for name in artifacts:
                    (args.keep_onnx / name).mkdir(exist_ok=True)
                    for onnx_file in (Path(tmp) / name).glob("model.onnx*"):
                        shutil.copy2(onnx_file, args.keep_onnx / name / onnx_file.name)
        written = write_repository(options, args.out, artifacts)
    report["peak_memory_gb"] = round(peak_rss_gb(), 2)
    exported = args.target != "torch" and not args.configs_only  # a torch repository has nothing to report
    if exported:
        (args.out / REPORT_FILE).write_text(json.dumps(report, indent=2, default=str) + "\n")
    say(f"wrote {len(written)} files under {args.out}" + (f"; report {REPORT_FILE}" if exported else ""))
    return 0
