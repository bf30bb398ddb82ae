"""The `compiled` runtime on the CPU (Inductor without CUDA graphs): the same outputs as eager for every prepared
shape, batches in prepared chunks, nothing compiled after preparation; instance placement; the GPU benchmarks'
result files."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from torch._dynamo.utils import counters

from benchmarks.harness import parse_statistics
from hybrid import samples
from hybrid.acceleration import GraphedCall, freeze, input_shapes, output_shapes, plan_chunks, run_chunked
from hybrid.pipeline import ReferencePipeline
from hybrid.profiles import get_profile
from hybrid.runtime import instance_device

CPU = torch.device("cpu")
RESULTS = Path(__file__).resolve().parent.parent / "benchmarks" / "results" / "gpu-h200"
# A small plan keeps the CPU compile short: one-frame batches of 1 and 2, clips of up to 3 frames in, 9 out.
PLAN = {"prepare": {"batch_sizes": [1, 2], "max_input_frames": 3}, "decoder": {"max_frames": 9}}


def test_chunks_cover_a_batch_with_prepared_sizes() -> None:
    assert plan_chunks(3, (1, 4, 8)) == [(0, 3, 4)]  # padded up to the next prepared size
    assert plan_chunks(8, (1, 4, 8)) == [(0, 8, 8)]
    assert plan_chunks(3, (1,)) == [(0, 1, 1), (1, 2, 1), (2, 3, 1)]  # clips: one at a time
    assert plan_chunks(10, (1, 4)) == [(0, 4, 4), (4, 8, 4), (8, 10, 4)]
    assert plan_chunks(5, ()) == [(0, 5, 5)]  # nothing prepared: as it is


def test_the_plan_names_every_shape_the_api_accepts() -> None:
    full = get_profile("full", {"random_weights": True})
    assert input_shapes(full)[:3] == [(1, 1), (1, 4), (1, 8)]
    assert {f for f, _ in input_shapes(full)} == set(range(1, 17))  # HYBRID_MAX_INPUT_FRAMES' default
    assert output_shapes(full) == [(1, 1), (1, 4), (1, 8), (9, 1), (17, 1), (25, 1), (33, 1)]


def test_a_graphed_call_prepares_only_while_recording() -> None:
    calls: list[tuple[int, ...]] = []

    def double(x: torch.Tensor) -> torch.Tensor:
        calls.append(tuple(x.shape))
        return x * 2

    call = GraphedCall(double, CPU, "double")
    call(torch.ones(4, 3))  # a request's call: nothing is prepared on its time
    assert call.batch_sizes(torch.ones(1, 3)) == ()
    with call.recording():
        call(torch.ones(1, 3))
        call(torch.ones(4, 3))
    assert call.batch_sizes(torch.ones(7, 3)) == (1, 4)  # any batch of [·, 3] rows
    assert call.batch_sizes(torch.ones(1, 5)) == ()  # another row shape was never prepared
    calls.clear()
    x = torch.arange(15.0).reshape(5, 3)
    out = run_chunked(call, call.batch_sizes(x), x)  # 5 rows: a chunk of 4, then 1
    assert calls == [(4, 3), (1, 3)] and torch.equal(out, x * 2)
    calls.clear()
    out = run_chunked(call, call.batch_sizes(x[:3]), x[:3])  # 3 rows padded up to 4, the padding dropped
    assert calls == [(4, 3)] and torch.equal(out, x[:3] * 2)


@pytest.fixture(scope="module")
def pipelines() -> Iterator[tuple[ReferencePipeline, ReferencePipeline]]:
    """The tiny profile compiled and prepared for PLAN, and eager, with the same seeded weights."""
    compiled = ReferencePipeline.build(get_profile("tiny", {**PLAN, "runtime": "compiled"}), device="cpu")
    eager = ReferencePipeline.build(get_profile("tiny", PLAN), device="cpu")
    freeze()  # as a served model does after preparing
    try:
        yield compiled, eager
    finally:
        torch.compiler.set_stance("default")


@pytest.mark.parametrize("frames_in", [1, 2, 3])
def test_compiled_encoders_equal_eager_at_every_prepared_clip_length(
    pipelines: tuple[ReferencePipeline, ReferencePipeline], frames_in: int
) -> None:
    compiled, eager = pipelines
    frames = samples.frames(frames_in)
    for pipeline in ("hybrid", "vlm", "spatial"):
        np.testing.assert_allclose(compiled.encode(frames, pipeline), eager.encode(frames, pipeline), atol=1e-5)


@pytest.mark.parametrize("frames_out", [1, 9])
def test_compiled_decoder_equals_eager_at_every_prepared_frame_count(
    pipelines: tuple[ReferencePipeline, ReferencePipeline], frames_out: int
) -> None:
    compiled, eager = pipelines
    a = compiled.reconstruct(samples.frames(1), "hybrid", frames_out, 2, 5)
    b = eager.reconstruct(samples.frames(1), "hybrid", frames_out, 2, 5)
    assert a.shape == (frames_out, 64, 64, 3)
    assert np.abs(a.astype(int) - b.astype(int)).max() <= 1  # uint8 frames: within one level


def test_prepared_shapes_and_batches(pipelines: tuple[ReferencePipeline, ReferencePipeline]) -> None:
    compiled, _ = pipelines
    assert compiled.decoder.prepared == {1: (1, 2), 9: (1,)}
    assert compiled.vlm.prepared == {(1, 16, 16): (1, 2), (2, 16, 16): (1,)}  # 2 frames pair into one grid
    conditioning = torch.randn(3, 64, 4096)
    batch = compiled.decoder(conditioning, 1, 2, [1, 2, 3])  # 3 requests: a chunk of 2, then 1
    for i in range(3):
        alone = compiled.decoder(conditioning[i : i + 1], 1, 2, [i + 1])
        assert np.abs(batch[i].astype(int) - alone[0].astype(int)).max() <= 1


def test_nothing_compiles_after_preparation(pipelines: tuple[ReferencePipeline, ReferencePipeline]) -> None:
    """Two 9-frame clips in one batch are a shape group no preparation compiled: they run (in prepared chunks
    here, and eagerly where no chunk fits) without a compile on the request's time."""
    compiled, _ = pipelines
    graphs = counters["stats"]["unique_graphs"]
    compiled.decoder.run(torch.randn(2, 64, 4096), 9, 2, [0, 1])  # unchunked: the batch as it came
    compiled.encode(samples.frames(5), "hybrid")  # 5 frames: never prepared
    assert counters["stats"]["unique_graphs"] == graphs


