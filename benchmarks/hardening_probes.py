"""Probes of a running service the hardening tests and `benchmarks/hardening.py` share: the processes, shared
memory and files of one service (found through its gateway's pid, never by name: other tritonservers on the
machine are not ours), per-process peak memory, and raw-socket clients that misbehave on purpose."""

from __future__ import annotations

import contextlib
import select
import socket
import tempfile
import time
from pathlib import Path

from benchmarks.procmem import rss_bytes

MiB = 1 << 20


def _stat(pid: str | int) -> tuple[str, list[str]] | None:
    """(name, fields after the name: state, ppid, pgrp, …) from /proc/PID/stat."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat[stat.index("(") + 1 : stat.rindex(")")], stat[stat.rindex(")") + 2 :].split()


def tritonserver_of(gateway_pid: int) -> int:
    """The tritonserver the gateway started: its child, named so."""
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit() and (stat := _stat(proc.name)):
            name, fields = stat
            if name == "tritonserver" and int(fields[1]) == gateway_pid and fields[0] != "Z":
                return int(proc.name)
    raise LookupError(f"gateway {gateway_pid} has no tritonserver")


def preprocess_stub(gateway_pid: int) -> int:
    """The preprocess model's backend stub of this gateway's tritonserver (its binary lies in the work directory
    named after the gateway's pid)."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            argv = (proc / "cmdline").read_bytes().split(b"\0")
            if f"embedded-triton-{gateway_pid}-".encode() in argv[0] and b"/preprocess/" in b" ".join(argv[1:2]):
                return int(proc.name)
    raise LookupError("no preprocess stub under this gateway")


def shared_memory(gateway_pid: int) -> list[Path]:
    """The Python backend's shared-memory regions of this gateway's tritonserver (service.embedded_triton)."""
    return sorted(Path("/dev/shm").glob(f"hybrid_triton_{gateway_pid}_*"))


def work_directories(gateway_pid: int) -> list[Path]:
    return sorted(Path(tempfile.gettempdir()).glob(f"embedded-triton-{gateway_pid}-*"))


def peak_rss_bytes(pid: int) -> int:
    """A process's resident high-water mark (VmHWM of /proc/PID/status) in bytes: psutil reports only the current
    RSS, and the peak of a burst can come and go between two samples."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise KeyError(f"no VmHWM for process {pid}")


class PeakGain:
    """Peak resident memory a process gains during a block: VmHWM reset through /proc/PID/clear_refs where the
    kernel lets us (then each block is measured alone), else the lifetime peak (a stricter bound)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.gained = 0

    def __enter__(self) -> PeakGain:
        with contextlib.suppress(OSError):
            Path(f"/proc/{self.pid}/clear_refs").write_text("5")
        self.before = rss_bytes(self.pid)
        return self

    def __exit__(self, *exc: object) -> None:
        self.gained = peak_rss_bytes(self.pid) - self.before


def multipart_head(length: int | None, path: str = "/reconstruct", boundary: str = "b") -> bytes:
    framing = f"Content-Length: {length}" if length is not None else "Transfer-Encoding: chunked"
    return (
        f"POST {path} HTTP/1.1\r\nHost: test\r\n{framing}\r\n"
        f"Content-Type: multipart/form-data; boundary={boundary}\r\n\r\n"
    ).encode()


def read_until_closed(sock: socket.socket, timeout_s: float) -> bytes:
    """Everything the server sends until it closes the connection (socket.timeout past `timeout_s`)."""
    sock.settimeout(timeout_s)
    received = b""
    while chunk := sock.recv(65536):
        received += chunk
    return received


def chunked_upload_until_refused(address: tuple[str, int], limit: int, timeout_s: float) -> tuple[bytes, int]:
    """Stream a chunked multipart upload of zeros (up to `limit` bytes) until the server answers; returns its
    reply and how many bytes were sent before it came."""
    part = b"--b\r\nContent-Disposition: form-data; name=file; filename=a\r\n\r\n"
    chunk = b"\0" * MiB
    frame = f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n"
    pending = memoryview(multipart_head(None) + f"{len(part):x}\r\n".encode() + part + b"\r\n")
    sent, reply = 0, b""
    with socket.create_connection(address) as sock:
        sock.setblocking(False)
        deadline = time.monotonic() + timeout_s
        while not reply and sent < limit and time.monotonic() < deadline:
            readable, writable, _ = select.select([sock], [sock], [], 1.0)
            if readable:
                reply = sock.recv(65536)
            elif writable:
                if not pending:
                    pending = memoryview(frame)
                try:
                    n = sock.send(pending)
                except (BlockingIOError, InterruptedError):
                    continue
                except (BrokenPipeError, ConnectionResetError):
                    break
                sent, pending = sent + n, pending[n:]
        if not reply:
            sock.setblocking(True)
            reply = read_until_closed(sock, timeout_s)
    return reply, sent


def silent_client_lifetime(address: tuple[str, int], first_bytes: bytes, timeout_s: float) -> tuple[bytes, float]:
    """Connect, send `first_bytes` (maybe nothing), go silent; the server's reply and the seconds until it closed
    the connection."""
    with socket.create_connection(address) as sock:
        start = time.monotonic()
        if first_bytes:
            sock.sendall(first_bytes)
        reply = read_until_closed(sock, timeout_s)
        return reply, time.monotonic() - start
