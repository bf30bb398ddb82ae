"""E-P2.6 live on the real stack: the gateway's `service_time` verdict is drawn from the real tritonserver's
statistics, and every figure it rests on is what Triton's statistics API says.

The traffic is uneven on purpose (hybrid at concurrency 4 beside sequential vlm requests, after a few sequential
rounds of every pipeline), so that the dynamic batcher groups some executions and requests queue: the estimator
must keep to batch-1 executions and leave queueing out. The test reads Triton's statistics itself, over HTTP (the
gateway reads them over gRPC), and recomputes from them the stage times and the critical paths, and checks that
the branch models' split between pipelines accounts for each of their requests and nanoseconds exactly once.
It asserts no timing: how fast the machine was changes the figures, never whether they agree. Whether the live
figure agrees with the paired benchmark is a measurement, not a test: `benchmarks/overhead.py` reports it
(`agreement`), and its results are in `benchmarks/results/`.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from hybrid import samples
from service.local_stack import Stack, StackError, running_stack
from service.verdict import BUDGET, judge, overhead_ratio
from tests.polling import after_polls, overhead_when

pytestmark = pytest.mark.integration

HYBRID_USERS = 4
REQUESTS_PER_USER = 8  # alternating /reconstruct and /encode
VLM_PAIRS_BESIDE = 4  # sequential vlm /reconstruct + /encode while the hybrid users run
ROUNDS = 4  # sequential rounds of every pipeline and endpoint, each in a poll interval of its own
PIPELINES = ("hybrid", "vlm", "spatial")
ENDPOINTS = ("reconstruct", "encode")
SCOPES = {"end_to_end": "reconstruct", "encode": "encode"}
CHAINS = {
    "hybrid": ("preprocess", "vlm_encoder", "spatial_encoder", "fusion"),
    "vlm": ("preprocess", "vlm_encoder", "vlm_adapter"),
    "spatial": ("preprocess", "spatial_encoder", "spatial_adapter"),
}
BRANCHES = {"vlm_encoder": "vlm", "spatial_encoder": "spatial"}  # beside each other in hybrid, alone here
PHASES = ("compute_input", "compute_infer", "compute_output")


@pytest.fixture(scope="module")
def fresh_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """A stack of its own, with a window longer than the test: the gateway's window must hold exactly the
    statistics this test reads from Triton."""
    log_path = tmp_path_factory.mktemp("live-overhead") / "service.log"
    env = {"HYBRID_MAX_IN_FLIGHT": str(HYBRID_USERS + 2), "HYBRID_OVERHEAD_WINDOW_S": "3600"}
    try:
        with running_stack(log_path, env) as started:
            yield started
    except StackError as exc:
        pytest.fail(str(exc))


def _post(client: httpx.Client, url: str, endpoint: str, pipeline: str, data: bytes) -> None:
    reply = client.post(f"{url}/{endpoint}", params={"pipeline": pipeline}, files={"file": ("in.png", data)})
    assert reply.status_code == 200, f"{endpoint} {pipeline}: {reply.status_code} {reply.text[:300]}"


def _triton_statistics(stack: Stack) -> dict[str, dict[str, Any]]:
    """Every model's and ensemble's entry of Triton's HTTP statistics API, by name (one version each here)."""
    stats = httpx.get(f"{stack.triton_http_url}/v2/models/stats", timeout=30).json()
    return {entry["name"]: entry for entry in stats["model_stats"]}


def _counters(entry: dict[str, Any]) -> dict[str, int]:
    stats = entry["inference_stats"]
    batch1 = next((b for b in entry.get("batch_stats", []) if int(b["batch_size"]) == 1), {})
    return {
        "executions": int(batch1.get("compute_infer", {}).get("count", 0)),
        "service_ns": sum(int(batch1.get(phase, {}).get("ns", 0)) for phase in PHASES),
        "requests": int(stats["success"]["count"]),
        "queue_ns": int(stats["queue"]["ns"]),
        "compute_ns": sum(int(stats[phase]["ns"]) for phase in PHASES),
    }


def _hybrid_user(url: str, offset: int, errors: list[BaseException]) -> None:
    try:
        with httpx.Client(timeout=300) as client:
            for i in range(offset, offset + REQUESTS_PER_USER):
                _post(client, url, ENDPOINTS[i % 2], "hybrid", samples.png(seed=i))
    except BaseException as exc:  # reported by the test thread
        errors.append(exc)


