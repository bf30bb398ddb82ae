"""Every request shape, in process and through the gateway side by side: the serving tax as a measured ratio.

    python -m benchmarks.shapes run --phases inprocess --out DIR           # a GPU call of its own (~5 min)
    python -m benchmarks.shapes run --phases service,loops,warm --out DIR  # the next call (~6 min)
    python -m benchmarks.shapes summarize DIR [DIR ...] --out benchmarks/results/gpu-h200

The same requests — a 224×224 PNG in with 1, 9 and 17 frames out, a 9-frame GIF in with 9 out, and `/encode` of
both — are timed two ways, one at a time, `hybrid` and `vlm` interleaved:
- `inprocess`: `hybrid.pipeline.ReferencePipeline` in the profile's runtime (compiled on the full profile: the
  graphs the served models prepare), doing a request's whole work in one process: decode the upload as the gateway
  does, the models, encode the reply (PNG for one frame, WebP for several; .npy for `/encode`);
- `service`: `python -m service` over a generated repository (KIND_GPU where a GPU exists), as users call it;
  its cold start (an empty compile cache), GPU memory, and per case the `Server-Timing` phases and Triton's
  per-model statistics (the per-phase profile of where the serving tax goes).
- `loops`: closed loops of `/reconstruct?pipeline=hybrid`, one frame, at concurrency 1, 32 and 64;
- `warm`: a restart on the compile cache the cold start filled.
Each phase writes DIR/shapes-<phase>.json as it goes (a call cut short keeps what it measured); `summarize` merges
the phases of one or more DIRs into shapes.json, shapes.md and shapes.png.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from benchmarks.harness import (
    closed_loop,
    command_parser,
    counters_delta,
    device_name,
    git_commit,
    gpu_memory_gib,
    has_gpu,
    model_counters,
    service_env,
    write_json,
    write_repository,
    write_results,
)
from benchmarks.overhead import bootstrap_ratio_ci
from hybrid import samples
from hybrid.contracts import IMAGE_SIZE
from hybrid.media import MediaLimits, decode_media, encode_frames
from hybrid.tables import markdown_table
from service.local_stack import running_stack
from service.verdict import quantile

PHASES = ("inprocess", "service", "loops", "warm")
PIPELINES = ("hybrid", "vlm")
LOOP_CONCURRENCY = (1, 32, 64)
START_TIMEOUT_S = 600


@dataclass(frozen=True)
class Case:
    """One kind of request: the endpoint, its input (a PNG, or a GIF of `input_frames`) and frames out."""

    endpoint: str
    input_frames: int
    output_frames: int | None  # None for /encode

    @property
    def name(self) -> str:
        out = f"→{self.output_frames}" if self.output_frames else ""
        return f"{self.endpoint} {self.input_frames}{out}"

    def params(self, pipeline: str) -> dict[str, Any]:
        return {"pipeline": pipeline, **({"frames": self.output_frames} if self.output_frames else {})}


CASES = (
    Case("reconstruct", 1, 1),
    Case("reconstruct", 1, 9),
    Case("reconstruct", 1, 17),
    Case("reconstruct", 9, 9),
    Case("encode", 1, None),
    Case("encode", 9, None),
)


def media(case: Case, seed: int) -> bytes:
    """A 224×224 PNG, or a GIF of the case's frames at 224×224."""
    frames = samples.frames(case.input_frames, IMAGE_SIZE, IMAGE_SIZE, seed)
    return encode_frames(frames, "png" if case.input_frames == 1 else "gif")


def timed_pairs(run: Callable[[str, bytes], Any], case: Case, requests: int, warmup: int) -> dict[str, list[float]]:
    """Seconds per request for each pipeline, interleaved (the order alternates), after `warmup` rounds."""
    inputs = [media(case, seed) for seed in range(4)]
    seconds: dict[str, list[float]] = {p: [] for p in PIPELINES}
    for i in range(warmup + requests):
        order = PIPELINES if i % 2 == 0 else PIPELINES[::-1]
        for pipeline in order:
            started = time.perf_counter()
            run(pipeline, inputs[i % len(inputs)])
            if i >= warmup:
                seconds[pipeline].append(time.perf_counter() - started)
    return seconds


