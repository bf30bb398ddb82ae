"""The lab's E-P2.6 study: what each component costs per DINOv2 variant, precision, batch and clip length, what
each configuration holds in memory, what fusion pruning and Triton's response cache buy, and the through-Triton
overhead of hybrid over vlm per DINOv2 variant.

    python -m benchmarks.study run --parts PART[,PART…] --out DIR [options]   # → DIR/study-<parts>.json
    python -m benchmarks.study merge DIR/study-*.json [--out benchmarks/results]
        # → e-p2-6-study.json, e-p2-6-study.md, e-p2-6-study-latency.png, e-p2-6-study-memory.png

On an H200 (full profile, random weights: latency does not depend on weight values; HYBRID_COMMIT=<commit> where
the tree has no git history), in calls of under 10 minutes each — the commands the committed results came from,
and what each call reached, are in benchmarks/README.md's "The E-P2.6 study":

    python -m benchmarks.study run --profile full --parts components --out $OUT                    # served runtime
    python -m benchmarks.study run --profile full --parts overhead,cache --service-runtime eager --out $OUT
    python -m benchmarks.study run --profile full --parts memory,ablation --eager vlm_encoder,video_decoder --out $OUT
    python -m benchmarks.study run --profile full --parts overhead --service-runtime compiled --out $OUT

The compiled runtime costs minutes of compiling per model, precision and batch size (Qwen2.5-VL and LTX-Video
most): `--eager` names components to run eagerly where only their memory or a quick figure is wanted. An eager
service is ready in ~20 s; a compiled one compiles for ~300 s cold, and later starts in the same run reuse its
shared Inductor cache.

Parts (`--parts`, any subset; each `run` rewrites DIR/study-<parts>.json after every step, so a run cut short keeps
what it measured; `merge` combines any number of them, later figures replacing earlier ones):

- `components`: every serving model in-process, built and called the way Triton's Python backend calls it
  (`hybrid.serving` classes from the config Triton would give them: `collate` + `forward`, the runtime's CUDA
  graphs / torch.compile prepared for batches 1, 4, 8 of one frame and eager for other shapes, then a device
  synchronize as `execute` does). DINOv2 ViT-B/14, L/14, g/14, the fusion head and the spatial adapter per
  variant; Qwen2.5-VL, the vlm adapter and LTX-Video once, shared by every variant's row; preprocess on the CPU.
  Per dtype, batch and frame count: p50/p95 over N synchronized calls after warm-up (wall clock around each call,
  `time.perf_counter`) and the model's peak GPU memory (`torch.cuda.max_memory_allocated` above what was allocated
  before it was built, one model loaded at a time, as each Triton model is its own process).
- `memory`: the seed's table, VLM only / + DINOv2-g / + DINOv2-L / + DINOv2-B: per configuration the sum over the
  models it loads of what each holds once built and at its peak (CUDA contexts excluded).
- `ablation`: the served fusion head (the lab's HybridFusionModule) with 2, 4, 6, 8 layers and 32, 64, 128 output
  queries: latency and parameter count (the served decoder takes 64 queries; other counts are the module alone).
- `cache`: Triton's response cache (`--cache-config local,size=…`, `response_cache { enable: true }` on the
  deterministic encoder steps) through gateway + Triton: latency of misses (new media) and hits (the same media
  again), the hit ratio Triton counts per model, and a stream in which earlier media repeat at random.
- `overhead`: one service start per DINOv2 variant and the paired E-P2.6 benchmark against it
  (benchmarks.overhead: identical inputs interleaved, paired-bootstrap 95% interval), end to end and at encode.

On a CPU (`--profile tiny --device cpu`) the same code paths run with tiny models; GPU memory is null there, with
the reason, and the memory table holds the models' parameter bytes.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from benchmarks.harness import command_parser, git_commit, write_json
from benchmarks.study.models import (
    fusion_ablation,
    measure_components,
    memory_table,
    variant_entries,
)
from benchmarks.study.report import merge, write_final
from benchmarks.study.served import overhead_study, response_cache_study
from benchmarks.study.settings import (
    CACHED_MODELS,
    COMPONENTS,
    GIB,
    HYBRID_ADDS,
    MIN_CALLS,
    PARTS,
    PER_VARIANT,
    SPATIAL_VARIANTS,
    VLM_ONLY_MODELS,
    StudySettings,
    find_entry,
)


def device_name(settings: StudySettings) -> str:
    if settings.cuda:
        import torch

        return torch.cuda.get_device_name(torch.device(settings.device))
    return f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"


def device_memory_gib(settings: StudySettings) -> float | None:
    if not settings.cuda:
        return None
    import torch

    return round(torch.cuda.get_device_properties(torch.device(settings.device)).total_memory / GIB, 1)


def partial_path(out: Path, parts: Sequence[str]) -> Path:
    return out / f"study-{'-'.join(parts)}.json"


def run(settings: StudySettings, command: str, out: Path) -> dict[str, Any]:
    """Measure the selected parts into one partial study, saved after every step."""
    out.mkdir(parents=True, exist_ok=True)
    path = partial_path(out, settings.parts)
    study: dict[str, Any] = {
        "device": device_name(settings),
        "commit": git_commit(),
        "command": command,
        "variants": [],
        "memory_table": [],
        "cache": {},
        "fusion_ablation": [],
        "runs": [
            {
                "command": command,
                "device_memory_gib": device_memory_gib(settings),
                "settings": asdict(settings),
                "stage_runtimes": {c: settings.runtime_of(c) for c in settings.components},
                "shared_stages": [c for c in settings.components if c not in PER_VARIANT],
                "timing": "wall clock around collate + forward + device synchronize, after warm-up",
            }
        ],
    }

    def save() -> None:
        write_json(path, study)

    save()
    parts = set(settings.parts)
    dtype = served_dtype(settings) if served_dtype(settings) in settings.dtypes else settings.dtypes[0]
    measured: dict = {}
    if "components" in parts:
        configs = [(b, f) for b in settings.batches for f in settings.frames]

        def progress(so_far: dict) -> None:
            study["variants"] = variant_entries(settings, so_far)
            save()

        measured = measure_components(settings, configs, settings.dtypes, settings.components, progress)
    if "memory" in parts:
        study["memory_table"] = memory_part(settings, measured, dtype)
        save()
    if "ablation" in parts:
        study["fusion_ablation"] = fusion_ablation(settings, dtype)
        save()
    with tempfile.TemporaryDirectory(prefix="study-") as scratch:
        work = Path(scratch)
        if settings.service_runtime == "compiled" and not settings.compile_cache:
            # One Inductor cache for every service start: the VLM's and the decoder's graphs do not depend on the
            # DINOv2 variant, so only the first start compiles them cold.
            settings = replace(settings, compile_cache=str(work / "compile-cache"))
        if "cache" in parts:
            study["cache"] = response_cache_study(settings, work)
            save()
        if "overhead" in parts:
            service_dtype = served_dtype(settings)
            for variant in settings.variants:
                result = overhead_study(settings, variant, work)
                entry = find_entry(study["variants"], variant, service_dtype, 1, 1)
                entry["overhead_encode"] = result["encode"]
                entry["overhead_end_to_end"] = result["end_to_end"]
                save()
    print(f"wrote {path}", flush=True)
    return study


def memory_part(settings: StudySettings, measured: dict, dtype: str) -> list[dict[str, Any]]:
    """The memory table from the components' measurements, measuring (at batch 1 and the largest batch, one frame,
    few calls: only memory is read) the models the components part did not."""
    max_batch = max(settings.batches)
    needed = [
        (c, v) for c in VLM_ONLY_MODELS + HYBRID_ADDS for v in (settings.variants if c in PER_VARIANT else [None])
    ]
    missing = sorted({c for c, v in needed if (c, v, dtype) not in measured}, key=COMPONENTS.index)
    if missing:
        quick = replace(settings, repeats=MIN_CALLS, warmup=1)
        measured = {**measure_components(quick, sorted({(1, 1), (max_batch, 1)}), [dtype], missing), **measured}
    return memory_table(settings, measured, dtype, max_batch)


def served_dtype(settings: StudySettings) -> str:
    """The dtype the served models run in: the profile's, float32 on a CPU (hybrid.runtime.for_device)."""
    from hybrid.profiles import get_profile

    return get_profile(settings.profile).dtype if settings.cuda else "float32"


