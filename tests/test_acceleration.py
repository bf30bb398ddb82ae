"""The `compiled` runtime on the CPU (Inductor without CUDA graphs): same outputs as eager, prepared shapes only,
batches padded to the prepared sizes; instance placement; the GPU benchmark's result files."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from benchmarks.gpu import markdown, parse_statistics, summarize
from hybrid import samples
from hybrid.acceleration import (
    Prepared,
    accelerate_decoder,
    accelerate_vlm,
    graphed,
    pad_batch,
    padded_size,
    run_padded,
)
from hybrid.decoder import build_decoder
from hybrid.fusion import build_fusion_module
from hybrid.preprocess import Preprocessor
from hybrid.profiles import get_profile
from hybrid.runtime import instance_device
from hybrid.vlm import build_vlm

TINY = get_profile("tiny")
CPU = torch.device("cpu")
RESULTS = Path(__file__).resolve().parent.parent / "benchmarks" / "results" / "gpu-h200"


def test_padding_to_prepared_sizes() -> None:
    assert [padded_size(n) for n in (1, 2, 3, 4, 5, 8, 9)] == [1, 4, 4, 4, 8, 8, 9]
    x = torch.arange(6.0).reshape(3, 2)
    padded = pad_batch(x, 4)
    assert padded.shape == (4, 2) and torch.equal(padded[3], x[2]) and torch.equal(padded[:3], x)


def test_prepared_runs_the_fast_path_only_for_prepared_shapes() -> None:
    calls: list[str] = []
    prepared = Prepared(lambda x: calls.append("fast") or x * 2, lambda x: calls.append("eager") or x * 2, "double")
    prepared.prepare(torch.ones(4, 3))
    calls.clear()
    prepared(torch.ones(4, 3))
    prepared(torch.ones(5, 3))  # never prepared: no compile on a request's time
    assert calls == ["fast", "eager"]
    # A batch of 3 is padded to the prepared 4 and answered for its own 3 rows.
    calls.clear()
    out = run_padded(prepared, torch.arange(9.0).reshape(3, 3))
    assert calls == ["fast"] and torch.equal(out, torch.arange(9.0).reshape(3, 3) * 2)


def test_compiled_heads_equal_eager() -> None:
    head = build_fusion_module("fusion", TINY)

    def run(vlm: torch.Tensor, spatial: torch.Tensor) -> torch.Tensor:
        return head(vlm, spatial)

    vlm, spatial = torch.randn(2, 85, TINY.vlm.dim), torch.randn(2, 256, TINY.spatial.dim)
    fast = graphed(run, CPU, "fusion")
    with torch.inference_mode():
        fast.prepare(torch.zeros(4, 85, TINY.vlm.dim), torch.zeros(4, 256, TINY.spatial.dim))
        torch.testing.assert_close(run_padded(fast, vlm, spatial), run(vlm, spatial), atol=1e-5, rtol=1e-4)


def test_compiled_vlm_equals_eager() -> None:
    vlm = build_vlm(TINY)
    inputs = Preprocessor()(samples.frames(1))
    pixels, grid = torch.from_numpy(inputs.vlm_pixels)[None], torch.from_numpy(inputs.vlm_grid_thw)[None]
    eager = vlm(pixels, grid)
    accelerate_vlm(vlm, CPU, batch_sizes=(1,))
    assert len(vlm.final_states.ready) == 1
    torch.testing.assert_close(vlm(pixels, grid), eager, atol=1e-5, rtol=1e-4)


def test_compiled_decoder_equals_eager() -> None:
    decoder = build_decoder(TINY)
    conditioning = torch.randn(1, 64, 4096)
    eager = decoder(conditioning, 1, 2, [7])
    accelerate_decoder(decoder, CPU, steps=2, batch_sizes=(1,))
    assert decoder.prepared == {(1, 1)}
    compiled = decoder(conditioning, 1, 2, [7])
    assert np.abs(compiled.astype(int) - eager.astype(int)).max() <= 1  # uint8 frames: within one level
    # A frame count that was not prepared runs eagerly (and still answers).
    assert decoder(conditioning, 9, 2, [7]).shape[1] == 9


def test_instance_device_follows_triton(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    gpu = {"model_instance_kind": "GPU", "model_instance_device_id": "1"}
    assert instance_device("auto", gpu) == torch.device("cuda", 1)  # not every instance on GPU 0
    assert instance_device("auto", {"model_instance_kind": "CPU"}) == CPU  # preprocess on a GPU host
    assert instance_device("cpu", gpu) == CPU  # an explicit device wins


def test_gpu_benchmark_results_parse(tmp_path: Path) -> None:
    for variant in ("eager", "compiled"):
        shutil.copy(RESULTS / f"variant-{variant}.json", tmp_path)
    summary = summarize(tmp_path)
    assert set(summary) >= {"device", "commit", "command", "variants"}
    for name, variant in summary["variants"].items():
        assert {
            "ready_s",
            "ready_warm_s",
            "gpu_memory_gib",
            "reconstruct_hybrid_p50_ms",
            "encode_hybrid_p50_ms",
        } <= set(variant), name
        assert set(variant["overhead"]) == {"reconstruct", "encode"}
        assert all(
            len(o["ci95"]) == 2 and o["ci95"][0] <= o["median"] <= o["ci95"][1] for o in variant["overhead"].values()
        )
        loops = {(r["endpoint"], r["concurrency"]) for r in variant["closed_loop"]}
        assert loops == {("reconstruct", 1), ("reconstruct", 8), ("reconstruct", 32), ("encode", 32)}
    assert json.loads((tmp_path / "summary.json").read_text()) == summary
    assert "| /reconstruct hybrid, concurrency 32 |" in markdown(summary)
    assert (tmp_path / "summary.png").stat().st_size > 10_000


def test_triton_statistics_parsing() -> None:
    batch = {
        k: {"count": 2, "ns": 2_000_000 * (i + 1)}
        for i, k in enumerate(("compute_input", "compute_infer", "compute_output"))
    }
    stats = {
        "model_stats": [
            {
                "name": "video_decoder",
                "execution_count": 2,
                "inference_count": 8,
                "inference_stats": {"queue": {"count": 8, "ns": 80_000_000}},
                "batch_stats": [{"batch_size": 4, **batch}],
            },
            {"name": "reconstruct_hybrid", "execution_count": 8, "inference_count": 8},
            {"name": "vlm_adapter", "execution_count": 0, "inference_count": 0},
        ]
    }
    parsed = parse_statistics(stats)
    assert list(parsed) == ["video_decoder"]  # ensembles and idle models left out
    assert parsed["video_decoder"] == {
        "executions": 2,
        "average_batch": 4.0,
        "queue_ms_per_request": 10.0,
        "compute_input_ms": 1.0,
        "compute_infer_ms": 2.0,
        "compute_output_ms": 3.0,
    }
