"""An onnxruntime session over torch tensors: what the `embedded` model repository runs inside Python-backend
models (the bundled tritonserver has no ONNX Runtime backend), and what export uses for its parity checks and
latency figures — so the numbers export prints are the numbers of the code that serves.

Torch-free at import (onnxruntime is imported on first use), like the rest of the serving adapters.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)


def providers_for(device: str) -> list[str]:
    """onnxruntime execution providers for a torch device type: CUDA first on "cuda" when this onnxruntime has
    it (onnxruntime-gpu), else the CPU — with a warning, because a GPU deployment silently on the CPU is slow."""
    import onnxruntime as ort

    if device.startswith("cuda"):
        if "CUDAExecutionProvider" in ort.get_available_providers():
            return ["CUDAExecutionProvider", "CPUExecutionProvider"]
        log.warning("%s asked for, but this onnxruntime has no CUDAExecutionProvider: running on the CPU", device)
    return ["CPUExecutionProvider"]


class OnnxRunner:
    """Runs one .onnx file (external data beside it is found by onnxruntime) on named torch tensors.

    `intra_op_threads=0` keeps onnxruntime's default (one per core). Spinning is off by default: onnxruntime's
    pool otherwise busy-waits after every run, and here it shares a few cores with the torch models of the same
    Triton server, which it would slow down for nothing.
    """

    def __init__(
        self, path: str | os.PathLike, device: str = "cpu", intra_op_threads: int = 0, spinning: bool = False
    ) -> None:
        import onnxruntime as ort

        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"no ONNX model at {self.path}: run `python -m export` for this repository")
        options = ort.SessionOptions()
        options.intra_op_num_threads = intra_op_threads
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(str(self.path), options, providers=providers_for(device))
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]

    @property
    def providers(self) -> list[str]:
        return list(self.session.get_providers())

    def __call__(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Named CPU or GPU tensors in, CPU tensors out (onnxruntime copies host↔device itself)."""
        import torch

        missing = set(self.input_names) - set(inputs)
        if missing:
            raise KeyError(f"{self.path.name} needs inputs {sorted(missing)}")
        feeds = {name: inputs[name].detach().contiguous().cpu().numpy() for name in self.input_names}
        outputs = self.session.run(self.output_names, feeds)
        return {name: torch.from_numpy(value) for name, value in zip(self.output_names, outputs, strict=True)}
