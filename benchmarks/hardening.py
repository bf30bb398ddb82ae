"""The hardening targets of service/README.md's "Limits and failure behaviour", measured on the real stack.

    python -m benchmarks.hardening [--out benchmarks/results] [--name hardening-cpu]

Starts `python -m service` with its defaults (as `make up` does) on free loopback ports, then measures:
1. four concurrent 16×4096² GIFs to /reconstruct: every answer's time, the gateway's peak memory gain
   (VmHWM), the whole stack's peak resident memory over its level before (sampled every 50 ms), and what the
   gateway still holds 5 s later;
2. the hostile-media corpus (tests/hostile_samples.py): every status, no 5xx;
3. a flood of 64 concurrent requests: only 200/429, and the gateway's own time for a 429;
4. a chunked upload of zeros with no Content-Length: bytes sent before the 413;
5. a client that connects and stays silent: seconds until the gateway drops it (default 30 s limit);
6. tritonserver killed (SIGKILL): time to /readyz 503, time to ready again, stub processes and shared memory after;
7. SIGTERM with requests in flight: their statuses, the exit code, and what is left.
Writes `<out>/<name>.json` and `.md` with each figure beside its target.
"""

from __future__ import annotations

import asyncio
import os
import platform
import signal
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

from benchmarks.harness import command_parser, write_results
from benchmarks.probes import (
    MiB,
    PeakGain,
    PeakMemory,
    chunked_upload_until_refused,
    rss_bytes,
    shared_memory,
    silent_client_lifetime,
    tree_rss_bytes,
    tritonserver_of,
    work_directories,
)
from hybrid import hostile_samples, samples
from hybrid.tables import markdown_table
from service.embedded_triton import process_group
from service.local_stack import Stack, running_stack

TARGETS = {
    "burst_gateway_gain_mib": 800,
    "burst_stack_gain_mib": 1536,
    "burst_slowest_answer_s": 15,
    "corpus_5xx": 0,
    "chunked_mib_sent_before_413": 48,
    "silent_client_dropped_s": 35,
    "killed_to_readyz_503_s": 2,
    "killed_to_ready_again_s": 150,
    "extra_stubs_after_restart": 0,
}


def post(client: httpx.Client | httpx.AsyncClient, url: str, data: bytes, **params: object):
    return client.post(f"{url}/reconstruct", params=params, files={"file": ("upload", data)})


def gateway_ms(reply: httpx.Response) -> float:
    timing = dict(part.strip().split(";dur=") for part in reply.headers["server-timing"].split(","))
    return float(timing["gateway"])


def burst(stack: Stack) -> dict:
    gif = hostile_samples.gif_bomb()
    gateway = stack.process.pid
    baseline_tree, baseline_gateway = tree_rss_bytes(gateway), rss_bytes(gateway)

    async def four() -> list[tuple[int, float]]:
        async with httpx.AsyncClient(timeout=300) as client:

            async def one() -> tuple[int, float]:
                start = time.perf_counter()
                reply = await post(client, stack.gateway_url, gif)
                return reply.status_code, time.perf_counter() - start

            return await asyncio.gather(*(one() for _ in range(4)))

    with PeakGain(gateway) as gain, PeakMemory(gateway, interval_s=0.05) as tree:
        answers = asyncio.run(four())
    time.sleep(5)
    return {
        "gif_bytes": len(gif),
        "statuses": [status for status, _ in answers],
        "answers_s": [round(seconds, 2) for _, seconds in answers],
        "burst_slowest_answer_s": round(max(seconds for _, seconds in answers), 2),
        "burst_gateway_gain_mib": round(gain.gained / MiB),
        "burst_stack_gain_mib": round((tree.peak_bytes - baseline_tree) / MiB),
        "gateway_retained_after_5s_mib": round((rss_bytes(gateway) - baseline_gateway) / MiB),
    }


def corpus(stack: Stack) -> dict:
    results = {}
    with httpx.Client(timeout=300) as client:
        for entry in hostile_samples.CORPUS:
            data = entry.make()
            start = time.perf_counter()
            reply = post(client, stack.gateway_url, data)
            code = reply.json()["error"]["code"] if reply.status_code != 200 else None
            results[entry.name] = {
                "bytes": len(data),
                "status": reply.status_code,
                "code": code,
                "expected": [entry.status, entry.code],
                "seconds": round(time.perf_counter() - start, 3),
            }
    return {
        "files": results,
        "corpus_5xx": sum(r["status"] >= 500 for r in results.values()),
        "corpus_unexpected": sorted(n for n, r in results.items() if [r["status"], r["code"]] != r["expected"]),
    }


