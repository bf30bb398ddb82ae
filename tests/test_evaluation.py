"""Gate-1 evaluation: the lab's metrics on cases with known answers, LPIPS only from weights on disk, deterministic
synthetic sets, the report's shape, and `python -m evaluation` against the real tiny stack."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy.ndimage import gaussian_filter

from evaluation import datasets, metrics, report
from evaluation.__main__ import main
from evaluation.report import Evaluation, Result
from hybrid.media import MediaLimits, decode_media, encode_frames
from service.local_stack import ROOT, Stack, free_port

RED = (255, 0, 0)


def canvas(height: int = 100, width: int = 100) -> np.ndarray:
    return np.full((height, width, 3), 255, np.uint8)


def with_square(top: int, left: int, side: int = 40, color: tuple[int, int, int] = RED) -> np.ndarray:
    frame = canvas()
    frame[top : top + side, left : left + side] = color
    return frame


def circle_frame() -> np.ndarray:
    return datasets.shapes(1, seed=42)[0].frames[0]  # shape 0 of the lab's set is a red circle


def noisy(frame: np.ndarray, sigma: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.clip(frame + rng.normal(0, sigma, frame.shape), 0, 255).astype(np.uint8)


# --- metrics on known cases -------------------------------------------------------------------------------------


def test_identity_scores_perfectly() -> None:
    frame = circle_frame()
    assert metrics.ssim(frame, frame) == pytest.approx(1.0)
    assert metrics.spatial_iou(frame, frame) == 1.0
    assert metrics.edge_f1(frame, frame) == 1.0
    assert metrics.mse(frame, frame) == 0.0
    assert metrics.psnr_from_mse(0.0) == metrics.PSNR_CAP_DB


@pytest.mark.parametrize(("dy", "dx", "expected"), [(0, 8, 32 / 48), (4, 8, 32 * 36 / (2 * 1600 - 32 * 36))])
def test_shifted_square_has_its_known_iou(dy: int, dx: int, expected: float) -> None:
    # A 40×40 square moved by (dy, dx): overlap (40−dy)(40−dx), union 2·40² − overlap.
    original, shifted = with_square(30, 20), with_square(30 + dy, 20 + dx)
    assert metrics.spatial_iou(original, shifted) == pytest.approx(expected)
    assert metrics.spatial_iou(original, canvas()) == 0.0


def test_non_white_threshold_is_on_the_channel_mean() -> None:
    # Channel mean 0.95·255 = 242.25: a pixel of mean 242 is an object pixel, one of mean 243 is background.
    assert metrics.non_white_mask(np.array([[[242, 242, 242]]], np.uint8)).all()
    assert not metrics.non_white_mask(np.array([[[243, 243, 243]]], np.uint8)).any()
    # Pure yellow (255, 255, 0) has mean 170: an object, although its brightest channels are white.
    assert metrics.non_white_mask(np.array([[[255, 255, 0]]], np.uint8)).all()


def test_all_white_pair_follows_the_lab_conventions() -> None:
    white = canvas()
    assert metrics.ssim(white, white) == pytest.approx(1.0)
    assert metrics.spatial_iou(white, white) == 1.0  # both masks empty: the lab counts 1.0
    assert metrics.edge_f1(white, white) == 0.0  # no edge anywhere: precision and recall 0, so F1 0
    assert metrics.psnr_from_mse(metrics.mse(white, white)) == metrics.PSNR_CAP_DB


def test_mixed_sobel_marks_a_square_only_near_its_corners() -> None:
    edges = metrics.edge_map(with_square(30, 20))
    rows, cols = np.nonzero(edges)
    assert len(rows) > 0
    corners = np.array([(30, 20), (30, 60), (70, 20), (70, 60)])
    distance = np.abs(np.stack([rows, cols], 1)[:, None, :] - corners[None]).max(-1).min(1)
    assert distance.max() <= 2


def test_edge_f1_counts_precision_and_recall() -> None:
    original = with_square(30, 20)
    truth = metrics.edge_map(original)
    half = original.copy()
    half[:, 50:] = 255  # the right half of the square gone: its two right corners' edges disappear
    predicted = metrics.edge_map(half)
    tp = int((truth & predicted).sum())
    precision, recall = tp / predicted.sum(), tp / truth.sum()
    assert metrics.edge_f1(original, half) == pytest.approx(2 * precision * recall / (precision + recall))
    assert 0 < metrics.edge_f1(original, half) < 1


def test_psnr_of_a_known_error() -> None:
    black, dark = np.zeros((8, 8, 3), np.uint8), np.full((8, 8, 3), 51, np.uint8)  # 51/255 = 0.2
    assert metrics.mse(black, dark) == pytest.approx(0.04)
    assert metrics.psnr_from_mse(0.04) == pytest.approx(10 * np.log10(25))


def _ssim_by_formula(a: np.ndarray, b: np.ndarray, truncate: float) -> float:
    """SSIM from its definition on [0, 1] channel-mean images, Gaussian σ 1.5, averaged over the whole map."""
    x, y = a.astype(float).mean(-1) / 255, b.astype(float).mean(-1) / 255

    def blur(v: np.ndarray) -> np.ndarray:
        return gaussian_filter(v, 1.5, truncate=truncate)

    mx, my = blur(x), blur(y)
    vx, vy, cov = blur(x * x) - mx**2, blur(y * y) - my**2, blur(x * y) - mx * my
    c1, c2 = 0.01**2, 0.03**2
    return float((((2 * mx * my + c1) * (2 * cov + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2))).mean())


def test_ssim_averages_the_whole_map_like_the_lab() -> None:
    original = metrics.resize_to(circle_frame(), 64, 64)
    reconstruction = noisy(original, 30)
    ours = metrics.ssim(original, reconstruction)
    assert ours == pytest.approx(_ssim_by_formula(original, reconstruction, truncate=3.5), abs=1e-10)
    assert ours == pytest.approx(_ssim_by_formula(original, reconstruction, truncate=4.0), abs=5e-3)
    assert 0 < ours < 0.9


def test_original_is_compared_at_the_reconstruction_size() -> None:
    original = circle_frame()  # 224×224
    small = metrics.resize_to(original, 64, 64)
    values = metrics.frame_metrics(original, small, lpips=None)
    assert values["ssim"] == pytest.approx(1.0) and values["spatial_iou"] == 1.0 and values["mse"] == 0.0
    assert "lpips" not in values


def test_frames_are_paired_at_the_same_relative_time() -> None:
    assert metrics.align(9, 9) == list(range(9))
    assert metrics.align(4, 9) == [0, 0, 1, 1, 2, 2, 2, 3, 3]
    assert metrics.align(1, 9) == [0] * 9
    assert metrics.align(9, 1) == [0]


def test_clip_metrics_average_over_aligned_frames() -> None:
    clip = datasets.moving(1, seed=3)[0].frames  # 9 frames, a shape moving
    reconstruction = np.stack([metrics.resize_to(f, 64, 64) for f in clip])
    same = metrics.sample_metrics(clip, reconstruction, lpips=None)
    assert same["ssim"] == pytest.approx(1.0) and same["spatial_iou"] == 1.0 and same["psnr"] == metrics.PSNR_CAP_DB
    assert same["lpips"] is None and same["temporal_lpips_var"] is None
    # Reversed in time, every frame but the middle one is compared with a frame where the shape sits elsewhere.
    reversed_values = metrics.sample_metrics(clip, reconstruction[::-1], lpips=None)
    middle = metrics.spatial_iou(reconstruction[4], reconstruction[4])
    assert reversed_values["spatial_iou"] < (8 * 1.0 + middle) / 9


# --- LPIPS: only from weights on disk ---------------------------------------------------------------------------


@pytest.fixture
def torch_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    import torch

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))

    def no_download(*args: object, **kwargs: object) -> None:
        raise AssertionError("the evaluation must never download weights")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_download)
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_download)
    return tmp_path


def write_alexnet_features(torch_home: Path, drop: str | None = None) -> Path:
    """A random-weight AlexNet `features.*` state dict in torchvision's file name: the layout LPIPS loads."""
    import torch
    import torchvision

    torch.manual_seed(0)
    state = {k: v for k, v in torchvision.models.alexnet().state_dict().items() if k.startswith("features.")}
    state.pop(drop, None)
    path = torch_home / "hub" / "checkpoints" / metrics.ALEXNET_CHECKPOINT
    path.parent.mkdir(parents=True)
    torch.save(state, path)
    return path


