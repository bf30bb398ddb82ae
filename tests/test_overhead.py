"""E-P2.6 arithmetic: the one verdict, the service-time estimator over Triton statistics, the latency window, the
device read from Triton's metrics, and what /metrics exports."""

from __future__ import annotations

import math

import numpy as np
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from service.metrics import LATENCY_BUCKETS, GatewayMetrics
from service.overhead import LatencyWindow, OverheadCollector, OverheadTracker, latency_ratio
from service.service_time import (
    BRANCH_MODELS,
    DECODER,
    STAGES,
    ModelCounters,
    ServiceTimeWindow,
    Snapshot,
    branch_factors,
    chain,
    concurrent,
    critical_path,
    interval_delta,
    parse_statistics,
    split_branch,
)
from service.triton_device import parse_device
from service.verdict import Verdict, combine, judge, overhead_ratio, quantile

MS = 1_000_000  # ns


# --- the one definition -------------------------------------------------------------------------------------


def test_quantile_is_numpy_linear() -> None:
    values = [3.0, 1.0, 4.0, 1.5, 9.0, 2.6]
    for q in (0.05, 0.5, 0.95):
        assert quantile(values, q) == pytest.approx(float(np.quantile(values, q, method="linear")))
    assert quantile([5.0], 0.95) == 5.0
    assert math.isnan(quantile([], 0.5))
    rows = np.array([[1.0, 2.0, 3.0], [10.0, 20.0, 30.0]])
    assert list(quantile(rows, 0.5, axis=1)) == [2.0, 20.0]


def test_overhead_ratio_has_no_meaning_without_a_positive_baseline() -> None:
    assert overhead_ratio(1.2, 1.0) == pytest.approx(0.2)
    for hybrid, vlm in ((1.0, 0.0), (1.0, None), (None, 1.0), (math.nan, 1.0), (1.0, -1.0)):
        assert math.isnan(overhead_ratio(hybrid, vlm))


@pytest.mark.parametrize(
    ("ratio", "interval", "verdict"),
    [
        (0.10, None, Verdict.WITHIN),
        (0.30, None, Verdict.OVER),
        (0.10, (0.05, 0.20), Verdict.WITHIN),
        (0.10, (-0.05, 0.30), Verdict.INCONCLUSIVE),  # the point is fine, the interval reaches past the budget
        (0.40, (0.30, 0.50), Verdict.OVER),
        (0.26, (0.24, 0.28), Verdict.INCONCLUSIVE),
        (math.nan, None, Verdict.INSUFFICIENT),
        (0.10, (math.nan, math.nan), Verdict.INSUFFICIENT),
    ],
)
def test_judge(ratio: float, interval: tuple[float, float] | None, verdict: Verdict) -> None:
    assert judge(ratio, 0.25, interval) is verdict


def test_combine_is_the_worst_of_its_parts() -> None:
    assert combine([Verdict.WITHIN, Verdict.WITHIN]) is Verdict.WITHIN
    assert combine([Verdict.WITHIN, Verdict.INCONCLUSIVE]) is Verdict.INCONCLUSIVE
    assert combine([Verdict.INCONCLUSIVE, Verdict.INSUFFICIENT]) is Verdict.INSUFFICIENT
    assert combine([Verdict.INSUFFICIENT, Verdict.OVER, Verdict.WITHIN]) is Verdict.OVER
    assert combine([]) is Verdict.INSUFFICIENT


# --- the model graph ----------------------------------------------------------------------------------------


def test_stages_and_chains_come_from_the_contracts() -> None:
    assert set(STAGES) == {"preprocess", "vlm_encoder", "spatial_encoder", "fusion", "vlm_adapter",
                           "spatial_adapter", "video_decoder"}  # fmt: skip
    assert DECODER == "video_decoder"
    assert chain("encode", "vlm") == ("preprocess", "vlm_encoder", "vlm_adapter")
    assert chain("reconstruct", "hybrid")[-1] == "video_decoder"