def test_instance_device_follows_triton(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    gpu = {"model_instance_kind": "GPU", "model_instance_device_id": "1"}
    assert instance_device("auto", gpu) == torch.device("cuda", 1)  # not every instance on GPU 0
    assert instance_device("auto", {"model_instance_kind": "CPU"}) == CPU
    assert instance_device("cpu", gpu) == CPU  # an explicit device wins


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


def test_shapes_results_merge_and_render(tmp_path: Path) -> None:
    """The committed H200 run re-merges into the same shapes.json; every row has the issue's fields."""
    from benchmarks.shapes import CASES, PIPELINES
    from benchmarks.shapes import summarize as summarize_shapes

    summary = summarize_shapes([RESULTS / "shapes-partials"], tmp_path)
    assert summary == json.loads((RESULTS / "shapes.json").read_text())
    assert {"device", "commit", "command", "ready_s", "ready_warm_s", "gpu_memory_gib", "rows"} <= set(summary)
    fields = {"endpoint", "pipeline", "input_frames", "output_frames", "concurrency", "in_process_p50_ms"}
    fields |= {"service_p50_ms", "service_p95_ms", "rps", "non_200"}
    assert all(fields <= set(row) for row in summary["rows"])
    one_at_a_time, loops = summary["rows"][: len(CASES) * len(PIPELINES)], summary["rows"][len(CASES) * 2 :]
    assert all(r["in_process_p50_ms"] and r["service_p50_ms"] for r in one_at_a_time)
    assert [r["concurrency"] for r in loops] == [1, 32, 64] and all(r["in_process_p50_ms"] is None for r in loops)
    assert (tmp_path / "shapes.md").read_text() == (RESULTS / "shapes.md").read_text()
    assert (tmp_path / "shapes.png").stat().st_size > 10_000
