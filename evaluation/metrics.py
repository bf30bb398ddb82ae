"""The lab's reconstruction metrics, with library implementations where they match the lab's definitions.

Where the lab defines them (their public experiment handlers):
- SSIM, spatial IoU, edge F1, PSNR and LPIPS: `compute_ssim`, `compute_spatial_iou`, `compute_edge_f1` and
  `compute_reconstruction_metrics` of the E-P2.2 handler (DINOv2-only baseline); E-P2.3 (fusion) computes the same
  SSIM, IoU, PSNR and LPIPS inline.
- Temporal LPIPS variance: `TemporalMetrics.temporal_lpips_variance_score` of the Q3 temporal-coherence metrics.

Every metric compares one original frame with one reconstructed frame of the same size: the caller resizes the
original to the reconstruction's size (`resize_to`; the tiny profile decodes 64×64, full 224×224).

"Grayscale" follows the lab per metric: SSIM and the non-white mask use the mean of the R, G, B channels (the lab's
`tensor.mean(dim=0)`); edge F1 uses OpenCV's `COLOR_RGB2GRAY` (0.299 R + 0.587 G + 0.114 B), as the lab does.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import cv2
import numpy as np
from PIL import Image
from skimage.metrics import mean_squared_error, structural_similarity

NON_WHITE = 0.95  # a pixel belongs to an object when its gray value < 0.95 on [0, 1]
EDGE_THRESHOLD = 30.0  # |Sobel(dx=1, dy=1, ksize=3)| above this is an edge pixel
SSIM_SIGMA = 1.5
PSNR_CAP_DB = 100.0  # identical frames: the lab's formula gives inf, which JSON cannot hold
ALEXNET_CHECKPOINT = "alexnet-owt-7be5be79.pth"  # torchvision's ImageNet AlexNet, the LPIPS-alex backbone


def channel_mean(frame: np.ndarray) -> np.ndarray:
    """[H, W, 3] uint8 → [H, W] float64 on 0–255: the mean of R, G and B, the lab's grayscale for SSIM and IoU."""
    return frame.astype(np.float64).mean(axis=-1)


