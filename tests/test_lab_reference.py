"""The lab's own modules: their checkpoints load strictly and reproduce their test vectors; the import command
checks, converts and serves them.

`tests/data/lab_reference/` is a copy of the lab's test vectors (`shared/lab-reference/`): state dicts saved by the
lab's `HybridFusionModule` and `DINOv2Adapter` at tiny dimensions, fixed inputs, the outputs their classes give in
eval mode, and the full-size key lists.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from hybrid.checkpoints import CheckpointError, check_state_dict, import_checkpoints, main, read_state_dict
from hybrid.fusion import HEADS, DINOv2Adapter, HybridFusionModule, build_fusion_module, build_head_module, pad_tokens
from hybrid.profiles import get_profile

DATA = Path(__file__).parent / "data" / "lab_reference"
MANIFEST = json.loads((DATA / "manifest.json").read_text())
TINY = get_profile("tiny")
CLASSES = {"fusion_tiny": HybridFusionModule, "dinov2_adapter_tiny": DINOv2Adapter}


def _lab_module(name: str, suffix: str) -> torch.nn.Module:
    module = CLASSES[name](**MANIFEST[name]["config"]).eval()
    module.load_state_dict(read_state_dict(DATA / f"{name}{suffix}"), strict=True)
    return module


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
@pytest.mark.parametrize("name", ["fusion_tiny", "dinov2_adapter_tiny"])
def test_lab_checkpoints_reproduce_the_lab_outputs(name: str, suffix: str) -> None:
    module = _lab_module(name, suffix)
    vectors = np.load(DATA / f"{name}_io.npz")
    inputs = [torch.from_numpy(vectors[k]) for k in sorted(vectors.files) if k.startswith("input")]
    with torch.inference_mode():
        out = module(*inputs).numpy()
    assert out.shape == vectors["output"].shape
    assert float(np.abs(out - vectors["output"]).max()) <= 1e-5


@pytest.mark.parametrize(("name", "kind"), [("fusion_full", "fusion"), ("dinov2_adapter_full", "spatial_adapter")])
def test_full_size_modules_have_the_lab_keys_and_shapes(name: str, kind: str) -> None:
    with torch.device("meta"):
        module = build_head_module(kind, get_profile("full"))
    ours = {k: list(v.shape) for k, v in module.state_dict().items()}
    assert ours == MANIFEST[name]["state_dict"]
    assert sum(p.numel() for p in module.parameters()) == MANIFEST[name]["parameters"]


def test_clip_tokens_get_the_frame_positions_per_frame() -> None:
    """Several frames: the same 16×16 positions for every frame; the first frame sees exactly the lab's."""
    module = _lab_module("fusion_tiny", ".pt")
    tokens = torch.randn(1, 3 * 256, 64)
    with torch.inference_mode():
        out = module.add_positions(tokens)
        for frame in range(3):
            frame_tokens = tokens[:, frame * 256 : (frame + 1) * 256]
            torch.testing.assert_close(out[:, frame * 256 : (frame + 1) * 256], frame_tokens + module.spatial_pos)
        # The lab's "first n tokens" rule for fewer than one frame of tokens.
        torch.testing.assert_close(module.add_positions(tokens[:, :10]), tokens[:, :10] + module.spatial_pos[:10])
    with pytest.raises(ValueError, match="whole frames"):
        module.add_positions(torch.randn(1, 300, 64))


@pytest.mark.parametrize("kind", ["fusion", "vlm_adapter", "spatial_adapter"])
def test_padded_batch_equals_each_item_alone(kind: str) -> None:
    """An image and a clip in one batch: padding is masked out, so each result is the one it has alone."""
    head = build_fusion_module(kind, TINY)
    vlm = [torch.randn(85, TINY.vlm.dim), torch.randn(149, TINY.vlm.dim)]
    spatial = [torch.randn(256, TINY.spatial.dim), torch.randn(512, TINY.spatial.dim)]
    (vlm_batch, vlm_mask), (spatial_batch, spatial_mask) = pad_tokens(vlm), pad_tokens(spatial)
    assert vlm_mask is not None and vlm_mask.sum(1).tolist() == [85, 149]
    with torch.inference_mode():
        batched = head(vlm_batch, spatial_batch, vlm_mask, spatial_mask)
        for i in range(2):
            alone = head(vlm[i][None], spatial[i][None])
            torch.testing.assert_close(batched[i : i + 1], alone, atol=1e-5, rtol=1e-4)
    assert pad_tokens([torch.randn(4, 8), torch.randn(4, 8)])[1] is None  # equal lengths: no mask, no padding


