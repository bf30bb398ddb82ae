"""Fixtures. Integration tests start the real stack once per session: `python -m service` on free loopback
ports, which starts the embedded tritonserver over the checked-in model repository, exactly as `make up` does."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from service.local_stack import Stack, StackError, alive, running_stack, tritonserver_pids


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    log_path = tmp_path_factory.mktemp("stack") / "service.log"
    own: set[int] = set()
    try:
        with running_stack(log_path, {"HYBRID_MAX_IN_FLIGHT": "4"}) as started:
            # This gateway's own tritonserver (other stacks may run on the machine at the same time).
            own = tritonserver_pids(parent=started.process.pid)
            yield started
    except StackError as exc:
        pytest.fail(str(exc))
    assert own, "the gateway started no tritonserver of its own"
    # The gateway must take its tritonserver down with it.
    deadline = time.monotonic() + 30
    while alive(own) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not alive(own), "tritonserver outlived the gateway"


@pytest.fixture(scope="session")
def gateway_url(stack: Stack) -> str:
    return stack.gateway_url
