"""`python -m service`: the gateway, and by default the embedded tritonserver behind it.

python -m service                       # embedded Triton on loopback + gateway on 127.0.0.1:8080
python -m service --no-embedded-triton  # gateway only, against HYBRID_TRITON_GRPC_URL

The embedded tritonserver is supervised (restarted after a crash, see service/embedded_triton.py). SIGTERM or
Ctrl-C drains: the gateway stops accepting connections, lets requests in flight finish (HYBRID_DRAIN_TIMEOUT_S),
then stops Triton and removes everything it left (processes, shared memory, work directory) and exits 0.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import secrets
import shlex
import signal
import sys
import time
from collections.abc import Iterator

import uvicorn
from pydantic import SecretStr

from service.app import create_app
from service.embedded_triton import EmbeddedTriton, TritonStartError, TritonSupervisor
from service.http_protocol import header_timeout_protocol
from service.logs import configure_logging
from service.settings import Settings
from service.tracing import TraceIdFilter, triton_trace_args

log = logging.getLogger("service")
DRAIN_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class DrainingServer(uvicorn.Server):
    """uvicorn's server, except that a SIGTERM or SIGINT that started a graceful shutdown is not raised again
    once the server has stopped: uvicorn re-raises it, and a re-raised SIGTERM kills the process before the
    gateway's own clean-up (stopping Triton) can run. A second Ctrl-C still forces the exit, as in uvicorn."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        previous = {sig: signal.signal(sig, self.handle_exit) for sig in DRAIN_SIGNALS}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", help="bind address (HYBRID_HOST)")
    parser.add_argument("--port", type=int, help="port (HYBRID_PORT)")
    parser.add_argument("--model-repository", help="Triton model repository (HYBRID_MODEL_REPOSITORY)")
    parser.add_argument(
        "--no-embedded-triton", action="store_true", help="use HYBRID_TRITON_GRPC_URL instead of starting Triton"
    )
    args = parser.parse_args(argv)
    overrides = {k: v for k, v in {"host": args.host, "port": args.port}.items() if v is not None}
    if args.model_repository:
        overrides["model_repository"] = args.model_repository
    if args.no_embedded_triton:
        overrides["embedded_triton"] = False
    settings = Settings(**overrides)
    configure_logging(settings.log_level, settings.log_format)
    if settings.otlp_traces_endpoint:
        for handler in logging.getLogger().handlers:
            handler.addFilter(TraceIdFilter())  # a traced request's log lines name its trace

    supervisor: TritonSupervisor | None = None
    if settings.embedded_triton and not settings.triton_grpc_url:
        access_key = settings.triton_access_key or SecretStr(secrets.token_urlsafe(32))
        triton = EmbeddedTriton(
            settings.model_repository,
            http_port=settings.embedded_http_port,
            grpc_port=settings.embedded_grpc_port,
            metrics_port=settings.embedded_metrics_port,
            access_key=access_key.get_secret_value(),
            # Tracing first: flags of HYBRID_EMBEDDED_TRITON_ARGS (a shorter bsp_schedule_delay, say) come after it.
            extra_args=triton_trace_args(settings.otlp_traces_endpoint) + shlex.split(settings.embedded_triton_args),
            log_path=settings.embedded_triton_log,
        )
        supervisor = TritonSupervisor(
            triton,
            settings.triton_start_timeout_s,
            backoff_s=settings.triton_restart_backoff_s,
            max_failed_starts=settings.triton_max_failed_starts,
        )
        started = time.perf_counter()
        log.info("starting the embedded tritonserver on %s (repository %s)", triton.grpc_url, settings.model_repository)
        try:
            supervisor.start()
        except TritonStartError as exc:
            log.error("%s", exc)
            return 1
        log.info("tritonserver ready in %.1f s", time.perf_counter() - started)
        metrics_url = f"http://{triton.host}:{triton.metrics_port}/metrics"
        reach = {"triton_grpc_url": triton.grpc_url, "triton_metrics_url": metrics_url, "triton_access_key": access_key}
        settings = settings.model_copy(update=reach)
    elif not settings.triton_grpc_url:
        log.error("no Triton: set HYBRID_TRITON_GRPC_URL or drop --no-embedded-triton")
        return 2

    try:
        app = create_app(settings, triton_state=supervisor)
        if supervisor is not None:
            app.state.metrics.registry.register(supervisor.collector())
        config = uvicorn.Config(
            app,
            host=settings.host,
            port=settings.port,
            http=header_timeout_protocol(settings.client_timeout_s),
            log_config=None,  # configure_logging routes uvicorn's loggers through the structured handler
            access_log=False,  # the gateway writes its own access line, with the request id
            timeout_graceful_shutdown=int(settings.drain_timeout_s),
        )
        base = f"http://{settings.host}:{settings.port}"
        print(
            f"\nGateway on {base} (docs: {base}/docs). Try:\n"
            f"  curl -F file=@image.png '{base}/reconstruct?pipeline=hybrid' -o out.png\n",
            flush=True,
        )
        DrainingServer(config).run()
    finally:
        if supervisor is not None:
            # A second Ctrl-C or SIGTERM must not interrupt the clean-up and orphan the server.
            for sig in DRAIN_SIGNALS:
                signal.signal(sig, signal.SIG_IGN)
            log.info("stopping the embedded tritonserver")
            supervisor.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
