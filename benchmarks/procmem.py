"""Resident memory of a process tree, through psutil: the stack's footprint is the gateway, the tritonserver and one
Python-backend stub per model instance together."""

from __future__ import annotations

import contextlib
import threading

import psutil

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
