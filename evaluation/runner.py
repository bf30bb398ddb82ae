"""One evaluation pass: every input through every pipeline, in turn, scored as each reply arrives."""

from __future__ import annotations

import sys

from tqdm import tqdm

from evaluation.client import Gateway
from evaluation.datasets import Sample
from evaluation.metrics import Lpips, sample_metrics
from evaluation.report import Evaluation, Result, preview_samples


def evaluate(
    gateway: Gateway,
    samples: list[Sample],
    pipelines: list[str],
    params: dict[str, int],
    lpips: Lpips,
    preview_rows: int,
) -> Evaluation:
    """Send each sample to each pipeline (pipelines interleaved per sample, so all see the same service state).

    A refused request or a broken connection is recorded with its status and message and the pass goes on; only
    the reconstructions of the samples shown in the side-by-side picture are kept in memory.
    """
    shown = {s.name for s in preview_samples(samples, preview_rows)}
    results: list[Result] = []
    previews = {}
    failed = 0
    with tqdm(total=len(samples) * len(pipelines), desc="gate1", unit="req", file=sys.stderr) as bar:
        for sample in samples:
            for pipeline in pipelines:
                reply = gateway.reconstruct(sample, pipeline, params)
                if reply.frames is None:
                    failed += 1
                    results.append(Result(sample, pipeline, reply.status, error=reply.error))
                else:
                    metrics = sample_metrics(sample.frames, reply.frames, lpips)
                    frames_out, height, width = reply.frames.shape[:3]
                    results.append(Result(sample, pipeline, reply.status, metrics, None, frames_out, (height, width)))
                    if sample.name in shown:
                        previews[(sample.name, pipeline)] = reply.frames
                bar.update(1)
                bar.set_postfix(failed=failed, refresh=False)
    return Evaluation(samples, pipelines, results, None if lpips.available else lpips.reason, previews)