def test_critical_path_runs_the_encoder_branches_concurrently() -> None:
    times = {"preprocess": 1.0, "vlm_encoder": 10.0, "spatial_encoder": 4.0, "fusion": 2.0, "vlm_adapter": 3.0,
             "spatial_adapter": 0.5, "video_decoder": 100.0}  # fmt: skip
    assert critical_path(chain("encode", "hybrid"), times) == 1 + max(10, 4) + 2
    assert critical_path(chain("encode", "vlm"), times) == 1 + 10 + 3
    assert critical_path(chain("encode", "spatial"), times) == 1 + 4 + 0.5
    assert critical_path(chain("reconstruct", "hybrid"), times) == 1 + 10 + 2 + 100
    times["spatial_encoder"] = 12.0  # now DINOv2 is the slower branch
    assert critical_path(chain("encode", "hybrid"), times) == 1 + 12 + 2
    draws = {m: np.array([t, 2 * t]) for m, t in times.items()}
    assert list(critical_path(chain("encode", "hybrid"), draws)) == [15.0, 30.0]


# --- Triton statistics ----------------------------------------------------------------------------------------


def _model(name: str, batch1: tuple[int, float] = (0, 0.0), batched: tuple[int, int, float] = (0, 2, 0.0),
           queue_ms: float = 0.0) -> dict:  # fmt: skip
    """One model's entry as tritonclient's get_inference_statistics(as_json=True) gives it: int64 as strings,
    `batch1` = (executions, ms each), `batched` = (executions, batch size, ms each)."""
    executions, ms = batch1
    big, size, big_ms = batched
    requests = executions + big * size
    compute_ns = executions * ms * MS + big * size * big_ms * MS  # a batched request counts its whole execution
    single = {"count": str(executions), "ns": str(int(executions * ms * MS))}
    batch_stats = [{"batch_size": "1", "compute_infer": single}]
    if big:
        batch_stats.append(
            {"batch_size": str(size), "compute_infer": {"count": str(big), "ns": str(int(big * big_ms * MS))}}
        )
    return {
        "name": name,
        "version": "1",
        "inference_count": str(requests),
        "execution_count": str(executions + big),
        "inference_stats": {
            "success": {"count": str(requests), "ns": str(int(compute_ns + requests * queue_ms * MS))},
            "fail": {},
            "queue": {"count": str(requests), "ns": str(int(requests * queue_ms * MS))},
            "compute_infer": {"count": str(requests), "ns": str(int(compute_ns))},
        },
        "batch_stats": batch_stats,
    }


def test_parse_statistics_keeps_batch_one_service_time_apart() -> None:
    payload = {
        "model_stats": [
            _model("fusion", batch1=(4, 10.0), batched=(2, 4, 25.0), queue_ms=7.0),
            {"name": "encode_hybrid", "inference_stats": {"success": {"count": "9"}}},  # kept apart from stages
            {"name": "some_other_model", "inference_stats": {"success": {"count": "3"}}},
            {
                "name": "fusion",
                "version": "2",
                "inference_count": "1",
                "execution_count": "1",
                "batch_stats": [
                    {
                        "batch_size": "1",
                        "compute_input": {"count": "1", "ns": "1000000"},
                        "compute_infer": {"count": "1", "ns": "9000000"},
                    }
                ],
            },  # fmt: skip
        ]
    }
    counters = parse_statistics(payload)
    assert set(counters) == {"fusion", "encode_hybrid"} and set(STAGES).isdisjoint({"encode_hybrid"})
    assert counters["encode_hybrid"].requests == 9
    fusion = counters["fusion"]
    assert fusion.executions == 5 and fusion.service_ns == 4 * 10 * MS + 10 * MS  # both versions, input + infer
    assert fusion.requests == 12 and fusion.queue_ns == 12 * 7 * MS
    assert fusion.inferences == 13 and fusion.batches == 7


def _snapshot(at: float, **replicas: list[dict]) -> Snapshot:
    return Snapshot(at, {name: parse_statistics({"model_stats": models}) for name, models in replicas.items()})


