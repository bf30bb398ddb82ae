"""The gateway's asynchronous gRPC client for Triton (KServe v2): one channel balanced over every Triton replica,
readiness per replica, timeouts and errors mapped to the API's.

Past one GPU the service runs one Triton per GPU, each holding the whole pipeline. HTTP/2 multiplexes every
request of a channel over one connection, so a plain channel pins all traffic to whichever replica it reached
first (and a Kubernetes ClusterIP Service balances connections, not requests). The channel here balances per
request instead: gRPC's client-side `round_robin` over every address the target resolves to:

- `host:port` or `dns:///host:port`: every address of the name (a headless Service, a compose network alias);
  re-resolved when a connection closes, which Triton's `--grpc-max-connection-age` makes happen regularly, so
  new replicas receive traffic;
- `ipv4:h1:p1,h2:p2` (or `ipv6:[a]:p,[b]:p`): a fixed list.

A request that fails with UNAVAILABLE (its replica died or is shutting down) is sent again, to the next replica:
inference is a pure function of its inputs, so running it twice costs time, never correctness.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import re
import socket
import time
from dataclasses import dataclass, field

import numpy as np
import tritonclient.grpc.aio as grpcclient
from opentelemetry import trace
from opentelemetry.trace import Tracer
from tritonclient.utils import InferenceServerException, np_to_triton_dtype

from hybrid.contracts import ENSEMBLES
from service import tracing
from service.errors import ApiError

log = logging.getLogger(__name__)

# Media in and frames out can exceed gRPC's 4 MB default message size.
_MESSAGE_SIZE_ARGS = [("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)]
_BALANCED_ARGS = [
    *_MESSAGE_SIZE_ARGS,
    ("grpc.lb_policy_name", "round_robin"),
    # gRPC re-resolves a name when a connection closes, but by default at most every 30 s: see new or replaced
    # replicas sooner.
    ("grpc.dns_min_time_between_resolutions_ms", 5000),
]
_READINESS_TIMEOUT_S = 5.0
DEFAULT_ATTEMPTS = 3

_HOST_PORT = re.compile(r"^(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+):(?P<port>\d{1,5})$")


class TargetError(ValueError):
    """A Triton gRPC target the gateway cannot use."""


@dataclass(frozen=True)
class TritonTarget:
    """A parsed gRPC target: what the channel dials, and how to list the replicas behind it."""

    url: str  # as configured, handed to gRPC unchanged
    scheme: str  # "dns" (a name, resolved to every address) or "ipv4"/"ipv6" (a fixed list)
    endpoints: tuple[tuple[str, int], ...]  # (host or address, port): the one name for dns, each address otherwise

    async def addresses(self) -> list[str]:
        """Every replica as `address:port`: a fixed list as written, a name resolved now (all its addresses)."""
        if self.scheme != "dns":
            return [_join(host, port) for host, port in self.endpoints]
        ((host, port),) = self.endpoints
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
        return sorted({_join(str(info[4][0]), port) for info in infos})  # an address, typed str | int


def _join(host: str, port: int) -> str:
    host = host.strip("[]")
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _endpoint(text: str, url: str) -> tuple[str, int]:
    match = _HOST_PORT.match(text.strip())
    if not match or not 0 < int(match.group("port")) < 65536:
        raise TargetError(f"Triton gRPC target {url!r}: {text!r} is not host:port")
    return match.group("host").strip("[]"), int(match.group("port"))


def parse_target(url: str) -> TritonTarget:
    """`host:port`, `dns:///host:port` (or `dns://dns-server/host:port`), `ipv4:a:p,b:p`, `ipv6:[a]:p,[b]:p`."""
    url = url.strip()
    if not url:
        raise TargetError("the Triton gRPC target is empty")
    if url.startswith("dns:"):
        name = re.sub(r"^dns:(//[^/]*/)?", "", url)
        return TritonTarget(url, "dns", (_endpoint(name, url),))
    for scheme in ("ipv4", "ipv6"):
        if url.startswith(f"{scheme}:"):
            endpoints = tuple(_endpoint(part, url) for part in url[len(scheme) + 1 :].split(","))
            for host, _ in endpoints:
                try:
                    address = ipaddress.ip_address(host)
                except ValueError:
                    raise TargetError(f"Triton gRPC target {url!r}: {host!r} is not an {scheme} address") from None
                if address.version != int(scheme[-1]):
                    raise TargetError(f"Triton gRPC target {url!r}: {host!r} is not an {scheme} address")
            return TritonTarget(url, scheme, endpoints)
    if "://" in url or url.split(":", 1)[0] in {"unix", "unix-abstract", "vsock", "xds"}:
        raise TargetError(f"Triton gRPC target {url!r}: use host:port, dns:///host:port or ipv4:h:p,h:p")
    return TritonTarget(url, "dns", (_endpoint(url, url),))


@dataclass
class BackendStatus:
    """One replica's readiness: the server's and each ensemble's, or why it could not be asked."""

    ready: bool
    server: bool = False
    models: dict[str, bool] = field(default_factory=dict)
    error: str | None = None

    def as_dict(self) -> dict:
        result: dict = {"ready": self.ready, "server": self.server, "models": self.models}
        if self.error is not None:
            result["error"] = self.error
        return result


