"""Load-test configuration read from ``LOADTEST_*`` environment variables.

Locust imports the locustfile itself, so the only channel from ``python -m loadtest`` (or from a person
running ``locust -f loadtest/locustfile.py`` by hand) into the user classes is the environment.  Both the
runner and the locustfile parse it with :func:`from_env`, so a bad value is a usage error (exit 2) before
any traffic is sent instead of a traceback inside Locust.

This module must not import locust: importing locust monkey-patches the standard library with gevent,
which the runner and the tests must not inherit.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

PIPELINES: tuple[str, ...] = ("hybrid", "vlm", "spatial")
ENDPOINTS: tuple[str, ...] = ("reconstruct", "encode")
FORMATS: tuple[str, ...] = ("png", "webp", "gif", "mp4", "npz")
USER_KINDS: tuple[str, ...] = ("pipeline", "paired")
SHAPES: tuple[str, ...] = ("none", "step")

DEFAULT_WEIGHTS = "hybrid=1,vlm=1,spatial=1"


class ConfigError(ValueError):
    """A ``LOADTEST_*`` value is malformed; reported as a usage error, never as a failed verdict."""


@dataclass(frozen=True)
class StepShapeConfig:
    """Parameters of the step load: start at ``start_users``, add ``step_users`` every ``step_time_s``.

    ``step_users`` of ``None`` means one "user set" (see :meth:`LoadConfig.user_set_size`), so every step
    adds users in the ratio of the pipeline weights; ``start_users`` of ``None`` means one step's worth.
    ``max_users`` of ``None`` means "the ``--users`` given to Locust", so ``python -m loadtest --users 12
    --shape step`` reads as "step up to 12 users".
    """

    start_users: int | None = None
    step_users: int | None = None
    step_time_s: float = 20.0
    max_users: int | None = None
    spawn_rate: float | None = None


@dataclass(frozen=True)
class LoadConfig:
    """Everything the locustfile needs to build deterministic requests."""

    endpoint: str = "reconstruct"
    weights: dict[str, int] = field(default_factory=lambda: parse_weights(DEFAULT_WEIGHTS))
    frames: int | None = 1
    steps: int | None = None
    seed: int = 0
    fmt: str | None = "png"
    user_kinds: tuple[str, ...] = ("pipeline",)
    user_rate: float = 0.0
    request_timeout_s: float = 120.0
    images: int = 3
    image_size: int = 224
    shape: str = "none"
    step: StepShapeConfig = field(default_factory=StepShapeConfig)

    def request_name(self, pipeline: str) -> str:
        """Locust request name; it carries the pipeline so the stats CSV has one row per pipeline."""
        return request_name(self.endpoint, pipeline)

    def query(self, pipeline: str) -> dict[str, str]:
        """Query parameters of one request.

        ``/encode`` takes only the pipeline; the decoder parameters would be ignored there at best.
        Unset values (``None``) are left to the server's defaults rather than guessed here.
        """
        params: dict[str, str] = {"pipeline": pipeline}
        if self.endpoint == "reconstruct":
            if self.frames is not None:
                params["frames"] = str(self.frames)
            if self.steps is not None:
                params["steps"] = str(self.steps)
            params["seed"] = str(self.seed)
            if self.fmt is not None:
                params["format"] = self.fmt
        return params

    def active_pipelines(self) -> list[str]:
        """Pipelines that get traffic: the weighted ones for pipeline users, hybrid+vlm for paired users."""
        active: set[str] = set()
        if "pipeline" in self.user_kinds:
            active.update(p for p, w in self.weights.items() if w > 0)
        if "paired" in self.user_kinds:
            active.update(("hybrid", "vlm"))
        return [p for p in PIPELINES if p in active]

    def user_set_size(self) -> int:
        """Users in one full set of the enabled user classes: Locust splits users by class weight (the
        paired class has weight 1), so a multiple of this keeps the configured ratio exactly."""
        size = sum(w for w in self.weights.values()) if "pipeline" in self.user_kinds else 0
        return size + (1 if "paired" in self.user_kinds else 0)

    def user_class_count(self) -> int:
        """Enabled user classes; with fewer users than this Locust leaves a pipeline without traffic."""
        count = sum(1 for w in self.weights.values() if w > 0) if "pipeline" in self.user_kinds else 0
        return count + (1 if "paired" in self.user_kinds else 0)

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly copy, recorded in verdict.json so a verdict always says what was measured."""
        return asdict(self)


def request_name(endpoint: str, pipeline: str) -> str:
    """``reconstruct:hybrid`` and the like; :mod:`loadtest.verdict` splits on the last colon."""
    return f"{endpoint}:{pipeline}"


def parse_weights(text: str) -> dict[str, int]:
    """Parse ``"hybrid=1,vlm=1,spatial=1"``; pipelines not named get weight 0 (no users)."""
    weights = dict.fromkeys(PIPELINES, 0)
    seen: set[str] = set()
    for raw in text.split(","):
        item = raw.strip()
        if not item:
            continue
        name, sep, value = item.partition("=")
        name = name.strip()
        if not sep:
            raise ConfigError(f"weight {item!r} is not of the form pipeline=N")
        if name not in PIPELINES:
            raise ConfigError(f"unknown pipeline {name!r} in weights; expected one of {', '.join(PIPELINES)}")
        if name in seen:
            raise ConfigError(f"pipeline {name!r} given twice in weights")
        seen.add(name)
        weights[name] = _int(value, f"weight of {name}", minimum=0)
    if not any(weights.values()):
        raise ConfigError(f"weights {text!r} give no pipeline a positive weight")
    return weights