def test_interval_delta_sums_replicas_and_skips_restarts() -> None:
    before = _snapshot(0, a=[_model("fusion", batch1=(10, 5.0))], b=[_model("fusion", batch1=(50, 5.0))])
    after = _snapshot(
        1,
        a=[_model("fusion", batch1=(13, 5.0))],
        b=[_model("fusion", batch1=(2, 5.0))],  # restarted: counters back near zero
        c=[_model("fusion", batch1=(7, 5.0))],  # new: this is its baseline
    )
    delta = interval_delta(before, after)
    assert delta["fusion"].executions == 3 and delta["fusion"].service_ns == 15 * MS


# Batch-1 service times (ms) of a pipeline stack where hybrid encode = 2 + max(10, 6) + 3 = 15 and vlm encode =
# 2 + 10 + 1 = 13: the encode overhead is 15/13 − 1 = +15.4%; with a 40 ms decoder, end to end 55/53 − 1 = +3.8%.
SERVICE_MS = {"preprocess": 2.0, "vlm_encoder": 10.0, "spatial_encoder": 6.0, "fusion": 3.0, "vlm_adapter": 1.0,
              "spatial_adapter": 1.0, "video_decoder": 40.0}  # fmt: skip
# The branches slowing each other inside hybrid, as they do where they share a device's cores: vlm_encoder 13 ms
# and spatial_encoder 9 ms beside each other, 10 and 6 alone. Hybrid encode is then 2 + 13 + 3 = 18 ms: +38.5%.
CONTENDED = {"vlm_encoder": 1.3, "spatial_encoder": 1.5}


