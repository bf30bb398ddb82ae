"""Evaluation inputs: the seed's synthetic sets, generated deterministically from a seed, or a folder of media.

- `shapes`: one colored circle, square or triangle on a white 224×224 canvas, with its bounding box. This is the
  set the lab's E-P2.2 / E-P2.3 handlers generate (`generate_training_images`): shape `i % 3`, color `i % 6` of the
  six primaries/secondaries, half-size drawn from `randint(25, 60)`, centre from `randint(margin, 224 - margin)`
  with `margin = size + 10`, all from NumPy's legacy generator seeded with `seed` (the lab's is 42, our default),
  so `--seed 42` gives the lab's test images.
- `moving`: the same kind of shape moving in a straight line over a 9-frame clip (LTX-Video decodes 8k+1 frames,
  so a 9-frame clip comes back as 9 frames), a box per frame. The lab's code published no generator for clips;
  this one keeps the `shapes` conventions (canvas, colors, shapes) so the two sets differ only in motion.
- `multi`: 2–4 non-overlapping shapes of random kind, color and size per scene, a box per object.

Images are uploaded as PNG and clips as lossless animated WebP, so the frames the service decodes are exactly the
frames the metrics compare with. Boxes are `(x0, y0, x1, y1)` normalized to [0, 1], as the lab stores them.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from hybrid.media import DecodedMedia, MediaError, MediaLimits, decode_media, encode_frames

SIZE = 224
CLIP_FRAMES = 9
SHAPES = ("circle", "square", "triangle")
COLORS = ((255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (255, 0, 255), (0, 255, 255))
WHITE = (255, 255, 255)
DATASETS = ("shapes", "moving", "multi")
Box = tuple[float, float, float, float]


@dataclass(frozen=True)
class Sample:
    """One evaluation input: the frames the metrics compare with and the bytes uploaded to the service."""

    name: str
    dataset: str
    frames: np.ndarray  # [F, H, W, 3] uint8, exactly what the service decodes from `data`
    data: bytes
    filename: str
    boxes: tuple[tuple[Box, ...], ...] = field(default=())  # per frame, per object; empty for folders

    @property
    def is_clip(self) -> bool:
        return self.frames.shape[0] > 1


@dataclass(frozen=True)
class Skipped:
    """A folder file that cannot be evaluated, and why."""

    filename: str
    reason: str


def draw_shape(draw: ImageDraw.ImageDraw, shape: str, cx: int, cy: int, size: int, color: tuple[int, ...]) -> Box:
    """Draw `shape` of half-size `size` centred at (cx, cy), as the lab draws it; return its normalized box."""
    corners = [cx - size, cy - size, cx + size, cy + size]
    if shape == "circle":
        draw.ellipse(corners, fill=color)
    elif shape == "square":
        draw.rectangle(corners, fill=color)
    elif shape == "triangle":
        draw.polygon([(cx, cy - size), (cx - size, cy + size), (cx + size, cy + size)], fill=color)
    else:
        raise ValueError(f"unknown shape {shape!r}")
    return ((cx - size) / SIZE, (cy - size) / SIZE, (cx + size) / SIZE, (cy + size) / SIZE)


def _canvas() -> tuple[Image.Image, ImageDraw.ImageDraw]:
    image = Image.new("RGB", (SIZE, SIZE), WHITE)
    return image, ImageDraw.Draw(image)


def _image_sample(name: str, dataset: str, image: Image.Image, boxes: tuple[Box, ...]) -> Sample:
    frames = np.asarray(image)[None]
    return Sample(name, dataset, frames, encode_frames(frames, "png"), f"{name}.png", (boxes,))


def shapes(n: int, seed: int) -> list[Sample]:
    """The lab's single-shape images (see the module docstring for the draw order that makes them identical)."""
    rs = np.random.RandomState(seed)
    samples = []
    for i in range(n):
        size = int(rs.randint(25, 60))
        margin = size + 10
        cx = int(rs.randint(margin, SIZE - margin))
        cy = int(rs.randint(margin, SIZE - margin))
        image, draw = _canvas()
        box = draw_shape(draw, SHAPES[i % len(SHAPES)], cx, cy, size, COLORS[i % len(COLORS)])
        samples.append(_image_sample(f"shapes-{i:03d}", "shapes", image, (box,)))
    return samples


