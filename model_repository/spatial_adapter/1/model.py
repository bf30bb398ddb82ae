"""Triton Python-backend model `spatial_adapter`: a thin adapter over hybrid.serving."""

from hybrid.serving import FusionHeadModel as TritonPythonModel

__all__ = ["TritonPythonModel"]