def _int(text: str, what: str, minimum: int | None = None) -> int:
    try:
        value = int(text.strip())
    except ValueError:
        raise ConfigError(f"{what} must be an integer, got {text!r}") from None
    if minimum is not None and value < minimum:
        raise ConfigError(f"{what} must be >= {minimum}, got {value}")
    return value


def _float(text: str, what: str, minimum: float = 0.0, strict: bool = False) -> float:
    try:
        value = float(text.strip())
    except ValueError:
        raise ConfigError(f"{what} must be a number, got {text!r}") from None
    if value < minimum or (strict and value == minimum):
        raise ConfigError(f"{what} must be {'>' if strict else '>='} {minimum}, got {value}")
    return value


def _optional(env: Mapping[str, str], key: str, default: str) -> str | None:
    """Value of ``key``, its default when unset; ``None`` when set to an empty string ("server default")."""
    value = env.get(key, default).strip()
    return value or None


def validate_frames(frames: int) -> int:
    """The decoder works on 8k+1 frames (1, 9, 17 ...); the gateway rejects anything else."""
    if frames < 1 or (frames - 1) % 8:
        raise ConfigError(f"frames must be 8k+1 (1, 9, 17, ...), got {frames}")
    return frames


def from_env(env: Mapping[str, str]) -> LoadConfig:
    """Build a :class:`LoadConfig` from ``LOADTEST_*`` variables; raises :class:`ConfigError`."""
    endpoint = env.get("LOADTEST_ENDPOINT", "reconstruct").strip()
    if endpoint not in ENDPOINTS:
        raise ConfigError(f"LOADTEST_ENDPOINT must be one of {', '.join(ENDPOINTS)}, got {endpoint!r}")

    frames_text = _optional(env, "LOADTEST_FRAMES", "1")
    frames = None if frames_text is None else validate_frames(_int(frames_text, "LOADTEST_FRAMES"))
    steps_text = _optional(env, "LOADTEST_STEPS", "")
    steps = None if steps_text is None else _int(steps_text, "LOADTEST_STEPS", minimum=1)
    fmt = _optional(env, "LOADTEST_FORMAT", "png")
    if fmt is not None and fmt not in FORMATS:
        raise ConfigError(f"LOADTEST_FORMAT must be one of {', '.join(FORMATS)}, got {fmt!r}")

    kinds = tuple(k.strip() for k in env.get("LOADTEST_USER", "pipeline").split(",") if k.strip())
    if not kinds or any(k not in USER_KINDS for k in kinds):
        raise ConfigError(
            f"LOADTEST_USER must be a comma list of {', '.join(USER_KINDS)}, got {env.get('LOADTEST_USER')!r}"
        )

    shape = env.get("LOADTEST_SHAPE", "none").strip() or "none"
    if shape not in SHAPES:
        raise ConfigError(f"LOADTEST_SHAPE must be one of {', '.join(SHAPES)}, got {shape!r}")

    start_text = _optional(env, "LOADTEST_STEP_START_USERS", "")
    step_text = _optional(env, "LOADTEST_STEP_USERS", "")
    max_text = _optional(env, "LOADTEST_STEP_MAX_USERS", "")
    spawn_text = _optional(env, "LOADTEST_STEP_SPAWN_RATE", "")
    step = StepShapeConfig(
        start_users=None if start_text is None else _int(start_text, "LOADTEST_STEP_START_USERS", minimum=1),
        step_users=None if step_text is None else _int(step_text, "LOADTEST_STEP_USERS", minimum=1),
        step_time_s=_float(env.get("LOADTEST_STEP_TIME", "20"), "LOADTEST_STEP_TIME", strict=True),
        max_users=None if max_text is None else _int(max_text, "LOADTEST_STEP_MAX_USERS", minimum=1),
        spawn_rate=None if spawn_text is None else _float(spawn_text, "LOADTEST_STEP_SPAWN_RATE", strict=True),
    )

    config = LoadConfig(
        endpoint=endpoint,
        weights=parse_weights(env.get("LOADTEST_WEIGHTS", DEFAULT_WEIGHTS)),
        frames=frames,
        steps=steps,
        seed=_int(env.get("LOADTEST_SEED", "0"), "LOADTEST_SEED", minimum=0),
        fmt=fmt,
        user_kinds=kinds,
        user_rate=_float(env.get("LOADTEST_USER_RATE", "0"), "LOADTEST_USER_RATE"),
        request_timeout_s=_float(env.get("LOADTEST_TIMEOUT", "120"), "LOADTEST_TIMEOUT", strict=True),
        images=_int(env.get("LOADTEST_IMAGES", "3"), "LOADTEST_IMAGES", minimum=1),
        image_size=_int(env.get("LOADTEST_IMAGE_SIZE", "224"), "LOADTEST_IMAGE_SIZE", minimum=16),
        shape=shape,
        step=step,
    )
    return config
