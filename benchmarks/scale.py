"""Past one GPU, measured: one Triton replica vs two behind one gateway, closed loop at the same concurrency per
replica.

    python -m benchmarks.scale --model-repository DIR --devices 0,1 --label h200x2 [--concurrency 8]
        [--duration-s 60] [--warmup-s 15] [--profile full] [--out benchmarks/results]
    python -m benchmarks.scale --runtime compiled --devices 0,1 --label h200x2-compiled --profile full
        --concurrency 32 --triton-arg=--cuda-memory-pool-byte-size=0:2147483648   # a generated GPU repository
    python -m benchmarks.scale --devices cpu,cpu --label tiny-cpu --duration-s 10   # the same run on CPUs

1. starts one embedded tritonserver per entry of --devices over the same model repository, each on its own
   loopback ports, a GPU pinned with CUDA_VISIBLE_DEVICES (`cpu`: no GPU visible);
2. phase "one": a gateway (`python -m service`, no embedded Triton) on the first replica only; `--concurrency`
   clients send requests back to back (closed loop) for --duration-s after a --warmup-s warm-up;
3. phase "two": a gateway balancing over every replica (`ipv4:a,b`, gRPC round robin), concurrency ×
   replicas clients, same duration;
4. writes `<out>/scale-<label>.json` and `.md`: {"device", "commit", "command", "one": {"rps", "p95_ms"},
   "two": {"rps", "p95_ms"}, "ratio"} (two's throughput over one's) plus p50, counts, errors and how the
   requests split over the replicas (Triton's own statistics).

The replicas run for both phases, so phase one's idle replica costs nothing but memory.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shlex
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.harness import (
    ROOT,
    closed_loop,
    command_parser,
    git_commit,
    gpu_name,
    model_stats,
    write_repository,
    write_results,
)
from hybrid.samples import png
from hybrid.tables import markdown_table
from service.embedded_triton import EmbeddedTriton
from service.local_stack import free_ports, running_stack
from service.verdict import quantile


@dataclass
class Phase:
    """One closed-loop run: what was sent, what came back, and how each replica's share came out."""

    replicas: int
    concurrency: int
    duration_s: float = 0.0
    latencies_s: list[float] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)
    per_replica: list[int] = field(default_factory=list)

    def summary(self) -> dict:
        ok = len(self.latencies_s)
        return {
            "replicas": self.replicas,
            "concurrency": self.concurrency,
            "requests": ok,
            "errors": self.errors,
            "duration_s": round(self.duration_s, 2),
            "rps": ok / self.duration_s if self.duration_s else 0.0,
            "p50_ms": float(quantile(self.latencies_s, 0.5)) * 1000 if ok else None,
            "p95_ms": float(quantile(self.latencies_s, 0.95)) * 1000 if ok else None,
            "inferences_per_replica": self.per_replica,
        }


def ensemble_count(replica: EmbeddedTriton, model: str) -> int:
    """Successful inferences of `model` on one replica, from Triton's statistics API."""
    return sum(int(s["inference_stats"]["success"]["count"]) for s in model_stats(replica.http_url, model))


def run_phase(
    replicas: list[EmbeddedTriton], args: argparse.Namespace, model: str, body: bytes, workdir: Path
) -> Phase:
    phase = Phase(len(replicas), args.concurrency * len(replicas))
    env = {
        "HYBRID_EMBEDDED_TRITON": "false",
        "HYBRID_TRITON_GRPC_URL": "ipv4:" + ",".join(r.grpc_url for r in replicas),
        "HYBRID_TRITON_METRICS_URL": f"http://{replicas[0].host}:{replicas[0].metrics_port}/metrics",
        "HYBRID_PROFILE": args.profile,
        "HYBRID_MAX_IN_FLIGHT": str(phase.concurrency),
        "HYBRID_LOG_LEVEL": "warning",
    }
    url_path = f"/{args.endpoint}"
    params = {"pipeline": args.pipeline}
    with running_stack(workdir / f"gateway-{len(replicas)}.log", env, timeout_s=300) as gateway:
        url = gateway.gateway_url + url_path
        print(f"  warm-up {args.warmup_s:.0f} s at concurrency {phase.concurrency}", flush=True)
        asyncio.run(closed_loop(url, params, body, phase.concurrency, args.warmup_s))
        before = [ensemble_count(r, model) for r in replicas]
        phase.latencies_s, phase.errors, phase.duration_s = asyncio.run(
            closed_loop(url, params, body, phase.concurrency, args.duration_s)
        )
        phase.per_replica = [ensemble_count(r, model) - b for r, b in zip(replicas, before, strict=True)]
    return phase


def describe_devices(devices: list[str]) -> str:
    names = []
    for device in devices:
        if device == "cpu":
            names.append("CPU")
            continue
        name = gpu_name(device)
        names.append(f"GPU {device}" if name == "unknown" else name)
    if len(set(names)) == 1:
        if names[0] == "CPU":
            return f"{len(names)}× CPU ({os.cpu_count()} cores shared)"
        gpus = len(set(devices))
        shared = f", {len(devices)} replicas sharing it" if gpus == 1 else ""
        return f"{gpus}× {names[0]}{shared}"
    return " + ".join(names)


