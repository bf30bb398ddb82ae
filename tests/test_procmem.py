"""benchmarks.probes' memory readings: the memory of a real child process tree, read through psutil."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from benchmarks.probes import PeakGain, PeakMemory, peak_rss_bytes, rss_bytes, tree_rss_bytes

MiB = 1 << 20
HELD = 96 * MiB

# A child that holds HELD bytes, touched page by page so that they are resident, and a grandchild of its own.
CHILD = f"""
import subprocess, sys
held = bytearray({HELD})
for i in range(0, len(held), 4096):
    held[i] = 1
grandchild = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
print(grandchild.pid, flush=True)
sys.stdin.read()
grandchild.stdin.close()
grandchild.wait()
"""


@pytest.fixture
def child() -> Iterator[tuple[int, int]]:
    """(child pid, grandchild pid), both alive until the test ends."""
    process = subprocess.Popen([sys.executable, "-c", CHILD], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None and process.stdin is not None
    grandchild = int(process.stdout.readline())
    yield process.pid, grandchild
    process.stdin.close()
    process.wait(timeout=30)


def test_tree_rss_counts_the_descendants_and_the_root_only_when_asked(child: tuple[int, int]) -> None:
    pid, grandchild = child
    assert rss_bytes(pid) >= HELD
    descendants = tree_rss_bytes(os.getpid(), include_root=False)
    assert descendants >= rss_bytes(pid) + rss_bytes(grandchild) - 4 * MiB  # they may move a little in between
    assert tree_rss_bytes(pid) >= rss_bytes(pid) + rss_bytes(grandchild) - 4 * MiB
    assert tree_rss_bytes(pid, include_root=False) < HELD  # the grandchild alone does not hold the buffer


def test_a_process_that_is_gone_counts_as_nothing() -> None:
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    assert tree_rss_bytes(int(finished.stdout)) == 0


def test_peak_sampler_sees_the_child(child: tuple[int, int]) -> None:
    with PeakMemory(os.getpid(), interval_s=0.01, include_root=False) as peak:
        deadline = time.monotonic() + 30
        while peak.peak_bytes == 0 and time.monotonic() < deadline:  # until the sampler thread has run once
            time.sleep(0.01)
    assert peak.peak_bytes >= HELD


def test_peak_gain_of_a_block_that_allocates() -> None:
    with PeakGain(os.getpid()) as gain:
        held = bytearray(HELD)
        for i in range(0, HELD, 4096):
            held[i] = 1
        del held
    assert gain.gained >= HELD - 8 * MiB
    assert peak_rss_bytes(os.getpid()) >= rss_bytes(os.getpid())
