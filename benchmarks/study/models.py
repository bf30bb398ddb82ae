"""The E-P2.6 study in-process: each serving model built and called the way Triton's Python backend calls it, timed
and its GPU memory read; the seed's memory table; the fusion pruning ablation (benchmarks.study parts
`components`, `memory`, `ablation`)."""

from __future__ import annotations

import gc
import json
import time
import timeit
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np

from benchmarks.study.settings import (
    ABLATION_LAYERS,
    ABLATION_QUERIES,
    GIB,
    HOST_ONLY,
    HYBRID_ADDS,
    MIN_CALLS,
    PER_VARIANT,
    SEED_NAMES,
    SPATIAL_VARIANTS,
    VLM_ONLY_MODELS,
    StudySettings,
    new_entry,
    profile_overrides,
)
from service.verdict import quantile


def timed_calls(
    call: Callable[[], Any], synchronized: bool, repeats: int, warmup: int, max_seconds: float
) -> list[float]:
    """Seconds per call: `warmup` untimed calls, then up to `repeats` timed ones (at least MIN_CALLS, then until
    `max_seconds` have passed). With `synchronized`, each is read with `torch.utils.benchmark.timer`, the clock of
    torch's `Timer`, which synchronizes the device before it reads the time, so a call's time holds its device work;
    host-only models read the plain clock. Timer's own loops do not fit here: they report means over blocks of
    calls, and the study reports each call's p95."""
    from torch.utils import benchmark

    clock = benchmark.timer if synchronized else timeit.default_timer
    for _ in range(warmup):
        call()
    clock()  # the warm-up's device work finishes before the first timed call starts
    times: list[float] = []
    deadline = time.perf_counter() + max_seconds
    while len(times) < max(repeats, 1) and (len(times) < MIN_CALLS or time.perf_counter() < deadline):
        started = clock()
        call()
        times.append(clock() - started)
    return times


def latency(times: Sequence[float]) -> dict[str, float]:
    return {"p50_ms": round(quantile(times, 0.5) * 1000, 3), "p95_ms": round(quantile(times, 0.95) * 1000, 3)}


class MemoryProbe:
    """One model's GPU memory: the allocator's bytes above what was allocated before the model was built (its
    weights, buffers, captured graphs) and the peak of each measured configuration. On a CPU both are None: one
    process builds every model there, and its RSS mixes them with the libraries the first one imports."""

    CPU_REASON = "on a CPU the models share one process, whose RSS cannot be split per model: GPU figures only"

    def __init__(self, cuda: bool) -> None:
        self.cuda = cuda
        self.base = 0
        self.loaded_bytes: int | None = None
        if cuda:
            import torch

            gc.collect()
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()

    def built(self) -> None:
        if self.cuda:
            import torch

            self.loaded_bytes = torch.cuda.memory_allocated() - self.base

    def start_config(self) -> None:
        if self.cuda:
            import torch

            torch.cuda.reset_peak_memory_stats()

    def peak_gib(self) -> float | None:
        if not self.cuda:
            return None
        import torch

        return round((torch.cuda.max_memory_allocated() - self.base) / GIB, 3)


def unique_tensors(modules: Iterable[Any], buffers: bool = True) -> list[Any]:
    """The parameters (and buffers) of `modules`, each once: a model may hold one module under two names."""
    seen: set[int] = set()
    tensors = []
    for module in modules:
        for tensor in (*module.parameters(), *(module.buffers() if buffers else ())):
            if tensor.data_ptr() not in seen:
                seen.add(tensor.data_ptr())
                tensors.append(tensor)
    return tensors


def tensor_bytes(modules: Iterable[Any]) -> int:
    """Bytes of the parameters and buffers of `modules`: the weights' own size, whatever the device."""
    return sum(t.numel() * t.element_size() for t in unique_tensors(modules))


def modules_of(model: Any) -> list[Any]:
    """The torch modules a serving model holds (the decoder keeps its transformer and VAE inside a pipeline)."""
    from torch import nn

    found = []
    for value in vars(model).values():
        if isinstance(value, nn.Module):
            found.append(value)
        elif hasattr(value, "pipeline"):
            found += [value.pipeline.transformer, value.pipeline.vae]
    return found


