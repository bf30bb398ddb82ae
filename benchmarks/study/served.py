"""The E-P2.6 study through the running service (gateway + embedded Triton, as `make up` starts it): Triton's
response cache on the encoder steps, and the paired overhead per DINOv2 variant (benchmarks.study parts `cache`,
`overhead`)."""

from __future__ import annotations

import json
import random
import shlex
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx

from benchmarks.harness import model_stats, parse_statistics, service_env, write_repository
from benchmarks.study.models import latency
from benchmarks.study.settings import StudySettings, profile_overrides
from service.verdict import BUDGET


def write_study_repository(settings: StudySettings, variant: str, out: Path, cached: Sequence[str] = ()) -> None:
    """The served repository for the study's profile with DINOv2 `variant`, the service runtime, and Triton's
    response cache on the `cached` models."""
    extra: dict[str, Any] = {"spatial": {"variant": variant}, "runtime": settings.service_runtime}
    if settings.compile_cache:
        extra["compile_cache"] = str(Path(settings.compile_cache).resolve())
    kind = "KIND_GPU" if settings.cuda else "KIND_CPU"
    write_repository(settings.profile, profile_overrides(settings, **extra), out, kind, cached)


def study_env(settings: StudySettings, repository: Path, triton_args: str = "") -> dict[str, str]:
    """The gateway's settings for a study service (benchmarks.harness.service_env), plus `triton_args`."""
    return service_env(repository, settings.profile, settings.start_timeout_s, settings.cuda, triton_args)


def triton_cache_flags(size: int) -> str:
    """`--cache-config local,size=…` and where the bundled server's local cache library lives (the wheel keeps it
    beside the binary, not under /opt/tritonserver)."""
    from service.embedded_triton import pytriton_root

    caches = shlex.quote(str(pytriton_root() / "tritonserver" / "caches"))  # the gateway shlex-splits the flags
    return f"--cache-config=local,size={size} --cache-directory={caches}"


def cache_counters(triton_http_url: str) -> dict[str, dict[str, int]]:
    """Per model: cache hits and misses and the nanoseconds Triton spent on them, from its statistics API."""
    out = {}
    for model in model_stats(triton_http_url):
        s = model["inference_stats"]
        out[model["name"]] = {
            "hits": int(s.get("cache_hit", {}).get("count", 0)),
            "hit_ns": int(s.get("cache_hit", {}).get("ns", 0)),
            "misses": int(s.get("cache_miss", {}).get("count", 0)),
            "miss_ns": int(s.get("cache_miss", {}).get("ns", 0)),
        }
    return out


def counter_delta(before: dict, after: dict, models: Sequence[str]) -> dict[str, dict[str, Any]]:
    out = {}
    for model in models:
        d = {k: after[model][k] - before.get(model, {}).get(k, 0) for k in after[model]}
        lookups = d["hits"] + d["misses"]
        out[model] = {
            "hits": d["hits"],
            "misses": d["misses"],
            "hit_ratio": round(d["hits"] / lookups, 4) if lookups else None,
            "hit_lookup_ms": round(d["hit_ns"] / d["hits"] / 1e6, 4) if d["hits"] else None,
            "miss_lookup_insert_ms": round(d["miss_ns"] / d["misses"] / 1e6, 4) if d["misses"] else None,
        }
    return out


def overall_hit_ratio(per_model: dict[str, dict[str, Any]]) -> float | None:
    hits = sum(m["hits"] for m in per_model.values())
    lookups = hits + sum(m["misses"] for m in per_model.values())
    return round(hits / lookups, 4) if lookups else None


def timed_posts(client: httpx.Client, url: str, endpoint: str, images: Sequence[bytes]) -> list[float]:
    times = []
    for image in images:
        params = {"pipeline": "hybrid", **({"frames": 1} if endpoint == "reconstruct" else {})}
        started = time.perf_counter()
        reply = client.post(f"{url}/{endpoint}", params=params, files={"file": ("in.png", image)})
        times.append(time.perf_counter() - started)
        if reply.status_code != 200:
            raise SystemExit(f"{endpoint}: HTTP {reply.status_code}: {reply.text[:300]}")
    return times