def _tiny_state_dict(kind: str, seed: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    return build_head_module(kind, TINY).state_dict()


def _saved_like_the_lab(directory: Path, seed: int) -> dict[str, Path]:
    """Tiny-profile heads with fresh weights, saved as the lab saves them (`torch.save(model.state_dict())`)."""
    sources = {}
    for i, kind in enumerate(HEADS):
        sources[kind] = directory / f"{kind}_best.pt"
        torch.save(_tiny_state_dict(kind, seed + i), sources[kind])
    return sources


def test_import_round_trip_serves_the_same_weights(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """.pt (as the lab saves) → import → safetensors + override → the served head holds exactly those weights."""
    sources = _saved_like_the_lab(tmp_path, seed=100)
    written = import_checkpoints(sources, TINY, tmp_path / "weights")
    override_file = tmp_path / "weights" / "profile-overrides.json"
    assert json.loads(override_file.read_text()) == {
        "fusion": {"checkpoint": str(written["fusion"])},
        "adapter": {
            "vlm_checkpoint": str(written["vlm_adapter"]),
            "spatial_checkpoint": str(written["spatial_adapter"]),
        },
    }
    monkeypatch.setenv("HYBRID_PROFILE_OVERRIDES", str(override_file))  # a path works as well as inline JSON
    profile = get_profile("tiny")
    for kind, source in sources.items():
        served = build_fusion_module(kind, profile).module.state_dict()
        original = torch.load(source, weights_only=True)
        assert served.keys() == original.keys()
        assert all(torch.equal(served[k], original[k]) for k in original)


def test_import_rejects_a_wrong_file_naming_the_first_mismatch(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    # The lab's tiny fusion has 8 output queries; the tiny profile's has 64.
    with pytest.raises(CheckpointError, match=r"key 'output_queries' has shape \[8, 64\].*expects \[64, 64\]"):
        check_state_dict("fusion", read_state_dict(DATA / "fusion_tiny.pt"), TINY)
    # An adapter file given as the fusion module: its first missing key is named.
    with pytest.raises(CheckpointError, match="fusion: missing key 'spatial_pos'"):
        check_state_dict("fusion", _tiny_state_dict("spatial_adapter", 0), TINY)
    extra = {**_tiny_state_dict("fusion", 0), "head.weight": torch.zeros(1)}
    with pytest.raises(CheckpointError, match="unexpected key 'head.weight'"):
        check_state_dict("fusion", extra, TINY)
    # The command: exit 2, the message on stderr, nothing written.
    out = tmp_path / "weights"
    assert main(["--profile", "tiny", "--out", str(out), "--fusion", str(DATA / "fusion_tiny.pt")]) == 2
    assert "output_queries" in capsys.readouterr().err and not out.exists()


def test_import_never_unpickles_arbitrary_objects(tmp_path: Path) -> None:
    """A .pt holding anything but tensors is refused by torch.load(weights_only=True), before any code runs."""
    evil = tmp_path / "evil.pt"
    torch.save({"model": subprocess.Popen}, evil)  # a class reference: unpickling it would import and call
    with pytest.raises(CheckpointError, match="not a plain torch state dict"):
        read_state_dict(evil)


def test_import_command_line(tmp_path: Path) -> None:
    source = tmp_path / "dinov2_adapter_best.pt"
    torch.save(_tiny_state_dict("spatial_adapter", 7), source)
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "hybrid.checkpoints",
            "--profile",
            "tiny",
            "--out",
            str(tmp_path / "w"),
            "--spatial-adapter",
            str(source),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "w" / "spatial_adapter.safetensors").exists()
    assert "HYBRID_PROFILE_OVERRIDES=" in done.stdout


@pytest.mark.integration
def test_the_service_serves_imported_checkpoints(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The whole path a lab user takes: their .pt files → import → HYBRID_PROFILE_OVERRIDES → the real stack's
    /encode answers with their weights (equal to the reference pipeline holding them, not to the seeded ones)."""
    import io

    import httpx

    from hybrid import samples
    from hybrid.media import MediaLimits, decode_media
    from hybrid.pipeline import ReferencePipeline
    from service.local_stack import running_stack

    sources = _saved_like_the_lab(tmp_path, seed=200)
    import_checkpoints(sources, TINY, tmp_path / "weights")
    overrides = str(tmp_path / "weights" / "profile-overrides.json")
    data = samples.png(seed=8)
    frames = decode_media(data, MediaLimits()).frames
    with running_stack(tmp_path / "service.log", {"HYBRID_PROFILE_OVERRIDES": overrides}) as stack:
        served = {
            pipeline: np.load(
                io.BytesIO(
                    httpx.post(
                        f"{stack.gateway_url}/encode",
                        params={"pipeline": pipeline},
                        files={"file": ("in.png", data)},
                        timeout=120,
                    ).content
                )
            )
            for pipeline in ("hybrid", "vlm", "spatial")
        }
    seeded = ReferencePipeline.build(get_profile("tiny"), device="cpu")
    monkeypatch.setenv("HYBRID_PROFILE_OVERRIDES", overrides)
    imported = ReferencePipeline.build(get_profile("tiny"), device="cpu")
    for pipeline, conditioning in served.items():
        np.testing.assert_allclose(conditioning, imported.encode(frames, pipeline), atol=1e-4, rtol=1e-4)
        assert np.abs(conditioning - seeded.encode(frames, pipeline)).max() > 1e-2, pipeline