def test_lpips_without_backbone_weights_is_unavailable_with_the_reason(torch_home: Path) -> None:
    lpips = metrics.Lpips()
    assert not lpips.available
    expected = torch_home / "hub" / "checkpoints" / metrics.ALEXNET_CHECKPOINT
    assert str(expected) in lpips.reason and "never downloads" in lpips.reason
    frame = circle_frame()
    assert metrics.sample_metrics(frame[None], frame[None], lpips)["lpips"] is None


def test_lpips_rejects_a_file_that_is_not_alexnet(torch_home: Path) -> None:
    write_alexnet_features(torch_home, drop="features.8.weight")
    lpips = metrics.Lpips()
    assert not lpips.available and "features.8.weight" in lpips.reason


def test_lpips_from_local_backbone_and_its_temporal_variance(torch_home: Path) -> None:
    write_alexnet_features(torch_home)
    lpips = metrics.Lpips()
    assert lpips.available, lpips.reason
    frame = metrics.resize_to(circle_frame(), 64, 64)
    assert lpips.distance(frame, frame) == pytest.approx(0.0, abs=1e-7)
    assert lpips.distance(frame, noisy(frame, 40)) > 0
    assert lpips.temporal_variance(np.stack([frame] * 5)) == pytest.approx(0.0, abs=1e-12)
    clip = np.stack([frame, frame, noisy(frame, 10), noisy(frame, 60, seed=1)])
    steps = [lpips.distance(clip[t], clip[t + 1]) for t in range(3)]
    assert lpips.temporal_variance(clip) == pytest.approx(np.var(steps))
    assert lpips.temporal_variance(clip[:1]) is None
    values = metrics.sample_metrics(clip, clip, lpips)
    assert values["lpips"] == pytest.approx(0.0, abs=1e-7)
    assert values["temporal_lpips_var"] == pytest.approx(np.var(steps))


