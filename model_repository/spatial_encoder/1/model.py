"""Triton Python-backend model `spatial_encoder`: a thin adapter over hybrid.serving."""

from hybrid.serving import SpatialEncoderModel as TritonPythonModel

__all__ = ["TritonPythonModel"]
