"""Full size on a GPU, eager vs compiled, through the gateway and Triton as users call it (issue: GPU speed).

    python -m benchmarks.gpu run --variant eager --out DIR      # one variant: start, measure, restart, stop
    python -m benchmarks.gpu summarize DIR                      # DIR/variant-*.json → summary.json, .md, .png

A run generates a full-profile repository (random weights: latency does not depend on weight values; bf16;
KIND_GPU; the variant's `runtime`), starts `python -m service` on it, and measures:
- `ready_s`: process start to /readyz 200 (cold: an empty compile cache), then `ready_warm_s` after a restart
  that finds the cache the first start filled (the compiled variant's persistent Inductor cache);
- the paired E-P2.6 overhead (benchmarks.overhead: identical 224×224 PNGs, interleaved, bootstrap CI);
- closed loops: /reconstruct hybrid at concurrency 1, 8, 32 and /encode hybrid at 32, each for `--seconds`;
- the GPU memory of the whole stack (nvidia-smi, every process) and Triton's per-model statistics (queue,
  compute_input, compute_infer, compute_output per execution and the average batch), which show whether the
  hand-offs between GPU steps stay small next to the compute.
Input: 224×224 PNG, 1 frame out, the profile's 8 denoising steps, seed 0.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from benchmarks.harness import git_commit, gpu_memory_gib, gpu_name, parse_statistics
from benchmarks.overhead import analyse, make_inputs, run_pairs
from hybrid.tables import markdown_table
from service.local_stack import Stack, running_stack
from service.verdict import BUDGET, quantile

CLOSED_LOOPS: tuple[tuple[str, int], ...] = (
    ("reconstruct", 1),
    ("reconstruct", 8),
    ("reconstruct", 32),
    ("encode", 32),
)
VARIANTS = ("eager", "compiled")
START_TIMEOUT_S = 540  # a compiled cold start on an H200 took 205 s


def write_repository(runtime: str, cache: Path, out: Path) -> None:
    overrides = {"random_weights": True, "runtime": runtime, "compile_cache": str(cache)}
    subprocess.run(
        [
            sys.executable,
            "-m",
            "export.repository",
            "--profile",
            "full",
            "--profile-overrides",
            json.dumps(overrides),
            "--instance-kind",
            "KIND_GPU",
            "--out",
            str(out),
        ],
        check=True,
    )


def service_env(repository: Path, log: Path) -> dict[str, str]:
    """The settings a measured stack runs with, beside `running_stack`'s loopback ports."""
    return {
        "HYBRID_MODEL_REPOSITORY": str(repository),
        "HYBRID_PROFILE": "full",
        "HYBRID_TRITON_START_TIMEOUT_S": str(START_TIMEOUT_S),
        "HYBRID_MAX_IN_FLIGHT": "128",  # the closed loops measure Triton, not the gateway's admission limit
        "HYBRID_EMBEDDED_TRITON_LOG": str(log.with_name(log.stem + "-triton.log")),
        # A CUDA memory pool so GPU tensors pass between steps without host copies.
        "HYBRID_EMBEDDED_TRITON_ARGS": (
            "--cuda-memory-pool-byte-size=0:2147483648 --pinned-memory-pool-byte-size=536870912"
        ),
    }


async def closed_loop(url: str, endpoint: str, concurrency: int, seconds: float, image: bytes) -> dict[str, Any]:
    """`concurrency` clients each sending the next request as soon as the last is answered, for `seconds`."""
    latencies: list[float] = []
    non_200 = 0
    deadline = time.perf_counter() + seconds
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=120, limits=limits) as client:

        async def worker() -> None:
            nonlocal non_200
            while time.perf_counter() < deadline:
                started = time.perf_counter()
                reply = await client.post(
                    f"{url}/{endpoint}", params={"pipeline": "hybrid"}, files={"file": ("in.png", image)}
                )
                if reply.status_code == 200:
                    latencies.append(time.perf_counter() - started)
                else:
                    non_200 += 1

        began = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - began
    return {
        "endpoint": endpoint,
        "pipeline": "hybrid",
        "concurrency": concurrency,
        "seconds": round(elapsed, 1),
        "rps": round(len(latencies) / elapsed, 2),
        "p50_ms": round(quantile(latencies, 0.5) * 1000, 1) if latencies else None,
        "p95_ms": round(quantile(latencies, 0.95) * 1000, 1) if latencies else None,
        "requests": len(latencies),
        "non_200": non_200,
    }