def summary_ms(values: list[float]) -> dict[str, float]:
    return {"p50_ms": round(quantile(values, 0.5) * 1000, 2), "p95_ms": round(quantile(values, 0.95) * 1000, 2)}


def overhead(seconds: dict[str, list[float]]) -> dict[str, Any]:
    """E-P2.6 at this shape: median(hybrid)/median(vlm) − 1 with the paired bootstrap's 95% interval."""
    ratio = quantile(seconds["hybrid"], 0.5) / quantile(seconds["vlm"], 0.5) - 1
    low, high = bootstrap_ratio_ci(seconds["hybrid"], seconds["vlm"], resamples=4000, seed=1)
    return {"median": round(ratio, 4), "ci95": [round(low, 4), round(high, 4)]}


# Phase: in process.


def in_process(profile_name: str, overrides: dict[str, Any], requests: int, result: dict, save: Callable) -> None:
    """The cases through `ReferencePipeline` in one process: decode, models, reply encoding, as a request."""
    import torch

    from hybrid.pipeline import ReferencePipeline
    from hybrid.profiles import get_profile

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("hybrid").setLevel(logging.INFO)  # each graph captured, with its time
    started = time.perf_counter()
    reference = ReferencePipeline.build(get_profile(profile_name, overrides))
    result["prepare_s"] = round(time.perf_counter() - started, 1)
    result["runtime"] = reference.profile.runtime
    print(f"[inprocess] built and prepared in {result['prepare_s']} s", flush=True)
    steps = reference.profile.decoder.default_steps
    limits = MediaLimits()
    result["cases"] = {}
    for case in CASES:
        models_s: dict[str, list[float]] = {p: [] for p in PIPELINES}

        def request(pipeline: str, data: bytes, case: Case = case, models_s: dict = models_s) -> bytes:
            frames = decode_media(data, limits, size=IMAGE_SIZE).frames
            began = time.perf_counter()
            if case.output_frames is None:
                conditioning = reference.encode(frames, pipeline)
                models_s[pipeline].append(time.perf_counter() - began)
                buffer = io.BytesIO()
                np.save(buffer, conditioning)
                return buffer.getvalue()
            video = reference.reconstruct(frames, pipeline, case.output_frames, steps, 0)
            models_s[pipeline].append(time.perf_counter() - began)
            return encode_frames(video, "png" if case.output_frames == 1 else "webp")

        seconds = timed_pairs(request, case, requests, warmup=2)
        result["cases"][case.name] = {
            "case": asdict(case),
            **{
                p: {**summary_ms(s), "models_p50_ms": summary_ms(models_s[p][-requests:])["p50_ms"]}
                for p, s in seconds.items()
            },
            "overhead": overhead(seconds),
        }
        print(f"[inprocess] {case.name}: {json.dumps(result['cases'][case.name])}", flush=True)
        save()
    result["decoder_alone"] = decoder_alone(reference, steps)
    print(f"[inprocess] the decoder alone: {json.dumps(result['decoder_alone'])}", flush=True)
    if torch.cuda.is_available():
        result["gpu_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 1)
    save()
    if reference.profile.runtime == "compiled":
        result["agreement_with_eager"] = agreement(reference, profile_name, overrides)
        print(f"[inprocess] compiled vs eager: {json.dumps(result['agreement_with_eager'])}", flush=True)
        save()


def decoder_alone(reference: Any, steps: int, runs: int = 10) -> dict[str, float]:
    """p50 ms of the decoder by itself (synchronized by its host copy of the frames), per (batch, frames out): the
    stage that bounds a reconstruction, without the encoders' GPU work it overlaps with inside `reconstruct`."""
    import torch

    out = {}
    for batch, frames in ((1, 1), (8, 1), (1, 9), (1, 17)):
        conditioning = torch.randn(batch, 64, 4096, device=reference.device)
        seconds = []
        for _ in range(runs + 2):
            began = time.perf_counter()
            reference.decoder(conditioning, frames, steps, list(range(batch)))
            seconds.append(time.perf_counter() - began)
        out[f"batch {batch}, {frames} frames"] = summary_ms(seconds[2:])["p50_ms"]
    return out


def agreement(compiled: Any, profile_name: str, overrides: dict[str, Any]) -> dict[str, Any]:
    """The compiled pipeline's outputs against an eager one's on the same inputs (same seeded weights): the
    conditioning's relative error per pipeline and clip length, and the frames' mean and max difference."""
    from hybrid.pipeline import ReferencePipeline
    from hybrid.profiles import get_profile

    eager = ReferencePipeline.build(get_profile(profile_name, {**overrides, "runtime": "eager"}))
    out: dict[str, Any] = {}
    for frames_in in (1, 9):
        frames = samples.frames(frames_in, IMAGE_SIZE, IMAGE_SIZE, seed=7)
        for pipeline in ("hybrid", "vlm", "spatial"):
            a, b = compiled.encode(frames, pipeline), eager.encode(frames, pipeline)
            out[f"encode {frames_in} {pipeline} rel_error"] = float(np.linalg.norm(a - b) / np.linalg.norm(b))
    for frames_out in (1, 9):
        a = compiled.reconstruct(samples.frames(1, IMAGE_SIZE, IMAGE_SIZE, 7), "hybrid", frames_out, 8, 0)
        b = eager.reconstruct(samples.frames(1, IMAGE_SIZE, IMAGE_SIZE, 7), "hybrid", frames_out, 8, 0)
        diff = np.abs(a.astype(np.int16) - b.astype(np.int16))
        out[f"reconstruct 1→{frames_out} frames mean_abs_diff"] = round(float(diff.mean()), 3)
        out[f"reconstruct 1→{frames_out} frames max_abs_diff"] = int(diff.max())
    return out


# Phases through the service.


def server_timing(header: str) -> dict[str, float]:
    """`gateway;dur=12.3, decode;dur=1.0, …` → {"gateway": 12.3, …} (ms)."""
    spans = {}
    for part in header.split(","):
        name, _, duration = part.strip().partition(";dur=")
        if duration:
            spans[name] = float(duration)
    return spans


def through_service(url: str, triton_http_url: str, requests: int, result: dict, save: Callable) -> None:
    result["cases"] = {}
    with httpx.Client(timeout=300) as client:
        for case in CASES:
            timings: dict[str, list[dict[str, float]]] = {p: [] for p in PIPELINES}

            def request(pipeline: str, data: bytes, case: Case = case, timings: dict = timings) -> None:
                reply = client.post(f"{url}/{case.endpoint}", params=case.params(pipeline), files={"file": data})
                if reply.status_code != 200:
                    raise RuntimeError(f"{case.name} {pipeline}: HTTP {reply.status_code}: {reply.text[:300]}")
                timings[pipeline].append(server_timing(reply.headers.get("server-timing", "")))

            before = model_counters(triton_http_url)
            seconds = timed_pairs(request, case, requests, warmup=2)
            spans = {
                p: {k: round(quantile([t[k] for t in ts[-requests:] if k in t], 0.5), 2) for k in ts[-1]}
                for p, ts in timings.items()
            }
            result["cases"][case.name] = {
                "case": asdict(case),
                **{p: {**summary_ms(s), "server_timing_p50_ms": spans[p]} for p, s in seconds.items()},
                "overhead": overhead(seconds),
                "triton": counters_delta(before, model_counters(triton_http_url)),
            }
            print(f"[service] {case.name}: {json.dumps(result['cases'][case.name])}", flush=True)
            save()


def service_phases(
    phases: list[str],
    profile_name: str,
    overrides: dict[str, Any],
    requests: int,
    seconds: float,
    loops: tuple[int, ...],
    out: Path,
) -> None:
    work = Path(tempfile.mkdtemp(prefix="shapes-"))
    cache, repository = work / "compile-cache", work / "model_repository"
    write_repository(profile_name, {**overrides, "compile_cache": str(cache)}, repository)
    try:
        if "service" in phases or "loops" in phases:
            result, save = partial(out, "service")
            log = out / "service.log"
            with running_stack(log, stack_env(repository, profile_name, log), START_TIMEOUT_S) as stack:
                result["ready_s"] = round(stack.ready_s, 1)
                result["gpu_memory_gib"] = round(gpu_memory_gib(), 1) if has_gpu() else None
                print(f"[service] ready in {result['ready_s']} s (cold: an empty compile cache)", flush=True)
                save()
                if "service" in phases:
                    through_service(stack.gateway_url, stack.triton_http_url, requests, result, save)
                if "loops" in phases:
                    image = media(CASES[0], seed=0)
                    result["loops"] = []
                    for concurrency in loops:
                        before = model_counters(stack.triton_http_url)
                        loop = closed_loop_summary(stack.gateway_url, concurrency, seconds, image)
                        loop["triton"] = counters_delta(before, model_counters(stack.triton_http_url))
                        result["loops"].append(loop)
                        print(f"[loops] {json.dumps(loop)}", flush=True)
                        save()
                if result["gpu_memory_gib"] is not None:
                    result["gpu_memory_gib"] = round(max(result["gpu_memory_gib"], gpu_memory_gib()), 1)
                save()
        if "warm" in phases:
            result, save = partial(out, "warm")
            log = out / "service-warm.log"
            with running_stack(log, stack_env(repository, profile_name, log), START_TIMEOUT_S) as stack:
                result["ready_warm_s"] = round(stack.ready_s, 1)
            print(f"[warm] ready in {result['ready_warm_s']} s", flush=True)
            save()
    finally:
        shutil.rmtree(work, ignore_errors=True)


def stack_env(repository: Path, profile_name: str, log: Path) -> dict[str, str]:
    return {
        # tritonserver's own start limit 60 s inside the stack's, so that its error is the one reported
        **service_env(repository, profile_name, START_TIMEOUT_S - 60, gpu=has_gpu()),
        "HYBRID_MAX_IN_FLIGHT": "128",  # the closed loops measure Triton, not the gateway's admission limit
        "HYBRID_EMBEDDED_TRITON_LOG": str(log.with_name(log.stem + "-triton.log")),
    }


def closed_loop_summary(url: str, concurrency: int, seconds: float, image: bytes) -> dict[str, Any]:
    """A closed loop of /reconstruct?pipeline=hybrid, one frame, as its row of the results."""
    latencies, errors, elapsed = asyncio.run(
        closed_loop(f"{url}/reconstruct", {"pipeline": "hybrid"}, image, concurrency, seconds, timeout_s=120)
    )
    return {
        "endpoint": "reconstruct",
        "pipeline": "hybrid",
        "concurrency": concurrency,
        "seconds": round(elapsed, 1),
        "rps": round(len(latencies) / elapsed, 2),
        "p50_ms": round(quantile(latencies, 0.5) * 1000, 1) if latencies else None,
        "p95_ms": round(quantile(latencies, 0.95) * 1000, 1) if latencies else None,
        "requests": len(latencies),
        "non_200": sum(errors.values()),
    }


def partial(out: Path, phase: str) -> tuple[dict[str, Any], Callable[[], None]]:
    path = out / f"shapes-{phase}.json"
    result: dict[str, Any] = {"phase": phase, "device": device_name(), "commit": git_commit(), "command": COMMAND}

    def save() -> None:
        write_json(path, result)

    return result, save


COMMAND = "python -m benchmarks.shapes"  # completed by main() with the arguments


# Summary.


def summarize(directories: list[Path], out: Path) -> dict[str, Any]:
    phases: dict[str, dict[str, Any]] = {}
    for directory in directories:
        for path in sorted(directory.glob("shapes-*.json")):
            data = json.loads(path.read_text())
            phases[data["phase"]] = data
    inproc, service = phases.get("inprocess", {}), phases.get("service", {})
    rows = []
    for case in CASES:
        here, there = inproc.get("cases", {}).get(case.name, {}), service.get("cases", {}).get(case.name, {})
        for pipeline in PIPELINES:
            a, b = here.get(pipeline, {}), there.get(pipeline, {})
            row = {
                "endpoint": case.endpoint,
                "pipeline": pipeline,
                "input_frames": case.input_frames,
                "output_frames": case.output_frames,
                "concurrency": 1,
                "in_process_p50_ms": a.get("p50_ms"),
                "service_p50_ms": b.get("p50_ms"),
                "service_p95_ms": b.get("p95_ms"),
                "rps": round(1000 / b["p50_ms"], 2) if b.get("p50_ms") else None,
                "non_200": 0 if b else None,
            }
            if a.get("p50_ms") and b.get("p50_ms"):
                row["serving_tax_ms"] = round(b["p50_ms"] - a["p50_ms"], 2)
                row["service_over_in_process"] = round(b["p50_ms"] / a["p50_ms"], 3)
            if pipeline == "hybrid" and there.get("overhead"):
                row["overhead_vs_vlm"] = there["overhead"]
            rows.append(row)
    for loop in service.get("loops", []):
        rows.append(
            {
                "endpoint": loop["endpoint"],
                "pipeline": loop["pipeline"],
                "input_frames": 1,
                "output_frames": 1,
                "concurrency": loop["concurrency"],
                "in_process_p50_ms": None,
                "service_p50_ms": loop["p50_ms"],
                "service_p95_ms": loop["p95_ms"],
                "rps": loop["rps"],
                "non_200": loop["non_200"],
            }
        )
    first = service or inproc
    summary = {
        "device": first.get("device"),
        "commit": ", ".join(sorted({p.get("commit", "?") for p in phases.values()})),
        "command": "; ".join(dict.fromkeys(p.get("command", "") for p in phases.values())),
        "ready_s": service.get("ready_s"),
        "ready_warm_s": phases.get("warm", {}).get("ready_warm_s"),
        "gpu_memory_gib": service.get("gpu_memory_gib"),
        "in_process_prepare_s": inproc.get("prepare_s"),
        "rows": rows,
        "phases": phases,
    }
    write_results(out / "shapes", summary, markdown(summary))
    chart(summary, out / "shapes.png")
    return summary


def markdown(summary: dict[str, Any]) -> str:
    def ms(v: Any) -> str:
        return "–" if v is None else f"{v:.1f}"

    def ci(o: dict | None) -> str:
        return f"{o['median']:+.1%} [{o['ci95'][0]:+.1%}, {o['ci95'][1]:+.1%}]" if o else ""

    shapes, loops = summary["rows"][: len(CASES) * len(PIPELINES)], summary["rows"][len(CASES) * len(PIPELINES) :]
    lines = [
        f"# Every shape, in process and through the service — {summary['device']}",
        "",
        f"Commit {summary['commit']}. Commands: `{summary['command']}`. Ready: cold {summary['ready_s']} s, warm "
        f"{summary['ready_warm_s']} s; GPU memory of the stack {summary['gpu_memory_gib']} GiB; the in-process "
        f"pipeline built and prepared in {summary['in_process_prepare_s']} s.",
        "",
        "One request at a time (p50/p95 in ms; tax = service − in process; E-P2.6 = hybrid over vlm at that shape):",
        "",
    ]
    lines += markdown_table(
        ["endpoint", "pipeline", "frames in → out", "in process", "service", "service p95", "tax", "ratio", "E-P2.6"],
        [
            [
                r["endpoint"],
                r["pipeline"],
                f"{r['input_frames']} → {r['output_frames'] or 'encode'}",
                ms(r["in_process_p50_ms"]),
                ms(r["service_p50_ms"]),
                ms(r["service_p95_ms"]),
                ms(r.get("serving_tax_ms")),
                f"{r['service_over_in_process']:.2f}×" if r.get("service_over_in_process") else "–",
                ci(r.get("overhead_vs_vlm")),
            ]
            for r in shapes
        ],
    )
    lines += profile_lines(summary)
    if loops:
        lines += ["", "Closed loops, `/reconstruct?pipeline=hybrid`, one frame out:", ""]
        lines += markdown_table(
            ["concurrency", "req/s", "p50", "p95", "non-200"],
            [
                [r["concurrency"], r["rps"], ms(r["service_p50_ms"]), ms(r["service_p95_ms"]), r["non_200"]]
                for r in loops
            ],
        )
    return "\n".join(lines) + "\n"


def profile_lines(summary: dict[str, Any]) -> list[str]:
    """Where a hybrid request's time goes through the service, per case: the client's p50, the HTTP exchange
    (client − gateway), the gateway's decode and reply encoding, Triton, and each model's time per request
    (queue + compute_input + compute_infer + compute_output, Triton's statistics)."""
    service = summary["phases"].get("service", {})
    if not service.get("cases"):
        return []
    models = ("preprocess", "vlm_encoder", "spatial_encoder", "fusion", "video_decoder")
    rows = []
    for name, case in service["cases"].items():
        timing = case["hybrid"]["server_timing_p50_ms"]
        per_model = case.get("triton", {})
        rows.append(
            [
                name,
                case["hybrid"]["p50_ms"],
                round(case["hybrid"]["p50_ms"] - timing.get("gateway", 0), 1),
                timing.get("decode"),
                timing.get("encode", "–"),
                timing.get("triton"),
                *(
                    round(sum(v for k, v in per_model[m].items() if k.endswith("_ms")), 1) if m in per_model else "–"
                    for m in models
                ),
            ]
        )
    lines = ["", "Where a hybrid request's time goes (p50 ms; each model per request, queue and compute phases):", ""]
    lines += markdown_table(["case", "client", "HTTP", "decode", "reply encode", "Triton", *models], rows)
    alone = summary["phases"].get("inprocess", {}).get("decoder_alone")
    if alone:
        lines += ["", "The decoder alone, in process (p50 ms): " + ", ".join(f"{k}: {v}" for k, v in alone.items())]
    return lines


def chart(summary: dict[str, Any], path: Path) -> None:
    """In process vs through the service, p50 per case, hybrid."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in summary["rows"][: len(CASES) * len(PIPELINES)] if r["pipeline"] == "hybrid"]
    labels = [f"{r['endpoint']}\n{r['input_frames']}→{r['output_frames'] or 'enc'}" for r in rows]
    x = np.arange(len(rows))
    fig, ax = plt.subplots(figsize=(8, 4.5))
    ax.bar(x - 0.2, [r["in_process_p50_ms"] or 0 for r in rows], 0.4, label="in process")
    ax.bar(x + 0.2, [r["service_p50_ms"] or 0 for r in rows], 0.4, label="through gateway + Triton")
    ax.set_xticks(x, labels)
    ax.set_ylabel("p50 latency (ms)")
    ax.set_title(f"hybrid, one request at a time — {summary['device']}")
    ax.legend()
    ax.grid(True, axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    global COMMAND
    parser = command_parser("shapes", __doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="measure some phases into DIR/shapes-<phase>.json")
    run.add_argument("--phases", default=",".join(PHASES), help=f"comma-separated, of {', '.join(PHASES)}")
    run.add_argument("--profile", default="full", help="full (random weights) on a GPU; tiny on a CPU")
    run.add_argument("--profile-overrides", default="{}", help="JSON merged into the profile, e.g. the runtime")
    run.add_argument("--requests", type=int, default=20, help="requests per pipeline and case")
    run.add_argument("--seconds", type=float, default=15.0, help="length of each closed loop")
    run.add_argument("--loops", default=",".join(map(str, LOOP_CONCURRENCY)), help="closed-loop concurrencies")
    run.add_argument("--out", type=Path, required=True)
    merge = sub.add_parser("summarize", help="merge phases into shapes.json, .md, .png")
    merge.add_argument("directories", type=Path, nargs="+")
    merge.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    if args.command == "summarize":
        print(markdown(summarize(args.directories, args.out)))
        return 0
    phases = [p for p in args.phases.split(",") if p]
    unknown = set(phases) - set(PHASES)
    if unknown:
        parser.error(f"unknown phases {sorted(unknown)}; choose from {', '.join(PHASES)}")
    overrides = {"random_weights": True, **json.loads(args.profile_overrides)}
    COMMAND = (
        f"python -m benchmarks.shapes run --phases {args.phases} --profile {args.profile} "
        f"--requests {args.requests} --seconds {args.seconds} --loops {args.loops}"
        + (f" --profile-overrides '{args.profile_overrides}'" if args.profile_overrides != "{}" else "")
    )
    args.out.mkdir(parents=True, exist_ok=True)
    if phases == ["inprocess"]:
        result, save = partial(args.out, "inprocess")
        in_process(args.profile, overrides, args.requests, result, save)
        return 0
    if "inprocess" in phases:
        # In a process of its own: its models must not hold the GPU memory the service's figure counts.
        inner = ["run", "--phases", "inprocess", "--profile", args.profile, "--out", str(args.out)]
        inner += ["--profile-overrides", args.profile_overrides, "--requests", str(args.requests)]
        subprocess.run([sys.executable, "-m", "benchmarks.shapes", *inner], check=True)
    loops = tuple(int(c) for c in args.loops.split(",") if c)
    service_phases(phases, args.profile, overrides, args.requests, args.seconds, loops, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
