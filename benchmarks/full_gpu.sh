#!/usr/bin/env bash
# E-P2.6 at full size on one GPU: the full profile (Qwen2.5-VL-7B, DINOv2-L, fusion d=1024, LTX-Video 2B) with
# random weights (latency does not depend on weight values), served by the same embedded tritonserver and gateway
# as `make up`, measured by the paired benchmark. Usage, on a GPU host with the project installed:
#
#   benchmarks/full_gpu.sh OUT_DIR [PAIRS]
#
# Writes OUT_DIR/{overhead-full.json,.md,.png} (1 frame out) and OUT_DIR/frames9/ (9 frames out), the service log
# and nvidia-smi's view. Needs a tritonserver laid out like the nvidia-pytriton wheel importable as `pytriton`.
set -euo pipefail
out=${1:?usage: full_gpu.sh OUT_DIR [PAIRS]}
pairs=${2:-30}
mkdir -p "$out"
repo=$(mktemp -d)/model_repository
python3 -m export.repository --profile full --profile-overrides '{"random_weights": true}' \
    --instance-kind KIND_GPU --out "$repo"
gpu=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)
export HYBRID_MODEL_REPOSITORY=$repo HYBRID_PROFILE=full HYBRID_LOG_LEVEL=warning
export HYBRID_TRITON_START_TIMEOUT_S=480
started=$(date +%s)
python3 -m service >"$out/service.log" 2>&1 &
service=$!
trap 'kill -INT $service 2>/dev/null; wait $service 2>/dev/null || true' EXIT
until curl -sf http://127.0.0.1:8080/readyz >/dev/null; do
    kill -0 $service 2>/dev/null || { echo "the service died"; tail -50 "$out/service.log"; exit 1; }
    sleep 2
done
echo "ready after $(( $(date +%s) - started )) s on $gpu" | tee "$out/ready.txt"
python3 -m benchmarks.overhead --pairs "$pairs" --out "$out"
python3 -m benchmarks.overhead --pairs "$(( pairs / 2 ))" --frames 9 --out "$out/frames9"
nvidia-smi --query-gpu=name,memory.used,memory.total,utilization.gpu --format=csv >"$out/nvidia-smi.csv"
