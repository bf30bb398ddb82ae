"""Gate-1 results: aggregation over samples, `gate1.json`, the `gate1.md` table and `side_by_side.png`.

Aggregation follows the lab's `compute_reconstruction_metrics`: LPIPS, SSIM, spatial IoU and edge F1 are means over
inputs (an input's value is the mean over its frames); PSNR is 10·log10(1 / MSE) of the mean MSE over inputs, as
the lab takes it from `F.mse_loss` over the whole batch.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from evaluation.datasets import Sample
from evaluation.metrics import align, psnr_from_mse, resize_to
from hybrid.tables import markdown_table

# Gate 1 of the lab's P2 plan: a pipeline passes when every threshold holds.
THRESHOLDS: dict[str, tuple[str, float]] = {
    "lpips": ("<", 0.35),
    "ssim": (">", 0.75),
    "spatial_iou": (">", 0.6),
    "edge_f1": (">", 0.5),
}
REPORTED = ("lpips", "ssim", "psnr", "spatial_iou", "edge_f1")
LABELS = {"lpips": "LPIPS", "ssim": "SSIM", "psnr": "PSNR (dB)", "spatial_iou": "spatial IoU", "edge_f1": "edge F1"}
COLUMNS = (("Original", None), ("VLM-only", "vlm"), ("DINOv2-only", "spatial"), ("Hybrid", "hybrid"))
COMPARISON = (
    "each reconstructed frame against the original frame resized (PIL bilinear) to the reconstruction's size; "
    "clip frames paired at the same relative time"
)


@dataclass
class Result:
    """One input through one pipeline: its metrics, or the refusal."""

    sample: Sample
    pipeline: str
    status: int | None
    metrics: dict[str, float | None] | None = None
    error: str | None = None
    frames_out: int | None = None
    size_out: tuple[int, int] | None = None  # (height, width) of the reconstruction, the size metrics compare at


@dataclass
class Evaluation:
    samples: list[Sample]
    pipelines: list[str]
    results: list[Result]
    lpips_reason: str | None  # None when LPIPS was available
    previews: dict[tuple[str, str], np.ndarray] = field(default_factory=dict)  # (sample, pipeline) → frames
    context: dict = field(default_factory=dict)  # url, service, dataset, seed, skipped inputs, …


def _mean(values: list[float | None]) -> float | None:
    if not values or any(v is None for v in values):
        return None
    return float(np.mean(values))


def aggregate(results: list[Result]) -> dict[str, float | None]:
    """The five reported metrics over the successful results (None where none succeeded or LPIPS is unavailable)."""
    scored = [r.metrics for r in results if r.metrics is not None]
    if not scored:
        return dict.fromkeys(REPORTED)
    out = {k: _mean([m.get(k) for m in scored]) for k in ("lpips", "ssim", "spatial_iou", "edge_f1")}
    mse = _mean([m["mse"] for m in scored])
    out["psnr"] = None if mse is None else psnr_from_mse(mse)
    return {k: out[k] for k in REPORTED}


def check(metrics: dict[str, float | None]) -> dict:
    """Pass/fail of each Gate-1 threshold, and the pipeline's verdict: pass only when all four are measured and hold;
    fail when any measured one misses; incomplete when none misses but one could not be measured."""
    checks: dict[str, bool | None] = {}
    for name, (op, limit) in THRESHOLDS.items():
        value = metrics.get(name)
        checks[name] = None if value is None else (value < limit if op == "<" else value > limit)
    if all(metrics.get(k) is None for k in THRESHOLDS):
        verdict = "no data"
    elif any(c is False for c in checks.values()):
        verdict = "fail"
    elif any(c is None for c in checks.values()):
        verdict = "incomplete"
    else:
        verdict = "pass"
    return {"verdict": verdict, "checks": checks}


def _requests(results: list[Result]) -> dict:
    failed = [r for r in results if r.metrics is None]
    errors = Counter(str(r.status) if r.status is not None else "no reply" for r in failed)
    return {"ok": len(results) - len(failed), "failed": len(failed), "errors": dict(sorted(errors.items()))}


def _clean(value):
    """JSON without NaN or infinities (json.dumps would write the invalid tokens NaN/Infinity)."""
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def build(evaluation: Evaluation) -> dict:
    """The content of gate1.json."""
    by_pipeline = {p: [r for r in evaluation.results if r.pipeline == p] for p in evaluation.pipelines}
    datasets = list(dict.fromkeys(s.dataset for s in evaluation.samples))
    report = {
        "n": len(evaluation.samples),
        "pipelines": {p: aggregate(rs) for p, rs in by_pipeline.items()},
        "thresholds": {k: {"op": op, "value": v} for k, (op, v) in THRESHOLDS.items()},
        "gate1": {p: check(aggregate(rs)) for p, rs in by_pipeline.items()},
        "requests": {p: _requests(rs) for p, rs in by_pipeline.items()},
        "lpips_unavailable_reason": evaluation.lpips_reason,
        "per_dataset": {
            d: {
                "n": sum(s.dataset == d for s in evaluation.samples),
                "pipelines": {p: aggregate([r for r in rs if r.sample.dataset == d]) for p, rs in by_pipeline.items()},
            }
            for d in datasets
        },
        "comparison": COMPARISON,
        **evaluation.context,
    }
    if any(s.is_clip for s in evaluation.samples):
        report["temporal_lpips_var"] = {
            p: _mean([r.metrics.get("temporal_lpips_var") for r in rs if r.metrics and r.sample.is_clip])
            for p, rs in by_pipeline.items()
        }
    report["samples"] = [_sample_entry(s, evaluation.results) for s in evaluation.samples]
    return _clean(report)


def _sample_entry(sample: Sample, results: list[Result]) -> dict:
    entry: dict = {"name": sample.name, "dataset": sample.dataset, "file": sample.filename}
    entry["frames_in"] = int(sample.frames.shape[0])
    if sample.boxes:
        entry["boxes"] = [[list(b) for b in frame] for frame in sample.boxes]
    entry["pipelines"] = {}
    for r in results:
        if r.sample is sample:
            entry["pipelines"][r.pipeline] = (
                {"status": r.status, "frames_out": r.frames_out, "size_out": r.size_out, **r.metrics}
                if r.metrics is not None
                else {"status": r.status, "error": r.error}
            )
    return entry


def _fmt(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def markdown(report: dict) -> str:
    """gate1.md: the Gate-1 table (pass/fail per threshold and pipeline), requests, per-dataset figures."""
    service = report.get("service", {})
    where = ", ".join(f"{k} {v}" for k, v in service.items())
    counts = ", ".join(f"{d} {entry['n']}" for d, entry in report["per_dataset"].items())
    lines = [
        "# Gate-1 evaluation",
        "",
        f"Service {report.get('url', '?')}{f' ({where})' if where else ''}; {report['n']} inputs "
        f"({counts}); compared: {report['comparison']}.",
        "",
    ]
    if report["lpips_unavailable_reason"]:
        lines += [f"LPIPS unavailable: {report['lpips_unavailable_reason']}.", ""]
    head = [f"{LABELS[k]} ({op} {v})" for k, (op, v) in THRESHOLDS.items()]
    rows = []
    for pipeline, metrics in report["pipelines"].items():
        checks = report["gate1"][pipeline]["checks"]
        cells = [
            f"{_fmt(metrics[k])} {'' if checks[k] is None else ('pass' if checks[k] else 'fail')}".strip()
            for k in THRESHOLDS
        ]
        verdict = report["gate1"][pipeline]["verdict"]
        rows.append([pipeline, *cells, _fmt(metrics["psnr"], 2), f"**{verdict}**"])
    lines += markdown_table(["pipeline", *head, "PSNR (dB)", "Gate 1"], rows)
    rows = [
        [pipeline, req["ok"], req["failed"], ", ".join(f"{k}: {v}" for k, v in req["errors"].items()) or "-"]
        for pipeline, req in report["requests"].items()
    ]
    lines += ["", *markdown_table(["pipeline", "requests ok", "failed", "by status"], rows, align="lrr")]
    lines += ["", "Per dataset:", ""]
    rows = [
        [dataset, pipeline, *(_fmt(metrics[k], 2 if k == "psnr" else 3) for k in REPORTED)]
        for dataset, entry in report["per_dataset"].items()
        for pipeline, metrics in entry["pipelines"].items()
    ]
    lines += markdown_table(["dataset", "pipeline", *(LABELS[k] for k in REPORTED)], rows)
    if "temporal_lpips_var" in report:
        lines += ["", "Temporal LPIPS variance of the reconstructed clips (lower is steadier):", ""]
        lines += [f"- {p}: {_fmt(v, 5)}" for p, v in report["temporal_lpips_var"].items()]
    return "\n".join(lines) + "\n"


def preview_samples(samples: list[Sample], rows: int) -> list[Sample]:
    """Up to `rows` samples for the side-by-side picture, taken from each dataset in turn."""
    groups: dict[str, list[Sample]] = {}
    for s in samples:
        groups.setdefault(s.dataset, []).append(s)
    picked: list[Sample] = []
    for i in range(max((len(g) for g in groups.values()), default=0)):
        picked += [g[i] for g in groups.values() if i < len(g)]
    return picked[:rows]


def side_by_side(evaluation: Evaluation, cell: int = 160) -> Image.Image:
    """Columns Original / VLM-only / DINOv2-only / Hybrid, one row per preview sample (a clip shows its middle
    reconstructed frame beside the original frame it is scored against); a missing reconstruction is a grey cell."""
    samples = [s for s in evaluation.samples if any(k[0] == s.name for k in evaluation.previews)]
    font = ImageFont.load_default()
    header, gap = 22, 2
    pitch = cell + gap  # a grey gutter keeps white originals apart
    size = (pitch * len(COLUMNS) + gap, header + pitch * max(len(samples), 1) + gap)
    canvas = Image.new("RGB", size, (150, 150, 150))
    draw = ImageDraw.Draw(canvas)
    draw.rectangle((0, 0, size[0], header - 1), fill=(255, 255, 255))
    for c, (title, _) in enumerate(COLUMNS):
        draw.text((gap + c * pitch + 6, 5), title, fill=(0, 0, 0), font=font)
    for r, sample in enumerate(samples):
        y = header + gap + r * pitch
        shown = next(frames for (name, _), frames in evaluation.previews.items() if name == sample.name)
        j = shown.shape[0] // 2
        original = sample.frames[align(sample.frames.shape[0], shown.shape[0])[j]]
        for c, (_, pipeline) in enumerate(COLUMNS):
            frames = evaluation.previews.get((sample.name, pipeline)) if pipeline else None
            if pipeline is None:
                tile = resize_to(original, cell, cell)
            elif frames is not None:
                frame = Image.fromarray(frames[min(j, frames.shape[0] - 1)])
                tile = np.asarray(frame.resize((cell, cell), Image.Resampling.NEAREST))  # the decoded pixels as-is
            else:
                tile = np.full((cell, cell, 3), 200, np.uint8)
            x = gap + c * pitch
            canvas.paste(Image.fromarray(tile), (x, y))
            if pipeline is not None and frames is None:
                draw.text((x + 6, y + cell // 2), "no reconstruction", fill=(0, 0, 0), font=font)
        label = sample.name + (f" (frame {j + 1}/{shown.shape[0]})" if shown.shape[0] > 1 else "")
        draw.rectangle((gap, y, gap + int(draw.textlength(label, font=font)) + 8, y + 14), fill=(255, 255, 255))
        draw.text((gap + 4, y + 1), label, fill=(0, 0, 0), font=font)
    return canvas


def write(evaluation: Evaluation, out: Path) -> dict:
    """Write gate1.json, gate1.md and side_by_side.png into `out`; return the report."""
    out.mkdir(parents=True, exist_ok=True)
    report = build(evaluation)
    (out / "gate1.json").write_text(json.dumps(report, indent=2, allow_nan=False) + "\n")
    (out / "gate1.md").write_text(markdown(report))
    side_by_side(evaluation).save(out / "side_by_side.png")
    return report