def _csv(kind: Callable[[str], Any], choices: Sequence[Any] | None = None) -> Callable[[str], tuple[Any, ...]]:
    def parse(text: str) -> tuple[Any, ...]:
        values = tuple(kind(v) for v in text.split(",") if v)
        bad = [v for v in values if choices is not None and v not in choices]
        if bad or not values:
            raise argparse.ArgumentTypeError(f"{text!r}: choose from {', '.join(map(str, choices or ()))}")
        return values

    return parse


def settings_from(args: argparse.Namespace) -> StudySettings:
    from hybrid.profiles import get_profile
    from hybrid.runtime import resolve_device

    device = str(resolve_device(args.device))
    profile = get_profile(args.profile)
    cuda = device.startswith("cuda")
    dtypes = args.dtypes or (("bfloat16", "float16") if cuda else ("float32",))
    if not cuda and set(dtypes) != {"float32"}:
        raise SystemExit("on a CPU the served models run in float32 (hybrid.runtime.for_device): --dtypes float32")
    return StudySettings(
        profile=args.profile,
        device=device,
        parts=args.parts,
        variants=args.variants,
        dtypes=dtypes,
        batches=args.batches,
        frames=args.frames,
        components=args.components,
        runtime=args.runtime or profile.runtime,
        eager=args.eager,
        repeats=args.repeats,
        warmup=args.warmup,
        max_seconds=args.max_seconds,
        steps=args.steps,
        ablation_batches=args.ablation_batches,
        service_runtime=args.service_runtime,
        compile_cache=args.compile_cache,
        cache_models=args.cache_models,
        cache_bytes=args.cache_bytes,
        cache_requests=args.cache_requests,
        cache_repeat=args.cache_repeat,
        pairs=args.pairs,
        pair_warmup=args.pair_warmup,
        resamples=args.resamples,
        start_timeout_s=args.start_timeout_s,
    )


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = command_parser("study", __doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="measure the selected parts into DIR/study-<parts>.json")
    r.add_argument("--profile", default="tiny", choices=("tiny", "full"))
    r.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    r.add_argument("--parts", type=_csv(str, PARTS), default=PARTS)
    r.add_argument("--variants", type=_csv(str, SPATIAL_VARIANTS), default=SPATIAL_VARIANTS)
    r.add_argument("--dtypes", type=_csv(str, ("float32", "bfloat16", "float16")), default=None,
                   help="default: bfloat16,float16 on a GPU, float32 on a CPU")  # fmt: skip
    r.add_argument("--batches", type=_csv(int), default=(1, 4, 8))
    r.add_argument("--frames", type=_csv(int), default=(1, 9))
    r.add_argument("--components", type=_csv(str, COMPONENTS), default=COMPONENTS)
    r.add_argument("--runtime", choices=("eager", "compiled"), default=None, help="default: the profile's")
    r.add_argument("--eager", type=_csv(str, COMPONENTS), default=(), help="components run eagerly regardless")
    r.add_argument("--repeats", type=int, default=30)
    r.add_argument("--warmup", type=int, default=3)
    r.add_argument("--max-seconds", type=float, default=6.0, help="per configuration, after 3 calls")
    r.add_argument("--steps", type=int, default=None, help="decoder steps (default: the profile's)")
    r.add_argument("--ablation-batches", type=_csv(int), default=(1, 8))
    r.add_argument("--service-runtime", choices=("eager", "compiled"), default="eager")
    r.add_argument("--compile-cache", default=None, help="Inductor cache shared by the service starts")
    r.add_argument("--cache-models", type=_csv(str, COMPONENTS), default=CACHED_MODELS)
    r.add_argument("--cache-bytes", type=int, default=1 << 30)
    r.add_argument("--cache-requests", type=int, default=20)
    r.add_argument("--cache-repeat", type=float, default=0.5)
    r.add_argument("--pairs", type=int, default=20)
    r.add_argument("--pair-warmup", type=int, default=3)
    r.add_argument("--resamples", type=int, default=5000)
    r.add_argument("--start-timeout-s", type=float, default=600.0)
    r.add_argument("--out", type=Path, required=True, help="a folder for the partial JSON (not benchmarks/results)")
    m = sub.add_parser("merge", help="partial studies → <out>/e-p2-6-study.{json,md} and charts")
    m.add_argument("partials", type=Path, nargs="+")
    m.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args(argv)
    if args.command == "merge":
        study = merge([json.loads(p.read_text()) for p in args.partials])
        for path in write_final(study, args.out):
            print(f"wrote {path}")
        return 0
    settings = settings_from(args)
    run(settings, "python -m benchmarks.study " + " ".join(argv), args.out)
    return 0
