"""The E-P2.6 study command (benchmarks.study) on the tiny profile: components, memory and the fusion ablation
in-process, Triton's response cache through the real stack, partial results merged into the study's files; the
repository option that turns the response cache on; and the deployment rule on known figures."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from benchmarks.study import cli as study
from benchmarks.study.models import triton_model_config
from benchmarks.study.report import critical_path_ms, markdown, merge, recommend
from benchmarks.study.settings import CACHED_MODELS, COMPONENTS, PER_VARIANT, StudySettings
from export.repository import PYTHON_MODELS, RepositoryOptions, build_repository

STAGE_KEYS = {"p50_ms", "p95_ms", "gpu_memory_gib"}
ENTRY_KEYS = {"spatial", "dtype", "batch", "frames", "stages", "overhead_encode", "overhead_end_to_end"}
TOP_KEYS = {"device", "commit", "command", "variants", "memory_table", "cache", "fusion_ablation"}
CACHE_REQUESTS = 4


# --- the repository option ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("runtime", ["eager", "compiled"])
def test_each_component_runs_in_the_runtime_the_study_names(runtime: str) -> None:
    # The serving classes read the runtime from the profile overrides (as export.repository writes them); a
    # runtime passed anywhere else is ignored and every model silently runs in the profile's default.
    from hybrid.profiles import get_profile

    settings = StudySettings(profile="full", device="cuda", runtime="compiled", eager=("video_decoder",))
    config = triton_model_config("video_decoder", settings, {"dtype": "float16"}, settings.runtime_of("video_decoder"))
    overrides = json.loads(config["parameters"]["profile_overrides"]["string_value"])
    assert get_profile("full", overrides).runtime == "eager"
    config = triton_model_config("fusion", settings, {}, runtime)
    overrides = json.loads(config["parameters"]["profile_overrides"]["string_value"])
    assert get_profile(config["parameters"]["profile"]["string_value"], overrides).runtime == runtime


def test_response_cache_is_off_unless_asked_and_touches_only_the_chosen_models() -> None:
    plain = build_repository(RepositoryOptions(instance_kind="KIND_GPU"))
    assert not any(c.HasField("response_cache") for c in plain.configs.values())
    cached = build_repository(
        RepositoryOptions(instance_kind="KIND_GPU", response_cache=("preprocess", "spatial_encoder"))
    )
    for name, config in cached.configs.items():
        if name not in ("preprocess", "spatial_encoder"):
            assert config == plain.configs[name], name
    encoder = cached.configs["spatial_encoder"]
    assert encoder.response_cache.enable
    # Triton caches only host-memory responses: a cached GPU model must reply from the host.
    assert encoder.parameters["host_outputs"].string_value == "yes"
    assert cached.configs["preprocess"].response_cache.enable
    assert cached.configs["preprocess"].parameters["host_outputs"].string_value == "yes"  # a GPU model too now
    on_cpu = build_repository(RepositoryOptions(response_cache=("vlm_encoder",)))
    assert "host_outputs" not in on_cpu.configs["vlm_encoder"].parameters
    with pytest.raises(ValueError, match="no composing model encode_hybrid"):
        RepositoryOptions(response_cache=("encode_hybrid",))
    assert set(CACHED_MODELS) <= set(PYTHON_MODELS)


# --- the whole command on the tiny stack --------------------------------------------------------------------------


def _run(out: Path, *args: str) -> dict[str, Any]:
    common = ["--profile", "tiny", "--device", "cpu", "--repeats", "3", "--warmup", "0", "--max-seconds", "1"]
    common += ["--steps", "1"]  # one denoising step: the decoder's cost is not what these tests are about
    assert study.main(["run", *common, *args, "--out", str(out)]) == 0
    (path,) = out.glob("study-*.json")
    return json.loads(path.read_text())


@pytest.fixture(scope="module")
def partials(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], dict[str, Any], Path]:
    """Two partial runs, as the H200 plan splits the study: the models that do not depend on DINOv2 with the
    memory table; then DINOv2 and its heads, the fusion ablation and the response cache through the real stack."""
    root = tmp_path_factory.mktemp("study")
    shared = ",".join(c for c in COMPONENTS if c not in PER_VARIANT)
    grid = ["--variants", "vitb14,vitl14", "--batches", "1,2", "--frames", "1,9"]
    first = _run(root / "a", "--parts", "components,memory", "--components", shared, *grid)
    second = _run(
        root / "b",
        *("--parts", "components,ablation,cache", "--components", ",".join(sorted(PER_VARIANT)), *grid),
        *("--ablation-batches", "1", "--cache-requests", str(CACHE_REQUESTS), "--cache-bytes", str(64 << 20)),
        *("--pair-warmup", "1"),
    )
    return first, second, root


def test_a_partial_has_the_study_shape(partials: tuple[dict[str, Any], dict[str, Any], Path]) -> None:
    first, _, _ = partials
    assert set(first) >= TOP_KEYS
    assert first["command"].startswith("python -m benchmarks.study run --profile tiny")
    assert first["device"].startswith("CPU")
    assert len(first["variants"]) == 2 * 2 * 2  # variants × batches × frames (float32 only on a CPU)
    for entry in first["variants"]:
        assert set(entry) == ENTRY_KEYS
        assert entry["dtype"] == "float32"
        assert set(entry["stages"]) == {c for c in COMPONENTS if c not in PER_VARIANT}
        for stage in entry["stages"].values():
            assert set(stage) == STAGE_KEYS
            assert 0 < stage["p50_ms"] <= stage["p95_ms"]
            assert stage["gpu_memory_gib"] is None  # no GPU here: null, and the memory table says why
    names = [row["configuration"] for row in first["memory_table"]]
    assert names == ["VLM only", "+ DINOv2-L", "+ DINOv2-B"]  # the seed's order (g was not asked for)
    vlm_only, with_l, with_b = first["memory_table"]
    assert with_l["models"] == [*vlm_only["models"], "spatial_encoder", "fusion"]
    assert with_l["parameters_gib"] > vlm_only["parameters_gib"] > 0
    assert with_l["added_vs_vlm_only_gib"] == pytest.approx(with_l["parameters_gib"] - vlm_only["parameters_gib"])
    assert with_b["peak_batch1_gib"] is None and "CPU" in with_b["source"].upper()


def test_fusion_ablation_counts_the_lab_modules_parameters(
    partials: tuple[dict[str, Any], dict[str, Any], Path],
) -> None:
    from hybrid.fusion import HybridFusionModule
    from hybrid.profiles import get_profile

    rows = partials[1]["fusion_ablation"]
    assert {(r["num_layers"], r["num_queries"]) for r in rows} == {
        (layers, queries) for layers in (2, 4, 6, 8) for queries in (32, 64, 128)
    }
    tiny = get_profile("tiny")
    for row in rows:
        module = HybridFusionModule(
            vlm_dim=tiny.vlm.dim,
            spatial_dim=tiny.spatial.dim,
            fusion_dim=tiny.fusion.fusion_dim,
            num_fusion_layers=row["num_layers"],
            num_output_queries=row["num_queries"],
            nhead=tiny.fusion.nhead,
        )
        assert row["parameters"] == sum(p.numel() for p in module.parameters())
        assert 0 < row["p50_ms"] <= row["p95_ms"]


def test_response_cache_hits_are_reported(partials: tuple[dict[str, Any], dict[str, Any], Path]) -> None:
    cache = partials[1]["cache"]
    assert cache["models"] == list(CACHED_MODELS)
    for endpoint in ("encode", "reconstruct"):
        miss, hit = cache["endpoints"][endpoint]["miss"], cache["endpoints"][endpoint]["hit"]
        assert miss["hit_ratio"] == 0.0 and hit["hit_ratio"] == 1.0
        for model in CACHED_MODELS:
            assert miss["per_model"][model]["hits"] == 0
            assert miss["per_model"][model]["misses"] == CACHE_REQUESTS
            assert hit["per_model"][model]["hits"] == CACHE_REQUESTS
            assert hit["per_model"][model]["hit_lookup_ms"] > 0
        assert 0 < hit["p50_ms"] <= hit["p95_ms"]
    mixed = cache["mixed_stream"]
    assert mixed["hit_ratio"] == pytest.approx(mixed["repeated_requests"] / mixed["requests"])
    assert cache["hit_ratio"] == 1.0


def test_merge_joins_the_partials_into_the_study_files(partials: tuple[dict[str, Any], dict[str, Any], Path]) -> None:
    first, second, root = partials
    out = root / "merged"
    paths = [str(next((root / d).glob("study-*.json"))) for d in ("a", "b")]
    assert study.main(["merge", *paths, "--out", str(out)]) == 0
    merged = json.loads((out / "e-p2-6-study.json").read_text())
    assert set(merged) >= TOP_KEYS | {"overheads"}
    assert len(merged["variants"]) == 8  # the same configurations, joined
    for entry in merged["variants"]:
        assert set(entry) == ENTRY_KEYS
        assert set(entry["stages"]) == set(COMPONENTS)  # the shared stages of one run, DINOv2's of the other
    assert merged["memory_table"] == first["memory_table"]
    assert merged["cache"] == second["cache"]
    assert merged["fusion_ablation"] == sorted(
        second["fusion_ablation"], key=lambda r: (r["num_layers"], r["num_queries"], r["dtype"], r["batch"])
    )
    assert merged["command"] == f"{first['command']} ; {second['command']}"
    markdown = (out / "e-p2-6-study.md").read_text()
    for heading in ("Latency per component", "Memory per configuration", "Fusion pruning", "response cache"):
        assert heading in markdown
    for chart in ("e-p2-6-study-latency.png", "e-p2-6-study-memory.png"):
        assert (out / chart).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # No overhead was measured: the rule names what it lacks instead of picking.
    assert recommend(merged)["pick"] is None


# --- the deployment rule on known figures --------------------------------------------------------------------------


def _stages(dinov2: float, vlm: float = 40.0) -> dict[str, dict[str, float | None]]:
    times = {"preprocess": 5.0, "vlm_encoder": vlm, "spatial_encoder": dinov2, "fusion": 3.0, "vlm_adapter": 2.0,
             "spatial_adapter": 2.0, "video_decoder": 100.0}  # fmt: skip
    return {k: {"p50_ms": v, "p95_ms": v * 1.1, "gpu_memory_gib": 1.0} for k, v in times.items()}


def _overhead(upper: float) -> dict[str, Any]:
    return {"median": upper / 2, "ci95": [0.0, upper], "verdict": "within_budget" if upper < 0.25 else "inconclusive"}


def _study(uppers: dict[str, float], dinov2: dict[str, float]) -> dict[str, Any]:
    variants = []
    for variant, upper in uppers.items():
        for dtype in ("bfloat16", "float16"):
            entry = {"spatial": variant, "dtype": dtype, "batch": 1, "frames": 1, "stages": _stages(dinov2[variant]),
                     "overhead_encode": None, "overhead_end_to_end": None}  # fmt: skip
            if dtype == "bfloat16":
                entry["overhead_encode"] = entry["overhead_end_to_end"] = _overhead(upper)
            variants.append(entry)
    memory = [{"configuration": f"+ {v}", "spatial": v, "peak_batch1_gib": 30.0} for v in uppers]
    return {"variants": variants, "memory_table": memory, "runs": [{"device_memory_gib": 139.8}]}


def test_critical_path_runs_the_encoder_branches_side_by_side() -> None:
    stages = _stages(dinov2=60.0, vlm=40.0)
    assert critical_path_ms(stages, "hybrid") == 5.0 + 60.0 + 3.0 + 100.0
    assert critical_path_ms(stages, "vlm") == 5.0 + 40.0 + 2.0 + 100.0
    assert critical_path_ms({"preprocess": stages["preprocess"]}, "hybrid") is None


def test_rule_keeps_dinov2_l_while_it_meets_every_target() -> None:
    picked = recommend(
        _study({"vitb14": 0.05, "vitl14": 0.10, "vitg14": 0.20}, {"vitb14": 5, "vitl14": 10, "vitg14": 30})
    )
    assert picked["pick"] == {"spatial": "vitl14", "dtype": "bfloat16", "max_batch": 1}


def test_rule_falls_back_to_the_largest_variant_that_meets_them() -> None:
    # L's overhead interval reaches past 25%; g's DINOv2 time is over 200 ms: B is left.
    figures = _study({"vitb14": 0.05, "vitl14": 0.30, "vitg14": 0.10}, {"vitb14": 5, "vitl14": 10, "vitg14": 250})
    assert recommend(figures)["pick"]["spatial"] == "vitb14"
    nothing = _study({"vitb14": 0.40, "vitl14": 0.40}, {"vitb14": 5, "vitl14": 10})
    assert recommend(nothing)["pick"] is None


def test_rule_needs_every_figure() -> None:
    figures = _study({"vitl14": 0.10}, {"vitl14": 10})
    figures["memory_table"] = []  # no memory measured: the memory target cannot be checked
    assert recommend(figures)["pick"] is None
    assert "missing" in recommend(figures)["reason"]


def test_merge_keeps_each_service_runtimes_overhead() -> None:
    # An eager sweep over the variants, then a compiled figure for L: the L entry takes the later (compiled) one,
    # and the overhead table keeps all three measurements with their runtime.
    def partial(variants: dict[str, str]) -> dict[str, Any]:
        entries = []
        for variant, runtime in variants.items():
            figure = {**_overhead(0.1), "runtime": runtime, "pairs": 20}
            figure["median_ms"] = {"hybrid": 101.0, "vlm": 100.0}
            entries.append({"spatial": variant, "dtype": "bfloat16", "batch": 1, "frames": 1, "stages": {},
                            "overhead_encode": figure, "overhead_end_to_end": figure})  # fmt: skip
        return {"device": "H200", "commit": "c", "command": "run", "variants": entries, "runs": []}

    merged = merge([partial({"vitb14": "eager", "vitl14": "eager"}), partial({"vitl14": "compiled"})])
    assert [(r["spatial"], r["runtime"]) for r in merged["overheads"]] == [
        ("vitb14", "eager"),
        ("vitl14", "compiled"),
        ("vitl14", "eager"),
    ]
    by_variant = {e["spatial"]: e for e in merged["variants"]}
    assert by_variant["vitl14"]["overhead_encode"]["runtime"] == "compiled"
    assert by_variant["vitb14"]["overhead_encode"]["runtime"] == "eager"
    table = markdown(merged)
    assert "| vitl14 | bfloat16 | compiled | 20 |" in table and "| vitl14 | bfloat16 | eager | 20 |" in table
