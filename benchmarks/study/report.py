"""The E-P2.6 study's partial results merged, checked against the seed's targets, and written as JSON, Markdown
and charts (benchmarks.study `merge`)."""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.harness import write_results
from benchmarks.study.settings import COMPONENTS, RESULT_STEM, SPATIAL_VARIANTS, TARGETS_MS, find_entry
from hybrid.tables import markdown_table
from service.verdict import BUDGET


def merge(studies: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Partial studies → one: variant entries joined by (spatial, dtype, batch, frames), their stages and overheads
    combined (a later partial's figure replaces an earlier one's); the memory table, cache and ablation rows from
    the partials that measured them."""

    def unique(values: Iterable[Any]) -> list[Any]:
        return list(dict.fromkeys(v for v in values if v))

    merged: dict[str, Any] = {
        "device": " + ".join(unique(s.get("device") for s in studies)),
        "commit": " + ".join(unique(s.get("commit") for s in studies)),
        "command": " ; ".join(unique(s.get("command") for s in studies)),
        "variants": [],
        "memory_table": [],
        "cache": {},
        "fusion_ablation": [],
        "overheads": [],
        "runs": [run for s in studies for run in s.get("runs", [])],
    }
    ablation: dict[tuple, dict[str, Any]] = {}
    overheads: dict[tuple, dict[str, Any]] = {}
    for study in studies:
        for row in overhead_rows(study):
            overheads[(row["spatial"], row["dtype"], row["runtime"])] = row
        for entry in study.get("variants", []):
            target = find_entry(merged["variants"], entry["spatial"], entry["dtype"], entry["batch"], entry["frames"])
            target["stages"].update(entry.get("stages", {}))
            for key, value in entry.items():
                if key not in ("stages", "spatial", "dtype", "batch", "frames") and value is not None:
                    target[key] = value
        merged["memory_table"] = study.get("memory_table") or merged["memory_table"]
        merged["cache"] = study.get("cache") or merged["cache"]
        for row in study.get("fusion_ablation", []):
            ablation[(row["num_layers"], row["num_queries"], row["dtype"], row["batch"])] = row
    merged["variants"].sort(key=lambda e: (SPATIAL_VARIANTS.index(e["spatial"]), e["dtype"], e["batch"], e["frames"]))
    merged["fusion_ablation"] = [ablation[k] for k in sorted(ablation)]
    merged["overheads"] = sorted(overheads.values(), key=lambda r: (SPATIAL_VARIANTS.index(r["spatial"]), r["runtime"]))
    return merged


def overhead_rows(study: dict[str, Any]) -> list[dict[str, Any]]:
    """Every through-Triton overhead measurement of a study: {spatial, dtype, runtime, encode, end_to_end}.
    A partial runs one service runtime, so its variant entries hold them all; a merged study's entries hold one
    per variant (the latest partial's), and its `overheads` list keeps each runtime's, so a compiled figure and an
    eager one of the same variant are both reported."""
    if "overheads" in study:
        return list(study["overheads"])
    return [
        {
            "spatial": e["spatial"],
            "dtype": e["dtype"],
            "runtime": e["overhead_encode"]["runtime"],
            "encode": e["overhead_encode"],
            "end_to_end": e["overhead_end_to_end"],
        }
        for e in study["variants"]
        if e.get("overhead_encode") and e.get("overhead_end_to_end")
    ]


def critical_path_ms(stages: dict[str, dict[str, Any]], pipeline: str, key: str = "p50_ms") -> float | None:
    """A pipeline's end-to-end model time from its stages: the two encoder branches of hybrid run concurrently."""
    get = {name: s[key] for name, s in stages.items()}
    need = {
        "hybrid": ("preprocess", "vlm_encoder", "spatial_encoder", "fusion", "video_decoder"),
        "vlm": ("preprocess", "vlm_encoder", "vlm_adapter", "video_decoder"),
    }[pipeline]
    if any(n not in get for n in need):
        return None
    if pipeline == "hybrid":
        return (
            get["preprocess"] + max(get["vlm_encoder"], get["spatial_encoder"]) + get["fusion"] + get["video_decoder"]
        )
    return sum(get[n] for n in need)


def targets(study: dict[str, Any]) -> list[dict[str, Any]]:
    """The seed's targets per variant, dtype and frame count at batch 1: DINOv2 p95 < 200 ms, fusion p95 < 100 ms,
    the hybrid critical path (p95 stages) < 1500 ms, the upper 95% bound of the through-Triton overhead (end to end
    and at encode, measured at batch 1 and one frame, at the served dtype) < 25%, and the configuration's peak memory
    within the device's. A check without its figure is None."""
    device_gib = max((r.get("device_memory_gib") or 0 for r in study.get("runs", [])), default=0) or None
    peaks = {row["spatial"]: row.get("peak_batch1_gib") for row in study.get("memory_table", [])}
    measured = {(e["spatial"], e["dtype"]): e for e in study["variants"] if e["batch"] == 1 and e["frames"] == 1}
    rows = []
    for entry in study["variants"]:
        if entry["batch"] != 1 or not entry["stages"]:
            continue
        stages = entry["stages"]
        single_frame = measured.get((entry["spatial"], entry["dtype"]), entry)
        overheads = [single_frame.get("overhead_end_to_end"), single_frame.get("overhead_encode")]
        row: dict[str, Any] = {
            "spatial": entry["spatial"],
            "dtype": entry["dtype"],
            "frames": entry["frames"],
            "dinov2_p95_ms": stages.get("spatial_encoder", {}).get("p95_ms"),
            "fusion_p95_ms": stages.get("fusion", {}).get("p95_ms"),
            "total_p95_ms": critical_path_ms(stages, "hybrid", "p95_ms"),
            "overhead_upper": None if None in overheads else max(o["ci95"][1] for o in overheads),
            "peak_memory_gib": peaks.get(entry["spatial"]),
        }
        row["checks"] = {
            "dinov2": _below(row["dinov2_p95_ms"], TARGETS_MS["spatial_encoder"]),
            "fusion": _below(row["fusion_p95_ms"], TARGETS_MS["fusion"]),
            "total": _below(row["total_p95_ms"], TARGETS_MS["total"]),
            "overhead": _below(row["overhead_upper"], BUDGET),
            "memory": _below(row["peak_memory_gib"], device_gib),
        }
        row["meets_latency"] = _all(row["checks"][k] for k in ("dinov2", "fusion", "total"))
        row["meets_all"] = _all(row["checks"].values())
        rows.append(row)
    return rows


def _below(value: float | None, limit: float | None) -> bool | None:
    return None if value is None or limit is None else value < limit


def _all(checks: Iterable[bool | None]) -> bool | None:
    """False if any check failed, None if any is unknown, else True."""
    values = list(checks)
    return False if False in values else (None if None in values else True)


def recommend(study: dict[str, Any]) -> dict[str, Any]:
    """benchmarks/README.md's rule for the deployment configuration, applied to these figures.

    1. Variant, at the served dtype (the one the through-Triton overhead was measured at): DINOv2-L (the lab's
       trained fusion and adapter take its 1024-wide tokens) if it meets every target at every measured frame
       count; otherwise the largest variant that does (B or g needs the fusion retrained).
    2. Precision: fp16 instead only if it also meets the latency targets and its hybrid critical path (p50, batch
       1, one frame) is at least 10% shorter; bf16 is what the weights were trained in.
    3. Batch: the largest measured batch whose hybrid critical path (p95 stages, one frame) is under 1500 ms.
    `pick` is None, with the reason, while a figure the rule needs is missing."""
    rows = targets(study)
    served = sorted({e["dtype"] for e in study["variants"] if e.get("overhead_encode")})
    if not served:
        return {"pick": None, "reason": "no through-Triton overhead measured (part `overhead`)"}
    dtype = "bfloat16" if "bfloat16" in served else served[0]
    verdicts: dict[str, bool | None] = {}
    for row in rows:
        if row["dtype"] == dtype:
            verdicts[row["spatial"]] = _all([verdicts.get(row["spatial"], True), row["meets_all"]])
    undecided = sorted(v for v, ok in verdicts.items() if ok is None)
    if undecided or not verdicts:
        return {"pick": None, "reason": f"a target's figure is missing for {undecided or 'every variant'} at {dtype}"}
    passing = [v for v, ok in verdicts.items() if ok]
    if not passing:
        return {"pick": None, "reason": f"no DINOv2 variant meets every target at {dtype}"}
    variant = "vitl14" if "vitl14" in passing else max(passing, key=SPATIAL_VARIANTS.index)
    note = f"{', '.join(sorted(passing, key=SPATIAL_VARIANTS.index))} meet every target at {dtype}"
    alternative = "float16" if dtype == "bfloat16" else None
    alt_rows = [r for r in rows if (r["spatial"], r["dtype"]) == (variant, alternative)]
    if (
        alt_rows
        and all(r["meets_latency"] for r in alt_rows)
        and _path(study, variant, alternative) <= 0.9 * _path(study, variant, dtype)
    ):
        dtype, note = alternative, note + "; fp16 is ≥ 10% faster (its overhead was not measured through Triton)"
    batches = [
        e["batch"]
        for e in study["variants"]
        if (e["spatial"], e["dtype"], e["frames"]) == (variant, dtype, 1)
        and _below(critical_path_ms(e["stages"], "hybrid", "p95_ms"), TARGETS_MS["total"])
    ]
    return {"pick": {"spatial": variant, "dtype": dtype, "max_batch": max(batches, default=None)}, "reason": note}


def _path(study: dict[str, Any], variant: str, dtype: str) -> float:
    for e in study["variants"]:
        if (e["spatial"], e["dtype"], e["batch"], e["frames"]) == (variant, dtype, 1, 1):
            return critical_path_ms(e["stages"], "hybrid") or math.inf
    return math.inf


def _ms(stage: dict[str, Any] | None) -> str:
    return "–" if not stage else f"{stage['p50_ms']:.1f} ({stage['p95_ms']:.1f})"


def _pct(o: dict[str, Any] | None) -> str:
    return "–" if not o else f"{o['median']:+.1%} [{o['ci95'][0]:+.1%}, {o['ci95'][1]:+.1%}] {o['verdict']}"


def markdown(study: dict[str, Any]) -> str:
    lines = [
        f"# E-P2.6 study on {study['device']} (commit {study['commit']})",
        "",
        f"Command(s): `{study['command']}`. Each stage: p50 (p95) in ms over synchronized calls of the serving "
        "model in-process; memory is the model's own allocator peak (GiB). The VLM, its adapter, the decoder and "
        "preprocess do not depend on the DINOv2 variant: measured once and shown in every row.",
        "",
    ]
    for run_info in study.get("runs", []):
        s = run_info["settings"]
        by_runtime: dict[str, list[str]] = {}
        for component, runtime in run_info.get("stage_runtimes", {}).items():
            by_runtime.setdefault(runtime, []).append(component)
        runtimes = "; ".join(f"{r}: {', '.join(c)}" for r, c in by_runtime.items())
        lines.append(
            f"- `{run_info['command']}`: profile {s['profile']}, components ran {runtimes or '–'}, service runtime "
            f"{s['service_runtime']}, {s['repeats']} calls (≤ {s['max_seconds']} s) after {s['warmup']} warm-up"
            + (f". {run_info['note']}" if run_info.get("note") else "")
        )
    stages = [c for c in COMPONENTS if any(c in e["stages"] for e in study["variants"])]
    if stages:
        lines += [
            "",
            "## Latency per component",
            "",
        ]
        rows = []
        for e in study["variants"]:
            if not e["stages"]:
                continue
            paths = [critical_path_ms(e["stages"], p) for p in ("hybrid", "vlm")]
            memory = e["stages"].get("spatial_encoder", {}).get("gpu_memory_gib")
            rows.append(
                [e["spatial"], e["dtype"], e["batch"], e["frames"], *(_ms(e["stages"].get(c)) for c in stages)]
                + [*("–" if ms is None else f"{ms:.1f}" for ms in paths), "–" if memory is None else memory]
            )
        head = ["DINOv2", "dtype", "batch", "frames", *stages, "hybrid path p50", "vlm path p50", "DINOv2 GiB"]
        lines += markdown_table(head, rows, align="llrr" + "r" * (len(stages) + 3))
    overheads = overhead_rows(study)
    if overheads:
        lines += [
            "",
            "## Through gateway + Triton: the E-P2.6 overhead per DINOv2 variant (paired, 95% CI)",
            "",
        ]
        rows = [
            [r["spatial"], r["dtype"], r["runtime"], r["end_to_end"]["pairs"]]
            + [f"{o['median_ms']['hybrid']} ms", f"{o['median_ms']['vlm']} ms", _pct(o)]
            + [f"{c['median_ms']['hybrid']} ms", f"{c['median_ms']['vlm']} ms", _pct(c)]
            for r, o, c in ((r, r["end_to_end"], r["encode"]) for r in overheads)
        ]
        head = ["DINOv2", "dtype", "runtime", "pairs", "hybrid /reconstruct", "vlm /reconstruct", "end to end"]
        lines += markdown_table([*head, "hybrid /encode", "vlm /encode", "encode"], rows, align="lllrrrlrrl")
    if study.get("memory_table"):
        rows = study["memory_table"]
        lines += [
            "",
            "## Memory per configuration (GiB)",
            "",
            f"Source: {rows[0]['source']}.",
            "",
        ]
        keys = ("parameters_gib", "loaded_gib", "peak_batch1_gib", "peak_max_batch_gib", "added_vs_vlm_only_gib")
        head = ["configuration", "models", "parameters", "loaded", "peak, batch 1"]
        lines += markdown_table(
            [*head, f"peak, batch {rows[0]['max_batch']}", "added vs VLM only (loaded)"],
            [[r["configuration"], ", ".join(r["models"]), *(r[k] for k in keys)] for r in rows],
            align="llrrrrr",
        )
    if study.get("fusion_ablation"):
        lines += [
            "",
            "## Fusion pruning: layers × output queries",
            "",
        ]
        rows = [
            [r["num_layers"], r["num_queries"], f"{r['parameters'] / 1e6:.1f} M", r["dtype"], r["batch"]]
            + [f"{r['p50_ms']:.2f}", f"{r['p95_ms']:.2f}", r["gpu_memory_gib"]]
            for r in study["fusion_ablation"]
        ]
        head = ["layers", "queries", "parameters", "dtype", "batch", "p50 ms", "p95 ms", "GiB"]
        lines += markdown_table(head, rows, align="rrrlrrrr")
    cache = study.get("cache")
    if cache:
        lines += [
            "",
            f"## Triton response cache ({cache['cache_config']} on {', '.join(cache['models'])}; DINOv2 "
            f"{cache['spatial']}, {cache['runtime']})",
            "",
        ]
        rows = [
            [f"/{endpoint}", f"{_ms(r['miss'])} ms", f"{_ms(r['hit'])} ms", f"{r['saved_p50_ms']:.1f} ms"]
            + [f"{r['speedup_p50']}×", f"{r['miss']['hit_ratio']} / {r['hit']['hit_ratio']}"]
            for endpoint, r in cache["endpoints"].items()
        ]
        head = ["endpoint", "miss p50 (p95)", "hit p50 (p95)", "saved p50", "speed-up"]
        lines += markdown_table([*head, "hit ratio: miss phase / hit phase"], rows, align="lrrrr")
        mixed = cache.get("mixed_stream")
        if mixed:
            lines.append(
                f"\nA stream of {mixed['requests']} /encode requests repeating earlier media with probability "
                f"{mixed['repeat_probability']} ({mixed['repeated_requests']} repeats): "
                f"hit ratio {mixed['hit_ratio']}, "
                f"p50 {mixed['p50_ms']:.1f} ms, p95 {mixed['p95_ms']:.1f} ms. Per model (hit phase of /encode): "
                + "; ".join(
                    f"{m}: lookup on a hit {v['hit_lookup_ms']} ms, on a miss (with insert) "
                    f"{cache['endpoints']['encode']['miss']['per_model'][m]['miss_lookup_insert_ms']} ms"
                    for m, v in cache["endpoints"]["encode"]["hit"]["per_model"].items()
                )
                + "."
            )
    target_rows = targets(study)
    if target_rows:
        lines += [
            "",
            "## The seed's targets at batch 1 (DINOv2 < 200 ms, fusion < 100 ms, total < 1500 ms, overhead < 25%, "
            "memory within the device)",
            "",
        ]
        rows = [
            [r["spatial"], r["dtype"], r["frames"], r["dinov2_p95_ms"], r["fusion_p95_ms"]]
            + ["–" if r["total_p95_ms"] is None else round(r["total_p95_ms"], 1)]
            + ["–" if r["overhead_upper"] is None else f"{r['overhead_upper']:+.1%}"]
            + [r["peak_memory_gib"], r["meets_all"]]
            for r in target_rows
        ]
        head = ["DINOv2", "dtype", "frames", "DINOv2 p95", "fusion p95", "total p95", "overhead upper 95%", "peak GiB"]
        lines += markdown_table([*head, "meets all"], rows, align="llrrrrrr")
        pick = recommend(study)
        lines += ["", f"Deployment rule applied to these figures: {json.dumps(pick['pick'])} ({pick['reason']})."]
    return "\n".join(lines) + "\n"


def charts(study: dict[str, Any], stem: Path) -> list[Path]:
    """<stem>-latency.png: per batch (1 frame, first dtype), the stacked stage times of vlm only and of hybrid per
    DINOv2 variant; <stem>-memory.png: memory per configuration."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    entries = [e for e in study["variants"] if e["frames"] == 1 and e["stages"]]
    if entries:
        dtype = entries[0]["dtype"]
        batches = sorted({e["batch"] for e in entries if e["dtype"] == dtype})
        fig, axes = plt.subplots(1, len(batches), figsize=(4.5 * len(batches), 5), squeeze=False, sharey=False)
        colors = dict(zip(COMPONENTS, plt.get_cmap("tab10").colors, strict=False))
        for ax, batch in zip(axes[0], batches, strict=True):
            rows = [e for e in entries if e["dtype"] == dtype and e["batch"] == batch]
            bars: list[tuple[str, list[str]]] = [("vlm only", ["preprocess", "vlm_encoder", "vlm_adapter",
                                                               "video_decoder"])]  # fmt: skip
            bars += [(f"hybrid\n{e['spatial']}", ["preprocess", "vlm_encoder", "spatial_encoder", "fusion",
                                                   "video_decoder"]) for e in rows]  # fmt: skip
            stage_sets = [rows[0]["stages"]] + [e["stages"] for e in rows]
            for x, ((label, names), stages) in enumerate(zip(bars, stage_sets, strict=True)):
                bottom = 0.0
                for name in names:
                    if name not in stages:
                        continue
                    height = stages[name]["p50_ms"]
                    concurrent = name == "spatial_encoder"
                    ax.bar(x, height, bottom=bottom, color=colors[name], width=0.6, hatch="//" if concurrent else None,
                           label=name + (" (beside vlm_encoder)" if concurrent else ""))  # fmt: skip
                    bottom += height
                path = critical_path_ms(stages, "hybrid" if label.startswith("hybrid") else "vlm")
                if path is not None:
                    ax.plot([x - 0.35, x + 0.35], [path, path], color="black", lw=2)
            ax.set_xticks(range(len(bars)), [b[0] for b in bars], fontsize=8)
            ax.set_title(f"batch {batch}, 1 frame, {dtype}", fontsize=10)
            ax.set_ylabel("ms (stage p50 stacked; black: critical path)")
        handles, labels = axes[0][0].get_legend_handles_labels()
        unique = dict(zip(labels, handles, strict=False))
        fig.legend(unique.values(), unique.keys(), loc="lower center", ncol=3, fontsize=8)
        fig.suptitle(f"E-P2.6 latency per component — {study['device']}", fontsize=11)
        fig.tight_layout(rect=(0, 0.12, 1, 0.95))
        written.append(stem.with_name(stem.name + "-latency.png"))
        fig.savefig(written[-1], dpi=110)
        plt.close(fig)
    rows = study.get("memory_table") or []
    if rows:
        fig, ax = plt.subplots(figsize=(7, 4.5))
        x = np.arange(len(rows))
        series = [
            (key, label)
            for key, label in (
                ("parameters_gib", "parameters and buffers"),
                ("loaded_gib", "allocated once built (with any CUDA graphs)"),
                ("peak_batch1_gib", "peak serving batch 1"),
            )
            if all(r[key] is not None for r in rows)
        ]
        width = 0.8 / len(series)
        for i, (key, label) in enumerate(series):
            ax.bar(x + (i - (len(series) - 1) / 2) * width, [r[key] for r in rows], width=width, label=label)
        ax.set_xticks(x, [r["configuration"] for r in rows])
        ax.set_ylabel("GiB (sum over the configuration's models)")
        ax.set_title(f"Memory per configuration ({rows[0]['dtype']}) — {study['device']}", fontsize=10)
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.08), ncol=len(series), fontsize=8)
        fig.tight_layout()
        written.append(stem.with_name(stem.name + "-memory.png"))
        fig.savefig(written[-1], dpi=110)
        plt.close(fig)
    return written


def write_final(study: dict[str, Any], out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    stem = out / RESULT_STEM
    return [*write_results(stem, study, markdown(study)), *charts(study, stem)]
