"""The real stack (the session's `python -m service`, HYBRID_MAX_IN_FLIGHT=4) under hostile use: every file of
the hostile-media corpus answered with its status inside a memory bound, a flood of 64 concurrent requests
answered only with 200 or a 429 that did no work, and a schema-driven fuzz (schemathesis, seeded and bounded)
finding no 5xx and no reply that disagrees with the OpenAPI schema."""

from __future__ import annotations

import asyncio

import httpx
import pytest
import schemathesis
import tritonclient.grpc as grpcclient
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_schema_conformance,
    status_code_conformance,
)
from tritonclient.utils import InferenceServerException

from benchmarks.probes import MiB, PeakGain, preprocess_stub
from hybrid import hostile_samples, samples
from service.local_stack import Stack

pytestmark = pytest.mark.integration

# Peak memory one file may add (VmHWM over VmRSS before it). Before bounded decoding the 16×4096² GIF alone added
# 1.5-1.9 GB to the gateway and 1.6 GB to the preprocess model.
GATEWAY_BOUND = 400 * MiB
PREPROCESS_BOUND = 200 * MiB


@pytest.mark.parametrize("entry", hostile_samples.CORPUS, ids=[h.name for h in hostile_samples.CORPUS])
def test_hostile_media_is_answered_within_a_memory_bound(stack: Stack, entry: hostile_samples.Hostile) -> None:
    gateway, preprocess = PeakGain(stack.process.pid), PeakGain(preprocess_stub(stack.process.pid))
    with gateway, preprocess:
        reply = httpx.post(f"{stack.gateway_url}/reconstruct", files={"file": ("upload", entry.make())}, timeout=120)
    assert reply.status_code == entry.status, reply.text
    if entry.code is not None:
        assert reply.json()["error"]["code"] == entry.code
    assert gateway.gained <= GATEWAY_BOUND, f"gateway +{gateway.gained / MiB:.0f} MiB"
    assert preprocess.gained <= PREPROCESS_BOUND, f"preprocess +{preprocess.gained / MiB:.0f} MiB"


def _rejected_overloaded(stack: Stack) -> float:
    for line in httpx.get(f"{stack.gateway_url}/metrics").text.splitlines():
        if line.startswith('hybrid_gateway_rejected_requests_total{reason="overloaded"}'):
            return float(line.split()[-1])
    raise AssertionError("no overloaded counter")


def _ensemble_requests(stack: Stack, ensemble: str) -> int:
    stats = httpx.get(f"{stack.triton_http_url}/v2/models/{ensemble}/stats", timeout=30).json()
    return sum(int(s["inference_stats"]["success"]["count"]) for s in stats["model_stats"])


def test_a_flood_gets_only_200_or_a_429_that_did_no_work(stack: Stack) -> None:
    """64 concurrent requests against 4 slots: each is served or refused, nothing else; a refusal costs no work:
    its Server-Timing has no decode or Triton span (the gateway refused it before both), Triton ran exactly the
    served requests, and each refusal was counted as one. How long a refusal took depends on how busy the machine
    is, so it is not asserted (that admission comes before the upload is read: tests/test_hardening_server.py)."""
    rejected, executed = _rejected_overloaded(stack), _ensemble_requests(stack, "reconstruct_hybrid")

    async def flood() -> list[httpx.Response]:
        limits = httpx.Limits(max_connections=64)
        async with httpx.AsyncClient(timeout=300, limits=limits) as client:
            return await asyncio.gather(
                *(
                    client.post(
                        f"{stack.gateway_url}/reconstruct",
                        params={"frames": 17, "steps": 6, "seed": i, "format": "npz"},
                        files={"file": ("in.png", samples.png(seed=i))},
                    )
                    for i in range(64)
                )
            )

    replies = asyncio.run(flood())
    statuses = [r.status_code for r in replies]
    assert set(statuses) <= {200, 429} and 200 in statuses and 429 in statuses, statuses

    def spans(reply: httpx.Response) -> set[str]:
        return {part.strip().split(";")[0] for part in reply.headers["server-timing"].split(",")}

    refused = [r for r in replies if r.status_code == 429]
    served = [r for r in replies if r.status_code == 200]
    assert all(r.headers["retry-after"] and r.json()["error"]["code"] == "overloaded" for r in refused)
    assert all(spans(r) == {"gateway"} for r in refused), {frozenset(spans(r)) for r in refused}
    assert all({"decode", "triton"} <= spans(r) for r in served)
    assert _ensemble_requests(stack, "reconstruct_hybrid") - executed == len(served)
    assert _rejected_overloaded(stack) - rejected == len(refused)


def test_triton_refuses_inference_that_skips_the_gateway(stack: Stack) -> None:
    """Any local process can reach Triton's loopback ports; without the key the gateway holds, inference (and
    loading models) is refused there, while health and statistics stay readable."""
    data = samples.frames(1, 224, 224)[None]
    media = grpcclient.InferInput("FRAMES", list(data.shape), "UINT8")
    media.set_data_from_numpy(data)
    client = grpcclient.InferenceServerClient(stack.triton_grpc_url)
    assert client.is_model_ready("encode_vlm")
    with pytest.raises(InferenceServerException, match="restricted"):
        client.infer("encode_vlm", [media])
    with pytest.raises(InferenceServerException, match="restricted"):
        client.load_model("encode_vlm")
    body = {"inputs": [{"name": "FRAMES", "shape": [1, 1, 1, 1, 3], "datatype": "UINT8", "data": [1, 2, 3]}]}
    assert httpx.post(f"{stack.triton_http_url}/v2/models/encode_vlm/infer", json=body).status_code == 403
    assert httpx.get(f"{stack.triton_http_url}/v2/models/stats").status_code == 200
    assert httpx.post(f"{stack.gateway_url}/encode", files={"file": ("a.png", samples.png())}).status_code == 200


@pytest.fixture(scope="module")
def api_schema(stack: Stack) -> schemathesis.BaseSchema:
    return schemathesis.openapi.from_url(f"{stack.gateway_url}/openapi.json")


def test_schema_fuzz_finds_no_5xx_and_no_reply_off_schema(stack: Stack, api_schema: schemathesis.BaseSchema) -> None:
    """Valid and invalid requests generated from the gateway's own OpenAPI schema (deterministic: the same cases
    every run): none may get a 5xx, a status, content type or body the schema does not declare, or succeed with
    data the schema says is invalid."""
    checks = [
        not_a_server_error,
        status_code_conformance,
        content_type_conformance,
        response_schema_conformance,
        negative_data_rejection,
    ]
    cases = api_schema.as_strategy(GenerationMode.POSITIVE) | api_schema.as_strategy(GenerationMode.NEGATIVE)

    @settings(
        max_examples=150,
        derandomize=True,
        database=None,
        deadline=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(case=cases)
    def fuzz(case: schemathesis.Case) -> None:
        case.call_and_validate(base_url=stack.gateway_url, checks=checks, timeout=60)

    fuzz()
