"""Two Triton replicas behind one gateway, as past one GPU: two real embedded tritonservers (the tiny repository)
on loopback, one `python -m service` balancing over both (`ipv4:a,b`, gRPC round robin).

Shown with Triton's own statistics: both replicas receive requests. Then one replica is killed (SIGKILL, its
whole process group) under a closed loop of requests: the service keeps answering 200 through the other, loses
no request beyond those the dead replica was running, and /readyz reports the dead replica as not ready while
the service stays ready.
"""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import httpx
import pytest
from fastapi.testclient import TestClient

from hybrid import samples
from service.app import create_app
from service.embedded_triton import EmbeddedTriton
from service.local_stack import ROOT, Stack, StackError, free_ports, running_stack
from service.settings import Settings
from service.triton_client import TargetError, parse_target

pytestmark = pytest.mark.integration

ENSEMBLE = "encode_hybrid"  # the cheapest full chain: preprocess, both encoders, fusion
WORKERS = 4
AFTER_KILL = 8  # requests each worker sends once a replica is dead


@dataclass
class TwoReplicas:
    replicas: list[EmbeddedTriton]
    gateway: Stack

    def address(self, i: int) -> str:
        return self.replicas[i].grpc_url


def inference_count(replica: EmbeddedTriton, model: str = ENSEMBLE) -> int:
    """Successful inferences of `model` on one replica, from Triton's statistics API."""
    stats = httpx.get(f"{replica.http_url}/v2/models/{model}/stats", timeout=10).json()
    return sum(int(s["inference_stats"]["success"]["count"]) for s in stats["model_stats"])


@pytest.fixture(scope="module")
def two(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TwoReplicas]:
    workdir = tmp_path_factory.mktemp("two-replicas")
    replicas = [
        EmbeddedTriton(
            ROOT / "model_repository",
            **dict(zip(("http_port", "grpc_port", "metrics_port"), free_ports(3), strict=True)),
            log_path=workdir / f"triton-{i}.log",
        )
        for i in range(2)
    ]
    try:
        # One after the other, from this thread: the server is tied to the thread that started it (it gets
        # SIGTERM when that thread ends, see EmbeddedTriton), so not from a short-lived pool thread.
        for replica in replicas:
            replica.start(300)
        env = {
            "HYBRID_EMBEDDED_TRITON": "false",
            "HYBRID_TRITON_GRPC_URL": "ipv4:" + ",".join(r.grpc_url for r in replicas),
            "HYBRID_TRITON_METRICS_URL": f"http://{replicas[0].host}:{replicas[0].metrics_port}/metrics",
            "HYBRID_MAX_IN_FLIGHT": str(2 * WORKERS),
        }
        with running_stack(workdir / "gateway.log", env, timeout_s=120) as gateway:
            yield TwoReplicas(replicas, gateway)
    except StackError as exc:
        pytest.fail(str(exc))
    finally:
        for replica in replicas:
            replica.stop()


def encode(client: httpx.Client, url: str, seed: int) -> int:
    reply = client.post(
        f"{url}/encode", params={"pipeline": "hybrid"}, files={"file": ("in.png", samples.png(seed=seed))}
    )
    return reply.status_code


def test_readiness_reports_each_replica(two: TwoReplicas) -> None:
    reply = httpx.get(f"{two.gateway.gateway_url}/readyz", timeout=30)
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert body["ready"] is True
    assert set(body["backends"]) == {two.address(0), two.address(1)}
    for status in body["backends"].values():
        assert status["ready"] and status["server"] and all(status["models"].values()), status


def test_both_replicas_receive_traffic(two: TwoReplicas) -> None:
    before = [inference_count(r) for r in two.replicas]
    requests = 8
    with httpx.Client(timeout=120) as client:
        assert [encode(client, two.gateway.gateway_url, i) for i in range(requests)] == [200] * requests
    served = [inference_count(r) - b for r, b in zip(two.replicas, before, strict=True)]
    assert sum(served) == requests, served
    # Round robin per request: not all on the replica the first connection reached.
    assert min(served) >= requests // 4, f"requests per replica {served}: the channel pinned one replica"