def response_cache_study(settings: StudySettings, work: Path) -> dict[str, Any]:
    """Through gateway + Triton with the response cache on the encoder steps: per endpoint, N new images (misses)
    then the same N again (hits); then a stream of N /encode requests where each repeats an earlier image of the
    stream with probability `cache_repeat`. Latency as the client sees it; hits and misses as Triton counts them."""
    from benchmarks.overhead import make_inputs
    from service.local_stack import running_stack

    variant = default_variant(settings)
    repository = work / "repository-cache"
    write_study_repository(settings, variant, repository, settings.cache_models)
    env = study_env(settings, repository, triton_cache_flags(settings.cache_bytes))
    n = settings.cache_requests
    result: dict[str, Any] = {
        "pipeline": "hybrid",
        "spatial": variant,
        "runtime": settings.service_runtime,
        "cache_config": f"local,size={settings.cache_bytes}",
        "models": list(settings.cache_models),
        "requests_per_phase": n,
        "endpoints": {},
    }
    with (
        running_stack(work / "service-cache.log", env, settings.start_timeout_s) as stack,
        httpx.Client(timeout=300) as client,
    ):
        timed_posts(client, stack.gateway_url, "encode", make_inputs(settings.pair_warmup, 224, seed=900))
        timed_posts(client, stack.gateway_url, "reconstruct", make_inputs(settings.pair_warmup, 224, seed=901))
        for offset, endpoint in enumerate(("encode", "reconstruct")):
            images = make_inputs(n, 224, seed=1000 + offset)
            phases = {}
            for phase in ("miss", "hit"):
                before = cache_counters(stack.triton_http_url)
                times = timed_posts(client, stack.gateway_url, endpoint, images)
                per_model = counter_delta(before, cache_counters(stack.triton_http_url), settings.cache_models)
                phases[phase] = {**latency(times), "requests": n, "hit_ratio": overall_hit_ratio(per_model),
                                 "per_model": per_model}  # fmt: skip
            miss, hit = phases["miss"]["p50_ms"], phases["hit"]["p50_ms"]
            result["endpoints"][endpoint] = {
                **phases,
                "saved_p50_ms": round(miss - hit, 3),
                "speedup_p50": round(miss / hit, 3) if hit else None,
            }
            print(f"[cache] {endpoint}: miss p50 {miss} ms, hit p50 {hit} ms", flush=True)
        rng = random.Random(0)
        fresh = iter(make_inputs(n, 224, seed=2000))
        stream: list[bytes] = []
        for _ in range(n):
            stream.append(rng.choice(stream) if stream and rng.random() < settings.cache_repeat else next(fresh))
        before = cache_counters(stack.triton_http_url)
        times = timed_posts(client, stack.gateway_url, "encode", stream)
        per_model = counter_delta(before, cache_counters(stack.triton_http_url), settings.cache_models)
        result["mixed_stream"] = {
            "endpoint": "encode",
            "repeat_probability": settings.cache_repeat,
            "repeated_requests": n - len(set(stream)),
            "requests": n,
            **latency(times),
            "hit_ratio": overall_hit_ratio(per_model),
            "per_model": per_model,
        }
    result["hit_ratio"] = result["endpoints"]["encode"]["hit"]["hit_ratio"]
    return result


def default_variant(settings: StudySettings) -> str:
    return "vitl14" if "vitl14" in settings.variants else settings.variants[0]


def overhead_study(settings: StudySettings, variant: str, work: Path) -> dict[str, Any]:
    """The paired E-P2.6 benchmark (benchmarks.overhead) against a service whose DINOv2 is `variant`."""
    from benchmarks.overhead import analyse, make_inputs, run_pairs
    from service.local_stack import running_stack

    repository = work / f"repository-{variant}"
    write_study_repository(settings, variant, repository)
    with running_stack(
        work / f"service-{variant}.log", study_env(settings, repository), settings.start_timeout_s
    ) as stack:
        latencies = run_pairs(stack.gateway_url, settings.pairs, make_inputs(8, 224, seed=0), {"frames": 1},
                              settings.pair_warmup)  # fmt: skip
        statistics = parse_statistics({"model_stats": model_stats(stack.triton_http_url)})
        ready_s = stack.ready_s
    analysis = analyse(latencies, BUDGET, settings.resamples)

    def scope(endpoint: str) -> dict[str, Any]:
        a = analysis[endpoint]
        return {
            "median": round(a["overhead_median"], 4),
            "ci95": [round(v, 4) for v in a["overhead_ci95"]],
            "verdict": a["verdict"],
            "median_ms": {p: round(v * 1000, 2) for p, v in a["median_s"].items()},
            "p95_ms": {p: round(v * 1000, 2) for p, v in a["p95_s"].items()},
            "pairs": settings.pairs,
            "runtime": settings.service_runtime,
            "ready_s": round(ready_s, 1),
        }

    print(f"[overhead] {variant}: {json.dumps({e: analysis[e]['overhead_median'] for e in analysis})}", flush=True)
    return {"encode": scope("encode"), "end_to_end": {**scope("reconstruct"), "triton_statistics": statistics}}
