"""The `compiled` runtime: every request shape the API accepts runs from work prepared at load.

Eager PyTorch launches one kernel at a time from Python; at the batch sizes served here the models are
launch-bound (benchmarks/results/gpu-h200/). Two mechanisms, combined:

- **Regional compilation** (`compile_blocks`): the repeated blocks of the two large transformers — LTX-Video's 28
  transformer blocks and Qwen2.5-VL's 28 language-model layers — are compiled by Inductor in place, with dynamic
  shapes. The blocks of a stack share one compiled graph, so a stack compiles like one block, and every sequence
  length and batch reuses it (PyTorch still specializes a size of 1: a batch of one, or one latent frame, is its
  own graph). Compiling whole models once per static shape took 46 s per LTX-Video shape and 35 s per Qwen
  shape, which bounded start-up to three one-frame batch sizes and left every clip eager (benchmarks/README.md,
  "History").
- **CUDA graphs of whole calls** (`GraphedCall`): each model's forward — compiled blocks and the eager glue
  between them (rotary tables, projections, norms) alike — is captured once per input shape into a CUDA graph
  and replayed: one launch instead of hundreds, and no Python between kernels. Capturing takes milliseconds, so
  every shape of the plan (`hybrid.profiles.PrepareConfig`: one-frame batches of 1/4/8, clips of 1–16 frames in,
  1–33 frames out) is captured at load.

A batch of a prepared shape is padded up to the next prepared batch size, or split into prepared chunks
(`plan_chunks`); a shape outside the plan runs without a graph, and after preparation `freeze` makes torch run
eagerly wherever it would otherwise compile, so no request ever pays a compile. On a CPU the same calls compile
the blocks with Inductor and run them without graphs (no CUDA graphs exist there). Inductor's caches persist in
the profile's `compile_cache` (`TORCHINDUCTOR_CACHE_DIR`, `configure_cache`).
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Hashable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.utils._pytree import tree_flatten, tree_unflatten

from hybrid.contracts import CONDITIONING_DIM, IMAGE_SIZE, NUM_QUERIES, SPATIAL_PATCHES_PER_FRAME, valid_frame_count
from hybrid.profiles import RUNTIMES, Profile  # noqa: F401 - RUNTIMES re-exported: the runtimes this module implements

if TYPE_CHECKING:
    from hybrid.decoder import VideoDecoder
    from hybrid.fusion import ConditioningHead
    from hybrid.spatial import SpatialEncoder
    from hybrid.vlm import VLMFeatureExtractor

log = logging.getLogger(__name__)


def configure_cache(directory: str | os.PathLike | None) -> None:
    """Point Inductor's on-disk caches (compiled kernels, FX graphs, autotuning) at `directory`, so a restart
    reuses what the last start compiled. Must run before the first compile."""
    if not directory:
        return
    Path(directory).mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(directory))
    os.environ.setdefault("TORCHINDUCTOR_FX_GRAPH_CACHE", "1")
    os.environ.setdefault("TORCHINDUCTOR_AUTOGRAD_CACHE", "1")


def compile_blocks(blocks: Iterable[nn.Module]) -> None:
    """Compile each block of a repeated stack in place (Inductor, dynamic shapes). Blocks of one class share the
    compiled code; the first call of each shape group compiles, later ones reuse it."""
    for block in blocks:
        block.compile(dynamic=True)


def freeze() -> None:
    """After preparation: any call that would compile (a shape group never prepared) runs eagerly instead, so a
    request never waits for Inductor. Process-wide, as each Triton model is its own process."""
    torch.compiler.set_stance("eager_on_recompile")


def plan_chunks(n: int, sizes: Sequence[int]) -> list[tuple[int, int, int]]:
    """Cover a batch of `n` rows with prepared batch sizes: `(start, stop, padded)` chunks, each run padded up to
    `padded` rows. The rest is padded up to the smallest prepared size that holds it, or the largest prepared
    size is taken whole. No sizes: one chunk of the batch as it is (it runs unprepared)."""
    if not sizes:
        return [(0, n, n)]
    ordered = sorted(set(sizes))
    chunks = []
    start = 0
    while start < n:
        rest = n - start
        size = next((s for s in ordered if s >= rest), ordered[-1])
        stop = start + min(rest, size)
        chunks.append((start, stop, size))
        start = stop
    return chunks


def pad_batch(x: torch.Tensor, size: int) -> torch.Tensor:
    """Pad dim 0 to `size` by repeating the last row (valid inputs: padding rows are computed and dropped)."""
    if x.shape[0] >= size:
        return x
    return torch.cat([x, x[-1:].expand(size - x.shape[0], *x.shape[1:])])


def run_chunked(fn: Callable[..., torch.Tensor], sizes: Sequence[int], *inputs: Any) -> torch.Tensor:
    """`fn` over a batch (every tensor input batch-first, other arguments passed as they are), in the prepared
    chunks of `plan_chunks`, padding dropped and the chunks' outputs concatenated."""
    n = next(x for x in inputs if isinstance(x, torch.Tensor)).shape[0]
    outputs = []
    for start, stop, size in plan_chunks(n, sizes):
        chunk = [pad_batch(x[start:stop], size) if isinstance(x, torch.Tensor) else x for x in inputs]
        outputs.append(fn(*chunk)[: stop - start])
    return outputs[0] if len(outputs) == 1 else torch.cat(outputs)


