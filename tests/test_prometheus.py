"""E-P2.6 end to end: traffic through the real stack, /v1/overhead and /metrics, and a real Prometheus (Debian's
package) scraping the gateway and Triton with the deployment's own config, answering every dashboard query with a
number (NaN is no answer)."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from hybrid import samples
from service.local_stack import Stack, free_port
from tests.polling import after_polls

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parent.parent
DASHBOARD = ROOT / "docker" / "grafana" / "dashboards" / "e-p2-6.json"
PROMETHEUS_CONFIG = ROOT / "docker" / "prometheus" / "prometheus.yml"


@pytest.fixture(scope="module")
def traffic(stack: Stack) -> None:
    """Enough successful requests on every pipeline and both endpoints for the overhead window, each round in a
    statistics poll of its own (waited for, not slept for), plus a rejected one; then a poll that saw them all."""
    with httpx.Client(timeout=300) as client:
        for i in range(6):
            _every_pipeline_and_endpoint(client, stack.gateway_url, seed=i)
            after_polls(client, stack.gateway_url)
        assert client.post(f"{stack.gateway_url}/encode", files={"file": ("x", b"junk")}).status_code == 422


def _every_pipeline_and_endpoint(client: httpx.Client, url: str, seed: int = 0) -> None:
    for pipeline in ("hybrid", "vlm", "spatial"):
        for endpoint in ("reconstruct", "encode"):
            reply = client.post(
                f"{url}/{endpoint}",
                params={"pipeline": pipeline},
                files={"file": ("in.png", samples.png(seed=seed))},
            )
            assert reply.status_code == 200, reply.text


def test_overhead_report(stack: Stack, traffic: None) -> None:
    report = httpx.get(f"{stack.gateway_url}/v1/overhead").json()
    assert report["experiment"] == "E-P2.6" and report["budget"] == 0.25 and report["profile"] == "tiny"
    # The device is what Triton's metrics say: this Triton has no GPU series, so the CPU.
    gpu = _triton_has_gpu_metrics(stack)
    assert report["device"].startswith("gpu (GPU-") if gpu else report["device"] == "cpu"
    assert report["device_source"].startswith("Triton metrics http://")
    assert report["estimator"] == "service_time" and "queueing excluded" in report["estimator_note"]
    for scope in ("end_to_end", "encode"):
        entry = report["overhead"][scope]
        assert entry["executions"]["hybrid"] >= 6 and entry["executions"]["vlm"] >= 6 and entry["reasons"] == []
        low, high = entry["ci95"]
        assert low <= entry["ratio"] <= high
        assert entry["verdict"] in ("within_budget", "over_budget", "inconclusive")
        assert entry["service_s"]["hybrid"] > 0 and entry["service_s"]["vlm"] > 0
        latency = report["request_latency"][scope]
        assert latency["samples"]["hybrid"] >= 6 and isinstance(latency["p50"], float)
    hybrid = report["pipelines"]["hybrid"]
    assert hybrid["reconstruct"]["p50_s"] > 0 and hybrid["encode"]["p95_s"] >= hybrid["encode"]["p50_s"]
    # The stage breakdown covers exactly the models of each pipeline's chain.
    assert set(hybrid["stages"]) == {"preprocess", "vlm_encoder", "spatial_encoder", "fusion", "video_decoder"}
    assert set(report["pipelines"]["spatial"]["stages"]) == {
        "preprocess",
        "spatial_encoder",
        "spatial_adapter",
        "video_decoder",
    }
    for entry in report["stages"].values():
        assert entry["executions"] > 0 and entry["service_s"] > 0
        assert entry["requests"] > 0 and entry["compute_mean_s"] > 0 and entry["queue_mean_s"] >= 0


def test_metrics_expose_overhead_and_stages(stack: Stack, traffic: None) -> None:
    text = httpx.get(f"{stack.gateway_url}/metrics").text
    for needle in (
        'hybrid_overhead_ratio{estimator="service_time",scope="end_to_end",statistic="mean"}',
        'hybrid_overhead_ratio{estimator="request_latency",scope="encode",statistic="p95"}',
        'hybrid_overhead_ci95_upper_ratio{estimator="service_time",scope="encode"}',
        "hybrid_overhead_budget_ratio 0.25",
        'hybrid_overhead_samples{estimator="service_time",pipeline="vlm",scope="encode"}',
        'hybrid_stage_service_seconds{model="video_decoder"}',
        'hybrid_pipeline_service_seconds{pipeline="spatial",scope="end_to_end"}',
        'hybrid_triton_device_info{gpus="",kind="cpu"} 1.0' if not _triton_has_gpu_metrics(stack) else 'kind="gpu"',
    ):
        assert needle in text, needle
    samples = [line.rsplit(" ", 1) for line in text.splitlines() if line and not line.startswith("#")]
    assert not [line for line, value in samples if math.isnan(float(value))], "NaN exported as a value"
    # The Triton wait of every successful call is observed (it was declared and never observed before).
    triton_wait = 'hybrid_gateway_triton_duration_seconds_count{endpoint="encode",pipeline="vlm"}'
    assert float(next(value for line, value in samples if line == triton_wait)) >= 6


@pytest.fixture(scope="module")
def prometheus(stack: Stack, traffic: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    binary = shutil.which("prometheus")
    assert binary, "Prometheus is missing: `make test` installs Debian's `prometheus` package (make system-deps)"
    workdir = tmp_path_factory.mktemp("prometheus")
    # The deployment's own scrape config, with loopback targets and a fast interval.
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    config["global"]["scrape_interval"] = config["global"]["evaluation_interval"] = "1s"
    targets = {"gateway": stack.gateway_url, "triton": stack.triton_metrics_url.removesuffix("/metrics")}
    assert {job["job_name"] for job in config["scrape_configs"]} == set(targets)
    for job in config["scrape_configs"]:
        job["static_configs"] = [{"targets": [targets[job["job_name"]].removeprefix("http://")]}]
    (workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
    url = f"http://127.0.0.1:{free_port()}"
    process = subprocess.Popen(
        [
            binary,
            f"--config.file={workdir / 'prometheus.yml'}",
            f"--storage.tsdb.path={workdir / 'data'}",
            f"--web.listen-address={url.removeprefix('http://')}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=(workdir / "prometheus.log").open("wb"),
    )
    try:
        deadline = time.monotonic() + 120  # bounds for failing: it is ready in a second or two
        while True:
            try:
                if httpx.get(f"{url}/-/ready", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert process.poll() is None, (workdir / "prometheus.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "Prometheus did not become ready"
            time.sleep(0.5)
        yield url
    finally:
        process.terminate()
        process.wait(30)


def _dashboard_queries() -> list[tuple[str, str]]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [(panel["title"], t["expr"]) for panel in dashboard["panels"] for t in panel.get("targets", [])]


def _triton_has_gpu_metrics(stack: Stack) -> bool:
    return "nv_gpu_utilization" in httpx.get(stack.triton_metrics_url).text


def _has_a_number(result: list[dict]) -> bool:
    """Whether an instant-query result holds a finite value: NaN (0/0, histogram_quantile of no traffic) or an
    infinity is no data."""
    return any(math.isfinite(float(series["value"][1])) for series in result)


def test_dashboard_panels_name_their_estimator() -> None:
    for title, expr in _dashboard_queries():
        if "hybrid_overhead_ratio" in expr or "hybrid_overhead_ci95" in expr or "hybrid_overhead_verdict" in expr:
            assert "estimator=" in expr, expr
            estimator = "service_time" if 'estimator="service_time"' in expr else "request_latency"
            assert estimator in title, (title, expr)


def test_every_dashboard_query_returns_data(stack: Stack, prometheus: str) -> None:
    queries = _dashboard_queries()
    assert len(queries) >= 15
    gpu = _triton_has_gpu_metrics(stack)
    # Keep the traffic going on every pipeline and endpoint while Prometheus collects the samples rate() needs.
    pending = {expr for _, expr in queries if gpu or "nv_gpu_" not in expr}
    deadline = time.monotonic() + 240  # rate() needs two scrapes a second apart; ~8 s here, idle
    with httpx.Client(timeout=300) as client:
        while pending and time.monotonic() < deadline:
            _every_pipeline_and_endpoint(client, stack.gateway_url)
            for expr in sorted(pending):
                reply = client.get(f"{prometheus}/api/v1/query", params={"query": expr})
                assert reply.status_code == 200 and reply.json()["status"] == "success", (expr, reply.text)
                if _has_a_number(reply.json()["data"]["result"]):
                    pending.discard(expr)
            time.sleep(1)
    assert not pending, f"dashboard queries with no finite value: {sorted(pending)}"
    if not gpu:
        # The GPU series are the only ones allowed to be absent, and only because this Triton has no GPU.
        skipped = [expr for _, expr in queries if "nv_gpu_" in expr]
        assert skipped and all(expr.startswith("nv_gpu_") for expr in skipped)
