"""E-P2.6 live under uneven traffic: hybrid-only load at concurrency 4 and a few sequential vlm requests.

Raw latencies over such a window compare queued hybrid requests with unqueued vlm ones (on an H200 that read
+96% while the paired benchmark said +3%). The gateway's `service_time` estimator must keep measuring the
pipelines: its verdict stays within the budget during the load, and its interval agrees with the paired benchmark
(benchmarks/overhead.py) run against the same stack right after.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import httpx
import pytest

from benchmarks import overhead as paired
from service.local_stack import Stack, StackError, running_stack
from service.verdict import BUDGET

pytestmark = pytest.mark.integration

HYBRID_USERS = 4
LOAD_S = 15.0
PAIRS = 12
SCOPES = {"end_to_end": "reconstruct", "encode": "encode"}


@pytest.fixture(scope="module")
def fresh_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """A stack of its own: the overhead window must hold this test's traffic only."""
    log_path = tmp_path_factory.mktemp("live-overhead") / "service.log"
    try:
        with running_stack(log_path, {"HYBRID_MAX_IN_FLIGHT": str(HYBRID_USERS + 2)}) as started:
            yield started
    except StackError as exc:
        pytest.fail(str(exc))


def _post(client: httpx.Client, url: str, endpoint: str, pipeline: str, data: bytes) -> None:
    reply = client.post(f"{url}/{endpoint}", params={"pipeline": pipeline}, files={"file": ("in.png", data)})
    assert reply.status_code == 200, f"{endpoint} {pipeline}: {reply.status_code} {reply.text[:300]}"


def _hybrid_user(url: str, inputs: list[bytes], until: float, offset: int, errors: list[BaseException]) -> None:
    """A closed-loop hybrid client, alternating /reconstruct and /encode."""
    try:
        with httpx.Client(timeout=120) as client:
            i = offset
            while time.monotonic() < until:
                _post(client, url, ("reconstruct", "encode")[i % 2], "hybrid", inputs[i % len(inputs)])
                i += 1
    except BaseException as exc:  # reported by the test thread
        errors.append(exc)


def test_live_verdict_holds_under_hybrid_only_load_and_agrees_with_the_paired_benchmark(fresh_stack: Stack) -> None:
    url = fresh_stack.gateway_url
    inputs = paired.make_inputs(4, 224, seed=0)
    with httpx.Client(timeout=120) as client:
        for pipeline in ("hybrid", "vlm"):
            for endpoint in SCOPES.values():
                _post(client, url, endpoint, pipeline, inputs[0])  # each model has run once before the load

        until = time.monotonic() + LOAD_S
        errors: list[BaseException] = []
        users = [
            threading.Thread(target=_hybrid_user, args=(url, inputs, until, k, errors)) for k in range(HYBRID_USERS)
        ]
        for user in users:
            user.start()
        seen: list[dict[str, str]] = []
        i = 0
        while time.monotonic() < until:  # a few sequential vlm requests, one pair a second, beside the load
            for endpoint in SCOPES.values():
                _post(client, url, endpoint, "vlm", inputs[i % len(inputs)])
            report = client.get(f"{url}/v1/overhead").json()
            seen.append({scope: entry["verdict"] for scope, entry in report["overhead"].items()})
            i += 1
            time.sleep(1.0)
        for user in users:
            user.join()
        assert not errors, errors
        time.sleep(2.5)  # the last requests reach a statistics snapshot
        live = client.get(f"{url}/v1/overhead").json()

    # The traffic was as uneven as intended: many more hybrid requests than vlm ones.
    for scope in SCOPES:
        samples = live["request_latency"][scope]["samples"]
        assert samples["hybrid"] >= 4 * samples["vlm"] > 0, samples
    # The verdict never went over the budget during the load, and it ends within it with its whole interval.
    assert not [v for v in seen if "over_budget" in v.values()], seen
    assert live["estimator"] == "service_time" and live["verdict"] == "within_budget", live["overhead"]
    for scope, entry in live["overhead"].items():
        low, high = entry["ci95"]
        assert entry["verdict"] == "within_budget" and low <= entry["ratio"] <= high <= BUDGET, (scope, entry)

    # The paired benchmark against the same stack, now idle: identical inputs, interleaved order.
    latencies = paired.run_pairs(url, PAIRS, inputs, {"frames": 1}, warmup=1)
    analysis = paired.analyse(latencies, BUDGET, resamples=2000)
    for scope, endpoint in SCOPES.items():
        low, high = live["overhead"][scope]["ci95"]
        paired_low, paired_high = analysis[endpoint]["overhead_ci95"]
        assert low <= paired_high and paired_low <= high, (
            f"{scope}: live {live['overhead'][scope]['ratio']:+.1%} [{low:+.1%}, {high:+.1%}] disagrees with "
            f"paired {analysis[endpoint]['overhead_median']:+.1%} [{paired_low:+.1%}, {paired_high:+.1%}]"
        )
