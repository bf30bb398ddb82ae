"""Contracts, profiles and the generated model repository."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from export.repository import RepositoryOptions, render
from hybrid.contracts import model_specs, round_up_frames, valid_frame_count
from hybrid.profiles import get_profile

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize(("frames", "ok"), [(1, True), (9, True), (17, True), (0, False), (4, False), (8, False)])
def test_valid_frame_count(frames: int, ok: bool) -> None:
    assert valid_frame_count(frames) is ok


@pytest.mark.parametrize(("count", "expected"), [(1, 1), (2, 9), (4, 9), (9, 9), (10, 17), (16, 17)])
def test_round_up_frames(count: int, expected: int) -> None:
    assert round_up_frames(count) == expected


def test_checked_in_repository_is_the_generated_one() -> None:
    """model_repository/ must be exactly `python -m export.repository` output: one definition of each thing."""
    files = render(RepositoryOptions())
    for rel, content in files.items():
        path = ROOT / "model_repository" / rel
        assert path.exists(), f"{rel} missing: run python -m export.repository"
        assert path.read_text() == content, f"{rel} differs from the generator: run python -m export.repository"
    on_disk = {
        str(p.relative_to(ROOT / "model_repository"))
        for p in (ROOT / "model_repository").rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    }
    assert on_disk == set(files)


def test_model_specs_follow_profile_widths() -> None:
    profile = get_profile("full", {"random_weights": True})
    specs = model_specs(profile.vlm.dim, profile.spatial.dim)
    assert specs["vlm_encoder"].outputs[0].dims == (-1, 3584)
    assert specs["spatial_encoder"].outputs[0].dims == (-1, 1024)
    assert specs["fusion"].outputs[0].dims == (64, 4096)


def test_profile_overrides() -> None:
    profile = get_profile("tiny", {"vlm": {"layer": "1"}, "decoder": {"height": 96}})
    assert profile.vlm.layer == "1" and profile.decoder.height == 96
    assert get_profile("full", {"random_weights": True, "spatial": {"variant": "vitg14"}}).spatial.dim == 1536
    with pytest.raises(ValueError, match="no setting"):
        get_profile("tiny", {"vlm": {"nonsense": 1}})
    with pytest.raises(ValueError, match="unknown profile"):
        get_profile("huge")


def test_profile_overrides_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HYBRID_PROFILE_OVERRIDES", json.dumps({"vlm": {"layer": "vision"}}))
    assert get_profile("tiny").vlm.layer == "vision"
