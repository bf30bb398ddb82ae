"""E-P2.6 live: the pipelines' service times from Triton's statistics, so the verdict measures the pipelines and
not the traffic.

Comparing raw latencies of the requests that happened to arrive compares their queues: after hybrid-only load,
queued hybrid requests against a few idle vlm ones read as +96% on an H200 while the paired benchmark said +3%.
This estimator compares what each pipeline costs to run instead:

- **Per model**, the mean compute time (compute_input + compute_infer + compute_output) of one execution at
  **batch size 1**, from Triton's per-batch-size statistics (`batch_stats`). Queueing is excluded. Batch 1 because
  it is the service time of one request alone, the condition E-P2.6 (and the paired benchmark) asks about: a
  batched execution's time is not one request's service time (it includes the other requests' work) and its
  per-request share (÷ batch size) is a throughput figure that rewards batching; either would make the overhead
  depend on how the traffic happened to batch. Other batch sizes still appear in the per-request view
  (`queue_mean_s`, `compute_mean_s`, `mean_batch`).
- **Per pipeline**, those times combined along the ensemble's graph, derived from the tensor contracts: a model
  starts when the models producing its inputs finish (Triton runs ready steps concurrently), so hybrid encode =
  preprocess + max(vlm_encoder, spatial_encoder) + fusion, vlm encode = preprocess + vlm_encoder + vlm_adapter, and
  reconstruct adds the decoder. The max of mean times is a lower bound of the mean of the max; it is exact when
  one branch dominates (Qwen2.5-VL against DINOv2 on a GPU).
- **A branch model's time per pipeline**, measured, not assumed. vlm_encoder and spatial_encoder run beside each
  other in hybrid and alone in vlm and spatial. Where they share a device (a CPU's cores, one GPU) each slows the
  other inside hybrid only, so a model's mean over all its executions understates hybrid's branch and overstates
  the single-encoder pipeline's: on the 2-core CPU host (tiny profile, 200 pairs, benchmarks/results/
  overhead-tiny.md) vlm_encoder took 7.2 ms alone and 9.0 ms in hybrid, and the pooled means read encode +3.5%
  where the paired benchmark measured +12.2% [+10.0%, +13.7%]; split, the estimate read +13.7% [+11.1%, +16.7%].
  Triton reports each ensemble's compute as the sum of its composing models' compute for that ensemble's
  requests, so in each poll interval a model's time in a pipeline where it runs alone is that pipeline's encode
  ensemble's compute less its other steps' means in the same interval (`split_branch`); its time beside its
  sibling is what remains of the model's total. Each such model's batch-1 time is scaled, per pipeline, by that
  time over its mean (`branch_factors`). Models that never run beside a sibling keep one time for every pipeline.
  Not modelled: the mean of the per-request max exceeds the max of the means when the branches are close and
  vary, and hybrid has one more ensemble step; on that CPU host the live hybrid − vlm difference fell 1.2 ms
  short of the paired 3.6 ms at encode (service/README.md, "When the live figure can be trusted").
- **Over a sliding window** of counter deltas between snapshots (one per replica per poll, summed over replicas;
  a replica whose counters went backwards restarted and its interval is skipped).
- **Uncertainty**: a bootstrap over the poll intervals, per model (each model's batch-1 executions of an interval
  resampled as a block; each branch model's split of an interval likewise), percentile 95% interval of the
  overhead. Models and the branch splits are resampled independently.
- Fixed per-request costs outside the models (HTTP, media decoding, gRPC, the ensemble's hand-offs) are in
  neither pipeline's figure: the overhead is relative to the models' own work.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import reduce
from typing import Any, TypeVar

import numpy as np

from hybrid.contracts import CONDITIONING, ENCODE_CHAINS, PIPELINES, ensemble_name, model_specs
from service.verdict import Verdict, judge, overhead_ratio, quantile

# Names and edges of the model graph do not depend on the encoders' widths.
SPECS = model_specs(vlm_dim=0, spatial_dim=0)
STAGES: tuple[str, ...] = tuple(SPECS)
DECODER: str = next(name for name, spec in SPECS.items() if CONDITIONING in {t.name for t in spec.inputs})
SCOPES: dict[str, str] = {"end_to_end": "reconstruct", "encode": "encode"}  # overhead scope → the ensemble kind
KINDS: tuple[str, ...] = ("encode", "reconstruct")
ENSEMBLES: dict[str, tuple[str, str]] = {ensemble_name(k, p): (k, p) for k in KINDS for p in PIPELINES}
COMPUTE_PHASES = ("compute_input", "compute_infer", "compute_output")
BOOTSTRAP_RESAMPLES = 2000
MIN_INTERVALS = 2  # a bootstrap over one interval has no spread: no interval, no verdict


def chain(kind: str, pipeline: str) -> tuple[str, ...]:
    """The composing models of ensemble `<kind>_<pipeline>`, in order."""
    return ENCODE_CHAINS[pipeline] + ((DECODER,) if kind == "reconstruct" else ())


T = TypeVar("T", float, np.ndarray)


def critical_path(models: Sequence[str], times: Mapping[str, T]) -> T:
    """The time of the ensemble chaining `models` (in a topological order) when each takes `times[model]`: the
    longest path through the graph the tensor names draw. Works on floats and on arrays of bootstrap draws."""
    producer: dict[str, str] = {}
    finish: dict[str, T] = {}
    for model in models:
        spec = SPECS[model]
        before = [finish[producer[t.name]] for t in spec.inputs if t.name in producer]
        finish[model] = reduce(np.maximum, before) + times[model] if before else times[model]
        for tensor in spec.outputs:
            producer[tensor.name] = model
    return reduce(np.maximum, finish.values())


def concurrent(models: Sequence[str]) -> set[str]:
    """Those of `models` (one ensemble's chain, in a topological order) that can run at the same time as another
    model of the chain: neither one's output leads to the other's input."""
    producer: dict[str, str] = {}
    before: dict[str, set[str]] = {}  # model → every model upstream of it
    for model in models:
        parents = {producer[t.name] for t in SPECS[model].inputs if t.name in producer}
        before[model] = set().union(*(before[p] | {p} for p in parents))
        for tensor in SPECS[model].outputs:
            producer[tensor.name] = model
    return {a for a in models for b in models if a != b and a not in before[b] and b not in before[a]}


def _branch_models() -> dict[str, str]:
    """model → the one pipeline where it runs beside a sibling branch, for each model that does. Its time there is
    what remains of its total once the pipelines where it runs alone (each with no other such model, so that
    pipeline's ensemble compute pins it down) have taken theirs: the graph must allow that split."""
    found: dict[str, list[str]] = {}
    for pipeline, models in ENCODE_CHAINS.items():
        for model in concurrent(models):
            found.setdefault(model, []).append(pipeline)
    for model, pipelines in found.items():
        if len(pipelines) != 1:
            raise ValueError(f"{model} runs beside a sibling in {pipelines}: its time per pipeline has no split")
        for pipeline, models in ENCODE_CHAINS.items():
            alone = pipeline not in pipelines and model in models
            if alone and len(set(models) & set(found)) != 1:
                raise ValueError(f"{pipeline} chains several branch models: their times there have no split")
    return {model: pipelines[0] for model, pipelines in found.items()}


BRANCH_MODELS: dict[str, str] = _branch_models()


def alone_pipelines(model: str) -> tuple[str, ...]:
    """The pipelines that chain branch model `model` without its sibling."""
    return tuple(p for p in PIPELINES if model in ENCODE_CHAINS[p] and p != BRANCH_MODELS[model])


def split_branch(delta: Mapping[str, ModelCounters], model: str, fallback: Mapping[str, float]) -> np.ndarray:
    """One poll interval's compute of branch model `model`, split between the pipelines that chain it: [requests,
    compute ns] of all its requests, then [requests, compute ns] made by each of `alone_pipelines(model)`.

    Triton reports an ensemble's compute as the sum of its composing models' compute for its requests. So in a
    pipeline where the model runs alone, its compute per request is that pipeline's encode ensemble's less the
    other steps' means over the same interval (the models ran at the same load then; `fallback`, their means over
    the window, where a step finished no request in the interval). The reconstruct ensemble serves only when encode
    had no requests: subtracting the decoder's mean would add the decoder's noise to a much shorter model's time.
    What remains of the model's compute is the pipeline's where it runs beside its sibling. Requests that straddle
    two polls are counted by a model in one interval and by its ensemble in the next; summed over the window, the
    split still accounts for every request and every nanosecond exactly once."""
    own = delta.get(model, ModelCounters())
    row = [float(own.requests), float(own.compute_ns)]
    for pipeline in alone_pipelines(model):
        counts = {kind: delta[e].requests if (e := ensemble_name(kind, pipeline)) in delta else 0 for kind in KINDS}
        kind = "encode" if counts["encode"] > 0 else "reconstruct"
        source = delta.get(ensemble_name(kind, pipeline), ModelCounters())
        if not source.requests:
            row += [0.0, 0.0]
            continue
        others = 0.0
        for step in chain(kind, pipeline):
            if step != model:
                counters = delta.get(step, ModelCounters())
                others += counters.compute_ns / counters.requests if counters.requests else fallback[step] * 1e9
        each = source.compute_ns / source.requests - others
        row += [float(sum(counts.values())), sum(counts.values()) * each]
    return np.asarray(row)


def branch_factors(model: str, sums: np.ndarray) -> dict[str, Any]:
    """From the window's sums of `split_branch` rows (one row, or one per bootstrap draw): for each pipeline that
    chains `model`, its compute per request there over its mean over all its requests (> 1 where its sibling slows
    it, < 1 alone). NaN where the pipeline made none of its requests."""
    sums = np.atleast_2d(sums)
    factors: dict[str, Any] = {}
    with np.errstate(divide="ignore", invalid="ignore"):
        mean = sums[:, 1] / sums[:, 0]
        alone_requests, alone_ns = np.zeros(len(sums)), np.zeros(len(sums))
        for k, pipeline in enumerate(alone_pipelines(model)):
            n, spent = sums[:, 2 + 2 * k], sums[:, 3 + 2 * k]
            factors[pipeline] = np.where(n > 0, np.maximum(spent, 0.0) / n, np.nan) / mean
            alone_requests, alone_ns = alone_requests + n, alone_ns + spent
        rest = sums[:, 0] - alone_requests
        beside = np.where(rest > 0, np.maximum(sums[:, 1] - alone_ns, 0.0) / rest, np.nan) / mean
    factors[BRANCH_MODELS[model]] = beside
    return {p: f[0] if len(f) == 1 else f for p, f in factors.items()}


@dataclass(frozen=True)
class ModelCounters:
    """One model's cumulative counters (or their change over an interval)."""

    executions: int = 0  # executions at batch size 1
    service_ns: int = 0  # their compute time
    requests: int = 0  # successful requests, all batch sizes
    queue_ns: int = 0  # those requests' queue time
    compute_ns: int = 0  # and compute time (a batched request counts its whole execution)
    inferences: int = 0  # inference_count: requests executed, all batch sizes
    batches: int = 0  # execution_count

    def __add__(self, other: ModelCounters) -> ModelCounters:
        return ModelCounters(*(a + b for a, b in zip(self.astuple(), other.astuple(), strict=True)))

    def __sub__(self, other: ModelCounters) -> ModelCounters:
        return ModelCounters(*(a - b for a, b in zip(self.astuple(), other.astuple(), strict=True)))

    def astuple(self) -> tuple[int, ...]:
        return (self.executions, self.service_ns, self.requests, self.queue_ns, self.compute_ns, self.inferences,
                self.batches)  # fmt: skip

    @property
    def went_backwards(self) -> bool:
        return any(value < 0 for value in self.astuple())


def _count(entry: Mapping[str, Any]) -> int:
    return int(entry.get("count", 0))


def _ns(entry: Mapping[str, Any]) -> int:
    return int(entry.get("ns", 0))


def parse_statistics(payload: Mapping[str, Any]) -> dict[str, ModelCounters]:
    """The composing models' counters from one replica's statistics (KServe v2 statistics extension, as the gRPC
    client's `get_inference_statistics(as_json=True)` or the HTTP API return them), and the pipelines' ensembles'
    (their compute is the sum of their composing models' for their requests). Other models are skipped."""
    counters: dict[str, ModelCounters] = {}
    for model in payload.get("model_stats", []):
        name = model.get("name")
        if name not in SPECS and name not in ENSEMBLES:
            continue
        stats = model.get("inference_stats", {})
        batch1: Mapping[str, Any] = next(
            (b for b in model.get("batch_stats", []) if int(b.get("batch_size", 0)) == 1), {}
        )
        found = ModelCounters(
            executions=_count(batch1.get("compute_infer", {})),
            service_ns=sum(_ns(batch1.get(phase, {})) for phase in COMPUTE_PHASES),
            requests=_count(stats.get("success", {})),
            queue_ns=_ns(stats.get("queue", {})),
            compute_ns=sum(_ns(stats.get(phase, {})) for phase in COMPUTE_PHASES),
            inferences=int(model.get("inference_count", 0)),
            batches=int(model.get("execution_count", 0)),
        )
        counters[name] = counters.get(name, ModelCounters()) + found  # several versions: one stage
    return counters


@dataclass(frozen=True)
class Snapshot:
    at: float  # time.monotonic()
    replicas: dict[str, dict[str, ModelCounters]]  # replica address → model → cumulative counters


def interval_delta(before: Snapshot, after: Snapshot) -> dict[str, ModelCounters]:
    """What each model did between two snapshots, summed over the replicas seen in both."""
    delta: dict[str, ModelCounters] = {}
    for replica, models in after.replicas.items():
        previous = before.replicas.get(replica)
        if previous is None:
            continue  # a new replica: this snapshot is its baseline
        for name, counters in models.items():
            change = counters - previous.get(name, ModelCounters())
            if change.went_backwards:
                continue  # the replica restarted: its counters start again from zero
            delta[name] = delta.get(name, ModelCounters()) + change
    return delta


@dataclass(frozen=True)
class StageEstimate:
    """One model over the window."""

    executions: int  # batch-1 executions
    intervals: int  # poll intervals holding at least one of them
    service_s: float  # mean compute per batch-1 execution: the model's service time (NaN without executions)
    requests: int
    queue_mean_s: float  # per request, all batch sizes
    compute_mean_s: float
    mean_batch: float

    def as_dict(self) -> dict[str, Any]:
        return {k: _finite(v) for k, v in self.__dict__.items()}


@dataclass(frozen=True)
class ScopeEstimate:
    """The overhead of hybrid over vlm in one scope (encode or end to end)."""

    ratio: float
    ci95: tuple[float, float]
    verdict: Verdict
    service_s: dict[str, float]  # pipeline → its service time along the graph (NaN when a model lacks data)
    executions: dict[str, int]  # pipeline → the fewest batch-1 executions of a model in its chain
    reasons: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "ratio": _finite(self.ratio),
            "ci95": [_finite(self.ci95[0]), _finite(self.ci95[1])],
            "verdict": self.verdict.value,
            "service_s": {p: _finite(v) for p, v in self.service_s.items()},
            "executions": self.executions,
            "reasons": self.reasons,
        }


@dataclass(frozen=True)
class Estimate:
    stages: dict[str, StageEstimate]
    scopes: dict[str, ScopeEstimate]
    intervals: int
    span_s: float  # time covered by the intervals
    factors: dict[str, dict[str, float]] = field(default_factory=dict)  # branch model → pipeline → its time there
    # branch model → pipeline → (requests, compute s) of the model made by that pipeline over the window
    split: dict[str, dict[str, tuple[int, float]]] = field(default_factory=dict)
    ensembles: dict[str, int] = field(default_factory=dict)  # ensemble → its requests in the window


def _ratio_draws(blocks: list[tuple[int, int]], rng: np.random.Generator) -> np.ndarray:
    """Bootstrap draws of Σns / Σcount over `blocks` (count, ns) of the poll intervals, resampled with
    replacement, in seconds; NaN without blocks."""
    if not blocks:
        return np.full(BOOTSTRAP_RESAMPLES, np.nan)
    counts, spent = (np.asarray(column, dtype=float) for column in zip(*blocks, strict=True))
    index = rng.integers(0, len(blocks), size=(BOOTSTRAP_RESAMPLES, len(blocks)))
    return spent[index].sum(axis=1) / counts[index].sum(axis=1) / 1e9


def _mean_s(ns: int, count: int) -> float:
    return ns / count / 1e9 if count else np.nan


class ServiceTimeWindow:
    """Snapshots of every replica's statistics over the last `window_s` seconds, and the estimate they give."""

    def __init__(self, window_s: float, budget: float, min_samples: int, seed: int = 0) -> None:
        self.window_s = window_s
        self.budget = budget
        self.min_samples = min_samples
        self.seed = seed
        self.snapshots: deque[Snapshot] = deque()
        self._cached: tuple[tuple[int, float], Estimate] | None = None
        self.added = 0  # snapshots taken since start: what a client waits on to know a poll has happened

    def add(self, snapshot: Snapshot) -> None:
        self.snapshots.append(snapshot)
        self.added += 1
        # Keep one snapshot older than the window as the baseline of the first interval in it.
        while len(self.snapshots) > 2 and self.snapshots[1].at < snapshot.at - self.window_s:
            self.snapshots.popleft()

    def intervals(self, now: float | None = None) -> list[tuple[float, dict[str, ModelCounters]]]:
        """(end time, per-model delta) of each interval ending inside the window."""
        horizon = (time.monotonic() if now is None else now) - self.window_s
        pairs = zip(self.snapshots, list(self.snapshots)[1:], strict=False)
        return [(after.at, interval_delta(before, after)) for before, after in pairs if after.at > horizon]

    def estimate(self, now: float | None = None) -> Estimate:
        """Per-stage service times and both scopes' overhead with its interval; cached until the next snapshot."""
        intervals = self.intervals(now)
        key = (len(intervals), intervals[-1][0] if intervals else 0.0)
        if self._cached is not None and self._cached[0] == key:
            return self._cached[1]
        result = self._estimate(intervals)
        self._cached = (key, result)
        return result

    def _estimate(self, intervals: list[tuple[float, dict[str, ModelCounters]]]) -> Estimate:
        rng = np.random.default_rng(self.seed)
        totals = {
            name: reduce(lambda a, b: a + b, (d[name] for _, d in intervals if name in d), ModelCounters())
            for name in (*STAGES, *ENSEMBLES)
        }

        def blocks(name: str) -> list[tuple[int, int]]:
            """(batch-1 executions, their compute) of each interval holding some."""
            deltas = [delta[name] for _, delta in intervals if name in delta]
            return [(d.executions, d.service_ns) for d in deltas if d.executions > 0]

        stages: dict[str, StageEstimate] = {}
        points: dict[str, float] = {}  # model → batch-1 service time
        draws: dict[str, np.ndarray] = {}
        for model in STAGES:
            total = totals[model]
            service = _mean_s(total.service_ns, total.executions)
            stages[model] = StageEstimate(
                executions=total.executions,
                intervals=len(blocks(model)),
                service_s=service,
                requests=total.requests,
                queue_mean_s=_mean_s(total.queue_ns, total.requests),
                compute_mean_s=_mean_s(total.compute_ns, total.requests),
                mean_batch=total.inferences / total.batches if total.batches else np.nan,
            )
            points[model] = service
            draws[model] = _ratio_draws(blocks(model), rng)
        # Each branch model's compute split between the pipelines, per interval (see split_branch).
        fallback = {m: _mean_s(totals[m].compute_ns, totals[m].requests) for m in STAGES}
        factors: dict[str, dict[str, Any]] = {}
        factor_draws: dict[str, dict[str, Any]] = {}
        split: dict[str, dict[str, tuple[int, float]]] = {}
        for model in BRANCH_MODELS:
            rows = np.array([split_branch(delta, model, fallback) for _, delta in intervals]).reshape(
                len(intervals), 2 + 2 * len(alone_pipelines(model))
            )
            rows = rows[rows.any(axis=1)]
            sums = rows.sum(axis=0)
            factors[model] = branch_factors(model, sums)
            alone = {
                p: (int(sums[2 + 2 * k]), float(sums[3 + 2 * k]) / 1e9) for k, p in enumerate(alone_pipelines(model))
            }
            beside = (int(sums[0]) - sum(n for n, _ in alone.values()), (sums[1] - sums[3::2].sum()) / 1e9)
            split[model] = {BRANCH_MODELS[model]: (beside[0], float(beside[1])), **alone}
            # The same bootstrap as the stages': the model's intervals resampled as blocks.
            resampled = np.zeros((BOOTSTRAP_RESAMPLES, rows.shape[1]))
            if len(rows):
                resampled = rows[rng.integers(0, len(rows), size=(BOOTSTRAP_RESAMPLES, len(rows)))].sum(axis=1)
            factor_draws[model] = branch_factors(model, resampled)
        scopes = {scope: self._scope(kind, stages, (points, factors), (draws, factor_draws)) for scope, kind in
                  SCOPES.items()}  # fmt: skip
        span = intervals[-1][0] - self.snapshots[0].at if intervals and self.snapshots else 0.0
        return Estimate(
            stages,
            scopes,
            len(intervals),
            max(span, 0.0),
            factors={m: {p: float(f) for p, f in by.items()} for m, by in factors.items()},
            ensembles={name: totals[name].requests for name in ENSEMBLES},
            split=split,
        )

    def _scope(
        self,
        kind: str,
        stages: dict[str, StageEstimate],
        points: tuple[dict[str, float], dict[str, dict[str, float]]],
        draws: tuple[dict[str, np.ndarray], dict[str, dict[str, np.ndarray]]],
    ) -> ScopeEstimate:
        chains = {pipeline: chain(kind, pipeline) for pipeline in PIPELINES}
        service = {p: float(critical_path(models, pipeline_times(p, *points))) for p, models in chains.items()}
        executions = {p: min(stages[m].executions for m in models) for p, models in chains.items()}
        reasons = [
            f"{model}: {stages[model].executions} batch-1 executions in {stages[model].intervals} poll intervals "
            f"(need {self.min_samples} in {MIN_INTERVALS})"
            for model in dict.fromkeys(chains["hybrid"] + chains["vlm"])
            if stages[model].executions < self.min_samples or stages[model].intervals < MIN_INTERVALS
        ]
        if not reasons:
            reasons = [
                f"{model}: its time in {pipeline} is unknown (no {pipeline} requests in Triton's ensemble statistics)"
                for pipeline in ("hybrid", "vlm")
                for model, factor in points[1].items()
                if model in chains[pipeline] and np.isnan(factor[pipeline])
            ]
        ratio = overhead_ratio(service["hybrid"], service["vlm"])
        if reasons:
            return ScopeEstimate(np.nan, (np.nan, np.nan), Verdict.INSUFFICIENT, service, executions, reasons)
        hybrid = critical_path(chains["hybrid"], pipeline_times("hybrid", *draws))
        ratios = hybrid / critical_path(chains["vlm"], pipeline_times("vlm", *draws)) - 1
        low, high = (float(quantile(ratios, q)) for q in (0.025, 0.975))
        return ScopeEstimate(ratio, (low, high), judge(ratio, self.budget, (low, high)), service, executions)


def pipeline_times(pipeline: str, service: Mapping[str, T], factors: Mapping[str, Mapping[str, T]]) -> dict[str, T]:
    """Each model's batch-1 service time in `pipeline`: a branch model's scaled by its factor there."""
    return {m: service[m] * factors[m][pipeline] if m in factors and pipeline in factors[m] else service[m]
            for m in service}  # fmt: skip


def _finite(value: Any) -> Any:
    """JSON has no NaN: None instead."""
    return None if isinstance(value, float) and np.isnan(value) else value
