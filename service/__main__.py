"""`python -m service`: the gateway, and by default the embedded tritonserver behind it.

python -m service                       # embedded Triton on loopback + gateway on 127.0.0.1:8080
python -m service --no-embedded-triton  # gateway only, against HYBRID_TRITON_GRPC_URL
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import time

import uvicorn

from service.app import create_app
from service.embedded_triton import EmbeddedTriton, TritonStartError
from service.settings import Settings

log = logging.getLogger("service")


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
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per statistics poll otherwise

    triton: EmbeddedTriton | None = None
    if settings.embedded_triton and not settings.triton_grpc_url:
        triton = EmbeddedTriton(
            settings.model_repository,
            http_port=settings.embedded_http_port,
            grpc_port=settings.embedded_grpc_port,
            metrics_port=settings.embedded_metrics_port,
        )
        started = time.perf_counter()
        log.info("starting the embedded tritonserver on %s (repository %s)", triton.grpc_url, settings.model_repository)
        try:
            triton.start(settings.triton_start_timeout_s)
        except TritonStartError as exc:
            log.error("%s", exc)
            return 1
        log.info("tritonserver ready in %.1f s", time.perf_counter() - started)
        metrics_url = f"http://{triton.host}:{triton.metrics_port}/metrics"
        settings = settings.model_copy(update={"triton_grpc_url": triton.grpc_url, "triton_metrics_url": metrics_url})
    elif not settings.triton_grpc_url:
        log.error("no Triton: set HYBRID_TRITON_GRPC_URL or drop --no-embedded-triton")
        return 2

    base = f"http://{settings.host}:{settings.port}"
    print(
        f"\nGateway on {base} (docs: {base}/docs). Try:\n"
        f"  curl -F file=@image.png '{base}/reconstruct?pipeline=hybrid' -o out.png\n",
        flush=True,
    )
    try:
        uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_level=settings.log_level)
    finally:
        if triton is not None:
            # A second Ctrl-C or SIGTERM must not interrupt the shutdown and orphan the server.
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            log.info("stopping the embedded tritonserver")
            triton.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