def test_live_verdict_is_drawn_from_triton_statistics_and_agrees_with_them(fresh_stack: Stack) -> None:
    url = fresh_stack.gateway_url
    with httpx.Client(timeout=300) as client:
        # The window's first interval exists: its baseline snapshot holds the counters read here.
        overhead_when(client, url, lambda r: r["statistics"]["intervals"] >= 1, "first statistics interval")
        before = {name: _counters(entry) for name, entry in _triton_statistics(fresh_stack).items()}

        for r in range(ROUNDS):  # sequential: every model runs at batch 1, in at least ROUNDS poll intervals
            for pipeline in PIPELINES:
                for endpoint in ENDPOINTS:
                    _post(client, url, endpoint, pipeline, samples.png(seed=r))
            after_polls(client, url)
        errors: list[BaseException] = []
        users = [threading.Thread(target=_hybrid_user, args=(url, 100 * (k + 1), errors)) for k in range(HYBRID_USERS)]
        for user in users:
            user.start()
        for i in range(VLM_PAIRS_BESIDE):
            for endpoint in ENDPOINTS:
                _post(client, url, endpoint, "vlm", samples.png(seed=50 + i))
        for user in users:
            user.join()
        assert not errors, errors

        # Every request reached Triton once, and the gateway's window has taken it in.
        after = {name: _counters(entry) for name, entry in _triton_statistics(fresh_stack).items()}
        delta = {name: {k: after[name][k] - before[name][k] for k in after[name]} for name in after}
        hybrid_each = ROUNDS + HYBRID_USERS * REQUESTS_PER_USER // 2
        sent = {f"{e}_{p}": ROUNDS + (VLM_PAIRS_BESIDE if p == "vlm" else 0) for e in ENDPOINTS for p in PIPELINES}
        sent |= {f"{e}_hybrid": hybrid_each for e in ENDPOINTS}
        assert {name: delta[name]["requests"] for name in sent} == sent
        live = overhead_when(client, url, lambda r: r["ensemble_requests"] == sent, "poll after the last request")

    # The traffic was uneven: far more hybrid requests than vlm ones, as the gateway's latencies counted them.
    for scope in SCOPES:
        samples_seen = live["request_latency"][scope]["samples"]
        assert samples_seen == {"hybrid": hybrid_each, "vlm": ROUNDS + VLM_PAIRS_BESIDE}, (scope, samples_seen)

    # Per model: the gateway's figures are Triton's batch-1 executions and their compute, and the per-request view.
    models = ("preprocess", "vlm_encoder", "spatial_encoder", "fusion", "vlm_adapter", "spatial_adapter")
    models += ("video_decoder",)
    assert set(live["stages"]) == set(models)
    service: dict[str, float] = {}  # model → its batch-1 service time (s)
    per_request: dict[str, float] = {}  # model or ensemble → compute per request, all batch sizes (s)
    for name, counts in delta.items():
        per_request[name] = counts["compute_ns"] / counts["requests"] / 1e9 if counts["requests"] else 0.0
    for model in models:
        counts, stage = delta[model], live["stages"][model]
        assert counts["executions"] >= 2 * ROUNDS, (model, counts)  # the sequential rounds alone ran at batch 1
        service[model] = counts["service_ns"] / counts["executions"] / 1e9
        assert stage["executions"] == counts["executions"] and stage["requests"] == counts["requests"], model
        assert stage["service_s"] == pytest.approx(service[model], rel=1e-9), model
        assert stage["compute_mean_s"] == pytest.approx(per_request[model], rel=1e-9), model
        assert stage["queue_mean_s"] == pytest.approx(counts["queue_ns"] / counts["requests"] / 1e9, rel=1e-9)

    # The branch models' compute split between the pipelines (per poll interval, through the ensembles' compute):
    # every request and nanosecond of the model once, the requests where it runs alone being those pipelines'.
    factors = live["branch_factors"]
    for model, alone in BRANCHES.items():
        split = live["branch_split"][model]
        assert set(split) == {alone, "hybrid"}
        assert split[alone]["requests"] == sum(delta[f"{e}_{alone}"]["requests"] for e in ENDPOINTS)
        assert sum(part["requests"] for part in split.values()) == delta[model]["requests"]
        total_s = delta[model]["compute_ns"] / 1e9
        assert sum(part["compute_s"] for part in split.values()) == pytest.approx(total_s, rel=1e-9)
        for pipeline, part in split.items():
            each = max(part["compute_s"], 0.0) / part["requests"]
            assert factors[model][pipeline] == pytest.approx(each / per_request[model], rel=1e-6), (model, pipeline)

    # Per pipeline: the critical path through the graph, the branches side by side in hybrid; then the verdict.
    def scaled(model: str, pipeline: str) -> float:
        return service[model] * factors[model][pipeline]

    for scope, kind in SCOPES.items():
        decoder = service["video_decoder"] if kind == "reconstruct" else 0.0
        expected = {
            "hybrid": service["preprocess"]
            + max(scaled("vlm_encoder", "hybrid"), scaled("spatial_encoder", "hybrid"))
            + service["fusion"]
            + decoder,
            "vlm": service["preprocess"] + scaled("vlm_encoder", "vlm") + service["vlm_adapter"] + decoder,
            "spatial": service["preprocess"]
            + scaled("spatial_encoder", "spatial")
            + service["spatial_adapter"]
            + decoder,
        }
        entry = live["overhead"][scope]
        for pipeline, seconds in expected.items():
            assert entry["service_s"][pipeline] == pytest.approx(seconds, rel=1e-6), (scope, pipeline)
        assert entry["ratio"] == pytest.approx(overhead_ratio(expected["hybrid"], expected["vlm"]), rel=1e-6)
        assert entry["reasons"] == [] and entry["executions"]["vlm"] >= 2 * ROUNDS, entry
        low, high = entry["ci95"]
        assert low <= entry["ratio"] <= high, entry
        assert entry["verdict"] == judge(entry["ratio"], BUDGET, (low, high)).value != "insufficient_samples"
    assert live["estimator"] == "service_time" and live["budget"] == BUDGET