def triton_statistics(triton_http_url: str) -> dict[str, dict[str, float]]:
    return parse_statistics(httpx.get(f"{triton_http_url}/v2/models/stats", timeout=10).json())


def run_variant(variant: str, out: Path, pairs: int, seconds: float, result: dict[str, Any]) -> dict[str, Any]:
    """Measure one variant into `result`, saved to out/variant-<name>.json after every phase (a run cut short by
    a time limit still leaves what it measured)."""

    def save() -> None:
        (out / f"variant-{variant}.json").write_text(json.dumps(result, indent=2) + "\n")

    work = Path(tempfile.mkdtemp(prefix=f"gpu-{variant}-"))
    cache = work / "compile-cache"
    repository = work / "model_repository"
    write_repository(variant, cache, repository)
    log = out / f"service-{variant}.log"
    try:
        with running_stack(log, service_env(repository, log), START_TIMEOUT_S + 60) as stack:
            result["ready_s"] = round(stack.ready_s, 1)
            print(f"[{variant}] ready in {result['ready_s']} s", flush=True)
            save()
            measure(stack, variant, pairs, seconds, result, save)
        # The warm restart: the same repository, so the compile cache the first start filled.
        warm_log = out / f"service-{variant}-warm.log"
        with running_stack(warm_log, service_env(repository, warm_log), START_TIMEOUT_S + 60) as stack:
            result["ready_warm_s"] = round(stack.ready_s, 1)
        print(f"[{variant}] warm restart ready in {result['ready_warm_s']} s", flush=True)
        save()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return result


def measure(
    stack: Stack, variant: str, pairs: int, seconds: float, result: dict[str, Any], save: Callable[[], None]
) -> None:
    """Memory, the paired E-P2.6 overhead, the closed loops and Triton's statistics of one running stack."""
    result["gpu_memory_gib"] = round(gpu_memory_gib(), 1)
    image = make_inputs(1, 224, seed=0)[0]
    latencies = run_pairs(stack.gateway_url, pairs, make_inputs(8, 224, seed=0), {"frames": 1}, warmup=3)
    analysis = analyse(latencies, BUDGET, resamples=5000)
    result["reconstruct_hybrid_p50_ms"] = round(analysis["reconstruct"]["median_s"]["hybrid"] * 1000, 1)
    result["encode_hybrid_p50_ms"] = round(analysis["encode"]["median_s"]["hybrid"] * 1000, 1)
    result["overhead"] = {
        e: {
            "median": round(analysis[e]["overhead_median"], 4),
            "ci95": [round(v, 4) for v in analysis[e]["overhead_ci95"]],
        }
        for e in ("reconstruct", "encode")
    }
    result["paired"] = {
        e: {"median_ms": {p: round(v * 1000, 1) for p, v in analysis[e]["median_s"].items()}}
        for e in ("reconstruct", "encode")
    }
    print(f"[{variant}] paired: {json.dumps(result['overhead'])}", flush=True)
    save()
    result["closed_loop"] = []
    for endpoint, concurrency in CLOSED_LOOPS:
        loop = asyncio.run(closed_loop(stack.gateway_url, endpoint, concurrency, seconds, image))
        result["closed_loop"].append(loop)
        print(f"[{variant}] {json.dumps(loop)}", flush=True)
        save()
    result["gpu_memory_gib"] = round(max(result["gpu_memory_gib"], gpu_memory_gib()), 1)
    result["triton_statistics"] = triton_statistics(stack.triton_http_url)
    save()