def moving(n: int, seed: int, frames: int = CLIP_FRAMES) -> list[Sample]:
    """One shape per clip, moving at constant velocity between two points at least 40 px apart, inside the canvas."""
    rng = np.random.default_rng([seed, 1])
    samples = []
    for i in range(n):
        size = int(rng.integers(20, 40))
        margin = size + 10
        start = rng.integers(margin, SIZE - margin, 2)
        end = rng.integers(margin, SIZE - margin, 2)
        while np.hypot(*(end - start)) < 40:
            end = rng.integers(margin, SIZE - margin, 2)
        shape, color = SHAPES[i % len(SHAPES)], COLORS[i % len(COLORS)]
        clip, boxes = [], []
        for t in range(frames):
            cx, cy = np.rint(start + (end - start) * t / max(frames - 1, 1)).astype(int)
            image, draw = _canvas()
            boxes.append((draw_shape(draw, shape, int(cx), int(cy), size, color),))
            clip.append(np.asarray(image))
        stacked = np.stack(clip)
        name = f"moving-{i:03d}"
        samples.append(Sample(name, "moving", stacked, encode_frames(stacked, "webp"), f"{name}.webp", tuple(boxes)))
    return samples


def multi(n: int, seed: int) -> list[Sample]:
    """Scenes of 2–4 shapes whose boxes (plus a 4 px gap) do not overlap, so every object stays fully visible."""
    rng = np.random.default_rng([seed, 2])
    samples = []
    for i in range(n):
        count = int(rng.integers(2, 5))
        placed: list[tuple[int, int, int]] = []
        image, draw = _canvas()
        boxes = []
        for _ in range(1000):  # bounded: a crowded canvas ends the scene early rather than looping
            if len(placed) == count:
                break
            size = int(rng.integers(15, 35))
            margin = size + 10
            cx, cy = (int(v) for v in rng.integers(margin, SIZE - margin, 2))
            if any(abs(cx - x) < size + s + 4 and abs(cy - y) < size + s + 4 for x, y, s in placed):
                continue
            placed.append((cx, cy, size))
            shape = SHAPES[int(rng.integers(len(SHAPES)))]
            color = COLORS[int(rng.integers(len(COLORS)))]
            boxes.append(draw_shape(draw, shape, cx, cy, size, color))
        samples.append(_image_sample(f"multi-{i:03d}", "multi", image, tuple(boxes)))
    return samples


GENERATORS = {"shapes": shapes, "moving": moving, "multi": multi}


def generate(dataset: str, n: int, seed: int) -> list[Sample]:
    """`n` samples of one synthetic set, or of each set for `all`."""
    names = DATASETS if dataset == "all" else (dataset,)
    unknown = [d for d in names if d not in GENERATORS]
    if unknown:
        raise ValueError(f"unknown dataset {unknown[0]!r}; choose from {', '.join(DATASETS)} or all")
    return [sample for name in names for sample in GENERATORS[name](n, seed)]


def _files(folder: Path) -> Iterator[Path]:
    return (p for p in sorted(folder.iterdir()) if p.is_file() and not p.name.startswith("."))


def load_folder(folder: Path, n: int | None, limits: MediaLimits | None = None) -> tuple[list[Sample], list[Skipped]]:
    """Every decodable image or video in `folder` (sorted by name, the first `n`), decoded as the gateway does.

    Files the gateway would refuse (not media, corrupt, more frames than its limit) are skipped with the reason,
    so one bad file does not end an evaluation.
    """
    if not folder.is_dir():
        raise ValueError(f"--input-dir {folder} is not a directory")
    limits = limits or MediaLimits()
    samples: list[Sample] = []
    skipped: list[Skipped] = []
    for path in _files(folder):
        if n is not None and len(samples) >= n:
            break
        data = path.read_bytes()
        try:
            media: DecodedMedia = decode_media(data, limits)
        except MediaError as exc:
            skipped.append(Skipped(path.name, exc.message))
            continue
        samples.append(Sample(path.name, "folder", media.frames, data, path.name))
    return samples, skipped