def _traffic(window: ServiceTimeWindow, seconds: int, hybrid_per_s: int, vlm_every_s: int, queue_ms: float,
             batched: int, jitter: float = 0.0, seed: int = 0, vlm_per_due: int = 1, vlm_batched: int = 0,
             beside: dict[str, float] | None = None) -> None:  # fmt: skip
    """Feed `window` one snapshot a second of a stack serving `hybrid_per_s` hybrid /reconstruct requests a second
    (of which `batched` run in batches of 2 at 1.6× the batch-1 time) and `vlm_per_due` vlm ones (`vlm_batched`
    of them in pairs) every `vlm_every_s` seconds; `beside` slows the branch models inside hybrid. Each ensemble's
    compute is the sum of its composing models' for its requests, as Triton reports it."""
    rng = np.random.default_rng(seed)
    totals: dict[str, list[float]] = {m: [0, 0.0, 0, 0.0] for m in STAGES}  # b1 count, b1 ms, b2 count, b2 ms
    ensembles: dict[str, list[float]] = {"reconstruct_hybrid": [0, 0.0], "reconstruct_vlm": [0, 0.0]}

    def run(pipeline: str, single: int, pairs: int) -> None:
        for model in chain("reconstruct", pipeline):
            ms = SERVICE_MS[model] * ((beside or {}).get(model, 1.0) if pipeline == "hybrid" else 1.0)
            took = [ms * (1 + jitter * rng.standard_normal()) for _ in range(single)]
            totals[model][0] += single
            totals[model][1] += sum(took)
            totals[model][2] += pairs
            totals[model][3] += pairs * ms * 1.6
            ensembles[f"reconstruct_{pipeline}"][1] += sum(took) + 2 * pairs * ms * 1.6  # each counts its batch
        ensembles[f"reconstruct_{pipeline}"][0] += single + 2 * pairs

    for second in range(seconds + 1):
        if second:
            run("hybrid", hybrid_per_s - batched, batched // 2)
            if second % vlm_every_s == 0:
                run("vlm", vlm_per_due - vlm_batched, vlm_batched // 2)
        models = []
        for model, (b1, b1_ms, b2, b2_ms) in totals.items():
            entry = _model(model, batch1=(int(b1), b1_ms / b1 if b1 else 0.0),
                           batched=(int(b2), 2, b2_ms / b2 if b2 else 0.0), queue_ms=queue_ms)  # fmt: skip
            models.append(entry)
        for name, (requests, ms) in ensembles.items():
            models.append(_model(name, batch1=(int(requests), ms / requests if requests else 0.0)))
        window.add(_snapshot(float(second), replica=models))


def test_service_time_measures_the_pipelines_not_the_traffic() -> None:
    """Heavy queued hybrid traffic with batching and a trickle of vlm requests, or an idle stack with a balanced
    mix: the same pipelines give the same overhead, exactly the batch-1 service times' ratio. The batcher groups
    whatever is queued, so at the models both pipelines share, half of either pipeline's requests are batched."""
    loaded = ServiceTimeWindow(window_s=60, budget=0.25, min_samples=5)
    _traffic(loaded, seconds=30, hybrid_per_s=12, vlm_every_s=3, queue_ms=80.0, batched=6, vlm_per_due=4,
             vlm_batched=2)  # fmt: skip
    idle = ServiceTimeWindow(window_s=60, budget=0.25, min_samples=5)
    _traffic(idle, seconds=30, hybrid_per_s=1, vlm_every_s=1, queue_ms=0.0, batched=0)
    for window in (loaded, idle):
        estimate = window.estimate(now=30)
        assert estimate.scopes["encode"].ratio == pytest.approx(15 / 13 - 1)
        assert estimate.scopes["end_to_end"].ratio == pytest.approx(55 / 53 - 1)
        assert estimate.scopes["encode"].service_s["hybrid"] == pytest.approx(0.015)
        for scope in estimate.scopes.values():
            assert scope.verdict is Verdict.WITHIN and scope.reasons == []
            assert scope.ci95[0] == pytest.approx(scope.ratio) == pytest.approx(scope.ci95[1])  # no noise here
        assert estimate.factors["vlm_encoder"]["hybrid"] == pytest.approx(1.0)  # no contention in this stack
    stages = loaded.estimate(now=30).stages
    assert stages["fusion"].executions == 30 * 6 and stages["vlm_adapter"].executions == 10 * 2
    assert stages["fusion"].queue_mean_s == pytest.approx(0.080) and stages["fusion"].mean_batch > 1


@pytest.mark.parametrize("load", ["idle, balanced", "queued hybrid load, batched"])
def test_branches_that_slow_each_other_are_timed_per_pipeline(load: str) -> None:
    """vlm_encoder and spatial_encoder slower beside each other in hybrid than alone: their pooled means would say
    hybrid encode = 2 + max(10.9, 7.5) + 3 = 15.9 ms against vlm's 13.9 (+14%); split by pipeline through the
    ensembles' compute, the estimate is the true 18 against 13 ms (+38.5%), however the traffic was mixed."""
    window = ServiceTimeWindow(window_s=60, budget=0.25, min_samples=5)
    if load.startswith("idle"):
        _traffic(window, seconds=30, hybrid_per_s=1, vlm_every_s=1, queue_ms=0.0, batched=0, beside=CONTENDED)
    else:
        _traffic(window, seconds=30, hybrid_per_s=12, vlm_every_s=3, queue_ms=80.0, batched=6, vlm_per_due=4,
                 vlm_batched=2, beside=CONTENDED)  # fmt: skip
    estimate = window.estimate(now=30)
    encode = estimate.scopes["encode"]
    assert encode.service_s["hybrid"] == pytest.approx(0.018) and encode.service_s["vlm"] == pytest.approx(0.013)
    assert encode.ratio == pytest.approx(18 / 13 - 1) and encode.verdict is Verdict.OVER
    assert estimate.scopes["end_to_end"].ratio == pytest.approx(58 / 53 - 1)
    pooled = estimate.stages["vlm_encoder"].service_s
    assert 0.010 < pooled < 0.013  # a mix of both pipelines' executions: neither pipeline's time
    vlm = estimate.factors["vlm_encoder"]
    assert pooled * vlm["hybrid"] == pytest.approx(0.013) and pooled * vlm["vlm"] == pytest.approx(0.010)
    assert math.isnan(estimate.factors["spatial_encoder"]["spatial"])  # no spatial requests: unknown, and unused


def test_branch_models_come_from_the_graph() -> None:
    assert concurrent(chain("encode", "hybrid")) == {"vlm_encoder", "spatial_encoder"}
    assert concurrent(chain("reconstruct", "vlm")) == set()
    assert BRANCH_MODELS == {"vlm_encoder": "hybrid", "spatial_encoder": "hybrid"}


def test_split_of_one_interval_by_hand() -> None:
    """vlm_encoder made 10 requests in vlm (encode_vlm's compute 13 ms each: 2 + 10 + 1) and 30 in hybrid, 800 ms in
    all: vlm's 10 took 100 ms, hybrid's the other 700 (23.3 ms each, against a mean of 20)."""

    def counters(requests: int, ms_each: float) -> ModelCounters:
        return ModelCounters(requests=requests, compute_ns=int(requests * ms_each * MS))

    delta = {"preprocess": counters(40, 2.0), "vlm_adapter": counters(10, 1.0), "vlm_encoder": counters(40, 20.0),
             "encode_vlm": counters(10, 13.0), "encode_hybrid": counters(30, 40.0)}  # fmt: skip
    row = split_branch(delta, "vlm_encoder", fallback={})
    assert list(row) == pytest.approx([40, 800 * MS, 10, 100 * MS])
    factors = branch_factors("vlm_encoder", row)
    assert factors["vlm"] == pytest.approx(10 / 20) and factors["hybrid"] == pytest.approx(700 / 30 / 20)
    # A step that finished no request in the interval is counted at its mean over the window.
    del delta["vlm_adapter"]
    assert split_branch(delta, "vlm_encoder", fallback={"vlm_adapter": 0.004})[3] == pytest.approx(10 * 7 * MS)
    # No spatial requests: spatial_encoder's time alone is unknown, and all of it is hybrid's.
    spatial = branch_factors(
        "spatial_encoder", split_branch({"spatial_encoder": counters(5, 6.0)}, "spatial_encoder", {})
    )
    assert math.isnan(spatial["spatial"]) and spatial["hybrid"] == pytest.approx(1.0)


def test_the_split_follows_the_load_of_each_interval() -> None:
    """Idle intervals with spatial requests (preprocess 2 ms) and loaded ones without (preprocess 6 ms): over the
    window preprocess averages 5 ms, more than spatial's whole encode_spatial takes beyond spatial_encoder. Each
    interval's own preprocess time gives spatial_encoder its true 6 ms alone."""
    window = ServiceTimeWindow(window_s=60, budget=0.25, min_samples=1)
    totals: dict[str, list[float]] = {}

    def add(name: str, requests: int, ms_each: float) -> None:
        entry = totals.setdefault(name, [0, 0.0])
        entry[0] += requests
        entry[1] += requests * ms_each

    for second in range(13):
        if second and second % 4 == 0:  # idle: one spatial and one hybrid encode
            for name, ms in (("preprocess", 2.0), ("spatial_encoder", 6.0), ("spatial_adapter", 1.0)):
                add(name, 1, ms)
            add("encode_spatial", 1, 9.0)
            for name, ms in (("preprocess", 2.0), ("spatial_encoder", 8.0), ("vlm_encoder", 10.0), ("fusion", 3.0)):
                add(name, 1, ms)
            add("encode_hybrid", 1, 23.0)
        elif second:  # loaded: 3 hybrid encodes, everything slower
            for name, ms in (("preprocess", 6.0), ("spatial_encoder", 12.0), ("vlm_encoder", 15.0), ("fusion", 5.0)):
                add(name, 3, ms)
            add("encode_hybrid", 3, 38.0)
        models = [_model(name, batch1=(int(n), ms / n)) for name, (n, ms) in totals.items()]
        window.add(_snapshot(float(second), replica=models))
    factors = window.estimate(now=12).factors["spatial_encoder"]
    spatial_mean = (3 * 6.0 + 3 * 8.0 + 27 * 12.0) / 33
    assert factors["spatial"] * spatial_mean == pytest.approx(6.0)
    assert factors["hybrid"] * spatial_mean == pytest.approx((3 * 8.0 + 27 * 12.0) / 30)


def test_noise_gives_an_interval_around_the_estimate() -> None:
    window = ServiceTimeWindow(window_s=60, budget=0.25, min_samples=5)
    _traffic(window, seconds=40, hybrid_per_s=4, vlm_every_s=2, queue_ms=5.0, batched=0, jitter=0.3)
    scope = window.estimate(now=40).scopes["encode"]
    low, high = scope.ci95
    assert low < scope.ratio < high and high - low > 0.01
    assert abs(scope.ratio - (15 / 13 - 1)) < high - low  # the truth is within reach of the interval
    assert window.estimate(now=40) is window.estimate(now=40)  # cached until the next snapshot


def test_too_few_vlm_executions_is_insufficient_and_says_which() -> None:
    window = ServiceTimeWindow(window_s=60, budget=0.25, min_samples=5)
    _traffic(window, seconds=8, hybrid_per_s=4, vlm_every_s=4, queue_ms=0.0, batched=0)  # 2 vlm requests
    scope = window.estimate(now=8).scopes["encode"]
    assert scope.verdict is Verdict.INSUFFICIENT and math.isnan(scope.ratio)
    assert any(reason.startswith("vlm_adapter: 2 batch-1 executions") for reason in scope.reasons)


def test_without_ensemble_statistics_the_split_is_unknown_and_says_so() -> None:
    window = ServiceTimeWindow(window_s=60, budget=0.25, min_samples=5)
    for second in range(10):
        models = [_model(m, batch1=(10 * second, ms)) for m, ms in SERVICE_MS.items()]
        window.add(_snapshot(float(second), replica=models))
    scope = window.estimate(now=9).scopes["encode"]
    assert scope.verdict is Verdict.INSUFFICIENT
    assert scope.reasons == ["vlm_encoder: its time in vlm is unknown (no vlm requests in Triton's ensemble "
                             "statistics)"]  # fmt: skip


def test_window_slides() -> None:
    window = ServiceTimeWindow(window_s=10, budget=0.25, min_samples=5)
    _traffic(window, seconds=40, hybrid_per_s=2, vlm_every_s=1, queue_ms=0.0, batched=0)
    assert window.snapshots[0].at < 40 - 10 <= window.snapshots[1].at
    assert window.added == 41  # every poll counted, those that slid out too
    assert window.estimate(now=40).stages["vlm_adapter"].executions == 10
    assert window.estimate(now=100).stages["vlm_adapter"].executions == 0  # nothing polled for a minute


# --- latency window, device -----------------------------------------------------------------------------------


def test_latency_window_forgets_old_samples() -> None:
    window = LatencyWindow(window_s=10)
    window.add("reconstruct", "hybrid", 1.0, now=0)
    window.add("reconstruct", "hybrid", 2.0, now=8)
    assert window.values("reconstruct", "hybrid", now=9) == [1.0, 2.0]
    assert window.values("reconstruct", "hybrid", now=15) == [2.0]
    assert window.values("encode", "hybrid", now=15) == []


def test_latency_ratio() -> None:
    result = latency_ratio([1.1] * 10, [1.0] * 10, min_samples=5)
    assert result.ratios[0.5] == pytest.approx(0.1) and result.samples == {"hybrid": 10, "vlm": 10}
    assert all(math.isnan(r) for r in latency_ratio([1.0] * 3, [1.0] * 10, min_samples=5).ratios.values())


def test_device_from_triton_metrics() -> None:
    gpu_text = (
        "# HELP nv_gpu_utilization GPU utilization rate [0.0 - 1.0)\n# TYPE nv_gpu_utilization gauge\n"
        'nv_gpu_utilization{gpu_uuid="GPU-0c1d"} 0.5\nnv_gpu_utilization{gpu_uuid="GPU-77aa"} 0\n'
        'nv_gpu_memory_used_bytes{gpu_uuid="GPU-0c1d"} 3.2e+10\nnv_cpu_utilization 0.1\n'
    )
    device = parse_device(gpu_text, "test")
    assert device.kind == "gpu" and device.gpus == ("GPU-0c1d", "GPU-77aa")
    assert str(device) == "gpu (GPU-0c1d, GPU-77aa)"
    cpu = parse_device('nv_cpu_utilization 0.2\nnv_inference_count{model="fusion",version="1"} 3\n', "test")
    assert cpu.kind == "cpu" and cpu.gpus == () and str(cpu) == "cpu"


# --- what /v1/overhead and /metrics show --------------------------------------------------------------------------


def _tracker_with_traffic() -> OverheadTracker:
    tracker = OverheadTracker(window_s=1e9, budget=0.25, min_samples=5, profile="tiny")
    _traffic(tracker.service_times, seconds=20, hybrid_per_s=4, vlm_every_s=2, queue_ms=30.0, batched=2, jitter=0.02,
             vlm_per_due=4, vlm_batched=2)  # fmt: skip
    for seconds in (1.0, 1.1, 1.2, 1.3, 1.4):
        tracker.latencies.add("reconstruct", "hybrid", seconds * 1.5)
        tracker.latencies.add("reconstruct", "vlm", seconds)
    return tracker


def test_report_names_its_estimator_and_keeps_user_latency_beside_it() -> None:
    report = _tracker_with_traffic().report()
    assert report["budget"] == 0.25 and report["profile"] == "tiny" and report["device"] == "unknown"
    assert report["estimator"] == "service_time" and report["verdict"] == "within_budget"
    encode = report["overhead"]["encode"]
    assert encode["verdict"] == "within_budget" and encode["ci95"][0] <= encode["ratio"] <= encode["ci95"][1]
    assert encode["executions"] == {"hybrid": 40, "vlm": 20, "spatial": 0}  # half of each pipeline's batched
    assert report["branch_factors"]["vlm_encoder"]["hybrid"] == pytest.approx(1.0, abs=0.05)
    assert report["branch_factors"]["spatial_encoder"]["spatial"] is None
    # Queued hybrid requests read +50% to users; the verdict does not follow the queue.
    assert report["request_latency"]["end_to_end"]["p50"] == pytest.approx(0.5)
    assert report["request_latency"]["encode"]["p50"] is None
    assert set(report["pipelines"]["vlm"]["stages"]) == {"preprocess", "vlm_encoder", "vlm_adapter", "video_decoder"}
    assert report["pipelines"]["spatial"]["service_time_s"]["encode"] is None  # no spatial traffic: no number
    assert report["stages"]["spatial_adapter"]["service_s"] is None


def test_collector_exports_no_nan_and_one_verdict_per_scope() -> None:
    registry = CollectorRegistry()
    registry.register(OverheadCollector(_tracker_with_traffic()))
    families = {f.name: f for f in text_string_to_metric_families(generate_latest(registry).decode())}
    for family in families.values():
        for sample in family.samples:
            assert not math.isnan(sample.value), sample
    ratios = {(s.labels["scope"], s.labels["estimator"], s.labels["statistic"]) for s in
              families["hybrid_overhead_ratio"].samples}  # fmt: skip
    assert ratios == {("encode", "service_time", "mean"), ("end_to_end", "service_time", "mean"),
                      ("end_to_end", "request_latency", "p50"), ("end_to_end", "request_latency", "p95")}  # fmt: skip
    states = [s for s in families["hybrid_overhead_verdict"].samples if s.value == 1]
    assert sorted((s.labels["scope"], s.labels["verdict"]) for s in states) == [
        ("encode", "within_budget"),
        ("end_to_end", "within_budget"),
    ]
    assert {s.labels["model"] for s in families["hybrid_stage_service_seconds"].samples} == set(STAGES) - {
        "spatial_adapter"
    }
    assert families["hybrid_triton_device_info"].samples[0].labels["kind"] == "unknown"


def test_latency_buckets_resolve_ten_percent_from_5_ms_to_2_s() -> None:
    bounds = [b for b in LATENCY_BUCKETS if 0.004 <= b <= 2.5]
    assert bounds[0] <= 0.005 and bounds[-1] >= 2.0
    assert max(high / low for low, high in zip(bounds, bounds[1:], strict=False)) <= 1.1
    assert LATENCY_BUCKETS[-1] >= 120 and list(LATENCY_BUCKETS) == sorted(set(LATENCY_BUCKETS))


def test_triton_time_is_observed_per_ensemble() -> None:
    metrics = GatewayMetrics()
    metrics.observe_triton("encode_hybrid", 0.02)
    metrics.observe_triton("reconstruct_vlm", 0.5)
    count = metrics.registry.get_sample_value
    assert count("hybrid_gateway_triton_duration_seconds_count", {"endpoint": "encode", "pipeline": "hybrid"}) == 1
    assert count("hybrid_gateway_triton_duration_seconds_sum", {"endpoint": "reconstruct", "pipeline": "vlm"}) == 0.5


# --- the paired benchmark beside the live estimate --------------------------------------------------------------


def test_the_benchmark_sets_the_live_estimate_beside_the_paired_one() -> None:
    """Paired medians 40 vs 32 ms at encode (+25%, 8 ms); the live estimate 25 vs 20 ms (+25%, 5 ms): the intervals
    overlap, the differences do not match, and on the paired scale the live 5 ms is +15.6%."""
    from benchmarks import overhead as paired

    latencies = {e: {"hybrid": [0.040] * 8, "vlm": [0.032] * 8, "spatial": [0.030] * 8} for e in paired.ENDPOINTS}
    analysis = paired.analyse(latencies, budget=0.25, resamples=200)
    assert analysis["encode"]["difference_s"] == pytest.approx(0.008)
    assert analysis["encode"]["difference_ci95_s"] == pytest.approx([0.008, 0.008])
    live = {
        "overhead": {
            scope: {
                "ratio": 0.25,
                "ci95": [0.2, 0.3],
                "verdict": "inconclusive",
                "service_s": {"hybrid": 0.025, "vlm": 0.020, "spatial": None},
            }
            for scope in ("encode", "end_to_end")
        },  # fmt: skip
        "ensemble_requests": {f"{e}_{p}": 8 + 2 for e in paired.ENDPOINTS for p in ("hybrid", "vlm", "spatial")},
    }
    agreement = paired.agreement(analysis, live, pairs=8, warmup=2)
    encode = agreement["encode"]
    assert encode["intervals_overlap"] is True and encode["window_only_this_run"] is True
    assert encode["live_difference_s"] == pytest.approx(0.005)
    assert encode["live_on_paired_scale"] == pytest.approx(0.005 / 0.032)
    live["overhead"]["encode"]["ci95"] = [0.3, 0.4]
    live["ensemble_requests"]["encode_vlm"] = 11  # another client's request in the window
    again = paired.agreement(analysis, live, pairs=8, warmup=2)["encode"]
    assert again["intervals_overlap"] is False and again["window_only_this_run"] is False
    server = {"pipelines": {p: {"stages": {}} for p in ("hybrid", "vlm", "spatial")}}
    result = {"device": "cpu", "profile": "tiny", "input": "x", "pairs": 8, "budget": 0.25, "command": "c",
              "analysis": analysis, "agreement": agreement, "server": server}  # fmt: skip
    table = paired.markdown(result)
    assert "| encode | +25.0% [+20.0%, +30.0%] | +25.0% [+25.0%, +25.0%] | yes | +5.00 ms |" in table
