"""The gateway's transport-level limits on a real uvicorn server (the protocol `python -m service` runs), with raw
sockets where a well-behaved HTTP client cannot misbehave: silent clients, chunked bodies past the cap, and
admission taken before an upload is read. Triton is down in these gateways: a 503 proves a request got past
every limit before it."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import httpx
import pytest
import uvicorn

from benchmarks.probes import MiB, chunked_upload_until_refused, multipart_head, silent_client_lifetime
from hybrid import samples
from service.app import create_app
from service.http_protocol import header_timeout_protocol
from service.local_stack import free_ports
from service.settings import Settings

CLIENT_TIMEOUT_S = 1.0  # the silence a client is allowed here (30 s by default)
WAIT_S = 30.0  # how long a test waits for the server's reaction before failing (a bound, never a measurement)


def serve(**overrides: object) -> Iterator[tuple[str, int]]:
    values: dict = {"request_timeout_s": 5, "client_timeout_s": CLIENT_TIMEOUT_S, **overrides}
    triton_port, port = free_ports(2)
    settings = Settings(triton_grpc_url=f"127.0.0.1:{triton_port}", **values)
    config = uvicorn.Config(
        create_app(settings),
        host="127.0.0.1",
        port=port,
        http=header_timeout_protocol(settings.client_timeout_s),
        log_config=None,
        access_log=False,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + WAIT_S
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    try:
        yield "127.0.0.1", port
    finally:
        server.should_exit = True
        thread.join(WAIT_S)


@pytest.fixture
def address() -> Iterator[tuple[str, int]]:
    yield from serve()


def test_a_client_that_sends_nothing_is_dropped(address: tuple[str, int]) -> None:
    reply, _ = silent_client_lifetime(address, b"", WAIT_S)
    assert reply == b""


def test_a_client_silent_inside_its_headers_gets_408(address: tuple[str, int]) -> None:
    reply, _ = silent_client_lifetime(address, b"POST /reconstruct HTTP/1.1\r\nHost: test\r\nContent-Ty", WAIT_S)
    assert reply.startswith(b"HTTP/1.1 408") and b"request_timeout" in reply


def test_a_client_silent_inside_its_upload_gets_408(address: tuple[str, int]) -> None:
    body = b"--b\r\nContent-Disposition: form-data; name=file\r\n\r\n12345"
    reply, _ = silent_client_lifetime(address, multipart_head(10_000) + body, WAIT_S)
    assert reply.startswith(b"HTTP/1.1 408") and b"no data for" in reply


def test_a_chunked_upload_is_refused_before_48_mib_are_read() -> None:
    """At the default 32 MiB limit: the 413 arrives while the client is still sending, after at most the limit
    plus what loopback socket buffers hold; the rest of the body is never read. The client may be silent longer
    than a second here (a busy machine can stall it): this is about size, not silence."""
    for address in serve(client_timeout_s=WAIT_S):
        reply, sent = chunked_upload_until_refused(address, 64 * MiB, WAIT_S)
        assert reply.startswith(b"HTTP/1.1 413") and b"file_too_large" in reply, reply[:200]
        assert sent < 48 * MiB, f"{sent / MiB:.1f} MiB sent before the 413"


def test_admission_is_taken_before_the_upload_is_read() -> None:
    """With one slot, a client still sending its upload holds it: another request is refused at once with 429,
    before its own upload is read; once the first client is gone the slot is free again."""
    for address in serve(max_in_flight=1, client_timeout_s=WAIT_S):
        url = f"http://{address[0]}:{address[1]}/reconstruct"
        with socket.create_connection(address) as slow:
            slow.sendall(multipart_head(50_000) + b"--b\r\nContent-Disposition: form-data; name=file\r\n\r\n")
            deadline = time.monotonic() + WAIT_S
            while (refused := httpx.post(url, files={"file": ("a.png", samples.png())})).status_code != 429:
                assert time.monotonic() < deadline, refused.text  # the slow client's request reaches admission
                time.sleep(0.05)
            assert refused.headers["retry-after"] and refused.json()["error"]["code"] == "overloaded"
        deadline = time.monotonic() + WAIT_S
        while (after := httpx.post(url, files={"file": ("a.png", samples.png())})).status_code == 429:
            assert time.monotonic() < deadline, "the slot was not released when the client left"
            time.sleep(0.05)
        assert after.status_code == 503  # admitted, read, decoded: Triton is down
