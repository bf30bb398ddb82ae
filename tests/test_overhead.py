"""E-P2.6 arithmetic: windows, quantiles, overhead verdicts and the stage breakdown from Triton statistics."""

from __future__ import annotations

import math

import pytest

from service.overhead import LatencyWindow, OverheadTracker, StageStats, overhead, parse_statistics, quantile


def test_quantile_matches_linear_interpolation() -> None:
    assert quantile([1.0, 2.0, 3.0, 4.0], 0.5) == 2.5
    assert quantile([5.0], 0.95) == 5.0
    assert math.isnan(quantile([], 0.5))
    assert quantile(list(map(float, range(101))), 0.95) == pytest.approx(95.0)


def test_window_forgets_old_samples() -> None:
    window = LatencyWindow(window_s=10)
    window.add("reconstruct", "hybrid", 1.0, now=0)
    window.add("reconstruct", "hybrid", 2.0, now=8)
    assert window.values("reconstruct", "hybrid", now=9) == [1.0, 2.0]
    assert window.values("reconstruct", "hybrid", now=15) == [2.0]
    assert window.values("encode", "hybrid", now=15) == []


@pytest.mark.parametrize(
    ("hybrid", "vlm", "verdict"),
    [
        ([1.1] * 10, [1.0] * 10, "within_budget"),
        ([1.3] * 10, [1.0] * 10, "over_budget"),
        ([1.0] * 9 + [5.0], [1.0] * 10, "over_budget"),  # p50 fine, p95 far over
        ([1.0] * 3, [1.0] * 10, "insufficient_samples"),
    ],
)
def test_overhead_verdicts(hybrid: list[float], vlm: list[float], verdict: str) -> None:
    result = overhead(hybrid, vlm, budget=0.25, min_samples=5)
    assert result.verdict == verdict
    assert result.samples == {"hybrid": len(hybrid), "vlm": len(vlm)}
    if verdict != "insufficient_samples":
        assert result.ratios[0.5] == pytest.approx(quantile(hybrid, 0.5) / quantile(vlm, 0.5) - 1)


def _stats(count: int, queue_ms: float, compute_ms: float) -> dict:
    ns = 1_000_000
    return {
        "model_stats": [
            {
                "name": "vlm_encoder",
                "inference_stats": {
                    "success": {"count": count},
                    "queue": {"ns": int(queue_ms * ns)},
                    "compute_input": {"ns": 0},
                    "compute_infer": {"ns": int(compute_ms * ns)},
                    "compute_output": {"ns": 0},
                },
            },
            {"name": "reconstruct_hybrid", "inference_stats": {"success": {"count": count}}},
        ]
    }


def test_stage_breakdown_from_statistics_deltas() -> None:
    stages = StageStats(window_s=100)
    stages.add(parse_statistics(_stats(10, 10, 100), at=0))  # history before the window's first interval
    stages.add(parse_statistics(_stats(12, 12, 120), at=2))  # 2 requests: 1 ms queue, 10 ms compute each
    stages.add(parse_statistics(_stats(16, 20, 200), at=4))  # 4 requests: 2 ms queue, 20 ms compute each
    stages.add(parse_statistics(_stats(16, 20, 200), at=6))  # idle interval: ignored
    entry = stages.breakdown()["vlm_encoder"]
    assert entry["requests"] == 6
    assert entry["compute_mean_s"] == pytest.approx((20 + 80) / 6 / 1000)
    assert entry["queue_mean_s"] == pytest.approx(10 / 6 / 1000)
    assert entry["compute_p50_s"] == pytest.approx(0.015)
    assert "reconstruct_hybrid" not in stages.breakdown()  # ensembles are not stages


def test_stage_window_keeps_one_baseline() -> None:
    stages = StageStats(window_s=5)
    for t in range(0, 20, 2):
        stages.add(parse_statistics(_stats(t, t, t), at=t))
    assert stages.snapshots[0].at < 18 - 5 <= stages.snapshots[1].at


def test_report_shape() -> None:
    tracker = OverheadTracker(window_s=60, budget=0.25, min_samples=2, device="cpu", profile="tiny")
    for seconds in (1.0, 1.1, 1.2):
        tracker.latencies.add("reconstruct", "hybrid", seconds * 1.1)
        tracker.latencies.add("reconstruct", "vlm", seconds)
    report = tracker.report()
    assert report["budget"] == 0.25 and report["profile"] == "tiny" and report["device"] == "cpu"
    assert report["overhead"]["end_to_end"]["verdict"] == "within_budget"
    assert report["overhead"]["end_to_end"]["p50"] == pytest.approx(0.1)
    assert report["overhead"]["encode"]["verdict"] == "insufficient_samples"
    assert report["overhead"]["encode"]["p50"] is None
    assert report["pipelines"]["vlm"]["reconstruct"]["samples"] == 3
