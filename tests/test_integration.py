"""The real stack on loopback: `python -m service` with its embedded tritonserver, real media, every pipeline
and endpoint, bad inputs answered with 4xx while the service keeps answering, and parity with the in-process
reference pipeline."""

from __future__ import annotations

import asyncio
import io

import httpx
import numpy as np
import pytest
from PIL import Image

from hybrid import samples
from hybrid.media import MediaLimits, decode_media
from hybrid.pipeline import ReferencePipeline
from hybrid.profiles import get_profile
from service.local_stack import Stack

pytestmark = pytest.mark.integration
PIPELINES = ("hybrid", "vlm", "spatial")


def post(stack: Stack, path: str, data: bytes, name: str = "input.png", **params: object) -> httpx.Response:
    return httpx.post(f"{stack.gateway_url}{path}", params=params, files={"file": (name, data)}, timeout=300)


@pytest.fixture(scope="module")
def reference() -> ReferencePipeline:
    return ReferencePipeline.build(get_profile("tiny"), device="cpu")


def test_ready_and_health(stack: Stack) -> None:
    ready = httpx.get(f"{stack.gateway_url}/readyz")
    assert ready.status_code == 200 and ready.json()["ready"] is True
    assert httpx.get(f"{stack.gateway_url}/healthz").json() == {"status": "alive"}
    assert httpx.get(f"{stack.gateway_url}/openapi.json").json()["paths"].keys() >= {"/reconstruct", "/encode"}


@pytest.mark.parametrize("pipeline", PIPELINES)
def test_reconstruct_image_to_png(stack: Stack, pipeline: str) -> None:
    reply = post(stack, "/reconstruct", samples.png(), pipeline=pipeline)
    assert reply.status_code == 200, reply.text
    assert reply.headers["content-type"] == "image/png"
    assert reply.headers["x-pipeline"] == pipeline
    assert "triton;dur=" in reply.headers["server-timing"] and "gateway;dur=" in reply.headers["server-timing"]
    image = Image.open(io.BytesIO(reply.content))
    assert image.format == "PNG" and image.size == (64, 64)


def test_nine_frames_as_webp(stack: Stack) -> None:
    reply = post(stack, "/reconstruct", samples.jpeg(), name="in.jpg", frames=9, format="webp")
    assert reply.status_code == 200, reply.text
    image = Image.open(io.BytesIO(reply.content))
    assert image.format == "WEBP" and image.n_frames == 9


@pytest.mark.parametrize(("fmt", "mime"), [("gif", "image/gif"), ("mp4", "video/mp4"), (None, "image/webp")])
def test_gif_in_gives_frames_out(stack: Stack, fmt: str | None, mime: str) -> None:
    params = {"pipeline": "vlm"} | ({"format": fmt} if fmt else {})
    reply = post(stack, "/reconstruct", samples.gif(4), name="in.gif", **params)
    assert reply.status_code == 200, reply.text
    assert reply.headers["content-type"] == mime
    assert reply.headers["x-frames"] == "9"  # 4 input frames round up to LTX's 8k+1
    assert decode_media(reply.content, MediaLimits(max_frames=64)).num_frames == 9


def test_mp4_in_npz_out(stack: Stack) -> None:
    reply = post(stack, "/reconstruct", samples.mp4(6), name="in.mp4", pipeline="spatial", format="npz")
    assert reply.status_code == 200, reply.text
    frames = np.load(io.BytesIO(reply.content))["frames"]
    assert frames.shape == (9, 64, 64, 3) and frames.dtype == np.uint8


@pytest.mark.parametrize("pipeline", PIPELINES)
def test_encode_matches_reference(stack: Stack, reference: ReferencePipeline, pipeline: str) -> None:
    data = samples.png(seed=3)
    reply = post(stack, "/encode", data, pipeline=pipeline)
    assert reply.status_code == 200, reply.text
    served = np.load(io.BytesIO(reply.content))
    assert served.shape == (1, 64, 4096) and served.dtype == np.float32
    expected = reference.encode(decode_media(data, MediaLimits()).frames, pipeline)
    np.testing.assert_allclose(served, expected, atol=1e-4, rtol=1e-4)


