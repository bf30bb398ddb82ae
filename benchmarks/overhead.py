"""E-P2.6 paired benchmark against a running gateway: is hybrid within 25% of the vlm baseline?

    python -m benchmarks.overhead --url http://127.0.0.1:8080 --pairs 40 --out benchmarks/results

N pairs of identical inputs: each pair sends the same image to hybrid and vlm (and spatial) back to back, in an
order that alternates between pairs so drift and warm caches favour neither. For /reconstruct (end to end) and
/encode (the encode_* ensembles) it reports medians, the overhead median(hybrid)/median(vlm) − 1 with a paired
bootstrap 95% confidence interval, and the verdict against the budget (service/verdict.py: the same definition
the gateway and the load test use). The stage breakdown and the gateway's live service-time estimate come from
its /v1/overhead (Triton's statistics), and the two are set side by side (`agreement`): do the live interval and
the paired one overlap, and how far apart are the hybrid − vlm differences in milliseconds. The live figure
excludes the costs outside the models (HTTP, decoding, gRPC), which the paired one includes in both pipelines: a
ratio over a smaller base reads larger for the same difference, so the difference is compared too, and the live
difference is also shown over the paired vlm median ("on the paired scale"). Start the service fresh for this
(`make up`, or `benchmarks/full_gpu.sh` on a GPU): the live window must hold this run's traffic only, which the
result checks against the ensembles' request counts. Writes <out>/overhead-<profile>.json, .md and .png.
"""

from __future__ import annotations

import random
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from benchmarks.harness import command_parser, write_results
from hybrid import samples
from hybrid.contracts import PIPELINES
from hybrid.tables import markdown_table
from service.service_time import STAGES
from service.verdict import BUDGET, judge, overhead_ratio, quantile

ENDPOINTS = ("reconstruct", "encode")
LIVE_SCOPES = {"reconstruct": "end_to_end", "encode": "encode"}  # endpoint → the gateway's overhead scope


def make_inputs(count: int, size: int, seed: int) -> list[bytes]:
    """Deterministic PNGs (`hybrid.samples`): the same bytes go to every pipeline of a pair."""
    return samples.pngs(count, size, seed)


def bootstrap_medians(hybrid: list[float], vlm: list[float], resamples: int, seed: int) -> tuple[Any, Any]:
    """The medians of `resamples` resamplings of the pairs (the two stay matched): hybrid's and vlm's, aligned."""
    rng = np.random.default_rng(seed)
    h, v = np.asarray(hybrid), np.asarray(vlm)
    index = rng.integers(0, len(h), size=(resamples, len(h)))
    return quantile(h[index], 0.5, axis=1), quantile(v[index], 0.5, axis=1)


def bootstrap_ratio_ci(hybrid: list[float], vlm: list[float], resamples: int, seed: int) -> tuple[float, float]:
    """95% CI of median(hybrid)/median(vlm) − 1."""
    h, v = bootstrap_medians(hybrid, vlm, resamples, seed)
    return float(quantile(h / v - 1, 0.025)), float(quantile(h / v - 1, 0.975))


def bootstrap_difference_ci(hybrid: list[float], vlm: list[float], resamples: int, seed: int) -> tuple[float, float]:
    """95% CI of median(hybrid) − median(vlm) in seconds."""
    h, v = bootstrap_medians(hybrid, vlm, resamples, seed)
    return float(quantile(h - v, 0.025)), float(quantile(h - v, 0.975))


