"""Gateway pieces that need no model: settings, error mapping, and a gateway whose Triton is down."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from tritonclient.utils import InferenceServerException

from hybrid import samples
from service.app import create_app
from service.local_stack import free_port
from service.settings import Settings
from service.triton_client import map_triton_error


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
    reply = gateway_without_triton.post("/reconstruct", files={"file": ("a.png", samples.png())})
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
    reply = gateway_without_triton.post(f"/reconstruct?{query}", files={"file": ("a.png", samples.png())})
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


# Hardening: token, origins, request ids, what a 5xx discloses, every reply counted (service/README.md, "Limits
# and failure behaviour"). Triton is down in these gateways, so a 503 proves a request passed every check before it.


def gateway(**overrides: object) -> TestClient:
    settings = Settings(triton_grpc_url=f"127.0.0.1:{free_port()}", request_timeout_s=5, **overrides)
    return TestClient(create_app(settings))


def upload() -> dict:
    return {"file": ("a.png", samples.png())}


def test_bearer_token_guards_inference_and_optionally_probes() -> None:
    with gateway(api_token="s3cret") as client:
        missing = client.post("/reconstruct", files=upload())
        assert missing.status_code == 401 and missing.headers["www-authenticate"] == "Bearer"
        assert missing.json()["error"]["code"] == "unauthorized"
        wrong = client.post("/reconstruct", files=upload(), headers={"Authorization": "Bearer s3cre"})
        assert wrong.status_code == 401
        right = client.post("/encode", files=upload(), headers={"Authorization": "Bearer s3cret"})
        assert right.status_code == 503  # past the token: Triton is down
        assert client.get("/healthz").status_code == 200 and client.get("/metrics").status_code == 200
        assert "HTTPBearer" in client.get("/openapi.json").json()["components"]["securitySchemes"]
    with gateway(api_token="s3cret", auth_probes=True, auth_metrics=True) as client:
        assert client.get("/healthz").status_code == 401 and client.get("/readyz").status_code == 401
        assert client.get("/metrics").status_code == 401 and client.get("/v1/overhead").status_code == 401
        assert client.get("/healthz", headers={"Authorization": "Bearer s3cret"}).status_code == 200


def test_cross_origin_requests_are_refused_unless_allowed() -> None:
    with gateway() as client:
        refused = client.post("/reconstruct", files=upload(), headers={"Origin": "https://elsewhere.example"})
        assert refused.status_code == 403 and refused.json()["error"]["code"] == "origin_not_allowed"
        same = client.post("/reconstruct", files=upload(), headers={"Origin": "http://testserver"})
        assert same.status_code == 503
    with gateway(cors_origins="https://app.example") as client:
        allowed = client.post("/reconstruct", files=upload(), headers={"Origin": "https://app.example"})
        assert allowed.status_code == 503
        assert allowed.headers["access-control-allow-origin"] == "https://app.example"
        assert client.get("/healthz", headers={"Origin": "https://elsewhere.example"}).status_code == 403


def test_every_reply_has_a_request_id() -> None:
    with gateway() as client:
        assert client.get("/healthz", headers={"X-Request-ID": "trace-42"}).headers["x-request-id"] == "trace-42"
        generated = client.post("/reconstruct", headers={"X-Request-ID": "bad id\twith spaces"}).headers
        assert len(generated["x-request-id"]) == 32 and generated["x-request-id"] != "bad id\twith spaces"
        assert "gateway;dur=" in generated["server-timing"]


def test_a_5xx_discloses_no_address_or_exception() -> None:
    port = free_port()
    with TestClient(create_app(Settings(triton_grpc_url=f"127.0.0.1:{port}", request_timeout_s=5))) as client:
        reply = client.post("/reconstruct", files=upload())
    assert reply.status_code == 503 and reply.headers["retry-after"]
    assert str(port) not in reply.text and "127.0.0.1" not in reply.text and "connect" not in reply.text.lower()


class BrokenTriton:
    """A Triton client whose inference fails with an unexpected exception: the path of a bug in the gateway."""

    async def infer(self, model: str, inputs: dict, output: str) -> None:
        raise RuntimeError("secret detail from 10.1.2.3:8001")

    async def inference_statistics(self) -> dict:
        return {}

    async def close(self) -> None:
        pass


def test_an_unexpected_failure_is_a_counted_500_that_says_nothing() -> None:
    settings = Settings(triton_grpc_url="127.0.0.1:1")
    with TestClient(create_app(settings, triton=BrokenTriton()), raise_server_exceptions=False) as client:
        reply = client.post("/reconstruct?pipeline=vlm", files=upload())
        metrics = client.get("/metrics").text
    assert reply.status_code == 500 and reply.json()["error"]["code"] == "internal_error"
    assert "secret" not in reply.text and "RuntimeError" not in reply.text and reply.headers["x-request-id"]
    assert 'hybrid_gateway_requests_total{endpoint="reconstruct",pipeline="vlm",status="500"} 1.0' in metrics


@pytest.mark.parametrize(
    ("files", "data", "fragment"),
    [
        (None, {"other": "x"}, "file"),  # multipart without the field
        ({"picture": ("a.png", b"\x89PNG")}, None, "file"),
    ],
)
def test_upload_without_the_file_field_is_400(files: dict | None, data: dict | None, fragment: str) -> None:
    with gateway() as client:
        reply = client.post("/reconstruct", files=files, data=data)
    assert reply.status_code == 400 and fragment in reply.json()["error"]["message"]


def test_chunked_upload_over_the_limit_is_413() -> None:
    """No Content-Length (chunked): the cap holds while the body streams in."""
    with gateway(max_upload_bytes=100_000) as client:
        body = b"--b\r\nContent-Disposition: form-data; name=file; filename=a\r\n\r\n" + b"\0" * 300_000
        reply = client.post(
            "/reconstruct",
            content=iter([body[i : i + 8192] for i in range(0, len(body), 8192)]),
            headers={"Content-Type": "multipart/form-data; boundary=b"},
        )
    assert reply.status_code == 413 and reply.json()["error"]["code"] == "file_too_large"
