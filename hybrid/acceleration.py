"""The `compiled` runtime: every serving model compiled or replayed as CUDA graphs, prepared at load.

Eager PyTorch launches one kernel at a time from Python; at batch 1 on an H200 the models are launch-bound (the
measured eager and compiled figures, end to end and per model: benchmarks/results/gpu-h200/summary.md). This
module makes each model replay captured work instead:

- LTX-Video: the transformer and the VAE decoder under `torch.compile(mode="reduce-overhead")` (Inductor kernels
  replayed as CUDA graphs), one graph set per batch size.
- Qwen2.5-VL: the vision tower as a CUDA graph per (grid, batch) — capturable because `hybrid.vlm` passes the
  grid-only tensors precomputed, with sequence boundaries on the CPU — and the language model under
  `torch.compile(mode="reduce-overhead")`.
- DINOv2 and the conditioning heads: CUDA graphs per batch size.

Shapes are fixed per graph: a batch is padded up to the next prepared size (`CAPTURE_BATCH_SIZES`), and a shape
that was not prepared at load (an unusual frame count, say) runs eagerly rather than compiling on a request's time.
On a CPU the same switch compiles with Inductor's default mode (no CUDA graphs exist there).
Compiled artifacts are cached across restarts by Inductor's FX-graph and autotune caches, under
`TORCHINDUCTOR_CACHE_DIR` (set it to a persistent volume; `hybrid.acceleration.configure_cache`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Hashable, Sequence
from pathlib import Path
from typing import Any

import torch

from hybrid.contracts import CONDITIONING_DIM, NUM_QUERIES
from hybrid.profiles import RUNTIMES  # noqa: F401 - re-exported: the runtimes this module implements

log = logging.getLogger(__name__)

CAPTURE_BATCH_SIZES: tuple[int, ...] = (1, 4, 8)
"""Batch sizes prepared at load: the dynamic batcher's batches are padded up to one of these (and Triton's
preferred batch sizes are these). Three sizes bound the start-up compile time; 2–3 pad to 4, 5–7 to 8."""


def configure_cache(directory: str | os.PathLike | None) -> None:
    """Point Inductor's on-disk caches (compiled kernels, FX graphs, autotuning) at `directory`, so a restart
    reuses what the last start compiled. Must run before the first compile."""
    if not directory:
        return
    Path(directory).mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(directory))
    os.environ.setdefault("TORCHINDUCTOR_FX_GRAPH_CACHE", "1")
    os.environ.setdefault("TORCHINDUCTOR_AUTOGRAD_CACHE", "1")


def compile_module(module: Any, device: torch.device) -> Any:
    """`torch.compile` with CUDA graphs on a GPU, Inductor's default mode on a CPU; static shapes."""
    mode = "reduce-overhead" if device.type == "cuda" else None
    return torch.compile(module, mode=mode, dynamic=False)


def padded_size(n: int, sizes: Sequence[int] = CAPTURE_BATCH_SIZES) -> int:
    """The smallest prepared batch size ≥ n (n itself when larger than all)."""
    return next((s for s in sorted(sizes) if s >= n), n)


def pad_batch(x: torch.Tensor, size: int) -> torch.Tensor:
    """Pad dim 0 to `size` by repeating the last row (valid inputs: padding rows are computed and dropped)."""
    if x.shape[0] >= size:
        return x
    return torch.cat([x, x[-1:].expand(size - x.shape[0], *x.shape[1:])])


class Prepared:
    """Calls `fast` for input signatures prepared at load and `eager` for any other, so that no request pays a
    compile or a capture. `prepare(*inputs)` runs `fast` once for that signature (compiling or capturing)."""

    def __init__(self, fast: Callable[..., Any], eager: Callable[..., Any], name: str) -> None:
        self.fast = fast
        self.eager = eager
        self.name = name
        self.ready: set[Hashable] = set()

    @staticmethod
    def signature(*inputs: Any) -> Hashable:
        return tuple((tuple(x.shape), x.dtype, x.device.type) if isinstance(x, torch.Tensor) else x for x in inputs)

    def prepare(self, *inputs: Any) -> None:
        self.fast(*inputs)
        self.fast(*inputs)  # the second call of a reduce-overhead function records its CUDA graph
        self.ready.add(self.signature(*inputs))

    def __call__(self, *inputs: Any) -> Any:
        fn = self.fast if self.signature(*inputs) in self.ready else self.eager
        return fn(*inputs)


