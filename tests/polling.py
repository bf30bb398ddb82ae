"""Waiting on the gateway's E-P2.6 statistics poll (once a second) by what it has seen, never by sleeping for a
guessed time: a busy machine delays a poll, it does not skip it."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import httpx

WAIT_S = 120.0  # a bound for failing only: a poll normally comes within a second


def overhead_when(client: httpx.Client, url: str, done: Callable[[dict[str, Any]], bool], what: str) -> dict[str, Any]:
    """The gateway's /v1/overhead once `done(report)` holds."""
    deadline = time.monotonic() + WAIT_S
    while not done(report := client.get(f"{url}/v1/overhead").json()):
        assert time.monotonic() < deadline, f"no {what} within {WAIT_S} s: {report['statistics']}"
        time.sleep(0.1)
    return report


def after_polls(client: httpx.Client, url: str, polls: int = 2) -> dict[str, Any]:
    """/v1/overhead once the gateway has taken `polls` more statistics snapshots. Two, to have one that began after
    this call: the first may have been reading Triton's statistics already when the caller's last request ended."""
    seen = client.get(f"{url}/v1/overhead").json()["statistics"]["snapshots"]
    return overhead_when(client, url, lambda r: r["statistics"]["snapshots"] >= seen + polls, f"{polls} more polls")
