"""The gateway's settings: one typed object read from HYBRID_* environment variables.

Every default serves the embedded run (`make up`): tritonserver started by the gateway on loopback, the tiny
profile, limits sized for a 2-core machine.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from hybrid.media import MediaLimits
from hybrid.profiles import DecoderConfig
from service.triton_client import parse_target
from service.verdict import BUDGET

PROJECT_ROOT = Path(__file__).resolve().parent.parent
_MEDIA = MediaLimits()
_DECODER = DecoderConfig()


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="HYBRID_", extra="ignore")

    host: str = "127.0.0.1"
    port: int = Field(8080, ge=1, le=65535)

    # Triton. Empty URLs + embedded_triton: the gateway starts tritonserver itself on the ports below.
    embedded_triton: bool = True
    # An external Triton's gRPC target: host:port, or every replica balanced per request (service/triton_client.py):
    # dns:///<headless service>:8001 (each address of the name) or ipv4:h1:p1,h2:p2.
    triton_grpc_url: str = ""
    # Its Prometheus endpoint (http://host:8002/metrics): the gateway reads the device Triton runs on from it.
    triton_metrics_url: str = ""
    model_repository: Path = PROJECT_ROOT / "model_repository"
    embedded_http_port: int = 8000
    embedded_grpc_port: int = 8001
    embedded_metrics_port: int = 8002
    triton_start_timeout_s: float = Field(600.0, gt=0)
    # More tritonserver flags for the embedded server, shell-quoted: e.g. a CUDA memory pool for GPU hand-offs,
    # "--cuda-memory-pool-byte-size=0:1073741824".
    embedded_triton_args: str = ""
    embedded_triton_log: Path | None = None  # tritonserver's own log file (default: inside its work directory)

    profile: str = "tiny"  # the profile the repository serves: default steps and limits, reported with figures

    # Bounds: what one request may ask for, and how many may be in flight before 429.
    request_timeout_s: float = Field(300.0, gt=0)
    max_in_flight: int = Field(8, ge=1)
    retry_after_s: int = Field(1, ge=1)
    # Defaults are the models' own limits, defined once: MediaLimits (inputs) and DecoderConfig (outputs).
    max_upload_bytes: int = Field(_MEDIA.max_bytes, ge=1)
    max_pixels: int = Field(_MEDIA.max_pixels, ge=1)
    max_input_frames: int = Field(_MEDIA.max_frames, ge=1)
    max_output_frames: int = Field(_DECODER.max_frames, ge=1)
    max_steps: int = Field(_DECODER.max_steps, ge=1)
    # Hardening (service/README.md, "Limits and failure behaviour").
    max_total_pixels: int = Field(_MEDIA.max_total_pixels, ge=1)  # decoded pixels over all frames of one upload (413)
    decode_workers: int = Field(2, ge=1)  # uploads decoded at once, each holding about one full-size frame
    client_timeout_s: float = Field(30.0, gt=0)  # silence allowed while a client sends its headers or body (408)
    upload_timeout_s: float = Field(120.0, gt=0)  # the whole upload, however it trickles in (408)
    drain_timeout_s: float = Field(60.0, gt=0)  # on SIGTERM: how long in-flight requests may take to finish
    api_token: SecretStr | None = None  # bearer token required by /reconstruct and /encode when set
    auth_probes: bool = False  # also require it for /healthz and /readyz
    auth_metrics: bool = False  # also require it for /metrics and /v1/overhead
    cors_origins: str = ""  # comma-separated browser origins allowed to call the API; empty: none
    log_format: Literal["json", "text"] = "json"
    triton_restart_backoff_s: float = Field(1.0, gt=0)  # first restart delay after a crash, doubling to 30 s
    triton_max_failed_starts: int = Field(5, ge=1)  # consecutive failed restarts before /healthz says failed
    # Sent with every inference (gRPC metadata `triton-grpc-protocol-hybrid-triton-key`) to a Triton that restricts
    # inference to it (service.embedded_triton.RESTRICTED_APIS); the embedded server gets a random one per start.
    triton_access_key: SecretStr | None = None

    # E-P2.6: the overhead of hybrid over vlm, over a sliding window of Triton statistics and gateway latencies.
    overhead_budget: float = Field(BUDGET, gt=0)
    overhead_window_s: float = Field(300.0, gt=0)
    overhead_min_samples: int = Field(5, ge=1)

    # Tracing (service/tracing.py): off unless an OTLP/HTTP traces endpoint is given, e.g.
    # http://127.0.0.1:4318/v1/traces; the gateway and the embedded tritonserver both export there.
    otlp_traces_endpoint: str = ""
    trace_sample_ratio: float = Field(1.0, ge=0, le=1)  # of requests arriving without a sampled W3C traceparent

    log_level: str = "info"

    @field_validator("triton_grpc_url")
    @classmethod
    def _triton_target(cls, url: str) -> str:
        """A target gRPC could not dial fails at start-up, naming the problem, not at the first request."""
        if url:
            parse_target(url)
        return url

    @property
    def media_limits(self) -> MediaLimits:
        return MediaLimits(self.max_upload_bytes, self.max_pixels, self.max_input_frames, self.max_total_pixels)

    @property
    def allowed_origins(self) -> list[str]:
        return [origin.strip().rstrip("/") for origin in self.cors_origins.split(",") if origin.strip()]