class CudaGraphRunner:
    """Replays a CUDA graph of `fn` per input-shape signature: one launch instead of hundreds.

    On the first call with a new combination of input shapes it warms `fn` up on a side stream, captures one graph
    into a memory pool shared by all graphs, and from then on copies the inputs into the graph's static buffers,
    replays it and returns a copy of the output (graphs share one pool, safe because each output is copied out
    right after its replay). Only for functions without host synchronization or data-dependent control flow.
    """

    def __init__(self, fn: Callable[..., torch.Tensor], warmup: int = 2) -> None:
        self.fn = fn
        self.warmup = warmup
        self.graphs: dict[Hashable, tuple[Any, tuple[torch.Tensor, ...], torch.Tensor]] = {}
        self.pool: Any = None  # torch.cuda.graph_pool_handle(), made on the first capture

    def __call__(self, *inputs: torch.Tensor) -> torch.Tensor:
        key = tuple((tuple(x.shape), x.dtype) for x in inputs)
        entry = self.graphs.get(key)
        if entry is None:
            entry = self.graphs[key] = self._capture(inputs)
        graph, static_inputs, static_output = entry
        for buffer, x in zip(static_inputs, inputs, strict=True):
            buffer.copy_(x)
        graph.replay()
        return static_output.clone()

    def _capture(self, inputs: tuple[torch.Tensor, ...]) -> tuple[Any, tuple[torch.Tensor, ...], torch.Tensor]:
        static_inputs = tuple(x.clone() for x in inputs)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(self.warmup):
                self.fn(*static_inputs)
        torch.cuda.current_stream().wait_stream(side)
        if self.pool is None:
            self.pool = torch.cuda.graph_pool_handle()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool):
            static_output = self.fn(*static_inputs)
        log.info("captured a CUDA graph for input shapes %s", [tuple(x.shape) for x in inputs])
        return graph, static_inputs, static_output


def graphed(fn: Callable[..., torch.Tensor], device: torch.device, name: str) -> Prepared:
    """`fn` as CUDA graphs on a GPU, compiled on a CPU; eager for unprepared shapes."""
    fast = CudaGraphRunner(fn) if device.type == "cuda" else compile_module(fn, device)
    return Prepared(fast, fn, name)


def run_padded(prepared: Prepared | Callable[..., torch.Tensor], *inputs: torch.Tensor) -> torch.Tensor:
    """Pad every input's batch to the next prepared size, run, drop the padding rows."""
    n = inputs[0].shape[0]
    size = padded_size(n)
    return prepared(*(pad_batch(x, size) for x in inputs))[:n]


class GraphedVision:
    """The Qwen vision tower as one CUDA graph per (grid, rows): `encode_pixels(flat, grid)` with its grid-only
    tensors precomputed (`VLMFeatureExtractor.vision_inputs`), so nothing in it synchronizes with the host."""

    def __init__(self, encode_pixels: Callable[[torch.Tensor, tuple[int, int, int]], torch.Tensor]) -> None:
        self.encode_pixels = encode_pixels
        self.runners: dict[tuple[int, int, int], CudaGraphRunner] = {}
        self.ready: set[tuple[tuple[int, int, int], int]] = set()

    def prepare(self, flat: torch.Tensor, grid: tuple[int, int, int]) -> None:
        runner = self.runners.setdefault(grid, CudaGraphRunner(lambda x, g=grid: self.encode_pixels(x, g)))
        runner(flat)
        self.ready.add((grid, flat.shape[0]))

    def __call__(self, flat: torch.Tensor, grid: tuple[int, int, int]) -> torch.Tensor:
        if (grid, flat.shape[0]) in self.ready:
            return self.runners[grid](flat)
        return self.encode_pixels(flat, grid)


def accelerate_vlm(vlm: Any, device: torch.device, batch_sizes: Sequence[int] = CAPTURE_BATCH_SIZES) -> None:
    """Qwen2.5-VL: the vision tower graphed (GPU) and the language model compiled, prepared for one 224² image at
    every batch size. `vlm` is a `hybrid.vlm.VLMFeatureExtractor`."""
    grid = (1, 16, 16)  # one 224² image: 16×16 patches of 14 px, merged 2×2 into 64 tokens
    rows = grid[0] * grid[1] * grid[2]
    width = vlm.model.visual.patch_embed.proj.weight[0].numel()  # channels × temporal patch × 14 × 14 = 1176
    dtype = vlm.model.visual.dtype
    with torch.inference_mode():  # as served: a compiled function guards on the grad mode
        if device.type == "cuda":
            vision = GraphedVision(vlm.encode_pixels)
            for batch in batch_sizes:
                vision.prepare(torch.zeros(batch * rows, width, device=device, dtype=dtype), grid)
            vlm.vision = vision
        final_states = vlm.final_states
        prepared = Prepared(compile_module(final_states, device), final_states, "language_model")
        hidden = vlm.config.text_config.hidden_size
        for batch in batch_sizes:
            _, _, positions = vlm.sequence_inputs(False, rows // 4, batch, grid, device)
            embeds = torch.zeros(batch, positions.shape[-1], hidden, device=device, dtype=dtype)
            prepared.prepare(embeds, positions)
        vlm.final_states = prepared


def accelerate_decoder(
    decoder: Any, device: torch.device, steps: int, frames: int = 1, batch_sizes: Sequence[int] = CAPTURE_BATCH_SIZES
) -> None:
    """LTX-Video: transformer and VAE decode compiled, prepared for `frames` frames at every
    `CAPTURE_BATCH_SIZES` batch. `decoder` is a `hybrid.decoder.VideoDecoder`; it swaps the compiled parts in for
    prepared (batch, frames) and pads batches up to a prepared size."""
    pipeline = decoder.pipeline
    decoder.compiled_parts = {
        "transformer": compile_module(pipeline.transformer, device),
        "vae_decode": compile_module(pipeline.vae.decode, device),
    }
    for batch in batch_sizes:
        conditioning = torch.zeros(batch, NUM_QUERIES, CONDITIONING_DIM, device=device)
        for _ in range(2):  # compile, then record the graphs
            decoder.run(conditioning, frames, steps, [0] * batch, compiled=True)
        decoder.prepared.add((batch, frames))