def summarize(directory: Path) -> dict[str, Any]:
    variants = {}
    meta: dict[str, Any] = {}
    for path in sorted(directory.glob("variant-*.json")):
        data = json.loads(path.read_text())
        meta = {k: data.pop(k) for k in ("device", "commit", "command") if k in data} or meta
        variants[data["variant"]] = data
    summary = {**meta, "command": "python -m benchmarks.gpu run --variant {eager,compiled}", "variants": variants}
    (directory / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    (directory / "summary.md").write_text(markdown(summary))
    chart(summary, directory / "summary.png")
    return summary


def markdown(summary: dict[str, Any]) -> str:
    rows = [
        f"# Full size on {summary.get('device')}: eager vs compiled (commit {summary.get('commit')})",
        "",
        "Full profile, random weights, bf16, 224×224 PNG in, 1 frame out, 8 steps, through gateway + Triton. "
        f"Command: `{summary['command']}`.",
        "",
    ]
    v = summary["variants"]
    table: list[list[Any]] = []

    def row(label: str, get) -> None:
        table.append([label, *(get(x) for x in v.values())])

    row("ready, cold (s)", lambda x: x.get("ready_s"))
    row("ready, warm restart (s)", lambda x: x.get("ready_warm_s"))
    row("GPU memory, whole stack (GiB)", lambda x: x.get("gpu_memory_gib"))
    row("/reconstruct hybrid p50 (ms), sequential", lambda x: x.get("reconstruct_hybrid_p50_ms"))
    row("/encode hybrid p50 (ms), sequential", lambda x: x.get("encode_hybrid_p50_ms"))
    for endpoint in ("reconstruct", "encode"):
        row(
            f"E-P2.6 overhead, {endpoint} (median, 95% CI)",
            lambda x, e=endpoint: (
                f"{x['overhead'][e]['median']:+.1%} [{x['overhead'][e]['ci95'][0]:+.1%}, "
                f"{x['overhead'][e]['ci95'][1]:+.1%}]"
                if "overhead" in x
                else "–"
            ),
        )
    for endpoint, concurrency in CLOSED_LOOPS:

        def loop(x, e=endpoint, c=concurrency):
            hit = [r for r in x.get("closed_loop", []) if r["endpoint"] == e and r["concurrency"] == c]
            return f"{hit[0]['rps']} req/s, p95 {hit[0]['p95_ms']} ms, non-200 {hit[0]['non_200']}" if hit else "–"

        row(f"/{endpoint} hybrid, concurrency {concurrency}", loop)
    rows += markdown_table(["", *v], table)
    rows += ["", "Triton statistics (ms per execution; queue per request):", ""]
    statistics = ("average_batch", "queue_ms_per_request", "compute_input_ms", "compute_infer_ms", "compute_output_ms")
    for name, data in v.items():
        rows += [f"**{name}**", ""]
        rows += markdown_table(
            ["model", "avg batch", "queue", "compute_input", "compute_infer", "compute_output"],
            [[model, *(s[k] for k in statistics)] for model, s in sorted(data.get("triton_statistics", {}).items())],
        )
        rows.append("")
    return "\n".join(rows) + "\n"


def chart(summary: dict[str, Any], path: Path) -> None:
    """Throughput vs p95 latency of /reconstruct hybrid per concurrency, one line per variant."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, data in summary["variants"].items():
        loops = [r for r in data.get("closed_loop", []) if r["endpoint"] == "reconstruct" and r["p95_ms"]]
        ax.plot([r["rps"] for r in loops], [r["p95_ms"] for r in loops], marker="o", label=name)
        for r in loops:
            ax.annotate(f"c={r['concurrency']}", (r["rps"], r["p95_ms"]), textcoords="offset points", xytext=(4, 4))
    ax.set_xlabel("throughput (req/s)")
    ax.set_ylabel("p95 latency (ms)")
    ax.set_yscale("log")
    ax.set_title(f"/reconstruct hybrid, closed loop — {summary.get('device')}")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run")
    run.add_argument("--variant", choices=VARIANTS, required=True)
    run.add_argument("--out", type=Path, required=True)
    run.add_argument("--pairs", type=int, default=30)
    run.add_argument("--seconds", type=float, default=30.0)
    summary = sub.add_parser("summarize")
    summary.add_argument("directory", type=Path)
    args = parser.parse_args(argv)
    if args.command == "summarize":
        print(markdown(summarize(args.directory)))
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {
        "variant": args.variant,
        "device": gpu_name(),
        "commit": git_commit(),
        "command": (
            f"python -m benchmarks.gpu run --variant {args.variant} --pairs {args.pairs} --seconds {args.seconds}"
        ),
    }
    run_variant(args.variant, args.out, args.pairs, args.seconds, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
