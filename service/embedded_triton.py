"""Runs the real `tritonserver` shipped in the nvidia-pytriton wheel, so the service needs no Docker and no
system install, and keeps it serving.

`EmbeddedTriton` lays out a backend directory with the Python-backend stub for the running interpreter, sets the
library path, puts this interpreter's bin/ first on PATH (the stub runs the first `python3` there and ignores
PYTHONPATH), waits for readiness, and stops the whole process group on exit. Everything one server leaves behind
is its own: a work directory named after the gateway's pid, shared-memory regions under a prefix of its own, and
a process group (the server and its Python-backend stubs), so cleaning up after it touches nothing of another
tritonserver on the machine.

`TritonSupervisor` watches the server from a thread blocked in wait(): a crash is noticed the moment it happens,
the dead server is reaped, its stubs (which outlive it, reparented to init) are killed, its shared memory and
work directory are removed, and it is started again with exponential backoff, until it is ready or has failed
`max_failed_starts` times in a row. The gateway reads the supervisor's state to answer 503 at once while Triton is
down, and /healthz says what is wrong.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import importlib.util
import itertools
import logging
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

log = logging.getLogger(__name__)

SHM_DIR = Path("/dev/shm")
# With an access key, these Triton APIs answer only requests carrying it in this header: any local process can
# reach the loopback ports, and without the key it could run inference past every limit of the gateway (or load
# models, register shared memory). Health, metadata, model configs and statistics stay open: they only inform.
ACCESS_HEADER = "hybrid-triton-key"
GRPC_ACCESS_HEADER = f"triton-grpc-protocol-{ACCESS_HEADER}"  # Triton's gRPC server looks for the key under this name
RESTRICTED_APIS = "inference,model-repository,shared-memory,trace,logging"
_instances = itertools.count()


class TritonStartError(RuntimeError):
    pass


def _load_prctl() -> Callable[[int, int], int] | None:
    """prctl from libc, loaded here rather than in the forked child (no dynamic loading between fork and exec)."""
    with contextlib.suppress(OSError, AttributeError):
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True).prctl
    return None


_PRCTL = _load_prctl()
_PR_SET_PDEATHSIG = 1


def _detach_and_die_with_parent() -> None:
    """Runs in the child before exec: a session of its own (its process group holds the Python-backend stubs
    too), and SIGTERM from the kernel if the thread that started it dies (Linux prctl): the supervisor's thread
    lives as long as the server it started."""
    os.setsid()
    if _PRCTL is not None:
        _PRCTL(_PR_SET_PDEATHSIG, signal.SIGTERM)


def pytriton_root() -> Path:
    """The installed `pytriton` package folder (found without importing it: its import pulls in more)."""
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        raise TritonStartError("nvidia-pytriton is not installed: pip install 'nvidia-pytriton==0.7.0'")
    return Path(next(iter(spec.submodule_search_locations)))


def process_group(pgid: int) -> list[int]:
    """The pids of every live process in group `pgid` (from /proc: they need not be our children)."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) ": state, ppid, pgrp, …
        if int(fields[2]) == pgid and fields[0] != "Z":
            members.append(int(entry.name))
    return members


def describe_exit(code: int | None) -> str:
    if code is None:
        return "still running"
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"killed by {signal.Signals(-code).name}"
        return f"killed by signal {-code}"
    return f"exit code {code}"


