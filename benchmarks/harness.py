"""What every benchmark command repeats, defined once: its parser, where the results came from (commit, device), the
served repository and the settings of a measured stack, closed loops, Triton's per-model statistics and the
results files. Starting the stack itself is `service.local_stack.running_stack`, as the tests start it."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
GPU_TRITON_ARGS = "--cuda-memory-pool-byte-size=0:2147483648 --pinned-memory-pool-byte-size=536870912"
"""tritonserver flags on a GPU: a CUDA memory pool so GPU tensors pass between steps without host copies."""
ENSEMBLES = ("encode_", "reconstruct_")
"""Name prefixes of the ensembles (hybrid.contracts.ensemble_name): their statistics sum their steps'."""


def command_parser(name: str, doc: str | None) -> argparse.ArgumentParser:
    """The parser of `python -m benchmarks.<name>`, whose --help is the module's docstring as written: what the
    command measures and where it writes."""
    formatter = argparse.RawDescriptionHelpFormatter
    return argparse.ArgumentParser(prog=f"python -m benchmarks.{name}", description=doc, formatter_class=formatter)


def git_commit() -> str:
    """HYBRID_COMMIT when set (a device machine receives the working tree, not always its history), else git's,
    marked +wip when the tree has uncommitted changes."""
    if os.environ.get("HYBRID_COMMIT"):
        return os.environ["HYBRID_COMMIT"]

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=False).stdout.strip()

    commit = git("rev-parse", "--short", "HEAD") or "unknown"
    return f"{commit}+wip" if git("status", "--porcelain", "--untracked-files=no") else commit


def has_gpu() -> bool:
    return shutil.which("nvidia-smi") is not None