@dataclass
class Readiness:
    """The service is ready when at least one replica serves every ensemble; each replica is reported."""

    target: str
    backends: dict[str, BackendStatus]
    error: str | None = None  # the target itself could not be resolved

    @property
    def ready(self) -> bool:
        return any(b.ready for b in self.backends.values())

    @property
    def models(self) -> dict[str, bool]:
        """Aggregate: the server and each ensemble, ready on at least one replica."""
        status = {"server": any(b.server for b in self.backends.values())}
        for name in ENSEMBLES:
            status[name] = any(b.models.get(name, False) for b in self.backends.values())
        return status

    def as_dict(self) -> dict:
        result: dict = {
            "ready": self.ready,
            "models": self.models,
            "target": self.target,
            "backends": {address: status.as_dict() for address, status in self.backends.items()},
        }
        if self.error is not None:
            result["error"] = self.error
        return result


class TritonClient:
    """Inference over one balanced channel; readiness (and anything per replica) over one channel per replica."""

    def __init__(
        self,
        url: str,
        timeout_s: float,
        attempts: int = DEFAULT_ATTEMPTS,
        headers: dict[str, str] | None = None,
        tracer: Tracer | None = None,
    ) -> None:
        self.url = url
        self.target = parse_target(url)
        self.timeout_s = timeout_s
        self.attempts = max(1, attempts)
        self.headers = headers or {}  # sent with every inference: the key of a Triton that restricts it
        self.tracer = tracer or trace.NoOpTracer()  # a client span per inference, its context passed to Triton
        self._client = grpcclient.InferenceServerClient(url, channel_args=_BALANCED_ARGS)
        self._backends: dict[str, grpcclient.InferenceServerClient] = {}

    async def close(self) -> None:
        await self._client.close()
        for client in self._backends.values():
            await client.close()
        self._backends.clear()

    async def infer(self, model: str, inputs: dict[str, np.ndarray], output: str) -> np.ndarray:
        """Run `model` on named arrays (each with its batch dimension) and return the `output` array. Triton gets
        the request's id (in its log and trace) and, when the request is traced, the W3C context of the call."""
        infer_inputs = []
        for name, array in inputs.items():
            tensor = grpcclient.InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype))
            tensor.set_data_from_numpy(array)
            infer_inputs.append(tensor)
        deadline = time.monotonic() + self.timeout_s
        attempt = 1
        with tracing.triton_call(self.tracer, model, self.url) as span:
            headers = {**self.headers, **tracing.outgoing_headers()}
            while True:
                try:
                    result = await self._client.infer(
                        model,
                        infer_inputs,
                        outputs=[grpcclient.InferRequestedOutput(output)],
                        request_id=tracing.request_id(),
                        client_timeout=max(deadline - time.monotonic(), 0.001),
                        headers=headers,
                    )
                    return result.as_numpy(output)
                except InferenceServerException as exc:
                    error = map_triton_error(exc)
                    span.set_attribute("hybrid.error_code", error.code)
                    if error.code != "triton_unavailable" or attempt >= self.attempts or time.monotonic() >= deadline:
                        raise error from None
                    attempt += 1
                    span.add_event("retry", {"attempt": attempt})
                    log.warning("a Triton replica is unavailable (%s): %s, attempt %d", error.message, model, attempt)

    async def backend_clients(self) -> dict[str, grpcclient.InferenceServerClient]:
        """One client per replica the target names now (for readiness, statistics: anything that must reach each
        replica rather than whichever the balancer picks). Clients of replicas gone from the target are closed."""
        addresses = await self.target.addresses()
        for address in set(self._backends) - set(addresses):
            await self._backends.pop(address).close()
        for address in addresses:
            if address not in self._backends:
                self._backends[address] = grpcclient.InferenceServerClient(address, channel_args=_MESSAGE_SIZE_ARGS)
        return {address: self._backends[address] for address in addresses}

    async def readiness_report(self) -> Readiness:
        """Each replica's server and ensemble readiness, asked concurrently; never raises."""
        try:
            clients = await self.backend_clients()
        except OSError as exc:
            return Readiness(self.url, {}, f"cannot resolve {self.url}: {exc}")
        statuses = await asyncio.gather(*(_backend_status(client) for client in clients.values()))
        return Readiness(self.url, dict(zip(clients, statuses, strict=True)))

    async def inference_statistics(self) -> dict[str, dict]:
        """Each replica's cumulative statistics (KServe v2 statistics extension, as JSON), asked concurrently over
        its own channel: counters are per replica, so they must not come from whichever one the balancer picks. A
        replica that does not answer is left out; raises OSError when the target cannot be resolved."""
        clients = await self.backend_clients()
        replies = await asyncio.gather(
            *(c.get_inference_statistics(as_json=True, client_timeout=_READINESS_TIMEOUT_S) for c in clients.values()),
            return_exceptions=True,
        )
        statistics: dict[str, dict] = {}
        for address, reply in zip(clients, replies, strict=True):
            if isinstance(reply, InferenceServerException):
                log.debug("no statistics from %s: %s", address, reply)
            elif isinstance(reply, BaseException):
                raise reply
            else:
                statistics[address] = reply
        return statistics

    async def readiness(self) -> dict[str, bool]:
        """The server and each ensemble, ready on at least one replica; ApiError(503) when no replica answers."""
        report = await self.readiness_report()
        if not any(status.error is None for status in report.backends.values()):
            reasons = "; ".join(f"{a}: {s.error}" for a, s in report.backends.items()) or report.error or "no replica"
            raise ApiError(503, "triton_unavailable", f"Triton is not reachable: {reasons}", {"Retry-After": "5"})
        return report.models


