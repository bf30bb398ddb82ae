# syntax=docker/dockerfile:1
# Triton Inference Server with the project's Python-backend models.
#
# The model repository is not baked in: `docker compose --profile export run --rm export` writes it (configs,
# model.py adapters, ONNX and TensorRT plans) into the model-repository volume, mounted here at /models.
#
# NGC_RELEASE is the one knob for the NGC release and must be the same for this image and
# docker/export.Dockerfile: a TensorRT plan only loads in the TensorRT version that built it.
ARG NGC_RELEASE=25.10
FROM nvcr.io/nvidia/tritonserver:${NGC_RELEASE}-py3

# The NGC images are Ubuntu 24.04 (Python 3.12), whose system Python is marked externally managed (PEP 668);
# this image is single-purpose, so install into it rather than into a venv the Python backend would not see.
ENV PIP_BREAK_SYSTEM_PACKAGES=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

WORKDIR /opt/hybrid

# Dependencies first (a layer that survives code changes): exact pins of the `models` extra. torch is the
# PyPI CUDA wheel, not the CPU one the development machines use.
COPY docker/requirements-core.txt docker/requirements-models.txt docker/
RUN pip install --no-cache-dir -r docker/requirements-models.txt

# The `hybrid` package (torch model code) that the generated model.py adapters import.
COPY pyproject.toml ./
COPY hybrid/ hybrid/
RUN pip install --no-cache-dir --no-deps .

# Weights are read from the Hugging Face cache volume only, never downloaded at serving time.
ENV HF_HOME=/root/.cache/huggingface \
    HF_HUB_OFFLINE=1 \
    HYBRID_PROFILE=full

EXPOSE 8000 8001 8002
CMD ["tritonserver", "--model-repository=/models"]
