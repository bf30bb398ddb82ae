"""Resident memory of a process tree, read from /proc (Linux): the stack's footprint is the gateway, the
tritonserver and one Python-backend stub per model instance together."""

from __future__ import annotations

import threading
from pathlib import Path


def _children(pid: int) -> list[int]:
    kids: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            kids += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            continue
    return kids


def tree_rss_bytes(root: int, include_root: bool = True) -> int:
    """Sum of VmRSS over `root`'s descendants, and `root` itself unless include_root is False."""
    total, stack, seen = 0, [root], set()
    while stack:
        pid = stack.pop()
        if pid in seen:
            continue
        seen.add(pid)
        stack += _children(pid)
        if pid == root and not include_root:
            continue
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
        except OSError:
            continue
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