# --- datasets ---------------------------------------------------------------------------------------------------


def test_synthetic_sets_are_deterministic() -> None:
    first, again, other = (datasets.generate("all", 3, seed) for seed in (7, 7, 8))
    assert [s.name for s in first] == [f"{d}-{i:03d}" for d in datasets.DATASETS for i in range(3)]
    for a, b in zip(first, again, strict=True):
        assert a.data == b.data and np.array_equal(a.frames, b.frames) and a.boxes == b.boxes
    assert any(not np.array_equal(a.frames, b.frames) for a, b in zip(first, other, strict=True))


def test_shapes_follow_the_lab_conventions() -> None:
    for i, sample in enumerate(datasets.shapes(6, seed=42)):
        frame = sample.frames[0]
        assert frame.shape == (224, 224, 3) and tuple(frame[0, 0]) == (255, 255, 255)
        colors = {tuple(c) for c in frame.reshape(-1, 3)} - {(255, 255, 255)}
        assert colors == {datasets.COLORS[i % 6]}
        ((x0, y0, x1, y1),) = sample.boxes[0]
        ys, xs = np.nonzero(metrics.non_white_mask(frame))
        assert (xs.min(), ys.min()) == (round(x0 * 224), round(y0 * 224))  # the box bounds the drawn shape
        assert x0 >= 10 / 224 and x1 <= 1 - 10 / 224  # margin = size + 10 around the centre


def test_moving_clips_and_multi_scenes() -> None:
    for clip in datasets.moving(3, seed=1):
        assert clip.frames.shape == (datasets.CLIP_FRAMES, 224, 224, 3) and clip.is_clip
        assert len(clip.boxes) == datasets.CLIP_FRAMES and clip.boxes[0] != clip.boxes[-1]
    for scene in datasets.multi(5, seed=1):
        boxes = scene.boxes[0]
        assert 2 <= len(boxes) <= 4
        for i, a in enumerate(boxes):
            for b in boxes[i + 1 :]:
                assert a[2] <= b[0] or b[2] <= a[0] or a[3] <= b[1] or b[3] <= a[1], "objects overlap"


