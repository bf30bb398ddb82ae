"""Triton Python-backend model `vlm_encoder`: a thin adapter over hybrid.serving."""

from hybrid.serving import VLMEncoderModel as TritonPythonModel

__all__ = ["TritonPythonModel"]