def triton_model_config(component: str, settings: StudySettings, overrides: dict[str, Any], runtime: str) -> dict:
    """The model config Triton would hand `component`'s Python backend: name, tensor names, and the parameters
    `export.repository` writes (profile, device, profile overrides — which carry the runtime, as in serving)."""
    from hybrid.contracts import model_specs
    from hybrid.profiles import get_profile

    overrides = {**overrides, "runtime": runtime}
    profile = get_profile(settings.profile, overrides)
    spec = model_specs(profile.vlm.dim, profile.spatial.dim)[component]
    params = {"profile": settings.profile, "device": settings.device, "profile_overrides": json.dumps(overrides)}
    return {
        "name": component,
        "parameters": {k: {"string_value": v} for k, v in params.items()},
        "input": [{"name": t.name} for t in spec.inputs],
        "output": [{"name": t.name} for t in spec.outputs],
    }


def serving_model(component: str, settings: StudySettings, overrides: dict[str, Any], runtime: str) -> Any:
    """`hybrid.serving`'s class for `component`, initialized from `triton_model_config`, on the study's device."""
    from export.repository import PYTHON_MODELS
    from hybrid import serving

    model = getattr(serving, PYTHON_MODELS[component])()
    model.initialize({"model_config": json.dumps(triton_model_config(component, settings, overrides, runtime))})
    return model


def clip(frames: int, seed: int) -> np.ndarray:
    """[F, 224, 224, 3] uint8 smooth noise that moves from frame to frame."""
    from hybrid.contracts import IMAGE_SIZE

    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:IMAGE_SIZE, 0:IMAGE_SIZE]
    out = []
    for f in range(frames):
        base = np.stack([(x + 7 * f) % 256, (y + 5 * f) % 256, (x + y + 3 * f) % 256], -1)
        out.append(np.clip(base + rng.normal(0, 16, base.shape), 0, 255).astype(np.uint8))
    return np.stack(out)


DEVICE_INPUTS: frozenset[str] = frozenset({"VLM_TOKENS", "SPATIAL_TOKENS", "CONDITIONING"})
"""Tensors a GPU model hands the next step on the GPU; the others reach their model in host memory (preprocess runs
on the CPU, the decoder's settings come from the request), so the model's own `collate` pays their copy."""


def request_inputs(component: str, model: Any, frames: int, steps: int, device: str) -> dict[str, Any]:
    """One request's input tensors (batch dimension 1) for `component`, where and as the previous step hands them
    over: encoded media for preprocess, the preprocessor's tensors for the encoders, token tensors of the served
    widths and lengths for the heads, a conditioning for the decoder. Values do not change latency; shapes do."""
    import torch

    from hybrid.contracts import CONDITIONING_DIM, NUM_QUERIES, SPATIAL_PATCHES_PER_FRAME
    from hybrid.preprocess import preprocess_frames, resize_frames

    media = resize_frames(clip(frames, seed=frames))  # the gateway's decoded 224×224 frames
    if component == "preprocess":
        return {"FRAMES": torch.from_numpy(media)[None]}
    encoder_inputs = preprocess_frames(media)
    profile = model.profile
    generator = torch.Generator().manual_seed(0)
    visual_tokens = int(np.prod(encoder_inputs.vlm_grid_thw[0].tolist())) // 4  # 2×2 merge
    vlm_length = profile.vlm.sequence_length(visual_tokens)
    tensors: dict[str, torch.Tensor] = {
        "VLM_PIXELS": encoder_inputs.vlm_pixels,
        "VLM_GRID_THW": encoder_inputs.vlm_grid_thw,
        "SPATIAL_PIXELS": encoder_inputs.spatial_pixels,
        "VLM_TOKENS": torch.randn(1, vlm_length, profile.vlm.dim, generator=generator),
        "SPATIAL_TOKENS": torch.randn(1, frames * SPATIAL_PATCHES_PER_FRAME, profile.spatial.dim, generator=generator),
        "CONDITIONING": torch.randn(1, NUM_QUERIES, CONDITIONING_DIM, generator=generator),
        "NUM_FRAMES": torch.tensor([[frames]], dtype=torch.int32),
        "STEPS": torch.tensor([[steps]], dtype=torch.int32),
        "SEED": torch.tensor([[0]], dtype=torch.int64),
    }
    return {name: tensors[name].to(device if name in DEVICE_INPUTS else "cpu") for name in model.input_names}