def flood(stack: Stack) -> dict:
    async def sixty_four() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=300, limits=httpx.Limits(max_connections=64)) as client:
            return await asyncio.gather(
                *(post(client, stack.gateway_url, samples.png(seed=i), frames=17, steps=6) for i in range(64))
            )

    replies = asyncio.run(sixty_four())
    refused = [gateway_ms(r) for r in replies if r.status_code == 429]
    served = [gateway_ms(r) for r in replies if r.status_code == 200]
    return {
        "statuses": {
            str(s): sum(r.status_code == s for r in replies) for s in sorted({r.status_code for r in replies})
        },
        "429_gateway_ms_median": round(statistics.median(refused), 2) if refused else None,
        "429_gateway_ms_max": round(max(refused), 2) if refused else None,
        "200_gateway_ms_median": round(statistics.median(served), 1) if served else None,
    }


def address(stack: Stack) -> tuple[str, int]:
    host, port = stack.gateway_url.removeprefix("http://").split(":")
    return host, int(port)


def transport(stack: Stack) -> dict:
    results: dict = {}

    def silent(name: str, first: bytes) -> None:
        reply, seconds = silent_client_lifetime(address(stack), first, 120)
        results[name] = {"seconds": round(seconds, 1), "reply": reply.split(b"\r\n", 1)[0].decode() or "(closed)"}

    waiting = [
        threading.Thread(target=silent, args=("silent_connection", b"")),
        threading.Thread(target=silent, args=("silent_inside_headers", b"POST /reconstruct HTTP/1.1\r\nHost: x\r\n")),
    ]
    for thread in waiting:
        thread.start()
    reply, sent = chunked_upload_until_refused(address(stack), 256 * MiB, 120)
    for thread in waiting:
        thread.join()
    return {
        "chunked_reply": reply.split(b"\r\n", 1)[0].decode(),
        "chunked_mib_sent_before_413": round(sent / MiB, 1),
        **results,
        "silent_client_dropped_s": max(r["seconds"] for r in results.values()),
    }


def kill_triton(stack: Stack) -> dict:
    url, gateway = stack.gateway_url, stack.process.pid
    server = tritonserver_of(gateway)
    stubs = len(process_group(server)) - 1
    os.kill(server, signal.SIGKILL)
    killed = time.monotonic()
    while httpx.get(f"{url}/readyz", timeout=5).status_code != 503:
        time.sleep(0.01)
    to_503 = time.monotonic() - killed
    with httpx.Client(timeout=30) as client:
        refused = post(client, url, samples.png())
    while httpx.get(f"{url}/readyz", timeout=5).status_code != 200:
        if time.monotonic() - killed > 600:
            break
        time.sleep(0.2)
    ready_again = time.monotonic() - killed
    restarted = tritonserver_of(gateway)
    with httpx.Client(timeout=60) as client:
        after = post(client, url, samples.png())
    return {
        "killed_to_readyz_503_s": round(to_503, 3),
        "reconstruct_while_down": [refused.status_code, refused.json()["error"]["code"]],
        "killed_to_ready_again_s": round(ready_again, 1),
        "stubs_before": stubs,
        "stubs_after": len(process_group(restarted)) - 1,
        "old_group_left": len(process_group(server)),
        "extra_stubs_after_restart": len(process_group(restarted)) - 1 - stubs + len(process_group(server)),
        "shared_memory_regions_after": len(shared_memory(gateway)),
        "reconstruct_after": after.status_code,
    }


def sigterm(stack: Stack) -> dict:
    url, gateway = stack.gateway_url, stack.process.pid
    server = tritonserver_of(gateway)

    async def drain() -> list[int]:
        async with httpx.AsyncClient(timeout=300) as client:
            tasks = [
                asyncio.create_task(post(client, url, samples.png(seed=i), frames=33, steps=20, format="npz"))
                for i in range(4)
            ]
            await asyncio.sleep(0.5)
            stack.process.send_signal(signal.SIGTERM)
            return [r.status_code for r in await asyncio.gather(*tasks)]

    statuses = asyncio.run(drain())
    code = stack.process.wait(120)
    return {
        "in_flight_statuses": statuses,
        "exit_code": code,
        "processes_left": len(process_group(server)),
        "shared_memory_left": len(shared_memory(gateway)),
        "work_directories_left": len(work_directories(gateway)),
    }