def test_encode_video_matches_reference(stack: Stack, reference: ReferencePipeline) -> None:
    data = samples.gif(4, seed=5)
    served = np.load(io.BytesIO(post(stack, "/encode", data, name="in.gif").content))
    expected = reference.encode(decode_media(data, MediaLimits()).frames, "hybrid")
    np.testing.assert_allclose(served, expected, atol=1e-4, rtol=1e-4)


def test_reconstruct_matches_reference(stack: Stack, reference: ReferencePipeline) -> None:
    data = samples.png(seed=4)
    reply = post(stack, "/reconstruct", data, pipeline="hybrid", frames=9, steps=3, seed=11, format="npz")
    served = np.load(io.BytesIO(reply.content))["frames"]
    expected = reference.reconstruct(decode_media(data, MediaLimits()).frames, "hybrid", 9, 3, 11)
    assert np.abs(served.astype(int) - expected.astype(int)).max() <= 1


def test_seed_changes_the_reconstruction(stack: Stack) -> None:
    data = samples.png()
    a = post(stack, "/reconstruct", data, seed=1, format="npz").content
    b = post(stack, "/reconstruct", data, seed=1, format="npz").content
    c = post(stack, "/reconstruct", data, seed=2, format="npz").content
    assert np.array_equal(np.load(io.BytesIO(a))["frames"], np.load(io.BytesIO(b))["frames"])
    assert not np.array_equal(np.load(io.BytesIO(a))["frames"], np.load(io.BytesIO(c))["frames"])


@pytest.mark.parametrize(
    ("data", "params", "status", "code"),
    [
        (b"\x13\x37 garbage bytes" * 50, {}, 422, "unsupported_media"),
        (samples.truncated_png(), {}, 422, "corrupt_media"),
        (samples.png_bomb(20000), {}, 413, "too_many_pixels"),
        (samples.png(), {"pipeline": "bogus"}, 400, "invalid_parameter"),
        (samples.png(), {"frames": 4}, 400, "invalid_parameter"),
        (samples.gif(17), {}, 422, "too_many_frames"),
    ],
    ids=["garbage", "truncated", "20000x20000", "bogus-pipeline", "frames-4", "too-many-frames"],
)
def test_bad_input_then_service_still_answers(stack: Stack, data: bytes, params: dict, status: int, code: str) -> None:
    reply = post(stack, "/reconstruct", data, **params)
    assert reply.status_code == status, reply.text
    assert reply.json()["error"]["code"] == code and reply.json()["error"]["message"]
    assert post(stack, "/reconstruct", samples.png(), pipeline="vlm").status_code == 200


def test_overload_is_429_and_no_result_is_lost(stack: Stack) -> None:
    """More concurrent requests than HYBRID_MAX_IN_FLIGHT (4): the excess get 429 + Retry-After, every
    accepted request gets its own, complete result."""

    async def burst() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=300) as client:
            requests = [
                client.post(
                    f"{stack.gateway_url}/reconstruct",
                    params={"frames": 17, "steps": 6, "seed": i, "format": "npz"},
                    files={"file": ("in.png", samples.png(seed=i))},
                )
                for i in range(12)
            ]
            return await asyncio.gather(*requests)

    replies = asyncio.run(burst())
    statuses = [r.status_code for r in replies]
    assert set(statuses) <= {200, 429} and 429 in statuses and 200 in statuses, statuses
    for reply in replies:
        if reply.status_code == 429:
            assert reply.headers["retry-after"] and reply.json()["error"]["code"] == "overloaded"
        else:
            assert np.load(io.BytesIO(reply.content))["frames"].shape == (17, 64, 64, 3)
    assert post(stack, "/reconstruct", samples.png()).status_code == 200


def test_metrics_show_per_pipeline_latency(stack: Stack) -> None:
    for pipeline in PIPELINES:
        assert post(stack, "/reconstruct", samples.png(), pipeline=pipeline).status_code == 200
    text = httpx.get(f"{stack.gateway_url}/metrics").text
    for pipeline in PIPELINES:
        line = next(
            line
            for line in text.splitlines()
            if line.startswith("hybrid_gateway_request_duration_seconds_count")
            and f'pipeline="{pipeline}"' in line
            and 'endpoint="reconstruct"' in line
            and 'status="200"' in line
        )
        assert float(line.split()[-1]) >= 1
    assert 'hybrid_gateway_rejected_requests_total{reason="bad_media"}' in text
