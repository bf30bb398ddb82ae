"""Gate-1 evaluation through the running service.

    python -m evaluation --url http://127.0.0.1:8080 --out DIR [--dataset shapes|moving|multi|all]
                         [--input-dir D] [--n N] [--pipelines hybrid,vlm,spatial] [--seed S]

Generates the seed's synthetic sets (or reads the images and videos of --input-dir), sends each input through
POST /reconstruct for each pipeline, scores the reconstructions with the lab's metrics (SSIM, spatial IoU, edge F1,
PSNR, LPIPS-alex when its weights are on disk, temporal LPIPS variance for clips) and writes DIR/gate1.json,
DIR/gate1.md (the table against the Gate-1 thresholds) and DIR/side_by_side.png.

Exit status: 0 when the report is written (whatever the verdict), 1 when every request failed, 2 when the gateway
cannot be reached or the arguments are wrong.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from evaluation.client import Gateway, GatewayUnavailable
from evaluation.datasets import DATASETS, generate, load_folder
from evaluation.metrics import Lpips
from evaluation.report import write
from evaluation.runner import evaluate
from hybrid.contracts import PIPELINES


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m evaluation", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--url", default="http://127.0.0.1:8080", help="the gateway (default %(default)s)")
    parser.add_argument("--out", type=Path, default=Path("build/gate1"), help="output folder (default %(default)s)")
    parser.add_argument("--dataset", choices=[*DATASETS, "all"], default="all", help="synthetic set (default all)")
    parser.add_argument("--input-dir", type=Path, help="evaluate the images and videos of this folder instead")
    parser.add_argument("--n", type=int, default=8, help="inputs per synthetic set, or at most from the folder")
    parser.add_argument("--pipelines", default=",".join(PIPELINES), help="comma-separated (default %(default)s)")
    parser.add_argument("--seed", type=int, default=42, help="synthetic-set seed (default 42, the lab's)")
    parser.add_argument("--steps", type=int, help="denoising steps (default: the service profile's)")
    parser.add_argument("--decoder-seed", type=int, default=0, help="the decoder's noise seed (default 0)")
    parser.add_argument("--rows", type=int, default=6, help="rows of side_by_side.png (default 6)")
    parser.add_argument("--timeout", type=float, default=300, help="seconds per request (default 300)")
    args = parser.parse_args(argv)
    args.pipelines = [p.strip() for p in args.pipelines.split(",") if p.strip()]
    unknown = [p for p in args.pipelines if p not in PIPELINES]
    if unknown or not args.pipelines:
        parser.error(f"--pipelines: choose from {', '.join(PIPELINES)}; got {args.pipelines or 'none'}")
    if args.n < 1:
        parser.error(f"--n must be at least 1, got {args.n}")
    if args.rows < 1:
        parser.error(f"--rows must be at least 1, got {args.rows}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    skipped = []
    try:
        if args.input_dir is not None:
            samples, skipped = load_folder(args.input_dir, args.n)
        else:
            samples = generate(args.dataset, args.n, args.seed)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for s in skipped:
        print(f"skipped {s.filename}: {s.reason}", file=sys.stderr)
    if not samples:
        print(f"error: no usable image or video in {args.input_dir}", file=sys.stderr)
        return 2

    with Gateway(args.url, args.timeout) as gateway:
        try:
            gateway.check_ready()
        except GatewayUnavailable as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        lpips = Lpips()
        if not lpips.available:
            print(f"LPIPS unavailable: {lpips.reason}", file=sys.stderr)
        params = {"seed": args.decoder_seed} | ({"steps": args.steps} if args.steps is not None else {})
        evaluation = evaluate(gateway, samples, args.pipelines, params, lpips, args.rows)
        evaluation.context = {
            "url": gateway.url,
            "service": gateway.service_info(),
            "source": str(args.input_dir) if args.input_dir is not None else f"synthetic:{args.dataset}",
            "seed": args.seed,
            "request_params": params,
            "skipped_inputs": [{"file": s.filename, "reason": s.reason} for s in skipped],
        }

    report = write(evaluation, args.out)
    print((args.out / "gate1.md").read_text())
    print(f"wrote {args.out / 'gate1.json'}, {args.out / 'gate1.md'}, {args.out / 'side_by_side.png'}")
    if not any(r.metrics is not None for r in evaluation.results):
        print(f"error: all {len(evaluation.results)} requests failed: {report['requests']}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