async def _backend_status(client: grpcclient.InferenceServerClient) -> BackendStatus:
    try:
        server = await client.is_server_ready(client_timeout=_READINESS_TIMEOUT_S)
        models = {}
        for name in ENSEMBLES:
            models[name] = await client.is_model_ready(name, client_timeout=_READINESS_TIMEOUT_S)
    except InferenceServerException as exc:
        return BackendStatus(ready=False, error=exc.message() or str(exc))
    return BackendStatus(ready=server and all(models.values()), server=server, models=models)


def _is_unavailable(exc: InferenceServerException) -> bool:
    return "UNAVAILABLE" in str(exc.status() or "") or "failed to connect" in (exc.message() or str(exc)).lower()


def map_triton_error(exc: InferenceServerException) -> ApiError:
    """INVALID_ARGUMENT → 422 (the input passed the gateway's checks but a model refused it), UNAVAILABLE → 503,
    DEADLINE_EXCEEDED → 504, anything else → 502. (Overload is the gateway's own 429, taken before Triton sees a
    request: no generated config sets a queue limit that would make Triton refuse one.)"""
    status = str(exc.status() or "")
    message = exc.message() or str(exc)
    if "INVALID_ARGUMENT" in status:
        return ApiError(422, "rejected_by_model", message)
    if _is_unavailable(exc):
        return ApiError(503, "triton_unavailable", f"Triton is not reachable: {message}", {"Retry-After": "5"})
    if "DEADLINE_EXCEEDED" in status:
        return ApiError(504, "triton_timeout", "Triton did not answer within the request timeout")
    return ApiError(502, "inference_failed", message)