def markdown(results: dict) -> str:
    m, burst_, flood_, term = results["measured"], results["burst"], results["flood"], results["sigterm"]
    rows = [  # (measure, measured, target, the TARGETS key judged, if any)
        (
            "4 concurrent 16×4096² GIFs: gateway peak gain",
            f"{m['burst_gateway_gain_mib']} MiB",
            "≤ 800 MB",
            "burst_gateway_gain_mib",
        ),
        ("… whole stack peak gain", f"{m['burst_stack_gain_mib']} MiB", "≤ 1.5 GB", "burst_stack_gain_mib"),
        ("… slowest of the four answers", f"{m['burst_slowest_answer_s']} s", "≤ 15 s", "burst_slowest_answer_s"),
        ("… gateway memory still held 5 s later", f"{burst_['gateway_retained_after_5s_mib']} MiB", "", None),
        ("hostile corpus: 5xx replies", f"{m['corpus_5xx']} of {len(results['corpus']['files'])}", "0", "corpus_5xx"),
        (
            "chunked upload: sent before the 413",
            f"{m['chunked_mib_sent_before_413']} MiB",
            "< 48 MiB",
            "chunked_mib_sent_before_413",
        ),
        ("silent client dropped after", f"{m['silent_client_dropped_s']} s", "≤ 35 s", "silent_client_dropped_s"),
        ("tritonserver killed → /readyz 503", f"{m['killed_to_readyz_503_s']} s", "≤ 2 s", "killed_to_readyz_503_s"),
        (
            "tritonserver killed → ready again",
            f"{m['killed_to_ready_again_s']} s",
            "≤ 150 s",
            "killed_to_ready_again_s",
        ),
        (
            "extra stub processes after the restart",
            str(m["extra_stubs_after_restart"]),
            "0",
            "extra_stubs_after_restart",
        ),
        ("flood of 64: replies", ", ".join(f"{n}× {s}" for s, n in flood_["statuses"].items()), "only 200/429", None),
        ("… gateway time of a 429 (max)", f"{flood_['429_gateway_ms_max']} ms", "", None),
        (
            "SIGTERM with 4 in flight",
            f"{term['in_flight_statuses']}, exit {term['exit_code']}; left: "
            f"{term['processes_left']} processes, {term['shared_memory_left']} shm regions, "
            f"{term['work_directories_left']} directories",
            "all 200, nothing left",
            None,
        ),
    ]
    lines = [
        f"# Hardening targets ({results['profile']} profile, {results['machine']})",
        "",
        f"`{results['command'].strip()}`, stack ready in {results['ready_s']} s; every figure is from this one run "
        f"(load average {results['load_average_before'][0]} before, {results['load_average_after'][0]} after: other "
        "work on the machine slows the timings).",
        "",
    ]
    lines += markdown_table(
        ["measure", "measured", "target", "met"],
        [
            [label, value, target, "" if key is None else ("yes" if results["met"][key] else "**no**")]
            for label, value, target, key in rows
        ],
        align="lr",
    )
    lines += ["", "The hostile corpus, file by file (status, code, seconds):", ""]
    lines += [
        f"- `{name}` ({r['bytes']} B): {r['status']} {r['code'] or ''} in {r['seconds']} s"
        for name, r in results["corpus"]["files"].items()
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = command_parser("hardening", __doc__)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--name", default="hardening-cpu")
    args = parser.parse_args(argv)
    results: dict = {
        "command": "python -m benchmarks.hardening " + " ".join(argv if argv is not None else sys.argv[1:]),
        "profile": "tiny",
        "machine": f"{os.cpu_count()} CPU cores, {platform.machine()}, no GPU",
    }
    results["load_average_before"] = [round(x, 2) for x in os.getloadavg()]  # other work on the machine slows it
    log_path = Path(tempfile.mkdtemp(prefix="hardening-")) / "service.log"
    with running_stack(log_path) as stack:
        results["ready_s"] = round(stack.ready_s, 1)
        for name, measure in (
            ("burst", burst),
            ("corpus", corpus),
            ("flood", flood),
            ("transport", transport),
            ("kill", kill_triton),
            ("sigterm", sigterm),
        ):
            print(f"measuring {name} …", flush=True)
            results[name] = measure(stack)
    results["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    measured = {k: v for part in ("burst", "corpus", "transport", "kill") for k, v in results[part].items()}
    results["measured"] = {k: measured[k] for k in TARGETS}
    results["met"] = {k: measured[k] <= target for k, target in TARGETS.items()}
    write_results(args.out / args.name, results, markdown(results))
    print(markdown(results))
    return 0 if all(results["met"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
