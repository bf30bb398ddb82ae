"""Each model family at the tiny profile: shapes, dtypes, layer choice, parameter counts, seed determinism."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from hybrid import samples
from hybrid.decoder import build_decoder
from hybrid.fusion import HEADS, build_fusion_module, build_head_module
from hybrid.pipeline import ReferencePipeline
from hybrid.preprocess import preprocess_frames, resize_frames
from hybrid.profiles import get_profile
from hybrid.spatial import build_spatial
from hybrid.vlm import build_vlm

TINY = get_profile("tiny")


def test_preprocess_image_and_video() -> None:
    image = preprocess_frames(samples.frames(1))
    assert image.vlm_pixels.shape == (1, 256, 1176) and image.vlm_pixels.dtype == torch.float32
    assert image.vlm_grid_thw.tolist() == [[1, 16, 16]]
    assert image.spatial_pixels.shape == (1, 1, 3, 224, 224)
    video = preprocess_frames(samples.frames(3))  # odd: Qwen pads to pairs, DINOv2 keeps every frame
    assert video.vlm_grid_thw.tolist() == [[2, 16, 16]]
    assert video.vlm_pixels.shape == (1, 512, 1176)
    assert video.spatial_pixels.shape == (1, 3, 3, 224, 224)
    # DINOv2 input is ImageNet-normalized: roughly zero-centred.
    assert abs(float(image.spatial_pixels.mean())) < 1.0


@pytest.mark.parametrize("count", [1, 2, 3, 9])
def test_preprocess_gives_what_qwens_own_processors_give(count: int) -> None:
    """The torch preprocessing (run on the GPU when served) against transformers' Qwen2-VL processors, which a
    real checkpoint was trained with: an image through the image processor, a clip through the video processor
    (an odd count padded with its last frame, as the image processor pads an image)."""
    from transformers import Qwen2VLImageProcessor, Qwen2VLVideoProcessor

    frames = resize_frames(samples.frames(count, seed=count))
    if count == 1:
        out = Qwen2VLImageProcessor(do_resize=False)(images=[frames[0]], return_tensors="np")
        pixels, grid = out["pixel_values"], out["image_grid_thw"]
    else:
        even = np.concatenate([frames, frames[-1:]]) if count % 2 else frames
        processor = Qwen2VLVideoProcessor(do_resize=False, do_sample_frames=False)
        out = processor(videos=[even], return_tensors="np", cap_pixels_per_frame=False)
        pixels, grid = out["pixel_values_videos"], out["video_grid_thw"]
    mine = preprocess_frames(frames)
    assert mine.vlm_grid_thw.tolist() == grid.tolist()
    np.testing.assert_allclose(mine.vlm_pixels[0].numpy(), pixels, atol=1e-6)
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    spatial = ((frames / 255.0 - mean) / std).transpose(0, 3, 1, 2)
    np.testing.assert_allclose(mine.spatial_pixels[0].numpy(), spatial, atol=1e-5)


def _vlm(features: str, layer: str = "final"):
    return build_vlm(dataclasses.replace(TINY, vlm=dataclasses.replace(TINY.vlm, features=features, layer=layer)))


@pytest.mark.parametrize(
    ("features", "layer"),
    [
        ("visual_tokens", "vision"),
        ("visual_tokens", "0"),
        ("visual_tokens", "final"),
        ("full_sequence", "1"),
        ("full_sequence", "final"),
    ],
)
def test_vlm_features(features: str, layer: str) -> None:
    vlm = _vlm(features, layer)
    inputs = preprocess_frames(samples.frames(1))
    pixels = inputs.vlm_pixels
    grid = inputs.vlm_grid_thw
    out = vlm(pixels, grid)
    length = TINY.vlm.sequence_length(64) if features == "full_sequence" else 64
    assert out.shape == (1, length, TINY.vlm.dim) and out.dtype == torch.float32
    # Batching stacks items without changing any item's features.
    batched = vlm(pixels.repeat(2, 1, 1), grid.repeat(2, 1))
    torch.testing.assert_close(batched[1], out[0], atol=1e-5, rtol=1e-5)


def test_full_sequence_is_the_chat_templated_prompt_with_every_position() -> None:
    """The lab's features: template + vision block + "Describe." + generation prompt, all positions returned."""
    before, after = TINY.vlm.template_ids["before"], TINY.vlm.template_ids["after"]
    assert TINY.vlm.features == "full_sequence" and get_profile("full").vlm.features == "full_sequence"
    assert TINY.vlm.sequence_length(64) == len(before) + 64 + 2 + len(after)
    inputs = preprocess_frames(samples.frames(1))
    args = (inputs.vlm_pixels, inputs.vlm_grid_thw)
    full, visual = _vlm("full_sequence")(*args), _vlm("visual_tokens")(*args)
    ids = _vlm("full_sequence").input_ids(1000, 64, 1, torch.device("cpu"))[0].tolist()
    assert ids == [*before, 1002, *[1000] * 64, 1003, *after]
    # The visual positions of the full sequence follow the system/user text, so their states differ from the
    # visual tokens seen alone (attention is causal: the text before them changes them).
    start = len(before) + 1
    assert not torch.allclose(full[:, start : start + 64], visual, atol=1e-4)


