"""Each model family at the tiny profile: shapes, dtypes, layer choice, parameter counts, seed determinism."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from hybrid.decoder import build_decoder
from hybrid.fusion import build_fusion_module
from hybrid.pipeline import ReferencePipeline
from hybrid.preprocess import Preprocessor
from hybrid.profiles import get_profile
from hybrid.spatial import build_spatial
from hybrid.vlm import build_vlm
from tests import media_samples

TINY = get_profile("tiny")


@pytest.fixture(scope="module")
def preprocessor() -> Preprocessor:
    return Preprocessor()


def test_preprocess_image_and_video(preprocessor: Preprocessor) -> None:
    image = preprocessor(media_samples.frames(1))
    assert image.vlm_pixels.shape == (256, 1176) and image.vlm_pixels.dtype == np.float32
    assert image.vlm_grid_thw.tolist() == [1, 16, 16]
    assert image.spatial_pixels.shape == (1, 3, 224, 224)
    video = preprocessor(media_samples.frames(3))  # odd: Qwen pads to pairs, DINOv2 keeps every frame
    assert video.vlm_grid_thw.tolist() == [2, 16, 16]
    assert video.vlm_pixels.shape == (512, 1176)
    assert video.spatial_pixels.shape == (3, 3, 224, 224)
    # DINOv2 input is ImageNet-normalized: roughly zero-centred.
    assert abs(float(image.spatial_pixels.mean())) < 1.0


@pytest.mark.parametrize("layer", ["vision", "0", "1", "final"])
def test_vlm_layers(preprocessor: Preprocessor, layer: str) -> None:
    profile = dataclasses.replace(TINY, vlm=dataclasses.replace(TINY.vlm, layer=layer))
    vlm = build_vlm(profile)
    inputs = preprocessor(media_samples.frames(1))
    pixels = torch.from_numpy(inputs.vlm_pixels)[None]
    grid = torch.from_numpy(inputs.vlm_grid_thw)[None]
    out = vlm(pixels, grid)
    assert out.shape == (1, 64, TINY.vlm.dim) and out.dtype == torch.float32
    # Batching stacks items without changing any item's features.
    batched = vlm(pixels.repeat(2, 1, 1), grid.repeat(2, 1))
    torch.testing.assert_close(batched[1], out[0], atol=1e-5, rtol=1e-5)


def test_vlm_layers_differ_and_video_has_more_tokens(preprocessor: Preprocessor) -> None:
    outputs = {}
    for layer in ("vision", "1", "final"):
        profile = dataclasses.replace(TINY, vlm=dataclasses.replace(TINY.vlm, layer=layer))
        vlm = build_vlm(profile)
        inputs = preprocessor(media_samples.frames(4))
        outputs[layer] = vlm(torch.from_numpy(inputs.vlm_pixels)[None], torch.from_numpy(inputs.vlm_grid_thw)[None])
    assert outputs["final"].shape == (1, 128, TINY.vlm.dim)  # 2 temporal patches × 64 merged tokens
    assert not torch.allclose(outputs["vision"], outputs["1"])
    assert not torch.allclose(outputs["1"], outputs["final"])


def test_vlm_rejects_unknown_layer() -> None:
    with pytest.raises(ValueError, match="VLM layer"):
        build_vlm(dataclasses.replace(TINY, vlm=dataclasses.replace(TINY.vlm, layer="99")))


def test_spatial_encoder_frames(preprocessor: Preprocessor) -> None:
    encoder = build_spatial(TINY)
    pixels = torch.from_numpy(preprocessor(media_samples.frames(2)).spatial_pixels)[None]
    tokens = encoder(pixels)
    assert tokens.shape == (1, 2 * 256, TINY.spatial.dim) and tokens.dtype == torch.float32
    # Frame by frame: the second frame's tokens are that frame encoded alone.
    alone = encoder(pixels[:, 1:])
    torch.testing.assert_close(tokens[:, 256:], alone, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(("kind", "uses"), [("fusion", (1, 1)), ("vlm_adapter", (1, 0)), ("spatial_adapter", (0, 1))])
def test_fusion_heads(kind: str, uses: tuple[int, int]) -> None:
    head = build_fusion_module(kind, TINY)
    vlm = torch.randn(2, 64, TINY.vlm.dim)
    spatial = torch.randn(2, 512, TINY.spatial.dim)
    with torch.inference_mode():
        out = head(vlm, spatial)
        assert out.shape == (2, 64, 4096) and out.dtype == torch.float32
        # A head depends on exactly the streams it was built for.
        changed_vlm = head(torch.randn_like(vlm), spatial)
        changed_spatial = head(vlm, torch.randn_like(spatial))
    assert (not torch.allclose(out, changed_vlm)) == bool(uses[0])
    assert (not torch.allclose(out, changed_spatial)) == bool(uses[1])


def test_fusion_parameter_counts_at_full_size() -> None:
    full = get_profile("full", {"random_weights": True})
    counts = {
        k: build_fusion_module(k, dataclasses.replace(full, dtype="float32")).num_parameters()
        for k in ("fusion", "vlm_adapter", "spatial_adapter")
    }
    # d=1024: 4 blocks × (cross 4d² + self 4d² + MLP 8d²) = 67.1 M, input projections 4.7 M, output 4.2 M.
    assert 75e6 < counts["fusion"] < 78e6
    assert counts["vlm_adapter"] < counts["fusion"] and counts["spatial_adapter"] < counts["fusion"]
    assert counts["fusion"] - counts["vlm_adapter"] == 1024 * 1024 + 1024 + 256 * 1024 + 1024  # spatial proj+pos+type


def test_fusion_requires_its_streams() -> None:
    with pytest.raises(ValueError, match="spatial_tokens is required"):
        build_fusion_module("fusion", TINY)(torch.randn(1, 64, TINY.vlm.dim), None)


def test_seeded_weights_are_identical_across_builds() -> None:
    a, b = build_spatial(TINY), build_spatial(TINY)
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(pa, pb)


def test_decoder_frames_and_seed_determinism() -> None:
    decoder = build_decoder(TINY)
    conditioning = torch.randn(1, 64, 4096, generator=torch.Generator().manual_seed(0))
    one = decoder(conditioning, 1, 2, [7])
    assert one.shape == (1, 1, TINY.decoder.height, TINY.decoder.width, 3) and one.dtype == np.uint8
    nine = decoder(conditioning, 9, 2, [7])
    assert nine.shape[1] == 9
    np.testing.assert_array_equal(decoder(conditioning, 1, 2, [7]), one)
    assert not np.array_equal(decoder(conditioning, 1, 2, [8]), one)
    with pytest.raises(ValueError, match="8k\\+1"):
        decoder(conditioning, 4, 2, [7])


def test_reference_pipeline_all_pipelines() -> None:
    pipeline = ReferencePipeline.build(TINY, device="cpu")
    frames = media_samples.frames(1)
    conditionings = {p: pipeline.encode(frames, p) for p in ("hybrid", "vlm", "spatial")}
    for value in conditionings.values():
        assert value.shape == (1, 64, 4096) and value.dtype == np.float32
    assert not np.allclose(conditionings["hybrid"], conditionings["vlm"])
    video = pipeline.reconstruct(media_samples.frames(2), "hybrid", num_frames=9, steps=2, seed=0)
    assert video.shape == (9, TINY.decoder.height, TINY.decoder.width, 3)