Signature = tuple[Hashable, ...]

_POOLS: dict[int, Any] = {}


def _graph_pool(device: torch.device) -> Any:
    """One CUDA graph memory pool per device for every graph of the process. Safe because calls run one at a
    time and each replay's outputs are copied out at once: a later replay may reuse a graph's memory freely."""
    index = device.index if device.index is not None else torch.cuda.current_device()
    if index not in _POOLS:
        _POOLS[index] = torch.cuda.graph_pool_handle()
    return _POOLS[index]


def _leaf_key(x: Any, batch: bool) -> Hashable:
    if isinstance(x, torch.Tensor):
        return (tuple(x.shape) if batch else tuple(x.shape[1:]), x.dtype, x.device.type)
    return x


class GraphedCall:
    """`fn(*args, **kwargs)` replayed from a CUDA graph per input signature (every tensor's shape and dtype,
    every other argument's value), for the signatures recorded at load; any other call runs `fn` as it is.

    Inside `with call.recording():` a call with a new signature is prepared on the spot: `fn` is warmed up on a
    side stream (its first runs compile whatever Inductor compiles), captured into a graph, and replayed. On a
    CPU there are no graphs: recording only notes the signature (and warms `fn` up), so the batch planning is the
    same everywhere. Only for functions without host synchronization or data-dependent control flow.
    """

    def __init__(self, fn: Callable[..., Any], device: torch.device, name: str, warmup: int = 2) -> None:
        self.fn = fn
        self.device = device
        self.name = name
        self.warmup = warmup
        self.graphs: dict[Signature, tuple[Any, list[Any], list[Any], Any]] = {}
        self.prepared: set[Signature] = set()
        self.batches: dict[Signature, set[int]] = {}  # signature without batch sizes → the prepared batches
        self._recording = False

    @contextlib.contextmanager
    def recording(self) -> Iterator[None]:
        self._recording = True
        try:
            yield
        finally:
            self._recording = False

    @staticmethod
    def signature(args: tuple, kwargs: dict[str, Any], batch: bool = True) -> Signature:
        leaves, spec = tree_flatten((args, kwargs))
        return (str(spec), *(_leaf_key(x, batch) for x in leaves))

    def batch_sizes(self, *args: Any, **kwargs: Any) -> tuple[int, ...]:
        """The prepared batch sizes of calls like this one (tensors batch-first; the batch size itself aside)."""
        return tuple(sorted(self.batches.get(self.signature(args, kwargs, batch=False), ())))

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        key = self.signature(args, kwargs)
        if key in self.graphs:
            return self._replay(key, args, kwargs)
        if self._recording and key not in self.prepared:
            self._prepare(key, args, kwargs)
            if key in self.graphs:
                return self._replay(key, args, kwargs)
        return self.fn(*args, **kwargs)

    def _prepare(self, key: Signature, args: tuple, kwargs: dict[str, Any]) -> None:
        if self.device.type == "cuda":
            try:
                self.graphs[key] = self._capture(args, kwargs)
            except RuntimeError as exc:  # e.g. a host synchronization inside fn: it runs without a graph
                torch.cuda.synchronize(self.device)
                log.warning("%s: no CUDA graph for this shape, it runs eagerly: %s", self.name, exc)
                return
        else:
            for _ in range(self.warmup):
                self.fn(*args, **kwargs)
        self.prepared.add(key)
        leaves = [x for x in tree_flatten((args, kwargs))[0] if isinstance(x, torch.Tensor)]
        if leaves:
            self.batches.setdefault(self.signature(args, kwargs, batch=False), set()).add(int(leaves[0].shape[0]))

    def _capture(self, args: tuple, kwargs: dict[str, Any]) -> tuple[Any, list[Any], list[Any], Any]:
        leaves, spec = tree_flatten((args, kwargs))
        static = [x.clone() if isinstance(x, torch.Tensor) else x for x in leaves]

        def call() -> Any:
            static_args, static_kwargs = tree_unflatten(static, spec)
            return self.fn(*static_args, **static_kwargs)

        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            for _ in range(self.warmup):
                call()  # the first run compiles whatever Inductor compiles
            # A host synchronization inside fn would invalidate the capture and leave the process unable to
            # capture anything more: find it on a last plain run instead, where it is only an error.
            torch.cuda.set_sync_debug_mode("error")
            try:
                call()
            finally:
                torch.cuda.set_sync_debug_mode("default")
        torch.cuda.current_stream(self.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=_graph_pool(self.device)):
            output = call()
        out_leaves, out_spec = tree_flatten(output)
        shapes = [tuple(x.shape) for x in leaves if isinstance(x, torch.Tensor)]
        log.info("%s: captured a CUDA graph for inputs %s", self.name, shapes)  # timestamps show each one's cost
        return graph, static, out_leaves, out_spec

    def _replay(self, key: Signature, args: tuple, kwargs: dict[str, Any]) -> Any:
        graph, static, out_leaves, out_spec = self.graphs[key]
        for buffer, x in zip(static, tree_flatten((args, kwargs))[0], strict=True):
            if isinstance(x, torch.Tensor):
                buffer.copy_(x)
        graph.replay()
        return tree_unflatten([x.clone() if isinstance(x, torch.Tensor) else x for x in out_leaves], out_spec)