def markdown(r: dict) -> str:
    lines = [
        f"Device: {r['device']}; profile {r['profile']}, runtime {r.get('runtime', 'eager')}; `{r['request']}`, "
        "224×224 PNG in.",
        f"Commit {r['commit']}. Command: `{r['command']}`",
        "",
    ]
    rows = [
        [p["replicas"], p["concurrency"], p["requests"], sum(p["errors"].values()), f"{p['rps']:.2f}"]
        + [f"{p['p50_ms']:.1f}", f"{p['p95_ms']:.1f}", ", ".join(map(str, p["inferences_per_replica"]))]
        for p in (r["one"], r["two"])
    ]
    head = ["replicas", "concurrency", "requests", "errors", "req/s", "p50 (ms)", "p95 (ms)", "inferences per replica"]
    lines += markdown_table(head, rows, align="rrrrrrr")
    lines += [
        "",
        f"Throughput ratio two/one: **{r['ratio']:.2f}** (p95 ratio {r['p95_ratio']:.2f}).",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = command_parser("scale", __doc__)
    parser.add_argument("--model-repository", type=Path, default=ROOT / "model_repository")
    parser.add_argument(
        "--runtime",
        choices=("eager", "compiled"),
        help="serve a generated full-profile GPU repository (random weights) in this runtime instead of "
        "--model-repository; its replicas share one compile cache, so every start after the first is warm",
    )
    parser.add_argument("--devices", default="cpu,cpu", help="one replica per entry: a GPU index, or cpu")
    parser.add_argument("--label", required=True, help="names the results: scale-<label>.json (e.g. h200x2)")
    parser.add_argument("--profile", default="tiny", help="HYBRID_PROFILE of the repository (default steps)")
    parser.add_argument("--concurrency", type=int, default=8, help="clients per replica")
    parser.add_argument("--duration-s", type=float, default=60.0)
    parser.add_argument("--warmup-s", type=float, default=15.0)
    parser.add_argument("--endpoint", choices=("reconstruct", "encode"), default="reconstruct")
    parser.add_argument("--pipeline", default="hybrid")
    parser.add_argument("--start-timeout-s", type=float, default=900.0)
    parser.add_argument("--triton-arg", action="append", default=[], help="extra tritonserver flag (repeatable)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args(argv)
    devices = [d.strip() for d in args.devices.split(",") if d.strip()]
    if len(devices) < 2:
        parser.error("--devices: two or more replicas to compare with one")
    model = f"{args.endpoint}_{args.pipeline}"
    body = png(224, 224, seed=0)

    with tempfile.TemporaryDirectory(prefix="scale-") as tmp:
        workdir = Path(tmp)
        repository, runtime = args.model_repository, "as the repository says"
        if args.runtime:
            repository, runtime = workdir / "model_repository", args.runtime
            # The full profile with random weights on KIND_GPU instances; the replicas share one Inductor cache.
            overrides = {
                "random_weights": True,
                "runtime": args.runtime,
                "compile_cache": str(workdir / "compile-cache"),
            }
            write_repository("full", overrides, repository, kind="KIND_GPU")
        replicas = [
            EmbeddedTriton(
                repository,
                **dict(zip(("http_port", "grpc_port", "metrics_port"), free_ports(3), strict=True)),
                log_path=workdir / f"triton-{i}.log",
                extra_args=list(args.triton_arg),
                env={"CUDA_VISIBLE_DEVICES": "" if device == "cpu" else device},
            )
            for i, device in enumerate(devices)
        ]
        try:
            # From this thread, one after the other: a server is tied to the thread that started it.
            for device, replica in zip(devices, replicas, strict=True):
                started = time.perf_counter()
                replica.start(args.start_timeout_s)
                print(f"replica on {device} ready in {time.perf_counter() - started:.0f} s", flush=True)
            print("phase one: one replica", flush=True)
            one = run_phase(replicas[:1], args, model, body, workdir)
            print(f"  {one.summary()}", flush=True)
            print(f"phase two: {len(replicas)} replicas", flush=True)
            two = run_phase(replicas, args, model, body, workdir)
            print(f"  {two.summary()}", flush=True)
        finally:
            for replica in replicas:
                replica.stop()

    results = {
        "device": describe_devices(devices),
        "commit": git_commit(),
        "command": "python -m benchmarks.scale " + shlex.join(sys.argv[1:] if argv is None else argv),
        "profile": args.profile,
        "runtime": runtime,
        "request": f"POST /{args.endpoint}?pipeline={args.pipeline}",
        "one": one.summary(),
        "two": two.summary(),
    }
    results["ratio"] = results["two"]["rps"] / results["one"]["rps"] if results["one"]["rps"] else None
    if results["one"]["p95_ms"] and results["two"]["p95_ms"]:
        results["p95_ratio"] = results["two"]["p95_ms"] / results["one"]["p95_ms"]
    write_results(args.out / f"scale-{args.label}", results, markdown(results))
    print(markdown(results))
    return 0 if not one.errors and not two.errors else 1


if __name__ == "__main__":
    sys.exit(main())
