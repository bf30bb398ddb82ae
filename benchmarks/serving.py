"""The embedded stack vs the in-process reference pipeline, same inputs (benchmarks/README.md, "The tiny CPU stack").

    python -m benchmarks.serving [--requests 30] [--out benchmarks/results]

1. starts `python -m service` (embedded tritonserver + gateway, as `make up` does with the venv present) and
   times it to /readyz 200, sampling the whole process tree's resident memory throughout;
2. sends the same PNG to /reconstruct for each pipeline, interleaved (hybrid, vlm, spatial, hybrid, …), one
   request at a time after a warm-up, and records client-side latency;
3. runs the same decode → reference.reconstruct on the same bytes in this process (the baseline without
   gateway and Triton) and reports the difference of medians per pipeline;
4. writes `<out>/serving-tiny-cpu.json` and `.md` (default `benchmarks/results/`).
"""

from __future__ import annotations

import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

from benchmarks.harness import ROOT, command_parser, write_results
from benchmarks.probes import PeakMemory
from hybrid.contracts import PIPELINES
from hybrid.media import MediaLimits, decode_media, encode_frames
from hybrid.samples import png
from hybrid.tables import markdown_table
from service.local_stack import running_stack
from service.verdict import quantile


def summary(values: list[float]) -> dict[str, float]:
    return {
        "p50_ms": statistics.median(values) * 1000,
        "p95_ms": quantile(values, 0.95) * 1000,
        "mean_ms": statistics.fmean(values) * 1000,
        "n": len(values),
    }


def main(argv: list[str] | None = None) -> None:
    parser = command_parser("serving", __doc__)
    parser.add_argument("--requests", type=int, default=30, help="measured requests per pipeline")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args(argv)

    data = png(224, 224, seed=0)
    served: dict[str, list[float]] = {p: [] for p in PIPELINES}
    print("starting the stack…", flush=True)
    # The sampler watches this process's children from before the service starts: start-up peaks count too.
    with (
        tempfile.TemporaryDirectory() as tmp,
        PeakMemory(os.getpid(), include_root=False) as memory,
        running_stack(Path(tmp) / "service.log") as stack,
    ):
        ready_s = stack.ready_s
        with httpx.Client(timeout=300) as client:
            for i in range(args.warmup + args.requests):
                for pipeline in PIPELINES:
                    t0 = time.perf_counter()
                    reply = client.post(
                        f"{stack.gateway_url}/reconstruct",
                        params={"pipeline": pipeline},
                        files={"file": ("in.png", data)},
                    )
                    elapsed = time.perf_counter() - t0
                    reply.raise_for_status()
                    if i >= args.warmup:
                        served[pipeline].append(elapsed)
    print(f"served {args.requests} requests per pipeline", flush=True)

    # The same work in-process: decode, encoders, head, decoder, PNG encode; no HTTP, no Triton.
    from hybrid.pipeline import ReferencePipeline
    from hybrid.profiles import get_profile

    profile = get_profile("tiny")
    reference = ReferencePipeline.build(profile, device="cpu")
    inproc: dict[str, list[float]] = {p: [] for p in PIPELINES}
    for i in range(args.warmup + args.requests):
        for pipeline in PIPELINES:
            t0 = time.perf_counter()
            frames = decode_media(data, MediaLimits()).frames
            video = reference.reconstruct(frames, pipeline, 1, profile.decoder.default_steps, 0)
            encode_frames(video, "png")
            if i >= args.warmup:
                inproc[pipeline].append(time.perf_counter() - t0)

    results = {
        "device": f"CPU: {platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "profile": "tiny",
        "dtype": "float32",
        "batch": 1,
        "input": "224x224 PNG",
        "output": f"1 frame {profile.decoder.width}x{profile.decoder.height} PNG, "
        f"{profile.decoder.default_steps} steps",
        "command": "python -m benchmarks.serving " + " ".join(argv or sys.argv[1:]),
        "time_to_ready_s": ready_s,
        "peak_stack_rss_mib": memory.peak_bytes / 2**20,
        "served": {p: summary(v) for p, v in served.items()},
        "in_process": {p: summary(v) for p, v in inproc.items()},
    }
    results["serving_overhead_ms"] = {
        p: results["served"][p]["p50_ms"] - results["in_process"][p]["p50_ms"] for p in PIPELINES
    }
    write_results(args.out / "serving-tiny-cpu", results, markdown(results))
    print(markdown(results))


def markdown(r: dict) -> str:
    lines = [
        f"Device: {r['device']}; profile {r['profile']}, {r['dtype']}, batch {r['batch']}, input {r['input']}, "
        f"output {r['output']}.",
        f"Command: `{r['command'].strip()}`",
        "",
    ]
    rows = [
        [p, *(f"{ms:.1f}" for ms in (s["p50_ms"], s["p95_ms"], i["p50_ms"], r["serving_overhead_ms"][p]))]
        for p, s, i in ((p, r["served"][p], r["in_process"][p]) for p in PIPELINES)
    ]
    head = ["pipeline", "/reconstruct p50 (ms)", "p95 (ms)", "in-process p50 (ms)", "gateway + Triton overhead (ms)"]
    lines += markdown_table(head, rows, align="lrrrr")
    lines += [
        "",
        f"Time from start (venv present) to ready: {r['time_to_ready_s']:.1f} s. "
        f"Peak resident memory of the stack (gateway + tritonserver + model stubs): {r['peak_stack_rss_mib']:.0f} MiB.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
