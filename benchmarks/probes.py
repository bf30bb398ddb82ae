"""Probes of a running service that the benchmarks and the hardening tests share: resident memory of a process
tree through psutil (the stack's footprint is the gateway, the tritonserver and one Python-backend stub per model
instance together) and a process's peak; the processes, shared memory and files of one service (found through its
gateway's pid, never by name: other tritonservers on the machine are not ours); raw-socket clients that misbehave
on purpose."""

from __future__ import annotations

import contextlib
import select
import socket
import tempfile
import threading
import time
from pathlib import Path

import psutil

MiB = 1 << 20
_GONE = (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied)


def rss_bytes(pid: int) -> int:
    """One process's resident set size (Linux: VmRSS)."""
    return int(psutil.Process(pid).memory_info().rss)


def tree_rss_bytes(root: int, include_root: bool = True) -> int:
    """Sum of RSS over `root`'s descendants, and `root` itself unless include_root is False; 0 once `root` is gone.
    A process that exits while the tree is read counts as nothing."""
    try:
        parent = psutil.Process(root)
        processes = parent.children(recursive=True) + ([parent] if include_root else [])
    except _GONE:
        return 0
    total = 0
    for process in processes:
        with contextlib.suppress(*_GONE):
            total += process.memory_info().rss
    return total


class PeakMemory:
    """Samples a process tree's RSS in a background thread and keeps the peak. With include_root=False, only the
    descendants count: a benchmark samples the processes it starts, not itself."""

    def __init__(self, root: int, interval_s: float = 0.2, include_root: bool = True) -> None:
        self.root = root
        self.include_root = include_root
        self.interval_s = interval_s
        self.peak_bytes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak_bytes = max(self.peak_bytes, tree_rss_bytes(self.root, self.include_root))
            self._stop.wait(self.interval_s)

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


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
