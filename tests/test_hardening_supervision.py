"""The embedded tritonserver is supervised, and the service leaves nothing behind. On a stack of this module's
own (the tests end it): Triton killed with SIGKILL is answered with 503 (the supervisor's thread, blocked in the
server's wait(), notices the exit itself: shown on a fake server, where no clock is involved) and serves again by
itself with no stub process or shared memory of the dead server left; SIGTERM drains the requests in flight and
removes every process, shared-memory region and file the service made.

Processes are found through this stack's own gateway (its child tritonserver, that server's process group),
never by name: other tritonservers on the machine are not this test's to touch.
"""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator

import httpx
import pytest

from benchmarks.probes import shared_memory, tritonserver_of, work_directories
from hybrid import samples
from service.embedded_triton import TritonSupervisor, process_group
from service.local_stack import Stack, StackError, running_stack

pytestmark = pytest.mark.integration

RESTART_DEADLINE_S = 150.0  # a restart loads every model again: ~25 s here, far longer on a loaded machine
NOTICE_DEADLINE_S = 30.0  # bound for failing only: the supervisor notices the exit at once (see the fake below)


@pytest.fixture(scope="module")
def own_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    log_path = tmp_path_factory.mktemp("supervised") / "service.log"
    try:
        with running_stack(log_path, {"HYBRID_MAX_IN_FLIGHT": "4", "HYBRID_TRITON_RESTART_BACKOFF_S": "0.5"}) as s:
            yield s
    except StackError as exc:
        pytest.fail(str(exc))


def wait_for(predicate, timeout_s: float, what: str) -> float:
    """Poll until `predicate()`; the seconds it took, or fail naming `what`."""
    start = time.monotonic()
    while not predicate():
        assert time.monotonic() - start < timeout_s, f"{what} not within {timeout_s} s"
        time.sleep(0.05)
    return time.monotonic() - start


def test_a_killed_tritonserver_is_answered_at_once_and_restarted(own_stack: Stack) -> None:
    url, gateway = own_stack.gateway_url, own_stack.process.pid
    server = tritonserver_of(gateway)
    stubs = set(process_group(server)) - {server}
    assert stubs and len(shared_memory(gateway)) == len(stubs)

    os.kill(server, signal.SIGKILL)
    said: list[str] = []

    def restarting() -> bool:  # the supervisor's answer (before it, /readyz may find the dead server itself)
        reply = httpx.get(f"{url}/readyz")
        said.append(str(reply.json().get("triton", "")) if reply.status_code == 503 else "")
        return "restarting" in said[-1]

    wait_for(restarting, NOTICE_DEADLINE_S, "/readyz 503 for the restart")
    assert "killed by SIGKILL" in said[-1]
    refused = httpx.post(f"{url}/reconstruct", files={"file": ("a.png", samples.png())})
    assert refused.status_code == 503 and refused.headers["retry-after"]
    assert refused.json()["error"]["code"] == "triton_restarting"
    health = httpx.get(f"{url}/healthz")
    assert health.status_code == 200 and "SIGKILL" in health.json()["triton"]

    wait_for(lambda: httpx.get(f"{url}/readyz").status_code == 200, RESTART_DEADLINE_S, "ready again")
    assert httpx.post(f"{url}/reconstruct", files={"file": ("a.png", samples.png())}).status_code == 200
    assert not process_group(server), "stubs of the killed server are still alive"
    restarted = tritonserver_of(gateway)
    assert restarted != server and len(set(process_group(restarted)) - {restarted}) == len(stubs)
    assert len(shared_memory(gateway)) == len(stubs) and len(work_directories(gateway)) == 1
    assert httpx.get(f"{url}/healthz").json() == {"status": "alive"}
    assert "hybrid_triton_restarts_total 1.0" in httpx.get(f"{url}/metrics").text


class _FakeServer:
    """What TritonSupervisor drives, without a server: its process exits when the test says, and a start is
    ready when the test opens `ready`."""

    class Process:
        def __init__(self) -> None:
            self.exited = threading.Event()
            self.code = 0

        def wait(self, timeout: float | None = None) -> int:
            self.exited.wait()
            return self.code

        def exit(self, code: int) -> None:
            self.code = code
            self.exited.set()

    def __init__(self) -> None:
        self.process: _FakeServer.Process | None = None
        self.ready = threading.Event()
        self.cleaned = threading.Event()
        self.spawned = 0

    def spawn(self) -> _FakeServer.Process:
        self.process = self.Process()
        self.spawned += 1
        return self.process

    def wait_ready(self, process: Process, timeout_s: float, cancelled: Callable[[], bool] = bool) -> None:
        self.ready.wait()

    def clean_up(self) -> None:
        self.cleaned.set()

    def stop(self) -> None:
        if self.process is not None:
            self.process.exit(0)

    def log_tail(self) -> str:
        return ""


def test_the_supervisor_is_not_ready_from_the_moment_the_server_exits() -> None:
    """The watcher is blocked in the server's wait(): its exit, not a later health check, turns the state to
    restarting (clean_up runs right after), and the state stays so until a new server is ready."""
    fake = _FakeServer()
    fake.ready.set()
    supervisor = TritonSupervisor(fake, start_timeout_s=60, backoff_s=0.01)  # type: ignore[arg-type]
    supervisor.start()
    try:
        assert supervisor.ready and fake.spawned == 1
        fake.ready.clear()  # the next start waits for the test
        assert fake.process is not None
        fake.process.exit(-signal.SIGKILL)
        assert fake.cleaned.wait(NOTICE_DEADLINE_S), "the exit was not noticed"
        assert supervisor.state == "restarting" and not supervisor.ready
        assert "killed by SIGKILL" in (supervisor.problem() or "")
        wait_for(lambda: fake.spawned == 2, NOTICE_DEADLINE_S, "a new server")
        assert supervisor.state == "restarting"  # spawned, not ready yet
        fake.ready.set()
        wait_for(lambda: supervisor.ready, NOTICE_DEADLINE_S, "ready again")
        assert supervisor.restarts == 1 and supervisor.problem() is None
    finally:
        fake.ready.set()
        supervisor.stop()


def test_sigterm_drains_in_flight_requests_and_leaves_nothing(own_stack: Stack) -> None:
    url, gateway = own_stack.gateway_url, own_stack.process.pid
    server = tritonserver_of(gateway)

    def in_flight() -> float:
        for line in httpx.get(f"{url}/metrics").text.splitlines():
            if line.startswith("hybrid_gateway_in_flight_requests "):
                return float(line.split()[1])
        return 0.0

    async def drain() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=120) as client:
            requests = [
                asyncio.create_task(
                    client.post(
                        f"{url}/reconstruct",
                        params={"frames": 33, "steps": 20, "seed": i, "format": "npz"},
                        files={"file": ("in.png", samples.png(seed=i))},
                    )
                )
                for i in range(4)
            ]
            while in_flight() < 4:  # every request admitted before the signal
                assert not any(r.done() for r in requests), "a request finished before SIGTERM was sent"
                await asyncio.sleep(0.02)
            own_stack.process.send_signal(signal.SIGTERM)
            return await asyncio.gather(*requests)

    replies = asyncio.run(drain())
    assert [r.status_code for r in replies] == [200] * 4
    assert own_stack.process.wait(60) == 0
    assert not process_group(server), "processes of the tritonserver outlived the service"
    assert not shared_memory(gateway) and not work_directories(gateway)
