"""Gateway pieces that need no model: settings, error mapping, and a gateway whose Triton is down."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from tritonclient.utils import InferenceServerException

from service.app import create_app
from service.settings import Settings
from service.triton_client import map_triton_error
from tests import media_samples
from tests.stack import free_port


def test_settings_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HYBRID_PORT", "9999")
    monkeypatch.setenv("HYBRID_MAX_IN_FLIGHT", "3")
    monkeypatch.setenv("HYBRID_EMBEDDED_TRITON", "false")
    settings = Settings()
    assert settings.port == 9999 and settings.max_in_flight == 3 and settings.embedded_triton is False
    assert settings.media_limits.max_frames == settings.max_input_frames


def test_settings_reject_nonsense(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HYBRID_MAX_IN_FLIGHT", "0")
    with pytest.raises(ValueError, match="max_in_flight"):
        Settings()


@pytest.mark.parametrize(
    ("status", "http", "code"),
    [
        ("StatusCode.INVALID_ARGUMENT", 422, "rejected_by_model"),
        ("StatusCode.UNAVAILABLE", 503, "triton_unavailable"),
        ("StatusCode.DEADLINE_EXCEEDED", 504, "triton_timeout"),
        ("StatusCode.RESOURCE_EXHAUSTED", 429, "triton_overloaded"),
        ("StatusCode.INTERNAL", 502, "inference_failed"),
    ],
)
def test_triton_error_mapping(status: str, http: int, code: str) -> None:
    error = map_triton_error(InferenceServerException("boom", status=status))
    assert (error.status, error.code) == (http, code)


@pytest.fixture
def gateway_without_triton() -> TestClient:
    """A real gateway and gRPC client pointed at a loopback port where nothing listens."""
    settings = Settings(triton_grpc_url=f"127.0.0.1:{free_port()}", request_timeout_s=5)
    with TestClient(create_app(settings)) as client:
        yield client


def test_triton_down_gives_503(gateway_without_triton: TestClient) -> None:
    reply = gateway_without_triton.post("/reconstruct", files={"file": ("a.png", media_samples.png())})
    assert reply.status_code == 503
    assert reply.json()["error"]["code"] == "triton_unavailable"
    assert gateway_without_triton.get("/readyz").status_code == 503
    assert gateway_without_triton.get("/healthz").status_code == 200


@pytest.mark.parametrize(
    ("query", "fragment"),
    [
        ("pipeline=bogus", "pipeline"),
        ("frames=4", "8k+1"),
        ("frames=0", "8k+1"),
        ("frames=65", "at most"),
        ("frames=9&format=png", "png holds one frame"),
        ("steps=0", "steps"),
        ("steps=500", "steps"),
        ("seed=-1", "seed"),
        ("format=bmp", "format"),
    ],
)
def test_bad_parameters_are_400_before_triton(gateway_without_triton: TestClient, query: str, fragment: str) -> None:
    # Triton is down, so a 400 proves the parameter was refused before any inference.
    reply = gateway_without_triton.post(f"/reconstruct?{query}", files={"file": ("a.png", media_samples.png())})
    assert reply.status_code == 400, reply.text
    assert fragment in reply.json()["error"]["message"]


def test_missing_file_is_400(gateway_without_triton: TestClient) -> None:
    reply = gateway_without_triton.post("/reconstruct")
    assert reply.status_code == 400 and "file" in reply.json()["error"]["message"]


def test_declared_oversized_upload_is_413() -> None:
    settings = Settings(triton_grpc_url=f"127.0.0.1:{free_port()}", max_upload_bytes=1000)
    with TestClient(create_app(settings)) as client:
        reply = client.post("/reconstruct", files={"file": ("a.png", b"\x00" * 200_000)})
    assert reply.status_code == 413 and reply.json()["error"]["code"] == "file_too_large"
