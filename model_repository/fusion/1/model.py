"""Triton Python-backend model `fusion`: a thin adapter over hybrid.serving."""

from hybrid.serving import FusionHeadModel as TritonPythonModel

__all__ = ["TritonPythonModel"]
