"""What `--cuda-graphs` buys the `torch` target on a GPU: the serving classes themselves (eager and CUDA-graph),
initialized as Triton would, compared output for output and timed at batch 1; writes `<out>.json` and `.md`.

    python -m export.measure_cuda_graphs --out export/results/cuda-graphs-h200   # on a GPU host

Full profile, random weights (latency does not depend on weight values), the profile's dtype (bf16). Inputs:
one 224×224 frame ([1, 1, 3, 224, 224]); 64 VLM + 256 spatial tokens for the heads. Also checks that a graph
replays correctly for new inputs, for a second shape, and that shapes past the graph limit fall back to eager.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from export.build import environment

MODELS: dict[str, tuple[str, ...]] = {
    "spatial_encoder": ("SPATIAL_PIXELS",),
    "fusion": ("VLM_TOKENS", "SPATIAL_TOKENS"),
    "vlm_adapter": ("VLM_TOKENS",),
    "spatial_adapter": ("SPATIAL_TOKENS",),
}


def triton_args(name: str, inputs: tuple[str, ...], output: str) -> dict[str, str]:
    params = {"profile": "full", "device": "cuda", "profile_overrides": json.dumps({"random_weights": True})}
    params["cuda_graph_max_shapes"] = "2"
    config = {
        "name": name,
        "parameters": {k: {"string_value": v} for k, v in params.items()},
        "input": [{"name": n} for n in inputs],
        "output": [{"name": output}],
    }
    return {"model_config": json.dumps(config), "model_repository": "", "model_version": "1"}


def sample(inputs: tuple[str, ...], batch: int, frames: int, dims: dict[str, int]) -> dict[str, torch.Tensor]:
    shapes = {
        "SPATIAL_PIXELS": (batch, frames, 3, 224, 224),
        "VLM_TOKENS": (batch, 64 * -(-frames // 2), dims["VLM_TOKENS"]),
        "SPATIAL_TOKENS": (batch, 256 * frames, dims["SPATIAL_TOKENS"]),
    }
    return {name: torch.randn(shapes[name], device="cuda") for name in inputs}


def p50_ms(fn: Callable[[], object], repeats: int) -> float:
    for _ in range(5):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


@torch.inference_mode()
def measure(name: str, inputs: tuple[str, ...], repeats: int) -> dict[str, Any]:
    from hybrid import serving

    output = "SPATIAL_TOKENS" if name == "spatial_encoder" else "CONDITIONING"
    classes = ("SpatialEncoderModel", "CudaGraphSpatialEncoderModel")
    if name != "spatial_encoder":
        classes = ("FusionHeadModel", "CudaGraphFusionHeadModel")
    eager, graph = (getattr(serving, c)() for c in classes)
    for model in (eager, graph):
        model.initialize(triton_args(name, inputs, output))
    dims = {"VLM_TOKENS": eager.profile.vlm.dim, "SPATIAL_TOKENS": eager.profile.spatial.dim}
    max_diff = 0.0
    # Two draws per shape (a replay must use the new inputs); a third shape is past the limit of 2: eager.
    for batch, frames in ((1, 1), (2, 3), (1, 1), (3, 1)):
        for _ in range(2):
            x = sample(inputs, batch, frames, dims)
            diff = (graph.forward(x)[output] - eager.forward(x)[output]).abs().max()
            max_diff = max(max_diff, float(diff))
    x = sample(inputs, 1, 1, dims)
    result = {
        "dtype": eager.profile.dtype,
        "graphs_held": len(graph.graphs.graphs),
        "max_abs_diff_graph_vs_eager": max_diff,
        "eager_p50_ms": p50_ms(lambda: eager.forward(x), repeats),
        "graph_p50_ms": p50_ms(lambda: graph.forward(x), repeats),
    }
    print(f"{name}: {result}", file=sys.stderr, flush=True)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--out", type=Path, required=True, help="writes OUT.json and OUT.md")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("CUDA graphs need a CUDA GPU; none is visible here", file=sys.stderr)
        return 3
    results = {
        "command": "python -m export.measure_cuda_graphs " + " ".join(sys.argv[1:] if argv is None else argv),
        "environment": environment(),
        "repeats": args.repeats,
        "models": {name: measure(name, inputs, args.repeats) for name, inputs in MODELS.items()},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(results, indent=2) + "\n")
    env = results["environment"]
    lines = [
        f"# CUDA graphs in the torch target: {env['gpu']}",
        "",
        f"Command: `{results['command']}`  ",
        f"torch {env['torch']}, Python {env['python']}; full profile, random weights, batch 1, one 224×224 frame "
        f"(heads: 64 VLM + 256 spatial tokens); p50 of {args.repeats} synchronized calls of the serving classes' "
        "forward (no Triton).",
        "",
        "| model | dtype | eager p50 | CUDA graph p50 | max abs diff graph vs eager |",
        "|---|---|---:|---:|---:|",
    ]
    for name, r in results["models"].items():
        lines.append(
            f"| {name} | {r['dtype']} | {r['eager_p50_ms']:.2f} ms | {r['graph_p50_ms']:.2f} ms "
            f"| {r['max_abs_diff_graph_vs_eager']:.1e} |"
        )
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