def measure_model(
    component: str,
    settings: StudySettings,
    overrides: dict[str, Any],
    configs: Sequence[tuple[int, int]],
    runtime: str | None = None,
) -> dict[str, Any]:
    """Build one serving model, time it for every (batch, frames) in `configs`, free it. Returns
    {"loaded_gib", "parameters_gib", "parameters", "configs": {(batch, frames): {p50_ms, p95_ms, gpu_memory_gib}}}."""
    import torch

    probe = MemoryProbe(settings.cuda)
    model = serving_model(component, settings, overrides, runtime or settings.runtime_of(component))
    probe.built()
    modules = modules_of(model)
    steps = settings.steps or model.profile.decoder.default_steps
    result: dict[str, Any] = {
        "loaded_gib": None if probe.loaded_bytes is None else round(probe.loaded_bytes / GIB, 3),
        "parameters_gib": round(tensor_bytes(modules) / GIB, 3),
        "parameters": sum(p.numel() for p in unique_tensors(modules, buffers=False)),
        "configs": {},
    }
    for batch, frames in configs:
        request = request_inputs(component, model, frames, steps, settings.device)
        requests = [request] * batch  # the dynamic batcher's `batch` requests of one shape
        probe.start_config()
        times = timed_calls(
            lambda r=requests, m=model: m.forward(m.collate(r)),
            settings.cuda and component not in HOST_ONLY,
            settings.repeats,
            settings.warmup,
            settings.max_seconds,
        )
        result["configs"][(batch, frames)] = {**latency(times), "gpu_memory_gib": probe.peak_gib()}
        print(f"  {component} {json.dumps(overrides)} batch {batch} frames {frames}: {latency(times)}", flush=True)
    del model, modules
    gc.collect()
    if settings.cuda:
        torch.cuda.empty_cache()
    return result


def measure_components(
    settings: StudySettings,
    configs: Sequence[tuple[int, int]],
    dtypes: Sequence[str],
    components: Sequence[str],
    on_model: Callable[[dict], None] | None = None,
) -> dict[tuple[str, str | None, str | None], dict[str, Any]]:
    """Every component at every (batch, frames) in `configs`, keyed (component, variant or None, dtype or None):
    per-variant models once per variant, host-only models once (no dtype), the rest once per dtype.
    `on_model(measured)` runs after each model, so a run cut short by the device's time limit keeps what it timed."""
    measured: dict[tuple[str, str | None, str | None], dict[str, Any]] = {}
    for component in components:
        variants: Sequence[str | None] = settings.variants if component in PER_VARIANT else [None]
        component_dtypes: Sequence[str | None] = [None] if component in HOST_ONLY else dtypes
        for variant in variants:
            for dtype in component_dtypes:
                extra: dict[str, Any] = {"dtype": dtype or "float32"}
                if variant:
                    extra["spatial"] = {"variant": variant}
                overrides = profile_overrides(settings, **extra)
                print(f"[components] {component} {variant or ''} {dtype or 'host'}", flush=True)
                measured[(component, variant, dtype)] = measure_model(component, settings, overrides, configs)
                if on_model is not None:
                    on_model(measured)
    return measured


def stage_of(
    measured: dict[tuple[str, str | None, str | None], dict[str, Any]],
    component: str,
    variant: str,
    dtype: str,
    batch: int,
    frames: int,
) -> dict[str, Any] | None:
    key = (component, variant if component in PER_VARIANT else None, None if component in HOST_ONLY else dtype)
    entry = measured.get(key)
    return None if entry is None else entry["configs"].get((batch, frames))


