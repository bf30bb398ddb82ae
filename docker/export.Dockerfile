# syntax=docker/dockerfile:1
# Builds the Triton model repository for the GPU host: ONNX exports of DINOv2 and the fusion modules, their
# TensorRT plans, and the configs and model.py adapters of the Python-backend models.
#
# TensorRT plans are bound to the TensorRT version (and the GPU) that built them, so this image comes from the
# NGC TensorRT image of the SAME release as docker/triton.Dockerfile: both take the one NGC_RELEASE build arg,
# and docker-compose.yml passes both the same value.
ARG NGC_RELEASE=25.10
FROM nvcr.io/nvidia/tensorrt:${NGC_RELEASE}-py3

# Ubuntu 24.04's Python is marked externally managed (PEP 668); this image is single-purpose.
ENV PIP_BREAK_SYSTEM_PACKAGES=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

WORKDIR /opt/hybrid

# The `models` and `export` extras, pinned. TensorRT is NOT installed from PyPI: a pip `tensorrt` would shadow
# the base image's and build plans that Triton cannot load. Fail the build here if the bindings are missing.
COPY docker/requirements-core.txt docker/requirements-models.txt docker/requirements-export.txt docker/
RUN pip install --no-cache-dir -r docker/requirements-export.txt \
    && python3 -c "import tensorrt; print('TensorRT', tensorrt.__version__)"

# Export is a build tool run from the source tree (not installed), as `python3 -m export` in /opt/hybrid.
COPY hybrid/ hybrid/
COPY export/ export/
ENV PYTHONPATH=/opt/hybrid \
    HF_HOME=/root/.cache/huggingface \
    HF_HUB_OFFLINE=1 \
    HYBRID_PROFILE=full

CMD ["python3", "-m", "export", "--profile", "full", "--target", "tensorrt", "--precision", "fp16", "--out", "/models"]
