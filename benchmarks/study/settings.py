"""The E-P2.6 study's settings, names and JSON shape, shared by its parts (benchmarks.study)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from hybrid.contracts import ENCODE_CHAINS
from service.service_time import DECODER, STAGES

PARTS: tuple[str, ...] = ("components", "memory", "ablation", "cache", "overhead")
COMPONENTS: tuple[str, ...] = STAGES
"""The composing models, as the tensor contracts define them."""
SPATIAL_VARIANTS: tuple[str, ...] = ("vitb14", "vitl14", "vitg14")
SEED_NAMES: dict[str, str] = {"vitb14": "B", "vitl14": "L", "vitg14": "g"}
PER_VARIANT: frozenset[str] = frozenset({"spatial_encoder", "fusion", "spatial_adapter"})
"""Components whose shape depends on the DINOv2 variant; the others are measured once and shared."""
HOST_ONLY: frozenset[str] = frozenset({"preprocess"})
"""Components that run on the CPU in every deployment (media decoding): measured once, in float32."""
VLM_ONLY_MODELS: tuple[str, ...] = (*(m for m in ENCODE_CHAINS["vlm"] if m not in HOST_ONLY), DECODER)
"""The GPU models a VLM-only deployment loads: the seed's "VLM only" memory row."""
HYBRID_ADDS: tuple[str, ...] = tuple(m for m in ENCODE_CHAINS["hybrid"] if m not in ENCODE_CHAINS["vlm"])
"""What the hybrid pipeline adds to it: DINOv2 and the fusion head."""
ABLATION_LAYERS: tuple[int, ...] = (2, 4, 6, 8)
ABLATION_QUERIES: tuple[int, ...] = (32, 64, 128)
CACHED_MODELS: tuple[str, ...] = ("preprocess", "vlm_encoder", "spatial_encoder")
"""The deterministic encoder steps answered from the response cache by default."""
TARGETS_MS: dict[str, float] = {"spatial_encoder": 200.0, "fusion": 100.0, "total": 1500.0}
"""The seed's E-P2.6 latency targets: DINOv2 < 200 ms, fusion < 100 ms, total < 1500 ms (and overhead < 25%)."""
MIN_CALLS = 3
GIB = 2**30
RESULT_STEM = "e-p2-6-study"


@dataclass(frozen=True)
class StudySettings:
    """What one `run` measures; recorded in its JSON (`runs`) so every figure keeps its conditions."""

    profile: str = "tiny"
    device: str = "cpu"
    parts: tuple[str, ...] = PARTS
    variants: tuple[str, ...] = SPATIAL_VARIANTS
    dtypes: tuple[str, ...] = ("float32",)
    batches: tuple[int, ...] = (1, 4, 8)
    frames: tuple[int, ...] = (1, 9)
    components: tuple[str, ...] = COMPONENTS
    runtime: str = "eager"  # components: the serving runtime, "eager" or "compiled"
    eager: tuple[str, ...] = ()  # components run eagerly whatever `runtime` says (compile time)
    repeats: int = 30
    warmup: int = 3
    max_seconds: float = 6.0  # per measured configuration, after MIN_CALLS calls
    steps: int | None = None  # decoder steps; None: the profile's
    ablation_batches: tuple[int, ...] = (1, 8)
    service_runtime: str = "eager"  # cache and overhead: the runtime of the served models
    compile_cache: str | None = None  # Inductor's cache shared by every service start (compiled service runtime)
    cache_models: tuple[str, ...] = CACHED_MODELS
    cache_bytes: int = 1 << 30
    cache_requests: int = 20
    cache_repeat: float = 0.5
    pairs: int = 20
    pair_warmup: int = 3
    resamples: int = 5000
    start_timeout_s: float = 600.0

    @property
    def cuda(self) -> bool:
        return self.device.startswith("cuda")

    def runtime_of(self, component: str) -> str:
        return "eager" if component in self.eager or component in HOST_ONLY else self.runtime


def profile_overrides(settings: StudySettings, **extra: Any) -> dict[str, Any]:
    """Profile overrides for a model of this study: random weights on the full profile (latency does not depend
    on weight values) plus `extra` (spatial variant, dtype, fusion settings)."""
    overrides: dict[str, Any] = {"random_weights": True} if settings.profile == "full" else {}
    return {**overrides, **extra}


def new_entry(variant: str, dtype: str, batch: int, frames: int, stages: dict | None = None) -> dict[str, Any]:
    return {
        "spatial": variant,
        "dtype": dtype,
        "batch": batch,
        "frames": frames,
        "stages": stages or {},
        "overhead_encode": None,
        "overhead_end_to_end": None,
    }


def find_entry(entries: list[dict[str, Any]], variant: str, dtype: str, batch: int, frames: int) -> dict[str, Any]:
    """The entry for that configuration, added (without stages) when the components part did not measure it."""
    for entry in entries:
        if (entry["spatial"], entry["dtype"], entry["batch"], entry["frames"]) == (variant, dtype, batch, frames):
            return entry
    entries.append(new_entry(variant, dtype, batch, frames))
    return entries[-1]
