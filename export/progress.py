"""Progress for the long steps of an export (a full-size ONNX export takes tens of seconds and gigabytes on a CPU:
export/results/full-cpu.md; a TensorRT build takes longer): a line when a step starts, a heartbeat while it runs, its
time and the process's peak memory when it ends — so that a silent minute is visibly work, not a hang."""

from __future__ import annotations

import resource
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass


def peak_rss_gb() -> float:
    """This process's peak resident memory so far (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


@dataclass
class Step:
    """What a finished step took; `seconds` is filled in when the `step` block exits."""

    title: str
    seconds: float = 0.0


def say(message: str) -> None:
    print(f"[export] {message}", file=sys.stderr, flush=True)


@contextmanager
def step(title: str, heartbeat_s: float = 10.0) -> Iterator[Step]:
    """Announce `title`, print the elapsed time every `heartbeat_s` while the block runs, then its duration."""
    record = Step(title)
    say(f"{title} …")
    start = time.perf_counter()
    done = threading.Event()

    def beat() -> None:
        while not done.wait(heartbeat_s):
            say(f"  {title}: {time.perf_counter() - start:.0f} s, peak memory {peak_rss_gb():.1f} GB")

    thread = threading.Thread(target=beat, daemon=True)
    thread.start()
    try:
        yield record
    finally:
        done.set()
        thread.join()
        record.seconds = time.perf_counter() - start
    say(f"{title}: done in {record.seconds:.1f} s (peak memory {peak_rss_gb():.1f} GB)")