def run_pairs(url: str, pairs: int, inputs: list[bytes], params: dict[str, int], warmup: int) -> dict:
    """Latency per endpoint and pipeline, aligned by pair index."""
    latencies: dict[str, dict[str, list[float]]] = {e: {p: [] for p in PIPELINES} for e in ENDPOINTS}
    order_rng = random.Random(0)
    with httpx.Client(timeout=300) as client:
        for i in range(warmup + pairs):
            data = inputs[i % len(inputs)]
            for endpoint in ENDPOINTS:
                order = list(PIPELINES)
                order_rng.shuffle(order)  # interleaved A/B: no pipeline always goes first
                for pipeline in order:
                    query = {"pipeline": pipeline, **(params if endpoint == "reconstruct" else {})}
                    started = time.perf_counter()
                    reply = client.post(f"{url}/{endpoint}", params=query, files={"file": ("in.png", data)})
                    elapsed = time.perf_counter() - started
                    if reply.status_code != 200:
                        raise SystemExit(f"{endpoint} {pipeline}: HTTP {reply.status_code}: {reply.text[:300]}")
                    if i >= warmup:
                        latencies[endpoint][pipeline].append(elapsed)
            if i >= warmup and (i - warmup + 1) % 10 == 0:
                print(f"  {i - warmup + 1}/{pairs} pairs", flush=True)
    return latencies


def live_after(url: str, sent: int, wait_s: float = 30.0) -> dict:
    """The gateway's /v1/overhead once its statistics poll (every second) has seen every request sent: read at once,
    the window would lack the last second's requests. Gives up after `wait_s`, returning what it has."""
    deadline = time.monotonic() + wait_s
    while True:
        report = httpx.get(f"{url}/v1/overhead", timeout=10).json()
        counts = report.get("ensemble_requests", {})
        if all(counts.get(f"{e}_{p}", 0) >= sent for e in ENDPOINTS for p in PIPELINES) or time.monotonic() > deadline:
            return report
        time.sleep(0.5)


def analyse(latencies: dict, budget: float, resamples: int) -> dict:
    out: dict = {}
    for endpoint in ENDPOINTS:
        data = latencies[endpoint]
        medians = {p: quantile(v, 0.5) for p, v in data.items()}
        p95 = {p: quantile(v, 0.95) for p, v in data.items()}
        ratio = overhead_ratio(medians["hybrid"], medians["vlm"])
        low, high = bootstrap_ratio_ci(data["hybrid"], data["vlm"], resamples, seed=1)
        out[endpoint] = {
            "median_s": medians,
            "p95_s": p95,
            "overhead_median": ratio,
            "overhead_ci95": [low, high],
            "overhead_p95": overhead_ratio(p95["hybrid"], p95["vlm"]),
            "verdict": judge(ratio, budget, (low, high)).value,
            "difference_s": medians["hybrid"] - medians["vlm"],
            "difference_ci95_s": list(bootstrap_difference_ci(data["hybrid"], data["vlm"], resamples, seed=2)),
        }
    return out


def agreement(analysis: dict, live: dict, pairs: int, warmup: int) -> dict:
    """The gateway's live `service_time` estimate against the paired benchmark, per scope: both overheads with
    their intervals and whether those overlap; the hybrid − vlm differences; the live difference over the paired
    vlm median. `window_only_this_run`: the live window's ensembles served exactly this run's requests."""
    out: dict = {}
    requests = live.get("ensemble_requests", {})
    sent = pairs + warmup
    for endpoint, scope in LIVE_SCOPES.items():
        paired, estimate = analysis[endpoint], live["overhead"][scope]
        service = estimate["service_s"]
        low, high = estimate["ci95"]
        plow, phigh = paired["overhead_ci95"]
        difference = None if None in (service["hybrid"], service["vlm"]) else service["hybrid"] - service["vlm"]
        out[scope] = {
            "live_overhead": estimate["ratio"],
            "live_ci95": [low, high],
            "live_verdict": estimate["verdict"],
            "paired_overhead": paired["overhead_median"],
            "paired_ci95": [plow, phigh],
            "intervals_overlap": None if None in (low, high) else bool(low <= phigh and plow <= high),
            "live_difference_s": difference,
            "paired_difference_s": paired["difference_s"],
            "paired_difference_ci95_s": paired["difference_ci95_s"],
            "live_on_paired_scale": None if difference is None else difference / paired["median_s"]["vlm"],
            "window_only_this_run": all(requests.get(f"{endpoint}_{pipeline}") == sent for pipeline in PIPELINES),
        }
    return out