def variant_entries(settings: StudySettings, measured: dict) -> list[dict[str, Any]]:
    """The JSON's `variants`: one entry per (DINOv2 variant, dtype, batch, frames) with every measured stage."""
    entries = []
    for variant in settings.variants:
        for dtype in settings.dtypes:
            for batch in settings.batches:
                for frames in settings.frames:
                    stages = {
                        c: s
                        for c in settings.components
                        if (s := stage_of(measured, c, variant, dtype, batch, frames)) is not None
                    }
                    entries.append(new_entry(variant, dtype, batch, frames, stages))
    return entries


def memory_table(settings: StudySettings, measured: dict, dtype: str, max_batch: int) -> list[dict[str, Any]]:
    """The seed's memory table: VLM only, then + DINOv2-g / -L / -B (the hybrid pipeline's additions: DINOv2 and
    the fusion head), each the sum over the models the configuration loads."""

    def model_row(component: str, variant: str | None) -> dict[str, Any] | None:
        key = (component, variant if component in PER_VARIANT else None, dtype)
        return measured.get(key)

    rows = []
    configurations: list[tuple[str, str | None, tuple[str, ...]]] = [("VLM only", None, VLM_ONLY_MODELS)]
    for variant in sorted(settings.variants, key=SPATIAL_VARIANTS.index, reverse=True):  # g, L, B: the seed's order
        configurations.append((f"+ DINOv2-{SEED_NAMES[variant]}", variant, VLM_ONLY_MODELS + HYBRID_ADDS))
    for name, variant, models in configurations:
        parts = {m: model_row(m, variant) for m in models}
        if any(p is None for p in parts.values()):
            continue

        def total(get: Callable[[dict[str, Any]], float | None], parts: dict = parts) -> float | None:
            values = [get(p) for p in parts.values()]
            return None if any(v is None for v in values) else round(sum(values), 3)

        rows.append(
            {
                "configuration": name,
                "spatial": variant,
                "dtype": dtype,
                "models": list(models),
                "parameters_gib": total(lambda p: p["parameters_gib"]),
                "loaded_gib": total(lambda p: p["loaded_gib"]),
                "peak_batch1_gib": total(lambda p: p["configs"].get((1, 1), {}).get("gpu_memory_gib")),
                "max_batch": max_batch,
                "peak_max_batch_gib": total(lambda p: p["configs"].get((max_batch, 1), {}).get("gpu_memory_gib")),
                "source": (
                    "torch.cuda allocator per model (once built, and its peak serving one frame), summed"
                    if settings.cuda
                    else "parameters and buffers of each model, summed; " + MemoryProbe.CPU_REASON
                ),
            }
        )
    basis = "loaded_gib" if settings.cuda else "parameters_gib"
    base = rows[0][basis] if rows and rows[0]["configuration"] == "VLM only" else None
    for row in rows:
        row["added_vs_vlm_only_gib"] = None if base is None else round(row[basis] - base, 3)
    return rows


def fusion_ablation(settings: StudySettings, dtype: str) -> list[dict[str, Any]]:
    """The served fusion head (the lab's HybridFusionModule) with every layer count × query count, at the default
    DINOv2 variant: latency per batch (one 224² frame), parameter count, GPU memory."""
    rows = []
    for layers in ABLATION_LAYERS:
        for queries in ABLATION_QUERIES:
            overrides = profile_overrides(settings, dtype=dtype, fusion={"num_layers": layers, "num_queries": queries})
            print(f"[ablation] {layers} layers, {queries} queries", flush=True)
            measured = measure_model("fusion", settings, overrides, [(b, 1) for b in settings.ablation_batches])
            for (batch, _), stats in measured["configs"].items():
                rows.append(
                    {
                        "num_layers": layers,
                        "num_queries": queries,
                        "parameters": measured["parameters"],
                        "dtype": dtype,
                        "batch": batch,
                        "frames": 1,
                        **stats,
                    }
                )
    return rows
