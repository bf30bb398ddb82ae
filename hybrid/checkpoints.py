"""Import the lab's trained heads: their `.pt` state dicts → checked `.safetensors` + the profile override that
serves them.

    python -m hybrid.checkpoints --profile full --out weights/ \\
        --fusion fusion_module_best.pt --spatial-adapter dinov2_adapter_best.pt [--vlm-adapter vlm_adapter.pt]

The lab saves `torch.save(model.state_dict())`. Those files are read with `torch.load(weights_only=True)` (tensors
and plain containers only: never a full unpickle of an untrusted file); `.safetensors` inputs are read as they are.
Every key and shape is checked against the module the profile builds (`hybrid.fusion.build_head_module`, on the
meta device: nothing is allocated), so a wrong file fails here with the first mismatching key named, not later
inside a Triton model. The output directory gets `<head>.safetensors` per head and `profile-overrides.json`:

    HYBRID_PROFILE_OVERRIDES=weights/profile-overrides.json make up

serves them (the variable takes JSON or the path of a JSON file).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping
from pathlib import Path

import torch

from hybrid.fusion import CHECKPOINT_SETTINGS, HEADS, build_head_module
from hybrid.profiles import PROFILES, Profile, get_profile

OVERRIDE_FILE = "profile-overrides.json"


class CheckpointError(ValueError):
    """A checkpoint that cannot be read, or does not fit the module it is for: the message names the first
    offending key. Raised by this command and by the DINOv2 loader (`hybrid.spatial`) alike."""


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a `.safetensors` file, or of a `.pt`/`.pth` read with `weights_only=True` (never a full unpickle):
    the one reader of every checkpoint the service loads."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} is not a file")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path), device="cpu")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # an arbitrary pickle is refused here, by design
        raise CheckpointError(f"{path.name}: not a plain torch state dict ({exc})") from exc
    if not isinstance(state, Mapping):
        raise CheckpointError(f"{path.name}: holds a {type(state).__name__}, not a state dict")
    bad = next((k for k, v in state.items() if not isinstance(v, torch.Tensor)), None)
    if bad is not None:
        raise CheckpointError(f"{path.name}: key {bad!r} is not a tensor")
    return dict(state)


def check_state_dict(kind: str, state: dict[str, torch.Tensor], profile: Profile) -> None:
    """Raise CheckpointError naming the first key that is missing, unexpected or of another shape than the
    profile's `kind` module has (in the module's own key order)."""
    with torch.device("meta"):
        expected = {k: tuple(v.shape) for k, v in build_head_module(kind, profile).state_dict().items()}
    for key, shape in expected.items():
        if key not in state:
            raise CheckpointError(f"{kind}: missing key {key!r} (shape {list(shape)}) for profile {profile.name!r}")
        if tuple(state[key].shape) != shape:
            raise CheckpointError(
                f"{kind}: key {key!r} has shape {list(state[key].shape)}, the profile {profile.name!r} expects "
                f"{list(shape)}"
            )
    unexpected = [k for k in state if k not in expected]
    if unexpected:
        raise CheckpointError(f"{kind}: unexpected key {unexpected[0]!r} (and {len(unexpected) - 1} more)")


def override_for(written: dict[str, Path]) -> dict[str, dict[str, str]]:
    """The profile override that points each head at its safetensors file."""
    override: dict[str, dict[str, str]] = {}
    for kind, path in written.items():
        section, setting = CHECKPOINT_SETTINGS[kind]
        override.setdefault(section, {})[setting] = str(path)
    return override


def import_checkpoints(sources: dict[str, Path], profile: Profile, out: Path) -> dict[str, Path]:
    """Check every source against `profile`, then write `<head>.safetensors` and the override file in `out`.
    Nothing is written unless every source passes."""
    from safetensors.torch import save_file

    unknown = set(sources) - set(HEADS)
    if unknown:
        raise CheckpointError(f"unknown heads {sorted(unknown)}; choose from {', '.join(HEADS)}")
    states = {kind: read_state_dict(path) for kind, path in sources.items()}
    for kind, state in states.items():
        check_state_dict(kind, state, profile)
    out.mkdir(parents=True, exist_ok=True)
    written = {}
    for kind, state in states.items():
        written[kind] = (out / f"{kind}.safetensors").resolve()
        save_file({k: v.contiguous() for k, v in state.items()}, written[kind], metadata={"head": kind})
    (out / OVERRIDE_FILE).write_text(json.dumps(override_for(written), indent=2) + "\n")
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hybrid.checkpoints", description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", choices=PROFILES, default="full")
    parser.add_argument("--out", type=Path, required=True, help="directory for the .safetensors and the override")
    for kind in HEADS:
        parser.add_argument(f"--{kind.replace('_', '-')}", type=Path, dest=kind, help=f"the {kind} state dict")
    args = parser.parse_args(argv)
    sources = {kind: getattr(args, kind) for kind in HEADS if getattr(args, kind)}
    if not sources:
        parser.error(f"name at least one of {', '.join('--' + k.replace('_', '-') for k in HEADS)}")
    try:
        written = import_checkpoints(sources, get_profile(args.profile), args.out)
    except CheckpointError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for kind, path in written.items():
        print(f"{kind}: {sources[kind]} → {path}")
    print(f"serve them with: HYBRID_PROFILE_OVERRIDES={args.out / OVERRIDE_FILE}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
