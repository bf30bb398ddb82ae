"""Triton Python-backend model `preprocess`: a thin adapter over hybrid.serving."""

from hybrid.serving import PreprocessModel as TritonPythonModel

__all__ = ["TritonPythonModel"]