@contextlib.contextmanager
def recording(*calls: GraphedCall) -> Iterator[None]:
    """Prepare every new signature these calls see inside the block."""
    with contextlib.ExitStack() as stack:
        for call in calls:
            stack.enter_context(call.recording())
        yield


# The plan: which shapes each model prepares, from the profile.


def input_shapes(profile: Profile) -> list[tuple[int, int]]:
    """(frames in, batch) pairs the encoders and heads prepare: one frame at every batch size, every clip length
    at the clip batch sizes."""
    plan = profile.prepare
    shapes = [(1, b) for b in plan.batch_sizes]
    return shapes + [(f, b) for f in range(2, plan.max_input_frames + 1) for b in plan.clip_batch_sizes]


def output_shapes(profile: Profile) -> list[tuple[int, int]]:
    """(frames out, batch) pairs the decoder prepares: every 8k+1 count up to the decoder's limit."""
    plan = profile.prepare
    counts = [f for f in range(1, profile.decoder.max_frames + 1) if valid_frame_count(f)]
    return [(f, b) for f in counts for b in (plan.batch_sizes if f == 1 else plan.clip_batch_sizes)]


def vlm_token_count(profile: Profile, frames: int) -> int:
    """Length of the VLM features of a `frames`-frame input: 64 merged tokens per temporal patch, plus the chat
    template's positions for the full-sequence features (the encoder's own template)."""
    from hybrid.preprocess import vlm_grid_t
    from hybrid.vlm import feature_template

    visual = vlm_grid_t(frames) * NUM_QUERIES
    if profile.vlm.features != "full_sequence":
        return visual
    return profile.vlm.sequence_length(visual, feature_template(profile))