def test_uploads_decode_to_exactly_the_compared_frames() -> None:
    for sample in datasets.generate("all", 2, seed=5):
        assert np.array_equal(decode_media(sample.data, MediaLimits()).frames, sample.frames), sample.name


def test_folder_inputs_skip_what_the_gateway_would_refuse(tmp_path: Path) -> None:
    frames = datasets.moving(1, seed=0)[0].frames
    (tmp_path / "a.png").write_bytes(encode_frames(frames[:1], "png"))
    (tmp_path / "b.gif").write_bytes(encode_frames(frames[:4], "gif"))
    (tmp_path / "c.txt").write_text("not media")
    (tmp_path / "d.webp").write_bytes(encode_frames(np.concatenate([frames, frames]), "webp"))  # 18 > 16 frames
    samples, skipped = datasets.load_folder(tmp_path, n=None)
    assert [s.name for s in samples] == ["a.png", "b.gif"] and samples[1].frames.shape[0] == 4
    assert {s.filename for s in skipped} == {"c.txt", "d.webp"}
    assert any("frames" in s.reason for s in skipped)
    assert [s.name for s in datasets.load_folder(tmp_path, n=1)[0]] == ["a.png"]


# --- the report ---------------------------------------------------------------------------------------------------


def test_gate1_verdicts() -> None:
    passing = {"lpips": 0.2, "ssim": 0.8, "spatial_iou": 0.7, "edge_f1": 0.6, "psnr": 20.0}
    assert report.check(passing)["verdict"] == "pass"
    assert report.check(passing | {"ssim": 0.75})["verdict"] == "fail"  # the thresholds are strict
    assert report.check(passing | {"lpips": None}) == {
        "verdict": "incomplete",
        "checks": {"lpips": None, "ssim": True, "spatial_iou": True, "edge_f1": True},
    }
    assert report.check(passing | {"lpips": None, "edge_f1": 0.1})["verdict"] == "fail"
    assert report.check(dict.fromkeys(passing))["verdict"] == "no data"


def test_report_files_and_shape(tmp_path: Path) -> None:
    samples = datasets.generate("shapes", 2, 42) + datasets.generate("moving", 1, 42)
    results, previews = [], {}
    for s in samples:
        perfect = np.stack([metrics.resize_to(f, 64, 64) for f in s.frames])
        results.append(Result(s, "hybrid", 200, metrics.sample_metrics(s.frames, perfect, None), None, len(perfect)))
        results.append(Result(s, "vlm", 422, error="corrupt_media: truncated"))
        previews[(s.name, "hybrid")] = perfect
    evaluation = Evaluation(samples, ["hybrid", "vlm"], results, "no weights", previews, {"url": "http://x"})
    written = report.write(evaluation, tmp_path)

    data = json.loads((tmp_path / "gate1.json").read_text())
    assert data == written and data["n"] == 3
    assert set(data["pipelines"]) == {"hybrid", "vlm"}
    for values in data["pipelines"].values():
        assert set(values) == {"lpips", "ssim", "psnr", "spatial_iou", "edge_f1"}
    assert data["pipelines"]["hybrid"]["ssim"] == pytest.approx(1.0) and data["pipelines"]["hybrid"]["lpips"] is None
    assert data["pipelines"]["vlm"] == dict.fromkeys(report.REPORTED)
    assert data["thresholds"]["lpips"] == {"op": "<", "value": 0.35}
    assert data["requests"]["vlm"] == {"ok": 0, "failed": 3, "errors": {"422": 3}}
    assert data["gate1"]["hybrid"]["verdict"] == "incomplete" and data["gate1"]["vlm"]["verdict"] == "no data"
    assert data["per_dataset"]["moving"]["n"] == 1 and data["lpips_unavailable_reason"] == "no weights"
    assert data["samples"][1]["pipelines"]["vlm"] == {"status": 422, "error": "corrupt_media: truncated"}

    table = (tmp_path / "gate1.md").read_text()
    assert "| pipeline | LPIPS (< 0.35) | SSIM (> 0.75) | spatial IoU (> 0.6) | edge F1 (> 0.5) |" in table
    assert "| hybrid | n/a | 1.000 pass | 1.000 pass |" in table and "**incomplete**" in table
    assert "LPIPS unavailable: no weights" in table

    picture = Image.open(tmp_path / "side_by_side.png")
    assert picture.size == (4 * 162 + 2, 22 + 3 * 162 + 2)  # four columns, one row per sample with a preview


