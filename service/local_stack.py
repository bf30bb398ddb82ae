"""The real stack as tests and benchmarks start it: `python -m service` (embedded tritonserver + gateway, as
`make up` runs them) on free loopback ports, waited on until /readyz is 200, stopped with Ctrl-C."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent


class StackError(RuntimeError):
    pass


def free_ports(count: int) -> list[int]:
    """`count` distinct free loopback ports. All sockets stay bound until every port is chosen: closing each one
    first lets the kernel hand the same port out twice (seen: the gateway's port given to Triton's metrics too)."""
    with ExitStack() as held:
        sockets = [held.enter_context(socket.socket()) for _ in range(count)]
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [int(s.getsockname()[1]) for s in sockets]


def free_port() -> int:
    return free_ports(1)[0]


@dataclass(frozen=True)
class Stack:
    gateway_url: str
    triton_http_url: str
    triton_grpc_url: str
    triton_metrics_url: str
    process: subprocess.Popen
    log_path: Path
    ready_s: float  # from process start to /readyz 200


@contextmanager
def running_stack(log_path: Path, env: dict[str, str] | None = None, timeout_s: float = 600) -> Iterator[Stack]:
    """Start the service with `env` added to HYBRID_* port settings; yield once ready; stop it on exit."""
    ports = dict(zip(("gateway", "http", "grpc", "metrics"), free_ports(4), strict=True))
    full_env = {
        **os.environ,
        "HYBRID_PORT": str(ports["gateway"]),
        "HYBRID_EMBEDDED_HTTP_PORT": str(ports["http"]),
        "HYBRID_EMBEDDED_GRPC_PORT": str(ports["grpc"]),
        "HYBRID_EMBEDDED_METRICS_PORT": str(ports["metrics"]),
        "HYBRID_LOG_LEVEL": "warning",
        **(env or {}),
    }
    url = f"http://127.0.0.1:{ports['gateway']}"
    started = time.perf_counter()
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "service"], cwd=ROOT, env=full_env, stdout=log, stderr=subprocess.STDOUT
        )
    try:
        _wait_ready(process, url, log_path, started + timeout_s)
        yield Stack(
            gateway_url=url,
            triton_http_url=f"http://127.0.0.1:{ports['http']}",
            triton_grpc_url=f"127.0.0.1:{ports['grpc']}",
            triton_metrics_url=f"http://127.0.0.1:{ports['metrics']}/metrics",
            process=process,
            log_path=log_path,
            ready_s=time.perf_counter() - started,
        )
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(60)
        finally:
            if process.poll() is None:
                process.kill()


def _wait_ready(process: subprocess.Popen, url: str, log_path: Path, deadline: float) -> None:
    while True:
        if process.poll() is not None:
            raise StackError(f"the service exited with {process.returncode}:\n{log_path.read_text()[-4000:]}")
        try:
            reply = httpx.get(f"{url}/readyz", timeout=2)
            # The gateway's own answer, not another server's 200 on a port it failed to bind.
            if reply.status_code == 200 and reply.json().get("ready") is True:
                return
        except (httpx.HTTPError, ValueError):
            pass
        if time.perf_counter() > deadline:
            raise StackError(f"the service was not ready in time:\n{log_path.read_text()[-4000:]}")
        time.sleep(0.2)


def tritonserver_pids(parent: int | None = None) -> set[int]:
    """tritonserver processes: the children of `parent` (one gateway's own server), or every one on the machine."""
    scope = ["-P", str(parent)] if parent is not None else []
    out = subprocess.run(["pgrep", *scope, "-f", "bin/tritonserver"], capture_output=True, text=True).stdout
    return {int(p) for p in out.split()}


def alive(pids: set[int]) -> set[int]:
    """Those of `pids` that still run (a reaped or vanished process is gone; a zombie counts as gone too)."""
    running = set()
    for pid in pids:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, IndexError):
            continue
        if state != "Z":
            running.add(pid)
    return running