def chart(result: dict, path: Path) -> None:
    """Stacked per-stage time per pipeline (Triton statistics), measured end-to-end medians, and the budget line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stages = result["server"]["pipelines"]
    fig, ax = plt.subplots(figsize=(9, 5.5), dpi=120)
    colors = plt.get_cmap("tab10")
    e2e = result["analysis"]["reconstruct"]["median_s"]
    for x, pipeline in enumerate(PIPELINES):
        bottom = 0.0
        for k, stage in enumerate(STAGES):
            entry = stages[pipeline]["stages"].get(stage)
            if not entry or entry["compute_mean_s"] is None:
                continue
            height = (entry["compute_mean_s"] + entry["queue_mean_s"]) * 1000
            ax.bar(x, height, bottom=bottom, color=colors(k), width=0.55, label=stage if x == 0 or k > 2 else None)
            bottom += height
        serving = max(e2e[pipeline] * 1000 - bottom, 0.0)
        ax.bar(
            x,
            serving,
            bottom=bottom,
            color="#cccccc",
            width=0.55,
            hatch="//",
            label="gateway + transport" if x == 0 else None,
        )
        ax.plot([x - 0.33, x + 0.33], [e2e[pipeline] * 1000] * 2, color="black", lw=2)
        ax.annotate(f"{e2e[pipeline] * 1000:.0f} ms", (x, e2e[pipeline] * 1000), xytext=(0, 5),
                    textcoords="offset points", ha="center", fontsize=9)  # fmt: skip
    budget_ms = e2e["vlm"] * (1 + result["budget"]) * 1000
    ax.axhline(budget_ms, color="crimson", ls="--", lw=1.5)
    ax.text(2.45, budget_ms, f" budget: vlm +{result['budget']:.0%}", color="crimson", va="bottom", ha="right")
    analysis = result["analysis"]["reconstruct"]
    low, high = analysis["overhead_ci95"]
    ax.set_title(
        f"E-P2.6 end to end: hybrid vs vlm {analysis['overhead_median']:+.1%} (95% CI {low:+.1%} … {high:+.1%}) "
        f"— {analysis['verdict'].replace('_', ' ')}\n{result['profile']} profile, {result['device']}",
        fontsize=10,
    )
    ax.set_xticks(range(len(PIPELINES)), PIPELINES)
    fig.text(
        0.01,
        0.01,
        "Stage means include queueing; hybrid's two encoder branches run concurrently, so its stack can exceed "
        "its measured median.",
        fontsize=7,
        color="dimgray",
    )
    ax.set_ylabel("ms per request (stage means stacked; black bar = measured median)")
    handles, labels = ax.get_legend_handles_labels()
    unique = dict(zip(labels, handles, strict=False))
    ax.legend(unique.values(), unique.keys(), fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    fig.savefig(path)
    plt.close(fig)


def markdown(result: dict) -> str:
    lines = [
        f"E-P2.6 paired benchmark — device: {result['device']}; profile {result['profile']}; batch 1; input "
        f"{result['input']}; {result['pairs']} pairs; budget {result['budget']:.0%}.",
        f"Command: `{result['command']}`",
        "",
    ]
    rows = []
    for endpoint in ENDPOINTS:
        a = result["analysis"][endpoint]
        m = a["median_s"]
        low, high = a["overhead_ci95"]
        rows.append(
            [endpoint, *(f"{m[p] * 1000:.1f} ms" for p in ("hybrid", "vlm", "spatial"))]
            + [f"{a['overhead_median']:+.1%}", f"{low:+.1%} … {high:+.1%}", f"{a['overhead_p95']:+.1%}", a["verdict"]]
        )
    head = ["endpoint", "hybrid median", "vlm median", "spatial median", "overhead (median)", "95% CI"]
    lines += markdown_table([*head, "overhead (p95)", "verdict"], rows, align="lrrrrrr")
    lines += ["", "Stage means from Triton's statistics API (queue + compute per request, ms):", ""]
    rows = []
    for stage in STAGES:
        cells = [stage]
        for pipeline in PIPELINES:
            entry = result["server"]["pipelines"][pipeline]["stages"].get(stage)
            known = entry and entry["compute_mean_s"] is not None
            cells.append(f"{(entry['compute_mean_s'] + entry['queue_mean_s']) * 1000:.1f}" if known else "—")
        rows.append(cells)
    lines += markdown_table(["stage", *PIPELINES], rows, align="l" + "r" * len(PIPELINES))
    live = result["server"].get("overhead", {})
    if "encode" in live:
        lines += ["", "The gateway's live estimate over its window (service_time: batch-1 service times from Triton's "
                  "statistics, queueing excluded):", ""]  # fmt: skip
        for scope, entry in live.items():
            ci = entry["ci95"]
            interval = f" (95% CI {ci[0]:+.1%} … {ci[1]:+.1%})" if None not in ci else ""
            ratio = "n/a" if entry["ratio"] is None else f"{entry['ratio']:+.1%}"
            lines.append(f"- {scope}: {ratio}{interval}, {entry['verdict']}")
    if result.get("agreement"):
        lines += ["", "Live against paired (the live figure leaves out the costs outside the models, which the paired "
                  "one has in both pipelines; differences in ms are comparable as they are):", ""]  # fmt: skip
        rows = []
        for scope, a in result["agreement"].items():
            rows.append([
                scope,
                _pct(a["live_overhead"]) + " " + _interval(a["live_ci95"], _pct),
                _pct(a["paired_overhead"]) + " " + _interval(a["paired_ci95"], _pct),
                {True: "yes", False: "no", None: "n/a"}[a["intervals_overlap"]],
                _ms(a["live_difference_s"]),
                _ms(a["paired_difference_s"]) + " " + _interval(a["paired_difference_ci95_s"], _ms),
                _pct(a["live_on_paired_scale"]),
                "yes" if a["window_only_this_run"] else "no",
            ])  # fmt: skip
        head = ["scope", "live overhead", "paired overhead", "intervals overlap", "live hybrid − vlm",
                "paired hybrid − vlm", "live on the paired scale", "window = this run"]  # fmt: skip
        lines += markdown_table(head, rows, align="llllrrrl")
    return "\n".join(lines) + "\n"


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:+.1%}"


def _ms(value: float | None) -> str:
    return "n/a" if value is None else f"{value * 1000:+.2f} ms"


def _interval(bounds: list[float | None], show: Callable[[float | None], str]) -> str:
    return "" if None in bounds else f"[{show(bounds[0])}, {show(bounds[1])}]"


def main(argv: list[str] | None = None) -> int:
    parser = command_parser("overhead", __doc__)
    parser.add_argument("--url", default="http://127.0.0.1:8080")
    parser.add_argument("--pairs", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--frames", type=int, default=1)
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--size", type=int, default=224, help="input image side in pixels")
    parser.add_argument("--budget", type=float, default=BUDGET)
    parser.add_argument("--resamples", type=int, default=5000)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args(argv)

    if httpx.get(f"{args.url}/readyz", timeout=10).status_code != 200:
        print(f"{args.url} is not ready", file=sys.stderr)
        return 2
    params = {"frames": args.frames} | ({"steps": args.steps} if args.steps else {})
    inputs = make_inputs(8, args.size, seed=0)
    print(f"{args.pairs} pairs against {args.url} …", flush=True)
    latencies = run_pairs(args.url, args.pairs, inputs, params, args.warmup)
    server = live_after(args.url, args.pairs + args.warmup)
    result = {
        "device": server["device"],
        "profile": server["profile"],
        "input": f"{args.size}x{args.size} PNG, frames={args.frames}, steps={args.steps or 'profile default'}",
        "pairs": args.pairs,
        "budget": args.budget,
        "command": "python -m benchmarks.overhead " + " ".join(argv if argv is not None else sys.argv[1:]),
        "analysis": analyse(latencies, args.budget, args.resamples),
        "latencies_s": latencies,
        "server": server,
    }
    result["agreement"] = agreement(result["analysis"], server, args.pairs, args.warmup)
    stem = args.out / f"overhead-{result['profile']}"
    write_results(stem, result, markdown(result))
    chart(result, stem.with_suffix(".png"))
    print(markdown(result))
    print(f"wrote {stem}.json, .md, .png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