def resize_to(frame: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resize an [H, W, 3] uint8 frame with PIL's bilinear filter (antialiased when shrinking)."""
    if frame.shape[:2] == (height, width):
        return frame
    return np.asarray(Image.fromarray(frame).resize((width, height), Image.Resampling.BILINEAR))


def ssim(original: np.ndarray, reconstruction: np.ndarray) -> float:
    """Mean SSIM of the channel-mean grayscale images, Gaussian weights σ = 1.5 (the lab's `compute_ssim`).

    `skimage.metrics.structural_similarity(gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
    data_range=255)` is the lab's formula (K1 = 0.01, K2 = 0.03, population covariance). Its returned mean drops a
    5-pixel border, while the lab averages the whole SSIM map (scipy's `gaussian_filter`, reflected edges): so we
    average the full map skimage returns. The one difference left is the kernel's cut-off, 3.5σ in skimage (radius
    5 px) against 4σ in scipy's default (radius 6 px, a tap of e^-8 of the centre's): about 1e-3 of SSIM on noisy
    64×64 frames; with the same cut-off the two agree to 1e-12 (tests/test_evaluation.py).
    """
    _, full = structural_similarity(
        channel_mean(original),
        channel_mean(reconstruction),
        gaussian_weights=True,
        sigma=SSIM_SIGMA,
        use_sample_covariance=False,
        data_range=255,
        full=True,
    )
    return float(full.mean())


def non_white_mask(frame: np.ndarray) -> np.ndarray:
    """Object pixels: channel-mean gray < 0.95 × 255 (the lab's `compute_spatial_iou`)."""
    return channel_mean(frame) < NON_WHITE * 255


def spatial_iou(original: np.ndarray, reconstruction: np.ndarray) -> float:
    """IoU of the two non-white masks; 1.0 when both are empty (the lab's convention for two blank images)."""
    a, b = non_white_mask(original), non_white_mask(reconstruction)
    union = int(np.logical_or(a, b).sum())
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


def edge_map(frame: np.ndarray) -> np.ndarray:
    """Edge pixels: |cv2.Sobel(gray, CV_64F, dx=1, dy=1, ksize=3)| > 30 on the 0–255 RGB2GRAY image.

    dx = dy = 1 is the lab's choice: the mixed derivative ∂²/∂x∂y, which fires at corners and along curved or
    diagonal contours but hardly along axis-aligned straight edges (a square's edge pixels sit near its corners).
    """
    gray = cv2.cvtColor(np.ascontiguousarray(frame), cv2.COLOR_RGB2GRAY)
    return np.abs(cv2.Sobel(gray, cv2.CV_64F, 1, 1, ksize=3)) > EDGE_THRESHOLD


def edge_f1(original: np.ndarray, reconstruction: np.ndarray) -> float:
    """F1 of the reconstruction's edge pixels against the original's (the lab's `compute_edge_f1`).

    As in the lab's code, precision or recall with an empty denominator counts as 0, so two frames without any
    edge (two blank frames) score 0, not 1.
    """
    truth, predicted = edge_map(original), edge_map(reconstruction)
    tp = int(np.logical_and(predicted, truth).sum())
    fp = int(np.logical_and(predicted, ~truth).sum())
    fn = int(np.logical_and(~predicted, truth).sum())
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    return 2 * precision * recall / (precision + recall) if precision + recall else 0.0


def mse(original: np.ndarray, reconstruction: np.ndarray) -> float:
    """Mean squared error of the RGB values on [0, 1] (the lab's `F.mse_loss(recon, target)`)."""
    return float(mean_squared_error(original.astype(np.float64) / 255, reconstruction.astype(np.float64) / 255))


def psnr_from_mse(value: float) -> float:
    """10·log10(1 / MSE) on [0, 1] data (the lab's PSNR), capped at 100 dB for identical frames."""
    return PSNR_CAP_DB if value <= 0 else min(PSNR_CAP_DB, 10 * math.log10(1.0 / value))


def align(num_original: int, num_reconstructed: int) -> list[int]:
    """For each reconstructed frame, the original frame at the same relative time (nearest).

    A clip of 9 frames comes back as 9 (identity); an input of 4 frames comes back as 9 (LTX-Video's 8k+1), and
    frame j is compared with original frame round(j · 3 / 8).
    """
    if num_reconstructed == 1 or num_original == 1:
        return [0] * num_reconstructed
    scale = (num_original - 1) / (num_reconstructed - 1)
    return [min(num_original - 1, int(math.floor(j * scale + 0.5))) for j in range(num_reconstructed)]


class Lpips:
    """LPIPS with the AlexNet backbone (`lpips.LPIPS(net="alex")`, the lab's), only from weights already on disk.

    The `lpips` package ships its linear calibration layers, but builds the AlexNet backbone through torchvision's
    pretrained download. Offline that download fails, so this never asks for it: it builds the network with a random
    backbone (`pnet_rand=True`, no download) and loads the backbone's `features.*` tensors from torchvision's
    checkpoint in the torch hub cache, `$TORCH_HOME/hub/checkpoints/alexnet-owt-7be5be79.pth`. Without that file
    (or without the package) `available` is False and `reason` says why; nothing is downloaded and nothing raises.
    Inputs are scaled to [−1, 1] as the lab does (`x * 2 - 1` on [0, 1]).
    """

    def __init__(self) -> None:
        self.available = False
        self.reason: str | None = None
        self.checkpoint: Path | None = None
        self._net = None
        try:
            self._load()
        except Exception as exc:  # any failure leaves LPIPS reported as unavailable, with its cause
            self._net = None
            self.reason = f"LPIPS could not be built: {type(exc).__name__}: {exc}"
        self.available = self._net is not None

    def _load(self) -> None:
        try:
            import lpips
            import torch
        except ImportError as exc:
            self.reason = f"the lpips package is not installed ({exc.name}); pip install '.[evaluation]'"
            return
        self.checkpoint = Path(torch.hub.get_dir()) / "checkpoints" / ALEXNET_CHECKPOINT
        if not self.checkpoint.is_file():
            self.reason = (
                f"the AlexNet backbone weights are not on this machine: put torchvision's {ALEXNET_CHECKPOINT} "
                f"at {self.checkpoint} ($TORCH_HOME/hub/checkpoints/); this tool never downloads them"
            )
            return
        state = torch.load(self.checkpoint, map_location="cpu", weights_only=True)
        features = {k.removeprefix("features."): v for k, v in state.items() if k.startswith("features.")}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # torchvision's deprecation note on `pretrained=False`
            net = lpips.LPIPS(net="alex", pnet_rand=True, verbose=False)
        for block in (net.net.slice1, net.net.slice2, net.net.slice3, net.net.slice4, net.net.slice5):
            wanted = block.state_dict().keys()
            missing = [k for k in wanted if k not in features]
            if missing:
                raise ValueError(f"{self.checkpoint} lacks features.{missing[0]}: not torchvision's AlexNet")
            block.load_state_dict({k: features[k] for k in wanted}, strict=True)
        self._net = net.eval()

    def distance(self, a: np.ndarray, b: np.ndarray) -> float:
        """LPIPS between two [H, W, 3] uint8 frames of the same size."""
        import torch

        if self._net is None:
            raise RuntimeError(self.reason or "LPIPS is unavailable")

        def tensor(frame: np.ndarray) -> torch.Tensor:
            return torch.from_numpy(np.array(frame, np.float32)).permute(2, 0, 1)[None] / 127.5 - 1.0  # a copy

        with torch.no_grad():
            return float(self._net(tensor(a), tensor(b)).item())

    def temporal_variance(self, frames: np.ndarray) -> float | None:
        """Variance (population, `np.var`) of LPIPS between consecutive frames of one clip; None under 2 frames."""
        if frames.shape[0] < 2:
            return None
        return float(np.var([self.distance(frames[t], frames[t + 1]) for t in range(frames.shape[0] - 1)]))


def frame_metrics(original: np.ndarray, reconstruction: np.ndarray, lpips: Lpips | None) -> dict[str, float]:
    """Every per-frame metric of one reconstructed frame against its original, resized to the reconstruction."""
    height, width = reconstruction.shape[:2]
    reference = resize_to(original, height, width)
    values = {
        "ssim": ssim(reference, reconstruction),
        "spatial_iou": spatial_iou(reference, reconstruction),
        "edge_f1": edge_f1(reference, reconstruction),
        "mse": mse(reference, reconstruction),
    }
    if lpips is not None and lpips.available:
        values["lpips"] = lpips.distance(reference, reconstruction)
    return values


def sample_metrics(original: np.ndarray, reconstruction: np.ndarray, lpips: Lpips | None) -> dict[str, float | None]:
    """Metrics of one input ([F_in, H, W, 3]) and its reconstruction ([F_out, h, w, 3]): per-frame means over the
    aligned frames, PSNR from the mean MSE, and for clips the reconstruction's temporal LPIPS variance."""
    index = align(original.shape[0], reconstruction.shape[0])
    per_frame = [frame_metrics(original[i], reconstruction[j], lpips) for j, i in enumerate(index)]
    keys = per_frame[0].keys()
    result: dict[str, float | None] = {k: float(np.mean([f[k] for f in per_frame])) for k in keys}
    result["psnr"] = psnr_from_mse(result["mse"])  # type: ignore[arg-type]
    result.setdefault("lpips", None)
    if reconstruction.shape[0] > 1:
        result["temporal_lpips_var"] = (
            lpips.temporal_variance(reconstruction) if lpips is not None and lpips.available else None
        )
    return result
