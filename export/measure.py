"""What exporting buys on this machine: export each model at each precision, check parity, and time onnxruntime
against PyTorch at batch 1 on the same inputs; writes `<out>.json` and `<out>.md`.

    python -m export.measure --profile full --random-weights --out export/results/full-cpu

Latency: batch 1, one 224×224 frame (spatial_encoder: [1, 1, 3, 224, 224]; fusion: 64 VLM + 256 spatial
tokens), after warm-up, onnxruntime and PyTorch runs interleaved (A, B, A, B, …) so that drift in the machine's
speed hits both alike; both on the same number of threads. PyTorch is the fp32 eager module under
inference_mode — the `torch` target as it runs on a CPU (`hybrid.runtime.for_device` keeps fp32 there).
Random weights: latency does not depend on weight values; parity on random weights shows the export is right,
not how far fp16 drifts on trained weights (larger activations).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shlex
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict
from functools import partial
from pathlib import Path
from typing import Any

import torch

from export.build import environment
from export.exportable import EXPORTED_MODELS, Exportable, exportables
from export.onnx_export import PARITY_BOUNDS, check_parity, export_onnx
from export.progress import peak_rss_gb, say, step
from hybrid.onnx_runtime import OnnxRunner
from hybrid.profiles import PROFILES, SPATIAL_VARIANTS, get_profile
from hybrid.tables import markdown_table
from service.verdict import quantile  # the project's one quantile definition (torch-free)


def summary(seconds: list[float]) -> dict[str, float]:
    ms = [s * 1000 for s in seconds]
    return {
        "p50_ms": quantile(ms, 0.5),
        "p90_ms": quantile(ms, 0.9),
        "mean_ms": statistics.fmean(ms),
        "n": len(ms),
    }


def interleaved(runs: dict[str, Callable[[], object]], warmup: int, repeats: int) -> dict[str, list[float]]:
    """Time each callable `repeats` times, alternating between them, after `warmup` untimed rounds.

    Alternating keeps a load change on the machine from favouring one runtime; torch's `Timer` times one statement
    at a time, in blocks, so it cannot. Both runtimes run on the CPU here: no device to synchronize."""
    for _ in range(warmup):
        for run in runs.values():
            run()
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    return times


def measure_model(
    exportable: Exportable, precisions: list[str], work: Path, warmup: int, repeats: int, threads: int
) -> dict[str, Any]:
    say(f"{exportable.name}: building the fp32 torch module")
    module = exportable.build()
    entry: dict[str, Any] = {"parameters": sum(p.numel() for p in module.parameters()), "precisions": {}}
    inputs = exportable.inputs(1, 1, torch.Generator().manual_seed(7))
    named = dict(zip(exportable.input_names, inputs, strict=True))
    reference = exportable.wrap(module, torch.float32)
    for precision in precisions:
        artifact = export_onnx(exportable, module, precision, work / f"{exportable.name}-{precision}" / "model.onnx")
        parity = check_parity(exportable, module, artifact, threads=threads)
        runner = OnnxRunner(artifact.path, "cpu", intra_op_threads=threads)
        with step(f"{exportable.name} ({precision}): latency, {repeats} interleaved runs each"), torch.inference_mode():
            times = interleaved(
                {"onnxruntime": partial(runner, named), "torch": partial(reference, *inputs)}, warmup, repeats
            )
        ort, eager = summary(times["onnxruntime"]), summary(times["torch"])
        say(
            f"  {exportable.name} ({precision}): onnxruntime p50 {ort['p50_ms']:.1f} ms, "
            f"PyTorch fp32 p50 {eager['p50_ms']:.1f} ms (×{eager['p50_ms'] / ort['p50_ms']:.2f})"
        )
        entry["precisions"][precision] = {
            "onnx": {**asdict(artifact), "path": artifact.path.name},
            "parity": parity.to_dict(),
            "latency": {"onnxruntime": ort, "torch_fp32": eager, "speedup_p50": eager["p50_ms"] / ort["p50_ms"]},
            "input_shapes": {name: list(x.shape) for name, x in named.items()},
        }
        del runner
        artifact.path.unlink()
        gc.collect()
    del module, reference
    gc.collect()
    return entry


def markdown(results: dict[str, Any]) -> str:
    env = results["environment"]
    lines = [
        f"# Export on the CPU: {results['profile']} profile, random weights",
        "",
        f"Command: `{results['command']}`  ",
        f"Machine: {env['cpu']}, {env['cpu_count']} cores, {results['threads']} threads for both runtimes; "
        f"torch {env['torch']}, onnxruntime {env['onnxruntime']}, onnx {env['onnx']}, Python {env['python']}.  ",
        f"Latency: batch 1, one 224×224 frame (fusion: 64 VLM + 256 spatial tokens), {results['warmup']} warm-up "
        f"+ {results['repeats']} interleaved runs each; PyTorch is fp32 eager (inference_mode).  ",
        "Parity: against PyTorch fp32 on fresh random inputs (batch 1 × 1 frame and 3 × 3 frames); "
        "max_rel = max|onnx − torch| / max|torch|; bounds "
        + ", ".join(f"{p} ≤ {b:.0e}" for p, b in PARITY_BOUNDS.items() if p != "bf16")
        + ".  ",
        f"Peak memory of the whole run: {results['peak_memory_gb']:.1f} GB. Load average (1/5/15 min) before "
        f"{_load(results['load_average_before'])}, after {_load(results['load_average_after'])}.",
        "",
    ]
    rows = [
        [name, f"{entry['parameters'] / 1e6:.0f} M", precision, f"{r['onnx']['size_bytes'] / 1e6:.0f} MB"]
        + [f"{r['onnx']['export_s']:.1f} s", f"{r['parity']['max_abs']:.1e}"]
        + [f"{r['parity']['max_rel']:.1e} ({'ok' if r['parity']['passed'] else 'FAIL'})"]
        + [f"{r['latency'][k]['p50_ms']:.1f} ms" for k in ("onnxruntime", "torch_fp32")]
        + [f"×{r['latency']['speedup_p50']:.2f}"]
        for name, entry in results["models"].items()
        for precision, r in entry["precisions"].items()
    ]
    head = ["model", "params", "precision", "ONNX size", "export", "parity max abs", "max rel", "onnxruntime p50"]
    lines += markdown_table([*head, "PyTorch fp32 p50", "PyTorch / ORT"], rows, align="lrlrrrrrrr")
    lines += ["", results["notes"], ""]
    return "\n".join(lines)


def _load(values: list[float]) -> str:
    return " / ".join(f"{v:.2f}" for v in values)


NOTES = (
    "fp16 on this CPU: the file is half the size, but onnxruntime's CPU provider has no fast fp16 path here "
    "(no AVX512-FP16; most fp16 operators run through casts to fp32), so it is no faster than fp32 — fp16 is for "
    "GPUs (onnxruntime CUDA, TensorRT). Parity on random weights shows the export is right; DINOv2's LayerScale "
    "starts at 1e-5, so random-weight activations stay small and fp16 drifts more on trained weights. TensorRT "
    "engines are not built on this machine (no TensorRT builder installs here)."
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="full", choices=PROFILES)
    parser.add_argument("--spatial", default="vitl14", choices=sorted(SPATIAL_VARIANTS))
    parser.add_argument("--random-weights", action="store_true")
    parser.add_argument("--models", default="spatial_encoder,fusion")
    parser.add_argument("--precisions", default="fp32,fp16")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--out", type=Path, default=Path("export/results/full-cpu"), help="writes OUT.json, OUT.md")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    overrides: dict[str, Any] = {"spatial": {"variant": args.spatial}}
    if args.random_weights:
        overrides["random_weights"] = True
    profile = get_profile(args.profile, overrides)
    names = tuple(m for m in args.models.split(",") if m)
    if set(names) - set(EXPORTED_MODELS):
        parser.error(f"--models: choose from {', '.join(EXPORTED_MODELS)}")
    results: dict[str, Any] = {
        "command": shlex.join(["python", "-m", "export.measure", *(sys.argv[1:] if argv is None else argv)]),
        "profile": args.profile,
        "profile_overrides": overrides,
        "environment": environment(),
        "threads": args.threads,
        "warmup": args.warmup,
        "repeats": args.repeats,
        "load_average_before": list(os.getloadavg()),  # other work on the machine skews latency: recorded
        "models": {},
    }
    with tempfile.TemporaryDirectory(prefix="hybrid-measure-") as tmp:
        for exportable in exportables(profile, names):
            results["models"][exportable.name] = measure_model(
                exportable, args.precisions.split(","), Path(tmp), args.warmup, args.repeats, args.threads
            )
    results["load_average_after"] = list(os.getloadavg())
    results["peak_memory_gb"] = round(peak_rss_gb(), 2)
    results["notes"] = NOTES
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    args.out.with_suffix(".md").write_text(markdown(results))
    say(f"wrote {args.out.with_suffix('.json')} and {args.out.with_suffix('.md')}")
    passed = all(r["parity"]["passed"] for m in results["models"].values() for r in m["precisions"].values())
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