def test_killing_a_replica_keeps_the_service_answering(two: TwoReplicas) -> None:
    """Counted in requests, not seconds: every worker is answered twice before the kill and sends
    AFTER_KILL more after it; only requests sent before the kill may fail, at most one per worker."""
    url = two.gateway.gateway_url
    survivor, victim = two.replicas
    survivor_before = inference_count(survivor)
    killed = threading.Event()
    killed_at: list[float] = []
    results: list[tuple[int, float, int]] = []  # (worker, sent at, status)
    lock = threading.Lock()

    def worker(index: int) -> None:
        sent_after_kill = 0
        with httpx.Client(timeout=120) as client:
            for n in range(400):  # bounded whatever happens
                if sent_after_kill >= AFTER_KILL:
                    return
                after = killed.is_set()
                sent = time.monotonic()
                status = encode(client, url, seed=index * 1000 + n)
                with lock:
                    results.append((index, sent, status))
                sent_after_kill += after

    def answered(index: int) -> int:
        with lock:
            return sum(1 for w, _, _ in results if w == index)

    with ThreadPoolExecutor(WORKERS) as pool:
        futures = [pool.submit(worker, i) for i in range(WORKERS)]
        deadline = time.monotonic() + 120  # a bound for failing: the loop normally runs within a second
        while min(answered(i) for i in range(WORKERS)) < 2:  # the loop is running, on both replicas
            assert time.monotonic() < deadline and not any(f.done() for f in futures), results
            time.sleep(0.05)
        assert victim.process is not None
        os.killpg(victim.process.pid, signal.SIGKILL)
        killed_at.append(time.monotonic())
        killed.set()
        for future in futures:
            future.result()

    kill = killed_at[0]
    failed = [r for r in results if r[2] != 200]
    # Lost at most what was in flight at the kill (one request per worker), and only requests running then.
    assert len(failed) <= WORKERS, f"{len(failed)} failures: {sorted({r[2] for r in failed})}"
    assert all(sent <= kill for _, sent, _ in failed), "a request sent after the kill failed"
    after = [status for _, sent, status in results if sent > kill]
    assert len(after) >= WORKERS * AFTER_KILL and set(after) == {200}, after

    # Everything answered after the kill came from the survivor.
    assert inference_count(survivor) - survivor_before >= len(after)

    reply = httpx.get(f"{url}/readyz", timeout=30)
    assert reply.status_code == 200, reply.text
    backends = reply.json()["backends"]
    assert backends[two.address(0)]["ready"] is True
    assert backends[two.address(1)]["ready"] is False and backends[two.address(1)]["error"]


def test_a_gateway_with_no_replica_left_is_not_ready() -> None:
    """Both addresses dead: /readyz is 503 and names each replica's error; a request is 503 after its retries."""
    addresses = [f"127.0.0.1:{port}" for port in free_ports(2)]
    settings = Settings(triton_grpc_url="ipv4:" + ",".join(addresses), request_timeout_s=5)
    with TestClient(create_app(settings)) as client:
        ready = client.get("/readyz")
        assert ready.status_code == 503
        body = ready.json()
        assert body["ready"] is False and set(body["backends"]) == set(addresses)
        assert all(not b["ready"] and b["error"] for b in body["backends"].values())
        reply = client.post("/encode", files={"file": ("in.png", samples.png())})
        assert reply.status_code == 503 and reply.json()["error"]["code"] == "triton_unavailable"


@pytest.mark.parametrize(
    ("url", "scheme", "endpoints"),
    [
        ("triton:8001", "dns", (("triton", 8001),)),
        (
            "dns:///hybrid-triton.serving.svc.cluster.local:8001",
            "dns",
            (("hybrid-triton.serving.svc.cluster.local", 8001),),
        ),
        ("dns://10.0.0.10:53/triton:8001", "dns", (("triton", 8001),)),
        ("ipv4:10.0.0.1:8001,10.0.0.2:9001", "ipv4", (("10.0.0.1", 8001), ("10.0.0.2", 9001))),
        ("ipv6:[::1]:8001,[fd00::2]:8001", "ipv6", (("::1", 8001), ("fd00::2", 8001))),
    ],
)
def test_targets_parse(url: str, scheme: str, endpoints: tuple[tuple[str, int], ...]) -> None:
    target = parse_target(url)
    assert (target.url, target.scheme, target.endpoints) == (url, scheme, endpoints)


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("", "empty"),
        ("triton", "not host:port"),
        ("triton:99999", "not host:port"),
        ("ipv4:triton:8001", "not an ipv4 address"),
        ("ipv4:10.0.0.1:8001,", "not host:port"),
        ("ipv6:10.0.0.1:8001", "not an ipv6 address"),
        ("http://triton:8001", "use host:port"),
        ("unix:/tmp/triton.sock", "use host:port"),
    ],
)
def test_bad_targets_are_refused_at_start_up(url: str, problem: str) -> None:
    with pytest.raises(TargetError, match=problem):
        parse_target(url)
    if url:  # Settings names the field and the problem before anything starts
        with pytest.raises(ValueError, match=f"triton_grpc_url[\\s\\S]*{problem}"):
            Settings(triton_grpc_url=url)


def test_a_name_resolves_to_every_address() -> None:
    addresses = asyncio.run(parse_target("dns:///localhost:8001").addresses())
    assert addresses and all(a.endswith(":8001") for a in addresses)
    assert asyncio.run(parse_target("ipv4:127.0.0.1:1,127.0.0.2:2").addresses()) == ["127.0.0.1:1", "127.0.0.2:2"]