# Each model family accelerated and prepared: the Triton models (hybrid.serving) and the in-process reference
# pipeline (hybrid.pipeline) call these, so both run the same prepared work.


def accelerate_vlm(vlm: VLMFeatureExtractor, device: torch.device, profile: Profile) -> None:
    """Qwen2.5-VL: the language model's layers compiled, the vision tower and the language model each a graphed
    call, prepared for every input shape of the plan; `vlm.prepared` maps a grid to its prepared batch sizes."""
    from hybrid.preprocess import vlm_grid_t

    compile_blocks(vlm.model.language_model.layers)
    vision = GraphedCall(vlm.encode_batch, device, "vlm vision tower")
    language = GraphedCall(vlm.language_final_states, device, "vlm language model")
    vlm.vision, vlm.final_states = vision, language
    width = vlm.model.visual.patch_embed.proj.weight[0].numel()  # channels × temporal patch × 14 × 14 = 1176
    side = IMAGE_SIZE // 14
    prepared: dict[tuple[int, int, int], set[int]] = {}
    with torch.inference_mode(), recording(vision, language):
        for frames, batch in input_shapes(profile):
            grid = (vlm_grid_t(frames), side, side)
            if batch in prepared.get(grid, set()):
                continue  # 2 frames pair into the grid of one
            pixels = torch.zeros(batch, grid[0] * side * side, width, device=device)
            vlm(pixels, torch.tensor([grid] * batch))
            prepared.setdefault(grid, set()).add(batch)
    vlm.prepared = {grid: tuple(sorted(sizes)) for grid, sizes in prepared.items()}


def accelerate_spatial(encoder: SpatialEncoder, device: torch.device, profile: Profile) -> GraphedCall:
    """DINOv2 as a graphed call over [B, F, 3, 224, 224], prepared for every input shape of the plan."""
    call = GraphedCall(encoder, device, "dinov2")
    with torch.inference_mode(), call.recording():
        for frames, batch in input_shapes(profile):
            call(torch.zeros(batch, frames, 3, IMAGE_SIZE, IMAGE_SIZE, device=device))
    return call


def accelerate_head(head: ConditioningHead, device: torch.device, profile: Profile) -> GraphedCall:
    """A conditioning head as a graphed `(vlm_tokens | None, spatial_tokens | None) → float32 [B, 64, 4096]`,
    prepared for the token counts of every input shape of the plan (unpadded batches of one shape)."""

    def conditioning(vlm_tokens: torch.Tensor | None, spatial_tokens: torch.Tensor | None) -> torch.Tensor:
        return head(vlm_tokens, spatial_tokens).float()

    call = GraphedCall(conditioning, device, head.kind)
    with torch.inference_mode(), call.recording():
        for frames, batch in input_shapes(profile):
            vlm = torch.zeros(batch, vlm_token_count(profile, frames), profile.vlm.dim, device=device)
            spatial = torch.zeros(batch, frames * SPATIAL_PATCHES_PER_FRAME, profile.spatial.dim, device=device)
            call(vlm if "vlm" in head.inputs else None, spatial if "spatial" in head.inputs else None)
    return call


def accelerate_decoder(decoder: VideoDecoder, device: torch.device, profile: Profile) -> None:
    """LTX-Video: the transformer's blocks compiled, a denoising step and the latents' decoding each a graphed
    call, prepared for every output shape of the plan (one denoising step suffices: the graphs do not depend on the
    step count); `decoder.prepared` maps a frame count to its prepared batch sizes."""
    compile_blocks(decoder.pipeline.transformer.transformer_blocks)
    step = GraphedCall(decoder.denoise_step, device, "ltx denoising step")
    finish = GraphedCall(decoder.decode_latents, device, "ltx vae decode")
    decoder.step, decoder.finish = step, finish
    prepared: dict[int, set[int]] = {}
    with recording(step, finish):
        for frames, batch in output_shapes(profile):
            decoder.run(torch.zeros(batch, NUM_QUERIES, CONDITIONING_DIM, device=device), frames, 1, [0] * batch)
            prepared.setdefault(frames, set()).add(batch)
    decoder.prepared = {frames: tuple(sorted(sizes)) for frames, sizes in prepared.items()}