@dataclass
class EmbeddedTriton:
    """A tritonserver child process serving `model_repository` on loopback."""

    model_repository: Path
    http_port: int = 8000
    grpc_port: int = 8001
    metrics_port: int = 8002
    host: str = "127.0.0.1"
    log_path: Path | None = None
    extra_args: list[str] = field(default_factory=list)
    # Set in the server's environment over the gateway's, e.g. CUDA_VISIBLE_DEVICES to pin a replica to one GPU.
    env: dict[str, str] = field(default_factory=dict)
    process: subprocess.Popen | None = None
    access_key: str = ""  # when set, inference and the other mutating APIs need it (ACCESS_HEADER)
    # Prefix of the Python backend's shared-memory regions in /dev/shm: this server's alone, so they can be
    # removed after a crash without touching another server's.
    shm_prefix: str = ""
    _workdir: Path | None = None

    def __post_init__(self) -> None:
        if not self.shm_prefix:
            self.shm_prefix = f"hybrid_triton_{os.getpid()}_{next(_instances)}_"

    @property
    def grpc_url(self) -> str:
        return f"{self.host}:{self.grpc_port}"

    @property
    def http_url(self) -> str:
        return f"http://{self.host}:{self.http_port}"

    @property
    def workdir(self) -> Path | None:
        return self._workdir

    def _backend_dir(self, workdir: Path) -> Path:
        root = pytriton_root()
        server = root / "tritonserver"
        version = f"{sys.version_info.major}.{sys.version_info.minor}"
        stub = server / "python_backend_stubs" / version / "triton_python_backend_stub"
        if not stub.exists():
            raise TritonStartError(f"nvidia-pytriton ships no Python-backend stub for Python {version}")
        python_dir = workdir / "backends" / "python"
        python_dir.mkdir(parents=True)
        for source in (
            server / "backends/python/libtriton_python.so",
            server / "backends/python/triton_python_backend_utils.py",
            stub,
        ):
            shutil.copy2(source, python_dir / source.name)
        return python_dir.parent

    def _environment(self) -> dict[str, str]:
        env = dict(os.environ)
        libs = [str(pytriton_root().parent / "nvidia_pytriton.libs"), sysconfig.get_config_var("LIBDIR") or ""]
        env["LD_LIBRARY_PATH"] = ":".join([p for p in libs if p] + [env.get("LD_LIBRARY_PATH", "")]).rstrip(":")
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
        env.setdefault("PYTHONUNBUFFERED", "1")
        # Seven model processes share the cores: OpenMP threads that spin after their step would steal the CPU
        # from the next step of the chain (when this was set, it took the tiny hybrid /reconstruct from 76 to 44 ms
        # on 2 cores; today's latency with it: benchmarks/results/serving-tiny-cpu.md).
        env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        env.update(self.env)
        return env

    def spawn(self) -> subprocess.Popen:
        """Start the server process (in a fresh work directory) without waiting for it."""
        workdir = Path(tempfile.mkdtemp(prefix=f"embedded-triton-{os.getpid()}-"))
        self._workdir = workdir
        binary = pytriton_root() / "tritonserver" / "bin" / "tritonserver"
        command = [
            str(binary),
            f"--model-repository={self.model_repository.resolve()}",
            f"--backend-directory={self._backend_dir(workdir)}",
            f"--backend-config=python,shm-region-prefix-name={self.shm_prefix}",
            f"--http-address={self.host}",
            f"--grpc-address={self.host}",
            f"--metrics-address={self.host}",
            f"--http-port={self.http_port}",
            f"--grpc-port={self.grpc_port}",
            f"--metrics-port={self.metrics_port}",
            "--allow-metrics=true",
            "--exit-on-error=true",
            "--strict-readiness=true",
            *self._restrictions(),
            *self.extra_args,
        ]
        log_file = open(self.log_path or workdir / "tritonserver.log", "ab")  # noqa: SIM115 - owned by the child
        shown = " ".join(command).replace(self.access_key, "***") if self.access_key else " ".join(command)
        log.info("starting tritonserver: %s", shown)
        self.process = subprocess.Popen(
            command,
            env=self._environment(),
            stdout=log_file,
            stderr=subprocess.STDOUT,
            preexec_fn=_detach_and_die_with_parent,  # noqa: PLW1509 - the child only calls setsid and prctl
        )
        log_file.close()
        return self.process

    def _restrictions(self) -> list[str]:
        if not self.access_key:
            return []
        rule = f"{RESTRICTED_APIS}:{ACCESS_HEADER}={self.access_key}"
        return [f"--grpc-restricted-protocol={rule}", f"--http-restricted-api={rule}"]

    def start(self, timeout_s: float = 300.0) -> None:
        """Start the server and block until it reports ready (every model loaded); nothing is left behind if it
        cannot start."""
        try:
            self.wait_ready(self.spawn(), timeout_s)
        except TritonStartError:
            self.stop()
            raise

    def wait_ready(self, process: subprocess.Popen, timeout_s: float, cancelled: Callable[[], bool] = bool) -> None:
        """Block until `process` serves, it exits (TritonStartError), `timeout_s` passes (stopped, then
        TritonStartError) or `cancelled()` says to give up (TritonStartError)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise TritonStartError(
                    f"tritonserver exited ({describe_exit(process.returncode)}) while loading:\n{self.log_tail()}"
                )
            if cancelled():
                raise TritonStartError("tritonserver start cancelled")
            if self.is_ready():
                return
            time.sleep(0.5)
        self.stop()
        raise TritonStartError(f"tritonserver was not ready within {timeout_s:.0f} s:\n{self.log_tail()}")

    def is_ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.http_url}/v2/health/ready", timeout=2) as reply:
                return reply.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def log_tail(self, lines: int = 40) -> str:
        path = self.log_path or (self._workdir / "tritonserver.log" if self._workdir else None)
        if path is None or not path.exists():
            return ""
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self, timeout_s: float = 30.0) -> None:
        """SIGTERM the process group (Triton unloads models gracefully), SIGKILL what remains, then clean up."""
        process = self.process
        if process is not None and process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        self.clean_up()

    def clean_up(self, timeout_s: float = 10.0) -> None:
        """After the server has exited (crashed or stopped): kill what is left of its process group (stubs outlive
        a crashed server), wait until the group is gone, remove its shared memory and its work directory."""
        process = self.process
        if process is not None:
            process.wait()  # reaps it, if nobody has yet
            deadline = time.monotonic() + timeout_s
            while process_group(process.pid) and time.monotonic() < deadline:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(process.pid, signal.SIGKILL)
                time.sleep(0.05)
            if left := process_group(process.pid):
                log.error("tritonserver's process group %d still has %s", process.pid, left)
        for region in SHM_DIR.glob(f"{self.shm_prefix}*"):
            with contextlib.suppress(OSError):
                region.unlink()
        self.process = None
        if self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None

    def __enter__(self) -> EmbeddedTriton:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class TritonSupervisor:
    """Keeps an EmbeddedTriton serving (see the module docstring). States: starting, ready, restarting, failed,
    stopped. Read from the gateway's event loop; written only by the starting thread and the watcher."""

    MAX_BACKOFF_S = 30.0
    STABLE_AFTER_S = 60.0  # a server that ran this long resets the backoff

    def __init__(
        self, triton: EmbeddedTriton, start_timeout_s: float, backoff_s: float = 1.0, max_failed_starts: int = 5
    ) -> None:
        self.triton = triton
        self.start_timeout_s = start_timeout_s
        self.backoff_s = backoff_s
        self.max_failed_starts = max_failed_starts
        self.state = "starting"
        self.restarts = 0
        self._problem: str | None = "starting"
        self._next_attempt = 0.0
        self._stopping = threading.Event()
        self._spawn_lock = threading.Lock()  # no server is spawned once stop() has begun
        self._watcher: threading.Thread | None = None

    # What the gateway reads.
    @property
    def ready(self) -> bool:
        return self.state == "ready"

    @property
    def failed(self) -> bool:
        return self.state == "failed"

    def problem(self) -> str | None:
        return None if self.state == "ready" else self._problem

    def retry_after_s(self) -> int:
        """Seconds until the next start attempt plus a typical load: when a retry is worth making."""
        return max(1, int(self._next_attempt - time.monotonic()) + 15)

    def collector(self) -> Collector:
        return _SupervisorCollector(self)

    # Life cycle.
    def start(self) -> None:
        """Start the server (blocking until ready; TritonStartError if it cannot, leaving nothing behind), then
        watch it."""
        try:
            self._launch()
        except TritonStartError:
            self.triton.stop()
            raise
        self._set("ready")
        self._watcher = threading.Thread(target=self._watch, name="triton-supervisor", daemon=True)
        self._watcher.start()

    def stop(self) -> None:
        """Stop the server and clean up after it; a restart in progress is abandoned."""
        self._stopping.set()
        with self._spawn_lock:
            self.triton.stop()
        if self._watcher is not None and self._watcher is not threading.current_thread():
            self._watcher.join(timeout=30)
        self.state, self._problem = "stopped", "stopped"

    def _launch(self) -> None:
        with self._spawn_lock:
            if self._stopping.is_set():
                raise TritonStartError("stopping")
            process = self.triton.spawn()
        self.triton.wait_ready(process, self.start_timeout_s, cancelled=self._stopping.is_set)

    def _set(self, state: str, problem: str | None = None) -> None:
        self._problem = problem
        self.state = state

    def _watch(self) -> None:
        failures = 0  # failed starts and quick crashes in a row: they lengthen the backoff, and end in "failed"
        while not self._stopping.is_set():
            process = self.triton.process
            if process is None:
                return
            started = time.monotonic()
            code = process.wait()
            if self._stopping.is_set():
                return
            crash = f"tritonserver {describe_exit(code)} at {time.strftime('%H:%M:%S')}"
            self._set("restarting", f"{crash}; restarting it")
            log.error("%s; restarting it. Its log ends:\n%s", crash, self.triton.log_tail())
            self.triton.clean_up()
            failures = 0 if time.monotonic() - started > self.STABLE_AFTER_S else failures + 1
            while True:
                if failures >= self.max_failed_starts:
                    self._set("failed", f"{crash}; it failed {failures} times in a row: restart the service")
                    log.error("%s", self._problem)
                    return
                delay = min(self.backoff_s * 2 ** max(failures - 1, 0), self.MAX_BACKOFF_S)
                self._next_attempt = time.monotonic() + delay
                if self._stopping.wait(delay):
                    return
                try:
                    self._launch()
                    break
                except TritonStartError as exc:
                    self.triton.clean_up()
                    if self._stopping.is_set():
                        return
                    failures += 1
                    log.error("restarting tritonserver failed: %s", exc)
                    self._problem = f"{crash}; restart failed {failures} times, trying again"
            self.restarts += 1
            self._set("ready")
            log.info("tritonserver is serving again (restart %d)", self.restarts)


class _SupervisorCollector(Collector):
    def __init__(self, supervisor: TritonSupervisor) -> None:
        self.supervisor = supervisor

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("hybrid_triton_up", "1 while the embedded tritonserver serves, 0 while it is down.")
        up.add_metric([], 1.0 if self.supervisor.ready else 0.0)
        yield up
        restarts = CounterMetricFamily(
            "hybrid_triton_restarts", "Times the embedded tritonserver was restarted after a crash."
        )
        restarts.add_metric([], float(self.supervisor.restarts))
        yield restarts