def test_cli_refuses_unknown_pipelines_and_unreachable_gateways(tmp_path: Path, capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--pipelines", "hybrid,clip", "--out", str(tmp_path)])
    assert exc.value.code == 2
    assert main(["--url", f"http://127.0.0.1:{free_port()}", "--out", str(tmp_path), "--n", "1"]) == 2
    assert "cannot reach the gateway" in capsys.readouterr().err
    assert not (tmp_path / "gate1.json").exists()


# --- the real tiny stack ----------------------------------------------------------------------------------------


def run_evaluation(stack: Stack, out: Path, torch_home: Path, *args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "evaluation", "--url", stack.gateway_url, "--out", str(out), *args]
    env = {**os.environ, "TORCH_HOME": str(torch_home)}
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.integration
@pytest.mark.parametrize("backbone", [False, True], ids=["offline-no-lpips", "local-alexnet"])
def test_evaluation_against_the_tiny_stack(stack: Stack, tmp_path: Path, backbone: bool) -> None:
    home = tmp_path / "torch"
    if backbone:
        write_alexnet_features(home)
    out = tmp_path / "gate1"
    done = run_evaluation(stack, out, home, "--n", "2")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "gate1: 100%" in done.stderr  # the progress bar, on stderr

    data = json.loads((out / "gate1.json").read_text())
    assert data["n"] == 6 and data["service"]["profile"] == "tiny"
    assert set(data["pipelines"]) == {"hybrid", "vlm", "spatial"}
    assert set(data["thresholds"]) == {"lpips", "ssim", "spatial_iou", "edge_f1"}
    for pipeline, values in data["pipelines"].items():
        assert set(values) == {"lpips", "ssim", "psnr", "spatial_iou", "edge_f1"}
        assert data["requests"][pipeline] == {"ok": 6, "failed": 0, "errors": {}}
        assert -1 <= values["ssim"] <= 1 and 0 <= values["spatial_iou"] <= 1 and 0 <= values["edge_f1"] <= 1
        assert 0 < values["psnr"] < metrics.PSNR_CAP_DB
        # Random tiny weights reconstruct noise: nothing near Gate 1.
        assert data["gate1"][pipeline]["verdict"] == "fail" and data["gate1"][pipeline]["checks"]["ssim"] is False
        if backbone:
            assert values["lpips"] > 0 and data["temporal_lpips_var"][pipeline] >= 0
        else:
            assert values["lpips"] is None and data["temporal_lpips_var"][pipeline] is None
    assert (data["lpips_unavailable_reason"] is None) == backbone
    outputs = {s["dataset"]: s["pipelines"]["hybrid"] for s in data["samples"]}
    assert outputs["shapes"]["frames_out"] == 1 and outputs["moving"]["frames_out"] == 9
    assert outputs["multi"]["size_out"] == [64, 64]  # the tiny profile decodes 64×64

    table = (out / "gate1.md").read_text()
    for pipeline in ("hybrid", "vlm", "spatial"):
        assert f"| {pipeline} |" in table
    assert Image.open(out / "side_by_side.png").size == (4 * 162 + 2, 22 + 6 * 162 + 2)


@pytest.mark.integration
def test_refused_requests_are_counted_and_all_failing_exits_1(stack: Stack, tmp_path: Path) -> None:
    out = tmp_path / "gate1"
    done = run_evaluation(stack, out, tmp_path, "--dataset", "shapes", "--n", "1", "--steps", "9999")
    assert done.returncode == 1 and "requests failed" in done.stderr
    data = json.loads((out / "gate1.json").read_text())
    assert data["requests"]["hybrid"] == {"ok": 0, "failed": 1, "errors": {"400": 1}}
    assert data["samples"][0]["pipelines"]["vlm"]["error"].startswith("invalid_parameter: steps")