def gpu_name(index: str | None = None) -> str:
    """The name nvidia-smi gives the first GPU (or GPU `index`), "unknown" where it gives none."""
    query = ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader", *(["-i", index] if index else [])]
    try:
        done = subprocess.run(query, capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return done.stdout.strip().splitlines()[0] if done.returncode == 0 and done.stdout.strip() else "unknown"


def gpu_memory_gib() -> float:
    """Memory in use on every GPU (MiB → GiB), which is the whole stack's: nothing else runs there."""
    done = subprocess.run(
        ["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"], capture_output=True, text=True
    )
    return sum(float(v) for v in done.stdout.split()) / 1024 if done.returncode == 0 else float("nan")


def device_name() -> str:
    return gpu_name() if has_gpu() else f"CPU ({os.cpu_count()} cores)"


def write_repository(
    profile: str, overrides: dict[str, Any], out: Path, kind: str | None = None, cached: Sequence[str] = ()
) -> None:
    """A served repository (export.repository) for `profile` with `overrides`, on KIND_GPU instances where a GPU
    exists unless `kind` says, with Triton's response cache on the `cached` models."""
    from export.repository import RepositoryOptions, write

    kind = kind or ("KIND_GPU" if has_gpu() else "KIND_CPU")
    write(RepositoryOptions(profile, json.dumps(overrides), kind, response_cache=tuple(cached)), out)


def service_env(
    repository: Path, profile: str, start_timeout_s: float, gpu: bool, triton_args: str = ""
) -> dict[str, str]:
    """The settings a measured `python -m service` runs with, beside `running_stack`'s loopback ports: the
    repository and profile, and tritonserver's flags (GPU_TRITON_ARGS on a GPU, plus `triton_args`)."""
    return {
        "HYBRID_MODEL_REPOSITORY": str(repository),
        "HYBRID_PROFILE": profile,
        "HYBRID_TRITON_START_TIMEOUT_S": str(start_timeout_s),
        "HYBRID_EMBEDDED_TRITON_ARGS": " ".join(a for a in (GPU_TRITON_ARGS if gpu else "", triton_args) if a),
    }


async def closed_loop(
    url: str, params: dict[str, Any], body: bytes, workers: int, seconds: float, timeout_s: float = 600
) -> tuple[list[float], dict[str, int], float]:
    """`workers` clients, each sending the next request as soon as the last is answered, for `seconds`: the
    latencies of the 200s, the other outcomes counted by status code or exception name, and the elapsed seconds."""
    latencies: list[float] = []
    errors: dict[str, int] = {}
    deadline = time.perf_counter() + seconds
    limits = httpx.Limits(max_connections=workers, max_keepalive_connections=workers)

    async def client(session: httpx.AsyncClient) -> None:
        while time.perf_counter() < deadline:
            started = time.perf_counter()
            try:
                reply = await session.post(url, params=params, files={"file": ("in.png", body)})
                outcome = str(reply.status_code)
            except httpx.HTTPError as exc:
                outcome = type(exc).__name__
            if outcome == "200":
                latencies.append(time.perf_counter() - started)
            else:
                errors[outcome] = errors.get(outcome, 0) + 1

    async with httpx.AsyncClient(timeout=timeout_s, limits=limits) as session:
        began = time.perf_counter()
        await asyncio.gather(*(client(session) for _ in range(workers)))
        return latencies, errors, time.perf_counter() - began


def model_stats(triton_http_url: str, model: str = "") -> list[dict[str, Any]]:
    """Triton's `model_stats` entries (of every model, or of `model`) from its statistics API."""
    path = f"/v2/models/{model}/stats" if model else "/v2/models/stats"
    return httpx.get(f"{triton_http_url}{path}", timeout=30).json().get("model_stats", [])


def parse_statistics(stats: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Triton's /v2/models/stats → per composing model (ensembles left out): executions, average batch, queue
    per request, and mean ms per execution of compute_input, compute_infer and compute_output."""
    out = {}
    for model in stats.get("model_stats", []):
        executions = int(model.get("execution_count", 0))
        inferences = int(model.get("inference_count", 0))
        if not executions or model["name"].startswith(ENSEMBLES):
            continue
        phases = model["inference_stats"]
        per_request = {k: phases[k]["ns"] / max(phases[k]["count"], 1) / 1e6 for k in ("queue",)}
        batches = model.get("batch_stats", [])
        compute = {
            k: sum(b[k]["ns"] for b in batches) / executions / 1e6
            for k in ("compute_input", "compute_infer", "compute_output")
        }
        out[model["name"]] = {
            "executions": executions,
            "average_batch": round(inferences / executions, 2),
            "queue_ms_per_request": round(per_request["queue"], 2),
            **{f"{k}_ms": round(v, 2) for k, v in compute.items()},
        }
    return out


def model_counters(triton_http_url: str) -> dict[str, dict[str, int]]:
    """Triton's cumulative counters per composing model: executions, requests and ns per phase."""
    out = {}
    for model in model_stats(triton_http_url):
        if model["name"].startswith(ENSEMBLES):
            continue
        phases = model["inference_stats"]
        out[model["name"]] = {
            "executions": int(model.get("execution_count", 0)),
            "requests": int(phases["success"]["count"]),
            **{f"{k}_ns": int(phases[k]["ns"]) for k in ("queue", "compute_input", "compute_infer", "compute_output")},
        }
    return out


def counters_delta(before: dict, after: dict) -> dict[str, dict[str, float]]:
    """Per model over an interval (two `model_counters`): executions, average batch, ms per request of each phase."""
    out = {}
    for name, now in after.items():
        then = before.get(name, {})
        requests = now["requests"] - then.get("requests", 0)
        if requests <= 0:
            continue
        executions = now["executions"] - then.get("executions", 0)
        out[name] = {
            "executions": executions,
            "average_batch": round(requests / max(executions, 1), 2),
            **{
                f"{k}_ms": round((now[f"{k}_ns"] - then.get(f"{k}_ns", 0)) / requests / 1e6, 3)
                for k in ("queue", "compute_input", "compute_infer", "compute_output")
            },
        }
    return out


def write_json(path: Path, data: Any) -> Path:
    """The results' JSON as every command writes it: indented by 2, one newline at the end."""
    path.write_text(json.dumps(data, indent=2, default=str) + "\n")
    return path


def write_results(stem: Path, data: Any, markdown: str) -> list[Path]:
    """`stem`.json and `stem`.md, the folder made first."""
    stem.parent.mkdir(parents=True, exist_ok=True)
    stem.with_suffix(".md").write_text(markdown)
    return [write_json(stem.with_suffix(".json"), data), stem.with_suffix(".md")]