def test_full_sequence_of_a_video() -> None:
    inputs = preprocess_frames(samples.frames(4))
    out = _vlm("full_sequence")(inputs.vlm_pixels, inputs.vlm_grid_thw)
    assert out.shape == (1, TINY.vlm.sequence_length(128), TINY.vlm.dim)  # 2 temporal patches × 64 merged tokens


def test_vlm_layers_differ_and_video_has_more_tokens() -> None:
    outputs = {}
    for layer in ("vision", "1", "final"):
        vlm = _vlm("visual_tokens", layer)
        inputs = preprocess_frames(samples.frames(4))
        outputs[layer] = vlm(inputs.vlm_pixels, inputs.vlm_grid_thw)
    assert outputs["final"].shape == (1, 128, TINY.vlm.dim)  # 2 temporal patches × 64 merged tokens
    assert not torch.allclose(outputs["vision"], outputs["1"])
    assert not torch.allclose(outputs["1"], outputs["final"])


def test_vlm_rejects_vision_layer_with_full_sequence() -> None:
    with pytest.raises(ValueError, match="visual tokens only"):
        _vlm("full_sequence", "vision")


def test_vlm_rejects_unknown_layer() -> None:
    with pytest.raises(ValueError, match="VLM layer"):
        build_vlm(dataclasses.replace(TINY, vlm=dataclasses.replace(TINY.vlm, layer="99")))


def test_spatial_encoder_frames() -> None:
    encoder = build_spatial(TINY)
    pixels = preprocess_frames(samples.frames(2)).spatial_pixels
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


def test_head_parameter_counts_at_full_size() -> None:
    """The lab's modules at full size: HybridFusionModule 77,483,008 parameters, DINOv2Adapter 212,056,064
    (the counts of the lab's own full-size checkpoints, tests/data/lab_reference/manifest.json)."""
    full = get_profile("full", {"random_weights": True})
    with torch.device("meta"):
        counts = {k: sum(p.numel() for p in build_head_module(k, full).parameters()) for k in HEADS}
    assert counts["fusion"] == 77_483_008
    assert counts["spatial_adapter"] == 212_056_064
    # The VLM-only adapter is the same architecture over 3584-wide features: only dino_proj grows.
    assert counts["vlm_adapter"] - counts["spatial_adapter"] == (3584 - 1024) * 2048


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


@pytest.mark.parametrize(("batch", "frames", "steps"), [(1, 1, 4), (2, 9, 3)])
def test_decoder_loop_is_ltx_pipelines_loop(batch: int, frames: int, steps: int) -> None:
    """The decoder's own two-call denoising loop (graphable) gives diffusers' LTXPipeline's frames exactly."""
    decoder = build_decoder(TINY)
    conditioning = torch.randn(batch, 64, 4096, generator=torch.Generator().manual_seed(3))
    seeds = list(range(batch))
    with torch.inference_mode():
        frames_out = decoder.pipeline(
            prompt_embeds=conditioning,
            prompt_attention_mask=torch.ones(batch, 64, dtype=torch.long),
            guidance_scale=1.0,
            num_frames=frames,
            height=TINY.decoder.height,
            width=TINY.decoder.width,
            num_inference_steps=steps,
            generator=[torch.Generator().manual_seed(s) for s in seeds],
            output_type="pt",
        ).frames
    expected = (frames_out.permute(0, 1, 3, 4, 2).float().clamp(0, 1) * 255).round().to(torch.uint8).numpy()
    np.testing.assert_array_equal(decoder(conditioning, frames, steps, seeds), expected)


def test_reference_pipeline_all_pipelines() -> None:
    pipeline = ReferencePipeline.build(TINY, device="cpu")
    frames = samples.frames(1)
    conditionings = {p: pipeline.encode(frames, p) for p in ("hybrid", "vlm", "spatial")}
    for value in conditionings.values():
        assert value.shape == (1, 64, 4096) and value.dtype == np.float32
    assert not np.allclose(conditionings["hybrid"], conditionings["vlm"])
    video = pipeline.reconstruct(samples.frames(2), "hybrid", num_frames=9, steps=2, seed=0)
    assert video.shape == (9, TINY.decoder.height, TINY.decoder.width, 3)


def test_preprocess_model_refuses_more_frames_than_served() -> None:
    """A client calling Triton directly meets the gateway's bound too (Triton itself checks shape and dtype)."""
    from hybrid.contracts import MAX_INPUT_FRAMES
    from hybrid.serving import ClientError, PreprocessModel

    model = PreprocessModel()
    frames = torch.zeros(1, MAX_INPUT_FRAMES + 1, 224, 224, 3, dtype=torch.uint8)
    with pytest.raises(ClientError, match=f"1 to {MAX_INPUT_FRAMES} are served"):
        model.forward({"FRAMES": frames})
    out = model.forward({"FRAMES": frames[:, :2]})
    assert out["VLM_PIXELS"].shape == (1, 256, 1176) and out["SPATIAL_PIXELS"].shape == (1, 2, 3, 224, 224)
