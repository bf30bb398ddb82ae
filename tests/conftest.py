"""Fixtures. Integration tests start the real stack once per session: `python -m service` on free loopback
ports, which starts the embedded tritonserver over the checked-in model repository, exactly as `make up` does."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class Stack:
    gateway_url: str
    triton_http_url: str
    triton_grpc_url: str
    triton_metrics_url: str
    process: subprocess.Popen
    log_path: Path


def _tritonserver_pids() -> set[int]:
    out = subprocess.run(["pgrep", "-f", "bin/tritonserver"], capture_output=True, text=True).stdout
    return {int(p) for p in out.split()}


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    ports = {name: free_port() for name in ("gateway", "http", "grpc", "metrics")}
    env = {
        **os.environ,
        "HYBRID_PORT": str(ports["gateway"]),
        "HYBRID_EMBEDDED_HTTP_PORT": str(ports["http"]),
        "HYBRID_EMBEDDED_GRPC_PORT": str(ports["grpc"]),
        "HYBRID_EMBEDDED_METRICS_PORT": str(ports["metrics"]),
        "HYBRID_MAX_IN_FLIGHT": "4",
        "HYBRID_LOG_LEVEL": "warning",
    }
    log_path = tmp_path_factory.mktemp("stack") / "service.log"
    before = _tritonserver_pids()
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "service"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT
        )
    url = f"http://127.0.0.1:{ports['gateway']}"
    deadline = time.monotonic() + 600
    while True:
        if process.poll() is not None:
            pytest.fail(f"the service exited with {process.returncode}:\n{log_path.read_text()[-4000:]}")
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"the service was not ready in time:\n{log_path.read_text()[-4000:]}")
        time.sleep(0.5)
    yield Stack(
        gateway_url=url,
        triton_http_url=f"http://127.0.0.1:{ports['http']}",
        triton_grpc_url=f"127.0.0.1:{ports['grpc']}",
        triton_metrics_url=f"http://127.0.0.1:{ports['metrics']}/metrics",
        process=process,
        log_path=log_path,
    )
    process.send_signal(signal.SIGINT)
    try:
        process.wait(60)
    finally:
        if process.poll() is None:
            process.kill()
    # The gateway must take its tritonserver down with it.
    deadline = time.monotonic() + 30
    while _tritonserver_pids() - before and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not _tritonserver_pids() - before, "tritonserver outlived the gateway"


@pytest.fixture(scope="session")
def gateway_url(stack: Stack) -> str:
    return stack.gateway_url
