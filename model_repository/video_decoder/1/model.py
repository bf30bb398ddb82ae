"""Triton Python-backend model `video_decoder`: a thin adapter over hybrid.serving."""

from hybrid.serving import VideoDecoderModel as TritonPythonModel

__all__ = ["TritonPythonModel"]
